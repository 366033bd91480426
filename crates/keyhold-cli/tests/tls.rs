//! `keyhold proxy` with `[tls]` and client certificates, and `keyhold encrypt`/`decrypt` with
//! `--proxy-ca` and `--client-identity`, as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{BIN, up};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A throwaway CA: its certificate in PEM, and what signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// A certificate for `name` and its key, in PEM.
fn issue(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![purpose];
    (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keyhold(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KEYHOLD_API_KEY")
        .env_remove("KEYHOLD_PROXY_CA")
        .env_remove("KEYHOLD_CLIENT_IDENTITY")
        .output()
        .unwrap()
}

#[test]
fn encrypt_and_decrypt_through_a_proxy_that_asks_for_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    drop(up(dir.path()));
    let data = dir.path().join(".keyhold");
    let (ca_pem, ca) = new_ca("Keyhold test CA");
    let (apps_ca_pem, apps_ca) = new_ca("Keyhold apps CA");
    let (cert, key) = issue(&ca, "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    let (app_cert, app_key) = issue(&apps_ca, "app.example", ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(data.join("proxy.crt"), cert).unwrap();
    std::fs::write(data.join("proxy.key"), key).unwrap();
    std::fs::write(data.join("apps-ca.crt"), apps_ca_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.path().join("app.pem"), format!("{app_key}{app_cert}")).unwrap();
    let config = data.join("keyhold.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[tls]\ncert_file = \"proxy.crt\"\nkey_file = \"proxy.key\"\nclient_ca_file = \"apps-ca.crt\"\n",
    );
    std::fs::write(&config, text).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _proxy = Killed(
        Command::new(BIN)
            .args(["proxy", "--config"])
            .arg(&config)
            .env("KEYHOLD_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("KEYHOLD_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}");
    std::fs::write(dir.path().join("plain.txt"), b"over mutual TLS").unwrap();
    let encrypt = |extra: &[&str]| {
        let mut args = vec!["encrypt", "--proxy", &url, "--tenant", "demo-tenant"];
        args.extend(["--in", "plain.txt", "--out", "sealed.khf"]);
        args.extend(extra);
        keyhold(dir.path(), &args)
    };
    let with_certificate = ["--proxy-ca", "ca.crt", "--client-identity", "app.pem"];
    // Retried while the proxy starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = encrypt(&with_certificate);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(Instant::now() < deadline, "never encrypted: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = keyhold(
        dir.path(),
        &["decrypt", "--proxy", &url, "--in", "sealed.khf", "--out", "out.txt"]
            .into_iter()
            .chain(with_certificate)
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.path().join("out.txt")).unwrap(), b"over mutual TLS");

    // Without a client certificate, or without trusting the proxy's CA: refused.
    let out = encrypt(&["--proxy-ca", "ca.crt"]);
    assert!(!out.status.success(), "encrypted without a client certificate");
    let out = encrypt(&["--client-identity", "app.pem"]);
    assert!(!out.status.success(), "encrypted without trusting the proxy's CA");
    // The environment variables work as the flags do.
    let out = Command::new(BIN)
        .args(["encrypt", "--proxy", &url, "--tenant", "demo-tenant"])
        .args(["--in", "plain.txt", "--out", "sealed2.khf"])
        .current_dir(dir.path())
        .env_remove("KEYHOLD_API_KEY")
        .env("KEYHOLD_PROXY_CA", "ca.crt")
        .env("KEYHOLD_CLIENT_IDENTITY", "app.pem")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
