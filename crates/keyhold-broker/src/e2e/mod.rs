//! The end-to-end encryption service (issue 9, docs/e2e-api.md): the server's side of
//! [`keyhold_e2e`], per tenant, in the broker's database.
//!
//! ```text
//!  vendor backend ──Bearer key──▶ users, sealed keys, device authorization ─┐
//!  device ──signed request──▶ auth (verify_request) ─▶ groups, documents,   ├─▶ service ─▶ db
//!                                                     grants, decrypt       ┘    (rules of
//!                                                                                AccessState)
//!  e2e_events ──/api/proxy/v1/e2e-events/claim──▶ proxy ──▶ tenant's audit trail and SIEM
//! ```
//!
//! The broker stores public keys with their owners' signatures (a user's keys signed by the
//! user, a group's key by the device that created it: the broker checks them when they are
//! registered, devices whenever they use them), passphrase-sealed user keys, device
//! certificates, transform keys, group keys sealed to admins, signed ciphertext and grants:
//! never a private key or a document key. A decrypt is a transform of a grant's value toward the calling device
//! (group → user → device), which only that device can open.
//!
//! | module | job |
//! |---|---|
//! | `auth` | the vendor key; devices' signed requests |
//! | `service` | `AccessState`'s rules over the database, and the audit events |
//! | `db` | the E2E tables |
//! | [`error`] | errors, HTTP statuses, numeric codes |
//! | [`schema`] | the OpenAPI description of the bodies |

pub(crate) mod auth;
pub(crate) mod db;
pub mod error;
pub mod schema;
pub(crate) mod service;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use keyhold_e2e::Recipient;
use keyhold_e2e::wire::{
    AddAdmin, AddGrant, AddMember, AuthorizeDevice, CertificateView, CreateDocument, CreateGroup,
    CreateUser, DecryptResponse, GroupKey, GroupView, SealedKeys, UserKeysView,
};
use serde::de::DeserializeOwned;

pub use error::{E2eError, E2eResult};
pub use service::MAX_DOCUMENT_BYTES;

use crate::api::AppState;
use schema::{
    E2eAddAdmin, E2eAddGrant, E2eAddMember, E2eAuthorizeDevice, E2eCertificate, E2eCreateDocument,
    E2eCreateGroup, E2eCreateUser, E2eDecryptResponse, E2eDocumentCreated, E2eErrorBody, E2eGroup,
    E2eGroupKey, E2eSealedKeys, E2eUserKeys, SignedRequestHeaders,
};

/// Largest body of `POST /documents`: a 64 MiB document in base64url (85.4 MiB) and its
/// grants. Every other E2E route takes the broker's `max_body_bytes`.
pub const MAX_DOCUMENT_REQUEST_BYTES: usize = 96 * 1024 * 1024;

/// The prefix of every E2E route.
pub const PREFIX: &str = "/api/v1/e2e/tenants/{tenant}";

/// The E2E routes (each authenticates its caller itself: vendor key or device signature).
pub fn router() -> Router<AppState> {
    let r = |tail: &str| format!("{PREFIX}{tail}");
    Router::new()
        .route(&r("/users"), post(create_user))
        .route(&r("/users/{user}"), get(get_user))
        .route(&r("/users/{user}/sealed-keys"), get(get_sealed_keys))
        .route(&r("/users/{user}/devices"), post(authorize_device))
        .route(&r("/users/{user}/devices/{device}"), get(get_certificate).delete(revoke_device))
        .route(&r("/groups"), post(create_group))
        .route(&r("/groups/{group}"), get(get_group))
        .route(&r("/groups/{group}/members/{user}"), put(add_member).delete(remove_member))
        .route(&r("/groups/{group}/admins/{user}"), put(add_admin).delete(remove_admin))
        .route(&r("/groups/{group}/key"), get(get_group_key))
        .route(&r("/documents"), post(create_document))
        .route(&r("/documents/{document}/grants"), post(add_grant))
        .route(&r("/documents/{document}/grants/{kind}/{id}"), axum::routing::delete(revoke_grant))
        .route(&r("/documents/{document}/decrypt"), post(decrypt))
}

fn path<T>(path: Result<Path<T>, PathRejection>) -> E2eResult<T> {
    path.map(|Path(p)| p).map_err(|e| E2eError::BadRequest(format!("path: {}", e.body_text())))
}

fn json<T: DeserializeOwned>(body: &Bytes) -> E2eResult<T> {
    serde_json::from_slice(body).map_err(|e| E2eError::BadRequest(format!("body: {e}")))
}

/// Authenticates the vendor and reads its JSON body.
async fn vendor_body<T: DeserializeOwned>(
    state: &AppState,
    tenant: &str,
    request: Request,
) -> E2eResult<T> {
    auth::vendor(state, tenant, request.headers()).await?;
    json(&auth::read_body(request, state.max_body_bytes()).await?)
}

/// Authenticates a device (body up to the broker's `max_body_bytes`).
async fn device(
    state: &AppState,
    tenant: &str,
    request: Request,
) -> E2eResult<(auth::Caller, Bytes)> {
    auth::device(state, tenant, request, state.max_body_bytes()).await
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

// ---- vendor ---------------------------------------------------------------------------------

/// Creates a user with its passphrase-sealed keys and its signature of its public keys (the
/// vendor's backend vouches for who the user is; a signature that does not verify with the
/// sealed keys' signing key is refused, 400, code 1115). Event `e2e.user.create`, actor
/// `vendor`.
#[utoipa::path(post, path = "/api/v1/e2e/tenants/{tenant}/users", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id")), request_body = E2eCreateUser,
    security(("vendor_key" = [])),
    responses((status = 201, body = E2eUserKeys), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 404, body = E2eErrorBody),
              (status = 409, body = E2eErrorBody)))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> E2eResult<(StatusCode, Json<UserKeysView>)> {
    let tenant = path(tenant)?;
    let body: CreateUser = vendor_body(&state, &tenant, request).await?;
    let keys = service::create_user(state.store(), &tenant, body).await?;
    Ok((StatusCode::CREATED, Json(keys)))
}

/// A user's passphrase-sealed keys, for the user's new device to open with the passphrase.
#[utoipa::path(get, path = "/api/v1/e2e/tenants/{tenant}/users/{user}/sealed-keys", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("user" = String, Path, description = "User id")),
    security(("vendor_key" = [])),
    responses((status = 200, body = E2eSealedKeys), (status = 401, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody)))]
pub(crate) async fn get_sealed_keys(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Json<SealedKeys>> {
    let (tenant, user) = path(params)?;
    auth::vendor(&state, &tenant, request.headers()).await?;
    Ok(Json(service::sealed_keys(state.store(), &tenant, &user).await?))
}

/// Authorizes a device: its certificate (signed by the user's signing key) and the transform
/// key user → device. Event `e2e.device.authorize`, actor `vendor`.
#[utoipa::path(post, path = "/api/v1/e2e/tenants/{tenant}/users/{user}/devices", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("user" = String, Path, description = "User id")),
    request_body = E2eAuthorizeDevice, security(("vendor_key" = [])),
    responses((status = 201, body = E2eCertificate), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 404, body = E2eErrorBody),
              (status = 409, body = E2eErrorBody)))]
pub(crate) async fn authorize_device(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<(StatusCode, Json<CertificateView>)> {
    let (tenant, user) = path(params)?;
    let body: AuthorizeDevice = vendor_body(&state, &tenant, request).await?;
    let certificate = service::authorize_device(state.store(), &tenant, &user, body).await?;
    Ok((StatusCode::CREATED, Json(certificate)))
}

// ---- devices: users and devices ---------------------------------------------------------------

/// A user's public keys and the user's signature of them, which the device checks.
#[utoipa::path(get, path = "/api/v1/e2e/tenants/{tenant}/users/{user}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("user" = String, Path, description = "User id"),
           SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 200, body = E2eUserKeys), (status = 401, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Json<UserKeysView>> {
    let (tenant, user) = path(params)?;
    device(&state, &tenant, request).await?;
    Ok(Json(service::user_keys(state.store(), &tenant, &user).await?))
}

/// A device's certificate (to check who wrote a document).
#[utoipa::path(get, path = "/api/v1/e2e/tenants/{tenant}/users/{user}/devices/{device}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("user" = String, Path, description = "User id"),
           ("device" = String, Path, description = "Device id"), SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 200, body = E2eCertificate), (status = 401, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody)))]
pub(crate) async fn get_certificate(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Json<CertificateView>> {
    let (tenant, user, device_id) = path(params)?;
    device(&state, &tenant, request).await?;
    Ok(Json(service::certificate(state.store(), &tenant, &user, &device_id).await?))
}

/// Revokes a device of the caller's own user (the caller itself included): its transform key
/// is deleted, so nothing reaches it any more. Event `e2e.device.revoke`.
#[utoipa::path(delete, path = "/api/v1/e2e/tenants/{tenant}/users/{user}/devices/{device}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("user" = String, Path, description = "The caller's user id"),
           ("device" = String, Path, description = "Device id"), SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = E2eErrorBody),
              (status = 403, body = E2eErrorBody), (status = 404, body = E2eErrorBody)))]
pub(crate) async fn revoke_device(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Response> {
    let (tenant, user, device_id) = path(params)?;
    let (caller, _) = device(&state, &tenant, request).await?;
    service::revoke_device(state.store(), &tenant, &caller, &user, &device_id).await?;
    Ok(no_content())
}

// ---- devices: groups --------------------------------------------------------------------------

/// Creates a group administered by the caller's user, its key signed by the calling device (a
/// signature that does not verify with the device's certificate is refused, 400, code 1115).
/// Events `e2e.group.create` (and `e2e.group.member_add` with `creator_membership`).
#[utoipa::path(post, path = "/api/v1/e2e/tenants/{tenant}/groups", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), SignedRequestHeaders),
    request_body = E2eCreateGroup, security(("e2e_device" = [])),
    responses((status = 201, body = E2eGroup), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 404, body = E2eErrorBody),
              (status = 409, body = E2eErrorBody)))]
pub(crate) async fn create_group(
    State(state): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> E2eResult<(StatusCode, Json<GroupView>)> {
    let tenant = path(tenant)?;
    let (caller, body) = device(&state, &tenant, request).await?;
    let body: CreateGroup = json(&body)?;
    let group = service::create_group(state.store(), &tenant, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

/// A group's public key, members and admins, and the key's signature by the device that created
/// the group with that device's certificate (revoked or not), which the device checks.
#[utoipa::path(get, path = "/api/v1/e2e/tenants/{tenant}/groups/{group}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("group" = String, Path, description = "Group id"),
           SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 200, body = E2eGroup), (status = 401, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody)))]
pub(crate) async fn get_group(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Json<GroupView>> {
    let (tenant, group) = path(params)?;
    device(&state, &tenant, request).await?;
    Ok(Json(service::group(state.store(), &tenant, &group).await?))
}

/// An admin adds a member (a transform key group → user). Event `e2e.group.member_add`.
#[utoipa::path(put, path = "/api/v1/e2e/tenants/{tenant}/groups/{group}/members/{user}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("group" = String, Path, description = "Group id"),
           ("user" = String, Path, description = "The new member"), SignedRequestHeaders),
    request_body = E2eAddMember, security(("e2e_device" = [])),
    responses((status = 204, description = "Added"), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 403, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody), (status = 409, body = E2eErrorBody)))]
pub(crate) async fn add_member(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Response> {
    let (tenant, group, user) = path(params)?;
    let (caller, body) = device(&state, &tenant, request).await?;
    let body: AddMember = json(&body)?;
    service::add_member(state.store(), &tenant, &caller, &group, &user, body).await?;
    Ok(no_content())
}

/// An admin removes a member, or a member leaves. Event `e2e.group.member_remove`.
#[utoipa::path(delete, path = "/api/v1/e2e/tenants/{tenant}/groups/{group}/members/{user}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("group" = String, Path, description = "Group id"),
           ("user" = String, Path, description = "The member"), SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 204, description = "Removed"), (status = 401, body = E2eErrorBody),
              (status = 403, body = E2eErrorBody), (status = 404, body = E2eErrorBody)))]
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Response> {
    let (tenant, group, user) = path(params)?;
    let (caller, _) = device(&state, &tenant, request).await?;
    service::remove_member(state.store(), &tenant, &caller, &group, &user).await?;
    Ok(no_content())
}

/// An admin makes another user an admin (the group key sealed to it). Event
/// `e2e.group.admin_add`.
#[utoipa::path(put, path = "/api/v1/e2e/tenants/{tenant}/groups/{group}/admins/{user}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("group" = String, Path, description = "Group id"),
           ("user" = String, Path, description = "The new admin"), SignedRequestHeaders),
    request_body = E2eAddAdmin, security(("e2e_device" = [])),
    responses((status = 204, description = "Added"), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 403, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody), (status = 409, body = E2eErrorBody)))]
pub(crate) async fn add_admin(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Response> {
    let (tenant, group, user) = path(params)?;
    let (caller, body) = device(&state, &tenant, request).await?;
    let body: AddAdmin = json(&body)?;
    service::add_admin(state.store(), &tenant, &caller, &group, &user, body).await?;
    Ok(no_content())
}

/// An admin removes an admin (itself included), never the last one. Event
/// `e2e.group.admin_remove`.
#[utoipa::path(delete, path = "/api/v1/e2e/tenants/{tenant}/groups/{group}/admins/{user}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("group" = String, Path, description = "Group id"),
           ("user" = String, Path, description = "The admin"), SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 204, description = "Removed"), (status = 401, body = E2eErrorBody),
              (status = 403, body = E2eErrorBody), (status = 404, body = E2eErrorBody),
              (status = 409, body = E2eErrorBody)))]
pub(crate) async fn remove_admin(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Response> {
    let (tenant, group, user) = path(params)?;
    let (caller, _) = device(&state, &tenant, request).await?;
    service::remove_admin(state.store(), &tenant, &caller, &group, &user).await?;
    Ok(no_content())
}

/// The group's private key for an admin's device: sealed to the admin, its value transformed
/// admin → calling device. Event `e2e.group.key_access`.
#[utoipa::path(get, path = "/api/v1/e2e/tenants/{tenant}/groups/{group}/key", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("group" = String, Path, description = "Group id"),
           SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 200, body = E2eGroupKey), (status = 401, body = E2eErrorBody),
              (status = 403, body = E2eErrorBody), (status = 404, body = E2eErrorBody)))]
pub(crate) async fn get_group_key(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Json<GroupKey>> {
    let (tenant, group) = path(params)?;
    let (caller, _) = device(&state, &tenant, request).await?;
    Ok(Json(service::group_key(state.store(), &tenant, &caller, &group).await?))
}

// ---- devices: documents -----------------------------------------------------------------------

/// Stores a document written and signed by the calling device (at most 64 MiB), with its
/// first grants (signed by the same device). Event `e2e.document.create`.
#[utoipa::path(post, path = "/api/v1/e2e/tenants/{tenant}/documents", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), SignedRequestHeaders),
    request_body = E2eCreateDocument, security(("e2e_device" = [])),
    responses((status = 201, body = E2eDocumentCreated), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 404, body = E2eErrorBody),
              (status = 409, body = E2eErrorBody), (status = 413, body = E2eErrorBody)))]
pub(crate) async fn create_document(
    State(state): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> E2eResult<(StatusCode, Json<E2eDocumentCreated>)> {
    let tenant = path(tenant)?;
    let (caller, body) = auth::device(&state, &tenant, request, MAX_DOCUMENT_REQUEST_BYTES).await?;
    let body: CreateDocument = json(&body)?;
    let document = service::create_document(state.store(), &tenant, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(E2eDocumentCreated { document })))
}

/// Grants a document to one more group or user (replacing that recipient's grant). Only a
/// device whose user has access may store it. Event `e2e.document.grant`.
#[utoipa::path(post, path = "/api/v1/e2e/tenants/{tenant}/documents/{document}/grants", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("document" = String, Path, description = "Document id"),
           SignedRequestHeaders),
    request_body = E2eAddGrant, security(("e2e_device" = [])),
    responses((status = 204, description = "Granted"), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 403, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody)))]
pub(crate) async fn add_grant(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Response> {
    let (tenant, document) = path(params)?;
    let (caller, body) = device(&state, &tenant, request).await?;
    let body: AddGrant = json(&body)?;
    service::add_grant(state.store(), &tenant, &caller, &document, body).await?;
    Ok(no_content())
}

/// Deletes a grant (`kind` is `group` or `user`): allowed to the document's author's user
/// and, for a group's grant, the group's admins. Event `e2e.document.revoke`.
#[utoipa::path(delete, path = "/api/v1/e2e/tenants/{tenant}/documents/{document}/grants/{kind}/{id}", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("document" = String, Path, description = "Document id"),
           ("kind" = String, Path, description = "`group` or `user`"), ("id" = String, Path, description = "The group's or user's id"),
           SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 204, description = "Revoked"), (status = 400, body = E2eErrorBody),
              (status = 401, body = E2eErrorBody), (status = 403, body = E2eErrorBody),
              (status = 404, body = E2eErrorBody)))]
pub(crate) async fn revoke_grant(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Response> {
    let (tenant, document, kind, id) = path(params)?;
    let (caller, _) = device(&state, &tenant, request).await?;
    let recipient = match kind.as_str() {
        "group" => Recipient::Group(id),
        "user" => Recipient::User(id),
        other => {
            return Err(E2eError::BadRequest(format!(
                "path: the recipient kind is `group` or `user`, not {other:?}"
            )));
        }
    };
    service::revoke_grant(state.store(), &tenant, &caller, &document, &recipient).await?;
    Ok(no_content())
}

/// A decrypt: the document and its key transformed to the calling device, through its user's
/// own grant or a group it is a member of. Event `e2e.document.decrypt`, or
/// `e2e.document.decrypt_denied` when refused.
#[utoipa::path(post, path = "/api/v1/e2e/tenants/{tenant}/documents/{document}/decrypt", tag = "e2e",
    params(("tenant" = String, Path, description = "Tenant id"), ("document" = String, Path, description = "Document id"),
           SignedRequestHeaders),
    security(("e2e_device" = [])),
    responses((status = 200, body = E2eDecryptResponse), (status = 401, body = E2eErrorBody),
              (status = 403, body = E2eErrorBody), (status = 404, body = E2eErrorBody)))]
pub(crate) async fn decrypt(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> E2eResult<Json<DecryptResponse>> {
    let (tenant, document) = path(params)?;
    let (caller, _) = device(&state, &tenant, request).await?;
    Ok(Json(service::decrypt(state.store(), &tenant, &caller, &document).await?))
}
