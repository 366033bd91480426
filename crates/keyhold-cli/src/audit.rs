//! `keyhold audit`: check the audit trail.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use keyhold_audit::export::{ExportFormat, verify_export};

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
        AuditCommand::Verify { file, format, tenant, from_middle } => {
            let format = match format {
                Format::Jsonl => ExportFormat::JsonLines,
                Format::Syslog => ExportFormat::Syslog,
                Format::Opensearch => ExportFormat::OpenSearch,
            };
            let tenant = tenant.as_deref();
            let verified = if file.as_os_str() == "-" {
                verify_export(std::io::stdin().lock(), format, tenant, from_middle)
            } else {
                let opened = std::fs::File::open(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                verify_export(BufReader::new(opened), format, tenant, from_middle)
            }
            .with_context(|| format!("{}: the audit chain is broken", file.display()))?;
            let duplicates = match verified.duplicates {
                0 => String::new(),
                n => format!(" ({n} delivered twice, identical)"),
            };
            println!(
                "{}: {} events{duplicates}, chain intact (last seq {}, hash {})",
                file.display(),
                verified.records,
                verified.head.seq,
                hex::encode(verified.head.hash)
            );
            Ok(())
        }
    }
}
