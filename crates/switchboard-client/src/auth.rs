//! Bearer tokens that can change while a client is running (docs/PROTOCOL.md §11).
//!
//! A [`TokenSource`] holds the current token and, optionally, a hook that produces a new
//! one. The Environments and Sessions clients read it on every request and call the hook
//! once after a 401 (bridgeApi.ts `withOAuthRetry`); the ingress transport re-reads it on
//! every reconnect and every POST, which is how a bridge child picks up a rotated token.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;

/// The refresh hook: given the token that was just rejected, produce a new one, or `None`
/// when there is nothing to refresh (an API key, say), which makes the 401 final.
pub type RefreshFn = Arc<dyn Fn(String) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// The current bearer token, shared by every clone, plus an optional refresh hook.
///
/// Cloning is cheap and clones share the token: [`set`](Self::set) on one is seen by all.
#[derive(Clone)]
pub struct TokenSource {
    token: Arc<RwLock<String>>,
    refresh: Option<RefreshFn>,
}

impl TokenSource {
    /// A fixed token without a refresh hook; a 401 is final.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: Arc::new(RwLock::new(token.into())),
            refresh: None,
        }
    }

    /// A token with a refresh hook written as an async closure.
    ///
    /// ```
    /// # use switchboard_client::TokenSource;
    /// let source = TokenSource::with_refresh("old", |stale: String| async move {
    ///     (stale == "old").then(|| "new".to_owned())
    /// });
    /// assert_eq!(source.token(), "old");
    /// ```
    pub fn with_refresh<F, Fut>(token: impl Into<String>, refresh: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        let hook: RefreshFn = Arc::new(move |stale| refresh(stale).boxed());
        Self::with_refresh_fn(token, hook)
    }

    /// A token with an already boxed refresh hook.
    pub fn with_refresh_fn(token: impl Into<String>, refresh: RefreshFn) -> Self {
        Self {
            token: Arc::new(RwLock::new(token.into())),
            refresh: Some(refresh),
        }
    }

    /// The current token.
    pub fn token(&self) -> String {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the token, for every clone of this source.
    pub fn set(&self, token: impl Into<String>) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = token.into();
    }

    /// Whether a refresh hook is installed.
    pub fn can_refresh(&self) -> bool {
        self.refresh.is_some()
    }

    /// Asks for a new token after `stale` was rejected.
    ///
    /// Returns true when a different token is now current: either the hook produced one
    /// (it is stored), or another caller already replaced `stale` while this request was
    /// in flight (the hook is then not called again). Returns false when there is no hook
    /// or the hook gave up.
    pub async fn refresh(&self, stale: &str) -> bool {
        if self.token() != stale {
            return true;
        }
        let Some(hook) = &self.refresh else {
            return false;
        };
        match hook(stale.to_owned()).await {
            Some(fresh) => {
                self.set(fresh);
                true
            }
            None => false,
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token itself is a credential and stays out of logs.
        f.debug_struct("TokenSource")
            .field("token", &"<redacted>")
            .field("refresh", &self.refresh.is_some())
            .finish()
    }
}

impl From<String> for TokenSource {
    fn from(token: String) -> Self {
        Self::new(token)
    }
}

impl From<&str> for TokenSource {
    fn from(token: &str) -> Self {
        Self::new(token)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn refresh_stores_the_new_token_in_every_clone() {
        let source = TokenSource::with_refresh("old", |_stale| async { Some("new".to_owned()) });
        let clone = source.clone();

        assert!(source.refresh("old").await);

        assert_eq!(clone.token(), "new");
    }

    #[tokio::test]
    async fn refresh_without_a_hook_fails() {
        let source = TokenSource::new("key");
        assert!(!source.refresh("key").await);
        assert_eq!(source.token(), "key");
    }

    #[tokio::test]
    async fn a_token_replaced_meanwhile_counts_as_refreshed_without_calling_the_hook() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let source = TokenSource::with_refresh("old", move |_stale| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { None }
        });
        source.set("already-new");

        assert!(source.refresh("old").await);

        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let text = format!("{:?}", TokenSource::new("secret-value"));
        assert!(!text.contains("secret-value"));
    }
}
