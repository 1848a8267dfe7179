//! A small in-memory token bucket per client address, for sign-in and pairing attempts
//! (`/web/login`, `/web/pair`): guessing keys or pairing links from one address is slow,
//! and a flood answers 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most; past this, buckets that have refilled are forgotten,
/// and if that is not enough, new addresses share one overflow bucket: a flood of
/// addresses neither grows the map nor resets anyone's limit.
const MAX_ADDRESSES: usize = 10_000;

/// The bucket new addresses share while the map is full.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The bucket of an address: IPv4 addresses each have their own; IPv6 ones share one
/// per /64, the block one subscriber usually holds whole.
fn bucket_of(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Token buckets keyed by client address.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    burst: f64,
    refill: Duration,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `burst` attempts at once, then one more every `refill`.
    pub(crate) fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `addr`: `Ok` or `Err(seconds until the next one)`.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<(), u64> {
        self.check_at(addr, Instant::now())
    }

    fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        let per_sec = 1.0 / self.refill.as_secs_f64();
        let mut addr = bucket_of(addr);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&addr) {
            let burst = self.burst;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
            if buckets.len() >= MAX_ADDRESSES {
                addr = OVERFLOW;
            }
        }
        let (tokens, at) = buckets.entry(addr).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / per_sec;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_addresses_never_resets_a_drained_bucket() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limiter.check_at(a, t0), Ok(()));
        assert!(limiter.check_at(a, t0).is_err());
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            let _ = limiter.check_at(IpAddr::V4((0x0a00_0000 + i).into()), t0);
        }
        assert!(
            limiter.check_at(a, t0).is_err(),
            "still limited after the flood"
        );
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_ADDRESSES + 1);
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_bucket() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limiter.check_at("2001:db8::1".parse().unwrap(), t0), Ok(()));
        assert!(limiter
            .check_at("2001:db8::ffff:2".parse().unwrap(), t0)
            .is_err());
        assert_eq!(
            limiter.check_at("2001:db8:0:1::1".parse().unwrap(), t0),
            Ok(())
        );
    }

    #[test]
    fn a_burst_then_one_per_refill_per_address() {
        let limiter = RateLimiter::new(3, Duration::from_secs(10));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(a, t0), Ok(()));
        }
        assert_eq!(limiter.check_at(a, t0), Err(10));
        assert_eq!(
            limiter.check_at(b, t0),
            Ok(()),
            "another address has its own bucket"
        );
        assert_eq!(limiter.check_at(a, t0 + Duration::from_secs(4)), Err(6));
        assert_eq!(limiter.check_at(a, t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(limiter.check_at(a, t0 + Duration::from_secs(10)), Err(10));
    }

    #[test]
    fn the_map_stays_bounded() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 0..(MAX_ADDRESSES as u32 + 50) {
            let _ = limiter.check_at(IpAddr::from(n.to_be_bytes()), t0);
        }
        // At most one more: the overflow bucket the newest addresses share.
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_ADDRESSES + 1);
    }
}
