//! Key leasing (docs/leasing.md): master key (in the tenant's KMS) → lease encryption key
//! (LEK, in this process's memory only) → data key.
//!
//! Per tenant KMS configuration, a [`ConfigLeases`] holds the *current* lease, with which new data
//! keys are sealed locally (no KMS call), and a bounded cache of the leases that older EDEKs
//! were sealed with. Every leased EDEK carries its lease key wrapped by the KMS (the ELEK), so
//! any proxy opens it with one KMS call per lease, with no state shared between proxies.
//!
//! - A background task asks the KMS for a new lease every `renew_interval`; requests never wait
//!   for it (only the very first request of a configuration waits for its first lease).
//! - While the KMS cannot be reached, leases keep serving until `max_hold` has passed since the
//!   KMS last answered; then every leased operation fails with "KMS unreachable" (208) until it
//!   answers again.
//! - When the KMS answers a renewal with *denied*, *disabled* or *key invalid*, every lease of the
//!   configuration is dropped at once and leased operations are refused with that answer until a
//!   renewal succeeds. Such an answer to a lease unwrap triggers a renewal at once to confirm it
//!   (the EDEK is the caller's, so it alone must not be able to drop every lease).
//! - A lease seals new keys for at most `max_hold` after the KMS made it.
//! - A lease missing from the cache is unwrapped through the KMS once, however many requests
//!   want it at the same moment (single-flight), and cached (LRU; a lease unused for `max_hold`
//!   expires).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use keyhold_audit::{AuditEvent, EventKind, Spool};
use keyhold_core::edek::{EncryptedDek, LeasedEntry, lease_key_envelope};
use keyhold_core::lease::{LeaseBinding, LeaseCipher, LeaseError, new_lease_id};
use keyhold_core::secret::Dek;
use keyhold_kms::{KeyContext, Kms, KmsError};
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest as _, Sha256};

use crate::error::{KmsOperation, ServiceError};
use crate::kms_call::KmsCallSite;
use crate::metrics::{LeaseCacheLabels, LeaseLabels, Metrics};

/// How leasing behaves for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// How often a new lease is obtained from the KMS (default 5 minutes). Also the longest a
    /// revocation at the KMS takes to be noticed.
    pub renew_interval: Duration,
    /// How long leases keep serving after the KMS last answered (default 1 hour); also how long
    /// a cached lease stays in memory unused.
    pub max_hold: Duration,
    /// Most leases cached per KMS configuration (default 4096).
    pub cache_capacity: u64,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            renew_interval: Duration::from_secs(300),
            max_hold: Duration::from_secs(3600),
            cache_capacity: 4096,
        }
    }
}

/// After a failed renewal, the next attempt comes after at most this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One lease key in memory. Dropping the last reference frees (and cleanses) its key.
#[derive(Debug)]
struct Lease {
    id: i32,
    cipher: LeaseCipher,
    /// The lease key as the KMS wrapped it, in the nested envelope every EDEK sealed under this
    /// lease carries: encoded once here, not for every wrap.
    key_envelope: Vec<u8>,
    digest: [u8; 32],
    obtained: Instant,
}

#[derive(Debug, Default)]
struct LeaseState {
    current: Option<Arc<Lease>>,
    /// When the KMS last answered this configuration successfully.
    last_kms_ok: Option<Instant>,
    /// When a renewal last succeeded.
    last_renewal: Option<Instant>,
    /// Set by a denied/disabled answer; cleared by the next successful KMS answer.
    revoked: Option<KmsError>,
    /// The last renewal failed (renew again sooner).
    failing: bool,
}

/// Why a leased operation failed.
#[derive(Debug)]
pub enum LeaseFailure {
    /// The KMS (or the lease state it left) refused.
    Kms(KmsError),
    /// The sealed data key does not open with its lease.
    Sealed(LeaseError),
}

impl LeaseFailure {
    /// The service error for `operation`.
    pub fn into_service_error(self, operation: KmsOperation) -> ServiceError {
        match self {
            LeaseFailure::Kms(source) => ServiceError::Kms { operation, source },
            LeaseFailure::Sealed(e) => {
                ServiceError::InvalidEdek(format!("provided EDEK was not valid: {e}"))
            }
        }
    }
}

/// The leases of one tenant KMS configuration.
#[derive(Debug)]
pub struct ConfigLeases {
    tenant: String,
    config_id: i32,
    kms: Arc<dyn Kms>,
    policy: LeasePolicy,
    kms_timeout: Duration,
    metrics: Arc<Metrics>,
    state: RwLock<LeaseState>,
    /// Held while the first lease is obtained, so concurrent first requests make one KMS call.
    first_lease: tokio::sync::Mutex<()>,
    // Built on first use: a moka cache allocates its frequency sketch for `cache_capacity` up
    // front (about 32 KiB at the default), which for 10,000 configured tenants that mostly sit
    // idle would be most of the proxy's memory.
    cache: OnceLock<moka::future::Cache<[u8; 32], Arc<Lease>>>,
    renewer_started: AtomicBool,
    /// The `lease_cache{result="hit"}` counter of this configuration, once used.
    cache_hits: OnceLock<Counter>,
    /// The audit spool and this proxy's name, for periodic events.
    audit: OnceLock<(Arc<Spool>, String)>,
}

impl ConfigLeases {
    /// Leases for `tenant`'s configuration `config_id`, served by `kms`.
    pub fn new(
        tenant: &str,
        config_id: i32,
        kms: Arc<dyn Kms>,
        policy: LeasePolicy,
        kms_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tenant: tenant.to_owned(),
            config_id,
            kms,
            policy,
            kms_timeout,
            metrics,
            state: RwLock::new(LeaseState::default()),
            first_lease: tokio::sync::Mutex::new(()),
            cache: OnceLock::new(),
            renewer_started: AtomicBool::new(false),
            cache_hits: OnceLock::new(),
            audit: OnceLock::new(),
        })
    }

    /// A new data key sealed under the current lease, as an EDEK entry.
    pub async fn generate(self: &Arc<Self>) -> Result<(Dek, EncryptedDek), LeaseFailure> {
        let dek = Dek::generate()
            .map_err(|_| LeaseFailure::Kms(KmsError::WrapFailed("no randomness".into())))?;
        let entry = self.seal(&dek).await?;
        Ok((dek, entry))
    }

    /// `dek` sealed under the current lease, as an EDEK entry (rekey).
    pub async fn seal(self: &Arc<Self>, dek: &Dek) -> Result<EncryptedDek, LeaseFailure> {
        self.start_renewer();
        let lease = self.current().await?;
        let binding = self.binding(lease.id);
        let sealed = lease.cipher.seal(dek, &binding).map_err(LeaseFailure::Sealed)?;
        Ok(EncryptedDek::new_leased_in(
            &self.tenant,
            self.config_id,
            lease.id,
            &sealed,
            lease.key_envelope.clone(),
        ))
    }

    /// The data key of a leased EDEK entry of this configuration.
    pub async fn open(self: &Arc<Self>, entry: &LeasedEntry<'_>) -> Result<Dek, LeaseFailure> {
        self.start_renewer();
        self.gate()?;
        let digest: [u8; 32] = Sha256::digest(&entry.wrapped_lease_key).into();
        let cached = match self.current_if(&digest) {
            Some(lease) => Some(lease),
            None => self.cache().get(&digest).await,
        };
        let lease = match cached {
            Some(lease) => {
                self.count_cache("hit");
                lease
            }
            None => {
                self.count_cache("miss");
                let wrapped = entry.wrapped_lease_key.clone();
                let lease_id = entry.lease_id;
                // Boxed: the miss's future (the cache's single flight, the KMS call) would
                // otherwise make every hit's future as large as itself.
                Box::pin(
                    self.cache().try_get_with(digest, self.unwrap_lease(wrapped, lease_id, digest)),
                )
                .await
                .map_err(|e| LeaseFailure::Kms((*e).clone()))?
            }
        };
        lease
            .cipher
            .open(entry.iv, entry.sealed_dek, &self.binding(entry.lease_id))
            .map_err(LeaseFailure::Sealed)
    }

    /// Updates the age gauges (called when metrics are scraped).
    pub fn refresh_gauges(&self) {
        let labels = LeaseLabels { tenant: self.tenant.clone(), config: self.config_id };
        let state = self.read_state();
        let now = Instant::now();
        let age =
            state.current.as_ref().map_or(-1.0, |l| now.duration_since(l.obtained).as_secs_f64());
        let since = state.last_renewal.map_or(-1.0, |t| now.duration_since(t).as_secs_f64());
        self.metrics.lease_key_age.get_or_create(&labels).set(age);
        self.metrics.lease_since_renewal.get_or_create(&labels).set(since);
    }

    /// Obtains a new lease from the KMS now (the renewal task calls this; tests may too).
    pub async fn renew(&self) -> Result<(), KmsError> {
        let result = self
            .kms_call("lease_renew", KmsOperation::Wrap, async {
                self.kms.generate(&KeyContext::lease(&self.tenant, self.config_id)).await
            })
            .await;
        let outcome = result.and_then(|generated| {
            let id = new_lease_id().map_err(|_| KmsError::WrapFailed("no randomness".into()))?;
            Lease::new(id, &generated.dek, &generated.wrapped, &self.tenant, self.config_id)
        });
        match outcome {
            Ok(lease) => {
                let lease = Arc::new(lease);
                self.cache().insert(lease.digest, Arc::clone(&lease)).await;
                {
                    let mut state = self.write_state();
                    state.current = Some(Arc::clone(&lease));
                    state.last_renewal = Some(lease.obtained);
                    state.failing = false;
                }
                tracing::info!(
                    target: "keyhold::audit",
                    tenant = %self.tenant,
                    kms_config_id = self.config_id,
                    lease_id = lease.id,
                    "lease renewed"
                );
                self.periodic_event("lease_renewed", 0, Some(lease.id)).await;
                Ok(())
            }
            Err(error) => {
                self.write_state().failing = true;
                if revokes(&error) {
                    self.revoke(&error);
                }
                let code =
                    ServiceError::Kms { operation: KmsOperation::Wrap, source: error.clone() }
                        .code()
                        .code();
                tracing::warn!(
                    target: "keyhold::audit",
                    tenant = %self.tenant,
                    kms_config_id = self.config_id,
                    code,
                    error = %error,
                    "lease renewal failed"
                );
                self.periodic_event("lease_renewal_failed", code, None).await;
                if revokes(&error) {
                    self.periodic_event("leases_dropped", code, None).await;
                }
                Err(error)
            }
        }
    }

    /// Records lease events in the audit spool from now on.
    pub fn set_audit(&self, spool: Arc<Spool>, instance: String) {
        let _ = self.audit.set((spool, instance));
    }

    /// A periodic audit event in the tenant's spool. A failure is logged, not returned: the
    /// renewal's outcome stands either way.
    async fn periodic_event(&self, operation: &str, code: u16, lease_id: Option<i32>) {
        let Some((spool, instance)) = self.audit.get() else { return };
        let mut event = AuditEvent::new(EventKind::Periodic, &self.tenant, operation);
        if code != 0 {
            event.outcome = "refused".to_owned();
        }
        event.code = code;
        event.kms_config_id = Some(self.config_id);
        event.lease_id = lease_id;
        event.proxy = instance.clone();
        if let Err(e) = spool.append(event).await {
            tracing::error!(error = %e, tenant = %self.tenant, "audit spool: a lease event could not be recorded");
        }
    }

    fn binding(&self, lease_id: i32) -> LeaseBinding<'_> {
        LeaseBinding { tenant_id: &self.tenant, kms_config_id: self.config_id, lease_id }
    }

    /// Refuses while revoked, or once the KMS has not answered for longer than `max_hold`.
    fn gate(&self) -> Result<(), LeaseFailure> {
        let state = self.read_state();
        if let Some(revoked) = &state.revoked {
            return Err(LeaseFailure::Kms(revoked.clone()));
        }
        if let Some(ok) = state.last_kms_ok {
            let silent = ok.elapsed();
            if silent > self.policy.max_hold {
                return Err(LeaseFailure::Kms(KmsError::Unreachable(format!(
                    "the KMS has not answered for {} s, longer than the lease hold of {} s",
                    silent.as_secs(),
                    self.policy.max_hold.as_secs()
                ))));
            }
        }
        Ok(())
    }

    fn current_if(&self, digest: &[u8; 32]) -> Option<Arc<Lease>> {
        self.read_state().current.as_ref().filter(|l| &l.digest == digest).cloned()
    }

    /// The lease to seal with: the current one, or (first use only) a new one.
    async fn current(&self) -> Result<Arc<Lease>, LeaseFailure> {
        self.gate()?;
        if let Some(lease) = self.read_state().current.clone() {
            // A lease seals for at most max_hold after the KMS made it, whatever else the KMS
            // still answers: this bounds what one lease key protects (and its random IVs).
            let age = lease.obtained.elapsed();
            if age > self.policy.max_hold {
                return Err(LeaseFailure::Kms(KmsError::Unreachable(format!(
                    "no new lease from the KMS for {} s, longer than the lease hold of {} s",
                    age.as_secs(),
                    self.policy.max_hold.as_secs()
                ))));
            }
            return Ok(lease);
        }
        let _first = self.first_lease.lock().await;
        if let Some(lease) = self.read_state().current.clone() {
            return Ok(lease);
        }
        self.renew().await.map_err(LeaseFailure::Kms)?;
        self.read_state()
            .current
            .clone()
            .ok_or_else(|| LeaseFailure::Kms(KmsError::WrapFailed("no lease".into())))
    }

    async fn unwrap_lease(
        &self,
        wrapped: Vec<u8>,
        lease_id: i32,
        digest: [u8; 32],
    ) -> Result<Arc<Lease>, KmsError> {
        let unwrapped = self
            .kms_call("lease_unwrap", KmsOperation::Unwrap, async {
                self.kms.unwrap(&wrapped, &KeyContext::lease(&self.tenant, self.config_id)).await
            })
            .await;
        let dek = match unwrapped {
            Ok(dek) => dek,
            Err(error) => {
                // The EDEK comes from the caller, who could craft one the KMS denies: confirm
                // with a renewal (the configured key, nothing the request chose) before every
                // lease of the configuration is dropped.
                if revokes(&error) {
                    let _ = self.renew().await;
                }
                return Err(error);
            }
        };
        let lease = Lease::new(lease_id, &dek, &wrapped, &self.tenant, self.config_id)?;
        debug_assert_eq!(lease.digest, digest);
        Ok(Arc::new(lease))
    }

    /// One counted, timed KMS call; its outcome updates the lease state.
    async fn kms_call<T>(
        &self,
        operation: &'static str,
        kind: KmsOperation,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        let site = KmsCallSite {
            metrics: &self.metrics,
            tenant: &self.tenant,
            config_id: self.config_id,
            backend: self.kms.kind(),
            timeout: self.kms_timeout,
        };
        let result = site.call(operation, kind, call).await;
        if result.is_ok() {
            let mut state = self.write_state();
            state.last_kms_ok = Some(Instant::now());
            state.revoked = None;
        }
        result
    }

    /// Drops every lease of the configuration at once.
    fn revoke(&self, error: &KmsError) {
        {
            let mut state = self.write_state();
            state.current = None;
            state.revoked = Some(error.clone());
        }
        if let Some(cache) = self.cache.get() {
            cache.invalidate_all();
        }
        tracing::warn!(
            target: "keyhold::audit",
            tenant = %self.tenant,
            kms_config_id = self.config_id,
            error = %error,
            "leases dropped: the KMS refused access"
        );
    }

    fn cache(&self) -> &moka::future::Cache<[u8; 32], Arc<Lease>> {
        self.cache.get_or_init(|| {
            moka::future::Cache::builder()
                .max_capacity(self.policy.cache_capacity)
                // Idle, not absolute, expiry: a lease in use keeps serving for as long as the
                // hold allows (the gate enforces that); one unused for max_hold is dropped.
                .time_to_idle(self.policy.max_hold)
                .build()
        })
    }

    fn count_cache(&self, result: &'static str) {
        let labels =
            || LeaseCacheLabels { tenant: self.tenant.clone(), config: self.config_id, result };
        if result == "hit" {
            // Nearly every leased unwrap is a hit: keep its counter rather than building the
            // labels and hashing them each time.
            self.cache_hits
                .get_or_init(|| self.metrics.lease_cache.get_or_create(&labels()).clone())
                .inc();
        } else {
            self.metrics.lease_cache.get_or_create(&labels()).inc();
        }
    }

    /// Starts the renewal task on first use (in the caller's runtime). It holds only a weak
    /// reference and ends when the configuration is dropped.
    fn start_renewer(self: &Arc<Self>) {
        if self.renewer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.renewer_started.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let delay = match weak.upgrade() {
                    Some(me) => me.next_delay(),
                    None => return,
                };
                tokio::time::sleep(delay).await;
                let Some(me) = weak.upgrade() else { return };
                // The outcome is in the state, the metrics and the audit log.
                let _ = me.renew().await;
            }
        });
    }

    fn next_delay(&self) -> Duration {
        let state = self.read_state();
        if state.failing || state.revoked.is_some() {
            self.policy.renew_interval.min(RETRY_AFTER_FAILURE)
        } else {
            self.policy.renew_interval
        }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, LeaseState> {
        // A panic while holding the lock cannot leave the state inconsistent (every write is a
        // field assignment), so a poisoned lock is used as is.
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, LeaseState> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Answers after which no lease of the configuration may be used: denied, disabled, or the key
/// is gone (not found, no longer valid).
fn revokes(error: &KmsError) -> bool {
    error.is_revocation() || matches!(error, KmsError::ConfigurationInvalid(_))
}

impl Lease {
    fn new(
        id: i32,
        key: &Dek,
        wrapped: &[u8],
        tenant: &str,
        config_id: i32,
    ) -> Result<Self, KmsError> {
        let cipher = LeaseCipher::new(key)
            .map_err(|_| KmsError::UnwrapFailed("unusable lease key".into()))?;
        let digest = Sha256::digest(wrapped).into();
        let key_envelope = lease_key_envelope(tenant, config_id, wrapped);
        Ok(Self { id, cipher, key_envelope, digest, obtained: Instant::now() })
    }
}

/// Opens a leased entry with its lease key already unwrapped (for tenants whose leasing is
/// off, which unwrap the lease key through the KMS on every call).
pub fn open_with_lease_key(
    lease_key: &Dek,
    tenant: &str,
    config_id: i32,
    entry: &LeasedEntry<'_>,
) -> Result<Dek, LeaseError> {
    let binding =
        LeaseBinding { tenant_id: tenant, kms_config_id: config_id, lease_id: entry.lease_id };
    LeaseCipher::new(lease_key)?.open(entry.iv, entry.sealed_dek, &binding)
}
