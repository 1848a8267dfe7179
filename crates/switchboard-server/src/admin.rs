//! Keys, devices, the approval policy and the audit log (issue 16), as operations on a
//! store: the API's handlers reach them through `AppState` (which also closes revoked
//! credentials' connections at once), and `switchboard token|devices|policy|audit` call
//! them directly on the database, at the server.
//!
//! Every change is written to the audit log by the operation itself, with the [`Actor`]
//! that asked for it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchboard_store::{
    AuditEntry, AuditQuery, Credential, CredentialKind, Decision, Device, Direction, Millis,
    PolicyRule, PolicySettings, Role, Session, SessionShare, Store, StoreError,
};

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::policy;

/// The most audit entries one page holds.
pub const MAX_AUDIT_PAGE: u32 = 500;
/// How many of a session's past permission requests a dry run reads at most.
const DRY_RUN_EVENTS: u32 = 10_000;

/// Who made a change, for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The credential used (`None` for the server's own command line or a rule).
    pub credential_id: Option<String>,
    /// The client address.
    pub address: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// Who it was when there is no credential: `cli`, `policy`…
    pub by: Option<String>,
}

impl Actor {
    /// The server's command line (`switchboard token|devices|policy …`).
    pub fn cli() -> Self {
        Actor {
            by: Some("cli".into()),
            ..Actor::default()
        }
    }

    /// The approval policy (a rule, the default or the timeout).
    pub(crate) fn policy() -> Self {
        Actor {
            by: Some("policy".into()),
            ..Actor::default()
        }
    }

    /// The caller of a request.
    pub(crate) fn of(principal: &Principal) -> Self {
        match principal {
            Principal::Owner {
                credential_id,
                client,
                ..
            } => Actor {
                credential_id: Some(credential_id.clone()),
                address: client.address.clone(),
                user_agent: client.user_agent.clone(),
                by: None,
            },
            other => Actor {
                by: Some(other.class().to_string()),
                ..Actor::default()
            },
        }
    }
}

/// One entry of an owner's audit log: `actor` did `action` (on `session_id`).
pub(crate) fn audit_entry(
    owner_id: &str,
    actor: &Actor,
    action: &str,
    session_id: Option<&str>,
    mut detail: Value,
    now: Millis,
) -> AuditEntry {
    if let (Some(by), Some(obj)) = (&actor.by, detail.as_object_mut()) {
        obj.insert("by".into(), Value::String(by.clone()));
    }
    AuditEntry {
        id: 0,
        owner_id: owner_id.to_string(),
        at: now,
        action: action.to_string(),
        credential_id: actor.credential_id.clone(),
        credential_name: None,
        address: actor.address.clone(),
        user_agent: actor.user_agent.clone(),
        session_id: session_id.map(str::to_string),
        detail: detail.to_string(),
    }
}

/// Appends one entry to an owner's audit log. A failure is logged, never returned: the
/// change it records has already been made. (What people send to a session is recorded
/// with the event itself instead, in the same transaction: `NewEvent::audit`.)
pub async fn record(
    store: &dyn Store,
    owner_id: &str,
    actor: &Actor,
    action: &str,
    session_id: Option<&str>,
    detail: Value,
    now: Millis,
) {
    let entry = audit_entry(owner_id, actor, action, session_id, detail, now);
    if let Err(e) = store.append_audit(&entry).await {
        tracing::error!(error = ?e, action, "could not write the audit log");
    }
}

/// A device (API key or signed-in browser) as the API and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// The credential's id.
    pub id: String,
    /// `api_key` or `web_session`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: &'static str,
    /// When it was made (ISO 8601).
    pub created_at: String,
    /// When it expires, if it does.
    pub expires_at: Option<String>,
    /// When it was last used.
    pub last_used_at: Option<String>,
    /// The address it was last used from.
    pub last_address: Option<String>,
    /// The user agent that last used it.
    pub user_agent: Option<String>,
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        let c = &d.credential;
        DeviceView {
            id: c.id.clone(),
            kind: c.kind.as_str(),
            name: c.name.clone(),
            role: c.role.as_str(),
            created_at: crate::time::iso(c.created_at),
            expires_at: c.expires_at.map(crate::time::iso),
            last_used_at: d.last_used_at.map(crate::time::iso),
            last_address: d.last_address.clone(),
            user_agent: d.user_agent.clone(),
        }
    }
}

/// An owner's devices: live API keys and signed-in browsers, newest first.
pub async fn devices(
    store: &dyn Store,
    owner_id: &str,
    now: Millis,
) -> Result<Vec<DeviceView>, ApiError> {
    Ok(store
        .devices(owner_id, now)
        .await?
        .iter()
        .map(DeviceView::from)
        .collect())
}

/// Creates an API key of `role` for `owner_id`; returns the token (shown once) and the
/// stored row.
pub async fn create_key(
    store: &dyn Store,
    owner_id: &str,
    name: &str,
    role: Role,
    actor: &Actor,
    now: Millis,
) -> Result<(String, Credential), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::BadRequest(
            "a key needs a name of 1 to 200 bytes".into(),
        ));
    }
    let mut minted = auth::mint(
        CredentialKind::ApiKey,
        owner_id,
        None,
        None,
        name,
        now,
        None,
    );
    minted.credential.role = role;
    store.insert_credential(&minted.credential).await?;
    record(
        store,
        owner_id,
        actor,
        "key.create",
        None,
        json!({"credential": minted.credential.id, "name": name, "role": role.as_str()}),
        now,
    )
    .await;
    Ok((minted.token, minted.credential))
}

/// Revokes one of an owner's keys, browsers or pairing links. The caller closes the
/// connections opened with it.
pub async fn revoke(
    store: &dyn Store,
    owner_id: &str,
    id: &str,
    actor: &Actor,
    now: Millis,
) -> Result<Credential, ApiError> {
    let credential = owned_credential(store, owner_id, id).await?;
    if !store.revoke_owner_credential(owner_id, id, now).await? {
        return Err(ApiError::Conflict(format!("{id} is already revoked")));
    }
    let action = match credential.kind {
        CredentialKind::ApiKey => "key.revoke",
        _ => "device.revoke",
    };
    record(
        store,
        owner_id,
        actor,
        action,
        None,
        json!({"credential": id, "name": credential.name, "kind": credential.kind.as_str()}),
        now,
    )
    .await;
    Ok(credential)
}

/// Renames one of an owner's keys or browsers.
pub async fn rename(
    store: &dyn Store,
    owner_id: &str,
    id: &str,
    name: &str,
    actor: &Actor,
    now: Millis,
) -> Result<(), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::BadRequest("a name must be 1 to 200 bytes".into()));
    }
    let before = owned_credential(store, owner_id, id).await?;
    if !store.rename_credential(owner_id, id, name).await? {
        return Err(ApiError::NotFound(format!("no key or device {id}")));
    }
    record(
        store,
        owner_id,
        actor,
        "device.rename",
        None,
        json!({"credential": id, "from": before.name, "to": name}),
        now,
    )
    .await;
    Ok(())
}

/// Sets the role of one of an owner's keys or browsers. The caller closes the
/// connections opened with it, so they come back with the new role.
pub async fn set_role(
    store: &dyn Store,
    owner_id: &str,
    id: &str,
    role: Role,
    actor: &Actor,
    now: Millis,
) -> Result<(), ApiError> {
    let before = owned_credential(store, owner_id, id).await?;
    if !store.set_credential_role(owner_id, id, role).await? {
        return Err(ApiError::NotFound(format!("no live key or device {id}")));
    }
    record(
        store,
        owner_id,
        actor,
        "role.change",
        None,
        json!({"credential": id, "name": before.name, "from": before.role.as_str(),
               "to": role.as_str()}),
        now,
    )
    .await;
    Ok(())
}

async fn owned_credential(
    store: &dyn Store,
    owner_id: &str,
    id: &str,
) -> Result<Credential, ApiError> {
    let missing = || ApiError::NotFound(format!("no key or device {id}"));
    match store.credential(id).await {
        Ok(c)
            if c.owner_id == owner_id
                && matches!(
                    c.kind,
                    CredentialKind::ApiKey | CredentialKind::WebSession | CredentialKind::Pairing
                ) =>
        {
            Ok(c)
        }
        Ok(_) | Err(StoreError::NotFound) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

/// One owner a session is shared with, as the API and the CLI show it.
pub fn share_view(s: &SessionShare) -> switchboard_proto::sessions::SessionShare {
    switchboard_proto::sessions::SessionShare {
        owner: s.owner_name.clone(),
        role: s.role.as_str().to_string(),
        shared_at: crate::time::iso(s.created_at),
    }
}

/// One of `owner_id`'s sessions, named in either costume: only its owner shares it.
async fn owned_session(
    store: &dyn Store,
    owner_id: &str,
    raw_id: &str,
) -> Result<Session, ApiError> {
    let id = crate::state::parse_session_id(raw_id)?;
    match store.session(id.body()).await {
        Ok(s) if s.owner_id == owner_id => Ok(s),
        Ok(_) => Err(ApiError::Forbidden(
            "only the session's owner may share it".into(),
        )),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("session {raw_id} not found"))),
        Err(e) => Err(e.into()),
    }
}

/// Shares one of `owner_id`'s sessions with the owner named `with` at `role` (their
/// credentials reach it with at most that role), or changes the role of an existing
/// share. Returns the share; the caller closes the connections an earlier share opened.
pub async fn share(
    store: &dyn Store,
    owner_id: &str,
    session_id: &str,
    with: &str,
    role: Role,
    actor: &Actor,
    now: Millis,
) -> Result<SessionShare, ApiError> {
    let session = owned_session(store, owner_id, session_id).await?;
    let with = with.trim();
    if with.is_empty() {
        return Err(ApiError::BadRequest("name the owner to share with".into()));
    }
    let share = match store.put_session_share(&session.id, with, role, now).await {
        Ok(share) => share,
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!(
                "no owner named {with:?} (an owner exists once a key was made for it)"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if share.owner_id == owner_id {
        // Undo: an owner has every role on its own sessions already.
        store.delete_session_share(&session.id, owner_id).await?;
        return Err(ApiError::BadRequest(
            "a session cannot be shared with its own owner".into(),
        ));
    }
    record(
        store,
        owner_id,
        actor,
        "session.share",
        Some(&session.id),
        json!({"with": share.owner_name, "role": role.as_str()}),
        now,
    )
    .await;
    Ok(share)
}

/// Ends the share of one of `owner_id`'s sessions with the owner named `with`; returns
/// the share that ended, whose connections the caller closes.
pub async fn unshare(
    store: &dyn Store,
    owner_id: &str,
    session_id: &str,
    with: &str,
    actor: &Actor,
    now: Millis,
) -> Result<SessionShare, ApiError> {
    let session = owned_session(store, owner_id, session_id).await?;
    let missing = || ApiError::NotFound(format!("the session is not shared with {with:?}"));
    let share = store
        .session_shares(&session.id)
        .await?
        .into_iter()
        .find(|s| s.owner_name == with)
        .ok_or_else(missing)?;
    if !store
        .delete_session_share(&session.id, &share.owner_id)
        .await?
    {
        return Err(missing());
    }
    record(
        store,
        owner_id,
        actor,
        "session.unshare",
        Some(&session.id),
        json!({"with": share.owner_name, "role": share.role.as_str()}),
        now,
    )
    .await;
    Ok(share)
}

/// The owners one of `owner_id`'s sessions is shared with.
pub async fn shares(
    store: &dyn Store,
    owner_id: &str,
    session_id: &str,
) -> Result<Vec<switchboard_proto::sessions::SessionShare>, ApiError> {
    let session = owned_session(store, owner_id, session_id).await?;
    Ok(store
        .session_shares(&session.id)
        .await?
        .iter()
        .map(share_view)
        .collect())
}

/// A rule as entered (API body, CLI flags).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NewRule {
    /// The tool (`*` for any).
    pub tool: String,
    /// The pattern on its input, if any.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `allow`, `deny` or `ask`.
    pub decision: String,
    /// Only for sessions on this environment.
    #[serde(default)]
    pub environment_id: Option<String>,
    /// Only for this session (either costume).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Put it before every other rule (else after them).
    #[serde(default)]
    pub first: bool,
}

/// A stored rule as the API and the CLI show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleView {
    /// Its id.
    pub id: String,
    /// The tool.
    pub tool: String,
    /// The pattern.
    pub pattern: Option<String>,
    /// The decision.
    pub decision: &'static str,
    /// Its environment, if scoped to one.
    pub environment_id: Option<String>,
    /// Its session (`session_…`), if scoped to one.
    pub session_id: Option<String>,
}

impl From<&PolicyRule> for RuleView {
    fn from(r: &PolicyRule) -> Self {
        RuleView {
            id: r.id.clone(),
            tool: r.tool.clone(),
            pattern: r.pattern.clone(),
            decision: r.decision.as_str(),
            environment_id: r.environment_id.clone(),
            session_id: r.session_id.as_deref().map(compat_session_id),
        }
    }
}

/// A stored session body id in its `session_…` costume.
fn compat_session_id(body: &str) -> String {
    switchboard_proto::SessionId::from_body(body).map_or_else(|| body.to_string(), |id| id.compat())
}

fn parse_decision(raw: &str) -> Result<Decision, ApiError> {
    Decision::parse(raw.trim()).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown decision {raw:?}: expected allow, deny or ask"
        ))
    })
}

/// The refusal for a session or environment of another owner (as `authorize_session`).
fn another_owners(what: &str) -> ApiError {
    ApiError::Forbidden(format!("this {what} belongs to another owner"))
}

/// Checks a rule as entered and makes the row, scoped to the owner's own session or
/// environment (a 400 says what is wrong; a session or environment of another owner is
/// a 403).
async fn build_rule(
    store: &dyn Store,
    owner_id: &str,
    new: &NewRule,
    position: i64,
    now: Millis,
) -> Result<PolicyRule, ApiError> {
    let tool = new.tool.trim();
    let pattern = new.pattern.as_deref().map(str::trim);
    policy::validate(tool, pattern)?;
    let decision = parse_decision(&new.decision)?;
    let session_id = match new.session_id.as_deref() {
        Some(raw) => {
            let id = crate::state::parse_session_id(raw)?;
            match store.session(id.body()).await {
                Ok(s) if s.owner_id == owner_id => Some(s.id),
                Ok(_) => return Err(another_owners("session")),
                Err(StoreError::NotFound) => {
                    return Err(ApiError::NotFound(format!("session {raw} not found")))
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    let environment_id = match new.environment_id.as_deref() {
        Some(raw) => {
            crate::state::check_safe_id("environment id", raw)?;
            match store.environment(raw).await {
                Ok(e) if e.owner_id == owner_id => Some(e.id),
                Ok(_) => return Err(another_owners("environment")),
                Err(StoreError::NotFound) => {
                    return Err(ApiError::NotFound(format!("environment {raw} not found")))
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    Ok(PolicyRule {
        id: format!("rule_{}", auth::random_id(16)),
        owner_id: owner_id.to_string(),
        environment_id,
        session_id,
        position,
        tool: tool.to_string(),
        pattern: pattern.map(str::to_string),
        decision,
        created_at: now,
    })
}

/// Adds a rule, last (or first with `first`).
pub async fn add_rule(
    store: &dyn Store,
    owner_id: &str,
    new: &NewRule,
    actor: &Actor,
    now: Millis,
) -> Result<RuleView, ApiError> {
    let rules = store.policy_rules(owner_id).await?;
    let position = if new.first {
        rules.first().map_or(0, |r| r.position - 1)
    } else {
        rules.last().map_or(0, |r| r.position + 1)
    };
    let rule = build_rule(store, owner_id, new, position, now).await?;
    store.insert_policy_rule(&rule).await?;
    let view = RuleView::from(&rule);
    record(
        store,
        owner_id,
        actor,
        "policy.add",
        rule.session_id.as_deref(),
        json!({"rule": view, "first": new.first}),
        now,
    )
    .await;
    Ok(view)
}

/// Removes a rule.
pub async fn remove_rule(
    store: &dyn Store,
    owner_id: &str,
    id: &str,
    actor: &Actor,
    now: Millis,
) -> Result<(), ApiError> {
    let rules = store.policy_rules(owner_id).await?;
    let Some(rule) = rules.iter().find(|r| r.id == id) else {
        return Err(ApiError::NotFound(format!("no rule {id}")));
    };
    if !store.delete_policy_rule(owner_id, id).await? {
        return Err(ApiError::NotFound(format!("no rule {id}")));
    }
    record(
        store,
        owner_id,
        actor,
        "policy.remove",
        rule.session_id.as_deref(),
        json!({"rule": RuleView::from(rule)}),
        now,
    )
    .await;
    Ok(())
}

/// An owner's policy: rules in order, the default and the timeout.
pub async fn policy_view(store: &dyn Store, owner_id: &str) -> Result<Value, ApiError> {
    let rules: Vec<RuleView> = store
        .policy_rules(owner_id)
        .await?
        .iter()
        .map(RuleView::from)
        .collect();
    let settings = store.policy_settings(owner_id).await?;
    Ok(json!({
        "rules": rules,
        "default": settings.default.as_str(),
        "timeout_seconds": settings.timeout_ms.map(|ms| ms / 1000),
    }))
}

/// Body of `PUT /v1/policy/settings`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SettingsUpdate {
    /// `allow`, `deny` or `ask`.
    pub default: String,
    /// Seconds a request waits for a person before it gets the default answer (`deny`
    /// when the default is `ask`); absent or null: no timeout.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// The longest timeout a policy may set (a day).
const MAX_TIMEOUT_SECONDS: u64 = 24 * 60 * 60;

/// Replaces an owner's default and timeout.
pub async fn set_settings(
    store: &dyn Store,
    owner_id: &str,
    update: &SettingsUpdate,
    actor: &Actor,
    now: Millis,
) -> Result<(), ApiError> {
    let default = parse_decision(&update.default)?;
    let timeout_ms = match update.timeout_seconds {
        Some(0) => {
            return Err(ApiError::BadRequest(
                "timeout_seconds must be at least 1 (or absent for no timeout)".into(),
            ))
        }
        Some(s) if s > MAX_TIMEOUT_SECONDS => {
            return Err(ApiError::BadRequest(format!(
                "timeout_seconds may be at most {MAX_TIMEOUT_SECONDS}"
            )))
        }
        Some(s) => Some(i64::try_from(s * 1000).unwrap_or(i64::MAX)),
        None => None,
    };
    store
        .set_policy_settings(
            owner_id,
            PolicySettings {
                default,
                timeout_ms,
            },
            now,
        )
        .await?;
    record(
        store,
        owner_id,
        actor,
        "policy.settings",
        None,
        json!({"default": default.as_str(), "timeout_seconds": update.timeout_seconds}),
        now,
    )
    .await;
    Ok(())
}

/// What the policy answers one permission request with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The answer.
    pub(crate) decision: Decision,
    /// The rule that gave it (`None`: the default).
    pub(crate) rule_id: Option<String>,
}

/// Evaluates `request` against `rules` (in order), falling back to `settings`.
pub(crate) fn evaluate(
    rules: &[PolicyRule],
    settings: &PolicySettings,
    request: &policy::Request<'_>,
) -> Verdict {
    match policy::first_match(rules, request) {
        Some(rule) => Verdict {
            decision: rule.decision,
            rule_id: Some(rule.id.clone()),
        },
        None => Verdict {
            decision: settings.default,
            rule_id: None,
        },
    }
}

/// One past permission request of a session, with what the policy would answer now and
/// how it was answered then.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunRow {
    /// The request's id.
    pub request_id: String,
    /// The tool asked for.
    pub tool: String,
    /// Its input.
    pub input: Value,
    /// What the policy (with the candidate rule first, if one was given) would answer.
    pub would: &'static str,
    /// The rule that would answer (`candidate` for the one tested; none: the default).
    pub rule_id: Option<String>,
    /// How it was answered: `allow`, `deny`, or none (never answered, or withdrawn).
    pub was: Option<String>,
}

/// What the owner's rules (with `candidate` tried first, if given) would have answered
/// to each permission request in a session's log. Nothing is stored.
pub async fn dry_run(
    store: &dyn Store,
    owner_id: &str,
    raw_session_id: &str,
    candidate: Option<&NewRule>,
) -> Result<Vec<DryRunRow>, ApiError> {
    let id = crate::state::parse_session_id(raw_session_id)?;
    let session = match store.session(id.body()).await {
        Ok(s) if s.owner_id == owner_id => s,
        Ok(_) => return Err(another_owners("session")),
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!(
                "session {raw_session_id} not found"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let mut rules = store.policy_rules(owner_id).await?;
    if let Some(candidate) = candidate {
        let mut rule = build_rule(store, owner_id, candidate, i64::MIN, 0).await?;
        rule.id = "candidate".into();
        rules.insert(0, rule);
    }
    let settings = store.policy_settings(owner_id).await?;
    let query = switchboard_store::EventQuery {
        limit: DRY_RUN_EVENTS,
        latest: true,
        ..Default::default()
    };
    let events = store.events(&session.id, &query).await?;
    let mut answers = std::collections::HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.direction == Direction::Inbound && e.kind == "control_response")
    {
        let payload: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
        let response = &payload["response"];
        if let (Some(id), Some(behavior)) = (
            response["request_id"].as_str(),
            response["response"]["behavior"].as_str(),
        ) {
            answers
                .entry(id.to_string())
                .or_insert_with(|| behavior.to_string());
        }
    }
    let mut rows = Vec::new();
    for e in events
        .iter()
        .filter(|e| e.direction == Direction::Outbound && e.kind == "control_request")
    {
        let message: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
        let Some((request_id, request)) =
            policy::Request::from_message(&message, session.environment_id.as_deref(), &session.id)
        else {
            continue;
        };
        let verdict = evaluate(&rules, &settings, &request);
        rows.push(DryRunRow {
            request_id: request_id.to_string(),
            tool: request.tool.to_string(),
            input: request.input.clone(),
            would: verdict.decision.as_str(),
            rule_id: verdict.rule_id,
            was: answers.get(request_id).cloned(),
        });
    }
    Ok(rows)
}

/// Reads a `since` bound: RFC 3339 (`2026-01-02T03:04:05Z`), or a time ago (`90s`,
/// `15m`, `2h`, `7d`).
pub fn parse_since(raw: &str, now: Millis) -> Result<Millis, ApiError> {
    let raw = raw.trim();
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid since {raw:?}: expected an RFC 3339 time or an age like 15m, 2h, 7d"
        ))
    };
    if let Ok(t) = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
    {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as Millis);
    }
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = raw.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(now - n.checked_mul(unit_ms).ok_or_else(bad)?)
}

/// An audit entry as the API and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    /// Its id (page with `before_id`).
    pub id: i64,
    /// When (ISO 8601).
    pub at: String,
    /// What.
    pub action: String,
    /// The credential that did it.
    pub credential_id: Option<String>,
    /// That credential's name.
    pub credential_name: Option<String>,
    /// From which address.
    pub address: Option<String>,
    /// With which user agent.
    pub user_agent: Option<String>,
    /// On which session (`session_…`).
    pub session_id: Option<String>,
    /// The particulars.
    pub detail: Value,
}

/// A page of an owner's audit log, newest first.
pub async fn audit_page(
    store: &dyn Store,
    owner_id: &str,
    mut query: AuditQuery,
) -> Result<Vec<AuditView>, ApiError> {
    if let Some(raw) = query.session_id.take() {
        query.session_id = Some(crate::state::parse_session_id(&raw)?.body().to_string());
    }
    query.limit = query.limit.clamp(1, MAX_AUDIT_PAGE);
    Ok(store
        .audit_log(owner_id, &query)
        .await?
        .into_iter()
        .map(|e| AuditView {
            id: e.id,
            at: crate::time::iso(e.at),
            action: e.action,
            credential_id: e.credential_id,
            credential_name: e.credential_name,
            address: e.address,
            user_agent: e.user_agent,
            session_id: e.session_id.as_deref().map(compat_session_id),
            detail: serde_json::from_str(&e.detail).unwrap_or(Value::Null),
        })
        .collect())
}
