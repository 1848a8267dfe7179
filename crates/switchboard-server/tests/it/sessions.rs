//! The Sessions API: create, get, retitle, list, history, and both id costumes.

use serde_json::json;
use switchboard_client::HistoryQuery;
use switchboard_proto::sessions::CreateSessionRequest;

use crate::common::*;

#[tokio::test]
async fn sessions_answer_to_both_id_costumes() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let viewer = server.sessions();
    let created = viewer
        .create_session(&CreateSessionRequest {
            title: Some("t".into()),
            ..Default::default()
        })
        .await?;
    let body = created.id.strip_prefix("session_").unwrap();
    let via_cse = viewer.get_session(&format!("cse_{body}")).await?;
    assert_eq!(via_cse.id, created.id);
    viewer
        .update_title(&format!("cse_{body}"), "renamed")
        .await?;
    assert_eq!(
        viewer.get_session(&created.id).await?.title.as_deref(),
        Some("renamed")
    );
    let missing = viewer
        .get_session("session_doesnotexist")
        .await
        .unwrap_err();
    assert_eq!(missing.status(), Some(404));
    Ok(())
}

#[tokio::test]
async fn sessions_are_listed_newest_first_with_paging() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let viewer = server.sessions();
    let mut ids = Vec::new();
    for i in 0..3 {
        let s = viewer
            .create_session(&CreateSessionRequest {
                title: Some(format!("s{i}")),
                ..Default::default()
            })
            .await?;
        ids.push(s.id);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let page = viewer.list_sessions(Some(2)).await?;
    assert!(page.has_more);
    let listed: Vec<&str> = page.data.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    Ok(())
}

#[tokio::test]
async fn history_pages_forward_and_backward_by_event_id() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let viewer = server.sessions();
    let s = viewer
        .create_session(&CreateSessionRequest::default())
        .await?;
    let prompts: Vec<_> = (0..5).map(|i| prompt(&format!("p{i}"))).collect();
    viewer.send_events(&s.id, prompts.clone()).await?;

    let latest = viewer
        .history(
            &s.id,
            HistoryQuery {
                limit: Some(2),
                anchor_to_latest: true,
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(
        latest
            .data
            .iter()
            .map(|e| e["uuid"].clone())
            .collect::<Vec<_>>(),
        [prompts[3]["uuid"].clone(), prompts[4]["uuid"].clone()]
    );
    assert!(latest.has_more);
    assert_eq!(latest.first_id.as_deref(), Some("4"));
    let earlier = viewer
        .history(
            &s.id,
            HistoryQuery {
                limit: Some(2),
                before_id: latest.first_id.clone(),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(earlier.first_id.as_deref(), Some("2"));
    assert_eq!(earlier.last_id.as_deref(), Some("3"));
    let after = viewer
        .history(
            &s.id,
            HistoryQuery {
                after_id: Some("3".into()),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(after.data.len(), 2);
    assert!(!after.has_more);
    // Each event carries its sequence number.
    assert_eq!(after.data[0]["sequence_num"], json!(4));
    Ok(())
}

#[tokio::test]
async fn a_retried_prompt_is_stored_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let viewer = server.sessions();
    let s = viewer
        .create_session(&CreateSessionRequest::default())
        .await?;
    let p = prompt("once");
    viewer.send_events(&s.id, vec![p.clone()]).await?;
    let again = viewer.send_events(&s.id, vec![p]).await?;
    assert_eq!(again["events"][0]["duplicate"], true);
    assert_eq!(
        viewer
            .history(&s.id, HistoryQuery::default())
            .await?
            .data
            .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn initial_events_wait_for_the_worker() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    let p = prompt("start here");
    server
        .sessions()
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            events: vec![json!({"type":"event","data": p.clone()})],
            ..Default::default()
        })
        .await?;
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, None)
        .await?
        .unwrap();
    let token = secret_of(&work).session_ingress_token;
    let (_w, mut inbound) = switchboard_client::IngressTransport::connect(ingress_config(
        &server,
        &work.data.id,
        &token,
    ))
    .await?;
    assert_eq!(next(&mut inbound).await?, p);
    Ok(())
}
