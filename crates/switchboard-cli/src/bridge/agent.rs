//! How the bridge starts an agent for a session (docs/PROTOCOL.md §7).
//!
//! - **Native** (`--agent claude`): Claude Code itself, as the official bridge starts it:
//!   `claude --print --sdk-url URL --session-id ID --input-format stream-json
//!   --output-format stream-json --replay-user-messages`, with the session's ingress
//!   token in `CLAUDE_CODE_SESSION_ACCESS_TOKEN`, `CLAUDE_CODE_ENVIRONMENT_KIND=bridge`,
//!   the v1 POST switch, and on the v2 plane `CLAUDE_CODE_USE_CCR_V2=1` with the worker
//!   epoch. The child connects to the session on its own.
//! - **Stream-json** (`--agent stream-json -- COMMAND…`): any program that speaks
//!   stream-json on stdin and stdout; the bridge carries its messages ([`super::relay`]),
//!   so the child needs no network access and gets no session credentials.
//!
//! Either way the child does not inherit the user's API key.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// Variables that carry the user's credentials, which no agent gets.
const USER_CREDENTIALS: &[&str] = &[
    "SWITCHBOARD_TOKEN",
    "CLAUDE_BRIDGE_OAUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
];

/// Variables that make Claude Code act as a bridge child; set only for native children,
/// and removed from the environment of every other child.
const CHILD_SWITCHES: &[&str] = &[
    "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
    "CLAUDE_CODE_ENVIRONMENT_KIND",
    "CLAUDE_CODE_POST_FOR_SESSION_INGRESS_V2",
    "CLAUDE_CODE_USE_CCR_V2",
    "CLAUDE_CODE_WORKER_EPOCH",
];

/// How to start an agent; the program was found when the bridge started.
#[derive(Debug, Clone)]
pub(crate) enum AgentSpec {
    /// Claude Code with `--sdk-url`.
    Native {
        /// The program, as found.
        program: PathBuf,
        /// Arguments added after the bridge's own.
        extra_args: Vec<String>,
    },
    /// A stream-json command.
    StreamJson {
        /// The program, as found.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// The stream-json command used when `--agent stream-json` is given without one:
/// Claude Code in print mode, asking for permissions over stdio.
pub(crate) fn default_stream_json_command(claude: &str) -> Vec<String> {
    [
        claude,
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-prompt-tool",
        "stdio",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Where `program` is: itself when it names a path, else the first executable of that
/// name on `PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where the Claude Code `program` is, or an error that says how to install it.
pub(crate) fn find_claude(program: &str) -> anyhow::Result<PathBuf> {
    find_program(program).ok_or_else(|| {
        anyhow::anyhow!(
            "cannot find the Claude Code program `{program}`; install it with \
             `npm install -g @anthropic-ai/claude-code`, or pass its path with --claude \
             (or SWITCHBOARD_CLAUDE)"
        )
    })
}

impl AgentSpec {
    /// Claude Code at `program`, with `extra_args` after the bridge's own arguments.
    pub(crate) fn native(program: &str, extra_args: Vec<String>) -> anyhow::Result<Self> {
        Ok(Self::Native {
            program: find_claude(program)?,
            extra_args,
        })
    }

    /// The stream-json command `command` (program first).
    pub(crate) fn stream_json(command: Vec<String>) -> anyhow::Result<Self> {
        let Some((program, args)) = command.split_first() else {
            anyhow::bail!("stream-json mode needs a command after --");
        };
        let found = find_program(program).ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find the agent command `{program}` (not a path to an executable and not \
                 on PATH); check the command after --"
            )
        })?;
        Ok(Self::StreamJson {
            program: found,
            args: args.to_vec(),
        })
    }

    /// Whether the agent connects to the session itself.
    pub(crate) fn is_native(&self) -> bool {
        matches!(self, Self::Native { .. })
    }

    /// The program.
    pub(crate) fn program(&self) -> &Path {
        match self {
            Self::Native { program, .. } | Self::StreamJson { program, .. } => program,
        }
    }

    /// One line about the agent, for the banner.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Native { program, .. } => format!("Claude Code ({})", program.display()),
            Self::StreamJson { program, args } => {
                let mut line = program.display().to_string();
                for arg in args {
                    line.push(' ');
                    line.push_str(arg);
                }
                format!("stream-json: {line}")
            }
        }
    }
}

/// What a native child needs to reach its session.
#[derive(Debug, Clone)]
pub(crate) struct NativeSession<'a> {
    /// `--sdk-url`.
    pub(crate) sdk_url: &'a str,
    /// `--session-id`: the session id as the work item named it.
    pub(crate) session_id: &'a str,
    /// The ingress token.
    pub(crate) token: &'a str,
    /// The worker epoch, on the v2 plane.
    pub(crate) worker_epoch: Option<u64>,
}

fn base_command(program: &Path, cwd: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: Ctrl-C on the bridge's terminal reaches only the bridge,
        // which stops its agents in order, and stopping an agent reaches what it started.
        .process_group(0)
        .kill_on_drop(true);
    for name in USER_CREDENTIALS.iter().chain(CHILD_SWITCHES) {
        command.env_remove(name);
    }
    command
}

/// The command line and environment of a native child, as the official bridge builds
/// them (the capture in `fixtures/real-client/README.md`).
pub(crate) fn native_command(spec: &AgentSpec, session: &NativeSession<'_>, cwd: &Path) -> Command {
    let (program, extra_args) = match spec {
        AgentSpec::Native {
            program,
            extra_args,
        } => (program, extra_args.as_slice()),
        AgentSpec::StreamJson { program, .. } => (program, &[][..]),
    };
    let mut command = base_command(program, cwd);
    command
        .args(["--print", "--sdk-url", session.sdk_url, "--session-id"])
        .arg(session.session_id)
        .args([
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--replay-user-messages",
        ])
        .args(extra_args)
        .env("CLAUDE_CODE_SESSION_ACCESS_TOKEN", session.token)
        .env("CLAUDE_CODE_ENVIRONMENT_KIND", "bridge")
        // A 2.1.112 bridge always sets it; on the v2 plane CCR v2 wins.
        .env("CLAUDE_CODE_POST_FOR_SESSION_INGRESS_V2", "1");
    if let Some(epoch) = session.worker_epoch {
        command
            .env("CLAUDE_CODE_USE_CCR_V2", "1")
            .env("CLAUDE_CODE_WORKER_EPOCH", epoch.to_string());
    }
    command
}

/// The command of a stream-json child.
pub(crate) fn stream_json_command(spec: &AgentSpec, cwd: &Path) -> Command {
    let (program, args) = match spec {
        AgentSpec::StreamJson { program, args } => (program, args.as_slice()),
        AgentSpec::Native { program, .. } => (program, &[][..]),
    };
    let mut command = base_command(program, cwd);
    command.args(args);
    command
}

/// The stdin line that hands a running native child a new token (§7.3).
pub(crate) fn token_update_line(token: &str) -> String {
    let message = serde_json::json!({
        "type": "update_environment_variables",
        "variables": {"CLAUDE_CODE_SESSION_ACCESS_TOKEN": token},
    });
    format!("{message}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_explained() {
        let error = AgentSpec::native("definitely-not-a-claude-binary", vec![])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot find the Claude Code program"),
            "{error}"
        );
        let error = AgentSpec::stream_json(vec!["/nope/agent".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("check the command after --"), "{error}");
    }

    #[test]
    fn native_children_get_the_official_command_line_and_environment() {
        let spec = AgentSpec::Native {
            program: "/bin/true".into(),
            extra_args: vec!["--verbose".into()],
        };
        let session = NativeSession {
            sdk_url: "http://127.0.0.1:1/v1/code/sessions/cse_abcd",
            session_id: "cse_abcd",
            token: "tok",
            worker_epoch: Some(3),
        };
        let command = native_command(&spec, &session, Path::new("/"));
        let command = command.as_std();
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "--print",
                "--sdk-url",
                "http://127.0.0.1:1/v1/code/sessions/cse_abcd",
                "--session-id",
                "cse_abcd",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--replay-user-messages",
                "--verbose"
            ]
        );
        let env: std::collections::HashMap<_, _> = command
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(
            env["CLAUDE_CODE_SESSION_ACCESS_TOKEN"].as_deref(),
            Some("tok")
        );
        assert_eq!(
            env["CLAUDE_CODE_ENVIRONMENT_KIND"].as_deref(),
            Some("bridge")
        );
        assert_eq!(env["CLAUDE_CODE_USE_CCR_V2"].as_deref(), Some("1"));
        assert_eq!(env["CLAUDE_CODE_WORKER_EPOCH"].as_deref(), Some("3"));
        assert_eq!(env["SWITCHBOARD_TOKEN"], None, "the API key is removed");
    }

    #[test]
    fn token_updates_are_one_json_line() {
        let line = token_update_line("t2");
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        assert_eq!(value["variables"]["CLAUDE_CODE_SESSION_ACCESS_TOKEN"], "t2");
    }
}
