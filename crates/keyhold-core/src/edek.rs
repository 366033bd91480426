//! The EDEK envelope: which KMS configuration wrapped a data key, and the wrapped key itself.
//!
//! The messages keep the field numbers of IronCore's `EncryptedDeks`/`EncryptedDek` protobuf so
//! tools can read EDEKs of either proxy (see `docs/formats.md`, section 6):
//!
//! ```proto
//! message EncryptedDeks { repeated EncryptedDek encryptedDeks = 1; }
//! message EncryptedDek {
//!   bytes  encryptedDekData       = 1;  // the KMS ciphertext (or the leased-key ciphertext)
//!   int32  kmsConfigId            = 2;  // the tenant KMS configuration that wrapped it; never 0
//!   int32  leasedKeyId            = 3;  // leasing only
//!   bytes  leasedKeyIv            = 4;  // leasing only
//!   bytes  encryptedLeasedKeyData = 5;  // leasing only: a nested EncryptedDeks
//!   string tenantId               = 6;
//! }
//! ```
//!
//! Keyhold-only fields, when they are needed, take numbers from 16 up.

use prost::Message;

use crate::aead::NONCE_LEN;
use crate::lease::{SEALED_DEK_LEN, SealedDek};

/// Largest EDEK accepted, in bytes (an EDEK is normally well under 1 KiB).
pub const MAX_EDEK_LEN: usize = 16 * 1024;
/// Most entries (KMS configurations) one EDEK may carry.
pub const MAX_ENTRIES: usize = 16;

/// A data key wrapped by one or more KMS configurations.
#[derive(Clone, PartialEq, Message)]
pub struct EncryptedDeks {
    /// One entry per KMS configuration that wrapped the key.
    #[prost(message, repeated, tag = "1")]
    pub encrypted_deks: Vec<EncryptedDek>,
}

/// A data key wrapped by one KMS configuration.
#[derive(Clone, PartialEq, Message)]
pub struct EncryptedDek {
    /// The wrapped key as the KMS (or the leased key) returned it.
    #[prost(bytes = "vec", tag = "1")]
    pub encrypted_dek_data: Vec<u8>,
    /// The id of the KMS configuration that wrapped it.
    #[prost(int32, tag = "2")]
    pub kms_config_id: i32,
    /// The id of the leased key that wrapped it (0 when not leased).
    #[prost(int32, tag = "3")]
    pub leased_key_id: i32,
    /// The IV used with the leased key (empty when not leased).
    #[prost(bytes = "vec", tag = "4")]
    pub leased_key_iv: Vec<u8>,
    /// The leased key, wrapped by the KMS, as a nested `EncryptedDeks` (empty when not leased).
    #[prost(bytes = "vec", tag = "5")]
    pub encrypted_leased_key_data: Vec<u8>,
    /// The tenant the key belongs to.
    #[prost(string, tag = "6")]
    pub tenant_id: String,
}

/// Why bytes are not a usable EDEK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EdekError {
    /// Not valid base64.
    #[error("EDEK is not valid base64")]
    Base64,
    /// Empty or larger than [`MAX_EDEK_LEN`].
    #[error("EDEK has an invalid length")]
    Length,
    /// Not a valid protobuf `EncryptedDeks` message.
    #[error("EDEK is not a valid envelope")]
    Malformed,
    /// No entries, too many entries, or an entry without a KMS configuration or wrapped key.
    #[error("EDEK envelope is incomplete")]
    Incomplete,
}

impl EncryptedDeks {
    /// An envelope with one entry.
    pub fn single(entry: EncryptedDek) -> Self {
        Self { encrypted_deks: vec![entry] }
    }

    /// Serializes the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Parses and validates an envelope.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EdekError> {
        if bytes.is_empty() || bytes.len() > MAX_EDEK_LEN {
            return Err(EdekError::Length);
        }
        let envelope = Self::decode(bytes).map_err(|_| EdekError::Malformed)?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// Parses standard base64 text (as sent on the wire) and validates it.
    pub fn from_base64(text: &str) -> Result<Self, EdekError> {
        use base64::Engine as _;
        if text.len() > MAX_EDEK_LEN.div_ceil(3) * 4 {
            return Err(EdekError::Length);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| EdekError::Base64)?;
        Self::from_bytes(&bytes)
    }

    /// Standard base64 of the serialized envelope.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    fn validate(&self) -> Result<(), EdekError> {
        if self.encrypted_deks.is_empty() || self.encrypted_deks.len() > MAX_ENTRIES {
            return Err(EdekError::Incomplete);
        }
        for entry in &self.encrypted_deks {
            entry.validate_ids()?;
            // A leased entry must be whole: its parts are checked (and its nested ELEK envelope
            // parsed) here, so that everything accepted can be opened or cleanly refused.
            entry.lease_parts()?;
        }
        Ok(())
    }

    /// The entry wrapped by the given KMS configuration, if any.
    pub fn entry_for_config(&self, kms_config_id: i32) -> Option<&EncryptedDek> {
        self.encrypted_deks.iter().find(|e| e.kms_config_id == kms_config_id)
    }
}

impl EncryptedDek {
    /// A leased entry: `sealed_dek` (from [`crate::lease::LeaseCipher::seal`]) with what any
    /// proxy needs to open it — the lease id, the IV and the KMS-wrapped lease key.
    pub fn new_leased(
        tenant_id: &str,
        kms_config_id: i32,
        lease_id: i32,
        sealed: &SealedDek,
        wrapped_lease_key: &[u8],
    ) -> Self {
        let envelope = lease_key_envelope(tenant_id, kms_config_id, wrapped_lease_key);
        Self::new_leased_in(tenant_id, kms_config_id, lease_id, sealed, envelope)
    }

    /// [`EncryptedDek::new_leased`] with the nested envelope already made by
    /// [`lease_key_envelope`]: it is the same for every key sealed under one lease.
    pub fn new_leased_in(
        tenant_id: &str,
        kms_config_id: i32,
        lease_id: i32,
        sealed: &SealedDek,
        lease_key_envelope: Vec<u8>,
    ) -> Self {
        EncryptedDek {
            encrypted_dek_data: sealed.sealed.to_vec(),
            kms_config_id,
            leased_key_id: lease_id,
            leased_key_iv: sealed.iv.to_vec(),
            encrypted_leased_key_data: lease_key_envelope,
            tenant_id: tenant_id.to_owned(),
        }
    }

    /// True if any leasing field is set (the entry was sealed under a lease key).
    pub fn is_leased(&self) -> bool {
        self.leased_key_id != 0
            || !self.leased_key_iv.is_empty()
            || !self.encrypted_leased_key_data.is_empty()
    }

    /// The parts of a leased entry, `None` for a direct (KMS-wrapped) one; an error if the
    /// leasing fields are incomplete or inconsistent (docs/formats.md §8.2).
    pub fn lease_parts(&self) -> Result<Option<LeasedEntry<'_>>, EdekError> {
        if !self.is_leased() {
            return Ok(None);
        }
        let iv: &[u8; NONCE_LEN] =
            self.leased_key_iv.as_slice().try_into().map_err(|_| EdekError::Incomplete)?;
        if self.leased_key_id < 1 || self.encrypted_dek_data.len() != SEALED_DEK_LEN {
            return Err(EdekError::Incomplete);
        }
        let bytes = &self.encrypted_leased_key_data;
        if bytes.is_empty() || bytes.len() > MAX_EDEK_LEN {
            return Err(EdekError::Incomplete);
        }
        let nested = EncryptedDeks::decode(bytes.as_slice()).map_err(|_| EdekError::Malformed)?;
        let [inner] = nested.encrypted_deks.as_slice() else {
            return Err(EdekError::Incomplete);
        };
        inner.validate_ids()?;
        // One level only: the lease key itself is wrapped by the KMS, never leased.
        if inner.is_leased()
            || inner.kms_config_id != self.kms_config_id
            || inner.tenant_id != self.tenant_id
        {
            return Err(EdekError::Incomplete);
        }
        Ok(Some(LeasedEntry {
            lease_id: self.leased_key_id,
            iv,
            sealed_dek: &self.encrypted_dek_data,
            wrapped_lease_key: nested
                .encrypted_deks
                .into_iter()
                .next()
                .map(|e| e.encrypted_dek_data)
                .unwrap_or_default(),
        }))
    }

    fn validate_ids(&self) -> Result<(), EdekError> {
        // Ids are positive (docs/formats.md §6.5). Refusing negatives also keeps every
        // accepted envelope re-encodable within the limit: protobuf writes a negative int32
        // in 10 bytes however few the input used.
        if self.kms_config_id < 1 || self.leased_key_id < 0 || self.encrypted_dek_data.is_empty() {
            return Err(EdekError::Incomplete);
        }
        Ok(())
    }
}

/// The nested envelope of a leased entry (its `encryptedLeasedKeyData`): the lease key as the
/// KMS wrapped it, in a one-entry `EncryptedDeks` naming the same tenant and KMS configuration
/// (docs/formats.md §8).
pub fn lease_key_envelope(
    tenant_id: &str,
    kms_config_id: i32,
    wrapped_lease_key: &[u8],
) -> Vec<u8> {
    EncryptedDeks::single(EncryptedDek {
        encrypted_dek_data: wrapped_lease_key.to_vec(),
        kms_config_id,
        tenant_id: tenant_id.to_owned(),
        ..EncryptedDek::default()
    })
    .to_bytes()
}

/// The parts of a leased EDEK entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedEntry<'a> {
    /// The lease id.
    pub lease_id: i32,
    /// The IV the data key was sealed with.
    pub iv: &'a [u8; NONCE_LEN],
    /// The sealed data key (ciphertext ‖ tag).
    pub sealed_dek: &'a [u8],
    /// The lease key as the KMS wrapped it (the ELEK).
    pub wrapped_lease_key: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn negative_ids_are_refused_so_what_parses_re_encodes_within_the_limit() {
        // Found by the `edek` fuzz target: -1 written in a 5-byte varint re-encodes in 10 bytes.
        let short_negative =
            [0x0a, 0x0b, 0x0a, 0x03, 0x01, 0x02, 0x03, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(EncryptedDeks::from_bytes(&short_negative), Err(EdekError::Incomplete));
        for (config, leased) in [(-1, 0), (7, -1), (i32::MIN, 0)] {
            let mut edek = sample();
            edek.encrypted_deks[0].kms_config_id = config;
            edek.encrypted_deks[0].leased_key_id = leased;
            let bytes = prost::Message::encode_to_vec(&edek);
            assert_eq!(EncryptedDeks::from_bytes(&bytes), Err(EdekError::Incomplete));
        }
    }

    fn sample() -> EncryptedDeks {
        EncryptedDeks::single(EncryptedDek {
            encrypted_dek_data: vec![1, 2, 3],
            kms_config_id: 7,
            tenant_id: "tenant-a".into(),
            ..Default::default()
        })
    }

    #[test]
    fn round_trip_and_wire_bytes() {
        let env = sample();
        let bytes = env.to_bytes();
        // Field 1 (length-delimited) holding: field 1 bytes [1,2,3], field 2 varint 7, field 6 "tenant-a".
        assert_eq!(
            bytes,
            [
                0x0a, 0x11, 0x0a, 0x03, 1, 2, 3, 0x10, 0x07, 0x32, 0x08, b't', b'e', b'n', b'a',
                b'n', b't', b'-', b'a'
            ]
        );
        assert_eq!(EncryptedDeks::from_bytes(&bytes).unwrap(), env);
        assert_eq!(EncryptedDeks::from_base64(&env.to_base64()).unwrap(), env);
        assert_eq!(env.entry_for_config(7).unwrap().tenant_id, "tenant-a");
        assert!(env.entry_for_config(8).is_none());
    }

    #[test]
    fn rejects_bad_envelopes() {
        assert_eq!(EncryptedDeks::from_bytes(&[]), Err(EdekError::Length));
        assert_eq!(EncryptedDeks::from_bytes(&[0xff; 3]), Err(EdekError::Malformed));
        assert_eq!(EncryptedDeks::from_base64("!!!"), Err(EdekError::Base64));
        // A valid protobuf with no entries.
        assert_eq!(EncryptedDeks::from_bytes(&[0x12, 0x00]), Err(EdekError::Incomplete));
        let mut no_config = sample();
        no_config.encrypted_deks[0].kms_config_id = 0;
        assert_eq!(EncryptedDeks::from_bytes(&no_config.to_bytes()), Err(EdekError::Incomplete));
        let too_big = vec![0u8; MAX_EDEK_LEN + 1];
        assert_eq!(EncryptedDeks::from_bytes(&too_big), Err(EdekError::Length));
    }

    fn leased_sample() -> EncryptedDek {
        let sealed = SealedDek { iv: [9; NONCE_LEN], sealed: [5; SEALED_DEK_LEN] };
        EncryptedDek::new_leased("tenant-a", 7, 1234, &sealed, b"elek-from-the-kms")
    }

    #[test]
    fn leased_entries_round_trip_and_expose_their_parts() {
        let env = EncryptedDeks::single(leased_sample());
        let parsed = EncryptedDeks::from_base64(&env.to_base64()).unwrap();
        assert_eq!(parsed, env);
        let parts = parsed.encrypted_deks[0].lease_parts().unwrap().unwrap();
        assert_eq!(parts.lease_id, 1234);
        assert_eq!(parts.iv, &[9; NONCE_LEN]);
        assert_eq!(parts.sealed_dek, &[5; SEALED_DEK_LEN]);
        assert_eq!(parts.wrapped_lease_key, b"elek-from-the-kms");
        assert!(sample().encrypted_deks[0].lease_parts().unwrap().is_none());
        // The nested envelope is an ordinary one-entry EncryptedDeks (docs/formats.md §8).
        let nested =
            EncryptedDeks::from_bytes(&env.encrypted_deks[0].encrypted_leased_key_data).unwrap();
        assert_eq!(nested.encrypted_deks[0].kms_config_id, 7);
        assert_eq!(nested.encrypted_deks[0].tenant_id, "tenant-a");
    }

    #[test]
    fn incomplete_or_inconsistent_leased_entries_are_refused() {
        let nested_with = |f: &dyn Fn(&mut EncryptedDek)| {
            let mut inner = EncryptedDek {
                encrypted_dek_data: b"elek".to_vec(),
                kms_config_id: 7,
                tenant_id: "tenant-a".into(),
                ..Default::default()
            };
            f(&mut inner);
            EncryptedDeks::single(inner).to_bytes()
        };
        type Alteration = Box<dyn Fn(&mut EncryptedDek)>;
        let cases: Vec<(&str, Alteration)> = vec![
            ("no lease id", Box::new(|e| e.leased_key_id = 0)),
            ("short IV", Box::new(|e| e.leased_key_iv.truncate(11))),
            ("no IV", Box::new(|e| e.leased_key_iv.clear())),
            ("short sealed key", Box::new(|e| e.encrypted_dek_data.truncate(47))),
            ("no ELEK", Box::new(|e| e.encrypted_leased_key_data.clear())),
            ("ELEK not protobuf", Box::new(|e| e.encrypted_leased_key_data = vec![0xff; 3])),
            (
                "ELEK of another config",
                Box::new(move |e| {
                    e.encrypted_leased_key_data = nested_with(&|i| i.kms_config_id = 8)
                }),
            ),
            (
                "ELEK of another tenant",
                Box::new(move |e| {
                    e.encrypted_leased_key_data = nested_with(&|i| i.tenant_id = "b".into())
                }),
            ),
            (
                "ELEK itself leased",
                Box::new(move |e| {
                    e.encrypted_leased_key_data = nested_with(&|i| i.leased_key_id = 3)
                }),
            ),
            (
                "ELEK empty",
                Box::new(move |e| {
                    e.encrypted_leased_key_data = nested_with(&|i| i.encrypted_dek_data.clear())
                }),
            ),
            (
                "two ELEKs",
                Box::new(|e| {
                    let mut two = EncryptedDeks::from_bytes(&e.encrypted_leased_key_data).unwrap();
                    two.encrypted_deks.push(two.encrypted_deks[0].clone());
                    e.encrypted_leased_key_data = two.to_bytes();
                }),
            ),
        ];
        for (name, alter) in cases {
            let mut entry = leased_sample();
            alter(&mut entry);
            let bytes = EncryptedDeks::single(entry).to_bytes();
            assert!(EncryptedDeks::from_bytes(&bytes).is_err(), "{name}: accepted");
        }
    }

    proptest! {
        #[test]
        fn prop_leased_round_trip(lease_id in 1i32.., config in 1i32.., elek in proptest::collection::vec(any::<u8>(), 1..600), iv in any::<[u8; 12]>()) {
            let sealed = SealedDek { iv, sealed: [1; SEALED_DEK_LEN] };
            let entry = EncryptedDek::new_leased("t", config, lease_id, &sealed, &elek);
            // A proxy encodes the nested envelope once per lease: the entry must be the same.
            let from_cached = EncryptedDek::new_leased_in("t", config, lease_id, &sealed, lease_key_envelope("t", config, &elek));
            prop_assert_eq!(&from_cached, &entry);
            let env = EncryptedDeks::single(entry);
            let parsed = EncryptedDeks::from_bytes(&env.to_bytes()).unwrap();
            let parts = parsed.encrypted_deks[0].lease_parts().unwrap().unwrap();
            prop_assert_eq!(parts.lease_id, lease_id);
            prop_assert_eq!(parts.wrapped_lease_key, elek);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = EncryptedDeks::from_bytes(&bytes);
        }

        #[test]
        fn prop_round_trip(data in proptest::collection::vec(any::<u8>(), 1..300), id in 1i32.., tenant in ".{0,40}") {
            let env = EncryptedDeks::single(EncryptedDek { encrypted_dek_data: data, kms_config_id: id, tenant_id: tenant, ..Default::default() });
            prop_assert_eq!(EncryptedDeks::from_bytes(&env.to_bytes()).unwrap(), env);
        }
    }
}
