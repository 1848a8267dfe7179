//! The child processes' side: Switchboard or the bare relay on `127.0.0.1:0`, announced
//! on stdout as one JSON line, serving until stdin closes (the parent stopped or died).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;

use crate::child::{raise_nofile, Ready};

/// The filter `switchboard serve` logs with by default, so the server under test pays
/// for the same logging as in production (into a file the parent chose).
const SERVER_LOG_FILTER: &str = "info,sqlx=warn,tower_http=warn";

/// Runs the real Switchboard server with its default options on a fresh SQLite file in
/// `dir` (or on the PostgreSQL database `database_url` names, which several nodes may
/// share), with one API key made directly in the store.
pub(crate) fn switchboard(dir: &Path, database_url: Option<&str>) -> anyhow::Result<()> {
    let nofile = raise_nofile();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_BENCH_SERVER_LOG")
                .unwrap_or_else(|_| SERVER_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let url = database_url.map_or_else(
        || format!("sqlite://{}", dir.join("switchboard.db").display()),
        str::to_string,
    );
    runtime()?.block_on(async move {
        let mut options = switchboard_server::ServerOptions::new(url);
        // The benchmark reads its gauges off /metrics without a key.
        options.metrics = switchboard_server::MetricsAccess::Public;
        // Every simulated client connects from 127.0.0.1, tens of thousands at once.
        options.limits.max_connections = None;
        options.limits.max_connections_per_client = None;
        let server = Arc::new(switchboard_server::Server::new(options).await?);
        let token = switchboard_server::auth::create_api_key(
            server.state().store().as_ref(),
            "bench",
            "bench",
            now_ms(),
        )
        .await
        .context("failed to create the bench's API key")?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to listen")?;
        announce(&Ready {
            url: format!("http://{}", listener.local_addr()?),
            token: Some(token),
            nofile,
        })?;
        let stopper = server.clone();
        tokio::spawn(async move {
            stdin_closed().await;
            stopper.shutdown();
        });
        server.listen(listener).await
    })
}

/// Runs the bare WebSocket relay.
pub(crate) fn baseline() -> anyhow::Result<()> {
    let nofile = raise_nofile();
    runtime()?.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to listen")?;
        announce(&Ready {
            url: format!("http://{}", listener.local_addr()?),
            token: None,
            nofile,
        })?;
        tokio::select! {
            () = crate::baseline::serve(listener) => {}
            () = stdin_closed() => {}
        }
        Ok(())
    })
}

/// The same runtime `switchboard serve` builds: one worker thread per core.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the runtime")
}

fn announce(ready: &Ready) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(ready)?);
    Ok(())
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
