// The notification settings panel: this device's Web Push subscription, which events
// notify, the webhook and ntfy channels, and a test. Everything goes through
// /v1/notify/* with the session cookie.

import { h } from "./dom.js";

/** base64url → bytes, for the server's VAPID key. */
function bytes(b64) {
  const s = atob(b64.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((b64.length + 3) % 4));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** This browser's push subscription, or null; `supported` says whether it could have one. */
async function currentSubscription() {
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !window.isSecureContext) return { supported: false, sub: null };
  const reg = await navigator.serviceWorker.getRegistration("/");
  return { supported: true, reg, sub: reg ? await reg.pushManager.getSubscription() : null };
}

/** Subscribes this browser and tells the server. */
export async function subscribe(api, publicKey) {
  const permission = await Notification.requestPermission();
  if (permission !== "granted") throw new Error(permission === "denied" ? "Notifications are blocked for this site in the browser's settings." : "Notifications were not allowed.");
  const reg = await navigator.serviceWorker.ready;
  let sub = await reg.pushManager.getSubscription();
  if (!sub) sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: bytes(publicKey) });
  return api("/v1/notify/push/subscriptions", { body: sub.toJSON() });
}

/** Fills `card` with the panel (toggles it closed when open). */
export async function notifyPanel(card, api) {
  if (!card.hidden && card.dataset.open) {
    card.hidden = true;
    delete card.dataset.open;
    return;
  }
  card.hidden = false;
  card.dataset.open = "1";
  card.replaceChildren(h("p", null, "Loading notification settings…"));
  let settings;
  let device;
  try {
    [settings, device] = await Promise.all([api("/v1/notify"), currentSubscription()]);
  } catch (e) {
    card.replaceChildren(h("p", { class: "error" }, `Couldn't load notification settings: ${e.message}`));
    return;
  }
  const status = h("p", { class: "muted notify-status", role: "status" });
  const say = (text, cls = "muted") => { status.className = `${cls} notify-status`; status.textContent = text; };
  const reload = () => { delete card.dataset.open; notifyPanel(card, api); };

  // ---- this device ------------------------------------------------------------------
  const mine = device.sub && settings.push.subscriptions.find((s) => s.endpoint === device.sub.endpoint);
  let deviceRow;
  if (!device.supported) {
    const ios = /iPhone|iPad/.test(navigator.userAgent);
    deviceRow = h("p", { class: "muted" }, ios
      ? "To get notifications on an iPhone or iPad, add Switchboard to the Home Screen (Share → Add to Home Screen) and open it from there."
      : "This browser can't receive push notifications here (it needs https, or localhost).");
  } else if (mine) {
    deviceRow = h("div", { class: "row" }, h("span", null, "This device gets notifications."), h("div", { class: "spacer" }),
      h("button", { type: "button", onclick: async () => {
        try {
          await device.sub.unsubscribe();
          await api(`/v1/notify/push/subscriptions/${encodeURIComponent(mine.id)}`, { method: "DELETE" });
          reload();
        } catch (e) { say(e.message, "error"); }
      } }, "Turn off"));
  } else {
    deviceRow = h("div", { class: "row" }, h("span", null, "Get notifications on this device."), h("div", { class: "spacer" }),
      h("button", { type: "button", class: "primary", onclick: async () => {
        say("Asking for permission…");
        try {
          await subscribe(api, settings.push.public_key);
          reload();
        } catch (e) { say(e.message, "error"); }
      } }, "Turn on"));
  }
  const others = settings.push.subscriptions.filter((s) => s !== mine);
  const otherList = others.length ? h("ul", { class: "notify-devices" }, others.map((s) =>
    h("li", { class: "row" }, h("span", { class: "mono" }, `${s.service}`), h("span", { class: "muted" }, shortAgent(s.user_agent)), h("div", { class: "spacer" }),
      h("button", { type: "button", class: "ghost", onclick: async () => {
        try { await api(`/v1/notify/push/subscriptions/${encodeURIComponent(s.id)}`, { method: "DELETE" }); reload(); } catch (e) { say(e.message, "error"); }
      } }, "Remove")))) : null;

  // ---- events -----------------------------------------------------------------------
  const boxes = settings.events.map((e) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: e.name, checked: e.enabled, onchange: saveEvents }), e.description));
  async function saveEvents() {
    const events = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.name);
    try { await api("/v1/notify/events", { method: "PUT", body: { events } }); say("Saved."); } catch (e) { say(e.message, "error"); }
  }

  // ---- webhook and ntfy -------------------------------------------------------------
  const channel = (kind, label, hint, secretLabel) => {
    const set = settings.channels.find((c) => c.kind === kind);
    const url = h("input", { type: "url", value: set?.url || "", placeholder: hint, "aria-label": `${label} URL`, spellcheck: "false" });
    const secret = h("input", { type: "password", value: "", placeholder: set && kind === "ntfy" && set.token ? "(token set; leave empty to keep none)" : "optional", "aria-label": secretLabel, autocomplete: "off" });
    const shown = set?.secret ? h("p", { class: "muted mono notify-secret" }, `Signing key: ${set.secret}`) : null;
    return h("form", { class: "notify-channel", onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api(`/v1/notify/channels/${kind}`, { method: "PUT", body: { url: url.value.trim(), secret: secret.value.trim() || null } });
        reload();
      } catch (err) { say(err.message, "error"); }
    } },
    h("strong", null, label),
    h("div", { class: "row" }, url),
    h("label", { class: "muted" }, secretLabel, secret),
    shown,
    h("div", { class: "row" }, h("button", { type: "submit" }, "Save"),
      set && h("button", { type: "button", class: "ghost", onclick: async () => {
        try { await api(`/v1/notify/channels/${kind}`, { method: "DELETE" }); reload(); } catch (err) { say(err.message, "error"); }
      } }, "Remove")));
  };

  const test = h("button", { type: "button", onclick: async () => {
    say("Sending…");
    try {
      const r = await api("/v1/notify/test", { method: "POST" });
      say(r.results.length ? r.results.map((x) => `${x.ok ? "✓" : "✗"} ${x.target}: ${x.detail}`).join(" · ") : "Nowhere to send yet.", r.results.every((x) => x.ok) ? "muted" : "error");
    } catch (e) { say(e.message, "error"); }
  } }, "Send a test");

  card.replaceChildren(
    h("div", { class: "row" }, h("strong", null, "Notifications"), h("div", { class: "spacer" }),
      h("button", { type: "button", class: "ghost", onclick: () => { card.hidden = true; delete card.dataset.open; } }, "Close")),
    deviceRow,
    otherList,
    h("fieldset", { class: "notify-events" }, h("legend", null, "Notify me when"), boxes),
    channel("webhook", "Webhook", "https://example.com/hook", "Signing key (empty: a new one)"),
    channel("ntfy", "ntfy", "https://ntfy.sh/your-topic", "Access token"),
    h("div", { class: "row" }, test),
    status,
  );
}

function shortAgent(ua) {
  if (!ua) return "";
  const m = ua.match(/(Firefox|Edg|Chrome|Safari)\/[\d.]+/);
  const os = ua.match(/\((?:[^;)]*;\s*)?([^;)]+)/);
  return [m?.[1] === "Edg" ? "Edge" : m?.[1], os?.[1]].filter(Boolean).join(" on ");
}
