//! Appending to a session's log: the one path by which events enter it.
//!
//! Under the session's append lock, in this order: [`vet`] (which permission answers
//! may be stored), [`store`] (commit, with sequence numbers), then per stored event
//! [`count`], the notification hook and [`publish`] (so the channel sees events in
//! sequence order), and last [`advance_status`].

use std::collections::HashSet;

use serde_json::Value;
use switchboard_store::{Appended, Direction, NewEvent, Session, SessionStatus, StoredEvent};

use super::hub::{LogEvent, SessionChannel};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::time::now_ms;

/// A session status and the request it waits on, as a worker's messages say.
pub(crate) type Status = (SessionStatus, Option<Value>);

/// Which permission answers an append checks before storing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vetting {
    /// Messages for the worker: a `control_response` is stored only while its request
    /// is pending (first answer wins; an answer to a request never asked is ignored).
    Answers,
    /// The worker's own messages: stored as they are, except its echo of an answer the
    /// log already holds.
    None,
}

/// An event on its way into the log, with what it means for notifications (worked out
/// by the caller from the message as parsed once, rather than from its stored text).
pub(crate) struct Incoming {
    pub(crate) event: NewEvent,
    pub(crate) signal: Option<crate::notify::Signal>,
}

/// What became of one message sent towards the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Stored (or already stored, for a repeated uuid).
    Appended(Appended),
    /// Not stored, and why: an answer to a request that is not pending.
    Ignored(String),
}

/// Appends events to a session's log, in order, and publishes them on its channel.
/// `status` is what the events say about the session (worker messages); a stored
/// answer to the pending request makes a waiting session run again.
///
/// Returns one outcome per event, in order.
pub(crate) async fn append(
    state: &AppState,
    session: &Session,
    events: Vec<Incoming>,
    status: Option<Status>,
    vetting: Vetting,
) -> Result<Vec<Accepted>, ApiError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let channel = state.hub().channel(session);
    let _in_order = channel.append.lock().await;
    let (events, signals): (Vec<NewEvent>, Vec<Option<crate::notify::Signal>>) =
        events.into_iter().map(|i| (i.event, i.signal)).unzip();
    let vetted = vet(state, &session.id, &events, vetting).await?;
    let (to_store, signals): (Vec<NewEvent>, Vec<Option<crate::notify::Signal>>) = events
        .into_iter()
        .zip(signals)
        .zip(&vetted.verdicts)
        .filter(|(_, v)| v.is_none())
        .map(|(e, _)| e)
        .unzip();
    let now = now_ms();
    let appended = store(state, &session.id, &to_store, now).await?;
    for ((event, signal), outcome) in to_store.into_iter().zip(signals).zip(&appended) {
        if outcome.duplicate {
            continue;
        }
        count(state);
        if let Some(signal) = signal {
            state.notify_event(session, signal);
        }
        state.policy_on_stored(session, &event);
        publish(state, &session.id, &channel, event, outcome.seq, now).await;
    }
    advance_status(state, &session.id, &channel, status, vetted.answers_pending).await?;
    let mut appended = appended.into_iter();
    vetted
        .verdicts
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
        .collect()
}

/// What [`vet`] decided.
struct Vetted {
    /// Per event: `None` to store it, or why it is not stored.
    verdicts: Vec<Option<String>>,
    /// Whether an answer to a pending request is among the events to store.
    answers_pending: bool,
}

/// Decides which events are stored: a permission answer reaches the worker at most once
/// and is stored once. Reads the log, so call it with the append lock held.
async fn vet(
    state: &AppState,
    session_id: &str,
    events: &[NewEvent],
    vetting: Vetting,
) -> Result<Vetted, ApiError> {
    let mut verdicts = Vec::with_capacity(events.len());
    let mut answered = HashSet::new();
    let mut answers_pending = false;
    for event in events {
        let verdict = match (&event.request_id, event.kind == "control_response") {
            // A worker echoes the permission answer it got (docs/PROTOCOL.md §12.6): the
            // answer is in the log already.
            (Some(request_id), true) if event.direction == Direction::Outbound => {
                let prior = state
                    .store()
                    .events_by_request(session_id, request_id)
                    .await?;
                is_echo(event, &prior)
                    .then(|| format!("the worker's echo of the answer to {request_id}"))
            }
            (Some(request_id), true) if vetting == Vetting::Answers => {
                let prior = state
                    .store()
                    .events_by_request(session_id, request_id)
                    .await?;
                let asked = prior
                    .iter()
                    .any(|e| e.direction == Direction::Outbound && e.kind == "control_request");
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
    Ok(Vetted {
        verdicts,
        answers_pending,
    })
}

/// Commits events to the log; each gets its sequence number (or the one it already had,
/// for a repeated uuid).
async fn store(
    state: &AppState,
    session_id: &str,
    events: &[NewEvent],
    now: switchboard_store::Millis,
) -> Result<Vec<Appended>, ApiError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    Ok(state.store().append_events(session_id, events, now).await?)
}

/// Counts one newly stored event.
fn count(state: &AppState) {
    Metrics::add(&state.metrics().events_appended, 1);
}

/// Publishes a newly stored event on the session's channel. Call with the append lock
/// held, in sequence order.
async fn publish(
    state: &AppState,
    session_id: &str,
    channel: &SessionChannel,
    event: NewEvent,
    seq: u64,
    created_at: switchboard_store::Millis,
) {
    let event = LogEvent {
        seq,
        direction: event.direction,
        kind: event.kind,
        uuid: event.uuid,
        created_at,
        payload: event.payload,
        offset: 0,
    };
    // After any event another node appended before it (a no-op on one node).
    super::cluster::publish_in_order(state, session_id, channel, event).await;
}

/// Moves a session's status as the messages just stored say, against the status as
/// last stored (cached in the channel), and stores it when it changed. Call with the
/// append lock held.
async fn advance_status(
    state: &AppState,
    session_id: &str,
    channel: &SessionChannel,
    derived: Option<Status>,
    answered: bool,
) -> Result<(), ApiError> {
    if derived.is_none() && !answered {
        return Ok(());
    }
    let cached = channel.status.lock().expect("status lock poisoned").clone();
    let current = match cached {
        Some(current) => current,
        None => {
            let s = state.store().session(session_id).await?;
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
    state
        .store()
        .set_session_status(session_id, next.0, next.1.as_ref(), now_ms())
        .await?;
    *channel.status.lock().expect("status lock poisoned") = Some(next);
    Ok(())
}

/// Whether a worker's `control_response` repeats an answer the log already holds: an
/// inbound `control_response` to the same request with the same `response`. (An
/// answer the worker got elsewhere, e.g. at its own terminal, differs and is stored.)
fn is_echo(event: &NewEvent, prior: &[StoredEvent]) -> bool {
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
