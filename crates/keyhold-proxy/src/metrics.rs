//! Prometheus metrics, served at `/metrics` in the text exposition format.

use std::borrow::Cow;
use std::sync::{OnceLock, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The operations whose granted counts a tenant keeps handles to ([`GrantedCounters`]).
const GRANTED_OPERATIONS: [&str; 7] =
    ["wrap", "unwrap", "batch_wrap", "batch_unwrap", "rekey", "batch_rekey", "derive"];

/// One tenant's `key_operations` counters of granted operations (code 0), each taken from the
/// family the first time it is used. A request then counts itself without building its labels
/// (a copy of the tenant id), hashing them and locking the family, which were a per-request
/// cost shared by every tenant's requests.
#[derive(Debug, Default)]
pub struct GrantedCounters([OnceLock<Counter>; GRANTED_OPERATIONS.len()]);

impl GrantedCounters {
    /// The counter of `tenant`'s granted `operation`; `None` for an operation not listed in
    /// [`GRANTED_OPERATIONS`] (its caller counts it through the family). One set of counters
    /// serves one tenant: [`crate::registry::Tenant::granted_counter`] passes its own id.
    pub(crate) fn get(
        &self,
        metrics: &Metrics,
        tenant: &str,
        operation: &'static str,
    ) -> Option<&Counter> {
        let index = GRANTED_OPERATIONS.iter().position(|o| *o == operation)?;
        Some(self.0.get(index)?.get_or_init(|| {
            let labels = KeyOperationLabels { tenant: tenant.to_owned(), operation, code: 0 };
            metrics.key_operations.get_or_create(&labels).clone()
        }))
    }
}

/// Labels of HTTP request counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route (not the raw path, to bound cardinality).
    pub route: &'static str,
    /// The HTTP status code.
    pub status: u16,
}

/// Labels of HTTP latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route.
    pub route: &'static str,
}

/// Labels of KMS call counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsLabels {
    /// The tenant.
    pub tenant: String,
    /// The KMS configuration id.
    pub config: i32,
    /// `generate`, `wrap`, `unwrap`, `lease_renew` or `lease_unwrap`.
    pub operation: &'static str,
}

/// Labels of KMS failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsErrorLabels {
    /// The tenant.
    pub tenant: String,
    /// The KMS configuration id.
    pub config: i32,
    /// `generate`, `wrap` or `unwrap`.
    pub operation: &'static str,
    /// The wire error code the failure maps to.
    pub code: u16,
}

/// Labels of KMS latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsKindLabels {
    /// The backend kind (`local`, `aws`, …).
    pub kind: &'static str,
    /// `generate`, `wrap` or `unwrap`.
    pub operation: &'static str,
}

/// Labels of key operations as the API sees them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyOperationLabels {
    /// The tenant.
    pub tenant: String,
    /// `wrap`, `unwrap`, `rekey`.
    pub operation: &'static str,
    /// 0 on success, else the wire error code.
    pub code: u16,
}

/// Labels of client SDK identification headers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// `x-icl-tsc-language` (or `unknown`).
    pub language: Cow<'static, str>,
    /// `x-icl-tsc-version` (or `unknown`).
    pub version: Cow<'static, str>,
}

/// Most (language, version) pairs counted apart in `client_requests`; requests naming any
/// other pair are counted as `other`/`other`. The headers are the caller's to choose, so without
/// a bound a caller could grow the proxy's memory and every scrape with made-up values.
pub const MAX_CLIENT_SERIES: usize = 32;

/// The `client_requests` counters in use, kept once first used: a request finds its pair by a
/// short scan instead of building owned labels, hashing them and locking the family.
#[derive(Debug, Default)]
pub struct ClientCounters {
    seen: std::sync::RwLock<Vec<ClientCounter>>,
}

#[derive(Debug)]
struct ClientCounter {
    language: Box<str>,
    version: Box<str>,
    counter: Counter,
}

impl ClientCounters {
    /// Counts one request of the client that names itself `language` and `version`.
    pub fn count(&self, family: &Family<ClientLabels, Counter>, language: &str, version: &str) {
        let find = |seen: &[ClientCounter]| {
            seen.iter()
                .find(|c| *c.language == *language && *c.version == *version)
                .map(|c| c.counter.clone())
        };
        let known = find(&self.seen.read().unwrap_or_else(PoisonError::into_inner));
        if let Some(counter) = known {
            counter.inc();
            return;
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = find(&seen) {
            counter.inc();
        } else if seen.len() < MAX_CLIENT_SERIES {
            let labels = ClientLabels {
                language: Cow::Owned(language.to_owned()),
                version: Cow::Owned(version.to_owned()),
            };
            let counter = family.get_or_create(&labels).clone();
            counter.inc();
            seen.push(ClientCounter {
                language: language.into(),
                version: version.into(),
                counter,
            });
        } else {
            drop(seen);
            let other =
                ClientLabels { language: Cow::Borrowed("other"), version: Cow::Borrowed("other") };
            family.get_or_create(&other).inc();
        }
    }
}

/// Labels of security events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant.
    pub tenant: String,
}

/// Labels of lease gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// The tenant.
    pub tenant: String,
    /// The KMS configuration id.
    pub config: i32,
}

/// Labels of lease cache lookups.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseCacheLabels {
    /// The tenant.
    pub tenant: String,
    /// The KMS configuration id.
    pub config: i32,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// Labels of audit delivery gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditSinkLabels {
    /// The tenant.
    pub tenant: String,
    /// The sink's name.
    pub sink: String,
}

/// A gauge holding seconds.
pub type SecondsGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP latency by route.
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Every call to a KMS.
    pub kms_requests: Family<KmsLabels, Counter>,
    /// KMS calls that failed, by the code they map to.
    pub kms_errors: Family<KmsErrorLabels, Counter>,
    /// KMS latency by backend kind.
    pub kms_duration: Family<KmsKindLabels, Histogram, fn() -> Histogram>,
    /// Keys wrapped, unwrapped and rekeyed, by outcome.
    pub key_operations: Family<KeyOperationLabels, Counter>,
    /// Requests by client SDK.
    pub client_requests: Family<ClientLabels, Counter>,
    /// Security events accepted.
    pub security_events: Family<TenantLabels, Counter>,
    /// Lease cache lookups when opening leased EDEKs, by hit or miss.
    pub lease_cache: Family<LeaseCacheLabels, Counter>,
    /// Age of the current lease key, in seconds (-1: none yet).
    pub lease_key_age: Family<LeaseLabels, SecondsGauge>,
    /// Seconds since the last successful lease renewal (-1: none yet).
    pub lease_since_renewal: Family<LeaseLabels, SecondsGauge>,
    /// Events spooled but not yet delivered, per tenant and sink.
    pub audit_undelivered: Family<AuditSinkLabels, Gauge>,
    /// Batches a sink failed to take (each was retried), per tenant and sink.
    pub audit_delivery_failures: Family<AuditSinkLabels, Gauge>,
    /// Data operations refused because the tenant's audit backlog was full.
    pub audit_backlog_refusals: Family<TenantLabels, Counter>,
    /// 1 when the proxy is ready to serve.
    pub ready: Gauge,
    /// Number of tenants configured.
    pub tenants: Gauge,
    /// Version of the broker snapshot in use (0: none, or tenants from the file).
    pub config_version: Gauge,
    /// Broker snapshots refused: bad signature, unknown key, older than the one in use.
    pub broker_snapshots_refused: Counter,
    /// Polls of the broker that failed (the proxy keeps serving its last good snapshot).
    pub broker_poll_failures: Counter,
    /// TLS handshakes on the API listener that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// Changed TLS files loaded without a restart.
    pub tls_reloads: Counter,
    /// Changed TLS files that could not be used (the previous certificate goes on serving).
    pub tls_reload_failures: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyhold");
        let http_requests = Family::default();
        let http_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let kms_requests = Family::default();
        let kms_errors = Family::default();
        let kms_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let key_operations = Family::default();
        let client_requests = Family::default();
        let security_events = Family::default();
        let ready = Gauge::default();
        let tenants = Gauge::default();
        let config_version = Gauge::default();
        let broker_snapshots_refused = Counter::default();
        let broker_poll_failures = Counter::default();
        let tls_handshake_failures = Counter::default();
        let tls_reloads = Counter::default();
        let tls_reload_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the API listener that failed or timed out",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_reloads",
            "Changed TLS files loaded without a restart",
            tls_reloads.clone(),
        );
        registry.register(
            "tls_reload_failures",
            "Changed TLS files that could not be used (the previous certificate goes on serving)",
            tls_reload_failures.clone(),
        );
        registry.register(
            "config_version",
            "Version of the broker snapshot in use (0: none, or tenants from the file)",
            config_version.clone(),
        );
        registry.register(
            "broker_snapshots_refused",
            "Broker snapshots refused (bad signature, unknown key, older than the one in use)",
            broker_snapshots_refused.clone(),
        );
        registry.register(
            "broker_poll_failures",
            "Failed polls of the broker (the last good snapshot keeps serving)",
            broker_poll_failures.clone(),
        );
        let lease_cache = Family::default();
        let lease_key_age = Family::default();
        let lease_since_renewal = Family::default();
        let audit_undelivered = Family::default();
        let audit_delivery_failures = Family::default();
        let audit_backlog_refusals = Family::default();
        registry.register(
            "audit_undelivered_events",
            "Audit events spooled but not yet delivered to a sink",
            audit_undelivered.clone(),
        );
        registry.register(
            "audit_delivery_failed_batches",
            "Audit batches a sink failed to take (each is retried)",
            audit_delivery_failures.clone(),
        );
        registry.register(
            "audit_backlog_refusals",
            "Data operations refused because the tenant's audit backlog was full",
            audit_backlog_refusals.clone(),
        );
        registry.register(
            "lease_cache_lookups",
            "Lease cache lookups when opening leased EDEKs",
            lease_cache.clone(),
        );
        registry.register(
            "lease_key_age_seconds",
            "Age of the current lease key (-1: none yet)",
            lease_key_age.clone(),
        );
        registry.register(
            "lease_seconds_since_renewal",
            "Seconds since the last successful lease renewal (-1: none yet)",
            lease_since_renewal.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        registry.register("kms_requests", "Calls to a tenant KMS", kms_requests.clone());
        registry.register(
            "kms_errors",
            "Failed calls to a tenant KMS, by wire error code",
            kms_errors.clone(),
        );
        registry.register("kms_request_duration_seconds", "KMS call latency", kms_duration.clone());
        registry.register(
            "key_operations",
            "Data keys wrapped, unwrapped and rekeyed",
            key_operations.clone(),
        );
        registry.register(
            "client_requests",
            "API requests by client SDK language and version",
            client_requests.clone(),
        );
        registry.register("security_events", "Security events accepted", security_events.clone());
        registry.register("ready", "1 when the proxy serves requests", ready.clone());
        registry.register("tenants", "Tenants configured", tenants.clone());
        Self {
            registry,
            http_requests,
            http_duration,
            kms_requests,
            kms_errors,
            kms_duration,
            key_operations,
            client_requests,
            security_events,
            lease_cache,
            lease_key_age,
            lease_since_renewal,
            audit_undelivered,
            audit_delivery_failures,
            audit_backlog_refusals,
            ready,
            tenants,
            config_version,
            broker_snapshots_refused,
            broker_poll_failures,
            tls_handshake_failures,
            tls_reloads,
            tls_reload_failures,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker snapshot replaces every `Tenant`, and with it the handles; the counts must go on
    /// in the same series, and an operation without a handle must be refused (counted by label).
    #[test]
    fn granted_counters_of_a_new_registry_continue_the_same_series() {
        let metrics = Metrics::new();
        let before = GrantedCounters::default();
        before.get(&metrics, "tenant-a", "unwrap").expect("listed").inc();
        let after = GrantedCounters::default();
        after.get(&metrics, "tenant-a", "unwrap").expect("listed").inc_by(2);
        let count = |tenant: &str| {
            let labels =
                KeyOperationLabels { tenant: tenant.to_owned(), operation: "unwrap", code: 0 };
            metrics.key_operations.get_or_create(&labels).get()
        };
        assert_eq!(count("tenant-a"), 3);
        assert!(after.get(&metrics, "tenant-a", "no_such_operation").is_none());
    }

    /// However many client names callers make up, the family holds at most
    /// `MAX_CLIENT_SERIES` of them plus `other`, and every request is counted once.
    #[test]
    fn client_series_are_bounded_and_every_request_is_counted() {
        let metrics = Metrics::new();
        let clients = ClientCounters::default();
        for i in 0..MAX_CLIENT_SERIES + 10 {
            clients.count(&metrics.client_requests, "java", &format!("4.{i}.0"));
        }
        clients.count(&metrics.client_requests, "java", "4.0.0");
        let count = |language: &'static str, version: String| {
            let labels =
                ClientLabels { language: Cow::Borrowed(language), version: Cow::Owned(version) };
            metrics.client_requests.get_or_create(&labels).get()
        };
        assert_eq!(count("java", "4.0.0".into()), 2);
        assert_eq!(count("java", format!("4.{}.0", MAX_CLIENT_SERIES - 1)), 1);
        assert_eq!(count("other", "other".into()), 10);
        let text = metrics.encode();
        let series =
            text.lines().filter(|l| l.starts_with("keyhold_client_requests_total{")).count();
        assert_eq!(series, MAX_CLIENT_SERIES + 1, "{text}");
    }
}
