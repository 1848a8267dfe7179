//! Low-level clients: WebSocket connections with small buffers, the HTTP client, and a
//! minimal Server-Sent Events reader. Everything connects over loopback only.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over plain TCP.
pub(crate) type Ws = WebSocketStream<TcpStream>;
/// The write half of a [`Ws`].
pub(crate) type WsSink = futures_util::stream::SplitSink<Ws, Message>;
/// The read half of a [`Ws`].
pub(crate) type WsStream = futures_util::stream::SplitStream<Ws>;

/// How long a connection or request may take before the bench gives up on it.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// WebSocket settings for every socket the bench opens or accepts: 8 KiB buffers, as the
/// server uses, since tungstenite's 128 KiB default would make 20,000 sockets cost
/// gigabytes.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(16 * 1024 * 1024))
}

/// Refuses anything but a loopback address: the bench's load must stay on this machine.
pub(crate) fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("invalid URL {url:?}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "{url} is not a loopback address; the bench only drives servers on this machine"
    );
    Ok(())
}

/// Opens a WebSocket to `url` (`ws://127.0.0.1:PORT/…`), with a bearer token if given.
pub(crate) async fn connect_ws(url: &str, bearer: Option<&str>) -> anyhow::Result<Ws> {
    let mut request = url
        .into_client_request()
        .with_context(|| format!("invalid WebSocket URL {url}"))?;
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("token is not a valid header value")?,
        );
    }
    let host = request.uri().host().context("URL has no host")?.to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let connect = async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("failed to connect to {host}:{port}"))?;
        stream.set_nodelay(true)?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
                .await
                .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(IO_TIMEOUT, connect)
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
}

/// The next text frame of a WebSocket; `None` once it closed.
pub(crate) async fn next_text<S>(stream: &mut S) -> anyhow::Result<Option<String>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Some(text.as_str().to_owned())),
            Some(Ok(Message::Close(frame))) => {
                if let Some(frame) = frame {
                    anyhow::bail!("closed by the server: {} {}", frame.code, frame.reason);
                }
                return Ok(None);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("WebSocket failed"),
            None => return Ok(None),
        }
    }
}

/// The HTTP client of the simulated workers and of setup: keep-alive, no proxy (the
/// target is on loopback), Nagle off.
pub(crate) fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        // Setup runs a few dozen requests at once and the workers' POSTs are bounded
        // (`--post-connections`); idle connections beyond that only hold descriptors.
        .pool_max_idle_per_host(128)
        .timeout(IO_TIMEOUT)
        .build()
        .context("failed to build the HTTP client")
}

/// A Server-Sent Events stream, read frame by frame.
pub(crate) struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// Opens `url` with a bearer token.
    pub(crate) async fn open(
        client: &reqwest::Client,
        url: &str,
        bearer: &str,
    ) -> anyhow::Result<Self> {
        let response = tokio::time::timeout(
            IO_TIMEOUT,
            client
                .get(url)
                .bearer_auth(bearer)
                .header("accept", "text/event-stream")
                // The stream lasts as long as the scenario, past the client's request
                // timeout; scenarios are bounded by their own deadlines.
                .timeout(Duration::from_secs(24 * 60 * 60))
                .send(),
        )
        .await
        .context("opening the event stream timed out")?
        .context("failed to open the event stream")?;
        anyhow::ensure!(
            response.status().is_success(),
            "event stream refused: {}",
            response.status()
        );
        Ok(Self {
            response,
            buffer: String::new(),
        })
    }

    /// The next frame (the raw `field: value` lines of one event); `None` at the end.
    pub(crate) async fn next_frame(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                return Ok(Some(frame));
            }
            match self.response.chunk().await.context("event stream failed")? {
                Some(chunk) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(check_loopback("http://127.0.0.1:8787").is_ok());
        assert!(check_loopback("http://localhost:1").is_ok());
        assert!(check_loopback("http://[::1]:1").is_ok());
        assert!(check_loopback("http://10.0.0.1:8787").is_err());
        assert!(check_loopback("http://example.invalid").is_err());
    }
}
