// What a tool is about to do, for the permission card: a unified diff of an edit built
// from the tool's input (old and new strings, or a new file's content), or a command in
// full. Pure functions, no DOM: tested under node (web/tests/diff.test.js), and
// crates/switchboard-cli/src/diff.rs does the same for `switchboard attach`.

/** Lines of context around each change. */
export const CONTEXT = 3;
/** Above this many cells (changed old lines × changed new lines) the diff is not
 * minimised: the changed middle shows as all removed, then all added. */
export const MAX_CELLS = 1_000_000;

/** A text's lines; a final newline does not start another line. */
export function splitLines(text) {
  if (typeof text !== "string" || text === "") return [];
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines.map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
}

/**
 * The line-by-line difference of two texts: a list of
 * `{ op: " " | "-" | "+", text, old, new }` with 1-based line numbers (`old` for kept and
 * removed lines, `new` for kept and added ones, else null).
 */
export function diffLines(a, b) {
  const x = splitLines(a);
  const y = splitLines(b);
  let pre = 0;
  while (pre < x.length && pre < y.length && x[pre] === y[pre]) pre++;
  let suf = 0;
  while (suf < x.length - pre && suf < y.length - pre && x[x.length - 1 - suf] === y[y.length - 1 - suf]) suf++;
  const xs = x.slice(pre, x.length - suf);
  const ys = y.slice(pre, y.length - suf);
  const ops = [];
  for (let i = 0; i < pre; i++) ops.push(" ");
  middle(xs, ys, ops);
  for (let i = 0; i < suf; i++) ops.push(" ");
  // Number the lines.
  const out = [];
  let i = 0;
  let j = 0;
  for (const op of ops) {
    if (op === " ") out.push({ op, text: x[i], old: ++i, new: ++j });
    else if (op === "-") out.push({ op, text: x[i], old: ++i, new: null });
    else out.push({ op, text: y[j], old: null, new: ++j });
  }
  return out;
}

/** The ops that turn `xs` into `ys`: a longest common subsequence, removals first. */
function middle(xs, ys, ops) {
  const n = xs.length;
  const m = ys.length;
  if (n === 0 || m === 0 || n * m > MAX_CELLS) {
    for (let i = 0; i < n; i++) ops.push("-");
    for (let j = 0; j < m; j++) ops.push("+");
    return;
  }
  // lcs[i][j]: the longest common subsequence of xs[i..] and ys[j..].
  const w = m + 1;
  const lcs = new Uint32Array((n + 1) * w);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * w + j] = xs[i] === ys[j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
    }
  }
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (xs[i] === ys[j]) { ops.push(" "); i++; j++; }
    else if (lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) { ops.push("-"); i++; }
    else { ops.push("+"); j++; }
  }
  for (; i < n; i++) ops.push("-");
  for (; j < m; j++) ops.push("+");
}

/**
 * Groups a diff into hunks with `context` kept lines around each change:
 * `{ header: "@@ -a,b +c,d @@", lines: [...] }`. No change, no hunks.
 */
export function hunks(lines, context = CONTEXT) {
  const out = [];
  let k = 0;
  while (k < lines.length) {
    if (lines[k].op === " ") { k++; continue; }
    const start = Math.max(0, k - context);
    let end = k;
    // Extend while the next change is close enough to share context.
    for (;;) {
      while (end < lines.length && lines[end].op !== " ") end++;
      let next = end;
      while (next < lines.length && lines[next].op === " ") next++;
      if (next < lines.length && next - end <= 2 * context) end = next;
      else { end = Math.min(lines.length, end + context); break; }
    }
    const part = lines.slice(start, end);
    out.push({ header: header(part, lines, start), lines: part });
    k = end;
  }
  return out;
}

function header(part, all, start) {
  const olds = part.filter((l) => l.old != null);
  const news = part.filter((l) => l.new != null);
  // An empty side is numbered after the line before it, as diff(1) does.
  const before = (key) => {
    for (let i = start - 1; i >= 0; i--) if (all[i][key] != null) return all[i][key];
    return 0;
  };
  const oldStart = olds.length ? olds[0].old : before("old");
  const newStart = news.length ? news[0].new : before("new");
  const range = (s, n) => (n === 1 ? `${s}` : `${s},${n}`);
  return `@@ -${range(oldStart, olds.length)} +${range(newStart, news.length)} @@`;
}

/** Counts of added and removed lines. */
export function stats(lines) {
  let added = 0;
  let removed = 0;
  for (const l of lines) {
    if (l.op === "+") added++;
    else if (l.op === "-") removed++;
  }
  return { added, removed };
}

function str(v) {
  return typeof v === "string" ? v : "";
}

function section(title, before, after, note) {
  const lines = diffLines(before, after);
  return { title, note, hunks: hunks(lines), ...stats(lines) };
}

/**
 * What a permission request's tool is about to do, or null when there is nothing better
 * to show than its input:
 * - `{ kind: "diff", path, sections: [{ title, note, hunks, added, removed }] }` for
 *   `Edit`, `MultiEdit`, `Write` and `NotebookEdit`;
 * - `{ kind: "command", command, description }` for `Bash`.
 */
export function toolReview(toolName, input) {
  if (!input || typeof input !== "object") return null;
  switch (toolName) {
    case "Edit":
      if (typeof input.old_string !== "string" || typeof input.new_string !== "string") return null;
      return {
        kind: "diff",
        path: str(input.file_path),
        sections: [section("", input.old_string, input.new_string, input.replace_all ? "every occurrence" : "")],
      };
    case "MultiEdit": {
      if (!Array.isArray(input.edits)) return null;
      const n = input.edits.length;
      return {
        kind: "diff",
        path: str(input.file_path),
        sections: input.edits.map((e, i) => section(n > 1 ? `Edit ${i + 1} of ${n}` : "", str(e?.old_string), str(e?.new_string), e?.replace_all ? "every occurrence" : "")),
      };
    }
    case "Write":
      if (typeof input.content !== "string") return null;
      return { kind: "diff", path: str(input.file_path), sections: [section("", "", input.content, "the whole file")] };
    case "NotebookEdit": {
      const mode = str(input.edit_mode) || "replace";
      const cell = input.cell_id != null ? `cell ${input.cell_id}` : "a new cell";
      const title = mode === "insert" ? `Insert ${input.cell_type ? `a ${input.cell_type} cell` : "a cell"}${input.cell_id != null ? ` after cell ${input.cell_id}` : ""}`
        : mode === "delete" ? `Delete ${cell}` : `Replace ${cell}`;
      const source = mode === "delete" ? "" : str(input.new_source);
      return { kind: "diff", path: str(input.notebook_path), sections: [section(title, "", source, mode === "replace" ? "the cell's new source" : "")] };
    }
    case "Bash":
      if (typeof input.command !== "string") return null;
      return { kind: "command", command: input.command, description: str(input.description) };
    default:
      return null;
  }
}
