// Control messages in a session's page: the worker's permission requests and questions
// (a card each, answered over the socket), their answers and withdrawals, and this
// page's own control requests (interrupt, model, permission mode) and their failures.

import { h, pretty, uuid } from "./dom.js";
import { reviewNode } from "./review.js";
import { MODES } from "./session-state.js";
import { alwaysAllowButton, canDo } from "./access.js";

/** Sends a control request of this page; its id, or null when not connected. */
export function sendControl(v, request) {
  const request_id = uuid();
  if (!v.send({ type: "control_request", request_id, request })) {
    v.log.errorBlock("Not connected", "Try again once the connection is back.");
    return null;
  }
  v.st.requests.set(request_id, request.subtype);
  return request_id;
}

function permissionCard(v, ev) {
  const { st } = v;
  const rid = String(ev.request_id);
  const req = ev.request || {};
  const toolName = String(req.display_name || req.tool_name || "a tool");
  const line = v.log.note(`${toolName} asks for permission…`, "perm-note");
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
    canDo(v.me, "approver")
      ? h("div", { class: "perm-actions" }, reason, denyBtn, allowBtn,
        // A rule is the caller's owner's: it would not answer another owner's session.
        canDo(v.me, "admin") && !v.me.shared && alwaysAllowButton(v.api, req, () => allowBtn.click()))
      : h("p", { class: "muted" }, "Your role can't answer permission requests."),
    status);
  reason.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); denyBtn.click(); } });
  v.pendingEl.append(el);
  let busy = false;
  let connected = v.live();
  const sync = () => { allowBtn.disabled = denyBtn.disabled = busy || !connected; };
  function answer(response) {
    const ok = v.send({ type: "control_response", response: { subtype: "success", request_id: rid, response } });
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
      v.updateTitle();
    },
  };
  sync();
  st.pending.set(rid, card);
  v.updateTitle();
}

/** An edit's diff or a command in full (raw input one tap away), else the input. */
function inputView(req) {
  const raw = h("pre", { class: "json wrap" }, pretty(req.input ?? {}));
  const review = reviewNode(String(req.tool_name || ""), req.input);
  return review ? [review, h("details", { class: "raw-input" }, h("summary", null, "Raw input"), raw)] : raw;
}

function elicitationCard(v, ev) {
  const { st } = v;
  const rid = String(ev.request_id);
  const req = ev.request || {};
  const line = v.log.note(`${req.mcp_server_name || "A tool"} asks a question…`, "perm-note");
  const reply = (action) => v.send({ type: "control_response", response: { subtype: "success", request_id: rid, response: { action } } });
  const el = h("div", { class: "perm", dataset: { requestId: rid } },
    h("div", { class: "row" }, h("span", { class: "badge warn" }, "Question"), h("strong", null, String(req.mcp_server_name || ""))),
    h("p", { class: "perm-desc" }, String(req.message || "")),
    req.url && h("p", { class: "mono perm-desc" }, String(req.url)),
    h("p", { class: "muted" }, "Answer this one in the terminal, or decline it here."),
    h("div", { class: "perm-actions" }, h("button", { type: "button", class: "danger", onclick: () => reply("decline") }, "Decline")));
  v.pendingEl.append(el);
  st.pending.set(rid, {
    el,
    setBusy() {},
    setConnected() {},
    resolve(text, cls) { el.remove(); line.textContent = text; line.className = `note perm-note ${cls || ""}`; st.pending.delete(rid); v.updateTitle(); },
    question: true,
  });
  v.updateTitle();
}

/** `control_request`: a permission request or question, or a viewer's request. */
export function onControlRequest(v, ev) {
  const { st, log, settings } = v;
  const kind = ev.request?.subtype;
  if (kind === "can_use_tool") return permissionCard(v, ev);
  if (kind === "elicitation") return elicitationCard(v, ev);
  if (ev.request_id) st.requests.set(String(ev.request_id), kind);
  if (kind === "interrupt") log.note("Interrupt requested", "warn");
  else if (kind === "set_model") {
    log.note(`Model set to ${ev.request.model || "default"}`);
    if (ev.request.model) settings.showModel(ev.request.model);
  } else if (kind === "set_permission_mode") {
    log.note(`Permission mode set to ${ev.request.mode}`);
    if (MODES.includes(ev.request.mode)) settings.showMode(ev.request.mode);
  }
}

/** `control_response`: an answer to a card (from anyone), or to a viewer's request. */
export function onControlResponse(v, ev) {
  const { st } = v;
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
    v.log.errorBlock(`${kind.replace(/_/g, " ")} failed`, String(r.error || ""));
  }
}

/** `control_cancel_request`: the worker withdrew a request. */
export function onCancel(v, ev) {
  const card = v.st.pending.get(String(ev.request_id));
  if (card) card.resolve("Permission request withdrawn (answered elsewhere)");
}
