//! Admin endpoints of the routing engine: `GET` and `POST /admin/keys` for
//! key tables, and `POST /admin/cache/warmup` for the route decision cache.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;
use valkyrie_config::TableSource;
use valkyrie_proxy::body::ProxyBody;
use valkyrie_proxy::error::json_response;
use valkyrie_proxy::keys::{parse_target, KeyChange, LoadedTable};
use valkyrie_proxy::Snapshot;
use valkyrie_router::keys::{KeyTarget, UpstreamNames, MAX_KEY_LEN};

use crate::service::Control;

/// Largest `POST /admin/keys` body, in bytes: room for batches of about
/// 100,000 changes.
pub const MAX_KEYS_BODY: usize = 16 * 1024 * 1024;

/// Keys warmed by `POST /admin/cache/warmup` without a `limit`.
const DEFAULT_WARMUP_KEYS: usize = 256;

/// Maximum invalid entries listed in a 400 response; the rest are counted.
const LISTED_ERRORS: usize = 20;

fn error(status: StatusCode, kind: &str, message: String) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({ "error": kind, "status": status.as_u16(), "message": message }),
    )
}

/// Body of `POST /admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysChange {
    table: String,
    #[serde(default)]
    upsert: Map<String, Value>,
    #[serde(default)]
    delete: Vec<String>,
}

/// The long form of an upsert target.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetObject {
    upstream: String,
    #[serde(default)]
    endpoint: Option<String>,
}

/// `POST /admin/keys`: validates a batch of upserts and deletes for one
/// table, applies it through the snapshot publisher, and responds once the
/// snapshot that contains it serves requests.
pub async fn change_keys(control: &Control, body: &Bytes) -> Response<ProxyBody> {
    let change: KeysChange = match parse_object(body) {
        Ok(change) => change,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid body: {message}; expected {{\"table\": NAME, \"upsert\": {{KEY: \"upstream[,endpoint]\"}}, \"delete\": [KEY]}}"),
            )
        }
    };
    let state = control.state();
    let snapshot = state.snapshot.load_full();
    let Some(loaded) = find_table(&snapshot, &change.table) else {
        return unknown_table(&snapshot, &change.table);
    };
    if let TableSource::RedisHash(hash) = &loaded.origin.config.source {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "key table `{}` reads Redis hash `{hash}`, and a change made here would be lost at its next read; change the hash instead, with `valkyrie-routing keys set {} KEY TARGET` or HSET followed by PUBLISH {hash} KEY",
                change.table, change.table
            ),
        );
    }
    let changes = match validate(&snapshot, &change) {
        Ok(changes) => changes,
        Err(problems) => return invalid_entries(problems),
    };
    drop(snapshot);

    let started = Instant::now();
    let Some(outcome) = state.engine.apply_keys(state, &change.table, changes).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the key-table publisher is not running, so the change was not applied".to_string(),
        );
    };
    info!(
        table = %change.table,
        upserted = outcome.upserted,
        deleted = outcome.deleted,
        rejected = outcome.rejected.len(),
        generation = outcome.generation,
        elapsed_us = started.elapsed().as_micros() as u64,
        "key table changed through the admin API"
    );
    json_response(
        StatusCode::OK,
        &json!({
            "result": if outcome.rejected.is_empty() { "ok" } else { "partial" },
            "table": change.table,
            "upserted": outcome.upserted,
            "deleted": outcome.deleted,
            "not_found": outcome.not_found,
            "rejected": outcome.rejected,
            "generation": outcome.generation,
        }),
    )
}

/// Checks every key and target of a batch against the running config and
/// returns the changes, deletes last, or every problem found.
fn validate(snapshot: &Snapshot, change: &KeysChange) -> Result<Vec<KeyChange>, Vec<String>> {
    let names = UpstreamNames::new(&snapshot.config);
    let mut problems = Vec::new();
    let mut changes = Vec::with_capacity(change.upsert.len() + change.delete.len());
    if change.upsert.is_empty() && change.delete.is_empty() {
        problems.push("the batch is empty: give `upsert`, `delete` or both".to_string());
    }
    for (key, value) in &change.upsert {
        if let Err(problem) = check_key(key) {
            problems.push(problem);
            continue;
        }
        let target = match value {
            Value::String(text) => parse_target(text),
            Value::Object(_) => serde_json::from_value::<TargetObject>(value.clone())
                .map(|object| (object.upstream, object.endpoint))
                .map_err(|error| error.to_string()),
            _ => Err(
                "expected \"upstream[,endpoint]\" or {\"upstream\": ..., \"endpoint\": ...}"
                    .to_string(),
            ),
        };
        match target.and_then(|(upstream, endpoint)| {
            names
                .resolve(&upstream, endpoint.as_deref())
                .map(|_| (upstream, endpoint))
        }) {
            Ok(target) => changes.push(KeyChange {
                key: key.as_bytes().into(),
                target: Some(target),
            }),
            Err(problem) => problems.push(format!("key `{key}`: {problem}")),
        }
    }
    let upserted: HashSet<&str> = change.upsert.keys().map(String::as_str).collect();
    for key in &change.delete {
        if let Err(problem) = check_key(key) {
            problems.push(problem);
        } else if upserted.contains(key.as_str()) {
            problems.push(format!(
                "key `{key}` is both upserted and deleted; give it once"
            ));
        } else {
            changes.push(KeyChange {
                key: key.as_bytes().into(),
                target: None,
            });
        }
    }
    if problems.is_empty() {
        Ok(changes)
    } else {
        Err(problems)
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key is empty".to_string());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "a key is {} bytes long; at most {MAX_KEY_LEN} are allowed",
            key.len()
        ));
    }
    Ok(())
}

fn invalid_entries(problems: Vec<String>) -> Response<ProxyBody> {
    let count = problems.len();
    let listed: Vec<&String> = problems.iter().take(LISTED_ERRORS).collect();
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({
            "error": "bad_request",
            "status": 400,
            "message": format!("{count} invalid change(s); nothing was applied"),
            "errors": listed,
            "error_count": count,
        }),
    )
}

fn unknown_table(snapshot: &Snapshot, name: &str) -> Response<ProxyBody> {
    let defined: Vec<&str> = snapshot
        .key_tables
        .iter()
        .map(|loaded| &**loaded.table.name())
        .collect();
    let hint = valkyrie_config::suggestion(name, &defined, "defined key tables");
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("key table `{name}` is not defined in [[key_tables]]; {hint}"),
    )
}

fn find_table<'s>(snapshot: &'s Snapshot, name: &str) -> Option<&'s LoadedTable> {
    snapshot
        .key_tables
        .iter()
        .find(|loaded| &**loaded.table.name() == name)
}

/// `GET /admin/keys`: without parameters lists the tables; with
/// `table=NAME` describes one; with `table=NAME&key=K` looks a key up.
pub fn lookup_keys(control: &Control, query: Option<&str>) -> Response<ProxyBody> {
    let snapshot = control.state().snapshot.load_full();
    let table_name = query.and_then(|query| query_param(query, "table"));
    let key = query.and_then(|query| query_param(query, "key"));
    let Some(table_name) = table_name else {
        let tables: Vec<Value> = snapshot
            .key_tables
            .iter()
            .map(|loaded| describe(&snapshot, loaded))
            .collect();
        return json_response(
            StatusCode::OK,
            &json!({ "generation": snapshot.generation, "tables": tables }),
        );
    };
    let Some(loaded) = find_table(&snapshot, &table_name) else {
        return unknown_table(&snapshot, &table_name);
    };
    let Some(key) = key else {
        let mut body = describe(&snapshot, loaded);
        body["generation"] = snapshot.generation.into();
        return json_response(StatusCode::OK, &body);
    };
    match loaded.table.get(key.as_bytes()) {
        Some(target) => {
            let mut body = target_json(&snapshot, target);
            body["table"] = table_name.as_ref().into();
            body["key"] = key.as_ref().into();
            body["generation"] = snapshot.generation.into();
            json_response(StatusCode::OK, &body)
        }
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "error": "not_found",
                "status": 404,
                "message": format!("key `{key}` has no entry in key table `{table_name}`"),
                "table": table_name,
                "key": key,
                "default_upstream": loaded.origin.config.default_upstream,
                "generation": snapshot.generation,
            }),
        ),
    }
}

fn describe(snapshot: &Snapshot, loaded: &LoadedTable) -> Value {
    let stats = loaded.table.stats();
    json!({
        "table": &**loaded.table.name(),
        "key": loaded.table.spec().to_string(),
        "entries": stats.entries,
        "source": match &loaded.origin.config.source {
            TableSource::File(_) => json!({ "file": loaded.origin.path.display().to_string() }),
            TableSource::RedisHash(hash) => json!({ "redis_hash": hash }),
        },
        "file": match &loaded.origin.config.source {
            TableSource::File(_) => Some(loaded.origin.path.display().to_string()),
            TableSource::RedisHash(_) => None,
        },
        "file_entries": loaded.origin.file_entries,
        "default_upstream": loaded
            .table
            .default_target()
            .map(|target| target_json(snapshot, target)["upstream"].clone()),
        "heap_bytes": stats.heap_bytes,
    })
}

fn target_json(snapshot: &Snapshot, target: KeyTarget) -> Value {
    let upstream = snapshot.config.upstreams.get(target.upstream());
    let endpoint = target.endpoint().and_then(|index| {
        upstream
            .and_then(|upstream| upstream.endpoints.get(index))
            .map(|endpoint| endpoint.address().to_string())
    });
    json!({
        "upstream": upstream.map(|upstream| upstream.name.clone()),
        "endpoint": endpoint,
    })
}

/// Returns the percent-decoded value of query parameter `name`.
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

/// Decodes `%XX` escapes and `+` as a space, as HTML forms encode query
/// strings; invalid escapes and invalid UTF-8 are kept or replaced.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (b'+', None) => {
                decoded.push(b' ');
                i += 1;
            }
            (byte, None) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

/// Body of `POST /admin/cache/warmup`; optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Warmup {
    limit: Option<usize>,
}

/// `POST /admin/cache/warmup`: routes the most requested recent keys on the
/// current snapshot and stores the decisions in the route cache.
pub fn cache_warmup(control: &Control, body: &Bytes) -> Response<ProxyBody> {
    let warmup = if body.iter().all(u8::is_ascii_whitespace) {
        Warmup::default()
    } else {
        match parse_object::<Warmup>(body) {
            Ok(warmup) => warmup,
            Err(message) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid body: {message}; expected {{\"limit\": N}} or nothing"),
                )
            }
        }
    };
    let state = control.state();
    let snapshot = state.snapshot.load_full();
    let limit = warmup.limit.unwrap_or(DEFAULT_WARMUP_KEYS);
    let Some((keys, stored)) = state.engine.warm_cache(&snapshot, limit) else {
        return error(
            StatusCode::CONFLICT,
            "cache_disabled",
            "the route decision cache is off; set [routing] route_cache_size above 0 to use it"
                .to_string(),
        );
    };
    let stats = state.engine.cache_stats().unwrap_or_default();
    info!(keys, stored, "route cache warmed");
    json_response(
        StatusCode::OK,
        &json!({
            "result": "ok",
            "keys": keys,
            "stored": stored,
            "generation": snapshot.generation,
            "cache": {
                "entries": stats.entries,
                "capacity": stats.capacity,
                "hits": stats.hits,
                "misses": stats.misses,
            },
        }),
    )
}

fn parse_object<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    let value: Value = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    if !value.is_object() {
        return Err("the body must be a JSON object".to_string());
    }
    serde_json::from_value(value).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        let query = "table=tenants&key=a%2Cb+c&empty=&flag";
        assert_eq!(query_param(query, "table").as_deref(), Some("tenants"));
        assert_eq!(query_param(query, "key").as_deref(), Some("a,b c"));
        assert_eq!(query_param(query, "empty").as_deref(), Some(""));
        assert_eq!(query_param(query, "flag").as_deref(), Some(""));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(decode("%zz%4").as_ref(), "%zz%4");
    }
}
