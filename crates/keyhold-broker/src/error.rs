//! The broker's errors, and the one place where they become HTTP statuses and the stable
//! `{"code", "message"}` bodies of the Vendor Bridge API (docs/broker.md §4).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// What the store refused or could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A field of the request is not acceptable; nothing was stored.
    #[error("{field}: {message}")]
    InvalidField {
        /// The field (`settings.token`, `sealed`, …).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No tenant with this id.
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    /// No KMS configuration with this id for this tenant.
    #[error("KMS configuration {0} not found for this tenant")]
    KmsConfigNotFound(i64),
    /// No SIEM configuration with this name for this tenant.
    #[error("SIEM configuration {0:?} not found for this tenant")]
    SiemConfigNotFound(String),
    /// The object exists already.
    #[error("{0}")]
    Conflict(String),
    /// No admin with this id for this tenant.
    #[error("admin {0} not found for this tenant")]
    AdminNotFound(i64),
    /// No invitation with this token.
    #[error("no such invitation")]
    InvitationNotFound,
    /// The invitation has expired; ask for a new one.
    #[error("the invitation has expired; ask for a new one")]
    InvitationExpired,
    /// The invitation was revoked before anyone accepted it.
    #[error("the invitation was revoked; ask for a new one")]
    InvitationRevoked,
    /// The invitation was accepted already.
    #[error("the invitation was used already")]
    InvitationUsed,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not read back (a bug or a hand-edited database).
    #[error("stored data does not read back: {0}")]
    Corrupt(String),
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is not usable.
    #[error("broker configuration: {0}")]
    Config(String),
    /// A key or token file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot signing key is unusable.
    #[error("snapshot signing: {0}")]
    Signing(String),
    /// The listener could not be bound or failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The `[tls]` settings are unusable.
    #[error(transparent)]
    Tls(#[from] keyhold_listen::TlsError),
}

/// The error body of every failed API request.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code: `unauthorized`, `forbidden`, `not_found`, `invalid_field`,
    /// `conflict`, `csrf_token_missing`, `csrf_token_invalid`, `invitation_expired`,
    /// `invitation_used`, `rate_limited`, `internal`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// A failed API request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Missing or wrong bearer key or token, or no live session cookie.
    #[error(
        "missing or invalid credentials; send `Authorization: Bearer <key>` or sign in (session cookie)"
    )]
    Unauthorized,
    /// Sign-in refused. One message for a wrong e-mail address, password or one-time code, so
    /// that it does not tell which admins exist.
    #[error("wrong e-mail address, password or one-time code")]
    LoginFailed,
    /// Too many failed sign-ins for this e-mail address.
    #[error("too many failed sign-ins; try again later")]
    RateLimited,
    /// The caller may not do this (another tenant, or a vendor-only route).
    #[error("{0}")]
    Forbidden(String),
    /// A mutating request authenticated by a session cookie lacks `X-CSRF-Token`.
    #[error("missing X-CSRF-Token header (GET /api/v1/session gives the token)")]
    CsrfMissing,
    /// `X-CSRF-Token` is not the session's token.
    #[error("invalid X-CSRF-Token header")]
    CsrfInvalid,
    /// The request is malformed (body, query, header).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// No such route.
    #[error("no such route")]
    NoRoute,
    /// Something the broker does not have (no fleet key configured, …).
    #[error("{0}")]
    NotFound(String),
    /// What the store said.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A login secret could not be made or used.
    #[error(transparent)]
    Credential(#[from] crate::credentials::CredentialError),
    /// Anything else that is the broker's fault.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized | Self::LoginFailed => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::CsrfMissing => (StatusCode::FORBIDDEN, "csrf_token_missing"),
            Self::CsrfInvalid => (StatusCode::FORBIDDEN, "csrf_token_invalid"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_field"),
            Self::NoRoute | Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Store(e) => match e {
                StoreError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
                StoreError::TenantNotFound(_)
                | StoreError::KmsConfigNotFound(_)
                | StoreError::SiemConfigNotFound(_)
                | StoreError::AdminNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                StoreError::InvitationNotFound => (StatusCode::NOT_FOUND, "not_found"),
                StoreError::InvitationExpired => (StatusCode::GONE, "invitation_expired"),
                StoreError::InvitationUsed => (StatusCode::CONFLICT, "invitation_used"),
                StoreError::InvitationRevoked => (StatusCode::GONE, "invitation_revoked"),
                StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            Self::Credential(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The details (database messages) go to the log, not to the caller.
            tracing::error!(error = %self, "request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut response =
            (status, axum::Json(ErrorBody { code: code.to_owned(), message })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}
