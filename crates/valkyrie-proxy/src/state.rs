//! The live state the data plane reads: one immutable snapshot of routes and
//! upstreams, swapped whole on reload, plus the hooks the binary plugs in.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use valkyrie_config::Config;
use valkyrie_router::RouteTable;

use crate::body::ProxyBody;
use crate::headers::ClientInfo;
use crate::net::CidrSet;
use crate::upstream::Upstream;

/// Everything one routing decision needs, immutable once published.
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    pub config: Arc<Config>,
    pub routes: RouteTable,
    /// Indexed like `config.upstreams`.
    pub upstreams: Vec<Arc<Upstream>>,
    pub trusted_proxies: CidrSet,
    pub via: HeaderValue,
    pub request_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_body_bytes: u64,
    /// Set when a newer snapshot replaces this one, so the drop of the last
    /// reference can report the grace period.
    retired: std::sync::Mutex<Option<(std::time::Instant, Arc<SnapshotStats>)>>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let retired = self.retired.get_mut().map(Option::take).unwrap_or(None);
        if let Some((at, stats)) = retired {
            stats.record_reclaim(at.elapsed());
        }
    }
}

/// Counts of snapshot publication and reclamation.
#[derive(Default)]
pub struct SnapshotStats {
    /// Snapshots published after the first.
    pub published: AtomicU64,
    /// Nanoseconds from publishing a snapshot until the one it replaced was
    /// freed, for the last one freed.
    pub last_grace_nanos: AtomicU64,
    on_reclaim: std::sync::OnceLock<Box<dyn Fn(Duration) + Send + Sync>>,
}

impl SnapshotStats {
    /// Sets the function told about each grace period; only the first call counts.
    pub fn set_on_reclaim(&self, callback: Box<dyn Fn(Duration) + Send + Sync>) {
        let _ = self.on_reclaim.set(callback);
    }

    fn record_reclaim(&self, grace: Duration) {
        self.last_grace_nanos
            .store(grace.as_nanos() as u64, Ordering::Relaxed);
        if let Some(callback) = self.on_reclaim.get() {
            callback(grace);
        }
    }
}

/// A snapshot that could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Routes(#[from] valkyrie_router::BuildError),
    #[error("invalid [server] trusted_proxies: {0}")]
    TrustedProxies(String),
    #[error("invalid [server] via_name `{0}`: it must be a valid header value")]
    Via(String),
}

impl Snapshot {
    /// Builds a snapshot from a validated config. Upstreams whose config did
    /// not change are taken over from `previous`, with their pools and health,
    /// so a reload keeps warm connections.
    pub async fn build(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let routes = RouteTable::build(&config)?;
        let trusted_proxies =
            CidrSet::parse(config.server.trusted_proxies.iter().map(String::as_str))
                .map_err(SnapshotError::TrustedProxies)?;
        let via = HeaderValue::from_str(&format!("1.1 {}", config.server.via_name))
            .map_err(|_| SnapshotError::Via(config.server.via_name.clone()))?;

        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for upstream_config in &config.upstreams {
            let kept = previous.and_then(|previous| {
                previous.upstreams.iter().find(|old| {
                    old.config == *upstream_config
                        && previous.config.routing.connection_pool_size
                            == config.routing.connection_pool_size
                })
            });
            let upstream = match kept {
                Some(old) => old.clone(),
                None => {
                    // A changed upstream takes over the counters, breaker
                    // overrides and health verdicts of the one it replaces.
                    let replaced = previous.and_then(|previous| {
                        previous
                            .upstreams
                            .iter()
                            .find(|old| *old.name == *upstream_config.name)
                    });
                    let upstream = Upstream::replacing(
                        upstream_config,
                        config.routing.connection_pool_size,
                        replaced.map(|old| &**old),
                    )
                    .await;
                    upstream.spawn_maintenance();
                    upstream
                }
            };
            upstreams.push(upstream);
        }

        Ok(Snapshot {
            generation: previous.map_or(1, |previous| previous.generation + 1),
            routes,
            upstreams,
            trusted_proxies,
            via,
            request_header_timeout: config.server.request_header_timeout.0,
            idle_timeout: config.server.idle_timeout.0,
            max_request_body_bytes: config.server.max_request_body_bytes.0,
            retired: std::sync::Mutex::new(None),
            config,
        })
    }
}

/// The listener a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Routed traffic; also serves the built-in endpoints unless an admin
    /// listener is configured.
    DataPlane,
    /// The separate admin listener.
    Admin,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Built-in endpoints (`/health`, `/ready`, `/config/status`, `/admin/*`)
/// served by the binary ahead of routing.
pub trait Builtins: Send + Sync + 'static {
    /// Returns true when this request is for a built-in endpoint.
    fn claims(&self, request: &Request<Incoming>, listener: ListenerKind) -> bool;

    /// Serves a request that `claims` accepted.
    fn serve(
        &self,
        request: Request<Incoming>,
        client: ClientInfo,
        listener: ListenerKind,
    ) -> BoxFuture<Response<ProxyBody>>;
}

/// Everything known about one finished request, for metrics and the access log.
#[derive(Debug)]
pub struct RequestRecord {
    pub method: http::Method,
    pub path: String,
    pub host: Option<String>,
    pub client: std::net::IpAddr,
    pub version: http::Version,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<crate::error::ErrorKind>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From request head parsed to the response body's end.
    pub total: Duration,
    /// Time the upstream took, from request sent to response head received.
    pub upstream_time: Option<Duration>,
    /// Time spent in the proxy itself, before sending upstream and after the response head arrived.
    pub router_added: Duration,
    /// Attempts made, counting retries.
    pub attempts: u32,
    /// False when the client went away or a body failed before the end.
    pub completed: bool,
}

/// Receives one record per request.
pub trait Observer: Send + Sync + 'static {
    fn on_request(&self, record: &RequestRecord);
}

/// State shared by every listener and connection.
pub struct ProxyState {
    pub snapshot: ArcSwap<Snapshot>,
    pub builtins: Option<Arc<dyn Builtins>>,
    pub observers: Vec<Arc<dyn Observer>>,
    pub access_log: AtomicBool,
    draining: AtomicBool,
    /// Downstream connections open now, for `max_connections` and draining.
    pub open_connections: AtomicU64,
    pub snapshot_stats: Arc<SnapshotStats>,
    /// Rate limits; they follow the config of each published snapshot.
    pub rate_limiter: crate::ratelimit::RateLimiter,
    /// Set while the process is over its soft heap limit; data-plane
    /// listeners close new connections then.
    pub memory_pressure: AtomicBool,
    /// `[routing] max_concurrent_requests` and its wait queue.
    pub concurrency: Arc<crate::limits::ConcurrencyLimiter>,
    /// `[security] deny_list` plus the admin API's changes.
    pub deny_list: crate::limits::DenyList,
}

impl ProxyState {
    pub fn new(snapshot: Snapshot) -> ProxyState {
        let access_log = snapshot.config.logging.access_log;
        let rate_limiter = crate::ratelimit::RateLimiter::new(&snapshot);
        let concurrency =
            crate::limits::ConcurrencyLimiter::new(snapshot.config.routing.max_concurrent_requests);
        let deny_list = crate::limits::DenyList::new(&snapshot.config.security.deny_list);
        ProxyState {
            snapshot: ArcSwap::from_pointee(snapshot),
            builtins: None,
            observers: Vec::new(),
            access_log: AtomicBool::new(access_log),
            draining: AtomicBool::new(false),
            open_connections: AtomicU64::new(0),
            snapshot_stats: Arc::new(SnapshotStats::default()),
            rate_limiter,
            memory_pressure: AtomicBool::new(false),
            concurrency,
            deny_list,
        }
    }

    /// Publishes a new snapshot; requests in flight finish on the one they started with.
    pub fn publish(&self, snapshot: Snapshot) {
        self.access_log
            .store(snapshot.config.logging.access_log, Ordering::Relaxed);
        self.concurrency
            .set_limit(snapshot.config.routing.max_concurrent_requests);
        self.deny_list
            .set_config(&snapshot.config.security.deny_list);
        let previous = self.snapshot.swap(Arc::new(snapshot));
        *previous.retired.lock().unwrap() =
            Some((std::time::Instant::now(), self.snapshot_stats.clone()));
        self.snapshot_stats
            .published
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
