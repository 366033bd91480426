//! `key/derive-with-secret-path`: field keys for deterministic encryption, derived from the
//! tenant's secrets (docs/deterministic.md).
//!
//! For each secret path asked for: the tenant's secrets of that path (made with the primary KMS
//! configuration on first use, stored only wrapped), each unwrapped by the KMS that wrapped it
//! (kept in memory for a bounded time), and from each one key per derivation path:
//! `HMAC-SHA512(secret, "<tenant>-<derivation path>")`. The secret of the primary configuration
//! that is not rotated is *current*: new fields are encrypted with it; the others decrypt old
//! fields and make search terms.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhold_audit::EventKind;
use keyhold_core::deterministic::{DERIVATION_SHA512, SECRET_TYPE_DETERMINISTIC, derive_field_key};
use keyhold_core::metadata::RequestMetadata;
use keyhold_core::secret::TenantSecret;
use keyhold_core::wire::{DeriveKeyResponse, DerivedKey, UnavailableSecret};
use keyhold_kms::KeyContext;

use super::{KeyIds, KeyService};
use crate::config::KmsConfigStatus;
use crate::error::{KmsOperation, ServiceError};
use crate::registry::{KmsConfig, Tenant, TenantRegistry};
use crate::secrets::{MAX_SECRET_PATH_LEN, SecretStore, SecretStoreError, StoredSecret};

/// The tenant-secret store and the unwrapped secrets in memory.
#[derive(Debug)]
pub(super) struct Deterministic {
    store: Arc<dyn SecretStore>,
    /// Unwrapped secrets by id, with the tenant and configuration they belong to; kept for the
    /// hold time.
    open: moka::future::Cache<u32, Arc<OpenSecret>>,
    /// How long an unwrapped secret is used without asking the KMS again.
    fresh_for: Duration,
    /// How long past that it is still used while the KMS cannot be reached (an outage, not a
    /// refusal: a disabled or denied key is refused at the next unwrap).
    hold: Duration,
}

#[derive(Debug)]
struct OpenSecret {
    tenant_id: String,
    kms_config_id: i32,
    /// When the KMS last unwrapped (or made) it.
    opened: Instant,
    secret: TenantSecret,
}

impl Deterministic {
    /// After a configuration change (`previous` → `current`): the list of secrets is asked for
    /// again (a rotation through the broker changes it), and an unwrapped secret is dropped
    /// unless its tenant's KMS configuration is the very same backend in both (a configuration
    /// with new settings must unwrap again). A change to one tenant thus no longer sends every
    /// other tenant back to its KMS, nor ends their hold through a KMS outage. A configuration
    /// disabled without other change keeps its backend; it is refused when used.
    pub(super) fn invalidate_changed(&self, previous: &TenantRegistry, current: &TenantRegistry) {
        self.store.invalidate();
        let mut unchanged: HashMap<String, HashSet<i32>> = HashMap::new();
        for tenant in current.tenants() {
            let Some(old) = previous.tenant(&tenant.id) else { continue };
            for config in tenant.configs() {
                if old.config(config.id).is_some_and(|o| Arc::ptr_eq(&o.kms, &config.kms)) {
                    unchanged.entry(tenant.id.clone()).or_default().insert(config.id);
                }
            }
        }
        let dropped = self.open.invalidate_entries_if(move |_, open| {
            !unchanged.get(&open.tenant_id).is_some_and(|ids| ids.contains(&open.kms_config_id))
        });
        if dropped.is_err() {
            // Only if the cache were built without invalidation closures: drop them all.
            self.open.invalidate_all();
        }
    }
}

/// What a derive request asks for, besides its metadata.
#[derive(Debug, Clone, Default)]
pub struct DeriveRequest {
    /// Secret path → derivation paths.
    pub paths: BTreeMap<String, Vec<String>>,
    /// Must be `sha512`.
    pub derivation_type: String,
    /// Must be `deterministic`.
    pub secret_type: String,
}

impl KeyService {
    /// Keeps tenant secrets in `store`; an unwrapped one is used for `fresh_for` without asking
    /// the KMS, and for up to `hold` after that while the KMS is unreachable or throttling.
    pub fn with_secret_store(
        mut self,
        store: Arc<dyn SecretStore>,
        fresh_for: Duration,
        hold: Duration,
    ) -> Self {
        let open = moka::future::Cache::builder()
            .time_to_live(fresh_for.saturating_add(hold))
            .max_capacity(100_000)
            .support_invalidation_closures()
            .build();
        self.deterministic = Some(Deterministic { store, open, fresh_for, hold });
        self
    }

    /// Field keys derived from the tenant's secrets for each secret path and derivation path.
    /// One audit event records the request (its `keys`: how many keys were derived).
    pub async fn derive(
        &self,
        meta: &RequestMetadata,
        request: &DeriveRequest,
    ) -> Result<DeriveKeyResponse, ServiceError> {
        self.admit(&meta.tenant_id)?;
        let mut ids = KeyIds::default();
        let result = self.derive_inner(meta, request, &mut ids).await;
        let keys = match &result {
            Ok(response) => {
                response.derived_keys.values().flat_map(|m| m.values()).map(Vec::len).sum()
            }
            Err(_) => 1,
        };
        self.record(meta, "derive", result.as_ref().err(), keys.max(1), ids).await?;
        result
    }

    async fn derive_inner(
        &self,
        meta: &RequestMetadata,
        request: &DeriveRequest,
        ids: &mut KeyIds,
    ) -> Result<DeriveKeyResponse, ServiceError> {
        self.check_derive_request(request)?;
        let tenant = self.tenant(&meta.tenant_id)?;
        let deterministic = self.deterministic.as_ref().ok_or_else(|| {
            ServiceError::SecretStore("this proxy has no tenant-secret store".into())
        })?;
        let primary = tenant.primary();
        ids.kms_config_id = primary.map(|c| c.id);
        let secret_paths: Vec<String> = request.paths.keys().cloned().collect();
        let stored =
            deterministic.store.list(&tenant.id, &secret_paths).await.map_err(store_error)?;

        let mut response =
            DeriveKeyResponse { has_primary_config: primary.is_some(), ..Default::default() };
        let mut any_secret = false;
        for (secret_path, derivation_paths) in &request.paths {
            let mut of_path: Vec<StoredSecret> =
                stored.iter().filter(|s| &s.secret_path == secret_path).cloned().collect();
            let mut current = None;
            if let Some(primary) = primary {
                match of_path.iter().find(|s| !s.rotated && s.kms_config_id == primary.id) {
                    Some(s) => current = Some(s.id),
                    None => {
                        let made = self
                            .make_secret(deterministic, meta, &tenant, primary, secret_path)
                            .await?;
                        current = Some(made.id);
                        of_path.push(made);
                    }
                }
            }
            // Current first, then newest to oldest: search terms in the order worth trying.
            of_path.sort_by_key(|s| (Some(s.id) != current, Reverse(s.id)));
            of_path.dedup_by_key(|s| s.id);
            let mut usable = Vec::with_capacity(of_path.len());
            for stored in &of_path {
                let is_current = Some(stored.id) == current;
                match self.open_secret(deterministic, &tenant, stored).await {
                    Ok(open) => usable.push((stored.id, is_current, open)),
                    // Without its current secret a path cannot encrypt: say why, as wrap would.
                    Err(e) if is_current => return Err(e),
                    Err(e) => {
                        response.unavailable_secrets.entry(secret_path.clone()).or_default().push(
                            UnavailableSecret {
                                tenant_secret_id: stored.id,
                                code: e.code().code(),
                                message: e.to_string(),
                            },
                        )
                    }
                }
            }
            any_secret |= !usable.is_empty();
            let by_derivation = response.derived_keys.entry(secret_path.clone()).or_default();
            for derivation_path in derivation_paths {
                let keys = usable
                    .iter()
                    .map(|(id, is_current, open)| DerivedKey {
                        derived_key: derive_field_key(&open.secret, &tenant.id, derivation_path),
                        tenant_secret_id: *id,
                        current: *is_current,
                    })
                    .collect();
                by_derivation.insert(derivation_path.clone(), keys);
            }
        }
        // Nothing to give and nothing to make: the tenant must choose a primary configuration.
        if primary.is_none() && !any_secret {
            return Err(ServiceError::NoPrimaryConfig(tenant.id.clone()));
        }
        Ok(response)
    }

    fn check_derive_request(&self, request: &DeriveRequest) -> Result<(), ServiceError> {
        if !request.derivation_type.eq_ignore_ascii_case(DERIVATION_SHA512) {
            return Err(ServiceError::InvalidRequest(format!(
                "derivationType {:?} is not supported; this proxy derives with \"sha512\"",
                request.derivation_type
            )));
        }
        if !request.secret_type.eq_ignore_ascii_case(SECRET_TYPE_DETERMINISTIC) {
            return Err(ServiceError::InvalidRequest(format!(
                "secretType {:?} is not supported; this proxy has \"deterministic\" secrets",
                request.secret_type
            )));
        }
        if request.paths.is_empty() {
            return Err(ServiceError::InvalidRequest(
                "paths must name at least one secret path".into(),
            ));
        }
        let mut count = 0usize;
        for (secret_path, derivation_paths) in &request.paths {
            if secret_path.is_empty() || secret_path.len() > MAX_SECRET_PATH_LEN {
                return Err(ServiceError::InvalidRequest(format!(
                    "a secret path must be 1 to {MAX_SECRET_PATH_LEN} bytes long"
                )));
            }
            if derivation_paths.iter().any(|p| p.len() > MAX_SECRET_PATH_LEN) {
                return Err(ServiceError::InvalidRequest(format!(
                    "a derivation path must be at most {MAX_SECRET_PATH_LEN} bytes long"
                )));
            }
            count = count.saturating_add(derivation_paths.len().max(1));
        }
        self.check_batch_size(count)
    }

    /// Makes a secret for `secret_path` with the primary configuration and stores it. If
    /// another proxy stored one first, that one is used (and ours is dropped unused).
    async fn make_secret(
        &self,
        deterministic: &Deterministic,
        meta: &RequestMetadata,
        tenant: &Tenant,
        primary: &KmsConfig,
        secret_path: &str,
    ) -> Result<StoredSecret, ServiceError> {
        let ctx = KeyContext::tenant_secret(&tenant.id, primary.id, secret_path);
        let generated = self
            .call_kms(
                tenant,
                primary,
                "generate_secret",
                KmsOperation::Wrap,
                primary.kms.generate(&ctx),
            )
            .await?;
        let (stored, created) = deterministic
            .store
            .create(&tenant.id, secret_path, primary.id, &generated.wrapped)
            .await
            .map_err(store_error)?;
        if created {
            let open = OpenSecret {
                tenant_id: tenant.id.clone(),
                kms_config_id: primary.id,
                opened: Instant::now(),
                secret: TenantSecret::from_bytes(*generated.dek.expose_secret()),
            };
            deterministic.open.insert(stored.id, Arc::new(open)).await;
            // The tenant sees in its trail that a secret was made with its key.
            let mut event = self.event(meta, EventKind::Admin, "tenant_secret_create");
            event.kms_config_id = Some(primary.id);
            event.custom = BTreeMap::from([
                ("secretPath".to_owned(), secret_path.to_owned()),
                ("tenantSecretId".to_owned(), stored.id.to_string()),
            ]);
            self.spool(event).await?;
        }
        Ok(stored)
    }

    /// The plaintext of a stored secret: from memory, or unwrapped by the KMS configuration that
    /// wrapped it, which must belong to the tenant and not be disabled.
    async fn open_secret(
        &self,
        deterministic: &Deterministic,
        tenant: &Tenant,
        stored: &StoredSecret,
    ) -> Result<Arc<OpenSecret>, ServiceError> {
        if stored.tenant_id != tenant.id {
            return Err(ServiceError::InvalidEdek(format!(
                "tenant secret {} belongs to another tenant",
                stored.id
            )));
        }
        let config = match tenant.config(stored.kms_config_id) {
            Some(c) if c.status != KmsConfigStatus::Disabled => c,
            Some(c) => return Err(ServiceError::ConfigDisabled(c.id)),
            None => {
                return Err(ServiceError::InvalidEdek(format!(
                    "tenant secret {} was made with KMS configuration {}, which this tenant no longer has",
                    stored.id, stored.kms_config_id
                )));
            }
        };
        let held = deterministic
            .open
            .get(&stored.id)
            .await
            .filter(|open| open.tenant_id == tenant.id && open.kms_config_id == config.id);
        if let Some(open) = &held
            && open.opened.elapsed() < deterministic.fresh_for
        {
            return Ok(Arc::clone(open));
        }
        let ctx = KeyContext::tenant_secret(&tenant.id, config.id, &stored.secret_path);
        let unwrapped = self
            .call_kms(
                tenant,
                config,
                "unwrap_secret",
                KmsOperation::Unwrap,
                config.kms.unwrap(&stored.wrapped, &ctx),
            )
            .await;
        match unwrapped {
            Ok(dek) => {
                let open = Arc::new(OpenSecret {
                    tenant_id: tenant.id.clone(),
                    kms_config_id: config.id,
                    opened: Instant::now(),
                    secret: TenantSecret::from_bytes(*dek.expose_secret()),
                });
                deterministic.open.insert(stored.id, Arc::clone(&open)).await;
                Ok(open)
            }
            // The KMS is away (not refusing): the secret it last gave serves for the hold time,
            // as leases do (docs/leasing.md).
            Err(ServiceError::Kms { source, .. })
                if source.is_transient()
                    && held.as_ref().is_some_and(|open| {
                        open.opened.elapsed()
                            < deterministic.fresh_for.saturating_add(deterministic.hold)
                    }) =>
            {
                tracing::warn!(tenant = %tenant.id, kms_config_id = config.id, tenant_secret_id = stored.id, error = %source, "tenant secret: the KMS is unreachable; serving the secret it last gave within the hold time");
                held.ok_or(ServiceError::Internal)
            }
            Err(e) => {
                // A refusal (or an outage past the hold): forget the secret now.
                deterministic.open.invalidate(&stored.id).await;
                Err(e)
            }
        }
    }
}

fn store_error(e: SecretStoreError) -> ServiceError {
    let (SecretStoreError::Refused(message) | SecretStoreError::Unavailable(message)) = e;
    ServiceError::SecretStore(message)
}
