//! Tests of the viewer socket: URLs and message shapes as pure functions, and the
//! reconnect rules against small in-process WebSocket servers with shortened delays.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::WebSocketStream;

use super::*;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

/// The delay the tests use instead of 2 s.
const SHORT: Duration = Duration::from_millis(20);

type ServerSocket = WebSocketStream<TcpStream>;

/// One upgrade request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    authorization: Option<String>,
    version: Option<String>,
}

/// A WebSocket server that hands connection `n` to a handler and stops listening after
/// `max_connections`, so that later attempts are refused.
struct Fake {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start<F, Fut>(max_connections: usize, handler: F) -> anyhow::Result<Self>
    where
        F: Fn(usize, ServerSocket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            for n in 0..max_connections {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    // Tungstenite's `Callback` trait fixes the (large) error type.
                    #[allow(clippy::result_large_err)]
                    let record = |request: &Request, response: Response| {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        recorded.lock().unwrap().push(Seen {
                            target: request.uri().to_string(),
                            authorization: header("authorization"),
                            version: header("anthropic-version"),
                        });
                        Ok(response)
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, record).await {
                        handler(n, ws).await;
                    }
                });
            }
            // Dropping the listener here makes every later connection attempt fail.
        });
        Ok(Self { base_url, seen })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn config(&self) -> ViewerConfig {
        let mut config = ViewerConfig::new(&self.base_url, "session_abcd", "key");
        config.reconnect_delay = SHORT;
        config.reconnect_jitter = 0.0;
        config.session_not_found_delay = SHORT;
        config
    }
}

/// An event with a sequence number, as the server frames it.
fn event(seq: u64) -> Value {
    json!({"type": "assistant", "n": seq, "sequence_num": seq})
}

async fn send_events(ws: &mut ServerSocket, seqs: impl IntoIterator<Item = u64>) {
    for seq in seqs {
        let _ = ws.send(Message::text(event(seq).to_string())).await;
    }
}

/// Closes from the server side with `code` and waits for the client's answer.
async fn close_with(mut ws: ServerSocket, code: u16) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "test".into(),
    };
    let _ = ws.close(Some(frame)).await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// Keeps a connection open, reading until the client goes away.
async fn hold(mut ws: ServerSocket) {
    while let Some(Ok(_)) = ws.next().await {}
}

async fn next(events: &mut mpsc::Receiver<ViewerEvent>) -> anyhow::Result<ViewerEvent> {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .map_err(|_| anyhow::anyhow!("timed out waiting for a viewer event"))?
        .ok_or_else(|| anyhow::anyhow!("the event stream ended"))
}

/// Reads events until `Closed` and returns everything seen, `Closed` included.
async fn until_closed(
    events: &mut mpsc::Receiver<ViewerEvent>,
) -> anyhow::Result<Vec<ViewerEvent>> {
    let mut seen = Vec::new();
    loop {
        let event = next(events).await?;
        let done = matches!(event, ViewerEvent::Closed { .. });
        seen.push(event);
        if done {
            return Ok(seen);
        }
    }
}

fn sequence_numbers(events: &[ViewerEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            ViewerEvent::Message(m) => event_sequence(m),
            _ => None,
        })
        .collect()
}

fn reconnects(events: &[ViewerEvent]) -> Vec<(u32, Duration)> {
    events
        .iter()
        .filter_map(|e| match e {
            ViewerEvent::Reconnecting { attempt, delay } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect()
}

#[test]
fn subscribe_urls_switch_scheme_keep_the_prefix_and_add_the_cursor() -> anyhow::Result<()> {
    let plain = subscribe_url("http://127.0.0.1:8787", "session_abcd", None)?;
    let secure = subscribe_url("https://example.com/rc/", "cse_abcd", Some(42))?;

    assert_eq!(
        plain.as_str(),
        "ws://127.0.0.1:8787/v1/sessions/ws/session_abcd/subscribe"
    );
    assert_eq!(
        secure.as_str(),
        "wss://example.com/rc/v1/sessions/ws/cse_abcd/subscribe?from_sequence_num=42"
    );
    Ok(())
}

#[test]
fn subscribe_urls_reject_unsafe_ids_and_bad_bases() {
    assert!(matches!(
        subscribe_url("http://h", "a/../b", None),
        Err(ApiError::InvalidId {
            what: "session_id",
            ..
        })
    ));
    assert!(matches!(
        subscribe_url("ftp://h", "session_a", None),
        Err(ApiError::InvalidRequest(_))
    ));
    assert!(matches!(
        ViewerSocket::connect(ViewerConfig::new("not a url", "session_a", "k")),
        Err(ApiError::InvalidRequest(_))
    ));
}

#[test]
fn messages_have_the_shapes_of_the_protocol() {
    assert_eq!(
        user_message("u1", "hi"),
        json!({"type":"user","uuid":"u1","parent_tool_use_id":null,
               "message":{"role":"user","content":"hi"}})
    );
    assert_eq!(
        control_request("r1", json!({"subtype":"interrupt"})),
        json!({"type":"control_request","request_id":"r1","request":{"subtype":"interrupt"}})
    );
    assert_eq!(
        control_response("r2", allow_decision(json!({"command":"ls"}))),
        json!({"type":"control_response","response":{"subtype":"success","request_id":"r2",
               "response":{"behavior":"allow","updatedInput":{"command":"ls"}}}})
    );
    assert_eq!(
        control_response("r3", deny_decision("no")),
        json!({"type":"control_response","response":{"subtype":"success","request_id":"r3",
               "response":{"behavior":"deny","message":"no"}}})
    );
    assert_eq!(
        control_error("r4", "unsupported"),
        json!({"type":"control_response","response":{"subtype":"error","request_id":"r4",
               "error":"unsupported"}})
    );
}

#[tokio::test]
async fn a_reconnect_resumes_after_the_last_sequence_number_without_duplicates(
) -> anyhow::Result<()> {
    let fake = Fake::start(2, |n, mut ws| async move {
        if n == 0 {
            send_events(&mut ws, 1..=3).await;
            close_with(ws, 1001).await;
        } else {
            // The server repeats what overlaps the cursor; the viewer must drop it.
            send_events(&mut ws, 2..=5).await;
            hold(ws).await;
        }
    })
    .await?;
    let (viewer, mut events) = ViewerSocket::connect(fake.config())?;

    let mut seen = Vec::new();
    while sequence_numbers(&seen).last() != Some(&5) {
        seen.push(next(&mut events).await?);
    }

    assert_eq!(sequence_numbers(&seen), vec![1, 2, 3, 4, 5]);
    // The server went away with 1001, so the viewer came back at once.
    assert_eq!(reconnects(&seen), vec![(1, Duration::ZERO)]);
    assert_eq!(viewer.last_sequence_num(), Some(5));
    let requests = fake.seen();
    assert_eq!(requests[0].target, "/v1/sessions/ws/session_abcd/subscribe");
    assert_eq!(
        requests[1].target,
        "/v1/sessions/ws/session_abcd/subscribe?from_sequence_num=3"
    );
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer key"));
    assert_eq!(requests[0].version.as_deref(), Some("2023-06-01"));
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn a_configured_start_is_sent_and_older_events_are_dropped() -> anyhow::Result<()> {
    let fake = Fake::start(1, |_, mut ws| async move {
        send_events(&mut ws, [6, 7, 8]).await;
        hold(ws).await;
    })
    .await?;
    let (viewer, mut events) = ViewerSocket::connect(fake.config().resume_after(7))?;

    assert_eq!(next(&mut events).await?, ViewerEvent::Connected);
    assert_eq!(next(&mut events).await?, ViewerEvent::Message(event(8)));
    assert!(fake.seen()[0].target.ends_with("?from_sequence_num=7"));
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn close_code_4003_is_permanent() -> anyhow::Result<()> {
    let fake = Fake::start(5, |_, ws| close_with(ws, 4003)).await?;
    let (_viewer, mut events) = ViewerSocket::connect(fake.config())?;

    let seen = until_closed(&mut events).await?;

    assert_eq!(seen[0], ViewerEvent::Connected);
    assert!(
        matches!(
            &seen[1],
            ViewerEvent::Closed {
                code: Some(4003),
                ..
            }
        ),
        "{seen:?}"
    );
    tokio::time::sleep(SHORT * 5).await;
    assert_eq!(fake.seen().len(), 1, "no second attempt");
    Ok(())
}

#[tokio::test]
async fn close_code_4001_is_retried_three_times_with_growing_delays() -> anyhow::Result<()> {
    let fake = Fake::start(10, |_, ws| close_with(ws, 4001)).await?;
    let (_viewer, mut events) = ViewerSocket::connect(fake.config())?;

    let seen = until_closed(&mut events).await?;

    assert_eq!(
        reconnects(&seen),
        vec![(1, SHORT), (2, SHORT * 2), (3, SHORT * 3)]
    );
    assert!(
        matches!(
            seen.last(),
            Some(ViewerEvent::Closed {
                code: Some(4001),
                ..
            })
        ),
        "{seen:?}"
    );
    assert_eq!(fake.seen().len(), 4);
    Ok(())
}

#[tokio::test]
async fn reconnects_stop_after_the_configured_failed_attempts_in_a_row() -> anyhow::Result<()> {
    // The server takes one connection, drops it, and refuses every later attempt.
    let fake = Fake::start(1, |_, ws| close_with(ws, 1011)).await?;
    let mut config = fake.config();
    config.max_reconnect_attempts = 5;
    let (_viewer, mut events) = ViewerSocket::connect(config)?;

    let seen = until_closed(&mut events).await?;

    let attempts: Vec<u32> = reconnects(&seen).iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4, 5]);
    match seen.last() {
        Some(ViewerEvent::Closed { reason, .. }) => {
            assert!(reason.contains("gave up after 5"), "{reason}")
        }
        other => panic!("expected the end, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn the_attempt_count_starts_over_whenever_a_socket_opens() -> anyhow::Result<()> {
    // Seven sockets in a row open and are dropped at once; the eighth stays. More than
    // five losses must not end a viewer whose sockets keep opening.
    let fake = Fake::start(8, |n, ws| async move {
        if n < 7 {
            close_with(ws, 1011).await;
        } else {
            hold(ws).await;
        }
    })
    .await?;
    let (viewer, mut events) = ViewerSocket::connect(fake.config())?;

    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e| **e == ViewerEvent::Connected)
        .count()
        < 8
    {
        seen.push(next(&mut events).await?);
    }

    assert_eq!(reconnects(&seen), vec![(1, SHORT); 7]);
    assert!(viewer.is_connected());
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn a_first_connection_that_never_opens_is_final() -> anyhow::Result<()> {
    // Bind and drop a listener to find a port where nothing listens.
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let mut config = ViewerConfig::new(format!("http://127.0.0.1:{port}"), "session_a", "k");
    config.reconnect_delay = SHORT;
    let (_viewer, mut events) = ViewerSocket::connect(config)?;

    let seen = until_closed(&mut events).await?;

    assert_eq!(seen.len(), 1, "no reconnect: {seen:?}");
    assert!(matches!(&seen[0], ViewerEvent::Closed { code: None, .. }));
    Ok(())
}

#[tokio::test]
async fn close_cancels_a_pending_reconnect() -> anyhow::Result<()> {
    let fake = Fake::start(5, |_, ws| close_with(ws, 1011)).await?;
    let mut config = fake.config();
    config.reconnect_delay = Duration::from_secs(60);
    let (viewer, mut events) = ViewerSocket::connect(config)?;
    assert_eq!(next(&mut events).await?, ViewerEvent::Connected);
    assert!(matches!(
        next(&mut events).await?,
        ViewerEvent::Reconnecting { .. }
    ));

    tokio::time::timeout(PATIENCE, viewer.close()).await?;

    assert_eq!(
        next(&mut events).await?,
        ViewerEvent::Closed {
            code: Some(CLOSE_NORMAL),
            reason: "closed by the client".into()
        }
    );
    assert!(events.recv().await.is_none());
    assert!(matches!(
        viewer.send_user_message("late").await,
        Err(ApiError::Closed)
    ));
    Ok(())
}

#[tokio::test]
async fn reconnect_skips_a_pending_timer_and_resumes() -> anyhow::Result<()> {
    let fake = Fake::start(2, |n, mut ws| async move {
        if n == 0 {
            send_events(&mut ws, [1]).await;
            close_with(ws, 1011).await;
        } else {
            hold(ws).await;
        }
    })
    .await?;
    let mut config = fake.config();
    config.reconnect_delay = Duration::from_secs(60);
    let (viewer, mut events) = ViewerSocket::connect(config)?;
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(ViewerEvent::Reconnecting { .. })) {
        seen.push(next(&mut events).await?);
    }

    viewer.reconnect();

    assert_eq!(next(&mut events).await?, ViewerEvent::Connected);
    assert!(fake.seen()[1].target.ends_with("?from_sequence_num=1"));
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn messages_reach_the_server_only_while_connected() -> anyhow::Result<()> {
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<String>();
    let fake = Fake::start(1, move |_, mut ws| {
        let frames_tx = frames_tx.clone();
        async move {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    let _ = frames_tx.send(text.as_str().to_owned());
                }
            }
        }
    })
    .await?;
    let (viewer, mut events) = ViewerSocket::connect(fake.config())?;
    let early = viewer.send_user_message("too early").await;
    assert_eq!(next(&mut events).await?, ViewerEvent::Connected);

    let uuid = viewer.send_user_message("hello").await?;
    let request_id = viewer.interrupt().await?;
    viewer.allow("r1", json!({"command": "ls"})).await?;
    viewer.deny("r2", "not now").await?;

    assert!(matches!(early, Err(ApiError::WebSocket(_))), "{early:?}");
    let mut received = Vec::new();
    for _ in 0..4 {
        let frame = tokio::time::timeout(PATIENCE, frames.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("server gone"))?;
        received.push(serde_json::from_str::<Value>(&frame)?);
    }
    assert_eq!(received[0], user_message(&uuid, "hello"));
    assert_eq!(
        received[1],
        control_request(&request_id, json!({"subtype": "interrupt"}))
    );
    assert_eq!(received[2]["response"]["response"]["behavior"], "allow");
    assert_eq!(received[3]["response"]["response"]["message"], "not now");
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn unreadable_frames_and_keep_alives_do_not_end_the_stream() -> anyhow::Result<()> {
    let fake = Fake::start(1, |_, mut ws| async move {
        let _ = ws.send(Message::text("not json")).await;
        let _ = ws.send(Message::text(r#"{"type":"keep_alive"}"#)).await;
        let _ = ws
            .send(Message::text(
                r#"{"type":"error","error":{"message":"no"}}"#,
            ))
            .await;
        send_events(&mut ws, [1]).await;
        hold(ws).await;
    })
    .await?;
    let (viewer, mut events) = ViewerSocket::connect(fake.config())?;

    assert_eq!(next(&mut events).await?, ViewerEvent::Connected);
    assert!(matches!(next(&mut events).await?, ViewerEvent::Error(_)));
    // A frame without a sequence number (the server's error answer) passes through.
    assert!(matches!(
        next(&mut events).await?,
        ViewerEvent::Message(m) if m["type"] == "error"
    ));
    assert_eq!(next(&mut events).await?, ViewerEvent::Message(event(1)));
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn a_going_away_close_is_retried_at_once() -> anyhow::Result<()> {
    // A server restarting closes with 1001; the viewer does not wait its usual delay.
    let fake = Fake::start(2, |n, ws| async move {
        if n == 0 {
            close_with(ws, 1001).await;
        } else {
            hold(ws).await;
        }
    })
    .await?;
    let mut config = fake.config();
    config.reconnect_delay = Duration::from_secs(30);
    let (viewer, mut events) = ViewerSocket::connect(config)?;
    assert_eq!(next(&mut events).await?, ViewerEvent::Connected);
    let lost = tokio::time::Instant::now();

    let retry = next(&mut events).await?;
    let back = next(&mut events).await?;

    assert_eq!(
        retry,
        ViewerEvent::Reconnecting {
            attempt: 1,
            delay: Duration::ZERO
        }
    );
    assert_eq!(back, ViewerEvent::Connected);
    assert!(
        lost.elapsed() < Duration::from_secs(5),
        "{:?}",
        lost.elapsed()
    );
    viewer.close().await;
    Ok(())
}

#[test]
fn default_reconnect_delays_are_short_and_jittered() {
    let config = ViewerConfig::new("http://h", "session_a", "k");
    let delays: Vec<Duration> = (0..200)
        .map(|_| transient_delay(Some(1006), config.reconnect_delay, config.reconnect_jitter))
        .collect();

    // Back about a second after the server, never more than 1.25 s.
    assert!(delays
        .iter()
        .all(|d| *d >= Duration::from_millis(750) && *d <= Duration::from_millis(1250)));
    // Spread out, so the viewers of a restarted server do not all arrive at once.
    assert!(delays.iter().any(|d| *d != delays[0]), "{delays:?}");
    assert_eq!(
        transient_delay(Some(CLOSE_GOING_AWAY), config.reconnect_delay, 0.25),
        Duration::ZERO
    );
    // The 4001 rule keeps the official 2 s unit.
    assert_eq!(config.session_not_found_delay, Duration::from_secs(2));
    // About 10 s of patience by default.
    assert_eq!(config.max_reconnect_attempts, 10);
}
