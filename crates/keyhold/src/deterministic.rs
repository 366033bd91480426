//! Deterministic (searchable) field encryption, wire-compatible with IronCore's
//! `DeterministicTenantSecurityClient`.
//!
//! The same plaintext with the same tenant, secret path and derivation path always encrypts to
//! the same bytes, so an application can look a record up by an encrypted value or keep a unique
//! index on it. That equality is also what leaks: anyone who can read the column learns which
//! rows hold the same value and how often each value occurs, so use it only for values that need
//! it (see `docs/deterministic.md` for what that reveals and when to choose it).
//!
//! Each call asks the proxy once (`key/derive-with-secret-path`) for the field keys of every
//! (secret path, derivation path) pair involved — one key per usable tenant secret of the path,
//! one of them *current* — and then encrypts locally with AES-256-SIV
//! ([`keyhold_core::deterministic`]). The keys are wiped when the call returns.
//!
//! ```no_run
//! use keyhold::deterministic::PlaintextField;
//! use keyhold::{Client, RequestMetadata};
//!
//! # async fn example(client: Client) -> keyhold::Result<()> {
//! let meta = RequestMetadata::new("demo-tenant", "user-42");
//! let email = PlaintextField::new(b"alice@example.com".to_vec(), "users", "email");
//! let stored = client.encrypt_field(&email, &meta).await?; // store stored.encrypted
//! // To look the user up later: one term per tenant secret still in use, current first.
//! let terms = client.generate_search_terms(&email, &meta).await?;
//! assert!(terms.iter().any(|t| t.encrypted == stored.encrypted));
//! # Ok(()) }
//! ```
//!
//! Without a network, [`DerivedKeys`] does the local half over a [`DeriveKeyResponse`] the
//! caller already has (tests, benchmarks, a caller that talks to the proxy itself).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keyhold_core::ErrorCode;
use keyhold_core::deterministic as fields;
pub use keyhold_core::deterministic::{DeterministicError, is_deterministic_field};
use keyhold_core::metadata::RequestMetadata;
use keyhold_core::wire::DeriveKeyRequest;
pub use keyhold_core::wire::{DeriveKeyResponse, DerivedKey, UnavailableSecret};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::BatchResult;
use crate::client::Client;
use crate::error::{Error, Result};

/// A value to encrypt deterministically, with the paths that choose its key.
///
/// The *secret path* picks the tenant secret (e.g. one per table or per kind of data); the
/// *derivation path* picks the key derived from it (e.g. one per column). Both are stored next to
/// the encrypted value, since decrypting needs them again. The plaintext is wiped when dropped and
/// not shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextField {
    /// The value.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Which tenant secret.
    pub secret_path: String,
    /// Which key derived from that secret.
    pub derivation_path: String,
}

impl PlaintextField {
    /// A field from a value and its paths.
    pub fn new(
        plaintext: impl Into<Vec<u8>>,
        secret_path: impl Into<String>,
        derivation_path: impl Into<String>,
    ) -> Self {
        Self {
            plaintext: Zeroizing::new(plaintext.into()),
            secret_path: secret_path.into(),
            derivation_path: derivation_path.into(),
        }
    }
}

impl core::fmt::Debug for PlaintextField {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PlaintextField")
            .field("plaintext", &format_args!("[REDACTED; {} bytes]", self.plaintext.len()))
            .field("secret_path", &self.secret_path)
            .field("derivation_path", &self.derivation_path)
            .finish()
    }
}

/// A deterministically encrypted value (IronCore's layout: tenant secret id, two zero bytes,
/// AES-256-SIV output) and the paths it was encrypted under.
///
/// As JSON: `{"encrypted": "<standard base64>", "secretPath": …, "derivationPath": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedField {
    /// The encrypted bytes: what the application stores and compares.
    #[serde(with = "base64_bytes")]
    pub encrypted: Vec<u8>,
    /// The secret path it was encrypted under.
    pub secret_path: String,
    /// The derivation path it was encrypted under.
    pub derivation_path: String,
}

impl EncryptedField {
    /// A field from stored bytes and its paths.
    pub fn new(
        encrypted: impl Into<Vec<u8>>,
        secret_path: impl Into<String>,
        derivation_path: impl Into<String>,
    ) -> Self {
        Self {
            encrypted: encrypted.into(),
            secret_path: secret_path.into(),
            derivation_path: derivation_path.into(),
        }
    }

    /// The id of the tenant secret the field is encrypted under (read from its header, not
    /// verified). An error with code 905 if the bytes are not a deterministic field.
    pub fn tenant_secret_id(&self) -> Result<u32> {
        fields::parse(&self.encrypted).map(|(id, _)| id).map_err(|e| Error::Deterministic {
            operation: DeterministicOperation::Decrypt,
            source: DeterministicFailure::Field(e),
        })
    }
}

/// Which deterministic operation failed (it decides some error codes: IronCore reports a
/// failed rotation as 906).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeterministicOperation {
    /// [`Client::encrypt_field`] and [`Client::encrypt_fields`].
    Encrypt,
    /// [`Client::decrypt_field`] and [`Client::decrypt_fields`].
    Decrypt,
    /// [`Client::rotate_field`] and [`Client::rotate_fields`].
    Rotate,
    /// [`Client::generate_search_terms`] and [`Client::generate_search_terms_batch`].
    GenerateSearchTerms,
}

impl core::fmt::Display for DeterministicOperation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DeterministicOperation::Encrypt => "encrypt",
            DeterministicOperation::Decrypt => "decrypt",
            DeterministicOperation::Rotate => "rotate",
            DeterministicOperation::GenerateSearchTerms => "search-term generation",
        })
    }
}

/// Why a deterministic field could not be encrypted, decrypted, rotated or searched for. No
/// variant carries key or plaintext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeterministicFailure {
    /// The field's bytes: not a deterministic field (905), a secret id with no key (904; 906
    /// when rotating), a tag that does not verify (904).
    #[error(transparent)]
    Field(#[from] DeterministicError),
    /// The tenant has no primary KMS configuration, so no tenant secret is current and nothing
    /// new can be encrypted (200); fields already written still decrypt.
    #[error("the tenant has no primary KMS configuration, so no tenant secret is current")]
    NoPrimaryConfig,
    /// The proxy marked no key of the paths as current (903; 906 when rotating).
    #[error(
        "no current tenant secret for secret path {secret_path:?}, derivation path {derivation_path:?}"
    )]
    NoCurrentSecret {
        /// The field's secret path.
        secret_path: String,
        /// The field's derivation path.
        derivation_path: String,
    },
    /// The field's tenant secret exists but the proxy could not use it, e.g. because its KMS
    /// configuration is disabled; the code is the proxy's (202 in that case).
    #[error(
        "tenant secret {tenant_secret_id} of secret path {secret_path:?} cannot be used: {message} ({code})"
    )]
    SecretUnavailable {
        /// The field's secret path.
        secret_path: String,
        /// The secret named in the field's header.
        tenant_secret_id: u32,
        /// The proxy's code for why.
        code: ErrorCode,
        /// The proxy's message.
        message: String,
    },
    /// The proxy returned no key at all for the paths, so no search term can be made (907).
    #[error(
        "no tenant secret for secret path {secret_path:?}, derivation path {derivation_path:?}"
    )]
    NoKeys {
        /// The field's secret path.
        secret_path: String,
        /// The field's derivation path.
        derivation_path: String,
    },
}

impl DeterministicFailure {
    /// The wire code of this failure in `operation`.
    pub fn code(&self, operation: DeterministicOperation) -> ErrorCode {
        let rotating = operation == DeterministicOperation::Rotate;
        match self {
            DeterministicFailure::Field(DeterministicError::UnknownSecret(_)) if rotating => {
                ErrorCode::DeterministicRotateFailed
            }
            DeterministicFailure::Field(e) => e.code(),
            DeterministicFailure::NoPrimaryConfig => ErrorCode::NoPrimaryKmsConfiguration,
            DeterministicFailure::NoCurrentSecret { .. } if rotating => {
                ErrorCode::DeterministicRotateFailed
            }
            DeterministicFailure::NoCurrentSecret { .. } => {
                ErrorCode::DeterministicFieldEncryptFailed
            }
            DeterministicFailure::SecretUnavailable { code, .. } => *code,
            DeterministicFailure::NoKeys { .. } => {
                ErrorCode::DeterministicGenerateSearchTermsFailed
            }
        }
    }
}

/// The request body asking for the keys of the given (secret path, derivation path) pairs,
/// each pair once.
pub fn derive_request<'a>(
    meta: &RequestMetadata,
    paths: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> DeriveKeyRequest {
    DeriveKeyRequest::from_metadata(
        meta,
        path_map(paths),
        fields::DERIVATION_SHA512.to_owned(),
        fields::SECRET_TYPE_DETERMINISTIC.to_owned(),
    )
}

fn path_map<'a>(
    paths: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, Vec<String>> {
    let mut unique: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (secret_path, derivation_path) in paths {
        unique.entry(secret_path).or_default().insert(derivation_path);
    }
    unique
        .into_iter()
        .map(|(s, ds)| (s.to_owned(), ds.into_iter().map(str::to_owned).collect()))
        .collect()
}

/// The local half of every deterministic operation, over the proxy's answer to a derive
/// request: no network, so it can be tested and measured offline.
///
/// It borrows the response; the keys are wiped when the response is dropped. It never copies a
/// key.
#[derive(Debug, Clone, Copy)]
pub struct DerivedKeys<'r> {
    response: &'r DeriveKeyResponse,
}

fn failed(operation: DeterministicOperation, source: impl Into<DeterministicFailure>) -> Error {
    Error::Deterministic { operation, source: source.into() }
}

impl<'r> DerivedKeys<'r> {
    /// A view of `response`.
    pub fn new(response: &'r DeriveKeyResponse) -> Self {
        Self { response }
    }

    /// The response viewed.
    pub fn response(&self) -> &'r DeriveKeyResponse {
        self.response
    }

    fn keys(&self, secret_path: &str, derivation_path: &str) -> &'r [DerivedKey] {
        self.response.keys(secret_path, derivation_path).unwrap_or_default()
    }

    /// The current key of the paths, for writing new fields.
    fn current(
        &self,
        secret_path: &str,
        derivation_path: &str,
    ) -> Result<&'r DerivedKey, DeterministicFailure> {
        if !self.response.has_primary_config {
            return Err(DeterministicFailure::NoPrimaryConfig);
        }
        self.keys(secret_path, derivation_path).iter().find(|k| k.current).ok_or_else(|| {
            DeterministicFailure::NoCurrentSecret {
                secret_path: secret_path.to_owned(),
                derivation_path: derivation_path.to_owned(),
            }
        })
    }

    /// The key of secret `id`; if there is none, why (the proxy's reason if it gave one).
    fn key_of(
        &self,
        secret_path: &str,
        derivation_path: &str,
        id: u32,
    ) -> Result<&'r DerivedKey, DeterministicFailure> {
        if let Some(key) =
            self.keys(secret_path, derivation_path).iter().find(|k| k.tenant_secret_id == id)
        {
            return Ok(key);
        }
        Err(match self.response.unavailable(secret_path, id) {
            Some(UnavailableSecret { code, message, .. }) => {
                DeterministicFailure::SecretUnavailable {
                    secret_path: secret_path.to_owned(),
                    tenant_secret_id: id,
                    code: ErrorCode::from_code(*code).unwrap_or(ErrorCode::UnknownError),
                    message: message.clone(),
                }
            }
            None => DeterministicFailure::Field(DeterministicError::UnknownSecret(id)),
        })
    }

    /// Decrypts `field` (header, key lookup, tag), as part of `operation`.
    fn open(
        &self,
        field: &EncryptedField,
        operation: DeterministicOperation,
    ) -> Result<(u32, Zeroizing<Vec<u8>>)> {
        let (id, _) = fields::parse(&field.encrypted).map_err(|e| failed(operation, e))?;
        let key = self
            .key_of(&field.secret_path, &field.derivation_path, id)
            .map_err(|e| failed(operation, e))?;
        let plaintext = fields::decrypt(&field.encrypted, |_| Some(&key.derived_key))
            .map_err(|e| failed(operation, e))?;
        Ok((id, plaintext))
    }

    fn seal(
        key: &DerivedKey,
        plaintext: &[u8],
        secret_path: &str,
        derivation_path: &str,
        operation: DeterministicOperation,
    ) -> Result<EncryptedField> {
        let encrypted = fields::encrypt(&key.derived_key, key.tenant_secret_id, plaintext)
            .map_err(|e| failed(operation, e))?;
        Ok(EncryptedField {
            encrypted,
            secret_path: secret_path.to_owned(),
            derivation_path: derivation_path.to_owned(),
        })
    }

    /// Encrypts `field` with the current key of its paths.
    pub fn encrypt(&self, field: &PlaintextField) -> Result<EncryptedField> {
        let op = DeterministicOperation::Encrypt;
        let key =
            self.current(&field.secret_path, &field.derivation_path).map_err(|e| failed(op, e))?;
        Self::seal(key, &field.plaintext, &field.secret_path, &field.derivation_path, op)
    }

    /// Decrypts `field` with the key of the tenant secret its header names.
    pub fn decrypt(&self, field: &EncryptedField) -> Result<PlaintextField> {
        let (_, plaintext) = self.open(field, DeterministicOperation::Decrypt)?;
        Ok(PlaintextField {
            plaintext,
            secret_path: field.secret_path.clone(),
            derivation_path: field.derivation_path.clone(),
        })
    }

    /// Moves `field` to the current key of its paths: decrypts it and encrypts it again, or,
    /// if it is already under the current secret, returns it unchanged (after checking that it
    /// decrypts, which IronCore's clients skip).
    pub fn rotate(&self, field: &EncryptedField) -> Result<EncryptedField> {
        let op = DeterministicOperation::Rotate;
        // The header first (905), then the current key (200/906), then the field's key (906 or
        // the proxy's reason), as IronCore's clients order them.
        fields::parse(&field.encrypted).map_err(|e| failed(op, e))?;
        let current =
            self.current(&field.secret_path, &field.derivation_path).map_err(|e| failed(op, e))?;
        let (id, plaintext) = self.open(field, op)?;
        if id == current.tenant_secret_id {
            return Ok(field.clone());
        }
        Self::seal(current, &plaintext, &field.secret_path, &field.derivation_path, op)
    }

    /// Encrypts `field` with every key of its paths, the current one first and then the older
    /// ones in the proxy's order: query with all of them to find values written before the
    /// tenant's last secret rotation.
    pub fn search_terms(&self, field: &PlaintextField) -> Result<Vec<EncryptedField>> {
        let op = DeterministicOperation::GenerateSearchTerms;
        let keys = self.keys(&field.secret_path, &field.derivation_path);
        if keys.is_empty() {
            return Err(failed(
                op,
                DeterministicFailure::NoKeys {
                    secret_path: field.secret_path.clone(),
                    derivation_path: field.derivation_path.clone(),
                },
            ));
        }
        let first = keys.iter().position(|k| k.current).unwrap_or(0);
        let ordered = keys
            .get(first)
            .into_iter()
            .chain(keys.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, k)| k));
        ordered
            .map(|key| {
                Self::seal(key, &field.plaintext, &field.secret_path, &field.derivation_path, op)
            })
            .collect()
    }

    /// [`encrypt`](Self::encrypt) for each field, by id.
    pub fn encrypt_batch(
        &self,
        fields: &HashMap<String, PlaintextField>,
    ) -> BatchResult<EncryptedField> {
        batch(fields, |f| self.encrypt(f))
    }

    /// [`decrypt`](Self::decrypt) for each field, by id.
    pub fn decrypt_batch(
        &self,
        fields: &HashMap<String, EncryptedField>,
    ) -> BatchResult<PlaintextField> {
        batch(fields, |f| self.decrypt(f))
    }

    /// [`rotate`](Self::rotate) for each field, by id.
    pub fn rotate_batch(
        &self,
        fields: &HashMap<String, EncryptedField>,
    ) -> BatchResult<EncryptedField> {
        batch(fields, |f| self.rotate(f))
    }

    /// [`search_terms`](Self::search_terms) for each field, by id.
    pub fn search_terms_batch(
        &self,
        fields: &HashMap<String, PlaintextField>,
    ) -> BatchResult<Vec<EncryptedField>> {
        batch(fields, |f| self.search_terms(f))
    }
}

fn batch<I, O>(items: &HashMap<String, I>, f: impl Fn(&I) -> Result<O>) -> BatchResult<O> {
    let mut result = BatchResult::default();
    for (id, item) in items {
        match f(item) {
            Ok(out) => {
                result.successes.insert(id.clone(), out);
            }
            Err(e) => {
                result.failures.insert(id.clone(), e);
            }
        }
    }
    result
}

/// The paths of encrypted fields worth asking keys for: a field that is not a deterministic
/// field fails locally (905) without a proxy call.
fn encrypted_paths<'a>(
    fields: impl IntoIterator<Item = &'a EncryptedField>,
) -> Vec<(&'a str, &'a str)> {
    fields
        .into_iter()
        .filter(|f| is_deterministic_field(&f.encrypted))
        .map(|f| (f.secret_path.as_str(), f.derivation_path.as_str()))
        .collect()
}

fn plaintext_paths<'a>(
    fields: impl IntoIterator<Item = &'a PlaintextField>,
) -> Vec<(&'a str, &'a str)> {
    fields.into_iter().map(|f| (f.secret_path.as_str(), f.derivation_path.as_str())).collect()
}

impl Client {
    /// The keys of the given (secret path, derivation path) pairs, in one proxy call; none
    /// (and no call) if `paths` is empty.
    async fn derive_for(
        &self,
        paths: Vec<(&str, &str)>,
        meta: &RequestMetadata,
    ) -> Result<DeriveKeyResponse> {
        if paths.is_empty() {
            return Ok(DeriveKeyResponse::default());
        }
        self.derive_field_keys(path_map(paths), meta).await
    }

    /// Encrypts `field` deterministically with the current tenant secret of its secret path:
    /// the same value and paths give the same bytes. One proxy call.
    ///
    /// Errors: [`ErrorCode::NoPrimaryKmsConfiguration`] when the tenant has no primary KMS
    /// configuration, [`ErrorCode::DeterministicFieldEncryptFailed`] when no secret is current;
    /// a proxy refusal (unknown tenant 201, wrong API key 101, …) keeps the proxy's code.
    pub async fn encrypt_field(
        &self,
        field: &PlaintextField,
        meta: &RequestMetadata,
    ) -> Result<EncryptedField> {
        let response = self.derive_for(plaintext_paths([field]), meta).await?;
        DerivedKeys::new(&response).encrypt(field)
    }

    /// Decrypts a deterministic field with the tenant secret its header names. At most one
    /// proxy call (none if the bytes are not a deterministic field: 905).
    ///
    /// A field under a secret the proxy could not use reports the proxy's reason (e.g.
    /// [`ErrorCode::KmsConfigurationDisabled`]); an unknown secret or altered bytes give
    /// [`ErrorCode::DeterministicFieldDecryptFailed`].
    pub async fn decrypt_field(
        &self,
        field: &EncryptedField,
        meta: &RequestMetadata,
    ) -> Result<PlaintextField> {
        let response = self.derive_for(encrypted_paths([field]), meta).await?;
        DerivedKeys::new(&response).decrypt(field)
    }

    /// Re-encrypts `field` under the current tenant secret of its secret path, or returns it
    /// unchanged (same bytes) if it already is. At most one proxy call. Failures that IronCore
    /// reports as a failed rotation (no current secret, the field's secret unknown) have code
    /// [`ErrorCode::DeterministicRotateFailed`].
    pub async fn rotate_field(
        &self,
        field: &EncryptedField,
        meta: &RequestMetadata,
    ) -> Result<EncryptedField> {
        let response = self.derive_for(encrypted_paths([field]), meta).await?;
        DerivedKeys::new(&response).rotate(field)
    }

    /// The values to search for `field` with: its encryption under every usable tenant secret
    /// of its secret path, current first. One proxy call;
    /// [`ErrorCode::DeterministicGenerateSearchTermsFailed`] if the path has no secret.
    pub async fn generate_search_terms(
        &self,
        field: &PlaintextField,
        meta: &RequestMetadata,
    ) -> Result<Vec<EncryptedField>> {
        let response = self.derive_for(plaintext_paths([field]), meta).await?;
        DerivedKeys::new(&response).search_terms(field)
    }

    /// [`encrypt_field`](Self::encrypt_field) for many fields (by id) with one proxy call; each
    /// id ends in exactly one of the result's maps. A refusal of the whole call is an `Err`.
    pub async fn encrypt_fields(
        &self,
        fields: &HashMap<String, PlaintextField>,
        meta: &RequestMetadata,
    ) -> Result<BatchResult<EncryptedField>> {
        let response = self.derive_for(plaintext_paths(fields.values()), meta).await?;
        Ok(DerivedKeys::new(&response).encrypt_batch(fields))
    }

    /// [`decrypt_field`](Self::decrypt_field) for many fields (by id) with at most one proxy
    /// call; each id ends in exactly one of the result's maps.
    pub async fn decrypt_fields(
        &self,
        fields: &HashMap<String, EncryptedField>,
        meta: &RequestMetadata,
    ) -> Result<BatchResult<PlaintextField>> {
        let response = self.derive_for(encrypted_paths(fields.values()), meta).await?;
        Ok(DerivedKeys::new(&response).decrypt_batch(fields))
    }

    /// [`rotate_field`](Self::rotate_field) for many fields (by id) with at most one proxy
    /// call; each id ends in exactly one of the result's maps.
    pub async fn rotate_fields(
        &self,
        fields: &HashMap<String, EncryptedField>,
        meta: &RequestMetadata,
    ) -> Result<BatchResult<EncryptedField>> {
        let response = self.derive_for(encrypted_paths(fields.values()), meta).await?;
        Ok(DerivedKeys::new(&response).rotate_batch(fields))
    }

    /// [`generate_search_terms`](Self::generate_search_terms) for many fields (by id) with one
    /// proxy call; each id ends in exactly one of the result's maps.
    pub async fn generate_search_terms_batch(
        &self,
        fields: &HashMap<String, PlaintextField>,
        meta: &RequestMetadata,
    ) -> Result<BatchResult<Vec<EncryptedField>>> {
        let response = self.derive_for(plaintext_paths(fields.values()), meta).await?;
        Ok(DerivedKeys::new(&response).search_terms_batch(fields))
    }
}

/// `Vec<u8>` as standard base64 text.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use keyhold_core::deterministic::derive_field_key;
    use keyhold_core::secret::TenantSecret;
    use proptest::prelude::*;

    use super::*;

    /// One tenant secret of a secret path, as the proxy would hold it.
    struct Secret {
        id: u32,
        secret: TenantSecret,
        current: bool,
    }

    fn secret(id: u32, current: bool) -> Secret {
        Secret { id, secret: TenantSecret::generate().unwrap(), current }
    }

    /// What the proxy answers for `tenant`: every secret of each secret path, derived for each
    /// derivation path asked for.
    fn response(
        tenant: &str,
        has_primary_config: bool,
        paths: &[(&str, &[&str], &[&Secret])],
    ) -> DeriveKeyResponse {
        let mut response = DeriveKeyResponse { has_primary_config, ..Default::default() };
        for (secret_path, derivation_paths, secrets) in paths {
            let by_derivation = response.derived_keys.entry((*secret_path).to_owned()).or_default();
            for derivation_path in *derivation_paths {
                let keys = secrets
                    .iter()
                    .map(|s| DerivedKey {
                        derived_key: derive_field_key(&s.secret, tenant, derivation_path),
                        tenant_secret_id: s.id,
                        current: s.current,
                    })
                    .collect();
                by_derivation.insert((*derivation_path).to_owned(), keys);
            }
        }
        response
    }

    fn field(value: &[u8], secret_path: &str, derivation_path: &str) -> PlaintextField {
        PlaintextField::new(value.to_vec(), secret_path, derivation_path)
    }

    fn code(e: &Error) -> u16 {
        e.code().code()
    }

    #[test]
    fn same_plaintext_and_paths_give_the_same_bytes() {
        let s = secret(7, true);
        let r = response("tenant-a", true, &[("users", &["email", "phone"], &[&s])]);
        let keys = DerivedKeys::new(&r);
        let one = keys.encrypt(&field(b"alice@example.com", "users", "email")).unwrap();
        let two = keys.encrypt(&field(b"alice@example.com", "users", "email")).unwrap();
        assert_eq!(one, two);
        assert_eq!(one.tenant_secret_id().unwrap(), 7);
        assert_eq!(one.encrypted.len(), fields::MIN_FIELD_LEN + b"alice@example.com".len());
        assert!(is_deterministic_field(&one.encrypted));
        assert_eq!((one.secret_path.as_str(), one.derivation_path.as_str()), ("users", "email"));
        let back = keys.decrypt(&one).unwrap();
        assert_eq!(back, field(b"alice@example.com", "users", "email"));
        // Another value under the same key differs.
        let bob = keys.encrypt(&field(b"bob@example.com", "users", "email")).unwrap();
        assert_ne!(bob.encrypted, one.encrypted);
    }

    #[test]
    fn derivation_path_tenant_and_secret_each_change_the_bytes() {
        let s = secret(7, true);
        let value = b"alice@example.com";
        let base = response("tenant-a", true, &[("users", &["email", "phone"], &[&s])]);
        let email = DerivedKeys::new(&base).encrypt(&field(value, "users", "email")).unwrap();

        let phone = DerivedKeys::new(&base).encrypt(&field(value, "users", "phone")).unwrap();
        assert_ne!(phone.encrypted, email.encrypted, "derivation path");

        let other_tenant = response("tenant-b", true, &[("users", &["email"], &[&s])]);
        let b = DerivedKeys::new(&other_tenant).encrypt(&field(value, "users", "email")).unwrap();
        assert_ne!(b.encrypted, email.encrypted, "tenant");
        // Same header (same secret id), but tenant-b's key does not open tenant-a's field.
        assert_eq!(b.encrypted[..fields::HEADER_LEN], email.encrypted[..fields::HEADER_LEN]);
        let err = DerivedKeys::new(&other_tenant).decrypt(&email).unwrap_err();
        assert_eq!(code(&err), 904, "{err}");

        let other = Secret { id: 7, secret: TenantSecret::generate().unwrap(), current: true };
        let other_secret = response("tenant-a", true, &[("users", &["email"], &[&other])]);
        let o = DerivedKeys::new(&other_secret).encrypt(&field(value, "users", "email")).unwrap();
        assert_ne!(o.encrypted, email.encrypted, "secret");
    }

    #[test]
    fn rotate_moves_old_fields_to_the_current_secret_and_leaves_current_ones() {
        let old = secret(3, false);
        let new = secret(4, true);
        let before = response(
            "tenant-a",
            true,
            &[(
                "users",
                &["email"],
                &[&Secret { id: old.id, secret: old.secret.clone(), current: true }],
            )],
        );
        let stored = DerivedKeys::new(&before).encrypt(&field(b"x@y.z", "users", "email")).unwrap();
        assert_eq!(stored.tenant_secret_id().unwrap(), 3);

        let after = response("tenant-a", true, &[("users", &["email"], &[&new, &old])]);
        let keys = DerivedKeys::new(&after);
        let rotated = keys.rotate(&stored).unwrap();
        assert_eq!(rotated.tenant_secret_id().unwrap(), 4);
        assert_ne!(rotated.encrypted, stored.encrypted);
        assert_eq!(rotated, keys.encrypt(&field(b"x@y.z", "users", "email")).unwrap());
        assert_eq!(keys.decrypt(&rotated).unwrap().plaintext.as_slice(), b"x@y.z");
        // Already current: the same bytes back.
        assert_eq!(keys.rotate(&rotated).unwrap(), rotated);
        // An altered field under the current secret is not passed through as rotated.
        let mut altered = rotated.clone();
        *altered.encrypted.last_mut().unwrap() ^= 1;
        assert_eq!(code(&keys.rotate(&altered).unwrap_err()), 904);
    }

    #[test]
    fn search_terms_cover_every_secret_current_first() {
        let (a, b, c) = (secret(10, false), secret(11, true), secret(12, false));
        let r = response("tenant-a", true, &[("users", &["email"], &[&a, &b, &c])]);
        let keys = DerivedKeys::new(&r);
        let value = field(b"alice@example.com", "users", "email");
        let terms = keys.search_terms(&value).unwrap();
        let ids: Vec<u32> = terms.iter().map(|t| t.tenant_secret_id().unwrap()).collect();
        assert_eq!(ids, [11, 10, 12]);
        assert_eq!(terms[0], keys.encrypt(&value).unwrap());
        // Each term is what that secret wrote when it was current.
        for s in [&a, &c] {
            let then = Secret { id: s.id, secret: s.secret.clone(), current: true };
            let past = response("tenant-a", true, &[("users", &["email"], &[&then])]);
            let written = DerivedKeys::new(&past).encrypt(&value).unwrap();
            assert!(terms.contains(&written), "secret {}", s.id);
        }
        for t in &terms {
            assert_eq!(keys.decrypt(t).unwrap(), value);
        }
    }

    #[test]
    fn unknown_secret_codes_follow_the_proxys_reason() {
        let gone = secret(20, true);
        let old = response("tenant-a", true, &[("users", &["email"], &[&gone])]);
        let stored = DerivedKeys::new(&old).encrypt(&field(b"v", "users", "email")).unwrap();

        let current = secret(21, true);
        let mut now = response("tenant-a", true, &[("users", &["email"], &[&current])]);
        let keys = DerivedKeys::new(&now);
        let err = keys.decrypt(&stored).unwrap_err();
        assert_eq!(code(&err), 904, "{err}");
        assert!(matches!(
            err,
            Error::Deterministic {
                source: DeterministicFailure::Field(DeterministicError::UnknownSecret(20)),
                ..
            }
        ));
        assert_eq!(code(&keys.rotate(&stored).unwrap_err()), 906);

        now.unavailable_secrets.insert(
            "users".into(),
            vec![UnavailableSecret {
                tenant_secret_id: 20,
                code: 202,
                message: "KMS configuration 3 is disabled".into(),
            }],
        );
        let keys = DerivedKeys::new(&now);
        for err in [keys.decrypt(&stored).unwrap_err(), keys.rotate(&stored).unwrap_err()] {
            assert_eq!(err.code(), ErrorCode::KmsConfigurationDisabled, "{err}");
            assert!(err.to_string().contains("KMS configuration 3 is disabled"), "{err}");
        }
        // The entry is for another path: it does not apply.
        let other_path = EncryptedField { secret_path: "orders".into(), ..stored.clone() };
        assert_eq!(code(&keys.decrypt(&other_path).unwrap_err()), 904);
        // An unknown number reads as 100, not as a panic.
        now.unavailable_secrets.get_mut("users").unwrap()[0].code = 64_000;
        assert_eq!(code(&DerivedKeys::new(&now).decrypt(&stored).unwrap_err()), 100);
    }

    #[test]
    fn no_primary_config_is_200_and_old_fields_still_decrypt() {
        let s = secret(5, true);
        let with = response("tenant-a", true, &[("users", &["email"], &[&s])]);
        let stored = DerivedKeys::new(&with).encrypt(&field(b"v", "users", "email")).unwrap();
        let retired = Secret { current: false, ..s };
        let without = response("tenant-a", false, &[("users", &["email"], &[&retired])]);
        let keys = DerivedKeys::new(&without);
        let err = keys.encrypt(&field(b"v", "users", "email")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NoPrimaryKmsConfiguration, "{err}");
        assert_eq!(keys.rotate(&stored).unwrap_err().code(), ErrorCode::NoPrimaryKmsConfiguration);
        assert_eq!(keys.decrypt(&stored).unwrap().plaintext.as_slice(), b"v");
        // Existing records can still be found.
        assert_eq!(keys.search_terms(&field(b"v", "users", "email")).unwrap(), [stored]);
    }

    #[test]
    fn no_current_secret_and_no_keys() {
        let s = secret(5, false);
        let r = response("tenant-a", true, &[("users", &["email"], &[&s])]);
        let keys = DerivedKeys::new(&r);
        let err = keys.encrypt(&field(b"v", "users", "email")).unwrap_err();
        assert_eq!(code(&err), 903, "{err}");
        let as_if = Secret { id: 5, secret: s.secret.clone(), current: true };
        let then = response("tenant-a", true, &[("users", &["email"], &[&as_if])]);
        let stored = DerivedKeys::new(&then).encrypt(&field(b"v", "users", "email")).unwrap();
        assert_eq!(code(&keys.rotate(&stored).unwrap_err()), 906);
        assert_eq!(code(&keys.search_terms(&field(b"v", "orders", "email")).unwrap_err()), 907);
        assert_eq!(code(&keys.search_terms(&field(b"v", "users", "phone")).unwrap_err()), 907);
        let empty = response("tenant-a", true, &[("users", &["email"], &[])]);
        assert_eq!(
            code(
                &DerivedKeys::new(&empty).search_terms(&field(b"v", "users", "email")).unwrap_err()
            ),
            907
        );
        // A path the proxy did not answer for has no current key either.
        assert_eq!(code(&keys.encrypt(&field(b"v", "orders", "email")).unwrap_err()), 903);
    }

    #[test]
    fn altered_and_truncated_fields_give_clear_errors() {
        let s = secret(9, true);
        let r = response("tenant-a", true, &[("users", &["email"], &[&s])]);
        let keys = DerivedKeys::new(&r);
        let stored = keys.encrypt(&field(b"alice@example.com", "users", "email")).unwrap();
        for i in fields::HEADER_LEN..stored.encrypted.len() {
            let mut altered = stored.clone();
            altered.encrypted[i] ^= 0x01;
            let err = keys.decrypt(&altered).unwrap_err();
            assert_eq!(code(&err), 904, "byte {i}: {err}");
        }
        for cut in 0..fields::MIN_FIELD_LEN {
            let short =
                EncryptedField { encrypted: stored.encrypted[..cut].to_vec(), ..stored.clone() };
            let err = keys.decrypt(&short).unwrap_err();
            assert_eq!(code(&err), 905, "{cut} bytes: {err}");
            assert_eq!(code(&keys.rotate(&short).unwrap_err()), 905);
            assert_eq!(code(&short.tenant_secret_id().unwrap_err()), 905);
        }
        let cut = EncryptedField {
            encrypted: stored.encrypted[..stored.encrypted.len() - 1].to_vec(),
            ..stored.clone()
        };
        assert_eq!(code(&keys.decrypt(&cut).unwrap_err()), 904);
        let mut padding = stored.clone();
        padding.encrypted[4] = 1;
        let err = keys.decrypt(&padding).unwrap_err();
        assert_eq!(code(&err), 905);
        assert!(err.to_string().contains("not a deterministic field"), "{err}");
        // Another path's key does not open it.
        let r2 = response("tenant-a", true, &[("users", &["phone"], &[&s])]);
        let wrong = EncryptedField { derivation_path: "phone".into(), ..stored };
        assert_eq!(code(&DerivedKeys::new(&r2).decrypt(&wrong).unwrap_err()), 904);
    }

    #[test]
    fn batches_keep_successes_and_report_each_failure() {
        let s = secret(1, true);
        let r = response("tenant-a", true, &[("users", &["email", "phone"], &[&s])]);
        let keys = DerivedKeys::new(&r);
        let plain: HashMap<String, PlaintextField> = [
            ("a".to_owned(), field(b"alice", "users", "email")),
            ("b".to_owned(), field(b"+1 555", "users", "phone")),
            ("c".to_owned(), field(b"carol", "orders", "email")),
        ]
        .into();
        let encrypted = keys.encrypt_batch(&plain);
        assert_eq!(encrypted.successes.len(), 2);
        assert_eq!(code(&encrypted.failures["c"]), 903);
        assert_eq!(encrypted.successes["a"], keys.encrypt(&plain["a"]).unwrap());

        let mut stored: HashMap<String, EncryptedField> = encrypted.successes.clone();
        let mut short = stored["b"].clone();
        short.encrypted.truncate(10);
        stored.insert("short".into(), short);
        let decrypted = keys.decrypt_batch(&stored);
        assert_eq!(decrypted.successes.len(), 2);
        assert_eq!(decrypted.successes["a"], plain["a"]);
        assert_eq!(decrypted.successes["b"], plain["b"]);
        assert_eq!(code(&decrypted.failures["short"]), 905);
        assert_eq!(decrypted.failures.len(), 1);

        let rotated = keys.rotate_batch(&stored);
        assert_eq!(rotated.successes["a"], stored["a"]);
        assert_eq!(code(&rotated.failures["short"]), 905);

        let terms = keys.search_terms_batch(&plain);
        assert_eq!(terms.successes["a"], [stored["a"].clone()]);
        assert_eq!(code(&terms.failures["c"]), 907);
    }

    /// IronCore's published vector through the SDK's offline layer.
    #[test]
    fn ironcore_published_field_decrypts() {
        let secret =
            TenantSecret::from_base64("ScbKs2h0XSaBQ/vXp04RmChAffLjh2nxBgRT95j21FM=").unwrap();
        let s = Secret { id: 5111, secret, current: true };
        let r = response("tenant-gcp", true, &[("secretPath", &["derivPath"], &[&s])]);
        let stored = EncryptedField::new(
            BASE64.decode("AAAT9wAAeFKwSikcVVSXpGj8z2/7bYkDpEue9kUlUxOj").unwrap(),
            "secretPath",
            "derivPath",
        );
        let keys = DerivedKeys::new(&r);
        assert_eq!(keys.decrypt(&stored).unwrap().plaintext.as_slice(), b"Jim Bridger");
        assert_eq!(
            keys.encrypt(&field(b"Jim Bridger", "secretPath", "derivPath")).unwrap(),
            stored
        );
        assert_eq!(keys.rotate(&stored).unwrap(), stored);
    }

    #[test]
    fn derive_requests_ask_each_pair_once() {
        let meta = RequestMetadata::new("tenant-a", "svc");
        let request = derive_request(
            &meta,
            [("users", "email"), ("users", "phone"), ("users", "email"), ("orders", "email")],
        );
        assert_eq!(request.tenant_id, "tenant-a");
        assert_eq!(request.derivation_type, "sha512");
        assert_eq!(request.secret_type, "deterministic");
        let expected: BTreeMap<String, Vec<String>> = [
            ("orders".to_owned(), vec!["email".to_owned()]),
            ("users".to_owned(), vec!["email".to_owned(), "phone".to_owned()]),
        ]
        .into();
        assert_eq!(request.paths, expected);
        // Fields that are not deterministic fields ask for nothing.
        let good = EncryptedField::new(vec![0; fields::MIN_FIELD_LEN], "users", "email");
        let bad = EncryptedField::new(vec![0; 3], "orders", "email");
        assert_eq!(encrypted_paths([&good, &bad]), [("users", "email")]);
    }

    #[test]
    fn encrypted_fields_serialize_as_base64_and_plaintext_is_redacted() {
        let stored = EncryptedField::new(vec![0, 0, 0, 1, 0, 0, 0xff], "users", "email");
        let json = serde_json::to_value(&stored).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"encrypted": "AAAAAQAA/w==", "secretPath": "users", "derivationPath": "email"})
        );
        assert_eq!(serde_json::from_value::<EncryptedField>(json).unwrap(), stored);
        assert!(
            serde_json::from_str::<EncryptedField>(
                r#"{"encrypted":"not base64!","secretPath":"a","derivationPath":"b"}"#
            )
            .is_err()
        );
        let debug = format!("{:?}", field(b"123-45-6789", "users", "ssn"));
        assert!(!debug.contains("123-45") && debug.contains("REDACTED"), "{debug}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_round_trips_hold(
            bytes in proptest::collection::vec(any::<u8>(), 0..96),
            value in proptest::collection::vec(any::<u8>(), 0..64),
            id in prop_oneof![Just(1u32), Just(2u32), any::<u32>()],
        ) {
            let (one, two) = (secret(1, false), secret(2, true));
            let r = response("tenant-a", true, &[("p", &["d"], &[&one, &two])]);
            let keys = DerivedKeys::new(&r);
            let mut bytes = bytes;
            if bytes.len() >= 6 {
                bytes[..4].copy_from_slice(&id.to_be_bytes());
            }
            let stored = EncryptedField::new(bytes, "p", "d");
            let _ = keys.decrypt(&stored).map_err(|e| e.code());
            let _ = keys.rotate(&stored).map_err(|e| e.code());
            let _ = stored.tenant_secret_id();
            let plain = PlaintextField::new(value, "p", "d");
            let sealed = keys.encrypt(&plain).unwrap();
            prop_assert_eq!(keys.decrypt(&sealed).unwrap(), plain.clone());
            prop_assert_eq!(keys.search_terms(&plain).unwrap().len(), 2);
        }
    }
}
