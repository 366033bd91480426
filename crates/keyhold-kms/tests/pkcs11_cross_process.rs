//! The `pkcs11` backend uses keys an HSM administrator makes and rotates from another process
//! (OpenSC's `pkcs11-tool`, installed with SoftHSM by scripts/services/pkcs11.sh) while the
//! backend keeps running.
//!
//! A test binary of its own, so that nothing else in this process touches SoftHSM while
//! `pkcs11-tool` writes: SoftHSM can read another process's half-written object file when any
//! thread looks at the token at that moment (even only for `C_GetTokenInfo`), and then ignores
//! that object until it restarts. Production HSMs keep their keys on the device.
#![cfg(feature = "pkcs11")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyhold_kms::conformance::service_env;
use keyhold_kms::pkcs11::{Pkcs11Config, Pkcs11Kms, Pkcs11Mechanism};
use keyhold_kms::{ConnectOptions, KeyContext, Kms, SecretSource};
use zeroize::Zeroizing;

/// Test token 13 (scripts/services/pkcs11.sh makes one per test).
const TOKEN: u32 = 13;

fn pkcs11_tool(module: &str, token: &str, pin: &str, args: &[&str]) {
    let out = std::process::Command::new("pkcs11-tool")
        .args(["--module", module, "--token-label", token, "--login", "--pin", pin])
        .args(args)
        .output()
        .expect("pkcs11-tool (Debian package opensc) runs");
    assert!(out.status.success(), "pkcs11-tool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn keys_made_and_rotated_by_another_process_are_used() {
    let Some(module) = service_env("KEYHOLD_TEST_PKCS11_MODULE") else { return };
    let Some(prefix) = service_env("KEYHOLD_TEST_PKCS11_TOKEN") else { return };
    let Some(pin) = service_env("KEYHOLD_TEST_PKCS11_PIN") else { return };
    let token = format!("{prefix}-{TOKEN}");
    let label = format!("keyhold-cross-process-{}", std::process::id());
    let keygen = |id: &str| {
        pkcs11_tool(
            &module,
            &token,
            &pin,
            &[
                "--keygen",
                "--key-type",
                "AES:32",
                "--label",
                &label,
                "--id",
                id,
                "--sensitive",
                "--private",
                "--usage-wrap",
            ],
        );
    };
    keygen("01");

    let config = |mechanism| Pkcs11Config {
        module: module.clone().into(),
        token_label: Some(token.clone()),
        slot_id: None,
        pin: SecretSource::Inline(Zeroizing::new(pin.clone())),
        key_label: label.clone(),
        mechanism,
        max_sessions: 2,
    };
    let options = ConnectOptions::default();
    let gcm = Pkcs11Kms::connect(&config(Pkcs11Mechanism::AesGcm), &options).await.unwrap();
    let kwp = Pkcs11Kms::connect(&config(Pkcs11Mechanism::AesKeyWrapPad), &options).await.unwrap();
    let ctx = KeyContext::new("t", 1);
    let old = gcm.generate(&ctx).await.unwrap();
    assert_eq!(Pkcs11Kms::key_version_of(&old.wrapped), Some(1));
    let rewrapped = kwp.wrap(&old.dek, &ctx).await.unwrap();
    assert_eq!(kwp.unwrap(&rewrapped, &ctx).await.unwrap(), old.dek);

    // Rotation by the administrator, the backend still running (and holding sessions).
    keygen("02");
    let new = gcm.generate(&ctx).await.unwrap();
    assert_eq!(Pkcs11Kms::key_version_of(&new.wrapped), Some(2), "the new key version is used");
    assert_eq!(gcm.unwrap(&old.wrapped, &ctx).await.unwrap(), old.dek);
    assert_eq!(gcm.unwrap(&new.wrapped, &ctx).await.unwrap(), new.dek);
    assert_eq!(kwp.unwrap(&rewrapped, &ctx).await.unwrap(), old.dek);

    for id in ["01", "02"] {
        pkcs11_tool(
            &module,
            &token,
            &pin,
            &["--delete-object", "--type", "secrkey", "--label", &label, "--id", id],
        );
    }
    // The key is gone: new wraps are refused as misconfigured.
    assert!(matches!(
        gcm.generate(&ctx).await,
        Err(keyhold_kms::KmsError::ConfigurationInvalid(_))
    ));
}
