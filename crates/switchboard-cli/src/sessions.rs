//! `switchboard sessions`: the user's sessions with their state and last activity.

use clap::Args;
use switchboard_proto::sessions::SessionResource;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::remote::RemoteArgs;

/// Flags of `switchboard sessions`.
#[derive(Debug, Args)]
pub(crate) struct SessionsArgs {
    /// Show at most this many sessions.
    #[arg(long, env = "SWITCHBOARD_LIST_LIMIT", default_value_t = 50)]
    limit: u32,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(crate) async fn run(args: SessionsArgs) -> anyhow::Result<()> {
    let client = args.remote.sessions_client()?;
    let page = client
        .list_sessions(Some(args.limit))
        .await
        .map_err(|e| args.remote.explain(e, "the session list"))?;
    if page.data.is_empty() {
        println!("No sessions yet.");
        return Ok(());
    }
    for line in table(&page.data, OffsetDateTime::now_utc()) {
        println!("{line}");
    }
    Ok(())
}

/// What a person wants to know about a session at a glance. A missing worker matters
/// most (nothing happens until it is back), then a pending permission request.
pub(crate) fn state(session: &SessionResource) -> &'static str {
    match session.session_status.as_str() {
        "archived" => "archived",
        _ if !session.worker_connected => "worker offline",
        "requires_action" => "needs approval",
        _ if session.requires_action.is_some() => "needs approval",
        "running" => "running",
        _ => "idle",
    }
}

/// The session list as aligned columns under a header.
fn table(sessions: &[SessionResource], now: OffsetDateTime) -> Vec<String> {
    let rows: Vec<[String; 4]> = sessions
        .iter()
        .map(|s| {
            let title = s
                .title
                .as_deref()
                .filter(|t| !t.trim().is_empty())
                .unwrap_or("(untitled)");
            let activity = s.last_activity_at.as_deref().unwrap_or(&s.updated_at);
            [
                state(s).to_owned(),
                ago(activity, now),
                s.id.clone(),
                title.to_owned(),
            ]
        })
        .collect();
    let header = [
        "STATE".to_owned(),
        "LAST ACTIVITY".to_owned(),
        "ID".to_owned(),
        "TITLE".to_owned(),
    ];
    let all: Vec<&[String; 4]> = std::iter::once(&header).chain(&rows).collect();
    let width = |column: usize| {
        all.iter()
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    all.iter()
        .map(|[state, activity, id, title]| {
            format!("{state:<w0$}  {activity:<w1$}  {id:<w2$}  {title}")
        })
        .collect()
}

/// An ISO 8601 time as "5m ago", or the date when it is older than a month; text that
/// does not parse is shown as it is.
fn ago(when: &str, now: OffsetDateTime) -> String {
    let Ok(then) = OffsetDateTime::parse(when, &Rfc3339) else {
        return when.to_owned();
    };
    let seconds = (now - then).whole_seconds().max(0);
    match seconds {
        0..=59 => "just now".to_owned(),
        60..=3_599 => format!("{}m ago", seconds / 60),
        3_600..=86_399 => format!("{}h ago", seconds / 3_600),
        86_400..=2_591_999 => format!("{}d ago", seconds / 86_400),
        _ => then.date().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn session(status: &str, worker: bool, pending: bool) -> SessionResource {
        SessionResource {
            kind: "session".into(),
            id: "session_abc".into(),
            title: Some("Fix the bug".into()),
            session_status: status.into(),
            environment_id: None,
            created_at: "2026-01-01T10:00:00Z".into(),
            updated_at: "2026-01-01T10:00:00Z".into(),
            session_context: json!({}),
            worker_connected: worker,
            last_activity_at: Some("2026-01-01T11:55:00Z".into()),
            last_sequence_num: 3,
            use_code_sessions: false,
            requires_action: pending.then(|| json!({"type": "control_request"})),
            shared_role: None,
            machine_name: None,
            directory: None,
        }
    }

    #[test]
    fn states_put_a_missing_worker_first() {
        assert_eq!(state(&session("idle", true, false)), "idle");
        assert_eq!(state(&session("running", true, false)), "running");
        assert_eq!(
            state(&session("requires_action", true, true)),
            "needs approval"
        );
        assert_eq!(state(&session("running", true, true)), "needs approval");
        assert_eq!(state(&session("running", false, false)), "worker offline");
        assert_eq!(state(&session("archived", false, false)), "archived");
    }

    #[test]
    fn the_table_aligns_columns_and_names_untitled_sessions() {
        let mut untitled = session("running", true, false);
        untitled.id = "session_longer_id".into();
        untitled.title = None;
        untitled.last_activity_at = None;

        let lines = table(
            &[session("idle", true, false), untitled],
            datetime!(2026-01-01 12:00:00 UTC),
        );

        assert_eq!(
            lines,
            [
                "STATE    LAST ACTIVITY  ID                 TITLE",
                "idle     5m ago         session_abc        Fix the bug",
                "running  2h ago         session_longer_id  (untitled)",
            ]
        );
    }

    #[test]
    fn times_read_as_ages() {
        let now = datetime!(2026-03-01 12:00:00 UTC);
        assert_eq!(ago("2026-03-01T11:59:30Z", now), "just now");
        assert_eq!(ago("2026-02-27T12:00:00Z", now), "2d ago");
        assert_eq!(ago("2025-12-01T00:00:00Z", now), "2025-12-01");
        assert_eq!(ago("yesterday", now), "yesterday");
    }
}
