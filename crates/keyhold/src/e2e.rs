//! End-to-end encryption to groups, users and devices (docs/e2e-crypto.md, docs/e2e-api.md).
//!
//! Documents are encrypted and decrypted on the device; the E2E service (in the Configuration
//! Broker) stores them, keeps groups and devices, and transforms a document's key from a group
//! to a member's device without being able to read it.
//!
//! Two kinds of caller:
//! - the **vendor's backend** ([`VendorE2e`], the broker's vendor API key), which vouches for
//!   who a user is: it registers users and their devices;
//! - a **device** ([`Device`]), which signs each request with its own key and does everything
//!   else: groups, members, admins, documents, grants, decrypts.
//!
//! ```no_run
//! # async fn example() -> Result<(), keyhold::e2e::E2eError> {
//! use keyhold::e2e::{E2eService, Recipient};
//! let service = E2eService::new("http://127.0.0.1:32805", "demo-tenant")?;
//! let vendor = service.vendor(std::fs::read_to_string(".keyhold/vendor-api-key")?.trim());
//! // A user's first device: keys made here, the passphrase never leaves it.
//! let alice = vendor.enroll_user("alice", b"alice's passphrase", "laptop").await?;
//! let bob = vendor.enroll_user("bob", b"bob's passphrase", "laptop").await?;
//! alice.create_group("employees", true).await?;
//! alice.encrypt("plan-1", b"the plan", &[Recipient::Group("employees".into())]).await?;
//! alice.add_member("employees", "bob").await?;            // after the document: bob reads it
//! let (plan, author) = bob.decrypt("plan-1").await?;
//! assert_eq!((&plan[..], author.as_str()), (&b"the plan"[..], "alice"));
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyhold_e2e::OsRng;
use keyhold_e2e::keys::{KeyError, UserPublicKeys};
use keyhold_e2e::pre::{self, PrivateKey, PublicKey};
use keyhold_e2e::trust::{self, Pin};
pub use keyhold_e2e::{AccessError, DocumentError, KeyPins, Recipient};
use keyhold_e2e::{
    DecryptGrant, DeviceCertificate, DeviceKeys, KeySealedToPublicKey, PassphraseCost,
    PassphraseSealedKey, UserKeys, document, wire,
};
use keyhold_e2e::{SignedGroupKey, SignedUserKeys, VerifyingKey};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// Why an E2E call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// The service refused the request; `code` is the stable code of docs/e2e-api.md.
    #[error("the E2E service refused the request: {message} ({code}, HTTP {status})")]
    Refused {
        /// The E2E API's code (1101…).
        code: u16,
        /// The HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// The service could not be reached.
    #[error("could not reach the E2E service: {0}")]
    Unreachable(String),
    /// The service answered something that is not the API's response.
    #[error("unexpected answer from the E2E service: {0}")]
    InvalidResponse(String),
    /// A document could not be encrypted, verified or decrypted on this device.
    #[error("document: {0}")]
    Document(#[from] DocumentError),
    /// What the service returned did not check out on this device (a certificate, a signature).
    #[error("refused on this device: {0}")]
    Access(#[from] AccessError),
    /// A key could not be opened (wrong passphrase) or parsed.
    #[error("key: {0}")]
    Key(#[from] KeyError),
    /// Reading or writing a local file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An argument is unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl E2eError {
    /// The stable code: the service's for refusals, [`AccessError::code`] for checks that failed
    /// on the device, 0 otherwise.
    pub fn code(&self) -> u16 {
        match self {
            Self::Refused { code, .. } => *code,
            Self::Access(e) => e.code(),
            Self::Document(e) => AccessError::Document(e.clone()).code(),
            _ => 0,
        }
    }
}

type Result<T> = std::result::Result<T, E2eError>;

/// The E2E service of one organization (tenant) at a broker.
#[derive(Clone, Debug)]
pub struct E2eService {
    http: reqwest::Client,
    base: String,
    tenant: String,
    /// The CA certificates (PEM) trusted for the broker instead of the system's roots.
    broker_ca: Option<String>,
}

impl E2eService {
    /// The service at `broker_url` (e.g. `http://127.0.0.1:32805`) for `tenant`. An `https`
    /// broker's certificate is checked against the system's roots.
    pub fn new(broker_url: &str, tenant: &str) -> Result<Self> {
        Self::build(broker_url, tenant, None)
    }

    /// The service at `broker_url` for `tenant`, trusting only the CA certificates in
    /// `ca_pem` (PEM, one or more) for the broker's TLS certificate: a broker whose
    /// certificate a private CA issued. A [`Device`] made from it keeps the CA in its file.
    pub fn with_broker_ca(broker_url: &str, tenant: &str, ca_pem: &str) -> Result<Self> {
        Self::build(broker_url, tenant, Some(ca_pem.to_owned()))
    }

    fn build(broker_url: &str, tenant: &str, broker_ca: Option<String>) -> Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5));
        if let Some(pem) = &broker_ca {
            let roots = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                E2eError::InvalidArgument(format!("the broker CA is not PEM certificates: {e}"))
            })?;
            if roots.is_empty() {
                return Err(E2eError::InvalidArgument("the broker CA holds no certificate".into()));
            }
            http = http.tls_certs_only(roots);
        }
        let http =
            http.build().map_err(|e| E2eError::InvalidArgument(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: broker_url.trim_end_matches('/').to_owned(),
            tenant: tenant.to_owned(),
            broker_ca,
        })
    }

    /// The vendor's backend, with the broker's vendor API key.
    pub fn vendor(&self, vendor_api_key: &str) -> VendorE2e {
        VendorE2e { service: self.clone(), key: Zeroizing::new(vendor_api_key.trim().to_owned()) }
    }

    /// A device whose keys this process holds, with no pinned keys yet (see [`Device::pin_user`]).
    pub fn device(&self, user: &str, device: &str, keys: DeviceKeys) -> Device {
        self.device_with_pins(user, device, keys, KeyPins::new())
    }

    /// A device whose keys and pins this process holds (an application keeping devices in its
    /// own storage rather than [`Device::save`]'s file: store [`Device::key_pins`] with the keys).
    pub fn device_with_pins(
        &self,
        user: &str,
        device: &str,
        keys: DeviceKeys,
        pins: KeyPins,
    ) -> Device {
        Device {
            service: self.clone(),
            user: user.to_owned(),
            device: device.to_owned(),
            keys,
            pins: Mutex::new(pins),
            pins_changed: AtomicBool::new(false),
        }
    }

    /// The organization.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    fn path(&self, rest: &str) -> String {
        format!("/api/v1/e2e/tenants/{}{rest}", seg(&self.tenant))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        auth: Auth<'_>,
    ) -> Result<Option<T>> {
        let body = body.unwrap_or_default();
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        match auth {
            Auth::Vendor(key) => req = req.bearer_auth(key),
            Auth::Device(d) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                    .unwrap_or_default();
                let h = wire::sign_request(
                    &d.keys,
                    &self.tenant,
                    &d.user,
                    &d.device,
                    method.as_str(),
                    path,
                    now,
                    &body,
                );
                req = req
                    .header(wire::USER_HEADER, h.user)
                    .header(wire::DEVICE_HEADER, h.device)
                    .header(wire::TIMESTAMP_HEADER, h.timestamp.to_string())
                    .header(wire::SIGNATURE_HEADER, h.signature);
            }
        }
        if !body.is_empty() {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let resp =
            req.send().await.map_err(|e| E2eError::Unreachable(crate::client::describe(&e)))?;
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|e| E2eError::Unreachable(crate::client::describe(&e)))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<wire::ErrorBody>(&bytes) {
                Ok(e) => {
                    E2eError::Refused { code: e.code, status: status.as_u16(), message: e.message }
                }
                Err(_) => E2eError::InvalidResponse(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(bytes.get(..200).unwrap_or(&bytes))
                )),
            });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| E2eError::InvalidResponse(e.to_string()))
    }
}

enum Auth<'a> {
    Vendor(&'a str),
    Device(&'a Device),
}

/// One path segment, percent-encoded (ids may hold any printable character).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json<T: Serialize>(v: &T) -> Result<Option<Vec<u8>>> {
    serde_json::to_vec(v).map(Some).map_err(|e| E2eError::InvalidArgument(e.to_string()))
}

fn expect<T>(v: Option<T>) -> Result<T> {
    v.ok_or_else(|| E2eError::InvalidResponse("empty response".into()))
}

fn malformed(e: impl std::fmt::Display) -> E2eError {
    E2eError::InvalidResponse(e.to_string())
}

/// The vendor's backend: registers users and devices (it vouches for who the user is; it never
/// sees a private key or a passphrase).
pub struct VendorE2e {
    service: E2eService,
    key: Zeroizing<String>,
}

impl core::fmt::Debug for VendorE2e {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VendorE2e").field("service", &self.service).finish_non_exhaustive()
    }
}

impl VendorE2e {
    /// Registers a user from its passphrase-sealed keys and its signature of its public keys
    /// (both made on the user's device by [`new_user_keys`]).
    pub async fn create_user(
        &self,
        sealed: &PassphraseSealedKey,
        signed: &SignedUserKeys,
    ) -> Result<()> {
        if &signed.keys != sealed.public() {
            return Err(E2eError::InvalidArgument(
                "the signed keys are not the sealed keys' public keys".into(),
            ));
        }
        let body = wire::CreateUser {
            user: signed.user.clone(),
            sealed_keys: sealed.to_bytes(),
            key_signature: signed.signature().to_vec(),
        };
        self.service
            .call::<serde_json::Value>(
                Method::POST,
                &self.service.path("/users"),
                json(&body)?,
                Auth::Vendor(&self.key),
            )
            .await?;
        Ok(())
    }

    /// A user's sealed keys, for the user's new device to open with the passphrase.
    pub async fn sealed_keys(&self, user: &str) -> Result<PassphraseSealedKey> {
        let path = self.service.path(&format!("/users/{}/sealed-keys", seg(user)));
        let r: wire::SealedKeys =
            expect(self.service.call(Method::GET, &path, None, Auth::Vendor(&self.key)).await?)?;
        Ok(PassphraseSealedKey::from_bytes(&r.sealed_keys)?)
    }

    /// Registers a device the user certified (see [`DeviceEnrollment`]).
    pub async fn authorize_device(&self, enrollment: &DeviceEnrollment) -> Result<()> {
        let path =
            self.service.path(&format!("/users/{}/devices", seg(&enrollment.certificate.user)));
        let body = wire::AuthorizeDevice {
            certificate: (&enrollment.certificate).into(),
            transform_key: enrollment.transform_key.to_bytes(),
        };
        self.service
            .call::<serde_json::Value>(Method::POST, &path, json(&body)?, Auth::Vendor(&self.key))
            .await?;
        Ok(())
    }

    /// Everything for a new user in one process (tests, tools, single-tier apps): keys made
    /// here, sealed under the passphrase, registered with the first device.
    pub async fn enroll_user(&self, user: &str, passphrase: &[u8], device: &str) -> Result<Device> {
        let (keys, sealed, signed) =
            new_user_keys(&self.service.tenant, user, passphrase, PassphraseCost::default())?;
        self.create_user(&sealed, &signed).await?;
        let enrollment = DeviceEnrollment::new(&keys, user, device);
        self.authorize_device(&enrollment).await?;
        Ok(enrollment.into_device(&self.service, &keys))
    }

    /// A new device for an existing user: fetch the sealed keys, open them with the passphrase
    /// (on the device), certify the device, register it.
    pub async fn add_device(&self, user: &str, passphrase: &[u8], device: &str) -> Result<Device> {
        // Opening with the passphrase authenticates the public keys too (they are the sealed
        // key's associated data), so the device can pin its own user's key.
        let keys = self.sealed_keys(user).await?.open(passphrase)?;
        let enrollment = DeviceEnrollment::new(&keys, user, device);
        self.authorize_device(&enrollment).await?;
        Ok(enrollment.into_device(&self.service, &keys))
    }
}

/// A new user's keys; the same sealed under `passphrase` (Argon2id at `cost`) for the service
/// to keep; and the user's signature of its public keys as user `user` of `tenant`, which every
/// device checks before using them. Runs on the user's device.
pub fn new_user_keys(
    tenant: &str,
    user: &str,
    passphrase: &[u8],
    cost: PassphraseCost,
) -> Result<(UserKeys, PassphraseSealedKey, SignedUserKeys)> {
    if passphrase.is_empty() {
        return Err(E2eError::InvalidArgument("the passphrase is empty".into()));
    }
    let keys = UserKeys::generate(&mut OsRng);
    let sealed = PassphraseSealedKey::seal(&keys, passphrase, cost, &mut OsRng)?;
    let signed = SignedUserKeys::issue(&keys, tenant, user);
    Ok((keys, sealed, signed))
}

/// A device's keys with the user's certificate and transform key user → device: what the
/// vendor's backend registers. Made on the device with the user's opened keys.
pub struct DeviceEnrollment {
    /// The device's own keys; they stay on the device.
    pub keys: DeviceKeys,
    /// The user's certificate of the device.
    pub certificate: DeviceCertificate,
    /// Transform key user → device.
    pub transform_key: pre::TransformKey,
}

impl DeviceEnrollment {
    /// Fresh device keys certified by `user_keys`.
    pub fn new(user_keys: &UserKeys, user: &str, device: &str) -> Self {
        let keys = DeviceKeys::generate(&mut OsRng);
        let certificate = DeviceCertificate::issue(user_keys, user, device, keys.public());
        let transform_key =
            pre::transform_key(user_keys.encryption_key(), &keys.public().encryption, &mut OsRng);
        Self { keys, certificate, transform_key }
    }

    /// The enrolled device, with its own user's key pinned (`user_keys` made the enrollment).
    fn into_device(self, service: &E2eService, user_keys: &UserKeys) -> Device {
        let device = service.device(&self.certificate.user, &self.certificate.device, self.keys);
        device.pins().pin_user(&self.certificate.user, &user_keys.public().signing);
        device.pins_changed.store(true, Ordering::Relaxed);
        device
    }
}

/// A user's device, holding its private keys; every request is signed with them.
///
/// Every public key the device uses comes from the service, so the device checks it first
/// (docs/e2e-crypto.md §4.2): a user's keys must carry the user's signature, a group's key the
/// signature of the device that created the group, certified by its user. The device pins each
/// user's signing key and each group's key on first use (its own user's at enrollment) and
/// refuses a different one later ([`AccessError::KeyChanged`], code 1116). Pins are saved with
/// the device by [`Device::save`]; compare [`Device::fingerprint`]s out of band to check a
/// first use.
pub struct Device {
    service: E2eService,
    user: String,
    device: String,
    keys: DeviceKeys,
    pins: Mutex<KeyPins>,
    pins_changed: AtomicBool,
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("user", &self.user)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// What [`Device::save`] writes: the device's identity and private keys.
#[derive(serde::Serialize, serde::Deserialize)]
struct DeviceFile {
    broker: String,
    /// The CA certificates (PEM) trusted for the broker, when not the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    broker_ca: Option<String>,
    tenant: String,
    user: String,
    device: String,
    #[serde(with = "wire::b64")]
    keys: Vec<u8>,
    /// The users' and groups' keys this device has checked (absent in files written before).
    #[serde(default)]
    pins: KeyPins,
}

impl Device {
    /// Its user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.device
    }

    /// Writes the device's identity, private keys and pinned keys to `path`, readable by the
    /// owner only. This file is the device: keep it on the device. The file is replaced
    /// atomically (written beside it, synced, renamed), so a crash while saving pins never
    /// loses the keys.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut file = DeviceFile {
            broker: self.service.base.clone(),
            broker_ca: self.service.broker_ca.clone(),
            tenant: self.service.tenant.clone(),
            user: self.user.clone(),
            device: self.device.clone(),
            keys: self.keys.to_bytes().to_vec(),
            pins: self.pins().clone(),
        };
        let text = serde_json::to_vec_pretty(&file).map(Zeroizing::new);
        zeroize::Zeroize::zeroize(&mut file.keys);
        let text = text.map_err(|e| E2eError::InvalidArgument(e.to_string()))?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(name);
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            std::io::Write::write_all(&mut f, &text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        self.pins_changed.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The CA certificates (PEM) trusted for the broker, if not the system's roots.
    pub fn broker_ca(&self) -> Option<&str> {
        self.service.broker_ca.as_deref()
    }

    /// Trusts only the CA certificates in `ca_pem` (PEM) for the broker from now on, e.g. after
    /// the broker's CA changed; [`Device::save`] keeps them in the device file.
    pub fn set_broker_ca(&mut self, ca_pem: &str) -> Result<()> {
        self.service =
            E2eService::build(&self.service.base, &self.service.tenant, Some(ca_pem.to_owned()))?;
        Ok(())
    }

    /// Whether the device pinned a key since it was loaded or last saved (save it then, or the
    /// pin is checked again as a first use next time).
    pub fn pins_changed(&self) -> bool {
        self.pins_changed.load(Ordering::Relaxed)
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, KeyPins> {
        // Pins are checked and inserted in one call; a panic elsewhere leaves them consistent.
        self.pins.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pin(&self, checked: std::result::Result<Pin, AccessError>) -> Result<()> {
        if checked? == Pin::New {
            self.pins_changed.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The keys this device has checked (to store them where the application keeps the device).
    pub fn key_pins(&self) -> KeyPins {
        self.pins().clone()
    }

    /// Pins a user's signing key checked out of band (e.g. a fingerprint compared in person),
    /// replacing any earlier pin.
    pub fn pin_user(&self, user: &str, signing: &VerifyingKey) {
        self.pins().pin_user(user, signing);
        self.pins_changed.store(true, Ordering::Relaxed);
    }

    /// The fingerprint of a user's signing key as this device sees it (checked and pinned), to
    /// compare with the same on the user's own device ([`keyhold_e2e::trust::fingerprint`]).
    pub async fn fingerprint(&self, user: &str) -> Result<String> {
        let signing = self.user_signing_key(user).await?;
        Ok(trust::fingerprint(&self.service.tenant, user, &signing))
    }

    /// Reads a file written by [`Device::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read(path)?);
        let file: DeviceFile = serde_json::from_slice(&text)
            .map_err(|e| E2eError::InvalidArgument(format!("{}: {e}", path.display())))?;
        let keys = DeviceKeys::from_bytes(&Zeroizing::new(file.keys))?;
        Ok(E2eService::build(&file.broker, &file.tenant, file.broker_ca)?.device_with_pins(
            &file.user,
            &file.device,
            keys,
            file.pins,
        ))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        rest: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<T>> {
        self.service.call(method, &self.service.path(rest), body, Auth::Device(self)).await
    }

    /// A user's public keys, checked: signed by the user's signing key, which matches this
    /// device's pin (or is pinned now, on first use).
    pub async fn user_public_keys(&self, user: &str) -> Result<UserPublicKeys> {
        let v: wire::UserKeysView =
            expect(self.call(Method::GET, &format!("/users/{}", seg(user)), None).await?)?;
        let signed = self.check_user_keys(user, &v)?;
        Ok(signed.keys)
    }

    /// Checks a user's keys as served: the user's signature, then the pin.
    fn check_user_keys(&self, user: &str, v: &wire::UserKeysView) -> Result<SignedUserKeys> {
        if v.key_signature.is_empty() {
            // Stored before users signed their keys: nothing vouches for them.
            return Err(AccessError::KeyStatement.into());
        }
        let signed = v.signed(user).map_err(malformed)?;
        signed.verify(&self.service.tenant)?;
        self.pin(self.pins().check_user(user, &signed.keys.signing))?;
        Ok(signed)
    }

    /// A user's signing key: the pinned one, else fetched and checked (and pinned).
    async fn user_signing_key(&self, user: &str) -> Result<VerifyingKey> {
        if let Some(pinned) = self.pins().user(user) {
            return Ok(pinned);
        }
        Ok(self.user_public_keys(user).await?.signing)
    }

    /// A group's public key, members and admins, as the service states them (the key is not
    /// checked here: encrypting and granting use the checked key).
    pub async fn group(&self, group: &str) -> Result<wire::GroupView> {
        expect(self.call(Method::GET, &format!("/groups/{}", seg(group)), None).await?)
    }

    /// A group's public key, checked: signed by the device that created the group, whose
    /// certificate verifies with its user's (checked or pinned) signing key, and equal to this
    /// device's pin (or pinned now).
    async fn group_public_key(&self, group: &str) -> Result<PublicKey> {
        let view = self.group(group).await?;
        if view.group != group {
            return Err(E2eError::InvalidResponse("the service returned another group".into()));
        }
        if view.creator.is_none() || view.key_signature.is_empty() {
            // Stored before groups' keys were signed: nothing vouches for the key.
            return Err(AccessError::KeyStatement.into());
        }
        let (signed, creator) = view.signed_key().map_err(malformed)?;
        let creator_signing = self.user_signing_key(&signed.creator_user).await?;
        signed.verify(&self.service.tenant, &creator, &creator_signing)?;
        self.pin(self.pins().check_group(group, &signed.public_key))?;
        Ok(signed.public_key)
    }

    async fn recipient_key(&self, r: &Recipient) -> Result<PublicKey> {
        match r {
            Recipient::Group(g) => self.group_public_key(g).await,
            Recipient::User(u) => Ok(self.user_public_keys(u).await?.encryption),
        }
    }

    /// Revokes one of this user's devices (this one included). Nothing is re-encrypted.
    pub async fn revoke_device(&self, device: &str) -> Result<()> {
        let rest = format!("/users/{}/devices/{}", seg(&self.user), seg(device));
        self.call::<serde_json::Value>(Method::DELETE, &rest, None).await?;
        Ok(())
    }

    /// Creates a group with a fresh key pair, administered by this user (and, if `member`, with
    /// this user as a member). The group's private key leaves the device only sealed to the user.
    pub async fn create_group(&self, group: &str, member: bool) -> Result<()> {
        // Checked against this user's pin: the group's private key is sealed to this key.
        let me = self.user_public_keys(&self.user).await?;
        let key = PrivateKey::generate(&mut OsRng);
        let sealed = KeySealedToPublicKey::seal(&key, &me.encryption, &mut OsRng)?;
        let signed = SignedGroupKey::issue(
            &self.keys,
            &self.service.tenant,
            group,
            key.public_key(),
            &self.user,
            &self.device,
        );
        let body = wire::CreateGroup {
            group: group.to_owned(),
            public_key: key.public_key().to_bytes().to_vec(),
            sealed_for_creator: sealed.to_bytes(),
            creator_membership: member
                .then(|| pre::transform_key(&key, &me.encryption, &mut OsRng).to_bytes()),
            key_signature: signed.signature().to_vec(),
        };
        self.call::<serde_json::Value>(Method::POST, "/groups", json(&body)?).await?;
        self.pin(self.pins().check_group(group, &key.public_key()))?;
        Ok(())
    }

    /// The group's private key, opened on this device (admins only).
    async fn group_private_key(&self, group: &str) -> Result<PrivateKey> {
        let r: wire::GroupKey =
            expect(self.call(Method::GET, &format!("/groups/{}/key", seg(group)), None).await?)?;
        let sealed = KeySealedToPublicKey::from_bytes(&r.sealed_group_key)?;
        let key = sealed.open(self.keys.encryption_key())?;
        if key.public_key() != self.group_public_key(group).await? {
            return Err(E2eError::InvalidResponse("the group key is not the group's".into()));
        }
        Ok(key)
    }

    /// Adds a member (admins): a transform key group → member, made here. Documents already
    /// encrypted to the group become readable by the member; none is re-encrypted.
    pub async fn add_member(&self, group: &str, user: &str) -> Result<()> {
        let key = self.group_private_key(group).await?;
        let member = self.user_public_keys(user).await?;
        let tk = pre::transform_key(&key, &member.encryption, &mut OsRng);
        let body = wire::AddMember { transform_key: tk.to_bytes() };
        self.call::<serde_json::Value>(
            Method::PUT,
            &format!("/groups/{}/members/{}", seg(group), seg(user)),
            json(&body)?,
        )
        .await?;
        Ok(())
    }

    /// Removes a member (admins, or the member itself).
    pub async fn remove_member(&self, group: &str, user: &str) -> Result<()> {
        self.call::<serde_json::Value>(
            Method::DELETE,
            &format!("/groups/{}/members/{}", seg(group), seg(user)),
            None,
        )
        .await?;
        Ok(())
    }

    /// Makes `user` an admin (admins): the group's private key sealed to that user.
    pub async fn add_admin(&self, group: &str, user: &str) -> Result<()> {
        let key = self.group_private_key(group).await?;
        let admin = self.user_public_keys(user).await?;
        let sealed = KeySealedToPublicKey::seal(&key, &admin.encryption, &mut OsRng)?;
        let body = wire::AddAdmin { sealed_group_key: sealed.to_bytes() };
        self.call::<serde_json::Value>(
            Method::PUT,
            &format!("/groups/{}/admins/{}", seg(group), seg(user)),
            json(&body)?,
        )
        .await?;
        Ok(())
    }

    /// Removes an admin (admins; never the last one).
    pub async fn remove_admin(&self, group: &str, user: &str) -> Result<()> {
        self.call::<serde_json::Value>(
            Method::DELETE,
            &format!("/groups/{}/admins/{}", seg(group), seg(user)),
            None,
        )
        .await?;
        Ok(())
    }

    /// Encrypts `plaintext` once, signed by this device, to each recipient, and stores it as
    /// document `id`.
    pub async fn encrypt(&self, id: &str, plaintext: &[u8], to: &[Recipient]) -> Result<()> {
        if to.is_empty() {
            return Err(E2eError::InvalidArgument(
                "a document needs at least one recipient".into(),
            ));
        }
        let mut recipients = Vec::with_capacity(to.len());
        for r in to {
            recipients.push((r.clone(), self.recipient_key(r).await?));
        }
        let (doc, grants) = document::encrypt(id, plaintext, &self.keys, &recipients, &mut OsRng)?;
        let body = wire::CreateDocument {
            document: doc.to_bytes(),
            grants: grants.iter().map(|g| g.to_bytes()).collect(),
        };
        self.call::<serde_json::Value>(Method::POST, "/documents", json(&body)?).await?;
        Ok(())
    }

    async fn decrypt_grant(&self, id: &str) -> Result<DecryptGrant> {
        let r: wire::DecryptResponse = expect(
            self.call(Method::POST, &format!("/documents/{}/decrypt", seg(id)), None).await?,
        )?;
        DecryptGrant::try_from(&r).map_err(malformed)
    }

    /// Decrypts document `id` on this device: the service transforms its key to this device;
    /// the author's certificate and signature are checked here. Returns the plaintext and the
    /// author's user id.
    pub async fn decrypt(&self, id: &str) -> Result<(Zeroizing<Vec<u8>>, String)> {
        let grant = self.decrypt_grant(id).await?;
        if grant.document.id() != id {
            return Err(E2eError::InvalidResponse("the service returned another document".into()));
        }
        // The author's signing key vouches for the document: it must be the user's (signed by
        // it, and the pinned one). A first sight is pinned only once the author's certificate
        // verifies with it, so that a forged answer leaves no pin behind.
        let author_signing = &grant.author_user.keys.signing;
        grant.author_user.verify(&self.service.tenant)?;
        self.pins().compare_user(&grant.author.user, author_signing)?;
        grant.author.verify(author_signing)?;
        let (plain, author) = grant.open(&self.keys)?;
        self.pin(self.pins().check_user(author, author_signing))?;
        Ok((plain, author.to_owned()))
    }

    /// Grants document `id` to one more group or user (anyone who can read it). The document is
    /// not re-encrypted.
    pub async fn grant(&self, id: &str, to: &Recipient) -> Result<()> {
        let grant = self.decrypt_grant(id).await?;
        let pk = self.recipient_key(to).await?;
        let new = grant.document.grant(
            &grant.value,
            self.keys.encryption_key(),
            &self.keys,
            to.clone(),
            &pk,
            &mut OsRng,
        )?;
        let body = wire::AddGrant { grant: new.to_bytes() };
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/documents/{}/grants", seg(id)),
            json(&body)?,
        )
        .await?;
        Ok(())
    }

    /// Deletes a grant (the author, or an admin of the group for a group's grant).
    pub async fn revoke(&self, id: &str, from: &Recipient) -> Result<()> {
        let (kind, who) = match from {
            Recipient::Group(g) => ("group", g),
            Recipient::User(u) => ("user", u),
        };
        self.call::<serde_json::Value>(
            Method::DELETE,
            &format!("/documents/{}/grants/{kind}/{}", seg(id), seg(who)),
            None,
        )
        .await?;
        Ok(())
    }

    /// Encrypts a file's bytes as document `id` (stored once, whatever the number of readers).
    pub async fn encrypt_file(&self, id: &str, path: &Path, to: &[Recipient]) -> Result<()> {
        let bytes = Zeroizing::new(tokio::fs::read(path).await?);
        self.encrypt(id, &bytes, to).await
    }

    /// Decrypts document `id` into a file (written only once the document checked out).
    pub async fn decrypt_file(&self, id: &str, path: &Path) -> Result<String> {
        let (plain, author) = self.decrypt(id).await?;
        tokio::fs::write(path, &*plain).await?;
        Ok(author)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_broker_ca_that_is_not_pem_certificates_is_refused() {
        for (pem, said) in
            [("", "holds no certificate"), ("-----BEGIN CERTIFICATE-----\nnot base64", "not PEM")]
        {
            let err = E2eService::with_broker_ca("https://broker", "t", pem).unwrap_err();
            assert!(
                matches!(&err, E2eError::InvalidArgument(m) if m.contains(said)),
                "{pem:?}: {err}"
            );
        }
    }

    #[test]
    fn the_device_file_keeps_the_broker_ca_and_a_new_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.json");
        let keys = || DeviceKeys::generate(&mut OsRng);

        // Without a CA the file has none, and the device trusts the system's roots.
        E2eService::new("https://broker", "t")
            .unwrap()
            .device("u", "d", keys())
            .save(&path)
            .unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("broker_ca"));
        assert_eq!(Device::load(&path).unwrap().broker_ca(), None);

        let (first, second) = (ca_pem(), ca_pem());
        let service = E2eService::with_broker_ca("https://broker", "t", &first).unwrap();
        service.device("u", "d", keys()).save(&path).unwrap();
        let mut device = Device::load(&path).unwrap();
        assert_eq!(device.broker_ca(), Some(first.as_str()));
        device.set_broker_ca(&second).unwrap();
        device.save(&path).unwrap();
        assert_eq!(Device::load(&path).unwrap().broker_ca(), Some(second.as_str()));
        assert!(device.set_broker_ca("not a certificate").is_err());
        assert_eq!(device.broker_ca(), Some(second.as_str()), "a refused CA replaced the one kept");
    }
}
