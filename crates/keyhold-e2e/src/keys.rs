//! The key pairs of users, devices and groups, and how each private key is kept.
//!
//! - A **device** holds its transform-encryption key pair and an Ed25519 signing key; neither
//!   private half leaves the device ([`DeviceKeys`]).
//! - A **user**'s private key is stored (on the server, so that the user can add devices) only
//!   sealed under a key derived from the user's passphrase with Argon2id ([`PassphraseSealedKey`]).
//! - A **group**'s private key is stored only sealed to each admin's public key
//!   ([`KeySealedToPublicKey`]), so an admin opens it through the same transforms as a document.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use keyhold_core::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::pre::{self, EncryptedValue, Plaintext, PreError, PrivateKey, PublicKey};

/// Failures opening or parsing sealed keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The passphrase is wrong, or the sealed key was altered.
    #[error("wrong passphrase or altered sealed key")]
    WrongPassphrase,
    /// The sealed key does not open with this private key, or was altered.
    #[error("sealed key does not open with this key, or was altered")]
    Unseal,
    /// Bytes that are not a sealed key or key pair of this version.
    #[error("malformed key material: {0}")]
    Malformed(&'static str),
    /// A transform-encryption failure.
    #[error(transparent)]
    Pre(#[from] PreError),
    /// Argon2 refused its parameters.
    #[error("passphrase key derivation failed")]
    Kdf,
    /// The AEAD failed to seal.
    #[error("AES-GCM failed")]
    Aead,
}

/// A device's keys: the transform-encryption key pair documents reach it through, and the
/// Ed25519 key it signs documents and requests with.
pub struct DeviceKeys {
    encryption: PrivateKey,
    signing: SigningKey,
}

/// What others know of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePublicKeys {
    /// Documents are transformed to this key.
    pub encryption: PublicKey,
    /// The device's signatures verify with this key.
    pub signing: VerifyingKey,
}

const DEVICE_KEYS_VERSION: u8 = 1;

impl DeviceKeys {
    /// Fresh keys.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        Self { encryption: PrivateKey::generate(rng), signing: SigningKey::from_bytes(&seed) }
    }

    /// The public halves.
    pub fn public(&self) -> DevicePublicKeys {
        DevicePublicKeys {
            encryption: self.encryption.public_key(),
            signing: self.signing.verifying_key(),
        }
    }

    /// The private encryption key (to decrypt values transformed to this device).
    pub fn encryption_key(&self) -> &PrivateKey {
        &self.encryption
    }

    /// Signs `message` with the device's Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// `version ‖ encryption key ‖ signing seed`: for the device's own key file, nowhere else.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(65));
        out.push(DEVICE_KEYS_VERSION);
        out.extend_from_slice(self.encryption.to_bytes().as_slice());
        out.extend_from_slice(self.signing.to_bytes().as_slice());
        out
    }

    /// Parses [`DeviceKeys::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let [version, rest @ ..] = bytes else { return Err(KeyError::Malformed("empty")) };
        if *version != DEVICE_KEYS_VERSION || rest.len() != 64 {
            return Err(KeyError::Malformed("device keys"));
        }
        let (enc, sig) = rest.split_at(32);
        let enc: Zeroizing<[u8; 32]> =
            Zeroizing::new(enc.try_into().map_err(|_| KeyError::Malformed("device keys"))?);
        let sig: Zeroizing<[u8; 32]> =
            Zeroizing::new(sig.try_into().map_err(|_| KeyError::Malformed("device keys"))?);
        Ok(Self {
            encryption: PrivateKey::from_bytes(&enc)?,
            signing: SigningKey::from_bytes(&sig),
        })
    }
}

impl core::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceKeys").field("public", &self.public()).finish_non_exhaustive()
    }
}

/// A user's keys: the transform-encryption key pair that groups and documents reach the user
/// through, and an Ed25519 key that certifies the user's devices.
pub struct UserKeys {
    encryption: PrivateKey,
    signing: SigningKey,
}

/// What others know of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPublicKeys {
    /// Grants and group memberships are encrypted or transformed to this key.
    pub encryption: PublicKey,
    /// The user's device certificates verify with this key.
    pub signing: VerifyingKey,
}

impl UserKeys {
    /// Fresh keys.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        Self { encryption: PrivateKey::generate(rng), signing: SigningKey::from_bytes(&seed) }
    }

    /// The public halves.
    pub fn public(&self) -> UserPublicKeys {
        UserPublicKeys {
            encryption: self.encryption.public_key(),
            signing: self.signing.verifying_key(),
        }
    }

    /// The private encryption key (to make transform keys to the user's devices).
    pub fn encryption_key(&self) -> &PrivateKey {
        &self.encryption
    }

    /// Signs `message` with the user's Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl core::fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UserKeys").field("public", &self.public()).finish_non_exhaustive()
    }
}

/// Argon2id cost of a passphrase-sealed key: OWASP's first recommended setting (19 MiB, 2 passes,
/// 1 lane), recorded in the sealed key so it can be raised later without breaking old keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassphraseCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for PassphraseCost {
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

/// A user's private keys sealed under the user's passphrase: Argon2id(passphrase, salt) →
/// AES-256-GCM key; the public keys are the associated data, so a sealed key cannot be passed
/// off as another user's. The server keeps it so that the user can set up a new device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PassphraseSealedKey {
    cost: PassphraseCost,
    salt: [u8; 16],
    nonce: [u8; NONCE_LEN],
    ciphertext: [u8; 64],
    tag: [u8; TAG_LEN],
    public: UserPublicKeys,
}

const PASSPHRASE_SEALED_VERSION: u8 = 1;
const PASSPHRASE_AAD: &[u8] = b"keyhold-e2e-v1 user private key";

impl PassphraseSealedKey {
    /// Seals `keys` under `passphrase`. Takes tens of milliseconds on purpose.
    pub fn seal(
        keys: &UserKeys,
        passphrase: &[u8],
        cost: PassphraseCost,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, KeyError> {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let public = keys.public();
        let kek = passphrase_key(passphrase, &salt, cost)?;
        let mut ciphertext = Zeroizing::new([0u8; 64]);
        let (enc, sig) = ciphertext.split_at_mut(32);
        enc.copy_from_slice(keys.encryption.to_bytes().as_slice());
        sig.copy_from_slice(keys.signing.to_bytes().as_slice());
        let tag = kek
            .seal_in_place(&nonce, &passphrase_aad(&public), ciphertext.as_mut_slice())
            .map_err(|_| KeyError::Aead)?;
        Ok(Self { cost, salt, nonce, ciphertext: *ciphertext, tag, public })
    }

    /// Opens the keys; a wrong passphrase or any altered byte is [`KeyError::WrongPassphrase`].
    pub fn open(&self, passphrase: &[u8]) -> Result<UserKeys, KeyError> {
        let kek = passphrase_key(passphrase, &self.salt, self.cost)?;
        let mut plain = Zeroizing::new(self.ciphertext);
        kek.open_in_place(
            &self.nonce,
            &passphrase_aad(&self.public),
            plain.as_mut_slice(),
            &self.tag,
        )
        .map_err(|_| KeyError::WrongPassphrase)?;
        let (enc, sig) = plain.split_at(32);
        let enc: Zeroizing<[u8; 32]> =
            Zeroizing::new(enc.try_into().map_err(|_| KeyError::WrongPassphrase)?);
        let sig: Zeroizing<[u8; 32]> =
            Zeroizing::new(sig.try_into().map_err(|_| KeyError::WrongPassphrase)?);
        let keys = UserKeys {
            encryption: PrivateKey::from_bytes(&enc)?,
            signing: SigningKey::from_bytes(&sig),
        };
        if keys.public() != self.public {
            return Err(KeyError::WrongPassphrase);
        }
        Ok(keys)
    }

    /// The public keys of the sealed private keys.
    pub fn public(&self) -> &UserPublicKeys {
        &self.public
    }

    /// `version ‖ m ‖ t ‖ p ‖ salt ‖ nonce ‖ ciphertext ‖ tag ‖ public keys`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 12 + 16 + NONCE_LEN + 64 + TAG_LEN + pre::G1_LEN + 32);
        out.push(PASSPHRASE_SEALED_VERSION);
        out.extend_from_slice(&self.cost.memory_kib.to_be_bytes());
        out.extend_from_slice(&self.cost.iterations.to_be_bytes());
        out.extend_from_slice(&self.cost.parallelism.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&self.public.encryption.to_bytes());
        out.extend_from_slice(self.public.signing.as_bytes());
        out
    }

    /// Parses [`PassphraseSealedKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut r = Cursor(bytes);
        if r.array::<1>()? != [PASSPHRASE_SEALED_VERSION] {
            return Err(KeyError::Malformed("sealed key version"));
        }
        let cost = PassphraseCost {
            memory_kib: u32::from_be_bytes(r.array()?),
            iterations: u32::from_be_bytes(r.array()?),
            parallelism: u32::from_be_bytes(r.array()?),
        };
        // Bound what a stored key can make a client spend (1 GiB, 16 passes).
        if cost.memory_kib > 1 << 20 || cost.iterations > 16 || cost.parallelism > 16 {
            return Err(KeyError::Malformed("passphrase cost too high"));
        }
        let out = Self {
            cost,
            salt: r.array()?,
            nonce: r.array()?,
            ciphertext: r.array()?,
            tag: r.array()?,
            public: UserPublicKeys {
                encryption: PublicKey::from_bytes(&r.array::<{ pre::G1_LEN }>()?)?,
                signing: VerifyingKey::from_bytes(&r.array()?)
                    .map_err(|_| KeyError::Malformed("signing key"))?,
            },
        };
        r.end()?;
        Ok(out)
    }
}

fn passphrase_aad(public: &UserPublicKeys) -> Vec<u8> {
    [PASSPHRASE_AAD, &public.encryption.to_bytes(), public.signing.as_bytes()].concat()
}

fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    cost: PassphraseCost,
) -> Result<Aes256GcmKey, KeyError> {
    let params = argon2::Params::new(cost.memory_kib, cost.iterations, cost.parallelism, Some(32))
        .map_err(|_| KeyError::Kdf)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(passphrase, salt, key.as_mut_slice()).map_err(|_| KeyError::Kdf)?;
    Aes256GcmKey::new(&key).map_err(|_| KeyError::Aead)
}

/// A private key (a group's) sealed to another key pair (an admin's): a fresh [`Plaintext`]
/// encrypted to the recipient by transform encryption, and the private key under AES-256-GCM
/// with a key derived from that plaintext. The server can transform the first part to the
/// recipient's device, like any document key, and can open neither.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeySealedToPublicKey {
    value: EncryptedValue,
    nonce: [u8; NONCE_LEN],
    ciphertext: [u8; 32],
    tag: [u8; TAG_LEN],
    public_key: PublicKey,
}

const SEALED_TO_KEY_INFO: &[u8] = b"keyhold-e2e-v1 sealed private key";

impl KeySealedToPublicKey {
    /// Seals `key` to `recipient`.
    pub fn seal(
        key: &PrivateKey,
        recipient: &PublicKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, KeyError> {
        let m = Plaintext::generate(rng);
        let value = pre::encrypt(&m, recipient, rng);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let public_key = key.public_key();
        let kek =
            Aes256GcmKey::new(&m.derive_key(SEALED_TO_KEY_INFO)).map_err(|_| KeyError::Aead)?;
        let mut ciphertext = *key.to_bytes();
        let tag = kek
            .seal_in_place(&nonce, &public_key.to_bytes(), &mut ciphertext)
            .map_err(|_| KeyError::Aead)?;
        Ok(Self { value, nonce, ciphertext, tag, public_key })
    }

    /// The transform-encryption part, for the server to transform toward the reader's device.
    pub fn value(&self) -> &EncryptedValue {
        &self.value
    }

    /// The sealed key with its value replaced by a transformed one.
    pub fn with_value(&self, value: EncryptedValue) -> Self {
        Self { value, ..self.clone() }
    }

    /// The public key of the sealed private key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Opens with the private key the value is (now) addressed to.
    pub fn open(&self, reader: &PrivateKey) -> Result<PrivateKey, KeyError> {
        let m = pre::decrypt(&self.value, reader).map_err(|_| KeyError::Unseal)?;
        self.open_with(&m)
    }

    pub(crate) fn open_with(&self, m: &Plaintext) -> Result<PrivateKey, KeyError> {
        let kek =
            Aes256GcmKey::new(&m.derive_key(SEALED_TO_KEY_INFO)).map_err(|_| KeyError::Aead)?;
        let mut key = Zeroizing::new(self.ciphertext);
        kek.open_in_place(&self.nonce, &self.public_key.to_bytes(), key.as_mut_slice(), &self.tag)
            .map_err(|_| KeyError::Unseal)?;
        let key = PrivateKey::from_bytes(&key)?;
        if key.public_key() != self.public_key {
            return Err(KeyError::Unseal);
        }
        Ok(key)
    }

    /// `public key ‖ nonce ‖ ciphertext ‖ tag ‖ value`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.public_key.to_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&self.value.to_bytes());
        out
    }

    /// Parses [`KeySealedToPublicKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut r = Cursor(bytes);
        let public_key = PublicKey::from_bytes(&r.array::<{ pre::G1_LEN }>()?)?;
        let nonce = r.array()?;
        let ciphertext = r.array()?;
        let tag = r.array()?;
        let value = EncryptedValue::from_bytes(r.0)?;
        Ok(Self { value, nonce, ciphertext, tag, public_key })
    }
}

/// A cursor that never panics.
pub(crate) struct Cursor<'a>(pub(crate) &'a [u8]);

impl Cursor<'_> {
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], KeyError> {
        if self.0.len() < N {
            return Err(KeyError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        head.try_into().map_err(|_| KeyError::Malformed("truncated"))
    }

    pub(crate) fn end(&self) -> Result<(), KeyError> {
        if self.0.is_empty() { Ok(()) } else { Err(KeyError::Malformed("trailing bytes")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    /// Cheap Argon2 for unit tests; the default cost is exercised in tests/access.rs.
    const TEST_COST: PassphraseCost =
        PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[test]
    fn passphrase_sealed_key_opens_only_with_its_passphrase() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let keys = UserKeys::generate(&mut rng);
        let sealed =
            PassphraseSealedKey::seal(&keys, b"correct horse", TEST_COST, &mut rng).unwrap();
        let parsed = PassphraseSealedKey::from_bytes(&sealed.to_bytes()).unwrap();
        assert_eq!(parsed, sealed);
        assert_eq!(parsed.open(b"correct horse").unwrap().public(), keys.public());
        assert_eq!(parsed.open(b"wrong").unwrap_err(), KeyError::WrongPassphrase);
        let bytes = sealed.to_bytes();
        for i in [13, 30, 45, 60, 80, 110, 140, 170] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            let r = PassphraseSealedKey::from_bytes(&bad).and_then(|s| s.open(b"correct horse"));
            assert!(r.is_err(), "flip at {i} accepted");
        }
        let mut costly = bytes.clone();
        costly[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(PassphraseSealedKey::from_bytes(&costly).is_err());
    }

    #[test]
    fn key_sealed_to_a_public_key_opens_with_that_key_or_through_a_transform() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (group, admin, device, other) = (
            PrivateKey::generate(&mut rng),
            PrivateKey::generate(&mut rng),
            PrivateKey::generate(&mut rng),
            PrivateKey::generate(&mut rng),
        );
        let sealed = KeySealedToPublicKey::seal(&group, &admin.public_key(), &mut rng).unwrap();
        let sealed = KeySealedToPublicKey::from_bytes(&sealed.to_bytes()).unwrap();
        assert_eq!(sealed.open(&admin).unwrap().public_key(), group.public_key());
        assert_eq!(sealed.open(&other).unwrap_err(), KeyError::Unseal);
        let tk = pre::transform_key(&admin, &device.public_key(), &mut rng);
        let moved = sealed.with_value(pre::transform(sealed.value(), &tk).unwrap());
        assert_eq!(moved.open(&device).unwrap().public_key(), group.public_key());
    }

    #[test]
    fn device_keys_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let keys = DeviceKeys::generate(&mut rng);
        let again = DeviceKeys::from_bytes(&keys.to_bytes()).unwrap();
        assert_eq!(again.public(), keys.public());
        assert!(DeviceKeys::from_bytes(&keys.to_bytes()[..40]).is_err());
        assert!(format!("{keys:?}").contains("DeviceKeys"));
    }
}
