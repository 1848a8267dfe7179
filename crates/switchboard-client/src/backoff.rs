//! Backoff arithmetic shared by the clients: exponential delays with a cap, the two kinds
//! of jitter the official client uses (a relative ±fraction for reconnects and init
//! retries, an absolute "up to N ms" for uploads), and the guard on reconnecting at once
//! after a server said it was going away.

use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

/// How often a connection may be retried at once after the server went away (a 1001
/// close, or an SSE stream that ended cleanly); more often than that, the usual backoff
/// applies, so a server that keeps closing at once cannot make a client spin.
pub(crate) const AT_ONCE_PERIOD: Duration = Duration::from_secs(1);

/// Allows an immediate retry at most once per [`AT_ONCE_PERIOD`].
#[derive(Debug, Default)]
pub(crate) struct AtOnce {
    last: Option<Instant>,
}

impl AtOnce {
    /// True (and noted) when no immediate retry happened within the period.
    pub(crate) fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < AT_ONCE_PERIOD)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// `base × 2^attempt`, at most `max` (attempt 0 is the first retry).
pub(crate) fn exponential(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max)
}

/// `delay` scaled by a random factor in `1 ± fraction` (0.25 gives ±25 %).
pub(crate) fn relative_jitter(delay: Duration, fraction: f64) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    if fraction == 0.0 {
        return delay;
    }
    let factor = 1.0 + rand::rng().random_range(-fraction..=fraction);
    delay.mul_f64(factor.max(0.0))
}

/// `delay` plus a random extra of at most `max_extra`.
pub(crate) fn additive_jitter(delay: Duration, max_extra: Duration) -> Duration {
    if max_extra.is_zero() {
        return delay;
    }
    delay + max_extra.mul_f64(rand::rng().random_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_delays_double_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(4);
        let delays: Vec<u128> = (0..6)
            .map(|n| exponential(n, base, max).as_millis())
            .collect();

        assert_eq!(delays, vec![500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(exponential(u32::MAX, base, max), max);
    }

    #[test]
    fn an_immediate_retry_is_allowed_once_per_period() {
        let mut at_once = AtOnce::default();
        let start = Instant::now();

        assert!(at_once.allow_at(start));
        assert!(!at_once.allow_at(start + AT_ONCE_PERIOD / 2));
        assert!(at_once.allow_at(start + AT_ONCE_PERIOD));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let delay = Duration::from_secs(4);
        for _ in 0..100 {
            let relative = relative_jitter(delay, 0.25);
            assert!(relative >= Duration::from_secs(3) && relative <= Duration::from_secs(5));
            let additive = additive_jitter(delay, Duration::from_millis(500));
            assert!(additive >= delay && additive <= delay + Duration::from_millis(500));
        }
        assert_eq!(relative_jitter(delay, 0.0), delay);
        assert_eq!(additive_jitter(delay, Duration::ZERO), delay);
    }
}
