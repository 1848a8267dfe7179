//! What the bridge tests share: a `switchboard serve` process with a key, a
//! `switchboard bridge` process whose output can be waited on, a viewer, and the
//! end-to-end scenario every agent must pass (prompt and reply, a permission allowed and
//! denied, an interrupt, a clean end, the history complete and in order).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use switchboard_client::{HistoryQuery, SessionsClient, ViewerConfig, ViewerEvent, ViewerSocket};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

/// The file the fake model's (and the fake agent's) tool call creates.
pub const TOOL_FILE: &str = "fake-tool-was-here.txt";

/// A `switchboard` command with none of the caller's settings leaking in.
pub fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for name in [
        "SWITCHBOARD_DATABASE_URL",
        "SWITCHBOARD_LISTEN",
        "SWITCHBOARD_URL",
        "SWITCHBOARD_TOKEN",
        "SWITCHBOARD_CLAUDE",
        "SWITCHBOARD_BRIDGE_AGENT",
        "SWITCHBOARD_PUBLIC_URL",
        "CLAUDE_BRIDGE_BASE_URL",
        "CLAUDE_BRIDGE_OAUTH_TOKEN",
    ] {
        command.env_remove(name);
    }
    command.kill_on_drop(true);
    command
}

/// The fake-agent (or fake-anthropic) binary, built once per test process.
pub fn testkit_bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // The test runs from target/<profile>/deps; the binaries go to target/<profile>.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("unexpected test binary location")?
            .to_path_buf();
        let target = profile.parent().ok_or("unexpected target directory")?;
        let mut build = std::process::Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--quiet",
                "--offline",
                "-p",
                "switchboard-testkit",
                "--bins",
            ])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("building switchboard-testkit failed: {status}"));
        }
        Ok(profile)
    });
    let dir = dir.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(dir.join(name))
}

/// Where the server's log goes: the file named by `SWITCHBOARD_TEST_SERVER_LOG`
/// (appended to), or nowhere.
fn server_log() -> Stdio {
    std::env::var_os("SWITCHBOARD_TEST_SERVER_LOG")
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map_or_else(Stdio::null, Stdio::from)
}

/// A `switchboard serve` process on an ephemeral port, with an API key.
pub struct Served {
    pub child: Child,
    pub url: String,
    pub key: String,
    pub data: tempfile::TempDir,
}

impl Served {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `serve` flags (e.g. `--public-url`).
    pub async fn start_with(flags: &[&str]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let out = switchboard()
            .args(["token", "create", "--name", "bridge-test", "--data-dir"])
            .arg(data.path())
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout)?.trim().to_owned();
        let (child, url) = Self::serve(data.path(), "127.0.0.1:0", flags).await?;
        Ok(Self {
            child,
            url,
            key,
            data,
        })
    }

    /// Kills the server, waits `pause`, and starts it again on the same address and data.
    pub async fn restart(&mut self, pause: Duration) -> anyhow::Result<()> {
        self.child.kill().await?;
        tokio::time::sleep(pause).await;
        let listen = self.url.trim_start_matches("http://").to_owned();
        let (child, url) = Self::serve(self.data.path(), &listen, &[]).await?;
        anyhow::ensure!(url == self.url, "the server came back at {url}");
        self.child = child;
        Ok(())
    }

    async fn serve(data: &Path, listen: &str, flags: &[&str]) -> anyhow::Result<(Child, String)> {
        let mut child = switchboard()
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(server_log())
            .spawn()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("Switchboard listening on ") {
                    return Ok::<_, anyhow::Error>(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
            anyhow::bail!("serve exited before listening")
        })
        .await??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, url))
    }

    pub fn sessions(&self) -> SessionsClient {
        SessionsClient::new(&self.url, self.key.clone())
    }

    /// A `switchboard bridge` command for this server, run in `cwd`.
    pub fn bridge(&self, cwd: &Path) -> Command {
        let mut command = switchboard();
        command
            .arg("bridge")
            .args(["--url", &self.url, "--token", &self.key])
            .current_dir(cwd);
        command
    }
}

/// A running `switchboard bridge` whose output lines are collected.
pub struct Bridge {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
    /// The tasks reading its stdout and stderr, which end at the pipes' end.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Bridge {
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0);
        let tx = Arc::new(tx);
        let mut readers = Vec::new();
        for (stream, prefix) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
                "",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
                "stderr: ",
            ),
        ] {
            let Some(stream) = stream else { continue };
            let (lines, tx) = (lines.clone(), tx.clone());
            readers.push(tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let mut all = lines.lock().unwrap_or_else(PoisonError::into_inner);
                    all.push(format!("{prefix}{line}"));
                    tx.send_replace(all.len());
                }
            }));
        }
        Ok(Self {
            child,
            lines,
            count,
            readers,
        })
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// Waits for a line containing `needle`.
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(line) = self
                    .lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .find(|l| l.contains(needle))
                {
                    return Some(line.clone());
                }
                if self.count.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => Ok(line),
            _ => anyhow::bail!(
                "the bridge did not print {needle:?} within {timeout:?}; it printed:\n{}",
                self.output()
            ),
        }
    }

    /// The session id of the link the bridge printed.
    pub async fn session_id(&mut self) -> anyhow::Result<String> {
        let line = self
            .wait_for("/s/session_", Duration::from_secs(30))
            .await?;
        let id = line
            .rsplit("/s/")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .context("no session id in the link")?;
        Ok(id.to_owned())
    }

    /// The environment id from the banner.
    pub async fn environment_id(&mut self) -> anyhow::Result<String> {
        let line = self
            .wait_for("environment env_", Duration::from_secs(30))
            .await?;
        let id = line
            .split("environment ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("no environment id in the banner")?;
        Ok(id.to_owned())
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        }
        self.wait(timeout).await
    }

    /// Waits for the bridge to exit by itself.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                // The process is gone, but its last lines may still be in the pipes:
                // read them to the end before anyone looks at the output (a child of the
                // bridge still holding a pipe open only delays this by the bound).
                for reader in self.readers.drain(..) {
                    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
                }
                Ok(status?)
            }
            Err(_) => anyhow::bail!(
                "the bridge did not exit within {timeout:?}; it printed:\n{}",
                self.output()
            ),
        }
    }
}

/// A viewer of one session that remembers what it saw.
pub struct Viewer {
    pub socket: ViewerSocket,
    events: mpsc::Receiver<ViewerEvent>,
    pub seen: Vec<Value>,
}

impl Viewer {
    pub async fn connect(served: &Served, session_id: &str) -> anyhow::Result<Self> {
        let config = ViewerConfig::new(&served.url, session_id, served.key.clone());
        let (socket, mut events) = ViewerSocket::connect(config)?;
        match tokio::time::timeout(Duration::from_secs(15), events.recv()).await {
            Ok(Some(ViewerEvent::Connected)) => {}
            other => anyhow::bail!("the viewer did not connect: {other:?}"),
        }
        Ok(Self {
            socket,
            events,
            seen: Vec::new(),
        })
    }

    /// Sends `message`, retrying while the socket is reconnecting: `ViewerSocket` refuses
    /// a send while no socket is open instead of queueing it, and a refused message was
    /// not sent, so trying again is safe.
    pub async fn send(&self, message: Value) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.socket.send_message(message.clone()).await {
                Ok(()) => return Ok(()),
                Err(switchboard_client::ApiError::WebSocket(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a prompt; returns its uuid.
    pub async fn prompt(&self, text: &str) -> anyhow::Result<String> {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.send(switchboard_client::viewer::user_message(&uuid, text))
            .await?;
        Ok(uuid)
    }

    /// Sends a control request; returns its id.
    pub async fn control(&self, request: Value) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(switchboard_client::viewer::control_request(&id, request))
            .await?;
        Ok(id)
    }

    /// Answers a permission request.
    pub async fn answer(&self, request_id: &str, decision: Value) -> anyhow::Result<()> {
        self.send(switchboard_client::viewer::control_response(
            request_id, decision,
        ))
        .await
    }

    /// Waits for the next message that satisfies `accept`, keeping every message seen.
    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match event {
                Ok(Some(ViewerEvent::Message(message))) => {
                    self.seen.push(message.clone());
                    if accept(&message) {
                        return Ok(message);
                    }
                }
                Ok(Some(ViewerEvent::Closed { code, reason })) => {
                    anyhow::bail!("the viewer closed ({code:?}: {reason}) while waiting for {what}")
                }
                Ok(Some(_)) => {}
                Ok(None) => anyhow::bail!("the viewer ended while waiting for {what}"),
                Err(_) => anyhow::bail!(
                    "no {what} within {timeout:?}; the viewer saw:\n{}",
                    self.seen.iter().map(summary).collect::<Vec<_>>().join("\n")
                ),
            }
        }
    }
}

/// One line about a message, for failure reports.
pub fn summary(message: &Value) -> String {
    let text = message.to_string();
    let cut: String = text.chars().take(240).collect();
    cut
}

/// The text of an assistant message.
pub fn assistant_text(message: &Value) -> String {
    message["message"]["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

fn is_type(message: &Value, kind: &str) -> bool {
    message["type"] == kind
}

fn is_result(message: &Value) -> bool {
    is_type(message, "result")
}

fn is_permission_request(message: &Value) -> bool {
    is_type(message, "control_request") && message["request"]["subtype"] == "can_use_tool"
}

/// What the scenario expects of the agent's replies.
pub struct Expect {
    /// A piece of the reply to "hello".
    pub hello_reply: &'static str,
    /// How long any one step may take.
    pub step: Duration,
}

/// The scenario every agent mode and plane must pass, driven by a viewer of the
/// session. `workdir` is where the agent runs (the tool creates its file there).
/// Returns the uuid of the prompt that was interrupted, for [`check_history`].
pub async fn scenario(
    viewer: &mut Viewer,
    workdir: &Path,
    expect: &Expect,
) -> anyhow::Result<String> {
    let step = expect.step;
    let marker = workdir.join(TOOL_FILE);

    // A prompt reaches the agent and its reply reaches the viewer.
    viewer.prompt("hello").await?;
    let hello = viewer
        .expect("the assistant's reply", step, |m| {
            is_type(m, "assistant") && assistant_text(m).contains(expect.hello_reply)
        })
        .await?;
    assert!(assistant_text(&hello).contains(expect.hello_reply));
    viewer.expect("the first result", step, is_result).await?;

    // A tool call asks for permission; allowed, the tool really runs.
    viewer.prompt("please USE_TOOL").await?;
    let request = viewer
        .expect("a permission request", step, is_permission_request)
        .await?;
    assert_eq!(request["request"]["tool_name"], "Bash", "{request}");
    let request_id = request["request_id"]
        .as_str()
        .context("request_id")?
        .to_owned();
    viewer
        .answer(
            &request_id,
            switchboard_client::viewer::allow_decision(request["request"]["input"].clone()),
        )
        .await?;
    viewer
        .expect("the allowed turn's result", step, is_result)
        .await?;
    anyhow::ensure!(
        marker.exists(),
        "the allowed tool did not run: {} is missing",
        marker.display()
    );
    std::fs::remove_file(&marker)?;

    // Denied, it does not run.
    viewer.prompt("please USE_TOOL once more").await?;
    let request = viewer
        .expect("a second permission request", step, is_permission_request)
        .await?;
    let request_id = request["request_id"]
        .as_str()
        .context("request_id")?
        .to_owned();
    viewer
        .answer(
            &request_id,
            switchboard_client::viewer::deny_decision("Not this time."),
        )
        .await?;
    let denied = viewer
        .expect("the denied turn's result", step, is_result)
        .await?;
    anyhow::ensure!(!marker.exists(), "the denied tool ran anyway");
    assert!(
        denied["permission_denials"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "the result lists the denial: {denied}"
    );

    // An interrupt stops a turn.
    let slow_uuid = viewer.prompt("please SLOW_REPLY").await?;
    viewer
        .expect("the slow turn's start", step, |m| {
            is_type(m, "system") && m["subtype"] == "init"
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let interrupt_id = viewer.control(json!({"subtype": "interrupt"})).await?;
    viewer
        .expect("the interrupt's answer", step, |m| {
            is_type(m, "control_response") && m["response"]["request_id"] == interrupt_id.as_str()
        })
        .await?;
    let interrupted = viewer
        .expect("the interrupted result", step, is_result)
        .await?;
    assert_eq!(interrupted["is_error"], true, "{interrupted}");

    // The session ends cleanly.
    viewer.control(json!({"subtype": "end_session"})).await?;

    Ok(slow_uuid)
}

/// Runs `switchboard ARGS --data-dir DATA` at the server and returns its stdout.
pub async fn at_server(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = switchboard()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "switchboard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `switchboard policy add ARGS` at the server; returns the new rule's id.
pub async fn add_rule(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["policy", "add"];
    all.extend_from_slice(args);
    let out = at_server(data, &all).await?;
    out.trim()
        .strip_prefix("Added ")
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("unexpected output: {out}"))
}

/// The approval policy's story, driven by a viewer that never answers, for an agent
/// whose session started with the rule `allow` (`Bash` `touch TOOL_FILE`) in place:
/// that rule answers a permission request and the tool runs; a `deny` rule put first
/// refuses it; with no rules and a 1 s timeout, the default (deny) answers; and the
/// audit log names the rule behind each answer. Returns the deny rule's id. `workdir` is
/// where the agent runs.
pub async fn policy_story(
    viewer: &mut Viewer,
    data: &Path,
    workdir: &Path,
    session_id: &str,
    allow: &str,
    step: Duration,
) -> anyhow::Result<String> {
    let marker = workdir.join(TOOL_FILE);

    // Allow: the tool runs with nobody answering.
    viewer.prompt("please USE_TOOL").await?;
    let request = viewer
        .expect("a permission request", step, is_permission_request)
        .await?;
    let answer = viewer
        .expect("the rule's answer", step, |m| {
            m["type"] == "control_response" && m["response"]["request_id"] == request["request_id"]
        })
        .await?;
    assert_eq!(
        answer["response"]["response"]["behavior"], "allow",
        "{answer}"
    );
    viewer
        .expect("the allowed turn's result", step, is_result)
        .await?;
    anyhow::ensure!(marker.exists(), "the allowed tool did not run");
    std::fs::remove_file(&marker)?;

    // Deny: a rule put first refuses it; the tool does not run.
    let deny = add_rule(data, &["Bash", "deny", "--pattern", "touch", "--first"]).await?;
    viewer.prompt("please USE_TOOL again").await?;
    let denied = viewer
        .expect("the denied turn's result", step, is_result)
        .await?;
    anyhow::ensure!(!marker.exists(), "the denied tool ran");
    assert!(
        denied["permission_denials"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{denied}"
    );

    // Timeout: without rules, with a 1 s timeout, the request waits for a person, then
    // gets the default (deny, since the default is to ask).
    at_server(data, &["policy", "remove", &deny]).await?;
    at_server(data, &["policy", "remove", allow]).await?;
    at_server(data, &["policy", "default", "ask", "--timeout", "1"]).await?;
    viewer.prompt("please USE_TOOL a third time").await?;
    viewer
        .expect("a permission request", step, is_permission_request)
        .await?;
    let timed_out = viewer
        .expect("the timed-out turn's result", step, is_result)
        .await?;
    anyhow::ensure!(!marker.exists(), "the tool ran without an answer");
    assert!(
        timed_out["permission_denials"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{timed_out}"
    );

    // The audit log, from the command line: each answer and the rule that gave it,
    // newest first.
    let log = at_server(data, &["audit", "--json", "--session", session_id]).await?;
    let entries: Vec<Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let rules: Vec<&str> = entries
        .iter()
        .filter(|e| e["action"] == "permission.answer")
        .filter_map(|e| e["detail"]["rule"].as_str())
        .collect();
    assert_eq!(rules, ["timeout", deny.as_str(), allow], "{log}");
    Ok(deny)
}

/// After the scenario: waits for the bridge to see the agent end, then checks the
/// session's history and that the bridge archived the session.
pub async fn check_end(
    served: &Served,
    bridge: &mut Bridge,
    session_id: &str,
    slow_uuid: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let body = session_id.trim_start_matches("session_");
    let ended = bridge
        .wait_for(&format!("session_{body}: the agent "), timeout)
        .await?;
    assert!(
        ended.contains("finished") || ended.contains("exited with status 1"),
        "the agent ended cleanly (the official CLI exits 1 when its last turn was \
         interrupted): {ended}"
    );
    let sessions = served.sessions();
    let history = sessions
        .history(
            session_id,
            HistoryQuery {
                limit: Some(1000),
                ..HistoryQuery::default()
            },
        )
        .await?;
    assert!(!history.has_more);
    check_history(&history.data, slow_uuid)?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let session = sessions.get_session(session_id).await?;
        if session.session_status == "archived" {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the bridge did not archive the session: {session:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A test of one history entry.
type Matcher<'a> = Box<dyn Fn(&Value) -> bool + 'a>;

/// The history holds every step, in order, with increasing sequence numbers.
pub fn check_history(history: &[Value], slow_uuid: &str) -> anyhow::Result<()> {
    let listing = || history.iter().map(summary).collect::<Vec<_>>().join("\n");
    let sequence: Vec<u64> = history
        .iter()
        .filter_map(|m| m["sequence_num"].as_u64())
        .collect();
    anyhow::ensure!(
        sequence.len() == history.len() && sequence.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers are not strictly increasing: {sequence:?}"
    );
    let user_text = |m: &Value, text: &str| {
        is_type(m, "user")
            && (m["message"]["content"] == text
                || m["message"]["content"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|b| b["text"] == text)))
    };
    let steps: Vec<(&str, Matcher<'_>)> = vec![
        ("the hello prompt", Box::new(|m| user_text(m, "hello"))),
        ("a reply", Box::new(|m| is_type(m, "assistant"))),
        ("a result", Box::new(is_result)),
        (
            "the tool prompt",
            Box::new(|m| user_text(m, "please USE_TOOL")),
        ),
        ("the permission request", Box::new(is_permission_request)),
        (
            "the allow",
            Box::new(|m| {
                is_type(m, "control_response") && m["response"]["response"]["behavior"] == "allow"
            }),
        ),
        (
            "the tool's result",
            Box::new(|m| {
                is_type(m, "user")
                    && m["message"]["content"]
                        .as_array()
                        .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
            }),
        ),
        ("a result", Box::new(is_result)),
        (
            "the second tool prompt",
            Box::new(|m| user_text(m, "please USE_TOOL once more")),
        ),
        (
            "the second permission request",
            Box::new(is_permission_request),
        ),
        (
            "the deny",
            Box::new(|m| {
                is_type(m, "control_response") && m["response"]["response"]["behavior"] == "deny"
            }),
        ),
        ("a result", Box::new(is_result)),
        (
            "the slow prompt",
            Box::new(move |m| is_type(m, "user") && m["uuid"] == slow_uuid),
        ),
        (
            "the interrupt",
            Box::new(|m| is_type(m, "control_request") && m["request"]["subtype"] == "interrupt"),
        ),
        (
            "the interrupted result",
            Box::new(|m| is_result(m) && m["is_error"] == true),
        ),
        (
            "the end",
            Box::new(|m| is_type(m, "control_request") && m["request"]["subtype"] == "end_session"),
        ),
    ];
    let mut at = 0;
    for (what, matches) in &steps {
        match history[at..].iter().position(matches) {
            Some(offset) => at += offset + 1,
            None => anyhow::bail!(
                "the history lacks {what} after position {at}:\n{}",
                listing()
            ),
        }
    }
    Ok(())
}
