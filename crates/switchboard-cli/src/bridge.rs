//! `switchboard bridge`: puts an agent running on this machine under remote control, the
//! Rust counterpart of `claude remote-control` (docs/PROTOCOL.md §4.9, §7 and §16.1).
//!
//! It registers an environment for the current directory, creates a session (empty, or
//! started with `--new PROMPT`), prints its link and a QR code of it, and then long-polls
//! for work. For each work item it acknowledges the item and starts an agent for that
//! session, heartbeats it while it runs, and when the agent ends stops the work and
//! archives the session. On Ctrl-C or SIGTERM it stops every agent (SIGTERM, then SIGKILL
//! after a grace period), stops their work, archives the sessions and deregisters.
//!
//! **Names.** "Bridge" alone means this command (and `claude remote-control`, which it
//! mirrors): a program that registers an *environment* and runs the sessions the server
//! hands it as work. The other things the protocol calls "bridge" keep a qualifier:
//!
//! - the **Environments API** (§4) is what a bridge speaks to the server; its
//!   registration route happens to be `POST /v1/environments/bridge`, and its client is
//!   `switchboard_client::BridgeApiClient` (the official client's name for it);
//! - the **env-less bridge** (`switchboard_client::EnvLessBridge`, §10.3) is the REPL's
//!   `/remote-control` without an environment; its `POST /v1/code/sessions/{id}/bridge`
//!   is the **worker credentials** call;
//! - the **relay** ([`relay`]) is how this command carries a stream-json agent's
//!   messages; the agent itself is the **agent** (or *child*), never "the bridge".
//!
//! The pieces, each depending only on the ones below it (none on this file):
//!
//! - this file: flags, registration, the first session, shutdown;
//! - [`supervisor`]: the poll loop, capacity, token updates, heartbeats, session ends;
//! - [`session`]: one session's life: workspace, worker registration, the agent process;
//! - [`relay`]: carries a stream-json agent's stdio over the session's transport;
//! - [`work`]: what those three share about a session: the work item, the task's
//!   context and handle, its events and how it ended;
//! - [`process`]: a started agent's stderr tail, how it is stopped, what its exit means;
//! - [`agent`]: how an agent is started, natively (`claude --sdk-url`) or as a
//!   stream-json command;
//! - [`detect`]: which of the two the installed Claude Code allows (`--agent auto`);
//! - [`options`]: the checked options everything runs on;
//! - [`workspace`]: git facts and per-session worktrees;
//! - [`display`]: the status line on a terminal, plain lines otherwise, the QR code and
//!   session links;
//! - [`explain`]: how a failed call reads to a person.

mod agent;
mod detect;
pub(crate) mod display;
mod explain;
mod options;
mod process;
mod relay;
mod session;
mod supervisor;
mod work;
mod workspace;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::json;
use switchboard_client::{BridgeApiClient, SessionsClient};
use switchboard_proto::environments::RegisterEnvironmentRequest;
use switchboard_proto::sessions::CreateSessionRequest;
use tokio_util::sync::CancellationToken;

use crate::remote::RemoteArgs;
use agent::AgentSpec;
use display::{session_link, Display};
use explain::explain;
use options::{BridgeOptions, SpawnMode};
use supervisor::Supervisor;

/// The `metadata.worker_type` the environment is registered with: the official bridge's
/// value, since the agent is Claude Code or speaks like it.
const WORKER_TYPE: &str = "claude_code";

/// The `source` of sessions the bridge creates, as the official bridge sends it.
const SESSION_SOURCE: &str = "remote-control";

/// The longest title derived from a `--new` prompt.
const MAX_TITLE_CHARS: usize = 80;

/// How the agent is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AgentMode {
    /// Whichever the installed Claude Code allows: natively when it accepts this server's
    /// URL for `--sdk-url` (2.1.112 and older), stream-json otherwise (2.1.113 and newer
    /// refuse every host but Anthropic's).
    Auto,
    /// Claude Code itself: `claude --print --sdk-url …`, which connects to the session on
    /// its own.
    Claude,
    /// Any command that speaks stream-json on stdin and stdout; the bridge carries its
    /// messages to and from the session.
    StreamJson,
}

/// Which data plane the sessions the bridge creates use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Plane {
    /// Session ingress v1: WebSocket read, HTTP POST write.
    V1,
    /// CCR v2: the `/v1/code/sessions/{id}/worker` API with an SSE stream.
    V2,
}

/// Flags of `switchboard bridge`.
#[derive(Debug, Args)]
pub(crate) struct BridgeArgs {
    /// Start a session with this prompt right away, to continue it from the link.
    #[arg(long, value_name = "PROMPT")]
    new: Option<String>,
    /// Do not create a session at start; only run the sessions created elsewhere (e.g.
    /// from the web UI).
    #[arg(long, conflicts_with = "new")]
    no_session: bool,
    /// Title of the session the bridge creates (default: from the prompt, if any).
    #[arg(long, value_name = "TITLE")]
    name: Option<String>,
    /// Data plane of the sessions the bridge creates.
    #[arg(long, env = "SWITCHBOARD_BRIDGE_PLANE", value_enum, default_value_t = Plane::V1)]
    plane: Plane,
    /// How sessions share the directory.
    #[arg(long, env = "SWITCHBOARD_BRIDGE_SPAWN", value_enum, default_value_t = SpawnMode::SameDir)]
    spawn: SpawnMode,
    /// How many sessions may run at once (always 1 with --spawn single-session).
    #[arg(long, env = "SWITCHBOARD_BRIDGE_MAX_SESSIONS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    max_sessions: u32,
    /// Stop a session that runs longer than this many seconds.
    #[arg(long, env = "SWITCHBOARD_BRIDGE_SESSION_TIMEOUT", value_name = "SECS",
          default_value_t = 24 * 60 * 60, value_parser = clap::value_parser!(u64).range(1..))]
    session_timeout: u64,
    /// How the agent runs: Claude Code natively, a stream-json command (the one given
    /// after `--`, or Claude Code in print mode), or auto: whichever the installed Claude
    /// Code allows (the default without a command).
    #[arg(long, env = "SWITCHBOARD_BRIDGE_AGENT", value_enum)]
    agent: Option<AgentMode>,
    /// The Claude Code program (native mode).
    #[arg(
        long,
        env = "SWITCHBOARD_CLAUDE",
        value_name = "PROGRAM",
        default_value = "claude"
    )]
    claude: String,
    /// An extra argument for Claude Code (native mode); repeat for several.
    #[arg(long = "claude-arg", value_name = "ARG", allow_hyphen_values = true)]
    claude_args: Vec<String>,
    /// The permission mode sessions start in (passed to Claude Code and to the server).
    #[arg(long, value_name = "MODE")]
    permission_mode: Option<String>,
    /// The stream-json agent command and its arguments (stream-json mode), e.g.
    /// `-- claude -p --input-format stream-json --output-format stream-json --verbose
    /// --permission-prompt-tool stdio`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// How long stopping agents may take before they are killed, in seconds.
    #[arg(
        long,
        env = "SWITCHBOARD_BRIDGE_SHUTDOWN_GRACE",
        value_name = "SECS",
        default_value_t = 30
    )]
    shutdown_grace: u64,
    /// How often to heartbeat each running work item, in seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    heartbeat: u64,
    /// The shortest pause between two polls that found no work, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2_000, hide = true)]
    poll_interval_ms: u64,
    /// How often to poll while every session slot is taken, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60, hide = true)]
    at_capacity_poll: u64,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// The session the bridge creates at start, if any.
#[derive(Debug, Clone, PartialEq)]
enum FirstSession {
    None,
    Empty,
    Prompt(String),
}

impl BridgeArgs {
    fn api_key(&self) -> anyhow::Result<String> {
        match self.remote.token() {
            Ok(token) => Ok(token),
            // `switchboard serve` prints the key as CLAUDE_BRIDGE_OAUTH_TOKEN for Claude
            // Code; the bridge accepts the same variable.
            Err(e) => std::env::var("CLAUDE_BRIDGE_OAUTH_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().to_owned())
                .ok_or(e),
        }
    }

    fn base_url(&self) -> String {
        match std::env::var("CLAUDE_BRIDGE_BASE_URL") {
            Ok(url) if std::env::var_os("SWITCHBOARD_URL").is_none() && !url.trim().is_empty() => {
                url.trim().trim_end_matches('/').to_owned()
            }
            _ => self.remote.base_url().to_owned(),
        }
    }

    fn first_session(&self) -> anyhow::Result<FirstSession> {
        Ok(match (&self.new, self.no_session) {
            (Some(prompt), _) if prompt.trim().is_empty() => {
                anyhow::bail!("--new needs a prompt, e.g. --new \"fix the failing test\"")
            }
            (Some(prompt), _) => FirstSession::Prompt(prompt.clone()),
            (None, true) => FirstSession::None,
            (None, false) => FirstSession::Empty,
        })
    }

    /// Arguments for Claude Code beyond the bridge's own: `--claude-arg`s and the
    /// permission mode.
    fn claude_extra_args(&self) -> Vec<String> {
        let mut extra = self.claude_args.clone();
        if let Some(mode) = &self.permission_mode {
            extra.extend(["--permission-mode".to_owned(), mode.clone()]);
        }
        extra
    }

    /// How the agent runs, and one line saying why.
    async fn agent(&self, base_url: &str) -> anyhow::Result<(AgentSpec, String)> {
        let mode = match (self.agent, self.command.is_empty()) {
            (Some(AgentMode::Claude), false) => anyhow::bail!(
                "a command after -- runs in stream-json mode; drop --agent claude or pass \
                 --agent stream-json"
            ),
            (Some(AgentMode::Auto), false) => anyhow::bail!(
                "a command after -- runs in stream-json mode; drop --agent auto or pass \
                 --agent stream-json"
            ),
            (Some(mode), _) => mode,
            (None, true) => AgentMode::Auto,
            (None, false) => AgentMode::StreamJson,
        };
        let (native, why) = match mode {
            AgentMode::Claude => (
                true,
                "Claude Code connects to its sessions natively (--sdk-url), as --agent claude asks"
                    .to_owned(),
            ),
            AgentMode::StreamJson if !self.command.is_empty() => (
                false,
                "the command after -- speaks stream-json; the bridge relays it".to_owned(),
            ),
            AgentMode::StreamJson => (
                false,
                "the bridge relays Claude Code's stream-json, as --agent stream-json asks"
                    .to_owned(),
            ),
            AgentMode::Auto => {
                // The program must be there before it can be asked anything.
                let program = agent::find_claude(&self.claude)?;
                let choice = detect::detect(&program, &probe_urls(base_url)).await;
                (choice.native, choice.why)
            }
        };
        let spec = if native {
            AgentSpec::native(&self.claude, self.claude_extra_args())?
        } else if self.command.is_empty() {
            let mut command = agent::default_stream_json_command(&self.claude);
            command.extend(self.claude_extra_args());
            AgentSpec::stream_json(command)?
        } else {
            AgentSpec::stream_json(self.command.clone())?
        };
        Ok((spec, why))
    }

    /// Checks the flags and the agent program, and builds the options.
    async fn options(&self) -> anyhow::Result<BridgeOptions> {
        let directory = std::env::current_dir()
            .context("cannot read the current directory")?
            .canonicalize()
            .context("cannot resolve the current directory")?;
        let base_url = self.base_url();
        let (agent, agent_why) = self.agent(&base_url).await?;
        let max_sessions = match self.spawn {
            SpawnMode::SingleSession => 1,
            _ => self.max_sessions,
        };
        if self.spawn == SpawnMode::Worktree {
            workspace::git_toplevel(&directory).with_context(|| {
                format!(
                    "--spawn worktree needs a git repository, and {} is not in one",
                    directory.display()
                )
            })?;
        }
        if self.spawn == SpawnMode::SingleSession && self.no_session {
            anyhow::bail!(
                "--spawn single-session runs the session the bridge creates; drop --no-session"
            );
        }
        Ok(BridgeOptions {
            web_url: base_url.clone(),
            base_url,
            api_key: self.api_key()?,
            directory,
            spawn: self.spawn,
            max_sessions,
            session_timeout: Duration::from_secs(self.session_timeout),
            agent,
            agent_why,
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            heartbeat: (self.heartbeat > 0).then(|| Duration::from_secs(self.heartbeat)),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            at_capacity_poll: Duration::from_secs(self.at_capacity_poll.max(1)),
        })
    }
}

/// The `--sdk-url`s a native child of this server would get, on either plane, for the
/// dry runs of [`detect`].
fn probe_urls(base_url: &str) -> Vec<String> {
    let probe = "session_0000000000000000";
    let v1 = switchboard_client::ingress::ws_url(
        base_url,
        probe,
        switchboard_client::ingress::IngressVersion::for_base_url(base_url),
    )
    .map(|u| u.to_string());
    let v2 = switchboard_client::worker::worker_session_url(base_url, "cse_0000000000000000");
    [v1, v2].into_iter().filter_map(Result::ok).collect()
}

/// A title from the first line of a prompt.
fn title_from_prompt(prompt: &str) -> String {
    let line = prompt.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let line = line.trim();
    if line.chars().count() <= MAX_TITLE_CHARS {
        return line.to_owned();
    }
    let cut: String = line.chars().take(MAX_TITLE_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

pub(crate) async fn run(args: BridgeArgs) -> anyhow::Result<()> {
    // Every client the bridge builds (and the v1/v2 transports of its sessions) trusts
    // these roots.
    args.remote.install_tls()?;
    let mut options = args.options().await?;
    let first = args.first_session()?;
    let display = Display::new();
    let api = BridgeApiClient::new(&options.base_url, options.api_key.clone())
        .with_runner_version(concat!("switchboard/", env!("CARGO_PKG_VERSION")));
    let sessions = SessionsClient::new(&options.base_url, options.api_key.clone());

    let git = workspace::GitInfo::read(&options.directory).await;
    let machine = gethostname::gethostname().to_string_lossy().into_owned();
    let request = RegisterEnvironmentRequest {
        machine_name: machine.clone(),
        directory: options.directory.display().to_string(),
        branch: git.branch.clone().unwrap_or_default(),
        git_repo_url: git.remote_url.clone(),
        max_sessions: options.max_sessions,
        metadata: json!({ "worker_type": WORKER_TYPE }),
        environment_id: None,
    };
    let environment = api
        .register_environment(&request)
        .await
        .map_err(|e| anyhow::anyhow!(explain(&e, &options.base_url)))?;
    // Links are for phones and other machines: they use the address the server is
    // reached at publicly (its --public-url), not necessarily the bridge's own --url.
    if let Some(web_url) = environment.web_url.as_deref() {
        let web_url = web_url.trim().trim_end_matches('/');
        if web_url.starts_with("http://") || web_url.starts_with("https://") {
            options.web_url = web_url.to_owned();
        }
    }
    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    supervisor::watch_signals(shutdown.clone(), force.clone())?;

    display.banner(&options, &machine, &git, &environment.environment_id);
    let mut known_sessions = Vec::new();
    let created = create_first_session(
        &sessions,
        &first,
        &args,
        &environment.environment_id,
        &options,
    )
    .await;
    match created {
        Ok(Some(id)) => {
            let link = session_link(&options.web_url, &id);
            // A phone that scans the code signs in with a single-use link and lands on
            // the session; the plain link is for browsers that are signed in already.
            let path = link.strip_prefix(options.web_url.as_str());
            let pairing = sessions.create_pairing(path).await.ok();
            display.session_link(&link, pairing.as_deref());
            known_sessions.push(id);
        }
        Ok(None) => display.line("Waiting for sessions; create one from the web UI."),
        Err(e) => {
            // Without its session the bridge would wait for nothing; undo the registration.
            let _ = api
                .deregister_environment(&environment.environment_id)
                .await;
            return Err(e);
        }
    }

    let supervisor = Supervisor::new(
        Arc::new(options),
        api,
        sessions,
        environment,
        display,
        shutdown,
        force,
        known_sessions,
    );
    supervisor.run().await
}

async fn create_first_session(
    sessions: &SessionsClient,
    first: &FirstSession,
    args: &BridgeArgs,
    environment_id: &str,
    options: &BridgeOptions,
) -> anyhow::Result<Option<String>> {
    let prompt = match first {
        FirstSession::None => return Ok(None),
        FirstSession::Empty => None,
        FirstSession::Prompt(prompt) => Some(prompt),
    };
    let title = args
        .name
        .clone()
        .or_else(|| prompt.map(|p| title_from_prompt(p)));
    let request = CreateSessionRequest {
        title,
        environment_id: Some(environment_id.to_owned()),
        source: Some(SESSION_SOURCE.to_owned()),
        permission_mode: args.permission_mode.clone(),
        use_code_sessions: Some(args.plane == Plane::V2),
        session_context: json!({ "cwd": options.directory.display().to_string() }),
        ..CreateSessionRequest::default()
    };
    let session = sessions.create_session(&request).await.map_err(|e| {
        anyhow::anyhow!(
            "could not create a session: {}",
            explain(&e, &options.base_url)
        )
    })?;
    if let Some(prompt) = prompt {
        let uuid = uuid::Uuid::new_v4().to_string();
        let message = switchboard_client::viewer::user_message(&uuid, prompt.as_str());
        sessions
            .send_events(&session.id, vec![message])
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "could not send the prompt: {}",
                    explain(&e, &options.base_url)
                )
            })?;
    }
    Ok(Some(session.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_line_and_are_cut() {
        assert_eq!(title_from_prompt("\n  fix it \nmore"), "fix it");
        let long = "x".repeat(200);
        let title = title_from_prompt(&long);
        assert_eq!(title.chars().count(), MAX_TITLE_CHARS);
        assert!(title.ends_with('…'));
    }
}
