//! `/v1/sessions*`: the Sessions (compat) API used by bridges and viewers.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_proto::sessions::{
    CreateSessionRequest, EventsRequest, Page, PatchSessionRequest, SessionResource,
};

use super::Auth;
use crate::error::{ApiError, Json, OptionalJson, Path, Query};
use crate::log::Accepted;
use crate::roles::Capability;
use crate::state::{Access, AppState, HistoryQuery};

/// `POST /v1/sessions`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OptionalJson(req): OptionalJson<CreateSessionRequest>,
) -> Result<axum::Json<SessionResource>, ApiError> {
    principal.require(Capability::Drive)?;
    let owner_id = AppState::require_owner(&principal)?;
    let session = state.create_session(owner_id, req).await?;
    Ok(axum::Json(state.describe(&session).await?))
}

/// Query of the session list.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
    before_id: Option<String>,
}

/// `GET /v1/sessions`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<SessionResource>>, ApiError> {
    principal.require(Capability::Read)?;
    let owner_id = AppState::require_owner(&principal)?;
    Ok(axum::Json(
        state
            .list_sessions(owner_id, q.limit, q.before_id.as_deref())
            .await?,
    ))
}

/// `GET /v1/sessions/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Auth(mut principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionResource>, ApiError> {
    principal.require(Capability::Read)?;
    let (session, _) = state
        .authorize_session_or_share(&mut principal, &id, Access::OwnerOnly)
        .await?;
    let mut resource = state.describe(&session).await?;
    resource.shared_role = AppState::shared_role(&principal, &session).map(|r| r.as_str().into());
    Ok(axum::Json(resource))
}

/// `PATCH /v1/sessions/{id}`: sets the title.
pub(crate) async fn patch(
    State(state): State<AppState>,
    Auth(mut principal): Auth,
    Path(id): Path<String>,
    Json(req): Json<PatchSessionRequest>,
) -> Result<axum::Json<SessionResource>, ApiError> {
    principal.require(Capability::Drive)?;
    let (session, _) = state
        .authorize_session_or_share(&mut principal, &id, Access::OwnerOnly)
        .await?;
    principal.require(Capability::Drive)?;
    let session = match req.title.as_deref().map(str::trim) {
        Some(title) if !title.is_empty() => state.set_title(&session, title).await?,
        _ => {
            return Err(ApiError::BadRequest(
                "title must be a non-empty string".into(),
            ))
        }
    };
    Ok(axum::Json(state.session_resource(&session)))
}

/// `POST /v1/sessions/{id}/archive`: 200, then 409 once archived.
pub(crate) async fn archive(
    State(state): State<AppState>,
    Auth(mut principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let (session, _) = state
        .authorize_session_or_share(&mut principal, &id, Access::OwnerOnly)
        .await?;
    principal.require(Capability::Drive)?;
    state.archive_session(&session).await?;
    Ok(axum::Json(json!({})))
}

/// `POST /v1/sessions/{id}/events`: prompts and control messages for the worker. The
/// owner's key may send them; the session's worker credentials only permission answers.
pub(crate) async fn post_events(
    State(state): State<AppState>,
    Auth(mut principal): Auth,
    Path(id): Path<String>,
    Json(req): Json<EventsRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    let (session, _) = state
        .authorize_session_or_share(&mut principal, &id, Access::OwnerOrSessionWorker)
        .await?;
    let appended = state
        .post_session_events(&principal, &session, req.events)
        .await?;
    let events: Vec<Value> = appended
        .iter()
        .map(|a| match a {
            Accepted::Appended(a) => json!({ "sequence_num": a.seq, "duplicate": a.duplicate }),
            Accepted::Ignored(reason) => json!({ "ignored": reason }),
        })
        .collect();
    Ok(axum::Json(json!({ "events": events })))
}

/// `GET /v1/sessions/{id}/events`: history, oldest first.
pub(crate) async fn history(
    State(state): State<AppState>,
    Auth(mut principal): Auth,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<axum::Json<Page<Value>>, ApiError> {
    principal.require(Capability::Read)?;
    let (session, _) = state
        .authorize_session_or_share(&mut principal, &id, Access::OwnerOnly)
        .await?;
    Ok(axum::Json(state.history(&session, q).await?))
}
