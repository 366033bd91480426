//! `keyhold secrets`: the tenant secrets of deterministic field encryption (docs/deterministic.md).
//! Lists them and rotates them, in the broker (through the Vendor Bridge API) when the proxy's
//! configuration has a `[broker]`, else in the proxy's secrets file. Never shows key material:
//! the secrets exist only wrapped by each tenant's KMS.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use keyhold_proxy::ProxyConfig;
use keyhold_proxy::secrets::FileSecretStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct SecretsArgs {
    /// The data directory of `keyhold up` (its `keyhold.toml` and `vendor-api-key`).
    #[arg(long, global = true, default_value = ".keyhold", env = "KEYHOLD_DATA_DIR")]
    data_dir: PathBuf,
    /// The proxy's configuration (overrides DATA_DIR/keyhold.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// With a broker: its URL (default: the `[broker] url` of the proxy's configuration).
    #[arg(long = "broker", global = true, env = "KEYHOLD_BROKER_URL")]
    broker_url: Option<String>,
    /// With an `https://` broker whose certificate a private CA issued: PEM CA certificates,
    /// the only ones trusted for it (default: the `[broker] ca_cert_file` of the proxy's
    /// configuration, else the system's roots).
    #[arg(long, global = true, env = "KEYHOLD_BROKER_CA")]
    broker_ca: Option<PathBuf>,
    /// With a broker: the file holding the Vendor Bridge API key (default
    /// DATA_DIR/vendor-api-key; $KEYHOLD_VENDOR_API_KEY overrides).
    #[arg(long, global = true)]
    vendor_api_key_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List a tenant's secrets: id, secret path, KMS configuration, rotated or not.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Rotate: the next request for the path makes a new current secret (with the tenant's
    /// primary KMS configuration). Old fields still decrypt and are still found by search
    /// terms; `rotate_field` moves them to the new secret.
    Rotate {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Only this secret path (default: every path of the tenant).
        #[arg(long)]
        secret_path: Option<String>,
    },
}

/// One secret as listed (no key material: not even the wrapped bytes).
#[derive(Debug, Serialize, Deserialize)]
struct Listed {
    id: u32,
    secret_path: String,
    kms_config_id: i32,
    rotated: bool,
}

pub async fn run(args: SecretsArgs) -> anyhow::Result<()> {
    let config_path = args.config.clone().unwrap_or_else(|| args.data_dir.join("keyhold.toml"));
    let config = ProxyConfig::load(&config_path).with_context(|| {
        format!("cannot read the proxy configuration {}", config_path.display())
    })?;
    let out = &mut std::io::stdout().lock();
    match &config.broker {
        Some(broker) => {
            let key = vendor_key(&args)?;
            let url = args.broker_url.clone().unwrap_or_else(|| broker.url.clone());
            if url.ends_with(":0") || url.ends_with(":0/") {
                bail!(
                    "the broker URL {url} names port 0 (`keyhold up --broker-listen 127.0.0.1:0`): pass --broker with the address `keyhold up` printed"
                );
            }
            // The tenant id as one path segment, escaped by the URL type.
            let route = |tenant: &str, tail: &[&str]| -> anyhow::Result<reqwest::Url> {
                let mut route = reqwest::Url::parse(&url)
                    .with_context(|| format!("the broker URL {url:?} is not a URL"))?;
                route
                    .path_segments_mut()
                    .map_err(|()| anyhow::anyhow!("the broker URL {url:?} cannot have a path"))?
                    .pop_if_empty()
                    .extend(["api", "v1", "tenants", tenant])
                    .extend(tail);
                Ok(route)
            };
            let ca = args
                .broker_ca
                .clone()
                .or_else(|| broker.ca_cert_file.as_deref().map(|p| config.resolve(p)));
            let http = crate::broker_http::client(ca.as_deref())?;
            match &args.action {
                Action::List { tenant } => {
                    #[derive(Deserialize)]
                    struct Secrets {
                        secrets: Vec<Listed>,
                    }
                    let response = http
                        .get(route(tenant, &["tenant-secrets"])?)
                        .bearer_auth(key.as_str())
                        .send()
                        .await?;
                    let listed: Secrets = answer(response).await?;
                    print(out, &listed.secrets, args.json)
                }
                Action::Rotate { tenant, secret_path } => {
                    #[derive(Deserialize)]
                    struct Rotated {
                        rotated: u64,
                    }
                    let url = route(tenant, &["tenant-secrets", "rotate"])?;
                    let body = match secret_path {
                        Some(path) => serde_json::json!({ "secret_path": path }),
                        None => serde_json::json!({}),
                    };
                    let response =
                        http.post(url).bearer_auth(key.as_str()).json(&body).send().await?;
                    let rotated: Rotated = answer(response).await?;
                    report_rotated(out, rotated.rotated, args.json)
                }
            }
        }
        None => {
            let store = FileSecretStore::new(config.resolve(&config.deterministic.secrets_file));
            match &args.action {
                Action::List { tenant } => {
                    let listed: Vec<Listed> = store
                        .all()?
                        .into_iter()
                        .filter(|s| &s.tenant_id == tenant)
                        .map(|s| Listed {
                            id: s.id,
                            secret_path: s.secret_path,
                            kms_config_id: s.kms_config_id,
                            rotated: s.rotated,
                        })
                        .collect();
                    print(out, &listed, args.json)
                }
                Action::Rotate { tenant, secret_path } => {
                    let count = store.rotate(tenant, secret_path.as_deref())?;
                    report_rotated(out, u64::try_from(count).unwrap_or(u64::MAX), args.json)
                }
            }
        }
    }
}

fn vendor_key(args: &SecretsArgs) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Ok(key) = std::env::var("KEYHOLD_VENDOR_API_KEY") {
        return Ok(zeroize::Zeroizing::new(key.trim().to_owned()));
    }
    let file = args
        .vendor_api_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join(keyhold_proxy::bootstrap::VENDOR_API_KEY_FILE));
    read_key(&file)
}

fn read_key(file: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(file).with_context(|| {
        format!(
            "the proxy takes its tenants from a broker: the Vendor Bridge API key is needed ({} or $KEYHOLD_VENDOR_API_KEY)",
            file.display()
        )
    })?);
    Ok(zeroize::Zeroizing::new(text.trim().to_owned()))
}

async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    let text = response.text().await.context("the broker's answer could not be read")?;
    if !status.is_success() {
        bail!("the broker refused: HTTP {status}: {}", text.chars().take(300).collect::<String>());
    }
    serde_json::from_str(&text)
        .with_context(|| format!("unexpected answer from the broker: {text}"))
}

fn print(out: &mut impl Write, secrets: &[Listed], json: bool) -> anyhow::Result<()> {
    let result = if json {
        serde_json::to_writer_pretty(&mut *out, secrets)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        (|| {
            writeln!(out, "{:>10}  {:>10}  {:<8}  secret path", "id", "kms config", "state")?;
            for s in secrets {
                let state = if s.rotated { "rotated" } else { "in use" };
                writeln!(
                    out,
                    "{:>10}  {:>10}  {:<8}  {}",
                    s.id, s.kms_config_id, state, s.secret_path
                )?;
            }
            Ok(())
        })()
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

fn report_rotated(out: &mut impl Write, count: u64, json: bool) -> anyhow::Result<()> {
    let result = if json {
        writeln!(out, "{}", serde_json::json!({ "rotated": count }))
    } else {
        writeln!(
            out,
            "rotated {count} secret(s); the next request for each path makes a new current secret"
        )
    };
    result.context("cannot write to standard output")
}
