//! `audit_export`: reading an audit stream back (`keyhold_audit::export::verify_chains`,
//! `chain::verify`, `sink::Outgoing::parse`).
//!
//! Raw input: the first byte picks the format (JSON lines, syslog capture, OpenSearch export) and
//! whether the stream may start in the middle; the rest is the export. Nothing panics; a chain
//! that verifies counts no more records than the input has lines; every line is also given to
//! `Outgoing::parse` (what delivery reads).
//!
//! Structured: arbitrary events chained with `ChainHead::append` verify, in every format, as one
//! chain with all their records; removing one record that is not the last, or changing the
//! tenant of one (a content change), makes verification fail.
#![no_main]

use arbitrary::Arbitrary;
use keyhold_audit::chain::{ChainHead, verify};
use keyhold_audit::event::{AuditEvent, EventKind};
use keyhold_audit::export::{ExportFormat, verify_chains};
use keyhold_audit::sink::Outgoing;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Event {
    operation: String,
    requesting_id: String,
    object_id: String,
    custom: Vec<(String, String)>,
    kms_config_id: Option<i32>,
    refused: bool,
}

#[derive(Debug, Arbitrary)]
struct Stream {
    tenant: String,
    events: Vec<Event>,
    cut: u8,
}

fn format_of(byte: u8) -> ExportFormat {
    match byte % 3 {
        0 => ExportFormat::JsonLines,
        1 => ExportFormat::Syslog,
        _ => ExportFormat::OpenSearch,
    }
}

fn raw(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let format = format_of(selector);
    let from_middle = selector & 0x80 != 0;
    if let Ok(chains) = verify_chains(rest, format, None, from_middle, &[]) {
        let lines = rest.split(|&b| b == b'\n').count() as u64;
        let total: u64 = chains.iter().map(|c| c.verified.records + c.verified.duplicates).sum();
        // An OpenSearch answer can hold many documents on one line.
        if format != ExportFormat::OpenSearch {
            assert!(total <= lines, "{total} records from {lines} lines");
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        for line in text.lines() {
            let _ = Outgoing::parse(line.to_owned());
        }
    }
    let _ = verify(rest, from_middle);
}

fn structured(data: &[u8]) {
    let Ok(stream) = Stream::arbitrary(&mut arbitrary::Unstructured::new(data)) else { return };
    if stream.events.is_empty() || stream.events.len() > 64 {
        return;
    }
    let mut head = ChainHead::default();
    let mut lines = Vec::new();
    for given in &stream.events {
        let mut event = AuditEvent::new(EventKind::Data, &stream.tenant, &given.operation);
        event.requesting_id.clone_from(&given.requesting_id);
        event.object_id.clone_from(&given.object_id);
        event.custom = given.custom.iter().cloned().collect();
        event.kms_config_id = given.kms_config_id;
        if given.refused {
            event.outcome = "refused".into();
            event.code = 206;
        }
        let line = head.append(&event).expect("an event serializes");
        lines.push(String::from_utf8(line).expect("records are UTF-8"));
    }
    let n = lines.len() as u64;
    let jsonl: String = lines.concat();
    let syslog: String = lines
        .iter()
        .map(|l| format!("<110>1 2026-12-01T00:00:00.000Z p keyhold - audit - {l}"))
        .collect();
    let hits: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::json!({"_source": serde_json::from_str::<serde_json::Value>(l).unwrap()}))
        .collect();
    let opensearch = serde_json::json!({"hits": {"hits": hits}}).to_string();
    for (text, format) in [
        (&jsonl, ExportFormat::JsonLines),
        (&syslog, ExportFormat::Syslog),
        (&opensearch, ExportFormat::OpenSearch),
    ] {
        let chains = verify_chains(text.as_bytes(), format, None, false, &[])
            .unwrap_or_else(|e| panic!("{format:?}: a fresh stream does not verify: {e}"));
        assert_eq!(chains.len(), 1);
        assert_eq!((chains[0].verified.records, chains[0].verified.head.seq), (n, n));
    }
    if n >= 2 {
        let cut = usize::from(stream.cut) % (lines.len() - 1);
        let mut removed = lines.clone();
        removed.remove(cut);
        assert!(verify(removed.concat().as_bytes(), false).is_err(), "record {} removed", cut + 1);
    }
    let mut altered: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    altered["event"]["tenant"] = format!("{}x", stream.tenant).into();
    let altered = format!("{altered}\n{}", lines[1..].concat());
    assert!(verify(altered.as_bytes(), false).is_err(), "a changed tenant verifies");
}

fuzz_target!(|data: &[u8]| {
    raw(data);
    structured(data);
});
