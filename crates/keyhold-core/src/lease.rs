//! Leased data keys: a data key sealed by the proxy under a lease encryption key (LEK), so that
//! wrapping it costs no KMS call.
//!
//! The key hierarchy is master key (in the tenant's KMS) → LEK (in proxy memory; its KMS-wrapped
//! form, the ELEK, travels inside every EDEK it sealed) → data key. A leased EDEK entry is
//! self-contained: any proxy that can reach the tenant's KMS opens it, with no shared state.
//!
//! ```text
//! encryptedDekData       = AES-256-GCM(LEK, leasedKeyIv, ad, DEK)   32-byte ciphertext ‖ 16-byte tag
//! leasedKeyId            = the lease id (random in 1 ..= i32::MAX; names the lease in logs)
//! leasedKeyIv            = 12 random bytes
//! encryptedLeasedKeyData = EncryptedDeks { [ { encryptedDekData = ELEK, kmsConfigId, tenantId } ] }
//! ad = "keyhold/leased-dek/v1\0" ‖ i32be(kmsConfigId) ‖ i32be(leasedKeyId) ‖ u32be(len tenant) ‖ tenant
//! ```
//!
//! The ELEK is made by the KMS with a *lease-key* context (`KeyContext::lease` in keyhold-kms), so
//! it can never be unwrapped as a data key and handed to an application. See docs/formats.md §8.

use crate::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use crate::random::random_array;
use crate::secret::{Dek, KEY_LEN};

/// Length of a sealed data key: ciphertext and tag.
pub const SEALED_DEK_LEN: usize = KEY_LEN + TAG_LEN;

/// What a sealed data key is bound to (as associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseBinding<'a> {
    /// The tenant the data key belongs to.
    pub tenant_id: &'a str,
    /// The KMS configuration whose master key wrapped the LEK.
    pub kms_config_id: i32,
    /// The lease.
    pub lease_id: i32,
}

impl LeaseBinding<'_> {
    fn associated_data(&self) -> Vec<u8> {
        const LABEL: &[u8] = b"keyhold/leased-dek/v1\0";
        let tenant = self.tenant_id.as_bytes();
        let mut out = Vec::with_capacity(LABEL.len() + 12 + tenant.len());
        out.extend_from_slice(LABEL);
        out.extend_from_slice(&self.kms_config_id.to_be_bytes());
        out.extend_from_slice(&self.lease_id.to_be_bytes());
        out.extend_from_slice(&u32::try_from(tenant.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(tenant);
        out
    }
}

/// Why a leased data key could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The system random number generator failed.
    #[error("no randomness for a leased key")]
    Random,
    /// The IV or sealed key has the wrong length.
    #[error("the leased EDEK entry is malformed")]
    Malformed,
    /// Wrong lease key, wrong binding, or altered bytes.
    #[error("the leased data key does not open with this lease")]
    OpenFailed,
}

/// A data key sealed under a lease key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedDek {
    /// The random IV.
    pub iv: [u8; NONCE_LEN],
    /// Ciphertext ‖ tag.
    pub sealed: [u8; SEALED_DEK_LEN],
}

/// A lease encryption key, expanded for AES-256-GCM. The caller keeps the 32 key bytes only as
/// long as it takes to build this (they arrive in a [`Dek`], wiped on drop); the expanded key is
/// freed by AWS-LC, which cleanses memory it frees.
pub struct LeaseCipher {
    key: Aes256GcmKey,
}

impl core::fmt::Debug for LeaseCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LeaseCipher([REDACTED])")
    }
}

impl LeaseCipher {
    /// Expands a lease key.
    pub fn new(lease_key: &Dek) -> Result<Self, LeaseError> {
        let key = Aes256GcmKey::new(lease_key.expose_secret()).map_err(|_| LeaseError::Random)?;
        Ok(Self { key })
    }

    /// Seals `dek` for `binding` under a fresh random IV.
    pub fn seal(&self, dek: &Dek, binding: &LeaseBinding<'_>) -> Result<SealedDek, LeaseError> {
        let iv: [u8; NONCE_LEN] = random_array().map_err(|_| LeaseError::Random)?;
        let mut sealed = [0u8; SEALED_DEK_LEN];
        let (ciphertext, tag_out) = sealed.split_at_mut(KEY_LEN);
        let tag = self
            .key
            .seal_to(&iv, &binding.associated_data(), dek.expose_secret(), ciphertext)
            .map_err(|_| LeaseError::OpenFailed)?;
        tag_out.copy_from_slice(&tag);
        Ok(SealedDek { iv, sealed })
    }

    /// Opens a data key sealed by [`seal`](Self::seal) with the same binding.
    pub fn open(
        &self,
        iv: &[u8],
        sealed: &[u8],
        binding: &LeaseBinding<'_>,
    ) -> Result<Dek, LeaseError> {
        let iv: &[u8; NONCE_LEN] = iv.try_into().map_err(|_| LeaseError::Malformed)?;
        if sealed.len() != SEALED_DEK_LEN {
            return Err(LeaseError::Malformed);
        }
        let (ciphertext, tag) = sealed.split_at(KEY_LEN);
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| LeaseError::Malformed)?;
        let mut out = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        self.key
            .open_to(iv, &binding.associated_data(), ciphertext, tag, out.as_mut_slice())
            .map_err(|_| LeaseError::OpenFailed)?;
        Dek::try_from_slice(out.as_slice()).map_err(|_| LeaseError::Malformed)
    }
}

/// A new lease id: random in `1 ..= i32::MAX` (positive, as EDEK ids must be).
pub fn new_lease_id() -> Result<i32, LeaseError> {
    let bytes: [u8; 4] = random_array().map_err(|_| LeaseError::Random)?;
    let id = i32::from_be_bytes(bytes) & i32::MAX;
    Ok(if id == 0 { 1 } else { id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn binding(tenant: &str) -> LeaseBinding<'_> {
        LeaseBinding { tenant_id: tenant, kms_config_id: 7, lease_id: 99 }
    }

    #[test]
    fn seal_open_round_trip() {
        let cipher = LeaseCipher::new(&Dek::generate().unwrap()).unwrap();
        let dek = Dek::generate().unwrap();
        let a = cipher.seal(&dek, &binding("t")).unwrap();
        let b = cipher.seal(&dek, &binding("t")).unwrap();
        assert_ne!(a.iv, b.iv, "every seal takes a fresh IV");
        assert_eq!(cipher.open(&a.iv, &a.sealed, &binding("t")).unwrap(), dek);
    }

    #[test]
    fn wrong_binding_key_or_bytes_are_refused() {
        let cipher = LeaseCipher::new(&Dek::generate().unwrap()).unwrap();
        let other = LeaseCipher::new(&Dek::generate().unwrap()).unwrap();
        let dek = Dek::generate().unwrap();
        let s = cipher.seal(&dek, &binding("t")).unwrap();
        let refused = |r: Result<Dek, LeaseError>| r.err();
        assert_eq!(
            refused(other.open(&s.iv, &s.sealed, &binding("t"))),
            Some(LeaseError::OpenFailed)
        );
        assert_eq!(
            refused(cipher.open(&s.iv, &s.sealed, &binding("u"))),
            Some(LeaseError::OpenFailed)
        );
        for b in [
            LeaseBinding { kms_config_id: 8, ..binding("t") },
            LeaseBinding { lease_id: 100, ..binding("t") },
        ] {
            assert_eq!(refused(cipher.open(&s.iv, &s.sealed, &b)), Some(LeaseError::OpenFailed));
        }
        assert_eq!(
            refused(cipher.open(&s.iv[..11], &s.sealed, &binding("t"))),
            Some(LeaseError::Malformed)
        );
        assert_eq!(
            refused(cipher.open(&s.iv, &s.sealed[..47], &binding("t"))),
            Some(LeaseError::Malformed)
        );
    }

    #[test]
    fn lease_ids_are_positive() {
        for _ in 0..1000 {
            assert!(new_lease_id().unwrap() >= 1);
        }
    }

    proptest! {
        #[test]
        fn prop_any_altered_byte_is_refused(pos in 0usize..(NONCE_LEN + SEALED_DEK_LEN), bit in 0u8..8) {
            let cipher = LeaseCipher::new(&Dek::generate().unwrap()).unwrap();
            let dek = Dek::generate().unwrap();
            let s = cipher.seal(&dek, &binding("t")).unwrap();
            let (mut iv, mut sealed) = (s.iv, s.sealed);
            if pos < NONCE_LEN { iv[pos] ^= 1 << bit } else { sealed[pos - NONCE_LEN] ^= 1 << bit }
            prop_assert_eq!(cipher.open(&iv, &sealed, &binding("t")).err(), Some(LeaseError::OpenFailed));
        }
    }
}
