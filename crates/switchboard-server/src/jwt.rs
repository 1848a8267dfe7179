//! Worker credentials for the v2 worker API: HS256 JSON Web Tokens.
//!
//! The client never checks the signature; it only reads `exp` from the middle segment to
//! schedule a refresh. The server signs with the newest live [`SigningKey`] from the store
//! (named by `kid`) and accepts any live key, so a key can be rotated without cutting off
//! tokens already handed out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchboard_store::{Millis, SigningKey, Store, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// What a worker token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerClaims {
    /// The session, `cse_<body>`.
    pub session_id: String,
    /// The owner of the session.
    pub owner: String,
    /// The worker epoch the token was issued for.
    pub epoch: u64,
    /// Always `"worker"`.
    pub role: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not valid before, seconds since the epoch (we never set it; honoured when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// How far in the future a token's `iat` or `nbf` may lie and still be accepted: the
/// clock skew between servers that share one store (one minute, as is customary).
pub const CLOCK_SKEW_SECS: i64 = 60;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a token of ours, or tampered with.
    #[error("invalid worker token")]
    Invalid,
    /// Past its `exp`.
    #[error("worker token has expired")]
    Expired,
    /// Issued in the future (`iat` or `nbf` past now and the clock skew allowance).
    #[error("worker token is not valid yet")]
    NotYetValid,
    /// Signed with a key this server does not hold (yet): reload the keys and retry.
    #[error("worker token signed with an unknown key")]
    UnknownKey,
}

/// Makes a new signing key, stores it, and (with `retire_previous`) retires every older
/// one, which cuts off the tokens they signed. Servers pick it up on their next key
/// reload (at most a minute, or at once when they meet a token it signed).
pub async fn rotate(
    store: &dyn Store,
    retire_previous: bool,
    now: Millis,
) -> Result<SigningKey, StoreError> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = SigningKey {
        id: crate::auth::random_id(12),
        secret: URL_SAFE_NO_PAD.encode(secret),
        created_at: now,
        retired_at: None,
    };
    store.insert_signing_key(&key).await?;
    if retire_previous {
        store.retire_signing_keys(now, now).await?;
    }
    Ok(key)
}

/// Signs claims with a key.
pub fn sign(claims: &WorkerClaims, key: &SigningKey) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: "JWT".into(),
        kid: key.id.clone(),
    };
    let head = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{head}.{body}");
    let signature = mac(key, signing_input.as_bytes()).finalize().into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn mac(key: &SigningKey, data: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(key.secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(data);
    mac
}

/// True when `token` has the shape of a JWT (three base64url segments).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// Checks a token against the live keys and returns its claims.
pub fn verify(token: &str, keys: &[SigningKey], now_secs: i64) -> Result<WorkerClaims, JwtError> {
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Invalid);
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Invalid)?;
    if header.alg != "HS256" {
        return Err(JwtError::Invalid);
    }
    let key = keys
        .iter()
        .find(|k| k.id == header.kid)
        .ok_or(JwtError::UnknownKey)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Invalid)?;
    mac(key, format!("{head}.{body}").as_bytes())
        .verify_slice(&signature)
        .map_err(|_| JwtError::Invalid)?;
    let claims: WorkerClaims = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Invalid)?;
    if claims.role != "worker" {
        return Err(JwtError::Invalid);
    }
    if claims.exp <= now_secs {
        return Err(JwtError::Expired);
    }
    let not_before = claims.nbf.unwrap_or(i64::MIN).max(claims.iat);
    if not_before > now_secs.saturating_add(CLOCK_SKEW_SECS) {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> SigningKey {
        SigningKey {
            id: id.into(),
            secret: format!("secret-{id}"),
            created_at: 0,
            retired_at: None,
        }
    }

    fn claims(exp: i64) -> WorkerClaims {
        WorkerClaims {
            session_id: "cse_abcd".into(),
            owner: "own_1".into(),
            epoch: 3,
            role: "worker".into(),
            iat: 0,
            exp,
            nbf: None,
        }
    }

    #[test]
    fn tokens_verify_with_their_key_and_expose_exp_to_the_client() {
        let token = sign(&claims(100), &key("a"));
        assert!(looks_like_jwt(&token));
        assert_eq!(verify(&token, &[key("b"), key("a")], 50), Ok(claims(100)));
        // The client reads `exp` from the middle segment without the key.
        let middle = token.split('.').nth(1).unwrap();
        let read: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(middle).unwrap()).unwrap();
        assert_eq!(read["exp"], 100);
    }

    #[test]
    fn tampered_expired_and_unknown_key_tokens_are_refused() {
        let token = sign(&claims(100), &key("a"));
        assert_eq!(verify(&token, &[key("b")], 50), Err(JwtError::UnknownKey));
        assert_eq!(verify(&token, &[key("a")], 100), Err(JwtError::Expired));
        let forged = {
            let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
            let mut c = claims(100);
            c.epoch = 99;
            parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
            parts.join(".")
        };
        assert_eq!(verify(&forged, &[key("a")], 50), Err(JwtError::Invalid));
        assert_eq!(verify("a.b", &[key("a")], 0), Err(JwtError::Invalid));
    }

    #[test]
    fn tokens_issued_in_the_future_are_refused_beyond_the_clock_skew() {
        let now = 1_000;
        let at = |iat: i64, nbf: Option<i64>| {
            let c = WorkerClaims {
                iat,
                nbf,
                ..claims(now + 3600)
            };
            verify(&sign(&c, &key("a")), &[key("a")], now)
        };
        assert!(at(now, None).is_ok());
        assert!(at(now + CLOCK_SKEW_SECS, None).is_ok());
        assert_eq!(
            at(now + CLOCK_SKEW_SECS + 1, None),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(at(now + 3000, None), Err(JwtError::NotYetValid));
        assert!(at(now, Some(now + CLOCK_SKEW_SECS)).is_ok());
        assert_eq!(
            at(now, Some(now + CLOCK_SKEW_SECS + 1)),
            Err(JwtError::NotYetValid)
        );
        // `nbf` is optional on the wire.
        let token = sign(&claims(now + 10), &key("a"));
        let middle = token.split('.').nth(1).unwrap();
        let read: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(middle).unwrap()).unwrap();
        assert!(read.get("nbf").is_none());
    }
}
