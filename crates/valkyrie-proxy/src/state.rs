//! The live state the data plane reads: one immutable snapshot of routes,
//! key tables and upstreams, published through RCU (reloads swap it whole,
//! key-table changes are batched into new ones), plus the hooks the binary
//! plugs in.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use valkyrie_config::Config;
use valkyrie_lockfree::{FitCounters, Rcu};
use valkyrie_router::RouteTable;

use crate::body::ProxyBody;
use crate::headers::ClientInfo;
use crate::net::CidrSet;
use crate::upstream::Upstream;

/// Everything one routing decision needs, immutable once published.
pub struct Snapshot {
    /// Increases by one with every published snapshot, reloads and
    /// key-table batches alike.
    pub generation: u64,
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    /// Indexed like `config.key_tables`.
    pub key_tables: Vec<crate::keys::LoadedTable>,
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
    #[error(transparent)]
    KeyTable(#[from] crate::keys::TableError),
    #[error("loading key tables failed: {0}")]
    KeyTableTask(String),
}

impl Snapshot {
    /// Builds a snapshot from a validated config. Upstreams whose config and
    /// TLS files did not change are taken over from `previous`, with their
    /// pools and health, so a reload keeps warm connections.
    pub async fn build(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        Snapshot::build_in(config, previous, None).await
    }

    /// Builds a snapshot like [`Snapshot::build`], resolving relative
    /// key-table file paths against `base_dir` (the config file's folder)
    /// instead of the current directory.
    pub async fn build_in(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
        base_dir: Option<&Path>,
    ) -> Result<Snapshot, SnapshotError> {
        let counters = previous.map_or_else(FitCounters::new, |previous| {
            Arc::clone(previous.routes.fit_counters())
        });
        let routes = Arc::new(RouteTable::build_counted(&config, Arc::clone(&counters))?);
        let key_tables = load_key_tables(&config, previous, base_dir, &counters).await?;
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
                        && !old.tls_files_changed()
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
            key_tables,
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

/// Loads the key tables on a blocking thread when a runtime is running,
/// since entry files can be large.
async fn load_key_tables(
    config: &Arc<Config>,
    previous: Option<&Snapshot>,
    base_dir: Option<&Path>,
    counters: &Arc<FitCounters>,
) -> Result<Vec<crate::keys::LoadedTable>, SnapshotError> {
    if config.key_tables.is_empty() {
        return Ok(Vec::new());
    }
    let loaded = if tokio::runtime::Handle::try_current().is_ok() {
        // The previous tables travel as owned values, because the blocking
        // task cannot borrow the caller's snapshot.
        let previous =
            previous.map(|previous| previous.with_key_tables(previous.key_tables.clone()));
        let (config, base_dir, counters) = (
            config.clone(),
            base_dir.map(Path::to_path_buf),
            counters.clone(),
        );
        tokio::task::spawn_blocking(move || {
            crate::keys::load_tables(&config, previous.as_ref(), base_dir.as_deref(), &counters)
        })
        .await
        .map_err(|error| SnapshotError::KeyTableTask(error.to_string()))?
    } else {
        crate::keys::load_tables(config, previous, base_dir, counters)
    };
    loaded.map_err(SnapshotError::KeyTable)
}

impl Snapshot {
    /// Returns a copy of this snapshot with other key tables and the next
    /// generation; everything else is shared.
    pub(crate) fn with_key_tables(&self, key_tables: Vec<crate::keys::LoadedTable>) -> Snapshot {
        Snapshot {
            generation: self.generation + 1,
            config: self.config.clone(),
            routes: self.routes.clone(),
            key_tables,
            upstreams: self.upstreams.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            via: self.via.clone(),
            request_header_timeout: self.request_header_timeout,
            idle_timeout: self.idle_timeout,
            max_request_body_bytes: self.max_request_body_bytes,
            retired: std::sync::Mutex::new(None),
        }
    }

    /// Marks this snapshot as replaced now, so that its drop reports the
    /// grace period to `stats`.
    pub(crate) fn retire(&self, stats: &Arc<SnapshotStats>) {
        *self
            .retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((std::time::Instant::now(), stats.clone()));
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
    /// The request target as received; `uri.path()` is the path.
    pub uri: http::Uri,
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
    /// The current snapshot. Requests read it through
    /// [`crate::engine::pin`]; other readers may `load` it.
    pub snapshot: Arc<Rcu<Snapshot>>,
    /// Key-table publisher, route decision cache and per-thread readers.
    pub engine: crate::engine::Engine,
    pub builtins: Option<Arc<dyn Builtins>>,
    pub observers: Vec<Arc<dyn Observer>>,
    pub access_log: AtomicBool,
    draining: AtomicBool,
    /// Downstream connections open now, for `max_connections` and draining.
    pub open_connections: AtomicU64,
    pub snapshot_stats: Arc<SnapshotStats>,
    /// Set while the process is over its soft heap limit; data-plane
    /// listeners close new connections then.
    pub memory_pressure: AtomicBool,
    /// Rate limits; they follow the config of each published snapshot.
    pub rate_limiter: crate::ratelimit::RateLimiter,
    /// `[routing] max_concurrent_requests` and its wait queue.
    pub concurrency: Arc<crate::limits::ConcurrencyLimiter>,
    /// `[security] deny_list` plus the admin API's changes.
    pub deny_list: crate::limits::DenyList,
    /// Follows key tables kept in Redis; see [`crate::keysync`].
    pub key_sync: crate::keysync::KeySync,
}

impl ProxyState {
    pub fn new(snapshot: Snapshot) -> ProxyState {
        let access_log = snapshot.config.logging.access_log;
        let rate_limiter = crate::ratelimit::RateLimiter::new(&snapshot);
        let concurrency =
            crate::limits::ConcurrencyLimiter::new(snapshot.config.routing.max_concurrent_requests);
        let deny_list = crate::limits::DenyList::new(&snapshot.config.security.deny_list);
        let snapshot = Arc::new(Rcu::new(snapshot));
        let snapshot_stats = Arc::new(SnapshotStats::default());
        ProxyState {
            engine: crate::engine::Engine::new(&snapshot, &snapshot_stats),
            snapshot,
            builtins: None,
            observers: Vec::new(),
            access_log: AtomicBool::new(access_log),
            draining: AtomicBool::new(false),
            open_connections: AtomicU64::new(0),
            snapshot_stats,
            memory_pressure: AtomicBool::new(false),
            rate_limiter,
            concurrency,
            deny_list,
            key_sync: crate::keysync::KeySync::default(),
        }
    }

    /// Publishes a new snapshot; requests in flight finish on the one they started with.
    /// Returns the generation the snapshot was published as. Key-table
    /// changes published while `snapshot` was built carry over to it.
    pub fn publish(&self, snapshot: Snapshot) -> u64 {
        self.access_log
            .store(snapshot.config.logging.access_log, Ordering::Relaxed);
        self.concurrency
            .set_limit(snapshot.config.routing.max_concurrent_requests);
        self.deny_list
            .set_config(&snapshot.config.security.deny_list);
        self.engine
            .configure(&self.snapshot, &self.snapshot_stats, &snapshot.config);
        let mut generation = 0;
        self.snapshot.update(|current| {
            let mut next = snapshot;
            next.generation = current.generation + 1;
            crate::keys::carry_over(&mut next.key_tables, current);
            current.retire(&self.snapshot_stats);
            generation = next.generation;
            next
        });
        self.snapshot_stats
            .published
            .fetch_add(1, Ordering::Relaxed);
        generation
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
