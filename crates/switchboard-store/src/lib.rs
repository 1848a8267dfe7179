//! Durable storage for Switchboard.
//!
//! One [`Store`] trait, written in the domain's terms (owners, credentials, environments,
//! sessions, work items and the per-session event log), with the backends behind it. The
//! server holds an `Arc<dyn Store>` and never sees a database type. Backends are chosen
//! by URL scheme with [`open`].
//!
//! Invariants every backend keeps:
//! - Each session's events form one log with strictly increasing sequence numbers,
//!   starting at 1, assigned at append time inside the committing transaction.
//! - A message `uuid` appears at most once per session: appending it again returns the
//!   sequence number it already has and stores nothing.
//! - When an append returns, the events are committed.

#![forbid(unsafe_code)]

mod model;
pub mod postgres;
mod rules;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

pub use model::*;

/// What can go wrong in a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// The row exists in a state that forbids the change (e.g. already archived).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The disk holding the database is full (`SQLITE_FULL`, PostgreSQL's SQLSTATE
    /// 53100): writes fail until space is freed; reads go on.
    #[error("the server's storage is full")]
    StorageFull,
    /// Anything else: the database failed.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// SQLite's primary result code for a full disk (`SQLITE_FULL`); sqlx reports the
/// extended code, whose low byte is the primary one.
const SQLITE_FULL: i32 = 13;
/// PostgreSQL's SQLSTATE `disk_full`.
const PG_DISK_FULL: &str = "53100";

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if is_disk_full_code(db.code().as_deref()) => {
                StoreError::StorageFull
            }
            other => StoreError::Other(other.into()),
        }
    }
}

/// True for the error codes of a full disk: `SQLITE_FULL` (any extended code of it)
/// and PostgreSQL's `53100`.
fn is_disk_full_code(code: Option<&str>) -> bool {
    match code {
        Some(PG_DISK_FULL) => true,
        Some(code) => code.parse::<i32>().is_ok_and(|c| c & 0xff == SQLITE_FULL),
        None => false,
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            e if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
                StoreError::StorageFull
            }
            other => StoreError::Other(other.into()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Other(anyhow::Error::new(e).context("stored JSON is malformed"))
    }
}

/// Result of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A shared handle to a store.
pub type ArcStore = Arc<dyn Store>;

/// The storage interface of the server.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- owners and credentials ---

    /// Returns the owner with this name, creating it if needed.
    async fn ensure_owner(&self, name: &str, now: Millis) -> Result<Owner>;
    /// Stores a new credential.
    async fn insert_credential(&self, credential: &Credential) -> Result<()>;
    /// Looks a credential up by its public id (revoked ones included).
    async fn credential(&self, id: &str) -> Result<Credential>;
    /// Revokes every live credential of `kind` whose scope is `scope`; returns how many.
    async fn revoke_credentials(
        &self,
        kind: CredentialKind,
        scope: &str,
        now: Millis,
    ) -> Result<u64>;
    /// Revokes the live ingress tokens of a session that were minted for work items now
    /// stopped (tokens of its unfinished work items stay valid); returns how many.
    async fn revoke_stopped_work_credentials(&self, session_id: &str, now: Millis) -> Result<u64>;
    /// Revokes one live credential; true when this call revoked it (so a single-use
    /// credential is consumed exactly once, even by concurrent callers).
    async fn consume_credential(&self, id: &str, now: Millis) -> Result<bool>;
    /// Revokes every live credential of `kind` that belongs to `owner_id` ("sign out
    /// everywhere"); returns the ids it revoked.
    async fn revoke_owner_credentials(
        &self,
        owner_id: &str,
        kind: CredentialKind,
        now: Millis,
    ) -> Result<Vec<String>>;
    /// Lists API keys, newest first.
    async fn api_keys(&self) -> Result<Vec<Credential>>;

    // --- environments ---

    /// Inserts a new environment or, when the id exists, re-registers it: its fields are
    /// replaced, it is marked live again and its poll time is reset.
    async fn upsert_environment(&self, env: &Environment) -> Result<()>;
    /// The live (not deregistered) environments of an owner, most recently polled first.
    async fn live_environments(&self, owner_id: &str) -> Result<Vec<Environment>>;
    /// Looks an environment up.
    async fn environment(&self, id: &str) -> Result<Environment>;
    /// Records a poll (the environment's liveness signal).
    async fn touch_environment(&self, id: &str, now: Millis) -> Result<()>;
    /// Marks the environment gone and stops its unfinished work items. Its secrets stay
    /// valid so that its polls learn it is gone (404) rather than being refused (401).
    async fn deregister_environment(&self, id: &str, now: Millis) -> Result<()>;
    /// Ids of live environments whose last poll is older than `polled_before`.
    async fn idle_environments(&self, polled_before: Millis) -> Result<Vec<String>>;

    // --- sessions ---

    /// Stores a new session.
    async fn create_session(&self, session: &Session) -> Result<()>;
    /// Looks a session up by its body id.
    async fn session(&self, id: &str) -> Result<Session>;
    /// Lists an owner's sessions, newest first, `limit` at most, older than `before`.
    async fn list_sessions(
        &self,
        owner_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Session>>;
    /// Changes a session's title.
    async fn set_session_title(&self, id: &str, title: &str, now: Millis) -> Result<()>;
    /// Changes a session's status and what it waits on (never to or from `archived`;
    /// see `archive_session`).
    async fn set_session_status(
        &self,
        id: &str,
        status: SessionStatus,
        requires_action: Option<&serde_json::Value>,
        now: Millis,
    ) -> Result<()>;
    /// Starts a new worker generation: bumps and returns the session's worker epoch.
    async fn bump_worker_epoch(&self, id: &str, now: Millis) -> Result<u64>;
    /// Applies a v2 worker's state report if `epoch` is the current one (`Conflict`
    /// otherwise) and returns the session as it now is.
    async fn update_worker(
        &self,
        id: &str,
        epoch: u64,
        update: &WorkerUpdate,
        now: Millis,
    ) -> Result<Session>;
    /// Archives a session and stops its work. `Conflict` when it already was.
    async fn archive_session(&self, id: &str, now: Millis) -> Result<()>;

    // --- work items ---

    /// Queues a work item.
    async fn enqueue_work(&self, work: &WorkItem) -> Result<()>;
    /// Takes the oldest deliverable work item of an environment: a queued one, or one
    /// delivered at or before `reclaim_before` and never acknowledged. Marks it delivered.
    async fn claim_work(
        &self,
        environment_id: &str,
        now: Millis,
        reclaim_before: Millis,
    ) -> Result<Option<WorkItem>>;
    /// Looks a work item up within its environment.
    async fn work_item(&self, environment_id: &str, id: &str) -> Result<WorkItem>;
    /// Moves a work item to `state` and stamps the matching time. Stopping a stopped item
    /// is a no-op; acknowledging or heartbeating a stopped item is a `Conflict`.
    async fn update_work(
        &self,
        environment_id: &str,
        id: &str,
        state: WorkState,
        now: Millis,
    ) -> Result<WorkItem>;
    /// Stops every unfinished work item of a session; returns how many.
    async fn stop_session_work(&self, session_id: &str, now: Millis) -> Result<u64>;
    /// Stops a work item whose worker was cut short (`force: true`): its session is
    /// offered again by [`Store::take_resumable_work`]. An item already stopped stays as
    /// it was. `NotFound` when there is no such item.
    async fn interrupt_work(&self, environment_id: &str, id: &str, now: Millis)
        -> Result<WorkItem>;
    /// For an environment that registers again: the sessions (not archived, with no
    /// queued work) whose work on it was still open (delivered or acknowledged) or was
    /// interrupted, oldest first, each once. Those items end (stopped, no longer
    /// interrupted), so a session is handed back once; the caller queues new work.
    async fn take_resumable_work(&self, environment_id: &str, now: Millis) -> Result<Vec<String>>;

    // --- the event log ---

    /// Appends events to a session's log in order, in one transaction. Events whose
    /// `uuid` is already in the log are not stored again; their existing sequence number
    /// is returned with `duplicate: true`.
    async fn append_events(
        &self,
        session_id: &str,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<Appended>>;
    /// Reads events of a session.
    async fn events(&self, session_id: &str, query: &EventQuery) -> Result<Vec<StoredEvent>>;
    /// Records that inbound events up to `seq` were handed to a worker.
    async fn advance_worker_cursor(&self, session_id: &str, seq: u64) -> Result<()>;
    /// Records delivery progress of inbound events; a status never moves backwards and
    /// unknown references are ignored.
    async fn set_delivery(
        &self,
        session_id: &str,
        updates: &[(EventRef, DeliveryStatus)],
    ) -> Result<()>;
    /// Every event of a session that carries this control `request_id`, in log order.
    async fn events_by_request(
        &self,
        session_id: &str,
        request_id: &str,
    ) -> Result<Vec<StoredEvent>>;

    // --- v2 worker transcript ---

    /// Appends internal events; returns their sequence numbers.
    async fn append_internal_events(
        &self,
        session_id: &str,
        events: &[NewInternalEvent],
        now: Millis,
    ) -> Result<Vec<u64>>;
    /// Reads internal events after `after`, main-agent ones or (with `subagents`) the
    /// subagents' ones.
    async fn internal_events(
        &self,
        session_id: &str,
        after: u64,
        subagents: bool,
        limit: u32,
    ) -> Result<Vec<InternalEvent>>;

    // --- signing keys ---

    /// Live signing keys, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKey>>;
    /// Stores a new signing key.
    async fn insert_signing_key(&self, key: &SigningKey) -> Result<()>;
    /// Retires every live key created before `before`.
    async fn retire_signing_keys(&self, before: Millis, now: Millis) -> Result<u64>;

    // --- notifications ---

    /// The events that notify an owner, as last set; `None` when never set.
    async fn notify_settings(&self, owner_id: &str) -> Result<Option<Vec<String>>>;
    /// Sets the events that notify an owner.
    async fn set_notify_settings(
        &self,
        owner_id: &str,
        events: &[String],
        now: Millis,
    ) -> Result<()>;
    /// An owner's webhook and ntfy channels.
    async fn notify_channels(&self, owner_id: &str) -> Result<Vec<NotifyChannel>>;
    /// Sets (or replaces) an owner's channel of `channel.kind`.
    async fn put_notify_channel(&self, channel: &NotifyChannel) -> Result<()>;
    /// Removes an owner's channel of `kind`; false when there was none.
    async fn delete_notify_channel(&self, owner_id: &str, kind: &str) -> Result<bool>;
    /// Stores a push subscription; one with the same endpoint is replaced (a browser
    /// that subscribes again keeps one subscription, under the owner signed in now).
    async fn put_push_subscription(&self, sub: &PushSubscription) -> Result<()>;
    /// An owner's push subscriptions, oldest first.
    async fn push_subscriptions(&self, owner_id: &str) -> Result<Vec<PushSubscription>>;
    /// Removes one of an owner's push subscriptions; false when it was not there.
    async fn delete_push_subscription(&self, owner_id: &str, id: &str) -> Result<bool>;
    /// The server's VAPID private key: `candidate` is stored if there is none yet, and
    /// the stored one is returned (so concurrent first calls agree on one key).
    async fn vapid_key(&self, candidate: &str, now: Millis) -> Result<String>;

    // --- roles, devices, approval policy, audit log (issue 16) ---

    /// The live (unrevoked, unexpired at `now`) API keys and web sessions of an owner,
    /// newest first, with their last use.
    async fn devices(&self, owner_id: &str, now: Millis) -> Result<Vec<Device>>;
    /// Records a use of a credential: when, from where, by what.
    async fn touch_credential(
        &self,
        id: &str,
        now: Millis,
        address: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<()>;
    /// Renames an owner's API key or web session; false when it has none by that id.
    async fn rename_credential(&self, owner_id: &str, id: &str, name: &str) -> Result<bool>;
    /// Sets the role of an owner's live API key or web session; false when it has none
    /// by that id.
    async fn set_credential_role(&self, owner_id: &str, id: &str, role: Role) -> Result<bool>;
    /// Revokes an owner's live API key, web session or pairing link; false when it has
    /// no live one by that id.
    async fn revoke_owner_credential(&self, owner_id: &str, id: &str, now: Millis) -> Result<bool>;
    /// An owner's approval rules, in order.
    async fn policy_rules(&self, owner_id: &str) -> Result<Vec<PolicyRule>>;
    /// Stores a new approval rule.
    async fn insert_policy_rule(&self, rule: &PolicyRule) -> Result<()>;
    /// Deletes an owner's rule; false when it has none by that id.
    async fn delete_policy_rule(&self, owner_id: &str, id: &str) -> Result<bool>;
    /// An owner's policy settings (the defaults when never set).
    async fn policy_settings(&self, owner_id: &str) -> Result<PolicySettings>;
    /// Replaces an owner's policy settings.
    async fn set_policy_settings(
        &self,
        owner_id: &str,
        settings: PolicySettings,
        now: Millis,
    ) -> Result<()>;
    /// Appends to the audit log; returns the entry's id.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<i64>;
    /// Reads an owner's audit log, newest first, with each credential's current name.
    async fn audit_log(&self, owner_id: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Shares a session with the owner named `owner_name` at `role`, replacing an earlier
    /// share with them; `NotFound` when no owner has that name.
    async fn put_session_share(
        &self,
        session_id: &str,
        owner_name: &str,
        role: Role,
        now: Millis,
    ) -> Result<SessionShare>;
    /// Ends a session's share with an owner; false when there was none.
    async fn delete_session_share(&self, session_id: &str, owner_id: &str) -> Result<bool>;
    /// The owners a session is shared with, by name.
    async fn session_shares(&self, session_id: &str) -> Result<Vec<SessionShare>>;
    /// The role a session is shared with an owner at, if it is.
    async fn session_share(&self, session_id: &str, owner_id: &str) -> Result<Option<Role>>;
    /// The sessions shared with an owner, newest share first.
    async fn shared_with(&self, owner_id: &str) -> Result<Vec<SessionShare>>;
}

/// Opens the store a URL names: `sqlite://PATH` (created if missing) is the embedded
/// default; `postgres://…` (or `postgresql://…`) names a PostgreSQL 13+ database.
/// Migrations run before it returns.
pub async fn open(url: &str) -> Result<ArcStore> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PgStore::open(url).await?))
    } else {
        Err(StoreError::Other(anyhow::anyhow!(
            "unsupported database URL scheme in {:?}; expected sqlite:// or postgres://",
            redact_url(url)
        )))
    }
}

/// Hides a password in a database URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A stable id for an owner name: hex of its bytes would leak length only, which is fine,
/// but names may hold any character, so hash them into a safe id. Every backend uses
/// this one function, so an owner has the same id whichever database holds it.
pub(crate) fn name_id(name: &str) -> String {
    // FNV-1a, 64 bits: stable across runs and dependency-free; collisions only matter
    // between two owner names, and the unique index on `name` would reject one of them.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Reads a stored counter; both databases only have signed 64-bit integers.
pub(crate) fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

/// Stores a counter, saturating rather than wrapping past `i64::MAX`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn full_disks_are_recognized_by_their_codes() {
        assert!(super::is_disk_full_code(Some("53100")));
        assert!(super::is_disk_full_code(Some("13")));
        assert!(
            !super::is_disk_full_code(Some("53200")),
            "out of memory is not a full disk"
        );
        assert!(!super::is_disk_full_code(Some("5")));
        assert!(!super::is_disk_full_code(None));
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(matches!(
            super::StoreError::from(full),
            super::StoreError::StorageFull
        ));
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            super::redact_url("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(
            super::redact_url("sqlite:///tmp/a.db"),
            "sqlite:///tmp/a.db"
        );
    }
}
