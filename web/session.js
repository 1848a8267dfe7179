// One session: its transcript, live over the viewer WebSocket, with prompts,
// permission answers, interrupts and settings going back over the same socket.
//
// Every event the server sends carries `sequence_num`; the view remembers the last one
// it showed and resumes from it after a drop, ignoring anything at or below it, so no
// event is lost or shown twice.

import { h, uuid, ago, pretty } from "./dom.js";
import { alwaysAllowButton, canDo } from "./access.js";
import { renderMarkdown } from "./markdown.js";
import { reviewNode } from "./review.js";

const MODES = ["default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"];
const MODELS = ["default", "sonnet", "opus", "haiku"];
const STATUS_EVENTS = new Set(["assistant", "result", "result_success", "control_request", "control_response", "control_cancel_request"]);
const MAX_SHOWN = 20000; // characters of one tool result shown
const BACKOFF_MIN = 1000;
const BACKOFF_MAX = 10000;

export function sessionView(root, id, app) {
  const st = {
    lastSeq: 0,
    ws: null,
    destroyed: false,
    backoff: BACKOFF_MIN,
    retryAt: 0,
    retryTimer: null,
    tickTimer: null,
    seen: new Set(), // uuids already shown
    outbox: new Map(), // uuid -> { msg, el } own prompts not yet echoed back
    failed: new Map(), // uuid -> { msg, el } own prompts the server refused
    tools: new Map(), // tool_use_id -> { el, result, status, name }
    pending: new Map(), // request_id -> permission card
    requests: new Map(), // request_id -> subtype of viewer control requests
    typing: null, // { el, body, blocks: [] } while text streams in
    v2: false, // cumulative text deltas
    info: null, // the SessionResource
    final: false, // no more reconnecting
    stick: true, // keep the log scrolled to the bottom
  };

  // ---- layout -------------------------------------------------------------------------
  const conn = h("button", { type: "button", class: "conn", title: "Connection", onclick: () => reconnectNow() });
  const title = h("h1", { class: "title" }, id);
  const sub = h("div", { class: "sub" });
  const stateEl = h("span", { class: "state" });
  const log = h("main", { class: "log", "aria-live": "polite", "aria-label": "Transcript" });
  const empty = h("p", { class: "muted empty" }, "Nothing here yet.");
  log.append(empty);
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
      h("div", { class: "toolbar" }, interruptBtn, settings),
      banner,
      log,
      pendingEl,
      composer));
  // What this credential's role may not send is not offered (the server refuses it).
  if (!canDo(app.me, "driver")) composer.hidden = settings.hidden = true;
  if (!canDo(app.me, "approver")) interruptBtn.hidden = true;

  log.addEventListener("scroll", () => {
    st.stick = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  }, { passive: true });

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  let scrollQueued = false;
  function scrollDown(force) {
    if (force) st.stick = true;
    if (!st.stick || scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      if (st.stick) log.scrollTop = log.scrollHeight;
    });
  }

  /** Appends to the transcript, above the live typing block if there is one. */
  function append(node) {
    empty.remove();
    const anchor = st.typing?.el.isConnected ? st.typing.el : null;
    log.insertBefore(node, anchor);
    scrollDown();
    return node;
  }

  function note(text, cls = "") {
    return append(h("div", { class: `note ${cls}` }, text));
  }

  function errorBlock(heading, detail) {
    return append(h("div", { class: "msg error", role: "alert" },
      h("strong", null, heading), detail ? h("div", { class: "detail" }, detail) : null));
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
      showInfo();
    } catch (e) {
      if (e.status === 401) return app.signedOut();
      if (e.status === 404 || e.status === 403) {
        st.final = true;
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

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/v1/sessions/ws/${encodeURIComponent(id)}/subscribe?from_sequence_num=${st.lastSeq}`;
  }

  function connect() {
    clearTimeout(st.retryTimer);
    clearInterval(st.tickTimer);
    st.retryTimer = null;
    if (st.destroyed || st.final) return;
    if (st.ws) return;
    setConn("connecting", st.lastSeq ? "Reconnecting…" : "Connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      return retry(`Connection failed: ${e.message}`);
    }
    st.ws = ws;
    ws.onopen = () => {
      if (st.ws !== ws) return;
      st.backoff = BACKOFF_MIN;
      setConn("live", "Live");
      banner.hidden = true;
      // Prompts not yet echoed back go (again): the server keeps one per uuid.
      for (const { msg, el } of st.outbox.values()) {
        ws.send(JSON.stringify(msg));
        el.dataset.state = "sending";
      }
    };
    ws.onmessage = (e) => {
      if (st.ws !== ws) return;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return;
      }
      if (ev && typeof ev === "object") {
        try {
          handle(ev);
        } catch (err) {
          console.error("cannot show event", ev, err);
        }
      }
    };
    ws.onclose = (e) => {
      if (st.ws !== ws) return;
      st.ws = null;
      if (st.destroyed) return;
      for (const card of st.pending.values()) card.setBusy(false);
      if (e.code === 4003) return forbidden();
      if (e.code === 4001) {
        st.final = true;
        setConn("gone", "Session gone");
        showBanner(e.reason ? `The session has ended: ${e.reason}.` : "The session has ended or no longer exists.", "error");
        return;
      }
      if (e.code === 1013) return retry("The server asked us to reconnect", 300);
      if (e.code === 1001) return retry("The server is restarting");
      retry(navigator.onLine === false ? "You are offline" : "Connection lost");
    };
  }

  async function forbidden() {
    st.final = true;
    try {
      await app.api("/web/me");
    } catch (e) {
      if (e.status === 401) return app.signedOut();
    }
    setConn("gone", "No access");
    showBanner("You don't have access to this session.", "error");
  }

  function retry(why, delay) {
    clearTimeout(st.retryTimer);
    clearInterval(st.tickTimer);
    const wait = delay ?? st.backoff;
    st.backoff = Math.min(st.backoff * 2, BACKOFF_MAX);
    st.retryAt = Date.now() + wait;
    const tick = () => {
      const s = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
      setConn("down", s ? `Reconnecting in ${s} s` : "Reconnecting…");
      conn.title = `${why}. Tap to reconnect now.`;
    };
    tick();
    st.tickTimer = setInterval(tick, 1000);
    st.retryTimer = setTimeout(connect, wait);
  }

  function reconnectNow() {
    if (st.ws || st.destroyed) return;
    st.final = false;
    banner.hidden = true;
    connect();
  }

  function dropSocket() {
    const ws = st.ws;
    if (!ws) return;
    st.ws = null;
    ws.onclose = ws.onmessage = ws.onopen = null;
    try { ws.close(1000, "leaving"); } catch { /* already closed */ }
  }

  function send(obj) {
    if (st.ws?.readyState !== WebSocket.OPEN) return false;
    st.ws.send(JSON.stringify(obj));
    return true;
  }

  const onOnline = () => {
    if (!st.ws && !st.final) {
      st.backoff = BACKOFF_MIN;
      reconnectNow();
    }
  };
  const onOffline = () => {
    // The socket may linger half-open; start over once the network is back.
    if (!st.ws) return;
    dropSocket();
    for (const card of st.pending.values()) card.setBusy(false);
    retry("You are offline");
  };
  const onVisible = () => {
    if (document.visibilityState === "visible" && !st.ws && !st.final) reconnectNow();
  };
  window.addEventListener("online", onOnline);
  window.addEventListener("offline", onOffline);
  document.addEventListener("visibilitychange", onVisible);
  const keepAlive = setInterval(() => send({ type: "keep_alive" }), 30000);

  // ---- sending ----------------------------------------------------------------------
  function sendPrompt() {
    const text = input.value.trim();
    if (!text) return;
    const key = uuid();
    const msg = { type: "user", uuid: key, parent_tool_use_id: null, message: { role: "user", content: text } };
    const el = userBubble(text);
    el.dataset.uuid = key;
    st.seen.add(key);
    st.outbox.set(key, { msg, el });
    el.dataset.state = send(msg) ? "sending" : "queued";
    input.value = "";
    autosize();
    scrollDown(true);
  }

  function control(request) {
    const request_id = uuid();
    if (!send({ type: "control_request", request_id, request })) {
      errorBlock("Not connected", "Try again once the connection is back.");
      return null;
    }
    st.requests.set(request_id, request.subtype);
    return request_id;
  }

  function interrupt() {
    control({ subtype: "interrupt" });
  }

  function setModel() {
    const model = modelInput.value.trim();
    if (!model) return;
    if (control({ subtype: "set_model", model })) settings.open = false;
  }

  function setMode() {
    if (control({ subtype: "set_permission_mode", mode: modeSelect.value })) settings.open = false;
  }

  // ---- rendering --------------------------------------------------------------------
  function userBubble(text) {
    return append(h("div", { class: "msg user" }, h("div", { class: "md" }, renderMarkdown(text))));
  }

  function assistantText(text, ev) {
    return append(h("div", { class: `msg assistant${ev.parent_tool_use_id ? " nested" : ""}` },
      h("div", { class: "md" }, renderMarkdown(text))));
  }

  function toolSummary(name, input) {
    if (!input || typeof input !== "object") return "";
    const v = input.command ?? input.pattern ?? input.file_path ?? input.path ?? input.url ?? input.query ?? input.description ?? input.prompt;
    return typeof v === "string" ? v.split("\n")[0].slice(0, 120) : "";
  }

  function toolUse(block, ev) {
    const name = String(block.name || "tool");
    const status = h("span", { class: "tool-status" }, "running");
    const result = h("div", { class: "tool-result" });
    const el = append(h("details", { class: `msg tool${ev.parent_tool_use_id ? " nested" : ""}`, dataset: { toolUseId: String(block.id || "") } },
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
      if (early?.pendingResult) toolResult(early.pendingResult);
    }
  }

  function resultText(content) {
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content.map((c) => (c?.type === "text" ? c.text : c?.type === "image" ? "[image]" : pretty(c))).join("\n");
    }
    return content == null ? "" : pretty(content);
  }

  function toolResult(block) {
    const t = st.tools.get(block.tool_use_id);
    if (!t?.el) {
      // The result came before its call (or the call is not in view): keep it for later.
      st.tools.set(block.tool_use_id, { pendingResult: block });
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

  function onUser(ev) {
    const content = ev.message?.content;
    if (typeof content === "string") {
      if (content.trim()) userBubble(content).classList.toggle("meta", !!(ev.isSynthetic || ev.isMeta));
      return;
    }
    if (!Array.isArray(content)) return;
    const texts = [];
    for (const block of content) {
      if (block?.type === "tool_result") toolResult(block);
      else if (block?.type === "text" && typeof block.text === "string") texts.push(block.text);
      else if (block?.type === "image") texts.push("[image]");
      else if (block?.type === "document") texts.push("[document]");
    }
    if (texts.length) userBubble(texts.join("\n\n")).classList.toggle("meta", !!(ev.isSynthetic || ev.isMeta));
  }

  function onAssistant(ev) {
    stopTyping();
    const content = ev.message?.content;
    const blocks = typeof content === "string" ? [{ type: "text", text: content }] : Array.isArray(content) ? content : [];
    for (const block of blocks) {
      if (!block || typeof block !== "object") continue;
      if (block.type === "text" && block.text) assistantText(block.text, ev);
      else if (block.type === "thinking" && block.thinking) {
        append(h("details", { class: "msg thinking" }, h("summary", null, "Thinking"), h("div", { class: "thought" }, block.thinking)));
      } else if (block.type === "tool_use" || block.type === "server_tool_use") toolUse(block, ev);
    }
    if (ev.error) {
      const text = blocks.filter((b) => b?.type === "text").map((b) => b.text).join("\n");
      errorBlock(`Agent error: ${String(ev.error)}`, text ? null : "The model request failed.");
    }
  }

  function onStream(ev) {
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
      empty.remove();
      log.append(el);
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
        scrollDown();
      });
    }
  }

  function stopTyping() {
    if (!st.typing) return;
    st.typing.el.remove();
    st.typing = null;
  }

  function money(x) {
    return x >= 0.01 ? `$${x.toFixed(2)}` : `$${x.toFixed(4)}`;
  }

  function onResult(ev) {
    stopTyping();
    for (const t of st.tools.values()) {
      if (t.status && t.status.textContent === "running") t.status.textContent = "no result";
    }
    const parts = [];
    if (Number(ev.duration_ms) > 0) parts.push(`${(ev.duration_ms / 1000).toFixed(1)} s`);
    if (typeof ev.total_cost_usd === "number" && ev.total_cost_usd > 0) parts.push(money(ev.total_cost_usd));
    if (Number(ev.num_turns) > 1) parts.push(`${ev.num_turns} turns`);
    if (ev.is_error || (typeof ev.subtype === "string" && ev.subtype.startsWith("error"))) {
      const errs = Array.isArray(ev.errors) ? ev.errors.map(String).join("; ") : "";
      const el = errorBlock(`Turn failed${ev.subtype ? ` (${ev.subtype})` : ""}`, [errs || (typeof ev.result === "string" ? ev.result : ""), parts.join(" · ")].filter(Boolean).join(" — "));
      el.classList.add("result");
      return;
    }
    note(["Turn finished", ...parts].join(" · "), "result");
  }

  function onSystem(ev) {
    switch (ev.subtype) {
      case "init":
        if (ev.model) modelInput.value = ev.model;
        if (MODES.includes(ev.permissionMode)) modeSelect.value = ev.permissionMode;
        note(["Agent started", ev.model, ev.permissionMode && `mode ${ev.permissionMode}`, ev.cwd].filter(Boolean).join(" · "));
        break;
      case "status":
        if (MODES.includes(ev.permissionMode)) modeSelect.value = ev.permissionMode;
        if (ev.status === "compacting") note("Compacting the conversation…");
        break;
      case "compact_boundary":
        note("Conversation compacted", "divider");
        break;
      case "api_retry":
        note(`API error, retrying${ev.attempt ? ` (attempt ${ev.attempt})` : ""}…`, "warn");
        break;
      case "local_command_output":
        if (typeof ev.content === "string") append(h("pre", { class: "msg out" }, ev.content));
        break;
      case "session_state_changed":
        if (st.info && ["idle", "running", "requires_action"].includes(ev.state)) {
          st.info.session_status = ev.state;
          showInfo();
        }
        break;
      default:
        break;
    }
  }

  // ---- permission requests ----------------------------------------------------------
  function permissionCard(ev) {
    const rid = String(ev.request_id);
    const req = ev.request || {};
    const toolName = String(req.display_name || req.tool_name || "a tool");
    const line = note(`${toolName} asks for permission…`, "perm-note");
    const reason = h("input", { type: "text", placeholder: "Reason, if you deny (optional)", "aria-label": "Reason for denying" });
    const allowBtn = h("button", { type: "button", class: "primary allow", onclick: () => answer({ behavior: "allow", updatedInput: req.input ?? {} }) }, "Allow");
    const denyBtn = h("button", { type: "button", class: "danger deny", onclick: () => answer({ behavior: "deny", message: reason.value.trim() || "Denied from the Switchboard web UI" }) }, "Deny");
    const status = h("p", { class: "muted card-status", hidden: true });
    const details = [req.title, req.description, req.decision_reason && `Reason: ${typeof req.decision_reason === "string" ? req.decision_reason : pretty(req.decision_reason)}`, req.blocked_path && `Path: ${req.blocked_path}`]
      .filter((x) => typeof x === "string" && x);
    const el = h("div", { class: "perm", role: "group", "aria-label": `Permission request: ${toolName}`, dataset: { requestId: rid } },
      h("div", { class: "row" }, h("span", { class: "badge warn" }, "Permission"), h("strong", { class: "tool-name" }, toolName)),
      details.map((d) => h("p", { class: "perm-desc" }, d)),
      inputView(req),
      canDo(app.me, "approver")
        ? h("div", { class: "perm-actions" }, reason, denyBtn, allowBtn,
          canDo(app.me, "admin") && alwaysAllowButton(app.api, req, () => allowBtn.click()))
        : h("p", { class: "muted" }, "Your role can't answer permission requests."),
      status);
    reason.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); denyBtn.click(); } });
    pendingEl.append(el);
    let busy = false;
    let connected = st.ws?.readyState === WebSocket.OPEN;
    const sync = () => { allowBtn.disabled = denyBtn.disabled = busy || !connected; };
    function answer(response) {
      const ok = send({ type: "control_response", response: { subtype: "success", request_id: rid, response } });
      status.hidden = false;
      status.textContent = ok ? "Sending…" : "Not connected — answer again once the connection is back.";
      busy = ok;
      sync();
    }
    const card = {
      el,
      setBusy(b) { busy = b; if (!b) status.hidden = true; sync(); },
      setConnected(c) { connected = c; sync(); },
      resolve(text, cls) {
        el.remove();
        line.textContent = text;
        line.className = `note perm-note ${cls || ""}`;
        st.pending.delete(rid);
        updateTitle();
      },
    };
    sync();
    st.pending.set(rid, card);
    updateTitle();
  }

  /** An edit's diff or a command in full (raw input one tap away), else the input. */
  function inputView(req) {
    const raw = h("pre", { class: "json wrap" }, pretty(req.input ?? {}));
    const review = reviewNode(String(req.tool_name || ""), req.input);
    return review ? [review, h("details", { class: "raw-input" }, h("summary", null, "Raw input"), raw)] : raw;
  }

  function elicitationCard(ev) {
    const rid = String(ev.request_id);
    const req = ev.request || {};
    const line = note(`${req.mcp_server_name || "A tool"} asks a question…`, "perm-note");
    const reply = (action) => send({ type: "control_response", response: { subtype: "success", request_id: rid, response: { action } } });
    const el = h("div", { class: "perm", dataset: { requestId: rid } },
      h("div", { class: "row" }, h("span", { class: "badge warn" }, "Question"), h("strong", null, String(req.mcp_server_name || ""))),
      h("p", { class: "perm-desc" }, String(req.message || "")),
      req.url && h("p", { class: "mono perm-desc" }, String(req.url)),
      h("p", { class: "muted" }, "Answer this one in the terminal, or decline it here."),
      h("div", { class: "perm-actions" }, h("button", { type: "button", class: "danger", onclick: () => reply("decline") }, "Decline")));
    pendingEl.append(el);
    st.pending.set(rid, {
      el,
      setBusy() {},
      setConnected() {},
      resolve(text, cls) { el.remove(); line.textContent = text; line.className = `note perm-note ${cls || ""}`; st.pending.delete(rid); updateTitle(); },
      question: true,
    });
    updateTitle();
  }

  function onControlRequest(ev) {
    const kind = ev.request?.subtype;
    if (kind === "can_use_tool") return permissionCard(ev);
    if (kind === "elicitation") return elicitationCard(ev);
    if (ev.request_id) st.requests.set(String(ev.request_id), kind);
    if (kind === "interrupt") note("Interrupt requested", "warn");
    else if (kind === "set_model") {
      note(`Model set to ${ev.request.model || "default"}`);
      if (ev.request.model) modelInput.value = ev.request.model;
    } else if (kind === "set_permission_mode") {
      note(`Permission mode set to ${ev.request.mode}`);
      if (MODES.includes(ev.request.mode)) modeSelect.value = ev.request.mode;
    }
  }

  function onControlResponse(ev) {
    const r = ev.response || {};
    const rid = String(r.request_id ?? ev.request_id ?? "");
    const card = st.pending.get(rid);
    if (card) {
      const inner = r.response || {};
      const name = card.el.querySelector(".tool-name")?.textContent || "Tool";
      if (card.question) card.resolve(`Question answered${inner.action ? ` (${inner.action})` : ""}`);
      else if (r.subtype === "error") card.resolve(`${name}: answered with an error${r.error ? ` — ${r.error}` : ""}`, "err");
      else if (inner.behavior === "allow") card.resolve(`Allowed ${name}`, "ok");
      else if (inner.behavior === "deny") card.resolve(`Denied ${name}${inner.message ? `: ${inner.message}` : ""}`, "err");
      else card.resolve(`${name}: answered elsewhere`);
      return;
    }
    const kind = st.requests.get(rid);
    if (kind && r.subtype === "error") {
      errorBlock(`${kind.replace(/_/g, " ")} failed`, String(r.error || ""));
    }
  }

  function onCancel(ev) {
    const card = st.pending.get(String(ev.request_id));
    if (card) card.resolve("Permission request withdrawn (answered elsewhere)");
  }

  function handle(ev) {
    if (ev.type === "error") {
      const err = ev.error || {};
      const message = String(err.message || "");
      // A refused prompt never comes back: the oldest one still on its way is it.
      const refused = /^event \d/.test(message) && [...st.outbox.entries()].find(([, o]) => o.el.dataset.state === "sending");
      if (refused) {
        const [key, o] = refused;
        st.outbox.delete(key);
        st.failed.set(key, o);
        o.el.dataset.state = "failed";
        o.el.append(h("div", { class: "failed-note" }, `Not sent: ${message}`));
      }
      errorBlock(`Server: ${err.type || "error"}`, message);
      return;
    }
    if (typeof ev.sequence_num === "number") {
      if (ev.sequence_num <= st.lastSeq) return;
      st.lastSeq = ev.sequence_num;
    }
    if (typeof ev.uuid === "string") {
      const own = st.outbox.get(ev.uuid) || st.failed.get(ev.uuid);
      if (own) {
        st.outbox.delete(ev.uuid);
        st.failed.delete(ev.uuid);
        delete own.el.dataset.state;
        own.el.querySelector(".failed-note")?.remove();
        return;
      }
      if (st.seen.has(ev.uuid)) return;
      st.seen.add(ev.uuid);
    }
    if (STATUS_EVENTS.has(ev.type)) refreshInfoSoon();
    switch (ev.type) {
      case "user": return onUser(ev);
      case "assistant": return onAssistant(ev);
      case "stream_event": return onStream(ev);
      case "result":
      case "result_success":
      case "result_error": return onResult(ev);
      case "system": return onSystem(ev);
      case "control_request": return onControlRequest(ev);
      case "control_response": return onControlResponse(ev);
      case "control_cancel_request": return onCancel(ev);
      case "tool_progress": {
        const t = st.tools.get(ev.tool_use_id);
        if (t?.status && t.status.textContent !== "done") t.status.textContent = `running ${Math.round(ev.elapsed_time_seconds || 0)} s`;
        return;
      }
      default:
    }
  }

  // The first look at the session tells whether its text deltas are cumulative (v2).
  loadInfo().finally(connect);

  return {
    destroy() {
      st.destroyed = true;
      dropSocket();
      clearTimeout(st.retryTimer);
      clearInterval(st.tickTimer);
      clearTimeout(infoTimer);
      clearInterval(keepAlive);
      window.removeEventListener("online", onOnline);
      window.removeEventListener("offline", onOffline);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}
