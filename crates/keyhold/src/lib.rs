//! # keyhold — the Keyhold SDK
//!
//! Encrypt your customers' data with keys they control. The SDK asks a Keyhold Tenant Security
//! Proxy for a fresh data key (DEK) wrapped by the tenant's own master key, encrypts locally
//! with AES-256-GCM, wipes the DEK, and hands back the ciphertext and the wrapped key (EDEK) to
//! store side by side. Decryption asks the proxy to unwrap the EDEK — which the tenant can
//! refuse at any time by disabling its key.
//!
//! ```no_run
//! use keyhold::{Client, Document, RequestMetadata};
//!
//! # async fn example() -> keyhold::Result<()> {
//! let client = Client::new("http://127.0.0.1:32804", std::env::var("KEYHOLD_API_KEY").unwrap_or_default())?;
//! let meta = RequestMetadata::new("demo-tenant", "user-42").with_data_label("PII");
//!
//! let mut document = Document::new();
//! document.insert("ssn".into(), b"123-45-6789".to_vec());
//! let encrypted = client.encrypt(&document, &meta).await?;   // store encrypted.edek + fields
//! let decrypted = client.decrypt(&encrypted, &meta).await?;
//! assert_eq!(decrypted, document);
//! # Ok(()) }
//! ```
//!
//! | call | proxy calls |
//! |---|---|
//! | [`Client::encrypt`], [`Client::decrypt`] | one |
//! | [`Client::encrypt_batch`], [`Client::decrypt_batch`] | one per batch |
//! | [`Client::encrypt_with_existing_edek`] | one (unwrap) |
//! | [`Client::rekey_edek`] | one; the data is not touched |
//! | [`Client::rekey_edeks`] | one per batch; per-id results, no data keys returned (Keyhold extension) |
//! | [`Client::encrypt_stream`], [`Client::encrypt_file`] and their `decrypt_` pairs | one; constant memory |
//! | [`Client::encrypt_field`], [`Client::decrypt_field`], [`Client::rotate_field`], [`Client::generate_search_terms`] (deterministic, searchable: [`deterministic`]) | one (key derivation; none for a field that is not a deterministic field) |
//! | [`Client::encrypt_fields`], [`Client::decrypt_fields`], [`Client::rotate_fields`], [`Client::generate_search_terms_batch`] | one per batch |
//!
//! [`Client::decrypt`] also reads fields written by IronCore's client SDKs (their "v3" layout), and
//! [`Client::encrypt_with_format`] can write that layout for data IronCore's SDKs must read.
//!
//! With the `e2e` feature, [`e2e`] encrypts end to end to groups, users and devices: no server
//! can decrypt (docs/e2e-crypto.md).
//!
//! Every error carries the wire code ([`Error::code`]) of `docs/tsp-api.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
pub mod deterministic;
mod document;
#[cfg(feature = "e2e")]
pub mod e2e;
mod error;
mod file;

use base64::Engine as _;

pub use client::{API_KEY_ENV, Client, ClientBuilder, PROXY_URL_ENV};
pub use deterministic::{DeterministicFailure, DeterministicOperation};
pub use document::{BatchResult, Document, EncryptedDocument, FieldFormat};
pub use error::{Error, Result};
pub use file::{StreamInfo, read_stream_info};
pub use keyhold_core::ErrorCode;
pub use keyhold_core::metadata::RequestMetadata;
pub use keyhold_core::secret::Dek;

/// A wrapped data key as the proxy returns it (standard base64). Store it beside the data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Edek(String);

impl Edek {
    /// The base64 text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The base64 text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The decoded bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(self.0.as_bytes())
            .map_err(|_| Error::InvalidArgument("the EDEK is not valid base64".into()))
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl From<String> for Edek {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl core::fmt::Display for Edek {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}
