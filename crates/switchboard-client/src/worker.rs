//! The CCR v2 worker transport (docs/PROTOCOL.md §9): what a v2 bridge child or the env-less
//! REPL speaks to one session, mirroring the official SSETransport, CCRClient,
//! SerialBatchEventUploader and WorkerStateUploader.
//!
//! Everything lives under the session URL `{api}/v1/code/sessions/{id}`, carries the
//! H-CCR header set (§3.1) with the bearer token of a [`TokenSource`] (read on every
//! request and every reconnect), and every body carries the worker epoch.
//!
//! - **Reading** is an SSE stream (`GET …/worker/events/stream`) held by a background
//!   task. Only `event: client_event` frames are used: their `payload` goes to the
//!   receiver that [`WorkerTransport::start`] returns and their `event_id` is acknowledged
//!   as `received`. The frame's `id:` is the resume high-water mark
//!   ([`WorkerTransport::last_sequence_num`]), sent back as `Last-Event-ID` and
//!   `?from_sequence_num=` on every reconnect. A dropped stream, 45 s without any frame
//!   or comment, a frame over 1 MiB and any status but 401/403/404/409 lead to a
//!   reconnect with a backoff of 500 ms doubling to 2 s (±25 %) within a 10-minute budget
//!   (the official client doubles to 30 s); a stream the server ended cleanly is reopened
//!   at once.
//!   401, 403 and 404 end the transport ([`CloseReason::StreamRejected`]).
//! - **Writing** goes through queues drained by one task each, one request in flight per
//!   queue and order preserved: client events (`POST …/worker/events`, ≤ 100 per batch),
//!   internal events, delivery updates (≤ 64 per batch) and state patches
//!   (`PUT …/worker`, coalesced while one is in flight). Failures are retried without
//!   limit, 500 ms doubling to 2 s plus up to 500 ms (the official client doubles to
//!   30 s), or after `Retry-After` on a 429.
//!   [`WorkerTransport::flush`] waits until everything written so far was accepted.
//! - **Startup** (§9.9): the stream connects while the initial `PUT /worker` (idle) and
//!   `GET /worker` run; the heartbeat (`POST …/worker/heartbeat` every 20 s) starts once
//!   the PUT succeeded, and [`WorkerTransport::start`] returns once both are done. A
//!   failed initial PUT fails the start.
//! - **409 on any request** means a newer worker owns the session: every task stops, the
//!   receiver ends and the state becomes [`CloseReason::Superseded`]. So does a 401 or 403
//!   when the bearer token is a JWT whose `exp` has passed, and the tenth 401/403 in a row.

mod sse;
mod uploader;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Map, Value};
use switchboard_proto::code::{
    DeliveryRequest, DeliveryStatus, DeliveryUpdate, HeartbeatRequest, InternalEvent,
    InternalEventsPage, InternalEventsQuery, InternalEventsRequest, RegisterWorkerResponse,
    StreamClientEvent, WorkerEvent, WorkerEventsRequest, WorkerResponse, WorkerStateRequest,
    WorkerStatus, CLIENT_EVENT,
};
use switchboard_proto::ANTHROPIC_VERSION;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use url::Url;

use crate::auth::TokenSource;
use crate::backoff::{additive_jitter, exponential, relative_jitter};
use crate::error::{error_from_response, ApiError, Result};
use crate::http::{check_id, map_send_error};

pub(crate) use uploader::StatePatch;
use uploader::{StateUploader, Uploader};

/// The most client events one POST carries.
pub const MAX_EVENT_BATCH: usize = 100;

/// The most bytes of client events one POST carries (10 MiB); a single larger event is
/// still sent alone.
pub const MAX_EVENT_BATCH_BYTES: usize = 10 << 20;

/// The most delivery updates one POST carries.
pub const MAX_DELIVERY_BATCH: usize = 64;

/// How many internal events may wait before [`WorkerTransport::write_internal`] blocks.
pub const INTERNAL_QUEUE_CAPACITY: usize = 200;

/// The largest SSE frame the reader buffers before it drops the connection (1 MiB).
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// The prefix some session tokens carry before their JWT; it is skipped to read `exp`.
const SESSION_TOKEN_PREFIX: &str = "sk-ant-si-";

/// The `User-Agent` of every request unless configured otherwise.
pub const DEFAULT_USER_AGENT: &str = concat!("switchboard-client/", env!("CARGO_PKG_VERSION"));

/// The `external_metadata` of the initial `PUT /worker`, as the 2.1.112 client sends it:
/// a fresh worker is not waiting on any permission prompt and has no task summary.
pub fn initial_external_metadata() -> Value {
    json!({"pending_action": null, "task_summary": null})
}

/// Every delay and limit of the transport. The defaults are the official client's (§15)
/// except the backoff caps, which are lower so that a worker is back within about 2.5 s
/// of its server after an outage; tests shorten them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerTimings {
    /// The deadline of PUTs and POSTs (10 s).
    pub request_timeout: Duration,
    /// The deadline of `GET /worker` (30 s).
    pub get_timeout: Duration,
    /// How many times `GET /worker` is tried (10).
    pub get_attempts: u32,
    /// The deadline of a heartbeat (5 s).
    pub heartbeat_timeout: Duration,
    /// The heartbeat period (20 s).
    pub heartbeat_interval: Duration,
    /// The relative jitter of the heartbeat period: 0 for bridge children, 0.1 for the
    /// env-less REPL.
    pub heartbeat_jitter: f64,
    /// The first upload retry delay, doubled after each failure (500 ms).
    pub upload_base_delay: Duration,
    /// The largest upload retry delay before jitter (2 s; the official client's is 30 s).
    pub upload_max_delay: Duration,
    /// The most jitter added to an upload retry delay (500 ms).
    pub upload_max_jitter: Duration,
    /// The shortest wait a `Retry-After` is clamped to (500 ms).
    pub retry_after_min: Duration,
    /// The longest wait a `Retry-After` is clamped to (30 s).
    pub retry_after_max: Duration,
    /// How many 401/403 answers in a row count as losing the session (10).
    pub auth_failure_threshold: u32,
    /// How long the stream's response head may take (15 s).
    pub stream_connect_timeout: Duration,
    /// How long the stream may stay silent (no frame, no comment) before it is reopened
    /// (45 s).
    pub stream_liveness_timeout: Duration,
    /// The first stream reconnect delay, doubled after each failed attempt (500 ms; the
    /// official client's is 1 s). A stream the server ended cleanly (it is going away)
    /// is reopened at once.
    pub stream_reconnect_base_delay: Duration,
    /// The largest stream reconnect delay before jitter (2 s; the official client's is
    /// 30 s, which brings a worker back up to 30 s after its server).
    pub stream_reconnect_max_delay: Duration,
    /// The relative jitter of stream reconnect delays (±25 %).
    pub stream_reconnect_jitter: f64,
    /// How long the stream keeps trying to reconnect before the transport gives up
    /// (10 minutes); it restarts after every successful connection.
    pub stream_reconnect_budget: Duration,
}

impl Default for WorkerTimings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            get_timeout: Duration::from_secs(30),
            get_attempts: 10,
            heartbeat_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_jitter: 0.0,
            upload_base_delay: Duration::from_millis(500),
            upload_max_delay: Duration::from_secs(2),
            upload_max_jitter: Duration::from_millis(500),
            retry_after_min: Duration::from_millis(500),
            retry_after_max: Duration::from_secs(30),
            auth_failure_threshold: 10,
            stream_connect_timeout: Duration::from_secs(15),
            stream_liveness_timeout: Duration::from_secs(45),
            stream_reconnect_base_delay: Duration::from_millis(500),
            stream_reconnect_max_delay: Duration::from_secs(2),
            stream_reconnect_jitter: 0.25,
            stream_reconnect_budget: Duration::from_secs(600),
        }
    }
}

/// What a worker transport attaches to and how. Build it with [`WorkerConfig::new`], then
/// adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// `{api}/v1/code/sessions/{id}`, without trailing slash.
    pub session_url: String,
    /// The session id for the heartbeat body: the last segment of the session URL.
    pub session_id: String,
    /// The bearer token: the worker JWT from `/bridge`, or the work item's ingress token.
    pub token: TokenSource,
    /// The epoch every write carries.
    pub worker_epoch: u64,
    /// The sequence number to resume the stream after (`None` for a fresh worker).
    pub from_sequence_num: Option<u64>,
    /// The `external_metadata` of the initial `PUT /worker`.
    pub initial_metadata: Value,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Delays and limits.
    pub timings: WorkerTimings,
    /// How many inbound messages the receiver buffers before the stream reader waits.
    pub channel_capacity: usize,
    /// The largest SSE frame accepted; a larger one drops the connection.
    pub max_frame_bytes: usize,
    /// The HTTP client; the default trusts [`ClientTls::default`](crate::ClientTls).
    pub http: reqwest::Client,
}

impl WorkerConfig {
    /// A configuration with the official defaults for the session at `session_url`
    /// (`http[s]://host[/prefix]/v1/code/sessions/{id}`), whose last path segment must be
    /// a safe id and becomes [`session_id`](Self::session_id).
    pub fn new(
        session_url: impl AsRef<str>,
        token: impl Into<TokenSource>,
        worker_epoch: u64,
    ) -> Result<Self> {
        let (session_url, session_id) = parse_session_url(session_url.as_ref())?;
        Ok(Self {
            session_url,
            session_id,
            token: token.into(),
            worker_epoch,
            from_sequence_num: None,
            initial_metadata: initial_external_metadata(),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            timings: WorkerTimings::default(),
            channel_capacity: 1024,
            max_frame_bytes: MAX_FRAME_BYTES,
            http: crate::ClientTls::default().http_client(),
        })
    }

    /// This configuration trusting `tls`'s roots for `https`.
    pub fn with_tls(mut self, tls: &crate::ClientTls) -> Self {
        self.http = tls.http_client();
        self
    }

    /// This configuration resuming the stream after `sequence_num`.
    pub fn resuming_from(mut self, sequence_num: Option<u64>) -> Self {
        self.from_sequence_num = sequence_num;
        self
    }
}

/// The session URL of a code session: `{base}/v1/code/sessions/{session_id}`, with the
/// base's trailing slashes dropped and its path prefix kept.
pub fn worker_session_url(base_url: &str, session_id: &str) -> Result<String> {
    let session = check_id("session_id", session_id)?;
    let url = format!(
        "{}/v1/code/sessions/{session}",
        base_url.trim_end_matches('/')
    );
    parse_session_url(&url).map(|(url, _)| url)
}

/// Checks a session URL and splits off its last segment, the session id.
fn parse_session_url(session_url: &str) -> Result<(String, String)> {
    let trimmed = session_url.trim_end_matches('/');
    let url = Url::parse(trimmed)
        .map_err(|e| ApiError::InvalidRequest(format!("session url {session_url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::InvalidRequest(format!(
            "session url {session_url:?}: the scheme must be http or https"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ApiError::InvalidRequest(format!(
            "session url {session_url:?}: no query or fragment allowed"
        )));
    }
    let id = url
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .unwrap_or_default();
    let id = check_id("session_id", id)?.to_owned();
    Ok((trimmed.to_owned(), id))
}

/// Why a transport ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// [`WorkerTransport::close`] was called, or every handle was dropped.
    ClosedByClient,
    /// A request was answered with 409, or the credential was rejected for good (an
    /// expired JWT, or too many 401/403 in a row): a newer worker epoch owns the session.
    Superseded,
    /// The stream was answered with 401, 403 or 404, which are permanent. After a 401 the
    /// env-less bridge fetches new credentials.
    StreamRejected {
        /// The HTTP status.
        status: u16,
    },
    /// The stream could not be reopened within the reconnect budget.
    StreamGaveUp {
        /// The last failure.
        reason: String,
    },
    /// The initial `PUT /worker` failed.
    InitFailed {
        /// Why.
        reason: String,
    },
}

/// Where a transport stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// The initial `PUT` and `GET /worker` are under way.
    Connecting,
    /// The worker state was read; the worker counts as connected (the stream may still
    /// be reconnecting in the background).
    Connected,
    /// The transport ended for good; the receiver has ended too.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

impl WorkerState {
    /// True for [`WorkerState::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed { .. })
    }
}

/// The shared core of a transport: the request plumbing and the end-of-life switch.
struct Core {
    http: reqwest::Client,
    session_url: String,
    session_id: String,
    token: TokenSource,
    epoch: u64,
    headers: HeaderMap,
    timings: WorkerTimings,
    cancel: CancellationToken,
    state: watch::Sender<WorkerState>,
    auth_failures: AtomicU32,
    /// The highest stream sequence number delivered to the receiver.
    high_water: Mutex<Option<u64>>,
}

impl Core {
    /// Ends the transport with `reason` unless it already ended; stops every task.
    fn end(&self, reason: CloseReason) {
        let changed = self.state.send_if_modified(|state| {
            if state.is_closed() {
                false
            } else {
                *state = WorkerState::Closed {
                    reason: reason.clone(),
                };
                true
            }
        });
        if changed {
            tracing::info!(?reason, "worker transport ended");
        }
        self.cancel.cancel();
    }

    /// The error a call gets once the transport has ended.
    fn close_error(&self) -> ApiError {
        match &*self.state.borrow() {
            WorkerState::Closed {
                reason: CloseReason::Superseded,
            } => ApiError::Superseded,
            _ => ApiError::Closed,
        }
    }

    fn bearer(&self, token: &str) -> Result<HeaderValue> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ApiError::InvalidRequest("the token is not a valid header value".to_owned())
        })?;
        auth.set_sensitive(true);
        Ok(auth)
    }

    /// Sends one request below the session URL and applies the CCRClient status rules:
    /// any 2xx is success (its body returned), 409 ends the transport as superseded, and
    /// 401/403 do too when the token has expired or after too many in a row. Returns
    /// [`ApiError::Closed`] or [`ApiError::Superseded`] at once when the transport ends
    /// meanwhile.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes> {
        if self.cancel.is_cancelled() {
            return Err(self.close_error());
        }
        let token = self.token.token();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session_url))
            .headers(self.headers.clone())
            .header(AUTHORIZATION, self.bearer(&token)?)
            .header(ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let exchange = async {
            let response = request.send().await.map_err(map_send_error)?;
            let status = response.status();
            tracing::debug!(%method, path, status = status.as_u16(), "worker request");
            if status.is_success() {
                self.auth_failures.store(0, Ordering::SeqCst);
                return response.bytes().await.map_err(ApiError::Transport);
            }
            match status.as_u16() {
                409 => {
                    self.end(CloseReason::Superseded);
                    Err(ApiError::Superseded)
                }
                401 | 403 => {
                    let error = error_from_response(response).await;
                    let failures = self.auth_failures.fetch_add(1, Ordering::SeqCst) + 1;
                    if token_expired(&token) || failures >= self.timings.auth_failure_threshold {
                        tracing::warn!(
                            failures,
                            error = %error,
                            "worker credential rejected for good; treating it as superseded"
                        );
                        self.end(CloseReason::Superseded);
                        return Err(ApiError::Superseded);
                    }
                    Err(error)
                }
                _ => Err(error_from_response(response).await),
            }
        };
        tokio::select! {
            () = self.cancel.cancelled() => Err(self.close_error()),
            result = exchange => result,
        }
    }

    /// The wait before retrying a failed upload: `Retry-After` (clamped) on a 429 that
    /// has one, else the exponential backoff; both plus the jitter.
    fn retry_delay(&self, attempt: u32, error: &ApiError) -> Duration {
        let t = &self.timings;
        let base = match error.retry_after() {
            Some(after) if error.status() == Some(429) => {
                after.clamp(t.retry_after_min, t.retry_after_max.max(t.retry_after_min))
            }
            _ => exponential(attempt, t.upload_base_delay, t.upload_max_delay),
        };
        additive_jitter(base, t.upload_max_jitter)
    }

    fn high_water(&self) -> Option<u64> {
        *self
            .high_water
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a transport had not delivered when it ended: handed to a successor so nothing is
/// lost across a credential refresh.
#[derive(Debug, Default)]
pub(crate) struct Unsent {
    pub(crate) events: Vec<Value>,
    pub(crate) internal: Vec<InternalEvent>,
    pub(crate) deliveries: Vec<DeliveryUpdate>,
    pub(crate) state: Option<StatePatch>,
}

/// A CCR v2 worker's connection to one session: an SSE reader and four uploaders in
/// background tasks.
///
/// Cheap to clone; clones share the connection. The tasks end on
/// [`close`](Self::close), when the transport ends for good, or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct WorkerTransport {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    events: Arc<Uploader<WorkerEvent>>,
    internal: Arc<Uploader<InternalEvent>>,
    deliveries: Arc<Uploader<DeliveryUpdate>>,
    state: Arc<StateUploader>,
    /// The `external_metadata` of the initial `PUT /worker`.
    initial_metadata: Value,
    external_metadata: Mutex<Option<Value>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can write or close any more.
        self.core.end(CloseReason::ClosedByClient);
    }
}

impl std::fmt::Debug for WorkerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerTransport")
            .field("session_url", &self.inner.core.session_url)
            .field("worker_epoch", &self.inner.core.epoch)
            .field("state", &*self.inner.core.state.borrow())
            .finish_non_exhaustive()
    }
}

impl WorkerTransport {
    /// Starts the transport: opens the stream in the background, sends the initial
    /// `PUT /worker` and reads `GET /worker`, and returns once both are done.
    ///
    /// Returns the transport and the receiver of inbound payloads (each an object with a
    /// string `type`); the receiver ends when the transport does. Fails with
    /// [`ApiError::InvalidRequest`] for a token that cannot go into a header, with
    /// [`ApiError::Superseded`] when the epoch is already stale, and with the PUT's error
    /// when the initial PUT fails. A `GET /worker` that keeps failing is logged and
    /// leaves [`external_metadata`](Self::external_metadata) empty.
    pub async fn start(config: WorkerConfig) -> Result<(Self, mpsc::Receiver<Value>)> {
        let (transport, receiver) = Self::spawn(config)?;
        let core = transport.inner.core.clone();
        let init = async {
            let result = transport.initialize().await;
            if let Err(e) = &result {
                // Ending at once also stops the GET retries; after a 409 the transport
                // has already ended as superseded and keeps that reason.
                core.end(CloseReason::InitFailed {
                    reason: e.to_string(),
                });
            }
            result
        };
        let read = read_worker(&core);
        let (init, read) = tokio::join!(init, read);
        if let Err(e) = init {
            transport.close().await;
            return Err(e);
        }
        match read {
            Ok(metadata) => {
                *transport
                    .inner
                    .external_metadata
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = metadata;
            }
            Err(e @ (ApiError::Superseded | ApiError::Closed)) => {
                transport.close().await;
                return Err(e);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the worker state"),
        }
        core.state.send_if_modified(|state| {
            let connecting = *state == WorkerState::Connecting;
            if connecting {
                *state = WorkerState::Connected;
            }
            connecting
        });
        if core.cancel.is_cancelled() {
            // The stream may have been rejected while the state was being read.
            let error = match transport.state() {
                WorkerState::Closed {
                    reason: CloseReason::StreamRejected { status },
                } => ApiError::from_status(status, b"", None),
                _ => core.close_error(),
            };
            transport.close().await;
            return Err(error);
        }
        Ok((transport, receiver))
    }

    fn spawn(config: WorkerConfig) -> Result<(Self, mpsc::Receiver<Value>)> {
        let (session_url, derived_id) = parse_session_url(&config.session_url)?;
        let session_id = if config.session_id.is_empty() {
            derived_id
        } else {
            check_id("session_id", &config.session_id)?.to_owned()
        };
        // An unusable token fails here rather than in every task.
        HeaderValue::from_str(&format!("Bearer {}", config.token.token())).map_err(|_| {
            ApiError::InvalidRequest("the token is not a valid header value".to_owned())
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        headers.insert(
            http::header::USER_AGENT,
            crate::http::lossy_header_value(&config.user_agent),
        );
        let core = Arc::new(Core {
            http: config.http,
            session_url,
            session_id,
            token: config.token,
            epoch: config.worker_epoch,
            headers,
            timings: config.timings,
            cancel: CancellationToken::new(),
            state: watch::channel(WorkerState::Connecting).0,
            auth_failures: AtomicU32::new(0),
            high_water: Mutex::new(config.from_sequence_num),
        });
        let events = Arc::new(Uploader::new(
            "events",
            "/worker/events",
            MAX_EVENT_BATCH,
            MAX_EVENT_BATCH_BYTES,
            usize::MAX,
            |worker_epoch, events| {
                serde_json::to_vec(&WorkerEventsRequest {
                    worker_epoch,
                    events,
                })
            },
        ));
        let internal = Arc::new(Uploader::new(
            "internal-events",
            "/worker/internal-events",
            MAX_EVENT_BATCH,
            MAX_EVENT_BATCH_BYTES,
            INTERNAL_QUEUE_CAPACITY,
            |worker_epoch, events| {
                serde_json::to_vec(&InternalEventsRequest {
                    worker_epoch,
                    events,
                })
            },
        ));
        let deliveries = Arc::new(Uploader::new(
            "delivery",
            "/worker/events/delivery",
            MAX_DELIVERY_BATCH,
            usize::MAX,
            usize::MAX,
            |worker_epoch, updates| {
                serde_json::to_vec(&DeliveryRequest {
                    worker_epoch,
                    updates,
                })
            },
        ));
        let state = Arc::new(StateUploader::new());
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let span = tracing::info_span!("worker", session = %core.session_id, epoch = core.epoch);
        let reader = StreamReader {
            core: core.clone(),
            deliveries: deliveries.clone(),
            tx,
            max_frame_bytes: config.max_frame_bytes.max(1),
        };
        let tasks = vec![
            tokio::spawn(reader.run().instrument(span.clone())),
            tokio::spawn(events.clone().run(core.clone()).instrument(span.clone())),
            tokio::spawn(internal.clone().run(core.clone()).instrument(span.clone())),
            tokio::spawn(
                deliveries
                    .clone()
                    .run(core.clone())
                    .instrument(span.clone()),
            ),
            tokio::spawn(state.clone().run(core.clone()).instrument(span)),
        ];
        let inner = Inner {
            core,
            events,
            internal,
            deliveries,
            state,
            initial_metadata: config.initial_metadata,
            external_metadata: Mutex::new(None),
            tasks: Mutex::new(tasks),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            rx,
        ))
    }

    /// The initial `PUT /worker`; on success, starts the heartbeat.
    async fn initialize(&self) -> Result<()> {
        let core = &self.inner.core;
        let body = WorkerStateRequest {
            worker_epoch: core.epoch,
            worker_status: Some(WorkerStatus::Idle),
            external_metadata: Some(self.inner.initial_metadata.clone()),
            ..WorkerStateRequest::default()
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| ApiError::Decode(format!("could not encode the worker state: {e}")))?;
        let body = Bytes::from(body);
        core.send(
            Method::PUT,
            "/worker",
            Some(body),
            core.timings.request_timeout,
        )
        .await?;
        let span = tracing::info_span!("worker", session = %core.session_id, epoch = core.epoch);
        let heartbeat = tokio::spawn(heartbeat(core.clone()).instrument(span));
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(heartbeat);
        Ok(())
    }

    /// The session URL, without trailing slash.
    pub fn session_url(&self) -> &str {
        &self.inner.core.session_url
    }

    /// The session id the heartbeat names.
    pub fn session_id(&self) -> &str {
        &self.inner.core.session_id
    }

    /// The current bearer token.
    pub(crate) fn token(&self) -> String {
        self.inner.core.token.token()
    }

    /// The epoch this worker writes with.
    pub fn worker_epoch(&self) -> u64 {
        self.inner.core.epoch
    }

    /// The highest stream sequence number delivered to the receiver (or the one the
    /// transport resumed from): what a rebuilt transport should resume after.
    pub fn last_sequence_num(&self) -> Option<u64> {
        self.inner.core.high_water()
    }

    /// The session's `external_metadata` as `GET /worker` returned it at start (`None`
    /// for a new session or when the read failed).
    pub fn external_metadata(&self) -> Option<Value> {
        self.inner
            .external_metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current state.
    pub fn state(&self) -> WorkerState {
        self.inner.core.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn state_changes(&self) -> watch::Receiver<WorkerState> {
        self.inner.core.state.subscribe()
    }

    /// Waits until the transport has ended and returns why.
    pub async fn closed(&self) -> CloseReason {
        let mut state = self.inner.core.state.subscribe();
        let reached = state
            .wait_for(WorkerState::is_closed)
            .await
            .map(|s| s.clone());
        match reached {
            Ok(WorkerState::Closed { reason }) => reason,
            // The sender lives in the core, which this handle keeps alive, so the channel
            // cannot close first; report a client close if it somehow does.
            _ => CloseReason::ClosedByClient,
        }
    }

    fn check_open(&self) -> Result<()> {
        let core = &self.inner.core;
        if core.cancel.is_cancelled() {
            Err(core.close_error())
        } else {
            Ok(())
        }
    }

    /// Queues client events (`POST …/worker/events`), in order. Each must be a JSON
    /// object; one without a `uuid` gets a fresh v4 one (the server's idempotency key),
    /// and `stream_event` payloads are marked ephemeral.
    ///
    /// This only queues; [`flush`](Self::flush) waits for the upload. Fails with
    /// [`ApiError::InvalidRequest`] (queuing nothing) when a message is not an object,
    /// and with [`ApiError::Closed`] or [`ApiError::Superseded`] after the end.
    pub fn write(&self, messages: Vec<Value>) -> Result<()> {
        self.check_open()?;
        if messages.iter().any(|m| !m.is_object()) {
            return Err(ApiError::InvalidRequest(
                "every client event must be a JSON object".to_owned(),
            ));
        }
        let events = messages
            .into_iter()
            .map(|mut payload| {
                ensure_uuid(&mut payload);
                let ephemeral = (payload.get("type").and_then(Value::as_str)
                    == Some("stream_event"))
                .then_some(true);
                WorkerEvent { payload, ephemeral }
            })
            .collect();
        self.inner.events.enqueue(events);
        Ok(())
    }

    /// Queues internal (transcript) events (`POST …/worker/internal-events`), waiting
    /// while [`INTERNAL_QUEUE_CAPACITY`] events are queued. Payloads without a `uuid` get
    /// one.
    pub async fn write_internal(&self, events: Vec<InternalEvent>) -> Result<()> {
        self.check_open()?;
        let events = events
            .into_iter()
            .map(|mut event| {
                ensure_uuid(&mut event.payload);
                event
            })
            .collect();
        self.inner
            .internal
            .enqueue_wait(&self.inner.core, events)
            .await
    }

    /// Queues a delivery update (`POST …/worker/events/delivery`). `received` is sent by
    /// the transport itself for every stream event; a worker adds `processing` and
    /// `processed` for prompts, keyed by the prompt's `uuid`.
    pub fn report_delivery(
        &self,
        event_id: impl Into<String>,
        status: DeliveryStatus,
    ) -> Result<()> {
        self.check_open()?;
        self.inner.deliveries.enqueue(vec![DeliveryUpdate {
            event_id: event_id.into(),
            status,
        }]);
        Ok(())
    }

    /// Reports the worker's status (`PUT …/worker`). `requires_action_details` is sent as
    /// given, and as an explicit `null` when `None`, which clears the details.
    pub fn report_state(
        &self,
        status: WorkerStatus,
        requires_action_details: Option<Value>,
    ) -> Result<()> {
        self.check_open()?;
        self.inner.state.report(StatePatch {
            worker_status: Some(status),
            requires_action_details: Some(requires_action_details),
            ..StatePatch::default()
        });
        Ok(())
    }

    /// Reports a merge patch of the session's `external_metadata` (a JSON object; a
    /// `null` value deletes that key). Patches reported while one is in flight are
    /// merged key by key, the newer value winning.
    pub fn report_metadata(&self, external_metadata_patch: Value) -> Result<()> {
        self.check_open()?;
        let patch = into_object("external_metadata", external_metadata_patch)?;
        self.inner.state.report(StatePatch {
            external_metadata: Some(patch),
            ..StatePatch::default()
        });
        Ok(())
    }

    /// Reports a merge patch of the worker's `internal_metadata` (a JSON object).
    pub fn report_internal_metadata(&self, internal_metadata_patch: Value) -> Result<()> {
        self.check_open()?;
        let patch = into_object("internal_metadata", internal_metadata_patch)?;
        self.inner.state.report(StatePatch {
            internal_metadata: Some(patch),
            ..StatePatch::default()
        });
        Ok(())
    }

    /// Queues a raw state patch (used to hand patches over to a rebuilt transport).
    pub(crate) fn report_patch(&self, patch: StatePatch) -> Result<()> {
        self.check_open()?;
        self.inner.state.report(patch);
        Ok(())
    }

    /// Waits until everything written and reported before this call was accepted by the
    /// server: client events, internal events, delivery updates and state patches. Fails
    /// with [`ApiError::Closed`] or [`ApiError::Superseded`] if the transport ends first.
    pub async fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        let core = &inner.core;
        let (events, internal, deliveries, state) = tokio::join!(
            inner.events.flushed(core),
            inner.internal.flushed(core),
            inner.deliveries.flushed(core),
            inner.state.flushed(core),
        );
        events.and(internal).and(deliveries).and(state)
    }

    /// Reads one page of the worker's stored transcript (`GET …/worker/internal-events`,
    /// §9.6), as a worker resuming with `--resume` does: `query.subagents` picks the
    /// subagents' entries, `query.cursor` is the previous page's `next_cursor`. One
    /// attempt; a body that is not a page is [`ApiError::Decode`].
    pub async fn read_internal_events(
        &self,
        query: &InternalEventsQuery,
    ) -> Result<InternalEventsPage> {
        let mut params = url::form_urlencoded::Serializer::new(String::new());
        if query.subagents {
            params.append_pair("subagents", "true");
        }
        if let Some(cursor) = &query.cursor {
            params.append_pair("cursor", cursor);
        }
        let params = params.finish();
        let path = if params.is_empty() {
            "/worker/internal-events".to_owned()
        } else {
            format!("/worker/internal-events?{params}")
        };
        let core = &self.inner.core;
        let body = core
            .send(Method::GET, &path, None, core.timings.get_timeout)
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Decode(format!("GetInternalEvents: {e}")))
    }

    /// Ends the transport: stops every task, drops the stream and ends the receiver.
    /// Whatever was not uploaded yet stays unsent. Waits until the tasks are done.
    pub async fn close(&self) {
        self.inner.core.end(CloseReason::ClosedByClient);
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "worker task failed");
            }
        }
    }

    /// Takes everything not yet accepted, after [`close`](Self::close), so that a
    /// successor transport can send it.
    pub(crate) fn take_unsent(&self) -> Unsent {
        let inner = &self.inner;
        Unsent {
            events: inner
                .events
                .take_unsent()
                .into_iter()
                .map(|event| event.payload)
                .collect(),
            internal: inner.internal.take_unsent(),
            deliveries: inner.deliveries.take_unsent(),
            state: inner.state.take_unsent(),
        }
    }

    /// Queues internal events regardless of the capacity (for a handover).
    pub(crate) fn requeue_internal(&self, events: Vec<InternalEvent>) {
        self.inner.internal.enqueue(events);
    }

    /// Queues delivery updates (for a handover).
    pub(crate) fn requeue_deliveries(&self, updates: Vec<DeliveryUpdate>) {
        self.inner.deliveries.enqueue(updates);
    }
}

fn into_object(what: &str, value: Value) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::InvalidRequest(format!(
            "the {what} patch must be a JSON object"
        ))),
    }
}

/// Gives an object payload a fresh v4 `uuid` when it has none (or a `null` one), and
/// returns the payload's uuid.
pub(crate) fn ensure_uuid(payload: &mut Value) -> Option<String> {
    let object = payload.as_object_mut()?;
    let entry = object.entry("uuid").or_insert(Value::Null);
    if entry.is_null() {
        *entry = Value::String(uuid::Uuid::new_v4().to_string());
    }
    entry.as_str().map(str::to_owned)
}

/// `GET /worker`, tried up to the configured number of times with the upload backoff.
async fn read_worker(core: &Core) -> Result<Option<Value>> {
    let attempts = core.timings.get_attempts.max(1);
    let mut attempt = 0;
    loop {
        let result = core
            .send(Method::GET, "/worker", None, core.timings.get_timeout)
            .await;
        let error = match result {
            Ok(body) => {
                return match serde_json::from_slice::<WorkerResponse>(&body) {
                    Ok(response) => Ok(response.worker.external_metadata),
                    Err(e) => Err(ApiError::Decode(format!("GetWorker: {e}"))),
                };
            }
            Err(e @ (ApiError::Superseded | ApiError::Closed)) => return Err(e),
            Err(e) => e,
        };
        attempt += 1;
        if attempt >= attempts {
            return Err(error);
        }
        let delay = core.retry_delay(attempt - 1, &error);
        tracing::debug!(error = %error, attempt, ?delay, "GET /worker failed; retrying");
        tokio::select! {
            () = core.cancel.cancelled() => return Err(core.close_error()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The heartbeat task: one `POST …/worker/heartbeat` per period. Each waits for the
/// previous one, so a slow one makes the next wait rather than overlap.
async fn heartbeat(core: Arc<Core>) {
    let body = HeartbeatRequest {
        session_id: core.session_id.clone(),
        worker_epoch: core.epoch,
    };
    let body = match serde_json::to_vec(&body) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            tracing::error!(error = %e, "heartbeat not encodable");
            return;
        }
    };
    loop {
        let period = relative_jitter(
            core.timings
                .heartbeat_interval
                .max(Duration::from_millis(1)),
            core.timings.heartbeat_jitter,
        );
        tokio::select! {
            () = core.cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let timeout = core.timings.heartbeat_timeout;
        match core
            .send(
                Method::POST,
                "/worker/heartbeat",
                Some(body.clone()),
                timeout,
            )
            .await
        {
            Ok(_) => {}
            Err(ApiError::Superseded | ApiError::Closed) => return,
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
    }
}

/// The reason of a stream the server ended cleanly.
const STREAM_ENDED: &str = "the stream ended";

/// How one stream connection ended.
enum StreamEnd {
    /// The transport is ending.
    Shutdown,
    /// The stream was lost; reconnect.
    Lost(String),
    /// A status that ends the transport.
    Permanent(CloseReason),
}

/// The task that owns the SSE stream.
struct StreamReader {
    core: Arc<Core>,
    deliveries: Arc<Uploader<DeliveryUpdate>>,
    tx: mpsc::Sender<Value>,
    max_frame_bytes: usize,
}

impl StreamReader {
    async fn run(self) {
        let core = &self.core;
        let timings = &core.timings;
        let mut attempt: u32 = 0;
        let mut lost_since: Option<Instant> = None;
        let mut at_once = crate::backoff::AtOnce::default();
        loop {
            let end = match self.open().await {
                Ok(response) => {
                    tracing::debug!("worker stream open");
                    attempt = 0;
                    lost_since = None;
                    self.read(response).await
                }
                Err(end) => end,
            };
            let reason = match end {
                StreamEnd::Shutdown => return,
                StreamEnd::Permanent(reason) => {
                    core.end(reason);
                    return;
                }
                StreamEnd::Lost(reason) => reason,
            };
            let since = *lost_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= timings.stream_reconnect_budget {
                core.end(CloseReason::StreamGaveUp { reason });
                return;
            }
            let delay = if reason == STREAM_ENDED && at_once.allow() {
                // The server ended the stream: it is going away (restarting, say), and a
                // restarted one may already listen.
                Duration::ZERO
            } else {
                relative_jitter(
                    exponential(
                        attempt,
                        timings.stream_reconnect_base_delay,
                        timings.stream_reconnect_max_delay,
                    ),
                    timings.stream_reconnect_jitter,
                )
            };
            attempt = attempt.saturating_add(1);
            tracing::debug!(%reason, ?delay, attempt, "worker stream lost; reconnecting");
            tokio::select! {
                () = core.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        // Dropping `self.tx` when this returns ends the receiver.
    }

    /// Opens the stream, resuming after the high-water mark when there is one.
    async fn open(&self) -> std::result::Result<reqwest::Response, StreamEnd> {
        let core = &self.core;
        let token = core.token.token();
        let auth = core
            .bearer(&token)
            .map_err(|e| StreamEnd::Lost(e.to_string()))?;
        let mut request = core
            .http
            .get(format!("{}/worker/events/stream", core.session_url))
            .headers(core.headers.clone())
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, "text/event-stream");
        if let Some(from) = core.high_water() {
            request = request
                .query(&[("from_sequence_num", from)])
                .header("last-event-id", from);
        }
        // No reqwest timeout: it would cover the whole, endless body. The head gets its
        // own deadline and the body the liveness timer.
        let sent = tokio::select! {
            () = core.cancel.cancelled() => return Err(StreamEnd::Shutdown),
            sent = tokio::time::timeout(core.timings.stream_connect_timeout, request.send()) => sent,
        };
        let response = match sent {
            Err(_) => return Err(StreamEnd::Lost("no response head in time".to_owned())),
            Ok(Err(e)) => {
                let reason = match crate::tls::tls_failure_in(&e) {
                    Some(failure) => failure.to_string(),
                    None => format!("connection failed: {e}"),
                };
                return Err(StreamEnd::Lost(reason));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => Ok(response),
            401 | 403 | 404 => Err(StreamEnd::Permanent(CloseReason::StreamRejected { status })),
            409 => Err(StreamEnd::Permanent(CloseReason::Superseded)),
            _ => Err(StreamEnd::Lost(format!("stream answered {status}"))),
        }
    }

    /// Reads one open stream until it ends.
    async fn read(&self, response: reqwest::Response) -> StreamEnd {
        let core = &self.core;
        let liveness = core.timings.stream_liveness_timeout;
        let mut body = response.bytes_stream();
        let mut parser = sse::Parser::new(self.max_frame_bytes);
        let mut deadline = Instant::now() + liveness;
        loop {
            let chunk = tokio::select! {
                () = core.cancel.cancelled() => return StreamEnd::Shutdown,
                () = tokio::time::sleep_until(deadline) => {
                    return StreamEnd::Lost(format!("no frame for {liveness:?}"));
                }
                chunk = body.next() => chunk,
            };
            let bytes = match chunk {
                None => return StreamEnd::Lost(STREAM_ENDED.to_owned()),
                Some(Err(e)) => return StreamEnd::Lost(format!("the stream broke: {e}")),
                Some(Ok(bytes)) => bytes,
            };
            let items = match parser.push(&bytes) {
                Ok(items) => items,
                Err(e) => {
                    return StreamEnd::Lost(format!("a frame larger than {} bytes", e.limit));
                }
            };
            if !items.is_empty() {
                deadline = Instant::now() + liveness;
            }
            for item in items {
                if let sse::Item::Frame(frame) = item {
                    if let Some(end) = self.deliver(frame).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Forwards one frame's payload and acknowledges it; returns how the stream ends if
    /// it has to.
    async fn deliver(&self, frame: sse::Frame) -> Option<StreamEnd> {
        if frame.event.as_deref() != Some(CLIENT_EVENT) {
            tracing::debug!(event = ?frame.event, "ignoring a stream frame");
            return None;
        }
        let event: StreamClientEvent = match serde_json::from_str(&frame.data) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable client_event");
                return None;
            }
        };
        if event.payload.get("type").and_then(Value::as_str).is_none() {
            tracing::warn!(event_id = %event.event_id, "ignoring a payload without a string type");
            return None;
        }
        let sequence = frame
            .id
            .as_deref()
            .and_then(|id| id.trim().parse::<u64>().ok());
        if let (Some(sequence), Some(seen)) = (sequence, self.core.high_water()) {
            if sequence <= seen {
                // Upstream logs these and still delivers them; so does this client.
                tracing::warn!(sequence, seen, "stream sequence number did not increase");
            }
        }
        let core = &self.core;
        tokio::select! {
            () = core.cancel.cancelled() => return Some(StreamEnd::Shutdown),
            sent = self.tx.send(event.payload) => {
                if sent.is_err() {
                    // Nobody reads any more, so nothing counts as received; writes may
                    // still matter, so the transport stays up.
                    return None;
                }
            }
        }
        if let Some(sequence) = sequence {
            let mut high_water = core
                .high_water
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *high_water = Some(high_water.map_or(sequence, |seen| seen.max(sequence)));
        }
        self.deliveries.enqueue(vec![DeliveryUpdate {
            event_id: event.event_id,
            status: DeliveryStatus::Received,
        }]);
        None
    }
}

/// The `exp` claim (seconds since the epoch) of a JWT bearer token, if it is one.
/// Signatures are not checked; an optional `sk-ant-si-` prefix is skipped.
pub fn jwt_expiry(token: &str) -> Option<u64> {
    let token = token.strip_prefix(SESSION_TOKEN_PREFIX).unwrap_or(token);
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(payload))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|e| *e >= 0.0).map(|e| e as u64))
}

/// True when `token` is a JWT whose `exp` has passed.
pub(crate) fn token_expired(token: &str) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jwt_expiry(token).is_some_and(|exp| exp <= now)
}

/// `POST {session_url}/worker/register` with `{}` (§9.2), as an env-based v2 worker does
/// with its ingress token: bumps and returns the session's worker epoch. Trusts
/// [`ClientTls::default`](crate::ClientTls::default); see [`register_worker_with`].
pub async fn register_worker(session_url: &str, token: &str) -> Result<u64> {
    let http = crate::ClientTls::default().http_client();
    register_worker_with(&http, session_url, token).await
}

/// [`register_worker`] with a given HTTP client. Sends only `Authorization`,
/// `Content-Type` and `anthropic-version`; any 2xx is success, and a body without a safe
/// integer `worker_epoch` is [`ApiError::Decode`].
pub async fn register_worker_with(
    http: &reqwest::Client,
    session_url: &str,
    token: &str,
) -> Result<u64> {
    let (session_url, _) = parse_session_url(session_url)?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        ApiError::InvalidRequest("the token is not a valid header value".to_owned())
    })?;
    auth.set_sensitive(true);
    let response = http
        .post(format!("{session_url}/worker/register"))
        .header(AUTHORIZATION, auth)
        .header(CONTENT_TYPE, "application/json")
        .header("anthropic-version", ANTHROPIC_VERSION)
        .timeout(Duration::from_secs(10))
        .body("{}")
        .send()
        .await
        .map_err(map_send_error)?;
    if !response.status().is_success() {
        return Err(error_from_response(response).await);
    }
    let body = response.bytes().await.map_err(ApiError::Transport)?;
    let answer: RegisterWorkerResponse = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Decode(format!("RegisterWorker: {e}")))?;
    Ok(answer.worker_epoch)
}

#[cfg(test)]
mod tests;
