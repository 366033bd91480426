//! The `gcp` backend, contract-tested: no real Cloud KMS runs here.
//!
//! - **drongo** (PyPI `drongo` 0.8.0, started by `scripts/services/gcp.sh`) serves the Cloud KMS
//!   REST paths with an in-memory key store. It does NO cryptography: its "ciphertext" is
//!   base64 of a JSON object holding the key name, the plaintext and the AAD, and decrypt checks
//!   that key name and AAD match. It has no key versions, no key states, and it checks no
//!   tokens. So it shows that our requests have the documented paths and JSON fields, that a
//!   round trip works, that the AAD we send on decrypt is the one we sent on encrypt, and that
//!   our CRC32C agrees with Google's `google-crc32c` (drongo computes `ciphertextCrc32c` and
//!   `plaintextCrc32c` with it). It cannot show that a tampered ciphertext is refused, nor any
//!   key state.
//! - A **recording proxy** in this test sits between the backend and drongo: it records every
//!   request (to check the exact JSON shapes against the REST reference), answers 401 to tokens
//!   the token endpoint below did not issue (drongo would accept anything), and can answer with
//!   an error in Google's documented JSON shape instead of forwarding (error mapping).
//! - A **token endpoint** in this test does what Google's does to a JWT-bearer grant: it
//!   verifies the RS256 signature with the service account's public key and checks `iss`,
//!   `scope`, `aud`, `iat`, `exp`, then issues a token.
//! - A **versioned double** (last section) carries what drongo cannot: key versions and their
//!   states, with real AES-256-GCM, so the whole conformance suite runs (tampering, a disabled
//!   key, rotation). It needs no service.
#![cfg(feature = "gcp")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
// The versioned double answers a refusal as the `Err` of its handlers: a whole HTTP response.
#![allow(clippy::result_large_err)]

mod common_cloud;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::extract::{Request, State};
use axum::response::Response;
use keyhold_core::secret::Dek;
use keyhold_kms::conformance::{self, Harness, service_env};
use keyhold_kms::gcp::{GcpConfig, GcpKms};
use keyhold_kms::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};
use serde_json::{Value, json};

use common_cloud::{Recorded, b64, random_hex, respond, respond_json, unb64, unix_now};

const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";
const CLIENT_EMAIL: &str = "keyhold-proxy@keyhold-test.iam.gserviceaccount.com";
const PRIVATE_KEY_ID: &str = "5a1e0b7c9d2f4e6a8b0c1d2e3f405162";
const PROJECT: &str = "keyhold-test";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

// --- the service account's key (a throwaway RSA key made by the test)

struct AccountKey {
    pem: String,
    public_key: Vec<u8>,
}

fn new_account_key() -> AccountKey {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let der: Pkcs8V1Der<'static> = pair.as_der().unwrap();
    let body = b64(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    AccountKey { pem, public_key: pair.public_key().as_ref().to_vec() }
}

fn account_key() -> &'static AccountKey {
    static KEY: OnceLock<AccountKey> = OnceLock::new();
    KEY.get_or_init(new_account_key)
}

/// A service-account JSON key file as Google issues them (fields we and Google's libraries read).
fn service_account_json(key: &AccountKey, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": PRIVATE_KEY_ID,
        "private_key": key.pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

// --- the token endpoint

struct TokenServer {
    url: OnceLock<String>,
    public_key: Vec<u8>,
    expires_in: AtomicU64,
    issued: Mutex<Vec<String>>,
    rejected: Mutex<Vec<String>>,
}

impl TokenServer {
    async fn start(public_key: Vec<u8>) -> Arc<Self> {
        let server = Arc::new(Self {
            url: OnceLock::new(),
            public_key,
            expires_in: AtomicU64::new(3599),
            issued: Mutex::new(Vec::new()),
            rejected: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(token_endpoint).with_state(Arc::clone(&server));
        let addr = common_cloud::serve(app).await;
        server.url.set(format!("http://{addr}/token")).unwrap();
        server
    }

    fn url(&self) -> &str {
        self.url.get().unwrap()
    }

    fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    /// What Google's token endpoint checks of a JWT-bearer grant
    /// (https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests).
    fn check(&self, request: &Recorded) -> Result<(), String> {
        if request.method != "POST" || request.path != "/token" {
            return Err(format!("{} {}", request.method, request.path));
        }
        if request.header("content-type") != Some("application/x-www-form-urlencoded") {
            return Err(format!("content-type {:?}", request.header("content-type")));
        }
        let form = common_cloud::form_decode(&request.body);
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        if field("grant_type").as_deref() != Some(JWT_BEARER) {
            return Err(format!("grant_type {:?}", field("grant_type")));
        }
        if form.len() != 2 {
            return Err(format!("unexpected form fields {form:?}"));
        }
        let assertion = field("assertion").ok_or("no assertion")?;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, claims, signature] = parts.as_slice() else {
            return Err("the assertion is not a JWS compact serialization".into());
        };
        let decode = |part: &str| common_cloud::unb64url(part).ok_or("not base64url");
        let signing_input = format!("{header}.{claims}");
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key)
            .verify(signing_input.as_bytes(), &decode(signature)?)
            .map_err(|_| "Invalid JWT Signature.".to_owned())?;
        let header: Value = serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
        if header != json!({"alg": "RS256", "typ": "JWT", "kid": PRIVATE_KEY_ID}) {
            return Err(format!("header {header}"));
        }
        let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
        let now = unix_now();
        let iat = claims["iat"].as_u64().ok_or("no iat")?;
        let exp = claims["exp"].as_u64().ok_or("no exp")?;
        if claims["iss"] != CLIENT_EMAIL
            || claims["scope"] != SCOPE
            || claims["aud"] != self.url()
            || iat + 60 < now
            || iat > now + 60
            || exp != iat + 3600
            || claims.as_object().unwrap().len() != 5
        {
            return Err(format!("claims {claims}"));
        }
        Ok(())
    }
}

async fn token_endpoint(State(server): State<Arc<TokenServer>>, request: Request) -> Response {
    let request = Recorded::read(request).await;
    match server.check(&request) {
        Ok(()) => {
            let mut issued = server.issued.lock().unwrap();
            let token = format!("ya29.keyhold-test-{}-{}", issued.len() + 1, random_hex(8));
            issued.push(token.clone());
            respond_json(
                200,
                &json!({
                    "access_token": token,
                    "expires_in": server.expires_in.load(Ordering::SeqCst),
                    "token_type": "Bearer",
                }),
            )
        }
        Err(why) => {
            server.rejected.lock().unwrap().push(why.clone());
            respond_json(400, &json!({"error": "invalid_grant", "error_description": why}))
        }
    }
}

// --- the recording proxy in front of drongo

struct Proxy {
    drongo: String,
    tokens: Arc<TokenServer>,
    http: reqwest::Client,
    revoked: Mutex<HashSet<String>>,
    reject_all: AtomicBool,
    canned: Mutex<VecDeque<(u16, Value)>>,
    records: Mutex<Vec<Recorded>>,
}

impl Proxy {
    fn records(&self) -> Vec<Recorded> {
        self.records.lock().unwrap().clone()
    }

    fn answer_next(&self, status: u16, body: Value) {
        self.canned.lock().unwrap().push_back((status, body));
    }
}

/// Google's error envelope (https://cloud.google.com/apis/design/errors#http_mapping).
fn google_error(code: u16, status: &str, message: &str, reason: Option<&str>) -> Value {
    let details: Vec<Value> = reason
        .map(|r| {
            json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": r,
                "domain": "googleapis.com",
                "metadata": {"service": "cloudkms.googleapis.com", "consumer": "projects/123"}
            })
        })
        .into_iter()
        .collect();
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
}

async fn proxy(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let request = Recorded::read(request).await;
    proxy.records.lock().unwrap().push(request.clone());
    let authorized = !proxy.reject_all.load(Ordering::SeqCst)
        && request.bearer().is_some_and(|token| {
            proxy.tokens.issued.lock().unwrap().iter().any(|t| t == token)
                && !proxy.revoked.lock().unwrap().contains(token)
        });
    if !authorized {
        return respond_json(
            401,
            &google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, \
                 login cookie or other valid authentication credential.",
                Some("ACCESS_TOKEN_EXPIRED"),
            ),
        );
    }
    if let Some((status, body)) = proxy.canned.lock().unwrap().pop_front() {
        return respond_json(status, &body);
    }
    let url = match &request.query {
        Some(q) => format!("{}{}?{q}", proxy.drongo, request.path),
        None => format!("{}{}", proxy.drongo, request.path),
    };
    let mut forward =
        proxy.http.request(reqwest::Method::from_bytes(request.method.as_bytes()).unwrap(), url);
    if !request.body.is_empty() {
        forward = forward.header("content-type", "application/json").body(request.body.clone());
    }
    let answer = forward.send().await.expect("drongo answers");
    let status = answer.status().as_u16();
    respond(status, "application/json", answer.bytes().await.unwrap())
}

// --- one test's world: token endpoint, proxy, a key ring of its own in drongo

struct Env {
    dir: tempfile::TempDir,
    drongo: String,
    ring: String,
    tokens: Arc<TokenServer>,
    proxy: Arc<Proxy>,
    proxy_url: String,
}

impl Env {
    /// `None` when drongo is not running and KEYHOLD_SKIP_SERVICES=1.
    async fn start() -> Option<Self> {
        let drongo = service_env("KEYHOLD_TEST_DRONGO_URL")?;
        let tokens = TokenServer::start(account_key().public_key.clone()).await;
        let proxy = Arc::new(Proxy {
            drongo: drongo.trim_end_matches('/').to_owned(),
            tokens: Arc::clone(&tokens),
            http: reqwest::Client::new(),
            revoked: Mutex::new(HashSet::new()),
            reject_all: AtomicBool::new(false),
            canned: Mutex::new(VecDeque::new()),
            records: Mutex::new(Vec::new()),
        });
        let addr = common_cloud::serve(
            axum::Router::new().fallback(self::proxy).with_state(Arc::clone(&proxy)),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sa.json"),
            service_account_json(account_key(), tokens.url()),
        )
        .unwrap();
        // drongo keeps its state while it runs: a key ring of our own keeps tests (and re-runs)
        // apart.
        let ring = format!("ring-{}", random_hex(6));
        let env = Self {
            dir,
            drongo: proxy.drongo.clone(),
            ring,
            tokens,
            proxy,
            proxy_url: format!("http://{addr}"),
        };
        let created = reqwest::Client::new()
            .post(format!(
                "{}/v1/projects/{PROJECT}/locations/global/keyRings?keyRingId={}",
                env.drongo, env.ring
            ))
            .send()
            .await
            .expect("drongo answers");
        assert!(created.status().is_success(), "create key ring: {}", created.status());
        Some(env)
    }

    /// Creates a symmetric ENCRYPT_DECRYPT key in drongo (directly, not through the proxy).
    async fn create_key(&self, id: &str) -> String {
        let ring = format!("projects/{PROJECT}/locations/global/keyRings/{}", self.ring);
        let created = reqwest::Client::new()
            .post(format!("{}/v1/{ring}/cryptoKeys?cryptoKeyId={id}", self.drongo))
            .json(&json!({"purpose": "ENCRYPT_DECRYPT"}))
            .send()
            .await
            .expect("drongo answers");
        assert!(created.status().is_success(), "create key: {}", created.status());
        format!("{ring}/cryptoKeys/{id}")
    }

    fn config(&self, key_name: &str) -> GcpConfig {
        GcpConfig {
            key_name: key_name.to_owned(),
            credentials_file: SecretSource::File { file: "sa.json".into() },
            endpoint: Some(self.proxy_url.clone()),
            // The token URI comes from the key file, as in production.
            token_uri: None,
        }
    }

    fn options(&self, timeout: Duration) -> ConnectOptions {
        ConnectOptions { base_dir: self.dir.path().to_owned(), request_timeout: timeout }
    }

    async fn kms(&self, key_name: &str) -> GcpKms {
        GcpKms::connect(&self.config(key_name), &self.options(Duration::from_secs(5)))
            .await
            .unwrap()
    }
}

fn sorted_keys(body: &Value) -> Vec<String> {
    let mut keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn ctx() -> KeyContext<'static> {
    KeyContext::new("tenant-a", 7)
}

// --- the conformance suite, as far as drongo can carry it

struct GcpHarness {
    kms: Arc<GcpKms>,
    unreachable: Arc<GcpKms>,
}

#[async_trait]
impl Harness for GcpHarness {
    fn name(&self) -> &str {
        "gcp (drongo)"
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        None // drongo has no key versions and no key states
    }
    async fn enable_key(&self) -> Option<()> {
        None
    }
    async fn rotate_key(&self) -> Option<()> {
        None // drongo's keys have one version, forever
    }
    fn key_version_of(&self, _wrapped: &[u8]) -> Option<u32> {
        None // Cloud KMS ciphertexts are opaque
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        Some(self.unreachable.clone())
    }
    fn unreachable_deadline(&self) -> Duration {
        Duration::from_secs(4)
    }
    fn real_crypto(&self) -> bool {
        false // drongo imitates the REST shapes only
    }
}

#[tokio::test]
async fn conformance_checks_drongo_can_carry() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("conformance").await;
    let kms = Arc::new(env.kms(&key).await);
    let mut closed = env.config(&key);
    closed.endpoint = Some(format!("http://127.0.0.1:{}", keyhold_kms::conformance::silent_port()));
    let unreachable =
        Arc::new(GcpKms::connect(&closed, &env.options(Duration::from_secs(2))).await.unwrap());
    let h = GcpHarness { kms, unreachable };

    // drongo compares the AAD given to decrypt with the one given to encrypt, so the wrong
    // context check shows that we send the context both times (the binding itself is Cloud KMS's
    // AES-GCM, not shown here). Its "ciphertext" is reversible base64 of JSON: the tamper check
    // would prove nothing, so the harness says `real_crypto() == false` and it is skipped.
    let report = conformance::run_all(&h).await;
    report.assert_all_passed_except(&[
        "tampered_ciphertext_is_refused",
        "disabled_key_is_denied",
        "rotation_keeps_old_keys",
    ]);
    assert!(env.tokens.rejected.lock().unwrap().is_empty());
}

#[tokio::test]
async fn requests_have_the_documented_shapes() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("shapes").await;
    let kms = env.kms(&key).await;
    let dek = Dek::generate().unwrap();
    let wrapped = kms.wrap(&dek, &ctx()).await.unwrap();
    assert_eq!(kms.unwrap(&wrapped, &ctx()).await.unwrap(), dek);
    kms.health().await.unwrap();

    let records = env.proxy.records();
    assert_eq!(records.len(), 3, "{records:#?}");
    let tokens = env.tokens.issued();
    assert_eq!(tokens.len(), 1, "one token serves all three calls");
    for r in &records {
        assert_eq!(r.bearer(), Some(tokens[0].as_str()), "{} {}", r.method, r.path);
        assert_eq!(r.query, None);
    }
    let aad = ctx().associated_data();
    let crc = |bytes: &[u8]| Value::String(crc32c::crc32c(bytes).to_string());

    // POST https://cloudkms.googleapis.com/v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/**}:encrypt
    let encrypt = &records[0];
    assert_eq!(
        (encrypt.method.as_str(), encrypt.path.clone()),
        ("POST", format!("/v1/{key}:encrypt"))
    );
    assert_eq!(encrypt.header("content-type"), Some("application/json"));
    let body = encrypt.json();
    assert_eq!(
        sorted_keys(&body),
        [
            "additionalAuthenticatedData",
            "additionalAuthenticatedDataCrc32c",
            "plaintext",
            "plaintextCrc32c"
        ]
    );
    assert_eq!(unb64(body["plaintext"].as_str().unwrap()), dek.expose_secret());
    assert_eq!(unb64(body["additionalAuthenticatedData"].as_str().unwrap()), aad);
    assert_eq!(body["plaintextCrc32c"], crc(dek.expose_secret()));
    assert_eq!(body["additionalAuthenticatedDataCrc32c"], crc(&aad));

    // POST https://cloudkms.googleapis.com/v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/*}:decrypt
    let decrypt = &records[1];
    assert_eq!(
        (decrypt.method.as_str(), decrypt.path.clone()),
        ("POST", format!("/v1/{key}:decrypt"))
    );
    assert_eq!(decrypt.header("content-type"), Some("application/json"));
    let body = decrypt.json();
    assert_eq!(
        sorted_keys(&body),
        [
            "additionalAuthenticatedData",
            "additionalAuthenticatedDataCrc32c",
            "ciphertext",
            "ciphertextCrc32c"
        ]
    );
    assert_eq!(unb64(body["ciphertext"].as_str().unwrap()), wrapped);
    assert_eq!(unb64(body["additionalAuthenticatedData"].as_str().unwrap()), aad);
    assert_eq!(body["ciphertextCrc32c"], crc(&wrapped));
    assert_eq!(body["additionalAuthenticatedDataCrc32c"], crc(&aad));

    // GET https://cloudkms.googleapis.com/v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/*}
    let get = &records[2];
    assert_eq!((get.method.as_str(), get.path.clone()), ("GET", format!("/v1/{key}")));
    assert!(get.body.is_empty());
}

#[tokio::test]
async fn the_token_is_cached_and_fetched_again_before_it_expires() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("cache").await;
    // A 2-second token is refreshed after half its life.
    env.tokens.expires_in.store(2, Ordering::SeqCst);
    let kms = env.kms(&key).await;
    for _ in 0..3 {
        kms.health().await.unwrap();
    }
    assert_eq!(env.tokens.issued().len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    kms.health().await.unwrap();
    let tokens = env.tokens.issued();
    assert_eq!(tokens.len(), 2);
    assert_eq!(env.proxy.records().last().unwrap().bearer(), Some(tokens[1].as_str()));
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("revoked").await;
    let kms = env.kms(&key).await;
    kms.health().await.unwrap();
    let first = env.tokens.issued()[0].clone();
    env.proxy.revoked.lock().unwrap().insert(first.clone());

    let wrapped = kms.generate(&ctx()).await.unwrap().wrapped;
    let tokens = env.tokens.issued();
    assert_eq!(tokens.len(), 2);
    let records = env.proxy.records();
    let encrypts: Vec<_> = records.iter().filter(|r| r.path.ends_with(":encrypt")).collect();
    assert_eq!(encrypts.len(), 2, "one 401, one retry");
    assert_eq!(encrypts[0].bearer(), Some(first.as_str()));
    assert_eq!(encrypts[1].bearer(), Some(tokens[1].as_str()));
    assert_eq!(encrypts[0].body, encrypts[1].body, "the retry sends the same request");
    kms.unwrap(&wrapped, &ctx()).await.unwrap();
    assert_eq!(env.tokens.issued().len(), 2, "the new token is cached");
}

#[tokio::test]
async fn a_token_refused_twice_is_access_denied() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("denied").await;
    let kms = env.kms(&key).await;
    env.proxy.reject_all.store(true, Ordering::SeqCst);
    let err = kms.generate(&ctx()).await.unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied(_)), "{err:?}");
    assert_eq!(env.proxy.records().len(), 2, "exactly one retry");
    assert_eq!(env.tokens.issued().len(), 2, "exactly one refresh");
}

#[tokio::test]
async fn a_jwt_signed_with_another_key_is_refused() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("wrong-signer").await;
    std::fs::write(
        env.dir.path().join("other.json"),
        service_account_json(&new_account_key(), env.tokens.url()),
    )
    .unwrap();
    let mut config = env.config(&key);
    config.credentials_file = SecretSource::File { file: "other.json".into() };
    let kms = GcpKms::connect(&config, &env.options(Duration::from_secs(5))).await.unwrap();
    let err = kms.health().await.unwrap_err();
    assert!(
        matches!(&err, KmsError::AccessDenied(m) if m.contains("invalid_grant") && m.contains("Signature")),
        "{err:?}"
    );
    assert_eq!(env.tokens.rejected.lock().unwrap().as_slice(), ["Invalid JWT Signature."]);
    assert!(env.proxy.records().is_empty(), "no KMS request without a token");
}

#[tokio::test]
async fn documented_error_answers_map_to_their_variants() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("errors").await;
    let kms = env.kms(&key).await;
    let wrapped = kms.generate(&ctx()).await.unwrap().wrapped;
    let dek = Dek::generate().unwrap();
    let version = format!("{key}/cryptoKeyVersions/1");

    let disabled = google_error(
        400,
        "FAILED_PRECONDITION",
        &format!("{version} is not enabled, current state is: DISABLED."),
        None,
    );
    env.proxy.answer_next(400, disabled.clone());
    assert!(matches!(kms.wrap(&dek, &ctx()).await, Err(KmsError::KeyDisabled(_))));
    env.proxy.answer_next(400, disabled);
    assert!(matches!(kms.unwrap(&wrapped, &ctx()).await, Err(KmsError::KeyDisabled(_))));
    env.proxy.answer_next(
        400,
        google_error(
            400,
            "FAILED_PRECONDITION",
            &format!("{version} is not enabled, current state is: DESTROYED."),
            None,
        ),
    );
    assert!(matches!(kms.unwrap(&wrapped, &ctx()).await, Err(KmsError::KeyDisabled(_))));

    env.proxy.answer_next(
        403,
        google_error(
            403,
            "PERMISSION_DENIED",
            &format!("Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource '{key}' (or it may not exist)."),
            Some("IAM_PERMISSION_DENIED"),
        ),
    );
    assert!(matches!(kms.wrap(&dek, &ctx()).await, Err(KmsError::AccessDenied(_))));

    env.proxy.answer_next(
        403,
        google_error(
            403,
            "PERMISSION_DENIED",
            "This API method requires billing to be enabled. Please enable billing on project #123.",
            Some("BILLING_DISABLED"),
        ),
    );
    assert!(matches!(kms.wrap(&dek, &ctx()).await, Err(KmsError::AccountIssue(_))));

    env.proxy.answer_next(
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Cryptographic requests'.",
            Some("RATE_LIMIT_EXCEEDED"),
        ),
    );
    assert_eq!(kms.unwrap(&wrapped, &ctx()).await.unwrap_err(), KmsError::Throttled);

    env.proxy.answer_next(
        503,
        google_error(503, "UNAVAILABLE", "The service is currently unavailable.", None),
    );
    assert!(matches!(kms.wrap(&dek, &ctx()).await, Err(KmsError::Unreachable(_))));

    env.proxy.answer_next(
        200,
        json!({"name": key, "purpose": "ENCRYPT_DECRYPT", "primary": {"name": version, "state": "DISABLED"}}),
    );
    assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));
    env.proxy.answer_next(200, json!({"name": key, "purpose": "ENCRYPT_DECRYPT"}));
    assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));
    env.proxy.answer_next(
        200,
        json!({"name": key, "purpose": "ASYMMETRIC_DECRYPT", "primary": {"name": version, "state": "ENABLED"}}),
    );
    assert!(matches!(kms.health().await, Err(KmsError::ConfigurationInvalid(_))));

    // After all that, the key still works.
    assert!(kms.unwrap(&wrapped, &ctx()).await.is_ok());
}

#[tokio::test]
async fn integrity_fields_of_answers_are_verified() {
    let Some(env) = Env::start().await else { return };
    let key = env.create_key("integrity").await;
    let kms = env.kms(&key).await;
    let dek = Dek::generate().unwrap();
    let version = format!("{key}/cryptoKeyVersions/1");
    let ciphertext = b"opaque ciphertext".as_slice();
    let good_crc = crc32c::crc32c(ciphertext).to_string();
    let encrypt_answer = |crc: &str, verified: bool, name: &str| {
        json!({
            "name": name,
            "ciphertext": b64(ciphertext),
            "ciphertextCrc32c": crc,
            "verifiedPlaintextCrc32c": verified,
            "verifiedAdditionalAuthenticatedDataCrc32c": true,
            "protectionLevel": "SOFTWARE",
        })
    };
    // The documented answer, for reference: accepted.
    env.proxy.answer_next(200, encrypt_answer(&good_crc, true, &version));
    assert_eq!(kms.wrap(&dek, &ctx()).await.unwrap(), ciphertext);
    for (answer, why) in [
        (encrypt_answer("12345", true, &version), "ciphertext CRC mismatch"),
        (encrypt_answer(&good_crc, false, &version), "plaintext CRC not verified"),
        (
            encrypt_answer(
                &good_crc,
                true,
                "projects/x/locations/global/keyRings/r/cryptoKeys/other/cryptoKeyVersions/1",
            ),
            "another key",
        ),
    ] {
        env.proxy.answer_next(200, answer);
        let result = kms.wrap(&dek, &ctx()).await;
        assert!(matches!(result, Err(KmsError::WrapFailed(_))), "{why}: {result:?}");
    }
    let plaintext = dek.expose_secret();
    env.proxy.answer_next(
        200,
        json!({"plaintext": b64(plaintext), "plaintextCrc32c": (crc32c::crc32c(plaintext) ^ 1).to_string(), "usedPrimary": true}),
    );
    assert!(matches!(kms.unwrap(ciphertext, &ctx()).await, Err(KmsError::UnwrapFailed(_))));
    env.proxy.answer_next(
        200,
        json!({"plaintext": b64(plaintext), "plaintextCrc32c": crc32c::crc32c(plaintext).to_string(), "usedPrimary": true}),
    );
    assert_eq!(kms.unwrap(ciphertext, &ctx()).await.unwrap(), dek);
}

#[tokio::test]
async fn another_keys_ciphertext_and_a_missing_key() {
    let Some(env) = Env::start().await else { return };
    let a = env.create_key("key-a").await;
    let b = env.create_key("key-b").await;
    let kms_a = env.kms(&a).await;
    let kms_b = env.kms(&b).await;
    let wrapped = kms_a.generate(&ctx()).await.unwrap().wrapped;
    // drongo: 400 INVALID_ARGUMENT "Decryption failed: ciphertext is not for this key".
    assert_eq!(kms_b.unwrap(&wrapped, &ctx()).await.unwrap_err(), KmsError::InvalidCiphertext);
    // Empty input is refused without asking.
    let before = env.proxy.records().len();
    assert_eq!(kms_a.unwrap(&[], &ctx()).await.unwrap_err(), KmsError::InvalidCiphertext);
    assert_eq!(env.proxy.records().len(), before);

    let missing = env
        .kms(&format!("projects/{PROJECT}/locations/global/keyRings/{}/cryptoKeys/nope", env.ring))
        .await;
    assert!(matches!(missing.generate(&ctx()).await, Err(KmsError::ConfigurationInvalid(_))));
    assert!(matches!(missing.health().await, Err(KmsError::ConfigurationInvalid(_))));
}

/// Needs no server: `connect` validates without contacting anyone.
#[tokio::test]
async fn the_configuration_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sa.json"),
        service_account_json(account_key(), "https://oauth2.googleapis.com/token"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("user.json"),
        json!({"type": "authorized_user", "client_id": "x"}).to_string(),
    )
    .unwrap();
    let options =
        ConnectOptions { base_dir: dir.path().to_owned(), request_timeout: Duration::from_secs(1) };
    let good = GcpConfig {
        key_name: "projects/p/locations/global/keyRings/r/cryptoKeys/k".into(),
        credentials_file: SecretSource::File { file: "sa.json".into() },
        endpoint: None,
        token_uri: None,
    };
    let kms = GcpKms::connect(&good, &options).await.unwrap();
    assert_eq!(kms.kind(), "gcp");
    let printed = format!("{kms:?}");
    assert!(printed.contains(CLIENT_EMAIL) && !printed.contains("PRIVATE KEY"), "{printed}");

    let bad = |f: &dyn Fn(&mut GcpConfig)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    for (config, why) in [
        (
            bad(&|c| {
                c.key_name =
                    "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1".into()
            }),
            "a version",
        ),
        (bad(&|c| c.key_name = "p/r/k".into()), "not a key name"),
        (bad(&|c| c.endpoint = Some("http://kms.example.com".into())), "plain http off loopback"),
        (bad(&|c| c.token_uri = Some("ftp://x".into())), "not http"),
        (
            bad(&|c| c.credentials_file = SecretSource::File { file: "missing.json".into() }),
            "no file",
        ),
        (
            bad(&|c| c.credentials_file = SecretSource::File { file: "user.json".into() }),
            "not a service account",
        ),
        (
            bad(&|c| c.credentials_file = SecretSource::Inline("sa.json".to_owned().into())),
            "a path given inline",
        ),
    ] {
        let result = GcpKms::connect(&config, &options).await;
        assert!(matches!(result, Err(KmsError::ConfigurationInvalid(_))), "{why}: {result:?}");
    }
}

// --- a versioned double: what drongo cannot carry

/// A second contract test double, for what drongo has not: **key versions, their states, and
/// real cryptography**. It serves `cryptoKeys.encrypt`, `cryptoKeys.decrypt` and `cryptoKeys.get`
/// from the REST reference (fields as quoted in `keyhold_kms::gcp`) and:
///
/// - checks every request: method, path, `Authorization: Bearer` with a token the test's token
///   endpoint issued, `Content-Type: application/json`, exactly the documented JSON fields, and
///   the CRC32C checksums of plaintext, ciphertext and AAD (a mismatch is refused as Cloud KMS
///   refuses it, 400 `INVALID_ARGUMENT`); a request it cannot accept is also kept in `violations`,
///   which every test using it checks is empty;
/// - encrypts with AES-256-GCM under the primary version's own key, the request's AAD as
///   associated data, so a tampered ciphertext or a wrong context is refused by a real cipher;
///   its ciphertext is `version (u32, big-endian) ‖ nonce ‖ sealed` (Cloud KMS's own layout is
///   not published: it is opaque to the backend, which stores it as is);
/// - keeps each key's versions with a state (`ENABLED`, `DISABLED`) and a primary version:
///   rotating adds a version and makes it primary, so old ciphertexts decrypt with their own
///   version; a version that is not enabled refuses both directions with 400
///   `FAILED_PRECONDITION` "`<version> is not enabled, current state is: DISABLED.`", the message
///   Cloud KMS gives.
///
/// What it does NOT prove: that Cloud KMS answers exactly so. The error texts come from the
/// documentation and public reports; IAM, quotas, regions and the real ciphertext layout are not
/// modelled.
struct VersionedKms {
    tokens: Arc<TokenServer>,
    keys: Mutex<std::collections::HashMap<String, VersionedKey>>,
    violations: Mutex<Vec<String>>,
    records: Mutex<Vec<Recorded>>,
}

struct VersionedKey {
    /// Version `n` is `versions[n - 1]`: its key and whether it is enabled.
    versions: Vec<([u8; 32], bool)>,
    /// The primary version's number.
    primary: u32,
}

impl VersionedKey {
    fn new_version(&mut self) -> u32 {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).unwrap();
        self.versions.push((key, true));
        u32::try_from(self.versions.len()).unwrap()
    }
}

fn aead(key: &[u8; 32]) -> aws_lc_rs::aead::LessSafeKey {
    aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key).unwrap(),
    )
}

fn invalid_argument(message: &str) -> Response {
    respond_json(400, &google_error(400, "INVALID_ARGUMENT", message, None))
}

impl VersionedKms {
    async fn start() -> (Arc<Self>, String) {
        let double = Arc::new(Self {
            tokens: TokenServer::start(account_key().public_key.clone()).await,
            keys: Mutex::new(std::collections::HashMap::new()),
            violations: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
        });
        let addr = common_cloud::serve(
            axum::Router::new().fallback(serve_versioned).with_state(Arc::clone(&double)),
        )
        .await;
        (double, format!("http://{addr}"))
    }

    fn create_key(&self, id: &str) -> String {
        let name =
            format!("projects/{PROJECT}/locations/global/keyRings/versioned/cryptoKeys/{id}");
        let mut key = VersionedKey { versions: Vec::new(), primary: 0 };
        key.primary = key.new_version();
        self.keys.lock().unwrap().insert(name.clone(), key);
        name
    }

    /// Adds a version and makes it primary; its number.
    fn rotate(&self, name: &str) -> u32 {
        let mut keys = self.keys.lock().unwrap();
        let key = keys.get_mut(name).unwrap();
        key.primary = key.new_version();
        key.primary
    }

    fn set_enabled(&self, name: &str, version: u32, enabled: bool) {
        let mut keys = self.keys.lock().unwrap();
        keys.get_mut(name).unwrap().versions[version as usize - 1].1 = enabled;
    }

    fn primary(&self, name: &str) -> u32 {
        self.keys.lock().unwrap()[name].primary
    }

    fn violation(&self, what: String) -> Response {
        self.violations.lock().unwrap().push(what.clone());
        invalid_argument(&what)
    }

    fn assert_no_violations(&self) {
        let violations = self.violations.lock().unwrap();
        assert!(violations.is_empty(), "requests off the REST reference: {violations:?}");
    }

    /// The JSON body, if it has exactly `fields`.
    fn body(&self, request: &Recorded, fields: &[&str]) -> Result<Value, Response> {
        if request.header("content-type") != Some("application/json") {
            return Err(
                self.violation(format!("content-type {:?}", request.header("content-type")))
            );
        }
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|e| self.violation(format!("the body is not JSON: {e}")))?;
        let mut expected: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        expected.sort();
        if !body.is_object() || sorted_keys(&body) != expected {
            return Err(self.violation(format!("fields {body}, want {expected:?}")));
        }
        Ok(body)
    }

    /// The bytes of base64 field `field`, checked against its CRC32C field `crc_field` (a
    /// decimal int64 in a string, as the reference's "string (int64 format)").
    fn checked(&self, body: &Value, field: &str, crc_field: &str) -> Result<Vec<u8>, Response> {
        let bytes = unb64(body[field].as_str().unwrap_or_default());
        let crc = body[crc_field].as_str().and_then(|s| s.parse::<u64>().ok());
        match crc {
            Some(crc) if crc == u64::from(crc32c::crc32c(&bytes)) => Ok(bytes),
            Some(_) => Err(invalid_argument(&format!(
                "The checksum in field {crc_field} did not match the data in field {field}."
            ))),
            None => Err(self.violation(format!("{crc_field} is not an int64 string"))),
        }
    }

    /// An encrypt or decrypt request's bytes (`field`, checked against `crc_field`) and AAD:
    /// the body must have exactly those four documented fields.
    fn data_and_aad(
        &self,
        request: &Recorded,
        field: &str,
        crc_field: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), Response> {
        let aad_fields = ["additionalAuthenticatedData", "additionalAuthenticatedDataCrc32c"];
        let body = self.body(request, &[field, aad_fields[0], crc_field, aad_fields[1]])?;
        let data = self.checked(&body, field, crc_field)?;
        let aad = self.checked(&body, aad_fields[0], aad_fields[1])?;
        Ok((data, aad))
    }

    fn not_enabled(name: &str, version: u32) -> Response {
        respond_json(
            400,
            &google_error(
                400,
                "FAILED_PRECONDITION",
                &format!(
                    "{name}/cryptoKeyVersions/{version} is not enabled, current state is: DISABLED."
                ),
                None,
            ),
        )
    }

    fn denied(name: &str, permission: &str) -> Response {
        respond_json(
            403,
            &google_error(
                403,
                "PERMISSION_DENIED",
                &format!(
                    "Permission '{permission}' denied on resource '{name}' (or it may not exist)."
                ),
                Some("IAM_PERMISSION_DENIED"),
            ),
        )
    }

    fn encrypt(&self, name: &str, request: &Recorded) -> Result<Response, Response> {
        let (plaintext, aad) = self.data_and_aad(request, "plaintext", "plaintextCrc32c")?;
        let keys = self.keys.lock().unwrap();
        let Some(key) = keys.get(name) else {
            return Err(Self::denied(name, "cloudkms.cryptoKeyVersions.useToEncrypt"));
        };
        let (secret, enabled) = key.versions[key.primary as usize - 1];
        if !enabled {
            return Err(Self::not_enabled(name, key.primary));
        }
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let mut sealed = plaintext;
        aead(&secret)
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(&aad),
                &mut sealed,
            )
            .unwrap();
        let mut ciphertext = key.primary.to_be_bytes().to_vec();
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&sealed);
        Ok(respond_json(
            200,
            &json!({
                "name": format!("{name}/cryptoKeyVersions/{}", key.primary),
                "ciphertext": b64(&ciphertext),
                "ciphertextCrc32c": crc32c::crc32c(&ciphertext).to_string(),
                "verifiedPlaintextCrc32c": true,
                "verifiedAdditionalAuthenticatedDataCrc32c": true,
                "protectionLevel": "SOFTWARE",
            }),
        ))
    }

    fn decrypt(&self, name: &str, request: &Recorded) -> Result<Response, Response> {
        let (ciphertext, aad) = self.data_and_aad(request, "ciphertext", "ciphertextCrc32c")?;
        let keys = self.keys.lock().unwrap();
        let Some(key) = keys.get(name) else {
            return Err(Self::denied(name, "cloudkms.cryptoKeyVersions.useToDecrypt"));
        };
        // Cloud KMS's answer to a ciphertext that is not for this key or does not authenticate.
        let failed = || {
            invalid_argument(
                "Decryption failed: verify that 'name' refer to the correct CryptoKey.",
            )
        };
        let (Some(version), Some(nonce), Some(sealed)) = (
            ciphertext.get(..4).map(|v| u32::from_be_bytes(v.try_into().unwrap())),
            ciphertext.get(4..16),
            ciphertext.get(16..),
        ) else {
            return Err(failed());
        };
        let Some(&(secret, enabled)) =
            version.checked_sub(1).and_then(|i| key.versions.get(i as usize))
        else {
            return Err(failed());
        };
        if !enabled {
            return Err(Self::not_enabled(name, version));
        }
        let mut buffer = sealed.to_vec();
        let plaintext = aead(&secret)
            .open_in_place(
                aws_lc_rs::aead::Nonce::try_assume_unique_for_key(nonce).unwrap(),
                aws_lc_rs::aead::Aad::from(&aad),
                &mut buffer,
            )
            .map_err(|_| failed())?;
        Ok(respond_json(
            200,
            &json!({
                "plaintext": b64(plaintext),
                "plaintextCrc32c": crc32c::crc32c(plaintext).to_string(),
                "usedPrimary": version == key.primary,
                "protectionLevel": "SOFTWARE",
            }),
        ))
    }

    fn get(&self, name: &str) -> Response {
        let keys = self.keys.lock().unwrap();
        let Some(key) = keys.get(name) else {
            return Self::denied(name, "cloudkms.cryptoKeys.get");
        };
        let state = if key.versions[key.primary as usize - 1].1 { "ENABLED" } else { "DISABLED" };
        respond_json(
            200,
            &json!({
                "name": name,
                "purpose": "ENCRYPT_DECRYPT",
                "primary": {
                    "name": format!("{name}/cryptoKeyVersions/{}", key.primary),
                    "state": state,
                    "protectionLevel": "SOFTWARE",
                    "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
                },
                "versionTemplate": {"protectionLevel": "SOFTWARE", "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION"},
            }),
        )
    }
}

async fn serve_versioned(State(double): State<Arc<VersionedKms>>, request: Request) -> Response {
    let request = Recorded::read(request).await;
    double.records.lock().unwrap().push(request.clone());
    let issued = request
        .bearer()
        .is_some_and(|token| double.tokens.issued.lock().unwrap().iter().any(|t| t == token));
    if !issued {
        return double
            .violation(format!("{} {} without an issued token", request.method, request.path));
    }
    let Some(resource) = request.path.strip_prefix("/v1/") else {
        return double.violation(format!("path {}", request.path));
    };
    let outcome = match (request.method.as_str(), resource.rsplit_once(':')) {
        ("POST", Some((name, "encrypt"))) => double.encrypt(name, &request),
        ("POST", Some((name, "decrypt"))) => double.decrypt(name, &request),
        ("GET", None) if request.body.is_empty() => Ok(double.get(resource)),
        _ => Err(double.violation(format!("{} {}", request.method, request.path))),
    };
    outcome.unwrap_or_else(|refusal| refusal)
}

struct VersionedHarness {
    double: Arc<VersionedKms>,
    key: String,
    kms: Arc<GcpKms>,
    unreachable: Arc<GcpKms>,
}

#[async_trait]
impl Harness for VersionedHarness {
    fn name(&self) -> &str {
        "gcp (versioned double)"
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        // Cloud KMS disables versions, not keys: the primary's state decides new wraps, and each
        // ciphertext's own version decides its unwrap.
        self.double.set_enabled(&self.key, self.double.primary(&self.key), false);
        Some(())
    }
    async fn enable_key(&self) -> Option<()> {
        self.double.set_enabled(&self.key, self.double.primary(&self.key), true);
        Some(())
    }
    async fn rotate_key(&self) -> Option<()> {
        self.double.rotate(&self.key);
        Some(())
    }
    fn key_version_of(&self, wrapped: &[u8]) -> Option<u32> {
        // The double's own layout (the backend stores Cloud KMS's ciphertext as is).
        Some(u32::from_be_bytes(wrapped.get(..4)?.try_into().ok()?))
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        Some(self.unreachable.clone())
    }
    fn unreachable_deadline(&self) -> Duration {
        Duration::from_secs(4)
    }
    fn real_crypto(&self) -> bool {
        true
    }
}

/// The backend against the versioned double, from a service-account file as in production.
async fn versioned_kms(
    double: &VersionedKms,
    url: &str,
    key: &str,
    timeout: Duration,
) -> (tempfile::TempDir, GcpKms) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sa.json"),
        service_account_json(account_key(), double.tokens.url()),
    )
    .unwrap();
    let config = GcpConfig {
        key_name: key.to_owned(),
        credentials_file: SecretSource::File { file: "sa.json".into() },
        endpoint: Some(url.to_owned()),
        token_uri: None,
    };
    let options = ConnectOptions { base_dir: dir.path().to_owned(), request_timeout: timeout };
    (dir, GcpKms::connect(&config, &options).await.unwrap())
}

/// The whole conformance suite, the three checks drongo cannot carry included: tampering (real
/// AES-GCM), a disabled key, rotation with old ciphertexts still decrypting. Needs no service.
#[tokio::test]
async fn versioned_double_passes_the_whole_conformance_suite() {
    let (double, url) = VersionedKms::start().await;
    let key = double.create_key("conformance");
    let (_dir, kms) = versioned_kms(&double, &url, &key, Duration::from_secs(5)).await;
    let (_dir2, unreachable) = versioned_kms(
        &double,
        &format!("http://127.0.0.1:{}", keyhold_kms::conformance::silent_port()),
        &key,
        Duration::from_secs(2),
    )
    .await;
    let h = VersionedHarness {
        double: Arc::clone(&double),
        key: key.clone(),
        kms: Arc::new(kms),
        unreachable: Arc::new(unreachable),
    };
    let report = conformance::run_all(&h).await;
    report.assert_all_passed_except(&[]);
    double.assert_no_violations();
    // The suite rotated the key at least once, and every encrypt named a version of it.
    assert!(double.primary(&key) >= 2, "the suite did not rotate");
    assert!(double.tokens.rejected.lock().unwrap().is_empty());
}

/// Key versions one by one: new wraps use the primary version; a ciphertext of an older version
/// decrypts while that version is enabled and is refused as "disabled" (a revocation, 213 at the
/// proxy) when only that version is disabled, while the key's newer wraps keep working;
/// `health` reports the primary's state.
#[tokio::test]
async fn key_versions_and_their_states() {
    let (double, url) = VersionedKms::start().await;
    let key = double.create_key("versions");
    let (_dir, kms) = versioned_kms(&double, &url, &key, Duration::from_secs(5)).await;
    let version = |wrapped: &[u8]| u32::from_be_bytes(wrapped[..4].try_into().unwrap());

    let v1 = kms.generate(&ctx()).await.unwrap();
    assert_eq!(version(&v1.wrapped), 1);
    assert_eq!(double.rotate(&key), 2);
    let v2 = kms.generate(&ctx()).await.unwrap();
    assert_eq!(version(&v2.wrapped), 2, "new wraps use the new primary version");
    assert_eq!(kms.unwrap(&v1.wrapped, &ctx()).await.unwrap(), v1.dek);
    kms.health().await.unwrap();

    // Version 1 disabled: its ciphertexts are refused, version 2's still work.
    double.set_enabled(&key, 1, false);
    let refused = kms.unwrap(&v1.wrapped, &ctx()).await.unwrap_err();
    assert!(matches!(refused, KmsError::KeyDisabled(_)), "{refused:?}");
    assert!(refused.is_revocation());
    assert_eq!(kms.unwrap(&v2.wrapped, &ctx()).await.unwrap(), v2.dek);
    assert_eq!(version(&kms.generate(&ctx()).await.unwrap().wrapped), 2);
    kms.health().await.unwrap();

    // The primary disabled: no new wraps, and health says why.
    double.set_enabled(&key, 2, false);
    assert!(matches!(kms.generate(&ctx()).await, Err(KmsError::KeyDisabled(_))));
    assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));

    // Both enabled again: everything made before decrypts.
    double.set_enabled(&key, 1, true);
    double.set_enabled(&key, 2, true);
    assert_eq!(kms.unwrap(&v1.wrapped, &ctx()).await.unwrap(), v1.dek);
    assert_eq!(kms.unwrap(&v2.wrapped, &ctx()).await.unwrap(), v2.dek);

    // Another key's ciphertext, even of the same version number, does not decrypt.
    let other = double.create_key("other");
    let (_dir2, other_kms) = versioned_kms(&double, &url, &other, Duration::from_secs(5)).await;
    assert_eq!(
        other_kms.unwrap(&v1.wrapped, &ctx()).await.unwrap_err(),
        KmsError::InvalidCiphertext
    );
    double.assert_no_violations();
}
