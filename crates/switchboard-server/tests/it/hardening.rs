//! Issue #12 (hardening): what a worker credential may post on the viewer routes, epoch
//! fencing of worker JWTs, ingress tokens revoked with their work and session, archived
//! sessions refusing writes, and per-field size caps.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use switchboard_client::HistoryQuery;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server
        .http()
        .request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{}{path}", server.url()),
        )
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    };
    if status >= 400 {
        anyhow::ensure!(
            body["error"]["type"].is_string() && body["error"]["message"].is_string(),
            "{method} {path}: {status} without the JSON error body: {text}"
        );
    }
    Ok((status, body))
}

/// The session's whole history, as the owner reads it.
async fn history(server: &TestServer, session_id: &str) -> anyhow::Result<Vec<Value>> {
    Ok(server
        .sessions()
        .history(
            session_id,
            HistoryQuery {
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await?
        .data)
}

fn permission_request(request_id: &str) -> Value {
    json!({
        "type": "control_request",
        "request_id": request_id,
        "request": {"subtype": "can_use_tool", "tool_name": "Bash",
                    "input": {"command": "rm -rf build"}, "tool_use_id": "toolu_1"},
    })
}

fn permission_answer(request_id: &str) -> Value {
    json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id,
                     "response": {"behavior": "allow", "updatedInput": {}}},
    })
}

/// `(jwt, epoch)` from `/bridge`.
async fn worker_jwt(server: &TestServer, session_id: &str) -> anyhow::Result<(String, u64)> {
    let (status, creds) = call(
        server,
        "POST",
        &format!("/v1/code/sessions/{session_id}/bridge"),
        &server.key,
        Some(json!({})),
    )
    .await?;
    anyhow::ensure!(status == 200, "bridge: {status} {creds}");
    Ok((
        creds["worker_jwt"].as_str().unwrap_or_default().to_string(),
        creds["worker_epoch"].as_u64().unwrap_or_default(),
    ))
}

#[tokio::test]
async fn worker_credentials_may_post_only_permission_answers_and_the_audit_names_them(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let (jwt, _) = worker_jwt(&server, &d.session_id).await?;
    let events = format!("/v1/sessions/{}/events", d.session_id);
    let raise_mode = json!({
        "type": "control_request",
        "request_id": "mode-1",
        "request": {"subtype": "set_permission_mode", "mode": "bypassPermissions"},
    });

    // A script holding the session token cannot prompt, raise the permission mode or
    // slip either in next to an answer; nothing of it is stored.
    for token in [&d.ingress_token, &jwt] {
        for body in [
            json!({"events": [prompt("run rm -rf /")]}),
            json!({"events": [raise_mode.clone()]}),
            json!({"events": [permission_answer("r0"), raise_mode.clone()]}),
            json!({"events": [{"type": "control_response", "response": {"subtype": "success"}}]}),
        ] {
            let (status, body) = call(&server, "POST", &events, token, Some(body)).await?;
            assert_eq!(status, 403, "{body}");
        }
    }
    assert!(history(&server, &d.session_id).await?.is_empty());

    // The worker asks twice; the bridge answers one at the terminal with the ingress
    // token, the v2 worker the other with its JWT, and the owner prompts.
    for id in ["r1", "r2"] {
        let (status, _) = call(
            &server,
            "POST",
            &format!("/v1/session_ingress/session/{}/events", d.session_id),
            &d.ingress_token,
            Some(json!({"events": [permission_request(id)]})),
        )
        .await?;
        assert_eq!(status, 200);
    }
    let answer = |id: &str| Some(json!({"events": [permission_answer(id)]}));
    let (status, body) = call(&server, "POST", &events, &d.ingress_token, answer("r1")).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["events"][0]["sequence_num"].is_u64(), "{body}");
    let (status, body) = call(&server, "POST", &events, &jwt, answer("r2")).await?;
    assert_eq!(status, 200, "{body}");
    // An answer to a request that was never asked is ignored, not stored.
    let (status, body) = call(&server, "POST", &events, &jwt, answer("r9")).await?;
    assert_eq!(status, 200);
    assert!(body["events"][0]["ignored"].is_string(), "{body}");
    let (status, _) = call(
        &server,
        "POST",
        &events,
        &server.key,
        Some(json!({"events": [prompt("thanks")]})),
    )
    .await?;
    assert_eq!(status, 200);

    // The audit says which credential sent each inbound event; worker output has none.
    let log = history(&server, &d.session_id).await?;
    let sent_with = |pred: &dyn Fn(&Value) -> bool| {
        log.iter()
            .find(|e| pred(e))
            .map(|e| e.get("sent_with").cloned().unwrap_or(Value::Null))
    };
    let answered = |id: &'static str| {
        move |e: &Value| e["type"] == "control_response" && e["response"]["request_id"] == id
    };
    assert_eq!(sent_with(&answered("r1")), Some(json!("ingress_token")));
    assert_eq!(sent_with(&answered("r2")), Some(json!("worker_jwt")));
    assert_eq!(sent_with(&|e| e["type"] == "user"), Some(json!("owner")));
    assert_eq!(
        sent_with(&|e| e["type"] == "control_request"),
        Some(Value::Null)
    );
    Ok(())
}

#[tokio::test]
async fn a_superseded_worker_jwt_is_a_409_on_every_route_and_socket_and_changes_nothing(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let (old, _) = worker_jwt(&server, &d.session_id).await?;
    let (current, epoch) = worker_jwt(&server, &d.session_id).await?;
    let id = &d.session_id;
    let before = history(&server, id).await?.len();

    // Register (which would fence out the live worker), the worker state, writes through
    // v2 and v1, the permission-answer route: all 409.
    let worker = format!("/v1/code/sessions/{id}/worker");
    for (method, path, body) in [
        ("POST", format!("{worker}/register"), Some(json!({}))),
        ("GET", worker.clone(), None),
        (
            "PUT",
            worker.clone(),
            Some(json!({"worker_epoch": epoch, "worker_status": "running"})),
        ),
        (
            "POST",
            format!("{worker}/events"),
            Some(json!({"worker_epoch": epoch, "events": [
                {"payload": {"type": "assistant", "uuid": uuid::Uuid::new_v4().to_string()}}
            ]})),
        ),
        (
            "POST",
            format!("/v1/session_ingress/session/{id}/events"),
            Some(json!({"events": [{"type": "assistant", "message": {}}]})),
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/events"),
            Some(json!({"events": [permission_answer("r1")]})),
        ),
    ] {
        let (status, body) = call(&server, method, &path, &old, body).await?;
        assert_eq!(status, 409, "{method} {path}: {body}");
    }
    // The event stream refuses it before streaming anything.
    let stream = server
        .http()
        .get(format!("{}{worker}/events/stream", server.url()))
        .bearer_auth(&old)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(stream.status().as_u16(), 409);
    // The v1 socket closes at once with the permanent 4001.
    let mut request = format!(
        "{}/v1/session_ingress/ws/{id}",
        server.url().replace("http", "ws")
    )
    .into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {old}"))?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4001),
        other => anyhow::bail!("expected a 4001 close, got {other:?}"),
    }

    // Nothing changed: the epoch is the current worker's, which still works, and the log
    // holds nothing new.
    let (status, state) = call(&server, "GET", &worker, &current, None).await?;
    assert_eq!(status, 200);
    assert_eq!(state["worker"]["worker_epoch"], epoch);
    assert_ne!(state["worker"]["worker_status"], "running");
    assert_eq!(history(&server, id).await?.len(), before);
    Ok(())
}

#[tokio::test]
async fn archived_sessions_refuse_worker_writes_and_revoke_their_ingress_tokens(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let (jwt, epoch) = worker_jwt(&server, &d.session_id).await?;
    let id = &d.session_id;
    let v1 = format!("/v1/session_ingress/session/{id}/events");
    let output = || Some(json!({"events": [{"type": "assistant", "message": {}}]}));
    let (status, _) = call(&server, "POST", &v1, &d.ingress_token, output()).await?;
    assert_eq!(status, 200);

    server.sessions().archive_session(id).await?;
    let stored = history(&server, id).await?.len();

    // The ingress token no longer works at all.
    let (status, _) = call(&server, "POST", &v1, &d.ingress_token, output()).await?;
    assert_eq!(status, 401);
    // Credentials that still authenticate (the owner's key, the worker JWT) get 409.
    let (status, _) = call(&server, "POST", &v1, &server.key, output()).await?;
    assert_eq!(status, 409);
    let worker = format!("/v1/code/sessions/{id}/worker");
    for (method, path, body) in [
        (
            "POST",
            format!("{worker}/events"),
            json!({"worker_epoch": epoch, "events": [
                {"payload": {"type": "assistant", "uuid": uuid::Uuid::new_v4().to_string()}}
            ]}),
        ),
        (
            "PUT",
            worker.clone(),
            json!({"worker_epoch": epoch, "worker_status": "idle"}),
        ),
        (
            "POST",
            format!("{worker}/heartbeat"),
            json!({"session_id": id, "worker_epoch": epoch}),
        ),
    ] {
        let (status, body) = call(&server, method, &path, &jwt, Some(body)).await?;
        assert_eq!(status, 409, "{method} {path}: {body}");
    }
    assert_eq!(history(&server, id).await?.len(), stored);
    Ok(())
}

#[tokio::test]
async fn stopping_work_revokes_its_ingress_tokens_while_a_reconnect_keeps_the_old_one(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let bridge = server.bridge();
    bridge
        .acknowledge_work(&d.environment_id, &d.work.id, &d.ingress_token)
        .await?;
    let v1 = format!("/v1/session_ingress/session/{}/events", d.session_id);
    let output = || Some(json!({"events": [{"type": "assistant", "message": {}}]}));

    // A reconnect re-delivers the session with a new token; the old one keeps working
    // until the worker has the new one.
    bridge
        .reconnect_session(&d.environment_id, &d.session_id)
        .await?;
    let work = bridge
        .poll_for_work(&d.environment_id, &d.environment_secret, Some(5_000))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no work after a reconnect"))?;
    let token = secret_of(&work).session_ingress_token;
    assert_ne!(token, d.ingress_token);
    for t in [&d.ingress_token, &token] {
        let (status, _) = call(&server, "POST", &v1, t, output()).await?;
        assert_eq!(status, 200);
    }
    bridge
        .acknowledge_work(&d.environment_id, &work.id, &token)
        .await?;

    // The work ends: every token of the session's stopped work stops working.
    bridge.stop_work(&d.environment_id, &work.id, false).await?;
    for t in [&d.ingress_token, &token] {
        let (status, _) = call(&server, "POST", &v1, t, output()).await?;
        assert_eq!(status, 401);
    }
    let (status, _) = call(
        &server,
        "POST",
        &format!(
            "/v1/environments/{}/work/{}/heartbeat",
            d.environment_id, work.id
        ),
        &token,
        None,
    )
    .await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test]
async fn oversized_fields_and_batches_are_refused_with_the_json_error() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let id = &d.session_id;
    let long = "t".repeat(900 * 1024);

    let (status, _) = call(
        &server,
        "PATCH",
        &format!("/v1/sessions/{id}"),
        &server.key,
        Some(json!({"title": long})),
    )
    .await?;
    assert_eq!(status, 400);
    let (status, _) = call(
        &server,
        "POST",
        "/v1/sessions",
        &server.key,
        Some(json!({"title": long})),
    )
    .await?;
    assert_eq!(status, 400);
    let (status, _) = call(
        &server,
        "POST",
        "/v1/code/sessions",
        &server.key,
        Some(json!({"title": "t", "bridge": {}, "tags": vec!["x"; 1000]})),
    )
    .await?;
    assert_eq!(status, 400);
    let mut registration = serde_json::to_value(registration())?;
    registration["directory"] = json!(long);
    let (status, _) = call(
        &server,
        "POST",
        "/v1/environments/bridge",
        &server.key,
        Some(registration),
    )
    .await?;
    assert_eq!(status, 400);

    // 8,000 events in one POST: refused whole, nothing stored.
    let many: Vec<Value> = (0..8000)
        .map(|i| json!({"type": "assistant", "uuid": format!("u-{i}"), "message": {}}))
        .collect();
    let (status, _) = call(
        &server,
        "POST",
        &format!("/v1/session_ingress/session/{id}/events"),
        &d.ingress_token,
        Some(json!({"events": many})),
    )
    .await?;
    assert_eq!(status, 413);
    let prompts: Vec<Value> = (0..8000).map(|_| prompt("hi")).collect();
    let (status, _) = call(
        &server,
        "POST",
        &format!("/v1/sessions/{id}/events"),
        &server.key,
        Some(json!({"events": prompts})),
    )
    .await?;
    assert_eq!(status, 413);
    assert!(history(&server, id).await?.is_empty());

    // What the official uploader sends at most (500 events per v1 POST) still goes in.
    let batch: Vec<Value> = (0..500)
        .map(|i| json!({"type": "assistant", "uuid": format!("b-{i}"), "message": {}}))
        .collect();
    let (status, _) = call(
        &server,
        "POST",
        &format!("/v1/session_ingress/session/{id}/events"),
        &d.ingress_token,
        Some(json!({"events": batch})),
    )
    .await?;
    assert_eq!(status, 200);
    Ok(())
}
