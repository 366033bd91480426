//! Rotation tracking: the proxies report how many EDEKs naming each KMS configuration (and key
//! version) they saw; the broker sums the reports and shows, per tenant, which configurations
//! are still in use — so a vendor key can be retired after a hand-over once nothing names it.
//!
//! Reports are deltas since a proxy's previous report (`POST /api/proxy/v1/kms-usage`, proxy
//! token); a report that failed is sent again with the next, so counts are at least what was
//! seen (a report whose answer was lost may be counted twice: the count is for deciding
//! "still in use", not for billing). Usage is not configuration: it does not change the
//! snapshot version or the history.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::error::{ApiError, StoreError};
use crate::session::Caller;
use crate::store::{KmsConfigStatus, ManagedBy, Store};

/// Most rows in one report.
pub const MAX_REPORT_ITEMS: usize = 10_000;

/// One row of a proxy's report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReportItem {
    /// The tenant.
    pub tenant: String,
    /// The KMS configuration the EDEKs name.
    pub config_id: i64,
    /// The master key version they name, where the KMS records one.
    #[serde(default)]
    pub key_version: Option<String>,
    /// EDEKs seen since the proxy's previous report.
    pub edeks_seen: u64,
    /// When the last was seen, Unix seconds.
    pub last_seen: u64,
}

/// `POST /api/proxy/v1/kms-usage`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// The rows.
    pub items: Vec<UsageReportItem>,
}

/// EDEKs seen naming one key version of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyVersionUsage {
    /// The key version ("" where the KMS names none).
    pub key_version: String,
    /// EDEKs seen, over the fleet.
    pub edeks_seen: i64,
    /// Last seen, RFC 3339 UTC.
    pub last_seen: String,
}

/// A KMS configuration and the EDEKs seen naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigUsage {
    /// The configuration id.
    pub id: i64,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its status now.
    pub status: KmsConfigStatus,
    /// Who manages it.
    pub managed_by: ManagedBy,
    /// EDEKs seen naming it, over every version and proxy.
    pub edeks_seen: i64,
    /// When the last was seen, RFC 3339 UTC; `null` if none ever was.
    pub last_seen: Option<String>,
    /// By key version.
    pub key_versions: Vec<KeyVersionUsage>,
}

/// `GET /api/v1/tenants/{id}/kms-usage`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantKmsUsage {
    /// The tenant.
    pub tenant: String,
    /// Every configuration of the tenant, by id.
    pub configs: Vec<ConfigUsage>,
}

fn rfc3339(unix: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Whole seconds, always the same width, so that text order is time order.
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.format(&format).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

impl Store {
    /// Adds a proxy's report to the sums. Rows of tenants the broker does not have are
    /// skipped (a tenant from an older snapshot); returns how many rows were taken.
    pub async fn record_kms_usage(&self, items: &[UsageReportItem]) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut taken = 0;
        for item in items {
            let exists = sqlx::query("SELECT 1 AS one FROM tenants WHERE id = $1")
                .bind(&item.tenant)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists || item.edeks_seen == 0 {
                continue;
            }
            sqlx::query(
                "INSERT INTO kms_usage (tenant_id, config_id, key_version, edeks_seen, last_seen) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (tenant_id, config_id, key_version) DO UPDATE SET \
                 edeks_seen = kms_usage.edeks_seen + excluded.edeks_seen, \
                 last_seen = CASE WHEN excluded.last_seen > kms_usage.last_seen \
                 THEN excluded.last_seen ELSE kms_usage.last_seen END",
            )
            .bind(&item.tenant)
            .bind(item.config_id)
            .bind(item.key_version.clone().unwrap_or_default())
            .bind(i64::try_from(item.edeks_seen).unwrap_or(i64::MAX))
            .bind(rfc3339(item.last_seen))
            .execute(&mut *tx)
            .await?;
            taken += 1;
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// A tenant's configurations with the EDEKs seen naming each.
    pub async fn kms_usage(&self, tenant: &str) -> Result<TenantKmsUsage, StoreError> {
        let configs = self.kms_configs(tenant).await?;
        let rows = sqlx::query(
            "SELECT config_id, key_version, edeks_seen, last_seen FROM kms_usage \
             WHERE tenant_id = $1 ORDER BY config_id, key_version",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        let mut usage: Vec<(i64, KeyVersionUsage)> = Vec::with_capacity(rows.len());
        for row in &rows {
            usage.push((
                row.try_get("config_id")?,
                KeyVersionUsage {
                    key_version: row.try_get("key_version")?,
                    edeks_seen: row.try_get("edeks_seen")?,
                    last_seen: row.try_get("last_seen")?,
                },
            ));
        }
        let configs = configs
            .into_iter()
            .map(|c| {
                let key_versions: Vec<KeyVersionUsage> =
                    usage.iter().filter(|(id, _)| *id == c.id).map(|(_, v)| v.clone()).collect();
                ConfigUsage {
                    id: c.id,
                    kind: c.kind,
                    status: c.status,
                    managed_by: c.managed_by,
                    edeks_seen: key_versions.iter().map(|v| v.edeks_seen).sum(),
                    last_seen: key_versions.iter().map(|v| v.last_seen.clone()).max(),
                    key_versions,
                }
            })
            .collect();
        Ok(TenantKmsUsage { tenant: tenant.to_owned(), configs })
    }
}

/// A proxy reports the EDEKs it saw since its previous report.
#[utoipa::path(post, path = "/api/proxy/v1/kms-usage", tag = "proxy",
    security(("proxy_token" = [])), request_body = UsageReport,
    responses((status = 204, description = "Added to the sums"),
              (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn report(
    State(state): State<AppState>,
    body: Result<Json<UsageReport>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(report) = body?;
    if report.items.len() > MAX_REPORT_ITEMS {
        return Err(ApiError::BadRequest(format!(
            "a report holds at most {MAX_REPORT_ITEMS} items"
        )));
    }
    state.store().record_kms_usage(&report.items).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Which of the tenant's KMS configurations (and key versions) the EDEKs seen by the proxies
/// still name: a configuration that is not primary and whose `last_seen` is old (or null) can
/// be disabled without making data unreadable — after a rekey, for example.
#[utoipa::path(get, path = "/api/v1/tenants/{id}/kms-usage", tag = "kms",
    params(("id" = String, Path, description = "Tenant id")),
    security(("vendor_key" = []), ("session_cookie" = [])),
    responses((status = 200, body = TenantKmsUsage), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn tenant_usage(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TenantKmsUsage>, ApiError> {
    let Path(id) = id?;
    caller.require_tenant(&id)?;
    Ok(Json(state.store().kms_usage(&id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sort_as_text() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
        assert!(rfc3339(999) < rfc3339(1_000_000_000));
    }
}
