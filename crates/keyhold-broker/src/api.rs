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
use axum::{Json, Router};
use keyhold_core::seal::FleetPublicKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::auth::BearerKey;
use crate::error::{ApiError, ErrorBody};
use crate::snapshot::Snapshots;
use crate::store::{
    Change, DEFAULT_PAGE_LIMIT, Invitation, KmsConfig, KmsConfigStatus, NewKmsConfig,
    NewSiemConfig, SiemConfig, SiemConfigStatus, Store, Tenant, TenantStatus,
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
                shutdown,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
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
        .route("/api/v1/tenants/{id}/invitations", post(create_invitation))
        .route("/api/v1/tenants/{id}/kms-configs", get(list_kms_configs).post(add_kms_config))
        .route("/api/v1/tenants/{id}/kms-configs/{cid}/primary", post(primary_kms_config))
        .route("/api/v1/tenants/{id}/kms-configs/{cid}/disable", post(disable_kms_config))
        .route("/api/v1/tenants/{id}/kms-configs/{cid}/enable", post(enable_kms_config))
        .route("/api/v1/tenants/{id}/siem-configs", get(list_siem_configs).post(add_siem_config))
        .route("/api/v1/tenants/{id}/siem-configs/{name}/disable", post(disable_siem_config))
        .route("/api/v1/tenants/{id}/siem-configs/{name}/enable", post(enable_siem_config))
        .route("/api/v1/tenants/{id}/history", get(history))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_vendor_key));
    let proxy = Router::new()
        .route("/api/proxy/v1/snapshot", get(snapshot))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_proxy_token));
    Router::new()
        .merge(vendor)
        .merge(proxy)
        .merge(crate::ui::router())
        .route("/api/v1/fleet-key", get(fleet_key))
        .route("/api/openapi.json", get(openapi_json))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(|| async { ApiError::NoRoute })
        .layer(DefaultBodyLimit::max(state.inner.max_body_bytes))
        .with_state(state)
}

async fn require_vendor_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let ok = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| state.inner.vendor_key.verify_header(v.as_bytes()));
    if ok { next.run(request).await } else { ApiError::Unauthorized.into_response() }
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
    responses((status = 201, body = Tenant), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    body: Result<Json<CreateTenant>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    let Json(body) = body?;
    let tenant = state.store().create_tenant(VENDOR_ACTOR, &body.id, body.name.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Lists tenants by id, a page at a time.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", params(ListTenantsQuery),
    security(("vendor_key" = [])),
    responses((status = 200, body = TenantPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
async fn list_tenants(
    State(state): State<AppState>,
    query: Result<Query<ListTenantsQuery>, QueryRejection>,
) -> ApiResult<Json<TenantPage>> {
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
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = [])),
    responses((status = 200, body = Tenant), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Tenant>> {
    let Path(id) = id?;
    let tenant =
        state.store().tenant(&id).await?.ok_or(crate::error::StoreError::TenantNotFound(id))?;
    Ok(Json(tenant))
}

/// Disables a tenant (the proxies refuse its requests).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/disable", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = [])),
    responses((status = 200, body = Tenant), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn disable_tenant(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Tenant>> {
    let Path(id) = id?;
    Ok(Json(state.store().set_tenant_status(VENDOR_ACTOR, &id, TenantStatus::Disabled).await?))
}

/// Enables a tenant again.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/enable", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = [])),
    responses((status = 200, body = Tenant), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn enable_tenant(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Tenant>> {
    let Path(id) = id?;
    Ok(Json(state.store().set_tenant_status(VENDOR_ACTOR, &id, TenantStatus::Active).await?))
}

/// Invites a tenant admin: a one-time token, valid 72 hours (accepting it comes with the web UI).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/invitations", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), request_body = CreateInvitation,
    security(("vendor_key" = [])),
    responses((status = 201, body = InvitationCreated), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_invitation(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<CreateInvitation>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<InvitationCreated>)> {
    let Path(id) = id?;
    let Json(body) = body?;
    let (invitation, token) = state
        .store()
        .create_invitation(VENDOR_ACTOR, &id, &body.email, crate::store::INVITATION_TTL)
        .await?;
    Ok((StatusCode::CREATED, Json(InvitationCreated { invitation, token: token.to_string() })))
}

// ---- KMS configurations ----------------------------------------------------------------------

/// A tenant's KMS configurations.
#[utoipa::path(get, path = "/api/v1/tenants/{id}/kms-configs", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = [])),
    responses((status = 200, body = KmsConfigList), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_kms_configs(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<KmsConfigList>> {
    let Path(id) = id?;
    Ok(Json(KmsConfigList { items: state.store().kms_configs(&id).await? }))
}

/// Adds a KMS configuration. Secret fields go only in `sealed`; a secret field in `settings`
/// is refused (`invalid_field`).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")), request_body = NewKmsConfig,
    security(("vendor_key" = [])),
    responses((status = 201, body = KmsConfig), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_kms_config(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<NewKmsConfig>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<KmsConfig>)> {
    let Path(id) = id?;
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(state.store().add_kms_config(VENDOR_ACTOR, &id, body).await?)))
}

async fn set_kms_status(
    state: &AppState,
    path: Result<Path<(String, i64)>, PathRejection>,
    status: KmsConfigStatus,
) -> ApiResult<Json<KmsConfig>> {
    let Path((id, cid)) = path?;
    Ok(Json(state.store().set_kms_config_status(VENDOR_ACTOR, &id, cid, status).await?))
}

/// Makes a KMS configuration the primary one (the previous primary becomes `active`).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs/{cid}/primary", tag = "kms",
    params(("id" = String, Path, description = "Tenant id"), ("cid" = i64, Path, description = "Configuration id")),
    security(("vendor_key" = [])),
    responses((status = 200, body = KmsConfig), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn primary_kms_config(
    State(state): State<AppState>,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<KmsConfig>> {
    set_kms_status(&state, path, KmsConfigStatus::Primary).await
}

/// Disables a KMS configuration (keys it wrapped no longer unwrap).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs/{cid}/disable", tag = "kms",
    params(("id" = String, Path, description = "Tenant id"), ("cid" = i64, Path, description = "Configuration id")),
    security(("vendor_key" = [])),
    responses((status = 200, body = KmsConfig), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn disable_kms_config(
    State(state): State<AppState>,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<KmsConfig>> {
    set_kms_status(&state, path, KmsConfigStatus::Disabled).await
}

/// Enables a KMS configuration (as `active`: unwrap only).
#[utoipa::path(post, path = "/api/v1/tenants/{id}/kms-configs/{cid}/enable", tag = "kms",
    params(("id" = String, Path, description = "Tenant id"), ("cid" = i64, Path, description = "Configuration id")),
    security(("vendor_key" = [])),
    responses((status = 200, body = KmsConfig), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn enable_kms_config(
    State(state): State<AppState>,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Json<KmsConfig>> {
    set_kms_status(&state, path, KmsConfigStatus::Active).await
}

// ---- SIEM configurations ---------------------------------------------------------------------

/// A tenant's SIEM configurations (audit sinks).
#[utoipa::path(get, path = "/api/v1/tenants/{id}/siem-configs", tag = "siem",
    params(("id" = String, Path, description = "Tenant id")), security(("vendor_key" = [])),
    responses((status = 200, body = SiemConfigList), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_siem_configs(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<SiemConfigList>> {
    let Path(id) = id?;
    Ok(Json(SiemConfigList { items: state.store().siem_configs(&id).await? }))
}

/// Adds a SIEM configuration; its credential (`secret`) goes only in `sealed`.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/siem-configs", tag = "siem",
    params(("id" = String, Path, description = "Tenant id")), request_body = NewSiemConfig,
    security(("vendor_key" = [])),
    responses((status = 201, body = SiemConfig), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn add_siem_config(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<NewSiemConfig>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SiemConfig>)> {
    let Path(id) = id?;
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(state.store().add_siem_config(VENDOR_ACTOR, &id, body).await?)))
}

async fn set_siem_status(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    status: SiemConfigStatus,
) -> ApiResult<Json<SiemConfig>> {
    let Path((id, name)) = path?;
    Ok(Json(state.store().set_siem_config_status(VENDOR_ACTOR, &id, &name, status).await?))
}

/// Disables a SIEM configuration.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/siem-configs/{name}/disable", tag = "siem",
    params(("id" = String, Path, description = "Tenant id"), ("name" = String, Path, description = "Configuration name")),
    security(("vendor_key" = [])),
    responses((status = 200, body = SiemConfig), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn disable_siem_config(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<SiemConfig>> {
    set_siem_status(&state, path, SiemConfigStatus::Disabled).await
}

/// Enables a SIEM configuration again.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/siem-configs/{name}/enable", tag = "siem",
    params(("id" = String, Path, description = "Tenant id"), ("name" = String, Path, description = "Configuration name")),
    security(("vendor_key" = [])),
    responses((status = 200, body = SiemConfig), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn enable_siem_config(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<SiemConfig>> {
    set_siem_status(&state, path, SiemConfigStatus::Active).await
}

// ---- history, fleet key, snapshot, health ----------------------------------------------------

/// A tenant's change records, oldest first.
#[utoipa::path(get, path = "/api/v1/tenants/{id}/history", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id"), HistoryQuery), security(("vendor_key" = [])),
    responses((status = 200, body = ChangePage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<ChangePage>> {
    let Path(id) = id?;
    let Query(query) = query?;
    let page = state.store().history(&id, query.after, page_limit(query.limit)?).await?;
    Ok(Json(ChangePage { items: page.items, next: page.next }))
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
            "proxy_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI description of the broker's API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Keyhold Configuration Broker", description = "Vendor Bridge API and proxy snapshot route (docs/broker.md)"),
    paths(create_tenant, list_tenants, get_tenant, disable_tenant, enable_tenant, create_invitation,
          list_kms_configs, add_kms_config, primary_kms_config, disable_kms_config, enable_kms_config,
          list_siem_configs, add_siem_config, disable_siem_config, enable_siem_config, history,
          fleet_key, snapshot, health, ready, openapi_json),
    components(schemas(ErrorBody, Tenant, TenantStatus, TenantPage, CreateTenant, KmsConfig, KmsConfigStatus,
                       NewKmsConfig, KmsConfigList, SiemConfig, SiemConfigStatus, NewSiemConfig, SiemConfigList,
                       Change, ChangePage, CreateInvitation, Invitation, InvitationCreated, FleetKeyInfo, HealthBody)),
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
