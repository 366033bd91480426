//! The Vendor Bridge API and the proxy snapshot route, over a real port, on SQLite and (when
//! `KEYHOLD_TEST_POSTGRES_URL` is set) PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{PROXY_TOKEN, TestBroker, VENDOR_KEY, counts, databases};
use futures::StreamExt as _;
use keyhold_core::snapshot::{ConfigStatus, SignedSnapshot, verify};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tenants_created_and_paged() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let started = Instant::now();
        let n = 10_000;
        let results: Vec<u16> = futures::stream::iter(0..n)
            .map(|i| {
                let b = &b;
                async move {
                    b.post(
                        "/api/v1/tenants",
                        json!({"id": format!("tenant-{i:05}"), "name": format!("Tenant {i}")}),
                    )
                    .await
                    .0
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(results.iter().all(|s| *s == 201), "{}: not all created", db.name);
        let created = started.elapsed();

        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/api/v1/tenants?limit=1000&after={a}"),
                None => "/api/v1/tenants?limit=1000".to_owned(),
            };
            let (status, page) = b.get(&path).await;
            assert_eq!(status, 200);
            seen.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["id"].as_str().unwrap().to_owned()),
            );
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        let expected: Vec<String> = (0..n).map(|i| format!("tenant-{i:05}")).collect();
        assert_eq!(seen, expected, "{}", db.name);
        // Default page size, prefix search.
        let (_, page) = b.get("/api/v1/tenants").await;
        assert_eq!(page["items"].as_array().unwrap().len(), 100);
        let (_, page) = b.get("/api/v1/tenants?q=tenant-0999").await;
        assert_eq!(page["items"].as_array().unwrap().len(), 10);
        assert_eq!(page["next"], Value::Null);
        let (_, page) = b.get("/api/v1/tenants?q=Tenant%2012&limit=1000").await;
        assert_eq!(page["items"].as_array().unwrap().len(), 111, "names 12, 120-129, 1200-1299");
        assert_eq!(counts(&b.store).await.0, n);
        eprintln!(
            "{}: {n} tenants created in {created:?}, all in {:?}",
            db.name,
            started.elapsed()
        );
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_store_nothing() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        assert_eq!(b.post("/api/v1/tenants", json!({"id": "acme"})).await.0, 201);
        let before = counts(&b.store).await;
        let other_fleet = keyhold_core::seal::FleetSecretKey::generate().unwrap();
        let foreign = keyhold_core::seal::seal(
            &other_fleet.public_key(),
            keyhold_core::seal::SealPurpose::Kms,
            "acme",
            b"{}",
        )
        .unwrap();
        let good_sealed = b.seal("acme", json!({"secret_access_key": "AKIA-secret"}));
        let cases: Vec<(&str, Value, u16, &str)> = vec![
            ("/api/v1/tenants", json!({"id": ""}), 400, "invalid_field"),
            ("/api/v1/tenants", json!({"id": "a/b"}), 400, "invalid_field"),
            ("/api/v1/tenants", json!({"id": "x".repeat(1025)}), 400, "invalid_field"),
            ("/api/v1/tenants", json!({"id": "acme"}), 409, "conflict"),
            ("/api/v1/tenants", json!({"idd": "z"}), 400, "invalid_field"),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "rot13", "settings": {}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": []}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": {}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": {"key": "k", "extra": 1}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "aws", "settings": {"key_id": "arn:aws:kms:eu-west-1:1:key/k", "secret_access_key": "AKIA-secret"}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "vault", "settings": {"address": "https://v", "key": "k", "token": "hvs.secret"}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "vault", "settings": {"address": "https://v", "key": "k"}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": {"key": "k"}, "sealed": "khs1.nothex.AAAA"}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": {"key": "k"}, "sealed": foreign}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": {"key": "k"}, "status": "boss"}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/nobody/kms-configs",
                json!({"type": "aws", "settings": {"key_id": "k"}, "sealed": good_sealed}),
                404,
                "not_found",
            ),
            (
                "/api/v1/tenants/acme/siem-configs",
                json!({"name": "s", "type": "splunk", "settings": {"url": "https://s", "secret": "hec"}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/siem-configs",
                json!({"name": "bad name", "type": "syslog", "settings": {"address": "h:514"}}),
                400,
                "invalid_field",
            ),
            (
                "/api/v1/tenants/acme/invitations",
                json!({"email": "not an address"}),
                400,
                "invalid_field",
            ),
            ("/api/v1/tenants/nobody/disable", json!({}), 404, "not_found"),
            ("/api/v1/tenants/acme/kms-configs/999/primary", json!({}), 404, "not_found"),
            ("/api/v1/tenants/acme/siem-configs/nope/disable", json!({}), 404, "not_found"),
        ];
        for (path, body, status, code) in &cases {
            let (got, answer) = b.post(path, body.clone()).await;
            assert_eq!(
                (got, answer["code"].as_str().unwrap_or("")),
                (*status, *code),
                "{}: {path} {body} → {answer}",
                db.name
            );
            assert!(!answer["message"].as_str().unwrap_or("").is_empty());
            if body["settings"].get("secret_access_key").is_some()
                || body["settings"].get("token").is_some()
            {
                assert!(answer["message"].as_str().unwrap().contains("seal"), "{answer}");
            }
        }
        // Not JSON, too large.
        let r = b
            .http
            .post(b.url("/api/v1/tenants"))
            .bearer_auth(VENDOR_KEY)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let big = json!({"id": "big", "name": "x".repeat(common::TEST_MAX_BODY_BYTES + 1024)});
        let r = b
            .http
            .post(b.url("/api/v1/tenants"))
            .bearer_auth(VENDOR_KEY)
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_field");
        // Wrong, missing or misplaced credentials.
        for auth in [
            None,
            Some("Bearer wrong-key-0123456789abcdef"),
            Some(&format!("Bearer {PROXY_TOKEN}")[..]),
            Some(&format!("Basic {VENDOR_KEY}")[..]),
        ] {
            let mut req = b.http.post(b.url("/api/v1/tenants")).json(&json!({"id": "intruder"}));
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{auth:?}");
            assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
            let r = b.http.get(b.url("/api/v1/tenants")).send().await.unwrap();
            assert_eq!(r.status(), 401);
        }
        let r = b
            .http
            .get(b.url("/api/proxy/v1/snapshot"))
            .bearer_auth(VENDOR_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let (status, answer) = b.get("/api/v1/tenants?limit=5000").await;
        assert_eq!((status, answer["code"].as_str().unwrap()), (400, "invalid_field"));
        let (status, answer) = b.get("/api/v1/nothing-here").await;
        assert_eq!((status, answer["code"].as_str().unwrap()), (404, "not_found"));

        assert_eq!(counts(&b.store).await, before, "{}: something was stored", db.name);
        let (_, history) = b.get("/api/v1/tenants/acme/history").await;
        assert_eq!(history["items"].as_array().unwrap().len(), 1);
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_demotes_and_history_holds_no_credentials() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        assert_eq!(b.post("/api/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.0, 201);
        let (s, first) = b
            .post(
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": {"key": "acme"}}),
            )
            .await;
        assert_eq!(
            (s, first["status"].as_str().unwrap()),
            (201, "primary"),
            "the first config defaults to primary"
        );
        let secret = "wJalrXUtnFEMI-very-secret";
        let sealed =
            b.seal("acme", json!({"access_key_id": "AKIAEXAMPLE", "secret_access_key": secret}));
        let (s, second) = b
            .post("/api/v1/tenants/acme/kms-configs", json!({"type": "aws", "settings": {"key_id": "arn:aws:kms:eu-west-1:111122223333:key/k"}, "sealed": sealed}))
            .await;
        assert_eq!((s, second["status"].as_str().unwrap()), (201, "active"));
        let key_id = b.fleet.public_key().key_id();
        assert_eq!(second["sealed_key_id"], key_id);
        assert!(second.get("sealed").is_none(), "the API shows only the blob's key id");
        let (id1, id2) = (first["id"].as_i64().unwrap(), second["id"].as_i64().unwrap());
        assert!(id1 > 0 && id2 > id1);

        let (s, now_primary) =
            b.post(&format!("/api/v1/tenants/acme/kms-configs/{id2}/primary"), json!({})).await;
        assert_eq!((s, now_primary["status"].as_str().unwrap()), (200, "primary"));
        let (_, list) = b.get("/api/v1/tenants/acme/kms-configs").await;
        let statuses: Vec<(i64, &str)> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_i64().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(statuses, vec![(id1, "active"), (id2, "primary")]);
        // A new config that asks to be primary demotes too; ids are unique across tenants.
        assert_eq!(b.post("/api/v1/tenants", json!({"id": "globex"})).await.0, 201);
        let (_, g) = b
            .post(
                "/api/v1/tenants/globex/kms-configs",
                json!({"type": "local", "settings": {"key": "g"}}),
            )
            .await;
        assert!(g["id"].as_i64().unwrap() > id2);
        let (_, third) = b
            .post(
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "local", "settings": {"key": "acme-2"}, "status": "primary"}),
            )
            .await;
        let (_, list) = b.get("/api/v1/tenants/acme/kms-configs").await;
        let primaries: Vec<i64> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "primary")
            .map(|c| c["id"].as_i64().unwrap())
            .collect();
        assert_eq!(primaries, vec![third["id"].as_i64().unwrap()]);
        assert_eq!(
            b.post(&format!("/api/v1/tenants/acme/kms-configs/{id1}/disable"), json!({})).await.1["status"],
            "disabled"
        );
        assert_eq!(
            b.post(&format!("/api/v1/tenants/acme/kms-configs/{id1}/enable"), json!({})).await.1["status"],
            "active"
        );

        let siem_sealed = b.seal("acme", json!({"secret": "hec-token-secret"}));
        let (s, _) = b.post("/api/v1/tenants/acme/siem-configs", json!({"name": "splunk", "type": "splunk", "settings": {"url": "https://splunk:8088"}, "sealed": siem_sealed})).await;
        assert_eq!(s, 201);
        assert_eq!(
            b.post(
                "/api/v1/tenants/acme/siem-configs",
                json!({"name": "splunk", "type": "syslog", "settings": {"address": "h:514"}})
            )
            .await
            .0,
            409
        );
        assert_eq!(
            b.post("/api/v1/tenants/acme/siem-configs/splunk/disable", json!({})).await.1["status"],
            "disabled"
        );
        let (s, inv) = b
            .post("/api/v1/tenants/acme/invitations", json!({"email": "admin@acme.example"}))
            .await;
        assert_eq!(s, 201);
        let token = inv["token"].as_str().unwrap().to_owned();
        assert!(token.len() >= 40);
        assert_eq!(b.post("/api/v1/tenants/acme/disable", json!({})).await.1["status"], "disabled");
        assert_eq!(b.get("/api/v1/tenants/acme").await.1["status"], "disabled");

        // The history, a page at a time.
        let mut records = Vec::new();
        let mut after = 0;
        loop {
            let (s, page) =
                b.get(&format!("/api/v1/tenants/acme/history?limit=3&after={after}")).await;
            assert_eq!(s, 200);
            records.extend(page["items"].as_array().unwrap().clone());
            match page["next"].as_i64() {
                Some(n) => after = n,
                None => break,
            }
        }
        let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
        assert_eq!(
            actions,
            [
                "tenant.create",
                "kms_config.add",
                "kms_config.add",
                "kms_config.primary",
                "kms_config.add",
                "kms_config.disable",
                "kms_config.enable",
                "siem_config.add",
                "siem_config.disable",
                "invitation.create",
                "tenant.disable"
            ]
        );
        assert!(records.windows(2).all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));
        assert!(records.iter().all(|r| r["actor"] == "vendor" && r["tenant"] == "acme"));
        assert_eq!(records[3]["detail"]["demoted"], id1);
        let text = serde_json::to_string(&records).unwrap();
        let body_of = |blob: &str| blob.rsplit('.').next().unwrap().to_owned();
        for forbidden in [
            secret,
            "AKIAEXAMPLE",
            "hec-token-secret",
            &body_of(&sealed),
            &body_of(&siem_sealed),
            &token,
        ] {
            assert!(!text.contains(forbidden), "{}: history holds {forbidden}", db.name);
        }
        assert!(text.contains(&key_id), "the blob's key id is recorded");
        b.stop().await;
    }
}

async fn get_snapshot(b: &TestBroker, etag: Option<&str>, wait: u64) -> reqwest::Response {
    let mut req =
        b.http.get(b.url(&format!("/api/proxy/v1/snapshot?wait={wait}"))).bearer_auth(PROXY_TOKEN);
    if let Some(etag) = etag {
        req = req.header("if-none-match", etag);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_signed_and_long_polls() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        b.post("/api/v1/tenants", json!({"id": "acme"})).await;
        let sealed = b.seal("acme", json!({"token": "hvs.secret"}));
        let (s, vault) = b
            .post("/api/v1/tenants/acme/kms-configs", json!({"type": "vault", "settings": {"address": "https://vault:8200", "key": "acme"}, "sealed": sealed}))
            .await;
        assert_eq!(s, 201, "{vault}");
        b.post("/api/v1/tenants/acme/siem-configs", json!({"name": "siem", "type": "syslog", "settings": {"address": "siem:6514", "tls": true}})).await;
        b.post("/api/v1/tenants", json!({"id": "globex"})).await;
        b.post("/api/v1/tenants/globex/disable", json!({})).await;

        let r = get_snapshot(&b, None, 0).await;
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        let envelope: SignedSnapshot = r.json().await.unwrap();
        let snapshot = verify(&envelope, std::slice::from_ref(&b.broker_key)).unwrap();
        let version = b.store.version().await.unwrap();
        assert_eq!(snapshot.version, u64::try_from(version).unwrap());
        assert_eq!(etag, format!("\"{version}\""));
        assert_eq!(snapshot.tenants.len(), 2);
        let acme = &snapshot.tenants[0];
        assert_eq!(acme.id, "acme");
        assert_eq!(acme.kms_configs[0].id, i32::try_from(vault["id"].as_i64().unwrap()).unwrap());
        assert_eq!(acme.kms_configs[0].status, ConfigStatus::Primary);
        assert_eq!(acme.kms_configs[0].kms_type, "vault");
        assert_eq!(acme.kms_configs[0].sealed.as_deref(), Some(sealed.as_str()));
        assert_eq!(acme.kms_configs[0].settings["address"], "https://vault:8200");
        assert_eq!(acme.audit_sinks[0].name, "siem");
        assert_eq!(snapshot.tenants[1].status, keyhold_core::snapshot::TenantStatus::Disabled);
        // The sealed blob opens with the fleet key (for this tenant only).
        let opened = keyhold_core::seal::open(
            std::slice::from_ref(&b.fleet),
            keyhold_core::seal::SealPurpose::Kms,
            "acme",
            &sealed,
        )
        .unwrap();
        assert_eq!(&opened[..], br#"{"token":"hvs.secret"}"#);
        // Another key does not verify it.
        let other = keyhold_core::snapshot::SnapshotSigningKey::generate().unwrap().public_key();
        assert!(verify(&envelope, &[other]).is_err());

        // Nothing changes: 304 after the wait.
        let started = Instant::now();
        let r = get_snapshot(&b, Some(&etag), 1).await;
        assert_eq!(r.status(), 304);
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        // Without wait: at once.
        assert_eq!(get_snapshot(&b, Some(&etag), 0).await.status(), 304);
        // A stale etag: 200 at once.
        assert_eq!(get_snapshot(&b, Some("\"1\""), 30).await.status(), 200);

        // A change during a long poll: 200 promptly, with the new version.
        let poll = {
            let http = b.http.clone();
            let url = b.url("/api/proxy/v1/snapshot?wait=30");
            let etag = etag.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = http
                    .get(url)
                    .bearer_auth(PROXY_TOKEN)
                    .header("if-none-match", etag)
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.headers()["etag"].to_str().unwrap().to_owned(),
                    r.bytes().await.unwrap(),
                    started.elapsed(),
                )
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let changed_at = Instant::now();
        b.post("/api/v1/tenants", json!({"id": "initech"})).await;
        let (status, new_etag, body, _) = poll.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            changed_at.elapsed() < Duration::from_millis(1500),
            "answered {:?} after the change",
            changed_at.elapsed()
        );
        let snapshot =
            verify(&serde_json::from_slice(&body).unwrap(), std::slice::from_ref(&b.broker_key))
                .unwrap();
        assert_eq!(new_etag, format!("\"{}\"", snapshot.version));
        assert_eq!(snapshot.version, u64::try_from(b.store.version().await.unwrap()).unwrap());
        assert!(snapshot.tenants.iter().any(|t| t.id == "initech"));
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_sees_changes_made_by_another_replica() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let r = get_snapshot(&b, None, 0).await;
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        // Another broker replica: its own store on the same database.
        let other = keyhold_broker::Store::connect(&db.url).await.unwrap();
        let poll = tokio::spawn({
            let http = b.http.clone();
            let url = b.url("/api/proxy/v1/snapshot?wait=30");
            async move {
                http.get(url)
                    .bearer_auth(PROXY_TOKEN)
                    .header("if-none-match", etag)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let changed_at = Instant::now();
        other.create_tenant("replica", "from-elsewhere", None).await.unwrap();
        assert_eq!(poll.await.unwrap(), 200);
        assert!(changed_at.elapsed() < Duration::from_millis(2500), "{:?}", changed_at.elapsed());
        other.close().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_key_health_and_openapi() {
    let db = databases().await.remove(0);
    let b = TestBroker::start(&db).await;
    let r: Value =
        b.http.get(b.url("/api/v1/fleet-key")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["public_key"], b.fleet.public_key().to_base64());
    assert_eq!(r["key_id"], b.fleet.public_key().key_id());
    assert_eq!(r["suite"], keyhold_core::seal::SUITE);
    assert_eq!(b.http.get(b.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(b.http.get(b.url("/ready")).send().await.unwrap().status(), 200);

    let doc: Value =
        b.http.get(b.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/api/v1/tenants", "post"),
        ("/api/v1/tenants", "get"),
        ("/api/v1/tenants/{id}", "get"),
        ("/api/v1/tenants/{id}/disable", "post"),
        ("/api/v1/tenants/{id}/enable", "post"),
        ("/api/v1/tenants/{id}/invitations", "post"),
        ("/api/v1/tenants/{id}/kms-configs", "get"),
        ("/api/v1/tenants/{id}/kms-configs", "post"),
        ("/api/v1/tenants/{id}/vendor-keys", "post"),
        ("/api/v1/tenants/{id}/kms-usage", "get"),
        ("/api/v1/tenants/{id}/kms-configs/{cid}/primary", "post"),
        ("/api/v1/tenants/{id}/kms-configs/{cid}/disable", "post"),
        ("/api/v1/tenants/{id}/kms-configs/{cid}/enable", "post"),
        ("/api/v1/tenants/{id}/siem-configs", "get"),
        ("/api/v1/tenants/{id}/siem-configs", "post"),
        ("/api/v1/tenants/{id}/siem-configs/{name}/disable", "post"),
        ("/api/v1/tenants/{id}/siem-configs/{name}/enable", "post"),
        ("/api/v1/tenants/{id}/history", "get"),
        ("/api/v1/tenants/{id}/leasing", "get"),
        ("/api/v1/tenants/{id}/leasing", "put"),
        ("/api/v1/tenants/{id}/invitations", "get"),
        ("/api/v1/tenants/{id}/invitations/revoke", "post"),
        ("/api/v1/tenants/{id}/admins", "get"),
        ("/api/v1/tenants/{id}/admins/{admin}/disable", "post"),
        ("/api/v1/tenants/{id}/admins/{admin}/enable", "post"),
        ("/api/v1/invitations/accept", "post"),
        ("/api/v1/session", "post"),
        ("/api/v1/session", "get"),
        ("/api/v1/session", "delete"),
        ("/api/v1/fleet-key", "get"),
        ("/api/proxy/v1/snapshot", "get"),
        ("/api/proxy/v1/admin-events/claim", "post"),
        ("/api/proxy/v1/admin-events/ack", "post"),
        ("/api/proxy/v1/e2e-events/claim", "post"),
        ("/api/proxy/v1/e2e-events/ack", "post"),
        ("/api/proxy/v1/kms-usage", "post"),
        ("/api/proxy/v1/tenant-secrets", "post"),
        ("/api/proxy/v1/tenant-secrets/list", "post"),
        ("/api/v1/tenants/{id}/tenant-secrets", "get"),
        ("/api/v1/tenants/{id}/tenant-secrets/rotate", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/api/openapi.json", "get"),
        ("/api/v1/e2e/tenants/{tenant}/users", "post"),
        ("/api/v1/e2e/tenants/{tenant}/users/{user}", "get"),
        ("/api/v1/e2e/tenants/{tenant}/users/{user}/sealed-keys", "get"),
        ("/api/v1/e2e/tenants/{tenant}/users/{user}/devices", "post"),
        ("/api/v1/e2e/tenants/{tenant}/users/{user}/devices/{device}", "get"),
        ("/api/v1/e2e/tenants/{tenant}/users/{user}/devices/{device}", "delete"),
        ("/api/v1/e2e/tenants/{tenant}/groups", "post"),
        ("/api/v1/e2e/tenants/{tenant}/groups/{group}", "get"),
        ("/api/v1/e2e/tenants/{tenant}/groups/{group}/members/{user}", "put"),
        ("/api/v1/e2e/tenants/{tenant}/groups/{group}/members/{user}", "delete"),
        ("/api/v1/e2e/tenants/{tenant}/groups/{group}/admins/{user}", "put"),
        ("/api/v1/e2e/tenants/{tenant}/groups/{group}/admins/{user}", "delete"),
        ("/api/v1/e2e/tenants/{tenant}/groups/{group}/key", "get"),
        ("/api/v1/e2e/tenants/{tenant}/documents", "post"),
        ("/api/v1/e2e/tenants/{tenant}/documents/{document}/grants", "post"),
        ("/api/v1/e2e/tenants/{tenant}/documents/{document}/grants/{kind}/{id}", "delete"),
        ("/api/v1/e2e/tenants/{tenant}/documents/{document}/decrypt", "post"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(operations, expected.len(), "the document lists exactly the routes");
    if let Ok(out) = std::env::var("KEYHOLD_OPENAPI_OUT") {
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_managed_keys_are_sealed_to_the_fleet_and_usage_is_summed() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        // A tenant created with its own vendor key: primary, sealed to the fleet, and the
        // sealed blob opens (with the fleet's secret key, which only proxies hold) to 32 bytes.
        let (status, created) =
            b.post("/api/v1/tenants", json!({"id": "acme", "vendor_key": true})).await;
        assert_eq!(status, 201, "{}: {created}", db.name);
        assert_eq!(created["id"], "acme");
        let key = &created["vendor_key"];
        assert_eq!(key["type"], "vendor");
        assert_eq!(key["status"], "primary");
        assert_eq!(key["managed_by"], "vendor");
        assert_eq!(key["sealed_key_id"], b.fleet.public_key().key_id());
        let first_id = key["id"].as_i64().unwrap();
        // Without the flag (and the broker's default off): no key.
        let (_, plain) = b.post("/api/v1/tenants", json!({"id": "beta"})).await;
        assert_eq!(plain["vendor_key"], Value::Null);

        // A second vendor key, not primary; tenant-made configurations are `tenant`-managed
        // only when a tenant admin adds them (here the vendor does: `vendor`).
        let (status, second) = b
            .post("/api/v1/tenants/acme/vendor-keys", json!({"label": "2027", "status": "active"}))
            .await;
        assert_eq!(status, 201, "{second}");
        assert_eq!(second["status"], "active");
        assert_eq!(second["settings"], json!({"label": "2027"}));
        let (status, _) = b.post("/api/v1/tenants/nobody/vendor-keys", json!({})).await;
        assert_eq!(status, 404);
        let (status, refused) = b
            .post(
                "/api/v1/tenants/acme/kms-configs",
                json!({"type": "vendor", "settings": {}, "sealed": b.seal("acme", json!({"key": "x"}))}),
            )
            .await;
        assert_eq!((status, refused["code"].as_str()), (400, Some("invalid_field")));

        // The snapshot carries the sealed keys; each opens to a different 32-byte key, bound
        // to the tenant (opening it as another tenant's fails).
        let snapshot = b.store.snapshot_data().await.unwrap();
        let (_, configs, _) =
            snapshot.tenants.iter().find(|(t, _, _)| t.id == "acme").unwrap().clone();
        let mut keys = Vec::new();
        for config in &configs {
            let sealed = config.sealed.as_deref().unwrap();
            let fleet = std::slice::from_ref(&b.fleet);
            let opened = keyhold_core::seal::open(
                fleet,
                keyhold_core::seal::SealPurpose::Kms,
                "acme",
                sealed,
            )
            .unwrap();
            let fields: Value = serde_json::from_slice(&opened).unwrap();
            let material = keyhold_core::secret::MasterKeyMaterial::from_base64(
                fields["key"].as_str().unwrap(),
            )
            .unwrap();
            keys.push(material);
            assert!(
                keyhold_core::seal::open(
                    fleet,
                    keyhold_core::seal::SealPurpose::Kms,
                    "beta",
                    sealed
                )
                .is_err()
            );
        }
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0], keys[1]);

        // The history says what happened, with no key material in it.
        let (_, history) = b.get("/api/v1/tenants/acme/history").await;
        let actions: Vec<&str> = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, vec!["tenant.create", "vendor_key.create", "vendor_key.create"]);
        let history_text = history.to_string();
        for k in &keys {
            assert!(!history_text.contains(k.to_base64().as_str()));
        }

        // Usage: proxies report deltas, the broker sums them per configuration and version.
        let report = |items: Value| {
            b.http
                .post(b.url("/api/proxy/v1/kms-usage"))
                .bearer_auth(PROXY_TOKEN)
                .json(&json!({ "items": items }))
                .send()
        };
        let r = report(json!([
            {"tenant": "acme", "config_id": first_id, "key_version": "1", "edeks_seen": 7, "last_seen": 1_800_000_000u64},
            {"tenant": "gone", "config_id": 99, "key_version": null, "edeks_seen": 1, "last_seen": 1_800_000_000u64},
        ]))
        .await
        .unwrap();
        assert_eq!(r.status(), 204);
        let r = report(json!([
            {"tenant": "acme", "config_id": first_id, "key_version": "1", "edeks_seen": 5, "last_seen": 1_700_000_000u64},
        ]))
        .await
        .unwrap();
        assert_eq!(r.status(), 204);
        // The vendor key is not the proxies' to use: a wrong token is refused.
        let r = b
            .http
            .post(b.url("/api/proxy/v1/kms-usage"))
            .bearer_auth(VENDOR_KEY)
            .json(&json!({"items": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let (status, usage) = b.get("/api/v1/tenants/acme/kms-usage").await;
        assert_eq!(status, 200, "{usage}");
        let configs = usage["configs"].as_array().unwrap();
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0]["id"].as_i64(), Some(first_id));
        assert_eq!(configs[0]["edeks_seen"], 12);
        assert_eq!(configs[0]["last_seen"], "2027-01-15T08:00:00Z", "the later of the two");
        assert_eq!(configs[0]["key_versions"][0]["key_version"], "1");
        assert_eq!(configs[0]["managed_by"], "vendor");
        assert_eq!(configs[1]["edeks_seen"], 0);
        assert_eq!(configs[1]["last_seen"], Value::Null);
        assert_eq!(b.get("/api/v1/tenants/nobody/kms-usage").await.0, 404);
        b.stop().await;
    }
}
