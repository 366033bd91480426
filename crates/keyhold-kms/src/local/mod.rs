//! The `local` backend: vendor-held master keys in a [`Keystore`] file.
//!
//! For tenants who bring no KMS (and for `keyhold up`), the vendor holds a master key per tenant.
//! The key never leaves the proxy; it is versioned (rotation keeps old versions for unwrapping)
//! and can be disabled, which makes every wrap and unwrap fail with
//! [`KmsError::KeyDisabled`] — the same "denied" answer a cloud KMS gives for a disabled key.
//!
//! Wrapped key layout (the `encryptedDekData` of an EDEK):
//!
//! ```text
//! "KHL" ‖ version 1 ‖ u32be key version ‖ 32-byte random salt ‖ AES-256-GCM(DEK) (32) ‖ tag (16)
//! ```
//!
//! Each wrap derives a one-time key `K = HKDF-SHA256(salt, master key version,
//! "keyhold/local-kms/v1/wrap\0" ‖ key name)` and uses AES-256-GCM with an all-zero nonce (safe
//! because K is used once), with associated data
//! `u32be(len(key name)) ‖ key name ‖ u32be(key version) ‖` [`KeyContext::associated_data`]. Fresh keys per wrap lift the
//! 2³² random-nonce limit a single AES-GCM key would have.

mod keystore;

use std::sync::Arc;

use async_trait::async_trait;
use keyhold_core::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use keyhold_core::kdf;
use keyhold_core::random::random_array;
use keyhold_core::secret::{Dek, KEY_LEN, MasterKeyMaterial};

use keystore::Lookup;
pub use keystore::{
    DEFAULT_CHECK_INTERVAL, KeyInfo, Keystore, KeystoreError, ROOT_KEY_ENV, generate_root_key_file,
    load_root_key,
};

use crate::{KeyContext, Kms, KmsError};

const MAGIC: &[u8; 3] = b"KHL";
const FORMAT: u8 = 1;
const SALT_LEN: usize = 32;
const KDF_LABEL: &[u8] = b"keyhold/local-kms/v1/wrap";
const WRAPPED_LEN: usize = 4 + 4 + SALT_LEN + KEY_LEN + TAG_LEN;
const ZERO_NONCE: [u8; NONCE_LEN] = [0; NONCE_LEN];

/// One master key of a [`Keystore`], or one key held in memory, as a [`Kms`].
#[derive(Debug, Clone)]
pub struct LocalKms {
    source: KeySource,
    key_name: String,
}

/// Where the master key material is.
#[derive(Clone)]
enum KeySource {
    /// A key of a keystore file (versions, enable/disable).
    Keystore(Arc<Keystore>),
    /// One key (version 1) given by the configuration: a vendor-managed key that the broker
    /// generated and sealed to the proxy fleet. It has no other versions; a new key is a new
    /// KMS configuration, and disabling is done by the configuration's status.
    Single(MasterKeyMaterial),
}

impl core::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Keystore(ks) => f.debug_tuple("Keystore").field(&ks.path()).finish(),
            Self::Single(_) => f.write_str("Single(<redacted>)"),
        }
    }
}

/// The key name a single in-memory key derives its wrapping keys with.
pub const VENDOR_KEY_NAME: &str = "vendor-key";

impl LocalKms {
    /// The key `key_name` of `keystore`. The key need not exist yet; operations on a missing
    /// key fail with [`KmsError::ConfigurationInvalid`].
    pub fn new(keystore: Arc<Keystore>, key_name: impl Into<String>) -> Self {
        Self { source: KeySource::Keystore(keystore), key_name: key_name.into() }
    }

    /// A single key held in memory (a vendor-managed key from the broker), as version 1. Its
    /// wrapped keys have the same layout as a keystore key's, under the name
    /// [`VENDOR_KEY_NAME`]; the tenant and configuration id are bound by the [`KeyContext`].
    pub fn single(material: MasterKeyMaterial) -> Self {
        Self { source: KeySource::Single(material), key_name: VENDOR_KEY_NAME.to_owned() }
    }

    /// The key's name.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The master key version a wrapped key was made with, if it is a local wrapped key.
    pub fn key_version_of(wrapped: &[u8]) -> Option<u32> {
        let header = wrapped.get(..8)?;
        if header.get(..3)? != MAGIC || header.get(3)? != &FORMAT {
            return None;
        }
        Some(u32::from_be_bytes(header.get(4..8)?.try_into().ok()?))
    }

    fn lookup(&self, version: Option<u32>) -> Result<keystore::KeyVersion, KmsError> {
        let keystore = match &self.source {
            KeySource::Keystore(keystore) => keystore,
            KeySource::Single(material) => {
                return match version {
                    None | Some(1) => {
                        Ok(keystore::KeyVersion { version: 1, material: material.clone() })
                    }
                    Some(_) => Err(KmsError::InvalidCiphertext),
                };
            }
        };
        match keystore.lookup(&self.key_name, version) {
            Lookup::Found(v) => Ok(v),
            Lookup::Disabled => {
                Err(KmsError::KeyDisabled(format!("local key {:?} is disabled", self.key_name)))
            }
            Lookup::UnknownKey => Err(KmsError::ConfigurationInvalid(format!(
                "local key {:?} does not exist",
                self.key_name
            ))),
            // A version we do not hold: the wrapped key cannot be ours.
            Lookup::UnknownVersion => Err(KmsError::InvalidCiphertext),
        }
    }

    fn cipher(
        &self,
        version: &keystore::KeyVersion,
        salt: &[u8; SALT_LEN],
        context: &KeyContext<'_>,
    ) -> Result<(Aes256GcmKey, Vec<u8>), KmsError> {
        let key = kdf::derive_key(
            version.material.expose_secret(),
            salt,
            KDF_LABEL,
            self.key_name.as_bytes(),
        )
        .map_err(|_| KmsError::WrapFailed("key derivation failed".into()))?;
        let aead = Aes256GcmKey::new(&key)
            .map_err(|_| KmsError::WrapFailed("cipher setup failed".into()))?;
        let mut aad = Vec::with_capacity(self.key_name.len() + 8 + 64);
        aad.extend_from_slice(
            &u32::try_from(self.key_name.len()).unwrap_or(u32::MAX).to_be_bytes(),
        );
        aad.extend_from_slice(self.key_name.as_bytes());
        aad.extend_from_slice(&version.version.to_be_bytes());
        aad.extend_from_slice(&context.associated_data());
        Ok((aead, aad))
    }
}

#[async_trait]
impl Kms for LocalKms {
    fn kind(&self) -> &'static str {
        match self.source {
            KeySource::Keystore(_) => "local",
            KeySource::Single(_) => "vendor",
        }
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        let version = self.lookup(None)?;
        let salt: [u8; SALT_LEN] =
            random_array().map_err(|_| KmsError::WrapFailed("no randomness".into()))?;
        let (aead, aad) = self.cipher(&version, &salt, context)?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&version.version.to_be_bytes());
        out.extend_from_slice(&salt);
        let start = out.len();
        out.resize(start + KEY_LEN, 0);
        let body = out.get_mut(start..).ok_or_else(|| KmsError::WrapFailed("buffer".into()))?;
        let tag = aead
            .seal_to(&ZERO_NONCE, &aad, dek.expose_secret(), body)
            .map_err(|_| KmsError::WrapFailed("encryption failed".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        if wrapped.len() != WRAPPED_LEN {
            return Err(KmsError::InvalidCiphertext);
        }
        let key_version = Self::key_version_of(wrapped).ok_or(KmsError::InvalidCiphertext)?;
        let salt: &[u8; SALT_LEN] = wrapped
            .get(8..8 + SALT_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(KmsError::InvalidCiphertext)?;
        let body = wrapped.get(8 + SALT_LEN..).ok_or(KmsError::InvalidCiphertext)?;
        let (ciphertext, tag) =
            body.split_last_chunk::<TAG_LEN>().ok_or(KmsError::InvalidCiphertext)?;
        let version = self.lookup(Some(key_version))?;
        let (aead, aad) = self.cipher(&version, salt, context)?;
        let mut dek = [0u8; KEY_LEN];
        let opened = aead.open_to(&ZERO_NONCE, &aad, ciphertext, tag, &mut dek);
        // The array is moved into a wiped-on-drop key; the stack copy is cleared here.
        let result = opened.map(|()| Dek::from_bytes(dek)).map_err(|_| KmsError::InvalidCiphertext);
        zeroize::Zeroize::zeroize(&mut dek);
        result
    }

    async fn health(&self) -> Result<(), KmsError> {
        self.lookup(None).map(|_| ())
    }

    fn key_version(&self, wrapped: &[u8]) -> Option<String> {
        Self::key_version_of(wrapped).map(|v| v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhold_core::secret::RootKey;

    fn kms() -> (tempfile::TempDir, Arc<Keystore>, LocalKms) {
        let dir = tempfile::tempdir().unwrap();
        let ks = Arc::new(
            Keystore::create(dir.path().join("ks"), RootKey::generate().unwrap()).unwrap(),
        );
        ks.create_key("tenant-key").unwrap();
        let kms = LocalKms::new(Arc::clone(&ks), "tenant-key");
        (dir, ks, kms)
    }

    #[tokio::test]
    async fn layout_and_version() {
        let (_d, ks, kms) = kms();
        let ctx = KeyContext::new("t", 1);
        let wrapped = kms.generate(&ctx).await.unwrap().wrapped;
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert_eq!(LocalKms::key_version_of(&wrapped), Some(1));
        ks.rotate_key("tenant-key").unwrap();
        let wrapped2 = kms.generate(&ctx).await.unwrap().wrapped;
        assert_eq!(LocalKms::key_version_of(&wrapped2), Some(2));
        assert_eq!(LocalKms::key_version_of(b"junk"), None);
    }

    #[tokio::test]
    async fn missing_key_is_a_configuration_error() {
        let (_d, ks, _) = kms();
        let missing = LocalKms::new(ks, "nope");
        let err = missing.generate(&KeyContext::new("t", 1)).await.unwrap_err();
        assert!(matches!(err, KmsError::ConfigurationInvalid(_)));
        assert!(missing.health().await.is_err());
    }

    #[tokio::test]
    async fn a_single_key_wraps_as_version_one_and_refuses_others() {
        let material = MasterKeyMaterial::generate().unwrap();
        let kms = LocalKms::single(material.clone());
        assert_eq!(kms.kind(), "vendor");
        let ctx = KeyContext::new("t", 7);
        let generated = kms.generate(&ctx).await.unwrap();
        assert_eq!(LocalKms::key_version_of(&generated.wrapped), Some(1));
        // The same material (another proxy) unwraps it; another key or context does not.
        let again = LocalKms::single(material).unwrap(&generated.wrapped, &ctx).await.unwrap();
        assert_eq!(again, generated.dek);
        let other = LocalKms::single(MasterKeyMaterial::generate().unwrap());
        assert_eq!(
            other.unwrap(&generated.wrapped, &ctx).await.unwrap_err(),
            KmsError::InvalidCiphertext
        );
        assert_eq!(
            kms.unwrap(&generated.wrapped, &KeyContext::new("u", 7)).await.unwrap_err(),
            KmsError::InvalidCiphertext
        );
        let mut v2 = generated.wrapped.clone();
        v2[4..8].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(kms.unwrap(&v2, &ctx).await.unwrap_err(), KmsError::InvalidCiphertext);
        assert!(kms.health().await.is_ok());
        assert!(!format!("{kms:?}").contains(&format!("{:?}", generated.dek)));
    }

    #[tokio::test]
    async fn wrapped_key_from_another_key_name_is_refused() {
        let (_d, ks, kms) = kms();
        ks.create_key("other").unwrap();
        let other = LocalKms::new(Arc::clone(&ks), "other");
        let ctx = KeyContext::new("t", 1);
        let wrapped = kms.generate(&ctx).await.unwrap().wrapped;
        assert_eq!(other.unwrap(&wrapped, &ctx).await.unwrap_err(), KmsError::InvalidCiphertext);
    }
}
