//! The embedded SQLite backend: one database file in WAL mode.
//!
//! Every write goes to one thread that owns the only writing connection and commits what
//! is waiting in one transaction (group commit, `sqlite/writer.rs`): writers queue in the
//! process instead of fighting over SQLite's lock, and under load a commit serves many
//! sessions at once. Reads use their own connections, concurrent with the writer thanks
//! to WAL, on the blocking pool (never on the async runtime: see `read`).
//! The logs are ordinary tables in append order (migration 0002 says why).
//! `synchronous = NORMAL` makes a committed transaction survive the death of the process
//! (`kill -9`); only a power loss can drop the last transactions.

mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, Row};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::ConnectOptions as _;
use tracing::instrument;

use self::writer::Writer;
use crate::rules::{self, WorkMove};
use crate::*;

/// Idle read connections kept open; more are opened when more reads run at once.
const IDLE_READERS: usize = 8;
/// How long a connection waits for SQLite's file lock (only a checkpoint or another
/// process can hold it).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Readers>,
}

/// Read-only connections, reused.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Opens one connection to the database file (`flags`: read-only or read-write).
fn connect(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        flags | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| anyhow::anyhow!("cannot open SQLite database {path:?}: {e}"))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

impl Readers {
    /// Runs `f` on an idle read connection (or a new one).
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let idle = self.idle.lock().expect("reader pool poisoned").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => connect(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock().expect("reader pool poisoned");
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}

/// Copies the SQLite database a `sqlite://PATH` URL names into the new file `out`, as
/// one consistent snapshot, while a server may be writing to it (`switchboard backup`).
///
/// The copy is made by `VACUUM INTO` on a read-only connection of its own: in WAL mode
/// that is one read transaction, which sees every transaction committed before it began
/// and none after, and never blocks the server's writer (nor is blocked by it). `out` is
/// created here, empty and readable by its owner only (0600), before SQLite fills it; a
/// file that already exists is refused, not overwritten. The copy is synced and checked
/// with `PRAGMA quick_check`; on any failure it is removed. Blocking: call it off the
/// async runtime.
pub fn backup_to(url: &str, out: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;

    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("invalid SQLite URL {url:?}: {e}"))?;
    let path = options.get_filename().to_path_buf();
    if !path.is_file() {
        return Err(anyhow::anyhow!("there is no SQLite database at {}", path.display()).into());
    }
    let out_text = out
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("the backup path {out:?} is not valid UTF-8"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} exists already; back up to a new file (nothing was overwritten)",
                out.display()
            ),
            _ => anyhow::anyhow!("cannot create {}: {e}", out.display()),
        })?;
    let copied = (|| -> Result<()> {
        let source = connect(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        source
            .execute("VACUUM INTO ?1", [out_text])
            .map_err(|e| anyhow::anyhow!("cannot copy {}: {e}", path.display()))?;
        drop(source);
        std::fs::File::open(out)
            .and_then(|f| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", out.display()))?;
        let copy = connect(out, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = copy.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
        if check != "ok" {
            return Err(anyhow::anyhow!("the copy failed its check: {check}").into());
        }
        Ok(())
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(out);
    }
    copied
}

/// Keeps the database readable by its owner only: creates the file 0600 before SQLite
/// does (SQLite gives the `-wal` and `-shm` files it creates the database file's mode),
/// and tightens an existing database, `-wal` or `-shm` that others may read, with a
/// warning. In-memory databases have no files.
#[cfg(unix)]
fn secure_files(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let name = path.to_string_lossy();
    if name.is_empty() || name.contains(":memory:") || name.contains("mode=memory") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(anyhow::anyhow!("cannot create SQLite database {path:?}: {e}").into())
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{name}{suffix}"));
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| anyhow::anyhow!("cannot make {file:?} private (chmod 600): {e}"))?;
            tracing::warn!(
                file = %file.display(),
                "the database file was readable by other users (mode {mode:03o}); it is 0600 now"
            );
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn secure_files(_path: &Path) -> Result<()> {
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite://PATH` URL names and migrates it.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("invalid SQLite URL {url:?}: {e}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let path = options.get_filename().to_path_buf();
        secure_files(&path)?;
        // The schema is migrated through sqlx, whose migration table earlier versions
        // of this store created; the connection is closed again right after.
        let mut migrator = options
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot open SQLite database {url:?}: {e}"))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&mut migrator)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate SQLite database: {e}"))?;
        sqlx::Connection::close(migrator)
            .await
            .map_err(|e| anyhow::anyhow!("cannot close SQLite database {url:?}: {e}"))?;

        let open_writable = |pragmas: &str| -> Result<Connection> {
            let conn = connect(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            conn.execute_batch(pragmas)?;
            Ok(conn)
        };
        // A checkpointer thread copies the WAL into the file in the background, so at a
        // modest write rate no commit waits for a checkpoint's syncs. Under a steady
        // stream of commits it never quite catches up; then the writer's own checkpoint
        // after a commit that took the WAL past 1,000 pages finishes the job, so that
        // the WAL is started over rather than grown (measured: a growing WAL costs more
        // in the file system than the checkpoints do).
        let writer = open_writable(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA wal_autocheckpoint = 1000;",
        )?;
        let checkpointer = open_writable(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;",
        )?;
        let writer = Writer::start(writer, checkpointer)
            .map_err(|e| anyhow::anyhow!("cannot start the SQLite writer thread: {e}"))?;
        let readers = Arc::new(Readers {
            path,
            idle: Mutex::new(Vec::new()),
        });
        // Fail now, not on the first request, if the file cannot be read.
        readers.with(|_| Ok(()))?;
        Ok(Self { writer, readers })
    }

    /// Runs a write in the writer's next transaction.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.writer.call(move |c, _| f(c)).await
    }

    /// Runs a read on the blocking pool. Even a point read must not run on the async
    /// runtime: a read transaction after a commit starts with an empty page cache, so it
    /// takes tens of microseconds, and now and then SQLite waits milliseconds for the
    /// WAL index, which would stall every connection on that runtime thread.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Other(anyhow::anyhow!("a database read failed: {e}")))?
    }
}

/// `SELECT` of a whole session row. The log position and last activity are read off
/// the session's log (an index lookup each), so appends never rewrite the session's
/// row (migration 0002).
macro_rules! select_session {
    () => {
        "SELECT s.id, s.owner_id, s.environment_id, s.title, s.status, s.session_context, \
         s.source, s.permission_mode, s.use_code_sessions, s.created_at, s.updated_at, \
         s.archived_at, s.worker_cursor, s.worker_epoch, s.external_metadata, \
         s.requires_action, \
         COALESCE((SELECT MAX(e.seq) FROM events e WHERE e.session_id = s.id), 0) AS last_seq, \
         COALESCE((SELECT e.created_at FROM events e WHERE e.session_id = s.id \
             ORDER BY e.seq DESC LIMIT 1), s.last_activity_at) AS last_activity_at \
         FROM sessions s"
    };
}

impl rules::Columns for Row<'_> {
    fn text(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.get(name)?)
    }
    fn int(&self, name: &str) -> Result<i64> {
        Ok(self.get(name)?)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.get(name)?)
    }
    fn flag(&self, name: &str) -> Result<bool> {
        Ok(self.get(name)?)
    }
}

/// Inserts an audit entry with `detail`; returns its id.
fn insert_audit(c: &Connection, e: &AuditEntry, detail: &str) -> Result<i64> {
    query_one(
        c,
        "INSERT INTO audit_log (owner_id, at, action, credential_id, address, \
         user_agent, session_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         RETURNING id",
        params![
            e.owner_id,
            e.at,
            e.action,
            e.credential_id,
            e.address,
            e.user_agent,
            e.session_id,
            detail
        ],
        |row| Ok(row.get::<_, i64>(0)?),
    )?
    .ok_or(StoreError::NotFound)
}

/// Session shares with their owner's name; a `WHERE` follows.
const SELECT_SHARES: &str = "SELECT s.*, o.name AS owner_name FROM session_shares s \
     JOIN owners o ON o.id = s.owner_id";

/// One work item of an environment.
const SELECT_WORK_ITEM: &str = "SELECT * FROM work_items WHERE environment_id = ?1 AND id = ?2";

/// Runs a query and maps every row.
fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Runs a query for at most one row and maps it.
fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(map).transpose()
}

/// Runs a statement through the statement cache; returns how many rows it changed.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

#[async_trait]
impl Store for SqliteStore {
    #[instrument(skip_all)]
    async fn ensure_owner(&self, name: &str, now: Millis) -> Result<Owner> {
        let name = name.to_owned();
        self.write(move |c| {
            let id = format!("own_{}", name_id(&name));
            exec(
                c,
                "INSERT INTO owners (id, name, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO NOTHING",
                params![id, name, now],
            )?;
            query_one(
                c,
                "SELECT id, name, created_at FROM owners WHERE name = ?1",
                [&name],
                |row| rules::owner_from_row(row),
            )?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn insert_credential(&self, c: &Credential) -> Result<()> {
        let cred = c.clone();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO credentials (id, kind, owner_id, scope, work_id, name, secret_hash, \
                 created_at, expires_at, revoked_at, role) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    cred.id,
                    cred.kind.as_str(),
                    cred.owner_id,
                    cred.scope,
                    cred.work_id,
                    cred.name,
                    cred.secret_hash,
                    cred.created_at,
                    cred.expires_at,
                    cred.revoked_at,
                    cred.role.as_str(),
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn credential(&self, id: &str) -> Result<Credential> {
        let id = id.to_owned();
        self.read(move |c| {
            query_one(c, "SELECT * FROM credentials WHERE id = ?1", [&id], |row| {
                rules::credential_from_row(row)
            })?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn revoke_credentials(
        &self,
        kind: CredentialKind,
        scope: &str,
        now: Millis,
    ) -> Result<u64> {
        let scope = scope.to_owned();
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE credentials SET revoked_at = ?1 \
                 WHERE kind = ?2 AND scope = ?3 AND revoked_at IS NULL",
                params![now, kind.as_str(), scope],
            )?;
            Ok(n as u64)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn revoke_stopped_work_credentials(&self, session_id: &str, now: Millis) -> Result<u64> {
        let session_id = session_id.to_owned();
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE credentials SET revoked_at = ?1 \
                 WHERE kind = 'ingress_token' AND scope = ?2 AND revoked_at IS NULL \
                 AND work_id IN (SELECT id FROM work_items \
                     WHERE session_id = ?2 AND state = 'stopped')",
                params![now, session_id],
            )?;
            Ok(n as u64)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn consume_credential(&self, id: &str, now: Millis) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE credentials SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                params![now, id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn revoke_owner_credentials(
        &self,
        owner_id: &str,
        kind: CredentialKind,
        now: Millis,
    ) -> Result<Vec<String>> {
        let owner_id = owner_id.to_owned();
        self.write(move |c| {
            query_all(
                c,
                "UPDATE credentials SET revoked_at = ?1 \
                 WHERE owner_id = ?2 AND kind = ?3 AND revoked_at IS NULL RETURNING id",
                params![now, owner_id, kind.as_str()],
                |row| Ok(row.get(0)?),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn api_keys(&self) -> Result<Vec<Credential>> {
        self.read(|c| {
            query_all(
                c,
                "SELECT * FROM credentials WHERE kind = ?1 ORDER BY created_at DESC",
                [CredentialKind::ApiKey.as_str()],
                |row| rules::credential_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn upsert_environment(&self, e: &Environment) -> Result<()> {
        let e = e.clone();
        let metadata = serde_json::to_string(&e.metadata)?;
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO environments (id, owner_id, machine_name, directory, branch, \
                 git_repo_url, max_sessions, metadata, created_at, last_poll_at, deregistered_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL) \
                 ON CONFLICT (id) DO UPDATE SET machine_name = excluded.machine_name, \
                 directory = excluded.directory, branch = excluded.branch, \
                 git_repo_url = excluded.git_repo_url, max_sessions = excluded.max_sessions, \
                 metadata = excluded.metadata, last_poll_at = excluded.last_poll_at, \
                 deregistered_at = NULL",
                params![
                    e.id,
                    e.owner_id,
                    e.machine_name,
                    e.directory,
                    e.branch,
                    e.git_repo_url,
                    i64::from(e.max_sessions),
                    metadata,
                    e.created_at,
                    e.last_poll_at,
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn live_environments(&self, owner_id: &str) -> Result<Vec<Environment>> {
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                "SELECT * FROM environments WHERE owner_id = ?1 AND deregistered_at IS NULL \
                 ORDER BY last_poll_at DESC LIMIT 500",
                [&owner_id],
                |row| rules::environment_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn environment(&self, id: &str) -> Result<Environment> {
        let id = id.to_owned();
        self.read(move |c| {
            query_one(
                c,
                "SELECT * FROM environments WHERE id = ?1",
                [&id],
                |row| rules::environment_from_row(row),
            )?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn touch_environment(&self, id: &str, now: Millis) -> Result<()> {
        let id = id.to_owned();
        self.write(move |c| {
            exec(
                c,
                "UPDATE environments SET last_poll_at = ?1 WHERE id = ?2",
                params![now, id],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn deregister_environment(&self, id: &str, now: Millis) -> Result<()> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE environments SET deregistered_at = COALESCE(deregistered_at, ?1) \
                 WHERE id = ?2",
                params![now, id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            exec(
                c,
                "UPDATE work_items SET state = 'stopped', stopped_at = ?1 \
                 WHERE environment_id = ?2 AND state != 'stopped'",
                params![now, id],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn idle_environments(&self, polled_before: Millis) -> Result<Vec<String>> {
        self.read(move |c| {
            query_all(
                c,
                "SELECT id FROM environments WHERE deregistered_at IS NULL AND last_poll_at < ?1",
                [polled_before],
                |row| Ok(row.get("id")?),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn create_session(&self, s: &Session) -> Result<()> {
        let s = s.clone();
        let context = serde_json::to_string(&s.session_context)?;
        let metadata = serde_json::to_string(&s.external_metadata)?;
        let requires_action = s
            .requires_action
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO sessions (id, owner_id, environment_id, title, status, \
                 session_context, source, permission_mode, use_code_sessions, created_at, \
                 updated_at, archived_at, last_seq, last_activity_at, worker_cursor, \
                 worker_epoch, external_metadata, requires_action) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                 ?17, ?18)",
                params![
                    s.id,
                    s.owner_id,
                    s.environment_id,
                    s.title,
                    s.status.as_str(),
                    context,
                    s.source,
                    s.permission_mode,
                    s.use_code_sessions,
                    s.created_at,
                    s.updated_at,
                    s.archived_at,
                    to_i64(s.last_seq),
                    s.last_activity_at,
                    to_i64(s.worker_cursor),
                    to_i64(s.worker_epoch),
                    metadata,
                    requires_action,
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn session(&self, id: &str) -> Result<Session> {
        let id = id.to_owned();
        self.read(move |c| {
            query_one(
                c,
                concat!(select_session!(), " WHERE s.id = ?1"),
                [&id],
                |row| rules::session_from_row(row),
            )?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn list_sessions(
        &self,
        owner_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Session>> {
        let owner_id = owner_id.to_owned();
        let before = before.map(str::to_owned);
        self.read(move |c| match before {
            Some(before) => query_all(
                c,
                concat!(
                    select_session!(),
                    ", sessions b WHERE b.id = ?1 AND s.owner_id = ?2 \
                     AND (s.created_at < b.created_at \
                         OR (s.created_at = b.created_at AND s.id < b.id)) \
                     ORDER BY s.created_at DESC, s.id DESC LIMIT ?3"
                ),
                params![before, owner_id, i64::from(limit)],
                |row| rules::session_from_row(row),
            ),
            None => query_all(
                c,
                concat!(
                    select_session!(),
                    " WHERE s.owner_id = ?1 ORDER BY s.created_at DESC, s.id DESC LIMIT ?2"
                ),
                params![owner_id, i64::from(limit)],
                |row| rules::session_from_row(row),
            ),
        })
        .await
    }

    #[instrument(skip_all)]
    async fn set_session_title(&self, id: &str, title: &str, now: Millis) -> Result<()> {
        let (id, title) = (id.to_owned(), title.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE sessions SET title = ?1, updated_at = ?2 WHERE id = ?3",
                params![title, now, id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn set_session_status(
        &self,
        id: &str,
        status: SessionStatus,
        requires_action: Option<&serde_json::Value>,
        now: Millis,
    ) -> Result<()> {
        if status == SessionStatus::Archived {
            return Err(StoreError::Conflict(
                "use archive_session to archive".into(),
            ));
        }
        let id = id.to_owned();
        let requires_action = requires_action.map(serde_json::to_string).transpose()?;
        self.write(move |c| {
            exec(
                c,
                "UPDATE sessions SET status = ?1, requires_action = ?2, updated_at = ?3 \
                 WHERE id = ?4 AND status != 'archived'",
                params![status.as_str(), requires_action, now, id],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn archive_session(&self, id: &str, now: Millis) -> Result<()> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE sessions SET status = 'archived', archived_at = ?1, updated_at = ?1 \
                 WHERE id = ?2 AND status != 'archived'",
                params![now, id],
            )?;
            if n == 0 {
                let exists =
                    query_one(c, "SELECT 1 FROM sessions WHERE id = ?1", [&id], |_| Ok(()))?;
                return Err(match exists {
                    Some(()) => StoreError::Conflict("session is already archived".into()),
                    None => StoreError::NotFound,
                });
            }
            exec(
                c,
                "UPDATE work_items SET state = 'stopped', stopped_at = ?1 \
                 WHERE session_id = ?2 AND state != 'stopped'",
                params![now, id],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn enqueue_work(&self, w: &WorkItem) -> Result<()> {
        let w = w.clone();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO work_items (id, environment_id, session_id, state, created_at, \
                 delivered_at, acked_at, heartbeat_at, stopped_at, deliveries) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    w.id,
                    w.environment_id,
                    w.session_id,
                    w.state.as_str(),
                    w.created_at,
                    w.delivered_at,
                    w.acked_at,
                    w.heartbeat_at,
                    w.stopped_at,
                    i64::from(w.deliveries),
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn claim_work(
        &self,
        environment_id: &str,
        now: Millis,
        reclaim_before: Millis,
    ) -> Result<Option<WorkItem>> {
        let environment_id = environment_id.to_owned();
        self.write(move |c| {
            // One statement, so the pick and the mark cannot interleave with another poll.
            query_one(
                c,
                "UPDATE work_items SET state = 'delivered', delivered_at = ?1, \
                 deliveries = deliveries + 1 \
                 WHERE id = (SELECT id FROM work_items WHERE environment_id = ?2 \
                     AND (state = 'queued' OR (state = 'delivered' AND delivered_at <= ?3)) \
                     ORDER BY created_at, id LIMIT 1) \
                 RETURNING *",
                params![now, environment_id, reclaim_before],
                |row| rules::work_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn work_item(&self, environment_id: &str, id: &str) -> Result<WorkItem> {
        let (environment_id, id) = (environment_id.to_owned(), id.to_owned());
        self.read(move |c| {
            query_one(c, SELECT_WORK_ITEM, [&environment_id, &id], |row| {
                rules::work_from_row(row)
            })?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn update_work(
        &self,
        environment_id: &str,
        id: &str,
        state: WorkState,
        now: Millis,
    ) -> Result<WorkItem> {
        let to = WorkMove::to(state)?;
        let sql = match to {
            WorkMove::Ack => {
                "UPDATE work_items SET state = 'acked', acked_at = COALESCE(acked_at, ?1), \
                 heartbeat_at = ?1 WHERE environment_id = ?2 AND id = ?3 AND state != 'stopped' \
                 RETURNING *"
            }
            WorkMove::Stop => {
                "UPDATE work_items SET state = 'stopped', stopped_at = COALESCE(stopped_at, ?1) \
                 WHERE environment_id = ?2 AND id = ?3 RETURNING *"
            }
        };
        let (environment_id, id) = (environment_id.to_owned(), id.to_owned());
        self.write(move |c| {
            if let Some(work) = query_one(c, sql, params![now, environment_id, id], |row| {
                rules::work_from_row(row)
            })? {
                return Ok(work);
            }
            let existing = query_one(c, SELECT_WORK_ITEM, [&environment_id, &id], |row| {
                rules::work_from_row(row)
            })?
            .ok_or(StoreError::NotFound)?;
            Err(to.refused(&existing))
        })
        .await
    }

    #[instrument(skip_all)]
    async fn interrupt_work(
        &self,
        environment_id: &str,
        id: &str,
        now: Millis,
    ) -> Result<WorkItem> {
        let (environment_id, id) = (environment_id.to_owned(), id.to_owned());
        self.write(move |c| {
            // Every right-hand side reads the row as it was before the update.
            query_one(
                c,
                "UPDATE work_items SET \
                 interrupted = CASE WHEN state != 'stopped' THEN 1 ELSE interrupted END, \
                 state = 'stopped', stopped_at = COALESCE(stopped_at, ?1) \
                 WHERE environment_id = ?2 AND id = ?3 RETURNING *",
                params![now, environment_id, id],
                |row| rules::work_from_row(row),
            )?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn take_resumable_work(&self, environment_id: &str, now: Millis) -> Result<Vec<String>> {
        let environment_id = environment_id.to_owned();
        self.write(move |c| {
            let sessions = query_all(
                c,
                "SELECT w.session_id FROM work_items w JOIN sessions s ON s.id = w.session_id \
                 WHERE w.environment_id = ?1 AND s.archived_at IS NULL \
                   AND (w.state IN ('delivered', 'acked') \
                        OR (w.state = 'stopped' AND w.interrupted = 1)) \
                   AND NOT EXISTS (SELECT 1 FROM work_items q \
                                   WHERE q.session_id = w.session_id AND q.state = 'queued') \
                 GROUP BY w.session_id ORDER BY MIN(w.created_at), w.session_id",
                [&environment_id],
                |row| Ok(row.get("session_id")?),
            )?;
            exec(
                c,
                "UPDATE work_items SET state = 'stopped', \
                 stopped_at = COALESCE(stopped_at, ?1), interrupted = 0 \
                 WHERE environment_id = ?2 \
                   AND (state IN ('delivered', 'acked') OR (state = 'stopped' AND interrupted = 1))",
                params![now, environment_id],
            )?;
            Ok(sessions)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn stop_session_work(&self, session_id: &str, now: Millis) -> Result<u64> {
        let session_id = session_id.to_owned();
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE work_items SET state = 'stopped', stopped_at = ?1 \
                 WHERE session_id = ?2 AND state != 'stopped'",
                params![now, session_id],
            )?;
            Ok(n as u64)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn append_events(
        &self,
        session_id: &str,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<Appended>> {
        let session_id = session_id.to_owned();
        let events = events.to_vec();
        self.writer
            .call(move |c, seqs| {
                let mut seq = match seqs.get(&session_id) {
                    Some(seq) => seq,
                    None => {
                        let (exists, last): (bool, i64) = query_one(
                            c,
                            "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = ?1), \
                         COALESCE((SELECT MAX(seq) FROM events WHERE session_id = ?1), 0)",
                            [&session_id],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )?
                        .ok_or(StoreError::NotFound)?;
                        if !exists {
                            return Err(StoreError::NotFound);
                        }
                        to_u64(last)
                    }
                };
                let mut out = Vec::with_capacity(events.len());
                for event in &events {
                    // The unique index on (session_id, uuid) finds a repeat in the insert
                    // itself; only then is the existing number looked up.
                    let inserted = exec(
                        c,
                        "INSERT INTO events (session_id, seq, direction, kind, uuid, payload, \
                     created_at, request_id, sent_with) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (session_id, uuid) WHERE uuid IS NOT NULL DO NOTHING",
                        params![
                            session_id,
                            to_i64(seq + 1),
                            event.direction.as_str(),
                            event.kind,
                            event.uuid,
                            event.payload,
                            now,
                            event.request_id,
                            event.sent_with,
                        ],
                    )?;
                    if inserted == 1 {
                        seq += 1;
                        if let Some(audit) = &event.audit {
                            let detail = rules::audit_detail_with_seq(&audit.detail, seq);
                            insert_audit(c, audit, &detail)?;
                        }
                        out.push(Appended {
                            seq,
                            duplicate: false,
                        });
                        continue;
                    }
                    let existing: i64 = query_one(
                        c,
                        "SELECT seq FROM events WHERE session_id = ?1 AND uuid = ?2",
                        params![session_id, event.uuid],
                        |row| Ok(row.get(0)?),
                    )?
                    .ok_or_else(|| anyhow::anyhow!("an event was neither stored nor found"))?;
                    out.push(Appended {
                        seq: to_u64(existing),
                        duplicate: true,
                    });
                }
                seqs.set(&session_id, seq);
                Ok(out)
            })
            .await
    }

    #[instrument(skip_all)]
    async fn events(&self, session_id: &str, q: &EventQuery) -> Result<Vec<StoredEvent>> {
        let order = if q.latest { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT * FROM events WHERE session_id = ?1 AND seq > ?2 AND seq < ?3 \
             AND (?4 IS NULL OR direction = ?4) {processed} ORDER BY seq {order} LIMIT ?5",
            processed = if q.exclude_processed {
                "AND (delivery IS NULL OR delivery != 'processed')"
            } else {
                ""
            }
        );
        let session_id = session_id.to_owned();
        let q = q.clone();
        self.read(move |c| {
            let mut events = query_all(
                c,
                &sql,
                params![
                    session_id,
                    to_i64(q.after.unwrap_or(0)),
                    q.before.map(to_i64).unwrap_or(i64::MAX),
                    q.direction.map(Direction::as_str),
                    i64::from(q.limit),
                ],
                |row| rules::event_from_row(row),
            )?;
            if q.latest {
                events.reverse();
            }
            Ok(events)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn advance_worker_cursor(&self, session_id: &str, seq: u64) -> Result<()> {
        let session_id = session_id.to_owned();
        self.write(move |c| {
            exec(
                c,
                "UPDATE sessions SET worker_cursor = MAX(worker_cursor, ?1) WHERE id = ?2",
                params![to_i64(seq), session_id],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn bump_worker_epoch(&self, id: &str, now: Millis) -> Result<u64> {
        let id = id.to_owned();
        self.write(move |c| {
            let epoch: i64 = query_one(
                c,
                "UPDATE sessions SET worker_epoch = worker_epoch + 1, updated_at = ?1 \
                 WHERE id = ?2 RETURNING worker_epoch",
                params![now, id],
                |row| Ok(row.get(0)?),
            )?
            .ok_or(StoreError::NotFound)?;
            Ok(to_u64(epoch))
        })
        .await
    }

    #[instrument(skip_all)]
    async fn update_worker(
        &self,
        id: &str,
        epoch: u64,
        update: &WorkerUpdate,
        now: Millis,
    ) -> Result<Session> {
        let id = id.to_owned();
        let update = update.clone();
        self.write(move |c| {
            let mut session = query_one(
                c,
                concat!(select_session!(), " WHERE s.id = ?1"),
                [&id],
                |row| rules::session_from_row(row),
            )?
            .ok_or(StoreError::NotFound)?;
            session.apply_worker_update(epoch, &update, now)?;
            exec(
                c,
                "UPDATE sessions SET status = ?1, requires_action = ?2, external_metadata = ?3, \
                 updated_at = ?4 WHERE id = ?5",
                params![
                    session.status.as_str(),
                    rules::opt_json_text(session.requires_action.as_ref())?,
                    rules::json_text(&session.external_metadata)?,
                    now,
                    id,
                ],
            )?;
            Ok(session)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn set_delivery(
        &self,
        session_id: &str,
        updates: &[(EventRef, DeliveryStatus)],
    ) -> Result<()> {
        // A status only moves forward (`rules::delivery_rank_sql`).
        let forward = format!("{} < ?3", rules::delivery_rank_sql());
        let by_uuid = format!(
            "UPDATE events SET delivery = ?1 WHERE session_id = ?2 AND {forward} AND uuid = ?4"
        );
        let by_seq = format!(
            "UPDATE events SET delivery = ?1 WHERE session_id = ?2 AND {forward} AND seq = ?4"
        );
        let session_id = session_id.to_owned();
        let updates = updates.to_vec();
        self.write(move |c| {
            for (target, status) in &updates {
                let rank = status.rank();
                match target {
                    EventRef::Uuid(uuid) => exec(
                        c,
                        &by_uuid,
                        params![status.as_str(), session_id, rank, uuid],
                    )?,
                    EventRef::Seq(seq) => exec(
                        c,
                        &by_seq,
                        params![status.as_str(), session_id, rank, to_i64(*seq)],
                    )?,
                };
            }
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn events_by_request(
        &self,
        session_id: &str,
        request_id: &str,
    ) -> Result<Vec<StoredEvent>> {
        let (session_id, request_id) = (session_id.to_owned(), request_id.to_owned());
        self.read(move |c| {
            query_all(
                c,
                "SELECT * FROM events WHERE session_id = ?1 AND request_id = ?2 ORDER BY seq",
                [&session_id, &request_id],
                |row| rules::event_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn append_internal_events(
        &self,
        session_id: &str,
        events: &[NewInternalEvent],
        now: Millis,
    ) -> Result<Vec<u64>> {
        let session_id = session_id.to_owned();
        let events = events.to_vec();
        self.write(move |c| {
            let last: i64 = query_one(
                c,
                "SELECT COALESCE(MAX(seq), 0) FROM internal_events WHERE session_id = ?1",
                [&session_id],
                |row| Ok(row.get(0)?),
            )?
            .unwrap_or(0);
            let mut seq = to_u64(last);
            let mut out = Vec::with_capacity(events.len());
            for event in &events {
                seq += 1;
                exec(
                    c,
                    "INSERT INTO internal_events (session_id, seq, event_type, payload, \
                     is_compaction, agent_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        session_id,
                        to_i64(seq),
                        event.event_type,
                        event.payload,
                        event.is_compaction,
                        event.agent_id,
                        now,
                    ],
                )?;
                out.push(seq);
            }
            Ok(out)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn internal_events(
        &self,
        session_id: &str,
        after: u64,
        subagents: bool,
        limit: u32,
    ) -> Result<Vec<InternalEvent>> {
        let session_id = session_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                "SELECT * FROM internal_events WHERE session_id = ?1 AND seq > ?2 \
                 AND (agent_id IS NOT NULL) = ?3 ORDER BY seq LIMIT ?4",
                params![session_id, to_i64(after), subagents, i64::from(limit)],
                |row| rules::internal_event_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        self.read(|c| {
            query_all(
                c,
                "SELECT * FROM signing_keys WHERE retired_at IS NULL \
                 ORDER BY created_at DESC, id DESC",
                [],
                |row| rules::signing_key_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn insert_signing_key(&self, key: &SigningKey) -> Result<()> {
        let key = key.clone();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO signing_keys (id, secret, created_at, retired_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![key.id, key.secret, key.created_at, key.retired_at],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn retire_signing_keys(&self, before: Millis, now: Millis) -> Result<u64> {
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL \
                 AND created_at < ?2",
                params![now, before],
            )?;
            Ok(n as u64)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn notify_settings(&self, owner_id: &str) -> Result<Option<Vec<String>>> {
        let owner_id = owner_id.to_owned();
        let text = self
            .read(move |c| {
                query_one(
                    c,
                    "SELECT events FROM notify_settings WHERE owner_id = ?1",
                    [&owner_id],
                    |row| Ok(row.get::<_, String>("events")?),
                )
            })
            .await?;
        text.as_deref().map(rules::notify_events).transpose()
    }

    #[instrument(skip_all)]
    async fn set_notify_settings(
        &self,
        owner_id: &str,
        events: &[String],
        now: Millis,
    ) -> Result<()> {
        let owner_id = owner_id.to_owned();
        let events = serde_json::to_string(events)?;
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO notify_settings (owner_id, events, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (owner_id) DO UPDATE SET events = excluded.events, \
                 updated_at = excluded.updated_at",
                params![owner_id, events, now],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn notify_channels(&self, owner_id: &str) -> Result<Vec<NotifyChannel>> {
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                "SELECT * FROM notify_channels WHERE owner_id = ?1 ORDER BY kind",
                [&owner_id],
                |row| rules::notify_channel_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn put_notify_channel(&self, channel: &NotifyChannel) -> Result<()> {
        let ch = channel.clone();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO notify_channels (owner_id, kind, url, secret, origin, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (owner_id, kind) DO UPDATE SET \
                 url = excluded.url, secret = excluded.secret, origin = excluded.origin, \
                 created_at = excluded.created_at",
                params![
                    ch.owner_id,
                    ch.kind,
                    ch.url,
                    ch.secret,
                    ch.origin,
                    ch.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn delete_notify_channel(&self, owner_id: &str, kind: &str) -> Result<bool> {
        let (owner_id, kind) = (owner_id.to_owned(), kind.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "DELETE FROM notify_channels WHERE owner_id = ?1 AND kind = ?2",
                params![owner_id, kind],
            )?;
            Ok(n > 0)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn put_push_subscription(&self, sub: &PushSubscription) -> Result<()> {
        let sub = sub.clone();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO push_subscriptions \
                 (id, owner_id, endpoint, p256dh, auth, user_agent, origin, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (endpoint) DO UPDATE SET \
                 id = excluded.id, owner_id = excluded.owner_id, p256dh = excluded.p256dh, \
                 auth = excluded.auth, user_agent = excluded.user_agent, \
                 origin = excluded.origin, created_at = excluded.created_at",
                params![
                    sub.id,
                    sub.owner_id,
                    sub.endpoint,
                    sub.p256dh,
                    sub.auth,
                    sub.user_agent,
                    sub.origin,
                    sub.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn push_subscriptions(&self, owner_id: &str) -> Result<Vec<PushSubscription>> {
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                "SELECT * FROM push_subscriptions WHERE owner_id = ?1 \
                 ORDER BY created_at, id",
                [&owner_id],
                |row| rules::push_subscription_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn delete_push_subscription(&self, owner_id: &str, id: &str) -> Result<bool> {
        let (owner_id, id) = (owner_id.to_owned(), id.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "DELETE FROM push_subscriptions WHERE owner_id = ?1 AND id = ?2",
                params![owner_id, id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn vapid_key(&self, candidate: &str, now: Millis) -> Result<String> {
        let candidate = candidate.to_owned();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO vapid_keys (id, private_key, created_at) VALUES (1, ?1, ?2) \
                 ON CONFLICT (id) DO NOTHING",
                params![candidate, now],
            )?;
            query_one(
                c,
                "SELECT private_key FROM vapid_keys WHERE id = 1",
                [],
                |row| Ok(row.get::<_, String>("private_key")?),
            )?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn devices(&self, owner_id: &str, now: Millis) -> Result<Vec<Device>> {
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                "SELECT * FROM credentials WHERE owner_id = ?1 AND kind IN (?2, ?3) \
                 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?4) \
                 ORDER BY created_at DESC, id",
                params![
                    owner_id,
                    CredentialKind::ApiKey.as_str(),
                    CredentialKind::WebSession.as_str(),
                    now
                ],
                |row| rules::device_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn touch_credential(
        &self,
        id: &str,
        now: Millis,
        address: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<()> {
        let (id, address, user_agent) = (
            id.to_owned(),
            address.map(str::to_owned),
            user_agent.map(str::to_owned),
        );
        self.write(move |c| {
            exec(
                c,
                "UPDATE credentials SET last_used_at = ?1, \
                 last_address = COALESCE(?2, last_address), \
                 user_agent = COALESCE(?3, user_agent) WHERE id = ?4",
                params![now, address, user_agent, id],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn rename_credential(&self, owner_id: &str, id: &str, name: &str) -> Result<bool> {
        let (owner_id, id, name) = (owner_id.to_owned(), id.to_owned(), name.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE credentials SET name = ?1 WHERE owner_id = ?2 AND id = ?3 \
                 AND kind IN ('api_key', 'web_session')",
                params![name, owner_id, id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn set_credential_role(&self, owner_id: &str, id: &str, role: Role) -> Result<bool> {
        let (owner_id, id) = (owner_id.to_owned(), id.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE credentials SET role = ?1 WHERE owner_id = ?2 AND id = ?3 \
                 AND kind IN ('api_key', 'web_session') AND revoked_at IS NULL",
                params![role.as_str(), owner_id, id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn revoke_owner_credential(&self, owner_id: &str, id: &str, now: Millis) -> Result<bool> {
        let (owner_id, id) = (owner_id.to_owned(), id.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "UPDATE credentials SET revoked_at = ?1 WHERE owner_id = ?2 AND id = ?3 \
                 AND kind IN ('api_key', 'web_session', 'pairing') AND revoked_at IS NULL",
                params![now, owner_id, id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn policy_rules(&self, owner_id: &str) -> Result<Vec<PolicyRule>> {
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                "SELECT * FROM policy_rules WHERE owner_id = ?1 ORDER BY position, created_at, id",
                [&owner_id],
                |row| rules::policy_rule_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn insert_policy_rule(&self, rule: &PolicyRule) -> Result<()> {
        let r = rule.clone();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO policy_rules (id, owner_id, environment_id, session_id, position, \
                 tool, pattern, decision, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    r.id,
                    r.owner_id,
                    r.environment_id,
                    r.session_id,
                    r.position,
                    r.tool,
                    r.pattern,
                    r.decision.as_str(),
                    r.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn delete_policy_rule(&self, owner_id: &str, id: &str) -> Result<bool> {
        let (owner_id, id) = (owner_id.to_owned(), id.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "DELETE FROM policy_rules WHERE owner_id = ?1 AND id = ?2",
                params![owner_id, id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn policy_settings(&self, owner_id: &str) -> Result<PolicySettings> {
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            let found = query_one(
                c,
                "SELECT default_decision, timeout_ms FROM policy_settings WHERE owner_id = ?1",
                [&owner_id],
                |row| {
                    Ok(PolicySettings {
                        default: rules::decision(&row.get::<_, String>("default_decision")?)?,
                        timeout_ms: row.get("timeout_ms")?,
                    })
                },
            )?;
            Ok(found.unwrap_or_default())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn set_policy_settings(
        &self,
        owner_id: &str,
        settings: PolicySettings,
        now: Millis,
    ) -> Result<()> {
        let owner_id = owner_id.to_owned();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO policy_settings (owner_id, default_decision, timeout_ms, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (owner_id) DO UPDATE SET \
                 default_decision = excluded.default_decision, \
                 timeout_ms = excluded.timeout_ms, updated_at = excluded.updated_at",
                params![
                    owner_id,
                    settings.default.as_str(),
                    settings.timeout_ms,
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    #[instrument(skip_all)]
    async fn append_audit(&self, entry: &AuditEntry) -> Result<i64> {
        let e = entry.clone();
        self.write(move |c| insert_audit(c, &e, &e.detail)).await
    }

    #[instrument(skip_all)]
    async fn audit_log(&self, owner_id: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let (owner_id, q) = (owner_id.to_owned(), query.clone());
        self.read(move |c| {
            query_all(
                c,
                "SELECT a.*, c.name AS credential_name FROM audit_log a \
                 LEFT JOIN credentials c ON c.id = a.credential_id \
                 WHERE a.owner_id = ?1 AND (?2 IS NULL OR a.session_id = ?2) \
                 AND (?3 IS NULL OR a.at >= ?3) AND (?4 IS NULL OR a.id < ?4) \
                 ORDER BY a.id DESC LIMIT ?5",
                params![owner_id, q.session_id, q.since, q.before_id, q.limit],
                |row| rules::audit_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn put_session_share(
        &self,
        session_id: &str,
        owner_name: &str,
        role: Role,
        now: Millis,
    ) -> Result<SessionShare> {
        let (session_id, owner_name) = (session_id.to_owned(), owner_name.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "INSERT INTO session_shares (session_id, owner_id, role, created_at) \
                 SELECT ?1, id, ?3, ?4 FROM owners WHERE name = ?2 \
                 ON CONFLICT (session_id, owner_id) DO UPDATE SET role = excluded.role, \
                 created_at = excluded.created_at",
                params![session_id, owner_name, role.as_str(), now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            query_one(
                c,
                &format!("{SELECT_SHARES} WHERE s.session_id = ?1 AND o.name = ?2"),
                params![session_id, owner_name],
                |row| rules::share_from_row(row),
            )?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn delete_session_share(&self, session_id: &str, owner_id: &str) -> Result<bool> {
        let (session_id, owner_id) = (session_id.to_owned(), owner_id.to_owned());
        self.write(move |c| {
            let n = exec(
                c,
                "DELETE FROM session_shares WHERE session_id = ?1 AND owner_id = ?2",
                params![session_id, owner_id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    #[instrument(skip_all)]
    async fn session_shares(&self, session_id: &str) -> Result<Vec<SessionShare>> {
        let session_id = session_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                &format!("{SELECT_SHARES} WHERE s.session_id = ?1 ORDER BY o.name"),
                [&session_id],
                |row| rules::share_from_row(row),
            )
        })
        .await
    }

    #[instrument(skip_all)]
    async fn session_share(&self, session_id: &str, owner_id: &str) -> Result<Option<Role>> {
        let (session_id, owner_id) = (session_id.to_owned(), owner_id.to_owned());
        self.read(move |c| {
            let found = query_one(
                c,
                &format!("{SELECT_SHARES} WHERE s.session_id = ?1 AND s.owner_id = ?2"),
                params![session_id, owner_id],
                |row| rules::share_from_row(row),
            )?;
            Ok(found.map(|s| s.role))
        })
        .await
    }

    #[instrument(skip_all)]
    async fn shared_with(&self, owner_id: &str) -> Result<Vec<SessionShare>> {
        let owner_id = owner_id.to_owned();
        self.read(move |c| {
            query_all(
                c,
                &format!(
                    "{SELECT_SHARES} WHERE s.owner_id = ?1 ORDER BY s.created_at DESC, s.session_id"
                ),
                [&owner_id],
                |row| rules::share_from_row(row),
            )
        })
        .await
    }
}
