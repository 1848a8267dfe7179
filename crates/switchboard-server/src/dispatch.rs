//! Wake-ups for work polls: one watch channel per environment, bumped whenever work is
//! queued for it, so a waiting long-poll returns the moment there is work.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Per-environment "work was queued" signals.
#[derive(Debug, Default)]
pub(crate) struct Dispatcher {
    environments: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Dispatcher {
    /// Subscribes to an environment's signal. Subscribe before looking for work, so a
    /// queueing that happens in between is not missed.
    pub(crate) fn subscribe(&self, environment_id: &str) -> watch::Receiver<u64> {
        let mut envs = self.environments.lock().expect("dispatcher lock poisoned");
        envs.entry(environment_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes every poll waiting on the environment.
    pub(crate) fn notify(&self, environment_id: &str) {
        let envs = self.environments.lock().expect("dispatcher lock poisoned");
        if let Some(tx) = envs.get(environment_id) {
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
