//! The v2 worker's event stream (docs/PROTOCOL.md §9.8): Server-Sent Events carrying the
//! session's inbound events as `event: client_event` frames, `id:` being the sequence
//! number the worker resumes from.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use switchboard_store::{Direction, EventQuery, Millis, Session};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::hub::LogEvent;
use crate::metrics::{GaugeGuard, Metrics};
use crate::revocation::{self, Watch};
use crate::state::{event_id, AppState};
use crate::time::iso;

/// How many frames wait for a slow stream reader before the producer waits too.
const STREAM_BUFFER: usize = 32;
/// How many stored events one read takes.
const PAGE: u32 = 100;

/// Starts streaming inbound events after `from` (or, for a fresh worker, every inbound
/// event a worker has not yet received, and prompts not yet processed).
/// The stream ends when `watch`'s credential is revoked.
pub(crate) fn worker_stream(
    state: AppState,
    session: Session,
    from: Option<u64>,
    watch: Option<Watch>,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(STREAM_BUFFER);
    let keepalive = state.options().sse_keepalive;
    let span = tracing::info_span!("worker_sse", session = %session.id);
    tokio::spawn(run(state, session, from, tx, watch).instrument(span));
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keepalive).text("keepalive"))
        .into_response()
}

async fn run(
    state: AppState,
    session: Session,
    from: Option<u64>,
    tx: mpsc::Sender<Event>,
    watch: Option<Watch>,
) {
    let channel = state.hub().channel(&session);
    let mut worker = channel.attach_worker();
    channel.heartbeat();
    let _gauge = GaugeGuard::new(&state.metrics().worker_connections);
    // Subscribe before reading the backlog, so nothing appended in between is missed.
    let mut live = channel.subscribe();
    let mut last = from.unwrap_or(0);
    tracing::info!(from = ?from, "worker stream opened");
    if send_pending(&state, &session.id, &mut last, from.is_none(), &tx)
        .await
        .is_err()
    {
        return;
    }
    let ttl = state.options().worker_heartbeat_ttl;
    let mut liveness = tokio::time::interval((ttl / 4).max(std::time::Duration::from_millis(50)));
    let reason = loop {
        let caught_up = tokio::select! {
            event = live.recv() => match event {
                // Following the channel without a gap: what it brings is exactly what is
                // new, and goes out without a database read.
                Ok(event) if event.direction == Direction::Inbound && event.seq > last => {
                    send_live(&state, &session.id, &event, &mut last, &tx).await
                }
                Ok(_) => Ok(()),
                // Fell behind the channel: the log has everything.
                Err(RecvError::Lagged(_)) => send_pending(&state, &session.id, &mut last, false, &tx).await,
                Err(RecvError::Closed) => break "session closed",
            },
            _ = liveness.tick() => {
                if channel.heartbeat_age().is_some_and(|age| age > ttl) {
                    break "worker silent past its heartbeat TTL";
                }
                Ok(())
            }
            _ = worker.superseded() => break "replaced by a newer worker",
            _ = channel.closed.cancelled() => break "session archived",
            _ = revocation::revoked(watch.as_ref()) => break "credential revoked",
            _ = state.shutdown().wait() => break "server shutting down",
            _ = tx.closed() => break "worker disconnected",
        };
        if caught_up.is_err() {
            break "worker disconnected";
        }
    };
    tracing::info!(reason, "worker stream closed");
}

/// Sends the inbound events after `last`, advancing it and the session's worker cursor.
/// A `fresh` worker skips what an earlier worker already received, except prompts that
/// were never processed.
async fn send_pending(
    state: &AppState,
    session_id: &str,
    last: &mut u64,
    fresh: bool,
    tx: &mpsc::Sender<Event>,
) -> Result<(), ()> {
    loop {
        let query = EventQuery {
            after: Some(*last),
            direction: Some(Direction::Inbound),
            exclude_processed: fresh,
            limit: PAGE,
            ..Default::default()
        };
        let events = match state.store().events(session_id, &query).await {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = ?e, "cannot read the session log");
                return Err(());
            }
        };
        let count = events.len();
        for event in events {
            *last = event.seq;
            if fresh && event.delivery.is_some() && event.kind != "user" {
                continue;
            }
            let frame = client_event(
                event.seq,
                event.uuid.as_deref(),
                &event.kind,
                &event.payload,
                event.created_at,
            );
            tx.send(frame).await.map_err(drop)?;
            Metrics::add(&state.metrics().events_delivered, 1);
        }
        if count > 0 {
            if let Err(e) = state.store().advance_worker_cursor(session_id, *last).await {
                tracing::warn!(error = ?e, "cannot advance the worker cursor");
            }
        }
        if count < PAGE as usize {
            return Ok(());
        }
    }
}

/// Sends one event just taken off the session's channel and records the worker's
/// progress.
async fn send_live(
    state: &AppState,
    session_id: &str,
    event: &LogEvent,
    last: &mut u64,
    tx: &mpsc::Sender<Event>,
) -> Result<(), ()> {
    let frame = client_event(
        event.seq,
        event.uuid.as_deref(),
        &event.kind,
        &event.payload,
        event.created_at,
    );
    tx.send(frame).await.map_err(drop)?;
    *last = event.seq;
    Metrics::add(&state.metrics().events_delivered, 1);
    state.store_worker_cursor_later(session_id, event.seq);
    Ok(())
}

/// The `client_event` frame of one inbound event (docs/PROTOCOL.md §9.8).
fn client_event(
    seq: u64,
    uuid: Option<&str>,
    kind: &str,
    payload: &str,
    created_at: Millis,
) -> Event {
    let data = format!(
        "{{\"event_id\":{},\"sequence_num\":{},\"event_type\":{},\"source\":\"client\",\"payload\":{},\"created_at\":{}}}",
        json_string(&event_id(uuid, seq)),
        seq,
        json_string(kind),
        payload,
        json_string(&iso(created_at)),
    );
    Event::default()
        .event("client_event")
        .id(seq.to_string())
        .data(data)
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
