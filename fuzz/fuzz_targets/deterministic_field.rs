//! `deterministic_field`: the deterministic (searchable) field reader and writer
//! (`keyhold_core::deterministic`, IronCore's layout: u32 BE secret id ‖ `00 00` ‖ AES-256-SIV).
//!
//! 1. The input, as raw bytes, is a field: `parse`, `is_deterministic_field` and `decrypt` return
//!    without panicking and agree. The keys: IronCore's published derived key (tenant
//!    `tenant-gcp`, derivation path `derivPath`) for secret 5111 and `42`×64 for secret 7; every
//!    other id has none. A parse error is passed through as is; an id without a key is
//!    `UnknownSecret(id)`; a field that decrypts has exactly 22 bytes more than its plaintext,
//!    and encrypting that plaintext again under the same key and id gives back the input byte
//!    for byte (AES-SIV is deterministic and its tag is the synthetic IV).
//! 2. The same input, read as structured data (`arbitrary`: key, secret id, plaintext, a byte
//!    to change): encrypting twice gives the same bytes; the field is 22 bytes longer than the
//!    plaintext, parses to the id, and decrypts to the plaintext; another key does not decrypt
//!    it; one changed byte is refused — in the id as an unknown secret, in the padding as a
//!    header error, after the header as a failed decryption — and never yields a plaintext.
#![no_main]

use std::num::NonZeroU8;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use keyhold_core::deterministic::{
    DeterministicError, HEADER_LEN, MIN_FIELD_LEN, decrypt, derive_field_key, encrypt,
    is_deterministic_field, parse,
};
use keyhold_core::secret::{DERIVED_KEY_LEN, DerivedFieldKey, TenantSecret};
use libfuzzer_sys::fuzz_target;

const IRONCORE_ID: u32 = 5111;
const FIXED_ID: u32 = 7;

fn ironcore_key() -> &'static DerivedFieldKey {
    static KEY: OnceLock<DerivedFieldKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let secret = TenantSecret::from_base64("ScbKs2h0XSaBQ/vXp04RmChAffLjh2nxBgRT95j21FM=")
            .expect("the published secret");
        derive_field_key(&secret, "tenant-gcp", "derivPath")
    })
}

fn fixed_key() -> &'static DerivedFieldKey {
    static KEY: OnceLock<DerivedFieldKey> = OnceLock::new();
    KEY.get_or_init(|| DerivedFieldKey::from_bytes([0x42; DERIVED_KEY_LEN]))
}

fn key_for(id: u32) -> Option<&'static DerivedFieldKey> {
    match id {
        IRONCORE_ID => Some(ironcore_key()),
        FIXED_ID => Some(fixed_key()),
        _ => None,
    }
}

fn raw_field(data: &[u8]) {
    let parsed = parse(data);
    assert_eq!(parsed.is_ok(), is_deterministic_field(data));
    let opened = decrypt(data, key_for);
    match parsed {
        Err(e) => {
            assert!(matches!(e, DeterministicError::Header(_)), "parse gave {e:?}");
            assert!(data.len() < MIN_FIELD_LEN || data[4..6] != [0, 0]);
            assert_eq!(opened, Err(e));
        }
        Ok((id, body)) => {
            assert_eq!(body.len(), data.len() - HEADER_LEN);
            assert_eq!(u32::from_be_bytes([data[0], data[1], data[2], data[3]]), id);
            match key_for(id) {
                None => assert_eq!(opened, Err(DeterministicError::UnknownSecret(id))),
                Some(key) => match opened {
                    Err(e) => assert_eq!(e, DeterministicError::DecryptFailed(id)),
                    Ok(plaintext) => {
                        assert_eq!(plaintext.len() + MIN_FIELD_LEN, data.len());
                        let again = encrypt(key, id, &plaintext).expect("encrypt");
                        assert_eq!(again, data, "a field that decrypts re-encrypts to itself");
                    }
                },
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct RoundTrip {
    key: [u8; 32],
    key_tail: [u8; 32],
    id: u32,
    plaintext: Vec<u8>,
    flip_at: usize,
    flip_mask: NonZeroU8,
}

fn round_trip(input: RoundTrip) {
    let mut bytes = [0u8; DERIVED_KEY_LEN];
    bytes[..32].copy_from_slice(&input.key);
    bytes[32..].copy_from_slice(&input.key_tail);
    let key = DerivedFieldKey::from_bytes(bytes);
    let only = |id: u32| (id == input.id).then_some(&key);

    let field = encrypt(&key, input.id, &input.plaintext).expect("encrypt");
    assert_eq!(encrypt(&key, input.id, &input.plaintext).expect("encrypt"), field);
    assert_eq!(field.len(), MIN_FIELD_LEN + input.plaintext.len());
    assert_eq!(parse(&field).expect("own output parses").0, input.id);
    assert_eq!(decrypt(&field, only).expect("round trip").as_slice(), input.plaintext);

    bytes[0] ^= 1;
    let other = DerivedFieldKey::from_bytes(bytes);
    assert_eq!(decrypt(&field, |_| Some(&other)), Err(DeterministicError::DecryptFailed(input.id)));

    let mut changed = field.clone();
    let i = input.flip_at % changed.len();
    changed[i] ^= input.flip_mask.get();
    let result = decrypt(&changed, only);
    match i {
        0..4 => {
            let id = u32::from_be_bytes([changed[0], changed[1], changed[2], changed[3]]);
            assert_eq!(result, Err(DeterministicError::UnknownSecret(id)));
        }
        4..HEADER_LEN => assert!(matches!(result, Err(DeterministicError::Header(_)))),
        _ => assert_eq!(result, Err(DeterministicError::DecryptFailed(input.id))),
    }
}

fuzz_target!(|data: &[u8]| {
    raw_field(data);
    if let Ok(input) = RoundTrip::arbitrary_take_rest(Unstructured::new(data)) {
        round_trip(input);
    }
});
