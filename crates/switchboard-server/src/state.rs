//! The shared state of the server and the operations handlers call.
//!
//! Handlers extract and authorize, then call one method here; the methods hold the
//! protocol's rules and talk to the store and the hub. Nothing else touches either.

mod access;
mod code;
mod environments;
mod events;
mod notify;
mod sessions;
mod web;

pub(crate) use code::event_id;
pub(crate) use sessions::HistoryQuery;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use switchboard_proto::SessionId;
use switchboard_store::{ArcStore, CredentialKind, Role, Session, StoreError};

use crate::auth::{self, Principal};
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::log::Hub;
use crate::metrics::Metrics;
use crate::options::ServerOptions;
use crate::ratelimit::RateLimiter;
use crate::revocation::Revocations;
use crate::shutdown::Shutdown;
use crate::time::now_ms;

/// Who besides a session's owner may act on it (see [`AppState::authorize_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Only its owner (API key or web session).
    OwnerOnly,
    /// Its owner, or a worker credential issued for this very session (ingress token,
    /// worker JWT).
    OwnerOrSessionWorker,
}

tokio::task_local! {
    /// The session a worker JWT's epoch was checked against while the request being
    /// handled was authenticated: [`AppState::authorize_session`] takes it instead of
    /// reading the session a second time.
    static CHECKED_SESSION: std::cell::RefCell<Option<Session>>;
}

/// Runs the handling of one request with room for the session its authentication read
/// (see [`AppState::authorize_session`]).
pub(crate) fn request_scope<F: std::future::Future>(
    handling: F,
) -> impl std::future::Future<Output = F::Output> {
    CHECKED_SESSION.scope(std::cell::RefCell::new(None), handling)
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: ArcStore,
    hub: Hub,
    dispatcher: Dispatcher,
    /// The other server nodes on the same database, if any (see `cluster`).
    cluster: Arc<crate::log::cluster::Cluster>,
    metrics: Metrics,
    options: ServerOptions,
    shutdown: Shutdown,
    local_addr: OnceLock<SocketAddr>,
    /// Live signing keys, newest first; loaded (or first created) on first use.
    signing_keys: tokio::sync::RwLock<Vec<switchboard_store::SigningKey>>,
    /// The credential each live viewer socket and worker stream was opened with.
    revocations: Revocations,
    /// Sign-in and pairing attempts per client address.
    sign_in_limiter: RateLimiter,
    /// The queue to the notifier task (see `notify`).
    notifier: crate::notify::Notifier,
    /// The VAPID key pair, loaded (or first made) on first use.
    vapid: tokio::sync::OnceCell<Arc<crate::notify::webpush::Vapid>>,
    /// Devices' last use, approval-policy timers (see `state/access.rs`).
    access: access::AccessState,
}

impl AppState {
    /// Builds the state around an opened store.
    pub fn new(options: ServerOptions, store: ArcStore) -> Self {
        let cluster = Arc::new(crate::log::cluster::Cluster::for_url(&options.database_url));
        Self {
            inner: Arc::new(Inner {
                store,
                hub: Hub::new(options.channel_capacity, cluster.clone()),
                dispatcher: Dispatcher::new(cluster.clone()),
                cluster,
                metrics: Metrics::default(),
                shutdown: Shutdown::default(),
                local_addr: OnceLock::new(),
                signing_keys: tokio::sync::RwLock::new(Vec::new()),
                revocations: Revocations::default(),
                sign_in_limiter: RateLimiter::new(options.sign_in_burst, options.sign_in_refill),
                options,
                notifier: crate::notify::Notifier::default(),
                vapid: tokio::sync::OnceCell::new(),
                access: access::AccessState::default(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &ArcStore {
        &self.inner.store
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub(crate) fn dispatcher(&self) -> &Dispatcher {
        &self.inner.dispatcher
    }

    pub(crate) fn cluster(&self) -> &crate::log::cluster::Cluster {
        &self.inner.cluster
    }

    pub(crate) fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The options the server runs with.
    pub fn options(&self) -> &ServerOptions {
        &self.inner.options
    }

    /// The shutdown signal.
    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    pub(crate) fn set_local_addr(&self, addr: SocketAddr) {
        let _ = self.inner.local_addr.set(addr);
    }

    /// The address this server listens on, once it does.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr.get().copied()
    }

    /// The base URL clients reach the server at: `--public-url` when configured; else,
    /// for a request through a trusted proxy, the scheme and host it forwarded; else
    /// this server's own address.
    pub fn public_url(&self) -> String {
        if let Some(url) = &self.inner.options.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let origin = crate::origin::current();
        let https = origin.as_ref().is_some_and(|o| o.https) || self.inner.options.tls.is_some();
        let scheme = if https { "https" } else { "http" };
        match (
            origin.and_then(|o| o.forwarded_host),
            self.inner.local_addr.get(),
        ) {
            (Some(host), _) => format!("{scheme}://{host}"),
            (None, Some(addr)) => format!("{scheme}://{addr}"),
            (None, None) => format!("{scheme}://127.0.0.1:8787"),
        }
    }

    /// True when the request being handled reached the client's side over https (TLS
    /// here, a trusted proxy's word, or a configured https public URL): the one place
    /// that decides the cookie's `Secure` flag.
    pub(crate) fn request_is_https(&self) -> bool {
        crate::origin::current().is_some_and(|o| o.https)
            || self.inner.options.tls.is_some()
            || self.public_url().starts_with("https://")
    }

    /// Checks a bearer token: a worker JWT against the signing keys, anything else
    /// against the stored credentials.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        if crate::jwt::looks_like_jwt(token) {
            let now = now_ms() / 1000;
            let mut verified = crate::jwt::verify(token, &self.signing_keys().await?, now);
            if verified == Err(crate::jwt::JwtError::UnknownKey) {
                verified = crate::jwt::verify(token, &self.reload_signing_keys().await?, now);
            }
            // An expired token is a 401 too: the client compares `exp` itself and treats
            // it as a superseded worker.
            let claims = verified.map_err(|e| ApiError::Unauthorized(e.to_string()))?;
            let session = SessionId::parse(&claims.session_id)
                .ok_or_else(|| ApiError::Unauthorized("invalid worker token".into()))?;
            // A JWT belongs to one epoch: once a newer worker took the session over, every
            // use of it, on any route or socket, is a 409 and changes nothing.
            let checked = match self.store().session(session.body()).await {
                Ok(s) => s,
                Err(StoreError::NotFound) => {
                    return Err(ApiError::Unauthorized("invalid worker token".into()))
                }
                Err(e) => return Err(e.into()),
            };
            let current = checked.worker_epoch;
            if claims.epoch != current {
                return Err(ApiError::Conflict(format!(
                    "worker epoch {} was superseded (current: {current}); this worker token \
                     is no longer valid",
                    claims.epoch
                )));
            }
            // The request authorizes against the very state its epoch was checked in.
            let _ = CHECKED_SESSION.try_with(|c| *c.borrow_mut() = Some(checked));
            return Ok(Principal::Worker {
                owner_id: claims.owner,
                session_id: session.body().to_string(),
                epoch: claims.epoch,
            });
        }
        auth::verify(self.store().as_ref(), token, now_ms()).await
    }

    /// Authenticates a request from its headers: the bearer token, or else the session
    /// cookie, which a browser attaches to any request, so one that another site started
    /// (see [`AppState::same_origin`]) is refused. Also says which stored credential it
    /// was (`None` for a worker JWT), for [`AppState::watch_revocation`].
    pub(crate) async fn authenticate_request(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<(Principal, Option<(CredentialKind, String)>), ApiError> {
        let (token, source) = auth::request_token(headers)?;
        if source == auth::Source::Cookie {
            self.refuse_cross_site(headers, "request")?;
        }
        let mut principal = self.authenticate(token).await?;
        self.note_client(&mut principal, headers);
        let credential = auth::credential_ref(token).map(|(kind, id)| (kind, id.to_string()));
        Ok((principal, credential))
    }

    /// Whether a request came from a page of this server (or from no page at all): its
    /// `Origin`, if any, is the public URL or the host the request was addressed to. The
    /// one place the server decides what "same origin" means.
    fn same_origin(&self, headers: &axum::http::HeaderMap) -> bool {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        auth::origin_matches(headers, &self.public_url(), host)
    }

    /// Refuses (403) a request another site's page started: the one check for requests
    /// a browser's cookie alone may authorize (`what` names them in the message).
    pub(crate) fn refuse_cross_site(
        &self,
        headers: &axum::http::HeaderMap,
        what: &str,
    ) -> Result<(), ApiError> {
        if self.same_origin(headers) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("cross-site {what} refused")))
        }
    }

    /// Registers a live connection opened with `credential`, to be closed when that
    /// credential is revoked.
    pub(crate) fn watch_revocation(
        &self,
        credential: Option<&(CredentialKind, String)>,
    ) -> Option<crate::revocation::Watch> {
        credential.map(|(_, id)| self.inner.revocations.watch(id))
    }

    /// Registers a viewer connection that reached `session_id` through its share with
    /// `owner_id` at `role`, to be closed when the share ends or changes.
    pub(crate) fn watch_share(
        &self,
        session_id: &str,
        owner_id: &str,
        role: Role,
    ) -> crate::revocation::Watch {
        self.inner
            .revocations
            .watch(&crate::revocation::share_key(session_id, owner_id, role))
    }

    /// Closes the live connections opened through a share (just ended or changed), on
    /// every node; they reconnect with what the share allows now.
    pub(crate) fn close_share(&self, session_id: &str, owner_id: &str) {
        self.close_revoked([crate::revocation::share_prefix(session_id, owner_id).as_str()]);
    }

    /// Closes the live connections opened with these credentials (just revoked), on
    /// every node.
    pub(crate) fn close_revoked<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.inner.revocations.revoke(id);
            self.cluster()
                .announce(crate::log::cluster::Announcement::Revoked(id));
        }
    }

    /// Takes one sign-in attempt for the client at `addr` (429 when it made too many).
    pub(crate) fn sign_in_attempt(&self, addr: Option<std::net::IpAddr>) -> Result<(), ApiError> {
        let Some(addr) = addr else { return Ok(()) };
        self.inner.sign_in_limiter.check(addr).map_err(|after| {
            ApiError::TooManyRequests(
                format!("too many sign-in attempts from this address; try again in {after} s"),
                after,
            )
        })
    }

    /// Loads a session named in either costume and checks that `principal` may act on
    /// it with `access`: its owner's API key, or a worker credential issued for it.
    ///
    /// A request authenticated with a worker JWT read its session already, to check the
    /// token's epoch; that same read is used here, so the session is read once and the
    /// epoch it was checked against is the one the request acts on.
    pub(crate) async fn authorize_session(
        &self,
        principal: &Principal,
        raw_id: &str,
        access: Access,
    ) -> Result<Session, ApiError> {
        let id = parse_session_id(raw_id)?;
        let checked = CHECKED_SESSION
            .try_with(|c| {
                let mut c = c.borrow_mut();
                if c.as_ref().is_some_and(|s| s.id == id.body()) {
                    c.take()
                } else {
                    None
                }
            })
            .ok()
            .flatten();
        let session = match checked {
            Some(s) => s,
            None => match self.store().session(id.body()).await {
                Ok(s) => s,
                Err(StoreError::NotFound) => {
                    return Err(ApiError::NotFound(format!("session {raw_id} not found")))
                }
                Err(e) => return Err(e.into()),
            },
        };
        let worker = access == Access::OwnerOrSessionWorker;
        match principal {
            Principal::Owner { owner_id, .. } if *owner_id == session.owner_id => Ok(session),
            Principal::Ingress { session_id, .. } | Principal::Worker { session_id, .. }
                if worker && *session_id == session.id =>
            {
                Ok(session)
            }
            Principal::Owner { .. } => Err(ApiError::Forbidden(
                "this session belongs to another owner".into(),
            )),
            Principal::Ingress { .. } if worker => Err(ApiError::Forbidden(
                "this token was issued for another session".into(),
            )),
            _ => Err(ApiError::Forbidden("this endpoint needs an API key".into())),
        }
    }

    /// Like [`AppState::authorize_session`], and also lets in an owner the session is
    /// shared with: that caller's role is narrowed to the share's (never raised), so
    /// every capability check after this one sees what the share allows. Only the
    /// viewer's side of a session (reading it, its viewer socket, prompts and answers,
    /// title and archive) is reachable through a share; its worker plane stays its
    /// owner's. Also returns the share's role when the caller came in through one.
    /// Handlers check their capability before this (the credential's own role refuses
    /// before anything is read) and again after it where a share could narrow the role
    /// below what they need (every share reads, so `Read` needs no second check).
    pub(crate) async fn authorize_session_or_share(
        &self,
        principal: &mut Principal,
        raw_id: &str,
        access: Access,
    ) -> Result<(Session, Option<Role>), ApiError> {
        let refused = match self.authorize_session(principal, raw_id, access).await {
            Ok(session) => return Ok((session, None)),
            Err(e @ ApiError::Forbidden(_)) => e,
            Err(e) => return Err(e),
        };
        let Principal::Owner { owner_id, role, .. } = principal else {
            return Err(refused);
        };
        let id = parse_session_id(raw_id)?;
        let Some(shared) = self.store().session_share(id.body(), owner_id).await? else {
            return Err(refused);
        };
        let session = self.store().session(id.body()).await?;
        *role = (*role).min(shared);
        Ok((session, Some(shared)))
    }

    /// The role `principal` reaches `session` with through a share, when the session is
    /// another owner's (after [`AppState::authorize_session_or_share`] let it in).
    pub(crate) fn shared_role(principal: &Principal, session: &Session) -> Option<Role> {
        match principal {
            Principal::Owner { owner_id, role, .. } if *owner_id != session.owner_id => Some(*role),
            _ => None,
        }
    }

    /// Requires an API key and returns its owner.
    pub(crate) fn require_owner(principal: &Principal) -> Result<&str, ApiError> {
        match principal {
            Principal::Owner { owner_id, .. } => Ok(owner_id),
            _ => Err(ApiError::Forbidden("this endpoint needs an API key".into())),
        }
    }

    /// Starts the periodic collection of idle environments and unused channels.
    pub(crate) fn spawn_background_tasks(&self) -> tokio::task::JoinHandle<()> {
        crate::log::cluster::spawn(self);
        let state = self.clone();
        // Connections whose credential was revoked elsewhere (the store) are closed here.
        let sweeper = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweeper.options().revocation_check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = sweeper.shutdown().wait() => return,
                }
                if !sweeper.inner.revocations.is_empty() {
                    let store = sweeper.store().clone();
                    sweeper
                        .inner
                        .revocations
                        .sweep(store.as_ref(), now_ms())
                        .await;
                }
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state.options().gc_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = state.shutdown().wait() => return,
                }
                if let Err(e) = state.collect_idle_environments().await {
                    tracing::warn!(error = ?e, "collecting idle environments failed");
                }
                state.hub().sweep();
                if let Err(e) = state.reload_signing_keys().await {
                    tracing::warn!(error = ?e, "reloading signing keys failed");
                }
                state.inner.dispatcher.sweep();
            }
        })
    }

    /// Renders `/metrics`.
    pub(crate) fn render_metrics(&self) -> String {
        self.metrics().render(self.hub().len())
    }
}

/// Parses a session id in either costume; anything else is a 400 (bad characters) or a
/// 404 (a well-formed id that cannot be ours).
pub(crate) fn parse_session_id(raw: &str) -> Result<SessionId, ApiError> {
    check_safe_id("session id", raw)?;
    SessionId::parse(raw).ok_or_else(|| ApiError::NotFound(format!("session {raw} not found")))
}

/// Rejects ids that are not `^[a-zA-Z0-9_-]+$` before they reach anything else.
pub(crate) fn check_safe_id(what: &str, raw: &str) -> Result<(), ApiError> {
    if switchboard_proto::is_safe_id(raw) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid {what}: must match ^[a-zA-Z0-9_-]+$"
        )))
    }
}
