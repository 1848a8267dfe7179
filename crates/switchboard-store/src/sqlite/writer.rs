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

use std::panic::AssertUnwindSafe;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::{Result, StoreError};

/// The most jobs one transaction takes; bounds how long the first caller waits.
const MAX_BATCH: usize = 512;
/// How many jobs may queue for the thread before callers wait to enqueue.
const QUEUE: usize = 4096;

/// A handle to the writer thread. The thread ends when every handle is gone, after
/// finishing the jobs already queued.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx))?;
        Ok(Self { jobs })
    }

    /// Runs `f` in the writer's next transaction and returns its result once that
    /// transaction committed.
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
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
    fn run(&mut self, conn: &Connection);
    /// Reports the outcome once the transaction ended (`Err` when the commit failed).
    fn finish(self: Box<Self>, committed: &Result<(), String>);
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
    F: FnOnce(&Connection) -> Result<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) {
        let Some(f) = self.f.take() else { return };
        let out = (|| {
            step(conn, "SAVEPOINT job")?;
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
                Err(StoreError::Other(anyhow::anyhow!(
                    "a database write panicked"
                )))
            });
            if out.is_err() {
                step(conn, "ROLLBACK TO job")?;
            }
            step(conn, "RELEASE job")?;
            out
        })();
        self.out = Some(out);
    }

    fn finish(self: Box<Self>, committed: &Result<(), String>) {
        let out = match (committed, self.out) {
            (Ok(()), Some(out)) => out,
            (Ok(()), None) => Err(StoreError::Other(anyhow::anyhow!("write never ran"))),
            (Err(e), _) => Err(StoreError::Other(anyhow::anyhow!(
                "cannot commit to the SQLite database: {e}"
            ))),
        };
        // The caller may have given up waiting; the write stands either way.
        let _ = self.reply.send(out);
    }
}

/// Runs a statement without parameters, through the connection's statement cache.
fn step(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn run(conn: Connection, mut jobs: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(64);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let committed = match step(&conn, "BEGIN IMMEDIATE") {
            Ok(()) => {
                for job in &mut batch {
                    job.run(&conn);
                }
                step(&conn, "COMMIT").map_err(|e| {
                    let _ = step(&conn, "ROLLBACK");
                    e.to_string()
                })
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, jobs = batch.len(), "SQLite transaction failed");
        }
        for job in batch.drain(..) {
            job.finish(&committed);
        }
    }
}
