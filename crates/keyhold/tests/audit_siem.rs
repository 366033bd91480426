//! The audit trail of an SDK run reaches real SIEMs — rsyslog over TCP and TLS, and the
//! OpenSearch API — whole, with every field, verifiable, and through a SIEM outage.
//! Needs the servers of scripts/services/siem.sh (scripts/test starts them).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyhold::{Client, RequestMetadata};
use keyhold_audit::export::{ExportFormat, verify_export};
use keyhold_kms::conformance::service_env;
use keyhold_proxy::{Proxy, ProxyConfig, bootstrap};
use serde_json::Value;

#[path = "../../keyhold-proxy/tests/common/relay.rs"]
mod relay;

struct RunningProxy {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    client: Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), keyhold_proxy::ProxyError>>>,
}

impl RunningProxy {
    /// A proxy whose `tenant-a` has the sinks `sinks` (TOML `[[tenants.audit_sinks]]` tables).
    async fn start(sinks: &str) -> Self {
        // The proxy's log (a sink's failures, with their reasons) goes with the test's output,
        // which nextest shows when the test fails.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let data =
            bootstrap::init_data_dir(dir.path(), &["tenant-a", "tenant-b"], "127.0.0.1:0").unwrap();
        let mut text = std::fs::read_to_string(&data.config_path).unwrap();
        assert!(
            text.contains("spool_dir = \"audit\"\n")
                && text.contains("[[tenants]]\nid = \"tenant-b\"")
        );
        // Retries at least every second, so that the tests see recovery soon.
        // No lease renewals during the test (the demo renews every 2 s): their events would
        // keep the streams from ever being fully delivered when the tests look.
        text = text.replacen("renew_interval_ms = 2000\n", "renew_interval_ms = 600000\n", 1);
        text = text.replacen(
            "spool_dir = \"audit\"\n",
            "spool_dir = \"audit\"\nretry_max_ms = 1000\n",
            1,
        );
        text = text.replacen(
            "[[tenants]]\nid = \"tenant-b\"",
            &format!("{sinks}\n[[tenants]]\nid = \"tenant-b\""),
            1,
        );
        std::fs::write(&data.config_path, &text).unwrap();
        let config = ProxyConfig::load(&data.config_path).unwrap();
        let proxy = Proxy::bind(&config).await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(proxy.run(async move {
            let _ = stop.await;
        }));
        let api_key = std::fs::read_to_string(&data.api_key_path).unwrap().trim().to_owned();
        let client = Client::new(format!("http://{addr}"), &api_key).unwrap();
        Self { dir, addr, client, shutdown: Some(shutdown), running: Some(running) }
    }

    /// Shuts the proxy down as SIGTERM does, and waits until it has (its files stay).
    async fn stop(&mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.running.take().unwrap().await.unwrap().unwrap();
    }

    /// The value of the proxy's `keyhold_audit_undelivered_events` gauge for `sink`.
    async fn undelivered(&self, sink: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let label = format!("sink=\"{sink}\"");
        text.lines()
            .find(|l| l.starts_with("keyhold_audit_undelivered_events{") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no undelivered gauge for {sink} in {text}"))
    }

    /// The records of `tenant-a`'s spool, after checking its chain.
    fn spooled(&self) -> Vec<Value> {
        let path = keyhold_audit::spool::tenant_file(&self.dir.path().join("audit"), "tenant-a");
        let text = std::fs::read_to_string(path).unwrap();
        keyhold_audit::verify(text.as_bytes(), false).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The proxy's audit public key (to check checkpoints).
    fn public_key(&self) -> Vec<u8> {
        let text =
            std::fs::read_to_string(self.dir.path().join("audit/audit-signing.pub")).unwrap();
        hex::decode(text.trim()).unwrap()
    }

    fn spooled_ids(&self) -> BTreeSet<String> {
        self.spooled().iter().map(|r| r["event"]["id"].as_str().unwrap().to_owned()).collect()
    }
}

fn metadata(i: usize) -> RequestMetadata {
    RequestMetadata::new("tenant-a", "alice@vendor.example")
        .with_data_label("PII")
        .with_source_ip("203.0.113.7")
        .with_object_id(format!("doc-{i}"))
        .with_request_id(format!("req-{i}"))
        .with_custom_field("org", "sales")
}

/// Encrypts and decrypts one document, and makes one refused decrypt (wrong tenant's EDEK).
async fn sdk_round(client: &Client, i: usize) {
    let document: BTreeMap<String, Vec<u8>> =
        [("ssn".to_owned(), b"123-45-6789".to_vec())].into_iter().collect();
    let encrypted =
        client.encrypt(&document.clone().into_iter().collect(), &metadata(i)).await.unwrap();
    let decrypted = client.decrypt(&encrypted, &metadata(i)).await.unwrap();
    assert_eq!(decrypted.get("ssn").unwrap(), b"123-45-6789");
}

/// The records in a syslog capture whose event ids are in `ids` (other tests share the server).
fn syslog_records(log: &Path, ids: &BTreeSet<String>) -> Vec<String> {
    // Lossily: whatever else reached the server (a probe's stray bytes) must not hide the rest.
    let bytes = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| {
            let Some(start) = line.find("{\"") else { return false };
            serde_json::from_str::<Value>(&line[start..])
                .ok()
                .and_then(|r| r["event"]["id"].as_str().map(|id| ids.contains(id)))
                .unwrap_or(false)
        })
        .map(str::to_owned)
        .collect()
}

async fn opensearch_hits(url: &str, index: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let _ = http.post(format!("{url}/{index}/_refresh")).send().await;
    let Ok(response) = http
        .post(format!("{url}/{index}/_search"))
        .json(&serde_json::json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = response.json().await.unwrap_or_default();
    body.pointer("/hits/hits").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn ids_of_hits(hits: &[Value]) -> BTreeSet<String> {
    hits.iter().filter_map(|h| h["_source"]["event"]["id"].as_str().map(str::to_owned)).collect()
}

fn ids_of_lines(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| {
            let record: Value = serde_json::from_str(&l[l.find("{\"").unwrap()..]).unwrap();
            record["event"]["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Waits until `arrived()` covers `expected`, or fails listing what is missing, what
/// `server_log` (the receiving server's own log, if any) ends with and what the kernel knows of
/// the connections to `port` (a syslog server's, if any).
async fn wait_until_all_arrive<F, Fut>(
    what: &str,
    expected: &BTreeSet<String>,
    within: Duration,
    server: Option<(&Path, u16)>,
    arrived: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BTreeSet<String>>,
{
    if let Err(failure) = all_arrive(what, expected, within, server, arrived).await {
        panic!("{failure}");
    }
}

/// [`wait_until_all_arrive`], giving the failure's message back instead of panicking.
async fn all_arrive<F, Fut>(
    what: &str,
    expected: &BTreeSet<String>,
    within: Duration,
    server: Option<(&Path, u16)>,
    mut arrived: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BTreeSet<String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let got = arrived().await;
        let missing: Vec<&String> = expected.difference(&got).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: {} of {} events missing after {within:?}, e.g. {:?} (the proxy's log \
                 is above: a failed delivery is logged there){}",
                missing.len(),
                expected.len(),
                &missing[..missing.len().min(3)],
                server
                    .map(|(log, port)| format!("{}{}", log_tail(log), sockets_on(port)))
                    .unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The kernel's view of the TCP connections to and from `port` (`ss`): when a syslog server
/// wrote nothing although the sink sent it all, the receive queue on the server's side tells
/// whether the bytes wait unread in its socket or were read and are held inside the server.
fn sockets_on(port: u16) -> String {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    match std::process::Command::new("ss").args(["-tnio", "state", "all", &filter]).output() {
        Ok(out) => format!(
            "\n--- ss -tnio: connections to and from port {port} ---\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("\n(no socket states: cannot run ss: {e})"),
    }
}

/// The port of an `address:port`.
fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap()
}

/// The records of `ids` in a syslog capture, and what verifying them (signatures included) found.
fn verified_capture(
    log: &Path,
    ids: &BTreeSet<String>,
    public_key: Vec<u8>,
) -> (String, keyhold_audit::chain::Verified) {
    let capture = syslog_records(log, ids).join("\n");
    let verified =
        verify_export(capture.as_bytes(), ExportFormat::Syslog, None, false, Some(public_key))
            .unwrap();
    (capture, verified)
}

/// The last lines of a server's log, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("\n--- the end of {} ---\n{tail}", path.display())
}

fn unique_index(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}-{}", nanos, std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_run_reaches_rsyslog_over_tcp_and_tls_and_opensearch_with_every_field() {
    let (Some(tcp), Some(tcp_log), Some(tls), Some(tls_log), Some(ca), Some(opensearch)) = (
        service_env("KEYHOLD_TEST_SYSLOG_TCP_ADDR"),
        service_env("KEYHOLD_TEST_SYSLOG_TCP_LOG"),
        service_env("KEYHOLD_TEST_SYSLOG_TLS_ADDR"),
        service_env("KEYHOLD_TEST_SYSLOG_TLS_LOG"),
        service_env("KEYHOLD_TEST_SYSLOG_TLS_CA"),
        service_env("KEYHOLD_TEST_OPENSEARCH_URL"),
    ) else {
        return;
    };
    let index = unique_index("keyhold-sdk-run");
    let proxy = RunningProxy::start(&format!(
        r#"
[[tenants.audit_sinks]]
name = "siem-tcp"
type = "syslog"
address = "{tcp}"

[[tenants.audit_sinks]]
name = "siem-tls"
type = "syslog"
address = "{tls}"
tls = true
ca_cert_file = "{ca}"
server_name = "localhost"

[[tenants.audit_sinks]]
name = "search"
type = "opensearch"
url = "{opensearch}"
index = "{index}"
"#
    ))
    .await;
    for i in 0..5 {
        sdk_round(&proxy.client, i).await;
    }
    // A refused access is an event too: tenant-b's EDEK presented as tenant-a's.
    let meta_b = RequestMetadata::new("tenant-b", "mallory");
    let document = [("x".to_owned(), b"y".to_vec())].into_iter().collect();
    let foreign = proxy.client.encrypt(&document, &meta_b).await.unwrap();
    // (Asked of the proxy directly: the SDK itself refuses a document of another tenant.)
    proxy.client.unwrap_key(&foreign.edek, &metadata(99)).await.unwrap_err();
    // Let a signed checkpoint follow (every second in this configuration).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let expected = proxy.spooled_ids();
    // 5 wraps, 5 unwraps, 1 refused unwrap, and the first lease's periodic event.
    assert!(expected.len() >= 11, "{}", expected.len());
    let within = Duration::from_secs(30);
    let (tcp_log, tls_log) = (PathBuf::from(tcp_log), PathBuf::from(tls_log));
    // rsyslogd's own messages (scripts/services/siem.sh), next to what it received.
    let rsyslogd_log = tcp_log.with_file_name("rsyslogd.log");
    wait_until_all_arrive(
        "rsyslog TCP",
        &expected,
        within,
        Some((&rsyslogd_log, port_of(&tcp))),
        || async { ids_of_lines(&syslog_records(&tcp_log, &expected)) },
    )
    .await;
    let tls_port = port_of(&tls);
    let tls_arrived =
        all_arrive("rsyslog TLS", &expected, within, Some((&rsyslogd_log, tls_port)), || async {
            ids_of_lines(&syslog_records(&tls_log, &expected))
        })
        .await;
    if let Err(failure) = tls_arrived {
        // Whether the proxy counts them delivered (plain syslog has no acknowledgement: a batch
        // counts once it has stayed on an open connection for a second).
        panic!(
            "{failure}\nthe proxy counts {} events undelivered to siem-tls",
            proxy.undelivered("siem-tls").await
        );
    }
    wait_until_all_arrive("OpenSearch", &expected, within, None, || async {
        ids_of_hits(&opensearch_hits(&opensearch, &index).await)
    })
    .await;

    // Every field of a data event, as received by the SIEM.
    let lines = syslog_records(&tls_log, &expected);
    let received: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(&l[l.find("{\"").unwrap()..]).unwrap()).collect();
    let wrap = received
        .iter()
        .map(|r| &r["event"])
        .find(|e| e["operation"] == "wrap" && e["object_id"] == "doc-3")
        .expect("the wrap of doc-3 reached the SIEM");
    for (field, value) in [
        ("kind", "data"),
        ("tenant", "tenant-a"),
        ("outcome", "granted"),
        ("requesting_id", "alice@vendor.example"),
        ("data_label", "PII"),
        ("source_ip", "203.0.113.7"),
        ("request_id", "req-3"),
    ] {
        assert_eq!(wrap[field], value, "{field} in {wrap}");
    }
    assert_eq!(wrap["custom"]["org"], "sales");
    assert_eq!(wrap["code"], 0);
    assert!(wrap["proxy"].as_str().is_some_and(|p| !p.is_empty()) && wrap["time"].is_string());
    let refused = received
        .iter()
        .map(|r| &r["event"])
        .find(|e| e["outcome"] == "refused")
        .expect("the refusal reached the SIEM");
    assert_eq!(refused["operation"], "unwrap");
    assert_ne!(refused["code"], 0);
    // The syslog header: RFC 5424, facility log audit, notice for the refusal.
    let refusal_line = lines.iter().find(|l| l.contains(refused["id"].as_str().unwrap())).unwrap();
    assert!(refusal_line.starts_with("<109>1 "), "{refusal_line}");

    // What each SIEM stored verifies as the tenant's chain, and any change to it is caught.
    for log in [&tcp_log, &tls_log] {
        let (capture, verified) = verified_capture(log, &expected, proxy.public_key());
        assert_eq!(verified.records as usize, expected.len());
        assert!(verified.checkpoints >= 1 && verified.signatures_checked);
        let altered = capture.replacen("\"data_label\":\"PII\"", "\"data_label\":\"public\"", 1);
        let err =
            verify_export(altered.as_bytes(), ExportFormat::Syslog, None, false, None).unwrap_err();
        assert!(matches!(err.problem, keyhold_audit::chain::Problem::Altered { .. }), "{err}");
    }
    let hits = opensearch_hits(&opensearch, &index).await;
    let export = serde_json::json!({"hits": {"hits": hits}}).to_string();
    let verified = verify_export(
        export.as_bytes(),
        ExportFormat::OpenSearch,
        None,
        false,
        Some(proxy.public_key()),
    )
    .unwrap();
    assert_eq!(verified.records as usize, expected.len());
    assert!(verified.checkpoints >= 1);

    // A proxy shutting down ends its TLS connection with a close_notify (RFC 5425 4.4): rsyslog's
    // GnuTLS driver reports a connection cut short without one, once per connection.
    let cut_short = || {
        let text = String::from_utf8_lossy(&std::fs::read(&rsyslogd_log).unwrap()).into_owned();
        text.matches("The TLS connection was non-properly terminated").count()
    };
    let before = cut_short();
    // Events after the last timed checkpoint, then at once a shutdown.
    sdk_round(&proxy.client, 100).await;
    let mut proxy = proxy;
    proxy.stop().await;
    // Before it stopped, it signed the end of the stream (a checkpoint now, not after a next
    // start that a proxy scaled down for good never has) and delivered it: once stopped it
    // sends nothing more, so what arrives now was sent before.
    let all = proxy.spooled_ids();
    assert!(all.len() > expected.len());
    wait_until_all_arrive(
        "rsyslog TLS at shutdown",
        &all,
        within,
        Some((&rsyslogd_log, tls_port)),
        || async { ids_of_lines(&syslog_records(&tls_log, &all)) },
    )
    .await;
    let (_, verified) = verified_capture(&tls_log, &all, proxy.public_key());
    assert_eq!(verified.records as usize, all.len());
    assert_eq!(verified.last_signed + 1, verified.head.seq, "the stream's end is signed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cut_short(), before, "{}", log_tail(&rsyslogd_log));
}

/// Waits for a TCP port to accept connections.
async fn wait_for_port(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

/// An rsyslog of this test's own, which it can stop and start again.
struct OwnRsyslog {
    start: String,
    port: u16,
    log: PathBuf,
    pid_file: PathBuf,
}

impl OwnRsyslog {
    async fn start(&self) {
        let status = std::process::Command::new(&self.start)
            .arg(self.port.to_string())
            .arg(&self.log)
            .arg(&self.pid_file)
            .status()
            .unwrap();
        assert!(status.success(), "{} failed", self.start);
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], self.port))).await;
    }

    fn stop(&self) {
        let pid = std::fs::read_to_string(&self.pid_file).unwrap();
        let status = std::process::Command::new("kill").arg(pid.trim()).status().unwrap();
        assert!(status.success());
        // rsyslog removes its pid file when it has stopped.
        for _ in 0..200 {
            if !self.pid_file.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rsyslog did not stop");
    }
}

impl Drop for OwnRsyslog {
    fn drop(&mut self) {
        // A failed test must not leave its rsyslog running.
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siems_stopped_for_30_seconds_while_traffic_continues_miss_nothing() {
    let (Some(start), Some(opensearch)) =
        (service_env("KEYHOLD_TEST_SYSLOG_START"), service_env("KEYHOLD_TEST_OPENSEARCH_URL"))
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let rsyslog = OwnRsyslog {
        start,
        port,
        log: work.path().join("syslog.log"),
        pid_file: work.path().join("rsyslog.pid"),
    };
    rsyslog.start().await;
    // OpenSearch behind a relay: cutting it makes the index unreachable without losing what
    // it already holds (the test server keeps its data in memory).
    let upstream: SocketAddr =
        opensearch.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let mut search = relay::Relay::start(upstream).await;
    let index = unique_index("keyhold-outage");
    let proxy = RunningProxy::start(&format!(
        r#"
[[tenants.audit_sinks]]
name = "siem"
type = "syslog"
address = "127.0.0.1:{port}"

[[tenants.audit_sinks]]
name = "search"
type = "opensearch"
url = "http://{}"
index = "{index}"
"#,
        search.addr
    ))
    .await;

    // Traffic all along: 10 rounds a second, for about 40 s.
    let client = proxy.client.clone();
    let traffic = tokio::spawn(async move {
        let mut rounds = 0;
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(40) {
            sdk_round(&client, rounds).await;
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rounds
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    rsyslog.stop();
    search.cut().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Meanwhile the events wait in the spool (and requests were answered all along).
    assert!(proxy.undelivered("siem").await > 100);
    assert!(proxy.undelivered("search").await > 100);
    rsyslog.start().await;
    search.restore().await;
    let rounds = traffic.await.unwrap();
    assert!(rounds > 100, "{rounds} rounds");

    let expected = proxy.spooled_ids();
    assert!(expected.len() > 2 * rounds);
    let within = Duration::from_secs(30);
    // Its own messages: start-rsyslog.sh keeps them beside the pid file.
    let rsyslogd_log = rsyslog.pid_file.with_extension("pid.d").join("rsyslogd.log");
    wait_until_all_arrive(
        "rsyslog after its restart",
        &expected,
        within,
        Some((&rsyslogd_log, rsyslog.port)),
        || async { ids_of_lines(&syslog_records(&rsyslog.log, &expected)) },
    )
    .await;
    wait_until_all_arrive("OpenSearch after the outage", &expected, within, None, || async {
        ids_of_hits(&opensearch_hits(&opensearch, &index).await)
    })
    .await;
    // What rsyslog stored is the tenant's whole chain (events sent again after the restart
    // are exact repeats).
    let capture = syslog_records(&rsyslog.log, &expected).join("\n");
    let verified = verify_export(
        capture.as_bytes(),
        ExportFormat::Syslog,
        None,
        false,
        Some(proxy.public_key()),
    )
    .unwrap();
    assert_eq!(verified.records as usize, expected.len());
    assert!(verified.checkpoints > 10, "{verified:?}");
    // And the proxy knows it (syslog counts a batch delivered once it has settled).
    let mut settled = false;
    for _ in 0..100 {
        if proxy.undelivered("siem").await == 0 && proxy.undelivered("search").await == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rsyslog.stop();
    assert!(settled, "the proxy still counts undelivered events");
}
