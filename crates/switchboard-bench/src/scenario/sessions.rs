//! Many sessions: S sessions at once, each with one worker and one viewer exchanging one
//! event per second, alternating direction (a prompt from the viewer, then an assistant
//! message from the worker, …), each session at its own random phase.
//!
//! Measured in the timed part: the latency of every event, the server's resident memory
//! with everything connected against its memory before the first session (per session),
//! and the CPU it spends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::child::ProcSample;
use crate::client::{WsSink, WsStream};
use crate::message::{now_ns, stamp, Payloads, INBOUND_MARK, OUTBOUND_MARK};
use crate::stats::{Latencies, Summary};
use crate::system::{System, Viewer, Worker, WorkerReader, WorkerWriter};

/// How the sessions behave.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct SessionsConfig {
    /// Timed part of the run.
    pub(crate) duration: Duration,
    /// Untimed exchange before it, after every session is up.
    pub(crate) warmup: Duration,
    /// Events per session per second.
    pub(crate) rate: f64,
    /// Sessions set up at once while ramping up.
    pub(crate) ramp_concurrency: usize,
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
    /// Latency of every event in the timed part, both directions.
    pub(crate) latency: Summary,
    /// Prompts, viewer to worker.
    pub(crate) viewer_to_worker: Summary,
    /// Assistant messages, worker to viewer.
    pub(crate) worker_to_viewer: Summary,
    /// Events sent in the timed part.
    pub(crate) events_sent: u64,
    /// Of those, events that never arrived.
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
    /// Cores the bench itself used.
    pub(crate) bench_cpu_cores: f64,
    /// Wall time of the timed part, seconds.
    pub(crate) secs: f64,
}

/// What the sessions' tasks share.
#[derive(Default)]
struct Recorder {
    inbound: Mutex<Latencies>,
    outbound: Mutex<Latencies>,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    send_errors: AtomicU64,
    lost: AtomicU64,
}

impl Recorder {
    fn timed(&self, sent_ns: u64) -> bool {
        sent_ns >= self.start_ns.load(Ordering::Acquire)
            && sent_ns < self.end_ns.load(Ordering::Acquire)
    }
}

/// Runs `requested` sessions.
pub(crate) async fn run(
    system: &System,
    payloads: &Payloads,
    requested: usize,
    config: SessionsConfig,
    server_pid: Option<u32>,
) -> anyhow::Result<SessionsResult> {
    let server_rss_idle_kib = server_pid
        .map(ProcSample::read)
        .transpose()?
        .map(|s| s.rss_kib);

    let setup_started = Instant::now();
    let (pairs, failures) = set_up(system, requested, config.ramp_concurrency).await;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let failed_setups = failures.len();
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
    let stop_drivers = CancellationToken::new();
    let stop_readers = CancellationToken::new();
    let period = Duration::from_secs_f64(1.0 / config.rate.max(0.001));
    let mut tasks = Vec::with_capacity(sessions * 3);
    for (worker, viewer) in pairs {
        let Worker {
            reader,
            writer,
            keep_open,
        } = worker;
        let (sink, stream) = viewer.split();
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
        tasks.push(tokio::spawn(drive(
            writer,
            sink,
            payloads.clone(),
            period,
            recorder.clone(),
            stop_drivers.clone(),
        )));
    }

    tokio::time::sleep(config.warmup).await;
    recorder.start_ns.store(now_ns(), Ordering::Release);
    let started = Instant::now();
    let server_before = server_pid.map(ProcSample::read).transpose()?;
    let own_before = ProcSample::own()?;
    tokio::time::sleep(config.duration).await;
    recorder.end_ns.store(now_ns(), Ordering::Release);
    let secs = started.elapsed().as_secs_f64();
    let server_after = server_pid.map(ProcSample::read).transpose()?;
    let bench_cpu_cores = ProcSample::own()?.cores_since(&own_before);
    let server_cpu_cores = match (&server_before, &server_after) {
        (Some(before), Some(after)) => Some(after.cores_since(before)),
        _ => None,
    };
    let server_rss_kib = server_after.map(|s| s.rss_kib);

    // Let the last timed events arrive, then stop everything.
    stop_drivers.cancel();
    let grace = Instant::now() + Duration::from_secs(5);
    while recorder.received.load(Ordering::Acquire) < recorder.sent.load(Ordering::Acquire)
        && Instant::now() < grace
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_readers.cancel();
    let joined = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await;
    if joined.is_err() {
        eprintln!("switchboard-bench: some session tasks did not stop within 60 s");
    }

    let inbound = recorder.inbound.lock().expect("histogram poisoned").clone();
    let outbound = recorder
        .outbound
        .lock()
        .expect("histogram poisoned")
        .clone();
    let mut both = inbound.clone();
    both.merge(&outbound);
    let sent = recorder.sent.load(Ordering::Acquire);
    Ok(SessionsResult {
        requested,
        sessions,
        failed_setups,
        first_setup_error,
        setup_secs,
        latency: both.summary(),
        viewer_to_worker: inbound.summary(),
        worker_to_viewer: outbound.summary(),
        events_sent: sent,
        events_lost: sent.saturating_sub(recorder.received.load(Ordering::Acquire)),
        send_errors: recorder.send_errors.load(Ordering::Acquire),
        connections_lost: recorder.lost.load(Ordering::Acquire),
        server_rss_idle_kib,
        server_rss_kib,
        memory_per_session_kib: match (server_rss_idle_kib, server_rss_kib) {
            (Some(idle), Some(full)) => Some(full.saturating_sub(idle) as f64 / sessions as f64),
            _ => None,
        },
        server_cpu_cores,
        bench_cpu_cores,
        secs,
    })
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

/// One session's clock: every period, a prompt or an assistant message, alternating.
async fn drive(
    mut writer: WorkerWriter,
    mut sink: WsSink,
    payloads: Payloads,
    period: Duration,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) {
    use futures_util::SinkExt as _;
    let phase = period.mul_f64(rand::random::<f64>());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prompt_next = rand::random::<bool>();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let sent = now_ns();
        let result = if prompt_next {
            let frame = tokio_tungstenite::tungstenite::Message::Text(payloads.prompt(sent).into());
            sink.send(frame).await.map_err(anyhow::Error::from)
        } else {
            writer.send(&[payloads.assistant(sent)]).await
        };
        prompt_next = !prompt_next;
        match result {
            Ok(()) if recorder.timed(sent) => {
                recorder.sent.fetch_add(1, Ordering::AcqRel);
            }
            Ok(()) => {}
            Err(_) => {
                recorder.send_errors.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

async fn read_worker(
    mut reader: WorkerReader,
    _keep_open: Option<WsSink>,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            frame = reader.next_frame() => frame,
            _ = stop.cancelled() => return,
        };
        let Ok(Some(frame)) = frame else {
            recorder.lost.fetch_add(1, Ordering::AcqRel);
            return;
        };
        record(&recorder, &recorder.inbound, &frame, INBOUND_MARK);
    }
}

async fn read_viewer(mut stream: WsStream, recorder: Arc<Recorder>, stop: CancellationToken) {
    loop {
        let frame = tokio::select! {
            frame = crate::client::next_text(&mut stream) => frame,
            _ = stop.cancelled() => return,
        };
        let Ok(Some(frame)) = frame else {
            recorder.lost.fetch_add(1, Ordering::AcqRel);
            return;
        };
        // The viewer also sees its own prompts (Switchboard echoes the log); only the
        // worker's messages are timed here.
        record(&recorder, &recorder.outbound, &frame, OUTBOUND_MARK);
    }
}

fn record(recorder: &Recorder, into: &Mutex<Latencies>, frame: &str, mark: &str) {
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
