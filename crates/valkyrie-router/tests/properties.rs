//! Property tests: the indexed table agrees with a linear reference matcher,
//! path normalization is idempotent and closed under encoding and dot
//! segments, and routes reported as unreachable are never returned.

mod common;

use std::cmp::Reverse;

use common::{config, headers, Request};
use http::{HeaderMap, Method};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use valkyrie_config::{HeaderMatchConfig, RouteConfig};
use valkyrie_lockfree::FitTally;
use valkyrie_router::{
    normalize_path, HeaderValueMatch, HostPattern, PathPattern, Route, RouteTable,
};

// ---------------------------------------------------------------------------
// Reference matcher: a linear scan over the routes sorted by the documented
// precedence, written without the crate's matching code.

/// The documented specificity as a plain tuple, greater is more specific:
/// host class and wildcard labels, path class and prefix length, header
/// condition count, method restriction.
fn reference_rank(route: &Route) -> (u8, usize, u8, usize, usize, bool) {
    let (host_class, labels) = match &route.host {
        HostPattern::Exact(_) => (3, 0),
        HostPattern::Wildcard(suffix) => (2, suffix.split('.').count()),
        HostPattern::Any => (1, 0),
    };
    let (path_class, prefix_len) = match &route.path {
        PathPattern::Exact(_) => (4, 0),
        PathPattern::Prefix(prefix) => (3, prefix.len()),
        PathPattern::Regex(_) => (2, 0),
        PathPattern::Any => (1, 0),
    };
    (
        host_class,
        labels,
        path_class,
        prefix_len,
        route.headers().len(),
        !route.methods().is_empty(),
    )
}

fn reference_host(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap()
    } else {
        host
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    without_dot.to_ascii_lowercase()
}

fn full_match(pattern: &str, text: &[u8]) -> bool {
    regex::bytes::Regex::new(&format!("^(?:{pattern})$"))
        .unwrap()
        .is_match(text)
}

fn reference_accepts(
    route: &Route,
    host: Option<&str>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> bool {
    let host_ok = match (&route.host, host) {
        (HostPattern::Any, _) => true,
        (_, None) => false,
        (HostPattern::Exact(exact), Some(host)) => *host == **exact,
        (HostPattern::Wildcard(suffix), Some(host)) => {
            host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
        }
    };
    let path_ok = match &route.path {
        PathPattern::Any => true,
        PathPattern::Exact(exact) => *path == **exact,
        PathPattern::Prefix(prefix) => path.starts_with(&**prefix),
        PathPattern::Regex(regex) => full_match(regex.as_str(), path.as_bytes()),
    };
    let method_ok = route.methods().is_empty() || route.methods().contains(method);
    let headers_ok = route.headers().iter().all(|condition| {
        headers
            .get_all(&condition.name)
            .iter()
            .any(|value| match &condition.value {
                HeaderValueMatch::Present => true,
                HeaderValueMatch::Exact(expected) => expected.as_bytes() == value.as_bytes(),
                HeaderValueMatch::Regex(regex) => full_match(regex.as_str(), value.as_bytes()),
            })
    });
    host_ok && path_ok && method_ok && headers_ok
}

/// Picks the route for `request` by the documented rules and returns its index.
fn reference_route(routes: &[Route], request: &Request) -> Option<usize> {
    let host = request.host.as_deref().map(reference_host);
    let path = normalize_path(&request.path);
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by_key(|route| (Reverse(reference_rank(route)), route.index));
    ordered
        .into_iter()
        .find(|route| {
            reference_accepts(
                route,
                host.as_deref(),
                &path,
                &request.method,
                &request.headers,
            )
        })
        .map(|route| route.index)
}

// ---------------------------------------------------------------------------
// Generators. Small alphabets make routes overlap often.

fn host_condition() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        3 => select(vec!["a.com", "b.a.com", "c.b.a.com", "A.com:80", "[::1]"]).prop_map(|h| Some(h.to_owned())),
        2 => select(vec!["*.a.com", "*.b.a.com", "*.com"]).prop_map(|h| Some(h.to_owned())),
    ]
}

const PATHS: &[&str] = &[
    "/", "/x", "/x/", "/x/y", "/xy", "/y", "/%7ex", "/~x", "/é", "/x/é",
];
const REGEXES: &[&str] = &["/x.*", "/[xy]+", "/x/[^/]+", ".*y", "/", "/%2F.*"];

#[derive(Clone, Debug)]
enum PathCondition {
    Any,
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// More paths than `PATHS`, built from the segments requests use, so that
/// the routes of one host crowd a bucket past the short-list limit of 8
/// paths and lookups go through the CRA.
const CROWDED_PATHS: &[&str] = &[
    "/", "/x", "/x/", "/x/y", "/xy", "/y", "/%7ex", "/~x", "/é", "/x/é", "/x/x", "/y/x", "/y/y",
    "/y/", "/xy/", "/xy/x", "/x/xy", "/x/x/", "/y/xy", "/xy/y",
];

fn path_condition() -> impl Strategy<Value = PathCondition> {
    path_condition_from(PATHS)
}

fn path_condition_from(paths: &'static [&'static str]) -> impl Strategy<Value = PathCondition> {
    prop_oneof![
        Just(PathCondition::Any),
        select(paths).prop_map(|p| PathCondition::Exact(p.to_owned())),
        select(paths).prop_map(|p| PathCondition::Prefix(p.to_owned())),
        select(REGEXES).prop_map(|p| PathCondition::Regex(p.to_owned())),
    ]
}

fn header_condition() -> impl Strategy<Value = HeaderMatchConfig> {
    let name = select(vec!["x-a", "x-b", "X-A"]);
    let value = prop_oneof![
        Just((None, None)),
        select(vec!["1", "2"]).prop_map(|v| (Some(v.to_owned()), None)),
        select(vec!["[12]", "1|3", "[0-9]+"]).prop_map(|r| (None, Some(r.to_owned()))),
    ];
    (name, value).prop_map(|(name, (value, regex))| HeaderMatchConfig {
        name: name.to_owned(),
        value,
        regex,
    })
}

fn route_config() -> impl Strategy<Value = RouteConfig> {
    route_config_from(host_condition().boxed(), path_condition().boxed())
}

/// Routes over few hosts and many paths; see `CROWDED_PATHS`.
fn crowded_route_config() -> impl Strategy<Value = RouteConfig> {
    let host = prop_oneof![
        3 => Just(None),
        1 => Just(Some("a.com".to_owned())),
        1 => Just(Some("*.a.com".to_owned())),
    ];
    route_config_from(host.boxed(), path_condition_from(CROWDED_PATHS).boxed())
}

fn route_config_from(
    host: BoxedStrategy<Option<String>>,
    path: BoxedStrategy<PathCondition>,
) -> impl Strategy<Value = RouteConfig> {
    (
        host,
        path,
        subsequence(vec!["GET", "POST"], 0..=2),
        prop::collection::vec(header_condition(), 0..=2),
    )
        .prop_map(|(host, path, methods, headers)| {
            let mut route = RouteConfig {
                host,
                methods: methods.into_iter().map(str::to_owned).collect(),
                headers,
                upstream: Some("app".to_owned()),
                ..RouteConfig::default()
            };
            match path {
                PathCondition::Any => {}
                PathCondition::Exact(p) => route.path_exact = Some(p),
                PathCondition::Prefix(p) => route.path_prefix = Some(p),
                PathCondition::Regex(p) => route.path_regex = Some(p),
            }
            route
        })
}

fn table_of(routes: Vec<RouteConfig>) -> RouteTable {
    let mut config = config("");
    config.routes = routes
        .into_iter()
        .enumerate()
        .map(|(index, route)| RouteConfig {
            name: format!("r{index}"),
            ..route
        })
        .collect();
    RouteTable::build(&config).expect("generated routes are valid")
}

/// Paths built from segments that include dots, escapes and an encoded slash.
fn request_path() -> impl Strategy<Value = String> {
    let segment = select(vec![
        "x", "y", "xy", "", ".", "..", "%78", "%2e", "%2E%2E", "%2F", "%2f", "~", "%7e", "é",
    ]);
    prop_oneof![
        1 => Just(String::new()),
        12 => prop::collection::vec(segment, 0..5).prop_map(|segments| format!("/{}", segments.join("/"))),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let host = select(vec![
        None,
        Some("a.com"),
        Some("A.COM."),
        Some("b.a.com:8080"),
        Some("c.b.a.com"),
        Some("d.c.b.a.com"),
        Some("com"),
        Some("x.com"),
        Some("[::1]:80"),
        Some(".a.com"),
    ]);
    let method = select(vec!["GET", "POST", "PUT"]);
    let header = (
        select(vec!["x-a", "x-b"]),
        select(vec!["1", "2", "3", "12"]),
    );
    (
        host,
        request_path(),
        method,
        prop::collection::vec(header, 0..3),
    )
        .prop_map(|(host, path, method, pairs)| Request {
            host: host.map(str::to_owned),
            path,
            method: Method::from_bytes(method.as_bytes()).unwrap(),
            headers: headers(&pairs),
        })
}

fn picked(table: &RouteTable, request: &Request) -> Option<usize> {
    table.route(&request.info()).map(|matched| {
        assert_eq!(matched.target, matched.route.target);
        matched.route.index
    })
}

/// Routes `requests` with `route_batch` and checks each result against
/// `route_counted` on the same request: route, target, normalized path and
/// whether headers were consulted.
fn check_batch(table: &RouteTable, requests: &[Request]) -> Result<(), TestCaseError> {
    let infos: Vec<_> = requests.iter().map(Request::info).collect();
    let mut batch_tally = FitTally::default();
    let mut routed = Vec::new();
    table.route_batch(&infos, &mut batch_tally, &mut routed);
    prop_assert_eq!(routed.len(), requests.len());
    let mut single_tally = FitTally::default();
    for (info, batched) in infos.iter().zip(&routed) {
        let single = table.route_counted(info, &mut single_tally);
        let summary = |routed: &valkyrie_router::Routed<'_>| {
            (
                routed.matched.as_ref().map(|matched| {
                    (
                        matched.route.index,
                        matched.target.clone(),
                        matched.path.to_string(),
                    )
                }),
                routed.consulted_headers,
            )
        };
        prop_assert_eq!(summary(batched), summary(&single), "request {:?}", info);
    }
    prop_assert_eq!(batch_tally, single_tally);
    Ok(())
}

// ---------------------------------------------------------------------------
// Plain paths and their encoded or dotted variants.

/// Generates a normalized path of segments made of unreserved characters,
/// `%2F` and UTF-8.
fn plain_path() -> impl Strategy<Value = String> {
    let segment = prop::collection::vec(
        select(vec!["a", "Z", "0", "-", ".", "_", "~", "%2F", "é"]),
        1..4,
    )
    .prop_map(|parts| parts.concat())
    .prop_filter("dot segments are not plain", |s| s != "." && s != "..");
    prop::collection::vec(segment, 0..4).prop_map(|segments| format!("/{}", segments.join("/")))
}

/// Rewrites `path` into a form that normalizes back to it: escapes some
/// unreserved characters (in either hex case), lowercases the hex of `%2F`,
/// and inserts `./` and `name/../` before some segments.
fn disguise(path: &str, choices: &[u8]) -> String {
    let mut choice = choices.iter().copied().cycle();
    let mut output = String::new();
    for (position, segment) in path.split('/').enumerate() {
        if position > 0 {
            output.push('/');
            match choice.next().unwrap_or(0) % 4 {
                1 => output.push_str("./"),
                2 => output.push_str("junk/../"),
                3 => output.push_str("%2E/%61/%2e%2E/"),
                _ => {}
            }
        }
        let mut rest = segment;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("%2F") {
                output.push_str(if choice.next().unwrap_or(0) % 2 == 0 {
                    "%2F"
                } else {
                    "%2f"
                });
                rest = &rest[3..];
                continue;
            }
            let unreserved = c.is_ascii_alphanumeric() || "-._~".contains(c);
            match choice.next().unwrap_or(0) % 3 {
                1 if unreserved => output.push_str(&format!("%{:02X}", c as u8)),
                2 if unreserved => output.push_str(&format!("%{:02x}", c as u8)),
                _ => output.push(c),
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    output
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_agrees_with_reference(
        routes in prop::collection::vec(route_config(), 0..12),
        requests in prop::collection::vec(request(), 1..40),
    ) {
        let table = table_of(routes);
        for request in &requests {
            prop_assert_eq!(
                picked(&table, request),
                reference_route(table.routes(), request),
                "request {:?}", request
            );
        }
        check_batch(&table, &requests)?;
    }

    #[test]
    fn unreachable_routes_never_match(
        routes in prop::collection::vec(route_config(), 0..12),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        let table = table_of(routes);
        let unreachable = table.never_matching_routes();
        for request in &requests {
            if let Some(index) = picked(&table, request) {
                prop_assert!(
                    unreachable.iter().all(|&(route, _)| route != index),
                    "route {} reported unreachable but matched {:?}", index, request
                );
            }
        }
    }

    #[test]
    fn normalization_is_idempotent(path in "[/a.%2eEfF~-]{0,24}") {
        let once = normalize_path(&path).into_owned();
        prop_assert_eq!(normalize_path(&once), once.as_str());
    }

    #[test]
    fn normalization_is_idempotent_on_any_text(path in any::<String>()) {
        let once = normalize_path(&path).into_owned();
        prop_assert_eq!(normalize_path(&once), once.as_str());
    }

    #[test]
    fn normalized_paths_are_clean(path in "[/a.%2eEfF7~-]{0,24}") {
        let normalized = normalize_path(&path);
        let segments: Vec<&str> = normalized.split('/').collect();
        prop_assert!(!segments.contains(&"."), "{:?}", normalized);
        prop_assert!(!segments.contains(&".."), "{:?}", normalized);
        prop_assert!(!normalized.to_ascii_uppercase().contains("%2E"), "{:?}", normalized);
        prop_assert!(!normalized.contains("%2e") && !normalized.contains("%2f"), "{:?}", normalized);
    }

    #[test]
    fn disguised_path_normalizes_to_plain(
        path in plain_path(),
        choices in prop::collection::vec(any::<u8>(), 1..32),
    ) {
        let disguised = disguise(&path, &choices);
        prop_assert_eq!(normalize_path(&disguised), path.as_str(), "disguised {:?}", disguised);
    }

    #[test]
    fn disguised_path_reaches_same_route(
        routes in prop::collection::vec(route_config(), 0..12),
        request in request(),
        choices in prop::collection::vec(any::<u8>(), 1..32),
    ) {
        let table = table_of(routes);
        let plain = Request { path: normalize_path(&request.path).into_owned(), ..request.clone() };
        let disguised = Request { path: disguise(&plain.path, &choices), ..request.clone() };
        prop_assert_eq!(picked(&table, &request), picked(&table, &plain));
        prop_assert_eq!(picked(&table, &disguised), picked(&table, &plain), "disguised {:?}", disguised.path);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn crowded_table_agrees_with_reference(
        routes in prop::collection::vec(crowded_route_config(), 24..48),
        requests in prop::collection::vec(request(), 1..40),
    ) {
        let table = table_of(routes);
        for request in &requests {
            prop_assert_eq!(
                picked(&table, request),
                reference_route(table.routes(), request),
                "request {:?}", request
            );
        }
        check_batch(&table, &requests)?;
    }
}
