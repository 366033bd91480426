//! # keyhold-proxy
//!
//! The Tenant Security Proxy: a stateless HTTP service in the vendor's infrastructure that wraps
//! and unwraps data keys through each tenant's KMS. Its API is wire-compatible with the IronCore
//! Tenant Security Proxy (`docs/tsp-api.md`), so IronCore's published client SDKs work against it.
//!
//! ```text
//!  SDK ──HTTP (cmk api key)──▶ api (axum) ──▶ service ──▶ registry ──▶ Kms (local, aws, …)
//!                              auth, limits     wrap/unwrap   tenants →      │
//!                              error → code     metrics       KMS configs    ▼
//!                                                                          tenant's key
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`config`] | the typed configuration (TOML + `KEYHOLD_*` environment) |
//! | [`registry`] | tenants and their KMS configurations |
//! | [`broker`] | tenants from a Configuration Broker: signed snapshots, sealed credentials |
//! | [`service`] | what each call does, free of HTTP |
//! | [`secrets`] | tenant secrets for deterministic encryption: the broker or a file |
//! | [`api`] | handlers, router, body parsing |
//! | [`auth`] | API keys, compared in constant time |
//! | [`bootstrap`] | a ready-to-run data directory for `keyhold up` |
//! | [`error`] | the one mapping from errors to wire codes |
//! | [`metrics`] | Prometheus metrics |
//! | [`server`] | listeners, background tasks, graceful shutdown |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod broker;
pub mod config;
pub mod error;
mod kms_call;
mod kms_failures;
pub mod kms_usage;
pub mod lease;
pub mod metrics;
pub mod registry;
pub mod secrets;
pub mod server;
pub mod service;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use config::ProxyConfig;
/// The API listener's TLS and connection bounds (shared with the broker).
pub use keyhold_listen::{connections, tls};
pub use server::{Proxy, ProxyError, shutdown_signal};

/// Whether the proxy is serving (for `/health` and `/ready`).
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Set while a proxy configured from a broker has no snapshot yet (none cached, broker not
    /// reached): it would refuse every tenant.
    awaiting_config: AtomicBool,
}

impl Health {
    /// True once the proxy serves (with its tenants), false again while it shuts down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.awaiting_config.load(Ordering::Acquire)
    }

    /// Marks whether the proxy still waits for its first configuration.
    pub fn set_awaiting_config(&self, waiting: bool) {
        self.awaiting_config.store(waiting, Ordering::Release);
    }

    /// Marks the proxy ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// Everything a handler needs, shared by all requests.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The key service.
    pub service: Arc<service::KeyService>,
    /// The accepted API keys.
    pub api_keys: auth::ApiKeys,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl AppState {
    /// Builds the state from a validated configuration (opens the keystore, builds backends).
    pub async fn from_config(config: &ProxyConfig) -> Result<Self, ProxyError> {
        let health = Arc::new(Health::default());
        let mut from_broker = None;
        let mut admin_audit = None;
        let registry = match &config.broker {
            None => Arc::new(registry::TenantRegistry::from_config(config).await?),
            Some(source) => {
                let client = Arc::new(broker::BrokerClient::new(config, source)?);
                let keystore = registry::open_keystore(config)?;
                let (registry, first) =
                    broker_first_registry(config, &client, keystore.clone()).await;
                health.set_awaiting_config(first.is_none());
                from_broker = Some((client, keystore, first));
                Arc::new(registry)
            }
        };
        let metrics = Arc::new(metrics::Metrics::new());
        metrics.tenants.set(i64::try_from(registry.len()).unwrap_or(i64::MAX));
        let mut service = service::KeyService::new(
            registry,
            Arc::clone(&metrics),
            service::ServiceLimits {
                kms_timeout: config.kms_timeout(),
                max_batch_size: config.max_batch_size,
                batch_concurrency: config.batch_concurrency,
            },
        )
        .with_rekey_policy(config.rekey.clone());
        let secret_store: Arc<dyn secrets::SecretStore> = match from_broker.as_ref().map(|b| &b.0) {
            Some(client) => Arc::new(secrets::BrokerSecretStore::new(
                Arc::clone(client),
                std::time::Duration::from_secs(config.deterministic.secret_list_secs),
            )),
            None => Arc::new(secrets::FileSecretStore::new(
                config.resolve(&config.deterministic.secrets_file),
            )),
        };
        service = service.with_secret_store(
            secret_store,
            std::time::Duration::from_secs(config.deterministic.secret_cache_secs),
            std::time::Duration::from_secs(config.deterministic.secret_hold_secs),
        );
        if let Some(audit) = &config.audit {
            let instance = audit.instance.clone().unwrap_or_else(default_instance);
            let spool_dir = config.resolve(&audit.spool_dir);
            let key_file = audit
                .signing_key_file
                .as_ref()
                .map_or_else(|| spool_dir.join("audit-signing.key"), |f| config.resolve(f));
            let signer = keyhold_audit::checkpoint::CheckpointSigner::load_or_create(&key_file)
                .map_err(ProxyError::AuditKey)?;
            let options = keyhold_audit::spool::SpoolOptions {
                queue_capacity: audit.queue_capacity,
                signer: Some(std::sync::Arc::new(signer)),
                checkpoint_interval: std::time::Duration::from_millis(audit.checkpoint_interval_ms),
                checkpoint_every: audit.checkpoint_every,
                instance: instance.clone(),
                segment_bytes: audit.segment_bytes,
                delete_delivered: audit.delete_delivered,
                commit_window: std::time::Duration::from_micros(audit.commit_window_us),
                sync: audit.durability == config::Durability::Synced,
            };
            let spool =
                keyhold_audit::Spool::open_with(&spool_dir, options).map_err(ProxyError::Audit)?;
            admin_audit = Some((Arc::clone(&spool), instance.clone()));
            let targets = audit_targets(config, audit, &instance)?;
            let delivery = keyhold_audit::Delivery::start(
                &spool,
                targets,
                keyhold_audit::DeliveryOptions {
                    retry_max: std::time::Duration::from_millis(audit.retry_max_ms),
                    ..Default::default()
                },
            )
            .map_err(ProxyError::Audit)?;
            let limit = (audit.when_full == config::WhenFull::Refuse).then_some(audit.max_backlog);
            service = service
                .with_audit(spool, instance)
                .with_kms_failure_interval(std::time::Duration::from_millis(
                    audit.kms_failure_interval_ms,
                ))
                .with_delivery(delivery, limit)
                .with_shutdown_delivery(std::time::Duration::from_millis(
                    audit.shutdown_delivery_ms,
                ));
        }
        let service = Arc::new(service);
        if let Some((client, keystore, first)) = from_broker {
            let mut sinks = None;
            if let Some((spool, instance)) = admin_audit {
                let mut broker_sinks = broker::BrokerSinks::new(
                    Arc::clone(&spool),
                    instance.clone(),
                    config,
                    client.allow_local_paths,
                );
                if let Some(snapshot) = &first {
                    for problem in broker_sinks.apply(snapshot, client.fleet()) {
                        tracing::error!(%problem, "an audit sink from the broker cannot be used");
                    }
                }
                sinks = Some(broker_sinks);
                tokio::spawn(admin_events(
                    Arc::clone(&client),
                    spool,
                    instance,
                    Arc::downgrade(&service),
                ));
            }
            tokio::spawn(kms_usage_reports(Arc::clone(&client), Arc::downgrade(&service)));
            tokio::spawn(broker_poll(
                config.clone(),
                client,
                keystore,
                first.map(|s| s.version),
                sinks,
                Arc::downgrade(&service),
                Arc::clone(&health),
            ));
        }
        Ok(Self {
            service,
            api_keys: auth::ApiKeys::new(&config.api_keys()?),
            metrics,
            health,
            max_body_bytes: config.max_body_bytes,
        })
    }
}

/// One delivery target per tenant and sink: the tenant's own sinks and the vendor's.
fn audit_targets(
    config: &ProxyConfig,
    audit: &config::AuditConfig,
    instance: &str,
) -> Result<Vec<keyhold_audit::Target>, ProxyError> {
    let mut targets = Vec::new();
    for tenant in &config.tenants {
        for entry in audit.vendor_sinks.iter().chain(&tenant.audit_sinks) {
            let credential = entry
                .secret
                .as_ref()
                .map(|secret| secret.load(&config.base_dir))
                .transpose()
                .map_err(|e| ProxyError::AuditSink(entry.name.clone(), e.to_string()))?;
            let context = keyhold_audit::sink::SinkContext {
                base_dir: &config.base_dir,
                instance,
                tenant: &tenant.id,
            };
            let sink = keyhold_audit::sink::build(&entry.settings, credential, &context)
                .map_err(|e| ProxyError::AuditSink(entry.name.clone(), e.to_string()))?;
            targets.push(keyhold_audit::Target {
                tenant: tenant.id.clone(),
                name: entry.name.clone(),
                sink,
            });
        }
    }
    Ok(targets)
}

/// This proxy's name in audit events when the configuration gives none.
fn default_instance() -> String {
    std::env::var("KEYHOLD_INSTANCE")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "keyhold-proxy".to_owned())
}

/// The first registry of a proxy configured from a broker: the broker's snapshot if it answers
/// at once, else the cached one, else none (the proxy is then not ready until one arrives).
async fn broker_first_registry(
    config: &ProxyConfig,
    client: &broker::BrokerClient,
    keystore: Option<Arc<keyhold_kms::local::Keystore>>,
) -> (registry::TenantRegistry, Option<keyhold_core::snapshot::ConfigSnapshot>) {
    let cached = client.load_cache();
    let known = cached.as_ref().map(|(_, s)| s.version);
    let fresh = match client.fetch(known, std::time::Duration::ZERO).await {
        Ok(Some((signed, snapshot))) if known.is_none_or(|k| snapshot.version > k) => {
            if let Err(e) = client.store_cache(&signed) {
                tracing::warn!(error = %e, "cannot keep the broker snapshot on disk");
            }
            Some(snapshot)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, cached = known, "no snapshot from the broker at start; serving the cached one if any");
            None
        }
    };
    let Some(snapshot) = fresh.or(cached.map(|(_, s)| s)) else {
        tracing::warn!("no tenant configuration yet: not ready until the broker answers");
        return (registry::TenantRegistry::default(), None);
    };
    let tenants = broker::prepare(&snapshot, client.fleet(), client.allow_local_paths);
    let (registry, problems) =
        registry::TenantRegistry::from_broker(config, tenants, keystore, None).await;
    for problem in problems {
        tracing::error!(version = snapshot.version, %problem, "a KMS configuration from the broker cannot be used");
    }
    tracing::info!(
        version = snapshot.version,
        tenants = registry.len(),
        "configuration from the broker"
    );
    (registry, Some(snapshot))
}

/// Follows the broker: long polls for newer snapshots and swaps each in. Ends when the
/// service is dropped.
async fn broker_poll(
    config: ProxyConfig,
    client: Arc<broker::BrokerClient>,
    keystore: Option<Arc<keyhold_kms::local::Keystore>>,
    mut version: Option<u64>,
    mut sinks: Option<broker::BrokerSinks>,
    service: std::sync::Weak<service::KeyService>,
    health: Arc<Health>,
) {
    let mut failures = 0u32;
    loop {
        let result = client.fetch(version, client.poll_interval).await;
        let Some(service) = service.upgrade() else { return };
        match result {
            Ok(None) => failures = 0,
            Ok(Some((signed, snapshot))) => {
                failures = 0;
                if let Some(current) = version.filter(|&v| snapshot.version <= v) {
                    if snapshot.version < current {
                        let e = broker::BrokerError::Older { offered: snapshot.version, current };
                        tracing::error!(error = %e, "broker snapshot refused");
                        service.metrics().broker_snapshots_refused.inc();
                    }
                    tokio::time::sleep(client.poll_interval).await;
                    continue;
                }
                let tenants = broker::prepare(&snapshot, client.fleet(), client.allow_local_paths);
                let previous = service.registry();
                let (registry, problems) = registry::TenantRegistry::from_broker(
                    &config,
                    tenants,
                    keystore.clone(),
                    Some(&previous),
                )
                .await;
                for problem in problems {
                    tracing::error!(version = snapshot.version, %problem, "a KMS configuration from the broker cannot be used");
                }
                service.replace_registry(Arc::new(registry));
                if let Some(sinks) = sinks.as_mut() {
                    for problem in sinks.apply(&snapshot, client.fleet()) {
                        tracing::error!(version = snapshot.version, %problem, "an audit sink from the broker cannot be used");
                    }
                }
                version = Some(snapshot.version);
                service
                    .metrics()
                    .config_version
                    .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
                health.set_awaiting_config(false);
                tracing::info!(
                    version = snapshot.version,
                    "new configuration from the broker applied"
                );
                if let Err(e) = client.store_cache(&signed) {
                    tracing::warn!(error = %e, "cannot keep the broker snapshot on disk");
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if matches!(e, broker::BrokerError::Refused(_)) {
                    service.metrics().broker_snapshots_refused.inc();
                }
                service.metrics().broker_poll_failures.inc();
                // Once per outage is enough in the log; the metric counts every failure.
                if failures == 1 {
                    tracing::warn!(error = %e, version, "cannot get the configuration from the broker; serving the last good one");
                }
                drop(service);
                tokio::time::sleep(client.poll_interval).await;
            }
        }
    }
}

/// Sends the broker, every poll interval (at most 10 s), the EDEKs seen since the last
/// report, so that it can tell per tenant which KMS configurations are still in use. A failed
/// report is sent again with the next one (nothing is lost, counts only grow). Ends when the
/// service is dropped.
async fn kms_usage_reports(
    client: Arc<broker::BrokerClient>,
    service: std::sync::Weak<service::KeyService>,
) {
    let pause = client.poll_interval.min(std::time::Duration::from_secs(10));
    let mut failing = false;
    loop {
        tokio::time::sleep(pause).await;
        let Some(service) = service.upgrade() else { return };
        let usage = Arc::clone(service.usage());
        drop(service);
        loop {
            let deltas = usage.deltas(1000);
            if deltas.is_empty() {
                break;
            }
            match client.report_kms_usage(&deltas).await {
                Ok(()) => {
                    usage.acknowledge(&deltas);
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot report KMS usage to the broker yet; retrying");
                    }
                    failing = true;
                    break;
                }
            }
        }
    }
}

/// Records the broker's changes (admin events) and the E2E service's events in the tenants'
/// audit trails, while this proxy holds the broker's lease of each feed (one proxy at a time
/// does; the two feeds have their own leases and cursors). A record is acknowledged only once
/// its event is synced in the spool. Ends when the service is dropped.
async fn admin_events(
    client: Arc<broker::BrokerClient>,
    spool: Arc<keyhold_audit::Spool>,
    instance: String,
    service: std::sync::Weak<service::KeyService>,
) {
    let pause = client.poll_interval.min(std::time::Duration::from_secs(5));
    let mut failing = [false; broker::BrokerFeed::ALL.len()];
    loop {
        if service.strong_count() == 0 {
            return;
        }
        let mut more = false;
        for (feed, failing) in broker::BrokerFeed::ALL.into_iter().zip(failing.iter_mut()) {
            match spool_feed(&client, &spool, &instance, feed).await {
                Ok(delivered) => {
                    // A full batch may have more behind it: go on at once.
                    more |= delivered;
                    *failing = false;
                }
                Err(e) => {
                    if !*failing {
                        tracing::warn!(error = %e, feed = feed.name(), "cannot record the broker's events in the audit trails yet; retrying");
                    }
                    *failing = true;
                }
            }
        }
        if !more {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Claims one batch of `feed`, spools it and acknowledges it; whether there was one.
async fn spool_feed(
    client: &broker::BrokerClient,
    spool: &keyhold_audit::Spool,
    instance: &str,
    feed: broker::BrokerFeed,
) -> Result<bool, String> {
    let Some(records) = client.claim_events(feed, instance).await.map_err(|e| e.to_string())?
    else {
        return Ok(false);
    };
    let Some(last) = records.last().map(|c| c.id) else { return Ok(false) };
    for record in &records {
        spool.append(record.audit_event(feed, instance)).await.map_err(|e| e.to_string())?;
    }
    client.ack_events(feed, instance, last).await.map_err(|e| e.to_string())?;
    tracing::debug!(
        feed = feed.name(),
        count = records.len(),
        up_to = last,
        "broker events recorded in the audit trails"
    );
    Ok(true)
}
