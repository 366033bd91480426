//! The audit event: who accessed which tenant's keys, how, from where, when, and with what outcome.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A key access: wrap, unwrap, batch, rekey.
    Data,
    /// A security event the application posted.
    Security,
    /// A configuration change.
    Admin,
    /// Something the proxy did on its own: lease renewals, KMS failures.
    Periodic,
}

/// One audit event. Never carries key material or plaintext; ids and addresses as the caller
/// gave them.
///
/// The fields are declared in alphabetical order, so that serializing an event gives its
/// canonical JSON (sorted keys, no whitespace: see [`crate::chain`]) in one pass. A test checks
/// it; keep new fields in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// For checkpoints (kind periodic, operation `checkpoint`): the signature of the stream so
    /// far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<crate::checkpoint::Checkpoint>,
    /// 0 when granted, else the wire error code.
    pub code: u16,
    /// Free-form fields from the request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, String>,
    /// The data label the application gave.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_label: String,
    /// For security events: when the application says the event happened (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_millis: Option<u64>,
    /// Unique and time-ordered (UUID v7): receivers deduplicate at-least-once delivery by it.
    pub id: String,
    /// How many keys the event covers (batches record one event per outcome).
    pub keys: u64,
    /// What kind of event.
    pub kind: EventKind,
    /// The tenant KMS configuration concerned, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_config_id: Option<i32>,
    /// The lease concerned, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<i32>,
    /// The object (document) id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_id: String,
    /// `wrap`, `unwrap`, `batch_wrap`, `batch_unwrap`, `rekey`, a security event name, …
    pub operation: String,
    /// `granted` or `refused`.
    pub outcome: String,
    /// The proxy instance that recorded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proxy: String,
    /// The application's request id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The application's user or service that asked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requesting_id: String,
    /// The end user's IP address, as the application gave it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_ip: String,
    /// The tenant whose keys (or configuration) it concerns.
    pub tenant: String,
    /// When the proxy recorded it, RFC 3339 UTC with milliseconds.
    pub time: String,
}

impl AuditEvent {
    /// A new event with a fresh id and the current time; the other fields empty.
    pub fn new(kind: EventKind, tenant: &str, operation: &str) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            time: now_rfc3339(),
            kind,
            tenant: tenant.to_owned(),
            operation: operation.to_owned(),
            outcome: "granted".to_owned(),
            code: 0,
            keys: 0,
            requesting_id: String::new(),
            data_label: String::new(),
            source_ip: String::new(),
            object_id: String::new(),
            request_id: String::new(),
            custom: BTreeMap::new(),
            kms_config_id: None,
            lease_id: None,
            event_time_millis: None,
            proxy: String::new(),
            checkpoint: None,
        }
    }
}

fn now_rfc3339() -> String {
    // Always three fractional digits, so the text sorts as the time does.
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc().format(FORMAT).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_time_is_rfc3339_utc() {
        let a = AuditEvent::new(EventKind::Data, "t", "wrap");
        let b = AuditEvent::new(EventKind::Data, "t", "wrap");
        assert_ne!(a.id, b.id);
        assert!(a.id < b.id || a.id[..13] == b.id[..13], "UUID v7 ids sort by time");
        assert!(a.time.ends_with('Z') && a.time.len() == 24, "{}", a.time);
    }

    #[test]
    fn empty_fields_are_left_out() {
        let json = serde_json::to_string(&AuditEvent::new(EventKind::Data, "t", "wrap")).unwrap();
        assert!(!json.contains("requesting_id") && json.contains(r#""kind":"data""#), "{json}");
    }
}
