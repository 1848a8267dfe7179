//! Tests of the worker transport against the routing fake server: startup, the stream
//! reader (framing, resume, liveness, permanent statuses), the uploaders (batching,
//! ordering, uuids, retries, coalescing) and the 409 rule.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use switchboard_proto::code::{DeliveryStatus, InternalEvent, WorkerStatus};
use tokio::sync::mpsc;

use super::*;
use crate::testing::ccr::{path_of, Answer, CcrServer, PATIENCE};

const SESSION: &str = "/v1/code/sessions/cse_abcd";

fn route(tail: &str) -> String {
    format!("{SESSION}{tail}")
}

/// Timings that make every retry and reconnect take milliseconds, and keep the heartbeat
/// out of the way unless a test wants it.
fn fast_timings() -> WorkerTimings {
    WorkerTimings {
        heartbeat_interval: Duration::from_secs(3600),
        get_attempts: 2,
        upload_base_delay: Duration::from_millis(5),
        upload_max_delay: Duration::from_millis(20),
        upload_max_jitter: Duration::ZERO,
        retry_after_min: Duration::from_millis(1),
        stream_reconnect_base_delay: Duration::from_millis(10),
        stream_reconnect_max_delay: Duration::from_millis(50),
        stream_reconnect_jitter: 0.0,
        ..WorkerTimings::default()
    }
}

fn config(server: &CcrServer, token: &str) -> anyhow::Result<WorkerConfig> {
    let mut config = WorkerConfig::new(format!("{}{SESSION}", server.base_url), token, 3)?;
    config.timings = fast_timings();
    Ok(config)
}

async fn next(messages: &mut mpsc::Receiver<Value>) -> anyhow::Result<Option<Value>> {
    tokio::time::timeout(PATIENCE, messages.recv())
        .await
        .context("no message in time")
}

fn body(request: &crate::testing::Recorded) -> anyhow::Result<Value> {
    serde_json::from_str(&request.body).with_context(|| format!("body {:?}", request.body))
}

/// A JWT (unsigned; the client never checks) whose `exp` is `exp`.
fn jwt(exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp},"sub":"w"}}"#));
    format!("{header}.{claims}.c2ln")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn session_urls_are_built_and_checked() -> anyhow::Result<()> {
    let url = worker_session_url("http://h:1/prefix/", "cse_abcd")?;
    let config = WorkerConfig::new(&url, "t", 1)?;

    assert_eq!(url, "http://h:1/prefix/v1/code/sessions/cse_abcd");
    assert_eq!(config.session_id, "cse_abcd");
    assert!(matches!(
        worker_session_url("http://h", "cse_a/b"),
        Err(ApiError::InvalidId { .. })
    ));
    assert!(matches!(
        WorkerConfig::new("ftp://h/v1/code/sessions/cse_x", "t", 1),
        Err(ApiError::InvalidRequest(_))
    ));
    assert!(matches!(
        WorkerConfig::new("http://h/v1/code/sessions/a.b", "t", 1),
        Err(ApiError::InvalidId { .. })
    ));
    Ok(())
}

#[test]
fn jwt_expiry_is_read_from_the_payload_only() {
    assert_eq!(jwt_expiry(&jwt(1234)), Some(1234));
    assert_eq!(
        jwt_expiry(&format!("{SESSION_TOKEN_PREFIX}{}", jwt(99))),
        Some(99)
    );
    assert_eq!(jwt_expiry("opaque-token"), None);
    assert_eq!(jwt_expiry("a.%%%.c"), None);
    assert!(token_expired(&jwt(1)));
    assert!(!token_expired(&jwt(now_secs() + 3600)));
    assert!(!token_expired("opaque-token"));
}

#[tokio::test]
async fn start_sends_the_initial_put_and_get_and_opens_the_stream() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "GET",
        &route("/worker"),
        vec![Answer::new(
            200,
            r#"{"worker":{"external_metadata":{"model":"m"}}}"#,
        )],
    );

    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;
    let stream = server.next_stream().await?;

    assert_eq!(transport.state(), WorkerState::Connected);
    assert_eq!(transport.external_metadata(), Some(json!({"model": "m"})));
    let put = &server.requests_to("PUT", &route("/worker"))[0];
    assert_eq!(
        body(put)?,
        json!({
            "worker_status": "idle", "worker_epoch": 3,
            "external_metadata": {"pending_action": null, "task_summary": null}
        })
    );
    for request in [put, &server.requests_to("GET", &route("/worker"))[0]] {
        assert_eq!(request.header("authorization"), Some("Bearer tok"));
        assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(request.header("user-agent"), Some(DEFAULT_USER_AGENT));
    }
    assert_eq!(put.header("content-type"), Some("application/json"));
    assert_eq!(stream.request.target, route("/worker/events/stream"));
    assert_eq!(stream.request.header("accept"), Some("text/event-stream"));
    assert_eq!(stream.request.header("authorization"), Some("Bearer tok"));
    assert_eq!(stream.request.header("last-event-id"), None);
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn the_heartbeat_names_the_session_and_epoch() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let mut config = config(&server, "tok")?;
    config.timings.heartbeat_interval = Duration::from_millis(20);

    let (transport, _messages) = WorkerTransport::start(config).await?;
    let beats = server
        .wait_for_count("POST", &route("/worker/heartbeat"), 2)
        .await?;

    assert_eq!(
        body(&beats[0])?,
        json!({"session_id": "cse_abcd", "worker_epoch": 3})
    );
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn stream_frames_are_parsed_forwarded_and_acknowledged() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let (transport, mut messages) = WorkerTransport::start(config(&server, "tok")?).await?;
    let mut stream = server.next_stream().await?;

    stream.send(": keepalive\n\n").await?;
    // CRLF line ends.
    stream
        .send("event: client_event\r\nid: 1\r\ndata: {\"event_id\":\"e1\",\"sequence_num\":1,\"payload\":{\"type\":\"user\",\"n\":1}}\r\n\r\n")
        .await?;
    // Data split over two lines, joined with a newline (valid JSON whitespace).
    stream
        .send("event: client_event\nid: 2\ndata: {\"event_id\":\"e2\",\ndata: \"payload\":{\"type\":\"control_response\",\"n\":2}}\n\n")
        .await?;
    // Frames that are not used: another event name, no event name, a payload without a
    // string type, unreadable data.
    stream
        .send("event: other\nid: 3\ndata: {\"event_id\":\"x\",\"payload\":{\"type\":\"user\"}}\n\n")
        .await?;
    stream
        .send("id: 4\ndata: {\"event_id\":\"y\",\"payload\":{\"type\":\"user\"}}\n\n")
        .await?;
    stream
        .send("event: client_event\nid: 5\ndata: {\"event_id\":\"z\",\"payload\":{\"type\":7}}\n\n")
        .await?;
    stream
        .send("event: client_event\nid: 6\ndata: not json\n\n")
        .await?;
    stream
        .client_event(7, "e7", &json!({"type": "user", "n": 7}))
        .await?;

    assert_eq!(
        next(&mut messages).await?,
        Some(json!({"type": "user", "n": 1}))
    );
    assert_eq!(
        next(&mut messages).await?,
        Some(json!({"type": "control_response", "n": 2}))
    );
    assert_eq!(
        next(&mut messages).await?,
        Some(json!({"type": "user", "n": 7}))
    );
    let deliveries = server
        .wait_for("three received updates", |requests| {
            requests
                .iter()
                .filter(|r| path_of(&r.target) == route("/worker/events/delivery"))
                .flat_map(|r| body(r).ok())
                .flat_map(|b| b["updates"].as_array().cloned().unwrap_or_default())
                .count()
                >= 3
        })
        .await?;
    let updates: Vec<Value> = deliveries
        .iter()
        .filter(|r| path_of(&r.target) == route("/worker/events/delivery"))
        .map(body)
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flat_map(|b| {
            assert_eq!(b["worker_epoch"], json!(3));
            b["updates"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    assert_eq!(
        updates,
        vec![
            json!({"event_id": "e1", "status": "received"}),
            json!({"event_id": "e2", "status": "received"}),
            json!({"event_id": "e7", "status": "received"}),
        ]
    );
    assert_eq!(transport.last_sequence_num(), Some(7));
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn a_dropped_stream_is_resumed_from_the_high_water_mark() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let (transport, mut messages) = WorkerTransport::start(config(&server, "tok")?).await?;
    let mut stream = server.next_stream().await?;

    stream
        .client_event(41, "a", &json!({"type": "user"}))
        .await?;
    next(&mut messages).await?;
    drop(stream);
    let mut resumed = server.next_stream().await?;
    resumed
        .client_event(42, "b", &json!({"type": "user", "after": true}))
        .await?;

    assert_eq!(
        resumed.request.target,
        route("/worker/events/stream?from_sequence_num=41")
    );
    assert_eq!(resumed.request.header("last-event-id"), Some("41"));
    assert_eq!(
        next(&mut messages).await?,
        Some(json!({"type": "user", "after": true}))
    );
    assert_eq!(transport.last_sequence_num(), Some(42));
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn a_resuming_transport_sends_the_mark_on_its_first_connection() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let config = config(&server, "tok")?.resuming_from(Some(7));

    let (transport, _messages) = WorkerTransport::start(config).await?;
    let stream = server.next_stream().await?;

    assert_eq!(
        stream.request.target,
        route("/worker/events/stream?from_sequence_num=7")
    );
    assert_eq!(stream.request.header("last-event-id"), Some("7"));
    assert_eq!(transport.last_sequence_num(), Some(7));
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn a_silent_stream_is_reopened_but_comments_keep_it_alive() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let mut config = config(&server, "tok")?;
    config.timings.stream_liveness_timeout = Duration::from_millis(150);
    let (transport, _messages) = WorkerTransport::start(config).await?;
    let mut stream = server.next_stream().await?;

    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.send(":\n").await?;
    }
    let streams_while_alive = server
        .requests_to("GET", &route("/worker/events/stream"))
        .len();
    let _reopened = server.next_stream().await?;

    assert_eq!(streams_while_alive, 1);
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn an_oversized_frame_drops_the_connection() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let mut config = config(&server, "tok")?;
    config.max_frame_bytes = 256;
    let (transport, _messages) = WorkerTransport::start(config).await?;
    let mut stream = server.next_stream().await?;

    stream
        .send(&format!("event: client_event\ndata: {}", "x".repeat(1000)))
        .await?;
    let _reopened = server.next_stream().await?;

    assert_eq!(transport.state(), WorkerState::Connected);
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn stream_server_errors_are_retried() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "GET",
        &route("/worker/events/stream"),
        vec![Answer::new(503, ""), Answer::new(500, "")],
    );

    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;
    let _stream = server.next_stream().await?;

    assert_eq!(
        server
            .requests_to("GET", &route("/worker/events/stream"))
            .len(),
        3
    );
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn a_stream_404_ends_the_transport_for_good() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    // Late enough that the start has finished.
    server.script(
        "GET",
        &route("/worker/events/stream"),
        vec![Answer::new(404, "").after(Duration::from_millis(200))],
    );
    let (transport, mut messages) = WorkerTransport::start(config(&server, "tok")?).await?;

    let reason = tokio::time::timeout(PATIENCE, transport.closed()).await?;

    assert_eq!(reason, CloseReason::StreamRejected { status: 404 });
    assert_eq!(next(&mut messages).await?, None);
    assert!(matches!(
        transport.write(vec![json!({"type": "x"})]),
        Err(ApiError::Closed)
    ));
    Ok(())
}

#[tokio::test]
async fn a_stream_gives_up_after_its_budget() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "GET",
        &route("/worker/events/stream"),
        vec![Answer::new(502, ""); 50],
    );
    let mut config = config(&server, "tok")?;
    config.timings.stream_reconnect_budget = Duration::from_millis(100);
    let (transport, _messages) = WorkerTransport::start(config).await?;

    let reason = tokio::time::timeout(PATIENCE, transport.closed()).await?;

    assert!(
        matches!(reason, CloseReason::StreamGaveUp { .. }),
        "{reason:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_409_on_an_event_post_supersedes_the_whole_transport() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "POST",
        &route("/worker/events"),
        vec![Answer::new(409, r#"{"error":{"type":"conflict_error"}}"#)],
    );
    let (transport, mut messages) = WorkerTransport::start(config(&server, "tok")?).await?;
    let _stream = server.next_stream().await?;

    transport.write(vec![json!({"type": "assistant"})])?;
    let flushed = transport.flush().await;
    let reason = tokio::time::timeout(PATIENCE, transport.closed()).await?;

    assert!(matches!(flushed, Err(ApiError::Superseded)), "{flushed:?}");
    assert_eq!(reason, CloseReason::Superseded);
    assert_eq!(
        transport.state(),
        WorkerState::Closed {
            reason: CloseReason::Superseded
        }
    );
    assert_eq!(next(&mut messages).await?, None);
    assert!(matches!(
        transport.write(vec![json!({"type": "x"})]),
        Err(ApiError::Superseded)
    ));
    assert!(matches!(
        transport.report_state(WorkerStatus::Idle, None),
        Err(ApiError::Superseded)
    ));
    // The unsent event is kept for a successor.
    assert_eq!(transport.take_unsent().events.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_409_on_the_initial_put_fails_the_start() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script("PUT", &route("/worker"), vec![Answer::new(409, "")]);

    let result = WorkerTransport::start(config(&server, "tok")?).await;

    assert!(matches!(result, Err(ApiError::Superseded)), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn a_failed_initial_put_fails_the_start_without_waiting_for_get() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script("PUT", &route("/worker"), vec![Answer::new(500, "")]);
    server.script("GET", &route("/worker"), vec![Answer::new(500, ""); 20]);
    let mut config = config(&server, "tok")?;
    config.timings.get_attempts = 20;
    config.timings.upload_base_delay = Duration::from_secs(10);

    let started = Instant::now();
    let result = WorkerTransport::start(config).await;

    assert!(
        matches!(result, Err(ApiError::Retryable { status: 500, .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn a_401_with_an_expired_jwt_counts_as_superseded_at_once() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script("POST", &route("/worker/events"), vec![Answer::new(401, "")]);
    let (transport, _messages) = WorkerTransport::start(config(&server, &jwt(1))?).await?;

    transport.write(vec![json!({"type": "assistant"})])?;
    let reason = tokio::time::timeout(PATIENCE, transport.closed()).await?;

    assert_eq!(reason, CloseReason::Superseded);
    assert_eq!(
        server.requests_to("POST", &route("/worker/events")).len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn repeated_auth_failures_count_as_superseded() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "POST",
        &route("/worker/events"),
        vec![Answer::new(403, ""); 10],
    );
    let mut config = config(&server, &jwt(now_secs() + 3600))?;
    config.timings.auth_failure_threshold = 3;
    let (transport, _messages) = WorkerTransport::start(config).await?;

    transport.write(vec![json!({"type": "assistant"})])?;
    let reason = tokio::time::timeout(PATIENCE, transport.closed()).await?;

    assert_eq!(reason, CloseReason::Superseded);
    assert_eq!(
        server.requests_to("POST", &route("/worker/events")).len(),
        3
    );
    Ok(())
}

#[tokio::test]
async fn events_go_in_order_in_batches_of_at_most_100_with_uuids() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;
    let events: Vec<Value> = (0..250)
        .map(|n| json!({"type": "assistant", "n": n}))
        .collect();

    transport.write(events)?;
    tokio::time::timeout(PATIENCE, transport.flush()).await??;

    let posts = server.requests_to("POST", &route("/worker/events"));
    let bodies: Vec<Value> = posts.iter().map(body).collect::<anyhow::Result<_>>()?;
    let sizes: Vec<usize> = bodies
        .iter()
        .map(|b| b["events"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![100, 100, 50]);
    let order: Vec<i64> = bodies
        .iter()
        .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            assert!(
                uuid::Uuid::parse_str(e["payload"]["uuid"].as_str().unwrap_or_default()).is_ok()
            );
            assert!(e.get("ephemeral").is_none());
            e["payload"]["n"].as_i64().unwrap_or(-1)
        })
        .collect();
    assert_eq!(order, (0..250).collect::<Vec<i64>>());
    assert!(bodies.iter().all(|b| b["worker_epoch"] == json!(3)));
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn existing_uuids_are_kept_and_stream_events_are_ephemeral() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;

    transport.write(vec![
        json!({"type": "user", "uuid": "keep-me"}),
        json!({"type": "stream_event", "event": {}}),
    ])?;
    tokio::time::timeout(PATIENCE, transport.flush()).await??;
    let rejected = transport.write(vec![json!({"type": "a"}), json!("not an object")]);

    let sent = body(&server.requests_to("POST", &route("/worker/events"))[0])?;
    assert_eq!(
        sent["events"][0],
        json!({"payload": {"type": "user", "uuid": "keep-me"}})
    );
    assert_eq!(sent["events"][1]["ephemeral"], json!(true));
    assert!(sent["events"][1]["payload"]["uuid"].is_string());
    assert!(matches!(rejected, Err(ApiError::InvalidRequest(_))));
    assert_eq!(
        server.requests_to("POST", &route("/worker/events")).len(),
        1
    );
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn uploads_wait_for_retry_after_on_429() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "POST",
        &route("/worker/events"),
        vec![Answer::new(429, "").header("retry-after", "1")],
    );
    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;

    let started = Instant::now();
    transport.write(vec![json!({"type": "assistant"})])?;
    tokio::time::timeout(PATIENCE, transport.flush()).await??;

    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.requests_to("POST", &route("/worker/events")).len(),
        2
    );
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn retry_after_is_clamped_to_the_maximum() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "POST",
        &route("/worker/events"),
        vec![Answer::new(429, "").header("retry-after", "100")],
    );
    let mut config = config(&server, "tok")?;
    config.timings.retry_after_max = Duration::from_millis(200);
    let (transport, _messages) = WorkerTransport::start(config).await?;

    let started = Instant::now();
    transport.write(vec![json!({"type": "assistant"})])?;
    tokio::time::timeout(PATIENCE, transport.flush()).await??;

    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(190) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn state_reports_are_coalesced_while_one_is_in_flight() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "PUT",
        &route("/worker"),
        vec![Answer::ok(), Answer::ok().after(Duration::from_millis(300))],
    );
    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;

    transport.report_state(WorkerStatus::Running, None)?;
    server.wait_for_count("PUT", &route("/worker"), 2).await?;
    transport.report_metadata(json!({"a": 1, "pending_action": {"tool_name": "Bash"}}))?;
    transport.report_state(
        WorkerStatus::RequiresAction,
        Some(json!({"tool_name": "Bash"})),
    )?;
    transport.report_metadata(json!({"a": null, "b": 2}))?;
    transport.report_internal_metadata(json!({"cumulative_cost_usd": 0.5}))?;
    tokio::time::timeout(PATIENCE, transport.flush()).await??;

    let puts: Vec<Value> = server
        .requests_to("PUT", &route("/worker"))
        .iter()
        .map(body)
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(puts.len(), 3);
    assert_eq!(
        puts[1],
        json!({"worker_epoch": 3, "worker_status": "running", "requires_action_details": null})
    );
    assert_eq!(
        puts[2],
        json!({
            "worker_epoch": 3,
            "worker_status": "requires_action",
            "requires_action_details": {"tool_name": "Bash"},
            "external_metadata": {"a": null, "b": 2, "pending_action": {"tool_name": "Bash"}},
            "internal_metadata": {"cumulative_cost_usd": 0.5}
        })
    );
    assert!(transport.report_metadata(json!([1])).is_err());
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_state_put_is_retried_merged_under_newer_reports() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "PUT",
        &route("/worker"),
        vec![
            Answer::ok(),
            Answer::new(500, "").after(Duration::from_millis(200)),
        ],
    );
    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;

    transport.report_metadata(json!({"model": "m1", "task_summary": "x"}))?;
    server.wait_for_count("PUT", &route("/worker"), 2).await?;
    transport.report_metadata(json!({"model": "m2"}))?;
    tokio::time::timeout(PATIENCE, transport.flush()).await??;

    let puts = server.requests_to("PUT", &route("/worker"));
    assert_eq!(puts.len(), 3);
    assert_eq!(
        body(&puts[2])?,
        json!({"worker_epoch": 3, "external_metadata": {"model": "m2", "task_summary": "x"}})
    );
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn delivery_updates_go_in_batches_of_at_most_64() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "POST",
        &route("/worker/events/delivery"),
        vec![Answer::ok().after(Duration::from_millis(200))],
    );
    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;

    transport.report_delivery("first", DeliveryStatus::Processing)?;
    server
        .wait_for_count("POST", &route("/worker/events/delivery"), 1)
        .await?;
    for n in 0..130 {
        transport.report_delivery(format!("u{n}"), DeliveryStatus::Processed)?;
    }
    tokio::time::timeout(PATIENCE, transport.flush()).await??;

    let bodies: Vec<Value> = server
        .requests_to("POST", &route("/worker/events/delivery"))
        .iter()
        .map(body)
        .collect::<anyhow::Result<_>>()?;
    let sizes: Vec<usize> = bodies
        .iter()
        .map(|b| b["updates"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![1, 64, 64, 2]);
    assert_eq!(
        bodies[0],
        json!({"worker_epoch": 3, "updates": [{"event_id": "first", "status": "processing"}]})
    );
    assert_eq!(bodies[3]["updates"][1]["event_id"], json!("u129"));
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn internal_events_are_posted_with_their_flags() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let (transport, _messages) = WorkerTransport::start(config(&server, "tok")?).await?;

    transport
        .write_internal(vec![
            InternalEvent {
                payload: json!({"type": "user", "uuid": "u1"}),
                is_compaction: false,
                agent_id: None,
            },
            InternalEvent {
                payload: json!({"type": "summary"}),
                is_compaction: true,
                agent_id: Some("agent-1".into()),
            },
        ])
        .await?;
    tokio::time::timeout(PATIENCE, transport.flush()).await??;

    let sent = body(&server.requests_to("POST", &route("/worker/internal-events"))[0])?;
    assert_eq!(sent["worker_epoch"], json!(3));
    assert_eq!(
        sent["events"][0],
        json!({"payload": {"type": "user", "uuid": "u1"}})
    );
    assert_eq!(sent["events"][1]["is_compaction"], json!(true));
    assert_eq!(sent["events"][1]["agent_id"], json!("agent-1"));
    assert!(sent["events"][1]["payload"]["uuid"].is_string());
    transport.close().await;
    Ok(())
}

#[tokio::test]
async fn close_ends_the_receiver_and_refuses_writes() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let (transport, mut messages) = WorkerTransport::start(config(&server, "tok")?).await?;
    let _stream = server.next_stream().await?;

    transport.close().await;

    assert_eq!(next(&mut messages).await?, None);
    assert_eq!(
        transport.state(),
        WorkerState::Closed {
            reason: CloseReason::ClosedByClient
        }
    );
    assert!(matches!(
        transport.write(vec![json!({"type": "x"})]),
        Err(ApiError::Closed)
    ));
    assert!(matches!(transport.flush().await, Ok(())));
    Ok(())
}

#[tokio::test]
async fn register_worker_returns_the_bumped_epoch() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    server.script(
        "POST",
        &route("/worker/register"),
        vec![
            Answer::new(200, r#"{"worker_epoch":"5"}"#),
            Answer::new(200, "{}"),
        ],
    );
    let session_url = format!("{}{SESSION}", server.base_url);

    let epoch = register_worker(&session_url, "ingress").await?;
    let malformed = register_worker(&session_url, "ingress").await;

    assert_eq!(epoch, 5);
    assert!(
        matches!(malformed, Err(ApiError::Decode(_))),
        "{malformed:?}"
    );
    let sent = &server.requests_to("POST", &route("/worker/register"))[0];
    assert_eq!(sent.body, "{}");
    assert_eq!(sent.header("authorization"), Some("Bearer ingress"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    Ok(())
}

#[tokio::test]
async fn a_stream_the_server_ended_is_reopened_at_once() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    let mut config = config(&server, "tok")?;
    // A backoff that a test would notice: only an immediate retry passes.
    config.timings.stream_reconnect_base_delay = Duration::from_secs(60);
    config.timings.stream_reconnect_max_delay = Duration::from_secs(60);
    let (transport, _messages) = WorkerTransport::start(config).await?;
    let stream = server.next_stream().await?;

    // A server going away ends its streams cleanly.
    drop(stream);
    let reopened = server.next_stream().await;

    assert!(reopened.is_ok(), "the stream was not reopened at once");
    transport.close().await;
    Ok(())
}

#[test]
fn default_backoffs_bring_a_worker_back_within_seconds() {
    let timings = WorkerTimings::default();
    for attempt in 0..40 {
        let stream = exponential(
            attempt,
            timings.stream_reconnect_base_delay,
            timings.stream_reconnect_max_delay,
        )
        .mul_f64(1.0 + timings.stream_reconnect_jitter);
        let upload = exponential(attempt, timings.upload_base_delay, timings.upload_max_delay)
            + timings.upload_max_jitter;
        assert!(
            stream <= Duration::from_millis(2500),
            "{attempt}: {stream:?}"
        );
        assert!(
            upload <= Duration::from_millis(2500),
            "{attempt}: {upload:?}"
        );
    }
    assert_eq!(timings.stream_reconnect_budget, Duration::from_secs(600));
}
