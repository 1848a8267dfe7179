//! Who may do what (issue 16), as `AppState` operations: devices' last use, keys and
//! devices managed over the API (revoking one closes its connections at once), the
//! approval policy answering workers' permission requests, and the audit log of what
//! people send to sessions.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use switchboard_proto::messages;
use switchboard_proto::sessions::SessionResource;
use switchboard_store::{Decision, Direction, Millis, NewEvent, Role, Session, StoreError};

use super::AppState;
use crate::admin::{self, Actor};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::log::Accepted;
use crate::policy;
use crate::time::now_ms;

/// How often a credential's last use is written at most: a browser polling every second
/// must not turn every read into a write.
const TOUCH_EVERY_MS: Millis = 60_000;
/// How many credentials' last writes are remembered before the memory starts over.
const TOUCHED_CAP: usize = 10_000;
/// The longest user agent kept.
const MAX_USER_AGENT: usize = 256;
/// The most sessions `GET /v1/shared_sessions` lists.
const MAX_SHARED_LISTED: usize = 200;
/// The longest prompt excerpt the audit log keeps.
const PROMPT_EXCERPT: usize = 200;

/// The server's memory for this module.
#[derive(Default)]
pub(crate) struct AccessState {
    /// When each credential's last use was last written.
    touched: Mutex<HashMap<String, Millis>>,
}

/// A device's name from its user agent: "Firefox on Android", "curl", or "browser".
pub(crate) fn device_name(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent.filter(|ua| !ua.trim().is_empty()) else {
        return "browser".into();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
    ]
    .into_iter()
    .find(|(marker, _)| ua.contains(marker))
    .map(|(_, name)| name.to_string());
    let os = [
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Android", "Android"),
        ("CrOS", "ChromeOS"),
        ("Macintosh", "macOS"),
        ("Windows", "Windows"),
        ("Linux", "Linux"),
    ]
    .into_iter()
    .find(|(marker, _)| ua.contains(marker))
    .map(|(_, name)| name);
    match (browser, os) {
        (Some(b), Some(os)) => format!("{b} on {os}"),
        (Some(b), None) => b,
        (None, _) => ua
            .split(['/', ' '])
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("browser")
            .chars()
            .take(40)
            .collect(),
    }
}

impl AppState {
    /// Notes where an owner's request came from (for the audit log) and records the
    /// credential's use (for the devices list), at most once a minute per credential.
    pub(crate) fn note_client(&self, principal: &mut Principal, headers: &axum::http::HeaderMap) {
        let Principal::Owner {
            credential_id,
            client,
            ..
        } = principal
        else {
            return;
        };
        client.address = crate::origin::current().map(|o| o.client.ip().to_string());
        client.user_agent = headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect());
        let now = now_ms();
        {
            let mut touched = self.inner.access.touched.lock().expect("touched lock");
            if touched
                .get(credential_id.as_str())
                .is_some_and(|&at| now - at < TOUCH_EVERY_MS)
            {
                return;
            }
            if touched.len() >= TOUCHED_CAP {
                touched.clear();
            }
            touched.insert(credential_id.clone(), now);
        }
        let store = self.store().clone();
        let (id, client) = (credential_id.clone(), client.clone());
        tokio::spawn(async move {
            if let Err(e) = store
                .touch_credential(
                    &id,
                    now,
                    client.address.as_deref(),
                    client.user_agent.as_deref(),
                )
                .await
            {
                tracing::warn!(error = ?e, "recording a credential's use failed");
            }
        });
    }

    /// Revokes one of the caller's owner's keys, browsers or pairing links and closes
    /// the connections opened with it (4003) at once.
    pub(crate) async fn revoke_device(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        admin::revoke(
            self.store().as_ref(),
            owner_id,
            id,
            &Actor::of(principal),
            now_ms(),
        )
        .await?;
        self.close_revoked([id]);
        Ok(())
    }

    /// Called for each event as it is stored: a worker's permission request is handed
    /// to the approval policy, which runs on a task of its own (never under the append
    /// lock) and answers through [`AppState::append_inbound`], where the first answer
    /// wins.
    pub(crate) fn policy_on_stored(&self, session: &Session, event: &NewEvent) {
        if event.direction != Direction::Outbound || event.kind != "control_request" {
            return;
        }
        let Ok(message) = serde_json::from_str::<Value>(&event.payload) else {
            return;
        };
        if policy::Request::from_message(&message, None, &session.id).is_none() {
            return;
        }
        let state = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            if let Err(e) = state.apply_policy(&session, &message).await {
                tracing::warn!(error = %e, session = %session.id, "approval policy failed");
            }
        });
    }

    async fn apply_policy(&self, session: &Session, message: &Value) -> Result<(), ApiError> {
        let Some((request_id, request)) =
            policy::Request::from_message(message, session.environment_id.as_deref(), &session.id)
        else {
            return Ok(());
        };
        let store = self.store();
        let rules = store.policy_rules(&session.owner_id).await?;
        let settings = store.policy_settings(&session.owner_id).await?;
        let verdict = admin::evaluate(&rules, &settings, &request);
        if verdict.decision != Decision::Ask {
            let why = match &verdict.rule_id {
                Some(rule) => format!("rule {rule}"),
                None => format!(
                    "no rule matched; the default is {}",
                    verdict.decision.as_str()
                ),
            };
            let by = verdict.rule_id.as_deref().unwrap_or("default");
            return self
                .policy_answer(session, request_id, &request, verdict.decision, by, &why)
                .await;
        }
        let Some(timeout) = settings.timeout_ms else {
            return Ok(());
        };
        let wait = std::time::Duration::from_millis(u64::try_from(timeout).unwrap_or(0));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown().wait() => return Ok(()),
        }
        // An unanswered request gets the default answer, and `deny` when the default
        // is to ask.
        let decision = match settings.default {
            Decision::Ask => Decision::Deny,
            other => other,
        };
        let why = format!("no answer within {} s", timeout / 1000);
        self.policy_answer(session, request_id, &request, decision, "timeout", &why)
            .await
    }

    /// Answers a permission request for the policy, unless someone answered first; the
    /// stored answer's `sent_with` is `policy:<rule id>` (or `policy:default`,
    /// `policy:timeout`), and the audit log says the same.
    async fn policy_answer(
        &self,
        session: &Session,
        request_id: &str,
        request: &policy::Request<'_>,
        decision: Decision,
        by: &str,
        why: &str,
    ) -> Result<(), ApiError> {
        // The session as it is now: an archived one takes no answer.
        let session = self.store().session(&session.id).await?;
        let answer = policy::answer(request_id, decision, request.input, why);
        let accepted = self
            .append_inbound(&session, vec![answer], &format!("policy:{by}"), None)
            .await?;
        let stored = matches!(accepted.first(), Some(Accepted::Appended(a)) if !a.duplicate);
        if stored {
            admin::record(
                self.store().as_ref(),
                &session.owner_id,
                &Actor::policy(),
                "permission.answer",
                Some(&session.id),
                json!({
                    "request_id": request_id,
                    "tool": request.tool,
                    "behavior": decision.as_str(),
                    "rule": by,
                    "reason": why,
                }),
                now_ms(),
            )
            .await;
        }
        Ok(())
    }

    // --- keys, devices, rules and the audit log over the API: the operations of
    // `admin.rs` on this server's store, as the caller ---

    /// The owner's live API keys and signed-in browsers.
    pub(crate) async fn devices(&self, owner_id: &str) -> Result<Vec<admin::DeviceView>, ApiError> {
        admin::devices(self.store().as_ref(), owner_id, now_ms()).await
    }

    /// A new API key of the caller's owner (its token, shown once, and the credential).
    pub(crate) async fn create_key(
        &self,
        principal: &Principal,
        name: &str,
        role: Role,
    ) -> Result<(String, switchboard_store::Credential), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let actor = Actor::of(principal);
        admin::create_key(
            self.store().as_ref(),
            owner_id,
            name,
            role,
            &actor,
            now_ms(),
        )
        .await
    }

    /// Renames one of the owner's keys or browsers.
    pub(crate) async fn rename_device(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let actor = Actor::of(principal);
        admin::rename(self.store().as_ref(), owner_id, id, name, &actor, now_ms()).await
    }

    /// The owner's rules in order, the default and the timeout.
    pub(crate) async fn policy_view(&self, owner_id: &str) -> Result<Value, ApiError> {
        admin::policy_view(self.store().as_ref(), owner_id).await
    }

    /// Sets the owner's default answer and timeout.
    pub(crate) async fn set_policy_settings(
        &self,
        principal: &Principal,
        update: &admin::SettingsUpdate,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let actor = Actor::of(principal);
        admin::set_settings(self.store().as_ref(), owner_id, update, &actor, now_ms()).await
    }

    /// Adds a rule to the owner's policy (checked first: a bad pattern is a 400).
    pub(crate) async fn add_policy_rule(
        &self,
        principal: &Principal,
        rule: &admin::NewRule,
    ) -> Result<admin::RuleView, ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let actor = Actor::of(principal);
        admin::add_rule(self.store().as_ref(), owner_id, rule, &actor, now_ms()).await
    }

    /// Removes one of the owner's rules.
    pub(crate) async fn remove_policy_rule(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let actor = Actor::of(principal);
        admin::remove_rule(self.store().as_ref(), owner_id, id, &actor, now_ms()).await
    }

    /// What the owner's rules (and `candidate`, tried first) would have answered to a
    /// session's past permission requests; nothing is stored.
    pub(crate) async fn policy_dry_run(
        &self,
        owner_id: &str,
        session_id: &str,
        candidate: Option<&admin::NewRule>,
    ) -> Result<Vec<admin::DryRunRow>, ApiError> {
        admin::dry_run(self.store().as_ref(), owner_id, session_id, candidate).await
    }

    /// One page of the owner's audit log, newest first.
    pub(crate) async fn audit_page(
        &self,
        owner_id: &str,
        query: switchboard_store::AuditQuery,
    ) -> Result<Vec<admin::AuditView>, ApiError> {
        admin::audit_page(self.store().as_ref(), owner_id, query).await
    }

    /// Shares one of the caller's sessions with another owner at `role` (or changes the
    /// role); connections an earlier share opened close and reconnect with the new role.
    pub(crate) async fn share_session(
        &self,
        principal: &Principal,
        session_id: &str,
        with: &str,
        role: Role,
    ) -> Result<switchboard_proto::sessions::SessionShare, ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let share = admin::share(
            self.store().as_ref(),
            owner_id,
            session_id,
            with,
            role,
            &Actor::of(principal),
            now_ms(),
        )
        .await?;
        self.close_share(&share.session_id, &share.owner_id);
        Ok(admin::share_view(&share))
    }

    /// Ends a share of one of the caller's sessions; the other owner's connections to it
    /// close at once, on every node.
    pub(crate) async fn unshare_session(
        &self,
        principal: &Principal,
        session_id: &str,
        with: &str,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let share = admin::unshare(
            self.store().as_ref(),
            owner_id,
            session_id,
            with,
            &Actor::of(principal),
            now_ms(),
        )
        .await?;
        self.close_share(&share.session_id, &share.owner_id);
        Ok(())
    }

    /// Whether a stored credential is still good (not revoked, not expired); false too
    /// when the store cannot say.
    pub(crate) async fn credential_live(&self, id: &str) -> bool {
        match self.store().credential(id).await {
            Ok(c) => c.is_live(now_ms()),
            Err(e) => {
                if !matches!(e, StoreError::NotFound) {
                    tracing::warn!(error = ?e, "cannot read a credential");
                }
                false
            }
        }
    }

    /// The role `session_id` is shared with `owner_id` at now, if it is (`None` too when
    /// the store cannot say).
    pub(crate) async fn share_role(&self, session_id: &str, owner_id: &str) -> Option<Role> {
        self.store()
            .session_share(session_id, owner_id)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = ?e, "cannot read a share");
                None
            })
    }

    /// The owners one of the caller's sessions is shared with.
    pub(crate) async fn session_shares(
        &self,
        principal: &Principal,
        session_id: &str,
    ) -> Result<Vec<switchboard_proto::sessions::SessionShare>, ApiError> {
        let owner_id = Self::require_owner(principal)?;
        admin::shares(self.store().as_ref(), owner_id, session_id).await
    }

    /// The sessions other owners shared with the caller's owner, newest share first
    /// (at most [`MAX_SHARED_LISTED`]), each with the most the caller may do with it.
    pub(crate) async fn shared_sessions(
        &self,
        principal: &Principal,
    ) -> Result<Vec<SessionResource>, ApiError> {
        let Principal::Owner { owner_id, role, .. } = principal else {
            return Err(ApiError::Forbidden("this endpoint needs an API key".into()));
        };
        let mut listed = Vec::new();
        for share in self
            .store()
            .shared_with(owner_id)
            .await?
            .into_iter()
            .take(MAX_SHARED_LISTED)
        {
            let session = match self.store().session(&share.session_id).await {
                Ok(s) => s,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut resource = self.describe(&session).await?;
            resource.shared_role = Some((*role).min(share.role).as_str().into());
            listed.push(resource);
        }
        Ok(listed)
    }

    /// Sets a key's or device's role and closes the connections opened with it, so they
    /// reconnect with the new one.
    pub(crate) async fn set_device_role(
        &self,
        principal: &Principal,
        id: &str,
        role: Role,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        admin::set_role(
            self.store().as_ref(),
            owner_id,
            id,
            role,
            &Actor::of(principal),
            now_ms(),
        )
        .await?;
        self.close_revoked([id]);
        Ok(())
    }
}

/// The audit entry for a message `actor` sent to `session` (a prompt, a permission
/// answer, an interrupt, another control message); `None` for nothing to record. It is
/// stored with the message, in the same transaction, and gets its `sequence_num` there.
pub(crate) fn sent_entry(
    actor: &Actor,
    session: &Session,
    message: &Value,
    now: Millis,
) -> Option<switchboard_store::AuditEntry> {
    let action = crate::roles::audit_action(message)?;
    Some(admin::audit_entry(
        &session.owner_id,
        actor,
        action,
        Some(&session.id),
        sent_detail(message),
        now,
    ))
}

/// The audit detail of one message sent to a session.
fn sent_detail(message: &Value) -> Value {
    let mut detail = json!({});
    match message.get("type").and_then(Value::as_str) {
        Some("user") => {
            let content = &message["message"]["content"];
            let text = match content {
                Value::String(s) => s.clone(),
                Value::Array(blocks) => blocks
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            detail["text"] = Value::String(text.chars().take(PROMPT_EXCERPT).collect());
        }
        Some("control_response") => {
            detail["request_id"] = messages::control_request_id(message)
                .map_or(Value::Null, |id| Value::String(id.to_string()));
            detail["behavior"] = message["response"]["response"]["behavior"].clone();
        }
        Some("control_request") => {
            detail["subtype"] = message["request"]["subtype"].clone();
            for field in ["model", "mode"] {
                if let Some(v) = message["request"].get(field) {
                    detail[field] = v.clone();
                }
            }
        }
        _ => {}
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::device_name;

    #[test]
    fn devices_are_named_after_their_user_agent() {
        let cases = [
            (Some("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"), "Firefox on Linux"),
            (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"), "Safari on iPhone"),
            (Some("Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36"), "Chrome on Android"),
            (Some("curl/8.5.0"), "curl"),
            (None, "browser"),
        ];
        for (ua, want) in cases {
            assert_eq!(device_name(ua), want);
        }
    }
}
