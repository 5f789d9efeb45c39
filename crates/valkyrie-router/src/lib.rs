//! The route model compiled from configuration and the matcher that maps a
//! request (host, path, method, headers) to a route and its upstream.
//!
//! [`RouteTable`] describes the match order, [`normalize_path`] the path
//! normalization applied before matching, and [`never_matching_routes`] the
//! check for unreachable routes. [`keys`] holds key tables, which route by a
//! request key to an upstream, and [`cache`] the route decision cache.
//! `docs/routing.md` is the user guide.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use valkyrie_config::{Config, Duration, Rate};
use valkyrie_lockfree::{FitCounters, FitTally};

mod bytes;
pub mod cache;
mod compile;
mod conditions;
mod index;
pub mod keys;
mod normalize;
mod shadow;

pub use conditions::{
    HeaderCondition, HeaderRegex, HeaderValueMatch, HostPattern, HostRank, PathPattern, PathRank,
    PathRegex, Specificity,
};
pub use index::IndexStats;
pub use normalize::normalize_path;
pub use shadow::never_matching_routes;

use index::{FitSizing, HostIndex, Probe, RouteId};

/// Requests that [`RouteTable::route_batch`] takes through each step of a
/// lookup together: enough for their cache misses to overlap, few enough
/// for their state to stay in the L1 cache.
pub const ROUTE_BATCH: usize = 32;

/// What the matcher needs to know about a request. The host has its port
/// already removed or not; the matcher ignores a port either way.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub host: Option<&'a str>,
    /// The path as received, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: &'a http::HeaderMap,
}

/// Where a matched route sends its traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Index into `Config::upstreams`.
    Upstream(usize),
    /// Index into `Config::key_tables`.
    KeyTable(usize),
}

/// One compiled route.
///
/// The fields every lookup or request reads are inline. The settings that
/// most routes leave unset (`strip_prefix`, `timeout`, rate limits, method
/// and header conditions) are in one boxed record that only routes setting
/// one of them allocate, so a route of a large table stays small. Read them
/// through the methods. Routes of one host share its name.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub host: HostPattern,
    pub path: PathPattern,
    pub target: RouteTarget,
    /// Position in the config file's `[[routes]]` list.
    pub index: usize,
    pub retry_non_idempotent: bool,
    options: Option<Box<RouteOptions>>,
}

/// The settings of a route that most routes leave unset.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteOptions {
    pub(crate) strip_prefix: Option<Box<str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) rate_limit: Option<Rate>,
    pub(crate) rate_limit_burst: Option<u32>,
    pub(crate) methods: Box<[http::Method]>,
    pub(crate) headers: Box<[HeaderCondition]>,
}

impl RouteOptions {
    fn is_empty(&self) -> bool {
        self.strip_prefix.is_none()
            && self.timeout.is_none()
            && self.rate_limit.is_none()
            && self.rate_limit_burst.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
    }
}

impl Route {
    pub(crate) fn new(
        index: usize,
        name: Arc<str>,
        host: HostPattern,
        path: PathPattern,
        target: RouteTarget,
        retry_non_idempotent: bool,
        options: RouteOptions,
    ) -> Route {
        Route {
            name,
            host,
            path,
            target,
            index,
            retry_non_idempotent,
            options: (!options.is_empty()).then(|| Box::new(options)),
        }
    }

    /// Prefix removed from the normalized path before forwarding, itself
    /// normalized like request paths.
    pub fn strip_prefix(&self) -> Option<&str> {
        self.options.as_ref()?.strip_prefix.as_deref()
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.options.as_ref()?.timeout
    }

    pub fn rate_limit(&self) -> Option<Rate> {
        self.options.as_ref()?.rate_limit
    }

    pub fn rate_limit_burst(&self) -> Option<u32> {
        self.options.as_ref()?.rate_limit_burst
    }

    /// Accepted methods, uppercased from the config; empty accepts any.
    pub fn methods(&self) -> &[http::Method] {
        self.options
            .as_ref()
            .map_or(&[], |options| &options.methods)
    }

    /// Header conditions; all of them must hold.
    pub fn headers(&self) -> &[HeaderCondition] {
        self.options
            .as_ref()
            .map_or(&[], |options| &options.headers)
    }

    /// Computes this route's rank in match order, described on [`RouteTable`].
    pub fn specificity(&self) -> Specificity {
        Specificity {
            host: self.host.rank(),
            path: self.path.rank(),
            header_conditions: self.headers().len(),
            method_restricted: !self.methods().is_empty(),
        }
    }
}

/// The result of matching one request.
///
/// The lifetime covers both the table and the request, because `path`
/// borrows the request's path when normalization leaves it unchanged. To keep
/// the route after the request is gone, clone what is needed from it or
/// remember `route.index`.
#[derive(Clone, Debug)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    /// `route.target`, read from a dense array of the table, so that
    /// routing a request needs no load of the route record.
    pub target: RouteTarget,
    /// The request path after [`normalize_path`], which the route was
    /// matched against.
    pub path: Cow<'a, str>,
}

impl RouteMatch<'_> {
    /// Returns the path to send upstream: the normalized path with the route's
    /// `strip_prefix` removed when the path starts with it, and always with
    /// a leading `/`. The query is not included.
    ///
    /// ```
    /// let config: valkyrie_config::Config = toml::from_str(r#"
    ///     [[upstreams]]
    ///     name = "api"
    ///     endpoints = ["127.0.0.1:9001"]
    ///
    ///     [[routes]]
    ///     name = "api"
    ///     path_prefix = "/api/"
    ///     strip_prefix = "/api"
    ///     upstream = "api"
    /// "#).unwrap();
    /// let table = valkyrie_router::RouteTable::build(&config).unwrap();
    /// let headers = http::HeaderMap::new();
    /// let request = valkyrie_router::RequestInfo {
    ///     host: None,
    ///     path: "/api/./users/%7Ebob",
    ///     query: None,
    ///     method: &http::Method::GET,
    ///     headers: &headers,
    /// };
    /// let matched = table.route(&request).unwrap();
    /// assert_eq!(matched.path, "/api/users/~bob");
    /// assert_eq!(matched.upstream_path(), "/users/~bob");
    /// ```
    pub fn upstream_path(&self) -> Cow<'_, str> {
        let path: &str = &self.path;
        let Some(prefix) = self.route.strip_prefix() else {
            return Cow::Borrowed(path);
        };
        match path.strip_prefix(prefix) {
            None => Cow::Borrowed(path),
            Some("") => Cow::Borrowed("/"),
            Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
            Some(rest) => Cow::Owned(format!("/{rest}")),
        }
    }
}

/// A config whose routes cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("route `{route}`: {message}")]
    Route { route: String, message: String },
}

/// The compiled, immutable routing table.
///
/// # Match order
///
/// A request is matched against the normalized host (ASCII lowercase, port
/// and trailing dot removed) and the normalized path (see
/// [`normalize_path`]). Of the routes whose conditions all hold, the one with
/// the greatest [`Specificity`] wins, and among routes of equal specificity
/// the one that comes first in `[[routes]]`. Specificity compares, in order:
///
/// 1. host: an exact host, then wildcards with more labels
///    (`*.eu.example.com`), then wildcards with fewer (`*.example.com`), then
///    routes without a host;
/// 2. path: `path_exact`, then `path_prefix` with the longer prefix first,
///    then `path_regex`, then routes without a path condition;
/// 3. more header conditions first;
/// 4. routes that list methods before routes that accept any method.
///
/// The order is total: two different routes always differ in specificity or
/// in config position, so each request selects at most one route.
///
/// The host decides first, so an exact host with no path condition beats a
/// catch-all host with an exact path:
///
/// ```
/// use valkyrie_router::{RequestInfo, RouteTable};
///
/// let config: valkyrie_config::Config = toml::from_str(r#"
///     [[upstreams]]
///     name = "app"
///     endpoints = ["127.0.0.1:9001"]
///
///     [[routes]]
///     name = "any-host-admin"
///     path_exact = "/admin"
///     upstream = "app"
///
///     [[routes]]
///     name = "wildcard"
///     host = "*.example.com"
///     upstream = "app"
///
///     [[routes]]
///     name = "api-host"
///     host = "api.example.com"
///     upstream = "app"
///
///     [[routes]]
///     name = "api-v1"
///     host = "api.example.com"
///     path_prefix = "/v1/"
///     upstream = "app"
///
///     [[routes]]
///     name = "api-v1-users"
///     host = "api.example.com"
///     path_prefix = "/v1/users"
///     upstream = "app"
/// "#).unwrap();
/// let table = RouteTable::build(&config).unwrap();
///
/// let headers = http::HeaderMap::new();
/// let route = |host: Option<&str>, path: &str| {
///     let request = RequestInfo {
///         host,
///         path,
///         query: None,
///         method: &http::Method::GET,
///         headers: &headers,
///     };
///     table.route(&request).map(|matched| matched.route.name.to_string())
/// };
///
/// // Exact host over wildcard over any host, whatever the path.
/// assert_eq!(route(Some("API.example.com:8443"), "/admin").as_deref(), Some("api-host"));
/// assert_eq!(route(Some("www.example.com"), "/admin").as_deref(), Some("wildcard"));
/// assert_eq!(route(Some("example.com"), "/admin").as_deref(), Some("any-host-admin"));
/// assert_eq!(route(None, "/other"), None);
///
/// // Within a host, the longest prefix wins.
/// assert_eq!(route(Some("api.example.com"), "/v1/users/7").as_deref(), Some("api-v1-users"));
/// assert_eq!(route(Some("api.example.com"), "/v1/orders").as_deref(), Some("api-v1"));
///
/// // Matching runs on the normalized path.
/// assert_eq!(route(Some("api.example.com"), "/v1/x/%2E%2E/users").as_deref(), Some("api-v1-users"));
/// ```
///
/// Header conditions and method lists break ties between routes with the
/// same host and path; config order breaks the remaining ties:
///
/// ```
/// use valkyrie_router::{RequestInfo, RouteTable};
///
/// let config: valkyrie_config::Config = toml::from_str(r#"
///     [[upstreams]]
///     name = "app"
///     endpoints = ["127.0.0.1:9001"]
///
///     [[routes]]
///     name = "plain"
///     path_prefix = "/"
///     upstream = "app"
///
///     [[routes]]
///     name = "plain-again"
///     path_prefix = "/"
///     upstream = "app"
///
///     [[routes]]
///     name = "writes"
///     path_prefix = "/"
///     methods = ["POST", "PUT"]
///     upstream = "app"
///
///     [[routes]]
///     name = "canary"
///     path_prefix = "/"
///     headers = [{ name = "x-canary", value = "1" }]
///     upstream = "app"
/// "#).unwrap();
/// let table = RouteTable::build(&config).unwrap();
///
/// let route = |method: http::Method, canary: bool| {
///     let mut headers = http::HeaderMap::new();
///     if canary {
///         headers.insert("x-canary", http::HeaderValue::from_static("1"));
///     }
///     let request = RequestInfo {
///         host: None,
///         path: "/x",
///         query: None,
///         method: &method,
///         headers: &headers,
///     };
///     table.route(&request).map(|matched| matched.route.name.to_string())
/// };
///
/// // A header condition outranks a method list.
/// assert_eq!(route(http::Method::POST, true).as_deref(), Some("canary"));
/// assert_eq!(route(http::Method::POST, false).as_deref(), Some("writes"));
/// // `plain` and `plain-again` are equally specific: the first one wins.
/// assert_eq!(route(http::Method::GET, false).as_deref(), Some("plain"));
/// ```
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// `targets[id]` is `routes[id].target` packed by [`pack_target`]:
    /// 4 bytes per route, which stay in the CPU caches far longer than
    /// the route records.
    targets: Box<[u32]>,
    index: HostIndex,
    id: u64,
}

/// The outcome of [`RouteTable::route_counted`].
#[derive(Clone, Debug)]
pub struct Routed<'a> {
    /// The matched route, if any.
    pub matched: Option<RouteMatch<'a>>,
    /// True when a route with header conditions was checked, so that the
    /// outcome depends on more than host, path and method and must not be
    /// cached under those alone.
    pub consulted_headers: bool,
}

/// Source of [`RouteTable::id`]: every table built in this process gets a
/// distinct id.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

impl RouteTable {
    /// Compiles the routes of a config. Every check the matcher relies on is
    /// made here, so an unvalidated config yields an error naming the route,
    /// never a panic.
    pub fn build(config: &Config) -> Result<RouteTable, BuildError> {
        RouteTable::build_counted(config, FitCounters::new())
    }

    /// Compiles the routes of a config like [`RouteTable::build`], counting
    /// FIT operations in `counters`, so that the counts of a table carry
    /// over to the table that replaces it.
    ///
    /// The FIT of exact hosts is sized by `[routing.lockfree] fit_capacity`
    /// (or the number of exact hosts, when larger) and `fit_load_factor`,
    /// which is capped at 0.9375.
    pub fn build_counted(
        config: &Config,
        counters: Arc<FitCounters>,
    ) -> Result<RouteTable, BuildError> {
        let routes = compile::compile_routes(config)?;
        if let Some(route) = routes.get(RouteId::MAX as usize) {
            return Err(BuildError::Route {
                route: route.name.to_string(),
                message: format!("too many routes: at most {} are supported", RouteId::MAX),
            });
        }
        let mut targets = Vec::with_capacity(routes.len());
        for route in &routes {
            let packed = pack_target(&route.target).ok_or_else(|| BuildError::Route {
                route: route.name.to_string(),
                message: format!(
                    "its target's index is too large: at most {TARGET_KEY_TABLE} upstreams and as many key tables are supported"
                ),
            })?;
            targets.push(packed);
        }
        let targets = targets.into_boxed_slice();
        let index = HostIndex::build(&routes, fit_sizing(config), counters);
        Ok(RouteTable {
            routes,
            targets,
            index,
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Finds the route for a request, or `None` when nothing matches.
    ///
    /// Does not allocate unless the path needs normalization, the host is
    /// longer than 256 bytes and contains uppercase letters, or the path is
    /// longer than 188 bytes.
    pub fn route<'a>(&'a self, request: &RequestInfo<'a>) -> Option<RouteMatch<'a>> {
        let mut tally = FitTally::default();
        self.route_counted(request, &mut tally).matched
    }

    /// Finds the route for a request like [`RouteTable::route`], adding the
    /// FIT lookups to `tally` (see [`FitCounters::absorb`]) and reporting
    /// whether header conditions took part in the decision.
    pub fn route_counted<'a>(
        &'a self,
        request: &RequestInfo<'a>,
        tally: &mut FitTally,
    ) -> Routed<'a> {
        self.route_with(request, tally, |index, probe| match request.host {
            Some(host) => normalize::with_host_key(host, |host| index.find(Some(host), probe)),
            None => index.find(None, probe),
        })
    }

    /// Routes several requests like [`RouteTable::route_counted`] and
    /// appends their results to `out`, in order.
    ///
    /// The requests are taken [`ROUTE_BATCH`] at a time, and each step of
    /// the lookup runs for the whole group before the next step starts.
    /// First every host is hashed and its place in the FIT of exact hosts
    /// prefetched. Then the record each host will be compared with is
    /// prefetched, its listed paths included. Then the exact hosts are
    /// looked up, and then paths are matched. So the cache misses of a
    /// group overlap, where [`RouteTable::route_counted`] waits for each in
    /// turn. On tables larger than the CPU caches this routes several times
    /// more requests per second, and the decisions are the same.
    ///
    /// Allocates, besides what [`RouteTable::route`] may, for a host with
    /// uppercase letters.
    pub fn route_batch<'a>(
        &'a self,
        requests: &[RequestInfo<'a>],
        tally: &mut FitTally,
        out: &mut Vec<Routed<'a>>,
    ) {
        out.reserve(requests.len());
        for group in requests.chunks(ROUTE_BATCH) {
            let mut hosts: [Option<Cow<'a, str>>; ROUTE_BATCH] = std::array::from_fn(|_| None);
            let mut hashes = [0u64; ROUTE_BATCH];
            for ((request, host), hash) in group.iter().zip(&mut hosts).zip(&mut hashes) {
                if let Some(name) = request.host {
                    let key = normalize::normalize_host(name);
                    *hash = self.index.prefetch_exact(&key);
                    *host = Some(key);
                }
            }
            for (host, hash) in hosts.iter().zip(&hashes) {
                if let Some(host) = host {
                    self.index.prefetch_exact_record(host, *hash);
                }
            }
            let mut buckets = [None; ROUTE_BATCH];
            for ((host, hash), bucket) in hosts.iter().zip(&hashes).zip(&mut buckets) {
                if let Some(host) = host {
                    *bucket = self.index.exact_bucket(host, *hash, tally);
                }
            }
            for ((request, host), bucket) in group.iter().zip(&hosts).zip(buckets) {
                out.push(self.route_with(request, tally, |index, probe| {
                    index.find_from(host.as_deref(), bucket, probe)
                }));
            }
        }
    }

    /// Normalizes the path, runs `find` on the index and turns the route
    /// it returns into a [`Routed`].
    #[inline(always)]
    fn route_with<'a>(
        &'a self,
        request: &RequestInfo<'a>,
        tally: &mut FitTally,
        find: impl FnOnce(&HostIndex, &mut Probe<'_>) -> Option<RouteId>,
    ) -> Routed<'a> {
        let path = normalize_path(request.path);
        let mut probe = Probe {
            routes: &self.routes,
            unconditional: self.index.unconditional(),
            path: &path,
            method: request.method,
            headers: request.headers,
            tally: FitTally::default(),
            consulted_headers: false,
            target: index::NO_TARGET,
        };
        let found = find(&self.index, &mut probe);
        tally.operations += probe.tally.operations;
        tally.collisions += probe.tally.collisions;
        let consulted_headers = probe.consulted_headers;
        let listed_target = probe.target;
        Routed {
            matched: found.map(|found| RouteMatch {
                route: &self.routes[found as usize],
                target: unpack_target(if listed_target == index::NO_TARGET {
                    self.targets[found as usize]
                } else {
                    listed_target
                }),
                path,
            }),
            consulted_headers,
        }
    }

    /// Returns the match of route `index` for a request whose normalized
    /// path is `path`.
    ///
    /// # Panics
    ///
    /// Panics if `index` is not below `routes().len()`.
    pub fn matched<'a>(&'a self, index: usize, path: Cow<'a, str>) -> RouteMatch<'a> {
        RouteMatch {
            route: &self.routes[index],
            target: unpack_target(self.targets[index]),
            path,
        }
    }

    /// Returns the compiled routes in config order, so `routes()[i].index == i`.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Lists unreachable routes like [`never_matching_routes`], for a table
    /// that is already built.
    pub fn never_matching_routes(&self) -> Vec<(usize, usize)> {
        shadow::shadowed_routes(&self.routes)
    }

    /// Returns an id that no other table built in this process has, so a
    /// cached decision can tell which table made it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Returns the sizes of the index and the FIT counters.
    pub fn stats(&self) -> IndexStats {
        self.index.stats()
    }

    /// Returns the counters that the FIT of exact hosts counts its
    /// operations in.
    pub fn fit_counters(&self) -> &Arc<FitCounters> {
        self.index.fit_counters()
    }
}

/// Bit of a packed target that marks a key table; the bits below it hold
/// the index.
const TARGET_KEY_TABLE: u32 = 1 << 31;

/// Packs a target into 32 bits, or returns `None` when its index needs
/// more than 31 bits or is the largest 31-bit one, whose packed key-table
/// form is the index's "no target" marker.
pub(crate) fn pack_target(target: &RouteTarget) -> Option<u32> {
    let (index, flag) = match *target {
        RouteTarget::Upstream(index) => (index, 0),
        RouteTarget::KeyTable(index) => (index, TARGET_KEY_TABLE),
    };
    u32::try_from(index)
        .ok()
        .filter(|&index| index < TARGET_KEY_TABLE - 1)
        .map(|index| index | flag)
}

#[inline]
fn unpack_target(packed: u32) -> RouteTarget {
    let index = (packed & !TARGET_KEY_TABLE) as usize;
    if packed & TARGET_KEY_TABLE == 0 {
        RouteTarget::Upstream(index)
    } else {
        RouteTarget::KeyTable(index)
    }
}

/// Reads the FIT sizing from `[routing.lockfree]`, keeping the load factor
/// in the range the FIT accepts.
fn fit_sizing(config: &Config) -> FitSizing {
    let lockfree = &config.routing.lockfree;
    let load_factor = if lockfree.fit_load_factor > 0.0 {
        lockfree
            .fit_load_factor
            .min(valkyrie_lockfree::fit::MAX_LOAD_FACTOR)
    } else {
        0.75
    };
    FitSizing {
        capacity: lockfree.fit_capacity,
        load_factor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_pack_both_kinds() {
        for target in [
            RouteTarget::Upstream(0),
            RouteTarget::Upstream(7),
            RouteTarget::KeyTable(0),
            RouteTarget::KeyTable(TARGET_KEY_TABLE as usize - 2),
        ] {
            let packed = pack_target(&target).expect("index fits");
            assert_eq!(unpack_target(packed), target);
        }
        assert_eq!(
            pack_target(&RouteTarget::Upstream(TARGET_KEY_TABLE as usize)),
            None
        );
        assert_eq!(
            pack_target(&RouteTarget::KeyTable(TARGET_KEY_TABLE as usize - 1)),
            None
        );
    }
}
