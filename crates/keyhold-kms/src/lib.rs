//! # keyhold-kms
//!
//! Adapters to the key management systems that hold tenants' master keys. Every backend
//! implements one trait, [`Kms`], and passes one conformance suite (the `conformance` module, behind the feature of that name); the proxy never knows
//! which backend it talks to.
//!
//! A master key never leaves its KMS. The proxy asks the KMS to *wrap* (encrypt) a fresh data
//! key and later to *unwrap* it; both calls carry a [`KeyContext`] — tenant id and KMS
//! configuration id — that the backend binds to the ciphertext as associated data (AWS
//! encryption context, Vault derivation context, AES-GCM AAD), so a wrapped key taken from one
//! tenant cannot be unwrapped for another.
//!
//! | backend | feature | module |
//! |---|---|---|
//! | vendor-held keys in an encrypted keystore file | `local` | `local` |
//! | AWS KMS | `aws` | `aws` |
//! | HashiCorp Vault / OpenBao Transit | `vault` | `vault` |
//! | PKCS#11 HSMs | `pkcs11` | `pkcs11` |
//! | KMIP servers | `kmip` | `kmip` |
//! | Google Cloud KMS | `gcp` | `gcp` |
//! | Azure Key Vault / Managed HSM | `azure` | `azure` |
//!
//! The proxy wraps every backend in [`resilience::ResilientKms`] (per-attempt timeout, bounded
//! retries with jitter for transient errors, circuit breaker).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod context;
mod error;
pub mod resilience;
mod secret_source;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "kmip")]
pub mod kmip;
#[cfg(feature = "local")]
pub mod local;
#[cfg(any(feature = "gcp", feature = "azure"))]
mod oauth;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "vault")]
pub mod vault;

#[cfg(feature = "conformance")]
pub mod conformance;

use async_trait::async_trait;
use keyhold_core::secret::Dek;

pub use context::{KeyContext, KeyPurpose};
pub use error::KmsError;
pub use secret_source::SecretSource;

/// What every remote backend's constructor needs besides its own configuration.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Relative paths in the configuration (credential files, CA certificates) are relative to
    /// this directory: the configuration file's.
    pub base_dir: std::path::PathBuf,
    /// The longest one request to the KMS may take, connection included. The proxy's
    /// [`resilience::ResilientKms`] enforces it too; backends set it on their clients so that
    /// sockets are not left waiting.
    pub request_timeout: std::time::Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self { base_dir: ".".into(), request_timeout: std::time::Duration::from_secs(5) }
    }
}

/// A fresh data key and its wrapped form.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The data key in the clear (wiped on drop).
    pub dek: Dek,
    /// The data key wrapped by the master key: what goes into the EDEK.
    pub wrapped: Vec<u8>,
}

/// A key management system holding one master key (one tenant KMS configuration).
#[async_trait]
pub trait Kms: Send + Sync + core::fmt::Debug {
    /// A short name of the backend kind (`local`, `aws`, …), for metrics and logs.
    fn kind(&self) -> &'static str;

    /// A new data key, wrapped. Backends with a native "generate data key" call override this;
    /// the default makes the key locally and wraps it.
    async fn generate(&self, context: &KeyContext<'_>) -> Result<GeneratedKey, KmsError> {
        let dek = Dek::generate().map_err(|_| KmsError::WrapFailed("no randomness".into()))?;
        let wrapped = self.wrap(&dek, context).await?;
        Ok(GeneratedKey { dek, wrapped })
    }

    /// Wraps an existing data key (used by rekey).
    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError>;

    /// Unwraps a data key wrapped by [`wrap`](Self::wrap) or [`generate`](Self::generate) with
    /// the same context.
    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError>;

    /// Whether the KMS can serve requests now (reachable, key usable).
    async fn health(&self) -> Result<(), KmsError>;

    /// The master key version a wrapped key names, where the KMS puts one in its ciphertext
    /// (local keystore, Vault/OpenBao Transit, Azure Key Vault); `None` where it does not.
    /// Read without a KMS call, for rotation tracking.
    fn key_version(&self, wrapped: &[u8]) -> Option<String> {
        let _ = wrapped;
        None
    }
}
