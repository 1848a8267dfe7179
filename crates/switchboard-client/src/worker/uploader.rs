//! The background writers of a worker transport: a serial batch uploader (events,
//! internal events and delivery updates) and the coalescing state uploader.
//!
//! Both keep what they were given until the server accepted it, so that after the
//! transport ends, whatever was not accepted can be handed to its successor
//! ([`WorkerTransport::take_unsent`](super::WorkerTransport::take_unsent)) instead of
//! being lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value};
use switchboard_proto::code::{WorkerStateRequest, WorkerStatus};
use tokio::sync::{watch, Notify};

use super::Core;
use crate::error::{ApiError, Result};

/// Encodes one batch into a request body, given the worker epoch.
pub(super) type BuildBody<T> = fn(u64, Vec<T>) -> serde_json::Result<Vec<u8>>;

/// A queue drained by one task that POSTs batches, one request at a time, in order, and
/// retries each batch until it is accepted or the transport ends (SerialBatchEventUploader).
pub(super) struct Uploader<T> {
    /// What it uploads, for logs.
    name: &'static str,
    /// The path below the session URL.
    path: &'static str,
    max_batch: usize,
    max_batch_bytes: usize,
    /// Writers of [`enqueue_wait`](Self::enqueue_wait) wait while this many are queued.
    capacity: usize,
    build: BuildBody<T>,
    queue: Mutex<Queue<T>>,
    wake: Notify,
    space: Notify,
    /// How many items were accepted so far, for [`flushed`](Self::flushed).
    accepted: watch::Sender<u64>,
}

struct Queue<T> {
    /// Items with their encoded size, oldest first; the head batch stays here while it is
    /// in flight.
    items: VecDeque<(T, usize)>,
    /// How many items were ever queued.
    enqueued: u64,
}

impl<T: Serialize + Clone + Send + Sync + 'static> Uploader<T> {
    pub(super) fn new(
        name: &'static str,
        path: &'static str,
        max_batch: usize,
        max_batch_bytes: usize,
        capacity: usize,
        build: BuildBody<T>,
    ) -> Self {
        Self {
            name,
            path,
            max_batch: max_batch.max(1),
            max_batch_bytes,
            capacity: capacity.max(1),
            build,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                enqueued: 0,
            }),
            wake: Notify::new(),
            space: Notify::new(),
            accepted: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `items` regardless of the capacity.
    pub(super) fn enqueue(&self, items: Vec<T>) {
        if items.is_empty() {
            return;
        }
        let mut queue = self.lock();
        for item in items {
            let size = encoded_len(&item);
            queue.items.push_back((item, size));
            queue.enqueued += 1;
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Queues `items` one by one, waiting for room while the queue is at capacity.
    pub(super) async fn enqueue_wait(&self, core: &Core, items: Vec<T>) -> Result<()> {
        for item in items {
            let size = encoded_len(&item);
            let mut item = Some(item);
            while let Some(pending) = item.take() {
                let room = self.space.notified();
                tokio::pin!(room);
                // Registering before looking at the queue means a wake-up between the
                // look and the wait is not missed.
                room.as_mut().enable();
                {
                    let mut queue = self.lock();
                    if queue.items.len() < self.capacity {
                        queue.items.push_back((pending, size));
                        queue.enqueued += 1;
                        drop(queue);
                        self.wake.notify_one();
                        break;
                    }
                }
                item = Some(pending);
                tokio::select! {
                    () = core.cancel.cancelled() => return Err(core.close_error()),
                    () = room => {}
                }
            }
        }
        Ok(())
    }

    /// Waits until every item queued before this call was accepted.
    pub(super) async fn flushed(&self, core: &Core) -> Result<()> {
        let target = self.lock().enqueued;
        let mut accepted = self.accepted.subscribe();
        tokio::select! {
            reached = accepted.wait_for(|n| *n >= target) => {
                reached.map(drop).map_err(|_| core.close_error())
            }
            () = core.cancel.cancelled() => {
                if *self.accepted.borrow() >= target {
                    Ok(())
                } else {
                    Err(core.close_error())
                }
            }
        }
    }

    /// Removes and returns everything not yet accepted. Meant for after the task ended.
    pub(super) fn take_unsent(&self) -> Vec<T> {
        self.lock().items.drain(..).map(|(item, _)| item).collect()
    }

    /// The next batch: at most `max_batch` items and `max_batch_bytes` bytes, but always
    /// at least one item.
    fn next_batch(&self) -> Vec<T> {
        let queue = self.lock();
        let mut bytes = 0;
        let mut batch = Vec::new();
        for (item, size) in queue.items.iter().take(self.max_batch) {
            if !batch.is_empty() && bytes + size > self.max_batch_bytes {
                break;
            }
            bytes += size;
            batch.push(item.clone());
        }
        batch
    }

    fn accept(&self, count: usize) {
        let mut queue = self.lock();
        let count = count.min(queue.items.len());
        queue.items.drain(..count);
        drop(queue);
        self.accepted.send_modify(|n| *n += count as u64);
        self.space.notify_waiters();
    }

    /// The task: upload batches until the transport ends.
    pub(super) async fn run(self: Arc<Self>, core: Arc<Core>) {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let batch = self.next_batch();
            if batch.is_empty() {
                tokio::select! {
                    () = core.cancel.cancelled() => return,
                    () = wake => continue,
                }
            }
            let count = batch.len();
            let body = match (self.build)(core.epoch, batch) {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    // JSON values always encode; this is unreachable in practice, and
                    // retrying could never succeed, so the batch is dropped.
                    tracing::error!(uploader = self.name, error = %e, "batch not encodable; dropped");
                    self.accept(count);
                    continue;
                }
            };
            if !self.upload(&core, body).await {
                return;
            }
            self.accept(count);
        }
    }

    /// POSTs one batch until it is accepted (true) or the transport ends (false).
    async fn upload(&self, core: &Core, body: Bytes) -> bool {
        let mut attempt: u32 = 0;
        loop {
            let timeout = core.timings.request_timeout;
            match core
                .send(Method::POST, self.path, Some(body.clone()), timeout)
                .await
            {
                Ok(_) => return true,
                Err(ApiError::Superseded | ApiError::Closed) => return false,
                Err(e) => {
                    let delay = core.retry_delay(attempt, &e);
                    attempt = attempt.saturating_add(1);
                    tracing::debug!(uploader = self.name, error = %e, attempt, ?delay, "upload failed; retrying");
                    tokio::select! {
                        () = core.cancel.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

fn encoded_len<T: Serialize>(item: &T) -> usize {
    serde_json::to_vec(item).map_or(0, |bytes| bytes.len())
}

/// A pending `PUT /worker` patch, before the epoch is added.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StatePatch {
    pub(crate) worker_status: Option<WorkerStatus>,
    pub(crate) requires_action_details: Option<Option<Value>>,
    pub(crate) external_metadata: Option<Map<String, Value>>,
    pub(crate) internal_metadata: Option<Map<String, Value>>,
}

impl StatePatch {
    /// True when the patch would change nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.worker_status.is_none()
            && self.requires_action_details.is_none()
            && self.external_metadata.is_none()
            && self.internal_metadata.is_none()
    }

    /// Folds a newer patch into this one, as WorkerStateUploader coalesces: top-level
    /// fields last-wins, metadata objects merged one level deep with the newer value of
    /// each key winning. A `null` value is kept, not applied: in the patch it means
    /// "delete this key" and the server has to see it (which is why this is not
    /// `merge_patch`, which would drop it).
    pub(crate) fn absorb(&mut self, newer: StatePatch) {
        if newer.worker_status.is_some() {
            self.worker_status = newer.worker_status;
        }
        if newer.requires_action_details.is_some() {
            self.requires_action_details = newer.requires_action_details;
        }
        merge_one_level(&mut self.external_metadata, newer.external_metadata);
        merge_one_level(&mut self.internal_metadata, newer.internal_metadata);
    }

    fn into_request(self, worker_epoch: u64) -> WorkerStateRequest {
        WorkerStateRequest {
            worker_epoch,
            worker_status: self.worker_status,
            requires_action_details: self.requires_action_details,
            external_metadata: self.external_metadata.map(Value::Object),
            internal_metadata: self.internal_metadata.map(Value::Object),
        }
    }
}

fn merge_one_level(target: &mut Option<Map<String, Value>>, newer: Option<Map<String, Value>>) {
    let Some(newer) = newer else { return };
    match target {
        Some(target) => target.extend(newer),
        None => *target = Some(newer),
    }
}

/// Sends state patches one `PUT /worker` at a time, coalescing whatever is reported while
/// one is in flight or being retried into the next one.
pub(super) struct StateUploader {
    pending: Mutex<Pending>,
    wake: Notify,
    /// The generation of the newest patch the server accepted.
    accepted: watch::Sender<u64>,
}

#[derive(Default)]
struct Pending {
    patch: Option<StatePatch>,
    /// Incremented with every report.
    generation: u64,
}

impl StateUploader {
    pub(super) fn new() -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            accepted: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a patch, folded into any patch still waiting.
    pub(super) fn report(&self, patch: StatePatch) {
        if patch.is_empty() {
            return;
        }
        let mut pending = self.lock();
        match &mut pending.patch {
            Some(waiting) => waiting.absorb(patch),
            None => pending.patch = Some(patch),
        }
        pending.generation += 1;
        drop(pending);
        self.wake.notify_one();
    }

    /// Waits until every patch reported before this call was accepted.
    pub(super) async fn flushed(&self, core: &Core) -> Result<()> {
        let target = self.lock().generation;
        let mut accepted = self.accepted.subscribe();
        tokio::select! {
            reached = accepted.wait_for(|n| *n >= target) => {
                reached.map(drop).map_err(|_| core.close_error())
            }
            () = core.cancel.cancelled() => {
                if *self.accepted.borrow() >= target {
                    Ok(())
                } else {
                    Err(core.close_error())
                }
            }
        }
    }

    /// Removes and returns the patch not yet accepted, if any. Meant for after the task
    /// ended.
    pub(super) fn take_unsent(&self) -> Option<StatePatch> {
        self.lock().patch.take()
    }

    /// The task: PUT patches until the transport ends.
    pub(super) async fn run(self: Arc<Self>, core: Arc<Core>) {
        let mut attempt: u32 = 0;
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let taken = {
                let mut pending = self.lock();
                pending.patch.take().map(|p| (p, pending.generation))
            };
            let Some((patch, generation)) = taken else {
                tokio::select! {
                    () = core.cancel.cancelled() => return,
                    () = wake => continue,
                }
            };
            let body = match serde_json::to_vec(&patch.clone().into_request(core.epoch)) {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    tracing::error!(error = %e, "state patch not encodable; dropped");
                    continue;
                }
            };
            let timeout = core.timings.request_timeout;
            match core.send(Method::PUT, "/worker", Some(body), timeout).await {
                Ok(_) => {
                    attempt = 0;
                    self.accepted.send_modify(|n| *n = (*n).max(generation));
                }
                Err(e) => {
                    // The failed patch goes back under anything reported meanwhile, so the
                    // newer values still win when both are sent together.
                    {
                        let mut pending = self.lock();
                        let mut merged = patch;
                        if let Some(newer) = pending.patch.take() {
                            merged.absorb(newer);
                        }
                        pending.patch = Some(merged);
                    }
                    if matches!(e, ApiError::Superseded | ApiError::Closed) {
                        return;
                    }
                    let delay = core.retry_delay(attempt, &e);
                    attempt = attempt.saturating_add(1);
                    tracing::debug!(error = %e, attempt, ?delay, "state update failed; retrying");
                    tokio::select! {
                        () = core.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn patches_coalesce_last_wins_and_keep_nulls_one_level_deep() {
        let mut older = StatePatch {
            worker_status: Some(WorkerStatus::RequiresAction),
            requires_action_details: Some(Some(json!({"tool_name": "Bash"}))),
            external_metadata: Some(object(json!({
                "pending_action": {"tool_name": "Bash"},
                "model": "m1",
                "automation_state": {"enabled": true, "phase": "standby"}
            }))),
            internal_metadata: None,
        };
        let newer = StatePatch {
            worker_status: Some(WorkerStatus::Running),
            requires_action_details: Some(None),
            external_metadata: Some(object(json!({
                "pending_action": null,
                "automation_state": {"enabled": false}
            }))),
            internal_metadata: Some(object(json!({"cumulative_cost_usd": 1.5}))),
        };

        older.absorb(newer);

        let body = serde_json::to_value(older.into_request(7)).unwrap_or_default();
        assert_eq!(
            body,
            json!({
                "worker_epoch": 7,
                "worker_status": "running",
                "requires_action_details": null,
                "external_metadata": {
                    "pending_action": null,
                    "model": "m1",
                    "automation_state": {"enabled": false}
                },
                "internal_metadata": {"cumulative_cost_usd": 1.5}
            })
        );
    }

    #[test]
    fn absent_fields_of_a_newer_patch_leave_older_values_alone() {
        let mut older = StatePatch {
            worker_status: Some(WorkerStatus::Idle),
            requires_action_details: Some(None),
            ..StatePatch::default()
        };

        older.absorb(StatePatch {
            external_metadata: Some(object(json!({"task_summary": null}))),
            ..StatePatch::default()
        });

        assert_eq!(older.worker_status, Some(WorkerStatus::Idle));
        assert_eq!(older.requires_action_details, Some(None));
        assert!(older.external_metadata.is_some());
    }
}
