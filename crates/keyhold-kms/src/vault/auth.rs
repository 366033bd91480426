//! AppRole login for the Vault backend: the client token, cached, renewed after two thirds of
//! its TTL, and replaced by a fresh login when it can no longer be renewed or Vault refuses it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Op, Transport, classify, error_text, header_safe, json_body};
use crate::KmsError;

/// AppRole credentials and the token they last gave.
pub(super) struct AppRole {
    mount: String,
    role_id: String,
    secret_id: Zeroizing<String>,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

struct CachedToken {
    token: Zeroizing<String>,
    /// When to renew (two thirds of the TTL); `None`: the token does not expire.
    refresh_at: Option<Instant>,
    /// When the token expires; `None`: never.
    expires_at: Option<Instant>,
    renewable: bool,
}

#[derive(Serialize)]
struct LoginRequest<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(Deserialize)]
struct AuthEnvelope {
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: Zeroizing<String>,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl AppRole {
    pub(super) fn new(mount: String, role_id: String, secret_id: Zeroizing<String>) -> Self {
        Self { mount, role_id, secret_id, cached: tokio::sync::Mutex::new(None) }
    }

    /// The client token: cached, renewed after two thirds of its TTL, or a fresh login.
    pub(super) async fn token(&self, transport: &Transport) -> Result<Zeroizing<String>, KmsError> {
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(current) = cached.as_ref() {
            if current.refresh_at.is_none_or(|at| now < at) {
                return Ok(current.token.clone());
            }
            let still_valid = current.expires_at.is_none_or(|at| now < at);
            if current.renewable && still_valid {
                match self.renew(transport, current).await {
                    Ok(Some(renewed)) => {
                        let token = renewed.token.clone();
                        *cached = Some(renewed);
                        return Ok(token);
                    }
                    // Vault did not answer: the token is still good for a while; the next
                    // call tries again.
                    Err(_) => return Ok(current.token.clone()),
                    Ok(None) => {}
                }
            }
        }
        *cached = None;
        let fresh = self.login(transport).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Drops the cached token if it is still `token` (another task may have replaced it).
    pub(super) async fn forget(&self, token: &Zeroizing<String>) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == *token) {
            *cached = None;
        }
    }

    async fn login(&self, transport: &Transport) -> Result<CachedToken, KmsError> {
        let body = json_body(&LoginRequest { role_id: &self.role_id, secret_id: &self.secret_id })?;
        let path = format!("auth/{}/login", self.mount);
        let answer = transport.send(Method::POST, &path, Some(&body), None).await?;
        if !answer.status.is_success() {
            return Err(match answer.status {
                // AppRole answers 400 "invalid role or secret ID"; an unknown mount gives 403.
                StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    KmsError::AccessDenied(format!(
                        "vault: AppRole login at auth/{} refused: {}",
                        self.mount,
                        error_text(&answer)
                    ))
                }
                _ => classify(Op::Login, &answer),
            });
        }
        let auth = serde_json::from_slice::<AuthEnvelope>(&answer.body)
            .ok()
            .and_then(|e| e.auth)
            .ok_or_else(|| Op::Login.malformed("carries no `auth.client_token`"))?;
        tracing::debug!(mount = %self.mount, ttl_s = auth.lease_duration, "vault: AppRole login");
        Ok(cached_token(header_safe(auth.client_token)?, auth.lease_duration, auth.renewable))
    }

    /// `renew-self`. `Ok(None)` when the token cannot be renewed (any refusal, or its max TTL
    /// is reached and the renewal would not extend it): the caller logs in again. `Err`: Vault
    /// did not answer.
    async fn renew(
        &self,
        transport: &Transport,
        current: &CachedToken,
    ) -> Result<Option<CachedToken>, KmsError> {
        let body = Zeroizing::new(b"{}".to_vec());
        let answer = transport
            .send(Method::POST, "auth/token/renew-self", Some(&body), Some(&current.token))
            .await?;
        if !answer.status.is_success() {
            tracing::debug!(status = %answer.status, "vault: token renewal refused");
            return Ok(None);
        }
        let Some(auth) =
            serde_json::from_slice::<AuthEnvelope>(&answer.body).ok().and_then(|e| e.auth)
        else {
            return Ok(None);
        };
        let renewed = cached_token(current.token.clone(), auth.lease_duration, auth.renewable);
        let extends = match (renewed.expires_at, current.expires_at) {
            (None, _) => true,
            (Some(new), Some(old)) => new > old + Duration::from_secs(1),
            (Some(_), None) => false,
        };
        // A renewal capped by the max TTL is not worth keeping once it stops extending.
        Ok((extends && auth.lease_duration > 0).then_some(renewed))
    }
}

fn cached_token(token: Zeroizing<String>, lease_seconds: u64, renewable: bool) -> CachedToken {
    let now = Instant::now();
    if lease_seconds == 0 {
        return CachedToken { token, refresh_at: None, expires_at: None, renewable };
    }
    let lease = Duration::from_secs(lease_seconds);
    CachedToken {
        token,
        refresh_at: Some(now + lease * 2 / 3),
        expires_at: Some(now + lease),
        renewable,
    }
}
