//! The route model compiled from configuration and the matcher that maps a
//! request (host, path, method, headers) to a route and its upstream.

use std::sync::Arc;

use valkyrie_config::{Config, Duration, Rate};

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
#[derive(Clone, Debug)]
pub struct Route {
    /// Position in the config file's `[[routes]]` list.
    pub index: usize,
    pub name: Arc<str>,
    pub target: RouteTarget,
    pub strip_prefix: Option<String>,
    pub timeout: Option<Duration>,
    pub retry_non_idempotent: bool,
    pub rate_limit: Option<Rate>,
    pub rate_limit_burst: Option<u32>,
}

/// The result of matching one request.
#[derive(Clone, Copy, Debug)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
}

/// A config whose routes cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("route `{route}`: {message}")]
    Route { route: String, message: String },
}

/// The compiled, immutable routing table.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles the routes of a validated config.
    pub fn build(_config: &Config) -> Result<RouteTable, BuildError> {
        unimplemented!("route compilation is not written yet")
    }

    /// Finds the route for a request, or `None` when nothing matches.
    pub fn route(&self, _request: &RequestInfo<'_>) -> Option<RouteMatch<'_>> {
        unimplemented!("route matching is not written yet")
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
