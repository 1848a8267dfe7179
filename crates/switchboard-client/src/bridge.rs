//! The env-less Remote Control bridge (docs/PROTOCOL.md §10.3, §11.4 and §16.2), mirroring the
//! official remoteBridgeCore.ts: what the REPL's `/remote-control` runs when no
//! environment is involved. (A bridge *with* an environment, such as `switchboard
//! bridge`, uses [`BridgeApiClient`](crate::BridgeApiClient) instead; see the crate's
//! note on names.)
//!
//! [`EnvLessBridge::start`] creates a code session, fetches worker credentials with
//! `/bridge` (the worker credentials call) and starts a [`WorkerTransport`] on `{base}/v1/code/sessions/{id}` (the
//! configured base URL is authoritative, like `CLAUDE_BRIDGE_BASE_URL`, so the
//! credentials' `api_base_url` is not used). Before the worker JWT expires — at
//! `max(expires_in − refresh buffer, 30 s)` — and whenever the stream is answered 401, it
//! calls `/bridge` again, which mints a new JWT and a new epoch, and rebuilds the
//! transport:
//!
//! 1. writes made from now on are queued in the bridge;
//! 2. the old transport is flushed (bounded), since after the next `/bridge` its epoch is
//!    stale and every write it still has would be answered 409;
//! 3. `/bridge` is called, the old transport is closed and whatever it had not delivered
//!    is taken out of it;
//! 4. a new transport starts with the new epoch, resuming the stream after the old
//!    high-water mark, and gets the undelivered writes first and the queued ones after,
//!    so nothing is lost, reordered or sent under two epochs (a batch whose answer was
//!    lost may be sent again, with the same `uuid`, which the server deduplicates on).
//!
//! Inbound messages arrive on the receiver [`EnvLessBridge::start`] returns, which spans
//! every rebuild and ends when the bridge does. Like the REPL, the bridge drops inbound
//! messages whose `uuid` it wrote itself (echoes) or has already delivered (duplicates).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{json, Map, Value};
use switchboard_proto::code::{DeliveryStatus, DeliveryUpdate, InternalEvent, WorkerStatus};
use switchboard_proto::ids::CSE_PREFIX;
use switchboard_proto::{SessionId, ANTHROPIC_VERSION, SESSIONS_BETA};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::auth::TokenSource;
use crate::code::{CodeSessionsClient, RetryPolicy};
use crate::error::{ApiError, Result};
use crate::http::{Call, RestClient};
use crate::sessions::{DEFAULT_ORGANIZATION, ORGANIZATION_HEADER};
use crate::worker::{
    ensure_uuid, initial_external_metadata, token_expired, worker_session_url, CloseReason,
    StatePatch, WorkerConfig, WorkerTimings, WorkerTransport, DEFAULT_USER_AGENT,
};

/// How many uuids the echo and duplicate filters remember each (the REPL's ring size).
const UUID_RING: usize = 2000;

/// Success statuses of archive: 409 means "already archived".
const ARCHIVE_OK: &[u16] = &[200, 204, 409];

/// What the bridge needs and how patient it is. Build it with [`BridgeConfig::new`], then
/// adjust the public fields (tests shorten the delays).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BridgeConfig {
    /// The server's base URL; the session URL is built from it.
    pub base_url: String,
    /// The user token for create, `/bridge` and archive, refreshed once after a 401.
    pub token: TokenSource,
    /// The session's title.
    pub title: String,
    /// Tags of the new session, e.g. `["ccr-mirror"]`.
    pub tags: Option<Vec<String>>,
    /// How long before the worker JWT expires it is refreshed (5 minutes).
    pub refresh_buffer: Duration,
    /// The shortest delay before a refresh (30 s), so that short-lived tokens do not
    /// cause a refresh loop.
    pub min_refresh_delay: Duration,
    /// The delay before trying again after a failed refresh (60 s).
    pub refresh_retry_delay: Duration,
    /// How many refreshes in a row may fail before the bridge gives up (3).
    pub max_refresh_failures: u32,
    /// How long a refresh waits for the old transport to upload what it has (5 s).
    pub handover_flush_timeout: Duration,
    /// How long teardown waits for the final state and result event (1.5 s).
    pub teardown_flush_timeout: Duration,
    /// The deadline of the archive call at teardown (1.5 s).
    pub archive_timeout: Duration,
    /// The retry policy of create and `/bridge` (3 attempts, 500 ms ×2 ≤ 4 s, ±25 %).
    pub retry: RetryPolicy,
    /// The worker transport's delays (heartbeat jitter 10 %, as the env-less REPL).
    pub worker: WorkerTimings,
    /// The `User-Agent` of the worker requests.
    pub user_agent: String,
    /// Sent as `X-Trusted-Device-Token` on `/bridge`, when set.
    pub trusted_device_token: Option<String>,
    /// How many inbound messages the receiver buffers.
    pub channel_capacity: usize,
    /// The HTTP client; the default trusts [`ClientTls::default`](crate::ClientTls).
    pub http: reqwest::Client,
}

impl BridgeConfig {
    /// The official defaults for a session titled `title` on the server at `base_url`.
    pub fn new(
        base_url: impl Into<String>,
        token: impl Into<TokenSource>,
        title: impl Into<String>,
    ) -> Self {
        let worker = WorkerTimings {
            heartbeat_jitter: 0.1,
            ..WorkerTimings::default()
        };
        Self {
            base_url: base_url.into(),
            token: token.into(),
            title: title.into(),
            tags: None,
            refresh_buffer: Duration::from_secs(300),
            min_refresh_delay: Duration::from_secs(30),
            refresh_retry_delay: Duration::from_secs(60),
            max_refresh_failures: 3,
            handover_flush_timeout: Duration::from_secs(5),
            teardown_flush_timeout: Duration::from_millis(1500),
            archive_timeout: Duration::from_millis(1500),
            retry: RetryPolicy::default(),
            worker,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            trusted_device_token: None,
            channel_capacity: 1024,
            http: crate::ClientTls::default().http_client(),
        }
    }

    /// This configuration trusting `tls`'s roots for `https`.
    pub fn with_tls(mut self, tls: &crate::ClientTls) -> Self {
        self.http = tls.http_client();
        self
    }

    /// The delay before refreshing credentials that live `expires_in` seconds.
    pub fn refresh_delay(&self, expires_in: u64) -> Duration {
        Duration::from_secs(expires_in)
            .saturating_sub(self.refresh_buffer)
            .max(self.min_refresh_delay)
    }
}

/// Why a bridge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeEnd {
    /// [`EnvLessBridge::teardown`] was called.
    TornDown,
    /// The transport ended for a reason a refresh cannot fix, e.g.
    /// [`CloseReason::Superseded`] by another worker.
    Transport(CloseReason),
    /// Fetching new credentials failed too often in a row.
    RefreshFailed(String),
}

/// Where a bridge stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeState {
    /// A transport is up.
    Connected {
        /// The epoch of the current worker.
        worker_epoch: u64,
    },
    /// New credentials are being fetched and the transport rebuilt; writes are queued.
    Refreshing,
    /// The bridge has ended; the inbound receiver has ended too.
    Closed {
        /// Why.
        end: BridgeEnd,
    },
}

/// A running env-less bridge: one code session, served by a [`WorkerTransport`] that is
/// rebuilt whenever the worker credentials are refreshed.
///
/// Cheap to clone; clones share the bridge.
///
/// Dropping the last clone without [`teardown`](Self::teardown) stops the bridge and its
/// transport but leaves the session unarchived.
#[derive(Clone)]
pub struct EnvLessBridge {
    handle: Arc<Handle>,
}

/// What the bridge's handles share. The supervisor task holds [`Shared`] but not this, so
/// that dropping the last handle can stop it.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl std::fmt::Debug for EnvLessBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvLessBridge")
            .field("session_id", &self.handle.shared.session_id)
            .field("state", &*self.handle.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: BridgeConfig,
    session_id: String,
    session_url: String,
    code: CodeSessionsClient,
    slot: Mutex<Slot>,
    state: watch::Sender<BridgeState>,
    cancel: CancellationToken,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    inbound: Mutex<Option<mpsc::Sender<Value>>>,
    filter: Arc<Mutex<UuidFilter>>,
    /// Serializes teardown with itself.
    teardown: tokio::sync::Mutex<bool>,
}

/// The current transport, or what waits for the next one.
#[derive(Default)]
struct Slot {
    transport: Option<WorkerTransport>,
    /// Client events written while there was no usable transport, oldest first.
    queued: Vec<Value>,
    /// State patches reported while there was no usable transport, coalesced.
    queued_patch: StatePatch,
    /// Delivery updates reported while there was no usable transport.
    queued_deliveries: Vec<DeliveryUpdate>,
    /// Internal events a replaced transport had not uploaded.
    queued_internal: Vec<InternalEvent>,
    /// The last status reported, re-reported to a rebuilt transport (whose initial PUT
    /// says idle).
    last_status: Option<(WorkerStatus, Option<Value>)>,
    /// The stream high-water mark of the last transport that is gone.
    high_water: Option<u64>,
    /// Every `external_metadata` patch reported, merged one level deep: what a rebuilt
    /// transport restores of the keys its initial PUT resets.
    metadata: Map<String, Value>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_open(&self) -> Result<()> {
        if self.state.borrow().is_closed() || self.cancel.is_cancelled() {
            Err(ApiError::Closed)
        } else {
            Ok(())
        }
    }

    fn end(&self, end: BridgeEnd) {
        tracing::info!(?end, "bridge ended");
        self.state.send_replace(BridgeState::Closed { end });
        // Ending the inbound channel: forwarders hold clones only as long as their
        // transport lives.
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl BridgeState {
    /// True for [`BridgeState::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed { .. })
    }
}

impl EnvLessBridge {
    /// Creates the session, fetches credentials and starts the transport; returns the
    /// bridge and the receiver of inbound messages.
    ///
    /// If create succeeds but `/bridge` or the transport start fails, the new session is
    /// archived (best effort) and the error returned.
    pub async fn start(config: BridgeConfig) -> Result<(Self, mpsc::Receiver<Value>)> {
        let mut code =
            CodeSessionsClient::with_token_source(&config.base_url, config.token.clone())
                .with_http_client(config.http.clone())
                .with_retry(config.retry);
        if let Some(device) = &config.trusted_device_token {
            code = code.with_trusted_device_token(device);
        }
        let session_id = code
            .create_code_session(&config.title, config.tags.clone())
            .await?;
        let session_url = worker_session_url(&config.base_url, &session_id)?;
        let started = async {
            let credentials = code.fetch_remote_credentials(&session_id).await?;
            let worker = worker_config(
                &config,
                &session_url,
                &credentials.worker_jwt,
                credentials.worker_epoch,
                None,
            )?;
            let (transport, receiver) = WorkerTransport::start(worker).await?;
            Ok::<_, ApiError>((credentials.expires_in, transport, receiver))
        }
        .await;
        let (expires_in, transport, receiver) = match started {
            Ok(started) => started,
            Err(e) => {
                if let Err(archive) = archive(&config, &session_id).await {
                    tracing::warn!(error = %archive, "could not archive the abandoned session");
                }
                return Err(e);
            }
        };
        let (inbound_tx, inbound_rx) = mpsc::channel(config.channel_capacity.max(1));
        let worker_epoch = transport.worker_epoch();
        let shared = Arc::new(Shared {
            session_id: session_id.clone(),
            session_url,
            code,
            slot: Mutex::new(Slot {
                transport: Some(transport.clone()),
                ..Slot::default()
            }),
            state: watch::channel(BridgeState::Connected { worker_epoch }).0,
            cancel: CancellationToken::new(),
            supervisor: Mutex::new(None),
            inbound: Mutex::new(Some(inbound_tx.clone())),
            filter: Arc::new(Mutex::new(UuidFilter::default())),
            teardown: tokio::sync::Mutex::new(false),
            config,
        });
        let span = tracing::info_span!("bridge", session = %session_id);
        tokio::spawn(forward(receiver, inbound_tx, shared.filter.clone()).instrument(span.clone()));
        let first_refresh = Instant::now() + shared.config.refresh_delay(expires_in);
        let supervisor = tokio::spawn(supervise(shared.clone(), first_refresh).instrument(span));
        *shared
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(supervisor);
        Ok((
            Self {
                handle: Arc::new(Handle { shared }),
            },
            inbound_rx,
        ))
    }

    /// The session id in its `cse_…` costume.
    pub fn session_id(&self) -> &str {
        &self.handle.shared.session_id
    }

    /// The session id in its `session_…` costume, for the Sessions API and URLs.
    pub fn compat_session_id(&self) -> String {
        compat_id(&self.handle.shared.session_id)
    }

    /// The session URL the transports use.
    pub fn session_url(&self) -> &str {
        &self.handle.shared.session_url
    }

    /// The current state.
    pub fn state(&self) -> BridgeState {
        self.handle.shared.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn state_changes(&self) -> watch::Receiver<BridgeState> {
        self.handle.shared.state.subscribe()
    }

    /// The epoch of the current transport, if one is up.
    pub fn worker_epoch(&self) -> Option<u64> {
        self.handle
            .shared
            .lock()
            .transport
            .as_ref()
            .map(WorkerTransport::worker_epoch)
    }

    /// The stream high-water mark: of the current transport, or of the last one.
    pub fn last_sequence_num(&self) -> Option<u64> {
        let slot = self.handle.shared.lock();
        match &slot.transport {
            Some(transport) => transport.last_sequence_num(),
            None => slot.high_water,
        }
    }

    /// Writes client events, in order. Each must be a JSON object; one without a `uuid`
    /// gets one. While the transport is being rebuilt they are queued and sent by the
    /// next one.
    pub fn write_messages(&self, messages: Vec<Value>) -> Result<()> {
        self.handle.shared.check_open()?;
        if messages.iter().any(|m| !m.is_object()) {
            return Err(ApiError::InvalidRequest(
                "every client event must be a JSON object".to_owned(),
            ));
        }
        let mut messages = messages;
        {
            let mut filter = self
                .handle
                .shared
                .filter
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for message in &mut messages {
                if let Some(uuid) = ensure_uuid(message) {
                    filter.wrote(uuid);
                }
            }
        }
        let mut slot = self.handle.shared.lock();
        if let Some(transport) = &slot.transport {
            match transport.write(messages.clone()) {
                Ok(()) => return Ok(()),
                // The transport ended and the supervisor will replace it; keep the
                // messages for its successor.
                Err(ApiError::Closed | ApiError::Superseded) => {}
                Err(e) => return Err(e),
            }
        }
        slot.queued.extend(messages);
        Ok(())
    }

    /// Reports the worker status (see [`WorkerTransport::report_state`]); it is also
    /// re-reported after every rebuild.
    pub fn report_state(
        &self,
        status: WorkerStatus,
        requires_action_details: Option<Value>,
    ) -> Result<()> {
        self.handle.shared.check_open()?;
        let mut slot = self.handle.shared.lock();
        slot.last_status = Some((status, requires_action_details.clone()));
        let patch = StatePatch {
            worker_status: Some(status),
            requires_action_details: Some(requires_action_details),
            ..StatePatch::default()
        };
        submit_patch(&mut slot, patch)
    }

    /// Reports an `external_metadata` merge patch (see
    /// [`WorkerTransport::report_metadata`]).
    pub fn report_metadata(&self, external_metadata_patch: Value) -> Result<()> {
        self.handle.shared.check_open()?;
        let Value::Object(patch) = external_metadata_patch else {
            return Err(ApiError::InvalidRequest(
                "the external_metadata patch must be a JSON object".to_owned(),
            ));
        };
        let mut slot = self.handle.shared.lock();
        slot.metadata.extend(patch.clone());
        let patch = StatePatch {
            external_metadata: Some(patch),
            ..StatePatch::default()
        };
        submit_patch(&mut slot, patch)
    }

    /// Reports a delivery status of an inbound event, e.g. `processed` for a prompt.
    pub fn report_delivery(
        &self,
        event_id: impl Into<String>,
        status: DeliveryStatus,
    ) -> Result<()> {
        self.handle.shared.check_open()?;
        let update = DeliveryUpdate {
            event_id: event_id.into(),
            status,
        };
        let mut slot = self.handle.shared.lock();
        if let Some(transport) = &slot.transport {
            match transport.report_delivery(update.event_id.clone(), status) {
                Ok(()) => return Ok(()),
                Err(ApiError::Closed | ApiError::Superseded) => {}
                Err(e) => return Err(e),
            }
        }
        slot.queued_deliveries.push(update);
        Ok(())
    }

    /// Waits until everything written and reported so far was accepted by the server,
    /// across a rebuild if one is under way. Fails with [`ApiError::Closed`] if the
    /// bridge ends first.
    pub async fn flush(&self) -> Result<()> {
        let mut states = self.handle.shared.state.subscribe();
        loop {
            let transport = self.handle.shared.lock().transport.clone();
            if let Some(transport) = transport {
                match transport.flush().await {
                    Ok(()) => return Ok(()),
                    Err(ApiError::Closed | ApiError::Superseded) => {}
                    Err(e) => return Err(e),
                }
            }
            if self.handle.shared.state.borrow().is_closed() {
                return Err(ApiError::Closed);
            }
            // Wait for the supervisor to install the next transport.
            if states.changed().await.is_err() {
                return Err(ApiError::Closed);
            }
        }
    }

    /// Ends the session: stops refreshing, reports `idle` and writes a `result` event
    /// (waiting at most the teardown flush timeout for them), archives the session
    /// (`POST /v1/sessions/session_…/archive`, one retry after a 401) and closes the
    /// transport and the inbound receiver. Returns the archive error, if any; everything
    /// else is best effort. A second call does nothing.
    pub async fn teardown(&self) -> Result<()> {
        let shared = &self.handle.shared;
        let mut done = shared.teardown.lock().await;
        if *done {
            return Ok(());
        }
        *done = true;
        shared.cancel.cancel();
        let supervisor = shared
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(supervisor) = supervisor {
            if let Err(e) = supervisor.await {
                tracing::warn!(error = %e, "bridge supervisor failed");
            }
        }
        let transport = shared.lock().transport.take();
        if let Some(transport) = &transport {
            let result = json!({
                "type": "result",
                "subtype": "success",
                "is_error": false,
                "duration_ms": 0,
                "duration_api_ms": 0,
                "num_turns": 0,
                "result": "",
                "total_cost_usd": 0,
                "session_id": shared.session_id,
            });
            let sent = transport
                .report_state(WorkerStatus::Idle, None)
                .and_then(|()| transport.write(vec![result]));
            if sent.is_ok() {
                let flushed =
                    tokio::time::timeout(shared.config.teardown_flush_timeout, transport.flush())
                        .await;
                if !matches!(flushed, Ok(Ok(()))) {
                    tracing::debug!("the final state and result were not confirmed in time");
                }
            }
        }
        let archived = archive(&shared.config, &shared.session_id).await;
        if let Err(e) = &archived {
            tracing::warn!(error = %e, "could not archive the session");
        }
        if let Some(transport) = transport {
            transport.close().await;
        }
        if !shared.state.borrow().is_closed() {
            shared.end(BridgeEnd::TornDown);
        }
        archived
    }
}

/// Hands a patch to the transport, or queues it while there is none.
fn submit_patch(slot: &mut Slot, patch: StatePatch) -> Result<()> {
    if let Some(transport) = &slot.transport {
        match transport.report_patch(patch.clone()) {
            Ok(()) => return Ok(()),
            Err(ApiError::Closed | ApiError::Superseded) => {}
            Err(e) => return Err(e),
        }
    }
    slot.queued_patch.absorb(patch);
    Ok(())
}

fn worker_config(
    config: &BridgeConfig,
    session_url: &str,
    worker_jwt: &str,
    worker_epoch: u64,
    from_sequence_num: Option<u64>,
) -> Result<WorkerConfig> {
    let mut worker = WorkerConfig::new(session_url, TokenSource::new(worker_jwt), worker_epoch)?
        .resuming_from(from_sequence_num);
    worker.timings = config.worker.clone();
    worker.user_agent = config.user_agent.clone();
    worker.channel_capacity = config.channel_capacity;
    worker.http = config.http.clone();
    Ok(worker)
}

/// `cse_<body>` → `session_<body>`; anything else unchanged.
fn compat_id(session_id: &str) -> String {
    match SessionId::parse(session_id) {
        Some(id) => id.compat(),
        None => match session_id.strip_prefix(CSE_PREFIX) {
            Some(body) => format!("session_{body}"),
            None => session_id.to_owned(),
        },
    }
}

/// `POST {base}/v1/sessions/session_<body>/archive` with H-SES, one retry after a 401.
async fn archive(config: &BridgeConfig, session_id: &str) -> Result<()> {
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
    let mut rest = RestClient::new(&config.base_url, config.token.clone(), headers);
    rest.set_http(config.http.clone());
    let compat = compat_id(session_id);
    let session = crate::http::check_id("session_id", &compat)?;
    let call = Call::new(
        "ArchiveSession",
        Method::POST,
        format!("/v1/sessions/{session}/archive"),
    )
    .json(&json!({}))?
    .timeout(config.archive_timeout)
    .accept(ARCHIVE_OK);
    rest.call(call).await.map(drop)
}

/// Copies one transport's inbound messages into the bridge's receiver, dropping echoes
/// and duplicates.
async fn forward(
    mut receiver: mpsc::Receiver<Value>,
    inbound: mpsc::Sender<Value>,
    filter: Arc<Mutex<UuidFilter>>,
) {
    while let Some(message) = receiver.recv().await {
        if let Some(uuid) = message.get("uuid").and_then(Value::as_str) {
            let fresh = filter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .inbound(uuid);
            if !fresh {
                tracing::debug!(uuid, "dropping an echoed or repeated inbound message");
                continue;
            }
        }
        if inbound.send(message).await.is_err() {
            break;
        }
    }
}

/// The supervisor task: refreshes credentials on schedule and after a stream 401, and
/// ends the bridge when the transport ends for another reason.
async fn supervise(shared: Arc<Shared>, first_refresh: Instant) {
    let mut refresh_at = first_refresh;
    let mut failures: u32 = 0;
    loop {
        let transport = shared.lock().transport.clone();
        let ended = async {
            match &transport {
                Some(transport) => transport.closed().await,
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            () = shared.cancel.cancelled() => return,
            () = tokio::time::sleep_until(refresh_at) => None,
            reason = ended => Some(reason),
        };
        if let Some(reason) = reason {
            let refreshable = match &reason {
                CloseReason::StreamRejected { status: 401 } => true,
                // An expired JWT makes every 401/403 count as superseded; new credentials
                // fix that, a real takeover they do not. Right after a failed refresh, a
                // 409 most likely comes from that `/bridge` call having bumped the epoch
                // after all (its answer lost), so it is worth another one too.
                CloseReason::Superseded => {
                    failures > 0
                        || transport
                            .as_ref()
                            .is_some_and(|t| token_expired(&t.token()))
                }
                _ => false,
            };
            if !refreshable {
                shared.end(BridgeEnd::Transport(reason));
                return;
            }
            tracing::info!(?reason, "transport lost its credentials; refreshing");
        }
        // A teardown during a refresh drops it midway; whatever it had taken out of the
        // old transport is then lost, which only matters for the final idle report.
        let refreshed = tokio::select! {
            () = shared.cancel.cancelled() => return,
            refreshed = refresh(&shared) => refreshed,
        };
        match refreshed {
            Ok(expires_in) => {
                failures = 0;
                refresh_at = Instant::now() + shared.config.refresh_delay(expires_in);
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "credential refresh failed");
                if failures >= shared.config.max_refresh_failures.max(1) {
                    shared.end(BridgeEnd::RefreshFailed(e.to_string()));
                    return;
                }
                refresh_at = Instant::now() + shared.config.refresh_retry_delay;
            }
        }
    }
}

/// One refresh: new credentials and a rebuilt transport. Returns the new `expires_in`.
async fn refresh(shared: &Shared) -> Result<u64> {
    shared.state.send_replace(BridgeState::Refreshing);
    // From here on, writes queue in the bridge.
    let old = shared.lock().transport.take();
    if let Some(old) = &old {
        if !old.state().is_closed() {
            let flush = tokio::time::timeout(shared.config.handover_flush_timeout, old.flush());
            if !matches!(flush.await, Ok(Ok(()))) {
                tracing::debug!("the old transport did not flush in time; handing over the rest");
            }
        }
    }
    let credentials = match shared
        .code
        .fetch_remote_credentials(&shared.session_id)
        .await
    {
        Ok(credentials) => credentials,
        Err(e) => {
            // The old epoch is still current, so a live old transport goes back in place.
            match old {
                Some(old) if !old.state().is_closed() => {
                    let worker_epoch = old.worker_epoch();
                    let mut slot = shared.lock();
                    hand_over(&mut slot, &old);
                    slot.transport = Some(old);
                    drop(slot);
                    shared
                        .state
                        .send_replace(BridgeState::Connected { worker_epoch });
                }
                Some(old) => park(shared, &old).await,
                None => {}
            }
            return Err(e);
        }
    };
    if let Some(old) = &old {
        park(shared, old).await;
    }
    let from = shared.lock().high_water;
    let config = worker_config(
        &shared.config,
        &shared.session_url,
        &credentials.worker_jwt,
        credentials.worker_epoch,
        from,
    )?;
    let (transport, receiver) = WorkerTransport::start(config).await?;
    let inbound = shared
        .inbound
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(inbound) = inbound {
        tokio::spawn(forward(receiver, inbound, shared.filter.clone()).in_current_span());
    }
    {
        let mut slot = shared.lock();
        // The initial PUT of the new worker said idle and reset some metadata keys;
        // what was reported before is reported again.
        if let Some((status, details)) = slot.last_status.clone() {
            if status != WorkerStatus::Idle {
                slot.queued_patch.absorb(StatePatch {
                    worker_status: Some(status),
                    requires_action_details: Some(details),
                    ..StatePatch::default()
                });
            }
        }
        let restored: Map<String, Value> = initial_external_metadata()
            .as_object()
            .into_iter()
            .flat_map(|reset| reset.keys())
            .filter_map(|key| {
                let value = slot.metadata.get(key).filter(|v| !v.is_null())?;
                Some((key.clone(), value.clone()))
            })
            .collect();
        if !restored.is_empty() {
            slot.queued_patch.absorb(StatePatch {
                external_metadata: Some(restored),
                ..StatePatch::default()
            });
        }
        hand_over(&mut slot, &transport);
        slot.transport = Some(transport);
    }
    shared.state.send_replace(BridgeState::Connected {
        worker_epoch: credentials.worker_epoch,
    });
    tracing::info!(worker_epoch = credentials.worker_epoch, "transport rebuilt");
    Ok(credentials.expires_in)
}

/// Closes a transport that is being replaced and moves what it had not delivered to the
/// front of the bridge's queues, so that its successor sends it first.
async fn park(shared: &Shared, old: &WorkerTransport) {
    old.close().await;
    let unsent = old.take_unsent();
    let mut slot = shared.lock();
    if let Some(high_water) = old.last_sequence_num() {
        slot.high_water = Some(slot.high_water.map_or(high_water, |h| h.max(high_water)));
    }
    let mut events = unsent.events;
    events.append(&mut slot.queued);
    slot.queued = events;
    let mut deliveries = unsent.deliveries;
    deliveries.append(&mut slot.queued_deliveries);
    slot.queued_deliveries = deliveries;
    if let Some(mut patch) = unsent.state {
        patch.absorb(std::mem::take(&mut slot.queued_patch));
        slot.queued_patch = patch;
    }
    let mut internal = unsent.internal;
    internal.append(&mut slot.queued_internal);
    slot.queued_internal = internal;
}

/// Moves the bridge's queues into `transport`.
fn hand_over(slot: &mut Slot, transport: &WorkerTransport) {
    let queued = std::mem::take(&mut slot.queued);
    if let Err(e) = transport.write(queued.clone()) {
        tracing::debug!(error = %e, "transport closed during handover; keeping the queue");
        slot.queued = queued;
        return;
    }
    transport.requeue_deliveries(std::mem::take(&mut slot.queued_deliveries));
    transport.requeue_internal(std::mem::take(&mut slot.queued_internal));
    let patch = std::mem::take(&mut slot.queued_patch);
    if !patch.is_empty() {
        if let Err(e) = transport.report_patch(patch.clone()) {
            tracing::debug!(error = %e, "transport closed during handover");
            slot.queued_patch = patch;
        }
    }
}

/// Remembers the uuids the bridge wrote and the inbound ones it delivered, up to
/// [`UUID_RING`] each, oldest forgotten first.
#[derive(Default)]
struct UuidFilter {
    written: Ring,
    delivered: Ring,
}

impl UuidFilter {
    fn wrote(&mut self, uuid: String) {
        self.written.insert(uuid);
    }

    /// True when an inbound message with `uuid` should be delivered: not an echo of a
    /// write and not seen before.
    fn inbound(&mut self, uuid: &str) -> bool {
        if self.written.contains(uuid) || self.delivered.contains(uuid) {
            return false;
        }
        self.delivered.insert(uuid.to_owned());
        true
    }
}

#[derive(Default)]
struct Ring {
    order: VecDeque<String>,
    members: HashSet<String>,
}

impl Ring {
    fn insert(&mut self, uuid: String) {
        if self.members.insert(uuid.clone()) {
            self.order.push_back(uuid);
            if self.order.len() > UUID_RING {
                if let Some(oldest) = self.order.pop_front() {
                    self.members.remove(&oldest);
                }
            }
        }
    }

    fn contains(&self, uuid: &str) -> bool {
        self.members.contains(uuid)
    }
}

#[cfg(test)]
mod tests;
