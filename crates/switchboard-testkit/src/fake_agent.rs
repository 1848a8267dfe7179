//! A scripted agent that speaks Claude Code's stream-json protocol, for fast tests of
//! `switchboard bridge` without the real CLI.
//!
//! It runs in one of two ways, like the real CLI:
//!
//! - **stdio** (the default): it reads stream-json messages on stdin and writes its own on
//!   stdout, as `claude -p --input-format stream-json --output-format stream-json` does;
//! - **network** (`--sdk-url URL`, as a bridge child): it reads its token from
//!   `CLAUDE_CODE_SESSION_ACCESS_TOKEN` and talks to the session itself, over the v1
//!   ingress (WebSocket read, POST write) or, with `CLAUDE_CODE_USE_CCR_V2=1`, over the
//!   CCR v2 worker API with the epoch in `CLAUDE_CODE_WORKER_EPOCH`. It copies its
//!   control requests to stdout and applies `update_environment_variables` lines from
//!   stdin, so a rotated token takes effect at its next request.
//!
//! What it does with a prompt depends on its text:
//!
//! - `CRASH`: writes a line on stderr and exits with status 3;
//! - `USE_TOOL`: asks for permission to run `Bash` (`touch fake-tool-was-here.txt`) with a
//!   `can_use_tool` control request, waits for the answer, and on allow really creates the
//!   file in its working directory;
//! - `SLOW_REPLY`: waits (up to a minute) for an interrupt, then ends the turn with an
//!   `error_during_execution` result;
//! - anything else: answers `Fake agent heard: <text>`.
//!
//! Every turn starts with `system/init` and the echo of the prompt (`isReplay`), and ends
//! with a `result`. `interrupt` is answered with success; `end_session` is answered and
//! ends the process with status 0, as does the end of its input.
//!
//! With `FAKE_AGENT_LOG=FILE` it appends one JSON line per thing a test may want to check:
//! its start (arguments, working directory, the bridge's environment variables), every
//! stdin line, and every token update. With `FAKE_AGENT_IGNORE_SIGTERM=1` it ignores
//! SIGTERM, so a test can see the bridge escalate to SIGKILL.
//!
//! It answers the questions `switchboard bridge` asks a Claude Code program before it
//! picks a mode, as the real CLI does, without logging a start: `--version` prints
//! `FAKE_AGENT_VERSION` (default `2.1.112 (Claude Code)`), and `--sdk-url` without
//! `--input-format stream-json` fails at once with the real CLI's complaint about the
//! formats, or, with `FAKE_AGENT_REFUSE_SDK_URL=1`, with the refusal of Claude Code
//! 2.1.113 and newer (`--sdk-url rejected: host … is not an approved Anthropic
//! endpoint`), which it then also gives a real session URL.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use switchboard_client::ingress::IngressVersion;
use switchboard_client::worker::{WorkerConfig, WorkerTransport};
use switchboard_client::{IngressConfig, IngressTransport, TokenSource};
use switchboard_proto::code::{DeliveryStatus, WorkerStatus};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use crate::fake_anthropic::{SLOW_REPLY, TOOL_FILE, USE_TOOL};

/// The prompt marker that makes the fake agent crash.
pub const CRASH: &str = "CRASH";

/// The exit status of a crash.
pub const CRASH_STATUS: i32 = 3;

/// The reply prefix of an ordinary turn.
pub const HEARD: &str = "Fake agent heard: ";

/// How long a slow turn waits for an interrupt.
const SLOW_TURN: Duration = Duration::from_secs(60);

/// The environment variables a bridge sets for its children, logged at start.
const BRIDGE_VARIABLES: &[&str] = &[
    "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
    "CLAUDE_CODE_ENVIRONMENT_KIND",
    "CLAUDE_CODE_POST_FOR_SESSION_INGRESS_V2",
    "CLAUDE_CODE_USE_CCR_V2",
    "CLAUDE_CODE_WORKER_EPOCH",
    "CLAUDE_CODE_OAUTH_TOKEN",
];

/// Where the agent's messages go.
enum Output {
    /// stdout, one JSON object per line.
    Stdout,
    /// The v1 ingress.
    V1(IngressTransport),
    /// The CCR v2 worker API.
    V2(WorkerTransport),
}

/// The agent: its output, its inbound messages and its bookkeeping.
struct Agent {
    output: Output,
    inbound: mpsc::Receiver<Value>,
    /// Prompts that arrived while a turn was running.
    queued: VecDeque<Value>,
    /// The agent's own session id, as the real CLI makes one up.
    session_id: String,
    log: Log,
}

/// The optional log file of `FAKE_AGENT_LOG`.
#[derive(Clone)]
struct Log(Option<PathBuf>);

impl Log {
    fn write(&self, record: Value) {
        let Some(path) = &self.0 else { return };
        let line = format!("{record}\n");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// How a turn or the agent ends early.
enum Stop {
    /// The input ended or `end_session` arrived: exit with this status.
    Exit(i32),
}

/// Runs the fake agent with the process's arguments and environment; returns its exit
/// status.
pub async fn run(args: Vec<String>) -> anyhow::Result<i32> {
    if let Some(status) = answer_cli_checks(&args) {
        return Ok(status);
    }
    let log = Log(std::env::var_os("FAKE_AGENT_LOG").map(PathBuf::from));
    let cwd = std::env::current_dir().context("no working directory")?;
    let env: serde_json::Map<String, Value> = BRIDGE_VARIABLES
        .iter()
        .filter_map(|name| {
            std::env::var(name)
                .ok()
                .map(|v| ((*name).to_owned(), Value::String(v)))
        })
        .collect();
    log.write(json!({
        "event": "start",
        "argv": args,
        "cwd": cwd,
        "env": env,
        "pid": std::process::id(),
    }));
    if std::env::var("FAKE_AGENT_IGNORE_SIGTERM").as_deref() == Ok("1") {
        ignore_sigterm(log.clone())?;
    }
    let sdk_url = flag_value(&args, "--sdk-url");
    let (output, inbound) = match sdk_url {
        None => (Output::Stdout, stdin_messages(log.clone(), None)),
        Some(url) => connect(&url, log.clone()).await?,
    };
    let mut agent = Agent {
        output,
        inbound,
        queued: VecDeque::new(),
        session_id: uuid::Uuid::new_v4().to_string(),
        log,
    };
    let Stop::Exit(status) = agent.serve().await;
    agent.finish().await;
    Ok(status)
}

/// The version the fake reports unless `FAKE_AGENT_VERSION` says otherwise.
pub const DEFAULT_VERSION: &str = "2.1.112 (Claude Code)";

/// `--version`, and the real CLI's checks of `--sdk-url` that run before anything else;
/// `Some(status)` when one of them ends the process.
fn answer_cli_checks(args: &[String]) -> Option<i32> {
    if args.first().map(String::as_str) == Some("--version") {
        let version =
            std::env::var("FAKE_AGENT_VERSION").unwrap_or_else(|_| DEFAULT_VERSION.to_owned());
        println!("{version}");
        return Some(0);
    }
    let url = flag_value(args, "--sdk-url")?;
    if std::env::var("FAKE_AGENT_REFUSE_SDK_URL").as_deref() == Ok("1") {
        let host = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        eprintln!(
            "Error: --sdk-url rejected: host {host:?} is not an approved Anthropic endpoint. \
             This flag is reserved for Remote Control worker processes connecting to \
             Anthropic's backend."
        );
        return Some(1);
    }
    if flag_value(args, "--input-format").as_deref() != Some("stream-json") {
        eprintln!("Error: --input-format=stream-json requires output-format=stream-json.");
        return Some(1);
    }
    None
}

fn flag_value(args: &[String], name: &str) -> Option<String> {
    let position = args.iter().position(|a| a == name)?;
    args.get(position + 1).cloned()
}

fn ignore_sigterm(log: Log) -> anyhow::Result<()> {
    let mut terms = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot catch SIGTERM")?;
    tokio::spawn(async move {
        while terms.recv().await.is_some() {
            log.write(json!({"event": "sigterm_ignored"}));
        }
    });
    Ok(())
}

/// Reads stdin lines. Without a token source, every JSON line is an inbound message (stdio
/// mode); with one, only `update_environment_variables` lines matter, and they rotate the
/// token (network mode).
fn stdin_messages(log: Log, token: Option<TokenSource>) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.write(json!({"event": "stdin", "line": line}));
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if message["type"] == "update_environment_variables" {
                let fresh = message["variables"]["CLAUDE_CODE_SESSION_ACCESS_TOKEN"].as_str();
                if let (Some(token), Some(fresh)) = (&token, fresh) {
                    token.set(fresh);
                    log.write(json!({"event": "token_update", "token": fresh}));
                }
                continue;
            }
            if token.is_none() && tx.send(message).await.is_err() {
                break;
            }
        }
        // In network mode the sender is kept until the process ends; dropping it here
        // would look like the end of the input.
        if token.is_some() {
            std::future::pending::<()>().await;
        }
    });
    rx
}

/// Connects to the session named by `--sdk-url`, as the real CLI's RemoteIO does.
async fn connect(url: &str, log: Log) -> anyhow::Result<(Output, mpsc::Receiver<Value>)> {
    let token = std::env::var("CLAUDE_CODE_SESSION_ACCESS_TOKEN")
        .context("CLAUDE_CODE_SESSION_ACCESS_TOKEN is not set")?;
    let token = TokenSource::new(token);
    // In network mode stdin only rotates the token; nothing is read from the receiver.
    drop(stdin_messages(log, Some(token.clone())));
    if std::env::var("CLAUDE_CODE_USE_CCR_V2").as_deref() == Ok("1") {
        let epoch: u64 = std::env::var("CLAUDE_CODE_WORKER_EPOCH")
            .context("CLAUDE_CODE_WORKER_EPOCH is not set")?
            .parse()
            .context("CLAUDE_CODE_WORKER_EPOCH is not a number")?;
        let config = WorkerConfig::new(url, token, epoch)?;
        let (transport, inbound) = WorkerTransport::start(config).await?;
        return Ok((Output::V2(transport), inbound));
    }
    let parsed = url::Url::parse(url).context("--sdk-url is not a URL")?;
    let path = parsed.path().to_owned();
    let marker = "/session_ingress/ws/";
    let at = path
        .find(marker)
        .context("--sdk-url is not a session-ingress URL")?;
    let session_id = path[at + marker.len()..].trim_end_matches('/').to_owned();
    let (prefix, version) = match path[..at].rsplit_once('/') {
        Some((prefix, "v2")) => (prefix.to_owned(), IngressVersion::V2),
        Some((prefix, _)) => (prefix.to_owned(), IngressVersion::V1),
        None => (String::new(), IngressVersion::V1),
    };
    let scheme = if parsed.scheme() == "wss" {
        "https"
    } else {
        "http"
    };
    let host = parsed.host_str().context("--sdk-url has no host")?;
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let base = format!("{scheme}://{host}{port}{prefix}");
    let config = IngressConfig::new(base, session_id, token).with_version(version);
    let (transport, inbound) = IngressTransport::connect(config).await?;
    Ok((Output::V1(transport), inbound))
}

fn prompt_text(message: &Value) -> Option<String> {
    match &message["message"]["content"] {
        Value::String(text) => Some(text.clone()),
        Value::Array(blocks) => {
            if blocks.iter().any(|b| b["type"] == "tool_result") {
                return None;
            }
            Some(
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        }
        _ => None,
    }
}

impl Agent {
    async fn send(&self, message: Value) {
        match &self.output {
            Output::Stdout => {
                println!("{message}");
            }
            Output::V1(transport) => {
                if message["type"] == "control_request" {
                    println!("{message}");
                }
                if let Err(e) = transport.write(vec![message]).await {
                    eprintln!("fake-agent: write failed: {e}");
                }
            }
            Output::V2(transport) => {
                if message["type"] == "control_request" {
                    println!("{message}");
                }
                if let Err(e) = transport.write(vec![message]) {
                    eprintln!("fake-agent: write failed: {e}");
                }
            }
        }
    }

    fn report(&self, status: WorkerStatus, details: Option<Value>) {
        if let Output::V2(transport) = &self.output {
            let _ = transport.report_state(status, details);
        }
    }

    fn delivery(&self, uuid: Option<&str>, status: DeliveryStatus) {
        if let (Output::V2(transport), Some(uuid)) = (&self.output, uuid) {
            let _ = transport.report_delivery(uuid, status);
        }
    }

    async fn finish(&self) {
        match &self.output {
            Output::Stdout => {}
            Output::V1(transport) => transport.close().await,
            Output::V2(transport) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), transport.flush()).await;
                transport.close().await;
            }
        }
    }

    async fn next(&mut self) -> Option<Value> {
        if let Some(message) = self.queued.pop_front() {
            return Some(message);
        }
        self.inbound.recv().await
    }

    async fn serve(&mut self) -> Stop {
        loop {
            let Some(message) = self.next().await else {
                return Stop::Exit(0);
            };
            if let Err(stop) = self.handle(message).await {
                return stop;
            }
        }
    }

    /// Handles one message outside a turn.
    async fn handle(&mut self, message: Value) -> Result<(), Stop> {
        match message["type"].as_str() {
            Some("user") if message["message"]["role"] == "user" => self.turn(message).await,
            Some("control_request") => self.control(&message).await.map(drop),
            Some("update_environment_variables") => {
                self.log
                    .write(json!({"event": "update_environment_variables", "message": message}));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Answers a control request. Returns true for an interrupt.
    async fn control(&mut self, message: &Value) -> Result<bool, Stop> {
        let request_id = message["request_id"].as_str().unwrap_or_default();
        match message["request"]["subtype"].as_str() {
            Some("interrupt") => {
                self.send(json!({
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": request_id},
                }))
                .await;
                Ok(true)
            }
            Some("end_session") => {
                self.send(json!({
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": request_id},
                }))
                .await;
                Err(Stop::Exit(0))
            }
            other => {
                let error = format!(
                    "Unsupported control request subtype: {}",
                    other.unwrap_or("?")
                );
                self.send(json!({
                    "type": "control_response",
                    "response": {"subtype": "error", "request_id": request_id, "error": error},
                }))
                .await;
                Ok(false)
            }
        }
    }

    fn stamp(&self, mut message: Value) -> Value {
        message["session_id"] = json!(self.session_id);
        if message.get("uuid").is_none() {
            message["uuid"] = json!(uuid::Uuid::new_v4().to_string());
        }
        message
    }

    fn assistant(&self, content: Value, stop_reason: &str) -> Value {
        self.stamp(json!({
            "type": "assistant",
            "parent_tool_use_id": null,
            "message": {
                "id": format!("msg_agent_{}", uuid::Uuid::new_v4().simple()),
                "type": "message",
                "role": "assistant",
                "model": "fake-agent",
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        }))
    }

    fn result(&self, started: Instant, text: &str, error: bool, denials: Value) -> Value {
        let subtype = if error {
            "error_during_execution"
        } else {
            "success"
        };
        let mut result = json!({
            "type": "result",
            "subtype": subtype,
            "is_error": error,
            "duration_ms": started.elapsed().as_millis() as u64,
            "duration_api_ms": 0,
            "num_turns": 1,
            "stop_reason": if error { Value::Null } else { json!("end_turn") },
            "total_cost_usd": 0,
            "usage": {"input_tokens": 1, "output_tokens": 1},
            "permission_denials": denials,
        });
        if !error {
            result["result"] = json!(text);
        }
        self.stamp(result)
    }

    /// One turn, from a prompt to its result.
    async fn turn(&mut self, prompt: Value) -> Result<(), Stop> {
        let started = Instant::now();
        let prompt_uuid = prompt["uuid"].as_str().map(str::to_owned);
        let Some(text) = prompt_text(&prompt) else {
            return Ok(());
        };
        self.delivery(prompt_uuid.as_deref(), DeliveryStatus::Processing);
        self.report(WorkerStatus::Running, None);
        let init = self.stamp(json!({
            "type": "system",
            "subtype": "init",
            "cwd": std::env::current_dir().unwrap_or_default(),
            "tools": ["Bash"],
            "mcp_servers": [],
            "model": "fake-agent",
            "permissionMode": "default",
            "apiKeySource": "none",
            "claude_code_version": "fake-agent",
        }));
        self.send(init).await;
        let mut replay = prompt.clone();
        replay["isReplay"] = json!(true);
        let replay = self.stamp(replay);
        self.send(replay).await;

        let outcome = if text.contains(CRASH) {
            eprintln!("fake-agent: crashing on purpose, as the prompt asked");
            std::process::exit(CRASH_STATUS);
        } else if text.contains(USE_TOOL) {
            self.tool_turn(started).await?
        } else if text.contains(SLOW_REPLY) {
            self.slow_turn(started).await?
        } else {
            let reply = format!("{HEARD}{text}");
            let assistant = self.assistant(json!([{"type": "text", "text": reply}]), "end_turn");
            self.send(assistant).await;
            self.result(started, &reply, false, json!([]))
        };
        self.send(outcome).await;
        self.report(WorkerStatus::Idle, None);
        self.delivery(prompt_uuid.as_deref(), DeliveryStatus::Processed);
        Ok(())
    }

    /// Waits for the next message during a turn; prompts are kept for later.
    async fn wait_in_turn(&mut self, deadline: Duration) -> Result<Option<Value>, Stop> {
        loop {
            let message = match tokio::time::timeout(deadline, self.inbound.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(Stop::Exit(0)),
                Ok(Some(message)) => message,
            };
            if message["type"] == "user" {
                self.queued.push_back(message);
                continue;
            }
            return Ok(Some(message));
        }
    }

    async fn tool_turn(&mut self, started: Instant) -> Result<Value, Stop> {
        let tool_use_id = format!("toolu_agent_{}", uuid::Uuid::new_v4().simple());
        let input = json!({"command": format!("touch {TOOL_FILE}")});
        let call = self.assistant(
            json!([{"type": "tool_use", "id": tool_use_id, "name": "Bash", "input": input}]),
            "tool_use",
        );
        self.send(call).await;
        let request_id = uuid::Uuid::new_v4().to_string();
        let request = json!({
            "type": "control_request",
            "request_id": request_id,
            "request": {
                "subtype": "can_use_tool",
                "tool_name": "Bash",
                "display_name": "Bash",
                "input": input,
                "tool_use_id": tool_use_id,
            },
        });
        self.send(request).await;
        self.report(
            WorkerStatus::RequiresAction,
            Some(json!({
                "tool_name": "Bash",
                "action_description": format!("touch {TOOL_FILE}"),
                "request_id": request_id,
                "tool_use_id": tool_use_id,
            })),
        );
        let decision = loop {
            let Some(message) = self.wait_in_turn(Duration::from_secs(3600)).await? else {
                continue;
            };
            match message["type"].as_str() {
                Some("control_response") if message["response"]["request_id"] == request_id => {
                    break message["response"].clone();
                }
                Some("control_request") if self.control(&message).await? => {
                    let cancel =
                        json!({"type": "control_cancel_request", "request_id": request_id});
                    self.send(cancel).await;
                    return Ok(self.result(started, "", true, json!([])));
                }
                _ => {}
            }
        };
        self.report(WorkerStatus::Running, None);
        let allowed = decision["subtype"] == "success"
            && decision["response"]["behavior"] == "allow"
            && decision["response"]["updatedInput"].is_object();
        if allowed {
            let marker = std::env::current_dir().unwrap_or_default().join(TOOL_FILE);
            let ran = std::fs::write(&marker, b"").is_ok();
            let tool_result = self.stamp(json!({
                "type": "user",
                "parent_tool_use_id": null,
                "message": {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": tool_use_id, "content": "", "is_error": !ran}
                ]},
                "tool_use_result": {"stdout": "", "stderr": "", "interrupted": false},
            }));
            self.send(tool_result).await;
            let reply = "The fake tool ran.";
            self.send(self.assistant(json!([{"type": "text", "text": reply}]), "end_turn"))
                .await;
            Ok(self.result(started, reply, false, json!([])))
        } else {
            let message = decision["response"]["message"]
                .as_str()
                .or_else(|| decision["error"].as_str())
                .unwrap_or("denied")
                .to_owned();
            let tool_result = self.stamp(json!({
                "type": "user",
                "parent_tool_use_id": null,
                "message": {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": tool_use_id, "content": message, "is_error": true}
                ]},
            }));
            self.send(tool_result).await;
            let reply = "The fake tool was not allowed to run.";
            self.send(self.assistant(json!([{"type": "text", "text": reply}]), "end_turn"))
                .await;
            let denials =
                json!([{"tool_name": "Bash", "tool_use_id": tool_use_id, "tool_input": input}]);
            Ok(self.result(started, reply, false, denials))
        }
    }

    async fn slow_turn(&mut self, started: Instant) -> Result<Value, Stop> {
        let deadline = Instant::now() + SLOW_TURN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = self.wait_in_turn(left).await? else {
                let reply = "Slowly done.";
                self.send(self.assistant(json!([{"type": "text", "text": reply}]), "end_turn"))
                    .await;
                return Ok(self.result(started, reply, false, json!([])));
            };
            if message["type"] == "control_request" && self.control(&message).await? {
                let partial = self.assistant(
                    json!([{"type": "text", "text": "Thinking about it slowly"}]),
                    "end_turn",
                );
                self.send(partial).await;
                let note = self.stamp(json!({
                    "type": "user",
                    "parent_tool_use_id": null,
                    "message": {"role": "user", "content": [
                        {"type": "text", "text": "[Request interrupted by user]"}
                    ]},
                }));
                self.send(note).await;
                return Ok(self.result(started, "", true, json!([])));
            }
        }
    }
}
