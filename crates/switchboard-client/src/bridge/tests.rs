//! Tests of the env-less bridge against the routing fake server: the start sequence, the
//! credential refresh and transport rebuild, the echo filter, teardown and archive.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use super::*;
use crate::testing::ccr::{Answer, CcrServer, PATIENCE};
use crate::testing::Recorded;

const CREATE: &str = "/v1/code/sessions";
const BRIDGE: &str = "/v1/code/sessions/cse_abcd/bridge";
const WORKER: &str = "/v1/code/sessions/cse_abcd/worker";
const EVENTS: &str = "/v1/code/sessions/cse_abcd/worker/events";
const STREAM: &str = "/v1/code/sessions/cse_abcd/worker/events/stream";
const ARCHIVE: &str = "/v1/sessions/session_abcd/archive";

fn credentials(jwt: &str, epoch: u64, expires_in: u64) -> Answer {
    let body = json!({
        "worker_jwt": jwt, "expires_in": expires_in,
        // Never used: the configured base URL is authoritative.
        "api_base_url": "http://unused.invalid",
        "worker_epoch": epoch.to_string()
    });
    Answer::new(200, &body.to_string())
}

fn fast_config(server: &CcrServer) -> BridgeConfig {
    let mut config = BridgeConfig::new(&server.base_url, "user-key", "my title");
    config.retry = RetryPolicy {
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    config.refresh_retry_delay = Duration::from_millis(50);
    config.handover_flush_timeout = Duration::from_millis(300);
    config.worker.heartbeat_interval = Duration::from_secs(3600);
    config.worker.upload_base_delay = Duration::from_millis(5);
    config.worker.upload_max_delay = Duration::from_millis(20);
    config.worker.upload_max_jitter = Duration::ZERO;
    config.worker.stream_reconnect_base_delay = Duration::from_millis(10);
    config.worker.stream_reconnect_jitter = 0.0;
    config
}

fn script_session(server: &CcrServer, bridges: Vec<Answer>) {
    server.script(
        "POST",
        CREATE,
        vec![Answer::new(200, r#"{"session":{"id":"cse_abcd"}}"#)],
    );
    server.script("POST", BRIDGE, bridges);
}

async fn next(messages: &mut mpsc::Receiver<Value>) -> anyhow::Result<Option<Value>> {
    tokio::time::timeout(PATIENCE, messages.recv())
        .await
        .context("no message in time")
}

fn body(request: &Recorded) -> anyhow::Result<Value> {
    serde_json::from_str(&request.body).with_context(|| format!("body {:?}", request.body))
}

/// Every event payload posted, with the epoch of its POST, in order.
fn posted_events(server: &CcrServer) -> anyhow::Result<Vec<(u64, Value)>> {
    let mut events = Vec::new();
    for request in server.requests_to("POST", EVENTS) {
        let body = body(&request)?;
        let epoch = body["worker_epoch"].as_u64().context("an epoch")?;
        for event in body["events"].as_array().cloned().unwrap_or_default() {
            events.push((epoch, event["payload"].clone()));
        }
    }
    Ok(events)
}

async fn wait_for_state(
    bridge: &EnvLessBridge,
    done: impl Fn(&BridgeState) -> bool,
) -> anyhow::Result<BridgeState> {
    let mut states = bridge.state_changes();
    let state = tokio::time::timeout(PATIENCE, states.wait_for(|s| done(s)))
        .await
        .context("the bridge did not reach the state in time")??
        .clone();
    Ok(state)
}

#[test]
fn the_refresh_delay_keeps_the_buffer_and_the_floor() {
    let mut config = BridgeConfig::new("http://h", "k", "t");

    assert_eq!(config.refresh_delay(3600), Duration::from_secs(3300));
    assert_eq!(config.refresh_delay(330), Duration::from_secs(30));
    assert_eq!(config.refresh_delay(10), Duration::from_secs(30));
    config.refresh_buffer = Duration::from_secs(2);
    config.min_refresh_delay = Duration::ZERO;
    assert_eq!(config.refresh_delay(3), Duration::from_secs(1));
}

#[test]
fn compat_ids_swap_the_costume() {
    assert_eq!(compat_id("cse_abcd"), "session_abcd");
    assert_eq!(compat_id("cse_ab"), "session_ab");
    assert_eq!(compat_id("session_abcd"), "session_abcd");
}

#[tokio::test]
async fn start_creates_the_session_and_serves_it_on_the_configured_base() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(&server, vec![credentials("j1", 1, 3600)]);

    let (bridge, _messages) = EnvLessBridge::start(fast_config(&server)).await?;

    assert_eq!(bridge.session_id(), "cse_abcd");
    assert_eq!(bridge.compat_session_id(), "session_abcd");
    assert_eq!(bridge.worker_epoch(), Some(1));
    assert_eq!(bridge.state(), BridgeState::Connected { worker_epoch: 1 });
    let create = &server.requests_to("POST", CREATE)[0];
    assert_eq!(body(create)?, json!({"title": "my title", "bridge": {}}));
    assert_eq!(create.header("authorization"), Some("Bearer user-key"));
    let bridge_call = &server.requests_to("POST", BRIDGE)[0];
    assert_eq!(bridge_call.header("authorization"), Some("Bearer user-key"));
    let put = &server.requests_to("PUT", WORKER)[0];
    assert_eq!(put.header("authorization"), Some("Bearer j1"));
    assert_eq!(body(put)?["worker_epoch"], json!(1));
    bridge.teardown().await?;
    Ok(())
}

#[tokio::test]
async fn inbound_messages_skip_echoes_and_duplicates() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(&server, vec![credentials("j1", 1, 3600)]);
    let (bridge, mut messages) = EnvLessBridge::start(fast_config(&server)).await?;
    let mut stream = server.next_stream().await?;

    bridge.write_messages(vec![json!({"type": "assistant", "uuid": "mine"})])?;
    stream
        .client_event(1, "e1", &json!({"type": "assistant", "uuid": "mine"}))
        .await?;
    stream
        .client_event(2, "e2", &json!({"type": "user", "uuid": "theirs"}))
        .await?;
    stream
        .client_event(3, "e3", &json!({"type": "user", "uuid": "theirs"}))
        .await?;
    stream
        .client_event(4, "e4", &json!({"type": "control_response"}))
        .await?;

    assert_eq!(
        next(&mut messages).await?,
        Some(json!({"type": "user", "uuid": "theirs"}))
    );
    assert_eq!(
        next(&mut messages).await?,
        Some(json!({"type": "control_response"}))
    );
    assert_eq!(bridge.last_sequence_num(), Some(4));
    bridge.teardown().await?;
    assert_eq!(next(&mut messages).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_refresh_rebuilds_the_transport_without_losing_or_repeating_events() -> anyhow::Result<()>
{
    let server = CcrServer::start().await?;
    // The second /bridge answers slowly, so that writes land while the bridge rebuilds.
    script_session(
        &server,
        vec![
            credentials("j1", 1, 3),
            credentials("j2", 2, 3600).after(Duration::from_millis(300)),
        ],
    );
    let mut config = fast_config(&server);
    config.refresh_buffer = Duration::from_secs(2);
    config.min_refresh_delay = Duration::ZERO;
    let (bridge, mut messages) = EnvLessBridge::start(config).await?;
    let mut stream = server.next_stream().await?;
    stream
        .client_event(5, "e5", &json!({"type": "user", "n": 5}))
        .await?;
    next(&mut messages).await?;
    bridge.write_messages(vec![json!({"type": "assistant", "n": "before"})])?;
    bridge.report_state(WorkerStatus::Running, None)?;
    bridge.report_metadata(json!({"pending_action": {"tool_name": "Bash"}, "model": "m"}))?;

    wait_for_state(&bridge, |s| *s == BridgeState::Refreshing).await?;
    server.wait_for_count("POST", BRIDGE, 2).await?;
    bridge.write_messages(vec![json!({"type": "assistant", "n": "during"})])?;
    wait_for_state(&bridge, |s| {
        *s == BridgeState::Connected { worker_epoch: 2 }
    })
    .await?;
    bridge.write_messages(vec![json!({"type": "assistant", "n": "after"})])?;
    let mut resumed = server.next_stream().await?;
    resumed
        .client_event(6, "e6", &json!({"type": "user", "n": 6}))
        .await?;
    let inbound = next(&mut messages).await?;
    tokio::time::timeout(PATIENCE, bridge.flush()).await??;

    assert_eq!(inbound, Some(json!({"type": "user", "n": 6})));
    assert_eq!(
        resumed.request.target,
        format!("{STREAM}?from_sequence_num=5")
    );
    assert_eq!(resumed.request.header("last-event-id"), Some("5"));
    assert_eq!(resumed.request.header("authorization"), Some("Bearer j2"));
    let events: Vec<(u64, Value)> = posted_events(&server)?
        .into_iter()
        .map(|(epoch, payload)| (epoch, payload["n"].clone()))
        .collect();
    assert_eq!(
        events,
        vec![
            (1, json!("before")),
            (2, json!("during")),
            (2, json!("after")),
        ]
    );
    // The rebuilt worker starts idle without a pending action; both are reported again.
    let puts: Vec<Value> = server
        .requests_to("PUT", WORKER)
        .iter()
        .map(body)
        .collect::<anyhow::Result<_>>()?;
    let last = puts.last().context("a PUT")?;
    assert_eq!(
        *last,
        json!({
            "worker_epoch": 2,
            "worker_status": "running",
            "requires_action_details": null,
            "external_metadata": {"pending_action": {"tool_name": "Bash"}}
        })
    );
    bridge.teardown().await?;
    Ok(())
}

#[tokio::test]
async fn events_an_unhealthy_old_transport_kept_are_sent_by_the_new_one() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(
        &server,
        vec![credentials("j1", 1, 3), credentials("j2", 2, 3600)],
    );
    // The old worker's uploads fail until it is replaced.
    server.script("POST", EVENTS, vec![Answer::new(503, ""); 200]);
    let mut config = fast_config(&server);
    config.refresh_buffer = Duration::from_secs(2);
    config.min_refresh_delay = Duration::ZERO;
    config.worker.upload_base_delay = Duration::from_millis(20);
    config.worker.upload_max_delay = Duration::from_millis(20);
    let (bridge, _messages) = EnvLessBridge::start(config).await?;

    bridge.write_messages(vec![json!({"type": "assistant", "n": 1})])?;
    bridge.write_messages(vec![json!({"type": "assistant", "n": 2})])?;
    wait_for_state(&bridge, |s| {
        *s == BridgeState::Connected { worker_epoch: 2 }
    })
    .await?;
    // Let the scripted failures run out so the new transport's posts succeed.
    server.clear_script("POST", EVENTS);
    let flushed = tokio::time::timeout(PATIENCE, bridge.flush()).await;

    assert!(matches!(flushed, Ok(Ok(()))), "{flushed:?}");
    let accepted_before = server.requests_to("POST", EVENTS).len();
    assert!(accepted_before >= 3, "the old transport kept retrying");
    let epoch_two: Vec<Value> = posted_events(&server)?
        .into_iter()
        .filter(|(epoch, _)| *epoch == 2)
        .map(|(_, payload)| payload["n"].clone())
        .collect();
    assert_eq!(epoch_two.first(), Some(&json!(1)));
    assert!(epoch_two.contains(&json!(2)));
    bridge.teardown().await?;
    Ok(())
}

#[tokio::test]
async fn a_stream_401_fetches_new_credentials() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(
        &server,
        vec![credentials("j1", 1, 3600), credentials("j2", 2, 3600)],
    );
    server.script(
        "GET",
        STREAM,
        vec![Answer::new(401, "").after(Duration::from_millis(200))],
    );

    let (bridge, _messages) = EnvLessBridge::start(fast_config(&server)).await?;
    let state = wait_for_state(&bridge, |s| {
        *s == BridgeState::Connected { worker_epoch: 2 }
    })
    .await?;
    let stream = server.next_stream().await?;

    assert_eq!(state, BridgeState::Connected { worker_epoch: 2 });
    assert_eq!(stream.request.header("authorization"), Some("Bearer j2"));
    assert_eq!(server.requests_to("POST", BRIDGE).len(), 2);
    bridge.teardown().await?;
    Ok(())
}

#[tokio::test]
async fn a_takeover_by_another_worker_ends_the_bridge() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(&server, vec![credentials("j1", 1, 3600)]);
    server.script("POST", EVENTS, vec![Answer::new(409, "")]);
    let (bridge, mut messages) = EnvLessBridge::start(fast_config(&server)).await?;

    bridge.write_messages(vec![json!({"type": "assistant"})])?;
    let state = wait_for_state(&bridge, BridgeState::is_closed).await?;

    assert_eq!(
        state,
        BridgeState::Closed {
            end: BridgeEnd::Transport(CloseReason::Superseded)
        }
    );
    assert_eq!(next(&mut messages).await?, None);
    assert!(matches!(
        bridge.write_messages(vec![json!({"type": "x"})]),
        Err(ApiError::Closed)
    ));
    assert_eq!(server.requests_to("POST", BRIDGE).len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_failed_bridge_call_after_create_archives_the_session() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(&server, vec![Answer::new(404, "")]);

    let result = EnvLessBridge::start(fast_config(&server)).await;

    assert!(
        matches!(result, Err(ApiError::Fatal { status: 404, .. })),
        "{result:?}"
    );
    let archive = &server.requests_to("POST", ARCHIVE)[0];
    assert_eq!(
        archive.header("anthropic-beta"),
        Some("ccr-byoc-2025-07-29")
    );
    assert_eq!(archive.header("x-organization-uuid"), Some("self-hosted"));
    Ok(())
}

#[tokio::test]
async fn teardown_reports_idle_sends_a_result_and_archives() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(&server, vec![credentials("j1", 1, 3600)]);
    let (bridge, mut messages) = EnvLessBridge::start(fast_config(&server)).await?;
    let _stream = server.next_stream().await?;

    bridge.teardown().await?;
    bridge.teardown().await?;

    let requests = server.requests();
    let position = |method: &str, path: &str| {
        requests
            .iter()
            .rposition(|r| r.method == method && r.target == path)
    };
    let result = posted_events(&server)?;
    assert_eq!(result.len(), 1);
    assert_eq!(result[0].1["type"], json!("result"));
    assert_eq!(result[0].1["session_id"], json!("cse_abcd"));
    let last_put = server.requests_to("PUT", WORKER).pop().context("a PUT")?;
    assert_eq!(
        body(&last_put)?,
        json!({"worker_epoch": 1, "worker_status": "idle", "requires_action_details": null})
    );
    let archived = position("POST", ARCHIVE).context("an archive call")?;
    assert!(position("POST", EVENTS) < Some(archived));
    assert_eq!(server.requests_to("POST", ARCHIVE).len(), 1);
    assert_eq!(
        server.requests_to("POST", ARCHIVE)[0].header("authorization"),
        Some("Bearer user-key")
    );
    assert_eq!(next(&mut messages).await?, None);
    assert_eq!(
        bridge.state(),
        BridgeState::Closed {
            end: BridgeEnd::TornDown
        }
    );
    Ok(())
}

#[tokio::test]
async fn archive_is_retried_once_after_a_401_with_a_refreshed_token() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(&server, vec![credentials("j1", 1, 3600)]);
    server.script(
        "POST",
        ARCHIVE,
        vec![Answer::new(401, ""), Answer::new(409, "")],
    );
    let mut config = fast_config(&server);
    config.token =
        TokenSource::with_refresh("user-key", |_stale| async { Some("fresh-key".to_owned()) });
    let (bridge, _messages) = EnvLessBridge::start(config).await?;

    let archived = bridge.teardown().await;

    assert!(archived.is_ok(), "{archived:?}");
    let calls = server.requests_to("POST", ARCHIVE);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].header("authorization"), Some("Bearer fresh-key"));
    Ok(())
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_bridge() -> anyhow::Result<()> {
    let server = CcrServer::start().await?;
    script_session(&server, vec![credentials("j1", 1, 3600)]);
    let (bridge, mut messages) = EnvLessBridge::start(fast_config(&server)).await?;
    let _stream = server.next_stream().await?;

    drop(bridge);

    assert_eq!(next(&mut messages).await?, None);
    assert!(server.requests_to("POST", ARCHIVE).is_empty());
    Ok(())
}
