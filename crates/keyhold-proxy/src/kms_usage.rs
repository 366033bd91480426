//! Rotation tracking: which KMS configurations (and master key versions) the EDEKs that reach
//! this proxy still name.
//!
//! Every EDEK presented for unwrap or rekey names the KMS configuration that wrapped it (and,
//! for the local keystore, vendor keys, Vault/OpenBao Transit and Azure Key Vault, the master
//! key version, read from the ciphertext without a KMS call). Counting them tells a vendor or
//! tenant when an old configuration — a vendor-managed key after a hand-over, a rotated-away
//! key version — is no longer used and can be disabled. Counts are kept in memory since the
//! proxy started (`POST /api/1/tenant/kms-usage`) and, with a broker, sent to it as deltas so
//! that it sums them over the fleet (`GET /api/v1/tenants/{id}/kms-usage`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Counts of one (tenant, configuration, key version).
#[derive(Debug, Default)]
struct Counter {
    seen: AtomicU64,
    /// What has been reported to the broker already.
    reported: AtomicU64,
    /// Unix seconds of the last EDEK seen.
    last_seen: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    config_id: i32,
    key_version: Option<String>,
    counter: Arc<Counter>,
}

/// EDEKs seen, by tenant, KMS configuration and key version.
#[derive(Debug)]
pub struct KmsUsage {
    // Read-locked on every unwrap (a hash lookup and a short scan); written only when a
    // tenant shows a configuration or version for the first time.
    // Keys are the ids of configured tenants only (hence foldhash, not SipHash).
    tenants: std::sync::RwLock<foldhash::HashMap<String, Vec<Entry>>>,
    since: u64,
}

impl Default for KmsUsage {
    fn default() -> Self {
        Self { tenants: Default::default(), since: unix_now() }
    }
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    /// The KMS configuration the EDEKs name.
    pub kms_config_id: i32,
    /// The master key version they name, where the KMS records one.
    pub key_version: Option<String>,
    /// How many EDEKs (since the proxy started, or in a delta: since the last report).
    pub edeks_seen: u64,
    /// When the last one was seen, Unix seconds.
    pub last_seen: u64,
}

/// A delta for the broker: one tenant's row.
#[derive(Debug, Clone)]
pub struct UsageDelta {
    /// The tenant.
    pub tenant: String,
    /// The row (its `edeks_seen` is the count since the last report).
    pub row: UsageRow,
    counter: Arc<Counter>,
    total: u64,
}

impl KmsUsage {
    /// Counts one EDEK of `tenant` naming `config_id` (and `key_version`).
    pub fn note(&self, tenant: &str, config_id: i32, key_version: Option<String>) {
        let now = unix_now();
        {
            let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(counter) = tenants.get(tenant).and_then(|entries| {
                entries
                    .iter()
                    .find(|e| e.config_id == config_id && e.key_version == key_version)
                    .map(|e| &e.counter)
            }) {
                counter.seen.fetch_add(1, Ordering::Relaxed);
                counter.last_seen.fetch_max(now, Ordering::Relaxed);
                return;
            }
        }
        let mut tenants = self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = tenants.entry(tenant.to_owned()).or_default();
        let counter =
            match entries.iter().find(|e| e.config_id == config_id && e.key_version == key_version)
            {
                Some(e) => Arc::clone(&e.counter),
                None => {
                    let counter = Arc::new(Counter::default());
                    entries.push(Entry { config_id, key_version, counter: Arc::clone(&counter) });
                    counter
                }
            };
        counter.seen.fetch_add(1, Ordering::Relaxed);
        counter.last_seen.fetch_max(now, Ordering::Relaxed);
    }

    /// When counting started (the proxy's start), Unix seconds.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// A tenant's counts since the proxy started, by configuration and version.
    pub fn tenant(&self, tenant: &str) -> Vec<UsageRow> {
        let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rows: Vec<UsageRow> = tenants
            .get(tenant)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| UsageRow {
                        kms_config_id: e.config_id,
                        key_version: e.key_version.clone(),
                        edeks_seen: e.counter.seen.load(Ordering::Relaxed),
                        last_seen: e.counter.last_seen.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        rows.sort_by(|a, b| {
            (a.kms_config_id, &a.key_version).cmp(&(b.kms_config_id, &b.key_version))
        });
        rows
    }

    /// What was seen since the last acknowledged report, at most `limit` rows.
    pub fn deltas(&self, limit: usize) -> Vec<UsageDelta> {
        let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for (tenant, entries) in tenants.iter() {
            for e in entries {
                let total = e.counter.seen.load(Ordering::Relaxed);
                let reported = e.counter.reported.load(Ordering::Relaxed);
                if total > reported {
                    out.push(UsageDelta {
                        tenant: tenant.clone(),
                        row: UsageRow {
                            kms_config_id: e.config_id,
                            key_version: e.key_version.clone(),
                            edeks_seen: total - reported,
                            last_seen: e.counter.last_seen.load(Ordering::Relaxed),
                        },
                        counter: Arc::clone(&e.counter),
                        total,
                    });
                    if out.len() >= limit {
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Marks deltas as reported (after the broker took them).
    pub fn acknowledge(&self, deltas: &[UsageDelta]) {
        for d in deltas {
            d.counter.reported.fetch_max(d.total, Ordering::Relaxed);
        }
    }
}

/// Route of the usage report (a Keyhold extension of the TSP API, docs/tsp-api.md).
pub const ROUTE_KMS_USAGE: &str = "/api/1/tenant/kms-usage";

/// `POST /api/1/tenant/kms-usage`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KmsUsageRequest {
    /// The tenant.
    pub tenant_id: String,
}

/// One KMS configuration of a tenant and the EDEKs seen naming it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigUsage {
    /// The configuration id (as in EDEKs).
    pub kms_config_id: i32,
    /// `primary`, `active`, `disabled`, or `unknown` (no longer configured).
    pub status: String,
    /// The backend (`local`, `vendor`, `vault`, …), or `unknown`.
    pub kind: String,
    /// EDEKs seen since `since`, over every key version.
    pub edeks_seen: u64,
    /// When the last one was seen (Unix seconds), if any was.
    pub last_seen: Option<u64>,
    /// By key version, where the KMS records one in its ciphertext.
    pub key_versions: Vec<VersionUsage>,
}

/// EDEKs seen naming one key version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionUsage {
    /// The key version.
    pub key_version: String,
    /// EDEKs seen.
    pub edeks_seen: u64,
    /// Last seen, Unix seconds.
    pub last_seen: u64,
}

/// The answer: every configuration the tenant has, and any other the EDEKs seen name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KmsUsageResponse {
    /// The tenant.
    pub tenant_id: String,
    /// Counting started then (this proxy's start), Unix seconds; with several proxies, the
    /// broker has the sums.
    pub since: u64,
    /// By configuration id.
    pub configs: Vec<ConfigUsage>,
}

/// Builds the answer from the tenant's configurations (id, status, kind) and the counts.
pub fn report(
    tenant: &str,
    configs: &[(i32, &'static str, &'static str)],
    usage: &KmsUsage,
) -> KmsUsageResponse {
    let rows = usage.tenant(tenant);
    let mut ids: Vec<i32> = configs.iter().map(|c| c.0).collect();
    ids.extend(rows.iter().map(|r| r.kms_config_id));
    ids.sort_unstable();
    ids.dedup();
    let configs = ids
        .into_iter()
        .map(|id| {
            let (status, kind) =
                configs.iter().find(|c| c.0 == id).map_or(("unknown", "unknown"), |c| (c.1, c.2));
            let mine: Vec<&UsageRow> = rows.iter().filter(|r| r.kms_config_id == id).collect();
            ConfigUsage {
                kms_config_id: id,
                status: status.to_owned(),
                kind: kind.to_owned(),
                edeks_seen: mine.iter().map(|r| r.edeks_seen).sum(),
                last_seen: mine.iter().map(|r| r.last_seen).max(),
                key_versions: mine
                    .iter()
                    .filter_map(|r| {
                        r.key_version.as_ref().map(|v| VersionUsage {
                            key_version: v.clone(),
                            edeks_seen: r.edeks_seen,
                            last_seen: r.last_seen,
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    KmsUsageResponse { tenant_id: tenant.to_owned(), since: usage.since(), configs }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_config_and_version_and_reports_deltas_once() {
        let usage = KmsUsage::default();
        for _ in 0..3 {
            usage.note("acme", 1, Some("1".into()));
        }
        usage.note("acme", 1, Some("2".into()));
        usage.note("acme", 7, None);
        usage.note("beta", 1, None);
        let rows = usage.tenant("acme");
        let counts: Vec<(i32, Option<&str>, u64)> = rows
            .iter()
            .map(|r| (r.kms_config_id, r.key_version.as_deref(), r.edeks_seen))
            .collect();
        assert_eq!(counts, vec![(1, Some("1"), 3), (1, Some("2"), 1), (7, None, 1)]);
        assert!(rows.iter().all(|r| r.last_seen >= usage.since()));
        assert!(usage.tenant("nobody").is_empty());

        let deltas = usage.deltas(100);
        assert_eq!(deltas.iter().map(|d| d.row.edeks_seen).sum::<u64>(), 6);
        // Not acknowledged (the broker was down): the same deltas again.
        assert_eq!(usage.deltas(100).len(), 4);
        usage.acknowledge(&deltas);
        assert!(usage.deltas(100).is_empty());
        usage.note("acme", 1, Some("1".into()));
        let next = usage.deltas(100);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].row.edeks_seen, 1);
        assert_eq!(usage.tenant("acme")[0].edeks_seen, 4);
        assert_eq!(usage.deltas(0).len(), 1, "a limit of 0 still makes progress");
    }
}
