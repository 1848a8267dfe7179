//! A few seconds of every scenario, so the benchmark cannot rot: the binary runs with
//! tiny sizes against servers it starts itself, and its JSON must hold every section
//! with sane numbers. Nothing here checks a figure against a target; debug builds and
//! shared CI machines say nothing about performance.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

/// Kills the run if it hangs; a healthy smoke run takes well under a minute.
const RUN_LIMIT: Duration = Duration::from_secs(180);

#[test]
fn a_short_run_reports_every_section() -> anyhow::Result<()> {
    // Arrange
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("bench.json");

    // Act
    run_bench(
        dir.path(),
        &[
            "--hop-samples",
            "200",
            "--hop-max-secs",
            "2",
            "--fanout-viewers",
            "1,10",
            "--fanout-secs",
            "1",
            "--sessions",
            "50",
            "--sessions-secs",
            "2",
            "--sessions-rate",
            "2",
            "--dispatch-samples",
            "20",
            "--data-dir",
            &dir.path().display().to_string(),
            "--json",
            &json.display().to_string(),
        ],
    )?;

    // Assert
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    assert_eq!(report["errors"], Value::Array(vec![]), "{report:#}");
    assert!(report["machine"]["nproc"].as_u64() >= Some(1));

    for system in ["switchboard_v1", "switchboard_v2", "baseline"] {
        for way in ["viewer_to_worker", "worker_to_viewer"] {
            let summary = &report["hop"][system][way];
            assert_latencies(summary, &format!("hop {system} {way}"));
        }
    }

    let fanout = report["fanout"].as_array().context("no fan-out rows")?;
    assert_eq!(fanout.len(), 2);
    for (row, viewers) in fanout.iter().zip([1u64, 10]) {
        assert_eq!(row["viewers"].as_u64(), Some(viewers));
        for system in ["switchboard", "baseline"] {
            let result = &row[system];
            let what = format!("fan-out K={viewers} {system}");
            assert!(number(&result["events"]) > 0.0, "{what}: {result:#}");
            assert!(number(&result["events_per_s"]) > 0.0, "{what}: {result:#}");
            assert!(
                number(&result["deliveries_per_s"]) > 0.0,
                "{what}: {result:#}"
            );
            // Every viewer gets every timed event.
            assert_eq!(
                number(&result["deliveries"]),
                number(&result["events"]) * viewers as f64,
                "{what}: {result:#}"
            );
            assert_eq!(result["viewers_lost"].as_u64(), Some(0), "{what}");
            assert_eq!(result["undelivered"].as_u64(), Some(0), "{what}");
            assert_latencies(&result["latency"], &what);
            assert!(
                number(&result["server_cpu_cores"]) > 0.0,
                "{what}: {result:#}"
            );
        }
        assert!(number(&row["ratio_deliveries_per_s"]) > 0.0);
    }

    let sessions = report["sessions"].as_array().context("no sessions rows")?;
    assert_eq!(sessions.len(), 1);
    let row = &sessions[0];
    assert_eq!(row["run"].as_u64(), Some(50));
    for system in ["switchboard", "baseline"] {
        let result = &row[system];
        let what = format!("sessions {system}");
        assert_eq!(result["sessions"].as_u64(), Some(50), "{what}: {result:#}");
        assert_eq!(result["failed_setups"].as_u64(), Some(0), "{what}");
        assert_eq!(result["connections_lost"].as_u64(), Some(0), "{what}");
        assert!(number(&result["events_sent"]) > 0.0, "{what}: {result:#}");
        assert_latencies(&result["latency"], &what);
        assert_latencies(&result["viewer_to_worker"], &what);
        assert_latencies(&result["worker_to_viewer"], &what);
        assert!(
            number(&result["server_rss_kib"]) > 0.0,
            "{what}: {result:#}"
        );
        assert!(result["memory_per_session_kib"].is_number(), "{what}");
        assert!(result["server_cpu_cores"].is_number(), "{what}");
    }

    let dispatch = &report["dispatch"];
    assert_latencies(&dispatch["latency"], "dispatch");
    assert_eq!(dispatch["latency"]["count"].as_u64(), Some(20));
    assert_latencies(&dispatch["create"], "dispatch create");

    let targets = report["targets"].as_array().context("no targets")?;
    assert!(!targets.is_empty());
    for target in targets {
        let verdict = target["verdict"].as_str().unwrap_or_default();
        assert!(["pass", "miss", "not_run"].contains(&verdict), "{target:#}");
    }
    Ok(())
}

#[test]
fn the_busy_regime_runs_on_own_connections_with_prompts_by_post() -> anyhow::Result<()> {
    // Arrange
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("bench.json");

    // Act
    run_bench(
        dir.path(),
        &[
            "--scenarios",
            "hop,sessions,knee",
            "--worker-connections",
            "own",
            "--prompts",
            "post",
            "--baseline-writes",
            "posts",
            "--payload-bytes",
            "128",
            "--hop-samples",
            "100",
            "--hop-max-secs",
            "2",
            "--sessions",
            "20",
            "--sessions-pattern",
            "each-way",
            "--sessions-secs",
            "2",
            "--sessions-rate",
            "2",
            "--knee-sessions",
            "10",
            "--knee-rates",
            "20,40",
            "--knee-step-secs",
            "1",
            "--knee-warmup-secs",
            "0.5",
            "--data-dir",
            &dir.path().display().to_string(),
            "--json",
            &json.display().to_string(),
        ],
    )?;

    // Assert
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    assert_eq!(report["errors"], Value::Array(vec![]), "{report:#}");
    for system in ["switchboard_v1", "switchboard_v2", "baseline"] {
        for way in ["viewer_to_worker", "worker_to_viewer"] {
            let summary = &report["hop"][system][way];
            assert_latencies(summary, &format!("hop {system} {way}"));
        }
    }
    let row = &report["sessions"][0];
    for system in ["switchboard", "baseline"] {
        let result = &row[system];
        let what = format!("sessions {system}");
        assert_eq!(result["sessions"].as_u64(), Some(20), "{what}: {result:#}");
        assert_eq!(result["pattern"].as_str(), Some("each-way"), "{what}");
        // Each way every period: 20 sessions × 2 periods/s × 2 events.
        assert_eq!(number(&result["offered_per_s"]), 80.0, "{what}: {result:#}");
        assert_eq!(
            result["events_lost"].as_u64(),
            Some(0),
            "{what}: {result:#}"
        );
        assert_eq!(
            result["send_errors"].as_u64(),
            Some(0),
            "{what}: {result:#}"
        );
        assert_latencies(&result["viewer_to_worker"], &what);
        assert_latencies(&result["worker_to_viewer"], &what);
        assert_latencies(&result["send_lag"], &what);
    }
    let knee = &report["knee"];
    for system in ["switchboard", "baseline"] {
        let result = &knee[system];
        let what = format!("knee {system}");
        let steps = result["steps"].as_array().context("no knee steps")?;
        assert!(!steps.is_empty(), "{what}: {result:#}");
        assert_latencies(&steps[0]["latency"], &what);
        assert!(number(&steps[0]["bench_cpu_cores"]) >= 0.0, "{what}");
        assert!(result["ended_by"].is_string(), "{what}: {result:#}");
    }
    Ok(())
}

/// With `SWITCHBOARD_TEST_PG_URL` set: the scenarios on PostgreSQL, with two nodes on
/// one database, so every message crosses from one node to the other.
#[test]
fn two_nodes_on_postgresql_carry_every_scenario() -> anyhow::Result<()> {
    let Some(pg) = std::env::var("SWITCHBOARD_TEST_PG_URL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        println!("skipped: SWITCHBOARD_TEST_PG_URL is not set");
        return Ok(());
    };
    // Arrange
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("bench.json");

    // Act
    run_bench(
        dir.path(),
        &[
            "--scenarios",
            "hop,fanout,sessions,dispatch",
            "--database-url",
            &pg,
            "--nodes",
            "2",
            "--no-baseline",
            "--hop-samples",
            "100",
            "--hop-max-secs",
            "2",
            "--fanout-viewers",
            "3",
            "--fanout-secs",
            "1",
            "--sessions",
            "20",
            "--sessions-secs",
            "2",
            "--sessions-rate",
            "2",
            "--dispatch-samples",
            "10",
            "--data-dir",
            &dir.path().display().to_string(),
            "--json",
            &json.display().to_string(),
        ],
    )?;

    // Assert: every section, nothing lost, and the server figures of both nodes.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    assert_eq!(report["errors"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["settings"]["nodes"].as_u64(), Some(2));
    for system in ["switchboard_v1", "switchboard_v2"] {
        for way in ["viewer_to_worker", "worker_to_viewer"] {
            assert_latencies(&report["hop"][system][way], &format!("hop {system} {way}"));
        }
    }
    let fanout = &report["fanout"][0]["switchboard"];
    assert_eq!(fanout["viewers_lost"].as_u64(), Some(0), "{fanout:#}");
    assert_eq!(fanout["undelivered"].as_u64(), Some(0), "{fanout:#}");
    assert_eq!(
        number(&fanout["deliveries"]),
        number(&fanout["events"]) * 3.0,
        "{fanout:#}"
    );
    let sessions = &report["sessions"][0]["switchboard"];
    assert_eq!(sessions["sessions"].as_u64(), Some(20), "{sessions:#}");
    assert_eq!(sessions["events_lost"].as_u64(), Some(0), "{sessions:#}");
    assert!(number(&sessions["server_rss_kib"]) > 0.0, "{sessions:#}");
    assert_eq!(
        report["dispatch"]["latency"]["count"].as_u64(),
        Some(10),
        "{:#}",
        report["dispatch"]
    );
    Ok(())
}

#[test]
fn a_remote_target_must_be_on_loopback() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["--url", "http://192.0.2.1:8787", "--token", "sbk_x_y"])
        .current_dir(dir.path())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    Ok(())
}

/// Runs the bench to completion within [`RUN_LIMIT`], failing with its output otherwise.
fn run_bench(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let stdout = dir.join("stdout.txt");
    let stderr = dir.join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout)?)
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .context("failed to start switchboard-bench")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "switchboard-bench ran past {RUN_LIMIT:?}\nstderr:\n{}",
                std::fs::read_to_string(&stderr)?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    anyhow::ensure!(
        status.success(),
        "switchboard-bench failed ({status})\nstdout:\n{}\nstderr:\n{}",
        std::fs::read_to_string(&stdout)?,
        std::fs::read_to_string(&stderr)?
    );
    Ok(())
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A latency summary with samples, positive and ordered percentiles.
fn assert_latencies(summary: &Value, what: &str) {
    let count = summary["count"].as_u64().unwrap_or(0);
    let (p50, p99, p999, max) = (
        number(&summary["p50_us"]),
        number(&summary["p99_us"]),
        number(&summary["p999_us"]),
        number(&summary["max_us"]),
    );
    assert!(count > 0, "{what}: no samples: {summary:#}");
    assert!(p50 > 0.0, "{what}: {summary:#}");
    assert!(
        p50 <= p99 && p99 <= p999 && p999 <= max,
        "{what}: {summary:#}"
    );
    // Loopback hops take microseconds to milliseconds; a minute means the clock is wrong.
    assert!(max < 60_000_000.0, "{what}: {summary:#}");
}
