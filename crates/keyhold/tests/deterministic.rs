//! Deterministic field encryption: SDK → proxy (`key/derive-with-secret-path`, real socket) →
//! local KMS and the proxy's tenant-secret file, end to end.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use keyhold::deterministic::{EncryptedField, PlaintextField};
use keyhold::{Client, Error, ErrorCode, RequestMetadata};
use keyhold_proxy::secrets::FileSecretStore;
use keyhold_proxy::{Proxy, ProxyConfig, bootstrap};

struct RunningProxy {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    api_key: String,
    secrets_file: PathBuf,
}

impl RunningProxy {
    /// Starts a proxy with tenants `tenant-a` and `tenant-b` on the current runtime.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data =
            bootstrap::init_data_dir(dir.path(), &["tenant-a", "tenant-b"], "127.0.0.1:0").unwrap();
        let config = ProxyConfig::load(&data.config_path).unwrap();
        let secrets_file = config.resolve(&config.deterministic.secrets_file);
        let proxy = Proxy::bind(&config).await.unwrap();
        let addr = proxy.local_addr().unwrap();
        tokio::spawn(proxy.run(std::future::pending()));
        let api_key = std::fs::read_to_string(&data.api_key_path).unwrap().trim().to_owned();
        Self { _dir: dir, addr, api_key, secrets_file }
    }

    fn client(&self) -> Client {
        Client::new(format!("http://{}", self.addr), &self.api_key).unwrap()
    }

    /// Rotates `tenant`'s secret of `secret_path` the way an operator would (the proxy's file
    /// store): the next request makes a new current secret.
    fn rotate_secret(&self, tenant: &str, secret_path: &str) -> usize {
        FileSecretStore::new(&self.secrets_file).rotate(tenant, Some(secret_path)).unwrap()
    }
}

fn meta(tenant: &str) -> RequestMetadata {
    RequestMetadata::new(tenant, "sdk-test").with_data_label("PII")
}

fn field(value: &[u8], secret_path: &str, derivation_path: &str) -> PlaintextField {
    PlaintextField::new(value.to_vec(), secret_path, derivation_path)
}

#[tokio::test]
async fn encrypt_decrypt_round_trip_in_ironcores_layout() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    for value in [&b"alice@example.com"[..], b"", &[0xffu8; 300][..]] {
        let plain = field(value, "users", "email");
        let stored = client.encrypt_field(&plain, &meta).await.unwrap();
        assert!(keyhold::deterministic::is_deterministic_field(&stored.encrypted));
        assert_eq!(stored.encrypted.len(), 6 + 16 + value.len());
        assert_ne!(&stored.encrypted[6..], value);
        assert!(stored.tenant_secret_id().unwrap() > 0);
        assert_eq!(
            (stored.secret_path.as_str(), stored.derivation_path.as_str()),
            ("users", "email")
        );
        assert_eq!(client.decrypt_field(&stored, &meta).await.unwrap(), plain);
        // Stored as JSON and read back, it still decrypts.
        let json = serde_json::to_string(&stored).unwrap();
        let back: EncryptedField = serde_json::from_str(&json).unwrap();
        assert_eq!(client.decrypt_field(&back, &meta).await.unwrap(), plain);
    }
}

#[tokio::test]
async fn equal_values_equal_bytes_and_every_path_and_tenant_separates() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let value = b"123-45-6789";
    let a = meta("tenant-a");
    let base = client.encrypt_field(&field(value, "users", "ssn"), &a).await.unwrap();
    let again = client.encrypt_field(&field(value, "users", "ssn"), &a).await.unwrap();
    assert_eq!(again, base, "same value, paths and tenant");
    // Through another client (another connection): still the same bytes.
    let other_client = proxy.client();
    assert_eq!(other_client.encrypt_field(&field(value, "users", "ssn"), &a).await.unwrap(), base);

    let other_value =
        client.encrypt_field(&field(b"123-45-6780", "users", "ssn"), &a).await.unwrap();
    let tenant_b =
        client.encrypt_field(&field(value, "users", "ssn"), &meta("tenant-b")).await.unwrap();
    let secret_path = client.encrypt_field(&field(value, "patients", "ssn"), &a).await.unwrap();
    let derivation = client.encrypt_field(&field(value, "users", "tax-id"), &a).await.unwrap();
    for (what, other) in [
        ("value", &other_value),
        ("tenant", &tenant_b),
        ("secret path", &secret_path),
        ("derivation path", &derivation),
    ] {
        assert_ne!(other.encrypted, base.encrypted, "{what}");
    }
    // Each secret path has its own tenant secret; derivation paths share their path's secret.
    let id = base.tenant_secret_id().unwrap();
    assert_ne!(secret_path.tenant_secret_id().unwrap(), id);
    assert_eq!(derivation.tenant_secret_id().unwrap(), id);
    assert_ne!(tenant_b.tenant_secret_id().unwrap(), id);

    // tenant-b has no key for tenant-a's secret: a clear decrypt failure, not a plaintext.
    let err = client.decrypt_field(&base, &meta("tenant-b")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeterministicFieldDecryptFailed, "{err}");
    // Another derivation path's key does not open it either.
    let moved = EncryptedField { derivation_path: "tax-id".into(), ..base.clone() };
    let err = client.decrypt_field(&moved, &a).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeterministicFieldDecryptFailed, "{err}");
}

#[tokio::test]
async fn search_terms_find_the_stored_field() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    let plain = field(b"alice@example.com", "users", "email");
    let stored = client.encrypt_field(&plain, &meta).await.unwrap();
    let terms = client.generate_search_terms(&plain, &meta).await.unwrap();
    assert_eq!(
        terms,
        std::slice::from_ref(&stored),
        "one secret so far: one term, equal to the stored bytes"
    );
    let other = client
        .generate_search_terms(&field(b"bob@example.com", "users", "email"), &meta)
        .await
        .unwrap();
    assert!(!other.contains(&stored));

    let batch: HashMap<String, PlaintextField> = [
        ("alice".to_owned(), plain.clone()),
        ("bob".to_owned(), field(b"bob@example.com", "users", "email")),
    ]
    .into();
    let result = client.generate_search_terms_batch(&batch, &meta).await.unwrap();
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert_eq!(result.successes["alice"], [stored]);
    assert_eq!(result.successes["bob"], other);
}

#[tokio::test]
async fn batches_report_a_bad_field_and_keep_the_others() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    let plain: HashMap<String, PlaintextField> = [
        ("email".to_owned(), field(b"alice@example.com", "users", "email")),
        ("phone".to_owned(), field(b"+1 555 0100", "users", "phone")),
        ("order".to_owned(), field(b"order-77", "orders", "number")),
    ]
    .into();
    let encrypted = client.encrypt_fields(&plain, &meta).await.unwrap();
    assert!(encrypted.failures.is_empty(), "{:?}", encrypted.failures);
    assert_eq!(encrypted.successes.len(), 3);
    for (id, stored) in &encrypted.successes {
        assert_eq!(stored, &client.encrypt_field(&plain[id], &meta).await.unwrap(), "{id}");
    }

    let mut stored = encrypted.successes.clone();
    let mut truncated = stored["phone"].clone();
    truncated.encrypted.truncate(12);
    stored.insert("truncated".into(), truncated);
    let mut altered = stored["order"].clone();
    *altered.encrypted.last_mut().unwrap() ^= 1;
    stored.insert("altered".into(), altered);

    let decrypted = client.decrypt_fields(&stored, &meta).await.unwrap();
    assert_eq!(decrypted.successes.len(), 3);
    for id in ["email", "phone", "order"] {
        assert_eq!(decrypted.successes[id], plain[id], "{id}");
    }
    assert_eq!(decrypted.failures.len(), 2);
    assert_eq!(decrypted.failures["truncated"].code(), ErrorCode::DeterministicHeaderError);
    assert_eq!(decrypted.failures["altered"].code(), ErrorCode::DeterministicFieldDecryptFailed);

    // Nothing rotated: rotation gives every good field back unchanged.
    let rotated = client.rotate_fields(&stored, &meta).await.unwrap();
    for id in ["email", "phone", "order"] {
        assert_eq!(rotated.successes[id], stored[id], "{id}");
    }
    assert_eq!(rotated.failures["truncated"].code(), ErrorCode::DeterministicHeaderError);
    assert_eq!(rotated.failures["altered"].code(), ErrorCode::DeterministicFieldDecryptFailed);

    // A batch of nothing but bad headers, and an empty batch: answered without the proxy.
    let only_bad: HashMap<String, EncryptedField> =
        [("x".to_owned(), EncryptedField::new(vec![1, 2, 3], "users", "email"))].into();
    let result = client.decrypt_fields(&only_bad, &meta).await.unwrap();
    assert_eq!(result.failures["x"].code(), ErrorCode::DeterministicHeaderError);
    let empty = client.encrypt_fields(&HashMap::new(), &meta).await.unwrap();
    assert!(empty.successes.is_empty() && empty.failures.is_empty());
}

#[tokio::test]
async fn rotation_moves_fields_to_the_new_secret_and_search_covers_both() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    let plain = field(b"alice@example.com", "users", "email");
    let old = client.encrypt_field(&plain, &meta).await.unwrap();
    let untouched =
        client.encrypt_field(&plain, &RequestMetadata::new("tenant-b", "t")).await.unwrap();

    assert_eq!(proxy.rotate_secret("tenant-a", "users"), 1);
    let new = client.encrypt_field(&plain, &meta).await.unwrap();
    assert_ne!(new.tenant_secret_id().unwrap(), old.tenant_secret_id().unwrap());
    assert_ne!(new.encrypted, old.encrypted);
    // The old field still decrypts; both are found, the current secret's term first.
    assert_eq!(client.decrypt_field(&old, &meta).await.unwrap(), plain);
    let terms = client.generate_search_terms(&plain, &meta).await.unwrap();
    assert_eq!(terms, [new.clone(), old.clone()]);

    // Rotating the old field gives exactly what encrypting now gives; the new one is unchanged.
    assert_eq!(client.rotate_field(&old, &meta).await.unwrap(), new);
    assert_eq!(client.rotate_field(&new, &meta).await.unwrap(), new);
    let batch: HashMap<String, EncryptedField> =
        [("old".to_owned(), old.clone()), ("new".to_owned(), new.clone())].into();
    let rotated = client.rotate_fields(&batch, &meta).await.unwrap();
    assert!(rotated.failures.is_empty(), "{:?}", rotated.failures);
    assert_eq!(rotated.successes["old"], new);
    assert_eq!(rotated.successes["new"], new);

    // Another tenant's secret of the same path was not rotated.
    let b = RequestMetadata::new("tenant-b", "t");
    assert_eq!(client.encrypt_field(&plain, &b).await.unwrap(), untouched);
    assert_eq!(client.generate_search_terms(&plain, &b).await.unwrap(), [untouched]);
}

#[tokio::test]
async fn proxy_refusals_keep_their_codes() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let plain = field(b"v", "users", "email");

    let err = client.encrypt_field(&plain, &meta("no-such-tenant")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTenantOrNoActiveKmsConfigurations, "{err}");
    assert!(matches!(err, Error::Proxy { .. }), "{err}");
    let err = client.generate_search_terms(&plain, &meta("no-such-tenant")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTenantOrNoActiveKmsConfigurations, "{err}");

    let stored = client.encrypt_field(&plain, &meta("tenant-a")).await.unwrap();
    let wrong = Client::new(format!("http://{}", proxy.addr), "not-the-key-0123456789").unwrap();
    for err in [
        wrong.encrypt_field(&plain, &meta("tenant-a")).await.unwrap_err(),
        wrong.decrypt_field(&stored, &meta("tenant-a")).await.unwrap_err(),
        wrong.rotate_field(&stored, &meta("tenant-a")).await.unwrap_err(),
        wrong.generate_search_terms(&plain, &meta("tenant-a")).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), ErrorCode::UnauthorizedRequest, "{err}");
        assert!(matches!(err, Error::Proxy { status: 401, .. }), "{err}");
    }

    // Metadata without a requesting id is refused before any call.
    let err =
        client.encrypt_field(&plain, &RequestMetadata::new("tenant-a", "")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // An empty secret path is the proxy's to refuse (102), for the whole call.
    let err = client.encrypt_field(&field(b"v", "", "email"), &meta("tenant-a")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequestBody, "{err}");
}

#[tokio::test]
async fn every_call_is_one_derive_request() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    let plain = field(b"v", "users", "email");
    let fields: HashMap<String, PlaintextField> = (0..20)
        .map(|i| {
            (format!("f{i}"), field(format!("v{i}").as_bytes(), "users", ["email", "phone"][i % 2]))
        })
        .chain([("o".to_owned(), field(b"o", "orders", "number"))])
        .collect();

    let stored = client.encrypt_field(&plain, &meta).await.unwrap();
    client.decrypt_field(&stored, &meta).await.unwrap();
    client.rotate_field(&stored, &meta).await.unwrap();
    client.generate_search_terms(&plain, &meta).await.unwrap();
    let encrypted = client.encrypt_fields(&fields, &meta).await.unwrap().successes;
    assert_eq!(encrypted.len(), 21);
    assert_eq!(client.decrypt_fields(&encrypted, &meta).await.unwrap().successes.len(), 21);
    assert_eq!(client.rotate_fields(&encrypted, &meta).await.unwrap().successes.len(), 21);
    let terms = client.generate_search_terms_batch(&fields, &meta).await.unwrap();
    assert_eq!(terms.successes.len(), 21);
    // Not a deterministic field: refused locally.
    let bad = EncryptedField::new(vec![0; 5], "users", "email");
    let err = client.decrypt_field(&bad, &meta).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeterministicHeaderError, "{err}");

    let metrics =
        reqwest::get(format!("http://{}/metrics", proxy.addr)).await.unwrap().text().await.unwrap();
    // Eight calls, eight derive requests, whatever the number of fields and paths.
    let route = r#"route="/api/1/key/derive-with-secret-path""#;
    let line = format!("keyhold_http_requests_total{{{route},status=\"200\"}} 8");
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    let refused = metrics
        .lines()
        .filter(|l| l.contains(route) && l.contains("status=") && !l.contains(r#"status="200""#));
    assert_eq!(refused.count(), 0, "{metrics}");
}
