//! Event POSTs: the JSON body every write path shares, and one keep-alive HTTP/1.1
//! connection of a simulated client's own (as a real worker process has), used in place
//! of the shared `reqwest` pool when `--worker-connections own` asks for it.

use std::pin::Pin;

use anyhow::Context as _;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Uri};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::client::IO_TIMEOUT;

/// The largest answer body read back (the server's answers to event POSTs are tiny).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `{"events":[…]}` (v1, prompts), or `{"worker_epoch":N,"events":[{"payload":…},…]}`
/// (v2), around messages that are already serialized.
pub(crate) fn events_body(messages: &[String], epoch: Option<u64>) -> String {
    let mut body = String::with_capacity(messages.iter().map(|m| m.len() + 16).sum::<usize>() + 48);
    match epoch {
        None => {
            body.push_str("{\"events\":[");
            for (i, message) in messages.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(message);
            }
        }
        Some(epoch) => {
            body.push_str("{\"worker_epoch\":");
            body.push_str(&epoch.to_string());
            body.push_str(",\"events\":[");
            for (i, message) in messages.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str("{\"payload\":");
                body.push_str(message);
                body.push('}');
            }
        }
    }
    body.push_str("]}");
    body
}

/// Reads a body to its end; returns its bytes. Fails past `limit` bytes.
pub(crate) async fn read_body<B>(mut body: B, limit: usize) -> anyhow::Result<Vec<u8>>
where
    B: http_body::Body<Data = hyper::body::Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame.context("body failed")?.into_data() {
            anyhow::ensure!(out.len() + data.len() <= limit, "body over {limit} bytes");
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// One keep-alive connection that POSTs events to one URL with one bearer token. The
/// request line and headers are made once; each write builds only its body. Reconnects
/// if the server closed the connection between writes.
pub(crate) struct OwnPost {
    sender: SendRequest<String>,
    addr: (String, u16),
    uri: Uri,
    host: HeaderValue,
    auth: HeaderValue,
    epoch: Option<u64>,
}

impl OwnPost {
    /// Connects to `url`'s host; writes go to `url`'s path with `token`, wrapped for v2
    /// when `epoch` is given.
    pub(crate) async fn connect(
        url: &str,
        token: &str,
        epoch: Option<u64>,
    ) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("invalid URL {url}"))?;
        let host = parsed.host_str().context("URL has no host")?.to_string();
        let port = parsed.port_or_known_default().context("URL has no port")?;
        let addr = (host, port);
        Ok(Self {
            sender: handshake(&addr).await?,
            uri: parsed.path().parse().context("invalid path")?,
            host: format!("{}:{}", addr.0, addr.1)
                .parse()
                .context("invalid host")?,
            auth: format!("Bearer {token}")
                .parse()
                .context("token is not a valid header value")?,
            addr,
            epoch,
        })
    }

    /// POSTs messages as one request; returns once the server answered 2xx.
    pub(crate) async fn send(&mut self, messages: &[String]) -> anyhow::Result<()> {
        let body = events_body(messages, self.epoch);
        tokio::time::timeout(IO_TIMEOUT, self.post(body))
            .await
            .context("the POST timed out")?
    }

    async fn post(&mut self, body: String) -> anyhow::Result<()> {
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.sender = handshake(&self.addr).await?;
        }
        let request = Request::post(self.uri.clone())
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .context("invalid request")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("worker write failed")?;
        let status = response.status();
        let answer = read_body(response.into_body(), MAX_ANSWER_BYTES).await?;
        anyhow::ensure!(
            status.is_success(),
            "write refused: {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(())
    }
}

async fn handshake(addr: &(String, u16)) -> anyhow::Result<SendRequest<String>> {
    let connect = async {
        let stream = TcpStream::connect((addr.0.as_str(), addr.1))
            .await
            .with_context(|| format!("failed to connect to {}:{}", addr.0, addr.1))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        // Drives the connection until the sender is dropped or the server closes it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        anyhow::Ok(sender)
    };
    tokio::time::timeout(IO_TIMEOUT, connect)
        .await
        .context("connecting timed out")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_wrap_messages_per_transport() {
        let messages = vec!["{\"a\":1}".to_string(), "{\"b\":2}".to_string()];
        assert_eq!(
            events_body(&messages, None),
            "{\"events\":[{\"a\":1},{\"b\":2}]}"
        );
        let v2: serde_json::Value =
            serde_json::from_str(&events_body(&messages[..1], Some(7))).unwrap();
        assert_eq!(v2["worker_epoch"], 7);
        assert_eq!(v2["events"][0]["payload"]["a"], 1);
    }
}
