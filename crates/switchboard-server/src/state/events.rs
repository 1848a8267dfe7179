//! Appending to a session's log: the one path by which events enter it.

use std::sync::Arc;

use serde_json::Value;
use switchboard_proto::messages::{self, is_keep_alive, message_type, message_uuid};
use switchboard_proto::sessions::SEQUENCE_FIELD;
use switchboard_store::{Appended, Direction, NewEvent, Session, SessionStatus};

use super::AppState;
use crate::error::ApiError;
use crate::hub::LogEvent;
use crate::metrics::Metrics;
use crate::time::now_ms;

/// The largest message a viewer may send towards a worker. The worker's SSE reader drops
/// any frame over 1 MiB (PROTOCOL.md §9.8), and the frame wraps the message in an
/// envelope, so stay clear of that.
pub(crate) const MAX_INBOUND_EVENT_BYTES: usize = 1000 * 1024;

impl AppState {
    /// Appends messages a worker wrote (assistant output, tool results, permission
    /// requests…) to the session's log. `keep_alive` is dropped; everything else is
    /// stored verbatim, deduplicated by `uuid`.
    pub(crate) async fn append_outbound(
        &self,
        session: &Session,
        messages: Vec<Value>,
    ) -> Result<Vec<Appended>, ApiError> {
        let mut events = Vec::with_capacity(messages.len());
        let mut status = None;
        for (i, message) in messages.into_iter().enumerate() {
            if is_keep_alive(&message) {
                continue;
            }
            if !message.is_object() {
                return Err(ApiError::BadRequest(format!(
                    "event {i} is not a JSON object"
                )));
            }
            if let Some(derived) = derive_status(&message) {
                status = Some(derived);
            }
            events.push(new_event(Direction::Outbound, message));
        }
        self.append(session, events, status).await
    }

    /// Appends messages meant for the worker (prompts, control requests, permission
    /// answers) after checking each one; nothing is stored unless every one is valid.
    pub(crate) async fn append_inbound(
        &self,
        session: &Session,
        messages: Vec<Value>,
    ) -> Result<Vec<Appended>, ApiError> {
        if session.status == SessionStatus::Archived {
            return Err(ApiError::Conflict("session is archived".into()));
        }
        let mut events = Vec::with_capacity(messages.len());
        for (i, message) in messages.into_iter().enumerate() {
            if is_keep_alive(&message) {
                continue;
            }
            let message =
                messages::normalize_inbound(message, &mut || uuid::Uuid::new_v4().to_string())
                    .map_err(|e| ApiError::BadRequest(format!("event {i}: {e}")))?;
            let event = new_event(Direction::Inbound, message);
            if event.payload.len() > MAX_INBOUND_EVENT_BYTES {
                return Err(ApiError::TooLarge(format!(
                    "event {i} is {} bytes; a message for the worker may be at most {MAX_INBOUND_EVENT_BYTES}",
                    event.payload.len()
                )));
            }
            events.push(event);
        }
        self.append(session, events, None).await
    }

    async fn append(
        &self,
        session: &Session,
        events: Vec<NewEvent>,
        status: Option<(SessionStatus, Option<Value>)>,
    ) -> Result<Vec<Appended>, ApiError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let channel = self.hub().channel(&session.id);
        let appended = {
            let _in_order = channel.append.lock().await;
            let now = now_ms();
            let appended = self
                .store()
                .append_events(&session.id, &events, now)
                .await?;
            for (event, outcome) in events.into_iter().zip(&appended) {
                if outcome.duplicate {
                    continue;
                }
                Metrics::add(&self.metrics().events_appended, 1);
                channel.publish(Arc::new(LogEvent {
                    seq: outcome.seq,
                    direction: event.direction,
                    payload: event.payload,
                }));
            }
            appended
        };
        if let Some((status, pending)) = status {
            let changed = status != session.status || pending != session.requires_action;
            if changed && session.status != SessionStatus::Archived {
                self.store()
                    .set_session_status(&session.id, status, pending.as_ref(), now_ms())
                    .await?;
            }
        }
        Ok(appended)
    }
}

fn new_event(direction: Direction, mut message: Value) -> NewEvent {
    if let Some(obj) = message.as_object_mut() {
        // The server attaches its own sequence number on the way out.
        obj.remove(SEQUENCE_FIELD);
    }
    NewEvent {
        direction,
        kind: message_type(&message).unwrap_or("unknown").to_string(),
        uuid: message_uuid(&message).map(str::to_string),
        request_id: messages::control_request_id(&message).map(str::to_string),
        payload: message.to_string(),
    }
}

/// What a worker's message says about the session's state, and the permission request
/// it waits on (PROTOCOL.md §9.3 gives the same rules for v2 workers).
fn derive_status(message: &Value) -> Option<(SessionStatus, Option<Value>)> {
    match message_type(message)? {
        "result" | "result_success" => Some((SessionStatus::Idle, None)),
        "assistant" | "stream_event" | "tool_progress" => Some((SessionStatus::Running, None)),
        "control_request" => {
            let subtype = message.get("request")?.get("subtype")?.as_str()?;
            matches!(subtype, "can_use_tool" | "elicitation")
                .then(|| (SessionStatus::RequiresAction, Some(message.clone())))
        }
        "control_response" | "control_cancel_request" => Some((SessionStatus::Running, None)),
        _ => None,
    }
}
