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
use serde_json::{Map, Value};

use crate::sessions::SessionResource;

/// The largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`). The
/// official client rejects epochs above it, so they must never be issued.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The SSE event name of the only frame a worker acts on (§9.8).
pub const CLIENT_EVENT: &str = "client_event";

/// Body of `POST /v1/code/sessions` (§10.1). Every field may be missing (the body too),
/// and unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCodeSessionRequest {
    /// The session's title; a missing or `null` title reads as empty (no title).
    #[serde(default, deserialize_with = "null_as_default")]
    pub title: String,
    /// The `bridge` oneof marker; always `{}`.
    #[serde(default)]
    pub bridge: BridgeMarker,
    /// Free-form tags, e.g. `["ccr-mirror"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// The empty object `{}` that marks a code session as bridge-backed. A braced struct
/// without fields serializes as `{}` (a unit struct would give `null`). Reading it accepts
/// any value: the marker carries no information a server acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BridgeMarker {}

impl<'de> Deserialize<'de> for BridgeMarker {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(deserializer).map(|_| BridgeMarker {})
    }
}

/// Reads a value whose `null` means the same as its absence: the type's default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Answer to `POST /v1/code/sessions`: `{"session":{"id":"cse_…",…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCodeSessionResponse {
    /// The new session.
    pub session: CodeSession,
}

/// A code session as the create call returns it. Only `id` is read by the client.
///
/// Switchboard answers with the whole session resource (§6.2), its `id` in the `cse_`
/// spelling; the fields this type does not name are kept in [`rest`](Self::rest), so a
/// session read and written again is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeSession {
    /// The infrastructure id, `cse_<body>`; anything else is treated as a failure.
    pub id: String,
    /// The title, if the session has one (`null` otherwise).
    #[serde(default)]
    pub title: Option<String>,
    /// Creation time, ISO 8601, if the server sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The other fields of the session resource, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl CodeSession {
    /// The code session `id` whose other fields are those of `resource` (§10.1: the
    /// session resource under its `cse_` id).
    pub fn from_resource(id: String, resource: &SessionResource) -> serde_json::Result<Self> {
        let mut rest = match serde_json::to_value(resource)? {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        rest.remove("id");
        rest.remove("title");
        rest.remove("created_at");
        Ok(Self {
            id,
            title: resource.title.clone(),
            created_at: Some(resource.created_at.clone()),
            rest,
        })
    }
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
    /// A merge patch of the session's external metadata (`pending_action`, `model`, …);
    /// an explicit `null` is kept as `Some(Value::Null)`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "keep_null"
    )]
    pub external_metadata: Option<Value>,
    /// A merge patch of the worker's internal metadata (e.g. `cumulative_cost_usd`); an
    /// explicit `null` is kept as `Some(Value::Null)`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "keep_null"
    )]
    pub internal_metadata: Option<Value>,
}

/// Reads a field that is present as `Some`, `null` included (`Some(Value::Null)`); with
/// `#[serde(default)]` an absent field stays `None`.
fn keep_null<'de, D>(deserializer: D) -> Result<Option<Value>, D::Error>
where
    D: Deserializer<'de>,
{
    Value::deserialize(deserializer).map(Some)
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

/// The `worker` object of [`WorkerResponse`]. The official client reads only
/// `external_metadata`; the other fields are what Switchboard adds (§9.3), all optional
/// when read, and other fields a server sends are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The merged external metadata, or `null` for a new session.
    #[serde(default)]
    pub external_metadata: Option<Value>,
    /// The merged internal metadata, if the server keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_metadata: Option<Value>,
    /// The session's status: `idle`, `running`, `requires_action` or `archived` (a
    /// string, since an archived session has a status no worker reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_status: Option<String>,
    /// The current worker epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "epoch::optional"
    )]
    pub worker_epoch: Option<u64>,
    /// What the worker waits on; `Some(None)` is an explicit `null` (it waits on nothing).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub requires_action_details: Option<Option<Value>>,
}

/// Body of `POST /v1/code/sessions/{id}/worker/heartbeat` (§9.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The session id, as the last segment of the session URL. A server reads the session
    /// from the URL, so a missing one reads as empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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

/// Query of `GET /v1/code/sessions/{id}/worker/internal-events` (§9.6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalEventsQuery {
    /// `true` to read the subagents' entries instead of the main transcript.
    #[serde(default)]
    pub subagents: bool,
    /// The `next_cursor` of the previous page; absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Answer to `GET /v1/code/sessions/{id}/worker/internal-events` (§9.6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InternalEventsPage {
    /// The entries of this page, oldest first.
    pub data: Vec<StoredInternalEvent>,
    /// The cursor of the next page; `null` (or absent) on the last one.
    #[serde(default)]
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
    /// The subagent that wrote it; `null` (or absent) for the main transcript.
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// Query of `GET /v1/code/sessions/{id}/worker/events/stream` (§9.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStreamQuery {
    /// Resume after this sequence number (also sent as `Last-Event-ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sequence_num: Option<u64>,
}

/// The answer `{}` to a worker's write (PUT, heartbeat, events, internal events,
/// delivery): only the status matters. Reading it ignores whatever keys it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {}

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

    /// The same rules for an `Option<u64>` field: `null` reads as `None`. Use it with
    /// `#[serde(default, skip_serializing_if = "Option::is_none", with = "…::optional")]`.
    pub mod optional {
        use super::*;

        /// Writes the value as a JSON number, `None` as `null`.
        pub fn serialize<S: Serializer>(
            value: &Option<u64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => serializer.serialize_u64(*value),
                None => serializer.serialize_none(),
            }
        }

        /// Reads `null`, a JSON number or a decimal string.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u64>, D::Error> {
            deserializer.deserialize_option(OptionalVisitor)
        }

        struct OptionalVisitor;

        impl<'de> Visitor<'de> for OptionalVisitor {
            type Value = Option<u64>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null or a non-negative safe integer")
            }

            fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Option<u64>, D::Error> {
                super::deserialize(deserializer).map(Some)
            }
        }
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
    fn create_requests_read_a_null_title_and_any_bridge_marker() -> Result<(), serde_json::Error> {
        let lenient: CreateCodeSessionRequest =
            serde_json::from_value(json!({"title": null, "bridge": "yes", "extra": 1}))?;
        let empty: CreateCodeSessionRequest = serde_json::from_value(json!({}))?;

        assert_eq!(lenient, CreateCodeSessionRequest::default());
        assert_eq!(empty, CreateCodeSessionRequest::default());
        Ok(())
    }

    #[test]
    fn a_code_session_keeps_the_resource_fields_it_does_not_name() -> Result<(), serde_json::Error>
    {
        let resource: SessionResource = serde_json::from_value(json!({
            "type": "session", "id": "session_abcd", "title": null, "session_status": "idle",
            "environment_id": null, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "session_context": {"tags": []}
        }))?;

        let session = CodeSession::from_resource("cse_abcd".into(), &resource)?;
        let written = serde_json::to_value(&session)?;

        assert_eq!(written["id"], "cse_abcd");
        assert_eq!(written["title"], Value::Null);
        assert_eq!(written["session_status"], "idle");
        assert_eq!(serde_json::from_value::<CodeSession>(written)?, session);
        // The client's minimal answer still reads.
        let minimal: CodeSession = serde_json::from_value(json!({"id": "cse_x"}))?;
        assert_eq!(minimal.title, None);
        Ok(())
    }

    #[test]
    fn worker_state_answers_round_trip_with_switchboards_extra_fields(
    ) -> Result<(), serde_json::Error> {
        let full = json!({"worker": {
            "external_metadata": {"model": "opus"}, "worker_status": "archived",
            "worker_epoch": 4, "requires_action_details": null
        }});
        let official = json!({"worker": {"external_metadata": {}}});

        let read: WorkerResponse = serde_json::from_value(full.clone())?;
        let minimal: WorkerResponse = serde_json::from_value(official.clone())?;

        assert_eq!(read.worker.worker_epoch, Some(4));
        assert_eq!(read.worker.requires_action_details, Some(None));
        assert_eq!(serde_json::to_value(&read)?, full);
        assert_eq!(serde_json::to_value(&minimal)?, official);
        let string_epoch: WorkerInfo = serde_json::from_value(json!({"worker_epoch": "5"}))?;
        assert_eq!(string_epoch.worker_epoch, Some(5));
        Ok(())
    }

    #[test]
    fn null_metadata_patches_and_missing_heartbeat_ids_round_trip() -> Result<(), serde_json::Error>
    {
        for body in [
            json!({"worker_epoch": 1, "external_metadata": null}),
            json!({"worker_epoch": 1, "internal_metadata": {"cumulative_cost_usd": 0.5}}),
        ] {
            let read: WorkerStateRequest = serde_json::from_value(body.clone())?;
            assert_eq!(serde_json::to_value(read)?, body);
        }
        let beat: HeartbeatRequest = serde_json::from_value(json!({"worker_epoch": 2}))?;
        assert_eq!(serde_json::to_value(beat)?, json!({"worker_epoch": 2}));
        Ok(())
    }

    #[test]
    fn internal_event_pages_write_nulls_for_missing_cursor_and_agent(
    ) -> Result<(), serde_json::Error> {
        let page = InternalEventsPage {
            data: vec![StoredInternalEvent {
                event_id: "int-1".into(),
                event_type: "user".into(),
                payload: json!({"type": "user"}),
                event_metadata: None,
                is_compaction: false,
                created_at: "t".into(),
                agent_id: None,
            }],
            next_cursor: None,
        };
        assert_eq!(
            serde_json::to_value(&page)?,
            json!({"data": [{"event_id": "int-1", "event_type": "user",
                "payload": {"type": "user"}, "is_compaction": false, "created_at": "t",
                "agent_id": null}], "next_cursor": null})
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
