//! `switchboard_client::ViewerSocket` against the real viewer WebSocket (docs/PROTOCOL.md
//! §13.1): history then live events, resumption without gaps or duplicates, permanent
//! refusals, and messages from the viewer reaching the worker once.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_client::{IngressTransport, ViewerConfig, ViewerEvent, ViewerSocket};
use switchboard_proto::sessions::event_sequence;
use tokio::sync::mpsc;

use crate::common::*;

/// The delay the tests use instead of the official 2 s.
const SHORT: Duration = Duration::from_millis(50);

fn viewer_config(server: &TestServer, session_id: &str, key: &str) -> ViewerConfig {
    let mut config = ViewerConfig::new(server.url(), session_id, key.to_owned());
    config.reconnect_delay = SHORT;
    config.session_not_found_delay = SHORT;
    config
}

fn assistant(uuid: &str) -> Value {
    json!({
        "type": "assistant",
        "uuid": uuid,
        "message": {"role": "assistant", "content": [{"type": "text", "text": uuid}]},
    })
}

async fn next_event(events: &mut mpsc::Receiver<ViewerEvent>) -> anyhow::Result<ViewerEvent> {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .map_err(|_| anyhow::anyhow!("timed out waiting for a viewer event"))?
        .ok_or_else(|| anyhow::anyhow!("the viewer's events ended"))
}

/// The next message from the session, skipping connection events.
async fn next_message(events: &mut mpsc::Receiver<ViewerEvent>) -> anyhow::Result<Value> {
    loop {
        match next_event(events).await? {
            ViewerEvent::Message(message) => return Ok(message),
            ViewerEvent::Closed { code, reason } => {
                anyhow::bail!("the viewer closed: {code:?} {reason}")
            }
            _ => {}
        }
    }
}

/// The next message of type `kind`.
async fn next_of_type(
    events: &mut mpsc::Receiver<ViewerEvent>,
    kind: &str,
) -> anyhow::Result<Value> {
    loop {
        let message = next_message(events).await?;
        if message["type"] == kind {
            return Ok(message);
        }
    }
}

/// A worker attached to a freshly dispatched session, and the session's id.
async fn worker(
    server: &TestServer,
) -> anyhow::Result<(String, IngressTransport, mpsc::Receiver<Value>)> {
    let d = dispatch(server).await?;
    let (worker, inbound) =
        IngressTransport::connect(ingress_config(server, &d.work.data.id, &d.ingress_token))
            .await?;
    Ok((d.session_id, worker, inbound))
}

#[tokio::test]
async fn the_viewer_gets_the_history_then_live_events_in_order() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (session_id, worker, _inbound) = worker(&server).await?;
    worker
        .write(vec![assistant("a1"), assistant("a2"), assistant("a3")])
        .await?;

    let (viewer, mut events) =
        ViewerSocket::connect(viewer_config(&server, &session_id, &server.key))?;
    let mut history = Vec::new();
    for _ in 0..3 {
        history.push(next_of_type(&mut events, "assistant").await?);
    }
    worker.write(vec![assistant("a4")]).await?;
    let live = next_of_type(&mut events, "assistant").await?;

    let uuids: Vec<&str> = history
        .iter()
        .map(|m| m["uuid"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(uuids, ["a1", "a2", "a3"]);
    assert_eq!(live["uuid"], "a4");
    let seqs: Vec<u64> = history.iter().filter_map(event_sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(event_sequence(&live) > seqs.last().copied());
    assert_eq!(viewer.last_sequence_num(), event_sequence(&live));
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn a_reconnect_mid_stream_leaves_no_gap_and_no_duplicate() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (session_id, worker, _inbound) = worker(&server).await?;
    let (viewer, mut events) =
        ViewerSocket::connect(viewer_config(&server, &session_id, &server.key))?;
    assert_eq!(next_event(&mut events).await?, ViewerEvent::Connected);

    // The worker writes while the viewer drops its socket twice and resumes.
    let writer = {
        let worker = worker.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                worker.write(vec![assistant(&format!("m{i}"))]).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut seen = Vec::new();
    let mut connects = 0;
    while seen.len() < 40 {
        match next_event(&mut events).await? {
            ViewerEvent::Message(m) if m["type"] == "assistant" => {
                seen.push(m);
                if seen.len() == 10 || seen.len() == 25 {
                    viewer.reconnect();
                }
            }
            ViewerEvent::Connected => connects += 1,
            ViewerEvent::Closed { code, reason } => anyhow::bail!("closed: {code:?} {reason}"),
            _ => {}
        }
    }
    writer.await??;

    let uuids: Vec<String> = seen
        .iter()
        .map(|m| m["uuid"].as_str().unwrap_or("").to_owned())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(uuids, expected, "every message once, in order");
    let seqs: Vec<u64> = seen.iter().filter_map(event_sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(connects, 2, "the viewer reconnected twice");
    let nothing = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let ViewerEvent::Message(m) = next_event(&mut events).await? {
                return anyhow::Ok(m);
            }
        }
    })
    .await;
    assert!(nothing.is_err(), "nothing repeats afterwards: {nothing:?}");
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn another_owners_key_is_refused_for_good_with_4003() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (session_id, _worker, _inbound) = worker(&server).await?;
    let bob = server.key_for("bob").await?;
    let (_viewer, mut events) = ViewerSocket::connect(viewer_config(&server, &session_id, &bob))?;

    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut events).await?;
        let done = matches!(event, ViewerEvent::Closed { .. });
        seen.push(event);
        if done {
            break;
        }
    }

    assert!(
        matches!(
            seen.last(),
            Some(ViewerEvent::Closed {
                code: Some(4003),
                ..
            })
        ),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ViewerEvent::Reconnecting { .. })),
        "no retry: {seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, ViewerEvent::Message(_))),
        "bob sees nothing: {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_session_is_retried_three_times_then_given_up() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (_viewer, mut events) =
        ViewerSocket::connect(viewer_config(&server, "session_doesnotexist", &server.key))?;

    let mut attempts = Vec::new();
    let code = loop {
        match next_event(&mut events).await? {
            ViewerEvent::Reconnecting { attempt, .. } => attempts.push(attempt),
            ViewerEvent::Closed { code, .. } => break code,
            _ => {}
        }
    };

    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(code, Some(4001));
    Ok(())
}

#[tokio::test]
async fn prompts_and_answers_from_the_viewer_reach_the_worker_exactly_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (session_id, worker, mut inbound) = worker(&server).await?;
    let (viewer, mut events) =
        ViewerSocket::connect(viewer_config(&server, &session_id, &server.key))?;
    assert_eq!(next_event(&mut events).await?, ViewerEvent::Connected);

    let uuid = viewer.send_user_message("fix the bug").await?;
    let prompt = next(&mut inbound).await?;
    // The viewer sees its own prompt once, as an event of the session.
    let echoed = next_of_type(&mut events, "user").await?;

    // The worker asks for permission; the viewer allows it with the request's input.
    let input = json!({"command": "npm test"});
    worker
        .write(vec![json!({
            "type": "control_request",
            "request_id": "perm-1",
            "request": {"subtype": "can_use_tool", "tool_name": "Bash", "input": input,
                        "tool_use_id": "toolu_1"},
        })])
        .await?;
    let asked = next_of_type(&mut events, "control_request").await?;
    viewer
        .allow(
            asked["request_id"].as_str().unwrap_or_default(),
            asked["request"]["input"].clone(),
        )
        .await?;
    let answer = next(&mut inbound).await?;
    let interrupt_id = viewer.interrupt().await?;
    let interrupt = next(&mut inbound).await?;

    assert_eq!(prompt["type"], "user");
    assert_eq!(prompt["uuid"], uuid.as_str());
    assert_eq!(prompt["message"]["content"], "fix the bug");
    assert_eq!(echoed["uuid"], uuid.as_str());
    assert_eq!(answer["type"], "control_response");
    assert_eq!(answer["response"]["request_id"], "perm-1");
    assert_eq!(answer["response"]["response"]["behavior"], "allow");
    assert_eq!(answer["response"]["response"]["updatedInput"], input);
    assert_eq!(interrupt["request_id"], interrupt_id.as_str());
    assert_eq!(interrupt["request"]["subtype"], "interrupt");

    // A reconnecting viewer does not send anything again.
    viewer.reconnect();
    let nothing = tokio::time::timeout(Duration::from_millis(300), inbound.recv()).await;
    assert!(
        nothing.is_err(),
        "nothing else reaches the worker: {nothing:?}"
    );
    viewer.close().await;
    Ok(())
}

#[tokio::test]
async fn a_refused_message_comes_back_as_an_error_frame() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (session_id, _worker, _inbound) = worker(&server).await?;
    let (viewer, mut events) =
        ViewerSocket::connect(viewer_config(&server, &session_id, &server.key))?;
    assert_eq!(next_event(&mut events).await?, ViewerEvent::Connected);

    viewer
        .send_message(json!({"type": "assistant", "message": {}}))
        .await?;
    let error = next_of_type(&mut events, "error").await?;

    assert!(error["error"]["message"].is_string(), "{error}");
    assert!(viewer.is_connected(), "the socket stays open");
    viewer.close().await;
    Ok(())
}
