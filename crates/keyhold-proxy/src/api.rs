//! HTTP handlers: parse the body, call one service function, render the result.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{self as http, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::FutureExt as _;
use keyhold_audit::EventKind;
use keyhold_core::metadata::RequestMetadata;
use keyhold_core::wire::{
    self, BatchRekeyRequest, BatchUnwrapRequest, BatchWrapRequest, DeriveKeyRequest, RekeyRequest,
    ReportOperationsRequest, SecurityEventRequest, UnwrapRequest, UnwrappedKey, WrapRequest,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::AppState;
use crate::auth::ApiKeys;
use crate::error::ServiceError;
use crate::metrics::{ClientCounters, HttpLabels, Metrics, RouteLabels, TenantLabels};

/// The service the proxy serves: the [`router`] behind one front door that normalizes the path
/// (some clients build `http://host//api/1/...` from a base URL with a trailing slash), checks
/// the API key of every request but health and metrics, and counts, times and traces them.
///
/// One hand-written layer rather than axum middleware: each `from_fn` or `route_layer` layer
/// cloned a boxed service and boxed a future for every request, about a tenth of a leased
/// unwrap's instructions together (docs/benchmarks.md §6). Routes are labelled by the static
/// route they name, so a request's metrics allocate nothing.
#[derive(Clone)]
pub struct App {
    router: Router,
    api_keys: ApiKeys,
    metrics: Arc<Metrics>,
    serve_metrics: bool,
    observed: Arc<[ObservedRoute; ROUTES.len()]>,
    clients: Arc<ClientCounters>,
}

/// Every route label: the TSP API's routes (and Keyhold's additions to it), then health and
/// metrics (the only routes open without an API key), then the label of paths that name no
/// route (bounded metric cardinality).
const ROUTES: [&str; 15] = [
    wire::ROUTE_WRAP,
    wire::ROUTE_UNWRAP,
    wire::ROUTE_BATCH_WRAP,
    wire::ROUTE_BATCH_UNWRAP,
    wire::ROUTE_REKEY,
    wire::ROUTE_BATCH_REKEY,
    wire::ROUTE_SECURITY_EVENT,
    wire::ROUTE_REPORT_OPERATIONS,
    wire::ROUTE_DERIVE_KEY,
    crate::kms_usage::ROUTE_KMS_USAGE,
    "/health",
    "/live",
    "/ready",
    METRICS_ROUTE,
    UNMATCHED,
];
const API_ROUTES: usize = 10;
const METRICS_ROUTE: &str = "/metrics";
const UNMATCHED: &str = "(unmatched)";

/// A route's latency histogram and its count of 200 answers, kept once first used: looking
/// them up by label for every request cost more than the rest of the metrics work.
#[derive(Default)]
struct ObservedRoute {
    duration: OnceLock<Histogram>,
    ok: OnceLock<Counter>,
}

/// The proxy's HTTP service.
pub fn app(state: AppState, serve_metrics: bool) -> App {
    App {
        api_keys: state.api_keys.clone(),
        metrics: Arc::clone(&state.metrics),
        router: router(state, serve_metrics),
        serve_metrics,
        observed: Arc::new(Default::default()),
        clients: Arc::default(),
    }
}

impl App {
    /// The index in [`ROUTES`] of the route `path` names.
    fn route(&self, path: &str) -> usize {
        ROUTES
            .iter()
            .take(ROUTES.len() - 1)
            .position(|r| *r == path && (self.serve_metrics || *r != METRICS_ROUTE))
            .unwrap_or(ROUTES.len() - 1)
    }

    /// Counts the client SDK a request names (IronCore's clients send these headers).
    fn count_client(&self, headers: &http::HeaderMap) {
        let label = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 32 && v.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("unknown")
        };
        self.clients.count(
            &self.metrics.client_requests,
            label("x-icl-tsc-language"),
            label("x-icl-tsc-version"),
        );
    }
}

/// Counts and times one answered request.
fn observe(
    metrics: &Metrics,
    observed: &ObservedRoute,
    route: &'static str,
    status: u16,
    elapsed: f64,
) {
    let labels = HttpLabels { route, status };
    if status == 200 {
        observed.ok.get_or_init(|| metrics.http_requests.get_or_create(&labels).clone()).inc();
    } else {
        metrics.http_requests.get_or_create(&labels).inc();
    }
    observed
        .duration
        .get_or_init(|| metrics.http_duration.get_or_create(&RouteLabels { route }).clone())
        .observe(elapsed);
}

impl tower::Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let request = collapse_slashes(request);
        let index = self.route(request.uri().path());
        let route = ROUTES.get(index).copied().unwrap_or(UNMATCHED);
        // Fail closed: everything but health and metrics needs the key, whatever the method,
        // so that a route added to the router without being listed here is never open.
        let public = (API_ROUTES..ROUTES.len() - 1).contains(&index);
        let authorized = public
            || request
                .headers()
                .get(header::AUTHORIZATION)
                .is_some_and(|v| self.api_keys.verify_header(v.as_bytes()));
        // Only callers with the key are counted by the client they name: the names are theirs
        // to choose, and a caller without the key must not be able to add series.
        if authorized && index < API_ROUTES {
            self.count_client(request.headers());
        }
        let span = tracing::info_span!("request", method = %request.method(), route);
        // Routing is synchronous; the handler runs when the returned future is polled.
        let routed = authorized.then(|| tower::Service::call(&mut self.router, request));
        let metrics = Arc::clone(&self.metrics);
        let observed = Arc::clone(&self.observed);
        let served = async move {
            let started = Instant::now();
            let response = match routed {
                None => ServiceError::Unauthorized.into_response(),
                Some(routed) => match AssertUnwindSafe(routed).catch_unwind().await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(panic) => panic_response(panic),
                },
            };
            if let Some(observed) = observed.get(index) {
                let elapsed = started.elapsed().as_secs_f64();
                observe(&metrics, observed, route, response.status().as_u16(), elapsed);
            }
            Ok(response)
        };
        Box::pin(tracing::Instrument::instrument(served, span))
    }
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

/// The proxy's router: the TSP API plus health and metrics. [`App`] checks API keys and
/// observes requests in front of it.
pub fn router(state: AppState, serve_metrics: bool) -> Router {
    Router::new()
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
        .merge(admin_routes(serve_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
