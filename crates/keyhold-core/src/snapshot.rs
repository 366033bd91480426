//! The configuration snapshot the broker signs and the proxies apply (docs/broker.md §2).
//!
//! The broker serves one [`SignedSnapshot`]: the snapshot's JSON bytes, an Ed25519 signature
//! over them, and the id of the signing key. A proxy verifies it against the broker keys it
//! trusts before reading a single field, and applies it only if its `version` is newer than the
//! one it runs, so a replayed old snapshot cannot undo a revocation.
//!
//! ```
//! use keyhold_core::snapshot::{ConfigSnapshot, SnapshotSigningKey, verify};
//!
//! let broker = SnapshotSigningKey::generate()?;
//! let snapshot = ConfigSnapshot { version: 7, ..ConfigSnapshot::default() };
//! let signed = broker.sign(&snapshot)?;
//! assert_eq!(verify(&signed, &[broker.public_key()])?.version, 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::random::fill_random;
use crate::seal::key_id;

/// The snapshot format this build writes and reads.
pub const FORMAT: u32 = 1;
/// What the signature covers before the payload (domain separation).
pub const SIGNATURE_CONTEXT: &[u8] = b"keyhold config snapshot v1\n";
/// Largest payload accepted (100,000 tenants of a few configurations fit).
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The envelope or a key is not well formed.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Signed by a key this proxy does not trust.
    #[error("signed by broker key {0}, which is not among the trusted keys")]
    UnknownKey(String),
    /// The signature does not match: altered, or forged.
    #[error("the signature does not verify: the snapshot was altered or not made by the broker")]
    BadSignature,
    /// A format this build does not read.
    #[error("snapshot format {0} is not supported (this build reads format {FORMAT})")]
    UnsupportedFormat(u32),
    /// The operating system's random generator failed.
    #[error("no randomness")]
    Random,
}

/// A tenant's status in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Served.
    #[default]
    Active,
    /// Refused as an unknown tenant (code 201) on every proxy.
    Disabled,
}

/// What a KMS configuration may be used for (as in the proxy's TOML file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigStatus {
    /// Wraps new keys and unwraps old ones.
    Primary,
    /// Unwraps only.
    Active,
    /// Neither.
    Disabled,
}

/// Everything the proxies serve: every tenant with its KMS and SIEM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSnapshot {
    /// [`FORMAT`].
    pub format: u32,
    /// Grows with every change stored in the broker.
    pub version: u64,
    /// When the broker made it (RFC 3339).
    #[serde(default)]
    pub issued_at: String,
    /// Every tenant.
    #[serde(default)]
    pub tenants: Vec<SnapshotTenant>,
}

impl Default for ConfigSnapshot {
    fn default() -> Self {
        Self { format: FORMAT, version: 0, issued_at: String::new(), tenants: Vec::new() }
    }
}

/// One tenant of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTenant {
    /// The tenant id applications send.
    pub id: String,
    /// Served or not.
    #[serde(default)]
    pub status: TenantStatus,
    /// Leasing overrides.
    #[serde(default)]
    pub leasing: SnapshotLeasing,
    /// KMS configurations.
    #[serde(default)]
    pub kms_configs: Vec<SnapshotKmsConfig>,
    /// Audit sinks.
    #[serde(default)]
    pub audit_sinks: Vec<SnapshotSink>,
}

/// A tenant's leasing overrides (absent: the proxy's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLeasing {
    /// Lease keys or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Renewal interval in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_interval_ms: Option<u64>,
    /// Hold time in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold_ms: Option<u64>,
}

/// One KMS configuration of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotKmsConfig {
    /// Recorded in every EDEK it makes; unique across the broker, never 0.
    pub id: i32,
    /// What it may be used for.
    pub status: ConfigStatus,
    /// `local`, `aws`, `vault`, `pkcs11`, `kmip`, `gcp` or `azure`.
    #[serde(rename = "type")]
    pub kms_type: String,
    /// The non-secret fields, as in a TOML `[[tenants.kms_configs]]` entry.
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// The secret fields, sealed to the fleet (purpose `kms`).
    #[serde(default)]
    pub sealed: Option<String>,
}

/// One audit sink of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSink {
    /// Unique among the tenant's sinks.
    pub name: String,
    /// `syslog`, `opensearch`, `splunk`, `datadog`, `webhook` or `file`.
    #[serde(rename = "type")]
    pub sink_type: String,
    /// The non-secret fields.
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// The sink's credential, sealed to the fleet (purpose `siem`).
    #[serde(default)]
    pub sealed: Option<String>,
}

/// What the broker serves: the payload, its signature, and the signing key's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedSnapshot {
    /// Standard base64 of the snapshot's JSON bytes.
    pub payload: String,
    /// Standard base64 of the Ed25519 signature over [`SIGNATURE_CONTEXT`] ‖ payload bytes.
    pub signature: String,
    /// The signing key's id (first 8 bytes of SHA-256 of the public key, hex).
    pub key_id: String,
}

/// The broker's Ed25519 signing key. Wiped on drop, never printed.
pub struct SnapshotSigningKey(SigningKey);

impl SnapshotSigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, SnapshotError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(&mut seed[..]).map_err(|_| SnapshotError::Random)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// From a PKCS#8 DER document (what the key file holds).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SnapshotError> {
        SigningKey::from_pkcs8_der(der)
            .map(Self)
            .map_err(|_| SnapshotError::Malformed("not an Ed25519 PKCS#8 key".into()))
    }

    /// As a PKCS#8 DER document.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, SnapshotError> {
        let doc = self
            .0
            .to_pkcs8_der()
            .map_err(|_| SnapshotError::Malformed("cannot encode the key".into()))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The public half, which proxies trust.
    pub fn public_key(&self) -> SnapshotVerifyingKey {
        SnapshotVerifyingKey(self.0.verifying_key())
    }

    /// Signs a snapshot.
    pub fn sign(&self, snapshot: &ConfigSnapshot) -> Result<SignedSnapshot, SnapshotError> {
        let payload = serde_json::to_vec(snapshot)
            .map_err(|e| SnapshotError::Malformed(format!("cannot serialize: {e}")))?;
        Ok(self.sign_payload(&payload))
    }

    /// Signs payload bytes as they are (for tests of what proxies refuse).
    pub fn sign_payload(&self, payload: &[u8]) -> SignedSnapshot {
        let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + payload.len());
        message.extend_from_slice(SIGNATURE_CONTEXT);
        message.extend_from_slice(payload);
        let signature = self.0.sign(&message);
        SignedSnapshot {
            payload: STANDARD.encode(payload),
            signature: STANDARD.encode(signature.to_bytes()),
            key_id: self.public_key().key_id(),
        }
    }
}

impl fmt::Debug for SnapshotSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotSigningKey({}, secret hidden)", self.public_key().key_id())
    }
}

/// A broker public key a proxy trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotVerifyingKey(VerifyingKey);

impl SnapshotVerifyingKey {
    /// From standard base64 of the 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, SnapshotError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SnapshotError::Malformed("the public key is not base64".into()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SnapshotError::Malformed("the public key is not 32 bytes".into()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| SnapshotError::Malformed("not an Ed25519 public key".into()))
    }

    /// Standard base64 of the 32 bytes.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// The key id.
    pub fn key_id(&self) -> String {
        key_id(self.0.as_bytes())
    }
}

impl fmt::Debug for SnapshotVerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotVerifyingKey({})", self.key_id())
    }
}

/// Verifies a signed snapshot against the trusted `keys` and parses it.
pub fn verify(
    signed: &SignedSnapshot,
    keys: &[SnapshotVerifyingKey],
) -> Result<ConfigSnapshot, SnapshotError> {
    let key = keys
        .iter()
        .find(|k| k.key_id().eq_ignore_ascii_case(&signed.key_id))
        .ok_or_else(|| SnapshotError::UnknownKey(signed.key_id.clone()))?;
    let payload = STANDARD
        .decode(&signed.payload)
        .map_err(|_| SnapshotError::Malformed("the payload is not base64".into()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(SnapshotError::Malformed("the payload is too large".into()));
    }
    let signature = STANDARD
        .decode(&signed.signature)
        .map_err(|_| SnapshotError::Malformed("the signature is not base64".into()))?;
    let signature = ed25519_dalek::Signature::from_slice(&signature)
        .map_err(|_| SnapshotError::Malformed("the signature is not 64 bytes".into()))?;
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + payload.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(&payload);
    key.0.verify_strict(&message, &signature).map_err(|_| SnapshotError::BadSignature)?;
    // Only signed bytes are parsed.
    let format: FormatOnly = serde_json::from_slice(&payload)
        .map_err(|e| SnapshotError::Malformed(format!("the payload is not a snapshot: {e}")))?;
    if format.format != FORMAT {
        return Err(SnapshotError::UnsupportedFormat(format.format));
    }
    serde_json::from_slice(&payload)
        .map_err(|e| SnapshotError::Malformed(format!("the payload is not a snapshot: {e}")))
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample() -> ConfigSnapshot {
        let settings = serde_json::json!({"address": "http://127.0.0.1:8200", "key": "acme"});
        ConfigSnapshot {
            format: FORMAT,
            version: 42,
            issued_at: "2026-12-01T18:00:00Z".into(),
            tenants: vec![SnapshotTenant {
                id: "acme".into(),
                status: TenantStatus::Active,
                leasing: SnapshotLeasing { enabled: Some(true), ..Default::default() },
                kms_configs: vec![SnapshotKmsConfig {
                    id: 7,
                    status: ConfigStatus::Primary,
                    kms_type: "vault".into(),
                    settings: settings.as_object().unwrap().clone(),
                    sealed: Some("khs1.0011223344556677.AAAA".into()),
                }],
                audit_sinks: vec![],
            }],
        }
    }

    #[test]
    fn signed_snapshots_verify_and_parse() {
        let key = SnapshotSigningKey::generate().unwrap();
        let signed = key.sign(&sample()).unwrap();
        assert_eq!(verify(&signed, &[key.public_key()]).unwrap(), sample());
        let json = serde_json::to_string(&signed).unwrap();
        let again: SignedSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(verify(&again, &[key.public_key()]).unwrap(), sample());
    }

    #[test]
    fn altered_payload_or_signature_is_refused() {
        let key = SnapshotSigningKey::generate().unwrap();
        let signed = key.sign(&sample()).unwrap();
        let mut payload = STANDARD.decode(&signed.payload).unwrap();
        let at = payload.windows(2).position(|w| w == b"42").unwrap();
        payload[at] = b'9';
        let altered = SignedSnapshot { payload: STANDARD.encode(&payload), ..signed.clone() };
        assert!(matches!(verify(&altered, &[key.public_key()]), Err(SnapshotError::BadSignature)));
        let mut sig = STANDARD.decode(&signed.signature).unwrap();
        sig[0] ^= 1;
        let forged = SignedSnapshot { signature: STANDARD.encode(&sig), ..signed };
        assert!(matches!(verify(&forged, &[key.public_key()]), Err(SnapshotError::BadSignature)));
    }

    #[test]
    fn another_key_is_refused_even_under_the_trusted_id() {
        let trusted = SnapshotSigningKey::generate().unwrap();
        let attacker = SnapshotSigningKey::generate().unwrap();
        let signed = attacker.sign(&sample()).unwrap();
        assert!(matches!(
            verify(&signed, &[trusted.public_key()]),
            Err(SnapshotError::UnknownKey(_))
        ));
        let relabelled = SignedSnapshot { key_id: trusted.public_key().key_id(), ..signed };
        assert!(matches!(
            verify(&relabelled, &[trusted.public_key()]),
            Err(SnapshotError::BadSignature)
        ));
    }

    #[test]
    fn unknown_format_and_garbage_are_refused_after_the_signature() {
        let key = SnapshotSigningKey::generate().unwrap();
        let future = key.sign_payload(br#"{"format":2,"version":1}"#);
        assert!(matches!(
            verify(&future, &[key.public_key()]),
            Err(SnapshotError::UnsupportedFormat(2))
        ));
        let garbage = key.sign_payload(b"not json");
        assert!(matches!(verify(&garbage, &[key.public_key()]), Err(SnapshotError::Malformed(_))));
        let not_b64 = SignedSnapshot { payload: "%%%".into(), ..key.sign(&sample()).unwrap() };
        assert!(matches!(verify(&not_b64, &[key.public_key()]), Err(SnapshotError::Malformed(_))));
    }

    #[test]
    fn keys_round_trip() {
        let key = SnapshotSigningKey::generate().unwrap();
        let again = SnapshotSigningKey::from_pkcs8(&key.to_pkcs8().unwrap()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = SnapshotVerifyingKey::from_base64(&key.public_key().to_base64()).unwrap();
        assert_eq!(public, key.public_key());
        assert!(SnapshotSigningKey::from_pkcs8(b"junk").is_err());
        assert!(SnapshotVerifyingKey::from_base64("AAAA").is_err());
    }
}
