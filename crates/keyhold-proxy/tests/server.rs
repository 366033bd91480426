//! The proxy on a real socket: binding, serving, graceful shutdown, the admin listener.

mod common;

use std::time::Duration;

use keyhold_proxy::{Proxy, ProxyConfig, bootstrap};

#[tokio::test]
async fn serves_on_an_ephemeral_port_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let data = bootstrap::init_data_dir(dir.path(), &["demo-tenant"], "127.0.0.1:0").unwrap();
    let mut config = ProxyConfig::load(&data.config_path).unwrap();
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    // No timed checkpoint during the test: the stream's end is signed by the shutdown alone.
    config.audit.as_mut().unwrap().checkpoint_interval_ms = 3_600_000;
    let proxy = Proxy::bind(&config).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let admin = proxy.admin_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));

    let client = reqwest::Client::new();
    let api_key = std::fs::read_to_string(&data.api_key_path).unwrap();
    let wrap = client
        .post(format!("http://{addr}/api/1/document/wrap"))
        .header("authorization", format!("cmk {}", api_key.trim()))
        .header("x-icl-tsc-language", "rust")
        .body(r#"{"tenantId":"demo-tenant","iclFields":{"requestingId":"me"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(wrap.status(), 200);
    let body: serde_json::Value = wrap.json().await.unwrap();
    assert!(body["dek"].is_string() && body["edek"].is_string());

    // With an admin listener, metrics move there and health stays on both: on the API
    // listener `/metrics` is an unknown path, refused without a key and not found with one.
    let metrics_here = client.get(format!("http://{addr}/metrics"));
    assert_eq!(metrics_here.try_clone().unwrap().send().await.unwrap().status(), 401);
    let with_key = metrics_here.header("authorization", format!("cmk {}", api_key.trim()));
    assert_eq!(with_key.send().await.unwrap().status(), 404);
    assert_eq!(client.get(format!("http://{addr}/health")).send().await.unwrap().status(), 200);
    let metrics =
        client.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"keyhold_client_requests_total{language="rust",version="unknown"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("keyhold_ready 1"));

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    assert!(
        client.get(format!("http://{addr}/health")).send().await.is_err(),
        "still listening after shutdown"
    );
    // The tenant's audit stream ends in a checkpoint written at shutdown, signing its last
    // access (not left for a next start, which a proxy scaled down for good never has).
    let spooled = keyhold_audit::spool::tenant_file(&dir.path().join("audit"), "demo-tenant");
    let text = std::fs::read_to_string(spooled).unwrap();
    let verified = keyhold_audit::verify(text.as_bytes(), false).unwrap();
    assert_eq!(verified.checkpoints, 1, "{text}");
    assert_eq!(verified.last_signed + 1, verified.head.seq, "{text}");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"]["operation"], "checkpoint");
}

#[tokio::test]
async fn keystore_changes_from_another_process_reach_a_running_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let data = bootstrap::init_data_dir(dir.path(), &["demo-tenant"], "127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&data.config_path).unwrap().replace(
        "root_key_file = \"root.key\"",
        "root_key_file = \"root.key\"\nreload_interval_ms = 100",
    );
    std::fs::write(&data.config_path, text).unwrap();
    let config = ProxyConfig::load(&data.config_path).unwrap();
    let proxy = Proxy::bind(&config).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let auth = format!("cmk {}", std::fs::read_to_string(&data.api_key_path).unwrap().trim());
    let wrap = || {
        client
            .post(format!("http://{addr}/api/1/document/wrap"))
            .header("authorization", &auth)
            .body(r#"{"tenantId":"demo-tenant","iclFields":{"requestingId":"me"}}"#)
            .send()
    };
    assert_eq!(wrap().await.unwrap().status(), 200);

    // What `keyhold keys disable` does, from a separate handle on the same file.
    let root = keyhold_kms::local::load_root_key(Some(&dir.path().join("root.key"))).unwrap();
    let other = keyhold_kms::local::Keystore::open(dir.path().join("keystore"), root).unwrap();
    other.set_enabled("demo-tenant", false).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = wrap().await.unwrap();
        if response.status() == 403 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["code"], 206);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the disabled key was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A client sending its request a byte at a time ("slowloris") keeps its connection from ever
/// being idle; `request_timeout_ms` closes it, while a kept-alive client that pauses between
/// quick requests, longer than that, keeps its connection.
#[tokio::test]
async fn a_request_sent_too_slowly_loses_its_connection_and_a_paused_client_does_not() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dir = tempfile::tempdir().unwrap();
    let data = bootstrap::init_data_dir(dir.path(), &["demo-tenant"], "127.0.0.1:0").unwrap();
    let mut config = ProxyConfig::load(&data.config_path).unwrap();
    config.request_timeout_ms = 1_000;
    config.idle_timeout_ms = 60_000;
    let proxy = Proxy::bind(&config).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));

    let health = b"GET /health HTTP/1.1\r\nHost: proxy\r\n\r\n";
    let mut paused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed_after = None;
    let mut answers = 0;
    // A byte every 100 ms to the slow connection; a whole request every 500 ms on the other.
    for (i, byte) in health.iter().cycle().take(60).enumerate() {
        if slow.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
        if i % 5 == 0 {
            paused.write_all(health).await.unwrap();
            let mut answer = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), paused.read(&mut answer))
                .await
                .expect("no answer on the paused connection")
                .unwrap();
            assert!(
                answer[..n].starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&answer[..n])
            );
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = closed_after.expect("a request dribbled for 6 s kept its connection");
    assert!(
        closed_after >= Duration::from_secs(1),
        "closed before request_timeout_ms: {closed_after:?}"
    );
    assert!(answers >= 2, "the paused client was answered only {answers} times");
    // A pause longer than request_timeout_ms between requests is not a slow request.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    paused.write_all(health).await.unwrap();
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), paused.read(&mut answer))
        .await
        .expect("no answer after the pause")
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "closed after a pause: {n} bytes");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}
