//! Every route and socket × every class of credential, with the status (or close code)
//! each must get. The route list is read from `src/router.rs`, so a route added there
//! without a row here fails `every_route_has_a_row`.
//!
//! Each cell runs against a world of its own (an environment, a session on it with its
//! work polled, and two worker JWTs of that session: one of the current epoch, one of
//! the epoch before), so what one cell changes (an archive, a stop, a new epoch) cannot
//! change the next cell's answer.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// The classes of credential a request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cred {
    /// No credential at all.
    None,
    /// A string that is no token of ours.
    Garbage,
    /// The session owner's API key.
    Owner,
    /// Another owner's API key.
    OtherOwner,
    /// The environment's secret.
    EnvSecret,
    /// The ingress token of the session's work.
    Ingress,
    /// The ingress token of another session (same owner).
    IngressOther,
    /// A worker JWT of the session's current epoch.
    Jwt,
    /// A worker JWT of the session's previous epoch.
    JwtOld,
    /// The owner's web session cookie.
    Cookie,
    /// A pairing token, used as a bearer.
    Pairing,
}

const CREDS: [Cred; 11] = [
    Cred::None,
    Cred::Garbage,
    Cred::Owner,
    Cred::OtherOwner,
    Cred::EnvSecret,
    Cred::Ingress,
    Cred::IngressOther,
    Cred::Jwt,
    Cred::JwtOld,
    Cred::Cookie,
    Cred::Pairing,
];

/// Who a route is for; each kind fixes the answer of every credential class.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// No credential is read (the answer is `ok` whatever is sent).
    Public,
    /// Any owner, acting on their own account.
    Account,
    /// The owner of the resource only.
    OwnerOnly,
    /// The owner or the session's worker (ingress token, current JWT).
    Worker,
    /// The environment secret only (work poll).
    Poll,
    /// The ingress token of the work's session only (ack, heartbeat).
    WorkToken,
}

/// The expected answer of one credential class: an HTTP status, or for sockets 101
/// (open) or the close code.
fn expected(kind: Kind, ok: u16, cred: Cred) -> u16 {
    use Cred::*;
    let refused = 403;
    match (kind, cred) {
        (Kind::Public, _) => ok,
        (_, None | Garbage | Pairing) => 401,
        // A JWT of a superseded epoch is a 409 wherever it is used.
        (_, JwtOld) => 409,
        (Kind::Account, Owner | OtherOwner | Cookie) => ok,
        (Kind::OwnerOnly | Kind::Worker, Owner | Cookie) => ok,
        (Kind::Worker, Ingress | Jwt) => ok,
        (Kind::Poll, EnvSecret) => ok,
        (Kind::WorkToken, Ingress) => ok,
        _ => refused,
    }
}

/// How a socket row's HTTP-like status maps to what the socket does.
pub(super) fn socket_outcome(status: u16) -> u16 {
    match status {
        200 => 101,
        401 | 403 => 4003,
        409 | 404 => 4001,
        other => other,
    }
}

/// What a row sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Http,
    /// The server-sent event stream: only the status of the response head is read.
    Sse,
    /// A WebSocket upgrade: the close code it gets, or 101 if it stays open.
    Socket,
}

/// One row: a route (as written in router.rs), its body, and who may use it.
pub(super) struct Row {
    pub(super) method: &'static str,
    pub(super) path: &'static str,
    pub(super) kind: Kind,
    pub(super) ok: u16,
    pub(super) send: Via,
    /// The body, built from the cell's world.
    pub(super) body: fn(&World) -> Option<Value>,
    /// A variant of the same route (several rows may test one route).
    pub(super) note: &'static str,
}

fn no_body(_: &World) -> Option<Value> {
    None
}

fn empty(_: &World) -> Option<Value> {
    Some(json!({}))
}

fn assistant(uuid: &str) -> Value {
    json!({
        "type": "assistant",
        "uuid": uuid,
        "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
    })
}

pub(super) fn rows() -> Vec<Row> {
    use Kind::*;
    use Via::*;
    let row = |method, path, kind, ok, send, body: fn(&World) -> Option<Value>| Row {
        method,
        path,
        kind,
        ok,
        send,
        body,
        note: "",
    };
    vec![
        row("GET", "/health", Public, 200, Http, no_body),
        row("GET", "/metrics", Account, 200, Http, no_body),
        row(
            "POST",
            "/v1/environments/bridge",
            Account,
            200,
            Http,
            |_| Some(serde_json::to_value(registration()).unwrap()),
        ),
        row(
            "DELETE",
            "/v1/environments/bridge/{environment_id}",
            OwnerOnly,
            200,
            Http,
            no_body,
        ),
        // The work was already taken, so the poll waits out its timeout: 204.
        row(
            "GET",
            "/v1/environments/{environment_id}/work/poll",
            Poll,
            204,
            Http,
            no_body,
        ),
        row(
            "POST",
            "/v1/environments/{environment_id}/work/{work_id}/ack",
            WorkToken,
            200,
            Http,
            no_body,
        ),
        row(
            "POST",
            "/v1/environments/{environment_id}/work/{work_id}/heartbeat",
            WorkToken,
            200,
            Http,
            no_body,
        ),
        row(
            "POST",
            "/v1/environments/{environment_id}/work/{work_id}/stop",
            OwnerOnly,
            200,
            Http,
            empty,
        ),
        row(
            "POST",
            "/v1/environments/{environment_id}/bridge/reconnect",
            OwnerOnly,
            200,
            Http,
            |w| Some(json!({"session_id": w.session_id})),
        ),
        row("POST", "/v1/sessions", Account, 200, Http, |_| {
            Some(json!({"title": "t"}))
        }),
        row("GET", "/v1/sessions", Account, 200, Http, no_body),
        row("GET", "/v1/environments", Account, 200, Http, no_body),
        row("GET", "/v1/notify", Account, 200, Http, no_body),
        row("PUT", "/v1/notify/events", Account, 200, Http, |_| {
            Some(json!({"events": []}))
        }),
        row(
            "PUT",
            "/v1/notify/channels/{kind}",
            Account,
            200,
            Http,
            |_| Some(json!({"url": "http://127.0.0.1:9/hook"})),
        ),
        // Owners get past the credential check to "no such channel" (DELETE cells use ntfy).
        row(
            "DELETE",
            "/v1/notify/channels/{kind}",
            Account,
            404,
            Http,
            no_body,
        ),
        row("POST", "/v1/notify/test", Account, 200, Http, empty),
        // Owners get past the credential check to the check of the browser's keys.
        row(
            "POST",
            "/v1/notify/push/subscriptions",
            Account,
            400,
            Http,
            |_| {
                Some(json!({"endpoint": "http://127.0.0.1:9/push",
                        "keys": {"p256dh": "not-a-key", "auth": "x"}}))
            },
        ),
        // Owners get past the credential check to "no such subscription".
        row(
            "DELETE",
            "/v1/notify/push/subscriptions/{id}",
            Account,
            404,
            Http,
            no_body,
        ),
        row("GET", "/v1/sessions/{id}", OwnerOnly, 200, Http, no_body),
        row("PATCH", "/v1/sessions/{id}", OwnerOnly, 200, Http, |_| {
            Some(json!({"title": "renamed"}))
        }),
        row(
            "POST",
            "/v1/sessions/{id}/archive",
            OwnerOnly,
            200,
            Http,
            empty,
        ),
        // A prompt (or any control request) is the owner's alone.
        row(
            "POST",
            "/v1/sessions/{id}/events",
            OwnerOnly,
            200,
            Http,
            |_| Some(json!({"events": [prompt("hello")]})),
        ),
        row(
            "POST",
            "/v1/sessions/{id}/events",
            OwnerOnly,
            200,
            Http,
            |_| {
                Some(json!({"events": [{
                    "type": "control_request",
                    "request_id": "mode-1",
                    "request": {"subtype": "set_permission_mode", "mode": "bypassPermissions"},
                }]}))
            },
        ),
        // The answer to the worker's pending permission request: the worker's own
        // credentials may send it too (the answer given at the terminal, §4.8).
        Row {
            note: "permission answer",
            ..row("POST", "/v1/sessions/{id}/events", Worker, 200, Http, |w| {
                Some(json!({"events": [{
                    "type": "control_response",
                    "response": {
                        "subtype": "success",
                        "request_id": w.pending_request,
                        "response": {"behavior": "allow", "updatedInput": {}},
                    },
                }]}))
            })
        },
        row(
            "GET",
            "/v1/sessions/{id}/events",
            OwnerOnly,
            200,
            Http,
            no_body,
        ),
        row("POST", "/v1/code/sessions", Account, 200, Http, |_| {
            Some(json!({"title": "t", "bridge": {}}))
        }),
        row(
            "POST",
            "/v1/code/sessions/{id}/bridge",
            OwnerOnly,
            200,
            Http,
            empty,
        ),
        row(
            "GET",
            "/v1/code/sessions/{id}/worker",
            Worker,
            200,
            Http,
            no_body,
        ),
        row(
            "PUT",
            "/v1/code/sessions/{id}/worker",
            Worker,
            200,
            Http,
            |w| Some(json!({"worker_epoch": w.epoch, "worker_status": "idle"})),
        ),
        row(
            "POST",
            "/v1/code/sessions/{id}/worker/register",
            Worker,
            200,
            Http,
            empty,
        ),
        row(
            "POST",
            "/v1/code/sessions/{id}/worker/heartbeat",
            Worker,
            200,
            Http,
            |w| Some(json!({"session_id": w.session_id, "worker_epoch": w.epoch})),
        ),
        row(
            "POST",
            "/v1/code/sessions/{id}/worker/events",
            Worker,
            200,
            Http,
            |w| {
                Some(json!({"worker_epoch": w.epoch, "events": [
                    {"payload": assistant(&uuid::Uuid::new_v4().to_string())}
                ]}))
            },
        ),
        row(
            "POST",
            "/v1/code/sessions/{id}/worker/internal-events",
            Worker,
            200,
            Http,
            |w| {
                Some(json!({"worker_epoch": w.epoch, "events": [
                    {"payload": {"type": "user", "uuid": uuid::Uuid::new_v4().to_string()}}
                ]}))
            },
        ),
        row(
            "GET",
            "/v1/code/sessions/{id}/worker/internal-events",
            Worker,
            200,
            Http,
            no_body,
        ),
        row(
            "POST",
            "/v1/code/sessions/{id}/worker/events/delivery",
            Worker,
            200,
            Http,
            |w| Some(json!({"worker_epoch": w.epoch, "updates": []})),
        ),
        row(
            "GET",
            "/v1/code/sessions/{id}/worker/events/stream",
            Worker,
            200,
            Sse,
            no_body,
        ),
        row("POST", "/web/login", Public, 200, Http, |w| {
            Some(json!({"key": w.owner_key}))
        }),
        row("POST", "/web/pair", Public, 200, Http, |w| {
            Some(json!({"token": w.pairing}))
        }),
        row("POST", "/web/logout", Public, 200, Http, no_body),
        row("POST", "/web/logout/all", Account, 200, Http, no_body),
        row("GET", "/web/me", Account, 200, Http, no_body),
        row("POST", "/web/pairings", Account, 200, Http, empty),
        // Keys, devices, policy, audit (issue 16). `{id}` is the session's id here, which
        // names no key, device or rule: owners get past the credential check to a 404.
        row("GET", "/v1/keys", Account, 200, Http, no_body),
        row("POST", "/v1/keys", Account, 200, Http, |_| {
            Some(json!({"name": "made by a cell", "role": "viewer"}))
        }),
        row("DELETE", "/v1/keys/{id}", Account, 404, Http, no_body),
        row("GET", "/v1/devices", Account, 200, Http, no_body),
        row("PATCH", "/v1/devices/{id}", Account, 404, Http, |_| {
            Some(json!({"name": "renamed"}))
        }),
        row("DELETE", "/v1/devices/{id}", Account, 404, Http, no_body),
        row("GET", "/v1/policy", Account, 200, Http, no_body),
        row("PUT", "/v1/policy/settings", Account, 200, Http, |_| {
            Some(json!({"default": "ask"}))
        }),
        // A rule that matches no cell's request (the worlds ask to run `true`).
        row("POST", "/v1/policy/rules", Account, 200, Http, |_| {
            Some(json!({"tool": "Bash", "pattern": "git status", "decision": "allow"}))
        }),
        row(
            "DELETE",
            "/v1/policy/rules/{id}",
            Account,
            404,
            Http,
            no_body,
        ),
        row("POST", "/v1/policy/test", OwnerOnly, 200, Http, |w| {
            Some(json!({"session_id": w.session_id}))
        }),
        row("GET", "/v1/audit", Account, 200, Http, no_body),
        // Sharing a session with another owner (issue 16): `{owner}` is mallory, the
        // other owner of every world, so only the session's owner gets past the checks.
        row(
            "GET",
            "/v1/sessions/{id}/shares",
            OwnerOnly,
            200,
            Http,
            no_body,
        ),
        row(
            "PUT",
            "/v1/sessions/{id}/shares/{owner}",
            OwnerOnly,
            200,
            Http,
            |_| Some(json!({"role": "viewer"})),
        ),
        // Not shared yet in a fresh world: the owner gets past the checks to a 404.
        row(
            "DELETE",
            "/v1/sessions/{id}/shares/{owner}",
            OwnerOnly,
            404,
            Http,
            no_body,
        ),
        row("GET", "/v1/shared_sessions", Account, 200, Http, no_body),
        row(
            "GET",
            "/v1/sessions/ws/{id}/subscribe",
            OwnerOnly,
            200,
            Socket,
            no_body,
        ),
        row(
            "GET",
            "/{version}/session_ingress/ws/{id}",
            Worker,
            200,
            Socket,
            no_body,
        ),
        row(
            "POST",
            "/{version}/session_ingress/session/{id}/events",
            Worker,
            200,
            Http,
            |_| Some(json!({"events": [assistant(&uuid::Uuid::new_v4().to_string())]})),
        ),
    ]
}

/// Every `(method, path)` that `src/router.rs` routes, read from its source: each
/// `.route(PATH, get(…).post(…))`, with the `{version}` loop's paths as written.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("../../src/router.rs");
    let mut routes = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call's arguments, up to the matching parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a .route( call is closed");
        let call = &rest[..end];
        let open = call.find('"').expect("a route path literal");
        let close = open + 1 + call[open + 1..].find('"').expect("a closed literal");
        let path = call[open + 1..close].replace("{{", "{").replace("}}", "}");
        let handlers = &call[close + 1..];
        for method in ["get", "post", "put", "patch", "delete"] {
            let mut from = 0;
            while let Some(i) = handlers[from..].find(&format!("{method}(")) {
                let i = from + i;
                let before = handlers[..i].chars().last();
                // `.get(` or ` get(` starts a method router; `sessions::get)` does not.
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    routes.insert((method.to_uppercase(), path.clone()));
                }
                from = i + method.len();
            }
        }
        rest = &rest[end..];
    }
    routes
}

#[test]
fn every_route_has_a_row() {
    let routed = routed();
    assert!(
        routed.len() > 30,
        "the router.rs parser found only {routed:?}"
    );
    let rows: BTreeSet<(String, String)> = rows()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = routed.difference(&rows).collect();
    let stale: Vec<_> = rows.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in tests/it/access.rs: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for routes router.rs lacks: {stale:?}"
    );
}

/// What a cell's requests refer to.
pub(super) struct World {
    pub(super) owner_key: String,
    other_owner_key: String,
    environment_id: String,
    environment_secret: String,
    /// The session, in its `session_` costume.
    pub(super) session_id: String,
    work_id: String,
    ingress: String,
    other_ingress: String,
    jwt: String,
    jwt_old: String,
    epoch: u64,
    cookie: String,
    pairing: String,
    /// The request id of the worker's pending permission request.
    pub(super) pending_request: String,
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = server.http().request(
        reqwest::Method::from_bytes(method.as_bytes())?,
        format!("{}{path}", server.url()),
    );
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Ok(request.send().await?)
}

async fn send_json(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let response = send(server, method, path, Some(bearer), body).await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.is_success(), "{method} {path}: {status} {text}");
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

/// A fresh environment and session with its work polled, two epochs of worker JWTs, a
/// pending permission request, a web session cookie and a pairing token.
pub(super) async fn world(
    server: &TestServer,
    other_owner_key: &str,
    other_ingress: &str,
) -> anyhow::Result<World> {
    let key = server.key.clone();
    let d = dispatch(server).await?;
    let bridge_path = format!("/v1/code/sessions/{}/bridge", d.session_id);
    let old = send_json(server, "POST", &bridge_path, &key, Some(json!({}))).await?;
    let current = send_json(server, "POST", &bridge_path, &key, Some(json!({}))).await?;
    // The worker asks for permission (over the v1 write path).
    let pending_request = uuid::Uuid::new_v4().to_string();
    send_json(
        server,
        "POST",
        &format!("/v1/session_ingress/session/{}/events", d.session_id),
        &d.ingress_token,
        Some(json!({"events": [{
            "type": "control_request",
            "request_id": pending_request,
            "request": {"subtype": "can_use_tool", "tool_name": "Bash",
                        "input": {"command": "true"}, "tool_use_id": "t1"},
        }]})),
    )
    .await?;
    let login = send(
        server,
        "POST",
        "/web/login",
        None,
        Some(json!({"key": key})),
    )
    .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_string();
    let pairing = send_json(server, "POST", "/web/pairings", &key, Some(json!({}))).await?;
    let pairing = pairing["url"]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .ok_or_else(|| anyhow::anyhow!("no pairing url"))?
        .to_string();
    Ok(World {
        owner_key: key,
        other_owner_key: other_owner_key.to_string(),
        environment_id: d.environment_id,
        environment_secret: d.environment_secret,
        session_id: d.session_id,
        work_id: d.work.id,
        ingress: d.ingress_token,
        other_ingress: other_ingress.to_string(),
        jwt: current["worker_jwt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        jwt_old: old["worker_jwt"].as_str().unwrap_or_default().to_string(),
        epoch: current["worker_epoch"].as_u64().unwrap_or_default(),
        cookie,
        pairing,
        pending_request,
    })
}

impl World {
    /// The bearer token of a class (`None` for no header and for the cookie).
    fn bearer(&self, cred: Cred) -> Option<String> {
        Some(match cred {
            Cred::None | Cred::Cookie => return None,
            Cred::Garbage => "not-a-token".to_string(),
            Cred::Owner => self.owner_key.clone(),
            Cred::OtherOwner => self.other_owner_key.clone(),
            Cred::EnvSecret => self.environment_secret.clone(),
            Cred::Ingress => self.ingress.clone(),
            Cred::IngressOther => self.other_ingress.clone(),
            Cred::Jwt => self.jwt.clone(),
            Cred::JwtOld => self.jwt_old.clone(),
            Cred::Pairing => self.pairing.clone(),
        })
    }

    pub(super) fn path(&self, template: &str, version: &str) -> String {
        template
            .replace("{version}", version)
            .replace("{environment_id}", &self.environment_id)
            .replace("{work_id}", &self.work_id)
            .replace("{id}", &self.session_id)
            .replace("{kind}", "webhook")
            .replace("{owner}", "mallory")
    }
}

/// Runs one cell and returns what it got.
async fn run_cell(server: &TestServer, row: &Row, w: &World, cred: Cred, path: &str) -> u16 {
    let bearer = w.bearer(cred);
    let cookie = (cred == Cred::Cookie).then(|| w.cookie.clone());
    send_cell(server, row, w, bearer, cookie, path, &format!("{cred:?}")).await
}

/// Sends one row's request with a bearer token and/or a cookie; returns the status (for
/// sockets: 101 if it stays open, else the close code).
pub(super) async fn send_cell(
    server: &TestServer,
    row: &Row,
    w: &World,
    bearer: Option<String>,
    cookie: Option<String>,
    path: &str,
    cred: &str,
) -> u16 {
    match row.send {
        Via::Http | Via::Sse => {
            let mut request = server.http().request(
                reqwest::Method::from_bytes(row.method.as_bytes()).expect("a method"),
                format!("{}{path}", server.url()),
            );
            if let Some(token) = &bearer {
                request = request.bearer_auth(token);
            }
            if let Some(cookie) = &cookie {
                request = request.header("cookie", cookie);
            }
            if let Some(body) = (row.body)(w) {
                request = request.json(&body);
            }
            match request.send().await {
                // The body is read (and checked to be the JSON error shape) unless the
                // answer is a stream.
                Ok(response) => {
                    let status = response.status().as_u16();
                    if row.send == Via::Http && status >= 400 {
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        assert!(
                            body["error"]["type"].is_string(),
                            "{} {path} ({cred}): {status} without the JSON error body",
                            row.method
                        );
                    }
                    status
                }
                Err(e) => panic!("{} {path} ({cred}) failed: {e}", row.method),
            }
        }
        Via::Socket => {
            let url = format!("{}{path}", server.url().replace("http", "ws"));
            let mut request = url.into_client_request().expect("a ws request");
            if let Some(token) = &bearer {
                request.headers_mut().insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {token}")).expect("a header"),
                );
            }
            if let Some(cookie) = &cookie {
                request
                    .headers_mut()
                    .insert("cookie", HeaderValue::from_str(cookie).expect("a header"));
            }
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .expect("the upgrade is accepted (refusals are close codes)");
            // A refused socket is closed at once; an accepted one stays open.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
            loop {
                match tokio::time::timeout_at(deadline, socket.next()).await {
                    Err(_) => return 101,
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        return frame.map_or(1005, |f| u16::from(f.code))
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(other) => panic!("{path} ({cred}) ended without a close: {other:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn every_route_and_socket_answers_each_credential_class_as_it_should() -> anyhow::Result<()> {
    // Arrange: another owner, and an ingress token of another session.
    let server = TestServer::start_with(|o| {
        o.poll_timeout = Duration::from_millis(300);
        // Every cell signs a browser in; the sign-in rate limit has its own test.
        o.sign_in_burst = 10_000;
        // The notification rows set channels on 127.0.0.1 (nothing listens there); the
        // rule against private addresses has its own tests (notify.rs).
        o.notify_allow_private = true;
    })
    .await?;
    let other_owner_key = server.key_for("mallory").await?;
    let other = dispatch(&server).await?;

    // Act: every cell, each in a world of its own.
    let mut failures = Vec::new();
    let mut cells = 0;
    for row in rows() {
        let versions: &[&str] = if row.path.contains("{version}") {
            &["v1", "v2"]
        } else {
            &[""]
        };
        for version in versions {
            for cred in CREDS {
                let w = world(&server, &other_owner_key, &other.ingress_token).await?;
                let mut path = w.path(row.path, version);
                if row.method == "DELETE" {
                    // A channel no cell sets, so every owner gets past the credential
                    // check to "no such channel" whatever ran before.
                    path = path.replace("/channels/webhook", "/channels/ntfy");
                }
                let want = match row.send {
                    Via::Socket => socket_outcome(expected(row.kind, row.ok, cred)),
                    _ => expected(row.kind, row.ok, cred),
                };
                let got = run_cell(&server, &row, &w, cred, &path).await;
                cells += 1;
                if got != want {
                    failures.push(format!(
                        "{} {} {}({cred:?}): expected {want}, got {got}",
                        row.method, row.path, row.note
                    ));
                }
            }
        }
    }

    // Assert: all of them, listed together.
    assert!(
        failures.is_empty(),
        "{} of {cells} cells answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
