//! Which way the installed Claude Code can run under this bridge (`--agent auto`).
//!
//! Claude Code up to 2.1.112 connects to any `--sdk-url`. From 2.1.113 on it refuses every
//! host but Anthropic's own (and those only over https/wss): `Error: --sdk-url rejected:
//! host "…" is not an approved Anthropic endpoint.` A self-hosted server is never on that
//! list, so such a client runs in stream-json mode, with the bridge relaying its messages.
//!
//! The bridge asks the program:
//!
//! 1. `claude --version`: 2.1.112 or older accepts any URL, so it runs natively;
//! 2. otherwise a dry run, `claude --print --sdk-url URL --input-format stream-json
//!    --output-format stream-json` with no input and no credentials, once with the URL a
//!    v1 session would get and once with a v2 one. These releases check the host before
//!    anything touches the network (2.1.332 answers in half a second); a client that
//!    took the URL would only fail to connect, and is stopped after a few seconds.
//!
//! A refusal means stream-json; the complaint of an older release about the formats on
//! both URLs means native. Anything else (an unknown program, a wrapper, a client that
//! tried to connect) falls back on stream-json, which works with every release.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The last release that accepts `--sdk-url` for any host.
const LAST_OPEN_RELEASE: Version = Version(2, 1, 112);

/// How long `--version` and each dry run may take (2.1.112 is a 10 MB script on node,
/// which takes a few seconds to start on a busy machine).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Variables that carry the user's credentials; the dry run gets none of them.
const HIDDEN: &[&str] = &[
    "SWITCHBOARD_TOKEN",
    "CLAUDE_BRIDGE_OAUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
];

/// A Claude Code release number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(pub(crate) u32, pub(crate) u32, pub(crate) u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The first `X.Y.Z` in `claude --version`'s output (`2.1.332 (Claude Code)`).
pub(crate) fn parse_version(output: &str) -> Option<Version> {
    output.split_whitespace().find_map(|word| {
        let mut parts = word.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(Version(major, minor, patch.parse().ok()?))
    })
}

/// What one dry run said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DryRun {
    /// The client refused the URL, for this reason (in its own words).
    Refused(String),
    /// The client took the URL and complained only about the output format.
    Accepted,
    /// Anything else (the text, cut short).
    Unclear(String),
}

/// Reads a dry run's output.
pub(crate) fn read_dry_run(output: &str) -> DryRun {
    if let Some(rest) = output.split("--sdk-url rejected:").nth(1) {
        let reason = rest
            .split(". This flag")
            .next()
            .unwrap_or(rest)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches('.');
        return DryRun::Refused(reason.to_owned());
    }
    let lower = output.to_ascii_lowercase();
    if lower.contains("requires") && lower.contains("stream-json") {
        return DryRun::Accepted;
    }
    let cut: String = output.trim().chars().take(200).collect();
    DryRun::Unclear(cut)
}

/// The choice, and the one line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Whether Claude Code runs natively (`--sdk-url`) rather than under the relay.
    pub(crate) native: bool,
    /// Why, for the bridge's start.
    pub(crate) why: String,
}

/// Decides from what the program said: its version (if it told one) and the dry runs.
pub(crate) fn decide(version: Option<Version>, runs: &[DryRun]) -> Choice {
    let name = match version {
        Some(v) => format!("Claude Code {v}"),
        None => "Claude Code (version unknown)".to_owned(),
    };
    if let Some(reason) = runs.iter().find_map(|r| match r {
        DryRun::Refused(reason) => Some(reason),
        _ => None,
    }) {
        return Choice {
            native: false,
            why: format!(
                "{name} refuses --sdk-url for this server ({reason}), so the bridge relays its \
                 stream-json (--agent stream-json)"
            ),
        };
    }
    if !runs.is_empty() && runs.iter().all(|r| *r == DryRun::Accepted) {
        return Choice {
            native: true,
            why: format!(
                "{name} accepts --sdk-url for this server, so it connects to its sessions \
                 natively (--agent claude)"
            ),
        };
    }
    let unclear = runs
        .iter()
        .find_map(|r| match r {
            DryRun::Unclear(text) if !text.is_empty() => Some(format!(": {text:?}")),
            _ => None,
        })
        .unwrap_or_default();
    match version {
        Some(v) if v <= LAST_OPEN_RELEASE => Choice {
            native: true,
            why: format!(
                "{name} gave no clear answer to a dry run{unclear}; releases up to \
                 {LAST_OPEN_RELEASE} accept any --sdk-url, so it runs natively (--agent claude)"
            ),
        },
        _ => Choice {
            native: false,
            why: format!(
                "{name} gave no clear answer to a dry run{unclear}; releases after \
                 {LAST_OPEN_RELEASE} refuse self-hosted servers, so the bridge relays its \
                 stream-json (--agent stream-json)"
            ),
        },
    }
}

/// Runs `program` with `args` and no stdin; its stdout and stderr together, or `None`
/// when it could not start or took too long (then it is killed).
async fn ask(program: &Path, args: &[&str]) -> Option<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in HIDDEN {
        command.env_remove(name);
    }
    let child = command.spawn().ok()?;
    let output = tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Some(text)
}

/// Asks the Claude Code at `program` whether it takes `sdk_urls` (the URLs its sessions
/// would get), and decides.
pub(crate) async fn detect(program: &Path, sdk_urls: &[String]) -> Choice {
    let version = ask(program, &["--version"]).await;
    let version = version.as_deref().and_then(parse_version);
    if let Some(v) = version.filter(|v| *v <= LAST_OPEN_RELEASE) {
        return Choice {
            native: true,
            why: format!(
                "Claude Code {v} accepts --sdk-url for any server (every release up to \
                 {LAST_OPEN_RELEASE} does), so it connects to its sessions natively \
                 (--agent claude)"
            ),
        };
    }
    let runs = futures_util::future::join_all(sdk_urls.iter().map(|url| async move {
        let args = [
            "--print",
            "--sdk-url",
            url,
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
        ];
        match ask(program, &args).await {
            Some(output) => read_dry_run(&output),
            None => DryRun::Unclear(String::new()),
        }
    }))
    .await;
    decide(version, &runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What 2.1.332 prints for a loopback URL (captured from the package).
    const REFUSAL_2_1_332: &str = "Error: --sdk-url rejected: host \"127.0.0.1\" is not an \
        approved Anthropic endpoint. This flag is reserved for Remote Control worker \
        processes connecting to Anthropic's backend.\n";
    /// What 2.1.112 and 2.1.332 (for an approved host) print for the dry run.
    const FORMAT_COMPLAINT: &str =
        "Error: --input-format=stream-json requires output-format=stream-json.\n";

    #[test]
    fn versions_are_read_from_the_version_line() {
        assert_eq!(
            parse_version("2.1.332 (Claude Code)\n"),
            Some(Version(2, 1, 332))
        );
        assert_eq!(parse_version("claude 2.1.112"), Some(Version(2, 1, 112)));
        assert_eq!(parse_version("1.0.3-beta"), Some(Version(1, 0, 3)));
        assert_eq!(parse_version("no version here"), None);
        assert!(Version(2, 1, 113) > LAST_OPEN_RELEASE);
        assert!(Version(2, 0, 999) < LAST_OPEN_RELEASE);
    }

    #[test]
    fn dry_runs_tell_refusal_from_acceptance() {
        assert_eq!(
            read_dry_run(REFUSAL_2_1_332),
            DryRun::Refused("host \"127.0.0.1\" is not an approved Anthropic endpoint".into())
        );
        assert_eq!(read_dry_run(FORMAT_COMPLAINT), DryRun::Accepted);
        assert!(matches!(read_dry_run("segfault"), DryRun::Unclear(_)));
    }

    #[test]
    fn a_refusal_picks_stream_json_and_says_why() {
        let choice = decide(
            Some(Version(2, 1, 332)),
            &[DryRun::Accepted, read_dry_run(REFUSAL_2_1_332)],
        );
        assert!(!choice.native);
        assert!(choice.why.contains("Claude Code 2.1.332"), "{}", choice.why);
        assert!(choice.why.contains("not an approved"), "{}", choice.why);
        assert!(choice.why.contains("stream-json"), "{}", choice.why);
    }

    #[test]
    fn acceptance_on_every_url_picks_native() {
        let choice = decide(
            Some(Version(2, 1, 112)),
            &[DryRun::Accepted, DryRun::Accepted],
        );
        assert!(choice.native, "{}", choice.why);
        assert!(choice.why.contains("natively"), "{}", choice.why);
    }

    #[test]
    fn without_a_clear_answer_the_version_decides() {
        let unclear = [DryRun::Unclear("hm".into())];
        assert!(decide(Some(Version(2, 1, 100)), &unclear).native);
        assert!(!decide(Some(Version(2, 1, 113)), &unclear).native);
        assert!(!decide(None, &unclear).native);
        assert!(!decide(None, &[]).native);
    }
}
