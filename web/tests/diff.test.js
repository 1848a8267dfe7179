// The diff module on its own, under node: `node --test tests/diff.test.js`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { diffLines, hunks, splitLines, toolReview, MAX_CELLS } from "../diff.js";

const ops = (lines) => lines.map((l) => `${l.op}${l.text}`);

test("lines split on newlines; a final newline starts no line; CRLF is read as LF", () => {
  assert.deepEqual(splitLines(""), []);
  assert.deepEqual(splitLines("a\nb\n"), ["a", "b"]);
  assert.deepEqual(splitLines("a\r\nb"), ["a", "b"]);
  assert.deepEqual(splitLines("a\n\n"), ["a", ""]);
});

test("a one-line change in the middle is a removal then an addition, numbered on both sides", () => {
  const d = diffLines("a\nb\nc\n", "a\nB\nc\n");
  assert.deepEqual(ops(d), [" a", "-b", "+B", " c"]);
  assert.deepEqual(d.map((l) => [l.old, l.new]), [[1, 1], [2, null], [null, 2], [3, 3]]);
});

test("the diff is a longest common subsequence, not a prefix/suffix trim", () => {
  const d = diffLines("x\na\nb\nc\ny", "a\nz\nb\nc");
  assert.deepEqual(ops(d), ["-x", " a", "+z", " b", " c", "-y"]);
});

test("a new file is all additions under a @@ -0,0 header", () => {
  const [h] = hunks(diffLines("", "one\ntwo\n"));
  assert.equal(h.header, "@@ -0,0 +1,2 @@");
  assert.deepEqual(ops(h.lines), ["+one", "+two"]);
});

test("hunks keep three lines of context and merge changes that are close", () => {
  const old = Array.from({ length: 30 }, (_, i) => `line ${i + 1}`);
  const neu = old.slice();
  neu[4] = "changed 5";
  neu[8] = "changed 9"; // 3 kept lines apart: one hunk
  neu[24] = "changed 25"; // far away: its own hunk
  const hs = hunks(diffLines(old.join("\n"), neu.join("\n")));
  assert.equal(hs.length, 2);
  assert.equal(hs[0].header, "@@ -2,11 +2,11 @@");
  assert.equal(hs[0].lines[0].text, "line 2");
  assert.equal(hs[0].lines.at(-1).text, "line 12");
  assert.equal(hs[1].header, "@@ -22,7 +22,7 @@");
  assert.deepEqual(hunks(diffLines("same\n", "same\n")), []);
});

test("huge changes are not minimised but still correct", () => {
  const n = Math.ceil(Math.sqrt(MAX_CELLS)) + 10;
  const a = Array.from({ length: n }, (_, i) => `a${i}`).join("\n");
  const b = Array.from({ length: n }, (_, i) => `b${i}`).join("\n");
  const d = diffLines(`keep\n${a}\nend`, `keep\n${b}\nend`);
  assert.equal(d.length, 2 * n + 2);
  assert.equal(d.filter((l) => l.op === "-").length, n);
  assert.equal(d[1].op, "-");
  assert.equal(d[n + 1].op, "+");
});

test("edit tools become diffs; Bash shows its command and description", () => {
  const edit = toolReview("Edit", { file_path: "/src/a.rs", old_string: "let x = 1;", new_string: "let x = 2;", replace_all: true });
  assert.equal(edit.kind, "diff");
  assert.equal(edit.path, "/src/a.rs");
  assert.equal(edit.sections[0].note, "every occurrence");
  assert.deepEqual(ops(edit.sections[0].hunks[0].lines), ["-let x = 1;", "+let x = 2;"]);
  assert.equal(edit.sections[0].added, 1);
  assert.equal(edit.sections[0].removed, 1);

  const multi = toolReview("MultiEdit", { file_path: "/b", edits: [{ old_string: "a", new_string: "b" }, { old_string: "c", new_string: "" }] });
  assert.deepEqual(multi.sections.map((s) => s.title), ["Edit 1 of 2", "Edit 2 of 2"]);
  assert.deepEqual(ops(multi.sections[1].hunks[0].lines), ["-c"]);

  const write = toolReview("Write", { file_path: "/new.txt", content: "hello\nworld\n" });
  assert.equal(write.sections[0].added, 2);

  const nb = toolReview("NotebookEdit", { notebook_path: "/n.ipynb", cell_id: "c1", new_source: "print(1)", edit_mode: "replace" });
  assert.equal(nb.path, "/n.ipynb");
  assert.equal(nb.sections[0].title, "Replace cell c1");
  assert.equal(toolReview("NotebookEdit", { notebook_path: "/n", cell_id: "c2", edit_mode: "delete" }).sections[0].title, "Delete cell c2");

  assert.deepEqual(toolReview("Bash", { command: "rm -rf build && make", description: "Rebuild" }), { kind: "command", command: "rm -rf build && make", description: "Rebuild" });
  assert.equal(toolReview("Read", { file_path: "/x" }), null);
  assert.equal(toolReview("Edit", { file_path: "/x" }), null);
  assert.equal(toolReview("Edit", null), null);
});
