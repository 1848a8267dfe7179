//! The systems under test as the simulated clients see them: Switchboard, with its v1
//! (WebSocket read, POST write) or v2 (SSE read, POST write) worker transport, and the
//! bare relay (one WebSocket each way), behind one set of operations so every scenario
//! drives them with the same code.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use switchboard_proto::environments::{
    RegisterEnvironmentRequest, RegisterEnvironmentResponse, WorkResponse, WorkSecret,
};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect_ws, next_text, SseStream, WsSink, WsStream, IO_TIMEOUT};
use crate::post::{events_body, OwnPost};

/// How a simulated Switchboard worker talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// Session-ingress WebSocket to read, POST to write (the environments flow).
    V1,
    /// Server-Sent Events to read, POST to write (code sessions).
    V2,
}

/// Where a simulated worker's POSTs go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WorkerConnections {
    /// Every worker shares one pool of at most `--post-connections` POSTs in flight.
    Shared,
    /// Every worker has a keep-alive connection of its own, as a real worker process
    /// does: one more socket per session in each process.
    Own,
}

/// How a viewer sends its prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Prompts {
    /// A frame on the viewer's subscribe WebSocket.
    Frame,
    /// `POST /v1/sessions/{id}/events` with the API key, through the shared POST pool.
    Post,
}

/// How the bare relay takes the worker's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BaselineWrites {
    /// Frames on the worker's WebSocket; prompts as viewer frames.
    Frames,
    /// The same HTTP POSTs as Switchboard's (the worker POSTs to the session-ingress
    /// events path, prompts follow `--prompts`), so a ratio compares one protocol path.
    Posts,
}

/// How the simulated clients write, whichever system they drive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writes {
    /// Worker POSTs: pooled or one connection each.
    pub(crate) workers: WorkerConnections,
    /// Prompts: viewer frames or POSTs.
    pub(crate) prompts: Prompts,
    /// The relay's worker writes: frames or POSTs.
    pub(crate) baseline: BaselineWrites,
}

/// A server the bench drives.
#[derive(Clone)]
pub(crate) enum System {
    /// Switchboard, with the worker transport the scenario uses.
    Switchboard(Switchboard),
    /// The bare relay.
    Baseline(Baseline),
}

/// Where the bare relay is and how the clients write to it.
#[derive(Clone)]
pub(crate) struct Baseline {
    /// `http://127.0.0.1:PORT`.
    http: String,
    /// `ws://127.0.0.1:PORT`.
    ws: String,
    client: reqwest::Client,
    writes: Writes,
    posts: Arc<Semaphore>,
}

/// Where a Switchboard server is and how to reach it.
#[derive(Clone)]
pub(crate) struct Switchboard {
    /// Every node of the system (one unless several share a PostgreSQL database), as
    /// `http://127.0.0.1:PORT`. Sessions are created on the first; session `i`'s worker
    /// connects to node `i mod N` and its viewers to the next node, so with two nodes
    /// every message crosses between them; work polls go to the last node.
    nodes: Arc<Vec<String>>,
    /// Which node the next session's worker connects to.
    next_node: Arc<std::sync::atomic::AtomicUsize>,
    token: String,
    client: reqwest::Client,
    transport: Transport,
    writes: Writes,
    /// Bounds the pooled POSTs in flight, and so the connections they hold.
    posts: Arc<Semaphore>,
}

/// A registered environment (v1 sessions are dispatched through one).
pub(crate) struct Environment {
    id: String,
    secret: String,
}

/// A session ready for a worker and viewers.
pub(crate) struct Session {
    /// The id the worker and viewers name it by.
    pub(crate) id: String,
    credentials: Credentials,
    /// The node its worker connects to (its viewers: the next one).
    node: usize,
}

enum Credentials {
    Ingress(String),
    Code { jwt: String, epoch: u64 },
    None,
}

/// A simulated worker.
pub(crate) struct Worker {
    /// What the server sends the worker.
    pub(crate) reader: WorkerReader,
    /// How the worker writes.
    pub(crate) writer: WorkerWriter,
    /// The write half of a v1 worker's socket: unused, but the socket lives as long as
    /// this does.
    pub(crate) keep_open: Option<WsSink>,
}

/// The read side of a worker.
pub(crate) enum WorkerReader {
    /// A WebSocket (Switchboard v1, baseline).
    Ws(WsStream),
    /// An event stream (Switchboard v2).
    Sse(SseStream),
}

/// The write side of a worker.
pub(crate) enum WorkerWriter {
    /// POST through the shared pool (Switchboard v1 and v2, the relay's POST mode).
    Http(HttpWriter),
    /// POST on a connection of the worker's own.
    Own(OwnPost),
    /// Frames on the worker's WebSocket (baseline).
    Ws(WsSink),
}

/// A worker's POST write path; cheap to clone, so several writes can be in flight.
#[derive(Clone)]
pub(crate) struct HttpWriter {
    client: reqwest::Client,
    url: String,
    token: String,
    /// `Some` for v2, whose writes carry the worker epoch and wrap each message.
    epoch: Option<u64>,
    posts: Arc<Semaphore>,
}

/// A simulated viewer: one WebSocket, and the prompts' POST path if they go by POST.
pub(crate) struct Viewer {
    writer: ViewerWriter,
    stream: WsStream,
}

/// The write side of a viewer.
pub(crate) struct ViewerWriter {
    /// The socket's write half: prompts as frames, or only kept so the socket lives.
    sink: WsSink,
    /// `Some` when prompts go by POST.
    post: Option<HttpWriter>,
}

impl System {
    /// Switchboard at `http_url` with an API key. The simulated workers share at most
    /// `connections` POSTs in flight: in production each worker is a process with a
    /// keep-alive connection of its own, but a third socket per session does not fit
    /// this machine's open-file limit at 10,000 sessions, so the workers share a pool.
    /// `writes` says whether each worker has its own connection instead (as many
    /// sessions as the open-file limit allows then) and how prompts go.
    pub(crate) fn switchboard(
        nodes: &[String],
        token: &str,
        client: reqwest::Client,
        transport: Transport,
        connections: usize,
        writes: Writes,
    ) -> Self {
        let nodes: Vec<String> = nodes
            .iter()
            .map(|n| n.trim_end_matches('/').to_string())
            .collect();
        System::Switchboard(Switchboard {
            nodes: Arc::new(nodes),
            next_node: Arc::default(),
            token: token.to_string(),
            client,
            transport,
            writes,
            posts: Arc::new(Semaphore::new(connections.max(1))),
        })
    }

    /// The bare relay at `http_url`; with `BaselineWrites::Posts` its clients write
    /// the POSTs Switchboard's do, through the same pool or own connections.
    pub(crate) fn baseline(
        http_url: &str,
        client: reqwest::Client,
        connections: usize,
        writes: Writes,
    ) -> Self {
        let http = http_url.trim_end_matches('/').to_string();
        System::Baseline(Baseline {
            ws: http.replacen("http", "ws", 1),
            http,
            client,
            writes,
            posts: Arc::new(Semaphore::new(connections.max(1))),
        })
    }

    /// Sockets each session holds in the bench (and in the server): the worker's and
    /// the viewer's WebSockets, plus the worker's own POST connection if it has one.
    /// Pooled POSTs (`--post-connections`) come on top, once.
    pub(crate) fn sockets_per_session(writes: Writes, baseline: bool) -> u64 {
        let posts = if baseline && writes.baseline == BaselineWrites::Frames {
            false
        } else {
            writes.workers == WorkerConnections::Own
        };
        2 + u64::from(posts)
    }

    /// Switchboard's viewers get every event of the log, their own prompts included;
    /// the relay sends a viewer only the worker's output.
    pub(crate) fn echoes_prompts(&self) -> bool {
        matches!(self, System::Switchboard(_))
    }

    /// Registers an environment to create v1 sessions on; `None` where none is needed.
    pub(crate) async fn environment(&self) -> anyhow::Result<Option<Environment>> {
        let System::Switchboard(sb) = self else {
            return Ok(None);
        };
        if sb.transport != Transport::V1 {
            return Ok(None);
        }
        sb.register_environment().await.map(Some)
    }

    /// Creates a session (on `env` for v1) with its worker's credentials.
    pub(crate) async fn open_session(&self, env: Option<&Environment>) -> anyhow::Result<Session> {
        match self {
            System::Baseline(_) => Ok(Session {
                id: format!("ch{}", uuid::Uuid::new_v4().simple()),
                credentials: Credentials::None,
                node: 0,
            }),
            System::Switchboard(sb) => {
                let mut session = match sb.transport {
                    Transport::V1 => {
                        let env = env.context("a v1 session needs an environment")?;
                        sb.dispatch_session(env).await?
                    }
                    Transport::V2 => sb.code_session().await?,
                };
                session.node = sb
                    .next_node
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(session)
            }
        }
    }

    /// Connects a worker to a session.
    pub(crate) async fn connect_worker(&self, session: &Session) -> anyhow::Result<Worker> {
        match (self, &session.credentials) {
            (System::Baseline(b), _) => {
                let socket =
                    connect_ws(&format!("{}/ch/{}/worker", b.ws, session.id), None).await?;
                let (sink, stream) = socket.split();
                if b.writes.baseline == BaselineWrites::Frames {
                    return Ok(Worker {
                        reader: WorkerReader::Ws(stream),
                        writer: WorkerWriter::Ws(sink),
                        keep_open: None,
                    });
                }
                let url = format!(
                    "{}/v1/session_ingress/session/{}/events",
                    b.http, session.id
                );
                Ok(Worker {
                    reader: WorkerReader::Ws(stream),
                    writer: post_writer(
                        &b.client,
                        &b.posts,
                        b.writes.workers,
                        url,
                        BASELINE_TOKEN,
                        None,
                    )
                    .await?,
                    keep_open: Some(sink),
                })
            }
            (System::Switchboard(sb), Credentials::Ingress(token)) => {
                let http = sb.node(session.node);
                let socket = connect_ws(
                    &format!(
                        "{}/v1/session_ingress/ws/{}",
                        http.replacen("http", "ws", 1),
                        session.id
                    ),
                    Some(token),
                )
                .await?;
                let (sink, stream) = socket.split();
                let url = format!("{http}/v1/session_ingress/session/{}/events", session.id);
                Ok(Worker {
                    reader: WorkerReader::Ws(stream),
                    writer: post_writer(&sb.client, &sb.posts, sb.writes.workers, url, token, None)
                        .await?,
                    keep_open: Some(sink),
                })
            }
            (System::Switchboard(sb), Credentials::Code { jwt, epoch }) => {
                let base = format!(
                    "{}/v1/code/sessions/{}/worker",
                    sb.node(session.node),
                    session.id
                );
                let stream =
                    SseStream::open(&sb.client, &format!("{base}/events/stream"), jwt).await?;
                Ok(Worker {
                    reader: WorkerReader::Sse(stream),
                    writer: post_writer(
                        &sb.client,
                        &sb.posts,
                        sb.writes.workers,
                        format!("{base}/events"),
                        jwt,
                        Some(*epoch),
                    )
                    .await?,
                    keep_open: None,
                })
            }
            (System::Switchboard(_), Credentials::None) => {
                anyhow::bail!("a Switchboard session needs worker credentials")
            }
        }
    }

    /// Connects a viewer to a session.
    pub(crate) async fn connect_viewer(&self, session: &Session) -> anyhow::Result<Viewer> {
        let (socket, post) = match self {
            System::Baseline(b) => (
                connect_ws(&format!("{}/ch/{}/viewer", b.ws, session.id), None).await?,
                (b.writes.prompts == Prompts::Post).then(|| HttpWriter {
                    client: b.client.clone(),
                    url: format!("{}/v1/sessions/{}/events", b.http, session.id),
                    token: BASELINE_TOKEN.to_string(),
                    epoch: None,
                    posts: b.posts.clone(),
                }),
            ),
            System::Switchboard(sb) => (
                connect_ws(
                    &format!(
                        "{}/v1/sessions/ws/{}/subscribe",
                        sb.node(session.node + 1).replacen("http", "ws", 1),
                        session.id
                    ),
                    Some(&sb.token),
                )
                .await?,
                (sb.writes.prompts == Prompts::Post).then(|| HttpWriter {
                    client: sb.client.clone(),
                    url: format!(
                        "{}/v1/sessions/{}/events",
                        sb.node(session.node + 1),
                        session.id
                    ),
                    token: sb.token.clone(),
                    epoch: None,
                    posts: sb.posts.clone(),
                }),
            ),
        };
        let (sink, stream) = socket.split();
        Ok(Viewer {
            writer: ViewerWriter { sink, post },
            stream,
        })
    }

    /// The Switchboard server, if this is one.
    pub(crate) fn as_switchboard(&self) -> Option<&Switchboard> {
        match self {
            System::Switchboard(sb) => Some(sb),
            System::Baseline(_) => None,
        }
    }
}

/// The bearer token the relay's clients send: it checks none, but the requests carry
/// the same headers as Switchboard's.
const BASELINE_TOKEN: &str = "sbk_bench_baseline";

/// A worker's POST path: the shared pool, or a connection of its own.
async fn post_writer(
    client: &reqwest::Client,
    posts: &Arc<Semaphore>,
    connections: WorkerConnections,
    url: String,
    token: &str,
    epoch: Option<u64>,
) -> anyhow::Result<WorkerWriter> {
    Ok(match connections {
        WorkerConnections::Own => WorkerWriter::Own(
            OwnPost::connect(&url, token, epoch)
                .await
                .context("failed to open the worker's POST connection")?,
        ),
        WorkerConnections::Shared => WorkerWriter::Http(HttpWriter {
            client: client.clone(),
            url,
            token: token.to_string(),
            epoch,
            posts: posts.clone(),
        }),
    })
}

impl Switchboard {
    /// `POST /v1/environments/bridge`.
    pub(crate) async fn register_environment(&self) -> anyhow::Result<Environment> {
        let request = RegisterEnvironmentRequest {
            machine_name: "bench".into(),
            directory: "/bench".into(),
            branch: "main".into(),
            git_repo_url: None,
            max_sessions: 1,
            metadata: json!({"worker_type": "claude_code"}),
            environment_id: None,
        };
        let response: RegisterEnvironmentResponse = self
            .post_json(
                &format!("{}/v1/environments/bridge", self.node(0)),
                &self.token,
                &request,
            )
            .await
            .context("failed to register an environment")?;
        Ok(Environment {
            id: response.environment_id,
            secret: response.environment_secret,
        })
    }

    /// Node `i` (counted round the nodes).
    fn node(&self, i: usize) -> &str {
        &self.nodes[i % self.nodes.len().max(1)]
    }

    /// Where work polls go: the last node (with several, not where sessions are made).
    fn poll_node(&self) -> &str {
        self.node(self.nodes.len().saturating_sub(1))
    }

    /// The value of a gauge or counter on `/metrics` of the node that takes work polls.
    pub(crate) async fn poll_node_metric(&self, name: &str) -> anyhow::Result<f64> {
        self.metric_at(self.poll_node(), name).await
    }

    /// `POST /v1/sessions` on an environment.
    pub(crate) async fn create_session(&self, env: &Environment) -> anyhow::Result<()> {
        let _: Value = self
            .post_json(
                &format!("{}/v1/sessions", self.node(0)),
                &self.token,
                &json!({"environment_id": env.id, "title": "bench"}),
            )
            .await
            .context("failed to create a session")?;
        Ok(())
    }

    /// One long-poll for work; `None` when it timed out empty (204).
    pub(crate) async fn poll(&self, env: &Environment) -> anyhow::Result<Option<WorkResponse>> {
        let response = self
            .client
            .get(format!(
                "{}/v1/environments/{}/work/poll",
                self.poll_node(),
                env.id
            ))
            .bearer_auth(&env.secret)
            .send()
            .await
            .context("work poll failed")?;
        match response.status() {
            reqwest::StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => Ok(Some(response.json().await.context("unreadable work item")?)),
            s => anyhow::bail!("work poll refused: {s}: {}", response.text().await?),
        }
    }

    /// Acknowledges a polled work item (so it is not handed out again) and returns the
    /// session it dispatched with its ingress token.
    pub(crate) async fn ack(
        &self,
        env: &Environment,
        work: &WorkResponse,
    ) -> anyhow::Result<Session> {
        let secret = WorkSecret::decode(&work.secret)
            .map_err(|e| anyhow::anyhow!("undecodable work secret: {}", e.0))?;
        let token = secret.session_ingress_token;
        let _: Value = self
            .post_json(
                &format!(
                    "{}/v1/environments/{}/work/{}/ack",
                    self.node(0),
                    env.id,
                    work.id
                ),
                &token,
                &json!({}),
            )
            .await
            .context("failed to acknowledge work")?;
        Ok(Session {
            id: work.data.id.clone(),
            credentials: Credentials::Ingress(token),
            node: 0,
        })
    }

    /// Creates a session on `env` and takes its work from a poll, as a bridge does.
    async fn dispatch_session(&self, env: &Environment) -> anyhow::Result<Session> {
        self.create_session(env).await?;
        // The environment has only this session's work queued, so the first answer is it.
        for _ in 0..3 {
            if let Some(work) = self.poll(env).await? {
                return self.ack(env, &work).await;
            }
        }
        anyhow::bail!("no work arrived for a new session")
    }

    /// `POST /v1/code/sessions`, then `/bridge` for a worker JWT.
    async fn code_session(&self) -> anyhow::Result<Session> {
        let created: Value = self
            .post_json(
                &format!("{}/v1/code/sessions", self.node(0)),
                &self.token,
                &json!({"title": "bench"}),
            )
            .await
            .context("failed to create a code session")?;
        let id = created["session"]["id"]
            .as_str()
            .context("code session without an id")?
            .to_string();
        let bridge: Value = self
            .post_json(
                &format!("{}/v1/code/sessions/{id}/bridge", self.node(0)),
                &self.token,
                &json!({}),
            )
            .await
            .context("failed to get worker credentials")?;
        Ok(Session {
            id,
            node: 0,
            credentials: Credentials::Code {
                jwt: bridge["worker_jwt"]
                    .as_str()
                    .context("no worker_jwt")?
                    .to_string(),
                epoch: bridge["worker_epoch"].as_u64().context("no worker_epoch")?,
            },
        })
    }

    async fn metric_at(&self, node: &str, name: &str) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(format!("{node}/metrics"))
            .send()
            .await
            .context("failed to read /metrics")?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} on /metrics"))
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        token: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let response = self
            .client
            .post(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url} failed"))?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "POST {url}: {status}: {}",
            response.text().await.unwrap_or_default()
        );
        response
            .json()
            .await
            .with_context(|| format!("POST {url}: unreadable answer"))
    }
}

impl WorkerReader {
    /// The next frame the server sent the worker; `None` once the stream ended.
    pub(crate) async fn next_frame(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            WorkerReader::Ws(stream) => next_text(stream).await,
            WorkerReader::Sse(stream) => stream.next_frame().await,
        }
    }
}

impl WorkerWriter {
    /// Writes messages as one batch; returns once the server accepted them (POST) or they
    /// were flushed to the socket (relay).
    pub(crate) async fn send(&mut self, messages: &[String]) -> anyhow::Result<()> {
        match self {
            WorkerWriter::Http(http) => http.send(messages).await,
            WorkerWriter::Own(own) => own.send(messages).await,
            WorkerWriter::Ws(sink) => {
                for message in messages {
                    sink.feed(Message::Text(message.as_str().into()))
                        .await
                        .context("worker socket failed")?;
                }
                sink.flush().await.context("worker socket failed")
            }
        }
    }
}

impl HttpWriter {
    /// POSTs messages as one request; returns once the server committed them.
    pub(crate) async fn send(&self, messages: &[String]) -> anyhow::Result<()> {
        let body = events_body(messages, self.epoch);
        let _permit = self.posts.acquire().await.context("the POST pool closed")?;
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("worker write failed")?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "worker write refused: {status}: {}",
            response.text().await.unwrap_or_default()
        );
        // Read the (tiny) answer so the connection goes back to the pool.
        let _ = response.bytes().await;
        Ok(())
    }
}

impl Viewer {
    /// Sends one message (a prompt) to the session's worker: a frame, or a POST.
    pub(crate) async fn send(&mut self, message: String) -> anyhow::Result<()> {
        self.writer.send(message).await
    }

    /// The next frame the server sent the viewer; `None` once it closed.
    pub(crate) async fn next_frame(&mut self) -> anyhow::Result<Option<String>> {
        next_text(&mut self.stream).await
    }

    /// Splits the viewer into its write and read halves.
    pub(crate) fn split(self) -> (ViewerWriter, WsStream) {
        (self.writer, self.stream)
    }
}

impl ViewerWriter {
    /// Sends one prompt: a frame on the socket, or a POST (returns once accepted).
    pub(crate) async fn send(&mut self, message: String) -> anyhow::Result<()> {
        match &self.post {
            Some(post) => post.send(std::slice::from_ref(&message)).await,
            None => self
                .sink
                .send(Message::Text(message.into()))
                .await
                .context("viewer socket failed"),
        }
    }
}

/// Anything the server sends frames on.
pub(crate) trait FrameSource {
    /// The next frame; `None` once the stream ended.
    async fn next_frame(&mut self) -> anyhow::Result<Option<String>>;
}

impl FrameSource for WorkerReader {
    async fn next_frame(&mut self) -> anyhow::Result<Option<String>> {
        WorkerReader::next_frame(self).await
    }
}

impl FrameSource for Viewer {
    async fn next_frame(&mut self) -> anyhow::Result<Option<String>> {
        Viewer::next_frame(self).await
    }
}

/// Waits for the next frame carrying `mark` stamped at or after `not_before`, skipping
/// everything else; returns the moment it arrived. Fails after `IO_TIMEOUT`.
pub(crate) async fn next_stamped(
    source: &mut impl FrameSource,
    mark: &str,
    not_before: u64,
) -> anyhow::Result<u64> {
    tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            let frame = source.next_frame().await?.context("the stream ended")?;
            if crate::message::stamp(&frame, mark).is_some_and(|s| s >= not_before) {
                return Ok(crate::message::now_ns());
            }
        }
    })
    .await
    .with_context(|| format!("no {mark} frame within {IO_TIMEOUT:?}"))?
}
