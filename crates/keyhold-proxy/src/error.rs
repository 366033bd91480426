//! The one place where errors become wire error codes.
//!
//! Handlers and the service return [`ServiceError`]; this module turns it into an HTTP status
//! and the TSP error body `{"code": <int>, "message": "..."}`. Messages name what was wrong with
//! the request but never contain key material, and a ciphertext that does not authenticate is
//! reported without saying why.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyhold_core::ErrorCode;
use keyhold_core::wire::ErrorBody;
use keyhold_kms::KmsError;

/// Which KMS operation failed (to tell wrap failures from unwrap failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsOperation {
    /// Making or wrapping a data key.
    Wrap,
    /// Unwrapping a data key.
    Unwrap,
}

/// Why a request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The body is malformed, incomplete or too large.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is larger than the limit.
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// Missing or wrong API key.
    #[error("missing or invalid API key; send `Authorization: cmk <api-key>`")]
    Unauthorized,
    /// The tenant is not configured, or has no usable KMS configuration.
    #[error("tenant {0:?} is unknown or has no active KMS configuration")]
    UnknownTenant(String),
    /// The tenant has no primary configuration to wrap new keys with.
    #[error("tenant {0:?} has no primary KMS configuration")]
    NoPrimaryConfig(String),
    /// The configuration that wrapped the EDEK is disabled.
    #[error("KMS configuration {0} named in the EDEK is disabled")]
    ConfigDisabled(i32),
    /// The EDEK is malformed, not this tenant's, or does not unwrap.
    #[error("{0}")]
    InvalidEdek(String),
    /// The KMS said no or could not be reached.
    #[error("{source}")]
    Kms {
        /// Which operation.
        operation: KmsOperation,
        /// The KMS's answer.
        source: KmsError,
    },
    /// A rekey into another tenant that the proxy's `[rekey] allow` list does not permit.
    #[error(
        "rekeying EDEKs of tenant {from:?} into tenant {to:?} is not allowed by this proxy's [rekey] policy"
    )]
    RekeyNotAllowed {
        /// The tenant the EDEK belongs to.
        from: String,
        /// The tenant it was to be moved to.
        to: String,
    },
    /// A security event could not be accepted.
    #[error("{0}")]
    SecurityEventRejected(String),
    /// The tenant-secret store (the broker, or the secrets file) could not be read or written,
    /// so no tenant secret could be found or made (deterministic encryption).
    #[error("tenant secrets: {0}")]
    SecretStore(String),
    /// No such route.
    #[error("no such route: {0}")]
    NotFound(String),
    /// The access could not be recorded in the audit trail, so it was refused.
    #[error("the access could not be recorded in the audit trail: {0}")]
    AuditUnavailable(String),
    /// A bug. Logged in full; the client sees only the code.
    #[error("internal error")]
    Internal,
}

impl ServiceError {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::InvalidRequest(_) | ServiceError::BodyTooLarge(_) => {
                ErrorCode::InvalidRequestBody
            }
            ServiceError::Unauthorized => ErrorCode::UnauthorizedRequest,
            ServiceError::UnknownTenant(_) => ErrorCode::UnknownTenantOrNoActiveKmsConfigurations,
            ServiceError::NoPrimaryConfig(_) => ErrorCode::NoPrimaryKmsConfiguration,
            ServiceError::ConfigDisabled(_) => ErrorCode::KmsConfigurationDisabled,
            ServiceError::InvalidEdek(_) => ErrorCode::InvalidProvidedEdek,
            ServiceError::Kms { operation, source } => kms_code(*operation, source),
            ServiceError::SecurityEventRejected(_) => ErrorCode::SecurityEventRejected,
            ServiceError::RekeyNotAllowed { .. } => ErrorCode::RekeyTargetNotAllowed,
            ServiceError::SecretStore(_) => ErrorCode::TenantSecretCreationFailed,
            ServiceError::NotFound(_)
            | ServiceError::AuditUnavailable(_)
            | ServiceError::Internal => ErrorCode::UnknownError,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ServiceError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            other => StatusCode::from_u16(other.code().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The body sent to the client.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
}

fn kms_code(operation: KmsOperation, error: &KmsError) -> ErrorCode {
    match error {
        KmsError::AccessDenied(_) | KmsError::KeyDisabled(_) => ErrorCode::KmsAuthorizationFailed,
        KmsError::ConfigurationInvalid(_) => ErrorCode::KmsConfigurationInvalid,
        KmsError::Unreachable(_) => ErrorCode::KmsUnreachable,
        KmsError::Throttled => ErrorCode::KmsThrottled,
        KmsError::AccountIssue(_) => ErrorCode::KmsAccountIssue,
        KmsError::InvalidCiphertext => ErrorCode::InvalidProvidedEdek,
        KmsError::WrapFailed(_) => ErrorCode::KmsWrapFailed,
        KmsError::UnwrapFailed(_) => ErrorCode::KmsUnwrapFailed,
        // A future variant: report it as a failure of the operation that was attempted.
        _ => match operation {
            KmsOperation::Wrap => ErrorCode::KmsWrapFailed,
            KmsOperation::Unwrap => ErrorCode::KmsUnwrapFailed,
        },
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        if status.is_server_error() {
            tracing::warn!(code = body.code, error = %self, "request failed");
        } else {
            tracing::debug!(code = body.code, error = %self, "request refused");
        }
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kms_answer_has_a_code() {
        let cases = [
            (KmsError::AccessDenied("x".into()), 206),
            (KmsError::KeyDisabled("x".into()), 206),
            (KmsError::ConfigurationInvalid("x".into()), 207),
            (KmsError::Unreachable("x".into()), 208),
            (KmsError::Throttled, 209),
            (KmsError::AccountIssue("x".into()), 210),
            (KmsError::InvalidCiphertext, 203),
            (KmsError::WrapFailed("x".into()), 204),
            (KmsError::UnwrapFailed("x".into()), 205),
        ];
        for (error, code) in cases {
            let e = ServiceError::Kms { operation: KmsOperation::Unwrap, source: error.clone() };
            assert_eq!(e.code().code(), code, "{error:?}");
            assert!(e.status().is_client_error() || e.status().is_server_error());
        }
    }

    #[test]
    fn request_errors_are_4xx() {
        for e in [
            ServiceError::InvalidRequest("x".into()),
            ServiceError::BodyTooLarge(10),
            ServiceError::Unauthorized,
            ServiceError::UnknownTenant("t".into()),
            ServiceError::NoPrimaryConfig("t".into()),
            ServiceError::ConfigDisabled(1),
            ServiceError::InvalidEdek("x".into()),
            ServiceError::NotFound("/x".into()),
            ServiceError::RekeyNotAllowed { from: "a".into(), to: "b".into() },
        ] {
            assert!(e.status().is_client_error(), "{e:?} -> {}", e.status());
        }
        assert_eq!(ServiceError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(ServiceError::Unauthorized.body().code, 101);
        let refused = ServiceError::RekeyNotAllowed { from: "a".into(), to: "b".into() };
        assert_eq!((refused.status(), refused.body().code), (StatusCode::FORBIDDEN, 1001));
    }
}
