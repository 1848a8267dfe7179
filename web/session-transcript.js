// The transcript of a session's page: the scrolling list of what happened, where each
// entry goes (above the live typing block, if there is one) and the scroll position,
// which follows the bottom while the reader is there.

import { h } from "./dom.js";

/** The transcript element and how to add to it; `st.typing` is the live block. */
export function createTranscript(st) {
  const el = h("main", { class: "log", "aria-live": "polite", "aria-label": "Transcript" });
  const empty = h("p", { class: "muted empty" }, "Nothing here yet.");
  el.append(empty);
  let stick = true; // keep the log scrolled to the bottom
  el.addEventListener("scroll", () => {
    stick = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  }, { passive: true });

  let scrollQueued = false;
  function scrollDown(force) {
    if (force) stick = true;
    if (!stick || scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      if (stick) el.scrollTop = el.scrollHeight;
    });
  }

  /** Appends to the transcript, above the live typing block if there is one. */
  function append(node) {
    empty.remove();
    const anchor = st.typing?.el.isConnected ? st.typing.el : null;
    el.insertBefore(node, anchor);
    scrollDown();
    return node;
  }

  /** Appends the live typing block itself, at the very end. */
  function appendLive(node) {
    empty.remove();
    el.append(node);
    return node;
  }

  function note(text, cls = "") {
    return append(h("div", { class: `note ${cls}` }, text));
  }

  function errorBlock(heading, detail) {
    return append(h("div", { class: "msg error", role: "alert" },
      h("strong", null, heading), detail ? h("div", { class: "detail" }, detail) : null));
  }

  return { el, append, appendLive, note, errorBlock, scrollDown };
}
