//! The HTTP API: the Vendor Bridge API (`/api/v1`), the proxies' snapshot route
//! (`/api/proxy/v1/snapshot`), health, and the OpenAPI document generated from these handlers
//! (`/api/openapi.json`). Handlers parse, call one store function and map the result; errors
//! become `{"code", "message"}` in [`crate::error`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::leasing::TenantLeasing;
use axum::{Json, Router};
use keyhold_core::seal::FleetPublicKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use zeroize::Zeroizing;

use crate::auth::BearerKey;
use crate::credentials::{self, LoginLimiter};
use crate::error::{ApiError, ErrorBody, StoreError};
use crate::session::{self, Caller};
use crate::snapshot::Snapshots;
use crate::store::{
    AdminView, Change, DEFAULT_PAGE_LIMIT, Invitation, InvitationView, KmsConfig, KmsConfigStatus,
    ManagedBy, NewKmsConfig, NewSiemConfig, NewVendorKey, SiemConfig, SiemConfigStatus, Store,
    Tenant, TenantStatus,
};

/// Longest long poll of the snapshot route.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// How often a long poll re-reads the version from the database (changes made by another
/// broker replica on the same database are seen this way).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The actor recorded in the history for requests made with the vendor API key.
pub const VENDOR_ACTOR: &str = "vendor";

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    snapshots: Snapshots,
    vendor_key: BearerKey,
    proxy_token: BearerKey,
    fleet_keys: Vec<FleetPublicKey>,
    max_body_bytes: usize,
    secure_cookies: bool,
    vendor_key_on_create: bool,
    login_limiter: LoginLimiter,
    shutdown: watch::Receiver<bool>,
}

/// Everything [`AppState::new`] needs.
#[derive(Debug)]
pub struct AppParts {
    /// The database (its fleet key ids set).
    pub store: Store,
    /// Signs snapshots.
    pub snapshots: Snapshots,
    /// The Vendor Bridge API key.
    pub vendor_key: BearerKey,
    /// The proxies' token.
    pub proxy_token: BearerKey,
    /// The fleet public keys; the first is handed out for sealing.
    pub fleet_keys: Vec<FleetPublicKey>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Whether the session cookie is marked `Secure`.
    pub secure_cookies: bool,
    /// Whether a tenant created without saying otherwise gets a vendor-managed key.
    pub vendor_key_on_create: bool,
    /// Becomes `true` when the broker shuts down (long polls then end at once).
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// The state of a router.
    pub fn new(parts: AppParts) -> Self {
        let AppParts {
            store,
            snapshots,
            vendor_key,
            proxy_token,
            fleet_keys,
            max_body_bytes,
            secure_cookies,
            vendor_key_on_create,
            shutdown,
        } = parts;
        Self {
            inner: Arc::new(Inner {
                store,
                snapshots,
                vendor_key,
                proxy_token,
                fleet_keys,
                max_body_bytes,
                secure_cookies,
                vendor_key_on_create,
                login_limiter: LoginLimiter::default(),
                shutdown,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The Vendor Bridge API key (the E2E routes check it themselves).
    pub(crate) fn vendor_key(&self) -> &BearerKey {
        &self.inner.vendor_key
    }

    /// The largest request body of the broker's routes.
    pub(crate) fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// The fleet key new secrets are sealed to (the first configured).
    fn sealing_key(&self) -> ApiResult<&FleetPublicKey> {
        self.inner.fleet_keys.first().ok_or_else(|| {
            ApiError::NotFound(
                "the broker has no fleet public key (fleet_public_keys) to seal a vendor key to"
                    .into(),
            )
        })
    }
}

// ---- request and response bodies ---------------------------------------------------------

/// `POST /api/v1/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// The tenant id, as the proxies' (1 to 1024 bytes, no control characters or `/`).
    pub id: String,
    /// Display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Give the tenant its own vendor-managed key as its primary KMS configuration (default:
    /// the broker's `vendor_key_on_create`).
    #[serde(default)]
    pub vendor_key: Option<bool>,
}

/// A new tenant, with its vendor-managed key if one was made.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantCreated {
    /// The tenant.
    #[serde(flatten)]
    pub tenant: Tenant,
    /// Its vendor-managed key (a KMS configuration of type `vendor`), if one was made.
    pub vendor_key: Option<KmsConfig>,
}

/// A page of tenants.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantPage {
    /// Tenants by id.
    pub items: Vec<Tenant>,
    /// `after` for the next page; `null` after the last page.
    pub next: Option<String>,
}

/// A page of history records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangePage {
    /// Records by id.
    pub items: Vec<Change>,
    /// `after` for the next page; `null` after the last page.
    pub next: Option<i64>,
}

/// A tenant's KMS configurations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KmsConfigList {
    /// By id.
    pub items: Vec<KmsConfig>,
}

/// A tenant's invitations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationList {
    /// Oldest first.
    pub items: Vec<InvitationView>,
}

/// Which invitations to revoke.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeInvitations {
    /// The invited address: its pending invitations are revoked.
    pub email: String,
}

/// How many invitations were revoked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationsRevoked {
    /// The address.
    pub email: String,
    /// Pending invitations revoked (at least one).
    pub revoked: u64,
}

/// A tenant's admins.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdminList {
    /// By id.
    pub items: Vec<AdminView>,
}

/// A tenant's SIEM configurations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SiemConfigList {
    /// By name.
    pub items: Vec<SiemConfig>,
}

/// `POST /api/v1/tenants/{id}/invitations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// The future tenant admin's e-mail address.
    pub email: String,
}

/// A new invitation: the token is shown once (only its hash is stored).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationCreated {
    /// The invitation.
    #[serde(flatten)]
    pub invitation: Invitation,
    /// The one-time token to put in the link sent to the admin.
    pub token: String,
}

/// `POST /api/v1/invitations/accept`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The invitation token from the link.
    #[schema(value_type = String)]
    pub token: Zeroizing<String>,
    /// The new admin's password (at least 12 characters).
    #[schema(value_type = String)]
    pub password: Zeroizing<String>,
}

/// The tenant admin an invitation created. The TOTP secret is shown this once.
#[derive(Serialize, ToSchema)]
pub struct AdminCreated {
    /// The admin's id.
    pub admin_id: i64,
    /// The tenant the admin manages.
    pub tenant: String,
    /// The admin's e-mail address (lower-case): the login name.
    pub email: String,
    /// The TOTP secret (base32; SHA-1, 6 digits, 30 s) for the authenticator app.
    #[schema(value_type = String)]
    pub totp_secret: Zeroizing<String>,
    /// The same as an `otpauth://totp/…` URL (for a QR code).
    #[schema(value_type = String)]
    pub otpauth_url: Zeroizing<String>,
}

/// `POST /api/v1/session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The admin's e-mail address.
    pub email: String,
    /// The password.
    #[schema(value_type = String)]
    pub password: Zeroizing<String>,
    /// The current 6-digit code of the authenticator app (the previous step's is accepted too).
    #[schema(value_type = String)]
    pub totp: Zeroizing<String>,
}

/// A tenant admin's session (`POST` and `GET /api/v1/session`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionBody {
    /// Send it as `X-CSRF-Token` with every POST, PUT, PATCH or DELETE.
    pub csrf_token: String,
    /// The admin's tenant.
    pub tenant: String,
    /// The admin's e-mail address.
    pub email: String,
    /// When the session ends, RFC 3339 UTC.
    pub expires_at: String,
}

/// `GET /api/v1/fleet-key`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FleetKeyInfo {
    /// The fleet public key to seal credentials to (base64 X25519).
    pub public_key: String,
    /// Its key id (first 8 bytes of its SHA-256, hex).
    pub key_id: String,
    /// The HPKE suite.
    pub suite: String,
}

/// Query of the tenant list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTenantsQuery {
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Start after this tenant id (the previous page's `next`).
    pub after: Option<String>,
    /// Only tenants whose id or name starts with this (case-sensitive).
    pub q: Option<String>,
}

/// Query of the history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Start after this record id (the previous page's `next`).
    pub after: Option<i64>,
}

/// Query of the snapshot route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// With `If-None-Match`: wait up to this many seconds (at most 60) for a newer version.
    pub wait: Option<u64>,
}

/// `/health`, `/ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthBody {
    /// `ok`, or what is wrong.
    pub status: String,
}

// ---- extractor rejections -----------------------------------------------------------------

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::BodyTooLarge
        } else {
            Self::BadRequest(format!("body: {}", rejection.body_text()))
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(format!("query: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(format!("path: {}", rejection.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ---- the router ------------------------------------------------------------------------------

/// The whole API.
pub fn app(state: AppState) -> Router {
    let vendor = Router::new()
        .route("/api/v1/tenants", post(create_tenant).get(list_tenants))
        .route("/api/v1/tenants/{id}", get(get_tenant))
        .route("/api/v1/tenants/{id}/disable", post(disable_tenant))
        .route("/api/v1/tenants/{id}/enable", post(enable_tenant))
        .route("/api/v1/tenants/{id}/invitations", post(create_invitation).get(list_invitations))
        .route("/api/v1/tenants/{id}/invitations/revoke", post(revoke_invitations))
        .route("/api/v1/tenants/{id}/admins", get(list_admins))
        .route("/api/v1/tenants/{id}/admins/{admin}/disable", post(disable_admin))
        .route("/api/v1/tenants/{id}/admins/{admin}/enable", post(enable_admin))
        .route("/api/v1/tenants/{id}/kms-configs", get(list_kms_configs).post(add_kms_config))
        .route("/api/v1/tenants/{id}/vendor-keys", post(create_vendor_key))
        .route("/api/v1/tenants/{id}/kms-usage", get(crate::kms_usage::tenant_usage))
        .route("/api/v1/tenants/{id}/kms-configs/{cid}/primary", post(primary_kms_config))
        .route("/api/v1/tenants/{id}/kms-configs/{cid}/disable", post(disable_kms_config))
        .route("/api/v1/tenants/{id}/kms-configs/{cid}/enable", post(enable_kms_config))
        .route("/api/v1/tenants/{id}/siem-configs", get(list_siem_configs).post(add_siem_config))
        .route("/api/v1/tenants/{id}/siem-configs/{name}/disable", post(disable_siem_config))
        .route("/api/v1/tenants/{id}/siem-configs/{name}/enable", post(enable_siem_config))
        .route("/api/v1/tenants/{id}/history", get(history))
        .route("/api/v1/tenants/{id}/leasing", get(get_leasing).put(set_leasing))
        .route("/api/v1/tenants/{id}/tenant-secrets", get(crate::tenant_secrets::list_for_tenant))
        .route("/api/v1/tenants/{id}/tenant-secrets/rotate", post(crate::tenant_secrets::rotate))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let proxy = Router::new()
        .route("/api/proxy/v1/snapshot", get(snapshot))
        .route("/api/proxy/v1/admin-events/claim", post(crate::admin_events::claim))
        .route("/api/proxy/v1/admin-events/ack", post(crate::admin_events::ack))
        .route("/api/proxy/v1/e2e-events/claim", post(crate::admin_events::claim_e2e))
        .route("/api/proxy/v1/e2e-events/ack", post(crate::admin_events::ack_e2e))
        .route("/api/proxy/v1/kms-usage", post(crate::kms_usage::report))
        .route("/api/proxy/v1/tenant-secrets", post(crate::tenant_secrets::create_for_proxy))
        .route("/api/proxy/v1/tenant-secrets/list", post(crate::tenant_secrets::list_for_proxy))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_proxy_token));
    Router::new()
        .merge(vendor)
        .merge(proxy)
        .merge(crate::e2e::router())
        .merge(crate::ui::router())
        .route("/api/v1/invitations/accept", post(accept_invitation))
        .route("/api/v1/session", post(login).get(whoami).delete(logout))
        .route("/api/v1/fleet-key", get(fleet_key))
        .route("/api/openapi.json", get(openapi_json))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(|| async { ApiError::NoRoute })
        .layer(DefaultBodyLimit::max(state.inner.max_body_bytes))
        .with_state(state)
}

/// Finds the [`Caller`] of a Vendor Bridge API route: an `Authorization` header must be the
/// vendor key; without one, the session cookie must name a live session, and a mutating request
/// must carry its CSRF token. What the caller may do is each handler's check.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    match caller_of(&state, request.method(), request.headers()).await {
        Ok((caller, _)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The session of the cookie (`unauthorized` without a live one), CSRF-checked for a mutating
/// request; with its token.
async fn current_session(
    state: &AppState,
    method: &axum::http::Method,
    headers: &HeaderMap,
) -> ApiResult<(Zeroizing<String>, crate::store::SessionInfo)> {
    let token = session::session_token(headers).ok_or(ApiError::Unauthorized)?;
    let found = state.store().session(&token).await?.ok_or(ApiError::Unauthorized)?;
    session::check_csrf(method, headers, &found.csrf_token)?;
    Ok((token, found))
}

/// The caller and, for a tenant admin, the session.
async fn caller_of(
    state: &AppState,
    method: &axum::http::Method,
    headers: &HeaderMap,
) -> ApiResult<(Caller, Option<crate::store::SessionInfo>)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return if state.inner.vendor_key.verify_header(value.as_bytes()) {
            Ok((Caller::Vendor, None))
        } else {
            Err(ApiError::Unauthorized)
        };
    }
    let (_, found) = current_session(state, method, headers).await?;
    let caller = Caller::TenantAdmin {
        tenant: found.tenant.clone(),
        admin_id: found.admin_id,
        email: found.email.clone(),
    };
    Ok((caller, Some(found)))
}

async fn require_proxy_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let ok = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| state.inner.proxy_token.verify_header(v.as_bytes()));
    if ok { next.run(request).await } else { ApiError::Unauthorized.into_response() }
}

// ---- tenants ---------------------------------------------------------------------------------

/// Creates a tenant.
#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = CreateTenant,
    security(("vendor_key" = [])),
    responses((status = 201, body = TenantCreated), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateTenant>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<TenantCreated>)> {
    caller.require_vendor()?;
    let Json(body) = body?;
    let fleet = if body.vendor_key.unwrap_or(state.inner.vendor_key_on_create) {
        Some(state.sealing_key()?)
    } else {
        None
    };
    let (tenant, vendor_key) = state
        .store()
        .create_tenant_with_key(&caller.actor(), &body.id, body.name.as_deref(), fleet)
        .await?;
    Ok((StatusCode::CREATED, Json(TenantCreated { tenant, vendor_key })))
}

/// Creates a vendor-managed key for the tenant: the broker draws 32 random bytes, seals them at
/// once to the proxy fleet's key and keeps only the sealed blob (a KMS configuration of type
/// `vendor`, `managed_by: vendor`). Vendor API key only.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/vendor-keys", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")), request_body = NewVendorKey,
    security(("vendor_key" = [])),
    responses((status = 201, body = KmsConfig), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_vendor_key(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<NewVendorKey>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<KmsConfig>)> {
    let Path(id) = id?;
    caller.require_vendor()?;
    let Json(body) = body?;
    let fleet = state.sealing_key()?;
    let config = state.store().create_vendor_key(&caller.actor(), &id, body, fleet).await?;
    Ok((StatusCode::CREATED, Json(config)))
}

/// Lists tenants by id, a page at a time.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", params(ListTenantsQuery),
    security(("vendor_key" = [])),
    responses((status = 200, body = TenantPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_tenants(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListTenantsQuery>, QueryRejection>,
) -> ApiResult<Json<TenantPage>> {
    caller.require_vendor()?;
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let page =
        state.store().list_tenants(query.after.as_deref(), limit, query.q.as_deref()).await?;
    Ok(Json(TenantPage { items: page.items, next: page.next }))
}

fn page_limit(limit: Option<u32>) -> ApiResult<u32> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(n) if (1..=crate::store::MAX_PAGE_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::BadRequest(format!(
            "limit: must be 1 to {}",
            crate::store::MAX_PAGE_LIMIT
        ))),
    }
}

/// One tenant.
#[utoipa::path(get, path = "/api/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Tenant>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let tenant =
        state.store().tenant(&id).await?.ok_or(crate::error::StoreError::TenantNotFound(id))?;
    Ok(Json(tenant))
}

/// Disables a tenant (the proxies refuse its requests).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/disable", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = [])),
    responses((status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn disable_tenant(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Tenant>> {
    caller.require_vendor()?;
    let Path(id) = id?;
    Ok(Json(state.store().set_tenant_status(&caller.actor(), &id, TenantStatus::Disabled).await?))
}

/// Enables a tenant again.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/enable", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = [])),
    responses((status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn enable_tenant(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Tenant>> {
    caller.require_vendor()?;
    let Path(id) = id?;
    Ok(Json(state.store().set_tenant_status(&caller.actor(), &id, TenantStatus::Active).await?))
}

/// Invites a tenant admin: a one-time token, valid 72 hours (accept it with
/// `POST /api/v1/invitations/accept`).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/invitations", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), request_body = CreateInvitation,
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 201, body = InvitationCreated), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_invitation(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<CreateInvitation>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<InvitationCreated>)> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let Json(body) = body?;
    let (invitation, token) = state
        .store()
        .create_invitation(&caller.actor(), &id, &body.email, crate::store::INVITATION_TTL)
        .await?;
    Ok((StatusCode::CREATED, Json(InvitationCreated { invitation, token: token.to_string() })))
}

/// The tenant's invitations and where each stands (`pending`, `used`, `expired`, `revoked`);
/// never their tokens.
#[utoipa::path(get, path = "/api/v1/tenants/{id}/invitations", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = InvitationList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_invitations(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<InvitationList>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    Ok(Json(InvitationList { items: state.store().invitations(&id).await? }))
}

/// Revokes the pending invitations of an address: their links stop working at once (accepting
/// one answers `410 invitation_revoked`). For a link sent to the wrong address, or one others
/// may have seen. `404` when the address has no pending invitation.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/invitations/revoke", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), request_body = RevokeInvitations,
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = InvitationsRevoked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_invitations(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<RevokeInvitations>, JsonRejection>,
) -> ApiResult<Json<InvitationsRevoked>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let Json(body) = body?;
    let revoked = state.store().revoke_invitations(&caller.actor(), &id, &body.email).await?;
    Ok(Json(InvitationsRevoked { email: crate::store::normalize_email(&body.email), revoked }))
}

/// The tenant's admins: e-mail address, since when, disabled or not (no secrets).
#[utoipa::path(get, path = "/api/v1/tenants/{id}/admins", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = AdminList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_admins(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<AdminList>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    Ok(Json(AdminList { items: state.store().admins(&id).await? }))
}

async fn set_admin_disabled(
    state: &AppState,
    caller: &Caller,
    path: Result<Path<(String, i64)>, PathRejection>,
    disabled: bool,
) -> ApiResult<Json<AdminView>> {
    let Path((id, admin)) = path?;
    caller.require_tenant(&id)?;
    if disabled && matches!(caller, Caller::TenantAdmin { admin_id, .. } if *admin_id == admin) {
        // Signing out is how an admin leaves; disabling oneself could leave the tenant with
        // nobody to undo it but the vendor.
        return Err(ApiError::Store(StoreError::Conflict(
            "an admin cannot disable themselves: another admin of the tenant or the vendor can"
                .into(),
        )));
    }
    Ok(Json(state.store().set_admin_disabled(&caller.actor(), &id, admin, disabled).await?))
}

/// Disables a tenant admin: no sign-in from now on, and every session of theirs ends at once
/// (an admin who left, or whose password or TOTP secret may be known to others). Recorded in
/// the history and the tenant's audit stream. An admin cannot disable themselves.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/admins/{admin}/disable", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id"), ("admin" = i64, Path, description = "Admin id")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = AdminView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn disable_admin(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<AdminView>> {
    set_admin_disabled(&state, &caller, path, true).await
}

/// Enables a tenant admin again: they may sign in with their password and TOTP code.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/admins/{admin}/enable", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id"), ("admin" = i64, Path, description = "Admin id")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = AdminView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn enable_admin(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<AdminView>> {
    set_admin_disabled(&state, &caller, path, false).await
}

// ---- tenant admins: invitations, sessions ----------------------------------------------------

fn no_store() -> (header::HeaderName, HeaderValue) {
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("password hashing task: {e}"))
}

/// Accepts an invitation (once): creates the tenant admin for the invitation's tenant and
/// e-mail address. The TOTP secret is in the answer only: show it once.
#[utoipa::path(post, path = "/api/v1/invitations/accept", tag = "sessions",
    request_body = AcceptInvitation,
    responses((status = 201, body = AdminCreated), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
async fn accept_invitation(
    State(state): State<AppState>,
    body: Result<Json<AcceptInvitation>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let AcceptInvitation { token, password } = body;
    state.store().check_invitation(&token).await?;
    credentials::check_password_strength(&password)?;
    let secret = credentials::new_totp_secret()?;
    let hash = tokio::task::spawn_blocking(move || credentials::hash_password(password.as_bytes()))
        .await
        .map_err(join_error)??;
    let accepted = state.store().accept_invitation(&token, &hash, &secret).await?;
    let otpauth_url = credentials::otpauth_url(&secret, &accepted.email)?;
    let body = AdminCreated {
        admin_id: accepted.admin_id,
        tenant: accepted.tenant,
        email: accepted.email,
        totp_secret: secret,
        otpauth_url,
    };
    Ok((StatusCode::CREATED, [no_store()], Json(body)).into_response())
}

/// Signs a tenant admin in: sets the `keyhold_session` cookie (HttpOnly, SameSite=Strict, 12 h)
/// and answers the CSRF token. A wrong e-mail address, password or code all get the same
/// `401`; after 5 failures for an address within 15 minutes, `429`.
#[utoipa::path(post, path = "/api/v1/session", tag = "sessions", request_body = LoginRequest,
    responses((status = 200, body = SessionBody,
               headers(("Set-Cookie" = String, description = "keyhold_session=<token>; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let LoginRequest { email, password, totp } = body;
    let email = crate::store::normalize_email(&email);
    let limiter = &state.inner.login_limiter;
    if limiter.is_blocked(&email) {
        return Err(ApiError::RateLimited);
    }
    let admin = state.store().admin_login(&email).await?;
    // The password is checked (against a dummy hash for an unknown address) in every case.
    let hash = admin.as_ref().map(|a| a.password_hash.clone());
    let password_ok = tokio::task::spawn_blocking(move || {
        credentials::verify_password(password.as_bytes(), hash.as_deref().map(String::as_str))
    })
    .await
    .map_err(join_error)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| ApiError::Internal("the clock is before 1970".into()))?
        .as_secs();
    let mut signed_in = None;
    if let Some(admin) = admin.filter(|a| password_ok && !a.disabled)
        && let Some(step) = credentials::totp_step(&admin.totp_secret, &totp, now)?
        && let Ok(step) = i64::try_from(step)
        // A code is accepted once: a replay of the last accepted step fails.
        && state.store().use_totp_step(admin.id, step).await?
    {
        signed_in = Some(admin);
    }
    let Some(admin) = signed_in else {
        limiter.record_failure(&email);
        return Err(ApiError::LoginFailed);
    };
    limiter.clear(&email);
    let new = state.store().create_session(admin.id, session::SESSION_TTL).await?;
    let cookie = session::session_cookie(&new.token, state.inner.secure_cookies)?;
    let body = SessionBody {
        csrf_token: new.csrf_token,
        tenant: admin.tenant.clone(),
        email: admin.email.clone(),
        expires_at: new.expires_at,
    };
    Ok(([(header::SET_COOKIE, cookie), no_store()], Json(body)).into_response())
}

/// The signed-in admin and the session's CSRF token (for a reloaded page).
#[utoipa::path(get, path = "/api/v1/session", tag = "sessions", security(("session_cookie" = [])),
    responses((status = 200, body = SessionBody), (status = 401, body = ErrorBody)))]
async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let (_, found) = current_session(&state, &axum::http::Method::GET, &headers).await?;
    let body = SessionBody {
        csrf_token: found.csrf_token.to_string(),
        tenant: found.tenant,
        email: found.email,
        expires_at: found.expires_at,
    };
    Ok(([no_store()], Json(body)).into_response())
}

/// Signs out: ends the session and clears the cookie (needs `X-CSRF-Token`).
#[utoipa::path(delete, path = "/api/v1/session", tag = "sessions", security(("session_cookie" = [])),
    params(("X-CSRF-Token" = String, Header, description = "The session's CSRF token")),
    responses((status = 204, description = "Signed out"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let (token, _) = current_session(&state, &axum::http::Method::DELETE, &headers).await?;
    state.store().delete_session(&token).await?;
    let cookie = session::expired_cookie(state.inner.secure_cookies)?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

// ---- KMS configurations ----------------------------------------------------------------------

/// A tenant's KMS configurations.
#[utoipa::path(get, path = "/api/v1/tenants/{id}/kms-configs", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = KmsConfigList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_kms_configs(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<KmsConfigList>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    Ok(Json(KmsConfigList { items: state.store().kms_configs(&id).await? }))
}

/// Adds a KMS configuration. Secret fields go only in `sealed`; a secret field in `settings`
/// is refused (`invalid_field`).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")), request_body = NewKmsConfig,
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 201, body = KmsConfig), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_kms_config(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<NewKmsConfig>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<KmsConfig>)> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let Json(body) = body?;
    if body.kind == "vendor" {
        return Err(ApiError::BadRequest(
            "vendor-managed keys are made by POST /api/v1/tenants/{id}/vendor-keys".into(),
        ));
    }
    let managed_by = match caller {
        Caller::Vendor => ManagedBy::Vendor,
        Caller::TenantAdmin { .. } => ManagedBy::Tenant,
    };
    let config = state.store().add_kms_config(&caller.actor(), &id, body, managed_by).await?;
    Ok((StatusCode::CREATED, Json(config)))
}

async fn set_kms_status(
    state: &AppState,
    caller: &Caller,
    path: Result<Path<(String, i64)>, PathRejection>,
    status: KmsConfigStatus,
) -> ApiResult<Json<KmsConfig>> {
    let Path((id, cid)) = path?;
    caller.require_tenant(&id)?;
    Ok(Json(state.store().set_kms_config_status(&caller.actor(), &id, cid, status).await?))
}

/// Makes a KMS configuration the primary one (the previous primary becomes `active`).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs/{cid}/primary", tag = "kms",
    params(("id" = String, Path, description = "Tenant id"), ("cid" = i64, Path, description = "Configuration id")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = KmsConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn primary_kms_config(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<KmsConfig>> {
    set_kms_status(&state, &caller, path, KmsConfigStatus::Primary).await
}

/// Disables a KMS configuration (keys it wrapped no longer unwrap).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs/{cid}/disable", tag = "kms",
    params(("id" = String, Path, description = "Tenant id"), ("cid" = i64, Path, description = "Configuration id")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = KmsConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn disable_kms_config(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<KmsConfig>> {
    set_kms_status(&state, &caller, path, KmsConfigStatus::Disabled).await
}

/// Enables a KMS configuration (as `active`: unwrap only).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs/{cid}/enable", tag = "kms",
    params(("id" = String, Path, description = "Tenant id"), ("cid" = i64, Path, description = "Configuration id")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = KmsConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn enable_kms_config(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<KmsConfig>> {
    set_kms_status(&state, &caller, path, KmsConfigStatus::Active).await
}

// ---- SIEM configurations ---------------------------------------------------------------------

/// A tenant's SIEM configurations (audit sinks).
#[utoipa::path(get, path = "/api/v1/tenants/{id}/siem-configs", tag = "siem",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = SiemConfigList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_siem_configs(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<SiemConfigList>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    Ok(Json(SiemConfigList { items: state.store().siem_configs(&id).await? }))
}

/// Adds a SIEM configuration; its credential (`secret`) goes only in `sealed`.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/siem-configs", tag = "siem",
    params(("id" = String, Path, description = "Tenant id")), request_body = NewSiemConfig,
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 201, body = SiemConfig), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn add_siem_config(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<NewSiemConfig>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SiemConfig>)> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let Json(body) = body?;
    let config = state.store().add_siem_config(&caller.actor(), &id, body).await?;
    Ok((StatusCode::CREATED, Json(config)))
}

async fn set_siem_status(
    state: &AppState,
    caller: &Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    status: SiemConfigStatus,
) -> ApiResult<Json<SiemConfig>> {
    let Path((id, name)) = path?;
    caller.require_tenant(&id)?;
    Ok(Json(state.store().set_siem_config_status(&caller.actor(), &id, &name, status).await?))
}

/// Disables a SIEM configuration.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/siem-configs/{name}/disable", tag = "siem",
    params(("id" = String, Path, description = "Tenant id"), ("name" = String, Path, description = "Configuration name")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = SiemConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn disable_siem_config(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<SiemConfig>> {
    set_siem_status(&state, &caller, path, SiemConfigStatus::Disabled).await
}

/// Enables a SIEM configuration again.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/siem-configs/{name}/enable", tag = "siem",
    params(("id" = String, Path, description = "Tenant id"), ("name" = String, Path, description = "Configuration name")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = SiemConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn enable_siem_config(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<SiemConfig>> {
    set_siem_status(&state, &caller, path, SiemConfigStatus::Active).await
}

// ---- history, fleet key, snapshot, health ----------------------------------------------------

/// A tenant's change records, oldest first.
#[utoipa::path(get, path = "/api/v1/tenants/{id}/history", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id"), HistoryQuery), security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = ChangePage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<ChangePage>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let Query(query) = query?;
    let page = state.store().history(&id, query.after, page_limit(query.limit)?).await?;
    Ok(Json(ChangePage { items: page.items, next: page.next }))
}

/// The tenant's key leasing settings (absent fields: the proxies' defaults).
#[utoipa::path(get, path = "/api/v1/tenants/{id}/leasing", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = TenantLeasing), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_leasing(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<TenantLeasing>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    Ok(Json(state.store().tenant_leasing(&id).await?))
}

/// Replaces the tenant's key leasing settings: whether its keys are leased, how often leases
/// are renewed (the longest a key disabled in the KMS keeps working) and how long they serve
/// through a KMS outage. The proxies apply them with the next snapshot.
#[utoipa::path(put, path = "/api/v1/tenants/{id}/leasing", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), request_body = TenantLeasing,
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = TenantLeasing), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_leasing(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<TenantLeasing>, JsonRejection>,
) -> ApiResult<Json<TenantLeasing>> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let Json(body) = body?;
    Ok(Json(state.store().set_tenant_leasing(&caller.actor(), &id, body).await?))
}

/// The fleet public key to seal credentials to.
#[utoipa::path(get, path = "/api/v1/fleet-key", tag = "sealing",
    responses((status = 200, body = FleetKeyInfo), (status = 404, body = ErrorBody)))]
async fn fleet_key(State(state): State<AppState>) -> ApiResult<Json<FleetKeyInfo>> {
    let key = state
        .inner
        .fleet_keys
        .first()
        .ok_or_else(|| ApiError::NotFound("no fleet public key is configured".into()))?;
    Ok(Json(FleetKeyInfo {
        public_key: key.to_base64(),
        key_id: key.key_id(),
        suite: keyhold_core::seal::SUITE.to_owned(),
    }))
}

/// The signed configuration snapshot (proxies). With `If-None-Match: "<version>"` and `wait`,
/// a long poll: `304` if no newer version appears within `wait` seconds.
#[utoipa::path(get, path = "/api/proxy/v1/snapshot", tag = "proxy", params(SnapshotQuery,
        ("If-None-Match" = Option<String>, Header, description = "The version the proxy runs, as an ETag: \"42\"")),
    security(("proxy_token" = [])),
    responses((status = 200, description = "The signed envelope {payload, signature, key_id}",
               headers(("ETag" = String, description = "\"<version>\""))),
              (status = 304, description = "Nothing newer"),
              (status = 401, body = ErrorBody)))]
async fn snapshot(
    State(state): State<AppState>,
    query: Result<Query<SnapshotQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let known = headers.get(header::IF_NONE_MATCH).and_then(|v| parse_etag(v.as_bytes()));
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let deadline = tokio::time::Instant::now() + wait;
    let snapshots = &state.inner.snapshots;
    let mut changes = state.store().subscribe();
    let mut shutdown = state.inner.shutdown.clone();
    loop {
        changes.borrow_and_update();
        let version = snapshots.version().await?;
        if known != Some(version) {
            let signed =
                snapshots.current().await.map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (header::ETAG, etag(signed.version)),
                ],
                signed.body,
            )
                .into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || *shutdown.borrow() {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag(version))]).into_response());
        }
        let nap = (deadline - now).min(POLL_INTERVAL);
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown.changed() => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// `"42"` or `W/"42"` → 42.
fn parse_etag(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// Liveness.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = HealthBody)))]
async fn health() -> Json<HealthBody> {
    Json(HealthBody { status: "ok".into() })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthBody>) {
    if *state.inner.shutdown.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(HealthBody { status: "shutting down".into() }))
    } else if state.store().ping().await {
        (StatusCode::OK, Json(HealthBody { status: "ok".into() }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthBody { status: "database unreachable".into() }),
        )
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

// ---- OpenAPI -----------------------------------------------------------------------------------

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "vendor_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(session::SESSION_COOKIE))),
        );
        components.add_security_scheme(
            "proxy_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "e2e_device",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                keyhold_e2e::wire::SIGNATURE_HEADER,
                "A request signed by an authorized device: keyhold-e2e-user, keyhold-e2e-device, \
                 keyhold-e2e-timestamp and keyhold-e2e-signature (docs/e2e-api.md §2)",
            ))),
        );
    }
}

/// The OpenAPI description of the broker's API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Keyhold Configuration Broker", description = "Vendor Bridge API and proxy snapshot route (docs/broker.md). Routes open to tenant admins accept the session cookie; with it, POST/PUT/PATCH/DELETE need the X-CSRF-Token header. The end-to-end encryption service (tag e2e) is described in docs/e2e-api.md: its errors are {code: number, message}."),
    paths(create_tenant, list_tenants, get_tenant, disable_tenant, enable_tenant, create_invitation,
          list_invitations, revoke_invitations, list_admins, disable_admin, enable_admin,
          list_kms_configs, add_kms_config, create_vendor_key, primary_kms_config, disable_kms_config, enable_kms_config,
          list_siem_configs, add_siem_config, disable_siem_config, enable_siem_config, history,
          get_leasing, set_leasing, accept_invitation, login, whoami, logout, fleet_key, snapshot,
          crate::admin_events::claim, crate::admin_events::ack, crate::admin_events::claim_e2e,
          crate::admin_events::ack_e2e, crate::kms_usage::report,
          crate::kms_usage::tenant_usage, crate::tenant_secrets::list_for_proxy,
          crate::tenant_secrets::create_for_proxy, crate::tenant_secrets::list_for_tenant,
          crate::tenant_secrets::rotate, health, ready, openapi_json,
          crate::e2e::create_user, crate::e2e::get_sealed_keys, crate::e2e::authorize_device,
          crate::e2e::get_user, crate::e2e::get_certificate, crate::e2e::revoke_device,
          crate::e2e::create_group, crate::e2e::get_group, crate::e2e::add_member,
          crate::e2e::remove_member, crate::e2e::add_admin, crate::e2e::remove_admin,
          crate::e2e::get_group_key, crate::e2e::create_document, crate::e2e::add_grant,
          crate::e2e::revoke_grant, crate::e2e::decrypt),
    components(schemas(ErrorBody, Tenant, TenantStatus, TenantPage, CreateTenant, TenantCreated, KmsConfig, KmsConfigStatus,
                       ManagedBy, NewVendorKey,
                       NewKmsConfig, KmsConfigList, SiemConfig, SiemConfigStatus, NewSiemConfig, SiemConfigList,
                       Change, ChangePage, CreateInvitation, Invitation, InvitationCreated, FleetKeyInfo, HealthBody,
                       AcceptInvitation, AdminCreated, AdminList, AdminView, LoginRequest,
                       InvitationList, InvitationView, crate::store::InvitationState, RevokeInvitations, InvitationsRevoked, SessionBody, TenantLeasing,
                       crate::admin_events::ClaimRequest, crate::admin_events::AdminEventBatch,
                       crate::admin_events::AckRequest, crate::admin_events::E2eEventBatch,
                       crate::kms_usage::UsageReport,
                       crate::kms_usage::UsageReportItem, crate::kms_usage::TenantKmsUsage,
                       crate::kms_usage::ConfigUsage, crate::kms_usage::KeyVersionUsage,
                       crate::tenant_secrets::TenantSecret, crate::tenant_secrets::TenantSecretInfo,
                       crate::tenant_secrets::ListTenantSecrets, crate::tenant_secrets::TenantSecretList,
                       crate::tenant_secrets::TenantSecretInfoList, crate::tenant_secrets::NewTenantSecret,
                       crate::tenant_secrets::TenantSecretCreated, crate::tenant_secrets::RotateTenantSecrets,
                       crate::tenant_secrets::TenantSecretsRotated,
                       crate::e2e::schema::E2eCreateUser, crate::e2e::schema::E2eSealedKeys,
                       crate::e2e::schema::E2eUserKeys, crate::e2e::schema::E2eCertificate,
                       crate::e2e::schema::E2eAuthorizeDevice, crate::e2e::schema::E2eCreateGroup,
                       crate::e2e::schema::E2eGroup, crate::e2e::schema::E2eAddMember,
                       crate::e2e::schema::E2eAddAdmin, crate::e2e::schema::E2eGroupKey,
                       crate::e2e::schema::E2eCreateDocument, crate::e2e::schema::E2eDocumentCreated,
                       crate::e2e::schema::E2eAddGrant, crate::e2e::schema::E2eDecryptResponse,
                       crate::e2e::schema::E2eErrorBody)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag(b"\"42\""), Some(42));
        assert_eq!(parse_etag(b"W/\"7\""), Some(7));
        assert_eq!(parse_etag(b"42"), None);
        assert_eq!(parse_etag(b"*"), None);
    }
}
