//! `switchboard bridge` with the project's scripted fake agent: both agent modes on both
//! data planes, token rotation, capacity, worktrees, timeouts, shutdown, and the one-line
//! answers to bad input. The same scenario runs against the official CLI in
//! `real_cli.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::{check_end, scenario, testkit_bin, Bridge, Expect, Served, Viewer, TOOL_FILE};
use switchboard_client::BridgeApiClient;
use switchboard_proto::sessions::CreateSessionRequest;

/// How long one step of a fake-agent test may take.
const STEP: Duration = Duration::from_secs(20);

const EXPECT: Expect = Expect {
    hello_reply: "Fake agent heard: hello",
    step: STEP,
};

/// The records of the fake agent's log (`FAKE_AGENT_LOG`).
fn agent_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn starts(log: &[Value]) -> Vec<&Value> {
    log.iter().filter(|r| r["event"] == "start").collect()
}

/// Runs the whole scenario through a bridge started with `args`; returns the agent's log.
async fn full_scenario(args: &[&str]) -> anyhow::Result<Vec<Value>> {
    Ok(full_scenario_with(args, &[]).await?.0)
}

/// [`full_scenario`] with extra environment variables for the bridge (and so its
/// agents); returns the agent's log and what the bridge printed.
async fn full_scenario_with(
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Vec<Value>, String)> {
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("agent.log");
    let mut command = served.bridge(workdir.path());
    command.args(args).env("FAKE_AGENT_LOG", &log);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    let mut viewer = Viewer::connect(&served, &session_id).await?;

    let slow = scenario(&mut viewer, workdir.path(), &EXPECT).await?;
    check_end(&served, &mut bridge, &session_id, &slow, STEP).await?;

    let status = bridge.terminate(STEP).await?;
    assert!(status.success(), "{status}: {}", bridge.output());
    assert!(
        bridge.output().contains("Environment deregistered"),
        "{}",
        bridge.output()
    );
    Ok((agent_log(&log), bridge.output()))
}

fn fake_agent() -> anyhow::Result<String> {
    Ok(testkit_bin("fake-agent")?.display().to_string())
}

#[tokio::test]
async fn a_native_agent_runs_a_session_on_the_v1_plane() -> anyhow::Result<()> {
    let agent = fake_agent()?;
    // No --agent: the bridge asks the program (version 2.1.112, accepting --sdk-url) and
    // picks native mode, saying so.
    let (log, output) = full_scenario_with(&["--plane", "v1", "--claude", &agent], &[]).await?;
    let mode = output
        .lines()
        .find(|l| l.contains("agent mode:"))
        .unwrap_or_default();
    assert!(mode.contains("Claude Code 2.1.112"), "{output}");
    assert!(mode.contains("accepts --sdk-url"), "{output}");
    assert!(mode.contains("natively"), "{output}");

    let start = starts(&log)[0];
    let argv: Vec<&str> = start["argv"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(argv[0], "--print", "{start}");
    assert!(
        argv[2].starts_with("ws://127.0.0.1:") && argv[2].contains("/v2/session_ingress/ws/cse_"),
        "{start}"
    );
    assert!(argv.contains(&"--replay-user-messages"), "{start}");
    let env = &start["env"];
    assert!(
        env["CLAUDE_CODE_SESSION_ACCESS_TOKEN"]
            .as_str()
            .is_some_and(|t| t.starts_with("sbi_")),
        "{start}"
    );
    assert_eq!(env["CLAUDE_CODE_ENVIRONMENT_KIND"], "bridge");
    assert_eq!(env["CLAUDE_CODE_POST_FOR_SESSION_INGRESS_V2"], "1");
    assert_eq!(env["CLAUDE_CODE_USE_CCR_V2"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn a_native_agent_runs_a_session_on_the_v2_plane() -> anyhow::Result<()> {
    let agent = fake_agent()?;
    let log = full_scenario(&["--plane", "v2", "--claude", &agent]).await?;

    let start = starts(&log)[0];
    assert!(
        start["argv"][2].as_str().is_some_and(
            |u| u.starts_with("http://127.0.0.1:") && u.contains("/v1/code/sessions/cse_")
        ),
        "{start}"
    );
    assert_eq!(start["env"]["CLAUDE_CODE_USE_CCR_V2"], "1");
    assert!(
        start["env"]["CLAUDE_CODE_WORKER_EPOCH"]
            .as_str()
            .is_some_and(|e| e.parse::<u64>().is_ok_and(|e| e >= 1)),
        "{start}"
    );
    Ok(())
}

/// A Claude Code that refuses `--sdk-url` for this server, as 2.1.113 and newer do.
const REFUSING_CLAUDE: &[(&str, &str)] = &[
    ("FAKE_AGENT_VERSION", "2.1.332 (Claude Code)"),
    ("FAKE_AGENT_REFUSE_SDK_URL", "1"),
];

#[tokio::test]
async fn a_client_that_refuses_the_server_is_relayed_on_the_v1_plane() -> anyhow::Result<()> {
    let agent = fake_agent()?;
    let (log, output) = full_scenario_with(
        &[
            "--plane",
            "v1",
            "--claude",
            &agent,
            "--claude-arg",
            "--extra",
        ],
        REFUSING_CLAUDE,
    )
    .await?;
    let mode = output
        .lines()
        .find(|l| l.contains("agent mode:"))
        .unwrap_or_default();
    assert!(mode.contains("Claude Code 2.1.332"), "{output}");
    assert!(
        mode.contains("is not an approved Anthropic endpoint"),
        "the client's own reason: {output}"
    );
    assert!(mode.contains("relays its stream-json"), "{output}");
    let starts = starts(&log);
    assert_eq!(starts.len(), 1, "the dry runs start no agent: {log:?}");
    assert_eq!(
        starts[0]["argv"],
        json!([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-prompt-tool",
            "stdio",
            "--extra"
        ]),
        "Claude Code in print mode, with the --claude-arg"
    );
    assert_eq!(starts[0]["env"], json!({}), "and no session credentials");
    Ok(())
}

#[tokio::test]
async fn a_client_that_refuses_the_server_is_relayed_on_the_v2_plane() -> anyhow::Result<()> {
    let agent = fake_agent()?;
    let (log, output) =
        full_scenario_with(&["--plane", "v2", "--claude", &agent], REFUSING_CLAUDE).await?;
    assert!(output.contains("relays its stream-json"), "{output}");
    assert_eq!(starts(&log)[0]["argv"][0], "-p");
    Ok(())
}

#[tokio::test]
async fn agent_claude_forces_native_mode_even_for_a_refusing_client() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("agent.log");
    let mut command = served.bridge(workdir.path());
    command
        .args(["--agent", "claude", "--claude", &fake_agent()?])
        .env("FAKE_AGENT_LOG", &log);
    for (name, value) in REFUSING_CLAUDE {
        command.env(name, value);
    }
    let mut bridge = Bridge::spawn(command)?;
    bridge.wait_for("agent mode:", STEP).await?;
    assert!(
        bridge.output().contains("as --agent claude asks"),
        "{}",
        bridge.output()
    );
    // The forced child is refused, as the real one would be, and the bridge says so.
    let session = bridge.session_id().await?;
    let line = bridge
        .wait_for(&format!("{session}: the agent exited"), STEP)
        .await?;
    assert!(
        line.contains("not an approved Anthropic endpoint"),
        "{line}"
    );
    assert!(
        line.contains("--agent stream-json"),
        "what works instead: {line}"
    );
    bridge.terminate(STEP).await?;
    Ok(())
}

#[tokio::test]
async fn links_use_the_servers_public_url() -> anyhow::Result<()> {
    let public = "http://phone.example:4321";
    let served = Served::start_with(&["--public-url", "http://phone.example:4321/"]).await?;
    let workdir = tempfile::tempdir()?;
    let mut command = served.bridge(workdir.path());
    command.args(["--claude", &fake_agent()?]);
    let mut bridge = Bridge::spawn(command)?;
    let session = bridge.session_id().await?;
    let link = bridge.wait_for("session link:", STEP).await?;
    assert!(
        link.ends_with(&format!("session link: {public}/s/{session}")),
        "{link}"
    );
    let sign_in = bridge.wait_for("sign-in link", STEP).await?;
    assert!(sign_in.contains(&format!("{public}/pair/")), "{sign_in}");
    // A session created elsewhere gets a link of the same kind.
    let environment = bridge.environment_id().await?;
    let other = create_session(&served, &environment).await?;
    let line = bridge.wait_for(&format!("/s/{other}"), STEP).await?;
    assert!(line.contains(&format!("{public}/s/{other}")), "{line}");
    // The bridge itself still talks to the server at its own --url.
    assert!(
        bridge.output().contains(&format!("server {}", served.url)),
        "{}",
        bridge.output()
    );
    bridge.terminate(STEP).await?;
    Ok(())
}

#[tokio::test]
async fn a_stream_json_agent_runs_a_session_on_the_v1_plane() -> anyhow::Result<()> {
    let agent = fake_agent()?;
    let log = full_scenario(&["--plane", "v1", "--agent", "stream-json", "--", &agent]).await?;

    let start = starts(&log)[0];
    assert_eq!(start["argv"], json!([]), "the command runs as given");
    assert_eq!(
        start["env"],
        json!({}),
        "a stream-json agent gets no session credentials"
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_json_agent_runs_a_session_on_the_v2_plane() -> anyhow::Result<()> {
    let agent = fake_agent()?;
    let log = full_scenario(&["--plane", "v2", "--", &agent, "--some-flag"]).await?;

    let start = starts(&log)[0];
    assert_eq!(start["argv"], json!(["--some-flag"]));
    Ok(())
}

/// Sends `text` and waits for the fake agent's answer.
async fn ask(viewer: &mut Viewer, text: &str) -> anyhow::Result<()> {
    viewer.prompt(text).await?;
    let expected = format!("Fake agent heard: {text}");
    viewer
        .expect("the agent's answer", STEP, |m| {
            m["type"] == "assistant" && support::assistant_text(m) == expected
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_running_native_session_gets_its_new_token_on_stdin() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let log = workdir.path().join("agent.log");
    let mut command = served.bridge(workdir.path());
    command
        .args(["--claude", &fake_agent()?])
        .env("FAKE_AGENT_LOG", &log);
    let mut bridge = Bridge::spawn(command)?;
    let environment = bridge.environment_id().await?;
    let session_id = bridge.session_id().await?;
    let mut viewer = Viewer::connect(&served, &session_id).await?;
    ask(&mut viewer, "before").await?;
    let first = starts(&agent_log(&log))[0]["env"]["CLAUDE_CODE_SESSION_ACCESS_TOKEN"].clone();

    // The server re-dispatches the session with a fresh token, as it does to rotate one.
    BridgeApiClient::new(&served.url, served.key.clone())
        .reconnect_session(&environment, &session_id)
        .await?;
    let deadline = tokio::time::Instant::now() + STEP;
    let fresh = loop {
        let update = agent_log(&log)
            .into_iter()
            .find(|r| r["event"] == "token_update");
        if let Some(update) = update {
            break update["token"].clone();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no token update reached the agent; the bridge printed:\n{}",
            bridge.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(fresh, first);
    assert!(fresh.as_str().is_some_and(|t| t.starts_with("sbi_")));
    ask(&mut viewer, "after").await?;
    assert_eq!(starts(&agent_log(&log)).len(), 1, "the agent kept running");

    bridge.terminate(STEP).await?;
    Ok(())
}

/// Runs `switchboard bridge` with `args` to its end; returns its status and stderr.
async fn bridge_fails(served: Option<&Served>, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let mut command = match served {
        Some(served) => served.bridge(dir.path()),
        None => {
            let mut command = support::switchboard();
            command.arg("bridge").current_dir(dir.path());
            command
        }
    };
    let output = tokio::time::timeout(STEP, command.args(args).output()).await??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    ))
}

#[tokio::test]
async fn bad_input_gets_one_line_saying_what_to_do() -> anyhow::Result<()> {
    let agent = fake_agent()?;

    let (ok, stderr) = bridge_fails(
        None,
        &[
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "k",
            "--claude",
            "/nonexistent/claude",
        ],
    )
    .await?;
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot find the Claude Code program"),
        "{stderr}"
    );
    assert!(stderr.contains("--claude"), "{stderr}");

    let (ok, stderr) = bridge_fails(
        None,
        &[
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "k",
            "--",
            "no-such-agent-command",
        ],
    )
    .await?;
    assert!(!ok);
    assert!(stderr.contains("cannot find the agent command"), "{stderr}");

    let (ok, stderr) = bridge_fails(
        None,
        &[
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "k",
            "--claude",
            &agent,
        ],
    )
    .await?;
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach the server at http://127.0.0.1:9"),
        "{stderr}"
    );
    assert!(stderr.contains("switchboard serve"), "{stderr}");

    let served = Served::start().await?;
    let dir = tempfile::tempdir()?;
    let mut command = support::switchboard();
    command.current_dir(dir.path()).args([
        "bridge",
        "--url",
        &served.url,
        "--token",
        "sbk_nope_nope",
        "--claude",
        &agent,
    ]);
    let output = tokio::time::timeout(STEP, command.output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refused the API key"), "{stderr}");
    assert!(stderr.contains("switchboard token create"), "{stderr}");
    Ok(())
}

/// Creates a session on the bridge's environment.
async fn create_session(served: &Served, environment: &str) -> anyhow::Result<String> {
    let request = CreateSessionRequest {
        environment_id: Some(environment.to_owned()),
        ..CreateSessionRequest::default()
    };
    Ok(served.sessions().create_session(&request).await?.id)
}

#[tokio::test]
async fn a_crashing_agent_is_reported_and_the_other_sessions_go_on() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let mut command = served.bridge(workdir.path());
    command.args(["--no-session", "--claude", &fake_agent()?]);
    let mut bridge = Bridge::spawn(command)?;
    let environment = bridge.environment_id().await?;
    let doomed = create_session(&served, &environment).await?;
    let survivor = create_session(&served, &environment).await?;
    let mut doomed_viewer = Viewer::connect(&served, &doomed).await?;
    let mut survivor_viewer = Viewer::connect(&served, &survivor).await?;
    ask(&mut survivor_viewer, "first").await?;

    doomed_viewer.prompt("please CRASH").await?;
    let line = bridge
        .wait_for(&format!("{doomed}: the agent exited"), STEP)
        .await?;
    assert!(line.contains("exited with status 3"), "{line}");
    assert!(
        line.contains("crashing on purpose"),
        "the agent's last words: {line}"
    );
    assert!(line.contains("start a new one"), "what to do: {line}");
    // The session says why it ended, as an error result (which notifies its owner of an
    // error), before it is archived.
    let result = doomed_viewer
        .expect("the agent's failure as an error result", STEP, |m| {
            m["type"] == "result"
                && m["is_error"] == true
                && m["result"]
                    .as_str()
                    .is_some_and(|r| r.contains("exited with status 3"))
        })
        .await?;
    assert_eq!(result["subtype"], "error_during_execution");

    ask(&mut survivor_viewer, "still there?").await?;
    let status = bridge.terminate(STEP).await?;
    assert!(status.success());
    Ok(())
}

#[tokio::test]
async fn new_sessions_wait_for_a_free_slot() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let mut command = served.bridge(workdir.path());
    command.args([
        "--no-session",
        "--max-sessions",
        "1",
        "--at-capacity-poll",
        "1",
        "--claude",
        &fake_agent()?,
    ]);
    let mut bridge = Bridge::spawn(command)?;
    let environment = bridge.environment_id().await?;
    let first = create_session(&served, &environment).await?;
    bridge
        .wait_for(&format!("{first}: new session"), STEP)
        .await?;
    let second = create_session(&served, &environment).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !bridge.output().contains(&format!("{second}: new session")),
        "the second session waits while the only slot is taken:\n{}",
        bridge.output()
    );

    let viewer = Viewer::connect(&served, &first).await?;
    viewer.control(json!({"subtype": "end_session"})).await?;
    bridge
        .wait_for(&format!("{first}: the agent finished"), STEP)
        .await?;
    bridge
        .wait_for(&format!("{second}: new session"), STEP)
        .await?;
    bridge.terminate(STEP).await?;
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn worktree_mode_gives_each_session_its_own_worktree() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let repo = tempfile::tempdir()?;
    let repo_path: PathBuf = repo.path().canonicalize()?;
    git(&repo_path, &["init", "-q"])?;
    git(&repo_path, &["commit", "-q", "--allow-empty", "-m", "init"])?;
    let mut command = served.bridge(&repo_path);
    command.args(["--spawn", "worktree", "--claude", &fake_agent()?]);
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    let body = session_id.trim_start_matches("session_");
    let mut viewer = Viewer::connect(&served, &session_id).await?;

    viewer.prompt("please USE_TOOL").await?;
    let request = viewer
        .expect("a permission request", STEP, |m| {
            m["type"] == "control_request"
        })
        .await?;
    let request_id = request["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    viewer
        .answer(
            &request_id,
            switchboard_client::viewer::allow_decision(json!({})),
        )
        .await?;
    viewer
        .expect("the result", STEP, |m| m["type"] == "result")
        .await?;

    let worktree = repo_path
        .join(".claude/worktrees")
        .join(format!("bridge-{body}"));
    assert!(
        worktree.join(TOOL_FILE).exists(),
        "the agent ran in {}",
        worktree.display()
    );
    assert!(
        !repo_path.join(TOOL_FILE).exists(),
        "and not in the repository itself"
    );
    assert!(git(&repo_path, &["worktree", "list"])?.contains(&format!("bridge-{body}")));

    viewer.control(json!({"subtype": "end_session"})).await?;
    // The worktree has the tool's file, so it is kept, and the bridge says where.
    let kept = bridge
        .wait_for(&format!("{session_id}: kept its worktree"), STEP)
        .await?;
    assert!(kept.contains(&worktree.display().to_string()), "{kept}");
    bridge.terminate(STEP).await?;
    Ok(())
}

#[tokio::test]
async fn a_session_past_its_timeout_is_stopped() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let mut command = served.bridge(workdir.path());
    command.args(["--session-timeout", "2", "--claude", &fake_agent()?]);
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    bridge
        .wait_for(
            &format!("{session_id}: ran longer than the --session-timeout of 2s"),
            STEP,
        )
        .await?;
    bridge.terminate(STEP).await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_agents_archives_the_sessions_and_deregisters() -> anyhow::Result<()> {
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let log = workdir.path().join("agent.log");
    let mut command = served.bridge(workdir.path());
    command
        .args(["--shutdown-grace", "1", "--claude", &fake_agent()?])
        .env("FAKE_AGENT_LOG", &log)
        // An agent that ignores SIGTERM makes the bridge use SIGKILL.
        .env("FAKE_AGENT_IGNORE_SIGTERM", "1");
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    let mut viewer = Viewer::connect(&served, &session_id).await?;
    ask(&mut viewer, "hello").await?;

    let started = tokio::time::Instant::now();
    let status = bridge.terminate(STEP).await?;

    assert!(status.success(), "{status}: {}", bridge.output());
    assert!(started.elapsed() < Duration::from_secs(10));
    let output = bridge.output();
    assert!(
        output.contains(&format!("{session_id}: agent stopped")),
        "{output}"
    );
    assert!(output.contains("Environment deregistered"), "{output}");
    assert!(
        agent_log(&log)
            .iter()
            .any(|r| r["event"] == "sigterm_ignored"),
        "the agent got SIGTERM first"
    );
    let session = served.sessions().get_session(&session_id).await?;
    assert_eq!(session.session_status, "archived");
    Ok(())
}

#[tokio::test]
async fn single_session_mode_starts_with_a_prompt_and_ends_with_its_session() -> anyhow::Result<()>
{
    let served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let mut command = served.bridge(workdir.path());
    command.args([
        "--spawn",
        "single-session",
        "--new",
        "start from the terminal",
        "--agent",
        "stream-json",
        "--",
        &fake_agent()?,
    ]);
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    let session = served.sessions().get_session(&session_id).await?;
    assert_eq!(session.title.as_deref(), Some("start from the terminal"));
    let mut viewer = Viewer::connect(&served, &session_id).await?;
    viewer
        .expect("the answer to the terminal's prompt", STEP, |m| {
            support::assistant_text(m) == "Fake agent heard: start from the terminal"
        })
        .await?;
    ask(&mut viewer, "and from the phone").await?;

    viewer.control(json!({"subtype": "end_session"})).await?;
    let status = bridge.wait(STEP).await?;
    assert!(status.success(), "{status}: {}", bridge.output());
    assert!(bridge.output().contains("Environment deregistered"));
    Ok(())
}

#[test]
fn on_a_terminal_the_bridge_shows_a_qr_code_and_a_live_status_line() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let served = runtime.block_on(Served::start())?;
    let workdir = tempfile::tempdir()?;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .current_dir(workdir.path())
        .args(["bridge", "--url", &served.url, "--token", &served.key])
        .args(["--claude", &fake_agent()?]);
    let mut term = rexpect::session::spawn_command(command, Some(20_000))?;

    // rexpect reads bytes as Latin-1, so only ASCII is matched; the QR code's half
    // blocks come just before the link.
    term.exp_string("Session: http://127.0.0.1:")?;
    term.exp_string("Open the link (or scan the code)")?;
    term.exp_string("starting the agent (v1)")?;
    term.exp_string("1/4 sessions")?;

    term.send_control('c')?;
    term.exp_string("Stopping")?;
    term.exp_string("agent stopped")?;
    term.exp_string("Environment deregistered")?;
    term.exp_eof()?;
    drop(served);
    Ok(())
}

#[tokio::test]
async fn a_lost_server_is_retried_while_the_agents_keep_running() -> anyhow::Result<()> {
    let mut served = Served::start().await?;
    let workdir = tempfile::tempdir()?;
    let log = workdir.path().join("agent.log");
    let mut command = served.bridge(workdir.path());
    command
        .args(["--agent", "stream-json", "--", &fake_agent()?])
        .env("FAKE_AGENT_LOG", &log);
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    bridge.wait_for("starting the agent", STEP).await?;

    served.restart(Duration::from_secs(1)).await?;
    bridge.wait_for("lost the server at", STEP).await?;
    bridge.wait_for("reconnected to", STEP).await?;

    // The same agent still serves the session.
    let mut viewer = Viewer::connect(&served, &session_id).await?;
    ask(&mut viewer, "are you still there?").await?;
    assert_eq!(starts(&agent_log(&log)).len(), 1);
    bridge.terminate(STEP).await?;
    Ok(())
}
