//! Circuit breakers of upstream endpoints.
//!
//! A breaker starts closed and counts consecutive failures. At
//! `failure_threshold` it opens for `open_time`. Once that passes, the next
//! request moves it to half-open, and up to `half_open_requests` requests go
//! through as probes. A probe that succeeds closes the breaker; one that
//! fails opens it again for twice the previous period, up to `max_open_time`.
//!
//! The admin API can force a breaker open (no traffic) or closed (it never
//! trips) and reset it to automatic operation.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use valkyrie_config::CircuitBreakerConfig;

/// The state of a breaker. The numbers are the values of the
/// `valkyrie_circuit_breaker_state` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn from_u8(value: u8) -> BreakerState {
        match value {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// An operator's override of a breaker, set through the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForcedMode {
    /// The breaker follows request outcomes.
    Auto = 0,
    /// No request goes to the endpoint.
    Open = 1,
    /// Every request may go to the endpoint and failures never open it.
    Closed = 2,
}

impl ForcedMode {
    fn from_u8(value: u8) -> ForcedMode {
        match value {
            1 => ForcedMode::Open,
            2 => ForcedMode::Closed,
            _ => ForcedMode::Auto,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ForcedMode::Auto => "auto",
            ForcedMode::Open => "forced_open",
            ForcedMode::Closed => "forced_closed",
        }
    }
}

/// Permission to send one request, returned by [`Breaker::try_admit`].
/// A probe that is dropped without an outcome gives its half-open slot back.
pub struct Ticket {
    probe: Option<Probe>,
}

struct Probe {
    breaker: Arc<Breaker>,
    episode: u64,
    resolved: bool,
}

impl Ticket {
    /// Returns true when this request probes a half-open breaker.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(probe) = &self.probe {
            if !probe.resolved {
                probe.breaker.release_probe(probe.episode);
            }
        }
    }
}

/// The state of one breaker as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerView {
    pub state: BreakerState,
    pub forced: ForcedMode,
    /// Time left until an open breaker lets probes through; `None` unless
    /// it is open automatically.
    pub open_for: Option<Duration>,
    pub consecutive_failures: u32,
}

struct Inner {
    /// Milliseconds since `epoch` until which an open breaker stays open.
    open_until_ms: u64,
    /// Failed probes since the breaker last closed; the open period is
    /// `open_time * 2^level`.
    level: u32,
    /// Half-open periods started so far; tickets of older ones are ignored.
    episode: u64,
    /// Probes let through in the current half-open period and not given back.
    probes: u32,
}

/// The breaker of one endpoint.
pub struct Breaker {
    upstream: Arc<str>,
    endpoint: Arc<str>,
    enabled: bool,
    failure_threshold: u32,
    open_time: Duration,
    max_open_time: Duration,
    half_open_requests: u32,
    epoch: Instant,
    /// A `BreakerState`, readable without the lock.
    state: AtomicU8,
    /// A `ForcedMode`, readable without the lock.
    forced: AtomicU8,
    consecutive_failures: AtomicU32,
    inner: Mutex<Inner>,
    /// State changes of every breaker of the upstream.
    transitions: Arc<AtomicU64>,
}

impl Breaker {
    pub fn new(
        config: &CircuitBreakerConfig,
        upstream: Arc<str>,
        endpoint: Arc<str>,
        transitions: Arc<AtomicU64>,
    ) -> Arc<Breaker> {
        Arc::new(Breaker {
            upstream,
            endpoint,
            enabled: config.enable,
            failure_threshold: config.failure_threshold.max(1),
            open_time: config.open_time.0,
            max_open_time: config.max_open_time.0.max(config.open_time.0),
            half_open_requests: config.half_open_requests.max(1),
            epoch: Instant::now(),
            state: AtomicU8::new(BreakerState::Closed as u8),
            forced: AtomicU8::new(ForcedMode::Auto as u8),
            consecutive_failures: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                open_until_ms: 0,
                level: 0,
                episode: 0,
                probes: 0,
            }),
            transitions,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn forced(&self) -> ForcedMode {
        ForcedMode::from_u8(self.forced.load(Ordering::Relaxed))
    }

    /// Returns true when `try_admit` would let a request through now,
    /// without taking a probe slot. The balancer uses it to skip endpoints.
    pub fn would_admit(&self) -> bool {
        self.would_admit_at(self.now_ms())
    }

    fn would_admit_at(&self, now_ms: u64) -> bool {
        match self.forced() {
            ForcedMode::Open => return false,
            ForcedMode::Closed => return true,
            ForcedMode::Auto => {}
        }
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => now_ms >= self.inner.lock().unwrap().open_until_ms,
            BreakerState::HalfOpen => self.inner.lock().unwrap().probes < self.half_open_requests,
        }
    }

    /// Lets a request through, or returns `None` while the breaker is open
    /// or every half-open probe slot is taken.
    pub fn try_admit(self: &Arc<Self>) -> Option<Ticket> {
        self.try_admit_at(self.now_ms())
    }

    fn try_admit_at(self: &Arc<Self>, now_ms: u64) -> Option<Ticket> {
        match self.forced() {
            ForcedMode::Open => return None,
            ForcedMode::Closed => return Some(Ticket { probe: None }),
            ForcedMode::Auto => {}
        }
        if self.state() == BreakerState::Closed {
            return Some(Ticket { probe: None });
        }
        let mut inner = self.inner.lock().unwrap();
        match self.state() {
            BreakerState::Closed => return Some(Ticket { probe: None }),
            BreakerState::Open => {
                if now_ms < inner.open_until_ms {
                    return None;
                }
                inner.episode += 1;
                inner.probes = 0;
                self.set_state(BreakerState::HalfOpen);
                debug!(upstream = %self.upstream, endpoint = %self.endpoint, "circuit breaker half-open: letting probe requests through");
            }
            BreakerState::HalfOpen => {}
        }
        if inner.probes >= self.half_open_requests {
            return None;
        }
        inner.probes += 1;
        Some(Ticket {
            probe: Some(Probe {
                breaker: self.clone(),
                episode: inner.episode,
                resolved: false,
            }),
        })
    }

    /// Records the outcome of a request that `ticket` let through.
    pub fn record(&self, mut ticket: Ticket, success: bool) {
        let now_ms = self.now_ms();
        match ticket.probe.as_mut() {
            Some(probe) => {
                probe.resolved = true;
                self.record_probe(probe.episode, success, now_ms);
            }
            None => self.record_normal(success, now_ms),
        }
    }

    fn record_normal(&self, success: bool, now_ms: u64) {
        if success {
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.enabled
            || failures < self.failure_threshold
            || self.forced() != ForcedMode::Auto
            || self.state() != BreakerState::Closed
        {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        if self.state() != BreakerState::Closed {
            return;
        }
        inner.level = 0;
        self.open(&mut inner, now_ms, failures);
    }

    fn record_probe(&self, episode: u64, success: bool, now_ms: u64) {
        let mut inner = self.inner.lock().unwrap();
        if inner.episode != episode || self.state() != BreakerState::HalfOpen {
            return;
        }
        if success {
            inner.level = 0;
            inner.probes = 0;
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.set_state(BreakerState::Closed);
            info!(upstream = %self.upstream, endpoint = %self.endpoint, "circuit breaker closed: a probe request succeeded");
        } else {
            inner.level = inner.level.saturating_add(1);
            let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            self.open(&mut inner, now_ms, failures);
        }
    }

    /// Opens the breaker for the period of `inner.level`.
    fn open(&self, inner: &mut Inner, now_ms: u64, failures: u32) {
        let period = self.open_period(inner.level);
        inner.open_until_ms = now_ms + period.as_millis() as u64;
        inner.probes = 0;
        self.set_state(BreakerState::Open);
        warn!(
            upstream = %self.upstream,
            endpoint = %self.endpoint,
            consecutive_failures = failures,
            open_seconds = period.as_secs_f64(),
            "circuit breaker opened"
        );
    }

    fn open_period(&self, level: u32) -> Duration {
        let factor = 1u32.checked_shl(level.min(31)).unwrap_or(u32::MAX);
        self.open_time
            .checked_mul(factor)
            .unwrap_or(self.max_open_time)
            .min(self.max_open_time)
    }

    fn release_probe(&self, episode: u64) {
        let mut inner = self.inner.lock().unwrap();
        if inner.episode == episode && self.state() == BreakerState::HalfOpen {
            inner.probes = inner.probes.saturating_sub(1);
        }
    }

    fn set_state(&self, state: BreakerState) {
        if self.state.swap(state as u8, Ordering::Relaxed) != state as u8 {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forces the breaker open or closed, or with `ForcedMode::Auto` resets
    /// it: closed, counters cleared, automatic again.
    pub fn force(&self, mode: ForcedMode) {
        let mut inner = self.inner.lock().unwrap();
        self.forced.store(mode as u8, Ordering::Relaxed);
        inner.episode += 1;
        inner.probes = 0;
        inner.open_until_ms = 0;
        match mode {
            ForcedMode::Open => self.set_state(BreakerState::Open),
            ForcedMode::Closed | ForcedMode::Auto => {
                inner.level = 0;
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.set_state(BreakerState::Closed);
            }
        }
        info!(upstream = %self.upstream, endpoint = %self.endpoint, mode = mode.as_str(), "circuit breaker mode set by the admin API");
    }

    /// Returns the state, override, remaining open time and failure count.
    pub fn view(&self) -> BreakerView {
        let now_ms = self.now_ms();
        let inner = self.inner.lock().unwrap();
        let state = self.state();
        let forced = self.forced();
        let open_for = (state == BreakerState::Open && forced == ForcedMode::Auto)
            .then(|| Duration::from_millis(inner.open_until_ms.saturating_sub(now_ms)));
        BreakerView {
            state,
            forced,
            open_for,
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
        }
    }

    /// Takes over the operator's override from the breaker this one replaces.
    pub(crate) fn inherit(&self, previous: &Breaker) {
        let mode = previous.forced();
        if mode != ForcedMode::Auto {
            self.forced.store(mode as u8, Ordering::Relaxed);
            if mode == ForcedMode::Open {
                self.state
                    .store(BreakerState::Open as u8, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use valkyrie_config::Duration as ConfigDuration;

    fn breaker(threshold: u32, probes: u32) -> Arc<Breaker> {
        let config = CircuitBreakerConfig {
            enable: true,
            failure_threshold: threshold,
            open_time: ConfigDuration(Duration::from_secs(5)),
            max_open_time: ConfigDuration(Duration::from_secs(30)),
            half_open_requests: probes,
            ..CircuitBreakerConfig::default()
        };
        Breaker::new(
            &config,
            "api".into(),
            "127.0.0.1:1".into(),
            Arc::new(AtomicU64::new(0)),
        )
    }

    fn fail_at(breaker: &Arc<Breaker>, now_ms: u64) {
        let ticket = breaker.try_admit_at(now_ms).expect("admitted");
        let probe = ticket.probe.as_ref().map(|probe| probe.episode);
        std::mem::forget(ticket);
        match probe {
            Some(episode) => breaker.record_probe(episode, false, now_ms),
            None => breaker.record_normal(false, now_ms),
        }
    }

    #[test]
    fn opens_at_threshold() {
        let breaker = breaker(3, 1);
        fail_at(&breaker, 0);
        fail_at(&breaker, 0);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail_at(&breaker, 0);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_admit_at(4_999).is_none());
        assert_eq!(breaker.transitions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn success_resets_failure_count() {
        let breaker = breaker(2, 1);
        fail_at(&breaker, 0);
        let ticket = breaker.try_admit_at(0).unwrap();
        breaker.record(ticket, true);
        fail_at(&breaker, 0);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_limits_probes_and_closes_on_success() {
        let breaker = breaker(1, 2);
        fail_at(&breaker, 0);
        let first = breaker.try_admit_at(5_000).expect("first probe");
        assert!(first.is_probe());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let second = breaker.try_admit_at(5_000).expect("second probe");
        assert!(breaker.try_admit_at(5_000).is_none());
        drop(second);
        let third = breaker.try_admit_at(5_000).expect("slot given back");
        let episode = first.probe.as_ref().unwrap().episode;
        std::mem::forget(first);
        breaker.record_probe(episode, true, 5_001);
        assert_eq!(breaker.state(), BreakerState::Closed);
        drop(third);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_doubles_open_time_up_to_max() {
        let breaker = breaker(1, 1);
        fail_at(&breaker, 0);
        let mut now = 5_000;
        for expected in [10_000, 20_000, 30_000, 30_000] {
            fail_at(&breaker, now);
            assert_eq!(breaker.state(), BreakerState::Open);
            assert!(breaker.try_admit_at(now + expected - 1).is_none());
            now += expected;
            assert!(breaker.would_admit_at(now));
        }
    }

    #[test]
    fn forced_modes_override_outcomes() {
        let breaker = breaker(1, 1);
        breaker.force(ForcedMode::Open);
        assert!(breaker.try_admit_at(1_000_000).is_none());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.view().open_for, None);

        breaker.force(ForcedMode::Closed);
        for _ in 0..10 {
            fail_at(&breaker, 0);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);

        breaker.force(ForcedMode::Auto);
        assert_eq!(breaker.view().consecutive_failures, 0);
        fail_at(&breaker, 0);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let config = CircuitBreakerConfig {
            enable: false,
            failure_threshold: 1,
            ..CircuitBreakerConfig::default()
        };
        let breaker = Breaker::new(
            &config,
            "api".into(),
            "e".into(),
            Arc::new(AtomicU64::new(0)),
        );
        for _ in 0..5 {
            fail_at(&breaker, 0);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
