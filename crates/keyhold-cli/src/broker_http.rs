//! The HTTP client of the commands that call a broker (`seal`, `secrets`): with `--broker-ca`,
//! a broker whose certificate a private CA issued is trusted, and only that CA.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// A client for the broker, trusting only the CA certificates in `ca_file` if given (else the
/// system's roots).
pub fn client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("--broker-ca: cannot read {}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--broker-ca: {} is not PEM certificates", path.display()))?;
        if roots.is_empty() {
            bail!("--broker-ca: {} holds no certificate", path.display());
        }
        builder = builder.tls_certs_only(roots);
    }
    builder.build().context("cannot set up the HTTP client")
}
