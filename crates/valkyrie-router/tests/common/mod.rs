//! Helpers shared by the integration tests: configs from TOML route snippets
//! and requests from plain values.

#![allow(dead_code)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use valkyrie_config::Config;
use valkyrie_router::{RequestInfo, RouteTable};

/// Upstreams `app` (index 0) and `other` (index 1) and key table `tenants`.
pub const TARGETS: &str = r#"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9001"]

[[upstreams]]
name = "other"
endpoints = ["127.0.0.1:9002"]

[[key_tables]]
name = "tenants"
key = { header = "x-tenant" }
source = { file = "tenants.csv" }
"#;

/// Parses `TARGETS` followed by `routes`.
pub fn config(routes: &str) -> Config {
    let text = format!("{TARGETS}\n{routes}");
    toml::from_str(&text).unwrap_or_else(|err| panic!("test config does not parse: {err}\n{text}"))
}

pub fn table(routes: &str) -> RouteTable {
    RouteTable::build(&config(routes)).unwrap_or_else(|err| panic!("build failed: {err}"))
}

/// Builds a header map; a name given twice gets two values.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// A request to match, owning its parts.
#[derive(Clone, Debug)]
pub struct Request {
    pub host: Option<String>,
    pub path: String,
    pub method: Method,
    pub headers: HeaderMap,
}

impl Request {
    pub fn new(host: Option<&str>, path: &str) -> Request {
        Request {
            host: host.map(str::to_owned),
            path: path.to_owned(),
            method: Method::GET,
            headers: HeaderMap::new(),
        }
    }

    pub fn method(mut self, method: &str) -> Request {
        self.method = Method::from_bytes(method.as_bytes()).unwrap();
        self
    }

    pub fn headers(mut self, pairs: &[(&str, &str)]) -> Request {
        self.headers = headers(pairs);
        self
    }

    pub fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            host: self.host.as_deref(),
            path: &self.path,
            query: None,
            method: &self.method,
            headers: &self.headers,
        }
    }
}

/// The name of the route the table picks, if any.
pub fn route_name(table: &RouteTable, request: &Request) -> Option<String> {
    table
        .route(&request.info())
        .map(|matched| matched.route.name.to_string())
}
