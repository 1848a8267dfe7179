//! The Switchboard relay server, as a library.
//!
//! [`Server`] speaks the Claude Code Remote Control protocol: the Environments API (work
//! dispatch by long-poll), the Sessions API, and the session-ingress WebSocket the
//! worker reads from. Every event of a session goes into one durable, ordered log in a
//! [`switchboard_store::Store`] and is fanned out from there.
//!
//! The binary (`switchboard serve`, in `switchboard-cli`) only parses flags, sets up
//! logging and signals, and calls into this crate.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
mod dispatch;
mod error;
mod http;
pub mod jwt;
mod limits;
mod listener;
mod log;
mod metrics;
mod notify;
mod options;
mod origin;
mod policy;
mod ratelimit;
mod revocation;
mod roles;
mod router;
mod shutdown;
mod sse;
mod state;
mod time;
mod tls;
mod ui;
mod ws;

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use listener::ConnectionLimits;
pub use options::{MetricsAccess, ServerOptions};
pub use origin::parse_trusted_proxy;
pub use shutdown::Shutdown;
pub use state::AppState;
pub use tls::TlsFiles;

/// A configured server, ready to listen.
pub struct Server {
    state: AppState,
}

impl Server {
    /// Opens the store named in the options (running its migrations) and builds the
    /// server state.
    pub async fn new(options: ServerOptions) -> anyhow::Result<Self> {
        let store = switchboard_store::open(&options.database_url)
            .await
            .with_context(|| {
                format!(
                    "failed to open the store at {}",
                    switchboard_store::redact_url(&options.database_url)
                )
            })?;
        Ok(Self {
            state: AppState::new(options, store),
        })
    }

    /// Builds a server on an already opened store.
    pub fn with_store(options: ServerOptions, store: switchboard_store::ArcStore) -> Self {
        Self {
            state: AppState::new(options, store),
        }
    }

    /// The shared state (store, hub, options).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Binds `addr` and serves until [`Server::shutdown`] is called.
    pub async fn bind(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        self.listen(listener).await
    }

    /// Serves on a bound listener until [`Server::shutdown`] is called; then stops
    /// accepting, closes every WebSocket with a reason, ends long-polls, waits for
    /// requests in flight to finish up to the shutdown deadline, and closes what remains.
    /// With [`ServerOptions::tls`] set, every connection is TLS.
    pub async fn listen(&self, listener: TcpListener) -> anyhow::Result<()> {
        let addr = listener
            .local_addr()
            .context("listener has no local address")?;
        let tls = match &self.state.options().tls {
            Some(files) => Some(std::sync::Arc::new(tls::Tls::load(files.clone())?)),
            None => None,
        };
        self.state.set_local_addr(addr);
        let background = self.state.spawn_background_tasks();
        let notifier = notify::spawn(self.state.clone());
        // Paths are normalized before routing, so the layer wraps the whole router.
        let normalize: fn(axum::extract::Request) -> axum::extract::Request =
            router::normalize_path;
        let app = tower::Layer::layer(
            &tower::util::MapRequestLayer::new(normalize),
            router::build(self.state.clone()),
        );
        listener::run(self.state.clone(), listener, app, tls).await;
        background.abort();
        if let Some(notifier) = notifier {
            notifier.abort();
        }
        Ok(())
    }

    /// Asks the server to shut down gracefully.
    pub fn shutdown(&self) {
        self.state.shutdown().trigger();
    }
}
