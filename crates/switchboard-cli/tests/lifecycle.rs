//! `switchboard serve` as an operator runs it: SIGTERM ends it whatever became of its
//! output, a half-sent request cannot hold a shutdown past its deadline, plain HTTP on a
//! non-loopback address is warned about, and the data directory is private.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_LISTEN")
        .env_remove("SWITCHBOARD_TRUSTED_PROXIES")
        .kill_on_drop(true);
    command
}

/// Reads stdout until the "listening" line; returns the server's address.
async fn listening(stdout: ChildStdout) -> anyhow::Result<(String, BufReader<ChildStdout>)> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            line.clear();
            anyhow::ensure!(
                reader.read_line(&mut line).await? > 0,
                "serve exited before listening"
            );
            if let Some(rest) = line.trim().strip_prefix("Switchboard listening on http://") {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string());
            }
        }
    })
    .await??;
    Ok((addr, reader))
}

fn sigterm(child: &Child) -> anyhow::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("already exited"))?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGTERM)?;
    Ok(())
}

#[tokio::test]
async fn sigterm_ends_serve_even_when_its_output_pipes_are_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = switchboard()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (_, reader) = listening(child.stdout.take().expect("piped")).await?;
    // `serve 2>&1 | tee log`, then Ctrl-C: tee is gone, every write now fails (EPIPE).
    drop(reader);
    drop(child.stderr.take());
    sigterm(&child)?;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .map_err(|_| {
            anyhow::anyhow!("serve still running 15 s after SIGTERM with closed output")
        })??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_half_sent_body_cannot_hold_a_shutdown_past_its_deadline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = switchboard()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shutdown-timeout",
            "2",
            "--body-timeout",
            "300",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (addr, mut reader) = listening(child.stdout.take().expect("piped")).await?;
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink).await;
    });
    // No credential needed: half a sign-in body, then silence.
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    stream
        .write_all(
            b"POST /web/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"key\":",
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    sigterm(&child)?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .map_err(|_| anyhow::anyhow!("serve still running 10 s after SIGTERM"))??;
    let took = stopped.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with a 2 s shutdown deadline"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "took {took:?}: the request in flight got its deadline"
    );
    drop(stream);
    Ok(())
}

/// What `serve` logs on stderr until it prints its listening line, then stops it.
async fn startup_log(mut command: Command) -> anyhow::Result<String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take().expect("piped");
    let drained = tokio::spawn(async move {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log).await;
        log
    });
    let listened = listening(child.stdout.take().expect("piped")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&child)?;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let _ = child.kill().await;
    let log = drained.await?;
    listened.map_err(|e| anyhow::anyhow!("{e}: {log}"))?;
    Ok(log)
}

const WARNING: &str = "serving plain HTTP";

#[tokio::test]
async fn plain_http_on_a_non_loopback_address_starts_with_a_warning() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 0.0.0.0 inside a network namespace of its own (only a loopback interface, down):
    // a real non-loopback listen that nothing outside can reach.
    let probe = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "unshare -n is needed for this test (run as root)"
        );
        eprintln!("SKIPPED: unshare -n is not permitted here");
        return Ok(());
    }
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let in_netns = |extra: &[&str]| {
        let mut command = Command::new("unshare");
        command
            .args(["-n", bin, "serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("SWITCHBOARD_TRUSTED_PROXIES")
            .env_remove("SWITCHBOARD_DATABASE_URL")
            .kill_on_drop(true);
        command
    };
    let log = startup_log(in_netns(&[])).await?;
    assert!(log.contains(WARNING), "{log}");
    assert!(
        log.contains("--tls-cert"),
        "the warning says what to do: {log}"
    );

    let log = startup_log(in_netns(&["--trusted-proxy", "10.0.0.0/8"])).await?;
    assert!(
        !log.contains(WARNING),
        "a trusted proxy terminates TLS: {log}"
    );

    let mut loopback = switchboard();
    loopback
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    let log = startup_log(loopback).await?;
    assert!(!log.contains(WARNING), "{log}");
    Ok(())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_directory_is_0700_and_the_database_0600() -> anyhow::Result<()> {
    let parent = tempfile::tempdir()?;
    let dir = parent.path().join("data");
    let list = || {
        let mut command = switchboard();
        command.args(["token", "list", "--data-dir"]).arg(&dir);
        command
    };
    let out = list().output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("switchboard.db")), 0o600);

    // Loosened by hand (or made by an older version): tightened, with a warning.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        dir.join("switchboard.db"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let out = list().output().await?;
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("switchboard.db")), 0o600);
    assert!(
        log.contains("0700 now") && log.contains("0600 now"),
        "{log}"
    );
    Ok(())
}
