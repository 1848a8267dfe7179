//! The servers under test as child processes, and what `/proc` says about them.
//!
//! The bench re-executes its own binary with a hidden subcommand (`serve-switchboard` or
//! `serve-baseline`, see `serve.rs`). Running each server in its own process keeps its
//! resident memory and CPU time apart from the load generator's, and gives every
//! scenario a fresh server: memory freed by one scenario cannot be reused by the next
//! and hide what the next one costs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// What a child prints on its first stdout line once it listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// An API key (Switchboard only).
    pub(crate) token: Option<String>,
    /// The child's open-file limit after raising it.
    pub(crate) nofile: u64,
}

/// Which server a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Switchboard on a fresh SQLite file.
    Switchboard,
    /// The bare WebSocket relay.
    Baseline,
}

/// A running server process. Stop it with [`ChildServer::stop`]; dropping it kills it.
pub(crate) struct ChildServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The child's process id, for `/proc`.
    pub(crate) pid: u32,
    /// Its address and credentials.
    pub(crate) ready: Ready,
    /// The SQLite file and the server's log live here; removed on drop.
    dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts a server and waits until it listens. Its database (unless `database_url`
    /// names a PostgreSQL one) and log go into a new directory under `data_dir`.
    pub(crate) async fn spawn(
        role: Role,
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create {}", data_dir.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("switchboard-bench-")
            .tempdir_in(data_dir)
            .context("failed to create the server's directory")?;
        let exe = std::env::current_exe().context("cannot find the bench's own binary")?;
        let log = std::fs::File::create(dir.path().join("server.log"))
            .context("failed to create the server log")?;
        let mut command = Command::new(exe);
        match role {
            Role::Switchboard => {
                command
                    .arg("serve-switchboard")
                    .arg("--dir")
                    .arg(dir.path());
                if let Some(url) = database_url {
                    command.arg("--database-url").arg(url);
                }
            }
            Role::Baseline => {
                command.arg("serve-baseline");
            }
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("failed to start the server process")?;
        let pid = child.id().context("the server process has no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the server did not start within 60 s")?
            .context("failed to read the server's first line")?;
        let Some(line) = line else {
            anyhow::bail!(
                "the server exited before listening; its log:\n{}",
                log_tail(&dir.path().join("server.log"))
            );
        };
        let ready: Ready = serde_json::from_str(&line)
            .with_context(|| format!("unexpected first line from the server: {line:?}"))?;
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            pid,
            ready,
            dir,
        })
    }

    /// The server's log file.
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Asks the server to shut down (by closing its stdin) and waits a little for it;
    /// kills it if it lingers.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => {
                let status = status.context("failed to wait for the server")?;
                anyhow::ensure!(
                    status.success(),
                    "the server exited with {status}; its log:\n{}",
                    log_tail(&self.log_path())
                );
            }
            Err(_) => {
                eprintln!("switchboard-bench: the server did not stop within 15 s; killing it");
                self.child
                    .kill()
                    .await
                    .context("failed to kill the server")?;
            }
        }
        Ok(())
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Clock ticks per second in `/proc/<pid>/stat`: Linux reports CPU time in USER_HZ,
/// which is 100 on every architecture's user ABI regardless of the kernel's HZ.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's memory and CPU time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    /// Resident set size, KiB (`VmRSS`).
    pub(crate) rss_kib: u64,
    /// User plus system CPU time, in clock ticks.
    cpu_ticks: u64,
    at: Instant,
}

impl ProcSample {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
    pub(crate) fn read(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        // The command name in parentheses may contain spaces; fields count from after it.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of stat(5); after the name, 12 and 13.
        let tick = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .context("malformed /proc/<pid>/stat")
        };
        Ok(Self {
            rss_kib,
            cpu_ticks: tick(11)? + tick(12)?,
            at: Instant::now(),
        })
    }

    /// The bench's own process.
    pub(crate) fn own() -> anyhow::Result<Self> {
        Self::read(std::process::id())
    }

    /// The sum over several processes (the nodes of one system).
    pub(crate) fn read_all(pids: &[u32]) -> anyhow::Result<Self> {
        let mut sum = Self {
            rss_kib: 0,
            cpu_ticks: 0,
            at: Instant::now(),
        };
        for &pid in pids {
            let one = Self::read(pid)?;
            sum.rss_kib += one.rss_kib;
            sum.cpu_ticks += one.cpu_ticks;
        }
        Ok(sum)
    }

    /// Average number of cores used between `earlier` and this reading.
    pub(crate) fn cores_since(&self, earlier: &ProcSample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / TICKS_PER_SEC / wall
    }
}

/// Raises this process's open-file limit to its hard limit; returns the limit now in
/// force.
pub(crate) fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|_| {
        rlimit::Resource::NOFILE
            .get()
            .map(|(soft, _)| soft)
            .unwrap_or(1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_can_be_sampled() -> anyhow::Result<()> {
        let first = ProcSample::own()?;
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let second = ProcSample::own()?;
        assert!(second.rss_kib > 0);
        assert!(second.cores_since(&first) >= 0.0);
        Ok(())
    }
}
