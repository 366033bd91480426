//! The Keyhold encrypted-field format, version 1.
//!
//! A document is a map of field name → bytes. All fields of one document are encrypted under one
//! data key (DEK), each with its own random 96-bit IV, and each encrypted field is a
//! self-describing byte string the application stores wherever it stored the plaintext:
//!
//! ```text
//! offset  size  content
//! 0       3     magic "KHD"
//! 3       1     format version = 1
//! 4       1     algorithm = 1 (AES-256-GCM, HKDF-SHA256 key derivation, key commitment)
//! 5       2     n = length of the tenant id, u16 big-endian, 1..=1024
//! 7       n     tenant id, UTF-8
//! 7+n     32    key commitment
//! 39+n    12    IV (random)
//! 51+n    ..    AES-256-GCM ciphertext, then the 16-byte tag
//! ```
//!
//! Keys: `PRK = HKDF-Extract("keyhold/document/v1", DEK)`, then
//! `K = HKDF-Expand(PRK, "keyhold/document/v1/encrypt\0" ‖ tenant id)` and
//! `commitment = HKDF-Expand(PRK, "keyhold/document/v1/commit\0" ‖ tenant id)`.
//!
//! Associated data: the whole header (bytes 0 .. 39+n) ‖ u32 big-endian length of the field
//! name ‖ the field name. So the tenant, the version, the algorithm and the field's name are all
//! authenticated: a field decrypted for another tenant, under another name, or with any header
//! byte changed fails; the commitment makes a wrong DEK fail before AES-GCM runs.
//!
//! Errors say which structural check failed (truncated, bad version, other tenant), but an
//! authentication failure is one opaque [`DocumentError::DecryptFailed`].

use std::collections::BTreeMap;

use crate::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use crate::kdf::{self, COMMITMENT_LEN};
use crate::random::{RandomError, random_array};
use crate::secret::Dek;

/// The three bytes every Keyhold encrypted field starts with.
pub const MAGIC: &[u8; 3] = b"KHD";
/// The format version this module writes.
pub const VERSION: u8 = 1;
/// AES-256-GCM with HKDF-SHA256 key derivation and a 32-byte key commitment.
pub const ALGORITHM_AES256GCM_HKDF_COMMIT: u8 = 1;
/// Longest tenant id the format accepts, in bytes.
pub const MAX_TENANT_ID_LEN: usize = 1024;

const KDF_SALT: &[u8] = b"keyhold/document/v1";
const KDF_LABEL: &[u8] = b"keyhold/document/v1";
const FIXED_PREFIX_LEN: usize = 7;

/// Why an encrypted field could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// The bytes do not start with the Keyhold magic: not a Keyhold encrypted field.
    #[error("not a Keyhold encrypted field")]
    NotEncrypted,
    /// The bytes end before the header, IV or tag is complete.
    #[error("encrypted field is truncated")]
    Truncated,
    /// A format version this build cannot read.
    #[error("unsupported encrypted field version {0}")]
    UnsupportedVersion(u8),
    /// An algorithm id this build cannot read.
    #[error("unsupported encryption algorithm {0}")]
    UnsupportedAlgorithm(u8),
    /// The header is structurally invalid (length out of range, tenant id not UTF-8).
    #[error("malformed encrypted field header")]
    MalformedHeader,
    /// The field was encrypted for another tenant than the one asked for.
    #[error("the encrypted field belongs to a different tenant")]
    TenantMismatch,
    /// Wrong key, or the field (or its header, or its name) was altered. Deliberately opaque.
    #[error("decryption failed")]
    DecryptFailed,
    /// The tenant id is empty or longer than [`MAX_TENANT_ID_LEN`].
    #[error("tenant id must be 1 to 1024 bytes")]
    InvalidTenantId,
    /// No randomness for an IV.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The crypto backend refused an operation (e.g. a plaintext over the AES-GCM limit).
    #[error("encryption failed")]
    EncryptFailed,
}

/// The parsed, not yet authenticated, parts of an encrypted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldHeader<'a> {
    /// Format version (always [`VERSION`] once parsed).
    pub version: u8,
    /// Algorithm id.
    pub algorithm: u8,
    /// The tenant the field was encrypted for (unauthenticated until decryption succeeds).
    pub tenant_id: &'a str,
    /// The key commitment.
    pub commitment: &'a [u8; COMMITMENT_LEN],
    /// The whole header, used as associated data.
    pub header_bytes: &'a [u8],
    /// The IV.
    pub iv: &'a [u8; NONCE_LEN],
    /// The ciphertext without the tag.
    pub ciphertext: &'a [u8],
    /// The tag.
    pub tag: &'a [u8; TAG_LEN],
}

/// True if `bytes` start like a Keyhold encrypted field (magic only; not a validity check).
pub fn is_keyhold_field(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Splits an encrypted field into its parts, checking structure only.
pub fn parse_field(bytes: &[u8]) -> Result<FieldHeader<'_>, DocumentError> {
    let (magic, rest) = bytes.split_at_checked(MAGIC.len()).ok_or(DocumentError::Truncated)?;
    if magic != MAGIC {
        return Err(DocumentError::NotEncrypted);
    }
    let (&version, rest) = rest.split_first().ok_or(DocumentError::Truncated)?;
    if version != VERSION {
        return Err(DocumentError::UnsupportedVersion(version));
    }
    let (&algorithm, rest) = rest.split_first().ok_or(DocumentError::Truncated)?;
    if algorithm != ALGORITHM_AES256GCM_HKDF_COMMIT {
        return Err(DocumentError::UnsupportedAlgorithm(algorithm));
    }
    let (len, rest) = rest.split_first_chunk::<2>().ok_or(DocumentError::Truncated)?;
    let tenant_len = usize::from(u16::from_be_bytes(*len));
    if tenant_len == 0 || tenant_len > MAX_TENANT_ID_LEN {
        return Err(DocumentError::MalformedHeader);
    }
    let (tenant, rest) = rest.split_at_checked(tenant_len).ok_or(DocumentError::Truncated)?;
    let tenant_id = core::str::from_utf8(tenant).map_err(|_| DocumentError::MalformedHeader)?;
    let (commitment, rest) =
        rest.split_first_chunk::<COMMITMENT_LEN>().ok_or(DocumentError::Truncated)?;
    let header_len = FIXED_PREFIX_LEN + tenant_len + COMMITMENT_LEN;
    let header_bytes = bytes.get(..header_len).ok_or(DocumentError::Truncated)?;
    let (iv, rest) = rest.split_first_chunk::<NONCE_LEN>().ok_or(DocumentError::Truncated)?;
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or(DocumentError::Truncated)?;
    Ok(FieldHeader { version, algorithm, tenant_id, commitment, header_bytes, iv, ciphertext, tag })
}

/// The keys of one document: derived once from the DEK and the tenant, used for every field.
pub struct DocumentKey {
    aead: Aes256GcmKey,
    commitment: [u8; COMMITMENT_LEN],
    header: Vec<u8>,
    tenant_len: usize,
}

impl core::fmt::Debug for DocumentKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DocumentKey").field("tenant_id", &self.tenant_id()).finish_non_exhaustive()
    }
}

impl DocumentKey {
    /// Derives the document keys for `tenant_id` from `dek`.
    pub fn new(dek: &Dek, tenant_id: &str) -> Result<Self, DocumentError> {
        let tenant = tenant_id.as_bytes();
        if tenant.is_empty() || tenant.len() > MAX_TENANT_ID_LEN {
            return Err(DocumentError::InvalidTenantId);
        }
        let tenant_len_u16 =
            u16::try_from(tenant.len()).map_err(|_| DocumentError::InvalidTenantId)?;
        let derived = kdf::derive(dek.expose_secret(), KDF_SALT, KDF_LABEL, tenant)
            .map_err(|_| DocumentError::EncryptFailed)?;
        let aead =
            Aes256GcmKey::new(&derived.encryption_key).map_err(|_| DocumentError::EncryptFailed)?;
        let mut header = Vec::with_capacity(FIXED_PREFIX_LEN + tenant.len() + COMMITMENT_LEN);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.push(ALGORITHM_AES256GCM_HKDF_COMMIT);
        header.extend_from_slice(&tenant_len_u16.to_be_bytes());
        header.extend_from_slice(tenant);
        header.extend_from_slice(&derived.commitment);
        Ok(Self { aead, commitment: derived.commitment, header, tenant_len: tenant.len() })
    }

    /// The tenant these keys were derived for.
    pub fn tenant_id(&self) -> &str {
        self.header
            .get(FIXED_PREFIX_LEN..FIXED_PREFIX_LEN + self.tenant_len)
            .and_then(|t| core::str::from_utf8(t).ok())
            .unwrap_or_default()
    }

    /// Length of an encrypted field holding `plaintext_len` bytes.
    pub fn encrypted_len(&self, plaintext_len: usize) -> usize {
        self.header.len() + NONCE_LEN + plaintext_len + TAG_LEN
    }

    /// Encrypts one field.
    pub fn encrypt_field(
        &self,
        field_name: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, DocumentError> {
        let iv: [u8; NONCE_LEN] = random_array()?;
        self.encrypt_field_with_iv(field_name, plaintext, &iv)
    }

    /// Encrypts one field into `out`, replacing its contents but reusing its allocation: with a
    /// buffer kept across calls this makes no allocation and no extra pass over the data.
    pub fn encrypt_field_into(
        &self,
        field_name: &str,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let iv: [u8; NONCE_LEN] = random_array()?;
        self.encrypt_into_with_iv(field_name, plaintext, &iv, out)
    }

    fn encrypt_field_with_iv(
        &self,
        field_name: &str,
        plaintext: &[u8],
        iv: &[u8; NONCE_LEN],
    ) -> Result<Vec<u8>, DocumentError> {
        let mut out = Vec::new();
        self.encrypt_into_with_iv(field_name, plaintext, iv, &mut out)?;
        Ok(out)
    }

    fn encrypt_into_with_iv(
        &self,
        field_name: &str,
        plaintext: &[u8],
        iv: &[u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let aad = field_aad(&self.header, field_name)?;
        let total = self.encrypted_len(plaintext.len());
        // `resize` only zeroes bytes beyond the current length: a reused buffer is overwritten,
        // not cleared first.
        out.resize(total, 0);
        let (header, rest) = out.split_at_mut(self.header.len());
        header.copy_from_slice(&self.header);
        let (iv_out, rest) = rest.split_at_mut(NONCE_LEN);
        iv_out.copy_from_slice(iv);
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        let tag = self
            .aead
            .seal_to(iv, &aad, plaintext, body)
            .map_err(|_| DocumentError::EncryptFailed)?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Authenticates and decrypts one field encrypted for this tenant under this name.
    pub fn decrypt_field(
        &self,
        field_name: &str,
        encrypted: &[u8],
    ) -> Result<Vec<u8>, DocumentError> {
        let parsed = parse_field(encrypted)?;
        self.decrypt_parsed(field_name, &parsed)
    }

    /// Decrypts one field into `out`, replacing its contents but reusing its allocation. On
    /// failure `out` is left empty: unauthenticated plaintext is never handed back.
    pub fn decrypt_field_into(
        &self,
        field_name: &str,
        encrypted: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let parsed = match parse_field(encrypted) {
            Ok(parsed) => parsed,
            Err(e) => {
                // The promise is "on failure `out` is empty": a reused buffer must not keep the
                // previous field's plaintext beside an error.
                out.clear();
                return Err(e);
            }
        };
        self.decrypt_parsed_into(field_name, &parsed, out)
    }

    /// Decrypts a field already split by [`parse_field`].
    pub fn decrypt_parsed(
        &self,
        field_name: &str,
        parsed: &FieldHeader<'_>,
    ) -> Result<Vec<u8>, DocumentError> {
        let mut out = Vec::new();
        self.decrypt_parsed_into(field_name, parsed, &mut out)?;
        Ok(out)
    }

    fn decrypt_parsed_into(
        &self,
        field_name: &str,
        parsed: &FieldHeader<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let result = self.open_parsed(field_name, parsed, out);
        if result.is_err() {
            out.clear();
        }
        result
    }

    fn open_parsed(
        &self,
        field_name: &str,
        parsed: &FieldHeader<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        if parsed.tenant_id != self.tenant_id() {
            return Err(DocumentError::TenantMismatch);
        }
        if !kdf::commitment_matches(&self.commitment, parsed.commitment) {
            return Err(DocumentError::DecryptFailed);
        }
        let aad = field_aad(parsed.header_bytes, field_name)?;
        // Overwrites a reused buffer in place; only growth is zeroed.
        out.resize(parsed.ciphertext.len(), 0);
        self.aead
            .open_to(parsed.iv, &aad, parsed.ciphertext, parsed.tag, out)
            .map_err(|_| DocumentError::DecryptFailed)
    }
}

fn field_aad(header: &[u8], field_name: &str) -> Result<Vec<u8>, DocumentError> {
    let name_len = u32::try_from(field_name.len()).map_err(|_| DocumentError::EncryptFailed)?;
    let mut aad = Vec::with_capacity(header.len() + 4 + field_name.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&name_len.to_be_bytes());
    aad.extend_from_slice(field_name.as_bytes());
    Ok(aad)
}

/// Encrypts every field of a document under one DEK.
pub fn encrypt_document<'a, I>(
    dek: &Dek,
    tenant_id: &str,
    fields: I,
) -> Result<BTreeMap<String, Vec<u8>>, DocumentError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let key = DocumentKey::new(dek, tenant_id)?;
    fields
        .into_iter()
        .map(|(name, value)| Ok((name.to_owned(), key.encrypt_field(name, value)?)))
        .collect()
}

/// Decrypts every field of a document; fails on the first field that does not decrypt.
pub fn decrypt_document<'a, I>(
    dek: &Dek,
    tenant_id: &str,
    fields: I,
) -> Result<BTreeMap<String, Vec<u8>>, DocumentError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let key = DocumentKey::new(dek, tenant_id)?;
    fields
        .into_iter()
        .map(|(name, value)| Ok((name.to_owned(), key.decrypt_field(name, value)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(tenant: &str) -> (Dek, DocumentKey) {
        let dek = Dek::generate().unwrap();
        let k = DocumentKey::new(&dek, tenant).unwrap();
        (dek, k)
    }

    #[test]
    fn round_trip_and_layout() {
        let (_, k) = key("tenant-1");
        let ct = k.encrypt_field("ssn", b"123-45-6789").unwrap();
        assert_eq!(&ct[..3], b"KHD");
        assert_eq!(ct[3], VERSION);
        assert_eq!(ct.len(), k.encrypted_len(11));
        let parsed = parse_field(&ct).unwrap();
        assert_eq!(parsed.tenant_id, "tenant-1");
        assert_eq!(k.decrypt_field("ssn", &ct).unwrap(), b"123-45-6789");
    }

    #[test]
    fn into_variants_reuse_buffers() {
        let (_, k) = key("t");
        let mut ct = vec![0xEE; 4096];
        k.encrypt_field_into("f", b"short", &mut ct).unwrap();
        assert_eq!(ct.len(), k.encrypted_len(5));
        let mut pt = vec![0xAA; 100];
        k.decrypt_field_into("f", &ct, &mut pt).unwrap();
        assert_eq!(pt, b"short");
        ct[60] ^= 1;
        assert_eq!(k.decrypt_field_into("f", &ct, &mut pt), Err(DocumentError::DecryptFailed));
        assert!(pt.is_empty());
    }

    #[test]
    fn ivs_are_fresh() {
        let (_, k) = key("t");
        let a = k.encrypt_field("f", b"same").unwrap();
        let b = k.encrypt_field("f", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let (_, k) = key("t");
        let ct = k.encrypt_field("f", b"").unwrap();
        assert_eq!(k.decrypt_field("f", &ct).unwrap(), b"");
    }

    #[test]
    fn known_answer_fixed_iv() {
        // Pins the format: a change to the layout, KDF or AAD changes these bytes.
        let dek = Dek::from_bytes([0x42; 32]);
        let k = DocumentKey::new(&dek, "tenant-kat").unwrap();
        let ct = k.encrypt_field_with_iv("field", b"hello", &[7; 12]).unwrap();
        let hex: String = ct.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, include_str!("../tests/vectors/document-v1-kat.hex").trim());
        assert_eq!(k.decrypt_field("field", &ct).unwrap(), b"hello");
    }

    #[test]
    fn wrong_tenant_wrong_name_wrong_key() {
        let (dek, k) = key("tenant-a");
        let ct = k.encrypt_field("email", b"a@example.com").unwrap();
        let other_tenant = DocumentKey::new(&dek, "tenant-b").unwrap();
        assert_eq!(other_tenant.decrypt_field("email", &ct), Err(DocumentError::TenantMismatch));
        assert_eq!(k.decrypt_field("name", &ct), Err(DocumentError::DecryptFailed));
        let (_, other_key) = key("tenant-a");
        assert_eq!(other_key.decrypt_field("email", &ct), Err(DocumentError::DecryptFailed));
    }

    #[test]
    fn structural_errors() {
        let (_, k) = key("t");
        let ct = k.encrypt_field("f", b"data").unwrap();
        assert_eq!(k.decrypt_field("f", b""), Err(DocumentError::Truncated));
        assert_eq!(k.decrypt_field("f", b"XYZ\x01"), Err(DocumentError::NotEncrypted));
        let mut v2 = ct.clone();
        v2[3] = 2;
        assert_eq!(k.decrypt_field("f", &v2), Err(DocumentError::UnsupportedVersion(2)));
        let mut alg = ct.clone();
        alg[4] = 9;
        assert_eq!(k.decrypt_field("f", &alg), Err(DocumentError::UnsupportedAlgorithm(9)));
        let mut zero_len = ct.clone();
        zero_len[5] = 0;
        zero_len[6] = 0;
        assert_eq!(k.decrypt_field("f", &zero_len), Err(DocumentError::MalformedHeader));
        for cut in 0..ct.len() {
            assert!(k.decrypt_field("f", &ct[..cut]).is_err(), "truncated at {cut} accepted");
        }
        assert!(DocumentKey::new(&Dek::generate().unwrap(), "").is_err());
        assert!(DocumentKey::new(&Dek::generate().unwrap(), &"x".repeat(1025)).is_err());
    }

    #[test]
    fn a_malformed_field_leaves_the_reused_buffer_empty() {
        // Found by the `document_field` fuzz target.
        let key = DocumentKey::new(&Dek::from_bytes([7; 32]), "tenant").unwrap();
        let mut out = b"previous field's plaintext".to_vec();
        for bad in [&b""[..], b"KHD", b"KHD\x09 not a version"] {
            out.extend_from_slice(b"stale");
            assert!(key.decrypt_field_into("f", bad, &mut out).is_err());
            assert!(out.is_empty(), "{bad:?} left {out:?}");
        }
    }

    #[test]
    fn document_helpers() {
        let dek = Dek::generate().unwrap();
        let fields = [("a", b"1".as_slice()), ("b", b"22".as_slice())];
        let enc = encrypt_document(&dek, "t", fields).unwrap();
        let dec = decrypt_document(&dek, "t", enc.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        assert_eq!(dec.get("a").unwrap(), b"1");
        assert_eq!(dec.get("b").unwrap(), b"22");
    }

    proptest! {
        #[test]
        fn prop_round_trip(tenant in "[a-zA-Z0-9_.-]{1,64}", name in ".{0,32}", pt in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (_, k) = key(&tenant);
            let ct = k.encrypt_field(&name, &pt).unwrap();
            prop_assert_eq!(k.decrypt_field(&name, &ct).unwrap(), pt);
        }

        #[test]
        fn prop_any_flipped_bit_is_refused(pt in proptest::collection::vec(any::<u8>(), 0..256), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (_, k) = key("tenant");
            let mut ct = k.encrypt_field("f", &pt).unwrap();
            let i = pos.index(ct.len());
            ct[i] ^= 1 << bit;
            prop_assert!(k.decrypt_field("f", &ct).is_err());
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (_, k) = key("tenant");
            let _ = parse_field(&bytes);
            prop_assert!(k.decrypt_field("f", &bytes).is_err());
        }
    }
}
