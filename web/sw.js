// The service worker: keeps the app's shell so it opens at once (and says "offline,
// reconnecting" rather than showing a browser error), and shows Web Push notifications,
// whose Allow and Deny answer a permission request through the same endpoint the page
// uses (first answer wins on the server).
//
// API calls are never cached: only the static files below, revalidated in the
// background each time they are served.

const CACHE = "switchboard-shell-v1";
const SHELL = [
  "/", "/app.css", "/app.js", "/dom.js", "/markdown.js", "/session.js", "/session-state.js",
  "/session-socket.js", "/session-outbox.js", "/session-transcript.js", "/session-chat.js",
  "/session-tools.js", "/session-turns.js", "/session-control.js", "/diff.js", "/review.js",
  "/session-share.js", "/notify.js", "/access.js", "/pwa.js", "/icon.svg", "/manifest.webmanifest", "/icons/icon-192.png",
];
const API = /^\/(v1|v2|api|web|health|metrics)(\/|$)/;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(SHELL.map((u) => new Request(u, { cache: "no-cache" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (key !== CACHE) await caches.delete(key);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (url.origin !== location.origin || API.test(url.pathname)) return;
  // Every app route is the same page.
  const key = req.mode === "navigate" ? "/" : url.pathname;
  event.respondWith(fromShell(key, req, event));
});

/** The cached copy at once (refreshed behind it), else the network. */
async function fromShell(key, req, event) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match(key);
  const fresh = fetch(req.mode === "navigate" ? new Request("/", { cache: "no-cache" }) : req)
    .then(async (res) => {
      if (res.ok && SHELL.includes(key)) await cache.put(key, res.clone());
      return res;
    });
  if (cached) {
    event.waitUntil(fresh.catch(() => {}));
    return cached;
  }
  try {
    return await fresh;
  } catch {
    return new Response("Offline — reconnecting…", { status: 503, headers: { "content-type": "text/plain; charset=utf-8" } });
  }
}

// ---- notifications --------------------------------------------------------------------

self.addEventListener("push", (event) => {
  let n;
  try {
    n = event.data?.json();
  } catch {
    return;
  }
  if (!n || typeof n !== "object") return;
  event.waitUntil(show(n));
});

async function show(n) {
  const tag = String(n.collapse_key || n.session_id || "switchboard");
  if (n.type === "resolved") {
    // Answered (here, on another device or in the terminal): its card goes.
    for (const old of await self.registration.getNotifications({ tag })) {
      if (!n.request_id || old.data?.request_id === n.request_id) old.close();
    }
    return;
  }
  const permission = n.type === "permission" && n.request_id;
  // Allow only what the notification shows whole (one line, not cut, nothing masked, as
  // the server says in `shown_in_full`); otherwise the choice is to review it on its card.
  const actions = !permission ? []
    : n.shown_in_full === true ? [{ action: "allow", title: "Allow" }, { action: "deny", title: "Deny" }]
    : [{ action: "review", title: "Review" }, { action: "deny", title: "Deny" }];
  await self.registration.showNotification(String(n.title || "Switchboard"), {
    body: String(n.body || ""),
    tag,
    renotify: true,
    requireInteraction: n.type === "permission" || n.type === "question",
    icon: "/icons/icon-192.png",
    badge: "/icons/icon-192.png",
    data: n,
    actions,
  });
}

self.addEventListener("notificationclick", (event) => {
  event.waitUntil(onNotificationClick(event.notification, event.action));
});

/** A tap on the notification opens the session at its card; Allow or Deny answer. */
async function onNotificationClick(notification, action) {
  const n = notification.data || {};
  notification.close();
  if ((action === "allow" || action === "deny") && n.request_id && n.session_id) return answer(n, action);
  return open(n.url || "/");
}

/** Focuses an open window of the app on `url`, or opens one. */
async function open(url) {
  const target = new URL(url, location.origin);
  if (target.origin !== location.origin) return;
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const w of windows) {
    if (new URL(w.url).origin === location.origin && "focus" in w) {
      await w.focus();
      if ("navigate" in w) await w.navigate(target.href).catch(() => {});
      return;
    }
  }
  await self.clients.openWindow(target.href);
}

/**
 * Answers the permission request from the notification, signed in by the page's cookie:
 * the request's full input comes from the session (the notification carries only a
 * summary), and the server keeps only the first answer.
 */
async function answer(n, action) {
  const session = encodeURIComponent(n.session_id);
  let outcome;
  try {
    const res = await fetch(`/v1/sessions/${session}`, { credentials: "same-origin" });
    if (!res.ok) throw new Error(res.status === 401 ? "signed out" : `${res.status}`);
    const info = await res.json();
    const pending = info.requires_action;
    if (!pending || String(pending.request_id) !== String(n.request_id)) {
      outcome = "already answered";
    } else if (action === "allow" && (n.shown_in_full !== true || !shownInFull(n, pending.request?.input))) {
      // The notification showed part of the command (one line of several, cut, or with
      // secrets masked): what would be allowed was never seen, so the card (with the
      // whole input) is opened instead, even if an Allow action was somehow used.
      await open(n.url || "/");
      outcome = "opened for review";
    } else {
      const response = action === "allow"
        ? { behavior: "allow", updatedInput: pending.request?.input ?? {} }
        : { behavior: "deny", message: "Denied from a notification" };
      const post = await fetch(`/v1/sessions/${session}/events`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ events: [{ type: "control_response", response: { subtype: "success", request_id: String(n.request_id), response } }] }),
      });
      if (!post.ok) throw new Error(`${post.status}`);
      const body = await post.json().catch(() => ({}));
      outcome = body?.events?.[0]?.ignored ? "already answered" : action === "allow" ? "allowed" : "denied";
    }
  } catch (e) {
    outcome = `failed (${e.message})`;
  }
  await reportAnswer(n, outcome);
}

/**
 * Whether the notification showed the request's command whole: a command of more lines
 * (or longer) than its one-line summary is never allowed from the notification.
 */
function shownInFull(n, input) {
  const command = input && typeof input.command === "string" ? input.command : null;
  if (command === null) return true;
  return !command.includes("\n") && command.trim() === String(n.body ?? "").trim();
}

async function reportAnswer(n, outcome) {
  const ok = outcome === "allowed" || outcome === "denied" || outcome === "opened for review";
  const tool = n.tool || "the tool";
  // Clients (open pages, tests) hear about it too.
  for (const w of await self.clients.matchAll({ type: "window", includeUncontrolled: true })) {
    w.postMessage({ type: "switchboard-answer", request_id: n.request_id, outcome });
  }
  if (ok) return;
  await self.registration.showNotification(outcome === "already answered" ? `${tool}: already answered` : `Couldn't answer for ${tool}`, {
    body: outcome === "already answered" ? "Someone answered this request first." : "Open the session to answer it.",
    tag: String(n.collapse_key || n.session_id),
    data: { ...n, type: "info", request_id: null },
    icon: "/icons/icon-192.png",
  });
}
