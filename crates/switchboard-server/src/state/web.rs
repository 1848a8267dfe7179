//! Browser sign-in: a pasted API key or a single-use pairing link becomes a web session
//! carried in an HttpOnly cookie; the key itself never reaches the page's storage.

use std::time::Duration;

use switchboard_store::{CredentialKind, Role, StoreError};

use super::AppState;
use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::time::now_ms;

/// How long a browser stays signed in.
pub(crate) const WEB_SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long a pairing link works (once).
pub(crate) const PAIRING_TTL: Duration = Duration::from_secs(10 * 60);

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

impl AppState {
    /// Signs a browser in with an API key; returns the web session token for the cookie
    /// and how long it lasts. The browser is a device of its own, named after its user
    /// agent, with the key's role.
    pub(crate) async fn web_login(
        &self,
        api_key: &str,
        user_agent: Option<&str>,
    ) -> Result<(String, Duration), ApiError> {
        match self.authenticate(api_key.trim()).await {
            Ok(Principal::Owner { owner_id, role, .. }) if api_key.trim().starts_with("sbk_") => {
                let name = super::access::device_name(user_agent);
                let token = self.new_web_session(&owner_id, None, role, &name).await?;
                Ok((token, WEB_SESSION_TTL))
            }
            Ok(_) => Err(ApiError::Forbidden("sign in with an API key".into())),
            Err(_) => Err(ApiError::Unauthorized("that API key is not valid".into())),
        }
    }

    /// A new web session that ends after [`WEB_SESSION_TTL`] or at `until`, whichever
    /// comes first.
    async fn new_web_session(
        &self,
        owner_id: &str,
        until: Option<i64>,
        role: Role,
        name: &str,
    ) -> Result<String, ApiError> {
        let now = now_ms();
        let expires_at = until.map_or(now + ms(WEB_SESSION_TTL), |until| {
            until.min(now + ms(WEB_SESSION_TTL))
        });
        let mut minted = auth::mint(
            CredentialKind::WebSession,
            owner_id,
            None,
            None,
            name,
            now,
            Some(expires_at),
        );
        minted.credential.role = role;
        self.store().insert_credential(&minted.credential).await?;
        Ok(minted.token)
    }

    /// Creates a pairing link for the caller's owner: `(url, expires_at ms)`. `parent` is
    /// the web session that asked for it, if one did: the link then stops working when
    /// that session ends, and the browser it signs in stays signed in no longer than that
    /// session would have (a stolen cookie cannot renew itself through pairing links).
    /// The browser it signs in gets `role`.
    pub async fn create_pairing(
        &self,
        owner_id: &str,
        parent: Option<&str>,
        role: Role,
    ) -> Result<(String, i64), ApiError> {
        let now = now_ms();
        let expires_at = now + ms(PAIRING_TTL);
        let mut minted = auth::mint(
            CredentialKind::Pairing,
            owner_id,
            parent,
            None,
            "pairing",
            now,
            Some(expires_at),
        );
        minted.credential.role = role;
        self.store().insert_credential(&minted.credential).await?;
        Ok((
            format!("{}/pair/{}", self.public_url(), minted.token),
            expires_at,
        ))
    }

    /// Redeems a pairing token (once) for a web session token and its lifetime: a device
    /// of its own, named after the browser's user agent, with the link's role.
    pub(crate) async fn redeem_pairing(
        &self,
        token: &str,
        user_agent: Option<&str>,
    ) -> Result<(String, Duration), ApiError> {
        let invalid = || ApiError::Unauthorized("this pairing link is not valid (any more)".into());
        let (kind, id, _) = auth::parse_token(token).ok_or_else(invalid)?;
        if kind != CredentialKind::Pairing {
            return Err(invalid());
        }
        let credential = match self.store().credential(id).await {
            Ok(c) => c,
            Err(StoreError::NotFound) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        auth::check_secret(&credential, token).map_err(|_| invalid())?;
        let now = now_ms();
        if credential.expires_at.is_some_and(|exp| exp <= now) {
            return Err(ApiError::Expired("this pairing link has expired".into()));
        }
        // A link made by a web session lives and signs in only as long as that session.
        let until = match &credential.scope {
            Some(parent) => {
                let parent = match self.store().credential(parent).await {
                    Ok(c) => c,
                    Err(StoreError::NotFound) => return Err(invalid()),
                    Err(e) => return Err(e.into()),
                };
                let ends = parent.expires_at.unwrap_or(i64::MAX);
                if parent.revoked_at.is_some() || ends <= now {
                    return Err(invalid());
                }
                Some(ends)
            }
            None => None,
        };
        // Consumed exactly once, even when two browsers race for it.
        if !self.store().consume_credential(id, now).await? {
            return Err(invalid());
        }
        let name = super::access::device_name(user_agent);
        let token = self
            .new_web_session(&credential.owner_id, until, credential.role, &name)
            .await?;
        let ttl = until.map_or(WEB_SESSION_TTL, |until| {
            Duration::from_millis(u64::try_from(until.saturating_sub(now)).unwrap_or(0))
                .min(WEB_SESSION_TTL)
        });
        Ok((token, ttl))
    }

    /// Signs a browser out: its web session stops working and the sockets it opened
    /// close.
    pub(crate) async fn web_logout(&self, token: &str) -> Result<(), ApiError> {
        if let Some((CredentialKind::WebSession, id, _)) = auth::parse_token(token) {
            let credential = match self.store().credential(id).await {
                Ok(c) => c,
                Err(StoreError::NotFound) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if auth::check_secret(&credential, token).is_ok() {
                self.store().consume_credential(id, now_ms()).await?;
                self.close_revoked([id]);
            }
        }
        Ok(())
    }

    /// Signs every browser of `owner_id` out: all its web sessions and unused pairing
    /// links are revoked and the sockets they opened close. Returns how many web
    /// sessions ended.
    pub(crate) async fn web_logout_everywhere(&self, owner_id: &str) -> Result<usize, ApiError> {
        let now = now_ms();
        let store = self.store();
        store
            .revoke_owner_credentials(owner_id, CredentialKind::Pairing, now)
            .await?;
        let ended = store
            .revoke_owner_credentials(owner_id, CredentialKind::WebSession, now)
            .await?;
        self.close_revoked(ended.iter().map(String::as_str));
        tracing::info!(owner = %owner_id, sessions = ended.len(), "signed out everywhere");
        Ok(ended.len())
    }
}
