//! Client side of the Claude Code Remote Control protocol, as Switchboard speaks it.
//!
//! This crate is what a program uses to talk to a Switchboard server (or any server that
//! speaks the same protocol) the way the official Claude Code CLI does; Switchboard's own
//! integration tests drive the server through it. It covers:
//!
//! - [`environments`]: the Environments API a bridge uses to register, poll for work,
//!   acknowledge, heartbeat, stop and deregister ([`BridgeApiClient`], docs/PROTOCOL.md §4);
//! - [`sessions`]: the Sessions compat API a viewer uses to create, read, rename, archive
//!   and post to sessions and page through their history ([`SessionsClient`], §6 and §13);
//! - [`ingress`]: the session-ingress v1 worker transport, a WebSocket for reading and
//!   HTTP POSTs for writing, with the official client's reconnect and retry behaviour
//!   ([`IngressTransport`], §8);
//! - [`viewer`]: the viewer WebSocket that watches a session live and sends prompts,
//!   permission answers and interrupts, reconnecting and resuming by sequence number
//!   ([`ViewerSocket`], §13.1);
//! - [`code`]: the env-less code-session API that creates a code session and fetches
//!   worker credentials for it ([`CodeSessionsClient`], §10);
//! - [`worker`]: the CCR v2 worker transport, an SSE stream for reading and serial HTTP
//!   uploaders for events, state, delivery and heartbeats ([`WorkerTransport`], §9);
//! - [`bridge`]: the env-less bridge that ties both together and refreshes its worker
//!   credentials by rebuilding the transport ([`EnvLessBridge`], §10.3 and §11.4);
//! - [`auth`]: bearer tokens that can be refreshed or rotated while a client runs
//!   ([`TokenSource`], §11);
//! - [`tls`]: the roots every client trusts for `https` and `wss` (the system's plus any
//!   private CA, [`ClientTls`]) and how a failed handshake is told apart.
//!
//! **Names.** The protocol says "bridge" for several things; here each has one name. A
//! *bridge* is a program that registers an environment and runs the sessions it is
//! given as work (`claude remote-control`, `switchboard bridge`). It speaks the
//! *Environments API* through [`BridgeApiClient`] (the official client's name; the
//! registration route is `POST /v1/environments/bridge`). The *env-less bridge*
//! ([`EnvLessBridge`]) runs one code session with no environment; its
//! `POST /v1/code/sessions/{id}/bridge` is the *worker credentials* call
//! ([`CodeSessionsClient::fetch_remote_credentials`]). What runs the session's turns is
//! the *agent* (or *child*), never the bridge.
//!
//! Every call returns [`ApiError`], which sorts failures the way the official client does:
//! fatal statuses, retryable ones, other statuses, transport failures and ids rejected
//! before anything was sent.
//!
//! Section numbers in the docs refer to the protocol reference, `docs/PROTOCOL.md`.

#![forbid(unsafe_code)]

pub mod auth;
mod backoff;
pub mod bridge;
pub mod code;
pub mod environments;
pub mod error;
mod http;
pub mod ingress;
pub mod notify;
pub mod sessions;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod viewer;
pub mod worker;

pub use auth::{RefreshFn, TokenSource};
pub use bridge::{BridgeConfig, BridgeEnd, BridgeState, EnvLessBridge};
pub use code::{CodeSessionsClient, RetryPolicy};
pub use environments::BridgeApiClient;
pub use error::{ApiError, Result};
pub use ingress::{IngressConfig, IngressTransport, IngressVersion, TransportState};
pub use sessions::{HistoryQuery, SessionsClient};
pub use tls::{ClientTls, TlsError, TlsFailure};
pub use viewer::{ViewerConfig, ViewerEvent, ViewerSocket};
pub use worker::{CloseReason, WorkerConfig, WorkerState, WorkerTimings, WorkerTransport};
