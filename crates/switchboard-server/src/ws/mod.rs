//! Long-lived WebSocket connections.

pub(crate) mod ingress;
pub(crate) mod viewer;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt as _;
use switchboard_store::{CredentialKind, Session};
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::state::{Access, AppState};

/// Close code: the session is unknown, archived, or was taken over (permanent for the
/// worker, docs/PROTOCOL.md §8.4).
pub(crate) const CLOSE_SESSION_GONE: u16 = 4001;
/// Close code: the credential may not reach this session (permanent).
pub(crate) const CLOSE_UNAUTHORIZED: u16 = 4003;
/// Close code: reconnect at once, what this connection may do changed (a share's
/// role); "service restart" in RFC 6455's registry, which clients retry.
pub(crate) const CLOSE_RECONNECT: u16 = 1012;
/// Close code: the server is going away; clients reconnect.
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the server failed.
pub(crate) const CLOSE_INTERNAL: u16 = 1011;

/// The close code that reports a failed upgrade-time check.
pub(crate) fn close_code_for(e: &ApiError) -> u16 {
    match e {
        ApiError::Unauthorized(_) | ApiError::Forbidden(_) | ApiError::Expired(_) => {
            CLOSE_UNAUTHORIZED
        }
        ApiError::NotFound(_) | ApiError::BadRequest(_) | ApiError::Conflict(_) => {
            CLOSE_SESSION_GONE
        }
        _ => CLOSE_INTERNAL,
    }
}

/// Frame size limit for worker and viewer sockets.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Read buffer per socket: small, since thousands of mostly idle sockets are the norm
/// (tungstenite's default is 128 KiB).
pub(crate) const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Write buffer per socket before a flush is forced.
pub(crate) const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The longest close reason, in bytes: a close frame's payload is at most 125 bytes,
/// two of which are the code (RFC 6455, section 5.5). A longer one makes the peer fail the
/// connection, and the code is lost (it sees 1006).
pub(crate) const MAX_CLOSE_REASON_BYTES: usize = 123;

/// `reason` cut to at most [`MAX_CLOSE_REASON_BYTES`], at a character boundary.
pub(crate) fn close_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Sends a close frame with a code and reason (cut to the protocol's limit); errors are
/// moot at this point.
pub(crate) async fn close<S>(sink: &mut S, code: u16, reason: &str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: close_reason(reason).into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

/// Authenticates a socket's request and loads the session it names, if the credential
/// has `access` to it; also says which stored credential it was (for revocation).
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    access: Access,
    capability: crate::roles::Capability,
) -> Result<
    (
        Session,
        Option<(CredentialKind, String)>,
        crate::auth::Principal,
    ),
    ApiError,
> {
    let (principal, credential) = state.authenticate_request(headers).await?;
    let session = state.authorize_session(&principal, id, access).await?;
    principal.require(capability)?;
    Ok((session, credential, principal))
}

/// Completes a WebSocket upgrade with this server's buffer sizes, running `run` in
/// `span` when the upgrade-time check passed, or else closing the socket at once with
/// the code that reports the failure.
pub(crate) fn upgrade<T, F, Fut>(
    ws: WebSocketUpgrade,
    checked: Result<T, ApiError>,
    span: tracing::Span,
    run: F,
) -> Response
where
    T: Send + 'static,
    F: FnOnce(WebSocket, T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            async move {
                match checked {
                    Ok(checked) => run(socket, checked).await,
                    Err(e) => {
                        tracing::info!(error = %e, "refusing connection");
                        reject(socket, close_code_for(&e), e.to_string()).await
                    }
                }
            }
            .instrument(span)
        })
}

/// Accepts an upgrade only to close it with a code, as the client expects for auth and
/// missing-session failures (a plain HTTP error reads as a transient failure to it).
pub(crate) async fn reject(mut socket: WebSocket, code: u16, reason: String) {
    close(&mut socket, code, &reason).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame_without_splitting_a_character() {
        assert_eq!(close_reason("session archived"), "session archived");
        let exact = "a".repeat(MAX_CLOSE_REASON_BYTES);
        assert_eq!(close_reason(&exact), exact);
        let long = format!("session {} not found", "x".repeat(300));
        assert_eq!(close_reason(&long).len(), MAX_CLOSE_REASON_BYTES);
        assert!(long.starts_with(close_reason(&long)));
        // 'é' is two bytes: 122 ASCII bytes then 'é' would end at byte 124.
        let accented = format!("{}é{}", "a".repeat(122), "b".repeat(10));
        assert_eq!(close_reason(&accented), "a".repeat(122));
        let wide = "€".repeat(60); // three bytes each
        let cut = close_reason(&wide);
        assert_eq!(cut.len(), 123);
        assert!(cut.chars().all(|c| c == '€'));
    }
}
