//! One session's life on the bridge: its workspace, its worker registration on the v2
//! plane, its agent process, and how it ended.
//!
//! The supervisor starts [`run`] in a task per acknowledged work item and talks to it
//! through a [`SessionControl`]: cancelling `stop` ends the agent (SIGTERM, then SIGKILL
//! after the grace period or at once when the bridge is forced down), and a new ingress
//! token sent on `token` reaches the agent (native children get it on stdin, §7.3; the
//! relay's transports read it at their next request). The task reports its end with
//! [`Event::Ended`].

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use switchboard_client::ingress::{self, IngressVersion};
use switchboard_client::worker::{register_worker, worker_session_url};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStderr};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::agent::{self, NativeSession};
use super::display::Display;
use super::workspace::{Cleanup, Worktree};
use super::{relay, BridgeOptions, SpawnMode};

/// How many of the agent's last stderr lines are kept, to explain a crash.
const STDERR_TAIL: usize = 20;

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

/// Why the bridge ended an agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The bridge is stopping.
    Stopped,
    /// The session ran out of time.
    TimedOut,
}

/// A short name for a session in lines a person reads.
pub(crate) fn short(body: &str) -> String {
    format!("session_{body}")
}

/// Runs one session to its end and reports how it ended.
pub(crate) async fn run(
    ctx: Arc<SessionContext>,
    work: Work,
    stop: CancellationToken,
    token: watch::Receiver<String>,
) {
    let body = work.body.clone();
    let outcome = run_inner(&ctx, &work, stop, token).await;
    let _ = ctx.events.send(Event::Ended { body, outcome });
}

async fn run_inner(
    ctx: &Arc<SessionContext>,
    work: &Work,
    stop: CancellationToken,
    token: watch::Receiver<String>,
) -> Outcome {
    let options = &ctx.options;
    let name = short(&work.body);
    let (worktree, cwd) = match options.spawn {
        SpawnMode::Worktree => match Worktree::create(&options.directory, &work.body).await {
            Ok((worktree, cwd)) => (Some(worktree), cwd),
            Err(e) => {
                return Outcome::Failed(format!(
                    "could not create its git worktree ({e:#}); check that the repository has a \
                     commit and that `git worktree add` works there"
                ))
            }
        },
        SpawnMode::SameDir | SpawnMode::SingleSession => (None, options.directory.clone()),
    };
    let plane = if work.use_code_sessions { "v2" } else { "v1" };
    ctx.display.line(&format!(
        "{name}: starting the agent ({plane}) in {}",
        cwd.display()
    ));
    let outcome = if options.agent.is_native() {
        run_native(ctx, work, &cwd, stop, token).await
    } else {
        relay::run(ctx, work, &cwd, stop, token).await
    };
    if let Some(worktree) = worktree {
        if let Cleanup::Kept(message) = worktree.remove().await {
            ctx.display.line(&format!("{name}: {message}"));
        }
    }
    outcome
}

/// Registers the bridge as the session's v2 worker and returns the epoch (§9.2).
pub(crate) async fn register(base_url: &str, work: &Work) -> Result<(String, u64), String> {
    let session_url = worker_session_url(base_url, &work.session_id).map_err(|e| e.to_string())?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match register_worker(&session_url, &work.token).await {
            Ok(epoch) => return Ok((session_url, epoch)),
            Err(e) if attempt >= REGISTER_ATTEMPTS => {
                return Err(format!(
                    "could not register as the session's worker ({})",
                    super::explain(&e, base_url)
                ))
            }
            Err(e) => {
                tracing::debug!(error = %e, "worker registration failed; retrying");
                tokio::time::sleep(REGISTER_RETRY_DELAY).await;
            }
        }
    }
}

async fn run_native(
    ctx: &Arc<SessionContext>,
    work: &Work,
    cwd: &std::path::Path,
    stop: CancellationToken,
    mut token: watch::Receiver<String>,
) -> Outcome {
    let options = &ctx.options;
    let (sdk_url, epoch) = if work.use_code_sessions {
        match register(&options.base_url, work).await {
            Ok((url, epoch)) => (url, Some(epoch)),
            Err(message) => return Outcome::Failed(message),
        }
    } else {
        let version = IngressVersion::for_base_url(&options.base_url);
        match ingress::ws_url(&options.base_url, &work.session_id, version) {
            Ok(url) => (url.to_string(), None),
            Err(e) => return Outcome::Failed(e.to_string()),
        }
    };
    let current = token.borrow_and_update().clone();
    let session = NativeSession {
        sdk_url: &sdk_url,
        session_id: &work.session_id,
        token: &current,
        worker_epoch: epoch,
    };
    let mut child = match agent::native_command(&options.agent, &session, cwd).spawn() {
        Ok(child) => child,
        Err(e) => return spawn_failed(&options.agent, &e),
    };
    let mut stderr = stderr_tail(child.stderr.take());
    if let Some(stdout) = child.stdout.take() {
        let display = ctx.display.clone();
        let name = short(&work.body);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // A bridge child copies its control requests to stdout for its parent,
                // which only tells the person about them (§7.2).
                match serde_json::from_str::<Value>(&line) {
                    Ok(message) => {
                        if let Some(text) = permission_note(&message) {
                            display.line(&format!("{name}: {text}"));
                        }
                    }
                    Err(_) => tracing::debug!(%line, "agent stdout"),
                }
            }
        });
    }
    let mut stdin = child.stdin.take();
    let deadline = tokio::time::sleep(options.session_timeout);
    tokio::pin!(deadline);
    let (status, ending) = loop {
        tokio::select! {
            status = child.wait() => break (status, None),
            () = stop.cancelled() => {
                break (terminate(&mut child, options.shutdown_grace, &ctx.force).await, Some(Ending::Stopped));
            }
            () = &mut deadline => {
                break (terminate(&mut child, options.shutdown_grace, &ctx.force).await, Some(Ending::TimedOut));
            }
            changed = token.changed() => {
                if changed.is_err() {
                    continue;
                }
                let fresh = token.borrow_and_update().clone();
                if let Some(pipe) = stdin.as_mut() {
                    let line = agent::token_update_line(&fresh);
                    if pipe.write_all(line.as_bytes()).await.is_err() || pipe.flush().await.is_err() {
                        tracing::debug!("the agent's stdin is closed; token update not delivered");
                        stdin = None;
                    }
                }
            }
        }
    };
    stderr.settle().await;
    outcome(status, ending, &stderr.lines)
}

/// A line about a permission prompt the agent raised, if `message` is one.
pub(crate) fn permission_note(message: &Value) -> Option<String> {
    if message["type"] != "control_request" || message["request"]["subtype"] != "can_use_tool" {
        return None;
    }
    let tool = message["request"]["display_name"]
        .as_str()
        .or_else(|| message["request"]["tool_name"].as_str())
        .unwrap_or("a tool");
    Some(format!("waiting for permission to use {tool}"))
}

/// The failure of a child that could not be started.
pub(crate) fn spawn_failed(spec: &agent::AgentSpec, error: &std::io::Error) -> Outcome {
    Outcome::Failed(format!(
        "could not start the agent {} ({error}); check that it is installed and executable",
        spec.program().display()
    ))
}

/// The last lines an agent wrote on stderr, read by a task of their own.
pub(crate) struct StderrTail {
    /// The lines kept (at most `STDERR_TAIL`).
    pub(crate) lines: Arc<Mutex<VecDeque<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl StderrTail {
    /// Waits (briefly) until everything the agent wrote on stderr has been read: an
    /// agent that exits right after its last words must not have them lost to a race
    /// with the reader. The wait is bounded, since something the agent started may keep
    /// the pipe open after it exits.
    pub(crate) async fn settle(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
    }
}

/// Keeps the last lines the agent wrote on stderr (and logs them at debug level).
pub(crate) fn stderr_tail(stderr: Option<ChildStderr>) -> StderrTail {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let reader = stderr.map(|stderr| {
        let keep = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(%line, "agent stderr");
                let mut keep = keep.lock().unwrap_or_else(PoisonError::into_inner);
                if keep.len() == STDERR_TAIL {
                    keep.pop_front();
                }
                keep.push_back(line);
            }
        })
    });
    StderrTail {
        lines: tail,
        reader,
    }
}

/// Ends a child and what it started: SIGTERM to its process group, then SIGKILL after
/// `grace` or as soon as `force` is cancelled.
pub(crate) async fn terminate(
    child: &mut Child,
    grace: Duration,
    force: &CancellationToken,
) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // Every agent leads its own process group (see `agent::base_command`).
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGTERM);
    }
    tokio::select! {
        status = child.wait() => return status,
        () = tokio::time::sleep(grace) => {}
        () = force.cancelled() => {}
    }
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.start_kill();
    child.wait().await
}

/// How a session ended, from its agent's exit and whether the bridge ended it.
pub(crate) fn outcome(
    status: std::io::Result<ExitStatus>,
    ending: Option<Ending>,
    stderr: &Arc<Mutex<VecDeque<String>>>,
) -> Outcome {
    match ending {
        Some(Ending::Stopped) => return Outcome::Interrupted,
        Some(Ending::TimedOut) => return Outcome::TimedOut,
        None => {}
    }
    let status = match status {
        Ok(status) => status,
        Err(e) => return Outcome::Failed(format!("lost track of the agent ({e})")),
    };
    if status.success() {
        return Outcome::Completed;
    }
    let how = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt as _;
            match status.signal() {
                // Someone else stopped it the way the bridge would have (§4.9).
                Some(signal)
                    if signal == Signal::SIGTERM as i32 || signal == Signal::SIGINT as i32 =>
                {
                    return Outcome::Interrupted
                }
                Some(signal) => format!("was killed by signal {signal}"),
                None => "ended abnormally".to_owned(),
            }
        }
    };
    let last = stderr
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .cloned();
    // Claude Code 2.1.113 and newer refuse a self-hosted server's --sdk-url; say what
    // works instead.
    let hint = if last
        .as_deref()
        .is_some_and(|l| l.contains("--sdk-url rejected"))
    {
        "; this Claude Code does not connect to self-hosted servers: run the bridge with \
         --agent stream-json (or without --agent, which picks it)"
    } else {
        ""
    };
    let last = last
        .map(|l| format!("; its last words: {}", l.trim()))
        .unwrap_or_default();
    Outcome::Failed(format!("the agent {how}{last}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_permission_prompts_are_worth_a_line() {
        let prompt = json!({"type": "control_request", "request_id": "r",
            "request": {"subtype": "can_use_tool", "tool_name": "Bash", "display_name": "Bash"}});
        assert_eq!(
            permission_note(&prompt).as_deref(),
            Some("waiting for permission to use Bash")
        );
        let interrupt = json!({"type": "control_request", "request": {"subtype": "interrupt"}});
        assert_eq!(permission_note(&interrupt), None);
    }

    #[tokio::test]
    async fn a_crash_is_reported_with_the_last_stderr_line() -> anyhow::Result<()> {
        let status = tokio::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .status()
            .await;
        let tail = Arc::new(Mutex::new(VecDeque::from([
            "boom".to_owned(),
            String::new(),
        ])));
        let outcome = outcome(status, None, &tail);
        assert_eq!(
            outcome,
            Outcome::Failed("the agent exited with status 3; its last words: boom".into())
        );
        Ok(())
    }
}
