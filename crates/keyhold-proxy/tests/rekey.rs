//! Rekey: the `[rekey]` policy for moves into another tenant, and the batch-rekey extension.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::{TestProxy, code, meta};
use http::StatusCode;
use keyhold_core::edek::EncryptedDeks;
use keyhold_proxy::ProxyConfig;
use serde_json::{Value, json};

const ALLOW_A_TO_B: &str = "\n[rekey]\nallow = [ { from = \"tenant-a\", to = \"tenant-b\" } ]\n";

fn edek(v: &Value) -> String {
    v["edek"].as_str().unwrap().to_owned()
}

async fn batch_wrap(p: &TestProxy, tenant: &str, n: usize) -> Value {
    let mut req = meta(tenant);
    req["documentIds"] = json!((0..n).map(|i| format!("d{i}")).collect::<Vec<_>>());
    let (status, body) = p.post("/api/1/document/batch-wrap", req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn batch_rekey(p: &TestProxy, from: &str, to: &str, edeks: Value) -> (StatusCode, Value) {
    let mut req = meta(from);
    req["newTenantId"] = json!(to);
    req["edeks"] = edeks;
    p.post("/api/1/document/batch-rekey", req).await
}

async fn rekey(p: &TestProxy, from: &str, to: &str, edek: &str) -> (StatusCode, Value) {
    let mut req = meta(from);
    req["newTenantId"] = json!(to);
    req["encryptedDocumentKey"] = json!(edek);
    p.post("/api/1/document/rekey", req).await
}

/// (operation, outcome, code, keys) of the rekey events in `tenant`'s audit spool.
fn rekey_events(p: &TestProxy, tenant: &str) -> Vec<(String, String, u64, u64)> {
    let path = keyhold_audit::spool::tenant_file(&p.path("audit"), tenant);
    let text = std::fs::read_to_string(&path).unwrap();
    keyhold_audit::verify(text.as_bytes(), false).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| r["event"].clone())
        .filter(|e| e["operation"].as_str().unwrap().contains("rekey"))
        .map(|e| {
            let text = |f: &str| e[f].as_str().unwrap().to_owned();
            (
                text("operation"),
                text("outcome"),
                e["code"].as_u64().unwrap(),
                e["keys"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn events(list: &[(&str, &str, u64, u64)]) -> Vec<(String, String, u64, u64)> {
    list.iter().map(|(o, r, c, k)| ((*o).to_owned(), (*r).to_owned(), *c, *k)).collect()
}

/// A proxy over `p`'s keys whose tenant-a config 1 has `status`, with config 3 (key
/// `tenant-a-new`) primary: tenant-a after switching to a new key.
fn after_key_change(p: &TestProxy, status: &str) -> TestProxy {
    let text = std::fs::read_to_string(p.path("keyhold.toml")).unwrap();
    let old = "id = 1\nstatus = \"primary\"\ntype = \"local\"\nkey = \"tenant-a\"\n";
    assert!(text.contains(old), "{text}");
    let new = format!(
        "id = 1\nstatus = \"{status}\"\ntype = \"local\"\nkey = \"tenant-a\"\n\n[[tenants.kms_configs]]\nid = 3\nstatus = \"primary\"\ntype = \"local\"\nkey = \"tenant-a-new\"\n"
    );
    let mut config = ProxyConfig::from_toml(&text.replace(old, &new)).unwrap();
    config.base_dir = p.dir.path().to_owned();
    config.validate().unwrap();
    TestProxy::from_loaded(p.dir.path(), config)
}

#[tokio::test]
async fn batch_rekey_moves_edeks_to_the_new_primary_config_without_returning_deks() {
    let p = TestProxy::new();
    let wrapped = batch_wrap(&p, "tenant-a", 10).await;
    let foreign = p.wrap("tenant-b").await;
    p.keystore_from_disk().create_key("tenant-a-new").unwrap();
    let p2 = after_key_change(&p, "active");

    let mut edeks = json!({"bad": "not-an-edek", "foreign": foreign["edek"], "empty": ""});
    for i in 0..10 {
        edeks[format!("d{i}")] = wrapped["keys"][format!("d{i}")]["edek"].clone();
    }
    let (status, body) = batch_rekey(&p2, "tenant-a", "tenant-a", edeks).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Every id in exactly one map.
    let (new, failures) =
        (body["edeks"].as_object().unwrap(), body["failures"].as_object().unwrap());
    assert_eq!((new.len(), failures.len()), (10, 3), "{body}");
    for id in ["bad", "foreign", "empty"] {
        assert!(!new.contains_key(id));
    }
    assert_eq!(code(&body["failures"]["bad"]), 203);
    assert_eq!(code(&body["failures"]["foreign"]), 203);
    assert_eq!(code(&body["failures"]["empty"]), 102);
    // No data key in the answer.
    let text = body.to_string();
    assert!(!text.contains("\"dek\""));
    for i in 0..10 {
        assert!(!text.contains(wrapped["keys"][format!("d{i}")]["dek"].as_str().unwrap()));
    }

    // Config 1 disabled: the old EDEKs are refused, the rekeyed ones open to the same keys, and
    // they name config 3.
    let p3 = after_key_change(&p, "disabled");
    for i in 0..10 {
        let id = format!("d{i}");
        let rekeyed = body["edeks"][&id].as_str().unwrap();
        let envelope = EncryptedDeks::from_base64(rekeyed).unwrap();
        assert_eq!(envelope.encrypted_deks[0].kms_config_id, 3);
        let (status, opened) = p3.unwrap("tenant-a", rekeyed).await;
        assert_eq!(status, StatusCode::OK, "{opened}");
        assert_eq!(opened["dek"], wrapped["keys"][&id]["dek"]);
        let (status, refused) = p3.unwrap("tenant-a", &edek(&wrapped["keys"][&id])).await;
        assert_eq!((status, code(&refused)), (StatusCode::FORBIDDEN, 202), "{refused}");
    }
    // One audit event per outcome.
    let expected = [
        ("batch_rekey", "refused", 102, 1),
        ("batch_rekey", "refused", 203, 2),
        ("batch_rekey", "granted", 0, 10),
    ];
    assert_eq!(rekey_events(&p2, "tenant-a"), events(&expected));
}

#[tokio::test]
async fn batch_rekey_limits_and_tenant_level_failures() {
    let p = TestProxy::new();
    let w = p.wrap("tenant-a").await;
    let too_many: serde_json::Map<String, Value> =
        (0..=p.config.max_batch_size).map(|i| (i.to_string(), w["edek"].clone())).collect();
    let (status, body) = batch_rekey(&p, "tenant-a", "tenant-a", Value::Object(too_many)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 102), "{body}");
    let (status, body) = batch_rekey(&p, "nobody", "nobody", json!({"x": w["edek"]})).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, 201), "{body}");
    let (status, body) = batch_rekey(&p, "tenant-a", "", json!({"x": w["edek"]})).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 102), "{body}");
    // An empty batch is an empty answer.
    let (status, body) = batch_rekey(&p, "tenant-a", "tenant-a", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"edeks": {}, "failures": {}}));
}

/// The KMS calls made for `tenant` so far, from `/metrics`.
async fn kms_calls(p: &TestProxy, tenant: &str) -> u64 {
    let (_, text) = p.get("/metrics").await;
    let prefix = format!("keyhold_kms_requests_total{{tenant=\"{tenant}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn a_move_into_another_tenant_is_refused_with_1001_and_never_reaches_the_kms() {
    // Without leasing, every key operation is a KMS call, so "no KMS call" is visible.
    let p = TestProxy::unleased();
    let w = p.wrap("tenant-a").await;
    let (a, b) = (kms_calls(&p, "tenant-a").await, kms_calls(&p, "tenant-b").await);
    assert_eq!((a, b), (1, 0));

    let (status, body) = rekey(&p, "tenant-a", "tenant-b", &edek(&w)).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 1001), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("tenant-b") && message.contains("[rekey]"), "{message}");
    let (status, body) =
        batch_rekey(&p, "tenant-a", "tenant-b", json!({"x": w["edek"], "y": "junk"})).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 1001), "{body}");
    // Whether the target exists is not revealed.
    let (status, body) = rekey(&p, "tenant-a", "nobody", &edek(&w)).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 1001), "{body}");

    assert_eq!((kms_calls(&p, "tenant-a").await, kms_calls(&p, "tenant-b").await), (a, b));
    let expected = [
        ("rekey", "refused", 1001, 1),
        ("batch_rekey", "refused", 1001, 2),
        ("rekey", "refused", 1001, 1),
    ];
    assert_eq!(rekey_events(&p, "tenant-a"), events(&expected));

    // Within one tenant it is always allowed.
    let (status, body) = rekey(&p, "tenant-a", "tenant-a", &edek(&w)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = batch_rekey(&p, "tenant-a", "tenant-a", json!({"x": w["edek"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_rekey_allow_list_permits_a_move_in_one_direction() {
    let p = TestProxy::with_config(|t| t.push_str(ALLOW_A_TO_B));
    let w = batch_wrap(&p, "tenant-a", 3).await;
    let (status, body) = rekey(&p, "tenant-a", "tenant-b", &edek(&w["keys"]["d0"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dek"], w["keys"]["d0"]["dek"]);
    let (status, opened) = p.unwrap("tenant-b", &edek(&body)).await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    assert_eq!(opened["dek"], w["keys"]["d0"]["dek"]);

    let edeks = json!({"d1": w["keys"]["d1"]["edek"], "d2": w["keys"]["d2"]["edek"]});
    let (status, body) = batch_rekey(&p, "tenant-a", "tenant-b", edeks).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for id in ["d1", "d2"] {
        let (status, opened) = p.unwrap("tenant-b", body["edeks"][id].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{opened}");
        assert_eq!(opened["dek"], w["keys"][id]["dek"]);
    }

    // The other direction is not in the list.
    let mine = p.wrap("tenant-b").await;
    let (status, body) = rekey(&p, "tenant-b", "tenant-a", &edek(&mine)).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 1001), "{body}");
    let (status, body) = batch_rekey(&p, "tenant-b", "tenant-a", json!({"x": mine["edek"]})).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 1001), "{body}");
}
