//! The E2E service's errors and the one place they become HTTP statuses and
//! `{"code": <number>, "message"}` bodies ([`keyhold_e2e::wire::ErrorBody`]; codes in
//! docs/e2e-api.md §5).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyhold_e2e::AccessError;
use keyhold_e2e::wire::{ErrorBody, RequestAuthError};

use crate::error::StoreError;

/// The tenant is unknown or disabled (404).
pub const CODE_UNKNOWN_TENANT: u16 = 1130;
/// The request is malformed: its JSON, a path segment, a recipient kind (400).
pub const CODE_BAD_REQUEST: u16 = 1131;
/// The body is larger than the route accepts (413).
pub const CODE_TOO_LARGE: u16 = 1132;
/// The vendor API key is missing or wrong (401).
pub const CODE_VENDOR_UNAUTHORIZED: u16 = 1133;
/// The broker failed (500); the details are in its log.
pub const CODE_INTERNAL: u16 = 1134;

/// Why an E2E request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// One of the rules of [`keyhold_e2e::AccessState`] refused it.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The calling device is unknown or revoked (401, code 1102).
    #[error("unknown or revoked device")]
    UnknownCaller,
    /// The request signature is missing, stale or wrong (401, codes 1120–1122).
    #[error(transparent)]
    RequestAuth(#[from] RequestAuthError),
    /// The vendor API key is missing or wrong (401, code 1133).
    #[error("missing or invalid vendor API key; send `Authorization: Bearer <key>`")]
    VendorUnauthorized,
    /// No active tenant with this id (404, code 1130).
    #[error("tenant {0:?} is unknown or disabled")]
    UnknownTenant(String),
    /// A binary field that does not parse into its key or format (400, code 1114).
    #[error("malformed field `{field}`: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The request is malformed (400, code 1131).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the route accepts (413, code 1132).
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The route's limit, in bytes.
        limit: usize,
    },
    /// The database failed, or a stored value does not read back (500, code 1134).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for E2eError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

impl E2eError {
    /// A binary field that does not parse.
    pub(crate) fn malformed(field: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Malformed { field, reason: reason.to_string() }
    }

    /// A stored value that does not read back.
    pub(crate) fn corrupt(what: &str, reason: impl std::fmt::Display) -> Self {
        Self::Store(StoreError::Corrupt(format!("E2E {what}: {reason}")))
    }

    /// The HTTP status and the stable numeric code.
    pub fn status_and_code(&self) -> (StatusCode, u16) {
        match self {
            Self::Access(e) => (access_status(e), e.code()),
            Self::UnknownCaller => (StatusCode::UNAUTHORIZED, AccessError::UnknownDevice.code()),
            Self::RequestAuth(e) => (StatusCode::UNAUTHORIZED, e.code()),
            Self::VendorUnauthorized => (StatusCode::UNAUTHORIZED, CODE_VENDOR_UNAUTHORIZED),
            Self::UnknownTenant(_) => (StatusCode::NOT_FOUND, CODE_UNKNOWN_TENANT),
            Self::Malformed { .. } => (
                StatusCode::BAD_REQUEST,
                AccessError::Document(keyhold_e2e::DocumentError::Malformed("")).code(),
            ),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, CODE_BAD_REQUEST),
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, CODE_TOO_LARGE),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, CODE_INTERNAL),
        }
    }
}

/// The status of each refusal of the access rules.
fn access_status(e: &AccessError) -> StatusCode {
    match e {
        AccessError::UnknownUser
        | AccessError::UnknownDevice
        | AccessError::UnknownGroup
        | AccessError::UnknownDocument => StatusCode::NOT_FOUND,
        AccessError::Exists | AccessError::LastAdmin => StatusCode::CONFLICT,
        AccessError::NotAdmin | AccessError::Forbidden | AccessError::NoAccess => {
            StatusCode::FORBIDDEN
        }
        // `KeyChanged` is a device's own check and never comes from the service; mapped all
        // the same, as every refusal of a request's contents.
        AccessError::KeyMismatch(_)
        | AccessError::Certificate
        | AccessError::Id
        | AccessError::Document(_)
        | AccessError::KeyStatement
        | AccessError::KeyChanged => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for E2eError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Database messages go to the log, not to the caller.
            tracing::error!(error = %self, "E2E request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (status, axum::Json(ErrorBody { code, message })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let scheme = match self {
                Self::VendorUnauthorized => "Bearer",
                _ => "keyhold-e2e-signature",
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        response
    }
}

/// The result of an E2E handler.
pub type E2eResult<T> = Result<T, E2eError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let cases: Vec<(E2eError, u16, u16)> = vec![
            (AccessError::UnknownUser.into(), 404, 1101),
            (AccessError::UnknownDevice.into(), 404, 1102),
            (E2eError::UnknownCaller, 401, 1102),
            (AccessError::Exists.into(), 409, 1105),
            (AccessError::NotAdmin.into(), 403, 1106),
            (AccessError::NoAccess.into(), 403, 1108),
            (AccessError::KeyMismatch("x").into(), 400, 1109),
            (AccessError::LastAdmin.into(), 409, 1111),
            (AccessError::Document(keyhold_e2e::DocumentError::Signature).into(), 400, 1113),
            (E2eError::malformed("x", "y"), 400, 1114),
            (AccessError::KeyStatement.into(), 400, 1115),
            (AccessError::KeyChanged.into(), 400, 1116),
            (RequestAuthError::Missing.into(), 401, 1120),
            (RequestAuthError::Stale.into(), 401, 1121),
            (RequestAuthError::BadSignature.into(), 401, 1122),
            (E2eError::UnknownTenant("t".into()), 404, 1130),
            (E2eError::BadRequest("b".into()), 400, 1131),
            (E2eError::TooLarge { limit: 1 }, 413, 1132),
            (E2eError::VendorUnauthorized, 401, 1133),
            (E2eError::corrupt("x", "y"), 500, 1134),
        ];
        for (error, status, code) in cases {
            let (s, c) = error.status_and_code();
            assert_eq!((s.as_u16(), c), (status, code), "{error:?}");
        }
    }
}
