//! The OpenAPI schemas of the E2E routes. The bodies themselves are the types of
//! [`keyhold_e2e::wire`] (shared with the SDK); these mirror their JSON for the document (a
//! test checks that every field matches). Binary fields are base64url without padding.
#![allow(dead_code)] // described, never built

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

/// `POST /users` (vendor): a new user, its passphrase-sealed keys and its signature of its
/// public keys.
#[derive(ToSchema)]
pub struct E2eCreateUser {
    /// The user's id in the vendor's application (1 to 256 bytes, no control characters).
    user: String,
    /// `PassphraseSealedKey::to_bytes`, base64url.
    sealed_keys: String,
    /// The user's Ed25519 signature of its public keys, its id and the tenant
    /// (`SignedUserKeys::issue`, 64 bytes), base64url; checked with the sealed keys' signing
    /// key (400, code 1115 if it does not verify).
    key_signature: String,
}

/// A user's passphrase-sealed keys.
#[derive(ToSchema)]
pub struct E2eSealedKeys {
    /// `PassphraseSealedKey::to_bytes`, base64url.
    sealed_keys: String,
}

/// A user's public keys and the user's signature of them.
#[derive(ToSchema)]
pub struct E2eUserKeys {
    /// Transform-encryption public key (48 bytes), base64url.
    encryption_key: String,
    /// Ed25519 public key (32 bytes), base64url.
    signing_key: String,
    /// The user's signature of these keys, its id and the tenant (`SignedUserKeys`, 64 bytes),
    /// base64url; devices check it. Empty for a user registered before keys were signed
    /// (devices refuse its keys).
    key_signature: String,
}

/// A device certificate: the device's public keys, signed by its user's signing key.
#[derive(ToSchema)]
pub struct E2eCertificate {
    /// The user.
    user: String,
    /// The device (1 to 256 bytes, no control characters).
    device: String,
    /// The device's transform-encryption public key (48 bytes), base64url.
    encryption_key: String,
    /// The device's Ed25519 public key (32 bytes), base64url.
    signing_key: String,
    /// The user's Ed25519 signature (64 bytes), base64url.
    signature: String,
}

/// `POST /users/{user}/devices` (vendor): authorizes a device.
#[derive(ToSchema)]
pub struct E2eAuthorizeDevice {
    /// The certificate; its `user` is the path's.
    certificate: E2eCertificate,
    /// Transform key user → device (`TransformKey::to_bytes`), base64url.
    transform_key: String,
}

/// `POST /groups` (device): a group administered by the caller's user.
#[derive(ToSchema)]
pub struct E2eCreateGroup {
    /// The group's id (1 to 256 bytes, no control characters).
    group: String,
    /// Its public key (48 bytes), base64url.
    public_key: String,
    /// Its private key sealed to the creator (`KeySealedToPublicKey::to_bytes`), base64url.
    sealed_for_creator: String,
    /// Transform key group → creator, to make the creator a member too; base64url.
    creator_membership: Option<String>,
    /// The calling device's Ed25519 signature of the group's key, its id, the tenant and the
    /// device (`SignedGroupKey::issue`, 64 bytes), base64url; checked with the calling device's
    /// certificate (400, code 1115 if it does not verify).
    key_signature: String,
}

/// A group.
#[derive(ToSchema)]
pub struct E2eGroup {
    /// The group's id.
    group: String,
    /// Its public key (48 bytes), base64url.
    public_key: String,
    /// Member user ids, sorted.
    members: Vec<String>,
    /// Admin user ids, sorted.
    admins: Vec<String>,
    /// The certificate of the device that created the group (revoked or not), to check
    /// `key_signature` with. Absent for a group created before groups' keys were signed
    /// (devices refuse its key).
    creator: Option<E2eCertificate>,
    /// That device's signature of the group's key (`SignedGroupKey`, 64 bytes), base64url;
    /// empty when `creator` is absent.
    key_signature: String,
}

/// `PUT /groups/{group}/members/{user}` (an admin's device).
#[derive(ToSchema)]
pub struct E2eAddMember {
    /// Transform key group → user, base64url.
    transform_key: String,
}

/// `PUT /groups/{group}/admins/{user}` (an admin's device).
#[derive(ToSchema)]
pub struct E2eAddAdmin {
    /// The group's private key sealed to the new admin, base64url.
    sealed_group_key: String,
}

/// The group's private key sealed to the calling admin, its value transformed to the calling
/// device.
#[derive(ToSchema)]
pub struct E2eGroupKey {
    /// `KeySealedToPublicKey::to_bytes`, base64url.
    sealed_group_key: String,
}

/// `POST /documents` (device): a document and its first grants.
#[derive(ToSchema)]
pub struct E2eCreateDocument {
    /// `EncryptedDocument::to_bytes` (at most 64 MiB), base64url.
    document: String,
    /// `Grant::to_bytes`, one per recipient, base64url.
    grants: Vec<String>,
}

/// A stored document.
#[derive(Debug, Serialize, ToSchema)]
pub struct E2eDocumentCreated {
    /// Its id (from the document's bytes).
    pub document: String,
}

/// `POST /documents/{document}/grants` (a device whose user has access).
#[derive(ToSchema)]
pub struct E2eAddGrant {
    /// `Grant::to_bytes`, base64url.
    grant: String,
}

/// The document key on its way to the calling device.
#[derive(ToSchema)]
pub struct E2eDecryptResponse {
    /// The document as stored, base64url.
    document: String,
    /// The author device's certificate.
    author: E2eCertificate,
    /// The author user's public keys and signature (the certificate verifies with its signing
    /// key).
    author_user: E2eUserKeys,
    /// Present and true when the author device was revoked after writing the document (it
    /// still verifies).
    author_revoked: Option<bool>,
    /// The grant's value transformed to the calling device (`EncryptedValue`), base64url.
    value: String,
    /// The group the access came through, if any.
    via_group: Option<String>,
}

/// The error body of every E2E route.
#[derive(ToSchema)]
pub struct E2eErrorBody {
    /// Stable numeric code (docs/e2e-api.md §5).
    code: u16,
    /// What went wrong.
    message: String,
}

/// The headers of a request signed by a device (docs/e2e-api.md §2).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct SignedRequestHeaders {
    /// The calling device's user id.
    #[param(rename = "keyhold-e2e-user")]
    user: String,
    /// The calling device's id.
    #[param(rename = "keyhold-e2e-device")]
    device: String,
    /// When the request was signed, Unix seconds (within 300 s of the broker's clock).
    #[param(rename = "keyhold-e2e-timestamp")]
    timestamp: i64,
    /// The device's Ed25519 signature over the request's signing input, base64url.
    #[param(rename = "keyhold-e2e-signature")]
    signature: String,
}
