//! Who may do what (issue 16): every route and every message on the viewer socket ×
//! every role (the rows of `access.rs`); revoking one device closes its sockets and
//! leaves the others alone; the approval policy answering a worker's permission
//! requests (allow, deny, ask, timeout) through the first-answer-wins path, each in the
//! audit log; bad rules refused; the dry run.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::access::{rows, send_cell, socket_outcome, world, Kind, Via};
use crate::common::*;

/// The roles, weakest first.
const ROLES: [&str; 4] = ["viewer", "approver", "driver", "admin"];

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).expect("a role")
}

/// The weakest role that may use a row (by method, path and note), as the issue lists
/// them: `viewer` reads; `approver` also answers permission requests and interrupts;
/// `driver` also prompts, changes model and mode, creates and archives sessions (and
/// runs workers); `admin` also manages keys, devices, settings and policy.
fn least_role(method: &str, path: &str, note: &str) -> &'static str {
    match (method, path, note) {
        (_, _, "permission answer") => "approver",
        (
            "GET",
            "/v1/sessions"
            | "/v1/sessions/{id}"
            | "/v1/sessions/{id}/events"
            | "/v1/environments"
            | "/v1/notify"
            | "/web/me"
            | "/v1/sessions/ws/{id}/subscribe"
            | "/v1/shared_sessions",
            _,
        ) => "viewer",
        (_, p, _) if p.starts_with("/v1/sessions/{id}/shares") => "admin",
        (_, "/v1/notify/push/subscriptions" | "/v1/notify/push/subscriptions/{id}", _) => "viewer",
        (_, "/metrics" | "/web/logout/all", _) => "admin",
        (_, p, _) if p.starts_with("/v1/notify") => "admin",
        (_, p, _)
            if p.starts_with("/v1/keys")
                || p.starts_with("/v1/devices")
                || p.starts_with("/v1/policy")
                || p == "/v1/audit" =>
        {
            "admin"
        }
        _ => "driver",
    }
}

/// A new API key of alice's with `role`, made over the API with her admin key.
async fn key_with_role(server: &TestServer, role: &str) -> anyhow::Result<String> {
    let made: Value = server
        .http()
        .post(format!("{}/v1/keys", server.url()))
        .bearer_auth(&server.key)
        .json(&json!({"name": format!("{role} key"), "role": role}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(made["role"], role, "{made}");
    Ok(made["token"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn every_route_answers_each_role_as_it_should() -> anyhow::Result<()> {
    // Arrange: a key of each role for the owner of every world.
    let server = TestServer::start_with(|o| {
        o.poll_timeout = Duration::from_millis(300);
        o.sign_in_burst = 10_000;
        // The notify rows set channels on 127.0.0.1.
        o.notify_allow_private = true;
    })
    .await?;
    let mallory = server.key_for("mallory").await?;
    let other = dispatch(&server).await?;
    let mut keys = Vec::new();
    for role in ROLES {
        keys.push((role, key_with_role(&server, role).await?));
    }

    // Act: every row that takes an owner's credential, with each role.
    let mut failures = Vec::new();
    let mut cells = 0;
    for row in rows() {
        if matches!(row.kind, Kind::Public) {
            continue;
        }
        let versions: &[&str] = if row.path.contains("{version}") {
            &["v1", "v2"]
        } else {
            &[""]
        };
        for version in versions {
            for (role, key) in &keys {
                let w = world(&server, &mallory, &other.ingress_token).await?;
                let mut path = w.path(row.path, version);
                if row.method == "DELETE" {
                    path = path.replace("/channels/webhook", "/channels/ntfy");
                }
                // Routes for a worker's credential only refuse every owner's key.
                let allowed = match row.kind {
                    Kind::Poll | Kind::WorkToken => false,
                    _ => rank(role) >= rank(least_role(row.method, row.path, row.note)),
                };
                let status = if allowed { row.ok } else { 403 };
                let want = match row.send {
                    Via::Socket => socket_outcome(status),
                    _ => status,
                };
                let got = send_cell(&server, &row, &w, Some(key.clone()), None, &path, role).await;
                cells += 1;
                if got != want {
                    failures.push(format!(
                        "{} {} {}({role}): expected {want}, got {got}",
                        row.method, row.path, row.note
                    ));
                }
            }
        }
    }

    // Assert.
    assert!(
        failures.is_empty(),
        "{} of {cells} cells answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Opens the viewer socket of a session with a bearer token or a cookie.
async fn viewer_socket(
    server: &TestServer,
    session_id: &str,
    bearer: Option<&str>,
    cookie: Option<&str>,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let url = format!(
        "{}/v1/sessions/ws/{session_id}/subscribe",
        server.url().replace("http", "ws")
    );
    let mut request = url.into_client_request()?;
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert("cookie", HeaderValue::from_str(cookie)?);
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

/// How many events a session's log holds.
async fn log_len(server: &TestServer, session_id: &str) -> anyhow::Result<usize> {
    Ok(history(server, session_id).await?.len())
}

/// A session's log (up to 1000 events), as the owner's admin key reads it.
async fn history(server: &TestServer, session_id: &str) -> anyhow::Result<Vec<Value>> {
    let page: Value = server
        .http()
        .get(format!(
            "{}/v1/sessions/{session_id}/events?limit=1000",
            server.url()
        ))
        .bearer_auth(&server.key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(page["data"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn the_viewer_socket_takes_from_each_role_only_what_it_may_send() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mallory = server.key_for("mallory").await?;
    let other = dispatch(&server).await?;
    for role in ROLES {
        let key = key_with_role(&server, role).await?;
        let w = world(&server, &mallory, &other.ingress_token).await?;
        let messages = [
            ("prompt", prompt("hello"), "driver"),
            (
                "set_model",
                json!({"type": "control_request", "request_id": "m-1",
                       "request": {"subtype": "set_model", "model": "claude-opus-4"}}),
                "driver",
            ),
            (
                "interrupt",
                json!({"type": "control_request", "request_id": "i-1",
                       "request": {"subtype": "interrupt"}}),
                "approver",
            ),
            (
                "permission answer",
                json!({"type": "control_response", "response": {
                    "subtype": "success", "request_id": w.pending_request,
                    "response": {"behavior": "allow", "updatedInput": {}}}}),
                "approver",
            ),
        ];
        let mut socket = viewer_socket(&server, &w.session_id, Some(&key), None).await?;
        for (what, message, least) in messages {
            let before = log_len(&server, &w.session_id).await?;
            socket
                .send(Message::Text(message.to_string().into()))
                .await?;
            let allowed = rank(role) >= rank(least);
            if allowed {
                // Stored: the log grows.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while log_len(&server, &w.session_id).await? == before {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{role} sending a {what}: not stored"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                // Refused with a clear error frame, and nothing stored.
                let error = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match socket.next().await {
                            Some(Ok(Message::Text(text))) => {
                                let frame: Value = serde_json::from_str(text.as_str())?;
                                if frame["type"] == "error" {
                                    return anyhow::Ok(frame);
                                }
                            }
                            Some(Ok(_)) => {}
                            other => anyhow::bail!("the socket ended: {other:?}"),
                        }
                    }
                })
                .await??;
                assert_eq!(error["error"]["type"], "permission_error", "{error}");
                let text = error["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    text.contains(&format!("role is {role}")) && text.contains(least),
                    "{role} sending a {what}: {error}"
                );
                assert_eq!(
                    log_len(&server, &w.session_id).await?,
                    before,
                    "{role}: {what}"
                );
            }
        }
    }
    Ok(())
}

/// Signs a browser in with `key` and a user agent; returns its cookie (`name=value`).
async fn sign_in(server: &TestServer, key: &str, user_agent: &str) -> anyhow::Result<String> {
    let response = server
        .http()
        .post(format!("{}/web/login", server.url()))
        .header("user-agent", user_agent)
        .json(&json!({"key": key}))
        .send()
        .await?
        .error_for_status()?;
    response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no cookie"))
}

async fn admin_get(server: &TestServer, path: &str) -> anyhow::Result<Value> {
    Ok(server
        .http()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(&server.key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn admin_send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server
        .http()
        .request(method, format!("{}{path}", server.url()))
        .bearer_auth(&server.key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Waits for a close frame; `None` if the socket stays open for `wait`.
async fn close_code<S>(socket: &mut S, wait: Duration) -> Option<u16>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Some(frame.map_or(1005, |f| u16::from(f.code)))
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return Some(1006),
        }
    }
}

#[tokio::test]
async fn revoking_one_device_closes_its_sockets_and_leaves_the_others_alone() -> anyhow::Result<()>
{
    // Arrange: two browsers signed in, each a device named after its browser, each with a
    // viewer socket open.
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let phone = sign_in(
        &server,
        &server.key,
        "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
    )
    .await?;
    let laptop = sign_in(
        &server,
        &server.key,
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    )
    .await?;
    let mut phone_socket = viewer_socket(&server, &d.session_id, None, Some(&phone)).await?;
    let mut laptop_socket = viewer_socket(&server, &d.session_id, None, Some(&laptop)).await?;
    let devices = admin_get(&server, "/v1/devices").await?;
    let find = |name: &str| {
        devices["data"]
            .as_array()
            .and_then(|all| all.iter().find(|d| d["name"] == name))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no device {name}: {devices}"))
    };
    let phone_device = find("Chrome on Android")?;
    find("Firefox on Linux")?;
    assert_eq!(phone_device["kind"], "web_session");
    assert_eq!(
        phone_device["role"], "admin",
        "a key's browser has the key's role"
    );
    let phone_id = phone_device["id"].as_str().unwrap_or_default().to_string();

    // Act: the phone is revoked.
    let (status, _) = admin_send(
        &server,
        reqwest::Method::DELETE,
        &format!("/v1/devices/{phone_id}"),
        None,
    )
    .await?;
    assert_eq!(status, 200);

    // Assert: its socket closes at once with the credential close code; the laptop's
    // stays open and its cookie still works; the phone's does not.
    assert_eq!(
        close_code(&mut phone_socket, Duration::from_secs(2)).await,
        Some(4003)
    );
    assert_eq!(
        close_code(&mut laptop_socket, Duration::from_millis(500)).await,
        None
    );
    let me = |cookie: String| {
        let http = server.http();
        let url = format!("{}/web/me", server.url());
        async move {
            anyhow::Ok(
                http.get(url)
                    .header("cookie", cookie)
                    .send()
                    .await?
                    .status(),
            )
        }
    };
    assert_eq!(me(phone.clone()).await?, 401);
    assert_eq!(me(laptop.clone()).await?, 200);
    // A role change is not a revocation: the laptop's socket is asked to reconnect
    // (1012), and it does, with the new role.
    let laptop_id = find("Firefox on Linux")?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (status, _) = admin_send(
        &server,
        reqwest::Method::PATCH,
        &format!("/v1/devices/{laptop_id}"),
        Some(json!({"role": "viewer"})),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        close_code(&mut laptop_socket, Duration::from_secs(2)).await,
        Some(1012)
    );
    let mut again = viewer_socket(&server, &d.session_id, None, Some(&laptop)).await?;
    assert_eq!(
        close_code(&mut again, Duration::from_millis(500)).await,
        None
    );
    // The audit log says who revoked it, and the list no longer has it.
    let audit = admin_get(&server, "/v1/audit").await?;
    let entry = audit["data"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["action"] == "device.revoke"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no device.revoke entry: {audit}"))?;
    assert_eq!(entry["detail"]["credential"], phone_id.as_str());
    assert_eq!(entry["credential_name"], "test", "{entry}");
    assert!(
        entry["address"].as_str().is_some_and(|a| a == "127.0.0.1"),
        "{entry}"
    );
    let devices = admin_get(&server, "/v1/devices").await?;
    assert!(!devices.to_string().contains(&phone_id));
    // Revoking again is a conflict; another owner's id is not found.
    let (status, _) = admin_send(
        &server,
        reqwest::Method::DELETE,
        &format!("/v1/devices/{phone_id}"),
        None,
    )
    .await?;
    assert_eq!(status, 409);
    Ok(())
}

#[tokio::test]
async fn pairing_links_give_driver_unless_the_maker_chooses_less() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    for (asked, got) in [(None, "driver"), (Some("viewer"), "viewer")] {
        let mut body = json!({});
        if let Some(role) = asked {
            body["role"] = json!(role);
        }
        let (status, link) =
            admin_send(&server, reqwest::Method::POST, "/web/pairings", Some(body)).await?;
        assert_eq!(status, 200, "{link}");
        assert_eq!(link["role"], got);
        let token = link["url"]
            .as_str()
            .and_then(|u| u.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        let response = server
            .http()
            .post(format!("{}/web/pair", server.url()))
            .json(&json!({"token": token}))
            .send()
            .await?
            .error_for_status()?;
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .to_string();
        let me: Value = server
            .http()
            .get(format!("{}/web/me", server.url()))
            .header("cookie", cookie)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(me["role"], got, "{me}");
    }
    // Nobody hands out more than they have: no role beyond the four, a driver no admin
    // link, and a viewer no link at all.
    let (status, body) = admin_send(
        &server,
        reqwest::Method::POST,
        "/web/pairings",
        Some(json!({"role": "owner"})),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    for (role, asked, status) in [
        ("driver", "admin", 403),
        ("driver", "approver", 200),
        ("approver", "viewer", 403),
    ] {
        let key = key_with_role(&server, role).await?;
        let got = server
            .http()
            .post(format!("{}/web/pairings", server.url()))
            .bearer_auth(key)
            .json(&json!({"role": asked}))
            .send()
            .await?
            .status();
        assert_eq!(got, status, "{role} asking for a {asked} link");
    }
    Ok(())
}

/// A worker's permission request to run `tool` with `input`; returns its request id.
async fn ask(
    server: &TestServer,
    d: &Dispatched,
    tool: &str,
    input: Value,
) -> anyhow::Result<String> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let response = server
        .http()
        .post(format!(
            "{}/v1/session_ingress/session/{}/events",
            server.url(),
            d.session_id
        ))
        .bearer_auth(&d.ingress_token)
        .json(&json!({"events": [{
            "type": "control_request",
            "request_id": request_id,
            "request": {"subtype": "can_use_tool", "tool_name": tool, "input": input,
                        "tool_use_id": format!("t-{request_id}")},
        }]}))
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.text().await?);
    Ok(request_id)
}

/// The answers stored for a request (inbound `control_response`s).
async fn answers(
    server: &TestServer,
    d: &Dispatched,
    request_id: &str,
) -> anyhow::Result<Vec<Value>> {
    Ok(history(server, &d.session_id)
        .await?
        .into_iter()
        .filter(|e| e["type"] == "control_response" && e["response"]["request_id"] == request_id)
        .collect())
}

/// Waits up to `wait` for the first answer to a request.
async fn answer_within(
    server: &TestServer,
    d: &Dispatched,
    request_id: &str,
    wait: Duration,
) -> anyhow::Result<Option<Value>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(first) = answers(server, d, request_id).await?.into_iter().next() {
            return Ok(Some(first));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn add_rule(server: &TestServer, rule: Value) -> anyhow::Result<String> {
    let (status, added) = admin_send(
        server,
        reqwest::Method::POST,
        "/v1/policy/rules",
        Some(rule),
    )
    .await?;
    anyhow::ensure!(status == 200, "{status} {added}");
    Ok(added["id"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn the_policy_allows_denies_asks_and_times_out_and_the_audit_log_says_who(
) -> anyhow::Result<()> {
    // Arrange: a session with a worker, and rules for it.
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let allow = add_rule(
        &server,
        json!({"tool": "Bash", "pattern": "git status", "decision": "allow",
               "session_id": d.session_id}),
    )
    .await?;
    let deny = add_rule(
        &server,
        json!({"tool": "Bash", "pattern": "rm", "decision": "deny"}),
    )
    .await?;
    let step = Duration::from_secs(5);

    // Allow: answered at once, by the rule, with the input as asked.
    let id = ask(&server, &d, "Bash", json!({"command": "git status -s"})).await?;
    let answer = answer_within(&server, &d, &id, step)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the allow rule did not answer"))?;
    assert_eq!(
        answer["response"]["response"]["behavior"], "allow",
        "{answer}"
    );
    assert_eq!(
        answer["response"]["response"]["updatedInput"]["command"],
        "git status -s"
    );
    assert_eq!(answer["sent_with"], format!("policy:{allow}"));
    // A person answering afterwards is ignored: the first answer won.
    let late = server
        .http()
        .post(format!(
            "{}/v1/sessions/{}/events",
            server.url(),
            d.session_id
        ))
        .bearer_auth(&server.key)
        .json(
            &json!({"events": [{"type": "control_response", "response": {
            "subtype": "success", "request_id": id,
            "response": {"behavior": "deny", "message": "no"}}}]}),
        )
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert!(late["events"][0]["ignored"].is_string(), "{late}");
    assert_eq!(answers(&server, &d, &id).await?.len(), 1);

    // Deny: a chained command is caught by the deny rule (and never by the allow rule).
    let denied = ask(
        &server,
        &d,
        "Bash",
        json!({"command": "git status; rm -rf /"}),
    )
    .await?;
    let answer = answer_within(&server, &d, &denied, step)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the deny rule did not answer"))?;
    assert_eq!(
        answer["response"]["response"]["behavior"], "deny",
        "{answer}"
    );
    assert!(answer["response"]["response"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(&deny)));
    assert_eq!(answer["sent_with"], format!("policy:{deny}"));

    // Ask (no rule matches, no default set): nobody answers but a person.
    let asked = ask(&server, &d, "Read", json!({"file_path": "/etc/hosts"})).await?;
    assert!(
        answer_within(&server, &d, &asked, Duration::from_millis(700))
            .await?
            .is_none()
    );
    let approver = key_with_role(&server, "approver").await?;
    let status = server
        .http()
        .post(format!(
            "{}/v1/sessions/{}/events",
            server.url(),
            d.session_id
        ))
        .bearer_auth(&approver)
        .header("user-agent", "approver-phone/1.0")
        .json(
            &json!({"events": [{"type": "control_response", "response": {
            "subtype": "success", "request_id": asked,
            "response": {"behavior": "allow", "updatedInput": {"file_path": "/etc/hosts"}}}}]}),
        )
        .send()
        .await?
        .status();
    assert_eq!(status, 200);
    let answer = answer_within(&server, &d, &asked, step).await?;
    assert_eq!(answer.map(|a| a["sent_with"].clone()), Some(json!("owner")));

    // Timeout: with one, an unanswered request gets the default (deny, for `ask`).
    let (status, _) = admin_send(
        &server,
        reqwest::Method::PUT,
        "/v1/policy/settings",
        Some(json!({"default": "ask", "timeout_seconds": 1})),
    )
    .await?;
    assert_eq!(status, 200);
    let timed = ask(&server, &d, "Read", json!({"file_path": "/etc/passwd"})).await?;
    assert!(
        answer_within(&server, &d, &timed, Duration::from_millis(500))
            .await?
            .is_none()
    );
    let answer = answer_within(&server, &d, &timed, step)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the timeout did not answer"))?;
    assert_eq!(
        answer["response"]["response"]["behavior"], "deny",
        "{answer}"
    );
    assert_eq!(answer["sent_with"], "policy:timeout");

    // The audit log: each answer with who gave it, newest first; the rule changes too.
    let audit = admin_get(&server, &format!("/v1/audit?session_id={}", d.session_id)).await?;
    let entries = audit["data"].as_array().cloned().unwrap_or_default();
    let answers: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "permission.answer")
        .collect();
    assert_eq!(answers.len(), 4, "{audit}");
    assert_eq!(answers[0]["detail"]["rule"], "timeout");
    assert_eq!(answers[0]["detail"]["by"], "policy");
    assert_eq!(answers[1]["detail"]["request_id"], asked.as_str());
    assert_eq!(answers[1]["credential_name"], "approver key");
    assert_eq!(answers[1]["user_agent"], "approver-phone/1.0");
    assert_eq!(answers[1]["detail"]["behavior"], "allow");
    assert_eq!(answers[2]["detail"]["rule"], deny.as_str());
    assert_eq!(answers[2]["detail"]["behavior"], "deny");
    assert_eq!(answers[3]["detail"]["rule"], allow.as_str());
    assert!(entries
        .iter()
        .any(|e| e["action"] == "policy.add" && e["detail"]["rule"]["id"] == allow.as_str()));
    let all = admin_get(&server, "/v1/audit?limit=500").await?;
    assert!(all["data"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["action"] == "policy.settings")));
    // Paging: one at a time, newest first, never the same entry twice.
    let first = admin_get(&server, "/v1/audit?limit=1").await?;
    let next = admin_get(
        &server,
        &format!("/v1/audit?limit=1&before_id={}", first["data"][0]["id"]),
    )
    .await?;
    assert!(next["data"][0]["id"].as_i64() < first["data"][0]["id"].as_i64());

    // The dry run: what the rules (and a candidate) would answer to the past requests.
    let (status, dry) = admin_send(
        &server,
        reqwest::Method::POST,
        "/v1/policy/test",
        Some(json!({"session_id": d.session_id,
                    "rule": {"tool": "Read", "pattern": "/etc/**", "decision": "allow"}})),
    )
    .await?;
    assert_eq!(status, 200, "{dry}");
    let rows = dry["data"].as_array().cloned().unwrap_or_default();
    let row = |id: &str| rows.iter().find(|r| r["request_id"] == id).cloned();
    assert_eq!(row(&id).map(|r| r["would"].clone()), Some(json!("allow")));
    assert_eq!(
        row(&denied).map(|r| r["would"].clone()),
        Some(json!("deny"))
    );
    assert_eq!(
        row(&asked).map(|r| r["rule_id"].clone()),
        Some(json!("candidate"))
    );
    assert_eq!(row(&asked).map(|r| r["was"].clone()), Some(json!("allow")));
    // Nothing was stored by the dry run.
    let policy = admin_get(&server, "/v1/policy").await?;
    assert_eq!(
        policy["rules"].as_array().map(Vec::len),
        Some(2),
        "{policy}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_rules_are_refused_with_a_clear_error() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mallory = server.key_for("mallory").await?;
    let theirs = server
        .http()
        .post(format!("{}/v1/sessions", server.url()))
        .bearer_auth(&mallory)
        .json(&json!({"title": "mallory's"}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let cases = [
        (
            json!({"tool": "Bash", "decision": "maybe"}),
            400,
            "unknown decision",
        ),
        (
            json!({"tool": "Read", "pattern": "/a/***", "decision": "allow"}),
            400,
            "invalid path glob",
        ),
        (
            json!({"tool": "WebFetch", "pattern": "https://x.com", "decision": "allow"}),
            400,
            "invalid domain",
        ),
        (
            json!({"tool": "Task", "pattern": "x", "decision": "allow"}),
            400,
            "takes no pattern",
        ),
        (
            json!({"tool": "B a s h", "decision": "allow"}),
            400,
            "invalid tool name",
        ),
        (
            json!({"tool": "Bash", "decision": "allow", "session_id": "nope!"}),
            400,
            "invalid session id",
        ),
        (
            json!({"tool": "Bash", "decision": "allow", "session_id": theirs["id"]}),
            403,
            "another owner",
        ),
        (json!({"decision": "allow"}), 400, "tool"),
    ];
    for (rule, status, says) in cases {
        let (got, body) = admin_send(
            &server,
            reqwest::Method::POST,
            "/v1/policy/rules",
            Some(rule.clone()),
        )
        .await?;
        assert_eq!(got, status, "{rule}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{rule}: {body}");
    }
    let (got, body) = admin_send(
        &server,
        reqwest::Method::PUT,
        "/v1/policy/settings",
        Some(json!({"default": "allow", "timeout_seconds": 0})),
    )
    .await?;
    assert_eq!(got, 400, "{body}");
    // Nothing was stored.
    let policy = admin_get(&server, "/v1/policy").await?;
    assert_eq!(policy["rules"], json!([]));
    assert_eq!(policy["default"], "ask");
    Ok(())
}

/// Sends a request with `key`; returns the status and the JSON body (`Null` if none).
async fn send_as(
    server: &TestServer,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server
        .http()
        .request(method, format!("{}{path}", server.url()))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn a_shared_session_reaches_the_other_owner_at_the_shared_role_until_unshared(
) -> anyhow::Result<()> {
    use reqwest::Method;
    let server = TestServer::start_with(|o| {
        o.poll_timeout = Duration::from_millis(300);
        o.revocation_check_interval = Duration::from_millis(200);
    })
    .await?;
    // Bob is another owner, with an admin key (his first) and a viewer key of his own.
    let bob = server.key_for("bob").await?;
    let (status, made) = send_as(
        &server,
        &bob,
        Method::POST,
        "/v1/keys",
        Some(json!({"name": "bob's viewer", "role": "viewer"})),
    )
    .await?;
    assert_eq!(status, 200, "{made}");
    let bob_viewer = made["token"].as_str().unwrap_or_default().to_string();
    let d = dispatch(&server).await?;
    let id = d.session_id.clone();
    let shares = format!("/v1/sessions/{id}/shares");

    // Not shared: bob's keys reach nothing of it.
    let (status, _) = send_as(
        &server,
        &bob,
        Method::GET,
        &format!("/v1/sessions/{id}"),
        None,
    )
    .await?;
    assert_eq!(status, 403);
    let mut refused = viewer_socket(&server, &id, Some(&bob), None).await?;
    assert_eq!(
        close_code(&mut refused, Duration::from_secs(5)).await,
        Some(4003)
    );

    // Bad shares are refused with a clear error: an unknown owner, a bad role, the
    // owner itself, and a share made by someone who does not own the session.
    let (status, body) = admin_send(
        &server,
        Method::PUT,
        &format!("{shares}/nobody"),
        Some(json!({"role": "viewer"})),
    )
    .await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.to_string().contains("no owner named"), "{body}");
    let (status, body) = admin_send(
        &server,
        Method::PUT,
        &format!("{shares}/bob"),
        Some(json!({"role": "boss"})),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin_send(
        &server,
        Method::PUT,
        &format!("{shares}/alice"),
        Some(json!({"role": "viewer"})),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    let (status, _) = send_as(
        &server,
        &bob,
        Method::PUT,
        &format!("{shares}/bob"),
        Some(json!({"role": "admin"})),
    )
    .await?;
    assert_eq!(status, 403);

    // Shared as viewer: bob reads it (and it is listed for him), cannot prompt, and
    // nothing he tries is stored.
    let (status, share) = admin_send(
        &server,
        Method::PUT,
        &format!("{shares}/bob"),
        Some(json!({"role": "viewer"})),
    )
    .await?;
    assert_eq!(
        (status, &share["owner"], &share["role"]),
        (200, &json!("bob"), &json!("viewer"))
    );
    let (status, resource) = send_as(
        &server,
        &bob,
        Method::GET,
        &format!("/v1/sessions/{id}"),
        None,
    )
    .await?;
    assert_eq!((status, &resource["shared_role"]), (200, &json!("viewer")));
    let (_, listed) = send_as(&server, &bob, Method::GET, "/v1/shared_sessions", None).await?;
    assert_eq!(listed["data"][0]["id"], json!(id), "{listed}");
    let (_, own) = send_as(&server, &bob, Method::GET, "/v1/sessions", None).await?;
    assert_eq!(
        own["data"],
        json!([]),
        "shared sessions are not bob's own: {own}"
    );
    let before = log_len(&server, &id).await?;
    let (status, body) = send_as(
        &server,
        &bob,
        Method::POST,
        &format!("/v1/sessions/{id}/events"),
        Some(json!({"events": [prompt("from bob")]})),
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("role is viewer"), "{body}");
    let mut watching = viewer_socket(&server, &id, Some(&bob), None).await?;
    assert_eq!(
        close_code(&mut watching, Duration::from_millis(300)).await,
        None
    );
    assert_eq!(log_len(&server, &id).await?, before);
    // Only the owner manages shares; bob cannot see who else it is shared with.
    let (status, _) = send_as(&server, &bob, Method::GET, &shares, None).await?;
    assert_eq!(status, 403);

    // Raised to driver: bob's open socket is asked to reconnect (1012, "service
    // restart": it comes back with the new role), his admin key prompts (stored, and in
    // alice's audit log under his key), and his viewer key still cannot: a share never
    // raises a credential's own role.
    let (status, _) = admin_send(
        &server,
        Method::PUT,
        &format!("{shares}/bob"),
        Some(json!({"role": "driver"})),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        close_code(&mut watching, Duration::from_secs(5)).await,
        Some(1012)
    );
    let (status, body) = send_as(
        &server,
        &bob,
        Method::POST,
        &format!("/v1/sessions/{id}/events"),
        Some(json!({"events": [prompt("from bob")]})),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(log_len(&server, &id).await?, before + 1);
    let (status, _) = send_as(
        &server,
        &bob_viewer,
        Method::POST,
        &format!("/v1/sessions/{id}/events"),
        Some(json!({"events": [prompt("from bob's viewer key")]})),
    )
    .await?;
    assert_eq!(status, 403);
    let (_, resource) = send_as(
        &server,
        &bob_viewer,
        Method::GET,
        &format!("/v1/sessions/{id}"),
        None,
    )
    .await?;
    assert_eq!(resource["shared_role"], "viewer");
    let audit = admin_get(&server, &format!("/v1/audit?session_id={id}")).await?;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"session.share") && actions.contains(&"session.prompt"),
        "{audit}"
    );
    let (_, listed) = admin_send(&server, Method::GET, &shares, None).await?;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");

    // Unshared: bob's socket closes at once and his keys are refused again.
    let mut watching = viewer_socket(&server, &id, Some(&bob), None).await?;
    assert_eq!(
        close_code(&mut watching, Duration::from_millis(300)).await,
        None
    );
    let (status, _) = admin_send(&server, Method::DELETE, &format!("{shares}/bob"), None).await?;
    assert_eq!(status, 200);
    assert_eq!(
        close_code(&mut watching, Duration::from_secs(5)).await,
        Some(4003)
    );
    let (status, _) = send_as(
        &server,
        &bob,
        Method::GET,
        &format!("/v1/sessions/{id}"),
        None,
    )
    .await?;
    assert_eq!(status, 403);
    let (status, _) = admin_send(&server, Method::DELETE, &format!("{shares}/bob"), None).await?;
    assert_eq!(status, 404);
    let (_, listed) = send_as(&server, &bob, Method::GET, "/v1/shared_sessions", None).await?;
    assert_eq!(listed["data"], json!([]));
    Ok(())
}
