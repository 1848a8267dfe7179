//! `switchboard`: the server and the client commands in one binary.
//!
//! This file parses flags, sets up logging and dispatches; each command lives in its own
//! module and calls into the libraries.

#![forbid(unsafe_code)]

mod access;
mod attach;
mod backup;
mod bridge;
mod notify;
mod pair;
mod remote;
mod render;
mod review;
mod serve;
mod sessions;
mod token;

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Self-hosted remote control for terminal coding agents.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List your sessions with their state and last activity.
    Sessions(sessions::SessionsArgs),
    /// Watch a session live, send it prompts and answer its permission requests.
    Attach(attach::AttachArgs),
    /// Put an agent on this machine under remote control (like `claude remote-control`).
    Bridge(Box<bridge::BridgeArgs>),
    /// Print a single-use link (and QR code) that signs a browser in to the web UI.
    Pair(pair::PairArgs),
    /// Copy the database to a new file, consistently, while the server runs (SQLite; for
    /// PostgreSQL it names the pg_dump command).
    Backup(backup::BackupArgs),
    /// Choose what calls you back (permission requests, finished turns…) and where:
    /// a webhook, an ntfy topic, browsers.
    Notify(notify::NotifyArgs),
    /// List, rename, re-role or revoke API keys and signed-in browsers.
    #[command(subcommand)]
    Devices(access::DevicesCommand),
    /// Approval rules: answer permission requests by tool and input, or ask a person.
    #[command(subcommand)]
    Policy(access::PolicyCommand),
    /// Show who answered, prompted, interrupted or changed what, newest first.
    Audit(access::AuditArgs),
    /// Share a session with another owner at a role, list its shares, or end one.
    #[command(subcommand)]
    Share(access::ShareCommand),
}

/// Where the server keeps its data; shared by `serve` and the commands that open the
/// store directly.
#[derive(Debug, Clone, Args)]
struct StoreArgs {
    /// Directory of the embedded SQLite database (default: the user's data directory).
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL; overrides --data-dir. `sqlite://PATH` or `postgres://…`.
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

impl StoreArgs {
    /// The database URL these flags select, creating the data directory if needed.
    fn database_url(&self) -> anyhow::Result<String> {
        use anyhow::Context as _;
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir()
                .context("cannot find the user's data directory; pass --data-dir")?
                .join("switchboard"),
        };
        private_dir(&dir)?;
        Ok(format!("sqlite://{}", dir.join("switchboard.db").display()))
    }
}

/// Creates the data directory readable by its owner only (0700), or tightens an existing
/// one that others may read, with a warning: it holds every key's hash and transcript.
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        }
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("cannot read data directory {}", dir.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make data directory {} private", dir.display()))?;
            tracing::warn!(
                dir = %dir.display(),
                "the data directory was open to other users (mode {mode:03o}); it is 0700 now"
            );
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create data directory {}", dir.display()))?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The bridge talks to a person through its own lines; the client library's routine
    // notices would only get in the way of its status line.
    let default_filter = match cli.command {
        Command::Bridge(_) => "warn",
        _ => "info,sqlx=warn,tower_http=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(|| LossyStderr)
        .log_internal_errors(false)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain: a person reads it, and a backtrace
            // (which anyhow adds under RUST_BACKTRACE) says nothing about a refused key.
            let _ = writeln!(std::io::stderr(), "switchboard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// stderr for the log, where a failed write (a closed pipe: `serve 2>&1 | tee log` after
/// Ctrl-C) is dropped instead of failing or panicking; the process must go on to shut
/// down.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Token(cmd) => token::run(cmd).await,
            Command::Sessions(args) => sessions::run(args).await,
            Command::Attach(args) => attach::run(args).await,
            Command::Bridge(args) => bridge::run(*args).await,
            Command::Pair(args) => pair::run(args).await,
            Command::Backup(args) => backup::run(args).await,
            Command::Notify(args) => notify::run(args).await,
            Command::Devices(cmd) => access::devices(cmd).await,
            Command::Policy(cmd) => access::policy(cmd).await,
            Command::Audit(args) => access::audit(args).await,
            Command::Share(cmd) => access::share(cmd).await,
        }
    });
    // Tasks still running (a socket the server's deadline closed, a blocking read) get
    // a moment, not a veto over exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
