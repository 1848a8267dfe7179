//! Token classes and owners: every wrong credential gets 401 or 403 and never data.

use reqwest::Method;
use serde_json::{json, Value};
use switchboard_proto::sessions::CreateSessionRequest;

use crate::common::*;

/// Sends a request and returns the status and JSON body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server
        .http()
        .request(method, format!("{}{path}", server.url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
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

/// Method, path, token, body, expected status, what the case shows.
type Case<'a> = (Method, String, Option<&'a str>, Option<Value>, u16, &'a str);

fn assert_refused(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"]["type"].is_string(),
        "{what}: error body {body}"
    );
    assert!(
        body.get("data").is_none() && body.get("id").is_none(),
        "{what}: leaked {body}"
    );
}

#[tokio::test]
async fn each_token_class_reaches_only_what_it_is_for() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let a = dispatch(&server).await?;
    let b = dispatch(&server).await?;
    let s = &a.session_id;
    let env = &a.environment_id;
    let work = &a.work.id;

    let cases: Vec<Case<'_>> = vec![
        (
            Method::GET,
            format!("/v1/sessions/{s}"),
            None,
            None,
            401,
            "no token",
        ),
        (
            Method::GET,
            format!("/v1/sessions/{s}"),
            Some("sbk_unknown_secret"),
            None,
            401,
            "unknown key",
        ),
        (
            Method::GET,
            format!("/v1/sessions/{s}"),
            Some("Bearer-ish garbage"),
            None,
            401,
            "garbage",
        ),
        // The environment secret only polls.
        (
            Method::GET,
            format!("/v1/sessions/{s}"),
            Some(&a.environment_secret),
            None,
            403,
            "secret reads a session",
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(&a.environment_secret),
            Some(json!({})),
            403,
            "secret creates a session",
        ),
        (
            Method::POST,
            "/v1/environments/bridge".into(),
            Some(&a.environment_secret),
            Some(json!({})),
            403,
            "secret registers",
        ),
        (
            Method::GET,
            format!("/v1/environments/{}/work/poll", b.environment_id),
            Some(&a.environment_secret),
            None,
            403,
            "secret polls another env",
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/work/{work}/ack"),
            Some(&a.environment_secret),
            Some(json!({})),
            403,
            "secret acks",
        ),
        // The API key does not poll.
        (
            Method::GET,
            format!("/v1/environments/{env}/work/poll"),
            Some(&server.key),
            None,
            403,
            "key polls",
        ),
        // The ingress token reaches only its own session's worker endpoints.
        (
            Method::POST,
            "/v1/environments/bridge".into(),
            Some(&a.ingress_token),
            Some(json!({})),
            403,
            "ingress registers",
        ),
        (
            Method::GET,
            format!("/v1/sessions/{s}/events"),
            Some(&a.ingress_token),
            None,
            403,
            "ingress reads history",
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/work/{work}/stop"),
            Some(&a.ingress_token),
            Some(json!({})),
            403,
            "ingress stops",
        ),
        (
            Method::POST,
            format!("/v1/session_ingress/session/{}/events", b.session_id),
            Some(&a.ingress_token),
            Some(json!({"events":[]})),
            403,
            "ingress writes elsewhere",
        ),
        (
            Method::POST,
            format!("/v1/sessions/{}/events", b.session_id),
            Some(&a.ingress_token),
            Some(json!({"events":[prompt("x")]})),
            403,
            "ingress prompts elsewhere",
        ),
        (
            Method::POST,
            format!(
                "/v1/environments/{}/work/{}/ack",
                b.environment_id, b.work.id
            ),
            Some(&a.ingress_token),
            Some(json!({})),
            403,
            "ingress acks other work",
        ),
    ];
    for (method, path, token, body, expected, what) in cases {
        let (status, body) = call(&server, method, &path, token, body).await?;
        assert_refused(status, &body, expected, what);
    }
    Ok(())
}

#[tokio::test]
async fn one_owner_never_sees_or_touches_anothers_sessions() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let a = dispatch(&server).await?;
    let mallory = server.key_for("mallory").await?;
    server
        .sessions()
        .send_events(&a.session_id, vec![prompt("secret plans")])
        .await?;
    let s = &a.session_id;
    let env = &a.environment_id;

    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/sessions/{s}"), None),
        (
            Method::PATCH,
            format!("/v1/sessions/{s}"),
            Some(json!({"title":"pwned"})),
        ),
        (Method::GET, format!("/v1/sessions/{s}/events"), None),
        (
            Method::POST,
            format!("/v1/sessions/{s}/events"),
            Some(json!({"events":[prompt("x")]})),
        ),
        (
            Method::POST,
            format!("/v1/sessions/{s}/archive"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/session_ingress/session/{s}/events"),
            Some(json!({"events":[]})),
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/work/{}/stop", a.work.id),
            Some(json!({"force":true})),
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/bridge/reconnect"),
            Some(json!({"session_id": s})),
        ),
        (
            Method::DELETE,
            format!("/v1/environments/bridge/{env}"),
            None,
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({"environment_id": env})),
        ),
    ];
    for (method, path, body) in cases {
        let what = format!("{method} {path}");
        let (status, body) = call(&server, method, &path, Some(&mallory), body).await?;
        assert_refused(status, &body, 403, &what);
    }
    // Mallory's list is empty; alice's still holds her session, untouched.
    let (status, list) = call(&server, Method::GET, "/v1/sessions", Some(&mallory), None).await?;
    assert_eq!(
        (status, list["data"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let mine = server.sessions().get_session(s).await?;
    assert_eq!(mine.title.as_deref(), Some("test"));
    assert_eq!(mine.session_status, "idle");
    // And a re-registration cannot take over her environment id.
    let (_, taken) = call(
        &server,
        Method::POST,
        "/v1/environments/bridge",
        Some(&mallory),
        Some(json!({"machine_name":"m","directory":"/","branch":"","max_sessions":1,"metadata":{},"environment_id": env})),
    )
    .await?;
    assert_ne!(taken["environment_id"], json!(env));
    let _: CreateSessionRequest = Default::default();
    Ok(())
}
