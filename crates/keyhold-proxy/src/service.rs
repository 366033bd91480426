//! The key service: what each API call does, free of HTTP.
//!
//! Every operation resolves the tenant, picks a KMS configuration, calls the KMS (with a
//! timeout, counted in metrics), and records an audit event. Handlers only parse and render.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use keyhold_core::edek::{EncryptedDek, EncryptedDeks};
use keyhold_core::metadata::{RequestMetadata, validate_tenant_id};
use keyhold_core::secret::Dek;
use keyhold_core::wire::{
    BatchRekeyResponse, BatchUnwrapResponse, BatchWrapResponse, UnwrappedKey, WrappedKey,
};
use keyhold_kms::{KeyContext, KmsError};

use crate::config::{KmsConfigStatus, RekeyConfig};
use crate::error::{KmsOperation, ServiceError};
use crate::kms_usage::KmsUsage;
use keyhold_audit::{AuditEvent, EventKind, Spool};

use crate::kms_call::KmsCallSite;
use crate::lease::{ConfigLeases, open_with_lease_key};
use crate::metrics::{KeyOperationLabels, Metrics};
use crate::registry::{KmsConfig, Tenant, TenantRegistry};

mod derive;
pub use derive::DeriveRequest;

/// Limits the service enforces.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Longest one KMS call may take.
    pub kms_timeout: Duration,
    /// Most ids per batch.
    pub max_batch_size: usize,
    /// KMS calls of one batch in flight at once.
    pub batch_concurrency: usize,
}

/// Wraps, unwraps and rekeys data keys for the tenants of a registry.
#[derive(Debug)]
pub struct KeyService {
    /// The tenants and their leases; replaced whole when the broker sends a new snapshot.
    tenants: arc_swap::ArcSwap<TenantSet>,
    metrics: Arc<Metrics>,
    limits: ServiceLimits,
    /// Where every key access is recorded before it is answered (none: the log only).
    audit: Option<Arc<Spool>>,
    /// This proxy's name in audit events.
    instance: String,
    /// Delivery of the spooled events to the sinks (kept here to keep it running).
    delivery: Option<keyhold_audit::Delivery>,
    /// Refuse a tenant's data operations while this many of its events wait for delivery.
    backlog_limit: Option<u64>,
    /// At shutdown, how long delivery may go on sending what is spooled.
    shutdown_delivery: std::time::Duration,
    /// KMS failures of key accesses, reported as periodic audit events.
    kms_failures: Option<Arc<crate::kms_failures::KmsFailureLog>>,
    /// Which configurations and key versions the EDEKs seen name (rotation tracking).
    usage: Arc<KmsUsage>,
    /// Which cross-tenant rekeys are allowed (default: none).
    rekey_policy: RekeyConfig,
    /// Tenant secrets for deterministic encryption (none: the route answers 401).
    deterministic: Option<derive::Deterministic>,
}

impl KeyService {
    /// A service over `registry`.
    pub fn new(
        registry: Arc<TenantRegistry>,
        metrics: Arc<Metrics>,
        limits: ServiceLimits,
    ) -> Self {
        let set = TenantSet::new(registry, None, &metrics, limits.kms_timeout, None);
        Self {
            tenants: arc_swap::ArcSwap::from_pointee(set),
            metrics,
            limits,
            audit: None,
            instance: String::new(),
            delivery: None,
            shutdown_delivery: std::time::Duration::ZERO,
            backlog_limit: None,
            kms_failures: None,
            usage: Arc::default(),
            rekey_policy: RekeyConfig::default(),
            deterministic: None,
        }
    }

    /// Allows the cross-tenant rekeys of `policy` (rekeys within one tenant are always allowed).
    pub fn with_rekey_policy(mut self, policy: RekeyConfig) -> Self {
        self.rekey_policy = policy;
        self
    }

    /// The EDEKs seen, by tenant, KMS configuration and key version.
    pub fn usage(&self) -> &Arc<KmsUsage> {
        &self.usage
    }

    /// Whether `tenant` is served now (active, with an active configuration).
    pub fn serves(&self, tenant: &str) -> bool {
        self.tenant(tenant).is_ok()
    }

    /// Records every key access in `spool` before answering it; `instance` names this proxy in
    /// the events.
    pub fn with_audit(mut self, spool: Arc<Spool>, instance: String) -> Self {
        for leases in self.tenants.load().leases.values().flat_map(|configs| configs.values()) {
            leases.set_audit(Arc::clone(&spool), instance.clone());
        }
        self.kms_failures = Some(crate::kms_failures::KmsFailureLog::start(
            Arc::clone(&spool),
            instance.clone(),
            Duration::from_secs(60),
        ));
        self.audit = Some(spool);
        self.instance = instance;
        self
    }

    /// Reports KMS failures of key accesses at most once per `interval` per KMS configuration
    /// (after the first, at once; default one minute). Needs [`KeyService::with_audit`] first.
    pub fn with_kms_failure_interval(mut self, interval: Duration) -> Self {
        if let (Some(spool), Some(_)) = (&self.audit, &self.kms_failures) {
            self.kms_failures = Some(crate::kms_failures::KmsFailureLog::start(
                Arc::clone(spool),
                self.instance.clone(),
                interval,
            ));
        }
        self
    }

    /// Delivers the spooled events to the sinks; with `backlog_limit`, a tenant's data
    /// operations are refused while that many of its events wait for a sink (the spool-full
    /// policy `refuse`).
    pub fn with_delivery(
        mut self,
        delivery: keyhold_audit::Delivery,
        backlog_limit: Option<u64>,
    ) -> Self {
        self.delivery = Some(delivery);
        self.backlog_limit = backlog_limit;
        self
    }

    /// At shutdown, lets delivery go on for up to `within` to send what is spooled (default:
    /// not at all).
    pub fn with_shutdown_delivery(mut self, within: std::time::Duration) -> Self {
        self.shutdown_delivery = within;
        self
    }

    /// Refuses a data operation when the tenant's audit backlog is full (see
    /// [`KeyService::with_delivery`]). The refusal itself is logged, not spooled: nothing was
    /// accessed, and spooling it would grow the backlog.
    fn admit(&self, tenant_id: &str) -> Result<(), ServiceError> {
        let (Some(limit), Some(spool)) = (self.backlog_limit, &self.audit) else { return Ok(()) };
        let backlog = spool.backlog(tenant_id);
        if backlog < limit {
            return Ok(());
        }
        self.metrics
            .audit_backlog_refusals
            .get_or_create(&crate::metrics::TenantLabels { tenant: tenant_id.to_owned() })
            .inc();
        tracing::warn!(tenant = %tenant_id, backlog, limit, "audit backlog full: refusing a data operation");
        Err(ServiceError::AuditUnavailable(format!(
            "{backlog} audit events of this tenant wait for delivery to its SIEM (limit {limit}); data operations resume when it catches up"
        )))
    }

    /// Ends the audit trail's part of a shutdown, once requests are done:
    /// 1. signs the end of every stream (a checkpoint now, instead of after the next start,
    ///    which a proxy scaled down for good never has);
    /// 2. lets delivery send what is spooled, for up to the shutdown delivery time;
    /// 3. stops delivery: each sink stores how far it got (a restart resumes there) and closes
    ///    its connection as its protocol says (a syslog TLS receiver gets its close_notify),
    ///    waiting at most `close_within`.
    pub async fn finish_audit(&self, close_within: std::time::Duration) {
        let Some(spool) = &self.audit else { return };
        match tokio::time::timeout(std::time::Duration::from_secs(5), spool.seal()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "audit: cannot sign the end of the streams"),
            Err(_) => tracing::warn!("audit: signing the end of the streams timed out"),
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_delivery;
        let mut undelivered = spool.undelivered();
        if undelivered > 0 && !self.shutdown_delivery.is_zero() {
            tracing::info!(undelivered, "shutting down: delivering the spooled audit events");
        }
        while undelivered > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            undelivered = spool.undelivered();
        }
        if undelivered > 0 {
            tracing::warn!(
                undelivered,
                "audit events not yet delivered at shutdown: they stay in the spool and go out after the next start"
            );
        }
        if !spool.stop_deliveries(close_within).await {
            tracing::warn!(
                within_ms = close_within.as_millis() as u64,
                "audit delivery did not stop in time; its cursors keep the progress stored"
            );
        }
    }

    /// Updates the audit delivery gauges (before metrics are rendered).
    pub fn refresh_audit_gauges(&self) {
        let (Some(delivery), Some(spool)) = (&self.delivery, &self.audit) else { return };
        for status in delivery.status() {
            let labels = crate::metrics::AuditSinkLabels {
                tenant: status.tenant.clone(),
                sink: status.name.clone(),
            };
            let synced = *spool.synced(&status.tenant).borrow();
            let delivered = status.delivered.load(std::sync::atomic::Ordering::Relaxed);
            let undelivered = i64::try_from(synced.saturating_sub(delivered)).unwrap_or(i64::MAX);
            self.metrics.audit_undelivered.get_or_create(&labels).set(undelivered);
            let failures = status.failures.load(std::sync::atomic::Ordering::Relaxed);
            self.metrics
                .audit_delivery_failures
                .get_or_create(&labels)
                .set(i64::try_from(failures).unwrap_or(i64::MAX));
        }
    }

    /// The leases of a tenant's KMS configuration, if the tenant leases keys.
    pub fn leases(&self, tenant_id: &str, config_id: i32) -> Option<Arc<ConfigLeases>> {
        self.tenants.load().leases.get(tenant_id)?.get(&config_id).cloned()
    }

    /// Updates the lease age gauges (before metrics are rendered).
    pub fn refresh_lease_gauges(&self) {
        for leases in self.tenants.load().leases.values().flat_map(|configs| configs.values()) {
            leases.refresh_gauges();
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The registry in use now.
    pub fn registry(&self) -> Arc<TenantRegistry> {
        Arc::clone(&self.tenants.load().registry)
    }

    /// Serves `registry` from now on (a new broker snapshot). Requests in flight finish with
    /// the registry they started with. Leases of configurations whose backend is unchanged
    /// carry over; the others start afresh, and the leases of removed or disabled
    /// configurations are dropped (their renewal tasks end with them).
    pub fn replace_registry(&self, registry: Arc<TenantRegistry>) {
        let audit = self.audit.as_ref().map(|spool| (Arc::clone(spool), self.instance.clone()));
        let previous = self.tenants.load_full();
        let set = TenantSet::new(
            registry,
            Some(&previous),
            &self.metrics,
            self.limits.kms_timeout,
            audit,
        );
        self.metrics.tenants.set(i64::try_from(set.registry.len()).unwrap_or(i64::MAX));
        // A configuration change (new KMS settings, a rotation through the broker) applies to
        // tenant secrets at once, not when caches expire; unchanged tenants keep theirs.
        if let Some(deterministic) = &self.deterministic {
            deterministic.invalidate_changed(&previous.registry, &set.registry);
        }
        self.tenants.store(Arc::new(set));
    }

    /// A new data key and its EDEK, from the tenant's primary KMS configuration.
    pub async fn wrap(&self, meta: &RequestMetadata) -> Result<WrappedKey, ServiceError> {
        self.admit(&meta.tenant_id)?;
        let mut ids = KeyIds::default();
        let result = self.wrap_inner(meta, &mut ids).await;
        self.record(meta, "wrap", result.as_ref().err(), 1, ids).await?;
        result
    }

    /// Wraps, and notes in `ids` what the new EDEK names (for the audit event), from the entry
    /// it is made of rather than by parsing it again.
    async fn wrap_inner(
        &self,
        meta: &RequestMetadata,
        ids: &mut KeyIds,
    ) -> Result<WrappedKey, ServiceError> {
        let tenant = self.tenant(&meta.tenant_id)?;
        let config = primary(&tenant)?;
        ids.kms_config_id = Some(config.id);
        let (wrapped, made) = self.generate_for(&tenant, config).await?;
        *ids = made;
        Ok(wrapped)
    }

    /// A new data key of `config`, its EDEK, and what that EDEK names.
    async fn generate_for(
        &self,
        tenant: &Tenant,
        config: &KmsConfig,
    ) -> Result<(WrappedKey, KeyIds), ServiceError> {
        if let Some(leases) = self.leases(&tenant.id, config.id) {
            let (dek, entry) =
                leases.generate().await.map_err(|e| e.into_service_error(KmsOperation::Wrap))?;
            let ids = KeyIds::of_entry(&entry);
            return Ok((WrappedKey { dek, edek: EncryptedDeks::single(entry).to_base64() }, ids));
        }
        let ctx = KeyContext::new(&tenant.id, config.id);
        let generated = self
            .call_kms(tenant, config, "generate", KmsOperation::Wrap, config.kms.generate(&ctx))
            .await?;
        let edek = envelope(tenant, config, generated.wrapped);
        let ids = KeyIds { kms_config_id: Some(config.id).filter(|id| *id != 0), lease_id: None };
        Ok((WrappedKey { dek: generated.dek, edek: edek.to_base64() }, ids))
    }

    /// The data key inside an EDEK, if it belongs to the tenant and its KMS agrees.
    pub async fn unwrap(&self, meta: &RequestMetadata, edek: &str) -> Result<Dek, ServiceError> {
        self.admit(&meta.tenant_id)?;
        let mut ids = KeyIds::default();
        let result = self.unwrap_inner(meta, edek, &mut ids).await;
        self.record(meta, "unwrap", result.as_ref().err(), 1, ids).await?;
        result
    }

    /// Unwraps, and notes in `ids` what the EDEK names (for the audit event): the EDEK is
    /// parsed once for both.
    async fn unwrap_inner(
        &self,
        meta: &RequestMetadata,
        edek: &str,
        ids: &mut KeyIds,
    ) -> Result<Dek, ServiceError> {
        let tenant = self.tenant(&meta.tenant_id)?;
        let envelope = parse_edek(edek)?;
        *ids = KeyIds::of_envelope(&envelope, &meta.tenant_id);
        self.unwrap_envelope(&tenant, &envelope).await
    }

    async fn unwrap_for(&self, tenant: &Tenant, edek: &str) -> Result<Dek, ServiceError> {
        let envelope = parse_edek(edek)?;
        self.unwrap_envelope(tenant, &envelope).await
    }

    async fn unwrap_envelope(
        &self,
        tenant: &Tenant,
        envelope: &EncryptedDeks,
    ) -> Result<Dek, ServiceError> {
        let (entry, config) = match select_entry(tenant, envelope) {
            Ok(found) => found,
            Err(e) => {
                self.note_unusable(tenant, envelope);
                return Err(e);
            }
        };
        // Parsing validated the leasing fields; this only splits them out.
        let leased = entry
            .lease_parts()
            .map_err(|e| ServiceError::InvalidEdek(format!("provided EDEK was not valid: {e}")))?;
        self.note_usage(tenant, config, entry, leased.as_ref());
        if let Some(parts) = &leased
            && let Some(leases) = self.leases(&tenant.id, config.id)
        {
            return leases
                .open(parts)
                .await
                .map_err(|e| e.into_service_error(KmsOperation::Unwrap));
        }
        // Boxed: the KMS paths' futures are several times the size of the leased path's, and
        // an unboxed future is as large as its largest path, moved and allocated with every
        // request (the common leased unwrap's future went from 5.3 KB to under 1 KB).
        Box::pin(self.unwrap_through_kms(tenant, config, entry, leased)).await
    }

    /// An unwrap that asks the KMS: for a direct EDEK, or a leased one while leasing is off.
    async fn unwrap_through_kms(
        &self,
        tenant: &Tenant,
        config: &KmsConfig,
        entry: &EncryptedDek,
        leased: Option<keyhold_core::edek::LeasedEntry<'_>>,
    ) -> Result<Dek, ServiceError> {
        if let Some(parts) = leased {
            // Leasing is off for this tenant (now): one KMS call for the lease key.
            let lease_key = self
                .call_kms(
                    tenant,
                    config,
                    "lease_unwrap",
                    KmsOperation::Unwrap,
                    config.kms.unwrap(
                        &parts.wrapped_lease_key,
                        &KeyContext::lease(&tenant.id, config.id),
                    ),
                )
                .await?;
            return open_with_lease_key(&lease_key, &tenant.id, config.id, &parts).map_err(|e| {
                ServiceError::InvalidEdek(format!("provided EDEK was not valid: {e}"))
            });
        }
        let ctx = KeyContext::new(&tenant.id, config.id);
        self.call_kms(
            tenant,
            config,
            "unwrap",
            KmsOperation::Unwrap,
            config.kms.unwrap(&entry.encrypted_dek_data, &ctx),
        )
        .await
    }

    /// Counts an EDEK for rotation tracking, with the master key version its KMS ciphertext
    /// names (the lease key's, for a leased EDEK).
    fn note_usage(
        &self,
        tenant: &Tenant,
        config: &KmsConfig,
        entry: &EncryptedDek,
        leased: Option<&keyhold_core::edek::LeasedEntry<'_>>,
    ) {
        let wrapped = leased.map_or(entry.encrypted_dek_data.as_slice(), |parts| {
            parts.wrapped_lease_key.as_slice()
        });
        self.usage.note(&tenant.id, config.id, config.kms.key_version(wrapped));
    }

    /// Counts an EDEK that names one of the tenant's configurations but cannot be used (the
    /// configuration is disabled): that something still depends on a disabled configuration is
    /// exactly what its owner needs to know.
    fn note_unusable(&self, tenant: &Tenant, envelope: &EncryptedDeks) {
        let found = envelope.encrypted_deks.iter().find_map(|entry| {
            let own = entry.tenant_id.is_empty() || entry.tenant_id == tenant.id;
            own.then(|| tenant.config(entry.kms_config_id).map(|c| (entry, c))).flatten()
        });
        if let Some((entry, config)) = found {
            let leased = entry.lease_parts().ok().flatten();
            self.note_usage(tenant, config, entry, leased.as_ref());
        }
    }

    /// One new data key per document id. Tenant-level problems fail the call; KMS failures are
    /// reported per id.
    pub async fn batch_wrap(
        &self,
        meta: &RequestMetadata,
        document_ids: Vec<String>,
    ) -> Result<BatchWrapResponse, ServiceError> {
        self.check_batch_size(document_ids.len())?;
        self.admit(&meta.tenant_id)?;
        let tenant = match self.tenant(&meta.tenant_id) {
            Ok(t) => t,
            Err(e) => {
                self.record(meta, "batch_wrap", Some(&e), document_ids.len(), KeyIds::default())
                    .await?;
                return Err(e);
            }
        };
        let config = match primary(&tenant) {
            Ok(config) => config,
            Err(e) => {
                self.record(meta, "batch_wrap", Some(&e), document_ids.len(), KeyIds::default())
                    .await?;
                return Err(e);
            }
        };
        let tenant = &tenant;
        let mut ids = document_ids;
        ids.sort_unstable();
        ids.dedup();
        let results: Vec<(String, Result<WrappedKey, ServiceError>)> = futures::stream::iter(ids)
            .map(|id| async move {
                let result = self.generate_for(tenant, config).await.map(|(wrapped, _)| wrapped);
                (id, result)
            })
            .buffer_unordered(self.limits.batch_concurrency)
            .collect()
            .await;
        let mut response = BatchWrapResponse::default();
        let mut refused: std::collections::BTreeMap<u16, (ServiceError, usize)> =
            Default::default();
        for (id, result) in results {
            match result {
                Ok(key) => {
                    response.keys.insert(id, key);
                }
                Err(e) => {
                    response.failures.insert(id, e.body());
                    refused.entry(e.code().code()).or_insert((e, 0)).1 += 1;
                }
            }
        }
        // One event per outcome (not per id): a batch's events cost one spool write each.
        for (error, count) in refused.values() {
            self.record(meta, "batch_wrap", Some(error), *count, KeyIds::default()).await?;
        }
        self.record(meta, "batch_wrap", None, response.keys.len(), KeyIds::default()).await?;
        Ok(response)
    }

    /// The data key of each EDEK, by document id; failures are reported per id.
    pub async fn batch_unwrap(
        &self,
        meta: &RequestMetadata,
        edeks: HashMap<String, String>,
    ) -> Result<BatchUnwrapResponse, ServiceError> {
        self.check_batch_size(edeks.len())?;
        self.admit(&meta.tenant_id)?;
        let tenant = match self.tenant(&meta.tenant_id) {
            Ok(t) => t,
            Err(e) => {
                self.record(meta, "batch_unwrap", Some(&e), edeks.len(), KeyIds::default()).await?;
                return Err(e);
            }
        };
        let tenant = &tenant;
        let results: Vec<(String, Result<Dek, ServiceError>)> = futures::stream::iter(edeks)
            .map(|(id, edek)| async move {
                let result = self.unwrap_for(tenant, &edek).await;
                (id, result)
            })
            .buffer_unordered(self.limits.batch_concurrency)
            .collect()
            .await;
        let mut response = BatchUnwrapResponse::default();
        let mut refused: std::collections::BTreeMap<u16, (ServiceError, usize)> =
            Default::default();
        for (id, result) in results {
            match result {
                Ok(dek) => {
                    response.keys.insert(id, UnwrappedKey { dek });
                }
                Err(e) => {
                    response.failures.insert(id, e.body());
                    refused.entry(e.code().code()).or_insert((e, 0)).1 += 1;
                }
            }
        }
        // One event per outcome (not per id): a batch's events cost one spool write each.
        for (error, count) in refused.values() {
            self.record(meta, "batch_unwrap", Some(error), *count, KeyIds::default()).await?;
        }
        self.record(meta, "batch_unwrap", None, response.keys.len(), KeyIds::default()).await?;
        Ok(response)
    }

    /// Unwraps an EDEK of `meta.tenant_id` and wraps its key again with the primary
    /// configuration of `new_tenant_id` (which may be the same tenant, after a key change).
    pub async fn rekey(
        &self,
        meta: &RequestMetadata,
        edek: &str,
        new_tenant_id: &str,
    ) -> Result<WrappedKey, ServiceError> {
        self.admit(&meta.tenant_id)?;
        self.admit(new_tenant_id)?;
        let result = self.rekey_inner(meta, edek, new_tenant_id).await;
        let ids = match &result {
            Ok(wrapped) => KeyIds::of_edek(&wrapped.edek, new_tenant_id),
            Err(_) => KeyIds::of_edek(edek, &meta.tenant_id),
        };
        self.record(meta, "rekey", result.as_ref().err(), 1, ids).await?;
        result
    }

    async fn rekey_inner(
        &self,
        meta: &RequestMetadata,
        edek: &str,
        new_tenant_id: &str,
    ) -> Result<WrappedKey, ServiceError> {
        let (old_tenant, new_tenant) = self.rekey_tenants(meta, new_tenant_id)?;
        let new_config = primary(&new_tenant)?;
        let dek = self.unwrap_for(&old_tenant, edek).await?;
        let edek = self.wrap_existing(&new_tenant, new_config, &dek).await?;
        Ok(WrappedKey { dek, edek })
    }

    /// The two tenants of a rekey, once the policy allows the move. The policy is checked
    /// first: a refused move touches no tenant's KMS and does not tell whether the target
    /// exists.
    fn rekey_tenants(
        &self,
        meta: &RequestMetadata,
        new_tenant_id: &str,
    ) -> Result<(Arc<Tenant>, Arc<Tenant>), ServiceError> {
        validate_tenant_id(new_tenant_id).map_err(|_| {
            ServiceError::InvalidRequest("newTenantId must be 1 to 1024 bytes".into())
        })?;
        if !self.rekey_policy.allows(&meta.tenant_id, new_tenant_id) {
            return Err(ServiceError::RekeyNotAllowed {
                from: meta.tenant_id.clone(),
                to: new_tenant_id.to_owned(),
            });
        }
        Ok((self.tenant(&meta.tenant_id)?, self.tenant(new_tenant_id)?))
    }

    /// Wraps an existing data key for `config` of `tenant`: sealed under a lease key when the
    /// tenant leases keys (no KMS call), else one KMS `wrap`.
    async fn wrap_existing(
        &self,
        tenant: &Tenant,
        config: &KmsConfig,
        dek: &Dek,
    ) -> Result<String, ServiceError> {
        if let Some(leases) = self.leases(&tenant.id, config.id) {
            let entry =
                leases.seal(dek).await.map_err(|e| e.into_service_error(KmsOperation::Wrap))?;
            return Ok(EncryptedDeks::single(entry).to_base64());
        }
        let ctx = KeyContext::new(&tenant.id, config.id);
        let wrapped = self
            .call_kms(tenant, config, "wrap", KmsOperation::Wrap, config.kms.wrap(dek, &ctx))
            .await?;
        Ok(envelope(tenant, config, wrapped).to_base64())
    }

    /// Each EDEK of `meta.tenant_id` wrapped again for the primary configuration of
    /// `new_tenant_id`, by id (a Keyhold extension). Tenant-level problems (the policy, an
    /// unknown tenant, no primary configuration) fail the call; the others are reported per id.
    /// No data key leaves the proxy.
    pub async fn batch_rekey(
        &self,
        meta: &RequestMetadata,
        edeks: HashMap<String, String>,
        new_tenant_id: &str,
    ) -> Result<BatchRekeyResponse, ServiceError> {
        self.check_batch_size(edeks.len())?;
        self.admit(&meta.tenant_id)?;
        self.admit(new_tenant_id)?;
        let tenants = self
            .rekey_tenants(meta, new_tenant_id)
            .and_then(|(old, new)| primary(&new).map(|c| c.id).map(|id| (old, new, id)));
        let (old_tenant, new_tenant, config_id) = match tenants {
            Ok(t) => t,
            Err(e) => {
                self.record(meta, "batch_rekey", Some(&e), edeks.len(), KeyIds::default()).await?;
                return Err(e);
            }
        };
        let config = new_tenant.config(config_id).ok_or(ServiceError::Internal)?;
        let (old_tenant, new_tenant) = (&old_tenant, &new_tenant);
        let results: Vec<(String, Result<String, ServiceError>)> = futures::stream::iter(edeks)
            .map(|(id, edek)| async move {
                let result = match self.unwrap_for(old_tenant, &edek).await {
                    Ok(dek) => self.wrap_existing(new_tenant, config, &dek).await,
                    Err(e) => Err(e),
                };
                (id, result)
            })
            .buffer_unordered(self.limits.batch_concurrency)
            .collect()
            .await;
        let mut response = BatchRekeyResponse::default();
        let mut refused: std::collections::BTreeMap<u16, (ServiceError, usize)> =
            Default::default();
        for (id, result) in results {
            match result {
                Ok(edek) => {
                    response.edeks.insert(id, edek);
                }
                Err(e) => {
                    response.failures.insert(id, e.body());
                    refused.entry(e.code().code()).or_insert((e, 0)).1 += 1;
                }
            }
        }
        // One event per outcome (not per id), as for the other batches.
        for (error, count) in refused.values() {
            self.record(meta, "batch_rekey", Some(error), *count, KeyIds::default()).await?;
        }
        let granted = KeyIds { kms_config_id: Some(config_id), lease_id: None };
        self.record(meta, "batch_rekey", None, response.edeks.len(), granted).await?;
        Ok(response)
    }

    fn tenant(&self, id: &str) -> Result<Arc<Tenant>, ServiceError> {
        // A guard, not an Arc clone of the registry: this runs on every request.
        match self.tenants.load().registry.tenant(id) {
            Some(t) if t.has_active_config() => Ok(Arc::clone(t)),
            _ => Err(ServiceError::UnknownTenant(id.to_owned())),
        }
    }

    fn check_batch_size(&self, n: usize) -> Result<(), ServiceError> {
        if n > self.limits.max_batch_size {
            return Err(ServiceError::InvalidRequest(format!(
                "a batch may hold at most {} ids; this one has {n}",
                self.limits.max_batch_size
            )));
        }
        Ok(())
    }

    async fn call_kms<T>(
        &self,
        tenant: &Tenant,
        config: &KmsConfig,
        operation: &'static str,
        kind: KmsOperation,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, ServiceError> {
        let site = KmsCallSite {
            metrics: &self.metrics,
            tenant: &tenant.id,
            config_id: config.id,
            backend: config.kms.kind(),
            timeout: self.limits.kms_timeout,
        };
        let result = site.call(operation, kind, call).await;
        match result {
            Ok(value) => Ok(value),
            Err(source) => {
                let error = ServiceError::Kms { operation: kind, source };
                // A bad EDEK is the caller's problem, not the KMS failing.
                let kms_failed = !matches!(
                    &error,
                    ServiceError::Kms { source: KmsError::InvalidCiphertext, .. }
                );
                if let (Some(log), true) = (&self.kms_failures, kms_failed) {
                    log.note(&tenant.id, config.id, error.code().code(), &error.to_string()).await;
                }
                Err(error)
            }
        }
    }

    /// Counts `keys` key accesses and records their audit event: in the audit spool, when there
    /// is one, before the caller is answered (an access that cannot be recorded is refused), and
    /// in the log under the `keyhold::audit` target. Events never carry key material.
    async fn record(
        &self,
        meta: &RequestMetadata,
        operation: &'static str,
        error: Option<&ServiceError>,
        keys: usize,
        ids: KeyIds,
    ) -> Result<(), ServiceError> {
        if keys == 0 {
            return Ok(());
        }
        let code = error.map(|e| e.code().code()).unwrap_or(0);
        // Unknown tenants are not used as label values: a caller could otherwise grow the
        // metrics without bound.
        let count = u64::try_from(keys).unwrap_or(u64::MAX);
        let known = {
            let tenants = self.tenants.load();
            let tenant = tenants.registry.tenant(&meta.tenant_id);
            let granted = tenant
                .filter(|_| code == 0)
                .and_then(|t| t.granted_counter(&self.metrics, operation));
            if let Some(counter) = granted {
                counter.inc_by(count);
            } else {
                let label = if tenant.is_some() { &meta.tenant_id } else { "(unknown)" };
                self.metrics
                    .key_operations
                    .get_or_create(&KeyOperationLabels {
                        tenant: label.to_owned(),
                        operation,
                        code,
                    })
                    .inc_by(count);
            }
            tenant.is_some()
        };
        let fields = &meta.icl_fields;
        let outcome = if error.is_none() { "granted" } else { "refused" };
        macro_rules! log_key_access {
            ($level:expr) => {
                tracing::event!(
                    target: "keyhold::audit",
                    $level,
                    tenant = %meta.tenant_id,
                    operation,
                    outcome,
                    code,
                    keys,
                    requesting_id = fields.requesting_id.as_deref().unwrap_or_default(),
                    data_label = fields.data_label.as_deref().unwrap_or_default(),
                    source_ip = fields.source_ip.as_deref().unwrap_or_default(),
                    object_id = fields.object_id.as_deref().unwrap_or_default(),
                    request_id = fields.request_id.as_deref().unwrap_or_default(),
                    "key access"
                )
            };
        }
        // Whether the tenant's trail records this access. Events of unknown tenants stay in the
        // log only: a spool file per made-up tenant id would let any caller create files.
        let recorded = known && self.audit.is_some();
        // A granted access that the trail records is logged at DEBUG only: the trail is the
        // record, and copying every access's metadata into the vendor's own log at INFO spread
        // the tenant's data further and cost a formatted line per request. Refusals, and every
        // access without a trail, stay at INFO.
        if error.is_none() && recorded {
            log_key_access!(tracing::Level::DEBUG);
        } else {
            log_key_access!(tracing::Level::INFO);
        }
        // Without a trail the event is not built at all (its id, time and copied fields were a
        // tenth of a plain unwrap's instructions).
        if !recorded {
            return Ok(());
        }
        let mut event = self.event(meta, EventKind::Data, operation);
        event.outcome = outcome.to_owned();
        event.code = code;
        event.keys = u64::try_from(keys).unwrap_or(u64::MAX);
        event.kms_config_id = ids.kms_config_id;
        event.lease_id = ids.lease_id;
        self.spool(event).await
    }

    /// An event of `kind` with the request's metadata (for the audit spool).
    pub fn event(&self, meta: &RequestMetadata, kind: EventKind, operation: &str) -> AuditEvent {
        let fields = &meta.icl_fields;
        let mut event = AuditEvent::new(kind, &meta.tenant_id, operation);
        event.requesting_id = fields.requesting_id.clone().unwrap_or_default();
        event.data_label = fields.data_label.clone().unwrap_or_default();
        event.source_ip = fields.source_ip.clone().unwrap_or_default();
        event.object_id = fields.object_id.clone().unwrap_or_default();
        event.request_id = fields.request_id.clone().unwrap_or_default();
        event.custom = meta.custom_fields.clone();
        event.proxy = self.instance.clone();
        event
    }

    /// Writes `event` to the audit spool (if there is one) before the caller answers; an event
    /// that cannot be written fails the request.
    pub async fn spool(&self, event: AuditEvent) -> Result<(), ServiceError> {
        let Some(spool) = &self.audit else { return Ok(()) };
        spool.append(event).await.map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "audit spool: an event could not be recorded; refusing the request");
            ServiceError::AuditUnavailable(e.to_string())
        })
    }
}

/// The KMS configuration and lease behind a key access, for its audit event.
#[derive(Debug, Clone, Copy, Default)]
struct KeyIds {
    kms_config_id: Option<i32>,
    lease_id: Option<i32>,
}

impl KeyIds {
    /// What an EDEK names: its entry for `tenant_id` (else its first). Nothing for an EDEK
    /// that does not parse (the event's code says why it was refused).
    fn of_edek(edek: &str, tenant_id: &str) -> Self {
        let Ok(envelope) = EncryptedDeks::from_base64(edek) else { return Self::default() };
        Self::of_envelope(&envelope, tenant_id)
    }

    /// What a parsed EDEK names: its entry for `tenant_id` (else its first).
    fn of_envelope(envelope: &EncryptedDeks, tenant_id: &str) -> Self {
        let entries = &envelope.encrypted_deks;
        let entry = entries.iter().find(|e| e.tenant_id == tenant_id).or_else(|| entries.first());
        entry.map(Self::of_entry).unwrap_or_default()
    }

    /// What one EDEK entry names.
    fn of_entry(entry: &EncryptedDek) -> Self {
        Self {
            kms_config_id: Some(entry.kms_config_id).filter(|id| *id != 0),
            lease_id: Some(entry.leased_key_id).filter(|id| *id != 0),
        }
    }
}

/// An EDEK as the API receives it (base64 of the protobuf envelope), parsed.
fn parse_edek(edek: &str) -> Result<EncryptedDeks, ServiceError> {
    if edek.is_empty() {
        return Err(ServiceError::InvalidRequest("encryptedDocumentKey is required".into()));
    }
    EncryptedDeks::from_base64(edek)
        .map_err(|e| ServiceError::InvalidEdek(format!("provided EDEK was not valid: {e}")))
}

fn primary(tenant: &Tenant) -> Result<&KmsConfig, ServiceError> {
    tenant.primary().ok_or_else(|| ServiceError::NoPrimaryConfig(tenant.id.clone()))
}

fn envelope(tenant: &Tenant, config: &KmsConfig, wrapped: Vec<u8>) -> EncryptedDeks {
    EncryptedDeks::single(EncryptedDek {
        encrypted_dek_data: wrapped,
        kms_config_id: config.id,
        tenant_id: tenant.id.clone(),
        ..EncryptedDek::default()
    })
}

/// Picks the entry of an EDEK this tenant can unwrap: one whose configuration belongs to the
/// tenant and is not disabled.
fn select_entry<'a, 't>(
    tenant: &'t Tenant,
    envelope: &'a EncryptedDeks,
) -> Result<(&'a EncryptedDek, &'t KmsConfig), ServiceError> {
    let mut disabled = None;
    for entry in &envelope.encrypted_deks {
        if !entry.tenant_id.is_empty() && entry.tenant_id != tenant.id {
            return Err(ServiceError::InvalidEdek("the EDEK belongs to a different tenant".into()));
        }
        match tenant.config(entry.kms_config_id) {
            Some(config) if config.status != KmsConfigStatus::Disabled => {
                return Ok((entry, config));
            }
            Some(config) => disabled = Some(config.id),
            None => {}
        }
    }
    match disabled {
        Some(id) => Err(ServiceError::ConfigDisabled(id)),
        None => Err(ServiceError::InvalidEdek(
            "the EDEK was not made with any KMS configuration of this tenant".into(),
        )),
    }
}

/// The tenants a service serves at one moment, with their leases.
#[derive(Debug)]
struct TenantSet {
    registry: Arc<TenantRegistry>,
    /// Leases by tenant and KMS configuration, for tenants that lease keys. Looked up on every
    /// leased request, so hashed with foldhash rather than SipHash: the keys are configured
    /// tenant ids, which no caller can add to.
    leases: foldhash::HashMap<String, foldhash::HashMap<i32, Arc<ConfigLeases>>>,
}

impl TenantSet {
    fn new(
        registry: Arc<TenantRegistry>,
        previous: Option<&TenantSet>,
        metrics: &Arc<Metrics>,
        kms_timeout: Duration,
        audit: Option<(Arc<Spool>, String)>,
    ) -> Self {
        let mut leases: foldhash::HashMap<String, foldhash::HashMap<i32, Arc<ConfigLeases>>> =
            foldhash::HashMap::default();
        for tenant in registry.tenants() {
            let Some(policy) = tenant.lease_policy else { continue };
            for config in tenant.configs() {
                if config.status == KmsConfigStatus::Disabled {
                    continue;
                }
                // The same backend and policy: the leases (and their renewal) carry over.
                let kept = previous
                    .and_then(|p| Some((p.registry.tenant(&tenant.id)?, p.leases.get(&tenant.id)?)))
                    .filter(|(old, _)| old.lease_policy == Some(policy))
                    .and_then(|(old, old_leases)| {
                        let old_config = old.config(config.id)?;
                        let same = Arc::ptr_eq(&old_config.kms, &config.kms);
                        same.then(|| old_leases.get(&config.id).cloned()).flatten()
                    });
                let config_leases = kept.unwrap_or_else(|| {
                    let fresh = ConfigLeases::new(
                        &tenant.id,
                        config.id,
                        Arc::clone(&config.kms),
                        policy,
                        kms_timeout,
                        Arc::clone(metrics),
                    );
                    if let Some((spool, instance)) = &audit {
                        fresh.set_audit(Arc::clone(spool), instance.clone());
                    }
                    fresh
                });
                leases.entry(tenant.id.clone()).or_default().insert(config.id, config_leases);
            }
        }
        Self { registry, leases }
    }
}
