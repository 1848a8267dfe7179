//! Appending to a session's log: the one path by which events enter it.

use serde_json::Value;
use switchboard_proto::messages::{self, is_keep_alive, message_type, message_uuid};
use switchboard_proto::sessions::SEQUENCE_FIELD;
use switchboard_store::{Appended, Direction, NewEvent, Session, SessionStatus};

use super::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::hub::LogEvent;
use crate::limits;
use crate::metrics::Metrics;
use crate::time::now_ms;

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
    ) -> Result<Vec<Accepted>, ApiError> {
        Self::refuse_archived(session)?;
        limits::check_count("events", messages.len())?;
        let mut events = Vec::with_capacity(messages.len());
        for (i, message) in messages.into_iter().enumerate() {
            if is_keep_alive(&message) {
                continue;
            }
            let message =
                messages::normalize_inbound(message, &mut || uuid::Uuid::new_v4().to_string())
                    .map_err(|e| ApiError::BadRequest(format!("event {i}: {e}")))?;
            let mut event = new_event(Direction::Inbound, message);
            event.sent_with = Some(sent_with.to_string());
            if event.payload.len() > MAX_INBOUND_EVENT_BYTES {
                return Err(ApiError::TooLarge(format!(
                    "event {i} is {} bytes; a message for the worker may be at most {MAX_INBOUND_EVENT_BYTES}",
                    event.payload.len()
                )));
            }
            events.push(event);
        }
        self.append_checked(session, events, None, true).await
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
        let plan = super::access::audit_plan(&messages);
        let accepted = self
            .append_inbound(session, messages, principal.class())
            .await?;
        self.audit_sent(principal, session, plan, &accepted).await;
        Ok(accepted)
    }

    async fn append(
        &self,
        session: &Session,
        events: Vec<NewEvent>,
        status: Option<(SessionStatus, Option<Value>)>,
    ) -> Result<Vec<Appended>, ApiError> {
        let accepted = self.append_checked(session, events, status, false).await?;
        Ok(accepted
            .into_iter()
            .filter_map(|a| match a {
                Accepted::Appended(a) => Some(a),
                Accepted::Ignored(_) => None,
            })
            .collect())
    }

    async fn append_checked(
        &self,
        session: &Session,
        events: Vec<NewEvent>,
        status: Option<(SessionStatus, Option<Value>)>,
        check_answers: bool,
    ) -> Result<Vec<Accepted>, ApiError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let channel = self.hub().channel(&session.id);
        let accepted = {
            let _in_order = channel.append.lock().await;
            let mut verdicts: Vec<Option<String>> = Vec::with_capacity(events.len());
            let mut answered = std::collections::HashSet::new();
            let mut answers_pending = false;
            for event in &events {
                let verdict = match (&event.request_id, event.kind == "control_response") {
                    // A worker echoes the permission answer it got (docs/PROTOCOL.md
                    // §12.6): the answer is in the log already.
                    (Some(request_id), true) if event.direction == Direction::Outbound => {
                        let prior = self
                            .store()
                            .events_by_request(&session.id, request_id)
                            .await?;
                        is_echo(event, &prior)
                            .then(|| format!("the worker's echo of the answer to {request_id}"))
                    }
                    (Some(request_id), true) if check_answers => {
                        let prior = self
                            .store()
                            .events_by_request(&session.id, request_id)
                            .await?;
                        let asked = prior.iter().any(|e| {
                            e.direction == Direction::Outbound && e.kind == "control_request"
                        });
                        let resolved = !answered.insert(request_id.clone())
                            || prior.iter().any(|e| {
                                e.kind == "control_response" || e.kind == "control_cancel_request"
                            });
                        if !asked {
                            Some(format!("no pending request {request_id}"))
                        } else if resolved {
                            Some(format!("request {request_id} was already answered"))
                        } else {
                            answers_pending = true;
                            None
                        }
                    }
                    _ => None,
                };
                verdicts.push(verdict);
            }
            let to_store: Vec<NewEvent> = events
                .into_iter()
                .zip(&verdicts)
                .filter(|(_, v)| v.is_none())
                .map(|(e, _)| e)
                .collect();
            let now = now_ms();
            let appended = if to_store.is_empty() {
                Vec::new()
            } else {
                self.store()
                    .append_events(&session.id, &to_store, now)
                    .await?
            };
            for (event, outcome) in to_store.into_iter().zip(&appended) {
                if outcome.duplicate {
                    continue;
                }
                Metrics::add(&self.metrics().events_appended, 1);
                // A permission request, a finished turn, an answer…: someone may want to
                // know (the worker's own control responses answer viewers, not requests).
                let answer = event.kind == "control_response";
                if (event.direction == Direction::Outbound) != answer {
                    if let Some(signal) = crate::notify::classify(&event.kind, &event.payload) {
                        self.notify_event(session, signal);
                    }
                }
                self.policy_on_stored(session, &event);
                channel.publish(LogEvent {
                    seq: outcome.seq,
                    direction: event.direction,
                    kind: event.kind,
                    uuid: event.uuid,
                    created_at: now,
                    payload: event.payload,
                    offset: 0,
                });
            }
            self.advance_status(&session.id, &channel, status, answers_pending)
                .await?;
            let mut appended = appended.into_iter();
            verdicts
                .into_iter()
                .map(|v| match v {
                    Some(reason) => {
                        tracing::info!(%reason, "not storing a permission answer");
                        Ok(Accepted::Ignored(reason))
                    }
                    None => appended.next().map(Accepted::Appended).ok_or_else(|| {
                        ApiError::Internal(anyhow::anyhow!("store returned too few outcomes"))
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(accepted)
    }

    /// Moves a session's status as the messages just stored say, against the status as
    /// last stored (cached in the channel), and stores it when it changed. Call with the
    /// append lock held.
    async fn advance_status(
        &self,
        session_id: &str,
        channel: &crate::hub::SessionChannel,
        derived: Option<(SessionStatus, Option<Value>)>,
        answered: bool,
    ) -> Result<(), ApiError> {
        if derived.is_none() && !answered {
            return Ok(());
        }
        let cached = channel.status.lock().expect("status lock poisoned").clone();
        let current = match cached {
            Some(current) => current,
            None => {
                let s = self.store().session(session_id).await?;
                (s.status, s.requires_action)
            }
        };
        let next = match derived {
            Some(next) => next,
            // A viewer answered the request the worker waited on: it runs again.
            None if current.0 == SessionStatus::RequiresAction => (SessionStatus::Running, None),
            None => return Ok(()),
        };
        if current.0 == SessionStatus::Archived || next == current {
            return Ok(());
        }
        self.store()
            .set_session_status(session_id, next.0, next.1.as_ref(), now_ms())
            .await?;
        *channel.status.lock().expect("status lock poisoned") = Some(next);
        Ok(())
    }
}

/// Whether a worker's `control_response` repeats an answer the log already holds: an
/// inbound `control_response` to the same request with the same `response`. (An
/// answer the worker got elsewhere, e.g. at its own terminal, differs and is stored.)
fn is_echo(event: &NewEvent, prior: &[switchboard_store::StoredEvent]) -> bool {
    let response = |payload: &str| {
        serde_json::from_str::<Value>(payload)
            .ok()
            .and_then(|mut v| v.get_mut("response").map(Value::take))
    };
    let Some(echoed) = response(&event.payload) else {
        return false;
    };
    prior.iter().any(|e| {
        e.direction == Direction::Inbound
            && e.kind == "control_response"
            && response(&e.payload).as_ref() == Some(&echoed)
    })
}

/// What became of one message sent towards the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Stored (or already stored, for a repeated uuid).
    Appended(Appended),
    /// Not stored, and why: an answer to a request that is not pending.
    Ignored(String),
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
        sent_with: None,
    }
}

/// What a worker's message says about the session's state, and the permission request
/// it waits on (docs/PROTOCOL.md §9.3 gives the same rules for v2 workers).
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
