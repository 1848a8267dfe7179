//! Many sessions: S sessions at once, each with one worker and one viewer, each session
//! at its own random phase. Every period (1 / `--sessions-rate`) a session either sends
//! one event, alternating direction (a prompt from the viewer, then an assistant message
//! from the worker, …), or sends one each way (`--sessions-pattern each-way`: a prompt
//! and an assistant message every period, from two clocks of their own).
//!
//! The clocks are open-loop: a send that takes longer than its period does not move the
//! next one; the next goes as soon as it can, and how late each send left against its
//! schedule is recorded (the send lag), so a server that makes its clients queue shows
//! it even when the latency from send to receipt stays small.
//!
//! Measured in the timed part: the latency of every event, from just before it is sent
//! to its receipt; events sent and received; the send lag; the server's resident memory
//! with everything connected against its memory before the first session (per session);
//! the CPU the server and the bench spend. The same machinery runs the knee scenario,
//! which changes the period between timed windows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::child::ProcSample;
use crate::client::{WsSink, WsStream};
use crate::message::{instant_at, now_ns, stamp, Payloads, INBOUND_MARK, OUTBOUND_MARK};
use crate::stats::{Latencies, Summary};
use crate::system::{System, Viewer, ViewerWriter, Worker, WorkerReader, WorkerWriter};

/// Which way a session's events go each period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Pattern {
    /// One event per period, alternating direction.
    Alternate,
    /// One event each way per period: a prompt and an assistant message.
    EachWay,
}

impl Pattern {
    /// Events per session per period.
    pub(crate) fn events_per_period(self) -> f64 {
        match self {
            Pattern::Alternate => 1.0,
            Pattern::EachWay => 2.0,
        }
    }
}

/// How the sessions behave.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct SessionsConfig {
    /// Timed part of the run.
    pub(crate) duration: Duration,
    /// Untimed exchange before it, after every session is up.
    pub(crate) warmup: Duration,
    /// Periods per session per second.
    pub(crate) rate: f64,
    /// Sessions set up at once while ramping up.
    pub(crate) ramp_concurrency: usize,
    /// One event per period, or one each way.
    pub(crate) pattern: Pattern,
}

/// Figures for one S.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SessionsResult {
    /// Sessions asked for.
    pub(crate) requested: usize,
    /// Sessions set up and held through the run.
    pub(crate) sessions: usize,
    /// Sessions whose setup failed.
    pub(crate) failed_setups: usize,
    /// The first setup failure, if any.
    pub(crate) first_setup_error: Option<String>,
    /// Time to set up every session (create, dispatch, connect worker and viewer).
    pub(crate) setup_secs: f64,
    /// One event per period or one each way.
    pub(crate) pattern: Pattern,
    /// Periods per session per second.
    pub(crate) rate: f64,
    /// Events per second the sessions' clocks asked for, all sessions, both ways.
    pub(crate) offered_per_s: f64,
    /// Events per second sent in the timed part that arrived.
    pub(crate) delivered_per_s: f64,
    /// Latency of every event in the timed part, both directions.
    pub(crate) latency: Summary,
    /// Prompts, viewer to worker.
    pub(crate) viewer_to_worker: Summary,
    /// Assistant messages, worker to viewer.
    pub(crate) worker_to_viewer: Summary,
    /// How late sends left against their clocks: grows when the clients queue.
    pub(crate) send_lag: Summary,
    /// Sends due in the timed part.
    pub(crate) events_scheduled: u64,
    /// Events sent in the timed part.
    pub(crate) events_sent: u64,
    /// Of those, events that never arrived: none arrived for 5 s (or 60 s passed)
    /// after the timed part.
    pub(crate) events_lost: u64,
    /// Sends that failed.
    pub(crate) send_errors: u64,
    /// Worker or viewer connections that ended before the run did.
    pub(crate) connections_lost: u64,
    /// Server memory before the first session, KiB.
    pub(crate) server_rss_idle_kib: Option<u64>,
    /// Server memory at the end of the timed part, every session connected, KiB.
    pub(crate) server_rss_kib: Option<u64>,
    /// (`server_rss_kib` − `server_rss_idle_kib`) / `sessions`.
    pub(crate) memory_per_session_kib: Option<f64>,
    /// Cores the server used on average in the timed part.
    pub(crate) server_cpu_cores: Option<f64>,
    /// Cores the bench itself (the load generator) used.
    pub(crate) bench_cpu_cores: f64,
    /// Wall time of the timed part, seconds.
    pub(crate) secs: f64,
}

/// Runs `requested` sessions.
pub(crate) async fn run(
    system: &System,
    payloads: &Payloads,
    requested: usize,
    config: SessionsConfig,
    server_pids: Option<&[u32]>,
) -> anyhow::Result<SessionsResult> {
    let server_rss_idle_kib = server_pids
        .map(ProcSample::read_all)
        .transpose()?
        .map(|s| s.rss_kib);
    let fleet = Fleet::start(
        system,
        payloads,
        requested,
        config.ramp_concurrency,
        config.pattern,
        config.rate,
    )
    .await?;
    tokio::time::sleep(config.warmup).await;
    let window = fleet
        .measure(config.duration, Duration::from_secs(5), server_pids)
        .await;
    let sessions = fleet.sessions;
    let (setup_secs, failed_setups, first_setup_error) = (
        fleet.setup_secs,
        fleet.failed_setups,
        fleet.first_setup_error.clone(),
    );
    fleet.stop().await;
    let window = window?;

    Ok(SessionsResult {
        requested,
        sessions,
        failed_setups,
        first_setup_error,
        setup_secs,
        pattern: config.pattern,
        rate: config.rate,
        offered_per_s: sessions as f64 * config.rate * config.pattern.events_per_period(),
        delivered_per_s: window.received as f64 / window.secs.max(f64::EPSILON),
        latency: window.both().summary(),
        viewer_to_worker: window.inbound.summary(),
        worker_to_viewer: window.outbound.summary(),
        send_lag: window.lag.summary(),
        events_scheduled: window.scheduled,
        events_sent: window.sent,
        events_lost: window.sent.saturating_sub(window.received),
        send_errors: window.send_errors,
        connections_lost: window.connections_lost,
        server_rss_idle_kib,
        server_rss_kib: window.server_rss_kib,
        memory_per_session_kib: match (server_rss_idle_kib, window.server_rss_kib) {
            (Some(idle), Some(full)) => Some(full.saturating_sub(idle) as f64 / sessions as f64),
            _ => None,
        },
        server_cpu_cores: window.server_cpu_cores,
        bench_cpu_cores: window.bench_cpu_cores,
        secs: window.secs,
    })
}

/// The longest a window waits for its last events while they still arrive.
const MAX_DRAIN: Duration = Duration::from_secs(60);

/// What the sessions' tasks share.
#[derive(Default)]
struct Recorder {
    inbound: Mutex<Latencies>,
    outbound: Mutex<Latencies>,
    lag: Mutex<Latencies>,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    scheduled: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    send_errors: AtomicU64,
    lost: AtomicU64,
}

impl Recorder {
    fn timed(&self, ns: u64) -> bool {
        ns >= self.start_ns.load(Ordering::Acquire) && ns < self.end_ns.load(Ordering::Acquire)
    }
}

/// What one timed window measured.
pub(crate) struct Window {
    /// Prompts' latencies.
    pub(crate) inbound: Latencies,
    /// Assistant messages' latencies.
    pub(crate) outbound: Latencies,
    /// Send lag against the clocks.
    pub(crate) lag: Latencies,
    /// Sends due in the window.
    pub(crate) scheduled: u64,
    /// Sends made in the window.
    pub(crate) sent: u64,
    /// Of those, how many arrived (within the grace after the window).
    pub(crate) received: u64,
    /// Sends that failed.
    pub(crate) send_errors: u64,
    /// Connections that ended in the window.
    pub(crate) connections_lost: u64,
    /// Wall time, seconds.
    pub(crate) secs: f64,
    /// Cores the server used.
    pub(crate) server_cpu_cores: Option<f64>,
    /// Cores the bench used.
    pub(crate) bench_cpu_cores: f64,
    /// Server memory at the end, KiB.
    pub(crate) server_rss_kib: Option<u64>,
}

impl Window {
    /// Both directions' latencies.
    pub(crate) fn both(&self) -> Latencies {
        let mut both = self.inbound.clone();
        both.merge(&self.outbound);
        both
    }
}

/// S sessions exchanging events on open-loop clocks until stopped.
pub(crate) struct Fleet {
    /// Sessions set up.
    pub(crate) sessions: usize,
    /// Sessions whose setup failed.
    pub(crate) failed_setups: usize,
    /// The first setup failure.
    pub(crate) first_setup_error: Option<String>,
    /// Time the setup took, seconds.
    pub(crate) setup_secs: f64,
    recorder: Arc<Recorder>,
    period_ns: Arc<AtomicU64>,
    stop_drivers: CancellationToken,
    stop_readers: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Sets up `count` sessions (`ramp` at a time) and starts their clocks at `rate`
    /// periods per second.
    pub(crate) async fn start(
        system: &System,
        payloads: &Payloads,
        count: usize,
        ramp: usize,
        pattern: Pattern,
        rate: f64,
    ) -> anyhow::Result<Self> {
        let setup_started = Instant::now();
        let (pairs, failures) = set_up(system, count, ramp).await;
        let setup_secs = setup_started.elapsed().as_secs_f64();
        let first_setup_error = failures.first().map(|e| format!("{e:#}"));
        anyhow::ensure!(
            !pairs.is_empty(),
            "no session could be set up: {}",
            first_setup_error.unwrap_or_default()
        );
        let sessions = pairs.len();
        let recorder = Arc::new(Recorder {
            start_ns: AtomicU64::new(u64::MAX),
            end_ns: AtomicU64::new(u64::MAX),
            ..Default::default()
        });
        let period_ns = Arc::new(AtomicU64::new(period_ns(rate)));
        let stop_drivers = CancellationToken::new();
        let stop_readers = CancellationToken::new();
        let mut tasks = Vec::with_capacity(sessions * 4);
        for (worker, viewer) in pairs {
            let Worker {
                reader,
                writer,
                keep_open,
            } = worker;
            let (viewer_writer, stream) = viewer.split();
            tasks.push(tokio::spawn(read_worker(
                reader,
                keep_open,
                recorder.clone(),
                stop_readers.clone(),
            )));
            tasks.push(tokio::spawn(read_viewer(
                stream,
                recorder.clone(),
                stop_readers.clone(),
            )));
            let outs = [Out::Viewer(viewer_writer), Out::Worker(writer)];
            let clocks: Vec<Vec<Out>> = match pattern {
                Pattern::Alternate => vec![outs.into()],
                Pattern::EachWay => outs.into_iter().map(|o| vec![o]).collect(),
            };
            for outs in clocks {
                tasks.push(tokio::spawn(drive(
                    outs,
                    payloads.clone(),
                    period_ns.clone(),
                    recorder.clone(),
                    stop_drivers.clone(),
                )));
            }
        }
        Ok(Self {
            sessions,
            failed_setups: failures.len(),
            first_setup_error,
            setup_secs,
            recorder,
            period_ns,
            stop_drivers,
            stop_readers,
            tasks,
        })
    }

    /// Changes every clock to `rate` periods per second, from each one's next tick.
    pub(crate) fn set_rate(&self, rate: f64) {
        self.period_ns.store(period_ns(rate), Ordering::Release);
    }

    /// Times one window of `duration`, then waits for its events to arrive while they
    /// do (until none came for `grace`, at most a minute). The sessions keep running.
    pub(crate) async fn measure(
        &self,
        duration: Duration,
        grace: Duration,
        server_pids: Option<&[u32]>,
    ) -> anyhow::Result<Window> {
        let r = &self.recorder;
        r.start_ns.store(u64::MAX, Ordering::Release);
        for counter in [&r.scheduled, &r.sent, &r.received, &r.send_errors] {
            counter.store(0, Ordering::Release);
        }
        for histogram in [&r.inbound, &r.outbound, &r.lag] {
            *histogram.lock().expect("histogram poisoned") = Latencies::default();
        }
        let lost_before = r.lost.load(Ordering::Acquire);
        r.end_ns.store(u64::MAX, Ordering::Release);
        r.start_ns.store(now_ns(), Ordering::Release);
        let started = Instant::now();
        let server_before = server_pids.map(ProcSample::read_all).transpose()?;
        let own_before = ProcSample::own()?;
        tokio::time::sleep(duration).await;
        r.end_ns.store(now_ns(), Ordering::Release);
        let secs = started.elapsed().as_secs_f64();
        let server_after = server_pids.map(ProcSample::read_all).transpose()?;
        let bench_cpu_cores = ProcSample::own()?.cores_since(&own_before);
        let server_cpu_cores = match (&server_before, &server_after) {
            (Some(before), Some(after)) => Some(after.cores_since(before)),
            _ => None,
        };
        // Late is not lost: wait while events still arrive, until `grace` passes with
        // none, or at most MAX_DRAIN.
        let drain_started = Instant::now();
        let mut last = (r.received.load(Ordering::Acquire), Instant::now());
        loop {
            let received = r.received.load(Ordering::Acquire);
            if received >= r.sent.load(Ordering::Acquire) || drain_started.elapsed() > MAX_DRAIN {
                break;
            }
            if received > last.0 {
                last = (received, Instant::now());
            } else if last.1.elapsed() > grace {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let take = |h: &Mutex<Latencies>| h.lock().expect("histogram poisoned").clone();
        Ok(Window {
            inbound: take(&r.inbound),
            outbound: take(&r.outbound),
            lag: take(&r.lag),
            scheduled: r.scheduled.load(Ordering::Acquire),
            sent: r.sent.load(Ordering::Acquire),
            received: r.received.load(Ordering::Acquire),
            send_errors: r.send_errors.load(Ordering::Acquire),
            connections_lost: r.lost.load(Ordering::Acquire) - lost_before,
            secs,
            server_cpu_cores,
            bench_cpu_cores,
            server_rss_kib: server_after.map(|s| s.rss_kib),
        })
    }

    /// Stops the clocks, then the readers.
    pub(crate) async fn stop(self) {
        self.stop_drivers.cancel();
        self.stop_readers.cancel();
        let joined = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(self.tasks),
        )
        .await;
        if joined.is_err() {
            eprintln!("switchboard-bench: some session tasks did not stop within 60 s");
        }
    }
}

fn period_ns(rate: f64) -> u64 {
    (1e9 / rate.max(0.001)) as u64
}

/// Sets up `count` sessions with `concurrency` setups at a time (each line of setups on
/// an environment of its own), so the server's accept queue is never flooded.
async fn set_up(
    system: &System,
    count: usize,
    concurrency: usize,
) -> (Vec<(Worker, Viewer)>, Vec<anyhow::Error>) {
    let lines = concurrency.clamp(1, count.max(1));
    let results = futures_util::future::join_all((0..lines).map(|line| {
        let share = count / lines + usize::from(line < count % lines);
        async move {
            let mut pairs = Vec::with_capacity(share);
            let mut failures = Vec::new();
            let env = match system.environment().await {
                Ok(env) => env,
                Err(e) => return (pairs, vec![e]),
            };
            for _ in 0..share {
                let pair = async {
                    let session = system.open_session(env.as_ref()).await?;
                    let worker = system.connect_worker(&session).await?;
                    let viewer = system.connect_viewer(&session).await?;
                    anyhow::Ok((worker, viewer))
                }
                .await;
                match pair {
                    Ok(pair) => pairs.push(pair),
                    Err(e) => failures.push(e.context("session setup failed")),
                }
            }
            (pairs, failures)
        }
    }))
    .await;
    let mut pairs = Vec::with_capacity(count);
    let mut failures = Vec::new();
    for (p, f) in results {
        pairs.extend(p);
        failures.extend(f);
    }
    (pairs, failures)
}

/// One side's write path.
enum Out {
    /// Prompts, from the viewer.
    Viewer(ViewerWriter),
    /// Assistant messages, from the worker.
    Worker(WorkerWriter),
}

impl Out {
    async fn send(&mut self, payloads: &Payloads, sent: u64) -> anyhow::Result<()> {
        match self {
            Out::Viewer(viewer) => viewer.send(payloads.prompt(sent)).await,
            Out::Worker(worker) => worker.send(&[payloads.assistant(sent)]).await,
        }
    }
}

/// One clock: every period, the next of `outs` sends one event (round robin), at a
/// random phase; open-loop, so late sends are recorded, not skipped.
async fn drive(
    mut outs: Vec<Out>,
    payloads: Payloads,
    period_ns: Arc<AtomicU64>,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) {
    let period = period_ns.load(Ordering::Acquire);
    let mut next = now_ns() + (period as f64 * rand::random::<f64>()) as u64;
    let mut turn = usize::from(rand::random::<bool>());
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(instant_at(next)) => {}
            () = stop.cancelled() => return,
        }
        let scheduled = next;
        let len = outs.len();
        let out = &mut outs[turn % len];
        turn = turn.wrapping_add(1);
        let sent = now_ns();
        if recorder.timed(scheduled) {
            recorder.scheduled.fetch_add(1, Ordering::AcqRel);
            recorder
                .lag
                .lock()
                .expect("histogram poisoned")
                .record(sent.saturating_sub(scheduled));
        }
        let counted = recorder.timed(sent);
        if counted {
            recorder.sent.fetch_add(1, Ordering::AcqRel);
        }
        let result = tokio::select! {
            result = out.send(&payloads, sent) => result,
            () = stop.cancelled() => return,
        };
        if result.is_err() {
            recorder.send_errors.fetch_add(1, Ordering::AcqRel);
            if counted {
                recorder.sent.fetch_sub(1, Ordering::AcqRel);
            }
        }
        next += period_ns.load(Ordering::Acquire);
    }
}

async fn read_worker(
    mut reader: WorkerReader,
    _keep_open: Option<WsSink>,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) {
    if let WorkerReader::Ws(stream) = reader {
        return read_ws(stream, recorder, stop, INBOUND_MARK).await;
    }
    loop {
        let frame = tokio::select! {
            frame = reader.next_frame() => frame,
            () = stop.cancelled() => return,
        };
        let Ok(Some(frame)) = frame else {
            recorder.lost.fetch_add(1, Ordering::AcqRel);
            return;
        };
        record(&recorder, &frame, INBOUND_MARK);
    }
}

async fn read_viewer(stream: WsStream, recorder: Arc<Recorder>, stop: CancellationToken) {
    // The viewer also sees its own prompts (Switchboard echoes the log); only the
    // worker's messages are timed here.
    read_ws(stream, recorder, stop, OUTBOUND_MARK).await;
}

/// Reads a socket's text frames and times those stamped with `mark`, without copying
/// them.
async fn read_ws(
    mut stream: WsStream,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
    mark: &'static str,
) {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            () = stop.cancelled() => return,
        };
        match message {
            Some(Ok(Message::Text(text))) => record(&recorder, text.as_str(), mark),
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                recorder.lost.fetch_add(1, Ordering::AcqRel);
                return;
            }
            Some(Ok(_)) => {}
        }
    }
}

fn record(recorder: &Recorder, frame: &str, mark: &str) {
    let into = if mark == INBOUND_MARK {
        &recorder.inbound
    } else {
        &recorder.outbound
    };
    let Some(sent) = stamp(frame, mark) else {
        return;
    };
    if !recorder.timed(sent) {
        return;
    }
    let latency = now_ns().saturating_sub(sent);
    recorder.received.fetch_add(1, Ordering::AcqRel);
    into.lock().expect("histogram poisoned").record(latency);
}
