//! How `switchboard attach` shows a session: each message becomes a few styled lines.
//!
//! Everything here is a pure function of the message, so the transcript's look is
//! tested without a terminal or a server. Styles become ANSI colors only in [`paint`],
//! and only when the caller says the output is a terminal.
//!
//! What a session says is text from the agent, its tools and whoever can write to the
//! session, and it must not be able to drive the person's terminal: [`paint`], the one
//! way a line reaches the screen, shows every control character visibly ([`visible`])
//! before it adds its own colors, so an escape sequence (a clipboard write with OSC 52,
//! cursor movement, concealed text) is printed as harmless text such as `^[]52;c;…`.

use std::borrow::Cow;

use serde_json::Value;

/// The most characters of a one-line summary (a tool call's input, a result line).
const SUMMARY_WIDTH: usize = 100;

/// How many lines of a tool's result are shown before the rest is counted instead.
const RESULT_LINES: usize = 3;

/// How many lines of a permission request's input are shown; tool inputs such as a file
/// to write can be long, and the answer rarely needs more than its start.
const INPUT_LINES: usize = 20;

/// The widest line of a permission request's input.
const INPUT_WIDTH: usize = 160;

/// What a line is, which decides its color.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// The assistant's text.
    Text,
    /// A user's prompt.
    Prompt,
    /// A tool call.
    Tool,
    /// A tool's result.
    Output,
    /// A failure.
    Error,
    /// A finished turn.
    Done,
    /// Something that needs the person's attention: a permission request.
    Attention,
    /// Notes about the connection and the session.
    Note,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// How to color it.
    pub(crate) style: Style,
    /// The text, without a newline.
    pub(crate) text: String,
}

impl Line {
    /// A line of `style` with `text`.
    pub(crate) fn new(style: Style, text: impl Into<String>) -> Self {
        Self {
            style,
            text: text.into(),
        }
    }
}

/// The line as it is printed: its control characters made visible, then wrapped in the
/// style's ANSI color when `color` is set.
pub(crate) fn paint(line: &Line, color: bool) -> String {
    let text = visible(&line.text);
    if !color {
        return text.into_owned();
    }
    let code = match line.style {
        Style::Text => return text.into_owned(),
        Style::Prompt => "1",
        Style::Tool => "36",
        Style::Output | Style::Note => "2",
        Style::Error => "31",
        Style::Done => "32",
        Style::Attention => "1;33",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// `text` with every character that a terminal would act on instead of print shown as
/// text: C0 controls and DEL in caret notation (`\x1b` as `^[`, `\r` as `^M`, `\x7f` as
/// `^?`), C1 controls and the Unicode bidirectional overrides and isolates (which can
/// make text read differently from what it is) as `<U+XXXX>`. Newlines and tabs stay.
pub(crate) fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            _ if !needs_escape(c) => out.push(c),
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            '\u{7f}' => out.push_str("^?"),
            _ => out.push_str(&format!("<U+{:04X}>", u32::from(c))),
        }
    }
    Cow::Owned(out)
}

/// True for the characters [`visible`] replaces.
fn needs_escape(c: char) -> bool {
    match c {
        '\n' | '\t' => false,
        // C0 controls, DEL and C1 controls (0x9b is a one-byte CSI on some terminals).
        _ if c.is_control() => true,
        // Bidirectional embeddings, overrides and isolates.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

/// The lines that show one message of the session. Messages that a person need not see
/// (keep-alives, partial stream events, acknowledgements) give none.
///
/// Permission requests (`control_request` with `can_use_tool`) are shown by
/// [`permission_request`] instead, since showing them is tied to asking.
pub(crate) fn message(message: &Value) -> Vec<Line> {
    match str_at(message, &["type"]).unwrap_or_default() {
        "assistant" => assistant(message),
        "user" => user(message),
        "result" | "result_success" => result(message),
        "system" => system(message),
        "error" => {
            let text = str_at(message, &["error", "message"]).unwrap_or("unknown error");
            vec![Line::new(Style::Error, format!("✗ server: {text}"))]
        }
        "control_request" => other_request(message),
        _ => Vec::new(),
    }
}

fn assistant(message: &Value) -> Vec<Line> {
    let mut lines = Vec::new();
    for block in array_at(message, &["message", "content"]) {
        match str_at(block, &["type"]) {
            Some("text") => {
                let text = str_at(block, &["text"]).unwrap_or_default().trim_end();
                lines.extend(text.lines().map(|l| Line::new(Style::Text, l)));
            }
            Some("tool_use") => {
                let name = str_at(block, &["name"]).unwrap_or("tool");
                let input = block.get("input").unwrap_or(&Value::Null);
                lines.push(Line::new(
                    Style::Tool,
                    format!("● {name}({})", input_summary(input)),
                ));
            }
            _ => {}
        }
    }
    // Plain text content is allowed too, though the worker sends blocks.
    if let Some(text) = str_at(message, &["message", "content"]) {
        lines.extend(text.trim_end().lines().map(|l| Line::new(Style::Text, l)));
    }
    if let Some(error) = message.get("error").filter(|e| !e.is_null()) {
        let text = error
            .as_str()
            .map_or_else(|| error.to_string(), str::to_owned);
        lines.push(Line::new(
            Style::Error,
            format!("✗ assistant error: {text}"),
        ));
    }
    lines
}

fn user(message: &Value) -> Vec<Line> {
    // A replay is the worker's echo of a prompt already shown; synthetic messages are the
    // worker talking to itself.
    if message.get("isReplay") == Some(&Value::Bool(true))
        || message.get("isSynthetic") == Some(&Value::Bool(true))
    {
        return Vec::new();
    }
    let content = message.pointer("/message/content").unwrap_or(&Value::Null);
    if let Some(text) = content.as_str() {
        return prompt(text);
    }
    let mut lines = Vec::new();
    for block in content.as_array().into_iter().flatten() {
        match str_at(block, &["type"]) {
            Some("text") => lines.extend(prompt(str_at(block, &["text"]).unwrap_or_default())),
            Some("tool_result") => lines.extend(tool_result(block)),
            Some("image") => lines.push(Line::new(Style::Prompt, "> [image]")),
            _ => {}
        }
    }
    lines
}

fn prompt(text: &str) -> Vec<Line> {
    text.trim_end()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mark = if i == 0 { ">" } else { " " };
            Line::new(Style::Prompt, format!("{mark} {l}"))
        })
        .collect()
}

fn tool_result(block: &Value) -> Vec<Line> {
    let is_error = block.get("is_error") == Some(&Value::Bool(true));
    let text = match block.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match str_at(p, &["type"]) {
                Some("text") => str_at(p, &["text"]).unwrap_or_default().to_owned(),
                Some(other) => format!("[{other}]"),
                None => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let style = if is_error {
        Style::Error
    } else {
        Style::Output
    };
    if all.is_empty() {
        let text = if is_error {
            "  ⎿ error"
        } else {
            "  ⎿ (no output)"
        };
        return vec![Line::new(style, text)];
    }
    let mut lines: Vec<Line> = all
        .iter()
        .take(RESULT_LINES)
        .enumerate()
        .map(|(i, l)| {
            let mark = if i == 0 { "⎿" } else { " " };
            Line::new(style, format!("  {mark} {}", cut(l, SUMMARY_WIDTH)))
        })
        .collect();
    if all.len() > RESULT_LINES {
        lines.push(Line::new(
            style,
            format!("    … {} more lines", all.len() - RESULT_LINES),
        ));
    }
    lines
}

fn result(message: &Value) -> Vec<Line> {
    let subtype = str_at(message, &["subtype"]).unwrap_or("success");
    let is_error = message.get("is_error") == Some(&Value::Bool(true)) || subtype != "success";
    let mut facts = Vec::new();
    if let Some(ms) = message.get("duration_ms").and_then(Value::as_u64) {
        if ms > 0 {
            facts.push(duration(ms));
        }
    }
    if let Some(cost) = message.get("total_cost_usd").and_then(Value::as_f64) {
        if cost > 0.0 {
            facts.push(format!("${cost:.4}"));
        }
    }
    let facts = if facts.is_empty() {
        String::new()
    } else {
        format!(" ({})", facts.join(", "))
    };
    if !is_error {
        return vec![Line::new(Style::Done, format!("✓ turn done{facts}"))];
    }
    let mut lines = vec![Line::new(
        Style::Error,
        format!("✗ turn ended with {subtype}{facts}"),
    )];
    for error in array_at(message, &["errors"]) {
        let text = error
            .as_str()
            .map_or_else(|| error.to_string(), str::to_owned);
        lines.push(Line::new(
            Style::Error,
            format!("  {}", cut(&text, SUMMARY_WIDTH)),
        ));
    }
    lines
}

fn system(message: &Value) -> Vec<Line> {
    match str_at(message, &["subtype"]) {
        Some("init") => {
            let mut facts = vec!["session started".to_owned()];
            if let Some(model) = str_at(message, &["model"]) {
                facts.push(model.to_owned());
            }
            if let Some(cwd) = str_at(message, &["cwd"]) {
                facts.push(cwd.to_owned());
            }
            vec![Line::new(Style::Note, format!("· {}", facts.join(" · ")))]
        }
        Some("status") if str_at(message, &["status"]) == Some("compacting") => {
            vec![Line::new(Style::Note, "· compacting the conversation…")]
        }
        Some("compact_boundary") => {
            vec![Line::new(Style::Note, "· ── conversation compacted ──")]
        }
        Some("api_retry") => vec![Line::new(
            Style::Note,
            "· the model's API failed; the worker retries",
        )],
        _ => Vec::new(),
    }
}

/// Worker requests other than permissions: an `elicitation` is shown but answered
/// elsewhere. Requests that viewers send (interrupt, set_model…) come back as events of
/// the session too; they are the controller's business, not the transcript's.
fn other_request(message: &Value) -> Vec<Line> {
    if str_at(message, &["request", "subtype"]) != Some("elicitation") {
        return Vec::new();
    }
    let detail = str_at(message, &["request", "message"])
        .map(|m| format!(": {}", cut(m, SUMMARY_WIDTH)))
        .unwrap_or_default();
    vec![Line::new(
        Style::Note,
        format!("· the worker asks for input{detail}; answer it in another viewer"),
    )]
}

/// The lines that show a `can_use_tool` request: the tool, its description and its
/// input as pretty JSON, cut to a sensible size, then the question.
pub(crate) fn permission_request(request: &Value) -> Vec<Line> {
    let inner = request.get("request").unwrap_or(&Value::Null);
    let tool = tool_label(request);
    let mut lines = vec![Line::new(
        Style::Attention,
        format!("? Permission needed to use {tool}"),
    )];
    for key in ["description", "decision_reason", "blocked_path"] {
        if let Some(text) = str_at(inner, &[key]).filter(|t| !t.is_empty()) {
            lines.push(Line::new(
                Style::Attention,
                format!("  {}", cut(text, INPUT_WIDTH)),
            ));
        }
    }
    let input = inner.get("input").unwrap_or(&Value::Null);
    if let Some(review) = str_at(inner, &["tool_name"]).and_then(|t| crate::review::lines(t, input))
    {
        lines.extend(review);
        lines.push(question());
        return lines;
    }
    let pretty = serde_json::to_string_pretty(input).unwrap_or_else(|_| input.to_string());
    let all: Vec<&str> = pretty.lines().collect();
    for line in all.iter().take(INPUT_LINES) {
        lines.push(Line::new(
            Style::Text,
            format!("    {}", cut(line, INPUT_WIDTH)),
        ));
    }
    if all.len() > INPUT_LINES {
        lines.push(Line::new(
            Style::Note,
            format!("    … {} more lines", all.len() - INPUT_LINES),
        ));
    }
    lines.push(question());
    lines
}

/// The question a permission request ends with.
pub(crate) fn question() -> Line {
    Line::new(Style::Attention, "Allow? [y]es / [n]o (then a reason)")
}

/// A request's tool name, or its display name when it has one.
pub(crate) fn tool_label(request: &Value) -> String {
    let inner = request.get("request").unwrap_or(&Value::Null);
    str_at(inner, &["display_name"])
        .or_else(|| str_at(inner, &["tool_name"]))
        .unwrap_or("a tool")
        .to_owned()
}

/// A tool input on one line: the field that says most about the call (a command, a
/// path, a pattern…), else the whole input as compact JSON, cut short.
pub(crate) fn input_summary(input: &Value) -> String {
    const TELLING: [&str; 10] = [
        "command",
        "file_path",
        "notebook_path",
        "pattern",
        "path",
        "url",
        "query",
        "description",
        "prompt",
        "skill",
    ];
    let text = TELLING
        .iter()
        .find_map(|key| str_at(input, &[key]))
        .map(|s| s.lines().next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| match input {
            Value::Null => String::new(),
            Value::Object(o) if o.is_empty() => String::new(),
            other => other.to_string(),
        });
    cut(&text, SUMMARY_WIDTH)
}

/// A duration in the most readable unit: `850ms`, `3.2s`, `42s`, `2m 05s`.
pub(crate) fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        // Tenths are cut, not rounded, so 9 999 ms never reads as "10.0s".
        1_000..=9_999 => format!("{}.{}s", ms / 1000, (ms % 1000) / 100),
        10_000..=59_999 => format!("{}s", ms / 1000),
        _ => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// `text` cut to `max` characters, with an ellipsis when something was cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

fn array_at<'a>(value: &'a Value, path: &[&str]) -> impl Iterator<Item = &'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn assistant_text_and_tool_calls_become_lines() {
        let lines = message(&json!({
            "type": "assistant",
            "message": {"content": [
                {"type": "text", "text": "Let me check.\nRunning the tests."},
                {"type": "thinking", "thinking": "hidden"},
                {"type": "tool_use", "id": "t1", "name": "Bash",
                 "input": {"command": "npm test\nnpm run lint", "timeout": 5}},
                {"type": "tool_use", "id": "t2", "name": "TodoWrite",
                 "input": {"todos": [1, 2]}},
            ]},
        }));

        assert_eq!(
            texts(&lines),
            [
                "Let me check.",
                "Running the tests.",
                "● Bash(npm test)",
                "● TodoWrite({\"todos\":[1,2]})"
            ]
        );
        assert_eq!(lines[2].style, Style::Tool);
    }

    #[test]
    fn tool_results_are_abbreviated_and_errors_stand_out() {
        let long = (1..=10)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let lines = message(&json!({
            "type": "user",
            "message": {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": long},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": true,
                 "content": [{"type": "text", "text": "command not found"}]},
            ]},
        }));

        assert_eq!(
            texts(&lines),
            [
                "  ⎿ line 1",
                "    line 2",
                "    line 3",
                "    … 7 more lines",
                "  ⎿ command not found"
            ]
        );
        assert_eq!(lines[4].style, Style::Error);
    }

    #[test]
    fn prompts_show_with_a_marker_and_replays_are_hidden() {
        let prompt =
            json!({"type": "user", "message": {"role": "user", "content": "fix it\nplease"}});
        let replay = json!({"type": "user", "isReplay": true,
                            "message": {"role": "user", "content": "fix it"}});

        assert_eq!(texts(&message(&prompt)), ["> fix it", "  please"]);
        assert!(message(&replay).is_empty());
    }

    #[test]
    fn results_show_duration_and_cost() {
        let ok = json!({"type": "result", "subtype": "success", "is_error": false,
                        "duration_ms": 3210, "total_cost_usd": 0.01234});
        let failed = json!({"type": "result", "subtype": "error_max_turns", "is_error": true,
                            "duration_ms": 125_000, "errors": ["too many turns"]});
        let marker = json!({"type": "result_success", "subtype": "success", "duration_ms": 0});

        assert_eq!(texts(&message(&ok)), ["✓ turn done (3.2s, $0.0123)"]);
        assert_eq!(
            texts(&message(&failed)),
            [
                "✗ turn ended with error_max_turns (2m 05s)",
                "  too many turns"
            ]
        );
        assert_eq!(texts(&message(&marker)), ["✓ turn done"]);
    }

    #[test]
    fn system_notes_errors_and_noise() {
        let init = json!({"type": "system", "subtype": "init", "model": "opus", "cwd": "/w"});
        let error = json!({"type": "error", "error": {"type": "invalid_request_error",
                                                       "message": "bad frame"}});

        assert_eq!(texts(&message(&init)), ["· session started · opus · /w"]);
        assert_eq!(texts(&message(&error)), ["✗ server: bad frame"]);
        let ask = json!({"type": "control_request", "request_id": "e1",
                         "request": {"subtype": "elicitation", "message": "Which branch?"}});
        assert_eq!(
            texts(&message(&ask)),
            ["· the worker asks for input: Which branch?; answer it in another viewer"]
        );
        for noise in [
            json!({"type": "stream_event", "event": {}}),
            json!({"type": "keep_alive"}),
            json!({"type": "control_response", "response": {}}),
            json!({"type": "control_cancel_request", "request_id": "r"}),
            json!({"type": "system", "subtype": "session_state_changed"}),
            json!({"type": "something_new"}),
            json!({"type": "control_request", "request": {"subtype": "can_use_tool"}}),
            json!({"type": "control_request", "request": {"subtype": "interrupt"}}),
        ] {
            assert!(message(&noise).is_empty(), "{noise}");
        }
    }

    #[test]
    fn permission_requests_show_the_tool_and_its_input_cut_to_size() {
        let big: serde_json::Map<String, Value> = (0..30)
            .map(|i| (format!("k{i:02}"), json!("x".repeat(300))))
            .collect();
        let request = json!({
            "type": "control_request", "request_id": "r1",
            "request": {"subtype": "can_use_tool", "tool_name": "Write",
                        "description": "Write a file", "input": big},
        });

        let lines = permission_request(&request);

        assert_eq!(lines[0].text, "? Permission needed to use Write");
        assert_eq!(lines[1].text, "  Write a file");
        assert_eq!(lines[2].text, "    {");
        assert!(lines[3].text.ends_with('…'));
        assert!(lines
            .iter()
            .all(|l| l.text.chars().count() <= INPUT_WIDTH + 5));
        assert_eq!(lines[lines.len() - 2].text, "    … 12 more lines");
        assert_eq!(
            lines.last().map(|l| l.text.as_str()),
            Some("Allow? [y]es / [n]o (then a reason)")
        );
    }

    #[test]
    fn colors_are_added_only_on_request() {
        let line = Line::new(Style::Error, "bad");

        assert_eq!(paint(&line, false), "bad");
        assert_eq!(paint(&line, true), "\x1b[31mbad\x1b[0m");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        // An OSC 52 clipboard write, cursor movement, concealed text, a carriage return
        // that would overwrite the line, a bell, DEL, a one-byte CSI and a bidi override.
        let hostile = [
            ("\x1b]52;c;cm0gLXJmIH4=\x07", "^[]52;c;cm0gLXJmIH4=^G"),
            ("ok\x1b[2A\x1b[2Kgone", "ok^[[2A^[[2Kgone"),
            ("\x1b[8msecret\x1b[0m", "^[[8msecret^[[0m"),
            ("safe\rrm -rf /", "safe^Mrm -rf /"),
            ("del\x7f\u{9b}31m", "del^?<U+009B>31m"),
            ("abc\u{202e}fdp.exe", "abc<U+202E>fdp.exe"),
            ("\0", "^@"),
        ];
        for (text, shown) in hostile {
            assert_eq!(visible(text), shown, "{text:?}");
            let painted = paint(&Line::new(Style::Text, text), true);
            assert!(!painted.contains('\x1b'), "{painted:?}");
        }
        // Colors are added after escaping, so they are the only escapes left.
        assert_eq!(
            paint(&Line::new(Style::Error, "\x1b[31mfake"), true),
            "\x1b[31m^[[31mfake\x1b[0m"
        );
        // Plain text, newlines, tabs and non-ASCII pass unchanged and unallocated.
        let plain = "line one\n\tindented · ✓ émoji 🚀";
        assert!(matches!(visible(plain), Cow::Borrowed(t) if t == plain));
    }

    #[test]
    fn hostile_messages_reach_the_screen_escaped() {
        let osc = "\x1b]52;c;ZWNobyBwd25lZA==\x07";
        let assistant = json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": format!("hello{osc}")},
            {"type": "tool_use", "name": "Bash", "input": {"command": format!("ls{osc}")}},
        ]}});
        let output = json!({"type": "user", "message": {"content": [
            {"type": "tool_result", "content": "\x1b[2J\x1b[Hcleared"},
        ]}});
        let request = json!({"type": "control_request", "request_id": "r", "request": {
            "subtype": "can_use_tool", "tool_name": "Bash\x1b[8m",
            "description": "\x1b[8mhidden\x1b[28m", "input": {"command": "x"}}});

        let mut lines = message(&assistant);
        lines.extend(message(&output));
        lines.extend(permission_request(&request));

        for line in &lines {
            for color in [false, true] {
                let painted = paint(line, color);
                let escapes = painted.matches('\x1b').count();
                assert!(escapes <= 2, "only our own color codes: {painted:?}");
            }
        }
        let shown: Vec<String> = lines.iter().map(|l| paint(l, false)).collect();
        assert!(
            shown.contains(&"hello^[]52;c;ZWNobyBwd25lZA==^G".to_owned()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"  ⎿ ^[[2J^[[Hcleared".to_owned()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"  ^[[8mhidden^[[28m".to_owned()),
            "{shown:?}"
        );
    }

    #[test]
    fn durations_and_cuts_read_well() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(9_999), "9.9s");
        assert_eq!(duration(59_999), "59s");
        assert_eq!(duration(61_000), "1m 01s");
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(input_summary(&json!({})), "");
    }
}
