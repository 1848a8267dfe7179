// Tool calls in the transcript: a collapsed block per `tool_use` with its input, filled
// in by its `tool_result` (which may arrive first) and by `tool_progress`.

import { h, pretty } from "./dom.js";

const MAX_SHOWN = 20000; // characters of one tool result shown

function toolSummary(name, input) {
  if (!input || typeof input !== "object") return "";
  const v = input.command ?? input.pattern ?? input.file_path ?? input.path ?? input.url ?? input.query ?? input.description ?? input.prompt;
  return typeof v === "string" ? v.split("\n")[0].slice(0, 120) : "";
}

/** Shows a `tool_use` block of an assistant message. */
export function toolUse(v, block, ev) {
  const { st } = v;
  const name = String(block.name || "tool");
  const status = h("span", { class: "tool-status" }, "running");
  const result = h("div", { class: "tool-result" });
  const el = v.log.append(h("details", { class: `msg tool${ev.parent_tool_use_id ? " nested" : ""}`, dataset: { toolUseId: String(block.id || "") } },
    h("summary", null,
      h("span", { class: "tool-name" }, name),
      h("span", { class: "tool-arg mono" }, toolSummary(name, block.input)),
      status),
    h("div", { class: "label" }, "Input"),
    h("pre", { class: "json" }, pretty(block.input ?? {})),
    result));
  const t = { el, result, status, name };
  if (block.id) {
    const early = st.tools.get(block.id);
    st.tools.set(block.id, t);
    if (early?.pendingResult) toolResult(v, early.pendingResult);
  }
}

function resultText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((c) => (c?.type === "text" ? c.text : c?.type === "image" ? "[image]" : pretty(c))).join("\n");
  }
  return content == null ? "" : pretty(content);
}

/** Fills in a tool's block from a `tool_result` block of a user message. */
export function toolResult(v, block) {
  const t = v.st.tools.get(block.tool_use_id);
  if (!t?.el) {
    // The result came before its call (or the call is not in view): keep it for later.
    v.st.tools.set(block.tool_use_id, { pendingResult: block });
    return;
  }
  let text = resultText(block.content);
  if (text.length > MAX_SHOWN) text = `${text.slice(0, MAX_SHOWN)}\n… (${text.length - MAX_SHOWN} more characters)`;
  t.result.replaceChildren(
    h("div", { class: "label" }, block.is_error ? "Error" : "Result"),
    h("pre", { class: block.is_error ? "out err" : "out" }, text || "(empty)"));
  t.status.textContent = block.is_error ? "error" : "done";
  t.status.className = `tool-status ${block.is_error ? "err" : "ok"}`;
  t.el.classList.toggle("failed", !!block.is_error);
}

/** `tool_progress`: how long a running tool has been at it. */
export function onToolProgress(v, ev) {
  const t = v.st.tools.get(ev.tool_use_id);
  if (t?.status && t.status.textContent !== "done") t.status.textContent = `running ${Math.round(ev.elapsed_time_seconds || 0)} s`;
}

/** At the end of a turn, tools still shown as running got no result. */
export function markUnfinished(v) {
  for (const t of v.st.tools.values()) {
    if (t.status && t.status.textContent === "running") t.status.textContent = "no result";
  }
}
