//! The viewer side of a session (docs/PROTOCOL.md §13.1): what `claude --remote`, the web UI
//! and `switchboard attach` speak. It is the Rust counterpart of the official client's
//! `SessionsWebSocket`.
//!
//! A [`ViewerSocket`] holds one WebSocket to
//! `ws[s]://{host}/v1/sessions/ws/{session_id}/subscribe` in a background task and turns
//! what happens on it into [`ViewerEvent`]s on a channel: the socket opened, a message
//! arrived, the socket was lost and a reconnect is scheduled, or the viewer ended for
//! good. The same handle sends prompts, permission answers and control requests to the
//! session's worker.
//!
//! The reconnect rules follow the official client's, with the delays in [`ViewerConfig`]:
//!
//! - close code 4003 (unauthorized) is permanent;
//! - close code 4001 (session not found) is retried at most 3 times, after 2 s, 4 s and
//!   6 s, because the server may report a session as missing while it is briefly stale;
//! - a close with 1001 (going away: the server is shutting down or restarting) is
//!   retried at once, since a restarted server or another instance may already be there;
//! - any other loss of a socket that had opened is retried after 1 s ±25 %, at most 10
//!   times in a row; the count starts over whenever a socket opens;
//! - if the very first connection attempt fails, the viewer ends at once, so a wrong URL
//!   or a refused upgrade is reported instead of retried.
//!
//! The official client waits a fixed 2 s at most 5 times and gives up as soon as a
//! *reconnect* attempt fails to open. Here a failed reconnect attempt counts as one of
//! the attempts, so a server that restarts within about 10 s keeps its viewers, and the
//! shorter jittered delay brings them back about a second after the server, without all
//! of them arriving in the same instant. A viewer that a person watches (`switchboard
//! attach`) sets no limit at all. The 4001 count starts over when a message arrives
//! rather than when a socket opens, because Switchboard accepts the upgrade before it
//! checks the session: counting from the open would retry an unknown session forever.
//!
//! The server adds a `sequence_num` to every event. The viewer remembers the last one it
//! saw, reconnects with `?from_sequence_num=<last>`, and drops any event whose number is
//! not above it, so a reconnect leaves neither a gap nor a duplicate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use switchboard_proto::sessions::event_sequence;
use switchboard_proto::ANTHROPIC_VERSION;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use url::Url;

use crate::auth::TokenSource;
use crate::error::{ApiError, Result};
use crate::http::check_id;
use crate::tls::ClientTls;

/// Close code: the credential may not see this session. Permanent.
pub const CLOSE_UNAUTHORIZED: u16 = 4003;

/// Close code: the session is unknown or archived. Retried a few times, since the
/// official server sends it for sessions that are only briefly stale (during compaction).
pub const CLOSE_SESSION_NOT_FOUND: u16 = 4001;

/// The close code a viewer ended by [`ViewerSocket::close`] reports.
pub const CLOSE_NORMAL: u16 = 1000;

/// The ping period of the official viewer. The server only has to answer; nobody checks
/// the pongs, the pings just keep proxies from closing an idle connection.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// The official viewer's delay unit: the n-th retry after a 4001 close waits n times it.
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// The delay before reconnecting after a transient close (before jitter). The official
/// viewer waits 2 s; half that brings a viewer back about a second after its server.
pub const DEFAULT_TRANSIENT_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The relative jitter of the transient reconnect delay (±25 %).
pub const DEFAULT_RECONNECT_JITTER: f64 = 0.25;

/// How many reconnects in a row a viewer tries before it gives up: about 10 s of
/// patience, as the official viewer's 5 × 2 s.
pub const DEFAULT_MAX_RECONNECT_ATTEMPTS: u32 = 10;

/// Close code: the server is going away (shutting down or restarting). Retried at once.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// How many times the official viewer retries after a 4001 close; the n-th retry waits
/// n × [`DEFAULT_RECONNECT_DELAY`] (2 s, 4 s, 6 s).
pub const DEFAULT_MAX_SESSION_NOT_FOUND_RETRIES: u32 = 3;

/// How long a client-initiated close waits for the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<WsStream, Message>;

/// The subscribe URL: `ws[s]://{host}{prefix}/v1/sessions/ws/{session_id}/subscribe`,
/// with `?from_sequence_num=N` when `from` is given.
///
/// `base` is the server's `http`, `https`, `ws` or `wss` URL; `https` and `wss` give
/// `wss`, the others `ws`. Trailing slashes are dropped and any path prefix is kept.
pub fn subscribe_url(base: &str, session_id: &str, from: Option<u64>) -> Result<Url> {
    let session = check_id("session_id", session_id)?;
    let mut url = Url::parse(base)
        .map_err(|e| ApiError::InvalidRequest(format!("base url {base:?}: {e}")))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(ApiError::InvalidRequest(format!(
                "base url {base:?}: unsupported scheme {other:?}"
            )))
        }
    };
    url.set_scheme(scheme).map_err(|()| {
        ApiError::InvalidRequest(format!("base url {base:?}: cannot use {scheme}"))
    })?;
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}/v1/sessions/ws/{session}/subscribe"));
    url.set_query(None);
    url.set_fragment(None);
    if let Some(from) = from {
        url.query_pairs_mut()
            .append_pair("from_sequence_num", &from.to_string());
    }
    Ok(url)
}

/// A user prompt as a viewer sends it (§12.4): role `user`, no parent tool use, and the
/// given `uuid`, which the worker uses to drop repeats.
pub fn user_message(uuid: &str, content: impl Into<Value>) -> Value {
    json!({
        "type": "user",
        "uuid": uuid,
        "parent_tool_use_id": null,
        "message": {"role": "user", "content": content.into()},
    })
}

/// A control request for the worker (§12.5.2): `request` is the inner object with its
/// `subtype`, e.g. `{"subtype":"interrupt"}`.
pub fn control_request(request_id: &str, request: Value) -> Value {
    json!({"type": "control_request", "request_id": request_id, "request": request})
}

/// A successful answer to one of the worker's control requests (§12.5): `response` is
/// the inner object, e.g. [`allow_decision`].
pub fn control_response(request_id: &str, response: Value) -> Value {
    json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": response},
    })
}

/// An error answer to one of the worker's control requests, for requests this viewer
/// cannot handle (§13.1).
pub fn control_error(request_id: &str, error: &str) -> Value {
    json!({
        "type": "control_response",
        "response": {"subtype": "error", "request_id": request_id, "error": error},
    })
}

/// The inner response that allows a `can_use_tool` request (§12.5.1). `updated_input` is
/// the input the tool runs with; the worker requires it, and `{}` means "as requested".
pub fn allow_decision(updated_input: Value) -> Value {
    json!({"behavior": "allow", "updatedInput": updated_input})
}

/// The inner response that denies a `can_use_tool` request; the worker requires a
/// message and shows it to the model.
pub fn deny_decision(message: &str) -> Value {
    json!({"behavior": "deny", "message": message})
}

/// How to reach a session and how patient to be. Build it with [`ViewerConfig::new`],
/// then adjust the public fields (tests shorten the delays).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ViewerConfig {
    /// The server's base URL (`http[s]://host[/prefix]`).
    pub base_url: String,
    /// The session to watch (`session_…` or `cse_…`).
    pub session_id: String,
    /// The bearer token: the user's API key or OAuth token. Re-read on every connect.
    pub token: TokenSource,
    /// Extra headers on the upgrade; `anthropic-version` is always sent.
    pub headers: HeaderMap,
    /// Start after this sequence number. `None` lets the server choose, which is the whole
    /// history unless the server caps the backlog.
    pub from_sequence_num: Option<u64>,
    /// How often to ping.
    pub ping_interval: Duration,
    /// How long one connection attempt (TCP and upgrade) may take.
    pub connect_timeout: Duration,
    /// The delay before reconnecting after a transient close, before jitter. A 1001
    /// close is retried at once.
    pub reconnect_delay: Duration,
    /// The relative jitter of that delay (0.25 gives ±25 %).
    pub reconnect_jitter: f64,
    /// How many reconnects in a row to try before giving up (`u32::MAX`: never give up).
    pub max_reconnect_attempts: u32,
    /// The n-th retry after a 4001 close waits n times this long.
    pub session_not_found_delay: Duration,
    /// How many times to retry after 4001 closes before giving up.
    pub max_session_not_found_retries: u32,
    /// How many events the receiver buffers before the reader waits for it.
    pub channel_capacity: usize,
    /// The roots trusted for `wss`.
    pub tls: ClientTls,
}

impl ViewerConfig {
    /// The settings for `session_id` at `base_url`: ping every 30 s, reconnect after
    /// 1 s ±25 % (at once after a 1001) at most 10 times in a row, retry 4001 three times
    /// after 2, 4 and 6 s.
    pub fn new(
        base_url: impl Into<String>,
        session_id: impl Into<String>,
        token: impl Into<TokenSource>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            session_id: session_id.into(),
            token: token.into(),
            headers: HeaderMap::new(),
            from_sequence_num: None,
            ping_interval: DEFAULT_PING_INTERVAL,
            connect_timeout: Duration::from_secs(15),
            reconnect_delay: DEFAULT_TRANSIENT_RECONNECT_DELAY,
            reconnect_jitter: DEFAULT_RECONNECT_JITTER,
            max_reconnect_attempts: DEFAULT_MAX_RECONNECT_ATTEMPTS,
            session_not_found_delay: DEFAULT_RECONNECT_DELAY,
            max_session_not_found_retries: DEFAULT_MAX_SESSION_NOT_FOUND_RETRIES,
            channel_capacity: 1024,
            tls: ClientTls::default(),
        }
    }

    /// This configuration trusting `tls`'s roots for `wss`.
    pub fn with_tls(mut self, tls: &ClientTls) -> Self {
        self.tls = tls.clone();
        self
    }

    /// This configuration, starting after sequence number `from`.
    pub fn resume_after(mut self, from: u64) -> Self {
        self.from_sequence_num = Some(from);
        self
    }
}

/// What happens on a viewer's connection, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewerEvent {
    /// A socket opened: the first one, or one after a reconnect.
    Connected,
    /// An event from the session: a worker message with its `sequence_num`, a viewer's
    /// message, or an `{"type":"error"}` frame the server sent about a refused message
    /// (its `error` is a [`switchboard_proto::ErrorDetail`], whose `refused_uuid` names
    /// the refused message, docs/PROTOCOL.md §13.1).
    Message(Value),
    /// The socket was lost; the viewer reconnects after `delay`.
    Reconnecting {
        /// Which retry this is, counted from 1 (separately for 4001 and other closes).
        attempt: u32,
        /// How long it waits before connecting.
        delay: Duration,
    },
    /// The viewer ended for good; this is the last event.
    Closed {
        /// The close code that ended it, `Some(1000)` after [`ViewerSocket::close`], or
        /// `None` when the connection failed without one.
        code: Option<u16>,
        /// Why it ended.
        reason: String,
    },
    /// Something went wrong that did not end the connection, e.g. an unreadable frame.
    Error(String),
}

/// A viewer's connection to one session: a WebSocket in a background task, with
/// reconnects, resumption by sequence number and pings.
///
/// Cheap to clone; clones share the connection. The background task ends on
/// [`close`](Self::close), when it gives up, or when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> switchboard_client::Result<()> {
/// use switchboard_client::{ViewerConfig, ViewerEvent, ViewerSocket};
///
/// let config = ViewerConfig::new("http://127.0.0.1:8787", "session_abcd", "sk-my-api-key");
/// let (viewer, mut events) = ViewerSocket::connect(config)?;
/// while let Some(event) = events.recv().await {
///     match event {
///         ViewerEvent::Connected => {
///             viewer.send_user_message("hello").await?;
///         }
///         ViewerEvent::Message(message) => println!("{message}"),
///         ViewerEvent::Closed { .. } => break,
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ViewerSocket {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    session_id: String,
    /// The write half of the open socket; `None` while there is none.
    sink: Arc<tokio::sync::Mutex<Option<Sink>>>,
    connected: Arc<AtomicBool>,
    last_sequence: Arc<std::sync::Mutex<Option<u64>>>,
    control: mpsc::UnboundedSender<Control>,
    cancel: CancellationToken,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can read, send or close any more.
        self.cancel.cancel();
    }
}

/// What a handle asks the background task to do, besides closing.
#[derive(Debug)]
enum Control {
    /// Drop the socket (or the pending timer) and connect again at once.
    Reconnect,
}

impl ViewerSocket {
    /// Starts connecting in the background and returns at once; the first event is
    /// [`ViewerEvent::Connected`] or [`ViewerEvent::Closed`]. Must be called within a
    /// tokio runtime.
    ///
    /// Fails only when the request cannot be built: [`ApiError::InvalidId`] for an
    /// unsafe session id and [`ApiError::InvalidRequest`] for a bad base URL or token.
    pub fn connect(config: ViewerConfig) -> Result<(Self, mpsc::Receiver<ViewerEvent>)> {
        // Building the URL once up front reports a bad id or base before anything runs.
        subscribe_url(&config.base_url, &config.session_id, None)?;
        HeaderValue::from_str(&format!("Bearer {}", config.token.token())).map_err(|_| {
            ApiError::InvalidRequest("the token is not a valid header value".into())
        })?;
        let (events, receiver) = mpsc::channel(config.channel_capacity.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let sink = Arc::new(tokio::sync::Mutex::new(None));
        let connected = Arc::new(AtomicBool::new(false));
        let last_sequence = Arc::new(std::sync::Mutex::new(config.from_sequence_num));
        let cancel = CancellationToken::new();
        let span = tracing::info_span!("viewer", session = %config.session_id);
        let session_id = config.session_id.clone();
        let task = Task {
            // A zero period would make tokio's interval panic.
            ping_interval: config.ping_interval.max(Duration::from_millis(1)),
            config,
            events,
            control: control_rx,
            sink: sink.clone(),
            connected: connected.clone(),
            last_sequence: last_sequence.clone(),
            cancel: cancel.clone(),
            attempts: 0,
            not_found: 0,
            at_once: crate::backoff::AtOnce::default(),
        };
        let handle = tokio::spawn(task.run().instrument(span));
        let inner = Inner {
            session_id,
            sink,
            connected,
            last_sequence,
            control: control_tx,
            cancel,
            task: std::sync::Mutex::new(Some(handle)),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            receiver,
        ))
    }

    /// The session this viewer watches.
    pub fn session_id(&self) -> &str {
        &self.inner.session_id
    }

    /// Whether a socket is open right now, so that sends can succeed.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// The highest `sequence_num` delivered so far (or the configured start), which is
    /// where a reconnect resumes.
    pub fn last_sequence_num(&self) -> Option<u64> {
        *self
            .inner
            .last_sequence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one message to the session as a text frame.
    ///
    /// Fails with [`ApiError::Closed`] after [`close`](Self::close), and with
    /// [`ApiError::WebSocket`] while no socket is open (during a reconnect) or when the
    /// write fails. Nothing is queued: a message that could not be sent is not sent later.
    pub async fn send_message(&self, message: Value) -> Result<()> {
        if self.inner.cancel.is_cancelled() {
            return Err(ApiError::Closed);
        }
        let text = serde_json::to_string(&message)
            .map_err(|e| ApiError::Decode(format!("could not encode the message: {e}")))?;
        let mut sink = self.inner.sink.lock().await;
        let Some(sink) = sink.as_mut() else {
            return Err(ApiError::WebSocket(
                "not connected; the viewer is reconnecting".into(),
            ));
        };
        sink.send(Message::text(text))
            .await
            .map_err(|e| ApiError::WebSocket(format!("send failed: {e}")))
    }

    /// Sends `text` as a user prompt and returns the uuid it carries, by which the echo of
    /// the prompt can be recognised.
    pub async fn send_user_message(&self, text: &str) -> Result<String> {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.send_message(user_message(&uuid, text)).await?;
        Ok(uuid)
    }

    /// Sends a control request (`request` is the inner object with its `subtype`) and
    /// returns the `request_id` it carries, which the worker's answer echoes.
    pub async fn send_control_request(&self, request: Value) -> Result<String> {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.send_message(control_request(&request_id, request))
            .await?;
        Ok(request_id)
    }

    /// Answers the worker's control request `request_id` with success and `response` as
    /// the inner object.
    pub async fn send_control_response(&self, request_id: &str, response: Value) -> Result<()> {
        self.send_message(control_response(request_id, response))
            .await
    }

    /// Answers the worker's control request `request_id` with an error, e.g. for a
    /// request subtype this viewer does not handle.
    pub async fn send_control_error(&self, request_id: &str, error: &str) -> Result<()> {
        self.send_message(control_error(request_id, error)).await
    }

    /// Allows the `can_use_tool` request `request_id`; the tool runs with
    /// `updated_input` (pass the request's own `input`, or `{}`, to run it as asked).
    pub async fn allow(&self, request_id: &str, updated_input: Value) -> Result<()> {
        self.send_control_response(request_id, allow_decision(updated_input))
            .await
    }

    /// Denies the `can_use_tool` request `request_id`, telling the model `message`.
    pub async fn deny(&self, request_id: &str, message: &str) -> Result<()> {
        self.send_control_response(request_id, deny_decision(message))
            .await
    }

    /// Asks the worker to stop its current turn; returns the request id.
    pub async fn interrupt(&self) -> Result<String> {
        self.send_control_request(json!({"subtype": "interrupt"}))
            .await
    }

    /// Drops the current socket, or cancels a pending reconnect timer, and connects again
    /// at once with fresh retry counts, resuming after the last sequence number seen.
    /// Does nothing after [`close`](Self::close).
    pub fn reconnect(&self) {
        // The task is gone only after close, when there is nothing to reconnect.
        let _ = self.inner.control.send(Control::Reconnect);
    }

    /// Ends the viewer: cancels any pending reconnect, closes the socket with code 1000
    /// and sends the final [`ViewerEvent::Closed`]. Waits until the background task is
    /// done.
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
                tracing::warn!(error = %e, "viewer task failed");
            }
        }
    }
}

/// The background task that owns the socket.
struct Task {
    config: ViewerConfig,
    ping_interval: Duration,
    events: mpsc::Sender<ViewerEvent>,
    control: mpsc::UnboundedReceiver<Control>,
    sink: Arc<tokio::sync::Mutex<Option<Sink>>>,
    connected: Arc<AtomicBool>,
    last_sequence: Arc<std::sync::Mutex<Option<u64>>>,
    cancel: CancellationToken,
    /// Transient reconnects since the last socket opened.
    attempts: u32,
    /// 4001 retries since the last message arrived.
    not_found: u32,
    /// Whether a 1001 close may be retried at once.
    at_once: crate::backoff::AtOnce,
}

/// How one connection (or connection attempt) ended.
#[derive(Debug)]
enum Ended {
    /// [`ViewerSocket::close`] was called, or every handle was dropped.
    Shutdown,
    /// [`ViewerSocket::reconnect`] was called.
    Restart,
    /// The socket closed or broke after it had opened.
    Lost { code: Option<u16>, reason: String },
    /// The socket never opened; `permanent` when the server refused the credential.
    Failed { reason: String, permanent: bool },
}

/// What to do after a connection ended.
#[derive(Debug, PartialEq)]
enum Next {
    /// Wait, then connect again; `attempt` counts from 1.
    Retry { attempt: u32, delay: Duration },
    /// End the viewer with this code and reason.
    Stop { code: Option<u16>, reason: String },
}

impl Task {
    async fn run(mut self) {
        let (code, reason) = self.run_connections().await;
        tracing::debug!(?code, %reason, "viewer ended");
        self.connected.store(false, Ordering::SeqCst);
        // Whoever reads events may be gone already; the end needs no audience.
        let _ = self.events.send(ViewerEvent::Closed { code, reason }).await;
    }

    fn closed_by_client() -> (Option<u16>, String) {
        (Some(CLOSE_NORMAL), "closed by the client".to_owned())
    }

    fn last_sequence(&self) -> Option<u64> {
        *self
            .last_sequence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn run_connections(&mut self) -> (Option<u16>, String) {
        let mut ever_opened = false;
        loop {
            let url = match subscribe_url(
                &self.config.base_url,
                &self.config.session_id,
                self.last_sequence(),
            ) {
                Ok(url) => url,
                Err(e) => return (None, e.to_string()),
            };
            let opened = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Self::closed_by_client(),
                Some(Control::Reconnect) = self.control.recv() => {
                    self.restart_counts();
                    continue;
                }
                opened = open(&self.config, url) => opened,
            };
            let ended = match opened {
                Ok(ws) => {
                    tracing::debug!("viewer websocket open");
                    ever_opened = true;
                    self.attempts = 0;
                    // The write half is in place before anyone hears "connected", so a
                    // send right after that event cannot find the socket missing.
                    let (sink, stream) = ws.split();
                    *self.sink.lock().await = Some(sink);
                    self.connected.store(true, Ordering::SeqCst);
                    self.emit(ViewerEvent::Connected).await;
                    let ended = self.serve(stream).await;
                    self.connected.store(false, Ordering::SeqCst);
                    ended
                }
                Err(ended) => ended,
            };
            let next = match ended {
                Ended::Shutdown => return Self::closed_by_client(),
                Ended::Restart => {
                    self.restart_counts();
                    continue;
                }
                ended => self.next_step(ended, ever_opened),
            };
            let (attempt, delay) = match next {
                Next::Stop { code, reason } => return (code, reason),
                Next::Retry { attempt, delay } => (attempt, delay),
            };
            tracing::debug!(attempt, ?delay, "viewer reconnecting");
            self.emit(ViewerEvent::Reconnecting { attempt, delay })
                .await;
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Self::closed_by_client(),
                Some(Control::Reconnect) = self.control.recv() => self.restart_counts(),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn restart_counts(&mut self) {
        self.attempts = 0;
        self.not_found = 0;
    }

    /// Applies the reconnect rules of the module docs to a lost or failed connection.
    fn next_step(&mut self, ended: Ended, ever_opened: bool) -> Next {
        let (code, reason) = match ended {
            Ended::Failed {
                reason,
                permanent: true,
            } => return Next::Stop { code: None, reason },
            Ended::Failed { reason, .. } if !ever_opened => {
                return Next::Stop { code: None, reason }
            }
            Ended::Failed { reason, .. } => (None, reason),
            Ended::Lost { code, reason } => (code, reason),
            Ended::Shutdown | Ended::Restart => {
                unreachable!("handled before the reconnect rules")
            }
        };
        match code {
            Some(CLOSE_UNAUTHORIZED) => Next::Stop { code, reason },
            Some(CLOSE_SESSION_NOT_FOUND) => {
                if self.not_found >= self.config.max_session_not_found_retries {
                    return Next::Stop { code, reason };
                }
                self.not_found += 1;
                Next::Retry {
                    attempt: self.not_found,
                    delay: self.config.session_not_found_delay * self.not_found,
                }
            }
            _ => {
                if self.attempts >= self.config.max_reconnect_attempts {
                    return Next::Stop {
                        code,
                        reason: format!(
                            "gave up after {} reconnect attempts; last failure: {reason}",
                            self.attempts
                        ),
                    };
                }
                self.attempts = self.attempts.saturating_add(1);
                let code = code.filter(|c| *c != CLOSE_GOING_AWAY || self.at_once.allow());
                Next::Retry {
                    attempt: self.attempts,
                    delay: transient_delay(
                        code,
                        self.config.reconnect_delay,
                        self.config.reconnect_jitter,
                    ),
                }
            }
        }
    }

    /// Sends an event to the receiver, waiting while it is full unless the viewer is
    /// closed meanwhile. A dropped receiver is not an error: sending may still matter.
    async fn emit(&self, event: ViewerEvent) {
        tokio::select! {
            () = self.cancel.cancelled() => {}
            _ = self.events.send(event) => {}
        }
    }

    /// Reads one open socket until it ends.
    async fn serve(&mut self, mut stream: futures_util::stream::SplitStream<WsStream>) -> Ended {
        let start = Instant::now() + self.ping_interval;
        let mut ping = tokio::time::interval_at(start, self.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ended = loop {
            let message = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break Ended::Shutdown,
                Some(Control::Reconnect) = self.control.recv() => break Ended::Restart,
                _ = ping.tick() => {
                    let mut sink = self.sink.lock().await;
                    if let Some(sink) = sink.as_mut() {
                        if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                            break Ended::Lost { code: None, reason: format!("ping failed: {e}") };
                        }
                    }
                    continue;
                }
                message = stream.next() => message,
            };
            let text = match message {
                None => {
                    break Ended::Lost {
                        code: None,
                        reason: "connection ended without a close frame".into(),
                    }
                }
                Some(Err(e)) => {
                    break Ended::Lost {
                        code: None,
                        reason: e.to_string(),
                    }
                }
                Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                Some(Ok(Message::Binary(data))) => match String::from_utf8(data.to_vec()) {
                    Ok(text) => text,
                    Err(_) => {
                        self.emit(ViewerEvent::Error(
                            "a binary frame that is not UTF-8".into(),
                        ))
                        .await;
                        continue;
                    }
                },
                // Tungstenite answers pings itself, and pongs are not checked.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                        None => (None, "closed without a status".to_owned()),
                    };
                    break Ended::Lost { code, reason };
                }
            };
            self.deliver(&text).await;
        };
        let sink = self.sink.lock().await.take();
        if let Some(mut sink) = sink {
            match ended {
                Ended::Shutdown | Ended::Restart => {
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    // The socket may already be broken; closing is best effort.
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    drain(&mut stream).await;
                }
                _ => {
                    // Tungstenite queued its half of the closing handshake while reading
                    // the server's close frame; flushing sends it.
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.flush()).await;
                }
            }
        }
        ended
    }

    /// Parses a frame (one JSON object, or several on separate lines) and emits each new
    /// message, dropping keep-alives and events at or below the last sequence number.
    async fn deliver(&mut self, text: &str) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let value: Value = match serde_json::from_str(line) {
                Ok(value) => value,
                Err(e) => {
                    self.emit(ViewerEvent::Error(format!(
                        "unreadable frame from the server: {e}"
                    )))
                    .await;
                    continue;
                }
            };
            if value.get("type").and_then(Value::as_str) == Some("keep_alive") {
                continue;
            }
            if let Some(seq) = event_sequence(&value) {
                let mut last = self
                    .last_sequence
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.is_some_and(|l| seq <= l) {
                    tracing::debug!(seq, "dropping an event already delivered");
                    continue;
                }
                *last = Some(seq);
            }
            // A message proves the session exists, so 4001 retries start over.
            self.not_found = 0;
            self.emit(ViewerEvent::Message(value)).await;
        }
    }
}

/// The wait before reconnecting after a transient close: none after a 1001 (the server
/// went away on purpose, and a restarted one may already listen), else `delay` with
/// `jitter` so that the viewers of a restarted server do not all return at once.
pub(crate) fn transient_delay(code: Option<u16>, delay: Duration, jitter: f64) -> Duration {
    if code == Some(CLOSE_GOING_AWAY) {
        Duration::ZERO
    } else {
        crate::backoff::relative_jitter(delay, jitter)
    }
}

/// Opens the socket with the current token, or says why it could not.
async fn open(config: &ViewerConfig, url: Url) -> std::result::Result<WsStream, Ended> {
    let failed = |reason: String| Ended::Failed {
        reason,
        permanent: false,
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| failed(format!("bad websocket request: {e}")))?;
    let headers = request.headers_mut();
    for (name, value) in &config.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        "anthropic-version",
        HeaderValue::from_static(ANTHROPIC_VERSION),
    );
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.token.token()))
        .map_err(|_| failed("the token is not a valid header value".into()))?;
    auth.set_sensitive(true);
    headers.insert(AUTHORIZATION, auth);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(config.tls.connector()),
    );
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Err(_) => Err(failed(format!(
            "no connection within {:?}",
            config.connect_timeout
        ))),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            Err(Ended::Failed {
                reason: format!("upgrade refused with HTTP {status}"),
                // Retrying a refused credential only delays the same answer.
                permanent: matches!(status, 401 | 403),
            })
        }
        Ok(Err(e)) => Err(failed(crate::ingress::connect_failure(&e))),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// After a client-initiated close, reads until the server's close frame arrives (briefly),
/// so the closing handshake completes before the connection is dropped.
async fn drain(stream: &mut SplitStream<WsStream>) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
