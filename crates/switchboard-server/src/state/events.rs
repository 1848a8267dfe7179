//! What may be appended to a session's log, and by whom: the operations that check and
//! shape messages before [`log::append`] takes them in.

use serde_json::Value;
use switchboard_proto::messages::{self, is_keep_alive, message_type, message_uuid};
use switchboard_proto::sessions::SEQUENCE_FIELD;
use switchboard_store::{Appended, Direction, NewEvent, Session, SessionStatus};

use super::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits;
use crate::log::{self, Accepted, Incoming, Status, Vetting};

/// The largest message a viewer may send towards a worker. The worker's SSE reader drops
/// any frame over 1 MiB (docs/PROTOCOL.md §9.8), and the frame wraps the message in an
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
        Self::refuse_archived(session)?;
        limits::check_count("events", messages.len())?;
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
    ///
    /// A permission answer (`control_response`) is stored only while its request is
    /// pending: an answer to a request that was already answered (by another viewer, or
    /// at the worker itself) or that was never asked is ignored, so the worker never gets
    /// two answers. The check runs under the session's append lock, so two viewers
    /// answering at once cannot both get through.
    pub(crate) async fn append_inbound(
        &self,
        session: &Session,
        messages: Vec<Value>,
        sent_with: &str,
        audited_as: Option<&crate::admin::Actor>,
    ) -> Result<Vec<Accepted>, ApiError> {
        Self::refuse_archived(session)?;
        limits::check_count("events", messages.len())?;
        let now = crate::time::now_ms();
        let mut events = Vec::with_capacity(messages.len());
        for (i, message) in messages.into_iter().enumerate() {
            if is_keep_alive(&message) {
                continue;
            }
            let message =
                messages::normalize_inbound(message, &mut || uuid::Uuid::new_v4().to_string())
                    .map_err(|e| ApiError::BadRequest(format!("event {i}: {e}")))?;
            let audit = audited_as
                .and_then(|actor| super::access::sent_entry(actor, session, &message, now));
            let mut incoming = new_event(Direction::Inbound, message);
            let event = &mut incoming.event;
            event.sent_with = Some(sent_with.to_string());
            event.audit = audit;
            if event.payload.len() > MAX_INBOUND_EVENT_BYTES {
                return Err(ApiError::TooLarge(format!(
                    "event {i} is {} bytes; a message for the worker may be at most {MAX_INBOUND_EVENT_BYTES}",
                    event.payload.len()
                )));
            }
            events.push(incoming);
        }
        log::append(self, session, events, None, Vetting::Answers).await
    }

    /// An archived session takes no more writes, from its worker or anyone (409).
    pub(crate) fn refuse_archived(session: &Session) -> Result<(), ApiError> {
        if session.status == SessionStatus::Archived || session.archived_at.is_some() {
            return Err(ApiError::Conflict("session is archived".into()));
        }
        Ok(())
    }

    /// Messages posted to `POST /v1/sessions/{id}/events`. The owner may send anything
    /// a viewer may. A worker credential (ingress token, worker JWT) may send only what
    /// the protocol has it send there: the answer to a permission request of its own
    /// session that the local user gave at the terminal (docs/PROTOCOL.md §4.8), never a
    /// prompt or a control request (which could, say, raise the permission mode: the
    /// agent hands its session token to every command it runs). Each stored event keeps
    /// the class of credential that sent it.
    pub(crate) async fn post_session_events(
        &self,
        principal: &Principal,
        session: &Session,
        messages: Vec<Value>,
    ) -> Result<Vec<Accepted>, ApiError> {
        if principal.is_worker() {
            for (i, message) in messages.iter().enumerate() {
                if is_keep_alive(message) {
                    continue;
                }
                if message_type(message) != Some("control_response")
                    || messages::control_request_id(message).is_none()
                {
                    return Err(ApiError::Forbidden(format!(
                        "event {i}: a worker credential may only post answers to permission \
                         requests (control_response with a request_id) here; prompts and \
                         control requests need the owner's API key"
                    )));
                }
            }
        }
        crate::roles::check_messages(principal, &messages)?;
        // Each message is stored with its audit entry, in one transaction.
        let actor = crate::admin::Actor::of(principal);
        self.append_inbound(session, messages, principal.class(), Some(&actor))
            .await
    }

    /// Appends the worker's messages (no answers to vet, only its echoes of them).
    async fn append(
        &self,
        session: &Session,
        events: Vec<Incoming>,
        status: Option<Status>,
    ) -> Result<Vec<Appended>, ApiError> {
        let accepted = log::append(self, session, events, status, Vetting::None).await?;
        Ok(accepted
            .into_iter()
            .filter_map(|a| match a {
                Accepted::Appended(a) => Some(a),
                Accepted::Ignored(_) => None,
            })
            .collect())
    }
}

fn new_event(direction: Direction, mut message: Value) -> Incoming {
    if let Some(obj) = message.as_object_mut() {
        // The server attaches its own sequence number on the way out.
        obj.remove(SEQUENCE_FIELD);
    }
    let kind = message_type(&message).unwrap_or("unknown").to_string();
    // A permission request, a finished turn, an answer…: someone may want to know (the
    // worker's own control responses answer viewers, not requests).
    let answer = kind == "control_response";
    let signal = if (direction == Direction::Outbound) != answer {
        crate::notify::classify(&kind, &message)
    } else {
        None
    };
    Incoming {
        event: NewEvent {
            direction,
            uuid: message_uuid(&message).map(str::to_string),
            request_id: messages::control_request_id(&message).map(str::to_string),
            payload: message.to_string(),
            sent_with: None,
            audit: None,
            kind,
        },
        signal,
    }
}

/// What a worker's message says about the session's state, and the permission request
/// it waits on (docs/PROTOCOL.md §9.3 gives the same rules for v2 workers).
fn derive_status(message: &Value) -> Option<Status> {
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
