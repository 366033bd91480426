//! The `vault` backend: a key of HashiCorp Vault's or OpenBao's Transit secrets engine.
//!
//! The tenant keeps a *derived* Transit key (`derived = true`, type `aes256-gcm96`). Every call
//! sends Transit's derivation `context` = base64 of [`KeyContext::associated_data`], so Transit
//! encrypts each wrapped key under a key derived from the master key *and* the tenant id and
//! KMS configuration id: a wrapped key made for tenant A fails to authenticate as tenant B's.
//! The backend speaks the Transit HTTP API directly (reqwest with rustls); OpenBao's Transit API
//! is Vault's.
//!
//! | operation | Transit call |
//! |---|---|
//! | [`generate`](Kms::generate) | `POST /v1/<mount>/datakey/plaintext/<key>` with `context` (Vault makes the key) |
//! | [`wrap`](Kms::wrap) | `POST /v1/<mount>/encrypt/<key>` with the DEK as base64 `plaintext` |
//! | [`unwrap`](Kms::unwrap) | `POST /v1/<mount>/decrypt/<key>` |
//! | [`VaultKms::rewrap`] | `POST /v1/<mount>/rewrap/<key>` (moves a wrapped key to the newest key version; the DEK never leaves Vault) |
//! | [`health`](Kms::health) and the key check | `GET /v1/<mount>/keys/<key>` |
//! | AppRole login / renewal | `POST /v1/auth/<approle mount>/login`, `POST /v1/auth/token/renew-self` |
//!
//! The wrapped key stored in the EDEK is Transit's ciphertext string as UTF-8 bytes,
//! `vault:v<N>:<base64>`, where `N` is the master key version ([`VaultKms::key_version_of`]).
//! Before sending it, the backend checks that it is of that form, with a canonical version
//! number (Transit reads `v0` as `v1`) and strict base64; anything else is
//! [`KmsError::InvalidCiphertext`] without a request.
//!
//! # Never creating a key
//!
//! Transit's `encrypt` *creates* a missing key when the token's policy allows it, and a key it
//! creates is not derived: it would silently ignore the context. So the backend reads the key
//! (`GET keys/<key>`) before its first use and again at most every [`KEY_CHECK_INTERVAL`], and
//! refuses with [`KmsError::ConfigurationInvalid`] when the key does not exist, is not derived,
//! is convergent, or cannot encrypt and decrypt. The tenant's policy should not grant `create`
//! either (see `docs/kms/vault.md` for the minimal policy): the check narrows the window, only
//! the policy closes it.
//!
//! # Authentication
//!
//! A static token (`token`), or AppRole (`approle`): the backend logs in, caches the client
//! token, renews it (`renew-self`) when two thirds of its TTL have passed, logs in again when it
//! cannot be renewed (max TTL reached), and on a 403 logs in again once and repeats the request
//! (the token may have been revoked). `namespace` is sent as `X-Vault-Namespace` on every request,
//! logins included. Redirects are not followed (a redirect would carry the token to another
//! host).
//!
//! # Error mapping
//!
//! | Vault answer | [`KmsError`] |
//! |---|---|
//! | HTTP 401/403 (`permission denied`: bad, expired or revoked token, policy does not allow the path); AppRole login refused (`invalid role or secret ID`) | `AccessDenied` |
//! | `refusing to use soft-deleted key` (OpenBao soft-delete), or a key read showing `soft_deleted` | `KeyDisabled` |
//! | `ciphertext or signature version is disallowed by policy (too old)`: the ciphertext's version is below `min_decryption_version` (old versions revoked) | `KeyDisabled` |
//! | key missing (`GET keys/<key>` 404, `encryption key not found`), mount or namespace missing (`no handler for route`, `namespace not found`), key not derived / wrong type / convergent, other 4xx | `ConfigurationInvalid` |
//! | decrypt/rewrap 400 `cipher: message authentication failed` (wrong context, altered), `invalid ciphertext…`, `unable to decrypt`, bad base64; a malformed wrapped key (checked locally); a decrypted value that is not a 32-byte key | `InvalidCiphertext` |
//! | HTTP 429 (rate-limit quota) | `Throttled` |
//! | HTTP 412 (performance standby not caught up), 5xx (503 sealed or standby, 500, 502 from a balancer), redirects, connection refused, TLS failure, timeout | `Unreachable` |
//! | a 2xx answer without the expected fields | `WrapFailed` (generate, wrap, rewrap) / `UnwrapFailed` (unwrap) |
//!
//! A 400 with a message none of these rules know is diagnosed by reading the key: missing →
//! `ConfigurationInvalid`, soft-deleted → `KeyDisabled`, a ciphertext version below
//! `min_decryption_version` → `KeyDisabled`; otherwise an unwrap/rewrap answer is
//! `InvalidCiphertext` and a wrap answer `ConfigurationInvalid`. Vault has no "account"
//! problems, so `AccountIssue` is never returned. The backend does not retry (the proxy's
//! [`crate::resilience::ResilientKms`] does), except the single AppRole re-login after a 403.
//!
//! # Secrets
//!
//! Tokens, the AppRole secret id, DEKs and response bodies are held in wiped-on-drop buffers
//! (`Zeroizing`, [`Dek`]). The HTTP stack (reqwest/hyper) makes its own copies of request and
//! response bytes that are freed without wiping: that is a limit of every HTTP client, noted in
//! the docs. Header values carrying the token are marked sensitive, so they are not printed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keyhold_core::secret::Dek;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{ConnectOptions, GeneratedKey, KeyContext, Kms, KmsError, SecretSource};

mod auth;

use auth::AppRole;

/// How long a successful key check (exists, derived, usable) is trusted before the key is read
/// again. Within this window a key deleted and re-created by someone allowed to create keys
/// would go unnoticed; the tenant's policy (no `create`) is what rules that out.
pub const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The largest answer body read from Vault; Transit answers are a few hundred bytes.
const MAX_BODY: usize = 1024 * 1024;
/// The longest wrapped key accepted (a wrapped 32-byte key is about 90 bytes).
const MAX_WRAPPED: usize = 4096;
/// How much of Vault's error text goes into an error message.
const MAX_MESSAGE: usize = 300;
/// Transit key types that are 256-bit AEADs supporting derivation.
const ACCEPTED_KEY_TYPES: &[&str] = &["aes256-gcm96", "chacha20-poly1305"];

fn default_mount() -> String {
    "transit".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// A Vault/OpenBao Transit key, as configured in a `[[tenants.kms_configs]]` entry with
/// `type = "vault"`.
///
/// ```toml
/// address = "https://vault.acme.example:8200"
/// mount = "transit"                 # default
/// key = "keyhold"
/// namespace = "acme"                # optional (Vault Enterprise / OpenBao namespaces)
/// token = { file = "secrets/vault-token" }
/// # or: approle = { role_id = "…", secret_id = { file = "secrets/secret-id" }, mount = "approle" }
/// ca_cert_file = "certs/acme-vault-ca.pem"   # optional: trust only this CA
/// tls_server_name = "vault.acme.internal"    # optional: name to verify in the certificate
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The server's URL, `https://host:port` (`http://` only for loopback tests). A path after
    /// the host is kept as a prefix (for servers behind a path-routing proxy).
    pub address: String,
    /// Where the Transit engine is mounted (default `transit`); may contain `/`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// The Transit key's name. It must exist, be `derived`, and of type `aes256-gcm96`.
    pub key: String,
    /// The namespace (sent as `X-Vault-Namespace`), for Vault Enterprise and OpenBao.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A Vault token. Exactly one of `token` and `approle` must be given.
    #[serde(default)]
    pub token: Option<SecretSource>,
    /// AppRole credentials. Exactly one of `token` and `approle` must be given.
    #[serde(default)]
    pub approle: Option<VaultAppRoleConfig>,
    /// A PEM file of the CA certificate(s) to trust instead of the system's roots (relative
    /// paths: relative to the configuration file).
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
    /// The DNS name the server's certificate must carry, when it differs from the host in
    /// `address` (e.g. `address` is an IP). Sent as TLS SNI too.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

impl core::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field("namespace", &self.namespace)
            .field("token", &self.token)
            .field("approle", &self.approle)
            .field("ca_cert_file", &self.ca_cert_file)
            .field("tls_server_name", &self.tls_server_name)
            .finish()
    }
}

/// AppRole credentials: `approle = { role_id = "…", secret_id = { file = "…" } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAppRoleConfig {
    /// The role id (an identifier, like a user name; not secret on its own).
    pub role_id: String,
    /// The secret id (a credential: from a file or the environment, preferably).
    pub secret_id: SecretSource,
    /// Where the AppRole auth method is mounted (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

/// One Transit key of a Vault or OpenBao server, as a [`Kms`].
pub struct VaultKms {
    transport: Transport,
    mount: String,
    key: String,
    auth: Auth,
    /// When the key was last found usable (exists, derived, not soft-deleted).
    key_checked: Mutex<Option<Instant>>,
}

impl core::fmt::Debug for VaultKms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VaultKms")
            .field("address", &self.transport.base)
            .field("namespace", &self.transport.namespace)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field(
                "auth",
                &match &self.auth {
                    Auth::Token(_) => "token",
                    Auth::AppRole(_) => "approle",
                },
            )
            .finish()
    }
}

/// The HTTP side: one client, one server, one namespace.
struct Transport {
    client: reqwest::Client,
    /// `scheme://host[:port][/prefix]`, no trailing slash (host replaced by `tls_server_name`).
    base: String,
    namespace: Option<String>,
}

/// An answer from Vault, body kept in a wiped-on-drop buffer.
struct Answer {
    status: StatusCode,
    body: Zeroizing<Vec<u8>>,
}

enum Auth {
    Token(Zeroizing<String>),
    AppRole(AppRole),
}

/// What was being done, for error messages and for how an answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Generate,
    Wrap,
    Unwrap,
    Rewrap,
    ReadKey,
    Login,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Generate => "generate (datakey)",
            Op::Wrap => "wrap (encrypt)",
            Op::Unwrap => "unwrap (decrypt)",
            Op::Rewrap => "rewrap",
            Op::ReadKey => "key lookup",
            Op::Login => "AppRole login",
        }
    }

    fn reads_ciphertext(self) -> bool {
        matches!(self, Op::Unwrap | Op::Rewrap)
    }

    /// The error for a 2xx answer that lacks what it should carry.
    fn malformed(self, what: &str) -> KmsError {
        let message = format!("{}: the answer {what}", self.name());
        match self {
            Op::Unwrap => KmsError::UnwrapFailed(message),
            Op::Generate | Op::Wrap | Op::Rewrap => KmsError::WrapFailed(message),
            Op::ReadKey | Op::Login => KmsError::ConfigurationInvalid(format!(
                "{message} (is `address` a Vault or OpenBao server?)"
            )),
        }
    }
}

// --- request and answer bodies

#[derive(Serialize)]
struct ContextRequest<'a> {
    context: &'a str,
}

#[derive(Serialize)]
struct EncryptRequest<'a> {
    plaintext: &'a str,
    context: &'a str,
}

#[derive(Serialize)]
struct CiphertextRequest<'a> {
    ciphertext: &'a str,
    context: &'a str,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct DatakeyData {
    plaintext: Zeroizing<String>,
    ciphertext: String,
}

#[derive(Deserialize)]
struct CiphertextData {
    ciphertext: String,
}

#[derive(Deserialize)]
struct PlaintextData {
    plaintext: Zeroizing<String>,
}

/// The part of a Transit key's description the backend checks.
#[derive(Debug, Deserialize)]
struct KeyInfo {
    #[serde(rename = "type", default)]
    key_type: String,
    #[serde(default)]
    derived: bool,
    #[serde(default)]
    convergent_encryption: bool,
    #[serde(default)]
    supports_encryption: bool,
    #[serde(default)]
    supports_decryption: bool,
    /// OpenBao only; absent (false) on Vault.
    #[serde(default)]
    soft_deleted: bool,
    #[serde(default)]
    min_decryption_version: u32,
}

impl VaultKms {
    /// Validates `config`, reads its credentials and builds the HTTP client. Does not contact
    /// the server: the key is checked on first use (and by [`health`](Kms::health)).
    pub async fn connect(config: &VaultConfig, options: &ConnectOptions) -> Result<Self, KmsError> {
        let invalid = |m: String| KmsError::ConfigurationInvalid(format!("vault: {m}"));

        let mut url = reqwest::Url::parse(config.address.trim())
            .map_err(|e| invalid(format!("address {:?} is not a URL: {e}", config.address)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("address {:?} must be http(s)://", config.address)));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(invalid("address must not carry a query, fragment or user".into()));
        }
        let host = host_of(&url)
            .ok_or_else(|| invalid(format!("address {:?} has no host", config.address)))?;
        let https = url.scheme() == "https";
        if !https && !is_loopback(&url) {
            tracing::warn!(
                address = %config.address,
                "vault: plain http to a non-loopback address sends the token unencrypted"
            );
        }

        let mount = clean_path(&config.mount).ok_or_else(|| {
            invalid(format!("mount {:?} is not a valid mount path", config.mount))
        })?;
        if !is_name(&config.key) {
            return Err(invalid(format!(
                "key {:?} is not a valid Transit key name (letters, digits, `-`, `_`, `.`)",
                config.key
            )));
        }
        let namespace = match &config.namespace {
            Some(ns) => Some(clean_path(ns).ok_or_else(|| {
                invalid(format!("namespace {ns:?} is not a valid namespace path"))
            })?),
            None => None,
        };

        let auth = match (&config.token, &config.approle) {
            (Some(token), None) => Auth::Token(header_safe(token.load(&options.base_dir)?)?),
            (None, Some(approle)) => {
                let mount = clean_path(&approle.mount).ok_or_else(|| {
                    invalid(format!("approle.mount {:?} is not a valid mount path", approle.mount))
                })?;
                if approle.role_id.trim().is_empty() {
                    return Err(invalid("approle.role_id is empty".into()));
                }
                Auth::AppRole(AppRole::new(
                    mount,
                    approle.role_id.trim().to_owned(),
                    approle.secret_id.load(&options.base_dir)?,
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid("give either `token` or `approle`, not both".into()));
            }
            (None, None) => return Err(invalid("give a `token` or an `approle`".into())),
        };

        let mut builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keyhold-kms/", env!("CARGO_PKG_VERSION")));
        let mut headers = HeaderMap::new();
        headers.insert("X-Vault-Request", HeaderValue::from_static("true"));
        builder = builder.default_headers(headers);

        if let Some(file) = &config.ca_cert_file {
            if !https {
                return Err(invalid("ca_cert_file needs an https:// address".into()));
            }
            let path = options.base_dir.join(file);
            let pem = std::fs::read(&path).map_err(|e| {
                invalid(format!("cannot read ca_cert_file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                invalid(format!("ca_cert_file {} is not PEM certificates: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(invalid(format!(
                    "ca_cert_file {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        if let Some(name) = &config.tls_server_name {
            if !https {
                return Err(invalid("tls_server_name needs an https:// address".into()));
            }
            let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty()
                || name.parse::<std::net::IpAddr>().is_ok()
                || !name.split('.').all(|label| {
                    !label.is_empty()
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                return Err(invalid(format!(
                    "tls_server_name {:?} must be a DNS name",
                    config.tls_server_name.as_deref().unwrap_or_default()
                )));
            }
            // Requests go to https://<tls_server_name>:<port>/…, so rustls verifies and sends
            // that name; a resolver maps the name back to the configured host.
            url.set_host(Some(&name)).map_err(|e| invalid(format!("tls_server_name: {e}")))?;
            builder = builder.dns_resolver(Arc::new(PinnedHost { name, host }));
        }

        let client =
            builder.build().map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        let base = url.as_str().trim_end_matches('/').to_owned();
        Ok(Self {
            transport: Transport { client, base, namespace },
            mount,
            key: config.key.clone(),
            auth,
            key_checked: Mutex::new(None),
        })
    }

    /// The master key version a wrapped key was made with (`N` of `vault:vN:…`), if it is a
    /// well-formed Transit ciphertext.
    pub fn key_version_of(wrapped: &[u8]) -> Option<u32> {
        let text = core::str::from_utf8(wrapped).ok()?;
        parse_ciphertext(text).map(|(version, _)| version)
    }

    /// Re-encrypts a wrapped key under the newest version of the master key (Transit
    /// `rewrap`), for use after a rotation: the DEK never leaves Vault. The context must be the
    /// one the key was wrapped with; it stays bound to the result. Needs `update` on
    /// `<mount>/rewrap/<key>` in the token's policy.
    pub async fn rewrap(
        &self,
        wrapped: &[u8],
        context: &KeyContext<'_>,
    ) -> Result<Vec<u8>, KmsError> {
        let (ciphertext, version) = checked_ciphertext(wrapped)?;
        self.ensure_key().await?;
        let context = encode_context(context);
        let body = json_body(&CiphertextRequest { ciphertext, context: &context })?;
        let answer = self.call(Op::Rewrap, Method::POST, &self.path("rewrap"), Some(&body)).await?;
        if !answer.status.is_success() {
            return Err(self.failure(Op::Rewrap, &answer, Some(version)).await);
        }
        let data: CiphertextData = parse_data(Op::Rewrap, &answer)?;
        checked_result(Op::Rewrap, data.ciphertext)
    }

    fn path(&self, operation: &str) -> String {
        format!("{}/{operation}/{}", self.mount, self.key)
    }

    /// Reads the key and checks that it is usable; remembers success for
    /// [`KEY_CHECK_INTERVAL`].
    async fn ensure_key(&self) -> Result<(), KmsError> {
        let fresh = self
            .key_checked
            .lock()
            .map(|checked| checked.is_some_and(|at| at.elapsed() < KEY_CHECK_INTERVAL))
            .unwrap_or(false);
        if fresh {
            return Ok(());
        }
        self.check_key().await
    }

    async fn check_key(&self) -> Result<(), KmsError> {
        let info = self.read_key().await?;
        self.validate_key(&info)?;
        if let Ok(mut checked) = self.key_checked.lock() {
            *checked = Some(Instant::now());
        }
        Ok(())
    }

    fn forget_key_check(&self) {
        if let Ok(mut checked) = self.key_checked.lock() {
            *checked = None;
        }
    }

    async fn read_key(&self) -> Result<KeyInfo, KmsError> {
        let path = format!("{}/keys/{}", self.mount, self.key);
        let answer = self.call(Op::ReadKey, Method::GET, &path, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            let text = error_text(&answer);
            return Err(KmsError::ConfigurationInvalid(if text.is_empty() {
                format!(
                    "vault: the Transit key {:?} does not exist at mount {:?} (keyhold never \
                     creates keys: create it with derived=true)",
                    self.key, self.mount
                )
            } else {
                format!(
                    "vault: key lookup of {:?} at mount {:?}: {text} (wrong mount or namespace?)",
                    self.key, self.mount
                )
            }));
        }
        if !answer.status.is_success() {
            return Err(classify(Op::ReadKey, &answer));
        }
        parse_data(Op::ReadKey, &answer)
    }

    fn validate_key(&self, info: &KeyInfo) -> Result<(), KmsError> {
        let invalid = |m: &str| {
            KmsError::ConfigurationInvalid(format!("vault: the Transit key {:?} {m}", self.key))
        };
        if info.soft_deleted {
            return Err(KmsError::KeyDisabled(format!(
                "vault: the Transit key {:?} is soft-deleted",
                self.key
            )));
        }
        if !info.derived {
            return Err(invalid(
                "is not derived: keyhold needs a key created with derived=true, so that every \
                 wrapped key is bound to its tenant (Transit ignores the context otherwise)",
            ));
        }
        if info.convergent_encryption {
            return Err(invalid("uses convergent encryption; create one without it"));
        }
        if !ACCEPTED_KEY_TYPES.contains(&info.key_type.as_str()) {
            return Err(invalid(&format!(
                "has type {:?}; keyhold needs aes256-gcm96 (or chacha20-poly1305)",
                info.key_type
            )));
        }
        if !info.supports_encryption || !info.supports_decryption {
            return Err(invalid("does not support encryption and decryption"));
        }
        Ok(())
    }

    /// Sends one request with the current token; with AppRole, a 403 logs in again once and
    /// repeats the request.
    async fn call(
        &self,
        op: Op,
        method: Method,
        path: &str,
        body: Option<&Zeroizing<Vec<u8>>>,
    ) -> Result<Answer, KmsError> {
        match &self.auth {
            Auth::Token(token) => self.transport.send(method, path, body, Some(token)).await,
            Auth::AppRole(approle) => {
                let token = approle.token(&self.transport).await?;
                let answer = self.transport.send(method.clone(), path, body, Some(&token)).await?;
                if answer.status != StatusCode::FORBIDDEN {
                    return Ok(answer);
                }
                tracing::debug!(
                    op = op.name(),
                    "vault: 403 with the AppRole token; logging in again"
                );
                approle.forget(&token).await;
                let token = approle.token(&self.transport).await?;
                self.transport.send(method, path, body, Some(&token)).await
            }
        }
    }

    /// The error for a failed operation; a 4xx that no rule explains is diagnosed by reading
    /// the key.
    async fn failure(&self, op: Op, answer: &Answer, ciphertext_version: Option<u32>) -> KmsError {
        let error = classify(op, answer);
        if matches!(error, KmsError::KeyDisabled(_) | KmsError::ConfigurationInvalid(_)) {
            self.forget_key_check();
        }
        let unexplained = answer.status.is_client_error()
            && !matches!(
                answer.status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::PRECONDITION_FAILED
            )
            && !known_message(op, answer);
        if !unexplained {
            return error;
        }
        match self.read_key().await {
            Err(e) => e,
            Ok(info) => {
                if let Err(e) = self.validate_key(&info) {
                    return e;
                }
                match ciphertext_version {
                    Some(version) if version < info.min_decryption_version => {
                        revoked_version(&self.key, version, info.min_decryption_version)
                    }
                    _ if op.reads_ciphertext() => KmsError::InvalidCiphertext,
                    _ => error,
                }
            }
        }
    }
}

#[async_trait]
impl Kms for VaultKms {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn key_version(&self, wrapped: &[u8]) -> Option<String> {
        Self::key_version_of(wrapped).map(|v| v.to_string())
    }

    async fn generate(&self, context: &KeyContext<'_>) -> Result<GeneratedKey, KmsError> {
        self.ensure_key().await?;
        let context = encode_context(context);
        let body = json_body(&ContextRequest { context: &context })?;
        let path = self.path("datakey/plaintext");
        let answer = self.call(Op::Generate, Method::POST, &path, Some(&body)).await?;
        if !answer.status.is_success() {
            return Err(self.failure(Op::Generate, &answer, None).await);
        }
        let data: DatakeyData = parse_data(Op::Generate, &answer)?;
        let dek = Dek::from_base64(&data.plaintext)
            .map_err(|_| Op::Generate.malformed("holds no 32-byte base64 plaintext key"))?;
        let wrapped = checked_result(Op::Generate, data.ciphertext)?;
        Ok(GeneratedKey { dek, wrapped })
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        // The key check comes first: `encrypt` would create a missing key.
        self.ensure_key().await?;
        let context = encode_context(context);
        let plaintext = dek.to_base64();
        let body = json_body(&EncryptRequest { plaintext: &plaintext, context: &context })?;
        let answer = self.call(Op::Wrap, Method::POST, &self.path("encrypt"), Some(&body)).await?;
        if !answer.status.is_success() {
            return Err(self.failure(Op::Wrap, &answer, None).await);
        }
        let data: CiphertextData = parse_data(Op::Wrap, &answer)?;
        checked_result(Op::Wrap, data.ciphertext)
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        let (ciphertext, version) = checked_ciphertext(wrapped)?;
        self.ensure_key().await?;
        let context = encode_context(context);
        let body = json_body(&CiphertextRequest { ciphertext, context: &context })?;
        let answer =
            self.call(Op::Unwrap, Method::POST, &self.path("decrypt"), Some(&body)).await?;
        if !answer.status.is_success() {
            return Err(self.failure(Op::Unwrap, &answer, Some(version)).await);
        }
        let data: PlaintextData = parse_data(Op::Unwrap, &answer)?;
        // A value that decrypts under this key and context but is not a 32-byte key is not
        // one of our wrapped keys.
        Dek::from_base64(&data.plaintext).map_err(|_| KmsError::InvalidCiphertext)
    }

    async fn health(&self) -> Result<(), KmsError> {
        self.check_key().await
    }
}

impl Transport {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Zeroizing<Vec<u8>>>,
        token: Option<&Zeroizing<String>>,
    ) -> Result<Answer, KmsError> {
        let url = format!("{}/v1/{path}", self.base);
        let mut request = self.client.request(method, &url);
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token).map_err(|_| {
                KmsError::ConfigurationInvalid(
                    "vault: the token holds characters not allowed in an HTTP header".into(),
                )
            })?;
            value.set_sensitive(true);
            request = request.header("X-Vault-Token", value);
        }
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace.as_str());
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_vec());
        }
        let mut response = request.send().await.map_err(|e| transport_error(&url, &e))?;
        let status = response.status();
        let mut buffer = Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&url, &e))? {
            if buffer.len() + chunk.len() > MAX_BODY {
                return Err(KmsError::Unreachable(format!(
                    "vault: the answer from {url} is larger than {MAX_BODY} bytes"
                )));
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(Answer { status, body: buffer })
    }
}

/// Maps tls_server_name to the configured host, so the URL can carry the name to verify.
struct PinnedHost {
    name: String,
    host: String,
}

impl reqwest::dns::Resolve for PinnedHost {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = if name.as_str().eq_ignore_ascii_case(&self.name) {
            self.host.clone()
        } else {
            name.as_str().to_owned()
        };
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// --- helpers

fn encode_context(context: &KeyContext<'_>) -> String {
    BASE64.encode(context.associated_data())
}

fn json_body<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    serde_json::to_vec(value)
        .map(Zeroizing::new)
        .map_err(|e| KmsError::WrapFailed(format!("vault: cannot encode a request: {e}")))
}

fn parse_data<T: serde::de::DeserializeOwned>(op: Op, answer: &Answer) -> Result<T, KmsError> {
    serde_json::from_slice::<Envelope<T>>(&answer.body)
        .ok()
        .and_then(|e| e.data)
        .ok_or_else(|| op.malformed("lacks the expected `data` fields"))
}

/// A wrapped key as a Transit ciphertext string, and its key version; malformed: invalid.
fn checked_ciphertext(wrapped: &[u8]) -> Result<(&str, u32), KmsError> {
    if wrapped.len() > MAX_WRAPPED {
        return Err(KmsError::InvalidCiphertext);
    }
    let text = core::str::from_utf8(wrapped).map_err(|_| KmsError::InvalidCiphertext)?;
    let (version, _) = parse_ciphertext(text).ok_or(KmsError::InvalidCiphertext)?;
    Ok((text, version))
}

/// The ciphertext Vault returned, checked to be of the form unwrap accepts.
fn checked_result(op: Op, ciphertext: String) -> Result<Vec<u8>, KmsError> {
    if ciphertext.len() > MAX_WRAPPED || parse_ciphertext(&ciphertext).is_none() {
        return Err(op.malformed("holds no `vault:vN:` ciphertext"));
    }
    Ok(ciphertext.into_bytes())
}

/// `vault:v<N>:<base64>` with N ≥ 1 written canonically and strict, non-empty base64.
fn parse_ciphertext(text: &str) -> Option<(u32, &str)> {
    let rest = text.strip_prefix("vault:v")?;
    let (digits, body) = rest.split_once(':')?;
    if digits.is_empty()
        || digits.len() > 10
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let version: u32 = digits.parse().ok()?;
    if body.is_empty() || BASE64.decode(body).is_err() {
        return None;
    }
    Some((version, body))
}

/// Vault's `errors` array, joined and cut to a readable length.
fn error_text(answer: &Answer) -> String {
    let text = serde_json::from_slice::<ErrorBody>(&answer.body)
        .map(|b| b.errors.join("; "))
        .unwrap_or_else(|_| {
            let lossy = String::from_utf8_lossy(&answer.body);
            lossy.chars().filter(|c| !c.is_control()).collect()
        });
    let text = text.replace(['\n', '\t'], " ");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_MESSAGE {
        let mut cut: String = text.chars().take(MAX_MESSAGE).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

fn mentions(text: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| text.contains(n))
}

const SOFT_DELETED: &[&str] = &["soft-deleted", "soft deleted", "softdeleted"];
const VERSION_REVOKED: &[&str] = &["disallowed by policy", "too old"];
const BAD_CIPHERTEXT: &[&str] = &[
    "message authentication failed",
    "invalid ciphertext",
    "unable to decrypt",
    "could not decode",
    "failed to decode",
    "version is too new",
];
const KEY_MISSING: &[&str] = &["key not found", "no existing key", "no such key"];
const ROUTE_MISSING: &[&str] = &["no handler for route", "namespace not found"];

/// Whether the answer's message is one the rules of [`classify`] recognise.
fn known_message(op: Op, answer: &Answer) -> bool {
    let text = error_text(answer).to_ascii_lowercase();
    mentions(&text, SOFT_DELETED)
        || mentions(&text, KEY_MISSING)
        || mentions(&text, ROUTE_MISSING)
        || (op.reads_ciphertext()
            && (mentions(&text, VERSION_REVOKED) || mentions(&text, BAD_CIPHERTEXT)))
}

fn revoked_version(key: &str, version: u32, min: u32) -> KmsError {
    KmsError::KeyDisabled(format!(
        "vault: version {version} of the Transit key {key:?} is below its \
         min_decryption_version {min}: the tenant has revoked it"
    ))
}

/// The error an unsuccessful answer stands for (see the table in the module docs).
fn classify(op: Op, answer: &Answer) -> KmsError {
    let text = error_text(answer);
    let lower = text.to_ascii_lowercase();
    let said = |kind: &str| format!("vault: {}: {kind}: {text}", op.name());
    let status = answer.status;
    if mentions(&lower, SOFT_DELETED) {
        return KmsError::KeyDisabled(said("the key is soft-deleted"));
    }
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            KmsError::AccessDenied(said("permission denied"))
        }
        StatusCode::TOO_MANY_REQUESTS => KmsError::Throttled,
        StatusCode::PRECONDITION_FAILED => {
            KmsError::Unreachable(said("HTTP 412, the standby has not caught up"))
        }
        s if s.is_server_error() => {
            let what = if lower.contains("sealed") { "sealed" } else { "server error" };
            KmsError::Unreachable(format!("vault: {}: HTTP {s} ({what}): {text}", op.name()))
        }
        s if s.is_redirection() => KmsError::Unreachable(format!(
            "vault: {}: HTTP {s}, a redirect (not followed: point `address` at the active node \
             or its load balancer)",
            op.name()
        )),
        s if s.is_client_error() => {
            if op.reads_ciphertext() && mentions(&lower, VERSION_REVOKED) {
                KmsError::KeyDisabled(said("the ciphertext's key version is revoked"))
            } else if mentions(&lower, KEY_MISSING) {
                KmsError::ConfigurationInvalid(said("the key does not exist"))
            } else if mentions(&lower, ROUTE_MISSING) {
                KmsError::ConfigurationInvalid(said("wrong mount or namespace"))
            } else if op.reads_ciphertext() && mentions(&lower, BAD_CIPHERTEXT) {
                KmsError::InvalidCiphertext
            } else {
                KmsError::ConfigurationInvalid(format!("vault: {}: HTTP {s}: {text}", op.name()))
            }
        }
        s => KmsError::Unreachable(format!("vault: {}: unexpected HTTP {s}: {text}", op.name())),
    }
}

fn transport_error(url: &str, error: &reqwest::Error) -> KmsError {
    let mut message = if error.is_timeout() {
        format!("vault: no answer from {url} in time")
    } else {
        format!("vault: cannot reach {url}")
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    KmsError::Unreachable(message)
}

/// A token or credential that fits in an HTTP header.
fn header_safe(value: Zeroizing<String>) -> Result<Zeroizing<String>, KmsError> {
    if value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(value)
    } else {
        Err(KmsError::ConfigurationInvalid(
            "vault: the token holds characters not allowed in an HTTP header".into(),
        ))
    }
}

/// A Transit key or AppRole name: what Vault's path patterns accept.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
}

/// A mount or namespace path: names separated by `/`, without empty, `.` or `..` parts.
fn clean_path(path: &str) -> Option<String> {
    let trimmed = path.trim().trim_matches('/');
    if trimmed.is_empty() {
        return None;
    }
    trimmed.split('/').all(is_name).then(|| trimmed.to_owned())
}

/// The URL's host as a resolver takes it (an IPv6 address without brackets).
fn host_of(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Some(host.to_owned())
}

fn is_loopback(url: &reqwest::Url) -> bool {
    host_of(url).is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Zeroizing::new(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn ciphertext_form_is_checked_strictly() {
        let good = "vault:v2:Ky/ELyoINn0qeBRr/gDFysN3R2UEKWofiaQdhkaMwYHUgSm3bZmJMMCe5C9z7hI/legwvoQwg5KPXHqz";
        assert_eq!(VaultKms::key_version_of(good.as_bytes()), Some(2));
        for bad in [
            "",
            "v",
            "vault:",
            "vault:v:AAAA",
            "vault:v0:AAAA",
            "vault:v01:AAAA",
            "vault:vx:AAAA",
            "vault:v1:",
            "vault:v1:AAA",
            "vault:v1:AB==",
            "wault:v1:AAAA",
            "vault:v99999999999:AAAA",
        ] {
            assert_eq!(VaultKms::key_version_of(bad.as_bytes()), None, "{bad:?}");
            assert_eq!(checked_ciphertext(bad.as_bytes()), Err(KmsError::InvalidCiphertext));
        }
        assert_eq!(checked_ciphertext(&[0xff, 0xfe]), Err(KmsError::InvalidCiphertext));
    }

    #[test]
    fn answers_map_to_errors() {
        let e = |op, status, body: &str| classify(op, &answer(status, body));
        assert!(matches!(
            e(Op::Unwrap, 403, r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#),
            KmsError::AccessDenied(_)
        ));
        assert_eq!(
            e(Op::Unwrap, 400, r#"{"errors":["cipher: message authentication failed"]}"#),
            KmsError::InvalidCiphertext
        );
        assert_eq!(
            e(Op::Rewrap, 400, r#"{"errors":["invalid ciphertext: no prefix"]}"#),
            KmsError::InvalidCiphertext
        );
        assert!(matches!(
            e(Op::Wrap, 400, r#"{"errors":["refusing to use soft-deleted key"]}"#),
            KmsError::KeyDisabled(_)
        ));
        assert!(matches!(
            e(
                Op::Unwrap,
                400,
                r#"{"errors":["ciphertext or signature version is disallowed by policy (too old)"]}"#
            ),
            KmsError::KeyDisabled(_)
        ));
        assert!(matches!(
            e(Op::Generate, 400, r#"{"errors":["encryption key not found"]}"#),
            KmsError::ConfigurationInvalid(_)
        ));
        assert!(matches!(
            e(Op::Generate, 404, r#"{"errors":["no handler for route \"x\""]}"#),
            KmsError::ConfigurationInvalid(_)
        ));
        assert_eq!(
            e(Op::Wrap, 429, r#"{"errors":["rate limit quota exceeded"]}"#),
            KmsError::Throttled
        );
        assert!(
            matches!(e(Op::Wrap, 503, r#"{"errors":["Vault is sealed"]}"#), KmsError::Unreachable(m) if m.contains("sealed"))
        );
        assert!(matches!(e(Op::Wrap, 412, ""), KmsError::Unreachable(_)));
        assert!(matches!(e(Op::Wrap, 502, "<html>bad gateway</html>"), KmsError::Unreachable(_)));
        assert!(matches!(e(Op::Wrap, 307, ""), KmsError::Unreachable(_)));
        // A message about ciphertexts means nothing for a wrap.
        assert!(matches!(
            e(Op::Wrap, 400, r#"{"errors":["invalid ciphertext"]}"#),
            KmsError::ConfigurationInvalid(_)
        ));
    }

    #[test]
    fn error_text_is_bounded_and_single_line() {
        let long = format!(r#"{{"errors":["{}\n\tend"]}}"#, "x".repeat(1000));
        let text = error_text(&answer(400, &long));
        assert!(text.chars().count() <= MAX_MESSAGE + 1);
        assert!(!text.contains('\n'));
    }

    #[test]
    fn names_and_paths() {
        assert!(is_name("keyhold-acme_1.v2"));
        for bad in ["", "a/b", "..", ".a", "a b", "a?b", "a%2f"] {
            assert!(!is_name(bad), "{bad:?}");
        }
        assert_eq!(clean_path("/tenants/acme/transit/").as_deref(), Some("tenants/acme/transit"));
        assert_eq!(clean_path("a//b"), None);
        assert_eq!(clean_path("a/../b"), None);
        assert_eq!(clean_path(""), None);
    }

    /// The shape the proxy's configuration gives it: an internally tagged enum, flattened.
    #[derive(Debug, Deserialize)]
    struct Entry {
        #[allow(dead_code)]
        id: i32,
        #[serde(flatten)]
        kms: Settings,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
    enum Settings {
        Vault(VaultConfig),
    }

    #[test]
    fn config_parses_as_a_kms_config_entry_and_hides_secrets() {
        let entry: Entry = toml::from_str(
            r#"
            id = 7
            type = "vault"
            address = "https://vault.example:8200"
            key = "acme"
            namespace = "acme/prod"
            approle = { role_id = "role-1", secret_id = "s3cr3t-s3cr3t" }
            "#,
        )
        .unwrap();
        let Settings::Vault(config) = entry.kms;
        assert_eq!(config.mount, "transit");
        let approle = config.approle.as_ref().unwrap();
        assert_eq!(approle.mount, "approle");
        assert!(!format!("{config:?}").contains("s3cr3t"));

        let token: VaultConfig = toml::from_str(
            "address = \"http://127.0.0.1:8200\"\nkey = \"k\"\ntoken = \"hvs.secret-token\"",
        )
        .unwrap();
        assert!(!format!("{token:?}").contains("secret-token"));
        assert!(
            toml::from_str::<VaultConfig>("address = \"x\"\nkey = \"k\"\ntokn = \"t\"").is_err(),
            "unknown fields are refused"
        );
    }

    #[tokio::test]
    async fn connect_refuses_bad_settings() {
        let options = ConnectOptions::default();
        let base = || VaultConfig {
            address: "https://127.0.0.1:8200".into(),
            mount: "transit".into(),
            key: "k".into(),
            namespace: None,
            token: Some(SecretSource::Inline(Zeroizing::new("t".into()))),
            approle: None,
            ca_cert_file: None,
            tls_server_name: None,
        };
        let bad: Vec<(&str, VaultConfig)> = vec![
            ("not a url", VaultConfig { address: "vault:8200".into(), ..base() }),
            ("ftp", VaultConfig { address: "ftp://h".into(), ..base() }),
            ("key path", VaultConfig { key: "../sys".into(), ..base() }),
            ("mount", VaultConfig { mount: "a/../b".into(), ..base() }),
            ("no auth", VaultConfig { token: None, ..base() }),
            (
                "both auths",
                VaultConfig {
                    approle: Some(VaultAppRoleConfig {
                        role_id: "r".into(),
                        secret_id: SecretSource::Inline(Zeroizing::new("s".into())),
                        mount: "approle".into(),
                    }),
                    ..base()
                },
            ),
            (
                "ca over http",
                VaultConfig {
                    address: "http://127.0.0.1:1".into(),
                    ca_cert_file: Some("ca.pem".into()),
                    ..base()
                },
            ),
            (
                "missing ca",
                VaultConfig { ca_cert_file: Some("/nonexistent/ca.pem".into()), ..base() },
            ),
            ("ip server name", VaultConfig { tls_server_name: Some("10.0.0.1".into()), ..base() }),
            (
                "token newline",
                VaultConfig {
                    token: Some(SecretSource::Inline(Zeroizing::new("a\u{7f}b".into()))),
                    ..base()
                },
            ),
        ];
        for (what, config) in bad {
            let result = VaultKms::connect(&config, &options).await;
            assert!(
                matches!(result, Err(KmsError::ConfigurationInvalid(_))),
                "{what}: {:?}",
                result.map(|_| ())
            );
        }
        let kms = VaultKms::connect(&base(), &options).await.unwrap();
        assert_eq!(kms.kind(), "vault");
        assert!(!format!("{kms:?}").contains("\"t\""));
    }
}
