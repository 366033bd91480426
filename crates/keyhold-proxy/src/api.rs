//! HTTP handlers: parse the body, call one service function, render the result.

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use keyhold_audit::EventKind;
use keyhold_core::metadata::RequestMetadata;
use keyhold_core::wire::{
    self, BatchRekeyRequest, BatchUnwrapRequest, BatchWrapRequest, DeriveKeyRequest, RekeyRequest,
    ReportOperationsRequest, SecurityEventRequest, UnwrapRequest, UnwrappedKey, WrapRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::AppState;
use crate::auth::require_api_key;
use crate::error::ServiceError;
use crate::metrics::{ClientLabels, HttpLabels, RouteLabels, TenantLabels};

/// The service the proxy serves: [`router`] behind a path normalizer (some clients build
/// `http://host//api/1/...` from a base URL with a trailing slash).
pub type App = tower::util::MapRequest<Router, fn(Request) -> Request>;

/// The proxy's HTTP service.
pub fn app(state: AppState, serve_metrics: bool) -> App {
    tower::ServiceExt::map_request(
        router(state, serve_metrics),
        collapse_slashes as fn(Request) -> Request,
    )
}

/// Rewrites runs of `/` in the path to one `/`.
fn collapse_slashes(mut request: Request) -> Request {
    let path = request.uri().path();
    if !path.contains("//") {
        return request;
    }
    let mut collapsed = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && collapsed.ends_with('/')) {
            collapsed.push(c);
        }
    }
    if let Some(query) = request.uri().query() {
        collapsed.push('?');
        collapsed.push_str(query);
    }
    let mut parts = request.uri().clone().into_parts();
    if let Ok(pq) = collapsed.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// The proxy's router: the TSP API (authenticated) plus health and metrics.
pub fn router(state: AppState, serve_metrics: bool) -> Router {
    let api = Router::new()
        .route(wire::ROUTE_WRAP, post(wrap))
        .route(wire::ROUTE_UNWRAP, post(unwrap))
        .route(wire::ROUTE_BATCH_WRAP, post(batch_wrap))
        .route(wire::ROUTE_BATCH_UNWRAP, post(batch_unwrap))
        .route(wire::ROUTE_REKEY, post(rekey))
        .route(wire::ROUTE_BATCH_REKEY, post(batch_rekey))
        .route(wire::ROUTE_SECURITY_EVENT, post(security_event))
        .route(wire::ROUTE_REPORT_OPERATIONS, post(report_operations))
        .route(wire::ROUTE_DERIVE_KEY, post(derive_key))
        .route(crate::kms_usage::ROUTE_KMS_USAGE, post(kms_usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .merge(api)
        .merge(admin_routes(serve_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Health and metrics only (for the optional admin listener).
pub fn admin_router(state: AppState) -> Router {
    admin_routes(true).fallback(not_found).with_state(state)
}

fn admin_routes(serve_metrics: bool) -> Router<AppState> {
    let routes = Router::new()
        .route("/health", get(health))
        .route("/live", get(live))
        .route("/ready", get(ready));
    if serve_metrics { routes.route("/metrics", get(metrics)) } else { routes }
}

/// A JSON body parsed with the TSP error conventions: an oversize body is 413 with code 102, a
/// malformed one 400 with code 102. The content type is not required (curl users forget it).
pub struct TspJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for TspJson<T> {
    type Rejection = ServiceError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.max_body_bytes;
        let body = axum::body::to_bytes(request.into_body(), limit).await.map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>());
            if too_large {
                ServiceError::BodyTooLarge(limit)
            } else {
                ServiceError::InvalidRequest("the request body could not be read".into())
            }
        })?;
        serde_json::from_slice(&body)
            .map(TspJson)
            .map_err(|e| ServiceError::InvalidRequest(format!("invalid request body: {e}")))
    }
}

/// Renders a response that carries data keys. The serialized body is wiped when the last
/// reference to it is dropped, after it has been written to the socket.
fn secret_json<T: Serialize>(value: &T) -> Response {
    let mut body = Zeroizing::new(Vec::with_capacity(256));
    if serde_json::to_writer(&mut *body, value).is_err() {
        return ServiceError::Internal.into_response();
    }
    let mut response = Response::new(Body::from(Bytes::from_owner(ZeroizingBytes(body))));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn validated(meta: RequestMetadata) -> Result<RequestMetadata, ServiceError> {
    meta.validate().map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
    Ok(meta)
}

async fn wrap(
    State(state): State<AppState>,
    TspJson(req): TspJson<WrapRequest>,
) -> Result<Response, ServiceError> {
    let (meta, ()) = req.split_metadata();
    let meta = validated(meta)?;
    let key = state.service.wrap(&meta).await?;
    Ok(secret_json(&key))
}

async fn unwrap(
    State(state): State<AppState>,
    TspJson(req): TspJson<UnwrapRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (edek,)) = req.split_metadata();
    let meta = validated(meta)?;
    let dek = state.service.unwrap(&meta, &edek).await?;
    Ok(secret_json(&UnwrappedKey { dek }))
}

/// Deterministic field keys. The response carries key material: its body is wiped after sending.
async fn derive_key(
    State(state): State<AppState>,
    TspJson(req): TspJson<DeriveKeyRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (paths, derivation_type, secret_type)) = req.split_metadata();
    let meta = validated(meta)?;
    let request = crate::service::DeriveRequest { paths, derivation_type, secret_type };
    let response = state.service.derive(&meta, &request).await?;
    Ok(secret_json(&response))
}

async fn batch_wrap(
    State(state): State<AppState>,
    TspJson(req): TspJson<BatchWrapRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (ids,)) = req.split_metadata();
    let meta = validated(meta)?;
    let response = state.service.batch_wrap(&meta, ids).await?;
    Ok(secret_json(&response))
}

async fn batch_unwrap(
    State(state): State<AppState>,
    TspJson(req): TspJson<BatchUnwrapRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (edeks,)) = req.split_metadata();
    let meta = validated(meta)?;
    let response = state.service.batch_unwrap(&meta, edeks).await?;
    Ok(secret_json(&response))
}

async fn rekey(
    State(state): State<AppState>,
    TspJson(req): TspJson<RekeyRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (edek, new_tenant)) = req.split_metadata();
    let meta = validated(meta)?;
    let key = state.service.rekey(&meta, &edek, &new_tenant).await?;
    Ok(secret_json(&key))
}

/// Keyhold extension: rekey many EDEKs in one call. The response holds EDEKs only, no data keys.
async fn batch_rekey(
    State(state): State<AppState>,
    TspJson(req): TspJson<BatchRekeyRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (edeks, new_tenant)) = req.split_metadata();
    let meta = validated(meta)?;
    let response = state.service.batch_rekey(&meta, edeks, &new_tenant).await?;
    Ok(axum::Json(response).into_response())
}

/// The success body of calls that return nothing: the JSON literal `null`, which every IronCore
/// client accepts (PHP compares the raw body with `null`; alloy, Node and Go parse it as JSON).
fn null_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], "null").into_response()
}

async fn security_event(
    State(state): State<AppState>,
    TspJson(req): TspJson<SecurityEventRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (timestamp_millis, top_level_event)) = req.split_metadata();
    let meta = validated(meta)?;
    let event =
        meta.icl_fields.event.clone().or(top_level_event).filter(|e| !e.is_empty()).ok_or_else(
            || {
                ServiceError::SecurityEventRejected(
                    "the event name (iclFields.event) is required".into(),
                )
            },
        )?;
    if event.len() > 256 {
        return Err(ServiceError::SecurityEventRejected(
            "the event name is longer than 256 bytes".into(),
        ));
    }
    if state.service.registry().tenant(&meta.tenant_id).is_none() {
        return Err(ServiceError::UnknownTenant(meta.tenant_id));
    }
    state
        .metrics
        .security_events
        .get_or_create(&TenantLabels { tenant: meta.tenant_id.clone() })
        .inc();
    let fields = &meta.icl_fields;
    tracing::info!(
        target: "keyhold::audit",
        tenant = %meta.tenant_id,
        event = %event,
        timestamp_millis = timestamp_millis.unwrap_or_default(),
        requesting_id = fields.requesting_id.as_deref().unwrap_or_default(),
        data_label = fields.data_label.as_deref().unwrap_or_default(),
        source_ip = fields.source_ip.as_deref().unwrap_or_default(),
        object_id = fields.object_id.as_deref().unwrap_or_default(),
        request_id = fields.request_id.as_deref().unwrap_or_default(),
        "security event"
    );
    let mut audit = state.service.event(&meta, EventKind::Security, &event);
    audit.event_time_millis = timestamp_millis.and_then(|t| u64::try_from(t).ok());
    state.service.spool(audit).await?;
    Ok(null_json())
}

/// Rotation tracking (a Keyhold extension): the tenant's KMS configurations and how many
/// EDEKs seen by this proxy still name each.
async fn kms_usage(
    State(state): State<AppState>,
    TspJson(req): TspJson<crate::kms_usage::KmsUsageRequest>,
) -> Result<Response, ServiceError> {
    let registry = state.service.registry();
    let Some(tenant) = registry.tenant(&req.tenant_id) else {
        return Err(ServiceError::UnknownTenant(req.tenant_id));
    };
    let configs: Vec<(i32, &'static str, &'static str)> = tenant
        .configs()
        .iter()
        .map(|c| {
            let status = match c.status {
                crate::config::KmsConfigStatus::Primary => "primary",
                crate::config::KmsConfigStatus::Active => "active",
                crate::config::KmsConfigStatus::Disabled => "disabled",
            };
            (c.id, status, c.kms.kind())
        })
        .collect();
    let report = crate::kms_usage::report(&tenant.id, &configs, state.service.usage());
    Ok(axum::Json(report).into_response())
}

async fn report_operations(
    State(state): State<AppState>,
    TspJson(req): TspJson<ReportOperationsRequest>,
) -> Result<Response, ServiceError> {
    let (meta, (operations,)) = req.split_metadata();
    let meta = validated(meta)?;
    if state.service.registry().tenant(&meta.tenant_id).is_none() {
        return Err(ServiceError::UnknownTenant(meta.tenant_id));
    }
    let (wraps, unwraps) = operations
        .values()
        .fold((0u64, 0u64), |(w, u), c| (w.saturating_add(c.wraps), u.saturating_add(c.unwraps)));
    tracing::info!(
        target: "keyhold::audit",
        tenant = %meta.tenant_id,
        keys = operations.len(),
        wraps,
        unwraps,
        requesting_id = meta.icl_fields.requesting_id.as_deref().unwrap_or_default(),
        "cached key use reported"
    );
    // Keys the client used from its own cache: accesses too, so they are in the trail.
    let mut audit = state.service.event(&meta, EventKind::Data, "cached_key_use");
    audit.keys = wraps.saturating_add(unwraps);
    audit.custom.insert("cached_keys".into(), operations.len().to_string());
    state.service.spool(audit).await?;
    Ok(null_json())
}

async fn health(State(state): State<AppState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({"status": "unavailable"})),
        )
            .into_response()
    }
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<AppState>) -> StatusCode {
    if state.health.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.service.refresh_lease_gauges();
    state.service.refresh_audit_gauges();
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found(request: Request) -> ServiceError {
    ServiceError::NotFound(request.uri().path().chars().take(200).collect())
}

async fn method_not_allowed(request: Request) -> Response {
    let message = format!("method {} is not allowed on {}", request.method(), request.uri().path());
    let mut response = ServiceError::InvalidRequest(message).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; this is a bug");
    ServiceError::Internal.into_response()
}

/// Metrics and a tracing span for every request.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(unmatched)".to_owned());
    if route.starts_with("/api/") {
        let headers = request.headers();
        let label = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 32 && v.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("unknown")
                .to_owned()
        };
        state
            .metrics
            .client_requests
            .get_or_create(&ClientLabels {
                language: label("x-icl-tsc-language"),
                version: label("x-icl-tsc-version"),
            })
            .inc();
    }
    let span = tracing::info_span!("request", method = %request.method(), route = %route);
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    let elapsed = started.elapsed().as_secs_f64();
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels { route: route.clone(), status: response.status().as_u16() })
        .inc();
    state.metrics.http_duration.get_or_create(&RouteLabels { route }).observe(elapsed);
    response
}
