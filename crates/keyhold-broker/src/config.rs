//! The broker's configuration (TOML-friendly), and reading the key files it names. This is the
//! only module that reads configuration and key files.
//!
//! ```toml
//! listen = "127.0.0.1:32805"
//! database_url = "sqlite://broker.db?mode=rwc"   # or DATABASE_URL; postgres://… in production
//! signing_key_file = "broker-signing.key"         # Ed25519 PKCS#8, created (0600) if missing
//! fleet_public_keys = ["<base64 X25519 public key>"]
//! vendor_api_key_file = "vendor-api-key"
//! proxy_token_file = "proxy-token"
//! secure_cookies = false                        # true behind TLS: the session cookie gets `Secure`
//!
//! [tls]                                         # optional: HTTPS (then cookies are `Secure`)
//! cert_file = "broker.crt"
//! key_file = "broker.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keyhold_core::seal::FleetPublicKey;
use keyhold_core::snapshot::SnapshotSigningKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::auth::{BearerKey, MIN_KEY_LEN};
use crate::error::BrokerError;

/// Environment variable overriding `database_url`.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// The broker's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to listen on (default `127.0.0.1:32805`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `sqlite://file?mode=rwc`, `sqlite::memory:` or `postgres://…` (default
    /// `sqlite://broker.db?mode=rwc`); the `DATABASE_URL` environment variable overrides it.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// The snapshot signing key (Ed25519, PKCS#8 DER); created with mode 0600 on first start if
    /// missing, its public half written beside it as `<file>.pub` (base64).
    pub signing_key_file: PathBuf,
    /// The fleet public keys (base64 X25519) credentials may be sealed to; the first is the one
    /// `GET /api/v1/fleet-key` hands out.
    #[serde(default)]
    pub fleet_public_keys: Vec<String>,
    /// File holding the Vendor Bridge API key (at least 16 bytes; surrounding whitespace
    /// ignored).
    pub vendor_api_key_file: PathBuf,
    /// File holding the token proxies present to pull snapshots (at least 16 bytes).
    pub proxy_token_file: PathBuf,
    /// Largest request body (default 1 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Whether the session cookie is marked `Secure` (set it when browsers reach the broker
    /// over TLS, directly or through a proxy; default false).
    #[serde(default)]
    pub secure_cookies: bool,
    /// Whether `POST /api/v1/tenants` gives each new tenant its own vendor-managed key (a KMS
    /// configuration of type `vendor`, primary) unless the request says `"vendor_key": false`
    /// (default false; `keyhold up` sets it). Needs `fleet_public_keys`.
    #[serde(default)]
    pub vendor_key_on_create: bool,
    /// Most client connections open at once (default 10,000); further clients wait.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed (default 5 min;
    /// 1 s to 1 day). Longer than a proxy's long poll.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Longest a client may take to send one request (its first byte to its last, no answer
    /// in between; default 1 min, 1 s to 1 day); a slower one has its connection closed. A
    /// proxy's long poll is a request sent at once, then waited on: it does not count.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// `[tls]`: serve HTTPS with this certificate, optionally requiring client certificates of
    /// a CA (the proxy's `[tls]` settings, docs/broker.md). Without it, plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<keyhold_listen::TlsConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 32805))
}
fn default_database_url() -> String {
    "sqlite://broker.db?mode=rwc".to_owned()
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
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

impl BrokerConfig {
    /// A configuration with the defaults and these files.
    pub fn new(
        signing_key_file: PathBuf,
        vendor_api_key_file: PathBuf,
        proxy_token_file: PathBuf,
    ) -> Self {
        Self {
            listen: default_listen(),
            database_url: default_database_url(),
            signing_key_file,
            fleet_public_keys: Vec::new(),
            vendor_api_key_file,
            proxy_token_file,
            max_body_bytes: default_max_body_bytes(),
            secure_cookies: false,
            vendor_key_on_create: false,
            max_connections: default_max_connections(),
            idle_timeout_ms: default_idle_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            tls: None,
        }
    }

    /// The listener's bounds of `max_connections`, `idle_timeout_ms` and `request_timeout_ms`.
    pub fn connection_limits(&self) -> Result<keyhold_listen::ConnectionLimits, BrokerError> {
        keyhold_listen::ConnectionLimits::from_settings(
            self.max_connections,
            self.idle_timeout_ms,
            self.request_timeout_ms,
        )
        .map_err(BrokerError::Config)
    }

    /// Whether the session cookie is marked `Secure`: asked for, or served over TLS.
    pub fn effective_secure_cookies(&self) -> bool {
        self.secure_cookies || self.tls.is_some()
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, BrokerError> {
        toml::from_str(text).map_err(|e| BrokerError::Config(e.to_string()))
    }

    /// The database URL, `DATABASE_URL` first.
    pub fn effective_database_url(&self) -> String {
        std::env::var(DATABASE_URL_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.database_url.clone())
    }

    /// The fleet public keys, parsed.
    pub fn fleet_keys(&self) -> Result<Vec<FleetPublicKey>, BrokerError> {
        self.fleet_public_keys
            .iter()
            .map(|k| {
                FleetPublicKey::from_base64(k)
                    .map_err(|e| BrokerError::Config(format!("fleet_public_keys: {e}")))
            })
            .collect()
    }
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> BrokerError + '_ {
    move |source| BrokerError::File { path: path.to_owned(), source }
}

/// Reads a bearer key or token file.
pub fn read_bearer_key(path: &Path, what: &str) -> Result<BearerKey, BrokerError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(file_error(path))?);
    let trimmed = bytes.trim_ascii();
    BearerKey::new(trimmed).ok_or_else(|| {
        BrokerError::Config(format!(
            "{what} in {} must be at least {MIN_KEY_LEN} bytes",
            path.display()
        ))
    })
}

/// Reads the signing key, or creates it (mode 0600) with its `.pub` beside it.
pub fn load_or_create_signing_key(path: &Path) -> Result<SnapshotSigningKey, BrokerError> {
    let signing = |e: keyhold_core::snapshot::SnapshotError| BrokerError::Signing(e.to_string());
    let key = match std::fs::read(path) {
        Ok(der) => {
            let der = Zeroizing::new(der);
            SnapshotSigningKey::from_pkcs8(&der).map_err(signing)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SnapshotSigningKey::generate().map_err(signing)?;
            let der = key.to_pkcs8().map_err(signing)?;
            write_private(path, &der)?;
            tracing::info!(path = %path.display(), key_id = %key.public_key().key_id(), "created the snapshot signing key");
            key
        }
        Err(e) => return Err(file_error(path)(e)),
    };
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let public = format!("{}\n", key.public_key().to_base64());
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        std::fs::write(&pub_path, public).map_err(file_error(&pub_path))?;
    }
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(file_error(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(file_error(path))
}
