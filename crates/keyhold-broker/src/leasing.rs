//! A tenant's key leasing settings (docs/leasing.md): whether its proxies lease keys, how often
//! they renew (the longest a key disabled in the KMS keeps working) and how long leases serve
//! through a KMS outage. Set by the vendor or the tenant's admins, sent in the snapshot.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row as _;
use utoipa::ToSchema;

use crate::error::StoreError;
use crate::store::Store;

/// Shortest renewal interval accepted, in ms (as the proxy's own configuration).
pub const MIN_RENEW_INTERVAL_MS: u64 = 100;
/// Longest hold accepted, in ms (7 days).
pub const MAX_HOLD_MS: u64 = 7 * 24 * 3600 * 1000;

/// Leasing settings; an absent field is the proxies' default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLeasing {
    /// Lease keys (default: the proxies' `[leasing] enabled`, on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How often a new lease key is obtained from the KMS, in ms (default 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_interval_ms: Option<u64>,
    /// How long leases serve while the KMS does not answer, in ms (default 1 hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold_ms: Option<u64>,
}

impl TenantLeasing {
    /// Checks the values (those given; the proxies' defaults are valid).
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |field: &str, message: String| {
            Err(StoreError::InvalidField { field: field.into(), message })
        };
        if let Some(renew) = self.renew_interval_ms
            && renew < MIN_RENEW_INTERVAL_MS
        {
            return invalid("renew_interval_ms", format!("at least {MIN_RENEW_INTERVAL_MS} ms"));
        }
        if let Some(hold) = self.max_hold_ms {
            if hold > MAX_HOLD_MS {
                return invalid("max_hold_ms", format!("at most {MAX_HOLD_MS} ms (7 days)"));
            }
            if hold < self.renew_interval_ms.unwrap_or(MIN_RENEW_INTERVAL_MS) {
                return invalid("max_hold_ms", "at least the renewal interval".into());
            }
        }
        Ok(())
    }
}

fn to_db(value: Option<u64>) -> Result<Option<i64>, StoreError> {
    value
        .map(|v| {
            i64::try_from(v).map_err(|_| StoreError::InvalidField {
                field: "leasing".into(),
                message: "too large".into(),
            })
        })
        .transpose()
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<TenantLeasing, StoreError> {
    let get = |name: &str| -> Result<Option<u64>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(name)?.and_then(|v| u64::try_from(v).ok()))
    };
    Ok(TenantLeasing {
        enabled: row.try_get::<Option<i64>, _>("enabled")?.map(|v| v != 0),
        renew_interval_ms: get("renew_interval_ms")?,
        max_hold_ms: get("max_hold_ms")?,
    })
}

impl Store {
    /// A tenant's leasing settings.
    pub async fn tenant_leasing(&self, tenant: &str) -> Result<TenantLeasing, StoreError> {
        if self.tenant(tenant).await?.is_none() {
            return Err(StoreError::TenantNotFound(tenant.to_owned()));
        }
        let row = sqlx::query(
            "SELECT enabled, renew_interval_ms, max_hold_ms FROM tenant_leasing WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose().map(Option::unwrap_or_default)
    }

    /// Replaces a tenant's leasing settings (validated first: nothing is stored if refused).
    pub async fn set_tenant_leasing(
        &self,
        actor: &str,
        tenant: &str,
        leasing: TenantLeasing,
    ) -> Result<TenantLeasing, StoreError> {
        leasing.validate()?;
        let (enabled, renew, hold) = (
            leasing.enabled.map(i64::from),
            to_db(leasing.renew_interval_ms)?,
            to_db(leasing.max_hold_ms)?,
        );
        if self.tenant(tenant).await?.is_none() {
            return Err(StoreError::TenantNotFound(tenant.to_owned()));
        }
        let (mut tx, change) = self.begin_change().await?;
        sqlx::query("DELETE FROM tenant_leasing WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tenant_leasing (tenant_id, enabled, renew_interval_ms, max_hold_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant)
        .bind(enabled)
        .bind(renew)
        .bind(hold)
        .execute(&mut *tx)
        .await?;
        self.commit_change(tx, change, tenant, actor, "tenant.leasing", json!(leasing)).await?;
        Ok(leasing)
    }

    /// Every tenant's leasing settings, inside a snapshot's transaction.
    pub(crate) async fn all_leasing(
        conn: &mut sqlx::AnyConnection,
    ) -> Result<HashMap<String, TenantLeasing>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, enabled, renew_interval_ms, max_hold_ms FROM tenant_leasing",
        )
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<String, _>("tenant_id")?, from_row(row)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn validation() {
        assert!(TenantLeasing::default().validate().is_ok());
        let ok = TenantLeasing {
            enabled: Some(true),
            renew_interval_ms: Some(60_000),
            max_hold_ms: Some(600_000),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            TenantLeasing { renew_interval_ms: Some(50), ..Default::default() },
            TenantLeasing {
                renew_interval_ms: Some(60_000),
                max_hold_ms: Some(1_000),
                ..Default::default()
            },
            TenantLeasing { max_hold_ms: Some(MAX_HOLD_MS + 1), ..Default::default() },
        ] {
            assert!(matches!(bad.validate(), Err(StoreError::InvalidField { .. })), "{bad:?}");
        }
    }
}
