//! The v1 session-ingress WebSocket and POST (docs/PROTOCOL.md §8).

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use switchboard_client::{HistoryQuery, IngressTransport, IngressVersion, TransportState};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test]
async fn messages_sent_while_no_worker_is_connected_wait_and_are_delivered_once(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let viewer = server.sessions();
    let first = prompt("first");
    let interrupt =
        json!({"type":"control_request","request_id":"req-1","request":{"subtype":"interrupt"}});
    viewer
        .send_events(&d.session_id, vec![first.clone(), interrupt.clone()])
        .await?;

    // The worker connects later and gets both, in order.
    let (worker, mut inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    assert_eq!(next(&mut inbound).await?, first);
    assert_eq!(next(&mut inbound).await?, interrupt);
    worker.close().await;

    // A reconnecting worker does not get them again, only what is new.
    let second = prompt("second");
    viewer
        .send_events(&d.session_id, vec![second.clone()])
        .await?;
    let (_worker, mut inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    assert_eq!(next(&mut inbound).await?, second);
    let nothing = tokio::time::timeout(Duration::from_millis(300), inbound.recv()).await;
    assert!(nothing.is_err(), "nothing else arrives: {nothing:?}");
    Ok(())
}

#[tokio::test]
async fn the_worker_never_gets_its_own_writes_back() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let (worker, mut inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    worker
        .write(vec![
            json!({"type":"assistant","uuid":"a1","message":{"role":"assistant","content":[]}}),
        ])
        .await?;
    let marker = prompt("after");
    server
        .sessions()
        .send_events(&d.session_id, vec![marker.clone()])
        .await?;
    // The first thing the worker reads is the viewer's prompt, not its own assistant message.
    assert_eq!(next(&mut inbound).await?, marker);
    Ok(())
}

#[tokio::test]
async fn frames_are_one_json_object_with_a_trailing_newline() -> anyhow::Result<()> {
    let server =
        TestServer::start_with(|o| o.ingress_keepalive = Duration::from_millis(200)).await?;
    let d = dispatch(&server).await?;
    server
        .sessions()
        .send_events(&d.session_id, vec![prompt("one"), prompt("two")])
        .await?;

    // Read raw frames on the /v2/ path that a localhost bridge builds.
    let url = format!(
        "{}/v2/session_ingress/ws/{}",
        server.url().replace("http", "ws"),
        d.work.data.id
    );
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", d.ingress_token).parse()?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let mut texts = Vec::new();
    while texts.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(3), socket.next()).await? {
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(_)) => {}
            other => anyhow::bail!("socket ended: {other:?}"),
        }
    }
    for text in &texts {
        assert!(text.ends_with('\n'), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        let v: Value = serde_json::from_str(text.trim_end())?;
        assert!(v["type"].is_string());
    }
    assert_eq!(texts[2], "{\"type\":\"keep_alive\"}\n");

    // Pings are answered.
    socket.send(Message::Ping(b"p".to_vec().into())).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), socket.next()).await? {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"p");
                break;
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("no pong: {other:?}"),
        }
    }

    // A worker that writes over the socket (no POST switch) is heard too.
    socket
        .send(Message::Text(
            "{\"type\":\"system\",\"subtype\":\"init\",\"uuid\":\"s1\"}\n".into(),
        ))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let history = server
        .sessions()
        .history(&d.session_id, HistoryQuery::default())
        .await?;
    assert_eq!(history.data.last().unwrap()["type"], "system");
    Ok(())
}

/// The close code a worker connection ends with, whether the client saw the socket open
/// before the server closed it or not.
async fn refusal_code(config: switchboard_client::IngressConfig) -> anyhow::Result<u16> {
    match IngressTransport::connect(config).await {
        Ok((transport, _rx)) => {
            match tokio::time::timeout(Duration::from_secs(5), transport.closed()).await? {
                TransportState::Closed {
                    code: Some(code), ..
                } => Ok(code),
                other => anyhow::bail!("not refused: {other:?}"),
            }
        }
        Err(e) => {
            let text = e.to_string();
            let code = text
                .split("close code ")
                .nth(1)
                .and_then(|rest| rest.get(..4))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no close code in {text:?}"))?;
            Ok(code)
        }
    }
}

#[tokio::test]
async fn wrong_credentials_close_with_4003_and_unknown_sessions_with_4001() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let other = dispatch(&server).await?;

    // Another session's token, an unknown token, an API key of another owner: 4003.
    let mallory = server.key_for("mallory").await?;
    for token in [
        other.ingress_token.as_str(),
        "sbi_nope_nope",
        mallory.as_str(),
    ] {
        let code = refusal_code(ingress_config(&server, &d.work.data.id, token)).await?;
        assert_eq!(code, 4003, "token {token}");
    }
    // A session that does not exist, or is archived: 4001.
    let code = refusal_code(ingress_config(&server, "cse_doesnotexist", &server.key)).await?;
    assert_eq!(code, 4001);
    server.sessions().archive_session(&d.session_id).await?;
    let code = refusal_code(ingress_config(&server, &d.work.data.id, &server.key)).await?;
    assert_eq!(code, 4001);
    // Archiving revoked the session's ingress token.
    let code = refusal_code(ingress_config(&server, &d.work.data.id, &d.ingress_token)).await?;
    assert_eq!(code, 4003);
    Ok(())
}

#[tokio::test]
async fn the_owners_api_key_also_reaches_the_ingress() -> anyhow::Result<()> {
    // The REPL's v1 transport, and a child after a token refresh, use the user's token.
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let config =
        ingress_config(&server, &d.session_id, &server.key).with_version(IngressVersion::V2);
    let (worker, mut inbound) = IngressTransport::connect(config).await?;
    let p = prompt("via key");
    server
        .sessions()
        .send_events(&d.session_id, vec![p.clone()])
        .await?;
    assert_eq!(next(&mut inbound).await?, p);
    worker
        .write(vec![json!({"type":"assistant","uuid":"k1","message":{}})])
        .await?;
    Ok(())
}

#[tokio::test]
async fn retried_posts_never_duplicate_events() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    let batch = vec![
        json!({"type":"assistant","uuid":"dup-1","message":{}}),
        json!({"type":"result","uuid":"dup-2","subtype":"success"}),
    ];
    worker.write(batch.clone()).await?;
    worker.write(batch).await?;
    let history = server
        .sessions()
        .history(&d.session_id, HistoryQuery::default())
        .await?;
    assert_eq!(history.data.len(), 2);
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_worker_sockets_with_going_away() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let mut config = ingress_config(&server, &d.work.data.id, &d.ingress_token);
    config.reconnect_budget = Duration::from_millis(300);
    let (worker, _inbound) = IngressTransport::connect(config).await?;
    let mut states = worker.state_changes();
    server.shutdown();
    // 1001 is not permanent: the worker tries to reconnect (and, with the server gone,
    // eventually gives up).
    let reconnecting = tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|s| {
            matches!(
                s,
                TransportState::Reconnecting | TransportState::Closed { .. }
            )
        }),
    )
    .await??
    .clone();
    assert_eq!(reconnecting, TransportState::Reconnecting);
    Ok(())
}

#[tokio::test]
async fn a_stalled_worker_socket_does_not_hold_up_its_replacement() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    // A worker that connects and then never reads.
    let path = format!("/v1/session_ingress/ws/{}", d.work.data.id);
    let stalled = stalling_socket(&server, &path, &d.ingress_token).await?;
    // Prompts far bigger than the socket buffers: delivering them to the stalled socket
    // blocks the server's writes while it holds the session's delivery.
    let big = "x".repeat(600 * 1024);
    let prompts: Vec<Value> = (0..24).map(|i| prompt(&format!("{i} {big}"))).collect();
    for p in &prompts {
        server
            .sessions()
            .send_events(&d.session_id, vec![p.clone()])
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The bridge starts a new worker: it gets the prompts the stalled socket did not
    // take at once (those the kernel took for the stalled socket count as delivered).
    let (_worker, mut inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    let first = tokio::time::timeout(Duration::from_secs(3), inbound.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the new worker got nothing for 3 s"))?
        .expect("a prompt");
    let from = prompts
        .iter()
        .position(|p| p["uuid"] == first["uuid"])
        .expect("one of the prompts");
    for p in &prompts[from + 1..] {
        assert_eq!(next(&mut inbound).await?["uuid"], p["uuid"]);
    }
    // And what comes next.
    let after = prompt("after");
    server
        .sessions()
        .send_events(&d.session_id, vec![after.clone()])
        .await?;
    assert_eq!(next(&mut inbound).await?, after);
    drop(stalled);
    Ok(())
}

#[tokio::test]
async fn both_planes_share_one_worker_cursor() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let viewer = server.sessions();
    // A v1 worker connects (the session's cursor is now known) and goes away.
    let (worker, _inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.close().await;

    // A prompt goes out over the v2 event stream instead.
    let first = prompt("first");
    viewer
        .send_events(&d.session_id, vec![first.clone()])
        .await?;
    let url = format!(
        "{}/v1/code/sessions/{}/worker/events/stream",
        server.url(),
        d.session_id
    );
    let mut stream = SseReader::open(&url, &d.ingress_token, None).await?;
    let frame = stream.next(Duration::from_secs(5)).await?;
    let data: Value = serde_json::from_str(&frame.data)?;
    assert_eq!(data["payload"], first);
    drop(stream);

    // The v1 worker that comes back gets only what is new: one cursor for both planes.
    let second = prompt("second");
    viewer
        .send_events(&d.session_id, vec![second.clone()])
        .await?;
    let (_worker, mut inbound) =
        IngressTransport::connect(ingress_config(&server, &d.work.data.id, &d.ingress_token))
            .await?;
    assert_eq!(next(&mut inbound).await?, second);
    let nothing = tokio::time::timeout(Duration::from_millis(300), inbound.recv()).await;
    assert!(nothing.is_err(), "nothing else arrives: {nothing:?}");
    Ok(())
}
