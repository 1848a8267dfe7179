// What one session's page knows about the session, shared by the modules that show it
// (session-*.js). The socket keeps its own connection state (session-socket.js), the
// outbox its own prompts (session-outbox.js) and the transcript its scroll position
// (session-transcript.js); what is left is here.

/** The permission modes a session can be set to. */
export const MODES = ["default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"];

/** Model names offered in the settings (any other name may be typed). */
export const MODELS = ["default", "sonnet", "opus", "haiku"];

/** A fresh state for a session's page. */
export function newSessionState() {
  return {
    // The session log: events carry `sequence_num`; the page shows each once, resuming
    // the socket after the last one it showed and ignoring anything at or below it.
    lastSeq: 0,
    seen: new Set(), // uuids already shown
    // The session resource (GET /v1/sessions/{id}) and what it says about the plane.
    info: null,
    v2: false, // text deltas are cumulative snapshots, not increments
    // What the transcript shows that later events change.
    tools: new Map(), // tool_use_id -> { el, result, status, name } (or { pendingResult })
    pending: new Map(), // request_id -> permission or question card
    requests: new Map(), // request_id -> subtype of this page's own control requests
    typing: null, // { el, body, blocks: [], queued } while text streams in
    // The page's life.
    destroyed: false,
  };
}

/**
 * Moves the page's place in the session log to `ev`: false if `ev` is at or below the
 * last sequence number shown (seen already), true otherwise (also for events without
 * one, such as the echo of a viewer's message).
 */
export function advance(st, ev) {
  if (typeof ev.sequence_num === "number") {
    if (ev.sequence_num <= st.lastSeq) return false;
    st.lastSeq = ev.sequence_num;
  }
  return true;
}
