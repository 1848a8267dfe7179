//! Latency histograms and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram records exactly; anything slower counts as this.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Latencies in nanoseconds, three significant digits, in fixed memory.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    /// Records one latency.
    pub(crate) fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Percentiles in microseconds.
    pub(crate) fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            p50_us: us(self.0.value_at_quantile(0.50)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
            mean_us: self.0.mean() / 1_000.0,
        }
    }
}

/// A latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    /// Samples recorded.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Slowest sample.
    pub(crate) max_us: f64,
    /// Mean.
    pub(crate) mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_microseconds() {
        let mut l = Latencies::default();
        for i in 1..=1000u64 {
            l.record(i * 1_000);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn empty_histogram_summarizes_to_zero() {
        assert_eq!(Latencies::default().summary().count, 0);
    }
}
