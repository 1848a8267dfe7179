//! The one error type every client call returns, and the mapping from an HTTP status
//! and body to it (docs/PROTOCOL.md §3.3 and §3.4).
//!
//! The mapping mirrors bridgeApi.ts `handleErrorStatus`: 401, 403, 404 and 410 are fatal
//! (the official client stops what it is doing), 429 and 5xx are worth retrying, and every
//! other unexpected status is a plain error that the caller's backoff loop absorbs.

use std::time::Duration;

use serde_json::Value;

/// A shorthand for results whose error is [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The default `error.type` of a 410 answer, as bridgeApi.ts fills it in.
pub const ENVIRONMENT_EXPIRED: &str = "environment_expired";

/// How long an error message taken from a non-JSON body may be, in characters. Longer
/// bodies (an HTML error page, say) are cut so that logs stay readable.
const MAX_TEXT_DETAIL: usize = 200;

/// Everything that can go wrong when talking to a Remote Control server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An id that would go into a URL path is not a safe id (`^[a-zA-Z0-9_-]+$`). Nothing
    /// was sent.
    #[error("invalid {what}: {id:?} contains unsafe characters")]
    InvalidId {
        /// Which id it was, e.g. `environment_id`.
        what: &'static str,
        /// The offending value.
        id: String,
    },

    /// The request could not be built: the base URL is not a URL, or a token or header
    /// is not a valid header value. Nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A fatal answer: 401, 403, 404 or 410. The official client stops the loop that got
    /// it instead of backing off.
    #[error("fatal status {status}{}: {message}", kind_suffix(kind.as_deref()))]
    Fatal {
        /// The HTTP status.
        status: u16,
        /// The body's `error.type`, if any; a 410 without one reads `environment_expired`.
        kind: Option<String>,
        /// The body's `error.message` or `message`, or a generic description.
        message: String,
    },

    /// A transient answer: 429 or any 5xx. Back off and try again.
    #[error("retryable status {status}: {message}")]
    Retryable {
        /// The HTTP status.
        status: u16,
        /// The body's `error.message` or `message`, or a generic description.
        message: String,
        /// The delay the server asked for in a `Retry-After` header, if any.
        retry_after: Option<Duration>,
    },

    /// Any other status the call does not accept as success, e.g. 201 from register, 400
    /// or 409.
    #[error("unexpected status {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body's `error.message` or `message`, or a generic description.
        message: String,
    },

    /// The request did not complete: connection refused or reset, or a timeout.
    #[error("request failed")]
    Transport(#[source] reqwest::Error),

    /// The server answered with a success status but a body the client cannot read (or a
    /// request body could not be encoded).
    #[error("malformed body: {0}")]
    Decode(String),

    /// The WebSocket could not be opened or was lost for good.
    #[error("websocket: {0}")]
    WebSocket(String),

    /// The transport was closed by [`close`](crate::ingress::IngressTransport::close); no
    /// more writes are accepted.
    #[error("transport is closed")]
    Closed,

    /// A CCR v2 worker call was answered with 409, or its credential is no longer
    /// accepted (docs/PROTOCOL.md §9): a newer worker epoch owns the session, and this worker
    /// must stop writing.
    #[error("the worker epoch was superseded")]
    Superseded,

    /// `POST /v1/code/sessions` answered with an id that is not `cse_` followed by a safe
    /// id; the official client treats that as a failed create (docs/PROTOCOL.md §10.1).
    #[error("expected a cse_ session id, got {0:?}")]
    NotCodeSessionId(String),
}

fn kind_suffix(kind: Option<&str>) -> String {
    kind.map(|k| format!(" ({k})")).unwrap_or_default()
}

impl ApiError {
    /// Maps a status the call did not accept, with the response body and the parsed
    /// `Retry-After` header, to an error.
    ///
    /// This is the table of docs/PROTOCOL.md §3.4: 401/403/404/410 are [`ApiError::Fatal`],
    /// 429 and ≥ 500 are [`ApiError::Retryable`], everything else is
    /// [`ApiError::Status`]. It never returns a success: the caller decides which statuses
    /// succeed before calling it.
    pub fn from_status(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let (kind, detail) = read_error_body(body);
        let message = detail.unwrap_or_else(|| default_message(status));
        match status {
            401 | 403 | 404 => Self::Fatal {
                status,
                kind,
                message,
            },
            410 => Self::Fatal {
                status,
                kind: Some(kind.unwrap_or_else(|| ENVIRONMENT_EXPIRED.to_owned())),
                message,
            },
            429 | 500..=599 => Self::Retryable {
                status,
                message,
                retry_after,
            },
            _ => Self::Status { status, message },
        }
    }

    /// The HTTP status behind this error, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Fatal { status, .. }
            | Self::Retryable { status, .. }
            | Self::Status { status, .. } => Some(*status),
            Self::Transport(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The body's `error.type`, for fatal answers.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Self::Fatal { kind, .. } => kind.as_deref(),
            _ => None,
        }
    }

    /// True for 401, 403, 404 and 410: the official client gives up instead of retrying.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Fatal { .. })
    }

    /// True for errors worth retrying after a backoff: 429, 5xx and transport failures.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. } | Self::Transport(_))
    }

    /// True when a fatal answer says the session or environment has expired: its
    /// `error.type` contains `expired` or `lifetime` (bridgeApi.ts `isExpiredErrorType`).
    ///
    /// This is what turns a 403 into "Remote Control session has expired" rather than
    /// "access denied"; a 410 is always expired, since its kind defaults to
    /// `environment_expired`.
    pub fn is_expired(&self) -> bool {
        self.kind()
            .is_some_and(|k| k.contains("expired") || k.contains("lifetime"))
    }

    /// True for a 403 the official client shows no message for (still fatal): its text
    /// mentions `external_poll_sessions` or `environments:manage`.
    pub fn is_suppressible_403(&self) -> bool {
        match self {
            Self::Fatal {
                status: 403,
                message,
                ..
            } => {
                message.contains("external_poll_sessions")
                    || message.contains("environments:manage")
            }
            _ => false,
        }
    }

    /// The TLS handshake failure behind a transport error, if that is what it was: the
    /// server's certificate was not trusted, or the server does not speak TLS. Tells a
    /// certificate problem apart from a server that is down.
    pub fn tls_failure(&self) -> Option<crate::tls::TlsFailure> {
        match self {
            Self::Transport(e) => crate::tls::tls_failure_in(e),
            _ => None,
        }
    }

    /// The delay a 429 or 5xx answer asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Reads `error.type` and a human detail (`error.message`, else top-level `message`) from
/// an error body. A body that is not JSON becomes the detail itself, cut short.
fn read_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return (None, None);
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return (None, Some(truncate(text, MAX_TEXT_DETAIL)));
    };
    let error = value.get("error");
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let detail = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .or_else(|| value.get("message").and_then(Value::as_str))
        // A bare string `error` is read as the detail, which some proxies send.
        .or_else(|| error.and_then(Value::as_str))
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    (kind, detail)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn default_message(status: u16) -> String {
    match status {
        401 => "authentication failed".to_owned(),
        403 => "access denied".to_owned(),
        404 => "not found".to_owned(),
        410 => "remote control session has expired".to_owned(),
        429 => "rate limited".to_owned(),
        500..=599 => format!("server error ({status})"),
        _ => format!("failed with status {status}"),
    }
}

/// Parses a `Retry-After` header given in seconds (the form Switchboard and most proxies
/// send). An HTTP-date is not understood and yields `None`.
pub(crate) fn parse_retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let seconds: f64 = value.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Reads a non-accepted response to its end and maps it to an error.
pub(crate) async fn error_from_response(response: reqwest::Response) -> ApiError {
    let status = response.status().as_u16();
    let retry_after = parse_retry_after(response.headers());
    // A body that cannot be read still leaves the status, which is what matters most.
    let body = response.bytes().await.unwrap_or_default();
    ApiError::from_status(status, &body, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_statuses_carry_kind_and_message() {
        let body = br#"{"error":{"type":"token_expired","message":"the token has expired"}}"#;
        let err = ApiError::from_status(403, body, None);
        assert!(err.is_fatal());
        assert!(err.is_expired());
        assert!(!err.is_retryable());
        assert_eq!(err.status(), Some(403));
        assert_eq!(err.kind(), Some("token_expired"));
        match err {
            ApiError::Fatal { message, .. } => assert_eq!(message, "the token has expired"),
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }

    #[test]
    fn a_denied_403_is_not_expired() {
        let body = br#"{"error":{"type":"permission_error","message":"no"}}"#;
        let err = ApiError::from_status(403, body, None);
        assert!(err.is_fatal());
        assert!(!err.is_expired());
    }

    #[test]
    fn lifetime_kinds_count_as_expired() {
        let body = br#"{"error":{"type":"session_lifetime_exceeded"}}"#;
        assert!(ApiError::from_status(403, body, None).is_expired());
    }

    #[test]
    fn a_410_defaults_its_kind_to_environment_expired() {
        let err = ApiError::from_status(410, b"", None);
        assert_eq!(err.kind(), Some(ENVIRONMENT_EXPIRED));
        assert!(err.is_expired());

        let err = ApiError::from_status(410, br#"{"error":{"type":"gone"}}"#, None);
        assert_eq!(err.kind(), Some("gone"));
    }

    #[test]
    fn unauthorized_and_not_found_are_fatal() {
        assert!(ApiError::from_status(401, b"{}", None).is_fatal());
        assert!(ApiError::from_status(404, b"", None).is_fatal());
    }

    #[test]
    fn rate_limits_and_server_errors_are_retryable() {
        let err = ApiError::from_status(429, b"", Some(Duration::from_secs(3)));
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        for status in [500, 502, 503, 599] {
            let err = ApiError::from_status(status, b"", None);
            assert!(err.is_retryable(), "{status} must be retryable");
            assert!(!err.is_fatal());
        }
    }

    #[test]
    fn other_statuses_are_plain_status_errors() {
        for status in [201, 302, 400, 409, 422] {
            let err = ApiError::from_status(status, b"", None);
            assert!(matches!(err, ApiError::Status { .. }), "{status}: {err:?}");
            assert!(!err.is_fatal());
            assert!(!err.is_retryable());
            assert_eq!(err.status(), Some(status));
        }
    }

    #[test]
    fn the_message_comes_from_error_message_then_top_level_message() {
        let nested = br#"{"error":{"type":"x","message":"nested"},"message":"top"}"#;
        let top = br#"{"message":"top"}"#;
        let text = b"plain text failure";
        let message = |status, body: &[u8]| match ApiError::from_status(status, body, None) {
            ApiError::Status { message, .. } => message,
            other => panic!("expected a status error, got {other:?}"),
        };
        assert_eq!(message(400, nested), "nested");
        assert_eq!(message(400, top), "top");
        assert_eq!(message(400, text), "plain text failure");
        assert_eq!(message(400, b""), "failed with status 400");
    }

    #[test]
    fn long_text_bodies_are_cut_short() {
        let body = "x".repeat(1000);
        let ApiError::Status { message, .. } = ApiError::from_status(400, body.as_bytes(), None)
        else {
            panic!("expected a status error");
        };
        assert!(message.chars().count() <= MAX_TEXT_DETAIL + 1);
    }

    #[test]
    fn suppressible_403s_are_recognised() {
        let body =
            br#"{"error":{"type":"permission_error","message":"missing environments:manage"}}"#;
        assert!(ApiError::from_status(403, body, None).is_suppressible_403());
        assert!(!ApiError::from_status(401, body, None).is_suppressible_403());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("2"),
        );
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers), None);
    }
}
