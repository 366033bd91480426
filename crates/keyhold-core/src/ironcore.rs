//! IronCore's "v3" encrypted-field layout, read so that data written by IronCore's client SDKs
//! decrypts with Keyhold (and written, on request, for the other direction).
//!
//! ```text
//! 0x03 ‖ "IRON" ‖ u16be L ‖ v3DocumentHeader (L bytes, protobuf) ‖ IV (12) ‖ AES-256-GCM(body) ‖ tag (16)
//!
//! message SaaSShieldHeader { string tenant_id = 1; }
//! message DataControlPlatformHeader { string document_id = 1; uint64 segment_id = 2; }
//! message v3DocumentHeader { bytes sig = 1;
//!   oneof header { DataControlPlatformHeader data_control = 2; SaaSShieldHeader saas_shield = 3; } }
//! ```
//!
//! `sig` is IV' ‖ tag', the tag of AES-256-GCM-encrypting the serialized `SaaSShieldHeader` under
//! the DEK with a fresh IV' (the ciphertext is discarded): it proves the DEK fits the header. The
//! body has no associated data. Facts and vectors: `docs/tsp-api.md` §8–9.
//!
//! Compared with Keyhold's own format ([`crate::document`]) this layout binds neither the field
//! name nor (when `sig` is empty) the tenant to the ciphertext, and is not key-committing beyond
//! `sig`; Keyhold reads it for migration and interoperability and writes its own format by default.
//!
//! Leniency follows IronCore's Java client and docs library: an empty header, or an empty `sig`
//! (written by very early clients), is accepted — the body's GCM tag still authenticates the data
//! under the DEK the proxy released for this tenant; a `sig` of any other length than 28 bytes,
//! a wrong `sig`, or a Data Control Platform header is refused.

use prost::Message;

use crate::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use crate::document::DocumentError;
use crate::random::random_array;
use crate::secret::Dek;

/// The first five bytes of a v3 field.
pub const V3_PREFIX: [u8; 5] = [0x03, b'I', b'R', b'O', b'N'];
const SIG_LEN: usize = NONCE_LEN + TAG_LEN;

#[derive(Clone, PartialEq, Message)]
struct SaaSShieldHeader {
    #[prost(string, tag = "1")]
    tenant_id: String,
}

#[derive(Clone, PartialEq, Message)]
struct DataControlPlatformHeader {
    #[prost(string, tag = "1")]
    document_id: String,
    #[prost(uint64, tag = "2")]
    segment_id: u64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Header {
    #[prost(message, tag = "2")]
    DataControl(DataControlPlatformHeader),
    #[prost(message, tag = "3")]
    SaasShield(SaaSShieldHeader),
}

#[derive(Clone, PartialEq, Message)]
struct V3DocumentHeader {
    #[prost(bytes = "vec", tag = "1")]
    sig: Vec<u8>,
    #[prost(oneof = "Header", tags = "2, 3")]
    header: Option<Header>,
}

/// True if `bytes` start with the v3 prefix (not a validity check).
pub fn is_v3(bytes: &[u8]) -> bool {
    bytes.starts_with(&V3_PREFIX)
}

/// A v3 field split into its parts; the header is parsed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Field<'a> {
    /// The tenant named in the header, if the header has one.
    pub tenant_id: Option<String>,
    sig: Vec<u8>,
    iv: &'a [u8; NONCE_LEN],
    ciphertext: &'a [u8],
    tag: &'a [u8; TAG_LEN],
}

/// Splits a v3 field, checking its structure.
pub fn parse_v3(bytes: &[u8]) -> Result<V3Field<'_>, DocumentError> {
    let (prefix, rest) = bytes.split_first_chunk::<5>().ok_or(DocumentError::Truncated)?;
    if *prefix != V3_PREFIX {
        return Err(DocumentError::NotEncrypted);
    }
    let (len, rest) = rest.split_first_chunk::<2>().ok_or(DocumentError::Truncated)?;
    let (header, rest) = rest
        .split_at_checked(usize::from(u16::from_be_bytes(*len)))
        .ok_or(DocumentError::Truncated)?;
    let header = V3DocumentHeader::decode(header).map_err(|_| DocumentError::MalformedHeader)?;
    let tenant_id = match header.header {
        None => None,
        Some(Header::SaasShield(h)) => Some(h.tenant_id),
        Some(Header::DataControl(_)) => return Err(DocumentError::UnsupportedAlgorithm(2)),
    };
    if !(header.sig.is_empty() || header.sig.len() == SIG_LEN) {
        return Err(DocumentError::MalformedHeader);
    }
    let (iv, rest) = rest.split_first_chunk::<NONCE_LEN>().ok_or(DocumentError::Truncated)?;
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or(DocumentError::Truncated)?;
    Ok(V3Field { tenant_id, sig: header.sig, iv, ciphertext, tag })
}

/// Verifies and decrypts a v3 field. With `expected_tenant`, a header naming another tenant is
/// refused.
pub fn decrypt_v3(
    dek: &Dek,
    expected_tenant: Option<&str>,
    bytes: &[u8],
) -> Result<Vec<u8>, DocumentError> {
    let field = parse_v3(bytes)?;
    if let (Some(expected), Some(found)) = (expected_tenant, field.tenant_id.as_deref())
        && expected != found
    {
        return Err(DocumentError::TenantMismatch);
    }
    let key = Aes256GcmKey::new(dek.expose_secret()).map_err(|_| DocumentError::DecryptFailed)?;
    if let (Some(tenant), false) = (&field.tenant_id, field.sig.is_empty()) {
        let (sig_iv, sig_tag) = field.sig.split_at(NONCE_LEN);
        let sig_iv: &[u8; NONCE_LEN] =
            sig_iv.try_into().map_err(|_| DocumentError::MalformedHeader)?;
        let mut signed = SaaSShieldHeader { tenant_id: tenant.clone() }.encode_to_vec();
        let tag = key
            .seal_in_place(sig_iv, &[], &mut signed)
            .map_err(|_| DocumentError::DecryptFailed)?;
        if !crate::secret::constant_time_eq(&tag, sig_tag) {
            return Err(DocumentError::DecryptFailed);
        }
    }
    let mut out = vec![0u8; field.ciphertext.len()];
    key.open_to(field.iv, &[], field.ciphertext, field.tag, &mut out)
        .map_err(|_| DocumentError::DecryptFailed)?;
    Ok(out)
}

/// Encrypts a field in the v3 layout, readable by IronCore's client SDKs.
pub fn encrypt_v3(dek: &Dek, tenant_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, DocumentError> {
    let sig_iv: [u8; NONCE_LEN] = random_array()?;
    let body_iv: [u8; NONCE_LEN] = random_array()?;
    encrypt_v3_with_ivs(dek, tenant_id, plaintext, &sig_iv, &body_iv)
}

fn encrypt_v3_with_ivs(
    dek: &Dek,
    tenant_id: &str,
    plaintext: &[u8],
    sig_iv: &[u8; NONCE_LEN],
    body_iv: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, DocumentError> {
    let key = Aes256GcmKey::new(dek.expose_secret()).map_err(|_| DocumentError::EncryptFailed)?;
    let shield = SaaSShieldHeader { tenant_id: tenant_id.to_owned() };
    let mut signed = shield.encode_to_vec();
    let sig_tag =
        key.seal_in_place(sig_iv, &[], &mut signed).map_err(|_| DocumentError::EncryptFailed)?;
    let mut sig = sig_iv.to_vec();
    sig.extend_from_slice(&sig_tag);
    let header = V3DocumentHeader { sig, header: Some(Header::SaasShield(shield)) }.encode_to_vec();
    let header_len = u16::try_from(header.len()).map_err(|_| DocumentError::InvalidTenantId)?;
    let mut out = Vec::with_capacity(7 + header.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&V3_PREFIX);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body_iv);
    let start = out.len();
    out.resize(start + plaintext.len(), 0);
    let body = out.get_mut(start..).ok_or(DocumentError::EncryptFailed)?;
    let tag =
        key.seal_to(body_iv, &[], plaintext, body).map_err(|_| DocumentError::EncryptFailed)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn vector(name: &str) -> Vec<u8> {
        let text =
            std::fs::read_to_string(format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        hex(&text)
    }

    fn dek_0_to_31() -> Dek {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        Dek::from_bytes(b)
    }

    // KAT-1: a document written by IronCore's PHP client, used by their Java, Go and PHP tests.
    #[test]
    fn decrypts_a_document_written_by_ironcore_clients() {
        let doc = vector("ironcore-v3-kat1.hex");
        let dek = Dek::from_bytes([0x39; 32]);
        let tenant = "tenantId".repeat(41);
        let plain = decrypt_v3(&dek, Some(&tenant), &doc).unwrap();
        assert_eq!(plain, b"I have a fever and the only cure is nine nine nine nine...");
        // Their negative cases: a changed last byte, a wrong DEK, a non-IronCore prefix.
        let mut bad = doc.clone();
        *bad.last_mut().unwrap() = 0;
        assert_eq!(decrypt_v3(&dek, None, &bad), Err(DocumentError::DecryptFailed));
        assert_eq!(
            decrypt_v3(&Dek::from_bytes([0x38; 32]), None, &doc),
            Err(DocumentError::DecryptFailed)
        );
        assert_eq!(decrypt_v3(&dek, Some("other"), &doc), Err(DocumentError::TenantMismatch));
        assert_eq!(parse_v3(&hex("00000000000000")).unwrap_err(), DocumentError::NotEncrypted);
        assert_eq!(parse_v3(&hex("00000000000100")).unwrap_err(), DocumentError::NotEncrypted);
    }

    // KAT-2: the header with a known sig (DEK 00..1f, tenant "tenantId", IV' 3171ef3c...).
    #[test]
    fn writes_the_known_header_and_our_own_vector() {
        let dek = dek_0_to_31();
        let sig_iv: [u8; 12] = hex("3171ef3c899f875e595c2213").try_into().unwrap();
        let body_iv: [u8; 12] = hex("101112131415161718191a1b").try_into().unwrap();
        let field =
            encrypt_v3_with_ivs(&dek, "tenantId", b"hello keyhold", &sig_iv, &body_iv).unwrap();
        let expected_header = hex(
            "0349524f4e002a0a1c3171ef3c899f875e595c2213cacf9287c78cf196458cd690544980c71a0a0a0874656e616e744964",
        );
        assert_eq!(field[..expected_header.len()], expected_header[..]);
        // KAT-7 (computed independently with Python's `cryptography` for docs/tsp-api.md).
        assert_eq!(field, vector("ironcore-v3-kat7.hex"));
        assert_eq!(decrypt_v3(&dek, Some("tenantId"), &field).unwrap(), b"hello keyhold");
    }

    #[test]
    fn header_leniency_and_strictness() {
        // KAT-3: a zero-length header parses (Java's verifyV3DocWithZeroSize).
        let zero = hex(
            "0349524f4e0000346145efbf2055ba656dbd1fe4daedb22a7d7cd1501f0a7f93ec5a07586867c0c8265f609fa4ca",
        );
        let parsed = parse_v3(&zero).unwrap();
        assert_eq!(parsed.tenant_id, None);
        // A 3-byte sig is refused (docs-rs verify_known_bad_sig_in_v3_header).
        let mut bad_sig = hex("0349524f4e0011");
        bad_sig.extend(hex("0a030102031a0a0a0874656e616e744964"));
        bad_sig.extend([0u8; 28]);
        assert_eq!(parse_v3(&bad_sig).unwrap_err(), DocumentError::MalformedHeader);
        // An empty sig is accepted (very early Java clients); the body tag still authenticates.
        let dek = dek_0_to_31();
        let good = encrypt_v3(&dek, "tenantId", b"data").unwrap();
        let body = &good[7 + 42..];
        let mut empty_sig = hex("0349524f4e000e0a001a0a0a0874656e616e744964");
        empty_sig.extend_from_slice(body);
        assert_eq!(decrypt_v3(&dek, Some("tenantId"), &empty_sig).unwrap(), b"data");
        assert_eq!(
            decrypt_v3(&Dek::from_bytes([1; 32]), None, &empty_sig),
            Err(DocumentError::DecryptFailed)
        );
        for cut in 0..good.len() {
            assert!(decrypt_v3(&dek, None, &good[..cut]).is_err());
        }
    }
}
