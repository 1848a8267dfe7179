//! Request plumbing shared by the REST clients: fixed headers, per-call timeouts, the
//! one-refresh retry after a 401 (bridgeApi.ts `withOAuthRetry`, docs/PROTOCOL.md §11.1) and
//! reading answers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchboard_proto::is_safe_id;

use crate::auth::TokenSource;
use crate::error::{error_from_response, ApiError, Result};

/// Which bearer token a call carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// The [`TokenSource`] token, refreshed once and retried after a 401.
    Refreshable,
    /// A fixed credential (environment secret, ingress token); a 401 is final at once.
    Fixed(&'a str),
}

/// One request, described before it is sent so that it can be sent twice.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// What the call is, for logs, e.g. `"Registration"`.
    pub(crate) context: &'static str,
    /// The HTTP method.
    pub(crate) method: Method,
    /// The path below the base URL, starting with `/`.
    pub(crate) path: String,
    /// Query parameters.
    pub(crate) query: Vec<(&'static str, String)>,
    /// The JSON body, already encoded.
    pub(crate) body: Option<Bytes>,
    /// The whole request's deadline.
    pub(crate) timeout: Duration,
    /// The credential.
    pub(crate) auth: Auth<'a>,
    /// The statuses that count as success.
    pub(crate) accept: &'static [u16],
}

impl<'a> Call<'a> {
    /// A call without body or query that accepts 200 and 204.
    pub(crate) fn new(context: &'static str, method: Method, path: String) -> Self {
        Self {
            context,
            method,
            path,
            query: Vec::new(),
            body: None,
            timeout: Duration::from_secs(10),
            auth: Auth::Refreshable,
            accept: &[200, 204],
        }
    }

    /// Sets the JSON body.
    pub(crate) fn json(mut self, body: &impl Serialize) -> Result<Self> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ApiError::Decode(format!("could not encode the request body: {e}")))?;
        self.body = Some(Bytes::from(bytes));
        Ok(self)
    }

    /// Sets the deadline.
    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the credential.
    pub(crate) fn auth(mut self, auth: Auth<'a>) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the statuses that count as success.
    pub(crate) fn accept(mut self, accept: &'static [u16]) -> Self {
        self.accept = accept;
        self
    }

    /// Adds a query parameter.
    pub(crate) fn query(mut self, key: &'static str, value: impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }
}

/// An accepted answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status, one of the call's accepted ones.
    pub(crate) status: u16,
    /// The whole body.
    pub(crate) body: Bytes,
}

impl Answer {
    /// True when the body carries nothing: 204, empty, whitespace or `null`.
    pub(crate) fn is_empty(&self) -> bool {
        if self.status == 204 {
            return true;
        }
        let text = self.body.trim_ascii();
        text.is_empty() || text == b"null"
    }

    /// Decodes the body as JSON.
    pub(crate) fn json<T: DeserializeOwned>(&self, context: &'static str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::Decode(format!("{context}: {e}")))
    }

    /// Decodes the body as JSON, or `None` when it carries nothing.
    pub(crate) fn json_opt<T: DeserializeOwned>(&self, context: &'static str) -> Result<Option<T>> {
        if self.is_empty() {
            Ok(None)
        } else {
            self.json(context).map(Some)
        }
    }
}

/// A base URL, a token source, fixed headers and an HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct RestClient {
    http: reqwest::Client,
    base: Arc<str>,
    token: TokenSource,
    headers: Arc<HeaderMap>,
}

impl RestClient {
    /// A client for `base` (trailing slashes removed, any path prefix kept).
    pub(crate) fn new(base: &str, token: TokenSource, headers: HeaderMap) -> Self {
        Self {
            http: crate::tls::ClientTls::default().http_client(),
            base: Arc::from(base.trim_end_matches('/')),
            token,
            headers: Arc::new(headers),
        }
    }

    /// The base URL without trailing slash.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The token source.
    pub(crate) fn token(&self) -> &TokenSource {
        &self.token
    }

    /// Replaces the HTTP client.
    pub(crate) fn set_http(&mut self, http: reqwest::Client) {
        self.http = http;
    }

    /// Sets or replaces one fixed header.
    pub(crate) fn set_header(&mut self, name: HeaderName, value: HeaderValue) {
        Arc::make_mut(&mut self.headers).insert(name, value);
    }

    /// Sends a call, with one refresh and retry after a 401 when its auth allows, and
    /// returns the answer if its status is accepted.
    pub(crate) async fn call(&self, call: Call<'_>) -> Result<Answer> {
        let response = match call.auth {
            Auth::Fixed(token) => self.send(&call, token).await?,
            Auth::Refreshable => {
                let token = self.token.token();
                let response = self.send(&call, &token).await?;
                if response.status() != reqwest::StatusCode::UNAUTHORIZED {
                    response
                } else if self.token.refresh(&token).await {
                    tracing::debug!(
                        context = call.context,
                        "401 received, retrying with a refreshed token"
                    );
                    // The first 401's body is dropped; the retry's answer decides, and a
                    // second 401 becomes the fatal error.
                    drop(response);
                    self.send(&call, &self.token.token()).await?
                } else {
                    tracing::debug!(context = call.context, "401 received, no token refresh");
                    response
                }
            }
        };
        let status = response.status().as_u16();
        tracing::debug!(context = call.context, method = %call.method, path = %call.path, status);
        if !call.accept.contains(&status) {
            return Err(error_from_response(response).await);
        }
        let body = response.bytes().await.map_err(ApiError::Transport)?;
        Ok(Answer { status, body })
    }

    async fn send(&self, call: &Call<'_>, token: &str) -> Result<reqwest::Response> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ApiError::InvalidRequest("the token is not a valid header value".to_owned())
        })?;
        auth.set_sensitive(true);
        let url = format!("{}{}", self.base, call.path);
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .headers((*self.headers).clone())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .timeout(call.timeout);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        request.send().await.map_err(map_send_error)
    }
}

/// Sorts a reqwest failure: one that happened while building the request (a bad URL) sent
/// nothing and is not worth retrying; everything else is a transport failure.
pub(crate) fn map_send_error(e: reqwest::Error) -> ApiError {
    if e.is_builder() {
        ApiError::InvalidRequest(e.to_string())
    } else {
        ApiError::Transport(e)
    }
}

/// Checks an id bound for a URL path against the safe-id pattern (docs/PROTOCOL.md §3.5).
pub(crate) fn check_id<'a>(what: &'static str, id: &'a str) -> Result<&'a str> {
    if is_safe_id(id) {
        Ok(id)
    } else {
        Err(ApiError::InvalidId {
            what,
            id: id.to_owned(),
        })
    }
}

/// A header value built from caller text, with anything that cannot go into a header
/// replaced by `?`.
pub(crate) fn lossy_header_value(text: &str) -> HeaderValue {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
