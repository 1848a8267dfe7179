//! The results of a run: the JSON document, the targets of the issue checked against
//! them, and the table printed at the end (Markdown, so it can be pasted into
//! `docs/BENCHMARKS.md` as it is).

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::dispatch::DispatchResult;
use crate::scenario::fanout::FanoutResult;
use crate::scenario::hop::HopResult;
use crate::scenario::knee::KneeResult;
use crate::scenario::sessions::Pattern;
use crate::scenario::sessions::SessionsResult;

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    /// The command line, token redacted.
    pub(crate) command: String,
    /// Seconds since the Unix epoch when the run started.
    pub(crate) started_at_unix: u64,
    /// What the run ran on.
    pub(crate) machine: Machine,
    /// The settings, as parsed.
    pub(crate) settings: serde_json::Value,
    /// Hop latency.
    pub(crate) hop: Option<HopReport>,
    /// Fan-out, one row per K.
    pub(crate) fanout: Vec<FanoutRow>,
    /// Many sessions, one row per S.
    pub(crate) sessions: Vec<SessionsRow>,
    /// The knee: highest offered event rate held.
    pub(crate) knee: Option<KneeReport>,
    /// Dispatch.
    pub(crate) dispatch: Option<DispatchResult>,
    /// The targets, checked.
    pub(crate) targets: Vec<TargetCheck>,
    /// Scenarios that failed, with why.
    pub(crate) errors: Vec<String>,
}

/// Facts about the machine.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Machine {
    /// Cores available to the process.
    pub(crate) nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub(crate) cpu_model: String,
    /// `MemTotal` from `/proc/meminfo`, KiB.
    pub(crate) mem_total_kib: u64,
    /// The kernel release.
    pub(crate) kernel: String,
    /// The bench's open-file limit after raising it.
    pub(crate) nofile: u64,
    /// Where started servers kept their SQLite files.
    pub(crate) data_dir: String,
    /// `/proc/loadavg` when the run started: other work on the machine skews every
    /// figure (the ratios to the relay, measured in the same run, less so).
    pub(crate) loadavg_at_start: String,
}

impl Machine {
    /// Reads the facts from `/proc`.
    pub(crate) fn detect(nofile: u64, data_dir: &std::path::Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default(),
            mem_total_kib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            nofile,
            data_dir: data_dir.display().to_string(),
            loadavg_at_start: read("/proc/loadavg").trim().to_string(),
        }
    }
}

/// Hop latency through every system.
#[derive(Debug, Default, Serialize)]
pub(crate) struct HopReport {
    /// Switchboard, v1 worker.
    pub(crate) switchboard_v1: Option<HopResult>,
    /// Switchboard, v2 worker.
    pub(crate) switchboard_v2: Option<HopResult>,
    /// The bare relay.
    pub(crate) baseline: Option<HopResult>,
}

/// Fan-out to K viewers.
#[derive(Debug, Serialize)]
pub(crate) struct FanoutRow {
    /// K.
    pub(crate) viewers: usize,
    /// Switchboard (v1 worker).
    pub(crate) switchboard: Option<FanoutResult>,
    /// The bare relay.
    pub(crate) baseline: Option<FanoutResult>,
    /// Switchboard's deliveries per second ÷ the relay's.
    pub(crate) ratio_deliveries_per_s: Option<f64>,
    /// Switchboard's p99 delivery latency ÷ the relay's.
    pub(crate) ratio_p99: Option<f64>,
}

/// S sessions.
#[derive(Debug, Serialize)]
pub(crate) struct SessionsRow {
    /// S asked for.
    pub(crate) requested: usize,
    /// S run, after fitting into the open-file limits.
    pub(crate) run: usize,
    /// Why `run` is below `requested`, if it is.
    pub(crate) limited_by: Option<String>,
    /// Switchboard.
    pub(crate) switchboard: Option<SessionsResult>,
    /// The bare relay.
    pub(crate) baseline: Option<SessionsResult>,
    /// p99 latency ÷ the relay's.
    pub(crate) ratio_p99: Option<f64>,
    /// Memory per session ÷ the relay's.
    pub(crate) ratio_memory_per_session: Option<f64>,
    /// CPU ÷ the relay's.
    pub(crate) ratio_cpu: Option<f64>,
}

/// The knee of both systems.
#[derive(Debug, Default, Serialize)]
pub(crate) struct KneeReport {
    /// Sessions asked for.
    pub(crate) sessions_requested: usize,
    /// Why fewer ran, if they did.
    pub(crate) limited_by: Option<String>,
    /// Switchboard.
    pub(crate) switchboard: Option<KneeResult>,
    /// The bare relay.
    pub(crate) baseline: Option<KneeResult>,
    /// Switchboard's knee ÷ the relay's.
    pub(crate) ratio: Option<f64>,
}

/// One target of the issue, checked.
#[derive(Debug, Serialize)]
pub(crate) struct TargetCheck {
    /// What is checked.
    pub(crate) target: String,
    /// The bound, in words.
    pub(crate) limit: String,
    /// The measured value, in the bound's unit.
    pub(crate) value: Option<f64>,
    /// `pass`, `miss` or `not run`.
    pub(crate) verdict: Verdict,
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// Met.
    Pass,
    /// Missed.
    Miss,
    /// The run did not measure it (e.g. K = 100 was not among the viewer counts).
    NotRun,
}

impl Verdict {
    fn of(ok: bool) -> Self {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "**miss**",
            Verdict::NotRun => "not run",
        }
    }
}

/// `a ÷ b`, when both exist and `b` is not zero.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The targets.
mod limits {
    /// Hop p99 each way, µs.
    pub(super) const HOP_P99_US: f64 = 1_000.0;
    /// Hop p99 as a multiple of the relay's.
    pub(super) const HOP_RATIO: f64 = 2.0;
    /// Fan-out deliveries per second with 100 viewers.
    pub(super) const FANOUT_DELIVERIES: f64 = 200_000.0;
    /// The viewer count the fan-out target is for.
    pub(super) const FANOUT_VIEWERS: usize = 100;
    /// Sessions held.
    pub(super) const SESSIONS: usize = 10_000;
    /// p99 with that many sessions, µs.
    pub(super) const SESSIONS_P99_US: f64 = 20_000.0;
    /// Server memory per session, KiB.
    pub(super) const SESSION_KIB: f64 = 64.0;
    /// Dispatch p99, µs.
    pub(super) const DISPATCH_P99_US: f64 = 5_000.0;
    /// The busy regime: (S, p99 bound in µs) with a prompt and an assistant message per
    /// session every second.
    pub(super) const BUSY: [(usize, f64); 2] = [(2_000, 20_000.0), (5_000, 50_000.0)];
    /// Knee, events/s.
    pub(super) const KNEE_PER_S: f64 = 15_000.0;
    /// Knee as a share of the relay's.
    pub(super) const KNEE_RATIO: f64 = 0.5;
}

impl Report {
    /// Checks every target against what was measured.
    pub(crate) fn check_targets(&mut self) {
        use limits::*;
        let mut checks = Vec::new();
        let hop = self.hop.as_ref();
        let base = hop.and_then(|h| h.baseline.as_ref());
        for (name, result) in [
            ("v1", hop.and_then(|h| h.switchboard_v1.as_ref())),
            ("v2", hop.and_then(|h| h.switchboard_v2.as_ref())),
        ] {
            for (way, pick) in [
                (
                    "viewer → worker",
                    (|r: &HopResult| r.viewer_to_worker.p99_us) as fn(&HopResult) -> f64,
                ),
                ("worker → viewer", |r: &HopResult| {
                    r.worker_to_viewer.p99_us
                }),
            ] {
                let value = result.map(pick);
                checks.push(check(
                    format!("hop {name} {way} p99"),
                    format!("≤ {HOP_P99_US} µs"),
                    value,
                    |v| v <= HOP_P99_US,
                ));
                checks.push(check(
                    format!("hop {name} {way} p99 ÷ baseline"),
                    format!("≤ {HOP_RATIO}"),
                    ratio(value, base.map(pick)),
                    |v| v <= HOP_RATIO,
                ));
            }
        }
        let fanout = self
            .fanout
            .iter()
            .find(|r| r.viewers == FANOUT_VIEWERS)
            .and_then(|r| r.switchboard.as_ref());
        checks.push(check(
            format!("fan-out deliveries/s, K = {FANOUT_VIEWERS}"),
            format!("≥ {FANOUT_DELIVERIES}"),
            fanout.map(|f| f.deliveries_per_s),
            |v| v >= FANOUT_DELIVERIES,
        ));
        let largest = self
            .sessions
            .iter()
            .filter(|r| r.requested >= SESSIONS)
            .max_by_key(|r| r.requested)
            .and_then(|r| r.switchboard.as_ref());
        checks.push(check(
            "sessions held".into(),
            format!("≥ {SESSIONS}"),
            largest.map(|s| s.sessions as f64),
            |v| v >= SESSIONS as f64,
        ));
        checks.push(check(
            format!("sessions p99 latency, S ≈ {SESSIONS}"),
            format!("≤ {SESSIONS_P99_US} µs"),
            largest.map(|s| s.latency.p99_us),
            |v| v <= SESSIONS_P99_US,
        ));
        checks.push(check(
            format!("server memory per session, S ≈ {SESSIONS}"),
            format!("≤ {SESSION_KIB} KiB"),
            largest.and_then(|s| s.memory_per_session_kib),
            |v| v <= SESSION_KIB,
        ));
        for (sessions, bound) in BUSY {
            let busy = self
                .sessions
                .iter()
                .filter(|r| r.requested == sessions)
                .filter_map(|r| r.switchboard.as_ref())
                .find(|s| s.pattern == Pattern::EachWay && (s.rate - 1.0).abs() < 1e-9);
            checks.push(check(
                format!("sessions S = {sessions} each way p99"),
                format!("≤ {bound} µs"),
                busy.map(|s| s.latency.p99_us),
                |v| v <= bound,
            ));
            checks.push(check(
                format!("sessions S = {sessions} each way events lost"),
                "= 0".into(),
                busy.map(|s| (s.events_lost + s.send_errors) as f64),
                |v| v == 0.0,
            ));
        }
        let knee = self.knee.as_ref();
        let knee_ran = knee.and_then(|k| k.switchboard.as_ref());
        checks.push(check(
            "knee".into(),
            format!("≥ {KNEE_PER_S} events/s"),
            knee_ran.map(|k| k.knee_per_s.unwrap_or(0.0)),
            |v| v >= KNEE_PER_S,
        ));
        checks.push(check(
            "knee ÷ baseline".into(),
            format!("≥ {KNEE_RATIO}"),
            knee.and_then(|k| k.ratio),
            |v| v >= KNEE_RATIO,
        ));
        checks.push(check(
            "dispatch p99".into(),
            format!("≤ {DISPATCH_P99_US} µs"),
            self.dispatch.as_ref().map(|d| d.latency.p99_us),
            |v| v <= DISPATCH_P99_US,
        ));
        self.targets = checks;
    }

    fn verdict(&self, target: &str) -> Option<Verdict> {
        self.targets
            .iter()
            .find(|t| t.target == target)
            .map(|t| t.verdict)
    }

    /// The results as a Markdown table.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<[String; 7]> = Vec::new();
        let mut row = |scenario: &str,
                       figure: &str,
                       sb: String,
                       base: String,
                       r: Option<f64>,
                       target: &str,
                       result: String| {
            rows.push([
                scenario.into(),
                figure.into(),
                sb,
                base,
                r.map_or_else(String::new, |r| format!("{r:.2}×")),
                target.into(),
                result,
            ]);
        };
        if let Some(hop) = &self.hop {
            let base = hop.baseline.as_ref();
            for (name, result) in [("v1", &hop.switchboard_v1), ("v2", &hop.switchboard_v2)] {
                let Some(result) = result else { continue };
                for (way, s, b) in [
                    (
                        "viewer → worker",
                        &result.viewer_to_worker,
                        base.map(|b| &b.viewer_to_worker),
                    ),
                    (
                        "worker → viewer",
                        &result.worker_to_viewer,
                        base.map(|b| &b.worker_to_viewer),
                    ),
                ] {
                    for (label, pick) in [
                        (
                            "p50",
                            (|s: &crate::stats::Summary| s.p50_us)
                                as fn(&crate::stats::Summary) -> f64,
                        ),
                        ("p99", |s| s.p99_us),
                        ("p99.9", |s| s.p999_us),
                    ] {
                        let (target, verdict) = if label == "p99" {
                            let a = self.verdict(&format!("hop {name} {way} p99"));
                            let b = self.verdict(&format!("hop {name} {way} p99 ÷ baseline"));
                            let v = match (a, b) {
                                (Some(Verdict::Miss), _) | (_, Some(Verdict::Miss)) => {
                                    Verdict::Miss
                                }
                                (Some(Verdict::Pass), Some(Verdict::Pass)) => Verdict::Pass,
                                (Some(Verdict::Pass), _) => Verdict::Pass,
                                _ => Verdict::NotRun,
                            };
                            ("≤ 1 ms, ≤ 2× baseline", v.word().to_string())
                        } else {
                            ("", String::new())
                        };
                        row(
                            &format!("hop {name}"),
                            &format!("{way} {label}"),
                            ms(pick(s)),
                            b.map_or_else(String::new, |b| ms(pick(b))),
                            ratio(Some(pick(s)), b.map(pick)),
                            target,
                            verdict,
                        );
                    }
                }
            }
        }
        for f in &self.fanout {
            let scenario = format!("fan-out K={}", f.viewers);
            let (s, b) = (f.switchboard.as_ref(), f.baseline.as_ref());
            let is_target = f.viewers == limits::FANOUT_VIEWERS;
            row(
                &scenario,
                "events accepted/s",
                s.map_or_else(String::new, |s| rate(s.events_per_s)),
                b.map_or_else(String::new, |b| rate(b.events_per_s)),
                ratio(s.map(|s| s.events_per_s), b.map(|b| b.events_per_s)),
                "",
                String::new(),
            );
            row(
                &scenario,
                "deliveries/s",
                s.map_or_else(String::new, |s| rate(s.deliveries_per_s)),
                b.map_or_else(String::new, |b| rate(b.deliveries_per_s)),
                f.ratio_deliveries_per_s,
                if is_target { "≥ 200,000/s" } else { "" },
                if is_target {
                    self.verdict(&format!(
                        "fan-out deliveries/s, K = {}",
                        limits::FANOUT_VIEWERS
                    ))
                    .map_or_else(String::new, |v| v.word().to_string())
                } else {
                    String::new()
                },
            );
            row(
                &scenario,
                "p99 delivery latency",
                s.map_or_else(String::new, |s| ms(s.latency.p99_us)),
                b.map_or_else(String::new, |b| ms(b.latency.p99_us)),
                f.ratio_p99,
                "",
                String::new(),
            );
            row(
                &scenario,
                "server CPU",
                s.and_then(|s| s.server_cpu_cores)
                    .map_or_else(String::new, cores),
                b.and_then(|b| b.server_cpu_cores)
                    .map_or_else(String::new, cores),
                ratio(
                    s.and_then(|s| s.server_cpu_cores),
                    b.and_then(|b| b.server_cpu_cores),
                ),
                "",
                String::new(),
            );
            row(
                &scenario,
                "bench's own CPU",
                s.map_or_else(String::new, |s| cores(s.bench_cpu_cores)),
                b.map_or_else(String::new, |b| cores(b.bench_cpu_cores)),
                None,
                "",
                String::new(),
            );
        }
        for r in &self.sessions {
            let scenario = format!("sessions S={}", r.requested);
            let (s, b) = (r.switchboard.as_ref(), r.baseline.as_ref());
            let is_target = r.requested >= limits::SESSIONS;
            let busy = limits::BUSY
                .iter()
                .find(|(n, _)| *n == r.requested)
                .map(|(n, bound)| (*n, *bound))
                .filter(|_| {
                    self.verdict(&format!("sessions S = {} each way p99", r.requested))
                        != Some(Verdict::NotRun)
                });
            let verdict = |t: &str| {
                if is_target {
                    self.verdict(t)
                        .map_or_else(String::new, |v| v.word().to_string())
                } else {
                    String::new()
                }
            };
            row(
                &scenario,
                "sessions held",
                s.map_or_else(String::new, |s| count(s.sessions as f64)),
                b.map_or_else(String::new, |b| count(b.sessions as f64)),
                None,
                if is_target { "10,000" } else { "" },
                verdict("sessions held"),
            );
            row(
                &scenario,
                "offered events/s",
                s.map_or_else(String::new, |s| rate(s.offered_per_s)),
                b.map_or_else(String::new, |b| rate(b.offered_per_s)),
                None,
                "",
                String::new(),
            );
            row(
                &scenario,
                "delivered events/s",
                s.map_or_else(String::new, |s| rate(s.delivered_per_s)),
                b.map_or_else(String::new, |b| rate(b.delivered_per_s)),
                None,
                "",
                String::new(),
            );
            row(
                &scenario,
                "events lost",
                s.map_or_else(String::new, |s| count(s.events_lost as f64)),
                b.map_or_else(String::new, |b| count(b.events_lost as f64)),
                None,
                "0",
                match busy {
                    Some((n, _)) => self
                        .verdict(&format!("sessions S = {n} each way events lost"))
                        .map_or_else(String::new, |v| v.word().to_string()),
                    None => String::new(),
                },
            );
            row(
                &scenario,
                "p50 latency (both ways)",
                s.map_or_else(String::new, |s| ms(s.latency.p50_us)),
                b.map_or_else(String::new, |b| ms(b.latency.p50_us)),
                ratio(s.map(|s| s.latency.p50_us), b.map(|b| b.latency.p50_us)),
                "",
                String::new(),
            );
            row(
                &scenario,
                "p99 latency (both ways)",
                s.map_or_else(String::new, |s| ms(s.latency.p99_us)),
                b.map_or_else(String::new, |b| ms(b.latency.p99_us)),
                r.ratio_p99,
                match busy {
                    Some((_, bound)) => format!("≤ {} ms each way/s", bound / 1000.0),
                    None if is_target => "≤ 20 ms".into(),
                    None => String::new(),
                }
                .as_str(),
                match busy {
                    Some((n, _)) => self
                        .verdict(&format!("sessions S = {n} each way p99"))
                        .map_or_else(String::new, |v| v.word().to_string()),
                    None => verdict(&format!("sessions p99 latency, S ≈ {}", limits::SESSIONS)),
                },
            );
            row(
                &scenario,
                "p99.9 latency (both ways)",
                s.map_or_else(String::new, |s| ms(s.latency.p999_us)),
                b.map_or_else(String::new, |b| ms(b.latency.p999_us)),
                ratio(s.map(|s| s.latency.p999_us), b.map(|b| b.latency.p999_us)),
                "",
                String::new(),
            );
            row(
                &scenario,
                "p99 send lag (client queueing)",
                s.map_or_else(String::new, |s| ms(s.send_lag.p99_us)),
                b.map_or_else(String::new, |b| ms(b.send_lag.p99_us)),
                None,
                "",
                String::new(),
            );
            row(
                &scenario,
                "server memory per session",
                s.and_then(|s| s.memory_per_session_kib)
                    .map_or_else(String::new, kib),
                b.and_then(|b| b.memory_per_session_kib)
                    .map_or_else(String::new, kib),
                r.ratio_memory_per_session,
                if is_target { "≤ 64 KiB" } else { "" },
                verdict(&format!(
                    "server memory per session, S ≈ {}",
                    limits::SESSIONS
                )),
            );
            row(
                &scenario,
                "server CPU",
                s.and_then(|s| s.server_cpu_cores)
                    .map_or_else(String::new, cores),
                b.and_then(|b| b.server_cpu_cores)
                    .map_or_else(String::new, cores),
                r.ratio_cpu,
                "",
                String::new(),
            );
            row(
                &scenario,
                "bench's own CPU",
                s.map_or_else(String::new, |s| cores(s.bench_cpu_cores)),
                b.map_or_else(String::new, |b| cores(b.bench_cpu_cores)),
                None,
                "",
                String::new(),
            );
            row(
                &scenario,
                "setup time",
                s.map_or_else(String::new, |s| format!("{:.1} s", s.setup_secs)),
                b.map_or_else(String::new, |b| format!("{:.1} s", b.setup_secs)),
                None,
                "",
                String::new(),
            );
        }
        if let Some(k) = &self.knee {
            let (s, b) = (k.switchboard.as_ref(), k.baseline.as_ref());
            let scenario = format!(
                "knee S={}",
                s.or(b).map_or(k.sessions_requested, |r| r.sessions)
            );
            let held = |r: &KneeResult| r.knee_per_s.map_or_else(|| "none".into(), rate);
            let verdict = match (self.verdict("knee"), self.verdict("knee ÷ baseline")) {
                (Some(Verdict::Miss), _) | (_, Some(Verdict::Miss)) => Verdict::Miss,
                (Some(Verdict::Pass), _) => Verdict::Pass,
                _ => Verdict::NotRun,
            };
            row(
                &scenario,
                "highest offered events/s held",
                s.map_or_else(String::new, held),
                b.map_or_else(String::new, held),
                k.ratio,
                "≥ 15,000/s, ≥ 0.5× baseline",
                verdict.word().to_string(),
            );
            // The figures of the last step held, and of the step that ended the search.
            let last_held = |r: &KneeResult| r.steps.iter().rev().find(|s| s.held).cloned();
            let first_failed = |r: &KneeResult| r.steps.iter().find(|s| !s.held).cloned();
            for (label, pick) in [
                (
                    "at the knee",
                    last_held as fn(&KneeResult) -> Option<crate::scenario::knee::KneeStep>,
                ),
                ("first step over", first_failed),
            ] {
                let (ss, bs) = (s.and_then(pick), b.and_then(pick));
                if ss.is_none() && bs.is_none() {
                    continue;
                }
                let both = |f: &dyn Fn(&crate::scenario::knee::KneeStep) -> String| {
                    (
                        ss.as_ref().map_or_else(String::new, f),
                        bs.as_ref().map_or_else(String::new, f),
                    )
                };
                for (figure, f) in [
                    (
                        "offered events/s",
                        &(|st: &crate::scenario::knee::KneeStep| rate(st.offered_per_s))
                            as &dyn Fn(&crate::scenario::knee::KneeStep) -> String,
                    ),
                    ("p50 / p99 / p99.9", &|st| {
                        format!(
                            "{} / {} / {}",
                            ms(st.latency.p50_us),
                            ms(st.latency.p99_us),
                            ms(st.latency.p999_us)
                        )
                    }),
                    ("delivered events/s", &|st| rate(st.delivered_per_s)),
                    ("p99 send lag", &|st| ms(st.send_lag.p99_us)),
                    ("server CPU", &|st| {
                        st.server_cpu_cores.map_or_else(String::new, cores)
                    }),
                    ("bench's own CPU", &|st| cores(st.bench_cpu_cores)),
                ] {
                    let (a, c) = both(f);
                    row(
                        &scenario,
                        &format!("{label}: {figure}"),
                        a,
                        c,
                        None,
                        "",
                        String::new(),
                    );
                }
            }
        }
        if let Some(d) = &self.dispatch {
            for (label, value) in [
                ("create → poll answer p50", d.latency.p50_us),
                ("create → poll answer p99", d.latency.p99_us),
                ("create → poll answer p99.9", d.latency.p999_us),
            ] {
                let is_target = label.ends_with("p99");
                row(
                    "dispatch",
                    label,
                    ms(value),
                    String::new(),
                    None,
                    if is_target { "≤ 5 ms" } else { "" },
                    if is_target {
                        self.verdict("dispatch p99")
                            .map_or_else(String::new, |v| v.word().to_string())
                    } else {
                        String::new()
                    },
                );
            }
        }
        markdown(
            &[
                "scenario",
                "figure",
                "switchboard",
                "baseline",
                "ratio",
                "target",
                "result",
            ],
            &rows,
        )
    }
}

fn check(
    target: String,
    limit: String,
    value: Option<f64>,
    ok: impl Fn(f64) -> bool,
) -> TargetCheck {
    TargetCheck {
        verdict: value.map_or(Verdict::NotRun, |v| Verdict::of(ok(v))),
        target,
        limit,
        value,
    }
}

fn markdown(header: &[&str], rows: &[[String; 7]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::from("|");
        for (cell, w) in cells.zip(&widths) {
            let pad = w - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    out.push('|');
    for w in &widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1_000.0)
}

fn rate(per_s: f64) -> String {
    format!("{}/s", count(per_s))
}

fn count(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn kib(v: f64) -> String {
    format!("{v:.1} KiB")
}

fn cores(v: f64) -> String {
    format!("{v:.2} cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1_000.0), "1,000");
        assert_eq!(count(215_300.4), "215,300");
        assert_eq!(count(1_234_567.0), "1,234,567");
    }

    #[test]
    fn empty_report_checks_nothing_as_passed() {
        let mut report = Report::default();
        report.check_targets();
        assert!(report.targets.iter().all(|t| t.verdict == Verdict::NotRun));
        assert!(report.table().starts_with("| scenario"));
    }
}
