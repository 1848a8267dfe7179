// The permission card's view of what a tool is about to do (see diff.js): a unified diff
// with line numbers, colour by sign only (no syntax highlighting), long diffs collapsed;
// a command in full. Every piece of text is a text node, never HTML.

import { h } from "./dom.js";
import { toolReview } from "./diff.js";

/** Diff lines shown before the rest waits behind "Show … more lines". */
export const COLLAPSE_AT = 30;

/** A node showing what `toolName` will do with `input`, or null for other tools. */
export function reviewNode(toolName, input) {
  const review = toolReview(toolName, input);
  if (!review) return null;
  if (review.kind === "command") {
    return h("div", { class: "review command" },
      review.description && h("p", { class: "perm-desc review-desc" }, review.description),
      h("pre", { class: "cmd wrap" }, h("code", null, review.command)));
  }
  const rows = [];
  for (const s of review.sections) {
    if (s.title || s.note) {
      rows.push(h("div", { class: "diff-title" }, [s.title, s.note && `(${s.note})`].filter(Boolean).join(" ")));
    }
    if (!s.hunks.length) rows.push(h("div", { class: "diff-title muted" }, "No change"));
    for (const hunk of s.hunks) {
      rows.push(h("div", { class: "diff-hunk" }, hunk.header));
      for (const l of hunk.lines) {
        const kind = l.op === "+" ? "add" : l.op === "-" ? "del" : "ctx";
        rows.push(h("div", { class: `diff-line ${kind}` },
          h("span", { class: "ln", "aria-hidden": "true" }, l.old ?? ""),
          h("span", { class: "ln", "aria-hidden": "true" }, l.new ?? ""),
          h("span", { class: "sign", "aria-hidden": "true" }, l.op),
          h("span", { class: "code" }, l.text)));
      }
    }
  }
  const added = review.sections.reduce((n, s) => n + s.added, 0);
  const removed = review.sections.reduce((n, s) => n + s.removed, 0);
  const head = h("div", { class: "diff-head" },
    h("span", { class: "mono diff-path" }, review.path || "(no path)"),
    h("span", { class: "diff-stat" }, h("span", { class: "add" }, `+${added}`), " ", h("span", { class: "del" }, `−${removed}`)));
  const body = h("div", { class: "diff-body", role: "table", "aria-label": `Changes to ${review.path || "the file"}` }, rows.slice(0, COLLAPSE_AT));
  const box = h("div", { class: "review diff" }, head, body);
  if (rows.length > COLLAPSE_AT) {
    const rest = rows.slice(COLLAPSE_AT);
    const more = h("button", { type: "button", class: "diff-more", onclick: () => {
      body.append(...rest);
      more.remove();
    } }, `Show ${rest.length} more lines`);
    box.append(more);
  }
  return box;
}
