//! Which live connections each stored credential opened, so revoking the credential
//! closes them: viewer sockets and worker event streams register the credential they
//! authenticated with and end (close code 4003) when it is revoked. Revocations made by
//! this server (sign-out) act at once; those made elsewhere (`switchboard token revoke`
//! on the store, another server) are found by a sweep every
//! [`crate::ServerOptions::revocation_check_interval`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_store::{Role, Store, StoreError};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The key connections opened through a share of `session_id` with `owner_id` at `role`
/// watch: ending the share, or changing its role, closes them (they reconnect with the
/// new role, if any). Credential ids never contain `:`, so the two kinds of key cannot
/// meet.
pub(crate) fn share_key(session_id: &str, owner_id: &str, role: Role) -> String {
    format!("{}:{}", share_prefix(session_id, owner_id), role.as_str())
}

/// What names every connection opened through a share of `session_id` with `owner_id`,
/// whatever its role, for [`Revocations::revoke`] (here and, announced, on other nodes).
pub(crate) fn share_prefix(session_id: &str, owner_id: &str) -> String {
    format!("share:{session_id}:{owner_id}")
}

/// The parts of a [`share_prefix`] (`None` for anything else, a whole key included).
fn parse_share_prefix(key: &str) -> Option<(&str, &str)> {
    let (session_id, owner_id) = key.strip_prefix("share:")?.split_once(':')?;
    (!owner_id.contains(':')).then_some((session_id, owner_id))
}

/// The parts of a [`share_key`].
fn parse_share_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.strip_prefix("share:")?.splitn(3, ':');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

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

    /// Closes every connection opened with credential `id`; given a [`share_prefix`],
    /// every connection opened through that share, whatever its role.
    pub(crate) fn revoke(&self, id: &str) {
        if let Some((session_id, owner_id)) = parse_share_prefix(id) {
            return self.revoke_share(session_id, owner_id);
        }
        if let Some(entry) = self.lock().get(id) {
            entry.revoked.cancel();
        }
    }

    /// Closes every connection opened through a share of `session_id` with `owner_id`,
    /// whatever its role.
    fn revoke_share(&self, session_id: &str, owner_id: &str) {
        for (key, entry) in self.lock().iter() {
            if parse_share_key(key).is_some_and(|(s, o, _)| s == session_id && o == owner_id) {
                entry.revoked.cancel();
            }
        }
    }

    /// True when no connection is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Checks every credential with open connections against the store and closes those
    /// of credentials that are revoked, expired or gone, and those opened through a
    /// share that has ended or changed role.
    pub(crate) async fn sweep(&self, store: &dyn Store, now: i64) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            if let Some((session_id, owner_id, role)) = parse_share_key(&id) {
                match store.session_share(session_id, owner_id).await {
                    Ok(now_role) if now_role.map(Role::as_str) == Some(role) => {}
                    Ok(_) => {
                        tracing::info!(session = %session_id, owner = %owner_id, "share ended: closing its connections");
                        self.revoke(&id);
                    }
                    Err(e) => tracing::warn!(error = ?e, "cannot check a share"),
                }
                continue;
            }
            let dead = match store.credential(&id).await {
                Ok(c) => !c.is_live(now),
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
