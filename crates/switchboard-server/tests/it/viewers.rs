//! The viewer subscribe WebSocket seen from the server's side: fan-out, permission
//! answers (first one wins), interrupts, slow viewers, refusals. Raw sockets, so what is
//! checked is the wire.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use switchboard_client::IngressTransport;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::*;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw viewer socket.
async fn subscribe(
    server: &TestServer,
    session: &str,
    key: &str,
    from: Option<u64>,
) -> anyhow::Result<Socket> {
    let query = from
        .map(|f| format!("?from_sequence_num={f}"))
        .unwrap_or_default();
    let url = format!(
        "{}/v1/sessions/ws/{session}/subscribe{query}",
        server.url().replace("http", "ws")
    );
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

/// The next JSON frame, skipping control frames; errors on close or timeout.
async fn frame(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(c))) => anyhow::bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            other => anyhow::bail!("socket ended: {other:?}"),
        }
    }
}

/// Frames until one of `kind` arrives.
async fn until(socket: &mut Socket, kind: &str) -> anyhow::Result<Value> {
    loop {
        let f = frame(socket).await?;
        if f["type"] == kind {
            return Ok(f);
        }
    }
}

/// The close code a socket ends with.
async fn close_code(socket: &mut Socket) -> anyhow::Result<Option<u16>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
            Some(Ok(Message::Close(c))) => return Ok(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Ok(None),
        }
    }
}

fn can_use_tool(request_id: &str) -> Value {
    json!({"type":"control_request","request_id":request_id,"request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"touch x"},"tool_use_id":"toolu_1"}})
}

fn allow(request_id: &str) -> Value {
    json!({"type":"control_response","response":{"subtype":"success","request_id":request_id,"response":{"behavior":"allow","updatedInput":{"command":"touch x"}}}})
}

fn deny(request_id: &str) -> Value {
    json!({"type":"control_response","response":{"subtype":"success","request_id":request_id,"response":{"behavior":"deny","message":"no"}}})
}

#[tokio::test]
async fn viewers_get_history_from_a_sequence_number_then_live_events() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    for i in 0..3 {
        worker
            .write(vec![
                json!({"type":"assistant","uuid":format!("h{i}"),"message":{}}),
            ])
            .await?;
    }
    let mut all = subscribe(&server, &d.session_id, &server.key, None).await?;
    let mut tail = subscribe(&server, &d.session_id, &server.key, Some(2)).await?;
    for i in 1..=3 {
        assert_eq!(frame(&mut all).await?["sequence_num"], i);
    }
    assert_eq!(frame(&mut tail).await?["sequence_num"], 3);
    worker
        .write(vec![
            json!({"type":"keep_alive"}),
            json!({"type":"result","uuid":"live","subtype":"success"}),
        ])
        .await?;
    for socket in [&mut all, &mut tail] {
        let live = frame(socket).await?;
        assert_eq!(
            (live["sequence_num"].as_u64(), live["uuid"].as_str()),
            (Some(4), Some("live"))
        );
    }
    // Pings are answered.
    all.send(Message::Ping(b"v".to_vec().into())).await?;
    loop {
        if let Some(Ok(Message::Pong(p))) =
            tokio::time::timeout(Duration::from_secs(3), all.next()).await?
        {
            assert_eq!(&p[..], b"v");
            break;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_most_recent_events_only_when_the_server_is_configured_so() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| o.viewer_backlog = Some(2)).await?;
    let d = dispatch(&server).await?;
    server
        .sessions()
        .send_events(
            &d.session_id,
            (0..5).map(|i| prompt(&format!("p{i}"))).collect(),
        )
        .await?;
    let mut socket = subscribe(&server, &d.session_id, &server.key, None).await?;
    assert_eq!(frame(&mut socket).await?["sequence_num"], 4);
    assert_eq!(frame(&mut socket).await?["sequence_num"], 5);
    Ok(())
}

/// The v1 and v2 workers, reduced to what these tests need: read inbound, write outbound.
enum Worker {
    V1(IngressTransport, tokio::sync::mpsc::Receiver<Value>),
    V2 {
        reader: Box<SseReader>,
        token: String,
        id: String,
        epoch: u64,
    },
}

impl Worker {
    async fn start(server: &TestServer, v2: bool) -> anyhow::Result<(Self, String)> {
        if !v2 {
            let d = dispatch(server).await?;
            let (t, rx) = IngressTransport::connect(ingress_config(
                server,
                &d.work.data.id,
                &d.ingress_token,
            ))
            .await?;
            return Ok((Worker::V1(t, rx), d.session_id));
        }
        let created: Value = server
            .http()
            .post(format!("{}/v1/code/sessions", server.url()))
            .bearer_auth(&server.key)
            .json(&json!({"bridge":{}}))
            .send()
            .await?
            .json()
            .await?;
        let id = created["session"]["id"].as_str().unwrap().to_string();
        let creds: Value = server
            .http()
            .post(format!("{}/v1/code/sessions/{id}/bridge", server.url()))
            .bearer_auth(&server.key)
            .send()
            .await?
            .json()
            .await?;
        let token = creds["worker_jwt"].as_str().unwrap().to_string();
        let reader = SseReader::open(
            &format!(
                "{}/v1/code/sessions/{id}/worker/events/stream",
                server.url()
            ),
            &token,
            None,
        )
        .await?;
        Ok((
            Worker::V2 {
                reader: Box::new(reader),
                token,
                id: id.clone(),
                epoch: creds["worker_epoch"].as_u64().unwrap(),
            },
            id,
        ))
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        match self {
            Worker::V1(_, rx) => next(rx).await,
            Worker::V2 { reader, .. } => Ok(serde_json::from_str::<Value>(
                &reader.next(Duration::from_secs(5)).await?.data,
            )?["payload"]
                .clone()),
        }
    }

    async fn nothing_more(&mut self) -> bool {
        match self {
            Worker::V1(_, rx) => tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            Worker::V2 { reader, .. } => reader.next(Duration::from_millis(300)).await.is_err(),
        }
    }

    async fn write(&self, server: &TestServer, message: Value) -> anyhow::Result<()> {
        match self {
            Worker::V1(t, _) => Ok(t.write(vec![message]).await?),
            Worker::V2 {
                token, id, epoch, ..
            } => {
                server
                    .http()
                    .post(format!(
                        "{}/v1/code/sessions/{id}/worker/events",
                        server.url()
                    ))
                    .bearer_auth(token)
                    .json(&json!({"worker_epoch":epoch,"events":[{"payload":message}]}))
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            }
        }
    }
}

async fn permission_round_trip(v2: bool) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (mut worker, session) = Worker::start(&server, v2).await?;
    let mut a = subscribe(&server, &session, &server.key, None).await?;
    let mut b = subscribe(&server, &session, &server.key, None).await?;

    // A prompt from viewer A reaches the worker once; both viewers see it.
    let p = prompt("run the tool");
    a.send(Message::Text(p.to_string().into())).await?;
    assert_eq!(worker.read().await?, p);
    for v in [&mut a, &mut b] {
        assert_eq!(until(v, "user").await?["uuid"], p["uuid"]);
    }

    // The worker asks; both viewers see the request; the session needs approval.
    worker.write(&server, can_use_tool("perm-1")).await?;
    for v in [&mut a, &mut b] {
        let request = until(v, "control_request").await?;
        assert_eq!(request["request"]["tool_name"], "Bash");
    }
    let state = server.sessions().get_session(&session).await?;
    assert_eq!(state.session_status, "requires_action");
    assert_eq!(
        state
            .requires_action
            .as_ref()
            .map(|r| r["request_id"].clone()),
        Some(json!("perm-1"))
    );

    // A answers first; the worker gets exactly that answer; B sees it and its late deny
    // is ignored.
    a.send(Message::Text(allow("perm-1").to_string().into()))
        .await?;
    let answer = worker.read().await?;
    assert_eq!(answer["response"]["response"]["behavior"], "allow");
    let seen_by_b = until(&mut b, "control_response").await?;
    assert_eq!(seen_by_b["response"]["request_id"], "perm-1");
    b.send(Message::Text(deny("perm-1").to_string().into()))
        .await?;
    let posted = server
        .sessions()
        .send_events(&session, vec![deny("perm-1")])
        .await?;
    assert!(posted["events"][0]["ignored"]
        .as_str()
        .unwrap()
        .contains("already answered"));
    assert!(
        worker.nothing_more().await,
        "the worker never gets a second answer"
    );
    // The worker echoes the answer it got (a v2 worker adds a uuid); the log still holds
    // one answer to perm-1.
    let mut echo = answer.clone();
    if v2 {
        echo["uuid"] = json!(uuid::Uuid::new_v4().to_string());
    }
    worker.write(&server, echo).await?;
    let history = server
        .sessions()
        .history(&session, switchboard_client::HistoryQuery::default())
        .await?;
    let answers = history
        .data
        .iter()
        .filter(|e| e["type"] == "control_response" && e["response"]["request_id"] == "perm-1")
        .count();
    assert_eq!(answers, 1, "{:?}", history.data);
    assert_eq!(
        server
            .sessions()
            .get_session(&session)
            .await?
            .session_status,
        "running"
    );

    // An interrupt reaches the worker.
    let interrupt =
        json!({"type":"control_request","request_id":"int-1","request":{"subtype":"interrupt"}});
    b.send(Message::Text(interrupt.to_string().into())).await?;
    assert_eq!(worker.read().await?, interrupt);

    // Malformed messages get an error frame, naming the refused message by its uuid,
    // and reach nobody.
    a.send(Message::Text(
        json!({"type":"user","uuid":"refused-1","message":{"role":"user","content":""}})
            .to_string()
            .into(),
    ))
    .await?;
    let error = until(&mut a, "error").await?;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["refused_uuid"], "refused-1");
    a.send(Message::Text("not json".into())).await?;
    let error = until(&mut a, "error").await?;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"].get("refused_uuid").is_none(), "{error}");
    assert!(worker.nothing_more().await);
    Ok(())
}

#[tokio::test]
async fn a_v1_worker_gets_the_first_permission_answer_only_and_interrupts() -> anyhow::Result<()> {
    permission_round_trip(false).await
}

#[tokio::test]
async fn a_v2_worker_gets_the_first_permission_answer_only_and_interrupts() -> anyhow::Result<()> {
    permission_round_trip(true).await
}

#[tokio::test]
async fn answers_to_requests_that_were_never_asked_are_ignored() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (mut worker, session) = Worker::start(&server, false).await?;
    let posted = server
        .sessions()
        .send_events(&session, vec![allow("never-asked")])
        .await?;
    assert!(posted["events"][0]["ignored"]
        .as_str()
        .unwrap()
        .contains("no pending request"));
    // The worker withdraws a request itself: answers after that are ignored too.
    worker.write(&server, can_use_tool("perm-2")).await?;
    worker
        .write(
            &server,
            json!({"type":"control_cancel_request","request_id":"perm-2"}),
        )
        .await?;
    let posted = server
        .sessions()
        .send_events(&session, vec![allow("perm-2")])
        .await?;
    assert!(posted["events"][0]["ignored"].is_string());
    assert!(worker.nothing_more().await);
    Ok(())
}

#[tokio::test]
async fn foreign_keys_get_4003_and_unknown_sessions_4001() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let mallory = server.key_for("mallory").await?;
    let mut socket = subscribe(&server, &d.session_id, &mallory, None).await?;
    assert_eq!(close_code(&mut socket).await?, Some(4003));
    let mut socket = subscribe(&server, &d.session_id, &d.environment_secret, None).await?;
    assert_eq!(close_code(&mut socket).await?, Some(4003));
    let mut socket = subscribe(&server, "session_nosuchsession", &server.key, None).await?;
    assert_eq!(close_code(&mut socket).await?, Some(4001));
    // Archiving ends live viewers with 4001 too.
    let mut live = subscribe(&server, &d.session_id, &server.key, None).await?;
    server.sessions().archive_session(&d.session_id).await?;
    assert_eq!(close_code(&mut live).await?, Some(4001));
    Ok(())
}

#[tokio::test]
async fn a_viewer_that_stops_reading_is_cut_off_and_resumes_without_a_gap() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| {
        o.channel_capacity = 16;
        o.viewer_write_timeout = Duration::from_millis(300);
    })
    .await?;
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    let mut slow = subscribe(&server, &d.session_id, &server.key, None).await?;
    // The worker writes far more than the socket buffers and the channel hold while the
    // viewer reads nothing.
    let blob = "x".repeat(16 * 1024);
    let total = 400u64;
    for batch in 0..(total / 20) {
        let events: Vec<Value> = (0..20)
            .map(|i| json!({"type":"assistant","uuid":format!("b{batch}-{i}"),"message":{"content":blob}}))
            .collect();
        worker.write(events).await?;
    }
    // Now read: some prefix arrives, then the server's close with the resume point.
    let mut seqs = Vec::new();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await? {
            Some(Ok(Message::Text(t))) => seqs.push(
                serde_json::from_str::<Value>(&t)?["sequence_num"]
                    .as_u64()
                    .unwrap(),
            ),
            Some(Ok(Message::Close(c))) => break c.map(|c| c.code),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break None,
        }
    };
    assert!(
        (seqs.len() as u64) < total,
        "the viewer was cut off before the end"
    );
    assert!(
        code.is_none() || code == Some(CloseCode::Again),
        "closed with {code:?}"
    );
    // Resuming from the last sequence number seen fills the gap exactly.
    let last = seqs.last().copied().unwrap_or(0);
    let mut resumed = subscribe(&server, &d.session_id, &server.key, Some(last)).await?;
    while seqs.len() < total as usize {
        seqs.push(frame(&mut resumed).await?["sequence_num"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    Ok(())
}

/// The `switchboard_viewer_connections` gauge.
async fn viewer_connections(server: &TestServer) -> anyhow::Result<i64> {
    let text = server
        .http()
        .get(format!("{}/metrics", server.url()))
        .bearer_auth(&server.key)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_viewer_connections "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no viewer gauge in /metrics"))
}

#[tokio::test]
async fn a_stalled_viewer_is_cut_once_it_is_a_byte_bound_behind() -> anyhow::Result<()> {
    const BOUND: u64 = 1024 * 1024;
    const EVENT: usize = 200 * 1024;
    let server = TestServer::start_with(|o| {
        o.viewer_max_lag_bytes = BOUND;
        // Neither the write timeout nor the channel's event count cuts it here.
        o.viewer_write_timeout = Duration::from_secs(60);
    })
    .await?;
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    let path = format!("/v1/sessions/ws/{}/subscribe", d.session_id);
    let mut stalled = stalling_socket(&server, &path, &server.key).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(viewer_connections(&server).await?, 1);

    // The worker writes big events while the viewer reads nothing. Once the viewer is
    // behind by more than the bound (plus what the socket buffers took), it is cut.
    let blob = "y".repeat(EVENT);
    let mut published = 0usize;
    let mut cut_at = None;
    for i in 0..60 {
        worker
            .write(vec![
                json!({"type":"assistant","uuid":format!("big-{i}"),"message":{"content":blob}}),
            ])
            .await?;
        published += EVENT;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if viewer_connections(&server).await? == 0 {
            cut_at = Some(published);
            break;
        }
    }
    let cut_at = cut_at
        .ok_or_else(|| anyhow::anyhow!("the viewer was still connected after {published} bytes"))?;
    // What the server held for it is the bound plus the kernel's socket buffers (at
    // most 4 MiB here) and a frame or two, far below the channel's 512 events.
    assert!(
        cut_at <= BOUND as usize + 4 * 1024 * 1024 + 4 * EVENT,
        "cut only after {cut_at} bytes"
    );

    // Reading now: what the buffers held, then the close with the resume point.
    let mut seqs = Vec::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next()).await? {
            Some(Ok(Message::Text(t))) => {
                seqs.push(serde_json::from_str::<Value>(&t)?["sequence_num"].as_u64());
            }
            Some(Ok(Message::Close(c))) => break c,
            Some(Ok(_)) => {}
            other => anyhow::bail!("the socket ended without a close frame: {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Again);
    let last = seqs.last().copied().flatten().unwrap_or(0);
    assert!(
        close
            .reason
            .contains(&format!("resume from sequence_num {last}")),
        "{close:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_close_reason_that_echoes_a_long_id_keeps_its_code() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let long = format!("session_{}", "a".repeat(200));
    let mut socket = subscribe(&server, &long, &server.key, None).await?;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
            Some(Ok(Message::Close(c))) => break c,
            Some(Ok(_)) => {}
            other => anyhow::bail!("no close frame: {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 4001);
    assert!(close.reason.len() <= 123);
    assert!(
        close.reason.starts_with("session session_aaaa"),
        "{close:?}"
    );
    Ok(())
}
