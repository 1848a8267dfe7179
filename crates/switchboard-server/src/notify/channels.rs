//! Delivery to one place: a webhook (JSON, signed with HMAC-SHA256), an ntfy topic, or a
//! browser's push service (RFC 8030, encrypted per RFC 8291, VAPID per RFC 8292). Each
//! delivery is retried with a doubling wait on network errors, 429 and 5xx, a bounded
//! number of times; a push service's 404 or 410 removes the subscription. Only public
//! addresses are reached unless the server allows private ones (see [`super::guard`]).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use switchboard_store::{NotifyChannel, PushSubscription};

use super::guard;
use super::webpush::{self, Vapid};
use super::{Kind, Notice, ATTEMPTS, ATTEMPT_TIMEOUT, RETRY_BASE};
use crate::state::AppState;

/// The header carrying a webhook's signature: `sha256=<hex>` of
/// HMAC-SHA256(secret, `<timestamp>.<body>`).
pub(crate) const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// The header carrying the Unix time (seconds) the signature covers.
pub(crate) const TIMESTAMP_HEADER: &str = "x-switchboard-timestamp";
/// The header naming the event.
pub(crate) const EVENT_HEADER: &str = "x-switchboard-event";

/// One delivery to make.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    /// A webhook or an ntfy topic.
    Channel(NotifyChannel),
    /// A browser, with the server's VAPID key.
    Push(PushSubscription, Arc<Vapid>),
}

impl Job {
    /// The address the owner set it from, where its links start (when the server has no
    /// configured public URL).
    pub(crate) fn origin(&self) -> Option<&str> {
        match self {
            Job::Channel(c) => c.origin.as_deref(),
            Job::Push(s, _) => s.origin.as_deref(),
        }
    }

    fn url(&self) -> &str {
        match self {
            Job::Channel(c) => &c.url,
            Job::Push(s, _) => &s.endpoint,
        }
    }
}

/// The HTTP client deliveries share: no redirects (a signed request goes where it was
/// set to go, and a redirect cannot lead inside), a deadline per attempt. Unless
/// `allow_private`, names resolve only to public addresses ([`guard::PublicOnly`]) and
/// connections go straight to them, never through a proxy from the environment (whose
/// own address, and what it connects to, the check could not see).
pub(crate) fn http_client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")));
    if allow_private {
        builder.build()
    } else {
        builder
            .no_proxy()
            .dns_resolver(Arc::new(guard::PublicOnly))
            .build()
    }
}

/// What an attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Delivered.
    Sent,
    /// Worth another try (network error, 429, 5xx).
    Retry(String),
    /// Not worth another try.
    Failed(String),
    /// The push subscription no longer exists (404, 410).
    Gone,
}

fn outcome(result: reqwest::Result<reqwest::Response>, push: bool) -> Outcome {
    match result {
        // A refused address is not worth another try, and the error says nothing about
        // what is there (nothing was reached).
        Err(e) => match guard::refusal(&e) {
            Some(refused) => Outcome::Failed(refused.to_string()),
            None if e.is_timeout() => Outcome::Retry("timed out".into()),
            None if e.is_connect() => Outcome::Retry("could not connect".into()),
            None => Outcome::Retry("the request failed".into()),
        },
        Ok(r) => {
            let s = r.status();
            if s.is_success() {
                Outcome::Sent
            } else if push && (s.as_u16() == 404 || s.as_u16() == 410) {
                Outcome::Gone
            } else if s.as_u16() == 429 || s.is_server_error() {
                Outcome::Retry(format!("answered {s}"))
            } else {
                Outcome::Failed(format!("answered {s}"))
            }
        }
    }
}

/// One try at delivering `notice` by `job`. Unless `allow_private`, a URL naming a
/// non-public address literally is refused before any connection (the resolver, which
/// checks names, never sees those).
pub(crate) async fn attempt(
    http: &reqwest::Client,
    job: &Job,
    notice: &Notice,
    allow_private: bool,
) -> Outcome {
    if !allow_private {
        let checked = url::Url::parse(job.url())
            .map_err(|_| guard::Refused("an unparsable URL".into()))
            .and_then(|u| guard::check_literal(&u));
        if let Err(refused) = checked {
            return Outcome::Failed(refused.to_string());
        }
    }
    match job {
        Job::Channel(c) if c.kind == "webhook" => outcome(webhook(http, c, notice).await, false),
        Job::Channel(c) => outcome(ntfy(http, c, notice).await, false),
        Job::Push(sub, vapid) => match push(http, sub, vapid, notice).await {
            Ok(r) => outcome(r, true),
            Err(e) => Outcome::Failed(e.to_string()),
        },
    }
}

/// Delivers `notice` by `job`, retrying as the module says; logs what failed.
pub(crate) async fn deliver(state: &AppState, http: &reqwest::Client, notice: &Notice, job: Job) {
    let what = match &job {
        Job::Channel(c) => c.kind.clone(),
        Job::Push(..) => "push".to_owned(),
    };
    let notice = &notice.linked(&state.link_base(job.origin()));
    let allow_private = state.options().notify_allow_private;
    let mut wait = RETRY_BASE;
    for tried in 1..=ATTEMPTS {
        match attempt(http, &job, notice, allow_private).await {
            Outcome::Sent => {
                state.metrics().notification_sent();
                return;
            }
            Outcome::Gone => {
                if let Job::Push(sub, _) = &job {
                    tracing::info!(subscription = %sub.id, "push subscription is gone; removing it");
                    if let Err(e) = state
                        .store()
                        .delete_push_subscription(&sub.owner_id, &sub.id)
                        .await
                    {
                        tracing::warn!(error = ?e, "cannot remove a push subscription");
                    }
                }
                return;
            }
            Outcome::Failed(why) => {
                state.metrics().notification_failed();
                tracing::warn!(channel = %what, %why, "notification refused");
                return;
            }
            Outcome::Retry(why) if tried == ATTEMPTS => {
                state.metrics().notification_failed();
                tracing::warn!(channel = %what, %why, attempts = ATTEMPTS, "notification not delivered");
                return;
            }
            Outcome::Retry(why) => {
                tracing::debug!(channel = %what, %why, attempt = tried, "notification failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = state.shutdown().wait() => return,
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The signature a webhook request carries for `body` sent at `timestamp`.
pub(crate) fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn webhook(
    http: &reqwest::Client,
    channel: &NotifyChannel,
    notice: &Notice,
) -> reqwest::Result<reqwest::Response> {
    let body = serde_json::to_vec(notice).unwrap_or_default();
    let timestamp = u64::try_from(crate::time::now_ms() / 1000).unwrap_or(0);
    let mut request = http
        .post(&channel.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, notice.kind.as_str())
        .header(TIMESTAMP_HEADER, timestamp.to_string());
    if let Some(secret) = &channel.secret {
        request = request.header(SIGNATURE_HEADER, signature(secret, timestamp, &body));
    }
    request.body(body).send().await
}

/// Splits an ntfy topic URL into the server's publishing URL and the topic.
pub(crate) fn ntfy_parts(url: &str) -> Option<(String, String)> {
    let parsed = url::Url::parse(url).ok()?;
    let topic = parsed.path_segments()?.rfind(|s| !s.is_empty())?.to_owned();
    let mut base = parsed.clone();
    {
        let mut segments = base.path_segments_mut().ok()?;
        segments.pop_if_empty().pop();
    }
    base.set_query(None);
    let mut base = base.to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    Some((base, topic))
}

async fn ntfy(
    http: &reqwest::Client,
    channel: &NotifyChannel,
    notice: &Notice,
) -> reqwest::Result<reqwest::Response> {
    // JSON publishing (to the server's root, naming the topic) carries any text; the
    // header form would need titles in ASCII.
    let (base, topic) =
        ntfy_parts(&channel.url).unwrap_or_else(|| (channel.url.clone(), String::new()));
    let tags: &[&str] = match notice.kind {
        Kind::Permission => &["lock"],
        Kind::Question => &["question"],
        Kind::Result => &["white_check_mark"],
        Kind::Error => &["x"],
        Kind::UsageLimit => &["hourglass"],
        Kind::WorkerLost => &["electric_plug"],
        Kind::Resolved => &[],
        Kind::Test => &["bell"],
    };
    let body = json!({
        "topic": topic,
        "title": notice.title,
        "message": if notice.body.is_empty() { &notice.title } else { &notice.body },
        "tags": tags,
        "priority": if notice.kind.urgent() { 4 } else { 3 },
        "click": notice.url,
        "actions": [{ "action": "view", "label": "Open", "url": notice.url }],
    });
    let mut request = http.post(base).json(&body);
    if let Some(token) = &channel.secret {
        request = request.bearer_auth(token);
    }
    request.send().await
}

async fn push(
    http: &reqwest::Client,
    sub: &PushSubscription,
    vapid: &Vapid,
    notice: &Notice,
) -> anyhow::Result<reqwest::Result<reqwest::Response>> {
    let payload = serde_json::to_vec(notice)?;
    let body = webpush::encrypt(&payload, &sub.p256dh, &sub.auth)?;
    let authorization = vapid.authorization(&sub.endpoint, crate::time::now_ms() / 1000)?;
    let ttl = if notice.kind.urgent() {
        6 * 3600
    } else {
        24 * 3600
    };
    Ok(http
        .post(&sub.endpoint)
        .header("TTL", ttl.to_string())
        .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(
            "Urgency",
            if notice.kind.urgent() {
                "high"
            } else {
                "normal"
            },
        )
        // One message per session waits at the push service: a newer one replaces it.
        .header("Topic", webpush::topic(&notice.collapse_key))
        .header(reqwest::header::AUTHORIZATION, authorization)
        .body(body)
        .send()
        .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntfy_topic_urls_split_into_server_and_topic() {
        assert_eq!(
            ntfy_parts("https://ntfy.sh/my-topic"),
            Some(("https://ntfy.sh/".into(), "my-topic".into()))
        );
        assert_eq!(
            ntfy_parts("http://127.0.0.1:8080/sub/path/alerts/"),
            Some(("http://127.0.0.1:8080/sub/path/".into(), "alerts".into()))
        );
        assert_eq!(ntfy_parts("https://ntfy.sh/"), None);
    }

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let a = signature("k", 1, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, signature("k", 2, b"{}"));
        assert_ne!(a, signature("k", 1, b"{ }"));
        assert_ne!(a, signature("j", 1, b"{}"));
    }
}
