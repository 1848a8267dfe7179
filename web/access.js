// Who may do what (issue 16): what the signed-in browser's role lets it do (the rest of
// the UI hides what it may not), the "Always allow" button of a permission card, and the
// admin's panel of devices, approval rules and the audit log (/v1/devices, /v1/policy*,
// /v1/audit). The server enforces every role; hiding is only a courtesy.

import { h, ago } from "./dom.js";

const ROLES = ["viewer", "approver", "driver", "admin"];

/** Whether the signed-in credential (from /web/me) has at least `role`. */
export function canDo(me, role) {
  // A server without roles (or an old answer) lets the owner do everything.
  const mine = ROLES.indexOf(me?.role ?? "admin");
  return mine >= ROLES.indexOf(role);
}

/** The rule that would allow this request again: a Bash command as a prefix, a file
 * tool's exact path, a fetch's host; null when there is nothing sensible to allow. */
export function ruleFor(req) {
  const tool = typeof req?.tool_name === "string" ? req.tool_name : "";
  const input = req?.input && typeof req.input === "object" ? req.input : {};
  if (!tool) return null;
  if (tool === "Bash") {
    const command = typeof input.command === "string" ? input.command.trim() : "";
    if (!command || /[;&|`$()<>\n\r]/.test(command)) return null;
    return { tool, pattern: command, decision: "allow" };
  }
  const path = input.file_path ?? input.notebook_path ?? input.path;
  if (["Read", "Write", "Edit", "MultiEdit", "NotebookEdit", "Glob", "Grep", "LS"].includes(tool)) {
    return typeof path === "string" && path && !path.split("/").includes("..")
      ? { tool, pattern: path.replace(/[*?]/g, "?"), decision: "allow" }
      : null;
  }
  if (tool === "WebFetch") {
    try {
      return { tool, pattern: new URL(String(input.url)).hostname, decision: "allow" };
    } catch {
      return null;
    }
  }
  return { tool, decision: "allow" };
}

/** "Always allow this" for a permission card: adds a rule (first, so it wins) for this
 * session's owner; `answer` then allows the request at hand. */
export function alwaysAllowButton(api, req, answer) {
  const rule = ruleFor(req);
  if (!rule) return null;
  const what = rule.pattern ? `${rule.tool} ${rule.pattern}` : `every ${rule.tool}`;
  // Not labelled "Always allow": next to Allow, a name containing it would be ambiguous to
  // assistive technology (and to anyone scanning for the one-time answer).
  const btn = h("button", { type: "button", class: "ghost always-allow", title: `Add a rule: allow ${what}` }, "Trust from now on");
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    try {
      await api("/v1/policy/rules", { body: { ...rule, first: true } });
      btn.textContent = "Rule added";
      answer();
    } catch (e) {
      btn.textContent = `Couldn't add the rule: ${e.message}`;
      btn.disabled = false;
    }
  });
  return btn;
}

/** Fills `card` with the devices, policy and audit panel (toggles it closed when open). */
export async function accessPanel(card, api) {
  if (!card.hidden && card.dataset.open) {
    card.hidden = true;
    delete card.dataset.open;
    return;
  }
  card.hidden = false;
  card.dataset.open = "1";
  card.replaceChildren(h("p", null, "Loading devices, rules and the audit log…"));
  let devices;
  let policy;
  try {
    [devices, policy] = await Promise.all([api("/v1/devices"), api("/v1/policy")]);
  } catch (e) {
    card.replaceChildren(h("p", { class: "error" }, `Couldn't load them: ${e.message}`));
    return;
  }
  const status = h("p", { class: "muted access-status", role: "status" });
  const say = (text, cls = "muted") => { status.className = `${cls} access-status`; status.textContent = text; };
  const reload = () => { delete card.dataset.open; accessPanel(card, api); };
  const act = async (what, fn) => {
    try {
      await fn();
      reload();
    } catch (e) {
      say(`Couldn't ${what}: ${e.message}`, "error");
    }
  };

  // ---- devices ----------------------------------------------------------------------
  const deviceRows = (devices.data || []).map((d) => {
    const mine = d.id === devices.current;
    const role = h("select", { "aria-label": `Role of ${d.name}` }, ROLES.map((r) => h("option", { value: r, selected: r === d.role }, r)));
    role.addEventListener("change", () => act("change the role", () => api(`/v1/devices/${encodeURIComponent(d.id)}`, { method: "PATCH", body: { role: role.value } })));
    const rename = h("button", { type: "button", class: "ghost" }, "Rename");
    rename.addEventListener("click", () => {
      const name = prompt("New name", d.name);
      if (name && name.trim()) act("rename", () => api(`/v1/devices/${encodeURIComponent(d.id)}`, { method: "PATCH", body: { name: name.trim() } }));
    });
    const revoke = h("button", { type: "button", class: "danger" }, "Revoke");
    revoke.addEventListener("click", () => {
      if (confirm(`Revoke ${d.name}? It is signed out at once.`)) act("revoke", () => api(`/v1/devices/${encodeURIComponent(d.id)}`, { method: "DELETE" }));
    });
    const used = d.last_used_at ? `used ${ago(d.last_used_at)}${d.last_address ? ` from ${d.last_address}` : ""}` : "never used";
    return h("li", { class: "device", dataset: { id: d.id } },
      h("div", { class: "row" },
        h("strong", null, d.name), mine ? h("span", { class: "badge" }, "this browser") : null,
        h("span", { class: "muted" }, d.kind === "api_key" ? "API key" : "browser"),
        h("div", { class: "spacer" }), role, rename, revoke),
      h("div", { class: "muted small" }, used));
  });

  // ---- rules ------------------------------------------------------------------------
  const ruleRows = (policy.rules || []).map((r) => {
    const remove = h("button", { type: "button", class: "ghost" }, "Remove");
    remove.addEventListener("click", () => act("remove the rule", () => api(`/v1/policy/rules/${encodeURIComponent(r.id)}`, { method: "DELETE" })));
    const scope = r.session_id ? `session ${r.session_id}` : r.environment_id ? `environment ${r.environment_id}` : "all sessions";
    return h("li", { class: "rule", dataset: { id: r.id } },
      h("span", { class: `badge decision-${r.decision}` }, r.decision),
      h("span", { class: "mono" }, r.tool, r.pattern ? ` ${r.pattern}` : ""),
      h("span", { class: "muted small" }, scope),
      h("div", { class: "spacer" }), remove);
  });
  const tool = h("input", { type: "text", placeholder: "Bash", required: true, "aria-label": "Tool" });
  const pattern = h("input", { type: "text", placeholder: "git status (optional)", "aria-label": "Pattern" });
  const decision = h("select", { "aria-label": "Decision" }, ["allow", "deny", "ask"].map((d) => h("option", { value: d }, d)));
  const addForm = h("form", { class: "row rule-form" }, tool, pattern, decision, h("button", { type: "submit" }, "Add rule"));
  addForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = { tool: tool.value.trim(), decision: decision.value };
    if (pattern.value.trim()) body.pattern = pattern.value.trim();
    act("add the rule", () => api("/v1/policy/rules", { body }));
  });
  const fallback = h("select", { "aria-label": "Default answer" }, ["ask", "allow", "deny"].map((d) => h("option", { value: d, selected: d === policy.default }, d)));
  const timeout = h("input", { type: "number", min: 1, placeholder: "none", value: policy.timeout_seconds ?? "", "aria-label": "Timeout in seconds" });
  const settingsForm = h("form", { class: "row" },
    h("label", null, "When no rule matches ", fallback),
    h("label", null, " timeout (s) ", timeout),
    h("button", { type: "submit" }, "Save"));
  settingsForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = { default: fallback.value };
    if (timeout.value) body.timeout_seconds = Number(timeout.value);
    act("save", () => api("/v1/policy/settings", { method: "PUT", body }));
  });

  // ---- audit log --------------------------------------------------------------------
  const auditList = h("ol", { class: "audit" });
  const more = h("button", { type: "button", class: "ghost" }, "Older entries");
  let before = null;
  async function page() {
    more.disabled = true;
    try {
      const q = new URLSearchParams({ limit: "50" });
      if (before != null) q.set("before_id", String(before));
      const got = await api(`/v1/audit?${q}`);
      for (const e of got.data || []) {
        const who = e.credential_name || e.credential_id || e.detail?.by || "server";
        const what = e.detail?.rule ? `${e.action} (${e.detail.behavior} by ${e.detail.rule})` : e.detail?.behavior ? `${e.action} (${e.detail.behavior})` : e.action;
        auditList.append(h("li", null,
          h("time", { datetime: e.at, title: new Date(e.at).toLocaleString() }, ago(e.at)), " ",
          h("strong", null, what), " ",
          h("span", { class: "muted" }, `by ${who}${e.address ? ` from ${e.address}` : ""}${e.session_id ? ` on ${e.session_id}` : ""}`)));
        before = e.id;
      }
      more.hidden = !got.has_more;
    } catch (e) {
      say(`Couldn't load the audit log: ${e.message}`, "error");
    }
    more.disabled = false;
  }
  more.addEventListener("click", page);

  card.replaceChildren(
    h("div", { class: "row" }, h("strong", null, "Devices, approval rules and audit log"), h("div", { class: "spacer" }),
      h("button", { type: "button", class: "ghost", onclick: () => { card.hidden = true; delete card.dataset.open; } }, "Close")),
    h("h3", null, "Devices"),
    h("ul", { class: "devices" }, deviceRows),
    h("h3", null, "Approval rules"),
    h("p", { class: "muted small" }, "The first rule that matches a permission request answers it. Bash: a command prefix; file tools: a path glob (* and **); WebFetch: a domain."),
    ruleRows.length ? h("ol", { class: "rules" }, ruleRows) : h("p", { class: "muted" }, "No rules: every request waits for a person."),
    addForm,
    settingsForm,
    h("h3", null, "Audit log"),
    auditList,
    more,
    status);
  page();
}
