//! The Environments API: register, poll for work, ack, heartbeat, stop, reconnect
//! (docs/PROTOCOL.md §4–§5).

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Body of `POST /v1/environments/bridge`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterEnvironmentRequest {
    /// The machine's host name.
    #[serde(default)]
    pub machine_name: String,
    /// The absolute working directory of the bridge.
    #[serde(default)]
    pub directory: String,
    /// The current git branch, possibly empty.
    #[serde(default)]
    pub branch: String,
    /// The git remote URL, if any.
    #[serde(default)]
    pub git_repo_url: Option<String>,
    /// How many sessions this environment runs at once.
    #[serde(default = "one")]
    pub max_sessions: u32,
    /// Opaque metadata, e.g. `{"worker_type":"claude_code"}`.
    #[serde(default)]
    pub metadata: Value,
    /// Present when the client re-attaches to an environment it registered before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
}

fn one() -> u32 {
    1
}

/// Answer to a register call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterEnvironmentResponse {
    /// The environment's id; the same one the client sent when it could be re-attached.
    pub environment_id: String,
    /// The credential that polls this environment, and nothing else.
    pub environment_secret: String,
    /// Switchboard's addition: the server's public base URL (its `--public-url`), for the
    /// links a bridge prints. The official client ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
}

/// A work item as `GET …/work/poll` returns it (§5.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkResponse {
    /// The work item's id, used in ack/heartbeat/stop paths.
    pub id: String,
    /// Always `"work"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The environment the work was queued for.
    pub environment_id: String,
    /// The work item's state (informational).
    pub state: String,
    /// What to work on.
    pub data: WorkData,
    /// The base64url JSON [`WorkSecret`].
    pub secret: String,
    /// When the work item was created, ISO 8601.
    pub created_at: String,
}

/// `data` of a work item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkData {
    /// `"session"` or `"healthcheck"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The session id (`cse_…`).
    pub id: String,
}

/// The work secret, carried base64url-encoded in [`WorkResponse::secret`] (§5.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkSecret {
    /// Always 1.
    pub version: u32,
    /// The per-session worker credential.
    pub session_ingress_token: String,
    /// The server's public base URL.
    pub api_base_url: String,
    /// Always empty here (container runner field).
    #[serde(default)]
    pub sources: Vec<Value>,
    /// Always empty here (container runner field).
    #[serde(default)]
    pub auth: Vec<Value>,
    /// True when the session is served over the CCR v2 plane.
    #[serde(default)]
    pub use_code_sessions: bool,
}

/// Why a work secret could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretError(pub String);

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid work secret: {}", self.0)
    }
}

impl std::error::Error for SecretError {}

impl WorkSecret {
    /// Encodes the secret as base64url JSON without padding.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a work secret always serializes"))
    }

    /// Decodes a secret the way the client does: base64url (padding and standard base64
    /// tolerated), then JSON with `version == 1` and a non-empty ingress token.
    pub fn decode(s: &str) -> Result<Self, SecretError> {
        let trimmed = s.trim_end_matches('=');
        let bytes = URL_SAFE_NO_PAD
            .decode(trimmed)
            .or_else(|_| URL_SAFE.decode(s))
            .or_else(|_| STANDARD.decode(s))
            .map_err(|e| SecretError(format!("not base64: {e}")))?;
        let secret: WorkSecret =
            serde_json::from_slice(&bytes).map_err(|e| SecretError(format!("not JSON: {e}")))?;
        if secret.version != 1 {
            return Err(SecretError(format!(
                "unsupported version {}",
                secret.version
            )));
        }
        if secret.session_ingress_token.is_empty() {
            return Err(SecretError("empty session_ingress_token".into()));
        }
        Ok(secret)
    }
}

/// Body of `POST …/work/{id}/stop`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopWorkRequest {
    /// True when the worker is being shut down while still running.
    #[serde(default)]
    pub force: bool,
}

/// Answer to `POST …/work/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Whether the lease was extended.
    pub lease_extended: bool,
    /// The work item's state after the heartbeat.
    pub state: String,
    /// When the heartbeat was recorded, ISO 8601.
    pub last_heartbeat: String,
    /// How long the lease lasts from now.
    pub ttl_seconds: u64,
}

/// Body of `POST /v1/environments/{id}/bridge/reconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconnectRequest {
    /// The session to re-queue, in either costume.
    pub session_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_secret_round_trips_and_rejects_bad_versions() {
        let secret = WorkSecret {
            version: 1,
            session_ingress_token: "sbi_x".into(),
            api_base_url: "http://127.0.0.1:8787".into(),
            sources: vec![],
            auth: vec![],
            use_code_sessions: true,
        };
        let encoded = secret.encode();
        assert!(!encoded.contains('='));
        assert_eq!(WorkSecret::decode(&encoded).unwrap(), secret);

        let v2 = URL_SAFE_NO_PAD
            .encode(br#"{"version":2,"session_ingress_token":"t","api_base_url":""}"#);
        assert!(WorkSecret::decode(&v2).is_err());
        let empty = URL_SAFE_NO_PAD
            .encode(br#"{"version":1,"session_ingress_token":"","api_base_url":""}"#);
        assert!(WorkSecret::decode(&empty).is_err());
        assert!(WorkSecret::decode("%%%").is_err());
    }
}
