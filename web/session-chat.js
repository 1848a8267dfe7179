// The conversation in the transcript: the user's messages, the assistant's (text,
// thinking, tool calls, an error), and the assistant's text while it streams in
// (`stream_event`), shown in a live block that the final message replaces.

import { h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { toolResult, toolUse } from "./session-tools.js";

/** A user's message as a bubble. */
export function userBubble(v, text) {
  return v.log.append(h("div", { class: "msg user" }, h("div", { class: "md" }, renderMarkdown(text))));
}

function assistantText(v, text, ev) {
  return v.log.append(h("div", { class: `msg assistant${ev.parent_tool_use_id ? " nested" : ""}` },
    h("div", { class: "md" }, renderMarkdown(text))));
}

/** `user`: a prompt (from anyone), or the results of tool calls. */
export function onUser(v, ev) {
  const content = ev.message?.content;
  if (typeof content === "string") {
    if (content.trim()) userBubble(v, content).classList.toggle("meta", !!(ev.isSynthetic || ev.isMeta));
    return;
  }
  if (!Array.isArray(content)) return;
  const texts = [];
  for (const block of content) {
    if (block?.type === "tool_result") toolResult(v, block);
    else if (block?.type === "text" && typeof block.text === "string") texts.push(block.text);
    else if (block?.type === "image") texts.push("[image]");
    else if (block?.type === "document") texts.push("[document]");
  }
  if (texts.length) userBubble(v, texts.join("\n\n")).classList.toggle("meta", !!(ev.isSynthetic || ev.isMeta));
}

/** `assistant`: the final message, replacing what streamed in. */
export function onAssistant(v, ev) {
  stopTyping(v);
  const content = ev.message?.content;
  const blocks = typeof content === "string" ? [{ type: "text", text: content }] : Array.isArray(content) ? content : [];
  for (const block of blocks) {
    if (!block || typeof block !== "object") continue;
    if (block.type === "text" && block.text) assistantText(v, block.text, ev);
    else if (block.type === "thinking" && block.thinking) {
      v.log.append(h("details", { class: "msg thinking" }, h("summary", null, "Thinking"), h("div", { class: "thought" }, block.thinking)));
    } else if (block.type === "tool_use" || block.type === "server_tool_use") toolUse(v, block, ev);
  }
  if (ev.error) {
    const text = blocks.filter((b) => b?.type === "text").map((b) => b.text).join("\n");
    v.log.errorBlock(`Agent error: ${String(ev.error)}`, text ? null : "The model request failed.");
  }
}

/** `stream_event`: text as it is generated, in the live typing block. */
export function onStream(v, ev) {
  const { st } = v;
  const e = ev.event;
  if (!e || typeof e !== "object") return;
  if (e.type === "message_start") {
    if (st.typing) st.typing.blocks = [];
    return;
  }
  let text;
  let index = Number.isInteger(e.index) ? e.index : 0;
  if (e.type === "content_block_start" && e.content_block?.type === "text") text = e.content_block.text || "";
  else if (e.type === "content_block_delta" && e.delta?.type === "text_delta" && typeof e.delta.text === "string") text = e.delta.text;
  else return;
  if (!st.typing) {
    const body = h("div", { class: "md" });
    const el = h("div", { class: "msg assistant typing", "aria-busy": "true" }, body);
    v.log.appendLive(el);
    st.typing = { el, body, blocks: [], queued: false };
  }
  const t = st.typing;
  const cumulative = st.v2; // v2 text deltas are snapshots of the block so far
  if (e.type === "content_block_start") t.blocks[index] = text;
  else t.blocks[index] = cumulative ? text : (t.blocks[index] || "") + text;
  if (!t.queued) {
    t.queued = true;
    requestAnimationFrame(() => {
      t.queued = false;
      if (st.typing !== t) return;
      t.body.replaceChildren(renderMarkdown(t.blocks.filter(Boolean).join("\n\n")));
      v.log.scrollDown();
    });
  }
}

/** Removes the live typing block. */
export function stopTyping(v) {
  if (!v.st.typing) return;
  v.st.typing.el.remove();
  v.st.typing = null;
}
