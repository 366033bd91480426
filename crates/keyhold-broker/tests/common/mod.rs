//! Shared test helpers: a database per test (SQLite always, PostgreSQL too when
//! `KEYHOLD_TEST_POSTGRES_URL` is set) and a broker on a real port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

pub mod e2e;

use std::net::SocketAddr;

use keyhold_broker::{Broker, BrokerConfig, Store};
use keyhold_core::seal::{FleetSecretKey, SealPurpose};
use keyhold_core::snapshot::SnapshotVerifyingKey;
use sqlx::Executor as _;

pub const VENDOR_KEY: &str = "vendor-key-0123456789abcdef";
pub const PROXY_TOKEN: &str = "proxy-token-0123456789abcdef";

/// A database for one test.
pub struct TestDb {
    pub url: String,
    pub name: &'static str,
    _dir: Option<tempfile::TempDir>,
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// SQLite in a temporary file, and PostgreSQL (a fresh database) when configured.
pub async fn databases() -> Vec<TestDb> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("broker.db").display());
    let mut dbs = vec![TestDb { url, name: "sqlite", _dir: Some(dir) }];
    if let Ok(admin) = std::env::var("KEYHOLD_TEST_POSTGRES_URL")
        && !admin.is_empty()
    {
        {
            sqlx::any::install_default_drivers();
            let db = format!("keyhold_test_{}", random_suffix());
            let mut conn =
                <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.unwrap();
            conn.execute(format!("CREATE DATABASE {db}").as_str()).await.unwrap();
            let (base, query) = match admin.split_once('?') {
                Some((b, q)) => (b.to_owned(), format!("?{q}")),
                None => (admin.clone(), String::new()),
            };
            let base = base.rsplit_once('/').map(|(head, _)| head.to_owned()).unwrap();
            dbs.push(TestDb { url: format!("{base}/{db}{query}"), name: "postgres", _dir: None });
        }
    }
    dbs
}

/// A running broker.
pub struct TestBroker {
    pub base: String,
    pub addr: SocketAddr,
    pub store: Store,
    pub fleet: FleetSecretKey,
    pub broker_key: SnapshotVerifyingKey,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// The body limit of the test brokers.
pub const TEST_MAX_BODY_BYTES: usize = 64 * 1024;

impl TestBroker {
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(db, |_| {}).await
    }

    /// A broker whose configuration `configure` changes last; with `[tls]` its base URL is
    /// `https://127.0.0.1:…` (set `http` to a client that trusts its certificate).
    pub async fn start_with(db: &TestDb, configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vendor"), format!("{VENDOR_KEY}\n")).unwrap();
        std::fs::write(dir.path().join("proxy"), PROXY_TOKEN).unwrap();
        let fleet = FleetSecretKey::generate().unwrap();
        let mut config = BrokerConfig::new(
            dir.path().join("signing.key"),
            dir.path().join("vendor"),
            dir.path().join("proxy"),
        );
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.database_url = db.url.clone();
        config.fleet_public_keys = vec![fleet.public_key().to_base64()];
        // Small enough that an oversize test body fits in the socket buffers: the broker
        // answers 413 before reading it all, and a larger body could still be being written
        // (a broken pipe for the client instead of the answer).
        config.max_body_bytes = TEST_MAX_BODY_BYTES;
        configure(&mut config);
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let broker = Broker::bind(&config).await.unwrap();
        let pub_text = std::fs::read_to_string(dir.path().join("signing.key.pub")).unwrap();
        let broker_key = SnapshotVerifyingKey::from_base64(pub_text.trim()).unwrap();
        let addr = broker.local_addr().unwrap();
        let store = broker.store().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            broker
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            base: format!("{scheme}://{addr}"),
            addr,
            store,
            fleet,
            broker_key,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(VENDOR_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(self.url(path)).bearer_auth(VENDOR_KEY).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Invites `email` as an admin of `tenant`, accepts with `password` and signs in with a
    /// fresh TOTP code: the sign-in's response (its `Set-Cookie` and CSRF token).
    pub async fn new_admin_session(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
    ) -> reqwest::Response {
        let (_, token) = self
            .store
            .create_invitation("vendor", tenant, email, std::time::Duration::from_secs(600))
            .await
            .unwrap();
        let (status, admin) = self
            .post(
                "/api/v1/invitations/accept",
                serde_json::json!({"token": token.as_str(), "password": password}),
            )
            .await;
        assert_eq!(status, 201, "{admin}");
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let code =
            keyhold_broker::credentials::totp_code(admin["totp_secret"].as_str().unwrap(), now)
                .unwrap();
        let response = self
            .http
            .post(self.url("/api/v1/session"))
            .json(&serde_json::json!({"email": email, "password": password, "totp": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response
    }

    /// A blob sealed to the fleet key.
    pub fn seal(&self, tenant: &str, secrets: serde_json::Value) -> String {
        keyhold_core::seal::seal(
            &self.fleet.public_key(),
            SealPurpose::Kms,
            tenant,
            secrets.to_string().as_bytes(),
        )
        .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Counts rows, to show that refused requests stored nothing.
pub async fn counts(store: &Store) -> (i64, usize) {
    let data = store.snapshot_data().await.unwrap();
    let configs =
        data.tenants.iter().map(|(_, k, s)| k.len() + s.len()).sum::<usize>() + data.tenants.len();
    (data.version, configs)
}
