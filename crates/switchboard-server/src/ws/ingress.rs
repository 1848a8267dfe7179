//! The session-ingress WebSocket (docs/PROTOCOL.md §8): the v1 worker's read stream.
//!
//! The server sends each inbound event (prompt, control request, permission answer) as
//! one JSON object plus `\n` per text frame, once, in log order; it never echoes the
//! worker's own writes. Inbound events that arrived while no worker was connected wait
//! in the log behind the session's worker cursor and go out when one connects.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use switchboard_store::{Direction, Session, SessionStatus};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::Instrument as _;

use super::viewer::CLOSE_TOO_SLOW;
use super::{close, close_code_for, reject, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_SESSION_GONE};
use crate::error::{ApiError, Path};
use crate::hub::{LogEvent, SessionChannel, WorkerGuard};
use crate::metrics::{GaugeGuard, Metrics};
use crate::state::AppState;

const KEEP_ALIVE_FRAME: &str = "{\"type\":\"keep_alive\"}\n";

/// `GET /v{1,2}/session_ingress/ws/{id}`.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let checked = authorize(&state, &headers, &id).await;
    let span = tracing::info_span!("ingress_ws", session = %id);
    ws.read_buffer_size(super::READ_BUFFER_BYTES)
        .write_buffer_size(super::WRITE_BUFFER_BYTES)
        .max_message_size(super::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            async move {
                match checked {
                    Ok(session) => run(state, socket, session).await,
                    Err(e) => {
                        tracing::info!(error = %e, "refusing worker connection");
                        reject(socket, close_code_for(&e), e.to_string()).await
                    }
                }
            }
            .instrument(span)
        })
}

async fn authorize(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Session, ApiError> {
    let (principal, _) = state.authenticate_request(headers).await?;
    let session = state.authorize_session(&principal, id, true).await?;
    principal.require(crate::roles::Capability::Drive)?;
    if session.status == SessionStatus::Archived {
        return Err(ApiError::NotFound("session is archived".into()));
    }
    Ok(session)
}

/// Why a connection ended, and the close frame it gets.
struct Ended(u16, &'static str);

async fn run(state: AppState, socket: WebSocket, session: Session) {
    let channel = state.hub().channel(&session.id);
    let mut worker = channel.attach_worker();
    let _gauge = GaugeGuard::new(&state.metrics().worker_connections);
    // Subscribe before reading the backlog, so nothing appended in between is missed.
    let mut live = channel.subscribe();
    let (mut sink, mut stream) = socket.split();
    tracing::info!("worker connected");

    let limit = state.options().worker_write_timeout;
    let ended = async {
        deliver(&state, &channel, &mut worker, &session.id, &mut sink, &[], true).await?;
        let period = state.options().ingress_keepalive;
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(event) => {
                        // Take everything already waiting, to send it as one batch.
                        let mut batch = vec![event];
                        let mut lagged = false;
                        loop {
                            match live.try_recv() {
                                Ok(event) => batch.push(event),
                                Err(TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if lagged || batch.iter().any(|e| e.direction == Direction::Inbound) {
                            deliver(&state, &channel, &mut worker, &session.id, &mut sink, &batch, lagged).await?;
                        }
                    }
                    // Fell behind the channel: the log has everything.
                    Err(RecvError::Lagged(_)) => {
                        deliver(&state, &channel, &mut worker, &session.id, &mut sink, &[], true).await?;
                    }
                    Err(RecvError::Closed) => return Err(Ended(CLOSE_SESSION_GONE, "session closed")),
                },
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        accept_worker_text(&state, &session, text.as_str()).await?;
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "worker socket failed");
                        return Ok(());
                    }
                },
                _ = keepalive.tick() => {
                    match tokio::time::timeout(limit, sink.send(Message::Text(KEEP_ALIVE_FRAME.into()))).await {
                        Ok(sent) => sent.map_err(|_| Ended(CLOSE_INTERNAL, ""))?,
                        Err(_) => return Err(stalled()),
                    }
                }
                _ = worker.superseded() => {
                    return Err(Ended(CLOSE_SESSION_GONE, "replaced by a newer worker connection"));
                }
                _ = channel.closed.cancelled() => return Err(Ended(CLOSE_SESSION_GONE, "session archived")),
                _ = state.shutdown().wait() => return Err(Ended(CLOSE_GOING_AWAY, "server shutting down")),
            }
        }
    }
    .await;
    drop(live);
    match ended {
        Ok(()) => tracing::info!("worker disconnected"),
        Err(Ended(code, reason)) => {
            tracing::info!(code, reason, "closing worker connection");
            // A worker that stopped reading may not take the close frame either; the
            // socket is dropped regardless.
            let _ = tokio::time::timeout(limit, close(&mut sink, code, reason)).await;
        }
    }
}

/// A worker whose socket took nothing for the write timeout: it is cut, and it (or its
/// replacement) gets the undelivered events again on its next connection.
fn stalled() -> Ended {
    Ended(CLOSE_TOO_SLOW, "worker stopped reading")
}

/// Hands inbound events past the session's worker cursor to this worker, in order, and
/// advances the cursor. Only the current worker connection delivers.
///
/// The delivery lock is held while the frames are written, so the writes are bounded: a
/// socket that takes nothing for the worker write timeout is cut, and a newer worker
/// connection of the session ends the writes at once, so a stalled socket never keeps
/// its replacement waiting.
///
/// `live` holds events just taken off the session's channel: while this connection has
/// followed the channel without a gap they are exactly what is new, so they go out as
/// they are, without a database read. After a gap (`from_log`: the reader lagged, or the
/// cursor is not known yet) the log is read from the cursor instead.
async fn deliver(
    state: &AppState,
    channel: &Arc<SessionChannel>,
    worker: &mut WorkerGuard,
    session_id: &str,
    sink: &mut SplitSink<WebSocket, Message>,
    live: &[Arc<LogEvent>],
    from_log: bool,
) -> Result<(), Ended> {
    let internal = |e: ApiError| {
        tracing::error!(error = ?e, "cannot read the session log");
        Ended(CLOSE_INTERNAL, "internal error")
    };
    let mut cursor_slot = channel.delivery.lock().await;
    if !worker.is_current() {
        return Ok(());
    }
    let (start, from_log) = match *cursor_slot {
        Some(c) => (c, from_log),
        None => {
            let stored = state
                .store()
                .session(session_id)
                .await
                .map_err(|e| internal(e.into()))?
                .worker_cursor;
            (stored, true)
        }
    };
    let mut cursor = start;
    let mut sent = 0;
    let writes = async {
        if !from_log {
            for event in live {
                if event.direction != Direction::Inbound || event.seq <= cursor {
                    continue;
                }
                send_frame(sink, &event.payload).await?;
                cursor = event.seq;
                sent += 1;
            }
        } else {
            loop {
                let pending = state
                    .pending_inbound(session_id, cursor)
                    .await
                    .map_err(internal)?;
                let full_page = pending.len() >= 100;
                for event in pending {
                    send_frame(sink, &event.payload).await?;
                    cursor = event.seq;
                    sent += 1;
                }
                if !full_page {
                    break;
                }
            }
        }
        sink.flush().await.map_err(|_| Ended(CLOSE_INTERNAL, ""))
    };
    let limit = state.options().worker_write_timeout;
    let result = tokio::select! {
        written = tokio::time::timeout(limit, writes) => written.unwrap_or_else(|_| Err(stalled())),
        () = worker.superseded() => Err(Ended(CLOSE_SESSION_GONE, "replaced by a newer worker connection")),
    };
    if result.is_err() {
        // Frames fed but maybe never sent: the next connection gets the batch again
        // (at least once; workers drop prompts they already have by uuid).
        *cursor_slot = Some(start);
        return result;
    }
    *cursor_slot = Some(cursor);
    drop(cursor_slot);
    Metrics::add(&state.metrics().events_delivered, sent);
    if cursor > start {
        state.store_worker_cursor_later(session_id, cursor);
    }
    Ok(())
}

/// Queues one inbound event as a frame (a JSON object and `\n`), without flushing.
async fn send_frame(sink: &mut SplitSink<WebSocket, Message>, payload: &str) -> Result<(), Ended> {
    let mut frame = String::with_capacity(payload.len() + 1);
    frame.push_str(payload);
    frame.push('\n');
    sink.feed(Message::Text(frame.into()))
        .await
        .map_err(|_| Ended(CLOSE_INTERNAL, ""))
}

/// A worker that writes over the socket instead of POSTing (no
/// `CLAUDE_CODE_POST_FOR_SESSION_INGRESS_V2`) sends newline-separated messages.
async fn accept_worker_text(state: &AppState, session: &Session, text: &str) -> Result<(), Ended> {
    let mut messages = Vec::new();
    for line in text.split('\n').map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => messages.push(v),
            Err(e) => tracing::warn!(error = %e, "ignoring a worker frame that is not JSON"),
        }
    }
    if messages.is_empty() {
        return Ok(());
    }
    state
        .append_outbound(session, messages)
        .await
        .map(drop)
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot store worker messages");
            Ended(CLOSE_INTERNAL, "cannot store messages")
        })
}
