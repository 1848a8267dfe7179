//! Following a session's log: the one way events leave the server.
//!
//! A [`Follower`] subscribes to the session's channel first, then reads the backlog from
//! the store, then follows the channel, skipping sequence numbers it has already handed
//! out. While it follows without a gap, what the channel brings goes out as it is,
//! without a database read; after a gap (at the start, or when it lagged behind the
//! channel) a worker reads the log again, while a viewer is cut and resumes by sequence
//! number. It hands out [`Batch`]es: everything ready at once. The transport writes a
//! batch and then acknowledges it ([`Follower::ack`]); only then does a worker's
//! delivery cursor move, so a batch whose write failed goes to the next connection again.
//!
//! Workers (either plane) hand events over under the session's delivery lock, which a
//! batch holds until it is acknowledged or dropped, and only the newest worker
//! connection delivers. The worker cursor is kept in the session's channel and stored in
//! the background.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_store::{Direction, EventQuery, Session, StoredEvent};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::OwnedMutexGuard;

use super::hub::{LogEvent, SessionChannel, WorkerGuard};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;

/// How many stored events one read of a viewer's backlog takes.
const VIEWER_PAGE: u32 = 500;
/// How many stored events one read for a worker takes.
const WORKER_PAGE: u32 = 100;

/// Who follows the log, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// A viewer: every event after `from`, or, without it, the most recent
    /// `viewer_backlog` events (all, when that is unset).
    Viewer {
        /// The last sequence number the viewer has.
        from: Option<u64>,
    },
    /// The v1 worker's socket: inbound events after the session's worker cursor.
    WorkerV1,
    /// The v2 worker's event stream: inbound events after `from`. A `fresh` worker (one
    /// that names no event to resume from) skips what an earlier worker already
    /// received, except prompts that were never processed.
    WorkerV2 {
        /// The last sequence number the worker has (0: none).
        from: u64,
        /// Whether the worker named no event to resume from.
        fresh: bool,
    },
}

/// Why a follower stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// A viewer fell behind the session's channel; it resumes after this sequence number.
    Lagged {
        /// The last sequence number the viewer was given.
        resume_from: u64,
    },
    /// The session's channel closed.
    Closed,
    /// A newer worker connection took the session over.
    Superseded,
    /// The session was archived.
    Archived,
    /// The log could not be read (logged).
    Failed,
}

/// Events ready for one write, oldest first. Iterating takes them out.
#[derive(Debug)]
pub(crate) struct Batch {
    events: VecDeque<Arc<LogEvent>>,
    len: usize,
    /// The position the batch starts after, and the one it ends at (which may lie past
    /// its last event, when events a fresh worker skips end it).
    start: u64,
    end: u64,
    /// A worker's delivery cursor, held until the batch is acknowledged or dropped.
    cursor: Option<OwnedMutexGuard<Option<u64>>>,
    /// A viewer's byte count of events taken off the channel (see [`Lag`]).
    taken: Option<Arc<AtomicU64>>,
}

impl Batch {
    fn new(start: u64, end: u64, events: VecDeque<Arc<LogEvent>>) -> Self {
        Self {
            len: events.len(),
            events,
            start,
            end,
            cursor: None,
            taken: None,
        }
    }
}

impl Iterator for Batch {
    type Item = Arc<LogEvent>;

    /// The next event to write; for a viewer it stops counting as behind from now on.
    fn next(&mut self) -> Option<Arc<LogEvent>> {
        let event = self.events.pop_front()?;
        if let Some(taken) = &self.taken {
            taken.fetch_max(event.offset, Ordering::SeqCst);
        }
        Some(event)
    }
}

/// How far a viewer is behind its session's channel, in bytes: what it has not taken off
/// the channel yet, which the channel keeps for it (up to its capacity in events). A
/// viewer beyond `max` is cut, so one that stops reading cannot pin the session's big
/// events in memory.
#[derive(Debug)]
struct Lag {
    /// The channel's `published_bytes` up to the last event this viewer took.
    taken: Arc<AtomicU64>,
    max: u64,
}

/// Who is reading.
#[derive(Debug)]
enum Reader {
    Viewer(Lag),
    Worker { guard: WorkerGuard, plane: Plane },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    /// Resumes from the session's worker cursor.
    V1,
    /// Resumes from where the stream says.
    V2,
}

/// One reader of a session's log. See the module documentation.
pub(crate) struct Follower {
    state: AppState,
    session_id: String,
    channel: Arc<SessionChannel>,
    live: broadcast::Receiver<Arc<LogEvent>>,
    reader: Reader,
    /// The last sequence number handed out (viewers, v2 workers; a v1 worker reads from
    /// the session's cursor).
    last: u64,
    /// The last sequence number acknowledged (viewers).
    acked: u64,
    /// The next batch comes from the store: at the start, and after a gap.
    from_log: bool,
    /// A v2 worker's first read skips what an earlier worker received.
    fresh: bool,
    /// Events taken off the channel and not handed out yet.
    taken: Vec<Arc<LogEvent>>,
    /// A viewer fell behind the channel; it ends once what it took is handed out.
    lagged: bool,
}

/// Starts following a session's log. It subscribes before anything is read, so nothing
/// appended from here on is missed. A worker takes the session's delivery over from any
/// older connection of it at once.
pub(crate) async fn follow(state: &AppState, session: &Session, audience: Audience) -> Follower {
    let channel = state.hub().channel(session);
    let (reader, last, fresh) = match audience {
        Audience::Viewer { from } => {
            // Everything published from here on counts against the viewer until it
            // takes it.
            let lag = Lag {
                taken: Arc::new(AtomicU64::new(channel.published_bytes())),
                max: state.options().viewer_max_lag_bytes,
            };
            (Reader::Viewer(lag), from, false)
        }
        Audience::WorkerV1 => {
            let guard = channel.attach_worker();
            let reader = Reader::Worker {
                guard,
                plane: Plane::V1,
            };
            (reader, Some(0), false)
        }
        Audience::WorkerV2 { from, fresh } => {
            let guard = channel.attach_worker();
            channel.heartbeat();
            let reader = Reader::Worker {
                guard,
                plane: Plane::V2,
            };
            (reader, Some(from), fresh)
        }
    };
    // Subscribe before reading the backlog; overlap is skipped by sequence number.
    let live = channel.subscribe();
    let last = match last {
        Some(last) => last,
        None => viewer_backlog_start(state, session).await.unwrap_or(0),
    };
    Follower {
        state: state.clone(),
        session_id: session.id.clone(),
        channel,
        live,
        reader,
        last,
        acked: last,
        from_log: true,
        fresh,
        taken: Vec::new(),
        lagged: false,
    }
}

/// Where a viewer that names no sequence number starts: the beginning, or the most
/// recent `viewer_backlog` events.
async fn viewer_backlog_start(state: &AppState, session: &Session) -> Result<u64, ApiError> {
    let Some(n) = state.options().viewer_backlog else {
        return Ok(0);
    };
    let query = EventQuery {
        latest: true,
        limit: n.max(1),
        ..Default::default()
    };
    let newest = state.store().events(&session.id, &query).await?;
    Ok(newest.first().map_or(session.last_seq, |e| e.seq - 1))
}

impl Follower {
    /// The next batch, once there is one. Cancel safe: events taken off the channel stay
    /// with the follower until they are handed out.
    pub(crate) async fn next(&mut self) -> Result<Batch, End> {
        loop {
            if self.lagged {
                return Err(End::Lagged {
                    resume_from: self.last,
                });
            }
            if !self.from_log && self.taken.is_empty() {
                self.wait().await?;
            }
            let batch = match self.reader {
                Reader::Viewer(_) => self.viewer_batch().await?,
                Reader::Worker { plane, .. } => self.worker_batch(plane).await?,
            };
            if let Some(batch) = batch {
                return Ok(batch);
            }
        }
    }

    /// Records that a batch was written: a worker's cursor moves past it (stored in the
    /// background), a viewer's position too.
    pub(crate) fn ack(&mut self, batch: Batch) {
        Metrics::add(&self.state.metrics().events_delivered, batch.len as u64);
        self.acked = self.acked.max(batch.end);
        if let Some(mut cursor) = batch.cursor {
            *cursor = Some(cursor.unwrap_or(0).max(batch.end));
            drop(cursor);
            if batch.end > batch.start {
                store_worker_cursor_later(&self.state, &self.session_id, batch.end);
            }
        }
    }

    /// The last sequence number acknowledged (for a viewer's resume point).
    pub(crate) fn position(&self) -> u64 {
        self.acked
    }

    /// Resolves when a newer worker connection takes over (never, for a viewer).
    pub(crate) async fn superseded(&mut self) {
        superseded(&mut self.reader).await;
    }

    /// Resolves once a viewer is more than its byte bound (`viewer_max_lag_bytes`)
    /// behind the session's channel (never, for a worker). A write to a viewer races
    /// this, so one that stops reading cannot hold the server's memory.
    pub(crate) async fn overrun(&self) {
        let Reader::Viewer(lag) = &self.reader else {
            return std::future::pending().await;
        };
        loop {
            // Registered before the check, so a publish in between still wakes us.
            let grown = self.channel.grown();
            tokio::pin!(grown);
            grown.as_mut().enable();
            let behind = self
                .channel
                .published_bytes()
                .saturating_sub(lag.taken.load(Ordering::SeqCst));
            if behind > lag.max {
                return;
            }
            grown.await;
        }
    }

    /// How long since the worker's last sign of life (v2 heartbeats), if there was one.
    pub(crate) fn heartbeat_age(&self) -> Option<Duration> {
        self.channel.heartbeat_age()
    }

    /// Waits for the channel to bring something, and takes everything ready with it.
    async fn wait(&mut self) -> Result<(), End> {
        let received = tokio::select! {
            received = self.live.recv() => received,
            () = self.channel.closed.cancelled() => return Err(End::Archived),
            () = superseded(&mut self.reader) => return Err(End::Superseded),
        };
        match received {
            Ok(event) => {
                self.taken.push(event);
                loop {
                    match self.live.try_recv() {
                        Ok(event) => self.taken.push(event),
                        Err(TryRecvError::Lagged(_)) => {
                            self.fell_behind();
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(RecvError::Lagged(_)) => self.fell_behind(),
            Err(RecvError::Closed) => return Err(End::Closed),
        }
        Ok(())
    }

    /// The follower fell behind the channel: a worker goes back to the log, which has
    /// everything; a viewer is cut once it has what it took.
    fn fell_behind(&mut self) {
        match self.reader {
            Reader::Viewer(_) => self.lagged = true,
            Reader::Worker { .. } => {
                self.taken.clear();
                self.from_log = true;
            }
        }
    }

    async fn viewer_batch(&mut self) -> Result<Option<Batch>, End> {
        let Reader::Viewer(lag) = &self.reader else {
            return Ok(None);
        };
        let taken = lag.taken.clone();
        let mut batch = if self.from_log {
            let query = EventQuery {
                after: Some(self.last),
                limit: VIEWER_PAGE,
                ..Default::default()
            };
            let events = self.read(&query).await?;
            if events.len() < VIEWER_PAGE as usize {
                self.from_log = false;
            }
            let events: VecDeque<_> = events.into_iter().map(from_store).collect();
            let end = events.back().map_or(self.last, |e| e.seq);
            Batch::new(self.last, end, events)
        } else {
            let mut events = VecDeque::with_capacity(self.taken.len());
            let mut end = self.last;
            for event in self.taken.drain(..) {
                if event.seq > end {
                    end = event.seq;
                    events.push_back(event);
                } else {
                    // Already sent from the backlog; taken all the same.
                    taken.fetch_max(event.offset, Ordering::SeqCst);
                }
            }
            Batch::new(self.last, end, events)
        };
        if batch.len == 0 {
            return Ok(None);
        }
        self.last = batch.end;
        batch.taken = Some(taken);
        Ok(Some(batch))
    }

    async fn worker_batch(&mut self, plane: Plane) -> Result<Option<Batch>, End> {
        // Only inbound events go to workers; nothing else needs the delivery lock.
        if !self.from_log && !self.taken.iter().any(|e| e.direction == Direction::Inbound) {
            self.taken.clear();
            return Ok(None);
        }
        let mut cursor = self.channel.delivery.clone().lock_owned().await;
        if !matches!(&self.reader, Reader::Worker { guard, .. } if guard.is_current()) {
            return Err(End::Superseded);
        }
        let start = match plane {
            Plane::V2 => self.last,
            Plane::V1 => match *cursor {
                Some(c) => c,
                None => {
                    let stored = match self.state.store().session(&self.session_id).await {
                        Ok(s) => s.worker_cursor,
                        Err(e) => return Err(failed(e.into())),
                    };
                    *cursor = Some(stored);
                    self.from_log = true;
                    stored
                }
            },
        };
        let (events, end) = if self.from_log {
            let fresh = self.fresh;
            let query = EventQuery {
                after: Some(start),
                direction: Some(Direction::Inbound),
                exclude_processed: fresh,
                limit: WORKER_PAGE,
                ..Default::default()
            };
            let stored = self.read(&query).await?;
            if stored.len() < WORKER_PAGE as usize {
                // Caught up with the log, which holds everything taken off the channel.
                self.from_log = false;
                self.fresh = false;
                self.taken.clear();
            }
            let end = stored.last().map_or(start, |e| e.seq);
            let events: VecDeque<_> = stored
                .into_iter()
                // A fresh worker skips what an earlier one received, except prompts.
                .filter(|e| !(fresh && e.delivery.is_some() && e.kind != "user"))
                .map(from_store)
                .collect();
            (events, end)
        } else {
            let mut end = start;
            let events: VecDeque<_> = self
                .taken
                .drain(..)
                .filter(|e| e.direction == Direction::Inbound && e.seq > start)
                .inspect(|e| end = e.seq)
                .collect();
            (events, end)
        };
        if plane == Plane::V2 {
            self.last = end;
        }
        let mut batch = Batch::new(start, end, events);
        batch.cursor = Some(cursor);
        if batch.len == 0 {
            // Nothing to write, but what a fresh worker skipped counts as delivered.
            if end > start {
                self.ack(batch);
            }
            return Ok(None);
        }
        Ok(Some(batch))
    }

    async fn read(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, End> {
        self.state
            .store()
            .events(&self.session_id, query)
            .await
            .map_err(|e| failed(e.into()))
    }
}

async fn superseded(reader: &mut Reader) {
    match reader {
        Reader::Worker { guard, .. } => guard.superseded().await,
        Reader::Viewer(_) => std::future::pending().await,
    }
}

fn failed(e: ApiError) -> End {
    tracing::error!(error = ?e, "cannot read the session log");
    End::Failed
}

/// A stored event in the form the channel carries.
fn from_store(e: StoredEvent) -> Arc<LogEvent> {
    Arc::new(LogEvent {
        seq: e.seq,
        direction: e.direction,
        kind: e.kind,
        uuid: e.uuid,
        created_at: e.created_at,
        payload: e.payload,
        offset: 0,
    })
}

/// Stores how far a worker got in the background, so delivery does not wait for a
/// commit. The write is monotonic, so their order does not matter; the cursor a
/// connection works from is the one kept in the session channel, and a crash before the
/// write lands only means the last events are delivered again.
fn store_worker_cursor_later(state: &AppState, session_id: &str, cursor: u64) {
    let store = state.store().clone();
    let session_id = session_id.to_string();
    tokio::spawn(async move {
        if let Err(e) = store.advance_worker_cursor(&session_id, cursor).await {
            tracing::warn!(error = ?e, "cannot store the worker cursor");
        }
    });
}
