//! The embedded SQLite backend: one database file in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so writers queue in the process
//! instead of fighting over SQLite's lock (no `SQLITE_BUSY` under load); reads use a
//! separate pool and proceed concurrently thanks to WAL. `synchronous = NORMAL` makes a
//! committed transaction survive the death of the process (`kill -9`); only a power loss
//! can drop the last transactions.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};
use tracing::instrument;

use crate::*;

/// How many connections serve reads. Two cores make more pointless.
const READ_CONNECTIONS: u32 = 4;

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
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
            .busy_timeout(Duration::from_secs(10));
        // An embedded file cannot drop a connection the way a network server can, so the
        // ping sqlx sends before lending a connection is a wasted round trip to the
        // connection's thread on every statement batch.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot open SQLite database {url:?}: {e}"))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate SQLite database: {e}"))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| anyhow::anyhow!("cannot open SQLite database {url:?}: {e}"))?;
        Ok(Self { writer, reader })
    }

    /// Closes both pools, waiting for queries in flight.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

fn credential_from_row(row: &SqliteRow) -> Result<Credential> {
    let kind: String = row.try_get("kind")?;
    Ok(Credential {
        id: row.try_get("id")?,
        kind: CredentialKind::parse(&kind)
            .ok_or_else(|| anyhow::anyhow!("unknown credential kind {kind:?}"))?,
        owner_id: row.try_get("owner_id")?,
        scope: row.try_get("scope")?,
        work_id: row.try_get("work_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn environment_from_row(row: &SqliteRow) -> Result<Environment> {
    let metadata: String = row.try_get("metadata")?;
    let max_sessions: i64 = row.try_get("max_sessions")?;
    Ok(Environment {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        machine_name: row.try_get("machine_name")?,
        directory: row.try_get("directory")?,
        branch: row.try_get("branch")?,
        git_repo_url: row.try_get("git_repo_url")?,
        max_sessions: max_sessions.try_into().unwrap_or(u32::MAX),
        metadata: serde_json::from_str(&metadata)?,
        created_at: row.try_get("created_at")?,
        last_poll_at: row.try_get("last_poll_at")?,
        deregistered_at: row.try_get("deregistered_at")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<Session> {
    let status: String = row.try_get("status")?;
    let context: String = row.try_get("session_context")?;
    Ok(Session {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        environment_id: row.try_get("environment_id")?,
        title: row.try_get("title")?,
        status: SessionStatus::parse(&status)
            .ok_or_else(|| anyhow::anyhow!("unknown session status {status:?}"))?,
        session_context: serde_json::from_str(&context)?,
        source: row.try_get("source")?,
        permission_mode: row.try_get("permission_mode")?,
        use_code_sessions: row.try_get("use_code_sessions")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        archived_at: row.try_get("archived_at")?,
        last_seq: to_u64(row.try_get("last_seq")?),
        last_activity_at: row.try_get("last_activity_at")?,
        worker_cursor: to_u64(row.try_get("worker_cursor")?),
        worker_epoch: to_u64(row.try_get("worker_epoch")?),
        external_metadata: match row.try_get::<Option<String>, _>("external_metadata")? {
            Some(text) => serde_json::from_str(&text)?,
            None => serde_json::Value::Object(Default::default()),
        },
        requires_action: row
            .try_get::<Option<String>, _>("requires_action")?
            .map(|text| serde_json::from_str(&text))
            .transpose()?,
    })
}

fn work_from_row(row: &SqliteRow) -> Result<WorkItem> {
    let state: String = row.try_get("state")?;
    let deliveries: i64 = row.try_get("deliveries")?;
    Ok(WorkItem {
        id: row.try_get("id")?,
        environment_id: row.try_get("environment_id")?,
        session_id: row.try_get("session_id")?,
        state: WorkState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("unknown work state {state:?}"))?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        acked_at: row.try_get("acked_at")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        stopped_at: row.try_get("stopped_at")?,
        deliveries: deliveries.try_into().unwrap_or(u32::MAX),
    })
}

fn event_from_row(row: &SqliteRow) -> Result<StoredEvent> {
    let direction: String = row.try_get("direction")?;
    Ok(StoredEvent {
        session_id: row.try_get("session_id")?,
        seq: to_u64(row.try_get("seq")?),
        direction: Direction::parse(&direction)
            .ok_or_else(|| anyhow::anyhow!("unknown event direction {direction:?}"))?,
        kind: row.try_get("kind")?,
        uuid: row.try_get("uuid")?,
        payload: row.try_get("payload")?,
        created_at: row.try_get("created_at")?,
        request_id: row.try_get("request_id")?,
        delivery: row
            .try_get::<Option<String>, _>("delivery")?
            .as_deref()
            .and_then(DeliveryStatus::parse),
    })
}

#[async_trait]
impl Store for SqliteStore {
    #[instrument(skip_all)]
    async fn ensure_owner(&self, name: &str, now: Millis) -> Result<Owner> {
        let id = format!("own_{}", name_id(name));
        sqlx::query("INSERT INTO owners (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING")
            .bind(&id)
            .bind(name)
            .bind(now)
            .execute(&self.writer)
            .await?;
        let row = sqlx::query("SELECT id, name, created_at FROM owners WHERE name = ?")
            .bind(name)
            .fetch_one(&self.writer)
            .await?;
        Ok(Owner {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }

    #[instrument(skip_all)]
    async fn insert_credential(&self, c: &Credential) -> Result<()> {
        sqlx::query(
            "INSERT INTO credentials (id, kind, owner_id, scope, work_id, name, secret_hash, \
             created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.id)
        .bind(c.kind.as_str())
        .bind(&c.owner_id)
        .bind(&c.scope)
        .bind(&c.work_id)
        .bind(&c.name)
        .bind(&c.secret_hash)
        .bind(c.created_at)
        .bind(c.expires_at)
        .bind(c.revoked_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn credential(&self, id: &str) -> Result<Credential> {
        let row = sqlx::query("SELECT * FROM credentials WHERE id = ?")
            .bind(id)
            .fetch_one(&self.reader)
            .await?;
        credential_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn revoke_credentials(
        &self,
        kind: CredentialKind,
        scope: &str,
        now: Millis,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = ? WHERE kind = ? AND scope = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(kind.as_str())
        .bind(scope)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    #[instrument(skip_all)]
    async fn consume_credential(&self, id: &str, now: Millis) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[instrument(skip_all)]
    async fn api_keys(&self) -> Result<Vec<Credential>> {
        let rows = sqlx::query("SELECT * FROM credentials WHERE kind = ? ORDER BY created_at DESC")
            .bind(CredentialKind::ApiKey.as_str())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(credential_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn upsert_environment(&self, e: &Environment) -> Result<()> {
        sqlx::query(
            "INSERT INTO environments (id, owner_id, machine_name, directory, branch, git_repo_url, \
             max_sessions, metadata, created_at, last_poll_at, deregistered_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) \
             ON CONFLICT (id) DO UPDATE SET machine_name = excluded.machine_name, \
             directory = excluded.directory, branch = excluded.branch, \
             git_repo_url = excluded.git_repo_url, max_sessions = excluded.max_sessions, \
             metadata = excluded.metadata, last_poll_at = excluded.last_poll_at, \
             deregistered_at = NULL",
        )
        .bind(&e.id)
        .bind(&e.owner_id)
        .bind(&e.machine_name)
        .bind(&e.directory)
        .bind(&e.branch)
        .bind(&e.git_repo_url)
        .bind(i64::from(e.max_sessions))
        .bind(serde_json::to_string(&e.metadata)?)
        .bind(e.created_at)
        .bind(e.last_poll_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn environment(&self, id: &str) -> Result<Environment> {
        let row = sqlx::query("SELECT * FROM environments WHERE id = ?")
            .bind(id)
            .fetch_one(&self.reader)
            .await?;
        environment_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn touch_environment(&self, id: &str, now: Millis) -> Result<()> {
        sqlx::query("UPDATE environments SET last_poll_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn deregister_environment(&self, id: &str, now: Millis) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE environments SET deregistered_at = COALESCE(deregistered_at, ?) WHERE id = ?",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE work_items SET state = 'stopped', stopped_at = ? \
             WHERE environment_id = ? AND state != 'stopped'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn idle_environments(&self, polled_before: Millis) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM environments WHERE deregistered_at IS NULL AND last_poll_at < ?",
        )
        .bind(polled_before)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?)
    }

    #[instrument(skip_all)]
    async fn create_session(&self, s: &Session) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id, owner_id, environment_id, title, status, session_context, \
             source, permission_mode, use_code_sessions, created_at, updated_at, archived_at, \
             last_seq, last_activity_at, worker_cursor, worker_epoch, external_metadata, \
             requires_action) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.owner_id)
        .bind(&s.environment_id)
        .bind(&s.title)
        .bind(s.status.as_str())
        .bind(serde_json::to_string(&s.session_context)?)
        .bind(&s.source)
        .bind(&s.permission_mode)
        .bind(s.use_code_sessions)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.archived_at)
        .bind(to_i64(s.last_seq))
        .bind(s.last_activity_at)
        .bind(to_i64(s.worker_cursor))
        .bind(to_i64(s.worker_epoch))
        .bind(serde_json::to_string(&s.external_metadata)?)
        .bind(
            s.requires_action
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        )
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn session(&self, id: &str) -> Result<Session> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_one(&self.reader)
            .await?;
        session_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn list_sessions(
        &self,
        owner_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Session>> {
        let rows = match before {
            Some(before) => {
                sqlx::query(
                    "SELECT s.* FROM sessions s, sessions b WHERE b.id = ? AND s.owner_id = ? \
                     AND (s.created_at < b.created_at OR (s.created_at = b.created_at AND s.id < b.id)) \
                     ORDER BY s.created_at DESC, s.id DESC LIMIT ?",
                )
                .bind(before)
                .bind(owner_id)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT * FROM sessions WHERE owner_id = ? \
                     ORDER BY created_at DESC, id DESC LIMIT ?",
                )
                .bind(owner_id)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
        };
        rows.iter().map(session_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn set_session_title(&self, id: &str, title: &str, now: Millis) -> Result<()> {
        let done = sqlx::query("UPDATE sessions SET title = ?, updated_at = ? WHERE id = ?")
            .bind(title)
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
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
        sqlx::query(
            "UPDATE sessions SET status = ?, requires_action = ?, updated_at = ? \
             WHERE id = ? AND status != 'archived'",
        )
        .bind(status.as_str())
        .bind(requires_action.map(serde_json::to_string).transpose()?)
        .bind(now)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn archive_session(&self, id: &str, now: Millis) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE sessions SET status = 'archived', archived_at = ?, updated_at = ? \
             WHERE id = ? AND status != 'archived'",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 FROM sessions WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict("session is already archived".into()),
                None => StoreError::NotFound,
            });
        }
        sqlx::query(
            "UPDATE work_items SET state = 'stopped', stopped_at = ? \
             WHERE session_id = ? AND state != 'stopped'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn enqueue_work(&self, w: &WorkItem) -> Result<()> {
        sqlx::query(
            "INSERT INTO work_items (id, environment_id, session_id, state, created_at, \
             delivered_at, acked_at, heartbeat_at, stopped_at, deliveries) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&w.id)
        .bind(&w.environment_id)
        .bind(&w.session_id)
        .bind(w.state.as_str())
        .bind(w.created_at)
        .bind(w.delivered_at)
        .bind(w.acked_at)
        .bind(w.heartbeat_at)
        .bind(w.stopped_at)
        .bind(i64::from(w.deliveries))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn claim_work(
        &self,
        environment_id: &str,
        now: Millis,
        reclaim_before: Millis,
    ) -> Result<Option<WorkItem>> {
        // One statement, so the pick and the mark cannot interleave with another poll.
        let row = sqlx::query(
            "UPDATE work_items SET state = 'delivered', delivered_at = ?, deliveries = deliveries + 1 \
             WHERE id = (SELECT id FROM work_items WHERE environment_id = ? \
                 AND (state = 'queued' OR (state = 'delivered' AND delivered_at <= ?)) \
                 ORDER BY created_at, id LIMIT 1) \
             RETURNING *",
        )
        .bind(now)
        .bind(environment_id)
        .bind(reclaim_before)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(work_from_row).transpose()
    }

    #[instrument(skip_all)]
    async fn work_item(&self, environment_id: &str, id: &str) -> Result<WorkItem> {
        let row = sqlx::query("SELECT * FROM work_items WHERE environment_id = ? AND id = ?")
            .bind(environment_id)
            .bind(id)
            .fetch_one(&self.reader)
            .await?;
        work_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn update_work(
        &self,
        environment_id: &str,
        id: &str,
        state: WorkState,
        now: Millis,
    ) -> Result<WorkItem> {
        let sql = match state {
            WorkState::Acked => {
                "UPDATE work_items SET state = 'acked', acked_at = COALESCE(acked_at, ?1), \
                 heartbeat_at = ?1 WHERE environment_id = ?2 AND id = ?3 AND state != 'stopped' \
                 RETURNING *"
            }
            WorkState::Stopped => {
                "UPDATE work_items SET state = 'stopped', stopped_at = COALESCE(stopped_at, ?1) \
                 WHERE environment_id = ?2 AND id = ?3 RETURNING *"
            }
            WorkState::Delivered | WorkState::Queued => {
                return Err(StoreError::Conflict(format!(
                    "cannot move a work item to {}",
                    state.as_str()
                )))
            }
        };
        let row = sqlx::query(sql)
            .bind(now)
            .bind(environment_id)
            .bind(id)
            .fetch_optional(&self.writer)
            .await?;
        match row {
            Some(row) => work_from_row(&row),
            None => {
                let existing = self.work_item(environment_id, id).await?;
                Err(StoreError::Conflict(format!(
                    "work item is {}",
                    existing.state.as_str()
                )))
            }
        }
    }

    #[instrument(skip_all)]
    async fn stop_session_work(&self, session_id: &str, now: Millis) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE work_items SET state = 'stopped', stopped_at = ? \
             WHERE session_id = ? AND state != 'stopped'",
        )
        .bind(now)
        .bind(session_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    #[instrument(skip_all)]
    async fn append_events(
        &self,
        session_id: &str,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<Appended>> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("SELECT last_seq FROM sessions WHERE id = ?")
            .bind(session_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut seq = to_u64(row.try_get("last_seq")?);
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if let Some(uuid) = &event.uuid {
                let existing =
                    sqlx::query("SELECT seq FROM events WHERE session_id = ? AND uuid = ?")
                        .bind(session_id)
                        .bind(uuid)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(existing) = existing {
                    out.push(Appended {
                        seq: to_u64(existing.try_get("seq")?),
                        duplicate: true,
                    });
                    continue;
                }
            }
            seq += 1;
            sqlx::query(
                "INSERT INTO events (session_id, seq, direction, kind, uuid, payload, created_at, \
                 request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(session_id)
            .bind(to_i64(seq))
            .bind(event.direction.as_str())
            .bind(&event.kind)
            .bind(&event.uuid)
            .bind(&event.payload)
            .bind(now)
            .bind(&event.request_id)
            .execute(&mut *tx)
            .await?;
            out.push(Appended {
                seq,
                duplicate: false,
            });
        }
        if out.iter().any(|a| !a.duplicate) {
            sqlx::query("UPDATE sessions SET last_seq = ?, last_activity_at = ? WHERE id = ?")
                .bind(to_i64(seq))
                .bind(now)
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    #[instrument(skip_all)]
    async fn events(&self, session_id: &str, q: &EventQuery) -> Result<Vec<StoredEvent>> {
        let order = if q.latest { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT * FROM events WHERE session_id = ? AND seq > ? AND seq < ? \
             AND (? IS NULL OR direction = ?) {processed} ORDER BY seq {order} LIMIT ?",
            processed = if q.exclude_processed {
                "AND (delivery IS NULL OR delivery != 'processed')"
            } else {
                ""
            }
        );
        let direction = q.direction.map(Direction::as_str);
        let rows = sqlx::query(&sql)
            .bind(session_id)
            .bind(to_i64(q.after.unwrap_or(0)))
            .bind(q.before.map(to_i64).unwrap_or(i64::MAX))
            .bind(direction)
            .bind(direction)
            .bind(i64::from(q.limit))
            .fetch_all(&self.reader)
            .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        if q.latest {
            events.reverse();
        }
        Ok(events)
    }

    #[instrument(skip_all)]
    async fn advance_worker_cursor(&self, session_id: &str, seq: u64) -> Result<()> {
        sqlx::query("UPDATE sessions SET worker_cursor = MAX(worker_cursor, ?) WHERE id = ?")
            .bind(to_i64(seq))
            .bind(session_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn bump_worker_epoch(&self, id: &str, now: Millis) -> Result<u64> {
        let row = sqlx::query(
            "UPDATE sessions SET worker_epoch = worker_epoch + 1, updated_at = ? WHERE id = ? \
             RETURNING worker_epoch",
        )
        .bind(now)
        .bind(id)
        .fetch_one(&self.writer)
        .await?;
        Ok(to_u64(row.try_get("worker_epoch")?))
    }

    #[instrument(skip_all)]
    async fn update_worker(
        &self,
        id: &str,
        epoch: u64,
        update: &WorkerUpdate,
        now: Millis,
    ) -> Result<Session> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("SELECT * FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let mut session = session_from_row(&row)?;
        if session.worker_epoch != epoch {
            return Err(StoreError::Conflict(format!(
                "worker epoch {epoch} is not the current one ({})",
                session.worker_epoch
            )));
        }
        if let Some(patch) = &update.external_metadata {
            switchboard_proto::merge::merge_patch(&mut session.external_metadata, patch);
        }
        if let Some(details) = &update.requires_action {
            session.requires_action = details.clone();
        }
        if let Some(status) = update.status {
            if session.status != SessionStatus::Archived && status != SessionStatus::Archived {
                session.status = status;
            }
        }
        session.updated_at = now;
        sqlx::query(
            "UPDATE sessions SET status = ?, requires_action = ?, external_metadata = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(session.status.as_str())
        .bind(
            session
                .requires_action
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        )
        .bind(serde_json::to_string(&session.external_metadata)?)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(session)
    }

    #[instrument(skip_all)]
    async fn set_delivery(
        &self,
        session_id: &str,
        updates: &[(EventRef, DeliveryStatus)],
    ) -> Result<()> {
        // A status only moves forward: received < processing < processed.
        const FORWARD: &str = "CASE COALESCE(delivery, '') WHEN 'processed' THEN 3 \
            WHEN 'processing' THEN 2 WHEN 'received' THEN 1 ELSE 0 END < ?";
        let mut tx = self.writer.begin().await?;
        for (target, status) in updates {
            let rank = match status {
                DeliveryStatus::Received => 1,
                DeliveryStatus::Processing => 2,
                DeliveryStatus::Processed => 3,
            };
            let (column, value) = match target {
                EventRef::Uuid(uuid) => ("uuid", uuid.clone()),
                EventRef::Seq(seq) => ("seq", seq.to_string()),
            };
            let sql = format!(
                "UPDATE events SET delivery = ? WHERE session_id = ? AND {column} = ? AND {FORWARD}"
            );
            let query = sqlx::query(&sql).bind(status.as_str()).bind(session_id);
            let query = match target {
                EventRef::Uuid(_) => query.bind(value),
                EventRef::Seq(seq) => query.bind(to_i64(*seq)),
            };
            query.bind(rank).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn events_by_request(
        &self,
        session_id: &str,
        request_id: &str,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE session_id = ? AND request_id = ? ORDER BY seq",
        )
        .bind(session_id)
        .bind(request_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn append_internal_events(
        &self,
        session_id: &str,
        events: &[NewInternalEvent],
        now: Millis,
    ) -> Result<Vec<u64>> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) AS last FROM internal_events WHERE session_id = ?",
        )
        .bind(session_id)
        .fetch_one(&mut *tx)
        .await?;
        let mut seq = to_u64(row.try_get("last")?);
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            sqlx::query(
                "INSERT INTO internal_events (session_id, seq, event_type, payload, \
                 is_compaction, agent_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(session_id)
            .bind(to_i64(seq))
            .bind(&event.event_type)
            .bind(&event.payload)
            .bind(event.is_compaction)
            .bind(&event.agent_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            out.push(seq);
        }
        tx.commit().await?;
        Ok(out)
    }

    #[instrument(skip_all)]
    async fn internal_events(
        &self,
        session_id: &str,
        after: u64,
        subagents: bool,
        limit: u32,
    ) -> Result<Vec<InternalEvent>> {
        let rows = sqlx::query(
            "SELECT * FROM internal_events WHERE session_id = ? AND seq > ? \
             AND (agent_id IS NOT NULL) = ? ORDER BY seq LIMIT ?",
        )
        .bind(session_id)
        .bind(to_i64(after))
        .bind(subagents)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(InternalEvent {
                    seq: to_u64(row.try_get("seq")?),
                    event_type: row.try_get("event_type")?,
                    payload: row.try_get("payload")?,
                    is_compaction: row.try_get("is_compaction")?,
                    agent_id: row.try_get("agent_id")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    #[instrument(skip_all)]
    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        let rows = sqlx::query(
            "SELECT * FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SigningKey {
                    id: row.try_get("id")?,
                    secret: row.try_get("secret")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                })
            })
            .collect()
    }

    #[instrument(skip_all)]
    async fn insert_signing_key(&self, key: &SigningKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (id, secret, created_at, retired_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.secret)
        .bind(key.created_at)
        .bind(key.retired_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn retire_signing_keys(&self, before: Millis, now: Millis) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL AND created_at < ?",
        )
        .bind(now)
        .bind(before)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }
}
