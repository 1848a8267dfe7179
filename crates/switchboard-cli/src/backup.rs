//! `switchboard backup OUT`: a consistent copy of the server's database, taken while the
//! server runs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::StoreArgs;

/// Flags of `switchboard backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The file to write the copy to; it must not exist yet. Restore by stopping the
    /// server and putting the copy in place of `switchboard.db` in the data directory.
    #[arg(value_name = "OUT")]
    out: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

pub(crate) async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let url = args.store.database_url()?;
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        anyhow::bail!(
            "a PostgreSQL database is backed up with PostgreSQL's own tool, while the server \
             runs: pg_dump --format=custom --file {} '{}' (restore with pg_restore)",
            args.out.display(),
            switchboard_store::redact_url(&url)
        );
    }
    let out = args.out.clone();
    let source = url.clone();
    tokio::task::spawn_blocking(move || switchboard_store::sqlite::backup_to(&source, &out))
        .await
        .context("the backup task failed")??;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "Backed up {} to {} ({size} bytes, checked).",
        url.trim_start_matches("sqlite://"),
        args.out.display()
    );
    Ok(())
}
