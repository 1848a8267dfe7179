//! Fan-out: one worker writing as fast as the server accepts, to K viewers of its
//! session.
//!
//! The writer behaves like Claude Code's uploaders (docs/PROTOCOL.md §8.3, §9.5) with an
//! endless supply of events: one POST in flight, each carrying everything that queued
//! meanwhile, up to the batch limit.
//!
//! The writer keeps at most `window` events ahead of the slowest viewer. Without that
//! bound a writer that outruns the viewers would only measure how fast the server cuts
//! them off (it disconnects a viewer that falls a channel's capacity behind, 512 events
//! by default); with it, the figure is the rate the server sustains with every viewer
//! keeping up. The window stays well under the channel's capacity.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::child::ProcSample;
use crate::message::{now_ns, stamp, Payloads, OUTBOUND_MARK};
use crate::stats::{Latencies, Summary};
use crate::system::{System, Viewer, Worker, WorkerWriter};

/// How the writer behaves.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct FanoutConfig {
    /// Timed part of the run.
    pub(crate) duration: Duration,
    /// Untimed writing before it.
    pub(crate) warmup: Duration,
    /// Most events the writer may be ahead of the slowest viewer.
    pub(crate) window: u64,
    /// Most POSTs in flight at once (Switchboard only; the relay's writer just writes).
    pub(crate) inflight: usize,
    /// Most events per POST (per flush, for the relay).
    pub(crate) batch: usize,
}

/// Fan-out figures for one K.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FanoutResult {
    /// K.
    pub(crate) viewers: usize,
    /// Events the server accepted in the timed part.
    pub(crate) events: u64,
    /// Accepted events per second.
    pub(crate) events_per_s: f64,
    /// Events viewers received in the timed part, summed over viewers.
    pub(crate) deliveries: u64,
    /// Deliveries per second.
    pub(crate) deliveries_per_s: f64,
    /// From the write to a viewer having the event.
    pub(crate) latency: Summary,
    /// Viewers whose connection ended before the run did.
    pub(crate) viewers_lost: usize,
    /// Events a connected viewer never received.
    pub(crate) undelivered: u64,
    /// Cores the server used on average in the timed part.
    pub(crate) server_cpu_cores: Option<f64>,
    /// Cores the bench itself used.
    pub(crate) bench_cpu_cores: f64,
    /// Wall time of the timed part, seconds.
    pub(crate) secs: f64,
}

/// What the writer and the viewers share.
struct Shared {
    /// Bench events each viewer received so far; `u64::MAX` once it is gone.
    received: Vec<AtomicU64>,
    /// Events written in all, once the writer is done.
    total: AtomicU64,
    /// Events sent at or after this moment are timed.
    start_ns: AtomicU64,
    writer_waiting: AtomicBool,
    progress: Notify,
}

impl Shared {
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }
}

#[derive(Default)]
struct ViewerOutcome {
    latencies: Latencies,
    timed: u64,
    last_ns: u64,
    lost: bool,
}

type Write = Pin<Box<dyn Future<Output = (anyhow::Result<()>, u64, bool)> + Send>>;

/// Runs one fan-out to `viewers` viewers.
pub(crate) async fn run(
    system: &System,
    payloads: &Payloads,
    viewers: usize,
    config: FanoutConfig,
    server_pids: Option<&[u32]>,
) -> anyhow::Result<FanoutResult> {
    let env = system.environment().await?;
    let session = system.open_session(env.as_ref()).await?;
    let Worker {
        mut reader,
        mut writer,
        keep_open: _keep_open,
    } = system.connect_worker(&session).await?;
    let mut connected = Vec::with_capacity(viewers);
    for chunk in (0..viewers).collect::<Vec<_>>().chunks(50) {
        let batch =
            futures_util::future::join_all(chunk.iter().map(|_| system.connect_viewer(&session)))
                .await;
        for viewer in batch {
            connected.push(viewer.context("a viewer failed to connect")?);
        }
    }

    let shared = Arc::new(Shared {
        received: (0..viewers).map(|_| AtomicU64::new(0)).collect(),
        total: AtomicU64::new(u64::MAX),
        start_ns: AtomicU64::new(u64::MAX),
        writer_waiting: AtomicBool::new(false),
        progress: Notify::new(),
    });
    let stop = CancellationToken::new();
    let tasks: Vec<_> = connected
        .into_iter()
        .enumerate()
        .map(|(i, viewer)| tokio::spawn(follow(i, viewer, shared.clone(), stop.clone())))
        .collect();
    // The worker gets nothing in this scenario but keep-alives; read them off anyway.
    let drain_stop = stop.clone();
    let drain = tokio::spawn(async move {
        tokio::select! {
            _ = async { while let Ok(Some(_)) = reader.next_frame().await {} } => {}
            _ = drain_stop.cancelled() => {}
        }
    });

    let http = match &writer {
        WorkerWriter::Http(http) => Some(http.clone()),
        WorkerWriter::Own(_) | WorkerWriter::Ws(_) => None,
    };
    let batch = config.batch.max(1) as u64;
    let warm_end = Instant::now() + config.warmup;
    let end = warm_end + config.duration;
    let mut in_flight: FuturesUnordered<Write> = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut accepted = 0u64;
    let mut timed_accepted = 0u64;
    let mut timing: Option<(Instant, Option<ProcSample>, ProcSample)> = None;
    loop {
        let now = Instant::now();
        if timing.is_none() && now >= warm_end {
            shared.start_ns.store(now_ns(), Ordering::Release);
            timing = Some((
                now,
                server_pids.map(ProcSample::read_all).transpose()?,
                ProcSample::own()?,
            ));
        }
        if now >= end {
            break;
        }
        // Send what the window has room for, up to a batch; but not a trickle of tiny
        // POSTs while the viewers drain a full window, which a worker whose queue
        // filled up meanwhile would not send either.
        let room = shared
            .slowest()
            .saturating_add(config.window)
            .saturating_sub(sent)
            .min(batch);
        if room >= batch.min(config.window / 2).max(1) && in_flight.len() < config.inflight.max(1) {
            let batch = room;
            let stamp = now_ns();
            let messages: Vec<String> = (0..batch).map(|_| payloads.assistant(stamp)).collect();
            let is_timed = timing.is_some();
            sent += batch;
            match &http {
                Some(http) => {
                    let http = http.clone();
                    in_flight.push(Box::pin(async move {
                        (http.send(&messages).await, batch, is_timed)
                    }));
                }
                None => {
                    writer.send(&messages).await?;
                    accepted += batch;
                    if is_timed {
                        timed_accepted += batch;
                    }
                }
            }
            continue;
        }
        shared.writer_waiting.store(true, Ordering::SeqCst);
        tokio::select! {
            Some((result, n, is_timed)) = in_flight.next(), if !in_flight.is_empty() => {
                result?;
                accepted += n;
                if is_timed {
                    timed_accepted += n;
                }
            }
            // Viewers announce progress while the writer waits; the timeout covers a
            // wake-up that raced with the flag.
            _ = tokio::time::timeout(Duration::from_millis(1), shared.progress.notified()) => {}
        }
        shared.writer_waiting.store(false, Ordering::SeqCst);
    }
    while let Some((result, n, is_timed)) = in_flight.next().await {
        result?;
        accepted += n;
        if is_timed {
            timed_accepted += n;
        }
    }
    let writer_done = Instant::now();
    shared.total.store(accepted, Ordering::Release);

    // Every viewer still connected should now get everything written; give them time.
    let grace = Instant::now() + Duration::from_secs(10);
    while shared.slowest() < accepted && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (started, server_before, own_before) = timing.context("the run ended before timing")?;
    let server_cpu_cores = match (server_pids, server_before) {
        (Some(pids), Some(before)) => Some(ProcSample::read_all(pids)?.cores_since(&before)),
        _ => None,
    };
    let bench_cpu_cores = ProcSample::own()?.cores_since(&own_before);
    stop.cancel();
    let _ = drain.await;

    let mut latencies = Latencies::default();
    let (mut deliveries, mut last_ns, mut lost, mut undelivered) = (0u64, 0u64, 0usize, 0u64);
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.context("a viewer task failed")?;
        latencies.merge(&outcome.latencies);
        deliveries += outcome.timed;
        last_ns = last_ns.max(outcome.last_ns);
        if outcome.lost {
            lost += 1;
        } else {
            undelivered += accepted.saturating_sub(shared.received[i].load(Ordering::Acquire));
        }
    }
    let start_ns = shared.start_ns.load(Ordering::Acquire);
    let delivery_secs = (last_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let write_secs = writer_done.duration_since(started).as_secs_f64().max(1e-9);
    Ok(FanoutResult {
        viewers,
        events: timed_accepted,
        events_per_s: timed_accepted as f64 / write_secs,
        deliveries,
        deliveries_per_s: deliveries as f64 / delivery_secs,
        latency: latencies.summary(),
        viewers_lost: lost,
        undelivered,
        server_cpu_cores,
        bench_cpu_cores,
        secs: write_secs,
    })
}

/// One viewer: counts and times every worker event it receives.
async fn follow(
    index: usize,
    mut viewer: Viewer,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> ViewerOutcome {
    let mut outcome = ViewerOutcome::default();
    let counter = &shared.received[index];
    loop {
        let frame = tokio::select! {
            frame = viewer.next_frame() => frame,
            _ = stop.cancelled() => break,
        };
        let Ok(Some(frame)) = frame else {
            outcome.lost = true;
            counter.store(u64::MAX, Ordering::Release);
            shared.progress.notify_one();
            break;
        };
        let Some(sent) = stamp(&frame, OUTBOUND_MARK) else {
            continue;
        };
        let now = now_ns();
        let received = counter.fetch_add(1, Ordering::AcqRel) + 1;
        if sent >= shared.start_ns.load(Ordering::Acquire) {
            outcome.latencies.record(now.saturating_sub(sent));
            outcome.timed += 1;
            outcome.last_ns = now;
        }
        if shared.writer_waiting.load(Ordering::SeqCst) {
            shared.progress.notify_one();
        }
        if received >= shared.total.load(Ordering::Acquire) {
            break;
        }
    }
    outcome
}
