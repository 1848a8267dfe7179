//! Wire types of the Claude Code Remote Control protocol, as Switchboard speaks it.
//!
//! This crate is the bottom of the dependency graph: the server, the client library and
//! the command line all agree on the shapes defined here. It depends on serde and little
//! else, and knows nothing about HTTP frameworks or databases.
//!
//! The protocol itself is described in `docs/PROTOCOL.md` at the root of the repository;
//! section numbers in the docs below refer to it.

#![forbid(unsafe_code)]

pub mod code;
pub mod environments;
pub mod error;
pub mod ids;
pub mod merge;
pub mod messages;
pub mod sessions;

pub use error::{ErrorBody, ErrorDetail};
pub use ids::{is_safe_id, SessionId};

/// Value of the `anthropic-version` header every client sends.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Value of the `anthropic-beta` header on Environments API calls.
pub const ENVIRONMENTS_BETA: &str = "environments-2025-11-01";

/// Value of the `anthropic-beta` header on Sessions API calls.
pub const SESSIONS_BETA: &str = "ccr-byoc-2025-07-29";
