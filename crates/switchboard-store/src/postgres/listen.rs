//! PostgreSQL `LISTEN`/`NOTIFY`, for the server nodes that share one database.
//!
//! Two channels carry everything. [`EVENTS_CHANNEL`] gets one notice per committed
//! append, sent by [`super::PgStore::append_events`] inside the append's transaction, so
//! notices arrive at commit, in commit order (which, per session, is sequence order),
//! and never for an append that rolled back. [`CONTROL_CHANNEL`] carries what the server
//! announces itself (work queued, a session closed, a credential revoked, a worker
//! attached) and what the store announces (signing keys changed). The payloads are small
//! text lines. A control notice reads `"<kind> <node> <argument>…"`, where `node` names
//! the server process that sent it (`-` for the store itself), so a node can skip its
//! own; what the kinds mean is up to the server.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::{redact_url, Result, StoreError};

/// The channel of event notices: `"<session id> <last sequence number>"`.
pub const EVENTS_CHANNEL: &str = "switchboard_events";
/// The channel of everything else.
pub const CONTROL_CHANNEL: &str = "switchboard_control";
/// The control notice the store sends when the signing keys change.
pub const SIGNING_KEYS_CHANGED: &str = "k - -";

/// The control notice the store sends when it revoked credential `id`.
pub fn revoked_notice(id: &str) -> String {
    format!("r - {id}")
}

/// The payload of an event notice.
pub fn event_notice(session_id: &str, last_seq: u64) -> String {
    format!("{session_id} {last_seq}")
}

/// Reads an event notice back: the session and the last sequence number appended.
pub fn parse_event_notice(payload: &str) -> Option<(&str, u64)> {
    let (session, seq) = payload.split_once(' ')?;
    Some((session, seq.parse().ok()?))
}

/// One notice received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Something was appended: see [`parse_event_notice`].
    Event(String),
    /// A control notice.
    Control(String),
}

/// A dedicated connection listening on both channels.
pub struct Notices {
    listener: PgListener,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices").finish_non_exhaustive()
    }
}

impl Notices {
    /// Opens the connection and starts listening. Notices sent from now on arrive.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut listener = PgListener::connect(url).await.map_err(|e| {
            StoreError::Other(anyhow::anyhow!(
                "cannot connect to PostgreSQL to listen at {:?}: {e}",
                redact_url(url)
            ))
        })?;
        // A lost connection is reported (`Ok(None)`), not silently replaced: the caller
        // must catch up from the log before it trusts the stream again.
        listener.eager_reconnect(false);
        listener
            .listen_all([EVENTS_CHANNEL, CONTROL_CHANNEL])
            .await?;
        Ok(Self { listener })
    }

    /// The next notice; `None` when the connection was lost (notices sent meanwhile are
    /// gone: drop this and connect again).
    pub async fn next(&mut self) -> Result<Option<Notice>> {
        let Some(n) = self.listener.try_recv().await? else {
            return Ok(None);
        };
        let payload = n.payload().to_string();
        Ok(Some(if n.channel() == EVENTS_CHANNEL {
            Notice::Event(payload)
        } else {
            Notice::Control(payload)
        }))
    }
}

/// Sends control notices, over a small pool of its own (so a busy store pool never
/// delays them).
#[derive(Debug, Clone)]
pub struct Announcer {
    pool: PgPool,
}

impl Announcer {
    /// Prepares the pool; it connects on first use, and again after a failure.
    pub fn new(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .map_err(|e| {
                StoreError::Other(anyhow::anyhow!(
                    "bad PostgreSQL URL {:?}: {e}",
                    redact_url(url)
                ))
            })?;
        Ok(Self { pool })
    }

    /// Sends control notices, in order, in one round trip.
    pub async fn announce(&self, payloads: &[String]) -> Result<()> {
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i",
        )
        .bind(CONTROL_CHANNEL)
        .bind(payloads)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
