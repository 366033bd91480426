//! The Keyhold encrypted-stream format, version 1: files and byte streams of any length,
//! encrypted and decrypted in constant memory.
//!
//! The stream carries everything needed to decrypt it except the tenant's key: the tenant id and
//! the EDEK are in the header, so `keyhold decrypt` needs only the file and a proxy.
//!
//! ```text
//! header:
//!   3   magic "KHF"
//!   1   format version = 1
//!   1   algorithm = 1 (AES-256-GCM, HKDF-SHA256, STREAM segments, key commitment)
//!   4   segment size S, u32 big-endian (plaintext bytes per segment, 16 ..= 16 MiB)
//!   2   n = tenant id length, u16 big-endian (1 ..= 1024), then n bytes of tenant id (UTF-8)
//!   4   m = EDEK length, u32 big-endian (1 ..= 64 KiB), then m bytes of EDEK
//!   32  salt (random per stream)
//!   32  key commitment
//! segments:
//!   every segment but the last: S bytes of ciphertext ‖ 16-byte tag
//!   the last segment: 0 ..= S bytes of ciphertext ‖ 16-byte tag
//! ```
//!
//! Keys: `PRK = HKDF-Extract(salt, DEK)`, `h = SHA-256(header without the commitment)`,
//! `K = HKDF-Expand(PRK, "keyhold/stream/v1/encrypt\0" ‖ h)`,
//! `commitment = HKDF-Expand(PRK, "keyhold/stream/v1/commit\0" ‖ h)`. Every header byte thus
//! changes the key. Segment `i` (counting from 0) uses the nonce `0⁷ ‖ u32be(i) ‖ last`, where
//! `last` is 1 for the final segment and 0 otherwise (the STREAM construction of Hoang,
//! Reyhanitabar, Rogaway and Vizár), so segments cannot be reordered, dropped, duplicated or
//! truncated at a segment boundary without detection.
//!
//! A decryptor releases each segment's plaintext once that segment authenticates; only
//! [`StreamDecryptor::finish`] proves the stream was not cut short. Callers that write plaintext
//! to its final place must treat it as incomplete until `finish` returns `Ok`.

use sha2::{Digest, Sha256};

use crate::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use crate::document::MAX_TENANT_ID_LEN;
use crate::kdf::{self, COMMITMENT_LEN};
use crate::random::{RandomError, random_array};
use crate::secret::Dek;

/// The three bytes every Keyhold encrypted stream starts with.
pub const MAGIC: &[u8; 3] = b"KHF";
/// The format version this module writes.
pub const VERSION: u8 = 1;
/// AES-256-GCM STREAM with HKDF-SHA256 and a key commitment.
pub const ALGORITHM_AES256GCM_STREAM: u8 = 1;
/// Default plaintext bytes per segment.
pub const DEFAULT_SEGMENT_SIZE: u32 = 64 * 1024;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u32 = 16;
/// Largest segment size accepted (bounds the decryptor's memory).
pub const MAX_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
/// Largest EDEK a header may carry: the EDEK envelope's own limit, so every header we accept
/// carries an EDEK the envelope parser accepts too.
pub const MAX_EDEK_LEN: usize = crate::edek::MAX_EDEK_LEN;

const SALT_LEN: usize = 32;
const LABEL: &[u8] = b"keyhold/stream/v1";

/// Why a stream could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The bytes do not start with the Keyhold stream magic.
    #[error("not a Keyhold encrypted stream")]
    NotEncrypted,
    /// A format version this build cannot read.
    #[error("unsupported encrypted stream version {0}")]
    UnsupportedVersion(u8),
    /// An algorithm id this build cannot read.
    #[error("unsupported stream algorithm {0}")]
    UnsupportedAlgorithm(u8),
    /// The header is structurally invalid.
    #[error("malformed encrypted stream header")]
    MalformedHeader,
    /// The stream ended before its header or its final segment was complete.
    #[error("encrypted stream is truncated")]
    Truncated,
    /// The stream belongs to another tenant than the one asked for.
    #[error("the encrypted stream belongs to a different tenant")]
    TenantMismatch,
    /// Wrong key, or a segment or header byte was altered, reordered or removed.
    #[error("decryption failed")]
    DecryptFailed,
    /// Too many segments for the 32-bit counter (over 256 TiB at the default segment size).
    #[error("stream too long")]
    TooLong,
    /// Bad arguments to the encryptor (segment size, tenant id or EDEK length out of range).
    #[error("invalid stream parameters")]
    InvalidParameters,
    /// No randomness for the salt.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The crypto backend refused an operation.
    #[error("encryption failed")]
    EncryptFailed,
}

/// The header of an encrypted stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Plaintext bytes per segment.
    pub segment_size: u32,
    /// The tenant the stream was encrypted for.
    pub tenant_id: String,
    /// The EDEK that wraps the stream's DEK (opaque here; the proxy reads it).
    pub edek: Vec<u8>,
    salt: [u8; SALT_LEN],
    commitment: [u8; COMMITMENT_LEN],
}

/// Result of trying to read a header from the start of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderParse {
    /// More bytes are needed; at least this many in total.
    NeedMore(usize),
    /// The header, and how many bytes it took.
    Complete(StreamHeader, usize),
}

impl StreamHeader {
    fn encode_without_commitment(&self) -> Result<Vec<u8>, StreamError> {
        let tenant_len =
            u16::try_from(self.tenant_id.len()).map_err(|_| StreamError::InvalidParameters)?;
        let edek_len =
            u32::try_from(self.edek.len()).map_err(|_| StreamError::InvalidParameters)?;
        let mut out = Vec::with_capacity(
            15 + self.tenant_id.len() + self.edek.len() + SALT_LEN + COMMITMENT_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(ALGORITHM_AES256GCM_STREAM);
        out.extend_from_slice(&self.segment_size.to_be_bytes());
        out.extend_from_slice(&tenant_len.to_be_bytes());
        out.extend_from_slice(self.tenant_id.as_bytes());
        out.extend_from_slice(&edek_len.to_be_bytes());
        out.extend_from_slice(&self.edek);
        out.extend_from_slice(&self.salt);
        Ok(out)
    }

    /// The header's bytes, as written at the start of the stream.
    pub fn encode(&self) -> Result<Vec<u8>, StreamError> {
        let mut out = self.encode_without_commitment()?;
        out.extend_from_slice(&self.commitment);
        Ok(out)
    }

    /// Reads a header from the start of `bytes`, or says how many bytes it needs.
    pub fn parse(bytes: &[u8]) -> Result<HeaderParse, StreamError> {
        let mut reader = Reader { bytes, pos: 0 };
        macro_rules! take {
            ($n:expr) => {
                match reader.take($n) {
                    Some(v) => v,
                    None => return Ok(HeaderParse::NeedMore(reader.pos + $n)),
                }
            };
        }
        if take!(MAGIC.len()) != MAGIC {
            return Err(StreamError::NotEncrypted);
        }
        let version = take!(1).first().copied().unwrap_or_default();
        if version != VERSION {
            return Err(StreamError::UnsupportedVersion(version));
        }
        let algorithm = take!(1).first().copied().unwrap_or_default();
        if algorithm != ALGORITHM_AES256GCM_STREAM {
            return Err(StreamError::UnsupportedAlgorithm(algorithm));
        }
        let segment_size = be_u32(take!(4))?;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
            return Err(StreamError::MalformedHeader);
        }
        let tenant_len = usize::from(be_u16(take!(2))?);
        if tenant_len == 0 || tenant_len > MAX_TENANT_ID_LEN {
            return Err(StreamError::MalformedHeader);
        }
        let tenant_id = core::str::from_utf8(take!(tenant_len))
            .map_err(|_| StreamError::MalformedHeader)?
            .to_owned();
        let edek_len =
            usize::try_from(be_u32(take!(4))?).map_err(|_| StreamError::MalformedHeader)?;
        if edek_len == 0 || edek_len > MAX_EDEK_LEN {
            return Err(StreamError::MalformedHeader);
        }
        let edek = take!(edek_len).to_vec();
        let salt: [u8; SALT_LEN] =
            take!(SALT_LEN).try_into().map_err(|_| StreamError::MalformedHeader)?;
        let commitment: [u8; COMMITMENT_LEN] =
            take!(COMMITMENT_LEN).try_into().map_err(|_| StreamError::MalformedHeader)?;
        Ok(HeaderParse::Complete(
            StreamHeader { segment_size, tenant_id, edek, salt, commitment },
            reader.pos,
        ))
    }

    fn keys(&self, dek: &Dek) -> Result<kdf::DerivedKeys, StreamError> {
        let digest = Sha256::digest(self.encode_without_commitment()?);
        kdf::derive(dek.expose_secret(), &self.salt, LABEL, &digest)
            .map_err(|_| StreamError::EncryptFailed)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }
}

fn be_u32(b: &[u8]) -> Result<u32, StreamError> {
    Ok(u32::from_be_bytes(b.try_into().map_err(|_| StreamError::MalformedHeader)?))
}

fn be_u16(b: &[u8]) -> Result<u16, StreamError> {
    Ok(u16::from_be_bytes(b.try_into().map_err(|_| StreamError::MalformedHeader)?))
}

fn segment_nonce(counter: u32, last: bool) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    if let Some(c) = nonce.get_mut(7..11) {
        c.copy_from_slice(&counter.to_be_bytes());
    }
    nonce[NONCE_LEN - 1] = u8::from(last);
    nonce
}

/// Encrypts a stream segment by segment. Feed plaintext with [`update`](Self::update), then
/// call [`finish`](Self::finish) exactly once.
pub struct StreamEncryptor {
    key: Aes256GcmKey,
    segment_size: usize,
    counter: u32,
    pending: Vec<u8>,
}

impl core::fmt::Debug for StreamEncryptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StreamEncryptor").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl StreamEncryptor {
    /// Starts a stream; returns the encryptor and the header bytes to write first.
    pub fn new(
        dek: &Dek,
        tenant_id: &str,
        edek: &[u8],
        segment_size: u32,
    ) -> Result<(Self, Vec<u8>), StreamError> {
        if tenant_id.is_empty()
            || tenant_id.len() > MAX_TENANT_ID_LEN
            || edek.is_empty()
            || edek.len() > MAX_EDEK_LEN
            || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size)
        {
            return Err(StreamError::InvalidParameters);
        }
        let mut header = StreamHeader {
            segment_size,
            tenant_id: tenant_id.to_owned(),
            edek: edek.to_vec(),
            salt: random_array()?,
            commitment: [0; COMMITMENT_LEN],
        };
        let keys = header.keys(dek)?;
        header.commitment = keys.commitment;
        let key =
            Aes256GcmKey::new(&keys.encryption_key).map_err(|_| StreamError::EncryptFailed)?;
        let segment_size =
            usize::try_from(segment_size).map_err(|_| StreamError::InvalidParameters)?;
        Ok((
            Self { key, segment_size, counter: 0, pending: Vec::with_capacity(segment_size) },
            header.encode()?,
        ))
    }

    /// Encrypts what it can of `plaintext`, appending whole sealed segments to `out`. Holds
    /// back at most one segment, because only `finish` knows which segment is the last.
    pub fn update(&mut self, mut plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        while !plaintext.is_empty() {
            if self.pending.len() == self.segment_size {
                self.seal_pending(false, out)?;
            }
            // A whole segment with more input after it: seal straight from the caller's slice.
            if self.pending.is_empty() && plaintext.len() > self.segment_size {
                let (segment, rest) = plaintext.split_at(self.segment_size);
                self.seal(segment, false, out)?;
                plaintext = rest;
                continue;
            }
            let room = self.segment_size - self.pending.len();
            let (now, later) = plaintext.split_at(room.min(plaintext.len()));
            self.pending.extend_from_slice(now);
            plaintext = later;
        }
        Ok(())
    }

    /// Seals the final segment (possibly empty) and appends it to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.seal_pending(true, out)
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let pending = core::mem::take(&mut self.pending);
        let result = self.seal(&pending, last, out);
        self.pending = pending;
        self.pending.clear();
        result
    }

    fn seal(&mut self, segment: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let nonce = segment_nonce(self.counter, last);
        let start = out.len();
        out.resize(start + segment.len(), 0);
        let body = out.get_mut(start..).ok_or(StreamError::EncryptFailed)?;
        let tag =
            self.key.seal_to(&nonce, &[], segment, body).map_err(|_| StreamError::EncryptFailed)?;
        out.extend_from_slice(&tag);
        self.counter = self.counter.checked_add(1).ok_or(StreamError::TooLong)?;
        Ok(())
    }
}

/// Decrypts the segments of a stream whose header was read with [`StreamHeader::parse`].
pub struct StreamDecryptor {
    key: Aes256GcmKey,
    sealed_segment: usize,
    counter: u32,
    pending: Vec<u8>,
}

impl core::fmt::Debug for StreamDecryptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StreamDecryptor").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl StreamDecryptor {
    /// Checks the key commitment and prepares to decrypt the segments after the header.
    /// `expected_tenant`, when given, must match the header's tenant.
    pub fn new(
        dek: &Dek,
        header: &StreamHeader,
        expected_tenant: Option<&str>,
    ) -> Result<Self, StreamError> {
        if expected_tenant.is_some_and(|tenant| tenant != header.tenant_id) {
            return Err(StreamError::TenantMismatch);
        }
        let keys = header.keys(dek)?;
        if !kdf::commitment_matches(&keys.commitment, &header.commitment) {
            return Err(StreamError::DecryptFailed);
        }
        let key =
            Aes256GcmKey::new(&keys.encryption_key).map_err(|_| StreamError::DecryptFailed)?;
        let segment_size =
            usize::try_from(header.segment_size).map_err(|_| StreamError::MalformedHeader)?;
        let sealed_segment = segment_size + TAG_LEN;
        Ok(Self {
            key,
            sealed_segment,
            counter: 0,
            pending: Vec::with_capacity(sealed_segment + 1),
        })
    }

    /// Decrypts every segment of `ciphertext` known not to be the last, appending plaintext to
    /// `out`. Holds back one segment until more bytes or `finish` arrive.
    pub fn update(&mut self, mut ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        while !ciphertext.is_empty() {
            if self.pending.len() == self.sealed_segment {
                // More bytes follow, so the pending segment is not the last one.
                self.open_pending(false, out)?;
            }
            if self.pending.is_empty() && ciphertext.len() > self.sealed_segment {
                let (segment, rest) = ciphertext.split_at(self.sealed_segment);
                self.open(segment, false, out)?;
                ciphertext = rest;
                continue;
            }
            let room = self.sealed_segment - self.pending.len();
            let (now, later) = ciphertext.split_at(room.min(ciphertext.len()));
            self.pending.extend_from_slice(now);
            ciphertext = later;
        }
        Ok(())
    }

    /// Decrypts the final segment. Only when this returns `Ok` is the stream known complete.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.pending.len() < TAG_LEN {
            return Err(StreamError::Truncated);
        }
        self.open_pending(true, out)
    }

    fn open_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let pending = core::mem::take(&mut self.pending);
        let result = self.open(&pending, last, out);
        self.pending = pending;
        self.pending.clear();
        result
    }

    fn open(&mut self, sealed: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let nonce = segment_nonce(self.counter, last);
        let (ciphertext, tag) =
            sealed.split_last_chunk::<TAG_LEN>().ok_or(StreamError::Truncated)?;
        let start = out.len();
        out.resize(start + ciphertext.len(), 0);
        let body = out.get_mut(start..).ok_or(StreamError::DecryptFailed)?;
        if self.key.open_to(&nonce, &[], ciphertext, tag, body).is_err() {
            out.truncate(start);
            return Err(StreamError::DecryptFailed);
        }
        self.counter = self.counter.checked_add(1).ok_or(StreamError::TooLong)?;
        Ok(())
    }
}

/// Encrypts a whole in-memory buffer as one stream (header included).
pub fn encrypt_all(
    dek: &Dek,
    tenant_id: &str,
    edek: &[u8],
    segment_size: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, StreamError> {
    let (mut enc, mut out) = StreamEncryptor::new(dek, tenant_id, edek, segment_size)?;
    out.reserve(plaintext.len() + (plaintext.len() / segment_size.max(1) as usize + 1) * TAG_LEN);
    enc.update(plaintext, &mut out)?;
    enc.finish(&mut out)?;
    Ok(out)
}

/// Decrypts a whole in-memory stream; `dek_for` is given the header and returns the DEK.
pub fn decrypt_all<E>(
    bytes: &[u8],
    expected_tenant: Option<&str>,
    dek_for: impl FnOnce(&StreamHeader) -> Result<Dek, E>,
) -> Result<Result<Vec<u8>, StreamError>, E> {
    let (header, used) = match StreamHeader::parse(bytes) {
        Ok(HeaderParse::Complete(h, used)) => (h, used),
        Ok(HeaderParse::NeedMore(_)) => return Ok(Err(StreamError::Truncated)),
        Err(e) => return Ok(Err(e)),
    };
    let dek = dek_for(&header)?;
    let run = || {
        let mut dec = StreamDecryptor::new(&dek, &header, expected_tenant)?;
        let mut out = Vec::with_capacity(bytes.len().saturating_sub(used));
        dec.update(bytes.get(used..).unwrap_or_default(), &mut out)?;
        dec.finish(&mut out)?;
        Ok(out)
    };
    Ok(run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encrypt(dek: &Dek, pt: &[u8], seg: u32) -> Vec<u8> {
        encrypt_all(dek, "tenant", b"edek-bytes", seg, pt).unwrap()
    }

    fn decrypt(dek: &Dek, ct: &[u8]) -> Result<Vec<u8>, StreamError> {
        decrypt_all::<()>(ct, Some("tenant"), |_| Ok(dek.clone())).unwrap()
    }

    #[test]
    fn round_trips_at_segment_boundaries() {
        let dek = Dek::generate().unwrap();
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ct = encrypt(&dek, &pt, 16);
            assert_eq!(decrypt(&dek, &ct).unwrap(), pt, "len {len}");
        }
    }

    #[test]
    fn header_round_trip_and_incremental_parse() {
        let dek = Dek::generate().unwrap();
        let ct = encrypt(&dek, b"hello", 1024);
        let HeaderParse::Complete(header, used) = StreamHeader::parse(&ct).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(header.tenant_id, "tenant");
        assert_eq!(header.edek, b"edek-bytes");
        assert_eq!(header.encode().unwrap(), ct[..used]);
        for cut in 0..used {
            match StreamHeader::parse(&ct[..cut]).unwrap() {
                HeaderParse::NeedMore(n) => assert!(n > cut),
                HeaderParse::Complete(..) => panic!("complete at {cut}"),
            }
        }
    }

    #[test]
    fn truncation_reorder_and_tamper_fail() {
        let dek = Dek::generate().unwrap();
        let pt = vec![7u8; 100];
        let ct = encrypt(&dek, &pt, 16);
        let HeaderParse::Complete(_, used) = StreamHeader::parse(&ct).unwrap() else { panic!() };
        // Drop the last whole segment: the new last segment was sealed as non-final.
        let seg = 16 + TAG_LEN;
        let cut = ct.len() - (ct.len() - used) % seg;
        assert_eq!(decrypt(&dek, &ct[..cut]), Err(StreamError::DecryptFailed));
        assert!(decrypt(&dek, &ct[..ct.len() - 1]).is_err());
        assert_eq!(decrypt(&dek, &ct[..used]), Err(StreamError::Truncated));
        // Swap two segments.
        let mut swapped = ct.clone();
        let (a, b) = (used, used + seg);
        let first: Vec<u8> = swapped[a..a + seg].to_vec();
        let second: Vec<u8> = swapped[b..b + seg].to_vec();
        swapped[a..a + seg].copy_from_slice(&second);
        swapped[b..b + seg].copy_from_slice(&first);
        assert_eq!(decrypt(&dek, &swapped), Err(StreamError::DecryptFailed));
        // Wrong key is caught by the commitment.
        assert_eq!(decrypt(&Dek::generate().unwrap(), &ct), Err(StreamError::DecryptFailed));
        // Wrong tenant.
        let wrong = decrypt_all::<()>(&ct, Some("other"), |_| Ok(dek.clone())).unwrap();
        assert_eq!(wrong, Err(StreamError::TenantMismatch));
    }

    #[test]
    fn every_header_byte_is_bound() {
        let dek = Dek::generate().unwrap();
        let ct = encrypt(&dek, b"abc", 64);
        let HeaderParse::Complete(_, used) = StreamHeader::parse(&ct).unwrap() else { panic!() };
        for i in 0..used {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            let result = decrypt_all::<()>(&bad, None, |_| Ok(dek.clone())).unwrap();
            assert!(result.is_err(), "header byte {i} not bound");
        }
    }

    #[test]
    fn bad_parameters() {
        let dek = Dek::generate().unwrap();
        assert!(StreamEncryptor::new(&dek, "", b"e", 1024).is_err());
        assert!(StreamEncryptor::new(&dek, "t", b"", 1024).is_err());
        assert!(StreamEncryptor::new(&dek, "t", b"e", 8).is_err());
        assert!(StreamEncryptor::new(&dek, "t", b"e", MAX_SEGMENT_SIZE + 1).is_err());
    }

    proptest! {
        #[test]
        fn prop_round_trip_in_random_chunks(pt in proptest::collection::vec(any::<u8>(), 0..3000), seg in 16u32..200, chunk in 1usize..500) {
            let dek = Dek::generate().unwrap();
            let (mut enc, mut ct) = StreamEncryptor::new(&dek, "t", b"edek", seg).unwrap();
            for piece in pt.chunks(chunk) {
                enc.update(piece, &mut ct).unwrap();
            }
            enc.finish(&mut ct).unwrap();
            let HeaderParse::Complete(header, used) = StreamHeader::parse(&ct).unwrap() else { panic!() };
            let mut dec = StreamDecryptor::new(&dek, &header, Some("t")).unwrap();
            let mut out = Vec::new();
            for piece in ct[used..].chunks(chunk) {
                dec.update(piece, &mut out).unwrap();
            }
            dec.finish(&mut out).unwrap();
            prop_assert_eq!(out, pt);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let dek = Dek::from_bytes([1; 32]);
            let _ = decrypt_all::<()>(&bytes, None, |_| Ok(dek.clone()));
        }
    }
}
