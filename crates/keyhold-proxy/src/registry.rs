//! The tenant registry: which tenants this proxy serves and, for each, its KMS configurations.

use std::sync::Arc;

use keyhold_kms::local::{Keystore, KeystoreError, LocalKms, load_root_key};
use keyhold_kms::resilience::ResilientKms;
use keyhold_kms::{ConnectOptions, Kms};

use keyhold_core::secret::{Dek, MasterKeyMaterial};
use keyhold_kms::{KeyContext, KmsError};

use crate::config::{KmsConfigEntry, KmsConfigStatus, KmsSettings, ProxyConfig};
use crate::lease::LeasePolicy;
use crate::metrics::GrantedCounters;

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The local keystore could not be opened.
    #[error("local keystore: {0}")]
    Keystore(#[from] KeystoreError),
    /// A remote KMS configuration cannot be used (bad settings, unreadable credentials).
    #[error("tenant {tenant:?}: KMS configuration {config_id}: {source}")]
    Kms {
        /// The tenant.
        tenant: String,
        /// The configuration.
        config_id: i32,
        /// Why.
        source: keyhold_kms::KmsError,
    },
    /// A configuration names a local key that does not exist.
    #[error(
        "tenant {tenant:?}: KMS configuration {config_id} names local key {key:?}, which is not in the keystore (create it with `keyhold keys create`)"
    )]
    MissingLocalKey {
        /// The tenant.
        tenant: String,
        /// The configuration.
        config_id: i32,
        /// The key name.
        key: String,
    },
}

/// One KMS configuration, ready to use.
#[derive(Debug, Clone)]
pub struct KmsConfig {
    /// The id recorded in EDEKs.
    pub id: i32,
    /// What it may be used for.
    pub status: KmsConfigStatus,
    /// The backend.
    pub kms: Arc<dyn Kms>,
    /// For configurations from the broker: what they were built from (type, settings, sealed
    /// credentials), so an unchanged one keeps its backend and leases across snapshots.
    pub fingerprint: Option<String>,
}

/// One tenant.
#[derive(Debug)]
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    configs: Vec<KmsConfig>,
    /// How the tenant leases keys; `None`: every key goes to the KMS.
    pub lease_policy: Option<LeasePolicy>,
    /// Its counts of granted key operations (runtime state: handles into the metrics, kept
    /// with the tenant so that a request needs no lookup by label).
    granted: GrantedCounters,
}

impl Tenant {
    fn new(id: String, configs: Vec<KmsConfig>, lease_policy: Option<LeasePolicy>) -> Arc<Self> {
        Arc::new(Self { id, configs, lease_policy, granted: GrantedCounters::default() })
    }

    /// The configuration new keys are wrapped with.
    pub fn primary(&self) -> Option<&KmsConfig> {
        self.configs.iter().find(|c| c.status == KmsConfigStatus::Primary)
    }

    /// The configuration with this id, whatever its status.
    pub fn config(&self, id: i32) -> Option<&KmsConfig> {
        self.configs.iter().find(|c| c.id == id)
    }

    /// True if some configuration can unwrap.
    pub fn has_active_config(&self) -> bool {
        self.configs.iter().any(|c| c.status != KmsConfigStatus::Disabled)
    }

    /// All configurations.
    pub fn configs(&self) -> &[KmsConfig] {
        &self.configs
    }

    /// The counter of this tenant's granted `operation` in `metrics` (`None`: an operation
    /// without a kept handle, counted by label).
    pub(crate) fn granted_counter(
        &self,
        metrics: &crate::metrics::Metrics,
        operation: &'static str,
    ) -> Option<&prometheus_client::metrics::counter::Counter> {
        self.granted.get(metrics, &self.id, operation)
    }
}

/// Every tenant this proxy serves, and the local keystore if any.
#[derive(Debug, Default)]
pub struct TenantRegistry {
    /// Looked up on every request: hashed with foldhash rather than SipHash (the keys are
    /// configured tenant ids, which no caller can add to).
    tenants: foldhash::HashMap<String, Arc<Tenant>>,
    keystore: Option<Arc<Keystore>>,
}

impl TenantRegistry {
    /// Builds the registry: opens the keystore and makes a backend per KMS configuration.
    /// Remote backends are wrapped in [`ResilientKms`] (timeouts, retries, circuit breaker).
    pub async fn from_config(config: &ProxyConfig) -> Result<Self, RegistryError> {
        let keystore = open_keystore(config)?;
        let mut tenants = foldhash::HashMap::default();
        for tenant in &config.tenants {
            let mut configs = Vec::new();
            for entry in &tenant.kms_configs {
                let kms = connect(config, &tenant.id, entry, keystore.as_ref()).await?;
                configs.push(KmsConfig {
                    id: entry.id,
                    status: entry.status,
                    kms,
                    fingerprint: None,
                });
            }
            let lease_policy = config.lease_policy(tenant);
            tenants
                .insert(tenant.id.clone(), Tenant::new(tenant.id.clone(), configs, lease_policy));
        }
        Ok(Self { tenants, keystore })
    }

    /// Builds the registry of a broker snapshot's tenants (already converted by
    /// [`crate::broker`]). A configuration whose settings are unchanged since `previous` keeps
    /// its backend (no new connection, and its leases stay valid); one that cannot be built
    /// answers every request with "configuration invalid" (207) and the reason, so one tenant's
    /// mistake never stops the others.
    pub async fn from_broker(
        config: &ProxyConfig,
        tenants: Vec<crate::broker::BrokerTenant>,
        keystore: Option<Arc<Keystore>>,
        previous: Option<&TenantRegistry>,
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let mut registry = foldhash::HashMap::default();
        for tenant in tenants {
            let old = previous.and_then(|p| p.tenant(&tenant.config.id));
            let mut configs = Vec::new();
            for prepared in tenant.kms_configs {
                let reused = old
                    .and_then(|t| t.config(prepared.id))
                    .filter(|c| c.fingerprint.as_deref() == Some(prepared.fingerprint.as_str()))
                    .map(|c| Arc::clone(&c.kms));
                let (kms, built) = match (reused, prepared.entry) {
                    (Some(kms), _) => (kms, true),
                    (None, Ok(entry)) => {
                        match connect(config, &tenant.config.id, &entry, keystore.as_ref()).await {
                            Ok(kms) => (kms, true),
                            Err(e) => {
                                problems.push(e.to_string());
                                (Arc::new(BrokenKms(e.to_string())) as Arc<dyn Kms>, false)
                            }
                        }
                    }
                    (None, Err(reason)) => {
                        let message = format!(
                            "tenant {:?}: KMS configuration {}: {reason}",
                            tenant.config.id, prepared.id
                        );
                        problems.push(message.clone());
                        (Arc::new(BrokenKms(message)) as Arc<dyn Kms>, false)
                    }
                };
                configs.push(KmsConfig {
                    id: prepared.id,
                    status: prepared.status,
                    kms,
                    // A configuration that could not be built is tried again with the next
                    // snapshot (a key created since, a KMS that answers again).
                    fingerprint: built.then_some(prepared.fingerprint),
                });
            }
            let lease_policy = config.lease_policy(&tenant.config);
            let id = tenant.config.id;
            registry.insert(id.clone(), Tenant::new(id, configs, lease_policy));
        }
        (Self { tenants: registry, keystore }, problems)
    }

    /// A registry from ready-made tenants (for embedding and tests), without leasing.
    pub fn from_tenants(tenants: impl IntoIterator<Item = (String, Vec<KmsConfig>)>) -> Self {
        Self::from_tenants_leasing(tenants.into_iter().map(|(id, configs)| (id, configs, None)))
    }

    /// A registry from ready-made tenants, each with its leasing policy.
    pub fn from_tenants_leasing(
        tenants: impl IntoIterator<Item = (String, Vec<KmsConfig>, Option<LeasePolicy>)>,
    ) -> Self {
        Self {
            tenants: tenants
                .into_iter()
                .map(|(id, configs, lease_policy)| {
                    (id.clone(), Tenant::new(id, configs, lease_policy))
                })
                .collect(),
            keystore: None,
        }
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// How many tenants are configured.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// True when no tenant is configured.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The local keystore, if configured.
    pub fn keystore(&self) -> Option<&Arc<Keystore>> {
        self.keystore.as_ref()
    }
}

/// Opens the local keystore, if configured.
pub fn open_keystore(config: &ProxyConfig) -> Result<Option<Arc<Keystore>>, RegistryError> {
    let Some(ks) = &config.local_keystore else { return Ok(None) };
    let root = load_root_key(ks.root_key_file.as_ref().map(|p| config.resolve(p)).as_deref())?;
    let keystore = Keystore::open(config.resolve(&ks.path), root)?;
    keystore.set_check_interval(std::time::Duration::from_millis(ks.reload_interval_ms));
    Ok(Some(Arc::new(keystore)))
}

/// The backend of one KMS configuration. Remote backends are wrapped in [`ResilientKms`].
async fn connect(
    config: &ProxyConfig,
    tenant: &str,
    entry: &KmsConfigEntry,
    keystore: Option<&Arc<Keystore>>,
) -> Result<Arc<dyn Kms>, RegistryError> {
    #[allow(unused_variables)]
    let options = ConnectOptions {
        base_dir: config.base_dir.clone(),
        request_timeout: config.kms_retry_policy().attempt_timeout,
    };
    #[allow(unused_variables)]
    let resilient = |kms: Arc<dyn Kms>| -> Arc<dyn Kms> {
        Arc::new(ResilientKms::new(kms, config.kms_retry_policy(), config.kms_breaker_policy()))
    };
    #[allow(unused_variables)]
    let remote_error =
        |source| RegistryError::Kms { tenant: tenant.to_owned(), config_id: entry.id, source };
    let kms: Arc<dyn Kms> = match (&entry.kms, keystore) {
        (KmsSettings::Local { key }, Some(ks)) => {
            // A key made by `keyhold keys create` since the last use: read the file again.
            if let Err(e) = ks.reload_if_changed() {
                tracing::warn!(error = %e, "cannot re-read the local keystore");
            }
            if ks.info(key).is_none() {
                return Err(RegistryError::MissingLocalKey {
                    tenant: tenant.to_owned(),
                    config_id: entry.id,
                    key: key.clone(),
                });
            }
            Arc::new(LocalKms::new(Arc::clone(ks), key.clone()))
        }
        (KmsSettings::Vendor { key, .. }, _) => {
            let text = key.load(&config.base_dir).map_err(|source| RegistryError::Kms {
                tenant: tenant.to_owned(),
                config_id: entry.id,
                source,
            })?;
            let material =
                MasterKeyMaterial::from_base64(&text).map_err(|_| RegistryError::Kms {
                    tenant: tenant.to_owned(),
                    config_id: entry.id,
                    source: KmsError::ConfigurationInvalid(
                        "a vendor key must be 32 bytes in standard base64".into(),
                    ),
                })?;
            Arc::new(LocalKms::single(material))
        }
        (KmsSettings::Local { key }, None) => {
            return Err(RegistryError::MissingLocalKey {
                tenant: tenant.to_owned(),
                config_id: entry.id,
                key: key.clone(),
            });
        }
        #[cfg(feature = "aws")]
        (KmsSettings::Aws(settings), _) => resilient(Arc::new(
            keyhold_kms::aws::AwsKms::connect(settings, &options).await.map_err(remote_error)?,
        )),
        #[cfg(feature = "vault")]
        (KmsSettings::Vault(settings), _) => resilient(Arc::new(
            keyhold_kms::vault::VaultKms::connect(settings, &options)
                .await
                .map_err(remote_error)?,
        )),
        #[cfg(feature = "pkcs11")]
        (KmsSettings::Pkcs11(settings), _) => resilient(Arc::new(
            keyhold_kms::pkcs11::Pkcs11Kms::connect(settings, &options)
                .await
                .map_err(remote_error)?,
        )),
        #[cfg(feature = "kmip")]
        (KmsSettings::Kmip(settings), _) => resilient(Arc::new(
            keyhold_kms::kmip::KmipKms::connect(settings, &options).await.map_err(remote_error)?,
        )),
        #[cfg(feature = "gcp")]
        (KmsSettings::Gcp(settings), _) => resilient(Arc::new(
            keyhold_kms::gcp::GcpKms::connect(settings, &options).await.map_err(remote_error)?,
        )),
        #[cfg(feature = "azure")]
        (KmsSettings::Azure(settings), _) => resilient(Arc::new(
            keyhold_kms::azure::AzureKms::connect(settings, &options)
                .await
                .map_err(remote_error)?,
        )),
    };
    Ok(kms)
}

/// A configuration from the broker that could not be built: every call fails with
/// "configuration invalid" (207) and the reason.
#[derive(Debug)]
struct BrokenKms(String);

#[async_trait::async_trait]
impl Kms for BrokenKms {
    fn kind(&self) -> &'static str {
        "invalid"
    }
    async fn wrap(&self, _dek: &Dek, _context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        Err(KmsError::ConfigurationInvalid(self.0.clone()))
    }
    async fn unwrap(&self, _wrapped: &[u8], _context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        Err(KmsError::ConfigurationInvalid(self.0.clone()))
    }
    async fn health(&self) -> Result<(), KmsError> {
        Err(KmsError::ConfigurationInvalid(self.0.clone()))
    }
}
