//! What the commands that talk to a running server share: the `--url`, `--token-file`,
//! `--token` and `--ca-cert` flags, the TLS roots and Sessions API client they set up,
//! and one-line explanations of the failures a person is likely to meet (no key, a
//! refused key, an untrusted certificate, an unreachable server).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use switchboard_client::{ApiError, ClientTls, SessionsClient, TlsFailure};

/// The server the default URL points at: `switchboard serve` listens there by default.
const DEFAULT_URL: &str = "http://127.0.0.1:8787";

/// Where the server is and which API key to use.
#[derive(Debug, Clone, Args)]
pub(crate) struct RemoteArgs {
    /// The server's base URL (`http://…`, or `https://…` for a server behind TLS).
    #[arg(long, env = "SWITCHBOARD_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub(crate) url: String,
    /// A file holding the API key (its first line). Takes precedence over --token and
    /// SWITCHBOARD_TOKEN.
    #[arg(long, env = "SWITCHBOARD_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// The API key (create one with `switchboard token create`). Prefer the
    /// SWITCHBOARD_TOKEN variable or --token-file: a key on the command line is visible
    /// to other users of this machine (in `ps`).
    #[arg(
        long,
        env = "SWITCHBOARD_TOKEN",
        value_name = "KEY",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A PEM file of CA certificates to trust for an `https` server, besides the system's
    /// (e.g. a private CA). `SSL_CERT_FILE` names a bundle to use instead of the system's.
    #[arg(long, env = "SWITCHBOARD_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
}

impl RemoteArgs {
    /// The API key, or a one-line explanation of how to give one: the first line of
    /// `--token-file` when given, else `--token` / `SWITCHBOARD_TOKEN`.
    pub(crate) fn token(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.token_file {
            return read_token_file(path);
        }
        match self.token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => Ok(token.to_owned()),
            _ => anyhow::bail!(
                "no API key: set SWITCHBOARD_TOKEN or pass --token-file \
                 (create one with `switchboard token create`)"
            ),
        }
    }

    /// The roots to trust for `https` and `wss`: the system's plus `--ca-cert`.
    /// Installed as the default of every client this process builds.
    pub(crate) fn install_tls(&self) -> anyhow::Result<ClientTls> {
        let tls = match &self.ca_cert {
            Some(path) => ClientTls::with_ca_file(path).context("--ca-cert")?,
            None => ClientTls::system(),
        };
        tls.install_default();
        Ok(tls)
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base_url(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// A Sessions API client for this server and key (installing the TLS roots).
    pub(crate) fn sessions_client(&self) -> anyhow::Result<SessionsClient> {
        let token = self.token()?;
        let tls = self.install_tls()?;
        Ok(SessionsClient::new(self.base_url(), token).with_tls(&tls))
    }

    /// Turns a failed call into one line a person can act on. `what` names the thing the
    /// call was about, for a 404 (e.g. `session session_…`).
    pub(crate) fn explain(&self, error: ApiError, what: &str) -> anyhow::Error {
        let url = self.base_url();
        if let Some(failure) = error.tls_failure() {
            return anyhow::anyhow!("{}", tls_explanation(&failure, url));
        }
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

/// What a failed TLS handshake means and what to do about it, in one line.
pub(crate) fn tls_explanation(failure: &TlsFailure, url: &str) -> String {
    match failure {
        TlsFailure::Untrusted(_) => format!(
            "{failure} (server {url}; to trust a private CA, pass its PEM file with --ca-cert \
             or SWITCHBOARD_CA_CERT)"
        ),
        TlsFailure::Handshake(_) => format!("{failure} (server {url})"),
    }
}

/// The first line of a key file, trimmed; a clear error when the file cannot be read or
/// holds no key.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API key file {}", path.display()))?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(token) => Ok(token.to_owned()),
        None => anyhow::bail!("the API key file {} is empty", path.display()),
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
            token_file: None,
            token: token.map(str::to_owned),
            ca_cert: None,
        }
    }

    #[test]
    fn a_missing_or_blank_token_is_explained() {
        for token in [None, Some(""), Some("  ")] {
            let error = args(token).token().unwrap_err().to_string();
            assert!(error.starts_with("no API key"), "{error}");
        }
        assert_eq!(args(Some("sk-1")).token().ok().as_deref(), Some("sk-1"));
    }

    #[test]
    fn a_token_file_wins_and_its_newline_is_trimmed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("key");
        std::fs::write(&file, "sk-from-file\n")?;
        let mut with_file = args(Some("sk-from-flag"));
        with_file.token_file = Some(file.clone());

        assert_eq!(with_file.token()?, "sk-from-file");
        std::fs::write(&file, "\r\n  sk-crlf  \r\nignored\n")?;
        assert_eq!(with_file.token()?, "sk-crlf");
        Ok(())
    }

    #[test]
    fn an_unreadable_or_empty_token_file_is_a_clear_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut missing = args(Some("sk-from-flag"));
        missing.token_file = Some(dir.path().join("absent"));
        let empty_file = dir.path().join("empty");
        std::fs::write(&empty_file, "\n  \n")?;
        let mut empty = args(None);
        empty.token_file = Some(empty_file);

        let missing = format!("{:#}", missing.token().unwrap_err());
        let empty = format!("{:#}", empty.token().unwrap_err());

        assert!(
            missing.starts_with("cannot read the API key file"),
            "{missing}"
        );
        assert!(missing.contains("No such file"), "{missing}");
        assert!(empty.contains("is empty"), "{empty}");
        Ok(())
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
