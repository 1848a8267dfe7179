//! `switchboard serve`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use switchboard_server::{MetricsAccess, Server, ServerOptions};

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
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));

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
        println!(
            "Created the first API key. It is shown only this once; keep it somewhere safe.\n\n\
             \x20 {key}\n\n\
             Put Claude Code under remote control through this server: in your project, run\n\n\
             \x20 export SWITCHBOARD_URL={public_url}\n\
             \x20 export SWITCHBOARD_TOKEN={key}\n\
             \x20 switchboard bridge\n\n\
             and open the link it prints. `switchboard bridge` stands in for `claude \
             remote-control`,\nwhich connects only to Anthropic's servers (no setting points \
             it here). `switchboard pair`\nsigns a phone or browser in to the web UI.\n"
        );
    }
    println!("Switchboard listening on http://{addr} (store: {database})");

    let shutdown = server.state().shutdown().clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.trigger();
    });
    server.listen(listener).await
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
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
