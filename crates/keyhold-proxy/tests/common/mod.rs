//! A proxy over a temporary data directory with two tenants on local keys.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use keyhold_kms::local::{Keystore, load_root_key};
use keyhold_proxy::{AppState, ProxyConfig, api, bootstrap};
use serde_json::{Value, json};

pub struct TestProxy {
    pub dir: tempfile::TempDir,
    pub config: ProxyConfig,
    pub state: AppState,
    pub router: api::App,
    pub api_key: String,
}

impl TestProxy {
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// `edit` may change the generated configuration text before it is loaded.
    pub fn with_config(edit: impl FnOnce(&mut String)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data =
            bootstrap::init_data_dir(dir.path(), &["tenant-a", "tenant-b"], "127.0.0.1:0").unwrap();
        let mut text = std::fs::read_to_string(&data.config_path).unwrap();
        edit(&mut text);
        std::fs::write(&data.config_path, &text).unwrap();
        let config = ProxyConfig::load(&data.config_path).unwrap();
        Self::from_loaded_owned(dir, config)
    }

    fn from_loaded_owned(dir: tempfile::TempDir, config: ProxyConfig) -> Self {
        let state = futures::executor::block_on(AppState::from_config(&config)).unwrap();
        state.health.set_ready(true);
        let router = api::app(state.clone(), true);
        let api_key =
            std::fs::read_to_string(dir.path().join("api-key")).unwrap().trim().to_owned();
        Self { dir, config, state, router, api_key }
    }

    /// A second proxy over the data directory `dir` (which another `TestProxy` owns), with
    /// `config`: a second process on the same keys.
    pub fn from_loaded(dir: &Path, config: ProxyConfig) -> Self {
        // The copy keeps its own temporary directory alive; keys and configuration are shared.
        let own = tempfile::tempdir().unwrap();
        for name in ["keystore", "root.key", "api-key", "keyhold.toml"] {
            std::fs::copy(dir.join(name), own.path().join(name)).unwrap();
        }
        let mut config = config;
        config.base_dir = own.path().to_owned();
        Self::from_loaded_owned(own, config)
    }

    /// A proxy whose tenants do not lease keys: every key goes to the KMS.
    pub fn unleased() -> Self {
        Self::with_config(|t| {
            assert!(t.contains("[leasing]\n"));
            *t = t.replacen("[leasing]\n", "[leasing]\nenabled = false\n", 1);
        })
    }

    pub fn keystore(&self) -> Arc<Keystore> {
        Arc::clone(self.state.service.registry().keystore().unwrap())
    }

    /// A second handle on the keystore file, as another process (`keyhold keys`) would have.
    pub fn keystore_from_disk(&self) -> Keystore {
        let root = load_root_key(Some(&self.dir.path().join("root.key"))).unwrap();
        Keystore::open(self.dir.path().join("keystore"), root).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn post_raw(
        &self,
        route: &str,
        auth: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let mut request = Request::post(route).header("content-type", "application/json");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response =
            tower::ServiceExt::oneshot(self.router.clone(), request.body(body.into()).unwrap())
                .await
                .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}))
        };
        (status, value)
    }

    /// Posts with the API key and returns the status, the content type and the raw body.
    pub async fn post_text(&self, route: &str, body: &str) -> (StatusCode, String, String) {
        let request = Request::post(route)
            .header("content-type", "application/json")
            .header("authorization", format!("cmk {}", self.api_key))
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = tower::ServiceExt::oneshot(self.router.clone(), request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn post(&self, route: &str, body: Value) -> (StatusCode, Value) {
        let auth = format!("cmk {}", self.api_key);
        self.post_raw(route, Some(&auth), body.to_string()).await
    }

    /// Any method, with `auth` as the `Authorization` header (if any); the body parsed as JSON.
    pub async fn request(
        &self,
        method: &str,
        route: &str,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(route);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response =
            tower::ServiceExt::oneshot(self.router.clone(), request.body(Body::empty()).unwrap())
                .await
                .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, route: &str) -> (StatusCode, String) {
        let response = tower::ServiceExt::oneshot(
            self.router.clone(),
            Request::get(route).body(Body::empty()).unwrap(),
        )
        .await
        .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn wrap(&self, tenant: &str) -> Value {
        let (status, body) = self.post("/api/1/document/wrap", meta(tenant)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn unwrap(&self, tenant: &str, edek: &str) -> (StatusCode, Value) {
        let mut body = meta(tenant);
        body["encryptedDocumentKey"] = json!(edek);
        self.post("/api/1/document/unwrap", body).await
    }
}

pub fn meta(tenant: &str) -> Value {
    json!({"tenantId": tenant, "iclFields": {"requestingId": "test-user", "dataLabel": "PII"}, "customFields": {"k": "v"}})
}

pub fn code(body: &Value) -> i64 {
    body["code"].as_i64().unwrap_or_else(|| panic!("no code in {body}"))
}
