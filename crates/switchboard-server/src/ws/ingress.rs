//! The session-ingress WebSocket (docs/PROTOCOL.md §8): the v1 worker's read stream.
//!
//! The server sends each inbound event (prompt, control request, permission answer) as
//! one JSON object plus `\n` per text frame, once, in log order; it never echoes the
//! worker's own writes. Inbound events that arrived while no worker was connected wait
//! in the log behind the session's worker cursor and go out when one connects.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use switchboard_store::{Session, SessionStatus};

use super::viewer::CLOSE_TOO_SLOW;
use super::{close, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_SESSION_GONE};
use crate::error::{ApiError, Path};
use crate::log::{self, Audience, Batch, End, Follower};
use crate::metrics::GaugeGuard;
use crate::state::{Access, AppState};

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
    super::upgrade(ws, checked, span, move |socket, session| {
        run(state, socket, session)
    })
}

async fn authorize(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Session, ApiError> {
    let (session, _, _) = super::authorize(
        state,
        headers,
        id,
        Access::OwnerOrSessionWorker,
        crate::roles::Capability::Drive,
    )
    .await?;
    if session.status == SessionStatus::Archived {
        return Err(ApiError::NotFound("session is archived".into()));
    }
    Ok(session)
}

/// Why a connection ended, and the close frame it gets.
struct Ended(u16, &'static str);

impl From<End> for Ended {
    fn from(end: End) -> Self {
        match end {
            End::Superseded => superseded(),
            End::Archived => Ended(CLOSE_SESSION_GONE, "session archived"),
            End::Closed => Ended(CLOSE_SESSION_GONE, "session closed"),
            // A worker never lags for good: it reads the log again.
            End::Lagged { .. } | End::Failed => Ended(CLOSE_INTERNAL, "internal error"),
        }
    }
}

fn superseded() -> Ended {
    Ended(CLOSE_SESSION_GONE, "replaced by a newer worker connection")
}

async fn run(state: AppState, socket: WebSocket, session: Session) {
    let mut follower = log::follow(&state, &session, Audience::WorkerV1).await;
    let _gauge = GaugeGuard::new(&state.metrics().worker_connections);
    let (mut sink, mut stream) = socket.split();
    tracing::info!("worker connected");

    let limit = state.options().worker_write_timeout;
    let ended = async {
        let period = state.options().ingress_keepalive;
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                batch = follower.next() => {
                    write(&mut follower, &mut sink, batch?, limit).await?;
                }
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
                _ = state.shutdown().wait() => return Err(Ended(CLOSE_GOING_AWAY, "server shutting down")),
            }
        }
    }
    .await;
    // Let go of the channel and of the session's delivery before the close frame waits.
    drop(follower);
    match ended {
        Ok(()) => tracing::info!("worker disconnected"),
        Err(Ended(code, reason)) => {
            tracing::info!(code, reason, "closing worker connection");
            // A worker that stopped reading may not take the close frame either; the
            // socket is dropped regardless.
            let _ = tokio::time::timeout(limit, close(&mut sink, code, reason)).await;
        }
    }
    state.worker_gone(&session.id);
}

/// A worker whose socket took nothing for the write timeout: it is cut, and it (or its
/// replacement) gets the undelivered events again on its next connection.
fn stalled() -> Ended {
    Ended(CLOSE_TOO_SLOW, "worker stopped reading")
}

/// Writes a batch of inbound events, one frame each, then acknowledges it.
///
/// The batch holds the session's delivery while its frames are written, so the writes
/// are bounded: a socket that takes nothing for the worker write timeout is cut, and a
/// newer worker connection of the session ends the writes at once, so a stalled socket
/// never keeps its replacement waiting. A batch not written is not acknowledged: the
/// next connection gets it again (at least once; workers drop prompts they already have
/// by uuid).
async fn write(
    follower: &mut Follower,
    sink: &mut SplitSink<WebSocket, Message>,
    mut batch: Batch,
    limit: std::time::Duration,
) -> Result<(), Ended> {
    let writes = async {
        for event in batch.by_ref() {
            send_frame(sink, &event.payload).await?;
        }
        sink.flush().await.map_err(|_| Ended(CLOSE_INTERNAL, ""))
    };
    let result = tokio::select! {
        written = tokio::time::timeout(limit, writes) => written.unwrap_or_else(|_| Err(stalled())),
        () = follower.superseded() => Err(superseded()),
    };
    result?;
    follower.ack(batch);
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
