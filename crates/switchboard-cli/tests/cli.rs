//! The `switchboard` binary as a person (or a crash) meets it: first start, keys, and
//! durability across `kill -9`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_LISTEN")
        .kill_on_drop(true);
    command
}

/// A `switchboard serve` process on an ephemeral port.
struct Served {
    child: Child,
    url: String,
    /// Everything it printed on stdout before "listening".
    banner: String,
}

async fn serve(data_dir: &Path) -> anyhow::Result<Served> {
    let mut child = switchboard()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = String::new();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.strip_prefix("Switchboard listening on ") {
                return Ok::<_, anyhow::Error>(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
        anyhow::bail!("serve exited before listening: {banner}")
    })
    .await??;
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Served { child, url, banner })
}

async fn create_key(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let out = switchboard()
        .args(["token", "create", "--name", name, "--data-dir"])
        .arg(data_dir)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

#[tokio::test]
async fn the_first_start_prints_a_key_once_with_the_client_settings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut first = serve(dir.path()).await?;
    // It says what works: `switchboard bridge` with this server's URL and the key, and
    // not the variables official Claude Code builds ignore.
    assert!(
        first
            .banner
            .contains(&format!("export SWITCHBOARD_URL={}", first.url)),
        "{}",
        first.banner
    );
    assert!(
        first.banner.contains("switchboard bridge"),
        "{}",
        first.banner
    );
    assert!(!first.banner.contains("CLAUDE_BRIDGE_"), "{}", first.banner);
    let key = first
        .banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("export SWITCHBOARD_TOKEN="))
        .expect("the key is printed")
        .to_string();
    // The printed key works.
    let list = reqwest::Client::new()
        .get(format!("{}/v1/sessions", first.url))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(list.status(), 200);
    first.child.kill().await?;

    let mut second = serve(dir.path()).await?;
    assert!(
        !second.banner.contains(&key),
        "the key is never printed again"
    );
    assert!(!second.banner.contains("SWITCHBOARD_TOKEN"));
    second.child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn token_create_refuses_an_empty_name_and_an_unknown_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = switchboard()
        .args(["token", "create", "--name", " ", "--data-dir"])
        .arg(dir.path())
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name must not be empty"));
    let out = switchboard()
        .args([
            "token",
            "create",
            "--name",
            "x",
            "--database-url",
            "mysql://nope",
        ])
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported database URL scheme"));
    Ok(())
}

#[tokio::test]
async fn token_revoke_by_name_or_id_cuts_a_running_servers_key_off() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let phone = create_key(dir.path(), "phone").await?;
    let laptop = create_key(dir.path(), "laptop").await?;
    let _twin = create_key(dir.path(), "laptop").await?;
    let mut served = serve(dir.path()).await?;
    let http = reqwest::Client::new();
    let status = |key: String| {
        let http = http.clone();
        let url = format!("{}/v1/sessions", served.url);
        async move { anyhow::Ok(http.get(url).bearer_auth(key).send().await?.status()) }
    };
    assert_eq!(status(phone.clone()).await?, 200);
    let revoke = |what: String| {
        let dir = dir.path().to_path_buf();
        async move {
            anyhow::Ok(
                switchboard()
                    .args(["token", "revoke", &what, "--data-dir"])
                    .arg(dir)
                    .output()
                    .await?,
            )
        }
    };
    // By name, while the server runs: the next request with it is refused.
    let out = revoke("phone".into()).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Revoked API key"));
    assert_eq!(status(phone.clone()).await?, 401);
    assert_eq!(status(laptop.clone()).await?, 200);
    // Two keys share a name: the command asks for an id instead of guessing.
    let out = revoke("laptop".into()).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke one by its id"));
    assert_eq!(status(laptop.clone()).await?, 200);
    let id = laptop.split('_').nth(1).unwrap().to_string();
    let out = revoke(id.clone()).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(laptop).await?, 401);
    // Unknown keys are an error; `token list` shows what is revoked.
    let out = revoke("nope".into()).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API key"));
    let list = switchboard()
        .args(["token", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .await?;
    let list = String::from_utf8(list.stdout)?;
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.ends_with("revoked")),
        "{list}"
    );
    served.child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_server_killed_with_sigkill_keeps_every_acknowledged_event_in_order() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let key = create_key(dir.path(), "durability").await?;
    let mut served = serve(dir.path()).await?;
    let http = reqwest::Client::new();
    let session: Value = http
        .post(format!("{}/v1/sessions", served.url))
        .bearer_auth(&key)
        .json(&json!({"title": "durable"}))
        .send()
        .await?
        .json()
        .await?;
    let id = session["id"].as_str().expect("session id").to_string();

    // A writer posts batches as fast as the server acknowledges them; the server is
    // killed while it writes. Every batch that got a 2xx must survive.
    let writer = {
        let (http, url, key, id) = (http.clone(), served.url.clone(), key.clone(), id.clone());
        tokio::spawn(async move {
            let mut acknowledged: Vec<String> = Vec::new();
            for batch in 0..10_000u32 {
                let uuids: Vec<String> = (0..5).map(|i| format!("evt-{batch}-{i}")).collect();
                let events: Vec<Value> = uuids
                    .iter()
                    .map(|u| json!({"type":"assistant","uuid":u,"message":{"content":u}}))
                    .collect();
                let sent = http
                    .post(format!("{url}/v1/session_ingress/session/{id}/events"))
                    .bearer_auth(&key)
                    .json(&json!({ "events": events }))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acknowledged.extend(uuids),
                    _ => break,
                }
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    served.child.start_kill()?; // SIGKILL
    served.child.wait().await?;
    let acknowledged = writer.await?;
    assert!(
        acknowledged.len() >= 50,
        "the writer got going: {}",
        acknowledged.len()
    );

    let mut restarted = serve(dir.path()).await?;
    let mut stored: Vec<(u64, String)> = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = http
            .get(format!(
                "{}/v1/sessions/{id}/events?limit=1000&after_id={after}",
                restarted.url
            ))
            .bearer_auth(&key)
            .send()
            .await?
            .json()
            .await?;
        for e in page["data"].as_array().expect("data") {
            stored.push((
                e["sequence_num"].as_u64().unwrap(),
                e["uuid"].as_str().unwrap().to_string(),
            ));
        }
        if !page["has_more"].as_bool().unwrap_or(false) {
            break;
        }
        after = stored.last().unwrap().0;
    }
    // Sequence numbers are 1..=n with no gap; uuids appear once, in posting order; every
    // acknowledged uuid is there (a batch in flight at the kill may also be).
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    let uuids: Vec<&str> = stored.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(
        &uuids[..acknowledged.len()],
        acknowledged
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
    );
    let mut unique = uuids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), uuids.len(), "no duplicates");

    // Retrying the last acknowledged batch after the restart stores nothing new.
    let retry: Vec<Value> = acknowledged[acknowledged.len() - 5..]
        .iter()
        .map(|u| json!({"type":"assistant","uuid":u,"message":{}}))
        .collect();
    let r = http
        .post(format!(
            "{}/v1/session_ingress/session/{id}/events",
            restarted.url
        ))
        .bearer_auth(&key)
        .json(&json!({ "events": retry }))
        .send()
        .await?;
    assert!(r.status().is_success());
    let session: Value = http
        .get(format!("{}/v1/sessions/{id}", restarted.url))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        session["last_sequence_num"].as_u64(),
        Some(stored.len() as u64)
    );
    restarted.child.kill().await?;
    Ok(())
}

/// Reads SSE `client_event` frames from a response until `count` arrived; returns their
/// `id:` values.
async fn read_event_ids(
    response: &mut reqwest::Response,
    count: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut buffer = String::new();
    let mut ids = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while ids.len() < count {
            let chunk = response
                .chunk()
                .await?
                .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id:")) {
                    ids.push(id.trim().parse()?);
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    Ok(ids)
}

#[tokio::test]
async fn the_worker_stream_resumes_after_a_sigkill_with_no_gap_and_no_duplicate(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = create_key(dir.path(), "sse").await?;
    let mut served = serve(dir.path()).await?;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/v1/code/sessions", served.url))
        .bearer_auth(&key)
        .json(&json!({"title":"sse","bridge":{}}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["session"]["id"].as_str().expect("id").to_string();
    let prompt = |i: u32| json!({"type":"user","uuid":format!("p-{i}"),"message":{"role":"user","content":format!("p{i}")}});
    let send = |url: String, i: u32| {
        let (http, key, id) = (http.clone(), key.clone(), id.clone());
        async move {
            http.post(format!("{url}/v1/sessions/{id}/events"))
                .bearer_auth(&key)
                .json(&json!({"events":[prompt(i)]}))
                .send()
                .await?
                .error_for_status()?;
            Ok::<_, anyhow::Error>(())
        }
    };
    let credentials = |url: String| {
        let (http, key, id) = (http.clone(), key.clone(), id.clone());
        async move {
            let creds: Value = http
                .post(format!("{url}/v1/code/sessions/{id}/bridge"))
                .bearer_auth(&key)
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, anyhow::Error>(creds["worker_jwt"].as_str().unwrap_or_default().to_string())
        }
    };
    let jwt = credentials(served.url.clone()).await?;
    for i in 0..3 {
        send(served.url.clone(), i).await?;
    }
    let mut stream = http
        .get(format!(
            "{}/v1/code/sessions/{id}/worker/events/stream",
            served.url
        ))
        .bearer_auth(&jwt)
        .send()
        .await?;
    let seen = read_event_ids(&mut stream, 2).await?;
    served.child.start_kill()?;
    served.child.wait().await?;

    let restarted = serve(dir.path()).await?;
    for i in 3..5 {
        send(restarted.url.clone(), i).await?;
    }
    // The signing key lives in the store, so the worker's token still works.
    let mut resumed = http
        .get(format!(
            "{}/v1/code/sessions/{id}/worker/events/stream?from_sequence_num={}",
            restarted.url, seen[1]
        ))
        .bearer_auth(&jwt)
        .header("Last-Event-ID", seen[1].to_string())
        .send()
        .await?;
    assert!(resumed.status().is_success(), "{}", resumed.status());
    let rest = read_event_ids(&mut resumed, 3).await?;
    let all: Vec<u64> = seen.iter().chain(&rest).copied().collect();
    assert_eq!(all, (1..=5).collect::<Vec<u64>>());
    drop(restarted);
    Ok(())
}

#[tokio::test]
async fn pair_prints_a_single_use_sign_in_link() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = create_key(dir.path(), "pairing").await?;
    let mut served = serve(dir.path()).await?;
    let out = switchboard()
        .args([
            "pair",
            "--url",
            &served.url,
            "--token",
            &key,
            "--session",
            "cse_abcd1234",
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout)?.trim().to_string();
    assert!(
        link.starts_with(&format!("{}/pair/sbp_", served.url)),
        "{link}"
    );
    assert!(link.ends_with("?next=/s/session_abcd1234"), "{link}");
    let token = link
        .split("/pair/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let http = reqwest::Client::new();
    let paired = http
        .post(format!("{}/web/pair", served.url))
        .json(&json!({ "token": token }))
        .send()
        .await?;
    assert_eq!(paired.status(), 200);
    let again = http
        .post(format!("{}/web/pair", served.url))
        .json(&json!({ "token": token }))
        .send()
        .await?;
    assert_eq!(again.status(), 401);
    // A refused key is one clear line.
    let refused = switchboard()
        .args(["pair", "--url", &served.url, "--token", "sbk_bad_key"])
        .output()
        .await?;
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr)
            .trim()
            .lines()
            .count(),
        1
    );
    served.child.kill().await?;
    Ok(())
}
