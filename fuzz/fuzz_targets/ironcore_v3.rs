//! `ironcore_v3`: the IronCore v3 field reader (`keyhold_core::ironcore`).
//!
//! 1. The input, as raw bytes, is a v3 field: `parse_v3` and `decrypt_v3` (under the DEKs of
//!    the known-answer vectors KAT-1 (`39`×32) and KAT-7 (`00..1f`), with and without an
//!    expected tenant) return `Ok` or `Err`, never panic, and agree: a parse error is passed
//!    through, a header naming another tenant is `TenantMismatch`, and a field that decrypts
//!    without an expected tenant decrypts to the same bytes with its own tenant.
//! 2. The same input, read as structured data (`arbitrary`: DEK, tenant, plaintext):
//!    `encrypt_v3` → `decrypt_v3` gives the plaintext back; a changed byte in the IV, body or tag
//!    is refused, and a changed byte anywhere never yields another plaintext (the v3 header is
//!    not fully authenticated by design — see the module docs — but the body is).
#![no_main]

use std::num::NonZeroU8;

use arbitrary::{Arbitrary, Unstructured};
use keyhold_core::Dek;
use keyhold_core::document::DocumentError;
use keyhold_core::ironcore::{V3_PREFIX, decrypt_v3, encrypt_v3, is_v3, parse_v3};
use libfuzzer_sys::fuzz_target;

fn dek_0_to_31() -> Dek {
    Dek::from_bytes(core::array::from_fn(|i| i as u8))
}

fn raw_field(data: &[u8]) {
    let parsed = parse_v3(data);
    assert!(parsed.is_err() || is_v3(data));
    for dek in [dek_0_to_31(), Dek::from_bytes([0x39; 32])] {
        let any = decrypt_v3(&dek, None, data);
        let expected = decrypt_v3(&dek, Some("tenantId"), data);
        match &parsed {
            Err(e) => {
                assert_eq!(any.as_ref(), Err(e));
                assert_eq!(expected.as_ref(), Err(e));
            }
            Ok(field) => {
                if let Some(found) = field.tenant_id.as_deref() {
                    if found != "tenantId" {
                        assert_eq!(expected, Err(DocumentError::TenantMismatch));
                    }
                    let own = decrypt_v3(&dek, Some(found), data);
                    assert_eq!(own, any, "own tenant differs from no tenant");
                } else {
                    assert_eq!(expected, any, "no tenant in header, yet the expectation mattered");
                }
                if let Ok(plain) = &any {
                    let body = data.len() - 7 - usize::from(u16::from_be_bytes([data[5], data[6]]));
                    assert_eq!(plain.len(), body - 12 - 16);
                }
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct RoundTrip {
    dek: [u8; 32],
    tenant: String,
    plaintext: Vec<u8>,
    flip_at: usize,
    flip_mask: NonZeroU8,
}

fn round_trip(input: RoundTrip) {
    let dek = Dek::from_bytes(input.dek);
    let sealed = encrypt_v3(&dek, &input.tenant, &input.plaintext).expect("encrypt_v3");
    assert!(sealed.starts_with(&V3_PREFIX));
    let field = parse_v3(&sealed).expect("own output parses");
    assert_eq!(field.tenant_id.as_deref(), Some(input.tenant.as_str()));
    let tenant = Some(input.tenant.as_str());
    assert_eq!(decrypt_v3(&dek, tenant, &sealed).as_ref(), Ok(&input.plaintext));
    assert_eq!(decrypt_v3(&dek, None, &sealed).as_ref(), Ok(&input.plaintext));
    let other = format!("{}x", input.tenant);
    assert_eq!(decrypt_v3(&dek, Some(&other), &sealed), Err(DocumentError::TenantMismatch));

    let body_start = 7 + usize::from(u16::from_be_bytes([sealed[5], sealed[6]]));
    let mut flipped = sealed.clone();
    let i = input.flip_at % flipped.len();
    flipped[i] ^= input.flip_mask.get();
    if let Ok(plain) = decrypt_v3(&dek, None, &flipped) {
        assert!(i < body_start, "changed body byte {i} accepted");
        assert_eq!(plain, input.plaintext, "changed header byte {i} gave another plaintext");
    }
}

fuzz_target!(|data: &[u8]| {
    raw_field(data);
    if let Ok(input) = RoundTrip::arbitrary_take_rest(Unstructured::new(data)) {
        round_trip(input);
    }
});
