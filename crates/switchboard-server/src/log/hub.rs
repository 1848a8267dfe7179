//! The in-memory side of each session: its live broadcast channel, the lock that keeps
//! appends and publishes in sequence order, the worker slot and the worker's delivery
//! cursor.
//!
//! The store is the source of truth; the hub only makes new events reach connected
//! readers without a database round trip. Only the `log` module takes the channel's
//! locks or follows it (see `append.rs` and `follow.rs`); other modules see a session's
//! channel through a few methods (heartbeats, whether a worker is connected).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use switchboard_store::{Direction, SessionStatus};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// One event of a session's log, as the hub passes it around.
#[derive(Debug)]
pub(crate) struct LogEvent {
    /// Position in the log.
    pub(crate) seq: u64,
    /// Which way it travels.
    pub(crate) direction: Direction,
    /// The message `type`.
    pub(crate) kind: String,
    /// The message `uuid`, if it has one.
    pub(crate) uuid: Option<String>,
    /// When it was appended.
    pub(crate) created_at: switchboard_store::Millis,
    /// The message, serialized JSON object, verbatim.
    pub(crate) payload: String,
    /// How many payload bytes the session's channel had published up to and including
    /// this event (set by [`SessionChannel::publish`]): a reader holding this event is
    /// `published_bytes() - offset` bytes behind.
    pub(super) offset: u64,
}

impl LogEvent {
    /// The payload with the sequence number attached, for readers that resume by it.
    ///
    /// Payloads are JSON objects the server serialized itself (so they start with `{`
    /// and carry no `sequence_num` of their own), which makes splicing the field in
    /// exact and cheaper than a parse and re-serialization per reader.
    pub(crate) fn with_sequence(&self) -> String {
        with_sequence(&self.payload, self.seq)
    }
}

/// Splices `"sequence_num":seq` into a serialized JSON object.
pub(crate) fn with_sequence(payload: &str, seq: u64) -> String {
    let field = switchboard_proto::sessions::SEQUENCE_FIELD;
    let rest = payload.strip_prefix('{').unwrap_or(payload).trim_start();
    if rest.starts_with('}') {
        format!("{{\"{field}\":{seq}}}")
    } else {
        format!("{{\"{field}\":{seq},{rest}")
    }
}

/// The live state of one session.
#[derive(Debug)]
pub(crate) struct SessionChannel {
    tx: broadcast::Sender<Arc<LogEvent>>,
    /// Held across "append to the store, publish to the channel" so that events are
    /// published in sequence order.
    pub(super) append: tokio::sync::Mutex<()>,
    /// Held while inbound events are handed to a worker (either plane); guards the
    /// cached cursor, the highest inbound sequence number handed over (`None` until read
    /// from the store).
    pub(super) delivery: Arc<tokio::sync::Mutex<Option<u64>>>,
    /// Generation of the current worker connection; a newer connection bumps it and
    /// older ones close.
    worker_generation: watch::Sender<u64>,
    next_generation: AtomicU64,
    workers: AtomicUsize,
    /// Cancelled when the session is archived: its connections end.
    pub(super) closed: CancellationToken,
    /// When a v2 worker last sent a heartbeat (or any state report).
    last_heartbeat: Mutex<Option<std::time::Instant>>,
    /// The session's status and pending request as last stored (`None` until read), so
    /// long-lived connections need not trust the snapshot they started with.
    pub(super) status: Mutex<Option<(SessionStatus, Option<serde_json::Value>)>>,
    /// Payload bytes published so far: with each event's `offset`, how far behind a
    /// reader is in bytes (the channel bounds readers by event count only).
    published_bytes: AtomicU64,
    /// Woken on every publish, for readers that watch how far behind they are while
    /// they wait on a slow socket.
    grown: tokio::sync::Notify,
    /// The next sequence number this channel publishes: with several nodes, events
    /// appended elsewhere are read from the log up to here first (see `cluster`).
    next_seq: AtomicU64,
    /// Cross-node state; `None` on a single node (see `cluster`).
    pub(crate) cluster: Option<crate::log::cluster::ChannelLink>,
}

impl SessionChannel {
    fn new(
        capacity: usize,
        next_seq: u64,
        cluster: Option<crate::log::cluster::ChannelLink>,
    ) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            append: tokio::sync::Mutex::new(()),
            delivery: Arc::new(tokio::sync::Mutex::new(None)),
            worker_generation: watch::channel(0).0,
            next_generation: AtomicU64::new(0),
            workers: AtomicUsize::new(0),
            closed: CancellationToken::new(),
            last_heartbeat: Mutex::new(None),
            status: Mutex::new(None),
            published_bytes: AtomicU64::new(0),
            grown: tokio::sync::Notify::new(),
            next_seq: AtomicU64::new(next_seq),
            cluster,
        }
    }

    /// The next sequence number this channel will publish.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }

    /// Records a sign of life from a v2 worker; with several nodes, also on the node
    /// that holds its event stream.
    pub(crate) fn heartbeat(&self) {
        self.note_heartbeat();
        if let Some(link) = &self.cluster {
            if !self.has_worker() {
                link.heartbeat_elsewhere();
            }
        }
    }

    /// Records a sign of life from a v2 worker, on this node only.
    pub(crate) fn note_heartbeat(&self) {
        *self.last_heartbeat.lock().expect("heartbeat lock poisoned") =
            Some(std::time::Instant::now());
    }

    /// How long since the last sign of life, if there was one.
    pub(crate) fn heartbeat_age(&self) -> Option<std::time::Duration> {
        self.last_heartbeat
            .lock()
            .expect("heartbeat lock poisoned")
            .map(|t| t.elapsed())
    }

    /// Follows the session's new events.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<LogEvent>> {
        self.tx.subscribe()
    }

    /// Publishes an event that was just committed, stamping its `offset`. Call with
    /// `append` held.
    pub(super) fn publish(&self, mut event: LogEvent) -> usize {
        let len = event.payload.len() as u64;
        event.offset = self.published_bytes.fetch_add(len, Ordering::SeqCst) + len;
        self.next_seq.fetch_max(event.seq + 1, Ordering::SeqCst);
        let receivers = self.tx.send(Arc::new(event)).unwrap_or(0);
        self.grown.notify_waiters();
        receivers
    }

    /// Payload bytes published on this channel so far.
    pub(super) fn published_bytes(&self) -> u64 {
        self.published_bytes.load(Ordering::SeqCst)
    }

    /// Resolves at the next publish (register it before checking, so none is missed).
    pub(super) fn grown(&self) -> tokio::sync::futures::Notified<'_> {
        self.grown.notified()
    }

    /// Registers a new worker connection, which takes over from any older one.
    pub(super) fn attach_worker(self: &Arc<Self>) -> WorkerGuard {
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.worker_generation.send_replace(generation);
        self.workers.fetch_add(1, Ordering::SeqCst);
        if let Some(link) = &self.cluster {
            link.worker_attached(generation);
        }
        WorkerGuard {
            channel: self.clone(),
            generation,
            rx: self.worker_generation.subscribe(),
        }
    }

    /// Closes the worker connections of this node whose generation is at most
    /// `generation` (a worker attached on another node after them took over).
    pub(crate) fn supersede_up_to(&self, generation: u64) {
        if *self.worker_generation.borrow() <= generation {
            let fresh = self.next_generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.worker_generation.send_replace(fresh);
        }
    }

    /// Whether any worker is connected.
    pub(crate) fn has_worker(&self) -> bool {
        self.workers.load(Ordering::SeqCst) > 0
    }
}

/// Held by a worker connection for as long as it lasts.
#[derive(Debug)]
pub(super) struct WorkerGuard {
    channel: Arc<SessionChannel>,
    generation: u64,
    rx: watch::Receiver<u64>,
}

impl WorkerGuard {
    /// True while no newer worker connection has taken over.
    pub(super) fn is_current(&self) -> bool {
        *self.rx.borrow() == self.generation
    }

    /// Resolves when a newer worker connection takes over.
    pub(super) async fn superseded(&mut self) {
        let generation = self.generation;
        // An error means the channel is gone, which cannot happen while we hold it.
        let _ = self.rx.wait_for(|g| *g != generation).await;
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.channel.workers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// All live session channels.
#[derive(Debug)]
pub(crate) struct Hub {
    channels: Mutex<HashMap<String, Arc<SessionChannel>>>,
    capacity: usize,
    cluster: Arc<crate::log::cluster::Cluster>,
}

impl Hub {
    pub(crate) fn new(capacity: usize, cluster: Arc<crate::log::cluster::Cluster>) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            capacity: capacity.max(16),
            cluster,
        }
    }

    /// The channel of a session, created on first use. `session` must have been read
    /// from the store before this call: a new channel publishes from its `last_seq` on
    /// (everything before it is in the backlog any reader reads after subscribing).
    pub(crate) fn channel(&self, session: &switchboard_store::Session) -> Arc<SessionChannel> {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        channels
            .entry(session.id.clone())
            .or_insert_with(|| {
                let link = self.cluster.link(&session.id);
                Arc::new(SessionChannel::new(
                    self.capacity,
                    session.last_seq + 1,
                    link,
                ))
            })
            .clone()
    }

    /// Every live channel, with its session id.
    pub(crate) fn live(&self) -> Vec<(String, Arc<SessionChannel>)> {
        let channels = self.channels.lock().expect("hub lock poisoned");
        channels
            .iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect()
    }

    /// The channel of a session, if one is live.
    pub(crate) fn get(&self, session_id: &str) -> Option<Arc<SessionChannel>> {
        self.channels
            .lock()
            .expect("hub lock poisoned")
            .get(session_id)
            .cloned()
    }

    /// Ends a session's connections, on every node, and forgets its channel.
    pub(crate) fn close(&self, session_id: &str) {
        self.close_local(session_id);
        self.cluster
            .announce(crate::log::cluster::Announcement::SessionClosed(session_id));
    }

    /// Ends a session's connections on this node and forgets its channel.
    pub(crate) fn close_local(&self, session_id: &str) {
        if let Some(channel) = self
            .channels
            .lock()
            .expect("hub lock poisoned")
            .remove(session_id)
        {
            channel.closed.cancel();
        }
    }

    /// Forgets channels nobody uses; they are rebuilt from the store on demand.
    pub(crate) fn sweep(&self) {
        self.channels
            .lock()
            .expect("hub lock poisoned")
            .retain(|_, c| Arc::strong_count(c) > 1 || c.tx.receiver_count() > 0);
    }

    /// How many sessions have a live channel.
    pub(crate) fn len(&self) -> usize {
        self.channels.lock().expect("hub lock poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_is_spliced_into_objects() {
        assert_eq!(with_sequence("{}", 3), r#"{"sequence_num":3}"#);
        assert_eq!(
            with_sequence(r#"{"type":"user"}"#, 7),
            r#"{"sequence_num":7,"type":"user"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&with_sequence(r#"{"a":{"b":1}}"#, 9)).unwrap();
        assert_eq!(v["sequence_num"], 9);
        assert_eq!(v["a"]["b"], 1);
    }
}
