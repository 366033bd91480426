//! `keyhold field`: deterministic (searchable) encryption of one value through a running proxy
//! (docs/deterministic.md). The same value, tenant and paths always give the same output, so
//! it can be stored in an indexed column and looked up by its search terms.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keyhold::deterministic::{EncryptedField, PlaintextField};

use crate::crypt::ProxyArgs;

#[derive(Debug, clap::Args)]
pub struct FieldArgs {
    #[command(subcommand)]
    action: Action,
}

/// The tenant and the paths of a field.
#[derive(Debug, clap::Args)]
struct Paths {
    /// The tenant whose secret protects the value.
    #[arg(long)]
    tenant: String,
    /// Which tenant secret (e.g. a table name).
    #[arg(long)]
    secret_path: String,
    /// Which key derived from it (e.g. a column name).
    #[arg(long)]
    derivation_path: String,
    #[command(flatten)]
    proxy: ProxyArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Encrypt VALUE (UTF-8 text); prints the field, standard base64.
    Encrypt {
        /// The value.
        value: String,
        #[command(flatten)]
        paths: Paths,
    },
    /// Decrypt FIELD (standard base64, as `encrypt` printed it); prints the value.
    Decrypt {
        /// The encrypted field.
        field: String,
        #[command(flatten)]
        paths: Paths,
    },
    /// Print the search terms of VALUE: its encryption under every usable tenant secret of
    /// the path, current first, one per line.
    Search {
        /// The value.
        value: String,
        #[command(flatten)]
        paths: Paths,
    },
    /// Re-encrypt FIELD under the current tenant secret (unchanged if it already is).
    Rotate {
        /// The encrypted field.
        field: String,
        #[command(flatten)]
        paths: Paths,
    },
}

pub async fn run(args: FieldArgs) -> anyhow::Result<()> {
    match args.action {
        Action::Encrypt { value, paths } => {
            let (client, meta) = (paths.proxy.client()?, paths.proxy.metadata(&paths.tenant));
            let field =
                PlaintextField::new(value.into_bytes(), paths.secret_path, paths.derivation_path);
            let encrypted = client.encrypt_field(&field, &meta).await.map_err(coded)?;
            println!("{}", BASE64.encode(&encrypted.encrypted));
        }
        Action::Decrypt { field, paths } => {
            let (client, meta) = (paths.proxy.client()?, paths.proxy.metadata(&paths.tenant));
            let field = encrypted(&field, paths.secret_path, paths.derivation_path)?;
            let plain = client.decrypt_field(&field, &meta).await.map_err(coded)?;
            let text =
                std::str::from_utf8(&plain.plaintext).context("the value is not UTF-8 text")?;
            println!("{text}");
        }
        Action::Search { value, paths } => {
            let (client, meta) = (paths.proxy.client()?, paths.proxy.metadata(&paths.tenant));
            let field =
                PlaintextField::new(value.into_bytes(), paths.secret_path, paths.derivation_path);
            for term in client.generate_search_terms(&field, &meta).await.map_err(coded)? {
                println!("{}", BASE64.encode(&term.encrypted));
            }
        }
        Action::Rotate { field, paths } => {
            let (client, meta) = (paths.proxy.client()?, paths.proxy.metadata(&paths.tenant));
            let field = encrypted(&field, paths.secret_path, paths.derivation_path)?;
            let rotated = client.rotate_field(&field, &meta).await.map_err(coded)?;
            println!("{}", BASE64.encode(&rotated.encrypted));
        }
    }
    Ok(())
}

fn encrypted(
    text: &str,
    secret_path: String,
    derivation_path: String,
) -> anyhow::Result<EncryptedField> {
    let bytes = BASE64
        .decode(text.trim().as_bytes())
        .context("the field is not standard base64 (as `keyhold field encrypt` prints it)")?;
    Ok(EncryptedField::new(bytes, secret_path, derivation_path))
}

/// The SDK's error with its wire code, which scripts can match on.
fn coded(e: keyhold::Error) -> anyhow::Error {
    let code = e.code();
    anyhow::anyhow!("{e} [{} {}]", code.code(), code.name())
}
