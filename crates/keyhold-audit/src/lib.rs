//! # keyhold-audit
//!
//! The audit trail of key accesses (docs/audit.md): the event model, the per-tenant hash chain
//! that makes a stream tamper-evident, and the durable on-disk spool that records each event
//! before the request that caused it is answered.
//!
//! | module | job |
//! |---|---|
//! | [`event`] | what an event holds (never key material) |
//! | [`chain`] | chained records, and [`chain::verify`] |
//! | [`checkpoint`] | Ed25519-signed checkpoints in each chain |
//! | [`export`] | verifying what a syslog receiver or OpenSearch stored |
//! | [`spool`] | group-committed, synced, per-tenant append-only files |
//! | [`segment`] | naming and listing a tenant file's closed segments |
//! | [`sink`] | syslog (TCP/TLS), OpenSearch, Splunk HEC, Datadog, signed webhook, file |
//! | [`deliver`] | at-least-once delivery from the spool to the sinks, with cursors and retries |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chain;
pub mod checkpoint;
pub mod deliver;
pub mod event;
pub mod export;
pub mod segment;
pub mod sink;
pub mod spool;

pub use chain::{ChainHead, Record, VerifyError, verify};
pub use deliver::{Delivery, DeliveryOptions, Target};
pub use event::{AuditEvent, EventKind};
pub use sink::{Sink, SinkError, SinkSettings};
pub use spool::{Spool, SpoolError};
