//! The messages the simulated clients exchange, and the send time stamped into each.
//!
//! Both ends of every hop live in the bench process, so a message carries the moment it
//! was sent as nanoseconds since one process-wide [`Instant`]: the receiver subtracts it
//! from its own reading of the same clock. Prompts (viewer → worker) carry `bench_in`,
//! assistant messages (worker → viewer) carry `bench_out`, so a viewer can tell its own
//! prompt, which Switchboard echoes to viewers, from the worker's output.

use std::sync::OnceLock;
use std::time::Instant;

/// The field a prompt's send time is stamped in, as it appears in serialized JSON.
pub(crate) const INBOUND_MARK: &str = "\"bench_in\":";
/// The field an assistant message's send time is stamped in.
pub(crate) const OUTBOUND_MARK: &str = "\"bench_out\":";

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench process first asked; monotonic.
pub(crate) fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The moment `ns` (on [`now_ns`]'s clock) as a timer deadline.
pub(crate) fn instant_at(ns: u64) -> tokio::time::Instant {
    let epoch = *EPOCH.get_or_init(Instant::now);
    tokio::time::Instant::from_std(epoch + std::time::Duration::from_nanos(ns))
}

/// Builds messages whose text is padded to a fixed size, so every system and scenario
/// moves the same bytes.
#[derive(Debug, Clone)]
pub(crate) struct Payloads {
    pad: String,
}

impl Payloads {
    /// Messages with `bytes` bytes of text each.
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            // Plain ASCII needs no JSON escaping, so the payload is built by formatting.
            pad: "x".repeat(bytes.max(1)),
        }
    }

    /// A user prompt as a viewer sends it, stamped with `sent_ns`.
    pub(crate) fn prompt(&self, sent_ns: u64) -> String {
        format!(
            "{{\"type\":\"user\",\"uuid\":\"{}\",\"session_id\":\"\",\"parent_tool_use_id\":null,\
             \"message\":{{\"role\":\"user\",\"content\":\"{}\"}},\"bench_in\":{sent_ns}}}",
            uuid::Uuid::new_v4(),
            self.pad
        )
    }

    /// An assistant message as a worker writes it, stamped with `sent_ns`.
    pub(crate) fn assistant(&self, sent_ns: u64) -> String {
        format!(
            "{{\"type\":\"assistant\",\"uuid\":\"{}\",\"session_id\":\"\",\"parent_tool_use_id\":null,\
             \"message\":{{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\
             \"content\":[{{\"type\":\"text\",\"text\":\"{}\"}}]}},\"bench_out\":{sent_ns}}}",
            uuid::Uuid::new_v4(),
            self.pad
        )
    }
}

/// The send time stamped after `mark` in a received frame, if the frame carries one.
///
/// Frames are searched as text rather than parsed: every transport wraps the message
/// differently (a `\n` after it, `sequence_num` spliced in, an SSE envelope around it),
/// and parsing each delivery would make the bench's own cost part of what it measures.
pub(crate) fn stamp(frame: &str, mark: &str) -> Option<u64> {
    let start = frame.find(mark)? + mark.len();
    let digits = frame[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    frame[start..start + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_reserialization() {
        let payloads = Payloads::new(16);
        let prompt = payloads.prompt(12345);
        let value: serde_json::Value = serde_json::from_str(&prompt).unwrap();
        // The server stores messages re-serialized, with keys in another order.
        let stored = value.to_string();
        assert_eq!(stamp(&stored, INBOUND_MARK), Some(12345));
        assert_eq!(stamp(&stored, OUTBOUND_MARK), None);
        let assistant: serde_json::Value = serde_json::from_str(&payloads.assistant(7)).unwrap();
        assert_eq!(stamp(&assistant.to_string(), OUTBOUND_MARK), Some(7));
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
