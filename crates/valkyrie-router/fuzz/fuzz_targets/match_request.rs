//! Builds a route table from fuzzed routes and matches fuzzed requests.
//!
//! Checks that nothing panics, that normalization is idempotent, that the
//! table returns the route a linear scan in documented precedence order
//! picks, and that a route reported as unreachable never matches.
//!
//! Run with `cargo +nightly fuzz run match_request` from
//! `crates/valkyrie-router`.

#![no_main]

use std::cmp::Reverse;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use valkyrie_config::{Config, HeaderMatchConfig, RouteConfig};
use valkyrie_router::{normalize_path, RequestInfo, Route, RouteTable};

/// Bounds that keep one run fast; regex compilation dominates.
const MAX_ROUTES: usize = 16;
const MAX_REQUESTS: usize = 16;

const TARGETS: &str = r#"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9001"]

[[key_tables]]
name = "tenants"
key = { header = "x-tenant" }
source = { file = "tenants.csv" }
"#;

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<FuzzRoute>,
    requests: Vec<FuzzRequest>,
}

#[derive(Arbitrary, Debug)]
enum FuzzPath {
    Any,
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Arbitrary, Debug)]
enum FuzzTarget {
    Upstream,
    KeyTable,
    Missing,
    Both,
}

#[derive(Arbitrary, Debug)]
struct FuzzHeader {
    name: String,
    value: Option<String>,
    regex: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct FuzzRoute {
    host: Option<String>,
    path: FuzzPath,
    methods: Vec<String>,
    headers: Vec<FuzzHeader>,
    target: FuzzTarget,
    strip_prefix: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct FuzzRequest {
    host: Option<String>,
    path: String,
    method: String,
    headers: Vec<(String, String)>,
}

fn route_config(index: usize, fuzzed: FuzzRoute) -> RouteConfig {
    let mut route = RouteConfig {
        name: format!("r{index}"),
        host: fuzzed.host,
        methods: fuzzed.methods,
        headers: fuzzed
            .headers
            .into_iter()
            .map(|header| HeaderMatchConfig {
                name: header.name,
                value: header.value,
                regex: header.regex,
            })
            .collect(),
        strip_prefix: fuzzed.strip_prefix,
        ..RouteConfig::default()
    };
    match fuzzed.path {
        FuzzPath::Any => {}
        FuzzPath::Exact(path) => route.path_exact = Some(path),
        FuzzPath::Prefix(path) => route.path_prefix = Some(path),
        FuzzPath::Regex(path) => route.path_regex = Some(path),
    }
    match fuzzed.target {
        FuzzTarget::Upstream => route.upstream = Some("app".to_owned()),
        FuzzTarget::KeyTable => route.key_table = Some("tenants".to_owned()),
        FuzzTarget::Missing => route.upstream = Some("missing".to_owned()),
        FuzzTarget::Both => {
            route.upstream = Some("app".to_owned());
            route.key_table = Some("tenants".to_owned());
        }
    }
    route
}

/// Normalizes a host as documented: removes the port and one trailing dot,
/// and lowercases ASCII letters.
fn host_key(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    without_dot.to_ascii_lowercase()
}

fn accepts(
    route: &Route,
    host: Option<&str>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> bool {
    route.host.matches(host)
        && route.path.matches(path)
        && (route.methods().is_empty() || route.methods().contains(method))
        && route
            .headers()
            .iter()
            .all(|condition| condition.matches(headers))
}

fn check_request(table: &RouteTable, unreachable: &[(usize, usize)], fuzzed: &FuzzRequest) {
    let Ok(method) = Method::from_bytes(fuzzed.method.as_bytes()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &fuzzed.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let request = RequestInfo {
        host: fuzzed.host.as_deref(),
        path: &fuzzed.path,
        query: None,
        method: &method,
        headers: &headers,
    };

    let normalized = normalize_path(&fuzzed.path);
    assert_eq!(
        normalize_path(&normalized),
        normalized,
        "normalization is not idempotent"
    );

    let host = fuzzed.host.as_deref().map(host_key);
    let expected = table
        .routes()
        .iter()
        .filter(|route| accepts(route, host.as_deref(), &normalized, &method, &headers))
        .min_by_key(|route| (Reverse(route.specificity()), route.index))
        .map(|route| route.index);

    let matched = table.route(&request);
    assert_eq!(
        matched.as_ref().map(|m| m.route.index),
        expected,
        "table and linear scan disagree"
    );
    let Some(matched) = matched else {
        return;
    };
    assert_eq!(matched.path, normalized);
    if matched.path.starts_with('/') {
        assert!(matched.upstream_path().starts_with('/'));
    }
    assert!(
        unreachable
            .iter()
            .all(|&(route, _)| route != matched.route.index),
        "a route reported unreachable matched"
    );
}

/// Checks that building a config with only `route` does not panic, and
/// returns whether it succeeded.
fn compiles_alone(targets: &Config, route: &RouteConfig) -> bool {
    let mut config = targets.clone();
    config.routes = vec![route.clone()];
    RouteTable::build(&config).is_ok()
}

fuzz_target!(|input: Input| {
    let targets: Config = toml::from_str(TARGETS).expect("fixed targets parse");
    let routes: Vec<RouteConfig> = input
        .routes
        .into_iter()
        .take(MAX_ROUTES)
        .enumerate()
        .map(|(index, route)| route_config(index, route))
        .collect();

    // The whole config, invalid routes included, must not panic either.
    let mut config = targets.clone();
    config.routes = routes.clone();
    let _ = valkyrie_router::never_matching_routes(&config);
    let _ = RouteTable::build(&config);

    // One invalid route fails the whole build, so keep the valid ones to
    // exercise matching.
    config.routes = routes
        .into_iter()
        .filter(|route| compiles_alone(&targets, route))
        .collect();
    let unreachable = valkyrie_router::never_matching_routes(&config);
    let table = RouteTable::build(&config).expect("routes that compile alone compile together");
    assert_eq!(table.never_matching_routes(), unreachable);
    for request in input.requests.iter().take(MAX_REQUESTS) {
        check_request(&table, &unreachable, request);
    }
});
