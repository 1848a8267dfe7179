//! The domain rules both backends share, written once beside the model: how a result
//! row becomes a model value (names parsed into enums, JSON columns decoded, counters
//! clamped), how a v2 worker's report changes its session, which moves a work item may
//! make, and the order delivery statuses move in.
//!
//! Everything here is pure. A backend holds its SQL and its driver, reads rows through
//! [`Columns`], and calls these functions; it never restates a rule.

use serde_json::Value;

use crate::*;

/// Reads one result row's columns by name, whatever the driver. Each backend implements
/// it for its row type; the `*_from_row` conversions below are written against it once.
pub(crate) trait Columns {
    /// A `TEXT` column that is never `NULL`.
    fn text(&self, name: &str) -> Result<String>;
    /// A `TEXT` column that may be `NULL`.
    fn opt_text(&self, name: &str) -> Result<Option<String>>;
    /// An integer column (64 bits) that is never `NULL`.
    fn int(&self, name: &str) -> Result<i64>;
    /// An integer column (64 bits) that may be `NULL`.
    fn opt_int(&self, name: &str) -> Result<Option<i64>>;
    /// A boolean column (an integer 0/1 in SQLite, `BOOLEAN` in PostgreSQL).
    fn flag(&self, name: &str) -> Result<bool>;
}

/// Parses a stored enum name, failing with what the column holds when it is unknown: a
/// row the code cannot read is a bug or a newer schema, never silently a default.
fn parse_name<T>(what: &str, text: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(text).ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown {what} {text:?}")))
}

/// Decodes a JSON column.
pub(crate) fn json(text: &str) -> Result<Value> {
    Ok(serde_json::from_str(text)?)
}

/// Encodes a value for a JSON column.
pub(crate) fn json_text(value: &Value) -> Result<String> {
    Ok(serde_json::to_string(value)?)
}

/// Encodes an optional value for a nullable JSON column.
pub(crate) fn opt_json_text(value: Option<&Value>) -> Result<Option<String>> {
    value.map(json_text).transpose()
}

/// A small counter column as a `u32`; a value out of range (only a hand edit makes one)
/// reads as `u32::MAX`.
fn small_count(value: i64) -> u32 {
    value.try_into().unwrap_or(u32::MAX)
}

/// An owner row.
pub(crate) fn owner_from_row<R: Columns + ?Sized>(row: &R) -> Result<Owner> {
    Ok(Owner {
        id: row.text("id")?,
        name: row.text("name")?,
        created_at: row.int("created_at")?,
    })
}

/// A `credentials` row.
pub(crate) fn credential_from_row<R: Columns + ?Sized>(row: &R) -> Result<Credential> {
    Ok(Credential {
        id: row.text("id")?,
        kind: parse_name("credential kind", &row.text("kind")?, CredentialKind::parse)?,
        owner_id: row.text("owner_id")?,
        scope: row.opt_text("scope")?,
        work_id: row.opt_text("work_id")?,
        name: row.text("name")?,
        secret_hash: row.text("secret_hash")?,
        created_at: row.int("created_at")?,
        expires_at: row.opt_int("expires_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        role: parse_name("role", &row.text("role")?, Role::parse)?,
    })
}

/// A stored approval decision (`allow`, `deny`, `ask`).
pub(crate) fn decision(text: &str) -> Result<Decision> {
    parse_name("decision", text, Decision::parse)
}

/// A `credentials` row with its last use: one of an owner's devices.
pub(crate) fn device_from_row<R: Columns + ?Sized>(row: &R) -> Result<Device> {
    Ok(Device {
        credential: credential_from_row(row)?,
        last_used_at: row.opt_int("last_used_at")?,
        last_address: row.opt_text("last_address")?,
        user_agent: row.opt_text("user_agent")?,
    })
}

/// A `policy_rules` row.
pub(crate) fn policy_rule_from_row<R: Columns + ?Sized>(row: &R) -> Result<PolicyRule> {
    Ok(PolicyRule {
        id: row.text("id")?,
        owner_id: row.text("owner_id")?,
        environment_id: row.opt_text("environment_id")?,
        session_id: row.opt_text("session_id")?,
        position: row.int("position")?,
        tool: row.text("tool")?,
        pattern: row.opt_text("pattern")?,
        decision: decision(&row.text("decision")?)?,
        created_at: row.int("created_at")?,
    })
}

/// An `audit_log` row, with its credential's current name (`credential_name`).
pub(crate) fn audit_from_row<R: Columns + ?Sized>(row: &R) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.int("id")?,
        owner_id: row.text("owner_id")?,
        at: row.int("at")?,
        action: row.text("action")?,
        credential_id: row.opt_text("credential_id")?,
        credential_name: row.opt_text("credential_name")?,
        address: row.opt_text("address")?,
        user_agent: row.opt_text("user_agent")?,
        session_id: row.opt_text("session_id")?,
        detail: row.text("detail")?,
    })
}

/// The detail of an audit entry stored with an event: its JSON object gains the event's
/// `sequence_num` (anything else is kept as it is).
pub(crate) fn audit_detail_with_seq(detail: &str, seq: u64) -> String {
    match serde_json::from_str::<Value>(detail) {
        Ok(Value::Object(mut obj)) => {
            obj.insert("sequence_num".into(), Value::from(seq));
            Value::Object(obj).to_string()
        }
        _ => detail.to_string(),
    }
}

/// A `session_shares` row joined with its owner's name (`owner_name`).
pub(crate) fn share_from_row<R: Columns + ?Sized>(row: &R) -> Result<SessionShare> {
    Ok(SessionShare {
        session_id: row.text("session_id")?,
        owner_id: row.text("owner_id")?,
        owner_name: row.text("owner_name")?,
        role: parse_name("role", &row.text("role")?, Role::parse)?,
        created_at: row.int("created_at")?,
    })
}

/// An `environments` row.
pub(crate) fn environment_from_row<R: Columns + ?Sized>(row: &R) -> Result<Environment> {
    let max_sessions = row.int("max_sessions")?;
    Ok(Environment {
        id: row.text("id")?,
        owner_id: row.text("owner_id")?,
        machine_name: row.text("machine_name")?,
        directory: row.text("directory")?,
        branch: row.text("branch")?,
        git_repo_url: row.opt_text("git_repo_url")?,
        max_sessions: small_count(max_sessions),
        metadata: json(&row.text("metadata")?)?,
        created_at: row.int("created_at")?,
        last_poll_at: row.int("last_poll_at")?,
        deregistered_at: row.opt_int("deregistered_at")?,
    })
}

/// A `sessions` row with its log position (`last_seq`) and `last_activity_at`.
pub(crate) fn session_from_row<R: Columns + ?Sized>(row: &R) -> Result<Session> {
    Ok(Session {
        id: row.text("id")?,
        owner_id: row.text("owner_id")?,
        environment_id: row.opt_text("environment_id")?,
        title: row.opt_text("title")?,
        status: parse_name("session status", &row.text("status")?, SessionStatus::parse)?,
        session_context: json(&row.text("session_context")?)?,
        source: row.opt_text("source")?,
        permission_mode: row.opt_text("permission_mode")?,
        use_code_sessions: row.flag("use_code_sessions")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        archived_at: row.opt_int("archived_at")?,
        last_seq: to_u64(row.int("last_seq")?),
        last_activity_at: row.opt_int("last_activity_at")?,
        worker_cursor: to_u64(row.int("worker_cursor")?),
        worker_epoch: to_u64(row.int("worker_epoch")?),
        // A session no worker has reported on has no metadata: an empty object.
        external_metadata: match row.opt_text("external_metadata")? {
            Some(text) => json(&text)?,
            None => Value::Object(Default::default()),
        },
        requires_action: row
            .opt_text("requires_action")?
            .map(|text| json(&text))
            .transpose()?,
    })
}

/// A `work_items` row.
pub(crate) fn work_from_row<R: Columns + ?Sized>(row: &R) -> Result<WorkItem> {
    let deliveries = row.int("deliveries")?;
    Ok(WorkItem {
        id: row.text("id")?,
        environment_id: row.text("environment_id")?,
        session_id: row.text("session_id")?,
        state: parse_name("work state", &row.text("state")?, WorkState::parse)?,
        created_at: row.int("created_at")?,
        delivered_at: row.opt_int("delivered_at")?,
        acked_at: row.opt_int("acked_at")?,
        heartbeat_at: row.opt_int("heartbeat_at")?,
        stopped_at: row.opt_int("stopped_at")?,
        deliveries: small_count(deliveries),
    })
}

/// An `events` row.
pub(crate) fn event_from_row<R: Columns + ?Sized>(row: &R) -> Result<StoredEvent> {
    Ok(StoredEvent {
        session_id: row.text("session_id")?,
        seq: to_u64(row.int("seq")?),
        direction: parse_name("event direction", &row.text("direction")?, Direction::parse)?,
        kind: row.text("kind")?,
        uuid: row.opt_text("uuid")?,
        payload: row.text("payload")?,
        created_at: row.int("created_at")?,
        request_id: row.opt_text("request_id")?,
        // An unknown delivery name reads as "no report": the event is delivered again,
        // which a worker tolerates, rather than the whole log becoming unreadable.
        delivery: row
            .opt_text("delivery")?
            .as_deref()
            .and_then(DeliveryStatus::parse),
        sent_with: row.opt_text("sent_with")?,
    })
}

/// A `signing_keys` row.
pub(crate) fn signing_key_from_row<R: Columns + ?Sized>(row: &R) -> Result<SigningKey> {
    Ok(SigningKey {
        id: row.text("id")?,
        secret: row.text("secret")?,
        created_at: row.int("created_at")?,
        retired_at: row.opt_int("retired_at")?,
    })
}

/// An `internal_events` row.
pub(crate) fn internal_event_from_row<R: Columns + ?Sized>(row: &R) -> Result<InternalEvent> {
    Ok(InternalEvent {
        seq: to_u64(row.int("seq")?),
        event_type: row.text("event_type")?,
        payload: row.text("payload")?,
        is_compaction: row.flag("is_compaction")?,
        agent_id: row.opt_text("agent_id")?,
        created_at: row.int("created_at")?,
    })
}

/// A `notify_channels` row.
pub(crate) fn notify_channel_from_row<R: Columns + ?Sized>(row: &R) -> Result<NotifyChannel> {
    Ok(NotifyChannel {
        owner_id: row.text("owner_id")?,
        kind: row.text("kind")?,
        url: row.text("url")?,
        secret: row.opt_text("secret")?,
        origin: row.opt_text("origin")?,
        created_at: row.int("created_at")?,
    })
}

/// A `push_subscriptions` row.
pub(crate) fn push_subscription_from_row<R: Columns + ?Sized>(row: &R) -> Result<PushSubscription> {
    Ok(PushSubscription {
        id: row.text("id")?,
        owner_id: row.text("owner_id")?,
        endpoint: row.text("endpoint")?,
        p256dh: row.text("p256dh")?,
        auth: row.text("auth")?,
        user_agent: row.opt_text("user_agent")?,
        origin: row.opt_text("origin")?,
        created_at: row.int("created_at")?,
    })
}

/// The `events` column of a `notify_settings` row: the notified event kinds.
pub(crate) fn notify_events(text: &str) -> Result<Vec<String>> {
    Ok(serde_json::from_str(text)?)
}

impl Session {
    /// Applies a v2 worker's report (docs/PROTOCOL.md §9.3) made at `epoch`: merges the
    /// metadata patch (RFC 7396), replaces or clears what the worker waits on, and takes
    /// the new status, except that an archived session stays archived and no report
    /// archives one. A report from any epoch but the current one changes nothing and is
    /// a conflict.
    pub(crate) fn apply_worker_update(
        &mut self,
        epoch: u64,
        update: &WorkerUpdate,
        now: Millis,
    ) -> Result<()> {
        if self.worker_epoch != epoch {
            return Err(StoreError::Conflict(format!(
                "worker epoch {epoch} is not the current one ({})",
                self.worker_epoch
            )));
        }
        if let Some(patch) = &update.external_metadata {
            switchboard_proto::merge::merge_patch(&mut self.external_metadata, patch);
        }
        if let Some(details) = &update.requires_action {
            self.requires_action.clone_from(details);
        }
        if let Some(status) = update.status {
            if self.status != SessionStatus::Archived && status != SessionStatus::Archived {
                self.status = status;
            }
        }
        self.updated_at = now;
        Ok(())
    }
}

/// The two moves `Store::update_work` makes. Each backend's statement for a move is
/// conditional, so the check and the write are one atomic step:
/// - [`WorkMove::Ack`]: to `acked` from any state but `stopped`, stamping `acked_at`
///   once and `heartbeat_at` every time;
/// - [`WorkMove::Stop`]: to `stopped` from any state, stamping `stopped_at` once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkMove {
    /// A worker acknowledged the item (or heartbeats on it).
    Ack,
    /// The item ended.
    Stop,
}

impl WorkMove {
    /// The move to `state`; `queued` and `delivered` are reached by other calls
    /// (`enqueue_work`, `claim_work`), never by an update.
    pub(crate) fn to(state: WorkState) -> Result<Self> {
        match state {
            WorkState::Acked => Ok(WorkMove::Ack),
            WorkState::Stopped => Ok(WorkMove::Stop),
            WorkState::Delivered | WorkState::Queued => Err(StoreError::Conflict(format!(
                "cannot move a work item to {}",
                state.as_str()
            ))),
        }
    }

    /// The error when the conditional statement changed no row although the item
    /// exists: it is in a state the move may not start from.
    pub(crate) fn refused(self, existing: &WorkItem) -> StoreError {
        StoreError::Conflict(format!("work item is {}", existing.state.as_str()))
    }
}

impl DeliveryStatus {
    /// Every status, in the order a status moves: it only ever moves forward.
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Received,
        DeliveryStatus::Processing,
        DeliveryStatus::Processed,
    ];

    /// The status's position in that order, from 1; an event without a report ranks 0.
    pub fn rank(self) -> i32 {
        match self {
            DeliveryStatus::Received => 1,
            DeliveryStatus::Processing => 2,
            DeliveryStatus::Processed => 3,
        }
    }
}

/// The SQL expression of the rank of an event's `delivery` column (0 without a report),
/// built from [`DeliveryStatus::rank`] so that both backends compare with the same ranks:
/// a report is stored only where this is below the new status's rank.
pub(crate) fn delivery_rank_sql() -> String {
    let mut sql = String::from("CASE COALESCE(delivery, '')");
    for status in DeliveryStatus::ALL.iter().rev() {
        sql.push_str(&format!(
            " WHEN '{}' THEN {}",
            status.as_str(),
            status.rank()
        ));
    }
    sql.push_str(" ELSE 0 END");
    sql
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    /// A row of named columns; a missing name reads as `NULL`.
    #[derive(Default)]
    struct FakeRow(HashMap<&'static str, Value>);

    impl FakeRow {
        fn with(mut self, name: &'static str, value: Value) -> Self {
            self.0.insert(name, value);
            self
        }

        fn get(&self, name: &str) -> Value {
            self.0.get(name).cloned().unwrap_or(Value::Null)
        }
    }

    fn missing(name: &str) -> StoreError {
        StoreError::Other(anyhow::anyhow!("column {name} is NULL"))
    }

    impl Columns for FakeRow {
        fn text(&self, name: &str) -> Result<String> {
            self.opt_text(name)?.ok_or_else(|| missing(name))
        }
        fn opt_text(&self, name: &str) -> Result<Option<String>> {
            Ok(self.get(name).as_str().map(str::to_owned))
        }
        fn int(&self, name: &str) -> Result<i64> {
            self.opt_int(name)?.ok_or_else(|| missing(name))
        }
        fn opt_int(&self, name: &str) -> Result<Option<i64>> {
            Ok(self.get(name).as_i64())
        }
        fn flag(&self, name: &str) -> Result<bool> {
            self.get(name).as_bool().ok_or_else(|| missing(name))
        }
    }

    fn session_row() -> FakeRow {
        let mut row = FakeRow::default();
        for name in ["id", "owner_id"] {
            row = row.with(name, json!("x"));
        }
        for name in ["created_at", "updated_at", "worker_cursor", "worker_epoch"] {
            row = row.with(name, json!(1));
        }
        row.with("status", json!("idle"))
            .with("session_context", json!("{}"))
            .with("use_code_sessions", json!(true))
            .with("last_seq", json!(4))
    }

    fn session() -> anyhow::Result<Session> {
        Ok(session_from_row(&session_row())?)
    }

    #[test]
    fn a_session_row_decodes_its_names_json_and_counters() -> anyhow::Result<()> {
        let row = session_row()
            .with("status", json!("requires_action"))
            .with("requires_action", json!(r#"{"request_id":"r1"}"#))
            .with("external_metadata", json!(r#"{"model":"opus"}"#))
            .with("worker_cursor", json!(-3));

        let session = session_from_row(&row)?;

        assert_eq!(session.status, SessionStatus::RequiresAction);
        assert_eq!(session.requires_action, Some(json!({"request_id": "r1"})));
        assert_eq!(session.external_metadata, json!({"model": "opus"}));
        assert_eq!(session.worker_cursor, 0, "a negative counter reads as 0");
        assert_eq!(session.last_seq, 4);
        Ok(())
    }

    #[test]
    fn a_session_without_metadata_has_an_empty_object() -> anyhow::Result<()> {
        let session = session()?;
        assert_eq!(session.external_metadata, json!({}));
        assert_eq!(session.requires_action, None);
        Ok(())
    }

    #[test]
    fn unknown_names_and_malformed_json_are_errors() {
        for row in [
            session_row().with("status", json!("dancing")),
            session_row().with("session_context", json!("{not json")),
            session_row().with("external_metadata", json!("[")),
        ] {
            assert!(session_from_row(&row).is_err());
        }
        let work = work_row().with("state", json!("lost"));
        let error = work_from_row(&work).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("unknown work state \"lost\"")),
            "{error:?}"
        );
    }

    fn event_row(delivery: &str) -> FakeRow {
        FakeRow::default()
            .with("session_id", json!("s"))
            .with("seq", json!(2))
            .with("direction", json!("in"))
            .with("kind", json!("user"))
            .with("payload", json!("{}"))
            .with("created_at", json!(5))
            .with("delivery", json!(delivery))
    }

    #[test]
    fn an_unknown_delivery_reads_as_no_report() -> anyhow::Result<()> {
        let known = event_from_row(&event_row("processing"))?;
        let unknown = event_from_row(&event_row("forgotten"))?;

        assert_eq!(known.delivery, Some(DeliveryStatus::Processing));
        assert_eq!(known.direction, Direction::Inbound);
        assert_eq!(unknown.delivery, None);
        Ok(())
    }

    fn work_row() -> FakeRow {
        FakeRow::default()
            .with("id", json!("w"))
            .with("environment_id", json!("e"))
            .with("session_id", json!("s"))
            .with("state", json!("acked"))
            .with("created_at", json!(1))
            .with("deliveries", json!(0))
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() -> anyhow::Result<()> {
        let row = work_row().with("deliveries", json!(i64::MAX));
        assert_eq!(work_from_row(&row)?.deliveries, u32::MAX);
        assert_eq!(small_count(7), 7);
        Ok(())
    }

    #[test]
    fn a_worker_report_merges_metadata_and_sets_status_and_details() -> anyhow::Result<()> {
        let mut session = session()?;
        session.external_metadata = json!({"model": "opus", "pending_action": {"x": 1}});
        let update = WorkerUpdate {
            status: Some(SessionStatus::RequiresAction),
            requires_action: Some(Some(json!({"request_id": "r"}))),
            external_metadata: Some(json!({"pending_action": null, "permission_mode": "plan"})),
        };

        session.apply_worker_update(1, &update, 99)?;

        assert_eq!(session.status, SessionStatus::RequiresAction);
        assert_eq!(session.requires_action, Some(json!({"request_id": "r"})));
        assert_eq!(
            session.external_metadata,
            json!({"model": "opus", "permission_mode": "plan"})
        );
        assert_eq!(session.updated_at, 99);

        let clear = WorkerUpdate {
            requires_action: Some(None),
            ..Default::default()
        };
        session.apply_worker_update(1, &clear, 100)?;
        assert_eq!(session.requires_action, None);
        assert_eq!(
            session.status,
            SessionStatus::RequiresAction,
            "no status, no change"
        );
        Ok(())
    }

    #[test]
    fn a_report_from_another_epoch_is_a_conflict_and_changes_nothing() -> anyhow::Result<()> {
        let mut session = session()?;
        let before = session.clone();
        let update = WorkerUpdate {
            status: Some(SessionStatus::Running),
            ..Default::default()
        };

        let result = session.apply_worker_update(2, &update, 50);

        assert!(matches!(result, Err(StoreError::Conflict(m)) if m.contains("epoch 2")));
        assert_eq!(session, before);
        Ok(())
    }

    #[test]
    fn archived_stays_archived_and_no_report_archives() -> anyhow::Result<()> {
        let archive = WorkerUpdate {
            status: Some(SessionStatus::Archived),
            ..Default::default()
        };
        let mut live = session()?;
        live.apply_worker_update(1, &archive, 2)?;
        assert_eq!(live.status, SessionStatus::Idle);

        let mut archived = session()?;
        archived.status = SessionStatus::Archived;
        let run = WorkerUpdate {
            status: Some(SessionStatus::Running),
            ..Default::default()
        };
        archived.apply_worker_update(1, &run, 2)?;
        assert_eq!(archived.status, SessionStatus::Archived);
        Ok(())
    }

    #[test]
    fn work_items_are_only_moved_to_acked_or_stopped() {
        assert_eq!(WorkMove::to(WorkState::Acked).ok(), Some(WorkMove::Ack));
        assert_eq!(WorkMove::to(WorkState::Stopped).ok(), Some(WorkMove::Stop));
        for state in [WorkState::Queued, WorkState::Delivered] {
            assert!(
                matches!(WorkMove::to(state), Err(StoreError::Conflict(m)) if m.contains(state.as_str()))
            );
        }
    }

    #[test]
    fn a_refused_move_names_the_state_the_item_is_in() {
        let stopped = WorkItem {
            id: "w".into(),
            environment_id: "e".into(),
            session_id: "s".into(),
            state: WorkState::Stopped,
            created_at: 0,
            delivered_at: None,
            acked_at: None,
            heartbeat_at: None,
            stopped_at: Some(1),
            deliveries: 0,
        };
        assert!(
            matches!(WorkMove::Ack.refused(&stopped), StoreError::Conflict(m) if m == "work item is stopped")
        );
    }

    #[test]
    fn delivery_statuses_rank_in_the_order_they_move() {
        let ranks: Vec<i32> = DeliveryStatus::ALL.iter().map(|s| s.rank()).collect();
        assert_eq!(ranks, [1, 2, 3]);
        assert!(DeliveryStatus::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            delivery_rank_sql(),
            "CASE COALESCE(delivery, '') WHEN 'processed' THEN 3 WHEN 'processing' THEN 2 \
             WHEN 'received' THEN 1 ELSE 0 END"
        );
    }

    #[test]
    fn json_columns_round_trip() -> anyhow::Result<()> {
        let value = json!({"a": [1, null, "x"]});
        assert_eq!(json(&json_text(&value)?)?, value);
        assert_eq!(opt_json_text(None)?, None);
        assert_eq!(notify_events(r#"["a","b"]"#)?, ["a", "b"]);
        Ok(())
    }
}
