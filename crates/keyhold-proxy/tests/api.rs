//! The proxy's HTTP API, driven through the router without sockets.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{TestProxy, code, meta};
use http::StatusCode;
use keyhold_core::edek::EncryptedDeks;
use keyhold_kms::local::LocalKms;
use serde_json::json;

fn edek_str(v: &serde_json::Value) -> String {
    v["edek"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn wrap_then_unwrap_returns_the_same_key() {
    let p = TestProxy::new();
    let wrapped = p.wrap("tenant-a").await;
    let dek = B64.decode(wrapped["dek"].as_str().unwrap()).unwrap();
    assert_eq!(dek.len(), 32);
    let envelope = EncryptedDeks::from_base64(&edek_str(&wrapped)).unwrap();
    let entry = &envelope.encrypted_deks[0];
    assert_eq!(entry.kms_config_id, 1);
    assert_eq!(entry.tenant_id, "tenant-a");
    let (status, body) = p.unwrap("tenant-a", &edek_str(&wrapped)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dek"], wrapped["dek"]);
    let other = p.wrap("tenant-a").await;
    assert_ne!(other["dek"], wrapped["dek"]);
}

#[tokio::test]
async fn an_edek_of_tenant_a_is_refused_for_tenant_b() {
    let p = TestProxy::new();
    let wrapped = p.wrap("tenant-a").await;
    let (status, body) = p.unwrap("tenant-b", &edek_str(&wrapped)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");

    // Even with the tenant id inside the envelope rewritten, the KMS context refuses it: the
    // config id is tenant A's, so tenant B has no such configuration.
    let mut envelope = EncryptedDeks::from_base64(&edek_str(&wrapped)).unwrap();
    envelope.encrypted_deks[0].tenant_id = "tenant-b".into();
    let (status, body) = p.unwrap("tenant-b", &envelope.to_base64()).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");

    // And with tenant B's config id forged in as well, the wrapped key does not authenticate.
    envelope.encrypted_deks[0].kms_config_id = 2;
    let (status, body) = p.unwrap("tenant-b", &envelope.to_base64()).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");
}

#[tokio::test]
async fn tampered_and_malformed_edeks_are_refused_with_203() {
    let p = TestProxy::new();
    let wrapped = p.wrap("tenant-a").await;
    let raw = B64.decode(edek_str(&wrapped)).unwrap();
    // Flip a bit inside the wrapped key (last byte: the GCM tag).
    let mut envelope = EncryptedDeks::from_bytes(&raw).unwrap();
    let data = &mut envelope.encrypted_deks[0].encrypted_dek_data;
    let last = data.len() - 1;
    data[last] ^= 1;
    let (status, body) = p.unwrap("tenant-a", &envelope.to_base64()).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");
    for bad in
        ["!!!not base64", "AAAA", &B64.encode(&raw[..raw.len() / 2]), &B64.encode(b"\xff\xff\xff")]
    {
        let (status, body) = p.unwrap("tenant-a", bad).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{bad}: {body}");
    }
    let (status, body) = p.unwrap("tenant-a", "").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 102), "{body}");
}

#[tokio::test]
async fn wrong_or_missing_api_key_is_401_with_the_tsp_body() {
    let p = TestProxy::new();
    for auth in [None, Some("cmk wrong-key-0123456789abcdef"), Some("Bearer x"), Some("cmk")] {
        let (status, body) =
            p.post_raw("/api/1/document/wrap", auth, meta("tenant-a").to_string()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(code(&body), 101);
        assert!(body["message"].as_str().unwrap().contains("API key"));
    }
}

#[tokio::test]
async fn bad_requests_are_4xx_with_codes() {
    let p = TestProxy::new();
    let auth = format!("cmk {}", p.api_key);
    let (status, body) = p.post("/api/1/document/wrap", meta("no-such-tenant")).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, 201), "{body}");

    let (status, body) = p.post_raw("/api/1/document/wrap", Some(&auth), "{not json").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 102), "{body}");

    let (status, body) = p.post("/api/1/document/wrap", json!({"tenantId": "tenant-a"})).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 102), "{body}");
    assert!(body["message"].as_str().unwrap().contains("requestingId"));

    let (status, body) = p.post("/api/1/document/wrap", json!({"tenantId": 5})).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 102), "{body}");

    let huge =
        format!(r#"{{"tenantId":"tenant-a","pad":"{}"}}"#, "x".repeat(p.config.max_body_bytes));
    let (status, body) = p.post_raw("/api/1/document/wrap", Some(&auth), huge).await;
    assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, 102), "{body}");

    let (status, body) = p.post("/api/1/nope", meta("tenant-a")).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, 100), "{body}");

    // Without a key every route but health and metrics is refused, whatever the method or
    // path; with one, the wrong method is a 405 and an unknown path a 404.
    for (method, path) in [("GET", "/api/1/document/wrap"), ("POST", "/api/1/nope"), ("PUT", "/x")]
    {
        let (status, body) = p.request(method, path, None).await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, 101), "{method} {path}");
    }
    let (status, body) = p.request("GET", "/api/1/document/wrap", Some(&auth)).await;
    assert_eq!((status, code(&body)), (StatusCode::METHOD_NOT_ALLOWED, 102), "{body}");
    let (status, body) = p.request("GET", "/nope", Some(&auth)).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, 100), "{body}");
    for open in ["/health", "/live", "/ready", "/metrics"] {
        assert_eq!(p.get(open).await.0, StatusCode::OK, "{open} without a key");
    }

    let mut rekey = meta("tenant-a");
    rekey["encryptedDocumentKey"] = json!(edek_str(&p.wrap("tenant-a").await));
    let (status, body) = p.post("/api/1/document/rekey", rekey).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, 102),
        "missing newTenantId: {body}"
    );
}

#[tokio::test]
async fn disabled_key_is_denied_and_rotation_keeps_old_edeks() {
    // Without leasing, every call asks the KMS, so a disabled key is refused at once.
    let p = TestProxy::unleased();
    let ks = p.keystore();
    let before = p.wrap("tenant-a").await;

    ks.set_enabled("tenant-a", false).unwrap();
    let (status, body) = p.unwrap("tenant-a", &edek_str(&before)).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 206), "{body}");
    let (status, body) = p.post("/api/1/document/wrap", meta("tenant-a")).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 206), "{body}");
    // The other tenant is not affected.
    p.wrap("tenant-b").await;

    ks.set_enabled("tenant-a", true).unwrap();
    ks.rotate_key("tenant-a").unwrap();
    let after = p.wrap("tenant-a").await;
    let version = |w: &serde_json::Value| {
        let env = EncryptedDeks::from_base64(&edek_str(w)).unwrap();
        LocalKms::key_version_of(&env.encrypted_deks[0].encrypted_dek_data).unwrap()
    };
    assert_eq!((version(&before), version(&after)), (1, 2));
    for w in [&before, &after] {
        let (status, body) = p.unwrap("tenant-a", &edek_str(w)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["dek"], w["dek"]);
    }
}

#[tokio::test]
async fn with_leasing_a_disabled_key_is_refused_from_the_next_renewal() {
    let p = TestProxy::new();
    let ks = p.keystore();
    let before = p.wrap("tenant-a").await;
    let leases = p.state.service.leases("tenant-a", 1).expect("tenant-a leases");

    ks.set_enabled("tenant-a", false).unwrap();
    // What the renewal task does at the end of the interval (shown in real time in
    // tests/leasing.rs and by keyhold-cli's test).
    let refused = leases.renew().await.unwrap_err();
    assert!(refused.is_revocation(), "{refused:?}");
    let (status, body) = p.unwrap("tenant-a", &edek_str(&before)).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 206), "{body}");
    let (status, body) = p.post("/api/1/document/wrap", meta("tenant-a")).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 206), "{body}");
    p.wrap("tenant-b").await;

    ks.set_enabled("tenant-a", true).unwrap();
    leases.renew().await.unwrap();
    let (status, body) = p.unwrap("tenant-a", &edek_str(&before)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dek"], before["dek"]);
    // The lease's life is in the tenant's audit trail, between the key accesses.
    let periodic: Vec<(String, u64)> = audit_records(&p, "tenant-a")
        .iter()
        .map(|r| &r["event"])
        .filter(|e| e["kind"] == "periodic")
        .map(|e| {
            assert_eq!(e["kms_config_id"], 1);
            (e["operation"].as_str().unwrap().to_owned(), e["code"].as_u64().unwrap())
        })
        .collect();
    let expected = [
        ("lease_renewed", 0),
        ("lease_renewal_failed", 206),
        ("leases_dropped", 206),
        ("lease_renewed", 0),
    ];
    assert_eq!(periodic, expected.map(|(o, c)| (o.to_owned(), c)).to_vec());
}

#[tokio::test]
async fn edeks_made_with_and_without_leasing_both_unwrap() {
    let leased = TestProxy::new();
    // The same keys and configuration, leasing off.
    let text = std::fs::read_to_string(leased.path("keyhold.toml")).unwrap();
    std::fs::write(
        leased.path("keyhold.toml"),
        text.replacen("[leasing]\n", "[leasing]\nenabled = false\n", 1),
    )
    .unwrap();
    let config = keyhold_proxy::ProxyConfig::load(&leased.path("keyhold.toml")).unwrap();
    let unleased = TestProxy::from_loaded(leased.dir.path(), config);

    let a = leased.wrap("tenant-a").await;
    let b = unleased.wrap("tenant-a").await;
    let entry = |w: &serde_json::Value| {
        EncryptedDeks::from_base64(&edek_str(w)).unwrap().encrypted_deks[0].clone()
    };
    assert!(entry(&a).is_leased() && !entry(&b).is_leased());
    for proxy in [&leased, &unleased] {
        for w in [&a, &b] {
            let (status, body) = proxy.unwrap("tenant-a", &edek_str(w)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["dek"], w["dek"]);
        }
    }
    // A leased EDEK is refused for another tenant, and with its sealed key altered.
    let (status, body) = leased.unwrap("tenant-b", &edek_str(&a)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");
    let mut env = EncryptedDeks::from_base64(&edek_str(&a)).unwrap();
    env.encrypted_deks[0].encrypted_dek_data[0] ^= 1;
    for proxy in [&leased, &unleased] {
        let (status, body) = proxy.unwrap("tenant-a", &env.to_base64()).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");
    }
    // A lease key's envelope cannot be passed off as a data key's: the KMS context differs.
    let mut env = EncryptedDeks::from_base64(&edek_str(&a)).unwrap();
    let lease_key =
        EncryptedDeks::from_bytes(&env.encrypted_deks[0].encrypted_leased_key_data).unwrap();
    env.encrypted_deks[0] = lease_key.encrypted_deks[0].clone();
    let (status, body) = leased.unwrap("tenant-a", &env.to_base64()).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 203), "{body}");
}

#[tokio::test]
async fn config_status_is_enforced() {
    // tenant-b's only configuration is made decrypt-only, then disabled.
    let p = TestProxy::with_config(|t| {
        *t = t.replacen("id = 2\nstatus = \"primary\"", "id = 2\nstatus = \"active\"", 1);
    });
    let (status, body) = p.post("/api/1/document/wrap", meta("tenant-b")).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, 200), "{body}");

    let p = TestProxy::with_config(|t| {
        // Add a second, disabled configuration to tenant-a with a key of its own.
        t.push_str("\n[[tenants.kms_configs]]\nid = 3\nstatus = \"disabled\"\ntype = \"local\"\nkey = \"tenant-b\"\n");
    });
    // tenant-b's key also backs config 3 (of tenant-b in the file's last table). Make an EDEK
    // naming config 3 by wrapping under tenant-b's primary and relabelling: the disabled status
    // is checked before the KMS is asked.
    let wrapped = p.wrap("tenant-b").await;
    let mut env = EncryptedDeks::from_base64(&edek_str(&wrapped)).unwrap();
    env.encrypted_deks[0].kms_config_id = 3;
    // A leased entry names its configuration twice (the lease key's envelope too).
    let nested = &mut env.encrypted_deks[0].encrypted_leased_key_data;
    assert!(!nested.is_empty(), "tenants lease keys by default");
    let mut lease_key = EncryptedDeks::from_bytes(nested).unwrap();
    lease_key.encrypted_deks[0].kms_config_id = 3;
    *nested = lease_key.to_bytes();
    let mut body = meta("tenant-b");
    body["encryptedDocumentKey"] = json!(env.to_base64());
    let (status, body) = p.post("/api/1/document/unwrap", body).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 202), "{body}");
}

#[tokio::test]
async fn batches_report_per_id_failures() {
    let p = TestProxy::new();
    let mut req = meta("tenant-a");
    req["documentIds"] = json!(["d1", "d2", "d3"]);
    let (status, wrapped) = p.post("/api/1/document/batch-wrap", req).await;
    assert_eq!(status, StatusCode::OK, "{wrapped}");
    assert_eq!(wrapped["keys"].as_object().unwrap().len(), 3);
    assert!(wrapped["failures"].as_object().unwrap().is_empty());

    let foreign = p.wrap("tenant-b").await;
    let mut req = meta("tenant-a");
    req["edeks"] = json!({
        "d1": wrapped["keys"]["d1"]["edek"],
        "d2": wrapped["keys"]["d2"]["edek"],
        "bad": "not-an-edek",
        "foreign": foreign["edek"],
    });
    let (status, body) = p.post("/api/1/document/batch-unwrap", req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["keys"]["d1"]["dek"], wrapped["keys"]["d1"]["dek"]);
    assert_eq!(body["keys"]["d2"]["dek"], wrapped["keys"]["d2"]["dek"]);
    assert_eq!(body["failures"]["bad"]["code"], 203);
    assert_eq!(body["failures"]["foreign"]["code"], 203);
    assert_eq!(body["keys"].as_object().unwrap().len(), 2);
    // The audit trail has one event per outcome of each batch, not one per id.
    let summary: Vec<(String, String, u64, u64)> = audit_records(&p, "tenant-a")
        .iter()
        .map(|r| &r["event"])
        .filter(|e| e["operation"].as_str().unwrap().starts_with("batch"))
        .map(|e| {
            let text = |f: &str| e[f].as_str().unwrap().to_owned();
            (
                text("operation"),
                text("outcome"),
                e["code"].as_u64().unwrap(),
                e["keys"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("batch_wrap", "granted", 0, 3),
        ("batch_unwrap", "refused", 203, 2),
        ("batch_unwrap", "granted", 0, 2),
    ];
    assert_eq!(summary, expected.map(|(o, r, c, k)| (o.to_owned(), r.to_owned(), c, k)).to_vec());

    // A tenant-level problem fails the whole call.
    let mut req = meta("nobody");
    req["documentIds"] = json!(["x"]);
    let (status, body) = p.post("/api/1/document/batch-wrap", req).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, 201));

    // Over the batch limit.
    let mut req = meta("tenant-a");
    req["documentIds"] =
        json!((0..=p.config.max_batch_size).map(|i| i.to_string()).collect::<Vec<_>>());
    let (status, body) = p.post("/api/1/document/batch-wrap", req).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 102), "{body}");
}

#[tokio::test]
async fn rekey_moves_a_key_to_another_tenant() {
    // Allowed by the proxy's rekey policy (without it: 1001, see tests/rekey.rs).
    let p = TestProxy::with_config(|t| {
        t.push_str("\n[rekey]\nallow = [ { from = \"tenant-a\", to = \"*\" } ]\n");
    });
    let wrapped = p.wrap("tenant-a").await;
    let mut req = meta("tenant-a");
    req["encryptedDocumentKey"] = json!(edek_str(&wrapped));
    req["newTenantId"] = json!("tenant-b");
    let (status, rekeyed) = p.post("/api/1/document/rekey", req).await;
    assert_eq!(status, StatusCode::OK, "{rekeyed}");
    assert_eq!(rekeyed["dek"], wrapped["dek"]);
    let (status, body) = p.unwrap("tenant-b", &edek_str(&rekeyed)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dek"], wrapped["dek"]);
    let (status, _) = p.unwrap("tenant-a", &edek_str(&rekeyed)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let mut req = meta("tenant-a");
    req["encryptedDocumentKey"] = json!(edek_str(&wrapped));
    req["newTenantId"] = json!("nobody");
    let (status, body) = p.post("/api/1/document/rekey", req).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, 201));
}

#[tokio::test]
async fn security_events_and_operation_reports() {
    let p = TestProxy::new();
    let mut event = meta("tenant-a");
    event["iclFields"]["event"] = json!("USER_LOGIN");
    event["timestampMillis"] = json!(1_700_000_000_000i64);
    let (status, _) = p.post("/api/1/event/security-event", event).await;
    assert_eq!(status, StatusCode::OK);
    let mut alloy_style = meta("tenant-a");
    alloy_style["event"] = json!("ADMIN_ADD");
    let (status, _) = p.post("/api/1/event/security-event", alloy_style).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = p.post("/api/1/event/security-event", meta("tenant-a")).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, 301), "{body}");

    let mut report = meta("tenant-a");
    report["operations"] = json!({"ZWRlaw==": {"wraps": 3, "unwraps": 5}});
    let (status, _) = p.post("/api/1/document/report-operations", report).await;
    assert_eq!(status, StatusCode::OK);
    // Both security events and the reported cached-key use are in the tenant's audit trail.
    let events: Vec<serde_json::Value> =
        audit_records(&p, "tenant-a").into_iter().map(|r| r["event"].clone()).collect();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["operation"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("security", "USER_LOGIN"), ("security", "ADMIN_ADD"), ("data", "cached_key_use")]
    );
    assert_eq!(events[0]["event_time_millis"], 1_700_000_000_000u64);
    assert_eq!(events[2]["keys"], 8);
    let (_, metrics) = p.get("/metrics").await;
    assert!(metrics.contains("keyhold_security_events_total{tenant=\"tenant-a\"} 2"), "{metrics}");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let p = TestProxy::new();
    assert_eq!(p.get("/health").await.0, StatusCode::OK);
    assert_eq!(p.get("/live").await.0, StatusCode::OK);
    assert_eq!(p.get("/ready").await.0, StatusCode::OK);
    p.state.health.set_ready(false);
    assert_eq!(p.get("/health").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(p.get("/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    p.state.health.set_ready(true);

    // With leasing: one KMS call (the first lease) for both operations, and a cache hit.
    let w = p.wrap("tenant-a").await;
    p.unwrap("tenant-a", &edek_str(&w)).await;
    let (status, text) = p.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        r#"keyhold_kms_requests_total{tenant="tenant-a",config="1",operation="lease_renew"} 1"#,
        r#"keyhold_lease_cache_lookups_total{tenant="tenant-a",config="1",result="hit"} 1"#,
        r#"keyhold_lease_key_age_seconds{tenant="tenant-a",config="1"} "#,
        r#"keyhold_lease_seconds_since_renewal{tenant="tenant-a",config="1"} "#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains(r#"operation="generate""#), "{text}");
    // The tenant that never asked has no lease yet.
    assert!(
        text.contains(r#"keyhold_lease_key_age_seconds{tenant="tenant-b",config="2"} -1"#),
        "{text}"
    );

    // Without leasing, each operation is a KMS call.
    let p = TestProxy::unleased();
    let w = p.wrap("tenant-a").await;
    p.unwrap("tenant-a", &edek_str(&w)).await;
    let (_, text) = p.get("/metrics").await;
    assert!(
        text.contains(
            r#"keyhold_kms_requests_total{tenant="tenant-a",config="1",operation="generate"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"keyhold_kms_requests_total{tenant="tenant-a",config="1",operation="unwrap"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"keyhold_key_operations_total{tenant="tenant-a",operation="wrap",code="0"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("keyhold_http_request_duration_seconds"), "{text}");
    // Metrics never carry key material.
    let dek = w["dek"].as_str().unwrap();
    assert!(!text.contains(dek));
}

/// Requests are counted by the client SDK they name only when they carry the key: a caller
/// without it cannot add metric series by making up client names.
#[tokio::test]
async fn only_callers_with_the_key_are_counted_by_client_name() {
    let p = TestProxy::new();
    let send = |auth: Option<String>, version: &'static str| {
        let mut request = http::Request::post(keyhold_core::wire::ROUTE_WRAP)
            .header("content-type", "application/json")
            .header("x-icl-tsc-language", "made-up")
            .header("x-icl-tsc-version", version);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let body = axum::body::Body::from(meta("tenant-a").to_string());
        tower::ServiceExt::oneshot(p.router.clone(), request.body(body).unwrap())
    };
    let refused = send(Some("cmk wrong-key".into()), "1.0").await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(send(None, "2.0").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let granted = send(Some(format!("cmk {}", p.api_key)), "3.0").await.unwrap();
    assert_eq!(granted.status(), StatusCode::OK);
    let (_, text) = p.get("/metrics").await;
    assert!(
        text.contains(r#"keyhold_client_requests_total{language="made-up",version="3.0"} 1"#),
        "{text}"
    );
    assert!(!text.contains(r#"version="1.0""#) && !text.contains(r#"version="2.0""#), "{text}");
}

/// Every API route needs the key, exists behind it, and is counted under its own route label
/// (the front door lists the routes it labels; a route missing there would count as unmatched).
#[tokio::test]
async fn every_api_route_needs_the_key_and_is_counted_under_its_name() {
    let p = TestProxy::new();
    let auth = format!("cmk {}", p.api_key);
    let routes = [
        keyhold_core::wire::ROUTE_WRAP,
        keyhold_core::wire::ROUTE_UNWRAP,
        keyhold_core::wire::ROUTE_BATCH_WRAP,
        keyhold_core::wire::ROUTE_BATCH_UNWRAP,
        keyhold_core::wire::ROUTE_REKEY,
        keyhold_core::wire::ROUTE_BATCH_REKEY,
        keyhold_core::wire::ROUTE_SECURITY_EVENT,
        keyhold_core::wire::ROUTE_REPORT_OPERATIONS,
        keyhold_core::wire::ROUTE_DERIVE_KEY,
        keyhold_proxy::kms_usage::ROUTE_KMS_USAGE,
    ];
    for route in routes {
        let (status, body) = p.post_raw(route, None, "{}").await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, 101), "{route}: {body}");
        // An empty object is not a valid request anywhere, but the route is there.
        let (status, body) = p.post_raw(route, Some(&auth), "{}").await;
        assert!(status.is_client_error() && code(&body) != 100, "{route}: {status} {body}");
    }
    let (_, text) = p.get("/metrics").await;
    for route in routes {
        for status in [401, 400] {
            let line =
                format!(r#"keyhold_http_requests_total{{route="{route}",status="{status}"}} 1"#);
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
    assert!(!text.contains("(unmatched)"), "{text}");
}

/// The records of `tenant`'s audit spool file, after checking its chain (without checkpoints).
fn audit_records(p: &TestProxy, tenant: &str) -> Vec<serde_json::Value> {
    let path = keyhold_audit::spool::tenant_file(&p.path("audit"), tenant);
    let text = std::fs::read_to_string(&path).unwrap();
    keyhold_audit::verify(text.as_bytes(), false).unwrap();
    // Checkpoints come on a timer: leave them out of what the tests compare.
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"]["operation"] != "checkpoint")
        .collect()
}

#[tokio::test]
async fn every_key_access_is_in_the_tenants_audit_spool_before_it_is_answered() {
    let p = TestProxy::new();
    let mut body = meta("tenant-a");
    body["iclFields"] = json!({
        "requestingId": "alice@vendor", "dataLabel": "PII", "sourceIp": "203.0.113.7",
        "objectId": "doc-42", "requestId": "req-1"
    });
    body["customFields"] = json!({"org": "sales"});
    let (status, wrapped) = p.post("/api/1/document/wrap", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{wrapped}");
    // Answered, so already on disk (after the event of the tenant's first lease).
    let data_records = |p: &TestProxy| -> Vec<serde_json::Value> {
        audit_records(p, "tenant-a").into_iter().filter(|r| r["event"]["kind"] == "data").collect()
    };
    let records = data_records(&p);
    assert_eq!(records.len(), 1);
    let event = &records[0]["event"];
    for (field, value) in [
        ("kind", "data"),
        ("tenant", "tenant-a"),
        ("operation", "wrap"),
        ("outcome", "granted"),
        ("requesting_id", "alice@vendor"),
        ("data_label", "PII"),
        ("source_ip", "203.0.113.7"),
        ("object_id", "doc-42"),
        ("request_id", "req-1"),
    ] {
        assert_eq!(event[field], value, "{field}: {event}");
    }
    assert_eq!(event["custom"]["org"], "sales");
    assert!(event["id"].as_str().unwrap().len() == 36 && event["proxy"].is_string(), "{event}");
    // Which KMS configuration and which lease the key came from.
    let edek =
        keyhold_core::edek::EncryptedDeks::from_base64(wrapped["edek"].as_str().unwrap()).unwrap();
    let entry = &edek.encrypted_deks[0];
    assert_eq!(event["kms_config_id"], entry.kms_config_id);
    assert!(entry.leased_key_id != 0);
    assert_eq!(event["lease_id"], entry.leased_key_id);
    // No key material in the trail.
    let text =
        std::fs::read_to_string(keyhold_audit::spool::tenant_file(&p.path("audit"), "tenant-a"))
            .unwrap();
    assert!(
        !text.contains(wrapped["dek"].as_str().unwrap())
            && !text.contains(wrapped["edek"].as_str().unwrap())
    );

    // A refused access is recorded with its code; an unknown tenant gets no file.
    body["encryptedDocumentKey"] = json!("AAAA");
    let (status, _) = p.post("/api/1/document/unwrap", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let records = data_records(&p);
    assert_eq!(
        (records[1]["event"]["outcome"].as_str(), records[1]["event"]["code"].as_u64()),
        (Some("refused"), Some(203))
    );
    let (status, _) = p.post("/api/1/document/wrap", meta("no-such-tenant")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!keyhold_audit::spool::tenant_file(&p.path("audit"), "no-such-tenant").exists());
}

#[tokio::test]
async fn an_access_that_cannot_be_audited_is_refused() {
    let p = TestProxy::new();
    p.wrap("tenant-a").await;
    // The tenant's spool file is replaced by something that is not a chain (as if damaged):
    // the spool will not extend it, so the access is refused, with nothing handed out.
    let path = keyhold_audit::spool::tenant_file(&p.path("audit"), "tenant-a");
    // The writer holds the old file open; a new spool (a restarted proxy) reads the damage.
    let config = p.config.clone();
    std::fs::write(&path, b"damaged\n").unwrap();
    let restarted = TestProxy::from_loaded(p.dir.path(), config);
    std::fs::create_dir_all(restarted.path("audit")).unwrap();
    std::fs::write(
        keyhold_audit::spool::tenant_file(&restarted.path("audit"), "tenant-a"),
        b"damaged\n",
    )
    .unwrap();
    let (status, body) = restarted.post("/api/1/document/wrap", meta("tenant-a")).await;
    assert_eq!((status, code(&body)), (StatusCode::SERVICE_UNAVAILABLE, 100), "{body}");
    assert!(body["message"].as_str().unwrap().contains("audit"), "{body}");
    assert!(body.get("dek").is_none());
    // Other tenants are served.
    restarted.wrap("tenant-b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_siem_falls_behind_is_refused_until_it_catches_up() {
    // A syslog SIEM that is down (nothing listens on the port yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = TestProxy::with_config(|t| {
        *t = t.replacen(
            "spool_dir = \"audit\"\n",
            "spool_dir = \"audit\"\nmax_backlog = 5\nretry_max_ms = 200\n",
            1,
        );
        *t = t.replacen(
            "[[tenants]]\nid = \"tenant-b\"",
            &format!(
                "[[tenants.audit_sinks]]\nname = \"siem\"\ntype = \"syslog\"\naddress = \"127.0.0.1:{port}\"\n\n[[tenants]]\nid = \"tenant-b\""
            ),
            1,
        );
    });
    // Requests are answered while the backlog is below the limit, then refused.
    let mut answered = 0;
    let refusal = loop {
        let (status, body) = p.post("/api/1/document/wrap", meta("tenant-a")).await;
        if status != StatusCode::OK {
            break body;
        }
        answered += 1;
        assert!(answered <= 5, "never refused");
    };
    assert_eq!(code(&refusal), 100, "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("wait for delivery"), "{refusal}");
    let (_, metrics) = p.get("/metrics").await;
    assert!(
        metrics.contains("keyhold_audit_backlog_refusals_total{tenant=\"tenant-a\"} 1"),
        "{metrics}"
    );
    // Other tenants are not held back.
    p.wrap("tenant-b").await;

    // The SIEM comes up: delivery catches up, and the tenant is served again.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut connection, &mut tokio::io::sink()).await;
            });
        }
    });
    let began = std::time::Instant::now();
    loop {
        let (status, _) = p.post("/api/1/document/wrap", meta("tenant-a")).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(began.elapsed() < std::time::Duration::from_secs(10), "still refused");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn audit_sinks_are_checked_when_the_configuration_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let data =
        keyhold_proxy::bootstrap::init_data_dir(dir.path(), &["tenant-a"], "127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&data.config_path).unwrap();
    for (sinks, expected) in [
        ("[[tenants.audit_sinks]]\nname = \"a b\"\ntype = \"file\"\npath = \"x\"\n", "1 to 64"),
        (
            "[[tenants.audit_sinks]]\nname = \"hec\"\ntype = \"splunk\"\nurl = \"https://s:8088\"\n",
            "needs a `secret`",
        ),
        (
            "[[tenants.audit_sinks]]\nname = \"s\"\ntype = \"file\"\npath = \"x\"\n[[tenants.audit_sinks]]\nname = \"s\"\ntype = \"file\"\npath = \"y\"\n",
            "two audit sinks",
        ),
        (
            "[[tenants.audit_sinks]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"h:1\"\ntsl = true\n",
            "tsl",
        ),
    ] {
        std::fs::write(&data.config_path, format!("{text}\n{sinks}")).unwrap();
        let err = keyhold_proxy::ProxyConfig::load(&data.config_path).unwrap_err().to_string();
        assert!(err.contains(expected), "{sinks}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_failures_become_periodic_events_at_once_then_one_summary_per_interval() {
    let p = TestProxy::with_config(|t| {
        *t = t.replacen("[leasing]\n", "[leasing]\nenabled = false\n", 1);
        *t = t.replacen(
            "spool_dir = \"audit\"\n",
            "spool_dir = \"audit\"\nkms_failure_interval_ms = 300\n",
            1,
        );
    });
    p.keystore().set_enabled("tenant-a", false).unwrap();
    for _ in 0..5 {
        let (status, body) = p.post("/api/1/document/wrap", meta("tenant-a")).await;
        assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, 206), "{body}");
    }
    let failures = |p: &TestProxy| -> Vec<(u64, u64, String)> {
        audit_records(p, "tenant-a")
            .iter()
            .map(|r| &r["event"])
            .filter(|e| e["operation"] == "kms_failure")
            .map(|e| {
                assert_eq!(
                    (e["kind"].as_str(), e["kms_config_id"].as_i64()),
                    (Some("periodic"), Some(1))
                );
                (
                    e["keys"].as_u64().unwrap(),
                    e["code"].as_u64().unwrap(),
                    e["custom"]["error"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // The first failure at once (the five refused wraps are data events as well).
    let first = failures(&p);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!((first[0].0, first[0].1), (1, 206));
    assert!(first[0].2.contains("disabled"), "{first:?}");
    // The other four in one summary after the interval; then nothing while the KMS is quiet.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let all = failures(&p);
    assert_eq!(all.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 4], "{all:?}");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(failures(&p).len(), 2);
    // A failure after a quiet interval is reported at once again.
    let (status, _) = p.post("/api/1/document/wrap", meta("tenant-a")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(failures(&p).iter().map(|f| f.0).collect::<Vec<_>>(), [1, 4, 1]);
    let data = audit_records(&p, "tenant-a")
        .iter()
        .filter(|r| r["event"]["kind"] == "data" && r["event"]["outcome"] == "refused")
        .count();
    assert_eq!(data, 6);
}
