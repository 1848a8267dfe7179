//! Reconnects as a person meets them: the server stops for a few seconds and comes back
//! on the same port with the same data. A v1 worker, a v2 worker and a viewer are back
//! within about two seconds of the server, and `switchboard attach` rides out an outage
//! longer than the viewer's usual patience, saying that it is reconnecting.

mod support;

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use switchboard_client::bridge::{BridgeConfig, EnvLessBridge};
use switchboard_client::{
    BridgeApiClient, IngressConfig, IngressTransport, TransportState, ViewerConfig, ViewerEvent,
    ViewerSocket,
};
use switchboard_proto::environments::{RegisterEnvironmentRequest, WorkSecret};
use switchboard_proto::sessions::CreateSessionRequest;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::Instant;

use support::Served;

/// How soon after the server is back every client must be back. The backoffs are capped
/// at 2 s ±25 % (the official client's grow to 30 s); the rest is slack for a busy
/// machine.
const BACK_WITHIN: Duration = Duration::from_secs(4);

/// A v1 worker on a new session of `served`: the session id, the transport, its inbox.
async fn v1_worker(
    served: &Served,
) -> anyhow::Result<(String, IngressTransport, mpsc::Receiver<Value>)> {
    let bridge = BridgeApiClient::new(&served.url, served.key.clone());
    let env = bridge
        .register_environment(&RegisterEnvironmentRequest {
            machine_name: "reconnect-host".into(),
            directory: "/work/reconnect".into(),
            branch: "main".into(),
            git_repo_url: None,
            max_sessions: 1,
            metadata: json!({"worker_type": "claude_code"}),
            environment_id: None,
        })
        .await?;
    let session = served
        .sessions()
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            title: Some("Reconnect test".into()),
            ..Default::default()
        })
        .await?;
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, Some(5_000))
        .await?
        .context("no work after creating a session")?;
    let secret = WorkSecret::decode(&work.secret)?;
    let config = IngressConfig::new(&served.url, &work.data.id, secret.session_ingress_token);
    let (transport, inbound) = IngressTransport::connect(config).await?;
    Ok((session.id, transport, inbound))
}

fn prompt(text: &str) -> (String, Value) {
    let uuid = uuid::Uuid::new_v4().to_string();
    let message = switchboard_client::viewer::user_message(&uuid, text);
    (uuid, message)
}

async fn received(inbound: &mut mpsc::Receiver<Value>, uuid: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, inbound.recv())
            .await
            .map_err(|_| anyhow::anyhow!("the prompt {uuid} never arrived"))?
            .context("the worker's inbox ended")?;
        if message["uuid"] == uuid {
            return Ok(());
        }
    }
}

#[tokio::test]
async fn workers_and_viewers_are_back_within_seconds_of_a_restarted_server() -> anyhow::Result<()> {
    let mut served = Served::start().await?;
    let (v1_session, v1, mut v1_inbound) = v1_worker(&served).await?;
    let (v2, mut v2_inbound) =
        EnvLessBridge::start(BridgeConfig::new(&served.url, served.key.clone(), "v2")).await?;
    let config = ViewerConfig::new(&served.url, &v1_session, served.key.clone());
    let (_viewer, mut events) = ViewerSocket::connect(config)?;
    match tokio::time::timeout(Duration::from_secs(15), events.recv()).await {
        Ok(Some(ViewerEvent::Connected)) => {}
        other => anyhow::bail!("the viewer did not connect: {other:?}"),
    }

    // Eight seconds down: the official backoff would be at 8 s steps by then.
    served.restart(Duration::from_secs(8)).await?;
    let back = Instant::now();
    let sessions = served.sessions();
    let (v1_uuid, v1_prompt) = prompt("after the restart, v1");
    let (v2_uuid, v2_prompt) = prompt("after the restart, v2");
    sessions.send_events(&v1_session, vec![v1_prompt]).await?;
    sessions
        .send_events(v2.session_id(), vec![v2_prompt])
        .await?;

    let mut v1_state = v1.state_changes();
    let viewer_back = async {
        loop {
            match events.recv().await {
                Some(ViewerEvent::Connected) => return Ok(back.elapsed()),
                Some(ViewerEvent::Closed { code, reason }) => {
                    anyhow::bail!("the viewer gave up ({code:?}: {reason})")
                }
                Some(_) => {}
                None => anyhow::bail!("the viewer's events ended"),
            }
        }
    };
    let v1_back = async {
        v1_state
            .wait_for(|s| *s == TransportState::Connected)
            .await
            .map_err(|_| anyhow::anyhow!("the v1 transport ended"))?;
        received(&mut v1_inbound, &v1_uuid).await?;
        Ok::<_, anyhow::Error>(back.elapsed())
    };
    let v2_back = async {
        received(&mut v2_inbound, &v2_uuid).await?;
        Ok::<_, anyhow::Error>(back.elapsed())
    };
    let (viewer_back, v1_back, v2_back) = tokio::join!(viewer_back, v1_back, v2_back);
    let (viewer_back, v1_back, v2_back) = (viewer_back?, v1_back?, v2_back?);

    eprintln!("back after the server: viewer {viewer_back:?}, v1 {v1_back:?}, v2 {v2_back:?}");
    for (who, took) in [
        ("viewer", viewer_back),
        ("v1 worker", v1_back),
        ("v2 worker", v2_back),
    ] {
        assert!(
            took < BACK_WITHIN,
            "the {who} came back {took:?} after the server"
        );
    }
    v2.teardown().await?;
    v1.close().await;
    Ok(())
}

#[test]
fn attach_rides_out_a_long_outage_and_says_it_is_reconnecting() -> anyhow::Result<()> {
    let runtime = Runtime::new()?;
    let mut served = runtime.block_on(Served::start())?;
    let (session, _worker, mut inbound) = runtime.block_on(v1_worker(&served))?;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["attach", &session])
        .env("SWITCHBOARD_URL", &served.url)
        .env("SWITCHBOARD_TOKEN", &served.key)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn");
    let mut term = rexpect::session::spawn_command(command, Some(30_000))?;
    term.exp_string("/quit or Ctrl-D leaves")?;

    // Twelve seconds down: longer than the 10 s after which attach used to give up.
    runtime.block_on(served.restart(Duration::from_secs(12)))?;

    term.exp_string("connection lost; reconnecting")?;
    term.exp_string("reconnected")?;
    term.send_line("still here?")?;
    let arrived = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), inbound.recv()).await });
    let prompt = arrived
        .map_err(|_| anyhow::anyhow!("the prompt typed after the outage never arrived"))?
        .context("the worker's inbox ended")?;
    assert_eq!(prompt["message"]["content"], "still here?");
    term.send_line("/quit")?;
    term.exp_eof()?;
    Ok(())
}
