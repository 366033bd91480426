//! What a KMS can answer besides success.

/// Why a KMS operation failed. The proxy maps each variant to one wire error code; messages
/// never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The KMS refused the credentials, or the caller may not use the key.
    #[error("the KMS denied access: {0}")]
    AccessDenied(String),
    /// The master key is disabled (or scheduled for deletion): the tenant has revoked access.
    #[error("the master key is disabled: {0}")]
    KeyDisabled(String),
    /// The configuration does not name a usable key (missing key, wrong region, bad settings).
    #[error("the KMS configuration is invalid: {0}")]
    ConfigurationInvalid(String),
    /// The KMS did not answer in time, or the connection failed.
    #[error("the KMS is unreachable: {0}")]
    Unreachable(String),
    /// The KMS throttled the request.
    #[error("the KMS throttled the request")]
    Throttled,
    /// The KMS account has a problem (billing, quota, suspension).
    #[error("the KMS account has a problem: {0}")]
    AccountIssue(String),
    /// The wrapped key is malformed, was altered, or belongs to another key or context.
    #[error("the wrapped key is invalid for this key and context")]
    InvalidCiphertext,
    /// The KMS answered a wrap with something unusable.
    #[error("the KMS wrap failed: {0}")]
    WrapFailed(String),
    /// The KMS answered an unwrap with something unusable.
    #[error("the KMS unwrap failed: {0}")]
    UnwrapFailed(String),
}

impl KmsError {
    /// True when the KMS may succeed if asked again later (unreachable, throttled).
    pub fn is_transient(&self) -> bool {
        matches!(self, KmsError::Unreachable(_) | KmsError::Throttled)
    }

    /// True when the tenant (or its KMS) has refused access: the key is disabled or denied.
    pub fn is_revocation(&self) -> bool {
        matches!(self, KmsError::AccessDenied(_) | KmsError::KeyDisabled(_))
    }
}
