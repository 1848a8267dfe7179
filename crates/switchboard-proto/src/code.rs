//! The CCR v2 plane: the env-less code-session API and the worker API under
//! `/v1/code/sessions/{id}` (docs/PROTOCOL.md §9 and §10).
//!
//! Two details of these shapes matter more than they look:
//!
//! - the worker epoch is an integer that may arrive as a JSON number or as a decimal string
//!   (protojson renders int64 that way), and must be a safe integer (≤ 2^53 − 1) because
//!   the official client holds it in a JavaScript number; [`epoch`] reads both forms and
//!   always writes a number;
//! - `PUT /worker` patches carry explicit `null`s that mean something (`null`
//!   `requires_action_details` clears the details; a `null` metadata key deletes that key),
//!   so [`WorkerStateRequest`] keeps "absent" and "null" apart.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// The largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`). The
/// official client rejects epochs above it, so they must never be issued.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The SSE event name of the only frame a worker acts on (§9.8).
pub const CLIENT_EVENT: &str = "client_event";

/// Body of `POST /v1/code/sessions` (§10.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCodeSessionRequest {
    /// The session's title.
    #[serde(default)]
    pub title: String,
    /// The `bridge` oneof marker; always `{}`.
    #[serde(default)]
    pub bridge: BridgeMarker,
    /// Free-form tags, e.g. `["ccr-mirror"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// The empty object `{}` that marks a code session as bridge-backed. A braced struct
/// without fields serializes as `{}` (a unit struct would give `null`), and reading it
/// ignores whatever keys the object has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeMarker {}

/// Answer to `POST /v1/code/sessions`: `{"session":{"id":"cse_…",…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCodeSessionResponse {
    /// The new session.
    pub session: CodeSession,
}

/// A code session as the create call returns it. Only `id` is read by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeSession {
    /// The infrastructure id, `cse_<body>`; anything else is treated as a failure.
    pub id: String,
    /// The title, if the server echoes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Creation time, ISO 8601, if the server sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// Answer to `POST /v1/code/sessions/{id}/bridge` (§10.2): the worker's credential and the
/// epoch it writes with. Every call bumps the epoch, which supersedes the previous worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeCredentials {
    /// The bearer token of the `/worker/*` calls (opaque to the client, which only reads
    /// its `exp` if it is a JWT).
    pub worker_jwt: String,
    /// How long the token lives, in seconds.
    pub expires_in: u64,
    /// The base of the session URL (the client ignores it when its base URL is
    /// authoritative, as with `CLAUDE_BRIDGE_BASE_URL`).
    pub api_base_url: String,
    /// The epoch every write of this worker carries.
    #[serde(with = "epoch")]
    pub worker_epoch: u64,
}

/// Answer to `POST /v1/code/sessions/{id}/worker/register` (§9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterWorkerResponse {
    /// The new, bumped epoch.
    #[serde(with = "epoch")]
    pub worker_epoch: u64,
}

/// A worker's status as `PUT /worker` reports it (§9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Waiting for a prompt.
    Idle,
    /// Working on a turn.
    Running,
    /// Blocked on a permission prompt.
    RequiresAction,
}

impl WorkerStatus {
    /// The wire spelling, e.g. `requires_action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::RequiresAction => "requires_action",
        }
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `PUT /v1/code/sessions/{id}/worker` (§9.3): a patch of the worker's state.
///
/// Each field is absent unless set, and `requires_action_details` distinguishes an absent
/// key (`None`) from an explicit `null` (`Some(None)`), since the official client sends
/// `"requires_action_details":null` to clear the details. Metadata objects are RFC 7396
/// patches whose `null` values delete keys; `serde_json::Value` keeps those nulls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStateRequest {
    /// The epoch of the writing worker; a stale one is answered with 409.
    #[serde(with = "epoch")]
    pub worker_epoch: u64,
    /// The new status, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_status: Option<WorkerStatus>,
    /// `{tool_name, action_description, request_id, …}` while blocked on a permission
    /// prompt; `Some(None)` is an explicit `null` that clears it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub requires_action_details: Option<Option<Value>>,
    /// A merge patch of the session's external metadata (`pending_action`, `model`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_metadata: Option<Value>,
    /// A merge patch of the worker's internal metadata (e.g. `cumulative_cost_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_metadata: Option<Value>,
}

/// Reads a field that is present: `null` becomes `Some(None)`. With `#[serde(default)]`
/// an absent field stays `None`, which is how "absent" and "null" are told apart.
fn present<'de, D>(deserializer: D) -> Result<Option<Option<Value>>, D::Error>
where
    D: Deserializer<'de>,
{
    Option::<Value>::deserialize(deserializer).map(Some)
}

/// Answer to `GET /v1/code/sessions/{id}/worker`: `{"worker":{"external_metadata":…}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerResponse {
    /// The stored worker state.
    pub worker: WorkerInfo,
}

/// The `worker` object of [`WorkerResponse`]; other fields the server sends are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The merged external metadata, or `null` for a new session.
    #[serde(default)]
    pub external_metadata: Option<Value>,
    /// The merged internal metadata, if the server keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_metadata: Option<Value>,
}

/// Body of `POST /v1/code/sessions/{id}/worker/heartbeat` (§9.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The session id, as the last segment of the session URL.
    pub session_id: String,
    /// The epoch of the beating worker.
    #[serde(with = "epoch")]
    pub worker_epoch: u64,
}

/// Body of `POST /v1/code/sessions/{id}/worker/events` (§9.5).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerEventsRequest {
    /// The epoch of the writing worker.
    #[serde(with = "epoch")]
    pub worker_epoch: u64,
    /// The events, in order.
    pub events: Vec<WorkerEvent>,
}

/// One event of [`WorkerEventsRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvent {
    /// The SDK or control message, carrying a `uuid` (the idempotency key).
    pub payload: Value,
    /// `true` for `stream_event` payloads, which viewers need live but nobody needs
    /// stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
}

/// A delivery status of an inbound event (§9.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The worker has read the event off the stream.
    Received,
    /// The worker has started acting on a prompt.
    Processing,
    /// The worker has finished with a prompt.
    Processed,
}

/// Body of `POST /v1/code/sessions/{id}/worker/events/delivery` (§9.7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRequest {
    /// The epoch of the writing worker.
    #[serde(with = "epoch")]
    pub worker_epoch: u64,
    /// At most 64 updates.
    pub updates: Vec<DeliveryUpdate>,
}

/// One update of [`DeliveryRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeliveryUpdate {
    /// The stream event's `event_id`, or a prompt's payload `uuid`.
    pub event_id: String,
    /// What happened to it.
    pub status: DeliveryStatus,
}

/// Body of `POST /v1/code/sessions/{id}/worker/internal-events` (§9.6): transcript
/// entries viewers never see.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InternalEventsRequest {
    /// The epoch of the writing worker.
    #[serde(with = "epoch")]
    pub worker_epoch: u64,
    /// The entries, in order.
    pub events: Vec<InternalEvent>,
}

/// One entry of [`InternalEventsRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InternalEvent {
    /// The transcript entry, `{"type":…, …, "uuid":…}`.
    pub payload: Value,
    /// True for a compaction boundary, from which a resume starts reading.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_compaction: bool,
    /// The subagent that wrote it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// Answer to `GET /v1/code/sessions/{id}/worker/internal-events` (§9.6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InternalEventsPage {
    /// The entries of this page, oldest first.
    pub data: Vec<StoredInternalEvent>,
    /// The cursor of the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One entry of [`InternalEventsPage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInternalEvent {
    /// The server's id of the entry.
    pub event_id: String,
    /// The payload's `type`.
    pub event_type: String,
    /// The entry as written.
    pub payload: Value,
    /// Extra metadata, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_metadata: Option<Value>,
    /// True for a compaction boundary.
    #[serde(default)]
    pub is_compaction: bool,
    /// When it was stored, ISO 8601.
    pub created_at: String,
    /// The subagent that wrote it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// The `data:` of an SSE `client_event` frame on the worker stream (§9.8).
///
/// The client reads only `event_id` (to acknowledge) and `payload` (to forward); the
/// other fields default when absent so that a lenient server is still understood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamClientEvent {
    /// The id the worker acknowledges with a delivery update.
    pub event_id: String,
    /// The event's sequence number in the session (the frame's `id:` drives resume).
    #[serde(default, with = "epoch")]
    pub sequence_num: u64,
    /// The payload's `type`.
    #[serde(default)]
    pub event_type: String,
    /// Who wrote the event, e.g. `client`.
    #[serde(default)]
    pub source: String,
    /// The message for the worker; must be an object with a string `type`.
    pub payload: Value,
    /// When the event was stored, ISO 8601.
    #[serde(default)]
    pub created_at: String,
}

/// Serde support for integers that arrive as a JSON number or a decimal string and must be
/// safe integers (≤ [`MAX_SAFE_INTEGER`]): worker epochs and sequence numbers.
///
/// Use it as `#[serde(with = "switchboard_proto::code::epoch")]` on a `u64`. It writes a
/// plain JSON number. Negative numbers, fractions, strings that are not plain decimal
/// digits and values above 2^53 − 1 are rejected with a message saying which.
pub mod epoch {
    use super::*;

    /// Writes the value as a JSON number.
    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*value)
    }

    /// Reads a JSON number or a decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(EpochVisitor)
    }

    /// Parses an epoch given as text: ASCII digits only, at most [`MAX_SAFE_INTEGER`].
    pub fn parse(text: &str) -> Result<u64, String> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "expected a non-negative decimal integer, got {text:?}"
            ));
        }
        // Only digits remain, so the one way to fail is overflowing u64.
        let value: u64 = text
            .parse()
            .map_err(|_| format!("{text} is larger than 2^53 - 1"))?;
        check(value)
    }

    fn check(value: u64) -> Result<u64, String> {
        if value > MAX_SAFE_INTEGER {
            Err(format!("{value} is larger than 2^53 - 1"))
        } else {
            Ok(value)
        }
    }

    struct EpochVisitor;

    impl Visitor<'_> for EpochVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative safe integer, as a number or a decimal string")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            check(v).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("{v} is negative")))
                .and_then(|v| check(v).map_err(E::custom))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // A JavaScript sender cannot tell `3` from `3.0`, so an integral float is
            // accepted; anything else is not an epoch. The bound is checked on the float,
            // before the cast, because a cast saturates instead of failing.
            if v.fract() != 0.0 || !v.is_finite() || v < 0.0 {
                return Err(E::custom(format!("{v} is not a non-negative integer")));
            }
            if v > MAX_SAFE_INTEGER as f64 {
                return Err(E::custom(format!("{v} is larger than 2^53 - 1")));
            }
            Ok(v as u64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse(v).map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn epoch_of(body: Value) -> Result<u64, String> {
        serde_json::from_value::<RegisterWorkerResponse>(json!({ "worker_epoch": body }))
            .map(|r| r.worker_epoch)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn epochs_are_read_from_numbers_and_decimal_strings() {
        assert_eq!(epoch_of(json!(3)), Ok(3));
        assert_eq!(epoch_of(json!("42")), Ok(42));
        assert_eq!(epoch_of(json!(0)), Ok(0));
        assert_eq!(epoch_of(json!(7.0)), Ok(7));
        assert_eq!(epoch_of(json!(MAX_SAFE_INTEGER)), Ok(MAX_SAFE_INTEGER));
        assert_eq!(
            epoch_of(json!(MAX_SAFE_INTEGER.to_string())),
            Ok(MAX_SAFE_INTEGER)
        );
    }

    #[test]
    fn epochs_above_the_safe_range_are_rejected() {
        let too_big = MAX_SAFE_INTEGER + 1;
        for body in [
            json!(too_big),
            json!(too_big.to_string()),
            json!(u64::MAX),
            json!("99999999999999999999999"),
            json!(1e300),
        ] {
            let err = epoch_of(body.clone()).err();
            assert!(
                err.as_deref().is_some_and(|e| e.contains("2^53")),
                "{body}: {err:?}"
            );
        }
    }

    #[test]
    fn epochs_that_are_not_non_negative_integers_are_rejected() {
        for body in [
            json!(-1),
            json!(1.5),
            json!(""),
            json!(" 1"),
            json!("+1"),
            json!("-1"),
            json!("1e3"),
            json!("0x10"),
            json!(null),
            json!(true),
            json!([1]),
            json!({"n": 1}),
        ] {
            assert!(epoch_of(body.clone()).is_err(), "{body} must be rejected");
        }
    }

    #[test]
    fn epochs_are_written_as_numbers() -> Result<(), serde_json::Error> {
        let body = serde_json::to_value(HeartbeatRequest {
            session_id: "cse_abcd".into(),
            worker_epoch: 9,
        })?;
        assert_eq!(body, json!({"session_id": "cse_abcd", "worker_epoch": 9}));
        Ok(())
    }

    #[test]
    fn credentials_accept_a_string_epoch() -> Result<(), serde_json::Error> {
        let creds: BridgeCredentials = serde_json::from_value(json!({
            "worker_jwt": "j", "expires_in": 3600,
            "api_base_url": "http://h", "worker_epoch": "12"
        }))?;
        assert_eq!(creds.worker_epoch, 12);
        assert_eq!(creds.expires_in, 3600);
        Ok(())
    }

    #[test]
    fn create_requests_carry_an_empty_bridge_object() -> Result<(), serde_json::Error> {
        let plain = CreateCodeSessionRequest {
            title: "t".into(),
            ..Default::default()
        };
        let tagged = CreateCodeSessionRequest {
            title: "t".into(),
            bridge: BridgeMarker {},
            tags: Some(vec!["ccr-mirror".into()]),
        };
        assert_eq!(
            serde_json::to_value(plain)?,
            json!({"title": "t", "bridge": {}})
        );
        assert_eq!(
            serde_json::to_value(tagged)?,
            json!({"title": "t", "bridge": {}, "tags": ["ccr-mirror"]})
        );
        Ok(())
    }

    #[test]
    fn state_patches_keep_absent_and_null_apart() -> Result<(), serde_json::Error> {
        let clearing = WorkerStateRequest {
            worker_epoch: 3,
            worker_status: Some(WorkerStatus::Running),
            requires_action_details: Some(None),
            ..Default::default()
        };
        let metadata = WorkerStateRequest {
            worker_epoch: 3,
            external_metadata: Some(json!({"pending_action": null})),
            ..Default::default()
        };
        let clearing_json = json!({
            "worker_epoch": 3, "worker_status": "running", "requires_action_details": null
        });
        let metadata_json =
            json!({"worker_epoch": 3, "external_metadata": {"pending_action": null}});

        assert_eq!(serde_json::to_value(&clearing)?, clearing_json);
        assert_eq!(serde_json::to_value(&metadata)?, metadata_json);
        assert_eq!(
            serde_json::from_value::<WorkerStateRequest>(clearing_json)?,
            clearing
        );
        assert_eq!(
            serde_json::from_value::<WorkerStateRequest>(metadata_json)?,
            metadata
        );
        Ok(())
    }

    #[test]
    fn stream_events_tolerate_missing_informational_fields() -> Result<(), serde_json::Error> {
        let event: StreamClientEvent = serde_json::from_value(json!({
            "event_id": "e1", "sequence_num": "7", "payload": {"type": "user"}
        }))?;
        assert_eq!(event.sequence_num, 7);
        assert_eq!(event.source, "");
        Ok(())
    }

    #[test]
    fn optional_event_flags_are_left_out_when_unset() -> Result<(), serde_json::Error> {
        let events = WorkerEventsRequest {
            worker_epoch: 1,
            events: vec![
                WorkerEvent {
                    payload: json!({"type": "assistant"}),
                    ephemeral: None,
                },
                WorkerEvent {
                    payload: json!({"type": "stream_event"}),
                    ephemeral: Some(true),
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(events)?,
            json!({"worker_epoch": 1, "events": [
                {"payload": {"type": "assistant"}},
                {"payload": {"type": "stream_event"}, "ephemeral": true}
            ]})
        );
        Ok(())
    }
}
