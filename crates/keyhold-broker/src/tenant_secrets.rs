//! Tenant secrets (deterministic, searchable field encryption; docs/broker.md §7): per tenant
//! and secret path, 32 random bytes the tenant's KMS made and wrapped. The proxies make them,
//! unwrap them through the tenant's KMS and derive field keys from them; the broker keeps only
//! the KMS's ciphertext and never sees a secret in the clear.
//!
//! ```text
//!  proxy ──list {tenant_id, secret_paths}──▶ every secret of the paths (rotated ones too)
//!  proxy ──create {…, wrapped}──────────────▶ 201 the new one, or 200 the current one
//!                                             (created: false; the proxy drops its own)
//!  vendor, tenant admin ──rotate {secret_path?}──▶ rotated_at set; the proxies make new ones
//! ```
//!
//! At most one secret per (tenant, path, KMS configuration) is current (not rotated): a partial
//! unique index enforces it, so concurrent proxies converge on one. Creating and rotating are
//! changes like any other (history record, admin audit event, new snapshot version, which wakes
//! the proxies' long polls); the history never holds the wrapped bytes.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::error::{ApiError, ErrorBody, StoreError};
use crate::session::Caller;
use crate::store::{Store, now, require_tenant};
use crate::validate;

/// Most secret paths in one list request.
pub const MAX_LIST_PATHS: usize = 1000;
/// The history's `actor` for secrets the proxies create.
pub const PROXY_ACTOR: &str = "proxy";
/// How often a create retries when the current secret it collided with was rotated before it
/// could be read back.
const CREATE_ATTEMPTS: usize = 3;

/// A tenant secret as the proxies get it: with the wrapped bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantSecret {
    /// Unique across the broker, from 1 and below 2^31 (recorded in every field it encrypts).
    pub id: i64,
    /// The tenant.
    pub tenant_id: String,
    /// The application's name for the group of fields (e.g. a table).
    pub secret_path: String,
    /// The tenant's KMS configuration that wrapped it.
    pub kms_config_id: i64,
    /// The KMS's ciphertext, standard base64.
    pub wrapped: String,
    /// Whether it was rotated (still decrypts and is searched; new fields use a newer one).
    pub rotated: bool,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

/// A tenant secret as the Vendor Bridge API shows it: never the wrapped bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantSecretInfo {
    /// Unique across the broker (recorded in every field it encrypts).
    pub id: i64,
    /// The application's name for the group of fields.
    pub secret_path: String,
    /// The tenant's KMS configuration that wrapped it.
    pub kms_config_id: i64,
    /// Whether it was rotated.
    pub rotated: bool,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Rotation time, RFC 3339 UTC; `null` while current.
    pub rotated_at: Option<String>,
}

/// `POST /api/proxy/v1/tenant-secrets/list`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTenantSecrets {
    /// The tenant.
    pub tenant_id: String,
    /// The secret paths (at most 1000, each 1 to 1024 bytes).
    pub secret_paths: Vec<String>,
}

/// The secrets of a list request (proxy) or of a tenant (vendor).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantSecretList {
    /// Every secret of the paths, rotated or not, by id.
    pub secrets: Vec<TenantSecret>,
}

/// `GET /api/v1/tenants/{id}/tenant-secrets`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantSecretInfoList {
    /// Every secret of the tenant, rotated or not, by id.
    pub secrets: Vec<TenantSecretInfo>,
}

/// `POST /api/proxy/v1/tenant-secrets`: a secret the proxy made with the tenant's KMS.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenantSecret {
    /// The tenant.
    pub tenant_id: String,
    /// The secret path (1 to 1024 bytes).
    pub secret_path: String,
    /// The tenant's KMS configuration that wrapped it (not disabled).
    pub kms_config_id: i64,
    /// The KMS's ciphertext, standard base64 of 1 to 16384 bytes.
    pub wrapped: String,
}

/// The answer to a create: the current secret of (tenant, path, configuration).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantSecretCreated {
    /// The secret stored now (`created: true`), or the one that was current already.
    pub secret: TenantSecret,
    /// `false` when another was current already: use it and drop the one sent.
    pub created: bool,
}

/// `POST /api/v1/tenants/{id}/tenant-secrets/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateTenantSecrets {
    /// Only this path's secrets; absent or `null`: every path's.
    #[serde(default)]
    pub secret_path: Option<String>,
}

/// How many secrets a rotation rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantSecretsRotated {
    /// Secrets that were current and now are rotated.
    pub rotated: i64,
}

const COLUMNS: &str = "id, tenant_id, secret_path, kms_config_id, wrapped, created_at, rotated_at";

fn secret_row(row: &AnyRow) -> Result<TenantSecret, StoreError> {
    let rotated_at: Option<String> = row.try_get("rotated_at")?;
    Ok(TenantSecret {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        secret_path: row.try_get("secret_path")?,
        kms_config_id: row.try_get("kms_config_id")?,
        wrapped: row.try_get("wrapped")?,
        rotated: rotated_at.is_some(),
        created_at: row.try_get("created_at")?,
    })
}

fn info_row(row: &AnyRow) -> Result<TenantSecretInfo, StoreError> {
    let rotated_at: Option<String> = row.try_get("rotated_at")?;
    Ok(TenantSecretInfo {
        id: row.try_get("id")?,
        secret_path: row.try_get("secret_path")?,
        kms_config_id: row.try_get("kms_config_id")?,
        rotated: rotated_at.is_some(),
        created_at: row.try_get("created_at")?,
        rotated_at,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Every secret (rotated or not) of `tenant` for `paths`, by id. An unknown tenant has none.
    pub async fn tenant_secrets_of_paths(
        &self,
        tenant: &str,
        paths: &[String],
    ) -> Result<Vec<TenantSecret>, StoreError> {
        if paths.len() > MAX_LIST_PATHS {
            return Err(StoreError::InvalidField {
                field: "secret_paths".into(),
                message: format!("at most {MAX_LIST_PATHS} paths"),
            });
        }
        for path in paths {
            validate::secret_path(path)?;
        }
        let paths: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
        // A tenant id the broker refuses cannot name a tenant (and could not be bound on
        // PostgreSQL if it held NUL).
        if paths.is_empty() || validate::tenant_id(tenant).is_err() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (0..paths.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM tenant_secrets WHERE tenant_id = $1 AND secret_path IN ({}) \
             ORDER BY id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(tenant);
        for path in paths {
            query = query.bind(path);
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(secret_row).collect()
    }

    /// Stores a secret a proxy made, unless one is current for its tenant, path and KMS
    /// configuration: then that one, and `false`. Race-safe: of concurrent creates exactly one
    /// stores its secret, the others get it back. The configuration must be the tenant's and
    /// not disabled ([`StoreError::Conflict`]); nothing is stored for a refused request.
    pub async fn create_tenant_secret(
        &self,
        actor: &str,
        new: &NewTenantSecret,
    ) -> Result<(TenantSecret, bool), StoreError> {
        validate::secret_path(&new.secret_path)?;
        let wrapped = validate::wrapped_secret(&new.wrapped)?;
        if validate::tenant_id(&new.tenant_id).is_err() {
            return Err(StoreError::TenantNotFound(new.tenant_id.clone()));
        }
        for _ in 0..CREATE_ATTEMPTS {
            match self.insert_tenant_secret(actor, new, &wrapped).await? {
                Some(secret) => return Ok((secret, true)),
                None => {
                    // Another is current: read it back (outside the failed transaction).
                    if let Some(current) = self.current_tenant_secret(new).await? {
                        return Ok((current, false));
                    }
                    // It was rotated in between: try again.
                }
            }
        }
        Err(StoreError::Conflict(
            "the tenant's secrets for this path are being rotated; try again".into(),
        ))
    }

    /// One insert in its own change transaction; `None` if another secret is current.
    async fn insert_tenant_secret(
        &self,
        actor: &str,
        new: &NewTenantSecret,
        wrapped: &str,
    ) -> Result<Option<TenantSecret>, StoreError> {
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, &new.tenant_id).await?;
        let config = sqlx::query("SELECT tenant_id, status FROM kms_configs WHERE id = $1")
            .bind(new.kms_config_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(config) = config.filter(|c| {
            c.try_get::<String, _>("tenant_id").is_ok_and(|owner| owner == new.tenant_id)
        }) else {
            return Err(StoreError::Conflict(format!(
                "KMS configuration {} is not one of tenant {:?}'s configurations",
                new.kms_config_id, new.tenant_id
            )));
        };
        if config.try_get::<String, _>("status")? == "disabled" {
            return Err(StoreError::Conflict(format!(
                "KMS configuration {} is disabled: a tenant secret it wrapped could not be unwrapped",
                new.kms_config_id
            )));
        }
        let id: i64 = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'tenant_secret' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("value")?;
        if i32::try_from(id).is_err() {
            // Fields record the id as a 32-bit number (below 2^31 on the broker's side).
            return Err(StoreError::Conflict("no tenant secret id is left".into()));
        }
        let secret = TenantSecret {
            id,
            tenant_id: new.tenant_id.clone(),
            secret_path: new.secret_path.clone(),
            kms_config_id: new.kms_config_id,
            wrapped: wrapped.to_owned(),
            rotated: false,
            created_at: now(),
        };
        let inserted = sqlx::query(
            "INSERT INTO tenant_secrets \
             (id, tenant_id, secret_path, kms_config_id, wrapped, created_at, rotated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(secret.id)
        .bind(&secret.tenant_id)
        .bind(&secret.secret_path)
        .bind(secret.kms_config_id)
        .bind(&secret.wrapped)
        .bind(&secret.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // The transaction (and the ids it took) is rolled back when dropped.
            Err(e) if is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        // Never the wrapped bytes.
        let detail = json!({
            "id": secret.id, "secret_path": secret.secret_path, "kms_config_id": secret.kms_config_id,
        });
        self.commit_change(tx, change, &new.tenant_id, actor, "tenant_secret.create", detail)
            .await?;
        Ok(Some(secret))
    }

    async fn current_tenant_secret(
        &self,
        key: &NewTenantSecret,
    ) -> Result<Option<TenantSecret>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_secrets WHERE tenant_id = $1 AND secret_path = $2 \
             AND kms_config_id = $3 AND rotated_at IS NULL"
        ))
        .bind(&key.tenant_id)
        .bind(&key.secret_path)
        .bind(key.kms_config_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(secret_row).transpose()
    }

    /// Every secret of a tenant, by id, without the wrapped bytes.
    pub async fn tenant_secrets(&self, tenant: &str) -> Result<Vec<TenantSecretInfo>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        require_tenant(&mut conn, tenant).await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_secrets WHERE tenant_id = $1 ORDER BY id"
        ))
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(info_row).collect()
    }

    /// Rotates the tenant's current secrets of `path` (every path's with `None`): they stay,
    /// and the proxies make new ones. Returns how many were rotated; rotating none is a no-op
    /// (no history record, same snapshot version).
    pub async fn rotate_tenant_secrets(
        &self,
        actor: &str,
        tenant: &str,
        path: Option<&str>,
    ) -> Result<i64, StoreError> {
        if let Some(path) = path {
            validate::secret_path(path)?;
        }
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, tenant).await?;
        let rotated_at = now();
        let result = match path {
            Some(path) => {
                sqlx::query(
                    "UPDATE tenant_secrets SET rotated_at = $1 \
                     WHERE tenant_id = $2 AND secret_path = $3 AND rotated_at IS NULL",
                )
                .bind(&rotated_at)
                .bind(tenant)
                .bind(path)
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE tenant_secrets SET rotated_at = $1 \
                     WHERE tenant_id = $2 AND rotated_at IS NULL",
                )
                .bind(&rotated_at)
                .bind(tenant)
                .execute(&mut *tx)
                .await?
            }
        };
        let rotated = i64::try_from(result.rows_affected()).unwrap_or(i64::MAX);
        if rotated == 0 {
            return Ok(0);
        }
        let detail = json!({"secret_path": path, "all_paths": path.is_none(), "rotated": rotated});
        self.commit_change(tx, change, tenant, actor, "tenant_secret.rotate", detail).await?;
        Ok(rotated)
    }
}

/// The body of a rotate request: a JSON object, or nothing (every path).
fn rotate_request(body: &[u8]) -> Result<RotateTenantSecrets, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RotateTenantSecrets::default());
    }
    let bad = |e: serde_json::Error| ApiError::BadRequest(format!("body: {e}"));
    match serde_json::from_slice(body).map_err(bad)? {
        object @ serde_json::Value::Object(_) => serde_json::from_value(object).map_err(bad),
        _ => Err(ApiError::BadRequest("body: must be a JSON object".into())),
    }
}

// ---- proxy routes ------------------------------------------------------------------------------

/// Every tenant secret (rotated or not) of the paths, with the wrapped bytes, by id. An unknown
/// tenant has none.
#[utoipa::path(post, path = "/api/proxy/v1/tenant-secrets/list", tag = "proxy",
    security(("proxy_token" = [])), request_body = ListTenantSecrets,
    responses((status = 200, body = TenantSecretList),
              (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub(crate) async fn list_for_proxy(
    State(state): State<AppState>,
    body: Result<Json<ListTenantSecrets>, JsonRejection>,
) -> Result<Json<TenantSecretList>, ApiError> {
    let Json(request) = body?;
    let secrets =
        state.store().tenant_secrets_of_paths(&request.tenant_id, &request.secret_paths).await?;
    Ok(Json(TenantSecretList { secrets }))
}

/// Stores a tenant secret the proxy made with the tenant's KMS: `201` with it, or `200` with
/// the secret already current for the tenant, path and KMS configuration (`created: false`:
/// use that one and drop the one sent). Recorded in the tenant's history (never the wrapped
/// bytes).
#[utoipa::path(post, path = "/api/proxy/v1/tenant-secrets", tag = "proxy",
    security(("proxy_token" = [])), request_body = NewTenantSecret,
    responses((status = 201, body = TenantSecretCreated, description = "Stored"),
              (status = 200, body = TenantSecretCreated, description = "One was current already"),
              (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "No such tenant"),
              (status = 409, body = ErrorBody, description = "The KMS configuration is not the tenant's, or is disabled")))]
pub(crate) async fn create_for_proxy(
    State(state): State<AppState>,
    body: Result<Json<NewTenantSecret>, JsonRejection>,
) -> Result<(StatusCode, Json<TenantSecretCreated>), ApiError> {
    let Json(request) = body?;
    let (secret, created) = state.store().create_tenant_secret(PROXY_ACTOR, &request).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(TenantSecretCreated { secret, created })))
}

// ---- Vendor Bridge API routes ------------------------------------------------------------------

/// The tenant's secrets for deterministic encryption, rotated or not, by id; never the wrapped
/// bytes.
#[utoipa::path(get, path = "/api/v1/tenants/{id}/tenant-secrets", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = TenantSecretInfoList), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_for_tenant(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TenantSecretInfoList>, ApiError> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    Ok(Json(TenantSecretInfoList { secrets: state.store().tenant_secrets(&id).await? }))
}

/// Rotates the tenant's current secrets of one path (`{"secret_path": …}`) or of every path
/// (`{}` or no body). Rotated secrets stay: fields written under them still decrypt and are
/// still found by searches; the proxies make a new secret under the tenant's primary KMS
/// configuration on the next encryption. Rotating none is a no-op.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/tenant-secrets/rotate", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")), request_body = RotateTenantSecrets,
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = TenantSecretsRotated), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantSecretsRotated>, ApiError> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::BadRequest(format!("body: {}", rejection.body_text()))
        }
    })?;
    let request = rotate_request(&body)?;
    let rotated = state
        .store()
        .rotate_tenant_secrets(&caller.actor(), &id, request.secret_path.as_deref())
        .await?;
    Ok(Json(TenantSecretsRotated { rotated }))
}
