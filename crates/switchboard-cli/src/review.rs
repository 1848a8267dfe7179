//! What a permission request's tool is about to do, for `switchboard attach`: a unified
//! diff of an edit (`Edit`, `MultiEdit`, `Write`, `NotebookEdit`) built from the tool's
//! input, or a `Bash` command in full. The same rules as the web UI's `web/diff.js`:
//! lines numbered within the strings the tool was given, three lines of context, a
//! longest common subsequence unless the changed middle is huge.

use serde_json::Value;

use crate::render::{cut, Line, Style};

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Above this many cells (changed old lines × changed new lines) the changed middle shows
/// as all removed, then all added.
const MAX_CELLS: usize = 1_000_000;
/// Diff lines shown before the rest is counted instead.
const SHOWN_LINES: usize = 40;
/// The widest diff line.
const WIDTH: usize = 160;

/// One line of a diff: `' '` kept, `'-'` removed, `'+'` added, with 1-based numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiffLine {
    pub(crate) op: char,
    pub(crate) text: String,
    pub(crate) old: Option<usize>,
    pub(crate) new: Option<usize>,
}

/// A text's lines; a final newline starts no line, and `\r\n` reads as `\n`.
fn split_lines(text: &str) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

/// The line-by-line difference of two texts.
pub(crate) fn diff_lines(a: &str, b: &str) -> Vec<DiffLine> {
    let x = split_lines(a);
    let y = split_lines(b);
    let pre = x.iter().zip(&y).take_while(|(p, q)| p == q).count();
    let suf = x[pre..]
        .iter()
        .rev()
        .zip(y[pre..].iter().rev())
        .take_while(|(p, q)| p == q)
        .count();
    let (xs, ys) = (&x[pre..x.len() - suf], &y[pre..y.len() - suf]);
    let mut ops = vec![' '; pre];
    middle(xs, ys, &mut ops);
    ops.extend(std::iter::repeat_n(' ', suf));
    let (mut i, mut j) = (0, 0);
    ops.into_iter()
        .map(|op| match op {
            ' ' => {
                i += 1;
                j += 1;
                DiffLine {
                    op,
                    text: x[i - 1].to_owned(),
                    old: Some(i),
                    new: Some(j),
                }
            }
            '-' => {
                i += 1;
                DiffLine {
                    op,
                    text: x[i - 1].to_owned(),
                    old: Some(i),
                    new: None,
                }
            }
            _ => {
                j += 1;
                DiffLine {
                    op,
                    text: y[j - 1].to_owned(),
                    old: None,
                    new: Some(j),
                }
            }
        })
        .collect()
}

/// The ops that turn `xs` into `ys`: a longest common subsequence, removals first.
fn middle(xs: &[&str], ys: &[&str], ops: &mut Vec<char>) {
    let (n, m) = (xs.len(), ys.len());
    if n == 0 || m == 0 || n.saturating_mul(m) > MAX_CELLS {
        ops.extend(std::iter::repeat_n('-', n));
        ops.extend(std::iter::repeat_n('+', m));
        return;
    }
    let w = m + 1;
    let mut lcs = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * w + j] = if xs[i] == ys[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if xs[i] == ys[j] {
            ops.push(' ');
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
            ops.push('-');
            i += 1;
        } else {
            ops.push('+');
            j += 1;
        }
    }
    ops.extend(std::iter::repeat_n('-', n - i));
    ops.extend(std::iter::repeat_n('+', m - j));
}

/// A diff grouped into hunks with context: `(header, lines)`.
pub(crate) fn hunks(lines: &[DiffLine]) -> Vec<(String, &[DiffLine])> {
    let mut out = Vec::new();
    let mut k = 0;
    while k < lines.len() {
        if lines[k].op == ' ' {
            k += 1;
            continue;
        }
        let start = k.saturating_sub(CONTEXT);
        let mut end = k;
        loop {
            while end < lines.len() && lines[end].op != ' ' {
                end += 1;
            }
            let mut next = end;
            while next < lines.len() && lines[next].op == ' ' {
                next += 1;
            }
            if next < lines.len() && next - end <= 2 * CONTEXT {
                end = next;
            } else {
                end = (end + CONTEXT).min(lines.len());
                break;
            }
        }
        let part = &lines[start..end];
        out.push((header(part, &lines[..start]), part));
        k = end;
    }
    out
}

fn header(part: &[DiffLine], before: &[DiffLine]) -> String {
    let side = |get: fn(&DiffLine) -> Option<usize>| {
        let count = part.iter().filter_map(get).count();
        // An empty side is numbered after the line before it, as diff(1) does.
        let start = part
            .iter()
            .find_map(get)
            .or_else(|| before.iter().rev().find_map(get))
            .unwrap_or(0);
        if count == 1 {
            format!("{start}")
        } else {
            format!("{start},{count}")
        }
    };
    format!("@@ -{} +{} @@", side(|l| l.old), side(|l| l.new))
}

fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// The lines that show what `tool` will do with `input`, or `None` when there is nothing
/// better to show than the input itself.
pub(crate) fn lines(tool: &str, input: &Value) -> Option<Vec<Line>> {
    let mut sections: Vec<(String, String, String)> = Vec::new();
    let path = match tool {
        "Edit" => {
            let note = if input.get("replace_all") == Some(&Value::Bool(true)) {
                "(every occurrence)"
            } else {
                ""
            };
            sections.push((
                note.to_owned(),
                str_of(input, "old_string")?.to_owned(),
                str_of(input, "new_string")?.to_owned(),
            ));
            str_of(input, "file_path")
        }
        "MultiEdit" => {
            let edits = input.get("edits")?.as_array()?;
            for (i, e) in edits.iter().enumerate() {
                let title = if edits.len() > 1 {
                    format!("Edit {} of {}", i + 1, edits.len())
                } else {
                    String::new()
                };
                sections.push((
                    title,
                    str_of(e, "old_string").unwrap_or_default().to_owned(),
                    str_of(e, "new_string").unwrap_or_default().to_owned(),
                ));
            }
            str_of(input, "file_path")
        }
        "Write" => {
            let content = str_of(input, "content")?;
            sections.push(("(the whole file)".into(), String::new(), content.to_owned()));
            str_of(input, "file_path")
        }
        "NotebookEdit" => {
            let mode = str_of(input, "edit_mode").unwrap_or("replace");
            let cell = input
                .get("cell_id")
                .and_then(Value::as_str)
                .map_or_else(|| "a new cell".to_owned(), |c| format!("cell {c}"));
            let (title, source) = match mode {
                "delete" => (format!("Delete {cell}"), ""),
                "insert" => (
                    "Insert a cell".to_owned(),
                    str_of(input, "new_source").unwrap_or_default(),
                ),
                _ => (
                    format!("Replace {cell}"),
                    str_of(input, "new_source").unwrap_or_default(),
                ),
            };
            sections.push((title, String::new(), source.to_owned()));
            str_of(input, "notebook_path")
        }
        "Bash" => return bash(input),
        _ => return None,
    };
    let mut out = vec![Line::new(
        Style::Tool,
        format!("  {}", path.unwrap_or("(no path)")),
    )];
    let mut shown = 0;
    let mut hidden = 0;
    for (title, old, new) in &sections {
        let diff = diff_lines(old, new);
        let mut rows = Vec::new();
        if !title.is_empty() {
            rows.push(Line::new(Style::Note, format!("  {title}")));
        }
        let parts = hunks(&diff);
        if parts.is_empty() {
            rows.push(Line::new(Style::Note, "  no change"));
        }
        for (head, part) in parts {
            rows.push(Line::new(Style::Note, format!("  {head}")));
            for l in part {
                let num = |n: Option<usize>| n.map_or_else(String::new, |n| n.to_string());
                let style = match l.op {
                    '+' => Style::Done,
                    '-' => Style::Error,
                    _ => Style::Text,
                };
                let text = format!("  {:>4} {:>4} {} {}", num(l.old), num(l.new), l.op, l.text);
                rows.push(Line::new(style, cut(&text, WIDTH)));
            }
        }
        for row in rows {
            if shown < SHOWN_LINES {
                out.push(row);
                shown += 1;
            } else {
                hidden += 1;
            }
        }
    }
    if hidden > 0 {
        out.push(Line::new(
            Style::Note,
            format!("  … {hidden} more lines of the diff"),
        ));
    }
    Some(out)
}

/// A command in full, line by line, after its description.
fn bash(input: &Value) -> Option<Vec<Line>> {
    let command = str_of(input, "command")?;
    let mut out = Vec::new();
    if let Some(d) = str_of(input, "description").filter(|d| !d.is_empty()) {
        out.push(Line::new(Style::Attention, format!("  {d}")));
    }
    for (i, line) in command.lines().enumerate() {
        let mark = if i == 0 { "$" } else { ">" };
        out.push(Line::new(Style::Tool, format!("    {mark} {line}")));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ops(lines: &[DiffLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| format!("{}{}", l.op, l.text))
            .collect()
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn diffs_match_the_web_ui() {
        // The same cases as web/tests/diff.test.js.
        let d = diff_lines("a\nb\nc\n", "a\nB\nc\n");
        assert_eq!(ops(&d), [" a", "-b", "+B", " c"]);
        assert_eq!(
            d.iter().map(|l| (l.old, l.new)).collect::<Vec<_>>(),
            [
                (Some(1), Some(1)),
                (Some(2), None),
                (None, Some(2)),
                (Some(3), Some(3))
            ]
        );
        assert_eq!(
            ops(&diff_lines("x\na\nb\nc\ny", "a\nz\nb\nc")),
            ["-x", " a", "+z", " b", " c", "-y"]
        );
        let new_file = diff_lines("", "one\r\ntwo\n");
        let h = hunks(&new_file);
        assert_eq!(h[0].0, "@@ -0,0 +1,2 @@");
        assert!(hunks(&diff_lines("same\n", "same\n")).is_empty());

        let old: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
        let mut new = old.clone();
        new[4] = "changed 5".into();
        new[8] = "changed 9".into();
        new[24] = "changed 25".into();
        let d = diff_lines(&old.join("\n"), &new.join("\n"));
        let h = hunks(&d);
        assert_eq!(
            h.iter().map(|(head, _)| head.as_str()).collect::<Vec<_>>(),
            ["@@ -2,11 +2,11 @@", "@@ -22,7 +22,7 @@"]
        );
    }

    #[test]
    fn huge_changes_are_not_minimised_but_still_correct() {
        let n = 1010;
        let a: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
        let b: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
        let d = diff_lines(
            &format!("keep\n{}\nend", a.join("\n")),
            &format!("keep\n{}\nend", b.join("\n")),
        );
        assert_eq!(d.len(), 2 * n + 2);
        assert_eq!(d[1].op, '-');
        assert_eq!(d[n + 1].op, '+');
    }

    #[test]
    fn an_edit_shows_as_a_numbered_coloured_diff() {
        let input = json!({"file_path": "/src/main.rs",
            "old_string": "fn main() {\n    let x = 1;\n}\n",
            "new_string": "fn main() {\n    let x = 2;\n}\n"});
        let lines = lines("Edit", &input).expect("a diff");
        assert_eq!(
            texts(&lines),
            [
                "  /src/main.rs",
                "  @@ -1,3 +1,3 @@",
                "     1    1   fn main() {",
                "     2      -     let x = 1;",
                "          2 +     let x = 2;",
                "     3    3   }",
            ]
        );
        assert_eq!(lines[3].style, Style::Error);
        assert_eq!(lines[4].style, Style::Done);
    }

    #[test]
    fn long_diffs_are_cut_and_counted() {
        let content: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let lines = lines_of("Write", &json!({"file_path": "/f", "content": content}));
        // The path, then 40 diff rows (title, header, 38 lines), then the count.
        assert_eq!(lines.len(), 42);
        assert_eq!(lines[1].text, "  (the whole file)");
        assert_eq!(lines[2].text, "  @@ -0,0 +1,100 @@");
        assert_eq!(lines[41].text, "  … 62 more lines of the diff");

        let multi = json!({"file_path": "/m", "edits": [
            {"old_string": "a", "new_string": "b"}, {"old_string": "c", "new_string": "d"}]});
        assert!(texts(&lines_of("MultiEdit", &multi)).contains(&"  Edit 2 of 2"));
        let nb = json!({"notebook_path": "/n.ipynb", "cell_id": "c3", "edit_mode": "delete"});
        assert_eq!(
            texts(&lines_of("NotebookEdit", &nb)),
            ["  /n.ipynb", "  Delete cell c3", "  no change"]
        );
    }

    fn lines_of(tool: &str, input: &Value) -> Vec<Line> {
        lines(tool, input).expect("a review")
    }

    #[test]
    fn bash_shows_the_command_in_full() {
        let long = format!("echo {}", "y".repeat(300));
        let input = json!({"command": format!("cd /srv &&\n{long}"), "description": "Print a lot"});
        assert_eq!(
            texts(&lines_of("Bash", &input)),
            [
                "  Print a lot".to_owned(),
                "    $ cd /srv &&".to_owned(),
                format!("    > {long}")
            ]
        );
        assert!(lines("Read", &json!({"file_path": "/x"})).is_none());
        assert!(lines("Edit", &json!({"file_path": "/x"})).is_none());
    }
}
