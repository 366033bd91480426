//! The JSON bodies of the Tenant Security Proxy API (IronCore TSP v1 wire format), shared by the
//! proxy and the SDK. Routes, fields and codes are documented in `docs/tsp-api.md`.
//!
//! Request bodies repeat the metadata fields (`tenantId`, `iclFields`, `customFields`) instead of
//! using `#[serde(flatten)]`, which would buffer every body through an intermediate tree.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::metadata::{IclFields, RequestMetadata, null_as_default};
use crate::secret::{Dek, DerivedFieldKey};

/// Route of the wrap call, relative to the proxy's base URL.
pub const ROUTE_WRAP: &str = "/api/1/document/wrap";
/// Route of the unwrap call.
pub const ROUTE_UNWRAP: &str = "/api/1/document/unwrap";
/// Route of the batch wrap call.
pub const ROUTE_BATCH_WRAP: &str = "/api/1/document/batch-wrap";
/// Route of the batch unwrap call.
pub const ROUTE_BATCH_UNWRAP: &str = "/api/1/document/batch-unwrap";
/// Route of the rekey call.
pub const ROUTE_REKEY: &str = "/api/1/document/rekey";
/// Route of the batch rekey call (a Keyhold extension; IronCore's clients do not call it).
pub const ROUTE_BATCH_REKEY: &str = "/api/1/document/batch-rekey";
/// Route where applications post security events.
pub const ROUTE_SECURITY_EVENT: &str = "/api/1/event/security-event";
/// Route where clients that cache keys report how often they used them.
pub const ROUTE_REPORT_OPERATIONS: &str = "/api/1/document/report-operations";
/// Route that derives deterministic field keys from the tenant's secrets.
pub const ROUTE_DERIVE_KEY: &str = "/api/1/key/derive-with-secret-path";
/// The authorization scheme: `Authorization: cmk <api-key>`.
pub const AUTH_SCHEME: &str = "cmk";

macro_rules! with_metadata {
    ($(#[$doc:meta])* pub struct $name:ident { $( $(#[$fdoc:meta])* pub $field:ident : $ty:ty, )* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The tenant whose key is used.
            #[serde(default, deserialize_with = "null_as_default")]
            pub tenant_id: String,
            /// The standard audit fields.
            #[serde(default, deserialize_with = "null_as_default")]
            pub icl_fields: IclFields,
            /// Free-form audit fields.
            #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
            pub custom_fields: BTreeMap<String, String>,
            $( $(#[$fdoc])* pub $field: $ty, )*
        }

        impl $name {
            /// The request's metadata (cloned out of the body).
            pub fn metadata(&self) -> RequestMetadata {
                RequestMetadata {
                    tenant_id: self.tenant_id.clone(),
                    icl_fields: self.icl_fields.clone(),
                    custom_fields: self.custom_fields.clone(),
                }
            }

            /// A request with `meta`'s metadata and the given fields of its own.
            #[allow(clippy::too_many_arguments)]
            pub fn from_metadata(meta: &RequestMetadata, $($field: $ty),*) -> Self {
                Self {
                    tenant_id: meta.tenant_id.clone(),
                    icl_fields: meta.icl_fields.clone(),
                    custom_fields: meta.custom_fields.clone(),
                    $($field,)*
                }
            }

            /// Moves the metadata out, leaving the request's own fields.
            pub fn split_metadata(self) -> (RequestMetadata, ($($ty,)*)) {
                (
                    RequestMetadata {
                        tenant_id: self.tenant_id,
                        icl_fields: self.icl_fields,
                        custom_fields: self.custom_fields,
                    },
                    ($(self.$field,)*),
                )
            }
        }
    };
}

with_metadata! {
    /// `POST /api/1/document/wrap`: a new DEK and its EDEK for the tenant.
    pub struct WrapRequest {}
}

with_metadata! {
    /// `POST /api/1/document/unwrap`: the DEK inside an EDEK.
    pub struct UnwrapRequest {
        /// The EDEK, standard base64.
        #[serde(default, deserialize_with = "null_as_default")]
        pub encrypted_document_key: String,
    }
}

with_metadata! {
    /// `POST /api/1/document/batch-wrap`: one new DEK and EDEK per document id.
    pub struct BatchWrapRequest {
        /// The ids the caller will use to match keys to documents.
        #[serde(default, deserialize_with = "null_as_default")]
        pub document_ids: Vec<String>,
    }
}

with_metadata! {
    /// `POST /api/1/document/batch-unwrap`: the DEK of each EDEK, by document id.
    pub struct BatchUnwrapRequest {
        /// Document id → EDEK (standard base64).
        #[serde(default, deserialize_with = "null_as_default")]
        pub edeks: HashMap<String, String>,
    }
}

with_metadata! {
    /// `POST /api/1/document/rekey`: unwrap an EDEK and wrap its DEK again for a (possibly
    /// different) tenant's primary KMS configuration.
    pub struct RekeyRequest {
        /// The EDEK, standard base64.
        #[serde(default, deserialize_with = "null_as_default")]
        pub encrypted_document_key: String,
        /// The tenant the new EDEK is for.
        #[serde(default, deserialize_with = "null_as_default")]
        pub new_tenant_id: String,
    }
}

with_metadata! {
    /// `POST /api/1/document/batch-rekey` (Keyhold extension): each EDEK of `tenantId` wrapped
    /// again for the primary KMS configuration of `newTenantId`, by id. The response carries no
    /// data keys.
    pub struct BatchRekeyRequest {
        /// Id → EDEK (standard base64).
        #[serde(default, deserialize_with = "null_as_default")]
        pub edeks: HashMap<String, String>,
        /// The tenant the new EDEKs are for.
        #[serde(default, deserialize_with = "null_as_default")]
        pub new_tenant_id: String,
    }
}

with_metadata! {
    /// `POST /api/1/event/security-event`: an application's security event for the audit trail.
    pub struct SecurityEventRequest {
        /// When the event happened, in milliseconds since the Unix epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp_millis: Option<i64>,
        /// The event name when sent at the top level (IronCore's alloy SDK does this).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub event: Option<String>,
    }
}

with_metadata! {
    /// `POST /api/1/document/report-operations`: how often a client used keys it cached.
    pub struct ReportOperationsRequest {
        /// EDEK (standard base64) → counts.
        #[serde(default, deserialize_with = "null_as_default")]
        pub operations: HashMap<String, OperationCounts>,
    }
}

with_metadata! {
    /// `POST /api/1/key/derive-with-secret-path`: field keys derived from every usable tenant
    /// secret of each secret path, for each of its derivation paths (deterministic encryption).
    pub struct DeriveKeyRequest {
        /// Secret path → derivation paths.
        #[serde(default, deserialize_with = "null_as_default")]
        pub paths: BTreeMap<String, Vec<String>>,
        /// The derivation; the clients send `sha512`, the only one implemented.
        #[serde(default, deserialize_with = "null_as_default")]
        pub derivation_type: String,
        /// The kind of secret; the clients send `deterministic`, the only one implemented.
        #[serde(default, deserialize_with = "null_as_default")]
        pub secret_type: String,
    }
}

/// One key derived from one tenant secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DerivedKey {
    /// The 64-byte AES-256-SIV key, standard base64 on the wire.
    pub derived_key: DerivedFieldKey,
    /// The secret's id, written in the header of every field it encrypts.
    pub tenant_secret_id: u32,
    /// Whether this is the secret new fields are encrypted with (at most one per path).
    pub current: bool,
}

/// A tenant secret of the path that could not be used, and why (a Keyhold extension: IronCore's
/// clients ignore it; Keyhold's SDK reports its code for a field under that secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnavailableSecret {
    /// The secret's id.
    pub tenant_secret_id: u32,
    /// Why it could not be used (202 for a disabled KMS configuration, a KMS code otherwise).
    pub code: u16,
    /// A human-readable reason.
    pub message: String,
}

/// Response of `key/derive-with-secret-path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeriveKeyResponse {
    /// Whether the tenant has a primary KMS configuration (without one, no key is current and
    /// new fields cannot be encrypted; old ones still decrypt).
    pub has_primary_config: bool,
    /// Secret path → derivation path → one key per usable secret of the path.
    pub derived_keys: BTreeMap<String, BTreeMap<String, Vec<DerivedKey>>>,
    /// Secret path → the secrets that exist but could not be used (omitted when none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable_secrets: BTreeMap<String, Vec<UnavailableSecret>>,
}

impl DeriveKeyResponse {
    /// The keys derived for one secret path and derivation path (`None` if none were asked for
    /// or none could be derived).
    pub fn keys(&self, secret_path: &str, derivation_path: &str) -> Option<&[DerivedKey]> {
        self.derived_keys.get(secret_path)?.get(derivation_path).map(Vec::as_slice)
    }

    /// Why the secret `id` of `secret_path` could not be used, if the proxy said.
    pub fn unavailable(&self, secret_path: &str, id: u32) -> Option<&UnavailableSecret> {
        self.unavailable_secrets.get(secret_path)?.iter().find(|u| u.tenant_secret_id == id)
    }
}

/// Uses of one cached key, reported by a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationCounts {
    /// Encryptions done with the key.
    #[serde(default)]
    pub wraps: u64,
    /// Decryptions done with the key.
    #[serde(default)]
    pub unwraps: u64,
}

/// A DEK and its EDEK (`wrap`, `rekey`, and each entry of `batch-wrap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The data key, standard base64 on the wire.
    pub dek: Dek,
    /// The EDEK, standard base64.
    pub edek: String,
}

/// A DEK (`unwrap`, and each entry of `batch-unwrap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwrappedKey {
    /// The data key, standard base64 on the wire.
    pub dek: Dek,
}

/// The error body of every failed call, and of each failed id in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The numeric code.
    pub code: u16,
    /// A human-readable message; never contains key material.
    pub message: String,
}

impl ErrorBody {
    /// A body for `code` with its default message.
    pub fn from_code(code: ErrorCode) -> Self {
        Self { code: code.code(), message: code.default_message().to_owned() }
    }

    /// A body for `code` with a specific message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.code(), message: message.into() }
    }

    /// The code as a known enum value (unknown numbers read as [`ErrorCode::UnknownError`]).
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from_code(self.code).unwrap_or(ErrorCode::UnknownError)
    }
}

/// Response of `batch-wrap`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchWrapResponse {
    /// Document id → DEK and EDEK, for each id that succeeded.
    #[serde(default)]
    pub keys: HashMap<String, WrappedKey>,
    /// Document id → error, for each id that failed.
    #[serde(default)]
    pub failures: HashMap<String, ErrorBody>,
}

/// Response of `batch-unwrap`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchUnwrapResponse {
    /// Document id → DEK, for each id that succeeded.
    #[serde(default)]
    pub keys: HashMap<String, UnwrappedKey>,
    /// Document id → error, for each id that failed.
    #[serde(default)]
    pub failures: HashMap<String, ErrorBody>,
}

/// Response of `batch-rekey` (Keyhold extension): every requested id is in exactly one map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRekeyResponse {
    /// Id → the new EDEK (standard base64), for each id that succeeded.
    #[serde(default)]
    pub edeks: HashMap<String, String>,
    /// Id → error, for each id that failed.
    #[serde(default)]
    pub failures: HashMap<String, ErrorBody>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_request_shape() {
        let json = r#"{"tenantId":"t","iclFields":{"requestingId":"u"},"customFields":{},"encryptedDocumentKey":"AAAA"}"#;
        let req: UnwrapRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.tenant_id, "t");
        assert_eq!(req.encrypted_document_key, "AAAA");
        let (meta, (edek,)) = req.split_metadata();
        assert_eq!(meta.icl_fields.requesting_id.as_deref(), Some("u"));
        assert_eq!(edek, "AAAA");
    }

    #[test]
    fn clients_null_fields_are_accepted() {
        // Go's client sends "customFields": null; PHP and alloy send null iclFields members.
        let req: BatchUnwrapRequest = serde_json::from_str(
            r#"{"tenantId":"t","iclFields":{"requestingId":"u","objectId":null},"customFields":null,"edeks":null}"#,
        )
        .unwrap();
        assert!(req.custom_fields.is_empty() && req.edeks.is_empty());
    }

    #[test]
    fn wrapped_key_shape() {
        let key = WrappedKey { dek: Dek::from_bytes([0; 32]), edek: "ZWRlaw==".into() };
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(
            json,
            r#"{"dek":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","edek":"ZWRlaw=="}"#
        );
        let back: WrappedKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        // An escaped slash forces an owned string; it must still decode.
        let escaped = r#"{"dek":"\/\/\/\/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","edek":""}"#;
        let key: WrappedKey = serde_json::from_str(escaped).unwrap();
        assert_eq!(key.dek.expose_secret()[0], 0xff);
        assert!(serde_json::from_str::<UnwrappedKey>(r#"{"dek":"AAAA"}"#).is_err());
    }

    #[test]
    fn derive_shapes_are_ironcores() {
        // The body IronCore's clients send (Node's KmsApi.deriveKey).
        let req: DeriveKeyRequest = serde_json::from_str(
            r#"{"tenantId":"t","iclFields":{"requestingId":"u"},"customFields":{},"paths":{"users":["email","phone"]},"derivationType":"sha512","secretType":"deterministic"}"#,
        )
        .unwrap();
        assert_eq!(req.paths["users"], ["email", "phone"]);
        assert_eq!(req.derivation_type, "sha512");
        let mut resp = DeriveKeyResponse { has_primary_config: true, ..Default::default() };
        resp.derived_keys.entry("users".into()).or_default().insert(
            "email".into(),
            vec![DerivedKey {
                derived_key: DerivedFieldKey::from_bytes([0; 64]),
                tenant_secret_id: 5111,
                current: true,
            }],
        );
        let json = serde_json::to_value(&resp).unwrap();
        let zero64 = "A".repeat(86) + "==";
        assert_eq!(
            json,
            serde_json::json!({"hasPrimaryConfig": true, "derivedKeys": {"users": {"email": [
                {"derivedKey": zero64, "tenantSecretId": 5111, "current": true}]}}})
        );
        let back: DeriveKeyResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back.keys("users", "email").unwrap()[0].tenant_secret_id, 5111);
        assert!(back.keys("users", "phone").is_none() && back.keys("x", "email").is_none());
    }

    #[test]
    fn batch_and_error_shapes() {
        let mut resp = BatchUnwrapResponse::default();
        resp.failures.insert("doc1".into(), ErrorBody::from_code(ErrorCode::InvalidProvidedEdek));
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keys": {}, "failures": {"doc1": {"code": 203, "message": "Provided EDEK was not valid."}}})
        );
        let event: SecurityEventRequest = serde_json::from_str(
            r#"{"tenantId":"t","iclFields":{"requestingId":"u","event":"USER_LOGIN"},"timestampMillis":5}"#,
        )
        .unwrap();
        assert_eq!(event.icl_fields.event.as_deref(), Some("USER_LOGIN"));
        assert_eq!(event.timestamp_millis, Some(5));
    }
}
