//! `keyhold audit`: check the audit trail.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check a tenant's audit stream (JSON lines, as the spool and the file sink write them):
    /// exits non-zero at the first altered, missing or reordered event.
    Verify {
        /// The stream; `-` reads standard input.
        file: PathBuf,
        /// The stream is an export that starts after the first event: take its first record as
        /// given and check every link after it.
        #[arg(long)]
        from_middle: bool,
    },
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify { file, from_middle } => {
            let verified = if file.as_os_str() == "-" {
                keyhold_audit::verify(std::io::stdin().lock(), from_middle)
            } else {
                let opened = std::fs::File::open(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                keyhold_audit::verify(BufReader::new(opened), from_middle)
            }
            .with_context(|| format!("{}: the audit chain is broken", file.display()))?;
            println!(
                "{}: {} events, chain intact (last seq {}, hash {})",
                file.display(),
                verified.records,
                verified.head.seq,
                hex::encode(verified.head.hash)
            );
            Ok(())
        }
    }
}
