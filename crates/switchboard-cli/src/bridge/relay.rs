//! The stream-json relay: runs an agent that speaks stream-json on stdin and stdout and
//! carries its messages to and from the session, so the agent needs no network access
//! and no session credentials of its own.
//!
//! The bridge is the session's worker here, with the transports of switchboard-client:
//! on the v1 plane an [`IngressTransport`] (WebSocket read, POST write), on the v2 plane a
//! [`WorkerTransport`] after `POST …/worker/register` (SSE read, batched event upload,
//! heartbeats). Inbound messages (prompts, permission answers, interrupts) go to the
//! agent's stdin as one JSON line each; every JSON line the agent writes on stdout goes to
//! the session. On the v2 plane the relay also does what the official CCR client does
//! with the agent's messages: it reports the worker's state (`running` when a prompt
//! arrives or a permission answer does, `requires_action` with the pending request while
//! the agent waits for permission, `idle` after each result) and the delivery of prompts
//! (`processing` when handed over, `processed` at the turn's result).
//!
//! `end_session` is passed on and the agent's stdin is closed after it, so an agent that
//! does not know the request still ends. When the session's transport ends for good
//! (the session was archived, or another worker took it over), the agent's stdin is
//! closed, and it is stopped if it does not exit within the grace period.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_client::ingress::IngressVersion;
use switchboard_client::worker::{WorkerConfig, WorkerTransport};
use switchboard_client::{IngressConfig, IngressTransport, TokenSource};
use switchboard_proto::code::{DeliveryStatus, WorkerStatus};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::agent;
use super::display::permission_note;
use super::explain::explain;
use super::process::{outcome, spawn_failed, stderr_tail, terminate};
use super::work::{short, Ending, Event, Outcome, SessionContext, Work};

/// The most messages one v1 POST carries (the ingress limit).
const MAX_V1_BATCH: usize = 500;

/// How long the relay waits for the agent's last output and for the uploads once the
/// agent has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The session's transport, either plane.
enum Transport {
    V1 {
        ingress: IngressTransport,
        writer: mpsc::UnboundedSender<Value>,
        task: JoinHandle<()>,
    },
    V2(WorkerTransport),
}

impl Transport {
    async fn connect(
        ctx: &SessionContext,
        work: &Work,
        token: TokenSource,
    ) -> Result<(Self, mpsc::Receiver<Value>), String> {
        let base_url = &ctx.options.base_url;
        if work.use_code_sessions {
            let (session_url, epoch) = work.register_worker(base_url).await?;
            let config = WorkerConfig::new(&session_url, token, epoch)
                .map_err(|e| format!("bad session URL {session_url}: {e}"))?;
            let (worker, inbound) = WorkerTransport::start(config).await.map_err(|e| {
                format!(
                    "could not attach to the session ({})",
                    explain(&e, base_url)
                )
            })?;
            return Ok((Self::V2(worker), inbound));
        }
        let version = IngressVersion::for_base_url(base_url);
        let config = IngressConfig::new(base_url.clone(), work.session_id.clone(), token)
            .with_version(version);
        let (ingress, inbound) = IngressTransport::connect(config).await.map_err(|e| {
            format!(
                "could not attach to the session ({})",
                explain(&e, base_url)
            )
        })?;
        let (writer, mut queue) = mpsc::unbounded_channel::<Value>();
        let poster = ingress.clone();
        let task = tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_V1_BATCH {
                    match queue.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                if let Err(e) = poster.write(batch).await {
                    tracing::warn!(error = %e, "could not deliver the agent's messages");
                }
            }
        });
        Ok((
            Self::V1 {
                ingress,
                writer,
                task,
            },
            inbound,
        ))
    }

    fn send(&self, message: Value) {
        match self {
            Self::V1 { writer, .. } => {
                let _ = writer.send(message);
            }
            Self::V2(worker) => {
                if let Err(e) = worker.write(vec![message]) {
                    tracing::debug!(error = %e, "could not queue the agent's message");
                }
            }
        }
    }

    fn worker(&self) -> Option<&WorkerTransport> {
        match self {
            Self::V2(worker) => Some(worker),
            Self::V1 { .. } => None,
        }
    }

    /// Uploads what is queued (bounded) and closes.
    async fn finish(self) {
        match self {
            Self::V1 {
                ingress,
                writer,
                mut task,
            } => {
                drop(writer);
                if tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
                ingress.close().await;
            }
            Self::V2(worker) => {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, worker.flush()).await;
                worker.close().await;
            }
        }
    }
}

/// The relay's view of the turn, for the v2 state reports and the status line.
#[derive(Default)]
struct Tracker {
    /// Prompts handed to the agent whose turn has not ended.
    prompts: Vec<String>,
    /// Permission requests the agent waits on.
    waiting: HashSet<String>,
}

impl Tracker {
    fn inbound(
        &mut self,
        message: &Value,
        transport: &Transport,
        ctx: &SessionContext,
        body: &str,
    ) {
        match message["type"].as_str() {
            Some("user") => {
                if let Some(uuid) = message["uuid"].as_str() {
                    self.prompts.push(uuid.to_owned());
                    if let Some(worker) = transport.worker() {
                        let _ = worker.report_delivery(uuid, DeliveryStatus::Processing);
                    }
                }
                self.set(WorkerStatus::Running, None, transport, ctx, body);
            }
            Some("control_response") => {
                let id = message["response"]["request_id"]
                    .as_str()
                    .unwrap_or_default();
                if self.waiting.remove(id) {
                    self.answered(transport, ctx, body);
                }
            }
            _ => {}
        }
    }

    fn outbound(
        &mut self,
        message: &Value,
        transport: &Transport,
        ctx: &SessionContext,
        body: &str,
    ) {
        match message["type"].as_str() {
            Some("control_request") if message["request"]["subtype"] == "can_use_tool" => {
                let request_id = message["request_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let request = &message["request"];
                let tool = request["tool_name"].clone();
                let description = request["input"]["command"]
                    .as_str()
                    .or_else(|| request["description"].as_str())
                    .or_else(|| request["tool_name"].as_str())
                    .unwrap_or_default();
                let details = json!({
                    "tool_name": tool,
                    "action_description": description,
                    "request_id": request_id,
                    "tool_use_id": request["tool_use_id"],
                });
                self.waiting.insert(request_id.clone());
                if let Some(worker) = transport.worker() {
                    let _ = worker.report_metadata(json!({"pending_action": {
                        "tool_name": tool,
                        "action_description": description,
                        "tool_use_id": request["tool_use_id"],
                        "request_id": request_id,
                        "input": request["input"],
                    }}));
                }
                self.set(
                    WorkerStatus::RequiresAction,
                    Some(details),
                    transport,
                    ctx,
                    body,
                );
            }
            Some("control_cancel_request") => {
                let id = message["request_id"].as_str().unwrap_or_default();
                if self.waiting.remove(id) {
                    self.answered(transport, ctx, body);
                }
            }
            Some("result" | "result_success") => {
                self.waiting.clear();
                if let Some(worker) = transport.worker() {
                    for uuid in self.prompts.drain(..) {
                        let _ = worker.report_delivery(uuid, DeliveryStatus::Processed);
                    }
                }
                self.prompts.clear();
                self.set(WorkerStatus::Idle, None, transport, ctx, body);
            }
            _ => {}
        }
    }

    fn answered(&mut self, transport: &Transport, ctx: &SessionContext, body: &str) {
        if let Some(worker) = transport.worker() {
            let _ = worker.report_metadata(json!({"pending_action": null}));
        }
        if self.waiting.is_empty() {
            self.set(WorkerStatus::Running, None, transport, ctx, body);
        }
    }

    fn set(
        &self,
        status: WorkerStatus,
        details: Option<Value>,
        transport: &Transport,
        ctx: &SessionContext,
        body: &str,
    ) {
        if let Some(worker) = transport.worker() {
            let _ = worker.report_state(status, details);
        }
        let state = match status {
            WorkerStatus::Idle => "idle",
            WorkerStatus::Running => "running",
            WorkerStatus::RequiresAction => "needs approval",
        };
        let _ = ctx.events.send(Event::State {
            body: body.to_owned(),
            state,
        });
    }
}

/// Writes one message to the agent as a JSON line; false when its stdin is gone.
async fn to_agent(stdin: &mut Option<ChildStdin>, message: &Value) -> bool {
    let Some(pipe) = stdin.as_mut() else {
        return false;
    };
    let line = format!("{message}\n");
    if pipe.write_all(line.as_bytes()).await.is_err() || pipe.flush().await.is_err() {
        *stdin = None;
        return false;
    }
    true
}

/// One line of the agent's stdout: a message for the session, or `None` for anything that
/// is not a JSON object (logged) and for keep-alives.
fn from_agent(line: &str) -> Option<Value> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(line) {
        Ok(message) if message.get("type").and_then(Value::as_str).is_some() => {
            (message["type"] != "keep_alive").then_some(message)
        }
        _ => {
            tracing::debug!(%line, "agent stdout line that is not a message");
            None
        }
    }
}

/// Runs a stream-json agent for the session until it ends.
pub(crate) async fn run(
    ctx: &Arc<SessionContext>,
    work: &Work,
    cwd: &Path,
    stop: CancellationToken,
    mut token_updates: watch::Receiver<String>,
) -> Outcome {
    let options = &ctx.options;
    let name = short(&work.body);
    let token = TokenSource::new(token_updates.borrow_and_update().clone());
    let (transport, mut inbound) = match Transport::connect(ctx, work, token.clone()).await {
        Ok(connected) => connected,
        Err(message) => return Outcome::Failed(message),
    };
    let mut child = match agent::stream_json_command(&options.agent, cwd).spawn() {
        Ok(child) => child,
        Err(e) => {
            transport.finish().await;
            return spawn_failed(&options.agent, &e);
        }
    };
    let mut stderr = stderr_tail(child.stderr.take());
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().map(|out| BufReader::new(out).lines());
    let mut tracker = Tracker::default();
    let deadline = tokio::time::sleep(options.session_timeout);
    tokio::pin!(deadline);
    let grace = options.shutdown_grace;
    let (status, ending) = loop {
        tokio::select! {
            status = child.wait() => break (status, None),
            () = stop.cancelled() => {
                break (terminate(&mut child, grace, &ctx.force).await, Some(Ending::Stopped));
            }
            () = &mut deadline => {
                break (terminate(&mut child, grace, &ctx.force).await, Some(Ending::TimedOut));
            }
            changed = token_updates.changed() => {
                if changed.is_ok() {
                    token.set(token_updates.borrow_and_update().clone());
                }
            }
            message = inbound.recv() => {
                let Some(message) = message else {
                    // The server ended the session for this worker: archived, or taken over.
                    ctx.display.line(&format!("{name}: the server closed the session; stopping its agent"));
                    drop(stdin.take());
                    let exited = tokio::time::timeout(grace, child.wait()).await;
                    match exited {
                        Ok(status) => break (status, None),
                        Err(_) => break (terminate(&mut child, grace, &ctx.force).await, None),
                    }
                };
                if matches!(message["type"].as_str(), Some("keep_alive" | "update_environment_variables")) {
                    continue;
                }
                tracker.inbound(&message, &transport, ctx, &work.body);
                let ends = message["type"] == "control_request"
                    && message["request"]["subtype"] == "end_session";
                to_agent(&mut stdin, &message).await;
                if ends {
                    // Closing stdin ends agents that do not know `end_session`.
                    stdin = None;
                }
            }
            line = next_line(&mut stdout) => {
                match line {
                    Some(line) => {
                        if let Some(message) = from_agent(&line) {
                            if let Some(note) = permission_note(&message) {
                                ctx.display.line(&format!("{name}: {note}"));
                            }
                            tracker.outbound(&message, &transport, ctx, &work.body);
                            transport.send(message);
                        }
                    }
                    None => stdout = None,
                }
            }
        }
    };
    // Whatever the agent wrote before it exited still goes to the session.
    if let Some(mut lines) = stdout.take() {
        let drain = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(message) = from_agent(&line) {
                    tracker.outbound(&message, &transport, ctx, &work.body);
                    transport.send(message);
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }
    transport.finish().await;
    stderr.settle().await;
    outcome(status, ending, &stderr.lines)
}

/// The next stdout line, or never when stdout is closed (so `select!` waits on the rest).
async fn next_line(
    stdout: &mut Option<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
) -> Option<String> {
    match stdout {
        Some(lines) => lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_messages_reach_the_session() {
        assert_eq!(from_agent("not json"), None);
        assert_eq!(from_agent("  "), None);
        assert_eq!(from_agent(r#"{"type":"keep_alive"}"#), None);
        assert_eq!(from_agent(r#"{"no":"type"}"#), None);
        assert_eq!(
            from_agent(r#"{"type":"assistant","message":{}}"#),
            Some(json!({"type": "assistant", "message": {}}))
        );
    }
}
