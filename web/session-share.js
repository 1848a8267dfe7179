// Sharing a session with another owner (docs/PROTOCOL.md §18.6): the session owner's
// admin sees who it is shared with and at which role, shares it with another owner by
// name, changes a role or ends a share. Shown only to an admin on their own session.

import { h } from "./dom.js";

const ROLES = ["viewer", "approver", "driver", "admin"];

/** The "Share" panel of session `id` (a <details> that loads its list when opened). */
export function sharePanel(api, id) {
  const base = `/v1/sessions/${encodeURIComponent(id)}/shares`;
  const list = h("ul", { class: "shares" });
  const status = h("p", { class: "muted", role: "status", hidden: true });
  const owner = h("input", { type: "text", placeholder: "owner name", autocomplete: "off", spellcheck: "false", "aria-label": "Share with (owner name)", required: true });
  const role = h("select", { "aria-label": "Share role" }, ROLES.map((r) => h("option", { value: r }, r)));

  function say(text) {
    status.textContent = text;
    status.hidden = !text;
  }

  async function load() {
    try {
      const page = await api(base);
      const shares = Array.isArray(page?.data) ? page.data : [];
      list.replaceChildren(...shares.map((s) => h("li", { dataset: { owner: s.owner } },
        h("span", { class: "share-owner" }, s.owner), " · ", h("span", { class: "share-role" }, s.role),
        h("button", { type: "button", class: "ghost", onclick: () => remove(s.owner) }, "Remove"))));
      if (!shares.length) list.replaceChildren(h("li", { class: "muted" }, "Not shared with anyone."));
    } catch (e) {
      say(`Can't load the shares: ${e.message}`);
    }
  }

  async function add(e) {
    e.preventDefault();
    const name = owner.value.trim();
    if (!name) return;
    try {
      await api(`${base}/${encodeURIComponent(name)}`, { method: "PUT", body: { role: role.value } });
      owner.value = "";
      say(`Shared with ${name} as ${role.value}.`);
      await load();
    } catch (err) {
      say(`Couldn't share: ${err.message}`);
    }
  }

  async function remove(name) {
    try {
      await api(`${base}/${encodeURIComponent(name)}`, { method: "DELETE" });
      say(`No longer shared with ${name}.`);
      await load();
    } catch (err) {
      say(`Couldn't end the share: ${err.message}`);
    }
  }

  const panel = h("details", { class: "share-panel" },
    h("summary", null, "Share"),
    h("form", { class: "settings-form", onsubmit: add },
      h("label", null, "Share with another owner", h("div", { class: "row" }, owner, role, h("button", { type: "submit" }, "Share")))),
    list,
    status);
  panel.addEventListener("toggle", () => { if (panel.open) load(); });
  return panel;
}
