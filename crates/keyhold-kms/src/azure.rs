//! The `azure` backend: an Azure Key Vault RSA key or a Managed HSM AES key, over the Key Vault
//! REST API (api-version 7.4).
//!
//! **Contract-tested, not run against the real service.** Nothing Azure-like can be installed on
//! a test machine: the tests serve HTTP exchanges written from the public REST reference (the
//! request and response shapes quoted below) from a local server that checks every request and
//! does real RSA-OAEP-256 and AES key wrap, so the round trip and the tamper and wrong-context
//! checks are real cryptography; but Key Vault's own behaviour (its exact error bodies, its
//! limits, Entra ID's token rules) is taken from documentation, not observed. See
//! `docs/kms/azure.md`.
//!
//! # What it does
//!
//! - **Auth**: Microsoft Entra ID's OAuth 2.0 client-credentials grant
//!   (<https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow>):
//!   `POST {authority}/{tenant}/oauth2/v2.0/token` with `client_id`, `client_secret`,
//!   `scope=https://vault.azure.net/.default` (Managed HSM: `https://managedhsm.azure.net/.default`)
//!   and `grant_type=client_credentials`; the access token is cached until shortly before its
//!   `expires_in` and fetched again once when Key Vault answers 401.
//! - **wrap**: `POST {key_id}/wrapkey?api-version=7.4` with `{"alg": ..., "value": base64url}`
//!   (<https://learn.microsoft.com/rest/api/keyvault/keys/wrap-key/wrap-key>). The answer's `kid`
//!   (the key id *with* its version) is stored in the wrapped key so that unwrap uses exactly
//!   that version, also after the key was rotated. A versionless `key_id` wraps with the key's
//!   current version: the 7.4 reference marks the version segment as required, but the service
//!   accepts a versionless id (reported in Azure/azure-sdk-for-java#24444; HashiCorp Vault's
//!   Azure Key Vault seal sends an empty version; Azure/azure-rest-api-specs#42571 makes the
//!   version optional for wrapKey in the Rust SDK's API description).
//! - **unwrap**: `POST {kid}/unwrapkey?api-version=7.4` with the same shape
//!   (<https://learn.microsoft.com/rest/api/keyvault/keys/unwrap-key/unwrap-key>). The `kid` from
//!   the wrapped key must name the configured vault and key (any version): a wrapped key can
//!   never send the data key, or our token, anywhere else.
//! - **health**: `GET {key_id}?api-version=7.4`: `attributes.enabled`, the validity period, and
//!   that the key allows `wrapKey` and `unwrapKey` with the configured algorithm.
//!
//! # Binding the context
//!
//! RSA-OAEP and AES key wrap take no associated data, so the backend wraps
//! `DEK ‖ SHA-256(KeyContext::associated_data())` (64 bytes; RSA-OAEP-256 with a 2048-bit key
//! takes up to 190) and, after unwrapping, compares the hash with the expected context's in
//! constant time. This is sound because both schemes are authenticated against the party who
//! can change a wrapped key: RSA-OAEP is IND-CCA2 and hence non-malleable, so no change to a
//! ciphertext yields a related plaintext (the same DEK with another hash); AES key wrap
//! (RFC 3394) is a deterministic authenticated encryption whose integrity check fails on any
//! change. A wrapped key made for one context therefore opens only with that context's hash.
//! What RSA does *not* give: whoever holds the RSA *public* key (anyone with `keys/get` on the
//! key) can make a valid wrapped key for any context and a data key of their choosing. Only a
//! Managed HSM AES key (A256KW) makes wrapped keys that only the HSM can produce.
//!
//! # Wrapped key layout
//!
//! ```text
//! format (1 byte: 1 = RSA-OAEP-256, 2 = A256KW) ‖ u16be len(kid) ‖ kid (UTF-8) ‖ wrapped value
//! ```
//!
//! # Errors
//!
//! Key Vault answers errors as `{"error": {"code": "...", "message": "...", "innererror":
//! {"code": "..."}}}` (`KeyVaultError`, `specification/keyvault/data-plane/.../7.4/common.json`
//! in Azure/azure-rest-api-specs). First matching row wins:
//!
//! | answer | [`KmsError`] |
//! |---|---|
//! | an error code or inner code naming the subscription (`SubscriptionNotFound`, `…DisabledSubscription`) | `AccountIssue` |
//! | 401 (after one token refresh) | `AccessDenied` |
//! | 403 with inner code `KeyDisabled` or a message about a disabled key (`Operation wrapKey is not allowed on a disabled key.`), an expired or not-yet-valid key | `KeyDisabled` |
//! | other 403 (`Forbidden`: no `wrapKey`/`unwrapKey` permission, RBAC, firewall) | `AccessDenied` |
//! | 404 (`KeyNotFound`) | `ConfigurationInvalid`; on unwrap, when the configured key itself still answers a GET, `InvalidCiphertext` (the wrapped key names a version that does not exist) |
//! | 400 (`BadParameter`) on unwrap (a value that does not decrypt) | `InvalidCiphertext` |
//! | 400 on wrap or get (e.g. an algorithm the key does not support) | `ConfigurationInvalid` |
//! | 409 about a key being deleted | `KeyDisabled` |
//! | 429 | `Throttled` |
//! | 5xx; connection refused, timeout | `Unreachable` |
//! | token endpoint: `invalid_client` (bad secret), `unauthorized_client` (no such app), `invalid_grant`, `access_denied` | `AccessDenied` |
//! | token endpoint: `invalid_request` (e.g. no such tenant), `invalid_scope`, `unsupported_grant_type` | `ConfigurationInvalid` |
//! | a success answer naming another key or vault, or with an impossible value | `WrapFailed` / `UnwrapFailed` |
//! | a wrapped key that is malformed, names another vault or key, or whose context hash differs | `InvalidCiphertext` |
//! | anything else | `WrapFailed` / `UnwrapFailed` (health: `ConfigurationInvalid`) |
//!
//! Secrets: the client secret, access tokens, the form carrying the secret, request bodies
//! carrying a data key and unwrapped answers are kept in `Zeroizing` buffers; the copies the HTTP
//! stack (reqwest/hyper) makes of bodies are not wiped.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE_NO_PAD, URL_SAFE_NO_PAD_INDIFFERENT};
use keyhold_core::secret::{Dek, KEY_LEN, constant_time_eq};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::oauth::{BearerClient, TokenGrant, excerpt, http_base};
use crate::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};

const API_VERSION: &str = "7.4";
/// What is wrapped: the data key and the SHA-256 of the context.
const PLAIN_LEN: usize = KEY_LEN + 32;
/// AES key wrap adds one 8-byte block.
const A256KW_LEN: usize = PLAIN_LEN + 8;
/// RSA-OAEP ciphertexts are as long as the modulus: 2048 to 8192 bits here.
const RSA_LEN: core::ops::RangeInclusive<usize> = 256..=1024;
const MAX_KID_LEN: usize = 1024;

/// One Key Vault or Managed HSM key, as written in a `[[tenants.kms_configs]]` entry with
/// `type = "azure"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// The key's id: `https://{vault}.vault.azure.net/keys/{name}` or
    /// `https://{hsm}.managedhsm.azure.net/keys/{name}`, optionally with `/{version}` to pin
    /// one version (otherwise wraps use the current version). Azure China and US Government
    /// hosts (`vault.azure.cn`, `vault.usgovcloudapi.net`, and their `managedhsm` twins) work too.
    pub key_id: String,
    /// The Microsoft Entra tenant (directory) id of the app registration.
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// The app registration's client secret (the secret's *value*).
    pub client_secret: SecretSource,
    /// `RSA-OAEP-256` (default for vault keys: an RSA key) or `A256KW` (default for Managed HSM
    /// keys: an AES-256 key).
    #[serde(default)]
    pub algorithm: Option<AzureAlgorithm>,
    /// The Entra ID authority (default by cloud: `https://login.microsoftonline.com`,
    /// `https://login.chinacloudapi.cn`, `https://login.microsoftonline.us`). `http://` only to a
    /// loopback address (tests).
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Send Key Vault requests to this base URL instead of the key id's host (private endpoints
    /// reached under another name, tests). Key ids in answers must still name the configured
    /// vault. `http://` only to a loopback address.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// How the data key is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AzureAlgorithm {
    /// RSA-OAEP with SHA-256 and MGF1-SHA-256, with an RSA key (Key Vault, or Managed HSM RSA-HSM).
    #[serde(rename = "RSA-OAEP-256")]
    RsaOaep256,
    /// AES-256 key wrap (RFC 3394), with a Managed HSM AES-256 key (`oct-HSM`).
    #[serde(rename = "A256KW")]
    A256Kw,
}

impl AzureAlgorithm {
    /// The JWA name Key Vault expects in `alg`.
    pub fn jwa(self) -> &'static str {
        match self {
            Self::RsaOaep256 => "RSA-OAEP-256",
            Self::A256Kw => "A256KW",
        }
    }

    fn format_byte(self) -> u8 {
        match self {
            Self::RsaOaep256 => 1,
            Self::A256Kw => 2,
        }
    }

    fn from_format_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::RsaOaep256),
            2 => Some(Self::A256Kw),
            _ => None,
        }
    }

    fn value_len_ok(self, len: usize) -> bool {
        match self {
            Self::RsaOaep256 => RSA_LEN.contains(&len),
            Self::A256Kw => len == A256KW_LEN,
        }
    }

    fn key_types(self) -> &'static [&'static str] {
        match self {
            Self::RsaOaep256 => &["RSA", "RSA-HSM"],
            Self::A256Kw => &["oct", "oct-HSM"],
        }
    }
}

/// A Key Vault or Managed HSM key as a [`Kms`].
pub struct AzureKms {
    key: KeyId,
    base: String,
    algorithm: AzureAlgorithm,
    client: BearerClient<ClientCredentials>,
}

impl core::fmt::Debug for AzureKms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AzureKms")
            .field("key_id", &self.key.to_string())
            .field("base", &self.base)
            .field("algorithm", &self.algorithm)
            .field("client_id", &self.client.grant().client_id)
            .field("token_url", &self.client.token_url())
            .finish_non_exhaustive()
    }
}

impl AzureKms {
    /// Validates the configuration, reads the client secret and builds the HTTP client. Does
    /// not contact Azure (the first call fetches a token).
    pub async fn connect(config: &AzureConfig, options: &ConnectOptions) -> Result<Self, KmsError> {
        let invalid = |what: String| KmsError::ConfigurationInvalid(what);
        let key = KeyId::parse(&config.key_id)
            .map_err(|why| invalid(format!("key_id {:?}: {why}", config.key_id)))?;
        let algorithm = config.algorithm.unwrap_or(match key.cloud.kind {
            VaultKind::Vault => AzureAlgorithm::RsaOaep256,
            VaultKind::ManagedHsm => AzureAlgorithm::A256Kw,
        });
        if algorithm == AzureAlgorithm::A256Kw && key.cloud.kind == VaultKind::Vault {
            return Err(invalid(
                "algorithm A256KW needs an AES key, which only a Managed HSM holds \
                 (https://{hsm}.managedhsm.azure.net/keys/...)"
                    .into(),
            ));
        }
        if !safe_id(&config.tenant_id) {
            return Err(invalid(format!("tenant_id {:?} is not a tenant id", config.tenant_id)));
        }
        if !safe_id(&config.client_id) {
            return Err(invalid(format!("client_id {:?} is not a client id", config.client_id)));
        }
        let base = match &config.endpoint {
            Some(endpoint) => http_base(endpoint, "endpoint")?,
            None => format!("https://{}", key.host),
        };
        let authority = http_base(
            config.authority_host.as_deref().unwrap_or(key.cloud.authority),
            "authority_host",
        )?;
        let client_secret = config.client_secret.load(&options.base_dir)?;
        let scope = format!("https://{}/.default", key.cloud.suffix);
        let grant = ClientCredentials { client_id: config.client_id.clone(), client_secret, scope };
        let token_url = format!("{authority}/{}/oauth2/v2.0/token", config.tenant_id);
        Ok(Self {
            base,
            algorithm,
            client: BearerClient::new(options.request_timeout, token_url, grant)?,
            key,
        })
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> AzureAlgorithm {
        self.algorithm
    }

    /// The key version a wrapped key names (its `kid`'s last segment), if it is an Azure
    /// wrapped key.
    pub fn key_version_of(wrapped: &[u8]) -> Option<String> {
        let (_, kid, _) = split_wrapped(wrapped)?;
        KeyId::parse(kid).ok()?.version
    }

    /// `{base}/keys/{name}[/{version}][/{operation}]?api-version=7.4`
    fn url(&self, version: Option<&str>, operation: Option<&str>) -> String {
        let mut url = format!("{}/keys/{}", self.base, self.key.name);
        for segment in [version, operation].into_iter().flatten() {
            url.push('/');
            url.push_str(segment);
        }
        url.push_str("?api-version=");
        url.push_str(API_VERSION);
        url
    }

    /// The `kid` of an answer or a wrapped key, if it names a version of the configured key in
    /// the configured vault.
    fn own_version(&self, kid: &str) -> Result<String, String> {
        let parsed = KeyId::parse(kid)?;
        if parsed.host != self.key.host || !parsed.name.eq_ignore_ascii_case(&self.key.name) {
            return Err(format!("{:?} is not a version of {}", excerpt(kid), self.key));
        }
        parsed.version.ok_or_else(|| format!("{:?} names no version", excerpt(kid)))
    }
}

#[async_trait]
impl Kms for AzureKms {
    fn kind(&self) -> &'static str {
        "azure"
    }

    fn key_version(&self, wrapped: &[u8]) -> Option<String> {
        Self::key_version_of(wrapped)
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        let mut plain = Zeroizing::new([0u8; PLAIN_LEN]);
        let (key_part, hash_part) = plain.split_at_mut(KEY_LEN);
        key_part.copy_from_slice(dek.expose_secret());
        hash_part.copy_from_slice(context_hash(context).as_ref());
        let mut value = Zeroizing::new(String::with_capacity(PLAIN_LEN * 2));
        URL_SAFE_NO_PAD.encode_string(plain.as_ref(), &mut value);
        // KeyOperationsParameters (wrapKey-example.json, api-version 7.4):
        //   POST {vaultBaseUrl}/keys/{key-name}/{key-version}/wrapkey?api-version=7.4
        //   { "alg": "RSA1_5", "value": "ovQIlbB0DgWhZA7sgkPxbg9H-Ly-VlNGPSgGrrZvlIo" }
        let mut body = Zeroizing::new(Vec::with_capacity(512));
        serde_json::to_writer(
            &mut *body,
            &KeyOperationsParameters { alg: self.algorithm.jwa(), value: &value },
        )
        .map_err(|e| KmsError::WrapFailed(format!("cannot encode the request: {e}")))?;
        let url = self.url(self.key.version.as_deref(), Some("wrapkey"));
        let answer = self.client.send(Op::Wrap, Method::POST, &url, Some(&body), map_error).await?;
        // KeyOperationResult: 200 { "kid": "https://myvault.vault.azure.net/keys/sdktestkey/0698c2156c1a4e1da5b6bab6f6422fd6",
        //                            "value": "khwIe26NuAZazS7upywDBpGRm..." }
        let parsed: KeyOperationResult = serde_json::from_slice(&answer).map_err(|e| {
            KmsError::WrapFailed(format!("the wrapkey answer is not a KeyOperationResult: {e}"))
        })?;
        let version = self.own_version(&parsed.kid).map_err(KmsError::WrapFailed)?;
        if let Some(pinned) = &self.key.version
            && !pinned.eq_ignore_ascii_case(&version)
        {
            return Err(KmsError::WrapFailed(format!(
                "the KMS wrapped with version {version}, not the configured {pinned}"
            )));
        }
        let wrapped_value =
            URL_SAFE_NO_PAD_INDIFFERENT.decode(parsed.value.as_bytes()).map_err(|_| {
                KmsError::WrapFailed("the wrapkey answer's value is not base64url".into())
            })?;
        if !self.algorithm.value_len_ok(wrapped_value.len()) {
            return Err(KmsError::WrapFailed(format!(
                "a {}-byte value is impossible for {}",
                wrapped_value.len(),
                self.algorithm.jwa()
            )));
        }
        let kid = parsed.kid.trim();
        let kid_len = u16::try_from(kid.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_KID_LEN)
            .ok_or_else(|| KmsError::WrapFailed("the key id is too long".into()))?;
        let mut out = Vec::with_capacity(3 + kid.len() + wrapped_value.len());
        out.push(self.algorithm.format_byte());
        out.extend_from_slice(&kid_len.to_be_bytes());
        out.extend_from_slice(kid.as_bytes());
        out.extend_from_slice(&wrapped_value);
        tracing::debug!(kid = %kid, "azure: wrapped a data key");
        Ok(out)
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        let (algorithm, kid, value) = split_wrapped(wrapped).ok_or(KmsError::InvalidCiphertext)?;
        if !algorithm.value_len_ok(value.len()) {
            return Err(KmsError::InvalidCiphertext);
        }
        // Only ever ask the configured vault, about the configured key.
        let version = self.own_version(kid).map_err(|_| KmsError::InvalidCiphertext)?;
        let encoded = URL_SAFE_NO_PAD.encode(value);
        // unwrapKey-example.json: POST {vaultBaseUrl}/keys/{key-name}/{key-version}/unwrapkey?api-version=7.4
        //   { "alg": "RSA1_5", "value": "khwIe26NuAZazS7upywDBpGRm..." }
        //   200 { "kid": "https://myvault.vault.azure.net/keys/sdktestkey/0698c...", "value": "ovQIlbB0DgWhZA7sgkPxbg9H-Ly-VlNGPSgGrrZvlIo" }
        let body =
            serde_json::to_vec(&KeyOperationsParameters { alg: algorithm.jwa(), value: &encoded })
                .map_err(|e| KmsError::UnwrapFailed(format!("cannot encode the request: {e}")))?;
        let url = self.url(Some(&version), Some("unwrapkey"));
        let answer =
            match self.client.send(Op::Unwrap, Method::POST, &url, Some(&body), map_error).await {
                Ok(answer) => answer,
                Err(KmsError::ConfigurationInvalid(why)) => {
                    // 404: the key, or only the version the wrapped key names, is missing. If the
                    // configured key answers, the wrapped key is what is wrong.
                    return match self.get_key().await {
                        Ok(_) => Err(KmsError::InvalidCiphertext),
                        Err(KmsError::ConfigurationInvalid(_)) => {
                            Err(KmsError::ConfigurationInvalid(why))
                        }
                        Err(other) => Err(other),
                    };
                }
                Err(other) => return Err(other),
            };
        let parsed: UnwrapResult = serde_json::from_slice(&answer).map_err(|_| {
            KmsError::UnwrapFailed("the unwrapkey answer is not a KeyOperationResult".into())
        })?;
        let mut plain = Zeroizing::new(Vec::with_capacity(parsed.value.len()));
        URL_SAFE_NO_PAD_INDIFFERENT.decode_vec(parsed.value.as_bytes(), &mut plain).map_err(
            |_| KmsError::UnwrapFailed("the unwrapkey answer's value is not base64url".into()),
        )?;
        let (Some(key_part), Some(hash_part)) = (plain.get(..KEY_LEN), plain.get(KEY_LEN..)) else {
            return Err(KmsError::InvalidCiphertext);
        };
        if plain.len() != PLAIN_LEN || !constant_time_eq(hash_part, context_hash(context).as_ref())
        {
            return Err(KmsError::InvalidCiphertext);
        }
        Dek::try_from_slice(key_part).map_err(|_| KmsError::InvalidCiphertext)
    }

    async fn health(&self) -> Result<(), KmsError> {
        let key = self.get_key().await?;
        let attributes = key.attributes.unwrap_or_default();
        if attributes.enabled == Some(false) {
            return Err(KmsError::KeyDisabled(format!("{} is disabled", self.key)));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if attributes.exp.is_some_and(|exp| exp <= now) {
            return Err(KmsError::KeyDisabled(format!("{} has expired", self.key)));
        }
        if attributes.nbf.is_some_and(|nbf| nbf > now) {
            return Err(KmsError::KeyDisabled(format!("{} is not valid yet", self.key)));
        }
        let jwk = key.key.unwrap_or_default();
        if let Some(kty) = jwk.kty.as_deref()
            && !self.algorithm.key_types().contains(&kty)
        {
            return Err(KmsError::ConfigurationInvalid(format!(
                "{} is a {kty} key; {} needs {}",
                self.key,
                self.algorithm.jwa(),
                self.algorithm.key_types().join(" or ")
            )));
        }
        if let Some(ops) = &jwk.key_ops {
            for needed in ["wrapKey", "unwrapKey"] {
                if !ops.iter().any(|op| op == needed) {
                    return Err(KmsError::ConfigurationInvalid(format!(
                        "{} does not allow the {needed} operation",
                        self.key
                    )));
                }
            }
        }
        Ok(())
    }
}

impl AzureKms {
    /// `GET {key_id}?api-version=7.4` (GetKey-example.json):
    ///   200 { "key": { "kid": "https://myvault.vault.azure.net/keys/CreateSoftKeyTest/78deebed...",
    ///                  "kty": "RSA", "key_ops": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
    ///                  "n": "...", "e": "AQAB" },
    ///         "attributes": { "enabled": true, "created": 1493942451, "updated": 1493942451,
    ///                         "recoveryLevel": "Recoverable+Purgeable" }, "tags": {...} }
    async fn get_key(&self) -> Result<KeyBundle, KmsError> {
        let url = self.url(self.key.version.as_deref(), None);
        let answer = self.client.send(Op::Health, Method::GET, &url, None, map_error).await?;
        serde_json::from_slice(&answer).map_err(|e| {
            KmsError::ConfigurationInvalid(format!("the key answer is not a KeyBundle: {e}"))
        })
    }
}

fn context_hash(context: &KeyContext<'_>) -> aws_lc_rs::digest::Digest {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &context.associated_data())
}

/// `format ‖ u16be len ‖ kid ‖ value`, each part checked for shape only.
fn split_wrapped(wrapped: &[u8]) -> Option<(AzureAlgorithm, &str, &[u8])> {
    let (&format, rest) = wrapped.split_first()?;
    let algorithm = AzureAlgorithm::from_format_byte(format)?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || len > MAX_KID_LEN {
        return None;
    }
    let kid = std::str::from_utf8(rest.get(..len)?).ok()?;
    let value = rest.get(len..)?;
    if value.is_empty() {
        return None;
    }
    Some((algorithm, kid, value))
}

#[derive(Serialize)]
struct KeyOperationsParameters<'a> {
    alg: &'a str,
    value: &'a str,
}

#[derive(Deserialize)]
struct KeyOperationResult {
    kid: String,
    value: String,
}

#[derive(Deserialize)]
struct UnwrapResult {
    value: Zeroizing<String>,
}

#[derive(Deserialize)]
struct KeyBundle {
    #[serde(default)]
    key: Option<JsonWebKey>,
    #[serde(default)]
    attributes: Option<KeyAttributes>,
}

#[derive(Deserialize, Default)]
struct JsonWebKey {
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct KeyAttributes {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    exp: Option<u64>,
}

// --- key ids

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VaultKind {
    Vault,
    ManagedHsm,
}

struct Cloud {
    suffix: &'static str,
    kind: VaultKind,
    authority: &'static str,
}

/// Key Vault's DNS suffixes per cloud
/// (<https://learn.microsoft.com/azure/key-vault/general/about-keys-secrets-certificates#dns-suffixes-for-object-identifiers>)
/// and each cloud's Entra ID authority.
const CLOUDS: &[Cloud] = &[
    Cloud {
        suffix: "vault.azure.net",
        kind: VaultKind::Vault,
        authority: "https://login.microsoftonline.com",
    },
    Cloud {
        suffix: "vault.azure.cn",
        kind: VaultKind::Vault,
        authority: "https://login.chinacloudapi.cn",
    },
    Cloud {
        suffix: "vault.usgovcloudapi.net",
        kind: VaultKind::Vault,
        authority: "https://login.microsoftonline.us",
    },
    Cloud {
        suffix: "managedhsm.azure.net",
        kind: VaultKind::ManagedHsm,
        authority: "https://login.microsoftonline.com",
    },
    Cloud {
        suffix: "managedhsm.azure.cn",
        kind: VaultKind::ManagedHsm,
        authority: "https://login.chinacloudapi.cn",
    },
    Cloud {
        suffix: "managedhsm.usgovcloudapi.net",
        kind: VaultKind::ManagedHsm,
        authority: "https://login.microsoftonline.us",
    },
];

/// `https://{vault}.{suffix}/keys/{name}[/{version}]`, host in lower case (ids compare
/// case-insensitively).
struct KeyId {
    host: String,
    cloud: &'static Cloud,
    name: String,
    version: Option<String>,
}

impl core::fmt::Display for KeyId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "https://{}/keys/{}", self.host, self.name)?;
        if let Some(version) = &self.version {
            write!(f, "/{version}")?;
        }
        Ok(())
    }
}

impl KeyId {
    fn parse(id: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(id.trim()).map_err(|e| e.to_string())?;
        if url.scheme() != "https" {
            return Err("not an https URL".into());
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || url.port().is_some_and(|p| p != 443)
        {
            return Err("a key id has no credentials, port, query or fragment".into());
        }
        let host = url.host_str().ok_or("no host")?.to_ascii_lowercase();
        let (vault, suffix) = host.split_once('.').ok_or("not a Key Vault host")?;
        let cloud = CLOUDS.iter().find(|c| c.suffix == suffix).ok_or(
            "not a Key Vault or Managed HSM host (*.vault.azure.net, *.managedhsm.azure.net, …)",
        )?;
        let vault_ok = (3..=24).contains(&vault.len())
            && vault.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !vault_ok {
            return Err(format!("{vault:?} is not a vault name"));
        }
        let segments: Vec<&str> =
            url.path().trim_start_matches('/').trim_end_matches('/').split('/').collect();
        let (name, version) = match segments.as_slice() {
            ["keys", name] => (*name, None),
            ["keys", name, version] => (*name, Some(*version)),
            _ => return Err("the path is not /keys/{name} or /keys/{name}/{version}".into()),
        };
        let name_ok = (1..=127).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !name_ok {
            return Err(format!("{name:?} is not a key name"));
        }
        if let Some(version) = version
            && !((1..=64).contains(&version.len())
                && version.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(format!("{version:?} is not a key version"));
        }
        Ok(Self { host, cloud, name: name.to_owned(), version: version.map(str::to_owned) })
    }
}

/// Tenant and client ids: GUIDs, or a tenant's domain name.
fn safe_id(id: &str) -> bool {
    (1..=256).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

// --- tokens

/// Entra ID's client-credentials grant (a client id and its secret).
struct ClientCredentials {
    client_id: String,
    client_secret: Zeroizing<String>,
    scope: String,
}

impl TokenGrant for ClientCredentials {
    fn token_request_form(&self) -> Result<Zeroizing<String>, KmsError> {
        // "First case: Access token request with a shared secret":
        //   POST /{tenant}/oauth2/v2.0/token, Content-Type: application/x-www-form-urlencoded
        //   client_id=...&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_secret=...&grant_type=client_credentials
        // ("The client secret must be URL-encoded before being sent.")
        let mut form = Zeroizing::new(String::with_capacity(256 + 3 * self.client_secret.len()));
        for (i, (name, value)) in [
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("grant_type", "client_credentials"),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                form.push('&');
            }
            form.push_str(name);
            form.push('=');
            form_encode_into(value, &mut form);
        }
        Ok(form)
    }
}

/// `application/x-www-form-urlencoded` of one value (unreserved characters as is, the rest
/// `%XX`), appended to `out`.
fn form_encode_into(value: &str, out: &mut String) {
    use core::fmt::Write as _;
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

// --- errors

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Wrap,
    Unwrap,
    Health,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, alias = "innerError")]
    innererror: Option<Box<ErrorDetail>>,
}

/// One [`KmsError`] for a non-success answer of Key Vault (see the module's table).
fn map_error(op: Op, status: u16, body: &[u8]) -> KmsError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().and_then(|b| b.error);
    let mut codes = Vec::new();
    let mut detail = parsed.as_ref();
    while let Some(d) = detail {
        if let Some(code) = &d.code {
            codes.push(code.to_ascii_lowercase());
        }
        detail = d.innererror.as_deref();
    }
    let message = match parsed.as_ref() {
        Some(e) => format!(
            "{}: {}",
            e.code.as_deref().unwrap_or("error"),
            excerpt(e.message.as_deref().unwrap_or_default().trim())
        ),
        None => format!("HTTP {status}"),
    };
    let lower = message.to_ascii_lowercase();
    let has_code = |c: &str| codes.iter().any(|code| code == c);
    if codes.iter().any(|c| c.contains("subscription")) {
        return KmsError::AccountIssue(message);
    }
    match status {
        401 => KmsError::AccessDenied(message),
        403 if has_code("keydisabled")
            || lower.contains("disabled key")
            || lower.contains("key is disabled") =>
        {
            KmsError::KeyDisabled(message)
        }
        403 if codes.iter().any(|c| c.contains("expired") || c.contains("notyetvalid"))
            || lower.contains("expired")
            || lower.contains("not yet valid")
            || lower.contains("validity period") =>
        {
            KmsError::KeyDisabled(message)
        }
        403 => KmsError::AccessDenied(message),
        404 => KmsError::ConfigurationInvalid(message),
        400 if op == Op::Unwrap => KmsError::InvalidCiphertext,
        400 => KmsError::ConfigurationInvalid(message),
        409 if lower.contains("delet") => KmsError::KeyDisabled(message),
        429 => KmsError::Throttled,
        s if s >= 500 => KmsError::Unreachable(message),
        _ => match op {
            Op::Wrap => KmsError::WrapFailed(format!("unexpected answer HTTP {status}: {message}")),
            Op::Unwrap => {
                KmsError::UnwrapFailed(format!("unexpected answer HTTP {status}: {message}"))
            }
            Op::Health => KmsError::ConfigurationInvalid(format!(
                "unexpected answer HTTP {status}: {message}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_error(code: &str, message: &str, inner: Option<&str>) -> Vec<u8> {
        let mut error = serde_json::json!({"code": code, "message": message});
        if let Some(inner) = inner {
            error["innererror"] = serde_json::json!({"code": inner});
        }
        serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap()
    }

    #[test]
    fn error_mapping_follows_the_table() {
        let disabled = kv_error(
            "Forbidden",
            "Operation wrapKey is not allowed on a disabled key.",
            Some("KeyDisabled"),
        );
        assert!(matches!(map_error(Op::Wrap, 403, &disabled), KmsError::KeyDisabled(_)));
        // The message alone is enough, whatever the casing of the operation.
        let by_message =
            kv_error("Forbidden", "Operation UnwrapKey is not allowed on a disabled key", None);
        assert!(matches!(map_error(Op::Unwrap, 403, &by_message), KmsError::KeyDisabled(_)));
        let camel =
            br#"{"error":{"code":"Forbidden","message":"x","innerError":{"code":"KeyDisabled"}}}"#;
        assert!(matches!(map_error(Op::Health, 403, camel), KmsError::KeyDisabled(_)));
        let expired =
            kv_error("Forbidden", "Operation wrapKey is not allowed on an expired key.", None);
        assert!(matches!(map_error(Op::Wrap, 403, &expired), KmsError::KeyDisabled(_)));
        let denied = kv_error(
            "Forbidden",
            "The user, group or application 'appid=x' does not have keys wrapKey permission on key vault 'v'.",
            Some("AccessDenied"),
        );
        assert!(matches!(map_error(Op::Wrap, 403, &denied), KmsError::AccessDenied(_)));
        let firewall = kv_error(
            "Forbidden",
            "Client address is not authorized and caller is not a trusted service.",
            Some("ForbiddenByFirewall"),
        );
        assert!(matches!(map_error(Op::Wrap, 403, &firewall), KmsError::AccessDenied(_)));
        let unauthorized =
            kv_error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", None);
        assert!(matches!(map_error(Op::Wrap, 401, &unauthorized), KmsError::AccessDenied(_)));
        let missing = kv_error(
            "KeyNotFound",
            "A key with (name/id) k was not found in this key vault.",
            None,
        );
        assert!(matches!(map_error(Op::Health, 404, &missing), KmsError::ConfigurationInvalid(_)));
        let bad = kv_error("BadParameter", "The parameter is incorrect.", None);
        assert_eq!(map_error(Op::Unwrap, 400, &bad), KmsError::InvalidCiphertext);
        assert!(matches!(map_error(Op::Wrap, 400, &bad), KmsError::ConfigurationInvalid(_)));
        let throttled = kv_error(
            "Throttled",
            "Request was not processed because too many requests were received.",
            None,
        );
        assert_eq!(map_error(Op::Wrap, 429, &throttled), KmsError::Throttled);
        assert!(matches!(map_error(Op::Wrap, 503, b""), KmsError::Unreachable(_)));
        assert!(matches!(map_error(Op::Unwrap, 500, b"<html/>"), KmsError::Unreachable(_)));
        let subscription =
            kv_error("Forbidden", "The subscription is disabled.", Some("SubscriptionDisabled"));
        assert!(matches!(map_error(Op::Wrap, 403, &subscription), KmsError::AccountIssue(_)));
        let deleting =
            kv_error("Conflict", "Key k is currently being deleted.", Some("ObjectIsBeingDeleted"));
        assert!(matches!(map_error(Op::Wrap, 409, &deleting), KmsError::KeyDisabled(_)));
        assert!(matches!(map_error(Op::Wrap, 418, b""), KmsError::WrapFailed(_)));
        assert!(matches!(map_error(Op::Unwrap, 418, b""), KmsError::UnwrapFailed(_)));
    }

    #[test]
    fn key_ids() {
        let id = KeyId::parse("https://My-Vault.vault.azure.net/keys/tenant-key").unwrap();
        assert_eq!(
            (id.host.as_str(), id.name.as_str(), id.version.as_deref()),
            ("my-vault.vault.azure.net", "tenant-key", None)
        );
        assert_eq!(id.cloud.kind, VaultKind::Vault);
        let id = KeyId::parse(
            "https://hsm1.managedhsm.azure.net/keys/k/0698c2156c1a4e1da5b6bab6f6422fd6/",
        )
        .unwrap();
        assert_eq!(id.version.as_deref(), Some("0698c2156c1a4e1da5b6bab6f6422fd6"));
        assert_eq!(id.cloud.kind, VaultKind::ManagedHsm);
        assert_eq!(
            KeyId::parse("https://v01.vault.azure.cn/keys/k").unwrap().cloud.authority,
            "https://login.chinacloudapi.cn"
        );
        for bad in [
            "http://v01.vault.azure.net/keys/k",
            "https://v01.vault.azure.net.evil.example/keys/k",
            "https://evil.example/keys/k",
            "https://v01.vault.azure.net/secrets/k",
            "https://v01.vault.azure.net/keys/k/v/extra",
            "https://v01.vault.azure.net/keys/k_1",
            "https://v01.vault.azure.net/keys/k?x=1",
            "https://v01.vault.azure.net:8443/keys/k",
            "https://u:p@v01.vault.azure.net/keys/k",
            "https://v01.vault.azure.net/keys/k/v%2F1",
            "https://a.vault.azure.net/keys/k",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn form_encoding() {
        let mut out = String::new();
        form_encode_into("a~b c/d+e=f&g%h", &mut out);
        assert_eq!(out, "a~b%20c%2Fd%2Be%3Df%26g%25h");
    }

    #[test]
    fn wrapped_layout() {
        let kid = "https://v01.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef";
        let mut wrapped = vec![1, 0, u8::try_from(kid.len()).unwrap()];
        wrapped.extend_from_slice(kid.as_bytes());
        wrapped.extend_from_slice(&[7; 256]);
        let (alg, k, value) = split_wrapped(&wrapped).unwrap();
        assert_eq!((alg, k, value.len()), (AzureAlgorithm::RsaOaep256, kid, 256));
        assert_eq!(
            AzureKms::key_version_of(&wrapped).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(split_wrapped(&wrapped[..3 + kid.len()]).is_none(), "no value");
        assert!(split_wrapped(&[3, 0, 1, b'x', 1]).is_none(), "unknown format");
        assert!(split_wrapped(&[1, 0]).is_none());
        assert!(split_wrapped(&[]).is_none());
    }

    #[test]
    fn config_parses_and_never_prints_the_secret() {
        let config: AzureConfig = toml::from_str(
            r#"
            key_id = "https://v01.managedhsm.azure.net/keys/k"
            tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "00000000-0000-0000-0000-000000000001"
            client_secret = "hunter2-hunter2"
            algorithm = "A256KW"
            "#,
        )
        .unwrap();
        assert_eq!(config.algorithm, Some(AzureAlgorithm::A256Kw));
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(toml::from_str::<AzureConfig>("key_id = \"x\"\nalgorithm = \"RSA1_5\"").is_err());
    }
}
