//! Tests of the ingress transport: URL building, framing and backoff as pure functions,
//! and the reader and writer against small in-process servers.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::testing::{FakeServer, Reply};

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn ws_urls_switch_scheme_and_keep_the_path_prefix() -> anyhow::Result<()> {
    let plain = ws_url("http://127.0.0.1:8787", "cse_abcd", IngressVersion::V1)?;
    let secure = ws_url("https://example.com/rcs/", "cse_abcd", IngressVersion::V2)?;
    let already_ws = ws_url("wss://example.com/a/b", "cse_abcd", IngressVersion::V1)?;

    assert_eq!(
        plain.as_str(),
        "ws://127.0.0.1:8787/v1/session_ingress/ws/cse_abcd"
    );
    assert_eq!(
        secure.as_str(),
        "wss://example.com/rcs/v2/session_ingress/ws/cse_abcd"
    );
    assert_eq!(
        already_ws.as_str(),
        "wss://example.com/a/b/v1/session_ingress/ws/cse_abcd"
    );
    Ok(())
}

#[test]
fn post_urls_use_http_and_the_session_events_path() -> anyhow::Result<()> {
    let plain = post_url("ws://host:1/prefix", "cse_abcd", IngressVersion::V1)?;
    let secure = post_url("https://example.com", "session_x", IngressVersion::V2)?;

    assert_eq!(
        plain.as_str(),
        "http://host:1/prefix/v1/session_ingress/session/cse_abcd/events"
    );
    assert_eq!(
        secure.as_str(),
        "https://example.com/v2/session_ingress/session/session_x/events"
    );
    Ok(())
}

#[test]
fn urls_reject_unsafe_session_ids_and_bad_bases() {
    let unsafe_id = ws_url("http://h", "cse_../x", IngressVersion::V1);
    let bad_base = post_url("not a url", "cse_abcd", IngressVersion::V1);
    let bad_scheme = ws_url("ftp://h", "cse_abcd", IngressVersion::V1);

    assert!(matches!(
        unsafe_id,
        Err(ApiError::InvalidId {
            what: "session_id",
            ..
        })
    ));
    assert!(matches!(bad_base, Err(ApiError::InvalidRequest(_))));
    assert!(matches!(bad_scheme, Err(ApiError::InvalidRequest(_))));
}

#[test]
fn the_version_follows_the_official_loopback_heuristic() {
    assert_eq!(
        IngressVersion::for_base_url("http://localhost:8787"),
        IngressVersion::V2
    );
    assert_eq!(
        IngressVersion::for_base_url("http://127.0.0.1:8787"),
        IngressVersion::V2
    );
    assert_eq!(
        IngressVersion::for_base_url("https://rc.example.com"),
        IngressVersion::V1
    );
}

#[test]
fn the_line_buffer_splits_frames_and_glues_partial_lines() {
    let mut lines = LineBuffer::default();

    let first = lines.push("{\"n\":1}\n\n{\"n\":2}\n{\"n\":");
    let second = lines.push("3}");
    let third = lines.push("\n");

    let values = |batch: Vec<std::result::Result<Value, String>>| -> Vec<Value> {
        batch
            .into_iter()
            .filter_map(std::result::Result::ok)
            .collect()
    };
    assert_eq!(values(first), vec![json!({"n": 1}), json!({"n": 2})]);
    assert!(second.is_empty());
    assert_eq!(values(third), vec![json!({"n": 3})]);
}

#[test]
fn a_frame_without_its_newline_breaks_the_next_one() {
    let mut lines = LineBuffer::default();

    assert!(lines.push("{\"n\":1}").is_empty());
    let glued = lines.push("{\"n\":2}\n");

    assert_eq!(glued.len(), 1);
    assert!(glued[0].is_err());
}

#[test]
fn keep_alives_are_recognised() {
    assert!(is_keep_alive(&json!({"type": "keep_alive"})));
    assert!(!is_keep_alive(&json!({"type": "user"})));
    assert!(!is_keep_alive(&json!("keep_alive")));
}

#[test]
fn reconnect_delays_double_up_to_the_cap() {
    let base = Duration::from_secs(1);
    let max = Duration::from_secs(30);
    let delays: Vec<u64> = (0..7)
        .map(|n| reconnect_delay(n, base, max).as_secs())
        .collect();

    assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
    assert_eq!(reconnect_delay(u32::MAX, base, max), max);
}

#[test]
fn default_backoffs_bring_a_worker_back_within_seconds() {
    let config = IngressConfig::new("http://h", "cse_abcd", "tok");
    for attempt in 0..40 {
        let worst = jittered(
            reconnect_delay(
                attempt,
                config.reconnect_base_delay,
                config.reconnect_max_delay,
            ),
            RECONNECT_JITTER,
        );
        assert!(worst <= Duration::from_millis(2500), "{attempt}: {worst:?}");
        let post = post_delay(
            attempt,
            config.post_base_delay,
            config.post_max_delay,
            config.post_max_jitter,
        );
        assert!(post <= Duration::from_secs(3), "{attempt}: {post:?}");
    }
    // The budget stays the official 10 minutes.
    assert_eq!(config.reconnect_budget, Duration::from_secs(600));
}

#[tokio::test]
async fn a_going_away_close_is_retried_at_once() -> anyhow::Result<()> {
    let (base, mut connections) = ws_server().await?;
    let mut config = fast_config(&base, "tok");
    config.reconnect_base_delay = Duration::from_secs(30);
    config.reconnect_max_delay = Duration::from_secs(30);
    let (transport, _messages) = IngressTransport::connect(config).await?;
    let mut server = next_connection(&mut connections).await?;

    let lost = tokio::time::Instant::now();
    close_with(&mut server.ws, 1001).await?;
    let _again = next_connection(&mut connections).await?;

    assert!(
        lost.elapsed() < Duration::from_secs(5),
        "{:?}",
        lost.elapsed()
    );
    transport.close().await;
    Ok(())
}

#[test]
fn jitter_stays_within_a_quarter() {
    let delay = Duration::from_secs(4);
    assert_eq!(jittered(delay, -0.25), Duration::from_secs(3));
    assert_eq!(jittered(delay, 0.25), Duration::from_secs(5));
}

#[test]
fn post_delays_add_at_most_the_jitter() {
    let base = Duration::from_millis(500);
    let max = Duration::from_secs(8);
    let jitter = Duration::from_secs(1);
    for attempt in 0..10 {
        let delay = post_delay(attempt, base, max, jitter);
        let floor = reconnect_delay(attempt, base, max);
        assert!(
            delay >= floor && delay <= floor + jitter,
            "{attempt}: {delay:?}"
        );
    }
    assert_eq!(reconnect_delay(4, base, max), max);
}

/// A server-side socket and what its upgrade request carried.
struct Accepted {
    ws: WebSocketStream<TcpStream>,
    authorization: Option<String>,
    path: String,
}

/// A WebSocket server that hands every accepted connection to the test.
async fn ws_server() -> anyhow::Result<(String, mpsc::Receiver<Accepted>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut seen = (None, String::new());
            // The `Callback` trait of tungstenite fixes the (large) error type; this is not our choice.
            #[allow(clippy::result_large_err)]
            let callback = |request: &Request, response: Response| {
                seen.0 = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                seen.1 = request.uri().path().to_owned();
                Ok(response)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                continue;
            };
            let accepted = Accepted {
                ws,
                authorization: seen.0,
                path: seen.1,
            };
            if tx.send(accepted).await.is_err() {
                break;
            }
        }
    });
    Ok((base, rx))
}

async fn next_connection(connections: &mut mpsc::Receiver<Accepted>) -> anyhow::Result<Accepted> {
    tokio::time::timeout(PATIENCE, connections.recv())
        .await
        .context("no connection in time")?
        .context("the server stopped")
}

async fn next_message(messages: &mut mpsc::Receiver<Value>) -> anyhow::Result<Option<Value>> {
    tokio::time::timeout(PATIENCE, messages.recv())
        .await
        .context("no message in time")
}

/// Closes a server-side socket with `code` and finishes the closing handshake.
async fn close_with(ws: &mut WebSocketStream<TcpStream>, code: u16) -> anyhow::Result<()> {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "test".into(),
    };
    ws.close(Some(frame)).await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

fn fast_config(base: &str, token: impl Into<TokenSource>) -> IngressConfig {
    let mut config = IngressConfig::new(base, "cse_abcd", token);
    config.reconnect_base_delay = Duration::from_millis(10);
    config.reconnect_max_delay = Duration::from_millis(50);
    config.post_base_delay = Duration::from_millis(10);
    config.post_max_delay = Duration::from_millis(50);
    config.post_max_jitter = Duration::ZERO;
    config
}

#[tokio::test]
async fn inbound_lines_are_forwarded_without_keep_alives_until_a_permanent_close(
) -> anyhow::Result<()> {
    let (base, mut connections) = ws_server().await?;
    let (transport, mut messages) = IngressTransport::connect(fast_config(&base, "tok")).await?;
    let mut server = next_connection(&mut connections).await?;

    server
        .ws
        .send(Message::text("{\"type\":\"keep_alive\"}\n"))
        .await?;
    server.ws.send(Message::text("{\"n\":1}\n")).await?;
    server
        .ws
        .send(Message::text("{\"n\":2}\n{\"n\":3}\n"))
        .await?;
    server.ws.send(Message::text("{\"n\":4}")).await?;
    server.ws.send(Message::text("\n")).await?;
    close_with(&mut server.ws, 4001).await?;

    for n in 1..=4 {
        assert_eq!(next_message(&mut messages).await?, Some(json!({"n": n})));
    }
    assert_eq!(next_message(&mut messages).await?, None);
    let state = transport.closed().await;
    assert!(
        matches!(
            state,
            TransportState::Closed {
                code: Some(4001),
                ..
            }
        ),
        "{state:?}"
    );
    assert_eq!(server.authorization.as_deref(), Some("Bearer tok"));
    assert_eq!(server.path, "/v1/session_ingress/ws/cse_abcd");
    Ok(())
}

#[tokio::test]
async fn a_lost_connection_is_reopened_with_the_current_token() -> anyhow::Result<()> {
    let (base, mut connections) = ws_server().await?;
    let token = TokenSource::new("first");
    let (transport, mut messages) =
        IngressTransport::connect(fast_config(&base, token.clone())).await?;
    let mut server = next_connection(&mut connections).await?;

    token.set("second");
    close_with(&mut server.ws, 1011).await?;
    let mut server = next_connection(&mut connections).await?;
    server
        .ws
        .send(Message::text("{\"after\":\"reconnect\"}\n"))
        .await?;

    assert_eq!(
        next_message(&mut messages).await?,
        Some(json!({"after": "reconnect"}))
    );
    assert_eq!(server.authorization.as_deref(), Some("Bearer second"));
    assert_eq!(transport.state(), TransportState::Connected);
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn a_4003_is_retried_only_when_the_token_changed() -> anyhow::Result<()> {
    let (base, mut connections) = ws_server().await?;
    let token = TokenSource::new("old");
    let (transport, mut messages) =
        IngressTransport::connect(fast_config(&base, token.clone())).await?;
    let mut server = next_connection(&mut connections).await?;

    token.set("new");
    close_with(&mut server.ws, 4003).await?;
    let mut server = next_connection(&mut connections).await?;
    close_with(&mut server.ws, 4003).await?;

    assert_eq!(next_message(&mut messages).await?, None);
    let state = transport.closed().await;
    assert!(
        matches!(
            state,
            TransportState::Closed {
                code: Some(4003),
                ..
            }
        ),
        "{state:?}"
    );
    assert_eq!(server.authorization.as_deref(), Some("Bearer new"));
    Ok(())
}

#[tokio::test]
async fn close_sends_a_normal_close_and_ends_everything() -> anyhow::Result<()> {
    let (base, mut connections) = ws_server().await?;
    let (transport, mut messages) = IngressTransport::connect(fast_config(&base, "tok")).await?;
    let mut server = next_connection(&mut connections).await?;

    let closing = tokio::spawn({
        let transport = transport.clone();
        async move { transport.close().await }
    });
    let mut close_code = None;
    while let Some(Ok(message)) = server.ws.next().await {
        if let Message::Close(frame) = message {
            close_code = frame.map(|f| u16::from(f.code));
        }
    }
    closing.await?;

    assert_eq!(close_code, Some(1000));
    assert_eq!(next_message(&mut messages).await?, None);
    assert!(matches!(
        transport.state(),
        TransportState::Closed {
            code: Some(1000),
            ..
        }
    ));
    assert!(matches!(
        transport.write(vec![json!({})]).await,
        Err(ApiError::Closed)
    ));
    Ok(())
}

#[tokio::test]
async fn an_unparseable_line_ends_the_transport() -> anyhow::Result<()> {
    let (base, mut connections) = ws_server().await?;
    let (transport, mut messages) = IngressTransport::connect(fast_config(&base, "tok")).await?;
    let mut server = next_connection(&mut connections).await?;

    server.ws.send(Message::text("not json\n")).await?;

    assert_eq!(next_message(&mut messages).await?, None);
    match transport.closed().await {
        TransportState::Closed { code: None, reason } => assert!(reason.contains("unparseable")),
        other => anyhow::bail!("expected a framing failure, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn connect_fails_when_the_socket_never_opens() -> anyhow::Result<()> {
    // A port that was just free: nothing listens there.
    let base = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        format!("http://{}", listener.local_addr()?)
    };
    let mut config = fast_config(&base, "tok");
    config.reconnect_budget = Duration::from_millis(100);

    let result = IngressTransport::connect(config).await;

    assert!(matches!(result, Err(ApiError::WebSocket(_))), "{result:?}");
    Ok(())
}

/// A transport whose socket gives up at once (the fake server refuses upgrades), so only
/// its writer is exercised.
fn writer_only(server: &FakeServer) -> anyhow::Result<IngressTransport> {
    let mut config = fast_config(&server.base_url, "tok");
    config.reconnect_budget = Duration::ZERO;
    config.post_max_attempts = 3;
    Ok(IngressTransport::start(config)?.0)
}

#[tokio::test]
async fn writes_are_retried_after_server_errors() -> anyhow::Result<()> {
    let server = FakeServer::start(vec![Reply::new(503, ""), Reply::new(200, "{}")]).await?;
    let transport = writer_only(&server)?;

    transport.write(vec![json!({"type": "assistant"})]).await?;

    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].method, "POST");
    assert_eq!(
        sent[1].target,
        "/v1/session_ingress/session/cse_abcd/events"
    );
    assert_eq!(sent[1].header("authorization"), Some("Bearer tok"));
    assert_eq!(sent[1].header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&sent[1].body)?;
    assert_eq!(body, json!({"events": [{"type": "assistant"}]}));
    Ok(())
}

#[tokio::test]
async fn a_rejected_batch_is_dropped_without_retry() -> anyhow::Result<()> {
    let server = FakeServer::start(vec![Reply::new(400, ""), Reply::new(200, "")]).await?;
    let transport = writer_only(&server)?;

    let result = transport.write(vec![json!({"type": "assistant"})]).await;

    assert!(
        matches!(result, Err(ApiError::Status { status: 400, .. })),
        "{result:?}"
    );
    assert_eq!(server.requests().len(), 1);
    Ok(())
}

#[tokio::test]
async fn writes_give_up_after_the_configured_attempts() -> anyhow::Result<()> {
    let server = FakeServer::start(vec![Reply::new(429, ""); 5]).await?;
    let transport = writer_only(&server)?;

    let result = transport.write(vec![json!({})]).await;

    assert!(
        matches!(result, Err(ApiError::Retryable { status: 429, .. })),
        "{result:?}"
    );
    assert_eq!(server.requests().len(), 3);
    Ok(())
}

#[tokio::test]
async fn large_writes_are_split_into_batches_of_500() -> anyhow::Result<()> {
    let server = FakeServer::start(vec![Reply::new(200, ""), Reply::new(204, "")]).await?;
    let transport = writer_only(&server)?;
    let events: Vec<Value> = (0..501).map(|n| json!({"n": n})).collect();

    transport.write(events).await?;

    let sizes: Vec<usize> = server
        .requests()
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body)
                .map(|b| b["events"].as_array().map_or(0, Vec::len))
        })
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(sizes, vec![500, 1]);
    Ok(())
}
