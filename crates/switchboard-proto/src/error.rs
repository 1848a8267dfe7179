//! The JSON error body every error response carries (docs/PROTOCOL.md §3.3).

use serde::{Deserialize, Serialize};

/// `{"error":{"type":"…","message":"…"}}`: what the client reads `error.type` and
/// `error.message` from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inner object of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A snake_case error kind, e.g. `not_found_error`. A 403 whose type contains
    /// `expired` reads as "session has expired" to the client.
    #[serde(rename = "type")]
    pub kind: String,
    /// A human readable explanation.
    #[serde(default)]
    pub message: String,
    /// On the viewer socket only: the `uuid` of the viewer's message this error refuses,
    /// when that message had one, so a viewer can tell which of its prompts failed
    /// without reading `message` (docs/PROTOCOL.md §13.1, a Switchboard extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_uuid: Option<String>,
}

impl ErrorBody {
    /// Builds an error body from a kind and a message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                kind: kind.into(),
                message: message.into(),
                refused_uuid: None,
            },
        }
    }
}

/// The error kinds Switchboard sends in `error.type`.
pub mod kinds {
    /// The request was malformed: bad JSON, a bad id, a message a worker would reject.
    pub const INVALID_REQUEST: &str = "invalid_request_error";
    /// No credential, or one the server does not know.
    pub const AUTHENTICATION: &str = "authentication_error";
    /// A valid credential that may not do this.
    pub const PERMISSION: &str = "permission_error";
    /// A credential that has expired.
    pub const EXPIRED: &str = "token_expired";
    /// The thing named does not exist (or belongs to someone else).
    pub const NOT_FOUND: &str = "not_found_error";
    /// The request conflicts with the current state (already archived, stale epoch).
    pub const CONFLICT: &str = "conflict_error";
    /// The body is larger than the server accepts.
    pub const TOO_LARGE: &str = "request_too_large";
    /// The environment was deregistered or garbage-collected.
    pub const ENVIRONMENT_EXPIRED: &str = "environment_expired";
    /// Too many requests; retry later.
    pub const RATE_LIMIT: &str = "rate_limit_error";
    /// Something failed on the server; the detail is in the server log.
    pub const API: &str = "api_error";
    /// The server is shutting down.
    pub const OVERLOADED: &str = "overloaded_error";
}
