//! `keyhold encrypt` and `keyhold decrypt`: files through a running proxy.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use keyhold::{Client, ClientBuilder, RequestMetadata};
use zeroize::Zeroizing;

/// Where to find the proxy and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The proxy's URL.
    #[arg(long = "proxy", env = "KEYHOLD_PROXY_URL", default_value = "http://127.0.0.1:32804")]
    proxy_url: String,
    /// A file holding the API key. Default: $KEYHOLD_API_KEY, else ./.keyhold/api-key.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// For an `https://` proxy whose certificate a private CA issued: a PEM file of the CA
    /// certificates to trust (instead of the system's).
    #[arg(long, env = "KEYHOLD_PROXY_CA")]
    proxy_ca: Option<PathBuf>,
    /// For a proxy that asks for client certificates: a PEM file with this client's private
    /// key and certificate chain.
    #[arg(long, env = "KEYHOLD_CLIENT_IDENTITY")]
    client_identity: Option<PathBuf>,
    /// Who is asking (recorded in the tenant's audit trail).
    #[arg(long, default_value = "keyhold-cli")]
    requesting_id: String,
    /// A label for the data (recorded in the audit trail).
    #[arg(long)]
    data_label: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct EncryptArgs {
    /// The tenant whose key protects the file.
    #[arg(long)]
    tenant: String,
    /// The file to encrypt.
    #[arg(long = "in")]
    input: PathBuf,
    /// Where to write the encrypted file.
    #[arg(long = "out")]
    output: PathBuf,
    #[command(flatten)]
    proxy: ProxyArgs,
}

#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// The encrypted file.
    #[arg(long = "in")]
    input: PathBuf,
    /// Where to write the plaintext (written only if the whole file authenticates).
    #[arg(long = "out")]
    output: PathBuf,
    /// Refuse unless the file belongs to this tenant.
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    proxy: ProxyArgs,
}

impl ProxyArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let key = self.api_key()?;
        let mut builder = ClientBuilder::new(&self.proxy_url, key.as_str());
        if let Some(path) = &self.proxy_ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the proxy CA {}", path.display()))?;
            builder = builder.proxy_ca_pem(pem);
        }
        if let Some(path) = &self.client_identity {
            let pem =
                Zeroizing::new(std::fs::read(path).with_context(|| {
                    format!("cannot read the client identity {}", path.display())
                })?);
            builder = builder.client_identity_pem(pem.as_slice());
        }
        Ok(builder.build()?)
    }

    fn api_key(&self) -> anyhow::Result<Zeroizing<String>> {
        let from_file = |path: &Path| -> anyhow::Result<Zeroizing<String>> {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the API key from {}", path.display()))?,
            );
            Ok(Zeroizing::new(text.trim().to_owned()))
        };
        if let Some(path) = &self.api_key_file {
            return from_file(path);
        }
        if let Ok(key) = std::env::var(keyhold::API_KEY_ENV) {
            return Ok(Zeroizing::new(key));
        }
        let default = Path::new(".keyhold").join("api-key");
        if default.exists() {
            return from_file(&default);
        }
        bail!(
            "no API key: pass --api-key-file, set {}, or run from the directory of `keyhold up`",
            keyhold::API_KEY_ENV
        )
    }

    pub(crate) fn metadata(&self, tenant: &str) -> RequestMetadata {
        let meta = RequestMetadata::new(tenant, &self.requesting_id);
        match &self.data_label {
            Some(label) => meta.with_data_label(label),
            None => meta,
        }
    }
}

pub async fn encrypt(args: EncryptArgs) -> anyhow::Result<()> {
    let client = args.proxy.client()?;
    let meta = args.proxy.metadata(&args.tenant);
    client
        .encrypt_file(&args.input, &args.output, &meta)
        .await
        .with_context(|| format!("cannot encrypt {}", args.input.display()))?;
    eprintln!(
        "encrypted {} -> {} for tenant {}",
        args.input.display(),
        args.output.display(),
        args.tenant
    );
    Ok(())
}

pub async fn decrypt(args: DecryptArgs) -> anyhow::Result<()> {
    let info = keyhold::read_stream_info(&args.input)
        .await
        .with_context(|| format!("{} is not a Keyhold encrypted file", args.input.display()))?;
    if let Some(expected) = args.tenant.as_ref().filter(|t| **t != info.tenant_id) {
        bail!("{} belongs to tenant {:?}, not {expected:?}", args.input.display(), info.tenant_id);
    }
    let client = args.proxy.client()?;
    let meta = args.proxy.metadata(&info.tenant_id);
    client
        .decrypt_file(&args.input, &args.output, &meta)
        .await
        .with_context(|| format!("cannot decrypt {}", args.input.display()))?;
    eprintln!(
        "decrypted {} -> {} (tenant {})",
        args.input.display(),
        args.output.display(),
        info.tenant_id
    );
    Ok(())
}
