//! `/v1/code/sessions*`: the v2 worker API (docs/PROTOCOL.md §9) and the code sessions
//! it serves without an environment (§10).
//!
//! "The v2 worker API" is this plane's one name in the server: the worker reads an SSE
//! stream (`sse.rs`) and writes with the calls below. Every body and answer is a
//! `switchboard_proto::code` type, the same types `switchboard-client` sends and reads.

use std::marker::PhantomData;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use switchboard_proto::code::{
    Accepted, BridgeCredentials, CreateCodeSessionRequest, CreateCodeSessionResponse,
    DeliveryRequest, EventStreamQuery, HeartbeatRequest, InternalEventsPage, InternalEventsQuery,
    InternalEventsRequest, RegisterWorkerResponse, WorkerEventsRequest, WorkerResponse,
    WorkerStateRequest,
};

use super::{Auth, AuthWith};
use crate::error::{ApiError, Json, OptionalJson, Path, Query};
use crate::roles::Capability;
use crate::state::{Access, AppState};

/// The body of a worker's write, read in two steps: first as a JSON object (malformed
/// JSON is refused before anything else), then, once the epoch fence has let the write
/// through, as the protocol type `T`. So a stale or foreign worker is told 403/409
/// whatever else is wrong with its body, as before the body's shape is judged.
#[derive(Debug)]
pub(crate) struct WorkerWrite<T> {
    body: Map<String, Value>,
    kind: PhantomData<fn() -> T>,
}

impl<'de, T> Deserialize<'de> for WorkerWrite<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            body: Map::deserialize(deserializer)?,
            kind: PhantomData,
        })
    }
}

impl<T: DeserializeOwned> WorkerWrite<T> {
    /// Reads `worker_epoch`: a JSON number, or a decimal string (protojson int64).
    fn epoch(&self) -> Result<u64, ApiError> {
        let value = self
            .body
            .get("worker_epoch")
            .ok_or_else(|| ApiError::BadRequest("worker_epoch is required".into()))?;
        switchboard_proto::code::epoch::deserialize(value)
            .map_err(|e| ApiError::BadRequest(format!("worker_epoch: {e}")))
    }

    /// Loads the session the worker writes to, refuses the write (409) when the session
    /// is archived or the body's epoch is not the current one, and then reads the body as
    /// `T`.
    async fn fenced(
        self,
        state: &AppState,
        principal: &crate::auth::Principal,
        id: &str,
    ) -> Result<(switchboard_store::Session, T), ApiError> {
        let session = state
            .authorize_session(principal, id, Access::OwnerOrSessionWorker)
            .await?;
        AppState::refuse_archived(&session)?;
        AppState::check_epoch(principal, &session, self.epoch()?)?;
        let body = serde_json::from_value(Value::Object(self.body)).map_err(|e| {
            ApiError::BadRequest(format!("request body is not valid JSON here: {e}"))
        })?;
        Ok((session, body))
    }
}

/// `POST /v1/code/sessions`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OptionalJson(req): OptionalJson<CreateCodeSessionRequest>,
) -> Result<axum::Json<CreateCodeSessionResponse>, ApiError> {
    principal.require(Capability::Drive)?;
    let owner_id = AppState::require_owner(&principal)?;
    let session = state.create_code_session(owner_id, req).await?;
    Ok(axum::Json(state.code_session_resource(&session)?))
}

/// `POST /v1/code/sessions/{id}/bridge`: worker credentials (§10.2).
pub(crate) async fn credentials(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<BridgeCredentials>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state
        .authorize_session(&principal, &id, Access::OwnerOnly)
        .await?;
    Ok(axum::Json(state.worker_credentials(&session).await?))
}

/// `POST /v1/code/sessions/{id}/worker/register`.
pub(crate) async fn register(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<RegisterWorkerResponse>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state
        .authorize_session(&principal, &id, Access::OwnerOrSessionWorker)
        .await?;
    let worker_epoch = state.register_worker(&session).await?;
    Ok(axum::Json(RegisterWorkerResponse { worker_epoch }))
}

/// `PUT /v1/code/sessions/{id}/worker`.
pub(crate) async fn put_worker(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(body): Json<WorkerWrite<WorkerStateRequest>>,
) -> Result<axum::Json<Accepted>, ApiError> {
    principal.require(Capability::Drive)?;
    let (session, report) = body.fenced(&state, &principal, &id).await?;
    state
        .put_worker(&session, session.worker_epoch, report)
        .await?;
    Ok(axum::Json(Accepted {}))
}

/// `GET /v1/code/sessions/{id}/worker`.
pub(crate) async fn get_worker(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<WorkerResponse>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state
        .authorize_session(&principal, &id, Access::OwnerOrSessionWorker)
        .await?;
    Ok(axum::Json(state.worker_state(&session)))
}

/// `POST /v1/code/sessions/{id}/worker/heartbeat`.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(body): Json<WorkerWrite<HeartbeatRequest>>,
) -> Result<axum::Json<Accepted>, ApiError> {
    principal.require(Capability::Drive)?;
    let (session, _beat) = body.fenced(&state, &principal, &id).await?;
    state.worker_heartbeat(&session);
    Ok(axum::Json(Accepted {}))
}

/// `POST /v1/code/sessions/{id}/worker/events`.
pub(crate) async fn events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(body): Json<WorkerWrite<WorkerEventsRequest>>,
) -> Result<axum::Json<Accepted>, ApiError> {
    principal.require(Capability::Drive)?;
    let (session, req) = body.fenced(&state, &principal, &id).await?;
    state.worker_events(&session, req.events).await?;
    Ok(axum::Json(Accepted {}))
}

/// `POST /v1/code/sessions/{id}/worker/internal-events`.
pub(crate) async fn post_internal(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(body): Json<WorkerWrite<InternalEventsRequest>>,
) -> Result<axum::Json<Accepted>, ApiError> {
    principal.require(Capability::Drive)?;
    let (session, req) = body.fenced(&state, &principal, &id).await?;
    state.worker_internal_events(&session, req.events).await?;
    Ok(axum::Json(Accepted {}))
}

/// `GET /v1/code/sessions/{id}/worker/internal-events`.
pub(crate) async fn get_internal(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Query(q): Query<InternalEventsQuery>,
) -> Result<axum::Json<InternalEventsPage>, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state
        .authorize_session(&principal, &id, Access::OwnerOrSessionWorker)
        .await?;
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
    Json(body): Json<WorkerWrite<DeliveryRequest>>,
) -> Result<axum::Json<Accepted>, ApiError> {
    principal.require(Capability::Drive)?;
    let (session, req) = body.fenced(&state, &principal, &id).await?;
    state.worker_delivery(&session, req.updates).await?;
    Ok(axum::Json(Accepted {}))
}

/// `GET /v1/code/sessions/{id}/worker/events/stream`: SSE of inbound events.
pub(crate) async fn stream(
    State(state): State<AppState>,
    AuthWith(principal, credential): AuthWith,
    Path(id): Path<String>,
    Query(q): Query<EventStreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Capability::Drive)?;
    let session = state
        .authorize_session(&principal, &id, Access::OwnerOrSessionWorker)
        .await?;
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
