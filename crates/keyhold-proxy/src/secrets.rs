//! Tenant secrets for deterministic encryption (docs/deterministic.md): where they are stored,
//! always wrapped by the tenant's KMS, and how the proxy finds them.
//!
//! A tenant secret belongs to one tenant, one *secret path* (an application's name for a group
//! of fields) and the KMS configuration that wrapped it. The proxy makes one, with the tenant's
//! primary configuration, the first time a secret path is used; *rotation* marks a path's
//! secrets rotated, and the next request makes a new one. Rotated secrets stay, so old fields
//! still decrypt and are still searched.
//!
//! Two stores: the Configuration Broker (its database; proxies converge on one secret per path
//! because the broker keeps at most one unrotated secret per tenant, path and configuration),
//! and, for a proxy without a broker, a JSON file beside its configuration, locked while it is
//! changed so that processes sharing it agree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerClient;

/// The longest secret path accepted (bytes).
pub const MAX_SECRET_PATH_LEN: usize = 1024;

/// One stored tenant secret: its wrapped bytes and what it belongs to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// The id written into every field the secret encrypts (unique across tenants).
    pub id: u32,
    /// The tenant.
    pub tenant_id: String,
    /// The secret path.
    pub secret_path: String,
    /// The KMS configuration that wrapped it.
    pub kms_config_id: i32,
    /// The KMS ciphertext (standard base64 in JSON).
    #[serde(with = "base64_bytes")]
    pub wrapped: Vec<u8>,
    /// Whether it has been rotated (kept for decryption and search only).
    #[serde(default)]
    pub rotated: bool,
}

impl core::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("secret_path", &self.secret_path)
            .field("kms_config_id", &self.kms_config_id)
            .field("rotated", &self.rotated)
            .finish_non_exhaustive()
    }
}

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretStoreError {
    /// The store could not be reached, read or written.
    #[error("the tenant-secret store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request (an unknown tenant, a disabled configuration).
    #[error("the tenant-secret store refused: {0}")]
    Refused(String),
}

/// Where tenant secrets are kept.
#[async_trait]
pub trait SecretStore: Send + Sync + core::fmt::Debug {
    /// Every secret (rotated or not) of `tenant` for each of `secret_paths`, by id ascending.
    async fn list(
        &self,
        tenant: &str,
        secret_paths: &[String],
    ) -> Result<Vec<StoredSecret>, SecretStoreError>;

    /// Stores a new secret unless the tenant already has an unrotated one for this path and
    /// configuration, which is then returned instead (`false`): the caller must use it.
    async fn create(
        &self,
        tenant: &str,
        secret_path: &str,
        kms_config_id: i32,
        wrapped: &[u8],
    ) -> Result<(StoredSecret, bool), SecretStoreError>;

    /// Forget cached lists (the configuration changed: a rotation may have happened).
    fn invalidate(&self) {}
}

/// Secrets in a JSON file: for a proxy without a broker (`keyhold proxy` with a configuration
/// file, or several proxies sharing one volume).
#[derive(Debug)]
pub struct FileSecretStore {
    path: PathBuf,
    /// The file as last read, with the modification time and length it had then.
    cached: Mutex<Option<(FileStamp, Arc<SecretsFile>)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    len: u64,
}

/// The file's content.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct SecretsFile {
    /// Format version (1).
    version: u32,
    /// Every secret, by id ascending.
    secrets: Vec<StoredSecret>,
}

impl FileSecretStore {
    /// A store in `path` (created on the first secret).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), cached: Mutex::new(None) }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks `tenant`'s unrotated secrets rotated (of `secret_path`, or of every path) and
    /// returns how many. The next request for such a path makes a new secret.
    pub fn rotate(
        &self,
        tenant: &str,
        secret_path: Option<&str>,
    ) -> Result<usize, SecretStoreError> {
        self.update(|file| {
            let mut count = 0;
            for secret in &mut file.secrets {
                if secret.tenant_id == tenant
                    && !secret.rotated
                    && secret_path.is_none_or(|p| p == secret.secret_path)
                {
                    secret.rotated = true;
                    count += 1;
                }
            }
            count
        })
    }

    /// Every secret of every tenant (for `keyhold secrets list`).
    pub fn all(&self) -> Result<Vec<StoredSecret>, SecretStoreError> {
        Ok(self.read()?.secrets.clone())
    }

    fn read(&self) -> Result<Arc<SecretsFile>, SecretStoreError> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => FileStamp { modified: meta.modified().map_err(io)?, len: meta.len() },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Arc::new(SecretsFile { version: 1, secrets: Vec::new() }));
            }
            Err(e) => return Err(io(e)),
        };
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, file)) = cached.as_ref()
            && *known == stamp
        {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(parse(&std::fs::read(&self.path).map_err(io)?, &self.path)?);
        *cached = Some((stamp, Arc::clone(&file)));
        Ok(file)
    }

    /// Runs `change` on the file's content under an exclusive lock and writes it back
    /// atomically (temporary file, fsync, rename).
    fn update<T>(&self, change: impl FnOnce(&mut SecretsFile) -> T) -> Result<T, SecretStoreError> {
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        lock.lock().map_err(io)?;
        let mut file = match std::fs::read(&self.path) {
            Ok(bytes) => parse(&bytes, &self.path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                SecretsFile { version: 1, secrets: Vec::new() }
            }
            Err(e) => return Err(io(e)),
        };
        let result = change(&mut file);
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| SecretStoreError::Unavailable(e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write as _;
            let mut out = std::fs::File::create(&tmp).map_err(io)?;
            out.write_all(&text).map_err(io)?;
            out.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is durable once the directory is synced.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        // `lock` is released when it is dropped, after the rename.
        drop(lock);
        Ok(result)
    }
}

fn parse(bytes: &[u8], path: &Path) -> Result<SecretsFile, SecretStoreError> {
    let file: SecretsFile = serde_json::from_slice(bytes).map_err(|e| {
        SecretStoreError::Unavailable(format!(
            "{} is not a tenant-secrets file: {e}",
            path.display()
        ))
    })?;
    if file.version != 1 {
        return Err(SecretStoreError::Unavailable(format!(
            "{}: unknown tenant-secrets file version {}",
            path.display(),
            file.version
        )));
    }
    Ok(file)
}

fn io(e: std::io::Error) -> SecretStoreError {
    SecretStoreError::Unavailable(e.to_string())
}

#[async_trait]
impl SecretStore for FileSecretStore {
    async fn list(
        &self,
        tenant: &str,
        secret_paths: &[String],
    ) -> Result<Vec<StoredSecret>, SecretStoreError> {
        // Small synchronous reads of a file that is normally cached; no blocking pool needed.
        let file = self.read()?;
        Ok(file
            .secrets
            .iter()
            .filter(|s| s.tenant_id == tenant && secret_paths.contains(&s.secret_path))
            .cloned()
            .collect())
    }

    async fn create(
        &self,
        tenant: &str,
        secret_path: &str,
        kms_config_id: i32,
        wrapped: &[u8],
    ) -> Result<(StoredSecret, bool), SecretStoreError> {
        let (tenant, secret_path, wrapped) =
            (tenant.to_owned(), secret_path.to_owned(), wrapped.to_vec());
        let store = FileSecretStore::new(self.path.clone());
        // Locking and fsync block: off the async workers.
        tokio::task::spawn_blocking(move || {
            store.update(|file| {
                if let Some(existing) = file.secrets.iter().find(|s| {
                    s.tenant_id == tenant
                        && s.secret_path == secret_path
                        && s.kms_config_id == kms_config_id
                        && !s.rotated
                }) {
                    return Ok((existing.clone(), false));
                }
                let id = file.secrets.iter().map(|s| s.id).max().unwrap_or(0).checked_add(1);
                let id = id.filter(|id| *id < 1 << 31).ok_or_else(|| {
                    SecretStoreError::Unavailable("no tenant secret ids are left".into())
                })?;
                let secret = StoredSecret {
                    id,
                    tenant_id: tenant,
                    secret_path,
                    kms_config_id,
                    wrapped,
                    rotated: false,
                };
                file.secrets.push(secret.clone());
                Ok((secret, true))
            })?
        })
        .await
        .map_err(|e| SecretStoreError::Unavailable(e.to_string()))?
    }
}

/// Secrets in the Configuration Broker, with the lists it returned kept for `list_ttl` (and
/// used beyond it while the broker cannot be reached).
#[derive(Debug)]
pub struct BrokerSecretStore {
    client: Arc<BrokerClient>,
    list_ttl: Duration,
    lists: Mutex<ListCache>,
}

/// (tenant, secret path) → when the list was fetched, and the list.
type ListCache = HashMap<(String, String), (Instant, Arc<Vec<StoredSecret>>)>;

impl BrokerSecretStore {
    /// A store over `client`, keeping lists for `list_ttl`.
    pub fn new(client: Arc<BrokerClient>, list_ttl: Duration) -> Self {
        Self { client, list_ttl, lists: Mutex::new(HashMap::new()) }
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, ListCache> {
        self.lists.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SecretStore for BrokerSecretStore {
    async fn list(
        &self,
        tenant: &str,
        secret_paths: &[String],
    ) -> Result<Vec<StoredSecret>, SecretStoreError> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut stale = Vec::new();
        {
            let lists = self.lists();
            for path in secret_paths {
                match lists.get(&(tenant.to_owned(), path.clone())) {
                    Some((at, secrets)) if at.elapsed() < self.list_ttl => {
                        found.extend(secrets.iter().cloned());
                    }
                    Some((_, secrets)) => {
                        stale.push((path.clone(), Arc::clone(secrets)));
                        missing.push(path.clone());
                    }
                    None => missing.push(path.clone()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        match self.client.list_tenant_secrets(tenant, &missing).await {
            Ok(fetched) => {
                let mut by_path: HashMap<String, Vec<StoredSecret>> =
                    missing.iter().map(|p| (p.clone(), Vec::new())).collect();
                for secret in fetched {
                    if secret.tenant_id == tenant
                        && let Some(list) = by_path.get_mut(&secret.secret_path)
                    {
                        list.push(secret);
                    }
                }
                let now = Instant::now();
                let mut lists = self.lists();
                for (path, secrets) in by_path {
                    found.extend(secrets.iter().cloned());
                    lists.insert((tenant.to_owned(), path), (now, Arc::new(secrets)));
                }
                Ok(found)
            }
            // Serve what was known while the broker is away: a path whose secrets were seen
            // keeps working; one never seen cannot.
            Err(e) if stale.len() == missing.len() => {
                tracing::warn!(error = %e, tenant, "tenant secrets: the broker is unreachable; using the secrets last seen");
                found.extend(stale.iter().flat_map(|(_, s)| s.iter().cloned()));
                Ok(found)
            }
            Err(e) => Err(SecretStoreError::Unavailable(e.to_string())),
        }
    }

    async fn create(
        &self,
        tenant: &str,
        secret_path: &str,
        kms_config_id: i32,
        wrapped: &[u8],
    ) -> Result<(StoredSecret, bool), SecretStoreError> {
        let created =
            self.client.create_tenant_secret(tenant, secret_path, kms_config_id, wrapped).await?;
        // The next list must include it.
        self.lists().remove(&(tenant.to_owned(), secret_path.to_owned()));
        Ok(created)
    }

    fn invalidate(&self) {
        // Keep the entries (they serve while the broker is away) but make them stale.
        let Some(past) = Instant::now().checked_sub(self.list_ttl) else {
            self.lists().clear();
            return;
        };
        for (at, _) in self.lists().values_mut() {
            *at = past;
        }
    }
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[tokio::test]
    async fn file_store_creates_once_per_path_and_config_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecretStore::new(dir.path().join("tenant-secrets.json"));
        let paths = ["users".to_owned()];
        assert!(store.list("t", &paths).await.unwrap().is_empty());
        let (first, created) = store.create("t", "users", 1, b"wrapped-1").await.unwrap();
        assert!(created && first.id == 1);
        // A second proxy that made its own secret gets the stored one.
        let (again, created) = store.create("t", "users", 1, b"wrapped-2").await.unwrap();
        assert!(!created);
        assert_eq!(again, first);
        let (other_path, _) = store.create("t", "orders", 1, b"w").await.unwrap();
        let (other_tenant, _) = store.create("u", "users", 1, b"w").await.unwrap();
        assert_eq!((other_path.id, other_tenant.id), (2, 3));
        assert_eq!(store.list("t", &paths).await.unwrap(), vec![first.clone()]);

        assert_eq!(store.rotate("t", Some("users")).unwrap(), 1);
        assert_eq!(store.rotate("t", Some("users")).unwrap(), 0);
        let (new, created) = store.create("t", "users", 1, b"wrapped-3").await.unwrap();
        assert!(created && new.id == 4);
        let listed = store.list("t", &paths).await.unwrap();
        assert_eq!(
            listed.iter().map(|s| (s.id, s.rotated)).collect::<Vec<_>>(),
            [(1, true), (4, false)]
        );
        assert_eq!(listed[0].wrapped, b"wrapped-1");
        // Every path of the tenant; the other tenant untouched.
        assert_eq!(store.rotate("t", None).unwrap(), 2);
        assert!(!store.list("u", &paths).await.unwrap()[0].rotated);
    }

    #[tokio::test]
    async fn concurrent_creates_through_separate_handles_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let store = FileSecretStore::new(&path);
            tasks.push(tokio::spawn(async move { store.create("t", "p", 1, &[i]).await.unwrap() }));
        }
        let mut ids = Vec::new();
        let mut created = 0;
        for task in tasks {
            let (secret, new) = task.await.unwrap();
            ids.push(secret.id);
            created += usize::from(new);
        }
        assert_eq!(created, 1);
        assert!(ids.iter().all(|id| *id == ids[0]));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, b"{not json").unwrap();
        let store = FileSecretStore::new(&path);
        assert!(matches!(store.all(), Err(SecretStoreError::Unavailable(_))));
        std::fs::write(&path, br#"{"version":2,"secrets":[]}"#).unwrap();
        assert!(matches!(store.all(), Err(SecretStoreError::Unavailable(_))));
        // And it is not overwritten by a rotation either.
        assert!(store.rotate("t", None).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), br#"{"version":2,"secrets":[]}"#);
    }

    #[test]
    fn debug_leaves_the_wrapped_bytes_out() {
        let secret = StoredSecret {
            id: 1,
            tenant_id: "t".into(),
            secret_path: "p".into(),
            kms_config_id: 1,
            wrapped: b"SECRETBYTES".to_vec(),
            rotated: false,
        };
        assert!(!format!("{secret:?}").contains("83"));
        assert!(!format!("{secret:?}").contains("SECRET"));
    }
}
