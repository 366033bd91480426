//! # keyhold-core
//!
//! The sans-I/O core of Keyhold: everything that decides, nothing that waits. No network, no
//! files, no async runtime — callers feed bytes in and get bytes out, which is what makes these
//! formats easy to test, fuzz and reuse from any adapter.
//!
//! ```text
//!   tenant's KMS                    proxy                          application (SDK)
//!  ┌────────────┐  wrap/unwrap  ┌──────────────┐  {dek, edek}  ┌──────────────────────────┐
//!  │ master key │ ◀───────────▶ │ EDEK envelope│ ────────────▶ │ document / stream format │
//!  └────────────┘               │  (edek.rs)   │               │ AES-256-GCM (aead.rs)    │
//!                               └──────────────┘               └──────────────────────────┘
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`secret`] | key types wiped on drop and never printed |
//! | [`aead`] | AES-256-GCM behind one type (AWS-LC by default) |
//! | [`kdf`] | HKDF-SHA256 key derivation and key commitment |
//! | [`document`] | the encrypted-field format (tenant and field name bound as associated data) |
//! | [`stream`] | the encrypted-stream (file) format, constant memory, truncation-proof |
//! | [`edek`] | the EDEK envelope, field-compatible with IronCore's protobuf |
//! | [`lease`] | data keys sealed under a lease encryption key (key leasing) |
//! | [`deterministic`] | deterministic (searchable) fields: key derivation, AES-SIV, IronCore's layout |
//! | [`ironcore`] | IronCore's v3 field layout: read (migration) and write (interoperability) |
//! | [`metadata`] | request metadata for the audit trail |
//! | [`seal`] | secrets sealed to the proxy fleet (HPKE), for the broker |
//! | [`snapshot`] | the broker's signed configuration snapshot |
//! | [`error_code`] | the stable numeric error codes of the wire API |
//! | [`error_text`] | an error and its sources as one message, for people (logs, CLI, SDK errors) |
//! | [`wire`] | the JSON bodies of the proxy API |
//!
//! ```
//! use keyhold_core::{document::DocumentKey, secret::Dek};
//!
//! let dek = Dek::generate()?;
//! let key = DocumentKey::new(&dek, "tenant-1")?;
//! let encrypted = key.encrypt_field("ssn", b"123-45-6789")?;
//! assert_eq!(key.decrypt_field("ssn", &encrypted)?, b"123-45-6789");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
pub mod deterministic;
pub mod document;
pub mod edek;
pub mod error_code;
pub mod error_text;
pub mod ironcore;
pub mod kdf;
pub mod lease;
pub mod metadata;
pub mod random;
pub mod seal;
pub mod secret;
pub mod snapshot;
pub mod stream;
pub mod wire;

pub use error_code::ErrorCode;
pub use metadata::RequestMetadata;
pub use secret::Dek;
