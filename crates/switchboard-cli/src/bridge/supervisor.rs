//! The bridge's main loop (docs/PROTOCOL.md §4.9): long-poll for work, take on sessions up to
//! the capacity, hand running sessions their new tokens, heartbeat their work, and clean
//! up after each session; then shut everything down.
//!
//! - **Polls** run one at a time. After a poll that found nothing the next one waits
//!   until `--poll-interval` has passed since the last one started (so a server that
//!   long-polls is asked again at once, and one that answers at once every 2 s). At
//!   capacity the bridge polls every `at_capacity_poll`, and at once when a session ends.
//! - **Work** for a session that already runs carries a fresh ingress token: it is
//!   passed to the session and acknowledged. Work for a new session is acknowledged and
//!   started only below capacity; otherwise it is left for the server to hand out again.
//!   A work item whose secret cannot be read is stopped.
//! - **Errors**: a refused credential or a forgotten environment (401, 403, 404, 410)
//!   ends the bridge with one line saying so. Anything else is retried with the official
//!   backoff (connection errors and 5xx: 2 s doubling to 2 min; others: 500 ms doubling
//!   to 30 s; ±25 %), while the status line says the bridge is reconnecting, and the
//!   bridge gives up after 10 minutes without a successful poll (a pause of more than
//!   4 minutes between failures, a laptop asleep, starts the count over).
//! - **Heartbeats** go out for every running work item every `--heartbeat` seconds with
//!   its ingress token; one refused with 401 or 403 asks the server to re-dispatch the
//!   session, which brings a fresh token. A token that is a JWT is refreshed the same
//!   way 5 minutes before it expires.
//! - **A session that ends** has its work stopped (`force: false`) and is archived; a
//!   failure gets one line with the reason. With `--spawn single-session` the bridge
//!   then stops.
//! - **Shutdown** (Ctrl-C, SIGTERM, a fatal error, or the single session's end): every
//!   agent gets SIGTERM and the grace period (a second Ctrl-C kills them at once), each
//!   work item still running is stopped with `force: true`, every session the bridge
//!   knows is archived, and the environment is deregistered.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt as _;
use switchboard_client::worker::jwt_expiry;
use switchboard_client::{ApiError, BridgeApiClient, SessionsClient};
use switchboard_proto::environments::{RegisterEnvironmentResponse, WorkResponse, WorkSecret};
use switchboard_proto::SessionId;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::display::{session_link, Display};
use super::explain::{explain, root_cause};
use super::options::{BridgeOptions, SpawnMode};
use super::session;
use super::work::{short, Event, Outcome, SessionContext, SessionControl, Work};

/// The `reclaim_older_than_ms` every poll sends (§4.2).
const RECLAIM_OLDER_THAN_MS: u64 = 5_000;

/// How often the status line asks the server how its sessions are doing.
const STATUS_REFRESH: Duration = Duration::from_secs(3);

/// How long before a JWT ingress token expires it is refreshed, and how often after.
const TOKEN_REFRESH_BUFFER: Duration = Duration::from_secs(300);
const TOKEN_REFRESH_FOLLOW_UP: Duration = Duration::from_secs(1800);

/// How often stopping a finished work item is tried, starting with this delay (§4.5).
const STOP_ATTEMPTS: u32 = 3;
const STOP_FIRST_DELAY: Duration = Duration::from_secs(1);

/// How long shutdown waits for the server calls that clean up after sessions.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long without a successful poll before the bridge gives up (§4.9).
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// A gap between two failures longer than this means the machine slept: the count of
/// failures starts over.
const SLEEP_GAP: Duration = Duration::from_secs(240);

type PollFuture =
    Pin<Box<dyn Future<Output = (Instant, Result<Option<WorkResponse>, ApiError>)> + Send>>;

/// A session the bridge runs.
struct Active {
    session_id: String,
    work_id: String,
    token: String,
    control: SessionControl,
    task: JoinHandle<()>,
    state: &'static str,
    refresh_at: Option<Instant>,
}

/// The backoff of failed polls.
#[derive(Default)]
struct Backoff {
    failures: u32,
    since: Option<Instant>,
    last: Option<Instant>,
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    /// The wait before the next poll, or `None` when it is time to give up.
    fn next(&mut self, error: &ApiError) -> Option<Duration> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last > SLEEP_GAP) {
            self.reset();
        }
        self.last = Some(now);
        let since = *self.since.get_or_insert(now);
        if now - since > GIVE_UP_AFTER {
            return None;
        }
        let connection =
            matches!(error, ApiError::Transport(_)) || error.status().is_some_and(|s| s >= 500);
        let (base, max) = if connection {
            (Duration::from_secs(2), Duration::from_secs(120))
        } else {
            (Duration::from_millis(500), Duration::from_secs(30))
        };
        let delay = base.saturating_mul(1 << self.failures.min(16)).min(max);
        self.failures += 1;
        Some(jitter(delay))
    }
}

/// ±25 % of jitter, from the clock's nanoseconds (good enough to spread bridges out).
/// The report of an agent's failure, which stopping its work and archiving its session
/// wait for.
type Reported = futures_util::future::Shared<futures_util::future::BoxFuture<'static, ()>>;

/// Writes an error `result` (`subtype: error_during_execution`) with `reason` to a session,
/// through the ingress write path with its token.
async fn report_failure(
    base_url: &str,
    session_id: &str,
    token: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let url = switchboard_client::ingress::post_url(
        base_url,
        session_id,
        switchboard_client::IngressVersion::for_base_url(base_url),
    )?;
    let result = serde_json::json!({
        "type": "result",
        "subtype": "error_during_execution",
        "is_error": true,
        "result": reason,
        "uuid": uuid::Uuid::new_v4().to_string(),
        "duration_ms": 0,
        "duration_api_ms": 0,
        "num_turns": 0,
        "total_cost_usd": 0,
    });
    let response = switchboard_client::ClientTls::default()
        .http_client()
        .post(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .json(&serde_json::json!({ "events": [result] }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the server answered {}",
        response.status()
    );
    Ok(())
}

fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    delay.mul_f64(factor)
}

/// Awaits the poll in flight, or never when there is none.
async fn poll_result(
    poll: &mut Option<PollFuture>,
) -> (Instant, Result<Option<WorkResponse>, ApiError>) {
    match poll {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Catches SIGINT and SIGTERM: the first cancels `shutdown`, the second `force`.
pub(crate) fn watch_signals(
    shutdown: CancellationToken,
    force: CancellationToken,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        shutdown.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        force.cancel();
    });
    Ok(())
}

/// The bridge after registration: its loop and its shutdown.
pub(crate) struct Supervisor {
    options: Arc<BridgeOptions>,
    api: BridgeApiClient,
    sessions: SessionsClient,
    environment: RegisterEnvironmentResponse,
    display: Display,
    shutdown: CancellationToken,
    force: CancellationToken,
    /// Every session the bridge created or ran, by body, for the archive at shutdown.
    known: HashMap<String, String>,
    /// Sessions already archived (or being archived).
    archived: HashSet<String>,
    active: HashMap<String, Active>,
    /// Work items whose session ended here; never taken on again.
    finished_work: HashSet<String>,
    events: mpsc::UnboundedSender<Event>,
    event_rx: mpsc::UnboundedReceiver<Event>,
    cleanup: JoinSet<()>,
    backoff: Backoff,
    reconnecting: Option<String>,
    /// When single-session mode's session has ended.
    single_done: bool,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        options: Arc<BridgeOptions>,
        api: BridgeApiClient,
        sessions: SessionsClient,
        environment: RegisterEnvironmentResponse,
        display: Display,
        shutdown: CancellationToken,
        force: CancellationToken,
        known_sessions: Vec<String>,
    ) -> Self {
        let (events, event_rx) = mpsc::unbounded_channel();
        let known = known_sessions
            .into_iter()
            .filter_map(|id| SessionId::parse(&id).map(|s| (s.body().to_owned(), id)))
            .collect();
        Self {
            options,
            api,
            sessions,
            environment,
            display,
            shutdown,
            force,
            known,
            archived: HashSet::new(),
            active: HashMap::new(),
            finished_work: HashSet::new(),
            events,
            event_rx,
            cleanup: JoinSet::new(),
            backoff: Backoff::default(),
            reconnecting: None,
            single_done: false,
        }
    }

    /// Runs until a signal, a fatal error or (single-session) the session's end, then
    /// shuts down. Returns the fatal error, if any.
    pub(crate) async fn run(mut self) -> anyhow::Result<()> {
        let result = self.serve().await;
        self.stop_everything().await;
        self.display.finish();
        result
    }

    fn context(&self) -> Arc<SessionContext> {
        Arc::new(SessionContext {
            options: self.options.clone(),
            display: self.display.clone(),
            events: self.events.clone(),
            force: self.force.clone(),
        })
    }

    fn at_capacity(&self) -> bool {
        self.active.len() >= self.options.max_sessions as usize
    }

    fn start_poll(&self) -> PollFuture {
        let api = self.api.clone();
        let id = self.environment.environment_id.clone();
        let secret = self.environment.environment_secret.clone();
        async move {
            let started = Instant::now();
            let result = api
                .poll_for_work(&id, &secret, Some(RECLAIM_OLDER_THAN_MS))
                .await;
            (started, result)
        }
        .boxed()
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let ctx = self.context();
        let mut poll: Option<PollFuture> = None;
        let mut next_poll = Instant::now();
        let heartbeat_period = self.options.heartbeat.unwrap_or(Duration::from_secs(3600));
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_period, heartbeat_period);
        let mut status = tokio::time::interval(STATUS_REFRESH);
        let shutdown = self.shutdown.clone();
        loop {
            if self.single_done {
                return Ok(());
            }
            if poll.is_none() && Instant::now() >= next_poll {
                poll = Some(self.start_poll());
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.display.line("Stopping (press Ctrl-C again to kill the agents at once)…");
                    return Ok(());
                }
                Some(event) = self.event_rx.recv() => {
                    if self.on_event(event) {
                        next_poll = Instant::now();
                    }
                }
                (started, result) = poll_result(&mut poll) => {
                    poll = None;
                    let found = match result {
                        Ok(found) => {
                            self.backoff.reset();
                            if self.reconnecting.take().is_some() {
                                self.display.line(&format!("reconnected to {}", self.options.base_url));
                            }
                            found
                        }
                        Err(e) if e.is_fatal() => return Err(self.fatal(&e)),
                        Err(e) => {
                            let Some(delay) = self.backoff.next(&e) else {
                                anyhow::bail!(
                                    "gave up after 10 minutes without reaching the server: {}",
                                    explain(&e, &self.options.base_url)
                                );
                            };
                            if self.reconnecting.is_none() {
                                self.display.line(&format!(
                                    "lost the server at {} ({}); retrying, the agents keep running",
                                    self.options.base_url,
                                    short_error(&e)
                                ));
                            }
                            self.reconnecting = Some(format!(
                                "reconnecting to {} in {}s ({})",
                                self.options.base_url,
                                delay.as_secs().max(1),
                                short_error(&e)
                            ));
                            self.refresh_status();
                            next_poll = Instant::now() + delay;
                            continue;
                        }
                    };
                    let empty = found.is_none();
                    if let Some(work) = found {
                        self.on_work(work, &ctx).await;
                    }
                    next_poll = if self.at_capacity() {
                        Instant::now() + self.options.at_capacity_poll
                    } else if empty {
                        started + self.options.poll_interval
                    } else {
                        Instant::now()
                    };
                    self.refresh_status();
                }
                () = tokio::time::sleep_until(next_poll), if poll.is_none() => {}
                _ = heartbeat.tick(), if self.options.heartbeat.is_some() => self.heartbeat(),
                _ = status.tick() => {
                    if self.refresh_tokens().await {
                        next_poll = Instant::now();
                    }
                    self.query_states();
                    self.refresh_status();
                }
            }
        }
    }

    /// The error that ends the bridge for a fatal poll answer.
    fn fatal(&self, error: &ApiError) -> anyhow::Error {
        let url = &self.options.base_url;
        match error.status() {
            Some(404 | 410) => anyhow::anyhow!(
                "the server at {url} no longer knows this bridge's environment (it was \
                 deregistered or expired); start the bridge again"
            ),
            _ => anyhow::anyhow!("{}", explain(error, url)),
        }
    }

    async fn on_work(&mut self, work: WorkResponse, ctx: &Arc<SessionContext>) {
        if self.finished_work.contains(&work.id) {
            tracing::debug!(work = %work.id, "work of a session that already ended; skipped");
            return;
        }
        let secret = match WorkSecret::decode(&work.secret) {
            Ok(secret) => secret,
            Err(e) => {
                self.display.line(&format!(
                    "work {} for {} has an unreadable secret ({e}); it was stopped",
                    work.id, work.data.id
                ));
                self.finished_work.insert(work.id.clone());
                self.stop_work(work.id, false);
                return;
            }
        };
        let token = secret.session_ingress_token.clone();
        let body = SessionId::parse(&work.data.id).map(|id| id.body().to_owned());
        let (true, Some(body)) = (work.data.kind == "session", body) else {
            // Healthchecks and unknown kinds are acknowledged and otherwise ignored.
            self.acknowledge(&work.id, &token).await;
            return;
        };
        if let Some(active) = self.active.get_mut(&body) {
            // A running session's new work item carries its rotated token (§4.9).
            active.work_id = work.id.clone();
            active.token = token.clone();
            active.refresh_at = refresh_time(&token);
            let _ = active.control.token.send(token.clone());
            self.acknowledge(&work.id, &token).await;
            tracing::debug!(session = %body, "passed a new token to a running session");
            return;
        }
        if self.at_capacity() {
            tracing::debug!(session = %body, "at capacity; leaving the work for later");
            return;
        }
        if self.options.spawn == SpawnMode::SingleSession
            && !self.known.is_empty()
            && !self.known.contains_key(&body)
        {
            // Single-session mode runs only its own session.
            tracing::debug!(session = %body, "not this bridge's session; ignored");
            return;
        }
        self.acknowledge(&work.id, &token).await;
        let link = session_link(&self.options.web_url, &work.data.id);
        self.known
            .entry(body.clone())
            .or_insert_with(|| work.data.id.clone());
        self.display
            .line(&format!("{}: new session — {link}", short(&body)));
        let (token_tx, token_rx) = watch::channel(token.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(session::run(
            ctx.clone(),
            Work {
                session_id: work.data.id.clone(),
                body: body.clone(),
                token: token.clone(),
                use_code_sessions: secret.use_code_sessions,
            },
            stop.clone(),
            token_rx,
        ));
        self.active.insert(
            body,
            Active {
                session_id: work.data.id,
                work_id: work.id,
                refresh_at: refresh_time(&token),
                token,
                control: SessionControl {
                    stop,
                    token: token_tx,
                },
                task,
                state: "starting",
            },
        );
    }

    async fn acknowledge(&self, work_id: &str, token: &str) {
        // A failed ack is logged and ignored: the server hands the work out again, and
        // the bridge recognises it (§4.3).
        if let Err(e) = self
            .api
            .acknowledge_work(&self.environment.environment_id, work_id, token)
            .await
        {
            tracing::warn!(work = %work_id, error = %e, "could not acknowledge work");
        }
    }

    /// Handles a session's event; true when a slot was freed.
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::State { body, state } => {
                if let Some(active) = self.active.get_mut(&body) {
                    active.state = state;
                }
                self.refresh_status();
                false
            }
            Event::Ended { body, outcome } => {
                self.ended(&body, &outcome, false);
                if self.options.spawn == SpawnMode::SingleSession {
                    self.single_done = true;
                }
                true
            }
        }
    }

    /// Cleans up after a session whose agent is gone: one line, stop the work, archive.
    fn ended(&mut self, body: &str, outcome: &Outcome, shutting_down: bool) {
        let Some(active) = self.active.remove(body) else {
            return;
        };
        let name = short(body);
        let line = match outcome {
            Outcome::Completed => format!("{name}: the agent finished; session archived"),
            Outcome::Failed(reason) => format!(
                "{name}: {reason}. The session was stopped and archived; start a new one from \
                 the web UI or with `switchboard bridge --new`"
            ),
            Outcome::Interrupted => format!("{name}: agent stopped"),
            Outcome::TimedOut => format!(
                "{name}: ran longer than the --session-timeout of {}s and was stopped",
                self.options.session_timeout.as_secs()
            ),
        };
        self.display.line(&line);
        self.finished_work.insert(active.work_id.clone());
        // A work item the bridge itself cut short is stopped with force (§4.5).
        let force = shutting_down || matches!(outcome, Outcome::Interrupted);
        // An agent that failed says so in the session before its work is stopped (which
        // ends the token) and the session archived: viewers see why it ended, and its
        // owner's notifications call it an error.
        let reported = match outcome {
            Outcome::Failed(reason) => {
                let (base_url, token, reason) = (
                    self.options.base_url.clone(),
                    active.token.clone(),
                    reason.clone(),
                );
                let session_id = active.session_id.clone();
                Some(
                    async move {
                        if let Err(e) =
                            report_failure(&base_url, &session_id, &token, &reason).await
                        {
                            tracing::debug!(session = %session_id, error = %e, "could not report the agent's failure");
                        }
                    }
                    .boxed()
                    .shared(),
                )
            }
            _ => None,
        };
        self.stop_work_after(active.work_id, force, reported.clone());
        self.archive_after(body.to_owned(), active.session_id, reported);
        self.refresh_status();
    }

    fn stop_work(&mut self, work_id: String, force: bool) {
        self.stop_work_after(work_id, force, None);
    }

    /// Stops a work item, once `before` (if any) is done.
    fn stop_work_after(&mut self, work_id: String, force: bool, before: Option<Reported>) {
        let api = self.api.clone();
        let environment = self.environment.environment_id.clone();
        self.cleanup.spawn(async move {
            if let Some(before) = before {
                before.await;
            }
            let mut delay = STOP_FIRST_DELAY;
            for attempt in 1..=STOP_ATTEMPTS {
                match api.stop_work(&environment, &work_id, force).await {
                    Ok(()) => return,
                    Err(e) if e.is_fatal() || attempt == STOP_ATTEMPTS => {
                        tracing::warn!(work = %work_id, error = %e, "could not stop work");
                        return;
                    }
                    Err(_) => {
                        tokio::time::sleep(jitter(delay)).await;
                        delay *= 2;
                    }
                }
            }
        });
    }

    fn archive(&mut self, body: String, session_id: String) {
        self.archive_after(body, session_id, None);
    }

    /// Archives a session, once `before` (if any: the report of its agent's failure)
    /// is done.
    fn archive_after(&mut self, body: String, session_id: String, before: Option<Reported>) {
        if !self.archived.insert(body) {
            return;
        }
        let api = self.api.clone();
        let compat = SessionId::parse(&session_id)
            .map(|id| id.compat())
            .unwrap_or(session_id);
        self.cleanup.spawn(async move {
            if let Some(before) = before {
                before.await;
            }
            if let Err(e) = api.archive_session(&compat).await {
                tracing::warn!(session = %compat, error = %e, "could not archive the session");
            }
        });
    }

    fn heartbeat(&mut self) {
        for (body, active) in &self.active {
            let api = self.api.clone();
            let environment = self.environment.environment_id.clone();
            let (work_id, token) = (active.work_id.clone(), active.token.clone());
            let compat = SessionId::parse(&active.session_id).map(|id| id.compat());
            let body = body.clone();
            self.cleanup.spawn(async move {
                match api.heartbeat_work(&environment, &work_id, &token).await {
                    Ok(_) => {}
                    Err(e) if matches!(e.status(), Some(401 | 403)) => {
                        // The token is no longer accepted: ask for a fresh one (§4.4).
                        if let Some(compat) = compat {
                            if let Err(e) = api.reconnect_session(&environment, &compat).await {
                                tracing::warn!(session = %body, error = %e, "could not refresh the session's token");
                            }
                        }
                    }
                    Err(e) => tracing::debug!(session = %body, error = %e, "heartbeat failed"),
                }
            });
        }
        // Finished cleanup tasks are collected here so the set does not grow.
        while let Some(Some(_)) = self.cleanup.join_next().now_or_never() {}
    }

    /// Asks the server to re-dispatch sessions whose JWT token is about to expire; true
    /// when it did, so that the next poll picks up the new work at once.
    async fn refresh_tokens(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .active
            .iter_mut()
            .filter(|(_, a)| a.refresh_at.is_some_and(|at| at <= now))
            .map(|(body, a)| {
                a.refresh_at = Some(now + TOKEN_REFRESH_FOLLOW_UP);
                (body.clone(), a.session_id.clone())
            })
            .collect();
        let mut any = false;
        for (body, session_id) in due {
            let compat = SessionId::parse(&session_id).map_or(session_id, |id| id.compat());
            match self
                .api
                .reconnect_session(&self.environment.environment_id, &compat)
                .await
            {
                Ok(()) => any = true,
                Err(e) => {
                    tracing::warn!(session = %body, error = %e, "could not refresh the token")
                }
            }
        }
        any
    }

    /// On a terminal, asks the server how the running sessions are doing.
    fn query_states(&mut self) {
        if !self.display.is_terminal() {
            return;
        }
        for (body, active) in &self.active {
            let sessions = self.sessions.clone();
            let events = self.events.clone();
            let compat = SessionId::parse(&active.session_id).map(|id| id.compat());
            let body = body.clone();
            let Some(compat) = compat else { continue };
            self.cleanup.spawn(async move {
                if let Ok(session) = sessions.get_session(&compat).await {
                    let state = crate::sessions::state(&session);
                    let _ = events.send(Event::State { body, state });
                }
            });
        }
    }

    fn refresh_status(&self) {
        if !self.display.is_terminal() {
            return;
        }
        let mut text = if let Some(reconnecting) = &self.reconnecting {
            format!("◌ {reconnecting}")
        } else {
            format!(
                "● {}/{} sessions",
                self.active.len(),
                self.options.max_sessions
            )
        };
        let mut bodies: Vec<&String> = self.active.keys().collect();
        bodies.sort();
        for body in bodies {
            let active = &self.active[body];
            let tag: String = body.chars().take(8).collect();
            text.push_str(&format!(" · {tag} {}", active.state));
        }
        if self.active.is_empty() && self.reconnecting.is_none() {
            text.push_str(" · waiting for work");
        }
        self.display.status(&text);
    }

    /// Stops every agent, stops their work, archives every known session, deregisters.
    async fn stop_everything(&mut self) {
        if !self.active.is_empty() {
            self.display
                .line(&format!("Stopping {} session(s)…", self.active.len()));
        }
        for active in self.active.values() {
            active.control.stop.cancel();
        }
        let wait = self.options.shutdown_grace + Duration::from_secs(10);
        let deadline = Instant::now() + wait;
        while !self.active.is_empty() {
            let event = tokio::select! {
                event = self.event_rx.recv() => event,
                () = tokio::time::sleep_until(deadline) => None,
            };
            match event {
                Some(Event::Ended { body, outcome }) => self.ended(&body, &outcome, true),
                Some(Event::State { .. }) => {}
                None => break,
            }
        }
        // Sessions whose task did not report in time are cleaned up all the same.
        let stragglers: Vec<String> = self.active.keys().cloned().collect();
        for body in stragglers {
            if let Some(active) = self.active.get(&body) {
                active.task.abort();
            }
            self.ended(&body, &Outcome::Interrupted, true);
        }
        let unarchived: Vec<(String, String)> = self
            .known
            .iter()
            .filter(|(body, _)| !self.archived.contains(*body))
            .map(|(body, id)| (body.clone(), id.clone()))
            .collect();
        for (body, id) in unarchived {
            self.archive(body, id);
        }
        let cleanup = async { while self.cleanup.join_next().await.is_some() {} };
        if tokio::time::timeout(CLEANUP_TIMEOUT, cleanup)
            .await
            .is_err()
        {
            self.cleanup.abort_all();
        }
        match self
            .api
            .deregister_environment(&self.environment.environment_id)
            .await
        {
            Ok(()) => self
                .display
                .line("Environment deregistered; the bridge has stopped."),
            Err(e) => self.display.line(&format!(
                "could not deregister the environment: {}",
                explain(&e, &self.options.base_url)
            )),
        }
    }
}

/// When a JWT token should be refreshed; never for opaque tokens (§11.2).
fn refresh_time(token: &str) -> Option<Instant> {
    let exp = jwt_expiry(token)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let left = Duration::from_secs(exp.saturating_sub(now));
    Some(Instant::now() + left.saturating_sub(TOKEN_REFRESH_BUFFER))
}

/// A short form of an error for the status line.
fn short_error(error: &ApiError) -> String {
    match error {
        ApiError::Transport(e) => root_cause(e),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_back_off_from_2_s_and_others_from_500_ms() {
        let mut backoff = Backoff::default();
        let server = ApiError::from_status(503, b"", None);
        let first = backoff.next(&server).unwrap_or_default();
        assert!(first >= Duration::from_millis(1500) && first <= Duration::from_millis(2500));
        let second = backoff.next(&server).unwrap_or_default();
        assert!(second >= Duration::from_secs(3), "{second:?}");

        let mut backoff = Backoff::default();
        let odd = ApiError::from_status(400, b"", None);
        let first = backoff.next(&odd).unwrap_or_default();
        assert!(first <= Duration::from_millis(625), "{first:?}");
    }

    #[test]
    fn opaque_tokens_are_never_refreshed() {
        assert_eq!(refresh_time("sbi_abc_def"), None);
    }
}
