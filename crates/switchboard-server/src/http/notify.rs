//! `/v1/notify/*`: an owner's notification settings, webhook and ntfy channels, and the
//! browsers subscribed to Web Push. API key (CLI) or web session cookie (web UI).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::Auth;
use crate::error::{ApiError, Json, Path};
use crate::roles::Capability;
use crate::state::AppState;

type JsonValue = axum::Json<Value>;

/// `GET /v1/notify`: events, channels, push key and subscriptions.
pub(crate) async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<JsonValue, ApiError> {
    principal.require(Capability::Read)?;
    let owner = AppState::require_owner(&principal)?;
    Ok(axum::Json(state.notify_overview(owner).await?))
}

/// Body of `PUT /v1/notify/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct Events {
    events: Vec<String>,
}

/// `PUT /v1/notify/events`: the events that notify.
pub(crate) async fn put_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(req): Json<Events>,
) -> Result<JsonValue, ApiError> {
    principal.require(Capability::Administer)?;
    let owner = AppState::require_owner(&principal)?;
    state.set_notify_events(owner, &req.events).await?;
    Ok(axum::Json(state.notify_overview(owner).await?))
}

/// Body of `PUT /v1/notify/channels/{kind}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Channel {
    url: String,
    /// The webhook's HMAC key (made up when absent) or the ntfy access token.
    #[serde(default, alias = "token")]
    secret: Option<String>,
}

/// `PUT /v1/notify/channels/{kind}`: sets the webhook or the ntfy topic.
pub(crate) async fn put_channel(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Json(req): Json<Channel>,
) -> Result<JsonValue, ApiError> {
    principal.require(Capability::Administer)?;
    let owner = AppState::require_owner(&principal)?;
    let secret = req.secret.filter(|s| !s.is_empty());
    let origin = state.owner_origin(&headers);
    Ok(axum::Json(
        state
            .set_notify_channel(owner, &kind, req.url.trim(), secret, origin)
            .await?,
    ))
}

/// `DELETE /v1/notify/channels/{kind}`.
pub(crate) async fn delete_channel(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(kind): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::Administer)?;
    let owner = AppState::require_owner(&principal)?;
    state.delete_notify_channel(owner, &kind).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/notify/test`: one test notification everywhere, with how each went.
pub(crate) async fn test(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<JsonValue, ApiError> {
    principal.require(Capability::Administer)?;
    let owner = AppState::require_owner(&principal)?;
    Ok(axum::Json(state.test_notify(owner).await?))
}

/// The keys of a browser's `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize)]
pub(crate) struct Keys {
    p256dh: String,
    auth: String,
}

/// Body of `POST /v1/notify/push/subscriptions`: a `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize)]
pub(crate) struct Subscription {
    endpoint: String,
    keys: Keys,
}

/// `POST /v1/notify/push/subscriptions`: a browser subscribes.
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    Json(req): Json<Subscription>,
) -> Result<(StatusCode, JsonValue), ApiError> {
    principal.require(Capability::Read)?;
    let owner = AppState::require_owner(&principal)?;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let origin = state.owner_origin(&headers);
    let sub = state
        .subscribe_push(
            owner,
            &req.endpoint,
            &req.keys.p256dh,
            &req.keys.auth,
            agent,
            origin,
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(sub)))
}

/// `DELETE /v1/notify/push/subscriptions/{id}`.
pub(crate) async fn unsubscribe(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::Read)?;
    let owner = AppState::require_owner(&principal)?;
    crate::state::check_safe_id("subscription id", &id)?;
    state.unsubscribe_push(owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
