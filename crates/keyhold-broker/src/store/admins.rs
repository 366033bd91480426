//! Tenant admins (created by accepting an invitation) and their sessions.
//!
//! Secrets here: the invitation and session tokens are stored only as their SHA-256; the
//! password only as an argon2id PHC string (hashed by the caller, [`crate::credentials`]); the
//! TOTP secret as is (base32), since checking a code needs it.

use base64::Engine as _;
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::{Store, hex_sha256, now};
use crate::error::StoreError;

/// What accepting an invitation created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedInvitation {
    /// The new admin's id.
    pub admin_id: i64,
    /// The tenant the admin manages.
    pub tenant: String,
    /// The admin's e-mail address (lower-case): the login name.
    pub email: String,
}

/// A tenant admin as listed: who, since when, and whether they may sign in (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AdminView {
    /// The admin's id.
    pub admin_id: i64,
    /// The tenant.
    pub tenant: String,
    /// The e-mail address (lower-case): the login name.
    pub email: String,
    /// When the admin accepted their invitation, RFC 3339 UTC.
    pub created_at: String,
    /// A disabled admin cannot sign in and has no session.
    pub disabled: bool,
}

fn admin_view_row(row: &AnyRow) -> Result<AdminView, StoreError> {
    Ok(AdminView {
        admin_id: row.try_get("id")?,
        tenant: row.try_get("tenant_id")?,
        email: row.try_get("email")?,
        created_at: row.try_get("created_at")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
    })
}

/// Where an invitation stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InvitationState {
    /// Not yet accepted, not expired, not revoked: its link still works.
    Pending,
    /// Accepted: the admin exists.
    Used,
    /// Past its expiry without being accepted.
    Expired,
    /// Withdrawn before anyone accepted it.
    Revoked,
}

/// An invitation as listed (never its token, which only its recipient has).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct InvitationView {
    /// The invited address.
    pub email: String,
    /// When it was made, RFC 3339 UTC.
    pub created_at: String,
    /// Its expiry, RFC 3339 UTC.
    pub expires_at: String,
    /// Where it stands.
    pub state: InvitationState,
}

fn invitation_view_row(row: &AnyRow, now: OffsetDateTime) -> Result<InvitationView, StoreError> {
    let expires_at: String = row.try_get("expires_at")?;
    let state = if row.try_get::<Option<String>, _>("used_at")?.is_some() {
        InvitationState::Used
    } else if row.try_get::<Option<String>, _>("revoked_at")?.is_some() {
        InvitationState::Revoked
    } else if parse_time(&expires_at)? <= now {
        InvitationState::Expired
    } else {
        InvitationState::Pending
    };
    Ok(InvitationView {
        email: row.try_get("email")?,
        created_at: row.try_get("created_at")?,
        expires_at,
        state,
    })
}

/// An admin as the login needs it.
pub struct AdminLogin {
    /// The admin's id.
    pub id: i64,
    /// The tenant.
    pub tenant: String,
    /// The e-mail address (lower-case).
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: Zeroizing<String>,
    /// Base32 TOTP secret.
    pub totp_secret: Zeroizing<String>,
    /// The last TOTP step accepted (a code is accepted once).
    pub totp_last_step: i64,
    /// A disabled admin cannot sign in.
    pub disabled: bool,
}

impl core::fmt::Debug for AdminLogin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AdminLogin")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("email", &self.email)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A session just created: the token goes in the cookie and is not stored.
pub struct NewSession {
    /// The cookie value (base64url of 32 random bytes).
    pub token: Zeroizing<String>,
    /// The CSRF token mutating requests must send in `X-CSRF-Token`.
    pub csrf_token: String,
    /// Expiry, RFC 3339 UTC.
    pub expires_at: String,
}

impl core::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NewSession").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

/// A live session, found by its token.
#[derive(Clone)]
pub struct SessionInfo {
    /// The admin.
    pub admin_id: i64,
    /// The admin's tenant.
    pub tenant: String,
    /// The admin's e-mail address.
    pub email: String,
    /// The session's CSRF token.
    pub csrf_token: Zeroizing<String>,
    /// Expiry, RFC 3339 UTC.
    pub expires_at: String,
}

impl core::fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionInfo")
            .field("admin_id", &self.admin_id)
            .field("tenant", &self.tenant)
            .field("email", &self.email)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn parse_time(text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("stored time {text:?}: {e}")))
}

fn format_time(t: OffsetDateTime) -> Result<String, StoreError> {
    t.format(&Rfc3339).map_err(|e| StoreError::Corrupt(format!("time: {e}")))
}

/// Base64url (no padding) of 32 fresh random bytes.
fn random_token() -> Result<Zeroizing<String>, StoreError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    keyhold_core::random::fill_random(&mut *raw)
        .map_err(|e| StoreError::Corrupt(format!("no randomness: {e}")))?;
    Ok(Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*raw)))
}

/// The login name: e-mail addresses compare case-insensitively.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Whether an invitation row can still be accepted.
fn check_invitation(row: &AnyRow) -> Result<(), StoreError> {
    let used: Option<String> = row.try_get("used_at")?;
    if used.is_some() {
        return Err(StoreError::InvitationUsed);
    }
    let revoked: Option<String> = row.try_get("revoked_at")?;
    if revoked.is_some() {
        return Err(StoreError::InvitationRevoked);
    }
    let expires = parse_time(&row.try_get::<String, _>("expires_at")?)?;
    if OffsetDateTime::now_utc() >= expires {
        return Err(StoreError::InvitationExpired);
    }
    Ok(())
}

fn admin_login_row(row: &AnyRow) -> Result<AdminLogin, StoreError> {
    Ok(AdminLogin {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant_id")?,
        email: row.try_get("email")?,
        password_hash: Zeroizing::new(row.try_get("password_hash")?),
        totp_secret: Zeroizing::new(row.try_get("totp_secret")?),
        totp_last_step: row.try_get("totp_last_step")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
    })
}

impl Store {
    /// Checks an invitation token without using it: [`StoreError::InvitationNotFound`],
    /// [`StoreError::InvitationUsed`] or [`StoreError::InvitationExpired`] when it cannot be
    /// accepted. Lets the caller refuse before hashing a password.
    pub async fn check_invitation(&self, token: &str) -> Result<(), StoreError> {
        let row = sqlx::query(
            "SELECT expires_at, used_at, revoked_at FROM invitations WHERE token_hash = $1",
        )
        .bind(hex_sha256(token.as_bytes()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::InvitationNotFound)?;
        check_invitation(&row)
    }

    /// Accepts an invitation: marks it used (once) and creates the tenant admin with this
    /// password hash (argon2id PHC) and TOTP secret (base32), in one transaction with its
    /// history record (`admin.create`, actor `admin:<email>`).
    pub async fn accept_invitation(
        &self,
        token: &str,
        password_hash: &str,
        totp_secret: &str,
    ) -> Result<AcceptedInvitation, StoreError> {
        let token_hash = hex_sha256(token.as_bytes());
        let (mut tx, change) = self.begin_change().await?;
        let row = sqlx::query(
            "SELECT tenant_id, email, expires_at, used_at, revoked_at FROM invitations \
             WHERE token_hash = $1",
        )
        .bind(&token_hash)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::InvitationNotFound)?;
        check_invitation(&row)?;
        let tenant: String = row.try_get("tenant_id")?;
        let email = normalize_email(&row.try_get::<String, _>("email")?);
        let used = sqlx::query(
            "UPDATE invitations SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(&token_hash)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Err(StoreError::InvitationUsed);
        }
        let exists = sqlx::query("SELECT id FROM admins WHERE email = $1")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!("an admin with e-mail {email:?} exists")));
        }
        let admin_id: i64 = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'admin' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("value")?;
        sqlx::query(
            "INSERT INTO admins (id, tenant_id, email, password_hash, totp_secret, totp_last_step, created_at, disabled) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, 0)",
        )
        .bind(admin_id)
        .bind(&tenant)
        .bind(&email)
        .bind(password_hash)
        .bind(totp_secret)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let actor = format!("admin:{email}");
        let detail = json!({"admin_id": admin_id, "email": email});
        self.commit_change(tx, change, &tenant, &actor, "admin.create", detail).await?;
        Ok(AcceptedInvitation { admin_id, tenant, email })
    }

    /// The admin signing in with this e-mail address (compared lower-case), if any.
    pub async fn admin_login(&self, email: &str) -> Result<Option<AdminLogin>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, password_hash, totp_secret, totp_last_step, disabled \
             FROM admins WHERE email = $1",
        )
        .bind(normalize_email(email))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(admin_login_row).transpose()
    }

    /// Records that the admin used the TOTP code of `step`; `false` if that step (or a later
    /// one) was used already: the code is a replay.
    pub async fn use_totp_step(&self, admin_id: i64, step: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE admins SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(admin_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Opens a session for the admin, valid `ttl`; the admin's expired sessions are removed.
    pub async fn create_session(
        &self,
        admin_id: i64,
        ttl: std::time::Duration,
    ) -> Result<NewSession, StoreError> {
        let token = random_token()?;
        let csrf_token = random_token()?.to_string();
        let now_t = OffsetDateTime::now_utc();
        let ttl = time::Duration::try_from(ttl)
            .map_err(|e| StoreError::Corrupt(format!("session lifetime: {e}")))?;
        let expires_at = format_time(
            now_t
                .checked_add(ttl)
                .ok_or_else(|| StoreError::Corrupt("session lifetime out of range".into()))?,
        )?;
        let mut tx = self.begin_write().await?;
        // Expired sessions of this admin (compared in Rust: stored times are text).
        let old = sqlx::query("SELECT id, expires_at FROM sessions WHERE admin_id = $1")
            .bind(admin_id)
            .fetch_all(&mut *tx)
            .await?;
        for row in &old {
            let expired =
                parse_time(&row.try_get::<String, _>("expires_at")?).map_or(true, |t| t <= now_t);
            if expired {
                sqlx::query("DELETE FROM sessions WHERE id = $1")
                    .bind(row.try_get::<String, _>("id")?)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "INSERT INTO sessions (id, admin_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hex_sha256(token.as_bytes()))
        .bind(admin_id)
        .bind(&csrf_token)
        .bind(format_time(now_t)?)
        .bind(&expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(NewSession { token, csrf_token, expires_at })
    }

    /// The live session with this token: `None` if unknown, expired, or its admin is disabled.
    pub async fn session(&self, token: &str) -> Result<Option<SessionInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT s.admin_id, s.csrf_token, s.expires_at, a.tenant_id, a.email, a.disabled \
             FROM sessions s JOIN admins a ON a.id = s.admin_id WHERE s.id = $1",
        )
        .bind(hex_sha256(token.as_bytes()))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: String = row.try_get("expires_at")?;
        if parse_time(&expires_at)? <= OffsetDateTime::now_utc()
            || row.try_get::<i64, _>("disabled")? != 0
        {
            return Ok(None);
        }
        Ok(Some(SessionInfo {
            admin_id: row.try_get("admin_id")?,
            tenant: row.try_get("tenant_id")?,
            email: row.try_get("email")?,
            csrf_token: Zeroizing::new(row.try_get("csrf_token")?),
            expires_at,
        }))
    }

    /// The tenant's invitations, oldest first ([`StoreError::TenantNotFound`] for an unknown
    /// tenant).
    pub async fn invitations(&self, tenant: &str) -> Result<Vec<InvitationView>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        super::require_tenant(&mut conn, tenant).await?;
        let rows = sqlx::query(
            "SELECT email, created_at, expires_at, used_at, revoked_at FROM invitations \
             WHERE tenant_id = $1 ORDER BY created_at, email",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        let now = OffsetDateTime::now_utc();
        rows.iter().map(|row| invitation_view_row(row, now)).collect()
    }

    /// Revokes the tenant's pending invitations of `email` (compared lower-case): their links
    /// stop working at once. Returns how many; a change (`invitation.revoke`) is recorded when
    /// there was one, [`StoreError::InvitationNotFound`] when there was none.
    pub async fn revoke_invitations(
        &self,
        actor: &str,
        tenant: &str,
        email: &str,
    ) -> Result<u64, StoreError> {
        let (mut tx, change) = self.begin_change().await?;
        super::require_tenant(&mut tx, tenant).await?;
        let rows = sqlx::query(
            "SELECT token_hash, email, created_at, expires_at, used_at, revoked_at FROM invitations \
             WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        let wanted = normalize_email(email);
        let now_t = OffsetDateTime::now_utc();
        let mut revoked = 0;
        for row in &rows {
            let view = invitation_view_row(row, now_t)?;
            if view.state != InvitationState::Pending || normalize_email(&view.email) != wanted {
                continue;
            }
            revoked += sqlx::query(
                "UPDATE invitations SET revoked_at = $1 \
                 WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
            )
            .bind(format_time(now_t)?)
            .bind(row.try_get::<String, _>("token_hash")?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if revoked == 0 {
            return Err(StoreError::InvitationNotFound);
        }
        let detail = json!({"email": wanted, "revoked": revoked});
        self.commit_change(tx, change, tenant, actor, "invitation.revoke", detail).await?;
        Ok(revoked)
    }

    /// The tenant's admins, by id ([`StoreError::TenantNotFound`] for an unknown tenant).
    pub async fn admins(&self, tenant: &str) -> Result<Vec<AdminView>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        super::require_tenant(&mut conn, tenant).await?;
        let rows = sqlx::query(
            "SELECT id, tenant_id, email, created_at, disabled FROM admins \
             WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(admin_view_row).collect()
    }

    /// Disables (`disabled`) or enables one of the tenant's admins. Disabling ends every
    /// session of theirs at once, in the same transaction. A change is recorded
    /// (`admin.disable`, `admin.enable`), and so becomes an admin audit event of the tenant;
    /// setting the state the admin is already in records nothing.
    pub async fn set_admin_disabled(
        &self,
        actor: &str,
        tenant: &str,
        admin_id: i64,
        disabled: bool,
    ) -> Result<AdminView, StoreError> {
        let (mut tx, change) = self.begin_change().await?;
        super::require_tenant(&mut tx, tenant).await?;
        let row = sqlx::query(
            "SELECT id, tenant_id, email, created_at, disabled FROM admins \
             WHERE id = $1 AND tenant_id = $2",
        )
        .bind(admin_id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        let mut admin = admin_view_row(&row.ok_or(StoreError::AdminNotFound(admin_id))?)?;
        if admin.disabled == disabled {
            return Ok(admin);
        }
        sqlx::query("UPDATE admins SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(admin_id)
            .execute(&mut *tx)
            .await?;
        let ended = if disabled {
            sqlx::query("DELETE FROM sessions WHERE admin_id = $1")
                .bind(admin_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            0
        };
        let (action, detail) = if disabled {
            (
                "admin.disable",
                json!({"admin_id": admin_id, "email": admin.email, "sessions_ended": ended}),
            )
        } else {
            ("admin.enable", json!({"admin_id": admin_id, "email": admin.email}))
        };
        self.commit_change(tx, change, tenant, actor, action, detail).await?;
        admin.disabled = disabled;
        Ok(admin)
    }

    /// Ends the session with this token (nothing if there is none).
    pub async fn delete_session(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(hex_sha256(token.as_bytes()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
