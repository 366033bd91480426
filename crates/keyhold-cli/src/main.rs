//! `keyhold`: the all-in-one proxy, file encryption and local key management.

#![forbid(unsafe_code)]

mod audit;
mod bench;
mod broker_http;
mod crypt;
mod e2e;
mod field;
mod keys;
mod rekey;
mod seal;
mod secrets;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keyhold: customer-managed keys for every tenant of a SaaS application.
#[derive(Debug, Parser)]
#[command(name = "keyhold", version, about, long_about = None)]
struct Cli {
    /// Log format for server commands.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KEYHOLD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on embedded defaults: a Configuration Broker (SQLite) and a proxy with a
    /// vendor-held keystore and a demo tenant.
    ///
    /// On first run creates DIR with a root key, a keystore, the tenant `demo-tenant` with its own
    /// key (created through the broker), an API key (DIR/api-key), the broker's keys and both
    /// configurations (DIR/keyhold.toml, DIR/broker.toml); later runs reuse them.
    Up {
        /// Where state lives.
        #[arg(long, default_value = ".keyhold", env = "KEYHOLD_DATA_DIR")]
        data_dir: PathBuf,
        /// Address to serve the proxy on (first run only; then edit DIR/keyhold.toml).
        #[arg(long, default_value = "127.0.0.1:32804")]
        listen: String,
        /// Address of the broker: web UI at /, OpenAPI at /api/openapi.json (first run only;
        /// then edit DIR/broker.toml and the [broker] url in DIR/keyhold.toml).
        #[arg(long, default_value = "127.0.0.1:32805")]
        broker_listen: String,
    },
    /// Run the Configuration Broker and Vendor Bridge API from a configuration file.
    Broker {
        /// The configuration file (TOML; see docs/broker.md).
        #[arg(long, short, env = "KEYHOLD_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Run the Tenant Security Proxy from a configuration file.
    Proxy {
        /// The configuration file (TOML; see docs/configuration.md).
        #[arg(long, short, env = "KEYHOLD_CONFIG")]
        config: PathBuf,
    },
    /// Encrypt a file for a tenant through a running proxy.
    Encrypt(crypt::EncryptArgs),
    /// Decrypt a file made by `keyhold encrypt` (its tenant and EDEK are in its header).
    Decrypt(crypt::DecryptArgs),
    /// Manage the vendor-held master keys of a local keystore.
    Keys(keys::KeysArgs),
    /// Check the audit trail.
    Audit(audit::AuditArgs),
    /// Rekey a file of EDEKs (one base64 EDEK per line) through a running proxy: resumable, with
    /// progress, failures reported per record without stopping.
    Rekey(rekey::RekeyArgs),
    /// Seal a credential (a JSON object on standard input) to the proxy fleet's key for a
    /// tenant, for the `sealed` field of a broker configuration.
    Seal(seal::SealArgs),
    /// Benchmark: start a proxy (and OpenBao, if installed) on loopback, drive both with the same
    /// load, print requests/s, keys/s and latency percentiles (docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Deterministic (searchable) encryption of one value: encrypt, decrypt, search terms,
    /// rotate (docs/deterministic.md).
    Field(field::FieldArgs),
    /// Tenant secrets of deterministic (searchable) field encryption: list and rotate. Through
    /// the broker when the proxy's configuration has one, else in its secrets file.
    Secrets(secrets::SecretsArgs),
    /// End-to-end encryption to groups, users and devices through the broker's E2E service:
    /// enroll users and devices, manage groups, encrypt, decrypt, grant, revoke.
    E2e(e2e::E2eArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up { data_dir, listen, broker_listen } => {
                init_logging(cli.log_format);
                serve::up(&data_dir, &listen, &broker_listen).await
            }
            Command::Broker { config } => {
                init_logging(cli.log_format);
                serve::broker(&config).await
            }
            Command::Proxy { config } => {
                init_logging(cli.log_format);
                serve::proxy(&config).await
            }
            Command::Encrypt(args) => crypt::encrypt(args).await,
            Command::Decrypt(args) => crypt::decrypt(args).await,
            Command::Keys(args) => keys::run(args),
            Command::Audit(args) => audit::run(args),
            Command::Rekey(args) => rekey::run(args).await,
            Command::Seal(args) => seal::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Field(args) => field::run(args).await,
            Command::Secrets(args) => secrets::run(args).await,
            Command::E2e(args) => e2e::run(args).await,
        }
    });
    // Blocking tasks still running are waited for a short while only: a read of standard input
    // that `keyhold rekey` stopped using (SIGINT while the writer keeps the pipe open) never
    // returns, and dropping the runtime would wait for it forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<rekey::RekeyExit>() {
                eprintln!("{exit}");
                return ExitCode::from(exit.status);
            }
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message before it
/// already shows (many errors print their source in their own message).
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if previous.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        previous = message;
    }
    text
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KEYHOLD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,h2=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_shown_by_its_parent_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let repeated = anyhow::Error::new(keyhold_proxy::config::ConfigError::Read {
            path: "x.toml".into(),
            source: io,
        })
        .context("cannot load x.toml");
        assert_eq!(error_chain(&repeated), "cannot load x.toml: cannot read x.toml: no such file");

        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&plain), "outer: inner");
    }
}
