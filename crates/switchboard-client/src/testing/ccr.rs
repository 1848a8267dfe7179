//! A routing fake server for the CCR v2 tests: every request is recorded and answered
//! from a per-route script (or a default), each connection is served concurrently, and
//! stream GETs that are answered 200 are handed to the test, which writes SSE bytes on
//! them at will.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{read_request, Recorded};

/// How long tests wait for something the code under test should do promptly.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

/// One canned answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) headers: Vec<(String, String)>,
    /// How long to wait before answering.
    pub(crate) delay: Duration,
}

impl Answer {
    /// An answer with a JSON (or empty) body.
    pub(crate) fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.to_owned(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// `200 {}`.
    pub(crate) fn ok() -> Self {
        Self::new(200, "{}")
    }

    /// This answer with an extra header.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// This answer, sent after `delay`.
    pub(crate) fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// An open SSE response the test writes to.
pub(crate) struct Stream {
    /// The stream GET as received.
    pub(crate) request: Recorded,
    socket: TcpStream,
}

impl Stream {
    /// Writes raw bytes of the event stream.
    pub(crate) async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.write_all(text.as_bytes()).await?;
        self.socket.flush().await?;
        Ok(())
    }

    /// Writes one `client_event` frame with `id: seq` carrying `payload`.
    pub(crate) async fn client_event(
        &mut self,
        seq: u64,
        event_id: &str,
        payload: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let data = serde_json::json!({
            "event_id": event_id, "sequence_num": seq,
            "event_type": payload.get("type").cloned().unwrap_or_default(),
            "source": "client", "payload": payload, "created_at": "2025-01-01T00:00:00Z"
        });
        self.send(&format!("event: client_event\nid: {seq}\ndata: {data}\n\n"))
            .await
    }
}

#[derive(Default)]
struct Routes {
    requests: Vec<Recorded>,
    /// Scripted answers by (method, path without query), used up in order.
    scripts: HashMap<(String, String), VecDeque<Answer>>,
}

/// A running routing fake.
pub(crate) struct CcrServer {
    pub(crate) base_url: String,
    routes: Arc<Mutex<Routes>>,
    streams: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
    task: tokio::task::JoinHandle<()>,
}

impl CcrServer {
    /// Starts a server that answers `200 {}` to everything not scripted, and keeps every
    /// stream GET open.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (streams_tx, streams_rx) = mpsc::channel(16);
        let shared = routes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let routes = shared.clone();
                let streams = streams_tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, routes, streams).await {
                        eprintln!("ccr fake: {e}");
                    }
                });
            }
        });
        Ok(Self {
            base_url,
            routes,
            streams: tokio::sync::Mutex::new(streams_rx),
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues answers for `method path` (path without query), used before the default.
    pub(crate) fn script(&self, method: &str, path: &str, answers: Vec<Answer>) {
        self.lock()
            .scripts
            .entry((method.to_owned(), path.to_owned()))
            .or_default()
            .extend(answers);
    }

    /// Drops the answers still scripted for `method path`.
    pub(crate) fn clear_script(&self, method: &str, path: &str) {
        self.lock()
            .scripts
            .remove(&(method.to_owned(), path.to_owned()));
    }

    /// Every request received so far, in order of arrival.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests to `method path` (path without query).
    pub(crate) fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && path_of(&r.target) == path)
            .collect()
    }

    /// Waits until `done` holds for the requests received so far.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> anyhow::Result<Vec<Recorded>> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return Ok(requests);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                requests
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.target, r.body))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `count` requests to `method path` arrived and returns them.
    pub(crate) async fn wait_for_count(
        &self,
        method: &str,
        path: &str,
        count: usize,
    ) -> anyhow::Result<Vec<Recorded>> {
        self.wait_for(&format!("{count} × {method} {path}"), |requests| {
            requests
                .iter()
                .filter(|r| r.method == method && path_of(&r.target) == path)
                .count()
                >= count
        })
        .await?;
        Ok(self.requests_to(method, path))
    }

    /// The next stream GET that was answered 200.
    pub(crate) async fn next_stream(&self) -> anyhow::Result<Stream> {
        tokio::time::timeout(PATIENCE, self.streams.lock().await.recv())
            .await
            .context("no stream connection in time")?
            .context("the fake server stopped")
    }
}

impl Drop for CcrServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The path of a request target, without its query.
pub(crate) fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

async fn serve(
    mut stream: TcpStream,
    routes: Arc<Mutex<Routes>>,
    streams: mpsc::Sender<Stream>,
) -> anyhow::Result<()> {
    let request = read_request(&mut stream).await?;
    let is_stream = request.method == "GET" && path_of(&request.target).ends_with("/events/stream");
    let answer = {
        let mut routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.requests.push(request.clone());
        let key = (request.method.clone(), path_of(&request.target).to_owned());
        routes.scripts.get_mut(&key).and_then(VecDeque::pop_front)
    };
    let answer = answer.unwrap_or_else(Answer::ok);
    tokio::time::sleep(answer.delay).await;
    let mut head = format!("HTTP/1.1 {} Scripted\r\n", answer.status);
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if is_stream && answer.status == 200 {
        // A close-delimited body: the stream lasts until the test drops it.
        head.push_str("content-type: text/event-stream\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.flush().await?;
        // A test that is not interested in the stream simply never takes it.
        let _ = streams
            .send(Stream {
                request,
                socket: stream,
            })
            .await;
        return Ok(());
    }
    head.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        answer.body.len(),
        answer.body
    ));
    stream.write_all(head.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
