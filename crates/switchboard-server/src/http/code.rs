//! `/v1/code/sessions*`: code sessions, worker credentials and the CCR v2 worker API
//! (docs/PROTOCOL.md §9–§10).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Auth, AuthWith};
use crate::error::{ApiError, Json, OptionalJson, Path, Query};
use crate::roles::Capability;
use crate::state::AppState;

/// Reads `worker_epoch`: a JSON number, or a decimal string (protojson int64).
fn epoch(body: &Map<String, Value>) -> Result<u64, ApiError> {
    let value = body
        .get("worker_epoch")
        .ok_or_else(|| ApiError::BadRequest("worker_epoch is required".into()))?;
    switchboard_proto::code::epoch::deserialize(value)
        .map_err(|e| ApiError::BadRequest(format!("worker_epoch: {e}")))
}

/// Loads the session a worker writes to and refuses the write (409) when the session is
/// archived or its `worker_epoch` is not the current one.
async fn fenced(
    state: &AppState,
    principal: &crate::auth::Principal,
    id: &str,
    body: &Map<String, Value>,
) -> Result<switchboard_store::Session, ApiError> {
    let session = state.authorize_session(principal, id, true).await?;
    AppState::refuse_archived(&session)?;
    AppState::check_epoch(principal, &session, epoch(body)?)?;
    Ok(session)
}

fn array(body: &mut Map<String, Value>, key: &str) -> Result<Vec<Value>, ApiError> {
    match body.remove(key) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(ApiError::BadRequest(format!("\"{key}\" must be an array"))),
    }
}

/// Body of `POST /v1/code/sessions`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateCodeSession {
    title: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// `POST /v1/code/sessions`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OptionalJson(req): OptionalJson<CreateCodeSession>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let owner_id = AppState::require_owner(&principal)?;
    let session = state
        .create_code_session(owner_id, req.title, req.tags)
        .await?;
    let mut resource = serde_json::to_value(state.session_resource(&session))
        .map_err(|e| ApiError::Internal(e.into()))?;
    resource["id"] = Value::String(format!("cse_{}", session.id));
    Ok(axum::Json(json!({ "session": resource })))
}

/// `POST /v1/code/sessions/{id}/bridge`.
pub(crate) async fn bridge(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state.authorize_session(&principal, &id, false).await?;
    Ok(axum::Json(state.bridge_credentials(&session).await?))
}

/// `POST /v1/code/sessions/{id}/worker/register`.
pub(crate) async fn register(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state.authorize_session(&principal, &id, true).await?;
    let epoch = state.register_worker(&session).await?;
    Ok(axum::Json(json!({ "worker_epoch": epoch })))
}

/// `PUT /v1/code/sessions/{id}/worker`.
pub(crate) async fn put_worker(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(body): Json<Map<String, Value>>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = fenced(&state, &principal, &id, &body).await?;
    state
        .put_worker(&session, session.worker_epoch, &body)
        .await?;
    Ok(axum::Json(json!({})))
}

/// `GET /v1/code/sessions/{id}/worker`.
pub(crate) async fn get_worker(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state.authorize_session(&principal, &id, true).await?;
    Ok(axum::Json(state.worker_state(&session)))
}

/// `POST /v1/code/sessions/{id}/worker/heartbeat`.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(body): Json<Map<String, Value>>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = fenced(&state, &principal, &id, &body).await?;
    state.worker_heartbeat(&session);
    Ok(axum::Json(json!({})))
}

/// `POST /v1/code/sessions/{id}/worker/events`.
pub(crate) async fn events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = fenced(&state, &principal, &id, &body).await?;
    state
        .worker_events(&session, array(&mut body, "events")?)
        .await?;
    Ok(axum::Json(json!({})))
}

/// `POST /v1/code/sessions/{id}/worker/internal-events`.
pub(crate) async fn post_internal(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = fenced(&state, &principal, &id, &body).await?;
    state
        .worker_internal_events(&session, array(&mut body, "events")?)
        .await?;
    Ok(axum::Json(json!({})))
}

/// Query of `GET …/worker/internal-events`.
#[derive(Debug, Deserialize)]
pub(crate) struct InternalQuery {
    #[serde(default)]
    subagents: bool,
    cursor: Option<String>,
}

/// `GET /v1/code/sessions/{id}/worker/internal-events`.
pub(crate) async fn get_internal(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Query(q): Query<InternalQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state.authorize_session(&principal, &id, true).await?;
    Ok(axum::Json(
        state
            .worker_internal_page(&session, q.subagents, q.cursor.as_deref())
            .await?,
    ))
}

/// `POST /v1/code/sessions/{id}/worker/events/delivery`.
pub(crate) async fn delivery(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(mut body): Json<Map<String, Value>>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = fenced(&state, &principal, &id, &body).await?;
    let mut updates = Vec::new();
    for (i, update) in array(&mut body, "updates")?.into_iter().enumerate() {
        match (update.get("event_id"), update.get("status")) {
            (Some(Value::String(id)), Some(Value::String(status))) => {
                updates.push((id.clone(), status.clone()))
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "update {i} needs string event_id and status"
                )))
            }
        }
    }
    state.worker_delivery(&session, updates).await?;
    Ok(axum::Json(json!({})))
}

/// Query of the event stream.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    from_sequence_num: Option<u64>,
}

/// `GET /v1/code/sessions/{id}/worker/events/stream`: SSE of inbound events.
pub(crate) async fn stream(
    State(state): State<AppState>,
    AuthWith(principal, credential): AuthWith,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state.authorize_session(&principal, &id, true).await?;
    if session.archived_at.is_some() {
        return Err(ApiError::NotFound("session is archived".into()));
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = q.from_sequence_num.max(last_event_id);
    let watch = state.watch_revocation(credential.as_ref());
    Ok(crate::sse::worker_stream(state, session, from, watch))
}
