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
//! | [`spool`] | group-committed, synced, per-tenant append-only files |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chain;
pub mod event;
pub mod spool;

pub use chain::{ChainHead, Record, VerifyError, verify};
pub use event::{AuditEvent, EventKind};
pub use spool::{Spool, SpoolError};
