//! The SQLite writer: one thread that owns the only writing connection and commits
//! whatever is waiting in one transaction (group commit).
//!
//! Each write is a closure sent to the thread with a reply channel. The thread takes the
//! first waiting job and everything queued behind it (up to [`MAX_BATCH`]), opens one
//! `BEGIN IMMEDIATE` transaction, runs each job inside a savepoint of its own (a failing
//! job rolls back only itself) and commits once; only then are the replies sent, so a
//! caller never hears of a write that might still be lost. Under load the cost of a
//! commit is shared by every session that wrote meanwhile; unloaded, a write costs one
//! hand-off to the thread and one back.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::exec;
use crate::{Result, StoreError};

/// The most jobs one transaction takes; bounds how long the first caller waits.
const MAX_BATCH: usize = 512;
/// How many jobs may queue for the thread before callers wait to enqueue.
const QUEUE: usize = 4096;

/// What the writer thread remembers between jobs: the last sequence number of each
/// session's log, so an append need not look it up. Only this thread writes, so it is
/// exact once read; it is forgotten whenever a transaction fails.
#[derive(Debug, Default)]
pub(super) struct LastSeqs(HashMap<String, u64>);

impl LastSeqs {
    /// Sessions remembered at most; past that the map starts over.
    const MAX: usize = 100_000;

    pub(super) fn get(&self, session_id: &str) -> Option<u64> {
        self.0.get(session_id).copied()
    }

    pub(super) fn set(&mut self, session_id: &str, seq: u64) {
        if self.0.len() >= Self::MAX && !self.0.contains_key(session_id) {
            self.0.clear();
        }
        self.0.insert(session_id.to_owned(), seq);
    }
}

/// A handle to the writer thread. The thread ends when every handle is gone, after
/// finishing the jobs already queued.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the thread that owns `conn`, and one that checkpoints through
    /// `checkpointer` (see [`checkpoint`]). Both end when every handle is gone.
    pub(super) fn start(conn: Connection, checkpointer: Connection) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let (alive, watched) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                run(conn, rx);
                drop(alive);
            })?;
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint(checkpointer, watched))?;
        Ok(Self { jobs })
    }

    /// Runs `f` in the writer's next transaction and returns its result once that
    /// transaction committed.
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection, &mut LastSeqs) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Call {
            f: Some(f),
            out: None,
            reply,
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Other(anyhow::anyhow!("the SQLite writer has stopped")))?;
        answer
            .await
            .map_err(|_| StoreError::Other(anyhow::anyhow!("the SQLite writer has stopped")))?
    }
}

/// A write waiting for the thread.
trait Job: Send {
    /// Runs the write inside the open transaction.
    fn run(&mut self, conn: &Connection, seqs: &mut LastSeqs);
    /// Reports the outcome once the transaction ended (`Err` when the commit failed).
    fn finish(self: Box<Self>, committed: &Result<(), Failed>);
}

impl std::fmt::Debug for dyn Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

struct Call<F, T> {
    f: Option<F>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> Job for Call<F, T>
where
    F: FnOnce(&Connection, &mut LastSeqs) -> Result<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection, seqs: &mut LastSeqs) {
        let Some(f) = self.f.take() else { return };
        let out = (|| {
            exec(conn, "SAVEPOINT job", [])?;
            let out =
                std::panic::catch_unwind(AssertUnwindSafe(|| f(conn, seqs))).unwrap_or_else(|_| {
                    Err(StoreError::Other(anyhow::anyhow!(
                        "a database write panicked"
                    )))
                });
            if matches!(out, Err(StoreError::StorageFull)) {
                warn_disk_full();
            }
            if out.is_err() {
                // What the job remembered may be rolled back with it.
                *seqs = LastSeqs::default();
                exec(conn, "ROLLBACK TO job", [])?;
            }
            if let Err(e) = exec(conn, "RELEASE job", []) {
                *seqs = LastSeqs::default();
                return Err(e);
            }
            out
        })();
        self.out = Some(out);
    }

    fn finish(self: Box<Self>, committed: &Result<(), Failed>) {
        let out = match (committed, self.out) {
            (Ok(()), Some(out)) => out,
            (Ok(()), None) => Err(StoreError::Other(anyhow::anyhow!("write never ran"))),
            (Err(Failed { full: true, .. }), _) => Err(StoreError::StorageFull),
            (Err(Failed { message, .. }), _) => Err(StoreError::Other(anyhow::anyhow!(
                "cannot commit to the SQLite database: {message}"
            ))),
        };
        // The caller may have given up waiting; the write stands either way.
        let _ = self.reply.send(out);
    }
}

/// Why a transaction did not commit.
#[derive(Debug)]
struct Failed {
    /// The disk is full (`SQLITE_FULL`).
    full: bool,
    message: String,
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Self {
            full: matches!(e, StoreError::StorageFull),
            message: e.to_string(),
        }
    }
}

/// How often a full disk is reported in the log while it lasts.
const FULL_DISK_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Lets a condition that repeats many times a second through to the log once per
/// interval, with the count of what was left out.
#[derive(Debug)]
struct Every {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Every {
    const fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(how many were left out since the last report)` when one is due.
    fn due(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The message a full disk is logged with.
const DISK_FULL: &str =
    "the disk holding the SQLite database is full: writes are refused until space is freed";

/// Logs that a write failed on a full disk, once per [`FULL_DISK_WARNING_EVERY`].
fn warn_disk_full() {
    static WARNING: std::sync::Mutex<Every> =
        std::sync::Mutex::new(Every::new(FULL_DISK_WARNING_EVERY));
    let due = WARNING.lock().unwrap_or_else(|e| e.into_inner()).due();
    if let Some(suppressed) = due {
        tracing::warn!(failed_since_last_warning = suppressed, "{DISK_FULL}");
    }
}

fn run(conn: Connection, mut jobs: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(64);
    let mut seqs = LastSeqs::default();
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let committed = match exec(&conn, "BEGIN IMMEDIATE", []) {
            Ok(_) => {
                for job in &mut batch {
                    job.run(&conn, &mut seqs);
                }
                exec(&conn, "COMMIT", []).map(drop).map_err(|e| {
                    let _ = exec(&conn, "ROLLBACK", []);
                    Failed::from(e)
                })
            }
            Err(e) => Err(Failed::from(e)),
        };
        if let Err(e) = &committed {
            seqs = LastSeqs::default();
            if e.full {
                warn_disk_full();
            } else {
                tracing::error!(error = %e.message, jobs = batch.len(), "SQLite transaction failed");
            }
        }
        for job in batch.drain(..) {
            job.finish(&committed);
        }
    }
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies committed pages from the WAL into the database file every [`CHECKPOINT_EVERY`]
/// without blocking the writer (`PASSIVE`), and syncs as `synchronous = NORMAL` says, so
/// the writer's commits rarely wait for the disk: when it finds the WAL wholly copied it
/// starts it over without a checkpoint of its own. Ends when the writer thread does.
/// A failing checkpoint (a full disk, typically) is logged once per
/// [`FULL_DISK_WARNING_EVERY`], not ten times a second.
fn checkpoint(conn: Connection, writer_alive: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut warning = Every::new(FULL_DISK_WARNING_EVERY);
    while let Err(RecvTimeoutError::Timeout) = writer_alive.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            if let Some(suppressed) = warning.due() {
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
                    tracing::warn!(
                        failed_since_last_warning = suppressed,
                        "SQLite checkpoint failed: {DISK_FULL}"
                    );
                } else {
                    tracing::warn!(error = %e, failed_since_last_warning = suppressed, "SQLite checkpoint failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone_in_a_shared_transaction() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT NOT NULL)")
            .unwrap();
        let writer = Writer::start(conn, Connection::open_in_memory().unwrap()).unwrap();

        // Hold the thread in a first job until both others are queued behind it, so
        // they share the next transaction.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .call(move |_, _| {
                        hold.recv().unwrap();
                        Ok(())
                    })
                    .await
            }
        });
        let failing = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .call(|c, _| {
                        c.execute("INSERT INTO t (v) VALUES ('failing')", [])?;
                        Err::<(), _>(StoreError::Conflict("no".into()))
                    })
                    .await
            }
        });
        let good = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .call(|c, _| Ok(c.execute("INSERT INTO t (v) VALUES ('good')", [])?))
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release.send(()).unwrap();

        first.await.unwrap().unwrap();
        assert!(matches!(
            failing.await.unwrap(),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(good.await.unwrap().unwrap(), 1);
        let rows = writer
            .call(|c, _| {
                let mut stmt = c.prepare("SELECT v FROM t")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(rows, vec!["good".to_string()]);
    }

    #[test]
    fn a_repeated_warning_is_let_through_once_per_interval_with_a_count() {
        let mut every = Every::new(std::time::Duration::from_millis(200));
        assert_eq!(every.due(), Some(0));
        for _ in 0..10 {
            assert_eq!(every.due(), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(every.due(), Some(10));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_writer_goes_on() {
        let writer = Writer::start(
            Connection::open_in_memory().unwrap(),
            Connection::open_in_memory().unwrap(),
        )
        .unwrap();
        let panicked = writer.call(|_, _| -> Result<()> { panic!("boom") }).await;
        assert!(panicked.is_err());
        assert_eq!(writer.call(|_, _| Ok(7)).await.unwrap(), 7);
    }
}
