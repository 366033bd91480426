//! Creates a self-contained data directory for `keyhold up`: a root key, a local keystore with
//! one master key per tenant, an API key and a proxy configuration that uses them.
//!
//! ```text
//! DIR/
//!   keyhold.toml   proxy configuration (edit it to add tenants)
//!   root.key       root key of the keystore (0600)
//!   keystore       the encrypted local keystore
//!   api-key        the API key clients send as `Authorization: cmk <key>` (0600)
//! ```
//!
//! With a broker ([`init_data_dir_with_broker`]) tenants live in the broker instead, and the
//! directory also holds:
//!
//! ```text
//!   broker.toml              the broker's configuration (its database: broker.db, SQLite)
//!   broker-signing.key(.pub) the broker's snapshot signing key (0600) and its public half
//!   fleet.key(.pub)          the proxies' X25519 key that opens sealed credentials (0600)
//!   proxy-token              what the proxy presents to the broker (0600)
//!   vendor-api-key           the Vendor Bridge API key (0600)
//! ```
//!
//! A second run finds `keyhold.toml` and changes nothing.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use keyhold_core::random::random_array;
use keyhold_kms::local::{Keystore, KeystoreError, generate_root_key_file};
use zeroize::Zeroizing;

/// File name of the configuration inside a data directory.
pub const CONFIG_FILE: &str = "keyhold.toml";
/// File name of the API key inside a data directory.
pub const API_KEY_FILE: &str = "api-key";
/// File name of the broker's configuration inside a data directory.
pub const BROKER_CONFIG_FILE: &str = "broker.toml";
/// File name of the Vendor Bridge API key inside a data directory.
pub const VENDOR_API_KEY_FILE: &str = "vendor-api-key";

/// Why a data directory could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The keystore could not be created.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// The directory holds keys but no configuration; refusing keeps those keys.
    #[error(
        "{file} exists but {dir}/keyhold.toml does not: restore the configuration, or move the \
         directory away to start afresh (its keys may protect data; they are not overwritten)"
    )]
    KeysWithoutConfig {
        /// The data directory.
        dir: PathBuf,
        /// The key file found.
        file: PathBuf,
    },
    /// No randomness.
    #[error("the operating system's random number generator failed")]
    Random,
}

/// A data directory, created or found.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub dir: PathBuf,
    /// Its configuration file.
    pub config_path: PathBuf,
    /// Its API key file.
    pub api_key_path: PathBuf,
    /// True if this call created it.
    pub created: bool,
    /// The broker's configuration file, when tenants live in a broker.
    pub broker_config_path: Option<PathBuf>,
}

/// Creates `dir` with one tenant per entry of `tenants` (each with its own local master key,
/// as KMS configuration 1, 2, …), unless `dir/keyhold.toml` already exists.
pub fn init_data_dir(
    dir: &Path,
    tenants: &[&str],
    listen: &str,
) -> Result<DataDir, BootstrapError> {
    init(dir, tenants, listen, None)
}

/// Like [`init_data_dir`], but tenants live in a Configuration Broker listening on
/// `broker_listen`: the directory gets the broker's configuration and keys, and the proxy's
/// configuration pulls from it. Only the local master keys of `tenants` are made here; the
/// caller creates the tenants in the broker (`keyhold up` does).
pub fn init_data_dir_with_broker(
    dir: &Path,
    tenants: &[&str],
    listen: &str,
    broker_listen: &str,
) -> Result<DataDir, BootstrapError> {
    init(dir, tenants, listen, Some(broker_listen))
}

fn init(
    dir: &Path,
    tenants: &[&str],
    listen: &str,
    broker_listen: Option<&str>,
) -> Result<DataDir, BootstrapError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BootstrapError::Io { path, source }
    };
    let config_path = dir.join(CONFIG_FILE);
    let api_key_path = dir.join(API_KEY_FILE);
    let broker_config_path = dir.join(BROKER_CONFIG_FILE);
    if config_path.exists() {
        let broker_config_path = broker_config_path.exists().then_some(broker_config_path);
        return Ok(DataDir {
            dir: dir.to_owned(),
            config_path,
            api_key_path,
            created: false,
            broker_config_path,
        });
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let root_path = dir.join("root.key");
    let keystore_path = dir.join("keystore");
    // Keys without a configuration: a half-finished first run, or a configuration deleted by
    // hand. Either way the keys may protect data, so never overwrite them.
    for key_file in [&root_path, &keystore_path] {
        if key_file.exists() {
            return Err(BootstrapError::KeysWithoutConfig {
                dir: dir.to_owned(),
                file: key_file.clone(),
            });
        }
    }
    let root = generate_root_key_file(&root_path)?;
    let keystore = Keystore::create(&keystore_path, root)?;

    // Standard base64: IronCore's alloy SDK refuses API keys that are not base64 of >= 12 bytes.
    write_random_key(&api_key_path)?;

    let mut config = format!(
        "# Keyhold proxy configuration, created by `keyhold up`. Edit and restart to add tenants.\n\
         # Reference: docs/configuration.md\n\
         listen = \"{listen}\"\n\
         api_key_file = \"{API_KEY_FILE}\"\n\n\
         [leasing]\n\
         # Key leasing (docs/leasing.md): new data keys are wrapped with a lease key renewed from\n\
         # the tenant's KMS. The demo renews every 2 s, so a key disabled with `keyhold keys\n\
         # disable` is refused within 2 s; the default (and production) interval is 5 minutes.\n\
         renew_interval_ms = 2000\n\n\
         [audit]\n\
         # Every key access, written and synced here before it is answered: one hash-chained\n\
         # JSON-lines file per tenant (check one with `keyhold audit verify`). docs/audit.md\n\
         spool_dir = \"audit\"\n\
         # Each file gets a checkpoint signed with this proxy's key (audit/audit-signing.key;\n\
         # the public half is audit/audit-signing.pub) every second while events come; the\n\
         # production default is every minute.\n\
         checkpoint_interval_ms = 1000\n\n\
         [local_keystore]\n\
         path = \"keystore\"\n\
         root_key_file = \"root.key\"\n"
    );
    for (index, tenant) in tenants.iter().enumerate() {
        keystore.create_key(tenant)?;
        if broker_listen.is_some() {
            continue;
        }
        let id = index + 1;
        config.push_str(&format!(
            "\n[[tenants]]\nid = \"{tenant}\"\n\n[[tenants.kms_configs]]\nid = {id}\nstatus = \"primary\"\ntype = \"local\"\nkey = \"{tenant}\"\n"
        ));
    }
    let broker_config_path = match broker_listen {
        None => None,
        Some(broker_listen) => {
            config.push_str(&broker_files(dir, broker_listen)?);
            Some(broker_config_path)
        }
    };
    // The configuration is written last: its presence means the directory is complete.
    let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    fs::write(&tmp, config).map_err(io(&tmp))?;
    fs::rename(&tmp, &config_path).map_err(io(&config_path))?;
    Ok(DataDir {
        dir: dir.to_owned(),
        config_path,
        api_key_path,
        created: true,
        broker_config_path,
    })
}

/// Writes the broker's keys and configuration; returns the proxy's `[broker]` section.
fn broker_files(dir: &Path, broker_listen: &str) -> Result<String, BootstrapError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BootstrapError::Io { path, source }
    };
    let fleet =
        keyhold_core::seal::FleetSecretKey::generate().map_err(|_| BootstrapError::Random)?;
    let fleet_path = dir.join("fleet.key");
    write_private(&fleet_path, format!("{}\n", fleet.to_base64().as_str()).as_bytes())
        .map_err(io(&fleet_path))?;
    let fleet_public = fleet.public_key().to_base64();
    let fleet_pub_path = dir.join("fleet.pub");
    fs::write(&fleet_pub_path, format!("{fleet_public}\n")).map_err(io(&fleet_pub_path))?;

    let signing = keyhold_core::snapshot::SnapshotSigningKey::generate()
        .map_err(|_| BootstrapError::Random)?;
    let signing_path = dir.join("broker-signing.key");
    let der = signing.to_pkcs8().map_err(|_| BootstrapError::Random)?;
    write_private(&signing_path, &der).map_err(io(&signing_path))?;
    let signing_public = signing.public_key().to_base64();
    let signing_pub_path = dir.join("broker-signing.key.pub");
    fs::write(&signing_pub_path, format!("{signing_public}\n")).map_err(io(&signing_pub_path))?;

    write_random_key(&dir.join("proxy-token"))?;
    write_random_key(&dir.join(VENDOR_API_KEY_FILE))?;

    let broker_config = format!(
        "# Keyhold Configuration Broker, created by `keyhold up`. Reference: docs/broker.md\n\
         listen = \"{broker_listen}\"\n\
         # Relative paths (and a relative SQLite file) are relative to this file's directory.\n\
         database_url = \"sqlite://broker.db?mode=rwc\"\n\
         signing_key_file = \"broker-signing.key\"\n\
         # Credentials are sealed in the browser to this key; only the proxies hold fleet.key.\n\
         fleet_public_keys = [\"{fleet_public}\"]\n\
         vendor_api_key_file = \"{VENDOR_API_KEY_FILE}\"\n\
         proxy_token_file = \"proxy-token\"\n\
         # Every tenant created through the Vendor Bridge API gets its own vendor-managed key\n\
         # (docs/vendor-keys.md) unless the request says \"vendor_key\": false.\n\
         vendor_key_on_create = true\n"
    );
    let broker_path = dir.join(BROKER_CONFIG_FILE);
    fs::write(&broker_path, broker_config).map_err(io(&broker_path))?;
    Ok(format!(
        "\n[broker]\n\
         # Tenants come from the Configuration Broker (docs/broker.md): its signed snapshot is\n\
         # checked with the broker's public key and kept in broker-snapshot.json.\n\
         url = \"http://{broker_listen}\"\n\
         token_file = \"proxy-token\"\n\
         public_keys = [\"{signing_public}\"]\n\
         fleet_key_files = [\"fleet.key\"]\n\
         poll_interval_ms = 5000\n"
    ))
}

/// 32 random bytes, standard base64, in a new 0600 file.
fn write_random_key(path: &Path) -> Result<(), BootstrapError> {
    let bytes: [u8; 32] = random_array().map_err(|_| BootstrapError::Random)?;
    let key = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes));
    if path.exists() {
        fs::remove_file(path)
            .map_err(|source| BootstrapError::Io { path: path.to_owned(), source })?;
    }
    write_private(path, format!("{}\n", key.as_str()).as_bytes())
        .map_err(|source| BootstrapError::Io { path: path.to_owned(), source })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyConfig;

    #[test]
    fn creates_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = init_data_dir(&data, &["demo-tenant", "second"], "127.0.0.1:0").unwrap();
        assert!(first.created);
        let config = ProxyConfig::load(&first.config_path).unwrap();
        assert_eq!(config.tenants.len(), 2);
        assert_eq!(config.tenants[1].kms_configs[0].id, 2);
        // The demo leases keys, with a renewal interval short enough to show revocation.
        let policy = config.lease_policy(&config.tenants[0]).expect("leasing is on");
        assert_eq!(policy.renew_interval, std::time::Duration::from_secs(2));
        let key = fs::read_to_string(&first.api_key_path).unwrap();
        assert!(key.trim().len() >= 40);
        let again = init_data_dir(&data, &["demo-tenant"], "127.0.0.1:0").unwrap();
        assert!(!again.created);
        assert_eq!(fs::read_to_string(&again.api_key_path).unwrap(), key);
    }

    #[test]
    fn keys_without_a_configuration_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        init_data_dir(&data, &["demo-tenant"], "127.0.0.1:0").unwrap();
        let keystore_before = fs::read(data.join("keystore")).unwrap();
        fs::remove_file(data.join(CONFIG_FILE)).unwrap();

        let err = init_data_dir(&data, &["demo-tenant"], "127.0.0.1:0").unwrap_err();
        assert!(matches!(err, BootstrapError::KeysWithoutConfig { .. }), "{err}");
        assert!(err.to_string().contains("move the directory away"), "{err}");
        assert_eq!(fs::read(data.join("keystore")).unwrap(), keystore_before);
        assert!(data.join("root.key").exists());
    }
}
