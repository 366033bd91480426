//! The broker over HTTPS (`[tls]`): browsers and vendors reach it only with TLS, its session
//! cookie is `Secure`, and a proxy trusting the broker's private CA (`[broker] ca_cert_file`)
//! pulls its signed snapshot, while one trusting anything else does not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{PROXY_TOKEN, TestBroker, databases};
use keyhold_listen::TlsConfig;
use keyhold_proxy::ProxyConfig;
use keyhold_proxy::broker::{BrokerClient, BrokerError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::json;

/// A CA certificate (PEM) and a server certificate and key for 127.0.0.1 that it issued.
fn pki(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    (ca_pem, cert.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
}

/// An HTTP client that trusts only the CA in `ca_pem`.
fn trusting(ca_pem: &str) -> reqwest::Client {
    let roots = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder().tls_certs_only(roots).build().unwrap()
}

/// The proxy's broker client for `broker`, with `ca_line` in its `[broker]` section.
fn proxy_client(
    dir: &Path,
    broker: &TestBroker,
    ca_line: &str,
) -> Result<BrokerClient, BrokerError> {
    let text = format!(
        "api_key = \"0123456789abcdef0123\"\n[broker]\nurl = \"{}\"\ntoken_file = \"token\"\n\
         public_keys = [\"{}\"]\nfleet_key_files = []\n{ca_line}\n",
        broker.base,
        broker.broker_key.to_base64()
    );
    let mut config = ProxyConfig::from_toml(&text).unwrap();
    config.base_dir = dir.to_owned();
    let source = config.broker.clone().unwrap();
    BrokerClient::new(&config, &source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_broker_serves_only_tls_sets_secure_cookies_and_proxies_trusting_its_ca_pull_from_it()
{
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki("Broker CA");
    let (other_ca, _, _) = pki("Another CA");
    for (file, text) in [
        ("broker.crt", cert.as_str()),
        ("broker.key", key.as_str()),
        ("broker-ca.crt", ca.as_str()),
        ("other-ca.crt", other_ca.as_str()),
        ("token", PROXY_TOKEN),
    ] {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let db = databases().await.remove(0);
    let tls = TlsConfig {
        cert_file: dir.path().join("broker.crt"),
        key_file: dir.path().join("broker.key"),
        client_ca_file: None,
        reload_interval_ms: 0,
    };
    // secure_cookies stays false: TLS alone marks the cookie `Secure`.
    let mut b = TestBroker::start_with(&db, |config| config.tls = Some(tls)).await;
    assert!(b.base.starts_with("https://127.0.0.1:"), "{}", b.base);
    b.http = trusting(&ca);

    // The Vendor Bridge API over TLS.
    assert_eq!(b.post("/api/v1/tenants", json!({"id": "acme"})).await.0, 201);
    // Plain HTTP to the port, or TLS trusting another CA: no answer at all.
    let plain = reqwest::get(format!("http://{}/ready", b.addr)).await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let stranger = trusting(&other_ca).get(b.url("/ready")).send().await;
    assert!(stranger.is_err(), "a client trusting another CA was answered: {stranger:?}");

    // A tenant admin signs in over TLS: the session cookie is `Secure`.
    let session =
        b.new_admin_session("acme", "alice@example.com", "correct horse battery staple").await;
    let cookie = session.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("keyhold_session=") && cookie.contains("; Secure"), "{cookie}");

    // A proxy that trusts the broker's CA pulls the signed snapshot, tenant and all.
    let client = proxy_client(dir.path(), &b, "ca_cert_file = \"broker-ca.crt\"").unwrap();
    let (_, snapshot) = client.fetch(None, Duration::ZERO).await.unwrap().expect("a snapshot");
    assert!(snapshot.tenants.iter().any(|t| t.id == "acme"), "{:?}", snapshot.tenants);
    // With the system's roots, or another CA: the handshake fails.
    for ca_line in ["", "ca_cert_file = \"other-ca.crt\""] {
        let err = proxy_client(dir.path(), &b, ca_line)
            .unwrap()
            .fetch(None, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::Unreachable(_)), "{ca_line}: {err:?}");
    }
    // An unusable file stops the proxy's set-up with the reason.
    let err = proxy_client(dir.path(), &b, "ca_cert_file = \"token\"").unwrap_err().to_string();
    assert!(err.contains("ca_cert_file holds no certificate"), "{err}");
    let err =
        proxy_client(dir.path(), &b, "ca_cert_file = \"missing.crt\"").unwrap_err().to_string();
    assert!(err.contains("ca_cert_file") && err.contains("missing.crt"), "{err}");
    b.stop().await;
}

#[tokio::test]
async fn unusable_tls_files_or_connection_limits_stop_the_broker_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello").unwrap();
    let db = databases().await.remove(0);
    let config_with = |tls: Option<TlsConfig>, idle_timeout_ms: u64| {
        let mut config = keyhold_broker::BrokerConfig::new(
            dir.path().join("signing.key"),
            dir.path().join("vendor"),
            dir.path().join("proxy"),
        );
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.database_url = db.url.clone();
        config.tls = tls;
        config.idle_timeout_ms = idle_timeout_ms;
        config
    };
    std::fs::write(dir.path().join("vendor"), common::VENDOR_KEY).unwrap();
    std::fs::write(dir.path().join("proxy"), PROXY_TOKEN).unwrap();
    let tls = TlsConfig {
        cert_file: dir.path().join("not-a-cert.pem"),
        key_file: dir.path().join("not-a-cert.pem"),
        client_ca_file: None,
        reload_interval_ms: 0,
    };
    let err = keyhold_broker::Broker::bind(&config_with(Some(tls), 300_000)).await.unwrap_err();
    assert!(err.to_string().contains("cert_file holds no certificate"), "{err}");
    let err = keyhold_broker::Broker::bind(&config_with(None, 10)).await.unwrap_err();
    assert!(err.to_string().contains("idle_timeout_ms must be between"), "{err}");
    let mut config = config_with(None, 300_000);
    config.request_timeout_ms = 0;
    let err = keyhold_broker::Broker::bind(&config).await.unwrap_err();
    assert!(err.to_string().contains("request_timeout_ms must be between"), "{err}");
}
