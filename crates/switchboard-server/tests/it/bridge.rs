//! The env-less bridge core (`switchboard_client::EnvLessBridge`) against the real
//! server: create, credentials, the v2 transport, refreshes mid-conversation, teardown.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_client::bridge::{BridgeConfig, EnvLessBridge};
use switchboard_client::HistoryQuery;

use crate::common::*;

#[tokio::test]
async fn the_bridge_refreshes_credentials_mid_conversation_without_losing_or_repeating_events(
) -> anyhow::Result<()> {
    // Worker tokens live 3 s and are refreshed 2 s before expiry: about once a second.
    let server = TestServer::start_with(|o| o.worker_jwt_ttl = Duration::from_secs(3)).await?;
    let mut config = BridgeConfig::new(server.url(), server.key.clone(), "refreshing");
    config.refresh_buffer = Duration::from_secs(2);
    config.min_refresh_delay = Duration::from_millis(200);
    let (bridge, mut inbound) = EnvLessBridge::start(config).await?;
    let session = bridge.session_id().to_string();
    assert!(session.starts_with("cse_"));
    let first_epoch = bridge.worker_epoch().expect("connected with an epoch");

    // A conversation of eight turns over about four seconds: each prompt from the viewer
    // is answered by the worker through the bridge.
    let viewer = server.sessions();
    let mut prompts = Vec::new();
    let started = Instant::now();
    for turn in 0..8 {
        let p = prompt(&format!("turn {turn}"));
        viewer.send_events(&session, vec![p.clone()]).await?;
        let got = next(&mut inbound).await?;
        assert_eq!(
            got["uuid"], p["uuid"],
            "turn {turn}: the prompt reaches the worker"
        );
        bridge.write_messages(vec![
            json!({"type":"assistant","uuid":format!("reply-{turn}"),"message":{"role":"assistant","content":[{"type":"text","text":format!("answer {turn}")}]}}),
            json!({"type":"result","subtype":"success","uuid":format!("result-{turn}"),"is_error":false}),
        ])?;
        prompts.push(p);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bridge.flush().await?;
    let refreshes = bridge.worker_epoch().expect("still connected") - first_epoch;
    assert!(
        refreshes >= 2,
        "at least two refreshes in {:?}, got {refreshes}",
        started.elapsed()
    );

    // No prompt arrived twice.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbound.recv())
            .await
            .is_err()
    );

    bridge.teardown().await?;
    let archived = viewer.get_session(&session).await?;
    assert_eq!(archived.session_status, "archived");

    // The viewer's history has every event exactly once, in conversation order.
    let history = viewer
        .history(
            &session,
            HistoryQuery {
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await?;
    let uuids: Vec<String> = history
        .data
        .iter()
        .filter_map(|e| e["uuid"].as_str().map(str::to_string))
        .collect();
    let unique: HashSet<&String> = uuids.iter().collect();
    assert_eq!(unique.len(), uuids.len(), "no event twice: {uuids:?}");
    let seqs: Vec<u64> = history
        .data
        .iter()
        .map(|e| e["sequence_num"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let mut expected = Vec::new();
    for (turn, p) in prompts.iter().enumerate() {
        expected.push(p["uuid"].as_str().unwrap().to_string());
        expected.push(format!("reply-{turn}"));
        expected.push(format!("result-{turn}"));
    }
    let conversation: Vec<String> = uuids
        .iter()
        .filter(|u| !u.starts_with("teardown") && expected.contains(u))
        .cloned()
        .collect();
    assert_eq!(conversation, expected);
    Ok(())
}
