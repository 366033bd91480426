//! One proxy, tenants on different real KMSs: one on AWS KMS (LocalStack), one on OpenBao
//! Transit, one whose KMS is down. Needs the servers `scripts/test` starts.
#![cfg(all(feature = "aws", feature = "vault"))]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyhold_kms::conformance::service_env;
use keyhold_proxy::{Proxy, ProxyConfig};
use serde_json::{Value, json};

#[path = "common/localstack.rs"]
mod localstack;

const API_KEY: &str = "remote-kms-test-api-key-0123456789";

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Running {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn call(&self, route: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("http://{}/api/1/{route}", self.addr))
            .header("authorization", format!("cmk {API_KEY}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Starts a proxy on `config_text`, with `files` (name, content) beside the configuration.
async fn start(config_text: &str, files: &[(&str, &str)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let path = dir.path().join("keyhold.toml");
    std::fs::write(&path, config_text).unwrap();
    let config = ProxyConfig::load(&path).unwrap();
    let proxy = Proxy::bind(&config).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    Running { addr, client: reqwest::Client::new(), _stop: stop, _dir: dir }
}

fn meta(tenant: &str) -> Value {
    json!({"tenantId": tenant, "iclFields": {"requestingId": "remote-kms-test"}})
}

#[tokio::test]
async fn tenants_on_aws_and_vault_side_by_side() {
    let (Some(localstack), Some(bao), Some(bao_token)) = (
        service_env("KEYHOLD_TEST_LOCALSTACK_URL"),
        service_env("KEYHOLD_TEST_OPENBAO_ADDR"),
        service_env("KEYHOLD_TEST_OPENBAO_ROOT_TOKEN"),
    ) else {
        return;
    };
    let key_arn = localstack::create_key(&localstack).await;
    let down = closed_port();
    let running = start(
        &format!(
            r#"
        listen = "127.0.0.1:0"
        api_key = "{API_KEY}"
        kms_timeout_ms = 4000
        kms_attempt_timeout_ms = 1000
        kms_retries = 1

        [[tenants]]
        id = "tenant-aws"
        [[tenants.kms_configs]]
        id = 11
        status = "primary"
        type = "aws"
        key_id = "{key_arn}"
        endpoint_url = "{localstack}"
        access_key_id = "test"
        secret_access_key = "test"

        [[tenants]]
        id = "tenant-vault"
        [[tenants.kms_configs]]
        id = 21
        status = "primary"
        type = "vault"
        address = "{bao}"
        key = "keyhold-stable"
        token = {{ file = "bao-token" }}

        [[tenants]]
        id = "tenant-down"
        [[tenants.kms_configs]]
        id = 31
        status = "primary"
        type = "vault"
        address = "http://127.0.0.1:{down}"
        key = "keyhold-stable"
        token = "unused-token"
        "#
        ),
        &[("bao-token", &bao_token)],
    )
    .await;

    // Each tenant wraps and unwraps through its own KMS.
    let mut edeks = Vec::new();
    for tenant in ["tenant-aws", "tenant-vault"] {
        let (status, wrapped) = running.call("document/wrap", meta(tenant)).await;
        assert_eq!(status, 200, "{tenant}: {wrapped}");
        let mut body = meta(tenant);
        body["encryptedDocumentKey"] = wrapped["edek"].clone();
        let (status, unwrapped) = running.call("document/unwrap", body).await;
        assert_eq!(status, 200, "{tenant}: {unwrapped}");
        assert_eq!(unwrapped["dek"], wrapped["dek"], "{tenant}");
        assert_eq!(B64.decode(wrapped["dek"].as_str().unwrap()).unwrap().len(), 32);
        edeks.push(wrapped["edek"].clone());
    }

    // An EDEK of one tenant is refused for the other, whichever way round.
    for (edek, tenant) in [(&edeks[0], "tenant-vault"), (&edeks[1], "tenant-aws")] {
        let mut body = meta(tenant);
        body["encryptedDocumentKey"] = edek.clone();
        let (status, answer) = running.call("document/unwrap", body).await;
        assert!((400..500).contains(&status), "{tenant}: {status} {answer}");
        assert!(answer["code"].is_number(), "{answer}");
    }

    // A batch mixes nothing up: each document of the AWS tenant unwraps to its own key.
    let (status, batch) = running
        .call(
            "document/batch-wrap",
            json!({"tenantId": "tenant-aws", "iclFields": {"requestingId": "t"},
                   "documentIds": ["a", "b", "c"]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["keys"].as_object().unwrap().len(), 3, "{batch}");

    // A tenant whose KMS is down gets "unreachable" (208), and the others keep working.
    let (status, answer) = running.call("document/wrap", meta("tenant-down")).await;
    assert_eq!((status, answer["code"].as_i64()), (503, Some(208)), "{answer}");
    let (status, _) = running.call("document/wrap", meta("tenant-vault")).await;
    assert_eq!(status, 200);
}
