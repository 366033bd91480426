//! `wire_json`: the JSON bodies of the proxy API (`keyhold_core::wire`, `keyhold_core::metadata`).
//!
//! The input is parsed with `serde_json::from_slice` as every request body the proxy reads
//! (wrap, unwrap, batch-wrap, batch-unwrap, rekey, security-event, report-operations), as
//! `RequestMetadata`, and as every response body the SDK reads (wrapped/unwrapped key, error,
//! batch responses). Nothing panics; whatever parses serializes and parses back to the same
//! value, and its follow-up checks (`metadata().validate()`, the EDEK parser on the EDEK
//! strings, `ErrorBody::error_code`) run without panicking too.
#![no_main]

use std::fmt::Debug;

use keyhold_core::edek::EncryptedDeks;
use keyhold_core::metadata::RequestMetadata;
use keyhold_core::wire::{
    BatchUnwrapRequest, BatchUnwrapResponse, BatchWrapRequest, BatchWrapResponse, ErrorBody,
    OperationCounts, RekeyRequest, ReportOperationsRequest, SecurityEventRequest, UnwrapRequest,
    UnwrappedKey, WrapRequest, WrappedKey,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Parses `data` as `T`; if it parses, checks that it survives a JSON round trip.
fn parse<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let value: T = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_vec(&value).expect("a parsed body serializes");
    let back: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!("re-serialized body does not parse: {e}: {}", String::from_utf8_lossy(&json))
    });
    assert_eq!(back, value, "JSON round trip changed the value");
    Some(value)
}

fn edek(text: &str) {
    let _ = EncryptedDeks::from_base64(text);
}

fuzz_target!(|data: &[u8]| {
    if let Some(req) = parse::<WrapRequest>(data) {
        let _ = req.metadata().validate();
    }
    if let Some(req) = parse::<UnwrapRequest>(data) {
        let _ = req.metadata().validate();
        edek(&req.encrypted_document_key);
    }
    if let Some(req) = parse::<BatchWrapRequest>(data) {
        let _ = req.metadata().validate();
    }
    if let Some(req) = parse::<BatchUnwrapRequest>(data) {
        let _ = req.metadata().validate();
        req.edeks.values().for_each(|e| edek(e));
    }
    if let Some(req) = parse::<RekeyRequest>(data) {
        let meta = req.metadata();
        let _ = meta.validate();
        let _ = meta.for_tenant(req.new_tenant_id.clone()).validate();
        edek(&req.encrypted_document_key);
    }
    if let Some(req) = parse::<SecurityEventRequest>(data) {
        let _ = req.metadata().validate();
    }
    if let Some(req) = parse::<ReportOperationsRequest>(data) {
        let (meta, (operations,)) = req.split_metadata();
        let _ = meta.validate();
        operations.keys().for_each(|e| edek(e));
    }
    if let Some(meta) = parse::<RequestMetadata>(data) {
        let _ = meta.validate();
    }
    let _ = parse::<OperationCounts>(data);
    if let Some(key) = parse::<WrappedKey>(data) {
        edek(&key.edek);
    }
    let _ = parse::<UnwrappedKey>(data);
    if let Some(body) = parse::<ErrorBody>(data) {
        let _ = body.error_code();
    }
    if let Some(resp) = parse::<BatchWrapResponse>(data) {
        for failure in resp.failures.values() {
            let _ = failure.error_code();
        }
    }
    if let Some(resp) = parse::<BatchUnwrapResponse>(data) {
        for failure in resp.failures.values() {
            let _ = failure.error_code();
        }
    }
});
