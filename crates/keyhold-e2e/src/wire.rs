//! The E2E service's HTTP API shapes (docs/e2e-api.md), shared by the service and the SDK so
//! that both sides agree by construction, and the request signature a device makes.
//!
//! Binary fields are base64url without padding. Every request from a device carries four
//! headers: [`USER_HEADER`], [`DEVICE_HEADER`], [`TIMESTAMP_HEADER`] (Unix seconds) and
//! [`SIGNATURE_HEADER`], the device's Ed25519 signature over [`request_signing_input`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::access::{DecryptGrant, DeviceCertificate};
use crate::document::EncryptedDocument;
use crate::keys::{DeviceKeys, DevicePublicKeys, UserPublicKeys};
use crate::pre::{EncryptedValue, PublicKey};
use crate::trust::{SignedGroupKey, SignedUserKeys};

/// The calling device's user id.
pub const USER_HEADER: &str = "keyhold-e2e-user";
/// The calling device's id.
pub const DEVICE_HEADER: &str = "keyhold-e2e-device";
/// When the request was signed, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "keyhold-e2e-timestamp";
/// The device's signature (base64url).
pub const SIGNATURE_HEADER: &str = "keyhold-e2e-signature";
/// How far a request's timestamp may be from the server's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The bytes a device signs for one request: the tenant (organization), its own ids, the
/// method, the path with its query, the timestamp and the SHA-256 of the body, each on its own
/// line after a domain line. Binding the body's hash makes a captured signature useless for any
/// other request; the timestamp bounds replays of the same one to [`MAX_CLOCK_SKEW_SECS`].
pub fn request_signing_input(
    tenant: &str,
    user: &str,
    device: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + path_and_query.len());
    out.extend_from_slice(b"keyhold-e2e-v1 request\n");
    for part in [tenant, user, device, method, path_and_query] {
        // Lengths first, so that no two different requests share an input.
        out.extend_from_slice(format!("{}:{part}\n", part.len()).as_bytes());
    }
    out.extend_from_slice(format!("{timestamp}\n").as_bytes());
    out.extend_from_slice(hex_lower(&Sha256::digest(body)).as_bytes());
    out
}

/// The four headers of a signed request.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    /// [`USER_HEADER`].
    pub user: String,
    /// [`DEVICE_HEADER`].
    pub device: String,
    /// [`TIMESTAMP_HEADER`].
    pub timestamp: i64,
    /// [`SIGNATURE_HEADER`], base64url.
    pub signature: String,
}

/// Signs a request as `device` of `user`.
#[allow(clippy::too_many_arguments)]
pub fn sign_request(
    keys: &DeviceKeys,
    tenant: &str,
    user: &str,
    device: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    body: &[u8],
) -> SignedHeaders {
    let input =
        request_signing_input(tenant, user, device, method, path_and_query, timestamp, body);
    SignedHeaders {
        user: user.to_owned(),
        device: device.to_owned(),
        timestamp,
        signature: URL_SAFE_NO_PAD.encode(keys.sign(&input)),
    }
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    /// Headers missing or malformed.
    #[error("missing or malformed keyhold-e2e-* headers")]
    Missing,
    /// The timestamp is too far from the server's clock.
    #[error("request timestamp outside the allowed clock skew")]
    Stale,
    /// The signature does not verify with the device's key.
    #[error("request signature does not verify")]
    BadSignature,
}

impl RequestAuthError {
    /// The stable numeric code.
    pub fn code(&self) -> u16 {
        match self {
            Self::Missing => 1120,
            Self::Stale => 1121,
            Self::BadSignature => 1122,
        }
    }
}

/// Checks a request's signature against the device's signing key (looked up by the service
/// from the user and device headers) and its timestamp against `now`.
#[allow(clippy::too_many_arguments)]
pub fn verify_request(
    device_key: &VerifyingKey,
    tenant: &str,
    headers: &SignedHeaders,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: i64,
) -> Result<(), RequestAuthError> {
    // `abs_diff`: a timestamp of i64::MIN must be refused, not overflow (a panic, since
    // release builds check overflow).
    if now.abs_diff(headers.timestamp) > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
        return Err(RequestAuthError::Stale);
    }
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(&headers.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(RequestAuthError::Missing)?;
    let input = request_signing_input(
        tenant,
        &headers.user,
        &headers.device,
        method,
        path_and_query,
        headers.timestamp,
        body,
    );
    device_key
        .verify_strict(&input, &Signature::from_bytes(&sig))
        .map_err(|_| RequestAuthError::BadSignature)
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Base64url (no padding) for binary fields.
pub mod b64 {
    use super::*;

    /// Serializes bytes as base64url.
    pub fn serialize<S: serde::Serializer>(bytes: &Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses base64url (padding tolerated).
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        decode_field(&String::deserialize(d)?)
    }

    /// Encodes bytes as base64url.
    pub fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes base64url (padding tolerated).
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
    }
}

/// One base64url field, or a serde error naming the problem.
fn decode_field<E: serde::de::Error>(s: &str) -> Result<Vec<u8>, E> {
    b64::decode(s).ok_or_else(|| E::custom("not base64url"))
}

/// Base64url for a list of binary fields.
pub mod b64_list {
    use super::*;

    /// Serializes a list of byte strings.
    pub fn serialize<S: serde::Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| URL_SAFE_NO_PAD.encode(b)))
    }

    /// Parses a list of base64url strings.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| decode_field(s)).collect()
    }
}

/// `POST /users` (vendor): a new user and its passphrase-sealed keys
/// ([`crate::keys::PassphraseSealedKey::to_bytes`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateUser {
    /// The user's id in the vendor's application.
    pub user: String,
    /// The sealed keys.
    #[serde(with = "b64")]
    pub sealed_keys: Vec<u8>,
    /// The user's signature of its public keys ([`crate::trust::SignedUserKeys`], 64 bytes).
    #[serde(with = "b64")]
    pub key_signature: Vec<u8>,
}

/// `GET /users/{user}/sealed-keys` (vendor): the sealed keys, for the user's new device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedKeys {
    /// [`crate::keys::PassphraseSealedKey::to_bytes`].
    #[serde(with = "b64")]
    pub sealed_keys: Vec<u8>,
}

/// `GET /users/{user}` (device): a user's public keys and the user's signature of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserKeysView {
    /// Transform-encryption public key (48 bytes).
    #[serde(with = "b64")]
    pub encryption_key: Vec<u8>,
    /// Ed25519 public key (32 bytes).
    #[serde(with = "b64")]
    pub signing_key: Vec<u8>,
    /// The user's signature ([`crate::trust::SignedUserKeys`], 64 bytes); empty for a user
    /// stored before users' keys were signed (broker migration 0008): devices refuse it.
    #[serde(default, with = "b64")]
    pub key_signature: Vec<u8>,
}

/// A device certificate on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateView {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// Device's transform-encryption public key.
    #[serde(with = "b64")]
    pub encryption_key: Vec<u8>,
    /// Device's Ed25519 public key.
    #[serde(with = "b64")]
    pub signing_key: Vec<u8>,
    /// The user's signature.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

/// `POST /users/{user}/devices` (vendor): authorize a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizeDevice {
    /// The certificate (its `user` must be the path's).
    pub certificate: CertificateView,
    /// Transform key user → device ([`crate::pre::TransformKey::to_bytes`]).
    #[serde(with = "b64")]
    pub transform_key: Vec<u8>,
}

/// `POST /groups` (device): create a group administered by the caller's user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroup {
    /// The group's id.
    pub group: String,
    /// Its public key.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    /// Its private key sealed to the creator ([`crate::keys::KeySealedToPublicKey::to_bytes`]).
    #[serde(with = "b64")]
    pub sealed_for_creator: Vec<u8>,
    /// Transform key group → creator, to make the creator a member too.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub creator_membership: Option<Vec<u8>>,
    /// The calling device's signature of the group's key ([`crate::trust::SignedGroupKey`]).
    #[serde(with = "b64")]
    pub key_signature: Vec<u8>,
}

/// Base64url for an optional binary field.
pub mod opt_b64 {
    use super::*;

    /// Serializes `Some` as base64url.
    pub fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&URL_SAFE_NO_PAD.encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Parses an optional base64url string.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| decode_field(&s)).transpose()
    }
}

/// `GET /groups/{group}` (device): a group's public key, members and admins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    /// The group's id.
    pub group: String,
    /// Its public key.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    /// Member user ids, sorted.
    pub members: Vec<String>,
    /// Admin user ids, sorted.
    pub admins: Vec<String>,
    /// The certificate of the device that created the group (revoked or not). Absent for a
    /// group stored before groups' keys were signed (broker migration 0008): devices refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<CertificateView>,
    /// That device's signature of the group's key ([`crate::trust::SignedGroupKey`]); empty
    /// when `creator` is absent.
    #[serde(default, with = "b64")]
    pub key_signature: Vec<u8>,
}

impl GroupView {
    /// The group's signed key and its creator's certificate, for
    /// [`SignedGroupKey::verify`].
    pub fn signed_key(&self) -> Result<(SignedGroupKey, DeviceCertificate), MalformedField> {
        let public_key =
            PublicKey::from_bytes(&self.public_key).map_err(|_| MalformedField("public_key"))?;
        let creator: DeviceCertificate =
            self.creator.as_ref().ok_or(MalformedField("creator"))?.try_into()?;
        let signature = signature(&self.key_signature, "key_signature")?;
        let signed = SignedGroupKey::from_parts(
            self.group.clone(),
            public_key,
            creator.user.clone(),
            creator.device.clone(),
            signature,
        );
        Ok((signed, creator))
    }
}

/// `PUT /groups/{group}/members/{user}` (admin's device).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddMember {
    /// Transform key group → user.
    #[serde(with = "b64")]
    pub transform_key: Vec<u8>,
}

/// `PUT /groups/{group}/admins/{user}` (admin's device).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddAdmin {
    /// The group's private key sealed to the new admin.
    #[serde(with = "b64")]
    pub sealed_group_key: Vec<u8>,
}

/// `GET /groups/{group}/key` (admin's device): the group's private key sealed to the admin, its
/// value transformed to the calling device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupKey {
    /// [`crate::keys::KeySealedToPublicKey::to_bytes`].
    #[serde(with = "b64")]
    pub sealed_group_key: Vec<u8>,
}

/// `POST /documents` (device): a document and its first grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateDocument {
    /// [`crate::document::EncryptedDocument::to_bytes`].
    #[serde(with = "b64")]
    pub document: Vec<u8>,
    /// [`crate::document::Grant::to_bytes`], one per recipient.
    #[serde(with = "b64_list")]
    pub grants: Vec<Vec<u8>>,
}

/// `POST /documents/{document}/grants` (device with access).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddGrant {
    /// [`crate::document::Grant::to_bytes`].
    #[serde(with = "b64")]
    pub grant: Vec<u8>,
}

/// `POST /documents/{document}/decrypt` (device): the document key transformed to the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecryptResponse {
    /// The document as stored.
    #[serde(with = "b64")]
    pub document: Vec<u8>,
    /// The author device's certificate.
    pub author: CertificateView,
    /// The author user's public keys.
    pub author_user: UserKeysView,
    /// The author device was revoked after writing the document (it still verifies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub author_revoked: bool,
    /// The grant's value transformed to the calling device ([`crate::pre::EncryptedValue`]).
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    /// The group the access came through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_group: Option<String>,
}

/// The error body of every E2E endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable numeric code ([`crate::AccessError::code`], [`RequestAuthError::code`]).
    pub code: u16,
    /// What went wrong.
    pub message: String,
}

/// A wire field that does not parse into its key or format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed field `{0}`")]
pub struct MalformedField(pub &'static str);

impl From<&SignedUserKeys> for UserKeysView {
    fn from(k: &SignedUserKeys) -> Self {
        Self {
            encryption_key: k.keys.encryption.to_bytes().to_vec(),
            signing_key: k.keys.signing.as_bytes().to_vec(),
            key_signature: k.signature().to_vec(),
        }
    }
}

impl UserKeysView {
    /// The keys as user `user`'s, for [`SignedUserKeys::verify`].
    pub fn signed(&self, user: &str) -> Result<SignedUserKeys, MalformedField> {
        let keys = UserPublicKeys {
            encryption: PublicKey::from_bytes(&self.encryption_key)
                .map_err(|_| MalformedField("encryption_key"))?,
            signing: verifying_key(&self.signing_key).ok_or(MalformedField("signing_key"))?,
        };
        Ok(SignedUserKeys::from_parts(
            user.to_owned(),
            keys,
            signature(&self.key_signature, "key_signature")?,
        ))
    }
}

fn signature(bytes: &[u8], field: &'static str) -> Result<[u8; 64], MalformedField> {
    bytes.try_into().map_err(|_| MalformedField(field))
}

impl From<&DeviceCertificate> for CertificateView {
    fn from(c: &DeviceCertificate) -> Self {
        Self {
            user: c.user.clone(),
            device: c.device.clone(),
            encryption_key: c.keys.encryption.to_bytes().to_vec(),
            signing_key: c.keys.signing.as_bytes().to_vec(),
            signature: c.signature().to_vec(),
        }
    }
}

impl TryFrom<&CertificateView> for DeviceCertificate {
    type Error = MalformedField;
    fn try_from(v: &CertificateView) -> Result<Self, MalformedField> {
        let keys = DevicePublicKeys {
            encryption: PublicKey::from_bytes(&v.encryption_key)
                .map_err(|_| MalformedField("encryption_key"))?,
            signing: verifying_key(&v.signing_key).ok_or(MalformedField("signing_key"))?,
        };
        let signature = signature(&v.signature, "signature")?;
        Ok(DeviceCertificate::from_parts(v.user.clone(), v.device.clone(), keys, signature))
    }
}

impl From<&DecryptGrant> for DecryptResponse {
    fn from(g: &DecryptGrant) -> Self {
        Self {
            document: g.document.to_bytes(),
            author: (&g.author).into(),
            author_user: (&g.author_user).into(),
            value: g.value.to_bytes(),
            author_revoked: g.author_revoked,
            via_group: g.via_group.clone(),
        }
    }
}

impl TryFrom<&DecryptResponse> for DecryptGrant {
    type Error = MalformedField;
    fn try_from(r: &DecryptResponse) -> Result<Self, MalformedField> {
        Ok(Self {
            document: EncryptedDocument::from_bytes(&r.document)
                .map_err(|_| MalformedField("document"))?,
            author: (&r.author).try_into()?,
            author_user: r.author_user.signed(&r.author.user)?,
            value: EncryptedValue::from_bytes(&r.value).map_err(|_| MalformedField("value"))?,
            author_revoked: r.author_revoked,
            via_group: r.via_group.clone(),
        })
    }
}

fn verifying_key(bytes: &[u8]) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(bytes.try_into().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    #[test]
    fn signed_requests_verify_only_unchanged_and_fresh() {
        let keys = DeviceKeys::generate(&mut ChaCha20Rng::seed_from_u64(4));
        let vk = keys.public().signing;
        let h = sign_request(&keys, "t", "alice", "laptop", "POST", "/x?a=1", 1_000, b"{}");
        assert_eq!(verify_request(&vk, "t", &h, "POST", "/x?a=1", b"{}", 1_010), Ok(()));
        assert_eq!(
            verify_request(&vk, "t", &h, "POST", "/x?a=1", b"{}", 1_000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(RequestAuthError::Stale)
        );
        for (tenant, method, path, body) in [
            ("u", "POST", "/x?a=1", &b"{}"[..]),
            ("t", "PUT", "/x?a=1", b"{}"),
            ("t", "POST", "/x?a=2", b"{}"),
            ("t", "POST", "/x?a=1", b"{ }"),
        ] {
            assert_eq!(
                verify_request(&vk, tenant, &h, method, path, body, 1_000),
                Err(RequestAuthError::BadSignature)
            );
        }
        let mut other_device = h.clone();
        other_device.device = "phone".into();
        assert_eq!(
            verify_request(&vk, "t", &other_device, "POST", "/x?a=1", b"{}", 1_000),
            Err(RequestAuthError::BadSignature)
        );
        // Timestamps at the ends of i64 are stale, not an overflow.
        for timestamp in [i64::MIN, i64::MAX] {
            let mut extreme = h.clone();
            extreme.timestamp = timestamp;
            for now in [1_000, i64::MIN, i64::MAX] {
                let expected = if now == timestamp {
                    Err(RequestAuthError::BadSignature)
                } else {
                    Err(RequestAuthError::Stale)
                };
                assert_eq!(
                    verify_request(&vk, "t", &extreme, "POST", "/x?a=1", b"{}", now),
                    expected
                );
            }
        }
        let mut garbage = h;
        garbage.signature = "!!".into();
        assert_eq!(
            verify_request(&vk, "t", &garbage, "POST", "/x?a=1", b"{}", 1_000),
            Err(RequestAuthError::Missing)
        );
    }

    #[test]
    fn signing_inputs_are_unambiguous() {
        let a = request_signing_input("t", "a\n", "b", "GET", "/", 1, b"");
        let b = request_signing_input("t", "a", "\nb", "GET", "/", 1, b"");
        assert_ne!(a, b);
    }
}
