//! `valkyrie-routing bench engine`: measures the routing engine on a
//! generated route set, and matchit and hashbrown on the same lookups.
//!
//! The route set has `--routes` entries: 70% key-table entries, and the
//! rest config routes over exact hosts (four path prefixes and one exact
//! path each), wildcard hosts (1% of the config routes), one key-table
//! route and one catch-all. Each lookup routes one request from a
//! pre-generated mix and, on a key-table route, resolves the key.
//!
//! Throughput runs without timing single lookups. Latency is measured in a
//! second pass that reads the clock before and after each lookup and
//! subtracts the median cost of an empty reading. A third pass routes the
//! same requests in groups through `RouteTable::route_batch` and resolves
//! the keys of each group over the next two groups, so that their cache
//! misses overlap with other work, and reports its throughput as
//! `batched_lookups_per_sec`.
//!
//! Before all that, a probe times dependent loads from a buffer larger
//! than the CPU caches (`memory_latency_ns`). It bounds what one thread
//! can reach one request at a time once the tables outgrow the caches,
//! as long as consecutive lookups do not overlap, and it makes figures
//! from other machines comparable.

use std::borrow::Cow;
use std::convert::Infallible;
use std::hint::black_box;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use http::{HeaderMap, Method};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use valkyrie_config::{
    Config, KeySource, KeyTableConfig, RouteConfig, TableSource, UpstreamConfig,
};
use valkyrie_lockfree::{FitCounters, FitTally, Publisher, PublisherConfig, Rcu};
use valkyrie_proxy::keys::LoadedTable;
use valkyrie_router::cache::RouteCache;
use valkyrie_router::keys::{KeyTable, KeyTarget, Resolution, UpstreamNames};
use valkyrie_router::{RequestInfo, RouteTable, RouteTarget, Routed, ROUTE_BATCH};

use crate::cli::{EngineBenchArgs, RequestKind};

/// Upstreams in the generated config, two endpoints each.
const UPSTREAMS: usize = 8;
/// Path prefixes per exact host; each host also has one exact path.
const PREFIXES_PER_HOST: usize = 4;
/// Most requests generated; they are reused round robin.
const MAX_REQUESTS: usize = 1 << 18;
/// Lookups between two reads of the clock in the throughput pass.
const CHECK_EVERY: usize = 1024;
/// Most latency samples kept per thread.
const MAX_SAMPLES: usize = 2_000_000;
/// Key-table changes applied through the publisher.
const UPDATES: usize = 200_000;
/// Route decision cache entries in the cached pass: `route_cache_size` of
/// the sample configs.
const CACHE_SIZE: usize = 100_000;
/// Changes submitted at once to measure how soon a batch is visible.
const VISIBILITY_BATCH: usize = 10_000;
/// Size of the buffer that the memory latency probe reads: larger than
/// the last-level cache of current server CPUs, per core complex.
const PROBE_BYTES: usize = 128 << 20;
/// Dependent loads timed by the memory latency probe.
const PROBE_LOADS: usize = 1 << 20;

/// Returns an error naming the first option whose value the bench cannot
/// run with, and what to use instead.
fn check_args(args: &EngineBenchArgs) -> Result<(), String> {
    if args.routes < 100 {
        return Err(format!(
            "--routes {} is too small: use at least 100",
            args.routes
        ));
    }
    if args.threads == 0 {
        return Err("--threads 0 is invalid: use at least 1".to_string());
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(format!(
            "--seconds {} is invalid: use a duration above 0, such as 2",
            args.seconds
        ));
    }
    if !(0.0..=4.0).contains(&args.skew) {
        return Err(format!(
            "--skew {} is out of range: use 0 (uniform) up to 4",
            args.skew
        ));
    }
    Ok(())
}

/// Runs the benchmark and prints its report; with `--json` the last line is
/// one JSON object.
pub fn run(args: &EngineBenchArgs) -> ExitCode {
    if let Err(message) = check_args(args) {
        eprintln!("bench engine: {message}");
        return ExitCode::FAILURE;
    }
    match measure(args) {
        Ok(report) => {
            print_report(&report, args.json);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("bench engine failed: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One request of the lookup mix.
struct BenchRequest {
    host: String,
    path: String,
}

/// Position of one request's host and path in `Requests::text`.
struct Span {
    start: u32,
    host_len: u32,
    path_len: u32,
}

/// Requests stored back to back in one buffer, in lookup order. A proxy
/// routes a request head it has just parsed, so the head is in the CPU
/// cache. Requests in separate allocations would add two cache misses per
/// lookup that a proxy does not have, so the buffer is read in order, which
/// the CPU prefetches.
struct Requests {
    text: String,
    spans: Vec<Span>,
}

impl Requests {
    fn new(requests: &[BenchRequest]) -> Requests {
        let mut text = String::new();
        let spans = requests
            .iter()
            .map(|request| {
                let start = text.len() as u32;
                text.push_str(&request.host);
                text.push_str(&request.path);
                Span {
                    start,
                    host_len: request.host.len() as u32,
                    path_len: request.path.len() as u32,
                }
            })
            .collect();
        Requests { text, spans }
    }

    #[inline]
    fn get(&self, span: &Span) -> BenchRef<'_> {
        let host_end = (span.start + span.host_len) as usize;
        BenchRef {
            host: &self.text[span.start as usize..host_end],
            path: &self.text[host_end..host_end + span.path_len as usize],
        }
    }
}

/// A request borrowed from `Requests`.
struct BenchRef<'a> {
    host: &'a str,
    path: &'a str,
}

/// Figures of one lookup structure.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    lookups_per_sec: f64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    bytes_per_route: f64,
    /// FIT collisions (probes past the home group and tag matches with
    /// another key) per FIT lookup in the throughput pass, or `None` when
    /// the lookups made no FIT lookup (the crate baselines).
    fit_collisions_per_lookup: Option<f64>,
}

impl Figures {
    fn json(&self) -> Value {
        let mut object = json!({
            "lookups_per_sec": self.lookups_per_sec.round(),
            "p50_ns": self.p50_ns,
            "p99_ns": self.p99_ns,
            "p999_ns": self.p999_ns,
            "bytes_per_route": (self.bytes_per_route * 10.0).round() / 10.0,
        });
        if let Some(rate) = self.fit_collisions_per_lookup {
            object["fit_collisions_per_lookup"] = ((rate * 10_000.0).round() / 10_000.0).into();
        }
        object
    }
}

struct Report {
    routes: usize,
    config_routes: usize,
    key_entries: usize,
    threads: usize,
    skew: f64,
    /// The kind of the requests routed, or the mix of all kinds.
    requests: RequestKind,
    engine: Figures,
    lookups_per_sec_per_thread: f64,
    /// Lookups per second of all threads through `route_batch`.
    batched_lookups_per_sec: f64,
    bytes_per_config_route: f64,
    bytes_per_key_entry: f64,
    build_ms: f64,
    updates_per_sec: f64,
    batch_visible_ms: f64,
    /// Hits per lookup of the route cache in the cached pass.
    cache_hit_rate: f64,
    /// Nanoseconds per dependent load from a buffer larger than the
    /// caches, from [`memory_latency_ns`].
    memory_latency_ns: f64,
    baselines: Vec<(&'static str, Figures)>,
}

fn measure(args: &EngineBenchArgs) -> Result<Report, String> {
    let duration = Duration::from_secs_f64(args.seconds.max(0.01));
    let mut rng = StdRng::seed_from_u64(args.routes as u64);
    // Before the route set exists, so that its buffer is freed before the
    // tables are allocated.
    let memory_latency_ns = memory_latency_ns();
    let plan = Plan::new(args.routes);
    let entries_file = TempFile::write(&plan.entries_csv())?;
    let config = plan.config(&entries_file.path);

    // Build the engine state as a snapshot build does, measuring time and
    // allocator bytes of each part.
    let counters = FitCounters::new();
    let started = Instant::now();
    let (routes, route_bytes) =
        retained(|| RouteTable::build_counted(&config, Arc::clone(&counters)));
    let routes = routes.map_err(|error| error.to_string())?;
    let (tables, table_bytes) =
        retained(|| valkyrie_proxy::keys::load_tables(&config, None, None, &counters));
    let tables = tables.map_err(|error| error.to_string())?;
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(entries_file);

    let requests = Requests::new(&plan.requests(&mut rng, args.skew, args.requests));
    let headers = HeaderMap::new();
    let uncached = |span: &Span, tally: &mut FitTally| {
        engine_lookup(&routes, &tables, None, &requests.get(span), &headers, tally)
    };
    let mut engine = time_lookups(&requests.spans, args.threads, duration, uncached);
    let batched_lookups_per_sec = time_batches(
        &requests.spans,
        args.threads,
        duration,
        |group, tally, scratch| {
            engine_batch(&routes, &tables, &requests, group, &headers, tally, scratch)
        },
    );

    // The same lookups through the route decision cache, filled by a first
    // pass, at the size the sample configs set.
    let cache = RouteCache::new(CACHE_SIZE, Duration::from_secs(300));
    let now = Instant::now();
    let cached = |span: &Span, tally: &mut FitTally| {
        let cache = Some((&cache, now));
        engine_lookup(
            &routes,
            &tables,
            cache,
            &requests.get(span),
            &headers,
            tally,
        )
    };
    let mut tally = FitTally::default();
    for span in &requests.spans {
        cached(span, &mut tally);
    }
    let mut with_cache = time_lookups(&requests.spans, args.threads, duration, cached);
    let cache_stats = cache.stats();
    drop(cache);
    let total_routes = plan.config_routes + plan.key_entries;
    engine.bytes_per_route = (route_bytes + table_bytes) as f64 / total_routes as f64;
    let lookups_per_sec_per_thread = engine.lookups_per_sec / args.threads as f64;
    with_cache.bytes_per_route = engine.bytes_per_route;
    let cache_hit_rate =
        cache_stats.hits as f64 / (cache_stats.hits + cache_stats.misses).max(1) as f64;

    let bytes_per_config_route = route_bytes as f64 / plan.config_routes as f64;
    let mut baselines = baselines(
        &plan,
        &routes,
        bytes_per_config_route,
        &tables[0].table,
        &mut rng,
        duration,
        args.skew,
    );
    baselines.push(("valkyrie_cached", with_cache));
    let (updates_per_sec, batch_visible_ms) = measure_updates(&config, &tables[0].table, &plan)?;

    Ok(Report {
        routes: total_routes,
        config_routes: plan.config_routes,
        key_entries: plan.key_entries,
        threads: args.threads,
        skew: args.skew,
        requests: args.requests,
        engine,
        lookups_per_sec_per_thread,
        batched_lookups_per_sec,
        bytes_per_config_route,
        bytes_per_key_entry: table_bytes as f64 / plan.key_entries as f64,
        build_ms,
        updates_per_sec,
        batch_visible_ms,
        cache_hit_rate,
        memory_latency_ns,
        baselines,
    })
}

/// Routes one request and resolves its key on a key-table route; returns
/// the upstream index, or `usize::MAX` for no route.
fn engine_lookup(
    routes: &RouteTable,
    tables: &[LoadedTable],
    cache: Option<(&RouteCache, Instant)>,
    request: &BenchRef<'_>,
    headers: &HeaderMap,
    tally: &mut FitTally,
) -> usize {
    let info = RequestInfo {
        host: Some(request.host),
        path: request.path,
        query: None,
        method: &Method::GET,
        headers,
    };
    let matched = match cache {
        Some((cache, now)) => cache.route(routes, &info, now, tally),
        None => routes.route_counted(&info, tally).matched,
    };
    let Some(matched) = matched else {
        return usize::MAX;
    };
    match matched.target {
        RouteTarget::Upstream(index) => index,
        RouteTarget::KeyTable(index) => {
            let table = &tables[index].table;
            let key = table.spec().extract(&matched.path, None, headers);
            match table.resolve(key.as_deref(), tally) {
                Resolution::Entry(target) | Resolution::Default(target) => target.upstream(),
                Resolution::Missing => usize::MAX,
            }
        }
    }
}

/// A key-table key waiting in the pipeline of [`engine_batch`]: the
/// table's index, the key and its hash.
type PendingKey<'a> = (usize, &'a [u8], u64);

/// Calls of [`engine_batch`] after a key enters its pipeline until the key
/// is resolved: one to request its entry, one to resolve it.
const PIPELINE_STEPS: usize = 2;

/// Buffers a thread reuses from one group of requests to the next, and
/// the keys of earlier groups still in the pipeline.
#[derive(Default)]
struct BatchScratch<'a> {
    infos: Vec<RequestInfo<'a>>,
    routed: Vec<Routed<'a>>,
    /// Keys of the previous group: hashed, their table places requested.
    hashed: Vec<PendingKey<'a>>,
    /// Keys of the group before: their entries requested too.
    loading: Vec<PendingKey<'a>>,
}

/// Routes a group of requests with `route_batch` and moves the keys of
/// key-table routes through a three-step pipeline, one step per group.
/// The keys of this group are hashed and their table places requested.
/// The entries of the previous group's keys are requested, and the keys
/// of the group before that are resolved. So each cache miss has the time
/// of a whole group to arrive, where resolving a group's own keys right
/// after requesting them would wait for the slowest. Returns a sum of the
/// upstream indexes, which the caller keeps from being optimized away.
fn engine_batch<'a>(
    routes: &'a RouteTable,
    tables: &[LoadedTable],
    requests: &'a Requests,
    group: &[Span],
    headers: &'a HeaderMap,
    tally: &mut FitTally,
    scratch: &mut BatchScratch<'a>,
) -> usize {
    let BatchScratch {
        infos,
        routed,
        hashed,
        loading,
    } = scratch;

    infos.clear();
    infos.extend(group.iter().map(|span| {
        let request = requests.get(span);
        RequestInfo {
            host: Some(request.host),
            path: request.path,
            query: None,
            method: &Method::GET,
            headers,
        }
    }));
    routed.clear();
    routes.route_batch(infos, tally, routed);

    let mut sum = 0usize;
    for &(index, key, hash) in loading.iter() {
        let resolution = tables[index].table.resolve_hashed(Some((key, hash)), tally);
        sum = sum.wrapping_add(resolved_upstream(resolution));
    }
    loading.clear();
    for &(index, key, hash) in hashed.iter() {
        tables[index].table.prefetch_entry(key, hash);
    }
    std::mem::swap(hashed, loading);

    // Upstream targets are summed now, and key-table keys enter the
    // pipeline.
    for found in routed.iter() {
        let Some(matched) = &found.matched else {
            sum = sum.wrapping_add(usize::MAX);
            continue;
        };
        match matched.target {
            RouteTarget::Upstream(index) => sum = sum.wrapping_add(index),
            RouteTarget::KeyTable(index) => {
                let table = &tables[index].table;
                // The generated paths need no normalization and their keys
                // are path segments, so the keys borrow from the requests
                // and can wait in the pipeline.
                let borrowed = match matched.path {
                    Cow::Borrowed(path) => table.spec().extract(path, None, headers),
                    Cow::Owned(_) => None,
                };
                if let Some(Cow::Borrowed(key)) = borrowed {
                    hashed.push((index, key, table.prefetch(key)));
                } else {
                    let key = table.spec().extract(&matched.path, None, headers);
                    let resolution = table.resolve(key.as_deref(), tally);
                    sum = sum.wrapping_add(resolved_upstream(resolution));
                }
            }
        }
    }
    sum
}

fn resolved_upstream(resolution: Resolution) -> usize {
    match resolution {
        Resolution::Entry(target) | Resolution::Default(target) => target.upstream(),
        Resolution::Missing => usize::MAX,
    }
}

/// The shape of the generated route set for a route count.
struct Plan {
    key_entries: usize,
    config_routes: usize,
    hosts: usize,
    wildcards: usize,
}

impl Plan {
    fn new(routes: usize) -> Plan {
        let key_entries = routes * 7 / 10;
        let config_target = routes - key_entries;
        let wildcards = (config_target / 100).max(1);
        let per_host = PREFIXES_PER_HOST + 1;
        let hosts = config_target
            .saturating_sub(wildcards + 2)
            .div_ceil(per_host)
            .max(1);
        Plan {
            key_entries,
            config_routes: hosts * per_host + wildcards + 2,
            hosts,
            wildcards,
        }
    }

    fn config(&self, entries: &std::path::Path) -> Config {
        let upstreams = (0..UPSTREAMS)
            .map(|index| {
                let endpoints: Vec<String> = (0..2)
                    .map(|port| format!("127.0.0.1:{}", 9000 + index * 2 + port))
                    .collect();
                // Deserialized, so every other key takes its default.
                serde_json::from_value::<UpstreamConfig>(json!({
                    "name": format!("u{index}"),
                    "endpoints": endpoints,
                }))
                .expect("a name and endpoints make a valid upstream")
            })
            .collect();
        let mut config = Config {
            upstreams,
            ..Config::default()
        };
        let route = |name: String, host: Option<String>| RouteConfig {
            name,
            host,
            upstream: Some("u0".to_string()),
            ..RouteConfig::default()
        };
        for host in 0..self.hosts {
            let upstream = Some(format!("u{}", host % UPSTREAMS));
            for prefix in 0..PREFIXES_PER_HOST {
                config.routes.push(RouteConfig {
                    path_prefix: Some(format!("/api/v{prefix}/")),
                    upstream: upstream.clone(),
                    ..route(format!("h{host}-v{prefix}"), Some(host_name(host)))
                });
            }
            config.routes.push(RouteConfig {
                path_exact: Some("/health".to_string()),
                upstream,
                ..route(format!("h{host}-health"), Some(host_name(host)))
            });
        }
        for zone in 0..self.wildcards {
            config.routes.push(RouteConfig {
                path_prefix: Some("/".to_string()),
                ..route(
                    format!("zone{zone}"),
                    Some(format!("*.z{zone}.example.com")),
                )
            });
        }
        config.routes.push(RouteConfig {
            path_prefix: Some("/t/".to_string()),
            upstream: None,
            key_table: Some("tenants".to_string()),
            ..route(
                "tenants".to_string(),
                Some("tenants.example.com".to_string()),
            )
        });
        config.routes.push(route("fallback".to_string(), None));
        config.key_tables.push(KeyTableConfig {
            name: "tenants".to_string(),
            key: KeySource::PathSegment(1),
            source: TableSource::File(entries.display().to_string()),
            default_upstream: Some("u0".to_string()),
        });
        config.routing.lockfree.fit_capacity = 1024;
        config
    }

    fn entries_csv(&self) -> String {
        let mut text = String::with_capacity(self.key_entries * 32);
        for entry in 0..self.key_entries {
            let upstream = entry % UPSTREAMS;
            // One entry in ten pins an endpoint.
            if entry % 10 == 0 {
                let port = 9000 + upstream * 2 + entry % 2;
                text.push_str(&format!("{},u{upstream},127.0.0.1:{port}\n", tenant(entry)));
            } else {
                text.push_str(&format!("{},u{upstream}\n", tenant(entry)));
            }
        }
        text
    }

    /// Generates the lookup mix: 50% exact host and prefix, 10% exact path,
    /// 10% wildcard host, 25% key-table keys (2% of them unknown), 5%
    /// unknown hosts that fall through to the catch-all.
    ///
    /// With `skew` above 0, hosts, zones and keys follow a Zipf law of that
    /// exponent over a random order, so the popular ones are spread over
    /// the tables as they would be in traffic. An `only` other than
    /// [`RequestKind::Mix`] makes every request of that kind.
    fn requests(&self, rng: &mut StdRng, skew: f64, only: RequestKind) -> Vec<BenchRequest> {
        let count = (self.config_routes + self.key_entries).clamp(4096, MAX_REQUESTS);
        let hosts = Picker::new(self.hosts, skew, rng);
        let zones = Picker::new(self.wildcards, skew, rng);
        let keys = Picker::new(self.key_entries.max(1), skew, rng);
        (0..count)
            .map(|_| {
                // Drawn in every case, so that the mix is the same as before
                // `--requests` was added and its figures compare with older runs.
                let mut kind = rng.gen_range(0..100);
                kind = match only {
                    RequestKind::Mix => kind,
                    RequestKind::Prefix => 0,
                    RequestKind::ExactPath => 50,
                    RequestKind::Wildcard => 60,
                    RequestKind::Key => 70,
                    RequestKind::UnknownHost => 95,
                };
                match kind {
                    0..=49 => BenchRequest {
                        host: host_name(hosts.pick(rng)),
                        path: format!(
                            "/api/v{}/items/{}",
                            rng.gen_range(0..PREFIXES_PER_HOST),
                            rng.gen_range(0..1000)
                        ),
                    },
                    50..=59 => BenchRequest {
                        host: host_name(hosts.pick(rng)),
                        path: "/health".to_string(),
                    },
                    60..=69 => BenchRequest {
                        host: format!(
                            "shop{}.z{}.example.com",
                            rng.gen_range(0..100),
                            zones.pick(rng)
                        ),
                        path: "/cart".to_string(),
                    },
                    70..=94 => {
                        let entry = keys.pick(rng);
                        let key = if rng.gen_range(0..50) == 0 {
                            format!("unknown-{entry}")
                        } else {
                            tenant(entry)
                        };
                        BenchRequest {
                            host: "tenants.example.com".to_string(),
                            path: format!("/t/{key}/orders"),
                        }
                    }
                    _ => BenchRequest {
                        host: format!("nowhere{}.org", rng.gen_range(0..1000)),
                        path: "/".to_string(),
                    },
                }
            })
            .collect()
    }
}

/// Picks one of `len` items, uniformly or by a Zipf law.
struct Picker {
    len: usize,
    /// Cumulative probability of the ranks; empty when uniform.
    cdf: Vec<f64>,
    /// `order[rank]` is the item of that rank.
    order: Vec<u32>,
}

impl Picker {
    fn new(len: usize, skew: f64, rng: &mut StdRng) -> Picker {
        if skew <= 0.0 || len < 2 {
            return Picker {
                len,
                cdf: Vec::new(),
                order: Vec::new(),
            };
        }
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=len)
            .map(|rank| {
                total += (rank as f64).powf(-skew);
                total
            })
            .collect();
        for value in &mut cdf {
            *value /= total;
        }
        let mut order: Vec<u32> = (0..len as u32).collect();
        order.shuffle(rng);
        Picker { len, cdf, order }
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        if self.cdf.is_empty() {
            return rng.gen_range(0..self.len);
        }
        let draw: f64 = rng.gen();
        let rank = self.cdf.partition_point(|&value| value < draw);
        self.order[rank.min(self.len - 1)] as usize
    }
}

fn host_name(host: usize) -> String {
    format!("h{host}.example.com")
}

fn tenant(entry: usize) -> String {
    format!("tenant-{entry:07}")
}

/// Measures throughput on `threads` threads, then per-lookup latency.
fn time_lookups<R, F>(requests: &[R], threads: usize, duration: Duration, lookup: F) -> Figures
where
    R: Sync,
    F: Fn(&R, &mut FitTally) -> usize + Sync,
{
    let lookup = &lookup;
    let counts: Vec<(usize, Duration, FitTally)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    let mut tally = FitTally::default();
                    let mut position = thread * requests.len() / threads;
                    let mut done = 0usize;
                    let started = Instant::now();
                    loop {
                        for _ in 0..CHECK_EVERY {
                            black_box(lookup(&requests[position], &mut tally));
                            position += 1;
                            if position == requests.len() {
                                position = 0;
                            }
                        }
                        done += CHECK_EVERY;
                        if started.elapsed() >= duration {
                            return (done, started.elapsed(), tally);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .collect()
    });
    let lookups_per_sec = counts
        .iter()
        .map(|(done, elapsed, _)| *done as f64 / elapsed.as_secs_f64())
        .sum();
    let fit_operations: u64 = counts.iter().map(|(_, _, tally)| tally.operations).sum();
    let fit_collisions: u64 = counts.iter().map(|(_, _, tally)| tally.collisions).sum();
    let fit_collisions_per_lookup =
        (fit_operations > 0).then(|| fit_collisions as f64 / fit_operations as f64);

    let overhead = clock_overhead_ns();
    let mut samples: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    let mut tally = FitTally::default();
                    let mut samples = Vec::with_capacity(MAX_SAMPLES.min(1 << 20));
                    let mut position = (thread * requests.len() / threads + 7) % requests.len();
                    let started = Instant::now();
                    while started.elapsed() < duration / 2 && samples.len() < MAX_SAMPLES {
                        let before = Instant::now();
                        black_box(lookup(&requests[position], &mut tally));
                        let nanos = before.elapsed().as_nanos() as u64;
                        samples.push(nanos.saturating_sub(overhead));
                        position = (position + 1) % requests.len();
                    }
                    samples
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect()
    });
    samples.sort_unstable();
    Figures {
        lookups_per_sec,
        p50_ns: percentile(&samples, 0.5),
        p99_ns: percentile(&samples, 0.99),
        p999_ns: percentile(&samples, 0.999),
        bytes_per_route: 0.0,
        fit_collisions_per_lookup,
    }
}

/// Runs `run` on groups of `ROUTE_BATCH` requests, round robin, on
/// `threads` threads for `duration`, and returns the requests per second of
/// all threads together.
fn time_batches<'a, F>(requests: &[Span], threads: usize, duration: Duration, run: F) -> f64
where
    F: Fn(&[Span], &mut FitTally, &mut BatchScratch<'a>) -> usize + Sync,
{
    let run = &run;
    let groups = (requests.len() / ROUTE_BATCH).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    let mut tally = FitTally::default();
                    let mut scratch = BatchScratch::default();
                    let mut group = thread * groups / threads;
                    let mut done = 0usize;
                    let started = Instant::now();
                    loop {
                        for _ in 0..CHECK_EVERY / ROUTE_BATCH {
                            let start = group * ROUTE_BATCH;
                            let end = (start + ROUTE_BATCH).min(requests.len());
                            black_box(run(&requests[start..end], &mut tally, &mut scratch));
                            done += end - start;
                            group += 1;
                            if group == groups {
                                group = 0;
                            }
                        }
                        if started.elapsed() >= duration {
                            // Requests counted in `done` may still wait in
                            // the pipeline of `run`. Empty groups move them
                            // on until all are resolved, on the clock.
                            for _ in 0..PIPELINE_STEPS {
                                black_box(run(&[], &mut tally, &mut scratch));
                            }
                            return done as f64 / started.elapsed().as_secs_f64();
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .sum()
    })
}

/// Returns the nanoseconds a load waits when the CPU caches miss and its
/// address depends on the previous load, as in a lookup that follows a
/// slot to its record. The figure is the mean over `PROBE_LOADS` loads
/// that walk one random cycle through the cache lines of a `PROBE_BYTES`
/// buffer. A lookup that waits for `n` such loads in a row takes at least
/// `n` times this long. Unless consecutive lookups overlap in the CPU,
/// that bounds the lookups per second of one thread on tables larger
/// than the caches.
fn memory_latency_ns() -> f64 {
    const WORDS_PER_LINE: usize = 64 / std::mem::size_of::<usize>();
    let lines = PROBE_BYTES / 64;
    // A generator of its own leaves the request mix the same as without
    // the probe.
    let mut rng = StdRng::seed_from_u64(PROBE_BYTES as u64);
    // Sattolo's shuffle gives a permutation of one cycle through all lines,
    // so the walk visits every line before it repeats any.
    let mut order: Vec<usize> = (0..lines).collect();
    for last in (1..lines).rev() {
        let other = rng.gen_range(0..last);
        order.swap(last, other);
    }
    // The first word of line `i` contains the word index of line `order[i]`.
    let mut next = vec![0usize; lines * WORDS_PER_LINE];
    for (line, &successor) in order.iter().enumerate() {
        next[line * WORDS_PER_LINE] = successor * WORDS_PER_LINE;
    }
    drop(order);
    let mut at = 0;
    let started = Instant::now();
    for _ in 0..PROBE_LOADS {
        at = next[at];
    }
    let elapsed = started.elapsed();
    black_box(at);
    elapsed.as_nanos() as f64 / PROBE_LOADS as f64
}

/// Returns the median nanoseconds between two clock readings with nothing
/// in between.
fn clock_overhead_ns() -> u64 {
    let mut samples: Vec<u64> = (0..10_000)
        .map(|_| {
            let before = Instant::now();
            before.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    percentile(&samples, 0.5)
}

fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[index]
}

/// Runs matchit on the exact-host requests (host as the first path
/// segment) and hashbrown on the key-table keys, each next to the engine
/// on the same input, one thread each.
fn baselines(
    plan: &Plan,
    routes: &RouteTable,
    bytes_per_config_route: f64,
    table: &KeyTable,
    rng: &mut StdRng,
    duration: Duration,
    skew: f64,
) -> Vec<(&'static str, Figures)> {
    let mut baselines = Vec::new();
    let headers = HeaderMap::new();
    let hosts = Picker::new(plan.hosts, skew, rng);
    let entries = Picker::new(plan.key_entries.max(1), skew, rng);

    // Paths: exact host with a prefix or the exact path.
    let path_requests: Vec<BenchRequest> = (0..MAX_REQUESTS.min(plan.hosts * 16).max(4096))
        .map(|_| {
            let host = host_name(hosts.pick(rng));
            let prefix = rng.gen_range(0..=PREFIXES_PER_HOST);
            let path = if prefix == PREFIXES_PER_HOST {
                "/health".to_string()
            } else {
                format!("/api/v{prefix}/items/{}", rng.gen_range(0..1000))
            };
            BenchRequest { host, path }
        })
        .collect();
    let host_routes = plan.hosts * (PREFIXES_PER_HOST + 1);
    let (matchit, matchit_bytes) = retained(|| {
        let mut matchit = matchit::Router::new();
        for host in 0..plan.hosts {
            for prefix in 0..PREFIXES_PER_HOST {
                let route = format!("/{}/api/v{prefix}/{{*rest}}", host_name(host));
                matchit
                    .insert(route, (host * (PREFIXES_PER_HOST + 1) + prefix) as u32)
                    .expect("generated matchit routes do not conflict");
            }
            matchit
                .insert(
                    format!("/{}/health", host_name(host)),
                    (host * (PREFIXES_PER_HOST + 1) + PREFIXES_PER_HOST) as u32,
                )
                .expect("generated matchit routes do not conflict");
        }
        matchit
    });
    let joined = Requests::new(
        &path_requests
            .iter()
            .map(|request| BenchRequest {
                host: format!("/{}", request.host),
                path: request.path.clone(),
            })
            .collect::<Vec<_>>(),
    );
    let mut figures = time_lookups(&joined.spans, 1, duration, |span, _| {
        // The host and path are adjacent, so together they are one path.
        let start = span.start as usize;
        let path = &joined.text[start..start + (span.host_len + span.path_len) as usize];
        matchit
            .at(path)
            .map_or(usize::MAX, |found| *found.value as usize)
    });
    figures.bytes_per_route = matchit_bytes as f64 / host_routes as f64;
    baselines.push(("matchit", figures));

    let path_requests = Requests::new(&path_requests);
    let mut engine_paths = time_lookups(&path_requests.spans, 1, duration, |span, tally| {
        let request = path_requests.get(span);
        let info = RequestInfo {
            host: Some(request.host),
            path: request.path,
            query: None,
            method: &Method::GET,
            headers: &headers,
        };
        routes
            .route_counted(&info, tally)
            .matched
            .map_or(usize::MAX, |matched| match matched.target {
                RouteTarget::Upstream(index) | RouteTarget::KeyTable(index) => index,
            })
    });
    // The whole compiled route counts, not only its index entries.
    engine_paths.bytes_per_route = bytes_per_config_route;
    baselines.push(("valkyrie_paths", engine_paths));
    drop(matchit);

    // Exact keys: 98% hits, 2% misses.
    let keys = Requests::new(
        &(0..MAX_REQUESTS.min(plan.key_entries * 2).max(4096))
            .map(|_| {
                let entry = entries.pick(rng);
                let key = if rng.gen_range(0..50) == 0 {
                    format!("unknown-{entry}")
                } else {
                    tenant(entry)
                };
                BenchRequest {
                    host: key,
                    path: String::new(),
                }
            })
            .collect::<Vec<_>>(),
    );
    let brown_hasher = hashbrown::DefaultHashBuilder::default();
    let (brown, brown_bytes) = retained(|| {
        let mut brown: hashbrown::HashTable<(Box<[u8]>, KeyTarget)> =
            hashbrown::HashTable::with_capacity(table.len());
        for (key, target) in table.iter() {
            brown.insert_unique(
                hash_bytes(&brown_hasher, key),
                (key.into(), target),
                |entry| hash_bytes(&brown_hasher, &entry.0),
            );
        }
        brown
    });
    let mut figures = time_lookups(&keys.spans, 1, duration, |span, _| {
        let key = keys.get(span).host.as_bytes();
        brown
            .find(hash_bytes(&brown_hasher, key), |entry| *entry.0 == *key)
            .map_or(usize::MAX, |entry| entry.1.upstream())
    });
    figures.bytes_per_route = brown_bytes as f64 / table.len().max(1) as f64;
    baselines.push(("hashbrown", figures));
    drop(brown);

    let mut figures = time_lookups(&keys.spans, 1, duration, |span, tally| {
        table
            .get_tallied(keys.get(span).host.as_bytes(), tally)
            .map_or(usize::MAX, |target| target.upstream())
    });
    let stats = table.stats();
    figures.bytes_per_route = stats.heap_bytes as f64 / stats.entries.max(1) as f64;
    baselines.push(("valkyrie_keys", figures));
    baselines
}

/// Hashes key bytes the way the FIT does: one `write` of the bytes,
/// without the length prefix that `Hash for [u8]` adds.
#[inline(always)]
fn hash_bytes(hasher: &hashbrown::DefaultHashBuilder, key: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut state = hasher.build_hasher();
    state.write(key);
    state.finish()
}

/// The state the update benchmark publishes: the key table only, built and
/// replaced the way the proxy's publisher replaces its key tables.
struct UpdateState {
    table: Arc<KeyTable>,
}

/// Applies `UPDATES` changes through a `Publisher` with the default
/// batching (10 ms, 10,000 pending), then measures how long a batch of
/// 10,000 changes takes to become visible. Returns changes per second and
/// that time in milliseconds.
fn measure_updates(config: &Config, table: &KeyTable, plan: &Plan) -> Result<(f64, f64), String> {
    let rcu = Arc::new(Rcu::new(UpdateState {
        table: Arc::new(table.clone()),
    }));
    let names = UpstreamNames::new(config);
    let settings = PublisherConfig {
        grace_period: config.routing.lockfree.rcu_grace_period.0,
        max_pending: config.routing.lockfree.rcu_max_pending_updates,
    };
    let apply = move |current: &UpdateState, batch: &[(Vec<u8>, String)]| {
        let mut table = (*current.table).clone();
        let applied = table.apply_each(
            batch,
            |(key, _)| key,
            |table, (key, upstream)| {
                if let Ok(target) = names.resolve(upstream, None) {
                    table.insert(key, target);
                }
                Ok::<(), Infallible>(())
            },
        );
        let Ok(()) = applied;
        UpdateState {
            table: Arc::new(table),
        }
    };
    let publisher = Publisher::spawn(Arc::clone(&rcu), settings, apply)
        .map_err(|error| format!("cannot start the publisher thread: {error}"))?;

    let changes = |offset: usize, count: usize| {
        (offset..offset + count).map(move |index| {
            // Half the changes replace entries, half add new keys.
            let key = if index % 2 == 0 {
                tenant(index % plan.key_entries.max(1))
            } else {
                format!("new-{index}")
            };
            (key.into_bytes(), format!("u{}", index % UPSTREAMS))
        })
    };
    let started = Instant::now();
    for chunk in 0..UPDATES / 1000 {
        publisher.submit_all(changes(chunk * 1000, 1000));
    }
    publisher.flush();
    let updates_per_sec = UPDATES as f64 / started.elapsed().as_secs_f64();

    let generation = rcu.generation();
    let started = Instant::now();
    publisher.submit_all(changes(UPDATES, VISIBILITY_BATCH));
    while rcu.generation() == generation {
        std::thread::sleep(Duration::from_micros(100));
    }
    let visible_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok((updates_per_sec, visible_ms))
}

/// Runs `build` on a new thread and returns its result with the bytes it
/// left allocated. The thread's exit returns its allocation cache to
/// jemalloc, so freed temporaries are not counted. Allocations of other
/// threads in the meantime are counted, so the figure is an estimate.
fn retained<T: Send>(build: impl FnOnce() -> T + Send) -> (T, usize) {
    let before = allocated_bytes();
    let built =
        std::thread::scope(|scope| scope.spawn(build).join().expect("the build does not panic"));
    (built, allocated_bytes().saturating_sub(before))
}

/// Returns jemalloc's count of bytes allocated by the process.
fn allocated_bytes() -> usize {
    use tikv_jemalloc_ctl::{epoch, stats};

    if epoch::advance().is_err() {
        return 0;
    }
    stats::allocated::read().unwrap_or(0)
}

/// A file in the temporary folder, removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(text: &str) -> Result<TempFile, String> {
        let path = std::env::temp_dir().join(format!(
            "valkyrie-bench-{}-{}.csv",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        Ok(TempFile { path })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Returns the name that `--requests` takes for `kind`.
fn request_kind_name(kind: RequestKind) -> String {
    kind.to_possible_value()
        .map(|value| value.get_name().to_string())
        .unwrap_or_default()
}

fn print_report(report: &Report, json: bool) {
    let engine = &report.engine;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "routes {} ({} config routes, {} key-table entries), threads {}, skew {}, requests {}",
        report.routes,
        report.config_routes,
        report.key_entries,
        report.threads,
        report.skew,
        request_kind_name(report.requests)
    );
    let _ = writeln!(out, "snapshot build        {:>12.1} ms", report.build_ms);
    let _ = writeln!(
        out,
        "lookups              {:>12.0} /s ({:.0} /s per thread)",
        engine.lookups_per_sec, report.lookups_per_sec_per_thread
    );
    let _ = writeln!(
        out,
        "batched lookups      {:>12.0} /s (route_batch, {} requests per group)",
        report.batched_lookups_per_sec, ROUTE_BATCH
    );
    let _ = writeln!(
        out,
        "latency              p50 {} ns, p99 {} ns, p99.9 {} ns (per-lookup clock readings, clock cost subtracted)",
        engine.p50_ns, engine.p99_ns, engine.p999_ns
    );
    let _ = writeln!(
        out,
        "memory latency       {:>12.1} ns per dependent load from a {} MB buffer (one such load per lookup caps one thread at {:.0} /s)",
        report.memory_latency_ns,
        PROBE_BYTES >> 20,
        1e9 / report.memory_latency_ns.max(0.1)
    );
    let _ = writeln!(
        out,
        "memory               {:>12.1} bytes per route ({:.1} per config route, {:.1} per key-table entry)",
        engine.bytes_per_route, report.bytes_per_config_route, report.bytes_per_key_entry
    );
    let _ = writeln!(
        out,
        "updates              {:>12.0} /s through the publisher; a 10,000-change batch visible after {:.1} ms",
        report.updates_per_sec, report.batch_visible_ms
    );
    let _ = writeln!(
        out,
        "route cache          hit rate {:.3} in the cached pass (valkyrie_cached below)",
        report.cache_hit_rate
    );
    if let Some(rate) = engine.fit_collisions_per_lookup {
        let _ = writeln!(
            out,
            "FIT collisions       {rate:>12.4} per FIT lookup (host FIT and key tables)"
        );
    }
    for (name, figures) in &report.baselines {
        // The key baselines' bytes are per key, the others' per route.
        let unit = match *name {
            "hashbrown" | "valkyrie_keys" => "key",
            _ => "route",
        };
        let _ = write!(
            out,
            "{name:<20} {:>12.0} /s, p50 {} ns, p99 {} ns, p99.9 {} ns, {:.1} bytes per {unit}",
            figures.lookups_per_sec,
            figures.p50_ns,
            figures.p99_ns,
            figures.p999_ns,
            figures.bytes_per_route
        );
        if let Some(rate) = figures.fit_collisions_per_lookup {
            let _ = write!(out, ", {rate:.4} FIT collisions per FIT lookup");
        }
        let _ = writeln!(out);
    }
    if json {
        let baselines: serde_json::Map<String, Value> = report
            .baselines
            .iter()
            .map(|(name, figures)| (name.to_string(), figures.json()))
            .collect();
        let mut object = engine.json();
        object["routes"] = report.routes.into();
        object["config_routes"] = report.config_routes.into();
        object["key_entries"] = report.key_entries.into();
        object["threads"] = report.threads.into();
        object["skew"] = report.skew.into();
        object["requests"] = request_kind_name(report.requests).into();
        object["lookups_per_sec_per_thread"] = report.lookups_per_sec_per_thread.round().into();
        object["batched_lookups_per_sec"] = report.batched_lookups_per_sec.round().into();
        object["route_batch"] = ROUTE_BATCH.into();
        object["bytes_per_config_route"] =
            ((report.bytes_per_config_route * 10.0).round() / 10.0).into();
        object["bytes_per_key_entry"] = ((report.bytes_per_key_entry * 10.0).round() / 10.0).into();
        object["build_ms"] = ((report.build_ms * 10.0).round() / 10.0).into();
        object["updates_per_sec"] = report.updates_per_sec.round().into();
        object["batch_10k_visible_ms"] = ((report.batch_visible_ms * 100.0).round() / 100.0).into();
        object["cache_hit_rate"] = ((report.cache_hit_rate * 1000.0).round() / 1000.0).into();
        object["memory_latency_ns"] = ((report.memory_latency_ns * 10.0).round() / 10.0).into();
        object["latency_method"] =
            "per-lookup Instant readings minus the median empty reading".into();
        object["baselines"] = Value::Object(baselines);
        let _ = writeln!(out, "{object}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes every request of a generated mix one at a time and in groups,
    /// draining the group pipeline as `time_batches` does, and returns both
    /// sums of the upstream indexes.
    fn sums_one_by_one_and_batched(routes: usize, skew: f64) -> (usize, usize) {
        let plan = Plan::new(routes);
        let entries_file = TempFile::write(&plan.entries_csv()).expect("entry file");
        let config = plan.config(&entries_file.path);
        let counters = FitCounters::new();
        let table = RouteTable::build_counted(&config, Arc::clone(&counters)).expect("routes");
        let tables =
            valkyrie_proxy::keys::load_tables(&config, None, None, &counters).expect("key tables");
        let mut rng = StdRng::seed_from_u64(7);
        let requests = Requests::new(&plan.requests(&mut rng, skew, RequestKind::Mix));
        let headers = HeaderMap::new();
        let mut tally = FitTally::default();

        let mut one_by_one = 0usize;
        for span in &requests.spans {
            let request = requests.get(span);
            let upstream = engine_lookup(&table, &tables, None, &request, &headers, &mut tally);
            one_by_one = one_by_one.wrapping_add(upstream);
        }

        let mut batched = 0usize;
        let mut scratch = BatchScratch::default();
        for group in requests.spans.chunks(ROUTE_BATCH) {
            let sum = engine_batch(
                &table,
                &tables,
                &requests,
                group,
                &headers,
                &mut tally,
                &mut scratch,
            );
            batched = batched.wrapping_add(sum);
        }
        for _ in 0..PIPELINE_STEPS {
            let sum = engine_batch(
                &table,
                &tables,
                &requests,
                &[],
                &headers,
                &mut tally,
                &mut scratch,
            );
            batched = batched.wrapping_add(sum);
        }
        assert!(scratch.hashed.is_empty(), "keys left after draining");
        assert!(scratch.loading.is_empty(), "keys left after draining");
        (one_by_one, batched)
    }

    /// Returns the kind of a generated request, by the shape of its host
    /// and path.
    fn kind_of(request: &BenchRequest) -> RequestKind {
        if request.host == "tenants.example.com" {
            RequestKind::Key
        } else if request.host.starts_with("nowhere") {
            RequestKind::UnknownHost
        } else if request.host.starts_with("shop") {
            RequestKind::Wildcard
        } else if request.path == "/health" {
            RequestKind::ExactPath
        } else {
            assert!(request.path.starts_with("/api/v"), "{}", request.path);
            RequestKind::Prefix
        }
    }

    #[test]
    fn requests_of_one_kind() {
        let plan = Plan::new(2_000);
        for only in [
            RequestKind::Prefix,
            RequestKind::ExactPath,
            RequestKind::Wildcard,
            RequestKind::Key,
            RequestKind::UnknownHost,
        ] {
            let mut rng = StdRng::seed_from_u64(7);
            let requests = plan.requests(&mut rng, 0.0, only);
            assert!(!requests.is_empty());
            for request in &requests {
                assert_eq!(kind_of(request), only, "{}{}", request.host, request.path);
            }
        }
    }

    #[test]
    fn request_mix_has_every_kind() {
        let plan = Plan::new(2_000);
        let mut rng = StdRng::seed_from_u64(7);
        let requests = plan.requests(&mut rng, 0.0, RequestKind::Mix);
        let count = |kind| requests.iter().filter(|r| kind_of(r) == kind).count();
        let total = requests.len() as f64;
        // The shares of the mix, within a few points for 4,096 requests.
        for (kind, share) in [
            (RequestKind::Prefix, 0.50),
            (RequestKind::ExactPath, 0.10),
            (RequestKind::Wildcard, 0.10),
            (RequestKind::Key, 0.25),
            (RequestKind::UnknownHost, 0.05),
        ] {
            let measured = count(kind) as f64 / total;
            assert!((measured - share).abs() < 0.03, "{kind:?}: {measured}");
        }
    }

    #[test]
    fn batched_pass_matches_single_lookups() {
        let (one_by_one, batched) = sums_one_by_one_and_batched(2_000, 0.0);
        assert_eq!(batched, one_by_one);
    }

    #[test]
    fn batched_pass_matches_with_zipf_keys() {
        let (one_by_one, batched) = sums_one_by_one_and_batched(2_000, 1.0);
        assert_eq!(batched, one_by_one);
    }
}
