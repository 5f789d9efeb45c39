//! In-process limits: one keyed GCRA limiter (governor) per quota.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota as GcraQuota};
use valkyrie_config::Rate;

/// A steady rate and the burst allowed above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub rate: Rate,
    pub burst: NonZeroU32,
}

impl Quota {
    pub fn new(rate: Rate, burst: u32) -> Quota {
        Quota {
            rate,
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        }
    }

    /// Time for one request's worth of capacity to come back: the rate's
    /// period divided by its count, at least one nanosecond.
    pub fn interval(&self) -> Duration {
        let count = u128::from(self.rate.count.max(1));
        let nanos = (self.rate.per.as_nanos() / count).max(1);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Requests per second of the steady rate.
    pub fn per_second(&self) -> f64 {
        self.rate.count as f64 / self.rate.per.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Rejected; the next request may pass after this long.
    Deny(Duration),
}

/// A keyed GCRA limiter for one quota. Keys are 64-bit hashes, so a check
/// allocates only when a key is seen for the first time.
pub struct LocalLimiter {
    limiter: DefaultKeyedRateLimiter<u64>,
    /// Keys held after the last sweep, to decide when shrinking pays.
    len_after_sweep: AtomicUsize,
}

impl LocalLimiter {
    pub fn new(quota: Quota) -> LocalLimiter {
        let gcra = GcraQuota::with_period(quota.interval())
            .expect("the interval is at least one nanosecond")
            .allow_burst(quota.burst);
        LocalLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(gcra),
            len_after_sweep: AtomicUsize::new(0),
        }
    }

    pub fn check(&self, key: u64) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(()) => Decision::Allow,
            Err(not_until) => Decision::Deny(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }

    /// Drops keys whose bucket has refilled, since they are indistinguishable
    /// from new ones, and returns their memory once the table shrank by half.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        let len = self.limiter.len();
        if len < self.len_after_sweep.load(Ordering::Relaxed) / 2 {
            self.limiter.shrink_to_fit();
        }
        self.len_after_sweep.store(len, Ordering::Relaxed);
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(text: &str, burst: u32) -> Quota {
        Quota::new(text.parse().unwrap(), burst)
    }

    #[test]
    fn interval_divides_period() {
        assert_eq!(quota("1000/min", 1).interval(), Duration::from_millis(60));
        assert_eq!(quota("10/sec", 1).interval(), Duration::from_millis(100));
        assert_eq!(quota("60/min", 1).per_second(), 1.0);
    }

    #[test]
    fn burst_then_denied_with_wait() {
        let limiter = LocalLimiter::new(quota("1/hour", 3));
        for _ in 0..3 {
            assert_eq!(limiter.check(7), Decision::Allow);
        }
        match limiter.check(7) {
            Decision::Deny(wait) => {
                assert!(wait > Duration::from_secs(3500), "wait {wait:?}");
                assert!(wait <= Duration::from_secs(3600), "wait {wait:?}");
            }
            Decision::Allow => panic!("the fourth request passed a burst of 3"),
        }
        assert_eq!(
            limiter.check(8),
            Decision::Allow,
            "another key has its own bucket"
        );
    }

    #[test]
    fn sweep_keeps_keys_that_are_not_refilled() {
        let limiter = LocalLimiter::new(quota("1/hour", 2));
        limiter.check(1);
        limiter.check(2);
        limiter.sweep();
        assert_eq!(limiter.len(), 2);
    }
}
