//! The stable numeric error codes of the Tenant Security Proxy wire API.
//!
//! These are the codes IronCore's published clients know (`TenantSecurityErrorCode`), so an
//! error from Keyhold's proxy means the same thing to them. The one place that turns a typed
//! error into a code is `keyhold-proxy`'s `error` module; the codes and their HTTP statuses are
//! documented in `docs/tsp-api.md`.

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, $message:literal; )*) => {
        /// A stable wire error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The number sent on the wire.
            pub const fn code(self) -> u16 {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The name the clients use (`SCREAMING_SNAKE_CASE`).
            pub const fn name(self) -> &'static str {
                match self { $( ErrorCode::$variant => $name, )* }
            }

            /// A default human-readable message.
            pub const fn default_message(self) -> &'static str {
                match self { $( ErrorCode::$variant => $message, )* }
            }

            /// The code for a number, if it is one we know.
            pub const fn from_code(code: u16) -> Option<Self> {
                match code { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// The client could not reach the proxy (never sent by the proxy).
    UnableToMakeRequest = 0, "UNABLE_TO_MAKE_REQUEST", "Request to Tenant Security Proxy could not be made";
    /// An unexpected proxy failure.
    UnknownError = 100, "UNKNOWN_ERROR", "Unknown request error occurred.";
    /// Missing or wrong API key.
    UnauthorizedRequest = 101, "UNAUTHORIZED_REQUEST", "Request authorization header API key was incorrect.";
    /// Malformed, incomplete or oversize request body.
    InvalidRequestBody = 102, "INVALID_REQUEST_BODY", "Request body was invalid.";
    /// The tenant has no primary KMS configuration, so nothing new can be wrapped.
    NoPrimaryKmsConfiguration = 200, "NO_PRIMARY_KMS_CONFIGURATION", "Tenant has no primary KMS configuration.";
    /// The tenant is unknown or has no active KMS configuration.
    UnknownTenantOrNoActiveKmsConfigurations = 201, "UNKNOWN_TENANT_OR_NO_ACTIVE_KMS_CONFIGURATIONS", "Tenant either doesn't exist or has no active KMS configurations.";
    /// The KMS configuration named in the EDEK is disabled.
    KmsConfigurationDisabled = 202, "KMS_CONFIGURATION_DISABLED", "Tenant configuration specified in EDEK is no longer active.";
    /// The EDEK is malformed, belongs to another tenant, or did not unwrap.
    InvalidProvidedEdek = 203, "INVALID_PROVIDED_EDEK", "Provided EDEK was not valid.";
    /// The KMS returned no usable result for a wrap.
    KmsWrapFailed = 204, "KMS_WRAP_FAILED", "Request to KMS API to wrap key returned invalid results.";
    /// The KMS returned no usable result for an unwrap.
    KmsUnwrapFailed = 205, "KMS_UNWRAP_FAILED", "Request to KMS API to unwrap key returned invalid results.";
    /// The KMS refused: credentials invalid or revoked, or the key disabled.
    KmsAuthorizationFailed = 206, "KMS_AUTHORIZATION_FAILED", "Request to KMS failed because the tenant credentials were invalid or have been revoked.";
    /// The KMS configuration is invalid (unknown key, missing permission).
    KmsConfigurationInvalid = 207, "KMS_CONFIGURATION_INVALID", "Request to KMS failed because the key configuration was invalid or the necessary permissions for the operation were missing/revoked.";
    /// The KMS could not be reached in time.
    KmsUnreachable = 208, "KMS_UNREACHABLE", "Request to KMS failed because KMS was unreachable.";
    /// The KMS throttled the request.
    KmsThrottled = 209, "KMS_THROTTLED", "Request to KMS failed because KMS throttled the Tenant Security Proxy.";
    /// The KMS account has a problem (billing, quota, suspended).
    KmsAccountIssue = 210, "KMS_ACCOUNT_ISSUE", "Request to KMS failed because of an issue with the KMS account.";
    /// A security event was rejected.
    SecurityEventRejected = 301, "SECURITY_EVENT_REJECTED", "Tenant Security Proxy could not accept the security event";
    /// The proxy could not make or store a tenant secret (deterministic encryption): the
    /// secret store (the broker, or the proxy's secrets file) failed. KMS refusals keep their
    /// own 2xx codes.
    TenantSecretCreationFailed = 401, "TENANT_SECRET_CREATION_FAILED", "The Tenant Security Proxy could not create or store a tenant secret.";
    /// A client-side error: the encrypted document is not valid (never sent by the proxy).
    InvalidEncryptedDocument = 900, "INVALID_ENCRYPTED_DOCUMENT", "Provided encrypted document was invalid.";
    /// A client-side error: encryption failed (never sent by the proxy).
    DocumentEncryptFailed = 901, "DOCUMENT_ENCRYPT_FAILED", "Failed to encrypt the document.";
    /// A client-side error: decryption failed (never sent by the proxy).
    DocumentDecryptFailed = 902, "DOCUMENT_DECRYPT_FAILED", "Failed to decrypt the document.";
    /// A client-side error: deterministic field encryption failed (no current tenant secret).
    DeterministicFieldEncryptFailed = 903, "DETERMINISTIC_FIELD_ENCRYPT_FAILED", "Failed deterministic field encryption.";
    /// A client-side error: a deterministic field did not decrypt (unknown secret, altered bytes).
    DeterministicFieldDecryptFailed = 904, "DETERMINISTIC_FIELD_DECRYPT_FAILED", "Failed deterministic field decryption.";
    /// A client-side error: the bytes are not a deterministic field (short, or bad padding).
    DeterministicHeaderError = 905, "DETERMINISTIC_HEADER_ERROR", "Failed to parse deterministic field header.";
    /// A client-side error: a deterministic field could not be moved to the current secret.
    DeterministicRotateFailed = 906, "DETERMINISTIC_ROTATE_FAILED", "Failed deterministic field rotation.";
    /// A client-side error: search terms could not be made.
    DeterministicGenerateSearchTermsFailed = 907, "DETERMINISTIC_GENERATE_SEARCH_TERMS_FAILED", "Failed to generate deterministic search terms.";
    /// Keyhold extension: a rekey into another tenant that the proxy's `[rekey] allow` list does
    /// not permit. IronCore's clients do not know this code: Java and Node report it as
    /// `UNKNOWN_ERROR` ("outside of recognized range"), PHP as an unknown TSP error, alloy as
    /// `Service/UnknownError`; the message still says what happened.
    RekeyTargetNotAllowed = 1001, "REKEY_TARGET_NOT_ALLOWED", "Rekeying into this tenant is not allowed by the proxy's rekey policy.";
}

impl ErrorCode {
    /// The HTTP status the proxy answers with for this code. Clients read the code from the
    /// body; the status is for load balancers, logs and people.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::UnauthorizedRequest => 401,
            ErrorCode::InvalidRequestBody
            | ErrorCode::InvalidProvidedEdek
            | ErrorCode::SecurityEventRejected
            | ErrorCode::InvalidEncryptedDocument => 400,
            ErrorCode::UnknownTenantOrNoActiveKmsConfigurations => 404,
            ErrorCode::NoPrimaryKmsConfiguration => 409,
            ErrorCode::KmsConfigurationDisabled
            | ErrorCode::KmsAuthorizationFailed
            | ErrorCode::KmsConfigurationInvalid
            | ErrorCode::KmsAccountIssue
            | ErrorCode::RekeyTargetNotAllowed => 403,
            ErrorCode::KmsWrapFailed | ErrorCode::KmsUnwrapFailed => 502,
            ErrorCode::KmsUnreachable => 503,
            ErrorCode::KmsThrottled => 429,
            ErrorCode::UnableToMakeRequest
            | ErrorCode::UnknownError
            | ErrorCode::DocumentEncryptFailed
            | ErrorCode::DocumentDecryptFailed
            | ErrorCode::DeterministicFieldEncryptFailed
            | ErrorCode::DeterministicFieldDecryptFailed
            | ErrorCode::DeterministicHeaderError
            | ErrorCode::DeterministicRotateFailed
            | ErrorCode::DeterministicGenerateSearchTermsFailed => 500,
            ErrorCode::TenantSecretCreationFailed => 503,
        }
    }

    /// True for failures a client may retry unchanged (the KMS was unreachable or throttled).
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::KmsUnreachable
                | ErrorCode::KmsThrottled
                | ErrorCode::UnableToMakeRequest
                | ErrorCode::TenantSecretCreationFailed
        )
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.code())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(d)?;
        // An unknown code from a newer proxy still reads as a (generic) error.
        Ok(ErrorCode::from_code(code).unwrap_or(ErrorCode::UnknownError))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_unique() {
        let numbers: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            numbers,
            [
                0, 100, 101, 102, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 301, 401,
                900, 901, 902, 903, 904, 905, 906, 907, 1001
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
            assert!(!code.default_message().is_empty());
        }
        assert_eq!(ErrorCode::from_code(999), None);
    }

    #[test]
    fn proxy_sent_codes_are_4xx_or_5xx_but_never_500_for_bad_input() {
        assert_eq!(ErrorCode::InvalidRequestBody.http_status(), 400);
        assert_eq!(ErrorCode::UnauthorizedRequest.http_status(), 401);
        assert_eq!(ErrorCode::UnknownTenantOrNoActiveKmsConfigurations.http_status(), 404);
        assert_eq!(ErrorCode::InvalidProvidedEdek.http_status(), 400);
    }

    #[test]
    fn serde_as_number() {
        assert_eq!(serde_json::to_string(&ErrorCode::KmsUnreachable).unwrap(), "208");
        let c: ErrorCode = serde_json::from_str("206").unwrap();
        assert_eq!(c, ErrorCode::KmsAuthorizationFailed);
        let unknown: ErrorCode = serde_json::from_str("555").unwrap();
        assert_eq!(unknown, ErrorCode::UnknownError);
    }
}
