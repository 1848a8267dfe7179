//! A full disk: writes, polls and session creation answer 503 with a message that says
//! storage is full, reads go on, and once space is freed writes work again with nothing
//! acknowledged lost. The database lives on a small tmpfs mounted here (as root); the
//! test skips when it cannot mount, except under `CI=true`, where it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> anyhow::Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(Some(Self { dir })),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                anyhow::ensure!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot mount a tmpfs for the full-disk test (it needs root): {why}"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs for the full-disk test: {why}");
                Ok(None)
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes to `path` until the file system is full; returns how much it wrote.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0xA5u8; 16 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(written < 64 << 20, "the tmpfs never filled up");
    }
    // Smaller writes take the last partial page.
    for _ in 0..64 {
        if file.write(&[0u8; 512]).is_err() {
            break;
        }
    }
    Ok(written)
}

/// A prompt carrying `size` bytes of text.
fn big_prompt(i: usize, size: usize) -> Value {
    let mut p = prompt(&format!("{i}:{}", "x".repeat(size)));
    p["uuid"] = json!(format!("full-disk-{i}"));
    p
}

#[tokio::test]
async fn a_full_disk_is_a_503_that_says_so_reads_go_on_and_writes_recover() -> anyhow::Result<()> {
    if std::env::var("SWITCHBOARD_TEST_BACKEND").as_deref() == Ok("postgres") {
        eprintln!("SKIPPED: the full-disk test runs on SQLite (the tmpfs holds its file)");
        return Ok(());
    }
    let Some(tmpfs) = Tmpfs::mount("3m")? else {
        return Ok(());
    };
    let db = tmpfs.path().join("test.db");
    let server = TestServer::start_with(|o| {
        o.database_url = format!("sqlite://{}", db.display());
    })
    .await?;
    let http = reqwest::Client::new();
    let sessions = server.sessions();
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    let session = sessions
        .create_session(&switchboard_proto::sessions::CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            ..Default::default()
        })
        .await?;
    let events_url = format!("{}/v1/sessions/{}/events", server.url(), session.id);

    let filler: PathBuf = tmpfs.path().join("filler");
    fill(&filler)?;

    // Write until the disk refuses; everything acknowledged before must survive.
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        let response = http
            .post(&events_url)
            .bearer_auth(&server.key)
            .json(&json!({ "events": [big_prompt(i, 24 * 1024)] }))
            .send()
            .await?;
        if response.status() == 200 {
            acked.push(format!("full-disk-{i}"));
            continue;
        }
        refusal = Some((response.status().as_u16(), response.json::<Value>().await?));
        break;
    }
    let (status, body) = refusal.expect("the disk filled up within 400 writes of 24 KiB");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("storage is full"), "{message}");

    // Session creation and polls are writes too, refused the same way.
    let created = http
        .post(format!("{}/v1/sessions", server.url()))
        .bearer_auth(&server.key)
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(created.status(), 503);
    let poll = http
        .get(format!(
            "{}/v1/environments/{}/work/poll",
            server.url(),
            env.environment_id
        ))
        .bearer_auth(&env.environment_secret)
        .send()
        .await?;
    assert_eq!(poll.status(), 503);

    // Reads go on.
    assert_eq!(
        http.get(format!("{}/health", server.url()))
            .send()
            .await?
            .status(),
        200
    );
    let listed = sessions.list_sessions(None).await?;
    assert!(listed.data.iter().any(|s| s.id == session.id));
    let history = all_uuids(&server, &session.id).await?;
    for uuid in &acked {
        assert!(history.contains(uuid), "{uuid} was acknowledged, then lost");
    }

    // Space freed: writes work again.
    std::fs::remove_file(&filler)?;
    let mut recovered = false;
    for attempt in 0..50 {
        let response = http
            .post(&events_url)
            .bearer_auth(&server.key)
            .json(&json!({ "events": [big_prompt(1000 + attempt, 1024)] }))
            .send()
            .await?;
        if response.status() == 200 {
            acked.push(format!("full-disk-{}", 1000 + attempt));
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "writes work again once space is freed");
    sessions
        .create_session(&switchboard_proto::sessions::CreateSessionRequest::default())
        .await?;
    let history = all_uuids(&server, &session.id).await?;
    for uuid in &acked {
        assert!(history.contains(uuid), "{uuid} was acknowledged, then lost");
    }
    drop(server);
    Ok(())
}

/// Every event uuid in a session's history.
async fn all_uuids(server: &TestServer, session: &str) -> anyhow::Result<Vec<String>> {
    let mut uuids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let page = server
            .sessions()
            .history(
                session,
                switchboard_client::HistoryQuery {
                    after_id: after.clone(),
                    limit: Some(100),
                    ..Default::default()
                },
            )
            .await?;
        uuids.extend(
            page.data
                .iter()
                .filter_map(|e| e["uuid"].as_str().map(str::to_owned)),
        );
        if !page.has_more {
            break;
        }
        after = page.last_id.clone();
    }
    Ok(uuids)
}
