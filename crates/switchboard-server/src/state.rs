//! The shared state of the server and the operations handlers call.
//!
//! Handlers extract and authorize, then call one method here; the methods hold the
//! protocol's rules and talk to the store and the hub. Nothing else touches either.

mod code;
mod environments;
mod events;
mod notify;
mod sessions;
mod web;

pub(crate) use code::event_id;
pub(crate) use events::Accepted;
pub(crate) use sessions::HistoryQuery;
pub(crate) use web::WEB_SESSION_TTL;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use switchboard_proto::SessionId;
use switchboard_store::{ArcStore, Session, StoreError};

use crate::auth::{self, Principal};
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::options::ServerOptions;
use crate::shutdown::Shutdown;
use crate::time::now_ms;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: ArcStore,
    hub: Hub,
    dispatcher: Dispatcher,
    metrics: Metrics,
    options: ServerOptions,
    shutdown: Shutdown,
    local_addr: OnceLock<SocketAddr>,
    /// Live signing keys, newest first; loaded (or first created) on first use.
    signing_keys: tokio::sync::RwLock<Vec<switchboard_store::SigningKey>>,
    /// The queue to the notifier task (see `notify`).
    notifier: crate::notify::Notifier,
    /// The VAPID key pair, loaded (or first made) on first use.
    vapid: tokio::sync::OnceCell<Arc<crate::notify::webpush::Vapid>>,
}

impl AppState {
    /// Builds the state around an opened store.
    pub fn new(options: ServerOptions, store: ArcStore) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                hub: Hub::new(options.channel_capacity),
                dispatcher: Dispatcher::default(),
                metrics: Metrics::default(),
                options,
                shutdown: Shutdown::default(),
                local_addr: OnceLock::new(),
                signing_keys: tokio::sync::RwLock::new(Vec::new()),
                notifier: crate::notify::Notifier::default(),
                vapid: tokio::sync::OnceCell::new(),
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

    /// The base URL clients reach the server at.
    pub fn public_url(&self) -> String {
        match &self.inner.options.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => match self.inner.local_addr.get() {
                Some(addr) => format!("http://{addr}"),
                None => "http://127.0.0.1:8787".to_string(),
            },
        }
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
            return Ok(Principal::Worker {
                owner_id: claims.owner,
                session_id: session.body().to_string(),
                epoch: claims.epoch,
            });
        }
        auth::verify(self.store().as_ref(), token, now_ms()).await
    }

    /// Loads a session named in either costume and checks that `principal` may act on
    /// it: its owner's API key, or an ingress token issued for it (when `worker` is true).
    pub(crate) async fn authorize_session(
        &self,
        principal: &Principal,
        raw_id: &str,
        worker: bool,
    ) -> Result<Session, ApiError> {
        let id = parse_session_id(raw_id)?;
        let session = match self.store().session(id.body()).await {
            Ok(s) => s,
            Err(StoreError::NotFound) => {
                return Err(ApiError::NotFound(format!("session {raw_id} not found")))
            }
            Err(e) => return Err(e.into()),
        };
        match principal {
            Principal::Owner { owner_id } if *owner_id == session.owner_id => Ok(session),
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

    /// Requires an API key and returns its owner.
    pub(crate) fn require_owner(principal: &Principal) -> Result<&str, ApiError> {
        match principal {
            Principal::Owner { owner_id } => Ok(owner_id),
            _ => Err(ApiError::Forbidden("this endpoint needs an API key".into())),
        }
    }

    /// Starts the periodic collection of idle environments and unused channels.
    pub(crate) fn spawn_background_tasks(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
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
