//! Rate limits per client address, route or header value.
//!
//! Each route is limited by `[security.rate_limiting] default_rate` and
//! `burst_size`, or by its own `rate_limit` and `rate_limit_burst`. Routes
//! without an override share one set of buckets: with `key = "client_ip"`,
//! a client's requests to all of them count together. A route with an
//! override has buckets of its own.
//!
//! The `local` backend counts in this process with a keyed GCRA limiter.
//! The `redis` backend shares one bucket per key among all replicas: a
//! replica takes a lease of tokens from Redis and spends it locally, so
//! most requests never wait for Redis. While Redis is unreachable, requests
//! are counted by the local limiter instead.

mod key;
mod lease;
mod local;
mod redis;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tracing::warn;
use valkyrie_config::{Config, RedisConfig};

pub use self::key::{client_address, parse_forwarded_address, KeyKind, LimitKey};
pub use self::lease::LEASE_TTL;
pub use self::local::{Decision, LocalLimiter, Quota};
pub use self::redis::{CALL_TIMEOUT, PROBE_INTERVAL};

use self::lease::{LeaseTable, Take};
use self::redis::{Grant, RedisBackend};
use crate::error::{ErrorKind, ProxyError};
use crate::state::Snapshot;

/// How often idle buckets and expired leases are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Prefix of every Redis key the limiter writes.
pub const REDIS_KEY_PREFIX: &str = "valkyrie:ratelimit:";

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Returns the number of tokens a replica leases from Redis at once: 1% of
/// the per-second rate, at least 1 and at most the burst.
pub fn lease_size(quota: &Quota) -> u32 {
    let size = (quota.per_second() / 100.0).floor();
    (size as u32).clamp(1, quota.burst.get())
}

/// The rate limits of the proxy. Lives as long as the proxy state; the
/// limits follow each published snapshot's config, and buckets whose quota
/// did not change survive a reload.
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    plan: ArcSwap<Plan>,
    rebuild_lock: Mutex<()>,
    hasher: RandomState,
    redis_fallbacks: AtomicU64,
    sweeper_started: AtomicBool,
}

/// The limits of one config.
struct Plan {
    generation: u64,
    enabled: bool,
    key: KeyKind,
    default: Arc<Scope>,
    /// Routes with their own rate or burst.
    routes: HashMap<Arc<str>, Arc<Scope>>,
    redis: Option<Arc<RedisBackend>>,
}

/// Buckets that share one quota.
struct Scope {
    quota: Quota,
    /// `valkyrie:ratelimit:default:` or `valkyrie:ratelimit:route:NAME:`.
    redis_prefix: Vec<u8>,
    lease_size: u32,
    local: LocalLimiter,
    leases: LeaseTable,
}

impl Scope {
    fn new(name: &str, quota: Quota) -> Scope {
        Scope {
            quota,
            redis_prefix: format!("{REDIS_KEY_PREFIX}{name}:").into_bytes(),
            lease_size: lease_size(&quota),
            local: LocalLimiter::new(quota),
            leases: LeaseTable::default(),
        }
    }
}

impl Plan {
    fn build(config: &Config, generation: u64, previous: Option<&Plan>) -> Plan {
        let settings = &config.security.rate_limiting;
        let key = KeyKind::parse(&settings.key).unwrap_or_else(|error| {
            warn!(%error, "counting rate limits per client address instead");
            KeyKind::ClientIp
        });
        let reuse = |name: &str, quota: Quota, old: Option<&Arc<Scope>>| match old {
            Some(old) if old.quota == quota => old.clone(),
            _ => Arc::new(Scope::new(name, quota)),
        };

        let default_quota = Quota::new(settings.default_rate, settings.burst_size);
        let default = reuse(
            "default",
            default_quota,
            previous.map(|previous| &previous.default),
        );
        let mut routes = HashMap::new();
        for route in &config.routes {
            if route.rate_limit.is_none() && route.rate_limit_burst.is_none() {
                continue;
            }
            let quota = Quota::new(
                route.rate_limit.unwrap_or(settings.default_rate),
                route.rate_limit_burst.unwrap_or(settings.burst_size),
            );
            let name: Arc<str> = Arc::from(route.name.as_str());
            let old = previous.and_then(|previous| previous.routes.get(&name));
            let scope = reuse(&format!("route:{}", route.name), quota, old);
            routes.insert(name, scope);
        }

        let redis = (settings.enable && settings.backend == "redis").then(|| {
            // Validation requires [redis] for this backend; a config built
            // in code without it gets the default URL.
            let url = config
                .redis
                .as_ref()
                .map_or_else(|| RedisConfig::default().url, |redis| redis.url.clone());
            match previous.and_then(|previous| previous.redis.as_ref()) {
                Some(old) if old.url() == url => old.clone(),
                _ => RedisBackend::start(&url),
            }
        });
        Plan {
            generation,
            enabled: settings.enable,
            key,
            default,
            routes,
            redis,
        }
    }

    fn scope(&self, route: &str) -> &Arc<Scope> {
        self.routes.get(route).unwrap_or(&self.default)
    }
}

impl RateLimiter {
    /// Builds the limits of `snapshot`'s config. Inside a Tokio runtime this
    /// also starts the sweeper and, for the Redis backend, the connection.
    pub fn new(snapshot: &Snapshot) -> RateLimiter {
        let plan = Plan::build(&snapshot.config, snapshot.generation, None);
        let limiter = RateLimiter {
            inner: Arc::new(Inner {
                plan: ArcSwap::from_pointee(plan),
                rebuild_lock: Mutex::new(()),
                hasher: RandomState::new(),
                redis_fallbacks: AtomicU64::new(0),
                sweeper_started: AtomicBool::new(false),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            limiter.ensure_sweeper();
        }
        limiter
    }

    /// Applies `snapshot`'s config if it is newer than the one in use.
    pub fn sync(&self, snapshot: &Snapshot) {
        if self.inner.plan.load().generation >= snapshot.generation {
            return;
        }
        let _guard = self
            .inner
            .rebuild_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.inner.plan.load_full();
        if current.generation >= snapshot.generation {
            return;
        }
        let plan = Plan::build(&snapshot.config, snapshot.generation, Some(&current));
        self.inner.plan.store(Arc::new(plan));
    }

    /// Checks one request against the limit of its route. A rejection is a
    /// `RateLimited` error whose response carries `Retry-After` and the
    /// `RateLimit-*` headers.
    pub async fn check(
        &self,
        snapshot: &Snapshot,
        route: &str,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<(), ProxyError> {
        self.sync(snapshot);
        if !self.inner.sweeper_started.load(Ordering::Relaxed) {
            self.ensure_sweeper();
        }
        let (scope, redis, key) = {
            let plan = self.inner.plan.load();
            if !plan.enabled {
                return Ok(());
            }
            let scope = plan.scope(route);
            let key = plan
                .key
                .extract(route, headers, peer, &snapshot.trusted_proxies);
            match &plan.redis {
                None => {
                    let hash = key.hash_with(&self.inner.hasher);
                    return match scope.local.check(hash) {
                        Decision::Allow => Ok(()),
                        Decision::Deny(wait) => Err(rejection(route, &scope.quota, wait)),
                    };
                }
                Some(redis) => (scope.clone(), redis.clone(), key),
            }
        };
        match self.check_shared(&scope, &redis, key).await {
            Decision::Allow => Ok(()),
            Decision::Deny(wait) => Err(rejection(route, &scope.quota, wait)),
        }
    }

    /// Decides with the Redis backend: a leased token when one is left,
    /// otherwise a new lease from Redis, otherwise the local limiter.
    async fn check_shared(
        &self,
        scope: &Scope,
        redis: &Arc<RedisBackend>,
        key: LimitKey<'_>,
    ) -> Decision {
        redis.ensure_monitor();
        let hash = key.hash_with(&self.inner.hasher);
        // Requests for one key queue behind each other's fetches, and each
        // fetch serves a lease of requests. A request still without an
        // answer after `CALL_TIMEOUT` is decided locally.
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        while redis.is_up() && tokio::time::Instant::now() < deadline {
            let guard = match scope.leases.take(hash, Instant::now()) {
                Take::Admitted => return Decision::Allow,
                Take::Denied(wait) => return Decision::Deny(wait),
                Take::Wait(notified) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                    continue;
                }
                Take::Fetch(guard) => guard,
            };
            let mut redis_key = scope.redis_prefix.clone();
            key.append_redis_key(&mut redis_key);
            match redis.take(&redis_key, &scope.quota, scope.lease_size).await {
                Ok(Grant::Tokens(granted)) => {
                    guard.granted(granted, Instant::now());
                    return Decision::Allow;
                }
                Ok(Grant::Wait(wait)) => {
                    guard.denied(Instant::now() + wait);
                    return Decision::Deny(wait);
                }
                // The backend is marked down and logs the error once.
                Err(_) => break,
            }
        }
        self.inner.redis_fallbacks.fetch_add(1, Ordering::Relaxed);
        scope.local.check(hash)
    }

    /// Requests decided by the local limiter because Redis was unreachable.
    pub fn redis_fallbacks(&self) -> u64 {
        self.inner.redis_fallbacks.load(Ordering::Relaxed)
    }

    /// Returns whether Redis is reachable, or `None` when limits are off or
    /// counted locally.
    pub fn redis_up(&self) -> Option<bool> {
        let plan = self.inner.plan.load();
        match &plan.redis {
            Some(redis) if plan.enabled => Some(redis.is_up()),
            _ => None,
        }
    }

    /// Keys tracked by the local limiters now, for tests and diagnostics.
    pub fn local_keys(&self) -> usize {
        let plan = self.inner.plan.load();
        plan.default.local.len()
            + plan
                .routes
                .values()
                .map(|scope| scope.local.len())
                .sum::<usize>()
    }

    fn ensure_sweeper(&self) {
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(sweep(Arc::downgrade(&self.inner)));
    }
}

/// Drops refilled buckets and spent leases every few seconds, so memory
/// follows the keys seen recently; ends with the limiter.
async fn sweep(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let plan = inner.plan.load_full();
        let now = Instant::now();
        for scope in std::iter::once(&plan.default).chain(plan.routes.values()) {
            scope.local.sweep();
            scope.leases.sweep(now);
        }
    }
}

/// Builds the 429 error for a request that exceeded `quota` on `route`.
fn rejection(route: &str, quota: &Quota, wait: Duration) -> ProxyError {
    let seconds = retry_after_seconds(wait);
    let burst = quota.burst.get();
    ProxyError::new(
        ErrorKind::RateLimited,
        format!(
            "too many requests on route `{route}`: the limit is {} with a burst of {burst}; retry in {seconds} s",
            quota.rate
        ),
    )
    .route(route)
    .header(header::RETRY_AFTER, HeaderValue::from(seconds))
    .header(RATELIMIT_LIMIT.clone(), HeaderValue::from(burst))
    .header(RATELIMIT_REMAINING.clone(), HeaderValue::from(0u32))
    .header(RATELIMIT_RESET.clone(), HeaderValue::from(seconds))
}

/// Rounds a wait up to whole seconds, at least 1, as `Retry-After` needs.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(text: &str, burst: u32) -> Quota {
        Quota::new(text.parse().unwrap(), burst)
    }

    #[test]
    fn lease_is_one_percent_of_rate() {
        assert_eq!(lease_size(&quota("100/sec", 50)), 1);
        assert_eq!(lease_size(&quota("1000/sec", 50)), 10);
        assert_eq!(lease_size(&quota("100000/sec", 5000)), 1000);
        assert_eq!(
            lease_size(&quota("100000/sec", 20)),
            20,
            "capped at the burst"
        );
        assert_eq!(lease_size(&quota("10/min", 5)), 1, "at least one");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(59)), 59);
    }

    #[test]
    fn rejection_carries_headers() {
        let error = rejection("api", &quota("10/sec", 5), Duration::from_millis(1500));
        assert_eq!(error.kind, ErrorKind::RateLimited);
        let response = error.to_response();
        assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(headers["ratelimit-limit"], "5");
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(headers["ratelimit-reset"], "2");
    }
}
