//! `e2e_formats`: the end-to-end encryption formats (`keyhold_e2e`): every parser of bytes the
//! E2E service or a device receives.
//!
//! The first byte picks the parser; the rest is its input:
//! 0 `EncryptedValue`, 1 `TransformKey`, 2 `EncryptedDocument`, 3 `Grant`,
//! 4 `PassphraseSealedKey`, 5 `KeySealedToPublicKey`, 6 `DeviceKeys`, 7 the E2E API's JSON bodies
//! (with the key signatures a device checks in them) and a device file's key pins.
//! Never a panic; whatever parses re-encodes to exactly its input (one encoding per value) and
//! its follow-up operations (signature checks, decrypting or transforming with a fixed key,
//! opening with a fixed key) return `Ok`/`Err` without panicking. A value that parses and is
//! decrypted with a key it was not made for is refused.
#![no_main]

use keyhold_e2e::keys::{DeviceKeys, KeySealedToPublicKey, PassphraseSealedKey};
use keyhold_e2e::pre::{self, EncryptedValue, PrivateKey, TransformKey};
use keyhold_e2e::{EncryptedDocument, Grant, wire};
use libfuzzer_sys::fuzz_target;

fn fixed_key() -> PrivateKey {
    let mut bytes = [0u8; 32];
    bytes[0] = 7;
    PrivateKey::from_bytes(&bytes).expect("7 is a valid scalar")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 8 {
        0 => {
            if let Ok(v) = EncryptedValue::from_bytes(rest) {
                assert_eq!(v.to_bytes(), rest);
                // A key this value was not made for (the seeds are not for 7) is refused.
                assert!(pre::decrypt(&v, &fixed_key()).is_err());
            }
        }
        1 => {
            if let Ok(k) = TransformKey::from_bytes(rest) {
                assert_eq!(k.to_bytes(), rest);
            }
        }
        2 => {
            if let Ok(d) = EncryptedDocument::from_bytes(rest) {
                assert_eq!(d.to_bytes(), rest);
                let _ = d.verify();
            }
        }
        3 => {
            if let Ok(g) = Grant::from_bytes(rest) {
                assert_eq!(g.to_bytes(), rest);
                let _ = g.verify();
                let _ = pre::decrypt(g.value(), &fixed_key());
            }
        }
        4 => {
            // Parsing only: opening runs Argon2 at the stored cost (capped at 1 GiB).
            if let Ok(s) = PassphraseSealedKey::from_bytes(rest) {
                assert_eq!(s.to_bytes(), rest);
            }
        }
        5 => {
            if let Ok(s) = KeySealedToPublicKey::from_bytes(rest) {
                assert_eq!(s.to_bytes(), rest);
                assert!(s.open(&fixed_key()).is_err());
            }
        }
        6 => {
            if let Ok(k) = DeviceKeys::from_bytes(rest) {
                assert_eq!(&k.to_bytes()[..], rest);
            }
        }
        _ => {
            let _ = serde_json::from_slice::<wire::CreateDocument>(rest);
            let _ = serde_json::from_slice::<wire::AuthorizeDevice>(rest);
            let _ = serde_json::from_slice::<wire::CreateGroup>(rest);
            if let Ok(r) = serde_json::from_slice::<wire::DecryptResponse>(rest) {
                if let Ok(g) = keyhold_e2e::DecryptGrant::try_from(&r) {
                    let _ = g.author_user.verify("t");
                }
            }
            // What a device checks before it uses a public key the service gave it.
            if let Ok(v) = serde_json::from_slice::<wire::UserKeysView>(rest) {
                if let Ok(signed) = v.signed("u") {
                    let _ = signed.verify("t");
                }
            }
            if let Ok(v) = serde_json::from_slice::<wire::GroupView>(rest) {
                if let Ok((signed, creator)) = v.signed_key() {
                    let _ = signed.verify("t", &creator, &creator.keys.signing);
                }
            }
            let _ = serde_json::from_slice::<keyhold_e2e::KeyPins>(rest);
        }
    }
});
