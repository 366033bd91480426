//! SDK errors, each with the wire error code a caller can branch on.

use keyhold_core::ErrorCode;
use keyhold_core::document::DocumentError;
use keyhold_core::stream::StreamError;

use crate::deterministic::{DeterministicFailure, DeterministicOperation};

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The proxy refused the request; `code` says why (see `docs/tsp-api.md`).
    #[error("the proxy refused the request: {message} ({code})")]
    Proxy {
        /// The wire code.
        code: ErrorCode,
        /// The HTTP status.
        status: u16,
        /// The proxy's message.
        message: String,
    },
    /// The proxy could not be reached (connection refused, timeout, TLS failure).
    #[error("could not reach the proxy: {0}")]
    Unreachable(String),
    /// The proxy answered something that is not the API's response.
    #[error("unexpected answer from the proxy: {0}")]
    InvalidResponse(String),
    /// An encrypted field could not be decrypted (or encrypted).
    #[error("document {operation} failed: {source}")]
    Document {
        /// `encrypt` or `decrypt`.
        operation: &'static str,
        /// Why.
        source: DocumentError,
    },
    /// An encrypted stream could not be encrypted or decrypted.
    #[error("stream {operation} failed: {source}")]
    Stream {
        /// `encrypt` or `decrypt`.
        operation: &'static str,
        /// Why.
        source: StreamError,
    },
    /// A deterministic field could not be encrypted, decrypted, rotated or made into search
    /// terms ([`crate::deterministic`]); [`Error::code`] follows IronCore's 903–907, or 200 (no
    /// primary KMS configuration), or the proxy's code for a tenant secret it could not use.
    #[error("deterministic {operation} failed: {source}")]
    Deterministic {
        /// What was being done.
        operation: DeterministicOperation,
        /// Why it failed.
        source: DeterministicFailure,
    },
    /// Reading or writing data failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An argument is unusable (empty document, bad URL, metadata without a tenant).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The wire code for this error: the proxy's for refusals, the client-side 0/100/9xx codes
    /// otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Proxy { code, .. } => *code,
            Error::Unreachable(_) => ErrorCode::UnableToMakeRequest,
            Error::InvalidResponse(_) => ErrorCode::UnknownError,
            Error::Document { operation: "encrypt", .. }
            | Error::Stream { operation: "encrypt", .. } => ErrorCode::DocumentEncryptFailed,
            Error::Document { source, .. } => match source {
                DocumentError::DecryptFailed => ErrorCode::DocumentDecryptFailed,
                _ => ErrorCode::InvalidEncryptedDocument,
            },
            Error::Stream { source, .. } => match source {
                StreamError::DecryptFailed => ErrorCode::DocumentDecryptFailed,
                _ => ErrorCode::InvalidEncryptedDocument,
            },
            Error::Deterministic { operation, source } => source.code(*operation),
            Error::Io(_) | Error::InvalidArgument(_) => ErrorCode::InvalidEncryptedDocument,
        }
    }

    /// True when retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.code().is_retryable()
    }
}

/// Shorthand for SDK results.
pub type Result<T, E = Error> = core::result::Result<T, E>;
