//! The bridge's options, checked: what the supervisor, the session tasks and the display
//! run on. `bridge.rs` builds them from the flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use super::agent::AgentSpec;

/// How the bridge runs sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SpawnMode {
    /// One session; the bridge exits when it ends.
    SingleSession,
    /// Several sessions at once, all in the current directory.
    SameDir,
    /// Several sessions at once, each in its own git worktree.
    Worktree,
}

/// The flags, checked: what the rest of the bridge runs on.
#[derive(Debug, Clone)]
pub(crate) struct BridgeOptions {
    /// The server's base URL, without trailing slash.
    pub(crate) base_url: String,
    /// The base of the links the bridge prints: the server's public URL, as the server
    /// names it when the environment registers (the bridge's own URL until then).
    pub(crate) web_url: String,
    /// The user's API key.
    pub(crate) api_key: String,
    /// The directory the bridge serves (absolute).
    pub(crate) directory: PathBuf,
    /// How sessions share it.
    pub(crate) spawn: SpawnMode,
    /// How many sessions may run at once.
    pub(crate) max_sessions: u32,
    /// How long one session may run.
    pub(crate) session_timeout: Duration,
    /// How to start an agent.
    pub(crate) agent: AgentSpec,
    /// Which agent mode runs and why, in one line.
    pub(crate) agent_why: String,
    /// How long agents get to stop before SIGKILL.
    pub(crate) shutdown_grace: Duration,
    /// The work heartbeat period, if any.
    pub(crate) heartbeat: Option<Duration>,
    /// The shortest pause between empty polls.
    pub(crate) poll_interval: Duration,
    /// The poll period at capacity.
    pub(crate) at_capacity_poll: Duration,
}
