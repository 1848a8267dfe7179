//! The session-ingress v1 worker transport (docs/PROTOCOL.md §8): what a bridge child speaks.
//!
//! Reading happens over a WebSocket held by a background task. The server sends one JSON
//! object per text frame, terminated by `\n`; the task splits frames into lines, parses
//! each non-empty line and forwards every message except `{"type":"keep_alive"}` to the
//! receiver that [`IngressTransport::connect`] returns. It pings every 10 s and treats a
//! missing pong by the next ping as a dead socket. On any close other than the permanent
//! codes 1002, 4001 and 4003 it reconnects with a backoff of 500 ms doubling to 2 s
//! (±25 %) within a total budget of 10 minutes, which restarts after every successful
//! connection; a 1001 close (the server going away, e.g. restarting) is retried at once.
//! When it gives up, the receiver ends and [`IngressTransport::state`] tells why.
//!
//! Writing is an HTTP POST of `{"events":[…]}` per batch, one at a time, retried on 429,
//! 5xx and transport failures with a backoff of 500 ms doubling to 2 s plus up to 1 s of
//! jitter. Any other 4xx drops the batch, as the official HybridTransport does.
//!
//! The official client's caps are 30 s and 8 s: after an outage of a few seconds its
//! worker comes back up to 30 s after the server. The lower caps bring a worker back
//! within about 2.5 s of its server, and the jitter keeps the workers of a restarted
//! server from all reconnecting in the same instant.
//!
//! The bearer token is read from a [`TokenSource`] on every (re)connect and every POST,
//! so a rotated token takes effect at the next one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use rand::Rng as _;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use url::Url;

use crate::auth::TokenSource;
use crate::backoff::AtOnce;
use crate::error::{error_from_response, ApiError, Result};
use crate::http::{check_id, map_send_error};
use crate::tls::{tls_failure_in, ClientTls};

/// Close codes after which the official client never reconnects: 1002 (protocol error),
/// 4001 (session expired or not found) and 4003 (unauthorized, unless the token changed
/// meanwhile).
pub const PERMANENT_CLOSE_CODES: [u16; 3] = [1002, 4001, 4003];

/// The close code that means "unauthorized"; it is permanent only if re-reading the token
/// gives the same value.
const UNAUTHORIZED_CLOSE: u16 = 4003;

/// The WebSocket read buffer. tungstenite allocates it eagerly per connection and its
/// default is 128 KiB; the ingress stream is small messages, so 16 KiB is plenty.
const READ_BUFFER_SIZE: usize = 16 * 1024;

/// How much text without a newline the line buffer holds before it gives up on the
/// stream. It matches tungstenite's default largest message (64 MiB).
const MAX_PENDING_LINE: usize = 64 << 20;

/// The most events one POST carries, as in the official client.
pub const MAX_BATCH: usize = 500;

/// The keep-alive message, in both directions.
const KEEP_ALIVE: &str = r#"{"type":"keep_alive"}"#;

/// How long a client-initiated close waits for the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The relative jitter of the reconnect backoff (±25 %).
const RECONNECT_JITTER: f64 = 0.25;

/// The close code of a server going away (shutting down or restarting): reconnect at once.
const GOING_AWAY_CLOSE: u16 = 1001;

/// The first reconnect delay.
pub const DEFAULT_RECONNECT_BASE_DELAY: Duration = Duration::from_millis(500);

/// The largest reconnect delay before jitter (the official client's is 30 s).
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// The largest POST retry delay before jitter (the official client's is 8 s).
pub const DEFAULT_POST_MAX_DELAY: Duration = Duration::from_secs(2);

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which path segment the ingress URLs use. A server serves both; the official bridge picks
/// `v2` when the base URL mentions `localhost` or `127.0.0.1` and `v1` otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IngressVersion {
    /// `/v1/session_ingress/…`.
    #[default]
    V1,
    /// `/v2/session_ingress/…`.
    V2,
}

impl IngressVersion {
    /// The version the official bridge's `buildSdkUrl` picks for `base_url`.
    pub fn for_base_url(base_url: &str) -> Self {
        if base_url.contains("localhost") || base_url.contains("127.0.0.1") {
            Self::V2
        } else {
            Self::V1
        }
    }

    fn segment(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// The WebSocket URL a worker reads from:
/// `ws[s]://{host}{prefix}/{v1|v2}/session_ingress/ws/{session_id}`.
///
/// `base` is the server's `http`, `https`, `ws` or `wss` URL; `https` and `wss` give
/// `wss`, the others `ws`. Trailing slashes are dropped and any path prefix is kept.
pub fn ws_url(base: &str, session_id: &str, version: IngressVersion) -> Result<Url> {
    let session = check_id("session_id", session_id)?;
    endpoint(base, version, &format!("ws/{session}"), true)
}

/// The URL a worker POSTs its events to:
/// `http[s]://{host}{prefix}/{v1|v2}/session_ingress/session/{session_id}/events`.
pub fn post_url(base: &str, session_id: &str, version: IngressVersion) -> Result<Url> {
    let session = check_id("session_id", session_id)?;
    endpoint(base, version, &format!("session/{session}/events"), false)
}

fn endpoint(base: &str, version: IngressVersion, tail: &str, websocket: bool) -> Result<Url> {
    let mut url = Url::parse(base)
        .map_err(|e| ApiError::InvalidRequest(format!("base url {base:?}: {e}")))?;
    let secure = match url.scheme() {
        "http" | "ws" => false,
        "https" | "wss" => true,
        other => {
            return Err(ApiError::InvalidRequest(format!(
                "base url {base:?}: unsupported scheme {other:?}"
            )))
        }
    };
    let scheme = match (websocket, secure) {
        (true, false) => "ws",
        (true, true) => "wss",
        (false, false) => "http",
        (false, true) => "https",
    };
    url.set_scheme(scheme).map_err(|()| {
        ApiError::InvalidRequest(format!("base url {base:?}: cannot use {scheme}"))
    })?;
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!(
        "{prefix}/{}/session_ingress/{tail}",
        version.segment()
    ));
    url.set_fragment(None);
    Ok(url)
}

/// How to reach a session's ingress and how patient to be. Build it with
/// [`IngressConfig::new`], then adjust the public fields (tests shorten the delays).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IngressConfig {
    /// The server's base URL (`http[s]://host[/prefix]`).
    pub base_url: String,
    /// The session to attach to, exactly as the work item named it (often `cse_…`).
    pub session_id: String,
    /// The URL version segment.
    pub version: IngressVersion,
    /// The bearer token: the work item's ingress token, or the user's token.
    pub token: TokenSource,
    /// Extra headers on the upgrade and on every POST, e.g. `anthropic-version` (sent by
    /// the REPL) or `x-environment-runner-version` (sent by children when configured).
    pub headers: HeaderMap,
    /// How often to ping; a ping without a pong by the next one means the socket is dead.
    pub ping_interval: Duration,
    /// How often to send a `{"type":"keep_alive"}` data frame, if at all.
    pub keep_alive_interval: Option<Duration>,
    /// How long one connection attempt (TCP and upgrade) may take.
    pub connect_timeout: Duration,
    /// The first reconnect delay, doubled after each failed attempt.
    pub reconnect_base_delay: Duration,
    /// The largest reconnect delay, before jitter.
    pub reconnect_max_delay: Duration,
    /// How long to keep reconnecting after the connection was lost before giving up.
    pub reconnect_budget: Duration,
    /// How many messages the receiver buffers before the reader waits for it.
    pub channel_capacity: usize,
    /// When true, a line that is not JSON ends the transport, as it makes the official
    /// child exit; when false it is logged and skipped.
    pub strict_framing: bool,
    /// The deadline of one POST.
    pub post_timeout: Duration,
    /// The first delay before retrying a POST, doubled after each failure.
    pub post_base_delay: Duration,
    /// The largest POST retry delay, before jitter.
    pub post_max_delay: Duration,
    /// The most jitter added to a POST retry delay.
    pub post_max_jitter: Duration,
    /// How many times one batch is tried before [`IngressTransport::write`] gives up.
    pub post_max_attempts: u32,
    /// The HTTP client for POSTs; the default trusts [`tls`](Self::tls).
    pub http: reqwest::Client,
    /// The roots the WebSocket trusts for `wss` (and [`http`](Self::http) by default).
    pub tls: ClientTls,
}

impl IngressConfig {
    /// The settings for `session_id` at `base_url` over `v1`: the official client's (ping
    /// every 10 s, keep-alive every 120 s, reconnect within 10 minutes, POSTs with a 15 s
    /// deadline, 50 attempts: the REPL's limit, children retry forever) but with shorter
    /// backoffs: reconnect 500 ms ×2 ≤ 2 s ±25 % (at once after a 1001), POST retries
    /// 500 ms ×2 ≤ 2 s plus up to 1 s.
    pub fn new(
        base_url: impl Into<String>,
        session_id: impl Into<String>,
        token: impl Into<TokenSource>,
    ) -> Self {
        let tls = ClientTls::default();
        Self {
            base_url: base_url.into(),
            session_id: session_id.into(),
            version: IngressVersion::V1,
            token: token.into(),
            headers: HeaderMap::new(),
            ping_interval: Duration::from_secs(10),
            keep_alive_interval: Some(Duration::from_secs(120)),
            connect_timeout: Duration::from_secs(15),
            reconnect_base_delay: DEFAULT_RECONNECT_BASE_DELAY,
            reconnect_max_delay: DEFAULT_RECONNECT_MAX_DELAY,
            reconnect_budget: Duration::from_secs(600),
            channel_capacity: 1024,
            strict_framing: true,
            post_timeout: Duration::from_secs(15),
            post_base_delay: Duration::from_millis(500),
            post_max_delay: DEFAULT_POST_MAX_DELAY,
            post_max_jitter: Duration::from_secs(1),
            post_max_attempts: 50,
            http: tls.http_client(),
            tls,
        }
    }

    /// This configuration trusting `tls`'s roots for `wss` and `https`.
    pub fn with_tls(mut self, tls: &ClientTls) -> Self {
        self.http = tls.http_client();
        self.tls = tls.clone();
        self
    }

    /// This configuration with `version` as the URL segment.
    pub fn with_version(mut self, version: IngressVersion) -> Self {
        self.version = version;
        self
    }
}

/// Where the WebSocket side of a transport stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportState {
    /// The first connection attempt is under way.
    Connecting,
    /// The socket is open.
    Connected,
    /// The socket was lost; waiting or trying to reconnect.
    Reconnecting,
    /// The transport ended for good; the receiver has ended too.
    Closed {
        /// The server's close code when a permanent close ended it (or the last one seen
        /// before giving up), `Some(1000)` after [`IngressTransport::close`], `None` when
        /// there was no close code.
        code: Option<u16>,
        /// Why it ended.
        reason: String,
    },
}

impl TransportState {
    /// True for [`TransportState::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed { .. })
    }
}

/// A worker's connection to one session's ingress: a WebSocket reader in a background task
/// and an HTTP writer.
///
/// Cheap to clone; clones share the connection. The background task ends on
/// [`close`](Self::close), when it gives up, or when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct IngressTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ws_url: Url,
    post_url: Url,
    token: TokenSource,
    headers: HeaderMap,
    http: reqwest::Client,
    post_timeout: Duration,
    post_base_delay: Duration,
    post_max_delay: Duration,
    post_max_jitter: Duration,
    post_max_attempts: u32,
    write_lock: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    state: watch::Receiver<TransportState>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can read or close any more, so stop the task.
        self.cancel.cancel();
    }
}

impl IngressTransport {
    /// Starts the transport and waits until the socket is open for the first time.
    ///
    /// Returns the transport and the receiver of inbound messages. Fails with
    /// [`ApiError::InvalidId`] or [`ApiError::InvalidRequest`] for a bad session id or base
    /// URL (nothing is sent), and with [`ApiError::WebSocket`] when the socket never opened
    /// (permanent close or reconnect budget used up). If the socket opened and the server
    /// closed it at once, this succeeds and the receiver simply ends.
    pub async fn connect(config: IngressConfig) -> Result<(Self, mpsc::Receiver<Value>)> {
        let (transport, receiver, ever_connected) = Self::spawn(config)?;
        let mut state = transport.inner.state.clone();
        let reached = state
            .wait_for(|s| matches!(s, TransportState::Connected | TransportState::Closed { .. }))
            .await
            .map(|s| s.clone());
        match reached {
            Ok(TransportState::Closed { code, reason })
                if !ever_connected.load(Ordering::SeqCst) =>
            {
                let code = code
                    .map(|c| format!(" (close code {c})"))
                    .unwrap_or_default();
                Err(ApiError::WebSocket(format!(
                    "could not connect{code}: {reason}"
                )))
            }
            Ok(_) => Ok((transport, receiver)),
            Err(_) => Err(ApiError::WebSocket(
                "the transport task ended unexpectedly".into(),
            )),
        }
    }

    /// Starts the transport without waiting for the socket; watch
    /// [`state_changes`](Self::state_changes) to see it open.
    pub fn start(config: IngressConfig) -> Result<(Self, mpsc::Receiver<Value>)> {
        Self::spawn(config).map(|(transport, receiver, _)| (transport, receiver))
    }

    fn spawn(config: IngressConfig) -> Result<(Self, mpsc::Receiver<Value>, Arc<AtomicBool>)> {
        let ws_url = ws_url(&config.base_url, &config.session_id, config.version)?;
        let post_url = post_url(&config.base_url, &config.session_id, config.version)?;
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(TransportState::Connecting);
        let cancel = CancellationToken::new();
        let ever_connected = Arc::new(AtomicBool::new(false));
        // A zero period would make tokio's interval panic, so every period is at least 1 ms.
        let floor = Duration::from_millis(1);
        let worker = Worker {
            ws_url: ws_url.clone(),
            tls: config.tls.clone(),
            token: config.token.clone(),
            headers: config.headers.clone(),
            ping_interval: config.ping_interval.max(floor),
            keep_alive_interval: config.keep_alive_interval.map(|d| d.max(floor)),
            connect_timeout: config.connect_timeout,
            reconnect_base_delay: config.reconnect_base_delay,
            reconnect_max_delay: config.reconnect_max_delay,
            reconnect_budget: config.reconnect_budget,
            strict_framing: config.strict_framing,
            tx,
            state: state_tx,
            cancel: cancel.clone(),
            ever_connected: ever_connected.clone(),
        };
        let span = tracing::info_span!("ingress", session = %config.session_id);
        let task = tokio::spawn(worker.run().instrument(span));
        let inner = Inner {
            ws_url,
            post_url,
            token: config.token,
            headers: config.headers,
            http: config.http,
            post_timeout: config.post_timeout,
            post_base_delay: config.post_base_delay,
            post_max_delay: config.post_max_delay,
            post_max_jitter: config.post_max_jitter,
            post_max_attempts: config.post_max_attempts.max(1),
            write_lock: tokio::sync::Mutex::new(()),
            cancel,
            state: state_rx,
            task: std::sync::Mutex::new(Some(task)),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            rx,
            ever_connected,
        ))
    }

    /// The WebSocket URL this transport reads from.
    pub fn ws_url(&self) -> &Url {
        &self.inner.ws_url
    }

    /// The URL this transport POSTs to.
    pub fn post_url(&self) -> &Url {
        &self.inner.post_url
    }

    /// The current state of the WebSocket side.
    pub fn state(&self) -> TransportState {
        self.inner.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn state_changes(&self) -> watch::Receiver<TransportState> {
        self.inner.state.clone()
    }

    /// Waits until the transport has ended for good and returns its final state.
    pub async fn closed(&self) -> TransportState {
        let mut state = self.inner.state.clone();
        let reached = state
            .wait_for(TransportState::is_closed)
            .await
            .map(|s| s.clone());
        // If the task is gone without a final word, report what was last seen.
        reached.unwrap_or_else(|_| self.state())
    }

    /// POSTs `events` to the session, in order, at most [`MAX_BATCH`] per request and one
    /// request at a time across all clones.
    ///
    /// Any 2xx is success. 429, 5xx and transport failures are retried with backoff up to
    /// the configured number of attempts, after which the last error is returned. Any
    /// other status returns its error at once and the batch is dropped, as the official
    /// client does. After [`close`](Self::close) this returns [`ApiError::Closed`].
    pub async fn write(&self, events: Vec<Value>) -> Result<()> {
        if self.inner.cancel.is_cancelled() {
            return Err(ApiError::Closed);
        }
        let _turn = self.inner.write_lock.lock().await;
        for batch in events.chunks(MAX_BATCH) {
            self.post_batch(batch).await?;
        }
        Ok(())
    }

    async fn post_batch(&self, events: &[Value]) -> Result<()> {
        #[derive(Serialize)]
        struct Batch<'a> {
            events: &'a [Value],
        }
        let body = serde_json::to_vec(&Batch { events })
            .map_err(|e| ApiError::Decode(format!("could not encode the events: {e}")))?;
        let body = Bytes::from(body);
        let inner = &self.inner;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let error = match self.post_once(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => e,
                Err(e) => {
                    tracing::warn!(error = %e, "ingress POST rejected; the batch is dropped");
                    return Err(e);
                }
            };
            if attempt >= inner.post_max_attempts {
                tracing::warn!(error = %error, attempt, "ingress POST failed; giving up");
                return Err(error);
            }
            let delay = post_delay(
                attempt - 1,
                inner.post_base_delay,
                inner.post_max_delay,
                inner.post_max_jitter,
            );
            tracing::debug!(error = %error, attempt, ?delay, "ingress POST failed; retrying");
            tokio::select! {
                () = inner.cancel.cancelled() => return Err(ApiError::Closed),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn post_once(&self, body: Bytes) -> Result<()> {
        let inner = &self.inner;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", inner.token.token())).map_err(|_| {
                ApiError::InvalidRequest("the token is not a valid header value".into())
            })?;
        auth.set_sensitive(true);
        let response = inner
            .http
            .post(inner.post_url.clone())
            .headers(inner.headers.clone())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .timeout(inner.post_timeout)
            .body(body)
            .send()
            .await
            .map_err(map_send_error)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(error_from_response(response).await)
        }
    }

    /// Ends the transport: stops reconnecting, closes the socket with code 1000, ends the
    /// receiver and aborts pending write retries. Waits until the background task is done.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "ingress task failed");
            }
        }
        self.closed().await;
    }
}

/// The background task that owns the WebSocket.
struct Worker {
    ws_url: Url,
    tls: ClientTls,
    token: TokenSource,
    headers: HeaderMap,
    ping_interval: Duration,
    keep_alive_interval: Option<Duration>,
    connect_timeout: Duration,
    reconnect_base_delay: Duration,
    reconnect_max_delay: Duration,
    reconnect_budget: Duration,
    strict_framing: bool,
    tx: mpsc::Sender<Value>,
    state: watch::Sender<TransportState>,
    cancel: CancellationToken,
    ever_connected: Arc<AtomicBool>,
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// [`IngressTransport::close`] was called, or every handle was dropped.
    Shutdown,
    /// The connection was lost or closed; reconnect unless the code is permanent.
    Lost { code: Option<u16>, reason: String },
    /// The server broke the framing; the transport ends without reconnecting.
    Fatal(String),
}

impl Worker {
    async fn run(self) {
        let final_state = self.run_connections().await;
        tracing::debug!(state = ?final_state, "ingress transport ended");
        self.state.send_replace(final_state);
        // Dropping `self.tx` here ends the receiver.
    }

    fn closed_by_client() -> TransportState {
        TransportState::Closed {
            code: Some(1000),
            reason: "closed by the client".to_owned(),
        }
    }

    async fn run_connections(&self) -> TransportState {
        let mut attempt: u32 = 0;
        let mut disconnected_since: Option<Instant> = None;
        let mut at_once = AtOnce::default();
        loop {
            let token = self.token.token();
            let opened = tokio::select! {
                () = self.cancel.cancelled() => return Self::closed_by_client(),
                opened = self.open(&token) => opened,
            };
            let ended = match opened {
                Ok(ws) => {
                    tracing::debug!("ingress websocket open");
                    self.ever_connected.store(true, Ordering::SeqCst);
                    self.state.send_replace(TransportState::Connected);
                    attempt = 0;
                    disconnected_since = None;
                    self.serve(ws).await
                }
                Err(reason) => Ended::Lost { code: None, reason },
            };
            let (code, reason) = match ended {
                Ended::Shutdown => return Self::closed_by_client(),
                Ended::Fatal(reason) => return TransportState::Closed { code: None, reason },
                Ended::Lost { code, reason } => (code, reason),
            };
            if let Some(c) = code.filter(|c| PERMANENT_CLOSE_CODES.contains(c)) {
                // A 4003 after the token was rotated is worth one more try with the new one.
                let token_changed = c == UNAUTHORIZED_CLOSE && self.token.token() != token;
                if !token_changed {
                    tracing::info!(code = c, %reason, "ingress closed permanently");
                    return TransportState::Closed { code, reason };
                }
            }
            let since = *disconnected_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.reconnect_budget {
                tracing::warn!(%reason, "ingress reconnect budget used up");
                return TransportState::Closed {
                    code,
                    reason: format!(
                        "gave up reconnecting after {:?}; last failure: {reason}",
                        self.reconnect_budget
                    ),
                };
            }
            let delay = if code == Some(GOING_AWAY_CLOSE) && at_once.allow() {
                // The server went away on purpose; a restarted one may already listen.
                Duration::ZERO
            } else {
                jittered(
                    reconnect_delay(attempt, self.reconnect_base_delay, self.reconnect_max_delay),
                    rand::rng().random_range(-RECONNECT_JITTER..=RECONNECT_JITTER),
                )
            };
            attempt = attempt.saturating_add(1);
            tracing::debug!(?code, %reason, ?delay, attempt, "ingress reconnecting");
            self.state.send_replace(TransportState::Reconnecting);
            tokio::select! {
                () = self.cancel.cancelled() => return Self::closed_by_client(),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens the socket with the current headers, or says why it could not.
    async fn open(&self, token: &str) -> std::result::Result<WsStream, String> {
        let mut request = self
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad websocket request: {e}"))?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_SIZE);
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(self.tls.connector()),
        );
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => Err(format!("no connection within {:?}", self.connect_timeout)),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                Err(format!("upgrade refused with HTTP {}", response.status()))
            }
            Ok(Err(e)) => Err(connect_failure(&e)),
            Ok(Ok((ws, _response))) => Ok(ws),
        }
    }

    /// Reads one open socket until it ends.
    async fn serve(&self, ws: WsStream) -> Ended {
        let (mut sink, mut stream) = ws.split();
        let mut ping = periodic(self.ping_interval);
        let mut keep_alive = self.keep_alive_interval.map(periodic);
        let mut lines = LineBuffer::default();
        let mut awaiting_pong = false;
        loop {
            let message = tokio::select! {
                () = self.cancel.cancelled() => {
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    // The socket may already be broken; closing is best effort.
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    drain(&mut stream).await;
                    return Ended::Shutdown;
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        let reason = "no pong since the last ping".to_owned();
                        return Ended::Lost { code: None, reason };
                    }
                    awaiting_pong = true;
                    if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                        return Ended::Lost { code: None, reason: format!("ping failed: {e}") };
                    }
                    continue;
                }
                () = tick(&mut keep_alive) => {
                    if let Err(e) = sink.send(Message::text(format!("{KEEP_ALIVE}\n"))).await {
                        let reason = format!("keep-alive failed: {e}");
                        return Ended::Lost { code: None, reason };
                    }
                    continue;
                }
                message = stream.next() => message,
            };
            let text = match message {
                None => {
                    return Ended::Lost {
                        code: None,
                        reason: "connection ended without a close frame".into(),
                    }
                }
                Some(Err(e)) => {
                    return Ended::Lost {
                        code: None,
                        reason: e.to_string(),
                    }
                }
                Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                Some(Ok(Message::Binary(data))) => match String::from_utf8(data.to_vec()) {
                    Ok(text) => text,
                    Err(_) => {
                        tracing::warn!(
                            len = data.len(),
                            "ignoring a binary frame that is not UTF-8"
                        );
                        continue;
                    }
                },
                Some(Ok(Message::Pong(_))) => {
                    awaiting_pong = false;
                    continue;
                }
                // Tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                        None => (None, "closed without a status".to_owned()),
                    };
                    // Tungstenite queued its half of the closing handshake while reading the
                    // frame; flushing sends it without waiting for the server to hang up.
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.flush()).await;
                    return Ended::Lost { code, reason };
                }
            };
            for line in lines.push(&text) {
                let value = match line {
                    Ok(value) => value,
                    Err(e) if self.strict_framing => {
                        let frame = CloseFrame {
                            code: CloseCode::Protocol,
                            reason: "".into(),
                        };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        return Ended::Fatal(format!("unparseable line from the server: {e}"));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping an unparseable line");
                        continue;
                    }
                };
                if is_keep_alive(&value) {
                    continue;
                }
                match self.tx.try_send(value) {
                    Ok(()) => {}
                    // Nobody reads any more; writes may still matter, so the socket stays.
                    Err(TrySendError::Closed(_)) => {}
                    Err(TrySendError::Full(value)) => {
                        tokio::select! {
                            () = self.cancel.cancelled() => return Ended::Shutdown,
                            _ = self.tx.send(value) => {}
                        }
                        // Pongs were not read while the reader was slow, so the liveness
                        // check starts over rather than declaring the socket dead.
                        ping.reset();
                        awaiting_pong = false;
                    }
                }
            }
        }
    }
}

/// Why a WebSocket did not open, a TLS failure (an untrusted certificate, say) told
/// apart from a server that cannot be reached.
pub(crate) fn connect_failure(error: &tokio_tungstenite::tungstenite::Error) -> String {
    match tls_failure_in(error) {
        Some(failure) => failure.to_string(),
        None => format!("connection failed: {error}"),
    }
}

/// An interval whose first tick is one period from now.
fn periodic(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The next tick of an optional interval; never, without one.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// After a client-initiated close, reads until the server's close frame arrives (briefly),
/// so the closing handshake completes before the connection is dropped.
async fn drain(stream: &mut futures_util::stream::SplitStream<WsStream>) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// True for `{"type":"keep_alive"}`, which workers ignore.
fn is_keep_alive(value: &Value) -> bool {
    value.get("type").and_then(Value::as_str) == Some("keep_alive")
}

/// Splits WebSocket frames into `\n`-terminated JSON lines. Text after the last newline of
/// a frame waits for the next frame, as in the official child, so a frame without its
/// newline is glued to the next one.
#[derive(Debug, Default)]
struct LineBuffer {
    pending: String,
}

impl LineBuffer {
    /// Adds a frame and returns every complete non-empty line, parsed.
    fn push(&mut self, frame: &str) -> Vec<std::result::Result<Value, String>> {
        self.pending.push_str(frame);
        let mut out = Vec::new();
        while let Some(end) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=end).collect();
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            out.push(serde_json::from_str(line).map_err(|e| format!("{e} in {}", excerpt(line))));
        }
        if self.pending.len() > MAX_PENDING_LINE {
            self.pending.clear();
            out.push(Err(format!("a line longer than {MAX_PENDING_LINE} bytes")));
        }
        out
    }
}

/// The start of a line, for error messages.
fn excerpt(line: &str) -> String {
    const MAX: usize = 120;
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{:?}…", &line[..at]),
        None => format!("{line:?}"),
    }
}

/// The reconnect delay before jitter: `base × 2^attempt`, at most `max`.
fn reconnect_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max)
}

/// `delay` scaled by `1 + fraction` (fraction in −0.25…0.25 for ±25 % jitter).
fn jittered(delay: Duration, fraction: f64) -> Duration {
    delay.mul_f64((1.0 + fraction).max(0.0))
}

/// The POST retry delay: `base × 2^attempt` at most `max`, plus up to `max_jitter`.
fn post_delay(attempt: u32, base: Duration, max: Duration, max_jitter: Duration) -> Duration {
    let jitter = max_jitter.mul_f64(rand::rng().random_range(0.0..=1.0));
    reconnect_delay(attempt, base, max) + jitter
}

#[cfg(test)]
mod tests;
