//! AES-256-GCM, behind one small type so the fast backend is a build choice, not a rewrite.
//!
//! The default backend is AWS-LC (`aws-lc` feature): on x86-64 with AVX-512/VAES it is about
//! four times faster than the pure-Rust RustCrypto implementation (`rust-crypto` feature), which
//! remains available for targets where AWS-LC does not build. The measurements that chose it are
//! in `docs/benchmarks.md` (`cargo bench -p keyhold-core --bench aead`).
//!
//! Every method has an in-place and an out-of-place form; the formats use whichever avoids a
//! copy. Failures are deliberately opaque: a caller learns *that* a ciphertext did not
//! authenticate, never why.

/// Length of an AES-GCM nonce (IV) in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;
/// Largest plaintext one AES-GCM invocation may encrypt (NIST SP 800-38D: 2^39 − 256 bits).
pub const MAX_PLAINTEXT_LEN: u64 = (1 << 36) - 32;

/// An AES-256-GCM operation failed: the ciphertext did not authenticate, a buffer had the wrong
/// length, or the backend refused. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-256-GCM operation failed")]
pub struct AeadError;

#[cfg(feature = "aws-lc")]
mod backend {
    use super::{AeadError, NONCE_LEN, TAG_LEN};
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    // AWS-LC frees (and, through OPENSSL_free, cleanses) the expanded key when this is dropped.
    pub(super) struct Key(LessSafeKey);

    impl Key {
        pub(super) fn new(key: &[u8; 32]) -> Result<Self, AeadError> {
            let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| AeadError)?;
            Ok(Self(LessSafeKey::new(unbound)))
        }

        pub(super) fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> Result<[u8; TAG_LEN], AeadError> {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            let tag = self
                .0
                .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
                .map_err(|_| AeadError)?;
            tag.as_ref().try_into().map_err(|_| AeadError)
        }

        pub(super) fn seal_to(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            plaintext: &[u8],
            out: &mut [u8],
        ) -> Result<[u8; TAG_LEN], AeadError> {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            let mut tag = [0u8; TAG_LEN];
            self.0
                .seal_out_of_place_scatter(nonce, Aad::from(aad), plaintext, out, &[], &mut tag)
                .map_err(|_| AeadError)?;
            Ok(tag)
        }

        pub(super) fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), AeadError> {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            self.0
                .open_in_place_separate_tag(nonce, Aad::from(aad), tag, in_out)
                .map(|_| ())
                .map_err(|_| AeadError)
        }

        pub(super) fn open_to(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            ciphertext: &[u8],
            tag: &[u8; TAG_LEN],
            out: &mut [u8],
        ) -> Result<(), AeadError> {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            self.0
                .open_separate_gather(nonce, Aad::from(aad), ciphertext, tag, out)
                .map_err(|_| AeadError)
        }
    }
}

#[cfg(all(feature = "rust-crypto", not(feature = "aws-lc")))]
mod backend {
    use super::{AeadError, NONCE_LEN, TAG_LEN};
    use aes_gcm::aead::{AeadInOut, KeyInit, inout::InOutBuf};
    use aes_gcm::{Aes256Gcm, Nonce, Tag};

    pub(super) struct Key(Aes256Gcm);

    impl Key {
        pub(super) fn new(key: &[u8; 32]) -> Result<Self, AeadError> {
            Aes256Gcm::new_from_slice(key).map(Self).map_err(|_| AeadError)
        }

        pub(super) fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> Result<[u8; TAG_LEN], AeadError> {
            let tag = self
                .0
                .encrypt_inout_detached(&Nonce::from(*nonce), aad, in_out.into())
                .map_err(|_| AeadError)?;
            Ok(tag.into())
        }

        pub(super) fn seal_to(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            plaintext: &[u8],
            out: &mut [u8],
        ) -> Result<[u8; TAG_LEN], AeadError> {
            let buf = InOutBuf::new(plaintext, out).map_err(|_| AeadError)?;
            let tag = self
                .0
                .encrypt_inout_detached(&Nonce::from(*nonce), aad, buf)
                .map_err(|_| AeadError)?;
            Ok(tag.into())
        }

        pub(super) fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), AeadError> {
            self.0
                .decrypt_inout_detached(&Nonce::from(*nonce), aad, in_out.into(), &Tag::from(*tag))
                .map_err(|_| AeadError)
        }

        pub(super) fn open_to(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            ciphertext: &[u8],
            tag: &[u8; TAG_LEN],
            out: &mut [u8],
        ) -> Result<(), AeadError> {
            let buf = InOutBuf::new(ciphertext, out).map_err(|_| AeadError)?;
            let result = self
                .0
                .decrypt_inout_detached(&Nonce::from(*nonce), aad, buf, &Tag::from(*tag))
                .map_err(|_| AeadError);
            if result.is_err() {
                // Never hand back unauthenticated plaintext.
                out.fill(0);
            }
            result
        }
    }
}

#[cfg(not(any(feature = "aws-lc", feature = "rust-crypto")))]
compile_error!(
    "keyhold-core needs an AES-GCM backend: enable the `aws-lc` or `rust-crypto` feature"
);

/// An expanded AES-256-GCM key. Build it once per data key and reuse it for every field.
pub struct Aes256GcmKey(backend::Key);

impl Aes256GcmKey {
    /// Expands a 256-bit key.
    pub fn new(key: &[u8; 32]) -> Result<Self, AeadError> {
        backend::Key::new(key).map(Self)
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        check_len(in_out.len())?;
        self.0.seal_in_place(nonce, aad, in_out)
    }

    /// Encrypts `plaintext` into `out` (same length) and returns the tag.
    pub fn seal_to(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        check_len(plaintext.len())?;
        if out.len() != plaintext.len() {
            return Err(AeadError);
        }
        self.0.seal_to(nonce, aad, plaintext, out)
    }

    /// Authenticates and decrypts `in_out` in place.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        check_len(in_out.len())?;
        self.0.open_in_place(nonce, aad, in_out, tag)
    }

    /// Authenticates `ciphertext` and decrypts it into `out` (same length).
    pub fn open_to(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<(), AeadError> {
        check_len(ciphertext.len())?;
        if out.len() != ciphertext.len() {
            return Err(AeadError);
        }
        self.0.open_to(nonce, aad, ciphertext, tag, out)
    }
}

impl core::fmt::Debug for Aes256GcmKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Aes256GcmKey([REDACTED])")
    }
}

fn check_len(len: usize) -> Result<(), AeadError> {
    if u64::try_from(len).map_err(|_| AeadError)? > MAX_PLAINTEXT_LEN {
        return Err(AeadError);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // NIST GCM test vector (gcmEncryptExtIV256.rsp, Count 0 of [Keylen = 256] [IVlen = 96]
    // [PTlen = 128] [AADlen = 128] [Taglen = 128]) — also Test Case 16 of the GCM spec.
    #[test]
    fn known_answer_gcm_spec_test_case_16() {
        let key: [u8; 32] = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .try_into()
            .unwrap();
        let nonce: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let pt = hex(concat!(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ));
        let ct = hex(concat!(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa",
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        ));
        let tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");

        let key = Aes256GcmKey::new(&key).unwrap();
        let mut buf = pt.clone();
        let got_tag = key.seal_in_place(&nonce, &aad, &mut buf).unwrap();
        assert_eq!(buf, ct);
        assert_eq!(got_tag.to_vec(), tag);

        let mut out = vec![0u8; pt.len()];
        let got_tag = key.seal_to(&nonce, &aad, &pt, &mut out).unwrap();
        assert_eq!(out, ct);
        assert_eq!(got_tag.to_vec(), tag);

        let tag: [u8; 16] = tag.try_into().unwrap();
        key.open_in_place(&nonce, &aad, &mut buf, &tag).unwrap();
        assert_eq!(buf, pt);
        let mut back = vec![0u8; ct.len()];
        key.open_to(&nonce, &aad, &ct, &tag, &mut back).unwrap();
        assert_eq!(back, pt);
    }

    #[test]
    fn tampering_is_refused() {
        let key = Aes256GcmKey::new(&[9; 32]).unwrap();
        let nonce = [1; NONCE_LEN];
        let mut buf = b"attack at dawn".to_vec();
        let tag = key.seal_in_place(&nonce, b"aad", &mut buf).unwrap();

        let mut wrong_aad = buf.clone();
        assert_eq!(key.open_in_place(&nonce, b"aaD", &mut wrong_aad, &tag), Err(AeadError));

        let mut flipped = buf.clone();
        flipped[0] ^= 1;
        let mut out = vec![0u8; flipped.len()];
        assert_eq!(key.open_to(&nonce, b"aad", &flipped, &tag, &mut out), Err(AeadError));

        let mut bad_tag = tag;
        bad_tag[15] ^= 0x80;
        assert_eq!(key.open_in_place(&nonce, b"aad", &mut buf.clone(), &bad_tag), Err(AeadError));

        let mut short = vec![0u8; 3];
        assert_eq!(key.open_to(&nonce, b"aad", &buf, &tag, &mut short), Err(AeadError));
    }
}
