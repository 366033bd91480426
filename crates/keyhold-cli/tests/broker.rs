//! Proxies configured from a Configuration Broker, as separate processes: `keyhold broker` on
//! PostgreSQL and three `keyhold proxy`, with the Vendor Bridge API driving changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_keyhold");

/// A child process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A test server's address from `scripts/test`, or `None` (skip) with KEYHOLD_SKIP_SERVICES=1.
fn service_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("KEYHOLD_SKIP_SERVICES").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: {name} is not set and KEYHOLD_SKIP_SERVICES=1");
            None
        }
        _ => panic!(
            "{name} is not set: run scripts/test (it starts the test servers), or `source \
             scripts/dev-services` first; KEYHOLD_SKIP_SERVICES=1 skips such tests"
        ),
    }
}

/// A data directory made by `keyhold up` (keys, keystore with the demo key, configurations),
/// with its own broker and proxy stopped again.
fn data_dir(root: &Path) -> PathBuf {
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--broker-listen", "127.0.0.1:0"])
        .current_dir(root)
        .env_remove("KEYHOLD_API_KEY")
        .env_remove("KEYHOLD_DATA_DIR")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = root.join(".keyhold");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("broker-snapshot.json").exists() {
        assert!(Instant::now() < deadline, "keyhold up did not finish setting up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_file(dir.join("broker-snapshot.json")).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// The last WARN and ERROR lines of a log, for a failure message (a 500's cause is there).
fn problems_in_log(path: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let problems: Vec<&str> =
        text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    problems[problems.len().saturating_sub(20)..].join("\n")
}

/// Rewrites the lines of a TOML file that start with `prefix` as `line`.
fn replace_line(path: &Path, prefix: &str, line: &str) {
    let text = read(path)
        .lines()
        .map(|l| if l.starts_with(prefix) { line.to_owned() } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(path, text).unwrap();
}

/// Starts `keyhold broker` on `database_url`, listening on `port`.
fn start_broker(dir: &Path, port: u16, database_url: &str) -> Process {
    let config = dir.join("broker.toml");
    replace_line(&config, "listen", &format!("listen = \"127.0.0.1:{port}\""));
    // Everything the broker logs, at the most verbose level, goes to broker.log: tests check
    // that no credential ever appears there.
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).unwrap();
    let child = Command::new(BIN)
        .args(["broker", "--config"])
        .arg(&config)
        .env("DATABASE_URL", database_url)
        .env("KEYHOLD_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let process = Process(child);
    wait_until(Duration::from_secs(30), "the broker never became ready", || {
        get(&format!("http://127.0.0.1:{port}"), "/ready").is_some_and(|(s, _)| s == 200)
    });
    process
}

/// Writes `keyhold-<name>.toml`: the proxy configuration of `keyhold up` with its own spool
/// and snapshot cache, pulling from the broker at `broker_port` every `poll_ms`.
fn proxy_config(dir: &Path, name: &str, broker_port: u16, poll_ms: u64) -> PathBuf {
    let text = read(&dir.join("keyhold.toml"));
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("url = ") {
            format!("url = \"http://127.0.0.1:{broker_port}\"")
        } else if line.starts_with("spool_dir = ") {
            format!("spool_dir = \"audit-{name}\"")
        } else if line.starts_with("poll_interval_ms = ") {
            format!("poll_interval_ms = {poll_ms}\ncache_file = \"snapshot-{name}.json\"")
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    let path = dir.join(format!("keyhold-{name}.toml"));
    std::fs::write(&path, out).unwrap();
    path
}

struct Proxy {
    _process: Process,
    url: String,
}

/// Starts `keyhold proxy`; waits for it to listen (not to be ready: a proxy without any
/// snapshot is deliberately not ready).
fn start_proxy(config: &Path) -> Proxy {
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
    let process = Process(child);
    wait_until(Duration::from_secs(30), "keyhold proxy never listened", || {
        get(&url, "/live").is_some()
    });
    Proxy { _process: process, url }
}

/// A `keyhold up` data directory, a `keyhold broker` on SQLite and one `keyhold proxy`
/// following it, ready.
struct Setup {
    root: tempfile::TempDir,
    dir: PathBuf,
    api_key: String,
    vendor_key: String,
    broker_url: String,
    _broker: Process,
    proxy: Proxy,
}

fn broker_and_proxy(name: &str) -> Setup {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path());
    let broker_port = free_port();
    let database = format!("sqlite://{}?mode=rwc", dir.join("broker.db").display());
    let broker = start_broker(&dir, broker_port, &database);
    let proxy = start_proxy(&proxy_config(&dir, name, broker_port, 1000));
    wait_until(Duration::from_secs(10), "the proxy never became ready", || {
        get(&proxy.url, "/ready").is_some_and(|(s, _)| s == 200)
    });
    Setup {
        api_key: read(&dir.join("api-key")),
        vendor_key: read(&dir.join("vendor-api-key")),
        broker_url: format!("http://127.0.0.1:{broker_port}"),
        root,
        dir,
        _broker: broker,
        proxy,
    }
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} (after {:?})", start.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn get(url: &str, path: &str) -> Option<(u16, String)> {
    runtime().block_on(async {
        let response = reqwest::get(format!("{url}{path}")).await.ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    })
}

/// A Vendor Bridge call; returns the status and the JSON body.
fn vendor(broker: &str, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    runtime().block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{broker}{path}");
        let mut request = match method {
            "GET" => client.get(url),
            _ => client.post(url),
        }
        .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
}

/// A wrap for `tenant`; returns the status and the body.
fn wrap(proxy: &str, api_key: &str, tenant: &str) -> (u16, Value) {
    runtime().block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{proxy}/api/1/document/wrap"))
            .header("Authorization", format!("cmk {api_key}"))
            .json(&json!({"tenantId": tenant, "iclFields": {"requestingId": "broker-test"}}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// A new, empty database on the test PostgreSQL server.
fn new_database(server_url: &str) -> String {
    let name = format!("keyhold_cli_{}", std::process::id());
    let drop_create = Command::new("psql")
        .arg(server_url)
        .args(["-q", "-c", &format!("DROP DATABASE IF EXISTS {name}"), "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .status()
        .expect("psql (PostgreSQL's client) must be installed: scripts/services/postgres.sh does");
    assert!(drop_create.success());
    let (base, _) = server_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

#[test]
fn three_proxy_processes_follow_one_broker_on_postgresql() {
    let Some(pg) = service_env("KEYHOLD_TEST_POSTGRES_URL") else { return };
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path());
    let api_key = read(&dir.join("api-key"));
    let vendor_key = read(&dir.join("vendor-api-key"));
    let database = new_database(&pg);
    let broker_port = free_port();
    let broker_url = format!("http://127.0.0.1:{broker_port}");
    let broker = start_broker(&dir, broker_port, &database);

    // The tenant and its key, created through the Vendor Bridge API before any proxy runs.
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        "/api/v1/tenants",
        Some(json!({"id": "acme", "vendor_key": false})),
    );
    assert_eq!(status, 201, "{body}");
    let poll = Duration::from_millis(1000);
    let proxies: Vec<Proxy> = (1..=3)
        .map(|i| start_proxy(&proxy_config(&dir, &i.to_string(), broker_port, 1000)))
        .collect();
    for proxy in &proxies {
        wait_until(Duration::from_secs(10), "a proxy never became ready", || {
            get(&proxy.url, "/ready").is_some_and(|(s, _)| s == 200)
        });
        // A tenant without a KMS configuration is not served.
        assert_eq!(wrap(&proxy.url, &api_key, "acme").1["code"], 201);
    }

    // A change reaches all three within the poll interval (long poll: usually at once).
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        "/api/v1/tenants/acme/kms-configs",
        Some(json!({"type": "local", "settings": {"key": "demo-tenant"}})),
    );
    assert_eq!(status, 201, "{body}");
    let config_id = body["id"].as_i64().unwrap();
    for proxy in &proxies {
        let took = wait_until(poll + Duration::from_secs(2), "the new KMS configuration", || {
            wrap(&proxy.url, &api_key, "acme").0 == 200
        });
        eprintln!("proxy {} applied the new configuration in {took:?}", proxy.url);
    }
    let (_, metrics) = get(&proxies[0].url, "/metrics").unwrap();
    assert!(metrics.contains("keyhold_config_version"), "{metrics}");

    // Disabling the tenant in the broker cuts it off on every proxy.
    let (status, _) =
        vendor(&broker_url, &vendor_key, "POST", "/api/v1/tenants/acme/disable", None);
    assert_eq!(status, 200);
    for proxy in &proxies {
        wait_until(poll + Duration::from_secs(2), "the tenant's disabling", || {
            wrap(&proxy.url, &api_key, "acme").1["code"] == 201
        });
    }
    let (status, _) = vendor(&broker_url, &vendor_key, "POST", "/api/v1/tenants/acme/enable", None);
    assert_eq!(status, 200);
    for proxy in &proxies {
        wait_until(poll + Duration::from_secs(2), "the tenant's enabling", || {
            wrap(&proxy.url, &api_key, "acme").0 == 200
        });
    }

    // Every change is an admin event in the tenant's audit trail, recorded by one proxy (the
    // holder of the broker's admin-events lease): who did what, when.
    let admin_events = |operation: &str| -> Vec<Value> {
        (1..=3)
            .flat_map(|i| {
                let file = dir.join(format!("audit-{i}/acme.jsonl"));
                std::fs::read_to_string(file)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .filter_map(|record| record.get("event").cloned())
            .filter(|event| event["kind"] == "admin" && event["operation"] == operation)
            .collect()
    };
    wait_until(Duration::from_secs(10), "the admin events were never recorded", || {
        ["tenant.create", "kms_config.add", "tenant.disable", "tenant.enable"]
            .iter()
            .all(|op| !admin_events(op).is_empty())
    });
    let created = admin_events("tenant.create");
    assert_eq!(created.len(), 1, "recorded once, by one proxy: {created:?}");
    assert_eq!(created[0]["requesting_id"], "vendor");
    assert_eq!(created[0]["tenant"], "acme");
    let added = admin_events("kms_config.add");
    assert_eq!(added[0]["kms_config_id"], config_id);
    assert!(added[0]["custom"]["detail"].as_str().unwrap().contains("demo-tenant"));

    // The broker stops: every proxy keeps serving from its last snapshot, and stays ready.
    drop(broker);
    std::thread::sleep(poll * 2);
    for proxy in &proxies {
        let (status, body) = wrap(&proxy.url, &api_key, "acme");
        assert_eq!(status, 200, "{body}");
        assert_eq!(get(&proxy.url, "/ready").unwrap().0, 200);
        let (_, metrics) = get(&proxy.url, "/metrics").unwrap();
        assert!(!metrics.contains("keyhold_broker_poll_failures_total 0\n"), "{metrics}");
    }

    // A proxy restarted while the broker is down starts from its cached snapshot.
    let mut proxies = proxies;
    let restarted = {
        drop(proxies.remove(0));
        start_proxy(&dir.join("keyhold-1.toml"))
    };
    wait_until(Duration::from_secs(10), "the restarted proxy never became ready", || {
        get(&restarted.url, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let (status, wrapped) = wrap(&restarted.url, &api_key, "acme");
    assert_eq!(status, 200, "{wrapped}");
    assert!(!wrapped["edek"].as_str().unwrap().is_empty());
    let _ = config_id;
    drop(restarted);

    // A tampered cached snapshot is refused: the proxy serves no tenant and is not ready.
    let cache = dir.join("snapshot-1.json");
    let mut signed: Value = serde_json::from_str(&read(&cache)).unwrap();
    let payload = signed["payload"].as_str().unwrap();
    let mut bytes = base64_decode(payload);
    let at = bytes.windows(6).position(|w| w == b"\"acme\"").unwrap();
    bytes[at + 1] = b'x';
    signed["payload"] = Value::String(base64_encode(&bytes));
    std::fs::write(&cache, signed.to_string()).unwrap();
    let tampered = start_proxy(&dir.join("keyhold-1.toml"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&tampered.url, "/ready").unwrap().0, 503);
    assert_eq!(wrap(&tampered.url, &api_key, "acme").1["code"], 201);
    assert_eq!(wrap(&tampered.url, &api_key, "xcme").1["code"], 201);
}

#[test]
fn a_proxy_refuses_snapshots_signed_by_a_key_it_does_not_trust() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path());
    let broker_port = free_port();
    let database = format!("sqlite://{}?mode=rwc", dir.join("broker.db").display());
    let _broker = start_broker(&dir, broker_port, &database);
    // The same configuration, but trusting another broker key.
    let config = proxy_config(&dir, "untrusting", broker_port, 500);
    let other = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=";
    replace_line(&config, "public_keys", &format!("public_keys = [\"{other}\"]"));
    let proxy = start_proxy(&config);
    wait_until(Duration::from_secs(10), "the refusal was never counted", || {
        get(&proxy.url, "/metrics").is_some_and(|(_, m)| {
            m.lines().any(|l| {
                l.starts_with("keyhold_broker_snapshots_refused_total ") && !l.ends_with(" 0")
            })
        })
    });
    assert_eq!(get(&proxy.url, "/ready").unwrap().0, 503);
    let api_key = read(&dir.join("api-key"));
    assert_eq!(wrap(&proxy.url, &api_key, "demo-tenant").1["code"], 201);
}

#[test]
fn a_vault_configuration_with_a_sealed_token_wraps_the_tenants_new_keys() {
    let (Some(bao), Some(token)) =
        (service_env("KEYHOLD_TEST_OPENBAO_ADDR"), service_env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN"))
    else {
        return;
    };
    let Setup { root: _root, dir, api_key, vendor_key, broker_url, _broker, proxy } =
        broker_and_proxy("vault");

    // `keyhold seal` fetches the fleet key from the broker and seals the token for this tenant,
    // as the web page does: only the sealed blob goes to the broker.
    let sealed = seal_with_cli(&broker_url, "demo-tenant", &json!({ "token": token }));
    assert!(sealed.starts_with("khs1.") && !sealed.contains(&token), "{sealed}");
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        "/api/v1/tenants/demo-tenant/kms-configs",
        Some(json!({
            "type": "vault",
            "settings": {"address": bao, "key": "keyhold-stable"},
            "sealed": sealed,
            "status": "primary",
        })),
    );
    assert_eq!(status, 201, "{body}");
    let vault_config = body["id"].as_i64().unwrap();

    // The broker never stored the token: not in its database, its log, nor what it answers.
    let db = std::fs::read(dir.join("broker.db")).unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()), "the token is in broker.db");
    let log = std::fs::read_to_string(dir.join("broker.log")).unwrap();
    assert!(log.contains("kms_configs"), "the trace log shows the statements it ran");
    assert!(!log.contains(&token), "the token is in the broker's log");
    let (_, history) =
        vendor(&broker_url, &vendor_key, "GET", "/api/v1/tenants/demo-tenant/history", None);
    assert!(!history.to_string().contains(&token));

    // New keys of the tenant are wrapped by Vault from now on; the EDEK names the config.
    wait_until(Duration::from_secs(5), "new keys never came from the Vault configuration", || {
        let (status, wrapped) = wrap(&proxy.url, &api_key, "demo-tenant");
        status == 200 && edek_config(wrapped["edek"].as_str().unwrap()) == vault_config
    });
}

fn edek_config(edek: &str) -> i64 {
    let edeks = keyhold_core::edek::EncryptedDeks::from_base64(edek).unwrap();
    i64::from(edeks.encrypted_deks[0].kms_config_id)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The browser journey of issue 6: in headless Chromium, a tenant admin accepts an invitation,
/// signs in with password and TOTP, adds an OpenBao configuration (the token sealed in the page)
/// and makes it primary; the proxy then wraps that tenant's new keys with it, as the SDK sees.
/// Needs Debian's Chromium and the e2e harness (`crates/keyhold-broker/ui/e2e/install.sh`),
/// which scripts/test installs. Screenshots go to KEYHOLD_SCREENSHOT_DIR when set (docs/images/
/// holds the ones from such a run).
#[test]
fn a_tenant_admin_configures_openbao_in_the_browser_and_the_proxy_uses_it() {
    let (Some(bao), Some(token)) =
        (service_env("KEYHOLD_TEST_OPENBAO_ADDR"), service_env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN"))
    else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let e2e = repo.join("crates/keyhold-broker/ui/e2e");
    let browser_ready = Path::new("/usr/bin/chromium").exists()
        && e2e.join("node_modules/playwright-core").exists();
    if !browser_ready {
        if std::env::var("KEYHOLD_SKIP_SERVICES").as_deref() == Ok("1") {
            eprintln!("SKIPPED: no Chromium or e2e harness and KEYHOLD_SKIP_SERVICES=1");
            return;
        }
        panic!(
            "this test drives Chromium: `apt-get install -y chromium` and run \
             crates/keyhold-broker/ui/e2e/install.sh (scripts/test does both)"
        );
    }
    let Setup { root, dir, api_key, vendor_key, broker_url, _broker, proxy } =
        broker_and_proxy("browser");

    // The vendor onboards the tenant (with a vendor-held key first) and invites its admin.
    let tenant = "acme-browser";
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        "/api/v1/tenants",
        Some(json!({"id": tenant, "vendor_key": false})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        &format!("/api/v1/tenants/{tenant}/kms-configs"),
        Some(json!({"type": "local", "settings": {"key": "demo-tenant"}})),
    );
    assert_eq!(status, 201, "{body}");
    let local_config = body["id"].as_i64().unwrap();
    let (status, invitation) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        &format!("/api/v1/tenants/{tenant}/invitations"),
        Some(json!({"email": "secadmin@acme.example"})),
    );
    assert_eq!(status, 201, "{invitation}");
    let invite_token = invitation["token"].as_str().unwrap().to_owned();

    let client = keyhold::Client::new(proxy.url.clone(), api_key.clone()).unwrap();
    let meta = keyhold_core::RequestMetadata::new(tenant, "browser-test");
    let encrypt_config = || -> i64 {
        runtime().block_on(async {
            let document = std::collections::BTreeMap::from([("f".to_owned(), b"x".to_vec())]);
            let encrypted = client.encrypt(&document, &meta).await.unwrap();
            edek_config(encrypted.edek.as_str())
        })
    };
    wait_until(Duration::from_secs(5), "the tenant was never served", || {
        runtime().block_on(client.wrap_key(&meta)).is_ok()
    });
    assert_eq!(encrypt_config(), local_config);

    let screenshots = std::env::var("KEYHOLD_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.path().join("screenshots"));
    std::fs::create_dir_all(&screenshots).unwrap();
    let output = Command::new("node")
        .arg(e2e.join("tenant-admin.mjs"))
        .env("BROKER_URL", &broker_url)
        .env("VENDOR_API_KEY", &vendor_key)
        .env("TENANT", tenant)
        .env("INVITE_TOKEN", &invite_token)
        .env("VAULT_ADDR", &bao)
        .env("VAULT_KEY", "keyhold-stable")
        .env("VAULT_TOKEN", &token)
        .env("SCREENSHOT_DIR", &screenshots)
        .env_remove("E2E_STUB_SESSION")
        .output()
        .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser journey failed:\n{stdout}\n{}\nthe broker's warnings and errors:\n{}",
        String::from_utf8_lossy(&output.stderr),
        problems_in_log(&dir.join("broker.log"))
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true, "{result}");
    let vault_config = result["config_id"].as_i64().unwrap();
    assert_ne!(vault_config, local_config);

    // Within the poll interval, the SDK's new documents are under keys from OpenBao.
    let took = wait_until(Duration::from_secs(3), "new keys never came from OpenBao", || {
        encrypt_config() == vault_config
    });
    eprintln!("the proxy used the tenant's new primary configuration after {took:?}");

    // The page sealed the token: the broker stored no credential, and the history names the
    // admin who made the change.
    let db = std::fs::read(dir.join("broker.db")).unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()), "the token is in broker.db");
    let log = std::fs::read_to_string(dir.join("broker.log")).unwrap();
    assert!(!log.is_empty() && !log.contains(&token), "the token is in the broker's log");
    let (_, history) =
        vendor(&broker_url, &vendor_key, "GET", &format!("/api/v1/tenants/{tenant}/history"), None);
    assert!(history.to_string().contains("admin:secadmin@acme.example"), "{history}");
    assert!(!history.to_string().contains(&token));
    for name in
        ["broker-sign-in.png", "broker-tenant.png", "broker-add-kms.png", "broker-vendor.png"]
    {
        assert!(screenshots.join(name).exists(), "no screenshot {name}");
    }
}

#[test]
fn a_siem_the_tenant_configures_in_the_broker_receives_its_events() {
    let (Some(syslog), Some(log)) =
        (service_env("KEYHOLD_TEST_SYSLOG_TCP_ADDR"), service_env("KEYHOLD_TEST_SYSLOG_TCP_LOG"))
    else {
        return;
    };
    let Setup { root: _root, dir: _dir, api_key, vendor_key, broker_url, _broker, proxy } =
        broker_and_proxy("siem");
    let tenant = format!("siem-{}", std::process::id());
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        "/api/v1/tenants",
        Some(json!({"id": tenant, "vendor_key": false})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        &format!("/api/v1/tenants/{tenant}/kms-configs"),
        Some(json!({"type": "local", "settings": {"key": "demo-tenant"}})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        &format!("/api/v1/tenants/{tenant}/siem-configs"),
        Some(json!({"name": "soc", "type": "syslog", "settings": {"address": syslog}})),
    );
    assert_eq!(status, 201, "{body}");
    // A key access of the tenant reaches its SIEM (rsyslog), with the admin events before it.
    wait_until(Duration::from_secs(5), "the tenant was never served", || {
        wrap(&proxy.url, &api_key, &tenant).0 == 200
    });
    wait_until(Duration::from_secs(20), "rsyslog never received the tenant's events", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mine: Vec<&str> = text.lines().filter(|l| l.contains(&tenant)).collect();
        mine.iter().any(|l| l.contains("\"operation\":\"wrap\""))
            && mine.iter().any(|l| l.contains("\"operation\":\"siem_config.add\""))
    });
    // The tenant removes it: delivery stops (the spool keeps the events).
    let (status, _) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        &format!("/api/v1/tenants/{tenant}/siem-configs/soc/disable"),
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn a_broker_restored_from_an_older_state_is_refused_and_the_proxy_keeps_its_tenants() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(root.path());
    let api_key = read(&dir.join("api-key"));
    let vendor_key = read(&dir.join("vendor-api-key"));
    let broker_port = free_port();
    let broker_url = format!("http://127.0.0.1:{broker_port}");
    let current = format!("sqlite://{}?mode=rwc", dir.join("current.db").display());
    let broker = start_broker(&dir, broker_port, &current);
    for body in
        [json!({"id": "acme", "vendor_key": false}), json!({"id": "beta", "vendor_key": false})]
    {
        assert_eq!(vendor(&broker_url, &vendor_key, "POST", "/api/v1/tenants", Some(body)).0, 201);
    }
    let (status, _) = vendor(
        &broker_url,
        &vendor_key,
        "POST",
        "/api/v1/tenants/acme/kms-configs",
        Some(json!({"type": "local", "settings": {"key": "demo-tenant"}})),
    );
    assert_eq!(status, 201);
    let proxy = start_proxy(&proxy_config(&dir, "replay", broker_port, 300));
    wait_until(Duration::from_secs(10), "acme was never served", || {
        wrap(&proxy.url, &api_key, "acme").0 == 200
    });
    // The broker comes back on an older database (a restore from an old backup, or old state
    // replayed with the real key): same signing key, a lower version, no acme.
    drop(broker);
    let old = format!("sqlite://{}?mode=rwc", dir.join("old.db").display());
    let _broker = start_broker(&dir, broker_port, &old);
    let zeta =
        vendor(&broker_url, &vendor_key, "POST", "/api/v1/tenants", Some(json!({"id": "zeta"})));
    assert_eq!(zeta.0, 201);
    wait_until(Duration::from_secs(10), "the older snapshot was never refused", || {
        get(&proxy.url, "/metrics").is_some_and(|(_, m)| {
            m.lines().any(|l| {
                l.starts_with("keyhold_broker_snapshots_refused_total ") && !l.ends_with(" 0")
            })
        })
    });
    // Nothing of it was applied: acme is still served, zeta unknown.
    assert_eq!(wrap(&proxy.url, &api_key, "acme").0, 200);
    assert_eq!(wrap(&proxy.url, &api_key, "zeta").1["code"], 201);
}

/// Seals `secrets` for `tenant` with `keyhold seal --broker` (the fleet key comes from the
/// broker), as a tenant admin would on the command line.
fn seal_with_cli(broker_url: &str, tenant: &str, secrets: &Value) -> String {
    let mut child = Command::new(BIN)
        .args(["seal", "--tenant", tenant, "--broker", broker_url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(secrets.to_string().as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A tenant admin signed in to the broker: invited by the vendor, password and TOTP set, a
/// session cookie and its CSRF token.
struct TenantAdmin {
    broker_url: String,
    cookie: String,
    csrf: String,
}

impl TenantAdmin {
    fn sign_in(broker_url: &str, vendor_key: &str, tenant: &str) -> Self {
        let email = format!("security@{tenant}.example");
        let (status, invitation) = vendor(
            broker_url,
            vendor_key,
            "POST",
            &format!("/api/v1/tenants/{tenant}/invitations"),
            Some(json!({ "email": email })),
        );
        assert_eq!(status, 201, "{invitation}");
        let password = "correct horse battery staple";
        runtime().block_on(async {
            let http = reqwest::Client::new();
            let admin: Value = http
                .post(format!("{broker_url}/api/v1/invitations/accept"))
                .json(&json!({"token": invitation["token"], "password": password}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let secret = admin["totp_secret"].as_str().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let totp = keyhold_broker::credentials::totp_code(secret, now).unwrap();
            let response = http
                .post(format!("{broker_url}/api/v1/session"))
                .json(&json!({"email": email, "password": password, "totp": totp}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let cookie = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.starts_with("keyhold_session="))
                .and_then(|v| v.split(';').next())
                .unwrap()
                .to_owned();
            let session: Value = response.json().await.unwrap();
            Self {
                broker_url: broker_url.to_owned(),
                cookie,
                csrf: session["csrf_token"].as_str().unwrap().to_owned(),
            }
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        runtime().block_on(async {
            let http = reqwest::Client::new();
            let url = format!("{}{path}", self.broker_url);
            let mut request = match method {
                "GET" => http.get(url),
                _ => http.post(url).header("X-CSRF-Token", &self.csrf),
            }
            .header("Cookie", &self.cookie);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }
}

/// Issue 7's hand-over, end to end with real processes: a tenant created through the Vendor
/// Bridge starts on its own vendor-managed key and encrypts 10,000 records; its security admin
/// signs in and makes the tenant's OpenBao primary: new records use the tenant's key at once,
/// old ones still decrypt (the vendor key is now decrypt-only), and the broker shows the vendor
/// key still in use. `keyhold rekey` re-wraps the old EDEKs to OpenBao; the admin disables the
/// vendor key: an old EDEK is refused (KMS_CONFIGURATION_DISABLED) and every record decrypts
/// with its new EDEK. Leasing is on (the `keyhold up` defaults).
#[test]
fn a_tenant_moves_from_its_vendor_key_to_its_own_openbao_and_rekeys_every_record() {
    use std::collections::{BTreeMap, HashMap};

    use keyhold::{Document, EncryptedDocument, RequestMetadata};

    let (Some(bao), Some(token)) =
        (service_env("KEYHOLD_TEST_OPENBAO_ADDR"), service_env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN"))
    else {
        return;
    };
    let Setup { root: _root, dir, api_key, vendor_key, broker_url, _broker, proxy } =
        broker_and_proxy("handover");
    const RECORDS: usize = 10_000;

    // The vendor creates the tenant; `keyhold up`'s broker gives each new tenant its own key.
    let (status, created) =
        vendor(&broker_url, &vendor_key, "POST", "/api/v1/tenants", Some(json!({"id": "acme"})));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["vendor_key"]["type"], "vendor");
    assert_eq!(created["vendor_key"]["managed_by"], "vendor");
    assert_eq!(created["vendor_key"]["status"], "primary");
    let vendor_config = created["vendor_key"]["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(10), "the proxy never served the new tenant", || {
        wrap(&proxy.url, &api_key, "acme").0 == 200
    });

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = keyhold::Client::new(&proxy.url, &api_key).unwrap();
    let meta = RequestMetadata::new("acme", "handover-test");
    let plain: BTreeMap<String, Document> = (0..RECORDS)
        .map(|i| {
            let doc = Document::from([("body".to_owned(), format!("record {i}").into_bytes())]);
            (format!("r{i:05}"), doc)
        })
        .collect();
    let ids: Vec<String> = plain.keys().cloned().collect();
    let encrypt_all = |ids: &[String]| -> BTreeMap<String, EncryptedDocument> {
        let mut out = BTreeMap::new();
        for chunk in ids.chunks(1000) {
            let batch: HashMap<String, Document> =
                chunk.iter().map(|id| (id.clone(), plain[id].clone())).collect();
            let result = rt.block_on(client.encrypt_batch(&batch, &meta)).unwrap();
            assert!(result.failures.is_empty(), "{:?}", result.failures.values().next());
            out.extend(result.successes);
        }
        out
    };
    let decrypt_all = |docs: &BTreeMap<String, EncryptedDocument>| {
        let ids: Vec<&String> = docs.keys().collect();
        for chunk in ids.chunks(1000) {
            let batch: HashMap<String, EncryptedDocument> =
                chunk.iter().map(|id| ((*id).clone(), docs[*id].clone())).collect();
            let result = rt.block_on(client.decrypt_batch(&batch, &meta)).unwrap();
            assert!(result.failures.is_empty(), "{:?}", result.failures.iter().next());
            for (id, doc) in result.successes {
                assert_eq!(doc, plain[&id], "record {id}");
            }
        }
    };
    let old = encrypt_all(&ids);
    assert_eq!(old.len(), RECORDS);
    assert!(old.values().all(|d| edek_config(d.edek.as_str()) == vendor_config));

    // The tenant's security admin takes control: its own OpenBao, the token sealed on its
    // machine, made primary.
    let admin = TenantAdmin::sign_in(&broker_url, &vendor_key, "acme");
    let sealed = seal_with_cli(&broker_url, "acme", &json!({ "token": token }));
    let (status, body) = admin.call(
        "POST",
        "/api/v1/tenants/acme/kms-configs",
        Some(json!({
            "type": "vault",
            "settings": {"address": bao, "key": "keyhold-stable"},
            "sealed": sealed,
            "status": "primary",
        })),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["managed_by"], "tenant");
    let bao_config = body["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(10), "new keys never came from the tenant's OpenBao", || {
        let (status, wrapped) = wrap(&proxy.url, &api_key, "acme");
        status == 200 && edek_config(wrapped["edek"].as_str().unwrap()) == bao_config
    });
    let new = encrypt_all(&ids[..100]);
    assert!(new.values().all(|d| edek_config(d.edek.as_str()) == bao_config));
    decrypt_all(&new);
    // The vendor key is decrypt-only now: every old record still decrypts.
    decrypt_all(&old);

    // Rotation tracking: the proxy reports what the EDEKs it saw name; the broker sums it.
    let usage_of = |config: i64| -> i64 {
        let (status, usage) = admin.call("GET", "/api/v1/tenants/acme/kms-usage", None);
        assert_eq!(status, 200, "{usage}");
        usage["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"].as_i64() == Some(config))
            .map_or(0, |c| c["edeks_seen"].as_i64().unwrap())
    };
    wait_until(Duration::from_secs(20), "the broker never showed the vendor key in use", || {
        usage_of(vendor_config) >= RECORDS as i64
    });

    // `keyhold rekey` re-wraps the old EDEKs (a file of base64 lines) to the primary config.
    let edeks_in = dir.join("old-edeks.txt");
    let edeks_out = dir.join("new-edeks.txt");
    let lines: Vec<&str> = ids.iter().map(|id| old[id].edek.as_str()).collect();
    std::fs::write(&edeks_in, lines.join("\n") + "\n").unwrap();
    let output = Command::new(BIN)
        .args(["rekey", "--tenant", "acme", "--in"])
        .arg(&edeks_in)
        .arg("--out")
        .arg(&edeks_out)
        .args(["--proxy", &proxy.url, "--api-key-file"])
        .arg(dir.join("api-key"))
        .env_remove("KEYHOLD_API_KEY")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rekeyed: Vec<String> = read(&edeks_out).lines().map(str::to_owned).collect();
    assert_eq!(rekeyed.len(), RECORDS);
    assert!(rekeyed.iter().all(|e| edek_config(e) == bao_config));

    // The admin retires the vendor key; the proxy follows within its poll interval.
    let (status, disabled) = admin.call(
        "POST",
        &format!("/api/v1/tenants/acme/kms-configs/{vendor_config}/disable"),
        None,
    );
    assert_eq!((status, disabled["status"].as_str()), (200, Some("disabled")), "{disabled}");
    let first_old = &old[&ids[0]];
    wait_until(
        Duration::from_secs(10),
        "an EDEK of the disabled vendor key still unwrapped",
        || match rt.block_on(client.decrypt(first_old, &meta)) {
            Err(e) => e.code() == keyhold::ErrorCode::KmsConfigurationDisabled,
            Ok(_) => false,
        },
    );
    // Every record decrypts with its new EDEK.
    let moved: BTreeMap<String, EncryptedDocument> = ids
        .iter()
        .zip(&rekeyed)
        .map(|(id, edek)| {
            let mut doc = old[id].clone();
            doc.edek = keyhold::Edek::from(edek.clone());
            (id.clone(), doc)
        })
        .collect();
    decrypt_all(&moved);

    // The history tells the hand-over: who created which key, who made what primary, who
    // retired the vendor key.
    let (_, history) = admin.call("GET", "/api/v1/tenants/acme/history", None);
    let actions: Vec<(String, String)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (c["actor"].as_str().unwrap().to_owned(), c["action"].as_str().unwrap().to_owned())
        })
        .collect();
    let admin_actor = "admin:security@acme.example".to_owned();
    assert_eq!(
        actions,
        vec![
            ("vendor".to_owned(), "tenant.create".to_owned()),
            ("vendor".to_owned(), "vendor_key.create".to_owned()),
            ("vendor".to_owned(), "invitation.create".to_owned()),
            (admin_actor.clone(), "admin.create".to_owned()),
            (admin_actor.clone(), "kms_config.add".to_owned()),
            (admin_actor, "kms_config.disable".to_owned()),
        ]
    );
}
