//! `switchboard notify`: choose what calls you back (permission requests, finished
//! turns…) and where: a webhook, an ntfy topic, or the browsers subscribed from the web
//! UI's settings.

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::remote::RemoteArgs;

/// Flags of `switchboard notify`.
#[derive(Debug, Args)]
pub(crate) struct NotifyArgs {
    #[command(subcommand)]
    command: NotifyCommand,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
enum NotifyCommand {
    /// Show which events notify, the channels and the subscribed browsers.
    List,
    /// Choose the events that notify (comma-separated; `none` for none):
    /// permission, question, result, error, usage_limit, worker_lost.
    Events {
        /// e.g. `permission,question,error`.
        events: String,
    },
    /// A JSON POST to a URL of yours, signed with HMAC-SHA256.
    #[command(subcommand)]
    Webhook(ChannelCommand),
    /// An ntfy topic (ntfy.sh or your own ntfy server).
    #[command(subcommand)]
    Ntfy(ChannelCommand),
    /// Forget a subscribed browser (ids from `notify list`).
    Unsubscribe {
        /// The subscription's id (`psub_…`).
        id: String,
    },
    /// Send a test notification everywhere and say how each went.
    Test,
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Set the URL (a webhook's URL, or an ntfy topic URL like https://ntfy.sh/my-topic).
    Set {
        /// Where to send.
        url: String,
        /// The webhook's HMAC key (default: a new random one, printed), or the ntfy
        /// access token.
        #[arg(
            long,
            alias = "token",
            value_name = "SECRET",
            env = "SWITCHBOARD_NOTIFY_SECRET",
            hide_env_values = true
        )]
        secret: Option<String>,
    },
    /// Stop sending there.
    Remove,
}

pub(crate) async fn run(args: NotifyArgs) -> anyhow::Result<()> {
    let client = args.remote.sessions_client()?;
    let explain = |e| args.remote.explain(e, "notification settings");
    match args.command {
        NotifyCommand::List => {
            let settings = client.notify_settings().await.map_err(explain)?;
            for line in overview(&settings) {
                println!("{line}");
            }
        }
        NotifyCommand::Events { events } => {
            let names: Vec<String> = events
                .split(',')
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty() && e != "none")
                .collect();
            let settings = client.set_notify_events(&names).await.map_err(explain)?;
            for line in overview(&settings)
                .into_iter()
                .take_while(|l| !l.is_empty())
            {
                println!("{line}");
            }
        }
        NotifyCommand::Webhook(cmd) => channel(&client, "webhook", cmd, &args.remote).await?,
        NotifyCommand::Ntfy(cmd) => channel(&client, "ntfy", cmd, &args.remote).await?,
        NotifyCommand::Unsubscribe { id } => {
            client
                .delete_push_subscription(&id)
                .await
                .map_err(|e| args.remote.explain(e, &format!("subscription {id}")))?;
            println!("Removed {id}.");
        }
        NotifyCommand::Test => {
            let answer = client.test_notify().await.map_err(explain)?;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            if results.is_empty() {
                println!("Nowhere to send: set a webhook or ntfy topic, or subscribe a browser in the web UI.");
            }
            let mut failed = 0;
            for r in &results {
                let ok = r["ok"].as_bool() == Some(true);
                failed += usize::from(!ok);
                println!(
                    "{} {}: {}",
                    if ok { "✓" } else { "✗" },
                    text(&r["target"]),
                    text(&r["detail"])
                );
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} deliveries failed", results.len());
            }
        }
    }
    Ok(())
}

async fn channel(
    client: &switchboard_client::SessionsClient,
    kind: &str,
    cmd: ChannelCommand,
    remote: &RemoteArgs,
) -> anyhow::Result<()> {
    match cmd {
        ChannelCommand::Set { url, secret } => {
            let answer = client
                .set_notify_channel(kind, &url, secret.as_deref())
                .await
                .map_err(|e| remote.explain(e, &format!("the {kind} channel")))?;
            println!("{kind}: {}", text(&answer["url"]));
            if let Some(secret) = answer["secret"].as_str() {
                println!(
                    "Signing key (verify the X-Switchboard-Signature header with it): {secret}"
                );
            }
        }
        ChannelCommand::Remove => {
            client
                .delete_notify_channel(kind)
                .await
                .map_err(|e| remote.explain(e, &format!("the {kind} channel")))?;
            println!("Removed the {kind} channel.");
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The settings as lines: events, then channels, then browsers.
fn overview(settings: &Value) -> Vec<String> {
    let mut out = vec!["Events:".to_owned()];
    for e in settings["events"].as_array().into_iter().flatten() {
        let on = e["enabled"].as_bool() == Some(true);
        out.push(format!(
            "  [{}] {:<12} {}",
            if on { "x" } else { " " },
            text(&e["name"]),
            text(&e["description"])
        ));
    }
    out.push(String::new());
    out.push("Channels:".to_owned());
    let channels = settings["channels"].as_array().cloned().unwrap_or_default();
    if channels.is_empty() {
        out.push(
            "  none (switchboard notify webhook set URL, switchboard notify ntfy set URL)"
                .to_owned(),
        );
    }
    for c in &channels {
        let extra = match (c["secret"].as_str(), c["token"].as_bool()) {
            (Some(secret), _) => format!(" (signing key {secret})"),
            (None, Some(true)) => " (with token)".to_owned(),
            _ => String::new(),
        };
        out.push(format!(
            "  {:<8} {}{extra}",
            text(&c["kind"]),
            text(&c["url"])
        ));
    }
    out.push(String::new());
    out.push("Browsers (Web Push; subscribe from the web UI):".to_owned());
    let subs = settings["push"]["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if subs.is_empty() {
        out.push("  none".to_owned());
    }
    for s in &subs {
        out.push(format!(
            "  {}  {}  since {}  {}",
            text(&s["id"]),
            text(&s["service"]),
            text(&s["created_at"]),
            text(&s["user_agent"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_overview_lists_events_channels_and_browsers() {
        let settings = json!({
            "events": [{"name": "permission", "description": "a tool waits", "enabled": true},
                       {"name": "result", "description": "a turn ended", "enabled": false}],
            "channels": [{"kind": "ntfy", "url": "https://ntfy.sh/t", "token": true},
                         {"kind": "webhook", "url": "https://h/x", "secret": "whsec_1"}],
            "push": {"subscriptions": [{"id": "psub_1", "service": "fcm.googleapis.com",
                      "created_at": "2026-01-01T00:00:00Z", "user_agent": "Phone"}]},
        });
        assert_eq!(
            overview(&settings),
            [
                "Events:",
                "  [x] permission   a tool waits",
                "  [ ] result       a turn ended",
                "",
                "Channels:",
                "  ntfy     https://ntfy.sh/t (with token)",
                "  webhook  https://h/x (signing key whsec_1)",
                "",
                "Browsers (Web Push; subscribe from the web UI):",
                "  psub_1  fcm.googleapis.com  since 2026-01-01T00:00:00Z  Phone",
            ]
        );
    }
}
