//! The viewer subscribe WebSocket (docs/PROTOCOL.md §13.1): a session's stored history from a
//! sequence number, then every new event live, one JSON object per frame with its
//! `sequence_num`; and, from the viewer, prompts and control messages for the worker.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_store::Session;

use super::{
    close, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_RECONNECT, CLOSE_SESSION_GONE,
    CLOSE_UNAUTHORIZED,
};
use crate::auth::Principal;
use crate::error::{ApiError, Path, Query};
use crate::log::{self, Audience, End, Follower};
use crate::metrics::GaugeGuard;
use crate::revocation::{self, Watch};
use crate::roles::Capability;
use crate::state::{Access, AppState};

/// Close code for a viewer that fell too far behind; it reconnects and resumes from
/// the last `sequence_num` it saw (1013: "try again later").
pub(crate) const CLOSE_TOO_SLOW: u16 = 1013;

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
    super::upgrade(
        ws,
        checked,
        span,
        move |socket, (session, watches, principal)| {
            run(
                state,
                socket,
                session,
                q.from_sequence_num,
                watches,
                principal,
            )
        },
    )
}

/// What ends a viewer's connection from outside: its credential's revocation and, for
/// a session shared with its owner, the share's end or change.
struct Watches {
    credential: Option<Watch>,
    /// The stored credential's id, to tell a revocation from a role change.
    credential_id: Option<String>,
    share: Option<Watch>,
}

async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Session, Watches, Principal), ApiError> {
    let (mut principal, credential) = state.authenticate_request(headers).await?;
    let (session, shared) = state
        .authorize_session_or_share(&mut principal, id, Access::OwnerOnly)
        .await?;
    principal.require(Capability::Read)?;
    // Registered before the upgrade completes, so a revocation in between is not missed.
    let share = shared.map(|role| state.watch_share(&session.id, principal.owner_id(), role));
    let watches = Watches {
        credential: state.watch_revocation(credential.as_ref()),
        credential_id: credential.as_ref().map(|(_, id)| id.clone()),
        share,
    };
    Ok((session, watches, principal))
}

struct Ended(u16, String);

impl From<End> for Ended {
    fn from(end: End) -> Self {
        match end {
            End::Lagged { resume_from } => too_slow(resume_from),
            End::Archived | End::Superseded => Ended(CLOSE_SESSION_GONE, "session archived".into()),
            End::Closed => Ended(CLOSE_SESSION_GONE, "session closed".into()),
            End::Failed => Ended(CLOSE_INTERNAL, "internal error".into()),
        }
    }
}

async fn run(
    state: AppState,
    socket: WebSocket,
    session: Session,
    from: Option<u64>,
    watches: Watches,
    principal: Principal,
) {
    let gauge = GaugeGuard::new(&state.metrics().viewer_connections);
    let mut follower = log::follow(&state, &session, Audience::Viewer { from }).await;
    let (mut sink, mut stream) = socket.split();
    // The last sequence number written to the socket: where the viewer resumes.
    let mut last = follower.position();

    let limit = state.options().viewer_write_timeout;
    let ended: Result<(), Ended> = async {
        loop {
            tokio::select! {
                batch = follower.next() => {
                    let mut batch = batch?;
                    // Everything ready goes out as one batch, flushed once.
                    for event in batch.by_ref() {
                        let frame = Message::Text(event.with_sequence().into());
                        bounded(limit, last, sink.feed(frame), &follower).await?;
                        last = event.seq;
                    }
                    bounded(limit, last, sink.flush(), &follower).await?;
                    follower.ack(batch);
                }
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = accept_viewer_text(&state, &session, &principal, text.as_str()).await {
                            bounded(limit, last, sink.send(Message::Text(reply.to_string().into())), &follower).await?;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return Ok(()),
                },
                _ = revocation::revoked(watches.credential.as_ref()) => {
                    // Revoked, or its role changed: then the viewer comes back with it.
                    let live = match &watches.credential_id {
                        Some(id) => state.credential_live(id).await,
                        None => false,
                    };
                    return Err(if live {
                        Ended(CLOSE_RECONNECT, "role changed; reconnect".into())
                    } else {
                        Ended(CLOSE_UNAUTHORIZED, "credential revoked".into())
                    });
                }
                _ = revocation::revoked(watches.share.as_ref()) => {
                    // Ended, or changed: then the viewer comes back with its new role.
                    return Err(match state.share_role(&session.id, principal.owner_id()).await {
                        Some(_) => Ended(CLOSE_RECONNECT, "share changed; reconnect".into()),
                        None => Ended(CLOSE_UNAUTHORIZED, "share ended".into()),
                    });
                }
                _ = state.shutdown().wait() => return Err(Ended(CLOSE_GOING_AWAY, "server shutting down".into())),
            }
        }
    }
    .await;
    // Let go of the channel first: a viewer that is cut must not keep the session's
    // events alive while its close frame waits. It no longer counts as connected.
    drop(follower);
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
    follower: &Follower,
) -> Result<(), Ended>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::select! {
        biased;
        () = follower.overrun() => Err(too_slow(last)),
        written = tokio::time::timeout(limit, write) => match written {
            Ok(result) => result.map_err(gone),
            Err(_) => Err(too_slow(last)),
        },
    }
}

fn too_slow(last: u64) -> Ended {
    Ended(
        CLOSE_TOO_SLOW,
        format!("viewer fell behind; resume from sequence_num {last}"),
    )
}

/// Handles a frame from the viewer: one message for the worker. Returns an error frame
/// for the viewer when the message is refused, naming the message by the `uuid` the
/// viewer gave it (docs/PROTOCOL.md §13.1).
async fn accept_viewer_text(
    state: &AppState,
    session: &Session,
    principal: &Principal,
    text: &str,
) -> Option<Value> {
    let message: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_frame(
                &ApiError::BadRequest(format!("frame is not JSON: {e}")),
                None,
            ))
        }
    };
    let uuid = message
        .get("uuid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // The caller's role is checked (and what it sends audited) as for the same message
    // posted to `/v1/sessions/{id}/events`.
    match state
        .post_session_events(principal, session, vec![message])
        .await
    {
        Ok(_) => None,
        Err(e) => Some(error_frame(&e, uuid)),
    }
}

fn error_frame(e: &ApiError, refused_uuid: Option<String>) -> Value {
    let mut body = e.body();
    body.error.refused_uuid = refused_uuid;
    json!({ "type": "error", "error": body.error })
}
