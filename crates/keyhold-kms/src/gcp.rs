//! The `gcp` backend: a Google Cloud KMS symmetric key (`ENCRYPT_DECRYPT`), over its REST API.
//!
//! **Contract-tested, not run against the real service.** No Cloud KMS can run on a test machine:
//! the requests this module sends are checked against the public REST reference (quoted below)
//! and against `drongo`, a fake that serves the same REST shapes with no real cryptography, and
//! against a test double with key versions, version states and real AES-256-GCM; the OAuth 2.0 service-account flow is checked against a token endpoint in the tests that verifies
//! the JWT's signature and claims. Nothing here has been seen working against Google's servers.
//! See `docs/kms/gcp.md` for exactly what is and is not covered.
//!
//! # What it does
//!
//! - **Auth**: the OAuth 2.0 JWT-bearer flow for service accounts
//!   (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>): an RS256
//!   JWT `{iss: client_email, scope: https://www.googleapis.com/auth/cloudkms, aud: token_uri,
//!   iat, exp: iat + 3600}` signed with the service account's RSA key (aws-lc-rs) is POSTed to the
//!   token URI as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`; the
//!   access token is cached until shortly before its `expires_in` and fetched again once when the
//!   KMS answers 401.
//! - **wrap**: `POST /v1/{key_name}:encrypt` with the data key as `plaintext` and
//!   [`KeyContext::associated_data`] as `additionalAuthenticatedData`, so Cloud KMS binds the
//!   context into its ciphertext: a wrapped key only decrypts with the same context. The CRC32C
//!   data-integrity fields are sent and the answer's are verified
//!   (<https://cloud.google.com/kms/docs/data-integrity-guidelines>). The wrapped key is Cloud
//!   KMS's ciphertext as is (it names its key version inside; decrypt needs only the key name).
//! - **unwrap**: `POST /v1/{key_name}:decrypt` with the ciphertext and the same AAD.
//! - **health**: `GET /v1/{key_name}`: the key's purpose is `ENCRYPT_DECRYPT` and its primary
//!   version is `ENABLED`. This needs `cloudkms.cryptoKeys.get`, which the Encrypter/Decrypter
//!   role does not grant (see the docs).
//!
//! The backend does not retry by itself (the proxy's resilience layer does), except for the one
//! token refresh after a 401.
//!
//! # Errors
//!
//! Google APIs answer errors as `{"error": {"code": 403, "message": "...", "status":
//! "PERMISSION_DENIED", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
//! "reason": "...", ...}]}}` (<https://cloud.google.com/apis/design/errors>). The `status` and the
//! `ErrorInfo` reasons decide (first matching row wins):
//!
//! | answer | [`KmsError`] |
//! |---|---|
//! | `ErrorInfo.reason` `BILLING_DISABLED`, `CONSUMER_SUSPENDED`, `GCP_SUSPENDED`, `ACCOUNT_STATE_INVALID`, or a message about billing | `AccountIssue` |
//! | `ErrorInfo.reason` `SERVICE_DISABLED` (the Cloud KMS API is off in the project) | `ConfigurationInvalid` |
//! | `PERMISSION_DENIED`, `UNAUTHENTICATED` (also a 401 that persists after one token refresh) | `AccessDenied` |
//! | `FAILED_PRECONDITION` naming a key version state (`... is not enabled, current state is: DISABLED`, `DESTROYED`, `DESTROY_SCHEDULED`, no primary version) | `KeyDisabled` |
//! | other `FAILED_PRECONDITION`, `NOT_FOUND` | `ConfigurationInvalid` |
//! | `INVALID_ARGUMENT` on decrypt (altered ciphertext, wrong AAD, another key's ciphertext) | `InvalidCiphertext` |
//! | `INVALID_ARGUMENT` on encrypt or get (e.g. a key whose purpose is not `ENCRYPT_DECRYPT`) | `ConfigurationInvalid` |
//! | `RESOURCE_EXHAUSTED`, HTTP 429 | `Throttled` |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, any HTTP 5xx; connection refused, timeout | `Unreachable` |
//! | token endpoint: `invalid_grant`, `invalid_client`, `unauthorized_client`, `access_denied` | `AccessDenied` |
//! | token endpoint: `invalid_request`, `invalid_scope`, `unsupported_grant_type` | `ConfigurationInvalid` |
//! | a success answer whose CRC32C fields do not match, or that names another key | `WrapFailed` / `UnwrapFailed` |
//! | a decrypt that succeeds but does not yield a 32-byte key | `InvalidCiphertext` |
//! | anything else: by HTTP status (401/403 denied, 404 configuration, 400 as `INVALID_ARGUMENT`), else `WrapFailed` / `UnwrapFailed` (health: `ConfigurationInvalid`) | |
//!
//! Secrets: the service account's private key is parsed from wiped-on-drop buffers into an
//! aws-lc-rs key (AWS-LC clears key memory when it frees it); access tokens, the JWT, request
//! bodies carrying a data key and decrypted answers are kept in `Zeroizing` buffers. The copies
//! the HTTP stack (reqwest/hyper) makes of request and response bodies are not wiped.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD};
use keyhold_core::secret::{Dek, KEY_LEN};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::oauth::{BearerClient, TokenGrant, excerpt, http_base, json_u64};
use crate::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};

const DEFAULT_ENDPOINT: &str = "https://cloudkms.googleapis.com";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The OAuth scope for Cloud KMS (the narrowest one; `cloud-platform` would also do).
const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";
/// How long a signed JWT assertion is valid (Google's maximum: one hour).
const JWT_LIFETIME_SECS: u64 = 3600;
/// Cloud KMS ciphertexts of a 32-byte key are far smaller; anything above this is not ours.
const MAX_CIPHERTEXT_LEN: usize = 64 * 1024;

/// One Cloud KMS key, as written in a `[[tenants.kms_configs]]` entry with `type = "gcp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// The key: `projects/P/locations/L/keyRings/R/cryptoKeys/K` (not a key version: decrypt
    /// needs the key, and encrypt then uses its primary version).
    pub key_name: String,
    /// The service account's JSON key (the file Google lets you download), usually
    /// `{ file = "secrets/gcp-sa.json" }`; `{ env = "VAR" }` or the JSON inline also work. Its
    /// private key is a secret: it is read once, parsed and the text wiped.
    pub credentials_file: SecretSource,
    /// The Cloud KMS endpoint (default `https://cloudkms.googleapis.com`); for private or
    /// regional endpoints, and tests. `http://` only to a loopback address.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The OAuth token endpoint, also the JWT's audience (default: the key file's `token_uri`,
    /// else `https://oauth2.googleapis.com/token`). `http://` only to a loopback address.
    #[serde(default)]
    pub token_uri: Option<String>,
}

/// A Cloud KMS key as a [`Kms`].
pub struct GcpKms {
    key_name: String,
    endpoint: String,
    client: BearerClient<JwtGrant>,
}

impl core::fmt::Debug for GcpKms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GcpKms")
            .field("key_name", &self.key_name)
            .field("endpoint", &self.endpoint)
            .field("client_email", &self.client.grant().client_email)
            .field("token_uri", &self.client.token_url())
            .finish_non_exhaustive()
    }
}

impl GcpKms {
    /// Validates the configuration, reads and parses the service-account key and builds the
    /// HTTP client. Does not contact Google (the first call fetches a token).
    pub async fn connect(config: &GcpConfig, options: &ConnectOptions) -> Result<Self, KmsError> {
        validate_key_name(&config.key_name)?;
        let endpoint =
            http_base(config.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT), "endpoint")?;
        let json = config.credentials_file.load(&options.base_dir)?;
        let account = ServiceAccount::parse(&json)?;
        let token_uri = http_base(
            config
                .token_uri
                .as_deref()
                .or(account.token_uri.as_deref())
                .unwrap_or(DEFAULT_TOKEN_URI),
            "token_uri",
        )?;
        let grant = JwtGrant {
            client_email: account.client_email,
            private_key_id: account.private_key_id,
            key: account.key,
            token_uri: token_uri.clone(),
        };
        Ok(Self {
            key_name: config.key_name.clone(),
            endpoint,
            client: BearerClient::new(options.request_timeout, token_uri, grant)?,
        })
    }

    /// The configured key name.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    fn url(&self, suffix: &str) -> String {
        format!("{}/v1/{}{}", self.endpoint, self.key_name, suffix)
    }
}

#[async_trait]
impl Kms for GcpKms {
    fn kind(&self) -> &'static str {
        "gcp"
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        let aad = context.associated_data();
        let plaintext = base64_secret(dek.expose_secret());
        let aad_b64 = STANDARD.encode(&aad);
        // EncryptRequest, https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/encrypt:
        //   { "plaintext": string (bytes), "additionalAuthenticatedData": string (bytes),
        //     "plaintextCrc32c": string (int64 format), "additionalAuthenticatedDataCrc32c": string (int64 format) }
        let body = json_secret(&EncryptRequest {
            plaintext: &plaintext,
            additional_authenticated_data: &aad_b64,
            plaintext_crc32c: crc32c::crc32c(dek.expose_secret()).to_string(),
            additional_authenticated_data_crc32c: crc32c::crc32c(&aad).to_string(),
        })
        .map_err(KmsError::WrapFailed)?;
        let answer = self
            .client
            .send(Op::Wrap, Method::POST, &self.url(":encrypt"), Some(&body), map_error)
            .await?;
        // EncryptResponse: { "name": string, "ciphertext": string (bytes), "ciphertextCrc32c":
        //   string (int64 format), "verifiedPlaintextCrc32c": boolean,
        //   "verifiedAdditionalAuthenticatedDataCrc32c": boolean, "protectionLevel": enum, ... }
        // "name: The resource name of the CryptoKeyVersion used in encryption. Check this field
        //  to verify that the intended resource was used for encryption."
        let parsed: EncryptResponse = serde_json::from_slice(&answer).map_err(|e| {
            KmsError::WrapFailed(format!("the encrypt answer is not an EncryptResponse: {e}"))
        })?;
        if !parsed.verified_plaintext_crc32c || !parsed.verified_aad_crc32c {
            return Err(KmsError::WrapFailed(
                "the KMS did not confirm the request's CRC32C checksums (corrupted in transit?)"
                    .into(),
            ));
        }
        let ciphertext =
            STANDARD_PAD_INDIFFERENT.decode(parsed.ciphertext.as_bytes()).map_err(|_| {
                KmsError::WrapFailed("the encrypt answer's ciphertext is not base64".into())
            })?;
        match parsed.ciphertext_crc32c.as_ref().and_then(json_u64) {
            Some(crc) if crc == u64::from(crc32c::crc32c(&ciphertext)) => {}
            Some(_) => {
                return Err(KmsError::WrapFailed(
                    "the ciphertext does not match its CRC32C checksum (corrupted in transit?)"
                        .into(),
                ));
            }
            None => {
                return Err(KmsError::WrapFailed(
                    "the encrypt answer has no ciphertextCrc32c".into(),
                ));
            }
        }
        let version_prefix = format!("{}/cryptoKeyVersions/", self.key_name);
        if !parsed.name.starts_with(&version_prefix) {
            return Err(KmsError::WrapFailed(format!(
                "the KMS encrypted with {:?}, not a version of the configured key",
                excerpt(&parsed.name)
            )));
        }
        if ciphertext.is_empty() || ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(KmsError::WrapFailed("the ciphertext has an impossible length".into()));
        }
        tracing::debug!(key_version = %parsed.name, "gcp: wrapped a data key");
        Ok(ciphertext)
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        if wrapped.is_empty() || wrapped.len() > MAX_CIPHERTEXT_LEN {
            return Err(KmsError::InvalidCiphertext);
        }
        let aad = context.associated_data();
        // DecryptRequest, https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/decrypt:
        //   { "ciphertext": string (bytes), "additionalAuthenticatedData": string (bytes),
        //     "ciphertextCrc32c": string (int64 format), "additionalAuthenticatedDataCrc32c": string (int64 format) }
        let body = serde_json::to_vec(&DecryptRequest {
            ciphertext: &STANDARD.encode(wrapped),
            additional_authenticated_data: &STANDARD.encode(&aad),
            ciphertext_crc32c: crc32c::crc32c(wrapped).to_string(),
            additional_authenticated_data_crc32c: crc32c::crc32c(&aad).to_string(),
        })
        .map_err(|e| KmsError::UnwrapFailed(format!("cannot encode the request: {e}")))?;
        let answer = self
            .client
            .send(Op::Unwrap, Method::POST, &self.url(":decrypt"), Some(&body), map_error)
            .await?;
        // DecryptResponse: { "plaintext": string (bytes), "plaintextCrc32c": string (int64
        //   format), "usedPrimary": boolean, "protectionLevel": enum }
        let parsed: DecryptResponse = serde_json::from_slice(&answer).map_err(|_| {
            KmsError::UnwrapFailed("the decrypt answer is not a DecryptResponse".into())
        })?;
        let mut plaintext = Zeroizing::new(Vec::with_capacity(parsed.plaintext.len()));
        STANDARD_PAD_INDIFFERENT.decode_vec(parsed.plaintext.as_bytes(), &mut plaintext).map_err(
            |_| KmsError::UnwrapFailed("the decrypt answer's plaintext is not base64".into()),
        )?;
        match parsed.plaintext_crc32c.as_ref().and_then(json_u64) {
            Some(crc) if crc == u64::from(crc32c::crc32c(&plaintext)) => {}
            Some(_) => {
                return Err(KmsError::UnwrapFailed(
                    "the plaintext does not match its CRC32C checksum (corrupted in transit?)"
                        .into(),
                ));
            }
            None => {
                return Err(KmsError::UnwrapFailed(
                    "the decrypt answer has no plaintextCrc32c".into(),
                ));
            }
        }
        if plaintext.len() != KEY_LEN {
            // It decrypted under our key and context, but it is not a data key we wrapped.
            return Err(KmsError::InvalidCiphertext);
        }
        Dek::try_from_slice(&plaintext).map_err(|_| KmsError::InvalidCiphertext)
    }

    async fn health(&self) -> Result<(), KmsError> {
        // cryptoKeys.get, https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/get
        // answers a CryptoKey: { "name": string, "primary": { "name": string, "state": enum
        //   (ENABLED, DISABLED, DESTROYED, DESTROY_SCHEDULED, PENDING_GENERATION, ...), ... },
        //   "purpose": enum (ENCRYPT_DECRYPT, ...), ... }
        let answer =
            self.client.send(Op::Health, Method::GET, &self.url(""), None, map_error).await?;
        let key: CryptoKey = serde_json::from_slice(&answer).map_err(|e| {
            KmsError::ConfigurationInvalid(format!("the key answer is not a CryptoKey: {e}"))
        })?;
        match key.purpose.as_deref() {
            Some("ENCRYPT_DECRYPT") | None => {}
            Some(other) => {
                return Err(KmsError::ConfigurationInvalid(format!(
                    "the key's purpose is {other}, not ENCRYPT_DECRYPT"
                )));
            }
        }
        let Some(primary) = key.primary else {
            return Err(KmsError::KeyDisabled("the key has no primary version".into()));
        };
        match primary.state.as_deref() {
            Some("ENABLED") => Ok(()),
            state => Err(KmsError::KeyDisabled(format!(
                "the primary version {} is {}",
                primary.name.as_deref().map(excerpt).unwrap_or_default(),
                state.unwrap_or("in no state")
            ))),
        }
    }
}

#[derive(Serialize)]
struct EncryptRequest<'a> {
    plaintext: &'a str,
    #[serde(rename = "additionalAuthenticatedData")]
    additional_authenticated_data: &'a str,
    #[serde(rename = "plaintextCrc32c")]
    plaintext_crc32c: String,
    #[serde(rename = "additionalAuthenticatedDataCrc32c")]
    additional_authenticated_data_crc32c: String,
}

#[derive(Deserialize)]
struct EncryptResponse {
    name: String,
    ciphertext: String,
    #[serde(rename = "ciphertextCrc32c", default)]
    ciphertext_crc32c: Option<Value>,
    #[serde(rename = "verifiedPlaintextCrc32c", default)]
    verified_plaintext_crc32c: bool,
    #[serde(rename = "verifiedAdditionalAuthenticatedDataCrc32c", default)]
    verified_aad_crc32c: bool,
}

#[derive(Serialize)]
struct DecryptRequest<'a> {
    ciphertext: &'a str,
    #[serde(rename = "additionalAuthenticatedData")]
    additional_authenticated_data: &'a str,
    #[serde(rename = "ciphertextCrc32c")]
    ciphertext_crc32c: String,
    #[serde(rename = "additionalAuthenticatedDataCrc32c")]
    additional_authenticated_data_crc32c: String,
}

#[derive(Deserialize)]
struct DecryptResponse {
    plaintext: Zeroizing<String>,
    #[serde(rename = "plaintextCrc32c", default)]
    plaintext_crc32c: Option<Value>,
}

#[derive(Deserialize)]
struct CryptoKey {
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    primary: Option<CryptoKeyVersion>,
}

#[derive(Deserialize)]
struct CryptoKeyVersion {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

// --- service account and tokens

/// The fields of a service-account JSON key file we use
/// (<https://cloud.google.com/iam/docs/keys-create-delete>): `type`, `client_email`,
/// `private_key` (PKCS#8 PEM), `private_key_id`, `token_uri`.
#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<Zeroizing<String>>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: Option<String>,
}

impl ServiceAccount {
    fn parse(json: &str) -> Result<Self, KmsError> {
        let invalid =
            |what: &str| KmsError::ConfigurationInvalid(format!("credentials_file: {what}"));
        if !json.trim_start().starts_with('{') {
            return Err(invalid(
                "not a service-account JSON key (to name a file, write credentials_file = \
                 { file = \"path/to/key.json\" })",
            ));
        }
        let file: ServiceAccountFile = serde_json::from_str(json)
            .map_err(|e| invalid(&format!("not a service-account JSON key: {e}")))?;
        if let Some(kind) = file.kind.as_deref()
            && kind != "service_account"
        {
            return Err(invalid(&format!(
                "the key is of type {kind:?}; a service account key (\"service_account\") is needed"
            )));
        }
        let client_email = file
            .client_email
            .filter(|e| !e.is_empty())
            .ok_or_else(|| invalid("no client_email"))?;
        let pem = file.private_key.ok_or_else(|| invalid("no private_key"))?;
        let der = pem_pkcs8(&pem)
            .ok_or_else(|| invalid("private_key is not a PEM \"PRIVATE KEY\" (PKCS#8) block"))?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| invalid(&format!("private_key is not a usable RSA key: {e}")))?;
        Ok(Self {
            client_email,
            private_key_id: file.private_key_id,
            key,
            token_uri: file.token_uri,
        })
    }
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` PEM block, in a wiped-on-drop buffer.
fn pem_pkcs8(pem: &str) -> Option<Zeroizing<Vec<u8>>> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let end = start + pem.get(start..)?.find(END)?;
    let body = pem.get(start..end)?;
    let mut compact = Zeroizing::new(String::with_capacity(body.len()));
    compact.extend(body.chars().filter(|c| !c.is_whitespace()));
    let mut der = Zeroizing::new(Vec::with_capacity(compact.len()));
    STANDARD.decode_vec(compact.as_bytes(), &mut der).ok()?;
    Some(der)
}

/// Google's service-account grant: a JWT signed with the account's key (RFC 7523).
struct JwtGrant {
    client_email: String,
    private_key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: String,
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl JwtGrant {
    /// The signed JWT: `base64url(header) . base64url(claims) . base64url(RS256 signature)`.
    fn assertion(&self, now: u64) -> Result<Zeroizing<String>, KmsError> {
        let failed = |what: &str| KmsError::ConfigurationInvalid(format!("cannot sign: {what}"));
        let header = serde_json::to_vec(&JwtHeader {
            alg: "RS256",
            typ: "JWT",
            kid: self.private_key_id.as_deref(),
        })
        .map_err(|_| failed("header"))?;
        let claims = serde_json::to_vec(&JwtClaims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + JWT_LIFETIME_SECS,
        })
        .map_err(|_| failed("claims"))?;
        let mut jwt = Zeroizing::new(String::with_capacity(2048));
        URL_SAFE_NO_PAD.encode_string(&header, &mut jwt);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .map_err(|_| failed("RSA signature"))?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(jwt)
    }
}

impl TokenGrant for JwtGrant {
    fn token_request_form(&self) -> Result<Zeroizing<String>, KmsError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| KmsError::ConfigurationInvalid("the system clock is before 1970".into()))?
            .as_secs();
        let assertion = self.assertion(now)?;
        // https://developers.google.com/identity/protocols/oauth2/service-account#makingrequest:
        //   POST /token, Content-Type: application/x-www-form-urlencoded,
        //   grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=<JWT>
        // (a JWT is base64url and dots: nothing to escape).
        let mut form = Zeroizing::new(String::with_capacity(assertion.len() + 96));
        form.push_str(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=",
        );
        form.push_str(&assertion);
        Ok(form)
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
    error: Option<GoogleStatus>,
}

#[derive(Deserialize)]
struct GoogleStatus {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// `ErrorInfo` reasons (`google.api.ErrorReason`) that mean the project or account is not in
/// good standing rather than that the caller lacks a permission.
const ACCOUNT_REASONS: &[&str] =
    &["BILLING_DISABLED", "CONSUMER_SUSPENDED", "GCP_SUSPENDED", "ACCOUNT_STATE_INVALID"];

/// One [`KmsError`] for a non-success answer of Cloud KMS (see the module's table).
fn map_error(op: Op, http_status: u16, body: &[u8]) -> KmsError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().and_then(|b| b.error);
    let (status, message, reasons) = match &parsed {
        Some(e) => (
            e.status.as_str(),
            excerpt(&e.message),
            e.details
                .iter()
                .filter_map(|d| d.get("reason").and_then(Value::as_str))
                .collect::<Vec<_>>(),
        ),
        None => ("", format!("HTTP {http_status}"), Vec::new()),
    };
    let lower = message.to_ascii_lowercase();
    if reasons.iter().any(|r| ACCOUNT_REASONS.contains(r))
        || (matches!(status, "PERMISSION_DENIED" | "FAILED_PRECONDITION")
            && lower.contains("billing"))
    {
        return KmsError::AccountIssue(message);
    }
    if reasons.contains(&"SERVICE_DISABLED") {
        return KmsError::ConfigurationInvalid(format!(
            "the Cloud KMS API is not enabled in the project: {message}"
        ));
    }
    let status = if status.is_empty() { status_for_http(http_status) } else { status };
    match status {
        "PERMISSION_DENIED" | "UNAUTHENTICATED" => KmsError::AccessDenied(message),
        "FAILED_PRECONDITION" if names_key_state(&lower) => KmsError::KeyDisabled(message),
        "FAILED_PRECONDITION" | "NOT_FOUND" => KmsError::ConfigurationInvalid(message),
        "INVALID_ARGUMENT" if op == Op::Unwrap => KmsError::InvalidCiphertext,
        "INVALID_ARGUMENT" => KmsError::ConfigurationInvalid(message),
        "RESOURCE_EXHAUSTED" => KmsError::Throttled,
        "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL" | "UNKNOWN" => {
            KmsError::Unreachable(message)
        }
        _ if http_status >= 500 => KmsError::Unreachable(message),
        _ => match op {
            Op::Wrap => KmsError::WrapFailed(format!("unexpected answer: {message}")),
            Op::Unwrap => KmsError::UnwrapFailed(format!("unexpected answer: {message}")),
            Op::Health => KmsError::ConfigurationInvalid(format!("unexpected answer: {message}")),
        },
    }
}

/// The canonical status Google sends with each HTTP status, for answers without a JSON body.
fn status_for_http(http_status: u16) -> &'static str {
    match http_status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "",
    }
}

/// Whether a `FAILED_PRECONDITION` message is about the key version's state (disabled,
/// destroyed, scheduled for destruction, no primary) rather than, say, the API being off.
/// Cloud KMS says e.g. `projects/…/cryptoKeyVersions/1 is not enabled, current state is: DISABLED.`
fn names_key_state(lower: &str) -> bool {
    let about_a_version = lower.contains("cryptokeyversions/")
        || lower.contains("current state")
        || lower.contains("key version")
        || lower.contains("primary version");
    let unusable = lower.contains("disabled")
        || lower.contains("destroy")
        || lower.contains("not enabled")
        || lower.contains("no primary")
        || lower.contains("does not have a primary");
    about_a_version && unusable
}

// --- small helpers

/// Validates `projects/P/locations/L/keyRings/R/cryptoKeys/K`: the literal collection names and
/// ids of safe characters only (it is pasted into URLs).
fn validate_key_name(name: &str) -> Result<(), KmsError> {
    let invalid = || {
        KmsError::ConfigurationInvalid(format!(
            "key_name {name:?} is not projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY"
        ))
    };
    let parts: Vec<&str> = name.split('/').collect();
    let [projects, project, locations, location, rings, ring, keys, key] = parts.as_slice() else {
        return Err(invalid());
    };
    if *projects != "projects"
        || *locations != "locations"
        || *rings != "keyRings"
        || *keys != "cryptoKeys"
    {
        return Err(invalid());
    }
    // Project ids may be domain-scoped (`example.com:my-project`); key ring and key ids are
    // [a-zA-Z0-9_-]{1,63}.
    let id_ok = |id: &str, extra: &[char]| {
        !id.is_empty()
            && id.len() <= 100
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(&c))
    };
    if !id_ok(project, &['.', ':'])
        || !id_ok(location, &[])
        || !id_ok(ring, &[])
        || !id_ok(key, &[])
        || ring.len() > 63
        || key.len() > 63
    {
        return Err(invalid());
    }
    Ok(())
}

/// Standard base64 of a secret, in a wiped-on-drop string.
fn base64_secret(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(3) * 4));
    STANDARD.encode_string(bytes, &mut out);
    out
}

/// JSON of a request carrying a secret, in a wiped-on-drop buffer (reserved up front so that no
/// reallocation leaves an unwiped copy behind).
fn json_secret<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut out = Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer(&mut *out, value)
        .map_err(|e| format!("cannot encode the request: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google_error(code: u16, status: &str, message: &str, reasons: &[&str]) -> Vec<u8> {
        let details: Vec<Value> = reasons
            .iter()
            .map(|r| {
                serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": r, "domain": "googleapis.com",
                    "metadata": {"service": "cloudkms.googleapis.com"}
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "error": {"code": code, "message": message, "status": status, "details": details}
        }))
        .unwrap()
    }

    #[test]
    fn error_mapping_follows_the_table() {
        let disabled = google_error(
            400,
            "FAILED_PRECONDITION",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1 is not \
             enabled, current state is: DISABLED.",
            &[],
        );
        assert!(matches!(map_error(Op::Wrap, 400, &disabled), KmsError::KeyDisabled(_)));
        assert!(matches!(map_error(Op::Unwrap, 400, &disabled), KmsError::KeyDisabled(_)));
        let destroyed = google_error(
            400,
            "FAILED_PRECONDITION",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3 is not \
             enabled, current state is: DESTROYED.",
            &[],
        );
        assert!(matches!(map_error(Op::Unwrap, 400, &destroyed), KmsError::KeyDisabled(_)));
        // The older "API not enabled" answer is a precondition too, but not a key state.
        let api_off = google_error(
            400,
            "FAILED_PRECONDITION",
            "Google Cloud KMS API has not been used in project 123 before or it is disabled.",
            &[],
        );
        assert!(matches!(map_error(Op::Wrap, 400, &api_off), KmsError::ConfigurationInvalid(_)));
        let service_disabled = google_error(
            403,
            "PERMISSION_DENIED",
            "Cloud KMS API has not been used",
            &["SERVICE_DISABLED"],
        );
        assert!(matches!(
            map_error(Op::Wrap, 403, &service_disabled),
            KmsError::ConfigurationInvalid(_)
        ));
        let billing = google_error(
            403,
            "PERMISSION_DENIED",
            "This API method requires billing to be enabled.",
            &["BILLING_DISABLED"],
        );
        assert!(matches!(map_error(Op::Wrap, 403, &billing), KmsError::AccountIssue(_)));
        let denied = google_error(
            403,
            "PERMISSION_DENIED",
            "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource",
            &["IAM_PERMISSION_DENIED"],
        );
        assert!(matches!(map_error(Op::Wrap, 403, &denied), KmsError::AccessDenied(_)));
        let unauthenticated = google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            &["ACCESS_TOKEN_EXPIRED"],
        );
        assert!(matches!(map_error(Op::Unwrap, 401, &unauthenticated), KmsError::AccessDenied(_)));
        let not_found = google_error(404, "NOT_FOUND", "CryptoKey not found", &[]);
        assert!(matches!(
            map_error(Op::Health, 404, &not_found),
            KmsError::ConfigurationInvalid(_)
        ));
        let invalid = google_error(
            400,
            "INVALID_ARGUMENT",
            "Decryption failed: the ciphertext is invalid.",
            &[],
        );
        assert_eq!(map_error(Op::Unwrap, 400, &invalid), KmsError::InvalidCiphertext);
        assert!(matches!(map_error(Op::Wrap, 400, &invalid), KmsError::ConfigurationInvalid(_)));
        let quota =
            google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", &["RATE_LIMIT_EXCEEDED"]);
        assert_eq!(map_error(Op::Wrap, 429, &quota), KmsError::Throttled);
        let unavailable =
            google_error(503, "UNAVAILABLE", "The service is currently unavailable.", &[]);
        assert!(matches!(map_error(Op::Wrap, 503, &unavailable), KmsError::Unreachable(_)));
        // Not JSON (a load balancer's page): by HTTP status.
        assert!(matches!(map_error(Op::Wrap, 502, b"<html>"), KmsError::Unreachable(_)));
        assert_eq!(map_error(Op::Unwrap, 400, b"nope"), KmsError::InvalidCiphertext);
        assert!(matches!(map_error(Op::Wrap, 403, b""), KmsError::AccessDenied(_)));
        assert_eq!(map_error(Op::Health, 429, b""), KmsError::Throttled);
        assert!(matches!(map_error(Op::Wrap, 409, b""), KmsError::WrapFailed(_)));
        assert!(matches!(map_error(Op::Unwrap, 409, b""), KmsError::UnwrapFailed(_)));
    }

    #[test]
    fn key_names() {
        validate_key_name("projects/p-1/locations/europe-west1/keyRings/r_1/cryptoKeys/k-2")
            .unwrap();
        validate_key_name("projects/example.com:p/locations/global/keyRings/r/cryptoKeys/k")
            .unwrap();
        for bad in [
            "",
            "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
            "projects/p/locations/l/keyRings/r/cryptoKeys/",
            "projects/p/locations/l/keyRings/r/keys/k",
            "projects/p/locations/l/keyRings/r/cryptoKeys/k?x=1",
            "projects/p/locations/l/keyRings/../cryptoKeys/k",
            "projects/p/locations/l/keyRings/r/cryptoKeys/k#",
        ] {
            assert!(validate_key_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            http_base("https://cloudkms.googleapis.com/", "e").unwrap(),
            "https://cloudkms.googleapis.com"
        );
        assert_eq!(http_base("http://127.0.0.1:9/token", "e").unwrap(), "http://127.0.0.1:9/token");
        assert!(http_base("http://kms.example.com", "e").is_err());
        assert!(http_base("ftp://x", "e").is_err());
        assert!(http_base("https://u:p@x", "e").is_err());
    }

    #[test]
    fn config_parses_and_never_prints_the_key() {
        let config: GcpConfig = toml::from_str(
            r#"
            key_name = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
            credentials_file = { file = "sa.json" }
            "#,
        )
        .unwrap();
        assert!(config.endpoint.is_none());
        assert!(toml::from_str::<GcpConfig>("key_name = \"x\"\nkey = \"y\"").is_err());
        let inline: GcpConfig = toml::from_str(
            r#"
            key_name = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
            credentials_file = '{"private_key": "-----BEGIN PRIVATE KEY-----secret"}'
            "#,
        )
        .unwrap();
        assert!(!format!("{inline:?}").contains("secret"));
    }

    #[test]
    fn a_file_name_given_inline_gets_a_helpful_error() {
        let Err(KmsError::ConfigurationInvalid(m)) = ServiceAccount::parse("secrets/sa.json")
        else {
            panic!("accepted a path as JSON");
        };
        assert!(m.contains("{ file ="), "{m}");
    }
}
