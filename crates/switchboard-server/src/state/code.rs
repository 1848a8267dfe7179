//! The v2 worker API (docs/PROTOCOL.md §9): worker credentials, epochs, worker state,
//! the worker's writes and delivery reports, and the code sessions it serves without an
//! environment (§10).
//!
//! The server calls this plane "the v2 worker API" everywhere (the protocol's own name);
//! its methods here are named `worker_*`. Requests and answers are the
//! `switchboard_proto::code` types.

use serde_json::{json, Value};
use switchboard_proto::code::{
    BridgeCredentials, CodeSession, CreateCodeSessionRequest, CreateCodeSessionResponse,
    DeliveryUpdate, InternalEvent, InternalEventsPage, StoredInternalEvent, WorkerEvent,
    WorkerInfo, WorkerResponse, WorkerStateRequest, WorkerStatus,
};
use switchboard_proto::SessionId;
use switchboard_store::{
    EventRef, NewInternalEvent, Session, SessionStatus, SigningKey, StoreError, WorkerUpdate,
};

use super::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::jwt::{self, WorkerClaims};
use crate::limits;
use crate::time::now_ms;

/// The event id a worker acknowledges a streamed event by: the message's `uuid` (so the
/// child's `processing`/`processed` updates, keyed by the prompt's uuid, name the same
/// event), or `seq-<n>` for messages without one.
pub(crate) fn event_id(uuid: Option<&str>, seq: u64) -> String {
    match uuid {
        Some(u) => u.to_string(),
        None => format!("seq-{seq}"),
    }
}

fn event_ref(id: &str) -> EventRef {
    match id.strip_prefix("seq-").and_then(|n| n.parse().ok()) {
        Some(seq) => EventRef::Seq(seq),
        None => EventRef::Uuid(id.to_string()),
    }
}

impl AppState {
    /// The live signing keys, newest first; the first call creates one if there is none.
    pub(crate) async fn signing_keys(&self) -> Result<Vec<SigningKey>, ApiError> {
        {
            let keys = self.inner.signing_keys.read().await;
            if !keys.is_empty() {
                return Ok(keys.clone());
            }
        }
        self.reload_signing_keys().await
    }

    /// Reads the live keys from the store again (another node or `switchboard token
    /// rotate-signing-key` may have changed them), creating one if there is none.
    pub async fn reload_signing_keys(&self) -> Result<Vec<SigningKey>, ApiError> {
        let mut keys = self.inner.signing_keys.write().await;
        let mut stored = self.store().signing_keys().await?;
        if stored.is_empty() {
            stored.push(jwt::rotate(self.store().as_ref(), false, now_ms()).await?);
        }
        *keys = stored;
        Ok(keys.clone())
    }

    /// `POST /v1/code/sessions`: a session served over v2, without an environment.
    pub(crate) async fn create_code_session(
        &self,
        owner_id: &str,
        req: CreateCodeSessionRequest,
    ) -> Result<Session, ApiError> {
        let tags = req.tags.unwrap_or_default();
        if tags.len() > limits::MAX_TAGS {
            return Err(ApiError::BadRequest(format!(
                "{} tags; at most {} are accepted",
                tags.len(),
                limits::MAX_TAGS
            )));
        }
        for tag in &tags {
            limits::check_len("a tag", tag, limits::MAX_TAG_BYTES)?;
        }
        let req = switchboard_proto::sessions::CreateSessionRequest {
            // An empty title is no title (`create_session` drops blank ones).
            title: Some(req.title),
            session_context: json!({ "tags": tags }),
            source: Some("code-session".into()),
            use_code_sessions: Some(true),
            ..Default::default()
        };
        self.create_session(owner_id, req).await
    }

    /// The answer to `POST /v1/code/sessions`: the session resource under its `cse_` id.
    pub(crate) fn code_session_resource(
        &self,
        session: &Session,
    ) -> Result<CreateCodeSessionResponse, ApiError> {
        let resource = self.session_resource(session);
        let session = CodeSession::from_resource(format!("cse_{}", session.id), &resource)
            .map_err(|e| ApiError::Internal(e.into()))?;
        Ok(CreateCodeSessionResponse { session })
    }

    /// `POST /v1/code/sessions/{id}/bridge`: a worker JWT for a new epoch.
    pub(crate) async fn worker_credentials(
        &self,
        session: &Session,
    ) -> Result<BridgeCredentials, ApiError> {
        if session.status == SessionStatus::Archived {
            return Err(ApiError::Conflict("session is archived".into()));
        }
        let epoch = self
            .store()
            .bump_worker_epoch(&session.id, now_ms())
            .await?;
        let ttl = self.options().worker_jwt_ttl.as_secs().max(1);
        let now = now_ms() / 1000;
        let keys = self.signing_keys().await?;
        let claims = WorkerClaims {
            session_id: SessionId::from_body(session.id.clone())
                .map_or_else(|| session.id.clone(), |id| id.cse()),
            owner: session.owner_id.clone(),
            epoch,
            role: "worker".into(),
            iat: now,
            exp: now + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
            nbf: None,
        };
        Ok(BridgeCredentials {
            worker_jwt: jwt::sign(&claims, &keys[0]),
            expires_in: ttl,
            api_base_url: self.public_url(),
            worker_epoch: epoch,
        })
    }

    /// `POST …/worker/register`: a new worker claims the session.
    pub(crate) async fn register_worker(&self, session: &Session) -> Result<u64, ApiError> {
        if session.status == SessionStatus::Archived {
            return Err(ApiError::Conflict("session is archived".into()));
        }
        Ok(self
            .store()
            .bump_worker_epoch(&session.id, now_ms())
            .await?)
    }

    /// Refuses writes from a worker whose epoch was superseded (409, so it stops).
    pub(crate) fn check_epoch(
        principal: &Principal,
        session: &Session,
        epoch: u64,
    ) -> Result<(), ApiError> {
        let token_epoch = match principal {
            Principal::Worker { epoch, .. } => Some(*epoch),
            _ => None,
        };
        if epoch != session.worker_epoch || token_epoch.is_some_and(|t| t != epoch) {
            return Err(ApiError::Conflict(format!(
                "worker epoch {epoch} was superseded (current: {})",
                session.worker_epoch
            )));
        }
        Ok(())
    }

    /// `PUT …/worker`: status, what the worker waits on, and a metadata patch.
    pub(crate) async fn put_worker(
        &self,
        session: &Session,
        epoch: u64,
        report: WorkerStateRequest,
    ) -> Result<(), ApiError> {
        let status = report.worker_status.map(|status| match status {
            WorkerStatus::Idle => SessionStatus::Idle,
            WorkerStatus::Running => SessionStatus::Running,
            WorkerStatus::RequiresAction => SessionStatus::RequiresAction,
        });
        let requires_action = match report.requires_action_details {
            Some(details) => Some(details),
            // Leaving `requires_action` clears what the worker waited on.
            None if status.is_some_and(|s| s != SessionStatus::RequiresAction) => Some(None),
            None => None,
        };
        let external_metadata = match report.external_metadata {
            None => None,
            Some(patch @ (Value::Object(_) | Value::Null)) => Some(patch),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "external_metadata must be an object".into(),
                ))
            }
        };
        let update = WorkerUpdate {
            status,
            requires_action,
            external_metadata,
        };
        match self
            .store()
            .update_worker(&session.id, epoch, &update, now_ms())
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict(m)) => return Err(ApiError::Conflict(m)),
            Err(e) => return Err(e.into()),
        }
        self.hub().channel(session).heartbeat();
        Ok(())
    }

    /// `GET …/worker`.
    pub(crate) fn worker_state(&self, session: &Session) -> WorkerResponse {
        WorkerResponse {
            worker: WorkerInfo {
                external_metadata: Some(session.external_metadata.clone()),
                internal_metadata: None,
                worker_status: Some(session.status.as_str().to_string()),
                worker_epoch: Some(session.worker_epoch),
                requires_action_details: Some(session.requires_action.clone()),
            },
        }
    }

    /// `POST …/worker/heartbeat`.
    pub(crate) fn worker_heartbeat(&self, session: &Session) {
        self.hub().channel(session).heartbeat();
    }

    /// `POST …/worker/events`: unwraps each `payload` and appends it.
    pub(crate) async fn worker_events(
        &self,
        session: &Session,
        events: Vec<WorkerEvent>,
    ) -> Result<(), ApiError> {
        limits::check_count("events", events.len())?;
        let mut payloads = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            if !event.payload.is_object() {
                return Err(ApiError::BadRequest(format!(
                    "event {i} needs a \"payload\" object"
                )));
            }
            payloads.push(event.payload);
        }
        self.hub().channel(session).heartbeat();
        self.append_outbound(session, payloads).await.map(drop)
    }

    /// `POST …/worker/events/delivery`.
    pub(crate) async fn worker_delivery(
        &self,
        session: &Session,
        updates: Vec<DeliveryUpdate>,
    ) -> Result<(), ApiError> {
        limits::check_count("delivery updates", updates.len())?;
        let updates: Vec<_> = updates
            .iter()
            .map(|u| (event_ref(&u.event_id), u.status.into()))
            .collect();
        Ok(self.store().set_delivery(&session.id, &updates).await?)
    }

    /// `POST …/worker/internal-events`.
    pub(crate) async fn worker_internal_events(
        &self,
        session: &Session,
        events: Vec<InternalEvent>,
    ) -> Result<(), ApiError> {
        limits::check_count("events", events.len())?;
        let mut stored = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            if !event.payload.is_object() {
                return Err(ApiError::BadRequest(format!(
                    "event {i} needs a \"payload\" object"
                )));
            }
            stored.push(NewInternalEvent {
                event_type: event
                    .payload
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .into(),
                payload: event.payload.to_string(),
                is_compaction: event.is_compaction,
                agent_id: event.agent_id,
            });
        }
        self.store()
            .append_internal_events(&session.id, &stored, now_ms())
            .await?;
        Ok(())
    }

    /// `GET …/worker/internal-events`: from the last compaction boundary on, paged.
    pub(crate) async fn worker_internal_page(
        &self,
        session: &Session,
        subagents: bool,
        cursor: Option<&str>,
    ) -> Result<InternalEventsPage, ApiError> {
        const PAGE: u32 = 500;
        let mut after = match cursor {
            Some(c) => c
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("cursor must come from next_cursor".into()))?,
            None => 0,
        };
        if cursor.is_none() {
            // Start at the newest compaction boundary: everything before it is summarized.
            let mut scan = 0;
            loop {
                let page = self
                    .store()
                    .internal_events(&session.id, scan, subagents, PAGE)
                    .await?;
                if let Some(boundary) = page.iter().rev().find(|e| e.is_compaction) {
                    after = boundary.seq - 1;
                }
                match page.last() {
                    Some(last) if page.len() == PAGE as usize => scan = last.seq,
                    _ => break,
                }
            }
        }
        let events = self
            .store()
            .internal_events(&session.id, after, subagents, PAGE)
            .await?;
        let next =
            (events.len() == PAGE as usize).then(|| events.last().map(|e| e.seq.to_string()));
        let data = events
            .into_iter()
            .map(|e| StoredInternalEvent {
                event_id: format!("int-{}", e.seq),
                event_type: e.event_type,
                payload: serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::Null),
                event_metadata: None,
                is_compaction: e.is_compaction,
                created_at: crate::time::iso(e.created_at),
                agent_id: e.agent_id,
            })
            .collect();
        Ok(InternalEventsPage {
            data,
            next_cursor: next.flatten(),
        })
    }
}
