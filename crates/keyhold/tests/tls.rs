//! SDK → proxy over TLS, and over mutual TLS: the proxy's `[tls]` settings, and the client's
//! `proxy_ca_pem` / `client_identity_pem`. Certificates are made here, by a throwaway CA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;

use keyhold::{Client, ClientBuilder, Document, RequestMetadata};
use keyhold_proxy::tls::TlsConfig;
use keyhold_proxy::{Proxy, ProxyConfig, bootstrap};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A certificate authority that lives for one test.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { pem, issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its private key, in PEM.
    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct TlsProxy {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: tokio::task::JoinHandle<Result<(), keyhold_proxy::ProxyError>>,
    addr: SocketAddr,
    api_key: String,
}

impl TlsProxy {
    /// A proxy with tenant `tenant-a`, serving TLS with a certificate of `ca` for 127.0.0.1;
    /// with `client_ca`, clients must present a certificate it issued.
    async fn start(ca: &TestCa, client_ca: Option<&TestCa>) -> Self {
        Self::start_reloading(ca, client_ca, 60_000).await
    }

    /// [`Self::start`], checking the TLS files for a change every `reload_interval_ms`.
    async fn start_reloading(
        ca: &TestCa,
        client_ca: Option<&TestCa>,
        reload_interval_ms: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = bootstrap::init_data_dir(dir.path(), &["tenant-a"], "127.0.0.1:0").unwrap();
        let mut config = ProxyConfig::load(&data.config_path).unwrap();
        let (cert, key) =
            ca.issue(&["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        write(dir.path(), "proxy.crt", &cert);
        write(dir.path(), "proxy.key", &key);
        // Relative paths: resolved against the configuration file's directory.
        config.tls = Some(TlsConfig {
            cert_file: "proxy.crt".into(),
            key_file: "proxy.key".into(),
            client_ca_file: client_ca.map(|c| {
                write(dir.path(), "clients-ca.crt", &c.pem);
                "clients-ca.crt".into()
            }),
            reload_interval_ms,
        });
        let proxy = Proxy::bind(&config).await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        let api_key = std::fs::read_to_string(&data.api_key_path).unwrap().trim().to_owned();
        Self { dir: dir.path().to_owned(), _dir: dir, addr, api_key, stop: Some(stop), running }
    }

    fn builder(&self) -> ClientBuilder {
        ClientBuilder::new(format!("https://{}", self.addr), &self.api_key)
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A counter of the proxy's `/metrics`, read over TLS by a client that trusts `ca`.
async fn counter(proxy: &TlsProxy, ca: &TestCa, name: &str) -> u64 {
    let roots = reqwest::Certificate::from_pem_bundle(ca.pem.as_bytes()).unwrap();
    let http = reqwest::Client::builder().tls_certs_only(roots).build().unwrap();
    let text = http
        .get(format!("https://{}/metrics", proxy.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).expect(name);
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn meta() -> RequestMetadata {
    RequestMetadata::new("tenant-a", "tls-test")
}

async fn round_trip(client: &Client) -> Result<(), keyhold::Error> {
    let document: Document = [("ssn".to_owned(), b"123-45-6789".to_vec())].into_iter().collect();
    let encrypted = client.encrypt(&document, &meta()).await?;
    let decrypted = client.decrypt(&encrypted, &meta()).await?;
    assert_eq!(decrypted, document);
    Ok(())
}

#[tokio::test]
async fn the_sdk_encrypts_and_decrypts_through_a_tls_proxy_it_trusts() {
    let ca = TestCa::new("Keyhold test CA");
    let proxy = TlsProxy::start(&ca, None).await;
    let client = proxy.builder().proxy_ca_pem(ca.pem.as_bytes()).build().unwrap();
    round_trip(&client).await.unwrap();
}

#[tokio::test]
async fn a_tls_proxy_shuts_down_gracefully_and_stops_listening() {
    let ca = TestCa::new("Keyhold test CA");
    let mut proxy = TlsProxy::start(&ca, None).await;
    let client = proxy.builder().proxy_ca_pem(ca.pem.as_bytes()).build().unwrap();
    round_trip(&client).await.unwrap();
    proxy.stop.take().unwrap().send(()).unwrap();
    let running = &mut proxy.running;
    tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("shut down within 10 s")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn clients_that_do_not_trust_the_certificate_or_speak_plain_http_get_nothing() {
    let ca = TestCa::new("Keyhold test CA");
    let proxy = TlsProxy::start(&ca, None).await;
    // The system's roots, or another CA: the proxy's certificate is not trusted.
    let system_roots = proxy.builder().build().unwrap();
    let err = round_trip(&system_roots).await.unwrap_err();
    assert!(matches!(err, keyhold::Error::Unreachable(_)), "{err:?}");
    let other = TestCa::new("Another CA");
    let wrong_ca = proxy.builder().proxy_ca_pem(other.pem.as_bytes()).build().unwrap();
    assert!(round_trip(&wrong_ca).await.is_err());
    // Plain HTTP to the TLS port: the handshake fails and no request is served.
    let plain = ClientBuilder::new(format!("http://{}", proxy.addr), &proxy.api_key);
    assert!(round_trip(&plain.build().unwrap()).await.is_err());
    // Each refused handshake is counted (and logged at DEBUG only).
    let failures = counter(&proxy, &ca, "keyhold_tls_handshake_failures_total").await;
    assert!(failures >= 3, "{failures} handshake failures counted");
    // The listener still serves clients that trust it, even while a connection that never
    // starts its handshake is open (handshakes do not hold up accepting).
    let _silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let trusted = proxy.builder().proxy_ca_pem(ca.pem.as_bytes()).build().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), round_trip(&trusted))
        .await
        .expect("served while a silent connection waits")
        .unwrap();
}

#[tokio::test]
async fn with_a_client_ca_only_clients_holding_its_certificates_get_in() {
    let ca = TestCa::new("Keyhold test CA");
    let clients = TestCa::new("Keyhold clients CA");
    let proxy = TlsProxy::start(&ca, Some(&clients)).await;
    let trusting = || proxy.builder().proxy_ca_pem(ca.pem.as_bytes());

    // The API key alone is not enough.
    let no_certificate = trusting().build().unwrap();
    assert!(round_trip(&no_certificate).await.is_err());
    // A certificate from another CA is refused.
    let stranger = TestCa::new("Not the clients CA");
    let (cert, key) = stranger.issue(&["app.example"], ExtendedKeyUsagePurpose::ClientAuth);
    let wrong_issuer = trusting().client_identity_pem(format!("{key}{cert}")).build().unwrap();
    assert!(round_trip(&wrong_issuer).await.is_err());
    // A certificate of the clients' CA gets in.
    let (cert, key) = clients.issue(&["app.example"], ExtendedKeyUsagePurpose::ClientAuth);
    let admitted = trusting().client_identity_pem(format!("{key}{cert}")).build().unwrap();
    round_trip(&admitted).await.unwrap();
}

#[tokio::test]
async fn unusable_tls_settings_stop_the_start_with_the_reason() {
    let ca = TestCa::new("Keyhold test CA");
    let dir = tempfile::tempdir().unwrap();
    let data = bootstrap::init_data_dir(dir.path(), &["tenant-a"], "127.0.0.1:0").unwrap();
    let mut config = ProxyConfig::load(&data.config_path).unwrap();
    let (cert, key) = ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (_, other_key) = ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    write(dir.path(), "proxy.crt", &cert);
    write(dir.path(), "proxy.key", &key);
    write(dir.path(), "other.key", &other_key);
    write(dir.path(), "empty.pem", "no certificate here\n");
    let cases = [
        ("missing.crt", "proxy.key", None, "cert_file"),
        ("empty.pem", "proxy.key", None, "cert_file holds no certificate"),
        ("proxy.crt", "proxy.crt", None, "key_file is not a PEM private key"),
        ("proxy.crt", "other.key", None, "do not make a usable pair"),
        ("proxy.crt", "proxy.key", Some("empty.pem"), "client_ca_file holds no certificate"),
    ];
    for (cert_file, key_file, client_ca_file, expected) in cases {
        config.tls = Some(TlsConfig {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: client_ca_file.map(Into::into),
            reload_interval_ms: 0,
        });
        let err = Proxy::bind(&config).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{cert_file}/{key_file}: {err}");
        // A key's contents never appear in the message.
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let old_ca = TestCa::new("Keyhold test CA, 2026");
    let proxy = TlsProxy::start_reloading(&old_ca, None, 100).await;
    let trusting = |ca: &TestCa| proxy.builder().proxy_ca_pem(ca.pem.as_bytes()).build().unwrap();
    round_trip(&trusting(&old_ca)).await.unwrap();

    // A renewal caught half-written: the certificate file is not yet usable. The old
    // certificate goes on serving.
    write(&proxy.dir, "proxy.crt", "-----BEGIN CERTIFICATE-----\ntruncated");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    round_trip(&trusting(&old_ca)).await.unwrap();

    // The renewal completes (another CA, to tell the two apart): new connections get it.
    let new_ca = TestCa::new("Keyhold test CA, 2027");
    let (cert, key) = new_ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    write(&proxy.dir, "proxy.key", &key);
    write(&proxy.dir, "proxy.crt", &cert);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while round_trip(&trusting(&new_ca)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(round_trip(&trusting(&old_ca)).await.is_err(), "the old certificate still served");
    assert_eq!(counter(&proxy, &new_ca, "keyhold_tls_reloads_total").await, 1);
    assert!(counter(&proxy, &new_ca, "keyhold_tls_reload_failures_total").await >= 1);
}
