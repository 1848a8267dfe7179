//! The SQLite files are readable by their owner only: a new database is 0600 with its
//! `-wal` and `-shm`, and looser existing ones are tightened when the store opens.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use switchboard_store::sqlite::SqliteStore;
use switchboard_store::Store as _;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    format!("{}{suffix}", path.display()).into()
}

#[tokio::test]
async fn a_new_database_and_its_wal_and_shm_are_private() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("switchboard.db");
    let store = SqliteStore::open(&format!("sqlite://{}", db.display())).await?;
    // A write, so the WAL has frames in it.
    store.ensure_owner("alice", 1).await?;
    for file in [
        db.clone(),
        with_suffix(&db, "-wal"),
        with_suffix(&db, "-shm"),
    ] {
        assert!(
            file.exists(),
            "{} exists while the store is open",
            file.display()
        );
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    Ok(())
}

#[tokio::test]
async fn looser_existing_files_are_tightened_at_open() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("switchboard.db");
    let url = format!("sqlite://{}", db.display());
    {
        let store = SqliteStore::open(&url).await?;
        store.ensure_owner("alice", 1).await?;
    }
    // As an older version (or a copy with `cp`) left them.
    let wal = with_suffix(&db, "-wal");
    if !wal.exists() {
        std::fs::write(&wal, b"")?;
    }
    for file in [&db, &wal] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))?;
    }
    let store = SqliteStore::open(&url).await?;
    assert_eq!(store.ensure_owner("alice", 2).await?.name, "alice");
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&wal), 0o600);
    Ok(())
}
