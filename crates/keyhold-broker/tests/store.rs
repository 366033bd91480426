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
