//! The `kmip` backend: master keys held by a KMIP 1.x server (Thales CipherTrust, Fortanix,
//! Entrust KeyControl, HashiCorp Vault Enterprise's KMIP engine, PyKMIP, …), reached over mutual
//! TLS.
//!
//! The master keys never leave the server: the backend asks it to encrypt, MAC and decrypt with
//! keys it finds by their Name attribute. The client speaks KMIP's binary TTLV encoding over
//! TLS (`ttlv`, `messages`, `connection`); it was written here rather than taken from a crate
//! because none fits: NLnet Labs' `kmip-protocol` 0.4 pins rustls 0.19 / tokio-rustls 0.22 (three
//! majors behind the tree's rustls 0.23) and has no AEAD fields, and `cosmian_kmip` is under the
//! Business Source License and pulls a large dependency tree. The needed subset is small: nine
//! operations, ~20 tags.
//!
//! # Two mechanisms
//!
//! KMIP servers differ in what Encrypt offers, so the tenant's configuration picks one:
//!
//! ## `mechanism = "cbc-hmac"` (default): encrypt-then-MAC with two server-held keys
//!
//! For servers whose Encrypt has no authenticated mode (PyKMIP 0.11 below KMIP 1.4, many older
//! appliances). The tenant creates two AES-256 keys: `key_name` (usage Encrypt + Decrypt) and
//! `mac_key_name` (usage MAC Generate; used as an HMAC-SHA256 key). A wrapped key is
//!
//! ```text
//! "KHK" ‖ 0x01 ‖ u8 len ‖ encryption key id ‖ u8 len ‖ MAC key id ‖ IV (16)
//!       ‖ C = AES-256-CBC-PKCS#7(K_enc, IV, DEK) (48) ‖ T (32)
//! T = HMAC-SHA256(K_mac, "keyhold/kmip/cbc-hmac/v1\0" ‖ u32be(len(A)) ‖ A ‖ everything before T)
//! A = KeyContext::associated_data()  (tenant id and KMS configuration id)
//! ```
//!
//! The IV comes from the proxy's CSPRNG; the server computes C (Encrypt) and T (MAC). Unwrap
//! parses strictly, checks that both key ids belong to keys with the configured names, asks the
//! server for the MAC of the same input, compares it with T in constant time, and only then asks
//! the server to decrypt C. This is the generic encrypt-then-MAC composition (Bellare–Namprempre
//! 2000): CBC with a random IV is IND-CPA, HMAC-SHA256 is a PRF and so SUF-CMA, and the keys are
//! independent (two server-held keys), so the whole is IND-CCA2 authenticated encryption with
//! associated data. Consequences:
//!
//! - a changed byte anywhere (format, key ids, IV, ciphertext, tag) or another context (tenant,
//!   configuration id) fails the tag check: [`KmsError::InvalidCiphertext`], and the server is
//!   never asked to decrypt forged input, so there is no padding oracle;
//! - the key ids are authenticated, so a wrapped key cannot be redirected to another key;
//! - the comparison is done by the proxy (PyKMIP has no MAC Verify); the server's MAC is
//!   deterministic, so the recomputed tag equals T exactly when the input is unchanged.
//!
//! Random 128-bit IVs keep CBC safe for far more wraps than one key will see (the birthday
//! bound is ~2⁶⁴ blocks).
//!
//! ## `mechanism = "gcm"`: AES-256-GCM with additional data (KMIP 1.4)
//!
//! For servers whose Encrypt supports GCM with Authenticated Encryption Additional Data and
//! Tag (KMIP 1.4: Thales CipherTrust, Fortanix DSM, PyKMIP 0.11 when spoken to in 1.4). One key,
//! `key_name` (Encrypt + Decrypt). A wrapped key is
//!
//! ```text
//! "KHK" ‖ 0x02 ‖ u8 len ‖ key id ‖ nonce (12) ‖ AES-256-GCM(K, nonce, DEK, AAD) (32) ‖ tag (16)
//! AAD = "keyhold/kmip/gcm/v1\0" ‖ u32be(len(A)) ‖ A ‖ "KHK" ‖ 0x02 ‖ u8 len ‖ key id
//! ```
//!
//! One round trip per wrap and unwrap instead of two. The 96-bit nonce is random, so one key
//! should wrap fewer than 2³² keys (NIST SP 800-38D); rotate before that.
//!
//! # Keys, rotation and caching
//!
//! KMIP servers may lack ReKey (PyKMIP does), and ReKey's new key gets a new Unique Identifier
//! anyway, so rotation is by name: the tenant creates and activates a new key with the same Name.
//! New wraps use the newest Active key carrying the name (greatest Initial Date; Locate order
//! breaks ties); each wrapped key names the key ids it was made with, so older wrapped keys keep
//! unwrapping with their own keys for as long as those stay Active. The name → key ids answers
//! are cached for `key_refresh_seconds` (default 60; 0 = ask every time); an unwrap naming a key
//! id not in the cached list refreshes it once before refusing.
//!
//! # Errors
//!
//! | what happens | `KmsError` |
//! |---|---|
//! | TCP connect refused/reset, timeout, TLS I/O failure, EOF, malformed TTLV | `Unreachable` |
//! | server alert about our certificate during TLS (unknown CA, bad/expired/revoked certificate, access denied) | `AccessDenied` |
//! | the server's certificate fails verification; no common TLS version or cipher | `ConfigurationInvalid` |
//! | Result Reason Authentication Not Successful, Not Authorised | `AccessDenied` |
//! | Permission Denied on a key operation, and Get Attributes says the key's State is not Active | `KeyDisabled` |
//! | Permission Denied otherwise (policy, usage mask) | `AccessDenied` |
//! | Wrong Key Lifecycle State, Object Destroyed, Object Archived, Usage Limit Exceeded | `KeyDisabled` |
//! | Locate finds no key with `key_name` / `mac_key_name` | `ConfigurationInvalid` |
//! | Locate finds keys with the name, none Active | `KeyDisabled` |
//! | Item/Object Not Found for a key id found by name earlier (destroyed meanwhile) | `KeyDisabled` |
//! | Invalid Message/Field, Operation/Feature Not Supported, Bad/Unsupported Cryptographic Parameters, Unsupported Protocol Version, Incompatible Usage Mask, Illegal Operation | `ConfigurationInvalid` |
//! | Server Limit Exceeded | `Throttled` |
//! | General Failure, Internal Server Error (outside a GCM Decrypt) | `Unreachable` |
//! | wrapped key malformed, of another mechanism, naming a key id without the configured name, tag mismatch (cbc-hmac), GCM Decrypt failing with Cryptographic or General Failure | `InvalidCiphertext` |
//! | an answer without the expected fields or lengths | `WrapFailed` / `UnwrapFailed` |
//!
//! KMIP has no account or billing concept: `AccountIssue` is never returned.

mod connection;
mod messages;
mod ttlv;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyhold_core::random::random_array;
use keyhold_core::secret::{Dek, KEY_LEN, constant_time_eq};
use serde::Deserialize;

use connection::{Connector, TlsFiles};
use messages::{Answer, Operation, Version, reason, tag};
use ttlv::Item;

use crate::{ConnectOptions, KeyContext, Kms, KmsError, SecretSource};

const MAGIC: &[u8; 3] = b"KHK";
const FORMAT_CBC_HMAC: u8 = 1;
const FORMAT_GCM: u8 = 2;
const CBC_IV_LEN: usize = 16;
const CBC_CIPHERTEXT_LEN: usize = KEY_LEN + 16; // PKCS#7 adds a whole block to 32 bytes
const HMAC_LEN: usize = 32;
const GCM_NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const CBC_HMAC_LABEL: &[u8] = b"keyhold/kmip/cbc-hmac/v1\0";
const GCM_LABEL: &[u8] = b"keyhold/kmip/gcm/v1\0";
const MAX_POOL_SIZE: usize = 64;

/// How wrapped keys are made; see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Mechanism {
    /// AES-256-CBC by the encryption key, then HMAC-SHA256 by the MAC key (KMIP 1.2).
    #[default]
    #[serde(rename = "cbc-hmac")]
    CbcHmac,
    /// AES-256-GCM with additional data (KMIP 1.4).
    #[serde(rename = "gcm")]
    Gcm,
}

impl Mechanism {
    fn protocol_version(self) -> Version {
        match self {
            Self::CbcHmac => (1, 2),
            Self::Gcm => (1, 4),
        }
    }
}

fn default_refresh() -> u64 {
    60
}
fn default_pool() -> usize {
    4
}

/// A tenant's KMIP configuration (`type = "kmip"` in a `[[tenants.kms_configs]]` entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmipConfig {
    /// The server, `host:port` (KMIP's registered port is 5696).
    pub address: String,
    /// The name the server's certificate carries (DNS name or IP). Default: the host of
    /// `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of the CA certificate(s) that sign the server's certificate.
    pub ca_cert_file: PathBuf,
    /// PEM file of the client certificate (chain) the proxy presents.
    pub client_cert_file: PathBuf,
    /// The client's PEM private key (PKCS#8, SEC1 or PKCS#1), usually
    /// `client_key = { file = "..." }`; read once at start and kept in wiped-on-drop memory.
    pub client_key: SecretSource,
    /// The Name attribute of the encryption key (AES-256, usage Encrypt and Decrypt).
    pub key_name: String,
    /// The Name attribute of the MAC key (AES-256, usage MAC Generate); required for
    /// `cbc-hmac`, not allowed for `gcm`.
    #[serde(default)]
    pub mac_key_name: Option<String>,
    /// `"cbc-hmac"` (default) or `"gcm"`.
    #[serde(default)]
    pub mechanism: Mechanism,
    /// How long the key ids found by name are reused before asking the server again.
    #[serde(default = "default_refresh")]
    pub key_refresh_seconds: u64,
    /// Idle TLS connections kept open (0: a new connection for every request).
    #[serde(default = "default_pool")]
    pub pool_size: usize,
}

/// Key ids carrying one Name, as last asked.
#[derive(Debug)]
struct Named {
    /// The newest Active key, if any.
    current: Option<String>,
    /// Every key with the name, in any state the server lists.
    all: Vec<String>,
    fetched: Instant,
}

/// What a wrap or unwrap is doing, for mapping malformed answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Wrap,
    Unwrap,
    Lookup,
}

/// A failed call: mapped already, or the server's answer to interpret.
enum CallError {
    Kms(KmsError),
    Answer(Answer),
}

/// One tenant's master key(s) on a KMIP server, as a [`Kms`].
#[derive(Debug)]
pub struct KmipKms {
    connector: Connector,
    mechanism: Mechanism,
    key_name: String,
    mac_key_name: Option<String>,
    refresh: Duration,
    names: Mutex<HashMap<String, Arc<Named>>>,
}

impl KmipKms {
    /// Validates `config`, reads the certificates and the client key, and prepares the TLS
    /// client. Does not contact the server (the first operation or [`Kms::health`] does).
    pub async fn connect(config: &KmipConfig, options: &ConnectOptions) -> Result<Self, KmsError> {
        let invalid = |what: &str| KmsError::ConfigurationInvalid(format!("kmip: {what}"));
        let (host, port) =
            config.address.rsplit_once(':').ok_or_else(|| invalid("address must be host:port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid("address must be host:port"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = config.server_name.as_deref().unwrap_or(host);
        if config.key_name.is_empty() {
            return Err(invalid("key_name is empty"));
        }
        let mac_key_name = match (config.mechanism, &config.mac_key_name) {
            (Mechanism::CbcHmac, None) => {
                return Err(invalid("mechanism \"cbc-hmac\" needs mac_key_name"));
            }
            (Mechanism::CbcHmac, Some(m)) if m.is_empty() || *m == config.key_name => {
                return Err(invalid("mac_key_name must be non-empty and differ from key_name"));
            }
            (Mechanism::Gcm, Some(_)) => {
                return Err(invalid("mechanism \"gcm\" uses no mac_key_name"));
            }
            (_, m) => m.clone(),
        };
        if config.pool_size > MAX_POOL_SIZE {
            return Err(invalid("pool_size is over 64"));
        }
        let read = |path: &PathBuf, field: &str| {
            let path = options.base_dir.join(path);
            std::fs::read(&path).map_err(|e| {
                KmsError::ConfigurationInvalid(format!(
                    "kmip: cannot read {field} {}: {e}",
                    path.display()
                ))
            })
        };
        let ca_pem = read(&config.ca_cert_file, "ca_cert_file")?;
        let client_cert_pem = read(&config.client_cert_file, "client_cert_file")?;
        let client_key_pem = config.client_key.load(&options.base_dir)?;
        let connector = Connector::new(
            config.address.clone(),
            server_name,
            &TlsFiles {
                ca_pem: &ca_pem,
                client_cert_pem: &client_cert_pem,
                client_key_pem: &client_key_pem,
            },
            options.request_timeout,
            config.pool_size,
        )?;
        Ok(Self {
            connector,
            mechanism: config.mechanism,
            key_name: config.key_name.clone(),
            mac_key_name,
            refresh: Duration::from_secs(config.key_refresh_seconds),
            names: Mutex::new(HashMap::new()),
        })
    }

    /// The Unique Identifier of the (encryption) key a wrapped key names, if it is a KMIP
    /// wrapped key. Key ids are not secret; this is for operators and tests.
    pub fn key_id_of(wrapped: &[u8]) -> Option<String> {
        Parsed::parse(wrapped).map(|p| p.key_id.to_owned())
    }

    async fn call(&self, operation: Operation, payload: Vec<Item>) -> Result<Item, CallError> {
        let request = messages::request(self.mechanism.protocol_version(), operation, payload)
            .encode()
            .map_err(|e| CallError::Kms(KmsError::WrapFailed(format!("kmip: encoding: {e}"))))?;
        let response = self.connector.round_trip(&request).await.map_err(CallError::Kms)?;
        messages::response_payload(&response, operation).map_err(CallError::Answer)
    }

    /// The keys named `name`, from the cache unless it is older than the refresh interval or
    /// `fresh` asks for a new look.
    async fn named(&self, name: &str, fresh: bool) -> Result<Arc<Named>, KmsError> {
        if !fresh && let Some(named) = self.cached(name) {
            return Ok(named);
        }
        let all = self.locate(name, false).await?;
        let active = if all.is_empty() { Vec::new() } else { self.locate(name, true).await? };
        let current = self.newest(&active).await?;
        let named = Arc::new(Named { current, all, fetched: Instant::now() });
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), Arc::clone(&named));
        Ok(named)
    }

    fn cached(&self, name: &str) -> Option<Arc<Named>> {
        let names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        names.get(name).filter(|n| n.fetched.elapsed() < self.refresh).cloned()
    }

    fn forget(&self, name: &str) {
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    async fn locate(&self, name: &str, active_only: bool) -> Result<Vec<String>, KmsError> {
        match self.call(Operation::Locate, messages::locate(name, active_only)).await {
            Ok(payload) => {
                messages::located(&payload).map_err(|a| answer_error(a, Purpose::Lookup))
            }
            Err(CallError::Kms(e)) => Err(e),
            Err(CallError::Answer(a)) => Err(answer_error(a, Purpose::Lookup)),
        }
    }

    /// The newest of several Active keys: greatest Initial Date, Locate order breaking ties.
    async fn newest(&self, active: &[String]) -> Result<Option<String>, KmsError> {
        if active.len() <= 1 {
            return Ok(active.first().cloned());
        }
        let mut best: Option<(i64, &String)> = None;
        for uid in active {
            let payload = match self
                .call(Operation::GetAttributes, messages::get_attributes(uid, &["Initial Date"]))
                .await
            {
                Ok(payload) => payload,
                Err(CallError::Kms(e)) => return Err(e),
                Err(CallError::Answer(a)) => return Err(answer_error(a, Purpose::Lookup)),
            };
            let date = messages::attribute_value(&payload, "Initial Date")
                .and_then(Item::as_date_time)
                .unwrap_or(i64::MIN);
            if best.is_none_or(|(d, _)| date > d) {
                best = Some((date, uid));
            }
        }
        Ok(best.map(|(_, uid)| uid.clone()))
    }

    /// The key to wrap with, by name.
    async fn current(&self, name: &str, fresh: bool) -> Result<String, KmsError> {
        let named = self.named(name, fresh).await?;
        match (&named.current, named.all.len()) {
            (Some(uid), _) => Ok(uid.clone()),
            (None, 0) => {
                self.forget(name);
                Err(KmsError::ConfigurationInvalid(format!(
                    "kmip: the server has no key named {name:?} (or this client may not see it)"
                )))
            }
            (None, n) => {
                self.forget(name);
                Err(KmsError::KeyDisabled(format!(
                    "kmip: none of the {n} keys named {name:?} is Active"
                )))
            }
        }
    }

    /// Whether `uid` is one of the keys named `name` (asking the server again on a miss).
    async fn belongs(&self, name: &str, uid: &str) -> Result<bool, KmsError> {
        if self.named(name, false).await?.all.iter().any(|u| u == uid) {
            return Ok(true);
        }
        Ok(self.named(name, true).await?.all.iter().any(|u| u == uid))
    }

    /// A failed operation with key `uid`, as a [`KmsError`]. Permission Denied is told apart by
    /// asking for the key's State: not Active is a disabled key, Active is a refusal.
    async fn key_error(
        &self,
        uid: &str,
        op: Operation,
        error: CallError,
        purpose: Purpose,
    ) -> KmsError {
        let (code, message) = match error {
            CallError::Kms(e) => return e,
            CallError::Answer(Answer::Failed { reason, message }) => (reason, message),
            CallError::Answer(malformed) => return answer_error(malformed, purpose),
        };
        let op_name = op.name();
        match code {
            Some(reason::PERMISSION_DENIED) => match self.state_of(uid).await {
                Some(state) if state != messages::value::STATE_ACTIVE => {
                    KmsError::KeyDisabled(format!(
                        "kmip: key {uid} is {} ({op_name} refused)",
                        messages::state_name(state)
                    ))
                }
                _ => KmsError::AccessDenied(format!(
                    "kmip: the server refused {op_name} with key {uid}: {message}"
                )),
            },
            Some(reason::ITEM_NOT_FOUND | reason::OBJECT_NOT_FOUND) => {
                KmsError::KeyDisabled(format!("kmip: key {uid} no longer exists (destroyed)"))
            }
            Some(reason::CRYPTOGRAPHIC_FAILURE | reason::GENERAL_FAILURE)
                if op == Operation::Decrypt && self.mechanism == Mechanism::Gcm =>
            {
                // The server's GCM tag check failed (PyKMIP reports it as General Failure).
                KmsError::InvalidCiphertext
            }
            _ => answer_error(Answer::Failed { reason: code, message }, purpose),
        }
    }

    async fn state_of(&self, uid: &str) -> Option<u32> {
        let payload = self
            .call(Operation::GetAttributes, messages::get_attributes(uid, &["State"]))
            .await
            .ok()?;
        messages::attribute_value(&payload, "State").and_then(Item::as_enum)
    }

    /// Runs a key operation; failures are mapped (and a disabled key's cached ids forgotten).
    async fn key_op(
        &self,
        uid: &str,
        op: Operation,
        payload: Vec<Item>,
        purpose: Purpose,
    ) -> Result<Item, KmsError> {
        match self.call(op, payload).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                let err = self.key_error(uid, op, e, purpose).await;
                if matches!(err, KmsError::KeyDisabled(_)) {
                    self.forget(&self.key_name);
                    if let Some(mac) = &self.mac_key_name {
                        self.forget(mac);
                    }
                }
                Err(err)
            }
        }
    }

    async fn server_mac(
        &self,
        mac_uid: &str,
        input: &[u8],
        purpose: Purpose,
    ) -> Result<Vec<u8>, KmsError> {
        let answer =
            self.key_op(mac_uid, Operation::Mac, messages::mac(mac_uid, input), purpose).await?;
        match messages::bytes_field(&answer, tag::MAC_DATA) {
            Some(mac) if mac.len() == HMAC_LEN => Ok(mac.to_vec()),
            _ => Err(unusable(purpose, "the MAC answer has no 32-byte MAC Data")),
        }
    }

    async fn wrap_cbc_hmac(
        &self,
        dek: &Dek,
        context: &KeyContext<'_>,
    ) -> Result<Vec<u8>, KmsError> {
        let mac_name = self.mac_key_name.as_deref().unwrap_or_default();
        let enc_uid = self.current(&self.key_name, false).await?;
        let mac_uid = self.current(mac_name, false).await?;
        let iv: [u8; CBC_IV_LEN] =
            random_array().map_err(|_| KmsError::WrapFailed("no randomness".into()))?;
        let payload =
            messages::encrypt(&enc_uid, messages::cbc_parameters(), dek.expose_secret(), &iv, None);
        let answer = self.key_op(&enc_uid, Operation::Encrypt, payload, Purpose::Wrap).await?;
        let ciphertext = messages::bytes_field(&answer, tag::DATA)
            .filter(|c| c.len() == CBC_CIPHERTEXT_LEN)
            .ok_or_else(|| {
                unusable(Purpose::Wrap, "the Encrypt answer has no 48-byte ciphertext")
            })?;
        // A server that picks its own IV returns it; one that used ours returns none.
        let iv = match messages::bytes_field(&answer, tag::IV_COUNTER_NONCE) {
            None => &iv[..],
            Some(server_iv) if server_iv.len() == CBC_IV_LEN => server_iv,
            Some(_) => return Err(unusable(Purpose::Wrap, "the Encrypt answer has a bad IV")),
        };
        let mut out = header(FORMAT_CBC_HMAC, &[&enc_uid, &mac_uid])?;
        out.extend_from_slice(iv);
        out.extend_from_slice(ciphertext);
        let tag = self.server_mac(&mac_uid, &mac_input(&out, context), Purpose::Wrap).await?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    async fn unwrap_cbc_hmac(
        &self,
        parsed: &Parsed<'_>,
        context: &KeyContext<'_>,
    ) -> Result<Dek, KmsError> {
        let (Some(mac_uid), Some(mac_name)) = (parsed.mac_key_id, self.mac_key_name.as_deref())
        else {
            return Err(KmsError::InvalidCiphertext);
        };
        if !self.belongs(&self.key_name, parsed.key_id).await?
            || !self.belongs(mac_name, mac_uid).await?
        {
            return Err(KmsError::InvalidCiphertext);
        }
        let expected = self
            .server_mac(mac_uid, &mac_input(parsed.authenticated, context), Purpose::Unwrap)
            .await?;
        if !constant_time_eq(&expected, parsed.tag) {
            return Err(KmsError::InvalidCiphertext);
        }
        let payload = messages::decrypt(
            parsed.key_id,
            messages::cbc_parameters(),
            parsed.ciphertext,
            parsed.iv,
            None,
        );
        let answer =
            self.key_op(parsed.key_id, Operation::Decrypt, payload, Purpose::Unwrap).await?;
        dek_from(messages::bytes_field(&answer, tag::DATA))
    }

    async fn wrap_gcm(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        let uid = self.current(&self.key_name, false).await?;
        let nonce: [u8; GCM_NONCE_LEN] =
            random_array().map_err(|_| KmsError::WrapFailed("no randomness".into()))?;
        let mut out = header(FORMAT_GCM, &[&uid])?;
        let aad = gcm_aad(&out, context);
        let payload = messages::encrypt(
            &uid,
            messages::gcm_parameters(GCM_TAG_LEN as i32),
            dek.expose_secret(),
            &nonce,
            Some(&aad),
        );
        let answer = self.key_op(&uid, Operation::Encrypt, payload, Purpose::Wrap).await?;
        let ciphertext = messages::bytes_field(&answer, tag::DATA).filter(|c| c.len() == KEY_LEN);
        let auth_tag = messages::bytes_field(&answer, tag::AUTHENTICATED_ENCRYPTION_TAG)
            .filter(|t| t.len() == GCM_TAG_LEN);
        let (Some(ciphertext), Some(auth_tag)) = (ciphertext, auth_tag) else {
            return Err(unusable(
                Purpose::Wrap,
                "the GCM Encrypt answer lacks a 32-byte ciphertext or a 16-byte tag \
                 (does the server support KMIP 1.4 authenticated encryption?)",
            ));
        };
        if messages::bytes_field(&answer, tag::IV_COUNTER_NONCE).is_some_and(|n| n != nonce) {
            return Err(unusable(Purpose::Wrap, "the server used another GCM nonce"));
        }
        out.extend_from_slice(&nonce);
        out.extend_from_slice(ciphertext);
        out.extend_from_slice(auth_tag);
        Ok(out)
    }

    async fn unwrap_gcm(
        &self,
        parsed: &Parsed<'_>,
        context: &KeyContext<'_>,
    ) -> Result<Dek, KmsError> {
        if !self.belongs(&self.key_name, parsed.key_id).await? {
            return Err(KmsError::InvalidCiphertext);
        }
        let aad = gcm_aad(parsed.header, context);
        let payload = messages::decrypt(
            parsed.key_id,
            messages::gcm_parameters(GCM_TAG_LEN as i32),
            parsed.ciphertext,
            parsed.iv,
            Some((&aad, parsed.tag)),
        );
        let answer =
            self.key_op(parsed.key_id, Operation::Decrypt, payload, Purpose::Unwrap).await?;
        dek_from(messages::bytes_field(&answer, tag::DATA))
    }
}

#[async_trait]
impl Kms for KmipKms {
    fn kind(&self) -> &'static str {
        "kmip"
    }

    async fn wrap(&self, dek: &Dek, context: &KeyContext<'_>) -> Result<Vec<u8>, KmsError> {
        match self.mechanism {
            Mechanism::CbcHmac => self.wrap_cbc_hmac(dek, context).await,
            Mechanism::Gcm => self.wrap_gcm(dek, context).await,
        }
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext<'_>) -> Result<Dek, KmsError> {
        let parsed = Parsed::parse(wrapped).ok_or(KmsError::InvalidCiphertext)?;
        match (self.mechanism, parsed.format) {
            (Mechanism::CbcHmac, FORMAT_CBC_HMAC) => self.unwrap_cbc_hmac(&parsed, context).await,
            (Mechanism::Gcm, FORMAT_GCM) => self.unwrap_gcm(&parsed, context).await,
            _ => Err(KmsError::InvalidCiphertext),
        }
    }

    async fn health(&self) -> Result<(), KmsError> {
        self.current(&self.key_name, true).await?;
        if let Some(mac) = &self.mac_key_name {
            self.current(mac, true).await?;
        }
        Ok(())
    }
}

/// Key administration through the same connection, for tests (the `conformance` feature): a
/// tenant creates its keys with its own KMS tools.
#[cfg(feature = "conformance")]
pub mod admin {
    use super::*;

    /// Cryptographic Usage Mask bits.
    pub const USAGE_ENCRYPT: i32 = 0x04;
    /// Decrypt.
    pub const USAGE_DECRYPT: i32 = 0x08;
    /// MAC Generate.
    pub const USAGE_MAC_GENERATE: i32 = 0x80;
    /// MAC Verify.
    pub const USAGE_MAC_VERIFY: i32 = 0x100;

    impl KmipKms {
        /// Creates an AES-256 key named `name` with `usage_mask` (Pre-Active); its id.
        pub async fn create_key(&self, name: &str, usage_mask: i32) -> Result<String, KmsError> {
            let answer =
                self.admin(Operation::Create, messages::create_aes_key(name, usage_mask)).await?;
            messages::unique_identifier(&answer)
                .map(str::to_owned)
                .ok_or_else(|| KmsError::WrapFailed("kmip: Create answered no identifier".into()))
        }
        /// Pre-Active → Active.
        pub async fn activate_key(&self, uid: &str) -> Result<(), KmsError> {
            self.admin(Operation::Activate, messages::by_id(uid)).await.map(drop)
        }
        /// Active → Deactivated (reason: cessation of operation).
        pub async fn revoke_key(&self, uid: &str) -> Result<(), KmsError> {
            self.admin(Operation::Revoke, messages::revoke(uid)).await.map(drop)
        }
        /// Destroys a key that is not Active.
        pub async fn destroy_key(&self, uid: &str) -> Result<(), KmsError> {
            self.admin(Operation::Destroy, messages::by_id(uid)).await.map(drop)
        }
        /// Forgets the cached key ids (as if `key_refresh_seconds` had passed).
        pub fn forget_keys(&self) {
            self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        }

        async fn admin(&self, op: Operation, payload: Vec<Item>) -> Result<Item, KmsError> {
            match self.call(op, payload).await {
                Ok(answer) => Ok(answer),
                Err(CallError::Kms(e)) => Err(e),
                Err(CallError::Answer(a)) => Err(answer_error(a, Purpose::Lookup)),
            }
        }
    }
}

/// The server's answer as a [`KmsError`], where the key's state does not matter.
fn answer_error(answer: Answer, purpose: Purpose) -> KmsError {
    let (code, message) = match answer {
        Answer::Malformed(what) => return unusable(purpose, &what),
        Answer::Failed { reason, message } => (reason, message),
    };
    let text = format!(
        "kmip: {message} (result reason {})",
        code.map_or("none".into(), |c| format!("{c:#x}"))
    );
    match code {
        Some(
            reason::AUTHENTICATION_NOT_SUCCESSFUL
            | reason::NOT_AUTHORISED
            | reason::PERMISSION_DENIED,
        ) => KmsError::AccessDenied(text),
        Some(
            reason::WRONG_KEY_LIFECYCLE_STATE
            | reason::OBJECT_DESTROYED
            | reason::OBJECT_ARCHIVED
            | reason::USAGE_LIMIT_EXCEEDED,
        ) => KmsError::KeyDisabled(text),
        Some(
            reason::ITEM_NOT_FOUND
            | reason::OBJECT_NOT_FOUND
            | reason::INVALID_MESSAGE
            | reason::OPERATION_NOT_SUPPORTED
            | reason::MISSING_DATA
            | reason::INVALID_FIELD
            | reason::FEATURE_NOT_SUPPORTED
            | reason::ILLEGAL_OPERATION
            | reason::KEY_FORMAT_TYPE_NOT_SUPPORTED
            | reason::BAD_CRYPTOGRAPHIC_PARAMETERS
            | reason::UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS
            | reason::UNSUPPORTED_PROTOCOL_VERSION
            | reason::INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK,
        ) => KmsError::ConfigurationInvalid(text),
        Some(reason::SERVER_LIMIT_EXCEEDED) => KmsError::Throttled,
        Some(reason::GENERAL_FAILURE | reason::INTERNAL_SERVER_ERROR) => {
            KmsError::Unreachable(text)
        }
        _ => match purpose {
            Purpose::Unwrap => KmsError::UnwrapFailed(text),
            Purpose::Wrap | Purpose::Lookup => KmsError::WrapFailed(text),
        },
    }
}

fn unusable(purpose: Purpose, what: &str) -> KmsError {
    match purpose {
        Purpose::Unwrap => KmsError::UnwrapFailed(format!("kmip: {what}")),
        Purpose::Wrap => KmsError::WrapFailed(format!("kmip: {what}")),
        Purpose::Lookup => KmsError::Unreachable(format!("kmip: unusable answer: {what}")),
    }
}

fn dek_from(plain: Option<&[u8]>) -> Result<Dek, KmsError> {
    plain.and_then(|p| Dek::try_from_slice(p).ok()).ok_or_else(|| {
        KmsError::UnwrapFailed("kmip: the Decrypt answer is not a 32-byte key".into())
    })
}

/// `"KHK" ‖ format ‖ (u8 len ‖ id)*`.
fn header(format: u8, ids: &[&str]) -> Result<Vec<u8>, KmsError> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(MAGIC);
    out.push(format);
    for id in ids {
        let len = u8::try_from(id.len()).ok().filter(|l| *l > 0).ok_or_else(|| {
            KmsError::WrapFailed("kmip: a key id is empty or over 255 bytes".into())
        })?;
        out.push(len);
        out.extend_from_slice(id.as_bytes());
    }
    Ok(out)
}

fn labelled(label: &[u8], context: &KeyContext<'_>, rest: &[u8]) -> Vec<u8> {
    let ad = context.associated_data();
    let mut out = Vec::with_capacity(label.len() + 4 + ad.len() + rest.len());
    out.extend_from_slice(label);
    out.extend_from_slice(&u32::try_from(ad.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&ad);
    out.extend_from_slice(rest);
    out
}

/// What the cbc-hmac tag covers: label, context, and every byte of the wrapped key before it.
fn mac_input(authenticated: &[u8], context: &KeyContext<'_>) -> Vec<u8> {
    labelled(CBC_HMAC_LABEL, context, authenticated)
}

/// The GCM additional data: label, context, and the header (format and key id).
fn gcm_aad(header: &[u8], context: &KeyContext<'_>) -> Vec<u8> {
    labelled(GCM_LABEL, context, header)
}

/// A wrapped key, split into its fields (lengths checked exactly).
struct Parsed<'a> {
    format: u8,
    key_id: &'a str,
    mac_key_id: Option<&'a str>,
    /// Magic, format and key ids.
    header: &'a [u8],
    iv: &'a [u8],
    ciphertext: &'a [u8],
    tag: &'a [u8],
    /// Everything before the tag.
    authenticated: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn parse(wrapped: &'a [u8]) -> Option<Self> {
        let (magic, rest) = wrapped.split_first_chunk::<3>()?;
        if magic != MAGIC {
            return None;
        }
        let (&format, rest) = rest.split_first()?;
        let (ids, iv_len, ct_len, tag_len) = match format {
            FORMAT_CBC_HMAC => (2, CBC_IV_LEN, CBC_CIPHERTEXT_LEN, HMAC_LEN),
            FORMAT_GCM => (1, GCM_NONCE_LEN, KEY_LEN, GCM_TAG_LEN),
            _ => return None,
        };
        let mut rest = rest;
        let mut found = [None, None];
        for slot in found.iter_mut().take(ids) {
            let (&len, after) = rest.split_first()?;
            if len == 0 {
                return None;
            }
            let (id, after) = after.split_at_checked(usize::from(len))?;
            *slot = Some(core::str::from_utf8(id).ok()?);
            rest = after;
        }
        let header_len = wrapped.len() - rest.len();
        if rest.len() != iv_len + ct_len + tag_len {
            return None;
        }
        let (iv, rest) = rest.split_at_checked(iv_len)?;
        let (ciphertext, tag) = rest.split_at_checked(ct_len)?;
        Some(Self {
            format,
            key_id: found[0]?,
            mac_key_id: found[1],
            header: wrapped.get(..header_len)?,
            iv,
            ciphertext,
            tag,
            authenticated: wrapped.get(..wrapped.len() - tag_len)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(format: u8, ids: &[&str], body: usize) -> Vec<u8> {
        let mut out = header(format, ids).unwrap();
        out.extend((0..body).map(|i| i as u8));
        out
    }

    #[test]
    fn parses_exact_layouts_only() {
        let cbc = sample(FORMAT_CBC_HMAC, &["11", "12"], 16 + 48 + 32);
        let p = Parsed::parse(&cbc).unwrap();
        assert_eq!((p.key_id, p.mac_key_id), ("11", Some("12")));
        assert_eq!((p.iv.len(), p.ciphertext.len(), p.tag.len()), (16, 48, 32));
        assert_eq!(p.authenticated.len(), cbc.len() - 32);
        assert_eq!(p.header, &cbc[..4 + 3 + 3]);
        assert_eq!(KmipKms::key_id_of(&cbc).as_deref(), Some("11"));

        let gcm = sample(FORMAT_GCM, &["abc"], 12 + 32 + 16);
        let p = Parsed::parse(&gcm).unwrap();
        assert_eq!((p.key_id, p.mac_key_id, p.tag.len()), ("abc", None, 16));

        for len in 0..cbc.len() {
            assert!(Parsed::parse(&cbc[..len]).is_none(), "prefix of {len} bytes parsed");
        }
        let mut longer = cbc.clone();
        longer.push(0);
        assert!(Parsed::parse(&longer).is_none());
        let mut bad_format = cbc.clone();
        bad_format[3] = 9;
        assert!(Parsed::parse(&bad_format).is_none());
        assert!(header(FORMAT_GCM, &[""]).is_err());
        assert!(header(FORMAT_GCM, &[&"x".repeat(256)]).is_err());
    }

    #[test]
    fn authenticated_input_binds_context() {
        let a = mac_input(b"KHK", &KeyContext::new("t", 1));
        assert_ne!(a, mac_input(b"KHK", &KeyContext::new("t", 2)));
        assert_ne!(a, mac_input(b"KHK", &KeyContext::new("u", 1)));
        assert_ne!(gcm_aad(b"KHK", &KeyContext::new("t", 1)), a);
    }

    #[test]
    fn answers_map_to_errors() {
        let failed = |r| Answer::Failed { reason: Some(r), message: "m".into() };
        assert!(matches!(
            answer_error(failed(reason::ITEM_NOT_FOUND), Purpose::Lookup),
            KmsError::ConfigurationInvalid(_)
        ));
        assert!(matches!(
            answer_error(failed(reason::WRONG_KEY_LIFECYCLE_STATE), Purpose::Wrap),
            KmsError::KeyDisabled(_)
        ));
        assert!(matches!(
            answer_error(failed(reason::AUTHENTICATION_NOT_SUCCESSFUL), Purpose::Wrap),
            KmsError::AccessDenied(_)
        ));
        assert_eq!(
            answer_error(failed(reason::SERVER_LIMIT_EXCEEDED), Purpose::Wrap),
            KmsError::Throttled
        );
        assert!(matches!(
            answer_error(failed(reason::GENERAL_FAILURE), Purpose::Wrap),
            KmsError::Unreachable(_)
        ));
        assert!(matches!(answer_error(failed(0x99), Purpose::Unwrap), KmsError::UnwrapFailed(_)));
        assert!(matches!(
            answer_error(Answer::Malformed("x".into()), Purpose::Wrap),
            KmsError::WrapFailed(_)
        ));
    }

    #[test]
    fn config_parses_and_rejects_unknown_fields() {
        let config: KmipConfig = toml::from_str(
            r#"
            address = "kmip.example.com:5696"
            ca_cert_file = "ca.pem"
            client_cert_file = "client.pem"
            client_key = { file = "client.key" }
            key_name = "tenant-a"
            mac_key_name = "tenant-a-mac"
            "#,
        )
        .unwrap();
        assert_eq!(config.mechanism, Mechanism::CbcHmac);
        assert_eq!((config.key_refresh_seconds, config.pool_size), (60, 4));
        let gcm: KmipConfig = toml::from_str(
            r#"
            address = "kmip.example.com:5696"
            ca_cert_file = "ca.pem"
            client_cert_file = "client.pem"
            client_key = "-----BEGIN PRIVATE KEY-----"
            key_name = "tenant-a"
            mechanism = "gcm"
            "#,
        )
        .unwrap();
        assert_eq!(gcm.mechanism, Mechanism::Gcm);
        assert!(!format!("{gcm:?}").contains("BEGIN PRIVATE KEY"));
        assert!(toml::from_str::<KmipConfig>("address = \"a:1\"\nbogus = 1").is_err());
    }

    #[tokio::test]
    async fn connect_validates_the_configuration() {
        let base: KmipConfig = toml::from_str(
            r#"
            address = "localhost:5696"
            ca_cert_file = "missing-ca.pem"
            client_cert_file = "client.pem"
            client_key = "key"
            key_name = "k"
            mac_key_name = "m"
            "#,
        )
        .unwrap();
        let options = ConnectOptions::default();
        type Change = Box<dyn Fn(&mut KmipConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("host:port", Box::new(|c| c.address = "localhost".into())),
            ("host:port", Box::new(|c| c.address = "localhost:http".into())),
            ("key_name", Box::new(|c| c.key_name.clear())),
            ("needs mac_key_name", Box::new(|c| c.mac_key_name = None)),
            ("differ", Box::new(|c| c.mac_key_name = Some("k".into()))),
            ("no mac_key_name", Box::new(|c| c.mechanism = Mechanism::Gcm)),
            ("pool_size", Box::new(|c| c.pool_size = 1000)),
            ("ca_cert_file", Box::new(|_| {})),
        ];
        for (want, change) in cases {
            let mut config = base.clone();
            change(&mut config);
            match KmipKms::connect(&config, &options).await {
                Err(KmsError::ConfigurationInvalid(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}
