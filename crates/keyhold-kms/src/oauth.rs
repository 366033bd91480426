//! OAuth 2.0 bearer-token plumbing shared by the REST backends (`gcp`, `azure`).
//!
//! Both clouds hand out short-lived access tokens from a token endpoint (a form POST) and want
//! them as `Authorization: Bearer`. What differs is only the grant — Google's signed-JWT grant,
//! Entra ID's client-credentials grant — so each backend implements [`TokenGrant`] and shares
//! the rest: the token cache (one fetch at a time, refreshed before expiry, dropped on a 401),
//! the "one more try with a fresh token after a 401" loop, the mapping of token-endpoint and
//! transport failures, and the URL rules (HTTPS, or plain HTTP to loopback only, so that
//! secrets and tokens never cross a network in the clear).

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::KmsError;

/// Refresh a token this long before it expires (at most half its lifetime).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Longest excerpt of a server message kept in an error.
const MESSAGE_EXCERPT: usize = 300;

/// How a backend asks its token endpoint for a token.
pub(crate) trait TokenGrant: Send + Sync {
    /// The `application/x-www-form-urlencoded` body of one token request.
    fn token_request_form(&self) -> Result<Zeroizing<String>, KmsError>;
}

struct CachedToken {
    value: Zeroizing<String>,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Zeroizing<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
}

/// An HTTP client that authorizes every request with a cached bearer token.
pub(crate) struct BearerClient<G> {
    http: reqwest::Client,
    token_url: String,
    grant: G,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

impl<G: TokenGrant> BearerClient<G> {
    /// A client with `timeout` for connecting and for each whole request, and no redirects
    /// (a redirect would carry the bearer token elsewhere; neither cloud's KMS redirects).
    pub(crate) fn new(timeout: Duration, token_url: String, grant: G) -> Result<Self, KmsError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                KmsError::ConfigurationInvalid(format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(Self { http, token_url, grant, cached: tokio::sync::Mutex::new(None) })
    }

    /// The grant (for `Debug` output of the backend).
    pub(crate) fn grant(&self) -> &G {
        &self.grant
    }

    /// The token endpoint.
    pub(crate) fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Sends one authorized request for the backend's operation `op`; on a 401 fetches a new
    /// token and tries once more. An answer other than 2xx becomes the backend's
    /// `map_error(op, status, body)`.
    pub(crate) async fn send<Op>(
        &self,
        op: Op,
        method: Method,
        url: &str,
        body: Option<&[u8]>,
        map_error: impl FnOnce(Op, u16, &[u8]) -> KmsError,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.as_str())
                .header(ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.header(CONTENT_TYPE, "application/json").body(body.to_vec());
            }
            let response = request.send().await.map_err(transport_error)?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // Expired or revoked before we expected: one fresh token, then one more try.
                self.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            let bytes = Zeroizing::new(response.bytes().await.map_err(transport_error)?.to_vec());
            if status.is_success() {
                return Ok(bytes);
            }
            return Err(map_error(op, status.as_u16(), &bytes));
        }
    }

    /// The current access token, fetched when there is none or it is about to expire. Callers
    /// wait on one fetch rather than each starting their own.
    async fn token(&self) -> Result<Zeroizing<String>, KmsError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Forgets `used` if it is still the cached token (another caller may have replaced it).
    async fn invalidate(&self, used: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|t| t.value.as_str() == used) {
            *cached = None;
        }
    }

    /// One token request. Answer (RFC 6749 §5.1, both clouds):
    /// `{ "access_token": "...", "expires_in": 3599, "token_type": "Bearer" }`.
    async fn fetch(&self) -> Result<CachedToken, KmsError> {
        let form = self.grant.token_request_form()?;
        let started = Instant::now();
        let response = self
            .http
            .post(&self.token_url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form.as_bytes().to_vec())
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let bytes = Zeroizing::new(response.bytes().await.map_err(transport_error)?.to_vec());
        if !status.is_success() {
            return Err(oauth_error(status.as_u16(), &bytes));
        }
        let token: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
            KmsError::Unreachable("the token endpoint's answer is not a token response".into())
        })?;
        if token.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
            || token.access_token.is_empty()
        {
            return Err(KmsError::AccessDenied(
                "the token endpoint gave no bearer access token".into(),
            ));
        }
        let lifetime =
            Duration::from_secs(token.expires_in.as_ref().and_then(json_u64).unwrap_or(300));
        let margin = TOKEN_REFRESH_MARGIN.min(lifetime / 2);
        Ok(CachedToken { value: token.access_token, refresh_at: started + lifetime - margin })
    }
}

/// A token endpoint's refusal (RFC 6749 §5.2: `{"error": "...", "error_description": "..."}`).
pub(crate) fn oauth_error(http_status: u16, body: &[u8]) -> KmsError {
    #[derive(Deserialize)]
    struct OAuthError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    if http_status == 429 {
        return KmsError::Throttled;
    }
    if http_status >= 500 {
        return KmsError::Unreachable(format!("the token endpoint answered HTTP {http_status}"));
    }
    let parsed = serde_json::from_slice::<OAuthError>(body).ok();
    let code = parsed.as_ref().map(|e| e.error.as_str()).unwrap_or_default();
    // Entra's descriptions are multi-line with trace ids; the first line says what is wrong.
    let description = parsed
        .as_ref()
        .and_then(|e| e.error_description.as_deref())
        .and_then(|d| d.lines().next())
        .map(excerpt)
        .unwrap_or_default();
    let message = format!(
        "token endpoint: {} {description}",
        if code.is_empty() { format!("HTTP {http_status}") } else { code.to_owned() },
    );
    match code {
        "invalid_request" | "invalid_scope" | "unsupported_grant_type" => {
            KmsError::ConfigurationInvalid(message)
        }
        _ => KmsError::AccessDenied(message),
    }
}

/// A failure to get an answer at all: refused, reset, timed out, TLS.
pub(crate) fn transport_error(error: reqwest::Error) -> KmsError {
    let message = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        keyhold_core::error_text::chain(&error)
    };
    KmsError::Unreachable(excerpt(&message))
}

/// An endpoint URL without a trailing slash: `https://…`, or `http://` to a loopback address
/// (tests, local proxies) so that secrets and tokens never cross a network in the clear.
pub(crate) fn http_base(url: &str, field: &str) -> Result<String, KmsError> {
    let invalid = |why: &str| KmsError::ConfigurationInvalid(format!("{field} {url:?}: {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    let Some(host) = parsed.host_str() else {
        return Err(invalid("no host"));
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(invalid("plain http is only allowed to a loopback address")),
        _ => return Err(invalid("not an https URL")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("credentials in the URL"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// An integer as JSON writes it: a number, or (Google's int64 mapping) a string.
pub(crate) fn json_u64(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The first characters of a server's message, for an error.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_EXCERPT) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_token_endpoint_errors() {
        let body = br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        let err = oauth_error(400, body);
        assert!(
            matches!(&err, KmsError::AccessDenied(m) if m.contains("Invalid JWT Signature")),
            "{err:?}"
        );
        assert!(matches!(
            oauth_error(400, br#"{"error":"invalid_scope"}"#),
            KmsError::ConfigurationInvalid(_)
        ));
        assert_eq!(oauth_error(429, b""), KmsError::Throttled);
        assert!(matches!(oauth_error(503, b""), KmsError::Unreachable(_)));
    }

    #[test]
    fn entra_token_endpoint_errors() {
        let secret = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 0\r\nCorrelation ID: 1","error_codes":[7000215]}"#;
        let err = oauth_error(401, secret);
        assert!(
            matches!(&err, KmsError::AccessDenied(m) if m.contains("AADSTS7000215") && !m.contains("Trace")),
            "{err:?}"
        );
        let tenant = br#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#;
        assert!(matches!(oauth_error(400, tenant), KmsError::ConfigurationInvalid(_)));
        assert_eq!(oauth_error(429, b""), KmsError::Throttled);
        assert!(matches!(oauth_error(502, b""), KmsError::Unreachable(_)));
    }
}
