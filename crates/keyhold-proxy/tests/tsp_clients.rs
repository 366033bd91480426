//! Requests in the exact shapes IronCore's published clients send, and the answers they need
//! (docs/tsp-api.md §10, "compatibility checklist").
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use base64::Engine as _;
use common::TestProxy;
use http::StatusCode;
use keyhold_core::edek::{EncryptedDek, EncryptedDeks};
use serde_json::{Value, json};

#[tokio::test]
async fn security_event_success_body_is_exactly_null() {
    let p = TestProxy::new();
    // Java / Node / Go / PHP form: the name in iclFields.event.
    let java = r#"{"tenantId":"tenant-a","timestampMillis":1718000000000,"iclFields":{"requestingId":"user-42","sourceIp":"203.0.113.9","objectId":"doc-1","requestId":"req-1","dataLabel":"PII","event":"USER_LOGIN"},"customFields":{"loginMethod":"sso"}}"#;
    // alloy form: a top-level event, null members.
    let alloy = r#"{"event":"USER_LOGIN","tenantId":"tenant-a","iclFields":{"requestingId":"IronCore Labs Alloy SDK","dataLabel":null,"sourceIp":null,"objectId":null,"requestId":null},"customFields":{},"timestampMillis":1718000000000}"#;
    // Go with an unset event time and a nil custom field map.
    let go = r#"{"tenantId":"tenant-a","timestampMillis":-62135596800000,"iclFields":{"requestingId":"svc","event":"PERIODIC_CREATE_BACKUP"},"customFields":null}"#;
    for body in [java, alloy, go] {
        let (status, content_type, text) = p.post_text("/api/1/event/security-event", body).await;
        assert_eq!(status, StatusCode::OK, "{body}: {text}");
        assert_eq!(text, "null", "PHP and alloy need the body to be exactly `null`");
        assert!(content_type.starts_with("application/json"));
    }
}

#[tokio::test]
async fn null_metadata_members_are_accepted() {
    let p = TestProxy::new();
    // PHP / alloy: unset iclFields members are null. Go: customFields null.
    let body = r#"{"tenantId":"tenant-a","iclFields":{"requestingId":"php","dataLabel":null,"sourceIp":null,"objectId":null,"requestId":null},"customFields":null}"#;
    let (status, _, text) = p.post_text("/api/1/document/wrap", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let wrapped: Value = serde_json::from_str(&text).unwrap();
    let edek = wrapped["edek"].as_str().unwrap();
    let body = format!(
        r#"{{"tenantId":"tenant-a","iclFields":{{"requestingId":"go"}},"customFields":null,"encryptedDocumentKey":"{edek}"}}"#
    );
    let (status, _, text) = p.post_text("/api/1/document/unwrap", &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

#[tokio::test]
async fn keys_are_standard_padded_base64_and_the_dek_is_32_bytes() {
    let p = TestProxy::new();
    let wrapped = p.wrap("tenant-a").await;
    for field in ["dek", "edek"] {
        let text = wrapped[field].as_str().unwrap();
        assert_eq!(text.len() % 4, 0, "Go rejects unpadded base64");
        assert!(!text.contains('-') && !text.contains('_'));
        base64::engine::general_purpose::STANDARD.decode(text).unwrap();
    }
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(wrapped["dek"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    // alloy refuses API keys that are not base64 of at least 12 bytes.
    let key = base64::engine::general_purpose::STANDARD.decode(&p.api_key).unwrap();
    assert!(key.len() >= 12);
}

#[tokio::test]
async fn a_doubled_slash_in_the_path_is_tolerated() {
    let p = TestProxy::new();
    let (status, body) = p.post("//api/1/document/wrap", common::meta("tenant-a")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn batch_maps_are_always_present_and_cover_every_id() {
    let p = TestProxy::new();
    let mut req = common::meta("tenant-a");
    req["documentIds"] = json!(["x", "y", "x"]);
    let (status, body) = p.post("/api/1/document/batch-wrap", req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["failures"].is_object(), "failures must be present even when empty: {body}");
    assert_eq!(body["keys"].as_object().unwrap().len(), 2);

    let mut req = common::meta("tenant-a");
    req["edeks"] = json!({"only-bad": "AAAA"});
    let (status, body) = p.post("/api/1/document/batch-unwrap", req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["keys"].as_object().unwrap().is_empty(),
        "keys must be present even when empty: {body}"
    );
    let failure = &body["failures"]["only-bad"];
    assert!(failure["code"].is_u64() && failure["message"].is_string(), "{failure}");
}

#[tokio::test]
async fn alloy_rebuilt_edeks_unwrap() {
    // alloy stores kmsConfigId, and sends back an EncryptedDeks it rebuilt with the matching entry
    // (tenantId filled in). Proxies that wrap with several configurations return several entries.
    let p = TestProxy::new();
    let wrapped = p.wrap("tenant-a").await;
    let env = EncryptedDeks::from_base64(wrapped["edek"].as_str().unwrap()).unwrap();
    let ours = env.encrypted_deks[0].clone();
    assert!(ours.kms_config_id > 0);
    let rebuilt =
        EncryptedDeks::single(EncryptedDek { tenant_id: "tenant-a".into(), ..ours.clone() });
    let (status, body) = p.unwrap("tenant-a", &rebuilt.to_base64()).await;
    assert_eq!((status, &body["dek"]), (StatusCode::OK, &wrapped["dek"]));
    // An extra entry for a configuration this tenant does not have is skipped.
    let foreign = EncryptedDek {
        kms_config_id: 999,
        encrypted_dek_data: vec![1, 2, 3],
        tenant_id: "tenant-a".into(),
        ..EncryptedDek::default()
    };
    let two = EncryptedDeks { encrypted_deks: vec![foreign, ours] };
    let (status, body) = p.unwrap("tenant-a", &two.to_base64()).await;
    assert_eq!((status, &body["dek"]), (StatusCode::OK, &wrapped["dek"]));
}

#[tokio::test]
async fn error_bodies_never_look_like_success_bodies() {
    // alloy and PHP try the success shape first, whatever the status.
    let p = TestProxy::new();
    let (status, body) = p.unwrap("tenant-a", "AAAA").await;
    assert!(status.is_client_error());
    let obj = body.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["code", "message"]);
    let (_, _, text) = p
        .post_text(
            "/api/1/event/security-event",
            r#"{"tenantId":"tenant-a","iclFields":{"requestingId":"u"}}"#,
        )
        .await;
    assert_ne!(text, "null");
    assert!(text.contains("\"code\":301"), "{text}");
}
