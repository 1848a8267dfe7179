//! The standalone environment flow (`claude remote-control`), end to end.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_client::{HistoryQuery, IngressTransport};
use switchboard_proto::sessions::CreateSessionRequest;

use crate::common::*;

#[tokio::test]
async fn the_standalone_flow_runs_from_register_to_deregister() -> anyhow::Result<()> {
    // Arrange: a server, a bridge and a viewer.
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let viewer = server.sessions();

    // Register, create a session on the environment, get its work.
    let env = bridge.register_environment(&registration()).await?;
    let session = viewer
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            use_code_sessions: Some(false),
            ..Default::default()
        })
        .await?;
    assert!(session.id.starts_with("session_"));
    assert_eq!(session.machine_name.as_deref(), Some("test-host"));
    assert_eq!(session.directory.as_deref(), Some("/work/project"));
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, Some(5_000))
        .await?
        .expect("work for the new session");
    assert_eq!(work.data.kind, "session");
    assert_eq!(
        work.data.id.strip_prefix("cse_"),
        session.id.strip_prefix("session_")
    );
    let secret = secret_of(&work);
    assert_eq!(secret.version, 1);
    assert_eq!(secret.api_base_url, server.url());
    assert!(!secret.use_code_sessions);
    bridge
        .acknowledge_work(&env.environment_id, &work.id, &secret.session_ingress_token)
        .await?;

    // The worker connects with the ingress token, on the session id as delivered.
    let config = ingress_config(&server, &work.data.id, &secret.session_ingress_token);
    let (worker, mut inbound) = IngressTransport::connect(config).await?;

    // A prompt injected by the viewer reaches the worker, exactly as sent.
    let hello = prompt("hello");
    viewer.send_events(&session.id, vec![hello.clone()]).await?;
    let received = next(&mut inbound).await?;
    assert_eq!(received, hello);

    // The worker's writes reach history, in order, after the prompt.
    let assistant = json!({"type":"assistant","uuid":"a-1","message":{"role":"assistant","content":[{"type":"text","text":"hi"}]}});
    let result = json!({"type":"result","subtype":"success","uuid":"r-1","is_error":false});
    worker
        .write(vec![assistant.clone(), json!({"type":"keep_alive"})])
        .await?;
    worker.write(vec![result.clone()]).await?;
    let history = viewer.history(&session.id, HistoryQuery::default()).await?;
    let kinds: Vec<&str> = history
        .data
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["user", "assistant", "result"]);
    assert_eq!(history.data[1]["message"], assistant["message"]);
    let seqs: Vec<u64> = history
        .data
        .iter()
        .map(|e| e["sequence_num"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let status = viewer.get_session(&session.id).await?;
    assert_eq!(status.session_status, "idle");
    assert!(status.worker_connected);

    // Stop (twice: it is idempotent), archive (then 409, which the client takes as done),
    // deregister. Archiving ends the worker's stream for good.
    bridge
        .stop_work(&env.environment_id, &work.id, false)
        .await?;
    bridge
        .stop_work(&env.environment_id, &work.id, false)
        .await?;
    bridge.archive_session(&session.id).await?;
    let closed = tokio::time::timeout(Duration::from_secs(5), worker.closed()).await?;
    assert_eq!(
        closed,
        switchboard_client::TransportState::Closed {
            code: Some(4001),
            reason: "session archived".into()
        }
    );
    bridge.archive_session(&session.id).await?;
    let again = server
        .http()
        .post(format!(
            "{}/v1/sessions/{}/archive",
            server.url(),
            session.id
        ))
        .bearer_auth(&server.key)
        .send()
        .await?;
    assert_eq!(again.status(), 409);
    bridge.deregister_environment(&env.environment_id).await?;
    let gone = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, None)
        .await;
    assert_eq!(gone.unwrap_err().status(), Some(404));
    Ok(())
}

#[tokio::test]
async fn a_waiting_poll_returns_the_moment_work_is_queued() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| o.poll_timeout = Duration::from_secs(8)).await?;
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;

    let poller = {
        let bridge = bridge.clone();
        let env = env.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let work = bridge
                .poll_for_work(&env.environment_id, &env.environment_secret, None)
                .await;
            (work, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created = Instant::now();
    server
        .sessions()
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            ..Default::default()
        })
        .await?;
    let (work, waited) = poller.await?;
    assert!(work?.is_some(), "the poll returns the new work");
    // It returned at once, not at the 8 s poll timeout.
    assert!(
        created.elapsed() < Duration::from_secs(2),
        "woke after {:?}",
        created.elapsed()
    );
    assert!(waited >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn an_empty_poll_answers_no_work_before_the_client_gives_up() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| o.poll_timeout = Duration::from_millis(300)).await?;
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    let started = Instant::now();
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, None)
        .await?;
    assert!(work.is_none());
    assert!(started.elapsed() >= Duration::from_millis(300));
    let raw = server
        .http()
        .get(format!(
            "{}/v1/environments/{}/work/poll",
            server.url(),
            env.environment_id
        ))
        .bearer_auth(&env.environment_secret)
        .send()
        .await?;
    assert_eq!(raw.status(), 204);
    Ok(())
}

#[tokio::test]
async fn unacknowledged_work_is_delivered_again_and_acknowledged_work_is_not() -> anyhow::Result<()>
{
    let server = TestServer::start_with(|o| o.poll_timeout = Duration::from_millis(500)).await?;
    let bridge = server.bridge();
    let d = dispatch(&server).await?;

    // Not acknowledged: within the reclaim window nothing comes back, after it the same
    // work does, with a fresh secret.
    let soon = bridge
        .poll_for_work(&d.environment_id, &d.environment_secret, Some(60_000))
        .await?;
    assert!(soon.is_none());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let again = bridge
        .poll_for_work(&d.environment_id, &d.environment_secret, Some(200))
        .await?
        .expect("un-acked work is reclaimed");
    assert_eq!(again.id, d.work.id);

    // Acknowledged: never again.
    let token = secret_of(&again).session_ingress_token;
    bridge
        .acknowledge_work(&d.environment_id, &again.id, &token)
        .await?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after_ack = bridge
        .poll_for_work(&d.environment_id, &d.environment_secret, Some(100))
        .await?;
    assert!(after_ack.is_none());

    // A heartbeat extends the lease and says so.
    let beat = bridge
        .heartbeat_work(&d.environment_id, &again.id, &token)
        .await?
        .expect("a heartbeat answer");
    assert!(beat.lease_extended);
    assert_eq!(beat.state, "acked");
    Ok(())
}

#[tokio::test]
async fn reconnect_requeues_the_session_with_a_fresh_token() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let d = dispatch(&server).await?;
    bridge
        .acknowledge_work(&d.environment_id, &d.work.id, &d.ingress_token)
        .await?;

    // The client tries the compat costume; both are accepted.
    bridge
        .reconnect_session(&d.environment_id, &d.session_id)
        .await?;
    let next_work = bridge
        .poll_for_work(&d.environment_id, &d.environment_secret, None)
        .await?
        .expect("a new work item for the session");
    assert_ne!(next_work.id, d.work.id);
    assert_eq!(next_work.data.id, d.work.data.id);
    let fresh = secret_of(&next_work).session_ingress_token;
    assert_ne!(fresh, d.ingress_token);
    // The old work item was stopped: acking it conflicts.
    let old = bridge
        .acknowledge_work(&d.environment_id, &d.work.id, &d.ingress_token)
        .await;
    assert_eq!(old.unwrap_err().status(), Some(409));
    let cse = d.work.data.id.clone();
    bridge.reconnect_session(&d.environment_id, &cse).await?;
    Ok(())
}

#[tokio::test]
async fn reregistering_with_a_known_id_reattaches_and_rotates_the_secret() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let first = bridge.register_environment(&registration()).await?;
    let again = bridge
        .register_environment(
            &switchboard_proto::environments::RegisterEnvironmentRequest {
                environment_id: Some(first.environment_id.clone()),
                ..registration()
            },
        )
        .await?;
    assert_eq!(again.environment_id, first.environment_id);
    assert_ne!(again.environment_secret, first.environment_secret);
    // The old secret no longer polls; the new one does.
    let old = bridge
        .poll_for_work(&first.environment_id, &first.environment_secret, None)
        .await;
    assert_eq!(old.unwrap_err().status(), Some(401));

    // An id the server never issued gets a fresh environment.
    let unknown = bridge
        .register_environment(
            &switchboard_proto::environments::RegisterEnvironmentRequest {
                environment_id: Some("env_not_ours".into()),
                ..registration()
            },
        )
        .await?;
    assert_ne!(unknown.environment_id, "env_not_ours");
    Ok(())
}

#[tokio::test]
async fn environments_that_stop_polling_are_collected() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| {
        o.environment_idle_timeout = Duration::from_millis(200);
        o.gc_interval = Duration::from_millis(100);
        o.poll_timeout = Duration::from_millis(100);
    })
    .await?;
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let polled = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, None)
        .await;
    assert_eq!(polled.unwrap_err().status(), Some(404));
    // Sessions can no longer be created on it either.
    let created = server
        .sessions()
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!(created.unwrap_err().status(), Some(404));
    Ok(())
}
