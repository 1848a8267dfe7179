//! The SDK message stream carried by every transport (docs/PROTOCOL.md §12): helpers to read
//! the few fields the server routes on, and the validation of messages that a viewer
//! wants delivered to a worker.
//!
//! Payloads are kept as `serde_json::Value` and stored verbatim: the worker's messages
//! have many shapes and the server must forward unknown ones untouched.

use serde_json::{Map, Value};

/// The `type` of a message, if it is an object with a string `type`.
pub fn message_type(msg: &Value) -> Option<&str> {
    msg.get("type")?.as_str()
}

/// The message's `uuid`, the idempotency key everywhere (§12.6).
pub fn message_uuid(msg: &Value) -> Option<&str> {
    msg.get("uuid")?.as_str()
}

/// True for `{"type":"keep_alive"}`, which is dropped everywhere and never stored.
pub fn is_keep_alive(msg: &Value) -> bool {
    message_type(msg) == Some("keep_alive")
}

/// The `request_id` of a control request, response or cancel, wherever it sits.
pub fn control_request_id(msg: &Value) -> Option<&str> {
    match message_type(msg)? {
        "control_response" => {
            let response = msg.get("response")?;
            response
                .get("request_id")
                .or_else(|| response.get("requestId"))?
                .as_str()
        }
        "control_request" | "control_cancel_request" => msg
            .get("request_id")
            .or_else(|| msg.get("requestId"))?
            .as_str(),
        _ => None,
    }
}

/// Subtypes of `control_request` a viewer may send to a worker (§12.5.2).
pub const VIEWER_CONTROL_SUBTYPES: &[&str] = &[
    "interrupt",
    "set_model",
    "set_permission_mode",
    "set_max_thinking_tokens",
    "initialize",
    "end_session",
];

/// Permission modes a worker accepts in `set_permission_mode`.
pub const PERMISSION_MODES: &[&str] = &[
    "default",
    "acceptEdits",
    "bypassPermissions",
    "plan",
    "dontAsk",
    "auto",
];

/// Why a message cannot be delivered to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMessage(pub String);

impl std::fmt::Display for InvalidMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidMessage {}

fn invalid<T>(msg: impl Into<String>) -> Result<T, InvalidMessage> {
    Err(InvalidMessage(msg.into()))
}

/// Checks and normalizes a message that a viewer sends towards the worker.
///
/// A worker child exits on a `user` message without `message.role:"user"`, on empty
/// content, and treats a malformed permission answer as a deny; this function refuses
/// such messages with a reason instead of forwarding them. It fills in what the protocol
/// lets a server fill in: a `uuid` on prompts, `parent_tool_use_id: null`, a `request_id`
/// on control requests, `updatedInput: {}` on an allow, and it renames `requestId` to
/// `request_id`. `new_uuid` supplies fresh UUIDs.
pub fn normalize_inbound(
    msg: Value,
    new_uuid: &mut dyn FnMut() -> String,
) -> Result<Value, InvalidMessage> {
    let Value::Object(mut obj) = msg else {
        return invalid("each event must be a JSON object");
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return invalid("each event needs a string \"type\""),
    };
    match kind.as_str() {
        "user" => normalize_user(&mut obj, new_uuid)?,
        "control_request" => normalize_control_request(&mut obj, new_uuid)?,
        "control_response" => normalize_control_response(&mut obj)?,
        "control_cancel_request" => {
            rename_request_id(&mut obj);
            if !matches!(obj.get("request_id"), Some(Value::String(_))) {
                return invalid("control_cancel_request needs a string request_id");
            }
        }
        other => {
            return invalid(format!(
                "a viewer may send user, control_request, control_response or \
                 control_cancel_request events, not {other:?}"
            ))
        }
    }
    Ok(Value::Object(obj))
}

fn normalize_user(
    obj: &mut Map<String, Value>,
    new_uuid: &mut dyn FnMut() -> String,
) -> Result<(), InvalidMessage> {
    let Some(Value::Object(message)) = obj.get("message") else {
        return invalid("a user event needs a \"message\" object");
    };
    if message.get("role").and_then(Value::as_str) != Some("user") {
        return invalid("a user event needs message.role \"user\"");
    }
    match message.get("content") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(Value::Array(blocks)) if !blocks.is_empty() => {
            if blocks
                .iter()
                .any(|b| !matches!(b.get("type"), Some(Value::String(_))))
            {
                return invalid("every content block needs a string \"type\"");
            }
        }
        Some(Value::String(_)) | Some(Value::Array(_)) => {
            return invalid("message.content must not be empty")
        }
        _ => return invalid("message.content must be a string or an array of content blocks"),
    }
    match obj.get("uuid") {
        Some(Value::String(u)) if !u.is_empty() => {}
        None | Some(Value::Null) => {
            obj.insert("uuid".into(), Value::String(new_uuid()));
        }
        _ => return invalid("uuid must be a non-empty string"),
    }
    obj.entry("parent_tool_use_id").or_insert(Value::Null);
    Ok(())
}

fn rename_request_id(obj: &mut Map<String, Value>) {
    if let Some(v) = obj.remove("requestId") {
        obj.entry("request_id").or_insert(v);
    }
}

fn normalize_control_request(
    obj: &mut Map<String, Value>,
    new_uuid: &mut dyn FnMut() -> String,
) -> Result<(), InvalidMessage> {
    rename_request_id(obj);
    match obj.get("request_id") {
        Some(Value::String(id)) if !id.is_empty() => {}
        None | Some(Value::Null) => {
            obj.insert("request_id".into(), Value::String(new_uuid()));
        }
        _ => return invalid("request_id must be a non-empty string"),
    }
    let Some(Value::Object(request)) = obj.get("request") else {
        return invalid("a control_request needs a \"request\" object");
    };
    let Some(subtype) = request.get("subtype").and_then(Value::as_str) else {
        return invalid("request.subtype must be a string");
    };
    if !VIEWER_CONTROL_SUBTYPES.contains(&subtype) {
        return invalid(format!(
            "unsupported control request subtype {subtype:?}; a viewer may send {}",
            VIEWER_CONTROL_SUBTYPES.join(", ")
        ));
    }
    match subtype {
        "set_permission_mode" => {
            let mode = request.get("mode").and_then(Value::as_str);
            if !mode.is_some_and(|m| PERMISSION_MODES.contains(&m)) {
                return invalid(format!(
                    "set_permission_mode needs mode, one of {}",
                    PERMISSION_MODES.join(", ")
                ));
            }
        }
        "set_max_thinking_tokens" => match request.get("max_thinking_tokens") {
            Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {}
            _ => return invalid("max_thinking_tokens must be a non-negative integer or null"),
        },
        "set_model"
            if !matches!(
                request.get("model"),
                None | Some(Value::Null) | Some(Value::String(_))
            ) =>
        {
            return invalid("model must be a string");
        }
        _ => {}
    }
    Ok(())
}

fn normalize_control_response(obj: &mut Map<String, Value>) -> Result<(), InvalidMessage> {
    let Some(Value::Object(response)) = obj.get_mut("response") else {
        return invalid("a control_response needs a \"response\" object");
    };
    rename_request_id(response);
    if !matches!(response.get("request_id"), Some(Value::String(id)) if !id.is_empty()) {
        return invalid("response.request_id must be a non-empty string");
    }
    match response.get("subtype").and_then(Value::as_str) {
        Some("error") => {
            if !matches!(response.get("error"), Some(Value::String(_))) {
                return invalid("an error control_response needs an \"error\" string");
            }
        }
        Some("success") => {
            if let Some(Value::Object(inner)) = response.get_mut("response") {
                match inner.get("behavior").and_then(Value::as_str) {
                    Some("allow") => match inner.get("updatedInput") {
                        None | Some(Value::Null) => {
                            inner.insert("updatedInput".into(), Value::Object(Map::new()));
                        }
                        Some(Value::Object(_)) => {}
                        _ => return invalid("updatedInput must be an object"),
                    },
                    Some("deny") if !matches!(inner.get("message"), Some(Value::String(_))) => {
                        return invalid("a deny needs a \"message\" string");
                    }
                    Some("deny") => {}
                    Some(other) => {
                        return invalid(format!("behavior must be allow or deny, not {other:?}"))
                    }
                    None => {}
                }
            }
        }
        _ => return invalid("response.subtype must be \"success\" or \"error\""),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn norm(v: Value) -> Result<Value, InvalidMessage> {
        normalize_inbound(v, &mut || "generated".to_string())
    }

    #[test]
    fn prompts_get_a_uuid_and_bad_prompts_are_refused() {
        let ok = norm(json!({"type":"user","message":{"role":"user","content":"hi"}})).unwrap();
        assert_eq!(ok["uuid"], "generated");
        assert_eq!(ok["parent_tool_use_id"], Value::Null);
        for bad in [
            json!({"type":"user","message":{"role":"assistant","content":"hi"}}),
            json!({"type":"user","message":{"role":"user","content":""}}),
            json!({"type":"user","message":{"role":"user","content":[]}}),
            json!({"type":"user","message":{"role":"user"}}),
            json!({"type":"user","message":{"role":"user","content":"x"},"uuid":5}),
            json!({"type":"assistant","message":{}}),
            json!({"type":"update_environment_variables","variables":{}}),
            json!("text"),
            json!({"no":"type"}),
        ] {
            assert!(norm(bad.clone()).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn permission_answers_are_checked_and_completed() {
        let allow = norm(
            json!({"type":"control_response","response":{"subtype":"success",
            "requestId":"r1","response":{"behavior":"allow"}}}),
        )
        .unwrap();
        assert_eq!(allow["response"]["request_id"], "r1");
        assert_eq!(allow["response"]["response"]["updatedInput"], json!({}));
        assert!(norm(
            json!({"type":"control_response","response":{"subtype":"success",
            "request_id":"r1","response":{"behavior":"deny"}}})
        )
        .is_err());
        assert!(norm(
            json!({"type":"control_response","response":{"subtype":"maybe",
            "request_id":"r1"}})
        )
        .is_err());
    }

    #[test]
    fn control_requests_are_limited_to_viewer_subtypes() {
        let ok = norm(json!({"type":"control_request","request":{"subtype":"interrupt"}})).unwrap();
        assert_eq!(ok["request_id"], "generated");
        assert!(norm(
            json!({"type":"control_request","request":{"subtype":"set_permission_mode",
            "mode":"yolo"}})
        )
        .is_err());
        assert!(
            norm(json!({"type":"control_request","request":{"subtype":"mcp_message"}})).is_err()
        );
    }
}
