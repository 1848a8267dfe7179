//! What the bridge prints: a banner, the session link (with a QR code of it on a
//! terminal), one line per thing that happened (a permission prompt among them), and, on a terminal, a status line at the
//! bottom that says how many sessions run, what each is doing, and whether the bridge is
//! reconnecting. When stdout is not a terminal there is no status line and no QR code,
//! and every line starts with the time, so that the output reads as a log.

use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex, PoisonError};

use qrcode::render::unicode;
use qrcode::QrCode;
use serde_json::Value;
use switchboard_proto::SessionId;
use time::OffsetDateTime;

use super::options::{BridgeOptions, SpawnMode};
use super::workspace::GitInfo;

/// Erases the current terminal line and returns to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// The bridge's output. Cheap to clone; clones share the status line.
#[derive(Debug, Clone)]
pub(crate) struct Display {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    terminal: bool,
    /// The status line as last drawn (terminal only).
    status: String,
}

impl Display {
    /// Output to stdout, with a status line when stdout is a terminal.
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                terminal: std::io::stdout().is_terminal(),
                status: String::new(),
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether stdout is a terminal (and so has a status line).
    pub(crate) fn is_terminal(&self) -> bool {
        self.state().terminal
    }

    /// Prints lines as they are, above the status line.
    fn print_block(&self, block: &str) {
        let state = self.state();
        let mut out = std::io::stdout().lock();
        if state.terminal {
            let _ = write!(out, "{CLEAR_LINE}{block}\n{}", state.status);
        } else {
            let _ = writeln!(out, "{block}");
        }
        let _ = out.flush();
    }

    /// Prints one line about something that happened.
    pub(crate) fn line(&self, text: &str) {
        let terminal = self.state().terminal;
        if terminal {
            self.print_block(text);
        } else {
            let now = OffsetDateTime::now_utc();
            let stamp = format!("{:02}:{:02}:{:02}", now.hour(), now.minute(), now.second());
            self.print_block(&format!("{stamp} {text}"));
        }
    }

    /// Replaces the status line (terminal only).
    pub(crate) fn status(&self, text: &str) {
        let mut state = self.state();
        if !state.terminal || state.status == text {
            return;
        }
        state.status = text.to_owned();
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{CLEAR_LINE}{text}");
        let _ = out.flush();
    }

    /// Removes the status line, before the bridge exits.
    pub(crate) fn finish(&self) {
        let mut state = self.state();
        if state.terminal && !state.status.is_empty() {
            state.status.clear();
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{CLEAR_LINE}");
            let _ = out.flush();
        }
    }

    /// What the bridge serves and how.
    pub(crate) fn banner(
        &self,
        options: &BridgeOptions,
        machine: &str,
        git: &GitInfo,
        environment_id: &str,
    ) {
        let branch = git
            .branch
            .as_deref()
            .map(|b| format!(" (branch {b})"))
            .unwrap_or_default();
        let spawn = match options.spawn {
            SpawnMode::SingleSession => "one session".to_owned(),
            SpawnMode::SameDir => {
                format!("up to {} sessions in this directory", options.max_sessions)
            }
            SpawnMode::Worktree => {
                format!(
                    "up to {} sessions, one git worktree each",
                    options.max_sessions
                )
            }
        };
        self.line(&format!(
            "Switchboard bridge for {}{branch} on {machine}\n  server {} · environment {environment_id}\n  agent {} · {spawn}\n  agent mode: {}",
            options.directory.display(),
            options.base_url,
            options.agent.describe(),
            options.agent_why,
        ));
    }

    /// The link to a session, and on a terminal a QR code of the pairing link (which
    /// signs a phone in and opens the session) or, without one, of the session link.
    pub(crate) fn session_link(&self, link: &str, pairing: Option<&str>) {
        let terminal = self.state().terminal;
        if terminal {
            if let Some(code) = qr(pairing.unwrap_or(link)) {
                self.print_block(&code);
            }
            let sign_in = pairing
                .map(|p| format!("\nSign in a phone (the code; works once, for 10 minutes): {p}"))
                .unwrap_or_default();
            self.print_block(&format!(
                "Session: {link}{sign_in}\nOpen the link (or scan the code) to watch and steer the session. Ctrl-C stops the bridge."
            ));
        } else {
            self.line(&format!("session link: {link}"));
            if let Some(p) = pairing {
                self.line(&format!("sign-in link (works once, for 10 minutes): {p}"));
            }
        }
    }
}

/// A QR code of `text` in Unicode half blocks, light modules drawn, for dark and light
/// terminals alike (with the quiet zone around it).
pub(crate) fn qr(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<unicode::Dense1x2>()
            .dark_color(unicode::Dense1x2::Light)
            .light_color(unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The link to a session's page in the web UI.
pub(crate) fn session_link(base_url: &str, session_id: &str) -> String {
    let compat = SessionId::parse(session_id)
        .map(|id| id.compat())
        .unwrap_or_else(|| session_id.to_owned());
    format!("{}/s/{compat}", base_url.trim_end_matches('/'))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn links_use_the_compat_session_id() {
        assert_eq!(
            session_link("http://h:1/", "cse_abcd1234"),
            "http://h:1/s/session_abcd1234"
        );
        assert_eq!(
            session_link("http://h:1", "session_abcd1234"),
            "http://h:1/s/session_abcd1234"
        );
    }

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

    #[test]
    fn a_link_becomes_a_block_of_half_blocks() {
        let code = qr("http://127.0.0.1:8787/s/session_abcd").unwrap_or_default();
        let lines: Vec<&str> = code.lines().collect();
        assert!(lines.len() > 10, "{code}");
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(code.contains('█') || code.contains('▀') || code.contains('▄'));
    }
}
