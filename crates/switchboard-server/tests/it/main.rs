//! Integration tests: the real server on an ephemeral port, driven through
//! `switchboard-client` the way the official client drives it.

// Test helpers are shared across modules of this one binary; visibility lints are for
// library APIs.
#![allow(unreachable_pub)]

mod access; // Every route and socket × every credential class (routes read from router.rs).
mod bridge; // EnvLessBridge against the real server: refreshes, teardown.
mod common; // TestServer: start, URLs, clients, extra keys.
mod connections; // Slow and half-sent requests are cut; caps on connections; accepting goes on.
mod environments; // The standalone environment flow: register, poll, ack, stop, deregister.
mod errors; // JSON error bodies: bad ids, bad JSON, oversized bodies, unknown routes.
mod fixtures; // Replays of the official CLI's wire captures.
mod full_disk; // A full disk answers 503 with a message; reads go on; writes recover.
mod hardening; // Issue #12: worker credentials, epoch fencing, revocation, size caps.
mod ingress; // The v1 session-ingress WebSocket and POST.
mod isolation; // Token classes and owners never reach each other's data.
mod notify; // Notifications: webhook, ntfy and Web Push against doubles on 127.0.0.1.
mod official; // The official `claude remote-control`: its plane, restarts, answer echoes.
mod proxy; // Forwarded headers believed from trusted proxies only.
mod roles; // Issue #16: roles × routes and socket messages, devices, approval policy, audit.
mod sessions; // The Sessions API: create, get, patch, list, archive, history.
mod tls; // TLS termination: https, wss, certificates reloaded.
mod v2; // The v2 worker API: code sessions, epochs, worker state, SSE, delivery.
mod v2_types; // The v2 worker API round-trips through the proto types of server and client.
mod viewer_client;
mod viewers;
mod web;
mod websec; // CSRF on sign-in, rate limits, revocation closing sockets, nosniff, /metrics. // Browser sign-in, the session cookie, and the embedded UI. // The viewer subscribe socket: fan-out, permission answers, slow viewers. // switchboard_client::ViewerSocket against the viewer WebSocket.
