//! The proxy's configuration: one typed structure, read from a TOML file and overridden by
//! `KEYHOLD_*` environment variables. This is the only module that reads configuration.
//!
//! ```toml
//! listen = "127.0.0.1:32804"
//! api_key_file = "api-key"          # or KEYHOLD_API_KEY; KEYHOLD_API_KEY_2 for rotation
//!
//! [local_keystore]
//! path = "keystore"
//! root_key_file = "root.key"         # or KEYHOLD_ROOT_KEY
//!
//! [[tenants]]
//! id = "demo-tenant"
//!
//! [[tenants.kms_configs]]
//! id = 1
//! status = "primary"                 # primary | active (decrypt only) | disabled
//! type = "local"
//! key = "demo-tenant"
//! ```
//!
//! Relative paths are resolved against the directory of the configuration file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyhold_core::metadata::validate_tenant_id;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Environment variable holding the current API key.
pub const API_KEY_ENV: &str = "KEYHOLD_API_KEY";
/// Environment variable holding a second accepted API key (for rotation).
pub const API_KEY_2_ENV: &str = "KEYHOLD_API_KEY_2";
/// Environment variable overriding `listen`.
pub const LISTEN_ENV: &str = "KEYHOLD_LISTEN";
/// Shortest API key accepted, in bytes.
pub const MIN_API_KEY_LEN: usize = 16;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this structure.
    #[error("invalid configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// The values are inconsistent or out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole proxy configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address of the API listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Optional second listener for `/health`, `/live`, `/ready` and `/metrics` only. When set,
    /// `/metrics` is not served on the API listener.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// TLS on the API listener (none: plain HTTP, for loopback or behind a TLS terminator).
    #[serde(default)]
    pub tls: Option<keyhold_listen::TlsConfig>,
    /// API key in the clear (prefer `api_key_file` or `KEYHOLD_API_KEY`).
    #[serde(default, skip_serializing)]
    api_key: Option<String>,
    /// File holding the API key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// A second accepted API key, for rotation without downtime.
    #[serde(default, skip_serializing)]
    api_key_2: Option<String>,
    /// File holding the second API key.
    #[serde(default)]
    pub api_key_2_file: Option<PathBuf>,
    /// Most client connections open at once on each listener; further clients wait to be
    /// accepted until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client connection without a byte in either direction for this long is closed, in
    /// milliseconds.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Longest a client may take to send one request (its first byte to its last, no answer
    /// in between), in milliseconds; a slower one has its connection closed.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most ids one batch call may carry.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// How many KMS calls of one batch run at once.
    #[serde(default = "default_batch_concurrency")]
    pub batch_concurrency: usize,
    /// Longest a KMS operation may take in all (every attempt and backoff), in milliseconds;
    /// after it the request fails as "unreachable" (208).
    #[serde(default = "default_kms_timeout_ms")]
    pub kms_timeout_ms: u64,
    /// Longest one attempt (one request to a remote KMS) may take, in milliseconds (at most
    /// `kms_timeout_ms`).
    #[serde(default = "default_kms_attempt_timeout_ms")]
    pub kms_attempt_timeout_ms: u64,
    /// Retries of a remote KMS call after a transient failure (unreachable, throttled).
    #[serde(default = "default_kms_retries")]
    pub kms_retries: u32,
    /// Consecutive "unreachable" answers after which a KMS configuration's circuit opens and its
    /// requests fail at once (0: never).
    #[serde(default = "default_kms_breaker_failures")]
    pub kms_breaker_failures: u32,
    /// How long an open circuit stays open before one probe request is let through, in ms.
    #[serde(default = "default_kms_breaker_cooldown_ms")]
    pub kms_breaker_cooldown_ms: u64,
    /// The audit trail (docs/audit.md). Without it, audit events go to the log only.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Key leasing defaults for every tenant (docs/leasing.md); tenants may override them.
    #[serde(default)]
    pub leasing: LeasingConfig,
    /// Which rekeys into another tenant are allowed (within one tenant: always). Applies to
    /// tenants from this file and from the broker alike.
    #[serde(default)]
    pub rekey: RekeyConfig,
    /// The vendor-held keystore, for KMS configurations of type `local`.
    #[serde(default)]
    pub local_keystore: Option<LocalKeystoreConfig>,
    /// The tenants this proxy serves (without `[broker]`; with it, they come from the broker).
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Tenants from a Configuration Broker instead of this file (docs/broker.md §3).
    #[serde(default)]
    pub broker: Option<BrokerSource>,
    /// Deterministic field encryption: where tenant secrets are kept, how long they are cached
    /// (docs/deterministic.md).
    #[serde(default)]
    pub deterministic: DeterministicConfig,
    /// Directory of the file this was read from (for relative paths).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Tenant secrets for deterministic field encryption (docs/deterministic.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeterministicConfig {
    /// Without `[broker]`: the file that keeps the tenant secrets, wrapped by each tenant's KMS
    /// (relative to this file; default `tenant-secrets.json`). With a broker, the broker keeps
    /// them and this is not used.
    #[serde(default = "default_secrets_file")]
    pub secrets_file: PathBuf,
    /// How long an unwrapped tenant secret stays in this proxy's memory, in seconds (default
    /// 300): a tenant that disables its key is refused within this time; a disabled KMS
    /// configuration at once.
    #[serde(default = "default_secret_cache_secs")]
    pub secret_cache_secs: u64,
    /// How long past `secret_cache_secs` an unwrapped secret still serves while its KMS cannot
    /// be reached or throttles, in seconds (default 3600, as leasing's `max_hold_ms`); 0: none.
    /// A KMS that refuses (key disabled, access denied) ends it at once.
    #[serde(default = "default_secret_hold_secs")]
    pub secret_hold_secs: u64,
    /// How long a list of a path's secrets from the broker is reused, in seconds (default 60).
    /// A rotation through the broker reaches proxies with the next snapshot, sooner.
    #[serde(default = "default_secret_list_secs")]
    pub secret_list_secs: u64,
}

impl Default for DeterministicConfig {
    fn default() -> Self {
        Self {
            secrets_file: default_secrets_file(),
            secret_cache_secs: default_secret_cache_secs(),
            secret_hold_secs: default_secret_hold_secs(),
            secret_list_secs: default_secret_list_secs(),
        }
    }
}

fn default_secrets_file() -> PathBuf {
    PathBuf::from("tenant-secrets.json")
}

fn default_secret_cache_secs() -> u64 {
    300
}

fn default_secret_hold_secs() -> u64 {
    3600
}

fn default_secret_list_secs() -> u64 {
    60
}

/// Where the proxy pulls its tenants from (docs/broker.md §3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSource {
    /// The broker's base URL, e.g. `http://127.0.0.1:32805` (use https across a network).
    pub url: String,
    /// File holding the proxy token the broker expects (`KEYHOLD_BROKER_TOKEN` overrides).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The broker signing keys this proxy trusts (base64 of Ed25519 public keys); a snapshot
    /// signed by any other key is refused.
    pub public_keys: Vec<String>,
    /// Files holding the fleet's X25519 private keys (base64), which open the credentials
    /// tenants sealed in their browser. Several during a key rotation.
    pub fleet_key_files: Vec<PathBuf>,
    /// How long a change may take to arrive, in ms: the long-poll wait, and the pause after a
    /// failed poll (default 10000).
    #[serde(default = "default_broker_poll_ms")]
    pub poll_interval_ms: u64,
    /// The last good signed snapshot, kept so the proxy serves through a broker outage and
    /// starts without the broker (default `broker-snapshot.json` beside this file).
    #[serde(default)]
    pub cache_file: Option<PathBuf>,
    /// Accept file paths (`*_file`, `module`) and `{file}`/`{env}` credential indirections in
    /// the broker's settings. Off by default: they would let whoever can change a tenant's
    /// configuration make this proxy read its own files, environment or libraries.
    #[serde(default)]
    pub allow_local_paths: bool,
    /// PEM CA certificates, the only roots trusted for an `https://` broker (none: the
    /// system's), for a broker whose certificate a private CA issued.
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
}

fn default_broker_poll_ms() -> u64 {
    10_000
}

/// Where the local keystore lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalKeystoreConfig {
    /// The keystore file.
    pub path: PathBuf,
    /// File holding the root key (base64). Without it, `KEYHOLD_ROOT_KEY` is used.
    #[serde(default)]
    pub root_key_file: Option<PathBuf>,
    /// How often, at most, to check the keystore file for changes made by `keyhold keys`
    /// (rotate, disable, enable), in milliseconds: the longest a disabled key keeps working.
    /// 0 (the default) checks on every use; a check is one `stat`.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

/// Where audit events are recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the on-disk spool: one chained JSON-lines file per tenant. Every key access
    /// is written and synced there before it is answered.
    pub spool_dir: PathBuf,
    /// Most events waiting to be written; requests wait when it is full (default 65536).
    #[serde(default = "default_audit_queue")]
    pub queue_capacity: usize,
    /// This proxy's name in events (default: `KEYHOLD_INSTANCE`, else the host name).
    #[serde(default)]
    pub instance: Option<String>,
    /// Longest wait between two tries of a failing sink, in ms (default 30000; the first retry
    /// comes after 200 ms, and the wait doubles).
    #[serde(default = "default_audit_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Most events of one tenant spooled but not yet delivered to its slowest sink (default
    /// 1,000,000); what happens beyond it is `when_full`.
    #[serde(default = "default_audit_max_backlog")]
    pub max_backlog: u64,
    /// What happens to a tenant's data operations when its backlog is full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Sinks that receive every tenant's events (the vendor's own copy).
    #[serde(default)]
    pub vendor_sinks: Vec<SinkEntry>,
    /// The proxy's Ed25519 key that signs checkpoints (PKCS#8; made on first start, mode
    /// 0600; its public half is written beside it, hex, with the extension `.pub`: by
    /// default `<spool_dir>/audit-signing.key` and `audit-signing.pub`).
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// A stream with new records gets a signed checkpoint at least this often, in ms (default
    /// 60000).
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// ... and after at most this many records (default 10000).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// KMS failures of key accesses become `kms_failure` periodic events: the first at once,
    /// then one summary per this many ms per KMS configuration while they go on (default
    /// 60000).
    #[serde(default = "default_kms_failure_interval_ms")]
    pub kms_failure_interval_ms: u64,
    /// A tenant's spool file is closed as a segment at this size, in bytes, and a new one
    /// begun (default 64 MiB).
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Delete a tenant's segments once every one of its sinks has them (default true). A
    /// tenant without sinks keeps its whole spool: it is the only copy.
    #[serde(default = "default_true")]
    pub delete_delivered: bool,
    /// Under concurrent load, how long (µs) after the start of the last commit the spool lets
    /// events gather before the next (one write and one disk sync for all): default 1000. A
    /// lone request never waits for it.
    #[serde(default = "default_commit_window_us")]
    pub commit_window_us: u64,
    /// What "recorded before answered" means: `synced` (default), each event is on the disk
    /// (`fdatasync`) before its request is answered; `written`, it is in the spool file, that
    /// is with the operating system: it survives the proxy's crash or `kill -9` but not the
    /// host's crash or power loss. docs/audit.md §3 weighs the two.
    #[serde(default)]
    pub durability: Durability,
    /// At shutdown, after a last signed checkpoint of every stream, how long (ms) delivery
    /// may go on sending what is spooled before it stops: default 5000. What is left goes out
    /// after the next start (from this spool directory).
    #[serde(default = "default_shutdown_delivery_ms")]
    pub shutdown_delivery_ms: u64,
}

/// How far an event must have gone before its request is answered (docs/audit.md §3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Synced to disk: no answered access is lost even if the host loses power.
    #[default]
    Synced,
    /// Written to the spool file: no answered access is lost if the proxy crashes; a host crash
    /// may lose the last moments' events.
    Written,
}

/// The spool-full policy (docs/audit.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// Refuse the tenant's wrap, unwrap, batch and rekey requests (code 100) until its SIEM
    /// catches up: an access the tenant cannot see breaks the promise of CMK.
    #[default]
    Refuse,
    /// Keep serving; events still go to the spool (and the disk keeps filling).
    Accept,
}

/// One audit sink in the configuration: a name, the sink's settings, and its credential.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkEntry {
    /// Unique among a tenant's sinks and the vendor's (letters, digits, `-`, `_`; names the
    /// delivery cursor, so renaming a sink delivers its stream again from the start).
    pub name: String,
    /// The HEC token, Datadog API key, webhook secret or OpenSearch password:
    /// `{ file = "…" }`, `{ env = "…" }` or inline.
    #[serde(default)]
    pub secret: Option<keyhold_kms::SecretSource>,
    /// What and where.
    #[serde(flatten)]
    pub settings: keyhold_audit::SinkSettings,
}

fn default_audit_queue() -> usize {
    65_536
}
fn default_checkpoint_interval_ms() -> u64 {
    60_000
}
fn default_commit_window_us() -> u64 {
    1000
}
fn default_shutdown_delivery_ms() -> u64 {
    5000
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_kms_failure_interval_ms() -> u64 {
    60_000
}
fn default_checkpoint_every() -> u64 {
    10_000
}
fn default_audit_retry_max_ms() -> u64 {
    30_000
}
fn default_audit_max_backlog() -> u64 {
    1_000_000
}

/// The rekey policy: an EDEK of one tenant may be wrapped again for the same tenant (after a key
/// change) always, and for another tenant only if a pair here allows it. Default: no pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyConfig {
    /// The allowed cross-tenant moves.
    #[serde(default)]
    pub allow: Vec<RekeyAllow>,
}

/// One allowed cross-tenant move: EDEKs of `from` may be rekeyed into `to`. Either may be `"*"`
/// (any tenant).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyAllow {
    /// The tenant the EDEKs belong to now, or `"*"`.
    pub from: String,
    /// The tenant they may be moved to, or `"*"`.
    pub to: String,
}

impl RekeyConfig {
    /// Whether an EDEK of `from` may be rekeyed into `to`.
    pub fn allows(&self, from: &str, to: &str) -> bool {
        from == to
            || self.allow.iter().any(|pair| {
                (pair.from == "*" || pair.from == from) && (pair.to == "*" || pair.to == to)
            })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for pair in &self.allow {
            for id in [&pair.from, &pair.to] {
                if id != "*" && validate_tenant_id(id).is_err() {
                    return Err(ConfigError::Invalid(format!(
                        "[rekey] allow: {id:?} is neither \"*\" nor a tenant id (1 to 1024 bytes)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Key leasing (docs/leasing.md): the proxy wraps new data keys with a lease key it renews from
/// the KMS, instead of calling the KMS for every key.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasingConfig {
    /// Whether tenants lease keys unless they say otherwise (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often a new lease key is obtained, in ms (default 5 minutes): also the longest a key
    /// disabled in the KMS keeps working.
    #[serde(default = "default_lease_renew_interval_ms")]
    pub renew_interval_ms: u64,
    /// How long leases keep serving while the KMS cannot be reached, in ms (default 1 hour);
    /// after it, requests fail with 208 until the KMS answers again.
    #[serde(default = "default_lease_max_hold_ms")]
    pub max_hold_ms: u64,
    /// Most lease keys cached per KMS configuration (default 4096).
    #[serde(default = "default_lease_cache_capacity")]
    pub cache_capacity: u64,
}

impl Default for LeasingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            renew_interval_ms: default_lease_renew_interval_ms(),
            max_hold_ms: default_lease_max_hold_ms(),
            cache_capacity: default_lease_cache_capacity(),
        }
    }
}

/// A tenant's overrides of [`LeasingConfig`].
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLeasing {
    /// Lease keys for this tenant (default: `[leasing] enabled`).
    pub enabled: Option<bool>,
    /// Renewal interval in ms (default: `[leasing] renew_interval_ms`).
    pub renew_interval_ms: Option<u64>,
    /// Hold time in ms (default: `[leasing] max_hold_ms`).
    pub max_hold_ms: Option<u64>,
}

/// One tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant id applications send as `tenantId`.
    pub id: String,
    /// Leasing overrides for this tenant.
    #[serde(default)]
    pub leasing: TenantLeasing,
    /// The tenant's KMS configurations: at most one primary.
    #[serde(default)]
    pub kms_configs: Vec<KmsConfigEntry>,
    /// Where the tenant's audit events are delivered (besides the spool and the vendor's
    /// sinks).
    #[serde(default)]
    pub audit_sinks: Vec<SinkEntry>,
}

/// What a KMS configuration may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsConfigStatus {
    /// Wraps new keys and unwraps old ones.
    Primary,
    /// Unwraps only (a retired or secondary configuration).
    Active,
    /// Neither: EDEKs naming it are refused with `KMS_CONFIGURATION_DISABLED`.
    Disabled,
}

/// One KMS configuration of a tenant. (Unknown fields are caught by [`KmsSettings`], which
/// receives every field but `id` and `status`.)
#[derive(Debug, Clone, Deserialize)]
pub struct KmsConfigEntry {
    /// The id recorded in every EDEK it makes; unique across the proxy, never 0.
    pub id: i32,
    /// What it may be used for.
    pub status: KmsConfigStatus,
    /// Which KMS and which key.
    #[serde(flatten)]
    pub kms: KmsSettings,
}

/// The KMS behind a configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum KmsSettings {
    /// A key in the local keystore.
    Local {
        /// The key's name in the keystore.
        key: String,
    },
    /// A vendor-managed key held by the configuration itself: 32 random bytes, standard
    /// base64. The broker generates one per `POST /api/v1/tenants/{id}/vendor-keys` and seals it
    /// to the proxy fleet, so it exists only sealed in the broker and in the proxies' memory
    /// (docs/vendor-keys.md). Wrapped keys use the local keystore's layout, as version 1.
    Vendor {
        /// The key material.
        key: keyhold_kms::SecretSource,
        /// A label for people (not used).
        #[serde(default)]
        label: Option<String>,
    },
    /// AWS KMS (docs/kms/aws.md).
    #[cfg(feature = "aws")]
    Aws(keyhold_kms::aws::AwsConfig),
    /// HashiCorp Vault / OpenBao Transit (docs/kms/vault.md).
    #[cfg(feature = "vault")]
    Vault(keyhold_kms::vault::VaultConfig),
    /// A PKCS#11 HSM (docs/kms/pkcs11.md).
    #[cfg(feature = "pkcs11")]
    Pkcs11(keyhold_kms::pkcs11::Pkcs11Config),
    /// A KMIP server (docs/kms/kmip.md).
    #[cfg(feature = "kmip")]
    Kmip(keyhold_kms::kmip::KmipConfig),
    /// Google Cloud KMS (docs/kms/gcp.md).
    #[cfg(feature = "gcp")]
    Gcp(keyhold_kms::gcp::GcpConfig),
    /// Azure Key Vault / Managed HSM (docs/kms/azure.md).
    #[cfg(feature = "azure")]
    Azure(keyhold_kms::azure::AzureConfig),
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 32804))
}
fn default_max_connections() -> usize {
    keyhold_listen::connections::DEFAULT_MAX_CONNECTIONS
}
fn default_idle_timeout_ms() -> u64 {
    keyhold_listen::connections::DEFAULT_IDLE_TIMEOUT_MS
}
fn default_request_timeout_ms() -> u64 {
    keyhold_listen::connections::DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch_size() -> usize {
    10_000
}
fn default_batch_concurrency() -> usize {
    32
}
fn default_kms_timeout_ms() -> u64 {
    10_000
}
fn default_kms_attempt_timeout_ms() -> u64 {
    3_000
}
fn default_kms_retries() -> u32 {
    2
}
fn default_kms_breaker_failures() -> u32 {
    5
}
fn default_kms_breaker_cooldown_ms() -> u64 {
    5_000
}
fn default_reload_ms() -> u64 {
    0
}
fn default_true() -> bool {
    true
}
fn default_lease_renew_interval_ms() -> u64 {
    300_000
}
fn default_lease_max_hold_ms() -> u64 {
    3_600_000
}
fn default_lease_cache_capacity() -> u64 {
    4096
}

/// Shortest renewal interval accepted, in ms.
pub const MIN_LEASE_RENEW_INTERVAL_MS: u64 = 100;

impl ProxyConfig {
    /// Reads, overrides from the environment, and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Self::from_toml(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML without reading the environment or validating.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies `KEYHOLD_*` overrides from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = env(LISTEN_ENV) {
            self.listen = listen.parse().map_err(|_| {
                ConfigError::Invalid(format!("{LISTEN_ENV}={listen:?} is not an address"))
            })?;
        }
        if let Some(key) = env(API_KEY_ENV) {
            self.api_key = Some(key);
            self.api_key_file = None;
        }
        if let Some(key) = env(API_KEY_2_ENV) {
            self.api_key_2 = Some(key);
            self.api_key_2_file = None;
        }
        Ok(())
    }

    /// Sets the API key directly (for embedding and tests).
    pub fn set_api_key(&mut self, key: impl Into<String>) {
        self.api_key = Some(key.into());
        self.api_key_file = None;
    }

    /// Resolves a path relative to the configuration file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_owned() } else { self.base_dir.join(path) }
    }

    /// The accepted API keys (current first), read from their files if needed.
    pub fn api_keys(&self) -> Result<Vec<Zeroizing<String>>, ConfigError> {
        let mut keys = Vec::new();
        for (inline, file, name) in [
            (&self.api_key, &self.api_key_file, "api key"),
            (&self.api_key_2, &self.api_key_2_file, "second api key"),
        ] {
            let key = match (inline, file) {
                (Some(k), _) => Some(Zeroizing::new(k.trim().to_owned())),
                (None, Some(f)) => {
                    let path = self.resolve(f);
                    let text = Zeroizing::new(
                        std::fs::read_to_string(&path)
                            .map_err(|source| ConfigError::Read { path, source })?,
                    );
                    Some(Zeroizing::new(text.trim().to_owned()))
                }
                (None, None) => None,
            };
            if let Some(key) = key {
                if key.len() < MIN_API_KEY_LEN {
                    return Err(ConfigError::Invalid(format!(
                        "the {name} must be at least {MIN_API_KEY_LEN} bytes"
                    )));
                }
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "no API key: set api_key_file in the configuration or {API_KEY_ENV}"
            )));
        }
        Ok(keys)
    }

    /// How long a KMS call may take.
    pub fn kms_timeout(&self) -> Duration {
        Duration::from_millis(self.kms_timeout_ms)
    }

    /// Timeouts and retries of remote KMS calls.
    pub fn kms_retry_policy(&self) -> keyhold_kms::resilience::RetryPolicy {
        keyhold_kms::resilience::RetryPolicy {
            // An attempt never outlives the whole operation's deadline.
            attempt_timeout: Duration::from_millis(
                self.kms_attempt_timeout_ms.min(self.kms_timeout_ms),
            ),
            max_retries: self.kms_retries,
            ..keyhold_kms::resilience::RetryPolicy::default()
        }
    }

    /// When a remote KMS configuration's circuit opens.
    pub fn kms_breaker_policy(&self) -> keyhold_kms::resilience::BreakerPolicy {
        keyhold_kms::resilience::BreakerPolicy {
            failure_threshold: self.kms_breaker_failures,
            cooldown: Duration::from_millis(self.kms_breaker_cooldown_ms),
        }
    }

    /// The leasing policy of `tenant`, or `None` if it does not lease keys.
    pub fn lease_policy(&self, tenant: &TenantConfig) -> Option<crate::lease::LeasePolicy> {
        let defaults = &self.leasing;
        if !tenant.leasing.enabled.unwrap_or(defaults.enabled) {
            return None;
        }
        Some(crate::lease::LeasePolicy {
            renew_interval: Duration::from_millis(
                tenant.leasing.renew_interval_ms.unwrap_or(defaults.renew_interval_ms),
            ),
            max_hold: Duration::from_millis(
                tenant.leasing.max_hold_ms.unwrap_or(defaults.max_hold_ms),
            ),
            cache_capacity: defaults.cache_capacity,
        })
    }

    /// The listeners' bounds of `max_connections`, `idle_timeout_ms` and `request_timeout_ms`,
    /// if valid.
    pub fn connection_limits(&self) -> Result<keyhold_listen::ConnectionLimits, String> {
        keyhold_listen::ConnectionLimits::from_settings(
            self.max_connections,
            self.idle_timeout_ms,
            self.request_timeout_ms,
        )
    }

    /// Checks everything that can be checked without touching a KMS.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes must be at least 1024".into());
        }
        self.connection_limits().map_err(ConfigError::Invalid)?;
        if self.max_batch_size == 0 || self.batch_concurrency == 0 || self.kms_timeout_ms == 0 {
            return invalid(
                "max_batch_size, batch_concurrency and kms_timeout_ms must be positive".into(),
            );
        }
        if self.kms_attempt_timeout_ms == 0 {
            return invalid("kms_attempt_timeout_ms must be positive".into());
        }
        if self.kms_retries > 10 {
            return invalid("kms_retries must be at most 10".into());
        }
        self.api_keys()?;
        if let Some(broker) = &self.broker {
            if !self.tenants.is_empty() {
                return invalid(
                    "with [broker], tenants come from the broker: remove the [[tenants]] entries"
                        .into(),
                );
            }
            if broker.public_keys.is_empty() || broker.fleet_key_files.is_empty() {
                return invalid(
                    "[broker] needs public_keys (the broker's signing keys) and fleet_key_files"
                        .into(),
                );
            }
            if broker.poll_interval_ms < 100 {
                return invalid("[broker] poll_interval_ms must be at least 100".into());
            }
        }
        if self.leasing.cache_capacity == 0 {
            return invalid("leasing.cache_capacity must be positive".into());
        }
        self.rekey.validate()?;
        let mut tenant_ids = HashSet::new();
        let mut config_ids: HashMap<i32, &str> = HashMap::new();
        for tenant in &self.tenants {
            if validate_tenant_id(&tenant.id).is_err() {
                return invalid(format!("tenant id {:?} must be 1 to 1024 bytes", tenant.id));
            }
            if !tenant_ids.insert(tenant.id.as_str()) {
                return invalid(format!("tenant {:?} is listed twice", tenant.id));
            }
            if let Some(policy) = self.lease_policy(tenant) {
                let (renew, hold) =
                    (policy.renew_interval.as_millis(), policy.max_hold.as_millis());
                if renew < u128::from(MIN_LEASE_RENEW_INTERVAL_MS) || hold < renew {
                    return invalid(format!(
                        "tenant {:?}: the lease renewal interval ({renew} ms) must be at least {MIN_LEASE_RENEW_INTERVAL_MS} ms and at most the hold time ({hold} ms)",
                        tenant.id
                    ));
                }
            }
            let primaries =
                tenant.kms_configs.iter().filter(|c| c.status == KmsConfigStatus::Primary).count();
            if primaries > 1 {
                return invalid(format!(
                    "tenant {:?} has {primaries} primary KMS configurations; at most one",
                    tenant.id
                ));
            }
            for config in &tenant.kms_configs {
                if config.id <= 0 {
                    return invalid(format!(
                        "KMS configuration ids must be positive (tenant {:?})",
                        tenant.id
                    ));
                }
                if let Some(other) = config_ids.insert(config.id, &tenant.id) {
                    return invalid(format!(
                        "KMS configuration id {} is used by tenants {other:?} and {:?}; ids are unique",
                        config.id, tenant.id
                    ));
                }
                if matches!(config.kms, KmsSettings::Local { .. }) && self.local_keystore.is_none()
                {
                    return invalid(format!(
                        "tenant {:?} uses a local key but there is no [local_keystore] section",
                        tenant.id
                    ));
                }
            }
            if !tenant.audit_sinks.is_empty() && self.audit.is_none() {
                return invalid(format!(
                    "tenant {:?} has audit sinks but there is no [audit] section (sinks are fed from its spool)",
                    tenant.id
                ));
            }
            let vendor = self.audit.iter().flat_map(|a| &a.vendor_sinks);
            let mut names = HashSet::new();
            for sink in vendor.chain(&tenant.audit_sinks) {
                if !names.insert(sink.name.as_str()) {
                    return invalid(format!(
                        "tenant {:?}: two audit sinks are named {:?} (counting the vendor's)",
                        tenant.id, sink.name
                    ));
                }
            }
        }
        if let Some(audit) = &self.audit {
            let sinks =
                audit.vendor_sinks.iter().chain(self.tenants.iter().flat_map(|t| &t.audit_sinks));
            for sink in sinks {
                let plain = (1..=64).contains(&sink.name.len())
                    && sink
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !plain {
                    return invalid(format!(
                        "audit sink name {:?}: 1 to 64 letters, digits, '-' or '_'",
                        sink.name
                    ));
                }
                if sink.settings.needs_credential() && sink.secret.is_none() {
                    return invalid(format!(
                        "audit sink {:?} ({}) needs a `secret`",
                        sink.name,
                        sink.settings.kind()
                    ));
                }
            }
            if audit.retry_max_ms == 0 {
                return invalid("[audit] retry_max_ms must be positive".into());
            }
            if audit.max_backlog == 0 {
                return invalid("[audit] max_backlog must be positive".into());
            }
            if audit.shutdown_delivery_ms > 600_000 {
                return invalid(
                    "[audit] shutdown_delivery_ms must be at most 600000 (10 minutes)".into(),
                );
            }
            if audit.commit_window_us > 100_000 {
                return invalid("[audit] commit_window_us must be at most 100000 (0.1 s)".into());
            }
            if audit.segment_bytes < 4096 {
                return invalid("[audit] segment_bytes must be at least 4096".into());
            }
            if audit.checkpoint_interval_ms < 10 || audit.checkpoint_every == 0 {
                return invalid(
                    "[audit] checkpoint_interval_ms must be at least 10 and checkpoint_every positive"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        listen = "127.0.0.1:0"
        api_key = "0123456789abcdef0123"
        [local_keystore]
        path = "ks"
        root_key_file = "root.key"
        [[tenants]]
        id = "a"
        [[tenants.kms_configs]]
        id = 1
        status = "primary"
        type = "local"
        key = "a"
        [[tenants.kms_configs]]
        id = 2
        status = "active"
        type = "local"
        key = "a-old"
    "#;

    /// Every configuration block of docs/kms/*.md parses, as the type its page is about.
    #[cfg(all(
        feature = "aws",
        feature = "vault",
        feature = "pkcs11",
        feature = "kmip",
        feature = "gcp",
        feature = "azure"
    ))]
    #[test]
    fn the_kms_pages_configuration_blocks_parse() {
        let pages = [
            ("aws", include_str!("../../../docs/kms/aws.md")),
            ("vault", include_str!("../../../docs/kms/vault.md")),
            ("pkcs11", include_str!("../../../docs/kms/pkcs11.md")),
            ("kmip", include_str!("../../../docs/kms/kmip.md")),
            ("gcp", include_str!("../../../docs/kms/gcp.md")),
            ("azure", include_str!("../../../docs/kms/azure.md")),
        ];
        for (kind, page) in pages {
            let blocks: Vec<&str> = page
                .split("```toml\n")
                .skip(1)
                .filter_map(|rest| rest.split("```").next())
                .filter(|block| block.contains("[[tenants.kms_configs]]"))
                .collect();
            assert!(!blocks.is_empty(), "docs/kms/{kind}.md has no configuration block");
            for block in blocks {
                let tenant =
                    if block.contains("[[tenants]]") { "" } else { "[[tenants]]\nid = \"t\"\n" };
                let text = format!("api_key = \"0123456789abcdef0123\"\n{tenant}{block}");
                let config = ProxyConfig::from_toml(&text)
                    .unwrap_or_else(|e| panic!("docs/kms/{kind}.md block does not parse: {e}"));
                let parsed = format!("{:?}", config.tenants[0].kms_configs[0].kms);
                assert!(parsed.to_lowercase().starts_with(kind), "{kind}: {parsed}");
            }
        }
    }

    /// The complete example of docs/audit.md is a valid configuration, with every sink type.
    #[test]
    fn the_audit_page_example_parses() {
        let page = include_str!("../../../docs/audit.md");
        let block = page
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .find(|block| block.contains("[[audit.vendor_sinks]]"))
            .unwrap();
        // (The API key file does not exist here.)
        let block = block
            .replace("api_key_file = \"secrets/api-key\"", "api_key = \"0123456789abcdef0123\"");
        let config = ProxyConfig::from_toml(&block).unwrap();
        config.validate().unwrap();
        let kinds: Vec<&str> = config
            .tenants
            .iter()
            .flat_map(|t| &t.audit_sinks)
            .chain(&config.audit.as_ref().unwrap().vendor_sinks)
            .map(|s| s.settings.kind())
            .collect();
        for kind in ["syslog", "opensearch", "splunk", "datadog", "webhook", "file"] {
            assert!(kinds.contains(&kind), "{kind} missing from docs/audit.md's example");
        }
        assert_eq!(config.audit.as_ref().unwrap().durability, Durability::Synced);
        // The other durability parses; anything else is refused, naming the key.
        let written = block.replace("durability = \"synced\"", "durability = \"written\"");
        let config = ProxyConfig::from_toml(&written).unwrap();
        assert_eq!(config.audit.as_ref().unwrap().durability, Durability::Written);
        let wrong = block.replace("durability = \"synced\"", "durability = \"fsync\"");
        let error = ProxyConfig::from_toml(&wrong).unwrap_err().to_string();
        assert!(error.contains("unknown variant `fsync`"), "{error}");
    }

    /// The configuration shown in README.md is a valid one.
    #[cfg(feature = "aws")]
    #[test]
    fn the_readme_configuration_parses() {
        // Both TOML blocks of the README: tenants from a broker, and from the file.
        let readme = include_str!("../../../README.md");
        let mut blocks = readme.split("```toml\n").skip(1).map(|b| &b[..b.find("```").unwrap()]);
        let broker = ProxyConfig::from_toml(blocks.next().unwrap()).unwrap();
        assert!(broker.broker.is_some());
        let config = ProxyConfig::from_toml(blocks.next().unwrap()).unwrap();
        assert_eq!(config.tenants.len(), 2);
        assert!(matches!(config.tenants[1].kms_configs[0].kms, KmsSettings::Aws(_)));
    }

    /// The README's commented `[tls]` lines make a valid configuration once uncommented, and a
    /// misspelt `[tls]` setting is refused.
    #[cfg(feature = "aws")]
    #[test]
    fn the_readme_tls_lines_parse_once_uncommented() {
        let readme = include_str!("../../../README.md");
        let block = readme.split("```toml\n").nth(2).unwrap();
        let block = &block[..block.find("```").unwrap()];
        let tls_lines = ["# [tls]", "# cert_file", "# key_file", "# client_ca_file"];
        let uncommented: Vec<&str> = block
            .lines()
            .map(|l| if tls_lines.iter().any(|t| l.starts_with(t)) { &l[2..] } else { l })
            .collect();
        let config = ProxyConfig::from_toml(&uncommented.join("\n")).unwrap();
        let tls = config.tls.expect("the README shows [tls]");
        assert_eq!(tls.cert_file, Path::new("proxy.crt"));
        assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("apps-ca.crt")));
        let typo = "api_key = \"0123456789abcdef0123\"\n[tls]\ncert_file = \"a\"\nkey_file = \"b\"\nca_file = \"c\"\n";
        let err = ProxyConfig::from_toml(typo).unwrap_err().to_string();
        assert!(err.contains("ca_file"), "{err}");
    }

    #[cfg(feature = "vault")]
    #[test]
    fn remote_kms_settings_parse_and_typos_are_refused() {
        let entry = |extra: &str| {
            format!(
                r#"
                api_key = "0123456789abcdef0123"
                [[tenants]]
                id = "t"
                [[tenants.kms_configs]]
                id = 1
                status = "primary"
                type = "vault"
                address = "http://127.0.0.1:8200"
                key = "k"
                token = {{ env = "VAULT_TOKEN" }}
                {extra}
                "#
            )
        };
        let config = ProxyConfig::from_toml(&entry("")).unwrap();
        assert!(matches!(config.tenants[0].kms_configs[0].kms, KmsSettings::Vault(_)));
        let err = ProxyConfig::from_toml(&entry(r#"namespcae = "x""#)).unwrap_err();
        assert!(err.to_string().contains("namespcae"), "{err}");
        let err = ProxyConfig::from_toml(&entry("").replace("vault", "vualt")).unwrap_err();
        assert!(err.to_string().contains("vualt"), "{err}");
    }

    #[test]
    fn parses_and_validates() {
        let config = ProxyConfig::from_toml(SAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.tenants[0].kms_configs[1].status, KmsConfigStatus::Active);
        assert_eq!(config.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(config.api_keys().unwrap().len(), 1);
    }

    #[test]
    fn rejects_inconsistent_configs() {
        let dup_id = SAMPLE.replace("id = 2", "id = 1");
        assert!(ProxyConfig::from_toml(&dup_id).unwrap().validate().is_err());
        let two_primaries = SAMPLE.replace("status = \"active\"", "status = \"primary\"");
        assert!(ProxyConfig::from_toml(&two_primaries).unwrap().validate().is_err());
        let short_key = SAMPLE.replace("0123456789abcdef0123", "short");
        assert!(ProxyConfig::from_toml(&short_key).unwrap().validate().is_err());
        let zero_id = SAMPLE.replace("id = 2", "id = 0");
        assert!(ProxyConfig::from_toml(&zero_id).unwrap().validate().is_err());
        for (setting, message) in [
            ("max_connections = 0", "max_connections must be positive"),
            ("idle_timeout_ms = 0", "idle_timeout_ms must be between"),
            ("request_timeout_ms = 100", "request_timeout_ms must be between"),
        ] {
            let top = SAMPLE.replace("listen = ", &format!("{setting}\n        listen = "));
            let err = ProxyConfig::from_toml(&top).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(message), "{setting}: {err}");
        }
        assert!(ProxyConfig::from_toml("unknown_field = 1").is_err());
        assert!(
            ProxyConfig::from_toml(&SAMPLE.replace("key = \"a-old\"", "key = \"a-old\"\nkye = 1"))
                .is_err()
        );
        assert!(
            ProxyConfig::from_toml(
                &SAMPLE.replace("type = \"local\"\n        key = \"a\"", "type = \"nope\"")
            )
            .is_err()
        );
    }

    #[test]
    fn rekey_policy_defaults_to_same_tenant_only() {
        let config = ProxyConfig::from_toml(SAMPLE).unwrap();
        assert!(config.rekey.allows("a", "a"));
        assert!(!config.rekey.allows("a", "b"));
        let text = format!(
            "{SAMPLE}\n[rekey]\nallow = [ {{ from = \"a-old\", to = \"a\" }}, {{ from = \"x\", to = \"*\" }} ]\n"
        );
        let config = ProxyConfig::from_toml(&text).unwrap();
        config.validate().unwrap();
        assert!(config.rekey.allows("a-old", "a"));
        assert!(!config.rekey.allows("a", "a-old"), "pairs have a direction");
        assert!(config.rekey.allows("x", "anyone"));
        assert!(!config.rekey.allows("y", "anyone"));
        let typo = format!("{SAMPLE}\n[rekey]\nallow = [ {{ form = \"a\", to = \"b\" }} ]\n");
        assert!(ProxyConfig::from_toml(&typo).is_err());
        let empty = format!("{SAMPLE}\n[rekey]\nallow = [ {{ from = \"\", to = \"b\" }} ]\n");
        assert!(ProxyConfig::from_toml(&empty).unwrap().validate().is_err());
    }

    #[test]
    fn env_overrides() {
        let mut config = ProxyConfig::from_toml(SAMPLE).unwrap();
        config
            .apply_env(|name| match name {
                LISTEN_ENV => Some("127.0.0.1:9999".into()),
                API_KEY_2_ENV => Some("second-key-0123456789".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.api_keys().unwrap().len(), 2);
        assert!(config.apply_env(|n| (n == LISTEN_ENV).then(|| "nope".into())).is_err());
    }
}
