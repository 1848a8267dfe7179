//! `switchboard-bench`: measures a Switchboard server's latency, throughput and capacity
//! over real loopback sockets, next to a bare WebSocket relay measured the same way.
//!
//! Scenarios (see `scenario/`): hop latency one message at a time, fan-out from one
//! worker to K viewers, S concurrent sessions at one event per second (alternating, or
//! one each way), dispatch from session creation to the waiting long-poll's answer, and
//! the knee: the highest offered event rate held, for Switchboard and the relay.
//! Simulated workers speak v1 (session-ingress WebSocket + POST) and v2 (SSE + POST),
//! through a shared POST pool or a keep-alive connection each; viewers use the subscribe
//! WebSocket and send prompts on it or by POST.
//!
//! By default every scenario gets a fresh server in a child process: the bench runs its
//! own binary again with a hidden subcommand that serves the real
//! `switchboard_server::Server` on a new SQLite file (the default storage, on disk), so
//! the server's resident memory and CPU time can be read from `/proc/<pid>`. `--url`
//! drives a server that is already running instead. The bare relay always runs as a
//! child. Numbers are meaningful from release builds only:
//!
//! ```sh
//! cargo run --release -p switchboard-bench -- --json bench.json
//! ```

mod baseline;
mod child;
mod client;
mod message;
mod pg;
mod post;
mod report;
mod scenario;
mod serve;
mod stats;
mod system;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::child::{raise_nofile, ChildServer, Role};
use crate::message::Payloads;
use crate::report::{ratio, FanoutRow, HopReport, KneeReport, Machine, Report, SessionsRow};
use crate::scenario::fanout::FanoutConfig;
use crate::scenario::knee::KneeConfig;
use crate::scenario::sessions::{Pattern, SessionsConfig};
use crate::scenario::Scenario;
use crate::system::{BaselineWrites, Prompts, System, Transport, WorkerConnections, Writes};

/// Benchmark of a Switchboard server: hop latency, fan-out, many sessions, dispatch and
/// the knee (highest event rate held), each also run through a bare relay for comparison.
#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    version,
    after_help = "Examples (release builds only give meaningful numbers):\n  \
      # the issue's load: 2,000 sessions, a prompt and an assistant message each way every\n  \
      # second, a POST connection per worker, prompts by POST, the relay on the same POSTs\n  \
      switchboard-bench --scenarios sessions --sessions 2000 --sessions-pattern each-way \\\n    \
      --worker-connections own --prompts post --baseline-writes posts --payload-bytes 128\n  \
      # the knee of both systems\n  \
      switchboard-bench --scenarios knee --worker-connections own --prompts post \\\n    \
      --baseline-writes posts --payload-bytes 128"
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    bench: BenchArgs,
}

/// The child processes the bench starts (not for people).
#[derive(Debug, Subcommand)]
enum Internal {
    /// Serve Switchboard on a fresh SQLite file in DIR; print where on stdout.
    #[command(hide = true)]
    ServeSwitchboard {
        /// Directory for the database.
        #[arg(long)]
        dir: PathBuf,
        /// A PostgreSQL database to use instead.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Serve the bare relay; print where on stdout.
    #[command(hide = true)]
    ServeBaseline,
}

/// What to run, and how big.
#[derive(Debug, Clone, Args, Serialize)]
struct BenchArgs {
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_SCENARIOS",
        value_enum,
        value_delimiter = ',',
        default_value = "hop,fanout,sessions,dispatch"
    )]
    scenarios: Vec<Scenario>,
    /// Drive the Switchboard server at this URL instead of starting one (loopback only).
    #[arg(long, env = "SWITCHBOARD_BENCH_URL", requires = "token")]
    url: Option<String>,
    /// API key for the server at --url.
    #[arg(long, env = "SWITCHBOARD_BENCH_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    token: Option<String>,
    /// With --url: the server's process id, so its memory and CPU can be read from /proc.
    #[arg(long, env = "SWITCHBOARD_BENCH_SERVER_PID")]
    server_pid: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long, env = "SWITCHBOARD_BENCH_JSON", value_name = "PATH")]
    json: Option<PathBuf>,
    /// Where started servers keep their SQLite files [default: the system's temp dir].
    #[arg(long, env = "SWITCHBOARD_BENCH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Store every started Switchboard's data on this PostgreSQL server (loopback only),
    /// in a fresh database per system, instead of a SQLite file: e.g.
    /// `postgres://postgres@127.0.0.1:5432/test`.
    #[arg(long, env = "SWITCHBOARD_BENCH_DATABASE_URL", hide_env_values = true)]
    #[serde(skip)]
    database_url: Option<String>,
    /// Nodes per started Switchboard, all on one `--database-url` database: session i's
    /// worker connects to node i mod N and its viewers to the next node, so with 2 every
    /// message crosses between nodes; work polls go to the last node. Memory and CPU are
    /// summed over the nodes (PostgreSQL's own are not in them).
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_NODES",
        default_value_t = 1,
        requires = "database_url"
    )]
    nodes: usize,
    /// Skip the bare relay (no ratios).
    #[arg(long, env = "SWITCHBOARD_BENCH_NO_BASELINE")]
    no_baseline: bool,
    /// Most pooled POSTs in flight at once: every worker's with `--worker-connections
    /// shared`, and the viewers' prompts with `--prompts post` (each needs a connection,
    /// and 10,000 sessions leave few descriptors to spare).
    #[arg(long, env = "SWITCHBOARD_BENCH_POST_CONNECTIONS", default_value_t = 64)]
    post_connections: usize,
    /// How simulated workers POST: `shared` (one pool of `--post-connections`) or `own`
    /// (a keep-alive connection each, as a real worker has: one more socket per session
    /// in each process, so S is capped to what the open-file limit allows, and the bench
    /// says so). Every scenario but fan-out.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_WORKER_CONNECTIONS",
        value_enum,
        default_value = "shared"
    )]
    worker_connections: WorkerConnections,
    /// How viewers send prompts: `frame` (on the subscribe WebSocket) or `post`
    /// (`POST /v1/sessions/{id}/events` with the API key, through the shared pool).
    /// Hop, sessions and knee.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_PROMPTS",
        value_enum,
        default_value = "frame"
    )]
    prompts: Prompts,
    /// How the bare relay takes writes: `frames` (worker and viewer frames on their
    /// sockets) or `posts` (the same HTTP POSTs as Switchboard's, worker to the
    /// session-ingress events path, prompts as `--prompts` says), so ratios compare the
    /// same protocol path.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_BASELINE_WRITES",
        value_enum,
        default_value = "frames"
    )]
    baseline_writes: BaselineWrites,
    /// Bytes of text in every message (the message around it adds about 160 bytes; 128
    /// gives the issue's messages of a little over 128 bytes of text).
    #[arg(long, env = "SWITCHBOARD_BENCH_PAYLOAD_BYTES", default_value_t = 1024)]
    payload_bytes: usize,
    /// Hop: timed round trips per system.
    #[arg(long, env = "SWITCHBOARD_BENCH_HOP_SAMPLES", default_value_t = 10_000)]
    hop_samples: usize,
    /// Hop: at most this many seconds per system.
    #[arg(long, env = "SWITCHBOARD_BENCH_HOP_MAX_SECS", default_value_t = 60.0)]
    hop_max_secs: f64,
    /// Fan-out: the viewer counts K, comma-separated.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_FANOUT_VIEWERS",
        value_delimiter = ',',
        default_value = "1,10,100"
    )]
    fanout_viewers: Vec<usize>,
    /// Fan-out: seconds of timed writing per K and system.
    #[arg(long, env = "SWITCHBOARD_BENCH_FANOUT_SECS", default_value_t = 5.0)]
    fanout_secs: f64,
    /// Fan-out: most events the writer may be ahead of the slowest viewer (the server
    /// cuts off a viewer 512 events behind; a POST adds up to 100 at once).
    #[arg(long, env = "SWITCHBOARD_BENCH_FANOUT_WINDOW", default_value_t = 256)]
    fanout_window: u64,
    /// Fan-out: POSTs in flight at once. Claude Code's uploaders keep one in flight.
    #[arg(long, env = "SWITCHBOARD_BENCH_FANOUT_INFLIGHT", default_value_t = 1)]
    fanout_inflight: usize,
    /// Fan-out: most events per POST. A worker batches what queued while its previous
    /// POST was in flight: at most 500 events (v1) or 100 (v2) per request.
    #[arg(long, env = "SWITCHBOARD_BENCH_FANOUT_BATCH", default_value_t = 100)]
    fanout_batch: usize,
    /// Sessions: the session counts S, comma-separated.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_SESSIONS",
        value_delimiter = ',',
        default_value = "100,1000,10000"
    )]
    sessions: Vec<usize>,
    /// Sessions: seconds of timed exchange per S and system.
    #[arg(long, env = "SWITCHBOARD_BENCH_SESSIONS_SECS", default_value_t = 20.0)]
    sessions_secs: f64,
    /// Sessions: periods per session per second; each period sends one event
    /// (`alternate`) or one each way (`each-way`).
    #[arg(long, env = "SWITCHBOARD_BENCH_SESSIONS_RATE", default_value_t = 1.0)]
    sessions_rate: f64,
    /// Sessions: `alternate` (a prompt one period, an assistant message the next) or
    /// `each-way` (a prompt and an assistant message every period, on two clocks).
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_SESSIONS_PATTERN",
        value_enum,
        default_value = "alternate"
    )]
    sessions_pattern: Pattern,
    /// Sessions: sessions set up at once while ramping up.
    #[arg(long, env = "SWITCHBOARD_BENCH_SESSIONS_RAMP", default_value_t = 32)]
    sessions_ramp: usize,
    /// Sessions: the workers' transport.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_SESSIONS_TRANSPORT",
        value_enum,
        default_value = "v1"
    )]
    sessions_transport: Transport,
    /// Knee: sessions, fixed while the per-session rate rises (each way).
    #[arg(long, env = "SWITCHBOARD_BENCH_KNEE_SESSIONS", default_value_t = 1000)]
    knee_sessions: usize,
    /// Knee: offered events per second, all sessions and both ways, one step each, in
    /// rising order; the first step that does not hold ends the search.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_KNEE_RATES",
        value_delimiter = ',',
        default_value = "1000,2000,3000,4000,6000,8000,10000,12500,15000,20000,25000,30000,40000"
    )]
    knee_rates: Vec<f64>,
    /// Knee: seconds of timed exchange per step (after `--knee-warmup-secs`).
    #[arg(long, env = "SWITCHBOARD_BENCH_KNEE_STEP_SECS", default_value_t = 10.0)]
    knee_step_secs: f64,
    /// Knee: untimed seconds at each step's rate before its window.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_KNEE_WARMUP_SECS",
        default_value_t = 2.0
    )]
    knee_warmup_secs: f64,
    /// Knee: at most this many seconds per system, setup included.
    #[arg(long, env = "SWITCHBOARD_BENCH_KNEE_MAX_SECS", default_value_t = 300.0)]
    knee_max_secs: f64,
    /// Knee: a step holds while p99 latency (and p99 send lag) stay at or below this.
    #[arg(long, env = "SWITCHBOARD_BENCH_KNEE_P99_MS", default_value_t = 100.0)]
    knee_p99_ms: f64,
    /// Dispatch: timed samples.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_DISPATCH_SAMPLES",
        default_value_t = 1000
    )]
    dispatch_samples: usize,
}

/// Descriptors each process keeps beyond the sessions' sockets and the pooled POST
/// connections: the listener, the database files, setup requests, stdio.
const NOFILE_RESERVE: u64 = 128;

/// How many of `requested` sessions fit: every socket needs a descriptor in the bench
/// and in the server (`nofile` is the smaller of their limits) and, since every client
/// socket goes from 127.0.0.1 to the one server port, a local port of the ephemeral
/// range (`ports` wide). Returns the count and, when it is below `requested`, why.
fn fit_sessions(
    requested: usize,
    sockets_per_session: u64,
    nofile: u64,
    pooled: u64,
    ports: Option<u64>,
) -> (usize, Option<String>) {
    let spare = NOFILE_RESERVE + pooled;
    let by_files = nofile.saturating_sub(spare) / sockets_per_session;
    let by_ports = ports.map_or(u64::MAX, |p| p.saturating_sub(spare) / sockets_per_session);
    let fits = usize::try_from(by_files.min(by_ports)).unwrap_or(usize::MAX);
    if fits >= requested {
        return (requested, None);
    }
    let why = if by_files <= by_ports {
        format!(
            "open-file limit {nofile} (RLIMIT_NOFILE, raised to the hard limit):              {sockets_per_session} sockets per session in each process plus {spare} spare              fit {fits} sessions"
        )
    } else {
        format!(
            "{} local ports (net.ipv4.ip_local_port_range) to the one server port:              {sockets_per_session} sockets per session plus {spare} spare fit {fits} sessions",
            ports.unwrap_or(0)
        )
    };
    (fits, Some(why))
}

/// The size of the ephemeral port range, if the kernel says.
fn local_ports() -> Option<u64> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = range.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(low)), Some(Ok(high))) = (parts.next(), parts.next()) else {
        return None;
    };
    Some(high.saturating_sub(low) + 1)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.internal {
        Some(Internal::ServeSwitchboard { dir, database_url }) => {
            serve::switchboard(&dir, database_url.as_deref())
        }
        Some(Internal::ServeBaseline) => serve::baseline(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("failed to start the runtime")
            .and_then(|rt| rt.block_on(run(cli.bench))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A server under test, started for one scenario or already running.
struct Running {
    post_connections: usize,
    writes: Writes,
    /// Its nodes' URLs (one unless `--nodes`).
    urls: Vec<String>,
    token: Option<String>,
    /// The nodes' process ids, where known.
    pids: Option<Vec<u32>>,
    nofile: Option<u64>,
    children: Vec<ChildServer>,
    /// The database made for it, with `--database-url`.
    database: Option<pg::PgDatabase>,
}

impl Running {
    async fn start(
        role: Role,
        args: &BenchArgs,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        if let (Role::Switchboard, Some(url)) = (role, &args.url) {
            return Ok(Self {
                post_connections: args.post_connections,
                writes: writes(args),
                urls: vec![url.clone()],
                token: args.token.clone(),
                pids: args.server_pid.map(|pid| vec![pid]),
                nofile: None,
                children: Vec::new(),
                database: None,
            });
        }
        let (database, nodes) = match (role, &args.database_url) {
            (Role::Switchboard, Some(admin)) => (
                Some(pg::PgDatabase::create(admin).await?),
                args.nodes.max(1),
            ),
            _ => (None, 1),
        };
        let url = database.as_ref().map(|d| d.url.as_str());
        let mut children = Vec::with_capacity(nodes);
        for _ in 0..nodes {
            match ChildServer::spawn(role, data_dir, url).await {
                Ok(child) => children.push(child),
                Err(e) => {
                    for child in children {
                        let _ = child.stop().await;
                    }
                    if let Some(db) = database {
                        let _ = db.drop_database().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self {
            post_connections: args.post_connections,
            writes: writes(args),
            urls: children.iter().map(|c| c.ready.url.clone()).collect(),
            // Every node made a key in the one database; any of them is good on all.
            token: children.first().and_then(|c| c.ready.token.clone()),
            pids: Some(children.iter().map(|c| c.pid).collect()),
            nofile: children.iter().map(|c| c.ready.nofile).min(),
            children,
            database,
        })
    }

    /// The nodes' process ids, for their memory and CPU.
    fn pids(&self) -> Option<&[u32]> {
        self.pids.as_deref()
    }

    fn system(&self, client: &reqwest::Client, transport: Transport) -> anyhow::Result<System> {
        Ok(match &self.token {
            Some(token) => System::switchboard(
                &self.urls,
                token,
                client.clone(),
                transport,
                self.post_connections,
                self.writes,
            ),
            None => System::baseline(
                &self.urls[0],
                client.clone(),
                self.post_connections,
                self.writes,
            ),
        })
    }

    /// How many of `requested` sessions fit this server and the bench, and why not all.
    fn fit(&self, requested: usize, own_nofile: u64) -> (usize, Option<String>) {
        let sockets = System::sockets_per_session(self.writes, self.token.is_none());
        let nofile = self.nofile.unwrap_or(own_nofile).min(own_nofile);
        fit_sessions(
            requested,
            sockets,
            nofile,
            self.post_connections as u64,
            local_ports(),
        )
    }

    async fn stop(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for child in self.children {
            if let Err(e) = child.stop().await {
                result = Err(e);
            }
        }
        if let Some(db) = self.database {
            db.drop_database().await?;
        }
        result
    }
}

fn writes(args: &BenchArgs) -> Writes {
    Writes {
        workers: args.worker_connections,
        prompts: args.prompts,
        baseline: args.baseline_writes,
    }
}

/// Starts a server, runs `scenario` against it, and stops it again.
async fn with_server<T, F, Fut>(
    role: Role,
    args: &BenchArgs,
    data_dir: &std::path::Path,
    scenario: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Running) -> Fut,
    Fut: std::future::Future<Output = (Running, anyhow::Result<T>)>,
{
    let running = Running::start(role, args, data_dir).await?;
    let (running, result) = scenario(running).await;
    let stopped = running.stop().await;
    let value = result?;
    stopped?;
    Ok(value)
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.url {
        client::check_loopback(url)?;
    }
    if let Some(url) = &args.database_url {
        client::check_loopback(url)?;
        progress(&format!(
            "store: PostgreSQL, a fresh database per system, {} node(s) each",
            args.nodes.max(1)
        ));
    }
    let own_nofile = raise_nofile();
    progress(&format!(
        "open-file limit {own_nofile} (RLIMIT_NOFILE, soft raised to hard); {} sockets per \
         session with --worker-connections {:?}",
        System::sockets_per_session(writes(&args), false),
        args.worker_connections
    ));
    let data_dir = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let client = client::http_client()?;
    let payloads = Payloads::new(args.payload_bytes);
    let mut report = Report {
        command: command_line(),
        started_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: Machine::detect(own_nofile, &data_dir),
        settings: serde_json::to_value(&args)?,
        ..Default::default()
    };
    let baseline = !args.no_baseline;

    if args.scenarios.contains(&Scenario::Hop) {
        let samples = args.hop_samples;
        let max = Duration::from_secs_f64(args.hop_max_secs);
        let mut hop = HopReport::default();
        for transport in [Transport::V1, Transport::V2] {
            progress(&format!("hop latency, switchboard {transport:?}"));
            let result = with_server(Role::Switchboard, &args, &data_dir, |r| async {
                let result = match r.system(&client, transport) {
                    Ok(system) => scenario::hop::run(&system, &payloads, samples, max).await,
                    Err(e) => Err(e),
                };
                (r, result)
            })
            .await;
            match (transport, result) {
                (Transport::V1, Ok(r)) => hop.switchboard_v1 = Some(r),
                (Transport::V2, Ok(r)) => hop.switchboard_v2 = Some(r),
                (_, Err(e)) => failed(&mut report, &format!("hop {transport:?}"), e),
            }
        }
        if baseline {
            progress("hop latency, baseline");
            match with_server(Role::Baseline, &args, &data_dir, |r| async {
                let result = match r.system(&client, Transport::V1) {
                    Ok(system) => scenario::hop::run(&system, &payloads, samples, max).await,
                    Err(e) => Err(e),
                };
                (r, result)
            })
            .await
            {
                Ok(r) => hop.baseline = Some(r),
                Err(e) => failed(&mut report, "hop baseline", e),
            }
        }
        report.hop = Some(hop);
    }

    if args.scenarios.contains(&Scenario::Fanout) {
        let config = FanoutConfig {
            duration: Duration::from_secs_f64(args.fanout_secs),
            warmup: Duration::from_secs_f64((args.fanout_secs / 4.0).min(1.0)),
            window: args.fanout_window,
            inflight: args.fanout_inflight,
            batch: args.fanout_batch,
        };
        for &viewers in &args.fanout_viewers {
            let mut results = [None, None];
            for (i, role) in [Role::Switchboard, Role::Baseline].into_iter().enumerate() {
                if role == Role::Baseline && !baseline {
                    continue;
                }
                progress(&format!(
                    "fan-out to {viewers} viewers, {}",
                    role_name(role)
                ));
                let result = with_server(role, &args, &data_dir, |r| async {
                    let result = match r.system(&client, Transport::V1) {
                        Ok(system) => {
                            scenario::fanout::run(&system, &payloads, viewers, config, r.pids())
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    (r, result)
                })
                .await;
                match result {
                    Ok(r) => results[i] = Some(r),
                    Err(e) => failed(
                        &mut report,
                        &format!("fan-out K={viewers} {}", role_name(role)),
                        e,
                    ),
                }
            }
            let [switchboard, base] = results;
            report.fanout.push(FanoutRow {
                viewers,
                ratio_deliveries_per_s: ratio(
                    switchboard.as_ref().map(|s| s.deliveries_per_s),
                    base.as_ref().map(|b| b.deliveries_per_s),
                ),
                ratio_p99: ratio(
                    switchboard.as_ref().map(|s| s.latency.p99_us),
                    base.as_ref().map(|b| b.latency.p99_us),
                ),
                switchboard,
                baseline: base,
            });
        }
    }

    if args.scenarios.contains(&Scenario::Sessions) {
        let period = 1.0 / args.sessions_rate.max(0.001);
        let config = SessionsConfig {
            duration: Duration::from_secs_f64(args.sessions_secs),
            warmup: Duration::from_secs_f64((2.0 * period).min(5.0)),
            rate: args.sessions_rate,
            ramp_concurrency: args.sessions_ramp,
            pattern: args.sessions_pattern,
        };
        for &requested in &args.sessions {
            let mut results = [None, None];
            let mut fitted = requested;
            let mut limited_by = None;
            for (i, role) in [Role::Switchboard, Role::Baseline].into_iter().enumerate() {
                if role == Role::Baseline && !baseline {
                    continue;
                }
                progress(&format!("{requested} sessions, {}", role_name(role)));
                let transport = args.sessions_transport;
                let result = with_server(role, &args, &data_dir, |r| async {
                    // Every session's sockets must fit the open-file limits and the
                    // local ports; the same S runs on both systems.
                    let (fits, why) = r.fit(fitted, own_nofile);
                    if let Some(why) = why {
                        progress(&format!("S={requested} capped at {fits} sessions: {why}"));
                        limited_by = Some(why);
                        fitted = fits;
                    }
                    let result = match r.system(&client, transport) {
                        Ok(system) => {
                            scenario::sessions::run(&system, &payloads, fitted, config, r.pids())
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    (r, result)
                })
                .await;
                match result {
                    Ok(mut r) => {
                        r.requested = requested;
                        results[i] = Some(r);
                    }
                    Err(e) => failed(
                        &mut report,
                        &format!("sessions S={requested} {}", role_name(role)),
                        e,
                    ),
                }
            }
            let [switchboard, base] = results;
            let s = switchboard.as_ref();
            let b = base.as_ref();
            report.sessions.push(SessionsRow {
                requested,
                run: fitted,
                limited_by,
                ratio_p99: ratio(s.map(|s| s.latency.p99_us), b.map(|b| b.latency.p99_us)),
                ratio_memory_per_session: ratio(
                    s.and_then(|s| s.memory_per_session_kib),
                    b.and_then(|b| b.memory_per_session_kib),
                ),
                ratio_cpu: ratio(
                    s.and_then(|s| s.server_cpu_cores),
                    b.and_then(|b| b.server_cpu_cores),
                ),
                switchboard,
                baseline: base,
            });
        }
    }

    if args.scenarios.contains(&Scenario::Knee) {
        let config = KneeConfig {
            sessions: args.knee_sessions,
            rates: args.knee_rates.clone(),
            step: Duration::from_secs_f64(args.knee_step_secs),
            warmup: Duration::from_secs_f64(args.knee_warmup_secs),
            max: Duration::from_secs_f64(args.knee_max_secs),
            p99_limit_us: args.knee_p99_ms * 1000.0,
            ramp_concurrency: args.sessions_ramp,
        };
        let mut knee = KneeReport {
            sessions_requested: args.knee_sessions,
            ..Default::default()
        };
        for role in [Role::Switchboard, Role::Baseline] {
            if role == Role::Baseline && !baseline {
                continue;
            }
            progress(&format!(
                "knee, {} ({} sessions, each way)",
                role_name(role),
                args.knee_sessions
            ));
            let mut config = config.clone();
            let result = with_server(role, &args, &data_dir, |r| async {
                let (fits, why) = r.fit(config.sessions, own_nofile);
                if let Some(why) = why {
                    progress(&format!("knee capped at {fits} sessions: {why}"));
                    knee.limited_by = Some(why);
                    config.sessions = fits;
                }
                let result = match r.system(&client, Transport::V1) {
                    Ok(system) => {
                        scenario::knee::run(&system, &payloads, &config, r.pids(), progress).await
                    }
                    Err(e) => Err(e),
                };
                (r, result)
            })
            .await;
            match (role, result) {
                (Role::Switchboard, Ok(k)) => knee.switchboard = Some(k),
                (Role::Baseline, Ok(k)) => knee.baseline = Some(k),
                (_, Err(e)) => failed(&mut report, &format!("knee {}", role_name(role)), e),
            }
        }
        knee.ratio = ratio(
            knee.switchboard.as_ref().and_then(|k| k.knee_per_s),
            knee.baseline.as_ref().and_then(|k| k.knee_per_s),
        );
        report.knee = Some(knee);
    }

    if args.scenarios.contains(&Scenario::Dispatch) {
        progress("dispatch");
        let samples = args.dispatch_samples;
        let result = with_server(Role::Switchboard, &args, &data_dir, |r| async {
            let result = match r.system(&client, Transport::V1) {
                Ok(system) => match system.as_switchboard() {
                    Some(sb) => {
                        scenario::dispatch::run(sb, samples, Duration::from_secs(120)).await
                    }
                    None => Err(anyhow::anyhow!("dispatch needs a Switchboard server")),
                },
                Err(e) => Err(e),
            };
            (r, result)
        })
        .await;
        match result {
            Ok(d) => report.dispatch = Some(d),
            Err(e) => failed(&mut report, "dispatch", e),
        }
    }

    report.check_targets();
    if args.database_url.is_some() {
        println!(
            "\nStore: PostgreSQL (a fresh database per system), {} node(s) per Switchboard; \
             server memory and CPU are the nodes' sum, without PostgreSQL's own.",
            args.nodes.max(1)
        );
    }
    println!(
        "\nSwitchboard benchmark: {} × {}, {} MiB, Linux {}, load average {}; \
         SQLite in {}; {} B of text per message; worker POSTs {:?}, prompts {:?}, \
         baseline writes {:?}\n",
        report.machine.nproc,
        report.machine.cpu_model,
        report.machine.mem_total_kib / 1024,
        report.machine.kernel,
        report.machine.loadavg_at_start,
        report.machine.data_dir,
        args.payload_bytes,
        args.worker_connections,
        args.prompts,
        args.baseline_writes,
    );
    println!("{}", report.table());
    for row in &report.sessions {
        if let Some(why) = &row.limited_by {
            println!("S={} ran {} sessions: {why}", row.requested, row.run);
        }
    }
    if let Some(knee) = &report.knee {
        if let Some(why) = &knee.limited_by {
            println!(
                "knee ran fewer than {} sessions: {why}",
                knee.sessions_requested
            );
        }
        for (name, k) in [
            ("switchboard", &knee.switchboard),
            ("baseline", &knee.baseline),
        ] {
            if let Some(k) = k {
                println!("knee {name}: search ended by {}", k.ended_by);
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} scenario(s) failed: {}",
        report.errors.len(),
        report.errors.join("; ")
    );
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Switchboard => "switchboard",
        Role::Baseline => "baseline",
    }
}

fn progress(what: &str) {
    eprintln!("switchboard-bench: {what}");
}

fn failed(report: &mut Report, what: &str, e: anyhow::Error) {
    eprintln!("switchboard-bench: {what} failed: {e:#}");
    report.errors.push(format!("{what}: {e:#}"));
}

/// The command line as run, with the token's value replaced.
fn command_line() -> String {
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in std::env::args() {
        if hide_next {
            out.push("…".to_string());
            hide_next = false;
        } else if arg == "--token" {
            out.push(arg);
            hide_next = true;
        } else if arg.starts_with("--token=") {
            out.push("--token=…".to_string());
        } else {
            out.push(arg);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn sessions_are_capped_by_the_open_file_limit_and_say_why() {
        // 20,000 descriptors, 3 sockets per session, 64 pooled + 128 spare.
        let (fits, why) = fit_sessions(10_000, 3, 20_000, 64, Some(28_232));
        assert_eq!(fits, (20_000 - 192) / 3);
        assert!(why.expect("a reason").contains("open-file limit 20000"));
        assert_eq!(
            fit_sessions(5_000, 3, 20_000, 64, Some(28_232)),
            (5_000, None)
        );
        // A narrow port range binds first.
        let (fits, why) = fit_sessions(10_000, 3, 1_000_000, 64, Some(10_192));
        assert_eq!(fits, 10_000 / 3);
        assert!(why.expect("a reason").contains("local ports"));
    }

    #[test]
    fn the_busy_regime_parses() {
        let cli = Cli::try_parse_from([
            "switchboard-bench",
            "--scenarios",
            "sessions,knee",
            "--sessions-pattern",
            "each-way",
            "--worker-connections",
            "own",
            "--prompts",
            "post",
            "--baseline-writes",
            "posts",
            "--knee-rates",
            "1000,2000",
        ])
        .unwrap();
        assert_eq!(cli.bench.sessions_pattern, Pattern::EachWay);
        assert_eq!(cli.bench.worker_connections, WorkerConnections::Own);
        assert_eq!(cli.bench.prompts, Prompts::Post);
        assert_eq!(cli.bench.baseline_writes, BaselineWrites::Posts);
        assert_eq!(cli.bench.knee_rates, vec![1000.0, 2000.0]);
    }

    #[test]
    fn defaults_run_every_scenario() {
        let cli = Cli::try_parse_from(["switchboard-bench"]).unwrap();
        assert_eq!(cli.bench.scenarios.len(), 4);
        assert_eq!(cli.bench.fanout_viewers, vec![1, 10, 100]);
        assert!(cli.internal.is_none());
    }
}
