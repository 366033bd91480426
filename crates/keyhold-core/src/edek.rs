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
            // Ids are positive (docs/formats.md §6.5). Refusing negatives also keeps every
            // accepted envelope re-encodable within the limit: protobuf writes a negative int32
            // in 10 bytes however few the input used.
            if entry.kms_config_id < 1
                || entry.leased_key_id < 0
                || entry.encrypted_dek_data.is_empty()
            {
                return Err(EdekError::Incomplete);
            }
        }
        Ok(())
    }

    /// The entry wrapped by the given KMS configuration, if any.
    pub fn entry_for_config(&self, kms_config_id: i32) -> Option<&EncryptedDek> {
        self.encrypted_deks.iter().find(|e| e.kms_config_id == kms_config_id)
    }
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

    proptest! {
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
