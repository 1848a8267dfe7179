//! `switchboard attach SESSION`: a line-oriented terminal viewer.
//!
//! It shows the session's transcript as it happens, sends every line typed as a prompt,
//! and asks about permission requests; the next line typed answers the oldest one.
//! Ctrl-C interrupts the running turn; a second Ctrl-C within 2 s, `/quit` or end of
//! input leaves.
//!
//! The decisions live in [`Controller`], which turns messages and typed lines into lines
//! to print and actions to take without doing any I/O; [`run`] only wires it to the
//! terminal and the [`ViewerSocket`].

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;
use switchboard_client::viewer::{CLOSE_NORMAL, CLOSE_SESSION_NOT_FOUND, CLOSE_UNAUTHORIZED};
use switchboard_client::{ViewerConfig, ViewerEvent, ViewerSocket};
use switchboard_proto::sessions::event_sequence;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::remote::RemoteArgs;
use crate::render::{self, Line, Style};

/// How soon a second Ctrl-C must follow the first to leave instead of interrupting.
const DOUBLE_CTRL_C: Duration = Duration::from_secs(2);

/// The deny message when the person gives no reason; the worker requires one.
const DEFAULT_DENY_MESSAGE: &str = "The user denied this request.";

/// Flags of `switchboard attach`.
#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    /// The session to attach to (`session_…`, as `switchboard sessions` lists it).
    session: String,
    /// How many of the session's earlier events to show before the live ones.
    #[arg(
        long,
        env = "SWITCHBOARD_ATTACH_HISTORY",
        value_name = "EVENTS",
        default_value_t = 100
    )]
    history: u64,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Something the person asked for, for [`run`] to carry out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Send this text as a prompt.
    Prompt(String),
    /// Allow this `can_use_tool` request with its own input.
    Allow(Value),
    /// Deny this `can_use_tool` request with a message for the model.
    Deny(Value, String),
    /// Interrupt the running turn.
    Interrupt,
    /// Leave.
    Quit,
}

/// What the next typed line means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A prompt (or a command such as `/quit`).
    Prompt,
    /// The answer to the oldest pending permission request.
    Decision,
    /// The reason for denying it.
    Reason,
}

/// The viewer's state: pending permission requests, the prompts it sent, and what the
/// next typed line means.
#[derive(Debug)]
pub(crate) struct Controller {
    /// `can_use_tool` requests not answered yet, oldest first; the first is being asked.
    pending: VecDeque<Value>,
    /// The uuids of prompts sent from here, whose echo is not shown again.
    own_prompts: HashSet<String>,
    /// The ids of control requests (interrupts) sent from here, likewise.
    own_requests: HashSet<String>,
    mode: Mode,
    /// The sequence number of the newest stored event when attaching; events up to it
    /// are history, whose permission requests were probably answered long ago.
    history_end: u64,
    in_history: bool,
}

impl Controller {
    /// A controller for a session whose newest stored event was `history_end` when the
    /// viewer attached, showing the events after `from`.
    pub(crate) fn new(history_end: u64, from: u64) -> Self {
        Self {
            pending: VecDeque::new(),
            own_prompts: HashSet::new(),
            own_requests: HashSet::new(),
            mode: Mode::Prompt,
            history_end,
            in_history: history_end > from,
        }
    }

    /// Starts with the request the session waits on (its `requires_action`), which may be
    /// older than the history shown. It is asked about once the history has been shown.
    pub(crate) fn start(&mut self, waiting: Option<&Value>) -> Vec<Line> {
        let Some(request) = waiting.filter(|r| {
            r.pointer("/request/subtype").and_then(Value::as_str) == Some("can_use_tool")
        }) else {
            return Vec::new();
        };
        self.pending.push_back(request.clone());
        if self.in_history {
            Vec::new()
        } else {
            self.ask_next()
        }
    }

    /// Notes that a prompt with `uuid` was sent from here.
    pub(crate) fn sent_prompt(&mut self, uuid: String) {
        self.own_prompts.insert(uuid);
    }

    /// Notes that a control request with `request_id` was sent from here.
    pub(crate) fn sent_request(&mut self, request_id: String) {
        self.own_requests.insert(request_id);
    }

    /// The lines that show a message from the session, updating the pending requests.
    pub(crate) fn on_message(&mut self, message: &Value) -> Vec<Line> {
        let mut lines = self.show(message);
        // Requests still unanswered when the history ends are asked about now.
        if self.in_history && event_sequence(message).is_some_and(|s| s >= self.history_end) {
            self.in_history = false;
            if self.mode == Mode::Prompt {
                lines.extend(self.ask_next());
            }
        }
        lines
    }

    fn show(&mut self, message: &Value) -> Vec<Line> {
        match message.get("type").and_then(Value::as_str) {
            Some("control_request")
                if message.pointer("/request/subtype").and_then(Value::as_str)
                    == Some("can_use_tool") =>
            {
                self.permission_asked(message)
            }
            Some("control_request")
                if message.pointer("/request/subtype").and_then(Value::as_str)
                    == Some("interrupt") =>
            {
                let own = request_id(message).is_some_and(|id| self.own_requests.contains(id));
                if own || self.in_history {
                    Vec::new()
                } else {
                    vec![Line::new(
                        Style::Note,
                        "· another viewer interrupted the turn",
                    )]
                }
            }
            Some("control_response") => {
                let id = message
                    .pointer("/response/request_id")
                    .and_then(Value::as_str);
                id.map(|id| self.answered_elsewhere(id)).unwrap_or_default()
            }
            Some("control_cancel_request") => {
                let id = message.get("request_id").and_then(Value::as_str);
                id.map(|id| self.answered_elsewhere(id)).unwrap_or_default()
            }
            Some("user")
                if message
                    .get("uuid")
                    .and_then(Value::as_str)
                    .is_some_and(|u| self.own_prompts.contains(u)) =>
            {
                // The person saw the prompt as they typed it.
                Vec::new()
            }
            _ => render::message(message),
        }
    }

    fn permission_asked(&mut self, message: &Value) -> Vec<Line> {
        let id = request_id(message);
        if self.pending.iter().any(|p| request_id(p) == id) {
            return Vec::new();
        }
        self.pending.push_back(message.clone());
        let tool = render::tool_label(message);
        if self.in_history {
            let input = message.pointer("/request/input").unwrap_or(&Value::Null);
            let summary = render::input_summary(input);
            return vec![Line::new(
                Style::Note,
                format!("· {tool}({summary}) asked for permission"),
            )];
        }
        if self.mode == Mode::Prompt {
            return self.ask_next();
        }
        vec![Line::new(
            Style::Note,
            format!("· another permission request waits: {tool}"),
        )]
    }

    fn answered_elsewhere(&mut self, id: &str) -> Vec<Line> {
        let Some(at) = self.pending.iter().position(|p| request_id(p) == Some(id)) else {
            return Vec::new();
        };
        let request = self.pending.remove(at).unwrap_or_default();
        if self.in_history {
            return Vec::new();
        }
        let tool = render::tool_label(&request);
        if at > 0 || self.mode == Mode::Prompt {
            return vec![Line::new(
                Style::Note,
                format!("· the waiting {tool} request was answered elsewhere"),
            )];
        }
        let mut lines = vec![Line::new(
            Style::Note,
            format!("· the {tool} request was answered elsewhere; prompt dismissed"),
        )];
        self.mode = Mode::Prompt;
        lines.extend(self.ask_next());
        lines
    }

    /// Shows the oldest pending request, if any, and expects its answer next.
    fn ask_next(&mut self) -> Vec<Line> {
        match self.pending.front() {
            Some(request) => {
                self.mode = Mode::Decision;
                render::permission_request(request)
            }
            None => {
                self.mode = Mode::Prompt;
                Vec::new()
            }
        }
    }

    /// What a typed line means: lines to print and, perhaps, an action.
    pub(crate) fn on_line(&mut self, line: &str) -> (Vec<Line>, Option<Action>) {
        let trimmed = line.trim();
        if trimmed == "/quit" {
            return (Vec::new(), Some(Action::Quit));
        }
        match self.mode {
            Mode::Prompt => match trimmed {
                "" => (Vec::new(), None),
                "/interrupt" => (Vec::new(), Some(Action::Interrupt)),
                "/help" => (help(), None),
                _ => (Vec::new(), Some(Action::Prompt(line.trim_end().to_owned()))),
            },
            Mode::Decision => {
                let (word, rest) = split_answer(trimmed);
                match word.as_str() {
                    "y" | "yes" => {
                        let request = self.pending.pop_front().unwrap_or_default();
                        let tool = render::tool_label(&request);
                        let mut lines = vec![Line::new(Style::Note, format!("· allowed {tool}"))];
                        lines.extend(self.ask_next());
                        (lines, Some(Action::Allow(request)))
                    }
                    "n" | "no" if rest.is_empty() => {
                        self.mode = Mode::Reason;
                        let ask = "Reason for the model (Enter to deny without one):";
                        (vec![Line::new(Style::Attention, ask)], None)
                    }
                    "n" | "no" => self.deny(rest),
                    _ => (
                        vec![Line::new(Style::Attention, "Please answer y or n.")],
                        None,
                    ),
                }
            }
            Mode::Reason => self.deny(trimmed),
        }
    }

    fn deny(&mut self, reason: &str) -> (Vec<Line>, Option<Action>) {
        let request = self.pending.pop_front().unwrap_or_default();
        let tool = render::tool_label(&request);
        let message = if reason.is_empty() {
            DEFAULT_DENY_MESSAGE
        } else {
            reason
        };
        let mut lines = vec![Line::new(Style::Note, format!("· denied {tool}"))];
        lines.extend(self.ask_next());
        (lines, Some(Action::Deny(request, message.to_owned())))
    }

    /// Puts back a request whose answer could not be sent, and asks about it again.
    pub(crate) fn requeue(&mut self, request: Value) -> Vec<Line> {
        self.pending.push_front(request);
        self.ask_next()
    }
}

fn request_id(message: &Value) -> Option<&str> {
    message.get("request_id").and_then(Value::as_str)
}

/// Splits an answer into its first word, lower-cased, and the rest: `"n, too risky"`
/// gives `("n", "too risky")`.
fn split_answer(answer: &str) -> (String, &str) {
    let end = answer
        .find(|c: char| !c.is_alphabetic())
        .unwrap_or(answer.len());
    let word = answer[..end].to_lowercase();
    let rest = answer[end..].trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, ',' | ':' | ';' | '-' | '.')
    });
    (word, rest.trim_end())
}

fn help() -> Vec<Line> {
    [
        "Type a prompt and press Enter to send it to the session.",
        "When asked for permission, answer y or n (a reason may follow the n).",
        "/interrupt or Ctrl-C stops the running turn; Ctrl-C twice, /quit or Ctrl-D leaves.",
    ]
    .into_iter()
    .map(|t| Line::new(Style::Note, t))
    .collect()
}

/// Prints lines to stdout, colored when it is a terminal and `NO_COLOR` is not set.
struct Printer {
    color: bool,
}

impl Printer {
    fn new() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            color: std::io::stdout().is_terminal() && !no_color,
        }
    }

    fn print(&self, lines: &[Line]) {
        let mut out = std::io::stdout().lock();
        for line in lines {
            // A closed stdout leaves nothing to tell; the session goes on regardless.
            let _ = writeln!(out, "{}", render::paint(line, self.color));
        }
        let _ = out.flush();
    }

    fn note(&self, style: Style, text: impl Into<String>) {
        self.print(&[Line::new(style, text)]);
    }
}

/// Typed lines, read on a plain thread: a blocking read on a runtime thread would keep
/// the runtime from shutting down while it waits. The channel ends at end of input.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match stdin.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Each Ctrl-C, as a message; the handler also keeps Ctrl-C from killing the process.
fn ctrl_c_presses() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    rx
}

pub(crate) async fn run(args: AttachArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    let token = remote.token()?;
    let client = remote.sessions_client()?;
    // Asking for the session first turns a wrong id or key into a clear message at once,
    // instead of the socket's retries.
    let session = client
        .get_session(&args.session)
        .await
        .map_err(|e| remote.explain(e, &format!("session {}", args.session)))?;
    let out = Printer::new();
    let title = session.title.as_deref().unwrap_or("(untitled)");
    out.note(
        Style::Note,
        format!(
            "Attached to {title} ({}) · {}",
            session.id,
            crate::sessions::state(&session)
        ),
    );
    out.note(
        Style::Note,
        "Type a prompt and press Enter · Ctrl-C interrupts · /quit or Ctrl-D leaves · /help",
    );

    let from = session.last_sequence_num.saturating_sub(args.history);
    let mut config = ViewerConfig::new(remote.base_url(), &session.id, token).resume_after(from);
    // A person watches: keep trying through any outage until they leave.
    config.max_reconnect_attempts = u32::MAX;
    let (viewer, mut events) =
        ViewerSocket::connect(config).context("failed to start the viewer")?;
    let mut controller = Controller::new(session.last_sequence_num, from);
    out.print(&controller.start(session.requires_action.as_ref()));
    let mut lines = stdin_lines();
    let mut ctrl_c = ctrl_c_presses();
    let mut last_ctrl_c: Option<Instant> = None;
    let mut connected_once = false;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return Ok(()) };
                match event {
                    ViewerEvent::Connected if connected_once => out.note(Style::Note, "· reconnected"),
                    ViewerEvent::Connected => connected_once = true,
                    ViewerEvent::Message(message) => out.print(&controller.on_message(&message)),
                    ViewerEvent::Reconnecting { attempt, delay } => {
                        if let Some(text) = reconnecting_note(attempt, delay) {
                            out.note(Style::Error, text);
                        }
                    }
                    ViewerEvent::Error(e) => out.note(Style::Error, format!("✗ {e}")),
                    ViewerEvent::Closed { code, reason } => {
                        return ended(remote.base_url(), &session.id, code, &reason)
                    }
                }
            }
            // Typed lines wait until the socket is open, so piped input is not lost.
            line = lines.recv(), if connected_once => {
                let Some(line) = line else {
                    viewer.close().await;
                    return Ok(());
                };
                let (shown, action) = controller.on_line(&line);
                out.print(&shown);
                let Some(action) = action else { continue };
                if action == Action::Quit {
                    viewer.close().await;
                    return Ok(());
                }
                perform(&viewer, &mut controller, &out, action).await;
            }
            Some(()) = ctrl_c.recv() => {
                if last_ctrl_c.is_some_and(|t| t.elapsed() < DOUBLE_CTRL_C) {
                    viewer.close().await;
                    return Ok(());
                }
                last_ctrl_c = Some(Instant::now());
                match viewer.interrupt().await {
                    Ok(id) => {
                        controller.sent_request(id);
                        out.note(Style::Attention, "· interrupt sent (Ctrl-C again within 2 s leaves)");
                    }
                    Err(e) => out.note(Style::Error, format!("✗ could not interrupt: {e}")),
                }
            }
        }
    }
}

/// Carries out one action; a failure is shown, and an answer that failed is asked again.
async fn perform(
    viewer: &ViewerSocket,
    controller: &mut Controller,
    out: &Printer,
    action: Action,
) {
    let failed = match action {
        Action::Prompt(text) => match viewer.send_user_message(&text).await {
            Ok(uuid) => {
                controller.sent_prompt(uuid);
                return;
            }
            Err(e) => (format!("✗ the prompt was not sent: {e}"), None),
        },
        Action::Allow(request) => {
            let id = request_id(&request).unwrap_or_default().to_owned();
            let input = request
                .pointer("/request/input")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default()));
            match viewer.allow(&id, input).await {
                Ok(()) => return,
                Err(e) => (format!("✗ the answer was not sent: {e}"), Some(request)),
            }
        }
        Action::Deny(request, message) => {
            let id = request_id(&request).unwrap_or_default().to_owned();
            match viewer.deny(&id, &message).await {
                Ok(()) => return,
                Err(e) => (format!("✗ the answer was not sent: {e}"), Some(request)),
            }
        }
        Action::Interrupt => match viewer.interrupt().await {
            Ok(id) => {
                controller.sent_request(id);
                out.note(Style::Attention, "· interrupt sent");
                return;
            }
            Err(e) => (format!("✗ could not interrupt: {e}"), None),
        },
        Action::Quit => return,
    };
    let (text, request) = failed;
    out.note(Style::Error, text);
    if let Some(request) = request {
        out.print(&controller.requeue(request));
    }
}

/// How many reconnect attempts go by between two "still reconnecting" notes.
const RECONNECT_NOTE_EVERY: u32 = 10;

/// What to say about a reconnect attempt: the first one says the connection was lost and
/// how to leave, then every tenth that it is still trying; the rest pass quietly.
// `is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#[allow(clippy::manual_is_multiple_of)]
fn reconnecting_note(attempt: u32, delay: Duration) -> Option<String> {
    let delay = render::duration(delay.as_millis().try_into().unwrap_or(u64::MAX));
    if attempt == 1 {
        Some(format!(
            "· connection lost; reconnecting in {delay} and until it is back \
             (Ctrl-C twice or /quit leaves)"
        ))
    } else if attempt % RECONNECT_NOTE_EVERY == 0 {
        Some(format!("· still reconnecting (attempt {attempt})"))
    } else {
        None
    }
}

/// The outcome of a viewer that ended: fine when this side closed it, otherwise one line
/// saying why (the server's words shown, never obeyed, by the terminal).
fn ended(url: &str, session_id: &str, code: Option<u16>, reason: &str) -> anyhow::Result<()> {
    let reason = render::visible(reason);
    match code {
        Some(CLOSE_NORMAL) => Ok(()),
        Some(CLOSE_UNAUTHORIZED) => {
            anyhow::bail!("the server at {url} refused the API key for session {session_id}")
        }
        Some(CLOSE_SESSION_NOT_FOUND) => {
            anyhow::bail!("session {session_id} is gone (archived or deleted)")
        }
        _ => anyhow::bail!("lost the connection to {url}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn texts(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| l.text.clone()).collect()
    }

    fn can_use_tool(id: &str, seq: u64, tool: &str) -> Value {
        json!({
            "type": "control_request", "request_id": id, "sequence_num": seq,
            "request": {"subtype": "can_use_tool", "tool_name": tool,
                        "input": {"command": "npm test"}, "tool_use_id": "t1"},
        })
    }

    #[test]
    fn typed_lines_are_prompts_until_a_permission_request_arrives() {
        let mut c = Controller::new(0, 0);

        assert_eq!(c.on_line("  "), (vec![], None));
        assert_eq!(
            c.on_line("fix the bug  "),
            (vec![], Some(Action::Prompt("fix the bug".into())))
        );
        assert_eq!(c.on_line("/interrupt").1, Some(Action::Interrupt));
        assert_eq!(c.on_line(" /quit ").1, Some(Action::Quit));
    }

    #[test]
    fn yes_allows_the_request_with_its_input() {
        let mut c = Controller::new(0, 0);
        let request = can_use_tool("r1", 5, "Bash");

        let shown = texts(&c.on_message(&request));
        let (lines, action) = c.on_line("Y");

        assert_eq!(shown[0], "? Permission needed to use Bash");
        // A Bash request shows its command in full (review.rs), not as JSON.
        assert!(shown.iter().any(|l| l.contains("npm test")), "{shown:?}");
        assert_eq!(shown.last().unwrap(), "Allow? [y]es / [n]o (then a reason)");
        assert_eq!(texts(&lines), ["· allowed Bash"]);
        assert_eq!(action, Some(Action::Allow(request)));
        // The next line is a prompt again.
        assert_eq!(c.on_line("hi").1, Some(Action::Prompt("hi".into())));
    }

    #[test]
    fn no_asks_for_a_reason_or_takes_one_inline() {
        let mut c = Controller::new(0, 0);
        let first = can_use_tool("r1", 5, "Bash");
        let second = can_use_tool("r2", 6, "Write");
        c.on_message(&first);
        let queued = texts(&c.on_message(&second));

        let (asked, none) = c.on_line("n");
        let (_, denied) = c.on_line("too risky");
        let (_, inline) = c.on_line("no, not today");

        assert_eq!(queued, ["· another permission request waits: Write"]);
        assert_eq!(none, None);
        assert!(asked[0].text.starts_with("Reason"));
        assert_eq!(denied, Some(Action::Deny(first, "too risky".into())));
        assert_eq!(inline, Some(Action::Deny(second, "not today".into())));
    }

    #[test]
    fn an_empty_reason_uses_the_default_message_and_nonsense_is_asked_again() {
        let mut c = Controller::new(0, 0);
        let request = can_use_tool("r1", 5, "Bash");
        c.on_message(&request);

        let (hint, nothing) = c.on_line("maybe");
        c.on_line("no");
        let (_, denied) = c.on_line("");

        assert_eq!(texts(&hint), ["Please answer y or n."]);
        assert_eq!(nothing, None);
        assert_eq!(
            denied,
            Some(Action::Deny(request, DEFAULT_DENY_MESSAGE.into()))
        );
    }

    #[test]
    fn an_answer_from_elsewhere_dismisses_the_prompt() {
        let mut c = Controller::new(0, 0);
        c.on_message(&can_use_tool("r1", 5, "Bash"));
        c.on_message(&can_use_tool("r2", 6, "Edit"));

        let dismissed = texts(&c.on_message(&json!({
            "type": "control_response", "sequence_num": 7,
            "response": {"subtype": "success", "request_id": "r1",
                         "response": {"behavior": "allow", "updatedInput": {}}},
        })));
        let cancelled = texts(&c.on_message(&json!({
            "type": "control_cancel_request", "request_id": "r2", "sequence_num": 8,
        })));

        assert_eq!(
            dismissed[0],
            "· the Bash request was answered elsewhere; prompt dismissed"
        );
        assert_eq!(dismissed[1], "? Permission needed to use Edit");
        assert_eq!(
            cancelled,
            ["· the Edit request was answered elsewhere; prompt dismissed"]
        );
        assert_eq!(c.on_line("y").1, Some(Action::Prompt("y".into())));
    }

    #[test]
    fn history_requests_are_asked_only_if_still_open_when_the_history_ends() {
        let mut c = Controller::new(4, 0);
        let answered = c.on_message(&can_use_tool("old", 1, "Bash"));
        c.on_message(&json!({"type": "control_response", "sequence_num": 2,
                             "response": {"request_id": "old", "subtype": "success"}}));
        c.on_message(&can_use_tool("open", 3, "Edit"));

        let at_end = texts(&c.on_message(&json!({"type": "keep_going", "sequence_num": 4})));

        assert_eq!(texts(&answered), ["· Bash(npm test) asked for permission"]);
        assert_eq!(at_end[0], "? Permission needed to use Edit");
        let (_, action) = c.on_line("y");
        assert!(matches!(action, Some(Action::Allow(r)) if r["request_id"] == "open"));
    }

    #[test]
    fn the_request_a_session_waits_on_is_asked_even_without_history() {
        let waiting = can_use_tool("w1", 9, "Bash");
        let mut fresh = Controller::new(9, 9);
        let mut with_history = Controller::new(9, 5);

        let asked = texts(&fresh.start(Some(&waiting)));
        let quiet = with_history.start(Some(&waiting));
        // The request shows up in the history too; it is asked about once, at its end.
        let again = with_history.on_message(&waiting);

        assert_eq!(asked[0], "? Permission needed to use Bash");
        assert!(quiet.is_empty());
        assert_eq!(texts(&again)[0], "? Permission needed to use Bash");
        assert_eq!(with_history.pending.len(), 1);
        assert!(Controller::new(0, 0).start(None).is_empty());
    }

    #[test]
    fn own_prompts_are_not_shown_twice_but_others_are() {
        let mut c = Controller::new(0, 0);
        c.sent_prompt("mine".into());
        let prompt = |uuid: &str| json!({"type": "user", "uuid": uuid, "message": {"role": "user", "content": "hi"}});

        assert!(c.on_message(&prompt("mine")).is_empty());
        assert_eq!(texts(&c.on_message(&prompt("theirs"))), ["> hi"]);
    }

    #[test]
    fn interrupts_from_other_viewers_are_noted_and_own_ones_are_not() {
        let mut c = Controller::new(0, 0);
        c.sent_request("mine".into());
        let interrupt = |id: &str| {
            json!({"type": "control_request", "request_id": id,
                   "request": {"subtype": "interrupt"}})
        };

        assert!(c.on_message(&interrupt("mine")).is_empty());
        assert_eq!(
            texts(&c.on_message(&interrupt("theirs"))),
            ["· another viewer interrupted the turn"]
        );
    }

    #[test]
    fn a_failed_answer_is_asked_again() {
        let mut c = Controller::new(0, 0);
        let request = can_use_tool("r1", 5, "Bash");
        c.on_message(&request);
        c.on_line("y");

        let again = texts(&c.requeue(request.clone()));

        assert_eq!(again[0], "? Permission needed to use Bash");
        assert_eq!(c.on_line("yes").1, Some(Action::Allow(request)));
    }

    #[test]
    fn answers_split_into_a_word_and_a_reason() {
        assert_eq!(split_answer("n"), ("n".into(), ""));
        assert_eq!(split_answer("No: not now "), ("no".into(), "not now"));
        assert_eq!(split_answer("y"), ("y".into(), ""));
        assert_eq!(split_answer("nope"), ("nope".into(), ""));
    }

    #[test]
    fn endings_are_explained_in_one_line() {
        assert!(ended("u", "s", Some(1000), "").is_ok());
        let refused = ended("u", "s", Some(4003), "").unwrap_err().to_string();
        assert!(refused.contains("refused the API key"), "{refused}");
        let gone = ended("u", "s", Some(4001), "").unwrap_err().to_string();
        assert!(gone.contains("is gone"), "{gone}");
        let lost = ended("u", "s", Some(1011), "bad\x1b]52;c;eA==\x07")
            .unwrap_err()
            .to_string();
        assert!(lost.ends_with("bad^[]52;c;eA==^G"), "{lost}");
    }

    #[test]
    fn reconnects_are_announced_once_then_now_and_then() {
        let notes: Vec<Option<String>> = (1..=20)
            .map(|n| reconnecting_note(n, Duration::from_millis(900)))
            .collect();

        assert_eq!(
            notes[0].as_deref(),
            Some(
                "· connection lost; reconnecting in 900ms and until it is back \
                 (Ctrl-C twice or /quit leaves)"
            )
        );
        assert_eq!(
            notes[9].as_deref(),
            Some("· still reconnecting (attempt 10)")
        );
        assert_eq!(notes.iter().flatten().count(), 3);
    }
}
