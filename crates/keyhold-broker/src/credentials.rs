//! Tenant admins' login secrets: passwords (argon2id PHC strings), TOTP (RFC 6238: SHA-1, 6
//! digits, 30 s steps, through `totp-rs`), and the in-memory limit on failed sign-ins.
//!
//! Password hashing and checking take tens of milliseconds on purpose: call them from
//! `tokio::task::spawn_blocking`. Nothing here logs a password, a code or a secret.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::error::StoreError;

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in bytes (hashing cost must stay bounded).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// TOTP step, seconds.
pub const TOTP_STEP_SECONDS: u64 = 30;
/// TOTP code length.
pub const TOTP_DIGITS: u8 = 6;
/// The issuer shown in authenticator apps.
pub const TOTP_ISSUER: &str = "Keyhold";
/// Failed sign-ins for one e-mail address after which sign-in is refused for a while.
pub const MAX_LOGIN_FAILURES: usize = 5;
/// The window in which failures count.
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked before old entries are dropped.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// A login secret could not be made or used (the broker's fault, not the caller's).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Hashing a password failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The operating system gave no random bytes.
    #[error("no randomness")]
    Random,
    /// A TOTP secret is unusable (a corrupt stored secret).
    #[error("TOTP secret unusable: {0}")]
    Totp(String),
}

/// Refuses a password shorter than [`MIN_PASSWORD_CHARS`] or longer than
/// [`MAX_PASSWORD_BYTES`] (`invalid_field`).
pub fn check_password_strength(password: &str) -> Result<(), StoreError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(StoreError::InvalidField {
            field: "password".into(),
            message: format!(
                "must be at least {MIN_PASSWORD_CHARS} characters (and at most {MAX_PASSWORD_BYTES} bytes)"
            ),
        });
    }
    Ok(())
}

/// The argon2id PHC string of a password (default parameters, random salt). Blocking.
pub fn hash_password(password: &[u8]) -> Result<Zeroizing<String>, CredentialError> {
    let hash = Argon2::default()
        .hash_password(password)
        .map_err(|e| CredentialError::Hash(e.to_string()))?;
    Ok(Zeroizing::new(hash.to_string()))
}

/// A PHC string of a password nobody knows, checked when the e-mail address is unknown so that
/// the answer takes as long as for a known one.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let mut random = Zeroizing::new([0u8; 32]);
            keyhold_core::random::fill_random(&mut *random).ok()?;
            hash_password(&*random).ok().map(|h| h.to_string())
        })
        .as_deref()
}

/// Whether `password` matches `phc`; with `None` (no such admin), checks against a dummy hash
/// and returns `false`, taking about as long. Blocking.
pub fn verify_password(password: &[u8], phc: Option<&str>) -> bool {
    match phc {
        Some(phc) => Argon2::default().verify_password(password, phc).is_ok(),
        None => {
            if let Some(dummy) = dummy_hash() {
                let _ = Argon2::default().verify_password(password, dummy);
            }
            false
        }
    }
}

/// A fresh TOTP secret: 20 random bytes (160 bits, as RFC 4226 recommends), base32.
pub fn new_totp_secret() -> Result<Zeroizing<String>, CredentialError> {
    let mut bytes = Zeroizing::new([0u8; 20]);
    keyhold_core::random::fill_random(&mut *bytes).map_err(|_| CredentialError::Random)?;
    Ok(Zeroizing::new(totp_rs::Secret::from(*bytes).to_base32()))
}

fn totp(secret_base32: &str, account: Option<&str>) -> Result<totp_rs::Totp, CredentialError> {
    let secret = totp_rs::Secret::try_from_base32(secret_base32)
        .map_err(|e| CredentialError::Totp(e.to_string()))?;
    let mut builder = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(TOTP_DIGITS)
        .with_step_duration(TOTP_STEP_SECONDS)
        .with_skew(0)
        .with_secret(secret);
    if let Some(account) = account {
        // `:` separates issuer and account in the label; it may not appear in either.
        builder =
            builder.with_account_name(account.replace(':', "_")).with_issuer(Some(TOTP_ISSUER));
    }
    builder.build().map_err(|e| CredentialError::Totp(e.to_string()))
}

/// The `otpauth://totp/…` URL for authenticator apps (usually shown as a QR code).
pub fn otpauth_url(secret_base32: &str, email: &str) -> Result<Zeroizing<String>, CredentialError> {
    let url = totp(secret_base32, Some(email))?
        .to_url()
        .map_err(|e| CredentialError::Totp(e.to_string()))?;
    Ok(Zeroizing::new(url))
}

/// The TOTP code of the step holding `unix_time` (for tests and tools).
pub fn totp_code(secret_base32: &str, unix_time: u64) -> Result<String, CredentialError> {
    Ok(totp(secret_base32, None)?.generate(unix_time).to_string())
}

/// The step (unix time / 30) whose code `code` is: the current step or the previous one (a
/// code typed just before the step ended). `None` if neither; compared in constant time.
pub fn totp_step(
    secret_base32: &str,
    code: &str,
    unix_time: u64,
) -> Result<Option<u64>, CredentialError> {
    let totp = totp(secret_base32, None)?;
    let code = code.trim().as_bytes();
    let current = unix_time / TOTP_STEP_SECONDS;
    let mut found = None;
    for step in [current, current.saturating_sub(1)] {
        let expected = Zeroizing::new(totp.generate(step * TOTP_STEP_SECONDS).to_string());
        if bool::from(expected.as_bytes().ct_eq(code)) && found.is_none() {
            found = Some(step);
        }
    }
    Ok(found)
}

/// Failed sign-ins per e-mail address, in memory (per broker process; a restart or another
/// replica starts afresh).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    fn with_map<T>(&self, f: impl FnOnce(&mut HashMap<String, Vec<Instant>>) -> T) -> T {
        let mut map = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut map)
    }

    /// Whether this address had [`MAX_LOGIN_FAILURES`] failures within the window.
    pub fn is_blocked(&self, email: &str) -> bool {
        self.with_map(|map| {
            map.get(email).is_some_and(|times| {
                times.iter().filter(|t| t.elapsed() < LOGIN_FAILURE_WINDOW).count()
                    >= MAX_LOGIN_FAILURES
            })
        })
    }

    /// Counts a failure.
    pub fn record_failure(&self, email: &str) {
        self.with_map(|map| {
            if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(email) {
                map.retain(|_, times| times.iter().any(|t| t.elapsed() < LOGIN_FAILURE_WINDOW));
                if map.len() >= MAX_TRACKED_ADDRESSES {
                    // Still full: forget everything rather than grow without bound.
                    map.clear();
                }
            }
            let times = map.entry(email.to_owned()).or_default();
            times.retain(|t| t.elapsed() < LOGIN_FAILURE_WINDOW);
            times.push(Instant::now());
        });
    }

    /// Forgets the failures of an address (after a successful sign-in).
    pub fn clear(&self, email: &str) {
        self.with_map(|map| map.remove(email));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1, key "12345678901234567890", last 6 digits.
        let secret = totp_rs::Secret::from(*b"12345678901234567890").to_base32();
        assert_eq!(totp_code(&secret, 59).unwrap(), "287082");
        assert_eq!(totp_code(&secret, 1_111_111_109).unwrap(), "081804");
        assert_eq!(totp_code(&secret, 1_234_567_890).unwrap(), "005924");
    }

    #[test]
    fn current_and_previous_step_only() {
        let secret = new_totp_secret().unwrap();
        let now = 1_800_000_015;
        let code_now = totp_code(&secret, now).unwrap();
        let code_prev = totp_code(&secret, now - 30).unwrap();
        let code_next = totp_code(&secret, now + 30).unwrap();
        let code_old = totp_code(&secret, now - 60).unwrap();
        assert_eq!(totp_step(&secret, &code_now, now).unwrap(), Some(now / 30));
        assert_eq!(totp_step(&secret, &code_prev, now).unwrap(), Some(now / 30 - 1));
        assert_eq!(totp_step(&secret, &code_next, now).unwrap(), None);
        assert_eq!(totp_step(&secret, &code_old, now).unwrap(), None);
        assert_eq!(totp_step(&secret, "", now).unwrap(), None);
        assert!(otpauth_url(&secret, "a:b@example.com").unwrap().starts_with("otpauth://totp/"));
    }

    #[test]
    fn passwords() {
        let hash = hash_password(b"correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(b"correct horse battery", Some(&hash)));
        assert!(!verify_password(b"wrong horse battery", Some(&hash)));
        assert!(!verify_password(b"correct horse battery", None));
        assert!(!verify_password(b"x", Some("not a phc string")));
        assert!(check_password_strength("short").is_err());
        assert!(check_password_strength("twelve chars").is_ok());
    }

    #[test]
    fn limiter() {
        let l = LoginLimiter::default();
        for _ in 0..MAX_LOGIN_FAILURES - 1 {
            l.record_failure("a@x");
        }
        assert!(!l.is_blocked("a@x"));
        l.record_failure("a@x");
        assert!(l.is_blocked("a@x"));
        assert!(!l.is_blocked("b@x"));
        l.clear("a@x");
        assert!(!l.is_blocked("a@x"));
    }
}
