//! The accept loop: TLS termination, connection caps, header and body read timeouts,
//! and the shutdown deadline.
//!
//! Each connection is served by hyper's HTTP/1.1 server (with upgrades, for the
//! WebSockets). What a connection may cost before it has sent a whole request is
//! bounded: its headers must arrive within `header_read_timeout` (the TLS handshake
//! too), its request body within `body_read_timeout`, and the number of open
//! connections is capped overall and per client address. Responses are not timed:
//! long-polls, SSE streams and WebSockets are long on purpose.
//!
//! A connection counts against the caps for as long as its socket is open, including
//! after an upgrade to a WebSocket (the guard travels inside the I/O object hyper hands
//! to the upgraded socket). Connections over a cap are closed right after `accept`, so
//! the listen queue keeps draining; failures of `accept` itself (EMFILE, ENFILE) back off
//! briefly and the loop goes on.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::origin::RequestOrigin;
use crate::state::AppState;
use crate::tls::Tls;

/// Limits on what connections may cost; part of [`crate::ServerOptions`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// A connection that has not sent a whole request head (and, with TLS, finished its
    /// handshake) this long after it opened or after its previous response is closed.
    pub header_read_timeout: Duration,
    /// A request body that has not fully arrived this long after its head is cut off.
    pub body_read_timeout: Duration,
    /// Most connections open at once (`None`: no cap).
    pub max_connections: Option<usize>,
    /// Most connections open at once from one client address (`None`: no cap). Trusted
    /// proxies are exempt: every client behind them shares their address.
    pub max_connections_per_client: Option<usize>,
    /// After a shutdown starts, connections still open this long later are closed and
    /// the server returns.
    pub shutdown_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(60),
            max_connections: Some(4096),
            max_connections_per_client: Some(256),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The router as the accept loop calls it.
pub(crate) type App =
    tower::util::MapRequest<axum::Router, fn(axum::extract::Request) -> axum::extract::Request>;

/// Serves `listener` until the shutdown, then waits for open connections up to the
/// deadline and closes whatever remains.
pub(crate) async fn run(state: AppState, listener: TcpListener, app: App, tls: Option<Arc<Tls>>) {
    let limits = state.options().limits.clone();
    let shutdown = state.shutdown().clone();
    let connections = TaskTracker::new();
    let force = CancellationToken::new();
    let caps = Arc::new(Caps::new(&limits));
    let mut refused = RateLimitedWarning::default();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                // Out of file descriptors (or a transient kernel condition): waiting
                // lets connections close; retrying at once would spin.
                if refused.due() {
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                }
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let exempt = crate::origin::is_trusted(peer.ip(), &state.options().trusted_proxies);
        let Some(guard) = caps.admit(peer.ip(), exempt) else {
            if refused.due() {
                tracing::warn!(client = %peer.ip(), "connection refused: too many open connections");
            }
            drop(tcp);
            continue;
        };
        // Small frames must leave at once: with Nagle's algorithm a second small write
        // waits for the peer's delayed ACK (40 ms on Linux).
        let _ = tcp.set_nodelay(true);
        let io = Guarded {
            io: tcp,
            _guard: guard,
        };
        let connection = Connection {
            state: state.clone(),
            app: app.clone(),
            peer,
            limits: limits.clone(),
            force: force.clone(),
        };
        match &tls {
            None => {
                connections.spawn(connection.serve(io, false));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let timeout = limits.header_read_timeout;
                connections.spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => connection.serve(stream, true).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    connections.close();
    let deadline = limits.shutdown_timeout;
    if tokio::time::timeout(deadline, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "closing connections still open {}s after the shutdown started",
            deadline.as_secs_f32()
        );
        force.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
    }
}

/// One accepted connection.
struct Connection {
    state: AppState,
    app: App,
    peer: SocketAddr,
    limits: ConnectionLimits,
    force: CancellationToken,
}

impl Connection {
    async fn serve<I>(self, io: I, tls: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            state,
            app,
            peer,
            limits,
            force,
        } = self;
        let shutdown = state.shutdown().clone();
        let body_timeout = limits.body_read_timeout;
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let origin =
                    RequestOrigin::of(peer, tls, req.headers(), &state.options().trusted_proxies);
                let mut req =
                    req.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_timeout)));
                req.extensions_mut().insert(ConnectInfo(origin.client));
                req.extensions_mut().insert(origin.clone());
                let app = app.clone();
                origin.scope(crate::state::request_scope(async move {
                    app.oneshot(req).await
                }))
            });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.wait() => {}
            () = force.cancelled() => return,
        }
        // Finish the request in flight (if any), then close.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            () = force.cancelled() => {}
        }
    }
}

/// The connection caps and what is open.
struct Caps {
    total: Option<Arc<Semaphore>>,
    per_client: Option<usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Caps {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            total: limits.max_connections.map(|n| Arc::new(Semaphore::new(n))),
            per_client: limits.max_connections_per_client,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A guard for one more connection from `ip`, or `None` when a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr, exempt: bool) -> Option<ConnectionGuard> {
        let permit = match &self.total {
            Some(total) => Some(total.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let counted = match self.per_client {
            Some(cap) if !exempt => {
                let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.entry(ip).or_insert(0);
                if *n >= cap {
                    return None;
                }
                *n += 1;
                Some(ip)
            }
            _ => None,
        };
        Some(ConnectionGuard {
            caps: self.clone(),
            counted,
            _permit: permit,
        })
    }
}

/// Holds a connection's place under the caps until the socket is dropped.
struct ConnectionGuard {
    caps: Arc<Caps>,
    counted: Option<IpAddr>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.counted {
            let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// A socket with its place under the caps.
struct Guarded<I> {
    io: I,
    _guard: ConnectionGuard,
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The error a request body ends with when it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyTimeout(Duration);

/// A request body that must arrive whole before a deadline.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    fn new(inner: hyper::body::Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimeout(this.limit).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Logs a repeated condition at most once a few seconds.
#[derive(Default)]
struct RateLimitedWarning {
    last: Option<std::time::Instant>,
}

impl RateLimitedWarning {
    fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(5))
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}
