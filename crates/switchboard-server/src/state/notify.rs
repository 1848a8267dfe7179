//! Notifications, per owner: which events notify, the webhook and ntfy channels, the
//! browsers subscribed to Web Push, handing a session's events to the notifier, and
//! telling the owner when a session's worker was lost.

use std::sync::Arc;

use serde_json::{json, Value};
use switchboard_store::{NotifyChannel, PushSubscription, Session, SessionStatus, StoreError};

use super::AppState;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::notify::channels::{self, Outcome};
use crate::notify::guard;
use crate::notify::webpush::{self, Vapid};
use crate::notify::{self, Kind, Notice, Signal};
use crate::time::{iso, now_ms};

/// The longest URL a channel or a push subscription may have.
const MAX_URL: usize = 2048;
/// The longest secret or token.
const MAX_SECRET: usize = 512;
/// Push subscriptions one owner may have.
const MAX_SUBSCRIPTIONS: usize = 50;

fn check_url(what: &str, url: &str) -> Result<url::Url, ApiError> {
    if url.len() > MAX_URL {
        return Err(ApiError::BadRequest(format!(
            "{what} is longer than {MAX_URL} characters"
        )));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| ApiError::BadRequest(format!("{what} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::BadRequest(format!(
            "{what} must be an http:// or https:// URL"
        )));
    }
    Ok(parsed)
}

impl AppState {
    pub(crate) fn notifier(&self) -> &notify::Notifier {
        &self.inner.notifier
    }

    /// Hands what a just-stored event means to the notifier, without waiting. Called on
    /// the append path for every new (not repeated) event.
    pub(crate) fn notify_event(&self, session: &Session, signal: Signal) {
        let notice = notify::address(session, signal);
        if !self.notifier().offer(notice) {
            Metrics::add(&self.metrics().notifications_dropped, 1);
        }
    }

    /// Where a notification's link starts: the configured public URL; else the address
    /// the owner used when setting the channel or subscribing the browser (`stored`);
    /// else this server's own address. Never the address of the request being handled,
    /// which for a notice is usually a worker's.
    pub(crate) fn link_base(&self, stored: Option<&str>) -> String {
        if let Some(url) = &self.options().public_url {
            return url.trim_end_matches('/').to_owned();
        }
        if let Some(origin) = stored {
            return origin.to_owned();
        }
        let scheme = if self.options().tls.is_some() {
            "https"
        } else {
            "http"
        };
        match self.local_addr() {
            Some(addr) => format!("{scheme}://{addr}"),
            None => format!("{scheme}://127.0.0.1:8787"),
        }
    }

    /// The address the owner is using in this request, to start the links of a channel
    /// or subscription it sets: the page's `Origin` when it is this server (as the
    /// same-origin rule sees it), else the public URL as this request reached it.
    pub(crate) fn owner_origin(&self, headers: &axum::http::HeaderMap) -> String {
        let page = headers
            .get(axum::http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .filter(|_| self.same_origin(headers))
            .and_then(|o| url::Url::parse(o).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .map(|u| u.origin().ascii_serialization());
        page.filter(|o| o.len() <= 300)
            .unwrap_or_else(|| self.public_url())
    }

    /// Called when one of a session's worker connections ended (a v1 socket closed or
    /// dropped; a v2 stream closed, or its worker fell silent past the heartbeat TTL).
    /// After `worker_lost_grace`, if no worker connection took over and the session was
    /// neither idle nor archived, its owner is told the worker was lost (once per loss:
    /// a later end restarts the wait, and only the latest check speaks).
    pub(crate) fn worker_gone(&self, session_id: &str) {
        let ticket = self.notifier().lost_ticket(session_id);
        let (state, session_id) = (self.clone(), session_id.to_owned());
        let grace = self.options().worker_lost_grace;
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                // A server that stops takes its workers with it; that is not their loss.
                _ = state.shutdown().wait() => return,
            }
            if !state.notifier().lost_ticket_current(&session_id, ticket) {
                return;
            }
            if let Err(e) = state.check_worker_lost(&session_id).await {
                tracing::warn!(error = ?e, session = %session_id, "cannot check a lost worker");
            }
        });
    }

    async fn check_worker_lost(&self, session_id: &str) -> Result<(), ApiError> {
        if self
            .hub()
            .get(session_id)
            .is_some_and(|channel| channel.has_worker())
        {
            return Ok(());
        }
        let session = match self.store().session(session_id).await {
            Ok(s) => s,
            Err(StoreError::NotFound) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if session.archived_at.is_some()
            || matches!(
                session.status,
                SessionStatus::Idle | SessionStatus::Archived
            )
        {
            return Ok(());
        }
        let waiting = session.status == SessionStatus::RequiresAction;
        tracing::info!(session = %session_id, "worker lost mid-session; telling its owner");
        self.notify_event(
            &session,
            Signal {
                kind: Kind::WorkerLost,
                title: "Worker lost".into(),
                body: if waiting {
                    "The agent disconnected while waiting for your answer and has not come \
                     back; it may have crashed or lost its network."
                } else {
                    "The agent disconnected mid-turn and has not come back; it may have \
                     crashed or lost its network."
                }
                .into(),
                request_id: None,
                tool: None,
                complete: None,
            },
        );
        Ok(())
    }

    /// Refuses a notification URL that names a non-public address (unless the server
    /// allows those): a 400 that says why.
    async fn check_notify_target(&self, url: &url::Url) -> Result<(), ApiError> {
        if self.options().notify_allow_private {
            return Ok(());
        }
        guard::check_target(url)
            .await
            .map_err(|e| ApiError::BadRequest(format!("url: {e}")))
    }

    /// The server's VAPID key pair, made and stored on first use.
    pub(crate) async fn vapid(&self) -> Result<Arc<Vapid>, ApiError> {
        self.inner
            .vapid
            .get_or_try_init(|| async {
                let private = self.store().vapid_key(&Vapid::generate(), now_ms()).await?;
                let public = self.public_url();
                let subject = if public.starts_with("https://") {
                    public
                } else {
                    // RFC 8292 asks for a contact; without a public https URL there is none
                    // better than this.
                    "mailto:switchboard@localhost".to_owned()
                };
                Vapid::from_private(&private, subject)
                    .map(Arc::new)
                    .map_err(ApiError::Internal)
            })
            .await
            .cloned()
    }

    /// The events that notify `owner_id` (all of them until the owner chooses).
    pub(crate) async fn notify_events(&self, owner_id: &str) -> Result<Vec<Kind>, ApiError> {
        Ok(match self.store().notify_settings(owner_id).await? {
            Some(names) => names.iter().filter_map(|n| Kind::parse(n)).collect(),
            None => Kind::SETTABLE.iter().map(|(k, _)| *k).collect(),
        })
    }

    /// Everything about an owner's notifications, for `GET /v1/notify`.
    pub(crate) async fn notify_overview(&self, owner_id: &str) -> Result<Value, ApiError> {
        let enabled = self.notify_events(owner_id).await?;
        let events: Vec<Value> = Kind::SETTABLE
            .iter()
            .map(|(k, what)| json!({ "name": k.as_str(), "description": what, "enabled": enabled.contains(k) }))
            .collect();
        let channels: Vec<Value> = self
            .store()
            .notify_channels(owner_id)
            .await?
            .into_iter()
            .map(channel_json)
            .collect();
        let subscriptions: Vec<Value> = self
            .store()
            .push_subscriptions(owner_id)
            .await?
            .into_iter()
            .map(subscription_json)
            .collect();
        Ok(json!({
            "events": events,
            "channels": channels,
            "push": {
                "public_key": self.vapid().await?.public,
                "subscriptions": subscriptions,
            },
        }))
    }

    /// Chooses the events that notify `owner_id`.
    pub(crate) async fn set_notify_events(
        &self,
        owner_id: &str,
        names: &[String],
    ) -> Result<(), ApiError> {
        let mut chosen = Vec::new();
        for name in names {
            let kind = Kind::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Kind::SETTABLE.iter().map(|(k, _)| k.as_str()).collect();
                ApiError::BadRequest(format!(
                    "unknown event {name:?}; known: {}",
                    known.join(", ")
                ))
            })?;
            if !chosen.contains(&kind.as_str().to_owned()) {
                chosen.push(kind.as_str().to_owned());
            }
        }
        self.store()
            .set_notify_settings(owner_id, &chosen, now_ms())
            .await?;
        Ok(())
    }

    /// Sets the owner's webhook or ntfy channel. Without a secret the one already set is
    /// kept; a new webhook without one gets a random key. The answer shows the webhook's.
    pub(crate) async fn set_notify_channel(
        &self,
        owner_id: &str,
        kind: &str,
        url: &str,
        secret: Option<String>,
        origin: String,
    ) -> Result<Value, ApiError> {
        let parsed = check_url("url", url)?;
        self.check_notify_target(&parsed).await?;
        if secret
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SECRET || s.trim().is_empty())
        {
            return Err(ApiError::BadRequest(format!(
                "the secret must be 1 to {MAX_SECRET} characters"
            )));
        }
        // Changing only the URL keeps the key or token already set.
        let kept = self
            .store()
            .notify_channels(owner_id)
            .await?
            .into_iter()
            .find(|c| c.kind == kind)
            .and_then(|c| c.secret);
        let secret = secret.or(kept);
        let secret = match kind {
            "webhook" => {
                Some(secret.unwrap_or_else(|| format!("whsec_{}", crate::auth::random_id(32))))
            }
            "ntfy" => {
                if channels::ntfy_parts(parsed.as_str()).is_none() {
                    return Err(ApiError::BadRequest(
                        "an ntfy URL names a topic, like https://ntfy.sh/my-topic".into(),
                    ));
                }
                secret
            }
            other => {
                return Err(ApiError::NotFound(format!(
                    "no channel {other:?}; channels are webhook and ntfy"
                )))
            }
        };
        let channel = NotifyChannel {
            owner_id: owner_id.to_owned(),
            kind: kind.to_owned(),
            url: parsed.to_string(),
            secret,
            origin: Some(origin),
            created_at: now_ms(),
        };
        self.store().put_notify_channel(&channel).await?;
        self.notifier().changed(owner_id);
        Ok(channel_json(channel))
    }

    /// Removes the owner's channel of `kind`.
    pub(crate) async fn delete_notify_channel(
        &self,
        owner_id: &str,
        kind: &str,
    ) -> Result<(), ApiError> {
        if self.store().delete_notify_channel(owner_id, kind).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no {kind} channel is set")))
        }
    }

    /// Stores a browser's push subscription; the same endpoint again replaces it.
    pub(crate) async fn subscribe_push(
        &self,
        owner_id: &str,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        user_agent: Option<&str>,
        origin: String,
    ) -> Result<Value, ApiError> {
        let parsed = check_url("endpoint", endpoint)?;
        self.check_notify_target(&parsed).await?;
        webpush::check_keys(p256dh, auth).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let existing = self.store().push_subscriptions(owner_id).await?;
        if existing.len() >= MAX_SUBSCRIPTIONS && !existing.iter().any(|s| s.endpoint == endpoint) {
            return Err(ApiError::Conflict(format!(
                "at most {MAX_SUBSCRIPTIONS} browsers can subscribe; remove one first"
            )));
        }
        let sub = PushSubscription {
            id: format!("psub_{}", crate::auth::random_id(20)),
            owner_id: owner_id.to_owned(),
            endpoint: endpoint.to_owned(),
            p256dh: p256dh.to_owned(),
            auth: auth.to_owned(),
            user_agent: user_agent.map(|u| notify::bound(u, 200)),
            origin: Some(origin),
            created_at: now_ms(),
        };
        self.store().put_push_subscription(&sub).await?;
        self.notifier().changed(owner_id);
        Ok(subscription_json(sub))
    }

    /// Removes one of the owner's push subscriptions.
    pub(crate) async fn unsubscribe_push(&self, owner_id: &str, id: &str) -> Result<(), ApiError> {
        if self.store().delete_push_subscription(owner_id, id).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no push subscription {id}")))
        }
    }

    /// Sends a test notification everywhere the owner has set, once each, and says how
    /// each went: sent, the status it was answered with, or why it was not (a refused
    /// address is named as such, with nothing about what is there).
    pub(crate) async fn test_notify(&self, owner_id: &str) -> Result<Value, ApiError> {
        let notice = Notice {
            kind: Kind::Test,
            session_id: String::new(),
            session_title: None,
            title: "Switchboard test notification".into(),
            body: "Notifications reach you here.".into(),
            url: String::new(),
            path: "/".into(),
            shown_in_full: None,
            request_id: None,
            tool: None,
            collapse_key: "test".into(),
            created_at: iso(now_ms()),
            owner_id: owner_id.to_owned(),
        };
        let allow_private = self.options().notify_allow_private;
        let http =
            channels::http_client(allow_private).map_err(|e| ApiError::Internal(e.into()))?;
        let jobs = notify::jobs(self, &notice)
            .await
            .map_err(ApiError::Internal)?;
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            let target = match &job {
                channels::Job::Channel(c) => c.kind.clone(),
                channels::Job::Push(s, _) => format!("push {}", s.id),
            };
            let linked = notice.linked(&self.link_base(job.origin()));
            let outcome = channels::attempt(&http, &job, &linked, allow_private).await;
            if outcome == Outcome::Gone {
                if let channels::Job::Push(s, _) = &job {
                    self.store()
                        .delete_push_subscription(owner_id, &s.id)
                        .await?;
                }
            }
            let (ok, detail) = match outcome {
                Outcome::Sent => (true, "sent".to_owned()),
                Outcome::Gone => (false, "subscription expired; removed".to_owned()),
                Outcome::Retry(why) | Outcome::Failed(why) => (false, why),
            };
            results.push(json!({ "target": target, "ok": ok, "detail": detail }));
        }
        Ok(json!({ "results": results }))
    }
}

fn channel_json(c: NotifyChannel) -> Value {
    match c.kind.as_str() {
        // The webhook's key is the owner's to verify with; an ntfy token is only used.
        "webhook" => {
            json!({ "kind": c.kind, "url": c.url, "secret": c.secret, "created_at": iso(c.created_at) })
        }
        _ => {
            json!({ "kind": c.kind, "url": c.url, "token": c.secret.is_some(), "created_at": iso(c.created_at) })
        }
    }
}

fn subscription_json(s: PushSubscription) -> Value {
    let service = url::Url::parse(&s.endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    json!({
        "id": s.id,
        // The owner's own; the page finds its own subscription by it.
        "endpoint": s.endpoint,
        "service": service,
        "user_agent": s.user_agent,
        "created_at": iso(s.created_at),
    })
}
