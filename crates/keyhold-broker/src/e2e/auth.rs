//! Who is calling an E2E route: the vendor's backend (the Vendor Bridge API key; it vouches for
//! its users' identities) or one authorized device of the tenant, which signs every request
//! ([`keyhold_e2e::wire::verify_request`]: tenant, user, device, method, path with query,
//! timestamp and the SHA-256 of the body, within
//! [`keyhold_e2e::wire::MAX_CLOCK_SKEW_SECS`] of the broker's clock).

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use keyhold_e2e::Actor;
use keyhold_e2e::wire::{
    DEVICE_HEADER, RequestAuthError, SIGNATURE_HEADER, SignedHeaders, TIMESTAMP_HEADER,
    USER_HEADER, verify_request,
};

use super::db::{self, StoredDevice};
use super::error::{E2eError, E2eResult};
use crate::api::AppState;
use crate::store::Store;

/// An authenticated device.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Its user.
    pub(crate) user: String,
    /// The device.
    pub(crate) device: String,
    /// Its certificate and transform key, as read when it was authenticated.
    pub(crate) stored: StoredDevice,
}

impl Caller {
    /// The actor of [`keyhold_e2e::AccessState`]'s rules and events.
    pub(crate) fn actor(&self) -> Actor<'_> {
        Actor { user: &self.user, device: &self.device }
    }
}

/// 404 (code 1130) unless the tenant exists and is active.
pub(crate) async fn require_tenant(store: &Store, tenant: &str) -> E2eResult<()> {
    let mut conn = store.pool().acquire().await?;
    if db::tenant_is_active(&mut conn, tenant).await? {
        Ok(())
    } else {
        Err(E2eError::UnknownTenant(tenant.to_owned()))
    }
}

/// The vendor's backend: the Vendor Bridge API key, then an active tenant.
pub(crate) async fn vendor(state: &AppState, tenant: &str, headers: &HeaderMap) -> E2eResult<()> {
    let ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| state.vendor_key().verify_header(v.as_bytes()));
    if !ok {
        return Err(E2eError::VendorUnauthorized);
    }
    require_tenant(state.store(), tenant).await
}

/// Reads the vendor's body (at most `limit` bytes).
pub(crate) async fn read_body(request: Request, limit: usize) -> E2eResult<Bytes> {
    read_limited(request.into_body(), limit).await
}

async fn read_limited(body: axum::body::Body, limit: usize) -> E2eResult<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if e.into_inner().is::<http_body_util::LengthLimitError>() {
            E2eError::TooLarge { limit }
        } else {
            E2eError::BadRequest("the request body could not be read".into())
        }
    })
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, RequestAuthError> {
    let value = headers.get(name).ok_or(RequestAuthError::Missing)?;
    // Ids may be any UTF-8 (not only visible ASCII).
    std::str::from_utf8(value.as_bytes()).map_err(|_| RequestAuthError::Missing)
}

/// The four `keyhold-e2e-*` headers, or [`RequestAuthError::Missing`].
fn signed_headers(headers: &HeaderMap) -> Result<SignedHeaders, RequestAuthError> {
    let timestamp = header_text(headers, TIMESTAMP_HEADER)?
        .trim()
        .parse::<i64>()
        .map_err(|_| RequestAuthError::Missing)?;
    Ok(SignedHeaders {
        user: header_text(headers, USER_HEADER)?.to_owned(),
        device: header_text(headers, DEVICE_HEADER)?.to_owned(),
        timestamp,
        signature: header_text(headers, SIGNATURE_HEADER)?.trim().to_owned(),
    })
}

fn unix_now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Authenticates a device's request and reads its body (at most `limit` bytes): the headers
/// (1120), an active tenant (404, 1130), a known device of the tenant (1102), all before the
/// body is read; then the signature over the exact method, path with query and body bytes as
/// received, and the timestamp against the broker's clock (1121, 1122).
pub(crate) async fn device(
    state: &AppState,
    tenant: &str,
    request: Request,
    limit: usize,
) -> E2eResult<(Caller, Bytes)> {
    let (parts, body) = request.into_parts();
    let signed = signed_headers(&parts.headers)?;
    let store = state.store();
    require_tenant(store, tenant).await?;
    let stored = {
        let mut conn = store.pool().acquire().await?;
        db::active_device(&mut conn, tenant, &signed.user, &signed.device).await?
    }
    .ok_or(E2eError::UnknownCaller)?;
    let body = read_limited(body, limit).await?;
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    verify_request(
        &stored.certificate.keys.signing,
        tenant,
        &signed,
        parts.method.as_str(),
        path,
        &body,
        unix_now(),
    )?;
    Ok((Caller { user: signed.user, device: signed.device, stored }, body))
}
