//! Calling people back: what a session's events mean for its owner (a permission
//! request, a question, a finished turn, an error, a usage limit), and delivery of that
//! to the owner's browsers (Web Push), webhook and ntfy topic.
//!
//! The append path only [`Notifier::offer`]s a notice: a `try_send` into a bounded
//! queue, never an await, so a slow or failing endpoint cannot slow a session. One
//! background task reads the queue, looks up the owner's settings and channels, and hands
//! each delivery to a task of its own (at most [`MAX_DELIVERIES`] at once). When the
//! queue is full, notices are dropped and counted.

pub(crate) mod channels;
pub(crate) mod guard;
pub(crate) mod redact;
pub(crate) mod webpush;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use switchboard_proto::SessionId;
use tokio::sync::{mpsc, Semaphore};

use crate::state::AppState;

/// Notices waiting for the notifier task; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Deliveries in flight at once; the notifier waits for a free slot.
pub(crate) const MAX_DELIVERIES: usize = 32;
/// The longest title a notification carries, in characters.
pub(crate) const MAX_TITLE: usize = 80;
/// The longest body a notification carries, in characters.
pub(crate) const MAX_BODY: usize = 240;
/// One HTTP attempt's deadline.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per delivery; the waits between them double from [`RETRY_BASE`].
pub(crate) const ATTEMPTS: u32 = 4;
/// The first wait before a retry.
pub(crate) const RETRY_BASE: Duration = Duration::from_millis(500);
/// How long "this owner has no channel and no browser" is believed without asking the
/// store again. Changes made through this server forget it at once; the bound is for
/// changes made elsewhere (another server on the same database).
const NOTHING_SET_TTL: Duration = Duration::from_secs(30);

/// What happened, as settings name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A tool waits for permission.
    Permission,
    /// The agent asks a question (`AskUserQuestion`, an MCP elicitation).
    Question,
    /// A turn ended.
    Result,
    /// The agent stopped with an error.
    Error,
    /// A usage limit stopped the agent.
    UsageLimit,
    /// A session's worker went away mid-session and did not come back.
    WorkerLost,
    /// A request the owner was notified about was answered: its notification can go.
    Resolved,
    /// `switchboard notify test`: always sent.
    Test,
}

impl Kind {
    /// Every kind settings can turn on, with what it means.
    pub(crate) const SETTABLE: [(Kind, &'static str); 6] = [
        (Kind::Permission, "a tool waits for your permission"),
        (Kind::Question, "the agent asks a question"),
        (Kind::Result, "a turn ended"),
        (Kind::Error, "the agent stopped with an error"),
        (Kind::UsageLimit, "a usage limit stopped the agent"),
        (
            Kind::WorkerLost,
            "a session's worker was lost (disconnected mid-session and did not come back)",
        ),
    ];

    /// The name in settings and payloads.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Permission => "permission",
            Kind::Question => "question",
            Kind::Result => "result",
            Kind::Error => "error",
            Kind::UsageLimit => "usage_limit",
            Kind::WorkerLost => "worker_lost",
            Kind::Resolved => "resolved",
            Kind::Test => "test",
        }
    }

    /// The kind a settings name means.
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        Self::SETTABLE
            .iter()
            .map(|(k, _)| *k)
            .find(|k| k.as_str() == name)
    }

    /// Whether it needs the person now (high urgency, kept on screen).
    pub(crate) fn urgent(self) -> bool {
        matches!(
            self,
            Kind::Permission | Kind::Question | Kind::UsageLimit | Kind::WorkerLost
        )
    }
}

/// One notification, as every channel sends it: no credential, every text bounded, what
/// it shows of a tool's input redacted (see [`redact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Notice {
    /// What happened.
    #[serde(rename = "type")]
    pub(crate) kind: Kind,
    /// The session (`session_…`).
    pub(crate) session_id: String,
    /// The session's title, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) session_title: Option<String>,
    /// A headline.
    pub(crate) title: String,
    /// One or two lines.
    pub(crate) body: String,
    /// The page that answers it: [`Notice::path`] on the address its channel was set
    /// from (see [`Notice::linked`]).
    pub(crate) url: String,
    /// The page's path and fragment; not sent.
    #[serde(skip)]
    pub(crate) path: String,
    /// For a permission request: whether `body` shows the tool's input whole (one line,
    /// not cut, nothing masked). A notification offers Allow only then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shown_in_full: Option<bool>,
    /// The permission request it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<String>,
    /// The tool that asks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool: Option<String>,
    /// Notices with one key replace each other: one per session.
    pub(crate) collapse_key: String,
    /// When, ISO 8601.
    pub(crate) created_at: String,
    /// The owner; not sent.
    #[serde(skip)]
    pub(crate) owner_id: String,
}

impl Notice {
    /// The notice with its link on `base` (`scheme://host[:port]`).
    pub(crate) fn linked(&self, base: &str) -> Notice {
        Notice {
            url: format!("{}{}", base.trim_end_matches('/'), self.path),
            ..self.clone()
        }
    }
}

/// What a stored event says, before it is addressed: `(kind, title, body, request, tool)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signal {
    pub(crate) kind: Kind,
    pub(crate) title: String,
    pub(crate) body: String,
    pub(crate) request_id: Option<String>,
    pub(crate) tool: Option<String>,
    /// For a permission request: whether `body` is the tool's input whole, before it is
    /// redacted and bounded.
    pub(crate) complete: Option<bool>,
}

/// What one message about to be appended means for notifications, if anything. Takes
/// the message as already parsed on the append path; returns at once for the kinds that
/// mean nothing (most of them).
pub(crate) fn classify(kind: &str, message: &Value) -> Option<Signal> {
    match kind {
        "control_request"
        | "result"
        | "result_success"
        | "control_response"
        | "control_cancel_request" => {}
        // An assistant message only matters when it reports an error.
        "assistant" if message.get("error").is_some() => {}
        _ => return None,
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    match kind {
        "control_request" => {
            let request = message.get("request")?;
            let request_id = message
                .get("request_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            match request.get("subtype")?.as_str()? {
                "can_use_tool" => {
                    let tool = text(request.get("tool_name"));
                    let input = request.get("input").unwrap_or(&Value::Null);
                    if tool == "AskUserQuestion" {
                        let question = input
                            .pointer("/questions/0/question")
                            .and_then(Value::as_str)
                            .unwrap_or("The agent has a question");
                        return Some(Signal {
                            kind: Kind::Question,
                            title: "Question".into(),
                            body: question.to_owned(),
                            request_id,
                            tool: Some(tool),
                            complete: None,
                        });
                    }
                    let label = request
                        .get("display_name")
                        .and_then(Value::as_str)
                        .unwrap_or(&tool)
                        .to_owned();
                    let (body, complete) = summary(input);
                    Some(Signal {
                        kind: Kind::Permission,
                        title: format!("Allow {label}?"),
                        body,
                        request_id,
                        tool: Some(tool),
                        complete: Some(complete),
                    })
                }
                "elicitation" => Some(Signal {
                    kind: Kind::Question,
                    title: format!(
                        "Question from {}",
                        request
                            .get("mcp_server_name")
                            .and_then(Value::as_str)
                            .unwrap_or("a tool")
                    ),
                    body: text(request.get("message")),
                    request_id,
                    tool: None,
                    complete: None,
                }),
                _ => None,
            }
        }
        "control_response" | "control_cancel_request" => {
            let request_id = message
                .pointer("/response/request_id")
                .or_else(|| message.get("request_id"))
                .and_then(Value::as_str)?;
            Some(Signal {
                kind: Kind::Resolved,
                title: String::new(),
                body: String::new(),
                request_id: Some(request_id.to_owned()),
                tool: None,
                complete: None,
            })
        }
        "assistant" => {
            let error = message.get("error").and_then(Value::as_str)?;
            let said = message
                .pointer("/message/content/0/text")
                .and_then(Value::as_str)
                .unwrap_or(error);
            limit_or_error(error == "rate_limit" || is_usage_limit(said), said)
        }
        _ => {
            let said = text(message.get("result"));
            let failed = message.get("is_error").and_then(Value::as_bool) == Some(true)
                || message
                    .get("subtype")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with("error"));
            if is_usage_limit(&said) || failed {
                let said = if said.is_empty() {
                    text(message.get("subtype")).replace('_', " ")
                } else {
                    said
                };
                return limit_or_error(is_usage_limit(&said), &said);
            }
            Some(Signal {
                kind: Kind::Result,
                title: "Turn finished".into(),
                body: if said.is_empty() {
                    "The agent is waiting for you.".into()
                } else {
                    said
                },
                request_id: None,
                tool: None,
                complete: None,
            })
        }
    }
}

fn limit_or_error(limit: bool, said: &str) -> Option<Signal> {
    Some(Signal {
        kind: if limit { Kind::UsageLimit } else { Kind::Error },
        title: if limit {
            "Usage limit reached".into()
        } else {
            "The agent stopped with an error".into()
        },
        body: said.to_owned(),
        request_id: None,
        tool: None,
        complete: None,
    })
}

fn is_usage_limit(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("usage limit") || lower.contains("limit reached")
}

/// A tool input on one line: the field that says most (a command, a path…), else the
/// input as compact JSON; and whether that line is a command whole (a command of more
/// lines is never complete; other inputs are told by their main field).
pub(crate) fn summary(input: &Value) -> (String, bool) {
    const TELLING: [&str; 8] = [
        "command",
        "file_path",
        "notebook_path",
        "url",
        "pattern",
        "path",
        "query",
        "description",
    ];
    match TELLING
        .iter()
        .find_map(|k| input.get(*k).and_then(Value::as_str))
    {
        Some(s) => {
            let first = s.lines().next().unwrap_or_default();
            let whole = !s.contains(['\n', '\r']) || input.get("command").is_none();
            (first.to_owned(), whole)
        }
        None => (
            match input {
                Value::Null => String::new(),
                other => other.to_string(),
            },
            true,
        ),
    }
}

/// `text` on one line, cut to `max` characters with an ellipsis.
pub(crate) fn bound(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    match flat.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat.to_owned(),
    }
}

/// The sending half of the notifier's queue, held by the state, with what the notifier
/// remembers between notices.
#[derive(Debug)]
pub(crate) struct Notifier {
    tx: mpsc::Sender<Notice>,
    rx: Mutex<Option<mpsc::Receiver<Notice>>>,
    /// Owners known to have no channel and no browser subscription, and since when: their
    /// notices cost no store read. Forgotten when they set one (see [`Notifier::changed`]).
    nothing_set: Mutex<HashMap<String, Instant>>,
    /// Sessions whose worker went away, and the ticket of the latest check that will see
    /// whether it came back (an older check whose ticket is not the latest does nothing).
    lost_checks: Mutex<HashMap<String, u64>>,
    next_ticket: std::sync::atomic::AtomicU64,
}

impl Default for Notifier {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            nothing_set: Mutex::new(HashMap::new()),
            lost_checks: Mutex::new(HashMap::new()),
            next_ticket: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Notifier {
    /// Queues a notice without waiting; false when the queue is full (it is dropped).
    pub(crate) fn offer(&self, notice: Notice) -> bool {
        self.tx.try_send(notice).is_ok()
    }

    /// The receiving half, once: the notifier task takes it.
    fn take(&self) -> Option<mpsc::Receiver<Notice>> {
        self.rx.lock().expect("notifier lock poisoned").take()
    }

    /// Whether `owner_id` is known (recently) to have nothing set.
    fn has_nothing_set(&self, owner_id: &str) -> bool {
        let mut known = self.nothing_set.lock().expect("notifier lock poisoned");
        match known.get(owner_id) {
            Some(since) if since.elapsed() < NOTHING_SET_TTL => true,
            Some(_) => {
                known.remove(owner_id);
                false
            }
            None => false,
        }
    }

    fn remember_nothing_set(&self, owner_id: &str) {
        let mut known = self.nothing_set.lock().expect("notifier lock poisoned");
        // Bounded: stale entries go first, and a full map starts over.
        if known.len() >= 10_000 {
            known.retain(|_, since| since.elapsed() < NOTHING_SET_TTL);
            if known.len() >= 10_000 {
                known.clear();
            }
        }
        known.insert(owner_id.to_owned(), Instant::now());
    }

    /// Forgets what is remembered about `owner_id`'s settings: call on every change of
    /// them (channels, subscriptions).
    pub(crate) fn changed(&self, owner_id: &str) {
        self.nothing_set
            .lock()
            .expect("notifier lock poisoned")
            .remove(owner_id);
    }

    /// A new check of whether `session_id`'s worker comes back; earlier ones give way.
    pub(crate) fn lost_ticket(&self, session_id: &str) -> u64 {
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.lost_checks
            .lock()
            .expect("notifier lock poisoned")
            .insert(session_id.to_owned(), ticket);
        ticket
    }

    /// True (once) when `ticket` is still the latest check of `session_id`.
    pub(crate) fn lost_ticket_current(&self, session_id: &str, ticket: u64) -> bool {
        let mut checks = self.lost_checks.lock().expect("notifier lock poisoned");
        if checks.get(session_id) == Some(&ticket) {
            checks.remove(session_id);
            true
        } else {
            false
        }
    }
}

/// Builds the notice for a signal from `session`: what it shows of a tool's input is
/// redacted, and every text bounded. Its link is a path; each delivery puts it on the
/// address its channel was set from (never the address of the request that caused it).
pub(crate) fn address(session: &switchboard_store::Session, signal: Signal) -> Notice {
    let id = SessionId::from_body(session.id.clone())
        .map(|s| s.compat())
        .unwrap_or_else(|| session.id.clone());
    let path = match &signal.request_id {
        Some(r) if signal.kind != Kind::Resolved => format!(
            "/s/{id}#request-{}",
            r.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect::<String>()
        ),
        _ => format!("/s/{id}"),
    };
    let title = match (&session.title, signal.title.is_empty()) {
        (Some(t), false) if !t.is_empty() => format!("{} · {}", signal.title, t),
        _ => signal.title,
    };
    let (said, masked) = if signal.kind == Kind::Permission {
        redact::redact(&signal.body)
    } else {
        (signal.body, false)
    };
    let body = bound(&said, MAX_BODY);
    let shown_in_full = signal
        .complete
        .map(|complete| complete && !masked && body == said);
    Notice {
        kind: signal.kind,
        collapse_key: id.clone(),
        session_id: id,
        session_title: session.title.as_deref().map(|t| bound(t, MAX_TITLE)),
        title: bound(&title, MAX_TITLE),
        body,
        url: String::new(),
        path,
        shown_in_full,
        request_id: signal.request_id.map(|r| bound(&r, 100)),
        tool: signal.tool.map(|t| bound(&t, 64)),
        created_at: crate::time::iso(crate::time::now_ms()),
        owner_id: session.owner_id.clone(),
    }
}

/// Starts the notifier task; it ends with the server.
pub(crate) fn spawn(state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    let mut rx = state.notifier().take()?;
    let http = match channels::http_client(state.options().notify_allow_private) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the notifications HTTP client");
            return None;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_DELIVERIES));
    Some(tokio::spawn(async move {
        loop {
            let notice = tokio::select! {
                n = rx.recv() => match n { Some(n) => n, None => return },
                _ = state.shutdown().wait() => return,
            };
            if let Err(e) = fan_out(&state, &http, &slots, notice).await {
                tracing::warn!(error = ?e, "cannot send a notification");
            }
        }
    }))
}

/// Every delivery `notice` needs: the owner's webhook and ntfy topic (not for a
/// `resolved` notice, which only closes a browser's notification) and browsers.
pub(crate) async fn jobs(state: &AppState, notice: &Notice) -> anyhow::Result<Vec<channels::Job>> {
    let mut jobs: Vec<channels::Job> = Vec::new();
    if notice.kind != Kind::Resolved {
        for ch in state.store().notify_channels(&notice.owner_id).await? {
            jobs.push(channels::Job::Channel(ch));
        }
    }
    let subs = state.store().push_subscriptions(&notice.owner_id).await?;
    if !subs.is_empty() {
        let vapid = state.vapid().await?;
        for sub in subs {
            jobs.push(channels::Job::Push(sub, vapid.clone()));
        }
    }
    Ok(jobs)
}

/// Sends one notice everywhere its owner wants it. An owner with nothing set costs no
/// store read once that is known.
async fn fan_out(
    state: &AppState,
    http: &reqwest::Client,
    slots: &Arc<Semaphore>,
    notice: Notice,
) -> anyhow::Result<()> {
    let notifier = state.notifier();
    if notice.kind != Kind::Test && notifier.has_nothing_set(&notice.owner_id) {
        return Ok(());
    }
    state.metrics().notify_lookup();
    let channels = state.store().notify_channels(&notice.owner_id).await?;
    let subs = state.store().push_subscriptions(&notice.owner_id).await?;
    if channels.is_empty() && subs.is_empty() {
        notifier.remember_nothing_set(&notice.owner_id);
        return Ok(());
    }
    let enabled = state.notify_events(&notice.owner_id).await?;
    let wanted = match notice.kind {
        // The notification it closes was only shown when permissions notify.
        Kind::Resolved => enabled.contains(&Kind::Permission) || enabled.contains(&Kind::Question),
        Kind::Test => true,
        k => enabled.contains(&k),
    };
    if !wanted {
        return Ok(());
    }
    let mut jobs: Vec<channels::Job> = Vec::new();
    if notice.kind != Kind::Resolved {
        jobs.extend(channels.into_iter().map(channels::Job::Channel));
    }
    if !subs.is_empty() {
        let vapid = state.vapid().await?;
        jobs.extend(
            subs.into_iter()
                .map(|sub| channels::Job::Push(sub, vapid.clone())),
        );
    }
    let notice = Arc::new(notice);
    for job in jobs {
        let permit = slots.clone().acquire_owned().await?;
        let (state, http, notice) = (state.clone(), http.clone(), notice.clone());
        tokio::spawn(async move {
            channels::deliver(&state, &http, &notice, job).await;
            drop(permit);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn classify_json(message: Value) -> Option<Signal> {
        let kind = message["type"].as_str().unwrap_or_default().to_owned();
        classify(&kind, &message)
    }

    #[test]
    fn permission_requests_questions_results_errors_and_limits_are_told_apart() {
        let perm = classify_json(json!({"type": "control_request", "request_id": "r1",
            "request": {"subtype": "can_use_tool", "tool_name": "Bash",
                        "input": {"command": "npm test\nnpm run lint", "description": "x"}}}))
        .unwrap();
        assert_eq!(
            (perm.kind, perm.title.as_str(), perm.body.as_str()),
            (Kind::Permission, "Allow Bash?", "npm test")
        );
        assert_eq!(perm.request_id.as_deref(), Some("r1"));

        let ask = classify_json(json!({"type": "control_request", "request_id": "r2",
            "request": {"subtype": "can_use_tool", "tool_name": "AskUserQuestion",
                        "input": {"questions": [{"question": "Which DB?"}]}}}))
        .unwrap();
        assert_eq!((ask.kind, ask.body.as_str()), (Kind::Question, "Which DB?"));

        let done =
            classify_json(json!({"type": "result", "subtype": "success", "result": "All green"}))
                .unwrap();
        assert_eq!((done.kind, done.body.as_str()), (Kind::Result, "All green"));
        let failed = classify_json(
            json!({"type": "result", "subtype": "error_during_execution", "is_error": true}),
        )
        .unwrap();
        assert_eq!(
            (failed.kind, failed.body.as_str()),
            (Kind::Error, "error during execution")
        );
        let limit = classify_json(json!({"type": "result", "is_error": true,
            "result": "Claude AI usage limit reached|1760000000"}))
        .unwrap();
        assert_eq!(limit.kind, Kind::UsageLimit);
        let limited = classify_json(json!({"type": "assistant", "error": "rate_limit",
            "message": {"content": [{"type": "text", "text": "5-hour limit reached ∙ resets 3pm"}]}})).unwrap();
        assert_eq!(limited.kind, Kind::UsageLimit);
        let answered = classify_json(json!({"type": "control_response",
            "response": {"subtype": "success", "request_id": "r1", "response": {}}}))
        .unwrap();
        assert_eq!(
            (answered.kind, answered.request_id.as_deref()),
            (Kind::Resolved, Some("r1"))
        );

        assert_eq!(
            classify_json(json!({"type": "assistant", "message": {"content": []}})),
            None
        );
        assert_eq!(
            classify_json(json!({"type": "control_request", "request": {"subtype": "interrupt"}})),
            None
        );
        assert_eq!(classify("stream_event", &json!({})), None);
    }

    #[test]
    fn texts_are_one_bounded_line() {
        assert_eq!(bound("a\nb\tc ", 10), "a b c");
        assert_eq!(
            bound(&"x".repeat(300), MAX_BODY).chars().count(),
            MAX_BODY + 1
        );
    }
}
