//! Key derivation for the encrypted formats: one HKDF-SHA256 extract per data key, then two
//! expands — an encryption key and a key commitment.
//!
//! AES-GCM is not key-committing: one ciphertext can be made to decrypt under two different
//! keys. Storing `commitment` beside each ciphertext and checking it (in constant time) before
//! decrypting closes that gap, the way the AWS Encryption SDK's committing suites do.

use hkdf::Hkdf;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Length of a key commitment in bytes.
pub const COMMITMENT_LEN: usize = 32;

/// HKDF could not produce the requested output (cannot happen for 32-byte outputs; kept typed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key derivation failed")]
pub struct KdfError;

/// The two values derived from a data key for one format and context.
pub struct DerivedKeys {
    /// The AES-256-GCM key actually used on the data.
    pub encryption_key: Zeroizing<[u8; 32]>,
    /// A public value that only the right data key produces.
    pub commitment: [u8; COMMITMENT_LEN],
}

/// Derives the encryption key and the key commitment.
///
/// `salt` separates formats (and, for files, carries per-file randomness); `label` names the
/// format version; `context` binds whatever the ciphertext must belong to (the tenant id, a
/// header hash). The info strings are `label ‖ "/encrypt\0" ‖ context` and
/// `label ‖ "/commit\0" ‖ context`.
pub fn derive(
    ikm: &[u8; 32],
    salt: &[u8],
    label: &[u8],
    context: &[u8],
) -> Result<DerivedKeys, KdfError> {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut encryption_key = Zeroizing::new([0u8; 32]);
    hkdf.expand_multi_info(&[label, b"/encrypt\0", context], encryption_key.as_mut())
        .map_err(|_| KdfError)?;
    let mut commitment = [0u8; COMMITMENT_LEN];
    hkdf.expand_multi_info(&[label, b"/commit\0", context], &mut commitment)
        .map_err(|_| KdfError)?;
    Ok(DerivedKeys { encryption_key, commitment })
}

/// Derives one 256-bit key: `HKDF-Expand(HKDF-Extract(salt, ikm), label ‖ "\0" ‖ context)`.
pub fn derive_key(
    ikm: &[u8; 32],
    salt: &[u8],
    label: &[u8],
    context: &[u8],
) -> Result<Zeroizing<[u8; 32]>, KdfError> {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand_multi_info(&[label, b"\0", context], key.as_mut()).map_err(|_| KdfError)?;
    Ok(key)
}

/// Constant-time comparison of a stored commitment with the expected one.
pub fn commitment_matches(expected: &[u8; COMMITMENT_LEN], stored: &[u8]) -> bool {
    expected.as_slice().ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_and_labels_separate_keys() {
        let ikm = [5u8; 32];
        let a = derive(&ikm, b"s", b"keyhold/document/v1", b"tenant-a").unwrap();
        let b = derive(&ikm, b"s", b"keyhold/document/v1", b"tenant-b").unwrap();
        let c = derive(&ikm, b"s", b"keyhold/stream/v1", b"tenant-a").unwrap();
        let again = derive(&ikm, b"s", b"keyhold/document/v1", b"tenant-a").unwrap();
        assert_ne!(*a.encryption_key, *b.encryption_key);
        assert_ne!(*a.encryption_key, *c.encryption_key);
        assert_ne!(a.commitment, b.commitment);
        assert_ne!(a.encryption_key.as_slice(), a.commitment.as_slice());
        assert_eq!(*a.encryption_key, *again.encryption_key);
        assert!(commitment_matches(&a.commitment, &again.commitment));
        assert!(!commitment_matches(&a.commitment, &b.commitment));
        assert!(!commitment_matches(&a.commitment, &a.commitment[..31]));
    }

    // RFC 5869 test case 1 checks that we drive HKDF-SHA256 correctly (single info part).
    #[test]
    fn hkdf_rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let hk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
        let mut okm = [0u8; 42];
        hk.expand(&info, &mut okm).unwrap();
        let expected =
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865";
        let got: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected);
    }
}
