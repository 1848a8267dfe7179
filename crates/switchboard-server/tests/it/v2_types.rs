//! The v2 worker API speaks the `switchboard_proto::code` types on both ends: every route
//! is driven with `switchboard-client`, and every answer the server sends (and every body
//! the official CLI sent in the captures) reads into its proto type and writes back as the
//! same JSON, so a field the server adds or renames fails here (docs/PROTOCOL.md §9–§10).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use switchboard_client::worker::{register_worker, worker_session_url};
use switchboard_client::{CodeSessionsClient, HistoryQuery, WorkerConfig, WorkerTransport};
use switchboard_proto::code::{
    Accepted, BridgeCredentials, CreateCodeSessionRequest, CreateCodeSessionResponse,
    DeliveryRequest, DeliveryStatus, HeartbeatRequest, InternalEvent, InternalEventsPage,
    InternalEventsQuery, InternalEventsRequest, RegisterWorkerResponse, StreamClientEvent,
    WorkerEventsRequest, WorkerResponse, WorkerStateRequest, WorkerStatus,
};
use switchboard_proto::ErrorBody;

use crate::common::*;

/// Reads `raw` as a `T` and checks that writing it back gives `raw` again.
fn round_trip<T: DeserializeOwned + Serialize>(what: &str, raw: &Value) -> anyhow::Result<T> {
    let typed: T = serde_json::from_value(raw.clone())
        .map_err(|e| anyhow::anyhow!("{what}: {raw} does not read as its proto type: {e}"))?;
    let again = serde_json::to_value(&typed)?;
    anyhow::ensure!(
        &again == raw,
        "{what}: the proto type changes the JSON\n  sent: {raw}\n again: {again}"
    );
    Ok(typed)
}

/// One raw request: its status and JSON answer.
async fn call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server
        .http()
        .request(method, format!("{}{path}", server.url()))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// A raw request that must succeed; returns its answer.
async fn ok(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (status, answer) = call(server, method.clone(), path, token, body).await?;
    anyhow::ensure!(status == 200, "{method} {path}: {status} {answer}");
    Ok(answer)
}

/// Waits until `check` holds, for up to five seconds.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    for _ in 0..100 {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{what} did not happen within 5 s")
}

#[tokio::test]
async fn every_v2_route_round_trips_through_the_proto_types_of_server_and_client(
) -> anyhow::Result<()> {
    use reqwest::Method;
    let server = TestServer::start().await?;
    let code = CodeSessionsClient::new(server.url(), server.key.clone());

    // §10.1 create, by the client and raw.
    let id = code
        .create_code_session("typed", Some(vec!["ccr-mirror".into()]))
        .await?;
    assert!(id.starts_with("cse_"), "{id}");
    let request = CreateCodeSessionRequest {
        title: "raw".into(),
        tags: Some(vec!["ccr-mirror".into()]),
        ..Default::default()
    };
    let raw = ok(
        &server,
        Method::POST,
        "/v1/code/sessions",
        &server.key,
        Some(serde_json::to_value(&request)?),
    )
    .await?;
    let created: CreateCodeSessionResponse = round_trip("create answer", &raw)?;
    assert_eq!(created.session.title.as_deref(), Some("raw"));
    assert_eq!(
        created.session.rest["session_context"]["tags"],
        json!(["ccr-mirror"])
    );

    // §10.2 credentials: raw first (every call bumps the epoch), then the client's.
    let bridge_path = format!("/v1/code/sessions/{id}/bridge");
    let raw = ok(
        &server,
        Method::POST,
        &bridge_path,
        &server.key,
        Some(json!({})),
    )
    .await?;
    let first: BridgeCredentials = round_trip("bridge answer", &raw)?;
    let credentials = code.fetch_remote_credentials(&id).await?;
    assert_eq!(credentials.worker_epoch, first.worker_epoch + 1);
    assert_eq!(credentials.api_base_url, server.url());

    // §9 the worker transport: PUT and GET /worker, heartbeats, the stream, events,
    // internal events and delivery reports, all from the client.
    let session_url = worker_session_url(&server.url(), &id)?;
    let mut config = WorkerConfig::new(
        &session_url,
        credentials.worker_jwt.clone(),
        credentials.worker_epoch,
    )?;
    config.timings.heartbeat_interval = Duration::from_millis(50);
    let (worker, mut inbound) = WorkerTransport::start(config).await?;
    let p = prompt("typed prompt");
    server.sessions().send_events(&id, vec![p.clone()]).await?;
    assert_eq!(
        next(&mut inbound).await?,
        p,
        "the prompt came off the stream"
    );
    worker.report_state(WorkerStatus::Running, None)?;
    worker.report_delivery(
        p["uuid"].as_str().unwrap_or_default(),
        DeliveryStatus::Processing,
    )?;
    worker.write(vec![
        json!({"type":"assistant","uuid":"typed-a1","message":{"role":"assistant","content":[]}}),
    ])?;
    worker
        .write_internal(vec![
            InternalEvent {
                payload: json!({"type":"user","uuid":"typed-i1"}),
                is_compaction: false,
                agent_id: None,
            },
            InternalEvent {
                payload: json!({"type":"assistant","uuid":"typed-i2"}),
                is_compaction: false,
                agent_id: Some("agent-1".into()),
            },
        ])
        .await?;
    worker.report_metadata(json!({"model":"opus"}))?;
    // The writes first: the server reads assistant output as "running" (§9.3), and the
    // uploaders do not order one kind of write after another.
    worker.flush().await?;
    worker.report_state(
        WorkerStatus::RequiresAction,
        Some(json!({"tool_name":"Bash","request_id":"r-typed"})),
    )?;
    worker.flush().await?;

    // What the client wrote reached the server.
    let history = server
        .sessions()
        .history(&id, HistoryQuery::default())
        .await?;
    let uuids: Vec<&str> = history
        .data
        .iter()
        .filter_map(|e| e["uuid"].as_str())
        .collect();
    assert!(uuids.contains(&"typed-a1"), "{uuids:?}");
    let session = server.sessions().get_session(&id).await?;
    assert_eq!(session.session_status, "requires_action");
    let main = worker
        .read_internal_events(&InternalEventsQuery::default())
        .await?;
    let kinds: Vec<&str> = main.data.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["user"]);
    assert_eq!(main.next_cursor, None);
    let subagents = worker
        .read_internal_events(&InternalEventsQuery {
            subagents: true,
            cursor: None,
        })
        .await?;
    assert_eq!(subagents.data.len(), 1);
    assert_eq!(subagents.data[0].agent_id.as_deref(), Some("agent-1"));
    let (body, everything) = (session_body(&id), switchboard_store::EventQuery::default());
    eventually("the processing report", || async {
        let events = server.state().store().events(&body, &everything).await?;
        Ok(events.iter().any(|e| {
            e.uuid.as_deref() == p["uuid"].as_str()
                && e.delivery == Some(switchboard_store::DeliveryStatus::Processing)
        }))
    })
    .await?;

    // The same routes raw: each answer is exactly its proto type.
    let jwt = &credentials.worker_jwt;
    let epoch = credentials.worker_epoch;
    let worker_path = |rest: &str| format!("/v1/code/sessions/{id}/worker{rest}");
    let raw = ok(&server, Method::GET, &worker_path(""), jwt, None).await?;
    let state: WorkerResponse = round_trip("GET /worker answer", &raw)?;
    assert_eq!(
        state.worker.external_metadata.as_ref().map(|m| &m["model"]),
        Some(&json!("opus"))
    );
    assert_eq!(
        state.worker.worker_status.as_deref(),
        Some("requires_action")
    );
    assert_eq!(state.worker.worker_epoch, Some(epoch));
    let writes: [(Method, String, Value); 5] = [
        (
            Method::PUT,
            worker_path(""),
            serde_json::to_value(WorkerStateRequest {
                worker_epoch: epoch,
                worker_status: Some(WorkerStatus::Idle),
                requires_action_details: Some(None),
                ..Default::default()
            })?,
        ),
        (
            Method::POST,
            worker_path("/heartbeat"),
            serde_json::to_value(HeartbeatRequest {
                session_id: id.clone(),
                worker_epoch: epoch,
            })?,
        ),
        (
            Method::POST,
            worker_path("/events"),
            serde_json::to_value(WorkerEventsRequest {
                worker_epoch: epoch,
                events: vec![switchboard_proto::code::WorkerEvent {
                    payload: json!({"type":"assistant","uuid":"typed-a2","message":{}}),
                    ephemeral: None,
                }],
            })?,
        ),
        (
            Method::POST,
            worker_path("/internal-events"),
            serde_json::to_value(InternalEventsRequest {
                worker_epoch: epoch,
                events: vec![InternalEvent {
                    payload: json!({"type":"summary","uuid":"typed-i3"}),
                    is_compaction: true,
                    agent_id: None,
                }],
            })?,
        ),
        (
            Method::POST,
            worker_path("/events/delivery"),
            serde_json::to_value(DeliveryRequest {
                worker_epoch: epoch,
                updates: vec![switchboard_proto::code::DeliveryUpdate {
                    event_id: p["uuid"].as_str().unwrap_or_default().into(),
                    status: DeliveryStatus::Processed,
                }],
            })?,
        ),
    ];
    for (method, path, body) in writes {
        let answer = ok(&server, method.clone(), &path, jwt, Some(body)).await?;
        round_trip::<Accepted>(&format!("{method} {path} answer"), &answer)?;
    }
    let raw = ok(
        &server,
        Method::GET,
        &worker_path("/internal-events"),
        jwt,
        None,
    )
    .await?;
    let page: InternalEventsPage = round_trip("internal-events page", &raw)?;
    let kinds: Vec<&str> = page.data.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["summary"], "from the compaction boundary on");
    let raw = ok(
        &server,
        Method::GET,
        &worker_path("/internal-events?subagents=true"),
        jwt,
        None,
    )
    .await?;
    round_trip::<InternalEventsPage>("subagent internal-events page", &raw)?;

    // §9.8 the stream's frames, raw: a fresh stream after the prompt's sequence number.
    // The client's transport goes first, or its reconnecting stream would take over
    // from this one (a newer stream ends the older).
    worker.close().await;
    let another = prompt("second");
    let mut stream = SseReader::open(
        &format!("{}{}", server.url(), worker_path("/events/stream")),
        jwt,
        Some(session.last_sequence_num),
    )
    .await?;
    server
        .sessions()
        .send_events(&id, vec![another.clone()])
        .await?;
    let frame = stream.next(Duration::from_secs(5)).await?;
    let data: Value = serde_json::from_str(&frame.data)?;
    let event: StreamClientEvent = round_trip("stream frame", &data)?;
    assert_eq!(event.payload, another);
    assert_eq!(frame.id, Some(event.sequence_num.to_string()));
    drop(stream);

    // §9.2 register, raw and by the client; each bumps the epoch.
    let register_path = worker_path("/register");
    let raw = ok(&server, Method::POST, &register_path, jwt, Some(json!({}))).await?;
    let registered: RegisterWorkerResponse = round_trip("register answer", &raw)?;
    assert_eq!(registered.worker_epoch, epoch + 1);
    let fresh = code.fetch_remote_credentials(&id).await?;
    let bumped = register_worker(&session_url, &fresh.worker_jwt).await?;
    assert_eq!(bumped, fresh.worker_epoch + 1);
    Ok(())
}

/// The id body of a `cse_…` id, as the store names the session.
fn session_body(id: &str) -> String {
    id.trim_start_matches("cse_").to_string()
}

#[tokio::test]
async fn the_official_clients_v2_bodies_round_trip_through_the_proto_types() -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for capture in [
        "v2-ccr-2.1.112.jsonl",
        "v2-ccr-2.1.197.jsonl",
        "v2-ccr-deny-interrupt-2.1.112.jsonl",
    ] {
        for record in crate::fixtures::load(capture)? {
            let Some(body) = &record.body else { continue };
            let Some(rest) = record.path.split("/worker").nth(1) else {
                continue;
            };
            if record.transport != "http" || !record.path.starts_with("/v1/code/sessions/") {
                continue;
            }
            let rest = rest.split('?').next().unwrap_or_default();
            let what = format!(
                "{capture}: {} {} {}",
                record.dir, record.method, record.path
            );
            match (record.dir.as_str(), record.method.as_str(), rest) {
                ("client->server", "PUT", "") => {
                    round_trip::<WorkerStateRequest>(&what, body)?;
                }
                ("client->server", "POST", "/heartbeat") => {
                    round_trip::<HeartbeatRequest>(&what, body)?;
                }
                ("client->server", "POST", "/events") => {
                    round_trip::<WorkerEventsRequest>(&what, body)?;
                }
                ("client->server", "POST", "/internal-events") => {
                    round_trip::<InternalEventsRequest>(&what, body)?;
                }
                ("client->server", "POST", "/events/delivery") => {
                    round_trip::<DeliveryRequest>(&what, body)?;
                }
                ("server->client", "GET", "") => {
                    round_trip::<WorkerResponse>(&what, body)?;
                }
                ("server->client", "PUT" | "POST", _) => {
                    round_trip::<Accepted>(&what, body)?;
                }
                _ => anyhow::bail!("{what}: a v2 body this test does not know"),
            }
            seen.insert(format!("{} {} {rest}", record.dir, record.method));
        }
    }
    // Every kind of body the captures hold was checked.
    assert!(seen.len() >= 11, "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn bad_v2_bodies_are_answered_with_the_error_body_after_the_epoch_fence() -> anyhow::Result<()>
{
    use reqwest::Method;
    let server = TestServer::start().await?;
    let code = CodeSessionsClient::new(server.url(), server.key.clone());
    let id = code.create_code_session("bad bodies", None).await?;
    let credentials = code.fetch_remote_credentials(&id).await?;
    let (jwt, epoch) = (&credentials.worker_jwt, credentials.worker_epoch);
    let worker_path = |rest: &str| format!("/v1/code/sessions/{id}/worker{rest}");

    let bad = [
        (
            Method::PUT,
            "",
            json!({"worker_epoch": epoch, "worker_status": "dancing"}),
        ),
        (Method::PUT, "", json!({"worker_status": "idle"})),
        (
            Method::PUT,
            "",
            json!({"worker_epoch": epoch, "external_metadata": 3}),
        ),
        (
            Method::POST,
            "/events",
            json!({"worker_epoch": epoch, "events": [{"nope": 1}]}),
        ),
        (
            Method::POST,
            "/events",
            json!({"worker_epoch": epoch, "events": [{"payload": 1}]}),
        ),
        (Method::POST, "/events", json!({"worker_epoch": epoch})),
        (
            Method::POST,
            "/internal-events",
            json!({"worker_epoch": epoch, "events": [{"payload": "x"}]}),
        ),
        (
            Method::POST,
            "/events/delivery",
            json!({"worker_epoch": epoch, "updates": [{"event_id": "e", "status": "lost"}]}),
        ),
        (Method::POST, "/heartbeat", json!({"worker_epoch": -1})),
    ];
    for (method, rest, body) in bad {
        let (status, answer) = call(
            &server,
            method.clone(),
            &worker_path(rest),
            jwt,
            Some(body.clone()),
        )
        .await?;
        assert_eq!(status, 400, "{method} {rest} {body}: {answer}");
        let error: ErrorBody = serde_json::from_value(answer.clone())?;
        assert_eq!(error.error.kind, "invalid_request_error", "{answer}");
    }

    // A stale epoch is told 409 whatever else is wrong with its body.
    let (status, answer) = call(
        &server,
        Method::PUT,
        &worker_path(""),
        jwt,
        Some(json!({"worker_epoch": epoch + 7, "worker_status": "dancing"})),
    )
    .await?;
    assert_eq!(status, 409, "{answer}");
    Ok(())
}
