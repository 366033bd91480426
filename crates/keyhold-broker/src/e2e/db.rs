//! The E2E tables (migrations 0006 and 0008): reading and writing rows, binary values as
//! standard base64 text. No rule is decided here; [`super::service`] decides.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyhold_e2e::keys::UserPublicKeys;
use keyhold_e2e::pre::{PublicKey, TransformKey};
use keyhold_e2e::wire::{CertificateView, UserKeysView};
use keyhold_e2e::{
    DeviceCertificate, E2eEvent, KeySealedToPublicKey, SignedGroupKey, VerifyingKey,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use super::error::E2eError;

pub(super) fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn decode(text: &str, what: &str) -> Result<Vec<u8>, E2eError> {
    STANDARD.decode(text).map_err(|e| E2eError::corrupt(what, e))
}

fn column(row: &AnyRow, name: &str) -> Result<Vec<u8>, E2eError> {
    decode(&row.try_get::<String, _>(name)?, name)
}

/// A key statement's signature (migration 0008): `None` for '', a row stored before keys were
/// signed; otherwise 64 bytes.
fn signature_column(row: &AnyRow, name: &str) -> Result<Option<[u8; 64]>, E2eError> {
    let text = row.try_get::<String, _>(name)?;
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = decode(&text, name)?;
    <[u8; 64]>::try_from(bytes.as_slice())
        .map(Some)
        .map_err(|_| E2eError::corrupt(name, format!("{} bytes, not 64", bytes.len())))
}

/// The next event id, in an open transaction. The row lock it takes serialises E2E writers
/// until commit (see migration 0006), so ids become visible in increasing order.
pub(super) async fn next_event_id(conn: &mut AnyConnection) -> Result<i64, E2eError> {
    let row = sqlx::query(
        "UPDATE counters SET value = value + 1 WHERE name = 'e2e_event' RETURNING value",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get::<i64, _>("value")?)
}

/// `<user>/<device>` for a device, `vendor` for the vendor's backend.
pub(super) fn actor_of(event: &E2eEvent) -> String {
    match (&event.actor_user, &event.actor_device) {
        (Some(user), Some(device)) => format!("{user}/{device}"),
        _ => crate::api::VENDOR_ACTOR.to_owned(),
    }
}

/// Writes an event with id `id` (the caller commits).
pub(super) async fn write_event(
    conn: &mut AnyConnection,
    id: i64,
    tenant: &str,
    event: &E2eEvent,
) -> Result<(), E2eError> {
    let action = serde_json::to_value(event.action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .ok_or_else(|| E2eError::corrupt("event", "action does not serialize"))?;
    let detail = serde_json::to_string(event).map_err(|e| E2eError::corrupt("event", e))?;
    sqlx::query(
        "INSERT INTO e2e_events (id, tenant_id, at, actor, action, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(tenant)
    .bind(crate::store::now())
    .bind(actor_of(event))
    .bind(action)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether the tenant exists and is active.
pub(super) async fn tenant_is_active(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<bool, E2eError> {
    let row = sqlx::query("SELECT status FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<String, _>("status")? == "active",
        None => false,
    })
}

// ---- users --------------------------------------------------------------------------------

/// A user's public keys and the user's signature of them, as stored.
#[derive(Debug, Clone)]
pub(super) struct StoredUserKeys {
    pub(super) keys: UserPublicKeys,
    /// The user's signature ([`keyhold_e2e::SignedUserKeys`]); `None` for a user stored before
    /// migration 0008, whose keys devices refuse.
    pub(super) key_signature: Option<[u8; 64]>,
}

impl StoredUserKeys {
    /// As `GET /users/{user}` shows them (an empty signature for an unsigned user).
    pub(super) fn view(&self) -> UserKeysView {
        UserKeysView {
            encryption_key: self.keys.encryption.to_bytes().to_vec(),
            signing_key: self.keys.signing.as_bytes().to_vec(),
            key_signature: self.key_signature.map(|s| s.to_vec()).unwrap_or_default(),
        }
    }
}

/// A user's public keys with the user's signature of them.
pub(super) async fn stored_user_keys(
    conn: &mut AnyConnection,
    tenant: &str,
    user: &str,
) -> Result<Option<StoredUserKeys>, E2eError> {
    let row = sqlx::query(
        "SELECT encryption_key, signing_key, key_signature FROM e2e_users \
         WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let encryption = PublicKey::from_bytes(&column(&row, "encryption_key")?)
        .map_err(|e| E2eError::corrupt("user encryption key", e))?;
    let signing = <[u8; 32]>::try_from(column(&row, "signing_key")?.as_slice())
        .ok()
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| E2eError::corrupt("user signing key", "not an Ed25519 public key"))?;
    Ok(Some(StoredUserKeys {
        keys: UserPublicKeys { encryption, signing },
        key_signature: signature_column(&row, "key_signature")?,
    }))
}

/// A user's public keys.
pub(super) async fn user_keys(
    conn: &mut AnyConnection,
    tenant: &str,
    user: &str,
) -> Result<Option<UserPublicKeys>, E2eError> {
    Ok(stored_user_keys(conn, tenant, user).await?.map(|u| u.keys))
}

/// A user's passphrase-sealed keys, as stored.
pub(super) async fn sealed_user_keys(
    conn: &mut AnyConnection,
    tenant: &str,
    user: &str,
) -> Result<Option<Vec<u8>>, E2eError> {
    let row =
        sqlx::query("SELECT sealed_keys FROM e2e_users WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|r| column(&r, "sealed_keys")).transpose()
}

pub(super) async fn insert_user(
    conn: &mut AnyConnection,
    tenant: &str,
    user: &str,
    public: &UserPublicKeys,
    key_signature: &[u8; 64],
    sealed_keys: &[u8],
) -> Result<(), E2eError> {
    sqlx::query(
        "INSERT INTO e2e_users (tenant_id, user_id, encryption_key, signing_key, key_signature, \
         sealed_keys, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(user)
    .bind(encode(&public.encryption.to_bytes()))
    .bind(encode(public.signing.as_bytes()))
    .bind(encode(key_signature))
    .bind(encode(sealed_keys))
    .bind(crate::store::now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---- devices ------------------------------------------------------------------------------

/// A device: its certificate and its transform key user → device (erased once revoked).
#[derive(Debug, Clone)]
pub(crate) struct StoredDevice {
    /// The certificate (signed by the user).
    pub(crate) certificate: DeviceCertificate,
    /// Revoked: no transform key any more; it may not call, nothing reaches it.
    pub(crate) revoked: bool,
    transform_key: Vec<u8>,
}

impl StoredDevice {
    /// The transform key user → device.
    pub(crate) fn transform(&self) -> Result<TransformKey, E2eError> {
        TransformKey::from_bytes(&self.transform_key)
            .map_err(|e| E2eError::corrupt("device transform key", e))
    }
}

pub(super) async fn device(
    conn: &mut AnyConnection,
    tenant: &str,
    user: &str,
    device: &str,
) -> Result<Option<StoredDevice>, E2eError> {
    let row = sqlx::query(
        "SELECT encryption_key, signing_key, certificate_signature, transform_key, revoked_at \
         FROM e2e_devices WHERE tenant_id = $1 AND user_id = $2 AND device_id = $3",
    )
    .bind(tenant)
    .bind(user)
    .bind(device)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let view = CertificateView {
        user: user.to_owned(),
        device: device.to_owned(),
        encryption_key: column(&row, "encryption_key")?,
        signing_key: column(&row, "signing_key")?,
        signature: column(&row, "certificate_signature")?,
    };
    let certificate =
        DeviceCertificate::try_from(&view).map_err(|e| E2eError::corrupt("certificate", e))?;
    let revoked = row.try_get::<Option<String>, _>("revoked_at")?.is_some();
    let transform_key = if revoked { Vec::new() } else { column(&row, "transform_key")? };
    Ok(Some(StoredDevice { certificate, revoked, transform_key }))
}

/// An authorized device that is not revoked.
pub(super) async fn active_device(
    conn: &mut AnyConnection,
    tenant: &str,
    user: &str,
    device_id: &str,
) -> Result<Option<StoredDevice>, E2eError> {
    Ok(device(conn, tenant, user, device_id).await?.filter(|d| !d.revoked))
}

pub(super) async fn insert_device(
    conn: &mut AnyConnection,
    tenant: &str,
    certificate: &DeviceCertificate,
    transform: &TransformKey,
) -> Result<(), E2eError> {
    sqlx::query(
        "INSERT INTO e2e_devices (tenant_id, user_id, device_id, encryption_key, signing_key, \
         certificate_signature, transform_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant)
    .bind(&certificate.user)
    .bind(&certificate.device)
    .bind(encode(&certificate.keys.encryption.to_bytes()))
    .bind(encode(certificate.keys.signing.as_bytes()))
    .bind(encode(certificate.signature()))
    .bind(encode(&transform.to_bytes()))
    .bind(crate::store::now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Revokes a device: erases its transform key, keeps its certificate; whether there was an
/// unrevoked one.
pub(super) async fn revoke_device(
    conn: &mut AnyConnection,
    tenant: &str,
    user: &str,
    device: &str,
) -> Result<bool, E2eError> {
    let done = sqlx::query(
        "UPDATE e2e_devices SET transform_key = '', revoked_at = $4 \
         WHERE tenant_id = $1 AND user_id = $2 AND device_id = $3 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(user)
    .bind(device)
    .bind(crate::store::now())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

// ---- groups -------------------------------------------------------------------------------

pub(super) async fn group_key(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
) -> Result<Option<PublicKey>, E2eError> {
    Ok(self::group(conn, tenant, group).await?.map(|g| g.public_key))
}

/// A group's public key and, unless it was stored before migration 0008, the key signed by the
/// device that created it.
#[derive(Debug, Clone)]
pub(super) struct StoredGroup {
    pub(super) public_key: PublicKey,
    /// `None` for a group stored before groups' keys were signed (devices refuse its key).
    pub(super) signed: Option<SignedGroupKey>,
}

pub(super) async fn group(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
) -> Result<Option<StoredGroup>, E2eError> {
    let row = sqlx::query(
        "SELECT public_key, creator_user, creator_device, key_signature FROM e2e_groups \
         WHERE tenant_id = $1 AND group_id = $2",
    )
    .bind(tenant)
    .bind(group)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let public_key = PublicKey::from_bytes(&column(&row, "public_key")?)
        .map_err(|e| E2eError::corrupt("group key", e))?;
    let creator_user: String = row.try_get("creator_user")?;
    let signed = if creator_user.is_empty() {
        None
    } else {
        let signature = signature_column(&row, "key_signature")?
            .ok_or_else(|| E2eError::corrupt("group key signature", "missing"))?;
        Some(SignedGroupKey::from_parts(
            group.to_owned(),
            public_key,
            creator_user,
            row.try_get("creator_device")?,
            signature,
        ))
    };
    Ok(Some(StoredGroup { public_key, signed }))
}

/// Stores a group: its key as signed by the creating device.
pub(super) async fn insert_group(
    conn: &mut AnyConnection,
    tenant: &str,
    signed: &SignedGroupKey,
) -> Result<(), E2eError> {
    sqlx::query(
        "INSERT INTO e2e_groups (tenant_id, group_id, public_key, creator_user, creator_device, \
         key_signature, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(&signed.group)
    .bind(encode(&signed.public_key.to_bytes()))
    .bind(&signed.creator_user)
    .bind(&signed.creator_device)
    .bind(encode(signed.signature()))
    .bind(crate::store::now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The ids of a group's admins or members (`table` is one of the two tables), sorted by bytes.
async fn group_users(
    conn: &mut AnyConnection,
    table: &'static str,
    tenant: &str,
    group: &str,
) -> Result<Vec<String>, E2eError> {
    let rows =
        sqlx::query(&format!("SELECT user_id FROM {table} WHERE tenant_id = $1 AND group_id = $2"))
            .bind(tenant)
            .bind(group)
            .fetch_all(&mut *conn)
            .await?;
    let mut ids =
        rows.iter().map(|r| r.try_get::<String, _>("user_id")).collect::<Result<Vec<_>, _>>()?;
    // Byte order (as AccessState's BTreeMap), whatever the database's collation.
    ids.sort_unstable();
    Ok(ids)
}

pub(super) async fn admins(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
) -> Result<Vec<String>, E2eError> {
    group_users(conn, "e2e_group_admins", tenant, group).await
}

pub(super) async fn members(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
) -> Result<Vec<String>, E2eError> {
    group_users(conn, "e2e_group_members", tenant, group).await
}

/// The group key sealed to `user`, if `user` is an admin.
pub(super) async fn sealed_group_key(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    user: &str,
) -> Result<Option<KeySealedToPublicKey>, E2eError> {
    let row = sqlx::query(
        "SELECT sealed_group_key FROM e2e_group_admins \
         WHERE tenant_id = $1 AND group_id = $2 AND user_id = $3",
    )
    .bind(tenant)
    .bind(group)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    KeySealedToPublicKey::from_bytes(&column(&row, "sealed_group_key")?)
        .map(Some)
        .map_err(|e| E2eError::corrupt("sealed group key", e))
}

/// Whether `user` is an admin of `group` (false if there is no such group).
pub(super) async fn is_admin(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    user: &str,
) -> Result<bool, E2eError> {
    let row = sqlx::query(
        "SELECT user_id FROM e2e_group_admins WHERE tenant_id = $1 AND group_id = $2 AND user_id = $3",
    )
    .bind(tenant)
    .bind(group)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

/// Whether `user` is a member of `group`.
pub(super) async fn is_member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    user: &str,
) -> Result<bool, E2eError> {
    let row = sqlx::query(
        "SELECT user_id FROM e2e_group_members WHERE tenant_id = $1 AND group_id = $2 AND user_id = $3",
    )
    .bind(tenant)
    .bind(group)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

pub(super) async fn insert_admin(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    user: &str,
    sealed: &KeySealedToPublicKey,
) -> Result<(), E2eError> {
    sqlx::query(
        "INSERT INTO e2e_group_admins (tenant_id, group_id, user_id, sealed_group_key) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant)
    .bind(group)
    .bind(user)
    .bind(encode(&sealed.to_bytes()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn insert_member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    user: &str,
    transform: &TransformKey,
) -> Result<(), E2eError> {
    sqlx::query(
        "INSERT INTO e2e_group_members (tenant_id, group_id, user_id, transform_key) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant)
    .bind(group)
    .bind(user)
    .bind(encode(&transform.to_bytes()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes an admin or member row (`table` is one of the two tables); whether there was one.
async fn delete_group_user(
    conn: &mut AnyConnection,
    table: &'static str,
    tenant: &str,
    group: &str,
    user: &str,
) -> Result<bool, E2eError> {
    let done = sqlx::query(&format!(
        "DELETE FROM {table} WHERE tenant_id = $1 AND group_id = $2 AND user_id = $3"
    ))
    .bind(tenant)
    .bind(group)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn delete_admin(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    user: &str,
) -> Result<bool, E2eError> {
    delete_group_user(conn, "e2e_group_admins", tenant, group, user).await
}

pub(super) async fn delete_member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    user: &str,
) -> Result<bool, E2eError> {
    delete_group_user(conn, "e2e_group_members", tenant, group, user).await
}

// ---- documents and grants -----------------------------------------------------------------

/// Who wrote a stored document.
#[derive(Debug, Clone)]
pub(super) struct DocumentAuthor {
    pub(super) user: String,
    pub(super) device: String,
}

pub(super) async fn document_author(
    conn: &mut AnyConnection,
    tenant: &str,
    document: &str,
) -> Result<Option<DocumentAuthor>, E2eError> {
    let row = sqlx::query(
        "SELECT author_user, author_device FROM e2e_documents WHERE tenant_id = $1 AND document_id = $2",
    )
    .bind(tenant)
    .bind(document)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(DocumentAuthor { user: r.try_get("author_user")?, device: r.try_get("author_device")? })
    })
    .transpose()
}

/// The document's bytes, as its author stored them.
pub(super) async fn document_bytes(
    conn: &mut AnyConnection,
    tenant: &str,
    document: &str,
) -> Result<Option<Vec<u8>>, E2eError> {
    let row =
        sqlx::query("SELECT bytes FROM e2e_documents WHERE tenant_id = $1 AND document_id = $2")
            .bind(tenant)
            .bind(document)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|r| column(&r, "bytes")).transpose()
}

pub(super) async fn insert_document(
    conn: &mut AnyConnection,
    tenant: &str,
    document: &str,
    author: &DocumentAuthor,
    bytes: &[u8],
) -> Result<(), E2eError> {
    sqlx::query(
        "INSERT INTO e2e_documents (tenant_id, document_id, author_user, author_device, bytes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(document)
    .bind(&author.user)
    .bind(&author.device)
    .bind(encode(bytes))
    .bind(crate::store::now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores a grant, replacing the recipient's previous one.
pub(super) async fn put_grant(
    conn: &mut AnyConnection,
    tenant: &str,
    document: &str,
    kind: &str,
    recipient: &str,
    bytes: &[u8],
) -> Result<(), E2eError> {
    delete_grant(conn, tenant, document, kind, recipient).await?;
    sqlx::query(
        "INSERT INTO e2e_grants (tenant_id, document_id, recipient_kind, recipient_id, bytes) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(document)
    .bind(kind)
    .bind(recipient)
    .bind(encode(bytes))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether the recipient has a grant of the document.
pub(super) async fn grant_exists(
    conn: &mut AnyConnection,
    tenant: &str,
    document: &str,
    kind: &str,
    recipient: &str,
) -> Result<bool, E2eError> {
    let row = sqlx::query(
        "SELECT 1 AS one FROM e2e_grants WHERE tenant_id = $1 AND document_id = $2 \
         AND recipient_kind = $3 AND recipient_id = $4",
    )
    .bind(tenant)
    .bind(document)
    .bind(kind)
    .bind(recipient)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

/// Deletes a grant; whether there was one.
pub(super) async fn delete_grant(
    conn: &mut AnyConnection,
    tenant: &str,
    document: &str,
    kind: &str,
    recipient: &str,
) -> Result<bool, E2eError> {
    let done = sqlx::query(
        "DELETE FROM e2e_grants WHERE tenant_id = $1 AND document_id = $2 \
         AND recipient_kind = $3 AND recipient_id = $4",
    )
    .bind(tenant)
    .bind(document)
    .bind(kind)
    .bind(recipient)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// How a user reaches a document: its own grant, or a grant to a group it is a member of
/// (with the transform key group → user).
#[derive(Debug)]
pub(super) enum AccessPath {
    /// A grant to the user.
    Direct { grant: Vec<u8> },
    /// A grant to a group the user is a member of.
    Group { group: String, grant: Vec<u8>, member_transform: Vec<u8> },
}

/// The user's path to the document, chosen as `AccessState` chooses it: the user's own grant,
/// else the grant of the first group (by id, in byte order) the user is a member of.
pub(super) async fn access_path(
    conn: &mut AnyConnection,
    tenant: &str,
    document: &str,
    user: &str,
) -> Result<Option<AccessPath>, E2eError> {
    let direct = sqlx::query(
        "SELECT bytes FROM e2e_grants WHERE tenant_id = $1 AND document_id = $2 \
         AND recipient_kind = 'user' AND recipient_id = $3",
    )
    .bind(tenant)
    .bind(document)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = direct {
        return Ok(Some(AccessPath::Direct { grant: column(&row, "bytes")? }));
    }
    let rows = sqlx::query(
        "SELECT g.recipient_id AS group_id, g.bytes AS bytes, m.transform_key AS transform_key \
         FROM e2e_grants g JOIN e2e_group_members m \
           ON m.tenant_id = g.tenant_id AND m.group_id = g.recipient_id \
         WHERE g.tenant_id = $1 AND g.document_id = $2 AND g.recipient_kind = 'group' \
           AND m.user_id = $3",
    )
    .bind(tenant)
    .bind(document)
    .bind(user)
    .fetch_all(&mut *conn)
    .await?;
    let mut first: Option<&AnyRow> = None;
    let mut first_id = String::new();
    for row in &rows {
        let id: String = row.try_get("group_id")?;
        if first.is_none() || id < first_id {
            first = Some(row);
            first_id = id;
        }
    }
    first
        .map(|row| {
            Ok(AccessPath::Group {
                group: first_id.clone(),
                grant: column(row, "bytes")?,
                member_transform: column(row, "transform_key")?,
            })
        })
        .transpose()
}
