//! Storage: tenants, KMS and SIEM configurations and the change history, in SQLite (default) or
//! PostgreSQL through sqlx's `Any` driver, with one set of portable migrations
//! (`migrations/*.sql`).
//!
//! Every mutation is one transaction that first takes the next change id (the `counters` row,
//! which serialises writers), then changes the rows and writes the `changes` record. The
//! snapshot version is the largest change id, so it grows with every change, and a change id is
//! never visible before all smaller ones.
//!
//! Input is validated ([`crate::validate`]) before the transaction starts: a refused request
//! stores nothing, not even a change record.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::watch;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::validate;

mod admins;
pub use admins::{
    AcceptedInvitation, AdminLogin, AdminView, InvitationState, InvitationView, NewSession,
    SessionInfo, normalize_email,
};

/// Default page size of list calls.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// Largest page size of list calls.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A tenant's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Served by the proxies.
    Active,
    /// Refused by the proxies (as an unknown tenant).
    Disabled,
}

/// A KMS configuration's status (as in the proxy's TOML file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KmsConfigStatus {
    /// Wraps new keys and unwraps; at most one per tenant.
    Primary,
    /// Unwraps only.
    Active,
    /// Neither: unwrapping keys it wrapped is refused.
    Disabled,
}

/// Who manages a KMS configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    /// The vendor: a vendor-managed key, or a KMS the vendor runs for the tenant.
    Vendor,
    /// The tenant: its own KMS.
    Tenant,
}

/// A SIEM configuration's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SiemConfigStatus {
    /// Receives the tenant's audit events.
    Active,
    /// Left out of the snapshot.
    Disabled,
}

macro_rules! status_text {
    ($ty:ty { $($variant:ident => $text:literal),+ }) => {
        impl $ty {
            /// The status as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            fn parse(text: &str) -> Result<Self, StoreError> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(StoreError::Corrupt(format!("unknown status {other:?}"))),
                }
            }
        }
    };
}
status_text!(TenantStatus { Active => "active", Disabled => "disabled" });
status_text!(KmsConfigStatus { Primary => "primary", Active => "active", Disabled => "disabled" });
status_text!(SiemConfigStatus { Active => "active", Disabled => "disabled" });
status_text!(ManagedBy { Vendor => "vendor", Tenant => "tenant" });

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    /// The id proxies and applications use.
    pub id: String,
    /// Display name (the id unless given).
    pub name: String,
    /// Status.
    pub status: TenantStatus,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

/// A KMS configuration, as the API shows it (the sealed blob only by its key id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KmsConfig {
    /// Unique across the broker, never 0; recorded in EDEKs.
    pub id: i64,
    /// The tenant.
    pub tenant: String,
    /// `local`, `aws`, `vault`, `pkcs11`, `kmip`, `gcp` or `azure`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The non-secret settings.
    #[schema(value_type = Object)]
    pub settings: Value,
    /// The fleet key the secret fields are sealed to, if any.
    pub sealed_key_id: Option<String>,
    /// Status.
    pub status: KmsConfigStatus,
    /// Who manages it: `vendor` (added with the vendor API key, or a vendor-managed key) or
    /// `tenant` (added by a tenant admin).
    pub managed_by: ManagedBy,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// The sealed blob itself (only for the snapshot).
    #[serde(skip)]
    pub sealed: Option<String>,
}

/// A SIEM (audit sink) configuration, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SiemConfig {
    /// The tenant.
    pub tenant: String,
    /// Unique per tenant (letters, digits, `-`, `_`).
    pub name: String,
    /// `syslog`, `opensearch`, `splunk`, `datadog`, `webhook` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The non-secret settings.
    #[schema(value_type = Object)]
    pub settings: Value,
    /// The fleet key the credential is sealed to, if any.
    pub sealed_key_id: Option<String>,
    /// Status.
    pub status: SiemConfigStatus,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// The sealed blob itself (only for the snapshot).
    #[serde(skip)]
    pub sealed: Option<String>,
}

/// One history record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// Increasing; the snapshot version after this change.
    pub id: i64,
    /// The tenant changed.
    pub tenant: String,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Who (`vendor`, `keyhold up`, …).
    pub actor: String,
    /// What (`tenant.create`, `kms_config.primary`, …).
    pub action: String,
    /// Details; never a credential (a sealed blob only by its key id).
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// A KMS configuration to add.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewKmsConfig {
    /// `local`, `aws`, `vault`, `pkcs11`, `kmip`, `gcp` or `azure`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The non-secret settings (a JSON object; secret fields are refused).
    #[schema(value_type = Object)]
    pub settings: Value,
    /// The secret fields, sealed to a fleet key (`khs1.<key id>.<base64url>`).
    #[serde(default)]
    pub sealed: Option<String>,
    /// Default: `primary` if the tenant has no primary configuration, else `active`.
    #[serde(default)]
    pub status: Option<KmsConfigStatus>,
}

/// `POST /api/v1/tenants/{id}/vendor-keys`: a new vendor-managed key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVendorKey {
    /// A label shown beside the key (e.g. "2026 key").
    #[serde(default)]
    pub label: Option<String>,
    /// Default: `primary` if the tenant has no primary configuration, else `active`.
    #[serde(default)]
    pub status: Option<KmsConfigStatus>,
}

/// A SIEM configuration to add.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewSiemConfig {
    /// Unique per tenant (letters, digits, `-`, `_`).
    pub name: String,
    /// `syslog`, `opensearch`, `splunk`, `datadog`, `webhook` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The non-secret settings (a JSON object; `secret` is refused).
    #[schema(value_type = Object)]
    pub settings: Value,
    /// The credential (`{"secret": "…"}`), sealed to a fleet key.
    #[serde(default)]
    pub sealed: Option<String>,
}

/// An invitation of a tenant admin (the token itself is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    /// The tenant.
    pub tenant: String,
    /// The invited address.
    pub email: String,
    /// Expiry, RFC 3339 UTC.
    pub expires_at: String,
}

/// How long an invitation is valid by default.
pub const INVITATION_TTL: std::time::Duration = std::time::Duration::from_secs(72 * 3600);

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T, K> {
    /// The items, by increasing id.
    pub items: Vec<T>,
    /// The `after` of the next page, or `None` after the last one.
    pub next: Option<K>,
}

/// Everything a snapshot holds, read in one consistent transaction.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    /// The largest change id (0 on an empty broker).
    pub version: i64,
    /// Tenants by id, each with its KMS configurations (by id) and active SIEM configurations.
    pub tenants: Vec<(Tenant, Vec<KmsConfig>, Vec<SiemConfig>)>,
    /// Leasing settings of the tenants that have some.
    pub leasing: std::collections::HashMap<String, crate::leasing::TenantLeasing>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The broker's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    fleet_key_ids: Arc<Vec<String>>,
    version: Arc<watch::Sender<i64>>,
}

/// The embedded migrations.
#[derive(Debug)]
struct Migrations;

impl<'s> MigrationSource<'s> for Migrations {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(vec![
                Migration::new(
                    1,
                    Cow::Borrowed("init"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0001_init.sql")),
                    false,
                ),
                Migration::new(
                    2,
                    Cow::Borrowed("admins"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0002_admins.sql")),
                    false,
                ),
                Migration::new(
                    3,
                    Cow::Borrowed("admin_events"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0003_admin_events.sql")),
                    false,
                ),
                Migration::new(
                    4,
                    Cow::Borrowed("tenant_leasing"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0004_tenant_leasing.sql")),
                    false,
                ),
                Migration::new(
                    5,
                    Cow::Borrowed("vendor_keys"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0005_vendor_keys.sql")),
                    false,
                ),
                Migration::new(
                    6,
                    Cow::Borrowed("e2e"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0006_e2e.sql")),
                    false,
                ),
                Migration::new(
                    7,
                    Cow::Borrowed("tenant_secrets"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0007_tenant_secrets.sql")),
                    false,
                ),
                Migration::new(
                    8,
                    Cow::Borrowed("e2e_key_statements"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0008_e2e_key_statements.sql")),
                    false,
                ),
                Migration::new(
                    9,
                    Cow::Borrowed("invitation_revocation"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0009_invitation_revocation.sql")),
                    false,
                ),
            ])
        })
    }
}

/// The current time, RFC 3339 UTC (as every `*_at` column holds it).
pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn is_memory_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"))
}

impl Store {
    /// The connection pool (for the other modules of the crate that keep tables).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Connects (`sqlite://file?mode=rwc`, `sqlite::memory:`, `postgres://…`) and brings the
    /// schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::InvalidField {
                field: "database_url".into(),
                message: "must start with sqlite: or postgres:".into(),
            });
        };
        let mut options = AnyPoolOptions::new();
        if is_memory_sqlite(url) {
            // Each connection to `sqlite::memory:` is a database of its own: keep exactly one.
            options =
                options.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
        } else if backend == Backend::Sqlite {
            options = options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16);
        }
        // sqlx turns SQLite's foreign keys on for every connection (the schema relies on them).
        let pool = options.connect(url).await?;
        Migrator::new(Migrations).await?.run(&pool).await?;
        let store = Self {
            pool,
            backend,
            fleet_key_ids: Arc::new(Vec::new()),
            version: Arc::new(watch::channel(0).0),
        };
        let version = store.version().await?;
        store.version.send_replace(version);
        Ok(store)
    }

    /// The fleet keys (by key id) sealed blobs may name; blobs for other keys are refused.
    #[must_use]
    pub fn with_fleet_key_ids(mut self, ids: Vec<String>) -> Self {
        self.fleet_key_ids = Arc::new(ids);
        self
    }

    /// Changes made through this store: the version after each commit.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.version.subscribe()
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The current version: the largest change id (0 when nothing changed yet).
    pub async fn version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS v FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("v")?)
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout): a transaction that reads first and
    /// writes later fails outright ("database is locked") if another connection wrote in
    /// between, since SQLite cannot wait its way out of that. PostgreSQL needs nothing more.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Starts a mutation: a transaction holding the next change id.
    pub(crate) async fn begin_change(
        &self,
    ) -> Result<(Transaction<'static, Any>, i64), StoreError> {
        let mut tx = self.begin_write().await?;
        let id = next_change_id(&mut tx).await?;
        Ok((tx, id))
    }

    /// Writes the change record and commits.
    pub(crate) async fn commit_change(
        &self,
        mut tx: Transaction<'static, Any>,
        id: i64,
        tenant: &str,
        actor: &str,
        action: &str,
        detail: Value,
    ) -> Result<(), StoreError> {
        write_change(&mut tx, id, tenant, actor, action, detail).await?;
        tx.commit().await?;
        self.version.send_if_modified(|v| {
            let newer = id > *v;
            if newer {
                *v = id;
            }
            newer
        });
        Ok(())
    }

    // ---- tenants ------------------------------------------------------------------------

    /// Creates a tenant; [`StoreError::Conflict`] if the id exists.
    pub async fn create_tenant(
        &self,
        actor: &str,
        id: &str,
        name: Option<&str>,
    ) -> Result<Tenant, StoreError> {
        self.create_tenant_with_key(actor, id, name, None).await.map(|(tenant, _)| tenant)
    }

    /// Creates a tenant and, with `vendor_key`, its first vendor-managed key as its primary
    /// configuration, in one transaction (two history records).
    pub async fn create_tenant_with_key(
        &self,
        actor: &str,
        id: &str,
        name: Option<&str>,
        vendor_key: Option<&keyhold_core::seal::FleetPublicKey>,
    ) -> Result<(Tenant, Option<KmsConfig>), StoreError> {
        validate::tenant_id(id)?;
        let name = name.unwrap_or(id);
        validate::tenant_name(name)?;
        let key = match vendor_key {
            Some(fleet) => {
                let new = vendor_key_config(id, &NewVendorKey::default(), fleet)?;
                let checked = self.check_kms_config(&new)?;
                Some((new, checked))
            }
            None => None,
        };
        let (mut tx, change) = self.begin_change().await?;
        if fetch_tenant(&mut tx, id).await?.is_some() {
            return Err(StoreError::Conflict(format!("tenant {id:?} exists")));
        }
        let tenant = Tenant {
            id: id.to_owned(),
            name: name.to_owned(),
            status: TenantStatus::Active,
            created_at: now(),
        };
        sqlx::query("INSERT INTO tenants (id, name, status, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(tenant.status.as_str())
            .bind(&tenant.created_at)
            .execute(&mut *tx)
            .await?;
        let Some((new, checked)) = key else {
            self.commit_change(
                tx,
                change,
                id,
                actor,
                "tenant.create",
                json!({"name": tenant.name}),
            )
            .await?;
            return Ok((tenant, None));
        };
        write_change(&mut tx, change, id, actor, "tenant.create", json!({"name": tenant.name}))
            .await?;
        let key_change = next_change_id(&mut tx).await?;
        let (config, detail) =
            insert_kms_config(&mut tx, id, new, ManagedBy::Vendor, checked).await?;
        self.commit_change(tx, key_change, id, actor, "vendor_key.create", detail).await?;
        Ok((tenant, Some(config)))
    }

    /// The tenant, created if missing (for `keyhold up`).
    pub async fn ensure_tenant(
        &self,
        actor: &str,
        id: &str,
        name: Option<&str>,
    ) -> Result<Tenant, StoreError> {
        if let Some(tenant) = self.tenant(id).await? {
            return Ok(tenant);
        }
        match self.create_tenant(actor, id, name).await {
            // Created by someone else in between.
            Err(StoreError::Conflict(_)) => self.tenant(id).await?.ok_or_else(|| {
                StoreError::Corrupt(format!("tenant {id:?} exists and does not read back"))
            }),
            other => other,
        }
    }

    /// One tenant.
    pub async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_tenant(&mut conn, id).await
    }

    /// A page of tenants by id, after `after`, whose id or name starts with `q`.
    pub async fn list_tenants(
        &self,
        after: Option<&str>,
        limit: u32,
        q: Option<&str>,
    ) -> Result<Page<Tenant, String>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        // Portable, case-sensitive prefix test (LIKE differs between the two databases).
        let q = q.unwrap_or("");
        let rows = sqlx::query(
            "SELECT id, name, status, created_at FROM tenants \
             WHERE id > $1 AND ($2 = '' OR substr(id, 1, $3) = $2 OR substr(name, 1, $3) = $2) \
             ORDER BY id LIMIT $4",
        )
        .bind(after.unwrap_or(""))
        .bind(q)
        .bind(i32::try_from(q.chars().count()).unwrap_or(i32::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows.iter().map(tenant_row).collect::<Result<Vec<_>, _>>()?;
        let next = page_next(&mut items, limit, |t| t.id.clone());
        Ok(Page { items, next })
    }

    /// Sets a tenant's status (no change record if it already has it).
    pub async fn set_tenant_status(
        &self,
        actor: &str,
        id: &str,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        let (mut tx, change) = self.begin_change().await?;
        let mut tenant = fetch_tenant(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
        if tenant.status == status {
            return Ok(tenant);
        }
        sqlx::query("UPDATE tenants SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let action = match status {
            TenantStatus::Active => "tenant.enable",
            TenantStatus::Disabled => "tenant.disable",
        };
        self.commit_change(tx, change, id, actor, action, json!({})).await?;
        tenant.status = status;
        Ok(tenant)
    }

    /// Creates a one-time invitation for a tenant admin; returns it and its token (base64url of
    /// 32 random bytes; only its SHA-256 is stored).
    pub async fn create_invitation(
        &self,
        actor: &str,
        tenant: &str,
        email: &str,
        ttl: std::time::Duration,
    ) -> Result<(Invitation, Zeroizing<String>), StoreError> {
        validate::email(email)?;
        let mut raw = Zeroizing::new([0u8; 32]);
        keyhold_core::random::fill_random(&mut *raw)
            .map_err(|e| StoreError::Corrupt(format!("no randomness: {e}")))?;
        let token = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*raw));
        let token_hash = hex_sha256(token.as_bytes());
        let expires_at = time::OffsetDateTime::now_utc()
            .checked_add(time::Duration::try_from(ttl).unwrap_or(time::Duration::DAY))
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .ok_or_else(|| StoreError::InvalidField {
                field: "ttl".into(),
                message: "out of range".into(),
            })?;
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, tenant).await?;
        sqlx::query(
            "INSERT INTO invitations (token_hash, tenant_id, email, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token_hash)
        .bind(tenant)
        .bind(email)
        .bind(now())
        .bind(&expires_at)
        .execute(&mut *tx)
        .await?;
        let detail = json!({"email": email, "expires_at": expires_at});
        self.commit_change(tx, change, tenant, actor, "invitation.create", detail).await?;
        Ok((Invitation { tenant: tenant.to_owned(), email: email.to_owned(), expires_at }, token))
    }

    // ---- KMS configurations -------------------------------------------------------------

    /// Adds a KMS configuration (validated first: nothing is stored if it is refused). Making
    /// it primary demotes the tenant's previous primary to `active` in the same transaction.
    pub async fn add_kms_config(
        &self,
        actor: &str,
        tenant: &str,
        new: NewKmsConfig,
        managed_by: ManagedBy,
    ) -> Result<KmsConfig, StoreError> {
        let checked = self.check_kms_config(&new)?;
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, tenant).await?;
        let (config, detail) = insert_kms_config(&mut tx, tenant, new, managed_by, checked).await?;
        self.commit_change(tx, change, tenant, actor, "kms_config.add", detail).await?;
        Ok(config)
    }

    /// Creates a vendor-managed key for a tenant: 32 random bytes sealed at once to the
    /// fleet key `fleet` (so that only the proxies can open them) and stored as a KMS
    /// configuration of type `vendor`. The clear key exists only in this function's memory,
    /// which is wiped; it is never stored, logged or returned.
    pub async fn create_vendor_key(
        &self,
        actor: &str,
        tenant: &str,
        request: NewVendorKey,
        fleet: &keyhold_core::seal::FleetPublicKey,
    ) -> Result<KmsConfig, StoreError> {
        let new = vendor_key_config(tenant, &request, fleet)?;
        let checked = self.check_kms_config(&new)?;
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, tenant).await?;
        let (config, detail) =
            insert_kms_config(&mut tx, tenant, new, ManagedBy::Vendor, checked).await?;
        self.commit_change(tx, change, tenant, actor, "vendor_key.create", detail).await?;
        Ok(config)
    }

    fn check_kms_config(&self, new: &NewKmsConfig) -> Result<CheckedKmsConfig, StoreError> {
        let sealed_key_id = self.check_sealed(new.sealed.as_deref())?;
        let settings_text =
            validate::kms_settings(&new.kind, &new.settings, new.sealed.as_deref())?;
        Ok(CheckedKmsConfig { sealed_key_id, settings_text })
    }

    /// The tenant's configuration with this type and these settings and sealed blob, added if
    /// missing (for `keyhold up`).
    pub async fn ensure_kms_config(
        &self,
        actor: &str,
        tenant: &str,
        new: NewKmsConfig,
    ) -> Result<KmsConfig, StoreError> {
        let existing =
            self.kms_configs(tenant).await?.into_iter().find(|c| {
                c.kind == new.kind && c.settings == new.settings && c.sealed == new.sealed
            });
        match existing {
            Some(config) => Ok(config),
            None => self.add_kms_config(actor, tenant, new, ManagedBy::Vendor).await,
        }
    }

    /// A tenant's KMS configurations, by id.
    pub async fn kms_configs(&self, tenant: &str) -> Result<Vec<KmsConfig>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        require_tenant(&mut conn, tenant).await?;
        let rows = sqlx::query(
            "SELECT id, tenant_id, type, settings, sealed, status, managed_by, created_at FROM kms_configs \
             WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(kms_row).collect()
    }

    /// Sets a KMS configuration's status; `primary` demotes the previous primary to `active`.
    pub async fn set_kms_config_status(
        &self,
        actor: &str,
        tenant: &str,
        id: i64,
        status: KmsConfigStatus,
    ) -> Result<KmsConfig, StoreError> {
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, tenant).await?;
        let row = sqlx::query(
            "SELECT id, tenant_id, type, settings, sealed, status, managed_by, created_at FROM kms_configs \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let mut config = kms_row(&row.ok_or(StoreError::KmsConfigNotFound(id))?)?;
        if config.status == status {
            return Ok(config);
        }
        let demoted = if status == KmsConfigStatus::Primary {
            demote_primary(&mut tx, tenant).await?
        } else {
            None
        };
        sqlx::query("UPDATE kms_configs SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let action = match status {
            KmsConfigStatus::Primary => "kms_config.primary",
            KmsConfigStatus::Active => "kms_config.enable",
            KmsConfigStatus::Disabled => "kms_config.disable",
        };
        let detail = json!({"id": id, "from": config.status.as_str(), "demoted": demoted});
        self.commit_change(tx, change, tenant, actor, action, detail).await?;
        config.status = status;
        Ok(config)
    }

    // ---- SIEM configurations ------------------------------------------------------------

    /// Adds a SIEM configuration (validated first); [`StoreError::Conflict`] if the name exists.
    pub async fn add_siem_config(
        &self,
        actor: &str,
        tenant: &str,
        new: NewSiemConfig,
    ) -> Result<SiemConfig, StoreError> {
        validate::siem_name(&new.name)?;
        let sealed_key_id = self.check_sealed(new.sealed.as_deref())?;
        let settings_text =
            validate::siem_settings(&new.kind, &new.settings, new.sealed.as_deref())?;
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, tenant).await?;
        let exists =
            sqlx::query("SELECT name FROM siem_configs WHERE tenant_id = $1 AND name = $2")
                .bind(tenant)
                .bind(&new.name)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!("SIEM configuration {:?} exists", new.name)));
        }
        let config = SiemConfig {
            tenant: tenant.to_owned(),
            name: new.name,
            kind: new.kind,
            settings: new.settings,
            sealed_key_id,
            status: SiemConfigStatus::Active,
            created_at: now(),
            sealed: new.sealed,
        };
        sqlx::query(
            "INSERT INTO siem_configs (tenant_id, name, type, settings, sealed, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant)
        .bind(&config.name)
        .bind(&config.kind)
        .bind(&settings_text)
        .bind(config.sealed.clone())
        .bind(config.status.as_str())
        .bind(&config.created_at)
        .execute(&mut *tx)
        .await?;
        let detail = json!({
            "name": config.name, "type": config.kind, "settings": config.settings,
            "sealed_key_id": config.sealed_key_id,
        });
        self.commit_change(tx, change, tenant, actor, "siem_config.add", detail).await?;
        Ok(config)
    }

    /// A tenant's SIEM configurations, by name.
    pub async fn siem_configs(&self, tenant: &str) -> Result<Vec<SiemConfig>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        require_tenant(&mut conn, tenant).await?;
        let rows = sqlx::query(
            "SELECT tenant_id, name, type, settings, sealed, status, created_at FROM siem_configs \
             WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(siem_row).collect()
    }

    /// Sets a SIEM configuration's status.
    pub async fn set_siem_config_status(
        &self,
        actor: &str,
        tenant: &str,
        name: &str,
        status: SiemConfigStatus,
    ) -> Result<SiemConfig, StoreError> {
        let (mut tx, change) = self.begin_change().await?;
        require_tenant(&mut tx, tenant).await?;
        let row = sqlx::query(
            "SELECT tenant_id, name, type, settings, sealed, status, created_at FROM siem_configs \
             WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let mut config =
            siem_row(&row.ok_or_else(|| StoreError::SiemConfigNotFound(name.to_owned()))?)?;
        if config.status == status {
            return Ok(config);
        }
        sqlx::query("UPDATE siem_configs SET status = $1 WHERE tenant_id = $2 AND name = $3")
            .bind(status.as_str())
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let action = match status {
            SiemConfigStatus::Active => "siem_config.enable",
            SiemConfigStatus::Disabled => "siem_config.disable",
        };
        self.commit_change(tx, change, tenant, actor, action, json!({"name": name})).await?;
        config.status = status;
        Ok(config)
    }

    // ---- history and snapshot -----------------------------------------------------------

    /// A page of a tenant's change records, by id, after `after`.
    pub async fn history(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Change, i64>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let mut conn = self.pool.acquire().await?;
        require_tenant(&mut conn, tenant).await?;
        let rows = sqlx::query(
            "SELECT id, tenant_id, at, actor, action, detail FROM changes \
             WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(tenant)
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await?;
        let mut items = rows
            .iter()
            .map(|r| {
                Ok(Change {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant_id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: parse_json(&r.try_get::<String, _>("detail")?)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = page_next(&mut items, limit, |c| c.id);
        Ok(Page { items, next })
    }

    /// Everything the snapshot holds, read in one transaction (so the version matches the rows).
    pub async fn snapshot_data(&self) -> Result<SnapshotData, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // One view of the database for all the statements below.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let version: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS v FROM changes")
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
        let tenants = sqlx::query("SELECT id, name, status, created_at FROM tenants ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        let kms = sqlx::query(
            "SELECT id, tenant_id, type, settings, sealed, status, managed_by, created_at FROM kms_configs \
             ORDER BY tenant_id, id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let siem = sqlx::query(
            "SELECT tenant_id, name, type, settings, sealed, status, created_at FROM siem_configs \
             WHERE status = 'active' ORDER BY tenant_id, name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let leasing = Store::all_leasing(&mut tx).await?;
        tx.commit().await?;

        let mut by_tenant: std::collections::BTreeMap<
            String,
            (Tenant, Vec<KmsConfig>, Vec<SiemConfig>),
        > = std::collections::BTreeMap::new();
        for row in &tenants {
            let tenant = tenant_row(row)?;
            by_tenant.insert(tenant.id.clone(), (tenant, Vec::new(), Vec::new()));
        }
        for row in &kms {
            let config = kms_row(row)?;
            if let Some(entry) = by_tenant.get_mut(&config.tenant) {
                entry.1.push(config);
            }
        }
        for row in &siem {
            let config = siem_row(row)?;
            if let Some(entry) = by_tenant.get_mut(&config.tenant) {
                entry.2.push(config);
            }
        }
        Ok(SnapshotData { version, tenants: by_tenant.into_values().collect(), leasing })
    }

    fn check_sealed(&self, sealed: Option<&str>) -> Result<Option<String>, StoreError> {
        sealed.map(|blob| validate::sealed_blob(blob, &self.fleet_key_ids)).transpose()
    }
}

/// Keeps `limit` items; the next page starts after the last one if there was one more.
/// The next change id, in an open transaction (also serialises writers, see `counters`).
async fn next_change_id(conn: &mut sqlx::AnyConnection) -> Result<i64, StoreError> {
    let row =
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'change' RETURNING value")
            .fetch_one(&mut *conn)
            .await?;
    Ok(row.try_get::<i64, _>("value")?)
}

/// Writes a history record (the transaction is committed by the caller).
async fn write_change(
    conn: &mut sqlx::AnyConnection,
    id: i64,
    tenant: &str,
    actor: &str,
    action: &str,
    detail: Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO changes (id, tenant_id, at, actor, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(tenant)
    .bind(now())
    .bind(actor)
    .bind(action)
    .bind(detail.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A KMS configuration that passed validation.
struct CheckedKmsConfig {
    sealed_key_id: Option<String>,
    settings_text: String,
}

/// The configuration of a new vendor-managed key: fresh key material, sealed to the fleet.
fn vendor_key_config(
    tenant: &str,
    request: &NewVendorKey,
    fleet: &keyhold_core::seal::FleetPublicKey,
) -> Result<NewKmsConfig, StoreError> {
    if let Some(label) = &request.label {
        validate::tenant_name(label)?;
    }
    let material = keyhold_core::secret::MasterKeyMaterial::generate()
        .map_err(|_| StoreError::Corrupt("no randomness for a vendor key".into()))?;
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(&json!({ "key": material.to_base64().as_str() }))
            .map_err(|e| StoreError::Corrupt(format!("vendor key: {e}")))?,
    );
    let sealed =
        keyhold_core::seal::seal(fleet, keyhold_core::seal::SealPurpose::Kms, tenant, &plaintext)
            .map_err(|e| StoreError::Corrupt(format!("cannot seal a vendor key: {e}")))?;
    let mut settings = serde_json::Map::new();
    if let Some(label) = &request.label {
        settings.insert("label".into(), Value::String(label.clone()));
    }
    Ok(NewKmsConfig {
        kind: "vendor".into(),
        settings: Value::Object(settings),
        sealed: Some(sealed),
        status: request.status,
    })
}

/// Inserts a validated KMS configuration; returns it and its history detail.
async fn insert_kms_config(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    new: NewKmsConfig,
    managed_by: ManagedBy,
    checked: CheckedKmsConfig,
) -> Result<(KmsConfig, Value), StoreError> {
    let current_primary = primary_of(&mut *conn, tenant).await?;
    let status = new.status.unwrap_or(if current_primary.is_some() {
        KmsConfigStatus::Active
    } else {
        KmsConfigStatus::Primary
    });
    let demoted = if status == KmsConfigStatus::Primary {
        demote_primary(&mut *conn, tenant).await?
    } else {
        None
    };
    let row = sqlx::query(
        "UPDATE counters SET value = value + 1 WHERE name = 'kms_config' RETURNING value",
    )
    .fetch_one(&mut *conn)
    .await?;
    let id = row.try_get::<i64, _>("value")?;
    if i32::try_from(id).is_err() {
        // EDEKs record the id as a 32-bit number.
        return Err(StoreError::Conflict("no KMS configuration id is left".into()));
    }
    let config = KmsConfig {
        id,
        tenant: tenant.to_owned(),
        kind: new.kind,
        settings: new.settings,
        sealed_key_id: checked.sealed_key_id,
        status,
        managed_by,
        created_at: now(),
        sealed: new.sealed,
    };
    sqlx::query(
        "INSERT INTO kms_configs (id, tenant_id, type, settings, sealed, status, managed_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(tenant)
    .bind(&config.kind)
    .bind(&checked.settings_text)
    .bind(config.sealed.clone())
    .bind(status.as_str())
    .bind(managed_by.as_str())
    .bind(&config.created_at)
    .execute(&mut *conn)
    .await?;
    let detail = json!({
        "id": id, "type": config.kind, "status": status.as_str(), "settings": config.settings,
        "sealed_key_id": config.sealed_key_id, "managed_by": managed_by.as_str(), "demoted": demoted,
    });
    Ok((config, detail))
}

fn page_next<T, K>(items: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> K) -> Option<K> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stored JSON: {e}")))
}

fn tenant_row(row: &AnyRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: TenantStatus::parse(&row.try_get::<String, _>("status")?)?,
        created_at: row.try_get("created_at")?,
    })
}

fn kms_row(row: &AnyRow) -> Result<KmsConfig, StoreError> {
    let sealed: Option<String> = row.try_get("sealed")?;
    Ok(KmsConfig {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant_id")?,
        kind: row.try_get("type")?,
        settings: parse_json(&row.try_get::<String, _>("settings")?)?,
        sealed_key_id: sealed.as_deref().and_then(|b| keyhold_core::seal::sealed_key_id(b).ok()),
        status: KmsConfigStatus::parse(&row.try_get::<String, _>("status")?)?,
        managed_by: ManagedBy::parse(&row.try_get::<String, _>("managed_by")?)?,
        created_at: row.try_get("created_at")?,
        sealed,
    })
}

fn siem_row(row: &AnyRow) -> Result<SiemConfig, StoreError> {
    let sealed: Option<String> = row.try_get("sealed")?;
    Ok(SiemConfig {
        tenant: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        kind: row.try_get("type")?,
        settings: parse_json(&row.try_get::<String, _>("settings")?)?,
        sealed_key_id: sealed.as_deref().and_then(|b| keyhold_core::seal::sealed_key_id(b).ok()),
        status: SiemConfigStatus::parse(&row.try_get::<String, _>("status")?)?,
        created_at: row.try_get("created_at")?,
        sealed,
    })
}

async fn fetch_tenant(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<Tenant>, StoreError> {
    let row = sqlx::query("SELECT id, name, status, created_at FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(tenant_row).transpose()
}

/// [`StoreError::TenantNotFound`] unless the tenant exists.
pub(crate) async fn require_tenant(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<(), StoreError> {
    match fetch_tenant(conn, id).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::TenantNotFound(id.to_owned())),
    }
}

async fn primary_of(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query("SELECT id FROM kms_configs WHERE tenant_id = $1 AND status = 'primary'")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get::<i64, _>("id")).transpose()?)
}

/// Demotes the tenant's primary configuration to `active`; returns its id.
async fn demote_primary(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
) -> Result<Option<i64>, StoreError> {
    let primary = primary_of(conn, tenant).await?;
    if let Some(id) = primary {
        sqlx::query("UPDATE kms_configs SET status = 'active' WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(primary)
}
