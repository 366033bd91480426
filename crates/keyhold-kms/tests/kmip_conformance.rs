//! The KMIP backend against a real KMIP server: PyKMIP 0.11 over mutual TLS 1.2, started by
//! scripts/services/kmip.sh. Each test creates its own keys through the client (Create +
//! Activate), with names no other test uses, so tests can share the server and run in parallel.
#![cfg(feature = "kmip")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyhold_kms::conformance::{Harness, run_all, service_env};
use keyhold_kms::kmip::admin::{
    USAGE_DECRYPT, USAGE_ENCRYPT, USAGE_MAC_GENERATE, USAGE_MAC_VERIFY,
};
use keyhold_kms::kmip::{KmipConfig, KmipKms, Mechanism};
use keyhold_kms::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};

#[derive(Clone)]
struct Server {
    addr: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Server {
    /// The test server, or `None` when KEYHOLD_SKIP_SERVICES=1 asks to skip.
    fn get() -> Option<Self> {
        Some(Self {
            addr: service_env("KEYHOLD_TEST_KMIP_ADDR")?,
            ca: service_env("KEYHOLD_TEST_KMIP_CA")?.into(),
            cert: service_env("KEYHOLD_TEST_KMIP_CLIENT_CERT")?.into(),
            key: service_env("KEYHOLD_TEST_KMIP_CLIENT_KEY")?.into(),
        })
    }

    /// The same server with another client certificate and key (from the named variables).
    fn with_client(&self, cert_var: &str, key_var: &str) -> Self {
        Self {
            cert: service_env(cert_var).unwrap().into(),
            key: service_env(key_var).unwrap().into(),
            ..self.clone()
        }
    }

    fn config(
        &self,
        key_name: &str,
        mac_key_name: Option<&str>,
        mechanism: Mechanism,
    ) -> KmipConfig {
        KmipConfig {
            address: self.addr.clone(),
            server_name: Some("localhost".into()),
            ca_cert_file: self.ca.clone(),
            client_cert_file: self.cert.clone(),
            client_key: SecretSource::File { file: self.key.clone() },
            key_name: key_name.into(),
            mac_key_name: mac_key_name.map(Into::into),
            mechanism,
            key_refresh_seconds: 0,
            pool_size: 4,
        }
    }

    async fn kms(&self, config: &KmipConfig) -> KmipKms {
        KmipKms::connect(config, &options(Duration::from_secs(10))).await.unwrap()
    }

    /// A client for key administration (its own key names are not used).
    async fn admin(&self) -> KmipKms {
        self.kms(&self.config("admin", Some("admin-mac"), Mechanism::CbcHmac)).await
    }
}

fn options(request_timeout: Duration) -> ConnectOptions {
    ConnectOptions { base_dir: ".".into(), request_timeout }
}

/// A key name no other test (or earlier run against the same server) uses.
fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Creates and activates an AES-256 key; its id.
async fn active_key(admin: &KmipKms, name: &str, usage: i32) -> String {
    let uid = admin.create_key(name, usage).await.unwrap();
    admin.activate_key(&uid).await.unwrap();
    uid
}

/// Creates the keys a configuration names: encryption key, and MAC key for cbc-hmac.
async fn provision(admin: &KmipKms, config: &KmipConfig) -> String {
    let uid = active_key(admin, &config.key_name, USAGE_ENCRYPT | USAGE_DECRYPT).await;
    if let Some(mac) = &config.mac_key_name {
        active_key(admin, mac, USAGE_MAC_GENERATE | USAGE_MAC_VERIFY).await;
    }
    uid
}

struct KmipHarness {
    name: &'static str,
    config: KmipConfig,
    admin: KmipKms,
    kms: Arc<KmipKms>,
    /// Encryption key ids in creation order: the "version" of a wrapped key is its position.
    versions: Mutex<Vec<String>>,
}

impl KmipHarness {
    async fn new(name: &'static str, server: Server, mechanism: Mechanism) -> Self {
        let key = unique(name);
        let mac = (mechanism == Mechanism::CbcHmac).then(|| format!("{key}-mac"));
        let config = server.config(&key, mac.as_deref(), mechanism);
        let admin = server.admin().await;
        let first = provision(&admin, &config).await;
        let kms = Arc::new(server.kms(&config).await);
        Self { name, config, admin, kms, versions: Mutex::new(vec![first]) }
    }
}

#[async_trait]
impl Harness for KmipHarness {
    fn name(&self) -> &str {
        self.name
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        // KMIP has no way back from Revoke (Active → Deactivated is final, and Activate only
        // accepts Pre-Active keys), so "disable, then enable again" cannot be done; revocation
        // is covered by `revoked_keys_are_disabled` below.
        None
    }
    async fn enable_key(&self) -> Option<()> {
        None
    }
    async fn rotate_key(&self) -> Option<()> {
        // PyKMIP has no ReKey: rotation is a new Active key with the same name. Its Initial Date
        // has one-second resolution, so the new key must be at least a second younger.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let uid = provision(&self.admin, &self.config).await;
        self.versions.lock().unwrap().push(uid);
        Some(())
    }
    fn key_version_of(&self, wrapped: &[u8]) -> Option<u32> {
        let id = KmipKms::key_id_of(wrapped)?;
        let versions = self.versions.lock().unwrap();
        versions.iter().position(|v| *v == id).map(|i| i as u32 + 1)
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        let mut config = self.config.clone();
        // Accepts the TCP connection, never completes the TLS handshake.
        config.address = format!("127.0.0.1:{}", keyhold_kms::conformance::silent_port());
        let kms =
            futures_lite_block_on(KmipKms::connect(&config, &options(Duration::from_secs(2))));
        Some(Arc::new(kms.unwrap()))
    }
    fn unreachable_deadline(&self) -> Duration {
        Duration::from_secs(3)
    }
}

/// `connect` contacts nothing, so it completes on first poll; this runs it from sync code.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("KmipKms::connect waited on I/O"),
    }
}

#[tokio::test]
async fn kmip_cbc_hmac_passes_conformance() {
    let Some(server) = Server::get() else { return };
    let harness = KmipHarness::new("kmip-cbc-hmac", server, Mechanism::CbcHmac).await;
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&["disabled_key_is_denied"]);
    // Rotation really switched keys: two key ids, and new wraps name the second.
    let ctx = KeyContext::new("t", 1);
    let wrapped = harness.kms.generate(&ctx).await.unwrap().wrapped;
    assert_eq!(harness.key_version_of(&wrapped), Some(2));
    assert_eq!(wrapped[3], 1, "cbc-hmac format byte");
}

#[tokio::test]
async fn kmip_gcm_passes_conformance() {
    let Some(server) = Server::get() else { return };
    let harness = KmipHarness::new("kmip-gcm", server, Mechanism::Gcm).await;
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&["disabled_key_is_denied"]);
    let wrapped = harness.kms.generate(&KeyContext::new("t", 1)).await.unwrap().wrapped;
    assert_eq!(wrapped[3], 2, "gcm format byte");
}

#[tokio::test]
async fn revoked_keys_are_disabled() {
    let Some(server) = Server::get() else { return };
    let admin = server.admin().await;
    let ctx = KeyContext::new("t", 1);
    for revoke_mac_key in [false, true] {
        let key = unique("kmip-revoke");
        let config = server.config(&key, Some(&format!("{key}-mac")), Mechanism::CbcHmac);
        let enc_uid = provision(&admin, &config).await;
        let kms = server.kms(&config).await;
        let wrapped = kms.generate(&ctx).await.unwrap().wrapped;
        let revoked = if revoke_mac_key { mac_id_of(&wrapped) } else { enc_uid };
        admin.revoke_key(&revoked).await.unwrap();
        match kms.unwrap(&wrapped, &ctx).await {
            Err(KmsError::KeyDisabled(m)) => assert!(m.contains("Deactivated"), "{m}"),
            other => panic!("unwrap with revoked key {revoked}: {other:?}"),
        }
        match kms.generate(&ctx).await.map(|_| ()) {
            Err(KmsError::KeyDisabled(m)) => assert!(m.contains("Active"), "{m}"),
            other => panic!("generate with revoked key {revoked}: {other:?}"),
        }
        assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));

        // PyKMIP deletes destroyed keys outright: the id the wrapped key names is then unknown
        // to the server, which reads as a wrapped key for some other key.
        admin.destroy_key(&revoked).await.unwrap();
        assert_eq!(kms.unwrap(&wrapped, &ctx).await.unwrap_err(), KmsError::InvalidCiphertext);
    }
}

/// The MAC key id of a cbc-hmac wrapped key: `"KHK" 1 len id len id …`.
fn mac_id_of(wrapped: &[u8]) -> String {
    let first = usize::from(wrapped[4]);
    let at = 5 + first;
    let len = usize::from(wrapped[at]);
    String::from_utf8(wrapped[at + 1..at + 1 + len].to_vec()).unwrap()
}

#[tokio::test]
async fn a_destroyed_key_seen_before_is_disabled() {
    let Some(server) = Server::get() else { return };
    let admin = server.admin().await;
    let key = unique("kmip-destroy");
    let mut config = server.config(&key, Some(&format!("{key}-mac")), Mechanism::CbcHmac);
    config.key_refresh_seconds = 3600; // the proxy still lists the key when it is destroyed
    let enc_uid = provision(&admin, &config).await;
    let kms = server.kms(&config).await;
    let ctx = KeyContext::new("t", 1);
    let wrapped = kms.generate(&ctx).await.unwrap().wrapped;
    admin.revoke_key(&enc_uid).await.unwrap();
    admin.destroy_key(&enc_uid).await.unwrap();
    match kms.unwrap(&wrapped, &ctx).await {
        Err(KmsError::KeyDisabled(m)) => assert!(m.contains("no longer exists"), "{m}"),
        other => panic!("unwrap with a destroyed key: {other:?}"),
    }
}

#[tokio::test]
async fn tampered_wrapped_keys_are_refused_before_any_decrypt() {
    let Some(server) = Server::get() else { return };
    let admin = server.admin().await;
    // An encryption key the server will encrypt with but never decrypt with: any Decrypt
    // request is answered Permission Denied (→ AccessDenied). So an InvalidCiphertext answer
    // proves the backend refused the wrapped key before asking the server to decrypt it.
    let key = unique("kmip-encrypt-only");
    let config = server.config(&key, Some(&format!("{key}-mac")), Mechanism::CbcHmac);
    active_key(&admin, &key, USAGE_ENCRYPT).await;
    active_key(&admin, config.mac_key_name.as_deref().unwrap(), USAGE_MAC_GENERATE).await;
    let kms = server.kms(&config).await;
    let ctx = KeyContext::new("t", 1);
    let wrapped = kms.generate(&ctx).await.unwrap().wrapped;

    // The untampered key does reach Decrypt (and is refused there).
    match kms.unwrap(&wrapped, &ctx).await {
        Err(KmsError::AccessDenied(m)) => assert!(m.contains("Decrypt"), "{m}"),
        other => panic!("untampered unwrap with an encrypt-only key: {other:?}"),
    }
    // Every tampered form stops before it.
    let tag_at = wrapped.len() - 32;
    let ciphertext_at = tag_at - 48;
    let iv_at = ciphertext_at - 16;
    for (what, at) in [
        ("format", 3),
        ("key id", 5),
        ("IV", iv_at),
        ("ciphertext", ciphertext_at + 20),
        ("last ciphertext block", tag_at - 1),
        ("tag", tag_at + 7),
    ] {
        let mut bad = wrapped.clone();
        bad[at] ^= 0x04;
        assert_eq!(
            kms.unwrap(&bad, &ctx).await.unwrap_err(),
            KmsError::InvalidCiphertext,
            "tampered {what}"
        );
    }
    assert_eq!(
        kms.unwrap(&wrapped, &KeyContext::new("t", 2)).await.unwrap_err(),
        KmsError::InvalidCiphertext,
        "other context"
    );
}

#[tokio::test]
async fn a_wrapped_key_does_not_unwrap_under_another_key_name() {
    let Some(server) = Server::get() else { return };
    let admin = server.admin().await;
    let a = unique("kmip-name-a");
    let b = unique("kmip-name-b");
    let config_a = server.config(&a, Some(&format!("{a}-mac")), Mechanism::CbcHmac);
    let config_b = server.config(&b, Some(&format!("{b}-mac")), Mechanism::CbcHmac);
    provision(&admin, &config_a).await;
    provision(&admin, &config_b).await;
    let ctx = KeyContext::new("t", 1);
    let wrapped = server.kms(&config_a).await.generate(&ctx).await.unwrap().wrapped;
    // Same server, same client, keys it may use: still refused, the key ids are not b's.
    let kms_b = server.kms(&config_b).await;
    assert_eq!(kms_b.unwrap(&wrapped, &ctx).await.unwrap_err(), KmsError::InvalidCiphertext);
}

#[tokio::test]
async fn a_client_certificate_from_an_unknown_ca_is_denied() {
    let Some(server) = Server::get() else { return };
    let rogue = server.with_client("KEYHOLD_TEST_KMIP_ROGUE_CERT", "KEYHOLD_TEST_KMIP_ROGUE_KEY");
    let kms = rogue.kms(&rogue.config("any", Some("any-mac"), Mechanism::CbcHmac)).await;
    // PyKMIP (OpenSSL, TLS 1.2) verifies the client certificate during the handshake and sends
    // an "unknown CA" alert: a refusal, not an outage.
    match kms.health().await {
        Err(KmsError::AccessDenied(m)) => assert!(m.contains("UnknownCA"), "{m}"),
        other => panic!("rogue client certificate: {other:?}"),
    }
}

#[tokio::test]
async fn another_client_sees_none_of_the_owners_keys() {
    let Some(server) = Server::get() else { return };
    let admin = server.admin().await;
    let key = unique("kmip-owner");
    let config = server.config(&key, Some(&format!("{key}-mac")), Mechanism::CbcHmac);
    provision(&admin, &config).await;
    let ctx = KeyContext::new("t", 1);
    let wrapped = server.kms(&config).await.generate(&ctx).await.unwrap().wrapped;
    // A certificate from the same CA with another subject: PyKMIP's default policy lets only
    // a key's owner use it, and Locate hides other owners' keys.
    let other = server.with_client("KEYHOLD_TEST_KMIP_OTHER_CERT", "KEYHOLD_TEST_KMIP_OTHER_KEY");
    let kms =
        other.kms(&other.config(&key, config.mac_key_name.as_deref(), Mechanism::CbcHmac)).await;
    assert!(matches!(kms.generate(&ctx).await.map(|_| ()), Err(KmsError::ConfigurationInvalid(_))));
    assert_eq!(kms.unwrap(&wrapped, &ctx).await.unwrap_err(), KmsError::InvalidCiphertext);
}

#[tokio::test]
async fn tls_and_key_misconfigurations_are_reported() {
    let Some(server) = Server::get() else { return };
    // The certificate says "localhost", not this name.
    let mut config = server.config("k", Some("m"), Mechanism::CbcHmac);
    config.server_name = Some("kmip.example.com".into());
    match server.kms(&config).await.health().await {
        Err(KmsError::ConfigurationInvalid(m)) => assert!(m.contains("not trusted"), "{m}"),
        other => panic!("wrong server name: {other:?}"),
    }
    // The client's own certificate as CA: the server's certificate cannot be verified.
    let mut config = server.config("k", Some("m"), Mechanism::CbcHmac);
    config.ca_cert_file = server.cert.clone();
    assert!(matches!(
        server.kms(&config).await.health().await,
        Err(KmsError::ConfigurationInvalid(_))
    ));
    // No key with the configured names.
    let missing =
        server.config(&unique("kmip-missing"), Some("kmip-missing-mac"), Mechanism::CbcHmac);
    let kms = server.kms(&missing).await;
    assert!(matches!(kms.health().await, Err(KmsError::ConfigurationInvalid(_))));
    assert!(matches!(
        kms.generate(&KeyContext::new("t", 1)).await.map(|_| ()),
        Err(KmsError::ConfigurationInvalid(_))
    ));
    // A key file that is not a key.
    let mut config = server.config("k", Some("m"), Mechanism::CbcHmac);
    config.client_key = SecretSource::File { file: server.ca.clone() };
    match KmipKms::connect(&config, &options(Duration::from_secs(1))).await {
        Err(KmsError::ConfigurationInvalid(m)) => assert!(!m.contains("BEGIN"), "{m}"),
        other => panic!("bad key file: {other:?}"),
    }
}

/// Pooled connections are reused; without a pool every request opens its own. Counted at a relay
/// in front of the server; the timings are printed (`--nocapture`), not asserted, as the machine
/// is shared.
#[tokio::test]
async fn pooled_connections_are_reused() {
    let Some(server) = Server::get() else { return };
    let admin = server.admin().await;
    let key = unique("kmip-pool");
    let mut config = server.config(&key, Some(&format!("{key}-mac")), Mechanism::CbcHmac);
    config.key_refresh_seconds = 3600;
    provision(&admin, &config).await;
    let relay = Relay::start(server.addr.clone()).await;
    config.address = relay.addr.clone();
    let ctx = KeyContext::new("t", 1);
    const ROUNDS: usize = 20;
    for pool_size in [4, 0] {
        config.pool_size = pool_size;
        let kms = server.kms(&config).await;
        let warm = kms.generate(&ctx).await.unwrap(); // also finds the key ids (4 Locates)
        let before = relay.accepted();
        let started = Instant::now();
        for _ in 0..ROUNDS {
            let generated = kms.generate(&ctx).await.unwrap();
            assert_eq!(kms.unwrap(&generated.wrapped, &ctx).await.unwrap(), generated.dek);
        }
        assert_eq!(kms.unwrap(&warm.wrapped, &ctx).await.unwrap(), warm.dek);
        let per_pair = started.elapsed() / ROUNDS as u32;
        let opened = relay.accepted() - before;
        eprintln!(
            "kmip pool_size={pool_size}: {per_pair:?} per generate + unwrap, {opened} connections"
        );
        // Each pair is Encrypt + MAC, MAC + Decrypt; then one more MAC + Decrypt.
        let want = if pool_size == 0 { ROUNDS * 4 + 2 } else { 0 };
        assert_eq!(opened, want, "pool_size {pool_size}");
    }
}

/// A TCP relay to the server whose open connections the test can cut, as a server, load balancer
/// or firewall closing idle connections would.
struct Relay {
    addr: String,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _acceptor: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (count, all) = (Arc::clone(&accepted), Arc::clone(&links));
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let target = target.clone();
                all.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Self { addr, accepted, links, _acceptor: acceptor }
    }

    fn cut_all(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_pooled_connection_closed_while_idle_is_replaced() {
    let Some(server) = Server::get() else { return };
    let admin = server.admin().await;
    let key = unique("kmip-stale");
    let mut config = server.config(&key, Some(&format!("{key}-mac")), Mechanism::CbcHmac);
    provision(&admin, &config).await;
    let relay = Relay::start(server.addr.clone()).await;
    config.address = relay.addr.clone();
    config.key_refresh_seconds = 3600;
    let kms = server.kms(&config).await;
    let ctx = KeyContext::new("t", 1);

    let first = kms.generate(&ctx).await.unwrap();
    assert_eq!(relay.accepted(), 1, "one connection, reused for every request of a wrap");
    relay.cut_all();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The pooled connection is dead: the request goes out again on a new one, transparently.
    assert_eq!(kms.unwrap(&first.wrapped, &ctx).await.unwrap(), first.dek);
    assert_eq!(relay.accepted(), 2);

    // Without a pool, every request opens its own connection (an unwrap is MAC + Decrypt).
    config.pool_size = 0;
    let unpooled = server.kms(&config).await;
    let before = relay.accepted();
    assert_eq!(unpooled.unwrap(&first.wrapped, &ctx).await.unwrap(), first.dek);
    assert_eq!(
        relay.accepted() - before,
        6,
        "Locate ×2 for each of the two key names, MAC, Decrypt"
    );
}
