//! The route decision cache returns what the table returns, drops
//! decisions of replaced tables and expired entries, and never caches a
//! decision that depended on headers.

mod common;

use std::time::{Duration, Instant};

use common::{config, table, Request};
use http::Method;
use proptest::prelude::*;
use proptest::sample::select;
use valkyrie_lockfree::FitTally;
use valkyrie_router::cache::{CacheKey, RouteCache, TopKeys};
use valkyrie_router::RouteTable;

const ROUTES: &str = r#"
[[routes]]
name = "api"
host = "api.example.com"
path_prefix = "/v1/"
upstream = "app"

[[routes]]
name = "canary"
host = "api.example.com"
path_prefix = "/v1/"
headers = [{ name = "x-canary", value = "1" }]
upstream = "other"

[[routes]]
name = "shop"
host = "*.example.com"
methods = ["GET"]
upstream = "app"

[[routes]]
name = "items"
path_regex = "/items/[0-9]+"
upstream = "other"
"#;

fn cached(
    cache: &RouteCache,
    table: &RouteTable,
    request: &Request,
    now: Instant,
) -> Option<(String, String)> {
    let mut tally = FitTally::default();
    cache
        .route(table, &request.info(), now, &mut tally)
        .map(|matched| (matched.route.name.to_string(), matched.path.into_owned()))
}

fn direct(table: &RouteTable, request: &Request) -> Option<(String, String)> {
    table
        .route(&request.info())
        .map(|matched| (matched.route.name.to_string(), matched.path.into_owned()))
}

#[test]
fn hits_return_the_same_decision() {
    let table = table(ROUTES);
    let cache = RouteCache::new(1000, Duration::from_secs(60));
    let now = Instant::now();
    let requests = [
        Request::new(Some("api.example.com"), "/v1/users"),
        Request::new(Some("api.example.com"), "/v1/./x/%2E%2E/users"),
        Request::new(Some("www.example.com"), "/"),
        Request::new(Some("www.example.com"), "/").method("POST"),
        Request::new(None, "/items/7"),
        Request::new(None, "/nothing"),
    ];
    for request in &requests {
        let first = cached(&cache, &table, request, now);
        let second = cached(&cache, &table, request, now);
        assert_eq!(first, direct(&table, request), "{request:?}");
        assert_eq!(second, first, "{request:?}");
    }
    // The two `api.example.com` requests check the `canary` route's header
    // condition first, so their decisions are not cached.
    let stats = cache.stats();
    assert_eq!(stats.misses, 8);
    assert_eq!(stats.hits, 4);
}

#[test]
fn header_decisions_are_not_cached() {
    let table = table(ROUTES);
    let cache = RouteCache::new(1000, Duration::from_secs(60));
    let now = Instant::now();
    let canary = Request::new(Some("api.example.com"), "/v1/x").headers(&[("x-canary", "1")]);
    let plain = Request::new(Some("api.example.com"), "/v1/x");
    assert_eq!(cached(&cache, &table, &canary, now).unwrap().0, "canary");
    assert_eq!(cached(&cache, &table, &plain, now).unwrap().0, "api");
    assert_eq!(cached(&cache, &table, &canary, now).unwrap().0, "canary");
    assert_eq!(cache.stats().hits, 0);
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn new_table_and_expiry_invalidate() {
    let old = table(ROUTES);
    let cache = RouteCache::new(1000, Duration::from_secs(10));
    let now = Instant::now();
    let request = Request::new(Some("www.example.com"), "/");
    assert_eq!(cached(&cache, &old, &request, now).unwrap().0, "shop");

    let new = table(&ROUTES.replace("name = \"shop\"", "name = \"store\""));
    assert_eq!(cached(&cache, &new, &request, now).unwrap().0, "store");
    assert_eq!(cache.stats().hits, 0, "an entry of the old table is a miss");
    assert_eq!(cached(&cache, &new, &request, now).unwrap().0, "store");
    assert_eq!(cache.stats().hits, 1);

    let later = now + Duration::from_secs(11);
    assert_eq!(cached(&cache, &new, &request, later).unwrap().0, "store");
    assert_eq!(cache.stats().hits, 1, "an expired entry is a miss");
    assert_eq!(cache.stats().entries, 1, "the refresh replaced the entry");
}

#[test]
fn capacity_is_bounded() {
    let table = table(ROUTES);
    let cache = RouteCache::new(128, Duration::from_secs(60));
    let now = Instant::now();
    for i in 0..5000 {
        let request = Request::new(Some("www.example.com"), &format!("/p{i}"));
        assert_eq!(cached(&cache, &table, &request, now).unwrap().0, "shop");
    }
    let stats = cache.stats();
    assert!(stats.entries <= stats.capacity, "{stats:?}");
    assert!(stats.capacity < 256, "{stats:?}");
    cache.clear();
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn warm_stores_top_keys() {
    let table = table(ROUTES);
    let cache = RouteCache::new(1000, Duration::from_secs(60));
    let top = TopKeys::new(4);
    let get = Method::GET;
    let key = |path| CacheKey {
        host: Some("www.example.com"),
        path,
        method: &get,
    };
    for _ in 0..5 {
        top.record(key("/hot"));
    }
    for _ in 0..3 {
        top.record(key("/warm"));
    }
    for i in 0..20 {
        top.record(key(["/a", "/b", "/c", "/d"][i % 4]));
    }
    assert_eq!(top.len(), 4, "bounded");
    let keys = top.top(2);
    assert_eq!(keys.len(), 2);
    assert!(keys[0].1 >= keys[1].1);

    let stored = cache.warm(
        &table,
        keys.iter().map(|(key, _)| key.borrow()),
        Instant::now(),
    );
    assert_eq!(stored, 2);
    let request = Request::new(Some("www.example.com"), &keys[0].0.path);
    cached(&cache, &table, &request, Instant::now());
    assert_eq!(cache.stats().hits, 1);
}

fn request() -> impl Strategy<Value = Request> {
    (
        select(vec![
            None,
            Some("api.example.com"),
            Some("API.example.com:80"),
            Some("www.example.com"),
            Some("example.com"),
        ]),
        select(vec![
            "/",
            "/v1/",
            "/v1/x",
            "/v1/../v1/x",
            "/items/1",
            "/items/x",
            "/%761/y",
        ]),
        select(vec!["GET", "POST"]),
        any::<bool>(),
    )
        .prop_map(|(host, path, method, canary)| {
            let request = Request::new(host, path).method(method);
            if canary {
                request.headers(&[("x-canary", "1")])
            } else {
                request
            }
        })
}

proptest! {
    #[test]
    fn warmed_decisions_agree_with_table(requests in prop::collection::vec(request(), 1..100)) {
        // Up to three groups of `route_batch`, warmed without headers.
        let table = RouteTable::build(&config(ROUTES)).unwrap();
        let cache = RouteCache::new(1000, Duration::from_secs(60));
        let now = Instant::now();
        let plain: Vec<Request> = requests
            .iter()
            .map(|request| Request::new(request.host.as_deref(), &request.path).method(request.method.as_str()))
            .collect();
        let keys: Vec<CacheKey<'_>> = plain.iter().map(|request| CacheKey::of(&request.info())).collect();
        let stored = cache.warm(&table, keys.iter().copied(), now);
        // Only the `api` host's `/v1/` paths consult the canary header.
        let header_free = plain
            .iter()
            .filter(|request| {
                let mut tally = FitTally::default();
                !table.route_counted(&request.info(), &mut tally).consulted_headers
            })
            .count();
        prop_assert_eq!(stored, header_free);
        let hits_before = cache.stats().hits;
        for request in &plain {
            prop_assert_eq!(cached(&cache, &table, request, now), direct(&table, request), "{:?}", request);
        }
        prop_assert!(cache.stats().hits - hits_before >= header_free.min(1) as u64);
    }

    #[test]
    fn cache_agrees_with_table(requests in prop::collection::vec(request(), 1..64)) {
        let table = RouteTable::build(&config(ROUTES)).unwrap();
        // A tiny cache also exercises eviction.
        let cache = RouteCache::new(8, Duration::from_secs(60));
        let now = Instant::now();
        for request in &requests {
            prop_assert_eq!(cached(&cache, &table, request, now), direct(&table, request), "{:?}", request);
        }
    }
}
