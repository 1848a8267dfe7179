//! Bearer credentials: minting, verifying, and what each class may reach.
//!
//! Every token the server issues has the form `sb<k>_<id>_<secret>`: `k` names the class
//! (`k` API key, `e` environment secret, `i` session-ingress token), `id` is the public
//! key of the stored [`Credential`] row and `secret` is 32 random bytes in base64url.
//! Only the SHA-256 of the secret is stored, and it is compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_store::{Credential, CredentialKind, Millis, Role, Store, StoreError};

use crate::error::ApiError;

/// Who is calling, as established by their bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API key or a web session: acts as its owner, within its role.
    Owner {
        /// The owner.
        owner_id: String,
        /// What it may do (see `roles`).
        role: Role,
        /// The stored credential's public id.
        credential_id: String,
        /// Where the request came from (filled in by `AppState::authenticate_request`).
        client: Client,
    },
    /// An environment secret: may poll one environment.
    Environment {
        /// The owner of the environment.
        owner_id: String,
        /// The environment.
        environment_id: String,
    },
    /// A session-ingress token: the worker of one session.
    Ingress {
        /// The owner of the session.
        owner_id: String,
        /// The session body id.
        session_id: String,
        /// The work item the token came with.
        work_id: Option<String>,
    },
    /// A worker JWT from `/bridge`: the worker of one session, for one epoch.
    Worker {
        /// The owner of the session.
        owner_id: String,
        /// The session body id.
        session_id: String,
        /// The epoch the token was issued for.
        epoch: u64,
    },
}

/// Where a request came from: for the devices list and the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// The client's address.
    pub address: Option<String>,
    /// Its `User-Agent`, cut to a bounded length.
    pub user_agent: Option<String>,
}

impl Principal {
    /// [`Principal::class`] of an owner's credential.
    pub const OWNER_CLASS: &'static str = "owner";

    /// The class of credential, as recorded with what it sends (`sent_with`): `owner`
    /// (an API key or a web session), `environment_secret`, `ingress_token` or
    /// `worker_jwt`.
    pub fn class(&self) -> &'static str {
        match self {
            Principal::Owner { .. } => Self::OWNER_CLASS,
            Principal::Environment { .. } => "environment_secret",
            Principal::Ingress { .. } => "ingress_token",
            Principal::Worker { .. } => "worker_jwt",
        }
    }

    /// True for the credentials a session's worker holds (ingress token, worker JWT).
    pub fn is_worker(&self) -> bool {
        matches!(self, Principal::Ingress { .. } | Principal::Worker { .. })
    }

    /// The owner behind any credential.
    pub fn owner_id(&self) -> &str {
        match self {
            Principal::Owner { owner_id, .. }
            | Principal::Environment { owner_id, .. }
            | Principal::Ingress { owner_id, .. }
            | Principal::Worker { owner_id, .. } => owner_id,
        }
    }
}

fn prefix(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::ApiKey => "sbk",
        CredentialKind::EnvironmentSecret => "sbe",
        CredentialKind::IngressToken => "sbi",
        CredentialKind::WebSession => "sbw",
        CredentialKind::Pairing => "sbp",
    }
}

/// The name of the cookie that carries a browser's web session.
pub const SESSION_COOKIE: &str = "sb_session";

/// A random lowercase alphanumeric string: ids that are safe in any path.
pub fn random_id(len: usize) -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), len)
        .to_ascii_lowercase()
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A freshly minted token: the string to hand out once, and the row to store.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The bearer token; never stored.
    pub token: String,
    /// The row to store.
    pub credential: Credential,
}

/// Mints a credential of `kind` for `owner_id`, bound to `scope`.
pub fn mint(
    kind: CredentialKind,
    owner_id: &str,
    scope: Option<&str>,
    work_id: Option<&str>,
    name: &str,
    now: Millis,
    expires_at: Option<Millis>,
) -> Minted {
    let id = random_id(16);
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut secret_bytes);
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    Minted {
        token: format!("{}_{id}_{secret}", prefix(kind)),
        credential: Credential {
            id,
            kind,
            owner_id: owner_id.to_string(),
            scope: scope.map(str::to_string),
            work_id: work_id.map(str::to_string),
            name: name.to_string(),
            secret_hash: hash_secret(&secret),
            created_at: now,
            expires_at,
            revoked_at: None,
            // Owner credentials get their role from whoever mints them; the others carry
            // none that is ever read.
            role: Role::Admin,
        },
    }
}

/// Creates an `admin` API key for the owner named `owner_name` (creating the owner if
/// needed) and returns the token, which is not stored and cannot be shown again.
pub async fn create_api_key(
    store: &dyn Store,
    owner_name: &str,
    key_name: &str,
    now: Millis,
) -> Result<String, StoreError> {
    create_api_key_with_role(store, owner_name, key_name, Role::Admin, now)
        .await
        .map(|(token, _)| token)
}

/// Creates an API key of `role` for the owner named `owner_name` (creating the owner if
/// needed); returns the token (shown once) and the stored row.
pub async fn create_api_key_with_role(
    store: &dyn Store,
    owner_name: &str,
    key_name: &str,
    role: Role,
    now: Millis,
) -> Result<(String, Credential), StoreError> {
    let owner = store.ensure_owner(owner_name, now).await?;
    let mut minted = mint(
        CredentialKind::ApiKey,
        &owner.id,
        None,
        None,
        key_name,
        now,
        None,
    );
    minted.credential.role = role;
    store.insert_credential(&minted.credential).await?;
    Ok((minted.token, minted.credential))
}

/// Splits a token into its class, id and secret; `None` if it is not one of ours.
pub(crate) fn parse_token(token: &str) -> Option<(CredentialKind, &str, &str)> {
    let (class, rest) = token.split_once('_')?;
    let kind = match class {
        "sbk" => CredentialKind::ApiKey,
        "sbe" => CredentialKind::EnvironmentSecret,
        "sbi" => CredentialKind::IngressToken,
        "sbw" => CredentialKind::WebSession,
        "sbp" => CredentialKind::Pairing,
        _ => return None,
    };
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((kind, id, secret))
}

/// Checks a bearer token against the store and says who it belongs to.
///
/// Unknown, malformed or revoked tokens are 401; a token past its expiry is a 403 with
/// an `expired` type (which the client reports as "session has expired").
pub async fn verify(store: &dyn Store, token: &str, now: Millis) -> Result<Principal, ApiError> {
    let unknown = || ApiError::Unauthorized("invalid bearer token".into());
    let (kind, id, _) = parse_token(token).ok_or_else(unknown)?;
    // A pairing token only signs a browser in (`/web/pair`); it is never a bearer.
    if kind == CredentialKind::Pairing {
        return Err(unknown());
    }
    let credential = match store.credential(id).await {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(unknown()),
        Err(e) => return Err(e.into()),
    };
    if check_secret(&credential, token).is_err()
        || credential.kind != kind
        || credential.revoked_at.is_some()
    {
        return Err(unknown());
    }
    if credential.expires_at.is_some_and(|exp| exp <= now) {
        return Err(ApiError::Expired("token has expired".into()));
    }
    let scope = || {
        credential
            .scope
            .clone()
            .ok_or_else(|| anyhow::anyhow!("unscoped credential"))
    };
    Ok(match kind {
        CredentialKind::ApiKey | CredentialKind::WebSession => Principal::Owner {
            role: credential.role,
            credential_id: credential.id,
            owner_id: credential.owner_id,
            client: Client::default(),
        },
        CredentialKind::Pairing => return Err(unknown()),
        CredentialKind::EnvironmentSecret => Principal::Environment {
            environment_id: scope()?,
            owner_id: credential.owner_id,
        },
        CredentialKind::IngressToken => Principal::Ingress {
            session_id: scope()?,
            work_id: credential.work_id,
            owner_id: credential.owner_id,
        },
    })
}

/// Checks that `token` is the one `credential` was minted as (constant time).
pub(crate) fn check_secret(credential: &Credential, token: &str) -> Result<(), ()> {
    let (_, _, secret) = parse_token(token).ok_or(())?;
    let matches: bool = hash_secret(secret)
        .as_bytes()
        .ct_eq(credential.secret_hash.as_bytes())
        .into();
    if matches {
        Ok(())
    } else {
        Err(())
    }
}

/// Where a request's credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer …`.
    Header,
    /// The browser's session cookie.
    Cookie,
}

/// The request's credential: the bearer token, or else the session cookie.
pub fn request_token(headers: &axum::http::HeaderMap) -> Result<(&str, Source), ApiError> {
    match bearer(headers) {
        Ok(token) => Ok((token, Source::Header)),
        Err(e) => session_cookie(headers)
            .map(|t| (t, Source::Cookie))
            .ok_or(e),
    }
}

/// The value of the session cookie, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        })
}

/// True unless the request carries an `Origin` header naming another site: the origin
/// must be the server's public URL or the scheme and authority the request was sent to
/// (`host`, as the listener believes it). Browsers send `Origin` on every cross-site
/// request, every `POST` and every WebSocket upgrade, so a request without one did not
/// come from another site's page; `Origin: null` (sandboxed frames, some redirects) is
/// never same-origin.
pub fn origin_matches(headers: &axum::http::HeaderMap, public_url: &str, host: &str) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if origin.eq_ignore_ascii_case(public_url.trim_end_matches('/')) {
        return true;
    }
    matches!(origin.split_once("://"), Some((scheme, authority))
        if (scheme == "http" || scheme == "https") && !host.is_empty()
            && authority.eq_ignore_ascii_case(host))
}

/// The class and public id of a stored credential's token (`None` for a worker JWT or
/// anything that is not one of ours).
pub(crate) fn credential_ref(token: &str) -> Option<(CredentialKind, &str)> {
    parse_token(token).map(|(kind, id, _)| (kind, id))
}

/// Reads `Authorization: Bearer <token>`.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::Unauthorized("expected a Bearer token".into()))?;
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back_and_never_look_like_cookies() {
        let m = mint(
            CredentialKind::IngressToken,
            "o",
            Some("s"),
            None,
            "",
            0,
            None,
        );
        let (kind, id, secret) = parse_token(&m.token).unwrap();
        assert_eq!(kind, CredentialKind::IngressToken);
        assert_eq!(id, m.credential.id);
        assert_eq!(hash_secret(secret), m.credential.secret_hash);
        assert!(!m.token.starts_with("sk-ant-sid"));
        assert!(parse_token("sbx_a_b").is_none());
        assert!(parse_token("sbk__b").is_none());
        assert!(parse_token("garbage").is_none());
    }
}
