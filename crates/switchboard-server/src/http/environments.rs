//! `/v1/environments/*`: register, poll, ack, heartbeat, stop, reconnect, deregister.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_proto::environments::{
    HeartbeatResponse, ReconnectRequest, RegisterEnvironmentRequest, RegisterEnvironmentResponse,
    StopWorkRequest,
};

use super::Auth;
use crate::error::{ApiError, Json, OptionalJson, Path, Query};
use crate::roles::Capability;
use crate::state::AppState;

/// `POST /v1/environments/bridge`.
pub(crate) async fn register(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(req): Json<RegisterEnvironmentRequest>,
) -> Result<axum::Json<RegisterEnvironmentResponse>, ApiError> {
    principal.require(Capability::Drive)?;
    let owner_id = AppState::require_owner(&principal)?;
    Ok(axum::Json(state.register_environment(owner_id, req).await?))
}

/// An environment that polled this recently is shown as online.
const ONLINE_WITHIN_MS: i64 = 60_000;

/// `GET /v1/environments`: the caller's live environments (for the web UI's "new
/// session"), most recently polled first; `online` when one polled in the last minute.
pub(crate) async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Read)?;
    let owner_id = AppState::require_owner(&principal)?;
    let now = crate::time::now_ms();
    let data: Vec<Value> = state
        .live_environments(owner_id)
        .await?
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "machine_name": e.machine_name,
                "directory": e.directory,
                "branch": e.branch,
                "git_repo_url": e.git_repo_url,
                "max_sessions": e.max_sessions,
                "last_poll_at": crate::time::iso(e.last_poll_at),
                "online": now - e.last_poll_at < ONLINE_WITHIN_MS,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "data": data })))
}

/// Query of a work poll.
#[derive(Debug, Deserialize)]
pub(crate) struct PollQuery {
    reclaim_older_than_ms: Option<u64>,
}

/// `GET /v1/environments/{env}/work/poll`: a work item, or 204 after the poll timeout.
pub(crate) async fn poll(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(environment_id): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    principal.require(Capability::Drive)?;
    let reclaim = q.reclaim_older_than_ms.map(Duration::from_millis);
    Ok(
        match state
            .poll_work(&principal, &environment_id, reclaim)
            .await?
        {
            Some(work) => axum::Json(work).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    )
}

/// `POST /v1/environments/{env}/work/{work}/ack`.
pub(crate) async fn ack(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((environment_id, work_id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    state
        .ack_work(&principal, &environment_id, &work_id)
        .await?;
    Ok(axum::Json(json!({})))
}

/// `POST /v1/environments/{env}/work/{work}/heartbeat`.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((environment_id, work_id)): Path<(String, String)>,
) -> Result<axum::Json<HeartbeatResponse>, ApiError> {
    principal.require(Capability::Drive)?;
    Ok(axum::Json(
        state
            .heartbeat_work(&principal, &environment_id, &work_id)
            .await?,
    ))
}

/// `POST /v1/environments/{env}/work/{work}/stop`.
pub(crate) async fn stop(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((environment_id, work_id)): Path<(String, String)>,
    OptionalJson(req): OptionalJson<StopWorkRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    state
        .stop_work(&principal, &environment_id, &work_id, req.force)
        .await?;
    Ok(axum::Json(json!({})))
}

/// `POST /v1/environments/{env}/bridge/reconnect`.
pub(crate) async fn reconnect(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(environment_id): Path<String>,
    Json(req): Json<ReconnectRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    state
        .reconnect_session(&principal, &environment_id, &req.session_id)
        .await?;
    Ok(axum::Json(json!({})))
}

/// `DELETE /v1/environments/bridge/{env}`.
pub(crate) async fn deregister(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(environment_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    state
        .deregister_environment(&principal, &environment_id)
        .await?;
    Ok(axum::Json(json!({})))
}
