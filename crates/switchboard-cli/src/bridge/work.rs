//! What the supervisor, a session task and the stream-json relay share about one
//! session the bridge took on: the work item, what the task needs from the bridge, the
//! supervisor's handle on it, what it reports, and how it ended.
//!
//! These types live apart from [`super::session`] (which runs a session) and
//! [`super::relay`] (which one way of running it uses), so that neither of the two needs
//! the other's module for them.

use std::sync::Arc;
use std::time::Duration;

use switchboard_client::worker::{register_worker, worker_session_url};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::display::Display;
use super::explain::explain;
use super::options::BridgeOptions;

/// How often worker registration is tried, and the pause between tries (§7.1).
const REGISTER_ATTEMPTS: u32 = 2;
const REGISTER_RETRY_DELAY: Duration = Duration::from_secs(2);

/// A work item the bridge took on.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    /// The session id as the work item named it (`cse_…`).
    pub(crate) session_id: String,
    /// The id's body, the bridge's key for the session.
    pub(crate) body: String,
    /// The ingress token of the latest work item for the session.
    pub(crate) token: String,
    /// Whether the session is on the v2 plane.
    pub(crate) use_code_sessions: bool,
}

impl Work {
    /// Registers the bridge as the session's v2 worker; returns the session URL and the
    /// epoch (docs/PROTOCOL.md §9.2).
    pub(crate) async fn register_worker(&self, base_url: &str) -> Result<(String, u64), String> {
        let session_url =
            worker_session_url(base_url, &self.session_id).map_err(|e| e.to_string())?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match register_worker(&session_url, &self.token).await {
                Ok(epoch) => return Ok((session_url, epoch)),
                Err(e) if attempt >= REGISTER_ATTEMPTS => {
                    return Err(format!(
                        "could not register as the session's worker ({})",
                        explain(&e, base_url)
                    ))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "worker registration failed; retrying");
                    tokio::time::sleep(REGISTER_RETRY_DELAY).await;
                }
            }
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The agent exited with status 0.
    Completed,
    /// The agent could not start or exited otherwise; the text says why and what to do.
    Failed(String),
    /// The bridge stopped it (shutdown).
    Interrupted,
    /// It ran longer than `--session-timeout`.
    TimedOut,
}

/// Why the bridge ended an agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The bridge is stopping.
    Stopped,
    /// The session ran out of time.
    TimedOut,
}

/// What a session task tells the supervisor.
#[derive(Debug)]
pub(crate) enum Event {
    /// The session's agent is gone (or never started).
    Ended {
        /// The session's body.
        body: String,
        /// How.
        outcome: Outcome,
    },
    /// The session's state as the relay sees it: `idle`, `running` or `needs approval`.
    State {
        /// The session's body.
        body: String,
        /// The state.
        state: &'static str,
    },
}

/// What the session task needs from the bridge.
#[derive(Debug, Clone)]
pub(crate) struct SessionContext {
    pub(crate) options: Arc<BridgeOptions>,
    pub(crate) display: Display,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Cancelled when agents must die at once (a second Ctrl-C).
    pub(crate) force: CancellationToken,
}

/// The supervisor's handle on a running session task.
#[derive(Debug)]
pub(crate) struct SessionControl {
    /// Cancel to stop the agent.
    pub(crate) stop: CancellationToken,
    /// Send a new ingress token.
    pub(crate) token: watch::Sender<String>,
}

/// A short name for a session in lines a person reads.
pub(crate) fn short(body: &str) -> String {
    format!("session_{body}")
}
