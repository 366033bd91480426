//! What the broker accepts: tenant ids, KMS and SIEM types, their non-secret settings, sealed
//! blobs. Everything here runs before a transaction starts, so bad input stores nothing.
//!
//! The field lists mirror the proxy's configuration structs (`keyhold-kms` backends and
//! `keyhold-audit` sinks): a configuration is exactly a `[[tenants.kms_configs]]` /
//! `[[tenants.audit_sinks]]` TOML entry minus its secret fields, which travel sealed. A secret
//! field found in clear `settings` is refused: the caller must seal it.

use serde_json::{Map, Value};

use crate::error::StoreError;

/// Longest tenant id (as the proxy's, `keyhold_core::document::MAX_TENANT_ID_LEN`).
pub const MAX_TENANT_ID_LEN: usize = keyhold_core::document::MAX_TENANT_ID_LEN;
/// Longest tenant name, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Longest SIEM configuration name.
pub const MAX_SIEM_NAME_LEN: usize = 64;
/// Largest `settings` object, as JSON text.
pub const MAX_SETTINGS_LEN: usize = 16 * 1024;
/// Largest sealed blob.
pub const MAX_SEALED_LEN: usize = 64 * 1024;

/// The fields of one configuration type.
struct TypeRules {
    name: &'static str,
    /// Non-secret fields that must be present (non-empty strings).
    required: &'static [&'static str],
    /// Other non-secret fields.
    optional: &'static [&'static str],
    /// Secret fields (`a.b` for a field of a nested table): only ever sealed.
    secrets: &'static [&'static str],
    /// Whether the configuration cannot work without sealed secrets.
    needs_sealed: bool,
}

const KMS_TYPES: &[TypeRules] = &[
    TypeRules {
        name: "local",
        required: &["key"],
        optional: &[],
        secrets: &[],
        needs_sealed: false,
    },
    TypeRules {
        name: "vendor",
        required: &[],
        optional: &["label"],
        secrets: &["key"],
        needs_sealed: true,
    },
    TypeRules {
        name: "aws",
        required: &["key_id"],
        optional: &["region", "endpoint_url", "role_arn", "external_id"],
        secrets: &["access_key_id", "secret_access_key", "session_token"],
        needs_sealed: false,
    },
    TypeRules {
        name: "vault",
        required: &["address", "key"],
        optional: &["mount", "namespace", "approle", "ca_cert_file", "tls_server_name"],
        secrets: &["token", "approle.secret_id"],
        needs_sealed: true,
    },
    TypeRules {
        name: "pkcs11",
        required: &["module", "key_label"],
        optional: &["token_label", "slot_id", "mechanism", "max_sessions"],
        secrets: &["pin"],
        needs_sealed: true,
    },
    TypeRules {
        name: "kmip",
        required: &["address", "ca_cert_file", "client_cert_file", "key_name"],
        optional: &["server_name", "mac_key_name", "mechanism", "key_refresh_seconds", "pool_size"],
        secrets: &["client_key"],
        needs_sealed: true,
    },
    TypeRules {
        name: "gcp",
        required: &["key_name"],
        optional: &["endpoint", "token_uri"],
        secrets: &["credentials_file"],
        needs_sealed: true,
    },
    TypeRules {
        name: "azure",
        required: &["key_id", "tenant_id", "client_id"],
        optional: &["algorithm", "authority_host", "endpoint"],
        secrets: &["client_secret"],
        needs_sealed: true,
    },
];

const SIEM_TYPES: &[TypeRules] = &[
    TypeRules {
        name: "syslog",
        required: &["address"],
        optional: &["tls", "ca_cert_file", "server_name", "app_name"],
        secrets: &["secret"],
        needs_sealed: false,
    },
    TypeRules {
        name: "opensearch",
        required: &["url"],
        optional: &["index", "username", "ca_cert_file"],
        secrets: &["secret"],
        needs_sealed: false,
    },
    TypeRules {
        name: "splunk",
        required: &["url"],
        optional: &["index", "sourcetype", "ca_cert_file"],
        secrets: &["secret"],
        needs_sealed: true,
    },
    TypeRules {
        name: "datadog",
        required: &[],
        optional: &["url", "service", "tags", "ca_cert_file"],
        secrets: &["secret"],
        needs_sealed: true,
    },
    TypeRules {
        name: "webhook",
        required: &["url"],
        optional: &["ca_cert_file"],
        secrets: &["secret"],
        needs_sealed: true,
    },
    TypeRules {
        name: "file",
        required: &["path"],
        optional: &[],
        secrets: &["secret"],
        needs_sealed: false,
    },
];

/// The KMS types the broker accepts.
pub fn kms_types() -> impl Iterator<Item = &'static str> {
    KMS_TYPES.iter().map(|t| t.name)
}

/// The SIEM (audit sink) types the broker accepts.
pub fn siem_types() -> impl Iterator<Item = &'static str> {
    SIEM_TYPES.iter().map(|t| t.name)
}

fn invalid(field: &str, message: impl Into<String>) -> StoreError {
    StoreError::InvalidField { field: field.to_owned(), message: message.into() }
}

/// Checks a tenant id: the proxy's rule (non-empty, at most [`MAX_TENANT_ID_LEN`] bytes), and no
/// control characters or `/` (it is a path segment of the API).
pub fn tenant_id(id: &str) -> Result<(), StoreError> {
    keyhold_core::metadata::validate_tenant_id(id)
        .map_err(|_| invalid("id", format!("must be 1 to {MAX_TENANT_ID_LEN} bytes")))?;
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err(invalid("id", "must not contain control characters or '/'"));
    }
    Ok(())
}

/// Checks a tenant's display name.
pub fn tenant_name(name: &str) -> Result<(), StoreError> {
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_LEN} characters, without control characters"),
        ));
    }
    Ok(())
}

/// Checks an e-mail address (loosely: one `@`, no spaces, at most 254 bytes).
pub fn email(email: &str) -> Result<(), StoreError> {
    let ok = email.len() <= 254
        && email.split('@').count() == 2
        && !email.starts_with('@')
        && !email.ends_with('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { Ok(()) } else { Err(invalid("email", "is not an e-mail address")) }
}

/// Checks a SIEM configuration's name (letters, digits, `-`, `_`: it names the proxy's delivery
/// cursor).
pub fn siem_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SIEM_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("must be 1 to {MAX_SIEM_NAME_LEN} letters, digits, '-' or '_'"),
        ))
    }
}

/// Checks a KMS configuration's type and settings; returns the settings' JSON text.
pub fn kms_settings(
    kind: &str,
    settings: &Value,
    sealed: Option<&str>,
) -> Result<String, StoreError> {
    let rules = KMS_TYPES.iter().find(|t| t.name == kind).ok_or_else(|| {
        invalid("type", format!("must be one of {}", kms_types().collect::<Vec<_>>().join(", ")))
    })?;
    check_settings(rules, settings, sealed)
}

/// Checks a SIEM configuration's type and settings; returns the settings' JSON text.
pub fn siem_settings(
    kind: &str,
    settings: &Value,
    sealed: Option<&str>,
) -> Result<String, StoreError> {
    let rules = SIEM_TYPES.iter().find(|t| t.name == kind).ok_or_else(|| {
        invalid("type", format!("must be one of {}", siem_types().collect::<Vec<_>>().join(", ")))
    })?;
    check_settings(rules, settings, sealed)
}

fn check_settings(
    rules: &TypeRules,
    settings: &Value,
    sealed: Option<&str>,
) -> Result<String, StoreError> {
    let Value::Object(map) = settings else {
        return Err(invalid("settings", "must be a JSON object"));
    };
    check_no_secrets(rules, map, "")?;
    for (field, _) in map {
        let known =
            rules.required.contains(&field.as_str()) || rules.optional.contains(&field.as_str());
        if !known {
            return Err(invalid(
                &format!("settings.{field}"),
                format!("is not a setting of type {:?}", rules.name),
            ));
        }
    }
    for field in rules.required {
        match map.get(*field) {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            _ => {
                return Err(invalid(
                    &format!("settings.{field}"),
                    format!("is required for type {:?} (a non-empty string)", rules.name),
                ));
            }
        }
    }
    if rules.needs_sealed && sealed.is_none() {
        return Err(invalid(
            "sealed",
            format!(
                "type {:?} needs its secret fields ({}) sealed to the fleet key",
                rules.name,
                rules.secrets.join(", ")
            ),
        ));
    }
    let text = serde_json::to_string(settings)
        .map_err(|e| invalid("settings", format!("cannot be serialised: {e}")))?;
    if text.len() > MAX_SETTINGS_LEN {
        return Err(invalid(
            "settings",
            format!("must be at most {MAX_SETTINGS_LEN} bytes of JSON"),
        ));
    }
    Ok(text)
}

/// Refuses any secret field in clear, at the top level or in a nested table (`approle.secret_id`).
fn check_no_secrets(
    rules: &TypeRules,
    map: &Map<String, Value>,
    prefix: &str,
) -> Result<(), StoreError> {
    for (field, value) in map {
        let path = if prefix.is_empty() { field.clone() } else { format!("{prefix}.{field}") };
        if rules.secrets.contains(&path.as_str()) {
            return Err(invalid(
                &format!("settings.{path}"),
                "is a secret: seal it to the fleet key (GET /api/v1/fleet-key) and send it in \
                 `sealed`, never in clear settings",
            ));
        }
        if let Value::Object(inner) = value {
            check_no_secrets(rules, inner, &path)?;
        }
    }
    Ok(())
}

/// Checks a sealed blob's shape and that it names one of `fleet_key_ids`; returns its key id.
pub fn sealed_blob(blob: &str, fleet_key_ids: &[String]) -> Result<String, StoreError> {
    if blob.len() > MAX_SEALED_LEN {
        return Err(invalid("sealed", format!("must be at most {MAX_SEALED_LEN} bytes")));
    }
    let key_id = keyhold_core::seal::sealed_key_id(blob)
        .map_err(|_| invalid("sealed", "is not a sealed blob (khs1.<key id>.<base64url>)"))?;
    if !fleet_key_ids.contains(&key_id) {
        return Err(invalid(
            "sealed",
            format!("is sealed to fleet key {key_id}, which this broker does not know"),
        ));
    }
    Ok(key_id)
}

/// Longest secret path of a tenant secret, in bytes.
pub const MAX_SECRET_PATH_LEN: usize = 1024;
/// Largest wrapped tenant secret (the KMS's ciphertext), in bytes.
pub const MAX_WRAPPED_SECRET_LEN: usize = 16 * 1024;

/// Checks a tenant secret's path (the application's name for a group of fields): 1 to
/// [`MAX_SECRET_PATH_LEN`] bytes of UTF-8, any characters but NUL (which PostgreSQL's `TEXT`
/// cannot hold).
pub fn secret_path(path: &str) -> Result<(), StoreError> {
    if path.is_empty() || path.len() > MAX_SECRET_PATH_LEN {
        return Err(invalid("secret_path", format!("must be 1 to {MAX_SECRET_PATH_LEN} bytes")));
    }
    if path.contains('\0') {
        return Err(invalid("secret_path", "must not contain NUL characters"));
    }
    Ok(())
}

/// Checks a wrapped tenant secret: standard base64 (with padding) of 1 to
/// [`MAX_WRAPPED_SECRET_LEN`] bytes; returns its canonical base64 text.
pub fn wrapped_secret(text: &str) -> Result<String, StoreError> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    // Refuse an oversized value before decoding it.
    if text.len() > MAX_WRAPPED_SECRET_LEN.div_ceil(3) * 4 {
        return Err(invalid("wrapped", format!("must be at most {MAX_WRAPPED_SECRET_LEN} bytes")));
    }
    let bytes = engine
        .decode(text)
        .map_err(|_| invalid("wrapped", "must be standard base64 (with padding)"))?;
    if bytes.is_empty() || bytes.len() > MAX_WRAPPED_SECRET_LEN {
        return Err(invalid("wrapped", format!("must be 1 to {MAX_WRAPPED_SECRET_LEN} bytes")));
    }
    Ok(engine.encode(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_in_clear_are_refused() {
        let e = kms_settings("aws", &json!({"key_id": "k", "secret_access_key": "x"}), None)
            .unwrap_err();
        assert!(e.to_string().contains("seal"), "{e}");
        let e = kms_settings(
            "vault",
            &json!({"address": "a", "key": "k", "approle": {"role_id": "r", "secret_id": "s"}}),
            Some("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("approle.secret_id"), "{e}");
    }

    #[test]
    fn required_and_unknown_fields() {
        assert!(kms_settings("local", &json!({"key": "demo"}), None).is_ok());
        assert!(kms_settings("local", &json!({}), None).is_err());
        assert!(kms_settings("local", &json!({"key": "d", "nope": 1}), None).is_err());
        assert!(kms_settings("vault", &json!({"address": "a", "key": "k"}), None).is_err());
        assert!(kms_settings("rot13", &json!({}), None).is_err());
        assert!(kms_settings("local", &json!([]), None).is_err());
        assert!(siem_settings("syslog", &json!({"address": "h:514"}), None).is_ok());
    }

    #[test]
    fn ids_and_names() {
        assert!(tenant_id("acme").is_ok());
        assert!(tenant_id("").is_err());
        assert!(tenant_id("a/b").is_err());
        assert!(tenant_id(&"x".repeat(MAX_TENANT_ID_LEN + 1)).is_err());
        assert!(siem_name("siem-1").is_ok());
        assert!(siem_name("a b").is_err());
    }

    #[test]
    fn tenant_secret_inputs() {
        assert!(secret_path("users").is_ok());
        assert!(secret_path("é/🔑 any text").is_ok());
        assert!(secret_path(&"x".repeat(MAX_SECRET_PATH_LEN)).is_ok());
        assert!(secret_path("").is_err());
        assert!(secret_path(&"x".repeat(MAX_SECRET_PATH_LEN + 1)).is_err());
        assert!(secret_path("a\0b").is_err());
        assert_eq!(wrapped_secret("AAEC").unwrap(), "AAEC");
        assert!(wrapped_secret("").is_err());
        assert!(wrapped_secret("not base64!").is_err());
        assert!(wrapped_secret("AAE").is_err(), "padding is required");
        assert!(wrapped_secret("AA-_").is_err(), "base64url is not standard base64");
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        assert!(wrapped_secret(&b64.encode(vec![7u8; MAX_WRAPPED_SECRET_LEN])).is_ok());
        assert!(wrapped_secret(&b64.encode(vec![7u8; MAX_WRAPPED_SECRET_LEN + 1])).is_err());
    }
}
