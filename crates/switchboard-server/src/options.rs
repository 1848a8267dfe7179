//! Server configuration.

use std::time::Duration;

/// Everything that tunes a [`crate::Server`]. Built by the binary from flags and
/// environment variables; tests shorten the timings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Where the store lives: `sqlite://PATH` (the embedded default) or `postgres://…`.
    pub database_url: String,
    /// The base URL clients reach the server at; goes into work secrets and printed
    /// links. `None` means `http://<listen address>`.
    pub public_url: Option<String>,
    /// How long a work poll waits for work before answering 204. The client gives up
    /// after 10 s, so this must stay well below.
    pub poll_timeout: Duration,
    /// `reclaim_older_than_ms` to use when a poll does not send one (the client's default).
    pub default_reclaim: Duration,
    /// An environment that has not polled for this long is deregistered.
    pub environment_idle_timeout: Duration,
    /// How often idle environments and unused session channels are collected.
    pub gc_interval: Duration,
    /// How often a `keep_alive` frame goes to an idle worker WebSocket.
    pub ingress_keepalive: Duration,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Lifetime of session-ingress tokens; `None` keeps them valid until the session is
    /// archived (the protocol recommends long-lived opaque tokens).
    pub ingress_token_ttl: Option<Duration>,
    /// How many events a session's live channel holds for a slow reader before the
    /// reader is cut off and must resume from the log. The ring is allocated whole when
    /// the session gets its first reader, about 40 bytes a slot: the default's 20 KiB
    /// is a third of what an idle session with a worker and a viewer costs.
    pub channel_capacity: usize,
    /// When a viewer names no sequence number, send it only the most recent this many
    /// events (`None`: the whole history).
    pub viewer_backlog: Option<u32>,
    /// Lifetime of worker JWTs issued by `/bridge` (`expires_in`). The client refreshes
    /// five minutes before expiry, so keep it well above that.
    pub worker_jwt_ttl: Duration,
    /// A v2 worker without a heartbeat for this long is considered gone.
    pub worker_heartbeat_ttl: Duration,
    /// How often an idle worker event stream gets a keep-alive comment (the client drops
    /// a stream silent for 45 s).
    pub sse_keepalive: Duration,
    /// A viewer whose socket accepts no data for this long is disconnected (it resumes
    /// by sequence number when it reconnects).
    pub viewer_write_timeout: Duration,
    /// A v1 worker whose socket accepts no data for this long is disconnected (its
    /// undelivered events go to its next connection).
    pub worker_write_timeout: Duration,
    /// A viewer further behind the session than this many bytes of events is
    /// disconnected (it resumes by sequence number when it reconnects), so a viewer that
    /// stops reading cannot keep more than about this much of the session in memory.
    pub viewer_max_lag_bytes: u64,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
    /// How often connections opened with a credential that was revoked elsewhere (e.g.
    /// `switchboard token revoke` on the store) are looked for and closed.
    pub revocation_check_interval: Duration,
    /// Sign-in and pairing attempts (`/web/login`, `/web/pair`) one client address may
    /// make at once…
    pub sign_in_burst: u32,
    /// …and then one more every this long.
    pub sign_in_refill: Duration,
    /// Terminate TLS with this certificate and key (reloaded when the files change).
    pub tls: Option<crate::TlsFiles>,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Header and body read timeouts, connection caps, the shutdown deadline.
    pub limits: crate::ConnectionLimits,
    /// Let notifications (webhook, ntfy, push endpoints) go to loopback, private,
    /// link-local and other non-public addresses. Off by default: an API key holder
    /// could otherwise make the server probe its own network (`--notify-allow-private`).
    pub notify_allow_private: bool,
    /// How long a session's worker may stay away (socket closed, stream ended, silent
    /// past its heartbeat TTL) before its owner is told it was lost; a reconnect within
    /// it (the clients retry within seconds) notifies nobody.
    pub worker_lost_grace: Duration,
}

/// Who may read `/metrics` (`switchboard serve --metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsAccess {
    /// Nobody: `/metrics` answers 404.
    Off,
    /// Anyone who can reach the server.
    Public,
    /// Callers with an API key (the default).
    #[default]
    Token,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            database_url: "sqlite://switchboard.db".into(),
            public_url: None,
            poll_timeout: Duration::from_secs(8),
            default_reclaim: Duration::from_millis(5_000),
            // Upstream collects environments after four hours without a poll.
            environment_idle_timeout: Duration::from_secs(4 * 60 * 60),
            gc_interval: Duration::from_secs(60),
            // The reference server uses 20 s; proxies commonly idle-close at 60 s.
            ingress_keepalive: Duration::from_secs(20),
            // v2 event batches may reach 10 MiB; leave room for the envelope.
            max_body_bytes: 16 * 1024 * 1024,
            ingress_token_ttl: None,
            channel_capacity: 512,
            viewer_backlog: None,
            worker_jwt_ttl: Duration::from_secs(4 * 60 * 60),
            // Upstream's TTL; the client heartbeats every 20 s.
            worker_heartbeat_ttl: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(15),
            viewer_write_timeout: Duration::from_secs(10),
            worker_write_timeout: Duration::from_secs(10),
            viewer_max_lag_bytes: 16 * 1024 * 1024,
            metrics: MetricsAccess::Token,
            revocation_check_interval: Duration::from_secs(5),
            sign_in_burst: 10,
            sign_in_refill: Duration::from_secs(6),
            tls: None,
            trusted_proxies: Vec::new(),
            limits: crate::ConnectionLimits::default(),
            notify_allow_private: false,
            // Workers reconnect within a few seconds (v1 backs off to 2 s, v2 resumes its
            // stream at once); half a minute rides out a network change or a server
            // restart without a false alarm.
            worker_lost_grace: Duration::from_secs(30),
        }
    }
}

impl ServerOptions {
    /// Options with the given database URL and defaults for everything else.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            ..Self::default()
        }
    }
}
