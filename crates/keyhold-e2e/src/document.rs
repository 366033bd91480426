//! End-to-end encrypted documents and the grants that let groups and users read them.
//!
//! A document is encrypted once: AES-256-GCM under a key derived from a fresh [`Plaintext`], with
//! the document id and the author device's signing key as associated data, and signed by that
//! device (Ed25519) over everything, so readers and the server can check who wrote it and that
//! nothing changed. The signed header commits to the document key (a second key derived from the
//! same [`Plaintext`]): AES-GCM alone is not key-committing, and without the commitment an author
//! could grant two recipients two keys that open one ciphertext to two different plaintexts. Each [`Grant`] carries the same plaintext encrypted to one group's or user's
//! public key, signed by the device that granted it. Granting to someone new adds a grant;
//! revoking deletes one; the document itself never changes.

use ed25519_dalek::{Signature, VerifyingKey};
use keyhold_core::aead::{Aes256GcmKey, NONCE_LEN, TAG_LEN};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::keys::DeviceKeys;
use crate::pre::{self, EncryptedValue, Plaintext, PreError, PrivateKey, PublicKey};

const DOCUMENT_DOMAIN: &[u8] = b"keyhold-e2e-v1 document";
const GRANT_DOMAIN: &[u8] = b"keyhold-e2e-v1 grant";
pub(crate) const DOCUMENT_KEY_INFO: &[u8] = b"keyhold-e2e-v1 document key";
const DOCUMENT_COMMITMENT_INFO: &[u8] = b"keyhold-e2e-v2 document key commitment";
/// The version written: 2 adds the key commitment. Version 1 documents (no commitment) are still
/// read, but no longer accepted for storage ([`EncryptedDocument::is_committed`]).
const DOCUMENT_VERSION: u8 = 2;
const DOCUMENT_VERSION_1: u8 = 1;
/// Longest document, group or user id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Why a document or grant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The author's (or granter's) signature does not verify: the document, grant or one of
    /// their fields was altered, or the signer is not who it claims.
    #[error("signature does not verify: the document or grant was altered")]
    Signature,
    /// The document key could not be recovered with this key: not a recipient (or no longer),
    /// a revoked device, or an altered key value.
    #[error("this key cannot open the document (no access, or revoked)")]
    NoAccess,
    /// The body failed authentication although the key was recovered.
    #[error("the document body failed authentication")]
    Body,
    /// The recovered key is not the one the document's signed header commits to: the grant
    /// holds another key than the author encrypted with.
    #[error("the document key does not match the document's key commitment")]
    KeyCommitment,
    /// A version-1 document (no key commitment), refused for storage.
    #[error("version-1 documents (without key commitment) are no longer accepted")]
    Uncommitted,
    /// Bytes that are not a document or grant of this version.
    #[error("malformed document: {0}")]
    Malformed(&'static str),
    /// An id empty or longer than [`MAX_ID_LEN`].
    #[error("id must be 1..=256 bytes")]
    Id,
    /// The AEAD failed to seal.
    #[error("AES-GCM failed")]
    Aead,
}

impl From<PreError> for DocumentError {
    fn from(e: PreError) -> Self {
        match e {
            PreError::Decrypt => Self::NoAccess,
            PreError::Malformed(m) => Self::Malformed(m),
            PreError::TooManyHops => Self::Malformed("too many hops"),
        }
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Recipient {
    /// Every current member of the group.
    Group(String),
    /// One user (all of the user's authorized devices).
    User(String),
}

impl Recipient {
    fn tag(&self) -> (u8, &str) {
        match self {
            Self::Group(id) => (1, id),
            Self::User(id) => (2, id),
        }
    }
}

/// An encrypted, signed document. Its bytes are the same for every reader and never change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedDocument {
    id: String,
    author: VerifyingKey,
    nonce: [u8; NONCE_LEN],
    /// Commitment to the document key (`None`: a version-1 document).
    commitment: Option<[u8; 32]>,
    /// Ciphertext followed by the GCM tag.
    ciphertext: Vec<u8>,
    signature: [u8; 64],
}

/// One recipient's access to a document: the document's [`Plaintext`] encrypted to the
/// recipient's public key, signed by the device that made the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    document_id: String,
    recipient: Recipient,
    value: EncryptedValue,
    granted_by: VerifyingKey,
    signature: [u8; 64],
}

fn check_id(id: &str) -> Result<(), DocumentError> {
    if id.is_empty() || id.len() > MAX_ID_LEN { Err(DocumentError::Id) } else { Ok(()) }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Ids are at most MAX_ID_LEN bytes, checked before any encoding.
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn document_aad(id: &str, author: &VerifyingKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DOCUMENT_DOMAIN.len() + 2 + id.len() + 32);
    aad.extend_from_slice(DOCUMENT_DOMAIN);
    put_str(&mut aad, id);
    aad.extend_from_slice(author.as_bytes());
    aad
}

/// Encrypts `plaintext` once, signs it with `author`, and grants it to each recipient.
pub fn encrypt(
    id: &str,
    plaintext: &[u8],
    author: &DeviceKeys,
    recipients: &[(Recipient, PublicKey)],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(EncryptedDocument, Vec<Grant>), DocumentError> {
    check_id(id)?;
    for (r, _) in recipients {
        check_id(r.tag().1)?;
    }
    let m = Plaintext::generate(rng);
    let key =
        Aes256GcmKey::new(&m.derive_key(DOCUMENT_KEY_INFO)).map_err(|_| DocumentError::Aead)?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let author_key = author.public().signing;
    let mut ciphertext = Vec::with_capacity(plaintext.len() + TAG_LEN);
    ciphertext.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place(&nonce, &document_aad(id, &author_key), &mut ciphertext)
        .map_err(|_| DocumentError::Aead)?;
    ciphertext.extend_from_slice(&tag);
    let mut doc = EncryptedDocument {
        id: id.to_owned(),
        author: author_key,
        nonce,
        commitment: Some(*m.derive_key(DOCUMENT_COMMITMENT_INFO)),
        ciphertext,
        signature: [0; 64],
    };
    doc.signature = author.sign(&doc.signed_bytes());
    let grants = recipients
        .iter()
        .map(|(r, pk)| Grant::new(id, r.clone(), pre::encrypt(&m, pk, rng), author))
        .collect();
    Ok((doc, grants))
}

impl EncryptedDocument {
    /// The document's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The signing key of the device that wrote it.
    pub fn author(&self) -> &VerifyingKey {
        &self.author
    }

    /// Whether the document commits to its key (version 2 and later). The service stores only
    /// these; version-1 documents written before are still read.
    pub fn is_committed(&self) -> bool {
        self.commitment.is_some()
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = document_aad(&self.id, &self.author);
        out.extend_from_slice(&self.nonce);
        if let Some(c) = &self.commitment {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&(self.ciphertext.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Checks the author's signature (readers and the server both do).
    pub fn verify(&self) -> Result<(), DocumentError> {
        self.author
            .verify_strict(&self.signed_bytes(), &Signature::from_bytes(&self.signature))
            .map_err(|_| DocumentError::Signature)
    }

    /// Verifies the signature, recovers the document key from `value` (a grant's value,
    /// transformed to `reader` by the server where needed) and decrypts.
    pub fn open(
        &self,
        value: &EncryptedValue,
        reader: &PrivateKey,
    ) -> Result<Zeroizing<Vec<u8>>, DocumentError> {
        self.verify()?;
        let m = pre::decrypt(value, reader)?;
        self.open_with(&m)
    }

    pub(crate) fn open_with(&self, m: &Plaintext) -> Result<Zeroizing<Vec<u8>>, DocumentError> {
        if let Some(commitment) = &self.commitment {
            let derived = m.derive_key(DOCUMENT_COMMITMENT_INFO);
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&derived[..], &commitment[..])) {
                return Err(DocumentError::KeyCommitment);
            }
        }
        let key =
            Aes256GcmKey::new(&m.derive_key(DOCUMENT_KEY_INFO)).map_err(|_| DocumentError::Aead)?;
        let split = self.ciphertext.len().checked_sub(TAG_LEN).ok_or(DocumentError::Body)?;
        let (body, tag) = self.ciphertext.split_at(split);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| DocumentError::Body)?;
        let mut out = Zeroizing::new(body.to_vec());
        key.open_in_place(&self.nonce, &document_aad(&self.id, &self.author), &mut out, &tag)
            .map_err(|_| DocumentError::Body)?;
        Ok(out)
    }

    /// Tries a raw AES-256 key on the body (the attack tests).
    #[cfg(test)]
    pub(crate) fn open_with_raw_key(&self, raw: &[u8; 32]) -> bool {
        let Ok(key) = Aes256GcmKey::new(raw) else { return false };
        let Some(split) = self.ciphertext.len().checked_sub(TAG_LEN) else { return false };
        let (body, tag) = self.ciphertext.split_at(split);
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else { return false };
        let mut out = body.to_vec();
        key.open_in_place(&self.nonce, &document_aad(&self.id, &self.author), &mut out, &tag)
            .is_ok()
    }

    /// Grants the document to one more recipient: the reader recovers the document key (as in
    /// [`EncryptedDocument::open`]) and encrypts it to `recipient_key`. The document is unchanged.
    pub fn grant(
        &self,
        value: &EncryptedValue,
        reader: &PrivateKey,
        granter: &DeviceKeys,
        recipient: Recipient,
        recipient_key: &PublicKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Grant, DocumentError> {
        check_id(recipient.tag().1)?;
        self.verify()?;
        let m = pre::decrypt(value, reader)?;
        // Check the key really opens this document before handing it on.
        self.open_with(&m)?;
        Ok(Grant::new(&self.id, recipient, pre::encrypt(&m, recipient_key, rng), granter))
    }

    /// `version ‖ id ‖ author ‖ nonce ‖ commitment (version 2) ‖ signature ‖ ciphertext‖tag`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            1 + 2 + self.id.len() + 32 + NONCE_LEN + 32 + 64 + self.ciphertext.len(),
        );
        out.push(if self.commitment.is_some() { DOCUMENT_VERSION } else { DOCUMENT_VERSION_1 });
        put_str(&mut out, &self.id);
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.nonce);
        if let Some(c) = &self.commitment {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses [`EncryptedDocument::to_bytes`] (the signature is checked by `verify`/`open`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DocumentError> {
        let mut r = Reader(bytes);
        let [version] = r.array::<1>()?;
        if version != DOCUMENT_VERSION && version != DOCUMENT_VERSION_1 {
            return Err(DocumentError::Malformed("unknown document version"));
        }
        let id = r.string()?;
        let author = VerifyingKey::from_bytes(&r.array()?)
            .map_err(|_| DocumentError::Malformed("author key"))?;
        let nonce = r.array()?;
        let commitment = if version == DOCUMENT_VERSION { Some(r.array()?) } else { None };
        let signature = r.array()?;
        if r.0.len() < TAG_LEN {
            return Err(DocumentError::Malformed("truncated"));
        }
        Ok(Self { id, author, nonce, commitment, ciphertext: r.0.to_vec(), signature })
    }
}

impl Grant {
    fn new(
        document_id: &str,
        recipient: Recipient,
        value: EncryptedValue,
        granter: &DeviceKeys,
    ) -> Self {
        let mut g = Self {
            document_id: document_id.to_owned(),
            recipient,
            value,
            granted_by: granter.public().signing,
            signature: [0; 64],
        };
        g.signature = granter.sign(&g.signed_bytes());
        g
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(GRANT_DOMAIN);
        put_str(&mut out, &self.document_id);
        let (kind, id) = self.recipient.tag();
        out.push(kind);
        put_str(&mut out, id);
        out.extend_from_slice(self.granted_by.as_bytes());
        out.extend_from_slice(&self.value.to_bytes());
        out
    }

    /// Checks the granter's signature.
    pub fn verify(&self) -> Result<(), DocumentError> {
        self.granted_by
            .verify_strict(&self.signed_bytes(), &Signature::from_bytes(&self.signature))
            .map_err(|_| DocumentError::Signature)
    }

    /// The document it opens.
    pub fn document_id(&self) -> &str {
        &self.document_id
    }

    /// Who it is for.
    pub fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// The document key encrypted to the recipient's public key.
    pub fn value(&self) -> &EncryptedValue {
        &self.value
    }

    /// The signing key of the device that made the grant.
    pub fn granted_by(&self) -> &VerifyingKey {
        &self.granted_by
    }

    /// `document id ‖ kind ‖ recipient id ‖ granted by ‖ signature ‖ value`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, &self.document_id);
        let (kind, id) = self.recipient.tag();
        out.push(kind);
        put_str(&mut out, id);
        out.extend_from_slice(self.granted_by.as_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.value.to_bytes());
        out
    }

    /// Parses [`Grant::to_bytes`] (the signature is checked by `verify`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DocumentError> {
        let mut r = Reader(bytes);
        let document_id = r.string()?;
        let [kind] = r.array::<1>()?;
        let id = r.string()?;
        let recipient = match kind {
            1 => Recipient::Group(id),
            2 => Recipient::User(id),
            _ => return Err(DocumentError::Malformed("recipient kind")),
        };
        let granted_by = VerifyingKey::from_bytes(&r.array()?)
            .map_err(|_| DocumentError::Malformed("granter key"))?;
        let signature = r.array()?;
        let value = EncryptedValue::from_bytes(r.0)?;
        Ok(Self { document_id, recipient, value, granted_by, signature })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DocumentError> {
        if self.0.len() < N {
            return Err(DocumentError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        head.try_into().map_err(|_| DocumentError::Malformed("truncated"))
    }

    fn string(&mut self) -> Result<String, DocumentError> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        if len == 0 || len > MAX_ID_LEN || self.0.len() < len {
            return Err(DocumentError::Malformed("id"));
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        String::from_utf8(head.to_vec()).map_err(|_| DocumentError::Malformed("id is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    #[test]
    fn encrypt_open_grant_and_refuse_alterations() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let author = DeviceKeys::generate(&mut rng);
        let (alice, bob, eve) = (
            PrivateKey::generate(&mut rng),
            PrivateKey::generate(&mut rng),
            PrivateKey::generate(&mut rng),
        );
        let (doc, grants) = encrypt(
            "doc-1",
            b"quarterly numbers",
            &author,
            &[(Recipient::User("alice".into()), alice.public_key())],
            &mut rng,
        )
        .unwrap();
        let doc = EncryptedDocument::from_bytes(&doc.to_bytes()).unwrap();
        let grant = Grant::from_bytes(&grants[0].to_bytes()).unwrap();
        grant.verify().unwrap();
        assert_eq!(&**doc.open(grant.value(), &alice).unwrap(), b"quarterly numbers");
        assert_eq!(doc.open(grant.value(), &eve).unwrap_err(), DocumentError::NoAccess);

        let to_bob = doc
            .grant(
                grant.value(),
                &alice,
                &author,
                Recipient::User("bob".into()),
                &bob.public_key(),
                &mut rng,
            )
            .unwrap();
        to_bob.verify().unwrap();
        assert_eq!(&**doc.open(to_bob.value(), &bob).unwrap(), b"quarterly numbers");
        // Someone without access cannot make a grant.
        assert!(
            doc.grant(
                grant.value(),
                &eve,
                &author,
                Recipient::User("e".into()),
                &eve.public_key(),
                &mut rng
            )
            .is_err()
        );

        let bytes = doc.to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let r = EncryptedDocument::from_bytes(&bad).and_then(|d| d.open(grant.value(), &alice));
            assert!(r.is_err(), "flip at byte {i} accepted");
            if i > 3 + 5 + 32 + 12 + 32 + 64 {
                // Past the header: the body is covered by the signature.
                assert_eq!(r.unwrap_err(), DocumentError::Signature, "byte {i}");
            }
        }
        let gbytes = grant.to_bytes();
        for i in (0..gbytes.len()).step_by(5) {
            let mut bad = gbytes.clone();
            bad[i] ^= 0x20;
            if let Ok(g) = Grant::from_bytes(&bad) {
                assert!(g.verify().is_err(), "grant flip at {i} verified");
            }
        }
        assert!(encrypt("", b"x", &author, &[], &mut rng).is_err());
        assert!(EncryptedDocument::from_bytes(&[]).is_err());
    }

    /// The signed header commits to the document key: a key that is not the author's (here
    /// another document's, granted under this document's id) is refused as such before any
    /// decryption, and the commitment is part of what the author signed.
    #[test]
    fn documents_commit_to_their_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let author = DeviceKeys::generate(&mut rng);
        let alice = PrivateKey::generate(&mut rng);
        let to_alice = [(Recipient::User("alice".into()), alice.public_key())];
        let (doc, grants) = encrypt("doc", b"one text", &author, &to_alice, &mut rng).unwrap();
        let (_, other) = encrypt("doc", b"another text", &author, &to_alice, &mut rng).unwrap();
        assert_eq!(doc.to_bytes()[0], 2);
        assert!(doc.is_committed());
        assert_eq!(&**doc.open(grants[0].value(), &alice).unwrap(), b"one text");
        assert_eq!(doc.open(other[0].value(), &alice).unwrap_err(), DocumentError::KeyCommitment);
        // Nor can such a key be granted on.
        let granted = doc.grant(
            other[0].value(),
            &alice,
            &author,
            Recipient::User("bob".into()),
            &alice.public_key(),
            &mut rng,
        );
        assert_eq!(granted.unwrap_err(), DocumentError::KeyCommitment);
        // The commitment is signed: replacing it breaks the signature.
        let mut swapped = doc.clone();
        swapped.commitment = Some([7; 32]);
        assert_eq!(swapped.verify(), Err(DocumentError::Signature));
    }

    /// A version-1 document (before key commitments) still parses, re-encodes to the same bytes
    /// and opens; the service no longer stores new ones.
    #[test]
    fn version_1_documents_are_read_but_not_stored() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let user_keys = crate::keys::UserKeys::generate(&mut rng);
        let author = DeviceKeys::generate(&mut rng);
        let to_user = [(Recipient::User("alice".into()), user_keys.public().encryption)];
        let (doc, grants) = encrypt("old", b"written in v1", &author, &to_user, &mut rng).unwrap();
        let mut v1 = doc.clone();
        v1.commitment = None;
        v1.signature = author.sign(&v1.signed_bytes());
        let bytes = v1.to_bytes();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes.len(), doc.to_bytes().len() - 32);
        let parsed = EncryptedDocument::from_bytes(&bytes).unwrap();
        assert_eq!(parsed.to_bytes(), bytes);
        assert!(!parsed.is_committed());
        let value = grants[0].value();
        let user_key = user_keys.encryption_key();
        assert_eq!(&**parsed.open(value, user_key).unwrap(), b"written in v1");

        let mut state = crate::AccessState::new("acme");
        let sealed = crate::PassphraseSealedKey::seal(
            &user_keys,
            b"p",
            crate::PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 },
            &mut rng,
        )
        .unwrap();
        let signed = crate::SignedUserKeys::issue(&user_keys, "acme", "alice");
        state.create_user("alice", sealed, *signed.signature()).unwrap();
        let cert = crate::DeviceCertificate::issue(&user_keys, "alice", "d", author.public());
        let tk = pre::transform_key(user_key, &author.public().encryption, &mut rng);
        state.authorize_device(cert, tk).unwrap();
        let actor = crate::Actor { user: "alice", device: "d" };
        let refused = state.create_document(actor, parsed, grants.clone()).unwrap_err();
        assert_eq!(refused, crate::AccessError::Document(DocumentError::Uncommitted));
        assert_eq!(refused.code(), 1114);
        state.create_document(actor, doc, grants).unwrap();
    }
}
