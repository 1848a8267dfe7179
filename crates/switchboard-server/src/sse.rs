//! The v2 worker's event stream (docs/PROTOCOL.md §9.8): Server-Sent Events carrying the
//! session's inbound events as `event: client_event` frames, `id:` being the sequence
//! number the worker resumes from.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use switchboard_store::{Millis, Session};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::log::{self, Audience, Batch, End, Follower};
use crate::metrics::GaugeGuard;
use crate::revocation::{self, Watch};
use crate::state::{event_id, AppState};
use crate::time::iso;

/// How many frames wait for a slow stream reader before the producer waits too.
const STREAM_BUFFER: usize = 32;

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
    let audience = Audience::WorkerV2 {
        from: from.unwrap_or(0),
        fresh: from.is_none(),
    };
    let mut follower = log::follow(&state, &session, audience).await;
    let _gauge = GaugeGuard::new(&state.metrics().worker_connections);
    tracing::info!(from = ?from, "worker stream opened");
    let ttl = state.options().worker_heartbeat_ttl;
    let mut liveness = tokio::time::interval((ttl / 4).max(std::time::Duration::from_millis(50)));
    let reason = loop {
        tokio::select! {
            batch = follower.next() => match batch {
                Ok(batch) => {
                    if let Err(reason) = send(&mut follower, &tx, batch).await {
                        break reason;
                    }
                }
                Err(End::Superseded) => break "replaced by a newer worker",
                Err(End::Archived) => break "session archived",
                Err(End::Closed) => break "session closed",
                Err(End::Lagged { .. } | End::Failed) => break "cannot read the session log",
            },
            _ = liveness.tick() => {
                if follower.heartbeat_age().is_some_and(|age| age > ttl) {
                    break "worker silent past its heartbeat TTL";
                }
            }
            _ = revocation::revoked(watch.as_ref()) => break "credential revoked",
            _ = state.shutdown().wait() => break "server shutting down",
            _ = tx.closed() => break "worker disconnected",
        }
    };
    tracing::info!(reason, "worker stream closed");
    state.worker_gone(&session.id);
}

/// Sends a batch, one `client_event` frame per event, then acknowledges it. A newer
/// worker connection ends the sending at once (the batch holds the session's delivery).
async fn send(
    follower: &mut Follower,
    tx: &mpsc::Sender<Event>,
    mut batch: Batch,
) -> Result<(), &'static str> {
    let sends = async {
        for event in batch.by_ref() {
            let frame = client_event(
                event.seq,
                event.uuid.as_deref(),
                &event.kind,
                &event.payload,
                event.created_at,
            );
            tx.send(frame).await.map_err(|_| "worker disconnected")?;
        }
        Ok::<(), &'static str>(())
    };
    tokio::select! {
        sent = sends => sent?,
        () = follower.superseded() => return Err("replaced by a newer worker"),
    }
    follower.ack(batch);
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
