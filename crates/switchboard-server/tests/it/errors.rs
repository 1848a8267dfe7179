//! Bad input gets the protocol's JSON error body and loses nothing.

use serde_json::{json, Value};
use switchboard_client::{ApiError, HistoryQuery};

use crate::common::*;

async fn raw(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server
        .http()
        .request(method, format!("{}{path}", server.url()))
        .bearer_auth(&server.key);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn path_traversal_and_unsafe_ids_are_rejected() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    for path in [
        "/v1/sessions/..%2F..%2Fetc%2Fpasswd".to_string(),
        "/v1/sessions/session_a.b".to_string(),
        "/v1/sessions/%2e%2e/events".to_string(),
        format!("/v1/environments/{}%2F..%2Fx/work/poll", d.environment_id),
        format!(
            "/v1/environments/{}/work/..%2F{}/ack",
            d.environment_id, d.work.id
        ),
    ] {
        let (status, body) = raw(&server, reqwest::Method::GET, &path, None).await?;
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert!(body["error"]["type"].is_string(), "{path}: {body}");
    }
    // The client refuses such ids before sending anything.
    let err = server
        .bridge()
        .stop_work("../x", "w", false)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::InvalidId { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn malformed_json_is_a_400_with_the_error_body_and_stores_nothing() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let d = dispatch(&server).await?;
    let path = format!("/v1/session_ingress/session/{}/events", d.session_id);
    for body in [&b"{not json"[..], b"[]", b"{\"events\": 5}", b""] {
        let (status, err) = raw(&server, reqwest::Method::POST, &path, Some(body.to_vec())).await?;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    // A batch with one bad prompt is refused whole.
    let bad = json!({"events": [prompt("fine"), {"type":"user","message":{"role":"assistant","content":"x"}}]});
    let (status, err) = raw(
        &server,
        reqwest::Method::POST,
        &format!("/v1/sessions/{}/events", d.session_id),
        Some(serde_json::to_vec(&bad)?),
    )
    .await?;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("event 1"),
        "{err}"
    );
    let history = server
        .sessions()
        .history(&d.session_id, HistoryQuery::default())
        .await?;
    assert!(history.data.is_empty());
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_get_413_with_the_error_body() -> anyhow::Result<()> {
    let server = TestServer::start_with(|o| o.max_body_bytes = 4096).await?;
    let d = dispatch(&server).await?;
    let big = json!({"events": [{"type":"assistant","uuid":"big","message":{"content":"x".repeat(10_000)}}]});
    let (status, err) = raw(
        &server,
        reqwest::Method::POST,
        &format!("/v1/session_ingress/session/{}/events", d.session_id),
        Some(serde_json::to_vec(&big)?),
    )
    .await?;
    assert_eq!(status, 413);
    assert_eq!(err["error"]["type"], "request_too_large");
    // A small body still goes through.
    let small = json!({"events": [{"type":"assistant","uuid":"small","message":{}}]});
    let (status, _) = raw(
        &server,
        reqwest::Method::POST,
        &format!("/v1/session_ingress/session/{}/events", d.session_id),
        Some(serde_json::to_vec(&small)?),
    )
    .await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_the_error_body() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (status, body) = raw(&server, reqwest::Method::GET, "/v1/nothing-here", None).await?;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (404, Some("not_found_error"))
    );
    let (status, body) = raw(&server, reqwest::Method::PUT, "/v1/sessions", None).await?;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"]["message"].is_string());
    // Doubled slashes are tolerated.
    let (status, body) = raw(&server, reqwest::Method::GET, "//v1//sessions", None).await?;
    assert_eq!(status, 200, "{body}");
    let health: Value = server
        .http()
        .get(format!("{}/health", server.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "ok");
    let metrics = server
        .http()
        .get(format!("{}/metrics", server.url()))
        .bearer_auth(&server.key)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("switchboard_long_polls_waiting"),
        "{metrics}"
    );
    Ok(())
}
