//! `local_kms_unwrap`: the local KMS's wrapped-key reader (`KHL` v1, `keyhold_kms::local`).
//!
//! The input is a wrapped key given to `LocalKms::unwrap` (through the `Kms` trait, run with
//! `pollster`) for three keys of a fixed keystore (`fuzz/fixtures/local-keystore.khk`, root key
//! `11`×32, opened once): `fuzz-key` (enabled, versions 1 and 2), `disabled-key` (disabled) and
//! `missing-key` (absent). Nothing panics, and the answer follows docs/formats.md §7.4 in order:
//! not 88 bytes or not `"KHL" 01` → `InvalidCiphertext`; missing key → `ConfigurationInvalid`;
//! disabled key → `KeyDisabled`; a version the key does not hold → `InvalidCiphertext`; else the
//! DEK or `InvalidCiphertext`. A wrapped key that opens opens only in its own context (tenant
//! `fuzz-tenant`, configuration 1), and its DEK wraps and unwraps again. The seeds in
//! `fuzz/corpus/local_kms_unwrap/` were wrapped by this keystore, so the success path is covered.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keyhold_core::secret::RootKey;
use keyhold_kms::local::{Keystore, LocalKms};
use keyhold_kms::{KeyContext, Kms, KmsError};
use libfuzzer_sys::fuzz_target;

const KEYSTORE: &[u8] = include_bytes!("../fixtures/local-keystore.khk");
const ROOT_KEY: [u8; 32] = [0x11; 32];
const TENANT: &str = "fuzz-tenant";
const CONFIG_ID: i32 = 1;
const WRAPPED_LEN: usize = 88;

struct Fixture {
    enabled: LocalKms,
    disabled: LocalKms,
    missing: LocalKms,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // The keystore is read once into memory; with a check interval of years, lookups never
        // touch the file again, so the temporary directory can go right away.
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("keystore");
        std::fs::write(&path, KEYSTORE).expect("write keystore");
        let keystore = Keystore::open(&path, RootKey::from_bytes(ROOT_KEY)).expect("fixture opens");
        keystore.set_check_interval(Duration::from_secs(100 * 365 * 24 * 3600));
        let keystore = Arc::new(keystore);
        Fixture {
            enabled: LocalKms::new(Arc::clone(&keystore), "fuzz-key"),
            disabled: LocalKms::new(Arc::clone(&keystore), "disabled-key"),
            missing: LocalKms::new(keystore, "missing-key"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let ctx = KeyContext::new(TENANT, CONFIG_ID);
    let enabled = pollster::block_on(f.enabled.unwrap(data, &ctx));
    let disabled = pollster::block_on(f.disabled.unwrap(data, &ctx));
    let missing = pollster::block_on(f.missing.unwrap(data, &ctx));

    let version = LocalKms::key_version_of(data);
    assert_eq!(version.is_some(), data.len() >= 8 && data.starts_with(b"KHL\x01"));
    if data.len() != WRAPPED_LEN || version.is_none() {
        for result in [&enabled, &disabled, &missing] {
            assert_eq!(result.as_ref().err(), Some(&KmsError::InvalidCiphertext));
        }
        return;
    }
    assert!(matches!(missing, Err(KmsError::ConfigurationInvalid(_))), "{missing:?}");
    assert!(matches!(disabled, Err(KmsError::KeyDisabled(_))), "{disabled:?}");
    match enabled {
        Err(e) => assert_eq!(e, KmsError::InvalidCiphertext),
        Ok(dek) => {
            assert!(matches!(version, Some(1 | 2)), "unwrapped with unknown version {version:?}");
            for other in [KeyContext::new("other-tenant", CONFIG_ID), KeyContext::new(TENANT, 2)] {
                let again = pollster::block_on(f.enabled.unwrap(data, &other));
                assert_eq!(again.err(), Some(KmsError::InvalidCiphertext), "context not bound");
            }
            let rewrapped = pollster::block_on(f.enabled.wrap(&dek, &ctx)).expect("wrap");
            assert_eq!(rewrapped.len(), WRAPPED_LEN);
            let back = pollster::block_on(f.enabled.unwrap(&rewrapped, &ctx)).expect("unwrap");
            assert!(back == dek, "rewrapped DEK differs");
        }
    }
});
