//! The bare WebSocket relay every Switchboard figure is compared with.
//!
//! It does what Switchboard's hot path does minus storage, auth and protocol rules: per
//! channel one worker socket and any number of viewer sockets; a text frame from the
//! worker goes to every viewer (through a broadcast channel of the same capacity as the
//! server's, batching what is already waiting into one flush, as the server does), and a
//! frame from a viewer goes to the worker. It runs on the same machine in the same run,
//! driven by the same client code with the same messages, so the ratio of a Switchboard
//! figure to the relay's says what Switchboard adds, and can be compared across machines.
//!
//! Paths: `/ch/{id}/worker` and `/ch/{id}/viewer` (WebSockets). The relay also takes
//! the writes as Switchboard's HTTP POSTs, on connections that start with `POST`: an
//! `{"events":[…]}` body to `/v1/session_ingress/session/{id}/events` (the worker's
//! output) goes to channel `id`'s viewers, one frame per event, and one to
//! `/v1/sessions/{id}/events` (prompts) to its worker. Those connections are served by
//! hyper's HTTP/1.1 server, as Switchboard's are; the answer is `{}` once the events are
//! handed on. Nothing is stored and no credential is checked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::ws_config;
use crate::post::read_body;

/// The largest POST body the relay reads (Switchboard's default limit).
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Events a channel holds for a slow viewer: Switchboard's default channel capacity.
const CHANNEL_CAPACITY: usize = 512;

/// One relay channel: the stand-in for a session.
struct Channel {
    viewers: broadcast::Sender<Utf8Bytes>,
    /// Prompts for the worker; they wait here until a worker connects (as Switchboard
    /// keeps them in the log), so one sent right after the worker's handshake, before its
    /// task took the receiver, is not dropped.
    worker: mpsc::Sender<Utf8Bytes>,
    /// Taken by the worker connection.
    worker_inbox: Mutex<Option<mpsc::Receiver<Utf8Bytes>>>,
}

type Channels = Arc<Mutex<HashMap<String, Arc<Channel>>>>;

/// Accepts connections until the task is dropped.
pub(crate) async fn serve(listener: TcpListener) {
    let channels: Channels = Arc::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, channels.clone()));
            }
            // Out of descriptors, most likely: wait for some to close, as hyper does.
            Err(e) => {
                eprintln!("baseline relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, channels: Channels) {
    let _ = stream.set_nodelay(true);
    let mut head = [0u8; 4];
    if matches!(stream.peek(&mut head).await, Ok(4)) && &head == b"POST" {
        return serve_posts(stream, channels).await;
    }
    // The route is resolved, and a viewer subscribed, before the handshake's answer goes
    // out: a client may send the moment it has the answer, and a frame broadcast before
    // the viewer subscribed would never reach it.
    let mut route = None;
    // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        let mut parts = req.uri().path().trim_start_matches('/').split('/');
        if let (Some("ch"), Some(id), Some(role)) = (parts.next(), parts.next(), parts.next()) {
            let channel = channel(&channels, id);
            let live = (role == "viewer").then(|| channel.viewers.subscribe());
            route = Some((role == "worker", channel, live));
        }
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
    else {
        return;
    };
    match route {
        Some((true, channel, _)) => worker(ws, channel).await,
        Some((false, channel, Some(live))) => viewer(ws, channel, live).await,
        _ => {}
    }
}

fn channel(channels: &Channels, id: &str) -> Arc<Channel> {
    channels
        .lock()
        .expect("channel map poisoned")
        .entry(id.to_string())
        .or_insert_with(|| {
            let (worker, inbox) = mpsc::channel(CHANNEL_CAPACITY);
            Arc::new(Channel {
                viewers: broadcast::channel(CHANNEL_CAPACITY).0,
                worker,
                worker_inbox: Mutex::new(Some(inbox)),
            })
        })
        .clone()
}

/// A keep-alive connection of event POSTs.
async fn serve_posts(stream: TcpStream, channels: Channels) {
    let service = hyper::service::service_fn(move |request| {
        let channels = channels.clone();
        async move { Ok::<_, Infallible>(post(request, &channels).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// The body of an event POST: the events, each kept as the text it arrived as.
#[derive(serde::Deserialize)]
struct Events<'a> {
    #[serde(borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
}

async fn post(
    request: http::Request<hyper::body::Incoming>,
    channels: &Channels,
) -> http::Response<String> {
    let answer = |status: http::StatusCode, body: &str| {
        let mut response = http::Response::new(body.to_string());
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    };
    let path = request.uri().path().to_string();
    let (id, to_worker) = if let Some(id) = path
        .strip_prefix("/v1/session_ingress/session/")
        .and_then(|rest| rest.strip_suffix("/events"))
    {
        (id, false)
    } else if let Some(id) = path
        .strip_prefix("/v1/sessions/")
        .and_then(|rest| rest.strip_suffix("/events"))
    {
        (id, true)
    } else {
        return answer(http::StatusCode::NOT_FOUND, "{}");
    };
    if request.method() != http::Method::POST {
        return answer(http::StatusCode::METHOD_NOT_ALLOWED, "{}");
    }
    let Ok(body) = read_body(request.into_body(), MAX_BODY_BYTES).await else {
        return answer(http::StatusCode::BAD_REQUEST, "{}");
    };
    let Ok(events) = serde_json::from_slice::<Events<'_>>(&body) else {
        return answer(http::StatusCode::BAD_REQUEST, "{}");
    };
    let channel = channel(channels, id);
    if to_worker {
        for event in events.events {
            let _ = channel
                .worker
                .send(Utf8Bytes::from(event.get().to_owned()))
                .await;
        }
    } else {
        for event in events.events {
            // No viewer is not an error for a relay.
            let _ = channel
                .viewers
                .send(Utf8Bytes::from(event.get().to_owned()));
        }
    }
    answer(http::StatusCode::OK, "{}")
}

async fn worker(ws: tokio_tungstenite::WebSocketStream<TcpStream>, channel: Arc<Channel>) {
    // One worker per channel: a second one gets nothing.
    let Some(mut rx) = channel
        .worker_inbox
        .lock()
        .expect("worker inbox poisoned")
        .take()
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    // No viewer is not an error for a relay.
                    let _ = channel.viewers.send(text);
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            inbound = rx.recv() => match inbound {
                Some(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

async fn viewer(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    channel: Arc<Channel>,
    mut live: broadcast::Receiver<Utf8Bytes>,
) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            event = live.recv() => match event {
                Ok(text) => {
                    let mut next = Some(text);
                    while let Some(text) = next.take() {
                        if sink.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                        match live.try_recv() {
                            Ok(more) => next = Some(more),
                            Err(TryRecvError::Lagged(_)) => return,
                            Err(_) => {}
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_) | RecvError::Closed) => return,
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let _ = channel.worker.send(text).await;
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
