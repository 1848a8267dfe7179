//! The Environments API client (docs/PROTOCOL.md §4), mirroring the official bridgeApi.ts:
//! what a bridge (a program that registers an environment and runs its sessions, such
//! as `switchboard bridge`) speaks. [`BridgeApiClient`] keeps the official client's name.
//!
//! Every call carries the H-ENV header set (§3.1). Which bearer token it carries differs:
//! register, stop, reconnect, deregister and archive use the refreshable user token of the
//! client's [`TokenSource`] (one refresh and one retry after a 401, §11.1); poll uses the
//! environment secret and ack, heartbeat and the permission-response event use the work
//! item's ingress token, with no retry. Only 200 and 204 count as success (plus 409 for
//! archive, "already archived"); every other status is mapped by
//! [`ApiError::from_status`](crate::ApiError::from_status). Every id that goes into a path
//! is checked before anything is sent.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};
use switchboard_proto::environments::{
    HeartbeatResponse, ReconnectRequest, RegisterEnvironmentRequest, RegisterEnvironmentResponse,
    StopWorkRequest, WorkResponse,
};
use switchboard_proto::{ANTHROPIC_VERSION, ENVIRONMENTS_BETA};

use crate::auth::TokenSource;
use crate::error::Result;
use crate::http::{check_id, lossy_header_value, Auth, Call, RestClient};

/// The register deadline: bridgeApi.ts gives registration 15 s.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);

/// The deadline of every other Environments call: 10 s, which is also why a server's
/// long-poll must answer well inside 10 s.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The header naming the runner's version.
pub const RUNNER_VERSION_HEADER: &str = "x-environment-runner-version";

/// The runner version sent when none is configured: this crate's own version.
pub const DEFAULT_RUNNER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `reclaim_older_than_ms` the official client sends with every poll (§15).
pub const DEFAULT_RECLAIM_OLDER_THAN_MS: u64 = 5_000;

/// Statuses that count as success when archiving: 409 means "already archived". Every
/// other call accepts only 200 and 204, the default of `Call`.
const ARCHIVE_OK: &[u16] = &[200, 204, 409];

/// A client of the Environments API, as a bridge (`claude remote-control`) uses it.
///
/// Cheap to clone; clones share the HTTP connection pool and the token.
///
/// ```no_run
/// # async fn demo() -> switchboard_client::Result<()> {
/// use switchboard_client::BridgeApiClient;
/// use switchboard_proto::environments::RegisterEnvironmentRequest;
///
/// let client = BridgeApiClient::new("http://127.0.0.1:8787", "sk-my-api-key");
/// let env = client
///     .register_environment(&RegisterEnvironmentRequest {
///         machine_name: "laptop".into(),
///         directory: "/src/app".into(),
///         max_sessions: 1,
///         ..Default::default()
///     })
///     .await?;
/// let work = client.poll_for_work(&env.environment_id, &env.environment_secret, None).await?;
/// # let _ = work;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BridgeApiClient {
    rest: RestClient,
}

impl BridgeApiClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8787` or
    /// `https://host/prefix`; a trailing slash is ignored and a path prefix kept) with a
    /// fixed user token (in Switchboard, the user's API key), so a 401 is final.
    ///
    /// It trusts [`ClientTls::default`](crate::ClientTls::default) for `https`; see
    /// [`with_tls`](Self::with_tls).
    pub fn new(base_url: impl AsRef<str>, token: impl Into<String>) -> Self {
        Self::with_token_source(base_url, TokenSource::new(token))
    }

    /// A client whose user token comes from `token`, whose refresh hook (if any) is called
    /// once after a 401 on the user-token calls.
    pub fn with_token_source(base_url: impl AsRef<str>, token: TokenSource) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        headers.insert(
            "anthropic-beta",
            HeaderValue::from_static(ENVIRONMENTS_BETA),
        );
        headers.insert(
            HeaderName::from_static(RUNNER_VERSION_HEADER),
            HeaderValue::from_static(DEFAULT_RUNNER_VERSION),
        );
        Self {
            rest: RestClient::new(base_url.as_ref(), token, headers),
        }
    }

    /// Sets the `x-environment-runner-version` header (the CLI sends its own version).
    /// Characters that cannot go into a header are replaced by `?`.
    pub fn with_runner_version(mut self, version: impl AsRef<str>) -> Self {
        self.rest.set_header(
            HeaderName::from_static(RUNNER_VERSION_HEADER),
            lossy_header_value(version.as_ref()),
        );
        self
    }

    /// Uses `http` for every request, e.g. one with TLS or a proxy configured. Its own
    /// timeouts are overridden per call.
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.rest.set_http(http);
        self
    }

    /// Trusts `tls`'s roots for `https` (e.g. the system's plus a private CA).
    pub fn with_tls(self, tls: &crate::ClientTls) -> Self {
        self.with_http_client(tls.http_client())
    }

    /// The base URL, without trailing slash.
    pub fn base_url(&self) -> &str {
        self.rest.base()
    }

    /// The source of the user token.
    pub fn token_source(&self) -> &TokenSource {
        self.rest.token()
    }

    /// `POST /v1/environments/bridge` (§4.1): registers this machine as an environment,
    /// or re-attaches to `request.environment_id`. The server may hand back a different
    /// id than the one asked for; compare.
    pub async fn register_environment(
        &self,
        request: &RegisterEnvironmentRequest,
    ) -> Result<RegisterEnvironmentResponse> {
        if let Some(id) = &request.environment_id {
            check_id("environment_id", id)?;
        }
        let call = Call::new(
            "Registration",
            Method::POST,
            "/v1/environments/bridge".to_owned(),
        )
        .json(request)?
        .timeout(REGISTER_TIMEOUT);
        self.rest.call(call).await?.json("Registration")
    }

    /// `GET /v1/environments/{env}/work/poll` (§4.2), authenticated with the environment
    /// secret. Returns `None` when there is no work (200 with an empty or `null` body, or
    /// 204). `reclaim_older_than_ms` asks the server to hand out again work that was
    /// delivered but not acknowledged for that long; the official client sends
    /// [`DEFAULT_RECLAIM_OLDER_THAN_MS`].
    pub async fn poll_for_work(
        &self,
        environment_id: &str,
        environment_secret: &str,
        reclaim_older_than_ms: Option<u64>,
    ) -> Result<Option<WorkResponse>> {
        let env = check_id("environment_id", environment_id)?;
        let mut call = Call::new(
            "Poll",
            Method::GET,
            format!("/v1/environments/{env}/work/poll"),
        )
        .auth(Auth::Fixed(environment_secret));
        if let Some(ms) = reclaim_older_than_ms {
            call = call.query("reclaim_older_than_ms", ms);
        }
        self.rest.call(call).await?.json_opt("Poll")
    }

    /// `POST /v1/environments/{env}/work/{work}/ack` (§4.3), authenticated with the ingress
    /// token from the work item's secret.
    pub async fn acknowledge_work(
        &self,
        environment_id: &str,
        work_id: &str,
        ingress_token: &str,
    ) -> Result<()> {
        let env = check_id("environment_id", environment_id)?;
        let work = check_id("work_id", work_id)?;
        let call = Call::new(
            "Acknowledge",
            Method::POST,
            format!("/v1/environments/{env}/work/{work}/ack"),
        )
        .json(&json!({}))?
        .auth(Auth::Fixed(ingress_token));
        self.rest.call(call).await.map(drop)
    }

    /// `POST /v1/environments/{env}/work/{work}/heartbeat` (§4.4), authenticated with the
    /// ingress token. Returns the lease state, or `None` when the server answered 204 or
    /// with an empty body (which the official client also accepts).
    pub async fn heartbeat_work(
        &self,
        environment_id: &str,
        work_id: &str,
        ingress_token: &str,
    ) -> Result<Option<HeartbeatResponse>> {
        let env = check_id("environment_id", environment_id)?;
        let work = check_id("work_id", work_id)?;
        let call = Call::new(
            "Heartbeat",
            Method::POST,
            format!("/v1/environments/{env}/work/{work}/heartbeat"),
        )
        .json(&json!({}))?
        .auth(Auth::Fixed(ingress_token));
        self.rest.call(call).await?.json_opt("Heartbeat")
    }

    /// `POST /v1/environments/{env}/work/{work}/stop` (§4.5) with `{"force": force}`.
    /// `force: false` means the session ended (the server may re-dispatch it); `force: true`
    /// is a shutdown of a still-running session.
    pub async fn stop_work(&self, environment_id: &str, work_id: &str, force: bool) -> Result<()> {
        let env = check_id("environment_id", environment_id)?;
        let work = check_id("work_id", work_id)?;
        let call = Call::new(
            "StopWork",
            Method::POST,
            format!("/v1/environments/{env}/work/{work}/stop"),
        )
        .json(&StopWorkRequest { force })?;
        self.rest.call(call).await.map(drop)
    }

    /// `POST /v1/environments/{env}/bridge/reconnect` (§4.6) with `{"session_id": …}`: asks
    /// the server to re-queue the session, so the next poll returns a fresh work item for it.
    pub async fn reconnect_session(&self, environment_id: &str, session_id: &str) -> Result<()> {
        let env = check_id("environment_id", environment_id)?;
        let session = check_id("session_id", session_id)?;
        let call = Call::new(
            "ReconnectSession",
            Method::POST,
            format!("/v1/environments/{env}/bridge/reconnect"),
        )
        .json(&ReconnectRequest {
            session_id: session.to_owned(),
        })?;
        self.rest.call(call).await.map(drop)
    }

    /// `DELETE /v1/environments/bridge/{env}` (§4.7): takes the environment offline.
    pub async fn deregister_environment(&self, environment_id: &str) -> Result<()> {
        let env = check_id("environment_id", environment_id)?;
        let call = Call::new(
            "Deregister",
            Method::DELETE,
            format!("/v1/environments/bridge/{env}"),
        );
        self.rest.call(call).await.map(drop)
    }

    /// `POST /v1/sessions/{id}/archive` (§6.4) with the H-ENV headers, as the bridge does
    /// at shutdown. A 409 ("already archived") counts as success.
    pub async fn archive_session(&self, session_id: &str) -> Result<()> {
        let session = check_id("session_id", session_id)?;
        let call = Call::new(
            "ArchiveSession",
            Method::POST,
            format!("/v1/sessions/{session}/archive"),
        )
        .json(&json!({}))?
        .accept(ARCHIVE_OK);
        self.rest.call(call).await.map(drop)
    }

    /// `POST /v1/sessions/{id}/events` with `{"events":[{"type":"control_response",
    /// "response": response}]}`, authenticated with the ingress token (§4.8; defined but
    /// unused by the official client).
    pub async fn send_permission_response_event(
        &self,
        session_id: &str,
        response: Value,
        ingress_token: &str,
    ) -> Result<()> {
        let session = check_id("session_id", session_id)?;
        let body = json!({ "events": [{ "type": "control_response", "response": response }] });
        let call = Call::new(
            "SendPermissionResponseEvent",
            Method::POST,
            format!("/v1/sessions/{session}/events"),
        )
        .json(&body)?
        .auth(Auth::Fixed(ingress_token));
        self.rest.call(call).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use crate::testing::{FakeServer, Reply};

    /// Port 9 (discard) on loopback: nothing listens there, so any request that were
    /// sent would fail with a transport error rather than an id error.
    const DEAD_SERVER: &str = "http://127.0.0.1:9";

    fn assert_invalid_id(result: Result<impl std::fmt::Debug>, expected: &str) {
        match result {
            Err(ApiError::InvalidId { what, .. }) => assert_eq!(what, expected),
            other => panic!("expected InvalidId({expected}), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unsafe_ids_are_rejected_before_anything_is_sent() {
        let client = BridgeApiClient::new(DEAD_SERVER, "key");

        assert_invalid_id(
            client.poll_for_work("../admin", "secret", None).await,
            "environment_id",
        );
        assert_invalid_id(
            client.acknowledge_work("env_1", "w/1", "tok").await,
            "work_id",
        );
        assert_invalid_id(
            client.heartbeat_work("env 1", "work_1", "tok").await,
            "environment_id",
        );
        assert_invalid_id(client.stop_work("env_1", "work.1", true).await, "work_id");
        assert_invalid_id(
            client.reconnect_session("env_1", "cse_%2F").await,
            "session_id",
        );
        assert_invalid_id(client.deregister_environment("").await, "environment_id");
        assert_invalid_id(client.archive_session("session_../x").await, "session_id");
        assert_invalid_id(
            client
                .send_permission_response_event("a/b", json!({}), "tok")
                .await,
            "session_id",
        );
        let request = RegisterEnvironmentRequest {
            environment_id: Some("env/..".into()),
            ..Default::default()
        };
        assert_invalid_id(
            client.register_environment(&request).await,
            "environment_id",
        );
    }

    #[tokio::test]
    async fn safe_ids_do_reach_the_network() {
        let client = BridgeApiClient::new(DEAD_SERVER, "key");

        let result = client.deregister_environment("env_1").await;

        assert!(matches!(result, Err(ApiError::Transport(_))), "{result:?}");
    }

    #[tokio::test]
    async fn register_sends_the_environment_headers_and_reads_the_answer() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(
            200,
            r#"{"environment_id":"env_1","environment_secret":"sec"}"#,
        )])
        .await?;
        let client = BridgeApiClient::new(&server.base_url, "key").with_runner_version("2.1.112");
        let request = RegisterEnvironmentRequest {
            machine_name: "box".into(),
            ..Default::default()
        };

        let answer = client.register_environment(&request).await?;

        assert_eq!(answer.environment_id, "env_1");
        assert_eq!(answer.environment_secret, "sec");
        let sent = &server.requests()[0];
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.target, "/v1/environments/bridge");
        assert_eq!(sent.header("authorization"), Some("Bearer key"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(
            sent.header("anthropic-beta"),
            Some("environments-2025-11-01")
        );
        assert_eq!(sent.header("x-environment-runner-version"), Some("2.1.112"));
        let body: Value = serde_json::from_str(&sent.body)?;
        assert_eq!(body["machine_name"], "box");
        Ok(())
    }

    #[tokio::test]
    async fn register_answered_with_201_is_an_error() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(
            201,
            r#"{"environment_id":"env_1","environment_secret":"sec"}"#,
        )])
        .await?;
        let client = BridgeApiClient::new(&server.base_url, "key");

        let result = client
            .register_environment(&RegisterEnvironmentRequest::default())
            .await;

        assert!(
            matches!(result, Err(ApiError::Status { status: 201, .. })),
            "{result:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_401_is_retried_once_with_a_refreshed_token() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(401, ""), Reply::new(204, "")]).await?;
        let token = TokenSource::with_refresh("stale", |_| async { Some("fresh".to_owned()) });
        let client = BridgeApiClient::with_token_source(&server.base_url, token);

        client.stop_work("env_1", "work_1", true).await?;

        let sent = server.requests();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].header("authorization"), Some("Bearer stale"));
        assert_eq!(sent[1].header("authorization"), Some("Bearer fresh"));
        assert_eq!(sent[1].target, "/v1/environments/env_1/work/work_1/stop");
        assert_eq!(
            serde_json::from_str::<Value>(&sent[1].body)?,
            json!({"force": true})
        );
        assert_eq!(client.token_source().token(), "fresh");
        Ok(())
    }

    #[tokio::test]
    async fn a_second_401_after_refresh_is_fatal() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(401, ""), Reply::new(401, "")]).await?;
        let token = TokenSource::with_refresh("stale", |_| async { Some("fresh".to_owned()) });
        let client = BridgeApiClient::with_token_source(&server.base_url, token);

        let result = client.deregister_environment("env_1").await;

        assert!(
            matches!(result, Err(ApiError::Fatal { status: 401, .. })),
            "{result:?}"
        );
        assert_eq!(server.requests().len(), 2);
        assert_eq!(server.requests()[0].method, "DELETE");
        Ok(())
    }

    #[tokio::test]
    async fn a_401_without_a_refresh_hook_is_fatal_at_once() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(401, ""), Reply::new(204, "")]).await?;
        let client = BridgeApiClient::new(&server.base_url, "key");

        let result = client.reconnect_session("env_1", "session_1").await;

        assert!(
            matches!(result, Err(ApiError::Fatal { status: 401, .. })),
            "{result:?}"
        );
        assert_eq!(server.requests().len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn poll_uses_the_environment_secret_and_is_not_retried() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(401, ""), Reply::new(204, "")]).await?;
        let token = TokenSource::with_refresh("key", |_| async { Some("fresh".to_owned()) });
        let client = BridgeApiClient::with_token_source(&server.base_url, token);

        let result = client.poll_for_work("env_1", "secret", Some(5000)).await;

        assert!(
            matches!(result, Err(ApiError::Fatal { status: 401, .. })),
            "{result:?}"
        );
        let sent = server.requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].header("authorization"), Some("Bearer secret"));
        assert_eq!(
            sent[0].target,
            "/v1/environments/env_1/work/poll?reclaim_older_than_ms=5000"
        );
        Ok(())
    }

    #[tokio::test]
    async fn poll_reads_no_work_from_204_null_and_empty_bodies() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![
            Reply::new(204, ""),
            Reply::new(200, "null"),
            Reply::new(200, ""),
        ])
        .await?;
        let client = BridgeApiClient::new(&server.base_url, "key");

        for _ in 0..3 {
            assert_eq!(client.poll_for_work("env_1", "secret", None).await?, None);
        }
        assert_eq!(
            server.requests()[0].target,
            "/v1/environments/env_1/work/poll"
        );
        Ok(())
    }

    #[tokio::test]
    async fn poll_returns_a_work_item() -> anyhow::Result<()> {
        let work = json!({
            "id": "work_1", "type": "work", "environment_id": "env_1", "state": "queued",
            "data": {"type": "session", "id": "cse_abcd"}, "secret": "e30",
            "created_at": "2025-01-01T00:00:00Z"
        });
        let server = FakeServer::start(vec![Reply::new(200, &work.to_string())]).await?;
        let client = BridgeApiClient::new(&server.base_url, "key");

        let item = client.poll_for_work("env_1", "secret", None).await?;

        assert_eq!(item.map(|w| w.data.id), Some("cse_abcd".to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn archive_treats_409_as_already_archived() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(409, "")]).await?;
        let client = BridgeApiClient::new(&server.base_url, "key");

        client.archive_session("session_abcd").await?;

        assert_eq!(
            server.requests()[0].target,
            "/v1/sessions/session_abcd/archive"
        );
        Ok(())
    }

    #[tokio::test]
    async fn heartbeat_reads_the_lease_and_tolerates_204() -> anyhow::Result<()> {
        let lease =
            r#"{"lease_extended":true,"state":"active","last_heartbeat":"t","ttl_seconds":300}"#;
        let server = FakeServer::start(vec![Reply::new(200, lease), Reply::new(204, "")]).await?;
        let client = BridgeApiClient::new(&server.base_url, "key");

        let first = client.heartbeat_work("env_1", "work_1", "ingress").await?;
        let second = client.heartbeat_work("env_1", "work_1", "ingress").await?;

        assert_eq!(first.map(|h| h.ttl_seconds), Some(300));
        assert_eq!(second, None);
        assert_eq!(
            server.requests()[0].header("authorization"),
            Some("Bearer ingress")
        );
        Ok(())
    }

    #[tokio::test]
    async fn permission_responses_are_wrapped_in_a_control_response_event() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(200, "{}")]).await?;
        let client = BridgeApiClient::new(&server.base_url, "key");
        let response = json!({"subtype": "success", "request_id": "r1"});

        client
            .send_permission_response_event("cse_abcd", response.clone(), "ingress")
            .await?;

        let sent = &server.requests()[0];
        assert_eq!(sent.target, "/v1/sessions/cse_abcd/events");
        assert_eq!(sent.header("authorization"), Some("Bearer ingress"));
        let body: Value = serde_json::from_str(&sent.body)?;
        assert_eq!(
            body,
            json!({"events": [{"type": "control_response", "response": response}]})
        );
        Ok(())
    }

    #[tokio::test]
    async fn server_errors_are_retryable_and_carry_the_message() -> anyhow::Result<()> {
        let server =
            FakeServer::start(vec![Reply::new(503, r#"{"error":{"message":"busy"}}"#)]).await?;
        let client = BridgeApiClient::new(&server.base_url, "key");

        let result = client.acknowledge_work("env_1", "work_1", "ingress").await;

        match result {
            Err(ApiError::Retryable {
                status: 503,
                message,
                ..
            }) => assert_eq!(message, "busy"),
            other => anyhow::bail!("expected a retryable error, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn the_base_url_loses_its_trailing_slash_and_keeps_its_prefix() {
        let client = BridgeApiClient::new("https://example.com/rcs/", "key");
        assert_eq!(client.base_url(), "https://example.com/rcs");
    }
}
