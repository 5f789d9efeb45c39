//! Every metric the router exports, by name, and their Prometheus text.
//!
//! Request metrics are gathered from finished requests through the
//! [`Observer`] hook; component metrics (pools, routing engine, memory) are
//! read from their owners at scrape time. Labels stay bounded: route,
//! upstream, endpoint and error-kind names, never paths or addresses.
//!
//! Output order matters to the operators' runbook, which reads values with
//! `grep` and `awk`: the requests-rate sample is the first line containing
//! "rate", the only `quantile="0.99"` sample is the request-duration
//! summary's, and the unlabelled totals of `valkyrie_routing_requests_total`
//! and `valkyrie_routing_errors_total` are the last samples of their names.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use valkyrie_proxy::{ErrorKind, Observer, RequestRecord};

use crate::service::Control;
use crate::window::{RateWindow, SlidingQuantiles};

pub const REQUESTS_RATE: &str = "valkyrie_routing_requests_rate";
pub const REQUESTS_TOTAL: &str = "valkyrie_routing_requests_total";
pub const ERRORS_TOTAL: &str = "valkyrie_routing_errors_total";
pub const REQUEST_DURATION: &str = "valkyrie_routing_request_duration_seconds";
pub const REQUEST_DURATION_HISTOGRAM: &str = "valkyrie_routing_request_duration_histogram_seconds";
pub const BUDGET_VIOLATIONS: &str = "valkyrie_routing_budget_violations";
pub const FIT_OPERATIONS: &str = "valkyrie_fit_operations";
pub const FIT_COLLISIONS: &str = "valkyrie_fit_collisions";
pub const FIT_LOAD_FACTOR: &str = "valkyrie_fit_load_factor";
pub const CRA_FRAGMENTATION: &str = "valkyrie_cra_fragmentation";
pub const CRA_NODES: &str = "valkyrie_cra_nodes";
pub const RCU_GRACE_PERIOD: &str = "valkyrie_rcu_grace_period_seconds";
pub const RCU_GRACE_PERIOD_HISTOGRAM: &str = "valkyrie_rcu_grace_period_histogram_seconds";
pub const RCU_PENDING_UPDATES: &str = "valkyrie_rcu_pending_updates";
pub const RCU_SNAPSHOTS: &str = "valkyrie_rcu_snapshots_published";
pub const KEY_TABLE_DELTA_ENTRIES: &str = "valkyrie_key_table_delta_entries";
pub const POOL_SIZE: &str = "valkyrie_connection_pool_size";
pub const POOL_ACTIVE: &str = "valkyrie_connection_pool_active";
pub const POOL_IDLE: &str = "valkyrie_connection_pool_idle";
pub const POOL_UTILIZATION: &str = "valkyrie_connection_pool_utilization";
pub const CIRCUIT_BREAKER_STATE: &str = "valkyrie_circuit_breaker_state";
pub const CIRCUIT_BREAKER_TRANSITIONS: &str = "valkyrie_circuit_breaker_transitions";
pub const RETRIES: &str = "valkyrie_retries";
pub const RETRY_BUDGET_EXHAUSTED: &str = "valkyrie_retry_budget_exhausted";
pub const CACHE_HITS: &str = "valkyrie_cache_hits";
pub const CACHE_MISSES: &str = "valkyrie_cache_misses";
pub const CACHE_HIT_RATE: &str = "valkyrie_cache_hit_rate";
pub const QUEUE_DEPTH: &str = "valkyrie_request_queue_depth";
pub const ACTIVE_ROUTES: &str = "valkyrie_active_routes";
pub const RATE_LIMIT_REJECTED: &str = "valkyrie_rate_limit_rejected";
pub const RATE_LIMIT_REDIS_FALLBACK: &str = "valkyrie_rate_limit_redis_fallback";
pub const RATE_LIMIT_REDIS_UP: &str = "valkyrie_rate_limit_redis_up";
pub const KEY_TABLE_REDIS_FOLLOWING: &str = "valkyrie_key_table_redis_following";
pub const KEY_TABLE_REDIS_UP: &str = "valkyrie_key_table_redis_up";
pub const KEY_TABLE_REDIS_CHANGES: &str = "valkyrie_key_table_redis_changes";
pub const KEY_TABLE_REDIS_LOADS: &str = "valkyrie_key_table_redis_loads";
pub const KEY_TABLE_REDIS_INVALID: &str = "valkyrie_key_table_redis_invalid";
pub const MEMORY_USAGE: &str = "valkyrie_memory_usage_bytes";
pub const MEMORY_LIMIT_EXCEEDED: &str = "valkyrie_memory_limit_exceeded";
pub const MEMORY_LIMIT_EVENTS: &str = "valkyrie_memory_limit_events";
pub const OPEN_CONNECTIONS: &str = "valkyrie_downstream_connections";
pub const BUILD_INFO: &str = "valkyrie_build";
pub const UPTIME: &str = "valkyrie_uptime_seconds";

/// The summary's quantiles.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

type UpstreamLabel = [(&'static str, String); 1];
type EndpointLabel = [(&'static str, String); 2];

/// Counts of one route, shared between the observer and the renderer.
#[derive(Default)]
struct RouteCounters {
    requests: AtomicU64,
}

/// Metrics fed by finished requests, plus the registry of component gauges
/// that are refreshed at scrape time.
pub struct Metrics {
    routes: ArcSwap<HashMap<Arc<str>, Arc<RouteCounters>>>,
    route_lock: std::sync::Mutex<()>,
    requests: AtomicU64,
    errors: AtomicU64,
    errors_by_kind: Vec<AtomicU64>,
    server_errors: AtomicU64,
    duration_window: SlidingQuantiles,
    duration_sum_nanos: AtomicU64,
    duration_count: AtomicU64,
    rate: RateWindow,
    registry: Registry,
    duration_histogram: Histogram,
    budget_violations: Counter,
    budget_nanos: AtomicU64,
    fit_operations: Counter,
    fit_collisions: Counter,
    fit_load_factor: Gauge<f64, AtomicU64>,
    cra_fragmentation: Gauge<f64, AtomicU64>,
    cra_nodes: Gauge,
    rcu_grace_period: Gauge<f64, AtomicU64>,
    rcu_grace_histogram: Histogram,
    rcu_pending: Gauge,
    key_table_deltas: Gauge,
    rcu_snapshots: Counter,
    pool_size: Family<UpstreamLabel, Gauge>,
    pool_active: Family<UpstreamLabel, Gauge>,
    pool_idle: Family<UpstreamLabel, Gauge>,
    pool_utilization: Family<UpstreamLabel, Gauge<f64, AtomicU64>>,
    breaker_state: Family<EndpointLabel, Gauge>,
    /// Label sets of `breaker_state` written by the last scrape, so that
    /// endpoints gone from the config lose their sample.
    breaker_labels: std::sync::Mutex<Vec<EndpointLabel>>,
    breaker_transitions: Family<UpstreamLabel, Counter>,
    retries: Family<UpstreamLabel, Counter>,
    retry_budget_exhausted: Family<UpstreamLabel, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_hit_rate: Gauge<f64, AtomicU64>,
    queue_depth: Gauge,
    active_routes: Gauge,
    rate_limit_rejected: Family<[(&'static str, String); 1], Counter>,
    rate_limit_redis_fallback: Counter,
    rate_limit_redis_up: Gauge,
    key_table_redis_following: Gauge,
    key_table_redis_up: Gauge,
    key_table_redis_changes: Counter,
    key_table_redis_loads: Counter,
    key_table_redis_invalid: Counter,
    memory_usage: Gauge,
    memory_limit_exceeded: Gauge,
    memory_limit_events: Counter,
    open_connections: Gauge,
}

impl Metrics {
    pub fn new(budget: std::time::Duration) -> Metrics {
        let mut registry = Registry::default();
        let duration_histogram = Histogram::new(exponential_buckets(2e-6, 2.0, 22));
        let rcu_grace_histogram = Histogram::new(exponential_buckets(1e-4, 2.0, 20));
        let metrics = Metrics {
            routes: ArcSwap::from_pointee(HashMap::new()),
            route_lock: std::sync::Mutex::new(()),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            errors_by_kind: ErrorKind::all().iter().map(|_| AtomicU64::new(0)).collect(),
            server_errors: AtomicU64::new(0),
            duration_window: SlidingQuantiles::new(),
            duration_sum_nanos: AtomicU64::new(0),
            duration_count: AtomicU64::new(0),
            rate: RateWindow::new(),
            duration_histogram: duration_histogram.clone(),
            budget_violations: Counter::default(),
            budget_nanos: AtomicU64::new(budget.as_nanos() as u64),
            fit_operations: Counter::default(),
            fit_collisions: Counter::default(),
            fit_load_factor: Gauge::default(),
            cra_fragmentation: Gauge::default(),
            cra_nodes: Gauge::default(),
            rcu_grace_period: Gauge::default(),
            rcu_grace_histogram: rcu_grace_histogram.clone(),
            rcu_pending: Gauge::default(),
            key_table_deltas: Gauge::default(),
            rcu_snapshots: Counter::default(),
            pool_size: Family::default(),
            pool_active: Family::default(),
            pool_idle: Family::default(),
            pool_utilization: Family::default(),
            breaker_state: Family::default(),
            breaker_labels: std::sync::Mutex::new(Vec::new()),
            breaker_transitions: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_hit_rate: Gauge::default(),
            queue_depth: Gauge::default(),
            active_routes: Gauge::default(),
            rate_limit_rejected: Family::default(),
            rate_limit_redis_fallback: Counter::default(),
            rate_limit_redis_up: Gauge::default(),
            key_table_redis_following: Gauge::default(),
            key_table_redis_up: Gauge::default(),
            key_table_redis_changes: Counter::default(),
            key_table_redis_loads: Counter::default(),
            key_table_redis_invalid: Counter::default(),
            memory_usage: Gauge::default(),
            memory_limit_exceeded: Gauge::default(),
            memory_limit_events: Counter::default(),
            open_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            REQUEST_DURATION_HISTOGRAM,
            "Router-added latency per request (time before the upstream request head is sent plus time after the response head arrives), as a histogram that aggregates across replicas",
            duration_histogram,
        );
        registry.register(
            BUDGET_VIOLATIONS,
            "Requests whose router-added latency exceeded [routing] performance_budget",
            metrics.budget_violations.clone(),
        );
        registry.register(
            FIT_OPERATIONS,
            "Lookups, inserts and removes on FIT tables",
            metrics.fit_operations.clone(),
        );
        registry.register(
            FIT_COLLISIONS,
            "FIT probes past the home slot group plus fingerprint matches whose key differed",
            metrics.fit_collisions.clone(),
        );
        registry.register(
            FIT_LOAD_FACTOR,
            "Live entries per slot in the live snapshot's FIT tables",
            metrics.fit_load_factor.clone(),
        );
        registry.register(
            CRA_FRAGMENTATION,
            "Dead arena space divided by arena size in the live snapshot's CRA trees",
            metrics.cra_fragmentation.clone(),
        );
        registry.register(
            CRA_NODES,
            "Nodes in the live snapshot's CRA trees",
            metrics.cra_nodes.clone(),
        );
        registry.register(
            RCU_GRACE_PERIOD,
            "Seconds from publishing a routing snapshot until the one it replaced was freed, for the last freed snapshot",
            metrics.rcu_grace_period.clone(),
        );
        registry.register(
            RCU_GRACE_PERIOD_HISTOGRAM,
            "RCU grace periods in seconds",
            rcu_grace_histogram,
        );
        registry.register(
            RCU_PENDING_UPDATES,
            "Routing updates waiting for the next snapshot",
            metrics.rcu_pending.clone(),
        );
        registry.register(
            KEY_TABLE_DELTA_ENTRIES,
            "Key-table changes kept in shard deltas, not yet folded into their shards",
            metrics.key_table_deltas.clone(),
        );
        registry.register(
            RCU_SNAPSHOTS,
            "Routing snapshots published",
            metrics.rcu_snapshots.clone(),
        );
        registry.register(
            POOL_SIZE,
            "Configured idle connections kept per upstream, summed over its endpoints",
            metrics.pool_size.clone(),
        );
        registry.register(
            POOL_ACTIVE,
            "Upstream connections carrying a request now",
            metrics.pool_active.clone(),
        );
        registry.register(
            POOL_IDLE,
            "Idle upstream connections kept for reuse",
            metrics.pool_idle.clone(),
        );
        registry.register(
            POOL_UTILIZATION,
            "Busy upstream connections divided by the pool size",
            metrics.pool_utilization.clone(),
        );
        registry.register(
            CIRCUIT_BREAKER_STATE,
            "Circuit breaker of each upstream endpoint: 0 closed, 1 open, 2 half-open",
            metrics.breaker_state.clone(),
        );
        registry.register(
            CIRCUIT_BREAKER_TRANSITIONS,
            "State changes of the circuit breakers of an upstream's endpoints",
            metrics.breaker_transitions.clone(),
        );
        registry.register(
            RETRIES,
            "Tries after the first sent to an upstream",
            metrics.retries.clone(),
        );
        registry.register(
            RETRY_BUDGET_EXHAUSTED,
            "Retries not sent because the upstream's retry budget was spent",
            metrics.retry_budget_exhausted.clone(),
        );
        registry.register(
            CACHE_HITS,
            "Route decision cache hits",
            metrics.cache_hits.clone(),
        );
        registry.register(
            CACHE_MISSES,
            "Route decision cache misses",
            metrics.cache_misses.clone(),
        );
        registry.register(
            CACHE_HIT_RATE,
            "Route decision cache hits divided by lookups",
            metrics.cache_hit_rate.clone(),
        );
        registry.register(
            QUEUE_DEPTH,
            "Requests waiting for a concurrency slot",
            metrics.queue_depth.clone(),
        );
        registry.register(
            ACTIVE_ROUTES,
            "Routes plus key-table entries in the live snapshot",
            metrics.active_routes.clone(),
        );
        registry.register(
            RATE_LIMIT_REJECTED,
            "Requests rejected by a rate limit, by route",
            metrics.rate_limit_rejected.clone(),
        );
        registry.register(
            RATE_LIMIT_REDIS_FALLBACK,
            "Requests whose rate limit was decided by the local limiter because Redis was unreachable",
            metrics.rate_limit_redis_fallback.clone(),
        );
        registry.register(
            RATE_LIMIT_REDIS_UP,
            "1 while the Redis rate-limit backend is reachable; 0 while it is not, or when rate limits do not use Redis",
            metrics.rate_limit_redis_up.clone(),
        );
        registry.register(
            KEY_TABLE_REDIS_FOLLOWING,
            "1 while some key table reads its entries from a Redis hash, else 0",
            metrics.key_table_redis_following.clone(),
        );
        registry.register(
            KEY_TABLE_REDIS_UP,
            "1 while the key tables that read Redis are connected and subscribed; 0 while Redis is unreachable or no table reads it",
            metrics.key_table_redis_up.clone(),
        );
        registry.register(
            KEY_TABLE_REDIS_CHANGES,
            "Key-table keys changed by Redis change messages",
            metrics.key_table_redis_changes.clone(),
        );
        registry.register(
            KEY_TABLE_REDIS_LOADS,
            "Times a key table was read in full from its Redis hash",
            metrics.key_table_redis_loads.clone(),
        );
        registry.register(
            KEY_TABLE_REDIS_INVALID,
            "Key-table entries in Redis skipped because they were invalid",
            metrics.key_table_redis_invalid.clone(),
        );
        registry.register(
            MEMORY_USAGE,
            "Resident bytes reported by the allocator",
            metrics.memory_usage.clone(),
        );
        registry.register(
            MEMORY_LIMIT_EXCEEDED,
            "1 while allocator resident bytes are over [performance] max_heap_size and new connections are closed, else 0",
            metrics.memory_limit_exceeded.clone(),
        );
        registry.register(
            MEMORY_LIMIT_EVENTS,
            "Times allocator resident bytes went over [performance] max_heap_size",
            metrics.memory_limit_events.clone(),
        );
        registry.register(
            OPEN_CONNECTIONS,
            "Downstream connections open now",
            metrics.open_connections.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    fn route_counters(&self, route: &Arc<str>) -> Arc<RouteCounters> {
        if let Some(counters) = self.routes.load().get(route) {
            return counters.clone();
        }
        // A new route name: copy the map once. Names are bounded by the config.
        let _guard = self.route_lock.lock().unwrap();
        let current = self.routes.load_full();
        if let Some(counters) = current.get(route) {
            return counters.clone();
        }
        let mut next = (*current).clone();
        let counters = Arc::new(RouteCounters::default());
        next.insert(route.clone(), counters.clone());
        self.routes.store(Arc::new(next));
        counters
    }

    /// Sets the budget above which a request counts as a violation.
    pub fn set_budget(&self, budget: std::time::Duration) {
        self.budget_nanos
            .store(budget.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a request rejected by a rate limit on `route`.
    pub fn rate_limit_rejected(&self, route: &str) {
        self.rate_limit_rejected
            .get_or_create(&[("route", route.to_string())])
            .inc();
    }

    /// Sets the heap-limit gauge; going over the limit also counts an event.
    pub fn set_memory_limit_exceeded(&self, exceeded: bool) {
        self.memory_limit_exceeded.set(i64::from(exceeded));
        if exceeded {
            self.memory_limit_events.inc();
        }
    }

    /// Records one snapshot grace period in the histogram.
    pub fn observe_grace_period(&self, grace: std::time::Duration) {
        self.rcu_grace_histogram.observe(grace.as_secs_f64());
    }
}

impl Observer for Metrics {
    fn on_request(&self, record: &RequestRecord) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.rate.record();
        if let Some(route) = &record.route {
            self.route_counters(route)
                .requests
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(kind) = record.error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if let (ErrorKind::RateLimited, Some(route)) = (kind, &record.route) {
                self.rate_limit_rejected(route);
            }
            if let Some(index) = ErrorKind::all().iter().position(|k| *k == kind) {
                self.errors_by_kind[index].fetch_add(1, Ordering::Relaxed);
            }
        } else if record.status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        // Requests served without an upstream (404s, built-ins) add no
        // routing latency worth tracking.
        if record.upstream_time.is_some() {
            let nanos = record.router_added.as_nanos() as u64;
            self.duration_window.record(nanos);
            self.duration_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
            self.duration_count.fetch_add(1, Ordering::Relaxed);
            self.duration_histogram
                .observe(record.router_added.as_secs_f64());
            if nanos > self.budget_nanos.load(Ordering::Relaxed) {
                self.budget_violations.inc();
            }
        }
    }
}

/// Renders the metrics text for a scrape.
pub fn render(control: &Control) -> String {
    let metrics = &control.metrics;
    refresh_components(control);
    let mut text = String::with_capacity(16 * 1024);

    // Kept first and without metadata lines, so `grep rate | head -1` finds it.
    let _ = writeln!(text, "{REQUESTS_RATE} {:.3}", metrics.rate.per_second());

    write_requests(&mut text, metrics);
    write_errors(&mut text, metrics);
    write_summary(&mut text, metrics);
    write_info(&mut text, control);
    write_process(&mut text);
    crate::certs::write_expiry(&mut text, control.tls.as_deref());

    let mut registry_text = String::new();
    if prometheus_client::encoding::text::encode(&mut registry_text, &metrics.registry).is_ok() {
        text.push_str(&registry_text);
    }
    if !text.ends_with("# EOF\n") {
        text.push_str("# EOF\n");
    }
    text
}

fn write_requests(text: &mut String, metrics: &Metrics) {
    let _ = writeln!(text, "# HELP valkyrie_routing_requests Requests by matched route; the sample without labels counts every request, those that matched no route included.");
    let _ = writeln!(text, "# TYPE valkyrie_routing_requests counter");
    let routes = metrics.routes.load();
    let mut names: Vec<&Arc<str>> = routes.keys().collect();
    names.sort();
    for name in names {
        let count = routes[name].requests.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "{REQUESTS_TOTAL}{{route=\"{}\"}} {count}",
            escape(name)
        );
    }
    let _ = writeln!(
        text,
        "{REQUESTS_TOTAL} {}",
        metrics.requests.load(Ordering::Relaxed)
    );
}

fn write_errors(text: &mut String, metrics: &Metrics) {
    let _ = writeln!(text, "# HELP valkyrie_routing_errors Failed requests by kind (5xx answers from upstreams are kind upstream_5xx); the sample without labels is the total.");
    let _ = writeln!(text, "# TYPE valkyrie_routing_errors counter");
    for (kind, count) in ErrorKind::all().iter().zip(&metrics.errors_by_kind) {
        let _ = writeln!(
            text,
            "{ERRORS_TOTAL}{{kind=\"{}\"}} {}",
            kind.as_str(),
            count.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        text,
        "{ERRORS_TOTAL}{{kind=\"upstream_5xx\"}} {}",
        metrics.server_errors.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        text,
        "{ERRORS_TOTAL} {}",
        metrics.errors.load(Ordering::Relaxed)
    );
}

fn write_summary(text: &mut String, metrics: &Metrics) {
    let (values, window_count) = metrics.duration_window.quantiles(&QUANTILES);
    let _ = writeln!(text, "# HELP {REQUEST_DURATION} Router-added latency per request over the last minute: time before the upstream request head is sent plus time after the response head arrives.");
    let _ = writeln!(text, "# TYPE {REQUEST_DURATION} summary");
    for (quantile, value) in QUANTILES.iter().zip(values) {
        let _ = writeln!(
            text,
            "{REQUEST_DURATION}{{quantile=\"{quantile}\"}} {value:.9}"
        );
    }
    let sum = metrics.duration_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(text, "{REQUEST_DURATION}_sum {sum:.9}");
    // `_sum` and `_count` cover all time, the quantiles only the window.
    let _ = window_count;
    let _ = writeln!(
        text,
        "{REQUEST_DURATION}_count {}",
        metrics.duration_count.load(Ordering::Relaxed)
    );
}

fn write_info(text: &mut String, control: &Control) {
    let status = control.status();
    let _ = writeln!(
        text,
        "# HELP {BUILD_INFO} Build and config version of this process."
    );
    let _ = writeln!(text, "# TYPE {BUILD_INFO} info");
    let _ = writeln!(
        text,
        "{BUILD_INFO}_info{{version=\"{}\",config_version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        escape(&status.version)
    );
    let _ = writeln!(text, "# HELP {UPTIME} Seconds since the process started.");
    let _ = writeln!(text, "# TYPE {UPTIME} gauge");
    let _ = writeln!(text, "{UPTIME} {}", control.started.elapsed().as_secs());
}

/// Writes the standard `process_*` metrics read from `/proc/self`.
fn write_process(text: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096.0;
    let cpu = (field(14) + field(15)) / ticks;
    let threads = field(20);
    let start_ticks = field(22);
    let virtual_bytes = field(23);
    let resident = field(24) * page;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("btime"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let metrics = [
        (
            "process_cpu_seconds",
            "counter",
            "Total user and system CPU time spent in seconds.",
            format!("{cpu}"),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            format!("{resident}"),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            format!("{virtual_bytes}"),
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads.",
            format!("{threads}"),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            format!("{open_fds}"),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            format!("{}", boot_time + start_ticks / ticks),
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        let sample = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        let _ = writeln!(text, "{sample} {value}");
    }
}

/// Copies component state into the registry's gauges before encoding.
fn refresh_components(control: &Control) {
    let metrics = &control.metrics;
    let state = control.state();
    let snapshot = state.snapshot.load();

    metrics
        .open_connections
        .set(state.open_connections.load(Ordering::Relaxed) as i64);
    let snapshots = &state.snapshot_stats;
    let published = snapshots.published.load(Ordering::Relaxed);
    metrics
        .rcu_snapshots
        .inc_by(published.saturating_sub(metrics.rcu_snapshots.get()));
    metrics
        .rcu_grace_period
        .set(snapshots.last_grace_nanos.load(Ordering::Relaxed) as f64 / 1e9);
    metrics.active_routes.set(
        (snapshot.routes.routes().len() + valkyrie_proxy::keys::entry_count(&snapshot)) as i64,
    );
    refresh_engine(metrics, state, &snapshot);
    metrics
        .memory_usage
        .set(crate::memory::resident_bytes().unwrap_or(0) as i64);

    let limiter = &state.rate_limiter;
    limiter.sync(&snapshot);
    let fallbacks = limiter.redis_fallbacks();
    metrics
        .rate_limit_redis_fallback
        .inc_by(fallbacks.saturating_sub(metrics.rate_limit_redis_fallback.get()));
    metrics
        .rate_limit_redis_up
        .set(i64::from(limiter.redis_up() == Some(true)));

    let sync = state.key_sync.status();
    metrics
        .key_table_redis_following
        .set(i64::from(sync.following));
    metrics
        .key_table_redis_up
        .set(i64::from(sync.following && sync.up));
    let catch_up = |counter: &Counter, value: u64| {
        counter.inc_by(value.saturating_sub(counter.get()));
    };
    catch_up(&metrics.key_table_redis_changes, sync.changes);
    catch_up(&metrics.key_table_redis_loads, sync.loads);
    catch_up(&metrics.key_table_redis_invalid, sync.invalid);

    // Every route gets a rate-limit sample, zero until a limit rejects a request.
    for route in snapshot.routes.routes() {
        let _ = metrics
            .rate_limit_rejected
            .get_or_create(&[("route", route.name.to_string())]);
    }

    for upstream in &snapshot.upstreams {
        let label = [("upstream", upstream.name.to_string())];
        let mut size = 0u64;
        let mut active = 0u64;
        let mut idle = 0u64;
        for endpoint in &upstream.endpoints {
            let stats = &endpoint.pool.stats;
            size += endpoint.pool.max_idle() as u64;
            active += stats.active.load(Ordering::Relaxed) as u64;
            idle += stats.idle.load(Ordering::Relaxed) as u64;
        }
        metrics.pool_size.get_or_create(&label).set(size as i64);
        metrics.pool_active.get_or_create(&label).set(active as i64);
        metrics.pool_idle.get_or_create(&label).set(idle as i64);
        let utilization = if size == 0 {
            0.0
        } else {
            active as f64 / size as f64
        };
        metrics
            .pool_utilization
            .get_or_create(&label)
            .set(utilization);
    }
    refresh_resilience(metrics, state, &snapshot);

    let (cache_hits, cache_misses) = state.engine.cache_totals();
    metrics
        .cache_hits
        .inc_by(cache_hits.saturating_sub(metrics.cache_hits.get()));
    metrics
        .cache_misses
        .inc_by(cache_misses.saturating_sub(metrics.cache_misses.get()));
    let hits = metrics.cache_hits.get();
    let misses = metrics.cache_misses.get();
    let lookups = hits + misses;
    metrics.cache_hit_rate.set(if lookups == 0 {
        0.0
    } else {
        hits as f64 / lookups as f64
    });
}

/// Copies the FIT counters and load factor, the CRA size and the pending
/// key-table updates into the registry. The load factor covers the FIT of
/// exact hosts and every key-table shard together.
fn refresh_engine(
    metrics: &Metrics,
    state: &valkyrie_proxy::ProxyState,
    snapshot: &valkyrie_proxy::Snapshot,
) {
    let index = snapshot.routes.stats();
    let counters = snapshot.routes.fit_counters();
    metrics.fit_operations.inc_by(
        counters
            .operations()
            .saturating_sub(metrics.fit_operations.get()),
    );
    metrics.fit_collisions.inc_by(
        counters
            .collisions()
            .saturating_sub(metrics.fit_collisions.get()),
    );
    let mut entries = index.exact_hosts.len;
    let mut slots = index.exact_hosts.slots;
    let mut delta_entries = 0;
    for loaded in &snapshot.key_tables {
        let stats = loaded.table.stats();
        entries += stats.entries;
        slots += stats.slots;
        delta_entries += stats.delta_entries;
    }
    metrics.key_table_deltas.set(delta_entries as i64);
    metrics.fit_load_factor.set(if slots == 0 {
        0.0
    } else {
        entries as f64 / slots as f64
    });
    metrics.cra_fragmentation.set(index.cra_fragmentation);
    metrics.cra_nodes.set(index.cra_nodes as i64);
    metrics
        .rcu_pending
        .set(state.engine.publisher_stats().pending as i64);
}

/// Copies the queue depth, breaker states and retry counters into the
/// registry.
fn refresh_resilience(
    metrics: &Metrics,
    state: &valkyrie_proxy::ProxyState,
    snapshot: &valkyrie_proxy::Snapshot,
) {
    metrics
        .queue_depth
        .set(state.concurrency.queue_depth() as i64);

    // Counters of an upstream live in its stats, which a rebuilt upstream
    // takes over, so the registry's counters only ever catch up.
    let catch_up = |family: &Family<UpstreamLabel, Counter>, label: &UpstreamLabel, value: u64| {
        let counter = family.get_or_create(label);
        counter.inc_by(value.saturating_sub(counter.get()));
    };
    let mut labels = Vec::new();
    for upstream in &snapshot.upstreams {
        let label = [("upstream", upstream.name.to_string())];
        let stats = &upstream.stats;
        catch_up(
            &metrics.breaker_transitions,
            &label,
            stats.breaker_transitions.load(Ordering::Relaxed),
        );
        catch_up(
            &metrics.retries,
            &label,
            stats.retries.load(Ordering::Relaxed),
        );
        catch_up(
            &metrics.retry_budget_exhausted,
            &label,
            stats.budget_exhausted.load(Ordering::Relaxed),
        );
        for endpoint in &upstream.endpoints {
            let endpoint_label = [
                ("upstream", upstream.name.to_string()),
                ("endpoint", endpoint.address.to_string()),
            ];
            metrics
                .breaker_state
                .get_or_create(&endpoint_label)
                .set(endpoint.breaker.state() as i64);
            labels.push(endpoint_label);
        }
    }
    let mut previous = metrics.breaker_labels.lock().unwrap();
    for gone in previous.iter().filter(|label| !labels.contains(label)) {
        metrics.breaker_state.remove(gone);
    }
    *previous = labels;
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
