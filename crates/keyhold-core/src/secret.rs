//! Secret key types: wiped on drop, never printed, compared in constant time.
//!
//! Every 256-bit secret in Keyhold has its own type so that a data key cannot be passed
//! where a root key is expected. All of them share one implementation.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::random::{RandomError, fill_random};

/// Length in bytes of every symmetric key Keyhold handles (AES-256).
pub const KEY_LEN: usize = 32;

/// A key of the wrong length, or key bytes that are not valid base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    /// The key is not exactly [`KEY_LEN`] bytes long.
    #[error("a key must be exactly 32 bytes")]
    Length,
    /// A derived field key is not exactly [`DERIVED_KEY_LEN`] bytes long.
    #[error("a derived field key must be exactly 64 bytes")]
    DerivedLength,
    /// The key text is not standard base64.
    #[error("the key is not valid base64")]
    Encoding,
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        secret_key! { $(#[$doc])* $name, KEY_LEN, Length }
    };
    ($(#[$doc:meta])* $name:ident, $len:expr, $len_error:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Zeroizing<[u8; $len]>);

        impl $name {
            /// A fresh key from the operating system's CSPRNG.
            pub fn generate() -> Result<Self, RandomError> {
                let mut key = Zeroizing::new([0u8; $len]);
                fill_random(key.as_mut())?;
                Ok(Self(key))
            }

            /// Takes ownership of key bytes; the caller's array is moved, not copied.
            pub fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(Zeroizing::new(bytes))
            }

            /// Copies key bytes out of a slice of exactly the key length.
            pub fn try_from_slice(bytes: &[u8]) -> Result<Self, InvalidKey> {
                let array: &[u8; $len] = bytes.try_into().map_err(|_| InvalidKey::$len_error)?;
                Ok(Self(Zeroizing::new(*array)))
            }

            /// Decodes standard base64 (with padding); the intermediate buffer is wiped.
            pub fn from_base64(text: &str) -> Result<Self, InvalidKey> {
                let decoded = Zeroizing::new(
                    BASE64.decode(text.trim().as_bytes()).map_err(|_| InvalidKey::Encoding)?,
                );
                Self::try_from_slice(&decoded)
            }

            /// Encodes the key as standard base64 in a buffer that is wiped on drop.
            pub fn to_base64(&self) -> Zeroizing<String> {
                Zeroizing::new(BASE64.encode(self.0.as_ref()))
            }

            /// The key bytes. Keep the borrow short; never copy them into an unwiped buffer.
            pub fn expose_secret(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> subtle::Choice {
                self.0.as_ref().ct_eq(other.0.as_ref())
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.ct_eq(other).into()
            }
        }

        impl Eq for $name {}

        impl Zeroize for $name {
            fn zeroize(&mut self) {
                self.0.zeroize();
            }
        }

        /// Serialized as standard base64 (the intermediate text is wiped).
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_base64())
            }
        }

        /// Read from standard base64 of exactly the key length (the intermediate text is wiped).
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let mut text: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
                let key = Self::from_base64(&text).map_err(serde::de::Error::custom);
                if let std::borrow::Cow::Owned(owned) = &mut text {
                    owned.zeroize();
                }
                key
            }
        }
    };
}

secret_key! {
    /// A data encryption key (DEK): encrypts one document, file or record, then is wiped.
    Dek
}

secret_key! {
    /// A master key's material in a vendor-held (local) keystore. Never leaves the proxy.
    MasterKeyMaterial
}

secret_key! {
    /// The root key that encrypts a local keystore at rest.
    RootKey
}

secret_key! {
    /// A tenant secret (deterministic field encryption): made by the tenant's KMS, stored only
    /// wrapped by it, and used inside the proxy to derive field keys. Never leaves the proxy.
    TenantSecret
}

/// Length in bytes of a derived field key: AES-256-SIV takes two 256-bit keys.
pub const DERIVED_KEY_LEN: usize = 64;

secret_key! {
    /// A field key derived from a [`TenantSecret`] (HMAC-SHA512): the AES-256-SIV key of one
    /// tenant's secret path and derivation path. Sent to authenticated callers of that tenant.
    DerivedFieldKey, DERIVED_KEY_LEN, DerivedLength
}

/// A secret string (an API key, a password): wiped on drop, redacted in `Debug`,
/// compared in constant time.
pub type SecretString = Zeroizing<String>;

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = Dek::from_bytes([0xAB; KEY_LEN]);
        let printed = format!("{key:?}");
        assert_eq!(printed, "Dek([REDACTED])");
        assert!(!printed.to_lowercase().contains("ab"));
    }

    #[test]
    fn generated_keys_differ() {
        let a = Dek::generate().unwrap();
        let b = Dek::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
    }

    #[test]
    fn base64_round_trip_and_errors() {
        let key = RootKey::generate().unwrap();
        let text = key.to_base64();
        assert_eq!(RootKey::from_base64(&text).unwrap(), key);
        assert_eq!(RootKey::from_base64("not base64!"), Err(InvalidKey::Encoding));
        assert_eq!(RootKey::from_base64("AAAA"), Err(InvalidKey::Length));
        assert_eq!(Dek::try_from_slice(&[0; 31]).unwrap_err(), InvalidKey::Length);
    }

    #[test]
    fn zeroize_clears_bytes() {
        let mut key = Dek::from_bytes([7; KEY_LEN]);
        key.zeroize();
        assert_eq!(key.expose_secret(), &[0; KEY_LEN]);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
