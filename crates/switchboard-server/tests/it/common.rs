//! A real server on 127.0.0.1:0 with a fresh SQLite file, and clients for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_client::{BridgeApiClient, IngressConfig, SessionsClient};
use switchboard_proto::environments::{RegisterEnvironmentRequest, WorkResponse, WorkSecret};
use switchboard_server::{Server, ServerOptions};

/// A running server; dropping it shuts the server down and deletes its database.
pub struct TestServer {
    server: Arc<Server>,
    addr: SocketAddr,
    /// The API key of the owner `alice`.
    pub key: String,
    /// The PostgreSQL database to drop afterwards: (server URL, database name).
    pg_database: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with test-friendly timings.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `configure` adjusted its options.
    ///
    /// The store is a fresh SQLite file, or a fresh PostgreSQL database when
    /// `SWITCHBOARD_TEST_BACKEND=postgres` (with `SWITCHBOARD_TEST_PG_URL` naming the server).
    pub async fn start_with(configure: impl FnOnce(&mut ServerOptions)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (database_url, pg_database) = match std::env::var("SWITCHBOARD_TEST_BACKEND").as_deref()
        {
            Ok("postgres") => {
                let (base, name, url) = fresh_pg_database().await?;
                (url, Some((base, name)))
            }
            _ => (
                format!("sqlite://{}", dir.path().join("test.db").display()),
                None,
            ),
        };
        let mut options = ServerOptions::new(database_url);
        options.poll_timeout = Duration::from_secs(2);
        options.ingress_keepalive = Duration::from_secs(5);
        configure(&mut options);
        let server = Arc::new(Server::new(options).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let running = server.clone();
        tokio::spawn(async move { running.listen(listener).await });
        let key = switchboard_server::auth::create_api_key(
            server.state().store().as_ref(),
            "alice",
            "test",
            0,
        )
        .await?;
        Ok(Self {
            server,
            addr,
            key,
            pg_database,
            _dir: dir,
        })
    }

    /// The running server's state (its store, for tests that change it behind the API).
    pub fn state(&self) -> &switchboard_server::AppState {
        self.server.state()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new API key for `owner`.
    pub async fn key_for(&self, owner: &str) -> anyhow::Result<String> {
        Ok(switchboard_server::auth::create_api_key(
            self.server.state().store().as_ref(),
            owner,
            "test",
            0,
        )
        .await?)
    }

    /// The Environments API client with alice's key.
    pub fn bridge(&self) -> BridgeApiClient {
        BridgeApiClient::new(self.url(), self.key.clone())
    }

    /// The Sessions API client with alice's key.
    pub fn sessions(&self) -> SessionsClient {
        SessionsClient::new(self.url(), self.key.clone())
    }

    /// A raw HTTP client for requests the typed clients refuse to make.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Stops the server as SIGTERM would.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

/// Creates an empty database on the test PostgreSQL server: (server URL, name, URL).
async fn fresh_pg_database() -> anyhow::Result<(String, String, String)> {
    use sqlx::Connection as _;
    let base = std::env::var("SWITCHBOARD_TEST_PG_URL").map_err(|_| {
        anyhow::anyhow!("SWITCHBOARD_TEST_BACKEND=postgres needs SWITCHBOARD_TEST_PG_URL")
    })?;
    let name = format!("sb_it_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("no database in {base}"))?;
    let url = format!("{prefix}/{name}");
    Ok((base, name, url))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some((base, name)) = self.pg_database.take() {
            // Drop runs inside the test's runtime, so the cleanup gets a thread of its own.
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    use sqlx::Connection as _;
                    let mut admin = sqlx::PgConnection::connect(&base).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await?;
                    Ok::<_, anyhow::Error>(())
                })
            });
            let _ = cleanup.join();
        }
    }
}

/// A registration request as `claude remote-control` sends it.
pub fn registration() -> RegisterEnvironmentRequest {
    RegisterEnvironmentRequest {
        machine_name: "test-host".into(),
        directory: "/work/project".into(),
        branch: "main".into(),
        git_repo_url: None,
        max_sessions: 1,
        metadata: json!({"worker_type": "claude_code"}),
        environment_id: None,
    }
}

/// A user prompt as a viewer sends it.
pub fn prompt(text: &str) -> Value {
    json!({
        "type": "user",
        "uuid": uuid::Uuid::new_v4().to_string(),
        "parent_tool_use_id": null,
        "message": {"role": "user", "content": text},
    })
}

/// Decodes a work item's secret.
pub fn secret_of(work: &WorkResponse) -> WorkSecret {
    WorkSecret::decode(&work.secret).expect("the server's work secret decodes")
}

/// An environment registered, a session created on it, and its work polled.
pub struct Dispatched {
    pub environment_id: String,
    pub environment_secret: String,
    pub session_id: String,
    pub work: WorkResponse,
    pub ingress_token: String,
}

/// Runs register → create a v1 session → poll (no ack).
pub async fn dispatch(server: &TestServer) -> anyhow::Result<Dispatched> {
    let bridge = server.bridge();
    let env = bridge.register_environment(&registration()).await?;
    let session = server
        .sessions()
        .create_session(&switchboard_proto::sessions::CreateSessionRequest {
            environment_id: Some(env.environment_id.clone()),
            title: Some("test".into()),
            use_code_sessions: Some(false),
            ..Default::default()
        })
        .await?;
    let work = bridge
        .poll_for_work(&env.environment_id, &env.environment_secret, Some(5_000))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no work after creating a session"))?;
    let ingress_token = secret_of(&work).session_ingress_token;
    Ok(Dispatched {
        environment_id: env.environment_id,
        environment_secret: env.environment_secret,
        session_id: session.id,
        work,
        ingress_token,
    })
}

/// Ingress settings with short delays, so tests of reconnects stay fast.
pub fn ingress_config(server: &TestServer, session_id: &str, token: &str) -> IngressConfig {
    let mut config = IngressConfig::new(server.url(), session_id, token.to_string());
    config.reconnect_base_delay = Duration::from_millis(50);
    config.reconnect_max_delay = Duration::from_millis(200);
    config.reconnect_budget = Duration::from_secs(3);
    config.post_base_delay = Duration::from_millis(20);
    config.post_max_jitter = Duration::from_millis(10);
    config.post_max_attempts = 3;
    config
}

/// Waits for the next message on a receiver, failing after a few seconds.
pub async fn next(rx: &mut tokio::sync::mpsc::Receiver<Value>) -> anyhow::Result<Value> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .map_err(|_| anyhow::anyhow!("timed out waiting for a message"))?
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))
}

/// A minimal Server-Sent Events reader for tests: yields `(event, id, data)` frames and
/// skips comments.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen so far (keep-alives).
    pub comments: Vec<String>,
}

/// One SSE frame.
#[derive(Debug, Clone)]
pub struct SseFrame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

impl SseReader {
    /// Opens `url` with a bearer token, optionally resuming with `Last-Event-ID`.
    pub async fn open(url: &str, token: &str, last_event_id: Option<u64>) -> anyhow::Result<Self> {
        let mut request = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "stream refused: {}",
            response.status()
        );
        Ok(Self {
            response,
            buffer: String::new(),
            comments: Vec::new(),
        })
    }

    /// The next frame with data, or an error after `wait`.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<SseFrame> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut frame = SseFrame {
                        event: None,
                        id: None,
                        data: String::new(),
                    };
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            frame.event = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("id:") {
                            frame.id = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix(':') {
                            self.comments.push(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            if !frame.data.is_empty() {
                                frame.data.push('\n');
                            }
                            frame.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                    if !frame.data.is_empty() {
                        return Ok(frame);
                    }
                    continue;
                }
                match self.response.chunk().await? {
                    Some(chunk) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                    None => anyhow::bail!("the stream ended"),
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no frame within {wait:?}"))?
    }
}

/// A WebSocket to `path` with a bearer token over a TCP socket with a tiny receive
/// buffer, for tests of peers that stop reading: the server's writes stall after a few
/// kilobytes instead of filling megabytes of socket buffers first.
pub async fn stalling_socket(
    server: &TestServer,
    path: &str,
    token: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(server.addr()).await?;
    let mut request =
        format!("{}{path}", server.url().replace("http", "ws")).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::client_async(request, stream).await?.0)
}
