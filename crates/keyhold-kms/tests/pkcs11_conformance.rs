//! The `pkcs11` backend against a real PKCS#11 token: SoftHSM 2, set up by
//! scripts/services/pkcs11.sh (which exports SOFTHSM2_CONF and KEYHOLD_TEST_PKCS11_*).
//!
//! Every test makes its own AES-256 master key (a token object, sensitive, not extractable) with
//! a label of its own, through cryptoki as a token administrator would, so tests can run in
//! parallel in one process. That administrator shares the process's PKCS#11 module (and its
//! token login) with the backend, as another library in the proxy would.
#![cfg(feature = "pkcs11")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use keyhold_core::secret::Dek;
use keyhold_kms::conformance::{Harness, run_all, service_env};
use keyhold_kms::pkcs11::{Pkcs11Config, Pkcs11Kms, Pkcs11Mechanism};
use keyhold_kms::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};
use zeroize::Zeroizing;

/// The test token, from the environment scripts/services/pkcs11.sh prepared.
#[derive(Clone)]
struct Token {
    module: String,
    label: String,
    pin: String,
}

impl Token {
    /// Test token `number` (1 to 16): each test has its own, see scripts/services/pkcs11.sh.
    fn from_env(number: u32) -> Option<Self> {
        let prefix = service_env("KEYHOLD_TEST_PKCS11_TOKEN")?;
        let token = Self {
            module: service_env("KEYHOLD_TEST_PKCS11_MODULE")?,
            label: format!("{prefix}-{number}"),
            pin: service_env("KEYHOLD_TEST_PKCS11_PIN")?,
        };
        // Before any backend of this test exists: see `admin_context`.
        admin_context(&token.module);
        Some(token)
    }

    fn config(&self, key_label: &str, mechanism: Pkcs11Mechanism) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone().into(),
            token_label: Some(self.label.clone()),
            slot_id: None,
            pin: SecretSource::Inline(Zeroizing::new(self.pin.clone())),
            key_label: key_label.into(),
            mechanism,
            max_sessions: 8,
        }
    }

    async fn kms(&self, key_label: &str, mechanism: Pkcs11Mechanism) -> Pkcs11Kms {
        Pkcs11Kms::connect(&self.config(key_label, mechanism), &ConnectOptions::default())
            .await
            .unwrap()
    }

    /// Runs `f` in a fresh read-write session logged in as the token's user, as an administrator
    /// tool would. The backend may log the token out and in again meanwhile (it checks its own
    /// PIN when it finds the token logged in by someone else): then log in and try again.
    fn admin<T>(&self, f: impl Fn(&Session) -> cryptoki::error::Result<T>) -> T {
        // SoftHSM's file store fails token-object writes made by two threads of one process
        // at once (CKR_GENERAL_ERROR from C_GenerateKey): administrators take turns.
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ctx = admin_context(&self.module);
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|&s| ctx.get_token_info(s).is_ok_and(|info| info.label() == self.label))
            .expect("the test token");
        let session = ctx.open_rw_session(slot).unwrap();
        let pin = AuthPin::from(self.pin.as_str());
        for _ in 0..20 {
            match session.login(UserType::User, Some(&pin)) {
                Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => panic!("admin login: {e}"),
            }
            match f(&session) {
                Err(Error::Pkcs11(RvError::UserNotLoggedIn, _)) => continue,
                result => return result.unwrap(),
            }
        }
        panic!("the admin session kept being logged out");
    }

    /// A new AES-256 master key with `label` and `CKA_ID` = `version` (big-endian, 1 byte when
    /// it fits, as `pkcs11-tool --id 01` makes it).
    fn create_key(&self, label: &str, version: u32) {
        let id = if version < 256 { vec![version as u8] } else { version.to_be_bytes().to_vec() };
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        // SoftHSM's file store is not safe against a token object being written by one thread
        // while another thread of the same process re-reads the token (as the backend's
        // C_FindObjects does): C_GenerateKey then fails now and then with CKR_GENERAL_ERROR or
        // CKR_TEMPLATE_INCONSISTENT. Across processes (an administrator's tool and the proxy)
        // its file locks prevent this. Remove the half-made object (if any) and try again.
        self.admin(|s| {
            let same = [Attribute::Label(label.as_bytes().to_vec()), Attribute::Id(id.clone())];
            let before = s.find_objects(&same)?;
            let mut last = None;
            for _ in 0..10 {
                match s.generate_key(&Mechanism::AesKeyGen, &template) {
                    Ok(_) => return Ok(()),
                    Err(
                        e @ Error::Pkcs11(
                            RvError::GeneralError
                            | RvError::TemplateInconsistent
                            | RvError::FunctionFailed,
                            _,
                        ),
                    ) => {
                        eprintln!("SoftHSM in-process write race ({e}); trying again");
                        for stale in s.find_objects(&same)? {
                            if !before.contains(&stale) {
                                s.destroy_object(stale)?;
                            }
                        }
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap())
        })
    }

    /// The keys labelled `label`, found in the session `f` then runs in: SoftHSM hands out new
    /// object handles once every session on the token has closed, so a handle is only good in
    /// the session (or while some session stays open) it was found in.
    fn with_keys(
        &self,
        label: &str,
        f: impl Fn(&Session, ObjectHandle) -> cryptoki::error::Result<()>,
    ) {
        self.admin(|s| {
            let keys = s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])?;
            for key in keys {
                f(s, key)?;
            }
            Ok(())
        })
    }

    /// Allows or forbids every use of every key labelled `label` (how a tenant disables it).
    fn set_usable(&self, label: &str, usable: bool) {
        self.with_keys(label, |s, key| {
            s.update_attributes(
                key,
                &[
                    Attribute::Encrypt(usable),
                    Attribute::Decrypt(usable),
                    Attribute::Wrap(usable),
                    Attribute::Unwrap(usable),
                ],
            )
        });
    }

    fn destroy_keys(&self, label: &str) {
        self.with_keys(label, |s, key| s.destroy_object(key));
    }
}

/// The administrator's handle on the module, initialized once per test process before any
/// backend loads it, and never dropped (unloading an initialized module would pull the library
/// out from under the backend). Two `C_Initialize` calls racing in one process leave SoftHSM
/// with two half-built states (sessions vanish, the token reads as uninitialized); the backend
/// serializes its own loads, so here every test initializes through this lock first and the
/// backend then finds the module initialized (CKR_CRYPTOKI_ALREADY_INITIALIZED).
fn admin_context(module: &str) -> &'static Pkcs11 {
    static ADMIN: std::sync::OnceLock<Pkcs11> = std::sync::OnceLock::new();
    ADMIN.get_or_init(|| {
        let ctx = Pkcs11::new(module).unwrap();
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        ctx
    })
}

/// A label no other test (and no earlier run on a kept token) uses.
fn unique_label(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!(
        "keyhold-{test}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

struct Pkcs11Harness {
    name: String,
    token: Token,
    label: String,
    version: AtomicU32,
    kms: Arc<Pkcs11Kms>,
}

impl Pkcs11Harness {
    async fn new(token: Token, mechanism: Pkcs11Mechanism) -> Self {
        let label = unique_label("conformance");
        token.create_key(&label, 1);
        let kms = Arc::new(token.kms(&label, mechanism).await);
        Self { name: format!("pkcs11 ({mechanism:?})"), token, label, version: 1.into(), kms }
    }
}

#[async_trait]
impl Harness for Pkcs11Harness {
    fn name(&self) -> &str {
        &self.name
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        self.token.set_usable(&self.label, false);
        Some(())
    }
    async fn enable_key(&self) -> Option<()> {
        self.token.set_usable(&self.label, true);
        Some(())
    }
    async fn rotate_key(&self) -> Option<()> {
        let next = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.token.create_key(&self.label, next);
        Some(())
    }
    fn key_version_of(&self, wrapped: &[u8]) -> Option<u32> {
        Pkcs11Kms::key_version_of(wrapped)
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        // The module runs in-process: there is no address to make unreachable, and SoftHSM's
        // tokens cannot be unplugged while it runs.
        None
    }
}

async fn conformance(token: u32, mechanism: Pkcs11Mechanism) {
    let Some(token) = Token::from_env(token) else { return };
    let harness = Pkcs11Harness::new(token.clone(), mechanism).await;
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&["unreachable_is_reported"]);
    token.destroy_keys(&harness.label);
}

#[tokio::test]
async fn aes_gcm_passes_conformance() {
    conformance(1, Pkcs11Mechanism::AesGcm).await;
}

#[tokio::test]
async fn aes_key_wrap_pad_passes_conformance() {
    conformance(2, Pkcs11Mechanism::AesKeyWrapPad).await;
}

#[tokio::test]
async fn wrong_context_is_invalid_ciphertext_for_both_mechanisms() {
    let Some(token) = Token::from_env(3) else { return };
    let label = unique_label("aad");
    token.create_key(&label, 1);
    let ctx = KeyContext::new("tenant-a", 1);
    for mechanism in [Pkcs11Mechanism::AesGcm, Pkcs11Mechanism::AesKeyWrapPad] {
        let kms = token.kms(&label, mechanism).await;
        let generated = kms.generate(&ctx).await.unwrap();
        assert_eq!(kms.unwrap(&generated.wrapped, &ctx).await.unwrap(), generated.dek);
        for other in [KeyContext::new("tenant-b", 1), KeyContext::new("tenant-a", 2)] {
            assert_eq!(
                kms.unwrap(&generated.wrapped, &other).await.unwrap_err(),
                KmsError::InvalidCiphertext,
                "{mechanism:?} {other:?}"
            );
        }
        // The session that saw the failure (SoftHSM's CKR_GENERAL_ERROR) is not reused broken.
        assert_eq!(kms.unwrap(&generated.wrapped, &ctx).await.unwrap(), generated.dek);
        // Every byte is covered: the header by the AAD / hash, the rest by the tag / key wrap.
        for pos in 0..generated.wrapped.len() {
            let mut bad = generated.wrapped.clone();
            bad[pos] ^= 0x80;
            assert_eq!(
                kms.unwrap(&bad, &ctx).await.unwrap_err(),
                KmsError::InvalidCiphertext,
                "{mechanism:?}: byte {pos} flipped"
            );
        }
    }
    token.destroy_keys(&label);
}

#[tokio::test]
async fn the_format_byte_not_the_setting_decides_how_to_unwrap() {
    let Some(token) = Token::from_env(4) else { return };
    let label = unique_label("formats");
    token.create_key(&label, 1);
    let gcm = token.kms(&label, Pkcs11Mechanism::AesGcm).await;
    let kwp = token.kms(&label, Pkcs11Mechanism::AesKeyWrapPad).await;
    let ctx = KeyContext::new("t", 7);
    let a = gcm.generate(&ctx).await.unwrap();
    let b = kwp.generate(&ctx).await.unwrap();
    assert_eq!((a.wrapped.len(), a.wrapped[0]), (65, 0x01));
    assert_eq!((b.wrapped.len(), b.wrapped[0]), (77, 0x02));
    assert_eq!(kwp.unwrap(&a.wrapped, &ctx).await.unwrap(), a.dek);
    assert_eq!(gcm.unwrap(&b.wrapped, &ctx).await.unwrap(), b.dek);
    // Rewrapping the same key: GCM draws a fresh IV, key wrap is deterministic.
    let dek = Dek::generate().unwrap();
    assert_ne!(gcm.wrap(&dek, &ctx).await.unwrap(), gcm.wrap(&dek, &ctx).await.unwrap());
    assert_eq!(kwp.wrap(&dek, &ctx).await.unwrap(), kwp.wrap(&dek, &ctx).await.unwrap());
    token.destroy_keys(&label);
}

#[tokio::test]
async fn a_missing_key_label_is_a_configuration_error_naming_it() {
    let Some(token) = Token::from_env(5) else { return };
    let label = unique_label("missing");
    let kms = token.kms(&label, Pkcs11Mechanism::AesGcm).await;
    let ctx = KeyContext::new("t", 1);
    for err in [
        kms.generate(&ctx).await.unwrap_err(),
        kms.health().await.unwrap_err(),
        kms.unwrap(&[&[1, 0, 0, 0, 1][..], &[0; 60]].concat(), &ctx).await.unwrap_err(),
    ] {
        match err {
            KmsError::ConfigurationInvalid(message) => {
                assert!(message.contains(&label), "{message}")
            }
            other => panic!("missing key gave {other:?}"),
        }
    }
    // Created later, the key is found (nothing negative is cached).
    token.create_key(&label, 1);
    kms.health().await.unwrap();
    let generated = kms.generate(&ctx).await.unwrap();
    assert_eq!(kms.unwrap(&generated.wrapped, &ctx).await.unwrap(), generated.dek);
    // Destroyed again: new wraps fail as misconfigured.
    token.destroy_keys(&label);
    assert!(matches!(kms.generate(&ctx).await, Err(KmsError::ConfigurationInvalid(_))));
}

#[tokio::test]
async fn two_keys_with_one_label_and_version_are_a_configuration_error() {
    let Some(token) = Token::from_env(6) else { return };
    let label = unique_label("duplicate");
    token.create_key(&label, 3);
    token.create_key(&label, 3);
    let kms = token.kms(&label, Pkcs11Mechanism::AesGcm).await;
    match kms.generate(&KeyContext::new("t", 1)).await.map(|_| ()) {
        Err(KmsError::ConfigurationInvalid(message)) => {
            assert!(message.contains("more than one key"), "{message}")
        }
        other => panic!("duplicate keys gave {other:?}"),
    }
    // A newer version resolves it for new wraps.
    token.create_key(&label, 4);
    let generated = kms.generate(&KeyContext::new("t", 1)).await.unwrap();
    assert_eq!(Pkcs11Kms::key_version_of(&generated.wrapped), Some(4));
    token.destroy_keys(&label);
}

#[tokio::test]
async fn a_wrong_pin_is_access_denied_and_harms_no_one_else() {
    let Some(token) = Token::from_env(7) else { return };
    let label = unique_label("pin");
    token.create_key(&label, 1);
    let good = token.kms(&label, Pkcs11Mechanism::AesGcm).await;
    let ctx = KeyContext::new("t", 1);
    let generated = good.generate(&ctx).await.unwrap();

    let mut config = token.config(&label, Pkcs11Mechanism::AesGcm);
    config.pin = SecretSource::Inline(Zeroizing::new("not-the-pin".into()));
    let bad = Pkcs11Kms::connect(&config, &ConnectOptions::default()).await.unwrap();
    for _ in 0..3 {
        let err = bad.unwrap(&generated.wrapped, &ctx).await.unwrap_err();
        assert!(matches!(err, KmsError::AccessDenied(_)), "{err:?}");
        assert!(!err.to_string().contains("not-the-pin"), "{err}");
        assert!(matches!(bad.health().await, Err(KmsError::AccessDenied(_))));
    }
    // The right PIN keeps working, also from a new instance (a new pool of sessions).
    assert_eq!(good.unwrap(&generated.wrapped, &ctx).await.unwrap(), generated.dek);
    let again = token.kms(&label, Pkcs11Mechanism::AesGcm).await;
    assert_eq!(again.unwrap(&generated.wrapped, &ctx).await.unwrap(), generated.dek);
    token.destroy_keys(&label);
}

#[tokio::test]
async fn a_wrong_pin_is_refused_even_on_a_fresh_token_login() {
    // The wrong PIN meets a token nobody is logged in to: the token itself refuses it.
    let Some(token) = Token::from_env(8) else { return };
    let label = unique_label("fresh-pin");
    let mut config = token.config(&label, Pkcs11Mechanism::AesKeyWrapPad);
    config.pin = SecretSource::Inline(Zeroizing::new("also-not-the-pin".into()));
    let bad = Pkcs11Kms::connect(&config, &ConnectOptions::default()).await.unwrap();
    let ctx = KeyContext::new("t", 1);
    let err = bad.generate(&ctx).await.map(|_| ()).unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied(_)), "{err:?}");

    // The administrator logs in (the backend did not) and makes the key; the right PIN then
    // logs in again (it cannot know which PIN the administrator used) and works ...
    token.create_key(&label, 1);
    let good = token.kms(&label, Pkcs11Mechanism::AesKeyWrapPad).await;
    let generated = good.generate(&ctx).await.unwrap();
    // ... and the refused PIN stays refused without another try at the token.
    let err = bad.unwrap(&generated.wrapped, &ctx).await.unwrap_err();
    match err {
        KmsError::AccessDenied(message) => {
            assert!(message.contains("not tried again"), "{message}")
        }
        other => panic!("refused PIN gave {other:?}"),
    }
    assert_eq!(good.unwrap(&generated.wrapped, &ctx).await.unwrap(), generated.dek);
    token.destroy_keys(&label);
}

#[tokio::test]
async fn bad_module_and_token_are_configuration_errors() {
    let Some(token) = Token::from_env(9) else { return };
    let options = ConnectOptions::default();
    let mut config = token.config("k", Pkcs11Mechanism::AesGcm);
    config.module = "/usr/lib/x86_64-linux-gnu/libc.so.6".into();
    if std::path::Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6").exists() {
        let err = Pkcs11Kms::connect(&config, &options).await.unwrap_err();
        assert!(matches!(err, KmsError::ConfigurationInvalid(_)), "{err:?}");
    }
    config.module = "/nonexistent/module.so".into();
    assert!(matches!(
        Pkcs11Kms::connect(&config, &options).await,
        Err(KmsError::ConfigurationInvalid(_))
    ));

    let mut config = token.config("k", Pkcs11Mechanism::AesGcm);
    config.token_label = Some("no-such-token".into());
    let kms = Pkcs11Kms::connect(&config, &options).await.unwrap();
    match kms.health().await {
        Err(KmsError::ConfigurationInvalid(message)) => {
            assert!(message.contains("no-such-token"), "{message}")
        }
        other => panic!("missing token gave {other:?}"),
    }
    let mut config = token.config("k", Pkcs11Mechanism::AesGcm);
    config.token_label = None;
    config.slot_id = Some(987_654);
    let kms = Pkcs11Kms::connect(&config, &options).await.unwrap();
    assert!(matches!(kms.health().await, Err(KmsError::ConfigurationInvalid(_))));
}

#[tokio::test]
async fn the_token_can_be_selected_by_slot_id() {
    let Some(token) = Token::from_env(10) else { return };
    let label = unique_label("slot");
    token.create_key(&label, 1);
    let slot = token.admin(|s| s.get_session_info().map(|i| i.slot_id()));
    let mut config = token.config(&label, Pkcs11Mechanism::AesGcm);
    config.token_label = None;
    config.slot_id = Some(slot.id());
    let kms = Pkcs11Kms::connect(&config, &ConnectOptions::default()).await.unwrap();
    kms.health().await.unwrap();
    token.destroy_keys(&label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_unwraps_share_the_session_pool() {
    let Some(token) = Token::from_env(11) else { return };
    let label = unique_label("concurrent");
    token.create_key(&label, 1);
    for (mechanism, max_sessions) in [
        (Pkcs11Mechanism::AesGcm, 4),
        (Pkcs11Mechanism::AesKeyWrapPad, 8),
        (Pkcs11Mechanism::AesGcm, 1),
    ] {
        let mut config = token.config(&label, mechanism);
        config.max_sessions = max_sessions;
        let kms = Arc::new(Pkcs11Kms::connect(&config, &ConnectOptions::default()).await.unwrap());
        let ctx = KeyContext::new("t", 1);
        let mut keys = Vec::new();
        for _ in 0..20 {
            keys.push(kms.generate(&ctx).await.unwrap());
        }
        let keys = Arc::new(keys);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let kms = Arc::clone(&kms);
                let keys = Arc::clone(&keys);
                tokio::spawn(async move {
                    let key = &keys[i % keys.len()];
                    let ctx = KeyContext::new("t", 1);
                    assert_eq!(kms.unwrap(&key.wrapped, &ctx).await.unwrap(), key.dek);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // 220 calls, at most `max_sessions` sessions ever open with the token at once; they stay
        // open (pooled) for the next calls.
        let (open, peak) = kms.sessions();
        assert!(
            (1..=max_sessions).contains(&peak),
            "{peak} sessions open at once, limit {max_sessions}"
        );
        assert!(
            (1..=max_sessions).contains(&open),
            "{open} sessions still open, limit {max_sessions}"
        );
    }
    token.destroy_keys(&label);
}

#[tokio::test]
async fn a_disabled_key_is_reported_by_health() {
    let Some(token) = Token::from_env(12) else { return };
    let label = unique_label("health");
    token.create_key(&label, 1);
    let kms = token.kms(&label, Pkcs11Mechanism::AesKeyWrapPad).await;
    kms.health().await.unwrap();
    token.set_usable(&label, false);
    assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));
    token.set_usable(&label, true);
    kms.health().await.unwrap();
    token.destroy_keys(&label);
}
