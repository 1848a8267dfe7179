//! The env-less code-session API client (docs/PROTOCOL.md §10), mirroring the official
//! codeSessionApi.ts: create a code session, then fetch the worker credentials that
//! attach a CCR v2 worker to it.
//!
//! Both calls carry the H-CODE header set (§3.1) and the user token of the client's
//! [`TokenSource`], refreshed once and retried after a 401 (§11.1). On top of that, each
//! call is attempted up to three times with a backoff of 500 ms doubling to at most 4 s,
//! ±25 % (§15, "env-less init retries"), but only after errors worth retrying: transport
//! failures, 429 and 5xx. Every other failure is returned at once.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use switchboard_proto::code::{
    BridgeCredentials, CreateCodeSessionRequest, CreateCodeSessionResponse,
};
use switchboard_proto::ids::CSE_PREFIX;
use switchboard_proto::{is_safe_id, ANTHROPIC_VERSION};

use crate::auth::TokenSource;
use crate::backoff::{exponential, relative_jitter};
use crate::error::{ApiError, Result};
use crate::http::{check_id, lossy_header_value, Call, RestClient};

/// The deadline of each attempt of both calls (§15, "env-less HTTP timeout").
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The header carrying the trusted-device token on `/bridge`, when one is configured.
pub const TRUSTED_DEVICE_HEADER: &str = "x-trusted-device-token";

/// Success statuses of create: the official client accepts 200 and 201.
const CREATED: &[u16] = &[200, 201];

/// Success statuses of `/bridge`: only 200.
const OK: &[u16] = &[200];

/// How often and how patiently a call is retried after a retryable error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// How many attempts in total, at least 1.
    pub attempts: u32,
    /// The delay before the second attempt, doubled before each further one.
    pub base_delay: Duration,
    /// The largest delay, before jitter.
    pub max_delay: Duration,
    /// The relative jitter of each delay (0.25 is ±25 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// The official env-less settings: 3 attempts, 500 ms ×2 ≤ 4 s, ±25 %.
    fn default() -> Self {
        Self {
            attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(4),
            jitter: 0.25,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// Runs `attempt` until it succeeds, fails with an error that is not worth retrying,
    /// or the attempts are used up (then the last error is returned).
    pub(crate) async fn run<T, F, Fut>(&self, context: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let attempts = self.attempts.max(1);
        let mut tried = 0;
        loop {
            tried += 1;
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_retryable() && tried < attempts => {
                    let delay = relative_jitter(
                        exponential(tried - 1, self.base_delay, self.max_delay),
                        self.jitter,
                    );
                    tracing::debug!(context, error = %e, tried, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A client of the env-less code-session API, as the REPL's `/remote-control` uses it.
///
/// Cheap to clone; clones share the HTTP connection pool and the token.
///
/// ```no_run
/// # async fn demo() -> switchboard_client::Result<()> {
/// use switchboard_client::CodeSessionsClient;
///
/// let client = CodeSessionsClient::new("http://127.0.0.1:8787", "sk-my-api-key");
/// let session_id = client.create_code_session("my session", None).await?;
/// let credentials = client.fetch_remote_credentials(&session_id).await?;
/// # let _ = credentials;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CodeSessionsClient {
    rest: RestClient,
    /// The same client plus the trusted-device header, which only the worker credentials
    /// call (`/bridge`) carries.
    credentials_rest: RestClient,
    retry: RetryPolicy,
}

impl CodeSessionsClient {
    /// A client for the server at `base_url` (a trailing slash is ignored and a path
    /// prefix kept) with a fixed user token, so a 401 is final.
    ///
    /// It trusts [`ClientTls::default`](crate::ClientTls::default) for `https`; see
    /// [`with_tls`](Self::with_tls).
    pub fn new(base_url: impl AsRef<str>, token: impl Into<String>) -> Self {
        Self::with_token_source(base_url, TokenSource::new(token))
    }

    /// A client whose user token comes from `token`, whose refresh hook (if any) is called
    /// once after a 401.
    pub fn with_token_source(base_url: impl AsRef<str>, token: TokenSource) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        let rest = RestClient::new(base_url.as_ref(), token, headers);
        Self {
            credentials_rest: rest.clone(),
            rest,
            retry: RetryPolicy::default(),
        }
    }

    /// Uses `http` for every request, e.g. one with TLS or a proxy configured. Its own
    /// timeouts are overridden per call.
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.rest.set_http(http.clone());
        self.credentials_rest.set_http(http);
        self
    }

    /// Trusts `tls`'s roots for `https` (e.g. the system's plus a private CA).
    pub fn with_tls(self, tls: &crate::ClientTls) -> Self {
        self.with_http_client(tls.http_client())
    }

    /// Replaces the retry policy (tests shorten the delays).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sends `X-Trusted-Device-Token` on `/bridge` calls. Characters that cannot go into a
    /// header are replaced by `?`.
    pub fn with_trusted_device_token(mut self, token: impl AsRef<str>) -> Self {
        let mut value = lossy_header_value(token.as_ref());
        value.set_sensitive(true);
        self.credentials_rest
            .set_header(HeaderName::from_static(TRUSTED_DEVICE_HEADER), value);
        self
    }

    /// The base URL, without trailing slash.
    pub fn base_url(&self) -> &str {
        self.rest.base()
    }

    /// The source of the user token.
    pub fn token_source(&self) -> &TokenSource {
        self.rest.token()
    }

    /// The retry policy in use.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// `POST /v1/code/sessions` with `{"title":…,"bridge":{},"tags":…}` (§10.1) and
    /// returns the new session's `cse_…` id.
    ///
    /// Success is 200 or 201. An id that is not `cse_` followed by a safe id fails with
    /// [`ApiError::NotCodeSessionId`], and a body without `session.id` with
    /// [`ApiError::Decode`]; neither is retried.
    pub async fn create_code_session(
        &self,
        title: &str,
        tags: Option<Vec<String>>,
    ) -> Result<String> {
        let body = CreateCodeSessionRequest {
            title: title.to_owned(),
            tags,
            ..Default::default()
        };
        let response: CreateCodeSessionResponse = self
            .retry
            .run("CreateCodeSession", || async {
                let call = Call::new(
                    "CreateCodeSession",
                    Method::POST,
                    "/v1/code/sessions".to_owned(),
                )
                .json(&body)?
                .timeout(CALL_TIMEOUT)
                .accept(CREATED);
                self.rest.call(call).await?.json("CreateCodeSession")
            })
            .await?;
        let id = response.session.id;
        let valid = id
            .strip_prefix(CSE_PREFIX)
            .is_some_and(|body| !body.is_empty() && is_safe_id(&id));
        if valid {
            Ok(id)
        } else {
            Err(ApiError::NotCodeSessionId(id))
        }
    }

    /// `POST /v1/code/sessions/{id}/bridge` with `{}` (§10.2): a fresh worker JWT and a
    /// bumped worker epoch, which supersedes any previous worker of the session.
    ///
    /// Success is 200 only. A body that is not valid credentials (missing fields, an
    /// epoch that is not a safe integer, an empty token) fails with
    /// [`ApiError::Decode`].
    pub async fn fetch_remote_credentials(&self, session_id: &str) -> Result<BridgeCredentials> {
        let session = check_id("session_id", session_id)?;
        let credentials: BridgeCredentials = self
            .retry
            .run("FetchRemoteCredentials", || async {
                let call = Call::new(
                    "FetchRemoteCredentials",
                    Method::POST,
                    format!("/v1/code/sessions/{session}/bridge"),
                )
                .json(&serde_json::json!({}))?
                .timeout(CALL_TIMEOUT)
                .accept(OK);
                self.credentials_rest
                    .call(call)
                    .await?
                    .json("FetchRemoteCredentials")
            })
            .await?;
        if credentials.worker_jwt.is_empty() {
            return Err(ApiError::Decode(
                "FetchRemoteCredentials: empty worker_jwt".to_owned(),
            ));
        }
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::testing::{FakeServer, Reply};

    fn fast(client: CodeSessionsClient) -> CodeSessionsClient {
        client.with_retry(RetryPolicy {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        })
    }

    const CREDENTIALS: &str =
        r#"{"worker_jwt":"jwt","expires_in":3600,"api_base_url":"http://x","worker_epoch":"4"}"#;

    #[tokio::test]
    async fn create_sends_the_code_headers_and_returns_the_cse_id() -> anyhow::Result<()> {
        let server =
            FakeServer::start(vec![Reply::new(201, r#"{"session":{"id":"cse_abcd"}}"#)]).await?;
        let client = fast(CodeSessionsClient::new(&server.base_url, "key"));

        let id = client
            .create_code_session("title", Some(vec!["ccr-mirror".into()]))
            .await?;

        assert_eq!(id, "cse_abcd");
        let sent = &server.requests()[0];
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.target, "/v1/code/sessions");
        assert_eq!(sent.header("authorization"), Some("Bearer key"));
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("anthropic-beta"), None);
        let body: Value = serde_json::from_str(&sent.body)?;
        assert_eq!(
            body,
            json!({"title": "title", "bridge": {}, "tags": ["ccr-mirror"]})
        );
        Ok(())
    }

    #[tokio::test]
    async fn create_rejects_an_id_that_is_not_a_cse_id() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![
            Reply::new(200, r#"{"session":{"id":"session_abcd"}}"#),
            Reply::new(200, r#"{"session":{"id":"cse_../x"}}"#),
            Reply::new(200, r#"{"session":{"id":"cse_"}}"#),
        ])
        .await?;
        let client = fast(CodeSessionsClient::new(&server.base_url, "key"));

        for expected in ["session_abcd", "cse_../x", "cse_"] {
            let result = client.create_code_session("t", None).await;
            assert!(
                matches!(&result, Err(ApiError::NotCodeSessionId(id)) if id == expected),
                "{result:?}"
            );
        }
        assert_eq!(server.requests().len(), 3, "none of them is retried");
        Ok(())
    }

    #[tokio::test]
    async fn create_gives_up_after_three_server_errors() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(503, ""); 4]).await?;
        let client = fast(CodeSessionsClient::new(&server.base_url, "key"));

        let result = client.create_code_session("t", None).await;

        assert!(
            matches!(result, Err(ApiError::Retryable { status: 503, .. })),
            "{result:?}"
        );
        assert_eq!(server.requests().len(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn credentials_are_retried_after_5xx_then_returned() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![
            Reply::new(500, ""),
            Reply::new(502, ""),
            Reply::new(200, CREDENTIALS),
        ])
        .await?;
        let client = fast(CodeSessionsClient::new(&server.base_url, "key"))
            .with_trusted_device_token("device");

        let credentials = client.fetch_remote_credentials("cse_abcd").await?;

        assert_eq!(credentials.worker_jwt, "jwt");
        assert_eq!(credentials.worker_epoch, 4);
        let sent = server.requests();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2].target, "/v1/code/sessions/cse_abcd/bridge");
        assert_eq!(sent[2].body, "{}");
        assert_eq!(sent[2].header("x-trusted-device-token"), Some("device"));
        Ok(())
    }

    #[tokio::test]
    async fn credentials_fail_at_once_on_a_client_error() -> anyhow::Result<()> {
        let server =
            FakeServer::start(vec![Reply::new(404, ""), Reply::new(200, CREDENTIALS)]).await?;
        let client = fast(CodeSessionsClient::new(&server.base_url, "key"));

        let result = client.fetch_remote_credentials("cse_abcd").await;

        assert!(
            matches!(result, Err(ApiError::Fatal { status: 404, .. })),
            "{result:?}"
        );
        assert_eq!(server.requests().len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn credentials_accept_only_200() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(201, CREDENTIALS)]).await?;
        let client = fast(CodeSessionsClient::new(&server.base_url, "key"));

        let result = client.fetch_remote_credentials("cse_abcd").await;

        assert!(
            matches!(result, Err(ApiError::Status { status: 201, .. })),
            "{result:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn malformed_credentials_are_a_decode_error() -> anyhow::Result<()> {
        let bodies = [
            "not json",
            r#"{"worker_jwt":"j"}"#,
            r#"{"worker_jwt":"j","expires_in":1,"api_base_url":"","worker_epoch":9007199254740992}"#,
            r#"{"worker_jwt":"j","expires_in":1,"api_base_url":"","worker_epoch":"-1"}"#,
            r#"{"worker_jwt":"","expires_in":1,"api_base_url":"","worker_epoch":1}"#,
        ];
        let server = FakeServer::start(bodies.iter().map(|b| Reply::new(200, b)).collect()).await?;
        let client = fast(CodeSessionsClient::new(&server.base_url, "key"));

        for body in bodies {
            let result = client.fetch_remote_credentials("cse_abcd").await;
            assert!(
                matches!(result, Err(ApiError::Decode(_))),
                "{body}: {result:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_401_is_retried_once_with_a_refreshed_token() -> anyhow::Result<()> {
        let server =
            FakeServer::start(vec![Reply::new(401, ""), Reply::new(200, CREDENTIALS)]).await?;
        let token = TokenSource::with_refresh("old", |_stale| async { Some("new".to_owned()) });
        let client = fast(CodeSessionsClient::with_token_source(
            &server.base_url,
            token,
        ));

        client.fetch_remote_credentials("cse_abcd").await?;

        let sent = server.requests();
        assert_eq!(sent[0].header("authorization"), Some("Bearer old"));
        assert_eq!(sent[1].header("authorization"), Some("Bearer new"));
        Ok(())
    }

    #[tokio::test]
    async fn an_unsafe_session_id_is_rejected_before_anything_is_sent() {
        let client = CodeSessionsClient::new("http://127.0.0.1:9", "key");

        let result = client.fetch_remote_credentials("cse_a/b").await;

        assert!(
            matches!(result, Err(ApiError::InvalidId { .. })),
            "{result:?}"
        );
    }
}
