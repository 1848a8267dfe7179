// A small, safe Markdown subset for agent text: paragraphs, headings, fenced code,
// inline code, bold/italic/strike, lists, quotes, rules, tables and http(s) links.
// The output is built from DOM nodes only; all text goes into text nodes, so raw HTML
// in the source is shown literally and can never reach the DOM as markup. Link targets
// must parse as absolute http(s) URLs; anything else stays text.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;

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
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function blocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }
    let m;
    if ((m = line.match(FENCE))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !(lines[i].trim().startsWith(fence) && lines[i].trim().replace(/[`~]/g, "") === "")) {
        body.push(lines[i]);
        i++;
      }
      i++; // the closing fence (or the end)
      const pre = el("pre", "code");
      const code = el("code");
      if (m[2]) pre.dataset.lang = m[2].slice(0, 30);
      code.textContent = body.join("\n");
      pre.append(code);
      parent.append(pre);
      continue;
    }
    if ((m = line.match(HEADING))) {
      const h = el(`h${Math.min(6, m[1].length + 2)}`);
      inline(m[2], h);
      parent.append(h);
      i++;
      continue;
    }
    if (RULE.test(line)) {
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
      blocks(inner, q);
      parent.append(q);
      continue;
    }
    if ((m = line.match(ITEM))) {
      i = list(lines, i, parent);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
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

function list(lines, i, parent) {
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
    blocks(content, frag);
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

// One pass over a line's inline syntax; the first alternative that matches wins.
const INLINE = new RegExp(
  [
    /\\([\\`*_{}[\]()#+\-.!>~|])/, // 1: escaped character
    /(`+)([^\n]*?[^`\n]|[^`\n])\2(?!`)/, // 2,3: code span
    /\*\*(?=\S)([^\n]*?\S)\*\*/, // 4: bold
    /(?<![\w])__(?=\S)([^\n]*?\S)__(?![\w])/, // 5: bold
    /~~(?=\S)([^\n]*?\S)~~/, // 6: strike
    /\*(?=[^\s*])([^\n]*?[^\s*])\*(?!\*)/, // 7: italic
    /(?<![\w])_(?=[^\s_])([^\n]*?[^\s_])_(?![\w])/, // 8: italic
    /\[([^\]\n]+)\]\(\s*<?([^\s()<>]+(?:\([^\s()<>]*\)[^\s()<>]*)*)>?(?:\s+"[^"\n]*")?\s*\)/, // 9,10: link
    /(https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}*_~])/, // 11: bare URL
  ]
    .map((r) => r.source)
    .join("|"),
  "g",
);

function text(parent, s) {
  const parts = s.split("\n");
  parts.forEach((part, n) => {
    if (n) parent.append(el("br"));
    if (part) parent.append(document.createTextNode(part));
  });
}

function link(parent, href, label, plain) {
  const a = el("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  if (plain) a.textContent = label;
  else inline(label, a, true);
  parent.append(a);
}

/** Renders inline Markdown of `s` into `parent`. */
export function inline(s, parent, inLink = false) {
  const re = new RegExp(INLINE.source, "g");
  let at = 0;
  let m;
  while ((m = re.exec(s))) {
    if (m.index > at) text(parent, s.slice(at, m.index));
    at = m.index + m[0].length;
    if (m[1] !== undefined) {
      text(parent, m[1]);
    } else if (m[2] !== undefined) {
      const c = el("code");
      let body = m[3];
      if (/^ .*[^ ].* $/.test(body)) body = body.slice(1, -1);
      c.textContent = body;
      parent.append(c);
    } else if (m[4] !== undefined || m[5] !== undefined) {
      const b = el("strong");
      inline(m[4] ?? m[5], b, inLink);
      parent.append(b);
    } else if (m[6] !== undefined) {
      const d = el("del");
      inline(m[6], d, inLink);
      parent.append(d);
    } else if (m[7] !== undefined || m[8] !== undefined) {
      const e = el("em");
      inline(m[7] ?? m[8], e, inLink);
      parent.append(e);
    } else if (m[9] !== undefined) {
      const href = inLink ? null : safeUrl(m[10]);
      if (href) link(parent, href, m[9]);
      else text(parent, m[0]);
    } else if (m[11] !== undefined) {
      const href = inLink ? null : safeUrl(m[11]);
      if (href) link(parent, href, m[11], true);
      else text(parent, m[0]);
    }
  }
  if (at < s.length) text(parent, s.slice(at));
}
