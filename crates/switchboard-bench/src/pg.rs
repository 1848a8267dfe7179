//! `--database-url`: every Switchboard system the bench starts gets a database of its own
//! on that PostgreSQL server (all its nodes share it), dropped again when it stops, so
//! no scenario reads what another left behind.

use anyhow::Context as _;
use sqlx::Connection as _;

/// A database made for one system.
pub(crate) struct PgDatabase {
    /// The URL it was created through (the server's own database); dropped through it.
    admin: String,
    name: String,
    /// The URL of the new database.
    pub(crate) url: String,
}

impl PgDatabase {
    /// Creates `sb_bench_<pid>_<n>` on the server `admin` names.
    pub(crate) async fn create(admin: &str) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "sb_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .context("cannot connect to --database-url")?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        conn.close().await?;
        let mut url = url::Url::parse(admin).context("--database-url is not a URL")?;
        url.set_path(&format!("/{name}"));
        Ok(Self {
            admin: admin.to_string(),
            name,
            url: url.to_string(),
        })
    }

    /// Drops the database (closing what still uses it).
    pub(crate) async fn drop_database(self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("cannot drop database {}", self.name))?;
        conn.close().await?;
        Ok(())
    }
}
