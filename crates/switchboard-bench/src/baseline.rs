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
//! Paths: `/ch/{id}/worker` and `/ch/{id}/viewer`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::ws_config;

/// Events a channel holds for a slow viewer: Switchboard's default channel capacity.
const CHANNEL_CAPACITY: usize = 512;

/// One relay channel: the stand-in for a session.
struct Channel {
    viewers: broadcast::Sender<Utf8Bytes>,
    worker: Mutex<Option<mpsc::Sender<Utf8Bytes>>>,
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
    let mut path = String::new();
    // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
    else {
        return;
    };
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("ch"), Some(id), Some(role)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let channel = channels
        .lock()
        .expect("channel map poisoned")
        .entry(id.to_string())
        .or_insert_with(|| {
            Arc::new(Channel {
                viewers: broadcast::channel(CHANNEL_CAPACITY).0,
                worker: Mutex::new(None),
            })
        })
        .clone();
    match role {
        "worker" => worker(ws, channel).await,
        "viewer" => viewer(ws, channel).await,
        _ => {}
    }
}

async fn worker(ws: tokio_tungstenite::WebSocketStream<TcpStream>, channel: Arc<Channel>) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(CHANNEL_CAPACITY);
    *channel.worker.lock().expect("worker slot poisoned") = Some(tx);
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

async fn viewer(ws: tokio_tungstenite::WebSocketStream<TcpStream>, channel: Arc<Channel>) {
    let mut live = channel.viewers.subscribe();
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
                    let worker = channel.worker.lock().expect("worker slot poisoned").clone();
                    if let Some(worker) = worker {
                        let _ = worker.send(text).await;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
