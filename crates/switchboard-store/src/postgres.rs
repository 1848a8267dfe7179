//! The PostgreSQL backend, for deployments that run more than one server or already
//! operate a database.
//!
//! It behaves exactly like the SQLite backend; only the way writers are kept apart
//! differs. SQLite funnels every write through one connection, so nothing ever runs
//! concurrently. Here a pool of connections writes at once, so every read-then-write
//! takes a row lock first:
//! - appends lock the session row (`FOR UPDATE`), so appenders to one session take
//!   turns and sequence numbers stay gap-free;
//! - polls pick work with `FOR UPDATE SKIP LOCKED`, so two polls never get one item;
//! - multi-row stops lock their work items in id order, so two of them cannot deadlock.
//!
//! Transactions use PostgreSQL's default `READ COMMITTED` isolation: with the locks above
//! it is enough, and unlike `SERIALIZABLE` it never fails a call for the caller to retry.

use async_trait::async_trait;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use tracing::instrument;

use crate::rules::{self, WorkMove};
use crate::*;

pub mod listen;

/// How many connections the pool opens at most. Each append holds one for a single short
/// transaction, so 16 serves many busy sessions while staying far below PostgreSQL's
/// default `max_connections` of 100, which several server nodes may share.
const MAX_CONNECTIONS: u32 = 16;

/// The oldest server release accepted, as `server_version_num` spells it. The queries
/// themselves need 9.5 (`ON CONFLICT`, `SKIP LOCKED`); 13 is the oldest release the
/// project supports and tests, so older servers are refused up front instead of failing
/// later in some less clear way.
const MIN_SERVER_VERSION_NUM: i64 = 130_000;

/// Builds the statement that stops the unfinished work items whose `column` is `$2`,
/// stamping `$1`. The rows are locked in id order before they are updated: two such
/// statements over overlapping rows (an archive and a deregistration, say) then take
/// their locks in the same order and wait for each other instead of deadlocking.
fn stop_work_sql(column: &str) -> String {
    format!(
        "UPDATE work_items SET state = 'stopped', stopped_at = $1 \
         WHERE id IN (SELECT id FROM work_items WHERE {column} = $2 AND state != 'stopped' \
         ORDER BY id FOR UPDATE)"
    )
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names, checks that the server is
    /// recent enough and migrates the database.
    pub async fn open(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect(url)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to PostgreSQL database {:?}: {e}",
                    redact_url(url)
                )
            })?;
        let row = sqlx::query("SHOW server_version_num")
            .fetch_one(&pool)
            .await?;
        check_server_version(&row.try_get::<String, _>(0)?)?;
        // The migrator holds an advisory lock while it runs, so several server nodes
        // starting at once do not apply a migration twice.
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate PostgreSQL database: {e}"))?;
        Ok(Self { pool })
    }

    /// Tells every server node (`switchboard token rotate-signing-key` runs outside
    /// them) to reload the signing keys now.
    async fn signing_keys_changed(&self) -> Result<()> {
        self.announce(listen::SIGNING_KEYS_CHANGED).await
    }

    /// Sends a control notice to every server node (see `listen`).
    async fn announce(&self, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(listen::CONTROL_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the pool, waiting for queries in flight.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Refuses a server older than [`MIN_SERVER_VERSION_NUM`], given its
/// `server_version_num` setting.
fn check_server_version(setting: &str) -> Result<()> {
    let num: i64 = setting.trim().parse().map_err(|e| {
        anyhow::anyhow!("PostgreSQL reported an unreadable server_version_num {setting:?}: {e}")
    })?;
    if num < MIN_SERVER_VERSION_NUM {
        return Err(StoreError::Other(anyhow::anyhow!(
            "PostgreSQL server version {} is too old: Switchboard needs 13 or newer",
            server_version_name(num)
        )));
    }
    Ok(())
}

/// Spells a `server_version_num` the way people write versions: 120022 is "12.22" and,
/// before release 10, 90624 is "9.6.24".
fn server_version_name(num: i64) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

impl rules::Columns for PgRow {
    fn text(&self, name: &str) -> Result<String> {
        Ok(self.try_get(name)?)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.try_get(name)?)
    }
    fn int(&self, name: &str) -> Result<i64> {
        Ok(self.try_get(name)?)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.try_get(name)?)
    }
    fn flag(&self, name: &str) -> Result<bool> {
        Ok(self.try_get(name)?)
    }
}

/// One event as `switchboard_append` takes it.
fn append_item(e: &NewEvent) -> serde_json::Value {
    serde_json::json!({
        "direction": e.direction.as_str(),
        "kind": e.kind,
        "uuid": e.uuid,
        "payload": e.payload,
        "request_id": e.request_id,
        "sent_with": e.sent_with,
        "audit": e.audit.as_ref().map(|a| serde_json::json!({
            "owner_id": a.owner_id,
            "at": a.at,
            "action": a.action,
            "credential_id": a.credential_id,
            "address": a.address,
            "user_agent": a.user_agent,
            "session_id": a.session_id,
            "detail": a.detail,
        })),
    })
}

/// Inserts an audit entry with `detail`; returns its id.
async fn insert_audit(conn: &mut sqlx::PgConnection, e: &AuditEntry, detail: &str) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO audit_log (owner_id, at, action, credential_id, address, user_agent, \
         session_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&e.owner_id)
    .bind(e.at)
    .bind(&e.action)
    .bind(&e.credential_id)
    .bind(&e.address)
    .bind(&e.user_agent)
    .bind(&e.session_id)
    .bind(detail)
    .fetch_one(conn)
    .await?;
    Ok(row.try_get(0)?)
}

/// Session shares with their owner's name; a `WHERE` follows.
const SELECT_SHARES: &str = "SELECT s.*, o.name AS owner_name FROM session_shares s \
     JOIN owners o ON o.id = s.owner_id";

#[async_trait]
impl Store for PgStore {
    #[instrument(skip_all)]
    async fn ensure_owner(&self, name: &str, now: Millis) -> Result<Owner> {
        let id = format!("own_{}", name_id(name));
        // `DO NOTHING` rather than a SELECT first: two first logins racing on one name
        // both succeed, and both then read the row whichever of them inserted it.
        sqlx::query(
            "INSERT INTO owners (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT id, name, created_at FROM owners WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        rules::owner_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn insert_credential(&self, c: &Credential) -> Result<()> {
        sqlx::query(
            "INSERT INTO credentials (id, kind, owner_id, scope, work_id, name, secret_hash, \
             created_at, expires_at, revoked_at, role) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        .bind(c.role.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn credential(&self, id: &str) -> Result<Credential> {
        let row = sqlx::query("SELECT * FROM credentials WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        rules::credential_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn revoke_credentials(
        &self,
        kind: CredentialKind,
        scope: &str,
        now: Millis,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 \
             WHERE kind = $2 AND scope = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(kind.as_str())
        .bind(scope)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    #[instrument(skip_all)]
    async fn revoke_stopped_work_credentials(&self, session_id: &str, now: Millis) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 \
             WHERE kind = 'ingress_token' AND scope = $2 AND revoked_at IS NULL \
             AND work_id IN (SELECT id FROM work_items \
                 WHERE session_id = $2 AND state = 'stopped')",
        )
        .bind(now)
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    #[instrument(skip_all)]
    async fn consume_credential(&self, id: &str, now: Millis) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        let revoked = done.rows_affected() == 1;
        if revoked {
            // Every server node closes what this credential opened, now (a revocation
            // from `switchboard token revoke` reaches no node otherwise).
            self.announce(&listen::revoked_notice(id)).await?;
        }
        Ok(revoked)
    }

    #[instrument(skip_all)]
    async fn revoke_owner_credentials(
        &self,
        owner_id: &str,
        kind: CredentialKind,
        now: Millis,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 \
             WHERE owner_id = $2 AND kind = $3 AND revoked_at IS NULL RETURNING id",
        )
        .bind(now)
        .bind(owner_id)
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>(0)?))
            .collect()
    }

    #[instrument(skip_all)]
    async fn api_keys(&self) -> Result<Vec<Credential>> {
        let rows =
            sqlx::query("SELECT * FROM credentials WHERE kind = $1 ORDER BY created_at DESC")
                .bind(CredentialKind::ApiKey.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(rules::credential_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn upsert_environment(&self, e: &Environment) -> Result<()> {
        sqlx::query(
            "INSERT INTO environments (id, owner_id, machine_name, directory, branch, \
             git_repo_url, max_sessions, metadata, created_at, last_poll_at, deregistered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL) \
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn live_environments(&self, owner_id: &str) -> Result<Vec<Environment>> {
        let rows = sqlx::query(
            "SELECT * FROM environments WHERE owner_id = $1 AND deregistered_at IS NULL \
             ORDER BY last_poll_at DESC LIMIT 500",
        )
        .bind(owner_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::environment_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn environment(&self, id: &str) -> Result<Environment> {
        let row = sqlx::query("SELECT * FROM environments WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        rules::environment_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn touch_environment(&self, id: &str, now: Millis) -> Result<()> {
        sqlx::query("UPDATE environments SET last_poll_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn deregister_environment(&self, id: &str, now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE environments SET deregistered_at = COALESCE(deregistered_at, $1) \
             WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(&stop_work_sql("environment_id"))
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
            "SELECT id FROM environments WHERE deregistered_at IS NULL AND last_poll_at < $1",
        )
        .bind(polled_before)
        .fetch_all(&self.pool)
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18)",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn session(&self, id: &str) -> Result<Session> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        rules::session_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn list_sessions(
        &self,
        owner_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Session>> {
        let rows =
            match before {
                Some(before) => sqlx::query(
                    "SELECT s.* FROM sessions s, sessions b WHERE b.id = $1 AND s.owner_id = $2 \
                     AND (s.created_at < b.created_at \
                          OR (s.created_at = b.created_at AND s.id < b.id)) \
                     ORDER BY s.created_at DESC, s.id DESC LIMIT $3",
                )
                .bind(before)
                .bind(owner_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query(
                        "SELECT * FROM sessions WHERE owner_id = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2",
                    )
                    .bind(owner_id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        rows.iter().map(rules::session_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn set_session_title(&self, id: &str, title: &str, now: Millis) -> Result<()> {
        let done = sqlx::query("UPDATE sessions SET title = $1, updated_at = $2 WHERE id = $3")
            .bind(title)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
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
            "UPDATE sessions SET status = $1, requires_action = $2, updated_at = $3 \
             WHERE id = $4 AND status != 'archived'",
        )
        .bind(status.as_str())
        .bind(requires_action.map(serde_json::to_string).transpose()?)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn archive_session(&self, id: &str, now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE sessions SET status = 'archived', archived_at = $1, updated_at = $1 \
             WHERE id = $2 AND status != 'archived'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict("session is already archived".into()),
                None => StoreError::NotFound,
            });
        }
        sqlx::query(&stop_work_sql("session_id"))
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .execute(&self.pool)
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
        // One statement, and the pick locks its row: a concurrent poll skips that row and
        // takes the next deliverable one instead of delivering the same item twice. A row
        // another poll has just claimed is re-checked after the lock and no longer matches.
        let row = sqlx::query(
            "UPDATE work_items SET state = 'delivered', delivered_at = $1, \
             deliveries = deliveries + 1 \
             WHERE id = (SELECT id FROM work_items WHERE environment_id = $2 \
                 AND (state = 'queued' OR (state = 'delivered' AND delivered_at <= $3)) \
                 ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(now)
        .bind(environment_id)
        .bind(reclaim_before)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rules::work_from_row).transpose()
    }

    #[instrument(skip_all)]
    async fn work_item(&self, environment_id: &str, id: &str) -> Result<WorkItem> {
        let row = sqlx::query("SELECT * FROM work_items WHERE environment_id = $1 AND id = $2")
            .bind(environment_id)
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        rules::work_from_row(&row)
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
                "UPDATE work_items SET state = 'acked', acked_at = COALESCE(acked_at, $1), \
                 heartbeat_at = $1 WHERE environment_id = $2 AND id = $3 AND state != 'stopped' \
                 RETURNING *"
            }
            WorkMove::Stop => {
                "UPDATE work_items SET state = 'stopped', stopped_at = COALESCE(stopped_at, $1) \
                 WHERE environment_id = $2 AND id = $3 RETURNING *"
            }
        };
        let row = sqlx::query(sql)
            .bind(now)
            .bind(environment_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => rules::work_from_row(&row),
            None => {
                let existing = self.work_item(environment_id, id).await?;
                Err(to.refused(&existing))
            }
        }
    }

    #[instrument(skip_all)]
    async fn interrupt_work(
        &self,
        environment_id: &str,
        id: &str,
        now: Millis,
    ) -> Result<WorkItem> {
        // Every right-hand side reads the row as it was before the update.
        let row = sqlx::query(
            "UPDATE work_items SET \
             interrupted = CASE WHEN state != 'stopped' THEN TRUE ELSE interrupted END, \
             state = 'stopped', stopped_at = COALESCE(stopped_at, $1) \
             WHERE environment_id = $2 AND id = $3 RETURNING *",
        )
        .bind(now)
        .bind(environment_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(rules::work_from_row)
            .unwrap_or(Err(StoreError::NotFound))
    }

    #[instrument(skip_all)]
    async fn take_resumable_work(&self, environment_id: &str, now: Millis) -> Result<Vec<String>> {
        const RESUMABLE: &str =
            "(state IN ('delivered', 'acked') OR (state = 'stopped' AND interrupted))";
        let mut tx = self.pool.begin().await?;
        // Lock the items in id order (as every multi-row work update does), then read.
        let locked: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM work_items WHERE environment_id = $1 AND {RESUMABLE} \
             ORDER BY id FOR UPDATE"
        ))
        .bind(environment_id)
        .fetch_all(&mut *tx)
        .await?;
        if locked.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let sessions: Vec<String> = sqlx::query_scalar(
            "SELECT w.session_id FROM work_items w JOIN sessions s ON s.id = w.session_id \
             WHERE w.id = ANY($1) AND s.archived_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM work_items q \
                               WHERE q.session_id = w.session_id AND q.state = 'queued') \
             GROUP BY w.session_id ORDER BY MIN(w.created_at), w.session_id",
        )
        .bind(&locked)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE work_items SET state = 'stopped', \
             stopped_at = COALESCE(stopped_at, $1), interrupted = FALSE WHERE id = ANY($2)",
        )
        .bind(now)
        .bind(&locked)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(sessions)
    }

    #[instrument(skip_all)]
    async fn stop_session_work(&self, session_id: &str, now: Millis) -> Result<u64> {
        let done = sqlx::query(&stop_work_sql("session_id"))
            .bind(now)
            .bind(session_id)
            .execute(&self.pool)
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
        // One statement, so one round trip: `switchboard_append` (migration 0010) locks
        // the session row, so concurrent appenders to one session take turns and the
        // sequence numbers it hands out are still free at commit; it finds repeated
        // uuids (within the batch too), stores audit entries with their events, and
        // sends the notice the other nodes follow at commit, in commit order, never for
        // a rollback (they read the new events from the log, see `listen`).
        let batch: Vec<serde_json::Value> = events.iter().map(append_item).collect();
        let rows =
            sqlx::query("SELECT seq, duplicate FROM switchboard_append($1, $2::JSONB, $3, $4)")
                .bind(session_id)
                .bind(serde_json::Value::Array(batch).to_string())
                .bind(now)
                .bind(listen::EVENTS_CHANNEL)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("P0002") => {
                        StoreError::NotFound
                    }
                    other => other.into(),
                })?;
        rows.iter()
            .map(|row| {
                Ok(Appended {
                    seq: to_u64(row.try_get("seq")?),
                    duplicate: row.try_get("duplicate")?,
                })
            })
            .collect()
    }

    #[instrument(skip_all)]
    async fn events(&self, session_id: &str, q: &EventQuery) -> Result<Vec<StoredEvent>> {
        let order = if q.latest { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT * FROM events WHERE session_id = $1 AND seq > $2 AND seq < $3 \
             AND ($4::TEXT IS NULL OR direction = $4) {processed} ORDER BY seq {order} LIMIT $5",
            processed = if q.exclude_processed {
                "AND (delivery IS NULL OR delivery != 'processed')"
            } else {
                ""
            }
        );
        let rows = sqlx::query(&sql)
            .bind(session_id)
            .bind(to_i64(q.after.unwrap_or(0)))
            .bind(q.before.map(to_i64).unwrap_or(i64::MAX))
            .bind(q.direction.map(Direction::as_str))
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await?;
        let mut events = rows
            .iter()
            .map(rules::event_from_row)
            .collect::<Result<Vec<_>>>()?;
        if q.latest {
            events.reverse();
        }
        Ok(events)
    }

    #[instrument(skip_all)]
    async fn advance_worker_cursor(&self, session_id: &str, seq: u64) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET worker_cursor = GREATEST(worker_cursor, $1) WHERE id = $2",
        )
        .bind(to_i64(seq))
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn bump_worker_epoch(&self, id: &str, now: Millis) -> Result<u64> {
        let row = sqlx::query(
            "UPDATE sessions SET worker_epoch = worker_epoch + 1, updated_at = $1 WHERE id = $2 \
             RETURNING worker_epoch",
        )
        .bind(now)
        .bind(id)
        .fetch_one(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // The merge happens in Rust, so the row stays locked from this read to the write:
        // a concurrent report or epoch bump cannot slip in between and be lost.
        let row = sqlx::query("SELECT * FROM sessions WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let mut session = rules::session_from_row(&row)?;
        session.apply_worker_update(epoch, update, now)?;
        sqlx::query(
            "UPDATE sessions SET status = $1, requires_action = $2, external_metadata = $3, \
             updated_at = $4 WHERE id = $5",
        )
        .bind(session.status.as_str())
        .bind(rules::opt_json_text(session.requires_action.as_ref())?)
        .bind(rules::json_text(&session.external_metadata)?)
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
        // A status only moves forward (`rules::delivery_rank_sql`).
        let forward = format!("{} < $4", rules::delivery_rank_sql());
        let by_uuid = format!(
            "UPDATE events SET delivery = $1 WHERE session_id = $2 AND uuid = $3 AND {forward}"
        );
        let by_seq = format!(
            "UPDATE events SET delivery = $1 WHERE session_id = $2 AND seq = $3 AND {forward}"
        );
        let mut tx = self.pool.begin().await?;
        for (target, status) in updates {
            let query = match target {
                EventRef::Uuid(uuid) => sqlx::query(&by_uuid)
                    .bind(status.as_str())
                    .bind(session_id)
                    .bind(uuid),
                EventRef::Seq(seq) => sqlx::query(&by_seq)
                    .bind(status.as_str())
                    .bind(session_id)
                    .bind(to_i64(*seq)),
            };
            query.bind(status.rank()).execute(&mut *tx).await?;
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
            "SELECT * FROM events WHERE session_id = $1 AND request_id = $2 ORDER BY seq",
        )
        .bind(session_id)
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::event_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn append_internal_events(
        &self,
        session_id: &str,
        events: &[NewInternalEvent],
        now: Millis,
    ) -> Result<Vec<u64>> {
        let mut tx = self.pool.begin().await?;
        // Two appenders reading the same MAX(seq) would both insert the next number and
        // one would fail on the primary key, so they take turns on the session row. Like
        // SQLite, which has no foreign key here either, an unknown session is not an
        // error; its events are then numbered without that lock.
        sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) AS last FROM internal_events WHERE session_id = $1",
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
                 is_compaction, agent_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
            "SELECT * FROM internal_events WHERE session_id = $1 AND seq > $2 \
             AND (agent_id IS NOT NULL) = $3 ORDER BY seq LIMIT $4",
        )
        .bind(session_id)
        .bind(to_i64(after))
        .bind(subagents)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::internal_event_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        let rows = sqlx::query(
            "SELECT * FROM signing_keys WHERE retired_at IS NULL \
             ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::signing_key_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn insert_signing_key(&self, key: &SigningKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (id, secret, created_at, retired_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.id)
        .bind(&key.secret)
        .bind(key.created_at)
        .bind(key.retired_at)
        .execute(&self.pool)
        .await?;
        self.signing_keys_changed().await
    }

    #[instrument(skip_all)]
    async fn retire_signing_keys(&self, before: Millis, now: Millis) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND created_at < $2",
        )
        .bind(now)
        .bind(before)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            self.signing_keys_changed().await?;
        }
        Ok(done.rows_affected())
    }

    #[instrument(skip_all)]
    async fn notify_settings(&self, owner_id: &str) -> Result<Option<Vec<String>>> {
        let row = sqlx::query("SELECT events FROM notify_settings WHERE owner_id = $1")
            .bind(owner_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| rules::notify_events(&r.try_get::<String, _>("events")?))
            .transpose()
    }

    #[instrument(skip_all)]
    async fn set_notify_settings(
        &self,
        owner_id: &str,
        events: &[String],
        now: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO notify_settings (owner_id, events, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (owner_id) DO UPDATE SET events = excluded.events, \
             updated_at = excluded.updated_at",
        )
        .bind(owner_id)
        .bind(serde_json::to_string(events)?)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn notify_channels(&self, owner_id: &str) -> Result<Vec<NotifyChannel>> {
        let rows = sqlx::query("SELECT * FROM notify_channels WHERE owner_id = $1 ORDER BY kind")
            .bind(owner_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rules::notify_channel_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn put_notify_channel(&self, ch: &NotifyChannel) -> Result<()> {
        sqlx::query(
            "INSERT INTO notify_channels (owner_id, kind, url, secret, origin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner_id, kind) DO UPDATE SET \
             url = excluded.url, secret = excluded.secret, origin = excluded.origin, \
             created_at = excluded.created_at",
        )
        .bind(&ch.owner_id)
        .bind(&ch.kind)
        .bind(&ch.url)
        .bind(&ch.secret)
        .bind(&ch.origin)
        .bind(ch.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn delete_notify_channel(&self, owner_id: &str, kind: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM notify_channels WHERE owner_id = $1 AND kind = $2")
            .bind(owner_id)
            .bind(kind)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    #[instrument(skip_all)]
    async fn put_push_subscription(&self, sub: &PushSubscription) -> Result<()> {
        sqlx::query(
            "INSERT INTO push_subscriptions \
             (id, owner_id, endpoint, p256dh, auth, user_agent, origin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (endpoint) DO UPDATE SET \
             id = excluded.id, owner_id = excluded.owner_id, p256dh = excluded.p256dh, \
             auth = excluded.auth, user_agent = excluded.user_agent, \
             origin = excluded.origin, created_at = excluded.created_at",
        )
        .bind(&sub.id)
        .bind(&sub.owner_id)
        .bind(&sub.endpoint)
        .bind(&sub.p256dh)
        .bind(&sub.auth)
        .bind(&sub.user_agent)
        .bind(&sub.origin)
        .bind(sub.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn push_subscriptions(&self, owner_id: &str) -> Result<Vec<PushSubscription>> {
        let rows = sqlx::query(
            "SELECT * FROM push_subscriptions WHERE owner_id = $1 ORDER BY created_at, id",
        )
        .bind(owner_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::push_subscription_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn delete_push_subscription(&self, owner_id: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM push_subscriptions WHERE owner_id = $1 AND id = $2")
            .bind(owner_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    #[instrument(skip_all)]
    async fn vapid_key(&self, candidate: &str, now: Millis) -> Result<String> {
        sqlx::query(
            "INSERT INTO vapid_keys (id, private_key, created_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(candidate)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT private_key FROM vapid_keys WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("private_key")?)
    }

    #[instrument(skip_all)]
    async fn devices(&self, owner_id: &str, now: Millis) -> Result<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT * FROM credentials WHERE owner_id = $1 AND kind IN ($2, $3) \
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $4) \
             ORDER BY created_at DESC, id",
        )
        .bind(owner_id)
        .bind(CredentialKind::ApiKey.as_str())
        .bind(CredentialKind::WebSession.as_str())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::device_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn touch_credential(
        &self,
        id: &str,
        now: Millis,
        address: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE credentials SET last_used_at = $1, \
             last_address = COALESCE($2, last_address), \
             user_agent = COALESCE($3, user_agent) WHERE id = $4",
        )
        .bind(now)
        .bind(address)
        .bind(user_agent)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn rename_credential(&self, owner_id: &str, id: &str, name: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE credentials SET name = $1 WHERE owner_id = $2 AND id = $3 \
             AND kind IN ('api_key', 'web_session')",
        )
        .bind(name)
        .bind(owner_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[instrument(skip_all)]
    async fn set_credential_role(&self, owner_id: &str, id: &str, role: Role) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE credentials SET role = $1 WHERE owner_id = $2 AND id = $3 \
             AND kind IN ('api_key', 'web_session') AND revoked_at IS NULL",
        )
        .bind(role.as_str())
        .bind(owner_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[instrument(skip_all)]
    async fn revoke_owner_credential(&self, owner_id: &str, id: &str, now: Millis) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 WHERE owner_id = $2 AND id = $3 \
             AND kind IN ('api_key', 'web_session', 'pairing') AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(owner_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[instrument(skip_all)]
    async fn policy_rules(&self, owner_id: &str) -> Result<Vec<PolicyRule>> {
        let rows = sqlx::query(
            "SELECT * FROM policy_rules WHERE owner_id = $1 ORDER BY position, created_at, id",
        )
        .bind(owner_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::policy_rule_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn insert_policy_rule(&self, r: &PolicyRule) -> Result<()> {
        sqlx::query(
            "INSERT INTO policy_rules (id, owner_id, environment_id, session_id, position, \
             tool, pattern, decision, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&r.id)
        .bind(&r.owner_id)
        .bind(&r.environment_id)
        .bind(&r.session_id)
        .bind(r.position)
        .bind(&r.tool)
        .bind(&r.pattern)
        .bind(r.decision.as_str())
        .bind(r.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn delete_policy_rule(&self, owner_id: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM policy_rules WHERE owner_id = $1 AND id = $2")
            .bind(owner_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    #[instrument(skip_all)]
    async fn policy_settings(&self, owner_id: &str) -> Result<PolicySettings> {
        let row = sqlx::query(
            "SELECT default_decision, timeout_ms FROM policy_settings WHERE owner_id = $1",
        )
        .bind(owner_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(PolicySettings {
                default: rules::decision(&row.try_get::<String, _>("default_decision")?)?,
                timeout_ms: row.try_get("timeout_ms")?,
            }),
            None => Ok(PolicySettings::default()),
        }
    }

    #[instrument(skip_all)]
    async fn set_policy_settings(
        &self,
        owner_id: &str,
        settings: PolicySettings,
        now: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO policy_settings (owner_id, default_decision, timeout_ms, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (owner_id) DO UPDATE SET \
             default_decision = excluded.default_decision, \
             timeout_ms = excluded.timeout_ms, updated_at = excluded.updated_at",
        )
        .bind(owner_id)
        .bind(settings.default.as_str())
        .bind(settings.timeout_ms)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn append_audit(&self, e: &AuditEntry) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, e, &e.detail).await
    }

    #[instrument(skip_all)]
    async fn audit_log(&self, owner_id: &str, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT a.*, c.name AS credential_name FROM audit_log a \
             LEFT JOIN credentials c ON c.id = a.credential_id \
             WHERE a.owner_id = $1 AND ($2::TEXT IS NULL OR a.session_id = $2) \
             AND ($3::BIGINT IS NULL OR a.at >= $3) AND ($4::BIGINT IS NULL OR a.id < $4) \
             ORDER BY a.id DESC LIMIT $5",
        )
        .bind(owner_id)
        .bind(&q.session_id)
        .bind(q.since)
        .bind(q.before_id)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::audit_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn put_session_share(
        &self,
        session_id: &str,
        owner_name: &str,
        role: Role,
        now: Millis,
    ) -> Result<SessionShare> {
        let done = sqlx::query(
            "INSERT INTO session_shares (session_id, owner_id, role, created_at) \
             SELECT $1, id, $3, $4 FROM owners WHERE name = $2 \
             ON CONFLICT (session_id, owner_id) DO UPDATE SET role = excluded.role, \
             created_at = excluded.created_at",
        )
        .bind(session_id)
        .bind(owner_name)
        .bind(role.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(&format!(
            "{SELECT_SHARES} WHERE s.session_id = $1 AND o.name = $2"
        ))
        .bind(session_id)
        .bind(owner_name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        rules::share_from_row(&row)
    }

    #[instrument(skip_all)]
    async fn delete_session_share(&self, session_id: &str, owner_id: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM session_shares WHERE session_id = $1 AND owner_id = $2")
                .bind(session_id)
                .bind(owner_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    #[instrument(skip_all)]
    async fn session_shares(&self, session_id: &str) -> Result<Vec<SessionShare>> {
        let rows = sqlx::query(&format!(
            "{SELECT_SHARES} WHERE s.session_id = $1 ORDER BY o.name"
        ))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::share_from_row).collect()
    }

    #[instrument(skip_all)]
    async fn session_share(&self, session_id: &str, owner_id: &str) -> Result<Option<Role>> {
        let row = sqlx::query(&format!(
            "{SELECT_SHARES} WHERE s.session_id = $1 AND s.owner_id = $2"
        ))
        .bind(session_id)
        .bind(owner_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| rules::share_from_row(&r))
            .transpose()?
            .map(|s| s.role))
    }

    #[instrument(skip_all)]
    async fn shared_with(&self, owner_id: &str) -> Result<Vec<SessionShare>> {
        let rows = sqlx::query(&format!(
            "{SELECT_SHARES} WHERE s.owner_id = $1 ORDER BY s.created_at DESC, s.session_id"
        ))
        .bind(owner_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rules::share_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn servers_older_than_13_are_refused_with_their_version() {
        let err = super::check_server_version("120022")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("12.22") && err.contains("13 or newer"),
            "{err}"
        );
        assert!(super::check_server_version("130000").is_ok());
        assert!(super::check_server_version("150020").is_ok());
        assert!(super::check_server_version("fifteen").is_err());
    }

    #[test]
    fn server_versions_are_spelled_as_people_write_them() {
        assert_eq!(super::server_version_name(120_022), "12.22");
        assert_eq!(super::server_version_name(130_000), "13.0");
        assert_eq!(super::server_version_name(90_624), "9.6.24");
    }
}
