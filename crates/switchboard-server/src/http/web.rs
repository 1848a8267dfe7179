//! `/web/*`: browser sign-in with an API key or a pairing link, and sign-out (of this
//! browser, or of every browser of the owner). The browser gets an HttpOnly,
//! SameSite=Strict session cookie (Secure behind https).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use switchboard_store::{CredentialKind, Role};

use super::{Auth, AuthWith, ClientAddr};
use crate::auth::{self, SESSION_COOKIE};
use crate::error::{ApiError, Json, OptionalJson};
use crate::roles::Capability;
use crate::state::AppState;

fn with_cookie(state: &AppState, value: &str, max_age: u64, body: serde_json::Value) -> Response {
    let secure = if state.request_is_https() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    let mut response = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Sign-in requests (`/web/login`, `/web/pair`) must come from this server's own page:
/// a JSON body (which another site's form cannot send without a CORS preflight, which
/// this server never grants) and no foreign `Origin`; otherwise any page could sign a
/// visitor's browser in to the attacker's owner. Each attempt also counts against the
/// client address's sign-in budget.
fn sign_in_request(
    state: &AppState,
    headers: &HeaderMap,
    addr: ClientAddr,
) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::BadRequest(
            "sign-in takes a JSON body (content-type: application/json)".into(),
        ));
    }
    state.refuse_cross_site(headers, "sign-in")?;
    state.sign_in_attempt(addr.0)
}

fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

/// Body of `POST /web/login`.
#[derive(Debug, Deserialize)]
pub(crate) struct Login {
    key: String,
}

/// `POST /web/login`: an API key, pasted once, becomes a session cookie.
pub(crate) async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Json(req): Json<Login>,
) -> Result<Response, ApiError> {
    sign_in_request(&state, &headers, addr)?;
    let (token, ttl) = state.web_login(&req.key, user_agent(&headers)).await?;
    Ok(with_cookie(
        &state,
        &token,
        ttl.as_secs(),
        json!({ "signed_in": true }),
    ))
}

/// Body of `POST /web/pair`.
#[derive(Debug, Deserialize)]
pub(crate) struct Pair {
    token: String,
}

/// `POST /web/pair`: a pairing link's token, redeemed once, becomes a session cookie.
pub(crate) async fn pair(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Json(req): Json<Pair>,
) -> Result<Response, ApiError> {
    sign_in_request(&state, &headers, addr)?;
    let (token, ttl) = state
        .redeem_pairing(&req.token, user_agent(&headers))
        .await?;
    Ok(with_cookie(
        &state,
        &token,
        ttl.as_secs(),
        json!({ "signed_in": true }),
    ))
}

/// `POST /web/logout`: this browser's web session ends, and the sockets it opened close.
pub(crate) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = auth::session_cookie(&headers) {
        state.web_logout(token).await?;
    }
    Ok(with_cookie(&state, "", 0, json!({ "signed_in": false })))
}

/// `POST /web/logout/all`: "sign out everywhere": every web session of the caller's
/// owner ends (this browser's too), its unused pairing links stop working, and the
/// sockets they opened close. Works with an API key as well, to cut off a stolen cookie.
pub(crate) async fn logout_all(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Response, ApiError> {
    let owner_id = AppState::require_owner(&principal)?;
    principal.require(Capability::Administer)?;
    let revoked = state.web_logout_everywhere(owner_id).await?;
    Ok(with_cookie(
        &state,
        "",
        0,
        json!({ "signed_in": false, "revoked": revoked }),
    ))
}

/// `GET /web/me`: who the browser is signed in as (401 when it is not).
pub(crate) async fn me(Auth(principal): Auth) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let owner_id = AppState::require_owner(&principal)?;
    principal.require(Capability::Read)?;
    Ok(axum::Json(json!({
        "owner_id": owner_id,
        "role": principal.role().map(Role::as_str),
    })))
}

/// Body of `POST /web/pairings`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NewPairing {
    /// The app page to open once signed in, e.g. `/s/session_…`.
    next: Option<String>,
    /// The role of the browser it signs in: `driver` unless the maker chooses less, and
    /// never more than the maker's own.
    role: Option<String>,
}

/// `POST /web/pairings`: a single-use sign-in link for another browser.
pub(crate) async fn create_pairing(
    State(state): State<AppState>,
    AuthWith(principal, credential): AuthWith,
    OptionalJson(req): OptionalJson<NewPairing>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let owner_id = AppState::require_owner(&principal)?;
    // A link made by a web session signs the other browser in only until that web
    // session itself ends (no self-renewal); one made with an API key, for the full time.
    let parent = match credential {
        Some((CredentialKind::WebSession, id)) => Some(id),
        _ => None,
    };
    // A link gives at most its maker's own role, so a driver may pair its own devices
    // (each then listed, and revocable, among the owner's devices).
    principal.require(Capability::Drive)?;
    let role = match req.role.as_deref() {
        Some(raw) => crate::roles::parse_role(raw)?,
        None => Role::Driver,
    };
    if principal.role().is_some_and(|own| role > own) {
        return Err(ApiError::Forbidden(format!(
            "a pairing link cannot give more than this credential's own role ({})",
            principal.role().map_or("", Role::as_str)
        )));
    }
    let (mut url, expires_at) = state
        .create_pairing(owner_id, parent.as_deref(), role)
        .await?;
    if let Some(next) = req.next {
        // Only a page of this app: a path of safe characters, never another site.
        let safe = next.starts_with('/')
            && !next.starts_with("//")
            && next
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b));
        if !safe {
            return Err(ApiError::BadRequest(
                "next must be a path of this app, like /s/session_…".into(),
            ));
        }
        url = format!("{url}?next={next}");
    }
    Ok(axum::Json(
        json!({ "url": url, "expires_at": crate::time::iso(expires_at), "role": role.as_str() }),
    ))
}
