//! The `pkcs11` backend: the master key is an AES-256 secret key in a PKCS#11 token (an HSM,
//! or SoftHSM in tests), and the token itself wraps and unwraps every data key.
//!
//! The backend loads the vendor's PKCS#11 module (a shared library) into the proxy, selects the
//! token by label (or slot id), logs in as the token's user with the configured PIN and finds the
//! master key by its `CKA_LABEL`. PKCS#11 calls block, so each runs on
//! [`tokio::task::spawn_blocking`], on a session from a pool of at most `max_sessions`.
//!
//! # Wrapped key layout
//!
//! ```text
//! format (1 byte) ‖ u32be key version ‖ body
//! format 0x01, aes-gcm:          12-byte IV ‖ AES-256-GCM(DEK) (32) ‖ tag (16)         (65 bytes)
//! format 0x02, aes-key-wrap-pad: AES-KWP(DEK ‖ SHA-256(binding)) (72)                  (77 bytes)
//! ```
//!
//! The key version is the master key's `CKA_ID`, read as a big-endian unsigned number (empty:
//! 0). The format byte says which mechanism made the wrapped key: unwrap follows it, whatever
//! `mechanism` is configured now, so changing the setting keeps old wrapped keys readable.
//!
//! - **aes-gcm** (`CKM_AES_GCM`, the default): the token encrypts the DEK with a fresh random
//!   96-bit IV (from the OS; if the module writes its own IV into the parameters, as AWS CloudHSM
//!   does, that one is recorded), a 128-bit tag, and associated data
//!   `format ‖ u32be version ‖` [`KeyContext::associated_data`].
//! - **aes-key-wrap-pad** (`CKM_AES_KEY_WRAP_PAD`, RFC 5649), for tokens without AES-GCM: key wrap
//!   takes no associated data, so the context is bound inside the wrapped plaintext: the token
//!   wraps `DEK ‖ SHA-256("keyhold/pkcs11/kwp/v1\0" ‖ format ‖ u32be version ‖ associated data)`
//!   and an unwrap accepts the DEK only if the unwrapped hash equals the one computed for the
//!   caller's context (compared in constant time). This is sound because AES key wrap is a
//!   deterministic authenticated encryption of its whole input (a wide-block pseudorandom
//!   permutation with an integrity check): changing any ciphertext bit makes the unwrap fail its
//!   integrity check or yield an unpredictable 64-byte plaintext, so the only way to make the
//!   hash half match another context is a SHA-256 second preimage. An EDEK of tenant A therefore
//!   unwraps for tenant A only. Determinism leaks only whether the same DEK was wrapped twice for
//!   the same context, which rekeying already knows. `SoftHSM` offers this mechanism for
//!   `C_WrapKey`/`C_UnwrapKey` only (not `C_Encrypt`), so the backend creates a short-lived
//!   session object (`CKK_GENERIC_SECRET`, extractable, not sensitive, never a token object)
//!   holding `DEK ‖ hash`, wraps it with `C_WrapKey`, and destroys it; unwrapping uses
//!   `C_UnwrapKey` into such an object, reads its value and destroys it. The master key needs
//!   `CKA_WRAP`/`CKA_UNWRAP` for this mechanism, `CKA_ENCRYPT`/`CKA_DECRYPT` for AES-GCM.
//!
//! # Rotation and versions
//!
//! PKCS#11 keys have no versions. Keyhold uses `CKA_ID`: a rotation is a new AES key with the
//! same label and a higher `CKA_ID` (e.g. `pkcs11-tool --keygen --key-type AES:32 --label L
//! --id 02`). New wraps use the key with the highest id; unwraps use the version recorded in
//! the wrapped key. Keep old versions as long as data wrapped under them exists. Two keys with
//! the same label and the same id are a configuration error.
//!
//! # Sessions and login
//!
//! A module is loaded and `C_Initialize`d once per process (a registry keyed by its canonical
//! path); a user login holds for the whole process on a token. A session from the pool that
//! hits `CKR_USER_NOT_LOGGED_IN` logs in again and retries once. A PIN the token refused is
//! never tried again by this process, since each try counts towards the token's lockout; a
//! configuration whose PIN differs from the one this process logged the token in with is
//! refused without a try.
//!
//! If another library in the proxy uses the same module, it shares the initialization
//! (`CKR_CRYPTOKI_ALREADY_INITIALIZED` is accepted), but it must not call `C_Initialize` at the
//! very moment Keyhold first loads the module (SoftHSM, for one, is left half-initialized by
//! two racing calls), nor `C_Finalize` while Keyhold runs. Unwraps remember key handles per
//! version; a handle that stopped working (SoftHSM renumbers objects once every session on the
//! token has closed) is looked up again once. Wraps always look up the newest key, so a
//! rotation takes effect at once.
//!
//! # Error mapping
//!
//! | PKCS#11 answer | `KmsError` |
//! |---|---|
//! | `CKR_PIN_INCORRECT`, `CKR_PIN_LOCKED`, `CKR_PIN_INVALID`, `CKR_PIN_LEN_RANGE`, `CKR_PIN_EXPIRED`, `CKR_USER_NOT_LOGGED_IN` (after one re-login), `CKR_USER_PIN_NOT_INITIALIZED`, `CKR_USER_ANOTHER_ALREADY_LOGGED_IN` | `AccessDenied` |
//! | `CKR_KEY_FUNCTION_NOT_PERMITTED` (the key's `CKA_ENCRYPT`/`CKA_DECRYPT` or `CKA_WRAP`/`CKA_UNWRAP` is false: how a key is disabled) | `KeyDisabled` |
//! | no key with the label, two keys with one label and id, `CKR_KEY_HANDLE_INVALID`, `CKR_KEY_TYPE_INCONSISTENT`, `CKR_KEY_SIZE_RANGE`, `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`, template and attribute errors, `CKR_FUNCTION_NOT_SUPPORTED`, no token with the label, a module that does not load | `ConfigurationInvalid` |
//! | `CKR_ENCRYPTED_DATA_INVALID`, `CKR_ENCRYPTED_DATA_LEN_RANGE`, `CKR_WRAPPED_KEY_INVALID`, `CKR_WRAPPED_KEY_LEN_RANGE`, `CKR_GENERAL_ERROR` from `C_Decrypt`/`C_UnwrapKey` (SoftHSM's answer to a failed GCM tag), a context hash mismatch, a malformed wrapped key, a key version not on the token | `InvalidCiphertext` |
//! | `CKR_DEVICE_ERROR`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`, `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_DEVICE_MEMORY`, `CKR_HOST_MEMORY`, `CKR_FUNCTION_FAILED`, `CKR_GENERAL_ERROR` elsewhere, `CKR_CRYPTOKI_NOT_INITIALIZED`, `CKR_OPERATION_ACTIVE` (the session is closed, not pooled) | `Unreachable` |
//! | `CKR_SESSION_COUNT` (the token has no session left) | `Throttled` |
//! | anything else | `WrapFailed` / `UnwrapFailed` |
//!
//! PKCS#11 has no billing or quota answers: `AccountIssue` is never returned.

mod errors;
mod module;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use keyhold_core::random::random_array;
use keyhold_core::secret::{Dek, KEY_LEN, constant_time_eq};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;
use zeroize::{Zeroize, Zeroizing};

use self::errors::{Op, map};
use self::module::{Module, Pin};
use crate::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};

/// Format byte of an AES-GCM wrapped key.
const FORMAT_GCM: u8 = 0x01;
/// Format byte of an AES key wrap (RFC 5649) wrapped key.
const FORMAT_KWP: u8 = 0x02;
const HEADER_LEN: usize = 1 + 4;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const TAG_BITS: u64 = 128;
const HASH_LEN: usize = 32;
/// RFC 5649 output for a 64-byte input: one 8-byte integrity block more.
const KWP_LEN: usize = KEY_LEN + HASH_LEN + 8;
const GCM_WRAPPED_LEN: usize = HEADER_LEN + IV_LEN + KEY_LEN + TAG_LEN;
const KWP_WRAPPED_LEN: usize = HEADER_LEN + KWP_LEN;
const KWP_BINDING_LABEL: &[u8] = b"keyhold/pkcs11/kwp/v1\0";
const DEFAULT_MAX_SESSIONS: usize = 8;
const MAX_MAX_SESSIONS: usize = 1024;

/// How the token wraps data keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Pkcs11Mechanism {
    /// `CKM_AES_GCM` with the context as associated data (`"aes-gcm"`, the default).
    #[default]
    #[serde(rename = "aes-gcm")]
    AesGcm,
    /// `CKM_AES_KEY_WRAP_PAD` (RFC 5649) with the context hashed into the wrapped plaintext
    /// (`"aes-key-wrap-pad"`).
    #[serde(rename = "aes-key-wrap-pad")]
    AesKeyWrapPad,
}

impl Pkcs11Mechanism {
    fn name(self) -> &'static str {
        match self {
            Self::AesGcm => "CKM_AES_GCM",
            Self::AesKeyWrapPad => "CKM_AES_KEY_WRAP_PAD",
        }
    }
}

/// A tenant's master key in a PKCS#11 token (`type = "pkcs11"`).
///
/// ```toml
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token_label = "tenant-a"
/// pin = { env = "TENANT_A_HSM_PIN" }
/// key_label = "keyhold-master"
/// mechanism = "aes-gcm"
/// max_sessions = 8
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module (shared library); relative to the configuration's directory.
    pub module: PathBuf,
    /// The label of the token holding the key (exactly one of `token_label` and `slot_id`).
    #[serde(default)]
    pub token_label: Option<String>,
    /// The slot holding the token, when it is not selected by label.
    #[serde(default)]
    pub slot_id: Option<u64>,
    /// The token's user PIN.
    pub pin: SecretSource,
    /// The master key's `CKA_LABEL` (an AES-256 secret key; versions are told apart by `CKA_ID`).
    pub key_label: String,
    /// `aes-gcm` (default) or `aes-key-wrap-pad`: what new wraps use.
    #[serde(default)]
    pub mechanism: Pkcs11Mechanism,
    /// The most sessions this configuration opens on the token at once (default 8).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

fn default_max_sessions() -> usize {
    DEFAULT_MAX_SESSIONS
}

#[derive(Debug, Clone)]
enum TokenSelector {
    Label(String),
    SlotId(u64),
}

impl core::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Label(label) => write!(f, "token {label:?}"),
            Self::SlotId(id) => write!(f, "the token in slot {id}"),
        }
    }
}

/// A master key in a PKCS#11 token, as a [`Kms`].
pub struct Pkcs11Kms {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
}

impl core::fmt::Debug for Pkcs11Kms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pkcs11Kms")
            .field("module", &self.inner.module.path())
            .field("token", &self.inner.token)
            .field("key_label", &self.inner.key_label)
            .field("mechanism", &self.inner.mechanism)
            .field("max_sessions", &self.inner.max_sessions)
            .finish_non_exhaustive()
    }
}

/// What the blocking side shares: the module, the pool of sessions, the known key handles.
struct Inner {
    module: Arc<Module>,
    token: TokenSelector,
    pin: Pin,
    key_label: String,
    mechanism: Pkcs11Mechanism,
    max_sessions: usize,
    /// The slot, once found (and the mechanism checked there); forgotten when the token leaves.
    slot: Mutex<Option<Slot>>,
    /// Idle sessions, already logged in.
    idle: Mutex<Vec<CountedSession>>,
    /// Sessions open now (idle or in use), and the most ever open at once.
    sessions: Arc<SessionCount>,
    /// Key version → handle, for unwraps (a token object's handle holds in every session).
    handles: Mutex<HashMap<u32, ObjectHandle>>,
}

/// How many sessions are open (the pool's bound is checked against it in tests).
#[derive(Debug, Default)]
struct SessionCount {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// A session that is counted while it is open; closing (dropping) it uncounts it.
struct CountedSession {
    session: Session,
    count: Arc<SessionCount>,
}

impl CountedSession {
    fn new(session: Session, count: &Arc<SessionCount>) -> Self {
        let open = count.open.fetch_add(1, Ordering::Relaxed) + 1;
        count.peak.fetch_max(open, Ordering::Relaxed);
        Self { session, count: Arc::clone(count) }
    }
}

impl std::ops::Deref for CountedSession {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Drop for CountedSession {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an operation on a session failed: a PKCS#11 call, or a decision already made.
enum Failure {
    Call(Error),
    Kms(KmsError),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Call(e)
    }
}

impl From<KmsError> for Failure {
    fn from(e: KmsError) -> Self {
        Self::Kms(e)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pkcs11Kms {
    /// Validates `config`, reads the PIN and loads (once per process) and initializes the
    /// module. The token is looked up, logged in to and searched for the key on first use, so
    /// a token that is absent now is reported then (as unreachable or misconfigured).
    pub async fn connect(
        config: &Pkcs11Config,
        options: &ConnectOptions,
    ) -> Result<Self, KmsError> {
        let token = match (&config.token_label, config.slot_id) {
            (Some(label), None) if !label.trim().is_empty() => TokenSelector::Label(label.clone()),
            (None, Some(id)) => TokenSelector::SlotId(id),
            _ => {
                return Err(KmsError::ConfigurationInvalid(
                    "pkcs11: set exactly one of token_label and slot_id".into(),
                ));
            }
        };
        if config.key_label.is_empty() {
            return Err(KmsError::ConfigurationInvalid("pkcs11: key_label is empty".into()));
        }
        if !(1..=MAX_MAX_SESSIONS).contains(&config.max_sessions) {
            return Err(KmsError::ConfigurationInvalid(format!(
                "pkcs11: max_sessions must be between 1 and {MAX_MAX_SESSIONS}"
            )));
        }
        let pin = Pin::new(config.pin.load(&options.base_dir)?);
        let path = options.base_dir.join(&config.module);
        let module =
            tokio::task::spawn_blocking(move || module::load(&path)).await.map_err(|_| {
                KmsError::ConfigurationInvalid("pkcs11: loading the module failed".into())
            })??;
        Ok(Self {
            inner: Arc::new(Inner {
                module,
                token,
                pin,
                key_label: config.key_label.clone(),
                mechanism: config.mechanism,
                max_sessions: config.max_sessions,
                slot: Mutex::new(None),
                idle: Mutex::new(Vec::new()),
                sessions: Arc::default(),
                handles: Mutex::new(HashMap::new()),
            }),
            permits: Arc::new(Semaphore::new(config.max_sessions)),
        })
    }

    /// Sessions open with the token now (idle or in use) and the most ever open at once: never
    /// more than `max_sessions` (for metrics and tests).
    pub fn sessions(&self) -> (usize, usize) {
        let count = &self.inner.sessions;
        (count.open.load(Ordering::Relaxed), count.peak.load(Ordering::Relaxed))
    }

    /// The master key version (`CKA_ID`) a wrapped key was made with, if it is one of ours.
    pub fn key_version_of(wrapped: &[u8]) -> Option<u32> {
        match wrapped.first()? {
            &FORMAT_GCM | &FORMAT_KWP => {}
            _ => return None,
        }
        Some(u32::from_be_bytes(wrapped.get(1..HEADER_LEN)?.try_into().ok()?))
    }

    /// Runs `f` with a logged-in session on a blocking thread, at most `max_sessions` at once.
    async fn blocking<T, F>(&self, op: Op, f: F) -> Result<T, KmsError>
    where
        T: Send + 'static,
        F: Fn(&Inner, &Session) -> Result<T, Failure> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| KmsError::Unreachable("the session pool is closed".into()))?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            inner.run(op, f)
        })
        .await
        .map_err(|_| match op {
            Op::Unwrap => KmsError::UnwrapFailed("the PKCS#11 call panicked".into()),
            Op::Setup | Op::Wrap | Op::Health => {
                KmsError::WrapFailed("the PKCS#11 call panicked".into())
            }
        })?
    }
}

#[async_trait]
impl Kms for Pkcs11Kms {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        let dek = dek.clone();
        let ad = context.associated_data();
        self.blocking(Op::Wrap, move |inner, session| {
            let (version, key) = inner.current_key(session)?;
            match inner.mechanism {
                Pkcs11Mechanism::AesGcm => inner.gcm_wrap(session, key, version, &dek, &ad),
                Pkcs11Mechanism::AesKeyWrapPad => inner.kwp_wrap(session, key, version, &dek, &ad),
            }
        })
        .await
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        let format = *wrapped.first().ok_or(KmsError::InvalidCiphertext)?;
        let expected_len = match format {
            FORMAT_GCM => GCM_WRAPPED_LEN,
            FORMAT_KWP => KWP_WRAPPED_LEN,
            _ => return Err(KmsError::InvalidCiphertext),
        };
        if wrapped.len() != expected_len {
            return Err(KmsError::InvalidCiphertext);
        }
        let version = Self::key_version_of(wrapped).ok_or(KmsError::InvalidCiphertext)?;
        let wrapped = wrapped.to_vec();
        let ad = context.associated_data();
        self.blocking(Op::Unwrap, move |inner, session| {
            let attempt = |key| match format {
                FORMAT_GCM => inner.gcm_unwrap(session, key, &wrapped, &ad),
                _ => inner.kwp_unwrap(session, key, &wrapped, &ad),
            };
            let (key, cached) = inner.key_version(session, version)?;
            match attempt(key) {
                // A cached handle may be stale (the key was destroyed and re-created, or the
                // module reuses handles): look the version up again and retry once.
                Err(failure) if cached && failure_is_key_mismatch(&failure) => {
                    lock(&inner.handles).clear();
                    let (key, _) = inner.key_version(session, version)?;
                    attempt(key)
                }
                other => other,
            }
        })
        .await
    }

    async fn health(&self) -> Result<(), KmsError> {
        self.blocking(Op::Health, |inner, session| {
            let (_, key) = inner.current_key(session)?;
            let (use_a, use_b) = match inner.mechanism {
                Pkcs11Mechanism::AesGcm => (AttributeType::Encrypt, AttributeType::Decrypt),
                Pkcs11Mechanism::AesKeyWrapPad => (AttributeType::Wrap, AttributeType::Unwrap),
            };
            let attributes = session.get_attributes(key, &[use_a, use_b])?;
            let allowed = attributes.iter().all(|a| match a {
                Attribute::Encrypt(v)
                | Attribute::Decrypt(v)
                | Attribute::Wrap(v)
                | Attribute::Unwrap(v) => *v,
                _ => true,
            });
            if attributes.len() == 2 && allowed {
                Ok(())
            } else {
                Err(Failure::Kms(KmsError::KeyDisabled(format!(
                    "the key labelled {:?} may not be used with {}",
                    inner.key_label,
                    inner.mechanism.name()
                ))))
            }
        })
        .await
    }
}

/// Whether an unwrap failure could come from using the wrong key object.
fn failure_is_key_mismatch(failure: &Failure) -> bool {
    match failure {
        Failure::Kms(e) => *e == KmsError::InvalidCiphertext,
        Failure::Call(Error::Pkcs11(rv, _)) => matches!(
            rv,
            RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::UnwrappingKeyHandleInvalid
                | RvError::KeyTypeInconsistent
                | RvError::UnwrappingKeyTypeInconsistent
                | RvError::EncryptedDataInvalid
                | RvError::WrappedKeyInvalid
                | RvError::GeneralError
        ),
        Failure::Call(_) => false,
    }
}

impl Inner {
    /// Runs `f` on a pooled (or new) logged-in session; re-logs in once on
    /// `CKR_USER_NOT_LOGGED_IN`; pools the session again unless the failure says otherwise.
    fn run<T>(
        &self,
        op: Op,
        f: impl Fn(&Self, &Session) -> Result<T, Failure>,
    ) -> Result<T, KmsError> {
        let (session, slot) = self.checkout()?;
        let mut result = f(self, &session);
        if matches!(result, Err(Failure::Call(Error::Pkcs11(RvError::UserNotLoggedIn, _)))) {
            if let Err(e) = self.module.login(slot, &session, &self.pin) {
                self.checkin(session);
                return Err(e);
            }
            result = f(self, &session);
        }
        match result {
            Ok(value) => {
                self.checkin(session);
                Ok(value)
            }
            Err(Failure::Kms(e)) => {
                self.checkin(session);
                Err(e)
            }
            Err(Failure::Call(e)) => {
                let mapped = map(&e, op, &self.key_label);
                if mapped.forget_slot {
                    self.forget_slot();
                } else if !mapped.drop_session {
                    self.checkin(session);
                }
                if matches!(mapped.error, KmsError::ConfigurationInvalid(_)) {
                    lock(&self.handles).clear();
                }
                Err(mapped.error)
            }
        }
    }

    /// An idle session, or a new one logged in.
    fn checkout(&self) -> Result<(CountedSession, Slot), KmsError> {
        let slot = self.slot()?;
        if let Some(session) = lock(&self.idle).pop() {
            return Ok((session, slot));
        }
        let session = self.module.ctx().open_ro_session(slot).map_err(|e| {
            let mapped = map(&e, Op::Setup, &self.key_label);
            if mapped.forget_slot {
                self.forget_slot();
            }
            mapped.error
        })?;
        let session = CountedSession::new(session, &self.sessions);
        self.module.login(slot, &session, &self.pin)?;
        Ok((session, slot))
    }

    fn checkin(&self, session: CountedSession) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_sessions {
            idle.push(session);
        }
    }

    /// The token left (or may have): find its slot, and the key handles, again next time.
    fn forget_slot(&self) {
        *lock(&self.slot) = None;
        lock(&self.idle).clear();
        lock(&self.handles).clear();
    }

    /// The slot of the configured token, found once; checks that the token offers the
    /// configured mechanism.
    fn slot(&self) -> Result<Slot, KmsError> {
        let mut cached = lock(&self.slot);
        if let Some(slot) = *cached {
            return Ok(slot);
        }
        let ctx = self.module.ctx();
        let setup = |e: Error| map(&e, Op::Setup, &self.key_label).error;
        let slot = match &self.token {
            TokenSelector::SlotId(id) => {
                let slot = Slot::try_from(*id).map_err(|_| {
                    KmsError::ConfigurationInvalid(format!("pkcs11: slot id {id} is out of range"))
                })?;
                ctx.get_token_info(slot).map_err(setup)?;
                slot
            }
            TokenSelector::Label(label) => {
                let mut found = Vec::new();
                let mut labels = Vec::new();
                for slot in ctx.get_slots_with_token().map_err(setup)? {
                    // A slot whose token cannot be read now is not ours to judge.
                    let Ok(info) = ctx.get_token_info(slot) else { continue };
                    if info.label() == label.as_str() {
                        found.push(slot);
                    }
                    labels.push(info.label().to_owned());
                }
                match found.as_slice() {
                    [slot] => *slot,
                    [] => {
                        return Err(KmsError::ConfigurationInvalid(format!(
                            "pkcs11: no token labelled {label:?} in {} (tokens present: {labels:?})",
                            self.module.path().display()
                        )));
                    }
                    _ => {
                        return Err(KmsError::ConfigurationInvalid(format!(
                            "pkcs11: {} tokens are labelled {label:?}; select one by slot_id",
                            found.len()
                        )));
                    }
                }
            }
        };
        let mechanism = match self.mechanism {
            Pkcs11Mechanism::AesGcm => MechanismType::AES_GCM,
            Pkcs11Mechanism::AesKeyWrapPad => MechanismType::AES_KEY_WRAP_PAD,
        };
        let usable = match ctx.get_mechanism_info(slot, mechanism) {
            Ok(info) => match self.mechanism {
                Pkcs11Mechanism::AesGcm => info.encrypt() && info.decrypt(),
                Pkcs11Mechanism::AesKeyWrapPad => info.wrap() && info.unwrap(),
            },
            Err(Error::Pkcs11(RvError::MechanismInvalid, _)) => false,
            Err(e) => return Err(setup(e)),
        };
        if !usable {
            let needs = match self.mechanism {
                Pkcs11Mechanism::AesGcm => "C_Encrypt and C_Decrypt",
                Pkcs11Mechanism::AesKeyWrapPad => "C_WrapKey and C_UnwrapKey",
            };
            return Err(KmsError::ConfigurationInvalid(format!(
                "pkcs11: {} does not offer {} for {needs}; choose the other mechanism",
                self.token,
                self.mechanism.name()
            )));
        }
        *cached = Some(slot);
        Ok(slot)
    }

    /// Every AES secret key with the configured label, with its version; remembers the handles.
    fn find_keys(&self, session: &Session) -> Result<Vec<(u32, ObjectHandle)>, Failure> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(self.key_label.as_bytes().to_vec()),
        ];
        let mut keys = Vec::new();
        for handle in session.find_objects(&template)? {
            let id = session
                .get_attributes(handle, &[AttributeType::Id])?
                .into_iter()
                .find_map(|a| if let Attribute::Id(id) = a { Some(id) } else { None })
                .unwrap_or_default();
            let version = parse_version(&id).ok_or_else(|| {
                KmsError::ConfigurationInvalid(format!(
                    "pkcs11: a key labelled {:?} has a CKA_ID of {} bytes; Keyhold reads CKA_ID \
                     as the key version, a number of at most 4 bytes",
                    self.key_label,
                    id.len()
                ))
            })?;
            keys.push((version, handle));
        }
        if keys.is_empty() {
            return Err(Failure::Kms(KmsError::ConfigurationInvalid(format!(
                "pkcs11: no AES secret key labelled {:?} on {}",
                self.key_label, self.token
            ))));
        }
        let mut handles = lock(&self.handles);
        handles.clear();
        for &(version, handle) in &keys {
            handles.insert(version, handle);
        }
        Ok(keys)
    }

    /// The key new wraps use: the one with the highest version.
    fn current_key(&self, session: &Session) -> Result<(u32, ObjectHandle), Failure> {
        let keys = self.find_keys(session)?;
        let newest = keys.iter().map(|&(v, _)| v).max().unwrap_or_default();
        let mut current = keys.iter().filter(|&&(v, _)| v == newest);
        match (current.next(), current.next()) {
            (Some(&key), None) => Ok(key),
            _ => Err(self.duplicate(newest)),
        }
    }

    /// The key of `version` (and whether its handle came from the cache).
    fn key_version(
        &self,
        session: &Session,
        version: u32,
    ) -> Result<(ObjectHandle, bool), Failure> {
        if let Some(&handle) = lock(&self.handles).get(&version) {
            return Ok((handle, true));
        }
        let keys = self.find_keys(session)?;
        let mut matching = keys.iter().filter(|&&(v, _)| v == version);
        match (matching.next(), matching.next()) {
            (Some(&(_, handle)), None) => Ok((handle, false)),
            // Not on the token: altered, or made with a key version since destroyed.
            (None, _) => Err(Failure::Kms(KmsError::InvalidCiphertext)),
            (Some(_), Some(_)) => Err(self.duplicate(version)),
        }
    }

    fn duplicate(&self, version: u32) -> Failure {
        Failure::Kms(KmsError::ConfigurationInvalid(format!(
            "pkcs11: more than one key labelled {:?} has version (CKA_ID) {version}; give each \
             key version its own CKA_ID",
            self.key_label
        )))
    }

    fn gcm_wrap(
        &self,
        session: &Session,
        key: ObjectHandle,
        version: u32,
        dek: &Dek,
        ad: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let header = header(FORMAT_GCM, version);
        let aad = [header.as_slice(), ad].concat();
        let mut iv: [u8; IV_LEN] =
            random_array().map_err(|_| KmsError::WrapFailed("no randomness".into()))?;
        let ciphertext = {
            let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())?;
            session.encrypt(&Mechanism::AesGcm(params), key, dek.expose_secret())?
        };
        // `iv` now holds the IV the token used: some (AWS CloudHSM) write their own there.
        if ciphertext.len() != KEY_LEN + TAG_LEN {
            return Err(Failure::Kms(KmsError::WrapFailed(format!(
                "the token returned {} bytes for AES-GCM over 32, not 48: it may add an IV of its \
                 own to the output (Luna in FIPS mode); use mechanism = \"aes-key-wrap-pad\"",
                ciphertext.len()
            ))));
        }
        let mut out = Vec::with_capacity(GCM_WRAPPED_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    fn gcm_unwrap(
        &self,
        session: &Session,
        key: ObjectHandle,
        wrapped: &[u8],
        ad: &[u8],
    ) -> Result<Dek, Failure> {
        let header = wrapped.get(..HEADER_LEN).ok_or(KmsError::InvalidCiphertext)?;
        let mut iv: [u8; IV_LEN] = wrapped
            .get(HEADER_LEN..HEADER_LEN + IV_LEN)
            .and_then(|iv| iv.try_into().ok())
            .ok_or(KmsError::InvalidCiphertext)?;
        let ciphertext = wrapped.get(HEADER_LEN + IV_LEN..).ok_or(KmsError::InvalidCiphertext)?;
        let aad = [header, ad].concat();
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())?;
        let plaintext =
            Zeroizing::new(session.decrypt(&Mechanism::AesGcm(params), key, ciphertext)?);
        Dek::try_from_slice(&plaintext).map_err(|_| {
            Failure::Kms(KmsError::UnwrapFailed(format!(
                "the token returned {} bytes, not a 32-byte key",
                plaintext.len()
            )))
        })
    }

    fn kwp_wrap(
        &self,
        session: &Session,
        key: ObjectHandle,
        version: u32,
        dek: &Dek,
        ad: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let header = header(FORMAT_KWP, version);
        let mut value = Zeroizing::new(Vec::with_capacity(KEY_LEN + HASH_LEN));
        value.extend_from_slice(dek.expose_secret());
        value.extend_from_slice(&kwp_binding(&header, ad));
        let mut template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Value(value.to_vec()),
        ];
        let created = session.create_object(&template);
        for attribute in &mut template {
            if let Attribute::Value(v) = attribute {
                v.zeroize();
            }
        }
        let object = created?;
        let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, key, object);
        let destroyed = session.destroy_object(object);
        let wrapped = wrapped?;
        destroyed?;
        if wrapped.len() != KWP_LEN {
            return Err(Failure::Kms(KmsError::WrapFailed(format!(
                "the token returned {} bytes for AES key wrap over 64, not {KWP_LEN}",
                wrapped.len()
            ))));
        }
        let mut out = Vec::with_capacity(KWP_WRAPPED_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&wrapped);
        Ok(out)
    }

    fn kwp_unwrap(
        &self,
        session: &Session,
        key: ObjectHandle,
        wrapped: &[u8],
        ad: &[u8],
    ) -> Result<Dek, Failure> {
        let header = wrapped.get(..HEADER_LEN).ok_or(KmsError::InvalidCiphertext)?;
        let body = wrapped.get(HEADER_LEN..).ok_or(KmsError::InvalidCiphertext)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let object = session.unwrap_key(&Mechanism::AesKeyWrapPad, key, body, &template)?;
        let attributes = session.get_attributes(object, &[AttributeType::Value]);
        let destroyed = session.destroy_object(object);
        let mut value = Zeroizing::new(Vec::new());
        for attribute in attributes? {
            if let Attribute::Value(mut v) = attribute {
                value.extend_from_slice(&v);
                v.zeroize();
            }
        }
        destroyed?;
        let (dek, binding) = value.split_at_checked(KEY_LEN).ok_or(KmsError::InvalidCiphertext)?;
        if !constant_time_eq(binding, &kwp_binding(header, ad)) {
            return Err(Failure::Kms(KmsError::InvalidCiphertext));
        }
        Dek::try_from_slice(dek).map_err(|_| Failure::Kms(KmsError::InvalidCiphertext))
    }
}

fn header(format: u8, version: u32) -> [u8; HEADER_LEN] {
    let v = version.to_be_bytes();
    [format, v[0], v[1], v[2], v[3]]
}

/// `SHA-256("keyhold/pkcs11/kwp/v1\0" ‖ header ‖ associated data)`.
fn kwp_binding(header: &[u8], ad: &[u8]) -> [u8; HASH_LEN] {
    let mut hash = Sha256::new();
    hash.update(KWP_BINDING_LABEL);
    hash.update(header);
    hash.update(ad);
    hash.finalize().into()
}

/// `CKA_ID` as a key version: a big-endian number of at most 4 significant bytes (empty: 0).
fn parse_version(id: &[u8]) -> Option<u32> {
    let start = id.iter().position(|&b| b != 0).unwrap_or(id.len());
    let significant = id.get(start..)?;
    if significant.len() > 4 {
        return None;
    }
    Some(significant.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_ids() {
        assert_eq!(parse_version(b""), Some(0));
        assert_eq!(parse_version(&[0x01]), Some(1));
        assert_eq!(parse_version(&[0x00, 0x00, 0x01, 0x02]), Some(0x0102));
        assert_eq!(parse_version(&[0, 0, 0, 0, 0, 0, 0, 7]), Some(7));
        assert_eq!(parse_version(&[1, 0, 0, 0, 0]), None);
        assert_eq!(parse_version(&[0xff; 4]), Some(u32::MAX));
    }

    #[test]
    fn layout_constants() {
        assert_eq!(GCM_WRAPPED_LEN, 65);
        assert_eq!(KWP_WRAPPED_LEN, 77);
        let mut wrapped = vec![0u8; GCM_WRAPPED_LEN];
        wrapped[..HEADER_LEN].copy_from_slice(&header(FORMAT_GCM, 7));
        assert_eq!(Pkcs11Kms::key_version_of(&wrapped), Some(7));
        wrapped[0] = 0x7f;
        assert_eq!(Pkcs11Kms::key_version_of(&wrapped), None);
        assert_eq!(Pkcs11Kms::key_version_of(&[FORMAT_KWP, 0]), None);
    }

    #[test]
    fn binding_depends_on_every_input() {
        let a = kwp_binding(&header(FORMAT_KWP, 1), b"ctx");
        assert_ne!(a, kwp_binding(&header(FORMAT_KWP, 2), b"ctx"));
        assert_ne!(a, kwp_binding(&header(FORMAT_KWP, 1), b"ctx2"));
    }

    #[test]
    fn config_parses_and_hides_the_pin() {
        let config: Pkcs11Config = toml::from_str(
            r#"
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token_label = "t"
            pin = "1234-secret"
            key_label = "k"
            "#,
        )
        .unwrap();
        assert_eq!(config.mechanism, Pkcs11Mechanism::AesGcm);
        assert_eq!(config.max_sessions, 8);
        assert!(!format!("{config:?}").contains("1234-secret"));
        let kwp: Pkcs11Config = toml::from_str(
            r#"
            module = "m.so"
            slot_id = 3
            pin = { env = "P" }
            key_label = "k"
            mechanism = "aes-key-wrap-pad"
            max_sessions = 2
            "#,
        )
        .unwrap();
        assert_eq!(kwp.mechanism, Pkcs11Mechanism::AesKeyWrapPad);
        assert!(
            toml::from_str::<Pkcs11Config>(
                "module = \"m\"\npin = \"p\"\nkey_label = \"k\"\nlabel = \"x\""
            )
            .is_err()
        );
        assert!(
            toml::from_str::<Pkcs11Config>(
                "module = \"m\"\npin = \"p\"\nkey_label = \"k\"\nmechanism = \"aes-cbc\""
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn bad_configurations_are_refused_before_any_call() {
        let options = ConnectOptions::default();
        let base = |f: &dyn Fn(&mut Pkcs11Config)| {
            let mut c = Pkcs11Config {
                module: "/nonexistent/libpkcs11.so".into(),
                token_label: Some("t".into()),
                slot_id: None,
                pin: SecretSource::Inline(Zeroizing::new("1234".into())),
                key_label: "k".into(),
                mechanism: Pkcs11Mechanism::AesGcm,
                max_sessions: 8,
            };
            f(&mut c);
            c
        };
        for config in [
            base(&|c| c.slot_id = Some(1)),
            base(&|c| c.token_label = None),
            base(&|c| c.key_label.clear()),
            base(&|c| c.max_sessions = 0),
            base(&|_| {}),
        ] {
            let err = Pkcs11Kms::connect(&config, &options).await.unwrap_err();
            assert!(matches!(err, KmsError::ConfigurationInvalid(_)), "{err:?}");
        }
        let err = Pkcs11Kms::connect(&base(&|_| {}), &options).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/libpkcs11.so"), "{err}");
    }
}
