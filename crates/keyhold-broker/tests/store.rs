//! The store used directly (as `keyhold up` does), on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use keyhold_broker::{KmsConfigStatus, NewKmsConfig, Store, StoreError};
use serde_json::json;

#[tokio::test]
async fn ensure_is_idempotent() {
    for db in common::databases().await {
        let store = Store::connect(&db.url).await.unwrap();
        let new = || NewKmsConfig {
            kind: "local".into(),
            settings: json!({"key": "demo-tenant"}),
            sealed: None,
            status: None,
        };
        let t1 = store.ensure_tenant("keyhold up", "demo-tenant", None).await.unwrap();
        let c1 = store.ensure_kms_config("keyhold up", "demo-tenant", new()).await.unwrap();
        let version = store.version().await.unwrap();
        let t2 = store.ensure_tenant("keyhold up", "demo-tenant", None).await.unwrap();
        let c2 = store.ensure_kms_config("keyhold up", "demo-tenant", new()).await.unwrap();
        assert_eq!((t1, c1.id), (t2, c2.id));
        assert_eq!(c1.id, 1);
        assert_eq!(c1.status, KmsConfigStatus::Primary);
        assert_eq!(
            store.version().await.unwrap(),
            version,
            "{}: nothing changed the second time",
            db.name
        );
        // Reopening keeps everything (and migrations run once).
        store.close().await;
        let store = Store::connect(&db.url).await.unwrap();
        assert_eq!(store.kms_configs("demo-tenant").await.unwrap().len(), 1);
        assert!(matches!(store.kms_configs("nobody").await, Err(StoreError::TenantNotFound(_))));
    }
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.create_tenant("t", "acme", Some("Acme")).await.unwrap();
    assert_eq!(store.list_tenants(None, 10, None).await.unwrap().items.len(), 1);
    assert_eq!(store.version().await.unwrap(), 1);
}

#[tokio::test]
async fn admin_events_go_to_one_proxy_at_a_time_and_the_cursor_moves_on_ack() {
    for db in common::databases().await {
        let store = Store::connect(&db.url).await.unwrap();
        store.create_tenant("vendor", "acme", None).await.unwrap();
        store.create_tenant("vendor", "beta", None).await.unwrap();
        let first = store.claim_admin_events("proxy-a").await.unwrap().expect("the lease is free");
        assert_eq!(first.cursor, 0);
        let ids: Vec<i64> = first.changes.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 2], "{}", db.name);
        assert_eq!(first.changes[0].action, "tenant.create");
        assert_eq!(first.changes[0].tenant, "acme");
        // Another proxy gets nothing while a holds the lease, and cannot move the cursor.
        assert!(store.claim_admin_events("proxy-b").await.unwrap().is_none());
        assert!(!store.ack_admin_events("proxy-b", 2).await.unwrap());
        // Not acknowledged yet: the same changes again (at least once).
        let again = store.claim_admin_events("proxy-a").await.unwrap().unwrap();
        assert_eq!(again.changes.len(), 2);
        assert!(store.ack_admin_events("proxy-a", 2).await.unwrap());
        let after = store.claim_admin_events("proxy-a").await.unwrap().unwrap();
        assert_eq!((after.cursor, after.changes.len()), (2, 0), "{}", db.name);
        store
            .set_tenant_status("vendor", "beta", keyhold_broker::TenantStatus::Disabled)
            .await
            .unwrap();
        let next = store.claim_admin_events("proxy-a").await.unwrap().unwrap();
        assert_eq!(next.changes.iter().map(|c| c.id).collect::<Vec<_>>(), [3]);
        // An older acknowledgement never moves the cursor back.
        assert!(store.ack_admin_events("proxy-a", 1).await.unwrap());
        assert_eq!(store.claim_admin_events("proxy-a").await.unwrap().unwrap().cursor, 2);
    }
}

#[tokio::test]
async fn leasing_settings_are_validated_recorded_and_in_the_snapshot() {
    use keyhold_broker::leasing::TenantLeasing;
    for db in common::databases().await {
        let store = Store::connect(&db.url).await.unwrap();
        store.create_tenant("vendor", "acme", None).await.unwrap();
        assert_eq!(store.tenant_leasing("acme").await.unwrap(), TenantLeasing::default());
        let version = store.version().await.unwrap();
        let bad = TenantLeasing { renew_interval_ms: Some(10), ..Default::default() };
        assert!(matches!(
            store.set_tenant_leasing("vendor", "acme", bad).await,
            Err(StoreError::InvalidField { .. })
        ));
        assert_eq!(store.version().await.unwrap(), version, "{}: nothing stored", db.name);
        let fast = TenantLeasing {
            enabled: Some(true),
            renew_interval_ms: Some(1000),
            max_hold_ms: Some(60_000),
        };
        store.set_tenant_leasing("admin:a@acme.example", "acme", fast).await.unwrap();
        assert_eq!(store.tenant_leasing("acme").await.unwrap(), fast);
        let off = TenantLeasing { enabled: Some(false), ..Default::default() };
        store.set_tenant_leasing("vendor", "acme", off).await.unwrap();
        assert_eq!(store.tenant_leasing("acme").await.unwrap(), off, "{}: replaced", db.name);
        let data = store.snapshot_data().await.unwrap();
        let snapshot = keyhold_broker::snapshot::build(&data, "now".into()).unwrap();
        assert_eq!(snapshot.tenants[0].leasing.enabled, Some(false));
        assert_eq!(snapshot.tenants[0].leasing.renew_interval_ms, None);
        let history = store.history("acme", None, 10).await.unwrap();
        let last = history.items.last().unwrap();
        assert_eq!(last.action, "tenant.leasing");
        assert!(matches!(store.tenant_leasing("nobody").await, Err(StoreError::TenantNotFound(_))));
    }
}

/// Sign-ins while proxies report KMS usage and acknowledge events: on SQLite, a transaction that
/// read before it wrote failed at once with "database is locked" when another connection had
/// written in between (SQLite's busy timeout does not cover that upgrade), and the sign-in
/// answered 500. Every writing transaction now takes the write lock first, and waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_wait_for_each_other_instead_of_failing() {
    use keyhold_broker::kms_usage::UsageReportItem;
    for db in common::databases().await {
        let store = Store::connect(&db.url).await.unwrap();
        store.create_tenant("vendor", "acme", None).await.unwrap();
        let config = NewKmsConfig {
            kind: "local".into(),
            settings: json!({"key": "demo-tenant"}),
            sealed: None,
            status: None,
        };
        let config_id = store.ensure_kms_config("vendor", "acme", config).await.unwrap().id;
        let (_, token) = store
            .create_invitation(
                "vendor",
                "acme",
                "alice@example.com",
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        let admin = store.accept_invitation(&token, "hash", "secret").await.unwrap().admin_id;
        assert!(store.claim_admin_events("proxy-1").await.unwrap().is_some());
        let report = move |i: u64| {
            vec![UsageReportItem {
                tenant: "acme".into(),
                config_id,
                key_version: None,
                edeks_seen: 1,
                last_seen: i,
            }]
        };
        let rounds = 200;
        let (usage, sessions, acks) = {
            let (s1, s2, s3) = (store.clone(), store.clone(), store.clone());
            tokio::join!(
                tokio::spawn(async move {
                    for i in 0..rounds {
                        s1.record_kms_usage(&report(i)).await.unwrap();
                    }
                }),
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        s2.create_session(admin, std::time::Duration::from_secs(60)).await.unwrap();
                    }
                }),
                tokio::spawn(async move {
                    for i in 0..rounds {
                        assert!(s3.ack_admin_events("proxy-1", i as i64).await.unwrap());
                    }
                }),
            )
        };
        for (what, result) in [("usage", usage), ("sessions", sessions), ("acks", acks)] {
            assert!(result.is_ok(), "{}: {what} failed: {result:?}", db.name);
        }
    }
}
