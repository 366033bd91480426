//! Deterministic field encryption through `keyhold up` (proxy + broker): `keyhold field` and
//! `keyhold secrets` (rotation through the broker's Vendor Bridge API), and the tenant's audit
//! trail; and `keyhold secrets` on a proxy without a broker (issue 10).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::BIN;
use keyhold_proxy::secrets::SecretStore as _;

fn keyhold(dir: &Path, args: &[&str]) -> Output {
    keyhold_env(dir, args, &[])
}

fn keyhold_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KEYHOLD_API_KEY")
        .env_remove("KEYHOLD_DATA_DIR")
        .env_remove("KEYHOLD_VENDOR_API_KEY")
        .env_remove("KEYHOLD_BROKER_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// `keyhold field ACTION ARG` for demo-tenant, secret path `users`, derivation path `path`.
fn field(dir: &Path, proxy: &str, action: &str, arg: &str, path: &str) -> Output {
    keyhold(
        dir,
        &[
            "field",
            action,
            arg,
            "--tenant",
            "demo-tenant",
            "--secret-path",
            "users",
            "--derivation-path",
            path,
            "--proxy",
            proxy,
        ],
    )
}

#[test]
fn encrypt_search_and_rotate_through_keyhold_up() {
    let dir = tempfile::tempdir().unwrap();
    let up = common::up(dir.path());
    let (d, p) = (dir.path(), up.url.as_str());
    let broker = [("KEYHOLD_BROKER_URL", up.broker.as_str())];

    let a = ok(field(d, p, "encrypt", "alice@example.com", "email")).trim().to_owned();
    assert_eq!(ok(field(d, p, "encrypt", "alice@example.com", "email")).trim(), a, "deterministic");
    assert_ne!(ok(field(d, p, "encrypt", "alice@example.com", "phone")).trim(), a);
    assert_ne!(ok(field(d, p, "encrypt", "bob@example.com", "email")).trim(), a);
    assert_eq!(ok(field(d, p, "decrypt", &a, "email")).trim(), "alice@example.com");
    // The field does not decrypt under another derivation path: a clear code.
    let wrong = field(d, p, "decrypt", &a, "phone");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("904"), "{wrong:?}");

    // The secret is in the broker, wrapped; the vendor sees it without key material.
    let listed =
        ok(keyhold_env(d, &["secrets", "--json", "list", "--tenant", "demo-tenant"], &broker));
    let secrets: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(secrets.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        (secrets[0]["secret_path"].as_str(), secrets[0]["rotated"].as_bool()),
        (Some("users"), Some(false))
    );
    let old_id = secrets[0]["id"].as_u64().unwrap();

    let rotated = ok(keyhold_env(
        d,
        &["secrets", "--json", "rotate", "--tenant", "demo-tenant", "--secret-path", "users"],
        &broker,
    ));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&rotated).unwrap()["rotated"], 1);

    // The proxy sees the rotation with the broker's next snapshot: new fields change.
    let deadline = Instant::now() + Duration::from_secs(30);
    let b = loop {
        let now = ok(field(d, p, "encrypt", "alice@example.com", "email")).trim().to_owned();
        if now != a {
            break now;
        }
        assert!(Instant::now() < deadline, "the rotation did not reach the proxy in 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ok(field(d, p, "encrypt", "alice@example.com", "email")).trim(), b);
    // Old fields still decrypt; search terms find old and new; rotate moves old to new.
    assert_eq!(ok(field(d, p, "decrypt", &a, "email")).trim(), "alice@example.com");
    let terms: Vec<String> = ok(field(d, p, "search", "alice@example.com", "email"))
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(terms, [b.clone(), a.clone()], "current first, then the rotated secret");
    assert_eq!(ok(field(d, p, "rotate", &a, "email")).trim(), b);
    assert_eq!(ok(field(d, p, "rotate", &b, "email")).trim(), b, "already current: unchanged");

    let listed =
        ok(keyhold_env(d, &["secrets", "--json", "list", "--tenant", "demo-tenant"], &broker));
    let secrets: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let states: Vec<(u64, bool)> = secrets
        .iter()
        .map(|s| (s["id"].as_u64().unwrap(), s["rotated"].as_bool().unwrap()))
        .collect();
    assert_eq!(states.len(), 2, "{listed}");
    assert!(states.contains(&(old_id, true)) && states.iter().any(|(id, r)| *id != old_id && !r));

    // The tenant's audit trail: derivations, the secrets made, the rotation (via the broker).
    let audit = d.join(".keyhold/audit/demo-tenant.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let wanted = ["\"derive\"", "\"tenant_secret_create\"", "\"tenant_secret.rotate\""];
        let missing: Vec<_> = wanted.iter().filter(|w| !text.contains(*w)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not in the audit trail after 30 s: {missing:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let verify = keyhold(d, &["audit", "verify", ".keyhold/audit/demo-tenant.jsonl"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    // Nothing of the secret or the derived keys in the broker's database or the trail.
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("derivedKey"));
}

#[test]
fn secrets_in_the_proxys_file_without_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data =
        keyhold_proxy::bootstrap::init_data_dir(dir.path(), &["tenant-a"], "127.0.0.1:0").unwrap();
    let store =
        keyhold_proxy::secrets::FileSecretStore::new(dir.path().join("tenant-secrets.json"));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(store.create("tenant-a", "users", 1, b"wrapped")).unwrap();
    rt.block_on(store.create("tenant-a", "orders", 1, b"wrapped")).unwrap();
    let config = data.config_path.to_str().unwrap();
    let listed =
        ok(keyhold(dir.path(), &["secrets", "--config", config, "list", "--tenant", "tenant-a"]));
    assert!(
        listed.contains("users") && listed.contains("orders") && listed.contains("in use"),
        "{listed}"
    );
    let rotated =
        ok(keyhold(dir.path(), &["secrets", "--config", config, "rotate", "--tenant", "tenant-a"]));
    assert!(rotated.contains("rotated 2"), "{rotated}");
    let all = store.all().unwrap();
    assert!(all.iter().all(|s| s.rotated));
    // An unreadable file is an error, never an empty list.
    std::fs::write(dir.path().join("tenant-secrets.json"), b"garbage").unwrap();
    let broken =
        keyhold(dir.path(), &["secrets", "--config", config, "list", "--tenant", "tenant-a"]);
    assert!(!broken.status.success());
}
