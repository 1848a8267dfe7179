//! `switchboard`: the server and the client commands in one binary.
//!
//! This file parses flags, sets up logging and dispatches; each command lives in its own
//! module and calls into the libraries.

#![forbid(unsafe_code)]

mod attach;
mod bridge;
mod notify;
mod pair;
mod remote;
mod render;
mod review;
mod serve;
mod sessions;
mod token;

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
    /// Choose what calls you back (permission requests, finished turns…) and where:
    /// a webhook, an ntfy topic, browsers.
    Notify(notify::NotifyArgs),
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
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        Ok(format!("sqlite://{}", dir.join("switchboard.db").display()))
    }
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
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain: a person reads it, and a backtrace
            // (which anyhow adds under RUST_BACKTRACE) says nothing about a refused key.
            eprintln!("switchboard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Token(cmd) => token::run(cmd).await,
            Command::Sessions(args) => sessions::run(args).await,
            Command::Attach(args) => attach::run(args).await,
            Command::Bridge(args) => bridge::run(*args).await,
            Command::Pair(args) => pair::run(args).await,
            Command::Notify(args) => notify::run(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
