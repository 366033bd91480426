//! Admin events: the change history, handed to the proxies so that every change becomes an
//! audit event in the tenant's own trail (and SIEM), like every key access. The E2E service's
//! audit events (`e2e_events`, [`crate::e2e`]) reach the trails the same way, through a feed
//! of their own ([`E2E_EVENTS`]: its own lease and cursor).
//!
//! The broker cannot deliver to a tenant's SIEM itself: the SIEM credentials are sealed to the
//! proxies. So one proxy at a time holds the `admin_events` lease (renewed while it works, taken
//! over by another when it lapses), takes the changes after the shared cursor, spools them, and
//! acknowledges them, which moves the cursor. A proxy that dies between spooling and
//! acknowledging makes the next holder spool those changes again: at least once, as every
//! audit delivery. The events carry the change id, so duplicates are recognisable.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::error::{ApiError, StoreError};
use crate::store::{Change, Store};

/// How long a claim holds the lease.
pub const LEASE_MS: i64 = 30_000;
/// Most changes handed out per claim.
pub const MAX_BATCH: i64 = 500;

/// A proxy asks for the next changes.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClaimRequest {
    /// The proxy's name (its audit `instance`).
    pub proxy: String,
}

/// The changes after the cursor, for the lease holder.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdminEventBatch {
    /// The id of the last change already spooled by some proxy.
    pub cursor: i64,
    /// The changes after it, in order (at most 500).
    pub changes: Vec<Change>,
}

/// The E2E service's audit events after their cursor, for the holder of their lease.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct E2eEventBatch {
    /// The id of the last E2E event already spooled by some proxy.
    pub cursor: i64,
    /// The events after it, in order (at most 500): `action` is the event's `e2e.*` name,
    /// `actor` `<user>/<device>` or `vendor`, `detail` the event's JSON (docs/e2e-api.md).
    pub events: Vec<Change>,
}

/// A proxy has spooled the records up to `up_to`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AckRequest {
    /// The proxy's name.
    pub proxy: String,
    /// The id of the last record it spooled.
    pub up_to: i64,
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    i64::try_from(now).unwrap_or(i64::MAX)
}

fn check_proxy_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::Store(StoreError::InvalidField {
            field: "proxy".into(),
            message: "1 to 255 printable characters".into(),
        }));
    }
    Ok(())
}

/// One stream of records the proxies deliver into the tenants' audit trails: the table it is
/// read from, the lease that lets one proxy at a time deliver it, and the shared cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFeed {
    /// The table (`id, tenant_id, at, actor, action, detail` columns).
    table: &'static str,
    /// The `proxy_leases` row.
    lease: &'static str,
    /// The `counters` row holding the id of the last record delivered.
    cursor: &'static str,
    /// What the records are, for messages.
    what: &'static str,
}

/// The change history, delivered as `admin` audit events.
pub const ADMIN_EVENTS: EventFeed = EventFeed {
    table: "changes",
    lease: "admin_events",
    cursor: "admin_events_delivered",
    what: "admin events",
};

/// The E2E service's audit events (`e2e_events`, docs/e2e-api.md).
pub const E2E_EVENTS: EventFeed = EventFeed {
    table: "e2e_events",
    lease: "e2e_events",
    cursor: "e2e_events_delivered",
    what: "E2E events",
};

impl Store {
    /// Takes or renews `feed`'s lease for `proxy`; if it holds it, the cursor and the records
    /// after it (at most [`MAX_BATCH`]), in id order. `None` while another proxy holds it.
    pub async fn claim_events(
        &self,
        feed: EventFeed,
        proxy: &str,
    ) -> Result<Option<(i64, Vec<Change>)>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let held = sqlx::query(
            "UPDATE proxy_leases SET holder = $1, until_ms = $2 \
             WHERE name = $3 AND (holder = $1 OR until_ms < $4) RETURNING holder",
        )
        .bind(proxy)
        .bind(now.saturating_add(LEASE_MS))
        .bind(feed.lease)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        let cursor: i64 = sqlx::query("SELECT value FROM counters WHERE name = $1")
            .bind(feed.cursor)
            .fetch_one(&mut *tx)
            .await?
            .try_get("value")?;
        // `feed.table` is one of this module's constants, never input.
        let rows = sqlx::query(&format!(
            "SELECT id, tenant_id, at, actor, action, detail FROM {} \
             WHERE id > $1 ORDER BY id LIMIT $2",
            feed.table
        ))
        .bind(cursor)
        .bind(MAX_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let records = rows
            .iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(Change {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant_id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| StoreError::Corrupt(format!("{} detail: {e}", feed.what)))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some((cursor, records)))
    }

    /// Moves `feed`'s cursor to `up_to` (never backwards) if `proxy` holds its lease; `false`
    /// if it does not.
    pub async fn ack_events(
        &self,
        feed: EventFeed,
        proxy: &str,
        up_to: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let holds = sqlx::query("SELECT holder FROM proxy_leases WHERE name = $1 AND holder = $2")
            .bind(feed.lease)
            .bind(proxy)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if holds {
            sqlx::query("UPDATE counters SET value = $1 WHERE name = $2 AND value < $1")
                .bind(up_to)
                .bind(feed.cursor)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(holds)
    }

    /// Takes or renews the lease for `proxy`; if it holds it, the changes after the cursor.
    pub async fn claim_admin_events(
        &self,
        proxy: &str,
    ) -> Result<Option<AdminEventBatch>, StoreError> {
        let claimed = self.claim_events(ADMIN_EVENTS, proxy).await?;
        Ok(claimed.map(|(cursor, changes)| AdminEventBatch { cursor, changes }))
    }

    /// Moves the cursor to `up_to` if `proxy` holds the lease; `false` if it does not.
    pub async fn ack_admin_events(&self, proxy: &str, up_to: i64) -> Result<bool, StoreError> {
        self.ack_events(ADMIN_EVENTS, proxy, up_to).await
    }

    /// Takes or renews the E2E-events lease for `proxy`; if it holds it, the E2E events after
    /// their cursor.
    pub async fn claim_e2e_events(&self, proxy: &str) -> Result<Option<E2eEventBatch>, StoreError> {
        let claimed = self.claim_events(E2E_EVENTS, proxy).await?;
        Ok(claimed.map(|(cursor, events)| E2eEventBatch { cursor, events }))
    }

    /// Moves the E2E events' cursor to `up_to` if `proxy` holds their lease.
    pub async fn ack_e2e_events(&self, proxy: &str, up_to: i64) -> Result<bool, StoreError> {
        self.ack_events(E2E_EVENTS, proxy, up_to).await
    }
}

async fn acknowledge(
    state: &AppState,
    feed: EventFeed,
    request: AckRequest,
) -> Result<Response, ApiError> {
    check_proxy_name(&request.proxy)?;
    if state.store().ack_events(feed, &request.proxy, request.up_to).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::Store(StoreError::Conflict(format!(
            "the {} lease is held by another proxy",
            feed.what
        ))))
    }
}

/// The changes not yet spooled as admin events, for the proxy holding (or taking) the lease.
#[utoipa::path(post, path = "/api/proxy/v1/admin-events/claim", tag = "proxy",
    security(("proxy_token" = [])), request_body = ClaimRequest,
    responses((status = 200, body = AdminEventBatch),
              (status = 204, description = "Another proxy holds the lease"),
              (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn claim(
    State(state): State<AppState>,
    Json(request): Json<ClaimRequest>,
) -> Result<Response, ApiError> {
    check_proxy_name(&request.proxy)?;
    match state.store().claim_admin_events(&request.proxy).await? {
        Some(batch) => Ok(Json(batch).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// The proxy has spooled the changes up to `up_to`.
#[utoipa::path(post, path = "/api/proxy/v1/admin-events/ack", tag = "proxy",
    security(("proxy_token" = [])), request_body = AckRequest,
    responses((status = 204, description = "Acknowledged"),
              (status = 409, body = crate::error::ErrorBody, description = "The lease is another proxy's"),
              (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn ack(
    State(state): State<AppState>,
    Json(request): Json<AckRequest>,
) -> Result<Response, ApiError> {
    acknowledge(&state, ADMIN_EVENTS, request).await
}

/// The E2E service's audit events not yet spooled, for the proxy holding (or taking) their
/// lease (its own, apart from the admin events').
#[utoipa::path(post, path = "/api/proxy/v1/e2e-events/claim", tag = "proxy",
    security(("proxy_token" = [])), request_body = ClaimRequest,
    responses((status = 200, body = E2eEventBatch),
              (status = 204, description = "Another proxy holds the lease"),
              (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn claim_e2e(
    State(state): State<AppState>,
    Json(request): Json<ClaimRequest>,
) -> Result<Response, ApiError> {
    check_proxy_name(&request.proxy)?;
    match state.store().claim_e2e_events(&request.proxy).await? {
        Some(batch) => Ok(Json(batch).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// The proxy has spooled the E2E events up to `up_to`.
#[utoipa::path(post, path = "/api/proxy/v1/e2e-events/ack", tag = "proxy",
    security(("proxy_token" = [])), request_body = AckRequest,
    responses((status = 204, description = "Acknowledged"),
              (status = 409, body = crate::error::ErrorBody, description = "The lease is another proxy's"),
              (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn ack_e2e(
    State(state): State<AppState>,
    Json(request): Json<AckRequest>,
) -> Result<Response, ApiError> {
    acknowledge(&state, E2E_EVENTS, request).await
}
