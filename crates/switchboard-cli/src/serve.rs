//! `switchboard serve`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use switchboard_server::{ConnectionLimits, MetricsAccess, Server, ServerOptions, TlsFiles};

use crate::StoreArgs;

/// Flags of `switchboard serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Base URL clients reach the server at (goes into work secrets and printed links);
    /// default: http://<listen address>.
    #[arg(long, env = "SWITCHBOARD_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Seconds without a poll after which an environment is deregistered.
    #[arg(long, env = "SWITCHBOARD_ENVIRONMENT_IDLE_SECS", default_value_t = 4 * 60 * 60)]
    environment_idle_secs: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// How long a work poll waits for work before answering 204, in milliseconds
    /// (must stay below the client's 10 s timeout).
    #[arg(long, env = "SWITCHBOARD_POLL_TIMEOUT_MS", default_value_t = 8_000,
          value_parser = clap::value_parser!(u64).range(1..=9_000))]
    poll_timeout_ms: u64,
    /// When a viewer names no sequence number, send only the most recent this many
    /// events of the history (default: all of it).
    #[arg(long, env = "SWITCHBOARD_VIEWER_BACKLOG", value_name = "EVENTS")]
    viewer_backlog: Option<u32>,
    /// Who may read /metrics: `off` (404), `public` (anyone who can reach the server) or
    /// `token` (callers with an API key).
    #[arg(long, env = "SWITCHBOARD_METRICS", value_enum, default_value = "token")]
    metrics: MetricsFlag,
    /// Serve https with this PEM certificate chain (needs --tls-key). Both files are
    /// read again when they change, without a restart.
    #[arg(
        long,
        env = "SWITCHBOARD_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "SWITCHBOARD_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// A reverse proxy (address or CIDR range) whose Forwarded / X-Forwarded-* headers
    /// are believed; repeatable (env: comma-separated).
    #[arg(long = "trusted-proxy", env = "SWITCHBOARD_TRUSTED_PROXIES", value_name = "CIDR",
          value_delimiter = ',', value_parser = switchboard_server::parse_trusted_proxy)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a connection may take to send a request's headers (and its TLS handshake).
    #[arg(long, env = "SWITCHBOARD_HEADER_TIMEOUT", value_name = "SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a request body may take to arrive.
    #[arg(long, env = "SWITCHBOARD_BODY_TIMEOUT", value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// Most connections open at once (0: no cap).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 4096
    )]
    max_connections: usize,
    /// Most connections open at once from one client address (0: no cap); trusted
    /// proxies are exempt.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_CLIENT",
        value_name = "N",
        default_value_t = 256
    )]
    max_connections_per_client: usize,
    /// Seconds a shutdown waits for requests in flight before it closes their
    /// connections and exits.
    #[arg(
        long,
        env = "SWITCHBOARD_SHUTDOWN_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10
    )]
    shutdown_timeout: u64,
    /// Let notifications (webhook, ntfy, Web Push endpoints) go to loopback, private
    /// (10/8, 172.16/12, 192.168/16, fc00::/7), link-local and other non-public
    /// addresses. Off by default, so an API key cannot make the server probe its own
    /// network; turn it on for an ntfy or webhook receiver on your LAN.
    #[arg(long, env = "SWITCHBOARD_NOTIFY_ALLOW_PRIVATE",
          value_parser = clap::builder::FalseyValueParser::new())]
    notify_allow_private: bool,
}

/// Values of `--metrics`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MetricsFlag {
    Off,
    Public,
    Token,
}

impl ServeArgs {
    fn options(&self) -> anyhow::Result<ServerOptions> {
        let mut options = ServerOptions::new(self.store.database_url()?);
        options.public_url = self.public_url.clone();
        options.environment_idle_timeout = Duration::from_secs(self.environment_idle_secs);
        options.max_body_bytes = self.max_body_bytes;
        options.poll_timeout = Duration::from_millis(self.poll_timeout_ms);
        options.viewer_backlog = self.viewer_backlog;
        options.metrics = match self.metrics {
            MetricsFlag::Off => MetricsAccess::Off,
            MetricsFlag::Public => MetricsAccess::Public,
            MetricsFlag::Token => MetricsAccess::Token,
        };
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options.tls = Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        options.trusted_proxies = self.trusted_proxies.clone();
        options.notify_allow_private = self.notify_allow_private;
        let cap = |n: usize| (n > 0).then_some(n);
        let mut limits = ConnectionLimits::default();
        limits.header_read_timeout = Duration::from_secs(self.header_timeout);
        limits.body_read_timeout = Duration::from_secs(self.body_timeout);
        limits.max_connections = cap(self.max_connections);
        limits.max_connections_per_client = cap(self.max_connections_per_client);
        limits.shutdown_timeout = Duration::from_secs(self.shutdown_timeout);
        options.limits = limits;
        Ok(options)
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let database = switchboard_store::redact_url(&options.database_url);
    let server = Server::new(options).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    if let Some(warning) = plain_http_warning(
        addr,
        args.tls_cert.is_some(),
        !args.trusted_proxies.is_empty(),
    ) {
        tracing::warn!("{warning}");
    }
    // Each connection holds a file descriptor: let the connection caps, not the soft
    // limit's usual 1024, decide how many there may be.
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    if server.state().store().api_keys().await?.is_empty() {
        let key = switchboard_server::auth::create_api_key(
            server.state().store().as_ref(),
            "default",
            "initial",
            now_ms(),
        )
        .await
        .context("failed to create the first API key")?;
        // What works: `switchboard bridge` runs Claude Code (any release) against this
        // server. The official `claude remote-control` only talks to Anthropic's servers;
        // its builds ignore the variables that once pointed it elsewhere.
        say(&format!(
            "Created the first API key. It is shown only this once; keep it somewhere safe.\n\n\
             \x20 {key}\n\n\
             Put Claude Code under remote control through this server: in your project, run\n\n\
             \x20 export SWITCHBOARD_URL={public_url}\n\
             \x20 export SWITCHBOARD_TOKEN={key}\n\
             \x20 switchboard bridge\n\n\
             and open the link it prints. `switchboard bridge` stands in for `claude \
             remote-control`,\nwhich connects only to Anthropic's servers (no setting points \
             it here). `switchboard pair`\nsigns a phone or browser in to the web UI.\n"
        ));
    }
    // Handlers are installed before the server says it is listening, so a signal sent
    // as soon as it does is not the default action (death without a graceful shutdown).
    let signals = wait_for_signal()?;
    say(&format!(
        "Switchboard listening on {scheme}://{addr} (store: {database})\n"
    ));

    let shutdown = server.state().shutdown().clone();
    tokio::spawn(async move {
        signals.await;
        // Shut down first: whatever happens to the log (a closed pipe under `| tee`),
        // the signal has done its work.
        shutdown.trigger();
        tracing::info!("shutting down");
    });
    server.listen(listener).await
}

/// Prints to stdout; a closed stdout (the reader of a pipe gone) is not an error.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The warning for plain HTTP where others can reach it: keys, cookies and transcripts
/// would cross the network readable by anyone on the path. Behind a trusted proxy the
/// proxy is assumed to terminate TLS.
fn plain_http_warning(addr: SocketAddr, tls: bool, behind_proxy: bool) -> Option<String> {
    (!addr.ip().is_loopback() && !tls && !behind_proxy).then(|| {
        format!(
            "serving plain HTTP on {addr}, which is reachable from other machines: API keys, \
             session cookies and transcripts travel unencrypted. Use --tls-cert/--tls-key, or \
             put a TLS-terminating reverse proxy in front and name it with --trusted-proxy."
        )
    })
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on either.
fn wait_for_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

pub(crate) fn now_ms_pub() -> i64 {
    now_ms()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
