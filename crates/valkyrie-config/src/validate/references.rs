//! Checks across sections: unique names, references from routes and key
//! tables to upstreams, routes that can never match, listeners that collide
//! and sections that another one needs.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use toml_edit::{Item, Table, TableLike};

use super::rules::display_name;
use super::{span_start, table_list, TableAt, Validator};
use crate::address::{Host, HostPort};
use crate::error::ErrorKind;
use crate::nearest::suggestion;
use crate::schema::Config;

/// A named entry of an array of tables: an upstream, route or key table.
struct Named<'t> {
    table: TableAt<'t>,
    name: Option<(&'t str, usize)>,
}

fn named_entries<'t>(root: &'t Table, key: &str) -> Vec<Named<'t>> {
    let Some(item) = root.get(key) else {
        return Vec::new();
    };
    table_list(item)
        .into_iter()
        .enumerate()
        .map(|(index, (table, at))| {
            let table = TableAt {
                misspelled: Vec::new(),
                table,
                path: format!("{key}[{index}]"),
                at,
            };
            let name = table.text("name");
            Named { table, name }
        })
        .collect()
}

pub(super) fn check(validator: &mut Validator<'_>, root: &Table) {
    let upstreams = named_entries(root, "upstreams");
    let routes = named_entries(root, "routes");
    let key_tables = named_entries(root, "key_tables");

    check_unique(validator, &upstreams, "upstream");
    check_unique(validator, &routes, "route");
    check_unique(validator, &key_tables, "key table");

    let upstream_names = names(&upstreams);
    let key_table_names = names(&key_tables);
    for route in &routes {
        let name = display_name(&route.table);
        check_reference(
            validator,
            &route.table,
            "upstream",
            &upstream_names,
            &format!("route {name}"),
            "upstream",
        );
        check_reference(
            validator,
            &route.table,
            "key_table",
            &key_table_names,
            &format!("route {name}"),
            "key table",
        );
    }
    for table in &key_tables {
        let name = display_name(&table.table);
        check_reference(
            validator,
            &table.table,
            "default_upstream",
            &upstream_names,
            &format!("key table {name}"),
            "upstream",
        );
    }

    check_unreachable_routes(validator, &routes);
    check_route_count(validator, root, routes.len());
    check_redis_users(validator, root, &key_tables);
    check_https_redirect(validator, root);
    check_listener_collisions(validator, root);
}

fn names<'t>(entries: &[Named<'t>]) -> Vec<&'t str> {
    let mut names: Vec<&'t str> = Vec::new();
    for (name, _) in entries.iter().filter_map(|entry| entry.name) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn check_unique(validator: &mut Validator<'_>, entries: &[Named<'_>], what: &str) {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for entry in entries {
        let Some((name, at)) = entry.name else {
            continue;
        };
        match first_seen.get(name) {
            Some(&first_at) => {
                let line = validator.line(first_at);
                let message = format!("duplicate {what} name `{name}`: the first {what} with this name is at line {line}");
                let hint = Some(format!("give every {what} a different name"));
                validator.report(
                    at,
                    ErrorKind::DuplicateName,
                    entry.table.child("name"),
                    message,
                    hint,
                );
            }
            None => {
                first_seen.insert(name, at);
            }
        }
    }
}

/// Reports a `key` of `table` that names none of `defined`.
fn check_reference(
    validator: &mut Validator<'_>,
    table: &TableAt<'_>,
    key: &str,
    defined: &[&str],
    owner: &str,
    what: &str,
) {
    let Some((name, at)) = table.text(key) else {
        return;
    };
    if name.trim().is_empty() || defined.contains(&name) {
        return;
    }
    let message = format!("{owner} names {what} `{name}`, which is not defined");
    let section = if what == "upstream" {
        "[[upstreams]]"
    } else {
        "[[key_tables]]"
    };
    let hint = if defined.is_empty() {
        format!("no {section} entry is defined in this file")
    } else {
        suggestion(name, defined, &format!("defined {what}s"))
    };
    validator.report(
        at,
        ErrorKind::UndefinedName,
        table.child(key),
        message,
        Some(hint),
    );
}

/// The request conditions of a route, normalized so that two routes that
/// match the same requests compare equal.
#[derive(PartialEq, Eq, Hash)]
struct Conditions {
    host: Option<String>,
    path: Option<(&'static str, String)>,
    methods: BTreeSet<String>,
    /// Lowercased header name, then `value` or `regex`.
    headers: BTreeSet<(String, Option<String>, Option<String>)>,
}

fn conditions(table: &TableAt<'_>) -> Conditions {
    let text = |key: &str| table.text(key).map(|(value, _)| value.to_string());
    let host = text("host").map(|host| host.trim_end_matches('.').to_ascii_lowercase());
    let path = ["path_exact", "path_prefix", "path_regex"]
        .into_iter()
        .find_map(|key| text(key).map(|value| (key, value)));
    let methods = table
        .item("methods")
        .and_then(|(item, _)| item.as_array())
        .map(|array| {
            array
                .iter()
                .filter_map(|value| value.as_str())
                .map(str::to_ascii_uppercase)
                .collect()
        })
        .unwrap_or_default();
    let headers = table
        .item("headers")
        .map(|(item, _)| table_list(item))
        .unwrap_or_default()
        .into_iter()
        .map(|(header, _)| {
            let field = |key: &str| header.get(key).and_then(Item::as_str).map(str::to_string);
            let name = field("name").unwrap_or_default().to_ascii_lowercase();
            (name, field("value"), field("regex"))
        })
        .collect();
    Conditions {
        host,
        path,
        methods,
        headers,
    }
}

fn check_unreachable_routes(validator: &mut Validator<'_>, routes: &[Named<'_>]) {
    let mut earlier: HashMap<Conditions, &Named<'_>> = HashMap::new();
    for route in routes {
        let conditions = conditions(&route.table);
        match earlier.get(&conditions) {
            Some(first) => {
                let line = validator.line(first.table.at);
                let message = format!(
                    "route {} can never match: route {} at line {line} has the same conditions and comes first",
                    display_name(&route.table),
                    display_name(&first.table),
                );
                let hint = Some(
                    "change its host, path, methods or headers, or remove one of the two routes"
                        .to_string(),
                );
                validator.report(
                    route.table.at,
                    ErrorKind::UnreachableRoute,
                    route.table.path.clone(),
                    message,
                    hint,
                );
            }
            None => {
                earlier.insert(conditions, route);
            }
        }
    }
}

fn section<'t>(root: &'t Table, path: &[&str]) -> Option<TableAt<'t>> {
    let mut table: &dyn TableLike = root;
    let mut at = 0;
    for key in path {
        let item = table.get(key)?;
        at = span_start(item)
            .or_else(|| {
                table
                    .key(key)
                    .and_then(|found| found.span())
                    .map(|span| span.start)
            })
            .unwrap_or(at);
        table = item.as_table_like()?;
    }
    Some(TableAt {
        misspelled: Vec::new(),
        table,
        path: path.join("."),
        at,
    })
}

fn check_route_count(validator: &mut Validator<'_>, root: &Table, count: usize) {
    let max_routes = section(root, &["routing"]).and_then(|routing| {
        let (item, at) = routing.item("max_routes")?;
        Some((usize::try_from(item.as_integer()?).ok()?, at))
    });
    let Some((max_routes, at)) = max_routes else {
        return;
    };
    if count > max_routes {
        let message = format!("`routing.max_routes`: the file defines {count} routes, more than the limit of {max_routes}");
        validator.report(
            at,
            ErrorKind::InvalidValue,
            "routing.max_routes",
            message,
            None,
        );
    }
}

/// Reports settings that need Redis when the file has no [redis] section.
fn check_redis_users(validator: &mut Validator<'_>, root: &Table, key_tables: &[Named<'_>]) {
    if root.contains_key("redis") {
        return;
    }
    let hint = || Some("add a [redis] section with url = \"redis://127.0.0.1:6379\"".to_string());

    if let Some(limits) = section(root, &["security", "rate_limiting"]) {
        let enabled = limits.item("enable").and_then(|(item, _)| item.as_bool()) == Some(true);
        if let Some(("redis", at)) = limits.text("backend").filter(|_| enabled) {
            let message = "`security.rate_limiting.backend` is \"redis\", but the file has no [redis] section";
            validator.report(at, ErrorKind::MissingKey, "redis", message, hint());
        }
    }

    for table in key_tables {
        let Some(source) = table
            .table
            .item("source")
            .and_then(|(item, _)| item.as_table_like())
        else {
            continue;
        };
        if let Some(redis_hash) = source.get("redis_hash") {
            let at = span_start(redis_hash).unwrap_or(table.table.at);
            let name = display_name(&table.table);
            let message =
                format!("key table {name} reads a Redis hash, but the file has no [redis] section");
            validator.report(at, ErrorKind::MissingKey, "redis", message, hint());
        }
    }
}

/// Reports `redirect_to_https` without TLS listeners to redirect to.
fn check_https_redirect(validator: &mut Validator<'_>, root: &Table) {
    let Some(server) = section(root, &["server"]) else {
        return;
    };
    let Some((item, at)) = server.item("redirect_to_https") else {
        return;
    };
    if item.as_bool() != Some(true) {
        return;
    }
    let tls_enabled = section(root, &["security"])
        .and_then(|security| security.item("enable_tls"))
        .and_then(|(item, _)| item.as_bool())
        .unwrap_or(Config::default().security.enable_tls);
    if !tls_enabled {
        let message = "`server.redirect_to_https` is true, but `security.enable_tls` is false, so there is no HTTPS listener to redirect to";
        let hint =
            Some("set enable_tls = true in [security], or remove redirect_to_https".to_string());
        validator.report(
            at,
            ErrorKind::Conflict,
            "server.redirect_to_https",
            message,
            hint,
        );
    }
}

/// A listen address with where it comes from.
struct Listener {
    address: HostPort,
    key: String,
    /// Offset of the value, or `None` for a default.
    at: Option<usize>,
}

fn check_listener_collisions(validator: &mut Validator<'_>, root: &Table) {
    let listeners = collect_listeners(root);
    for (index, later) in listeners.iter().enumerate() {
        let Some(at) = later.at else {
            continue;
        };
        let earlier = listeners[..index]
            .iter()
            .find(|earlier| addresses_collide(&earlier.address, &later.address));
        if let Some(earlier) = earlier {
            let origin = match earlier.at {
                Some(earlier_at) => format!("line {}", validator.line(earlier_at)),
                None => "the default".to_string(),
            };
            let message = format!(
                "`{}`: {} is already taken by `{}` ({origin})",
                later.key, later.address, earlier.key
            );
            let hint = Some("give every listener its own port".to_string());
            validator.report(at, ErrorKind::Conflict, later.key.clone(), message, hint);
        }
    }
}

fn collect_listeners(root: &Table) -> Vec<Listener> {
    let defaults = Config::default();
    let flag = |path: &[&str], key: &str, default: bool| {
        section(root, path)
            .and_then(|table| table.item(key).and_then(|(item, _)| item.as_bool()))
            .unwrap_or(default)
    };

    let mut listeners = Vec::new();
    add_listeners(
        &mut listeners,
        root,
        &["server"],
        "listen",
        &defaults.server.listen,
    );
    if flag(&["metrics"], "enable", defaults.metrics.enable) {
        let default = std::slice::from_ref(&defaults.metrics.listen);
        add_listeners(&mut listeners, root, &["metrics"], "listen", default);
    }
    add_listeners(&mut listeners, root, &["admin"], "listen", &[]);
    if flag(&["security"], "enable_tls", defaults.security.enable_tls) {
        add_listeners(
            &mut listeners,
            root,
            &["security"],
            "tls_listen",
            &defaults.security.tls_listen,
        );
    }
    listeners
}

/// Adds the addresses of a listen key, a string or an array of strings, or
/// its defaults when the key is absent. Values that do not parse were
/// reported already and are skipped.
fn add_listeners(
    listeners: &mut Vec<Listener>,
    root: &Table,
    path: &[&str],
    key: &str,
    defaults: &[String],
) {
    let full_key = format!("{}.{key}", path.join("."));
    let item = section(root, path).and_then(|table| table.item(key).map(|(item, _)| item));
    let Some(item) = item else {
        for address in defaults
            .iter()
            .filter_map(|text| text.parse::<HostPort>().ok())
        {
            listeners.push(Listener {
                address,
                key: full_key.clone(),
                at: None,
            });
        }
        return;
    };

    let mut add = |value: &toml_edit::Value, key: String| {
        if let Some(address) = value
            .as_str()
            .and_then(|text| text.parse::<HostPort>().ok())
        {
            let at = value.span().map(|span| span.start);
            listeners.push(Listener { address, key, at });
        }
    };
    match item.as_value() {
        Some(toml_edit::Value::Array(array)) => {
            for (index, value) in array.iter().enumerate() {
                add(value, format!("{full_key}[{index}]"));
            }
        }
        Some(value) => add(value, full_key),
        None => {}
    }
}

/// Returns whether two listeners cannot both bind: the same port on the same
/// host, or on a specific address and the unspecified address of its family.
fn addresses_collide(first: &HostPort, second: &HostPort) -> bool {
    if first.port != second.port || first.port == 0 {
        return false;
    }
    match (&first.host, &second.host) {
        (Host::Ip(a), Host::Ip(b)) => {
            a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
        }
        (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
        (Host::Ip(ip), Host::Name(_)) | (Host::Name(_), Host::Ip(ip)) => {
            *ip == IpAddr::from([0, 0, 0, 0])
        }
    }
}
