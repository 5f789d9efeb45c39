//! Lookup structures that find the best route without scanning every route.
//!
//! Routes are bucketed by host pattern ([`HostIndex`]) and, within a host
//! bucket, by path pattern ([`PathIndex`]). Every bucket lists its routes in
//! precedence order, and the lookup visits buckets from the most specific
//! host and path rank to the least, so the first route in a bucket that
//! accepts the request is the result.
//!
//! The maps are std `HashMap`s behind these two types, so that the
//! fingerprinted table and the radix arena of `valkyrie-lockfree` can replace
//! them without touching the callers.

use std::cmp::Reverse;
use std::collections::HashMap;

use http::{HeaderMap, Method};

use crate::conditions::{HostPattern, PathPattern, Specificity};
use crate::Route;

/// Position of a route in `RouteTable::routes`. 32 bits keep the candidate
/// lists small; `RouteTable::build` rejects more routes than fit.
pub(crate) type RouteId = u32;

/// Route ids in precedence order.
type Candidates = Box<[RouteId]>;

/// Sort key that puts routes in match order: most specific first, then
/// config order.
pub(crate) fn precedence_key(route: &Route) -> (Reverse<Specificity>, usize) {
    (Reverse(route.specificity()), route.index)
}

/// The request as the buckets check it, with host and path normalized.
pub(crate) struct Probe<'a> {
    pub(crate) routes: &'a [Route],
    pub(crate) path: &'a str,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
}

impl Probe<'_> {
    /// Finds the first route in `candidates` whose methods and headers accept
    /// the request. Host and path were matched by the bucket lookup.
    fn first_accepted(&self, candidates: &[RouteId]) -> Option<RouteId> {
        candidates
            .iter()
            .copied()
            .find(|&id| self.routes[id as usize].accepts(self.method, self.headers))
    }

    /// Like `first_accepted`, for candidates whose path regex is still to be
    /// checked. The regex runs last because it is the most expensive check.
    fn first_accepted_by_regex(&self, candidates: &[RouteId]) -> Option<RouteId> {
        candidates.iter().copied().find(|&id| {
            let route = &self.routes[id as usize];
            route.accepts(self.method, self.headers) && route.path.matches(self.path)
        })
    }
}

/// Routes bucketed by host pattern.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: HashMap<Box<str>, PathIndex>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, PathIndex>,
    any: PathIndex,
}

impl HostIndex {
    pub(crate) fn build(routes: &[Route]) -> HostIndex {
        let mut order: Vec<&Route> = routes.iter().collect();
        order.sort_by_key(|route| precedence_key(route));

        let mut exact: HashMap<Box<str>, PathIndexBuilder> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, PathIndexBuilder> = HashMap::new();
        let mut any = PathIndexBuilder::default();
        for route in order {
            let bucket = match &route.host {
                HostPattern::Any => &mut any,
                HostPattern::Exact(host) => exact.entry(host.as_str().into()).or_default(),
                HostPattern::Wildcard(suffix) => {
                    wildcard.entry(suffix.as_str().into()).or_default()
                }
            };
            bucket.push(route);
        }

        HostIndex {
            exact: finish_map(exact),
            wildcard: finish_map(wildcard),
            any: any.finish(),
        }
    }

    /// Finds the best route for a normalized host (`None` when the request
    /// has none).
    pub(crate) fn find(&self, host: Option<&str>, probe: &Probe<'_>) -> Option<RouteId> {
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|paths| paths.find(probe)) {
                return Some(found);
            }
            if let Some(found) = self.find_wildcard(host, probe) {
                return Some(found);
            }
        }
        self.any.find(probe)
    }

    /// Tries the wildcards that cover `host`, longest suffix first, because a
    /// suffix with more labels is more specific.
    fn find_wildcard(&self, host: &str, probe: &Probe<'_>) -> Option<RouteId> {
        if self.wildcard.is_empty() {
            return None;
        }
        // A dot at position 0 would leave no label in front of the suffix.
        host.match_indices('.')
            .filter(|&(dot, _)| dot > 0)
            .filter_map(|(dot, _)| self.wildcard.get(&host[dot + 1..]))
            .find_map(|paths| paths.find(probe))
    }
}

fn finish_map(builders: HashMap<Box<str>, PathIndexBuilder>) -> HashMap<Box<str>, PathIndex> {
    builders
        .into_iter()
        .map(|(key, builder)| (key, builder.finish()))
        .collect()
}

/// The routes of one host bucket, bucketed by path pattern.
#[derive(Debug, Default)]
pub(crate) struct PathIndex {
    exact: HashMap<Box<str>, Candidates>,
    prefixes: PrefixIndex,
    regex: Candidates,
    any: Candidates,
}

impl PathIndex {
    /// Visits exact paths, then prefixes from longest to shortest, then
    /// regexes, then routes without a path condition.
    fn find(&self, probe: &Probe<'_>) -> Option<RouteId> {
        if let Some(found) = self
            .exact
            .get(probe.path)
            .and_then(|candidates| probe.first_accepted(candidates))
        {
            return Some(found);
        }
        if let Some(found) = self.prefixes.find(probe) {
            return Some(found);
        }
        if let Some(found) = probe.first_accepted_by_regex(&self.regex) {
            return Some(found);
        }
        probe.first_accepted(&self.any)
    }
}

/// Prefix routes keyed by their prefix, with the distinct prefix lengths
/// sorted longest first. A lookup costs one hash probe per distinct length.
#[derive(Debug, Default)]
struct PrefixIndex {
    by_prefix: HashMap<Box<str>, Candidates>,
    lengths: Box<[usize]>,
}

impl PrefixIndex {
    fn find(&self, probe: &Probe<'_>) -> Option<RouteId> {
        self.lengths
            .iter()
            // `get` returns None past the end and inside a multi-byte character.
            .filter_map(|&len| probe.path.get(..len))
            .filter_map(|head| self.by_prefix.get(head))
            .find_map(|candidates| probe.first_accepted(candidates))
    }
}

/// Collects one host bucket's routes, which arrive in precedence order.
#[derive(Default)]
struct PathIndexBuilder {
    exact: HashMap<Box<str>, Vec<RouteId>>,
    prefixes: HashMap<Box<str>, Vec<RouteId>>,
    regex: Vec<RouteId>,
    any: Vec<RouteId>,
}

impl PathIndexBuilder {
    fn push(&mut self, route: &Route) {
        // `RouteTable::build` checked that every index fits a `RouteId`.
        let id = route.index as RouteId;
        match &route.path {
            PathPattern::Any => self.any.push(id),
            PathPattern::Exact(path) => {
                self.exact.entry(path.as_str().into()).or_default().push(id)
            }
            PathPattern::Prefix(prefix) => self
                .prefixes
                .entry(prefix.as_str().into())
                .or_default()
                .push(id),
            PathPattern::Regex(_) => self.regex.push(id),
        }
    }

    fn finish(self) -> PathIndex {
        let mut lengths: Vec<usize> = self.prefixes.keys().map(|prefix| prefix.len()).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();

        PathIndex {
            exact: finish_lists(self.exact),
            prefixes: PrefixIndex {
                by_prefix: finish_lists(self.prefixes),
                lengths: lengths.into_boxed_slice(),
            },
            regex: self.regex.into_boxed_slice(),
            any: self.any.into_boxed_slice(),
        }
    }
}

fn finish_lists(lists: HashMap<Box<str>, Vec<RouteId>>) -> HashMap<Box<str>, Candidates> {
    lists
        .into_iter()
        .map(|(key, ids)| (key, ids.into_boxed_slice()))
        .collect()
}
