//! The official `claude remote-control` against Switchboard, driven with
//! switchboard-client the way that bridge and its children drive it: sessions it creates
//! (no plane asked) run on the plane its children speak, its sessions come back as work
//! when it registers again after a restart, and a permission answer is stored once.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_client::worker::{register_worker, worker_session_url};
use switchboard_client::{HistoryQuery, WorkerConfig, WorkerTransport};
use switchboard_proto::environments::{RegisterEnvironmentRequest, WorkResponse};
use switchboard_proto::sessions::CreateSessionRequest;

use crate::common::*;

/// `POST /v1/sessions` as the official bridge sends it: no Switchboard-only field.
async fn create_as_the_official_bridge(
    server: &TestServer,
    environment_id: &str,
) -> anyhow::Result<String> {
    let body = json!({
        "title": "remote-control-test-host",
        "events": [],
        "session_context": {"sources": [], "outcomes": [], "model": "claude-opus-4-8"},
        "environment_id": environment_id,
        "source": "remote-control",
        "tags": ["remote-control-cli"],
    });
    let created: Value = server
        .http()
        .post(format!("{}/v1/sessions", server.url()))
        .bearer_auth(&server.key)
        .header("anthropic-beta", "ccr-byoc-2025-07-29")
        .header("x-organization-uuid", "self-hosted")
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(created["id"].as_str().expect("a session id").to_string())
}

/// What the official bridge does with a v2 work item before it spawns the child:
/// ack, register the worker with the ingress token, then the child starts its CCR v2
/// transport on `{api_base_url}/v1/code/sessions/{id}` with that epoch.
async fn start_v2_child(
    server: &TestServer,
    environment_id: &str,
    work: &WorkResponse,
) -> anyhow::Result<(WorkerTransport, tokio::sync::mpsc::Receiver<Value>)> {
    let secret = secret_of(work);
    assert!(
        secret.use_code_sessions,
        "a v2 child needs a v2 work secret"
    );
    server
        .bridge()
        .acknowledge_work(environment_id, &work.id, &secret.session_ingress_token)
        .await?;
    let url = worker_session_url(&secret.api_base_url, &work.data.id)?;
    let epoch = register_worker(&url, &secret.session_ingress_token).await?;
    let config = WorkerConfig::new(&url, secret.session_ingress_token.clone(), epoch)?;
    Ok(WorkerTransport::start(config).await?)
}

async fn history(server: &TestServer, session: &str) -> anyhow::Result<Vec<Value>> {
    Ok(server
        .sessions()
        .history(
            session,
            HistoryQuery {
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await?
        .data)
}

#[tokio::test]
async fn a_session_the_official_bridge_creates_runs_on_v2_end_to_end() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    let session = create_as_the_official_bridge(&server, &env.environment_id).await?;
    assert!(
        server
            .sessions()
            .get_session(&session)
            .await?
            .use_code_sessions
    );

    // The work secret tells the bridge v2, so it registers a worker and hands its child
    // the code-session URL and the epoch (not the v1 ingress URL, which a v2-only child
    // would append `/worker/…` to).
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, Some(5_000))
        .await?
        .expect("work for the new session");
    let secret = secret_of(&work);
    assert!(secret.use_code_sessions);
    assert_eq!(secret.api_base_url, server.url());
    let (child, mut inbound) = start_v2_child(&server, &env.environment_id, &work).await?;

    // A prompt from a viewer reaches the child.
    let hello = prompt("hello");
    server
        .sessions()
        .send_events(&session, vec![hello.clone()])
        .await?;
    assert_eq!(next(&mut inbound).await?, hello);

    // The permission round trip: the child asks, a viewer answers, the child gets the
    // answer and echoes it back (with a uuid of its own, as 2.1.197 does).
    let ask = json!({"type":"control_request","request_id":"perm-1","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"touch x"},"tool_use_id":"toolu_1"}});
    child.write(vec![ask])?;
    child.flush().await?;
    let allow = json!({"type":"control_response","response":{"subtype":"success","request_id":"perm-1","response":{"behavior":"allow","updatedInput":{"command":"touch x"}}}});
    server
        .sessions()
        .send_events(&session, vec![allow.clone()])
        .await?;
    let answer = next(&mut inbound).await?;
    assert_eq!(answer["response"], allow["response"]);
    child.write(vec![
        answer,
        json!({"type":"result","subtype":"success","is_error":false}),
    ])?;
    child.flush().await?;

    let log = history(&server, &session).await?;
    let kinds: Vec<&str> = log.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["user", "control_request", "control_response", "result"],
        "the answer is stored once: {log:?}"
    );
    child.close().await;
    Ok(())
}

#[tokio::test]
async fn a_client_that_asks_for_a_plane_gets_it() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let mut registration = registration();
    registration.max_sessions = 2;
    let env = bridge.register_environment(&registration).await?;
    for plane in [false, true] {
        server
            .sessions()
            .create_session(&CreateSessionRequest {
                environment_id: Some(env.environment_id.clone()),
                use_code_sessions: Some(plane),
                ..Default::default()
            })
            .await?;
        let work = bridge
            .poll_for_work(&env.environment_id, &env.environment_secret, Some(5_000))
            .await?
            .expect("work");
        assert_eq!(secret_of(&work).use_code_sessions, plane);
    }
    Ok(())
}

/// Registers again as the official bridge does after a restart: same machine, the old
/// `environment_id` from its pointer file.
async fn register_again(
    server: &TestServer,
    environment_id: &str,
) -> anyhow::Result<(String, String)> {
    let again = server
        .bridge()
        .register_environment(&RegisterEnvironmentRequest {
            environment_id: Some(environment_id.to_string()),
            max_sessions: 4,
            ..registration()
        })
        .await?;
    Ok((again.environment_id, again.environment_secret))
}

#[tokio::test]
async fn re_registering_an_environment_offers_its_running_sessions_again() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| o.poll_timeout = Duration::from_millis(300)).await?;
    let bridge = server.bridge();
    let env = bridge
        .register_environment(&RegisterEnvironmentRequest {
            max_sessions: 4,
            ..registration()
        })
        .await?;
    let id = env.environment_id.clone();

    // Four sessions, all taken on by the bridge.
    let mut works = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(create_as_the_official_bridge(&server, &id).await?);
        let work = bridge
            .poll_for_work(&id, &env.environment_secret, Some(5_000))
            .await?
            .expect("work");
        bridge
            .acknowledge_work(&id, &work.id, &secret_of(&work).session_ingress_token)
            .await?;
        works.push(work);
    }
    let [killed, interrupted, finished, archived] = [0, 1, 2, 3].map(|i| sessions[i].clone());
    // The first one's bridge dies without a word (its work stays acknowledged); the
    // second is cut short by a clean shutdown (stop with force); the third ended at its
    // worker (stop without force); the fourth was archived.
    bridge.stop_work(&id, &works[1].id, true).await?;
    bridge.stop_work(&id, &works[2].id, false).await?;
    server.sessions().archive_session(&archived).await?;
    // Nothing comes back on its own...
    assert!(bridge
        .poll_for_work(&id, &env.environment_secret, None)
        .await?
        .is_none());
    // ...and a prompt sent meanwhile waits in the log.
    let waiting = prompt("are you still there?");
    server
        .sessions()
        .send_events(&killed, vec![waiting.clone()])
        .await?;

    // The bridge restarts: it registers with its old environment_id, twice even (the
    // second registration must not offer the sessions twice).
    let (same, _) = register_again(&server, &id).await?;
    assert_eq!(same, id, "the environment is re-attached");
    let (_, secret) = register_again(&server, &id).await?;
    let mut offered = Vec::new();
    while let Some(work) = bridge.poll_for_work(&id, &secret, None).await? {
        offered.push(work);
    }
    let body = |s: &str| {
        s.strip_prefix("cse_")
            .or_else(|| s.strip_prefix("session_"))
            .unwrap_or(s)
            .to_string()
    };
    let mut offered_sessions: Vec<String> = offered.iter().map(|w| body(&w.data.id)).collect();
    offered_sessions.sort();
    let mut running = vec![body(&killed), body(&interrupted)];
    running.sort();
    assert_eq!(
        offered_sessions, running,
        "the running sessions come back, the finished and archived ones do not"
    );
    assert!(!offered_sessions.contains(&body(&finished)));
    assert!(offered
        .iter()
        .all(|w| works.iter().all(|old| old.id != w.id)));

    // The new work carries a fresh token and the new child gets the prompt that waited.
    let again = offered
        .iter()
        .find(|w| body(&w.data.id) == body(&killed))
        .expect("the killed session's work");
    let (child, mut inbound) = start_v2_child(&server, &id, again).await?;
    assert_eq!(next(&mut inbound).await?, waiting);
    child.close().await;
    Ok(())
}

#[tokio::test]
async fn a_v1_workers_echo_of_a_permission_answer_is_not_stored_again() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let (worker, mut inbound) = switchboard_client::IngressTransport::connect(ingress_config(
        &server,
        &d.work.data.id,
        &d.ingress_token,
    ))
    .await?;
    let ask = json!({"type":"control_request","request_id":"perm-9","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{},"tool_use_id":"toolu_9"}});
    worker.write(vec![ask]).await?;
    let deny = json!({"type":"control_response","response":{"subtype":"success","request_id":"perm-9","response":{"behavior":"deny","message":"no"}}});
    server
        .sessions()
        .send_events(&d.session_id, vec![deny.clone()])
        .await?;
    let answer = next(&mut inbound).await?;
    // The v1 child echoes it without a uuid, exactly as received.
    worker.write(vec![answer]).await?;
    // An answer the worker got elsewhere (different content) is its own event.
    let local = json!({"type":"control_response","response":{"subtype":"success","request_id":"perm-9","response":{"behavior":"allow","updatedInput":{}}}});
    worker.write(vec![local.clone()]).await?;
    let log = history(&server, &d.session_id).await?;
    let answers: Vec<&Value> = log
        .iter()
        .filter(|e| e["type"] == "control_response")
        .collect();
    assert_eq!(answers.len(), 2, "{log:?}");
    assert_eq!(answers[0]["response"], deny["response"]);
    assert_eq!(answers[1]["response"], local["response"]);
    Ok(())
}
