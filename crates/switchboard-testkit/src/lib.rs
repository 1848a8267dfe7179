//! Test doubles for Switchboard's end-to-end tests.
//!
//! - [`fake_anthropic`]: a loopback-only fake of the Anthropic Messages API, which the
//!   official Claude Code CLI talks to when `ANTHROPIC_BASE_URL` points at it; it can
//!   answer with text, with a tool call (so that a permission prompt happens) and with a
//!   reply that stalls (so that an interrupt can stop it). The `fake-anthropic` binary
//!   runs it on its own.
//! - [`fake_agent`]: a scripted agent that speaks the stream-json protocol on stdio, or,
//!   as a bridge child with `--sdk-url`, over the session transports itself. The
//!   `fake-agent` binary runs it.
//!
//! Nothing here is part of the product; the crate exists so that tests of the
//! `switchboard` binary can run these as separate processes.

#![forbid(unsafe_code)]

pub mod fake_agent;
pub mod fake_anthropic;
