//! `keyhold proxy` with `[tls]` and client certificates, and `keyhold encrypt`/`decrypt` with
//! `--proxy-ca` and `--client-identity`, as a user runs them; `keyhold broker` with `[tls]` and
//! the commands that call it (`seal`, `secrets`, `e2e`) with `--broker-ca`.
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

/// Runs `keyhold` in `dir` with `stdin` as its standard input.
fn keyhold_with_input(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KEYHOLD_BROKER_CA")
        .env_remove("KEYHOLD_BROKER_URL")
        .env_remove("KEYHOLD_E2E_DEVICE_FILE")
        .env_remove("KEYHOLD_TENANT")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn seal_secrets_and_e2e_reach_a_broker_that_serves_tls_from_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    drop(up(dir.path()));
    let data = dir.path().join(".keyhold");
    let (ca_pem, ca) = new_ca("Keyhold broker CA");
    let (other_pem, _) = new_ca("Another CA");
    let (cert, key) = issue(&ca, "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(data.join("broker.crt"), cert).unwrap();
    std::fs::write(data.join("broker.key"), key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.path().join("other.crt"), other_pem).unwrap();
    // `keyhold up`'s broker.toml on a free port, with [tls] (paths relative to the file).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = data.join("broker.toml");
    let text: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("listen") {
                format!("listen = \"127.0.0.1:{port}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(
        &config,
        format!("{text}\n[tls]\ncert_file = \"broker.crt\"\nkey_file = \"broker.key\"\n"),
    )
    .unwrap();
    let _broker = Killed(
        Command::new(BIN)
            .args(["broker", "--config"])
            .arg(&config)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}");
    let seal = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["seal", "--tenant", "demo-tenant", "--broker", &url];
        args.extend(extra);
        keyhold_with_input(dir.path(), &args, env, r#"{"token": "s3cret"}"#)
    };
    // Retried while the broker starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sealed = loop {
        let out = seal(&["--broker-ca", "ca.crt"], &[]);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(Instant::now() < deadline, "never sealed with the broker's fleet key: {err}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(sealed.starts_with("khs1."), "{sealed}");
    let out = seal(&[], &[("KEYHOLD_BROKER_CA", "ca.crt")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The system's roots, or another CA: refused, saying which broker could not be reached.
    for extra in [&[][..], &["--broker-ca", "other.crt"][..]] {
        let out = seal(extra, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("cannot reach"), "{extra:?}: {err}");
    }
    let out = seal(&["--broker-ca", "missing.crt"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--broker-ca"), "{err}");

    // `keyhold secrets` through the broker: the CA of the proxy's `[broker] ca_cert_file`, or
    // `--broker-ca`, which wins.
    let proxy_config = data.join("keyhold.toml");
    let text = std::fs::read_to_string(&proxy_config).unwrap();
    assert!(text.contains("[broker]\n"));
    std::fs::write(
        &proxy_config,
        text.replace("[broker]\n", "[broker]\nca_cert_file = \"../ca.crt\"\n"),
    )
    .unwrap();
    let list = |extra: &[&str]| {
        let mut args =
            vec!["secrets", "list", "--tenant", "demo-tenant", "--json", "--broker", &url];
        args.extend(extra);
        keyhold_with_input(dir.path(), &args, &[], "")
    };
    let out = list(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim_start().starts_with('['));
    let out = list(&["--broker-ca", "other.crt"]);
    assert!(!out.status.success(), "listed with another CA");

    // `keyhold e2e`: the device file keeps the CA given at enrolment; later commands use it.
    let e2e = |args: &[&str]| {
        let mut all = vec!["e2e"];
        all.extend(args);
        keyhold_with_input(
            dir.path(),
            &all,
            &[("KEYHOLD_BROKER_URL", url.as_str()), ("KEYHOLD_E2E_PASSPHRASE", "alice's")],
            "",
        )
    };
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let alice = ["--device-file", "alice.json"];
    let out = e2e(&[&["enroll", "--user", "alice", "--device", "laptop"][..], &alice].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("could not reach"), "{err}");
    assert!(err.contains("certificate"), "the cause is not said: {err}");
    ok(e2e(&[
        &["enroll", "--user", "alice", "--device", "laptop", "--broker-ca", "ca.crt"][..],
        &alice,
    ]
    .concat()));
    let device_file = || std::fs::read_to_string(dir.path().join("alice.json")).unwrap();
    assert!(device_file().contains("BEGIN CERTIFICATE"), "the CA is not in the device file");
    ok(e2e(&[&["group", "create", "team"][..], &alice].concat()));
    std::fs::write(dir.path().join("plan.txt"), "the plan").unwrap();
    ok(e2e(&[&["encrypt", "--id", "plan", "--in", "plan.txt", "--to", "group:team"][..], &alice]
        .concat()));
    ok(e2e(&[&["decrypt", "--id", "plan", "--out", "plan.out"][..], &alice].concat()));
    assert_eq!(std::fs::read_to_string(dir.path().join("plan.out")).unwrap(), "the plan");
    // Another CA given replaces the file's: refused from then on, until the right one is given.
    let out = e2e(&[&["group", "show", "team", "--broker-ca", "other.crt"][..], &alice].concat());
    assert!(!out.status.success(), "reached the broker trusting another CA");
    let out = e2e(&[&["group", "show", "team"][..], &alice].concat());
    assert!(!out.status.success(), "the other CA was not kept");
    let out = ok(e2e(&[&["group", "show", "team", "--broker-ca", "ca.crt"][..], &alice].concat()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));
    ok(e2e(&[&["group", "show", "team"][..], &alice].concat()));
}
