//! `key/derive-with-secret-path` (deterministic field encryption) through the proxy's router,
//! on real local keys, with the tenant secrets in the proxy's secrets file.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::TestProxy;
use http::StatusCode;
use keyhold_core::deterministic;
use keyhold_core::edek::{EncryptedDek, EncryptedDeks};
use keyhold_core::secret::DerivedFieldKey;
use keyhold_core::wire::DeriveKeyResponse;
use keyhold_proxy::config::{KmsConfigEntry, KmsConfigStatus, KmsSettings};
use keyhold_proxy::secrets::FileSecretStore;
use serde_json::{Value, json};

const ROUTE: &str = "/api/1/key/derive-with-secret-path";

fn body(tenant: &str, paths: Value) -> Value {
    json!({
        "tenantId": tenant,
        "iclFields": {"requestingId": "det-test", "dataLabel": "PII"},
        "customFields": {},
        "paths": paths,
        "derivationType": "sha512",
        "secretType": "deterministic",
    })
}

async fn derive(p: &TestProxy, tenant: &str, paths: Value) -> DeriveKeyResponse {
    let (status, value) = p.post(ROUTE, body(tenant, paths)).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    serde_json::from_value(value).unwrap()
}

/// (id, current, key) of each key derived for one pair of paths.
fn keys(
    r: &DeriveKeyResponse,
    secret: &str,
    derivation: &str,
) -> Vec<(u32, bool, DerivedFieldKey)> {
    r.keys(secret, derivation)
        .unwrap()
        .iter()
        .map(|k| (k.tenant_secret_id, k.current, k.derived_key.clone()))
        .collect()
}

fn current(r: &DeriveKeyResponse, secret: &str, derivation: &str) -> (u32, DerivedFieldKey) {
    let found: Vec<_> = keys(r, secret, derivation).into_iter().filter(|k| k.1).collect();
    assert_eq!(found.len(), 1, "exactly one current key");
    (found[0].0, found[0].2.clone())
}

/// A second proxy over `p`'s keys and secrets file, with `edit` applied to its configuration
/// (as after the operator changed the file and restarted).
fn restarted(p: &TestProxy, edit: impl FnOnce(&mut keyhold_proxy::ProxyConfig)) -> TestProxy {
    let mut config = p.config.clone();
    edit(&mut config);
    let q = TestProxy::from_loaded(p.dir.path(), config);
    if p.path("tenant-secrets.json").exists() {
        std::fs::copy(p.path("tenant-secrets.json"), q.path("tenant-secrets.json")).unwrap();
    }
    q
}

fn tenant_a_configs(config: &mut keyhold_proxy::ProxyConfig) -> &mut Vec<KmsConfigEntry> {
    &mut config.tenants.iter_mut().find(|t| t.id == "tenant-a").unwrap().kms_configs
}

#[tokio::test]
async fn same_paths_same_key_and_ciphertext_other_tenant_or_path_differs() {
    let p = TestProxy::new();
    let first =
        derive(&p, "tenant-a", json!({"users": ["email", "phone"], "orders": ["email"]})).await;
    assert!(first.has_primary_config);
    let (id, email) = current(&first, "users", "email");
    let (_, phone) = current(&first, "users", "phone");
    let (orders_id, orders_email) = current(&first, "orders", "email");
    // One secret per secret path; derivation paths share it.
    assert_eq!(keys(&first, "users", "phone")[0].0, id);
    assert_ne!(orders_id, id);

    let again = derive(&p, "tenant-a", json!({"users": ["email"]})).await;
    assert_eq!(current(&again, "users", "email"), (id, email.clone()));
    let field = deterministic::encrypt(&email, id, b"alice@example.com").unwrap();
    assert_eq!(
        field,
        deterministic::encrypt(
            &again.keys("users", "email").unwrap()[0].derived_key,
            id,
            b"alice@example.com"
        )
        .unwrap()
    );

    let other_tenant = derive(&p, "tenant-b", json!({"users": ["email"]})).await;
    let (b_id, b_email) = current(&other_tenant, "users", "email");
    assert_ne!(b_id, id);
    for other in [&phone, &orders_email, &b_email] {
        assert_ne!(other, &email);
        assert_ne!(deterministic::encrypt(other, id, b"alice@example.com").unwrap(), field);
    }
    // The field decrypts with its key only.
    assert_eq!(
        deterministic::decrypt(&field, |i| (i == id).then_some(&email)).unwrap().as_slice(),
        b"alice@example.com"
    );
    assert!(deterministic::decrypt(&field, |_| Some(&b_email)).is_err());
}

#[tokio::test]
async fn secrets_are_stored_only_wrapped_and_never_unwrap_as_data_keys() {
    let p = TestProxy::new();
    let r = derive(&p, "tenant-a", json!({"users": ["email"]})).await;
    let (id, key) = current(&r, "users", "email");
    let stored = FileSecretStore::new(p.path("tenant-secrets.json")).all().unwrap();
    assert_eq!(stored.len(), 1);
    let secret = &stored[0];
    assert_eq!(
        (secret.id, secret.tenant_id.as_str(), secret.secret_path.as_str()),
        (id, "tenant-a", "users")
    );
    let text = std::fs::read_to_string(p.path("tenant-secrets.json")).unwrap();
    assert!(!text.contains(BASE64.encode(key.expose_secret()).as_str()));

    // A restarted proxy (another process) unwraps the same secret: the same key.
    let q = restarted(&p, |_| {});
    assert_eq!(
        current(&derive(&q, "tenant-a", json!({"users": ["email"]})).await, "users", "email"),
        (id, key)
    );

    // The wrapped secret passed off as an EDEK does not unwrap: the KMS binds its purpose.
    let edek = EncryptedDeks::single(EncryptedDek {
        encrypted_dek_data: secret.wrapped.clone(),
        kms_config_id: secret.kms_config_id,
        tenant_id: "tenant-a".into(),
        ..EncryptedDek::default()
    })
    .to_base64();
    let (status, value) = p
        .post(
            "/api/1/document/unwrap",
            json!({"tenantId": "tenant-a", "iclFields": {"requestingId": "x"}, "encryptedDocumentKey": edek}),
        )
        .await;
    assert_ne!(status, StatusCode::OK, "{value}");
    assert!(value.get("dek").is_none());
}

#[tokio::test]
async fn rotation_keeps_old_secrets_for_decryption_and_search() {
    let p = TestProxy::new();
    let before = derive(&p, "tenant-a", json!({"users": ["email"]})).await;
    let (old_id, old_key) = current(&before, "users", "email");
    let old_field = deterministic::encrypt(&old_key, old_id, b"bob@example.com").unwrap();
    let b_before =
        current(&derive(&p, "tenant-b", json!({"users": ["email"]})).await, "users", "email");

    let store = FileSecretStore::new(p.path("tenant-secrets.json"));
    assert_eq!(store.rotate("tenant-a", Some("users")).unwrap(), 1);

    let after = derive(&p, "tenant-a", json!({"users": ["email"]})).await;
    let all = keys(&after, "users", "email");
    let (new_id, new_key) = current(&after, "users", "email");
    assert_ne!(new_id, old_id);
    // Current first, then the older secret, not current.
    assert_eq!(
        all.iter().map(|k| (k.0, k.1)).collect::<Vec<_>>(),
        [(new_id, true), (old_id, false)]
    );
    assert_eq!(all[1].2, old_key);
    // The old field still decrypts with the keys the proxy gives now.
    let by_id = |id: u32| all.iter().find(|k| k.0 == id).map(|k| &k.2);
    assert_eq!(deterministic::decrypt(&old_field, by_id).unwrap().as_slice(), b"bob@example.com");
    // New fields use the new secret; search terms (one per key) find old and new fields.
    let new_field = deterministic::encrypt(&new_key, new_id, b"bob@example.com").unwrap();
    assert_ne!(new_field, old_field);
    let terms: Vec<Vec<u8>> = all
        .iter()
        .map(|(id, _, k)| deterministic::encrypt(k, *id, b"bob@example.com").unwrap())
        .collect();
    assert!(terms.contains(&old_field) && terms.contains(&new_field));
    // Another tenant is untouched.
    assert_eq!(
        current(&derive(&p, "tenant-b", json!({"users": ["email"]})).await, "users", "email"),
        b_before
    );
}

#[tokio::test]
async fn without_a_primary_configuration() {
    let p = TestProxy::new();
    // Never used: nothing to derive and nothing to make.
    let q = restarted(&p, |c| tenant_a_configs(c)[0].status = KmsConfigStatus::Active);
    let (status, value) = q.post(ROUTE, body("tenant-a", json!({"users": ["email"]}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert_eq!(value["code"], 200, "{value}");

    // Used before: old secrets still derive (decryption), none is current (no encryption).
    let (id, key) =
        current(&derive(&p, "tenant-a", json!({"users": ["email"]})).await, "users", "email");
    let q = restarted(&p, |c| tenant_a_configs(c)[0].status = KmsConfigStatus::Active);
    let r = derive(&q, "tenant-a", json!({"users": ["email"]})).await;
    assert!(!r.has_primary_config);
    assert_eq!(
        keys(&r, "users", "email").into_iter().map(|k| (k.0, k.1, k.2)).collect::<Vec<_>>(),
        [(id, false, key)]
    );
}

#[tokio::test]
async fn a_disabled_configuration_is_refused_and_a_new_primary_gets_a_new_secret() {
    let p = TestProxy::new();
    let (old_id, _) =
        current(&derive(&p, "tenant-a", json!({"users": ["email"]})).await, "users", "email");
    // The tenant moves to a new key (config 3) and disables the old one (config 1).
    let q = restarted(&p, |c| {
        let configs = tenant_a_configs(c);
        configs[0].status = KmsConfigStatus::Disabled;
        configs.push(KmsConfigEntry {
            id: 3,
            status: KmsConfigStatus::Primary,
            kms: KmsSettings::Local { key: "tenant-b".into() },
        });
    });
    let r = derive(&q, "tenant-a", json!({"users": ["email"]})).await;
    let (new_id, _) = current(&r, "users", "email");
    assert_ne!(new_id, old_id);
    assert!(
        keys(&r, "users", "email").iter().all(|k| k.0 != old_id),
        "no key from a disabled configuration"
    );
    let unavailable = r.unavailable("users", old_id).unwrap();
    assert_eq!(unavailable.code, 202, "{unavailable:?}");
    let stored = FileSecretStore::new(q.path("tenant-secrets.json")).all().unwrap();
    assert_eq!(stored.iter().find(|s| s.id == new_id).unwrap().kms_config_id, 3);

    // Every configuration disabled: the tenant is not served at all.
    let q = restarted(&p, |c| tenant_a_configs(c)[0].status = KmsConfigStatus::Disabled);
    let (status, value) = q.post(ROUTE, body("tenant-a", json!({"users": ["email"]}))).await;
    assert_eq!((status, value["code"].as_u64()), (StatusCode::NOT_FOUND, Some(201)), "{value}");
}

#[tokio::test]
async fn a_revoked_key_refuses_a_new_secret_with_the_kms_code() {
    let p = TestProxy::new();
    p.keystore().set_enabled("tenant-a", false).unwrap();
    let (status, value) = p.post(ROUTE, body("tenant-a", json!({"users": ["email"]}))).await;
    assert_eq!(value["code"], 206, "{status} {value}");
    assert!(
        !p.path("tenant-secrets.json").exists()
            || FileSecretStore::new(p.path("tenant-secrets.json")).all().unwrap().is_empty()
    );
}

#[tokio::test]
async fn bad_requests_get_clear_codes() {
    let p = TestProxy::new();
    let cases = [
        (json!({"derivationType": "argon2"}), 102),
        (json!({"secretType": "search"}), 102),
        (json!({"paths": {}}), 102),
        (json!({"paths": {"": ["email"]}}), 102),
        (json!({"paths": {"users": ["x".repeat(2000)]}}), 102),
        (json!({"tenantId": "no-such-tenant"}), 201),
        (json!({"iclFields": {}}), 102),
    ];
    for (change, code) in cases {
        let mut request = body("tenant-a", json!({"users": ["email"]}));
        for (k, v) in change.as_object().unwrap() {
            request[k] = v.clone();
        }
        let (status, value) = p.post(ROUTE, request.clone()).await;
        assert_eq!(value["code"], code, "{request} → {status} {value}");
        assert!(status.is_client_error(), "{status}");
    }
    let (status, value) =
        p.post_raw(ROUTE, None, body("tenant-a", json!({"users": ["email"]})).to_string()).await;
    assert_eq!((status, value["code"].as_u64()), (StatusCode::UNAUTHORIZED, Some(101)));
    let (status, value) = p
        .post_raw(
            ROUTE,
            Some("cmk wrong-key-0123456789"),
            body("tenant-a", json!({"users": ["email"]})).to_string(),
        )
        .await;
    assert_eq!((status, value["code"].as_u64()), (StatusCode::UNAUTHORIZED, Some(101)));
    // Nothing was made for refused requests.
    assert!(!p.path("tenant-secrets.json").exists());
}

#[tokio::test]
async fn every_derivation_and_secret_is_in_the_tenants_audit_trail() {
    let p = TestProxy::new();
    derive(&p, "tenant-a", json!({"users": ["email", "phone"]})).await;
    derive(&p, "tenant-a", json!({"users": ["email"]})).await;
    let path = keyhold_audit::spool::tenant_file(&p.path("audit"), "tenant-a");
    let text = std::fs::read_to_string(&path).unwrap();
    keyhold_audit::verify(text.as_bytes(), false).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .filter(|e| e["operation"] != "checkpoint")
        .collect();
    let summary: Vec<(String, String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
                e["keys"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("tenant_secret_create".to_owned(), "admin".to_owned(), 0),
            ("derive".to_owned(), "data".to_owned(), 2),
            ("derive".to_owned(), "data".to_owned(), 1),
        ]
    );
    let derive_event = &events[1];
    assert_eq!(derive_event["requesting_id"], "det-test");
    assert_eq!(derive_event["data_label"], "PII");
    assert_eq!(events[0]["custom"]["secretPath"], "users");
    // No key material in the trail.
    let r = derive(&p, "tenant-a", json!({"users": ["email"]})).await;
    let key = BASE64.encode(r.keys("users", "email").unwrap()[0].derived_key.expose_secret());
    assert!(!std::fs::read_to_string(&path).unwrap().contains(&key));
}

#[tokio::test]
async fn a_secret_moved_to_another_path_does_not_unwrap() {
    let p = TestProxy::new();
    let r = derive(&p, "tenant-a", json!({"users": ["email"], "orders": ["email"]})).await;
    let (orders_id, orders_key) = current(&r, "orders", "email");
    // Someone with write access to the secret store gives `users` the secret of `orders`
    // (same tenant, same KMS configuration): the KMS binding names the path, so it is refused.
    let path = p.path("tenant-secrets.json");
    let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let secrets = file["secrets"].as_array_mut().unwrap();
    let orders_wrapped =
        secrets.iter().find(|s| s["secret_path"] == "orders").unwrap()["wrapped"].clone();
    secrets.iter_mut().find(|s| s["secret_path"] == "users").unwrap()["wrapped"] = orders_wrapped;
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let q = restarted(&p, |_| {});
    let (status, value) = q.post(ROUTE, body("tenant-a", json!({"users": ["email"]}))).await;
    assert_ne!(status, StatusCode::OK, "{value}");
    assert!(value.get("derivedKeys").is_none(), "{value}");
    // The path that owns it still works, with the same key.
    assert_eq!(
        current(&derive(&q, "tenant-a", json!({"orders": ["email"]})).await, "orders", "email"),
        (orders_id, orders_key)
    );
}

/// Calls to tenant-a's KMS to unwrap a tenant secret, from the proxy's metrics.
fn secret_unwraps(p: &TestProxy) -> u64 {
    let text = p.state.metrics.encode();
    text.lines()
        .filter(|l| {
            l.starts_with("keyhold_kms_requests_total{tenant=\"tenant-a\"")
                && l.contains("operation=\"unwrap_secret\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A new configuration (a broker snapshot, here handed to the service directly) drops only the
/// unwrapped secrets whose KMS backend changed: the same backends again keep them (the next
/// derive asks no KMS), new backends make the next derive unwrap the secret again. Before, any
/// change to any tenant sent every tenant back to its KMS and ended their outage hold.
#[tokio::test]
async fn a_new_configuration_reopens_only_secrets_whose_kms_changed() {
    let p = TestProxy::new();
    let paths = json!({"users": ["email"]});
    let made = current(&derive(&p, "tenant-a", paths.clone()).await, "users", "email");
    // Past its fresh time (5 min by default) a secret is unwrapped again: this test runs well
    // within it, so every unwrap counted here comes from a dropped secret.
    let first = derive(&p, "tenant-a", paths.clone()).await;
    assert_eq!(current(&first, "users", "email"), made);
    let before = secret_unwraps(&p);

    p.state.service.replace_registry(p.state.service.registry());
    let same = derive(&p, "tenant-a", paths.clone()).await;
    assert_eq!(current(&same, "users", "email"), made);
    assert_eq!(secret_unwraps(&p), before, "an unchanged backend asked its KMS again");

    let rebuilt = keyhold_proxy::registry::TenantRegistry::from_config(&p.config).await.unwrap();
    p.state.service.replace_registry(std::sync::Arc::new(rebuilt));
    let reopened = derive(&p, "tenant-a", paths).await;
    assert_eq!(current(&reopened, "users", "email"), made);
    assert_eq!(secret_unwraps(&p), before + 1, "a new backend did not unwrap the secret again");
}
