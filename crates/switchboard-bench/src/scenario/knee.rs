//! The knee: the highest offered event rate a system holds. S sessions (`--knee-sessions`)
//! each send one prompt and one assistant message every period, as in the sessions
//! scenario with `--sessions-pattern each-way`; step by step the period shrinks so the
//! total offered rate takes each value of `--knee-rates` (events per second, both ways,
//! all sessions). A step holds when, over its timed window,
//!
//! - p99 latency from send to receipt, both ways, is at most `--knee-p99-ms` (100 ms),
//! - the clients did not queue: p99 send lag (how late a send left against its clock,
//!   e.g. behind its worker's previous POST) is at most the same bound,
//! - the events delivered per second reach 95 % of the offered rate,
//! - every event sent arrived (the window waits for late ones while they still come,
//!   until none came for 5 s, at most a minute) and no send failed.
//!
//! The first step that does not hold ends the scenario; the knee is the last rate held.
//!
//! Why S is fixed and the per-session rate rises, where the table raised S at
//! one event each way per second: with a POST connection of its own per worker every
//! session costs three sockets in each process, so the open-file limit (20,000 here)
//! ends that axis near 6,600 sessions, 13,200 events/s, below the rates to be measured.
//! The per-event path (POST, commit, delivery) is the same either way; what a fixed S
//! does not raise is the number of connections, which the sessions scenario measures.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::child::ProcSample;
use crate::message::Payloads;
use crate::scenario::sessions::{Fleet, Pattern};
use crate::stats::Summary;
use crate::system::System;

/// Share of the offered rate a step must deliver to hold.
const DELIVERED_SHARE: f64 = 0.95;

/// Wait after a step's window for its last events.
const GRACE: Duration = Duration::from_secs(5);

/// How the knee is searched.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KneeConfig {
    /// Sessions, fixed through the steps.
    pub(crate) sessions: usize,
    /// Offered events per second, all sessions and both ways, one step each, rising.
    pub(crate) rates: Vec<f64>,
    /// Timed part of each step.
    pub(crate) step: Duration,
    /// Untimed part at the step's rate before its window.
    pub(crate) warmup: Duration,
    /// The whole scenario per system, setup included.
    pub(crate) max: Duration,
    /// The p99 bound a step must keep, µs.
    pub(crate) p99_limit_us: f64,
    /// Sessions set up at once.
    pub(crate) ramp_concurrency: usize,
}

/// One step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KneeStep {
    /// Events per second offered, both ways, all sessions.
    pub(crate) offered_per_s: f64,
    /// Prompts (and as many assistant messages) per session per second.
    pub(crate) per_session_each_way_per_s: f64,
    /// Sends due per second in the window.
    pub(crate) scheduled_per_s: f64,
    /// Sends made per second.
    pub(crate) sent_per_s: f64,
    /// Events per second sent in the window that arrived.
    pub(crate) delivered_per_s: f64,
    /// Latency, both ways.
    pub(crate) latency: Summary,
    /// Prompts, viewer to worker.
    pub(crate) viewer_to_worker: Summary,
    /// Assistant messages, worker to viewer.
    pub(crate) worker_to_viewer: Summary,
    /// How late sends left against their clocks.
    pub(crate) send_lag: Summary,
    /// Events sent in the window that never arrived (none came for 5 s after it).
    pub(crate) events_undelivered: u64,
    /// Sends that failed.
    pub(crate) send_errors: u64,
    /// Connections that ended.
    pub(crate) connections_lost: u64,
    /// Cores the server used.
    pub(crate) server_cpu_cores: Option<f64>,
    /// Cores the bench (the load generator) used.
    pub(crate) bench_cpu_cores: f64,
    /// Server memory at the end of the window, KiB.
    pub(crate) server_rss_kib: Option<u64>,
    /// Whether the step held.
    pub(crate) held: bool,
    /// Why not, if it did not.
    pub(crate) why_not: Option<String>,
    /// Wall time of the window, seconds.
    pub(crate) secs: f64,
}

/// The knee of one system.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KneeResult {
    /// Sessions run.
    pub(crate) sessions: usize,
    /// Sessions whose setup failed.
    pub(crate) failed_setups: usize,
    /// Time to set them up, seconds.
    pub(crate) setup_secs: f64,
    /// Server memory before the first session, KiB.
    pub(crate) server_rss_idle_kib: Option<u64>,
    /// The steps run, in order.
    pub(crate) steps: Vec<KneeStep>,
    /// The highest offered rate held, events/s; `None` if the first step failed.
    pub(crate) knee_per_s: Option<f64>,
    /// What ended the search: a step that did not hold, the time bound, or the last rate.
    pub(crate) ended_by: String,
}

/// Runs the steps against one system.
pub(crate) async fn run(
    system: &System,
    payloads: &Payloads,
    config: &KneeConfig,
    server_pids: Option<&[u32]>,
    progress: impl Fn(&str),
) -> anyhow::Result<KneeResult> {
    let started = Instant::now();
    let server_rss_idle_kib = server_pids
        .map(ProcSample::read_all)
        .transpose()?
        .map(|s| s.rss_kib);
    let first = config.rates.first().copied().unwrap_or(1.0);
    let per_session = |rate: f64| rate / (2.0 * config.sessions.max(1) as f64);
    let fleet = Fleet::start(
        system,
        payloads,
        config.sessions,
        config.ramp_concurrency,
        Pattern::EachWay,
        per_session(first),
    )
    .await?;
    // Each-way rates are per session and direction; the fleet may be smaller than asked.
    let per_session = |rate: f64| rate / (2.0 * fleet.sessions as f64);
    let mut steps = Vec::new();
    let mut ended_by = "the last rate held".to_string();
    let mut knee_per_s = None;
    let result = async {
        for &rate in &config.rates {
            if started.elapsed() + config.warmup + config.step + GRACE > config.max {
                ended_by = format!("the time bound ({:.0} s)", config.max.as_secs_f64());
                break;
            }
            fleet.set_rate(per_session(rate));
            tokio::time::sleep(config.warmup).await;
            let w = fleet.measure(config.step, GRACE, server_pids).await?;
            let secs = w.secs.max(f64::EPSILON);
            let latency = w.both().summary();
            let send_lag = w.lag.summary();
            let delivered_per_s = w.received as f64 / secs;
            let undelivered = w.sent.saturating_sub(w.received);
            let mut why = Vec::new();
            if latency.p99_us > config.p99_limit_us {
                why.push(format!("p99 {:.1} ms", latency.p99_us / 1000.0));
            }
            if send_lag.p99_us > config.p99_limit_us {
                why.push(format!(
                    "sends queued (p99 lag {:.1} ms)",
                    send_lag.p99_us / 1000.0
                ));
            }
            if delivered_per_s < DELIVERED_SHARE * rate {
                why.push(format!("delivered {delivered_per_s:.0}/s of {rate:.0}/s"));
            }
            if undelivered > 0 {
                why.push(format!("{undelivered} events never arrived"));
            }
            if w.send_errors > 0 {
                why.push(format!("{} sends failed", w.send_errors));
            }
            if w.connections_lost > 0 {
                why.push(format!("{} connections lost", w.connections_lost));
            }
            let held = why.is_empty();
            let why_not = (!held).then(|| why.join(", "));
            progress(&format!(
                "  {rate:.0} events/s: p99 {:.2} ms, lag p99 {:.2} ms, delivered {delivered_per_s:.0}/s, \
                 server {} cores, bench {:.2} cores: {}",
                latency.p99_us / 1000.0,
                send_lag.p99_us / 1000.0,
                w.server_cpu_cores
                    .map_or_else(|| "?".to_string(), |c| format!("{c:.2}")),
                w.bench_cpu_cores,
                why_not.as_deref().unwrap_or("held")
            ));
            steps.push(KneeStep {
                offered_per_s: rate,
                per_session_each_way_per_s: per_session(rate),
                scheduled_per_s: w.scheduled as f64 / secs,
                sent_per_s: w.sent as f64 / secs,
                delivered_per_s,
                latency,
                viewer_to_worker: w.inbound.summary(),
                worker_to_viewer: w.outbound.summary(),
                send_lag,
                events_undelivered: undelivered,
                send_errors: w.send_errors,
                connections_lost: w.connections_lost,
                server_cpu_cores: w.server_cpu_cores,
                bench_cpu_cores: w.bench_cpu_cores,
                server_rss_kib: w.server_rss_kib,
                held,
                why_not: why_not.clone(),
                secs: w.secs,
            });
            match why_not {
                None => knee_per_s = Some(rate),
                Some(why) => {
                    ended_by = format!("{rate:.0} events/s did not hold: {why}");
                    break;
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    let (sessions, failed_setups, setup_secs) =
        (fleet.sessions, fleet.failed_setups, fleet.setup_secs);
    fleet.stop().await;
    result?;
    Ok(KneeResult {
        sessions,
        failed_setups,
        setup_secs,
        server_rss_idle_kib,
        steps,
        knee_per_s,
        ended_by,
    })
}
