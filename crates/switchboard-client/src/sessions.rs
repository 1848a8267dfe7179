//! The Sessions compat API client (docs/PROTOCOL.md §6, §13.2 and §13.3): what a viewer such
//! as `claude --remote` or the web UI uses to create, read, rename, archive and post to
//! sessions, and to page through their history.
//!
//! Every call carries the H-SES header set (§3.1) and the user token of the client's
//! [`TokenSource`], refreshed once and retried after a 401. Statuses outside each call's
//! success set are mapped by [`ApiError::from_status`](crate::ApiError::from_status), and
//! every id that goes into a path is checked before anything is sent.
//!
//! Session ids are sent as given. The official client converts `cse_<body>` to
//! `session_<body>` before these calls; a server must accept both, and
//! [`switchboard_proto::SessionId`] converts between them.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::Value;
use switchboard_proto::sessions::{
    CreateSessionRequest, EventsRequest, Listing, Page, PatchSessionRequest, SessionResource,
    SessionShare, ShareRequest,
};
use switchboard_proto::{ANTHROPIC_VERSION, SESSIONS_BETA};

use crate::auth::TokenSource;
use crate::error::Result;
use crate::http::{check_id, lossy_header_value, Call, RestClient};

/// The `x-organization-uuid` a self-hosted client sends when it knows no organization.
pub const DEFAULT_ORGANIZATION: &str = "self-hosted";

/// The header naming the organization.
pub const ORGANIZATION_HEADER: &str = "x-organization-uuid";

/// The deadline of session creation: the REPL aborts it after 15 s.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(15);

/// The deadline of posting events: the viewer waits 30 s, since the upstream endpoint may
/// block until a worker is ready.
pub const EVENTS_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadline of every other Sessions call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Success statuses of create and of posting events.
const CREATED: &[u16] = &[200, 201];

/// Success statuses of reads and of the title update.
const OK: &[u16] = &[200];

/// Success statuses of archive: 409 means "already archived".
const ARCHIVE_OK: &[u16] = &[200, 204, 409];

/// Which page of a session's history to read (§6.5).
///
/// The default asks for the server's default page size starting from the oldest event;
/// set `anchor_to_latest` for the newest page, or `before_id` / `after_id` to page from an
/// event id a previous page returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// How many events at most (the official client asks for 100).
    pub limit: Option<u32>,
    /// Return the newest page instead of the oldest.
    pub anchor_to_latest: bool,
    /// Return events older than this event id.
    pub before_id: Option<String>,
    /// Return events newer than this event id.
    pub after_id: Option<String>,
}

impl HistoryQuery {
    /// The newest `limit` events, as the official client asks for them first.
    pub fn latest(limit: u32) -> Self {
        Self {
            limit: Some(limit),
            anchor_to_latest: true,
            ..Self::default()
        }
    }
}

/// A client of the Sessions compat API.
///
/// Cheap to clone; clones share the HTTP connection pool and the token.
///
/// ```no_run
/// # async fn demo() -> switchboard_client::Result<()> {
/// use serde_json::json;
/// use switchboard_client::{HistoryQuery, SessionsClient};
/// use switchboard_proto::sessions::CreateSessionRequest;
///
/// let client = SessionsClient::new("http://127.0.0.1:8787", "sk-my-api-key");
/// let session = client.create_session(&CreateSessionRequest::default()).await?;
/// let prompt = json!({"type": "user", "message": {"role": "user", "content": "hi"}});
/// client.send_events(&session.id, vec![prompt]).await?;
/// let page = client.history(&session.id, HistoryQuery::latest(100)).await?;
/// # let _ = page;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SessionsClient {
    pub(crate) rest: RestClient,
}

impl SessionsClient {
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
        headers.insert("anthropic-beta", HeaderValue::from_static(SESSIONS_BETA));
        headers.insert(
            HeaderName::from_static(ORGANIZATION_HEADER),
            HeaderValue::from_static(DEFAULT_ORGANIZATION),
        );
        Self {
            rest: RestClient::new(base_url.as_ref(), token, headers),
        }
    }

    /// Sets the `x-organization-uuid` header (default [`DEFAULT_ORGANIZATION`]).
    /// Characters that cannot go into a header are replaced by `?`.
    pub fn with_organization(mut self, organization: impl AsRef<str>) -> Self {
        self.rest.set_header(
            HeaderName::from_static(ORGANIZATION_HEADER),
            lossy_header_value(organization.as_ref()),
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

    /// `POST /v1/sessions` (§6.1). With an `environment_id`, the server queues a work item
    /// for that environment. Success is 200 or 201.
    pub async fn create_session(&self, request: &CreateSessionRequest) -> Result<SessionResource> {
        if let Some(id) = &request.environment_id {
            check_id("environment_id", id)?;
        }
        let call = Call::new("CreateSession", Method::POST, "/v1/sessions".to_owned())
            .json(request)?
            .timeout(CREATE_TIMEOUT)
            .accept(CREATED);
        self.rest.call(call).await?.json("CreateSession")
    }

    /// `GET /v1/sessions/{id}` (§6.2).
    pub async fn get_session(&self, session_id: &str) -> Result<SessionResource> {
        let session = check_id("session_id", session_id)?;
        let call = Call::new("GetSession", Method::GET, format!("/v1/sessions/{session}"))
            .timeout(CALL_TIMEOUT)
            .accept(OK);
        self.rest.call(call).await?.json("GetSession")
    }

    /// `PATCH /v1/sessions/{id}` with `{"title": …}` (§6.3).
    pub async fn update_title(&self, session_id: &str, title: impl Into<String>) -> Result<()> {
        let session = check_id("session_id", session_id)?;
        let body = PatchSessionRequest {
            title: Some(title.into()),
        };
        let call = Call::new(
            "UpdateTitle",
            Method::PATCH,
            format!("/v1/sessions/{session}"),
        )
        .json(&body)?
        .timeout(CALL_TIMEOUT)
        .accept(OK);
        self.rest.call(call).await.map(drop)
    }

    /// `POST /v1/sessions/{id}/archive` (§6.4). A 409 ("already archived") counts as
    /// success.
    pub async fn archive_session(&self, session_id: &str) -> Result<()> {
        let session = check_id("session_id", session_id)?;
        let call = Call::new(
            "ArchiveSession",
            Method::POST,
            format!("/v1/sessions/{session}/archive"),
        )
        .json(&serde_json::json!({}))?
        .timeout(CALL_TIMEOUT)
        .accept(ARCHIVE_OK);
        self.rest.call(call).await.map(drop)
    }

    /// `POST /v1/sessions/{id}/events` with `{"events": events}` (§13.2): a prompt, a
    /// permission answer or an interrupt from a viewer. Returns the server's JSON answer
    /// (`null` when the body is empty). Success is 200 or 201; the deadline is 30 s.
    pub async fn send_events(&self, session_id: &str, events: Vec<Value>) -> Result<Value> {
        let session = check_id("session_id", session_id)?;
        let call = Call::new(
            "SendEvents",
            Method::POST,
            format!("/v1/sessions/{session}/events"),
        )
        .json(&EventsRequest { events })?
        .timeout(EVENTS_TIMEOUT)
        .accept(CREATED);
        let answer = self.rest.call(call).await?;
        Ok(answer.json_opt("SendEvents")?.unwrap_or(Value::Null))
    }

    /// `POST /web/pairings` (a Switchboard extension): a single-use link that signs a
    /// browser in as this key's owner for a few minutes, then opens `next` (an app path
    /// such as `/s/session_…`). Returns the link.
    pub async fn create_pairing(&self, next: Option<&str>) -> Result<String> {
        let call = Call::new("CreatePairing", Method::POST, "/web/pairings".to_owned())
            .json(&serde_json::json!({ "next": next }))?
            .timeout(CALL_TIMEOUT)
            .accept(OK);
        let answer: Value = self.rest.call(call).await?.json("CreatePairing")?;
        answer["url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| crate::ApiError::Decode("CreatePairing: no url in the answer".into()))
    }

    /// `GET /v1/sessions/{id}/events` (§6.5): one page of the session's history, oldest
    /// event first.
    pub async fn history(&self, session_id: &str, query: HistoryQuery) -> Result<Page<Value>> {
        let session = check_id("session_id", session_id)?;
        let mut call = Call::new(
            "History",
            Method::GET,
            format!("/v1/sessions/{session}/events"),
        )
        .timeout(CALL_TIMEOUT)
        .accept(OK);
        if let Some(limit) = query.limit {
            call = call.query("limit", limit);
        }
        if query.anchor_to_latest {
            call = call.query("anchor_to_latest", true);
        }
        if let Some(before) = query.before_id {
            call = call.query("before_id", before);
        }
        if let Some(after) = query.after_id {
            call = call.query("after_id", after);
        }
        self.rest.call(call).await?.json("History")
    }

    /// `GET /v1/sessions` (§6.5): the user's sessions, at most `limit` of them when given.
    pub async fn list_sessions(&self, limit: Option<u32>) -> Result<Page<SessionResource>> {
        let mut call = Call::new("ListSessions", Method::GET, "/v1/sessions".to_owned())
            .timeout(CALL_TIMEOUT)
            .accept(OK);
        if let Some(limit) = limit {
            call = call.query("limit", limit);
        }
        self.rest.call(call).await?.json("ListSessions")
    }

    /// `PUT /v1/sessions/{id}/shares/{owner}` (§18.6): shares one of the key's owner's
    /// sessions with the owner named `owner` at `role`, or changes the role. Needs an
    /// `admin` key.
    pub async fn share_session(
        &self,
        session_id: &str,
        owner: &str,
        role: &str,
    ) -> Result<SessionShare> {
        let session = check_id("session_id", session_id)?;
        let owner = check_id("owner", owner)?;
        let call = Call::new(
            "ShareSession",
            Method::PUT,
            format!("/v1/sessions/{session}/shares/{owner}"),
        )
        .json(&ShareRequest {
            role: role.to_owned(),
        })?
        .timeout(CALL_TIMEOUT)
        .accept(OK);
        self.rest.call(call).await?.json("ShareSession")
    }

    /// `DELETE /v1/sessions/{id}/shares/{owner}` (§18.6): ends a share; that owner's
    /// viewer sockets on the session close.
    pub async fn unshare_session(&self, session_id: &str, owner: &str) -> Result<()> {
        let session = check_id("session_id", session_id)?;
        let owner = check_id("owner", owner)?;
        let call = Call::new(
            "UnshareSession",
            Method::DELETE,
            format!("/v1/sessions/{session}/shares/{owner}"),
        )
        .timeout(CALL_TIMEOUT)
        .accept(OK);
        self.rest.call(call).await.map(drop)
    }

    /// `GET /v1/sessions/{id}/shares` (§18.6): the owners a session is shared with.
    pub async fn session_shares(&self, session_id: &str) -> Result<Vec<SessionShare>> {
        let session = check_id("session_id", session_id)?;
        let call = Call::new(
            "SessionShares",
            Method::GET,
            format!("/v1/sessions/{session}/shares"),
        )
        .timeout(CALL_TIMEOUT)
        .accept(OK);
        let listing: Listing<SessionShare> = self.rest.call(call).await?.json("SessionShares")?;
        Ok(listing.data)
    }

    /// `GET /v1/shared_sessions` (§18.6): the sessions other owners shared with the key's
    /// owner, each with `shared_role`.
    pub async fn shared_sessions(&self) -> Result<Vec<SessionResource>> {
        let call = Call::new(
            "SharedSessions",
            Method::GET,
            "/v1/shared_sessions".to_owned(),
        )
        .timeout(CALL_TIMEOUT)
        .accept(OK);
        let listing: Listing<SessionResource> =
            self.rest.call(call).await?.json("SharedSessions")?;
        Ok(listing.data)
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;
    use serde_json::json;

    use super::*;
    use crate::error::ApiError;
    use crate::testing::{FakeServer, Reply};

    /// Nothing listens on loopback port 9, so a request that were sent would fail with a
    /// transport error rather than an id error.
    const DEAD_SERVER: &str = "http://127.0.0.1:9";

    fn assert_invalid_session_id(result: Result<impl std::fmt::Debug>) {
        assert!(
            matches!(
                result,
                Err(ApiError::InvalidId {
                    what: "session_id",
                    ..
                })
            ),
            "expected an invalid session id, got {result:?}"
        );
    }

    #[tokio::test]
    async fn unsafe_session_ids_are_rejected_before_anything_is_sent() {
        let client = SessionsClient::new(DEAD_SERVER, "key");

        assert_invalid_session_id(client.get_session("../v1/environments").await);
        assert_invalid_session_id(client.update_title("a/b", "t").await);
        assert_invalid_session_id(client.archive_session("a.b").await);
        assert_invalid_session_id(client.send_events("a?b", vec![]).await);
        assert_invalid_session_id(client.history("", HistoryQuery::default()).await);
    }

    #[tokio::test]
    async fn an_unsafe_environment_id_is_rejected_on_create() {
        let client = SessionsClient::new(DEAD_SERVER, "key");
        let request = CreateSessionRequest {
            environment_id: Some("env/1".into()),
            ..Default::default()
        };

        let result = client.create_session(&request).await;

        assert!(
            matches!(
                result,
                Err(ApiError::InvalidId {
                    what: "environment_id",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    fn session_json(id: &str) -> String {
        json!({
            "type": "session", "id": id, "title": null, "session_status": "idle",
            "environment_id": null, "created_at": "t", "updated_at": "t",
            "session_context": {}
        })
        .to_string()
    }

    #[tokio::test]
    async fn create_accepts_201_and_sends_the_sessions_headers() -> anyhow::Result<()> {
        let server =
            FakeServer::start(vec![Reply::new(201, &session_json("session_abcd"))]).await?;
        let client = SessionsClient::new(format!("{}/", server.base_url), "key");

        let session = client
            .create_session(&CreateSessionRequest::default())
            .await?;

        assert_eq!(session.id, "session_abcd");
        let sent = &server.requests()[0];
        assert_eq!(sent.target, "/v1/sessions");
        assert_eq!(sent.header("authorization"), Some("Bearer key"));
        assert_eq!(sent.header("anthropic-beta"), Some("ccr-byoc-2025-07-29"));
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(sent.header("x-organization-uuid"), Some("self-hosted"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        Ok(())
    }

    #[tokio::test]
    async fn history_sends_only_the_query_parameters_that_are_set() -> anyhow::Result<()> {
        let page = r#"{"data":[{"type":"user"}],"has_more":false,"first_id":"1","last_id":"1"}"#;
        let server = FakeServer::start(vec![Reply::new(200, page), Reply::new(200, page)]).await?;
        let client = SessionsClient::new(&server.base_url, "key");

        let first = client
            .history("session_abcd", HistoryQuery::latest(100))
            .await?;
        let query = HistoryQuery {
            before_id: Some("42".into()),
            ..HistoryQuery::default()
        };
        client.history("session_abcd", query).await?;

        assert_eq!(first.data.len(), 1);
        let sent = server.requests();
        assert_eq!(
            sent[0].target,
            "/v1/sessions/session_abcd/events?limit=100&anchor_to_latest=true"
        );
        assert_eq!(
            sent[1].target,
            "/v1/sessions/session_abcd/events?before_id=42"
        );
        Ok(())
    }

    #[tokio::test]
    async fn send_events_wraps_the_events_and_returns_the_answer() -> anyhow::Result<()> {
        let server = FakeServer::start(vec![Reply::new(200, r#"{"ok":true}"#)]).await?;
        let client = SessionsClient::new(&server.base_url, "key");
        let prompt = json!({"type": "user", "message": {"role": "user", "content": "hi"}});

        let answer = client
            .send_events("session_abcd", vec![prompt.clone()])
            .await?;

        assert_eq!(answer, json!({"ok": true}));
        let body: serde_json::Value = serde_json::from_str(&server.requests()[0].body)?;
        assert_eq!(body, json!({"events": [prompt]}));
        Ok(())
    }

    #[tokio::test]
    async fn get_session_maps_404_to_a_fatal_error() -> anyhow::Result<()> {
        let body = r#"{"error":{"type":"not_found_error","message":"no such session"}}"#;
        let server = FakeServer::start(vec![Reply::new(404, body)]).await?;
        let client = SessionsClient::new(&server.base_url, "key");

        let result = client.get_session("session_abcd").await;

        let err = result.err().context("a 404 must be an error")?;
        assert!(err.is_fatal());
        assert_eq!(err.kind(), Some("not_found_error"));
        Ok(())
    }

    #[tokio::test]
    async fn a_bad_base_url_is_an_invalid_request_not_a_transport_error() {
        let client = SessionsClient::new("not a url", "key");

        let result = client.list_sessions(None).await;

        assert!(
            matches!(result, Err(ApiError::InvalidRequest(_))),
            "{result:?}"
        );
    }
}
