//! Counters and gauges, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The server's metrics. Counters only grow; gauges go up and down.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) sessions_created: AtomicU64,
    pub(crate) events_appended: AtomicU64,
    pub(crate) events_delivered: AtomicU64,
    pub(crate) work_dispatched: AtomicU64,
    pub(crate) worker_connections: AtomicI64,
    pub(crate) viewer_connections: AtomicI64,
    pub(crate) long_polls_waiting: AtomicI64,
    pub(crate) notifications_sent: AtomicU64,
    pub(crate) notifications_failed: AtomicU64,
    pub(crate) notifications_dropped: AtomicU64,
    pub(crate) notify_lookups: AtomicU64,
}

/// Increments a gauge for as long as the guard lives.
pub(crate) struct GaugeGuard<'a>(&'a AtomicI64);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A notification reached its webhook, ntfy topic or push service.
    pub(crate) fn notification_sent(&self) {
        Self::add(&self.notifications_sent, 1);
    }

    /// A notification was refused or could not be delivered after its retries.
    pub(crate) fn notification_failed(&self) {
        Self::add(&self.notifications_failed, 1);
    }

    /// The notifier read an owner's channels and subscriptions from the store.
    pub(crate) fn notify_lookup(&self) {
        Self::add(&self.notify_lookups, 1);
    }

    /// Renders everything; `live_sessions` comes from the hub.
    pub(crate) fn render(&self, live_sessions: usize) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed).to_string();
        metric(
            "switchboard_sessions_created_total",
            "counter",
            "Sessions created.",
            c(&self.sessions_created),
        );
        metric(
            "switchboard_sessions_live",
            "gauge",
            "Sessions with a live channel in memory.",
            live_sessions.to_string(),
        );
        metric(
            "switchboard_events_appended_total",
            "counter",
            "Events committed to session logs.",
            c(&self.events_appended),
        );
        metric(
            "switchboard_events_delivered_total",
            "counter",
            "Events written to worker and viewer connections.",
            c(&self.events_delivered),
        );
        metric(
            "switchboard_work_dispatched_total",
            "counter",
            "Work items handed to polls.",
            c(&self.work_dispatched),
        );
        metric(
            "switchboard_worker_connections",
            "gauge",
            "Connected worker streams.",
            g(&self.worker_connections),
        );
        metric(
            "switchboard_viewer_connections",
            "gauge",
            "Connected viewer streams.",
            g(&self.viewer_connections),
        );
        metric(
            "switchboard_long_polls_waiting",
            "gauge",
            "Work polls waiting for work.",
            g(&self.long_polls_waiting),
        );
        for (name, help, counter) in [
            ("sent", "delivered", &self.notifications_sent),
            (
                "failed",
                "refused or not delivered after retries",
                &self.notifications_failed,
            ),
            (
                "dropped",
                "dropped because the notifier's queue was full",
                &self.notifications_dropped,
            ),
        ] {
            metric(
                &format!("switchboard_notifications_{name}_total"),
                "counter",
                &format!("Notifications {help}."),
                c(counter),
            );
        }
        metric(
            "switchboard_notify_owner_lookups_total",
            "counter",
            "Store reads of an owner's notification channels by the notifier (owners known to \
             have none set are not read again).",
            c(&self.notify_lookups),
        );
        out
    }
}
