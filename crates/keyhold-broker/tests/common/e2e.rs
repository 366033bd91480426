//! Driving the broker's E2E API with real keys from keyhold-e2e, every request signed by its
//! device, and the same operations applied to keyhold-e2e's in-memory `AccessState` (the
//! reference model of the rules): each call checks that the broker answered as the model did
//! (success, or the same error code with its status), and [`World::assert_events`] that the
//! broker's `e2e_events` are the model's events, in order.

use base64::Engine as _;
use keyhold_e2e::access::E2eAction;
use keyhold_e2e::pre;
use keyhold_e2e::wire::{
    self, AddAdmin, AddGrant, AddMember, AuthorizeDevice, CertificateView, CreateDocument,
    CreateGroup, CreateUser, DecryptResponse, GroupKey, GroupView, SealedKeys, UserKeysView,
};
use keyhold_e2e::{
    AccessError, AccessState, Actor, DecryptGrant, DeviceCertificate, DeviceKeys, E2eEvent,
    EncryptedDocument, Grant, KeySealedToPublicKey, PassphraseCost, PassphraseSealedKey,
    PrivateKey, Recipient, SignedGroupKey, SignedUserKeys, TransformKey, UserKeys,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng as _;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row as _;

use super::{TestBroker, TestDb, VENDOR_KEY};

/// Cheap Argon2 for test users (the default cost is exercised once, for carol).
pub const CHEAP: PassphraseCost = PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 };
/// The tenant of every E2E test.
pub const TENANT: &str = "acme";

/// One path segment, percent-encoded (ids may hold any printable character), as the SDK
/// sends it; the signature covers the path as sent.
pub fn seg(s: &str) -> String {
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

/// `/api/v1/e2e/tenants/acme{tail}`.
pub fn route(tail: &str) -> String {
    format!("/api/v1/e2e/tenants/{TENANT}{tail}")
}

pub fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
    )
    .unwrap()
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl Resp {
    /// The error code of an error body.
    pub fn code(&self) -> u64 {
        self.body["code"].as_u64().unwrap_or_else(|| panic!("no code in {self:?}"))
    }
}

/// A user with its keys and devices.
pub struct Person {
    pub id: String,
    pub keys: UserKeys,
    pub devices: Vec<(String, DeviceKeys)>,
}

impl Person {
    pub fn actor(&self, device: usize) -> Actor<'_> {
        Actor { user: &self.id, device: &self.devices[device].0 }
    }
    pub fn device(&self, device: usize) -> &DeviceKeys {
        &self.devices[device].1
    }
}

/// The status the broker gives to each refusal of the rules. `caller_known`: whether the
/// acting device is authorized (an unknown or revoked caller is 401).
pub fn status_of(e: &AccessError, caller_known: bool) -> u16 {
    match e {
        AccessError::UnknownDevice if !caller_known => 401,
        AccessError::UnknownUser
        | AccessError::UnknownDevice
        | AccessError::UnknownGroup
        | AccessError::UnknownDocument => 404,
        AccessError::Exists | AccessError::LastAdmin => 409,
        AccessError::NotAdmin | AccessError::Forbidden | AccessError::NoAccess => 403,
        AccessError::KeyMismatch(_)
        | AccessError::Certificate
        | AccessError::Id
        | AccessError::Document(_)
        | AccessError::KeyStatement
        | AccessError::KeyChanged => 400,
    }
}

/// The broker's answer agrees with the model's result.
pub fn agree<T>(what: &str, resp: &Resp, model: &Result<T, AccessError>, caller_known: bool) {
    match model {
        Ok(_) => assert!((200..300).contains(&resp.status), "{what}: the model accepted, {resp:?}"),
        Err(e) => {
            assert_eq!(
                (resp.status, resp.body["code"].as_u64()),
                (status_of(e, caller_known), Some(u64::from(e.code()))),
                "{what}: the model refused with {e:?}, the broker answered {resp:?}"
            );
            assert!(resp.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{resp:?}");
        }
    }
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap()
}

/// The user's signature of its own public keys as user `id` of [`TENANT`].
pub fn user_statement(keys: &UserKeys, id: &str) -> [u8; 64] {
    *SignedUserKeys::issue(keys, TENANT, id).signature()
}

/// Device `d` of `p` signs `public_key` as group `group`'s key of [`TENANT`], naming itself.
pub fn group_statement(
    p: &Person,
    d: usize,
    group: &str,
    public_key: keyhold_e2e::PublicKey,
) -> [u8; 64] {
    *SignedGroupKey::issue(p.device(d), TENANT, group, public_key, &p.id, &p.devices[d].0)
        .signature()
}

/// A broker, a tenant, and the model beside them.
pub struct World<'b> {
    pub b: &'b TestBroker,
    pub db: sqlx::AnyPool,
    pub rng: ChaCha20Rng,
    pub model: AccessState,
    /// The model's events so far, minus those the broker rightly does not record.
    pub expected: Vec<E2eEvent>,
    /// Each group's admins (the model does not show them).
    pub admins: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl<'b> World<'b> {
    /// Creates the tenant (no KMS configuration needed) and opens the database beside the
    /// broker, to read what it stored.
    pub async fn new(b: &'b TestBroker, db: &TestDb, seed: u64) -> Self {
        let (status, body) =
            b.post("/api/v1/tenants", json!({"id": TENANT, "vendor_key": false})).await;
        assert_eq!(status, 201, "{body}");
        sqlx::any::install_default_drivers();
        let pool =
            sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&db.url).await.unwrap();
        Self {
            b,
            db: pool,
            rng: ChaCha20Rng::seed_from_u64(seed),
            model: AccessState::new(TENANT),
            expected: Vec::new(),
            admins: Default::default(),
        }
    }

    fn sync_events(&mut self) {
        self.expected.extend(self.model.take_events());
    }

    /// A request with the vendor key.
    pub async fn vendor(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut r = self.b.http.request(method, self.b.url(path)).bearer_auth(VENDOR_KEY);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        Resp { status, body: r.json().await.unwrap_or(Value::Null) }
    }

    /// Sends a request with exactly these headers and body bytes.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Resp {
        let mut r = self.b.http.request(method, self.b.url(path));
        for (name, value) in headers {
            r = r.header(*name, value);
        }
        if !body.is_empty() {
            r = r.header("content-type", "application/json");
        }
        let r = r.body(body).send().await.unwrap();
        let status = r.status().as_u16();
        Resp { status, body: r.json().await.unwrap_or(Value::Null) }
    }

    /// A request signed by `keys` as device `device` of `user`, at `timestamp`.
    #[allow(clippy::too_many_arguments)]
    pub async fn signed_at(
        &self,
        keys: &DeviceKeys,
        user: &str,
        device: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timestamp: i64,
    ) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        let h = wire::sign_request(
            keys,
            TENANT,
            user,
            device,
            method.as_str(),
            path,
            timestamp,
            &bytes,
        );
        let headers = [
            (wire::USER_HEADER, h.user),
            (wire::DEVICE_HEADER, h.device),
            (wire::TIMESTAMP_HEADER, h.timestamp.to_string()),
            (wire::SIGNATURE_HEADER, h.signature),
        ];
        self.raw(method, path, &headers, bytes).await
    }

    /// A request signed by device `d` of `p`, now.
    pub async fn call(
        &self,
        p: &Person,
        d: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Resp {
        let (device, keys) = &p.devices[d];
        self.signed_at(keys, &p.id, device, method, path, body, unix_now()).await
    }

    /// Whether the broker will accept the caller (an authorized device, not revoked).
    fn caller_known(&self, p: &Person, d: usize) -> bool {
        self.model.device_revoked(&p.id, &p.devices[d].0) == Ok(false)
    }

    // ---- users and devices ----------------------------------------------------------------

    /// Creates a user through the vendor route, with a first device `laptop`.
    pub async fn user(&mut self, id: &str, passphrase: &str) -> Person {
        let keys = UserKeys::generate(&mut self.rng);
        let sealed =
            PassphraseSealedKey::seal(&keys, passphrase.as_bytes(), CHEAP, &mut self.rng).unwrap();
        self.create_user(id, sealed, user_statement(&keys, id)).await.unwrap();
        let mut p = Person { id: id.into(), keys, devices: vec![] };
        self.add_device(&mut p, "laptop").await;
        p
    }

    /// `POST /users` with the user's signature of its keys (`key_signature`), and the model's
    /// `create_user`. A refused user is not stored (unless it existed before); an accepted one
    /// is answered with its keys and signature, which verify.
    pub async fn create_user(
        &mut self,
        id: &str,
        sealed: PassphraseSealedKey,
        key_signature: [u8; 64],
    ) -> Result<(), AccessError> {
        let stored_before = self.stored_user(id).await;
        let body = to_json(&CreateUser {
            user: id.into(),
            sealed_keys: sealed.to_bytes(),
            key_signature: key_signature.to_vec(),
        });
        let resp = self.vendor(Method::POST, &route("/users"), Some(body)).await;
        let model = self.model.create_user(id, sealed.clone(), key_signature);
        agree("create user", &resp, &model, true);
        if model.is_ok() {
            assert_eq!(resp.status, 201);
            let view: UserKeysView = serde_json::from_value(resp.body).unwrap();
            let signed = self.model.signed_user_keys(id).unwrap();
            assert_eq!(to_json(&view), to_json(&UserKeysView::from(&signed)));
            assert_eq!(view.signed(id).unwrap().verify(TENANT), Ok(()));
        } else {
            assert_eq!(self.stored_user(id).await, stored_before, "a refused user: {id:?}");
        }
        self.sync_events();
        model
    }

    /// The user's row as stored: `(signing key, key signature)`, base64 as in the table.
    pub async fn stored_user(&self, id: &str) -> Option<(String, String)> {
        sqlx::query(
            "SELECT signing_key, key_signature FROM e2e_users \
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(TENANT)
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .unwrap()
        .map(|r| (r.try_get("signing_key").unwrap(), r.try_get("key_signature").unwrap()))
    }

    /// What a user's new device does: certify it with the user's keys and make the transform
    /// key user → device; the vendor's backend authorizes it.
    pub async fn add_device(&mut self, p: &mut Person, name: &str) {
        let device = DeviceKeys::generate(&mut self.rng);
        let cert = DeviceCertificate::issue(&p.keys, &p.id, name, device.public());
        let tk =
            pre::transform_key(p.keys.encryption_key(), &device.public().encryption, &mut self.rng);
        self.authorize(&p.id.clone(), cert, tk).await.unwrap();
        p.devices.push((name.into(), device));
    }

    /// `POST /users/{user}/devices`, and the model's `authorize_device`.
    pub async fn authorize(
        &mut self,
        user: &str,
        cert: DeviceCertificate,
        tk: TransformKey,
    ) -> Result<(), AccessError> {
        let body = to_json(&AuthorizeDevice {
            certificate: CertificateView::from(&cert),
            transform_key: tk.to_bytes(),
        });
        let resp = self
            .vendor(Method::POST, &route(&format!("/users/{}/devices", seg(user))), Some(body))
            .await;
        let model = self.model.authorize_device(cert.clone(), tk);
        agree("authorize device", &resp, &model, true);
        if model.is_ok() {
            assert_eq!(resp.status, 201);
            assert_eq!(resp.body, to_json(&CertificateView::from(&cert)));
        }
        self.sync_events();
        model
    }

    /// `GET /users/{user}/sealed-keys` (vendor).
    pub async fn sealed_user_keys(&self, user: &str) -> Result<PassphraseSealedKey, AccessError> {
        let resp = self
            .vendor(Method::GET, &route(&format!("/users/{}/sealed-keys", seg(user))), None)
            .await;
        let model = self.model.sealed_user_keys(user).cloned();
        agree("sealed keys", &resp, &model, true);
        let sealed: SealedKeys = match model {
            Ok(_) => serde_json::from_value(resp.body).unwrap(),
            Err(e) => return Err(e),
        };
        Ok(PassphraseSealedKey::from_bytes(&sealed.sealed_keys).unwrap())
    }

    /// `GET /users/{user}` by device `d` of `p`: the user's public keys, signed by the user
    /// (checked as a device checks them, and against the model).
    pub async fn user_keys(
        &self,
        p: &Person,
        d: usize,
        user: &str,
    ) -> Result<keyhold_e2e::keys::UserPublicKeys, AccessError> {
        Ok(self.signed_user_keys(p, d, user).await?.keys)
    }

    /// `GET /users/{user}` by device `d` of `p`, as [`SignedUserKeys`] that verify.
    pub async fn signed_user_keys(
        &self,
        p: &Person,
        d: usize,
        user: &str,
    ) -> Result<SignedUserKeys, AccessError> {
        let resp =
            self.call(p, d, Method::GET, &route(&format!("/users/{}", seg(user))), None).await;
        let model = self.model.signed_user_keys(user);
        agree("user keys", &resp, &model, true);
        let model = model?;
        let view: UserKeysView = serde_json::from_value(resp.body).unwrap();
        let signed = view.signed(user).unwrap();
        assert_eq!(signed.verify(TENANT), Ok(()), "{user}'s keys as served");
        assert_eq!(signed, model);
        Ok(signed)
    }

    /// `GET /users/{user}/devices/{device}` by device `d` of `p`.
    pub async fn certificate(
        &self,
        p: &Person,
        d: usize,
        user: &str,
        device: &str,
    ) -> Result<DeviceCertificate, AccessError> {
        let path = route(&format!("/users/{}/devices/{}", seg(user), seg(device)));
        let resp = self.call(p, d, Method::GET, &path, None).await;
        let model = self.model.device_certificate(user, device).cloned();
        agree("certificate", &resp, &model, true);
        let model = model?;
        let view: CertificateView = serde_json::from_value(resp.body).unwrap();
        assert_eq!(to_json(&view), to_json(&CertificateView::from(&model)));
        Ok(DeviceCertificate::try_from(&view).unwrap())
    }

    /// `DELETE /users/{p}/devices/{device}` by device `d` of `p`.
    pub async fn revoke_device(
        &mut self,
        p: &Person,
        d: usize,
        device: &str,
    ) -> Result<(), AccessError> {
        let known = self.caller_known(p, d);
        let path = route(&format!("/users/{}/devices/{}", seg(&p.id), seg(device)));
        let resp = self.call(p, d, Method::DELETE, &path, None).await;
        let model = self.model.revoke_device(p.actor(d), device);
        agree("revoke device", &resp, &model, known);
        self.sync_events();
        model
    }

    // ---- groups ----------------------------------------------------------------------------

    /// A group created by `admin`'s first device, `admin` a member too.
    pub async fn group(&mut self, admin: &Person, id: &str) {
        let group_key = PrivateKey::generate(&mut self.rng);
        let sealed =
            KeySealedToPublicKey::seal(&group_key, &admin.keys.public().encryption, &mut self.rng)
                .unwrap();
        let membership =
            pre::transform_key(&group_key, &admin.keys.public().encryption, &mut self.rng);
        self.create_group(admin, 0, id, group_key.public_key(), sealed, Some(membership))
            .await
            .unwrap();
    }

    /// `POST /groups` with the key signed by the calling device, and the model's
    /// `create_group`.
    pub async fn create_group(
        &mut self,
        p: &Person,
        d: usize,
        id: &str,
        public_key: keyhold_e2e::PublicKey,
        sealed: KeySealedToPublicKey,
        membership: Option<TransformKey>,
    ) -> Result<(), AccessError> {
        let key_signature = group_statement(p, d, id, public_key);
        self.create_group_signed(p, d, id, public_key, sealed, membership, key_signature).await
    }

    /// `POST /groups` with this `key_signature`, and the model's `create_group`. A refused
    /// group is not stored (unless it existed before).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_group_signed(
        &mut self,
        p: &Person,
        d: usize,
        id: &str,
        public_key: keyhold_e2e::PublicKey,
        sealed: KeySealedToPublicKey,
        membership: Option<TransformKey>,
        key_signature: [u8; 64],
    ) -> Result<(), AccessError> {
        let stored_before = self.stored_group_key(id).await;
        let body = to_json(&CreateGroup {
            group: id.into(),
            public_key: public_key.to_bytes().to_vec(),
            sealed_for_creator: sealed.to_bytes(),
            creator_membership: membership.as_ref().map(TransformKey::to_bytes),
            key_signature: key_signature.to_vec(),
        });
        let resp = self.call(p, d, Method::POST, &route("/groups"), Some(&body)).await;
        let model =
            self.model.create_group(p.actor(d), id, public_key, sealed, membership, key_signature);
        agree("create group", &resp, &model, self.caller_known(p, d));
        if model.is_ok() {
            self.admins.insert(id.to_owned(), [p.id.clone()].into());
            assert_eq!(resp.status, 201);
            assert_eq!(resp.body, self.group_view(id));
        } else {
            assert_eq!(self.stored_group_key(id).await, stored_before, "a refused group: {id:?}");
        }
        self.sync_events();
        model
    }

    /// The group's row as stored: `(public key, creator user, creator device, key signature)`,
    /// as in the table.
    pub async fn stored_group_key(&self, id: &str) -> Option<(String, String, String, String)> {
        sqlx::query(
            "SELECT public_key, creator_user, creator_device, key_signature FROM e2e_groups \
             WHERE tenant_id = $1 AND group_id = $2",
        )
        .bind(TENANT)
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .unwrap()
        .map(|r| {
            (
                r.try_get("public_key").unwrap(),
                r.try_get("creator_user").unwrap(),
                r.try_get("creator_device").unwrap(),
                r.try_get("key_signature").unwrap(),
            )
        })
    }

    /// The model's view of a group, as the broker shows it: with the creating device's
    /// certificate and its signature of the group's key.
    pub fn group_view(&self, id: &str) -> Value {
        let signed = self.model.signed_group_key(id).unwrap();
        let creator =
            self.model.device_certificate(&signed.creator_user, &signed.creator_device).unwrap();
        to_json(&GroupView {
            group: id.into(),
            public_key: self.model.group_public_key(id).unwrap().to_bytes().to_vec(),
            members: self.model.group_members(id).unwrap().into_iter().map(str::to_owned).collect(),
            admins: self.admins_of(id),
            creator: Some(CertificateView::from(creator)),
            key_signature: signed.signature().to_vec(),
        })
    }

    fn admins_of(&self, id: &str) -> Vec<String> {
        // The model keeps its admins to itself: the world follows them.
        self.admins.get(id).map(|a| a.iter().cloned().collect()).unwrap_or_default()
    }

    /// `GET /groups/{group}` by device `d` of `p`; checked against the model (public key,
    /// members, creator and signature), its key checked as a device checks it (the creator's
    /// certificate with the creator's user keys read from the broker, then the signature), and
    /// returned.
    pub async fn get_group(
        &self,
        p: &Person,
        d: usize,
        id: &str,
    ) -> Result<GroupView, AccessError> {
        let resp =
            self.call(p, d, Method::GET, &route(&format!("/groups/{}", seg(id))), None).await;
        let model = self.model.group_public_key(id);
        agree("get group", &resp, &model, true);
        let key = model?;
        let view: GroupView = serde_json::from_value(resp.body.clone()).unwrap();
        assert_eq!(view.public_key, key.to_bytes().to_vec());
        let members: Vec<String> =
            self.model.group_members(id).unwrap().into_iter().map(str::to_owned).collect();
        assert_eq!(view.members, members);
        assert_eq!(view.admins, self.admins_of(id));
        assert_eq!(resp.body, self.group_view(id));
        self.verify_group(p, d, &view).await.unwrap();
        Ok(view)
    }

    /// What a device does with a group it reads: the creator's user keys from the broker (which
    /// verify), then the creator's certificate and its signature of the group's key.
    pub async fn verify_group(
        &self,
        p: &Person,
        d: usize,
        view: &GroupView,
    ) -> Result<SignedGroupKey, AccessError> {
        let (signed, creator) = view.signed_key().map_err(|_| AccessError::KeyStatement)?;
        assert_eq!(signed.group, view.group);
        let creator_user = self.signed_user_keys(p, d, &signed.creator_user).await?;
        signed.verify(TENANT, &creator, &creator_user.keys.signing)?;
        Ok(signed)
    }

    /// `GET /groups/{group}/key` by device `d` of `p`: the group key sealed to the admin,
    /// transformed to the device; byte for byte what the model hands out.
    pub async fn group_key_for_admin(
        &mut self,
        p: &Person,
        d: usize,
        group: &str,
    ) -> Result<KeySealedToPublicKey, AccessError> {
        let known = self.caller_known(p, d);
        let resp = self
            .call(p, d, Method::GET, &route(&format!("/groups/{}/key", seg(group))), None)
            .await;
        let model = self.model.group_key_for_admin(p.actor(d), group);
        agree("group key", &resp, &model, known);
        self.sync_events();
        let model = model?;
        let key: GroupKey = serde_json::from_value(resp.body).unwrap();
        assert_eq!(key.sealed_group_key, model.to_bytes());
        Ok(KeySealedToPublicKey::from_bytes(&key.sealed_group_key).unwrap())
    }

    /// An admin's first device fetches the group key, opens it and uploads a transform key
    /// group → member.
    pub async fn add_member(
        &mut self,
        admin: &Person,
        group: &str,
        member: &Person,
    ) -> Result<(), AccessError> {
        let sealed = self.group_key_for_admin(admin, 0, group).await?;
        let group_key = sealed.open(admin.device(0).encryption_key()).unwrap();
        let tk = pre::transform_key(&group_key, &member.keys.public().encryption, &mut self.rng);
        self.put_member(admin, 0, group, &member.id, tk).await
    }

    /// `PUT /groups/{group}/members/{user}`.
    pub async fn put_member(
        &mut self,
        p: &Person,
        d: usize,
        group: &str,
        user: &str,
        tk: TransformKey,
    ) -> Result<(), AccessError> {
        let body = to_json(&AddMember { transform_key: tk.to_bytes() });
        let path = route(&format!("/groups/{}/members/{}", seg(group), seg(user)));
        let resp = self.call(p, d, Method::PUT, &path, Some(&body)).await;
        let model = self.model.add_member(p.actor(d), group, user, tk);
        agree("add member", &resp, &model, self.caller_known(p, d));
        if model.is_ok() {
            assert_eq!(resp.status, 204);
        }
        self.sync_events();
        model
    }

    /// `DELETE /groups/{group}/members/{user}`.
    pub async fn remove_member(
        &mut self,
        p: &Person,
        d: usize,
        group: &str,
        user: &str,
    ) -> Result<(), AccessError> {
        let path = route(&format!("/groups/{}/members/{}", seg(group), seg(user)));
        let resp = self.call(p, d, Method::DELETE, &path, None).await;
        let model = self.model.remove_member(p.actor(d), group, user);
        agree("remove member", &resp, &model, self.caller_known(p, d));
        self.sync_events();
        model
    }

    /// `PUT /groups/{group}/admins/{user}`.
    pub async fn add_admin(
        &mut self,
        p: &Person,
        d: usize,
        group: &str,
        user: &str,
        sealed: KeySealedToPublicKey,
    ) -> Result<(), AccessError> {
        let body = to_json(&AddAdmin { sealed_group_key: sealed.to_bytes() });
        let path = route(&format!("/groups/{}/admins/{}", seg(group), seg(user)));
        let resp = self.call(p, d, Method::PUT, &path, Some(&body)).await;
        let model = self.model.add_admin(p.actor(d), group, user, sealed);
        agree("add admin", &resp, &model, self.caller_known(p, d));
        if model.is_ok() {
            self.admins.entry(group.to_owned()).or_default().insert(user.to_owned());
        }
        self.sync_events();
        model
    }

    /// `DELETE /groups/{group}/admins/{user}`.
    pub async fn remove_admin(
        &mut self,
        p: &Person,
        d: usize,
        group: &str,
        user: &str,
    ) -> Result<(), AccessError> {
        let path = route(&format!("/groups/{}/admins/{}", seg(group), seg(user)));
        let resp = self.call(p, d, Method::DELETE, &path, None).await;
        let model = self.model.remove_admin(p.actor(d), group, user);
        agree("remove admin", &resp, &model, self.caller_known(p, d));
        if model.is_ok() {
            self.admins.entry(group.to_owned()).or_default().remove(user);
        }
        self.sync_events();
        model
    }

    // ---- documents -------------------------------------------------------------------------

    /// The public key of a recipient, as a device reads it from the broker.
    pub async fn recipient_key(&self, p: &Person, r: &Recipient) -> keyhold_e2e::PublicKey {
        match r {
            Recipient::Group(g) => {
                let view = self.get_group(p, 0, g).await.unwrap();
                keyhold_e2e::PublicKey::from_bytes(&view.public_key).unwrap()
            }
            Recipient::User(u) => self.user_keys(p, 0, u).await.unwrap().encryption,
        }
    }

    /// Encrypts on `author`'s first device to `to` (keys read from the broker) and stores it.
    pub async fn encrypt(
        &mut self,
        author: &Person,
        doc: &str,
        body: &[u8],
        to: &[Recipient],
    ) -> EncryptedDocument {
        self.encrypt_from(author, 0, doc, body, to).await
    }

    /// Encrypts on `author`'s device `d` to `to` (keys read from the broker) and stores it.
    pub async fn encrypt_from(
        &mut self,
        author: &Person,
        d: usize,
        doc: &str,
        body: &[u8],
        to: &[Recipient],
    ) -> EncryptedDocument {
        let mut recipients = Vec::new();
        for r in to {
            recipients.push((r.clone(), self.recipient_key(author, r).await));
        }
        let (document, grants) =
            keyhold_e2e::document::encrypt(doc, body, author.device(d), &recipients, &mut self.rng)
                .unwrap();
        self.create_document(author, d, document.clone(), grants).await.unwrap();
        document
    }

    /// `POST /documents` with these bytes (possibly altered or malformed), and the model's
    /// `create_document` with what they parse to.
    pub async fn create_document_bytes(
        &mut self,
        p: &Person,
        d: usize,
        document: Vec<u8>,
        grants: Vec<Vec<u8>>,
    ) -> (Resp, Result<(), AccessError>) {
        let body = to_json(&CreateDocument { document: document.clone(), grants: grants.clone() });
        let resp = self.call(p, d, Method::POST, &route("/documents"), Some(&body)).await;
        let parsed =
            EncryptedDocument::from_bytes(&document).map_err(AccessError::from).and_then(|doc| {
                let grants = grants
                    .iter()
                    .map(|g| Grant::from_bytes(g).map_err(AccessError::from))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((doc, grants))
            });
        let model = match parsed {
            Ok((doc, grants)) => {
                let id = doc.id().to_owned();
                let model = self.model.create_document(p.actor(d), doc, grants);
                if model.is_ok() {
                    assert_eq!((resp.status, &resp.body), (201, &json!({"document": id})));
                }
                model
            }
            Err(e) => Err(e),
        };
        agree("create document", &resp, &model, self.caller_known(p, d));
        self.sync_events();
        (resp, model)
    }

    /// `POST /documents`, and the model's `create_document`.
    pub async fn create_document(
        &mut self,
        p: &Person,
        d: usize,
        document: EncryptedDocument,
        grants: Vec<Grant>,
    ) -> Result<(), AccessError> {
        let bytes: Vec<Vec<u8>> = grants.iter().map(Grant::to_bytes).collect();
        self.create_document_bytes(p, d, document.to_bytes(), bytes).await.1
    }

    /// `POST /documents/{document}/grants`.
    pub async fn grant(&mut self, p: &Person, d: usize, grant: Grant) -> Result<(), AccessError> {
        let body = to_json(&AddGrant { grant: grant.to_bytes() });
        let path = route(&format!("/documents/{}/grants", seg(grant.document_id())));
        let resp = self.call(p, d, Method::POST, &path, Some(&body)).await;
        let model = self.model.grant(p.actor(d), grant);
        agree("grant", &resp, &model, self.caller_known(p, d));
        self.sync_events();
        model
    }

    /// `DELETE /documents/{document}/grants/{kind}/{id}`.
    pub async fn revoke(
        &mut self,
        p: &Person,
        d: usize,
        doc: &str,
        r: &Recipient,
    ) -> Result<(), AccessError> {
        let (kind, id) = match r {
            Recipient::Group(g) => ("group", g),
            Recipient::User(u) => ("user", u),
        };
        let path = route(&format!("/documents/{}/grants/{}/{}", seg(doc), seg(kind), seg(id)));
        let resp = self.call(p, d, Method::DELETE, &path, None).await;
        let model = self.model.revoke(p.actor(d), doc, r);
        agree("revoke", &resp, &model, self.caller_known(p, d));
        self.sync_events();
        model
    }

    /// `POST /documents/{document}/decrypt` by device `d` of `p`: the answer is exactly the
    /// model's (document, author, transformed value, group), and the device opens it.
    pub async fn decrypt(
        &mut self,
        p: &Person,
        d: usize,
        doc: &str,
    ) -> (Resp, Result<DecryptGrant, AccessError>) {
        let known = self.caller_known(p, d);
        let resp = self
            .call(p, d, Method::POST, &route(&format!("/documents/{}/decrypt", seg(doc))), None)
            .await;
        let model = self.model.decrypt(p.actor(d), doc);
        agree("decrypt", &resp, &model, known);
        let mut events = self.model.take_events();
        if !known {
            // The broker cannot attribute a request it cannot authenticate: it answers 401 and
            // records nothing; the model (which trusts its actor) records a refusal.
            assert_eq!(events.pop().map(|e| e.action), Some(E2eAction::DocumentDecryptDenied));
        }
        self.expected.extend(events);
        let grant = match model {
            Ok(grant) => {
                assert_eq!(resp.status, 200);
                assert_eq!(resp.body, to_json(&DecryptResponse::from(&grant)));
                let answer: DecryptResponse = serde_json::from_value(resp.body.clone()).unwrap();
                let grant = DecryptGrant::try_from(&answer).unwrap();
                // The author's keys come signed by the author's user.
                assert_eq!(grant.author_user.user, grant.author.user);
                assert_eq!(grant.author_user.verify(TENANT), Ok(()), "{resp:?}");
                Ok(grant)
            }
            Err(e) => Err(e),
        };
        (resp, grant)
    }

    /// A decrypt by device `d` of `p`, opened on the device.
    pub async fn read(&mut self, p: &Person, d: usize, doc: &str) -> Result<Vec<u8>, AccessError> {
        let (_, grant) = self.decrypt(p, d, doc).await;
        let grant = grant?;
        let (plain, _author) = grant.open(p.device(d))?;
        Ok(plain.to_vec())
    }

    // ---- what the broker stored --------------------------------------------------------------

    /// The stored documents' bytes, by id.
    pub async fn stored_documents(&self) -> Vec<(String, Vec<u8>)> {
        let rows = sqlx::query("SELECT document_id, bytes FROM e2e_documents WHERE tenant_id = $1")
            .bind(TENANT)
            .fetch_all(&self.db)
            .await
            .unwrap();
        let mut docs: Vec<(String, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                let text: String = r.try_get("bytes").unwrap();
                (
                    r.try_get("document_id").unwrap(),
                    base64::engine::general_purpose::STANDARD.decode(text).unwrap(),
                )
            })
            .collect();
        docs.sort();
        docs
    }

    /// The model's documents, by id (what the broker should hold).
    pub fn model_documents(&self) -> Vec<(String, Vec<u8>)> {
        let mut docs: Vec<(String, Vec<u8>)> = self
            .model
            .server_material()
            .documents
            .iter()
            .map(|d| (d.id().to_owned(), d.to_bytes()))
            .collect();
        docs.sort();
        docs
    }

    /// The broker's E2E events of the tenant: `(id, actor, action, detail)` by id.
    pub async fn stored_events(&self) -> Vec<(i64, String, String, Value)> {
        let rows = sqlx::query(
            "SELECT id, actor, action, detail FROM e2e_events WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(TENANT)
        .fetch_all(&self.db)
        .await
        .unwrap();
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail").unwrap();
                (
                    r.try_get("id").unwrap(),
                    r.try_get("actor").unwrap(),
                    r.try_get("action").unwrap(),
                    serde_json::from_str(&detail).unwrap(),
                )
            })
            .collect()
    }

    /// The broker recorded exactly the model's events, in order, each with its action and
    /// actor in their columns.
    pub async fn assert_events(&self) {
        let stored = self.stored_events().await;
        let details: Vec<&Value> = stored.iter().map(|(_, _, _, d)| d).collect();
        let expected: Vec<Value> = self.expected.iter().map(to_json).collect();
        assert_eq!(
            details,
            expected.iter().collect::<Vec<_>>(),
            "the broker's events differ from the model's"
        );
        for window in stored.windows(2) {
            assert!(window[0].0 < window[1].0, "ids increase");
        }
        for (_, actor, action, detail) in &stored {
            assert_eq!(Some(action.as_str()), detail["action"].as_str());
            let expected_actor =
                match (detail["actor_user"].as_str(), detail["actor_device"].as_str()) {
                    (Some(u), Some(d)) => format!("{u}/{d}"),
                    _ => "vendor".to_owned(),
                };
            assert_eq!(actor, &expected_actor);
        }
    }
}
