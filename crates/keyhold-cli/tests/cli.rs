//! The `keyhold` binary: `up`, `encrypt`, `decrypt`, `keys`, `proxy`, as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, up, up_with};

fn keyhold(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(dir).env_remove("KEYHOLD_API_KEY").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn up_then_encrypt_decrypt_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path());
    let url = server.url.as_str();
    for name in ["keyhold.toml", "root.key", "keystore", "api-key"] {
        assert!(dir.path().join(".keyhold").join(name).exists(), "{name} missing");
    }
    std::fs::write(dir.path().join("secret.txt"), b"the tenant's data").unwrap();

    let out = keyhold(
        dir.path(),
        &[
            "encrypt",
            "--proxy",
            url,
            "--tenant",
            "demo-tenant",
            "--in",
            "secret.txt",
            "--out",
            "secret.khf",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = keyhold(
        dir.path(),
        &["decrypt", "--proxy", url, "--in", "secret.khf", "--out", "plain.txt"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.path().join("plain.txt")).unwrap(), b"the tenant's data");

    // The tenant's key is disabled: within one lease renewal interval (2 s in `keyhold up`'s
    // configuration) decryption is refused with the wire code, and no output is written.
    let out = keyhold(dir.path(), &["keys", "disable", "demo-tenant"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let disabled_at = std::time::Instant::now();
    let out = loop {
        let out = keyhold(
            dir.path(),
            &["decrypt", "--proxy", url, "--in", "secret.khf", "--out", "denied.txt"],
        );
        if !out.status.success() || disabled_at.elapsed() > Duration::from_secs(10) {
            break out;
        }
        std::fs::remove_file(dir.path().join("denied.txt")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    };
    // One interval, plus the renewal's own KMS call and a decrypt's run.
    assert!(
        disabled_at.elapsed() < Duration::from_secs(4),
        "refused only after {:?}",
        disabled_at.elapsed()
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("KMS_AUTHORIZATION_FAILED (206)"), "{}", stderr(&out));
    assert!(!dir.path().join("denied.txt").exists());

    let out = keyhold(dir.path(), &["keys", "enable", "demo-tenant"]);
    assert!(out.status.success());
    let out = keyhold(dir.path(), &["keys", "rotate", "demo-tenant"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1,2"), "{out:?}");
    // Service resumes at the next renewal (at most 2 s after the key is enabled).
    std::thread::sleep(Duration::from_millis(2500));
    let out = keyhold(
        dir.path(),
        &[
            "decrypt",
            "--proxy",
            url,
            "--in",
            "secret.khf",
            "--out",
            "again.txt",
            "--tenant",
            "demo-tenant",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Wrong tenant asked for, wrong file, no proxy.
    let out = keyhold(
        dir.path(),
        &["decrypt", "--proxy", url, "--in", "secret.khf", "--out", "x", "--tenant", "other"],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("belongs to tenant"),
        "{}",
        stderr(&out)
    );
    let out = keyhold(dir.path(), &["decrypt", "--proxy", url, "--in", "secret.txt", "--out", "x"]);
    assert!(
        !out.status.success() && stderr(&out).contains("not a Keyhold encrypted file"),
        "{}",
        stderr(&out)
    );
    let out = keyhold(
        dir.path(),
        &[
            "encrypt",
            "--proxy",
            "http://127.0.0.1:9",
            "--tenant",
            "demo-tenant",
            "--in",
            "secret.txt",
            "--out",
            "x",
        ],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("could not reach the proxy"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("x").exists());
}

/// `up --data-dir` puts its state there; `encrypt` and `decrypt` find the proxy and the API key
/// through `KEYHOLD_PROXY_URL` and `KEYHOLD_API_KEY` alone.
#[test]
fn data_dir_flag_and_the_proxy_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let server = up_with(dir.path(), &["--data-dir", "state"]);
    assert!(dir.path().join("state/api-key").exists());
    assert!(!dir.path().join(".keyhold").exists());
    let key = std::fs::read_to_string(dir.path().join("state/api-key")).unwrap();
    std::fs::write(dir.path().join("in.txt"), b"through the environment").unwrap();
    let run = |args: &[&str], key: &str| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env("KEYHOLD_PROXY_URL", &server.url)
            .env("KEYHOLD_API_KEY", key.trim())
            .env_remove("KEYHOLD_DATA_DIR")
            .output()
            .unwrap()
    };
    let out =
        run(&["encrypt", "--tenant", "demo-tenant", "--in", "in.txt", "--out", "in.khf"], &key);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["decrypt", "--in", "in.khf", "--out", "out.txt"], &key);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.path().join("out.txt")).unwrap(), b"through the environment");
    // The key really comes from the variable: a wrong one is refused.
    let out = run(&["decrypt", "--in", "in.khf", "--out", "no.txt"], "wrong-key-0123456789abcdef");
    assert!(!out.status.success());
    assert!(!dir.path().join("no.txt").exists());
}

#[test]
fn a_second_up_reuses_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first_key = {
        let _server = up(dir.path());
        std::fs::read_to_string(dir.path().join(".keyhold/api-key")).unwrap()
    };
    let server = up(dir.path());
    assert_eq!(std::fs::read_to_string(dir.path().join(".keyhold/api-key")).unwrap(), first_key);
    // The API answers with the key made on the first run.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/api/1/document/wrap", server.url))
            .header("authorization", format!("cmk {}", first_key.trim()))
            .body(r#"{"tenantId":"demo-tenant","iclFields":{"requestingId":"t"}}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
}

#[test]
fn proxy_with_a_bad_config_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\napi_key = \"short\"\n").unwrap();
    let out = keyhold(dir.path(), &["proxy", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least 16 bytes"), "{}", stderr(&out));
    let out = keyhold(dir.path(), &["proxy", "--config", "missing.toml"]);
    assert!(!out.status.success() && stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn keys_json_listing() {
    let dir = tempfile::tempdir().unwrap();
    drop(up(dir.path()));
    // Options may come before or after the action.
    for args in [["keys", "--json", "list"], ["keys", "list", "--json"]] {
        let out = keyhold(dir.path(), &args);
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(keys[0]["name"], "demo-tenant");
        assert_eq!(keys[0]["enabled"], true);
    }
    let out = keyhold(dir.path(), &["keys", "create", "bad name"]);
    assert!(!out.status.success() && stderr(&out).contains("invalid key name"));

    // Without a root key file, the root key comes from KEYHOLD_ROOT_KEY; without either, a
    // clear error; a wrong one does not open the keystore.
    let root = dir.path().join(".keyhold/root.key");
    let root_b64 = std::fs::read_to_string(&root).unwrap();
    std::fs::rename(&root, dir.path().join("root.key.moved")).unwrap();
    let keys_with = |value: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["keys", "list", "--json"]).current_dir(dir.path()).env_remove("KEYHOLD_ROOT_KEY");
        if let Some(v) = value {
            cmd.env("KEYHOLD_ROOT_KEY", v);
        }
        cmd.output().unwrap()
    };
    let out = keys_with(Some(root_b64.trim()));
    assert!(out.status.success(), "{}", stderr(&out));
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys[0]["name"], "demo-tenant");
    let out = keys_with(None);
    assert!(!out.status.success() && stderr(&out).contains("KEYHOLD_ROOT_KEY"), "{}", stderr(&out));
    let other = keyhold_core::random::random_array::<32>().unwrap();
    use base64::Engine as _;
    let wrong = base64::engine::general_purpose::STANDARD.encode(other);
    let out = keys_with(Some(&wrong));
    assert!(!out.status.success(), "a wrong root key opened the keystore");
}

/// A `keyhold proxy` child process on `port`, killed on drop.
struct ProxyProcess {
    child: Child,
    url: String,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_proxy(config: &Path) -> ProxyProcess {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(config)
        .env("KEYHOLD_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("KEYHOLD_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_get(&url, "/ready").is_none_or(|(status, _)| status != 200) {
        assert!(std::time::Instant::now() < deadline, "keyhold proxy never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    ProxyProcess { child, url }
}

fn http_get(url: &str, path: &str) -> Option<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let response = reqwest::get(format!("{url}{path}")).await.ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    })
}

#[test]
fn two_proxy_processes_open_each_others_leased_edeks_also_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // `keyhold up` makes the keys and configuration (leasing on); then two proxies share them,
    // as two instances behind a load balancer do, and nothing else.
    drop(up(dir.path()));
    let config = dir.path().join(".keyhold/keyhold.toml");
    std::fs::write(dir.path().join("a.txt"), b"sealed on A").unwrap();
    std::fs::write(dir.path().join("b.txt"), b"sealed on B").unwrap();

    let encrypt = |proxy: &ProxyProcess, name: &str| {
        let out = keyhold(
            dir.path(),
            &[
                "encrypt",
                "--proxy",
                &proxy.url,
                "--tenant",
                "demo-tenant",
                "--in",
                &format!("{name}.txt"),
                "--out",
                &format!("{name}.khf"),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let decrypt = |proxy: &ProxyProcess, name: &str| {
        let out = keyhold(
            dir.path(),
            &["decrypt", "--proxy", &proxy.url, "--in", &format!("{name}.khf"), "--out", "out.txt"],
        );
        assert!(out.status.success(), "{} on {}: {}", name, proxy.url, stderr(&out));
        let plain = std::fs::read(dir.path().join("out.txt")).unwrap();
        assert_eq!(plain, format!("sealed on {}", name.to_uppercase()).into_bytes());
        std::fs::remove_file(dir.path().join("out.txt")).unwrap();
    };
    let lease_unwraps = |proxy: &ProxyProcess| {
        let (_, metrics) = http_get(&proxy.url, "/metrics").unwrap();
        metrics
            .lines()
            .find(|l| l.contains(r#"operation="lease_unwrap""#))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .unwrap_or(0)
    };

    let (a, b) = (start_proxy(&config), start_proxy(&config));
    encrypt(&a, "a");
    encrypt(&b, "b");
    decrypt(&b, "a");
    decrypt(&a, "b");
    // Each opened the other's EDEK by unwrapping the other's lease key through the KMS once.
    assert_eq!((lease_unwraps(&a), lease_unwraps(&b)), (1, 1));

    // Both restart (new processes, cold caches, new leases): old EDEKs open on either.
    drop((a, b));
    let (a, b) = (start_proxy(&config), start_proxy(&config));
    for proxy in [&a, &b] {
        decrypt(proxy, "a");
        decrypt(proxy, "b");
        assert_eq!(lease_unwraps(proxy), 2, "one KMS call per lease");
    }
}

#[test]
fn no_answered_access_is_lost_when_the_proxy_is_killed_and_the_chain_verifies() {
    killed_proxy_loses_no_answered_access(None);
}

/// `durability = "written"` answers once an event is in the spool file, without the disk sync:
/// still nothing answered is lost when the process is killed (the kernel has the data).
#[test]
fn with_written_durability_no_answered_access_is_lost_when_the_proxy_is_killed() {
    killed_proxy_loses_no_answered_access(Some("written"));
}

// The body of two tests (clippy allows indexing only in `#[test]` functions themselves).
#[allow(clippy::indexing_slicing)]
fn killed_proxy_loses_no_answered_access(durability: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    drop(up(dir.path()));
    let config = dir.path().join(".keyhold/keyhold.toml");
    if let Some(durability) = durability {
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("[audit]\n"), "{text}");
        let text =
            text.replacen("[audit]\n", &format!("[audit]\ndurability = \"{durability}\"\n"), 1);
        std::fs::write(&config, text).unwrap();
    }
    let api_key = std::fs::read_to_string(dir.path().join(".keyhold/api-key")).unwrap();
    let api_key = api_key.trim().to_owned();
    let audit_file = dir.path().join(".keyhold/audit/demo-tenant.jsonl");

    // Eight clients wrap keys as fast as they can; the proxy is killed (SIGKILL) under them.
    let traffic = |proxy: &ProxyProcess, prefix: &str, per_client: usize| {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime
            .block_on(async {
                let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let mut clients = tokio::task::JoinSet::new();
                for client in 0..8 {
                    let (url, key, answered) =
                        (proxy.url.clone(), api_key.clone(), answered.clone());
                    let prefix = prefix.to_owned();
                    clients.spawn(async move {
                        let http = reqwest::Client::new();
                        for i in 0..per_client {
                            let id = format!("{prefix}-{client}-{i}");
                            let body = serde_json::json!({"tenantId": "demo-tenant",
                            "iclFields": {"requestingId": "load", "requestId": id}});
                            let Ok(response) = http
                                .post(format!("{url}/api/1/document/wrap"))
                                .header("authorization", format!("cmk {key}"))
                                .json(&body)
                                .send()
                                .await
                            else {
                                return;
                            };
                            if response.status() == 200 && response.bytes().await.is_ok() {
                                answered.lock().unwrap().push(id);
                            }
                        }
                    });
                }
                while clients.join_next().await.is_some() {}
                answered
            })
            .lock()
            .unwrap()
            .clone()
    };
    let mut first = start_proxy(&config);
    let runtime_kill = {
        let pid = first.child.id();
        let audit_file = audit_file.clone();
        let start_len = std::fs::metadata(&audit_file).map(|m| m.len()).unwrap_or(0);
        std::thread::spawn(move || {
            // Once accesses are being recorded (on a loaded machine the first answers may take
            // a while), let traffic run a little longer, then kill.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::fs::metadata(&audit_file).map(|m| m.len()).unwrap_or(0) < start_len + 4096
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(300));
            // SIGKILL: no shutdown, no flush.
            Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        })
    };
    // Far more than fits in 400 ms: requests are in flight when the kill comes.
    let mut answered = traffic(&first, "before", 1_000_000);
    runtime_kill.join().unwrap();
    let _ = first.child.wait();
    assert!(!answered.is_empty(), "no request was answered before the kill");

    let second = start_proxy(&config);
    let before = answered.len();
    answered.extend(traffic(&second, "after", 50));
    println!(
        "{before} accesses answered before the kill, {} after the restart",
        answered.len() - before
    );
    // The demo signs a checkpoint every second.
    std::thread::sleep(Duration::from_millis(1500));
    drop(second);

    let text = std::fs::read_to_string(&audit_file).unwrap();
    let recorded: std::collections::HashSet<String> = text
        .lines()
        // Key accesses carry the request id; lease events (kind `periodic`) have none.
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]["request_id"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let lost: Vec<&String> = answered.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} answered accesses missing from the audit trail: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(answered.iter().any(|id| id.starts_with("after")));

    // The chain survived the kill, and `keyhold audit verify` says so ...
    let out = keyhold(dir.path(), &["audit", "verify", ".keyhold/audit/demo-tenant.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain intact"));
    // ... with the checkpoints signed by the proxy's key, and by no other.
    let pub_file = ".keyhold/audit/audit-signing.pub";
    let out = keyhold(
        dir.path(),
        &["audit", "verify", ".keyhold/audit/demo-tenant.jsonl", "--public-key", pub_file],
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && report.contains("signatures valid"), "{report}");
    let other = "11".repeat(32);
    let out = keyhold(
        dir.path(),
        &["audit", "verify", ".keyhold/audit/demo-tenant.jsonl", "--public-key", &other],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another key"), "{}", stderr(&out));
    // ... and fails at the one event altered or deleted in a copy.
    let lines: Vec<&str> = text.lines().collect();
    let mut altered = lines.clone();
    let changed = altered[5].replacen("\"granted\"", "\"refused\"", 1);
    altered[5] = &changed;
    let mut deleted = lines.clone();
    deleted.remove(7);
    for (name, copy, line) in
        [("altered.jsonl", altered, "line 6"), ("deleted.jsonl", deleted, "line 8")]
    {
        std::fs::write(dir.path().join(name), copy.join("\n")).unwrap();
        let out = keyhold(dir.path(), &["audit", "verify", name]);
        assert!(!out.status.success(), "{name} verified");
        assert!(stderr(&out).contains(line), "{name}: {}", stderr(&out));
    }
}
