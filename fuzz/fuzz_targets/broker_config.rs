//! `broker_config`: what a proxy reads from the Configuration Broker (`keyhold_core::seal`,
//! `keyhold_core::snapshot`).
//!
//! The first byte picks the entry point; the rest is its input:
//! - 0: a sealed blob (`sealed_key_id`, then `open` with the fleet key): never a panic; a blob
//!   that opens has the shape `sealed_key_id` accepts.
//! - 1: a signed envelope (`SignedSnapshot` JSON, then `verify` with the broker key): never a
//!   panic; nothing verifies that this target's key did not sign.
//! - 2: a snapshot payload (`ConfigSnapshot` JSON): what parses re-serializes and parses to the
//!   same value.
//! - 3: structured: the rest is sealed for tenant "t" and opens to itself; changed in any one
//!   byte, it does not open. Signed as a payload, it verifies only unchanged.
#![no_main]

use std::sync::OnceLock;

use keyhold_core::seal::{FleetSecretKey, SealPurpose, open, seal, sealed_key_id};
use keyhold_core::snapshot::{ConfigSnapshot, SignedSnapshot, SnapshotSigningKey, verify};
use libfuzzer_sys::fuzz_target;

fn fleet() -> &'static FleetSecretKey {
    static KEY: OnceLock<FleetSecretKey> = OnceLock::new();
    KEY.get_or_init(|| FleetSecretKey::from_bytes([7; 32]).expect("any 32 bytes are a key"))
}

fn broker() -> &'static SnapshotSigningKey {
    static KEY: OnceLock<SnapshotSigningKey> = OnceLock::new();
    KEY.get_or_init(|| SnapshotSigningKey::generate().expect("randomness"))
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else { return };
    match mode % 4 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let shape = sealed_key_id(text);
            let opened = open(std::slice::from_ref(fleet()), SealPurpose::Kms, "t", text);
            if opened.is_ok() {
                assert_eq!(shape.expect("an opened blob has the shape"), fleet().public_key().key_id());
            }
        }
        1 => {
            let Ok(signed) = serde_json::from_slice::<SignedSnapshot>(rest) else { return };
            if let Ok(snapshot) = verify(&signed, &[broker().public_key()]) {
                // Only this run's key signs; the fuzzer cannot have forged it.
                let again = broker().sign(&snapshot).expect("signs");
                assert!(verify(&again, &[broker().public_key()]).is_ok());
            }
        }
        2 => {
            let Ok(snapshot) = serde_json::from_slice::<ConfigSnapshot>(rest) else { return };
            let text = serde_json::to_vec(&snapshot).expect("serializes");
            let again: ConfigSnapshot = serde_json::from_slice(&text).expect("parses again");
            assert_eq!(again, snapshot);
        }
        _ => {
            if rest.len() > keyhold_core::seal::MAX_PLAINTEXT {
                return;
            }
            let keys = std::slice::from_ref(fleet());
            let blob = seal(&fleet().public_key(), SealPurpose::Siem, "t", rest).expect("seals");
            assert_eq!(&open(keys, SealPurpose::Siem, "t", &blob).expect("opens")[..], rest);
            assert!(open(keys, SealPurpose::Kms, "t", &blob).is_err());
            let mut altered = blob.clone().into_bytes();
            let at = rest.first().map_or(0, |b| usize::from(*b)) % altered.len();
            altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
            if let Ok(altered) = String::from_utf8(altered) {
                if altered != blob {
                    assert!(open(keys, SealPurpose::Siem, "t", &altered).is_err());
                }
            }
            let signed = broker().sign_payload(rest);
            let valid = verify(&signed, &[broker().public_key()]);
            let mut tampered = signed.clone();
            tampered.payload.push('A');
            assert!(verify(&tampered, &[broker().public_key()]).is_err() || valid.is_err());
        }
    }
});
