//! What the commands that talk to a running server share: the `--url` and `--token`
//! flags, the Sessions API client they build, and one-line explanations of the failures
//! a person is likely to meet (no key, a refused key, an unreachable server).

use clap::Args;
use switchboard_client::{ApiError, SessionsClient};

/// The server the default URL points at: `switchboard serve` listens there by default.
const DEFAULT_URL: &str = "http://127.0.0.1:8787";

/// Where the server is and which API key to use.
#[derive(Debug, Clone, Args)]
pub(crate) struct RemoteArgs {
    /// The server's base URL.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub(crate) url: String,
    /// The API key (create one with `switchboard token create`).
    #[arg(
        long,
        env = "SWITCHBOARD_TOKEN",
        value_name = "KEY",
        hide_env_values = true
    )]
    token: Option<String>,
}

impl RemoteArgs {
    /// The API key, or a one-line explanation of how to give one.
    pub(crate) fn token(&self) -> anyhow::Result<&str> {
        match self.token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => Ok(token),
            _ => anyhow::bail!(
                "no API key: pass --token or set SWITCHBOARD_TOKEN \
                 (create one with `switchboard token create`)"
            ),
        }
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base_url(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// A Sessions API client for this server and key.
    pub(crate) fn sessions_client(&self) -> anyhow::Result<SessionsClient> {
        let token = self.token()?;
        Ok(SessionsClient::new(self.base_url(), token))
    }

    /// Turns a failed call into one line a person can act on. `what` names the thing the
    /// call was about, for a 404 (e.g. `session session_…`).
    pub(crate) fn explain(&self, error: ApiError, what: &str) -> anyhow::Error {
        let url = self.base_url();
        match &error {
            ApiError::Fatal {
                status: 401 | 403,
                message,
                ..
            } => anyhow::anyhow!("the server at {url} refused the API key: {message}"),
            ApiError::Fatal { status: 404, .. } => {
                anyhow::anyhow!("{what} not found on the server at {url}")
            }
            ApiError::Transport(e) => {
                anyhow::anyhow!("cannot reach the server at {url}: {}", root_cause(e))
            }
            ApiError::InvalidId { .. } | ApiError::InvalidRequest(_) => {
                anyhow::anyhow!("{error}")
            }
            _ => anyhow::anyhow!("the server at {url} failed: {error}"),
        }
    }
}

/// The innermost cause of an error, which for a connection failure is the useful part
/// ("Connection refused") rather than reqwest's outer "error sending request".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(token: Option<&str>) -> RemoteArgs {
        RemoteArgs {
            url: "http://127.0.0.1:8787/".into(),
            token: token.map(str::to_owned),
        }
    }

    #[test]
    fn a_missing_or_blank_token_is_explained() {
        for token in [None, Some(""), Some("  ")] {
            let error = args(token).token().unwrap_err().to_string();
            assert!(error.starts_with("no API key"), "{error}");
        }
        assert_eq!(args(Some("sk-1")).token().ok(), Some("sk-1"));
    }

    #[test]
    fn refused_keys_and_missing_sessions_read_as_one_line() {
        let args = args(Some("k"));
        let refused = args.explain(ApiError::from_status(401, b"", None), "session x");
        let missing = args.explain(ApiError::from_status(404, b"", None), "session x");

        assert_eq!(
            refused.to_string(),
            "the server at http://127.0.0.1:8787 refused the API key: authentication failed"
        );
        assert_eq!(
            missing.to_string(),
            "session x not found on the server at http://127.0.0.1:8787"
        );
    }
}
