//! The `vault` backend against a real OpenBao server (scripts/services/vault.sh starts it):
//! the conformance suite, then what is particular to Transit — never creating a key, derived
//! keys only, tokens and AppRole, namespaces, rotation and rewrap, revoked versions,
//! rate limits, TLS with a private CA, a sealed server.
#![cfg(feature = "vault")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyhold_core::secret::Dek;
use keyhold_kms::conformance::{Harness, run_all, service_env};
use keyhold_kms::vault::{VaultAppRoleConfig, VaultConfig, VaultKms};
use keyhold_kms::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};
use serde_json::{Value, json};
use zeroize::Zeroizing;

// --- the servers and an admin client (root token) for what a tenant's admin would do

struct Server {
    addr: String,
    admin: Admin,
}

fn server() -> Option<Server> {
    let addr = service_env("KEYHOLD_TEST_OPENBAO_ADDR")?;
    let root = service_env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN")?;
    Some(Server { admin: Admin::new(&addr, &root, None), addr })
}

fn env(name: &str) -> String {
    service_env(name).unwrap_or_else(|| panic!("{name} is not set but the OpenBao address is"))
}

struct Admin {
    client: reqwest::Client,
    addr: String,
    root: String,
}

impl Admin {
    fn new(addr: &str, root: &str, ca_pem: Option<&[u8]>) -> Self {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(pem) = ca_pem {
            builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem).unwrap());
        }
        Self { client: builder.build().unwrap(), addr: addr.into(), root: root.into() }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        namespace: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root);
        if let Some(ns) = namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A request that must succeed.
    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.send(method, path, body, None).await;
        assert!((200..300).contains(&status), "admin {method} {path}: HTTP {status}: {value}");
        value
    }

    async fn create_key(&self, mount: &str, key: &str, derived: bool) {
        self.ok(
            "POST",
            &format!("{mount}/keys/{key}"),
            Some(json!({"type": "aes256-gcm96", "derived": derived})),
        )
        .await;
    }

    async fn key_exists(&self, mount: &str, key: &str) -> bool {
        let (status, value) = self.send("GET", &format!("{mount}/keys/{key}"), None, None).await;
        match status {
            200 => true,
            404 => false,
            _ => panic!("admin key read: HTTP {status}: {value}"),
        }
    }

    /// A token whose policy is the minimal tenant policy of docs/kms/vault.md for `key`
    /// (plus `rewrap` when asked): no `create`.
    async fn tenant_token(&self, mount: &str, key: &str, rewrap: bool) -> String {
        let mut ops = vec!["encrypt", "decrypt", "datakey/plaintext"];
        if rewrap {
            ops.push("rewrap");
        }
        let mut rules: String = ops
            .iter()
            .map(|op| format!("path \"{mount}/{op}/{key}\" {{ capabilities = [\"update\"] }}\n"))
            .collect();
        rules.push_str(&format!("path \"{mount}/keys/{key}\" {{ capabilities = [\"read\"] }}\n"));
        let policy = format!("tenant-{key}");
        self.ok("PUT", &format!("sys/policies/acl/{policy}"), Some(json!({"policy": rules}))).await;
        let created = self
            .ok("POST", "auth/token/create", Some(json!({"policies": [policy], "ttl": "1h"})))
            .await;
        created["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// A fresh derived key and a tenant token for it.
    async fn fresh_key(&self, rewrap: bool) -> (String, String) {
        let key = unique("kt");
        self.create_key("transit", &key, true).await;
        let token = self.tenant_token("transit", &key, rewrap).await;
        (key, token)
    }

    async fn rotate(&self, mount: &str, key: &str) {
        self.ok("POST", &format!("{mount}/keys/{key}/rotate"), None).await;
    }

    /// A new AppRole mount with one role; its role id and a secret id.
    async fn approle(&self, role: Value, secret_id: Value) -> (String, String, String) {
        let mount = unique("approle");
        self.ok("POST", &format!("sys/auth/{mount}"), Some(json!({"type": "approle"}))).await;
        self.ok("POST", &format!("auth/{mount}/role/r"), Some(role)).await;
        let role_id =
            self.ok("GET", &format!("auth/{mount}/role/r/role-id"), None).await["data"]["role_id"]
                .as_str()
                .unwrap()
                .to_owned();
        let secret = self
            .ok("POST", &format!("auth/{mount}/role/r/secret-id"), Some(secret_id))
            .await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (mount, role_id, secret)
    }
}

fn unique(prefix: &str) -> String {
    let bytes: [u8; 6] = keyhold_core::random::random_array().unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn secret(value: &str) -> SecretSource {
    SecretSource::Inline(Zeroizing::new(value.to_owned()))
}

fn config(addr: &str, key: &str, token: &str) -> VaultConfig {
    VaultConfig {
        address: addr.into(),
        mount: "transit".into(),
        key: key.into(),
        namespace: None,
        token: Some(secret(token)),
        approle: None,
        ca_cert_file: None,
        tls_server_name: None,
    }
}

fn approle_config(
    addr: &str,
    key: &str,
    mount: &str,
    role_id: &str,
    secret_id: &str,
) -> VaultConfig {
    VaultConfig {
        token: None,
        approle: Some(VaultAppRoleConfig {
            role_id: role_id.into(),
            secret_id: secret(secret_id),
            mount: mount.into(),
        }),
        ..config(addr, key, "unused")
    }
}

fn options(timeout: Duration) -> ConnectOptions {
    ConnectOptions { base_dir: ".".into(), request_timeout: timeout }
}

async fn connect(config: &VaultConfig) -> VaultKms {
    VaultKms::connect(config, &options(Duration::from_secs(5))).await.unwrap()
}

fn ctx() -> KeyContext<'static> {
    KeyContext::new("tenant-a", 17)
}

/// generate, then unwrap: the key comes back.
async fn round_trip(kms: &VaultKms) -> Vec<u8> {
    let generated = kms.generate(&ctx()).await.unwrap();
    assert_eq!(kms.unwrap(&generated.wrapped, &ctx()).await.unwrap(), generated.dek);
    generated.wrapped
}

// --- the conformance suite

struct VaultHarness {
    admin: Admin,
    addr: String,
    token: String,
    key: String,
    kms: Arc<VaultKms>,
}

const CONFORMANCE_KEY: &str = "keyhold-conformance";

#[async_trait]
impl Harness for VaultHarness {
    fn name(&self) -> &str {
        "vault (OpenBao)"
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        self.admin.ok("DELETE", &format!("transit/keys/{}/soft-delete", self.key), None).await;
        Some(())
    }
    async fn enable_key(&self) -> Option<()> {
        self.admin
            .ok("POST", &format!("transit/keys/{}/soft-delete-restore", self.key), None)
            .await;
        Some(())
    }
    async fn rotate_key(&self) -> Option<()> {
        self.admin.rotate("transit", &self.key).await;
        Some(())
    }
    fn key_version_of(&self, wrapped: &[u8]) -> Option<u32> {
        VaultKms::key_version_of(wrapped)
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        let silent = format!("http://127.0.0.1:{}", keyhold_kms::conformance::silent_port());
        let config = config(&silent, &self.key, &self.token);
        let kms = futures_lite_block(VaultKms::connect(&config, &options(Duration::from_secs(1))));
        Some(Arc::new(kms.unwrap()))
    }
    fn unreachable_deadline(&self) -> Duration {
        Duration::from_secs(3)
    }
}

/// `connect` does no I/O, so it completes on first poll; this avoids nesting runtimes.
fn futures_lite_block<F: std::future::Future>(future: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => panic!("VaultKms::connect waited on I/O"),
    }
}

#[tokio::test]
async fn vault_backend_passes_conformance() {
    let Some(server) = server() else { return };
    let token = env("KEYHOLD_TEST_OPENBAO_TOKEN");
    let kms = Arc::new(connect(&config(&server.addr, CONFORMANCE_KEY, &token)).await);
    let harness = VaultHarness {
        admin: server.admin,
        addr: server.addr,
        token,
        key: CONFORMANCE_KEY.into(),
        kms,
    };
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&[]);
    // The harness's server is the one the suite talked to.
    assert!(harness.addr.starts_with("http://127.0.0.1:"));
}

// --- never creating a key; derived keys only

#[tokio::test]
async fn a_missing_key_is_refused_and_never_created() {
    let Some(server) = server() else { return };
    let missing = unique("kt-missing");
    let dek = Dek::generate().unwrap();
    // Tokens that may create keys (root) and that may not (the minimal policy, naming the
    // missing key as a typo in both the configuration and the policy would).
    let root = env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN");
    let limited = server.admin.tenant_token("transit", &missing, true).await;
    for token in [root, limited] {
        let kms = connect(&config(&server.addr, &missing, &token)).await;
        let results = [
            kms.wrap(&dek, &ctx()).await.map(|_| ()),
            kms.generate(&ctx()).await.map(|_| ()),
            kms.health().await,
            kms.unwrap(b"vault:v1:AAAAAAAAAAAAAAAAAAAAAAAA", &ctx()).await.map(|_| ()),
            kms.rewrap(b"vault:v1:AAAAAAAAAAAAAAAAAAAAAAAA", &ctx()).await.map(|_| ()),
        ];
        for result in results {
            match result {
                Err(KmsError::ConfigurationInvalid(m)) => {
                    assert!(m.contains("does not exist"), "{m}")
                }
                other => panic!("missing key gave {other:?}, want ConfigurationInvalid"),
            }
        }
        assert!(!server.admin.key_exists("transit", &missing).await, "the backend created the key");
    }
}

#[tokio::test]
async fn a_key_that_is_not_derived_is_refused() {
    let Some(server) = server() else { return };
    let key = unique("kt-plain");
    server.admin.create_key("transit", &key, false).await;
    let token = server.admin.tenant_token("transit", &key, false).await;
    let kms = connect(&config(&server.addr, &key, &token)).await;
    let dek = Dek::generate().unwrap();
    for result in [
        kms.health().await,
        kms.generate(&ctx()).await.map(|_| ()),
        kms.wrap(&dek, &ctx()).await.map(|_| ()),
    ] {
        match result {
            Err(KmsError::ConfigurationInvalid(m)) => assert!(m.contains("not derived"), "{m}"),
            other => panic!("non-derived key gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_wrong_mount_or_namespace_is_a_configuration_error() {
    let Some(server) = server() else { return };
    let root = env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN");
    let wrong_mount =
        VaultConfig { mount: "no-such-mount".into(), ..config(&server.addr, "k", &root) };
    let wrong_ns = VaultConfig {
        namespace: Some("no-such-namespace".into()),
        ..config(&server.addr, "keyhold-stable", &root)
    };
    for config in [wrong_mount, wrong_ns] {
        let result = connect(&config).await.generate(&ctx()).await.map(|_| ());
        assert!(matches!(result, Err(KmsError::ConfigurationInvalid(_))), "{config:?}: {result:?}");
    }
}

// --- credentials

#[tokio::test]
async fn a_bad_token_is_access_denied() {
    let Some(server) = server() else { return };
    let good =
        connect(&config(&server.addr, "keyhold-stable", &env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN")))
            .await;
    let wrapped = round_trip(&good).await;
    let bad = connect(&config(&server.addr, "keyhold-stable", "s.not-a-real-token")).await;
    assert!(matches!(bad.health().await, Err(KmsError::AccessDenied(_))));
    assert!(matches!(bad.generate(&ctx()).await, Err(KmsError::AccessDenied(_))));
    assert!(matches!(bad.unwrap(&wrapped, &ctx()).await, Err(KmsError::AccessDenied(_))));
}

#[tokio::test]
async fn a_token_limited_to_another_key_is_access_denied() {
    let Some(server) = server() else { return };
    // The conformance token's policy names keyhold-conformance only.
    let token = env("KEYHOLD_TEST_OPENBAO_TOKEN");
    let kms = connect(&config(&server.addr, "keyhold-stable", &token)).await;
    assert!(matches!(kms.generate(&ctx()).await, Err(KmsError::AccessDenied(_))));
}

#[tokio::test]
async fn approle_login_works_and_bad_secrets_are_denied() {
    let Some(server) = server() else { return };
    let role_id = env("KEYHOLD_TEST_OPENBAO_ROLE_ID");
    let secret_id = env("KEYHOLD_TEST_OPENBAO_SECRET_ID");
    // The configuration as a tenant writes it (TOML), secret id from the environment.
    let toml = format!(
        r#"
        address = "{}"
        key = "keyhold-stable"
        approle = {{ role_id = "{role_id}", secret_id = {{ env = "KEYHOLD_TEST_OPENBAO_SECRET_ID" }} }}
        "#,
        server.addr
    );
    let config: VaultConfig = toml::from_str(&toml).unwrap();
    let kms = connect(&config).await;
    kms.health().await.unwrap();
    round_trip(&kms).await;

    let bad_secret = approle_config(&server.addr, "keyhold-stable", "approle", &role_id, "wrong");
    assert!(matches!(
        connect(&bad_secret).await.generate(&ctx()).await,
        Err(KmsError::AccessDenied(_))
    ));
    let bad_mount = approle_config(&server.addr, "keyhold-stable", "nope", &role_id, &secret_id);
    assert!(matches!(connect(&bad_mount).await.health().await, Err(KmsError::AccessDenied(_))));
}

#[tokio::test]
async fn approle_tokens_are_renewed_before_they_expire() {
    let Some(server) = server() else { return };
    // A 2 s token and a secret id good for ONE login: only renewals keep the backend working.
    let (mount, role_id, secret_id) = server
        .admin
        .approle(
            json!({"token_policies": ["keyhold-stable"], "token_ttl": "2s", "token_max_ttl": "1h"}),
            json!({"num_uses": 1}),
        )
        .await;
    let kms =
        connect(&approle_config(&server.addr, "keyhold-stable", &mount, &role_id, &secret_id))
            .await;
    for _ in 0..6 {
        round_trip(&kms).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
}

#[tokio::test]
async fn approle_logs_in_again_when_the_token_cannot_be_renewed() {
    let Some(server) = server() else { return };
    // 2 s tokens that cannot live past 3 s: the backend must log in again.
    let (mount, role_id, secret_id) = server
        .admin
        .approle(
            json!({"token_policies": ["keyhold-stable"], "token_ttl": "2s", "token_max_ttl": "3s"}),
            json!({}),
        )
        .await;
    let kms =
        connect(&approle_config(&server.addr, "keyhold-stable", &mount, &role_id, &secret_id))
            .await;
    for _ in 0..7 {
        round_trip(&kms).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
}

#[tokio::test]
async fn approle_logs_in_again_after_a_403() {
    let Some(server) = server() else { return };
    let (mount, role_id, secret_id) = server
        .admin
        .approle(json!({"token_policies": ["keyhold-stable"], "token_ttl": "1h"}), json!({}))
        .await;
    let kms =
        connect(&approle_config(&server.addr, "keyhold-stable", &mount, &role_id, &secret_id))
            .await;
    let wrapped = round_trip(&kms).await;
    // Revoke every token this AppRole mount gave out: the cached one now gets 403.
    server.admin.ok("PUT", &format!("sys/leases/revoke-prefix/auth/{mount}/login"), None).await;
    kms.unwrap(&wrapped, &ctx()).await.unwrap();
    round_trip(&kms).await;
}

// --- namespaces

#[tokio::test]
async fn the_namespace_header_is_sent() {
    let Some(server) = server() else { return };
    let root = env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN");
    let namespace = env("KEYHOLD_TEST_OPENBAO_NAMESPACE");
    // keyhold-ns-key exists only inside the namespace.
    let inside = VaultConfig {
        namespace: Some(namespace.clone()),
        ..config(&server.addr, "keyhold-ns-key", &root)
    };
    let kms = connect(&inside).await;
    kms.health().await.unwrap();
    let wrapped = round_trip(&kms).await;
    let outside = connect(&config(&server.addr, "keyhold-ns-key", &root)).await;
    assert!(matches!(outside.health().await, Err(KmsError::ConfigurationInvalid(_))));
    assert!(matches!(
        outside.unwrap(&wrapped, &ctx()).await,
        Err(KmsError::ConfigurationInvalid(_))
    ));
    assert!(!server.admin.key_exists("transit", "keyhold-ns-key").await);
}

// --- rotation, rewrap, revoked versions, soft-delete

#[tokio::test]
async fn after_rotation_new_keys_use_v2_and_rewrap_moves_old_ones() {
    let Some(server) = server() else { return };
    let (key, token) = server.admin.fresh_key(true).await;
    let kms = connect(&config(&server.addr, &key, &token)).await;
    let old = kms.generate(&ctx()).await.unwrap();
    assert!(old.wrapped.starts_with(b"vault:v1:"));
    server.admin.rotate("transit", &key).await;

    let new = kms.generate(&ctx()).await.unwrap();
    assert!(new.wrapped.starts_with(b"vault:v2:"), "{}", String::from_utf8_lossy(&new.wrapped));
    assert_eq!(kms.unwrap(&old.wrapped, &ctx()).await.unwrap(), old.dek);

    let moved = kms.rewrap(&old.wrapped, &ctx()).await.unwrap();
    assert_eq!(VaultKms::key_version_of(&moved), Some(2));
    assert_eq!(kms.unwrap(&moved, &ctx()).await.unwrap(), old.dek);
    // The context stays bound: another tenant cannot rewrap or unwrap it.
    let other = KeyContext::new("tenant-b", 17);
    assert_eq!(kms.rewrap(&old.wrapped, &other).await.unwrap_err(), KmsError::InvalidCiphertext);
    assert_eq!(kms.unwrap(&moved, &other).await.unwrap_err(), KmsError::InvalidCiphertext);
    let mut tampered = moved.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    assert_eq!(kms.rewrap(&tampered, &ctx()).await.unwrap_err(), KmsError::InvalidCiphertext);
    // Without `rewrap` in the policy: denied.
    let no_rewrap = server.admin.tenant_token("transit", &key, false).await;
    let kms = connect(&config(&server.addr, &key, &no_rewrap)).await;
    assert!(matches!(kms.rewrap(&old.wrapped, &ctx()).await, Err(KmsError::AccessDenied(_))));
}

#[tokio::test]
async fn raising_min_decryption_version_revokes_old_wrapped_keys() {
    let Some(server) = server() else { return };
    let (key, token) = server.admin.fresh_key(true).await;
    let kms = connect(&config(&server.addr, &key, &token)).await;
    let old = kms.generate(&ctx()).await.unwrap();
    server.admin.rotate("transit", &key).await;
    let new = kms.generate(&ctx()).await.unwrap();
    server
        .admin
        .ok(
            "POST",
            &format!("transit/keys/{key}/config"),
            Some(json!({"min_decryption_version": 2})),
        )
        .await;
    match kms.unwrap(&old.wrapped, &ctx()).await {
        Err(KmsError::KeyDisabled(m)) => assert!(m.contains("revoked"), "{m}"),
        other => panic!("revoked version gave {:?}", other.map(|_| ())),
    }
    assert!(matches!(kms.rewrap(&old.wrapped, &ctx()).await, Err(KmsError::KeyDisabled(_))));
    assert_eq!(kms.unwrap(&new.wrapped, &ctx()).await.unwrap(), new.dek);
    kms.health().await.unwrap();
}

#[tokio::test]
async fn a_soft_deleted_key_is_disabled_everywhere() {
    let Some(server) = server() else { return };
    let (key, token) = server.admin.fresh_key(true).await;
    let kms = connect(&config(&server.addr, &key, &token)).await;
    let wrapped = round_trip(&kms).await;
    server.admin.ok("DELETE", &format!("transit/keys/{key}/soft-delete"), None).await;
    let dek = Dek::generate().unwrap();
    for result in [
        kms.health().await,
        kms.generate(&ctx()).await.map(|_| ()),
        kms.wrap(&dek, &ctx()).await.map(|_| ()),
        kms.unwrap(&wrapped, &ctx()).await.map(|_| ()),
        kms.rewrap(&wrapped, &ctx()).await.map(|_| ()),
    ] {
        assert!(matches!(result, Err(KmsError::KeyDisabled(_))), "{result:?}");
    }
    // A fresh backend (no cached key check) says the same from its first call.
    let fresh = connect(&config(&server.addr, &key, &token)).await;
    assert!(matches!(fresh.generate(&ctx()).await, Err(KmsError::KeyDisabled(_))));
    server.admin.ok("POST", &format!("transit/keys/{key}/soft-delete-restore"), None).await;
    kms.unwrap(&wrapped, &ctx()).await.unwrap();
    kms.health().await.unwrap();
}

// --- throttling, timeouts, TLS, sealing

#[tokio::test]
async fn a_rate_limit_quota_is_throttling() {
    let Some(server) = server() else { return };
    let mount = unique("transit-rl");
    let admin = &server.admin;
    admin.ok("POST", &format!("sys/mounts/{mount}"), Some(json!({"type": "transit"}))).await;
    let key = "k";
    admin.create_key(&mount, key, true).await;
    let quota = format!("sys/quotas/rate-limit/{mount}");
    admin
        .ok("POST", &quota, Some(json!({"path": format!("{mount}/"), "rate": 2, "interval": "1m"})))
        .await;
    let root = env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN");
    let kms =
        connect(&VaultConfig { mount: mount.clone(), ..config(&server.addr, key, &root) }).await;
    let mut throttled = 0;
    for _ in 0..4 {
        match kms.generate(&ctx()).await {
            Ok(_) => {}
            Err(KmsError::Throttled) => throttled += 1,
            Err(e) => panic!("rate-limited mount gave {e:?}"),
        }
    }
    admin.ok("DELETE", &quota, None).await;
    assert!(throttled >= 2, "only {throttled} of 4 calls were throttled");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_unreachable() {
    // Accepts connections (the kernel's backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", silent.local_addr().unwrap());
    let kms = VaultKms::connect(&config(&addr, "k", "t"), &options(Duration::from_millis(500)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    match kms.generate(&ctx()).await {
        Err(KmsError::Unreachable(m)) => assert!(m.contains("in time"), "{m}"),
        other => panic!("silent server gave {:?}", other.map(|_| ())),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn tls_with_a_private_ca_and_server_name_then_a_sealed_server() {
    let Some(_) = server() else { return };
    let addr = env("KEYHOLD_TEST_OPENBAO_TLS_ADDR");
    let ca = env("KEYHOLD_TEST_OPENBAO_TLS_CA");
    let root = env("KEYHOLD_TEST_OPENBAO_TLS_ROOT_TOKEN");
    let unseal_key = env("KEYHOLD_TEST_OPENBAO_TLS_UNSEAL_KEY");
    let admin = Admin::new(&addr, &root, Some(&std::fs::read(&ca).unwrap()));
    let key = unique("kt-tls");
    let (status, body) =
        admin.send("POST", "sys/mounts/transit", Some(json!({"type": "transit"})), None).await;
    assert!(status == 204 || body.to_string().contains("already in use"), "{status} {body}");
    admin.create_key("transit", &key, true).await;

    // The CA file relative to the configuration's directory, as the docs describe.
    let ca_path = std::path::Path::new(&ca);
    let with_ca = |server_name: Option<&str>| VaultConfig {
        ca_cert_file: Some(ca_path.file_name().unwrap().into()),
        tls_server_name: server_name.map(Into::into),
        ..config(&addr, &key, &root)
    };
    let in_dir = ConnectOptions {
        base_dir: ca_path.parent().unwrap().into(),
        request_timeout: Duration::from_secs(5),
    };
    let kms = VaultKms::connect(&with_ca(None), &in_dir).await.unwrap();
    round_trip(&kms).await;
    // The certificate names localhost6 (not resolvable here, maybe): the backend sends and
    // verifies that name while connecting to the configured address.
    let named = VaultKms::connect(&with_ca(Some("localhost6")), &in_dir).await.unwrap();
    round_trip(&named).await;
    let wrong_name = VaultKms::connect(&with_ca(Some("wrong.example")), &in_dir).await.unwrap();
    assert!(matches!(wrong_name.health().await, Err(KmsError::Unreachable(_))));
    let system_roots = connect(&config(&addr, &key, &root)).await;
    match system_roots.health().await {
        Err(KmsError::Unreachable(m)) => assert!(m.to_lowercase().contains("certificate"), "{m}"),
        other => panic!("untrusted certificate gave {other:?}"),
    }

    // Sealed: unreachable (503), until unsealed.
    let wrapped = kms.generate(&ctx()).await.unwrap().wrapped;
    admin.ok("PUT", "sys/seal", None).await;
    let sealed = [
        kms.health().await,
        kms.generate(&ctx()).await.map(|_| ()),
        kms.unwrap(&wrapped, &ctx()).await.map(|_| ()),
    ];
    let (status, body) =
        admin.send("PUT", "sys/unseal", Some(json!({"key": unseal_key})), None).await;
    assert_eq!(status, 200, "unseal: {body}");
    for result in sealed {
        match result {
            Err(KmsError::Unreachable(m)) => assert!(m.contains("sealed"), "{m}"),
            other => panic!("sealed server gave {other:?}"),
        }
    }
    round_trip(&kms).await;
}
