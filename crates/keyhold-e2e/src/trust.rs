//! Why a device can believe a public key the service hands it (docs/e2e-crypto.md §4.2).
//!
//! Public keys come from the service. A service that swapped one for its own would be handed
//! what is then encrypted to it: a document key granted to a user, a new group's private key
//! sealed to its admin, a member's transform key. So every public key a device uses is signed
//! by its owner, and the device pins what it has checked:
//!
//! - [`SignedUserKeys`]: a user signs its own encryption key with its Ed25519 key, bound to the
//!   organization and the user id (made where the user's keys are made, checked by the service
//!   when the user is registered and by every device that uses the key);
//! - [`SignedGroupKey`]: the device that creates a group signs the group's public key, bound to
//!   the organization and the group id; readers check it through the device's certificate and
//!   its user's signing key;
//! - [`KeyPins`]: what a device has checked, by id. Its own user's signing key is pinned when
//!   the device is enrolled (the passphrase authenticates it); others' are pinned on first use
//!   and compared on every later one, and [`fingerprint`] lets two people compare a user's key
//!   out of band. A key that differs from its pin is refused ([`AccessError::KeyChanged`]):
//!   users' and groups' keys never change, so a different one means a substitution.
//!
//! What this does not cover: the first time a device meets a user, it trusts the service for
//! that user's signing key, as with any key directory, unless the application pins it or
//! compares fingerprints.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::access::{AccessError, DeviceCertificate};
use crate::keys::{DeviceKeys, UserKeys, UserPublicKeys};
use crate::pre::{G1_LEN, PublicKey};

const USER_KEYS_DOMAIN: &[u8] = b"keyhold-e2e-v1 user keys";
const GROUP_KEY_DOMAIN: &[u8] = b"keyhold-e2e-v1 group key";
const FINGERPRINT_DOMAIN: &[u8] = b"keyhold-e2e-v1 fingerprint";

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn verify(key: &VerifyingKey, message: &[u8], signature: &[u8; 64]) -> Result<(), AccessError> {
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| AccessError::KeyStatement)
}

/// A user's public keys with the user's own signature over them, its id and its organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUserKeys {
    /// The user.
    pub user: String,
    /// Its public keys.
    pub keys: UserPublicKeys,
    signature: [u8; 64],
}

impl SignedUserKeys {
    /// The user holding `keys` signs its public keys as user `user` of `tenant`.
    pub fn issue(keys: &UserKeys, tenant: &str, user: &str) -> Self {
        let public = keys.public();
        let signature = keys.sign(&Self::signed_bytes(tenant, user, &public));
        Self { user: user.to_owned(), keys: public, signature }
    }

    /// From its parts, as stored or received; [`SignedUserKeys::verify`] before use.
    pub fn from_parts(user: String, keys: UserPublicKeys, signature: [u8; 64]) -> Self {
        Self { user, keys, signature }
    }

    /// The signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    fn signed_bytes(tenant: &str, user: &str, keys: &UserPublicKeys) -> Vec<u8> {
        let mut out = USER_KEYS_DOMAIN.to_vec();
        push_str(&mut out, tenant);
        push_str(&mut out, user);
        out.extend_from_slice(&keys.encryption.to_bytes());
        out.extend_from_slice(keys.signing.as_bytes());
        out
    }

    /// Checks that the user's signing key signed these keys for this user of `tenant`.
    pub fn verify(&self, tenant: &str) -> Result<(), AccessError> {
        verify(
            &self.keys.signing,
            &Self::signed_bytes(tenant, &self.user, &self.keys),
            &self.signature,
        )
    }
}

/// A group's public key signed by the device that created the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGroupKey {
    /// The group.
    pub group: String,
    /// Its public key.
    pub public_key: PublicKey,
    /// The creating device's user.
    pub creator_user: String,
    /// The creating device.
    pub creator_device: String,
    signature: [u8; 64],
}

impl SignedGroupKey {
    /// Device `creator_device` of user `creator_user` (holding `device`) signs `public_key` as
    /// the key of group `group` of `tenant`.
    pub fn issue(
        device: &DeviceKeys,
        tenant: &str,
        group: &str,
        public_key: PublicKey,
        creator_user: &str,
        creator_device: &str,
    ) -> Self {
        let mut out = Self {
            group: group.to_owned(),
            public_key,
            creator_user: creator_user.to_owned(),
            creator_device: creator_device.to_owned(),
            signature: [0; 64],
        };
        out.signature = device.sign(&out.signed_bytes(tenant));
        out
    }

    /// From its parts, as stored or received; verify before use.
    pub fn from_parts(
        group: String,
        public_key: PublicKey,
        creator_user: String,
        creator_device: String,
        signature: [u8; 64],
    ) -> Self {
        Self { group, public_key, creator_user, creator_device, signature }
    }

    /// The creating device's signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    fn signed_bytes(&self, tenant: &str) -> Vec<u8> {
        let mut out = GROUP_KEY_DOMAIN.to_vec();
        for s in [tenant, &self.group, &self.creator_user, &self.creator_device] {
            push_str(&mut out, s);
        }
        out.extend_from_slice(&self.public_key.to_bytes());
        out
    }

    /// Checks the signature with the creating device's signing key (the service's side, which
    /// knows the device).
    pub fn verify_with(
        &self,
        tenant: &str,
        device_signing: &VerifyingKey,
    ) -> Result<(), AccessError> {
        verify(device_signing, &self.signed_bytes(tenant), &self.signature)
    }

    /// The reader's side: `creator` must be the certificate of the creating device and verify
    /// with its user's signing key (`creator_user_signing`, which the reader has checked or
    /// pinned), and the device must have signed this key for this group of `tenant`.
    pub fn verify(
        &self,
        tenant: &str,
        creator: &DeviceCertificate,
        creator_user_signing: &VerifyingKey,
    ) -> Result<(), AccessError> {
        if creator.user != self.creator_user || creator.device != self.creator_device {
            return Err(AccessError::KeyStatement);
        }
        creator.verify(creator_user_signing).map_err(|_| AccessError::KeyStatement)?;
        self.verify_with(tenant, &creator.keys.signing)
    }
}

/// A short code for a user's signing key, to compare out of band (read aloud, shown as a QR
/// code): 32 hex digits in groups of four, from SHA-256 over the organization, the user id and
/// the key. Two devices showing the same code for a user hold the same key for that user.
pub fn fingerprint(tenant: &str, user: &str, signing: &VerifyingKey) -> String {
    let mut input = FINGERPRINT_DOMAIN.to_vec();
    push_str(&mut input, tenant);
    push_str(&mut input, user);
    input.extend_from_slice(signing.as_bytes());
    let digest = Sha256::digest(&input);
    digest
        .chunks(2)
        .take(8)
        .map(|pair| pair.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a checked key was already pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// It matches the pin.
    Matches,
    /// First sight: it is pinned now (the caller should save the pins).
    New,
}

/// The keys a device has checked, by user and group id: users' signing keys and groups'
/// public keys. Serialized in the device's key file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPins {
    /// User id → Ed25519 signing key (base64url).
    #[serde(default, with = "b64_map")]
    users: BTreeMap<String, Vec<u8>>,
    /// Group id → public key (base64url).
    #[serde(default, with = "b64_map")]
    groups: BTreeMap<String, Vec<u8>>,
}

impl KeyPins {
    /// No pins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compares a user's signing key with its pin, or pins it on first sight.
    pub fn check_user(&mut self, user: &str, signing: &VerifyingKey) -> Result<Pin, AccessError> {
        Self::check(&mut self.users, user, signing.as_bytes())
    }

    /// Compares a user's signing key with its pin without pinning it: [`Pin::New`] if the user
    /// has no pin yet (pin it with [`KeyPins::check_user`] once the rest has checked out).
    pub fn compare_user(&self, user: &str, signing: &VerifyingKey) -> Result<Pin, AccessError> {
        match self.users.get(user) {
            Some(pinned) if pinned.as_slice() == signing.as_bytes() => Ok(Pin::Matches),
            Some(_) => Err(AccessError::KeyChanged),
            None => Ok(Pin::New),
        }
    }

    /// Compares a group's public key with its pin, or pins it on first sight.
    pub fn check_group(&mut self, group: &str, key: &PublicKey) -> Result<Pin, AccessError> {
        Self::check(&mut self.groups, group, &key.to_bytes())
    }

    fn check(
        pins: &mut BTreeMap<String, Vec<u8>>,
        id: &str,
        key: &[u8],
    ) -> Result<Pin, AccessError> {
        match pins.get(id) {
            // Public values: no need for a constant-time comparison.
            Some(pinned) if pinned.as_slice() == key => Ok(Pin::Matches),
            Some(_) => Err(AccessError::KeyChanged),
            None => {
                pins.insert(id.to_owned(), key.to_vec());
                Ok(Pin::New)
            }
        }
    }

    /// Pins a user's signing key checked out of band, replacing any earlier pin.
    pub fn pin_user(&mut self, user: &str, signing: &VerifyingKey) {
        self.users.insert(user.to_owned(), signing.as_bytes().to_vec());
    }

    /// The pinned signing key of a user, if any.
    pub fn user(&self, user: &str) -> Option<VerifyingKey> {
        let bytes: &[u8; 32] = self.users.get(user)?.as_slice().try_into().ok()?;
        VerifyingKey::from_bytes(bytes).ok()
    }

    /// The pinned public key of a group, if any.
    pub fn group(&self, group: &str) -> Option<PublicKey> {
        let bytes: &[u8; G1_LEN] = self.groups.get(group)?.as_slice().try_into().ok()?;
        PublicKey::from_bytes(bytes).ok()
    }

    /// Forgets a user's pin (after the user's keys were really replaced, checked out of band).
    pub fn forget_user(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }
}

mod b64_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::wire::b64;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k, b64::encode(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                b64::decode(&v)
                    .map(|v| (k, v))
                    .ok_or_else(|| serde::de::Error::custom("invalid base64url in key pins"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    use super::*;
    use crate::pre::PrivateKey;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    #[test]
    fn user_keys_verify_only_for_their_user_tenant_and_keys() {
        let alice = UserKeys::generate(&mut rng(1));
        let mallory = UserKeys::generate(&mut rng(2));
        let signed = SignedUserKeys::issue(&alice, "acme", "alice");
        assert_eq!(signed.verify("acme"), Ok(()));
        assert_eq!(signed.verify("other"), Err(AccessError::KeyStatement));
        let as_bob = SignedUserKeys::from_parts("bob".into(), signed.keys, *signed.signature());
        assert_eq!(as_bob.verify("acme"), Err(AccessError::KeyStatement));
        // The service swaps in its own encryption key, or its own signing key.
        let mut swapped = signed.clone();
        swapped.keys.encryption = mallory.public().encryption;
        assert_eq!(swapped.verify("acme"), Err(AccessError::KeyStatement));
        let mut swapped = signed.clone();
        swapped.keys.signing = mallory.public().signing;
        assert_eq!(swapped.verify("acme"), Err(AccessError::KeyStatement));
        // Mallory's own, well-signed keys are Mallory's: only a pin tells them from alice's.
        let forged = SignedUserKeys::issue(&mallory, "acme", "alice");
        assert_eq!(forged.verify("acme"), Ok(()));
        let mut pins = KeyPins::new();
        assert_eq!(pins.compare_user("alice", &signed.keys.signing), Ok(Pin::New));
        assert_eq!(pins.user("alice"), None, "compare_user pins nothing");
        assert_eq!(pins.check_user("alice", &signed.keys.signing), Ok(Pin::New));
        assert_eq!(pins.compare_user("alice", &signed.keys.signing), Ok(Pin::Matches));
        assert_eq!(pins.compare_user("alice", &forged.keys.signing), Err(AccessError::KeyChanged));
        assert_eq!(pins.check_user("alice", &signed.keys.signing), Ok(Pin::Matches));
        assert_eq!(pins.check_user("alice", &forged.keys.signing), Err(AccessError::KeyChanged));
        let mut bit = *signed.signature();
        for i in [0, 31, 63] {
            bit[i] ^= 1;
            let altered = SignedUserKeys::from_parts("alice".into(), signed.keys, bit);
            assert_eq!(altered.verify("acme"), Err(AccessError::KeyStatement));
            bit[i] ^= 1;
        }
    }

    #[test]
    fn group_keys_verify_through_the_creators_certificate() {
        let alice = UserKeys::generate(&mut rng(3));
        let laptop = DeviceKeys::generate(&mut rng(4));
        let cert = DeviceCertificate::issue(&alice, "alice", "laptop", laptop.public());
        let group = PrivateKey::generate(&mut rng(5)).public_key();
        let other = PrivateKey::generate(&mut rng(6)).public_key();
        let signed = SignedGroupKey::issue(&laptop, "acme", "staff", group, "alice", "laptop");
        let alice_vk = alice.public().signing;
        assert_eq!(signed.verify("acme", &cert, &alice_vk), Ok(()));
        assert_eq!(signed.verify("acme2", &cert, &alice_vk), Err(AccessError::KeyStatement));
        // Another key, another group name, another creator: refused.
        let mut g = signed.clone();
        g.public_key = other;
        assert_eq!(g.verify("acme", &cert, &alice_vk), Err(AccessError::KeyStatement));
        let mut g = signed.clone();
        g.group = "admins".into();
        assert_eq!(g.verify("acme", &cert, &alice_vk), Err(AccessError::KeyStatement));
        // A device certificate the creator's user did not sign (the service's own device).
        let mallory = UserKeys::generate(&mut rng(7));
        let fake_device = DeviceKeys::generate(&mut rng(8));
        let fake_cert = DeviceCertificate::issue(&mallory, "alice", "laptop", fake_device.public());
        let fake = SignedGroupKey::issue(&fake_device, "acme", "staff", other, "alice", "laptop");
        assert_eq!(fake.verify("acme", &fake_cert, &alice_vk), Err(AccessError::KeyStatement));
        // A certificate of another device than the one named.
        let phone = DeviceKeys::generate(&mut rng(9));
        let phone_cert = DeviceCertificate::issue(&alice, "alice", "phone", phone.public());
        assert_eq!(signed.verify("acme", &phone_cert, &alice_vk), Err(AccessError::KeyStatement));
        let mut pins = KeyPins::new();
        assert_eq!(pins.check_group("staff", &group), Ok(Pin::New));
        assert_eq!(pins.group("staff"), Some(group));
        assert_eq!(pins.check_group("staff", &other), Err(AccessError::KeyChanged));
    }

    /// The signed inputs are the layouts docs/e2e-crypto.md §6 gives, built here by hand from
    /// the text, so that another implementation can make and check the same signatures.
    #[test]
    fn signed_inputs_are_the_documented_layouts() {
        fn len64(s: &str) -> Vec<u8> {
            [&(s.len() as u64).to_be_bytes()[..], s.as_bytes()].concat()
        }
        let alice = UserKeys::generate(&mut rng(20));
        let public = alice.public();
        let signed = SignedUserKeys::issue(&alice, "acme", "alice");
        let layout = [
            &b"keyhold-e2e-v1 user keys"[..],
            &len64("acme"),
            &len64("alice"),
            &public.encryption.to_bytes(),
            public.signing.as_bytes(),
        ]
        .concat();
        let sig = Signature::from_bytes(signed.signature());
        assert!(public.signing.verify_strict(&layout, &sig).is_ok());

        let laptop = DeviceKeys::generate(&mut rng(21));
        let group = PrivateKey::generate(&mut rng(22)).public_key();
        let signed = SignedGroupKey::issue(&laptop, "acme", "staff", group, "alice", "laptop");
        let layout = [
            &b"keyhold-e2e-v1 group key"[..],
            &len64("acme"),
            &len64("staff"),
            &len64("alice"),
            &len64("laptop"),
            &group.to_bytes(),
        ]
        .concat();
        let sig = Signature::from_bytes(signed.signature());
        assert!(laptop.public().signing.verify_strict(&layout, &sig).is_ok());

        let input = [
            &b"keyhold-e2e-v1 fingerprint"[..],
            &len64("acme"),
            &len64("alice"),
            public.signing.as_bytes(),
        ]
        .concat();
        let hex: String =
            Sha256::digest(&input).iter().take(16).map(|b| format!("{b:02x}")).collect();
        assert_eq!(fingerprint("acme", "alice", &public.signing).replace(' ', ""), hex);
    }

    #[test]
    fn pins_round_trip_through_json_and_fingerprints_bind_user_and_tenant() {
        let alice = UserKeys::generate(&mut rng(10)).public().signing;
        let bob = UserKeys::generate(&mut rng(11)).public().signing;
        let mut pins = KeyPins::new();
        pins.check_user("alice", &alice).unwrap();
        pins.check_group("staff", &PrivateKey::generate(&mut rng(12)).public_key()).unwrap();
        let json = serde_json::to_string(&pins).unwrap();
        let back: KeyPins = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pins);
        assert_eq!(back.user("alice"), Some(alice));
        assert_eq!(serde_json::from_str::<KeyPins>("{}").unwrap(), KeyPins::new());
        assert!(serde_json::from_str::<KeyPins>(r#"{"users":{"a":"!"}}"#).is_err());
        pins.pin_user("alice", &bob);
        assert_eq!(pins.check_user("alice", &bob), Ok(Pin::Matches));
        assert!(pins.forget_user("alice"));
        assert_eq!(pins.user("alice"), None);

        let f = fingerprint("acme", "alice", &alice);
        assert_eq!(f.len(), 39, "{f}");
        assert_eq!(f, fingerprint("acme", "alice", &alice));
        assert_ne!(f, fingerprint("acme", "alice", &bob));
        assert_ne!(f, fingerprint("acme", "bob", &alice));
        assert_ne!(f, fingerprint("acme2", "alice", &alice));
    }
}
