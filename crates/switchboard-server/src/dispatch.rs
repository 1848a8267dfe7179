//! Wake-ups for work polls: one watch channel per environment, bumped whenever work is
//! queued for it, so a waiting long-poll returns the moment there is work. With several
//! nodes, queueing also wakes the polls waiting on the other nodes (see `cluster`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Per-environment "work was queued" signals.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    environments: Mutex<HashMap<String, watch::Sender<u64>>>,
    cluster: Arc<crate::log::cluster::Cluster>,
}

impl Dispatcher {
    pub(crate) fn new(cluster: Arc<crate::log::cluster::Cluster>) -> Self {
        Self {
            environments: Mutex::default(),
            cluster,
        }
    }

    /// Subscribes to an environment's signal. Subscribe before looking for work, so a
    /// queueing that happens in between is not missed.
    pub(crate) fn subscribe(&self, environment_id: &str) -> watch::Receiver<u64> {
        let mut envs = self.environments.lock().expect("dispatcher lock poisoned");
        envs.entry(environment_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes every poll waiting on the environment, on every node.
    pub(crate) fn notify(&self, environment_id: &str) {
        self.wake_local(environment_id);
        self.cluster
            .announce(crate::log::cluster::Announcement::WorkQueued(
                environment_id,
            ));
    }

    /// Wakes the polls waiting on the environment on this node.
    pub(crate) fn wake_local(&self, environment_id: &str) {
        let envs = self.environments.lock().expect("dispatcher lock poisoned");
        if let Some(tx) = envs.get(environment_id) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes every poll of this node (they look for work again).
    pub(crate) fn wake_all(&self) {
        let envs = self.environments.lock().expect("dispatcher lock poisoned");
        for tx in envs.values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Forgets environments nobody waits on.
    pub(crate) fn sweep(&self) {
        self.environments
            .lock()
            .expect("dispatcher lock poisoned")
            .retain(|_, tx| tx.receiver_count() > 0);
    }
}
