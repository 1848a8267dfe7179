//! A fake Anthropic Messages API for end-to-end tests: the model the official Claude Code
//! CLI talks to when `ANTHROPIC_BASE_URL` points here.
//!
//! It listens on loopback only and answers `POST /v1/messages` (with or without
//! `?beta=true`) with a streamed reply in the Messages API's server-sent-event format, or
//! with one JSON message when the request does not ask for a stream. What it answers
//! depends on the last `user` message of the request:
//!
//! - a `tool_result` (the answer to an earlier tool call): a short text saying whether the
//!   tool ran or was refused;
//! - text containing [`USE_TOOL`]: a `tool_use` block calling `Bash` with
//!   `{"command": "touch fake-tool-was-here.txt"}`, which needs permission in Claude Code's
//!   default permission mode, so the CLI sends a `can_use_tool` request;
//! - text containing [`SLOW_REPLY`]: the reply starts, then stalls mid-stream for
//!   [`FakeAnthropic::stall`], so that an interrupt can stop the turn;
//! - anything else: [`HELLO_REPLY`].
//!
//! `HEAD /` (the CLI's reachability check) answers 200, `count_tokens` answers a fixed
//! count, and everything else 404. Every request body is kept for assertions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The marker that makes the fake model call a tool.
pub const USE_TOOL: &str = "USE_TOOL";

/// The marker that makes the fake model stall in mid-reply.
pub const SLOW_REPLY: &str = "SLOW_REPLY";

/// The file the fake model's tool call creates (`touch`), relative to the agent's cwd.
pub const TOOL_FILE: &str = "fake-tool-was-here.txt";

/// The text of an ordinary reply.
pub const HELLO_REPLY: &str = "Hello from the fake model.";

/// The text after a tool ran.
pub const TOOL_RAN_REPLY: &str = "The fake tool ran.";

/// The text after a tool call was refused.
pub const TOOL_REFUSED_REPLY: &str = "The fake tool was not allowed to run.";

/// The first words of a reply that then stalls.
pub const SLOW_REPLY_START: &str = "Thinking about it slowly";

/// The model name the fake reports when the request names none.
const DEFAULT_MODEL: &str = "claude-sonnet-4-6";

/// How long a stalled reply waits by default before it finishes: long enough for any
/// test to interrupt it, short enough not to hold a connection forever.
const DEFAULT_STALL: Duration = Duration::from_secs(120);

/// A running fake model API.
pub struct FakeAnthropic {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct AppState {
    requests: Arc<Mutex<Vec<Value>>>,
    stall: Duration,
}

impl FakeAnthropic {
    /// How long a [`SLOW_REPLY`] stalls, unless started with [`start_with_stall`](Self::start_with_stall).
    pub const fn stall() -> Duration {
        DEFAULT_STALL
    }

    /// Starts the fake on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), DEFAULT_STALL).await
    }

    /// Starts the fake on `addr`, stalling [`SLOW_REPLY`] answers for `stall`.
    /// Only loopback addresses are accepted: the fake is for tests on this machine.
    pub async fn start_on(addr: SocketAddr, stall: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the fake model API listens on loopback only, not {addr}"
        );
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = AppState {
            requests: requests.clone(),
            stall,
        };
        let app = Router::new()
            .route("/", get(root).head(root))
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .fallback(not_found)
            .with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake-anthropic: server failed: {e}");
            }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bodies of every `POST /v1/messages` so far, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs until the task ends (for the standalone binary).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn root() -> &'static str {
    "fake anthropic"
}

async fn not_found() -> Response {
    let body =
        json!({"type": "error", "error": {"type": "not_found_error", "message": "not here"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn count_tokens() -> Json<Value> {
    Json(json!({"input_tokens": 10}))
}

/// What the fake model answers.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// A text reply.
    Text(String),
    /// A text reply that stalls after its first words.
    Slow,
    /// A `Bash` tool call.
    Tool,
}

/// The text of the last `user` message and whether it carries tool results (and whether
/// any of them is an error).
fn last_user_message(body: &Value) -> (String, Option<bool>) {
    let Some(message) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return (String::new(), None);
    };
    match &message["content"] {
        Value::String(text) => (text.clone(), None),
        Value::Array(blocks) => {
            let mut text = String::new();
            let mut tool_result = None;
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") => {
                        text.push_str(block["text"].as_str().unwrap_or_default());
                        text.push('\n');
                    }
                    Some("tool_result") => {
                        let error = block["is_error"].as_bool().unwrap_or(false);
                        tool_result = Some(tool_result.unwrap_or(false) || error);
                    }
                    _ => {}
                }
            }
            (text, tool_result)
        }
        _ => (String::new(), None),
    }
}

fn choose(body: &Value) -> Reply {
    let (text, tool_result) = last_user_message(body);
    match tool_result {
        Some(true) => Reply::Text(TOOL_REFUSED_REPLY.to_owned()),
        Some(false) => Reply::Text(TOOL_RAN_REPLY.to_owned()),
        None if text.contains(USE_TOOL) => Reply::Tool,
        None if text.contains(SLOW_REPLY) => Reply::Slow,
        None => Reply::Text(HELLO_REPLY.to_owned()),
    }
}

async fn messages(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    state
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(body.clone());
    let model = body["model"].as_str().unwrap_or(DEFAULT_MODEL).to_owned();
    let reply = choose(&body);
    if body["stream"].as_bool() == Some(true) {
        streamed(&model, &reply, state.stall)
    } else {
        Json(whole_message(&model, &reply)).into_response()
    }
}

fn message_id() -> String {
    format!("msg_fake_{}", uuid::Uuid::new_v4().simple())
}

fn tool_use_id() -> String {
    format!("toolu_fake_{}", uuid::Uuid::new_v4().simple())
}

fn tool_input() -> Value {
    json!({"command": format!("touch {TOOL_FILE}"), "description": "Create a marker file"})
}

fn usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": 10,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

/// The reply as one non-streamed message.
fn whole_message(model: &str, reply: &Reply) -> Value {
    let (content, stop_reason) = match reply {
        Reply::Text(text) => (json!([{"type": "text", "text": text}]), "end_turn"),
        Reply::Slow => (
            json!([{"type": "text", "text": SLOW_REPLY_START}]),
            "end_turn",
        ),
        Reply::Tool => (
            json!([{"type": "tool_use", "id": tool_use_id(), "name": "Bash", "input": tool_input()}]),
            "tool_use",
        ),
    };
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage(5),
    })
}

/// One server-sent event of the Messages API stream.
fn event(data: &Value) -> Bytes {
    let name = data["type"].as_str().unwrap_or("message");
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The reply as a Messages API event stream: the events, each with the pause before it.
fn stream_steps(model: &str, reply: &Reply, stall: Duration) -> Vec<(Duration, Bytes)> {
    let now = Duration::ZERO;
    let mut start = whole_message(model, reply);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"] = usage(1);
    let mut steps = vec![
        (
            now,
            event(&json!({"type": "message_start", "message": start})),
        ),
        (now, event(&json!({"type": "ping"}))),
    ];
    let stop_reason = match reply {
        Reply::Text(text) => {
            steps.push((now, text_block_start()));
            // Two deltas, so that a client that assembles deltas is exercised.
            let (head, tail) = text.split_at(text.len() / 2);
            steps.push((now, text_delta(head)));
            steps.push((Duration::from_millis(20), text_delta(tail)));
            steps.push((now, block_stop()));
            "end_turn"
        }
        Reply::Slow => {
            steps.push((now, text_block_start()));
            steps.push((now, text_delta(SLOW_REPLY_START)));
            steps.push((stall, text_delta(" ... and done.")));
            steps.push((now, block_stop()));
            "end_turn"
        }
        Reply::Tool => {
            let block = json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": tool_use_id(), "name": "Bash", "input": {}},
            });
            steps.push((now, event(&block)));
            let partial = tool_input().to_string();
            let (head, tail) = partial.split_at(partial.len() / 2);
            for part in [head, tail] {
                let delta = json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part},
                });
                steps.push((now, event(&delta)));
            }
            steps.push((now, block_stop()));
            "tool_use"
        }
    };
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": 5},
    });
    steps.push((now, event(&delta)));
    steps.push((now, event(&json!({"type": "message_stop"}))));
    steps
}

fn text_block_start() -> Bytes {
    event(&json!({
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }))
}

fn text_delta(text: &str) -> Bytes {
    event(&json!({
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }))
}

fn block_stop() -> Bytes {
    event(&json!({"type": "content_block_stop", "index": 0}))
}

fn streamed(model: &str, reply: &Reply, stall: Duration) -> Response {
    let steps = stream_steps(model, reply, stall);
    let body = futures_util::stream::unfold(steps.into_iter(), |mut steps| async move {
        let (pause, bytes) = steps.next()?;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Some((Ok::<_, Infallible>(bytes), steps))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_follows_the_last_user_message() {
        let prompt = |content: Value| json!({"messages": [{"role": "user", "content": content}]});
        assert_eq!(
            choose(&prompt(json!("please USE_TOOL"))),
            Reply::Tool,
            "a marker in a plain string"
        );
        assert_eq!(
            choose(&prompt(
                json!([{"type": "text", "text": "a SLOW_REPLY please"}])
            )),
            Reply::Slow
        );
        assert_eq!(
            choose(&prompt(
                json!([{"type": "tool_result", "tool_use_id": "t", "content": "ok"}])
            )),
            Reply::Text(TOOL_RAN_REPLY.into())
        );
        assert_eq!(
            choose(&prompt(
                json!([{"type": "tool_result", "tool_use_id": "t", "is_error": true}])
            )),
            Reply::Text(TOOL_REFUSED_REPLY.into())
        );
        assert_eq!(
            choose(&prompt(json!("hello"))),
            Reply::Text(HELLO_REPLY.into())
        );
    }

    #[test]
    fn a_tool_call_streams_its_input_as_json_deltas() {
        let steps = stream_steps("m", &Reply::Tool, Duration::ZERO);
        let text: String = steps
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(text.starts_with("event: message_start\n"));
        assert!(text.contains("input_json_delta"));
        assert!(text.contains(r#""stop_reason":"tool_use""#));
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }
}
