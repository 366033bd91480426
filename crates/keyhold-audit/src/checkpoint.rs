//! Signed checkpoints: now and then the spool appends to a tenant's chain a record that signs
//! (Ed25519, with the proxy's audit key) the hash of the record before it.
//!
//! The hash chain alone shows any change *inside* a stream, but not records cut off its end,
//! and anyone able to rewrite the whole file could recompute every hash. A checkpoint's
//! signature can only be made with the proxy's private key, so a verifier holding the public
//! key knows that the stream up to each checkpoint is the proxy's, and that a stream ending
//! long after its last checkpoint was cut (checkpoints come every `checkpoint_interval`).
//!
//! Signed message: `"keyhold/audit-checkpoint/v1\0" ‖ u64be(len(tenant)) ‖ tenant ‖
//! u64be(signed_seq) ‖ signed_hash (32 bytes)`.

use std::path::Path;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::chain::ChainHead;

const LABEL: &[u8] = b"keyhold/audit-checkpoint/v1\0";

/// What a checkpoint record carries (in its event's `checkpoint` field). Fields in
/// alphabetical order, as in [`crate::event::AuditEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The first 16 hex digits of SHA-256 of the public key: which key signed.
    pub key_id: String,
    /// The Ed25519 signature (hex).
    pub signature: String,
    /// That record's hash (hex).
    pub signed_hash: String,
    /// The `seq` of the record signed: the one just before the checkpoint.
    pub signed_seq: u64,
}

/// Why the audit key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit signing key {path}: {reason}")]
pub struct KeyError {
    /// The key file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// The proxy's audit signing key.
pub struct CheckpointSigner {
    key_pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Reads the key (PKCS#8) from `path`, or makes one there (mode 0600) if there is none.
    /// The public key is also written next to it, as hex, in `<path>.pub`.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError { path: path.display().to_string(), reason };
        let pkcs8 = match std::fs::read(path) {
            Ok(bytes) => zeroize::Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let document =
                    Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| fail(e.to_string()))?;
                let bytes = zeroize::Zeroizing::new(document.as_ref().to_vec());
                write_private(path, &bytes).map_err(|e| fail(e.to_string()))?;
                bytes
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let key_pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| fail(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let signer = Self { key_id: key_id(key_pair.public_key().as_ref()), key_pair };
        let public = path.with_extension("pub");
        let text = format!("{}\n", signer.public_key_hex());
        if std::fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&public, text)
                .map_err(|e| fail(format!("{}: {e}", public.display())))?;
        }
        Ok(signer)
    }

    /// The public key, hex: what tenants need to check checkpoints.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key_pair.public_key().as_ref())
    }

    /// Signs `head` of `tenant`'s stream.
    pub fn sign(&self, tenant: &str, head: &ChainHead) -> Checkpoint {
        let signature = self.key_pair.sign(&message(tenant, head.seq, &head.hash));
        Checkpoint {
            signed_seq: head.seq,
            signed_hash: hex::encode(head.hash),
            key_id: self.key_id.clone(),
            signature: hex::encode(signature.as_ref()),
        }
    }
}

/// Which key: the first 16 hex digits of SHA-256 of the public key.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(Sha256::digest(public_key)).chars().take(16).collect()
}

/// Whether `checkpoint` is `public_key`'s signature of its head of `tenant`'s stream.
pub fn verify_signature(public_key: &[u8], tenant: &str, checkpoint: &Checkpoint) -> bool {
    let (Ok(hash), Ok(signature)) =
        (hex::decode(&checkpoint.signed_hash), hex::decode(&checkpoint.signature))
    else {
        return false;
    };
    let Ok(hash) = <[u8; 32]>::try_from(hash) else { return false };
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&message(tenant, checkpoint.signed_seq, &hash), &signature)
        .is_ok()
}

fn message(tenant: &str, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(LABEL.len() + 8 + tenant.len() + 8 + 32);
    message.extend_from_slice(LABEL);
    message.extend_from_slice(&(tenant.len() as u64).to_be_bytes());
    message.extend_from_slice(tenant.as_bytes());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_for_its_tenant_head_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let signer = CheckpointSigner::load_or_create(&path).unwrap();
        // Loaded again: the same key, and its public half beside it.
        let again = CheckpointSigner::load_or_create(&path).unwrap();
        assert_eq!(signer.public_key_hex(), again.public_key_hex());
        let public_hex = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let public = hex::decode(public_hex.trim()).unwrap();
        let head = ChainHead { seq: 7, hash: [9; 32] };
        let checkpoint = signer.sign("acme", &head);
        assert_eq!(checkpoint.key_id, key_id(&public));
        assert!(verify_signature(&public, "acme", &checkpoint));
        assert!(!verify_signature(&public, "other", &checkpoint));
        let mut moved = checkpoint.clone();
        moved.signed_seq = 6;
        assert!(!verify_signature(&public, "acme", &moved));
        let other = CheckpointSigner::load_or_create(&dir.path().join("other.key")).unwrap();
        let other_public = hex::decode(other.public_key_hex()).unwrap();
        assert!(!verify_signature(&other_public, "acme", &checkpoint));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{signer:?}").contains(&hex::encode(std::fs::read(&path).unwrap())));
    }
}
