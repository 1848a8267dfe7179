//! One session's life on the bridge: its workspace, its worker registration on the v2
//! plane, its agent process, and how it ended.
//!
//! The supervisor starts [`run`] in a task per acknowledged work item and talks to it
//! through a [`SessionControl`](super::work::SessionControl), one of the types it shares
//! with this module and the relay in [`super::work`]: cancelling `stop` ends the agent
//! (SIGTERM, then SIGKILL after the grace period or at once when the bridge is forced
//! down), and a new ingress token sent on `token` reaches the agent (native children get
//! it on stdin, §7.3; the relay's transports read it at their next request). The task
//! reports its end with [`Event::Ended`].

use std::sync::Arc;

use serde_json::Value;
use switchboard_client::ingress::{self, IngressVersion};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::agent::{self, NativeSession};
use super::display::permission_note;
use super::options::SpawnMode;
use super::process::{outcome, spawn_failed, stderr_tail, terminate};
use super::relay;
use super::work::{short, Ending, Event, Outcome, SessionContext, Work};
use super::workspace::{Cleanup, Worktree};

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

async fn run_native(
    ctx: &Arc<SessionContext>,
    work: &Work,
    cwd: &std::path::Path,
    stop: CancellationToken,
    mut token: watch::Receiver<String>,
) -> Outcome {
    let options = &ctx.options;
    let (sdk_url, epoch) = if work.use_code_sessions {
        match work.register_worker(&options.base_url).await {
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
