//! Checks across the keys of one table: keys that exclude or need each
//! other, and values that must agree.

use std::collections::HashMap;

use super::{table_list, TableAt, Validator};
use crate::error::ErrorKind;
use crate::units::Duration;

/// Returns how a route or upstream is named in messages: by its `name`, or
/// by its path when the name is missing.
pub(crate) fn display_name(table: &TableAt<'_>) -> String {
    match table.text("name") {
        Some((name, _)) => format!("`{name}`"),
        None => format!("`{}`", table.path),
    }
}

pub(crate) fn admin(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    if table.item("token_env").is_some() && table.item("token_file").is_some() {
        let message = "[admin] sets both `token_env` and `token_file`";
        let hint = Some("keep one of them: the token comes from one place".to_string());
        validator.report(
            table.key_at("token_file"),
            ErrorKind::Conflict,
            table.child("token_file"),
            message,
            hint,
        );
    }
}

pub(crate) fn certificate(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    if let Some((item, at)) = table.item("server_names") {
        if item.as_array().is_some_and(|names| names.is_empty()) {
            let path = table.child("server_names");
            let message = format!("`{path}`: the list is empty");
            let hint = Some(
                "list the host names this certificate serves, such as [\"*.example.com\"]"
                    .to_string(),
            );
            validator.report(at, ErrorKind::InvalidValue, path, message, hint);
        }
    }
}

pub(crate) fn security(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    let requires_client_cert = table
        .item("require_client_cert")
        .and_then(|(item, _)| item.as_bool())
        == Some(true);
    if requires_client_cert && !table.has_or_intends("client_ca_path") {
        let message = "`security` sets `require_client_cert = true` without `client_ca_path`";
        let hint = Some(
            "set client_ca_path to the PEM bundle of the CAs that issue client certificates"
                .to_string(),
        );
        validator.report(
            table.key_at("require_client_cert"),
            ErrorKind::MissingKey,
            table.child("client_ca_path"),
            message,
            hint,
        );
    }
    check_certificate_names(validator, table);
}

/// Reports a server name that two `[[security.certificates]]` entries (or
/// one entry twice) list, since SNI could not tell which certificate to send.
fn check_certificate_names(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    let Some((certificates, _)) = table.item("certificates") else {
        return;
    };
    let mut first_seen: HashMap<String, (String, usize)> = HashMap::new();
    for (index, (entry, _)) in table_list(certificates).into_iter().enumerate() {
        let Some(names) = entry.get("server_names").and_then(|item| item.as_array()) else {
            continue;
        };
        let key = format!("{}.certificates[{index}].server_names", table.path);
        for value in names.iter() {
            let Some(name) = value.as_str() else {
                continue;
            };
            let at = value.span().map_or(table.at, |span| span.start);
            match first_seen.get(&name.to_ascii_lowercase()) {
                Some((first_key, first_at)) => {
                    let line = validator.line(*first_at);
                    let message = format!(
                        "`{key}`: server name `{name}` is already listed in `{first_key}` (line {line})"
                    );
                    let hint = Some(
                        "list each server name under one certificate, so SNI picks one".to_string(),
                    );
                    validator.report(at, ErrorKind::DuplicateName, key.clone(), message, hint);
                }
                None => {
                    first_seen.insert(name.to_ascii_lowercase(), (key.clone(), at));
                }
            }
        }
    }
}

pub(crate) fn upstream(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    if let Some((item, at)) = table.item("endpoints") {
        if item
            .as_array()
            .is_some_and(|endpoints| endpoints.is_empty())
        {
            let message = format!("upstream {} has no endpoints", display_name(table));
            let hint =
                Some("list at least one, such as endpoints = [\"127.0.0.1:9001\"]".to_string());
            validator.report(
                at,
                ErrorKind::InvalidValue,
                table.child("endpoints"),
                message,
                hint,
            );
        }
    }
}

pub(crate) fn upstream_tls(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    let pairs = [
        ("client_cert_path", "client_key_path"),
        ("client_key_path", "client_cert_path"),
    ];
    for (present, absent) in pairs {
        if table.item(present).is_some() && !table.has_or_intends(absent) {
            let message = format!("`{}` sets `{present}` without `{absent}`", table.path);
            let hint =
                Some("a client certificate needs both the certificate and its key".to_string());
            validator.report(
                table.key_at(present),
                ErrorKind::MissingKey,
                table.child(absent),
                message,
                hint,
            );
        }
    }
}

pub(crate) fn circuit_breaker(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    let duration = |key: &str| -> Option<(Duration, usize)> {
        let (text, at) = table.text(key)?;
        Some((text.parse().ok()?, at))
    };
    let defaults = crate::schema::CircuitBreakerConfig::default();
    let open = duration("open_time");
    let max_open = duration("max_open_time");
    if open.is_none() && max_open.is_none() {
        return;
    }
    let (open_time, open_at) = open.unwrap_or((defaults.open_time, table.at));
    let (max_open_time, max_at) = max_open.unwrap_or((defaults.max_open_time, table.at));
    if open_time > max_open_time {
        let (at, key) = if open_at >= max_at {
            (open_at, "open_time")
        } else {
            (max_at, "max_open_time")
        };
        let message = format!(
            "`{}`: open_time ({open_time}) is longer than max_open_time ({max_open_time})",
            table.child(key)
        );
        validator.report(at, ErrorKind::Conflict, table.child(key), message, None);
    }
}

pub(crate) fn route(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    let name = display_name(table);

    let mut paths: Vec<(&str, usize)> = ["path_exact", "path_prefix", "path_regex"]
        .into_iter()
        .filter(|key| table.item(key).is_some())
        .map(|key| (key, table.key_at(key)))
        .collect();
    paths.sort_by_key(|(_, at)| *at);
    if let [(first, _), rest @ ..] = paths.as_slice() {
        for (extra, at) in rest {
            let message = format!("route {name} sets both `{first}` and `{extra}`");
            let hint = Some("a route takes one path condition: keep one of them".to_string());
            validator.report(*at, ErrorKind::Conflict, table.child(extra), message, hint);
        }
    }

    let upstream = table.item("upstream").map(|_| table.key_at("upstream"));
    let key_table = table.item("key_table").map(|_| table.key_at("key_table"));
    match (upstream, key_table) {
        (None, None) if table.has_or_intends("upstream") || table.has_or_intends("key_table") => {}
        (None, None) => {
            let message = format!("route {name} sets neither `upstream` nor `key_table`");
            let hint = Some("add upstream = \"NAME\" naming one of the [[upstreams]]".to_string());
            validator.report(
                table.at,
                ErrorKind::MissingKey,
                table.child("upstream"),
                message,
                hint,
            );
        }
        (Some(upstream_at), Some(key_table_at)) => {
            let (at, key) = if key_table_at > upstream_at {
                (key_table_at, "key_table")
            } else {
                (upstream_at, "upstream")
            };
            let message = format!("route {name} sets both `upstream` and `key_table`");
            let hint = Some(
                "a route sends traffic to one upstream or one key table: keep one of them"
                    .to_string(),
            );
            validator.report(at, ErrorKind::Conflict, table.child(key), message, hint);
        }
        _ => {}
    }

    check_strip_prefix(validator, table, &name);
}

/// Reports a `strip_prefix` that the route's own path condition rules out.
fn check_strip_prefix(validator: &mut Validator<'_>, table: &TableAt<'_>, name: &str) {
    let Some((strip, at)) = table.text("strip_prefix") else {
        return;
    };
    let path = ["path_prefix", "path_exact"]
        .into_iter()
        .find_map(|key| table.text(key).map(|(path, _)| (key, path)));
    let Some((path_key, path)) = path else {
        return;
    };
    if !path.starts_with(strip) {
        let message = format!("route {name}: strip_prefix `{strip}` is not a prefix of {path_key} `{path}`, so it never applies");
        validator.report(
            at,
            ErrorKind::Conflict,
            table.child("strip_prefix"),
            message,
            None,
        );
    }
}

pub(crate) fn header_match(validator: &mut Validator<'_>, table: &TableAt<'_>) {
    let header = match table.text("name") {
        Some((name, _)) => format!("`{name}`"),
        None => format!("`{}`", table.path),
    };
    let value = table.item("value").map(|_| table.key_at("value"));
    let regex = table.item("regex").map(|_| table.key_at("regex"));
    match (value, regex) {
        (None, None) if table.has_or_intends("value") || table.has_or_intends("regex") => {}
        (None, None) => {
            let message = format!("header condition {header} sets neither `value` nor `regex`");
            let hint = Some(
                "set value = \"...\" for an exact match or regex = \"...\" for a pattern \
                 (regex = \".*\" only requires the header to be present)"
                    .to_string(),
            );
            validator.report(
                table.at,
                ErrorKind::MissingKey,
                table.child("value"),
                message,
                hint,
            );
        }
        (Some(value_at), Some(regex_at)) => {
            let (at, key) = if regex_at > value_at {
                (regex_at, "regex")
            } else {
                (value_at, "value")
            };
            let message = format!("header condition {header} sets both `value` and `regex`");
            let hint = Some("keep one of them".to_string());
            validator.report(at, ErrorKind::Conflict, table.child(key), message, hint);
        }
        _ => {}
    }
}
