//! Upstreams: named groups of endpoints and the balancer that picks one.
//! Endpoints leave the rotation by active checks or passive ejection, and
//! each has a circuit breaker. An upstream also keeps its request limits and
//! the state that its retries share.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;
use tracing::{info, warn};
use valkyrie_config::{BalanceStrategy, UpstreamConfig, UpstreamProtocol};

use crate::breaker::{Breaker, Ticket};
use crate::error::{ErrorKind, ProxyError};
use crate::health::{ActiveHealth, HealthStatus};
use crate::pool::Pool;
use crate::retry::{RetryBudget, RetryPermit, RetryPolicy};

/// One address of an upstream, with its pool, health and breaker.
pub struct Endpoint {
    /// The address as written in the config, `host:port`.
    pub address: Arc<str>,
    pub weight: u32,
    resolved: ArcSwap<Vec<SocketAddr>>,
    pub pool: Pool,
    /// Requests in flight to this endpoint.
    pub active_requests: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the endpoint is ejected; 0 when in.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    /// Verdict of the active health checks.
    pub active_health: ActiveHealth,
    pub breaker: Arc<Breaker>,
}

impl Endpoint {
    /// Returns the addresses the endpoint's host name resolved to last.
    pub fn addresses(&self) -> Arc<Vec<SocketAddr>> {
        self.resolved.load_full()
    }

    /// Returns true while a passive health ejection is in force.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && (self.epoch.elapsed().as_millis() as u64) < until
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Returns true when the endpoint is in rotation: not failed by active
    /// checks and not passively ejected.
    pub fn is_healthy(&self) -> bool {
        self.active_health.status() != HealthStatus::Unhealthy && !self.is_ejected()
    }
}

/// Counters of an upstream that outlive reloads: an upstream rebuilt under
/// the same name takes them over.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Tries after the first, over every request.
    pub retries: AtomicU64,
    /// Retries not made because the retry budget was spent.
    pub budget_exhausted: AtomicU64,
    /// State changes of the endpoints' circuit breakers.
    pub breaker_transitions: Arc<AtomicU64>,
}

/// The outcome of [`Upstream::select`].
pub enum Selection {
    /// An endpoint index and the breaker's permission to use it.
    Endpoint(usize, Ticket),
    /// Endpoints are in rotation, but every breaker among them is open.
    CircuitOpen,
    /// No endpoint is left to try.
    Empty,
}

/// A request counted against `max_requests` until dropped.
pub struct RequestSlot {
    upstream: Arc<Upstream>,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request counted against `max_pending_requests` until dropped.
pub struct PendingSlot<'a> {
    upstream: &'a Upstream,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.upstream.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named group of endpoints and how to pick one.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Endpoint indexes repeated by weight, walked by round robin.
    weighted_order: Vec<usize>,
    next: AtomicUsize,
    pub stats: Arc<UpstreamStats>,
    pub retry_policy: RetryPolicy,
    retry_budget: Arc<RetryBudget>,
    /// Requests in flight, from admission until the response body ends.
    in_flight: AtomicUsize,
    /// Requests waiting for a connection.
    pending: AtomicUsize,
    /// Set once the first round of active checks finished.
    health_known: AtomicBool,
    /// Set while every endpoint is out of rotation and traffic goes to all.
    failing_open: AtomicBool,
    epoch: Instant,
    /// [`crate::tls::files_fingerprint`] of the TLS files this upstream
    /// was built with.
    tls_files: u64,
}

impl Upstream {
    /// Builds an upstream and resolves its endpoints once. Host names that do
    /// not resolve yet are tried again by `refresh`.
    pub async fn new(config: &UpstreamConfig, default_pool_size: usize) -> Arc<Upstream> {
        Upstream::replacing(config, default_pool_size, None).await
    }

    /// Builds an upstream that replaces `previous` on reload: it takes over
    /// the counters, the breakers' admin overrides and the health verdicts
    /// of endpoints with the same address.
    pub async fn replacing(
        config: &UpstreamConfig,
        default_pool_size: usize,
        previous: Option<&Upstream>,
    ) -> Arc<Upstream> {
        let previous = previous.filter(|previous| *previous.name == *config.name);
        let stats = previous.map_or_else(Arc::default, |previous| previous.stats.clone());
        let name: Arc<str> = config.name.as_str().into();
        let pool_size = config.pool_size.unwrap_or(default_pool_size);
        let http2 = config.protocol == UpstreamProtocol::Http2;
        let epoch = Instant::now();
        let tls_files = crate::tls::files_fingerprint(config);
        let tls = crate::tls::UpstreamTls::from_upstream(config);
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let address: Arc<str> = endpoint.address().into();
            let resolved = resolve(&address).await.unwrap_or_else(|error| {
                warn!(upstream = %config.name, endpoint = %address, %error, "endpoint did not resolve; will retry");
                Vec::new()
            });
            let endpoint_tls = tls.as_ref().map(|tls| tls.endpoint(&address));
            endpoints.push(Arc::new(Endpoint {
                address: address.clone(),
                weight: endpoint.weight().max(1),
                resolved: ArcSwap::from_pointee(resolved),
                pool: Pool::new(
                    http2,
                    pool_size,
                    config.pool_idle_timeout.0,
                    config.connect_timeout.0,
                )
                .with_tls(endpoint_tls),
                active_requests: AtomicUsize::new(0),
                consecutive_failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
                epoch,
                active_health: ActiveHealth::default(),
                breaker: Breaker::new(
                    &config.circuit_breaker,
                    name.clone(),
                    address,
                    stats.breaker_transitions.clone(),
                ),
            }));
        }
        let health_known = match previous {
            Some(previous) if config.health_check.is_some() => {
                inherit_endpoint_state(&endpoints, previous)
            }
            Some(previous) => {
                inherit_endpoint_state(&endpoints, previous);
                false
            }
            None => false,
        };
        let weighted_order = interleave_by_weight(&endpoints);
        Arc::new(Upstream {
            retry_policy: RetryPolicy::new(&config.retries, &name),
            retry_budget: RetryBudget::new(&config.retries),
            name,
            config: config.clone(),
            endpoints,
            weighted_order,
            next: AtomicUsize::new(0),
            stats,
            in_flight: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            health_known: AtomicBool::new(health_known),
            failing_open: AtomicBool::new(false),
            epoch,
            tls_files,
        })
    }

    /// Returns true when a TLS file of the upstream (CA bundle, client
    /// certificate or key) changed on disk since the upstream was built.
    /// Reads those files, so call it on reloads, not per request.
    pub fn tls_files_changed(&self) -> bool {
        crate::tls::files_fingerprint(&self.config) != self.tls_files
    }

    /// Returns true once every endpoint has an active-check verdict, or at
    /// once when the upstream has no active checks.
    pub fn health_known(&self) -> bool {
        self.config.health_check.is_none() || self.health_known.load(Ordering::Relaxed)
    }

    /// Marks the end of a round of active checks.
    pub(crate) fn finish_health_round(&self) {
        self.health_known.store(true, Ordering::Relaxed);
        let all_out = !self.endpoints.iter().any(|endpoint| endpoint.is_healthy());
        self.note_fail_open(all_out);
    }

    /// Returns true while every endpoint is out of rotation, so traffic
    /// goes to all of them.
    pub fn is_failing_open(&self) -> bool {
        self.failing_open.load(Ordering::Relaxed)
    }

    /// Logs the start and end of a period in which every endpoint is out of
    /// rotation, once each.
    fn note_fail_open(&self, all_out: bool) {
        if self.failing_open.load(Ordering::Relaxed) == all_out
            || self.failing_open.swap(all_out, Ordering::Relaxed) == all_out
        {
            return;
        }
        if all_out {
            warn!(upstream = %self.name, endpoints = self.endpoints.len(), "every endpoint is unhealthy; failing open and sending traffic to all of them");
        } else {
            info!(upstream = %self.name, "an endpoint is healthy again; no longer failing open");
        }
    }

    /// Picks an endpoint for a try and takes its breaker's permission.
    ///
    /// Endpoints in rotation come first; when every endpoint is out of
    /// rotation, all of them count as in (fail open). Among those, an
    /// endpoint whose breaker is open is skipped, and one in `tried` is
    /// picked again only when no other is left.
    pub fn select(&self, hash_key: Option<&[u8]>, tried: &[usize]) -> Selection {
        let all_out = !self.endpoints.iter().any(|endpoint| endpoint.is_healthy());
        self.note_fail_open(all_out);
        let in_rotation = |index: usize| all_out || self.endpoints[index].is_healthy();
        let mut not_admitted: Vec<usize> = Vec::new();
        for _ in 0..=self.endpoints.len() {
            let admits = |index: usize| {
                in_rotation(index)
                    && !not_admitted.contains(&index)
                    && self.endpoints[index].breaker.would_admit()
            };
            let fresh = |index: usize| admits(index) && !tried.contains(&index);
            let index = if (0..self.endpoints.len()).any(fresh) {
                self.choose(hash_key, fresh)
            } else {
                self.choose(hash_key, admits)
            };
            let Some(index) = index else {
                break;
            };
            match self.endpoints[index].breaker.try_admit() {
                Some(ticket) => return Selection::Endpoint(index, ticket),
                // Another request took the last half-open probe slot.
                None => not_admitted.push(index),
            }
        }
        if (0..self.endpoints.len()).any(in_rotation) {
            Selection::CircuitOpen
        } else {
            Selection::Empty
        }
    }

    /// Picks an endpoint for a request, skipping ejected endpoints and those in
    /// `exclude`. When every endpoint is out of rotation it fails open to all
    /// of them. Breakers are not consulted; `select` does that.
    pub fn pick(&self, hash_key: Option<&[u8]>, exclude: &[usize]) -> Option<usize> {
        let all_out = !self.endpoints.iter().any(|endpoint| endpoint.is_healthy());
        self.choose(hash_key, |index| {
            !exclude.contains(&index) && (all_out || self.endpoints[index].is_healthy())
        })
    }

    /// Counts a request against `max_requests`, or fails with
    /// `upstream_overloaded` when the upstream is at the limit.
    pub fn start_request(self: &Arc<Self>) -> Result<RequestSlot, ProxyError> {
        let limit = self.config.circuit_breaker.max_requests;
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = RequestSlot {
            upstream: self.clone(),
        };
        if limit > 0 && before >= limit {
            return Err(ProxyError::new(
                ErrorKind::UpstreamOverloaded,
                format!("the upstream has {limit} requests in flight, its max_requests"),
            )
            .upstream(&self.name));
        }
        Ok(slot)
    }

    /// Returns the requests in flight to this upstream.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request waiting for a connection against
    /// `max_pending_requests` (0 turns the limit off).
    pub fn start_pending(&self) -> Result<PendingSlot<'_>, ProxyError> {
        let limit = self.config.circuit_breaker.max_pending_requests;
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        let slot = PendingSlot { upstream: self };
        if limit > 0 && before >= limit {
            return Err(ProxyError::new(
                ErrorKind::UpstreamOverloaded,
                format!("{limit} requests already wait for a connection to the upstream, its max_pending_requests"),
            )
            .upstream(&self.name)
            .nothing_sent());
        }
        Ok(slot)
    }

    /// Returns the requests waiting for a connection now.
    pub fn pending_requests(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Takes a place in the retry budget, or counts the refusal in
    /// `stats.budget_exhausted`.
    pub fn try_retry(&self) -> Option<RetryPermit> {
        let second = self.epoch.elapsed().as_secs();
        let permit = self
            .retry_budget
            .try_acquire(self.requests_in_flight(), second);
        if permit.is_none() {
            self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// Returns the balancer's choice among the endpoints `candidate` accepts.
    fn choose(&self, hash_key: Option<&[u8]>, candidate: impl Fn(usize) -> bool) -> Option<usize> {
        if !(0..self.endpoints.len()).any(&candidate) {
            return None;
        }
        match self.config.balance {
            BalanceStrategy::RoundRobin => self.pick_round_robin(candidate),
            BalanceStrategy::LeastRequest => self.pick_least_request(candidate),
            BalanceStrategy::Random => self.pick_random(candidate),
            BalanceStrategy::ConsistentHash => match hash_key {
                Some(key) => self.pick_hashed(key, candidate),
                None => self.pick_random(candidate),
            },
        }
    }

    fn pick_round_robin(&self, candidate: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.weighted_order.len())
            .map(|offset| self.weighted_order[(start + offset) % self.weighted_order.len()])
            .find(|&index| candidate(index))
    }

    /// Power of two choices: two random candidates, the one with fewer active
    /// requests per unit of weight wins.
    fn pick_least_request(&self, candidate: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| candidate(i))
            .collect();
        if candidates.len() == 1 {
            return Some(candidates[0]);
        }
        let mut rng = rand::thread_rng();
        let first = candidates[rng.gen_range(0..candidates.len())];
        let mut second = candidates[rng.gen_range(0..candidates.len() - 1)];
        if second == first {
            second = candidates[candidates.len() - 1];
        }
        let load = |index: usize| {
            let endpoint = &self.endpoints[index];
            endpoint.active_requests.load(Ordering::Relaxed) as f64 / endpoint.weight as f64
        };
        Some(if load(second) < load(first) {
            second
        } else {
            first
        })
    }

    fn pick_random(&self, candidate: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = self
            .weighted_order
            .iter()
            .copied()
            .filter(|&index| candidate(index))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[rand::thread_rng().gen_range(0..candidates.len())])
    }

    /// Rendezvous hashing: each endpoint scores `hash(key, endpoint)` scaled by
    /// weight and the highest wins, so removing one endpoint moves only its keys.
    fn pick_hashed(&self, key: &[u8], candidate: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.endpoints.len())
            .filter(|&index| candidate(index))
            .map(|index| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                self.endpoints[index].address.hash(&mut hasher);
                let unit = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
                let score =
                    -(self.endpoints[index].weight as f64) / unit.max(f64::MIN_POSITIVE).ln();
                (index, score)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(index, _)| index)
    }

    /// Records a request outcome for passive health: connect failures and 5xx
    /// answers count as failures, anything else resets the count.
    pub fn record_outcome(&self, index: usize, failed: bool) {
        let endpoint = &self.endpoints[index];
        if !failed {
            if endpoint.consecutive_failures.swap(0, Ordering::Relaxed) != 0
                && endpoint.ejected_until_ms.swap(0, Ordering::Relaxed) != 0
            {
                info!(upstream = %self.name, endpoint = %endpoint.address, "endpoint answered again; back in rotation");
            }
            return;
        }
        let threshold = self.config.passive_health.consecutive_failures;
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if threshold == 0 || failures < threshold {
            return;
        }
        let ejection = self.config.passive_health.ejection_time.0;
        let until = endpoint.epoch.elapsed() + ejection;
        let previous = endpoint
            .ejected_until_ms
            .swap(until.as_millis() as u64, Ordering::Relaxed);
        if previous == 0 || failures == threshold {
            warn!(
                upstream = %self.name,
                endpoint = %endpoint.address,
                failures,
                ejection_seconds = ejection.as_secs_f64(),
                "endpoint ejected after consecutive failures"
            );
        }
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Resolves host names again and closes expired idle connections.
    pub async fn refresh(&self) {
        for endpoint in &self.endpoints {
            endpoint.pool.reap();
            match resolve(&endpoint.address).await {
                Ok(addresses) if !addresses.is_empty() => {
                    if **endpoint.resolved.load() != addresses {
                        info!(upstream = %self.name, endpoint = %endpoint.address, ?addresses, "endpoint resolved to new addresses");
                        endpoint.resolved.store(Arc::new(addresses));
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    warn!(upstream = %self.name, endpoint = %endpoint.address, %error, "re-resolving endpoint failed; keeping the last addresses");
                }
            }
        }
    }

    /// Runs `refresh` every `resolve_interval`, reaps idle connections at
    /// least every second and starts the active health checks, until the
    /// upstream is dropped from every snapshot.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        crate::health::spawn(self);
        let weak = Arc::downgrade(self);
        let resolve_every = self.config.resolve_interval.0.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut last_resolve = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(upstream) = weak.upgrade() else {
                    break;
                };
                if last_resolve.elapsed() >= resolve_every {
                    upstream.refresh().await;
                    last_resolve = Instant::now();
                } else {
                    for endpoint in &upstream.endpoints {
                        endpoint.pool.reap();
                    }
                }
            }
        });
    }
}

/// Copies the admin overrides of breakers and the health verdicts of
/// endpoints that `previous` has under the same address. Returns true when
/// every endpoint found a verdict there.
fn inherit_endpoint_state(endpoints: &[Arc<Endpoint>], previous: &Upstream) -> bool {
    let mut all_known = previous.health_known();
    for endpoint in endpoints {
        let old = previous
            .endpoints
            .iter()
            .find(|old| old.address == endpoint.address);
        match old {
            Some(old) => {
                endpoint.breaker.inherit(&old.breaker);
                endpoint.active_health.inherit(&old.active_health);
                all_known &= old.active_health.status() != HealthStatus::Unknown;
            }
            None => all_known = false,
        }
    }
    all_known
}

/// Orders endpoint indexes so each appears `weight` times, spread out
/// (smooth weighted round robin) rather than in runs.
fn interleave_by_weight(endpoints: &[Arc<Endpoint>]) -> Vec<usize> {
    let total: i64 = endpoints.iter().map(|e| e.weight as i64).sum();
    let mut current = vec![0i64; endpoints.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (index, endpoint) in endpoints.iter().enumerate() {
            current[index] += endpoint.weight as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(index, weight)| (**weight, std::cmp::Reverse(*index)))
            .expect("an upstream has at least one endpoint");
        current[best] -= total;
        order.push(best);
    }
    order
}

async fn resolve(address: &str) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(address) = address.parse::<SocketAddr>() {
        return Ok(vec![address]);
    }
    Ok(tokio::net::lookup_host(address).await?.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::ForcedMode;
    use valkyrie_config::EndpointConfig;

    fn config(balance: BalanceStrategy, endpoints: &[(&str, u32)]) -> UpstreamConfig {
        let text = "name = \"u\"\nendpoints = []\n";
        let mut config: UpstreamConfig = toml::from_str(text).unwrap();
        config.balance = balance;
        config.endpoints = endpoints
            .iter()
            .map(|(address, weight)| EndpointConfig::Weighted {
                address: address.to_string(),
                weight: *weight,
            })
            .collect();
        config
    }

    #[tokio::test]
    async fn round_robin_follows_weights() {
        let upstream = Upstream::new(
            &config(
                BalanceStrategy::RoundRobin,
                &[("127.0.0.1:1", 3), ("127.0.0.1:2", 1)],
            ),
            10,
        )
        .await;
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[upstream.pick(None, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[tokio::test]
    async fn pick_skips_excluded_and_ejected() {
        let upstream = Upstream::new(
            &config(
                BalanceStrategy::RoundRobin,
                &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
            ),
            10,
        )
        .await;
        for _ in 0..10 {
            assert_eq!(upstream.pick(None, &[0]), Some(1));
        }
        for _ in 0..upstream.config.passive_health.consecutive_failures {
            upstream.record_outcome(1, true);
        }
        assert!(upstream.endpoints[1].is_ejected());
        for _ in 0..10 {
            assert_eq!(upstream.pick(None, &[]), Some(0));
        }
        assert_eq!(upstream.pick(None, &[0, 1]), None);
    }

    #[tokio::test]
    async fn all_ejected_fails_open() {
        let upstream = Upstream::new(
            &config(BalanceStrategy::LeastRequest, &[("127.0.0.1:1", 1)]),
            10,
        )
        .await;
        for _ in 0..upstream.config.passive_health.consecutive_failures {
            upstream.record_outcome(0, true);
        }
        assert_eq!(upstream.pick(None, &[]), Some(0));
    }

    #[tokio::test]
    async fn consistent_hash_is_stable() {
        let upstream = Upstream::new(
            &config(
                BalanceStrategy::ConsistentHash,
                &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)],
            ),
            10,
        )
        .await;
        for key in ["alice", "bob", "carol"] {
            let first = upstream.pick(Some(key.as_bytes()), &[]);
            for _ in 0..5 {
                assert_eq!(upstream.pick(Some(key.as_bytes()), &[]), first);
            }
        }
    }

    fn selected(selection: Selection) -> Option<usize> {
        match selection {
            Selection::Endpoint(index, _) => Some(index),
            _ => None,
        }
    }

    #[tokio::test]
    async fn select_skips_open_breakers() {
        let upstream = Upstream::new(
            &config(
                BalanceStrategy::RoundRobin,
                &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
            ),
            10,
        )
        .await;
        upstream.endpoints[1].breaker.force(ForcedMode::Open);
        for _ in 0..10 {
            assert_eq!(selected(upstream.select(None, &[])), Some(0));
        }
        upstream.endpoints[0].breaker.force(ForcedMode::Open);
        assert!(matches!(upstream.select(None, &[]), Selection::CircuitOpen));
    }

    #[tokio::test]
    async fn select_prefers_untried_then_repeats() {
        let upstream = Upstream::new(
            &config(
                BalanceStrategy::RoundRobin,
                &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
            ),
            10,
        )
        .await;
        for _ in 0..10 {
            assert_eq!(selected(upstream.select(None, &[0])), Some(1));
        }
        upstream.endpoints[1].breaker.force(ForcedMode::Open);
        assert_eq!(selected(upstream.select(None, &[0])), Some(0));
    }

    #[tokio::test]
    async fn unhealthy_endpoints_fail_open() {
        let upstream = Upstream::new(
            &config(
                BalanceStrategy::RoundRobin,
                &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
            ),
            10,
        )
        .await;
        upstream.endpoints[0]
            .active_health
            .record(Err("down".into()), 1, 1);
        for _ in 0..10 {
            assert_eq!(selected(upstream.select(None, &[])), Some(1));
        }
        assert!(!upstream.is_failing_open());
        upstream.endpoints[1]
            .active_health
            .record(Err("down".into()), 1, 1);
        let mut seen = [false; 2];
        for _ in 0..10 {
            seen[selected(upstream.select(None, &[])).unwrap()] = true;
        }
        assert_eq!(seen, [true, true]);
        assert!(upstream.is_failing_open());
        upstream.endpoints[1].active_health.record(Ok(()), 1, 1);
        assert_eq!(selected(upstream.select(None, &[])), Some(1));
        assert!(!upstream.is_failing_open());
    }

    #[tokio::test]
    async fn max_requests_rejects_overflow() {
        let mut config = config(BalanceStrategy::RoundRobin, &[("127.0.0.1:1", 1)]);
        config.circuit_breaker.max_requests = 2;
        let upstream = Upstream::new(&config, 10).await;
        let first = upstream.start_request().unwrap();
        let _second = upstream.start_request().unwrap();
        let error = upstream.start_request().err().unwrap();
        assert_eq!(error.kind, ErrorKind::UpstreamOverloaded);
        assert_eq!(upstream.requests_in_flight(), 2);
        drop(first);
        assert!(upstream.start_request().is_ok());
    }

    #[tokio::test]
    async fn replacement_keeps_counters_and_overrides() {
        let old_config = config(
            BalanceStrategy::RoundRobin,
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
        );
        let old = Upstream::new(&old_config, 10).await;
        old.stats.retries.store(7, Ordering::Relaxed);
        old.endpoints[1].breaker.force(ForcedMode::Open);
        let mut new_config = old_config.clone();
        new_config.balance = BalanceStrategy::Random;
        let new = Upstream::replacing(&new_config, 10, Some(&old)).await;
        assert_eq!(new.stats.retries.load(Ordering::Relaxed), 7);
        assert_eq!(new.endpoints[1].breaker.forced(), ForcedMode::Open);
        assert_eq!(new.endpoints[0].breaker.forced(), ForcedMode::Auto);
    }

    #[tokio::test]
    async fn least_request_prefers_idle_endpoint() {
        let upstream = Upstream::new(
            &config(
                BalanceStrategy::LeastRequest,
                &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
            ),
            10,
        )
        .await;
        upstream.endpoints[0]
            .active_requests
            .store(50, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(upstream.pick(None, &[]), Some(1));
        }
    }
}
