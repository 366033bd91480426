//! # keyhold-broker
//!
//! The Configuration Broker and Vendor Bridge API (docs/broker.md): where tenants and their KMS
//! and SIEM settings live. Vendors change them through the API; proxies pull a signed snapshot.
//! Credentials never reach the broker in the clear: they arrive sealed to the fleet key, whose
//! private half only the proxies hold, and the broker refuses a secret field sent in clear.
//!
//! ```text
//!  vendor ──Bearer key──▶ api (axum) ──▶ store (sqlx Any) ──▶ SQLite | PostgreSQL
//!                          │   ▲              │ version = newest change id
//!  proxy ──Bearer token──▶ snapshot ◀─────────┘ (watch channel + 1 s database poll)
//!                          signed Ed25519
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`config`] | the typed configuration, key and token files |
//! | [`store`] | tables, transactions, history, pages |
//! | [`validate`] | what is accepted (types, settings, secrets, sealed blobs) |
//! | [`snapshot`] | the snapshot from the store, signed and cached |
//! | [`api`] | handlers, router, OpenAPI document |
//! | [`auth`] | bearer keys, compared in constant time |
//! | [`session`] | callers (vendor, tenant admin), session cookies, CSRF tokens |
//! | [`credentials`] | admins' passwords (argon2id), TOTP codes, failed sign-in limit |
//! | [`error`] | errors and the one mapping to `{"code", "message"}` |
//! | [`tenant_secrets`] | wrapped tenant secrets of deterministic encryption, their rotation |
//! | [`e2e`] | the end-to-end encryption service (docs/e2e-api.md) and its audit events |
//! | [`server`] | bind, serve, graceful shutdown |
//! | [`ui`] | the web pages, embedded, with their security headers |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin_events;
pub mod api;
pub mod auth;
pub mod config;
pub mod credentials;
pub mod e2e;
pub mod error;
pub mod kms_usage;
pub mod leasing;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod store;
pub mod tenant_secrets;
pub mod ui;
pub mod validate;

pub use config::BrokerConfig;
pub use error::{ApiError, BrokerError, StoreError};
pub use server::Broker;
pub use store::{KmsConfigStatus, NewKmsConfig, NewSiemConfig, Store, TenantStatus};
