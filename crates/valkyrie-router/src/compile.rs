//! Compilation of `[[routes]]` entries into [`Route`]s.
//!
//! The config crate validates routes too, but this code checks everything it
//! relies on itself, so an unvalidated config yields an error and never a
//! panic.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use valkyrie_config::{Config, HeaderMatchConfig, RouteConfig};

use crate::conditions::{
    HeaderCondition, HeaderRegex, HeaderValueMatch, HostPattern, PathPattern, PathRegex,
};
use crate::normalize::{normalize_config_path, normalize_host};
use crate::{BuildError, Route, RouteOptions, RouteTarget};

/// Positions of upstreams and key tables by name. With duplicate names the
/// first entry wins, as the config validator reports duplicates.
pub(crate) struct TargetNames<'c> {
    upstreams: HashMap<&'c str, usize>,
    key_tables: HashMap<&'c str, usize>,
    /// Host names compiled so far, so that routes of one host share it.
    hosts: RefCell<HashSet<Arc<str>>>,
}

impl<'c> TargetNames<'c> {
    pub(crate) fn new(config: &'c Config) -> TargetNames<'c> {
        let mut upstreams = HashMap::new();
        for (index, upstream) in config.upstreams.iter().enumerate() {
            upstreams.entry(upstream.name.as_str()).or_insert(index);
        }
        let mut key_tables = HashMap::new();
        for (index, table) in config.key_tables.iter().enumerate() {
            key_tables.entry(table.name.as_str()).or_insert(index);
        }
        TargetNames {
            upstreams,
            key_tables,
            hosts: RefCell::default(),
        }
    }

    /// Returns the shared copy of `host`.
    fn intern(&self, host: &str) -> Arc<str> {
        let mut hosts = self.hosts.borrow_mut();
        if let Some(shared) = hosts.get(host) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(host);
        hosts.insert(Arc::clone(&shared));
        shared
    }
}

/// Compiles every route of `config`, stopping at the first invalid one.
pub(crate) fn compile_routes(config: &Config) -> Result<Vec<Route>, BuildError> {
    let names = TargetNames::new(config);
    // Collecting `Result`s gives no size hint, so the vector would grow by
    // doubling and keep up to twice the memory the routes need.
    let mut routes = Vec::with_capacity(config.routes.len());
    for (index, route) in config.routes.iter().enumerate() {
        routes.push(compile_route(index, route, &names)?);
    }
    Ok(routes)
}

/// Compiles the route at position `index` of `[[routes]]`.
pub(crate) fn compile_route(
    index: usize,
    config: &RouteConfig,
    names: &TargetNames<'_>,
) -> Result<Route, BuildError> {
    let error = |message: String| BuildError::Route {
        route: route_label(index, config),
        message,
    };

    let host = match &config.host {
        Some(host) => match parse_host(host).map_err(&error)? {
            HostPattern::Exact(host) => HostPattern::Exact(names.intern(&host)),
            HostPattern::Wildcard(suffix) => HostPattern::Wildcard(names.intern(&suffix)),
            HostPattern::Any => HostPattern::Any,
        },
        None => HostPattern::Any,
    };
    let path = parse_path(config).map_err(&error)?;
    let methods = parse_methods(&config.methods).map_err(&error)?;
    let headers = config
        .headers
        .iter()
        .map(parse_header_condition)
        .collect::<Result<Vec<_>, _>>()
        .map_err(&error)?;
    let target = resolve_target(config, names).map_err(&error)?;
    let strip_prefix = match &config.strip_prefix {
        Some(prefix) => Some(
            normalize_config_path(prefix, true)
                .map_err(|problem| error(format!("strip_prefix {problem}")))?,
        ),
        None => None,
    };

    Ok(Route::new(
        index,
        Arc::from(config.name.as_str()),
        host,
        path,
        target,
        config.retry_non_idempotent,
        RouteOptions {
            strip_prefix: strip_prefix.map(String::into_boxed_str),
            timeout: config.timeout,
            rate_limit: config.rate_limit,
            rate_limit_burst: config.rate_limit_burst,
            methods: methods.into_boxed_slice(),
            headers: headers.into_boxed_slice(),
        },
    ))
}

/// The name used for a route in errors: its `name`, or its position when the
/// name is empty.
pub(crate) fn route_label(index: usize, config: &RouteConfig) -> String {
    if config.name.is_empty() {
        format!("#{index} (unnamed)")
    } else {
        config.name.clone()
    }
}

/// Parses `host`: `"*.example.com"` for a wildcard, or one host name or IP
/// literal. A port and a trailing dot are ignored.
fn parse_host(host: &str) -> Result<HostPattern, String> {
    let normalized = normalize_host(host);
    if normalized == "*" {
        return Err(format!(
            "host `{host}` is a lone `*`, which is not a host pattern; leave `host` out to match every host"
        ));
    }
    if let Some(suffix) = normalized.strip_prefix("*.") {
        check_host_name(suffix).map_err(|problem| format!("host `{host}` {problem}"))?;
        return Ok(HostPattern::Wildcard(Arc::from(suffix)));
    }
    if normalized.contains('*') {
        return Err(format!(
            "host `{host}` has a `*` that is not a leading `*.`; write a wildcard as `*.example.com`"
        ));
    }
    if is_ip_literal(&normalized) {
        return Ok(HostPattern::Exact(Arc::from(normalized.as_ref())));
    }
    check_host_name(&normalized).map_err(|problem| format!("host `{host}` {problem}"))?;
    Ok(HostPattern::Exact(Arc::from(normalized.as_ref())))
}

/// An IPv6 literal in brackets, such as `[::1]`.
fn is_ip_literal(host: &str) -> bool {
    match host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(inner) => {
            !inner.is_empty()
                && inner
                    .bytes()
                    .all(|byte| byte.is_ascii_hexdigit() || byte == b':' || byte == b'.')
        }
        None => false,
    }
}

fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.split('.').any(str::is_empty) {
        return Err("has an empty label".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
    {
        return Err(format!(
            "contains `{bad}`; host names may contain letters, digits, `-`, `_` and `.`, \
             and internationalized names must be written in their `xn--` form"
        ));
    }
    Ok(())
}

fn parse_path(config: &RouteConfig) -> Result<PathPattern, String> {
    match (&config.path_exact, &config.path_prefix, &config.path_regex) {
        (None, None, None) => Ok(PathPattern::Any),
        (Some(exact), None, None) => normalize_config_path(exact, false)
            .map(|exact| PathPattern::Exact(exact.into_boxed_str()))
            .map_err(|problem| format!("path_exact {problem}")),
        (None, Some(prefix), None) => normalize_config_path(prefix, true)
            .map(|prefix| PathPattern::Prefix(prefix.into_boxed_str()))
            .map_err(|problem| format!("path_prefix {problem}")),
        (None, None, Some(regex)) => PathRegex::new(regex)
            .map(|regex| PathPattern::Regex(Box::new(regex)))
            .map_err(|err| format!("path_regex `{regex}` is invalid: {err}")),
        _ => Err("set only one of path_exact, path_prefix and path_regex".to_owned()),
    }
}

/// Parses method names, uppercasing them, and drops duplicates.
fn parse_methods(names: &[String]) -> Result<Vec<Method>, String> {
    let mut methods = Vec::with_capacity(names.len());
    for name in names {
        let method = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method `{name}` is not a valid HTTP method token"))?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    Ok(methods)
}

fn parse_header_condition(config: &HeaderMatchConfig) -> Result<HeaderCondition, String> {
    let name = HeaderName::from_bytes(config.name.as_bytes())
        .map_err(|_| format!("header name `{}` is invalid", config.name))?;
    let value = match (&config.value, &config.regex) {
        (None, None) => HeaderValueMatch::Present,
        (Some(value), None) => HeaderValue::from_str(value)
            .map(HeaderValueMatch::Exact)
            .map_err(|_| format!("header `{name}`: value `{value}` is not a valid header value"))?,
        (None, Some(regex)) => HeaderRegex::new(regex)
            .map(HeaderValueMatch::Regex)
            .map_err(|err| format!("header `{name}`: regex `{regex}` is invalid: {err}"))?,
        (Some(_), Some(_)) => {
            return Err(format!(
                "header `{name}`: set either value or regex, not both"
            ));
        }
    };
    Ok(HeaderCondition { name, value })
}

fn resolve_target(config: &RouteConfig, names: &TargetNames<'_>) -> Result<RouteTarget, String> {
    match (&config.upstream, &config.key_table) {
        (Some(upstream), None) => match names.upstreams.get(upstream.as_str()) {
            Some(&index) => Ok(RouteTarget::Upstream(index)),
            None => Err(format!(
                "upstream `{upstream}` is not defined in [[upstreams]]"
            )),
        },
        (None, Some(table)) => match names.key_tables.get(table.as_str()) {
            Some(&index) => Ok(RouteTarget::KeyTable(index)),
            None => Err(format!(
                "key_table `{table}` is not defined in [[key_tables]]"
            )),
        },
        (None, None) => Err("missing target: set upstream or key_table".to_owned()),
        (Some(_), Some(_)) => Err("set only one of upstream and key_table".to_owned()),
    }
}
