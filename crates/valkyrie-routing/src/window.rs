//! Sliding-window statistics for the metrics that describe "now": latency
//! quantiles over the last minute and the request rate over the last 10 s.
//!
//! Writers add to per-slot atomic counters, so recording never takes a lock.
//! A slot is reused when its time comes round again; the writer that first
//! sees the new period clears it. A write racing with that clear can be lost,
//! which moves a quantile by one sample at most.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Latency buckets grow by 4% each, from 100 ns up; about 620 buckets reach 1000 s.
const GROWTH: f64 = 1.04;
const FIRST_BUCKET_NS: f64 = 100.0;
const BUCKETS: usize = 620;

/// Seconds per slot and slots kept for the latency window.
const LATENCY_SLOT_SECONDS: u64 = 10;
const LATENCY_SLOTS: usize = 6;

struct LatencySlot {
    period: AtomicU64,
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
}

/// Latency quantiles over the last minute, in 10-second slots.
pub struct SlidingQuantiles {
    epoch: Instant,
    slots: Vec<LatencySlot>,
}

fn bucket_of(nanos: u64) -> usize {
    let value = nanos as f64;
    if value <= FIRST_BUCKET_NS {
        return 0;
    }
    let index = ((value / FIRST_BUCKET_NS).ln() / GROWTH.ln()).ceil() as usize;
    index.min(BUCKETS - 1)
}

/// Returns the upper bound of a bucket in seconds.
fn bucket_upper_seconds(index: usize) -> f64 {
    FIRST_BUCKET_NS * GROWTH.powi(index as i32) / 1e9
}

impl Default for SlidingQuantiles {
    fn default() -> Self {
        SlidingQuantiles::new()
    }
}

impl SlidingQuantiles {
    pub fn new() -> SlidingQuantiles {
        let slots = (0..LATENCY_SLOTS)
            .map(|_| LatencySlot {
                period: AtomicU64::new(u64::MAX),
                counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                total: AtomicU64::new(0),
            })
            .collect();
        SlidingQuantiles {
            epoch: Instant::now(),
            slots,
        }
    }

    fn period(&self) -> u64 {
        self.epoch.elapsed().as_secs() / LATENCY_SLOT_SECONDS
    }

    pub fn record(&self, nanos: u64) {
        let period = self.period();
        let slot = &self.slots[(period % LATENCY_SLOTS as u64) as usize];
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for count in slot.counts.iter() {
                count.store(0, Ordering::Relaxed);
            }
            slot.total.store(0, Ordering::Relaxed);
        }
        slot.counts[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        slot.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns each requested quantile in seconds (the upper bound of the
    /// bucket it falls in, so within 4% above the true value), and the
    /// number of samples in the window. With no samples every quantile is 0.
    pub fn quantiles(&self, wanted: &[f64]) -> (Vec<f64>, u64) {
        let current = self.period();
        let mut merged = vec![0u64; BUCKETS];
        let mut total = 0u64;
        for slot in &self.slots {
            let period = slot.period.load(Ordering::Acquire);
            if period == u64::MAX || current.saturating_sub(period) >= LATENCY_SLOTS as u64 {
                continue;
            }
            for (sum, count) in merged.iter_mut().zip(slot.counts.iter()) {
                let count = count.load(Ordering::Relaxed);
                *sum += count;
                total += count;
            }
        }
        let values = wanted
            .iter()
            .map(|quantile| {
                if total == 0 {
                    return 0.0;
                }
                let rank = ((quantile * total as f64).ceil() as u64).max(1);
                let mut seen = 0;
                for (index, count) in merged.iter().enumerate() {
                    seen += count;
                    if seen >= rank {
                        return bucket_upper_seconds(index);
                    }
                }
                bucket_upper_seconds(BUCKETS - 1)
            })
            .collect();
        (values, total)
    }
}

/// Events per second over the last 10 seconds, in one-second slots.
pub struct RateWindow {
    epoch: Instant,
    periods: [AtomicU64; 11],
    counts: [AtomicU64; 11],
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow::new()
    }
}

impl RateWindow {
    pub fn new() -> RateWindow {
        RateWindow {
            epoch: Instant::now(),
            periods: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub fn record(&self) {
        let second = self.epoch.elapsed().as_secs();
        let index = (second % 11) as usize;
        let seen = self.periods[index].load(Ordering::Acquire);
        if seen != second
            && self.periods[index]
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.counts[index].store(0, Ordering::Relaxed);
        }
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the mean rate over the last 10 seconds plus the current
    /// partial second, or over the time since start when that is shorter.
    pub fn per_second(&self) -> f64 {
        let elapsed = self.epoch.elapsed();
        let current = elapsed.as_secs();
        let mut events = 0;
        for index in 0..11 {
            let period = self.periods[index].load(Ordering::Acquire);
            if period != u64::MAX && period <= current && current - period <= 10 {
                events += self.counts[index].load(Ordering::Relaxed);
            }
        }
        let fraction = elapsed.as_secs_f64() - current as f64;
        let window = if current < 10 {
            elapsed.as_secs_f64().max(0.001)
        } else {
            10.0 + fraction
        };
        events as f64 / window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_bucket_precision() {
        let window = SlidingQuantiles::new();
        for micros in 1..=1000u64 {
            window.record(micros * 1000);
        }
        let (values, total) = window.quantiles(&[0.5, 0.99]);
        assert_eq!(total, 1000);
        let median = values[0];
        let p99 = values[1];
        assert!((500e-6..=520e-6).contains(&median), "median {median}");
        assert!((990e-6..=1030e-6).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn empty_window_reports_zero() {
        let window = SlidingQuantiles::new();
        assert_eq!(window.quantiles(&[0.99]), (vec![0.0], 0));
    }

    #[test]
    fn rate_counts_current_second() {
        let rate = RateWindow::new();
        for _ in 0..50 {
            rate.record();
        }
        assert!(rate.per_second() > 0.0);
    }

    #[test]
    fn bucket_index_is_monotonic() {
        let mut previous = 0;
        for nanos in (0..10_000_000u64).step_by(9973) {
            let index = bucket_of(nanos);
            assert!(index >= previous);
            previous = index;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }
}
