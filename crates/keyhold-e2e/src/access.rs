//! The server's side: who may do what, and the transforms that move a document key from a
//! group or user to one device. Sans-I/O: [`AccessState`] keeps everything in memory and returns
//! [`E2eEvent`]s; a service persists it and authenticates callers (each request signed by an
//! authorized device) before it calls in.
//!
//! What the server holds, and why it cannot read:
//! - users' public keys and their private keys sealed under their passphrases;
//! - devices' certificates (signed by their user) and transform keys user → device;
//! - groups' public keys, their private key sealed to each admin, and transform keys
//!   group → member;
//! - documents (AES-GCM ciphertext, signed) and grants (the document key encrypted to a group's
//!   or user's public key).
//!
//! None of it is a private key or a document key: a transform key only moves a value from one
//! public key to another (docs/e2e-crypto.md).

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;

use crate::document::{DocumentError, EncryptedDocument, Grant, MAX_ID_LEN, Recipient};
use zeroize::Zeroizing;

use crate::keys::{
    DeviceKeys, DevicePublicKeys, KeySealedToPublicKey, PassphraseSealedKey, UserKeys,
    UserPublicKeys,
};
use crate::pre::{self, EncryptedValue, PublicKey, TransformKey};
use crate::trust::{SignedGroupKey, SignedUserKeys};

const CERTIFICATE_DOMAIN: &[u8] = b"keyhold-e2e-v1 device certificate";

/// Why the server refused a request. Each has a stable numeric code (docs/e2e-api.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No such user.
    #[error("unknown user")]
    UnknownUser,
    /// No such device for this user, or it was revoked.
    #[error("unknown or revoked device")]
    UnknownDevice,
    /// No such group.
    #[error("unknown group")]
    UnknownGroup,
    /// No such document.
    #[error("unknown document")]
    UnknownDocument,
    /// The id is taken.
    #[error("already exists")]
    Exists,
    /// Only an admin of the group may do this.
    #[error("not an admin of the group")]
    NotAdmin,
    /// The caller may not do this (another user's device, someone else's document).
    #[error("not allowed")]
    Forbidden,
    /// The caller's user has no grant, direct or through a group, for the document.
    #[error("no access to the document")]
    NoAccess,
    /// A transform key, sealed key or certificate names other keys than the records it is for.
    #[error("key mismatch: {0}")]
    KeyMismatch(&'static str),
    /// A device certificate that the user's signing key does not verify.
    #[error("device certificate does not verify")]
    Certificate,
    /// A group keeps at least one admin.
    #[error("a group keeps at least one admin")]
    LastAdmin,
    /// An id empty or too long.
    #[error("ids are 1..=256 bytes")]
    Id,
    /// The document or grant was refused (signature, format).
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// A public key is not signed by its owner: a user's keys by the user, a group's key by
    /// the device that created it (docs/e2e-crypto.md §4.2).
    #[error("a public key is not signed by its owner")]
    KeyStatement,
    /// A user's or group's key differs from the one this device pinned: the service handed
    /// out another key for the same id (checked on the device only).
    #[error("a key differs from the one pinned on this device")]
    KeyChanged,
}

impl AccessError {
    /// The stable numeric code of the E2E API.
    pub fn code(&self) -> u16 {
        match self {
            Self::UnknownUser => 1101,
            Self::UnknownDevice => 1102,
            Self::UnknownGroup => 1103,
            Self::UnknownDocument => 1104,
            Self::Exists => 1105,
            Self::NotAdmin => 1106,
            Self::Forbidden => 1107,
            Self::NoAccess => 1108,
            Self::KeyMismatch(_) => 1109,
            Self::Certificate => 1110,
            Self::LastAdmin => 1111,
            Self::Id => 1112,
            Self::Document(DocumentError::Signature) => 1113,
            Self::Document(DocumentError::KeyCommitment) => 1117,
            Self::Document(_) => 1114,
            Self::KeyStatement => 1115,
            Self::KeyChanged => 1116,
        }
    }
}

/// A user's statement that a device is theirs: the device's public keys, signed by the user's
/// signing key. Readers check a document's author against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// The user.
    pub user: String,
    /// The device's id, unique for the user.
    pub device: String,
    /// The device's public keys.
    pub keys: DevicePublicKeys,
    signature: [u8; 64],
}

impl DeviceCertificate {
    /// The user `user_keys` certifies `keys` as its device `device`.
    pub fn issue(user_keys: &UserKeys, user: &str, device: &str, keys: DevicePublicKeys) -> Self {
        let mut cert =
            Self { user: user.to_owned(), device: device.to_owned(), keys, signature: [0; 64] };
        cert.signature = user_keys.sign(&cert.signed_bytes());
        cert
    }

    /// A certificate from its parts (as stored).
    pub fn from_parts(
        user: String,
        device: String,
        keys: DevicePublicKeys,
        signature: [u8; 64],
    ) -> Self {
        Self { user, device, keys, signature }
    }

    /// The user's signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = CERTIFICATE_DOMAIN.to_vec();
        for s in [&self.user, &self.device] {
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.keys.encryption.to_bytes());
        out.extend_from_slice(self.keys.signing.as_bytes());
        out
    }

    /// Checks the signature with the user's signing key.
    pub fn verify(&self, user_signing: &VerifyingKey) -> Result<(), AccessError> {
        user_signing
            .verify_strict(&self.signed_bytes(), &Signature::from_bytes(&self.signature))
            .map_err(|_| AccessError::Certificate)
    }
}

/// The device making a request, already authenticated by the service.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// Its user.
    pub user: &'a str,
    /// The device.
    pub device: &'a str,
}

/// What an [`E2eEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum E2eAction {
    /// A user was created (by the vendor's backend).
    #[serde(rename = "e2e.user.create")]
    UserCreate,
    /// A device was authorized by its user.
    #[serde(rename = "e2e.device.authorize")]
    DeviceAuthorize,
    /// A device was revoked.
    #[serde(rename = "e2e.device.revoke")]
    DeviceRevoke,
    /// A group was created.
    #[serde(rename = "e2e.group.create")]
    GroupCreate,
    /// A member was added (a transform key group → user uploaded).
    #[serde(rename = "e2e.group.member_add")]
    MemberAdd,
    /// A member was removed (its transform key deleted).
    #[serde(rename = "e2e.group.member_remove")]
    MemberRemove,
    /// An admin was added (the group key sealed to them).
    #[serde(rename = "e2e.group.admin_add")]
    AdminAdd,
    /// An admin was removed.
    #[serde(rename = "e2e.group.admin_remove")]
    AdminRemove,
    /// An admin fetched the group's private key (sealed, transformed to the admin's device).
    #[serde(rename = "e2e.group.key_access")]
    GroupKeyAccess,
    /// A document was stored with its first grants.
    #[serde(rename = "e2e.document.create")]
    DocumentCreate,
    /// A document was granted to a further group or user.
    #[serde(rename = "e2e.document.grant")]
    DocumentGrant,
    /// A grant was deleted.
    #[serde(rename = "e2e.document.revoke")]
    DocumentRevoke,
    /// A document key was transformed to a device (a decrypt).
    #[serde(rename = "e2e.document.decrypt")]
    DocumentDecrypt,
    /// A decrypt was refused.
    #[serde(rename = "e2e.document.decrypt_denied")]
    DocumentDecryptDenied,
}

/// An audit event of the E2E service: who (user and device, or the vendor's backend when
/// `actor_user` is `None`) did what to which user, device, group or document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct E2eEvent {
    /// What happened.
    pub action: E2eAction,
    /// The acting user (`None`: the vendor's backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_user: Option<String>,
    /// The acting device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_device: Option<String>,
    /// The user acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The device acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The group acted on, or through which a decrypt went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

impl E2eEvent {
    fn new(action: E2eAction, actor: Option<Actor<'_>>) -> Self {
        Self {
            action,
            actor_user: actor.map(|a| a.user.to_owned()),
            actor_device: actor.map(|a| a.device.to_owned()),
            user: None,
            device: None,
            group: None,
            document: None,
        }
    }
    fn user(mut self, u: &str) -> Self {
        self.user = Some(u.to_owned());
        self
    }
    fn device(mut self, d: &str) -> Self {
        self.device = Some(d.to_owned());
        self
    }
    fn group(mut self, g: &str) -> Self {
        self.group = Some(g.to_owned());
        self
    }
    fn document(mut self, d: &str) -> Self {
        self.document = Some(d.to_owned());
        self
    }
}

#[derive(Debug, Clone)]
struct Device {
    certificate: DeviceCertificate,
    /// user → device; deleted (`None`) when the device is revoked. The certificate stays, so
    /// that documents the device wrote before keep a verifiable author.
    transform: Option<TransformKey>,
}

/// An authorized (not revoked) device.
struct ActiveDevice<'a> {
    certificate: &'a DeviceCertificate,
    transform: &'a TransformKey,
}

#[derive(Debug, Clone)]
struct User {
    public: UserPublicKeys,
    /// The user's signature of its public keys ([`SignedUserKeys`]).
    key_signature: [u8; 64],
    sealed: PassphraseSealedKey,
    devices: BTreeMap<String, Device>,
}

#[derive(Debug, Clone)]
struct Group {
    /// Its public key, signed by the creating device.
    signed: SignedGroupKey,
    public_key: PublicKey,
    /// The group's private key sealed to each admin's public key.
    admins: BTreeMap<String, KeySealedToPublicKey>,
    /// group → member.
    members: BTreeMap<String, TransformKey>,
}

#[derive(Debug, Clone)]
struct StoredDocument {
    document: EncryptedDocument,
    author_user: String,
    author_device: String,
    grants: BTreeMap<Recipient, Grant>,
}

/// A document key on its way to one device: the document and the grant's value transformed
/// (group → user → device, or user → device) so that only that device can open it.
#[derive(Debug, Clone)]
pub struct DecryptGrant {
    /// The document, as stored.
    pub document: EncryptedDocument,
    /// The author device's certificate, to check who wrote it.
    pub author: DeviceCertificate,
    /// The author's user's public keys, signed by the user (the certificate verifies with
    /// their signing key; a device also compares that key with its pin).
    pub author_user: SignedUserKeys,
    /// The author device has been revoked since (the document, written before, still verifies;
    /// an application may want to say so).
    pub author_revoked: bool,
    /// The document key, transformed to the requesting device.
    pub value: EncryptedValue,
    /// The group the access came through, if any.
    pub via_group: Option<String>,
}

impl DecryptGrant {
    /// The reader's side: checks that the author's device certificate verifies with the author
    /// user's signing key and that the document is signed by that device, then decrypts with
    /// the device's key. Returns the plaintext and the author's user id.
    pub fn open(&self, device: &DeviceKeys) -> Result<(Zeroizing<Vec<u8>>, &str), AccessError> {
        if self.author_user.user != self.author.user {
            return Err(AccessError::Certificate);
        }
        self.author.verify(&self.author_user.keys.signing)?;
        if self.document.author() != &self.author.keys.signing {
            return Err(AccessError::Document(DocumentError::Signature));
        }
        let plaintext = self.document.open(&self.value, device.encryption_key())?;
        Ok((plaintext, &self.author.user))
    }
}

/// Every byte the server stores, as an attacker who copied the database would have it.
#[derive(Debug, Clone, Default)]
pub struct ServerMaterial {
    /// Sealed user keys.
    pub sealed_user_keys: Vec<PassphraseSealedKey>,
    /// Device certificates.
    pub certificates: Vec<DeviceCertificate>,
    /// Every transform key (user → device, group → member).
    pub transform_keys: Vec<TransformKey>,
    /// Group private keys sealed to admins.
    pub sealed_group_keys: Vec<KeySealedToPublicKey>,
    /// Documents.
    pub documents: Vec<EncryptedDocument>,
    /// Grants.
    pub grants: Vec<Grant>,
}

/// One organization's E2E state: users, devices, groups, documents and grants.
#[derive(Debug, Clone)]
pub struct AccessState {
    /// The organization, bound into the key statements.
    tenant: String,
    users: BTreeMap<String, User>,
    groups: BTreeMap<String, Group>,
    documents: BTreeMap<String, StoredDocument>,
    events: Vec<E2eEvent>,
}

fn check_id(id: &str) -> Result<(), AccessError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        Err(AccessError::Id)
    } else {
        Ok(())
    }
}

impl AccessState {
    /// An empty state for organization `tenant`.
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            documents: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// The organization.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The events recorded since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<E2eEvent> {
        std::mem::take(&mut self.events)
    }

    /// The actor's device, if it is authorized and not revoked.
    fn device(&self, actor: Actor<'_>) -> Result<ActiveDevice<'_>, AccessError> {
        let d = self
            .users
            .get(actor.user)
            .ok_or(AccessError::UnknownDevice)?
            .devices
            .get(actor.device)
            .ok_or(AccessError::UnknownDevice)?;
        let transform = d.transform.as_ref().ok_or(AccessError::UnknownDevice)?;
        Ok(ActiveDevice { certificate: &d.certificate, transform })
    }

    /// The vendor's backend creates a user with its public keys, its passphrase-sealed keys and
    /// the user's signature of its public keys ([`SignedUserKeys::issue`]).
    pub fn create_user(
        &mut self,
        user: &str,
        sealed: PassphraseSealedKey,
        key_signature: [u8; 64],
    ) -> Result<(), AccessError> {
        check_id(user)?;
        if self.users.contains_key(user) {
            return Err(AccessError::Exists);
        }
        let public = *sealed.public();
        SignedUserKeys::from_parts(user.to_owned(), public, key_signature).verify(&self.tenant)?;
        self.users.insert(
            user.to_owned(),
            User { public, key_signature, sealed, devices: BTreeMap::new() },
        );
        self.events.push(E2eEvent::new(E2eAction::UserCreate, None).user(user));
        Ok(())
    }

    /// A user's public keys.
    pub fn user_public_keys(&self, user: &str) -> Result<UserPublicKeys, AccessError> {
        self.users.get(user).map(|u| u.public).ok_or(AccessError::UnknownUser)
    }

    /// A user's public keys with the user's signature, for a device to check.
    pub fn signed_user_keys(&self, user: &str) -> Result<SignedUserKeys, AccessError> {
        let u = self.users.get(user).ok_or(AccessError::UnknownUser)?;
        Ok(SignedUserKeys::from_parts(user.to_owned(), u.public, u.key_signature))
    }

    /// A user's passphrase-sealed keys (for the user's new device to open with the passphrase).
    pub fn sealed_user_keys(&self, user: &str) -> Result<&PassphraseSealedKey, AccessError> {
        self.users.get(user).map(|u| &u.sealed).ok_or(AccessError::UnknownUser)
    }

    /// Authorizes a device: its certificate (signed by the user) and the transform key
    /// user → device (which only the holder of the user's private key can make).
    pub fn authorize_device(
        &mut self,
        certificate: DeviceCertificate,
        transform: TransformKey,
    ) -> Result<(), AccessError> {
        check_id(&certificate.device)?;
        let user = self.users.get_mut(&certificate.user).ok_or(AccessError::UnknownUser)?;
        certificate.verify(&user.public.signing)?;
        if transform.from_key() != &user.public.encryption {
            return Err(AccessError::KeyMismatch("transform key is not from the user's key"));
        }
        if transform.to_key() != &certificate.keys.encryption {
            return Err(AccessError::KeyMismatch("transform key is not to the device's key"));
        }
        if user.devices.contains_key(&certificate.device) {
            return Err(AccessError::Exists);
        }
        let event = E2eEvent::new(E2eAction::DeviceAuthorize, None)
            .user(&certificate.user)
            .device(&certificate.device);
        user.devices
            .insert(certificate.device.clone(), Device { certificate, transform: Some(transform) });
        self.events.push(event);
        Ok(())
    }

    /// Revokes one of the actor's user's devices (the actor's own included): its transform key
    /// is deleted, so nothing reaches it any more; the user's other devices keep working.
    pub fn revoke_device(&mut self, actor: Actor<'_>, device: &str) -> Result<(), AccessError> {
        self.device(actor)?;
        let user = self.users.get_mut(actor.user).ok_or(AccessError::UnknownUser)?;
        let d = user.devices.get_mut(device).ok_or(AccessError::UnknownDevice)?;
        // Only the transform key goes: the certificate stays so that what the device wrote keeps
        // a verifiable author, and its id is not reused.
        d.transform.take().ok_or(AccessError::UnknownDevice)?;
        self.events.push(
            E2eEvent::new(E2eAction::DeviceRevoke, Some(actor)).user(actor.user).device(device),
        );
        Ok(())
    }

    /// A device's certificate (revoked devices' too).
    pub fn device_certificate(
        &self,
        user: &str,
        device: &str,
    ) -> Result<&DeviceCertificate, AccessError> {
        self.users
            .get(user)
            .and_then(|u| u.devices.get(device))
            .map(|d| &d.certificate)
            .ok_or(AccessError::UnknownDevice)
    }

    /// Whether a device was revoked (`Err` if it never existed).
    pub fn device_revoked(&self, user: &str, device: &str) -> Result<bool, AccessError> {
        self.users
            .get(user)
            .and_then(|u| u.devices.get(device))
            .map(|d| d.transform.is_none())
            .ok_or(AccessError::UnknownDevice)
    }

    /// Creates a group whose first admin is the actor's user: `sealed_for_creator` is the
    /// group's private key sealed to that user; `creator_membership`, if given, makes the
    /// creator a member too (a transform key group → creator). `key_signature` is the calling
    /// device's signature of the group's key ([`SignedGroupKey::issue`]).
    pub fn create_group(
        &mut self,
        actor: Actor<'_>,
        group: &str,
        public_key: PublicKey,
        sealed_for_creator: KeySealedToPublicKey,
        creator_membership: Option<TransformKey>,
        key_signature: [u8; 64],
    ) -> Result<(), AccessError> {
        check_id(group)?;
        let device_signing = self.device(actor)?.certificate.keys.signing;
        if self.groups.contains_key(group) {
            return Err(AccessError::Exists);
        }
        let signed = SignedGroupKey::from_parts(
            group.to_owned(),
            public_key,
            actor.user.to_owned(),
            actor.device.to_owned(),
            key_signature,
        );
        signed.verify_with(&self.tenant, &device_signing)?;
        if sealed_for_creator.public_key() != &public_key {
            return Err(AccessError::KeyMismatch("sealed key is not the group's"));
        }
        let creator = self.user_public_keys(actor.user)?;
        let mut members = BTreeMap::new();
        if let Some(tk) = creator_membership {
            check_member_transform(&public_key, &creator.encryption, &tk)?;
            members.insert(actor.user.to_owned(), tk);
        }
        let admins = BTreeMap::from([(actor.user.to_owned(), sealed_for_creator)]);
        let is_member = !members.is_empty();
        self.groups.insert(group.to_owned(), Group { signed, public_key, admins, members });
        self.events.push(E2eEvent::new(E2eAction::GroupCreate, Some(actor)).group(group));
        if is_member {
            self.events.push(
                E2eEvent::new(E2eAction::MemberAdd, Some(actor)).group(group).user(actor.user),
            );
        }
        Ok(())
    }

    /// A group's public key (to encrypt to it).
    pub fn group_public_key(&self, group: &str) -> Result<PublicKey, AccessError> {
        self.groups.get(group).map(|g| g.public_key).ok_or(AccessError::UnknownGroup)
    }

    /// A group's public key signed by its creating device, for a device to check (with the
    /// creator's certificate, [`AccessState::device_certificate`]).
    pub fn signed_group_key(&self, group: &str) -> Result<&SignedGroupKey, AccessError> {
        self.groups.get(group).map(|g| &g.signed).ok_or(AccessError::UnknownGroup)
    }

    /// The group's members, in order.
    pub fn group_members(&self, group: &str) -> Result<Vec<&str>, AccessError> {
        let g = self.groups.get(group).ok_or(AccessError::UnknownGroup)?;
        Ok(g.members.keys().map(String::as_str).collect())
    }

    fn admin_group(&mut self, actor: Actor<'_>, group: &str) -> Result<&mut Group, AccessError> {
        self.device(actor)?;
        let g = self.groups.get_mut(group).ok_or(AccessError::UnknownGroup)?;
        if !g.admins.contains_key(actor.user) {
            return Err(AccessError::NotAdmin);
        }
        Ok(g)
    }

    /// An admin adds a member: `transform` (group → user) is made with the group's private key,
    /// which the admin opened on their device. Documents already encrypted to the group become
    /// readable by the member at once; none is re-encrypted.
    pub fn add_member(
        &mut self,
        actor: Actor<'_>,
        group: &str,
        user: &str,
        transform: TransformKey,
    ) -> Result<(), AccessError> {
        let member = self.user_public_keys(user)?;
        let g = self.admin_group(actor, group)?;
        check_member_transform(&g.public_key, &member.encryption, &transform)?;
        if g.members.contains_key(user) {
            return Err(AccessError::Exists);
        }
        g.members.insert(user.to_owned(), transform);
        self.events.push(E2eEvent::new(E2eAction::MemberAdd, Some(actor)).group(group).user(user));
        Ok(())
    }

    /// An admin removes a member, or a member leaves: the transform key is deleted; the
    /// member's next decrypt through the group fails. Nothing is re-encrypted.
    pub fn remove_member(
        &mut self,
        actor: Actor<'_>,
        group: &str,
        user: &str,
    ) -> Result<(), AccessError> {
        self.device(actor)?;
        let g = self.groups.get_mut(group).ok_or(AccessError::UnknownGroup)?;
        if actor.user != user && !g.admins.contains_key(actor.user) {
            return Err(AccessError::NotAdmin);
        }
        g.members.remove(user).ok_or(AccessError::UnknownUser)?;
        self.events
            .push(E2eEvent::new(E2eAction::MemberRemove, Some(actor)).group(group).user(user));
        Ok(())
    }

    /// An admin makes another user an admin: the group's private key sealed to that user.
    pub fn add_admin(
        &mut self,
        actor: Actor<'_>,
        group: &str,
        user: &str,
        sealed: KeySealedToPublicKey,
    ) -> Result<(), AccessError> {
        self.user_public_keys(user)?;
        let g = self.admin_group(actor, group)?;
        if sealed.public_key() != &g.public_key {
            return Err(AccessError::KeyMismatch("sealed key is not the group's"));
        }
        if g.admins.contains_key(user) {
            return Err(AccessError::Exists);
        }
        g.admins.insert(user.to_owned(), sealed);
        self.events.push(E2eEvent::new(E2eAction::AdminAdd, Some(actor)).group(group).user(user));
        Ok(())
    }

    /// An admin removes an admin (themselves included), never the last one.
    pub fn remove_admin(
        &mut self,
        actor: Actor<'_>,
        group: &str,
        user: &str,
    ) -> Result<(), AccessError> {
        let g = self.admin_group(actor, group)?;
        if !g.admins.contains_key(user) {
            return Err(AccessError::UnknownUser);
        }
        if g.admins.len() == 1 {
            return Err(AccessError::LastAdmin);
        }
        g.admins.remove(user);
        self.events
            .push(E2eEvent::new(E2eAction::AdminRemove, Some(actor)).group(group).user(user));
        Ok(())
    }

    /// The group's private key for an admin's device: sealed to the admin, its value
    /// transformed admin → device.
    pub fn group_key_for_admin(
        &mut self,
        actor: Actor<'_>,
        group: &str,
    ) -> Result<KeySealedToPublicKey, AccessError> {
        let to_device = self.device(actor)?.transform.clone();
        let g = self.groups.get(group).ok_or(AccessError::UnknownGroup)?;
        let sealed = g.admins.get(actor.user).ok_or(AccessError::NotAdmin)?;
        let value = pre::transform(sealed.value(), &to_device)
            .map_err(|_| AccessError::KeyMismatch("transform"))?;
        let out = sealed.with_value(value);
        self.events.push(E2eEvent::new(E2eAction::GroupKeyAccess, Some(actor)).group(group));
        Ok(out)
    }

    fn check_recipient(&self, r: &Recipient) -> Result<PublicKey, AccessError> {
        match r {
            Recipient::Group(g) => self.group_public_key(g),
            Recipient::User(u) => self.user_public_keys(u).map(|k| k.encryption),
        }
    }

    /// Stores a document written by the actor's device (its signature must verify with that
    /// device's key) with its first grants (each signed by the same device).
    pub fn create_document(
        &mut self,
        actor: Actor<'_>,
        document: EncryptedDocument,
        grants: Vec<Grant>,
    ) -> Result<(), AccessError> {
        let device = self.device(actor)?;
        if document.author() != &device.certificate.keys.signing {
            return Err(AccessError::KeyMismatch("document is not signed by the calling device"));
        }
        document.verify()?;
        if !document.is_committed() {
            return Err(DocumentError::Uncommitted.into());
        }
        if self.documents.contains_key(document.id()) {
            return Err(AccessError::Exists);
        }
        let mut by_recipient = BTreeMap::new();
        for grant in grants {
            self.check_grant(actor, document.id(), &grant)?;
            by_recipient.insert(grant.recipient().clone(), grant);
        }
        let id = document.id().to_owned();
        self.documents.insert(
            id.clone(),
            StoredDocument {
                document,
                author_user: actor.user.to_owned(),
                author_device: actor.device.to_owned(),
                grants: by_recipient,
            },
        );
        self.events.push(E2eEvent::new(E2eAction::DocumentCreate, Some(actor)).document(&id));
        Ok(())
    }

    fn check_grant(
        &self,
        actor: Actor<'_>,
        document: &str,
        grant: &Grant,
    ) -> Result<(), AccessError> {
        let device = self.device(actor)?;
        if grant.document_id() != document {
            return Err(AccessError::KeyMismatch("grant is for another document"));
        }
        if grant.granted_by() != &device.certificate.keys.signing {
            return Err(AccessError::KeyMismatch("grant is not signed by the calling device"));
        }
        grant.verify()?;
        self.check_recipient(grant.recipient())?;
        Ok(())
    }

    /// Grants a document to one more group or user. Only someone who can read it can make the
    /// grant (it holds the document key), and only a user with access may store it. A
    /// recipient's existing grant is replaced only by someone who may revoke it (the author's
    /// user, or for a group an admin of the group): the service cannot tell whether a new
    /// grant holds the same key, so any reader replacing one could cut a group off.
    pub fn grant(&mut self, actor: Actor<'_>, grant: Grant) -> Result<(), AccessError> {
        let document = grant.document_id().to_owned();
        let stored = self.documents.get(&document).ok_or(AccessError::UnknownDocument)?;
        self.check_grant(actor, &document, &grant)?;
        if self.access_path(stored, actor.user).is_none() {
            return Err(AccessError::NoAccess);
        }
        if stored.grants.contains_key(grant.recipient())
            && !self.may_revoke(stored, actor.user, grant.recipient())
        {
            return Err(AccessError::Exists);
        }
        let event = E2eEvent::new(E2eAction::DocumentGrant, Some(actor)).document(&document);
        let event = match grant.recipient() {
            Recipient::Group(g) => event.group(g),
            Recipient::User(u) => event.user(u),
        };
        if let Some(stored) = self.documents.get_mut(&document) {
            stored.grants.insert(grant.recipient().clone(), grant);
        }
        self.events.push(event);
        Ok(())
    }

    /// Deletes a grant. Allowed to the document's author and, for a group's grant, the group's
    /// admins. The document is not re-encrypted; members of the group lose access from their
    /// next decrypt.
    pub fn revoke(
        &mut self,
        actor: Actor<'_>,
        document: &str,
        recipient: &Recipient,
    ) -> Result<(), AccessError> {
        self.device(actor)?;
        let stored = self.documents.get(document).ok_or(AccessError::UnknownDocument)?;
        if !self.may_revoke(stored, actor.user, recipient) {
            return Err(AccessError::Forbidden);
        }
        let stored = self.documents.get_mut(document).ok_or(AccessError::UnknownDocument)?;
        stored.grants.remove(recipient).ok_or(AccessError::NoAccess)?;
        let event = E2eEvent::new(E2eAction::DocumentRevoke, Some(actor)).document(document);
        self.events.push(match recipient {
            Recipient::Group(g) => event.group(g),
            Recipient::User(u) => event.user(u),
        });
        Ok(())
    }

    /// Whether `user` may delete (or replace) `recipient`'s grant of the document: its author's
    /// user, and for a group's grant the group's admins.
    fn may_revoke(&self, stored: &StoredDocument, user: &str, recipient: &Recipient) -> bool {
        stored.author_user == user
            || matches!(recipient, Recipient::Group(g)
                if self.groups.get(g).is_some_and(|g| g.admins.contains_key(user)))
    }

    /// How `user` reaches the document: a direct grant, or a grant to a group it is a member of.
    fn access_path<'s>(
        &'s self,
        stored: &'s StoredDocument,
        user: &str,
    ) -> Option<(&'s Grant, Option<(&'s str, &'s TransformKey)>)> {
        if let Some(g) = stored.grants.get(&Recipient::User(user.to_owned())) {
            return Some((g, None));
        }
        stored.grants.iter().find_map(|(r, grant)| match r {
            Recipient::Group(id) => self
                .groups
                .get(id)
                .and_then(|g| g.members.get(user))
                .map(|tk| (grant, Some((id.as_str(), tk)))),
            Recipient::User(_) => None,
        })
    }

    /// A decrypt: the document key transformed to the actor's device, through the user's
    /// direct grant or a group it belongs to. Refused (and recorded) without either.
    pub fn decrypt(
        &mut self,
        actor: Actor<'_>,
        document: &str,
    ) -> Result<DecryptGrant, AccessError> {
        let result = self.decrypt_inner(actor, document);
        let event = match &result {
            Ok(grant) => {
                let e = E2eEvent::new(E2eAction::DocumentDecrypt, Some(actor)).document(document);
                match &grant.via_group {
                    Some(g) => e.group(g),
                    None => e,
                }
            }
            Err(_) => {
                E2eEvent::new(E2eAction::DocumentDecryptDenied, Some(actor)).document(document)
            }
        };
        self.events.push(event);
        result
    }

    fn decrypt_inner(&self, actor: Actor<'_>, document: &str) -> Result<DecryptGrant, AccessError> {
        let to_device = self.device(actor)?.transform;
        let stored = self.documents.get(document).ok_or(AccessError::UnknownDocument)?;
        let (grant, via) = self.access_path(stored, actor.user).ok_or(AccessError::NoAccess)?;
        let mut value = grant.value().clone();
        if let Some((_, to_user)) = via {
            value =
                pre::transform(&value, to_user).map_err(|_| AccessError::KeyMismatch("hops"))?;
        }
        let value =
            pre::transform(&value, to_device).map_err(|_| AccessError::KeyMismatch("hops"))?;
        let author = self.device_certificate(&stored.author_user, &stored.author_device)?.clone();
        Ok(DecryptGrant {
            author_revoked: self.device_revoked(&stored.author_user, &stored.author_device)?,
            document: stored.document.clone(),
            author_user: self.signed_user_keys(&stored.author_user)?,
            author,
            value,
            via_group: via.map(|(g, _)| g.to_owned()),
        })
    }

    /// Everything stored, as it would be in a copied database.
    pub fn server_material(&self) -> ServerMaterial {
        let mut m = ServerMaterial::default();
        for u in self.users.values() {
            m.sealed_user_keys.push(u.sealed.clone());
            for d in u.devices.values() {
                m.certificates.push(d.certificate.clone());
                m.transform_keys.extend(d.transform.clone());
            }
        }
        for g in self.groups.values() {
            m.sealed_group_keys.extend(g.admins.values().cloned());
            m.transform_keys.extend(g.members.values().cloned());
        }
        for d in self.documents.values() {
            m.documents.push(d.document.clone());
            m.grants.extend(d.grants.values().cloned());
        }
        m
    }
}

/// A member's transform key must go from the group's key to the member's.
pub fn check_member_transform(
    group: &PublicKey,
    member: &PublicKey,
    transform: &TransformKey,
) -> Result<(), AccessError> {
    if transform.from_key() != group {
        return Err(AccessError::KeyMismatch("transform key is not from the group's key"));
    }
    if transform.to_key() != member {
        return Err(AccessError::KeyMismatch("transform key is not to the member's key"));
    }
    Ok(())
}
