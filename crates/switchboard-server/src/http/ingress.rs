//! `POST /v{1,2}/session_ingress/session/{id}/events`: the v1 worker's write path.

use axum::extract::State;
use serde_json::{json, Value};
use switchboard_proto::sessions::EventsRequest;

use super::Auth;
use crate::error::{ApiError, Json, Path};
use crate::roles::Capability;
use crate::state::{Access, AppState};

/// Appends the worker's messages to the session's log. A 2xx means they are committed.
pub(crate) async fn post_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(req): Json<EventsRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state
        .authorize_session(&principal, &id, Access::OwnerOrSessionWorker)
        .await?;
    state.append_outbound(&session, req.events).await?;
    Ok(axum::Json(json!({})))
}
