//! The storage conformance story: every `Store` method exercised through `&dyn Store`.
//!
//! It runs on a fresh SQLite file always, and on PostgreSQL too when
//! `SWITCHBOARD_TEST_PG_URL` is set (e.g. `postgres://postgres@127.0.0.1:5432/test`).
//! Each PostgreSQL test creates its own database on that server and drops it again, so
//! tests can run in parallel and next to other users of the server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;
use sqlx::Connection;
use switchboard_store::*;

/// The environment variable that names the PostgreSQL server to test against.
const PG_URL_VAR: &str = "SWITCHBOARD_TEST_PG_URL";

async fn sqlite() -> anyhow::Result<(tempfile::TempDir, ArcStore)> {
    let dir = tempfile::tempdir()?;
    let store = open(&sqlite_url(&dir)).await?;
    Ok((dir, store))
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("store.db").display())
}

/// A database of its own for one PostgreSQL test, dropped when the value is.
struct PgTestDb {
    /// The URL the database was created through; it is dropped through it too.
    admin_url: String,
    /// The database's name, `sb_test_…`.
    name: String,
    /// The URL of the new database.
    url: String,
}

impl PgTestDb {
    /// Creates a fresh database on the server `SWITCHBOARD_TEST_PG_URL` names, or returns
    /// `None` (and says so) when the variable is unset, so the test can pass as skipped.
    async fn create(test: &str) -> anyhow::Result<Option<Self>> {
        let Some(admin_url) = std::env::var(PG_URL_VAR).ok().filter(|v| !v.is_empty()) else {
            println!("skipped {test}: {PG_URL_VAR} is not set");
            return Ok(None);
        };
        // Tests of one run share the process id and may share the clock's tick, so a
        // counter tells them apart; the pid and time tell runs apart.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let name = format!(
            "sb_test_{}_{nanos}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {PG_URL_VAR} ({})",
                    redact_url(&admin_url)
                )
            })?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create test database {name}"))?;
        admin.close().await?;
        let url = with_database(&admin_url, &name)?;
        Ok(Some(Self {
            admin_url,
            name,
            url,
        }))
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on a future, and also
        // while a failed assertion unwinds; a thread with its own runtime works in both.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                // FORCE (PostgreSQL 13+) ends the store's pooled connections, which may
                // still be open since dropping a pool does not wait for them to close.
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        // A panic here would abort a test that is already failing, so only report.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cannot drop test database {}: {e:#}", self.name),
            Err(_) => eprintln!(
                "cannot drop test database {}: the cleanup panicked",
                self.name
            ),
        }
    }
}

/// Replaces the database in a PostgreSQL URL, keeping its credentials and parameters.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, params) = match url.split_once('?') {
        Some((base, params)) => (base, Some(params)),
        None => (url, None),
    };
    let authority = base.find("://").context("a PostgreSQL URL has a `://`")? + 3;
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{database}", &base[..path]);
    if let Some(params) = params {
        out.push('?');
        out.push_str(params);
    }
    Ok(out)
}

fn session(id: &str, owner: &str, env: Option<&str>, now: Millis) -> Session {
    Session {
        id: id.into(),
        owner_id: owner.into(),
        environment_id: env.map(str::to_string),
        title: None,
        status: SessionStatus::Idle,
        session_context: json!({}),
        source: None,
        permission_mode: None,
        use_code_sessions: false,
        created_at: now,
        updated_at: now,
        archived_at: None,
        last_seq: 0,
        last_activity_at: None,
        worker_cursor: 0,
        worker_epoch: 0,
        external_metadata: json!({}),
        requires_action: None,
    }
}

fn event(direction: Direction, uuid: Option<&str>, text: &str) -> NewEvent {
    NewEvent {
        direction,
        kind: "user".into(),
        uuid: uuid.map(str::to_string),
        payload: json!({"type":"user","text":text}).to_string(),
        request_id: None,
        sent_with: None,
        audit: None,
    }
}

fn work(id: &str, env: &str, session: &str, now: Millis) -> WorkItem {
    WorkItem {
        id: id.into(),
        environment_id: env.into(),
        session_id: session.into(),
        state: WorkState::Queued,
        created_at: now,
        delivered_at: None,
        acked_at: None,
        heartbeat_at: None,
        stopped_at: None,
        deliveries: 0,
    }
}

/// The story itself, backend-independent.
async fn story(store: &dyn Store) -> anyhow::Result<()> {
    let now = 1_700_000_000_000;

    // Owners are created once per name.
    let alice = store.ensure_owner("alice", now).await?;
    assert_eq!(store.ensure_owner("alice", now + 1).await?, alice);
    let bob = store.ensure_owner("bob", now).await?;
    assert_ne!(alice.id, bob.id);

    // Credentials: stored, found by id, revoked by scope.
    let cred = Credential {
        id: "c1".into(),
        kind: CredentialKind::EnvironmentSecret,
        owner_id: alice.id.clone(),
        scope: Some("env_1".into()),
        work_id: None,
        name: String::new(),
        secret_hash: "ab".into(),
        created_at: now,
        expires_at: None,
        revoked_at: None,
        role: Role::Admin,
    };
    store.insert_credential(&cred).await?;
    assert_eq!(store.credential("c1").await?, cred);
    assert!(matches!(
        store.credential("nope").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .revoke_credentials(CredentialKind::EnvironmentSecret, "env_1", now)
            .await?,
        1
    );
    assert_eq!(store.credential("c1").await?.revoked_at, Some(now));
    // A single-use credential is consumed once.
    let pairing = Credential {
        id: "p1".into(),
        kind: CredentialKind::Pairing,
        scope: None,
        ..cred.clone()
    };
    store.insert_credential(&pairing).await?;
    assert!(store.consume_credential("p1", now).await?);
    assert!(!store.consume_credential("p1", now).await?);
    assert!(!store.consume_credential("nope", now).await?);
    assert_eq!(store.credential("p1").await?.kind, CredentialKind::Pairing);
    let key = Credential {
        id: "k1".into(),
        kind: CredentialKind::ApiKey,
        scope: None,
        ..cred.clone()
    };
    store.insert_credential(&key).await?;
    assert_eq!(store.api_keys().await?.len(), 1);
    // Signing an owner out everywhere: its live web sessions, no one else's, no other
    // class, each reported once.
    for (id, owner) in [("w1", &alice.id), ("w2", &alice.id), ("w3", &bob.id)] {
        let web = Credential {
            id: id.into(),
            kind: CredentialKind::WebSession,
            owner_id: owner.clone(),
            scope: None,
            ..key.clone()
        };
        store.insert_credential(&web).await?;
    }
    assert!(store.consume_credential("w2", now).await?);
    let ended = store
        .revoke_owner_credentials(&alice.id, CredentialKind::WebSession, now + 1)
        .await?;
    assert_eq!(ended, vec!["w1".to_string()]);
    assert_eq!(store.credential("w1").await?.revoked_at, Some(now + 1));
    assert_eq!(store.credential("w2").await?.revoked_at, Some(now));
    assert_eq!(store.credential("w3").await?.revoked_at, None);
    assert_eq!(store.credential("k1").await?.revoked_at, None);
    assert!(store
        .revoke_owner_credentials(&alice.id, CredentialKind::WebSession, now + 2)
        .await?
        .is_empty());

    // Environments: upsert, touch, idle detection, deregistration.
    let env = Environment {
        id: "env_1".into(),
        owner_id: alice.id.clone(),
        machine_name: "m".into(),
        directory: "/d".into(),
        branch: "main".into(),
        git_repo_url: None,
        max_sessions: 1,
        metadata: json!({"worker_type":"claude_code"}),
        created_at: now,
        last_poll_at: now,
        deregistered_at: None,
    };
    store.upsert_environment(&env).await?;
    assert_eq!(store.environment("env_1").await?, env);
    assert_eq!(store.live_environments(&alice.id).await?, vec![env.clone()]);
    assert!(store.live_environments(&bob.id).await?.is_empty());
    store.touch_environment("env_1", now + 10).await?;
    assert!(store.idle_environments(now + 5).await?.is_empty());
    assert_eq!(
        store.idle_environments(now + 11).await?,
        vec!["env_1".to_string()]
    );

    // Sessions and their listing, newest first, per owner.
    store
        .create_session(&session("s1", &alice.id, Some("env_1"), now))
        .await?;
    store
        .create_session(&session("s2", &alice.id, None, now + 1))
        .await?;
    store
        .create_session(&session("s3", &bob.id, None, now + 2))
        .await?;
    let listed: Vec<String> = store
        .list_sessions(&alice.id, 10, None)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ["s2", "s1"]);
    let older: Vec<String> = store
        .list_sessions(&alice.id, 10, Some("s2"))
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(older, ["s1"]);
    store.set_session_title("s1", "hello", now).await?;
    store
        .set_session_status(
            "s1",
            SessionStatus::RequiresAction,
            Some(&json!({"tool_name":"Bash"})),
            now,
        )
        .await?;
    let s1 = store.session("s1").await?;
    assert_eq!(
        (s1.title.as_deref(), s1.status),
        (Some("hello"), SessionStatus::RequiresAction)
    );
    assert_eq!(s1.requires_action, Some(json!({"tool_name":"Bash"})));
    store
        .set_session_status("s1", SessionStatus::Running, None, now)
        .await?;
    assert_eq!(store.session("s1").await?.requires_action, None);
    assert!(matches!(
        store.set_session_title("zz", "x", now).await,
        Err(StoreError::NotFound)
    ));

    // Work: queued work is claimed once; un-acked work is reclaimed after the window.
    store.enqueue_work(&work("w1", "env_1", "s1", now)).await?;
    let claimed = store
        .claim_work("env_1", now + 100, now)
        .await?
        .expect("queued work");
    assert_eq!(
        (claimed.id.as_str(), claimed.state, claimed.deliveries),
        ("w1", WorkState::Delivered, 1)
    );
    assert!(store
        .claim_work("env_1", now + 200, now + 50)
        .await?
        .is_none());
    let again = store
        .claim_work("env_1", now + 300, now + 100)
        .await?
        .expect("reclaimed");
    assert_eq!(again.deliveries, 2);
    let acked = store
        .update_work("env_1", "w1", WorkState::Acked, now + 400)
        .await?;
    assert_eq!(acked.state, WorkState::Acked);
    assert!(store
        .claim_work("env_1", now + 10_000, now + 10_000)
        .await?
        .is_none());
    store
        .update_work("env_1", "w1", WorkState::Stopped, now + 500)
        .await?;
    // Stop is idempotent; ack after stop conflicts.
    store
        .update_work("env_1", "w1", WorkState::Stopped, now + 600)
        .await?;
    assert!(matches!(
        store
            .update_work("env_1", "w1", WorkState::Acked, now)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .update_work("env_1", "nope", WorkState::Stopped, now)
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .enqueue_work(&work("w2", "env_1", "s1", now + 700))
        .await?;
    // Ingress tokens of stopped work are revoked; those of unfinished work are not.
    let ingress = |id: &str, work: &str| Credential {
        id: id.into(),
        kind: CredentialKind::IngressToken,
        scope: Some("s1".into()),
        work_id: Some(work.into()),
        ..key.clone()
    };
    store.insert_credential(&ingress("i1", "w1")).await?;
    store.insert_credential(&ingress("i2", "w2")).await?;
    assert_eq!(store.revoke_stopped_work_credentials("s1", now).await?, 1);
    assert_eq!(store.credential("i1").await?.revoked_at, Some(now));
    assert_eq!(store.credential("i2").await?.revoked_at, None);
    assert_eq!(store.stop_session_work("s1", now + 800).await?, 1);
    assert_eq!(store.revoke_stopped_work_credentials("s1", now).await?, 1);
    assert_eq!(store.credential("i2").await?.revoked_at, Some(now));

    // The log: ordered, gap-free sequence numbers; uuids deduplicated.
    let first = store
        .append_events(
            "s1",
            &[
                event(Direction::Inbound, Some("u1"), "a"),
                event(Direction::Outbound, None, "b"),
                event(Direction::Outbound, Some("u1"), "dup"),
            ],
            now,
        )
        .await?;
    assert_eq!(
        first,
        [
            Appended {
                seq: 1,
                duplicate: false
            },
            Appended {
                seq: 2,
                duplicate: false
            },
            Appended {
                seq: 1,
                duplicate: true
            },
        ]
    );
    let second = store
        .append_events("s1", &[event(Direction::Inbound, Some("u2"), "c")], now + 1)
        .await?;
    assert_eq!(
        second,
        [Appended {
            seq: 3,
            duplicate: false
        }]
    );
    assert_eq!(store.session("s1").await?.last_seq, 3);
    assert_eq!(store.session("s1").await?.last_activity_at, Some(now + 1));

    let all = store.events("s1", &EventQuery::default()).await?;
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(all[0].uuid.as_deref(), Some("u1"));
    let inbound = store
        .events(
            "s1",
            &EventQuery {
                direction: Some(Direction::Inbound),
                after: Some(1),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(inbound.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    let newest = store
        .events(
            "s1",
            &EventQuery {
                latest: true,
                limit: 2,
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    let before = store
        .events(
            "s1",
            &EventQuery {
                before: Some(3),
                latest: true,
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(before.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    // Logs are per session.
    let other = store
        .append_events("s2", &[event(Direction::Inbound, Some("u1"), "x")], now)
        .await?;
    assert_eq!(
        other,
        [Appended {
            seq: 1,
            duplicate: false
        }]
    );
    assert!(store
        .append_events("missing", &[event(Direction::Inbound, None, "x")], now)
        .await
        .is_err());

    // Delivery status moves forward only, addressed by uuid or sequence number.
    store
        .set_delivery(
            "s1",
            &[(EventRef::Uuid("u2".into()), DeliveryStatus::Processed)],
        )
        .await?;
    store
        .set_delivery(
            "s1",
            &[(EventRef::Uuid("u2".into()), DeliveryStatus::Received)],
        )
        .await?;
    store
        .set_delivery(
            "s1",
            &[
                (EventRef::Seq(1), DeliveryStatus::Received),
                (EventRef::Uuid("nope".into()), DeliveryStatus::Received),
            ],
        )
        .await?;
    let delivered = store.events("s1", &EventQuery::default()).await?;
    assert_eq!(delivered[2].delivery, Some(DeliveryStatus::Processed));
    assert_eq!(delivered[0].delivery, Some(DeliveryStatus::Received));
    let unprocessed = store
        .events(
            "s1",
            &EventQuery {
                direction: Some(Direction::Inbound),
                exclude_processed: true,
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(unprocessed.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);

    // Control messages are found by request id.
    let control = NewEvent {
        request_id: Some("r1".into()),
        kind: "control_request".into(),
        ..event(Direction::Outbound, Some("u3"), "c")
    };
    let answer = NewEvent {
        request_id: Some("r1".into()),
        kind: "control_response".into(),
        sent_with: Some("ingress_token".into()),
        ..event(Direction::Inbound, None, "a")
    };
    store.append_events("s1", &[control, answer], now).await?;
    let found = store.events_by_request("s1", "r1").await?;
    assert_eq!(
        found
            .iter()
            .map(|e| (e.seq, e.kind.as_str()))
            .collect::<Vec<_>>(),
        [(4, "control_request"), (5, "control_response")]
    );
    // Who sent an inbound event is kept with it.
    assert_eq!(found[0].sent_with, None);
    assert_eq!(found[1].sent_with.as_deref(), Some("ingress_token"));
    assert!(store.events_by_request("s1", "r2").await?.is_empty());

    // An event's audit entry is stored with it, once, with its sequence number; a
    // duplicate of the event writes none.
    store
        .create_session(&session("s-audit", &alice.id, None, now))
        .await?;
    let audited = NewEvent {
        audit: Some(AuditEntry {
            id: 0,
            owner_id: alice.id.clone(),
            at: now,
            action: "session.prompt".into(),
            credential_id: Some("k1".into()),
            credential_name: None,
            address: None,
            user_agent: None,
            session_id: Some("s-audit".into()),
            detail: r#"{"text":"audited"}"#.into(),
        }),
        ..event(Direction::Inbound, Some("u-audited"), "audited")
    };
    let first = store
        .append_events("s-audit", std::slice::from_ref(&audited), now)
        .await?;
    let again = store.append_events("s-audit", &[audited], now).await?;
    assert_eq!((first[0].duplicate, again[0].duplicate), (false, true));
    let log = store
        .audit_log(
            &alice.id,
            &AuditQuery {
                session_id: Some("s-audit".into()),
                limit: 10,
                ..AuditQuery::default()
            },
        )
        .await?;
    assert_eq!(log.len(), 1, "{log:?}");
    let detail: serde_json::Value = serde_json::from_str(&log[0].detail)?;
    assert_eq!(
        detail,
        json!({"text": "audited", "sequence_num": first[0].seq})
    );

    // Worker epochs: bumped per worker; state is applied only with the current epoch.
    assert_eq!(store.bump_worker_epoch("s2", now).await?, 1);
    assert_eq!(store.bump_worker_epoch("s2", now).await?, 2);
    let update = WorkerUpdate {
        status: Some(SessionStatus::Running),
        requires_action: None,
        external_metadata: Some(json!({"model":"m","pending_action":{"tool":"x"}})),
    };
    let s2 = store.update_worker("s2", 2, &update, now).await?;
    assert_eq!(
        (s2.status, s2.external_metadata.clone()),
        (
            SessionStatus::Running,
            json!({"model":"m","pending_action":{"tool":"x"}})
        )
    );
    let clear = WorkerUpdate {
        external_metadata: Some(json!({"pending_action":null})),
        ..Default::default()
    };
    assert_eq!(
        store
            .update_worker("s2", 2, &clear, now)
            .await?
            .external_metadata,
        json!({"model":"m"})
    );
    assert!(matches!(
        store.update_worker("s2", 1, &clear, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.session("s2").await?.external_metadata,
        json!({"model":"m"})
    );

    // Internal events: numbered per session, split into main agent and subagents.
    let internal = |agent: Option<&str>| NewInternalEvent {
        event_type: "user".into(),
        payload: "{}".into(),
        is_compaction: false,
        agent_id: agent.map(str::to_string),
    };
    assert_eq!(
        store
            .append_internal_events(
                "s2",
                &[internal(None), internal(Some("a1")), internal(None)],
                now
            )
            .await?,
        [1, 2, 3]
    );
    let main: Vec<u64> = store
        .internal_events("s2", 0, false, 10)
        .await?
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(main, [1, 3]);
    let sub: Vec<u64> = store
        .internal_events("s2", 0, true, 10)
        .await?
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(sub, [2]);
    assert_eq!(store.internal_events("s2", 1, false, 10).await?.len(), 1);

    // Signing keys: newest first; retiring removes older ones.
    for (id, at) in [("k-old", now), ("k-new", now + 10)] {
        store
            .insert_signing_key(&SigningKey {
                id: id.into(),
                secret: "s".into(),
                created_at: at,
                retired_at: None,
            })
            .await?;
    }
    let keys: Vec<String> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(keys, ["k-new", "k-old"]);
    assert_eq!(store.retire_signing_keys(now + 10, now + 20).await?, 1);
    let keys: Vec<String> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(keys, ["k-new"]);

    // The worker cursor only moves forward.
    store.advance_worker_cursor("s1", 3).await?;
    store.advance_worker_cursor("s1", 1).await?;
    assert_eq!(store.session("s1").await?.worker_cursor, 3);

    // Archive once; the second time conflicts; unknown sessions are NotFound.
    store
        .enqueue_work(&work("w3", "env_1", "s1", now + 900))
        .await?;
    store.archive_session("s1", now + 1000).await?;
    let archived = store.session("s1").await?;
    assert_eq!(
        (archived.status, archived.archived_at),
        (SessionStatus::Archived, Some(now + 1000))
    );
    assert_eq!(
        store.work_item("env_1", "w3").await?.state,
        WorkState::Stopped
    );
    assert!(matches!(
        store.archive_session("s1", now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.archive_session("zz", now).await,
        Err(StoreError::NotFound)
    ));
    store
        .set_session_status("s1", SessionStatus::Running, None, now)
        .await?;
    assert_eq!(store.session("s1").await?.status, SessionStatus::Archived);

    // Deregistration stops the environment's work and marks it gone.
    store.enqueue_work(&work("w4", "env_1", "s2", now)).await?;
    store.deregister_environment("env_1", now + 2000).await?;
    assert_eq!(
        store.environment("env_1").await?.deregistered_at,
        Some(now + 2000)
    );
    assert!(store.live_environments(&alice.id).await?.is_empty());
    assert_eq!(
        store.work_item("env_1", "w4").await?.state,
        WorkState::Stopped
    );
    assert!(store
        .claim_work("env_1", now + 3000, now + 3000)
        .await?
        .is_none());
    // Re-registering revives it.
    store
        .upsert_environment(&Environment {
            last_poll_at: now + 4000,
            ..env
        })
        .await?;
    assert_eq!(store.environment("env_1").await?.deregistered_at, None);

    notifications(store, &alice.id, &bob.id, now).await?;
    Ok(())
}

/// Notification settings, channels, push subscriptions and the VAPID key (issue 15).
async fn notifications(
    store: &dyn Store,
    alice: &str,
    bob: &str,
    now: Millis,
) -> anyhow::Result<()> {
    // Settings: none until set; set again replaces.
    assert_eq!(store.notify_settings(alice).await?, None);
    store
        .set_notify_settings(alice, &["permission".into(), "result".into()], now)
        .await?;
    store
        .set_notify_settings(alice, &["permission".into()], now + 1)
        .await?;
    assert_eq!(
        store.notify_settings(alice).await?,
        Some(vec!["permission".to_string()])
    );
    assert_eq!(store.notify_settings(bob).await?, None);

    // Channels: one per kind and owner; setting it again replaces it.
    let hook = NotifyChannel {
        owner_id: alice.into(),
        kind: "webhook".into(),
        url: "http://127.0.0.1:9/a".into(),
        secret: Some("k1".into()),
        origin: Some("https://a.example".into()),
        created_at: now,
    };
    store.put_notify_channel(&hook).await?;
    let hook2 = NotifyChannel {
        url: "http://127.0.0.1:9/b".into(),
        secret: Some("k2".into()),
        ..hook.clone()
    };
    store.put_notify_channel(&hook2).await?;
    let ntfy = NotifyChannel {
        kind: "ntfy".into(),
        url: "http://127.0.0.1:9/topic".into(),
        secret: None,
        ..hook.clone()
    };
    store.put_notify_channel(&ntfy).await?;
    assert_eq!(store.notify_channels(alice).await?, [ntfy, hook2]);
    assert!(store.notify_channels(bob).await?.is_empty());
    assert!(!store.delete_notify_channel(bob, "webhook").await?);
    assert!(store.delete_notify_channel(alice, "webhook").await?);
    assert!(!store.delete_notify_channel(alice, "webhook").await?);
    assert_eq!(store.notify_channels(alice).await?.len(), 1);

    // Push subscriptions: per owner; the same endpoint again replaces the old one.
    let sub = |id: &str, owner: &str, endpoint: &str, at: Millis| PushSubscription {
        id: id.into(),
        owner_id: owner.into(),
        endpoint: endpoint.into(),
        p256dh: "BPk".into(),
        auth: "au".into(),
        user_agent: Some("phone".into()),
        origin: Some("https://a.example".into()),
        created_at: at,
    };
    store
        .put_push_subscription(&sub("p1", alice, "http://push/1", now))
        .await?;
    store
        .put_push_subscription(&sub("p2", alice, "http://push/2", now + 1))
        .await?;
    store
        .put_push_subscription(&sub("p3", bob, "http://push/1", now + 2))
        .await?;
    let ids = |subs: Vec<PushSubscription>| subs.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.push_subscriptions(alice).await?), ["p2"]);
    assert_eq!(
        store.push_subscriptions(bob).await?,
        [sub("p3", bob, "http://push/1", now + 2)]
    );
    assert!(!store.delete_push_subscription(alice, "p3").await?);
    assert!(store.delete_push_subscription(bob, "p3").await?);
    assert!(store.push_subscriptions(bob).await?.is_empty());

    // The VAPID key: the first candidate wins, later ones get it back.
    assert_eq!(store.vapid_key("first", now).await?, "first");
    assert_eq!(store.vapid_key("second", now + 1).await?, "first");
    Ok(())
}

/// Appenders to one session and pollers of one environment run at once; the log stays
/// gap-free, each uuid is stored once and each work item is claimed once.
async fn concurrent_story(store: ArcStore) -> anyhow::Result<()> {
    const TASKS: usize = 8;
    const BATCHES: usize = 10;
    const WORK_ITEMS: usize = 20;
    let now = 1_700_000_000_000;

    // Arrange: one session and a queue of work, set up before the tasks start.
    let owner = store.ensure_owner("carol", now).await?;
    store
        .create_session(&session("c1", &owner.id, None, now))
        .await?;
    for i in 0..WORK_ITEMS {
        store
            .enqueue_work(&work(&format!("cw{i:02}"), "env_c", "c1", now))
            .await?;
    }

    // Act: every task creates one owner they all share, then appends batches of an
    // own event plus one uuid every task sends, then polls until the queue is empty.
    let tasks = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let dave = store.ensure_owner("dave", now).await?;
                let mut appended = Vec::new();
                for batch in 0..BATCHES {
                    let own = format!("t{task}-{batch}");
                    let events = [
                        event(Direction::Inbound, Some(&own), "own"),
                        event(Direction::Inbound, Some("shared"), "shared"),
                    ];
                    appended.extend(store.append_events("c1", &events, now).await?);
                }
                let mut claimed = Vec::new();
                // Nothing is reclaimed: everything was delivered after time 0.
                while let Some(item) = store.claim_work("env_c", now + 1, 0).await? {
                    claimed.push(item.id);
                }
                anyhow::Ok((dave, appended, claimed))
            })
        })
        .collect::<Vec<_>>();
    let (mut owners, mut appended, mut claimed) = (Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        let (dave, a, c) = task.await??;
        owners.push(dave);
        appended.extend(a);
        claimed.extend(c);
    }

    // Assert: one owner; sequence numbers 1..=N, each handed out once, the shared uuid
    // stored once and reported with its one number to everyone; each item claimed once.
    assert!(owners.iter().all(|o| *o == owners[0]), "{owners:?}");
    let stored = TASKS * BATCHES + 1;
    let mut fresh: Vec<u64> = appended
        .iter()
        .filter(|a| !a.duplicate)
        .map(|a| a.seq)
        .collect();
    fresh.sort_unstable();
    assert_eq!(fresh, (1..=stored as u64).collect::<Vec<_>>());
    let shared: Vec<u64> = appended
        .iter()
        .filter(|a| a.duplicate)
        .map(|a| a.seq)
        .collect();
    assert_eq!(shared.len(), TASKS * BATCHES - 1);
    let shared_seq = shared[0];
    assert!(shared.iter().all(|s| *s == shared_seq), "{shared:?}");
    let log = store
        .events(
            "c1",
            &EventQuery {
                limit: 1000,
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=stored as u64).collect::<Vec<_>>()
    );
    assert_eq!(log[shared_seq as usize - 1].uuid.as_deref(), Some("shared"));
    assert_eq!(store.session("c1").await?.last_seq, stored as u64);
    claimed.sort();
    assert_eq!(
        claimed,
        (0..WORK_ITEMS)
            .map(|i| format!("cw{i:02}"))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Writes a little, closes the store, opens the same URL again and checks the log
/// (and its uuid index) survived; reopening also re-runs the migrations.
async fn log_survives_reopen(url: &str) -> anyhow::Result<()> {
    {
        let store = open(url).await?;
        store.ensure_owner("o", 1).await?;
        store
            .create_session(&session(
                "s1",
                &store.ensure_owner("o", 1).await?.id,
                None,
                1,
            ))
            .await?;
        store
            .append_events("s1", &[event(Direction::Outbound, Some("u"), "a")], 1)
            .await?;
    }
    let store = open(url).await?;
    let events = store.events("s1", &EventQuery::default()).await?;
    assert_eq!(events.len(), 1);
    let appended = store
        .append_events("s1", &[event(Direction::Outbound, Some("u"), "a")], 2)
        .await?;
    assert!(appended[0].duplicate);
    Ok(())
}

/// Work cut short (interrupted, or left open by a bridge that died) is handed back once
/// when its environment registers again; finished and archived sessions' work is not.
async fn resumable_work_story(store: &dyn Store) -> anyhow::Result<()> {
    let now = 1_700_000_000_000;
    let alice = store.ensure_owner("alice", now).await?;
    for (i, id) in ["open", "cut", "done", "gone", "waiting"]
        .iter()
        .enumerate()
    {
        let at = now + i as i64;
        store
            .create_session(&session(id, &alice.id, Some("env_r"), at))
            .await?;
        store
            .enqueue_work(&work(&format!("w_{id}"), "env_r", id, at))
            .await?;
        if *id != "waiting" {
            store
                .claim_work("env_r", at, 0)
                .await?
                .expect("queued work");
            store
                .update_work("env_r", &format!("w_{id}"), WorkState::Acked, at)
                .await?;
        }
    }
    let cut = store.interrupt_work("env_r", "w_cut", now + 10).await?;
    assert_eq!(cut.state, WorkState::Stopped);
    store
        .update_work("env_r", "w_done", WorkState::Stopped, now + 10)
        .await?;
    // Interrupting an item that already ended leaves it ended.
    store.interrupt_work("env_r", "w_done", now + 11).await?;
    store.archive_session("gone", now + 10).await?;
    assert!(matches!(
        store.interrupt_work("env_r", "nope", now).await,
        Err(StoreError::NotFound)
    ));
    // Another environment's work is not touched.
    store
        .create_session(&session("other", &alice.id, Some("env_o"), now))
        .await?;
    store
        .enqueue_work(&work("w_other", "env_o", "other", now))
        .await?;
    store
        .claim_work("env_o", now, 0)
        .await?
        .expect("queued work");

    let resumed = store.take_resumable_work("env_r", now + 20).await?;
    assert_eq!(resumed, ["open", "cut"]);
    assert_eq!(
        store.work_item("env_r", "w_open").await?.state,
        WorkState::Stopped
    );
    assert_eq!(
        store.work_item("env_r", "w_waiting").await?.state,
        WorkState::Queued
    );
    assert_eq!(
        store.work_item("env_o", "w_other").await?.state,
        WorkState::Delivered
    );
    // Each once.
    assert!(store
        .take_resumable_work("env_r", now + 30)
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn sqlite_store_hands_back_interrupted_work_once() -> anyhow::Result<()> {
    let (_dir, store) = sqlite().await?;
    resumable_work_story(store.as_ref()).await
}

#[tokio::test]
async fn postgres_store_hands_back_interrupted_work_once() -> anyhow::Result<()> {
    let Some(db) = PgTestDb::create("postgres_store_hands_back_interrupted_work_once").await?
    else {
        return Ok(());
    };
    let store = open(&db.url).await?;
    resumable_work_story(store.as_ref()).await
}

#[tokio::test]
async fn sqlite_store_passes_the_story() -> anyhow::Result<()> {
    let (_dir, store) = sqlite().await?;
    story(store.as_ref()).await
}

#[tokio::test]
async fn sqlite_store_keeps_its_log_across_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    log_survives_reopen(&sqlite_url(&dir)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_keeps_its_invariants_under_concurrent_writers() -> anyhow::Result<()> {
    let (_dir, store) = sqlite().await?;
    concurrent_story(store).await
}

#[tokio::test]
async fn postgres_store_passes_the_story() -> anyhow::Result<()> {
    let Some(db) = PgTestDb::create("postgres_store_passes_the_story").await? else {
        return Ok(());
    };
    let store = open(&db.url).await?;
    story(store.as_ref()).await
}

#[tokio::test]
async fn postgres_store_keeps_its_log_across_reopen() -> anyhow::Result<()> {
    let Some(db) = PgTestDb::create("postgres_store_keeps_its_log_across_reopen").await? else {
        return Ok(());
    };
    log_survives_reopen(&db.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_keeps_its_invariants_under_concurrent_writers() -> anyhow::Result<()> {
    let Some(db) =
        PgTestDb::create("postgres_store_keeps_its_invariants_under_concurrent_writers").await?
    else {
        return Ok(());
    };
    let store = open(&db.url).await?;
    concurrent_story(store).await
}

#[tokio::test]
async fn unknown_url_schemes_are_refused_with_a_clear_error() {
    let err = open("mysql://x")
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("unsupported database URL scheme"), "{err}");
}

#[test]
fn test_database_urls_keep_credentials_and_parameters() -> anyhow::Result<()> {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "sb_x")?,
        "postgres://postgres@127.0.0.1:5432/sb_x"
    );
    assert_eq!(
        with_database("postgresql://u:p@h/test?sslmode=disable", "sb_x")?,
        "postgresql://u:p@h/sb_x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "sb_x")?,
        "postgres://h:5432/sb_x"
    );
    Ok(())
}

/// Roles, devices, approval rules and the audit log (issue 16).
async fn access_story(store: &dyn Store) -> anyhow::Result<()> {
    let now = 1_700_000_000_000;
    let alice = store.ensure_owner("alice", now).await?;
    let bob = store.ensure_owner("bob", now).await?;
    let cred = |id: &str, kind, owner: &str, role, created_at| Credential {
        id: id.into(),
        kind,
        owner_id: owner.to_string(),
        scope: None,
        work_id: None,
        name: id.into(),
        secret_hash: "ab".into(),
        created_at,
        expires_at: None,
        revoked_at: None,
        role,
    };
    // Roles round-trip; devices are an owner's live keys and browsers, newest first.
    store
        .insert_credential(&cred(
            "k1",
            CredentialKind::ApiKey,
            &alice.id,
            Role::Admin,
            now,
        ))
        .await?;
    store
        .insert_credential(&cred(
            "w1",
            CredentialKind::WebSession,
            &alice.id,
            Role::Viewer,
            now + 1,
        ))
        .await?;
    store
        .insert_credential(&cred(
            "p1",
            CredentialKind::Pairing,
            &alice.id,
            Role::Driver,
            now + 2,
        ))
        .await?;
    store
        .insert_credential(&cred(
            "k2",
            CredentialKind::ApiKey,
            &bob.id,
            Role::Approver,
            now,
        ))
        .await?;
    let expired = Credential {
        expires_at: Some(now),
        ..cred(
            "w2",
            CredentialKind::WebSession,
            &alice.id,
            Role::Admin,
            now,
        )
    };
    store.insert_credential(&expired).await?;
    assert_eq!(store.credential("w1").await?.role, Role::Viewer);
    assert_eq!(store.credential("k2").await?.role, Role::Approver);
    let devices = store.devices(&alice.id, now + 10).await?;
    let ids: Vec<_> = devices.iter().map(|d| d.credential.id.as_str()).collect();
    assert_eq!(ids, ["w1", "k1"]);
    assert_eq!(devices[0].last_used_at, None);
    // A use is recorded; a use without an address keeps the one before.
    store
        .touch_credential("w1", now + 20, Some("10.0.0.1"), Some("Firefox"))
        .await?;
    store.touch_credential("w1", now + 30, None, None).await?;
    let w1 = store.devices(&alice.id, now + 40).await?.remove(0);
    assert_eq!(w1.last_used_at, Some(now + 30));
    assert_eq!(w1.last_address.as_deref(), Some("10.0.0.1"));
    assert_eq!(w1.user_agent.as_deref(), Some("Firefox"));
    // Renaming and revoking reach only the owner's own credentials, once.
    assert!(store.rename_credential(&alice.id, "w1", "phone").await?);
    assert!(!store.rename_credential(&bob.id, "w1", "mine").await?);
    assert_eq!(store.credential("w1").await?.name, "phone");
    assert!(
        store
            .set_credential_role(&alice.id, "w1", Role::Approver)
            .await?
    );
    assert!(
        !store
            .set_credential_role(&bob.id, "w1", Role::Admin)
            .await?
    );
    assert!(
        !store
            .set_credential_role(&alice.id, "p1", Role::Admin)
            .await?
    );
    assert_eq!(store.credential("w1").await?.role, Role::Approver);
    assert!(
        !store
            .revoke_owner_credential(&bob.id, "w1", now + 50)
            .await?
    );
    assert!(
        store
            .revoke_owner_credential(&alice.id, "w1", now + 50)
            .await?
    );
    assert!(
        !store
            .revoke_owner_credential(&alice.id, "w1", now + 51)
            .await?
    );
    assert_eq!(store.credential("w1").await?.revoked_at, Some(now + 50));
    assert_eq!(store.devices(&alice.id, now + 60).await?.len(), 1);

    // Rules come back in position order, per owner; deleting reaches only the owner's.
    assert_eq!(store.policy_rules(&alice.id).await?, vec![]);
    let rule = |id: &str, position, decision| PolicyRule {
        id: id.into(),
        owner_id: alice.id.clone(),
        environment_id: None,
        session_id: Some("s1".into()),
        position,
        tool: "Bash".into(),
        pattern: Some("git status".into()),
        decision,
        created_at: now,
    };
    store
        .insert_policy_rule(&rule("r2", 2, Decision::Deny))
        .await?;
    store
        .insert_policy_rule(&rule("r1", 1, Decision::Allow))
        .await?;
    let rules = store.policy_rules(&alice.id).await?;
    assert_eq!(
        rules,
        vec![
            rule("r1", 1, Decision::Allow),
            rule("r2", 2, Decision::Deny)
        ]
    );
    assert!(store.policy_rules(&bob.id).await?.is_empty());
    assert!(!store.delete_policy_rule(&bob.id, "r1").await?);
    assert!(store.delete_policy_rule(&alice.id, "r1").await?);
    assert_eq!(store.policy_rules(&alice.id).await?.len(), 1);
    // Settings: `ask` without a timeout until set; set twice, the last one holds.
    assert_eq!(
        store.policy_settings(&alice.id).await?,
        PolicySettings::default()
    );
    for timeout in [Some(5_000), None] {
        let settings = PolicySettings {
            default: Decision::Deny,
            timeout_ms: timeout,
        };
        store.set_policy_settings(&alice.id, settings, now).await?;
        assert_eq!(store.policy_settings(&alice.id).await?, settings);
    }

    // The audit log: newest first, filtered by session and time, paged by id, with the
    // credential's current name.
    let entry = |at, session: Option<&str>| AuditEntry {
        id: 0,
        owner_id: alice.id.clone(),
        at,
        action: "session.prompt".into(),
        credential_id: Some("k1".into()),
        credential_name: None,
        address: Some("127.0.0.1".into()),
        user_agent: None,
        session_id: session.map(str::to_string),
        detail: "{}".into(),
    };
    let mut ids = Vec::new();
    for (i, session) in [Some("s1"), None, Some("s1"), Some("s2")]
        .into_iter()
        .enumerate()
    {
        ids.push(store.append_audit(&entry(now + i as i64, session)).await?);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let all = AuditQuery {
        limit: 10,
        ..AuditQuery::default()
    };
    let log = store.audit_log(&alice.id, &all).await?;
    assert_eq!(
        log.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(log[0].credential_name.as_deref(), Some("k1"));
    assert_eq!(log[0].address.as_deref(), Some("127.0.0.1"));
    let s1 = AuditQuery {
        session_id: Some("s1".into()),
        ..all.clone()
    };
    assert_eq!(store.audit_log(&alice.id, &s1).await?.len(), 2);
    let page = AuditQuery {
        before_id: Some(ids[2]),
        limit: 1,
        ..all.clone()
    };
    assert_eq!(store.audit_log(&alice.id, &page).await?[0].id, ids[1]);
    let since = AuditQuery {
        since: Some(now + 2),
        ..all.clone()
    };
    assert_eq!(store.audit_log(&alice.id, &since).await?.len(), 2);
    assert!(store.audit_log(&bob.id, &all).await?.is_empty());

    // Shares: by owner name, one per (session, owner), the last role holds; unknown
    // names are NotFound; each side lists them.
    assert!(store.session_shares("s1").await?.is_empty());
    assert_eq!(store.session_share("s1", &bob.id).await?, None);
    let share = store
        .put_session_share("s1", &bob.name, Role::Viewer, now)
        .await?;
    assert_eq!(
        (
            share.owner_id.as_str(),
            share.owner_name.as_str(),
            share.role
        ),
        (bob.id.as_str(), bob.name.as_str(), Role::Viewer)
    );
    let share = store
        .put_session_share("s1", &bob.name, Role::Approver, now + 1)
        .await?;
    assert_eq!((share.role, share.created_at), (Role::Approver, now + 1));
    store
        .put_session_share("s2", &bob.name, Role::Driver, now + 2)
        .await?;
    assert!(matches!(
        store
            .put_session_share("s1", "nobody", Role::Viewer, now)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.session_shares("s1").await?, vec![share.clone()]);
    assert_eq!(
        store.session_share("s1", &bob.id).await?,
        Some(Role::Approver)
    );
    assert_eq!(store.session_share("s1", &alice.id).await?, None);
    let mine = store.shared_with(&bob.id).await?;
    assert_eq!(
        mine.iter()
            .map(|s| s.session_id.as_str())
            .collect::<Vec<_>>(),
        ["s2", "s1"]
    );
    assert!(store.shared_with(&alice.id).await?.is_empty());
    assert!(store.delete_session_share("s1", &bob.id).await?);
    assert!(!store.delete_session_share("s1", &bob.id).await?);
    assert_eq!(store.session_share("s1", &bob.id).await?, None);
    assert_eq!(store.shared_with(&bob.id).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn sqlite_store_keeps_roles_devices_rules_and_the_audit_log() -> anyhow::Result<()> {
    let (_dir, store) = sqlite().await?;
    access_story(store.as_ref()).await
}

#[tokio::test]
async fn postgres_store_keeps_roles_devices_rules_and_the_audit_log() -> anyhow::Result<()> {
    let Some(db) =
        PgTestDb::create("postgres_store_keeps_roles_devices_rules_and_the_audit_log").await?
    else {
        return Ok(());
    };
    let store = open(&db.url).await?;
    access_story(store.as_ref()).await
}
