//! Notification settings (a Switchboard extension, `/v1/notify/*`): the events that
//! call an owner back, the webhook and ntfy channels, and the browsers subscribed to
//! Web Push. Answers are the server's JSON as it is; `switchboard notify` prints them.

use reqwest::Method;
use serde_json::{json, Value};

use crate::error::Result;
use crate::http::{check_id, Call};
use crate::sessions::{SessionsClient, CALL_TIMEOUT};

/// A test delivery waits for every channel, each up to its own deadline.
const TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl SessionsClient {
    /// `GET /v1/notify`: events (with `enabled`), channels, push key and subscriptions.
    pub async fn notify_settings(&self) -> Result<Value> {
        let call = Call::new("NotifySettings", Method::GET, "/v1/notify".to_owned())
            .timeout(CALL_TIMEOUT)
            .accept(&[200]);
        self.rest.call(call).await?.json("NotifySettings")
    }

    /// `PUT /v1/notify/events`: the events that notify, by name.
    pub async fn set_notify_events(&self, events: &[String]) -> Result<Value> {
        let call = Call::new("NotifyEvents", Method::PUT, "/v1/notify/events".to_owned())
            .json(&json!({ "events": events }))?
            .timeout(CALL_TIMEOUT)
            .accept(&[200]);
        self.rest.call(call).await?.json("NotifyEvents")
    }

    /// `PUT /v1/notify/channels/{kind}`: sets the `webhook` (with its HMAC key, made up by
    /// the server when `None`) or the `ntfy` topic (with its access token).
    pub async fn set_notify_channel(
        &self,
        kind: &str,
        url: &str,
        secret: Option<&str>,
    ) -> Result<Value> {
        let kind = check_id("channel", kind)?;
        let call = Call::new(
            "NotifyChannel",
            Method::PUT,
            format!("/v1/notify/channels/{kind}"),
        )
        .json(&json!({ "url": url, "secret": secret }))?
        .timeout(CALL_TIMEOUT)
        .accept(&[200]);
        self.rest.call(call).await?.json("NotifyChannel")
    }

    /// `DELETE /v1/notify/channels/{kind}`.
    pub async fn delete_notify_channel(&self, kind: &str) -> Result<()> {
        let kind = check_id("channel", kind)?;
        let call = Call::new(
            "NotifyChannelDelete",
            Method::DELETE,
            format!("/v1/notify/channels/{kind}"),
        )
        .timeout(CALL_TIMEOUT)
        .accept(&[200, 204]);
        self.rest.call(call).await.map(drop)
    }

    /// `DELETE /v1/notify/push/subscriptions/{id}`: forgets a browser.
    pub async fn delete_push_subscription(&self, id: &str) -> Result<()> {
        let id = check_id("subscription id", id)?;
        let call = Call::new(
            "PushUnsubscribe",
            Method::DELETE,
            format!("/v1/notify/push/subscriptions/{id}"),
        )
        .timeout(CALL_TIMEOUT)
        .accept(&[200, 204]);
        self.rest.call(call).await.map(drop)
    }

    /// `POST /v1/notify/test`: one test notification everywhere; how each went.
    pub async fn test_notify(&self) -> Result<Value> {
        let call = Call::new("NotifyTest", Method::POST, "/v1/notify/test".to_owned())
            .timeout(TEST_TIMEOUT)
            .accept(&[200]);
        self.rest.call(call).await?.json("NotifyTest")
    }
}
