//! The rows the store deals in, as plain Rust types.

use serde_json::Value;

/// Milliseconds since the Unix epoch: how every time is stored.
pub type Millis = i64;

/// A person or team; owns keys, environments and sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Opaque id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Creation time.
    pub created_at: Millis,
}

/// The classes of bearer credential the server issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// An owner's API key: the "OAuth" token of the protocol.
    ApiKey,
    /// An environment secret: polls one environment.
    EnvironmentSecret,
    /// A session-ingress token: the worker credential of one session.
    IngressToken,
    /// A browser's sign-in, carried in an HttpOnly cookie; acts as its owner.
    WebSession,
    /// A single-use pairing link that signs a browser in.
    Pairing,
}

impl CredentialKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::EnvironmentSecret => "environment_secret",
            CredentialKind::IngressToken => "ingress_token",
            CredentialKind::WebSession => "web_session",
            CredentialKind::Pairing => "pairing",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "api_key" => CredentialKind::ApiKey,
            "environment_secret" => CredentialKind::EnvironmentSecret,
            "ingress_token" => CredentialKind::IngressToken,
            "web_session" => CredentialKind::WebSession,
            "pairing" => CredentialKind::Pairing,
            _ => return None,
        })
    }
}

/// A stored credential. The secret itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The public id embedded in the token.
    pub id: String,
    /// What the credential is for.
    pub kind: CredentialKind,
    /// Whose it is.
    pub owner_id: String,
    /// The environment (secrets) or session body (ingress tokens) it is bound to.
    pub scope: Option<String>,
    /// The work item an ingress token was issued with.
    pub work_id: Option<String>,
    /// A label (API keys).
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub secret_hash: String,
    /// Issue time.
    pub created_at: Millis,
    /// Expiry, if any.
    pub expires_at: Option<Millis>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<Millis>,
    /// What it may do (owner credentials: API keys, web sessions, pairing links).
    pub role: Role,
}

impl Credential {
    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|exp| exp > now)
    }
}

/// A registered bridge environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// Opaque safe id (`env_…`).
    pub id: String,
    /// Whose it is.
    pub owner_id: String,
    /// Host name of the bridge machine.
    pub machine_name: String,
    /// Working directory of the bridge.
    pub directory: String,
    /// Git branch.
    pub branch: String,
    /// Git remote.
    pub git_repo_url: Option<String>,
    /// Capacity.
    pub max_sessions: u32,
    /// Opaque metadata from the client.
    pub metadata: Value,
    /// Registration time.
    pub created_at: Millis,
    /// Last poll (or registration).
    pub last_poll_at: Millis,
    /// When it was deregistered or collected; `None` while live.
    pub deregistered_at: Option<Millis>,
}

/// A session's coarse state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// Waiting for a prompt.
    Idle,
    /// A turn is running.
    Running,
    /// The worker waits on a permission answer.
    RequiresAction,
    /// Ended; accepts no more work.
    Archived,
}

impl SessionStatus {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Idle => "idle",
            SessionStatus::Running => "running",
            SessionStatus::RequiresAction => "requires_action",
            SessionStatus::Archived => "archived",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "idle" => SessionStatus::Idle,
            "running" => SessionStatus::Running,
            "requires_action" => SessionStatus::RequiresAction,
            "archived" => SessionStatus::Archived,
            _ => return None,
        })
    }
}

/// A session and its log's bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The id body (without `cse_` / `session_`).
    pub id: String,
    /// Whose it is.
    pub owner_id: String,
    /// The environment that runs it, if any.
    pub environment_id: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Coarse state.
    pub status: SessionStatus,
    /// Context given at creation.
    pub session_context: Value,
    /// Origin, e.g. `remote-control`.
    pub source: Option<String>,
    /// Permission mode asked for at creation.
    pub permission_mode: Option<String>,
    /// Served over CCR v2.
    pub use_code_sessions: bool,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Archive time.
    pub archived_at: Option<Millis>,
    /// Sequence number of the last event (0 when the log is empty).
    pub last_seq: u64,
    /// Time of the last event.
    pub last_activity_at: Option<Millis>,
    /// Highest inbound sequence number handed to a worker.
    pub worker_cursor: u64,
    /// The current worker epoch (0 before any worker registered).
    pub worker_epoch: u64,
    /// The worker's merged `external_metadata` (an object; empty when none).
    pub external_metadata: Value,
    /// What the worker waits on while `requires_action` (the permission request).
    pub requires_action: Option<Value>,
}

/// Where a work item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkState {
    /// Waiting for a poll.
    Queued,
    /// Handed to a poll, not yet acknowledged.
    Delivered,
    /// Acknowledged: a worker owns it.
    Acked,
    /// Ended.
    Stopped,
}

impl WorkState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkState::Queued => "queued",
            WorkState::Delivered => "delivered",
            WorkState::Acked => "acked",
            WorkState::Stopped => "stopped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => WorkState::Queued,
            "delivered" => WorkState::Delivered,
            "acked" => WorkState::Acked,
            "stopped" => WorkState::Stopped,
            _ => return None,
        })
    }
}

/// A unit of work for an environment: "run this session".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// Opaque safe id (`work_…`).
    pub id: String,
    /// The environment it is queued for.
    pub environment_id: String,
    /// The session body id.
    pub session_id: String,
    /// Where it stands.
    pub state: WorkState,
    /// Creation time.
    pub created_at: Millis,
    /// Last delivery to a poll.
    pub delivered_at: Option<Millis>,
    /// Acknowledgement time.
    pub acked_at: Option<Millis>,
    /// Last heartbeat.
    pub heartbeat_at: Option<Millis>,
    /// Stop time.
    pub stopped_at: Option<Millis>,
    /// How many times a poll returned it.
    pub deliveries: u32,
}

/// Which way an event travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Written by the worker (assistant output, tool results, permission requests).
    Outbound,
    /// Meant for the worker (prompts, control requests, permission answers).
    Inbound,
}

impl Direction {
    /// The database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "out",
            Direction::Inbound => "in",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "out" => Some(Direction::Outbound),
            "in" => Some(Direction::Inbound),
            _ => None,
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Which way it travels.
    pub direction: Direction,
    /// The message `type`.
    pub kind: String,
    /// The message `uuid`, the idempotency key.
    pub uuid: Option<String>,
    /// The message, serialized JSON.
    pub payload: String,
    /// The `request_id` of a control request, response or cancel.
    pub request_id: Option<String>,
    /// For inbound events, the class of credential that sent it (`owner`,
    /// `ingress_token`, `worker_jwt`): the audit of who answered a permission request.
    pub sent_with: Option<String>,
    /// Who sent it, for the audit log: stored in the same transaction as the event when
    /// the event is stored (not for a duplicate), its detail given the event's
    /// `sequence_num`.
    pub audit: Option<AuditEntry>,
}

/// The outcome of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's sequence number (the existing one for a duplicate).
    pub seq: u64,
    /// True when the uuid was already in the log and nothing was stored.
    pub duplicate: bool,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The session body id.
    pub session_id: String,
    /// Position in the session's log.
    pub seq: u64,
    /// Which way it travels.
    pub direction: Direction,
    /// The message `type`.
    pub kind: String,
    /// The message `uuid`.
    pub uuid: Option<String>,
    /// The message, serialized JSON.
    pub payload: String,
    /// Append time.
    pub created_at: Millis,
    /// The `request_id` of a control message.
    pub request_id: Option<String>,
    /// How far a worker got with it (inbound events only).
    pub delivery: Option<DeliveryStatus>,
    /// For inbound events, the class of credential that sent it (see [`NewEvent`]);
    /// `None` for worker output and for events stored before it was recorded.
    pub sent_with: Option<String>,
}

/// How far a worker got with an inbound event (docs/PROTOCOL.md §9.7). Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryStatus {
    /// The worker's transport read it.
    Received,
    /// The worker started on it.
    Processing,
    /// The worker finished with it; it is never delivered again.
    Processed,
}

impl DeliveryStatus {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Received => "received",
            DeliveryStatus::Processing => "processing",
            DeliveryStatus::Processed => "processed",
        }
    }

    /// Parses a wire or stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "received" => DeliveryStatus::Received,
            "processing" => DeliveryStatus::Processing,
            "processed" => DeliveryStatus::Processed,
            _ => return None,
        })
    }
}

impl From<switchboard_proto::code::DeliveryStatus> for DeliveryStatus {
    fn from(status: switchboard_proto::code::DeliveryStatus) -> Self {
        use switchboard_proto::code::DeliveryStatus as Wire;
        match status {
            Wire::Received => DeliveryStatus::Received,
            Wire::Processing => DeliveryStatus::Processing,
            Wire::Processed => DeliveryStatus::Processed,
        }
    }
}

/// Names one event of a session's log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventRef {
    /// By the message's `uuid`.
    Uuid(String),
    /// By its sequence number.
    Seq(u64),
}

/// A change to a v2 worker's state, applied only if the epoch is current.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerUpdate {
    /// New status, if reported.
    pub status: Option<SessionStatus>,
    /// The details that go with `requires_action` (`Some(None)` clears them).
    pub requires_action: Option<Option<Value>>,
    /// An RFC 7396 patch for `external_metadata`.
    pub external_metadata: Option<Value>,
}

/// A key that signs worker credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// Key id, carried in the token.
    pub id: String,
    /// The secret, base64url.
    pub secret: String,
    /// Creation time.
    pub created_at: Millis,
    /// When it stopped being accepted; `None` while live.
    pub retired_at: Option<Millis>,
}

/// A v2 worker transcript entry to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInternalEvent {
    /// The payload's `type`.
    pub event_type: String,
    /// The payload, serialized JSON.
    pub payload: String,
    /// Marks a compaction boundary.
    pub is_compaction: bool,
    /// The subagent that wrote it, if any.
    pub agent_id: Option<String>,
}

/// A stored v2 worker transcript entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalEvent {
    /// Position among the session's internal events.
    pub seq: u64,
    /// The payload's `type`.
    pub event_type: String,
    /// The payload, serialized JSON.
    pub payload: String,
    /// Marks a compaction boundary.
    pub is_compaction: bool,
    /// The subagent that wrote it, if any.
    pub agent_id: Option<String>,
    /// Append time.
    pub created_at: Millis,
}

/// Which events to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events with `seq > after`.
    pub after: Option<u64>,
    /// Only events with `seq < before`.
    pub before: Option<u64>,
    /// Take the newest `limit` matching events instead of the oldest (still returned
    /// oldest first).
    pub latest: bool,
    /// Only events travelling this way.
    pub direction: Option<Direction>,
    /// Leave out events a worker reported `processed`.
    pub exclude_processed: bool,
    /// At most this many.
    pub limit: u32,
}

impl Default for EventQuery {
    fn default() -> Self {
        Self {
            after: None,
            before: None,
            latest: false,
            direction: None,
            exclude_processed: false,
            limit: 100,
        }
    }
}

/// Where an owner's notifications go besides browsers: a webhook or an ntfy topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyChannel {
    /// The owner.
    pub owner_id: String,
    /// `webhook` or `ntfy`; one of each per owner.
    pub kind: String,
    /// Where to POST.
    pub url: String,
    /// The webhook's HMAC key, or the ntfy access token.
    pub secret: Option<String>,
    /// The address (`scheme://host[:port]`) the owner used when setting it, where its
    /// notifications' links start when the server has no configured public URL.
    pub origin: Option<String>,
    /// When it was set.
    pub created_at: Millis,
}

/// A browser's Web Push subscription (RFC 8030), with its RFC 8291 keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    /// Our id for it.
    pub id: String,
    /// The owner signed in when it subscribed.
    pub owner_id: String,
    /// The push service's URL for this subscription; unique.
    pub endpoint: String,
    /// The browser's P-256 public key, base64url (uncompressed point).
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
    /// The browser that subscribed, to tell subscriptions apart in a list.
    pub user_agent: Option<String>,
    /// The address (`scheme://host[:port]`) of the page that subscribed: its service
    /// worker only opens links there.
    pub origin: Option<String>,
    /// When it subscribed.
    pub created_at: Millis,
}

/// What an owner's credential may do (issue 16), weakest first: each role may do all that
/// the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads sessions.
    Viewer,
    /// Also answers permission requests and interrupts.
    Approver,
    /// Also sends prompts, changes model and mode, creates and archives sessions.
    Driver,
    /// Also manages keys, devices and policy.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Approver, Role::Driver, Role::Admin];

    /// The stored (and wire) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Driver => "driver",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored (or wire) name.
    pub fn parse(s: &str) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A credential a person holds (an API key or a signed-in browser), with when, from where
/// and by what it was last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The credential.
    pub credential: Credential,
    /// When it was last used (to the minute).
    pub last_used_at: Option<Millis>,
    /// The client address it was last used from.
    pub last_address: Option<String>,
    /// The user agent that last used it.
    pub user_agent: Option<String>,
}

/// What a policy rule (or the default) answers a permission request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Approve at once.
    Allow,
    /// Refuse at once.
    Deny,
    /// Wait for a person.
    Ask,
}

impl Decision {
    /// The stored (and wire) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Ask => "ask",
        }
    }

    /// Parses a stored (or wire) name.
    pub fn parse(s: &str) -> Option<Self> {
        [Decision::Allow, Decision::Deny, Decision::Ask]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// One approval rule of an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// Opaque id (`rule_…`).
    pub id: String,
    /// Whose it is.
    pub owner_id: String,
    /// Applies only to sessions on this environment, if set.
    pub environment_id: Option<String>,
    /// Applies only to this session (body id), if set.
    pub session_id: Option<String>,
    /// Order: the lowest position that matches wins.
    pub position: i64,
    /// The tool name it matches (`*` for any).
    pub tool: String,
    /// The pattern on the tool's input (command prefix, path glob, domain), if any.
    pub pattern: Option<String>,
    /// Its answer.
    pub decision: Decision,
    /// When it was made.
    pub created_at: Millis,
}

/// A session shared with another owner, who may reach it at `role` (never more than
/// the role of the credential they use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionShare {
    /// The session (body id).
    pub session_id: String,
    /// The owner it is shared with.
    pub owner_id: String,
    /// That owner's name.
    pub owner_name: String,
    /// The most that owner may do with it.
    pub role: Role,
    /// When it was shared (or the role last changed).
    pub created_at: Millis,
}

/// An owner's policy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySettings {
    /// The answer when no rule matches.
    pub default: Decision,
    /// How long a request may wait for a person before it gets the default answer
    /// (`deny` when the default is `ask`); `None`: forever.
    pub timeout_ms: Option<Millis>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            default: Decision::Ask,
            timeout_ms: None,
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its place in the log (ignored when appending).
    pub id: i64,
    /// The owner whose log it is.
    pub owner_id: String,
    /// When.
    pub at: Millis,
    /// What, e.g. `permission.answer`, `session.prompt`, `policy.add`, `key.revoke`.
    pub action: String,
    /// The credential that did it (`None` for a rule or the server).
    pub credential_id: Option<String>,
    /// That credential's name, when read back.
    pub credential_name: Option<String>,
    /// The client address.
    pub address: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The session it concerned, if one.
    pub session_id: Option<String>,
    /// The particulars, as JSON text.
    pub detail: String,
}

/// Which audit entries to read, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this session's.
    pub session_id: Option<String>,
    /// Only those at or after this time.
    pub since: Option<Millis>,
    /// Only those older than this entry (paging).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: u32,
}
