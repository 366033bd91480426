//! The `aws` backend: a symmetric AWS KMS key (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`).
//!
//! | [`Kms`] call | AWS KMS operation |
//! |---|---|
//! | `generate` | `GenerateDataKey` (`KeySpec = AES_256`) |
//! | `wrap` | `Encrypt` of the 32-byte data key |
//! | `unwrap` | `Decrypt` with `KeyId` set, so a ciphertext of another key is refused (`IncorrectKeyException`) instead of being decrypted by whichever key made it |
//! | `health` | `DescribeKey`: `KeyState` must be `Enabled`, and the key a symmetric encryption key |
//!
//! Every call carries the encryption context
//! `{"keyhold:tenant": <tenant id>, "keyhold:kms-config": <KMS configuration id, decimal>}`
//! built from the [`KeyContext`]: KMS binds it to the ciphertext as authenticated data, so a
//! wrapped key only decrypts with the same tenant and configuration id, and the tenant's key
//! policy can condition access on it (`kms:EncryptionContextKeys`, `kms:EncryptionContext:…`).
//! The wrapped key stored in the EDEK is the KMS `CiphertextBlob`, as is.
//!
//! The SDK client does not retry (its retry config is disabled: the proxy's
//! [`ResilientKms`](crate::resilience::ResilientKms) retries) and its connect, attempt and
//! operation timeouts are [`ConnectOptions::request_timeout`].
//!
//! # Credentials
//!
//! - `access_key_id` + `secret_access_key` (+ `session_token`): static keys of an IAM user (or
//!   temporary keys);
//! - `role_arn` (+ `external_id`): the proxy assumes this role with STS `AssumeRole`, signed with
//!   the static keys if given, else with the default chain below; the credentials are cached and
//!   renewed before they expire;
//! - neither: the SDK's default chain, as built with this crate's trimmed features: environment
//!   variables (`AWS_ACCESS_KEY_ID`, …), the shared `~/.aws/config` / `~/.aws/credentials` files
//!   (static keys, `role_arn` + `source_profile`; *not* `sso_*` or `credential_process`
//!   profiles: those features are off), web identity tokens (EKS IRSA), the ECS container
//!   endpoint and EC2 IMDSv2.
//!
//! # Errors
//!
//! | AWS answer | [`KmsError`] |
//! |---|---|
//! | `DisabledException`, `KMSInvalidStateException` (pending deletion, pending import, unavailable custom key store), `KeyState` ≠ `Enabled` in `DescribeKey` | `KeyDisabled` |
//! | `InvalidCiphertextException`, `IncorrectKeyException`; an empty or over-long ciphertext (refused without a call) | `InvalidCiphertext` |
//! | `NotFoundException`, `InvalidArnException`, `InvalidKeyUsageException`, `InvalidGrantTokenException`, a key that is not a symmetric encryption key; a request that cannot be built; no credentials found | `ConfigurationInvalid` |
//! | `AccessDeniedException`, `UnrecognizedClientException`, `InvalidSignatureException`, `IncompleteSignature`, `InvalidClientTokenId`, `MissingAuthenticationToken`, `SignatureDoesNotMatch`, `ExpiredTokenException`, any other HTTP 401/403; STS refusing `AssumeRole` | `AccessDenied` |
//! | `ThrottlingException`, `Throttling`, `TooManyRequestsException`, `LimitExceededException`, HTTP 429; STS throttling | `Throttled` |
//! | `KMSInternalException`, `KeyUnavailableException`, `DependencyTimeoutException`, other HTTP 5xx, connection failures, timeouts | `Unreachable` |
//! | `OptInRequired`, `SubscriptionRequiredException`, `AccountSuspendedException` (account not signed up or suspended) | `AccountIssue` |
//! | a success answer without the expected fields, or a data key that is not 32 bytes | `WrapFailed` / `UnwrapFailed` |
//! | any other error | `Unreachable` if HTTP 5xx, else `ConfigurationInvalid` |
//!
//! The plaintext data keys are copied out of the SDK's response into wiped-on-drop memory; the
//! SDK's own buffers (HTTP body, base64 decoding) are not wiped.

use std::collections::HashMap;
use std::error::Error as StdError;

use async_trait::async_trait;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::{Credentials, Region};
use aws_sdk_kms::error::{ConnectorError, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyState, KeyUsageType};
use keyhold_core::error_text::chain as error_chain;
use keyhold_core::secret::{Dek, KEY_LEN};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{ConnectOptions, GeneratedKey, KeyContext, KeyPurpose, Kms, KmsError, SecretSource};

/// How an STS `AssumeRole` call failed (inside a [`CredentialsError::ProviderError`]).
type StsError = SdkError<aws_sdk_sts::operation::assume_role::AssumeRoleError>;

/// The encryption context key holding the tenant id.
pub const CONTEXT_TENANT: &str = "keyhold:tenant";
/// The encryption context key holding the KMS configuration id (decimal).
pub const CONTEXT_KMS_CONFIG: &str = "keyhold:kms-config";
/// Encryption-context key present (value `lease-key`) only on lease encryption keys.
pub const CONTEXT_PURPOSE: &str = "keyhold:purpose";
/// Encryption-context key of a tenant secret's secret path (deterministic encryption).
pub const CONTEXT_SECRET_PATH: &str = "keyhold:secret-path";

/// The largest ciphertext `Decrypt` accepts.
const MAX_CIPHERTEXT_LEN: usize = 6144;
/// The session name the proxy's `AssumeRole` calls use (visible in the tenant's CloudTrail).
const ROLE_SESSION_NAME: &str = "keyhold-proxy";

/// One AWS KMS key, as configured for a tenant (`type = "aws"`).
///
/// ```toml
/// key_id = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
/// role_arn = "arn:aws:iam::111122223333:role/keyhold-proxy"
/// external_id = "keyhold-tenant-acme"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The KMS key: a key ARN (`arn:aws:kms:<region>:<account>:key/<id>`, multi-region keys
    /// `…:key/mrk-…`), an alias ARN (`…:alias/<name>`), a key id or an alias name
    /// (`alias/<name>`); the last two need `region`. Prefer the key ARN: an alias re-pointed to
    /// another key makes older wrapped keys fail to unwrap.
    pub key_id: String,
    /// The AWS region; optional when `key_id` is an ARN (then it must match the ARN's region).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint than the region's public one (a VPC endpoint, a FIPS endpoint, a test
    /// server), e.g. `https://vpce-0123-abcd.kms.eu-west-1.vpce.amazonaws.com`.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The access key id of static credentials (with `secret_access_key`).
    #[serde(default)]
    pub access_key_id: Option<SecretSource>,
    /// The secret access key of static credentials (with `access_key_id`).
    #[serde(default)]
    pub secret_access_key: Option<SecretSource>,
    /// The session token of temporary static credentials.
    #[serde(default)]
    pub session_token: Option<SecretSource>,
    /// A role to assume with STS before calling KMS (typically in the tenant's account).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy requires (only with `role_arn`).
    #[serde(default)]
    pub external_id: Option<String>,
}

/// Where the key lives, as read from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyLocation {
    key_id: String,
    region: String,
}

impl AwsConfig {
    /// Checks the settings that need no network: the key id's form, the region, which
    /// credentials are given.
    fn validate(&self) -> Result<KeyLocation, KmsError> {
        let invalid = |msg: String| Err(KmsError::ConfigurationInvalid(format!("aws: {msg}")));
        let key_id = self.key_id.trim();
        if key_id.is_empty() || key_id.contains(char::is_whitespace) {
            return invalid(format!("key_id {:?} is not a KMS key id, ARN or alias", self.key_id));
        }
        let arn_region = if key_id.starts_with("arn:") {
            Some(parse_key_arn(key_id).map_err(|msg| {
                KmsError::ConfigurationInvalid(format!("aws: key_id {key_id:?}: {msg}"))
            })?)
        } else {
            None
        };
        let region = match (self.region.as_deref().map(str::trim), arn_region) {
            (Some(""), _) => return invalid("region is empty".into()),
            (Some(region), Some(arn)) if region != arn => {
                return invalid(format!(
                    "region {region:?} differs from the region {arn:?} of key_id (for a \
                     multi-region key, name the replica in {region:?} by its own ARN)"
                ));
            }
            (Some(region), _) => region.to_owned(),
            (None, Some(arn)) => arn.to_owned(),
            (None, None) => {
                return invalid(format!("region is required when key_id {key_id:?} is not an ARN"));
            }
        };
        if !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return invalid(format!("region {region:?} is not an AWS region name"));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return invalid(format!("endpoint_url {url:?} is not an http(s) URL"));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) | (None, Some(_)) => {
                return invalid(
                    "access_key_id and secret_access_key must be given together".into(),
                );
            }
            (None, None) if self.session_token.is_some() => {
                return invalid("session_token needs access_key_id and secret_access_key".into());
            }
            _ => {}
        }
        match &self.role_arn {
            Some(role) => {
                let fields: Vec<&str> = role.split(':').collect();
                let ok = fields.len() == 6
                    && fields.first() == Some(&"arn")
                    && fields.get(2) == Some(&"iam")
                    && fields.get(5).is_some_and(|r| r.starts_with("role/"));
                if !ok {
                    return invalid(format!(
                        "role_arn {role:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
                    ));
                }
            }
            None if self.external_id.is_some() => {
                return invalid("external_id needs role_arn".into());
            }
            None => {}
        }
        Ok(KeyLocation { key_id: key_id.to_owned(), region })
    }
}

/// The region of a KMS key or alias ARN: `arn:<partition>:kms:<region>:<account>:key/<id>` or
/// `…:alias/<name>`.
fn parse_key_arn(arn: &str) -> Result<&str, String> {
    let fields: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = fields.as_slice() else {
        return Err("an ARN has six ':'-separated fields".into());
    };
    if *prefix != "arn" || partition.is_empty() {
        return Err("not an ARN".into());
    }
    if *service != "kms" {
        return Err(format!("an ARN of service {service:?}, not kms"));
    }
    if region.is_empty() {
        return Err("the ARN names no region".into());
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the ARN's account is not a 12-digit account id".into());
    }
    let named = resource.strip_prefix("key/").or_else(|| resource.strip_prefix("alias/"));
    if named.is_none_or(str::is_empty) {
        return Err("the ARN names neither key/<id> nor alias/<name>".into());
    }
    Ok(region)
}

/// A [`Kms`] over one AWS KMS key.
#[derive(Clone)]
pub struct AwsKms {
    client: Client,
    key_id: String,
}

impl core::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwsKms").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl AwsKms {
    /// Validates `config`, reads its credentials and builds the SDK client. Does not contact
    /// AWS (credentials from the default chain or STS are fetched at the first call).
    pub async fn connect(config: &AwsConfig, options: &ConnectOptions) -> Result<Self, KmsError> {
        let location = config.validate()?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(options.request_timeout)
            .operation_attempt_timeout(options.request_timeout)
            .operation_timeout(options.request_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(location.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.trim());
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            let id = id.load(&options.base_dir)?;
            let secret = secret.load(&options.base_dir)?;
            let token = match &config.session_token {
                Some(token) => Some(token.load(&options.base_dir)?),
                None => None,
            };
            loader = loader.credentials_provider(Credentials::new(
                id.as_str(),
                secret.as_str(),
                token.as_ref().map(|t| t.as_str().to_owned()),
                None,
                "keyhold-config",
            ));
        }
        let sdk = loader.load().await;
        let mut kms = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(role) = &config.role_arn {
            let mut provider = AssumeRoleProvider::builder(role.trim())
                .session_name(ROLE_SESSION_NAME)
                .configure(&sdk);
            if let Some(external_id) = &config.external_id {
                provider = provider.external_id(external_id);
            }
            kms = kms.credentials_provider(provider.build().await);
        }
        Ok(Self { client: Client::from_conf(kms.build()), key_id: location.key_id })
    }

    /// The configured key id, ARN or alias.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

fn encryption_context(context: &KeyContext<'_>) -> HashMap<String, String> {
    let mut map = HashMap::from([
        (CONTEXT_TENANT.to_owned(), context.tenant_id.to_owned()),
        (CONTEXT_KMS_CONFIG.to_owned(), context.kms_config_id.to_string()),
    ]);
    // Data keys keep the two-entry context every existing ciphertext was made with.
    match context.purpose {
        KeyPurpose::DataKey => {}
        KeyPurpose::LeaseKey => {
            map.insert(CONTEXT_PURPOSE.to_owned(), "lease-key".to_owned());
        }
        KeyPurpose::TenantSecret => {
            map.insert(CONTEXT_PURPOSE.to_owned(), "tenant-secret".to_owned());
            map.insert(CONTEXT_SECRET_PATH.to_owned(), context.secret_path.to_owned());
        }
    }
    map
}

/// A data key from a KMS plaintext blob, which must hold exactly 32 bytes.
fn dek_from(plaintext: Option<Blob>) -> Option<Dek> {
    let bytes = Zeroizing::new(plaintext?.into_inner());
    Dek::try_from_slice(&bytes).ok().filter(|_| bytes.len() == KEY_LEN)
}

#[async_trait]
impl Kms for AwsKms {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn generate(&self, context: &KeyContext<'_>) -> Result<GeneratedKey, KmsError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(context)))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, Op::Wrap))?;
        let wrapped =
            out.ciphertext_blob.map(Blob::into_inner).filter(|w| !w.is_empty()).ok_or_else(
                || KmsError::WrapFailed("GenerateDataKey returned no ciphertext".into()),
            )?;
        let dek = dek_from(out.plaintext).ok_or_else(|| {
            KmsError::WrapFailed("GenerateDataKey returned no 32-byte plaintext key".into())
        })?;
        Ok(GeneratedKey { dek, wrapped })
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(dek.expose_secret().as_slice()))
            .set_encryption_context(Some(encryption_context(context)))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, Op::Wrap))?;
        out.ciphertext_blob
            .map(Blob::into_inner)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| KmsError::WrapFailed("Encrypt returned no ciphertext".into()))
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        if wrapped.is_empty() || wrapped.len() > MAX_CIPHERTEXT_LEN {
            return Err(KmsError::InvalidCiphertext);
        }
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(encryption_context(context)))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, Op::Unwrap))?;
        dek_from(out.plaintext).ok_or_else(|| {
            KmsError::UnwrapFailed("Decrypt returned no 32-byte plaintext key".into())
        })
    }

    async fn health(&self) -> Result<(), KmsError> {
        let out = self
            .client
            .describe_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, Op::Health))?;
        let meta = out
            .key_metadata
            .ok_or_else(|| KmsError::Unreachable("DescribeKey returned no key metadata".into()))?;
        if meta.key_usage.as_ref().is_some_and(|u| *u != KeyUsageType::EncryptDecrypt)
            || meta.key_spec.as_ref().is_some_and(|s| *s != KeySpec::SymmetricDefault)
        {
            return Err(KmsError::ConfigurationInvalid(format!(
                "aws: key {} is not a symmetric encryption key (usage {:?}, spec {:?})",
                self.key_id, meta.key_usage, meta.key_spec
            )));
        }
        match meta.key_state {
            Some(KeyState::Enabled) => Ok(()),
            Some(state) => Err(KmsError::KeyDisabled(format!(
                "aws: key {} is in state {}",
                self.key_id,
                state.as_str()
            ))),
            None => Err(KmsError::KeyDisabled(format!(
                "aws: DescribeKey gave no state for key {}",
                self.key_id
            ))),
        }
    }
}

/// Which call failed, for answers that are unusable rather than refusals.
#[derive(Debug, Clone, Copy)]
enum Op {
    Wrap,
    Unwrap,
    Health,
}

/// Maps any SDK error of a KMS operation to one [`KmsError`].
fn map_sdk_error<E>(err: SdkError<E>, op: Op) -> KmsError
where
    E: Into<aws_sdk_kms::Error> + ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    if let SdkError::DispatchFailure(_) = &err
        && let Some(credentials) = find_source::<CredentialsError>(&err)
    {
        return map_credentials_error(credentials);
    }
    let detail = format!("aws: {}", error_chain(&err));
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            map_service_error(ctx.into_err().into(), status)
        }
        SdkError::TimeoutError(_) => {
            KmsError::Unreachable("aws: no answer within the request timeout".into())
        }
        SdkError::DispatchFailure(failure) if failure.is_user() => {
            KmsError::ConfigurationInvalid(format!("the request cannot be sent: {detail}"))
        }
        SdkError::DispatchFailure(_) => KmsError::Unreachable(detail),
        SdkError::ResponseError(response) => {
            let status = response.raw().status().as_u16();
            match (status, op) {
                (401 | 403, _) => KmsError::AccessDenied(format!("aws: HTTP {status}")),
                (429, _) => KmsError::Throttled,
                (500.., _) | (_, Op::Health) => {
                    KmsError::Unreachable(format!("aws: unusable answer (HTTP {status})"))
                }
                (_, Op::Wrap) => {
                    KmsError::WrapFailed(format!("aws: unusable answer (HTTP {status})"))
                }
                (_, Op::Unwrap) => {
                    KmsError::UnwrapFailed(format!("aws: unusable answer (HTTP {status})"))
                }
            }
        }
        SdkError::ConstructionFailure(_) => {
            KmsError::ConfigurationInvalid(format!("the request cannot be built: {detail}"))
        }
        _ => KmsError::Unreachable(detail),
    }
}

/// Maps a KMS error answer (HTTP `status`) to one [`KmsError`].
fn map_service_error(err: aws_sdk_kms::Error, status: u16) -> KmsError {
    use aws_sdk_kms::Error as E;
    let code = err.code().unwrap_or("").to_owned();
    let message = err.message().map(|m| format!(": {m}")).unwrap_or_default();
    let name = if code.is_empty() { "error" } else { &code };
    let detail = format!("aws: {name} (HTTP {status}){message}");
    match err {
        E::DisabledException(_) | E::KmsInvalidStateException(_) => KmsError::KeyDisabled(detail),
        E::InvalidCiphertextException(_) | E::IncorrectKeyException(_) => {
            KmsError::InvalidCiphertext
        }
        E::NotFoundException(_)
        | E::InvalidArnException(_)
        | E::InvalidKeyUsageException(_)
        | E::InvalidGrantTokenException(_) => KmsError::ConfigurationInvalid(detail),
        E::LimitExceededException(_) => KmsError::Throttled,
        E::KmsInternalException(_)
        | E::KeyUnavailableException(_)
        | E::DependencyTimeoutException(_) => KmsError::Unreachable(detail),
        // Errors common to all AWS services are not modelled: match on their codes.
        _ => match code.as_str() {
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "IncompleteSignatureException"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "MissingAuthenticationToken"
            | "SignatureDoesNotMatch" => KmsError::AccessDenied(detail),
            "ThrottlingException" | "Throttling" | "TooManyRequestsException" => {
                KmsError::Throttled
            }
            "OptInRequired" | "SubscriptionRequiredException" | "AccountSuspendedException" => {
                KmsError::AccountIssue(detail)
            }
            _ => match status {
                401 | 403 => KmsError::AccessDenied(detail),
                429 => KmsError::Throttled,
                s if s >= 500 => KmsError::Unreachable(detail),
                _ => KmsError::ConfigurationInvalid(detail),
            },
        },
    }
}

/// Credentials that could not be had: none found, STS refused the role or did not answer.
fn map_credentials_error(err: &CredentialsError) -> KmsError {
    let detail = format!("aws: credentials: {}", error_chain(err));
    match err {
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            KmsError::ConfigurationInvalid(detail)
        }
        CredentialsError::ProviderTimedOut(_) => KmsError::Unreachable(detail),
        CredentialsError::ProviderError(_) => match find_source::<StsError>(err) {
            Some(SdkError::ServiceError(ctx)) => {
                let status = ctx.raw().status().as_u16();
                match ctx.err().code() {
                    Some("Throttling" | "ThrottlingException") => KmsError::Throttled,
                    Some("RegionDisabledException") => KmsError::ConfigurationInvalid(detail),
                    _ if status >= 500 => KmsError::Unreachable(detail),
                    _ => KmsError::AccessDenied(detail),
                }
            }
            Some(SdkError::ConstructionFailure(_)) => KmsError::ConfigurationInvalid(detail),
            Some(SdkError::ResponseError(r)) if r.raw().status().as_u16() < 500 => {
                KmsError::AccessDenied(detail)
            }
            // No answer from STS (or an unusable one): an outage, not a refusal.
            Some(_) => KmsError::Unreachable(detail),
            // Another provider of the default chain (web identity, ECS, IMDS) failed.
            None if find_source::<ConnectorError>(err).is_some() => KmsError::Unreachable(detail),
            None => KmsError::AccessDenied(detail),
        },
        _ => KmsError::Unreachable(detail),
    }
}

/// The first error of type `T` in `err`'s chain of sources.
fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> AwsConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn region_comes_from_the_arn_or_the_config() {
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let loc = config(&format!("key_id = {arn:?}")).validate().unwrap();
        assert_eq!(loc.region, "eu-west-1");
        let loc = config(&format!("key_id = {arn:?}\nregion = \"eu-west-1\"")).validate().unwrap();
        assert_eq!(loc.key_id, arn);
        let alias = "arn:aws-cn:kms:cn-north-1:111122223333:alias/tenant";
        assert_eq!(config(&format!("key_id = {alias:?}")).validate().unwrap().region, "cn-north-1");
        let loc = config("key_id = \"alias/tenant\"\nregion = \"us-east-2\"").validate().unwrap();
        assert_eq!(loc, KeyLocation { key_id: "alias/tenant".into(), region: "us-east-2".into() });
    }

    #[test]
    fn bad_settings_are_refused_before_any_call() {
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let bad = [
            "key_id = \"1234abcd-12ab-34cd-56ef-1234567890ab\"".to_owned(),
            "key_id = \"\"\nregion = \"us-east-1\"".to_owned(),
            format!("key_id = {arn:?}\nregion = \"us-east-1\""),
            "key_id = \"arn:aws:s3:::bucket\"".to_owned(),
            "key_id = \"arn:aws:kms:eu-west-1:1111:key/x\"".to_owned(),
            "key_id = \"arn:aws:kms:eu-west-1:111122223333:grant/x\"".to_owned(),
            format!("key_id = {arn:?}\nregion = \"EU WEST\""),
            format!("key_id = {arn:?}\naccess_key_id = \"AKIA\""),
            format!("key_id = {arn:?}\nsession_token = \"t\""),
            format!("key_id = {arn:?}\nexternal_id = \"x\""),
            format!("key_id = {arn:?}\nrole_arn = \"arn:aws:iam::111122223333:user/u\""),
            format!("key_id = {arn:?}\nendpoint_url = \"kms.local\""),
        ];
        for toml in bad {
            let err = config(&toml).validate().unwrap_err();
            assert!(matches!(err, KmsError::ConfigurationInvalid(_)), "{toml}: {err:?}");
        }
        assert!(toml::from_str::<AwsConfig>("key_id = \"k\"\nregion = \"r\"\nkey = 1").is_err());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = config(
            "key_id = \"alias/a\"\nregion = \"us-east-1\"\naccess_key_id = \"AKIAEXAMPLE\"\n\
             secret_access_key = \"wJalrXUtnFEMI-secret\"\nsession_token = \"token-secret\"",
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("wJalr") && !shown.contains("token-secret"), "{shown}");
    }

    #[test]
    fn encryption_context_names_tenant_and_config() {
        let ctx = encryption_context(&KeyContext::new("acme", -7));
        assert_eq!(ctx.get(CONTEXT_TENANT).map(String::as_str), Some("acme"));
        assert_eq!(ctx.get(CONTEXT_KMS_CONFIG).map(String::as_str), Some("-7"));
        assert_eq!(ctx.len(), 2);
    }

    #[test]
    fn modelled_errors_map_by_type() {
        use aws_sdk_kms::Error as E;
        use aws_sdk_kms::types::error as t;
        let variant = |e: KmsError| format!("{e:?}").split('(').next().unwrap().to_owned();
        let cases = [
            (E::DisabledException(t::DisabledException::builder().build()), "KeyDisabled"),
            (
                E::KmsInvalidStateException(t::KmsInvalidStateException::builder().build()),
                "KeyDisabled",
            ),
            (
                E::InvalidCiphertextException(t::InvalidCiphertextException::builder().build()),
                "InvalidCiphertext",
            ),
            (
                E::IncorrectKeyException(t::IncorrectKeyException::builder().build()),
                "InvalidCiphertext",
            ),
            (E::NotFoundException(t::NotFoundException::builder().build()), "ConfigurationInvalid"),
            (
                E::InvalidKeyUsageException(t::InvalidKeyUsageException::builder().build()),
                "ConfigurationInvalid",
            ),
            (E::LimitExceededException(t::LimitExceededException::builder().build()), "Throttled"),
            (E::KmsInternalException(t::KmsInternalException::builder().build()), "Unreachable"),
            (
                E::KeyUnavailableException(t::KeyUnavailableException::builder().build()),
                "Unreachable",
            ),
            (
                E::DependencyTimeoutException(t::DependencyTimeoutException::builder().build()),
                "Unreachable",
            ),
        ];
        for (err, want) in cases {
            let shown = format!("{err:?}");
            assert_eq!(variant(map_service_error(err, 400)), want, "{shown}");
        }
    }

    #[test]
    fn unmodelled_codes_and_statuses_map_by_name() {
        use aws_sdk_kms::error::ErrorMetadata;
        let unhandled = |code: &str, status| {
            let meta = ErrorMetadata::builder().code(code).message("m").build();
            let err = aws_sdk_kms::operation::decrypt::DecryptError::generic(meta);
            map_service_error(err.into(), status)
        };
        assert!(matches!(unhandled("AccessDeniedException", 400), KmsError::AccessDenied(_)));
        assert!(matches!(unhandled("UnrecognizedClientException", 400), KmsError::AccessDenied(_)));
        assert!(matches!(unhandled("ThrottlingException", 400), KmsError::Throttled));
        assert!(matches!(unhandled("SomethingNew", 403), KmsError::AccessDenied(_)));
        assert!(matches!(unhandled("SomethingNew", 503), KmsError::Unreachable(_)));
        assert!(matches!(unhandled("SomethingNew", 400), KmsError::ConfigurationInvalid(_)));
        assert!(matches!(unhandled("OptInRequired", 403), KmsError::AccountIssue(_)));
    }
}
