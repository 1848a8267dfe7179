//! The viewer subscribe WebSocket (docs/PROTOCOL.md §13.1): a session's stored history from a
//! sequence number, then every new event live, one JSON object per frame with its
//! `sequence_num`; and, from the viewer, prompts and control messages for the worker.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_proto::ErrorBody;
use switchboard_store::{EventQuery, Session};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::Instrument as _;

use super::{
    close, close_code_for, reject, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_SESSION_GONE,
    CLOSE_UNAUTHORIZED,
};
use crate::auth::Principal;
use crate::error::{ApiError, Path, Query};
use crate::hub::{with_sequence, SessionChannel};
use crate::metrics::{GaugeGuard, Metrics};
use crate::revocation::{self, Watch};
use crate::roles::Capability;
use crate::state::AppState;

/// Close code for a viewer that fell too far behind; it reconnects and resumes from
/// the last `sequence_num` it saw (1013: "try again later").
pub(crate) const CLOSE_TOO_SLOW: u16 = 1013;

/// How many stored events one backlog read takes.
const BACKLOG_PAGE: u32 = 500;

/// Query of the subscribe URL.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubscribeQuery {
    /// Send only events after this sequence number.
    from_sequence_num: Option<u64>,
}

/// `GET /v1/sessions/ws/{id}/subscribe`.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SubscribeQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let checked = authorize(&state, &headers, &id).await;
    let span = tracing::info_span!("viewer_ws", session = %id);
    ws.read_buffer_size(super::READ_BUFFER_BYTES)
        .write_buffer_size(super::WRITE_BUFFER_BYTES)
        .max_message_size(super::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            async move {
                match checked {
                    Ok((session, watch, principal)) => {
                        run(
                            state,
                            socket,
                            session,
                            q.from_sequence_num,
                            watch,
                            principal,
                        )
                        .await
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "refusing viewer connection");
                        reject(socket, close_code_for(&e), e.to_string()).await
                    }
                }
            }
            .instrument(span)
        })
}

async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Session, Option<Watch>, Principal), ApiError> {
    let (principal, credential) = state.authenticate_request(headers).await?;
    let session = state.authorize_session(&principal, id, false).await?;
    principal.require(Capability::Read)?;
    // Registered before the upgrade completes, so a revocation in between is not missed.
    Ok((
        session,
        state.watch_revocation(credential.as_ref()),
        principal,
    ))
}

struct Ended(u16, String);

/// How far a viewer is behind its session's channel, in bytes: what it has not taken off
/// the channel yet, which the channel keeps for it (up to its capacity in events). A
/// viewer beyond `max` is cut, so one that stops reading cannot pin the session's big
/// events in memory.
struct Lag {
    channel: std::sync::Arc<SessionChannel>,
    /// The channel's `published_bytes` up to the last event this viewer took.
    taken: u64,
    max: u64,
}

impl Lag {
    fn behind(&self) -> u64 {
        self.channel.published_bytes().saturating_sub(self.taken)
    }

    fn exceeded(&self) -> bool {
        self.behind() > self.max
    }
}

async fn run(
    state: AppState,
    socket: WebSocket,
    session: Session,
    from: Option<u64>,
    watch: Option<Watch>,
    principal: Principal,
) {
    let channel = state.hub().channel(&session.id);
    let gauge = GaugeGuard::new(&state.metrics().viewer_connections);
    // Everything published from here on counts against the viewer until it takes it.
    let mut lag = Lag {
        channel: channel.clone(),
        taken: channel.published_bytes(),
        max: state.options().viewer_max_lag_bytes,
    };
    // Subscribe before reading the backlog; overlap is skipped by sequence number.
    let mut live = channel.subscribe();
    let (mut sink, mut stream) = socket.split();
    let mut last = match from {
        Some(from) => from,
        None => state.viewer_backlog_start(&session).await.unwrap_or(0),
    };

    let limit = state.options().viewer_write_timeout;
    let ended: Result<(), Ended> = async {
        last = send_backlog(&state, &session.id, last, &mut sink, &lag).await?;
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(event) => {
                        let mut sent = 0;
                        let mut next = Some(event);
                        // Forward everything already waiting as one batch, then flush once.
                        while let Some(event) = next.take() {
                            lag.taken = lag.taken.max(event.offset);
                            if event.seq > last {
                                let frame = Message::Text(event.with_sequence().into());
                                bounded(limit, last, sink.feed(frame), &lag).await?;
                                last = event.seq;
                                sent += 1;
                            }
                            match live.try_recv() {
                                Ok(more) => next = Some(more),
                                Err(TryRecvError::Lagged(_)) => return Err(too_slow(last)),
                                Err(_) => {}
                            }
                        }
                        bounded(limit, last, sink.flush(), &lag).await?;
                        Metrics::add(&state.metrics().events_delivered, sent);
                    }
                    Err(RecvError::Lagged(_)) => return Err(too_slow(last)),
                    Err(RecvError::Closed) => return Err(Ended(CLOSE_SESSION_GONE, "session closed".into())),
                },
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = accept_viewer_text(&state, &session, &principal, text.as_str()).await {
                            bounded(limit, last, sink.send(Message::Text(reply.to_string().into())), &lag).await?;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return Ok(()),
                },
                _ = channel.closed.cancelled() => return Err(Ended(CLOSE_SESSION_GONE, "session archived".into())),
                _ = revocation::revoked(watch.as_ref()) => return Err(Ended(CLOSE_UNAUTHORIZED, "credential revoked".into())),
                _ = state.shutdown().wait() => return Err(Ended(CLOSE_GOING_AWAY, "server shutting down".into())),
            }
        }
    }
    .await;
    // Let go of the channel first: a viewer that is cut must not keep the session's
    // events alive while its close frame waits. It no longer counts as connected.
    drop(live);
    drop(gauge);
    if let Err(Ended(code, reason)) = ended {
        tracing::info!(code, %reason, "closing viewer connection");
        // A viewer that stopped reading may not take the close frame either.
        let _ = tokio::time::timeout(limit, close(&mut sink, code, &reason)).await;
    }
}

fn gone<E>(_: E) -> Ended {
    Ended(CLOSE_INTERNAL, String::new())
}

/// Runs a socket write, giving up when the viewer accepts nothing for `limit`, or when
/// it falls more than its byte bound behind the session meanwhile: a reader that stops
/// reading must not hold the server's memory or its place in the channel.
async fn bounded<F, E>(
    limit: std::time::Duration,
    last: u64,
    write: F,
    lag: &Lag,
) -> Result<(), Ended>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    let write = tokio::time::timeout(limit, write);
    tokio::pin!(write);
    loop {
        // Registered before the check, so a publish in between still wakes us.
        let grown = lag.channel.grown();
        tokio::pin!(grown);
        grown.as_mut().enable();
        if lag.exceeded() {
            return Err(too_slow(last));
        }
        tokio::select! {
            written = &mut write => {
                return match written {
                    Ok(result) => result.map_err(gone),
                    Err(_) => Err(too_slow(last)),
                };
            }
            () = &mut grown => {}
        }
    }
}

fn too_slow(last: u64) -> Ended {
    Ended(
        CLOSE_TOO_SLOW,
        format!("viewer fell behind; resume from sequence_num {last}"),
    )
}

/// Streams stored events after `after`, page by page; returns the last one sent.
async fn send_backlog(
    state: &AppState,
    session_id: &str,
    mut after: u64,
    sink: &mut SplitSink<WebSocket, Message>,
    lag: &Lag,
) -> Result<u64, Ended> {
    loop {
        let query = EventQuery {
            after: Some(after),
            limit: BACKLOG_PAGE,
            ..Default::default()
        };
        let events = state
            .store()
            .events(session_id, &query)
            .await
            .map_err(|e| {
                tracing::error!(error = ?e, "cannot read the session log");
                Ended(CLOSE_INTERNAL, "internal error".into())
            })?;
        let count = events.len();
        let limit = state.options().viewer_write_timeout;
        for event in events {
            let frame = Message::Text(with_sequence(&event.payload, event.seq).into());
            bounded(limit, after, sink.feed(frame), lag).await?;
            after = event.seq;
        }
        bounded(limit, after, sink.flush(), lag).await?;
        Metrics::add(&state.metrics().events_delivered, count as u64);
        if count < BACKLOG_PAGE as usize {
            return Ok(after);
        }
    }
}

/// Handles a frame from the viewer: one message for the worker. Returns an error frame
/// for the viewer when the message is refused.
async fn accept_viewer_text(
    state: &AppState,
    session: &Session,
    principal: &Principal,
    text: &str,
) -> Option<Value> {
    let message: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_frame(&ApiError::BadRequest(format!(
                "frame is not JSON: {e}"
            ))))
        }
    };
    // The caller's role is checked (and what it sends audited) as for the same message
    // posted to `/v1/sessions/{id}/events`.
    match state
        .post_session_events(principal, session, vec![message])
        .await
    {
        Ok(_) => None,
        Err(e) => Some(error_frame(&e)),
    }
}

fn error_frame(e: &ApiError) -> Value {
    let body = match e {
        ApiError::Internal(_) => ErrorBody::new("api_error", "internal server error"),
        other => ErrorBody::new(error_kind(other), other.to_string()),
    };
    json!({ "type": "error", "error": body.error })
}

fn error_kind(e: &ApiError) -> &'static str {
    use switchboard_proto::error::kinds;
    match e {
        ApiError::BadRequest(_) => kinds::INVALID_REQUEST,
        ApiError::Conflict(_) => kinds::CONFLICT,
        ApiError::NotFound(_) => kinds::NOT_FOUND,
        ApiError::Unauthorized(_) | ApiError::Forbidden(_) | ApiError::Expired(_) => {
            kinds::PERMISSION
        }
        _ => kinds::API,
    }
}
