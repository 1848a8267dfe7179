//! A SQLite database made by an earlier version of the store opens in this one with its
//! log intact: migration 0002 moves the logs into append-order tables.

use std::borrow::Cow;

use sqlx::Connection as _;
use switchboard_store::*;

#[tokio::test]
async fn logs_written_before_migration_2_survive_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("old.db").display());

    // The schema as the first release left it, with a session and its log.
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()?
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let mut first = sqlx::migrate!("migrations/sqlite");
    first.migrations = Cow::Owned(first.migrations[..1].to_vec());
    first.run(&mut conn).await?;
    sqlx::query("INSERT INTO owners (id, name, created_at) VALUES ('o1', 'me', 1)")
        .execute(&mut conn)
        .await?;
    sqlx::query(
        "INSERT INTO sessions (id, owner_id, status, session_context, use_code_sessions, \
         created_at, updated_at, last_seq, last_activity_at) \
         VALUES ('s1', 'o1', 'running', '{}', 0, 1, 1, 2, 20)",
    )
    .execute(&mut conn)
    .await?;
    for (seq, uuid, at) in [(1, "u1", 10), (2, "u2", 20)] {
        sqlx::query(
            "INSERT INTO events (session_id, seq, direction, kind, uuid, payload, created_at) \
             VALUES ('s1', ?, 'in', 'user', ?, '{\"type\":\"user\"}', ?)",
        )
        .bind(seq)
        .bind(uuid)
        .bind(at)
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;

    let store = open(&url).await?;
    let session = store.session("s1").await?;
    assert_eq!(session.last_seq, 2);
    assert_eq!(session.last_activity_at, Some(20));
    let events = store.events("s1", &EventQuery::default()).await?;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);

    // The log goes on where it stopped, and old uuids still deduplicate.
    let appended = store
        .append_events(
            "s1",
            &[
                NewEvent {
                    direction: Direction::Inbound,
                    kind: "user".into(),
                    uuid: Some("u2".into()),
                    payload: "{}".into(),
                    request_id: None,
                    sent_with: None,
                    audit: None,
                },
                NewEvent {
                    direction: Direction::Outbound,
                    kind: "assistant".into(),
                    uuid: Some("u3".into()),
                    payload: "{}".into(),
                    request_id: None,
                    sent_with: None,
                    audit: None,
                },
            ],
            30,
        )
        .await?;
    assert_eq!(
        appended,
        vec![
            Appended {
                seq: 2,
                duplicate: true
            },
            Appended {
                seq: 3,
                duplicate: false
            }
        ]
    );
    let session = store.session("s1").await?;
    assert_eq!((session.last_seq, session.last_activity_at), (3, Some(30)));
    Ok(())
}
