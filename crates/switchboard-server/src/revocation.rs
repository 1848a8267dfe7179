//! Which live connections each stored credential opened, so revoking the credential
//! closes them: viewer sockets and worker event streams register the credential they
//! authenticated with and end (close code 4003) when it is revoked. Revocations made by
//! this server (sign-out) act at once; those made elsewhere (`switchboard token revoke`
//! on the store, another server) are found by a sweep every
//! [`crate::ServerOptions::revocation_check_interval`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_store::{Store, StoreError};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The registry. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Revocations {
    live: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    revoked: CancellationToken,
    users: usize,
}

/// One connection's registration; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Watch {
    registry: Revocations,
    id: String,
    revoked: CancellationToken,
}

impl Watch {
    /// Resolves when the credential is revoked.
    pub(crate) fn revoked(&self) -> WaitForCancellationFuture<'_> {
        self.revoked.cancelled()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        if let Some(entry) = live.get_mut(&self.id) {
            entry.users -= 1;
            if entry.users == 0 {
                live.remove(&self.id);
            }
        }
    }
}

/// Resolves when `watch` (if any) is revoked; never otherwise.
pub(crate) async fn revoked(watch: Option<&Watch>) {
    match watch {
        Some(w) => w.revoked().await,
        None => std::future::pending().await,
    }
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection opened with credential `id`.
    pub(crate) fn watch(&self, id: &str) -> Watch {
        let mut live = self.lock();
        let entry = live.entry(id.to_string()).or_insert_with(|| Entry {
            revoked: CancellationToken::new(),
            users: 0,
        });
        entry.users += 1;
        Watch {
            registry: self.clone(),
            id: id.to_string(),
            revoked: entry.revoked.clone(),
        }
    }

    /// Closes every connection opened with credential `id`.
    pub(crate) fn revoke(&self, id: &str) {
        if let Some(entry) = self.lock().get(id) {
            entry.revoked.cancel();
        }
    }

    /// True when no connection is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Checks every credential with open connections against the store and closes those
    /// of credentials that are revoked, expired or gone.
    pub(crate) async fn sweep(&self, store: &dyn Store, now: i64) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            let dead = match store.credential(&id).await {
                Ok(c) => c.revoked_at.is_some() || c.expires_at.is_some_and(|exp| exp <= now),
                Err(StoreError::NotFound) => true,
                Err(e) => {
                    tracing::warn!(error = ?e, "cannot check a credential for revocation");
                    false
                }
            };
            if dead {
                tracing::info!(credential = %id, "credential revoked: closing its connections");
                self.revoke(&id);
            }
        }
    }
}
