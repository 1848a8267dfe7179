//! `switchboard bridge` with the official Claude Code CLI, end to end, on both data planes
//! and in both agent modes: a viewer's prompt reaches the CLI and its reply reaches the
//! viewer, a tool call raises a permission request that the viewer allows (the tool
//! runs) and then denies (it does not), an interrupt stops a turn, and the session ends
//! with its history complete and in order.
//!
//! Two releases of the `@anthropic-ai/claude-code` package are pinned:
//!
//! - `tests/claude`: 2.1.112, the last one that accepts `--sdk-url` for any host, so the
//!   bridge's default (`--agent auto`) runs it natively; it also runs in stream-json mode
//!   on request. Install it with `npm ci --prefix crates/switchboard-cli/tests/claude`,
//!   or name another `claude` program with `SWITCHBOARD_TEST_CLAUDE`.
//! - `tests/claude-current`: today's release (a native binary), which refuses `--sdk-url`
//!   for every host but Anthropic's, so `--agent auto` relays its stream-json. Install it
//!   with `npm ci --prefix crates/switchboard-cli/tests/claude-current`, or name another
//!   program with `SWITCHBOARD_TEST_CLAUDE_CURRENT`.
//!
//! The model is the project's fake Messages API (`switchboard_testkit::fake_anthropic`).
//!
//! Nothing the CLI does may leave the machine: each test runs itself again inside a fresh
//! network namespace that has only a loopback interface (`unshare -n`), where the server,
//! the fake model, the bridge and the CLI all run, and the CLI runs with a scratch `HOME`,
//! `DISABLE_TELEMETRY=1` and `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`.
//!
//! These tests need the packages, node (for 2.1.112), `unshare` and `ip`. With `SWITCHBOARD_REAL_CLI=1`
//! (set by `scripts/test`, and so in CI) a missing piece fails the test with a message
//! saying what to install; without it the tests say they were skipped and pass.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use support::{check_end, scenario, Bridge, Expect, Served, Viewer};
use switchboard_testkit::fake_anthropic::{FakeAnthropic, HELLO_REPLY};

/// Set to 1 to make these tests mandatory.
const REQUIRED: &str = "SWITCHBOARD_REAL_CLI";

/// A `claude` program to test instead of the pinned 2.1.112.
const CLAUDE: &str = "SWITCHBOARD_TEST_CLAUDE";

/// A `claude` program to test instead of the pinned current release.
const CLAUDE_CURRENT: &str = "SWITCHBOARD_TEST_CLAUDE_CURRENT";

/// Set in the copy of the test that runs inside the network namespace.
const IN_NETNS: &str = "SWITCHBOARD_TEST_IN_NETNS";

/// How long one step may take: the CLI starts slowly (a 10 MB script on node).
const STEP: Duration = Duration::from_secs(90);

/// How long a whole test may take inside its namespace.
const WHOLE_TEST: Duration = Duration::from_secs(300);

/// Variables of the caller's own Claude Code setup that must not reach the CLI under test.
const CALLER_SETTINGS: &[&str] = &[
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDE_CONFIG_DIR",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
];

/// Which pinned release a test runs.
#[derive(Clone, Copy)]
enum Release {
    /// 2.1.112, in `tests/claude`.
    Pinned,
    /// Today's, in `tests/claude-current`.
    Current,
}

impl Release {
    /// The package directory under `tests/`, and the variable that overrides it.
    fn package(self) -> (&'static str, &'static str) {
        match self {
            Self::Pinned => ("claude", CLAUDE),
            Self::Current => ("claude-current", CLAUDE_CURRENT),
        }
    }
}

fn claude_program(release: Release) -> Option<PathBuf> {
    let (dir, variable) = release.package();
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        return path.exists().then_some(path);
    }
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir)
        .join("node_modules/.bin/claude");
    pinned.exists().then_some(pinned)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// What is missing to run these tests, if anything.
fn missing(release: Release) -> Option<String> {
    if claude_program(release).is_none() {
        let (dir, variable) = release.package();
        return Some(format!(
            "the official Claude Code CLI is not installed: run `npm ci --prefix \
             crates/switchboard-cli/tests/{dir}` (or set {variable} to an existing claude \
             program)"
        ));
    }
    if matches!(release, Release::Pinned) && !on_path("node") {
        return Some("node is not on PATH; install Node.js 18 or newer".into());
    }
    for tool in ["unshare", "ip"] {
        if !on_path(tool) {
            return Some(format!(
                "`{tool}` is not on PATH; install util-linux and iproute2, which isolate the \
                 CLI in a loopback-only network namespace"
            ));
        }
    }
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The network interfaces of this process's network namespace (`/proc/net/dev` follows
/// the namespace; `/sys/class/net` follows the mount namespace, so it would not).
fn interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/net/dev")
        .map(|table| {
            table
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `body` inside a loopback-only network namespace: either this process already is
/// the copy running there, or it starts that copy and reports its result.
fn in_isolation<F, Fut>(test: &str, release: Release, body: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if std::env::var(IN_NETNS).as_deref() == Ok("1") {
        let interfaces = interfaces();
        anyhow::ensure!(
            interfaces == ["lo"],
            "refusing to run the official CLI with network interfaces {interfaces:?}; only \
             loopback may be there"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            tokio::time::timeout(WHOLE_TEST, body())
                .await
                .context("the test took too long")?
        });
    }
    if let Some(missing) = missing(release) {
        if std::env::var(REQUIRED).as_deref() == Ok("1") {
            anyhow::bail!("cannot run the real-CLI test {test}: {missing}");
        }
        println!("skipped {test}: {missing} (set {REQUIRED}=1 to make this a failure)");
        return Ok(());
    }
    // Root can make a network namespace directly; anyone else needs a user namespace.
    let flags = if is_root() { "-n" } else { "-rn" };
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new("unshare")
        .args([
            flags,
            "--",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" "$@""#,
        ])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .status()
        .context("cannot run unshare")?;
    anyhow::ensure!(
        status.success(),
        "{test} failed inside its network namespace ({status}); its output is above"
    );
    Ok(())
}

/// The agent mode under test.
#[derive(Clone, Copy)]
enum Mode {
    /// The bridge's default, `--agent auto`, which must pick native (`true`) or not.
    Auto { native: bool },
    /// `--agent stream-json` with the command given after `--`.
    StreamJson,
}

/// Gives the CLI under test a scratch `HOME`, none of the caller's own Claude Code
/// settings, no telemetry or updates, and the fake model.
fn isolate(command: &mut tokio::process::Command, home: &std::path::Path, model: &FakeAnthropic) {
    for name in CALLER_SETTINGS {
        command.env_remove(name);
    }
    command
        .env("HOME", home)
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("ANTHROPIC_API_KEY", "sk-test-dummy")
        .env("ANTHROPIC_BASE_URL", model.base_url());
}

async fn official_cli_scenario(release: Release, mode: Mode, plane: &str) -> anyhow::Result<()> {
    let claude = claude_program(release).context("no claude program")?;
    let claude = claude.display().to_string();
    let model = FakeAnthropic::start().await?;
    let served = Served::start().await?;
    let home = tempfile::tempdir()?;
    let workdir = tempfile::tempdir()?;
    let mut command = served.bridge(workdir.path());
    command.args(["--plane", plane]);
    match mode {
        Mode::Auto { .. } => {
            command.args(["--claude", &claude]);
        }
        Mode::StreamJson => {
            command.args([
                "--agent",
                "stream-json",
                "--",
                &claude,
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-prompt-tool",
                "stdio",
            ]);
        }
    }
    isolate(&mut command, home.path(), &model);
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    if let Mode::Auto { native } = mode {
        // The bridge asked the client and says in one line what it picked and why.
        let line = bridge.wait_for("agent mode:", STEP).await?;
        let picked_native = line.contains("natively");
        anyhow::ensure!(
            picked_native == native,
            "the bridge picked the wrong mode: {line}\n{}",
            bridge.output()
        );
    }
    let mut viewer = Viewer::connect(&served, &session_id).await?;

    let expect = Expect {
        hello_reply: HELLO_REPLY,
        step: STEP,
    };
    let slow = scenario(&mut viewer, workdir.path(), &expect)
        .await
        .with_context(|| format!("the bridge printed:\n{}", bridge.output()))?;
    check_end(&served, &mut bridge, &session_id, &slow, STEP).await?;
    let status = bridge.terminate(STEP).await?;
    assert!(status.success(), "{status}: {}", bridge.output());
    assert!(
        model.requests().len() >= 5,
        "every turn went to the fake model: {} requests",
        model.requests().len()
    );
    Ok(())
}

#[test]
fn the_official_cli_runs_natively_on_the_v1_plane() -> anyhow::Result<()> {
    in_isolation(
        "the_official_cli_runs_natively_on_the_v1_plane",
        Release::Pinned,
        || official_cli_scenario(Release::Pinned, Mode::Auto { native: true }, "v1"),
    )
}

#[test]
fn the_official_cli_runs_natively_on_the_v2_plane() -> anyhow::Result<()> {
    in_isolation(
        "the_official_cli_runs_natively_on_the_v2_plane",
        Release::Pinned,
        || official_cli_scenario(Release::Pinned, Mode::Auto { native: true }, "v2"),
    )
}

#[test]
fn the_official_cli_runs_in_stream_json_mode_on_the_v1_plane() -> anyhow::Result<()> {
    in_isolation(
        "the_official_cli_runs_in_stream_json_mode_on_the_v1_plane",
        Release::Pinned,
        || official_cli_scenario(Release::Pinned, Mode::StreamJson, "v1"),
    )
}

#[test]
fn the_official_cli_runs_in_stream_json_mode_on_the_v2_plane() -> anyhow::Result<()> {
    in_isolation(
        "the_official_cli_runs_in_stream_json_mode_on_the_v2_plane",
        Release::Pinned,
        || official_cli_scenario(Release::Pinned, Mode::StreamJson, "v2"),
    )
}

#[test]
fn todays_cli_runs_under_the_relay_the_bridge_picks_on_the_v1_plane() -> anyhow::Result<()> {
    in_isolation(
        "todays_cli_runs_under_the_relay_the_bridge_picks_on_the_v1_plane",
        Release::Current,
        || official_cli_scenario(Release::Current, Mode::Auto { native: false }, "v1"),
    )
}

#[test]
fn todays_cli_runs_under_the_relay_the_bridge_picks_on_the_v2_plane() -> anyhow::Result<()> {
    in_isolation(
        "todays_cli_runs_under_the_relay_the_bridge_picks_on_the_v2_plane",
        Release::Current,
        || official_cli_scenario(Release::Current, Mode::Auto { native: false }, "v2"),
    )
}

/// The approval policy with the official CLI (issue 16): rules made at the server answer
/// its permission requests with nobody at a viewer (allow: the tool runs; deny: it does
/// not), a request no rule answers gets the default after the timeout, and the audit log
/// names the rule behind each answer.
async fn official_cli_policy_scenario(release: Release) -> anyhow::Result<()> {
    let claude = claude_program(release).context("no claude program")?;
    let claude = claude.display().to_string();
    let model = FakeAnthropic::start().await?;
    let served = Served::start().await?;
    let data = served.data.path();
    let allow = support::add_rule(
        data,
        &[
            "Bash",
            "allow",
            "--pattern",
            &format!("touch {}", support::TOOL_FILE),
        ],
    )
    .await?;
    let home = tempfile::tempdir()?;
    let workdir = tempfile::tempdir()?;
    let mut command = served.bridge(workdir.path());
    command.args(["--plane", "v1", "--claude", &claude]);
    isolate(&mut command, home.path(), &model);
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    let mut viewer = Viewer::connect(&served, &session_id).await?;

    support::policy_story(&mut viewer, data, workdir.path(), &session_id, &allow, STEP)
        .await
        .with_context(|| format!("the bridge printed:\n{}", bridge.output()))?;

    viewer
        .control(serde_json::json!({"subtype": "end_session"}))
        .await?;
    bridge.terminate(STEP).await?;
    Ok(())
}

#[test]
fn todays_cli_gets_its_permission_requests_answered_by_the_servers_rules() -> anyhow::Result<()> {
    in_isolation(
        "todays_cli_gets_its_permission_requests_answered_by_the_servers_rules",
        Release::Current,
        || official_cli_policy_scenario(Release::Current),
    )
}
