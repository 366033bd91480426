//! `edek`: the EDEK envelope (`keyhold_core::edek`, protobuf `EncryptedDeks`).
//!
//! The input is given to `EncryptedDeks::from_bytes`, and (when it is UTF-8) to
//! `EncryptedDeks::from_base64`. Neither panics; whatever parses satisfies the validation rules
//! (1..=16 entries, each with a config id ≠ 0 and a wrapped key), and re-encoding it
//! (`to_bytes` / `to_base64`) and parsing again gives the same value — an EDEK the proxy
//! accepted once stays acceptable after any component re-serializes it — and re-encoding is
//! stable. The base64 entry point accepts exactly what the byte entry point accepts, once encoded.
//! Leased entries expose consistent parts, and opening their sealed key never panics.
//! Run with `-max_len=17000` (scripts/fuzz does) so inputs reach the 16 KiB size limit.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyhold_core::edek::{EncryptedDeks, MAX_EDEK_LEN, MAX_ENTRIES};
use keyhold_core::lease::{LeaseBinding, LeaseCipher};
use keyhold_core::secret::Dek;
use libfuzzer_sys::fuzz_target;

fn lease_cipher() -> LeaseCipher {
    LeaseCipher::new(&Dek::from_bytes([0x42; 32])).expect("a 32-byte key expands")
}

/// `env` was parsed from `input_len` bytes.
fn check_parsed(env: &EncryptedDeks, input_len: usize) {
    assert!((1..=MAX_ENTRIES).contains(&env.encrypted_deks.len()));
    for entry in &env.encrypted_deks {
        // Ids are positive (a negative one would re-encode longer: the fixed bug this target found).
        assert!(entry.kms_config_id >= 1 && entry.leased_key_id >= 0);
        assert!(!entry.encrypted_dek_data.is_empty());
        assert!(env.entry_for_config(entry.kms_config_id).is_some());
        // Leasing fields are all-or-nothing and consistent (docs/formats.md §8.2); opening a
        // leased entry with some lease key fails cleanly (or, never in practice, succeeds).
        match entry.lease_parts() {
            Ok(Some(parts)) => {
                assert!(entry.is_leased() && parts.lease_id >= 1);
                assert!(!parts.wrapped_lease_key.is_empty());
                let binding = LeaseBinding {
                    tenant_id: &entry.tenant_id,
                    kms_config_id: entry.kms_config_id,
                    lease_id: parts.lease_id,
                };
                let _ = lease_cipher().open(parts.iv, parts.sealed_dek, &binding);
            }
            Ok(None) => assert!(!entry.is_leased()),
            Err(e) => panic!("a parsed entry has inconsistent leasing fields: {e}"),
        }
    }
    let bytes = env.to_bytes();
    // Proto3's encoding is minimal (and unknown fields are dropped), so re-encoding never grows.
    assert!(bytes.len() <= input_len, "re-encoding grew from {input_len} to {}", bytes.len());
    let again = EncryptedDeks::from_bytes(&bytes);
    // Compared with `==`, not `assert_eq!`: a failing 16 KiB value is not worth printing.
    assert!(EncryptedDeks::from_base64(&env.to_base64()) == again, "base64 round trip differs");
    match again {
        Ok(again) => {
            assert!(again == *env, "re-encoded EDEK parses to another value");
            assert!(again.to_bytes() == bytes, "encoding is not stable");
        }
        Err(e) => panic!("re-encoded EDEK ({} bytes) does not parse back: {e}", bytes.len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let from_bytes = EncryptedDeks::from_bytes(data);
    if let Ok(env) = &from_bytes {
        assert!(!data.is_empty() && data.len() <= MAX_EDEK_LEN);
        check_parsed(env, data.len());
    }
    // The same bytes, as the wire sends them.
    let via_base64 = EncryptedDeks::from_base64(&STANDARD.encode(data));
    assert!(via_base64 == from_bytes, "from_base64 and from_bytes disagree");

    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(env) = EncryptedDeks::from_base64(text)
    {
        let decoded = STANDARD.decode(text).expect("accepted text is standard base64");
        check_parsed(&env, decoded.len());
        assert!(EncryptedDeks::from_bytes(&decoded) == Ok(env), "text and bytes disagree");
    }
});
