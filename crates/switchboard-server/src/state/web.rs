//! Browser sign-in: a pasted API key or a single-use pairing link becomes a web session
//! carried in an HttpOnly cookie; the key itself never reaches the page's storage.

use std::time::Duration;

use switchboard_store::{CredentialKind, StoreError};

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
    /// Signs a browser in with an API key; returns the web session token for the cookie.
    pub(crate) async fn web_login(&self, api_key: &str) -> Result<String, ApiError> {
        match self.authenticate(api_key.trim()).await {
            Ok(Principal::Owner { owner_id }) if api_key.trim().starts_with("sbk_") => {
                self.new_web_session(&owner_id).await
            }
            Ok(_) => Err(ApiError::Forbidden("sign in with an API key".into())),
            Err(_) => Err(ApiError::Unauthorized("that API key is not valid".into())),
        }
    }

    async fn new_web_session(&self, owner_id: &str) -> Result<String, ApiError> {
        let now = now_ms();
        let minted = auth::mint(
            CredentialKind::WebSession,
            owner_id,
            None,
            None,
            "browser",
            now,
            Some(now + ms(WEB_SESSION_TTL)),
        );
        self.store().insert_credential(&minted.credential).await?;
        Ok(minted.token)
    }

    /// Creates a pairing link for the caller's owner: `(url, expires_at ms)`.
    pub async fn create_pairing(&self, owner_id: &str) -> Result<(String, i64), ApiError> {
        let now = now_ms();
        let expires_at = now + ms(PAIRING_TTL);
        let minted = auth::mint(
            CredentialKind::Pairing,
            owner_id,
            None,
            None,
            "pairing",
            now,
            Some(expires_at),
        );
        self.store().insert_credential(&minted.credential).await?;
        Ok((
            format!("{}/pair/{}", self.public_url(), minted.token),
            expires_at,
        ))
    }

    /// Redeems a pairing token (once) for a web session token.
    pub(crate) async fn redeem_pairing(&self, token: &str) -> Result<String, ApiError> {
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
        if credential.expires_at.is_some_and(|exp| exp <= now_ms()) {
            return Err(ApiError::Expired("this pairing link has expired".into()));
        }
        // Consumed exactly once, even when two browsers race for it.
        if !self.store().consume_credential(id, now_ms()).await? {
            return Err(invalid());
        }
        self.new_web_session(&credential.owner_id).await
    }

    /// Signs a browser out: its web session stops working.
    pub(crate) async fn web_logout(&self, token: &str) -> Result<(), ApiError> {
        if let Some((CredentialKind::WebSession, id, _)) = auth::parse_token(token) {
            let credential = self.store().credential(id).await?;
            if auth::check_secret(&credential, token).is_ok() {
                self.store().consume_credential(id, now_ms()).await?;
            }
        }
        Ok(())
    }
}
