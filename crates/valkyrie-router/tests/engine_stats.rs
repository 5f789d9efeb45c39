//! The index reports its FIT and CRA sizes, and counted lookups add to the
//! FIT counters that a rebuilt table keeps using.

mod common;

use std::sync::Arc;

use common::{config, Request};
use valkyrie_lockfree::{FitCounters, FitTally};
use valkyrie_router::RouteTable;

const ROUTES: &str = r#"
[[routes]]
name = "api-v1"
host = "api.example.com"
path_prefix = "/v1/"
upstream = "app"

[[routes]]
name = "api-health"
host = "api.example.com"
path_exact = "/health"
upstream = "app"

[[routes]]
name = "www"
host = "www.example.com"
upstream = "app"

[[routes]]
name = "shop"
host = "*.shop.example.com"
upstream = "app"

[[routes]]
name = "fallback"
path_prefix = "/"
upstream = "other"
"#;

#[test]
fn stats_describe_the_index() {
    let table = RouteTable::build(&config(ROUTES)).unwrap();
    let stats = table.stats();
    assert_eq!(stats.exact_hosts.len, 2, "api and www");
    assert_eq!(stats.wildcard_hosts, 1);
    assert_eq!(
        stats.listed_paths, 3,
        "/v1/, /health and / in small buckets"
    );
    assert_eq!(
        stats.listed_paths_in_records, 2,
        "/v1/ and /health in the FIT record of api.example.com"
    );
    assert_eq!(stats.cra_entries, 0);
    assert!(stats.exact_hosts.load_factor > 0.0);
    assert!(stats.heap_bytes >= stats.exact_hosts.heap_bytes + stats.cra_arena_bytes);
}

#[test]
fn large_buckets_use_the_cra() {
    let mut routes = String::from(ROUTES);
    for version in 0..12 {
        routes.push_str(&format!(
            "[[routes]]\nname = \"v{version}\"\nhost = \"api.example.com\"\npath_prefix = \"/api/v{version}/\"\nupstream = \"app\"\n"
        ));
    }
    let table = RouteTable::build(&config(&routes)).unwrap();
    let stats = table.stats();
    assert_eq!(
        stats.cra_entries, 14,
        "the api.example.com bucket has 14 paths"
    );
    assert_eq!(stats.listed_paths, 1, "/ of the catch-all bucket");
    assert_eq!(
        stats.listed_paths_in_records, 0,
        "the catch-all has no host"
    );
    assert!(stats.cra_nodes >= 14, "{stats:?}");
    assert_eq!(stats.cra_fragmentation, 0.0, "built compactly");

    let names: Vec<Option<String>> = ["/api/v11/x", "/api/v1/x", "/health", "/v1/a", "/other"]
        .iter()
        .map(|path| {
            table
                .route(&Request::new(Some("api.example.com"), path).info())
                .map(|matched| matched.route.name.to_string())
        })
        .collect();
    assert_eq!(
        names,
        [
            Some("v11".to_string()),
            Some("v1".to_string()),
            Some("api-health".to_string()),
            Some("api-v1".to_string()),
            Some("fallback".to_string()),
        ]
    );
}

#[test]
fn counted_lookups_feed_shared_counters() {
    let counters = FitCounters::new();
    let table = RouteTable::build_counted(&config(ROUTES), Arc::clone(&counters)).unwrap();
    let after_build = counters.operations();
    assert_eq!(after_build, 2, "two exact hosts inserted");

    let mut tally = FitTally::default();
    for (host, expected) in [
        (Some("api.example.com"), Some("api-v1")),
        (Some("x.shop.example.com"), Some("shop")),
        (None, Some("fallback")),
    ] {
        let request = Request::new(host, "/v1/x");
        let routed = table.route_counted(&request.info(), &mut tally);
        assert_eq!(
            routed.matched.map(|m| m.route.name.to_string()).as_deref(),
            expected
        );
    }
    assert_eq!(
        tally.operations, 2,
        "one FIT lookup per request with a host"
    );
    assert_eq!(
        counters.operations(),
        after_build,
        "not added until absorbed"
    );
    counters.absorb(&mut tally);
    assert_eq!(counters.operations(), after_build + 2);

    let rebuilt = RouteTable::build_counted(&config(ROUTES), Arc::clone(&counters)).unwrap();
    assert!(Arc::ptr_eq(rebuilt.fit_counters(), &counters));
    assert_ne!(rebuilt.id(), table.id(), "every table has its own id");
}
