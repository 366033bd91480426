//! Builds the configuration snapshot proxies pull (docs/broker.md §2) from the store, and signs
//! it. The last signed snapshot is kept and reused while the version does not change.

use keyhold_core::snapshot::{
    ConfigSnapshot, ConfigStatus, FORMAT, SignedSnapshot, SnapshotKmsConfig, SnapshotLeasing,
    SnapshotSigningKey, SnapshotSink, SnapshotTenant, TenantStatus as SnapshotTenantStatus,
};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::error::StoreError;
use crate::store::{KmsConfigStatus, SnapshotData, Store, TenantStatus};

/// A signed snapshot with its version.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The snapshot's version.
    pub version: u64,
    /// The envelope, serialised (what the proxy route sends).
    pub body: axum::body::Bytes,
}

/// Why a snapshot could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotBuildError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error("signing the snapshot: {0}")]
    Sign(String),
}

/// Builds, signs and caches snapshots.
#[derive(Debug)]
pub struct Snapshots {
    store: Store,
    key: SnapshotSigningKey,
    last: Mutex<Option<Signed>>,
}

fn object(value: &Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    }
}

/// The snapshot of `data`, stamped `issued_at`.
pub fn build(data: &SnapshotData, issued_at: String) -> Result<ConfigSnapshot, StoreError> {
    let mut tenants = Vec::with_capacity(data.tenants.len());
    for (tenant, kms, siem) in &data.tenants {
        let kms_configs = kms
            .iter()
            .map(|c| {
                Ok(SnapshotKmsConfig {
                    id: i32::try_from(c.id).map_err(|_| {
                        StoreError::Corrupt(format!("KMS configuration id {} is too large", c.id))
                    })?,
                    status: match c.status {
                        KmsConfigStatus::Primary => ConfigStatus::Primary,
                        KmsConfigStatus::Active => ConfigStatus::Active,
                        KmsConfigStatus::Disabled => ConfigStatus::Disabled,
                    },
                    kms_type: c.kind.clone(),
                    settings: object(&c.settings),
                    sealed: c.sealed.clone(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let audit_sinks = siem
            .iter()
            .map(|s| SnapshotSink {
                name: s.name.clone(),
                sink_type: s.kind.clone(),
                settings: object(&s.settings),
                sealed: s.sealed.clone(),
            })
            .collect();
        tenants.push(SnapshotTenant {
            id: tenant.id.clone(),
            status: match tenant.status {
                TenantStatus::Active => SnapshotTenantStatus::Active,
                TenantStatus::Disabled => SnapshotTenantStatus::Disabled,
            },
            leasing: data.leasing.get(&tenant.id).map_or_else(SnapshotLeasing::default, |l| {
                SnapshotLeasing {
                    enabled: l.enabled,
                    renew_interval_ms: l.renew_interval_ms,
                    max_hold_ms: l.max_hold_ms,
                }
            }),
            kms_configs,
            audit_sinks,
        });
    }
    Ok(ConfigSnapshot {
        format: FORMAT,
        version: u64::try_from(data.version).unwrap_or(0),
        issued_at,
        tenants,
    })
}

impl Snapshots {
    /// Snapshots of `store` signed with `key`.
    pub fn new(store: Store, key: SnapshotSigningKey) -> Self {
        Self { store, key, last: Mutex::new(None) }
    }

    /// The current version (from the database, so changes by other replicas count).
    pub async fn version(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.store.version().await?).unwrap_or(0))
    }

    /// The signed snapshot of the current state; rebuilt only when the version moved.
    pub async fn current(&self) -> Result<Signed, SnapshotBuildError> {
        let mut last = self.last.lock().await;
        let version = self.version().await?;
        if let Some(signed) = last.as_ref().filter(|s| s.version == version) {
            return Ok(signed.clone());
        }
        let data = self.store.snapshot_data().await?;
        let issued_at = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        let snapshot = build(&data, issued_at)?;
        let envelope: SignedSnapshot =
            self.key.sign(&snapshot).map_err(|e| SnapshotBuildError::Sign(e.to_string()))?;
        let body =
            serde_json::to_vec(&envelope).map_err(|e| SnapshotBuildError::Sign(e.to_string()))?;
        let signed = Signed { version: snapshot.version, body: body.into() };
        *last = Some(signed.clone());
        Ok(signed)
    }
}
