//! Upstreams: named groups of endpoints, the balancer that picks one, and
//! passive health that takes failing endpoints out for a while.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;
use tracing::{info, warn};
use valkyrie_config::{BalanceStrategy, UpstreamConfig, UpstreamProtocol};

use crate::pool::Pool;

/// One address of an upstream, with its pool and health.
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
}

/// A named group of endpoints and how to pick one.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Endpoint indexes repeated by weight, walked by round robin.
    weighted_order: Vec<usize>,
    next: AtomicUsize,
}

impl Upstream {
    /// Builds an upstream and resolves its endpoints once. Host names that do
    /// not resolve yet are tried again by `refresh`.
    pub async fn new(config: &UpstreamConfig, default_pool_size: usize) -> Arc<Upstream> {
        let pool_size = config.pool_size.unwrap_or(default_pool_size);
        let http2 = config.protocol == UpstreamProtocol::Http2;
        let epoch = Instant::now();
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
                address,
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
            }));
        }
        let weighted_order = interleave_by_weight(&endpoints);
        Arc::new(Upstream {
            name: config.name.as_str().into(),
            config: config.clone(),
            endpoints,
            weighted_order,
            next: AtomicUsize::new(0),
        })
    }

    /// Picks an endpoint for a request, skipping ejected endpoints and those in
    /// `exclude` (already tried by this request). When every endpoint is
    /// ejected it fails open to all of them, so traffic still has somewhere to go.
    pub fn pick(&self, hash_key: Option<&[u8]>, exclude: &[usize]) -> Option<usize> {
        let usable =
            |index: usize| !exclude.contains(&index) && !self.endpoints[index].is_ejected();
        let any_usable = (0..self.endpoints.len()).any(usable);
        let candidate = |index: usize| {
            if any_usable {
                usable(index)
            } else {
                !exclude.contains(&index)
            }
        };
        if !(0..self.endpoints.len()).any(candidate) {
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

    /// Runs `refresh` every `resolve_interval` and reaps idle connections at
    /// least every second, until the upstream is dropped from every snapshot.
    pub fn spawn_maintenance(self: &Arc<Self>) {
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
