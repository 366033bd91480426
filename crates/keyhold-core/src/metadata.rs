//! Request metadata: who asks for a key, for which tenant and which data. It travels with every
//! request and feeds the audit trail; it never holds key material.
//!
//! On the wire (the IronCore TSP shape):
//!
//! ```json
//! { "tenantId": "tenant-1",
//!   "iclFields": { "requestingId": "user-7", "dataLabel": "PII", "sourceIp": "10.0.0.1",
//!                  "objectId": "invoice-9", "requestId": "req-abc" },
//!   "customFields": { "org": "sales" } }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::document::MAX_TENANT_ID_LEN;

/// Longest accepted value of any metadata string, in bytes.
pub const MAX_FIELD_LEN: usize = 4096;
/// Most custom fields one request may carry.
pub const MAX_CUSTOM_FIELDS: usize = 64;

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// `tenantId` is missing, empty or too long.
    #[error("tenantId must be 1 to 1024 bytes")]
    InvalidTenantId,
    /// `iclFields.requestingId` is missing or empty.
    #[error("iclFields.requestingId is required")]
    MissingRequestingId,
    /// A value is longer than [`MAX_FIELD_LEN`], or there are too many custom fields.
    #[error("metadata field {0} is too long or there are too many custom fields")]
    TooLarge(&'static str),
}

/// The standard audit fields (`iclFields` on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IclFields {
    /// Who (user or service) is asking. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requesting_id: Option<String>,
    /// A label for the kind of data (e.g. `PII`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_label: Option<String>,
    /// The end user's IP address, as the application saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// The id of the object (record, file) the key protects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// The application's request id, for correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Security events only: the event name (Java/Node/Go clients put it here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// Metadata for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMetadata {
    /// The tenant whose key is used.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tenant_id: String,
    /// The standard audit fields.
    #[serde(default, deserialize_with = "null_as_default")]
    pub icl_fields: IclFields,
    /// Free-form string fields, passed through to the audit trail.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub custom_fields: BTreeMap<String, String>,
}

impl RequestMetadata {
    /// Metadata with the two required fields.
    pub fn new(tenant_id: impl Into<String>, requesting_id: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            icl_fields: IclFields {
                requesting_id: Some(requesting_id.into()),
                ..IclFields::default()
            },
            custom_fields: BTreeMap::new(),
        }
    }

    /// Sets the data label.
    pub fn with_data_label(mut self, label: impl Into<String>) -> Self {
        self.icl_fields.data_label = Some(label.into());
        self
    }

    /// Sets the source IP.
    pub fn with_source_ip(mut self, ip: impl Into<String>) -> Self {
        self.icl_fields.source_ip = Some(ip.into());
        self
    }

    /// Sets the object id.
    pub fn with_object_id(mut self, id: impl Into<String>) -> Self {
        self.icl_fields.object_id = Some(id.into());
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.icl_fields.request_id = Some(id.into());
        self
    }

    /// Adds a custom field.
    pub fn with_custom_field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.custom_fields.insert(key.into(), value.into());
        self
    }

    /// The same metadata for another tenant (used by rekey).
    pub fn for_tenant(&self, tenant_id: impl Into<String>) -> Self {
        Self { tenant_id: tenant_id.into(), ..self.clone() }
    }

    /// Checks required fields and size limits.
    pub fn validate(&self) -> Result<(), MetadataError> {
        validate_tenant_id(&self.tenant_id)?;
        match &self.icl_fields.requesting_id {
            Some(id) if !id.is_empty() => {}
            _ => return Err(MetadataError::MissingRequestingId),
        }
        let fields = &self.icl_fields;
        for (name, value) in [
            ("requestingId", &fields.requesting_id),
            ("dataLabel", &fields.data_label),
            ("sourceIp", &fields.source_ip),
            ("objectId", &fields.object_id),
            ("requestId", &fields.request_id),
            ("event", &fields.event),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_FIELD_LEN) {
                return Err(MetadataError::TooLarge(name));
            }
        }
        if self.custom_fields.len() > MAX_CUSTOM_FIELDS
            || self
                .custom_fields
                .iter()
                .any(|(k, v)| k.len() > MAX_FIELD_LEN || v.len() > MAX_FIELD_LEN)
        {
            return Err(MetadataError::TooLarge("customFields"));
        }
        Ok(())
    }
}

/// Reads JSON `null` as the type's default: IronCore's clients send `null` for absent optional
/// values (PHP and alloy for `iclFields` members, Go for `customFields`).
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Checks that a tenant id is 1 to 1024 bytes.
pub fn validate_tenant_id(tenant_id: &str) -> Result<(), MetadataError> {
    if tenant_id.is_empty() || tenant_id.len() > MAX_TENANT_ID_LEN {
        return Err(MetadataError::InvalidTenantId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let m = RequestMetadata::new("t1", "user-7")
            .with_data_label("PII")
            .with_source_ip("10.0.0.1")
            .with_object_id("obj")
            .with_request_id("req")
            .with_custom_field("org", "sales");
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "tenantId": "t1",
                "iclFields": {"requestingId": "user-7", "dataLabel": "PII", "sourceIp": "10.0.0.1",
                              "objectId": "obj", "requestId": "req"},
                "customFields": {"org": "sales"}
            })
        );
        let back: RequestMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        assert!(m.validate().is_ok());
    }

    #[test]
    fn nulls_read_as_absent() {
        let m: RequestMetadata = serde_json::from_str(
            r#"{"tenantId":"t","iclFields":{"requestingId":"u","dataLabel":null,"sourceIp":null},"customFields":null}"#,
        )
        .unwrap();
        assert_eq!(m, RequestMetadata::new("t", "u"));
        let m: RequestMetadata =
            serde_json::from_str(r#"{"tenantId":"t","iclFields":null}"#).unwrap();
        assert_eq!(m.validate(), Err(MetadataError::MissingRequestingId));
    }

    #[test]
    fn validation() {
        assert_eq!(RequestMetadata::new("", "u").validate(), Err(MetadataError::InvalidTenantId));
        assert_eq!(
            RequestMetadata::new("t", "").validate(),
            Err(MetadataError::MissingRequestingId)
        );
        let missing: RequestMetadata = serde_json::from_str(r#"{"tenantId":"t"}"#).unwrap();
        assert_eq!(missing.validate(), Err(MetadataError::MissingRequestingId));
        let long = RequestMetadata::new("t", "u").with_data_label("x".repeat(MAX_FIELD_LEN + 1));
        assert_eq!(long.validate(), Err(MetadataError::TooLarge("dataLabel")));
        let mut many = RequestMetadata::new("t", "u");
        for i in 0..=MAX_CUSTOM_FIELDS {
            many.custom_fields.insert(i.to_string(), String::new());
        }
        assert_eq!(many.validate(), Err(MetadataError::TooLarge("customFields")));
    }
}
