//! The conformance suite every [`Kms`] backend passes.
//!
//! A backend's tests build a [`Harness`] around a real instance of its KMS (the local keystore,
//! LocalStack, OpenBao, SoftHSM, …) and call [`run_all`]. Each check panics with a message naming
//! the backend and the property that failed. Checks a backend cannot support (a KMS with no way
//! to disable a key from the test) are skipped by returning `None` from the harness and are
//! reported in the returned [`Report`].
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyhold_core::secret::Dek;

use crate::{KeyContext, Kms, KmsError};

/// What a backend's test provides to the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A name for messages.
    fn name(&self) -> &str;
    /// The backend under test, bound to a usable master key.
    fn kms(&self) -> Arc<dyn Kms>;
    /// Disables the master key in the KMS itself. `None`: not supported.
    async fn disable_key(&self) -> Option<()>;
    /// Enables it again.
    async fn enable_key(&self) -> Option<()>;
    /// Rotates the master key. `None`: not supported.
    async fn rotate_key(&self) -> Option<()>;
    /// The master key version a wrapped key was made with, if the KMS exposes it.
    fn key_version_of(&self, wrapped: &[u8]) -> Option<u32>;
    /// The same backend pointed at an address where nothing answers. `None`: not applicable.
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>>;
    /// False when the server under test only imitates the KMS's API without its cryptography
    /// (a request-shape emulator): the tamper check would then prove nothing and is skipped.
    fn real_crypto(&self) -> bool {
        true
    }
    /// How long the unreachable backend may take to say so.
    fn unreachable_deadline(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// The value of `name`, an address or credential of a test server that `scripts/test` started
/// (`scripts/services/*.sh`). Unset, the test fails and says how to get the server, unless
/// `KEYHOLD_SKIP_SERVICES=1` asks to skip tests that need servers: then `None`, and the caller
/// returns after printing that it skipped.
pub fn service_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("KEYHOLD_SKIP_SERVICES").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: {name} is not set and KEYHOLD_SKIP_SERVICES=1");
            None
        }
        _ => panic!(
            "{name} is not set: this test needs a real server. Run scripts/test (it installs and \
             starts every test server), or `source scripts/dev-services` first; \
             KEYHOLD_SKIP_SERVICES=1 skips such tests"
        ),
    }
}

/// The port of a TCP listener on 127.0.0.1 that accepts connections and never answers: a hung
/// KMS (or a firewall that drops replies), which only the backend's timeouts can end. Harder than
/// a closed port, which fails at once. The listener lives until the test process ends.
pub fn silent_port() -> u16 {
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("cannot bind a silent listener: {e}"),
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    std::thread::spawn(move || {
        // Keep every connection open, read nothing, answer nothing.
        let mut held = Vec::new();
        for socket in listener.incoming().flatten() {
            held.push(socket);
        }
    });
    port
}

/// Every check of [`run_all`], in the order it runs them.
pub const CHECKS: [&str; 7] = [
    "round_trip",
    "wrap_existing_key",
    "wrong_context_is_refused",
    "tampered_ciphertext_is_refused",
    "disabled_key_is_denied",
    "rotation_keeps_old_keys",
    "unreachable_is_reported",
];

/// Which checks ran and which were skipped.
#[derive(Debug, Default)]
pub struct Report {
    /// Checks that ran and passed.
    pub passed: Vec<&'static str>,
    /// Checks the harness could not support.
    pub skipped: Vec<&'static str>,
}

impl Report {
    /// Asserts that exactly the `skipped` checks were skipped and every other check passed, so
    /// a backend's test says once, explicitly, what its server cannot show.
    pub fn assert_all_passed_except(&self, skipped: &[&str]) {
        let mut expected_skipped: Vec<&str> = skipped.to_vec();
        expected_skipped.sort_by_key(|name| CHECKS.iter().position(|c| c == name));
        let mut actual_skipped = self.skipped.clone();
        actual_skipped.sort_by_key(|name| CHECKS.iter().position(|c| c == name));
        assert_eq!(actual_skipped, expected_skipped, "skipped checks");
        let expected_passed: Vec<&str> =
            CHECKS.iter().copied().filter(|c| !skipped.contains(c)).collect();
        assert_eq!(self.passed, expected_passed, "passed checks");
    }
}

/// Runs every check against the harness.
pub async fn run_all(h: &dyn Harness) -> Report {
    let mut report = Report::default();
    round_trip(h).await;
    report.passed.push("round_trip");
    wrap_existing_key(h).await;
    report.passed.push("wrap_existing_key");
    wrong_context_is_refused(h).await;
    report.passed.push("wrong_context_is_refused");
    if h.real_crypto() {
        tampered_ciphertext_is_refused(h).await;
        report.passed.push("tampered_ciphertext_is_refused");
    } else {
        report.skipped.push("tampered_ciphertext_is_refused");
    }
    record(&mut report, "disabled_key_is_denied", disabled_key_is_denied(h).await);
    record(&mut report, "rotation_keeps_old_keys", rotation_keeps_old_keys(h).await);
    record(&mut report, "unreachable_is_reported", unreachable_is_reported(h).await);
    report
}

fn record(report: &mut Report, name: &'static str, ran: bool) {
    if ran { report.passed.push(name) } else { report.skipped.push(name) }
}

const TENANT: &str = "conformance-tenant";
const CONFIG: i32 = 4242;

/// A generated key unwraps to the same key; two generated keys differ.
pub async fn round_trip(h: &dyn Harness) {
    let kms = h.kms();
    let ctx = KeyContext::new(TENANT, CONFIG);
    let a = kms.generate(&ctx).await.unwrap_or_else(|e| panic!("{}: generate: {e}", h.name()));
    let b = kms.generate(&ctx).await.unwrap_or_else(|e| panic!("{}: generate: {e}", h.name()));
    assert_ne!(a.dek, b.dek, "{}: two generated keys are equal", h.name());
    assert_ne!(a.wrapped, b.wrapped, "{}: two wrapped keys are equal", h.name());
    let back =
        kms.unwrap(&a.wrapped, &ctx).await.unwrap_or_else(|e| panic!("{}: unwrap: {e}", h.name()));
    assert_eq!(back, a.dek, "{}: unwrap returned another key", h.name());
    kms.health().await.unwrap_or_else(|e| panic!("{}: health: {e}", h.name()));
}

/// A key wrapped with `wrap` (as rekey does) unwraps to itself.
pub async fn wrap_existing_key(h: &dyn Harness) {
    let kms = h.kms();
    let ctx = KeyContext::new(TENANT, CONFIG);
    let dek = Dek::generate().unwrap();
    let wrapped = kms.wrap(&dek, &ctx).await.unwrap_or_else(|e| panic!("{}: wrap: {e}", h.name()));
    assert_eq!(kms.unwrap(&wrapped, &ctx).await.unwrap(), dek, "{}: wrap round trip", h.name());
}

/// A wrapped key does not unwrap for another tenant, another configuration id or another
/// purpose (a lease key is not a data key, and the other way round).
pub async fn wrong_context_is_refused(h: &dyn Harness) {
    let kms = h.kms();
    let ctx = KeyContext::new(TENANT, CONFIG);
    let wrapped = kms.generate(&ctx).await.unwrap().wrapped;
    let lease_ctx = KeyContext::lease(TENANT, CONFIG);
    let lease =
        kms.generate(&lease_ctx).await.unwrap_or_else(|e| panic!("{}: lease: {e}", h.name()));
    assert_eq!(kms.unwrap(&lease.wrapped, &lease_ctx).await.unwrap(), lease.dek);
    match kms.unwrap(&lease.wrapped, &ctx).await {
        Err(KmsError::InvalidCiphertext) => {}
        Ok(_) => panic!("{}: a lease key unwrapped as a data key", h.name()),
        Err(e) => panic!("{}: lease key as data key gave {e:?}, want InvalidCiphertext", h.name()),
    }
    // A tenant secret (deterministic encryption) is neither a data key nor a lease key.
    let secret_ctx = KeyContext::tenant_secret(TENANT, CONFIG, "users");
    let secret =
        kms.generate(&secret_ctx).await.unwrap_or_else(|e| panic!("{}: secret: {e}", h.name()));
    assert_eq!(kms.unwrap(&secret.wrapped, &secret_ctx).await.unwrap(), secret.dek);
    for wrong in [ctx, lease_ctx, KeyContext::tenant_secret(TENANT, CONFIG, "orders")] {
        match kms.unwrap(&secret.wrapped, &wrong).await {
            Err(KmsError::InvalidCiphertext) => {}
            Ok(_) => panic!("{}: a tenant secret unwrapped as {wrong:?}", h.name()),
            Err(e) => panic!("{}: tenant secret as {wrong:?} gave {e:?}", h.name()),
        }
    }
    for other in [
        KeyContext::new("another-tenant", CONFIG),
        KeyContext::new(TENANT, CONFIG + 1),
        KeyContext::lease(TENANT, CONFIG),
        KeyContext::tenant_secret(TENANT, CONFIG, ""),
    ] {
        match kms.unwrap(&wrapped, &other).await {
            Err(KmsError::InvalidCiphertext) => {}
            Ok(_) => panic!("{}: unwrapped under the wrong context {other:?}", h.name()),
            Err(e) => panic!("{}: wrong context gave {e:?}, want InvalidCiphertext", h.name()),
        }
    }
}

/// Flipping any bit of a wrapped key, or cutting it short, makes unwrap fail.
pub async fn tampered_ciphertext_is_refused(h: &dyn Harness) {
    let kms = h.kms();
    let ctx = KeyContext::new(TENANT, CONFIG);
    let wrapped = kms.generate(&ctx).await.unwrap().wrapped;
    let positions = [0, wrapped.len() / 2, wrapped.len() - 1];
    for pos in positions {
        let mut bad = wrapped.clone();
        bad[pos] ^= 0x01;
        match kms.unwrap(&bad, &ctx).await {
            Err(KmsError::InvalidCiphertext) => {}
            Ok(_) => panic!("{}: tampered byte {pos} accepted", h.name()),
            Err(e) => {
                panic!("{}: tampered byte {pos} gave {e:?}, want InvalidCiphertext", h.name())
            }
        }
    }
    for len in [0, 1, wrapped.len() - 1] {
        assert!(
            matches!(kms.unwrap(&wrapped[..len], &ctx).await, Err(KmsError::InvalidCiphertext)),
            "{}: truncated wrapped key of {len} bytes not refused as invalid",
            h.name()
        );
    }
}

/// With the key disabled, wrap and unwrap are denied; enabled again, old wrapped keys unwrap.
pub async fn disabled_key_is_denied(h: &dyn Harness) -> bool {
    let kms = h.kms();
    let ctx = KeyContext::new(TENANT, CONFIG);
    let before = kms.generate(&ctx).await.unwrap();
    if h.disable_key().await.is_none() {
        return false;
    }
    let unwrap = kms.unwrap(&before.wrapped, &ctx).await;
    let generate = kms.generate(&ctx).await;
    h.enable_key().await.expect("harness can disable but not enable");
    match unwrap {
        Err(e) if e.is_revocation() => {}
        other => panic!("{}: unwrap with a disabled key gave {other:?}, want denied", h.name()),
    }
    match generate {
        Err(e) if e.is_revocation() => {}
        other => panic!(
            "{}: generate with a disabled key gave {:?}, want denied",
            h.name(),
            other.map(|_| ())
        ),
    }
    assert_eq!(
        kms.unwrap(&before.wrapped, &ctx).await.unwrap(),
        before.dek,
        "{}: re-enabled key",
        h.name()
    );
    true
}

/// After rotation, keys wrapped before still unwrap and new wraps use the new version.
pub async fn rotation_keeps_old_keys(h: &dyn Harness) -> bool {
    let kms = h.kms();
    let ctx = KeyContext::new(TENANT, CONFIG);
    let old = kms.generate(&ctx).await.unwrap();
    let old_version = h.key_version_of(&old.wrapped);
    if h.rotate_key().await.is_none() {
        return false;
    }
    let new = kms.generate(&ctx).await.unwrap();
    assert_eq!(
        kms.unwrap(&old.wrapped, &ctx).await.unwrap(),
        old.dek,
        "{}: old key after rotation",
        h.name()
    );
    assert_eq!(
        kms.unwrap(&new.wrapped, &ctx).await.unwrap(),
        new.dek,
        "{}: new key after rotation",
        h.name()
    );
    if let (Some(before), Some(after)) = (old_version, h.key_version_of(&new.wrapped)) {
        assert!(
            after > before,
            "{}: new wraps use version {after}, not newer than {before}",
            h.name()
        );
    }
    true
}

/// A KMS that does not answer is reported as unreachable within the deadline.
pub async fn unreachable_is_reported(h: &dyn Harness) -> bool {
    let Some(kms) = h.unreachable_kms() else {
        return false;
    };
    let ctx = KeyContext::new(TENANT, CONFIG);
    let started = Instant::now();
    let result = tokio::time::timeout(h.unreachable_deadline() * 2, kms.generate(&ctx)).await;
    let elapsed = started.elapsed();
    match result {
        Ok(Err(KmsError::Unreachable(_))) => {}
        Ok(other) => panic!("{}: unreachable KMS gave {:?}", h.name(), other.map(|_| ())),
        Err(_) => panic!(
            "{}: unreachable KMS did not answer within {:?}",
            h.name(),
            h.unreachable_deadline() * 2
        ),
    }
    assert!(
        elapsed <= h.unreachable_deadline(),
        "{}: took {elapsed:?} to report unreachable",
        h.name()
    );
    true
}
