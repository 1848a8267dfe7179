//! The v2 worker API: code sessions, worker credentials, epoch fencing, worker state,
//! the SSE event stream and delivery tracking (docs/PROTOCOL.md §9–§10).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use switchboard_client::HistoryQuery;
use switchboard_proto::sessions::CreateSessionRequest;

use crate::common::*;

/// A code session with worker credentials, driven over raw HTTP.
struct CodeSession {
    id: String,
    jwt: String,
    epoch: u64,
}

async fn post(
    server: &TestServer,
    path: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let response = server
        .http()
        .post(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        },
    ))
}

async fn put(server: &TestServer, path: &str, token: &str, body: Value) -> anyhow::Result<u16> {
    let response = server
        .http()
        .put(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

async fn get(server: &TestServer, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
    let response = server
        .http()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn code_session(server: &TestServer) -> anyhow::Result<CodeSession> {
    let (status, created) = post(
        server,
        "/v1/code/sessions",
        &server.key,
        json!({"title":"t","bridge":{}}),
    )
    .await?;
    anyhow::ensure!(status == 200, "create: {status} {created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    let (status, creds) = post(
        server,
        &format!("/v1/code/sessions/{id}/bridge"),
        &server.key,
        json!({}),
    )
    .await?;
    anyhow::ensure!(status == 200, "bridge: {status} {creds}");
    Ok(CodeSession {
        id,
        jwt: creds["worker_jwt"].as_str().unwrap().to_string(),
        epoch: creds["worker_epoch"].as_u64().unwrap(),
    })
}

fn worker_path(id: &str, rest: &str) -> String {
    format!("/v1/code/sessions/{id}/worker{rest}")
}

#[tokio::test]
async fn code_sessions_issue_credentials_and_every_bridge_call_bumps_the_epoch(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let first = code_session(&server).await?;
    assert!(first.id.starts_with("cse_"));
    assert_eq!(first.epoch, 1);
    let (_, second) = post(
        &server,
        &format!("/v1/code/sessions/{}/bridge", first.id),
        &server.key,
        json!({}),
    )
    .await?;
    assert_eq!(second["worker_epoch"], 2);
    assert!(second["expires_in"].as_u64().unwrap() >= 3600);
    assert_eq!(second["api_base_url"], server.url());
    // The client reads `exp` from the token's middle segment.
    let middle = second["worker_jwt"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(middle)?)?;
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    // The worker token is not a user key: it cannot create sessions or mint credentials.
    let current = second["worker_jwt"].as_str().unwrap().to_string();
    let (status, _) = post(&server, "/v1/code/sessions", &current, json!({})).await?;
    assert_eq!(status, 403);
    let (status, _) = post(
        &server,
        &format!("/v1/code/sessions/{}/bridge", first.id),
        &current,
        json!({}),
    )
    .await?;
    assert_eq!(status, 403);
    // Nor reach another session.
    let other = code_session(&server).await?;
    let (status, _) = get(&server, &worker_path(&other.id, ""), &current).await?;
    assert_eq!(status, 403);
    // The first token's epoch was superseded: any use of it is a 409.
    let (status, _) = post(&server, "/v1/code/sessions", &first.jwt, json!({})).await?;
    assert_eq!(status, 409);
    Ok(())
}

#[tokio::test]
async fn a_stale_worker_is_fenced_with_409_and_the_newer_one_is_unaffected() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let old = code_session(&server).await?;
    let (_, creds) = post(
        &server,
        &format!("/v1/code/sessions/{}/bridge", old.id),
        &server.key,
        json!({}),
    )
    .await?;
    let new = CodeSession {
        id: old.id.clone(),
        jwt: creds["worker_jwt"].as_str().unwrap().into(),
        epoch: 2,
    };

    for (worker, expected) in [(&old, 409), (&new, 200)] {
        let e = worker.epoch;
        let status = put(
            &server,
            &worker_path(&worker.id, ""),
            &worker.jwt,
            json!({"worker_status":"running","worker_epoch":e}),
        )
        .await?;
        assert_eq!(status, expected, "PUT /worker at epoch {e}");
        let (status, _) = post(
            &server,
            &worker_path(&worker.id, "/heartbeat"),
            &worker.jwt,
            json!({"session_id":worker.id,"worker_epoch":e}),
        )
        .await?;
        assert_eq!(status, expected, "heartbeat at epoch {e}");
        let (status, _) = post(&server, &worker_path(&worker.id, "/events"), &worker.jwt,
            json!({"worker_epoch":e,"events":[{"payload":{"type":"assistant","uuid":format!("a-{e}"),"message":{}}}]})).await?;
        assert_eq!(status, expected, "events at epoch {e}");
        let (status, _) = post(
            &server,
            &worker_path(&worker.id, "/events/delivery"),
            &worker.jwt,
            json!({"worker_epoch":e,"updates":[]}),
        )
        .await?;
        assert_eq!(status, expected, "delivery at epoch {e}");
    }
    // A decimal-string epoch (protojson int64) is the same epoch.
    let status = put(
        &server,
        &worker_path(&new.id, ""),
        &new.jwt,
        json!({"worker_status":"idle","worker_epoch":"2"}),
    )
    .await?;
    assert_eq!(status, 200);
    // Only the newer worker's event reached the log.
    let history = server
        .sessions()
        .history(&new.id, HistoryQuery::default())
        .await?;
    let uuids: Vec<&str> = history
        .data
        .iter()
        .map(|e| e["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids, ["a-2"]);
    Ok(())
}

#[tokio::test]
async fn worker_metadata_merges_with_null_deleting_keys() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let w = code_session(&server).await?;
    let (status, fresh) = get(&server, &worker_path(&w.id, ""), &w.jwt).await?;
    assert_eq!(status, 200);
    assert_eq!(fresh["worker"]["external_metadata"], json!({}));
    let patches = [
        json!({"worker_status":"idle","worker_epoch":w.epoch,"external_metadata":{"pending_action":null,"task_summary":null}}),
        json!({"worker_epoch":w.epoch,"external_metadata":{"model":"opus","pending_action":{"tool_name":"Bash","input":{"command":"ls"}},"permission_mode":"default"}}),
        json!({"worker_epoch":w.epoch,"external_metadata":{"pending_action":null,"permission_mode":"plan"}}),
    ];
    for patch in patches {
        assert_eq!(
            put(&server, &worker_path(&w.id, ""), &w.jwt, patch).await?,
            200
        );
    }
    let (_, state) = get(&server, &worker_path(&w.id, ""), &w.jwt).await?;
    assert_eq!(
        state["worker"]["external_metadata"],
        json!({"model":"opus","permission_mode":"plan"})
    );
    // The reported state shows on the session.
    assert_eq!(put(&server, &worker_path(&w.id, ""), &w.jwt,
        json!({"worker_epoch":w.epoch,"worker_status":"requires_action","requires_action_details":{"tool_name":"Bash","request_id":"r1"}})).await?, 200);
    let session = server.sessions().get_session(&w.id).await?;
    assert_eq!(session.session_status, "requires_action");
    assert_eq!(
        session.requires_action,
        Some(json!({"tool_name":"Bash","request_id":"r1"}))
    );
    assert_eq!(
        put(
            &server,
            &worker_path(&w.id, ""),
            &w.jwt,
            json!({"worker_epoch":w.epoch,"worker_status":"running"})
        )
        .await?,
        200
    );
    let session = server.sessions().get_session(&w.id).await?;
    assert_eq!(
        (session.session_status.as_str(), session.requires_action),
        ("running", None)
    );
    // Bad bodies are refused with the error body.
    assert_eq!(
        put(
            &server,
            &worker_path(&w.id, ""),
            &w.jwt,
            json!({"worker_epoch":w.epoch,"worker_status":"dancing"})
        )
        .await?,
        400
    );
    assert_eq!(
        put(
            &server,
            &worker_path(&w.id, ""),
            &w.jwt,
            json!({"worker_status":"idle"})
        )
        .await?,
        400
    );
    Ok(())
}

#[tokio::test]
async fn the_stream_sends_inbound_events_as_client_events_and_resumes_without_gaps(
) -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| o.sse_keepalive = Duration::from_millis(100)).await?;
    let w = code_session(&server).await?;
    let url = format!("{}{}", server.url(), worker_path(&w.id, "/events/stream"));
    let mut stream = SseReader::open(&url, &w.jwt, None).await?;
    let prompts: Vec<Value> = (0..3).map(|i| prompt(&format!("p{i}"))).collect();
    server
        .sessions()
        .send_events(&w.id, prompts.clone())
        .await?;
    let mut seqs = Vec::new();
    for p in &prompts {
        let frame = stream.next(Duration::from_secs(5)).await?;
        assert_eq!(frame.event.as_deref(), Some("client_event"));
        let data: Value = serde_json::from_str(&frame.data)?;
        assert_eq!(data["payload"], *p);
        assert_eq!(data["event_type"], "user");
        assert_eq!(data["event_id"], p["uuid"], "event_id is the prompt's uuid");
        assert_eq!(
            frame.id.as_deref(),
            Some(data["sequence_num"].to_string().as_str())
        );
        seqs.push(data["sequence_num"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // Keep-alive comments flow while idle.
    assert!(
        stream.next(Duration::from_millis(350)).await.is_err(),
        "no data while idle"
    );
    assert!(
        stream.comments.iter().any(|c| c == "keepalive"),
        "{:?}",
        stream.comments
    );

    // Resuming after the first: exactly the second and third, by header or by query.
    let mut resumed = SseReader::open(&url, &w.jwt, Some(seqs[0])).await?;
    for expected in &seqs[1..] {
        let frame = resumed.next(Duration::from_secs(5)).await?;
        assert_eq!(frame.id, Some(expected.to_string()));
    }
    assert!(
        resumed.next(Duration::from_millis(300)).await.is_err(),
        "nothing more"
    );
    let mut by_query = SseReader::open(
        &format!("{url}?from_sequence_num={}", seqs[1]),
        &w.jwt,
        None,
    )
    .await?;
    assert_eq!(
        by_query.next(Duration::from_secs(5)).await?.id,
        Some(seqs[2].to_string())
    );
    Ok(())
}

#[tokio::test]
async fn a_processed_prompt_is_not_delivered_again_to_a_new_worker() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let w = code_session(&server).await?;
    let url = format!("{}{}", server.url(), worker_path(&w.id, "/events/stream"));
    let done = prompt("done");
    let pending = prompt("pending");
    let interrupt =
        json!({"type":"control_request","request_id":"int-1","request":{"subtype":"interrupt"}});
    server
        .sessions()
        .send_events(&w.id, vec![done.clone(), pending.clone(), interrupt])
        .await?;
    let mut first = SseReader::open(&url, &w.jwt, None).await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let data: Value = serde_json::from_str(&first.next(Duration::from_secs(5)).await?.data)?;
        ids.push(data["event_id"].as_str().unwrap().to_string());
    }
    // The worker acknowledged everything, and finished the first prompt only.
    let updates: Vec<Value> = ids
        .iter()
        .map(|id| json!({"event_id":id,"status":"received"}))
        .collect();
    post(
        &server,
        &worker_path(&w.id, "/events/delivery"),
        &w.jwt,
        json!({"worker_epoch":w.epoch,"updates":updates}),
    )
    .await?;
    post(&server, &worker_path(&w.id, "/events/delivery"), &w.jwt,
        json!({"worker_epoch":w.epoch,"updates":[{"event_id":done["uuid"],"status":"processing"},{"event_id":done["uuid"],"status":"processed"}]})).await?;
    drop(first);

    // A new worker (new epoch, fresh stream) gets only the unfinished prompt.
    let (_, creds) = post(
        &server,
        &format!("/v1/code/sessions/{}/bridge", w.id),
        &server.key,
        json!({}),
    )
    .await?;
    let jwt = creds["worker_jwt"].as_str().unwrap();
    let mut second = SseReader::open(&url, jwt, None).await?;
    let data: Value = serde_json::from_str(&second.next(Duration::from_secs(5)).await?.data)?;
    assert_eq!(data["payload"], pending);
    assert!(
        second.next(Duration::from_millis(300)).await.is_err(),
        "the processed prompt and the received interrupt stay delivered"
    );
    Ok(())
}

#[tokio::test]
async fn worker_events_are_unwrapped_deduplicated_and_reach_history() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let w = code_session(&server).await?;
    let events = json!({"worker_epoch":w.epoch,"events":[
        {"payload":{"type":"stream_event","uuid":"s1","event":{"type":"content_block_delta"}},"ephemeral":true},
        {"payload":{"type":"assistant","uuid":"a1","message":{"content":[]}}},
        {"payload":{"type":"keep_alive","uuid":"k1"}}
    ]});
    let path = worker_path(&w.id, "/events");
    assert_eq!(post(&server, &path, &w.jwt, events.clone()).await?.0, 200);
    assert_eq!(post(&server, &path, &w.jwt, events).await?.0, 200);
    let history = server
        .sessions()
        .history(&w.id, HistoryQuery::default())
        .await?;
    let kinds: Vec<&str> = history
        .data
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stream_event", "assistant"]);
    let (status, err) = post(
        &server,
        &path,
        &w.jwt,
        json!({"worker_epoch":w.epoch,"events":[{"nope":1}]}),
    )
    .await?;
    assert_eq!(status, 400, "{err}");
    // Internal events are kept for resume and never shown to viewers.
    let internal = json!({"worker_epoch":w.epoch,"events":[
        {"payload":{"type":"user","uuid":"i1"}},
        {"payload":{"type":"summary","uuid":"i2"},"is_compaction":true},
        {"payload":{"type":"assistant","uuid":"i3"}}
    ]});
    assert_eq!(
        post(
            &server,
            &worker_path(&w.id, "/internal-events"),
            &w.jwt,
            internal
        )
        .await?
        .0,
        200
    );
    let (_, page) = get(&server, &worker_path(&w.id, "/internal-events"), &w.jwt).await?;
    let types: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["summary", "assistant"],
        "from the last compaction boundary"
    );
    assert_eq!(
        server
            .sessions()
            .history(&w.id, HistoryQuery::default())
            .await?
            .data
            .len(),
        2
    );
    Ok(())
}

#[tokio::test]
async fn an_environment_session_with_code_sessions_is_served_over_v2() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    let session = server
        .sessions()
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            use_code_sessions: Some(true),
            ..Default::default()
        })
        .await?;
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, None)
        .await?
        .unwrap();
    let secret = secret_of(&work);
    assert!(secret.use_code_sessions);
    let token = secret.session_ingress_token;
    let id = work.data.id.clone();
    // The bridge registers the worker with the ingress token, then the child uses it.
    let (status, registered) =
        post(&server, &worker_path(&id, "/register"), &token, json!({})).await?;
    assert_eq!(status, 200);
    let epoch = registered["worker_epoch"].as_u64().unwrap();
    let mut stream = SseReader::open(
        &format!("{}{}", server.url(), worker_path(&id, "/events/stream")),
        &token,
        None,
    )
    .await?;
    let p = prompt("over v2");
    server
        .sessions()
        .send_events(&session.id, vec![p.clone()])
        .await?;
    let data: Value = serde_json::from_str(&stream.next(Duration::from_secs(5)).await?.data)?;
    assert_eq!(data["payload"], p);
    post(&server, &worker_path(&id, "/events"), &token,
        json!({"worker_epoch":epoch,"events":[{"payload":{"type":"assistant","uuid":"v2-a","message":{}}}]})).await?;
    // One log, whichever plane: the viewer sees the prompt and the reply.
    let history = server
        .sessions()
        .history(&session.id, HistoryQuery::default())
        .await?;
    let kinds: Vec<&str> = history
        .data
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["user", "assistant"]);
    assert!(
        server
            .sessions()
            .get_session(&session.id)
            .await?
            .worker_connected
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_silent_past_its_heartbeat_ttl_is_marked_gone() -> anyhow::Result<()> {
    let server =
        TestServer::start_with(|o| o.worker_heartbeat_ttl = Duration::from_millis(300)).await?;
    let w = code_session(&server).await?;
    let url = format!("{}{}", server.url(), worker_path(&w.id, "/events/stream"));
    let mut stream = SseReader::open(&url, &w.jwt, None).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.sessions().get_session(&w.id).await?.worker_connected);
    // Heartbeats keep it alive past the TTL...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        post(
            &server,
            &worker_path(&w.id, "/heartbeat"),
            &w.jwt,
            json!({"session_id":w.id,"worker_epoch":w.epoch}),
        )
        .await?;
    }
    assert!(server.sessions().get_session(&w.id).await?.worker_connected);
    // ...silence ends the stream and the session shows no worker.
    let ended = stream.next(Duration::from_secs(3)).await;
    assert!(ended.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!server.sessions().get_session(&w.id).await?.worker_connected);
    Ok(())
}

#[tokio::test]
async fn signing_keys_rotate_with_or_without_cutting_off_older_tokens() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let w = code_session(&server).await?;
    let store = server.state().store().clone();
    let state_path = worker_path(&w.id, "");
    let kid = |token: &str| -> anyhow::Result<Value> {
        let head = token.split('.').next().unwrap_or_default();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head)?,
        )?;
        Ok(header["kid"].clone())
    };
    let credentials = || async {
        let (_, creds) = post(
            &server,
            &format!("/v1/code/sessions/{}/bridge", w.id),
            &server.key,
            json!({}),
        )
        .await?;
        Ok::<_, anyhow::Error>(creds["worker_jwt"].as_str().unwrap_or_default().to_string())
    };

    // A new key: tokens signed by the older one keep working; new credentials use it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let second = switchboard_server::jwt::rotate(store.as_ref(), false, now + 1_000).await?;
    server.state().reload_signing_keys().await?;
    assert_eq!(get(&server, &state_path, &w.jwt).await?.0, 200);
    let signed_by_second = credentials().await?;
    assert_eq!(kid(&signed_by_second)?, json!(second.id));

    // Retiring the older keys cuts their tokens off.
    let third = switchboard_server::jwt::rotate(store.as_ref(), true, now + 2_000).await?;
    server.state().reload_signing_keys().await?;
    for old in [&w.jwt, &signed_by_second] {
        assert_eq!(
            get(&server, &state_path, old).await?.0,
            401,
            "a token of a retired key"
        );
    }
    let signed_by_third = credentials().await?;
    assert_eq!(kid(&signed_by_third)?, json!(third.id));
    assert_eq!(get(&server, &state_path, &signed_by_third).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn a_v2_worker_that_falls_silent_mid_turn_is_reported_lost_to_its_owner() -> anyhow::Result<()>
{
    let server = TestServer::start_with(|o| {
        o.worker_heartbeat_ttl = Duration::from_millis(300);
        o.worker_lost_grace = Duration::from_millis(200);
        o.notify_allow_private = true;
    })
    .await?;
    // A webhook on 127.0.0.1 that hands over the notices it gets.
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, hook).await });
    server
        .sessions()
        .set_notify_channel("webhook", &hook_url, None)
        .await?;

    let w = code_session(&server).await?;
    let url = format!("{}{}", server.url(), worker_path(&w.id, "/events/stream"));
    let mut stream = SseReader::open(&url, &w.jwt, None).await?;
    assert_eq!(
        put(
            &server,
            &worker_path(&w.id, ""),
            &w.jwt,
            json!({"worker_status":"running","worker_epoch":w.epoch}),
        )
        .await?,
        200
    );
    // No more heartbeats: the stream ends, and after the grace its owner is told.
    assert!(stream.next(Duration::from_secs(3)).await.is_err());
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("webhook stopped"))?;
    assert_eq!(notice["type"], "worker_lost", "{notice}");
    let body = w.id.split_once('_').map_or("", |(_, b)| b);
    assert!(
        notice["session_id"].as_str().unwrap_or("").ends_with(body),
        "{notice}"
    );
    Ok(())
}
