// A small, safe Markdown subset for agent text: paragraphs, headings, fenced code,
// inline code, bold/italic/strike, lists, quotes, rules, tables and http(s) links.
// The output is built from DOM nodes only; all text goes into text nodes, so raw HTML
// in the source is shown literally and can never reach the DOM as markup. Link targets
// must parse as absolute http(s) URLs; anything else stays text.

// Every pattern here runs in time linear in its line: block syntax is recognized by small
// hand-written scanners or by regular expressions anchored at the line's start whose
// parts cannot overlap, and inline syntax by one left-to-right scan (below). Nesting
// (quotes, lists, emphasis) is capped, so hostile input costs O(length), never more.
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
/** Block nesting (quotes in lists in quotes…) beyond this is shown as plain text. */
const MAX_BLOCK_DEPTH = 16;
/** Inline nesting (emphasis in links in emphasis…) beyond this is shown as plain text. */
const MAX_INLINE_DEPTH = 8;

/** An opening code fence: `{ fence, lang }`, or null. */
function fenceOf(line) {
  const m = /^ {0,3}(`{3,}|~{3,})/.exec(line);
  if (!m) return null;
  const rest = line.slice(m[0].length);
  if (rest.includes("`")) return null;
  return { fence: m[1], lang: /^[^\s`]*/.exec(rest.trimStart())[0] };
}

/** A heading line: `{ level, text }`, or null. */
function headingOf(line) {
  const m = /^ {0,3}(#{1,6})(?=\s)/.exec(line);
  if (!m) return null;
  // Drop the optional closing sequence: trailing spaces, #s, spaces.
  let end = line.length;
  while (end > m[0].length && /\s/.test(line[end - 1])) end--;
  while (end > m[0].length && line[end - 1] === "#") end--;
  return { level: m[1].length, text: line.slice(m[0].length, end).trim() };
}

/** A thematic break: three or more of the same `-`, `*` or `_`, spaces between. */
function isRule(line) {
  let at = 0;
  while (line[at] === " ") at++;
  if (at > 3) return false;
  const c = line[at];
  if (c !== "-" && c !== "*" && c !== "_") return false;
  let count = 0;
  for (let i = at; i < line.length; i++) {
    if (line[i] === c) count++;
    else if (!/\s/.test(line[i])) return false;
  }
  return count >= 3;
}

/** A table's delimiter row: `| --- | :-: |`, pipes at the ends optional. */
function isTableSep(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|")) s = s.slice(0, -1);
  return s.split("|").every((c) => /^:?-+:?$/.test(c.trim()));
}

/** Renders Markdown text into a DocumentFragment. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  blocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"), frag);
  return frag;
}

function el(tag, cls) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  return e;
}

function indentOf(line) {
  return line.match(/^\s*/)[0].replace(/\t/g, "    ").length;
}

function startsBlock(line) {
  return fenceOf(line) || headingOf(line) || isRule(line) || QUOTE.test(line) || ITEM.test(line);
}

function blocks(lines, parent, depth = 0) {
  if (depth >= MAX_BLOCK_DEPTH) {
    // Too deep to be anything but an attack: the rest is one paragraph of text.
    const p = el("p");
    text(p, lines.join("\n"));
    parent.append(p);
    return;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }
    let m;
    const f = fenceOf(line);
    if (f) {
      const fence = f.fence;
      const body = [];
      i++;
      while (i < lines.length && !(lines[i].trim().startsWith(fence) && lines[i].trim().replace(/[`~]/g, "") === "")) {
        body.push(lines[i]);
        i++;
      }
      i++; // the closing fence (or the end)
      const pre = el("pre", "code");
      const code = el("code");
      if (f.lang) pre.dataset.lang = f.lang.slice(0, 30);
      code.textContent = body.join("\n");
      pre.append(code);
      parent.append(pre);
      continue;
    }
    const heading = headingOf(line);
    if (heading) {
      const h = el(`h${Math.min(6, heading.level + 2)}`);
      inline(heading.text, h);
      parent.append(h);
      i++;
      continue;
    }
    if (isRule(line)) {
      parent.append(el("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = lines[i].match(QUOTE))) {
        inner.push(m[1]);
        i++;
      }
      const q = el("blockquote");
      blocks(inner, q, depth + 1);
      parent.append(q);
      continue;
    }
    if ((m = line.match(ITEM))) {
      i = list(lines, i, parent, depth);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && isTableSep(lines[i + 1]) && lines[i + 1].includes("-")) {
      i = table(lines, i, parent);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !(para.length && startsBlock(lines[i]))) {
      para.push(lines[i].trim());
      i++;
    }
    const p = el("p");
    inline(para.join("\n"), p);
    parent.append(p);
  }
}

function list(lines, i, parent, depth) {
  const first = lines[i].match(ITEM);
  const base = indentOf(first[1]);
  const ordered = /\d/.test(first[2]);
  const listEl = el(ordered ? "ol" : "ul");
  if (ordered) {
    const start = parseInt(first[2], 10);
    if (start !== 1) listEl.start = start;
  }
  while (i < lines.length) {
    const m = lines[i].match(ITEM);
    if (!m || indentOf(m[1]) !== base || /\d/.test(m[2]) !== ordered) break;
    const content = [m[3]];
    const contentIndent = base + m[2].length + 1;
    i++;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        // A blank line continues the item only if indented content follows.
        const next = lines[i + 1];
        if (next !== undefined && next.trim() && indentOf(next) >= contentIndent) {
          content.push("");
          i++;
          continue;
        }
        break;
      }
      const ind = indentOf(line);
      if (ind <= base && (ITEM.test(line) || startsBlock(line))) break;
      content.push(line.replace(/^\s+/, (s) => s.replace(/\t/g, "    ").slice(Math.min(ind, contentIndent))));
      i++;
    }
    const li = el("li");
    const frag = document.createDocumentFragment();
    blocks(content, frag, depth + 1);
    // A single paragraph (the usual case) goes in without its <p>.
    if (frag.firstChild && frag.firstChild.nodeName === "P") {
      const p = frag.firstChild;
      frag.removeChild(p);
      li.append(...p.childNodes);
    }
    li.append(frag);
    listEl.append(li);
    // Blank lines between items keep the list going.
    let j = i;
    while (j < lines.length && !lines[j].trim()) j++;
    const again = j < lines.length && lines[j].match(ITEM);
    if (j > i && again && indentOf(again[1]) === base && /\d/.test(again[2]) === ordered) i = j;
  }
  parent.append(listEl);
  return i;
}

function cells(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function table(lines, i, parent) {
  const wrap = el("div", "table");
  const t = el("table");
  const head = el("tr");
  for (const c of cells(lines[i])) {
    const th = el("th");
    inline(c, th);
    head.append(th);
  }
  const thead = el("thead");
  thead.append(head);
  t.append(thead);
  const tbody = el("tbody");
  i += 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
    const tr = el("tr");
    for (const c of cells(lines[i])) {
      const td = el("td");
      inline(c, td);
      tr.append(td);
    }
    tbody.append(tr);
    i++;
  }
  t.append(tbody);
  wrap.append(t);
  parent.append(wrap);
  return i;
}

/** An absolute http(s) URL, or null. */
export function safeUrl(raw) {
  try {
    const u = new URL(raw);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

function text(parent, s) {
  const parts = s.split("\n");
  parts.forEach((part, n) => {
    if (n) parent.append(el("br"));
    if (part) parent.append(document.createTextNode(part));
  });
}

function link(parent, href, label, plain, depth) {
  const a = el("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  if (plain) a.textContent = label;
  else inline(label, a, true, depth + 1);
  parent.append(a);
}

const ESCAPABLE = "\\`*_{}[]()#+-.!>~|";
const URL_END = ".,;:!?)]}*_~";
const isSpace = (c) => c !== undefined && /\s/.test(c);
const nonSpace = (c) => c !== undefined && !/\s/.test(c);
const isWord = (c) => c !== undefined && /\w/.test(c);
const urlChar = (c) => c !== undefined && !/[\s<>"'`]/.test(c);

/**
 * The positions `j` of `s` where `test(j)` holds, asked for in increasing order: `next(min)`
 * is the first such position at or after `min` (-1 if none). `min` never decreases during
 * one scan, so all the calls together cost O(length).
 */
function positions(s, test) {
  const found = [];
  for (let j = 0; j < s.length; j++) if (test(j)) found.push(j);
  let k = 0;
  return (min) => {
    while (k < found.length && found[k] < min) k++;
    return k < found.length ? found[k] : -1;
  };
}

/**
 * The inline scanner of one string. Syntax, tried at each position in this order:
 * backslash escape, code span, `**`/`__` bold, `~~` strike, `*`/`_` italic, link, bare
 * URL; a delimiter without its closer on the same line is text. Closers are found with
 * forward-only cursors, so each call is linear in `s` (plus its nested calls, whose depth
 * is capped).
 */
function scanner(s) {
  const lazy = new Map();
  const find = (name, test) => {
    if (!lazy.has(name)) lazy.set(name, positions(s, test));
    return lazy.get(name);
  };
  const newline = (min) => {
    const n = find("nl", (j) => s[j] === "\n")(min);
    return n < 0 ? s.length : n;
  };
  // A closer at `j` for an opener at `i` must come before the end of `i`'s line.
  const onLine = (i, j) => j >= 0 && j < newline(i);
  // Backtick runs: opener and closer are runs of the same length.
  let runs = null;
  const runAt = (i) => {
    let j = i;
    while (s[j] === "`") j++;
    return j - i;
  };
  const nextRun = (len, min) => {
    if (!runs) {
      // Every maximal run, once: its length → its starts, in order.
      const starts = new Map();
      for (let j = 0; j < s.length; ) {
        if (s[j] !== "`") { j++; continue; }
        const n = runAt(j);
        if (!starts.has(n)) starts.set(n, []);
        starts.get(n).push(j);
        j += n;
      }
      runs = new Map([...starts].map(([n, at]) => {
        let k = 0;
        return [n, (m) => {
          while (k < at.length && at[k] < m) k++;
          return k < at.length ? at[k] : -1;
        }];
      }));
    }
    return runs.get(len)?.(min) ?? -1;
  };
  // A link destination is parsed once per closing bracket, however many `[` share it.
  let destAt = -1;
  let destEnd = -1;
  let destHref = null;
  const destination = (open) => {
    if (open === destAt) return [destEnd, destHref];
    destAt = open;
    destEnd = -1;
    destHref = null;
    let j = open + 1;
    while (isSpace(s[j])) j++;
    if (s[j] === "<") j++;
    const start = j;
    const plain = (c) => c !== undefined && !/[\s()<>]/.test(c);
    while (plain(s[j])) j++;
    if (j === start) return [-1, null];
    while (s[j] === "(") {
      let k = j + 1;
      while (plain(s[k])) k++;
      if (s[k] !== ")") break;
      j = k + 1;
      while (plain(s[j])) j++;
    }
    const href = s.slice(start, j);
    if (s[j] === ">") j++;
    let k = j;
    while (isSpace(s[k])) k++;
    if (k > j && s[k] === '"') {
      // A title: to the next quote on the same line (titles of different links never
      // overlap, since each starts at a quote).
      let close = k + 1;
      while (close < s.length && s[close] !== '"' && s[close] !== "\n") close++;
      if (s[close] === '"') j = close + 1;
    }
    while (isSpace(s[j])) j++;
    if (s[j] !== ")") return [-1, null];
    destEnd = j + 1;
    destHref = href;
    return [destEnd, destHref];
  };
  // A bare URL runs to the end of its run of URL characters, minus trailing punctuation;
  // every `http` inside one run shares that end.
  let runFrom = -1;
  let runEnd = -1;
  let runLast = -1;
  const urlEnd = (from) => {
    if (from >= runEnd || from < runFrom) {
      runFrom = from;
      runEnd = from;
      while (urlChar(s[runEnd])) runEnd++;
      runLast = runEnd - 1;
      while (runLast >= from && URL_END.includes(s[runLast])) runLast--;
    }
    return runLast >= from ? runLast + 1 : -1;
  };

  // Each returns `[end, node kind, inner text]` for a match at `i`, or null.
  return {
    code(i) {
      const len = runAt(i);
      const close = nextRun(len, i + len + 1);
      if (!onLine(i, close)) return { literal: len };
      return { end: close + len, body: s.slice(i + len, close) };
    },
    pair(i, delim, closerTest, openerOk) {
      const w = delim.length;
      if (!s.startsWith(delim, i) || !openerOk(i)) return null;
      const close = find(`pair${delim}`, (j) => s.startsWith(delim, j) && closerTest(j))(i + w + 1);
      if (!onLine(i, close)) return null;
      return { end: close + w, inner: s.slice(i + w, close) };
    },
    link(i) {
      const close = find("]", (j) => s[j] === "]")(i + 1);
      if (close <= i + 1 || !onLine(i, close) || s[close + 1] !== "(") return null;
      const [end, href] = destination(close + 1);
      if (end < 0) return null;
      return { end, label: s.slice(i + 1, close), href, raw: s.slice(i, end) };
    },
    url(i) {
      const scheme = s.startsWith("https://", i) ? 8 : s.startsWith("http://", i) ? 7 : 0;
      if (!scheme) return null;
      const end = urlEnd(i + scheme);
      return end < 0 ? null : { end, href: s.slice(i, end) };
    },
  };
}

/** Renders inline Markdown of `s` into `parent`. */
export function inline(s, parent, inLink = false, depth = 0) {
  if (depth >= MAX_INLINE_DEPTH) {
    text(parent, s);
    return;
  }
  const scan = scanner(s);
  let at = 0; // start of the pending text
  let i = 0;
  const flush = (to) => {
    if (to > at) text(parent, s.slice(at, to));
  };
  const wrap = (tag, inner, end) => {
    flush(i);
    const e = el(tag);
    inline(inner, e, inLink, depth + 1);
    parent.append(e);
    at = i = end;
  };
  while (i < s.length) {
    const c = s[i];
    if (c === "\\" && i + 1 < s.length && ESCAPABLE.includes(s[i + 1])) {
      flush(i);
      text(parent, s[i + 1]);
      at = i = i + 2;
      continue;
    }
    if (c === "`") {
      const m = scan.code(i);
      if (m.literal) {
        i += m.literal;
        continue;
      }
      flush(i);
      const code = el("code");
      let body = m.body;
      if (body.length > 2 && body[0] === " " && body.endsWith(" ") && /[^ ]/.test(body)) body = body.slice(1, -1);
      code.textContent = body;
      parent.append(code);
      at = i = m.end;
      continue;
    }
    let m = null;
    if (c === "*") {
      m = scan.pair(i, "**", (j) => nonSpace(s[j - 1]), (o) => nonSpace(s[o + 2]));
      if (m) { wrap("strong", m.inner, m.end); continue; }
      m = scan.pair(i, "*", (j) => nonSpace(s[j - 1]) && s[j - 1] !== "*" && s[j + 1] !== "*",
        (o) => nonSpace(s[o + 1]) && s[o + 1] !== "*");
      if (m) { wrap("em", m.inner, m.end); continue; }
    } else if (c === "_") {
      m = scan.pair(i, "__", (j) => nonSpace(s[j - 1]) && !isWord(s[j + 2]),
        (o) => !isWord(s[o - 1]) && nonSpace(s[o + 2]));
      if (m) { wrap("strong", m.inner, m.end); continue; }
      m = scan.pair(i, "_", (j) => nonSpace(s[j - 1]) && s[j - 1] !== "_" && !isWord(s[j + 1]),
        (o) => !isWord(s[o - 1]) && nonSpace(s[o + 1]) && s[o + 1] !== "_");
      if (m) { wrap("em", m.inner, m.end); continue; }
    } else if (c === "~") {
      m = scan.pair(i, "~~", (j) => nonSpace(s[j - 1]), (o) => nonSpace(s[o + 2]));
      if (m) { wrap("del", m.inner, m.end); continue; }
    } else if (c === "[") {
      m = scan.link(i);
      if (m) {
        flush(i);
        const href = inLink ? null : safeUrl(m.href);
        if (href) link(parent, href, m.label, false, depth);
        else text(parent, m.raw);
        at = i = m.end;
        continue;
      }
    } else if (c === "h") {
      m = scan.url(i);
      if (m) {
        flush(i);
        const href = inLink ? null : safeUrl(m.href);
        if (href) link(parent, href, m.href, true, depth);
        else text(parent, m.href);
        at = i = m.end;
        continue;
      }
    }
    i++;
  }
  flush(s.length);
}
