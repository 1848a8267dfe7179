//! The approval policy (issue 16): validating rules as they are entered, and matching a
//! worker's permission request (`can_use_tool`) against an owner's rules.
//!
//! A rule names a tool (`*` for any) and, for some tools, a pattern on the tool's input:
//! a command prefix for `Bash`, a path glob for the file tools, a domain for `WebFetch`.
//! Rules are tried in order and the first that matches answers; none matching gives the
//! owner's default (`ask` unless set).
//!
//! Matching leans towards asking a person: an `allow` rule never matches a command that
//! chains or substitutes commands (`;`, `&`, `|`, `` ` ``, `$(`, redirections,
//! newlines) or a path with a `..` segment, whereas `deny` and `ask` rules match a
//! command prefix at the start of any command in a chain.

use serde_json::Value;
use switchboard_store::{Decision, PolicyRule};

use crate::error::ApiError;

/// The file tools whose pattern is a path glob, and the input field holding the path.
const FILE_TOOLS: &[(&str, &str)] = &[
    ("Read", "file_path"),
    ("Write", "file_path"),
    ("Edit", "file_path"),
    ("MultiEdit", "file_path"),
    ("NotebookEdit", "notebook_path"),
    ("Glob", "path"),
    ("Grep", "path"),
    ("LS", "path"),
];

/// The longest pattern or tool name a rule may have.
const MAX_PATTERN_BYTES: usize = 1024;

/// What kind of pattern a tool's rules take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternKind {
    /// `Bash`: a command prefix.
    Command,
    /// A file tool: a path glob on the named input field.
    Path(&'static str),
    /// `WebFetch`: a domain (and its subdomains).
    Domain,
    /// Any other tool: no pattern.
    None,
}

fn pattern_kind(tool: &str) -> PatternKind {
    match tool {
        "Bash" => PatternKind::Command,
        "WebFetch" => PatternKind::Domain,
        _ => FILE_TOOLS
            .iter()
            .find(|(name, _)| *name == tool)
            .map_or(PatternKind::None, |(_, field)| PatternKind::Path(field)),
    }
}

/// Checks a rule's tool and pattern as entered; the error says what is wrong.
pub(crate) fn validate(tool: &str, pattern: Option<&str>) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    if tool.is_empty() || tool.len() > MAX_PATTERN_BYTES {
        return bad("a rule needs a tool name (or * for any tool)".into());
    }
    if tool != "*"
        && !tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
    {
        return bad(format!(
            "invalid tool name {tool:?}: letters, digits, _ - . : only (or * for any tool)"
        ));
    }
    let Some(pattern) = pattern else {
        return Ok(());
    };
    if pattern.trim().is_empty() {
        return bad("the pattern is empty; leave it out to match every use of the tool".into());
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return bad(format!(
            "the pattern is longer than {MAX_PATTERN_BYTES} bytes"
        ));
    }
    if pattern.chars().any(char::is_control) {
        return bad("the pattern contains a control character".into());
    }
    match pattern_kind(tool) {
        PatternKind::Command => Ok(()),
        PatternKind::Path(_) => {
            if pattern.contains("***") {
                return bad(format!(
                    "invalid path glob {pattern:?}: use * (within a directory) or ** (across \
                     directories)"
                ));
            }
            if pattern.split('/').any(|seg| seg == "..") {
                return bad(format!(
                    "invalid path glob {pattern:?}: a .. segment is not allowed"
                ));
            }
            Ok(())
        }
        PatternKind::Domain => {
            let host = pattern.strip_prefix("*.").unwrap_or(pattern);
            let valid = !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                Ok(())
            } else {
                bad(format!(
                    "invalid domain {pattern:?}: expected a host name like example.com or \
                     *.example.com"
                ))
            }
        }
        PatternKind::None => bad(format!(
            "tool {tool:?} takes no pattern (patterns are for Bash: a command prefix; file \
             tools: a path glob; WebFetch: a domain)"
        )),
    }
}

/// A permission request as the rules see it.
#[derive(Debug, Clone)]
pub(crate) struct Request<'a> {
    /// The tool asked for.
    pub(crate) tool: &'a str,
    /// Its input.
    pub(crate) input: &'a Value,
    /// The session's environment, if any.
    pub(crate) environment_id: Option<&'a str>,
    /// The session (body id).
    pub(crate) session_id: &'a str,
}

impl<'a> Request<'a> {
    /// Reads a worker's `can_use_tool` control request; `None` for anything else.
    pub(crate) fn from_message(
        message: &'a Value,
        environment_id: Option<&'a str>,
        session_id: &'a str,
    ) -> Option<(&'a str, Self)> {
        if message.get("type").and_then(Value::as_str) != Some("control_request") {
            return None;
        }
        let request = message.get("request")?;
        if request.get("subtype").and_then(Value::as_str) != Some("can_use_tool") {
            return None;
        }
        let request_id = message.get("request_id").and_then(Value::as_str)?;
        Some((
            request_id,
            Request {
                tool: request.get("tool_name").and_then(Value::as_str)?,
                input: request.get("input").unwrap_or(&Value::Null),
                environment_id,
                session_id,
            },
        ))
    }
}

/// The first rule that matches `request`, if any.
pub(crate) fn first_match<'r>(
    rules: &'r [PolicyRule],
    request: &Request<'_>,
) -> Option<&'r PolicyRule> {
    rules.iter().find(|rule| matches(rule, request))
}

/// Whether one rule answers `request`.
pub(crate) fn matches(rule: &PolicyRule, request: &Request<'_>) -> bool {
    if rule
        .session_id
        .as_deref()
        .is_some_and(|s| s != request.session_id)
        || rule
            .environment_id
            .as_deref()
            .is_some_and(|e| Some(e) != request.environment_id)
    {
        return false;
    }
    if rule.tool != "*" && rule.tool != request.tool {
        return false;
    }
    let Some(pattern) = rule.pattern.as_deref() else {
        return true;
    };
    let allow = rule.decision == Decision::Allow;
    let field = |name: &str| request.input.get(name).and_then(Value::as_str);
    match pattern_kind(request.tool) {
        PatternKind::Command => {
            field("command").is_some_and(|c| command_matches(pattern, c, allow))
        }
        PatternKind::Path(name) => field(name).is_some_and(|p| path_matches(pattern, p, allow)),
        PatternKind::Domain => field("url").is_some_and(|u| domain_matches(pattern, u)),
        PatternKind::None => false,
    }
}

/// Shell syntax that runs another command or writes somewhere: an `allow` rule never
/// matches a command containing any of it.
const SHELL_META: &[char] = &[';', '&', '|', '`', '$', '(', ')', '<', '>', '\n', '\r'];

fn prefix_matches(prefix: &str, command: &str) -> bool {
    let prefix = prefix.trim();
    let command = command.trim_start();
    command.strip_prefix(prefix).is_some_and(|rest| {
        rest.is_empty() || rest.starts_with(char::is_whitespace) || prefix.ends_with(' ')
    })
}

fn command_matches(prefix: &str, command: &str, allow: bool) -> bool {
    if allow {
        !command.contains(SHELL_META) && prefix_matches(prefix, command)
    } else {
        command
            .split([';', '&', '|', '\n', '\r', '(', '`'])
            .any(|part| prefix_matches(prefix, part.trim_start_matches(['$', ' '])))
    }
}

fn path_matches(glob: &str, path: &str, allow: bool) -> bool {
    if allow && path.split('/').any(|seg| seg == "..") {
        return false;
    }
    glob_matches(glob.as_bytes(), path.as_bytes())
}

/// `*` matches within one path segment, `**` across segments, `?` one character.
fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            // `**/` also matches no directory at all.
            let rest_no_slash = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=text.len())
                .any(|i| glob_matches(rest, &text[i..]) || glob_matches(rest_no_slash, &text[i..]))
        }
        Some((b'*', rest)) => (0..=text.len())
            .take_while(|&i| i == 0 || text[i - 1] != b'/')
            .any(|i| glob_matches(rest, &text[i..])),
        Some((b'?', rest)) => {
            text.first().is_some_and(|&c| c != b'/') && glob_matches(rest, &text[1..])
        }
        Some((c, rest)) => text.first() == Some(c) && glob_matches(rest, &text[1..]),
    }
}

fn domain_matches(pattern: &str, url: &str) -> bool {
    let Some(host) = url_host(url) else {
        return false;
    };
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host.ends_with(&format!(".{parent}")),
        None => host == pattern || host.ends_with(&format!(".{pattern}")),
    }
}

/// The host of an `http(s)` URL, lowercase, without a trailing dot.
fn url_host(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// The control response that answers `request_id` with `decision` (`allow` or `deny`),
/// naming the rule (or the default, or the timeout) that decided.
pub(crate) fn answer(request_id: &str, decision: Decision, input: &Value, why: &str) -> Value {
    let response = match decision {
        Decision::Allow => serde_json::json!({
            "behavior": "allow",
            "updatedInput": if input.is_object() { input.clone() } else { serde_json::json!({}) },
        }),
        _ => serde_json::json!({
            "behavior": "deny",
            "message": format!("Denied by the server's approval policy ({why})."),
        }),
    };
    serde_json::json!({
        "type": "control_response",
        "response": {
            "subtype": "success",
            "request_id": request_id,
            "response": response,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(tool: &str, pattern: Option<&str>, decision: Decision) -> PolicyRule {
        PolicyRule {
            id: "r".into(),
            owner_id: "o".into(),
            environment_id: None,
            session_id: None,
            position: 0,
            tool: tool.into(),
            pattern: pattern.map(str::to_string),
            decision,
            created_at: 0,
        }
    }

    fn asks(tool: &str, input: Value) -> (String, Value) {
        (tool.to_string(), input)
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let refused = [
            ("", None, "needs a tool"),
            ("Ba sh", None, "invalid tool name"),
            ("Bash", Some("  "), "empty"),
            ("Read", Some("/a/***"), "invalid path glob"),
            ("Read", Some("/a/../b"), ".. segment"),
            ("WebFetch", Some("https://x.com/"), "invalid domain"),
            ("WebFetch", Some("-x.com"), "invalid domain"),
            ("Task", Some("x"), "takes no pattern"),
            ("*", Some("x"), "takes no pattern"),
            ("Bash", Some("a\u{7}b"), "control character"),
        ];
        for (tool, pattern, why) in refused {
            let e = validate(tool, pattern).expect_err(tool);
            assert!(e.to_string().contains(why), "{tool} {pattern:?}: {e}");
        }
        for (tool, pattern) in [
            ("*", None),
            ("Bash", Some("git status")),
            ("Read", Some("/repo/**")),
            ("WebFetch", Some("*.example.com")),
            ("mcp__github__list", None),
        ] {
            assert!(validate(tool, pattern).is_ok(), "{tool} {pattern:?}");
        }
    }

    #[test]
    fn rules_match_commands_paths_and_domains() {
        let cases = [
            // An allow prefix needs a word boundary and a plain command.
            (
                rule("Bash", Some("git status"), Decision::Allow),
                asks("Bash", json!({"command": "git status -s"})),
                true,
            ),
            (
                rule("Bash", Some("git status"), Decision::Allow),
                asks("Bash", json!({"command": "git statusx"})),
                false,
            ),
            (
                rule("Bash", Some("git status"), Decision::Allow),
                asks("Bash", json!({"command": "git status; rm -rf /"})),
                false,
            ),
            (
                rule("Bash", Some("git status"), Decision::Allow),
                asks("Bash", json!({"command": "git status $(rm x)"})),
                false,
            ),
            // A deny prefix matches inside a chain.
            (
                rule("Bash", Some("rm"), Decision::Deny),
                asks("Bash", json!({"command": "ls && rm -rf /"})),
                true,
            ),
            (
                rule("Bash", Some("rm"), Decision::Deny),
                asks("Bash", json!({"command": "echo $(rm x)"})),
                true,
            ),
            (
                rule("Bash", Some("rm"), Decision::Deny),
                asks("Bash", json!({"command": "rmdir x"})),
                false,
            ),
            // Paths.
            (
                rule("Read", Some("/repo/**"), Decision::Allow),
                asks("Read", json!({"file_path": "/repo/a/b.rs"})),
                true,
            ),
            (
                rule("Read", Some("/repo/*.rs"), Decision::Allow),
                asks("Read", json!({"file_path": "/repo/a/b.rs"})),
                false,
            ),
            (
                rule("Read", Some("/repo/**"), Decision::Allow),
                asks("Read", json!({"file_path": "/repo/../etc/passwd"})),
                false,
            ),
            (
                rule("Read", Some("/repo/**"), Decision::Deny),
                asks("Read", json!({"file_path": "/repo/../etc/passwd"})),
                true,
            ),
            (
                rule("Edit", Some("**/*.md"), Decision::Allow),
                asks("Edit", json!({"file_path": "docs/a.md"})),
                true,
            ),
            (
                rule("Edit", Some("**/*.md"), Decision::Allow),
                asks("Edit", json!({"file_path": "a.md"})),
                true,
            ),
            // Domains.
            (
                rule("WebFetch", Some("example.com"), Decision::Allow),
                asks("WebFetch", json!({"url": "https://docs.example.com/x"})),
                true,
            ),
            (
                rule("WebFetch", Some("example.com"), Decision::Allow),
                asks("WebFetch", json!({"url": "https://example.com.evil.net/"})),
                false,
            ),
            (
                rule("WebFetch", Some("example.com"), Decision::Allow),
                asks("WebFetch", json!({"url": "https://evil.net/?example.com"})),
                false,
            ),
            (
                rule("WebFetch", Some("*.example.com"), Decision::Allow),
                asks("WebFetch", json!({"url": "https://example.com/"})),
                false,
            ),
            // Tool names.
            (
                rule("*", None, Decision::Ask),
                asks("Anything", json!({})),
                true,
            ),
            (
                rule("Bash", None, Decision::Allow),
                asks("Read", json!({})),
                false,
            ),
        ];
        for (rule, (tool, input), want) in cases {
            let request = Request {
                tool: &tool,
                input: &input,
                environment_id: None,
                session_id: "s",
            };
            assert_eq!(matches(&rule, &request), want, "{rule:?} on {tool} {input}");
        }
    }

    #[test]
    fn scoped_rules_match_only_their_session_or_environment() {
        let input = json!({"command": "ls"});
        let request = Request {
            tool: "Bash",
            input: &input,
            environment_id: Some("env_1"),
            session_id: "s1",
        };
        let mut r = rule("Bash", None, Decision::Allow);
        r.session_id = Some("s2".into());
        assert!(!matches(&r, &request));
        r.session_id = Some("s1".into());
        assert!(matches(&r, &request));
        r.environment_id = Some("env_2".into());
        assert!(!matches(&r, &request));
    }
}
