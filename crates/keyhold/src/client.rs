//! The proxy client: one `reqwest` connection pool, API key auth, timeouts, typed errors.

use std::collections::HashMap;
use std::time::Duration;

use keyhold_core::ErrorCode;
use keyhold_core::metadata::RequestMetadata;
use keyhold_core::secret::Dek;
use keyhold_core::wire::{
    self, BatchRekeyRequest, BatchRekeyResponse, BatchUnwrapRequest, BatchUnwrapResponse,
    BatchWrapRequest, BatchWrapResponse, DeriveKeyRequest, DeriveKeyResponse, ErrorBody,
    RekeyRequest, SecurityEventRequest, UnwrapRequest, UnwrappedKey, WrapRequest, WrappedKey,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::{BatchResult, Edek};

/// Environment variable naming the proxy URL (used by the CLI and [`ClientBuilder::from_env`]).
pub const PROXY_URL_ENV: &str = "KEYHOLD_PROXY_URL";
/// Environment variable holding the API key.
pub const API_KEY_ENV: &str = "KEYHOLD_API_KEY";

/// Settings for a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    api_key: Zeroizing<String>,
    timeout: Duration,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    /// PEM certificates: the only roots trusted for an `https://` proxy (none: the system's).
    proxy_ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key this client presents (mutual TLS).
    identity_pem: Option<Zeroizing<Vec<u8>>>,
}

impl core::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("api_key", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A client for the proxy at `url` (e.g. `http://127.0.0.1:32804`) with `api_key`.
    pub fn new(url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_owned(),
            api_key: Zeroizing::new(api_key.into().trim().to_owned()),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            proxy_ca_pem: None,
            identity_pem: None,
        }
    }

    /// Trusts only the CA certificates in `pem` (one or more PEM certificates) for an
    /// `https://` proxy, instead of the system's roots: for a proxy whose certificate a private
    /// CA issued.
    pub fn proxy_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.proxy_ca_pem = Some(pem.into());
        self
    }

    /// Presents this certificate to an `https://` proxy that asks for one (its `[tls]
    /// client_ca_file`): `pem` holds the private key and the certificate chain, in PEM.
    pub fn client_identity_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.identity_pem = Some(Zeroizing::new(pem.into()));
        self
    }

    /// From `KEYHOLD_PROXY_URL` (default `http://127.0.0.1:32804`) and `KEYHOLD_API_KEY`.
    pub fn from_env() -> Result<Self> {
        let url =
            std::env::var(PROXY_URL_ENV).unwrap_or_else(|_| "http://127.0.0.1:32804".to_owned());
        let key = Zeroizing::new(
            std::env::var(API_KEY_ENV)
                .map_err(|_| Error::InvalidArgument(format!("{API_KEY_ENV} is not set")))?,
        );
        Ok(Self::new(url, key.as_str()))
    }

    /// Longest a whole call may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Builds the client. Connections are pooled and reused across calls.
    pub fn build(self) -> Result<Client> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "proxy URL {:?} must start with http:// or https://",
                self.url
            )));
        }
        if self.api_key.is_empty() {
            return Err(Error::InvalidArgument("the API key is empty".into()));
        }
        let mut auth =
            HeaderValue::from_str(&format!("{} {}", wire::AUTH_SCHEME, self.api_key.as_str()))
                .map_err(|_| {
                    Error::InvalidArgument(
                        "the API key contains characters not allowed in a header".into(),
                    )
                })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-icl-tsc-language", HeaderValue::from_static("keyhold-rust"));
        headers.insert("x-icl-tsc-version", HeaderValue::from_static(env!("CARGO_PKG_VERSION")));
        let mut http = reqwest::Client::builder();
        if let Some(pem) = &self.proxy_ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::InvalidArgument(format!("the proxy CA is not PEM certificates: {e}"))
            })?;
            if roots.is_empty() {
                return Err(Error::InvalidArgument("the proxy CA holds no certificate".into()));
            }
            http = http.tls_certs_only(roots);
        }
        if let Some(pem) = &self.identity_pem {
            // The parser's error could quote the key: say only that it is unusable.
            let identity = reqwest::Identity::from_pem(pem).map_err(|_| {
                Error::InvalidArgument(
                    "the client identity is not a PEM private key with its certificate".into(),
                )
            })?;
            http = http.identity(identity);
        }
        let http = http
            .default_headers(headers)
            .user_agent(concat!("keyhold-rust/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(self.pool_idle_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, url: self.url })
    }
}

/// A client of one Tenant Security Proxy. Cheap to clone; clones share the connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    url: String,
}

fn check(meta: &RequestMetadata) -> Result<()> {
    meta.validate().map_err(|e| Error::InvalidArgument(e.to_string()))
}

impl Client {
    /// A client with default settings.
    pub fn new(url: impl Into<String>, api_key: impl Into<String>) -> Result<Self> {
        ClientBuilder::new(url, api_key).build()
    }

    /// A new data key and its EDEK for `meta.tenant_id`.
    pub async fn wrap_key(&self, meta: &RequestMetadata) -> Result<WrappedKey> {
        check(meta)?;
        let body = WrapRequest::from_metadata(meta);
        self.post(wire::ROUTE_WRAP, &body).await
    }

    /// The data key inside `edek`.
    pub async fn unwrap_key(&self, edek: &Edek, meta: &RequestMetadata) -> Result<Dek> {
        check(meta)?;
        let body = UnwrapRequest::from_metadata(meta, edek.as_str().to_owned());
        let key: UnwrappedKey = self.post(wire::ROUTE_UNWRAP, &body).await?;
        Ok(key.dek)
    }

    /// One new data key per id, in one proxy call.
    pub async fn batch_wrap_keys(
        &self,
        ids: Vec<String>,
        meta: &RequestMetadata,
    ) -> Result<BatchWrapResponse> {
        check(meta)?;
        let body = BatchWrapRequest::from_metadata(meta, ids);
        self.post(wire::ROUTE_BATCH_WRAP, &body).await
    }

    /// The data key of each EDEK, by id, in one proxy call.
    pub async fn batch_unwrap_keys(
        &self,
        edeks: HashMap<String, String>,
        meta: &RequestMetadata,
    ) -> Result<BatchUnwrapResponse> {
        check(meta)?;
        let body = BatchUnwrapRequest::from_metadata(meta, edeks);
        self.post(wire::ROUTE_BATCH_UNWRAP, &body).await
    }

    /// Re-wraps the key of `edek` (of `meta.tenant_id`) for `new_tenant_id`'s primary KMS
    /// configuration, without touching the data. The data stays decryptable with the new EDEK.
    pub async fn rekey_edek(
        &self,
        edek: &Edek,
        new_tenant_id: &str,
        meta: &RequestMetadata,
    ) -> Result<Edek> {
        check(meta)?;
        let body =
            RekeyRequest::from_metadata(meta, edek.as_str().to_owned(), new_tenant_id.to_owned());
        let key: WrappedKey = self.post(wire::ROUTE_REKEY, &body).await?;
        Ok(Edek::from(key.edek))
    }

    /// Re-wraps many EDEKs (of `meta.tenant_id`, by id) for `new_tenant_id`'s primary KMS
    /// configuration in one proxy call (`document/batch-rekey`, a Keyhold extension). Every id
    /// comes back in exactly one of the result's maps; a failed id's [`Error::code`] says why
    /// (e.g. [`ErrorCode::InvalidProvidedEdek`]). No data key leaves the proxy. A refusal of the
    /// whole call (unknown tenant, a move the proxy's rekey policy does not allow:
    /// [`ErrorCode::RekeyTargetNotAllowed`], too many ids) is an `Err`.
    pub async fn rekey_edeks(
        &self,
        edeks: HashMap<String, Edek>,
        new_tenant_id: &str,
        meta: &RequestMetadata,
    ) -> Result<BatchResult<Edek>> {
        check(meta)?;
        let edeks = edeks.into_iter().map(|(id, edek)| (id, edek.into_string())).collect();
        let body = BatchRekeyRequest::from_metadata(meta, edeks, new_tenant_id.to_owned());
        let response: BatchRekeyResponse = self.post(wire::ROUTE_BATCH_REKEY, &body).await?;
        let mut result = BatchResult::default();
        for (id, edek) in response.edeks {
            result.successes.insert(id, Edek::from(edek));
        }
        for (id, failure) in response.failures {
            result.failures.insert(
                id,
                Error::Proxy { code: failure.error_code(), status: 200, message: failure.message },
            );
        }
        Ok(result)
    }

    /// Field keys for deterministic encryption (`key/derive-with-secret-path`): for each secret
    /// path, for each of its derivation paths, one key per usable tenant secret, one of them
    /// current. The keys are wiped when the response is dropped. The `encrypt_field` family
    /// ([`crate::deterministic`]) calls this once per call and does the rest locally.
    pub async fn derive_field_keys(
        &self,
        paths: std::collections::BTreeMap<String, Vec<String>>,
        meta: &RequestMetadata,
    ) -> Result<DeriveKeyResponse> {
        check(meta)?;
        let body = DeriveKeyRequest::from_metadata(
            meta,
            paths,
            keyhold_core::deterministic::DERIVATION_SHA512.to_owned(),
            keyhold_core::deterministic::SECRET_TYPE_DETERMINISTIC.to_owned(),
        );
        self.post(wire::ROUTE_DERIVE_KEY, &body).await
    }

    /// Sends an application security event (e.g. `USER_LOGIN`) to the tenant's audit trail.
    pub async fn log_security_event(
        &self,
        event: &str,
        timestamp_millis: Option<i64>,
        meta: &RequestMetadata,
    ) -> Result<()> {
        check(meta)?;
        let mut body = SecurityEventRequest::from_metadata(meta, timestamp_millis, None);
        body.icl_fields.event = Some(event.to_owned());
        self.send(wire::ROUTE_SECURITY_EVENT, &body).await.map(|_| ())
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, route: &str, body: &B) -> Result<T> {
        let bytes = self.send(route, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::InvalidResponse(format!("{route}: {e}")))
    }

    /// Sends a request and returns the body of a 2xx answer in a buffer wiped on drop (it may
    /// hold data keys).
    async fn send<B: Serialize>(&self, route: &str, body: &B) -> Result<Zeroizing<Vec<u8>>> {
        let payload =
            serde_json::to_vec(body).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let response = self
            .http
            .post(format!("{}{route}", self.url))
            .body(payload)
            .send()
            .await
            .map_err(|e| Error::Unreachable(describe(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Error::Unreachable(describe(&e)))?;
        let bytes = Zeroizing::new(Vec::from(bytes));
        if status.is_success() {
            return Ok(bytes);
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(error) => Err(Error::Proxy {
                code: error.error_code(),
                status: status.as_u16(),
                message: error.message,
            }),
            Err(_) => Err(Error::Proxy {
                code: ErrorCode::UnknownError,
                status: status.as_u16(),
                message: format!("HTTP {status} without an error body"),
            }),
        }
    }
}

/// What went wrong, with the causes reqwest keeps behind its own message (a refused
/// connection, a certificate from an unknown CA).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let text = keyhold_core::error_text::chain(e);
    if e.is_connect() { format!("connection failed: {text}") } else { text }
}
