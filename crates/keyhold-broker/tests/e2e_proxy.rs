//! The E2E service's audit events reach the tenant's audit trail through a real proxy: the
//! broker on SQLite (and PostgreSQL when `KEYHOLD_TEST_POSTGRES_URL` is set), a
//! `keyhold_proxy` configured from it, its hash-chained spool read back. The same path as the
//! admin events (`crates/keyhold-cli/tests/broker.rs` shows those with proxy processes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::e2e::{TENANT, World};
use common::{PROXY_TOKEN, TestBroker, databases};
use keyhold_e2e::Recipient;
use serde_json::Value;

/// A proxy following `b`, its data directory (and audit spool, `audit/`) in `dir`.
async fn proxy_following(b: &TestBroker, dir: &std::path::Path) -> keyhold_proxy::AppState {
    let data =
        keyhold_proxy::bootstrap::init_data_dir_with_broker(dir, &[], "127.0.0.1:0", "127.0.0.1:9")
            .unwrap();
    // The test broker's token, signing key and fleet key instead of the ones made here.
    std::fs::write(dir.join("proxy-token"), PROXY_TOKEN).unwrap();
    std::fs::write(dir.join("fleet.key"), b.fleet.to_base64().as_str()).unwrap();
    let text = std::fs::read_to_string(&data.config_path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("url = ") {
            format!("url = \"{}\"", b.base)
        } else if line.starts_with("public_keys = ") {
            format!("public_keys = [\"{}\"]", b.broker_key.to_base64())
        } else if line.starts_with("poll_interval_ms = ") {
            "poll_interval_ms = 200".to_owned()
        } else if line.starts_with("spool_dir = ") {
            format!("{line}\ninstance = \"proxy-e2e\"")
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(&data.config_path, out).unwrap();
    let config = keyhold_proxy::ProxyConfig::load(&data.config_path).unwrap();
    keyhold_proxy::AppState::from_config(&config).await.unwrap()
}

/// The events of the tenant's trail in the spool (checked as a chain first).
fn trail(dir: &std::path::Path) -> Vec<Value> {
    let file = keyhold_audit::spool::tenant_file(&dir.join("audit"), TENANT);
    let Ok(text) = std::fs::read_to_string(file) else { return Vec::new() };
    keyhold_audit::verify(text.as_bytes(), false).unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<keyhold_audit::Record>(line).ok())
        .map(|record| record.event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_events_reach_the_tenants_audit_trail_through_a_proxy() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 21).await;
        let alice = w.user("alice", "a").await;
        let bob = w.user("bob", "b").await;
        w.group(&alice, "team").await;
        w.encrypt(&alice, "memo", b"memo body", &[Recipient::Group("team".into())]).await;
        assert!(w.read(&bob, 0, "memo").await.is_err());
        w.add_member(&alice, "team", &bob).await.unwrap();
        assert_eq!(w.read(&bob, 0, "memo").await.unwrap(), b"memo body");
        let stored = w.stored_events().await;

        let dir = tempfile::tempdir().unwrap();
        let state = proxy_following(&b, dir.path()).await;
        let e2e = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .filter(|e| e["operation"].as_str().is_some_and(|o| o.starts_with("e2e.")))
                .cloned()
                .collect()
        };
        let started = Instant::now();
        while e2e(&trail(dir.path())).len() < stored.len() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{}: the E2E events never reached the trail",
                db.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all = trail(dir.path());
        let events = e2e(&all);
        // Each once, in the broker's order, with its action, actor and detail.
        assert_eq!(events.len(), stored.len(), "{}: {events:#?}", db.name);
        for (event, (id, actor, action, detail)) in events.iter().zip(&stored) {
            assert_eq!(event["operation"], action.as_str());
            assert_eq!(event["requesting_id"], actor.as_str());
            assert_eq!(event["request_id"], format!("broker-e2e-event-{id}"));
            assert_eq!(event["tenant"], TENANT);
            assert_eq!(event["proxy"], "proxy-e2e");
            let carried: Value =
                serde_json::from_str(event["custom"]["detail"].as_str().unwrap()).unwrap();
            assert_eq!(&carried, detail);
        }
        let find = |operation: &str| -> Vec<&Value> {
            events.iter().filter(|e| e["operation"] == operation).collect()
        };
        let denied = find("e2e.document.decrypt_denied");
        assert_eq!(denied.len(), 1);
        assert_eq!(
            (
                &denied[0]["kind"],
                &denied[0]["outcome"],
                &denied[0]["object_id"],
                &denied[0]["requesting_id"]
            ),
            (
                &Value::from("data"),
                &Value::from("refused"),
                &Value::from("memo"),
                &Value::from("bob/laptop")
            )
        );
        let decrypt = find("e2e.document.decrypt");
        assert_eq!(decrypt.len(), 1);
        assert_eq!(
            (&decrypt[0]["kind"], &decrypt[0]["outcome"]),
            (&Value::from("data"), &Value::from("granted"))
        );
        let created = find("e2e.user.create");
        assert_eq!(
            (created.len(), &created[0]["kind"], &created[0]["requesting_id"]),
            (2, &Value::from("admin"), &Value::from("vendor"))
        );
        // The broker's admin events went into the same trail beside them.
        assert!(all.iter().any(|e| e["kind"] == "admin" && e["operation"] == "tenant.create"));

        // A later event follows within the proxy's poll interval; the cursor moved on, so
        // nothing is recorded twice.
        w.revoke_device(&bob, 0, "laptop").await.unwrap();
        let started = Instant::now();
        while find_in(&trail(dir.path()), "e2e.device.revoke").is_empty() {
            assert!(started.elapsed() < Duration::from_secs(20), "the revocation never arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(e2e(&trail(dir.path())).len(), stored.len() + 1);
        drop(state);
        b.stop().await;
    }
}

fn find_in(events: &[Value], operation: &str) -> Vec<Value> {
    events.iter().filter(|e| e["operation"] == operation).cloned().collect()
}
