//! How a failed call to the server reads to a person: one line that says what happened
//! and what to do, for the command, the supervisor and the session tasks alike.

use switchboard_client::ApiError;

/// Turns a failed call into one line that says what happened and what to do.
pub(crate) fn explain(error: &ApiError, base_url: &str) -> String {
    if let Some(failure) = error.tls_failure() {
        return crate::remote::tls_explanation(&failure, base_url);
    }
    match error {
        ApiError::Fatal {
            status: 401 | 403,
            message,
            ..
        } => format!(
            "the server at {base_url} refused the API key ({message}); create one with \
             `switchboard token create` and pass it with SWITCHBOARD_TOKEN or --token-file"
        ),
        ApiError::Transport(e) => format!(
            "cannot reach the server at {base_url} ({}); is `switchboard serve` running there? \
             Pass its address with --url or SWITCHBOARD_URL",
            root_cause(e)
        ),
        ApiError::Fatal {
            status: 404,
            message,
            ..
        } => format!("the server at {base_url} answered 404 ({message})"),
        _ => format!("the server at {base_url} failed: {error}"),
    }
}

/// The innermost cause of an error ("Connection refused" rather than "error sending
/// request").
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_keys_and_unreachable_servers_say_what_to_do() {
        let refused = explain(&ApiError::from_status(401, b"", None), "http://h");
        assert!(refused.contains("refused the API key"), "{refused}");
        assert!(refused.contains("switchboard token create"), "{refused}");
    }
}
