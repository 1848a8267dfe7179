//! The Sessions (compat) API: create, get, patch, archive, events and list
//! (docs/PROTOCOL.md §6 and §13).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Body of `POST /v1/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSessionRequest {
    /// The session's title, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Initial events (always empty from the real client).
    #[serde(default)]
    pub events: Vec<Value>,
    /// Sources, outcomes, model and cwd: stored and returned as given.
    #[serde(default)]
    pub session_context: Value,
    /// The environment that should run the session; a work item is queued for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// Where the session came from, e.g. `remote-control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The permission mode the worker starts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    /// The data plane to serve this session on (a Switchboard extension): `Some(true)`
    /// for CCR v2, `Some(false)` for session-ingress v1. `None` (the official client
    /// never sends it) means v2, the plane every current Claude Code child speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_code_sessions: Option<bool>,
}

/// Body of `PATCH /v1/sessions/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchSessionRequest {
    /// The new title.
    #[serde(default)]
    pub title: Option<String>,
}

/// A session as the Sessions API returns it (§6.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionResource {
    /// Always `"session"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The compat id, `session_<body>`.
    pub id: String,
    /// The title, if set.
    pub title: Option<String>,
    /// `idle`, `running`, `requires_action` or `archived`.
    pub session_status: String,
    /// The environment the session runs on, if any.
    pub environment_id: Option<String>,
    /// Creation time, ISO 8601.
    pub created_at: String,
    /// Last change, ISO 8601.
    pub updated_at: String,
    /// The context given at creation.
    pub session_context: Value,
    /// Whether a worker is connected right now.
    #[serde(default)]
    pub worker_connected: bool,
    /// The last event's time, ISO 8601, if any.
    #[serde(default)]
    pub last_activity_at: Option<String>,
    /// The sequence number of the last event in the session's log.
    #[serde(default)]
    pub last_sequence_num: u64,
    /// True when the session is served over the CCR v2 plane.
    #[serde(default)]
    pub use_code_sessions: bool,
    /// The host name of the machine whose bridge runs the session, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_name: Option<String>,
    /// The working directory the session's bridge runs in, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// While `session_status` is `requires_action`: the worker's pending request (the
    /// `control_request` with `can_use_tool` or `elicitation`) it waits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_action: Option<Value>,
    /// When the session is another owner's, shared with the caller: the most the caller
    /// may do with it (`viewer`, `approver`, `driver` or `admin`), the smaller of the
    /// share's role and the caller's credential's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_role: Option<String>,
}

/// One owner a session is shared with (`GET /v1/sessions/{id}/shares`, the answer of
/// `PUT /v1/sessions/{id}/shares/{owner}`; docs/PROTOCOL.md §18.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionShare {
    /// The other owner's name.
    pub owner: String,
    /// The most that owner may do with the session: `viewer`, `approver`, `driver` or
    /// `admin`.
    pub role: String,
    /// When it was shared, or its role last changed (ISO 8601).
    pub shared_at: String,
}

/// Body of `PUT /v1/sessions/{id}/shares/{owner}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRequest {
    /// The role to share at.
    pub role: String,
}

/// A list answer without paging, `{"data": [...]}` (the shares of a session, the
/// sessions shared with an owner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing<T> {
    /// The items.
    pub data: Vec<T>,
}

/// Body of `POST /v1/sessions/{id}/events` and of the session-ingress POST.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsRequest {
    /// The messages, in order.
    pub events: Vec<Value>,
}

/// A page of history or of the session list (§6.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, oldest first.
    pub data: Vec<T>,
    /// Whether there are more items beyond this page in the direction asked.
    pub has_more: bool,
    /// The id of the first item of the page.
    pub first_id: Option<String>,
    /// The id of the last item of the page.
    pub last_id: Option<String>,
}

/// The name of the field the server adds to every event it hands out: the event's
/// position in the session's log, by which a reader resumes.
pub const SEQUENCE_FIELD: &str = "sequence_num";

/// Reads the sequence number the server attached to an event.
pub fn event_sequence(event: &Value) -> Option<u64> {
    event.get(SEQUENCE_FIELD)?.as_u64()
}
