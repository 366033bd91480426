//! Deterministic (searchable) field encryption: the same plaintext under the same key always
//! gives the same ciphertext, so an application can look a record up by an encrypted value or
//! keep a unique index on it. What that reveals, and when to use it: `docs/deterministic.md`.
//!
//! ```text
//!  tenant secret (32 bytes, made by the tenant's KMS, stored only wrapped by it)
//!        │ HMAC-SHA512(secret, "<tenant id>-<derivation path>")        (in the proxy)
//!        ▼
//!  derived field key (64 bytes) ──AES-256-SIV (RFC 5297, no associated data)──▶ V ‖ C
//!
//!  field = u32 BE tenant secret id ‖ 00 00 ‖ V (16 bytes) ‖ C (as long as the plaintext)
//! ```
//!
//! The layout and the derivation are IronCore's (their clients' `DeterministicTenantSecurityClient`),
//! so fields written by either side read on the other given the same secret. Each tenant secret
//! belongs to one tenant and one *secret path*; the tenant id in the HMAC input keeps a secret
//! copied to another tenant from giving that tenant's keys.

use aes_siv::KeyInit as _;
use aes_siv::siv::Aes256Siv;
use hmac::Mac as _;
use zeroize::Zeroizing;

use crate::error_code::ErrorCode;
use crate::secret::{DERIVED_KEY_LEN, DerivedFieldKey, TenantSecret};

/// Length of the header in front of every deterministic field: the secret id and two zero bytes.
pub const HEADER_LEN: usize = 6;
/// Length of the synthetic IV (the SIV tag) that follows the header.
pub const SIV_TAG_LEN: usize = 16;
/// The shortest valid field: a header and a tag (an empty plaintext).
pub const MIN_FIELD_LEN: usize = HEADER_LEN + SIV_TAG_LEN;
/// The derivation the proxy implements (`derivationType` on the wire).
pub const DERIVATION_SHA512: &str = "sha512";
/// The kind of secret deterministic encryption uses (`secretType` on the wire).
pub const SECRET_TYPE_DETERMINISTIC: &str = "deterministic";

/// Why a deterministic field could not be encrypted or decrypted. No variant carries key or
/// plaintext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeterministicError {
    /// The field is shorter than a header and a tag, or its two padding bytes are not zero.
    #[error("not a deterministic field: {0}")]
    Header(&'static str),
    /// The field names a tenant secret the caller has no key for.
    #[error(
        "no key for tenant secret {0}: it is not one of this tenant's secrets for the path, or its KMS configuration is not usable"
    )]
    UnknownSecret(u32),
    /// The tag does not verify: a wrong key, or an altered or truncated field.
    #[error(
        "the field does not decrypt with the key of tenant secret {0} (altered, truncated, or for another tenant or path)"
    )]
    DecryptFailed(u32),
    /// AES-SIV refused to encrypt (cannot happen for inputs below 2^32 blocks; kept typed).
    #[error("deterministic encryption failed")]
    EncryptFailed,
}

impl DeterministicError {
    /// The client-side wire code (IronCore's numbers): 905 for a bad header, 904 for a field that
    /// does not decrypt, 903 when encryption fails.
    pub fn code(&self) -> ErrorCode {
        match self {
            DeterministicError::Header(_) => ErrorCode::DeterministicHeaderError,
            DeterministicError::UnknownSecret(_) | DeterministicError::DecryptFailed(_) => {
                ErrorCode::DeterministicFieldDecryptFailed
            }
            DeterministicError::EncryptFailed => ErrorCode::DeterministicFieldEncryptFailed,
        }
    }
}

/// Derives the field key of `tenant_id` and `derivation_path` from a tenant secret:
/// `HMAC-SHA512(secret, tenant_id ‖ "-" ‖ derivation_path)`.
///
/// The input is not length-prefixed (IronCore's layout), so `("a-b", "c")` and `("a", "b-c")`
/// give the same bytes; that is harmless because each secret belongs to exactly one tenant.
pub fn derive_field_key(
    secret: &TenantSecret,
    tenant_id: &str,
    derivation_path: &str,
) -> DerivedFieldKey {
    // HMAC takes keys of any length; 32 bytes cannot fail.
    let mut mac = match hmac::Hmac::<sha2::Sha512>::new_from_slice(secret.expose_secret()) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(tenant_id.as_bytes());
    mac.update(b"-");
    mac.update(derivation_path.as_bytes());
    let out = Zeroizing::new(<[u8; DERIVED_KEY_LEN]>::from(mac.finalize().into_bytes()));
    DerivedFieldKey::from_bytes(*out)
}

#[cold]
fn unreachable_hmac() -> ! {
    // `Hmac::new_from_slice` only fails for MACs with a fixed key size; HMAC has none.
    #[allow(clippy::panic)]
    {
        panic!("HMAC accepts keys of every length")
    }
}

/// The header of a field under tenant secret `tenant_secret_id`.
pub fn header(tenant_secret_id: u32) -> [u8; HEADER_LEN] {
    let id = tenant_secret_id.to_be_bytes();
    [id[0], id[1], id[2], id[3], 0, 0]
}

/// Splits a field into the tenant secret id of its header and the AES-SIV output after it.
pub fn parse(field: &[u8]) -> Result<(u32, &[u8]), DeterministicError> {
    if field.len() < MIN_FIELD_LEN {
        return Err(DeterministicError::Header("shorter than a header and an AES-SIV tag"));
    }
    let (head, body) = field.split_at(HEADER_LEN);
    let (id, padding) = head.split_at(4);
    if padding != [0, 0] {
        return Err(DeterministicError::Header("the two bytes after the secret id are not zero"));
    }
    let id = u32::from_be_bytes(id.try_into().map_err(|_| DeterministicError::Header("short"))?);
    Ok((id, body))
}

/// Whether `bytes` has the shape of a deterministic field (IronCore's clients' `isCiphertext`):
/// long enough and with zero padding. Says nothing about whether it decrypts.
pub fn is_deterministic_field(bytes: &[u8]) -> bool {
    parse(bytes).is_ok()
}

/// Encrypts `plaintext` under `key` (the derived key of tenant secret `tenant_secret_id`):
/// header ‖ AES-256-SIV(key, plaintext). The same inputs always give the same bytes.
pub fn encrypt(
    key: &DerivedFieldKey,
    tenant_secret_id: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, DeterministicError> {
    let sealed = siv(key)
        .encrypt(no_associated_data(), plaintext)
        .map_err(|_| DeterministicError::EncryptFailed)?;
    let mut field = Vec::with_capacity(HEADER_LEN + sealed.len());
    field.extend_from_slice(&header(tenant_secret_id));
    field.extend_from_slice(&sealed);
    Ok(field)
}

/// Decrypts a field with the key of the tenant secret its header names: `key_for(id)` returns
/// it, or `None` when the caller has no such key. The plaintext is wiped when dropped.
pub fn decrypt<'k>(
    field: &[u8],
    key_for: impl FnOnce(u32) -> Option<&'k DerivedFieldKey>,
) -> Result<Zeroizing<Vec<u8>>, DeterministicError> {
    let (id, body) = parse(field)?;
    let key = key_for(id).ok_or(DeterministicError::UnknownSecret(id))?;
    siv(key)
        .decrypt(no_associated_data(), body)
        .map(Zeroizing::new)
        .map_err(|_| DeterministicError::DecryptFailed(id))
}

fn siv(key: &DerivedFieldKey) -> Aes256Siv {
    Aes256Siv::new(key.expose_secret().into())
}

/// RFC 5297 S2V over the plaintext alone (IronCore's fields use no associated data).
fn no_associated_data() -> [&'static [u8]; 0] {
    []
}

/// AES-256-SIV with associated data, for the RFC 5297 known-answer tests.
#[cfg(test)]
fn siv_with_headers(key: &[u8; 64], headers: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    Aes256Siv::new(key.into()).encrypt(headers, plaintext).unwrap()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use proptest::prelude::*;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5297 appendix A.1 (deterministic, one header) and A.2 (nonce-based, three headers)
    /// are AES-128-SIV vectors; the same S2V/CTR code runs for AES-256, so they are checked
    /// with the 128-bit type, and the 256-bit type against IronCore's published field below.
    #[test]
    fn rfc5297_appendix_a_vectors() {
        use aes_siv::siv::Aes128Siv;
        let key = hex("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff");
        let ad = hex("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
        let plaintext = hex("11223344 55667788 99aabbcc ddee");
        let mut siv = Aes128Siv::new(key.as_slice().try_into().unwrap());
        let out = siv.encrypt([&ad], &plaintext).unwrap();
        assert_eq!(out, hex("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c"));
        assert_eq!(siv.decrypt([&ad], &out).unwrap(), plaintext);

        let key = hex("7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f");
        let ad1 = hex(
            "00112233 44556677 8899aabb ccddeeff deaddada deaddada ffeeddcc bbaa9988 77665544 33221100",
        );
        let ad2 = hex("10203040 50607080 90a0");
        let nonce = hex("09f91102 9d74e35b d84156c5 635688c0");
        let plaintext = hex(
            "74686973 20697320 736f6d65 20706c61 696e7465 78742074 6f20656e 63727970 74207573 696e6720 5349562d 414553",
        );
        let mut siv = Aes128Siv::new(key.as_slice().try_into().unwrap());
        let out = siv.encrypt([&ad1, &ad2, &nonce], &plaintext).unwrap();
        assert_eq!(
            out,
            hex(
                "7bdb6e3b 432667eb 06f4d14b ff2fbd0f cb900f2f ddbe4043 26601965 c889bf17 dba77ceb 094fa663 b7a3f748 ba8af829 ea64ad54 4a272e9c 485b62a3 fd5c0d",
            )
        );
        // One header changed: the tag no longer verifies.
        let mut other = ad2.clone();
        other[0] ^= 1;
        assert!(siv.decrypt([&ad1, &other, &nonce], &out).is_err());
    }

    /// IronCore's published vector (their Node client's examples): the derived key and a field
    /// their client wrote, which must decrypt here to the same text.
    #[test]
    fn ironcore_published_field_decrypts() {
        let secret =
            TenantSecret::from_base64("ScbKs2h0XSaBQ/vXp04RmChAffLjh2nxBgRT95j21FM=").unwrap();
        let key = derive_field_key(&secret, "tenant-gcp", "derivPath");
        assert_eq!(
            BASE64.encode(key.expose_secret()),
            "+5RA+h4hWWs28cDBaJ0xf6VekSt+NyqJLnj9/GLugMBgwPhV/Qcefs21asNN+iN3h1H8MSjRlgA+V7CyPfmFYw=="
        );
        let field = BASE64.decode("AAAT9wAAeFKwSikcVVSXpGj8z2/7bYkDpEue9kUlUxOj").unwrap();
        assert_eq!(parse(&field).unwrap().0, 5111);
        let plaintext = decrypt(&field, |id| (id == 5111).then_some(&key)).unwrap();
        assert_eq!(plaintext.as_slice(), b"Jim Bridger");
        // And writing it again gives exactly their bytes.
        assert_eq!(encrypt(&key, 5111, b"Jim Bridger").unwrap(), field);
    }

    #[test]
    fn header_layout_and_errors() {
        assert_eq!(header(4), [0, 0, 0, 4, 0, 0]);
        assert_eq!(header(u32::MAX), [0xff, 0xff, 0xff, 0xff, 0, 0]);
        let key = DerivedFieldKey::from_bytes([7; DERIVED_KEY_LEN]);
        let field = encrypt(&key, 9, b"x").unwrap();
        assert_eq!(field.len(), MIN_FIELD_LEN + 1);
        assert!(is_deterministic_field(&field));
        for cut in 0..MIN_FIELD_LEN {
            assert!(matches!(parse(&field[..cut]), Err(DeterministicError::Header(_))));
        }
        let mut padded = field.clone();
        padded[5] = 1;
        assert!(matches!(parse(&padded), Err(DeterministicError::Header(_))));
        assert_eq!(
            DeterministicError::Header("x").code().code(),
            905,
            "IronCore's DETERMINISTIC_HEADER_ERROR"
        );
        assert_eq!(decrypt(&field, |_| None), Err(DeterministicError::UnknownSecret(9)));
        assert_eq!(DeterministicError::UnknownSecret(9).code().code(), 904);
    }

    #[test]
    fn altered_or_truncated_fields_are_refused() {
        let key = DerivedFieldKey::from_bytes([3; DERIVED_KEY_LEN]);
        let field = encrypt(&key, 77, b"alice@example.com").unwrap();
        for i in HEADER_LEN..field.len() {
            let mut altered = field.clone();
            altered[i] ^= 0x80;
            assert_eq!(
                decrypt(&altered, |_| Some(&key)),
                Err(DeterministicError::DecryptFailed(77)),
                "byte {i}"
            );
        }
        // A changed secret id picks another key (or none).
        let mut renumbered = field.clone();
        renumbered[3] ^= 1;
        assert_eq!(
            decrypt(&renumbered, |id| (id == 77).then_some(&key)),
            Err(DeterministicError::UnknownSecret(76))
        );
        assert_eq!(
            decrypt(&field[..field.len() - 1], |_| Some(&key)),
            Err(DeterministicError::DecryptFailed(77))
        );
    }

    #[test]
    fn derivation_separates_tenants_paths_and_secrets() {
        let a = TenantSecret::from_bytes([1; 32]);
        let b = TenantSecret::from_bytes([2; 32]);
        let base = derive_field_key(&a, "tenant-1", "email");
        assert_ne!(base, derive_field_key(&a, "tenant-2", "email"));
        assert_ne!(base, derive_field_key(&a, "tenant-1", "phone"));
        assert_ne!(base, derive_field_key(&b, "tenant-1", "email"));
        assert_eq!(base, derive_field_key(&a, "tenant-1", "email"));
    }

    proptest! {
        #[test]
        fn same_input_same_field_and_round_trip(
            key in proptest::array::uniform32(any::<u8>()),
            id in any::<u32>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = [0u8; DERIVED_KEY_LEN];
            bytes[..32].copy_from_slice(&key);
            bytes[32..].copy_from_slice(&key);
            bytes[0] ^= 0x5a;
            let key = DerivedFieldKey::from_bytes(bytes);
            let one = encrypt(&key, id, &plaintext).unwrap();
            let two = encrypt(&key, id, &plaintext).unwrap();
            prop_assert_eq!(&one, &two);
            prop_assert_eq!(one.len(), MIN_FIELD_LEN + plaintext.len());
            prop_assert_eq!(parse(&one).unwrap().0, id);
            let back = decrypt(&one, |i| (i == id).then_some(&key)).unwrap();
            prop_assert_eq!(back.as_slice(), plaintext.as_slice());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let key = DerivedFieldKey::from_bytes([9; DERIVED_KEY_LEN]);
            let _ = decrypt(&bytes, |_| Some(&key));
        }
    }

    #[test]
    fn siv_with_headers_is_rfc5297_s2v() {
        // With no headers, S2V runs over the plaintext alone: the same as `encrypt` minus header.
        let key = [5u8; 64];
        let derived = DerivedFieldKey::from_bytes(key);
        let field = encrypt(&derived, 1, b"abc").unwrap();
        assert_eq!(siv_with_headers(&key, &[], b"abc"), field[HEADER_LEN..]);
        assert_ne!(siv_with_headers(&key, &[b""], b"abc"), field[HEADER_LEN..]);
    }
}
