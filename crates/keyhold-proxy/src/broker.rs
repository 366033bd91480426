//! Tenants from a Configuration Broker (docs/broker.md §3).
//!
//! The proxy pulls the broker's signed snapshot at start and then by long poll, verifies its
//! signature against the broker keys it trusts, refuses one older than what it runs, opens the
//! credentials tenants sealed to the fleet key, builds a new tenant registry and swaps it in.
//! The last good snapshot is kept on disk, so a proxy keeps serving — and can restart — while
//! the broker is down.
//!
//! ```text
//!  broker ──GET /api/proxy/v1/snapshot (If-None-Match, wait)──▶ verify ─▶ newer? ─▶ open sealed
//!                                                                                  │
//!      cache file ◀── store ◀── replace_registry ◀── TenantRegistry::from_broker ◀──┘
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use keyhold_core::seal::{FleetSecretKey, SealPurpose};
use keyhold_core::snapshot::{
    ConfigSnapshot, ConfigStatus, SignedSnapshot, SnapshotKmsConfig, SnapshotTenant,
    SnapshotVerifyingKey, TenantStatus,
};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::config::{
    BrokerSource, KmsConfigEntry, KmsConfigStatus, ProxyConfig, TenantConfig, TenantLeasing,
};

/// Environment variable holding the proxy token (overrides `token_file`).
pub const BROKER_TOKEN_ENV: &str = "KEYHOLD_BROKER_TOKEN";
/// Longest long-poll wait the broker accepts, in seconds.
const MAX_WAIT_SECS: u64 = 60;

/// Why the broker's configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A key or token file could not be read, or is not a key.
    #[error("broker settings: {0}")]
    Setup(String),
    /// The broker could not be reached or answered with an error.
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The snapshot is not signed by a trusted key, altered, or not a snapshot.
    #[error("snapshot refused: {0}")]
    Refused(#[from] keyhold_core::snapshot::SnapshotError),
    /// The snapshot is older than the one in use (a replay, or a broker restored from an old
    /// backup): applying it could undo a revocation.
    #[error("snapshot refused: version {offered} is older than version {current} in use")]
    Older {
        /// The version offered.
        offered: u64,
        /// The version in use.
        current: u64,
    },
}

/// A tenant of a snapshot, ready for [`crate::registry::TenantRegistry::from_broker`].
#[derive(Debug)]
pub struct BrokerTenant {
    /// The tenant as a TOML entry would give it (id, leasing), without KMS configurations.
    pub config: TenantConfig,
    /// Its KMS configurations.
    pub kms_configs: Vec<PreparedKmsConfig>,
}

/// One KMS configuration of a snapshot, its credentials opened.
#[derive(Debug)]
pub struct PreparedKmsConfig {
    /// The id recorded in EDEKs.
    pub id: i32,
    /// What it may be used for.
    pub status: KmsConfigStatus,
    /// What it was built from (type, settings, sealed blob), to reuse an unchanged backend.
    pub fingerprint: String,
    /// The configuration, or why it cannot be used (never containing a credential).
    pub entry: Result<KmsConfigEntry, String>,
}

/// Turns a verified snapshot into the tenants to serve: disabled tenants are left out (they
/// are then refused as unknown), and every KMS configuration is opened and checked on its own.
pub fn prepare(
    snapshot: &ConfigSnapshot,
    fleet: &[FleetSecretKey],
    allow_local_paths: bool,
) -> Vec<BrokerTenant> {
    let mut seen_ids = std::collections::HashSet::new();
    snapshot
        .tenants
        .iter()
        .filter(|t| t.status == TenantStatus::Active)
        .map(|tenant| BrokerTenant {
            config: tenant_config(tenant),
            kms_configs: tenant
                .kms_configs
                .iter()
                .map(|c| {
                    let mut prepared = prepare_config(&tenant.id, c, fleet, allow_local_paths);
                    if !seen_ids.insert(c.id) {
                        prepared.entry = Err(format!(
                            "configuration id {} is used by another tenant too; ids are unique",
                            c.id
                        ));
                    }
                    prepared
                })
                .collect(),
        })
        .collect()
}

fn tenant_config(tenant: &SnapshotTenant) -> TenantConfig {
    let leasing = &tenant.leasing;
    // The broker validates these; a proxy still refuses values its own file could not hold.
    let renew_ok =
        leasing.renew_interval_ms.is_none_or(|r| r >= crate::config::MIN_LEASE_RENEW_INTERVAL_MS);
    let hold_ok = leasing.max_hold_ms.is_none_or(|h| h >= leasing.renew_interval_ms.unwrap_or(0));
    let leasing = if renew_ok && hold_ok {
        TenantLeasing {
            enabled: leasing.enabled,
            renew_interval_ms: leasing.renew_interval_ms,
            max_hold_ms: leasing.max_hold_ms,
        }
    } else {
        tracing::error!(tenant = %tenant.id, "leasing settings from the broker are out of range; the proxy's defaults apply");
        TenantLeasing::default()
    };
    TenantConfig {
        id: tenant.id.clone(),
        leasing,
        kms_configs: Vec::new(),
        audit_sinks: Vec::new(),
    }
}

fn prepare_config(
    tenant: &str,
    config: &SnapshotKmsConfig,
    fleet: &[FleetSecretKey],
    allow_local_paths: bool,
) -> PreparedKmsConfig {
    let status = match config.status {
        ConfigStatus::Primary => KmsConfigStatus::Primary,
        ConfigStatus::Active => KmsConfigStatus::Active,
        ConfigStatus::Disabled => KmsConfigStatus::Disabled,
    };
    let fingerprint = serde_json::to_string(&(&config.kms_type, &config.settings, &config.sealed))
        .unwrap_or_default();
    let entry = build_entry(tenant, config, fleet, allow_local_paths);
    PreparedKmsConfig { id: config.id, status, fingerprint, entry }
}

fn build_entry(
    tenant: &str,
    config: &SnapshotKmsConfig,
    fleet: &[FleetSecretKey],
    allow_local_paths: bool,
) -> Result<KmsConfigEntry, String> {
    if config.id <= 0 {
        return Err("configuration ids must be positive".into());
    }
    if !allow_local_paths {
        check_no_local_paths(&config.settings, "")?;
    }
    let mut fields = config.settings.clone();
    // Secret values, to scrub them from any error message.
    let mut secrets: Vec<Zeroizing<String>> = Vec::new();
    if let Some(sealed) = &config.sealed {
        let plaintext = keyhold_core::seal::open(fleet, SealPurpose::Kms, tenant, sealed)
            .map_err(|e| format!("sealed credentials: {e}"))?;
        let opened: Map<String, Value> = serde_json::from_slice(&plaintext)
            .map_err(|_| "sealed credentials: not a JSON object".to_owned())?;
        for (name, value) in opened {
            let Value::String(value) = value else {
                return Err(format!("sealed credential {name:?} is not a string"));
            };
            secrets.push(Zeroizing::new(value.clone()));
            insert_secret(&mut fields, &name, value)?;
        }
    }
    fields.insert("id".into(), Value::from(config.id));
    fields.insert("status".into(), serde_json::to_value(config.status).unwrap_or(Value::Null));
    fields.insert("type".into(), Value::String(config.kms_type.clone()));
    let result = serde_json::from_value::<KmsConfigEntry>(Value::Object(fields));
    result.map_err(|e| {
        let mut message = format!("settings: {e}");
        for secret in &secrets {
            if !secret.is_empty() {
                message = message.replace(secret.as_str(), "<redacted>");
            }
        }
        message
    })
}

/// Puts a sealed credential in its place: `token`, or `approle.secret_id` for a field of a
/// nested table. A field present in the clear too is an error.
fn insert_secret(fields: &mut Map<String, Value>, name: &str, value: String) -> Result<(), String> {
    let mut table = fields;
    let mut parts = name.split('.').peekable();
    while let Some(part) = parts.next() {
        if part.is_empty() {
            return Err(format!("sealed credential name {name:?} is not a field name"));
        }
        if parts.peek().is_none() {
            if table.contains_key(part) {
                return Err(format!("{name:?} is both sealed and in the clear settings"));
            }
            table.insert(part.to_owned(), Value::String(value));
            return Ok(());
        }
        let entry = table.entry(part.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner) = entry else {
            return Err(format!("sealed credential {name:?}: {part:?} is not a table"));
        };
        table = inner;
    }
    Err(format!("sealed credential name {name:?} is empty"))
}

/// Refuses what would make the proxy read its own files or environment on the say-so of
/// whoever can change a tenant's configuration: `{file}` / `{env}` credential indirections and
/// path settings (`*_file`, `module`, `path`).
fn check_no_local_paths(settings: &Map<String, Value>, prefix: &str) -> Result<(), String> {
    for (name, value) in settings {
        let path = format!("{prefix}{name}");
        if name.ends_with("_file") || name == "module" || name == "path" || name.ends_with("_dir") {
            return Err(format!(
                "{path:?} names a file on the proxy; a broker configuration may not (the proxy's [broker] allow_local_paths turns this on)"
            ));
        }
        if let Value::Object(inner) = value {
            if inner.contains_key("file") || inner.contains_key("env") {
                return Err(format!(
                    "{path:?} reads a file or environment variable of the proxy; seal the credential instead"
                ));
            }
            check_no_local_paths(inner, &format!("{path}."))?;
        }
    }
    Ok(())
}

/// Pulls signed snapshots from the broker.
#[derive(Debug)]
pub struct BrokerClient {
    http: reqwest::Client,
    snapshot_url: String,
    token: Zeroizing<String>,
    trusted: Vec<SnapshotVerifyingKey>,
    fleet: Arc<Vec<FleetSecretKey>>,
    /// The long-poll wait and the pause after a failure.
    pub poll_interval: Duration,
    cache_file: PathBuf,
    /// Whether settings may name proxy files (see [`BrokerSource::allow_local_paths`]).
    pub allow_local_paths: bool,
}

impl BrokerClient {
    /// A client for `config`'s `[broker]` section.
    pub fn new(config: &ProxyConfig, source: &BrokerSource) -> Result<Self, BrokerError> {
        let token = match std::env::var(BROKER_TOKEN_ENV) {
            Ok(token) => Zeroizing::new(token),
            Err(_) => {
                let file = source.token_file.as_ref().ok_or_else(|| {
                    BrokerError::Setup(format!("[broker] needs token_file or {BROKER_TOKEN_ENV}"))
                })?;
                read_secret(&config.resolve(file))?
            }
        };
        let trusted = source
            .public_keys
            .iter()
            .map(|k| SnapshotVerifyingKey::from_base64(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BrokerError::Setup(format!("[broker] public_keys: {e}")))?;
        let mut fleet = Vec::new();
        for file in &source.fleet_key_files {
            let path = config.resolve(file);
            let text = read_secret(&path)?;
            fleet.push(
                FleetSecretKey::from_base64(&text).map_err(|e| {
                    BrokerError::Setup(format!("fleet key {}: {e}", path.display()))
                })?,
            );
        }
        let poll_interval = Duration::from_millis(source.poll_interval_ms);
        let mut http = reqwest::Client::builder();
        if let Some(file) = &source.ca_cert_file {
            let path = config.resolve(file);
            let pem = std::fs::read(&path).map_err(|e| {
                BrokerError::Setup(format!("[broker] ca_cert_file {}: {e}", path.display()))
            })?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                BrokerError::Setup(format!("[broker] ca_cert_file is not PEM certificates: {e}"))
            })?;
            if roots.is_empty() {
                return Err(BrokerError::Setup(
                    "[broker] ca_cert_file holds no certificate".into(),
                ));
            }
            http = http.tls_certs_only(roots);
        }
        let http = http
            .connect_timeout(Duration::from_secs(5))
            // A long poll lasts up to the wait; give the answer time beyond it.
            .timeout(
                poll_interval.min(Duration::from_secs(MAX_WAIT_SECS)) + Duration::from_secs(15),
            )
            .build()
            .map_err(|e| BrokerError::Setup(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            snapshot_url: format!("{}/api/proxy/v1/snapshot", source.url.trim_end_matches('/')),
            token: Zeroizing::new(token.trim().to_owned()),
            trusted,
            fleet: Arc::new(fleet),
            poll_interval,
            cache_file: config.resolve(
                source
                    .cache_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new("broker-snapshot.json")),
            ),
            allow_local_paths: source.allow_local_paths,
        })
    }

    /// The fleet keys that open sealed credentials.
    pub fn fleet(&self) -> &[FleetSecretKey] {
        &self.fleet
    }

    /// Asks the broker for a snapshot newer than `known` (waiting up to `wait` for one):
    /// `None` when there is none.
    pub async fn fetch(
        &self,
        known: Option<u64>,
        wait: Duration,
    ) -> Result<Option<(SignedSnapshot, ConfigSnapshot)>, BrokerError> {
        let wait_secs = wait.as_secs().min(MAX_WAIT_SECS);
        let mut request = self
            .http
            .get(format!("{}?wait={wait_secs}", self.snapshot_url))
            .bearer_auth(self.token.as_str());
        if let Some(version) = known {
            request = request.header(reqwest::header::IF_NONE_MATCH, format!("\"{version}\""));
        }
        let response = request
            .send()
            .await
            .map_err(|e| BrokerError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(BrokerError::Unreachable(format!(
                "HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            )));
        }
        let signed: SignedSnapshot = response
            .json()
            .await
            .map_err(|e| BrokerError::Unreachable(format!("not a signed snapshot: {e}")))?;
        let snapshot = self.verify(&signed)?;
        Ok(Some((signed, snapshot)))
    }

    /// Takes (or renews) the broker's lease of `feed` for `proxy` and returns its records not
    /// yet recorded as audit events; `None` while another proxy holds the lease.
    pub async fn claim_events(
        &self,
        feed: BrokerFeed,
        proxy: &str,
    ) -> Result<Option<Vec<BrokerChange>>, BrokerError> {
        let route = format!("{}/claim", feed.route());
        let response = self.post_json(&route, &serde_json::json!({ "proxy": proxy })).await?;
        match response.status() {
            reqwest::StatusCode::NO_CONTENT => Ok(None),
            status if status.is_success() => {
                let batch: EventBatch = response.json().await.map_err(|e| {
                    BrokerError::Unreachable(format!("not a batch of {}: {e}", feed.name()))
                })?;
                Ok(Some(batch.records))
            }
            status => Err(BrokerError::Unreachable(format!("{}: HTTP {status}", feed.name()))),
        }
    }

    /// Tells the broker the records of `feed` up to `up_to` are in this proxy's spool.
    pub async fn ack_events(
        &self,
        feed: BrokerFeed,
        proxy: &str,
        up_to: i64,
    ) -> Result<(), BrokerError> {
        let route = format!("{}/ack", feed.route());
        let response =
            self.post_json(&route, &serde_json::json!({ "proxy": proxy, "up_to": up_to })).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(BrokerError::Unreachable(format!(
                "{} ack: HTTP {}",
                feed.name(),
                response.status()
            )))
        }
    }

    /// Takes (or renews) the broker's admin-events lease for `proxy` and returns the changes not
    /// yet recorded as admin events; `None` while another proxy holds the lease.
    pub async fn claim_admin_events(
        &self,
        proxy: &str,
    ) -> Result<Option<Vec<BrokerChange>>, BrokerError> {
        self.claim_events(BrokerFeed::Admin, proxy).await
    }

    /// POSTs `body` to the broker's proxy API at `route`, with this proxy's token.
    async fn post_json(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, BrokerError> {
        self.http
            .post(format!("{}/{route}", self.proxy_api()))
            .bearer_auth(self.token.as_str())
            .json(body)
            .send()
            .await
            .map_err(|e| BrokerError::Unreachable(e.without_url().to_string()))
    }

    /// Tells the broker the changes up to `up_to` are in this proxy's spool.
    pub async fn ack_admin_events(&self, proxy: &str, up_to: i64) -> Result<(), BrokerError> {
        self.ack_events(BrokerFeed::Admin, proxy, up_to).await
    }

    /// Sends the broker what this proxy saw since its last report (rotation tracking): EDEKs
    /// by tenant, KMS configuration and key version.
    pub async fn report_kms_usage(
        &self,
        deltas: &[crate::kms_usage::UsageDelta],
    ) -> Result<(), BrokerError> {
        let items: Vec<serde_json::Value> = deltas
            .iter()
            .map(|d| {
                serde_json::json!({
                    "tenant": d.tenant,
                    "config_id": d.row.kms_config_id,
                    "key_version": d.row.key_version,
                    "edeks_seen": d.row.edeks_seen,
                    "last_seen": d.row.last_seen,
                })
            })
            .collect();
        let response = self.post_json("kms-usage", &serde_json::json!({ "items": items })).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(BrokerError::Unreachable(format!("KMS usage report: HTTP {}", response.status())))
        }
    }

    /// Every tenant secret (wrapped) of `tenant` for `secret_paths` (deterministic encryption).
    pub async fn list_tenant_secrets(
        &self,
        tenant: &str,
        secret_paths: &[String],
    ) -> Result<Vec<crate::secrets::StoredSecret>, BrokerError> {
        #[derive(serde::Deserialize)]
        struct Listed {
            secrets: Vec<crate::secrets::StoredSecret>,
        }
        let body = serde_json::json!({ "tenant_id": tenant, "secret_paths": secret_paths });
        let response = self.post_json("tenant-secrets/list", &body).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(BrokerError::Unreachable(format!(
                "tenant secrets: HTTP {status}: {}",
                broker_message(response).await
            )));
        }
        let listed: Listed = response
            .json()
            .await
            .map_err(|e| BrokerError::Unreachable(format!("not a list of tenant secrets: {e}")))?;
        Ok(listed.secrets)
    }

    /// Stores a new tenant secret, or returns the unrotated one the broker already has for the
    /// tenant, path and configuration (`false`).
    pub async fn create_tenant_secret(
        &self,
        tenant: &str,
        secret_path: &str,
        kms_config_id: i32,
        wrapped: &[u8],
    ) -> Result<(crate::secrets::StoredSecret, bool), crate::secrets::SecretStoreError> {
        use crate::secrets::SecretStoreError;
        #[derive(serde::Deserialize)]
        struct Created {
            secret: crate::secrets::StoredSecret,
            created: bool,
        }
        let body = serde_json::json!({
            "tenant_id": tenant,
            "secret_path": secret_path,
            "kms_config_id": kms_config_id,
            "wrapped": base64::engine::general_purpose::STANDARD.encode(wrapped),
        });
        let response = self
            .post_json("tenant-secrets", &body)
            .await
            .map_err(|e| SecretStoreError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_client_error() && status != reqwest::StatusCode::UNAUTHORIZED {
            return Err(SecretStoreError::Refused(format!(
                "HTTP {status}: {}",
                broker_message(response).await
            )));
        }
        if !status.is_success() {
            return Err(SecretStoreError::Unavailable(format!(
                "HTTP {status}: {}",
                broker_message(response).await
            )));
        }
        let created: Created = response.json().await.map_err(|e| {
            SecretStoreError::Unavailable(format!("not a stored tenant secret: {e}"))
        })?;
        Ok((created.secret, created.created))
    }

    fn proxy_api(&self) -> &str {
        self.snapshot_url.trim_end_matches("/snapshot")
    }

    /// Verifies a signed snapshot against the trusted broker keys.
    pub fn verify(&self, signed: &SignedSnapshot) -> Result<ConfigSnapshot, BrokerError> {
        Ok(keyhold_core::snapshot::verify(signed, &self.trusted)?)
    }

    /// The last good snapshot from the cache file, verified again (the file is not trusted
    /// more than the network). `None` if there is none; an invalid one is reported and ignored.
    pub fn load_cache(&self) -> Option<(SignedSnapshot, ConfigSnapshot)> {
        let text = match std::fs::read(&self.cache_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %self.cache_file.display(), error = %e, "cannot read the cached broker snapshot");
                return None;
            }
        };
        let signed: SignedSnapshot = match serde_json::from_slice(&text) {
            Ok(signed) => signed,
            Err(e) => {
                tracing::warn!(file = %self.cache_file.display(), error = %e, "the cached broker snapshot is not a signed snapshot; ignored");
                return None;
            }
        };
        match self.verify(&signed) {
            Ok(snapshot) => Some((signed, snapshot)),
            Err(e) => {
                tracing::warn!(file = %self.cache_file.display(), error = %e, "the cached broker snapshot is refused; ignored");
                None
            }
        }
    }

    /// Keeps `signed` as the last good snapshot (written aside, synced, then renamed).
    pub fn store_cache(&self, signed: &SignedSnapshot) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(signed).map_err(std::io::Error::other)?;
        let tmp = self.cache_file.with_extension("tmp");
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.cache_file)
    }
}

/// A stream of broker records that one proxy at a time (the holder of its lease) writes into
/// the tenants' audit trails (docs/broker.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFeed {
    /// The change history, as `admin` audit events (`/api/proxy/v1/admin-events`).
    Admin,
    /// The end-to-end encryption service's events (`/api/proxy/v1/e2e-events`,
    /// docs/e2e-api.md).
    E2e,
}

impl BrokerFeed {
    /// Both, in the order the proxy delivers them.
    pub const ALL: [Self; 2] = [Self::Admin, Self::E2e];

    fn route(self) -> &'static str {
        match self {
            Self::Admin => "admin-events",
            Self::E2e => "e2e-events",
        }
    }

    /// What its records are, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin events",
            Self::E2e => "E2E events",
        }
    }
}

/// One change of the broker's history, as the admin-events route hands it out; or one event of
/// the E2E service, as the e2e-events route does (same fields).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BrokerChange {
    /// Increasing id (the snapshot version after it).
    pub id: i64,
    /// The tenant changed.
    pub tenant: String,
    /// When (RFC 3339).
    pub at: String,
    /// Who (`vendor`, `admin:<email>`, `keyhold up`).
    pub actor: String,
    /// What (`tenant.create`, `kms_config.primary`, …).
    pub action: String,
    /// Details (never a credential).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// `{cursor, changes}` (admin events) or `{cursor, events}` (E2E events).
#[derive(Debug, serde::Deserialize)]
struct EventBatch {
    #[serde(alias = "changes", alias = "events")]
    records: Vec<BrokerChange>,
}

impl BrokerChange {
    /// The audit event of this change, for the tenant's trail.
    pub fn to_audit_event(&self, proxy: &str) -> keyhold_audit::AuditEvent {
        let mut event = keyhold_audit::AuditEvent::new(
            keyhold_audit::EventKind::Admin,
            &self.tenant,
            &self.action,
        );
        event.requesting_id = self.actor.clone();
        // The change id names the event: a change recorded twice (at least once) is
        // recognisable.
        event.request_id = format!("broker-change-{}", self.id);
        event.object_id = self.id.to_string();
        event.kms_config_id = self
            .detail
            .get("id")
            .and_then(serde_json::Value::as_i64)
            .and_then(|id| i32::try_from(id).ok())
            .filter(|_| {
                self.action.starts_with("kms_config.") || self.action.starts_with("vendor_key.")
            });
        event.custom.insert("changed_at".into(), self.at.clone());
        event.custom.insert("detail".into(), self.detail.to_string());
        event.proxy = proxy.to_owned();
        event
    }

    /// The audit event of this record of `feed`, for the tenant's trail.
    pub fn audit_event(&self, feed: BrokerFeed, proxy: &str) -> keyhold_audit::AuditEvent {
        match feed {
            BrokerFeed::Admin => self.to_audit_event(proxy),
            BrokerFeed::E2e => self.to_e2e_audit_event(proxy),
        }
    }

    /// The audit event of this E2E event: its action as the operation, its actor
    /// (`<user>/<device>` or `vendor`) as the requesting id, the document it concerns as the
    /// object, the event's JSON as `custom.detail`. Decrypts and group-key fetches (the
    /// service handing a key toward a device) are `data` events, a refused decrypt with the
    /// outcome `refused`; the rest (users, devices, groups, grants) are `admin` events.
    pub fn to_e2e_audit_event(&self, proxy: &str) -> keyhold_audit::AuditEvent {
        use keyhold_audit::EventKind;
        let key_access = matches!(
            self.action.as_str(),
            "e2e.document.decrypt" | "e2e.document.decrypt_denied" | "e2e.group.key_access"
        );
        let kind = if key_access { EventKind::Data } else { EventKind::Admin };
        let mut event = keyhold_audit::AuditEvent::new(kind, &self.tenant, &self.action);
        if self.action == "e2e.document.decrypt_denied" {
            "refused".clone_into(&mut event.outcome);
        }
        if key_access {
            event.keys = 1;
        }
        event.requesting_id = self.actor.clone();
        // The event id names it: an event recorded twice (at least once) is recognisable.
        event.request_id = format!("broker-e2e-event-{}", self.id);
        event.object_id = self
            .detail
            .get("document")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| self.id.to_string(), str::to_owned);
        event.custom.insert("recorded_at".into(), self.at.clone());
        event.custom.insert("detail".into(), self.detail.to_string());
        event.proxy = proxy.to_owned();
        event
    }
}

/// The audit sinks tenants configured in the broker (and the vendor's sinks, for every broker
/// tenant), each delivered by its own task; a sink whose settings change is restarted, a
/// removed one stopped (its cursor stays, so a sink added again resumes where it was).
pub struct BrokerSinks {
    spool: Arc<keyhold_audit::Spool>,
    instance: String,
    base_dir: PathBuf,
    vendor_sinks: Vec<crate::config::SinkEntry>,
    options: keyhold_audit::DeliveryOptions,
    allow_local_paths: bool,
    running: std::collections::HashMap<(String, String), (String, keyhold_audit::Delivery)>,
}

impl std::fmt::Debug for BrokerSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSinks").field("running", &self.running.len()).finish()
    }
}

impl BrokerSinks {
    /// No sink yet.
    pub fn new(
        spool: Arc<keyhold_audit::Spool>,
        instance: String,
        config: &ProxyConfig,
        allow_local_paths: bool,
    ) -> Self {
        let audit = config.audit.as_ref();
        Self {
            spool,
            instance,
            base_dir: config.base_dir.clone(),
            vendor_sinks: audit.map(|a| a.vendor_sinks.clone()).unwrap_or_default(),
            options: keyhold_audit::DeliveryOptions {
                retry_max: Duration::from_millis(audit.map_or(30_000, |a| a.retry_max_ms)),
                ..Default::default()
            },
            allow_local_paths,
            running: std::collections::HashMap::new(),
        }
    }

    /// Brings the running sinks in line with `snapshot`; returns the problems (never a
    /// credential).
    pub fn apply(&mut self, snapshot: &ConfigSnapshot, fleet: &[FleetSecretKey]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut wanted = std::collections::HashSet::new();
        for tenant in snapshot.tenants.iter().filter(|t| t.status == TenantStatus::Active) {
            for sink in &tenant.audit_sinks {
                let key = (tenant.id.clone(), sink.name.clone());
                wanted.insert(key.clone());
                let fingerprint =
                    serde_json::to_string(&(&sink.sink_type, &sink.settings, &sink.sealed))
                        .unwrap_or_default();
                if self.running.get(&key).is_some_and(|(f, _)| *f == fingerprint) {
                    continue;
                }
                self.running.remove(&key);
                match self.start_tenant_sink(&tenant.id, sink, fleet) {
                    Ok(delivery) => {
                        self.running.insert(key, (fingerprint, delivery));
                    }
                    Err(e) => problems
                        .push(format!("tenant {:?}: audit sink {:?}: {e}", tenant.id, sink.name)),
                }
            }
            for entry in &self.vendor_sinks {
                let key = (tenant.id.clone(), entry.name.clone());
                wanted.insert(key.clone());
                if self.running.contains_key(&key) {
                    continue;
                }
                match self.start(
                    &tenant.id,
                    &entry.name,
                    &entry.settings,
                    vendor_credential(entry, &self.base_dir),
                ) {
                    Ok(delivery) => {
                        self.running.insert(key, ("vendor".into(), delivery));
                    }
                    Err(e) => problems.push(format!(
                        "tenant {:?}: vendor audit sink {:?}: {e}",
                        tenant.id, entry.name
                    )),
                }
            }
        }
        self.running.retain(|key, _| wanted.contains(key));
        problems
    }

    /// How many sinks are delivering.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    fn start_tenant_sink(
        &self,
        tenant: &str,
        sink: &keyhold_core::snapshot::SnapshotSink,
        fleet: &[FleetSecretKey],
    ) -> Result<keyhold_audit::Delivery, String> {
        let valid_name = (1..=64).contains(&sink.name.len())
            && sink.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err("the name must be 1 to 64 letters, digits, '-' or '_'".into());
        }
        if self.vendor_sinks.iter().any(|v| v.name == sink.name) {
            return Err("the vendor has a sink of this name".into());
        }
        if !self.allow_local_paths {
            check_no_local_paths(&sink.settings, "")?;
        }
        let credential = match &sink.sealed {
            None => None,
            Some(sealed) => {
                let plaintext = keyhold_core::seal::open(fleet, SealPurpose::Siem, tenant, sealed)
                    .map_err(|e| format!("sealed credential: {e}"))?;
                let opened: Map<String, Value> = serde_json::from_slice(&plaintext)
                    .map_err(|_| "sealed credential: not a JSON object".to_owned())?;
                match opened.get("secret") {
                    Some(Value::String(secret)) => Some(Zeroizing::new(secret.clone())),
                    _ => return Err("sealed credential: no \"secret\" string".into()),
                }
            }
        };
        let mut fields = sink.settings.clone();
        fields.insert("type".into(), Value::String(sink.sink_type.clone()));
        let settings: keyhold_audit::SinkSettings =
            serde_json::from_value(Value::Object(fields)).map_err(|e| format!("settings: {e}"))?;
        self.start(tenant, &sink.name, &settings, Ok(credential))
    }

    fn start(
        &self,
        tenant: &str,
        name: &str,
        settings: &keyhold_audit::SinkSettings,
        credential: Result<Option<Zeroizing<String>>, String>,
    ) -> Result<keyhold_audit::Delivery, String> {
        let context = keyhold_audit::sink::SinkContext {
            base_dir: &self.base_dir,
            instance: &self.instance,
            tenant,
        };
        let sink = keyhold_audit::sink::build(settings, credential?, &context)
            .map_err(|e| e.to_string())?;
        let target =
            keyhold_audit::Target { tenant: tenant.to_owned(), name: name.to_owned(), sink };
        keyhold_audit::Delivery::start(&self.spool, vec![target], self.options)
            .map_err(|e| e.to_string())
    }
}

/// The broker's message in an error answer (at most 200 characters).
async fn broker_message(response: reqwest::Response) -> String {
    response.text().await.unwrap_or_default().chars().take(200).collect()
}

fn vendor_credential(
    entry: &crate::config::SinkEntry,
    base_dir: &std::path::Path,
) -> Result<Option<Zeroizing<String>>, String> {
    entry.secret.as_ref().map(|s| s.load(base_dir)).transpose().map_err(|e| e.to_string())
}

fn read_secret(path: &std::path::Path) -> Result<Zeroizing<String>, BrokerError> {
    std::fs::read_to_string(path)
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .map_err(|e| BrokerError::Setup(format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use keyhold_core::seal::seal;
    use keyhold_core::snapshot::SnapshotLeasing;

    fn vault_config(tenant: &str, fleet: &FleetSecretKey, settings: Value) -> SnapshotKmsConfig {
        SnapshotKmsConfig {
            id: 7,
            status: ConfigStatus::Primary,
            kms_type: "vault".into(),
            settings: settings.as_object().unwrap().clone(),
            sealed: Some(
                seal(&fleet.public_key(), SealPurpose::Kms, tenant, br#"{"token":"s.t0psecret"}"#)
                    .unwrap(),
            ),
        }
    }

    fn snapshot(tenants: Vec<SnapshotTenant>) -> ConfigSnapshot {
        ConfigSnapshot { version: 3, tenants, ..ConfigSnapshot::default() }
    }

    fn tenant(id: &str, status: TenantStatus, configs: Vec<SnapshotKmsConfig>) -> SnapshotTenant {
        SnapshotTenant {
            id: id.into(),
            status,
            leasing: SnapshotLeasing::default(),
            kms_configs: configs,
            audit_sinks: vec![],
        }
    }

    #[test]
    fn sealed_credentials_are_merged_into_the_settings() {
        let fleet = FleetSecretKey::generate().unwrap();
        let settings = serde_json::json!({"address": "http://127.0.0.1:8200", "key": "acme"});
        let snap = snapshot(vec![tenant(
            "acme",
            TenantStatus::Active,
            vec![vault_config("acme", &fleet, settings)],
        )]);
        let tenants = prepare(&snap, &[fleet], false);
        assert_eq!(tenants.len(), 1);
        let entry = tenants[0].kms_configs[0].entry.as_ref().unwrap();
        assert_eq!(entry.id, 7);
        assert_eq!(entry.status, KmsConfigStatus::Primary);
        assert!(format!("{entry:?}").contains("127.0.0.1:8200"));
        assert!(!format!("{entry:?}").contains("t0psecret"), "Debug must not show the token");
    }

    #[test]
    fn disabled_tenants_are_left_out() {
        let snap = snapshot(vec![
            tenant("on", TenantStatus::Active, vec![]),
            tenant("off", TenantStatus::Disabled, vec![]),
        ]);
        let ids: Vec<_> = prepare(&snap, &[], false).into_iter().map(|t| t.config.id).collect();
        assert_eq!(ids, ["on"]);
    }

    #[test]
    fn a_credential_sealed_for_another_tenant_makes_the_config_invalid_not_the_snapshot() {
        let fleet = FleetSecretKey::generate().unwrap();
        let settings = serde_json::json!({"address": "http://127.0.0.1:8200", "key": "k"});
        // The broker moved tenant a's sealed token to tenant b.
        let moved = vault_config("a", &fleet, settings);
        let snap = snapshot(vec![
            tenant("b", TenantStatus::Active, vec![moved]),
            tenant("c", TenantStatus::Active, vec![]),
        ]);
        let tenants = prepare(&snap, &[fleet], false);
        assert_eq!(tenants.len(), 2);
        let err = tenants[0].kms_configs[0].entry.as_ref().unwrap_err();
        assert!(err.contains("does not open"), "{err}");
    }

    #[test]
    fn local_paths_and_indirections_are_refused_unless_allowed() {
        let fleet = FleetSecretKey::generate().unwrap();
        for settings in [
            serde_json::json!({"address": "http://x", "key": "k", "ca_cert_file": "/etc/passwd"}),
            serde_json::json!({"address": "http://x", "key": "k", "approle": {"role_id": "r", "secret_id": {"env": "KEYHOLD_API_KEY"}}}),
        ] {
            let mut config = vault_config("a", &fleet, settings);
            config.sealed = None;
            let snap = snapshot(vec![tenant("a", TenantStatus::Active, vec![config])]);
            let err = prepare(&snap, std::slice::from_ref(&fleet), false)
                .remove(0)
                .kms_configs
                .remove(0)
                .entry
                .unwrap_err();
            assert!(err.contains("proxy"), "{err}");
        }
    }

    #[test]
    fn a_secret_in_both_places_and_duplicate_ids_are_refused() {
        let fleet = FleetSecretKey::generate().unwrap();
        let both = serde_json::json!({"address": "http://x", "key": "k", "token": "clear"});
        let fine = serde_json::json!({"address": "http://x", "key": "k"});
        let snap = snapshot(vec![
            tenant("a", TenantStatus::Active, vec![vault_config("a", &fleet, both)]),
            tenant("b", TenantStatus::Active, vec![vault_config("b", &fleet, fine)]),
        ]);
        let tenants = prepare(&snap, &[fleet], false);
        let first = tenants[0].kms_configs[0].entry.as_ref().unwrap_err();
        assert!(first.contains("both sealed and in the clear"), "{first}");
        let second = tenants[1].kms_configs[0].entry.as_ref().unwrap_err();
        assert!(second.contains("unique"), "{second}");
    }

    #[test]
    fn a_nested_credential_goes_into_its_table() {
        let fleet = FleetSecretKey::generate().unwrap();
        let settings =
            serde_json::json!({"address": "http://x", "key": "k", "approle": {"role_id": "r"}});
        let config = SnapshotKmsConfig {
            id: 5,
            status: ConfigStatus::Primary,
            kms_type: "vault".into(),
            settings: settings.as_object().unwrap().clone(),
            sealed: Some(
                seal(&fleet.public_key(), SealPurpose::Kms, "a", br#"{"approle.secret_id":"sid"}"#)
                    .unwrap(),
            ),
        };
        let snap = snapshot(vec![tenant("a", TenantStatus::Active, vec![config])]);
        let entry = prepare(&snap, &[fleet], false).remove(0).kms_configs.remove(0).entry;
        let entry = entry.unwrap();
        assert!(format!("{entry:?}").contains("role_id"), "{entry:?}");
    }

    #[test]
    fn error_messages_never_carry_the_credential() {
        let fleet = FleetSecretKey::generate().unwrap();
        let mut config = SnapshotKmsConfig {
            id: 9,
            status: ConfigStatus::Primary,
            kms_type: "vault".into(),
            // "key" missing: the settings do not parse.
            settings: serde_json::json!({"address": "http://x"}).as_object().unwrap().clone(),
            sealed: None,
        };
        config.sealed = Some(
            seal(&fleet.public_key(), SealPurpose::Kms, "a", br#"{"token":"hunter2-secret"}"#)
                .unwrap(),
        );
        let snap = snapshot(vec![tenant("a", TenantStatus::Active, vec![config])]);
        let err =
            prepare(&snap, &[fleet], false).remove(0).kms_configs.remove(0).entry.unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
