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
