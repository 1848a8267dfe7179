//! The Sessions API: create, read, list, retitle, archive, and the session's events
//! (docs/PROTOCOL.md §6 and §13).

use serde_json::Value;
use switchboard_proto::sessions::{CreateSessionRequest, Page, SessionResource};
use switchboard_proto::SessionId;
use switchboard_store::{CredentialKind, EventQuery, Session, SessionStatus, StoreError};

use super::{check_safe_id, AppState};
use crate::auth;
use crate::error::ApiError;
use crate::limits;
use crate::log::with_sequence;
use crate::metrics::Metrics;
use crate::time::{iso, now_ms};

/// The plane of a session whose creator did not ask for one (`use_code_sessions`
/// absent, as the official client sends it): CCR v2. Current Claude Code children speak
/// only v2 (2.1.197 has no WebSocket transport; 2.1.112 speaks both), and they learn the
/// plane from the work secret: with `use_code_sessions: false` the official bridge skips
/// `/worker/register`, hands its child the v1 ingress URL and no worker epoch, and the
/// child appends its v2 paths to that URL (`…/session_ingress/ws/cse_…/worker/…`) and
/// fails. Switchboard's own bridge asks for a plane explicitly.
pub(crate) const DEFAULT_PLANE_V2: bool = true;

/// The field a history item carries the class of credential that sent it in (inbound
/// events only): `owner`, `ingress_token` or `worker_jwt`.
pub(crate) const SENT_WITH_FIELD: &str = "sent_with";

/// The most events one history page returns.
pub(crate) const MAX_PAGE: u32 = 1000;

/// Which page of history to read (`GET /v1/sessions/{id}/events`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct HistoryQuery {
    /// Page size (default 100).
    pub(crate) limit: Option<u32>,
    /// Newest page instead of oldest.
    #[serde(default)]
    pub(crate) anchor_to_latest: bool,
    /// Events before this id (a sequence number).
    pub(crate) before_id: Option<String>,
    /// Events after this id (a sequence number).
    pub(crate) after_id: Option<String>,
}

fn parse_event_id(what: &str, raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    raw.map(|s| {
        s.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("{what} must be an event id (a sequence number)"))
        })
    })
    .transpose()
}

impl AppState {
    /// Creates a session. With an `environment_id`, a work item is queued for it; with
    /// initial `events`, they wait in the log for the worker.
    pub(crate) async fn create_session(
        &self,
        owner_id: &str,
        req: CreateSessionRequest,
    ) -> Result<Session, ApiError> {
        if let Some(title) = &req.title {
            limits::check_len("title", title, limits::MAX_TITLE_BYTES)?;
        }
        limits::check_json_len(
            "session_context",
            &req.session_context,
            limits::MAX_METADATA_BYTES,
        )?;
        limits::check_count("events", req.events.len())?;
        if let Some(env_id) = req.environment_id.as_deref() {
            check_safe_id("environment id", env_id)?;
            let env = match self.store().environment(env_id).await {
                Ok(env) => env,
                Err(StoreError::NotFound) => {
                    return Err(ApiError::NotFound(format!(
                        "environment {env_id} not found"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            if env.owner_id != owner_id {
                return Err(ApiError::Forbidden(
                    "this environment belongs to another owner".into(),
                ));
            }
            if env.deregistered_at.is_some() {
                return Err(ApiError::NotFound(format!("environment {env_id} is gone")));
            }
        }
        let now = now_ms();
        let session = Session {
            id: auth::random_id(26),
            owner_id: owner_id.to_string(),
            environment_id: req.environment_id.clone(),
            title: req.title.filter(|t| !t.trim().is_empty()),
            status: SessionStatus::Idle,
            session_context: if req.session_context.is_null() {
                Value::Object(Default::default())
            } else {
                req.session_context
            },
            source: req.source,
            permission_mode: req.permission_mode,
            use_code_sessions: req.use_code_sessions.unwrap_or(DEFAULT_PLANE_V2),
            created_at: now,
            updated_at: now,
            archived_at: None,
            last_seq: 0,
            last_activity_at: None,
            worker_cursor: 0,
            worker_epoch: 0,
            external_metadata: Value::Object(Default::default()),
            requires_action: None,
        };
        // Initial events arrive as `{"type":"event","data":<message>}` or bare.
        let initial: Vec<Value> = req
            .events
            .into_iter()
            .map(|e| match e {
                Value::Object(mut o) if o.get("type").and_then(Value::as_str) == Some("event") => {
                    o.remove("data").unwrap_or(Value::Null)
                }
                other => other,
            })
            .collect();
        // Check the initial events before anything is stored.
        for (i, event) in initial.iter().enumerate() {
            switchboard_proto::messages::normalize_inbound(event.clone(), &mut || String::new())
                .map_err(|e| ApiError::BadRequest(format!("event {i}: {e}")))?;
        }
        self.store().create_session(&session).await?;
        Metrics::add(&self.metrics().sessions_created, 1);
        if !initial.is_empty() {
            self.append_inbound(&session, initial, crate::auth::Principal::OWNER_CLASS, None)
                .await?;
        }
        if let Some(env_id) = &session.environment_id {
            self.queue_work(env_id, &session.id).await?;
        }
        tracing::info!(session = %session.id, environment = ?session.environment_id, "session created");
        Ok(self.store().session(&session.id).await?)
    }

    /// The wire form of a session, with its environment's machine and directory.
    pub(crate) async fn describe(&self, s: &Session) -> Result<SessionResource, ApiError> {
        let mut resource = self.session_resource(s);
        if let Some(env_id) = &s.environment_id {
            match self.store().environment(env_id).await {
                Ok(env) => {
                    resource.machine_name = Some(env.machine_name).filter(|m| !m.is_empty());
                    resource.directory = Some(env.directory).filter(|d| !d.is_empty());
                }
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(resource)
    }

    /// The wire form of a session, without its environment's details.
    pub(crate) fn session_resource(&self, s: &Session) -> SessionResource {
        let id = SessionId::from_body(s.id.clone()).map_or_else(|| s.id.clone(), |id| id.compat());
        SessionResource {
            kind: "session".into(),
            id,
            title: s.title.clone(),
            session_status: s.status.as_str().into(),
            environment_id: s.environment_id.clone(),
            created_at: iso(s.created_at),
            updated_at: iso(s.updated_at),
            session_context: s.session_context.clone(),
            worker_connected: self.hub().get(&s.id).is_some_and(|c| c.has_worker()),
            last_activity_at: s.last_activity_at.map(iso),
            last_sequence_num: s.last_seq,
            use_code_sessions: s.use_code_sessions,
            requires_action: s.requires_action.clone(),
            shared_role: None,
            machine_name: None,
            directory: None,
        }
    }

    /// Lists an owner's sessions, newest first.
    pub(crate) async fn list_sessions(
        &self,
        owner_id: &str,
        limit: Option<u32>,
        before_id: Option<&str>,
    ) -> Result<Page<SessionResource>, ApiError> {
        let limit = limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let before = match before_id {
            Some(raw) => Some(super::parse_session_id(raw)?.body().to_string()),
            None => None,
        };
        let mut sessions = self
            .store()
            .list_sessions(owner_id, limit + 1, before.as_deref())
            .await?;
        let has_more = sessions.len() > limit as usize;
        sessions.truncate(limit as usize);
        let data: Vec<SessionResource> =
            sessions.iter().map(|s| self.session_resource(s)).collect();
        Ok(Page {
            first_id: data.first().map(|s| s.id.clone()),
            last_id: data.last().map(|s| s.id.clone()),
            data,
            has_more,
        })
    }

    /// Sets a session's title.
    pub(crate) async fn set_title(
        &self,
        session: &Session,
        title: &str,
    ) -> Result<Session, ApiError> {
        limits::check_len("title", title, limits::MAX_TITLE_BYTES)?;
        self.store()
            .set_session_title(&session.id, title, now_ms())
            .await?;
        Ok(self.store().session(&session.id).await?)
    }

    /// Archives a session: its work stops and its connections close with 4001.
    /// A second archive is a 409.
    pub(crate) async fn archive_session(&self, session: &Session) -> Result<(), ApiError> {
        match self.store().archive_session(&session.id, now_ms()).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::Conflict("session is already archived".into()))
            }
            Err(e) => return Err(e.into()),
        }
        // Its workers' ingress tokens stop working with it.
        self.store()
            .revoke_credentials(CredentialKind::IngressToken, &session.id, now_ms())
            .await?;
        self.hub().close(&session.id);
        tracing::info!(session = %session.id, "session archived");
        Ok(())
    }

    /// A page of a session's history, oldest first, each event with its sequence number.
    pub(crate) async fn history(
        &self,
        session: &Session,
        q: HistoryQuery,
    ) -> Result<Page<Value>, ApiError> {
        let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let before = parse_event_id("before_id", q.before_id.as_deref())?;
        let after = parse_event_id("after_id", q.after_id.as_deref())?;
        let latest = q.anchor_to_latest || (before.is_some() && after.is_none());
        let query = EventQuery {
            after,
            before,
            latest,
            limit: limit + 1,
            ..Default::default()
        };
        let mut events = self.store().events(&session.id, &query).await?;
        let has_more = events.len() > limit as usize;
        if has_more {
            if latest {
                events.remove(0);
            } else {
                events.truncate(limit as usize);
            }
        }
        let data = events
            .iter()
            .map(|e| {
                let mut item: Value = serde_json::from_str(&with_sequence(&e.payload, e.seq))?;
                // The audit: which class of credential sent an inbound event.
                if let (Some(class), Some(obj)) = (&e.sent_with, item.as_object_mut()) {
                    obj.insert(SENT_WITH_FIELD.into(), Value::String(class.clone()));
                }
                Ok(item)
            })
            .collect::<Result<Vec<Value>, serde_json::Error>>()
            .map_err(|e| anyhow::anyhow!("stored event is not JSON: {e}"))?;
        Ok(Page {
            first_id: events.first().map(|e| e.seq.to_string()),
            last_id: events.last().map(|e| e.seq.to_string()),
            data,
            has_more,
        })
    }
}
