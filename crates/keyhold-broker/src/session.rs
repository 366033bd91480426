//! Who is calling, and what they may do: the vendor (bearer API key) or a tenant admin (session
//! cookie, with a CSRF token on mutating requests). See docs/broker.md, "Sessions and roles".
//!
//! The authentication itself (looking the session up) is the `authenticate` middleware of
//! [`crate::api`]; this module holds the pieces: the [`Caller`], the cookie, the CSRF check.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::error::ApiError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keyhold_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts (12 hours; the cookie's `Max-Age`).
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The authenticated caller of a Vendor Bridge API route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The vendor API key: every route.
    Vendor,
    /// A tenant admin signed in with a session cookie: their own tenant's routes only.
    TenantAdmin {
        /// The admin's tenant.
        tenant: String,
        /// The admin's id.
        admin_id: i64,
        /// The admin's e-mail address.
        email: String,
    },
}

impl Caller {
    /// The history's `actor`: `vendor` or `admin:<email>`.
    pub fn actor(&self) -> String {
        match self {
            Self::Vendor => crate::api::VENDOR_ACTOR.to_owned(),
            Self::TenantAdmin { email, .. } => format!("admin:{email}"),
        }
    }

    /// Only the vendor may (`forbidden` otherwise).
    pub fn require_vendor(&self) -> Result<(), ApiError> {
        match self {
            Self::Vendor => Ok(()),
            Self::TenantAdmin { .. } => {
                Err(ApiError::Forbidden("only the vendor API key may do this".into()))
            }
        }
    }

    /// The vendor, or an admin of this tenant (`forbidden` otherwise, whether or not the tenant
    /// exists).
    pub fn require_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Self::Vendor => Ok(()),
            Self::TenantAdmin { tenant: own, .. } if own == tenant => Ok(()),
            Self::TenantAdmin { .. } => {
                Err(ApiError::Forbidden("an admin may only manage their own tenant".into()))
            }
        }
    }
}

/// Handlers behind the `authenticate` middleware take the caller it found.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or(ApiError::Unauthorized)
    }
}

/// Whether a method changes something (and so needs the CSRF token with a cookie).
pub fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The session token from the `Cookie` header(s), if any.
pub fn session_token(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty())
                .then(|| Zeroizing::new(value.trim_matches('"').to_owned()))
        })
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(token: &str, secure: bool) -> Result<HeaderValue, ApiError> {
    cookie(token, SESSION_TTL.as_secs(), secure)
}

/// `Set-Cookie` that removes the session cookie.
pub fn expired_cookie(secure: bool) -> Result<HeaderValue, ApiError> {
    cookie("", 0, secure)
}

fn cookie(value: &str, max_age: u64, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    let text = Zeroizing::new(format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ));
    HeaderValue::from_str(&text).map_err(|_| ApiError::Internal("cookie value".into()))
}

/// Whether the `X-CSRF-Token` value is the session's token, compared in constant time (over
/// SHA-256 digests, so the length does not show either).
pub fn csrf_matches(given: &[u8], expected: &str) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.ct_eq(&b))
}

/// The CSRF check of a cookie-authenticated request: `csrf_token_missing` /
/// `csrf_token_invalid` for a mutating request without the right header; reads pass.
pub fn check_csrf(method: &Method, headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    if !is_mutating(method) {
        return Ok(());
    }
    let given = headers.get(CSRF_HEADER).ok_or(ApiError::CsrfMissing)?;
    if csrf_matches(given.as_bytes(), expected) { Ok(()) } else { Err(ApiError::CsrfInvalid) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; keyhold_session=tok; b=2"));
        assert_eq!(session_token(&h).unwrap().as_str(), "tok");
        h.insert(header::COOKIE, HeaderValue::from_static("keyhold_session="));
        assert!(session_token(&h).is_none());
        let c = session_cookie("tok", true).unwrap();
        assert_eq!(
            c.to_str().unwrap(),
            "keyhold_session=tok; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200; Secure"
        );
    }

    #[test]
    fn csrf() {
        let mut h = HeaderMap::new();
        assert!(check_csrf(&Method::GET, &h, "t").is_ok());
        assert!(matches!(check_csrf(&Method::POST, &h, "t"), Err(ApiError::CsrfMissing)));
        h.insert(CSRF_HEADER, HeaderValue::from_static("u"));
        assert!(matches!(check_csrf(&Method::DELETE, &h, "t"), Err(ApiError::CsrfInvalid)));
        h.insert(CSRF_HEADER, HeaderValue::from_static("t"));
        assert!(check_csrf(&Method::PUT, &h, "t").is_ok());
    }

    #[test]
    fn roles() {
        let admin = Caller::TenantAdmin { tenant: "acme".into(), admin_id: 1, email: "a@x".into() };
        assert!(admin.require_tenant("acme").is_ok());
        assert!(admin.require_tenant("other").is_err());
        assert!(admin.require_vendor().is_err());
        assert!(Caller::Vendor.require_tenant("other").is_ok());
        assert_eq!(admin.actor(), "admin:a@x");
    }
}
