//! `document_field`: the Keyhold encrypted-field format (`KHD` v1, `keyhold_core::document`).
//!
//! 1. The input, as raw bytes, is an encrypted field: `parse_field` and `decrypt_field` /
//!    `decrypt_field_into` under a fixed key (the known-answer vector's DEK `42`×32, tenant
//!    `tenant-kat`, field `field`) return `Ok` or `Err`, never panic, agree with each other, and
//!    a parsed field's parts add up to the input.
//! 2. The same input, read as structured data (`arbitrary`: DEK, tenant, field name, plaintext):
//!    encrypt → decrypt gives the plaintext back; flipping any one byte of the output, or
//!    decrypting under another field name or for another tenant, fails.
#![no_main]

use std::num::NonZeroU8;
use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use keyhold_core::Dek;
use keyhold_core::document::{DocumentError, DocumentKey, MAX_TENANT_ID_LEN, parse_field};
use libfuzzer_sys::fuzz_target;

const TENANT: &str = "tenant-kat";
const FIELD: &str = "field";
/// Header bytes without the tenant id: magic, version, algorithm, length, commitment.
const FIXED_HEADER: usize = 3 + 1 + 1 + 2 + 32;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

static KEY: LazyLock<DocumentKey> = LazyLock::new(|| {
    DocumentKey::new(&Dek::from_bytes([0x42; 32]), TENANT).expect("fixed tenant is valid")
});

#[derive(Debug, Arbitrary)]
struct RoundTrip {
    dek: [u8; 32],
    tenant: String,
    field: String,
    plaintext: Vec<u8>,
    flip_at: usize,
    flip_mask: NonZeroU8,
}

fn raw_field(data: &[u8]) {
    let key = &*KEY;
    let parsed = parse_field(data);
    let decrypted = key.decrypt_field(FIELD, data);
    let mut reused = vec![0xA5; 64];
    let into = key.decrypt_field_into(FIELD, data, &mut reused);
    match &into {
        Ok(()) => assert_eq!(Ok(&reused), decrypted.as_ref(), "decrypt_field_into differs"),
        Err(e) => {
            assert_eq!(&decrypted, &Err(e.clone()), "decrypt_field_into differs");
            assert!(reused.is_empty(), "decrypt_field_into left data in its buffer on error");
        }
    }
    match parsed {
        Err(e) => assert_eq!(decrypted, Err(e), "parse error not passed through"),
        Ok(h) => {
            let n = h.tenant_id.len();
            assert!((1..=MAX_TENANT_ID_LEN).contains(&n));
            assert_eq!(h.header_bytes.len(), FIXED_HEADER + n);
            assert!(data.starts_with(h.header_bytes));
            assert_eq!(data.len(), h.header_bytes.len() + IV_LEN + h.ciphertext.len() + TAG_LEN);
            if h.tenant_id != TENANT {
                assert_eq!(decrypted, Err(DocumentError::TenantMismatch));
            }
            if let Ok(plain) = &decrypted {
                assert_eq!(plain.len(), h.ciphertext.len());
                // Authenticated under FIELD: any other name must fail.
                assert_eq!(key.decrypt_field("other", data), Err(DocumentError::DecryptFailed));
            }
        }
    }
}

fn round_trip(input: RoundTrip) {
    let dek = Dek::from_bytes(input.dek);
    let key = match DocumentKey::new(&dek, &input.tenant) {
        Ok(key) => key,
        Err(e) => {
            assert_eq!(e, DocumentError::InvalidTenantId);
            assert!(input.tenant.is_empty() || input.tenant.len() > MAX_TENANT_ID_LEN);
            return;
        }
    };
    assert!(!input.tenant.is_empty() && input.tenant.len() <= MAX_TENANT_ID_LEN);
    assert_eq!(key.tenant_id(), input.tenant);
    let sealed = key.encrypt_field(&input.field, &input.plaintext).expect("encrypt");
    assert_eq!(sealed.len(), key.encrypted_len(input.plaintext.len()));
    assert_eq!(parse_field(&sealed).expect("own output parses").tenant_id, input.tenant);
    assert_eq!(key.decrypt_field(&input.field, &sealed).expect("round trip"), input.plaintext);

    // The reusing variants, with a dirty buffer of another size.
    let mut buf = vec![0x5A; input.flip_at % 300];
    key.encrypt_field_into(&input.field, &input.plaintext, &mut buf).expect("encrypt_into");
    let mut out = vec![0xC3; input.flip_at % 200];
    key.decrypt_field_into(&input.field, &buf, &mut out).expect("decrypt_into");
    assert_eq!(out, input.plaintext);

    // Any one changed byte is refused.
    let mut flipped = sealed.clone();
    let i = input.flip_at % flipped.len();
    flipped[i] ^= input.flip_mask.get();
    assert!(key.decrypt_field(&input.field, &flipped).is_err(), "flipped byte {i} accepted");

    // Another field name, another tenant.
    let other_name = format!("{}x", input.field);
    assert_eq!(key.decrypt_field(&other_name, &sealed), Err(DocumentError::DecryptFailed));
    if input.tenant.len() < MAX_TENANT_ID_LEN {
        let other = DocumentKey::new(&dek, &format!("{}x", input.tenant)).expect("valid tenant");
        assert_eq!(other.decrypt_field(&input.field, &sealed), Err(DocumentError::TenantMismatch));
    }
}

fuzz_target!(|data: &[u8]| {
    raw_field(data);
    if let Ok(input) = RoundTrip::arbitrary_take_rest(Unstructured::new(data)) {
        round_trip(input);
    }
});
