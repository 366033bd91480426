//! The local keystore: vendor-held master keys in one file, encrypted at rest under a root key.
//!
//! File layout:
//!
//! ```text
//! "KHK" ‖ version 1 ‖ 32-byte key commitment ‖ 12-byte IV ‖ AES-256-GCM(JSON state) ‖ tag
//! ```
//!
//! with the encryption key and commitment derived from the root key by HKDF-SHA256 (salt
//! `keyhold/keystore/v1`), the first 36 bytes as associated data. The commitment tells a wrong
//! root key ([`KeystoreError::WrongRootKey`]) apart from a damaged file
//! ([`KeystoreError::Corrupt`]).
//!
//! Writes are atomic (temporary file, fsync, rename) under an advisory lock on a sibling
//! file with the extension `.lock` (`keystore.khk` → `keystore.lock`), so
//! the CLI can rotate or disable a key while a proxy serves from the same file. Lookups re-check
//! the file's identity (one `stat`, about a microsecond) — by default on every lookup, or at most
//! once per configured interval — and reload it if it changed, so a key disabled by
//! `keyhold keys disable` is refused by a running proxy from its next request on.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyhold_core::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use keyhold_core::kdf::{self, COMMITMENT_LEN};
use keyhold_core::random::random_array;
use keyhold_core::secret::{MasterKeyMaterial, RootKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const MAGIC: &[u8; 3] = b"KHK";
const VERSION: u8 = 1;
const KDF_SALT: &[u8] = b"keyhold/keystore/v1";
const KDF_LABEL: &[u8] = b"keyhold/keystore/v1";
const HEADER_LEN: usize = 4 + COMMITMENT_LEN;
/// Environment variable that may hold the root key (standard base64 of 32 bytes).
pub const ROOT_KEY_ENV: &str = "KEYHOLD_ROOT_KEY";

/// Why the keystore could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// Reading or writing a file failed.
    #[error("keystore file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was written under another root key.
    #[error("the root key does not open this keystore")]
    WrongRootKey,
    /// The file is not a keystore, is truncated, or was altered.
    #[error("the keystore file is corrupt or was altered")]
    Corrupt,
    /// No root key was given, or it is not 32 bytes of base64.
    #[error("root key: {0}")]
    RootKey(String),
    /// The named key does not exist.
    #[error("no key named {0:?} in the keystore")]
    UnknownKey(String),
    /// A key with this name already exists.
    #[error("a key named {0:?} already exists")]
    KeyExists(String),
    /// Key names are 1 to 128 characters of `[A-Za-z0-9._:-]`.
    #[error("invalid key name {0:?}: use 1 to 128 characters of A-Z a-z 0-9 . _ : -")]
    InvalidName(String),
    /// The keystore already exists (on create).
    #[error("keystore {0} already exists")]
    AlreadyExists(PathBuf),
    /// Randomness or encryption failed.
    #[error("keystore crypto failure")]
    Crypto,
}

/// Public facts about one master key (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The key's name (what KMS configurations refer to).
    pub name: String,
    /// Disabled keys neither wrap nor unwrap.
    pub enabled: bool,
    /// The version new wraps use.
    pub current_version: u32,
    /// Every version still held (older ones unwrap old data).
    pub versions: Vec<u32>,
    /// When the key was created (seconds since the Unix epoch).
    pub created_at: u64,
    /// When it last changed (rotate, disable, enable).
    pub updated_at: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredVersion {
    version: u32,
    material: MasterKeyMaterial,
    created_at: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    enabled: bool,
    current_version: u32,
    versions: Vec<StoredVersion>,
    created_at: u64,
    updated_at: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    format: u32,
    keys: BTreeMap<String, StoredKey>,
}

impl StoredKey {
    fn info(&self, name: &str) -> KeyInfo {
        KeyInfo {
            name: name.to_owned(),
            enabled: self.enabled,
            current_version: self.current_version,
            versions: self.versions.iter().map(|v| v.version).collect(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A key version's material, as lent to the local KMS for one operation.
pub(crate) struct KeyVersion {
    pub(crate) version: u32,
    pub(crate) material: MasterKeyMaterial,
}

/// Result of looking up a key for an operation.
pub(crate) enum Lookup {
    Found(KeyVersion),
    Disabled,
    UnknownKey,
    UnknownVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    // Every write renames a new file into place, so the inode changes even when the size and
    // the modification time (at the file system's granularity) do not.
    inode: u64,
}

/// Default for [`Keystore::set_check_interval`].
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::ZERO;

/// An open keystore. Cheap to share (`Arc`); lookups touch the disk only to `stat` the file,
/// at most once per check interval.
pub struct Keystore {
    path: PathBuf,
    root: RootKey,
    state: RwLock<Arc<State>>,
    fingerprint: Mutex<Option<Fingerprint>>,
    check: Mutex<(Instant, Duration)>,
}

impl core::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keystore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Keystore {
    /// Creates a new, empty keystore file. Fails if the file exists.
    pub fn create(path: impl Into<PathBuf>, root: RootKey) -> Result<Self, KeystoreError> {
        let path = path.into();
        if path.exists() {
            return Err(KeystoreError::AlreadyExists(path));
        }
        let store = Self {
            path,
            root,
            state: RwLock::new(Arc::new(State { format: 1, keys: BTreeMap::new() })),
            fingerprint: Mutex::new(None),
            check: Mutex::new((Instant::now(), DEFAULT_CHECK_INTERVAL)),
        };
        store.modify(|_| Ok(()))?;
        Ok(store)
    }

    /// Opens an existing keystore file.
    pub fn open(path: impl Into<PathBuf>, root: RootKey) -> Result<Self, KeystoreError> {
        let path = path.into();
        let (state, fingerprint) = read_state(&path, &root)?;
        Ok(Self {
            path,
            root,
            state: RwLock::new(Arc::new(state)),
            fingerprint: Mutex::new(Some(fingerprint)),
            check: Mutex::new((Instant::now(), DEFAULT_CHECK_INTERVAL)),
        })
    }

    /// Opens the keystore, creating an empty one if the file does not exist.
    pub fn open_or_create(path: impl Into<PathBuf>, root: RootKey) -> Result<Self, KeystoreError> {
        let path = path.into();
        if path.exists() { Self::open(path, root) } else { Self::create(path, root) }
    }

    /// The keystore file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How often lookups re-check the file for changes made by other processes
    /// (`Duration::ZERO`: on every lookup).
    pub fn set_check_interval(&self, every: Duration) {
        lock(&self.check).1 = every;
    }

    /// Reloads the file if the check interval has passed and another process changed it. A
    /// failed reload keeps the last good state (and is logged).
    fn refresh_if_stale(&self) {
        {
            let mut check = lock(&self.check);
            if !check.1.is_zero() && check.0.elapsed() < check.1 {
                return;
            }
            check.0 = Instant::now();
        }
        if let Err(e) = self.reload_if_changed() {
            tracing::warn!(path = %self.path.display(), error = %e, "keystore reload failed; keeping the previous keys");
        }
    }

    /// Re-reads the file if another process changed it. Returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, KeystoreError> {
        let current = fingerprint(&self.path)?;
        let known = *lock(&self.fingerprint);
        if known == Some(current) {
            return Ok(false);
        }
        let (state, fingerprint) = read_state(&self.path, &self.root)?;
        *write(&self.state) = Arc::new(state);
        *lock(&self.fingerprint) = Some(fingerprint);
        Ok(true)
    }

    /// Every key, by name.
    pub fn list(&self) -> Vec<KeyInfo> {
        let state = read(&self.state);
        state.keys.iter().map(|(name, key)| key.info(name)).collect()
    }

    /// One key's public facts.
    pub fn info(&self, name: &str) -> Option<KeyInfo> {
        read(&self.state).keys.get(name).map(|k| k.info(name))
    }

    /// Creates a new key (version 1, enabled).
    pub fn create_key(&self, name: &str) -> Result<KeyInfo, KeystoreError> {
        validate_name(name)?;
        self.modify(|state| {
            if state.keys.contains_key(name) {
                return Err(KeystoreError::KeyExists(name.to_owned()));
            }
            let now = now();
            let material = MasterKeyMaterial::generate().map_err(|_| KeystoreError::Crypto)?;
            state.keys.insert(
                name.to_owned(),
                StoredKey {
                    enabled: true,
                    current_version: 1,
                    versions: vec![StoredVersion { version: 1, material, created_at: now }],
                    created_at: now,
                    updated_at: now,
                },
            );
            Ok(())
        })?;
        self.info(name).ok_or_else(|| KeystoreError::UnknownKey(name.to_owned()))
    }

    /// Adds a new version and makes it current; older versions still unwrap.
    pub fn rotate_key(&self, name: &str) -> Result<KeyInfo, KeystoreError> {
        self.modify(|state| {
            let key = state
                .keys
                .get_mut(name)
                .ok_or_else(|| KeystoreError::UnknownKey(name.to_owned()))?;
            let next = key.versions.iter().map(|v| v.version).max().unwrap_or(0).saturating_add(1);
            let now = now();
            let material = MasterKeyMaterial::generate().map_err(|_| KeystoreError::Crypto)?;
            key.versions.push(StoredVersion { version: next, material, created_at: now });
            key.current_version = next;
            key.updated_at = now;
            Ok(())
        })?;
        self.info(name).ok_or_else(|| KeystoreError::UnknownKey(name.to_owned()))
    }

    /// Enables or disables a key. A disabled key neither wraps nor unwraps.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<KeyInfo, KeystoreError> {
        self.modify(|state| {
            let key = state
                .keys
                .get_mut(name)
                .ok_or_else(|| KeystoreError::UnknownKey(name.to_owned()))?;
            key.enabled = enabled;
            key.updated_at = now();
            Ok(())
        })?;
        self.info(name).ok_or_else(|| KeystoreError::UnknownKey(name.to_owned()))
    }

    pub(crate) fn lookup(&self, name: &str, version: Option<u32>) -> Lookup {
        self.refresh_if_stale();
        let state = read(&self.state);
        let Some(key) = state.keys.get(name) else {
            return Lookup::UnknownKey;
        };
        if !key.enabled {
            return Lookup::Disabled;
        }
        let wanted = version.unwrap_or(key.current_version);
        match key.versions.iter().find(|v| v.version == wanted) {
            Some(v) => {
                Lookup::Found(KeyVersion { version: v.version, material: v.material.clone() })
            }
            None => Lookup::UnknownVersion,
        }
    }

    /// Read-modify-write under the file lock, starting from the file's current contents.
    fn modify(
        &self,
        change: impl FnOnce(&mut State) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let lock_path = self.path.with_extension("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| KeystoreError::Io { path: lock_path.clone(), source })?;
        lock_file.lock().map_err(|source| KeystoreError::Io { path: lock_path.clone(), source })?;

        let mut state = if self.path.exists() {
            read_state(&self.path, &self.root)?.0
        } else {
            State { format: 1, keys: BTreeMap::new() }
        };
        change(&mut state)?;
        write_state(&self.path, &self.root, &state)?;
        let fp = fingerprint(&self.path)?;
        *write(&self.state) = Arc::new(state);
        *lock(&self.fingerprint) = Some(fp);
        drop(lock_file);
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), KeystoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok { Ok(()) } else { Err(KeystoreError::InvalidName(name.to_owned())) }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn fingerprint(path: &Path) -> Result<Fingerprint, KeystoreError> {
    let meta =
        fs::metadata(path).map_err(|source| KeystoreError::Io { path: path.to_owned(), source })?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Fingerprint { modified: meta.modified().ok(), len: meta.len(), inode })
}

fn keys(root: &RootKey) -> Result<kdf::DerivedKeys, KeystoreError> {
    kdf::derive(root.expose_secret(), KDF_SALT, KDF_LABEL, b"").map_err(|_| KeystoreError::Crypto)
}

fn read_state(path: &Path, root: &RootKey) -> Result<(State, Fingerprint), KeystoreError> {
    let before = fingerprint(path)?;
    let bytes =
        fs::read(path).map_err(|source| KeystoreError::Io { path: path.to_owned(), source })?;
    let state = decrypt_state(&bytes, root)?;
    Ok((state, before))
}

fn decrypt_state(bytes: &[u8], root: &RootKey) -> Result<State, KeystoreError> {
    let header = bytes.get(..HEADER_LEN).ok_or(KeystoreError::Corrupt)?;
    if header.get(..3) != Some(MAGIC.as_slice()) || header.get(3) != Some(&VERSION) {
        return Err(KeystoreError::Corrupt);
    }
    let derived = keys(root)?;
    if !kdf::commitment_matches(&derived.commitment, header.get(4..).unwrap_or_default()) {
        return Err(KeystoreError::WrongRootKey);
    }
    let rest = bytes.get(HEADER_LEN..).ok_or(KeystoreError::Corrupt)?;
    let (iv, rest) = rest.split_first_chunk::<NONCE_LEN>().ok_or(KeystoreError::Corrupt)?;
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or(KeystoreError::Corrupt)?;
    let aead = Aes256GcmKey::new(&derived.encryption_key).map_err(|_| KeystoreError::Crypto)?;
    let mut plaintext = Zeroizing::new(vec![0u8; ciphertext.len()]);
    aead.open_to(iv, header, ciphertext, tag, &mut plaintext)
        .map_err(|_| KeystoreError::Corrupt)?;
    serde_json::from_slice(&plaintext).map_err(|_| KeystoreError::Corrupt)
}

fn write_state(path: &Path, root: &RootKey, state: &State) -> Result<(), KeystoreError> {
    let mut plaintext = Zeroizing::new(Vec::new());
    serde_json::to_writer(&mut *plaintext, state).map_err(|_| KeystoreError::Crypto)?;
    let derived = keys(root)?;
    let aead = Aes256GcmKey::new(&derived.encryption_key).map_err(|_| KeystoreError::Crypto)?;
    let iv: [u8; NONCE_LEN] = random_array().map_err(|_| KeystoreError::Crypto)?;
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&derived.commitment);
    out.extend_from_slice(&iv);
    let start = out.len();
    out.extend_from_slice(&plaintext);
    let (header, body) = out.split_at_mut(start);
    let aad = header.get(..HEADER_LEN).ok_or(KeystoreError::Crypto)?;
    let body = body.get_mut(..).ok_or(KeystoreError::Crypto)?;
    let tag = aead.seal_in_place(&iv, aad, body).map_err(|_| KeystoreError::Crypto)?;
    out.extend_from_slice(&tag);
    write_atomically(path, &out)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    let io = |source| KeystoreError::Io { path: path.to_owned(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(dir) = fs::File::open(dir) {
        // Persist the rename itself; not all platforms allow syncing a directory.
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Reads the root key from a file (standard base64), or else from `KEYHOLD_ROOT_KEY`.
pub fn load_root_key(file: Option<&Path>) -> Result<RootKey, KeystoreError> {
    if let Some(path) = file {
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .map_err(|source| KeystoreError::Io { path: path.to_owned(), source })?,
        );
        return RootKey::from_base64(&text)
            .map_err(|e| KeystoreError::RootKey(format!("{}: {e}", path.display())));
    }
    match std::env::var(ROOT_KEY_ENV) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            RootKey::from_base64(&text)
                .map_err(|e| KeystoreError::RootKey(format!("{ROOT_KEY_ENV}: {e}")))
        }
        Err(_) => Err(KeystoreError::RootKey(format!(
            "no root key: give a root key file or set {ROOT_KEY_ENV}"
        ))),
    }
}

/// Writes a new random root key to `path` (mode 0600). Fails if the file exists.
pub fn generate_root_key_file(path: &Path) -> Result<RootKey, KeystoreError> {
    let io = |source| KeystoreError::Io { path: path.to_owned(), source };
    let key = RootKey::generate().map_err(|_| KeystoreError::Crypto)?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    let text = key.to_base64();
    file.write_all(text.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

fn read<T>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    match lock.read() {
        Ok(guard) => Arc::clone(&guard),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir) -> Keystore {
        Keystore::create(dir.path().join("keystore"), RootKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn create_rotate_disable_persist() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootKey::generate().unwrap();
        let path = dir.path().join("ks");
        let ks = Keystore::create(&path, root.clone()).unwrap();
        let info = ks.create_key("tenant-a").unwrap();
        assert_eq!((info.current_version, info.enabled), (1, true));
        assert!(matches!(ks.create_key("tenant-a"), Err(KeystoreError::KeyExists(_))));
        assert_eq!(ks.rotate_key("tenant-a").unwrap().versions, vec![1, 2]);
        assert!(!ks.set_enabled("tenant-a", false).unwrap().enabled);

        let reopened = Keystore::open(&path, root).unwrap();
        let info = reopened.info("tenant-a").unwrap();
        assert_eq!((info.current_version, info.enabled), (2, false));
        assert!(matches!(reopened.lookup("tenant-a", None), Lookup::Disabled));
        assert!(matches!(reopened.lookup("nope", None), Lookup::UnknownKey));
    }

    #[test]
    fn wrong_root_key_and_corruption_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(&dir);
        ks.create_key("k").unwrap();
        let path = ks.path().to_owned();
        assert!(matches!(
            Keystore::open(&path, RootKey::generate().unwrap()),
            Err(KeystoreError::WrongRootKey)
        ));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(Keystore::open(&path, ks.root.clone()), Err(KeystoreError::Corrupt)));
        fs::write(&path, b"KHK").unwrap();
        assert!(matches!(Keystore::open(&path, ks.root.clone()), Err(KeystoreError::Corrupt)));
    }

    #[test]
    fn material_never_in_clear_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(&dir);
        ks.create_key("k").unwrap();
        let Lookup::Found(v) = ks.lookup("k", None) else { panic!() };
        let bytes = fs::read(ks.path()).unwrap();
        let material = v.material.expose_secret();
        assert!(!bytes.windows(32).any(|w| w == material));
        let b64 = v.material.to_base64();
        assert!(!bytes.windows(b64.len()).any(|w| w == b64.as_bytes()));
        assert!(!String::from_utf8_lossy(&bytes).contains("current_version"));
    }

    #[test]
    fn another_handle_sees_changes_after_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(&dir);
        ks.create_key("k").unwrap();
        let other = Keystore::open(ks.path(), ks.root.clone()).unwrap();
        assert!(!other.reload_if_changed().unwrap());
        ks.set_enabled("k", false).unwrap();
        assert!(other.reload_if_changed().unwrap());
        assert!(!other.info("k").unwrap().enabled);
    }

    #[test]
    fn names_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(&dir);
        for bad in ["", "has space", "slash/", &"x".repeat(129)] {
            assert!(matches!(ks.create_key(bad), Err(KeystoreError::InvalidName(_))), "{bad:?}");
        }
        assert!(ks.create_key("tenant-1.key:v_2").is_ok());
    }

    #[test]
    fn root_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let key = generate_root_key_file(&path).unwrap();
        assert_eq!(load_root_key(Some(&path)).unwrap(), key);
        assert!(generate_root_key_file(&path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        fs::write(&path, "short").unwrap();
        assert!(matches!(load_root_key(Some(&path)), Err(KeystoreError::RootKey(_))));
    }
}
