//! The rules of [`keyhold_e2e::AccessState`], over the database: the same checks in the same
//! order, the same errors, the same events. Each mutation is one transaction that first takes
//! its event id (which serialises E2E writers), checks, writes the rows and its events, and
//! commits; a refused request stores nothing. Reads that record an event (a decrypt, a group
//! key fetched by an admin) write it in a short transaction of its own before answering.
//!
//! The caller's device was authenticated before ([`super::auth`]); the mutations check again,
//! inside their transaction, that it is still authorized (a revocation may have committed in
//! between), as `AccessState` checks its actor in every operation.

use std::collections::BTreeMap;

use keyhold_e2e::access::check_member_transform;
use keyhold_e2e::document::MAX_ID_LEN;
use keyhold_e2e::pre::{self, PublicKey, TransformKey};
use keyhold_e2e::wire::{
    AddAdmin, AddGrant, AddMember, AuthorizeDevice, CertificateView, CreateDocument, CreateGroup,
    CreateUser, DecryptResponse, GroupKey, GroupView, SealedKeys, UserKeysView,
};
use keyhold_e2e::{
    AccessError, Actor, DeviceCertificate, E2eAction, E2eEvent, EncryptedDocument, Grant,
    KeySealedToPublicKey, PassphraseSealedKey, Recipient, SignedGroupKey, SignedUserKeys,
};
use sqlx::{Any, AnyConnection, Transaction};

use super::auth::Caller;
use super::db::{self, AccessPath, DocumentAuthor};
use super::error::{E2eError, E2eResult};
use crate::store::Store;

/// Largest document accepted (its bytes, [`EncryptedDocument::to_bytes`]): 64 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// What an event names besides its actor.
#[derive(Default)]
struct On<'a> {
    user: Option<&'a str>,
    device: Option<&'a str>,
    group: Option<&'a str>,
    document: Option<&'a str>,
}

/// The event `AccessState` records for `action` by `actor` (`None`: the vendor's backend).
fn event(action: E2eAction, actor: Option<Actor<'_>>, on: On<'_>) -> E2eEvent {
    E2eEvent {
        action,
        actor_user: actor.map(|a| a.user.to_owned()),
        actor_device: actor.map(|a| a.device.to_owned()),
        user: on.user.map(str::to_owned),
        device: on.device.map(str::to_owned),
        group: on.group.map(str::to_owned),
        document: on.document.map(str::to_owned),
    }
}

/// `AccessState`'s id rule: 1..=256 bytes, no control characters.
fn check_id(id: &str) -> Result<(), AccessError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        Err(AccessError::Id)
    } else {
        Ok(())
    }
}

/// A recipient as stored: `(kind, id)`.
pub(crate) fn recipient_parts(recipient: &Recipient) -> (&'static str, &str) {
    match recipient {
        Recipient::Group(id) => ("group", id),
        Recipient::User(id) => ("user", id),
    }
}

/// Runs CPU-heavy work (pairings, signatures over large documents) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> E2eResult<T> + Send + 'static,
) -> E2eResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| E2eError::corrupt("worker", format!("task failed: {e}")))?
}

/// An open mutation: its transaction and its first event id.
struct Mutation {
    tx: Transaction<'static, Any>,
    event_id: i64,
}

impl Mutation {
    async fn begin(store: &Store) -> E2eResult<Self> {
        let mut tx = store.begin_write().await?;
        let event_id = db::next_event_id(&mut tx).await?;
        Ok(Self { tx, event_id })
    }

    /// The caller's device is still authorized (401, code 1102 if it was revoked meanwhile).
    async fn require_caller(&mut self, tenant: &str, caller: &Caller) -> E2eResult<()> {
        match db::active_device(&mut self.tx, tenant, &caller.user, &caller.device).await? {
            Some(_) => Ok(()),
            None => Err(E2eError::UnknownCaller),
        }
    }

    /// Writes the events (the first with the id taken at the start) and commits.
    async fn commit(mut self, tenant: &str, events: &[E2eEvent]) -> E2eResult<()> {
        for (i, event) in events.iter().enumerate() {
            let id = if i == 0 { self.event_id } else { db::next_event_id(&mut self.tx).await? };
            db::write_event(&mut self.tx, id, tenant, event).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// Records one event in a transaction of its own.
async fn record(store: &Store, tenant: &str, event: &E2eEvent) -> E2eResult<()> {
    Mutation::begin(store).await?.commit(tenant, std::slice::from_ref(event)).await
}

// ---- users and devices (vendor) -------------------------------------------------------------

/// A 64-byte signature field.
fn signature(bytes: &[u8], field: &'static str) -> E2eResult<[u8; 64]> {
    bytes
        .try_into()
        .map_err(|_| E2eError::malformed(field, format!("{} bytes, not 64", bytes.len())))
}

/// `POST /users`: the vendor's backend creates a user with its passphrase-sealed keys and the
/// user's signature of its public keys.
pub(crate) async fn create_user(
    store: &Store,
    tenant: &str,
    request: CreateUser,
) -> E2eResult<UserKeysView> {
    let sealed = PassphraseSealedKey::from_bytes(&request.sealed_keys)
        .map_err(|e| E2eError::malformed("sealed_keys", e))?;
    let key_signature = signature(&request.key_signature, "key_signature")?;
    check_id(&request.user)?;
    let public = *sealed.public();
    let signed = SignedUserKeys::from_parts(request.user.clone(), public, key_signature);
    // Checked before the transaction (it takes no row), reported in the model's order.
    let statement = signed.verify(tenant);
    let mut m = Mutation::begin(store).await?;
    if db::user_keys(&mut m.tx, tenant, &request.user).await?.is_some() {
        return Err(AccessError::Exists.into());
    }
    statement?;
    db::insert_user(&mut m.tx, tenant, &request.user, &public, &key_signature, &sealed.to_bytes())
        .await?;
    let created =
        event(E2eAction::UserCreate, None, On { user: Some(&request.user), ..On::default() });
    m.commit(tenant, &[created]).await?;
    Ok(UserKeysView::from(&signed))
}

/// `GET /users/{user}/sealed-keys`.
pub(crate) async fn sealed_keys(store: &Store, tenant: &str, user: &str) -> E2eResult<SealedKeys> {
    let mut conn = store.pool().acquire().await?;
    let sealed_keys =
        db::sealed_user_keys(&mut conn, tenant, user).await?.ok_or(AccessError::UnknownUser)?;
    Ok(SealedKeys { sealed_keys })
}

/// `POST /users/{user}/devices`: authorizes a device with its certificate (signed by the user)
/// and the transform key user → device.
pub(crate) async fn authorize_device(
    store: &Store,
    tenant: &str,
    user: &str,
    request: AuthorizeDevice,
) -> E2eResult<CertificateView> {
    let certificate = DeviceCertificate::try_from(&request.certificate)
        .map_err(|e| E2eError::malformed("certificate", e))?;
    let transform = TransformKey::from_bytes(&request.transform_key)
        .map_err(|e| E2eError::malformed("transform_key", e))?;
    if certificate.user != user {
        return Err(AccessError::KeyMismatch("the certificate is for another user").into());
    }
    check_id(&certificate.device)?;
    let mut m = Mutation::begin(store).await?;
    let keys = db::user_keys(&mut m.tx, tenant, user).await?.ok_or(AccessError::UnknownUser)?;
    certificate.verify(&keys.signing)?;
    if transform.from_key() != &keys.encryption {
        return Err(AccessError::KeyMismatch("transform key is not from the user's key").into());
    }
    if transform.to_key() != &certificate.keys.encryption {
        return Err(AccessError::KeyMismatch("transform key is not to the device's key").into());
    }
    if db::device(&mut m.tx, tenant, user, &certificate.device).await?.is_some() {
        return Err(AccessError::Exists.into());
    }
    db::insert_device(&mut m.tx, tenant, &certificate, &transform).await?;
    let authorized = event(
        E2eAction::DeviceAuthorize,
        None,
        On { user: Some(user), device: Some(&certificate.device), ..On::default() },
    );
    m.commit(tenant, &[authorized]).await?;
    Ok(CertificateView::from(&certificate))
}

// ---- users and devices (devices) ------------------------------------------------------------

/// `GET /users/{user}`: a user's public keys and the user's signature of them (empty for a
/// user stored before keys were signed).
pub(crate) async fn user_keys(store: &Store, tenant: &str, user: &str) -> E2eResult<UserKeysView> {
    let mut conn = store.pool().acquire().await?;
    let keys =
        db::stored_user_keys(&mut conn, tenant, user).await?.ok_or(AccessError::UnknownUser)?;
    Ok(keys.view())
}

/// `GET /users/{user}/devices/{device}`: a device's certificate.
pub(crate) async fn certificate(
    store: &Store,
    tenant: &str,
    user: &str,
    device: &str,
) -> E2eResult<CertificateView> {
    let mut conn = store.pool().acquire().await?;
    let stored =
        db::device(&mut conn, tenant, user, device).await?.ok_or(AccessError::UnknownDevice)?;
    Ok(CertificateView::from(&stored.certificate))
}

/// `DELETE /users/{user}/devices/{device}`: a device revokes one of its own user's devices
/// (itself included); its transform key is erased, its certificate kept.
pub(crate) async fn revoke_device(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    user: &str,
    device: &str,
) -> E2eResult<()> {
    if user != caller.user {
        return Err(AccessError::Forbidden.into());
    }
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    if !db::revoke_device(&mut m.tx, tenant, user, device).await? {
        return Err(AccessError::UnknownDevice.into());
    }
    let revoked = event(
        E2eAction::DeviceRevoke,
        Some(caller.actor()),
        On { user: Some(&caller.user), device: Some(device), ..On::default() },
    );
    m.commit(tenant, &[revoked]).await
}

// ---- groups -----------------------------------------------------------------------------------

/// `POST /groups`: a group administered by the caller's user (and, with `creator_membership`,
/// with it as a member).
pub(crate) async fn create_group(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    request: CreateGroup,
) -> E2eResult<GroupView> {
    let public_key = PublicKey::from_bytes(&request.public_key)
        .map_err(|e| E2eError::malformed("public_key", e))?;
    let sealed = KeySealedToPublicKey::from_bytes(&request.sealed_for_creator)
        .map_err(|e| E2eError::malformed("sealed_for_creator", e))?;
    let membership = request
        .creator_membership
        .as_deref()
        .map(TransformKey::from_bytes)
        .transpose()
        .map_err(|e| E2eError::malformed("creator_membership", e))?;
    let key_signature = signature(&request.key_signature, "key_signature")?;
    let group = request.group.as_str();
    check_id(group)?;
    // The calling device signed the group's key (its certificate does not change; a revoked
    // caller is refused below): checked before the transaction, reported in the model's order.
    let signed = SignedGroupKey::from_parts(
        group.to_owned(),
        public_key,
        caller.user.clone(),
        caller.device.clone(),
        key_signature,
    );
    let statement = signed.verify_with(tenant, &caller.stored.certificate.keys.signing);
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    if db::group_key(&mut m.tx, tenant, group).await?.is_some() {
        return Err(AccessError::Exists.into());
    }
    statement?;
    if sealed.public_key() != &public_key {
        return Err(AccessError::KeyMismatch("sealed key is not the group's").into());
    }
    let creator =
        db::user_keys(&mut m.tx, tenant, &caller.user).await?.ok_or(AccessError::UnknownUser)?;
    if let Some(tk) = &membership {
        check_member_transform(&public_key, &creator.encryption, tk)?;
    }
    db::insert_group(&mut m.tx, tenant, &signed).await?;
    db::insert_admin(&mut m.tx, tenant, group, &caller.user, &sealed).await?;
    let mut events = vec![event(
        E2eAction::GroupCreate,
        Some(caller.actor()),
        On { group: Some(group), ..On::default() },
    )];
    let mut members = Vec::new();
    if let Some(tk) = &membership {
        db::insert_member(&mut m.tx, tenant, group, &caller.user, tk).await?;
        events.push(event(
            E2eAction::MemberAdd,
            Some(caller.actor()),
            On { group: Some(group), user: Some(&caller.user), ..On::default() },
        ));
        members.push(caller.user.clone());
    }
    m.commit(tenant, &events).await?;
    Ok(GroupView {
        group: group.to_owned(),
        public_key: public_key.to_bytes().to_vec(),
        members,
        admins: vec![caller.user.clone()],
        creator: Some(CertificateView::from(&caller.stored.certificate)),
        key_signature: key_signature.to_vec(),
    })
}

/// `GET /groups/{group}`: its public key, members and admins (sorted), and the key's signature
/// by the device that created the group with that device's certificate, revoked or not (no
/// creator and an empty signature for a group stored before groups' keys were signed).
pub(crate) async fn group(store: &Store, tenant: &str, group: &str) -> E2eResult<GroupView> {
    let mut conn = store.pool().acquire().await?;
    let stored = db::group(&mut conn, tenant, group).await?.ok_or(AccessError::UnknownGroup)?;
    let (creator, key_signature) = match &stored.signed {
        Some(signed) => {
            let device =
                db::device(&mut conn, tenant, &signed.creator_user, &signed.creator_device)
                    .await?
                    .ok_or_else(|| E2eError::corrupt("group creator", "no such device"))?;
            (Some(CertificateView::from(&device.certificate)), signed.signature().to_vec())
        }
        None => (None, Vec::new()),
    };
    Ok(GroupView {
        group: group.to_owned(),
        public_key: stored.public_key.to_bytes().to_vec(),
        members: db::members(&mut conn, tenant, group).await?,
        admins: db::admins(&mut conn, tenant, group).await?,
        creator,
        key_signature,
    })
}

/// The group's public key, if the caller's user is one of its admins (`AccessState`'s
/// `admin_group`: unknown group first, then not an admin).
async fn admin_group(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    caller: &Caller,
    group: &str,
) -> E2eResult<PublicKey> {
    let public_key = db::group_key(conn, tenant, group).await?.ok_or(AccessError::UnknownGroup)?;
    if !db::is_admin(conn, tenant, group, &caller.user).await? {
        return Err(AccessError::NotAdmin.into());
    }
    Ok(public_key)
}

/// `PUT /groups/{group}/members/{user}`: an admin adds a member with a transform key
/// group → user. Documents already encrypted to the group become readable by it at once.
pub(crate) async fn add_member(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    group: &str,
    user: &str,
    request: AddMember,
) -> E2eResult<()> {
    let transform = TransformKey::from_bytes(&request.transform_key)
        .map_err(|e| E2eError::malformed("transform_key", e))?;
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    let member = db::user_keys(&mut m.tx, tenant, user).await?.ok_or(AccessError::UnknownUser)?;
    let public_key = admin_group(&mut m.tx, tenant, caller, group).await?;
    check_member_transform(&public_key, &member.encryption, &transform)?;
    if db::is_member(&mut m.tx, tenant, group, user).await? {
        return Err(AccessError::Exists.into());
    }
    db::insert_member(&mut m.tx, tenant, group, user, &transform).await?;
    let added = event(
        E2eAction::MemberAdd,
        Some(caller.actor()),
        On { group: Some(group), user: Some(user), ..On::default() },
    );
    m.commit(tenant, &[added]).await
}

/// `DELETE /groups/{group}/members/{user}`: an admin removes a member, or a member leaves.
pub(crate) async fn remove_member(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    group: &str,
    user: &str,
) -> E2eResult<()> {
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    if db::group_key(&mut m.tx, tenant, group).await?.is_none() {
        return Err(AccessError::UnknownGroup.into());
    }
    if caller.user != user && !db::is_admin(&mut m.tx, tenant, group, &caller.user).await? {
        return Err(AccessError::NotAdmin.into());
    }
    if !db::delete_member(&mut m.tx, tenant, group, user).await? {
        return Err(AccessError::UnknownUser.into());
    }
    let removed = event(
        E2eAction::MemberRemove,
        Some(caller.actor()),
        On { group: Some(group), user: Some(user), ..On::default() },
    );
    m.commit(tenant, &[removed]).await
}

/// `PUT /groups/{group}/admins/{user}`: an admin makes another user an admin (the group key
/// sealed to that user).
pub(crate) async fn add_admin(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    group: &str,
    user: &str,
    request: AddAdmin,
) -> E2eResult<()> {
    let sealed = KeySealedToPublicKey::from_bytes(&request.sealed_group_key)
        .map_err(|e| E2eError::malformed("sealed_group_key", e))?;
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    if db::user_keys(&mut m.tx, tenant, user).await?.is_none() {
        return Err(AccessError::UnknownUser.into());
    }
    let public_key = admin_group(&mut m.tx, tenant, caller, group).await?;
    if sealed.public_key() != &public_key {
        return Err(AccessError::KeyMismatch("sealed key is not the group's").into());
    }
    if db::is_admin(&mut m.tx, tenant, group, user).await? {
        return Err(AccessError::Exists.into());
    }
    db::insert_admin(&mut m.tx, tenant, group, user, &sealed).await?;
    let added = event(
        E2eAction::AdminAdd,
        Some(caller.actor()),
        On { group: Some(group), user: Some(user), ..On::default() },
    );
    m.commit(tenant, &[added]).await
}

/// `DELETE /groups/{group}/admins/{user}`: an admin removes an admin (itself included), never
/// the last one.
pub(crate) async fn remove_admin(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    group: &str,
    user: &str,
) -> E2eResult<()> {
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    admin_group(&mut m.tx, tenant, caller, group).await?;
    let admins = db::admins(&mut m.tx, tenant, group).await?;
    if !admins.iter().any(|a| a == user) {
        return Err(AccessError::UnknownUser.into());
    }
    if admins.len() == 1 {
        return Err(AccessError::LastAdmin.into());
    }
    db::delete_admin(&mut m.tx, tenant, group, user).await?;
    let removed = event(
        E2eAction::AdminRemove,
        Some(caller.actor()),
        On { group: Some(group), user: Some(user), ..On::default() },
    );
    m.commit(tenant, &[removed]).await
}

/// `GET /groups/{group}/key`: the group's private key sealed to the calling admin, its value
/// transformed admin → calling device. Recorded (`e2e.group.key_access`) before it is answered.
pub(crate) async fn group_key(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    group: &str,
) -> E2eResult<GroupKey> {
    let to_device = caller.stored.transform()?;
    let sealed = {
        let mut conn = store.pool().acquire().await?;
        if db::group_key(&mut conn, tenant, group).await?.is_none() {
            return Err(AccessError::UnknownGroup.into());
        }
        db::sealed_group_key(&mut conn, tenant, group, &caller.user)
            .await?
            .ok_or(AccessError::NotAdmin)?
    };
    let sealed = blocking(move || {
        let value = pre::transform(sealed.value(), &to_device)
            .map_err(|_| AccessError::KeyMismatch("transform"))?;
        Ok(sealed.with_value(value))
    })
    .await?;
    let accessed = event(
        E2eAction::GroupKeyAccess,
        Some(caller.actor()),
        On { group: Some(group), ..On::default() },
    );
    record(store, tenant, &accessed).await?;
    Ok(GroupKey { sealed_group_key: sealed.to_bytes() })
}

// ---- documents --------------------------------------------------------------------------------

/// `AccessState`'s grant check: for this document, signed by the calling device, the signature
/// verifies, the recipient exists.
async fn check_grant(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    caller: &Caller,
    document: &str,
    grant: &Grant,
) -> E2eResult<()> {
    if grant.document_id() != document {
        return Err(AccessError::KeyMismatch("grant is for another document").into());
    }
    if grant.granted_by() != &caller.stored.certificate.keys.signing {
        return Err(AccessError::KeyMismatch("grant is not signed by the calling device").into());
    }
    grant.verify().map_err(AccessError::from)?;
    match grant.recipient() {
        Recipient::Group(g) => {
            db::group_key(conn, tenant, g).await?.ok_or(AccessError::UnknownGroup)?;
        }
        Recipient::User(u) => {
            db::user_keys(conn, tenant, u).await?.ok_or(AccessError::UnknownUser)?;
        }
    }
    Ok(())
}

/// `POST /documents`: stores a document written (and signed) by the calling device, with its
/// first grants (each signed by the same device). Returns its id.
pub(crate) async fn create_document(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    request: CreateDocument,
) -> E2eResult<String> {
    if request.document.len() > MAX_DOCUMENT_BYTES {
        return Err(E2eError::TooLarge { limit: MAX_DOCUMENT_BYTES });
    }
    let author_key = caller.stored.certificate.keys.signing;
    let (document, grants, bytes) = blocking(move || {
        let CreateDocument { document: bytes, grants } = request;
        let document = EncryptedDocument::from_bytes(&bytes).map_err(AccessError::from)?;
        let grants = grants
            .iter()
            .map(|g| Grant::from_bytes(g).map_err(AccessError::from))
            .collect::<Result<Vec<_>, _>>()?;
        if document.author() != &author_key {
            return Err(
                AccessError::KeyMismatch("document is not signed by the calling device").into()
            );
        }
        document.verify().map_err(AccessError::from)?;
        if !document.is_committed() {
            return Err(AccessError::from(keyhold_e2e::DocumentError::Uncommitted).into());
        }
        Ok((document, grants, bytes))
    })
    .await?;
    let id = document.id().to_owned();
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    if db::document_author(&mut m.tx, tenant, &id).await?.is_some() {
        return Err(AccessError::Exists.into());
    }
    let mut by_recipient = BTreeMap::new();
    for grant in grants {
        check_grant(&mut m.tx, tenant, caller, &id, &grant).await?;
        by_recipient.insert(grant.recipient().clone(), grant);
    }
    let author = DocumentAuthor { user: caller.user.clone(), device: caller.device.clone() };
    db::insert_document(&mut m.tx, tenant, &id, &author, &bytes).await?;
    for (recipient, grant) in &by_recipient {
        let (kind, recipient) = recipient_parts(recipient);
        db::put_grant(&mut m.tx, tenant, &id, kind, recipient, &grant.to_bytes()).await?;
    }
    let created = event(
        E2eAction::DocumentCreate,
        Some(caller.actor()),
        On { document: Some(&id), ..On::default() },
    );
    m.commit(tenant, &[created]).await?;
    Ok(id)
}

/// `POST /documents/{document}/grants`: grants the document to one more group or user. Only
/// a device that can read it can make the grant, and only a user with access may store it.
pub(crate) async fn add_grant(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    document: &str,
    request: AddGrant,
) -> E2eResult<()> {
    let grant = Grant::from_bytes(&request.grant).map_err(AccessError::from)?;
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    if db::document_author(&mut m.tx, tenant, document).await?.is_none() {
        return Err(AccessError::UnknownDocument.into());
    }
    check_grant(&mut m.tx, tenant, caller, document, &grant).await?;
    if db::access_path(&mut m.tx, tenant, document, &caller.user).await?.is_none() {
        return Err(AccessError::NoAccess.into());
    }
    let (kind, recipient) = recipient_parts(grant.recipient());
    // Replacing a recipient's grant is for those who may revoke it (as the model says).
    if db::grant_exists(&mut m.tx, tenant, document, kind, recipient).await?
        && !may_revoke(&mut m.tx, tenant, caller, document, grant.recipient()).await?
    {
        return Err(AccessError::Exists.into());
    }
    db::put_grant(&mut m.tx, tenant, document, kind, recipient, &grant.to_bytes()).await?;
    let mut on = On { document: Some(document), ..On::default() };
    match grant.recipient() {
        Recipient::Group(g) => on.group = Some(g),
        Recipient::User(u) => on.user = Some(u),
    }
    m.commit(tenant, &[event(E2eAction::DocumentGrant, Some(caller.actor()), on)]).await
}

/// Whether the caller may delete (or replace) `recipient`'s grant of the document: the
/// document's author's user, and for a group's grant the group's admins.
async fn may_revoke(
    conn: &mut AnyConnection,
    tenant: &str,
    caller: &Caller,
    document: &str,
    recipient: &Recipient,
) -> E2eResult<bool> {
    let author =
        db::document_author(conn, tenant, document).await?.ok_or(AccessError::UnknownDocument)?;
    Ok(author.user == caller.user
        || match recipient {
            Recipient::Group(g) => db::is_admin(conn, tenant, g, &caller.user).await?,
            Recipient::User(_) => false,
        })
}

/// `DELETE /documents/{document}/grants/{kind}/{id}`: deletes a grant. Allowed to the document's
/// author's user and, for a group's grant, the group's admins.
pub(crate) async fn revoke_grant(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    document: &str,
    recipient: &Recipient,
) -> E2eResult<()> {
    let mut m = Mutation::begin(store).await?;
    m.require_caller(tenant, caller).await?;
    if !may_revoke(&mut m.tx, tenant, caller, document, recipient).await? {
        return Err(AccessError::Forbidden.into());
    }
    let (kind, id) = recipient_parts(recipient);
    if !db::delete_grant(&mut m.tx, tenant, document, kind, id).await? {
        return Err(AccessError::NoAccess.into());
    }
    let mut on = On { document: Some(document), ..On::default() };
    match recipient {
        Recipient::Group(g) => on.group = Some(g),
        Recipient::User(u) => on.user = Some(u),
    }
    m.commit(tenant, &[event(E2eAction::DocumentRevoke, Some(caller.actor()), on)]).await
}

/// `POST /documents/{document}/decrypt`: the document key transformed to the calling device,
/// through its user's own grant or a group it is a member of. Recorded (`e2e.document.decrypt`,
/// or `e2e.document.decrypt_denied` when refused) before it is answered.
pub(crate) async fn decrypt(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    document: &str,
) -> E2eResult<DecryptResponse> {
    let result = decrypt_inner(store, tenant, caller, document).await;
    let on = On { document: Some(document), ..On::default() };
    let recorded = match &result {
        Ok(response) => event(
            E2eAction::DocumentDecrypt,
            Some(caller.actor()),
            On { group: response.via_group.as_deref(), ..on },
        ),
        Err(E2eError::Access(_)) => {
            event(E2eAction::DocumentDecryptDenied, Some(caller.actor()), on)
        }
        // The broker failed: nothing was decided, nothing is recorded.
        Err(_) => return result,
    };
    record(store, tenant, &recorded).await?;
    result
}

async fn decrypt_inner(
    store: &Store,
    tenant: &str,
    caller: &Caller,
    document: &str,
) -> E2eResult<DecryptResponse> {
    let to_device = caller.stored.transform()?;
    let mut conn = store.pool().acquire().await?;
    let author = db::document_author(&mut conn, tenant, document)
        .await?
        .ok_or(AccessError::UnknownDocument)?;
    let path = db::access_path(&mut conn, tenant, document, &caller.user)
        .await?
        .ok_or(AccessError::NoAccess)?;
    let (grant, via) = match path {
        AccessPath::Direct { grant } => (grant, None),
        AccessPath::Group { group, grant, member_transform } => {
            (grant, Some((group, member_transform)))
        }
    };
    let (value, via_group) = blocking(move || {
        let grant = Grant::from_bytes(&grant).map_err(|e| E2eError::corrupt("grant", e))?;
        let mut value = grant.value().clone();
        let mut via_group = None;
        if let Some((group, member_transform)) = via {
            let to_user = TransformKey::from_bytes(&member_transform)
                .map_err(|e| E2eError::corrupt("member transform key", e))?;
            value =
                pre::transform(&value, &to_user).map_err(|_| AccessError::KeyMismatch("hops"))?;
            via_group = Some(group);
        }
        let value =
            pre::transform(&value, &to_device).map_err(|_| AccessError::KeyMismatch("hops"))?;
        Ok((value, via_group))
    })
    .await?;
    // A revoked author device keeps its certificate: what it wrote before still verifies, and
    // the reader is told it was revoked since.
    let author_device = db::device(&mut conn, tenant, &author.user, &author.device)
        .await?
        .ok_or(AccessError::UnknownDevice)?;
    let author_user = db::stored_user_keys(&mut conn, tenant, &author.user)
        .await?
        .ok_or(AccessError::UnknownUser)?;
    let bytes = db::document_bytes(&mut conn, tenant, document)
        .await?
        .ok_or(AccessError::UnknownDocument)?;
    Ok(DecryptResponse {
        // As stored: byte for byte what its author sent.
        document: bytes,
        author: CertificateView::from(&author_device.certificate),
        author_revoked: author_device.revoked,
        author_user: author_user.view(),
        value: value.to_bytes(),
        via_group,
    })
}
