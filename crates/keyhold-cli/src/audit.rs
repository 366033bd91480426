//! `keyhold audit`: check the audit trail.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use keyhold_audit::export::{ExportFormat, verify_chains};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check a tenant's audit stream, as the spool or a sink stored it: exits non-zero at the
    /// first altered, missing or reordered event. Events delivered twice (at-least-once) are
    /// counted, not errors.
    Verify {
        /// The stream; `-` reads standard input.
        file: PathBuf,
        /// What the file is.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Check only this tenant's events (a SIEM capture holding several tenants).
        #[arg(long)]
        tenant: Option<String>,
        /// The stream is an export that starts after the first event: take its first record as
        /// given and check every link after it.
        #[arg(long)]
        from_middle: bool,
        /// A proxy's audit public key (hex, or a file holding it: `audit-signing.pub` in the
        /// proxy's spool directory); repeat it for exports from several proxies. Every
        /// checkpoint must then be signed by one of them.
        #[arg(long)]
        public_key: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One chained record per line: the spool, the `file` sink, webhook bodies.
    Jsonl,
    /// One RFC 5424 syslog message per line (e.g. rsyslog with a `%rawmsg%` template).
    Syslog,
    /// An OpenSearch/Elasticsearch `_search` answer, or one hit or `_source` per line.
    Opensearch,
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify { file, format, tenant, from_middle, public_key } => {
            let public_keys = public_key
                .iter()
                .map(|k| read_public_key(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let format = match format {
                Format::Jsonl => ExportFormat::JsonLines,
                Format::Syslog => ExportFormat::Syslog,
                Format::Opensearch => ExportFormat::OpenSearch,
            };
            let tenant = tenant.as_deref();
            let chains = if file.as_os_str() == "-" {
                verify_chains(std::io::stdin().lock(), format, tenant, from_middle, &public_keys)
            } else {
                let opened = std::fs::File::open(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                verify_chains(BufReader::new(opened), format, tenant, from_middle, &public_keys)
            }
            .with_context(|| format!("{}: the audit chain is broken", file.display()))?;
            anyhow::ensure!(!chains.is_empty(), "{}: no audit records", file.display());
            for chain in &chains {
                report(&file, chain, chains.len() > 1);
            }
            Ok(())
        }
    }
}

/// Prints what the check of one chain found.
fn report(file: &std::path::Path, chain: &keyhold_audit::export::ChainReport, several: bool) {
    let verified = &chain.verified;
    let which = if several {
        format!(" [tenant {}, proxy {}]", chain.tenant, chain.proxy)
    } else {
        String::new()
    };
    let duplicates = match verified.duplicates {
        0 => String::new(),
        n => format!(" ({n} delivered twice, identical)"),
    };
    println!(
        "{}{which}: {} events{duplicates}, chain intact (last seq {}, hash {})",
        file.display(),
        verified.records,
        verified.head.seq,
        hex::encode(verified.head.hash)
    );
    let signed = if verified.signatures_checked { "valid" } else { "NOT checked" };
    match &verified.last_signed_time {
        Some(time) => println!(
            "{} checkpoints, signatures {signed}; the last signs seq {} (written {time}); {} events after it are not yet covered by a checkpoint",
            verified.checkpoints,
            verified.last_signed,
            verified.head.seq.saturating_sub(verified.last_signed + 1),
        ),
        None => println!(
            "no checkpoint: nothing in this stream is signed (records cut off its end would not show)"
        ),
    }
    if !verified.signatures_checked && verified.checkpoints > 0 {
        println!("(give --public-key to check the checkpoints' signatures)");
    }
}

/// A public key given as hex, or as a file holding hex.
fn read_public_key(given: &str) -> anyhow::Result<Vec<u8>> {
    let text = match std::fs::read_to_string(given) {
        Ok(text) => text,
        Err(_) => given.to_owned(),
    };
    let key = hex::decode(text.trim())
        .with_context(|| format!("--public-key {given:?} is neither hex nor a file of hex"))?;
    anyhow::ensure!(key.len() == 32, "--public-key: an Ed25519 public key is 32 bytes");
    Ok(key)
}
