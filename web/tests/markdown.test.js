// The Markdown renderer (web/markdown.js) under node, on a minimal DOM: what it renders,
// and that hostile input of 100 KB renders in linear time (the heading pattern used to
// backtrack cubically: one 4 KB line froze the tab for over 20 s).
// Runs with `node --test tests/markdown.test.js`; needs no server or browser.

import { test } from "node:test";
import assert from "node:assert/strict";

// ---- a minimal DOM: elements, text nodes, fragments -----------------------------------

class Node {
  constructor(nodeName) {
    this.nodeName = nodeName;
    this.childNodes = [];
    this.dataset = {};
    this.className = "";
  }
  get firstChild() {
    return this.childNodes[0] ?? null;
  }
  append(...nodes) {
    for (const n of nodes) {
      if (n.nodeName === "#document-fragment") this.childNodes.push(...n.childNodes.splice(0));
      else this.childNodes.push(n);
    }
  }
  removeChild(n) {
    this.childNodes.splice(this.childNodes.indexOf(n), 1);
    return n;
  }
  get textContent() {
    return this.nodeName === "#text" ? this.data : this.childNodes.map((c) => c.textContent).join("");
  }
  set textContent(v) {
    this.childNodes = [text(String(v))];
  }
}
const text = (data) => Object.assign(new Node("#text"), { data });

globalThis.document = {
  createDocumentFragment: () => new Node("#document-fragment"),
  createElement: (tag) => new Node(tag.toUpperCase()),
  createTextNode: text,
};

const { renderMarkdown } = await import("../markdown.js");

function render(md) {
  const root = new Node("DIV");
  root.append(renderMarkdown(md));
  return root;
}

function all(node, out = []) {
  for (const c of node.childNodes) {
    if (c.nodeName !== "#text") out.push(c);
    all(c, out);
  }
  return out;
}

const tags = (node) => all(node).map((e) => e.nodeName.toLowerCase());
const find = (node, tag) => all(node).filter((e) => e.nodeName === tag.toUpperCase());

// ---- what it renders ------------------------------------------------------------------

test("the supported constructs render as before", () => {
  const root = render([
    "# Title #", "", "para *em* **b** `c` <u>u</u> _i_ __B__ ~~s~~ \\*not em\\*", "",
    "```js", "<b>x</b>", "```", "",
    "- one", "- two", "  - nested", "", "1. first", "2. second", "", "> quote", "",
    "| a | b |", "|---|:-:|", "| 1 | 2 |", "", "---", "",
    "[bad](data:text/html,x) [good](https://example.com/a_(b)) https://example.org/x. `` a`b ``",
  ].join("\n"));
  const t = tags(root);
  for (const tag of ["h3", "em", "strong", "del", "code", "pre", "ul", "ol", "li", "blockquote", "table", "td", "th", "hr", "a"]) {
    assert.ok(t.includes(tag), `${tag} in ${t}`);
  }
  assert.equal(find(root, "h3")[0].textContent, "Title");
  assert.equal(find(root, "pre")[0].textContent, "<b>x</b>");
  assert.equal(find(root, "pre")[0].dataset.lang, "js");
  assert.deepEqual(find(root, "em").map((e) => e.textContent), ["em", "i"]);
  assert.deepEqual(find(root, "strong").map((e) => e.textContent), ["b", "B"]);
  assert.deepEqual(find(root, "a").map((a) => a.href), ["https://example.com/a_(b)", "https://example.org/x"]);
  assert.deepEqual(find(root, "code").map((e) => e.textContent), ["c", "<b>x</b>", "a`b"]);
  const all = root.textContent;
  for (const s of ["<u>u</u>", "*not em*", "[bad](data:text/html,x)", "https://example.org/x."]) {
    assert.ok(all.includes(s), `${s} in ${all}`);
  }
  assert.ok(!t.includes("u") && !t.includes("b"), t.join());
});

test("delimiters without a closer, and closers on another line, stay text", () => {
  const root = render("a **b\nc** d *e f_ g `h\ni` [j](k\n) ~~l");
  assert.deepEqual(tags(root).filter((t) => t !== "br"), ["p"]);
  assert.equal(root.textContent, "a **bc** d *e f_ g `hi` [j](k) ~~l");
  assert.equal(render("snake_case_name").textContent, "snake_case_name");
  assert.deepEqual(tags(render("snake_case_name")), ["p"]);
  assert.deepEqual(tags(render("2*3*4")), ["p", "em"]);
  assert.deepEqual(tags(render("**a *b* c**")), ["p", "strong", "em"]);
});

// ---- linear time on hostile input -----------------------------------------------------

const KB100 = 100 * 1024;
const fill = (unit, size = KB100) => unit.repeat(Math.ceil(size / unit.length)).slice(0, size);
const lines = (unit, width = 4096) => Array.from({ length: Math.ceil(KB100 / width) }, () => fill(unit, width)).join("\n");

const hostile = {
  "heading of #s and spaces": "#" + fill(" #"),
  "heading, 4 KB lines": lines("# "),
  "heading ending in text": "# " + fill("# ") + "x",
  "fence info with a late backtick": "```" + fill("a") + "`",
  "fence info of spaces": "```" + fill(" a") + "`",
  "rule-like line": fill("- ") + "x",
  "rule-like lines": lines("* "),
  "unclosed bold": fill("**a "),
  "unclosed italic": fill("*a "),
  "unclosed underscores": fill("__a "),
  "unclosed underscore": fill("_a "),
  "unclosed strike": fill("~~a "),
  "backtick runs of every length": Array.from({ length: 450 }, (_, i) => "`".repeat(i + 1)).join(" ").slice(0, KB100),
  "unclosed backticks": fill("`a"),
  "code span of spaces": "` " + fill(" a") + " `",
  "open brackets": fill("["),
  "brackets then a long destination": fill("[") + "a](" + fill("x"),
  "links without a closing parenthesis": fill("[a](x "),
  "links with unclosed titles": fill('[a](x "t '),
  "nested parentheses in destinations": "[a](" + fill("(x)") + " ",
  "URL schemes in a row": fill("http://"),
  "URL of trailing punctuation": "https://" + fill("."),
  "URLs of underscores": fill("https://a_"),
  "nested emphasis": fill("*_~~**") + "x" + fill("**~~_*"),
  "deep quotes": fill(">") + " x",
  "deep quotes, one a line": Array.from({ length: 3200 }, (_, i) => ">".repeat(i % 64) + " q").join("\n"),
  "deep lists": Array.from({ length: 320 }, (_, i) => " ".repeat(2 * i) + "- item").join("\n"),
  "table separators": "| a |\n" + fill("|-"),
  "table-like lines": lines("| - "),
  "escapes": fill("\\"),
  "mixed": fill("# *a _b `c [d](e **f ~~g http://h. > - 1. | --- "),
};

for (const [name, md] of Object.entries(hostile)) {
  test(`renders in linear time: ${name}`, () => {
    assert.ok(md.length >= KB100 * 0.9, `${name}: ${md.length} bytes`);
    const start = performance.now();
    const root = render(md);
    const ms = performance.now() - start;
    // Linear work on 100 KB takes milliseconds; the old patterns took minutes or more.
    assert.ok(ms < 1500, `${name}: ${ms.toFixed(0)} ms`);
    assert.ok(root.childNodes.length > 0);
  });
}

test("time grows linearly: 4x the input, not much more than 4x the time", () => {
  const time = (md) => {
    let best = Infinity;
    for (let n = 0; n < 3; n++) {
      const start = performance.now();
      render(md);
      best = Math.min(best, performance.now() - start);
    }
    return best;
  };
  for (const unit of ["# ", "**a ", "[", "http://", "- "]) {
    const small = time(fill(unit, KB100 / 4));
    const big = time(fill(unit, KB100));
    assert.ok(big < Math.max(small, 2) * 12, `${JSON.stringify(unit)}: ${small.toFixed(1)} ms → ${big.toFixed(1)} ms`);
  }
});
