//! Replays of the official CLI's wire captures (`tests/fixtures/real-client`): the
//! client's side of each capture is sent to Switchboard, byte for byte where the server
//! cannot tell the difference, and every answer must be one the real client accepts.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use switchboard_client::HistoryQuery;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// One line of a capture.
#[derive(Debug, serde::Deserialize)]
pub struct Record {
    pub dir: String,
    pub transport: String,
    pub method: String,
    pub path: String,
    pub headers: Option<serde_json::Map<String, Value>>,
    pub body: Option<Value>,
    pub ws: Option<Value>,
}

/// Loads a capture by file name.
pub fn load(name: &str) -> anyhow::Result<Vec<Record>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real-client")
        .join(name);
    let text = std::fs::read_to_string(&path)?;
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// Whether `v` is a worker's echo of a permission answer already in `log`: the server
/// stores each answer once.
fn is_answer_echo(v: &Value, log: &[Value]) -> bool {
    v["type"] == "control_response"
        && log
            .iter()
            .any(|e| e["type"] == "control_response" && e["response"] == v["response"])
}

/// The capture's headers minus those the server must not depend on being equal.
fn replay_headers(record: &Record, token: &str) -> Vec<(String, String)> {
    record
        .headers
        .iter()
        .flatten()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("authorization")
                && !k.to_ascii_lowercase().starts_with("sec-websocket")
                && !k.eq_ignore_ascii_case("upgrade")
        })
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .chain([("Authorization".to_string(), format!("Bearer {token}"))])
        .collect()
}

#[tokio::test]
async fn the_v1_hybrid_capture_replays_against_switchboard() -> anyhow::Result<()> {
    let records = load("v1-hybrid-2.1.112.jsonl")?;
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let viewer = server.sessions();
    let http = server.http();

    // The upgrade, with the capture's headers (permessage-deflate offer included).
    let upgrade = records
        .iter()
        .find(|r| r.dir == "client->server" && r.transport == "http" && r.method == "GET")
        .expect("an upgrade");
    let url = format!(
        "{}/v2/session_ingress/ws/{}",
        server.url().replace("http", "ws"),
        d.work.data.id
    );
    let mut request = url.into_client_request()?;
    for (k, v) in replay_headers(upgrade, &d.ingress_token) {
        request
            .headers_mut()
            .insert(http::HeaderName::try_from(k.as_str())?, v.parse()?);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;

    let mut expected: Vec<Value> = Vec::new();
    let mut seen_uuids = std::collections::HashSet::new();
    let mut keep = |v: &Value, expected: &mut Vec<Value>| {
        if v["type"] == "keep_alive" {
            return;
        }
        if let Some(u) = v["uuid"].as_str() {
            if !seen_uuids.insert(u.to_string()) {
                return; // The worker's echo of a prompt is the same event.
            }
        }
        if is_answer_echo(v, expected) {
            return; // So is its echo of a permission answer.
        }
        expected.push(v.clone());
    };
    for record in &records {
        match (record.dir.as_str(), record.transport.as_str()) {
            // What the fake server sent the worker: here a viewer sends it, and the
            // worker must receive exactly that, newline-terminated.
            ("server->client", "ws")
                if record.ws.as_ref().is_some_and(|w| w["opcode"] == "text") =>
            {
                let message = record.body.clone().expect("a text frame body");
                viewer
                    .send_events(&d.session_id, vec![message.clone()])
                    .await?;
                let frame = loop {
                    match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
                        Some(Ok(Message::Text(t))) if !t.contains("\"keep_alive\"") => {
                            break t.to_string()
                        }
                        Some(Ok(_)) => {}
                        other => anyhow::bail!("worker socket ended: {other:?}"),
                    }
                };
                assert!(frame.ends_with('\n'));
                assert_eq!(serde_json::from_str::<Value>(frame.trim_end())?, message);
                keep(&message, &mut expected);
            }
            ("client->server", "http") if record.method == "POST" => {
                let mut post = http.post(format!(
                    "{}{}",
                    server.url(),
                    record.path.replace("session_fixture1", &d.work.data.id)
                ));
                for (k, v) in replay_headers(record, &d.ingress_token) {
                    post = post.header(k, v);
                }
                let body = record.body.clone().expect("a POST body");
                let response = post.body(serde_json::to_vec(&body)?).send().await?;
                assert!(
                    response.status().is_success(),
                    "{} -> {}",
                    record.path,
                    response.status()
                );
                for event in body["events"].as_array().expect("events") {
                    keep(event, &mut expected);
                }
            }
            ("client->server", "ws")
                if record.ws.as_ref().is_some_and(|w| w["opcode"] == "ping") =>
            {
                socket.send(Message::Ping(Vec::new().into())).await?;
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
                        Some(Ok(Message::Pong(_))) => break,
                        Some(Ok(_)) => {}
                        other => anyhow::bail!("no pong: {other:?}"),
                    }
                }
            }
            _ => {}
        }
    }

    // The session's log holds the whole conversation once, in wire order.
    let history = viewer
        .history(
            &d.session_id,
            HistoryQuery {
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await?;
    let stored: Vec<Value> = history
        .data
        .into_iter()
        .map(|mut v| {
            let v_obj = v.as_object_mut().unwrap();
            v_obj.remove("sequence_num");
            // The audit field the server adds to inbound events, like the sequence number.
            v_obj.remove("sent_with");
            v
        })
        .collect();
    assert_eq!(stored.len(), expected.len());
    assert_eq!(stored, expected);
    let status = viewer.get_session(&d.session_id).await?;
    assert_eq!(
        status.session_status, "running",
        "the last thing seen was an answer to end_session"
    );
    Ok(())
}

/// Replays the worker's side of a CCR v2 capture: its requests go to Switchboard with
/// Switchboard's session, token and epoch; what the fake server streamed is sent by a
/// viewer and must arrive on the stream unchanged.
async fn replay_v2(name: &str) -> anyhow::Result<()> {
    let records = load(name)?;
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    let session = server
        .sessions()
        .create_session(&switchboard_proto::sessions::CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            use_code_sessions: Some(true),
            ..Default::default()
        })
        .await?;
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, None)
        .await?
        .expect("work");
    let token = secret_of(&work).session_ingress_token;
    let id = work.data.id.clone();
    let registered: Value = server
        .http()
        .post(format!(
            "{}/v1/code/sessions/{id}/worker/register",
            server.url()
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await?
        .json()
        .await?;
    let epoch = registered["worker_epoch"].clone();
    let captured_id = records
        .iter()
        .find_map(|r| {
            r.path
                .strip_prefix("/v1/code/sessions/")
                .map(|rest| rest.split('/').next().unwrap_or("").to_string())
        })
        .expect("a session path");

    let mut stream: Option<SseReader> = None;
    let mut event_ids = std::collections::HashMap::new();
    let mut expected: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut keep = |v: &Value, expected: &mut Vec<Value>| {
        if v["type"] == "keep_alive" {
            return;
        }
        if let Some(u) = v["uuid"].as_str() {
            if !seen.insert(u.to_string()) {
                return;
            }
        }
        if is_answer_echo(v, expected) {
            return;
        }
        expected.push(v.clone());
    };
    for record in &records {
        let path = record.path.replace(&captured_id, &id);
        match (record.dir.as_str(), record.transport.as_str()) {
            ("client->server", "http")
                if path.starts_with("/v1/code/sessions/") && path.ends_with("/events/stream") =>
            {
                stream =
                    Some(SseReader::open(&format!("{}{path}", server.url()), &token, None).await?);
            }
            ("client->server", "http") if path.starts_with("/v1/code/sessions/") => {
                let mut request = server
                    .http()
                    .request(record.method.parse()?, format!("{}{path}", server.url()));
                for (k, v) in replay_headers(record, &token) {
                    request = request.header(k, v);
                }
                if let Some(mut body) = record.body.clone() {
                    if body.get("worker_epoch").is_some() {
                        body["worker_epoch"] = epoch.clone();
                    }
                    // Delivery updates name events by the ids this server gave them.
                    if let Some(updates) = body.get_mut("updates").and_then(Value::as_array_mut) {
                        for update in updates {
                            if let Some(ours) =
                                update["event_id"].as_str().and_then(|e| event_ids.get(e))
                            {
                                update["event_id"] = Value::String(String::clone(ours));
                            }
                        }
                    }
                    if path.ends_with("/worker/events") {
                        for event in body["events"].as_array().expect("events") {
                            keep(&event["payload"], &mut expected);
                        }
                    }
                    request = request.body(serde_json::to_vec(&body)?);
                }
                let response = request.send().await?;
                assert!(
                    response.status().is_success(),
                    "{} {path} -> {}",
                    record.method,
                    response.status()
                );
                if record.method == "GET" {
                    let body: Value = response.json().await?;
                    assert!(body["worker"].is_object(), "{body}");
                }
            }
            ("server->client", "sse") if record.body.is_some() => {
                let captured = record.body.as_ref().expect("frame body");
                let payload = captured["payload"].clone();
                server
                    .sessions()
                    .send_events(&session.id, vec![payload.clone()])
                    .await?;
                let frame = stream
                    .as_mut()
                    .expect("stream opened first")
                    .next(Duration::from_secs(5))
                    .await?;
                assert_eq!(frame.event.as_deref(), Some("client_event"));
                let data: Value = serde_json::from_str(&frame.data)?;
                assert_eq!(data["payload"], payload);
                assert_eq!(data["event_type"], captured["event_type"]);
                assert_eq!(frame.id, Some(data["sequence_num"].to_string()));
                event_ids.insert(
                    captured["event_id"].as_str().expect("event_id").to_string(),
                    data["event_id"].as_str().expect("event_id").to_string(),
                );
                keep(&payload, &mut expected);
            }
            _ => {}
        }
    }
    let history = server
        .sessions()
        .history(
            &session.id,
            HistoryQuery {
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await?;
    let stored: Vec<Value> = history
        .data
        .into_iter()
        .map(|mut v| {
            let v_obj = v.as_object_mut().expect("object");
            v_obj.remove("sequence_num");
            v_obj.remove("sent_with");
            v
        })
        .collect();
    assert_eq!(stored.len(), expected.len());
    assert_eq!(stored, expected);
    Ok(())
}

#[tokio::test]
async fn the_v2_capture_of_2_1_112_replays_against_switchboard() -> anyhow::Result<()> {
    replay_v2("v2-ccr-2.1.112.jsonl").await
}

#[tokio::test]
async fn the_v2_capture_of_2_1_197_replays_against_switchboard() -> anyhow::Result<()> {
    replay_v2("v2-ccr-2.1.197.jsonl").await
}

#[tokio::test]
async fn the_v2_deny_and_interrupt_capture_replays_against_switchboard() -> anyhow::Result<()> {
    replay_v2("v2-ccr-deny-interrupt-2.1.112.jsonl").await
}
