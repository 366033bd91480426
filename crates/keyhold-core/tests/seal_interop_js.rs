//! The web page's sealer (`crates/keyhold-broker/ui/seal.js`, WebCrypto under Node) against the
//! proxy's opener ([`keyhold_core::seal::open`]): a blob sealed in the browser opens in Rust for
//! the tenant and purpose it was sealed for, and for no other.
//!
//! Needs `node` (20 or newer: WebCrypto with X25519) on PATH. Without it the tests fail and say
//! so, unless `KEYHOLD_SKIP_NODE_TESTS=1`: then they print why and pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::Command;

use keyhold_core::seal::{FleetSecretKey, SealError, SealPurpose, open, sealed_key_id};

/// The repository's root: this crate is `crates/keyhold-core`.
fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.join("../..").canonicalize().expect("the repository root")
}

/// What `node seal-cli.mjs <args>` printed and whether it succeeded, or `None` when node is
/// missing and `KEYHOLD_SKIP_NODE_TESTS=1` (after saying so).
fn node_seal(args: &[&str]) -> Option<(bool, String, String)> {
    let root = repo_root();
    let cli = root.join("crates/keyhold-broker/ui/tests/seal-cli.mjs");
    let output = match Command::new("node").arg(&cli).args(args).current_dir(&root).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if std::env::var("KEYHOLD_SKIP_NODE_TESTS").as_deref() == Ok("1") {
                eprintln!("SKIPPED: `node` is not on PATH and KEYHOLD_SKIP_NODE_TESTS=1");
                return None;
            }
            panic!(
                "`node` is not on PATH: this test runs the web page's seal.js with Node (20 or \
                 newer, for WebCrypto's X25519). Install Node; KEYHOLD_SKIP_NODE_TESTS=1 skips \
                 the test"
            );
        }
        Err(e) => panic!("running node {}: {e}", cli.display()),
    };
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 from seal-cli");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Some((output.status.success(), stdout.trim_end().to_owned(), stderr))
}

/// Seals with seal.js; the test fails with node's own message when it does not seal.
fn js_seal(public_key: &str, purpose: &str, tenant: &str, plaintext: &str) -> Option<String> {
    let (ok, blob, stderr) = node_seal(&[public_key, purpose, tenant, plaintext])?;
    assert!(ok, "seal-cli.mjs failed: {stderr}");
    Some(blob)
}

#[test]
fn a_blob_sealed_by_the_web_page_opens_for_its_tenant_and_purpose_only() {
    let fleet = FleetSecretKey::generate().unwrap();
    let public_key = fleet.public_key().to_base64();
    let plaintext = r#"{"secret_access_key":"wJalrXUtnFEMI/K7MDENG+bPxRfiCY","note":"é ✓"}"#;
    let Some(blob) = js_seal(&public_key, "kms", "acme", plaintext) else { return };

    assert!(blob.starts_with("khs1."), "{blob}");
    assert_eq!(sealed_key_id(&blob).unwrap(), fleet.public_key().key_id());
    let keys = [fleet];
    let opened = open(&keys, SealPurpose::Kms, "acme", &blob).unwrap();
    assert_eq!(&opened[..], plaintext.as_bytes());

    assert_eq!(open(&keys, SealPurpose::Kms, "acme2", &blob).unwrap_err(), SealError::Open);
    assert_eq!(open(&keys, SealPurpose::Kms, "acm", &blob).unwrap_err(), SealError::Open);
    assert_eq!(open(&keys, SealPurpose::Siem, "acme", &blob).unwrap_err(), SealError::Open);
    let other = FleetSecretKey::generate().unwrap();
    assert!(matches!(
        open(&[other], SealPurpose::Kms, "acme", &blob),
        Err(SealError::UnknownKey(_))
    ));
}

#[test]
fn siem_secrets_and_unusual_tenant_ids_open_too() {
    let fleet = FleetSecretKey::generate().unwrap();
    let public_key = fleet.public_key().to_base64();
    let keys = [fleet];
    for tenant in ["t", "acme-eu_1.prod", "ünïcode-tenant"] {
        let plaintext = format!(r#"{{"token":"for {tenant}"}}"#);
        let Some(blob) = js_seal(&public_key, "siem", tenant, &plaintext) else { return };
        let opened = open(&keys, SealPurpose::Siem, tenant, &blob).unwrap();
        assert_eq!(&opened[..], plaintext.as_bytes(), "{tenant}");
        assert_eq!(open(&keys, SealPurpose::Kms, tenant, &blob).unwrap_err(), SealError::Open);
    }
}

#[test]
fn the_web_page_refuses_a_key_that_is_not_32_bytes() {
    let Some((ok, stdout, stderr)) = node_seal(&["AAAA", "kms", "acme", "x"]) else { return };
    assert!(!ok, "sealed to a 3-byte key: {stdout}");
    assert!(stderr.contains("not 32"), "{stderr}");
}
