//! `sqlite::backup_to` copies a database that is being written to: the copy is a
//! consistent database holding every event committed before the backup began, in order
//! and without gaps, readable by its owner only; an existing file is never overwritten.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use switchboard_store::*;

fn session(id: &str, owner: &str) -> Session {
    Session {
        id: id.into(),
        owner_id: owner.into(),
        environment_id: None,
        title: None,
        status: SessionStatus::Idle,
        session_context: json!({}),
        source: None,
        permission_mode: None,
        use_code_sessions: false,
        created_at: 1,
        updated_at: 1,
        archived_at: None,
        last_seq: 0,
        last_activity_at: None,
        worker_cursor: 0,
        worker_epoch: 0,
        external_metadata: json!({}),
        requires_action: None,
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        direction: Direction::Outbound,
        kind: "assistant".into(),
        uuid: Some(format!("u{n}")),
        payload: json!({"type": "assistant", "n": n}).to_string(),
        request_id: None,
        sent_with: None,
        audit: None,
    }
}

/// The most events the writer appends (the loop is bounded).
const MAX_EVENTS: u64 = 20_000;

#[tokio::test]
async fn a_backup_taken_while_a_writer_appends_is_consistent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("live.db").display());
    let store = open(&url).await?;
    let owner = store.ensure_owner("me", 1).await?;
    store.create_session(&session("s1", &owner.id)).await?;

    // A writer appends one event per transaction until told to stop; `committed` is the
    // number of events whose append has returned (so they are committed).
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, committed, stop) = (store.clone(), committed.clone(), stop.clone());
        tokio::spawn(async move {
            for n in 1..=MAX_EVENTS {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                store.append_events("s1", &[event(n)], 10).await?;
                committed.store(n, Ordering::SeqCst);
            }
            anyhow::Ok(())
        })
    };
    while committed.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let copy = dir.path().join("copy.db");
    let before = committed.load(Ordering::SeqCst);
    let (source, target) = (url.clone(), copy.clone());
    tokio::task::spawn_blocking(move || sqlite::backup_to(&source, &target)).await??;
    let after = committed.load(Ordering::SeqCst);
    // The writer went on during the backup and after it.
    while committed.load(Ordering::SeqCst) < after + 50 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await??;
    let total = committed.load(Ordering::SeqCst);

    let mode = std::fs::metadata(&copy)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy is readable by its owner only");

    let restored = open(&format!("sqlite://{}", copy.display())).await?;
    let mut seqs = Vec::new();
    let mut after_seq = 0;
    loop {
        let page = restored
            .events(
                "s1",
                &EventQuery {
                    after: Some(after_seq),
                    limit: 1000,
                    ..EventQuery::default()
                },
            )
            .await?;
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        for e in &page {
            let payload: serde_json::Value = serde_json::from_str(&e.payload)?;
            assert_eq!(
                payload["n"], e.seq,
                "event {} holds what was written",
                e.seq
            );
        }
        seqs.extend(page.iter().map(|e| e.seq));
    }
    let n = seqs.len() as u64;
    assert!(
        seqs.iter().copied().eq(1..=n),
        "the copy's log has no gaps: {} events",
        seqs.len()
    );
    assert!(
        n >= before,
        "the copy holds every event committed before the backup ({n} < {before})"
    );
    // One append is in flight at a time: it may have committed before the snapshot and
    // not yet returned when the backup did.
    assert!(
        n <= after + 1,
        "nothing committed after the backup ({n} > {after} + 1)"
    );
    assert!(total > n, "the writer kept writing past the snapshot");
    assert_eq!(restored.session("s1").await?.last_seq, n);
    // The live database went on untouched.
    assert_eq!(store.session("s1").await?.last_seq, total);
    Ok(())
}

#[tokio::test]
async fn a_backup_never_overwrites_and_needs_a_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("live.db").display());
    let _store = open(&url).await?;
    let existing = dir.path().join("existing.db");
    std::fs::write(&existing, b"precious")?;
    let error = sqlite::backup_to(&url, &existing)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("exists already"), "{error}");
    assert_eq!(std::fs::read(&existing)?, b"precious");

    let missing = format!("sqlite://{}", dir.path().join("nothing.db").display());
    let out = dir.path().join("out.db");
    let error = sqlite::backup_to(&missing, &out)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("no SQLite database"), "{error}");
    assert!(!out.exists(), "nothing is left behind");
    Ok(())
}
