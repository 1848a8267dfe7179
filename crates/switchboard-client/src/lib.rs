//! Client side of the Claude Code Remote Control protocol, as Switchboard speaks it.
//!
//! This crate is what a program uses to talk to a Switchboard server (or any server that
//! speaks the same protocol) the way the official Claude Code CLI does; Switchboard's own
//! integration tests drive the server through it. It covers:
//!
//! - [`environments`]: the Environments API a bridge uses to register, poll for work,
//!   acknowledge, heartbeat, stop and deregister ([`BridgeApiClient`], PROTOCOL.md §4);
//! - [`sessions`]: the Sessions compat API a viewer uses to create, read, rename, archive
//!   and post to sessions and page through their history ([`SessionsClient`], §6 and §13);
//! - [`ingress`]: the session-ingress v1 worker transport, a WebSocket for reading and
//!   HTTP POSTs for writing, with the official client's reconnect and retry behaviour
//!   ([`IngressTransport`], §8);
//! - [`auth`]: bearer tokens that can be refreshed or rotated while a client runs
//!   ([`TokenSource`], §11).
//!
//! Every call returns [`ApiError`], which sorts failures the way the official client does:
//! fatal statuses, retryable ones, other statuses, transport failures and ids rejected
//! before anything was sent.
//!
//! Section numbers in the docs refer to the protocol reference, `PROTOCOL.md`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod environments;
pub mod error;
mod http;
pub mod ingress;
pub mod sessions;
#[cfg(test)]
mod testing;

pub use auth::{RefreshFn, TokenSource};
pub use environments::BridgeApiClient;
pub use error::{ApiError, Result};
pub use ingress::{IngressConfig, IngressTransport, IngressVersion, TransportState};
pub use sessions::{HistoryQuery, SessionsClient};
