//! Vendor keys held by the configuration (`type = "vendor"`) and rotation tracking: which KMS
//! configurations and key versions the EDEKs seen by the proxy still name
//! (`POST /api/1/tenant/kms-usage`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{TestProxy, code, meta};
use http::StatusCode;
use keyhold_core::secret::MasterKeyMaterial;
use serde_json::{Value, json};

fn edek(wrapped: &Value) -> String {
    wrapped["edek"].as_str().unwrap().to_owned()
}

fn config_of(edek: &str) -> i32 {
    keyhold_core::edek::EncryptedDeks::from_base64(edek).unwrap().encrypted_deks[0].kms_config_id
}

async fn usage(p: &TestProxy, tenant: &str) -> Value {
    let (status, body) = p.post("/api/1/tenant/kms-usage", json!({"tenantId": tenant})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn config(usage: &Value, id: i32) -> &Value {
    usage["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kmsConfigId"] == id)
        .unwrap_or_else(|| panic!("no config {id} in {usage}"))
}

/// A tenant whose primary key is a vendor key given in the configuration (as the broker seals
/// it), with its old local keystore key kept for decryption only.
fn proxy_with_vendor_key(material: &MasterKeyMaterial) -> TestProxy {
    let key = material.to_base64();
    TestProxy::with_config(|text| {
        let old = "id = 2\nstatus = \"primary\"\ntype = \"local\"\nkey = \"tenant-b\"\n";
        assert!(text.contains(old), "{text}");
        *text = text.replacen(
            old,
            &format!(
                "id = 2\nstatus = \"active\"\ntype = \"local\"\nkey = \"tenant-b\"\n\n\
                 [[tenants.kms_configs]]\nid = 30\nstatus = \"primary\"\ntype = \"vendor\"\n\
                 key = \"{}\"\nlabel = \"vendor key 2027\"\n",
                key.as_str()
            ),
            1,
        );
    })
}

#[tokio::test]
async fn a_vendor_key_wraps_and_usage_counts_edeks_by_config_and_key_version() {
    let material = MasterKeyMaterial::generate().unwrap();
    let before = TestProxy::new();
    // An EDEK of tenant-b under its local key (config 2, key version 1) ...
    let v1 = before.wrap("tenant-b").await;
    assert_eq!(config_of(&edek(&v1)), 2);
    // ... then the tenant moves to a vendor key (config 30); the local key stays for
    // decryption. (Same keystore: copied from the first proxy.)
    let moved = proxy_with_vendor_key(&material);
    std::fs::copy(before.path("keystore"), moved.path("keystore")).unwrap();
    std::fs::copy(before.path("root.key"), moved.path("root.key")).unwrap();
    let p = TestProxy::from_loaded(moved.dir.path(), moved.config.clone());

    // New keys come from the vendor key (config 30).
    let fresh = p.wrap("tenant-b").await;
    assert_eq!(config_of(&edek(&fresh)), 30);
    // A second proxy with the same sealed key material unwraps it; another material does not.
    let (status, body) = p.unwrap("tenant-b", &edek(&fresh)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dek"], fresh["dek"]);
    let other = proxy_with_vendor_key(&MasterKeyMaterial::generate().unwrap());
    let (status, body) = other.unwrap("tenant-b", &edek(&fresh)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");

    // Old EDEKs (config 2, key version 1) still unwrap; each unwrap is counted.
    for _ in 0..3 {
        let (status, body) = p.unwrap("tenant-b", &edek(&v1)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let report = usage(&p, "tenant-b").await;
    assert_eq!(report["tenantId"], "tenant-b");
    let local = config(&report, 2);
    assert_eq!(local["status"], "active");
    assert_eq!(local["kind"], "local");
    assert_eq!(local["edeksSeen"], 3);
    assert_eq!(
        local["keyVersions"],
        json!([{"keyVersion": "1", "edeksSeen": 3, "lastSeen": local["lastSeen"]}])
    );
    let vendor = config(&report, 30);
    assert_eq!(
        (vendor["status"].as_str(), vendor["kind"].as_str()),
        (Some("primary"), Some("vendor"))
    );
    assert_eq!(vendor["edeksSeen"], 1);
    assert_eq!(vendor["keyVersions"][0]["keyVersion"], "1");
    assert!(local["lastSeen"].as_u64().unwrap() >= report["since"].as_u64().unwrap());

    // An EDEK naming a disabled configuration is refused, and still counted: it is what
    // tells the owner that something still depends on that configuration.
    let disabled = TestProxy::with_config(|text| {
        let old = "id = 2\nstatus = \"primary\"";
        assert!(text.contains(old));
        *text = text.replacen(old, "id = 2\nstatus = \"disabled\"", 1);
        *text = text.replacen(
            "key = \"tenant-b\"\n",
            "key = \"tenant-b\"\n\n[[tenants.kms_configs]]\nid = 31\nstatus = \"primary\"\ntype = \"vendor\"\nkey = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n",
            1,
        );
    });
    let (status, body) = disabled.unwrap("tenant-b", &edek(&v1)).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 202), "{body}");
    let report = usage(&disabled, "tenant-b").await;
    assert_eq!(config(&report, 2)["status"], "disabled");
    assert_eq!(config(&report, 2)["edeksSeen"], 1);
    assert_eq!(config(&report, 31)["edeksSeen"], 0);
    assert_eq!(config(&report, 31)["lastSeen"], Value::Null);

    // Another tenant's counts are its own; an unknown tenant is 404 with the TSP code.
    let report = usage(&p, "tenant-a").await;
    assert_eq!(config(&report, 1)["edeksSeen"], 0);
    let (status, body) = p.post("/api/1/tenant/kms-usage", json!({"tenantId": "nobody"})).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, 201), "{body}");
    let (status, body) = p.post("/api/1/tenant/kms-usage", meta("tenant-a")).await;
    assert_eq!(status, StatusCode::OK, "metadata fields are accepted too: {body}");
}

#[tokio::test]
async fn a_vendor_key_that_is_not_32_bytes_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = keyhold_proxy::bootstrap::init_data_dir(dir.path(), &["t"], "127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&data.config_path).unwrap().replacen(
        "type = \"local\"\nkey = \"t\"",
        "type = \"vendor\"\nkey = \"c2hvcnQ=\"",
        1,
    );
    std::fs::write(&data.config_path, text).unwrap();
    let config = keyhold_proxy::ProxyConfig::load(&data.config_path).unwrap();
    let err = keyhold_proxy::AppState::from_config(&config).await.unwrap_err();
    assert!(err.to_string().contains("32 bytes"), "{err}");
}
