//! `/v1/keys`, `/v1/devices`, `/v1/policy*`, `/v1/audit`: keys, devices, the approval
//! policy and the audit log (issue 16). Every route needs an `admin` credential.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_proto::sessions::{Listing, SessionResource, SessionShare, ShareRequest};
use switchboard_store::{AuditQuery, CredentialKind, Role};

use super::Auth;
use crate::admin::{self, NewRule, SettingsUpdate};
use crate::auth::Principal;
use crate::error::{ApiError, Json, Path, Query};
use crate::roles::Capability;
use crate::state::AppState;
use crate::time::now_ms;

/// The caller's owner, once its role is checked to be `admin`.
fn admin_owner(principal: &Principal) -> Result<&str, ApiError> {
    let owner_id = AppState::require_owner(principal)?;
    principal.require(Capability::Administer)?;
    Ok(owner_id)
}

/// `GET /v1/keys`: the owner's live API keys.
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let owner_id = admin_owner(&principal)?;
    let keys: Vec<_> = state
        .devices(owner_id)
        .await?
        .into_iter()
        .filter(|d| d.kind == CredentialKind::ApiKey.as_str())
        .collect();
    Ok(axum::Json(json!({ "data": keys })))
}

/// Body of `POST /v1/keys`.
#[derive(Debug, Deserialize)]
pub(crate) struct NewKey {
    name: String,
    /// `viewer`, `approver`, `driver` or `admin`; `driver` when absent.
    role: Option<String>,
}

/// `POST /v1/keys`: a new API key, shown once.
pub(crate) async fn create_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(req): Json<NewKey>,
) -> Result<axum::Json<Value>, ApiError> {
    admin_owner(&principal)?;
    let role = match req.role.as_deref() {
        Some(raw) => crate::roles::parse_role(raw)?,
        None => Role::Driver,
    };
    let (token, credential) = state.create_key(&principal, &req.name, role).await?;
    Ok(axum::Json(json!({
        "id": credential.id,
        "name": credential.name,
        "role": credential.role.as_str(),
        "token": token,
    })))
}

/// `DELETE /v1/keys/{id}` and `DELETE /v1/devices/{id}`: revoked at once; the
/// connections opened with it close (4003).
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin_owner(&principal)?;
    crate::state::check_safe_id("id", &id)?;
    state.revoke_device(&principal, &id).await?;
    Ok(axum::Json(json!({ "revoked": id })))
}

/// `GET /v1/devices`: the owner's live API keys and signed-in browsers, with their
/// last use.
pub(crate) async fn list_devices(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let owner_id = admin_owner(&principal)?;
    let devices = state.devices(owner_id).await?;
    let current = match &principal {
        Principal::Owner { credential_id, .. } => Some(credential_id.clone()),
        _ => None,
    };
    Ok(axum::Json(json!({ "data": devices, "current": current })))
}

/// Body of `PATCH /v1/devices/{id}`.
#[derive(Debug, Deserialize)]
pub(crate) struct DeviceUpdate {
    name: Option<String>,
    role: Option<String>,
}

/// `PATCH /v1/devices/{id}`: renames a key or browser, or changes its role (its
/// connections then close, to come back with the new role).
pub(crate) async fn update_device(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    Json(req): Json<DeviceUpdate>,
) -> Result<axum::Json<Value>, ApiError> {
    admin_owner(&principal)?;
    crate::state::check_safe_id("id", &id)?;
    if req.name.is_none() && req.role.is_none() {
        return Err(ApiError::BadRequest("give a name or a role".into()));
    }
    let role = req
        .role
        .as_deref()
        .map(crate::roles::parse_role)
        .transpose()?;
    if let Some(name) = &req.name {
        state.rename_device(&principal, &id, name).await?;
    }
    if let Some(role) = role {
        state.set_device_role(&principal, &id, role).await?;
    }
    Ok(axum::Json(json!({ "id": id })))
}

/// `GET /v1/policy`: the rules in order, the default and the timeout.
pub(crate) async fn get_policy(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let owner_id = admin_owner(&principal)?;
    Ok(axum::Json(state.policy_view(owner_id).await?))
}

/// `PUT /v1/policy/settings`: the default answer and the timeout.
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(req): Json<SettingsUpdate>,
) -> Result<axum::Json<Value>, ApiError> {
    let owner_id = admin_owner(&principal)?;
    state.set_policy_settings(&principal, &req).await?;
    Ok(axum::Json(state.policy_view(owner_id).await?))
}

/// `POST /v1/policy/rules`: adds a rule (last, or first with `"first": true`); a bad
/// pattern is a 400 that says what is wrong.
pub(crate) async fn add_rule(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(req): Json<NewRule>,
) -> Result<axum::Json<Value>, ApiError> {
    admin_owner(&principal)?;
    let rule = state.add_policy_rule(&principal, &req).await?;
    Ok(axum::Json(json!(rule)))
}

/// `DELETE /v1/policy/rules/{id}`.
pub(crate) async fn remove_rule(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin_owner(&principal)?;
    crate::state::check_safe_id("rule id", &id)?;
    state.remove_policy_rule(&principal, &id).await?;
    Ok(axum::Json(json!({ "removed": id })))
}

/// Body of `POST /v1/policy/test`.
#[derive(Debug, Deserialize)]
pub(crate) struct DryRun {
    session_id: String,
    /// A rule to try before the stored ones (not stored).
    rule: Option<NewRule>,
}

/// `POST /v1/policy/test`: what the rules (and the candidate rule, if given) would have
/// answered to each of a session's past permission requests. Nothing is stored.
pub(crate) async fn test_policy(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(req): Json<DryRun>,
) -> Result<axum::Json<Value>, ApiError> {
    let owner_id = admin_owner(&principal)?;
    let rows = state
        .policy_dry_run(owner_id, &req.session_id, req.rule.as_ref())
        .await?;
    Ok(axum::Json(json!({ "data": rows })))
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditParams {
    session_id: Option<String>,
    since: Option<String>,
    before_id: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/audit`: the owner's audit log, newest first, a page at a time (the next
/// page: `before_id` = the last entry's id).
pub(crate) async fn audit(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Query(q): Query<AuditParams>,
) -> Result<axum::Json<Value>, ApiError> {
    let owner_id = admin_owner(&principal)?;
    let since = q
        .since
        .as_deref()
        .map(|raw| admin::parse_since(raw, now_ms()))
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    let entries = state
        .audit_page(
            owner_id,
            AuditQuery {
                session_id: q.session_id,
                since,
                before_id: q.before_id,
                limit,
            },
        )
        .await?;
    let has_more = entries.len() as u32 >= limit.clamp(1, admin::MAX_AUDIT_PAGE);
    Ok(axum::Json(json!({
        "data": entries,
        "has_more": has_more,
    })))
}

/// `GET /v1/sessions/{id}/shares`: the owners one of the caller's sessions is shared
/// with.
pub(crate) async fn list_shares(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Listing<SessionShare>>, ApiError> {
    admin_owner(&principal)?;
    let data = state.session_shares(&principal, &id).await?;
    Ok(axum::Json(Listing { data }))
}

/// `PUT /v1/sessions/{id}/shares/{owner}`: shares one of the caller's sessions with the
/// owner of that name at a role, or changes the role.
pub(crate) async fn put_share(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((id, owner)): Path<(String, String)>,
    Json(req): Json<ShareRequest>,
) -> Result<axum::Json<SessionShare>, ApiError> {
    admin_owner(&principal)?;
    let role = crate::roles::parse_role(&req.role)?;
    Ok(axum::Json(
        state.share_session(&principal, &id, &owner, role).await?,
    ))
}

/// `DELETE /v1/sessions/{id}/shares/{owner}`: ends a share; that owner's connections to
/// the session close at once.
pub(crate) async fn delete_share(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((id, owner)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    admin_owner(&principal)?;
    state.unshare_session(&principal, &id, &owner).await?;
    Ok(axum::Json(json!({})))
}

/// `GET /v1/shared_sessions`: the sessions other owners shared with the caller's owner,
/// each with `shared_role`, the most the caller may do with it.
pub(crate) async fn shared_sessions(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<axum::Json<Listing<SessionResource>>, ApiError> {
    principal.require(Capability::Read)?;
    let data = state.shared_sessions(&principal).await?;
    Ok(axum::Json(Listing { data }))
}
