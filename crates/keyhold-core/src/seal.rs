//! Secrets sealed to the proxy fleet (docs/broker.md §1).
//!
//! A tenant admin's browser (or the CLI) seals KMS and SIEM credentials with HPKE (RFC 9180,
//! base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM) to the fleet's public key
//! before they leave the admin's machine. The broker stores and serves the sealed blob; only a
//! proxy holding the fleet's private key opens it.
//!
//! The tenant id and the purpose are the associated data, so a blob sealed for one tenant's KMS
//! does not open as another tenant's, nor as a SIEM credential: the broker cannot move a secret.
//!
//! ```
//! use keyhold_core::seal::{FleetSecretKey, SealPurpose, open, seal};
//!
//! let fleet = FleetSecretKey::generate()?;
//! let blob = seal(&fleet.public_key(), SealPurpose::Kms, "acme", br#"{"token":"s3cret"}"#)?;
//! assert!(blob.starts_with("khs1."));
//! let opened = open(&[fleet], SealPurpose::Kms, "acme", &blob)?;
//! assert_eq!(&opened[..], br#"{"token":"s3cret"}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::random::fill_random;

/// The HPKE `info` of every sealed secret.
pub const INFO: &[u8] = b"keyhold sealed secret v1";
/// The prefix of a sealed blob (format version 1).
pub const PREFIX: &str = "khs1";
/// The suite, as the web page and the API name it.
pub const SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM";
/// Length of an X25519 key and of the encapsulated key.
const KEY_LEN: usize = 32;
/// Length of a key id in hex characters.
const KEY_ID_LEN: usize = 16;
/// Largest sealed plaintext accepted (a credential, not a document).
pub const MAX_PLAINTEXT: usize = 64 * 1024;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// The key is not 32 bytes of base64.
    #[error("invalid fleet key: {0}")]
    InvalidKey(&'static str),
    /// The blob is not `khs1.<key id>.<base64url>`.
    #[error("not a sealed secret: {0}")]
    Malformed(&'static str),
    /// No key held has the id the blob was sealed to.
    #[error("sealed to fleet key {0}, which this proxy does not hold")]
    UnknownKey(String),
    /// The blob was altered, or sealed for another tenant or purpose.
    #[error("the sealed secret does not open: altered, or sealed for another tenant or purpose")]
    Open,
    /// The plaintext is larger than [`MAX_PLAINTEXT`].
    #[error("a sealed secret holds at most {MAX_PLAINTEXT} bytes")]
    TooLarge,
    /// The operating system's random generator failed.
    #[error("no randomness")]
    Random,
}

/// What a sealed secret is for (part of the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealPurpose {
    /// KMS credentials.
    Kms,
    /// SIEM (audit sink) credentials.
    Siem,
}

impl SealPurpose {
    /// The purpose's name in the associated data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kms => "kms",
            Self::Siem => "siem",
        }
    }
}

/// The associated data of a sealed secret: `<purpose>\n<tenant id>`.
pub fn associated_data(purpose: SealPurpose, tenant_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(purpose.as_str().len() + 1 + tenant_id.len());
    aad.extend_from_slice(purpose.as_str().as_bytes());
    aad.push(b'\n');
    aad.extend_from_slice(tenant_id.as_bytes());
    aad
}

/// The fleet's public key: what secrets are sealed to.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetPublicKey([u8; KEY_LEN]);

impl FleetPublicKey {
    /// From the 32 raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// From standard base64 of the 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes =
            STANDARD.decode(text.trim()).map_err(|_| SealError::InvalidKey("not base64"))?;
        let bytes: [u8; KEY_LEN] =
            bytes.try_into().map_err(|_| SealError::InvalidKey("not 32 bytes"))?;
        Ok(Self(bytes))
    }

    /// Standard base64 of the 32 bytes.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key id: the first 8 bytes of SHA-256 of the key, hex.
    pub fn key_id(&self) -> String {
        key_id(&self.0)
    }
}

impl fmt::Debug for FleetPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetPublicKey({})", self.key_id())
    }
}

/// The first 8 bytes of SHA-256 of `public_key`, hex: names a key in blobs and snapshots.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    hex_encode(digest.get(..KEY_ID_LEN / 2).unwrap_or_default())
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The fleet's private key, held by the proxies only. Wiped on drop, never printed.
pub struct FleetSecretKey {
    secret: Zeroizing<[u8; KEY_LEN]>,
    public: FleetPublicKey,
}

impl FleetSecretKey {
    /// A new random key pair.
    pub fn generate() -> Result<Self, SealError> {
        let mut ikm = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&mut ikm[..]).map_err(|_| SealError::Random)?;
        // DeriveKeyPair from fresh randomness is how RFC 9180 makes X25519 keys (§7.1.3).
        let (secret, _) = X25519HkdfSha256::derive_keypair(&ikm[..]);
        let bytes = Zeroizing::new(<[u8; KEY_LEN]>::from(secret.to_bytes()));
        Self::from_bytes(*bytes)
    }

    /// From the 32 raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(bytes);
        let secret = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&bytes[..])
            .map_err(|_| SealError::InvalidKey("not an X25519 private key"))?;
        let public = X25519HkdfSha256::sk_to_pk(&secret);
        let public: [u8; KEY_LEN] = public.to_bytes().into();
        Ok(Self { secret: bytes, public: FleetPublicKey(public) })
    }

    /// From standard base64 of the 32 bytes (what a fleet key file holds).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(
            STANDARD.decode(text.trim()).map_err(|_| SealError::InvalidKey("not base64"))?,
        );
        let array: [u8; KEY_LEN] =
            bytes.as_slice().try_into().map_err(|_| SealError::InvalidKey("not 32 bytes"))?;
        Self::from_bytes(array)
    }

    /// Standard base64 of the 32 bytes.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.secret[..]))
    }

    /// The public half.
    pub fn public_key(&self) -> FleetPublicKey {
        self.public.clone()
    }
}

impl fmt::Debug for FleetSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetSecretKey({}, secret hidden)", self.public.key_id())
    }
}

/// Seals `plaintext` to `key` for `tenant_id` and `purpose`: `khs1.<key id>.<base64url>`.
pub fn seal(
    key: &FleetPublicKey,
    purpose: SealPurpose,
    tenant_id: &str,
    plaintext: &[u8],
) -> Result<String, SealError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge);
    }
    let recipient = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&key.0)
        .map_err(|_| SealError::InvalidKey("not an X25519 public key"))?;
    // The ephemeral key comes from the OS generator inside `hpke` (which would panic only if
    // the OS had no randomness at all; every other key here would fail first).
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &recipient,
        INFO,
        plaintext,
        &associated_data(purpose, tenant_id),
    )
    .map_err(|_| SealError::Random)?;
    let mut body = Vec::with_capacity(KEY_LEN + ciphertext.len());
    body.extend_from_slice(&enc.to_bytes());
    body.extend_from_slice(&ciphertext);
    Ok(format!("{PREFIX}.{}.{}", key.key_id(), URL_SAFE_NO_PAD.encode(body)))
}

/// The parts of a sealed blob, checked for shape but not opened.
#[derive(Debug)]
struct Blob<'a> {
    key_id: &'a str,
    enc: [u8; KEY_LEN],
    ciphertext: Vec<u8>,
}

fn parse(sealed: &str) -> Result<Blob<'_>, SealError> {
    let mut parts = sealed.trim().split('.');
    let (Some(prefix), Some(key_id), Some(body), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SealError::Malformed("expected khs1.<key id>.<base64url>"));
    };
    if prefix != PREFIX {
        return Err(SealError::Malformed("unknown version (expected khs1)"));
    }
    if key_id.len() != KEY_ID_LEN || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SealError::Malformed("the key id is not 16 hex characters"));
    }
    let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| SealError::Malformed("not base64url"))?;
    // Encapsulated key, then at least the 16-byte tag.
    if body.len() < KEY_LEN + 16 {
        return Err(SealError::Malformed("too short"));
    }
    let (enc, ciphertext) = body.split_at(KEY_LEN);
    let enc: [u8; KEY_LEN] = enc.try_into().map_err(|_| SealError::Malformed("too short"))?;
    if ciphertext.len() > MAX_PLAINTEXT + 16 {
        return Err(SealError::TooLarge);
    }
    Ok(Blob { key_id, enc, ciphertext: ciphertext.to_vec() })
}

/// The id of the fleet key a blob was sealed to, after checking the blob's shape (what the
/// broker can check without opening it).
pub fn sealed_key_id(sealed: &str) -> Result<String, SealError> {
    parse(sealed).map(|blob| blob.key_id.to_ascii_lowercase())
}

/// Opens a sealed blob with whichever of `keys` it was sealed to.
pub fn open(
    keys: &[FleetSecretKey],
    purpose: SealPurpose,
    tenant_id: &str,
    sealed: &str,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let blob = parse(sealed)?;
    let key = keys
        .iter()
        .find(|k| k.public.key_id().eq_ignore_ascii_case(blob.key_id))
        .ok_or_else(|| SealError::UnknownKey(blob.key_id.to_owned()))?;
    let secret = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&key.secret[..])
        .map_err(|_| SealError::InvalidKey("not an X25519 private key"))?;
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&blob.enc)
        .map_err(|_| SealError::Open)?;
    let plaintext = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &secret,
        &enc,
        INFO,
        &blob.ciphertext,
        &associated_data(purpose, tenant_id),
    )
    .map_err(|_| SealError::Open)?;
    Ok(Zeroizing::new(plaintext))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sealed(fleet: &FleetSecretKey) -> String {
        seal(&fleet.public_key(), SealPurpose::Kms, "acme", br#"{"token":"t0ken"}"#).unwrap()
    }

    #[test]
    fn round_trip_and_shape() {
        let fleet = FleetSecretKey::generate().unwrap();
        let blob = sealed(&fleet);
        let parts: Vec<&str> = blob.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "khs1");
        assert_eq!(parts[1], fleet.public_key().key_id());
        assert_eq!(sealed_key_id(&blob).unwrap(), fleet.public_key().key_id());
        let opened = open(&[fleet], SealPurpose::Kms, "acme", &blob).unwrap();
        assert_eq!(&opened[..], br#"{"token":"t0ken"}"#);
    }

    #[test]
    fn two_seals_differ() {
        let fleet = FleetSecretKey::generate().unwrap();
        assert_ne!(sealed(&fleet), sealed(&fleet));
    }

    #[test]
    fn another_tenant_or_purpose_does_not_open() {
        let fleet = FleetSecretKey::generate().unwrap();
        let blob = sealed(&fleet);
        let keys = [fleet];
        assert_eq!(open(&keys, SealPurpose::Kms, "acme2", &blob).unwrap_err(), SealError::Open);
        assert_eq!(open(&keys, SealPurpose::Siem, "acme", &blob).unwrap_err(), SealError::Open);
    }

    #[test]
    fn altered_blob_does_not_open() {
        let fleet = FleetSecretKey::generate().unwrap();
        let blob = sealed(&fleet);
        let keys = [fleet];
        let body_at = blob.rfind('.').unwrap() + 1;
        for i in body_at..blob.len() {
            let mut bytes = blob.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            assert!(open(&keys, SealPurpose::Kms, "acme", &altered).is_err(), "position {i}");
        }
    }

    #[test]
    fn the_right_key_is_chosen_and_an_unknown_one_named() {
        let old = FleetSecretKey::generate().unwrap();
        let new = FleetSecretKey::generate().unwrap();
        let blob = sealed(&old);
        let keys = [new, old];
        assert!(open(&keys, SealPurpose::Kms, "acme", &blob).is_ok());
        let other = FleetSecretKey::generate().unwrap();
        let err = open(&[other], SealPurpose::Kms, "acme", &blob).unwrap_err();
        assert!(matches!(err, SealError::UnknownKey(id) if id == keys[1].public_key().key_id()));
    }

    #[test]
    fn malformed_blobs_are_refused_with_a_reason() {
        for bad in [
            "",
            "khs1",
            "khs1..",
            "khs2.0011223344556677.AAAA",
            "khs1.xyz.AAAA",
            "khs1.0011223344556677.!!!!",
            "khs1.0011223344556677.AAAA",
            "khs1.a.b.c",
        ] {
            assert!(matches!(sealed_key_id(bad), Err(SealError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_base64_and_debug_hides_the_secret() {
        let fleet = FleetSecretKey::generate().unwrap();
        let again = FleetSecretKey::from_base64(&fleet.to_base64()).unwrap();
        assert_eq!(again.public_key(), fleet.public_key());
        let public = FleetPublicKey::from_base64(&fleet.public_key().to_base64()).unwrap();
        assert_eq!(public, fleet.public_key());
        assert!(!format!("{fleet:?}").contains(fleet.to_base64().as_str()));
        assert!(FleetPublicKey::from_base64("AAAA").is_err());
        assert!(FleetSecretKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn oversize_plaintext_is_refused() {
        let fleet = FleetSecretKey::generate().unwrap();
        let big = vec![b'x'; MAX_PLAINTEXT + 1];
        assert_eq!(
            seal(&fleet.public_key(), SealPurpose::Kms, "acme", &big).unwrap_err(),
            SealError::TooLarge
        );
    }
}
