//! The proxy's broker client over HTTPS: `[broker] ca_cert_file` makes it trust a broker whose
//! certificate a private CA issued, and only that CA. The "broker" here answers the snapshot
//! poll with 304 (nothing new), over the proxy's own TLS listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyhold_proxy::ProxyConfig;
use keyhold_proxy::broker::BrokerClient;
use keyhold_proxy::tls::{TlsConfig, TlsCounters, TlsListener};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

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

#[tokio::test]
async fn the_broker_client_trusts_the_ca_it_is_given_and_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki("Broker CA");
    let (other_ca, _, _) = pki("Another CA");
    std::fs::write(dir.path().join("broker.crt"), cert).unwrap();
    std::fs::write(dir.path().join("broker.key"), key).unwrap();
    std::fs::write(dir.path().join("broker-ca.crt"), ca).unwrap();
    std::fs::write(dir.path().join("other-ca.crt"), other_ca).unwrap();
    std::fs::write(dir.path().join("token"), "0123456789abcdef-proxy-token").unwrap();

    // The "broker": counts the polls that reach it and answers "nothing new".
    let polls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&polls);
    let app = axum::Router::new().route(
        "/api/proxy/v1/snapshot",
        axum::routing::get(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async { http::StatusCode::NOT_MODIFIED }
        }),
    );
    let settings = TlsConfig {
        cert_file: dir.path().join("broker.crt"),
        key_file: dir.path().join("broker.key"),
        client_ca_file: None,
        reload_interval_ms: 0,
    };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(
        tcp,
        settings.clone(),
        settings.server_config().unwrap(),
        TlsCounters::default(),
    )
    .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let signing = keyhold_core::snapshot::SnapshotSigningKey::generate().unwrap();
    let client = |ca_line: &str| {
        let text = format!(
            "api_key = \"0123456789abcdef0123\"\n[broker]\nurl = \"https://{addr}\"\n\
             token_file = \"token\"\npublic_keys = [\"{}\"]\nfleet_key_files = []\n{ca_line}\n",
            signing.public_key().to_base64()
        );
        let mut config = ProxyConfig::from_toml(&text).unwrap();
        config.base_dir = dir.path().to_owned();
        let source = config.broker.clone().unwrap();
        BrokerClient::new(&config, &source)
    };

    let trusting = client("ca_cert_file = \"broker-ca.crt\"").unwrap();
    assert!(trusting.fetch(None, Duration::ZERO).await.unwrap().is_none());
    assert_eq!(polls.load(Ordering::SeqCst), 1);

    // The system's roots, or another CA: the handshake fails and no poll reaches the broker.
    for ca_line in ["", "ca_cert_file = \"other-ca.crt\""] {
        let err = client(ca_line).unwrap().fetch(None, Duration::ZERO).await.unwrap_err();
        assert!(matches!(err, keyhold_proxy::broker::BrokerError::Unreachable(_)), "{err:?}");
    }
    assert_eq!(polls.load(Ordering::SeqCst), 1);

    // An unusable file stops the set-up with the reason.
    let err = client("ca_cert_file = \"token\"").unwrap_err().to_string();
    assert!(err.contains("ca_cert_file holds no certificate"), "{err}");
    let err = client("ca_cert_file = \"missing.crt\"").unwrap_err().to_string();
    assert!(err.contains("ca_cert_file") && err.contains("missing.crt"), "{err}");
}
