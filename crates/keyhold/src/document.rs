//! Document encryption: a map of field name → bytes, encrypted under one fresh data key.

use std::collections::{BTreeMap, HashMap};

use keyhold_core::document::{DocumentError, DocumentKey, parse_field};
use keyhold_core::ironcore;
use keyhold_core::metadata::RequestMetadata;
use keyhold_core::secret::Dek;
use keyhold_core::wire::ErrorBody;
use serde::{Deserialize, Serialize};

use crate::Edek;
use crate::client::Client;
use crate::error::{Error, Result};

/// A plaintext document: field name → bytes.
pub type Document = BTreeMap<String, Vec<u8>>;

/// An encrypted document: what the application stores. The fields are in the Keyhold
/// encrypted-field format (`docs/formats.md`); the EDEK unwraps to their key through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedDocument {
    /// The wrapped data key.
    pub edek: Edek,
    /// Field name → encrypted bytes.
    pub fields: BTreeMap<String, Vec<u8>>,
}

/// The layout encrypted fields are written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldFormat {
    /// Keyhold's format (default): tenant, version and field name bound as associated data,
    /// key commitment. See `docs/formats.md`.
    #[default]
    Keyhold,
    /// IronCore's v3 layout, for data that IronCore's client SDKs must also read.
    IronCoreV3,
}

/// Successes and per-item failures of a batch call.
#[derive(Debug)]
pub struct BatchResult<T> {
    /// Item id → result, for each item that succeeded.
    pub successes: HashMap<String, T>,
    /// Item id → error, for each item that failed.
    pub failures: HashMap<String, Error>,
}

impl<T> Default for BatchResult<T> {
    fn default() -> Self {
        Self { successes: HashMap::new(), failures: HashMap::new() }
    }
}

fn encrypt_fields(
    dek: &Dek,
    tenant_id: &str,
    document: &Document,
) -> Result<BTreeMap<String, Vec<u8>>> {
    encrypt_fields_as(dek, tenant_id, document, FieldFormat::Keyhold)
}

fn encrypt_fields_as(
    dek: &Dek,
    tenant_id: &str,
    document: &Document,
    format: FieldFormat,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let encrypt_error = |source| Error::Document { operation: "encrypt", source };
    if format == FieldFormat::IronCoreV3 {
        return document
            .iter()
            .map(|(name, value)| {
                Ok((
                    name.clone(),
                    ironcore::encrypt_v3(dek, tenant_id, value).map_err(encrypt_error)?,
                ))
            })
            .collect();
    }
    let key = DocumentKey::new(dek, tenant_id).map_err(encrypt_error)?;
    document
        .iter()
        .map(|(name, value)| {
            Ok((name.clone(), key.encrypt_field(name, value).map_err(encrypt_error)?))
        })
        .collect()
}

/// Decrypts each field in whichever layout it was written: Keyhold's, or IronCore's v3.
fn decrypt_fields(
    dek: &Dek,
    tenant_id: &str,
    fields: &BTreeMap<String, Vec<u8>>,
) -> Result<Document> {
    let decrypt_error = |source| Error::Document { operation: "decrypt", source };
    let key = DocumentKey::new(dek, tenant_id).map_err(decrypt_error)?;
    fields
        .iter()
        .map(|(name, value)| {
            let plain = if ironcore::is_v3(value) {
                ironcore::decrypt_v3(dek, Some(tenant_id), value)
            } else {
                key.decrypt_field(name, value)
            };
            Ok((name.clone(), plain.map_err(decrypt_error)?))
        })
        .collect()
}

/// Checks, before any proxy call, that every field is a Keyhold field of this tenant.
fn precheck(document: &EncryptedDocument, tenant_id: &str) -> Result<()> {
    if document.edek.as_str().is_empty() {
        return Err(Error::InvalidArgument("the encrypted document has no EDEK".into()));
    }
    for value in document.fields.values() {
        let decrypt_error = |source| Error::Document { operation: "decrypt", source };
        let header_tenant = if ironcore::is_v3(value) {
            ironcore::parse_v3(value).map_err(decrypt_error)?.tenant_id
        } else {
            Some(parse_field(value).map_err(decrypt_error)?.tenant_id.to_owned())
        };
        if header_tenant.is_some_and(|t| t != tenant_id) {
            return Err(Error::Document {
                operation: "decrypt",
                source: DocumentError::TenantMismatch,
            });
        }
    }
    Ok(())
}

fn proxy_failure(body: ErrorBody) -> Error {
    Error::Proxy { code: body.error_code(), status: 200, message: body.message }
}

impl Client {
    /// Encrypts every field of `document` under a new data key of `meta.tenant_id`. The key is
    /// wiped before this returns; only its EDEK is kept.
    pub async fn encrypt(
        &self,
        document: &Document,
        meta: &RequestMetadata,
    ) -> Result<EncryptedDocument> {
        let key = self.wrap_key(meta).await?;
        let fields = encrypt_fields(&key.dek, &meta.tenant_id, document)?;
        Ok(EncryptedDocument { edek: Edek::from(key.edek), fields })
    }

    /// Encrypts `document` in the given field layout (e.g. [`FieldFormat::IronCoreV3`] for data
    /// that IronCore's client SDKs must read too). [`decrypt`](Self::decrypt) reads both.
    pub async fn encrypt_with_format(
        &self,
        document: &Document,
        meta: &RequestMetadata,
        format: FieldFormat,
    ) -> Result<EncryptedDocument> {
        let key = self.wrap_key(meta).await?;
        let fields = encrypt_fields_as(&key.dek, &meta.tenant_id, document, format)?;
        Ok(EncryptedDocument { edek: Edek::from(key.edek), fields })
    }

    /// Encrypts a new version of a document under the data key of an existing EDEK (so the
    /// stored EDEK does not change).
    pub async fn encrypt_with_existing_edek(
        &self,
        document: &Document,
        edek: &Edek,
        meta: &RequestMetadata,
    ) -> Result<EncryptedDocument> {
        let dek = self.unwrap_key(edek, meta).await?;
        let fields = encrypt_fields(&dek, &meta.tenant_id, document)?;
        Ok(EncryptedDocument { edek: edek.clone(), fields })
    }

    /// Decrypts every field of `document`.
    pub async fn decrypt(
        &self,
        document: &EncryptedDocument,
        meta: &RequestMetadata,
    ) -> Result<Document> {
        precheck(document, &meta.tenant_id)?;
        let dek = self.unwrap_key(&document.edek, meta).await?;
        decrypt_fields(&dek, &meta.tenant_id, &document.fields)
    }

    /// Encrypts many documents with one proxy call. A document whose key could not be made is
    /// reported in `failures`; the others succeed.
    pub async fn encrypt_batch(
        &self,
        documents: &HashMap<String, Document>,
        meta: &RequestMetadata,
    ) -> Result<BatchResult<EncryptedDocument>> {
        let ids: Vec<String> = documents.keys().cloned().collect();
        let response = self.batch_wrap_keys(ids, meta).await?;
        let mut result = BatchResult::default();
        for (id, failure) in response.failures {
            result.failures.insert(id, proxy_failure(failure));
        }
        for (id, key) in response.keys {
            let Some(document) = documents.get(&id) else {
                continue;
            };
            match encrypt_fields(&key.dek, &meta.tenant_id, document) {
                Ok(fields) => {
                    result
                        .successes
                        .insert(id, EncryptedDocument { edek: Edek::from(key.edek), fields });
                }
                Err(e) => {
                    result.failures.insert(id, e);
                }
            }
        }
        for id in documents.keys() {
            if !result.successes.contains_key(id) && !result.failures.contains_key(id) {
                result.failures.insert(
                    id.clone(),
                    Error::InvalidResponse(format!("the proxy returned no key for {id:?}")),
                );
            }
        }
        Ok(result)
    }

    /// Decrypts many documents with one proxy call; failures are reported per document.
    pub async fn decrypt_batch(
        &self,
        documents: &HashMap<String, EncryptedDocument>,
        meta: &RequestMetadata,
    ) -> Result<BatchResult<Document>> {
        let mut result = BatchResult::default();
        let mut edeks = HashMap::new();
        for (id, document) in documents {
            match precheck(document, &meta.tenant_id) {
                Ok(()) => {
                    edeks.insert(id.clone(), document.edek.as_str().to_owned());
                }
                Err(e) => {
                    result.failures.insert(id.clone(), e);
                }
            }
        }
        if edeks.is_empty() {
            return Ok(result);
        }
        let response = self.batch_unwrap_keys(edeks, meta).await?;
        for (id, failure) in response.failures {
            result.failures.insert(id, proxy_failure(failure));
        }
        for (id, key) in response.keys {
            let Some(document) = documents.get(&id) else {
                continue;
            };
            match decrypt_fields(&key.dek, &meta.tenant_id, &document.fields) {
                Ok(plain) => {
                    result.successes.insert(id, plain);
                }
                Err(e) => {
                    result.failures.insert(id, e);
                }
            }
        }
        Ok(result)
    }
}
