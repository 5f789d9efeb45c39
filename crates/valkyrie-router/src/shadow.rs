//! Detection of routes that can never match because a route ranked before
//! them accepts every request they accept.

use std::collections::HashMap;

use valkyrie_config::Config;

use crate::compile::{compile_route, TargetNames};
use crate::conditions::{
    wildcard_matches, HeaderCondition, HeaderValueMatch, HostPattern, PathPattern,
};
use crate::index::precedence_key;
use crate::Route;

/// Lists routes that no request can reach, as pairs of (route index, index of
/// the earlier route that takes all its requests), sorted by route index.
/// Indexes are positions in `[[routes]]`.
///
/// A route is reported when a route earlier in the file that also ranks
/// before it in match order (see [`RouteTable`](crate::RouteTable)) accepts
/// every request it accepts: a duplicate, or a route of equal specificity
/// with narrower conditions. When several routes qualify, the one that ranks
/// first is named. The check is conservative, so a route it does not report
/// may still be unreachable, for example behind a regex that covers it or
/// behind a later route with redundant header conditions. Routes that fail
/// to compile are skipped, because `RouteTable::build` reports them.
///
/// ```
/// let config: valkyrie_config::Config = toml::from_str(r#"
///     [[upstreams]]
///     name = "api"
///     endpoints = ["127.0.0.1:9001"]
///
///     [[routes]]
///     name = "all-methods"
///     path_prefix = "/api/"
///     methods = ["GET", "POST"]
///     upstream = "api"
///
///     [[routes]]
///     name = "get-only"
///     path_prefix = "/api/"
///     methods = ["GET"]
///     upstream = "api"
/// "#).unwrap();
///
/// // Both routes restrict methods, so they are equally specific and the
/// // first one always wins.
/// assert_eq!(valkyrie_router::never_matching_routes(&config), vec![(1, 0)]);
/// ```
pub fn never_matching_routes(config: &Config) -> Vec<(usize, usize)> {
    let names = TargetNames::new(config);
    let routes: Vec<Route> = config
        .routes
        .iter()
        .enumerate()
        .filter_map(|(index, route)| compile_route(index, route, &names).ok())
        .collect();
    shadowed_routes(&routes)
}

/// Runs the same check over compiled routes.
pub(crate) fn shadowed_routes(routes: &[Route]) -> Vec<(usize, usize)> {
    let mut order: Vec<&Route> = routes.iter().collect();
    order.sort_by_key(|route| precedence_key(route));
    let buckets = Buckets::new(&order);

    let mut shadowed = Vec::new();
    for (position, route) in order.iter().enumerate() {
        if let Some(earlier) = buckets.first_covering(&order, position) {
            shadowed.push((route.index, order[earlier].index));
        }
    }
    shadowed.sort_unstable();
    shadowed
}

/// A host pattern as a map key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum HostKey<'r> {
    Any,
    Exact(&'r str),
    Wildcard(&'r str),
}

/// A path pattern as a map key; a regex is keyed by its source.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum PathKey<'r> {
    Any,
    Exact(&'r str),
    Prefix(&'r str),
    Regex(&'r str),
}

/// Positions in match order of the routes with a given host and path
/// pattern, so that a route is compared only with routes whose host and path
/// conditions can cover its own.
struct Buckets<'r> {
    by_pattern: HashMap<(HostKey<'r>, PathKey<'r>), Vec<usize>>,
    /// Positions of the regex routes of each host pattern; a regex covers an
    /// exact path it matches.
    regex_by_host: HashMap<HostKey<'r>, Vec<usize>>,
}

impl<'r> Buckets<'r> {
    fn new(order: &[&'r Route]) -> Buckets<'r> {
        let mut by_pattern: HashMap<_, Vec<usize>> = HashMap::new();
        let mut regex_by_host: HashMap<_, Vec<usize>> = HashMap::new();
        for (position, route) in order.iter().enumerate() {
            let host = host_key(&route.host);
            by_pattern
                .entry((host, path_key(&route.path)))
                .or_default()
                .push(position);
            if let PathPattern::Regex(_) = route.path {
                regex_by_host.entry(host).or_default().push(position);
            }
        }
        Buckets {
            by_pattern,
            regex_by_host,
        }
    }

    /// Finds the first position before `position` whose route comes earlier
    /// in the file and covers the route at `position`.
    fn first_covering(&self, order: &[&Route], position: usize) -> Option<usize> {
        let route = order[position];
        let mut best: Option<usize> = None;
        let mut consider = |candidates: &[usize], check_path: bool| {
            // Positions are ascending, so stop at the route itself.
            let limit = best.unwrap_or(position);
            let found = candidates
                .iter()
                .copied()
                .take_while(|&earlier| earlier < limit)
                .find(|&earlier| {
                    let covering = order[earlier];
                    covering.index < route.index
                        && (!check_path || path_covers(&covering.path, &route.path))
                        && methods_cover(covering, route)
                        && headers_cover(covering.headers(), route.headers())
                });
            if found.is_some() {
                best = found;
            }
        };

        for host in covering_hosts(&route.host) {
            for path in covering_paths(&route.path) {
                if let Some(candidates) = self.by_pattern.get(&(host, path)) {
                    consider(candidates, false);
                }
            }
            if let PathPattern::Exact(_) = route.path {
                if let Some(candidates) = self.regex_by_host.get(&host) {
                    consider(candidates, true);
                }
            }
        }
        best
    }
}

fn host_key(host: &HostPattern) -> HostKey<'_> {
    match host {
        HostPattern::Any => HostKey::Any,
        HostPattern::Exact(host) => HostKey::Exact(host),
        HostPattern::Wildcard(suffix) => HostKey::Wildcard(suffix),
    }
}

fn path_key(path: &PathPattern) -> PathKey<'_> {
    match path {
        PathPattern::Any => PathKey::Any,
        PathPattern::Exact(path) => PathKey::Exact(path),
        PathPattern::Prefix(prefix) => PathKey::Prefix(prefix),
        PathPattern::Regex(regex) => PathKey::Regex(regex.as_str()),
    }
}

/// Host patterns that accept every host `host` accepts: itself, the
/// wildcards over its parent domains, and any host.
fn covering_hosts(host: &HostPattern) -> Vec<HostKey<'_>> {
    let mut keys = vec![host_key(host)];
    let name = match host {
        HostPattern::Any => return keys,
        HostPattern::Exact(name) | HostPattern::Wildcard(name) => &**name,
    };
    for (dot, _) in name.match_indices('.') {
        let suffix = &name[dot + 1..];
        let covers = match host {
            HostPattern::Exact(exact) => wildcard_matches(suffix, exact),
            _ => true,
        };
        if covers {
            keys.push(HostKey::Wildcard(suffix));
        }
    }
    keys.push(HostKey::Any);
    keys
}

/// Path patterns, other than regexes, that accept every path `path` accepts.
fn covering_paths(path: &PathPattern) -> Vec<PathKey<'_>> {
    let mut keys = vec![path_key(path)];
    let text = match path {
        PathPattern::Exact(text) | PathPattern::Prefix(text) => &**text,
        PathPattern::Any => return keys,
        PathPattern::Regex(_) => {
            keys.push(PathKey::Any);
            return keys;
        }
    };
    for end in (1..=text.len()).filter(|&end| text.is_char_boundary(end)) {
        keys.push(PathKey::Prefix(&text[..end]));
    }
    keys.push(PathKey::Any);
    keys
}

fn path_covers(covering: &PathPattern, path: &PathPattern) -> bool {
    match (covering, path) {
        (PathPattern::Any, _) => true,
        (PathPattern::Regex(regex), PathPattern::Exact(exact)) => regex.is_match(exact),
        (PathPattern::Regex(a), PathPattern::Regex(b)) => a == b,
        _ => false,
    }
}

fn methods_cover(covering: &Route, route: &Route) -> bool {
    covering.methods().is_empty()
        || (!route.methods().is_empty()
            && route
                .methods()
                .iter()
                .all(|m| covering.methods().contains(m)))
}

/// Checks that every condition in `covering` is satisfied whenever all of
/// `conditions` are.
fn headers_cover(covering: &[HeaderCondition], conditions: &[HeaderCondition]) -> bool {
    covering.iter().all(|required| {
        conditions
            .iter()
            .any(|condition| condition_implies(condition, required))
    })
}

/// Checks that `condition` holding implies that `required` holds. Both are
/// satisfied by some value of the header, so a value that satisfies
/// `condition` must satisfy `required` too.
fn condition_implies(condition: &HeaderCondition, required: &HeaderCondition) -> bool {
    if condition.name != required.name {
        return false;
    }
    match (&condition.value, &required.value) {
        (_, HeaderValueMatch::Present) => true,
        (HeaderValueMatch::Exact(a), HeaderValueMatch::Exact(b)) => a == b,
        (HeaderValueMatch::Exact(value), HeaderValueMatch::Regex(regex)) => {
            regex.is_match(value.as_bytes())
        }
        (HeaderValueMatch::Regex(a), HeaderValueMatch::Regex(b)) => a == b,
        _ => false,
    }
}
