//! An agent process once it is started, whichever way it runs: the tail of its stderr,
//! how the bridge stops it and what started it, and what its exit means for the session.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStderr};
use tokio_util::sync::CancellationToken;

use super::agent;
use super::work::{Ending, Outcome};

/// How many of the agent's last stderr lines are kept, to explain a crash.
const STDERR_TAIL: usize = 20;

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
