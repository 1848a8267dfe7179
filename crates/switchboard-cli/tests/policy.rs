//! The approval policy end to end (issue 16): `switchboard policy` rules, made at the
//! server, answer the scripted fake agent's permission requests behind
//! `switchboard bridge` (allow, deny, and the timeout), and `switchboard audit` shows
//! each answer with the rule that gave it.

mod support;

use std::time::Duration;

use support::{
    add_rule, at_server, policy_story, switchboard, testkit_bin, Bridge, Served, Viewer, TOOL_FILE,
};

/// How long one step may take.
const STEP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn rules_answer_the_fake_agents_permission_requests_and_the_audit_log_says_which(
) -> anyhow::Result<()> {
    // Arrange: a server, the fake agent behind a bridge, a viewer that never answers.
    let served = Served::start().await?;
    let data = served.data.path();
    let allow = add_rule(
        data,
        &["Bash", "allow", "--pattern", &format!("touch {TOOL_FILE}")],
    )
    .await?;
    let workdir = tempfile::tempdir()?;
    let agent = testkit_bin("fake-agent")?.display().to_string();
    let mut command = served.bridge(workdir.path());
    command.args(["--claude", &agent]);
    let mut bridge = Bridge::spawn(command)?;
    let session_id = bridge.session_id().await?;
    let mut viewer = Viewer::connect(&served, &session_id).await?;

    // Act and assert: allow, deny and the timeout, each in the audit log with its rule.
    policy_story(&mut viewer, data, workdir.path(), &session_id, &allow, STEP).await?;

    // The rule changes made at the server are in the audit log too, by the CLI.
    let all = at_server(data, &["audit", "--json"]).await?;
    assert!(
        all.lines()
            .any(|l| l.contains("\"policy.add\"") && l.contains("\"by\":\"cli\"")),
        "{all}"
    );
    // The dry run shows what the rules would say now (no rules, default ask).
    let dry = at_server(data, &["policy", "test", &session_id, "Bash", "allow"]).await?;
    assert_eq!(
        dry.lines()
            .filter(|l| l.contains("\tallow\tcandidate\t"))
            .count(),
        3,
        "{dry}"
    );

    bridge.terminate(STEP).await?;
    Ok(())
}

#[tokio::test]
async fn bad_rules_and_roles_are_refused_at_the_command_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let refused = |args: Vec<&'static str>, says: &'static str| {
        let dir = dir.path().to_path_buf();
        async move {
            let out = switchboard()
                .args(&args)
                .arg("--data-dir")
                .arg(dir)
                .output()
                .await?;
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            anyhow::ensure!(!out.status.success(), "{args:?} succeeded");
            anyhow::ensure!(stderr.contains(says), "{args:?}: {stderr}");
            anyhow::Ok(())
        }
    };
    refused(
        vec!["policy", "add", "Read", "allow", "--pattern", "/a/***"],
        "invalid path glob",
    )
    .await?;
    refused(vec!["policy", "add", "Bash", "perhaps"], "unknown decision").await?;
    refused(
        vec!["token", "create", "--name", "n", "--role", "root"],
        "unknown role",
    )
    .await?;
    // A key made with a role lists with it; `devices list` shows it too.
    let out = switchboard()
        .args([
            "token",
            "create",
            "--name",
            "watcher",
            "--role",
            "viewer",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices = at_server(dir.path(), &["devices", "list"]).await?;
    assert!(
        devices.lines().any(|l| l.contains("\tviewer\twatcher\t")),
        "{devices}"
    );
    Ok(())
}

#[tokio::test]
async fn a_session_shared_at_the_server_reaches_the_other_owner_until_the_share_is_removed(
) -> anyhow::Result<()> {
    use switchboard_client::{SessionsClient, ViewerConfig, ViewerEvent, ViewerSocket};
    let served = Served::start().await?;
    let data = served.data.path();
    let bob = at_server(
        data,
        &["token", "create", "--name", "bobs", "--owner", "bob"],
    )
    .await?;
    let bob = bob.trim().to_string();
    let session = served
        .sessions()
        .create_session(&Default::default())
        .await?;
    let id = session.id.clone();
    let as_bob = SessionsClient::new(&served.url, bob.clone());
    assert!(as_bob.get_session(&id).await.is_err(), "not shared yet");

    // An unknown owner and a bad role are refused; then bob may watch.
    let out = switchboard()
        .args([
            "share",
            "add",
            &id,
            "nobody",
            "--role",
            "viewer",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no owner named"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = at_server(data, &["share", "add", &id, "bob", "--role", "viewer"]).await?;
    assert!(out.contains("with bob as viewer"), "{out}");
    let listed = at_server(data, &["share", "list", &id]).await?;
    assert!(
        listed.lines().any(|l| l.starts_with("bob\tviewer\t")),
        "{listed}"
    );
    assert_eq!(
        as_bob.get_session(&id).await?.shared_role.as_deref(),
        Some("viewer")
    );
    let shared = as_bob.shared_sessions().await?;
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].id, id);
    // The viewer role reads but does not prompt.
    assert!(as_bob
        .send_events(
            &id,
            vec![serde_json::json!({"type": "user", "uuid": "u-1",
            "message": {"role": "user", "content": "hi"}})]
        )
        .await
        .is_err());

    // Bob's viewer socket stays open until the share is removed at the server; the
    // running server notices within its revocation check and closes it (4003).
    let (socket, mut events) = ViewerSocket::connect(ViewerConfig::new(&served.url, &id, bob))?;
    match tokio::time::timeout(STEP, events.recv()).await {
        Ok(Some(ViewerEvent::Connected)) => {}
        other => anyhow::bail!("bob's viewer did not connect: {other:?}"),
    }
    at_server(data, &["share", "remove", &id, "bob"]).await?;
    let closed = tokio::time::timeout(STEP, async {
        loop {
            match events.recv().await {
                Some(ViewerEvent::Closed { code, .. }) => return code,
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await?;
    assert_eq!(closed, Some(4003));
    drop(socket);
    assert!(as_bob.get_session(&id).await.is_err(), "unshared");
    let audit = at_server(data, &["audit", "--session", &id]).await?;
    assert!(
        audit.contains("session.share") && audit.contains("session.unshare"),
        "{audit}"
    );
    Ok(())
}
