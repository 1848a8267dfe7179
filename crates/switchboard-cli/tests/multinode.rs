//! Several `switchboard serve` processes on one PostgreSQL database behave as one server:
//! a worker on one node, viewers on the others, prompts and answers through a third;
//! dispatch across nodes; the node holding the worker killed and the worker reconnecting
//! through the load balancer to another; an archive closing sockets on every node; two
//! worker connections on two nodes, the older one closed with 4001.
//!
//! Needs PostgreSQL at `SWITCHBOARD_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test makes a fresh database and drops
//! it. Without a reachable server the tests say so and pass.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use switchboard_client::{
    BridgeApiClient, IngressConfig, IngressTransport, SessionsClient, TransportState, ViewerConfig,
    ViewerEvent, ViewerSocket,
};
use switchboard_proto::environments::{RegisterEnvironmentRequest, WorkSecret};
use switchboard_proto::sessions::CreateSessionRequest;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// A fresh database on the test PostgreSQL server, dropped with this.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    /// `None` (after saying why) when no PostgreSQL server answers.
    async fn create() -> anyhow::Result<Option<Self>> {
        use sqlx::Connection as _;
        let admin = std::env::var("SWITCHBOARD_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut conn =
            match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    eprintln!("skipping: PostgreSQL at {admin} is unreachable: {e}");
                    return Ok(None);
                }
                Err(_) => {
                    eprintln!("skipping: PostgreSQL at {admin} does not answer");
                    return Ok(None);
                }
            };
        let name = format!("sb_nodes_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let (prefix, _) = admin
            .rsplit_once('/')
            .context("no database name in the PostgreSQL URL")?;
        let url = format!("{prefix}/{name}");
        Ok(Some(Self { admin, name, url }))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, anyhow::Error>(())
            })
        });
        let _ = cleanup.join();
    }
}

/// One `switchboard serve` process.
struct Node {
    child: Child,
    url: String,
    addr: String,
}

impl Node {
    async fn start(db: &Database) -> anyhow::Result<Self> {
        let mut child = support::switchboard()
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
            .arg(&db.url)
            .env("SWITCHBOARD_POLL_TIMEOUT_MS", "8000")
            .stdout(Stdio::piped())
            .stderr(log())
            .spawn()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("Switchboard listening on ") {
                    return Ok::<_, anyhow::Error>(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
            anyhow::bail!("serve exited before listening")
        })
        .await??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = url.trim_start_matches("http://").to_owned();
        Ok(Self { child, url, addr })
    }
}

fn log() -> Stdio {
    std::env::var_os("SWITCHBOARD_TEST_SERVER_LOG")
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map_or_else(Stdio::null, Stdio::from)
}

/// Three nodes on one fresh database, and an API key.
struct Cluster {
    nodes: Vec<Node>,
    key: String,
    db: Database,
}

impl Cluster {
    async fn start() -> anyhow::Result<Option<Self>> {
        let Some(db) = Database::create().await? else {
            return Ok(None);
        };
        let out = support::switchboard()
            .args(["token", "create", "--name", "multinode", "--database-url"])
            .arg(&db.url)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout)?.trim().to_owned();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Node::start(&db).await?);
        }
        Ok(Some(Self { nodes, key, db }))
    }

    /// Cuts every node's listening connection, as a database restart or a network
    /// blip would; returns how many were cut.
    async fn cut_listeners(&self) -> anyhow::Result<u64> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.db.admin).await?;
        let cut = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(&self.db.name)
        .fetch_all(&mut conn)
        .await?;
        Ok(cut.len() as u64)
    }

    fn url(&self, node: usize) -> &str {
        &self.nodes[node].url
    }

    fn sessions(&self, node: usize) -> SessionsClient {
        SessionsClient::new(self.url(node), self.key.clone())
    }

    fn bridge(&self, node: usize) -> BridgeApiClient {
        BridgeApiClient::new(self.url(node), self.key.clone())
    }
}

/// A TCP forwarder standing in for the load balancer: each new connection goes to the
/// node currently chosen.
struct Balancer {
    url: String,
    target: Arc<Mutex<String>>,
}

impl Balancer {
    async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let target = Arc::new(Mutex::new(target.to_owned()));
        let chosen = target.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = chosen.lock().expect("balancer lock").clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self { url, target })
    }

    fn route_to(&self, addr: &str) {
        *self.target.lock().expect("balancer lock") = addr.to_owned();
    }
}

fn registration() -> RegisterEnvironmentRequest {
    RegisterEnvironmentRequest {
        machine_name: "multinode-host".into(),
        directory: "/work/project".into(),
        branch: "main".into(),
        git_repo_url: None,
        max_sessions: 4,
        metadata: json!({"worker_type": "claude_code"}),
        environment_id: None,
    }
}

/// A session dispatched to a worker: registered and polled on `poll_node`, created on
/// `create_node`.
struct Dispatched {
    /// The session, as viewers name it.
    session_id: String,
    /// The session, as the work item names it to the worker.
    work_session_id: String,
    token: String,
    /// How long the poll waited after the session was created.
    waited: Duration,
}

async fn dispatch(
    cluster: &Cluster,
    poll_node: usize,
    create_node: usize,
) -> anyhow::Result<Dispatched> {
    let bridge = cluster.bridge(poll_node);
    let env = bridge.register_environment(&registration()).await?;
    let poll = {
        let bridge = bridge.clone();
        let (id, secret) = (env.environment_id.clone(), env.environment_secret.clone());
        tokio::spawn(async move { bridge.poll_for_work(&id, &secret, None).await })
    };
    // Let the poll start waiting first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let created_at = Instant::now();
    let session = cluster
        .sessions(create_node)
        .create_session(&CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            title: Some("multinode".into()),
            use_code_sessions: Some(false),
            ..Default::default()
        })
        .await?;
    let work = poll.await??.context("the poll ended without work")?;
    let waited = created_at.elapsed();
    let secret = WorkSecret::decode(&work.secret).context("work secret")?;
    Ok(Dispatched {
        session_id: session.id,
        work_session_id: work.data.id,
        token: secret.session_ingress_token,
        waited,
    })
}

fn ingress(base_url: &str, session_id: &str, token: &str) -> IngressConfig {
    let mut config = IngressConfig::new(base_url, session_id, token.to_owned());
    config.reconnect_base_delay = Duration::from_millis(50);
    config.reconnect_max_delay = Duration::from_millis(200);
    config.reconnect_budget = Duration::from_secs(20);
    config.post_base_delay = Duration::from_millis(50);
    config.post_max_jitter = Duration::from_millis(10);
    config.post_max_attempts = 20;
    config
}

/// A viewer that keeps every event it saw.
struct Viewer {
    socket: ViewerSocket,
    events: mpsc::Receiver<ViewerEvent>,
    seen: Vec<Value>,
}

impl Viewer {
    async fn connect(cluster: &Cluster, node: usize, session_id: &str) -> anyhow::Result<Self> {
        let config = ViewerConfig::new(cluster.url(node), session_id, cluster.key.clone());
        let (socket, mut events) = ViewerSocket::connect(config)?;
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(ViewerEvent::Connected)) => {}
            other => anyhow::bail!("the viewer did not connect: {other:?}"),
        }
        Ok(Self {
            socket,
            events,
            seen: Vec::new(),
        })
    }

    /// Waits for a message satisfying `accept`.
    async fn expect(
        &mut self,
        what: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ViewerEvent::Message(m))) => {
                    self.seen.push(m.clone());
                    if accept(&m) {
                        return Ok(m);
                    }
                }
                Ok(Some(ViewerEvent::Closed { code, reason })) => {
                    anyhow::bail!("viewer closed ({code:?} {reason}) waiting for {what}")
                }
                Ok(Some(_)) => {}
                Ok(None) => anyhow::bail!("viewer ended waiting for {what}"),
                Err(_) => anyhow::bail!("no {what} within {WAIT:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Waits until the socket is lost or closed.
    async fn expect_closed(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ViewerEvent::Closed { .. } | ViewerEvent::Reconnecting { .. }))
                | Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(_) => anyhow::bail!("the viewer's socket stayed open"),
            }
        }
    }

    /// The sequence numbers of worker messages seen, which must rise by one each time
    /// (every event of this story is the worker's or a prompt that was echoed).
    fn sequence(&self) -> Vec<u64> {
        self.seen
            .iter()
            .filter_map(|m| m["sequence_num"].as_u64())
            .collect()
    }
}

/// Waits for the worker's next inbound message of type `kind`.
async fn next_of(rx: &mut mpsc::Receiver<Value>, kind: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("the worker got no {kind}"))?
            .context("the worker's stream ended")?;
        if m["type"] == kind {
            return Ok(m);
        }
    }
}

fn user(uuid: &str, text: &str) -> Value {
    switchboard_client::viewer::user_message(uuid, text)
}

fn assistant(text: &str) -> Value {
    json!({
        "type": "assistant",
        "uuid": uuid::Uuid::new_v4().to_string(),
        "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
    })
}

fn permission_request(request_id: &str) -> Value {
    json!({
        "type": "control_request",
        "request_id": request_id,
        "request": {"subtype": "can_use_tool", "tool_name": "Bash", "input": {"command": "ls"}},
    })
}

fn result() -> Value {
    json!({"type": "result", "subtype": "success", "uuid": uuid::Uuid::new_v4().to_string()})
}

/// Strictly consecutive, no duplicate.
fn check_gap_free(seq: &[u64]) -> anyhow::Result<()> {
    for pair in seq.windows(2) {
        anyhow::ensure!(pair[1] == pair[0] + 1, "gap or repeat in {seq:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_on_one_node_serves_viewers_and_prompts_on_the_others() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    // Polled on node 0, created on node 1: the poll is answered at once, not by the
    // reclaim timer seconds later.
    let d = dispatch(&cluster, 0, 1).await?;
    let (session_id, token, waited) = (&d.session_id, &d.token, d.waited);
    assert!(
        waited < Duration::from_millis(1500),
        "the poll on another node waited {waited:?} for the new session"
    );
    let (worker, mut inbound) =
        IngressTransport::connect(ingress(cluster.url(0), &d.work_session_id, token)).await?;
    let mut on_b = Viewer::connect(&cluster, 1, session_id).await?;
    let mut on_c = Viewer::connect(&cluster, 2, session_id).await?;

    // A prompt through node 2 reaches the worker on node 0.
    let prompt = uuid::Uuid::new_v4().to_string();
    on_c.socket.send_message(user(&prompt, "hello")).await?;
    let got = next_of(&mut inbound, "user").await?;
    assert_eq!(got["uuid"], prompt.as_str());

    // The worker's output reaches the viewers on nodes 1 and 2, in order.
    worker
        .write(vec![assistant("thinking"), permission_request("req-1")])
        .await?;
    for viewer in [&mut on_b, &mut on_c] {
        viewer
            .expect("the assistant message", |m| m["type"] == "assistant")
            .await?;
        viewer
            .expect("the permission request", |m| m["type"] == "control_request")
            .await?;
    }
    // The status reads the same on every node.
    for node in 0..3 {
        let s = cluster.sessions(node).get_session(session_id).await?;
        assert_eq!(s.session_status, "requires_action", "on node {node}");
    }

    // Answered through node 1; a second answer through node 2 is ignored.
    on_b.socket
        .send_message(switchboard_client::viewer::control_response(
            "req-1",
            switchboard_client::viewer::allow_decision(json!({"command": "ls"})),
        ))
        .await?;
    let answer = next_of(&mut inbound, "control_response").await?;
    assert_eq!(answer["response"]["request_id"], "req-1");
    cluster
        .sessions(2)
        .send_events(
            session_id,
            vec![switchboard_client::viewer::control_response(
                "req-1",
                switchboard_client::viewer::deny_decision("no"),
            )],
        )
        .await?;

    worker.write(vec![assistant("done"), result()]).await?;
    for viewer in [&mut on_b, &mut on_c] {
        viewer
            .expect("the result", |m| m["type"] == "result")
            .await?;
    }
    // No second answer reached the worker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(m) = inbound.try_recv() {
        assert_ne!(m["type"], "control_response", "a second answer: {m}");
    }
    // Both viewers saw the same events, each once, in order.
    let (b, c) = (on_b.sequence(), on_c.sequence());
    check_gap_free(&b)?;
    assert_eq!(b, c, "the viewers on two nodes saw different sequences");
    for node in 0..3 {
        let s = cluster.sessions(node).get_session(session_id).await?;
        assert_eq!(s.session_status, "idle", "on node {node}");
    }
    worker.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_moves_when_its_node_is_killed_and_nothing_is_lost_or_repeated(
) -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let d = dispatch(&cluster, 2, 2).await?;
    let (session_id, token) = (&d.session_id, &d.token);
    let balancer = Balancer::start(&cluster.nodes[0].addr).await?;
    let (worker, mut inbound) =
        IngressTransport::connect(ingress(&balancer.url, &d.work_session_id, token)).await?;
    let mut viewer = Viewer::connect(&cluster, 1, session_id).await?;

    let mut prompts = Vec::new();
    let mut received = Vec::new();
    for i in 0..3 {
        let uuid = uuid::Uuid::new_v4().to_string();
        viewer
            .socket
            .send_message(user(&uuid, &format!("before {i}")))
            .await?;
        received.push(next_of(&mut inbound, "user").await?["uuid"].clone());
        prompts.push(uuid);
    }
    worker.write(vec![assistant("before the crash")]).await?;
    viewer
        .expect("the worker's reply", |m| m["type"] == "assistant")
        .await?;
    // Let node 0 store the worker's cursor, then kill it without a word.
    tokio::time::sleep(Duration::from_millis(300)).await;
    balancer.route_to(&cluster.nodes[2].addr);
    cluster.nodes[0].child.start_kill()?;
    cluster.nodes[0].child.wait().await?;

    // Prompts sent while the worker reconnects are kept and delivered once.
    for i in 0..3 {
        let uuid = uuid::Uuid::new_v4().to_string();
        viewer
            .socket
            .send_message(user(&uuid, &format!("after {i}")))
            .await?;
        prompts.push(uuid);
    }
    for _ in 0..3 {
        received.push(next_of(&mut inbound, "user").await?["uuid"].clone());
    }
    worker
        .write(vec![assistant("after the crash"), result()])
        .await?;
    viewer
        .expect("the result", |m| m["type"] == "result")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(m) = inbound.try_recv() {
        assert_ne!(m["type"], "user", "a prompt was delivered twice: {m}");
    }
    let expected: Vec<Value> = prompts.iter().map(|p| json!(p)).collect();
    assert_eq!(
        received, expected,
        "the worker got the prompts out of order or not all"
    );
    check_gap_free(&viewer.sequence())?;
    let history = cluster
        .sessions(1)
        .history(session_id, Default::default())
        .await?;
    let uuids: Vec<&str> = history
        .data
        .iter()
        .filter_map(|m| m["uuid"].as_str())
        .collect();
    let unique: HashSet<&&str> = uuids.iter().collect();
    assert_eq!(unique.len(), uuids.len(), "history repeats an event");
    worker.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archiving_on_one_node_closes_the_sockets_on_the_others() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let d = dispatch(&cluster, 0, 0).await?;
    let (session_id, token) = (&d.session_id, &d.token);
    let (worker, _inbound) =
        IngressTransport::connect(ingress(cluster.url(0), &d.work_session_id, token)).await?;
    let mut viewer = Viewer::connect(&cluster, 1, session_id).await?;
    let started = Instant::now();
    cluster.sessions(2).archive_session(session_id).await?;
    let closed = tokio::time::timeout(WAIT, worker.closed()).await?;
    assert!(
        matches!(
            closed,
            TransportState::Closed {
                code: Some(4001),
                ..
            }
        ),
        "the worker on node 0 ended with {closed:?}"
    );
    viewer.expect_closed().await?;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closing took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_older_of_two_workers_on_two_nodes_is_closed() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let d = dispatch(&cluster, 0, 0).await?;
    let (session_id, token) = (&d.session_id, &d.token);
    let (older, _older_inbound) =
        IngressTransport::connect(ingress(cluster.url(0), &d.work_session_id, token)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (newer, mut newer_inbound) =
        IngressTransport::connect(ingress(cluster.url(1), &d.work_session_id, token)).await?;
    let closed = tokio::time::timeout(WAIT, older.closed()).await?;
    assert!(
        matches!(
            closed,
            TransportState::Closed {
                code: Some(4001),
                ..
            }
        ),
        "the older worker ended with {closed:?}"
    );
    assert_eq!(newer.state(), TransportState::Connected);
    // Prompts through the third node go to the newer worker.
    let uuid = uuid::Uuid::new_v4().to_string();
    cluster
        .sessions(2)
        .send_events(session_id, vec![user(&uuid, "to the newer")])
        .await?;
    assert_eq!(
        next_of(&mut newer_inbound, "user").await?["uuid"],
        uuid.as_str()
    );
    newer.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_loses_its_listening_connection_catches_up_from_the_log() -> anyhow::Result<()>
{
    let Some(cluster) = Cluster::start().await? else {
        return Ok(());
    };
    let d = dispatch(&cluster, 0, 0).await?;
    let (worker, _inbound) =
        IngressTransport::connect(ingress(cluster.url(0), &d.work_session_id, &d.token)).await?;
    let mut viewer = Viewer::connect(&cluster, 1, &d.session_id).await?;
    worker.write(vec![assistant("before the cut")]).await?;
    viewer
        .expect("the first reply", |m| m["type"] == "assistant")
        .await?;

    // The worker keeps writing while node 1 is deaf: what it misses comes from the log.
    anyhow::ensure!(
        cluster.cut_listeners().await? >= 3,
        "not every node was listening"
    );
    for i in 0..20 {
        worker
            .write(vec![assistant(&format!("during {i}"))])
            .await?;
    }
    worker.write(vec![result()]).await?;
    viewer
        .expect("the result", |m| m["type"] == "result")
        .await?;
    let seq = viewer.sequence();
    check_gap_free(&seq)?;
    assert_eq!(seq.len(), 22, "the viewer saw {seq:?}");
    // And it follows live again afterwards.
    worker.write(vec![assistant("after")]).await?;
    viewer
        .expect("a reply after reconnecting", |m| {
            m["type"] == "assistant" && m.to_string().contains("after")
        })
        .await?;
    check_gap_free(&viewer.sequence())?;
    worker.close().await;
    Ok(())
}
