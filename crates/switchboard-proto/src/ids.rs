//! Identifiers and their validation (docs/PROTOCOL.md §3.5).

use std::fmt;

/// True when `s` matches `^[a-zA-Z0-9_-]+$`, the pattern the client enforces on every id
/// it puts into a path. Anything else (dots, slashes, percent signs) is never a valid id.
pub fn is_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A session id without its costume.
///
/// A session is handed out as `cse_<body>` (code sessions, work items) and as
/// `session_<body>` (Sessions API); the server must accept either wherever it issued the
/// other. This type holds only the body and renders both costumes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

/// The prefix of the code-session costume.
pub const CSE_PREFIX: &str = "cse_";
/// The prefix of the compat costume.
pub const SESSION_PREFIX: &str = "session_";

impl SessionId {
    /// Wraps a bare body. The body must be a safe id without a costume prefix.
    pub fn from_body(body: impl Into<String>) -> Option<Self> {
        let body = body.into();
        (is_safe_id(&body) && body.len() >= 4).then_some(Self(body))
    }

    /// Parses `cse_<body>` or `session_<body>`; anything else is not a session id.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s
            .strip_prefix(CSE_PREFIX)
            .or_else(|| s.strip_prefix(SESSION_PREFIX))?;
        Self::from_body(body)
    }

    /// The body shared by both costumes.
    pub fn body(&self) -> &str {
        &self.0
    }

    /// The `cse_<body>` costume.
    pub fn cse(&self) -> String {
        format!("{CSE_PREFIX}{}", self.0)
    }

    /// The `session_<body>` costume.
    pub fn compat(&self) -> String {
        format!("{SESSION_PREFIX}{}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.compat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids_reject_traversal_and_separators() {
        assert!(is_safe_id("env_0123-abc"));
        for bad in ["", "..", "a/b", "a.b", "a%2Fb", "a b", "é", "a\nb"] {
            assert!(!is_safe_id(bad), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn both_costumes_parse_to_the_same_session() {
        let a = SessionId::parse("cse_abcd1234").unwrap();
        let b = SessionId::parse("session_abcd1234").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cse(), "cse_abcd1234");
        assert_eq!(a.compat(), "session_abcd1234");
        assert!(SessionId::parse("abcd1234").is_none());
        assert!(SessionId::parse("cse_../x").is_none());
        assert!(SessionId::parse("cse_ab").is_none());
    }
}
