//! One loaded PKCS#11 module per process, and the login state of its tokens.
//!
//! A PKCS#11 module may be initialized (`C_Initialize`) only once per process, and a login holds
//! for the whole application on that token: every session of the process sees it, and it ends
//! when the last session on the token closes (or anyone calls `C_Logout`). So modules live in a
//! process-wide registry keyed by their canonical path, and each token's login is tracked here,
//! under one lock, whichever [`Pkcs11Kms`](super::Pkcs11Kms) uses it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::errors::{Op, map};
use crate::KmsError;

/// A loaded and initialized PKCS#11 module, shared by every backend instance in the process.
pub(super) struct Module {
    path: PathBuf,
    ctx: Pkcs11,
    logins: Mutex<HashMap<u64, TokenLogin>>,
}

impl core::fmt::Debug for Module {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Module").field("path", &self.path).finish_non_exhaustive()
    }
}

/// What this process knows about one token's user login.
#[derive(Default)]
struct TokenLogin {
    /// SHA-256 of the PIN this process logged the token in with.
    verified: Option<[u8; 32]>,
    /// SHA-256 of PINs the token refused. They are not tried again: each failed try counts
    /// towards the token's PIN lockout, which would lock out every tenant on the token.
    refused: Vec<[u8; 32]>,
}

/// A user PIN, with the hash the login state is keyed by.
pub(super) struct Pin {
    value: Zeroizing<String>,
    hash: [u8; 32],
}

impl Pin {
    pub(super) fn new(value: Zeroizing<String>) -> Self {
        let hash = Sha256::digest(value.as_bytes()).into();
        Self { value, hash }
    }
}

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The module at `path`, loaded and initialized once per process.
pub(super) fn load(path: &Path) -> Result<Arc<Module>, KmsError> {
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        KmsError::ConfigurationInvalid(format!("the PKCS#11 module {}: {e}", path.display()))
    })?;
    let mut modules = lock(MODULES.get_or_init(Mutex::default));
    if let Some(module) = modules.get(&canonical) {
        return Ok(Arc::clone(module));
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| {
        KmsError::ConfigurationInvalid(format!(
            "cannot load the PKCS#11 module {}: {e}",
            canonical.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another library in this process initialized it already: share that.
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            let mapped = map(&e, Op::Setup, "");
            return Err(match mapped.error {
                e @ (KmsError::Unreachable(_) | KmsError::Throttled) => e,
                other => KmsError::ConfigurationInvalid(format!(
                    "the PKCS#11 module {} did not initialize: {other}",
                    canonical.display()
                )),
            });
        }
    }
    tracing::debug!(module = %canonical.display(), "PKCS#11 module loaded");
    let module = Arc::new(Module { path: canonical.clone(), ctx, logins: Mutex::default() });
    modules.insert(canonical, Arc::clone(&module));
    Ok(module)
}

impl Module {
    /// The module's path, for messages.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The PKCS#11 context.
    pub(super) fn ctx(&self) -> &Pkcs11 {
        &self.ctx
    }

    /// Makes sure the token in `slot` is logged in as the user with `pin`, from `session`.
    ///
    /// A PIN the token refused before is not tried again. When the token is already logged in
    /// with another PIN this process verified, `pin` is refused without a try (a token has one
    /// user PIN); when someone else in the process logged it in, the login is redone with `pin`
    /// so that a wrong PIN never rides on another's login.
    pub(super) fn login(&self, slot: Slot, session: &Session, pin: &Pin) -> Result<(), KmsError> {
        let mut logins = lock(&self.logins);
        let state = logins.entry(slot.id()).or_default();
        if state.refused.contains(&pin.hash) {
            return Err(KmsError::AccessDenied(
                "the token refused this PIN before; it is not tried again, as every failed try \
                 counts towards the token's PIN lockout (fix the PIN in the configuration)"
                    .into(),
            ));
        }
        let info = session.get_session_info().map_err(|e| map(&e, Op::Setup, "").error)?;
        match info.session_state() {
            SessionState::RoUser | SessionState::RwUser => match state.verified {
                Some(hash) if hash == pin.hash => return Ok(()),
                Some(_) => {
                    return Err(KmsError::AccessDenied(
                        "the token is logged in with another PIN than this configuration's".into(),
                    ));
                }
                None => {
                    // Logged in by someone else in this process: log in again to check our PIN.
                    let _ = session.logout();
                }
            },
            SessionState::RwSecurityOfficer => {
                return Err(KmsError::AccessDenied(
                    "the token is logged in as its security officer, not as its user".into(),
                ));
            }
            SessionState::RoPublic | SessionState::RwPublic => {}
        }
        let auth = AuthPin::from(pin.value.as_str());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) => {
                state.verified = Some(pin.hash);
                tracing::debug!(module = %self.path.display(), slot = slot.id(), "logged in");
                Ok(())
            }
            // Someone logged in between our check and our login: the PIN is unverified.
            Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Err(KmsError::Unreachable(
                "another login to the token raced this one; try again".into(),
            )),
            Err(
                e @ Error::Pkcs11(
                    RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                    _,
                ),
            ) => {
                state.refused.push(pin.hash);
                if state.verified == Some(pin.hash) {
                    state.verified = None;
                }
                Err(map(&e, Op::Setup, "").error)
            }
            Err(e) => Err(map(&e, Op::Setup, "").error),
        }
    }
}
