//! Who may do what (issue 16): the [`Role`] an owner's credential carries, the
//! [`Capability`] each route and each message towards a worker needs, and the check.
//!
//! Roles are ordered (`viewer` < `approver` < `driver` < `admin`) and each capability
//! names the weakest role that has it, so the check is one comparison. Handlers call
//! [`Principal::require`] once, right after they authenticate; messages for a worker
//! (from `POST /v1/sessions/{id}/events` or the viewer socket) are checked one by one
//! with [`check_messages`] before anything is stored.
//!
//! Only owner credentials (API keys, web sessions) carry a role. A worker's credentials
//! (environment secret, ingress token, worker JWT) are scoped to their environment or
//! session by other checks (`authorize_session`, `require_owner`), and pass here.

use serde_json::Value;
use switchboard_proto::messages::{self, message_type};
pub(crate) use switchboard_store::Role;

use crate::auth::Principal;
use crate::error::ApiError;

/// What a route or a message lets its caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Capability {
    /// Read sessions, their logs and the owner's environments.
    Read,
    /// Answer permission requests and interrupt a turn.
    Approve,
    /// Send prompts, change model and mode, create, rename and archive sessions, run a
    /// worker.
    Drive,
    /// Manage keys, devices, pairing links, notification settings and the approval
    /// policy; read the audit log.
    Administer,
}

impl Capability {
    /// The weakest role that has this capability.
    pub(crate) fn min_role(self) -> Role {
        match self {
            Capability::Read => Role::Viewer,
            Capability::Approve => Role::Approver,
            Capability::Drive => Role::Driver,
            Capability::Administer => Role::Admin,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Capability::Read => "read sessions",
            Capability::Approve => "answer permission requests or interrupt",
            Capability::Drive => "send prompts or control sessions",
            Capability::Administer => "manage keys, devices, settings or policy",
        }
    }
}

/// The capability a message towards a worker needs: a prompt (or anything the server
/// does not know) drives the session; a permission answer or an interrupt only
/// approves; a `keep_alive` only reads.
pub(crate) fn required_for_message(message: &Value) -> Capability {
    match message_type(message) {
        Some("keep_alive") => Capability::Read,
        Some("control_response" | "control_cancel_request") => Capability::Approve,
        Some("control_request") => {
            let subtype = message
                .get("request")
                .and_then(|r| r.get("subtype"))
                .and_then(Value::as_str);
            if subtype == Some("interrupt") {
                Capability::Approve
            } else {
                Capability::Drive
            }
        }
        _ => Capability::Drive,
    }
}

/// What a message towards a worker is, for the audit log: `session.prompt`,
/// `permission.answer`, `session.interrupt`, `session.control`; `None` for a
/// `keep_alive`.
pub(crate) fn audit_action(message: &Value) -> Option<&'static str> {
    match message_type(message) {
        Some("keep_alive") => None,
        Some("user") => Some("session.prompt"),
        Some("control_response") if messages::control_request_id(message).is_some() => {
            Some("permission.answer")
        }
        Some("control_request") => Some(match required_for_message(message) {
            Capability::Approve => "session.interrupt",
            _ => "session.control",
        }),
        _ => Some("session.message"),
    }
}

/// Checks every message before any is stored: one the caller's role may not send
/// refuses the whole batch (403), with the message's index and the role it needs.
pub(crate) fn check_messages(principal: &Principal, messages: &[Value]) -> Result<(), ApiError> {
    for (i, message) in messages.iter().enumerate() {
        principal
            .require(required_for_message(message))
            .map_err(|e| match e {
                ApiError::Forbidden(m) => ApiError::Forbidden(format!("event {i}: {m}")),
                other => other,
            })?;
    }
    Ok(())
}

impl Principal {
    /// The role of an owner's credential; `None` for a worker's credentials.
    pub(crate) fn role(&self) -> Option<Role> {
        match self {
            Principal::Owner { role, .. } => Some(*role),
            _ => None,
        }
    }

    /// Refuses (403) an owner's credential whose role lacks `capability`; a worker's
    /// credentials pass (see the module doc).
    pub(crate) fn require(&self, capability: Capability) -> Result<(), ApiError> {
        match self.role() {
            Some(role) if role < capability.min_role() => Err(ApiError::Forbidden(format!(
                "this credential's role is {}; to {} it needs {} or above",
                role.as_str(),
                capability.describe(),
                capability.min_role().as_str()
            ))),
            _ => Ok(()),
        }
    }
}

/// Parses a role named in a request or on the command line (a clear 400 otherwise).
pub(crate) fn parse_role(raw: &str) -> Result<Role, ApiError> {
    Role::parse(raw.trim()).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown role {raw:?}: expected viewer, approver, driver or admin"
        ))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn owner(role: Role) -> Principal {
        Principal::Owner {
            owner_id: "o".into(),
            role,
            credential_id: "c".into(),
            client: Default::default(),
        }
    }

    #[test]
    fn each_message_needs_the_role_the_issue_names() {
        let cases = [
            (json!({"type": "keep_alive"}), Role::Viewer),
            (json!({"type": "user", "message": {}}), Role::Driver),
            (
                json!({"type": "control_response", "response": {"request_id": "r"}}),
                Role::Approver,
            ),
            (
                json!({"type": "control_request", "request": {"subtype": "interrupt"}}),
                Role::Approver,
            ),
            (
                json!({"type": "control_request", "request": {"subtype": "set_model"}}),
                Role::Driver,
            ),
            (
                json!({"type": "control_request",
                       "request": {"subtype": "set_permission_mode"}}),
                Role::Driver,
            ),
            (json!({"type": "something_new"}), Role::Driver),
        ];
        for (message, least) in cases {
            for role in Role::ALL {
                let allowed = check_messages(&owner(role), std::slice::from_ref(&message));
                assert_eq!(allowed.is_ok(), role >= least, "{role:?} sending {message}");
            }
        }
    }

    #[test]
    fn worker_credentials_pass_the_role_check() {
        let worker = Principal::Ingress {
            owner_id: "o".into(),
            session_id: "s".into(),
            work_id: None,
        };
        assert!(worker.require(Capability::Administer).is_ok());
        assert!(owner(Role::Driver).require(Capability::Administer).is_err());
        assert!(owner(Role::Admin).require(Capability::Administer).is_ok());
    }
}
