// Switchboard web UI: sign-in, the session list and (in session.js) one session.
// Plain ES modules, no build step. Routes: /, /s/<session id>, /pair/<token>.

import { h, ago, uuid } from "./dom.js";
import { sessionView } from "./session.js";
import { notifyPanel } from "./notify.js";
import { accessPanel, canDo } from "./access.js";

const root = document.getElementById("app");
let current = null; // the mounted view: { destroy() }
let routeToken = 0;

/** An HTTP error with the server's message. */
class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** fetch + JSON; throws HttpError (with the API's error message) on non-2xx. */
export async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: {}, ...options };
  if (options.body !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "content-type": "application/json", ...init.headers };
    init.body = JSON.stringify(options.body);
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    throw new HttpError(res.status, data?.error?.message || `${res.status} ${res.statusText}`);
  }
  return data;
}

export function navigate(path, replace = false) {
  history[replace ? "replaceState" : "pushState"](null, "", path);
  route();
}

/** Called when the server says we are not signed in (any more). */
export function signedOut() {
  route();
}

window.addEventListener("popstate", () => route());
document.addEventListener("click", (e) => {
  const a = e.target.closest?.("a[data-nav]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});

function mount(view) {
  current = view;
}

async function route() {
  const token = ++routeToken;
  current?.destroy?.();
  current = null;
  document.title = "Switchboard";
  const path = location.pathname;
  const pair = path.match(/^\/pair\/([^/]+)\/?$/);
  if (pair) return pairView(decodeURIComponent(pair[1]));
  let me;
  try {
    me = await api("/web/me");
  } catch (e) {
    if (token !== routeToken) return;
    if (e.status === 401 || e.status === 403) return signInView();
    return offlineView(e);
  }
  if (token !== routeToken) return;
  const s = path.match(/^\/s\/([A-Za-z0-9_-]+)\/?$/);
  if (s) mount(sessionView(root, s[1], { api, navigate, signedOut, me }));
  else mount(listView(me));
}

function screen(...kids) {
  root.replaceChildren(h("div", { class: "screen" }, kids));
}

/** The server can't be reached (offline, or it is restarting): say so and keep trying. */
function offlineView(err) {
  const token = routeToken;
  const offline = err.status === undefined;
  screen(
    h("div", { class: "card narrow offline", role: "status" },
      h("h1", null, offline ? "Offline, reconnecting…" : "Can't reach Switchboard"),
      h("p", { class: "muted" }, offline ? "Switchboard will open as soon as the server answers again." : err.message || "The server did not answer."),
      h("button", { class: "primary", onclick: () => route() }, "Try again")),
  );
  const again = () => {
    window.removeEventListener("online", again);
    clearTimeout(timer);
    if (token === routeToken) route();
  };
  const timer = setTimeout(again, 5000);
  window.addEventListener("online", again);
}

function signInView() {
  const key = h("input", {
    type: "password", name: "key", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "sbk_…", "aria-label": "API key",
  });
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const button = h("button", { class: "primary", type: "submit" }, "Sign in");
  const form = h("form", {
    class: "card narrow signin",
    onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      button.disabled = true;
      try {
        await api("/web/login", { body: { key: key.value.trim() } });
        key.value = "";
        route();
      } catch (err) {
        error.textContent = err.status === 401 || err.status === 403 ? "That API key is not valid." : err.message;
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    },
  },
  h("div", { class: "brand big" }, h("img", { src: "/icon.svg", alt: "", width: 36, height: 36 }), "Switchboard"),
  h("p", { class: "muted" }, "Watch and drive your coding agents. Sign in with an API key, or open a pairing link from a device that is signed in."),
  h("label", null, "API key", key),
  error,
  button);
  screen(form);
  key.focus();
}

async function pairView(token) {
  screen(h("div", { class: "card narrow" }, h("p", null, "Signing in…")));
  try {
    await api("/web/pair", { body: { token } });
    // Open the page the link was made for (a session), dropping the one-time link from
    // the history; only paths of this app are followed.
    const next = new URLSearchParams(location.search).get("next");
    navigate(next && /^\/s\/[A-Za-z0-9_-]+$/.test(next) ? next : "/", true);
  } catch (e) {
    history.replaceState(null, "", "/");
    screen(
      h("div", { class: "card narrow" },
        h("h1", null, "This pairing link didn't work"),
        h("p", { class: "error" }, e.message),
        h("p", { class: "muted" }, "Pairing links work once and only for a few minutes. Create a new one on a signed-in device."),
        h("a", { href: "/", "data-nav": true, class: "button" }, "Sign in with an API key")),
    );
  }
}

function topBar(...right) {
  return h("header", { class: "bar" },
    h("a", { href: "/", "data-nav": true, class: "brand" }, h("img", { src: "/icon.svg", alt: "", width: 24, height: 24 }), "Switchboard"),
    h("div", { class: "spacer" }),
    right);
}

function sessionState(s) {
  if (s.session_status === "archived") return ["archived", "archived"];
  if (!s.worker_connected) return ["offline", "worker offline"];
  if (s.session_status === "requires_action") return ["action", "needs approval"];
  if (s.session_status === "running") return ["running", "running"];
  return ["idle", "idle"];
}

function listView(me) {
  let timer = null;
  let destroyed = false;
  const list = h("ul", { class: "sessions", "aria-label": "Sessions" });
  const status = h("p", { class: "muted list-status" }, "Loading sessions…");
  const pairPanel = h("div", { class: "card pairing", hidden: true });
  const notifyCard = h("div", { class: "card notify-panel", hidden: true });
  const accessCard = h("div", { class: "card access-panel", hidden: true });

  async function pairDevice() {
    pairPanel.hidden = false;
    pairPanel.replaceChildren(h("p", null, "Creating a pairing link…"));
    try {
      const p = await api("/web/pairings", { method: "POST" });
      const input = h("input", { type: "text", readOnly: true, value: p.url, class: "mono", "aria-label": "Pairing link" });
      const copy = h("button", {
        type: "button",
        onclick: async () => {
          input.select();
          try { await navigator.clipboard.writeText(p.url); copy.textContent = "Copied"; } catch { document.execCommand?.("copy"); }
        },
      }, "Copy");
      pairPanel.replaceChildren(
        h("div", { class: "row" }, h("strong", null, "Pair another device"), h("div", { class: "spacer" }),
          h("button", { type: "button", class: "ghost", onclick: () => { pairPanel.hidden = true; } }, "Close")),
        h("p", { class: "muted" }, "Open this link on the other device. It signs that device in once and expires ",
          h("time", { datetime: p.expires_at, title: p.expires_at }, new Date(p.expires_at).toLocaleTimeString()), "."),
        h("div", { class: "row" }, input, copy),
      );
      input.addEventListener("focus", () => input.select());
    } catch (e) {
      pairPanel.replaceChildren(h("p", { class: "error" }, `Couldn't create a pairing link: ${e.message}`));
    }
  }

  async function signOut() {
    try { await api("/web/logout", { method: "POST" }); } catch { /* signed out anyway */ }
    route();
  }

  async function signOutEverywhere() {
    try {
      await api("/web/logout/all", { method: "POST" });
    } catch (e) {
      warn.textContent = `Couldn't sign out everywhere: ${e.message}`;
      warn.hidden = false;
      return;
    }
    route();
  }

  // "New session": pick an online environment, type the first prompt, start it there.
  const newPanel = h("form", { class: "card new-session", hidden: true, "aria-label": "New session" });
  async function newSession() {
    newPanel.hidden = false;
    newPanel.replaceChildren(h("p", null, "Loading environments…"));
    let envs;
    try {
      envs = ((await api("/v1/environments"))?.data || []).filter((e) => e.online);
    } catch (e) {
      newPanel.replaceChildren(h("p", { class: "error" }, `Couldn't load environments: ${e.message}`));
      return;
    }
    const close = h("button", { type: "button", class: "ghost", onclick: () => { newPanel.hidden = true; } }, "Close");
    const head = h("div", { class: "row" }, h("strong", null, "Start a session"), h("div", { class: "spacer" }), close);
    if (!envs.length) {
      newPanel.replaceChildren(head, h("p", { class: "muted" },
        "No environment is online. Run `claude remote-control` (or `switchboard bridge`) on a machine pointed at this server; it shows up here."));
      return;
    }
    const select = h("select", { name: "environment", "aria-label": "Environment" },
      envs.map((e) => h("option", { value: e.id }, `${e.machine_name}:${e.directory}${e.branch ? ` (${e.branch})` : ""}`)));
    const input = h("textarea", { name: "prompt", rows: 3, required: true, placeholder: "What should Claude do?", "aria-label": "First prompt" });
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const start = h("button", { class: "primary", type: "submit" }, "Start");
    newPanel.onsubmit = async (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      start.disabled = true;
      error.hidden = true;
      try {
        const message = { type: "user", uuid: uuid(), parent_tool_use_id: null, message: { role: "user", content: text } };
        const s = await api("/v1/sessions", {
          body: { environment_id: select.value, title: text.split("\n")[0].slice(0, 80), events: [{ type: "event", data: message }] },
        });
        navigate(`/s/${encodeURIComponent(s.id)}`);
      } catch (err) {
        error.textContent = `Couldn't start the session: ${err.message}`;
        error.hidden = false;
        start.disabled = false;
      }
    };
    newPanel.replaceChildren(head,
      h("label", null, "Environment", select),
      h("label", null, "First prompt", input),
      error,
      h("div", { class: "row" }, h("div", { class: "spacer" }), start));
    input.focus();
  }

  function render(sessions) {
    // Waiting for approval first, archived last, otherwise the most recent first.
    const rank = (s) => (s.session_status === "requires_action" ? 0 : s.session_status === "archived" ? 2 : 1);
    sessions.sort((a, b) => {
      if (rank(a) !== rank(b)) return rank(a) - rank(b);
      const ta = Date.parse(a.last_activity_at || a.updated_at || a.created_at) || 0;
      const tb = Date.parse(b.last_activity_at || b.updated_at || b.created_at) || 0;
      return tb - ta;
    });
    status.hidden = sessions.length > 0;
    if (!sessions.length) {
      status.textContent = "No sessions yet. Point Claude Code at this server and run `claude remote-control`; its sessions show up here.";
    }
    let waiting = 0;
    list.replaceChildren(...sessions.map((s) => {
      let [cls, label] = sessionState(s);
      const asked = s.requires_action?.request;
      const tool = asked?.display_name || asked?.tool_name || asked?.mcp_server_name;
      if (cls === "action" && typeof tool === "string") label = `needs approval: ${tool}`;
      const ctx = s.session_context && typeof s.session_context === "object" ? s.session_context : {};
      const dir = s.directory || ctx.cwd || ctx.working_directory;
      const place = s.machine_name && dir ? `${s.machine_name}:${dir}` : s.machine_name || dir;
      const where = [place, ctx.model].filter((x) => typeof x === "string" && x).join(" · ");
      const needs = s.session_status === "requires_action";
      if (needs) waiting++;
      const activity = s.last_activity_at || s.updated_at || s.created_at;
      return h("li", { class: needs ? "needs" : null },
        h("a", { href: `/s/${encodeURIComponent(s.id)}`, "data-nav": true, class: "session-link", dataset: { id: s.id } },
          h("div", { class: "row" },
            h("span", { class: "title" }, s.title || s.id),
            needs ? h("span", { class: "badge warn" }, "Approval needed") : null,
            s.shared_role ? h("span", { class: "badge shared", title: `Shared with you; you may act as ${s.shared_role}` }, `shared · ${s.shared_role}`) : null),
          h("div", { class: "row meta" },
            h("span", { class: `state ${cls}` }, h("span", { class: "dot", "aria-hidden": "true" }), label),
            where ? h("span", { class: "where mono" }, where) : null,
            h("div", { class: "spacer" }),
            h("time", { datetime: activity || "", title: activity ? new Date(activity).toLocaleString() : "" }, ago(activity)))));
    }));
    document.title = waiting ? `(${waiting}) Switchboard` : "Switchboard";
  }

  async function poll() {
    timer = null;
    if (destroyed) return;
    if (document.visibilityState !== "hidden") {
      try {
        // The owner's sessions, and those other owners shared with it (an older server
        // has no such list: none then).
        const [page, shared] = await Promise.all([
          api("/v1/sessions?limit=100"),
          api("/v1/shared_sessions").catch((e) => { if (e.status === 401) throw e; return null; }),
        ]);
        if (destroyed) return;
        const own = Array.isArray(page?.data) ? page.data : [];
        render(own.concat(Array.isArray(shared?.data) ? shared.data : []));
        warn.hidden = true;
      } catch (e) {
        if (destroyed) return;
        if (e.status === 401) return signedOut();
        warn.textContent = `Can't load sessions (${e.message}); retrying…`;
        warn.hidden = false;
      }
    }
    timer = setTimeout(poll, 4000);
  }
  const warn = h("p", { class: "error", role: "status", hidden: true });
  const onVisible = () => {
    if (document.visibilityState === "visible" && timer) { clearTimeout(timer); poll(); }
  };
  document.addEventListener("visibilitychange", onVisible);

  root.replaceChildren(
    h("div", { class: "page" },
      topBar(
        // What the role may not do is not offered (the server refuses it anyway).
        canDo(me, "driver") && h("button", { type: "button", class: "ghost", onclick: newSession }, "New session"),
        h("button", { type: "button", class: "ghost", onclick: () => notifyPanel(notifyCard, api) }, "Notifications"),
        canDo(me, "admin") && h("button", { type: "button", class: "ghost", onclick: () => accessPanel(accessCard, api) }, "Devices & rules"),
        canDo(me, "driver") && h("button", { type: "button", class: "ghost", onclick: pairDevice }, "Pair device"),
        h("button", { type: "button", class: "ghost", onclick: signOut }, "Sign out"),
        canDo(me, "admin") && h("button", { type: "button", class: "ghost", onclick: signOutEverywhere }, "Sign out everywhere")),
      h("main", { class: "content" },
        h("h1", { class: "page-title" }, "Sessions"),
        newPanel, pairPanel, notifyCard, accessCard, warn, status, list)),
  );
  poll();
  return {
    destroy() {
      destroyed = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}

route();
