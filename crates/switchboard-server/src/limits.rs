//! Per-field size caps on what clients send. The body limit alone would let one request
//! store a 900 KB title or thousands of events; these caps sit well above anything the
//! official client sends, and a request over one is refused whole (400 for a field, 413
//! for too many events), with the protocol's JSON error body.

use serde_json::Value;

use crate::error::ApiError;

/// A session's title, in bytes. Titles are one line the client derives from the first
/// prompt (a few dozen characters).
pub(crate) const MAX_TITLE_BYTES: usize = 1024;
/// Tags on a code session, and the bytes of each (the client sends one, `ccr-mirror`).
pub(crate) const MAX_TAGS: usize = 64;
/// See [`MAX_TAGS`].
pub(crate) const MAX_TAG_BYTES: usize = 256;
/// An environment's machine name, directory, branch and repository URL, in bytes: a
/// path may be as long as Linux's `PATH_MAX`.
pub(crate) const MAX_ENVIRONMENT_FIELD_BYTES: usize = 4096;
/// A JSON metadata object (an environment's `metadata`, a session's `session_context`),
/// serialized. The client's are a few hundred bytes.
pub(crate) const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Events (or delivery updates) in one POST. The v1 uploader sends at most 500 per
/// request, the v2 one at most 100 events or 64 delivery updates (docs/PROTOCOL.md §8.3,
/// §9.5, §9.7), and the REPL's history flush 200.
pub(crate) const MAX_EVENTS_PER_POST: usize = 2000;

/// Refuses a string field over `max` bytes.
pub(crate) fn check_len(what: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::BadRequest(format!(
            "{what} is {} bytes; at most {max} are accepted",
            value.len()
        )));
    }
    Ok(())
}

/// Refuses a JSON value that serializes to more than `max` bytes.
pub(crate) fn check_json_len(what: &str, value: &Value, max: usize) -> Result<(), ApiError> {
    check_len(what, &value.to_string(), max)
}

/// Refuses a POST carrying more than [`MAX_EVENTS_PER_POST`] items.
pub(crate) fn check_count(what: &str, count: usize) -> Result<(), ApiError> {
    if count > MAX_EVENTS_PER_POST {
        return Err(ApiError::TooLarge(format!(
            "{count} {what} in one request; send at most {MAX_EVENTS_PER_POST} at a time"
        )));
    }
    Ok(())
}
