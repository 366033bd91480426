//! The `azure` backend, contract-tested: no real Key Vault or Managed HSM runs here.
//!
//! The tests run the backend against a small **contract test double** served from this file: the
//! HTTP exchanges of the public Key Vault REST reference (api-version 7.4: wrapkey, unwrapkey,
//! get key; `examples/*-example.json` in Azure/azure-rest-api-specs) and of Microsoft Entra ID's
//! client-credentials token endpoint, with these properties:
//!
//! - it **checks every request** against the reference: method, path, `api-version=7.4`,
//!   `Authorization: Bearer` with a token it issued, `Content-Type`, the exact JSON fields and
//!   their encodings (base64url), the token request's form fields and scope;
//! - it does **real cryptography**: RSA-OAEP-256 with a fresh 2048-bit key per key version, AES-256
//!   key wrap (RFC 3394) for the Managed HSM variant, so round trips, tampering and wrong contexts
//!   are decided by real ciphers;
//! - it keeps **key versions and the enabled flag**, so disabling and rotating are real state
//!   changes, not scripted answers;
//! - a few tests queue one **canned error answer** in the documented `KeyVaultError` shape
//!   (throttling, outages, permission errors) to check the mapping.
//!
//! What it does NOT prove: that Azure answers exactly like this. Error codes and messages for
//! disabled keys, failed unwraps (assumed 400 `BadParameter`), throttling and permissions come
//! from documentation and public reports, not from observing the service; Entra ID's and Key
//! Vault's other rules (token audiences, RBAC, firewalls, key sizes, rate limits) are not modelled.
#![cfg(feature = "azure")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common_cloud;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::key_wrap::{AES_256, KeyEncryptionKey, KeyWrap};
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey,
};
use aws_lc_rs::signature::KeyPair as _;
use axum::extract::{Request, State};
use axum::response::Response;
use keyhold_core::secret::Dek;
use keyhold_kms::azure::{AzureAlgorithm, AzureConfig, AzureKms};
use keyhold_kms::conformance::{Harness, run_all};
use keyhold_kms::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};
use serde_json::{Value, json};

use common_cloud::{Recorded, b64url, random_hex, respond_json, unb64url};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "3f0c5d1e-8a2b-4c6d-9e7f-0a1b2c3d4e5f";
/// A client secret with characters that must be URL-encoded in the form.
const CLIENT_SECRET: &str = "kh~Q8.test/secret+with=odd&chars%";
const VAULT_BASE: &str = "https://keyhold-test.vault.azure.net";
const HSM_BASE: &str = "https://keyhold-test.managedhsm.azure.net";

// --- the contract test double

enum Material {
    Rsa {
        private: OaepPrivateDecryptingKey,
        public: OaepPublicEncryptingKey,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Oct {
        kek: [u8; 32],
    },
}

struct KeyVersion {
    id: String,
    material: Material,
    enabled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Key Vault with RSA keys.
    Vault,
    /// Managed HSM with AES-256 keys.
    Hsm,
}

struct Vault {
    flavor: Flavor,
    public_base: &'static str,
    scope: &'static str,
    keys: Mutex<HashMap<String, Vec<KeyVersion>>>,
    issued: Mutex<Vec<String>>,
    revoked: Mutex<HashSet<String>>,
    reject_all: AtomicBool,
    canned: Mutex<VecDeque<(u16, Value)>>,
    records: Mutex<Vec<Recorded>>,
    token_requests: Mutex<Vec<Recorded>>,
    /// What each wrapkey received, decoded: lets a test see the wrapped plaintext's layout.
    wrap_inputs: Mutex<Vec<Vec<u8>>>,
}

/// `n` and `e` of a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
/// (DER), without leading zero bytes: the JWK's `n` and `e`.
fn rsa_public_numbers(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
        assert_eq!(input[0], tag);
        let (len, header) = match input[1] {
            l if l < 0x80 => (usize::from(l), 2),
            l => {
                let count = usize::from(l & 0x7f);
                (
                    input[2..2 + count].iter().fold(0usize, |acc, b| acc << 8 | usize::from(*b)),
                    2 + count,
                )
            }
        };
        (&input[header..header + len], &input[header + len..])
    }
    let (sequence, _) = tlv(der, 0x30);
    let (n, rest) = tlv(sequence, 0x02);
    let (e, _) = tlv(rest, 0x02);
    let strip = |x: &[u8]| x.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    (strip(n), strip(e))
}

fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    respond_json(status, &json!({ "error": error }))
}

impl Vault {
    fn new(flavor: Flavor) -> Arc<Self> {
        let (public_base, scope) = match flavor {
            Flavor::Vault => (VAULT_BASE, "https://vault.azure.net/.default"),
            Flavor::Hsm => (HSM_BASE, "https://managedhsm.azure.net/.default"),
        };
        Arc::new(Self {
            flavor,
            public_base,
            scope,
            keys: Mutex::new(HashMap::new()),
            issued: Mutex::new(Vec::new()),
            revoked: Mutex::new(HashSet::new()),
            reject_all: AtomicBool::new(false),
            canned: Mutex::new(VecDeque::new()),
            records: Mutex::new(Vec::new()),
            token_requests: Mutex::new(Vec::new()),
            wrap_inputs: Mutex::new(Vec::new()),
        })
    }

    fn new_version(&self) -> KeyVersion {
        let material = match self.flavor {
            Flavor::Vault => {
                let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
                let (n, e) = rsa_public_numbers(pair.public_key().as_ref());
                assert_eq!(e, [1, 0, 1], "e = 65537");
                let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
                let private = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref()).unwrap();
                Material::Rsa {
                    public: OaepPublicEncryptingKey::new(private.public_key()).unwrap(),
                    private: OaepPrivateDecryptingKey::new(private).unwrap(),
                    n,
                    e,
                }
            }
            Flavor::Hsm => {
                let mut kek = [0u8; 32];
                aws_lc_rs::rand::fill(&mut kek).unwrap();
                Material::Oct { kek }
            }
        };
        KeyVersion { id: random_hex(16), material, enabled: true }
    }

    fn create_key(&self, name: &str) {
        let version = self.new_version();
        self.keys.lock().unwrap().insert(name.to_owned(), vec![version]);
    }

    fn rotate(&self, name: &str) {
        let version = self.new_version();
        self.keys.lock().unwrap().get_mut(name).unwrap().push(version);
    }

    fn set_enabled(&self, name: &str, enabled: bool) {
        self.keys.lock().unwrap().get_mut(name).unwrap().last_mut().unwrap().enabled = enabled;
    }

    fn versions(&self, name: &str) -> Vec<String> {
        self.keys.lock().unwrap()[name].iter().map(|v| v.id.clone()).collect()
    }

    fn records(&self) -> Vec<Recorded> {
        self.records.lock().unwrap().clone()
    }

    fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    fn answer_next(&self, status: u16, body: Value) {
        self.canned.lock().unwrap().push_back((status, body));
    }

    fn kid(&self, name: &str, version: &str) -> String {
        format!("{}/keys/{name}/{version}", self.public_base)
    }

    /// Microsoft Entra ID's token endpoint, client-credentials grant with a shared secret.
    fn token(&self, request: Recorded) -> Response {
        self.token_requests.lock().unwrap().push(request.clone());
        let aad_error = |status: u16, error: &str, description: &str| {
            respond_json(
                status,
                &json!({
                    "error": error,
                    "error_description": format!("{description}\r\nTrace ID: 0000\r\nCorrelation ID: 0000\r\nTimestamp: 2026-11-22 00:00:00Z"),
                    "error_codes": [description.split(':').next().unwrap().trim_start_matches("AADSTS").parse::<u64>().unwrap_or(0)],
                    "trace_id": "0000", "correlation_id": "0000",
                }),
            )
        };
        if request.method != "POST" {
            return aad_error(
                400,
                "invalid_request",
                "AADSTS900561: The endpoint only accepts POST requests.",
            );
        }
        if request.path != format!("/{TENANT}/oauth2/v2.0/token") {
            return aad_error(400, "invalid_request", "AADSTS90002: Tenant not found.");
        }
        if request.header("content-type") != Some("application/x-www-form-urlencoded") {
            return aad_error(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            );
        }
        let form = common_cloud::form_decode(&request.body);
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if form.len() != 4 {
            return aad_error(400, "invalid_request", "AADSTS900144: unexpected parameters.");
        }
        if field("grant_type") != Some("client_credentials") {
            return aad_error(
                400,
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type.",
            );
        }
        if field("client_id") != Some(CLIENT_ID) {
            return aad_error(
                400,
                "unauthorized_client",
                "AADSTS700016: Application not found in the directory.",
            );
        }
        if field("client_secret") != Some(CLIENT_SECRET) {
            return aad_error(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            );
        }
        if field("scope") != Some(self.scope) {
            return aad_error(
                400,
                "invalid_scope",
                "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
            );
        }
        let mut issued = self.issued.lock().unwrap();
        let token =
            format!("eyJ0eXAiOiJKV1QifQ.keyhold-test-{}.{}", issued.len() + 1, random_hex(8));
        issued.push(token.clone());
        respond_json(
            200,
            &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
        )
    }

    fn authorized(&self, request: &Recorded) -> bool {
        !self.reject_all.load(Ordering::SeqCst)
            && request.bearer().is_some_and(|token| {
                self.issued.lock().unwrap().iter().any(|t| t == token)
                    && !self.revoked.lock().unwrap().contains(token)
            })
    }

    fn key_not_found(name: &str) -> Response {
        kv_error(
            404,
            "KeyNotFound",
            &format!(
                "A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
            None,
        )
    }

    /// GET /keys/{name}[/{version}]: a KeyBundle (GetKey-example.json).
    fn get_key(&self, name: &str, version: Option<&str>) -> Response {
        let keys = self.keys.lock().unwrap();
        let Some(versions) = keys.get(name) else { return Self::key_not_found(name) };
        let found = match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|x| x.id.eq_ignore_ascii_case(v)),
        };
        let Some(v) = found else {
            return Self::key_not_found(&format!("{name}/{}", version.unwrap()));
        };
        let mut key = json!({
            "kid": self.kid(name, &v.id),
            "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
        });
        match &v.material {
            Material::Rsa { n, e, .. } => {
                key["kty"] = json!("RSA");
                key["n"] = json!(b64url(n));
                key["e"] = json!(b64url(e));
            }
            Material::Oct { .. } => key["kty"] = json!("oct-HSM"),
        }
        respond_json(
            200,
            &json!({
                "key": key,
                "attributes": {"enabled": v.enabled, "created": 1_763_769_600, "updated": 1_763_769_600, "recoveryLevel": "Recoverable+Purgeable"},
            }),
        )
    }

    /// POST /keys/{name}[/{version}]/wrapkey and /keys/{name}/{version}/unwrapkey:
    /// KeyOperationsParameters in, KeyOperationResult out (wrapKey-example.json,
    /// unwrapKey-example.json).
    fn operate(
        &self,
        request: &Recorded,
        name: &str,
        version: Option<&str>,
        wrap: bool,
    ) -> Response {
        let operation = if wrap { "wrapKey" } else { "unwrapKey" };
        let bad = |why: &str| kv_error(400, "BadParameter", why, None);
        if !request.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
            return bad("Content-Type must be application/json.");
        }
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return bad("The request body is not JSON.");
        };
        let Some(fields) = body.as_object() else {
            return bad("The request body is not an object.");
        };
        let mut keys: Vec<&String> = fields.keys().collect();
        keys.sort();
        if keys != ["alg", "value"] {
            return bad("Unexpected parameters.");
        }
        let (Some(alg), Some(value)) = (body["alg"].as_str(), body["value"].as_str()) else {
            return bad("alg and value must be strings.");
        };
        let Some(input) = unb64url(value) else { return bad("value is not base64url.") };
        let keys = self.keys.lock().unwrap();
        let Some(versions) = keys.get(name) else { return Self::key_not_found(name) };
        let found = match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|x| x.id.eq_ignore_ascii_case(v)),
        };
        let Some(v) = found else {
            return Self::key_not_found(&format!("{name}/{}", version.unwrap()));
        };
        if !v.enabled {
            return kv_error(
                403,
                "Forbidden",
                &format!("Operation {operation} is not allowed on a disabled key."),
                Some("KeyDisabled"),
            );
        }
        let output = match (&v.material, alg) {
            (Material::Rsa { public, .. }, "RSA-OAEP-256") if wrap => {
                if input.len() > public.max_plaintext_size(&OAEP_SHA256_MGF1SHA256) {
                    return bad("The value is too long for the key.");
                }
                let mut out = vec![0u8; public.ciphertext_size()];
                let n =
                    public.encrypt(&OAEP_SHA256_MGF1SHA256, &input, &mut out, None).unwrap().len();
                out.truncate(n);
                Some(out)
            }
            (Material::Rsa { private, .. }, "RSA-OAEP-256") => {
                let mut out = vec![0u8; private.min_output_size()];
                private
                    .decrypt(&OAEP_SHA256_MGF1SHA256, &input, &mut out, None)
                    .ok()
                    .map(|plain| plain.to_vec())
            }
            (Material::Oct { kek }, "A256KW") if wrap => {
                let mut out = vec![0u8; input.len() + 8];
                KeyEncryptionKey::new(&AES_256, kek)
                    .unwrap()
                    .wrap(&input, &mut out)
                    .ok()
                    .map(|w| w.to_vec())
            }
            (Material::Oct { kek }, "A256KW") => {
                let mut out = vec![0u8; input.len().saturating_sub(8).max(8)];
                KeyEncryptionKey::new(&AES_256, kek)
                    .unwrap()
                    .unwrap(&input, &mut out)
                    .ok()
                    .map(|p| p.to_vec())
            }
            (_, other) => {
                return bad(&format!("The algorithm {other} is not supported for this key type."));
            }
        };
        let Some(output) = output else {
            // A value that does not decrypt. The real message is not documented; BadParameter
            // is what the contract assumes.
            return bad("The parameter is incorrect.");
        };
        if wrap {
            self.wrap_inputs.lock().unwrap().push(input);
        }
        respond_json(200, &json!({"kid": self.kid(name, &v.id), "value": b64url(&output)}))
    }
}

async fn serve_vault(State(vault): State<Arc<Vault>>, request: Request) -> Response {
    let request = Recorded::read(request).await;
    if request.path.ends_with("/oauth2/v2.0/token") {
        return vault.token(request);
    }
    vault.records.lock().unwrap().push(request.clone());
    if request.query_param("api-version").as_deref() != Some("7.4") {
        return kv_error(
            400,
            "BadParameter",
            "The api-version query parameter is missing or not 7.4.",
            None,
        );
    }
    if !vault.authorized(&request) {
        let mut response = kv_error(
            401,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
            None,
        );
        response.headers_mut().insert(
            "www-authenticate",
            format!("Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"https://vault.azure.net\"")
                .parse()
                .unwrap(),
        );
        return response;
    }
    if let Some((status, body)) = vault.canned.lock().unwrap().pop_front() {
        return respond_json(status, &body);
    }
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["keys", name]) => vault.get_key(name, None),
        ("GET", ["keys", name, version]) => vault.get_key(name, Some(version)),
        ("POST", ["keys", name, "wrapkey"]) => vault.operate(&request, name, None, true),
        ("POST", ["keys", name, version, "wrapkey"]) => {
            vault.operate(&request, name, Some(version), true)
        }
        ("POST", ["keys", name, version, "unwrapkey"]) => {
            vault.operate(&request, name, Some(version), false)
        }
        _ => kv_error(404, "NotFound", "No such operation.", None),
    }
}

// --- one test's world

struct Env {
    vault: Arc<Vault>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start(flavor: Flavor) -> Self {
        let vault = Vault::new(flavor);
        let addr = common_cloud::serve(
            axum::Router::new().fallback(serve_vault).with_state(Arc::clone(&vault)),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
        Self { vault, addr, dir }
    }

    fn config(&self, key_path: &str) -> AzureConfig {
        AzureConfig {
            key_id: format!("{}/keys/{key_path}", self.vault.public_base),
            tenant_id: TENANT.into(),
            client_id: CLIENT_ID.into(),
            client_secret: SecretSource::File { file: "client-secret".into() },
            algorithm: None,
            authority_host: Some(format!("http://{}", self.addr)),
            endpoint: Some(format!("http://{}", self.addr)),
        }
    }

    fn options(&self, timeout: Duration) -> ConnectOptions {
        ConnectOptions { base_dir: self.dir.path().to_owned(), request_timeout: timeout }
    }

    async fn connect(&self, config: &AzureConfig) -> Result<AzureKms, KmsError> {
        AzureKms::connect(config, &self.options(Duration::from_secs(5))).await
    }

    async fn kms(&self, key_path: &str) -> AzureKms {
        self.connect(&self.config(key_path)).await.unwrap()
    }
}

fn ctx() -> KeyContext<'static> {
    KeyContext::new("tenant-a", 7)
}

/// `format ‖ u16be len ‖ kid ‖ value`, split.
fn split(wrapped: &[u8]) -> (u8, String, Vec<u8>) {
    let len = usize::from(u16::from_be_bytes([wrapped[1], wrapped[2]]));
    (
        wrapped[0],
        String::from_utf8(wrapped[3..3 + len].to_vec()).unwrap(),
        wrapped[3 + len..].to_vec(),
    )
}

fn join(format: u8, kid: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![format];
    out.extend_from_slice(&u16::try_from(kid.len()).unwrap().to_be_bytes());
    out.extend_from_slice(kid.as_bytes());
    out.extend_from_slice(value);
    out
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref().to_vec()
}

// --- the conformance suite

struct AzureHarness {
    name: &'static str,
    env: Env,
    key: String,
    kms: Arc<AzureKms>,
    unreachable: Arc<AzureKms>,
}

impl AzureHarness {
    async fn new(flavor: Flavor, name: &'static str) -> Self {
        let env = Env::start(flavor).await;
        env.vault.create_key("conformance");
        let kms = Arc::new(env.kms("conformance").await);
        let mut closed = env.config("conformance");
        closed.endpoint =
            Some(format!("http://127.0.0.1:{}", keyhold_kms::conformance::silent_port()));
        let unreachable = Arc::new(
            AzureKms::connect(&closed, &env.options(Duration::from_secs(2))).await.unwrap(),
        );
        Self { name, env, key: "conformance".into(), kms, unreachable }
    }
}

#[async_trait]
impl Harness for AzureHarness {
    fn name(&self) -> &str {
        self.name
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        self.env.vault.set_enabled(&self.key, false);
        Some(())
    }
    async fn enable_key(&self) -> Option<()> {
        self.env.vault.set_enabled(&self.key, true);
        Some(())
    }
    async fn rotate_key(&self) -> Option<()> {
        self.env.vault.rotate(&self.key);
        Some(())
    }
    fn key_version_of(&self, wrapped: &[u8]) -> Option<u32> {
        let version = AzureKms::key_version_of(wrapped)?;
        let index = self.env.vault.versions(&self.key).iter().position(|v| *v == version)?;
        Some(u32::try_from(index).unwrap() + 1)
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        Some(self.unreachable.clone())
    }
    fn unreachable_deadline(&self) -> Duration {
        Duration::from_secs(4)
    }
}

#[tokio::test]
async fn key_vault_rsa_oaep_256_passes_conformance() {
    let harness =
        AzureHarness::new(Flavor::Vault, "azure key vault (RSA-OAEP-256, contract double)").await;
    assert_eq!(harness.kms.algorithm(), AzureAlgorithm::RsaOaep256);
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&[]);
}

#[tokio::test]
async fn managed_hsm_a256kw_passes_conformance() {
    let harness =
        AzureHarness::new(Flavor::Hsm, "azure managed hsm (A256KW, contract double)").await;
    assert_eq!(harness.kms.algorithm(), AzureAlgorithm::A256Kw);
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&[]);
    let tokens = harness.env.vault.token_requests.lock().unwrap().clone();
    let form = common_cloud::form_decode(&tokens[0].body);
    assert!(form.contains(&("scope".into(), "https://managedhsm.azure.net/.default".into())));
    let wrap =
        harness.env.vault.records().into_iter().find(|r| r.path.ends_with("/wrapkey")).unwrap();
    assert_eq!(wrap.json()["alg"], "A256KW");
}

// --- request shapes

#[tokio::test]
async fn requests_follow_the_rest_reference() {
    let env = Env::start(Flavor::Vault).await;
    env.vault.create_key("tenant-key");
    let kms = env.kms("tenant-key").await;
    let dek = Dek::generate().unwrap();
    let wrapped = kms.wrap(&dek, &ctx()).await.unwrap();
    assert_eq!(kms.unwrap(&wrapped, &ctx()).await.unwrap(), dek);
    kms.health().await.unwrap();

    // The token request: POST /{tenant}/oauth2/v2.0/token, a form with exactly these fields.
    let token_requests = env.vault.token_requests.lock().unwrap().clone();
    assert_eq!(token_requests.len(), 1, "one token for all three calls");
    let t = &token_requests[0];
    assert_eq!(
        (t.method.as_str(), t.path.as_str()),
        ("POST", format!("/{TENANT}/oauth2/v2.0/token").as_str())
    );
    assert_eq!(t.header("content-type"), Some("application/x-www-form-urlencoded"));
    let mut form = common_cloud::form_decode(&t.body);
    form.sort();
    assert_eq!(
        form,
        [
            ("client_id".to_owned(), CLIENT_ID.to_owned()),
            ("client_secret".to_owned(), CLIENT_SECRET.to_owned()),
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("scope".to_owned(), "https://vault.azure.net/.default".to_owned()),
        ]
    );
    let token = env.vault.issued()[0].clone();

    let records = env.vault.records();
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in &records {
        assert_eq!(r.bearer(), Some(token.as_str()), "{} {}", r.method, r.path);
        assert_eq!(r.query.as_deref(), Some("api-version=7.4"));
    }
    let version = env.vault.versions("tenant-key")[0].clone();

    // Wrap: POST {key_id}/wrapkey, {"alg": "RSA-OAEP-256", "value": base64url(DEK ‖ SHA-256(context))}.
    let w = &records[0];
    assert_eq!((w.method.as_str(), w.path.as_str()), ("POST", "/keys/tenant-key/wrapkey"));
    assert_eq!(w.header("content-type"), Some("application/json"));
    let body = w.json();
    assert_eq!(body["alg"], "RSA-OAEP-256");
    let value = body["value"].as_str().unwrap();
    assert!(!value.contains(['=', '+', '/']), "base64url without padding: {value}");
    let mut expected = dek.expose_secret().to_vec();
    expected.extend_from_slice(&sha256(&ctx().associated_data()));
    assert_eq!(env.vault.wrap_inputs.lock().unwrap().as_slice(), [expected]);

    // The wrapped key: format 1, the answer's kid (with its version), the answer's value.
    let (format, kid, wrapped_value) = split(&wrapped);
    assert_eq!(format, 1);
    assert_eq!(kid, format!("{VAULT_BASE}/keys/tenant-key/{version}"));
    assert_eq!(wrapped_value.len(), 256, "RSA-2048 ciphertext");
    assert_eq!(AzureKms::key_version_of(&wrapped), Some(version.clone()));

    // Unwrap: POST {kid}/unwrapkey with the stored value.
    let u = &records[1];
    assert_eq!(
        (u.method.as_str(), u.path.clone()),
        ("POST", format!("/keys/tenant-key/{version}/unwrapkey"))
    );
    assert_eq!(u.header("content-type"), Some("application/json"));
    assert_eq!(u.json(), json!({"alg": "RSA-OAEP-256", "value": b64url(&wrapped_value)}));

    // Health: GET {key_id}.
    let g = &records[2];
    assert_eq!((g.method.as_str(), g.path.as_str()), ("GET", "/keys/tenant-key"));
    assert!(g.body.is_empty());
}

#[tokio::test]
async fn a_pinned_version_keeps_wrapping_with_it() {
    let env = Env::start(Flavor::Vault).await;
    env.vault.create_key("pinned");
    let first = env.vault.versions("pinned")[0].clone();
    let kms = env.kms(&format!("pinned/{first}")).await;
    env.vault.rotate("pinned");
    let generated = kms.generate(&ctx()).await.unwrap();
    assert_eq!(AzureKms::key_version_of(&generated.wrapped), Some(first.clone()));
    assert_eq!(env.vault.records()[0].path, format!("/keys/pinned/{first}/wrapkey"));
    assert_eq!(kms.unwrap(&generated.wrapped, &ctx()).await.unwrap(), generated.dek);
    // Keys wrapped by the newer version (by another configuration) still unwrap here.
    let latest = env.kms("pinned").await;
    let newer = latest.generate(&ctx()).await.unwrap();
    assert_ne!(AzureKms::key_version_of(&newer.wrapped), Some(first));
    assert_eq!(kms.unwrap(&newer.wrapped, &ctx()).await.unwrap(), newer.dek);
}

// --- credentials and tokens

#[tokio::test]
async fn credentials_and_tokens() {
    let env = Env::start(Flavor::Vault).await;
    env.vault.create_key("k");

    // A wrong client secret: Entra ID's invalid_client, and no Key Vault request at all.
    std::fs::write(env.dir.path().join("wrong-secret"), "not-the-secret").unwrap();
    let mut config = env.config("k");
    config.client_secret = SecretSource::File { file: "wrong-secret".into() };
    let err = env.connect(&config).await.unwrap().health().await.unwrap_err();
    assert!(matches!(&err, KmsError::AccessDenied(m) if m.contains("invalid_client")), "{err:?}");
    // An unknown tenant: a configuration error.
    let mut config = env.config("k");
    config.tenant_id = "00000000-0000-0000-0000-000000000000".into();
    let err = env.connect(&config).await.unwrap().health().await.unwrap_err();
    assert!(
        matches!(&err, KmsError::ConfigurationInvalid(m) if m.contains("AADSTS90002")),
        "{err:?}"
    );
    assert!(env.vault.records().is_empty());

    // One token serves many calls.
    let kms = env.kms("k").await;
    for _ in 0..3 {
        kms.health().await.unwrap();
    }
    assert_eq!(env.vault.issued().len(), 1);

    // A token Key Vault stops accepting is replaced once, and the request repeated.
    let first = env.vault.issued()[0].clone();
    env.vault.revoked.lock().unwrap().insert(first.clone());
    let generated = kms.generate(&ctx()).await.unwrap();
    let issued = env.vault.issued();
    assert_eq!(issued.len(), 2);
    let wraps: Vec<_> =
        env.vault.records().into_iter().filter(|r| r.path.ends_with("/wrapkey")).collect();
    assert_eq!(wraps.len(), 2);
    assert_eq!(wraps[0].bearer(), Some(first.as_str()));
    assert_eq!(wraps[1].bearer(), Some(issued[1].as_str()));
    assert_eq!(kms.unwrap(&generated.wrapped, &ctx()).await.unwrap(), generated.dek);

    // A 401 that persists: denied after exactly one refresh.
    env.vault.reject_all.store(true, Ordering::SeqCst);
    let before = env.vault.records().len();
    let err = kms.unwrap(&generated.wrapped, &ctx()).await.unwrap_err();
    assert!(matches!(&err, KmsError::AccessDenied(m) if m.contains("AKV10000")), "{err:?}");
    assert_eq!(env.vault.records().len(), before + 2);
    assert_eq!(env.vault.issued().len(), 3);
}

// --- errors

#[tokio::test]
async fn key_states_and_documented_errors_map_to_their_variants() {
    let env = Env::start(Flavor::Vault).await;
    env.vault.create_key("k");
    let kms = env.kms("k").await;
    let wrapped = kms.generate(&ctx()).await.unwrap().wrapped;
    let dek = Dek::generate().unwrap();

    // A disabled key (real state in the double): wrap, unwrap and health all say so.
    env.vault.set_enabled("k", false);
    assert!(matches!(kms.wrap(&dek, &ctx()).await, Err(KmsError::KeyDisabled(_))));
    assert!(matches!(kms.unwrap(&wrapped, &ctx()).await, Err(KmsError::KeyDisabled(_))));
    assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));
    env.vault.set_enabled("k", true);
    kms.health().await.unwrap();
    // ...also when Key Vault refuses the GET itself.
    env.vault.answer_next(
        403,
        json!({"error": {"code": "Forbidden", "message": "Operation get is not allowed on a disabled key.", "innererror": {"code": "KeyDisabled"}}}),
    );
    assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));

    env.vault.answer_next(
        403,
        json!({"error": {"code": "Forbidden", "message": format!("The user, group or application 'appid={CLIENT_ID};iss=https://sts.windows.net/{TENANT}/' does not have keys wrapKey permission on key vault 'keyhold-test;location=westeurope'."), "innererror": {"code": "AccessDenied"}}}),
    );
    assert!(matches!(kms.wrap(&dek, &ctx()).await, Err(KmsError::AccessDenied(_))));

    env.vault.answer_next(
        429,
        json!({"error": {"code": "Throttled", "message": "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"}}),
    );
    assert_eq!(kms.unwrap(&wrapped, &ctx()).await.unwrap_err(), KmsError::Throttled);

    env.vault.answer_next(
        503,
        json!({"error": {"code": "ServiceUnavailable", "message": "The service is unavailable."}}),
    );
    assert!(matches!(kms.wrap(&dek, &ctx()).await, Err(KmsError::Unreachable(_))));
    env.vault.answer_next(
        500,
        json!({"error": {"code": "InternalServerError", "message": "Internal error."}}),
    );
    assert!(matches!(kms.health().await, Err(KmsError::Unreachable(_))));

    // A key that does not exist (real 404 KeyNotFound): a configuration error everywhere.
    let missing = env.kms("no-such-key").await;
    assert!(matches!(missing.wrap(&dek, &ctx()).await, Err(KmsError::ConfigurationInvalid(_))));
    assert!(matches!(missing.health().await, Err(KmsError::ConfigurationInvalid(_))));
    let (format, _, value) = split(&wrapped);
    let for_missing = join(
        format,
        &format!("{VAULT_BASE}/keys/no-such-key/{}", env.vault.versions("k")[0]),
        &value,
    );
    assert!(matches!(
        missing.unwrap(&for_missing, &ctx()).await,
        Err(KmsError::ConfigurationInvalid(_))
    ));

    assert_eq!(kms.unwrap(&wrapped, &ctx()).await.unwrap().expose_secret().len(), 32);
}

#[tokio::test]
async fn a_wrapped_key_cannot_send_us_elsewhere() {
    let env = Env::start(Flavor::Vault).await;
    env.vault.create_key("k");
    env.vault.create_key("other");
    let kms = env.kms("k").await;
    let other = env.kms("other").await;
    let wrapped = kms.generate(&ctx()).await.unwrap().wrapped;
    let (format, kid, value) = split(&wrapped);
    let version = AzureKms::key_version_of(&wrapped).unwrap();

    // Another vault, another key in the same vault, a lookalike host: refused without a request.
    let before = env.vault.records().len();
    for forged in [
        format!("https://attacker.vault.azure.net/keys/k/{version}"),
        format!("https://keyhold-test.vault.azure.net.attacker.example/keys/k/{version}"),
        format!("{VAULT_BASE}/keys/other/{version}"),
        format!("{VAULT_BASE}/keys/k"),
        format!("http://keyhold-test.vault.azure.net/keys/k/{version}"),
    ] {
        let result = kms.unwrap(&join(format, &forged, &value), &ctx()).await;
        assert_eq!(result.unwrap_err(), KmsError::InvalidCiphertext, "{forged}");
    }
    // A wrapped key of another configuration's key is not ours either.
    let theirs = other.generate(&ctx()).await.unwrap().wrapped;
    let before_theirs = env.vault.records().len();
    assert_eq!(kms.unwrap(&theirs, &ctx()).await.unwrap_err(), KmsError::InvalidCiphertext);
    assert_eq!(env.vault.records().len(), before_theirs);
    assert_eq!(before_theirs, before + 1, "only `other`'s own wrap reached the vault");

    // Our key, a version that does not exist: 404 on unwrapkey, the key itself answers: invalid.
    let unknown = join(format, &format!("{VAULT_BASE}/keys/k/{}", "0".repeat(32)), &value);
    assert_eq!(kms.unwrap(&unknown, &ctx()).await.unwrap_err(), KmsError::InvalidCiphertext);
    let tail: Vec<_> = env.vault.records().into_iter().rev().take(2).collect();
    assert_eq!((tail[1].method.as_str(), tail[0].method.as_str()), ("POST", "GET"));

    // The key id in different case is the same key (ids compare case-insensitively).
    let upper = join(format, &kid.replace("keyhold-test", "KEYHOLD-TEST"), &value);
    kms.unwrap(&upper, &ctx()).await.unwrap();
    // The algorithm byte must match the value: an RSA value labelled A256KW is refused locally.
    assert_eq!(
        kms.unwrap(&join(2, &kid, &value), &ctx()).await.unwrap_err(),
        KmsError::InvalidCiphertext
    );
}

/// Needs no server: `connect` validates without contacting anyone.
#[tokio::test]
async fn the_configuration_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET).unwrap();
    let options =
        ConnectOptions { base_dir: dir.path().to_owned(), request_timeout: Duration::from_secs(1) };
    let good = AzureConfig {
        key_id: format!("{VAULT_BASE}/keys/k"),
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: SecretSource::File { file: "client-secret".into() },
        algorithm: None,
        authority_host: None,
        endpoint: None,
    };
    let kms = AzureKms::connect(&good, &options).await.unwrap();
    assert_eq!((kms.kind(), kms.algorithm()), ("azure", AzureAlgorithm::RsaOaep256));
    let printed = format!("{kms:?}");
    assert!(
        printed.contains("login.microsoftonline.com") && !printed.contains("secret+with"),
        "{printed}"
    );
    let mut hsm = good.clone();
    hsm.key_id = format!("{HSM_BASE}/keys/k");
    assert_eq!(
        AzureKms::connect(&hsm, &options).await.unwrap().algorithm(),
        AzureAlgorithm::A256Kw
    );
    hsm.algorithm = Some(AzureAlgorithm::RsaOaep256);
    assert_eq!(
        AzureKms::connect(&hsm, &options).await.unwrap().algorithm(),
        AzureAlgorithm::RsaOaep256
    );

    let bad = |f: &dyn Fn(&mut AzureConfig)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    for (config, why) in [
        (bad(&|c| c.algorithm = Some(AzureAlgorithm::A256Kw)), "AES key wrap on a vault"),
        (bad(&|c| c.key_id = "https://keyhold.example.com/keys/k".into()), "not a Key Vault host"),
        (bad(&|c| c.key_id = format!("{VAULT_BASE}/secrets/k")), "not a key"),
        (bad(&|c| c.key_id = "http://keyhold-test.vault.azure.net/keys/k".into()), "plain http"),
        (bad(&|c| c.tenant_id = "../evil".into()), "tenant id"),
        (bad(&|c| c.client_id = String::new()), "client id"),
        (
            bad(&|c| c.authority_host = Some("http://login.example.com".into())),
            "plain http authority",
        ),
        (bad(&|c| c.endpoint = Some("http://10.0.0.1".into())), "plain http endpoint"),
        (bad(&|c| c.client_secret = SecretSource::File { file: "missing".into() }), "no secret"),
    ] {
        let result = AzureKms::connect(&config, &options).await;
        assert!(matches!(result, Err(KmsError::ConfigurationInvalid(_))), "{why}: {result:?}");
    }
}
