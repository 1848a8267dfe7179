//! `switchboard attach` and `switchboard sessions` as a person meets them: a real
//! `switchboard serve` process, a worker speaking the ingress protocol through
//! switchboard-client, and the viewer driven under a pseudo-terminal by typing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rexpect::process::WaitStatus;
use rexpect::session::PtySession;
use serde_json::{json, Value};
use switchboard_client::{BridgeApiClient, IngressConfig, IngressTransport, SessionsClient};
use switchboard_proto::environments::{RegisterEnvironmentRequest, WorkSecret};
use switchboard_proto::sessions::CreateSessionRequest;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// How long one expected piece of output may take to appear.
const EXPECT_TIMEOUT_MS: u64 = 20_000;

fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_LISTEN")
        .env_remove("SWITCHBOARD_URL")
        .env_remove("SWITCHBOARD_TOKEN")
        .kill_on_drop(true);
    command
}

/// A `switchboard serve` process on an ephemeral port, with an API key.
struct Served {
    _child: Child,
    url: String,
    key: String,
}

async fn serve(data_dir: &Path) -> anyhow::Result<Served> {
    let out = switchboard()
        .args(["token", "create", "--name", "attach-test", "--data-dir"])
        .arg(data_dir)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "token create failed");
    let key = String::from_utf8(out.stdout)?.trim().to_owned();
    let mut child = switchboard()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("Switchboard listening on ") {
                let url = rest.split_whitespace().next().unwrap_or_default();
                return Ok::<_, anyhow::Error>(url.to_owned());
            }
        }
        anyhow::bail!("serve exited before listening")
    })
    .await??;
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Served {
        _child: child,
        url,
        key,
    })
}

/// A worker attached to a new session: what `claude remote-control` would be.
struct Worker {
    session_id: String,
    transport: IngressTransport,
    inbound: mpsc::Receiver<Value>,
}

async fn worker(served: &Served) -> anyhow::Result<Worker> {
    let bridge = BridgeApiClient::new(&served.url, served.key.clone());
    let env = bridge
        .register_environment(&RegisterEnvironmentRequest {
            machine_name: "test-host".into(),
            directory: "/work/project".into(),
            branch: "main".into(),
            git_repo_url: None,
            max_sessions: 1,
            metadata: json!({"worker_type": "claude_code"}),
            environment_id: None,
        })
        .await?;
    let session = SessionsClient::new(&served.url, served.key.clone())
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            title: Some("Attach test".into()),
            ..Default::default()
        })
        .await?;
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, Some(5_000))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no work after creating a session"))?;
    let secret = WorkSecret::decode(&work.secret)?;
    let config = IngressConfig::new(&served.url, &work.data.id, secret.session_ingress_token);
    let (transport, inbound) = IngressTransport::connect(config).await?;
    Ok(Worker {
        session_id: session.id,
        transport,
        inbound,
    })
}

/// The next message the worker receives.
async fn received(inbound: &mut mpsc::Receiver<Value>) -> anyhow::Result<Value> {
    tokio::time::timeout(Duration::from_secs(10), inbound.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the worker received nothing"))?
        .ok_or_else(|| anyhow::anyhow!("the worker's stream ended"))
}

fn attach(served: &Served, session_id: &str) -> anyhow::Result<PtySession> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["attach", session_id])
        .env("SWITCHBOARD_URL", &served.url)
        .env("SWITCHBOARD_TOKEN", &served.key)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "warn");
    Ok(rexpect::session::spawn_command(
        command,
        Some(EXPECT_TIMEOUT_MS),
    )?)
}

fn can_use_tool(request_id: &str, command: &str) -> Value {
    json!({
        "type": "control_request",
        "request_id": request_id,
        "request": {"subtype": "can_use_tool", "tool_name": "Bash",
                    "input": {"command": command}, "tool_use_id": format!("toolu_{request_id}"),
                    "description": "Run the test suite"},
    })
}

#[test]
fn a_person_prompts_allows_denies_and_interrupts_through_attach() -> anyhow::Result<()> {
    // Arrange: a server process, a worker on a new session, and `attach` in a terminal.
    let runtime = Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let served = runtime.block_on(serve(dir.path()))?;
    let mut worker = runtime.block_on(worker(&served))?;
    let mut term = attach(&served, &worker.session_id)?;
    term.exp_string("Attached to Attach test")?;
    term.exp_string("/quit or Ctrl-D leaves")?;

    // A typed prompt reaches the worker.
    term.send_line("please run the tests")?;
    let prompt = runtime.block_on(received(&mut worker.inbound))?;
    assert_eq!(prompt["type"], "user");
    assert_eq!(prompt["message"]["content"], "please run the tests");

    // The transcript shows what the worker writes.
    runtime.block_on(worker.transport.write(vec![json!({
        "type": "assistant", "uuid": "a1",
        "message": {"role": "assistant", "content": [
            {"type": "text", "text": "Running the tests now."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "npm test"}},
        ]},
    })]))?;
    term.exp_string("Running the tests now.")?;
    // rexpect reads bytes as Latin-1, so only ASCII is matched (the line starts with "●").
    term.exp_string("Bash(npm test)")?;

    // A permission request is shown and `y` allows it with the request's input.
    runtime.block_on(
        worker
            .transport
            .write(vec![can_use_tool("perm-1", "npm test")]),
    )?;
    term.exp_string("Permission needed to use Bash")?;
    term.exp_string("Run the test suite")?;
    term.exp_string("$ npm test")?;
    term.exp_string("Allow? [y]es / [n]o (then a reason)")?;
    term.send_line("y")?;
    let answer = runtime.block_on(received(&mut worker.inbound))?;
    assert_eq!(answer["type"], "control_response");
    assert_eq!(answer["response"]["request_id"], "perm-1");
    assert_eq!(answer["response"]["response"]["behavior"], "allow");
    assert_eq!(
        answer["response"]["response"]["updatedInput"],
        json!({"command": "npm test"})
    );

    // `n` asks for a reason, which goes to the worker with the denial.
    runtime.block_on(
        worker
            .transport
            .write(vec![can_use_tool("perm-2", "rm -rf build")]),
    )?;
    term.exp_string("$ rm -rf build")?;
    term.exp_string("Allow?")?;
    term.send_line("n")?;
    term.exp_string("Reason for the model")?;
    term.send_line("too risky")?;
    let denial = runtime.block_on(received(&mut worker.inbound))?;
    assert_eq!(denial["response"]["request_id"], "perm-2");
    assert_eq!(denial["response"]["response"]["behavior"], "deny");
    assert_eq!(denial["response"]["response"]["message"], "too risky");

    // A request answered elsewhere is dismissed.
    runtime.block_on(worker.transport.write(vec![
        can_use_tool("perm-3", "make"),
        json!({"type": "control_cancel_request", "request_id": "perm-3"}),
    ]))?;
    term.exp_string("answered elsewhere; prompt dismissed")?;

    // Turn results show their duration and cost.
    runtime.block_on(worker.transport.write(vec![json!({
        "type": "result", "subtype": "success", "is_error": false,
        "duration_ms": 4200, "total_cost_usd": 0.0321, "uuid": "r1",
    })]))?;
    term.exp_string("turn done (4.2s, $0.0321)")?;

    // Ctrl-C interrupts the turn; a second one within 2 s leaves.
    term.send_control('c')?;
    term.exp_string("interrupt sent")?;
    let interrupt = runtime.block_on(received(&mut worker.inbound))?;
    assert_eq!(interrupt["type"], "control_request");
    assert_eq!(interrupt["request"]["subtype"], "interrupt");
    term.send_control('c')?;
    let rest = term.exp_eof()?;
    let status = term.process().wait()?;

    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "{status:?}: {rest}"
    );
    Ok(())
}

#[test]
fn a_request_pending_before_attaching_is_asked_and_quit_leaves() -> anyhow::Result<()> {
    let runtime = Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let served = runtime.block_on(serve(dir.path()))?;
    let mut worker = runtime.block_on(worker(&served))?;
    runtime.block_on(worker.transport.write(vec![
        json!({"type": "result", "subtype": "error_max_turns", "is_error": true,
               "duration_ms": 1000, "uuid": "r0"}),
        can_use_tool("early", "cargo build"),
    ]))?;
    let mut term = attach(&served, &worker.session_id)?;

    // The history is shown on attach, in color, and the open request is asked about.
    let before = term.exp_string("turn ended with error_max_turns")?;
    term.exp_string("$ cargo build")?;
    term.exp_string("Allow?")?;
    term.send_line("n, not on this machine")?;
    let denial = runtime.block_on(received(&mut worker.inbound))?;
    term.send_line("/quit")?;
    term.exp_eof()?;

    assert!(before.contains("\x1b["), "colored output: {before:?}");
    assert_eq!(denial["response"]["request_id"], "early");
    assert_eq!(
        denial["response"]["response"]["message"],
        "not on this machine"
    );
    let nothing = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(300), worker.inbound.recv()).await
    });
    assert!(nothing.is_err(), "/quit is not sent as a prompt");
    Ok(())
}

#[tokio::test]
async fn a_missing_or_refused_key_is_one_line_and_a_failure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let served = serve(dir.path()).await?;

    let missing = switchboard()
        .args(["attach", "session_abc", "--url", &served.url])
        .output()
        .await?;
    let refused = switchboard()
        .args(["sessions", "--url", &served.url, "--token", "sk-wrong"])
        .output()
        .await?;
    let refused_attach = switchboard()
        .args(["attach", "session_abc", "--url", &served.url])
        .env("SWITCHBOARD_TOKEN", "sk-wrong")
        .output()
        .await?;

    for (out, expected) in [
        (
            &missing,
            "no API key: set SWITCHBOARD_TOKEN or pass --token-file",
        ),
        (&refused, "refused the API key"),
        (&refused_attach, "refused the API key"),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn sessions_lists_titles_ids_and_states() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let served = serve(dir.path()).await?;
    let worker = worker(&served).await?;
    let offline = SessionsClient::new(&served.url, served.key.clone())
        .create_session(&CreateSessionRequest {
            title: Some("Nobody home".into()),
            ..Default::default()
        })
        .await?;

    let out = switchboard()
        .args(["sessions"])
        .env("SWITCHBOARD_URL", &served.url)
        .env("SWITCHBOARD_TOKEN", &served.key)
        .output()
        .await?;

    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("STATE"), "{stdout}");
    let row = |id: &str| lines.iter().find(|l| l.contains(id)).copied().unwrap_or("");
    let attached = row(&worker.session_id);
    assert!(
        attached.starts_with("idle") || attached.starts_with("running"),
        "{stdout}"
    );
    assert!(attached.ends_with("Attach test"), "{stdout}");
    let without_worker = row(&offline.id);
    assert!(without_worker.starts_with("worker offline"), "{stdout}");
    assert!(without_worker.contains("just now"), "{stdout}");
    Ok(())
}
