// One session: its transcript, live over the viewer WebSocket, with prompts,
// permission answers, interrupts and settings going back over the same socket.
//
// Every event the server sends carries `sequence_num`; the view remembers the last one
// it showed and resumes from it after a drop, ignoring anything at or below it, so no
// event is lost or shown twice.
//
// This file lays the page out and sends each event to the module that shows its kind:
// session-state.js (what the page knows), session-socket.js (the connection),
// session-outbox.js (own prompts until echoed or refused), session-transcript.js (the
// scrolling log), session-chat.js (user and assistant messages, streamed text),
// session-tools.js (tool calls), session-turns.js (results and system notes) and
// session-control.js (permission requests, questions, control requests).

import { h, uuid, ago } from "./dom.js";
import { MODES, MODELS, newSessionState, advance } from "./session-state.js";
import { SessionSocket } from "./session-socket.js";
import { Outbox } from "./session-outbox.js";
import { createTranscript } from "./session-transcript.js";
import { onAssistant, onStream, onUser, userBubble } from "./session-chat.js";
import { onToolProgress } from "./session-tools.js";
import { onResult, onSystem } from "./session-turns.js";
import { onCancel, onControlRequest, onControlResponse, sendControl } from "./session-control.js";
import { canDo } from "./access.js";
import { sharePanel } from "./session-share.js";

const STATUS_EVENTS = new Set(["assistant", "result", "result_success", "control_request", "control_response", "control_cancel_request"]);

export function sessionView(root, id, app) {
  const st = newSessionState();
  const outbox = new Outbox();
  const log = createTranscript(st);

  // ---- layout -------------------------------------------------------------------------
  const conn = h("button", { type: "button", class: "conn", title: "Connection", onclick: () => socket.reconnectNow() });
  const title = h("h1", { class: "title" }, id);
  const sub = h("div", { class: "sub" });
  const stateEl = h("span", { class: "state" });
  const pendingEl = h("section", { class: "pending", "aria-label": "Waiting for your approval" });
  const banner = h("div", { class: "banner", role: "status", hidden: true });

  const interruptBtn = h("button", { type: "button", class: "danger", disabled: true, onclick: interrupt, title: "Stop the current turn" }, "Interrupt");
  const modelInput = h("input", { type: "text", list: "sb-models", placeholder: "sonnet", autocomplete: "off", spellcheck: "false", "aria-label": "Model" });
  const modeSelect = h("select", { "aria-label": "Permission mode" }, MODES.map((m) => h("option", { value: m }, m)));
  const settings = h("details", { class: "settings" },
    h("summary", null, "Model & mode"),
    h("form", { class: "settings-form", onsubmit: (e) => { e.preventDefault(); setModel(); } },
      h("datalist", { id: "sb-models" }, MODELS.map((m) => h("option", { value: m }))),
      h("label", null, "Model", h("div", { class: "row" }, modelInput, h("button", { type: "submit" }, "Set")))),
    h("form", { class: "settings-form", onsubmit: (e) => { e.preventDefault(); setMode(); } },
      h("label", null, "Permission mode", h("div", { class: "row" }, modeSelect, h("button", { type: "submit" }, "Set")))));

  const share = sharePanel(app.api, id);

  const input = h("textarea", { rows: 1, placeholder: "Message the agent…", "aria-label": "Prompt", enterKeyHint: "send" });
  const sendBtn = h("button", { type: "submit", class: "primary" }, "Send");
  const composer = h("form", { class: "composer", onsubmit: (e) => { e.preventDefault(); sendPrompt(); } }, input, sendBtn);
  input.addEventListener("keydown", (e) => {
    const desktop = matchMedia("(pointer: fine)").matches;
    if (e.key === "Enter" && !e.isComposing && ((desktop && !e.shiftKey) || e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      sendPrompt();
    }
  });
  input.addEventListener("input", autosize);

  root.replaceChildren(
    h("div", { class: "session" },
      h("header", { class: "bar" },
        h("a", { href: "/", "data-nav": true, class: "back", "aria-label": "All sessions" }, "‹"),
        h("div", { class: "titles" }, title, h("div", { class: "sub-row" }, stateEl, sub)),
        conn),
      h("div", { class: "toolbar" }, interruptBtn, settings, share),
      banner,
      log.el,
      pendingEl,
      composer));
  // What this credential's role may not send is not offered (the server refuses it). On
  // a session another owner shared, the share says the most it may do (`shared_role`).
  let me = app.me;
  function applyRole() {
    composer.hidden = settings.hidden = !canDo(me, "driver");
    interruptBtn.hidden = !canDo(me, "approver");
    // Only the session's owner shares it, with an admin credential.
    share.hidden = !canDo(me, "admin") || !!me?.shared;
  }
  applyRole();

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  // ---- session info -----------------------------------------------------------------
  let infoTimer = null;
  function refreshInfoSoon() {
    if (st.destroyed || !infoTimer) return; // a load is running; it reschedules itself
    clearTimeout(infoTimer);
    infoTimer = setTimeout(loadInfo, 400);
  }
  async function loadInfo() {
    infoTimer = null;
    if (st.destroyed) return;
    try {
      const s = await app.api(`/v1/sessions/${encodeURIComponent(id)}`);
      if (st.destroyed) return;
      st.info = s;
      st.v2 = !!s.use_code_sessions;
      if (s.shared_role && me?.role !== s.shared_role) {
        me = view.me = { ...app.me, role: s.shared_role, shared: true };
        applyRole();
      }
      showInfo();
    } catch (e) {
      if (e.status === 401) return app.signedOut();
      if (e.status === 404 || e.status === 403) {
        socket.stop();
        setConn("gone", e.status === 404 ? "Not found" : "No access");
        showBanner(e.status === 404 ? "This session does not exist." : "You don't have access to this session.", "error");
        return;
      }
    }
    if (!st.destroyed) infoTimer = setTimeout(loadInfo, 5000);
  }

  function showInfo() {
    const s = st.info;
    if (!s) return;
    title.textContent = s.title || s.id;
    const ctx = s.session_context && typeof s.session_context === "object" ? s.session_context : {};
    const cwd = s.directory || ctx.cwd || ctx.working_directory;
    const place = typeof cwd === "string" ? (s.machine_name ? `${s.machine_name}:${cwd}` : cwd) : s.machine_name || "";
    sub.textContent = [place, s.last_activity_at ? ago(s.last_activity_at) : ""].filter(Boolean).join(" · ");
    let cls = s.session_status;
    let label = { requires_action: "needs approval", running: "running", idle: "idle", archived: "archived" }[cls] || cls;
    if (cls !== "archived" && !s.worker_connected) { cls = "offline"; label = "worker offline"; }
    if (cls === "requires_action") cls = "action";
    stateEl.className = `state ${cls}`;
    stateEl.replaceChildren(h("span", { class: "dot", "aria-hidden": "true" }), label);
    updateTitle();
  }

  function updateTitle() {
    const name = st.info?.title || id;
    document.title = st.pending.size ? `(${st.pending.size}) ${name} — Switchboard` : `${name} — Switchboard`;
  }

  function showBanner(text, cls) {
    banner.className = `banner ${cls || ""}`;
    banner.replaceChildren(text);
    banner.hidden = false;
  }

  // ---- connection -------------------------------------------------------------------
  function setConn(kind, text) {
    conn.className = `conn ${kind}`;
    conn.textContent = text;
    conn.dataset.state = kind;
    conn.title = kind === "down" || kind === "gone" ? "Reconnect now" : "Connection";
    const live = kind === "live";
    interruptBtn.disabled = !live;
    for (const card of st.pending.values()) card.setConnected(live);
  }

  async function forbidden() {
    try {
      await app.api("/web/me");
    } catch (e) {
      if (e.status === 401) return app.signedOut();
    }
    setConn("gone", "No access");
    showBanner("You don't have access to this session.", "error");
  }

  const socket = new SessionSocket({
    url() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      return `${scheme}://${location.host}/v1/sessions/ws/${encodeURIComponent(id)}/subscribe?from_sequence_num=${st.lastSeq}`;
    },
    onConnecting: () => setConn("connecting", st.lastSeq ? "Reconnecting…" : "Connecting…"),
    onOpen() {
      setConn("live", "Live");
      banner.hidden = true;
      // Prompts not yet echoed back go (again): the server keeps one per uuid.
      outbox.resend((msg) => socket.send(msg));
    },
    onEvent: handle,
    onDown(why, seconds) {
      setConn("down", seconds ? `Reconnecting in ${seconds} s` : "Reconnecting…");
      conn.title = `${why}. Tap to reconnect now.`;
    },
    onLost() {
      for (const card of st.pending.values()) card.setBusy(false);
    },
    onEnd(code, reason) {
      if (code === 4003) return forbidden();
      setConn("gone", "Session gone");
      showBanner(reason ? `The session has ended: ${reason}.` : "The session has ended or no longer exists.", "error");
    },
    onReconnect: () => { banner.hidden = true; },
  });

  /** What the modules that show events use of the page. */
  const view = {
    st,
    log,
    pendingEl,
    send: (obj) => socket.send(obj),
    live: () => socket.live,
    showInfo,
    updateTitle,
    me,
    api: app.api,
    settings: {
      showModel: (model) => { modelInput.value = model; },
      showMode: (mode) => { modeSelect.value = mode; },
    },
  };

  // ---- sending ----------------------------------------------------------------------
  function sendPrompt() {
    const text = input.value.trim();
    if (!text) return;
    const key = uuid();
    const msg = { type: "user", uuid: key, parent_tool_use_id: null, message: { role: "user", content: text } };
    const el = userBubble(view, text);
    el.dataset.uuid = key;
    st.seen.add(key);
    outbox.add(key, msg, el, socket.send(msg));
    input.value = "";
    autosize();
    log.scrollDown(true);
  }

  function interrupt() {
    sendControl(view, { subtype: "interrupt" });
  }

  function setModel() {
    const model = modelInput.value.trim();
    if (!model) return;
    if (sendControl(view, { subtype: "set_model", model })) settings.open = false;
  }

  function setMode() {
    if (sendControl(view, { subtype: "set_permission_mode", mode: modeSelect.value })) settings.open = false;
  }

  // ---- receiving --------------------------------------------------------------------
  function onError(ev) {
    const err = ev.error || {};
    const message = String(err.message || "");
    // A refused prompt never comes back: the frame names it by its uuid.
    const refused = outbox.refuse(ev);
    if (refused) refused.el.append(h("div", { class: "failed-note" }, `Not sent: ${message}`));
    log.errorBlock(`Server: ${err.type || "error"}`, message);
  }

  function handle(ev) {
    if (ev.type === "error") return onError(ev);
    if (!advance(st, ev)) return;
    if (typeof ev.uuid === "string") {
      const own = outbox.echoed(ev.uuid);
      if (own) {
        own.el.querySelector(".failed-note")?.remove();
        return;
      }
      if (st.seen.has(ev.uuid)) return;
      st.seen.add(ev.uuid);
    }
    if (STATUS_EVENTS.has(ev.type)) refreshInfoSoon();
    switch (ev.type) {
      case "user": return onUser(view, ev);
      case "assistant": return onAssistant(view, ev);
      case "stream_event": return onStream(view, ev);
      case "result":
      case "result_success":
      case "result_error": return onResult(view, ev);
      case "system": return onSystem(view, ev);
      case "control_request": return onControlRequest(view, ev);
      case "control_response": return onControlResponse(view, ev);
      case "control_cancel_request": return onCancel(view, ev);
      case "tool_progress": return onToolProgress(view, ev);
      default:
    }
  }

  // The first look at the session tells whether its text deltas are cumulative (v2).
  loadInfo().finally(() => socket.connect());

  return {
    destroy() {
      st.destroyed = true;
      socket.destroy();
      clearTimeout(infoTimer);
    },
  };
}
