//! The Environments API: registration, work dispatch by long-poll, and the work
//! lifecycle (docs/PROTOCOL.md §4–§5).

use std::time::Duration;

use switchboard_proto::environments::{
    HeartbeatResponse, RegisterEnvironmentRequest, RegisterEnvironmentResponse, WorkData,
    WorkResponse, WorkSecret,
};
use switchboard_proto::SessionId;
use switchboard_store::{CredentialKind, Environment, StoreError, WorkItem, WorkState};

use super::{check_safe_id, parse_session_id, Access, AppState};
use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::limits;
use crate::metrics::{GaugeGuard, Metrics};
use crate::time::{iso, now_ms};

/// How long a work lease lasts after an ack or heartbeat (upstream: 300 s).
const WORK_LEASE: Duration = Duration::from_secs(300);

impl AppState {
    /// Registers an environment, or re-attaches to the one named in the request when it
    /// exists and belongs to the same owner. A fresh secret is issued either way and the
    /// environment's older secrets stop working.
    pub(crate) async fn register_environment(
        &self,
        owner_id: &str,
        req: RegisterEnvironmentRequest,
    ) -> Result<RegisterEnvironmentResponse, ApiError> {
        let max = limits::MAX_ENVIRONMENT_FIELD_BYTES;
        limits::check_len("machine_name", &req.machine_name, max)?;
        limits::check_len("directory", &req.directory, max)?;
        limits::check_len("branch", &req.branch, max)?;
        if let Some(url) = &req.git_repo_url {
            limits::check_len("git_repo_url", url, max)?;
        }
        limits::check_json_len("metadata", &req.metadata, limits::MAX_METADATA_BYTES)?;
        let now = now_ms();
        let reattach = match req.environment_id.as_deref() {
            Some(id) if switchboard_proto::is_safe_id(id) => {
                match self.store().environment(id).await {
                    Ok(env) if env.owner_id == owner_id => Some(env),
                    Ok(_) | Err(StoreError::NotFound) => None,
                    Err(e) => return Err(e.into()),
                }
            }
            _ => None,
        };
        let env = Environment {
            id: reattach
                .as_ref()
                .map_or_else(|| format!("env_{}", auth::random_id(24)), |e| e.id.clone()),
            owner_id: owner_id.to_string(),
            machine_name: req.machine_name,
            directory: req.directory,
            branch: req.branch,
            git_repo_url: req.git_repo_url,
            max_sessions: req.max_sessions.max(1),
            metadata: req.metadata,
            created_at: reattach.as_ref().map_or(now, |e| e.created_at),
            last_poll_at: now,
            deregistered_at: None,
        };
        self.store().upsert_environment(&env).await?;
        self.store()
            .revoke_credentials(CredentialKind::EnvironmentSecret, &env.id, now)
            .await?;
        let secret = auth::mint(
            CredentialKind::EnvironmentSecret,
            owner_id,
            Some(&env.id),
            None,
            "",
            now,
            None,
        );
        self.store().insert_credential(&secret.credential).await?;
        let resumed = if reattach.is_some() {
            self.resume_sessions(&env.id, now).await?
        } else {
            0
        };
        tracing::info!(environment = %env.id, reattached = reattach.is_some(), resumed, "environment registered");
        Ok(RegisterEnvironmentResponse {
            environment_id: env.id,
            environment_secret: secret.token,
            web_url: Some(self.public_url()),
        })
    }

    /// Offers again, as new work, the sessions an environment was running when its
    /// bridge went away (its work still open, or stopped with `force`): the official
    /// bridge re-registers with its old `environment_id` after a restart and expects
    /// them back ("Restart `claude remote-control` to reconnect existing sessions").
    /// Returns how many were queued.
    async fn resume_sessions(&self, environment_id: &str, now: i64) -> Result<usize, ApiError> {
        let sessions = self
            .store()
            .take_resumable_work(environment_id, now)
            .await?;
        for session_id in &sessions {
            tracing::info!(environment = %environment_id, session = %session_id, "offering a running session again");
            self.queue_work(environment_id, session_id).await?;
        }
        Ok(sessions.len())
    }

    /// An owner's live environments, most recently polled first.
    pub(crate) async fn live_environments(
        &self,
        owner_id: &str,
    ) -> Result<Vec<Environment>, ApiError> {
        Ok(self.store().live_environments(owner_id).await?)
    }

    /// Loads a live environment that `owner_id` owns.
    async fn owned_environment(&self, owner_id: &str, id: &str) -> Result<Environment, ApiError> {
        check_safe_id("environment id", id)?;
        let env = match self.store().environment(id).await {
            Ok(env) => env,
            Err(StoreError::NotFound) => {
                return Err(ApiError::NotFound(format!("environment {id} not found")))
            }
            Err(e) => return Err(e.into()),
        };
        if env.owner_id != owner_id {
            return Err(ApiError::Forbidden(
                "this environment belongs to another owner".into(),
            ));
        }
        Ok(env)
    }

    /// Waits for work for an environment, up to the poll timeout; `None` means none.
    ///
    /// Returns the moment work is queued. Work delivered but not acknowledged for
    /// `reclaim` is handed out again.
    pub(crate) async fn poll_work(
        &self,
        principal: &Principal,
        environment_id: &str,
        reclaim: Option<Duration>,
    ) -> Result<Option<WorkResponse>, ApiError> {
        check_safe_id("environment id", environment_id)?;
        match principal {
            Principal::Environment {
                environment_id: own,
                ..
            } if own == environment_id => {}
            Principal::Environment { .. } => {
                return Err(ApiError::Forbidden(
                    "this secret polls another environment".into(),
                ))
            }
            _ => {
                return Err(ApiError::Forbidden(
                    "polling needs the environment secret".into(),
                ))
            }
        }
        let env = self
            .owned_environment(principal.owner_id(), environment_id)
            .await?;
        if env.deregistered_at.is_some() {
            return Err(ApiError::NotFound(format!(
                "environment {environment_id} is gone"
            )));
        }
        self.store()
            .touch_environment(environment_id, now_ms())
            .await?;

        let reclaim = reclaim.unwrap_or(self.options().default_reclaim);
        let reclaim_ms = i64::try_from(reclaim.as_millis()).unwrap_or(i64::MAX);
        let deadline = tokio::time::Instant::now() + self.options().poll_timeout;
        // Subscribe before looking, so work queued in between wakes us.
        let mut queued = self.inner.dispatcher.subscribe(environment_id);
        let _waiting = GaugeGuard::new(&self.metrics().long_polls_waiting);
        loop {
            let now = now_ms();
            if let Some(work) = self
                .store()
                .claim_work(environment_id, now, now.saturating_sub(reclaim_ms))
                .await?
            {
                Metrics::add(&self.metrics().work_dispatched, 1);
                return self.work_response(&env, work).await.map(Some);
            }
            if self.shutdown().is_triggered() {
                return Ok(None);
            }
            // Un-acked work becomes reclaimable at most `reclaim` from now, so look again
            // by then even if nothing is queued.
            let wake = (tokio::time::Instant::now() + reclaim.max(Duration::from_millis(100)))
                .min(deadline);
            tokio::select! {
                changed = queued.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if wake >= deadline {
                        return Ok(None);
                    }
                }
                _ = self.shutdown().wait() => return Ok(None),
            }
        }
    }

    /// Builds the poll answer for a claimed work item, minting its ingress token.
    async fn work_response(
        &self,
        env: &Environment,
        work: WorkItem,
    ) -> Result<WorkResponse, ApiError> {
        let now = now_ms();
        let session = self.store().session(&work.session_id).await?;
        let expires_at = self
            .options()
            .ingress_token_ttl
            .map(|ttl| now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2));
        let token = auth::mint(
            CredentialKind::IngressToken,
            &env.owner_id,
            Some(&session.id),
            Some(&work.id),
            "",
            now,
            expires_at,
        );
        self.store().insert_credential(&token.credential).await?;
        let secret = WorkSecret {
            version: 1,
            session_ingress_token: token.token,
            api_base_url: self.public_url(),
            sources: vec![],
            auth: vec![],
            use_code_sessions: session.use_code_sessions,
        };
        let id = SessionId::from_body(session.id.clone())
            .ok_or_else(|| anyhow::anyhow!("stored session id {:?} is not safe", session.id))?;
        Ok(WorkResponse {
            id: work.id,
            kind: "work".into(),
            environment_id: work.environment_id,
            state: work.state.as_str().into(),
            data: WorkData {
                kind: "session".into(),
                id: id.cse(),
            },
            secret: secret.encode(),
            created_at: iso(work.created_at),
        })
    }

    /// Loads a work item for ack/heartbeat, which the session's ingress token may do.
    async fn work_for_worker(
        &self,
        principal: &Principal,
        environment_id: &str,
        work_id: &str,
    ) -> Result<WorkItem, ApiError> {
        check_safe_id("environment id", environment_id)?;
        check_safe_id("work id", work_id)?;
        let Principal::Ingress { session_id, .. } = principal else {
            return Err(ApiError::Forbidden(
                "this call needs the work's session ingress token".into(),
            ));
        };
        let work = match self.store().work_item(environment_id, work_id).await {
            Ok(w) => w,
            Err(StoreError::NotFound) => {
                return Err(ApiError::NotFound(format!("work {work_id} not found")))
            }
            Err(e) => return Err(e.into()),
        };
        if work.session_id != *session_id {
            return Err(ApiError::Forbidden(
                "this token was issued for another session".into(),
            ));
        }
        Ok(work)
    }

    /// Acknowledges a work item: a worker owns it, and it is not delivered again.
    pub(crate) async fn ack_work(
        &self,
        principal: &Principal,
        environment_id: &str,
        work_id: &str,
    ) -> Result<(), ApiError> {
        self.work_for_worker(principal, environment_id, work_id)
            .await?;
        self.store()
            .update_work(environment_id, work_id, WorkState::Acked, now_ms())
            .await?;
        Ok(())
    }

    /// Extends a work item's lease.
    pub(crate) async fn heartbeat_work(
        &self,
        principal: &Principal,
        environment_id: &str,
        work_id: &str,
    ) -> Result<HeartbeatResponse, ApiError> {
        self.work_for_worker(principal, environment_id, work_id)
            .await?;
        let now = now_ms();
        let work = match self
            .store()
            .update_work(environment_id, work_id, WorkState::Acked, now)
            .await
        {
            Ok(w) => w,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::Conflict(format!("work {work_id} was stopped")))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(HeartbeatResponse {
            lease_extended: true,
            state: work.state.as_str().into(),
            last_heartbeat: iso(now),
            ttl_seconds: WORK_LEASE.as_secs(),
        })
    }

    /// Ends a work item. Idempotent. With `force` the bridge cut a running session short
    /// (it is shutting down): the session is offered again when the environment
    /// registers again.
    pub(crate) async fn stop_work(
        &self,
        principal: &Principal,
        environment_id: &str,
        work_id: &str,
        force: bool,
    ) -> Result<(), ApiError> {
        check_safe_id("work id", work_id)?;
        let owner_id = Self::require_owner(principal)?;
        self.owned_environment(owner_id, environment_id).await?;
        let now = now_ms();
        let stopped = if force {
            self.store()
                .interrupt_work(environment_id, work_id, now)
                .await
        } else {
            self.store()
                .update_work(environment_id, work_id, WorkState::Stopped, now)
                .await
        };
        match stopped {
            Ok(work) => {
                // The ingress tokens of the session's stopped work stop working with it.
                // (A reconnect stops the older items without this, so their worker keeps
                // its token until the new item's token reaches it.)
                self.store()
                    .revoke_stopped_work_credentials(&work.session_id, now)
                    .await?;
                Ok(())
            }
            Err(StoreError::NotFound) => {
                Err(ApiError::NotFound(format!("work {work_id} not found")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Re-queues a session on an environment: its unfinished work items are stopped and
    /// a new one (with a fresh ingress token) is queued.
    pub(crate) async fn reconnect_session(
        &self,
        principal: &Principal,
        environment_id: &str,
        raw_session_id: &str,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        let env = self.owned_environment(owner_id, environment_id).await?;
        if env.deregistered_at.is_some() {
            return Err(ApiError::NotFound(format!(
                "environment {environment_id} is gone"
            )));
        }
        parse_session_id(raw_session_id)?;
        let session = self
            .authorize_session(principal, raw_session_id, Access::OwnerOnly)
            .await?;
        if session.archived_at.is_some() {
            return Err(ApiError::Conflict("session is archived".into()));
        }
        self.store()
            .stop_session_work(&session.id, now_ms())
            .await?;
        self.queue_work(&env.id, &session.id).await?;
        Ok(())
    }

    /// Queues a work item for a session and wakes the environment's polls.
    pub(crate) async fn queue_work(
        &self,
        environment_id: &str,
        session_id: &str,
    ) -> Result<WorkItem, ApiError> {
        let work = WorkItem {
            id: format!("work_{}", auth::random_id(24)),
            environment_id: environment_id.to_string(),
            session_id: session_id.to_string(),
            state: WorkState::Queued,
            created_at: now_ms(),
            delivered_at: None,
            acked_at: None,
            heartbeat_at: None,
            stopped_at: None,
            deliveries: 0,
        };
        self.store().enqueue_work(&work).await?;
        self.inner.dispatcher.notify(environment_id);
        Ok(work)
    }

    /// Deregisters an environment: its queue is dropped and polls get 404.
    pub(crate) async fn deregister_environment(
        &self,
        principal: &Principal,
        environment_id: &str,
    ) -> Result<(), ApiError> {
        let owner_id = Self::require_owner(principal)?;
        self.owned_environment(owner_id, environment_id).await?;
        self.store()
            .deregister_environment(environment_id, now_ms())
            .await?;
        self.inner.dispatcher.notify(environment_id);
        Ok(())
    }

    /// Deregisters environments that stopped polling.
    pub(crate) async fn collect_idle_environments(&self) -> Result<usize, ApiError> {
        let idle_ms =
            i64::try_from(self.options().environment_idle_timeout.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let idle = self
            .store()
            .idle_environments(now.saturating_sub(idle_ms))
            .await?;
        for id in &idle {
            tracing::info!(environment = %id, "deregistering idle environment");
            self.store().deregister_environment(id, now).await?;
            self.inner.dispatcher.notify(id);
        }
        Ok(idle.len())
    }
}
