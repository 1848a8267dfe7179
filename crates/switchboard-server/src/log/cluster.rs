//! Several server nodes on one PostgreSQL database, behaving as one server.
//!
//! Every node keeps its own in-memory session channels (see `hub`); what crosses between
//! nodes are small notices through a [`Carrier`] (PostgreSQL `LISTEN`/`NOTIFY`, see
//! `switchboard_store::postgres::listen`), and the events themselves are read from the
//! log, which stays the one source of truth:
//!
//! - **Events.** The store sends `"<session> <last seq>"` inside each append's
//!   transaction, so notices arrive at commit, in commit order, never for a rollback.
//!   A node that has a live channel for the session reads the events after the last
//!   one it published up to that seq from the log and publishes them, under the
//!   session's append lock ([`follow`]). A local append whose seq is not the next one
//!   (another node appended in between) first does the same ([`publish_in_order`]).
//!   So each node's channel publishes every event exactly once, in sequence order, from
//!   the `last_seq` of the session as read before the channel was made: "subscribe, then
//!   read the backlog, then follow" holds on every node. A node's own notices find the
//!   events already published and cost a lookup.
//! - **Everything else** is announced by the node where it happened, as a control
//!   notice `"<kind> <node> <argument>…"` (own notices are skipped by node id): work
//!   queued or an environment deregistered (`w`: wakes the polls waiting on it),
//!   a session archived (`c`: its sockets close), a credential revoked (`r`: the sockets
//!   it opened close; the store sends this too, for `switchboard token revoke`), signing
//!   keys changed (`k`, sent by the store: keys are reloaded), a v2 worker's heartbeat
//!   reached a node without its event stream (`h`, at most once a second: the node with
//!   the stream notes it), a worker attached (`a <session> <generation>`: see below).
//! - **One worker delivers.** Notices reach every node in one order. A node closes its
//!   own worker connections (4001) when another node's attach notice comes after its
//!   own one's, so the attach announced last wins everywhere.
//! - **Losing the listening connection.** The listener reconnects with backoff; then
//!   every live channel catches up from the log to the session's `last_seq`, archived
//!   sessions close, every poll looks for work again, credentials are checked and the
//!   signing keys reloaded: nothing sent while it was away is skipped.
//!
//! On SQLite (one node) there is no carrier: [`Cluster::announce`] does nothing, no
//! task runs, channels have no link and publish as before.
//!
//! Hooks in the delivery files (to re-apply if they move):
//! - `hub.rs`: `SessionChannel` has `next_seq` (advanced by `publish`) and `cluster`
//!   (a [`ChannelLink`], `None` on one node); `Hub::channel` takes the `Session` and
//!   starts `next_seq` at its `last_seq + 1`; `attach_worker` calls
//!   [`ChannelLink::worker_attached`]; `SessionChannel::supersede_up_to`; `Hub::close`
//!   announces and `Hub::close_local` is what a notice runs; `Hub::live`;
//!   `SessionChannel::heartbeat` passes heartbeats on (`note_heartbeat` is local).
//! - `state/events.rs`: the append publishes through [`publish_in_order`] (under the
//!   append lock) instead of `channel.publish`.
//! - `dispatch.rs`: `Dispatcher::notify` announces, `wake_local` is what a notice runs,
//!   `wake_all` is for resyncs.
//! - `state.rs`: `AppState` holds the [`Cluster`]; `close_revoked` announces;
//!   `spawn_background_tasks` calls [`spawn`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use switchboard_store::postgres::listen::{self, Notice};
use switchboard_store::{EventQuery, SessionStatus, StoreError};
use tokio::sync::mpsc;

use super::hub::{LogEvent, SessionChannel};
use crate::state::AppState;

/// Events read from the log per query while catching up.
const PAGE: u32 = 500;
/// How often a node passes on the heartbeats of a worker whose stream is elsewhere.
const HEARTBEAT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to reconnect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What one node tells the others.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Announcement<'a> {
    /// Work was queued for this environment, or it was deregistered.
    WorkQueued(&'a str),
    /// The session was archived.
    SessionClosed(&'a str),
    /// The credential with this id was revoked.
    Revoked(&'a str),
    /// A v2 worker of the session, whose event stream is on another node, showed a sign
    /// of life here.
    Heartbeat(&'a str),
    /// A worker connection of the session attached here, with this local generation.
    WorkerAttached {
        session_id: &'a str,
        generation: u64,
    },
}

impl Announcement<'_> {
    fn encode(&self, node: &str) -> String {
        match self {
            Self::WorkQueued(env) => format!("w {node} {env}"),
            Self::SessionClosed(session) => format!("c {node} {session}"),
            Self::Revoked(id) => format!("r {node} {id}"),
            Self::Heartbeat(session) => format!("h {node} {session}"),
            Self::WorkerAttached {
                session_id,
                generation,
            } => format!("a {node} {session_id} {generation}"),
        }
    }
}

/// What carries notices between the nodes. PostgreSQL's `LISTEN`/`NOTIFY` does today;
/// another engine could later. Event notices are the store's to send (inside the append's
/// transaction); a carrier sends control notices and listens to both kinds.
pub(crate) trait Carrier: Send + Sync + 'static {
    /// Sends control notices, in order.
    fn announce<'a>(&'a self, payloads: &'a [String]) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Starts listening: notices sent from when this returns on arrive.
    fn listen(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Listening>>>;
}

/// A listening connection.
pub(crate) trait Listening: Send {
    /// The next notice; `None` once the connection is lost (then listen again).
    fn next(&mut self) -> BoxFuture<'_, anyhow::Result<Option<Notice>>>;
}

/// The PostgreSQL carrier.
struct PgCarrier {
    url: String,
    announcer: listen::Announcer,
}

impl Carrier for PgCarrier {
    fn announce<'a>(&'a self, payloads: &'a [String]) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.announcer.announce(payloads).await?) })
    }

    fn listen(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Listening>>> {
        Box::pin(async move {
            let notices = listen::Notices::connect(&self.url).await?;
            Ok(Box::new(notices) as Box<dyn Listening>)
        })
    }
}

impl Listening for listen::Notices {
    fn next(&mut self) -> BoxFuture<'_, anyhow::Result<Option<Notice>>> {
        Box::pin(async move { Ok(listen::Notices::next(self).await?) })
    }
}

/// This node's place among the others.
pub(crate) struct Cluster {
    /// Random per process: tells this node's notices from the others'.
    node: String,
    /// `None` on a single node.
    outbox: Option<Outbox>,
}

struct Outbox {
    tx: mpsc::UnboundedSender<String>,
    /// Taken by [`spawn`].
    rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    carrier: Arc<dyn Carrier>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("clustered", &self.outbox.is_some())
            .finish()
    }
}

impl Cluster {
    /// A node of the database at `url`: clustered on PostgreSQL, alone on anything else.
    pub(crate) fn for_url(url: &str) -> Self {
        let node = crate::auth::random_id(12);
        let outbox = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            match listen::Announcer::new(url) {
                Ok(announcer) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Some(Outbox {
                        tx,
                        rx: Mutex::new(Some(rx)),
                        carrier: Arc::new(PgCarrier {
                            url: url.to_string(),
                            announcer,
                        }),
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reach the other server nodes");
                    None
                }
            }
        } else {
            None
        };
        Self { node, outbox }
    }

    /// Tells the other nodes (in the order of the calls); nothing on a single node.
    pub(crate) fn announce(&self, what: Announcement<'_>) {
        if let Some(outbox) = &self.outbox {
            // Fails only once the sending task is gone, at shutdown.
            let _ = outbox.tx.send(what.encode(&self.node));
        }
    }

    /// The cross-node state of a new channel; `None` on a single node.
    pub(crate) fn link(self: &Arc<Self>, session_id: &str) -> Option<ChannelLink> {
        self.outbox.as_ref().map(|_| ChannelLink {
            cluster: self.clone(),
            session_id: session_id.to_string(),
            announced: AtomicU64::new(0),
            catching_up: AtomicBool::new(false),
            confirmed_generation: AtomicU64::new(0),
            heartbeat_announced: Mutex::new(None),
        })
    }
}

/// What a session channel keeps on a clustered node.
#[derive(Debug)]
pub(crate) struct ChannelLink {
    cluster: Arc<Cluster>,
    session_id: String,
    /// The highest sequence number a notice announced.
    announced: AtomicU64,
    /// True while a task catches the channel up to `announced`.
    catching_up: AtomicBool,
    /// The newest local worker generation whose own attach notice came back: workers up
    /// to it attached before any attach notice that follows.
    confirmed_generation: AtomicU64,
    /// When a heartbeat received here was last passed on.
    heartbeat_announced: Mutex<Option<std::time::Instant>>,
}

impl ChannelLink {
    /// Announces a worker connection attached here.
    pub(crate) fn worker_attached(&self, generation: u64) {
        self.cluster.announce(Announcement::WorkerAttached {
            session_id: &self.session_id,
            generation,
        });
    }

    /// Passes a v2 worker's sign of life on to the node holding its event stream (this
    /// one has none), at most once a second.
    pub(crate) fn heartbeat_elsewhere(&self) {
        let mut last = self
            .heartbeat_announced
            .lock()
            .expect("heartbeat lock poisoned");
        if last.is_some_and(|t| t.elapsed() < HEARTBEAT_ANNOUNCE_INTERVAL) {
            return;
        }
        *last = Some(std::time::Instant::now());
        self.cluster
            .announce(Announcement::Heartbeat(&self.session_id));
    }
}

/// Publishes an event this node just appended, after any event another node appended
/// before it. Call with the session's append lock held.
pub(crate) async fn publish_in_order(
    state: &AppState,
    session_id: &str,
    channel: &SessionChannel,
    event: LogEvent,
) {
    if channel.cluster.is_some() {
        if event.seq < channel.next_seq() {
            // A notice got here first and its catch-up published it.
            return;
        }
        if event.seq > channel.next_seq() {
            if let Err(e) = catch_up(state, session_id, channel, event.seq - 1).await {
                // Publishing it now would open a gap; its own notice brings it.
                tracing::warn!(error = %e, "cannot read events appended on another node");
                return;
            }
            if event.seq != channel.next_seq() {
                return;
            }
        }
    }
    channel.publish(event);
}

/// Publishes the log's events from the channel's `next_seq` through `upto`. Call with
/// the session's append lock held.
async fn catch_up(
    state: &AppState,
    session_id: &str,
    channel: &SessionChannel,
    upto: u64,
) -> Result<(), StoreError> {
    let mut published = false;
    while channel.next_seq() <= upto {
        let query = EventQuery {
            after: Some(channel.next_seq() - 1),
            before: upto.checked_add(1),
            limit: PAGE,
            ..Default::default()
        };
        let events = state.store().events(session_id, &query).await?;
        if events.is_empty() {
            break;
        }
        for e in events {
            if e.seq < channel.next_seq() {
                continue;
            }
            channel.publish(LogEvent {
                seq: e.seq,
                direction: e.direction,
                kind: e.kind,
                uuid: e.uuid,
                created_at: e.created_at,
                payload: e.payload,
                offset: 0,
            });
            published = true;
        }
    }
    if published {
        // Another node stored them, and maybe a new status with them.
        *channel.status.lock().expect("status lock poisoned") = None;
    }
    Ok(())
}

/// Has the channel publish everything through `seq`, in a task of its own (one per
/// channel at a time) so a busy session never holds up the notices of the others.
fn follow(state: &AppState, session_id: &str, channel: &Arc<SessionChannel>, seq: u64) {
    let Some(link) = &channel.cluster else {
        return;
    };
    if seq < channel.next_seq() {
        return;
    }
    link.announced.fetch_max(seq, Ordering::SeqCst);
    if link.catching_up.swap(true, Ordering::SeqCst) {
        return;
    }
    let state = state.clone();
    let channel = channel.clone();
    let session_id = session_id.to_string();
    tokio::spawn(async move {
        let Some(link) = &channel.cluster else {
            return;
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let target = link.announced.load(Ordering::SeqCst);
            if target >= channel.next_seq() {
                let caught_up = {
                    let _in_order = channel.append.lock().await;
                    catch_up(&state, &session_id, &channel, target).await
                };
                if let Err(e) = caught_up {
                    tracing::warn!(error = %e, "cannot read events appended on another node");
                    if channel.closed.is_cancelled() || state.shutdown().is_triggered() {
                        link.catching_up.store(false, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            link.catching_up.store(false, Ordering::SeqCst);
            // A notice that came in after the load above found the flag still set.
            if link.announced.load(Ordering::SeqCst) < channel.next_seq()
                || link.catching_up.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    });
}

/// Starts sending and receiving notices, on a clustered node.
pub(crate) fn spawn(state: &AppState) {
    let Some(outbox) = &state.cluster().outbox else {
        return;
    };
    let Some(rx) = outbox.rx.lock().expect("outbox lock poisoned").take() else {
        return;
    };
    tracing::info!(node = %state.cluster().node, "joining the other server nodes on the database");
    tokio::spawn(send(state.clone(), rx, outbox.carrier.clone()));
    tokio::spawn(receive(state.clone(), outbox.carrier.clone()));
}

/// Sends this node's announcements, in order, batching what queued up meanwhile.
async fn send(state: AppState, mut rx: mpsc::UnboundedReceiver<String>, carrier: Arc<dyn Carrier>) {
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            // What is queued still goes out: a closing node loses nothing it announced.
            () = state.shutdown().wait() => rx.try_recv().ok(),
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        for attempt in 1.. {
            match carrier.announce(&batch).await {
                Ok(()) => break,
                Err(e) if attempt < 8 => {
                    tracing::warn!(error = %e, "cannot reach the other server nodes; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::error!(error = %e, dropped = batch.len(), "cannot reach the other server nodes");
                    break;
                }
            }
        }
    }
}

/// Listens to the other nodes, reconnecting (and catching up) whenever the connection
/// is lost, until shutdown.
async fn receive(state: AppState, carrier: Arc<dyn Carrier>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listening = tokio::select! {
            l = carrier.listen() => l,
            () = state.shutdown().wait() => return,
        };
        let mut listening = match listening {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot listen to the other server nodes");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = state.shutdown().wait() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Whatever was sent before this connection listened is read from the store.
        resync(&state).await;
        loop {
            let notice = tokio::select! {
                n = listening.next() => n,
                () = state.shutdown().wait() => return,
            };
            match notice {
                Ok(Some(notice)) => handle(&state, notice),
                Ok(None) => {
                    tracing::warn!("lost the connection to the other server nodes; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection to the other server nodes; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Acts on one notice.
fn handle(state: &AppState, notice: Notice) {
    match notice {
        Notice::Event(payload) => {
            if let Some((session_id, seq)) = listen::parse_event_notice(&payload) {
                if let Some(channel) = state.hub().get(session_id) {
                    follow(state, session_id, &channel, seq);
                }
            }
        }
        Notice::Control(payload) => {
            let mut parts = payload.split(' ');
            let (Some(kind), Some(node), arg) = (parts.next(), parts.next(), parts.next()) else {
                return;
            };
            let arg = arg.unwrap_or("");
            let mine = node == state.cluster().node;
            match kind {
                "a" => {
                    let Some(generation) = parts.next().and_then(|g| g.parse::<u64>().ok()) else {
                        return;
                    };
                    worker_attached(state, arg, mine, generation);
                }
                _ if mine => {}
                "w" => state.dispatcher().wake_local(arg),
                "c" => state.hub().close_local(arg),
                "r" => state.revocations().revoke(arg),
                "h" => {
                    if let Some(channel) = state.hub().get(arg) {
                        channel.note_heartbeat();
                    }
                }
                "k" => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = state.reload_signing_keys().await {
                            tracing::warn!(error = ?e, "reloading signing keys failed");
                        }
                    });
                }
                _ => tracing::debug!(%payload, "ignoring an unknown notice"),
            }
        }
    }
}

/// A worker attached somewhere: here (`mine`), it is confirmed; elsewhere, this node's
/// workers that attached before it close, and the delivery cursor cached here is stale.
fn worker_attached(state: &AppState, session_id: &str, mine: bool, generation: u64) {
    let Some(channel) = state.hub().get(session_id) else {
        return;
    };
    let Some(link) = &channel.cluster else { return };
    if mine {
        link.confirmed_generation
            .fetch_max(generation, Ordering::SeqCst);
        return;
    }
    channel.supersede_up_to(link.confirmed_generation.load(Ordering::SeqCst));
    tokio::spawn(async move {
        *channel.delivery.lock().await = None;
    });
}

/// After (re)connecting the listener: everything that may have been missed is read
/// from the store.
async fn resync(state: &AppState) {
    state.dispatcher().wake_all();
    for (session_id, channel) in state.hub().live() {
        match state.store().session(&session_id).await {
            Ok(s) if s.status == SessionStatus::Archived || s.archived_at.is_some() => {
                state.hub().close_local(&session_id);
            }
            Ok(s) => {
                *channel.status.lock().expect("status lock poisoned") = None;
                follow(state, &session_id, &channel, s.last_seq);
            }
            Err(StoreError::NotFound) => state.hub().close_local(&session_id),
            Err(e) => tracing::warn!(error = %e, "cannot catch a session up after reconnecting"),
        }
    }
    let store = state.store().clone();
    state
        .revocations()
        .sweep(store.as_ref(), crate::time::now_ms())
        .await;
    if let Err(e) = state.reload_signing_keys().await {
        tracing::warn!(error = ?e, "reloading signing keys failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_name_their_node() {
        assert_eq!(Announcement::WorkQueued("env_1").encode("n1"), "w n1 env_1");
        assert_eq!(
            Announcement::WorkerAttached {
                session_id: "s",
                generation: 3
            }
            .encode("n1"),
            "a n1 s 3"
        );
    }

    #[test]
    fn a_single_node_has_no_link() {
        let cluster = Arc::new(Cluster::for_url("sqlite::memory:"));
        assert!(cluster.link("s").is_none());
        // Announcing is a no-op without a carrier.
        cluster.announce(Announcement::SessionClosed("s"));
    }
}
