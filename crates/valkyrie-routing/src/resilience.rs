//! Admin endpoints for circuit breakers and the deny list, and the health,
//! breaker and limit details that `GET /admin/upstreams` shows.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;
use valkyrie_proxy::body::ProxyBody;
use valkyrie_proxy::breaker::ForcedMode;
use valkyrie_proxy::error::json_response;
use valkyrie_proxy::upstream::{Endpoint, Upstream};

use crate::service::Control;

/// Body of `POST /admin/circuit-breaker/*`; both fields are optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerTarget {
    upstream: Option<String>,
    endpoint: Option<String>,
}

/// Body of `POST /admin/deny-list`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyListChange {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

fn error(status: StatusCode, kind: &str, message: String) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({ "error": kind, "status": status.as_u16(), "message": message }),
    )
}

/// Returns true when an admin request body is empty or only whitespace.
fn is_blank(body: &Bytes) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// Parses a JSON object into `T`; arrays and other values are rejected
/// even where `T` could be read from them.
fn parse_object<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    let value: Value = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    if !value.is_object() {
        return Err("the body must be a JSON object".to_string());
    }
    serde_json::from_value(value).map_err(|error| error.to_string())
}

/// `POST /admin/circuit-breaker/{enable,disable,reset}`: forces the named
/// breakers open, forces them closed, or returns them to automatic
/// operation with their counters cleared. Without a body it acts on every
/// endpoint of every upstream.
pub fn circuit_breaker(control: &Control, action: &str, body: &Bytes) -> Response<ProxyBody> {
    let mode = match action {
        "enable" => ForcedMode::Open,
        "disable" => ForcedMode::Closed,
        "reset" => ForcedMode::Auto,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown circuit-breaker action `{other}`; use enable, disable or reset"),
            )
        }
    };
    let target = if is_blank(body) {
        BreakerTarget::default()
    } else {
        match parse_object::<BreakerTarget>(body) {
            Ok(target) => target,
            Err(parse_error) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid JSON body: {parse_error}; expected {{\"upstream\": \"NAME\", \"endpoint\": \"HOST:PORT\"}} with both fields optional"),
                )
            }
        }
    };

    let snapshot = control.state().snapshot.load();
    let upstreams: Vec<&Upstream> = match &target.upstream {
        Some(name) => match snapshot.upstreams.iter().find(|u| *u.name == **name) {
            Some(upstream) => vec![&**upstream],
            None => {
                let known: Vec<&str> = snapshot.upstreams.iter().map(|u| &*u.name).collect();
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "no upstream named `{name}`; upstreams: {}",
                        known.join(", ")
                    ),
                );
            }
        },
        None => snapshot.upstreams.iter().map(|u| &**u).collect(),
    };
    let mut affected = Vec::new();
    for upstream in upstreams {
        for endpoint in &upstream.endpoints {
            if target
                .endpoint
                .as_deref()
                .is_some_and(|wanted| wanted != &*endpoint.address)
            {
                continue;
            }
            endpoint.breaker.force(mode);
            affected.push(json!({
                "upstream": &*upstream.name,
                "endpoint": &*endpoint.address,
                "state": endpoint.breaker.state().as_str(),
                "mode": mode.as_str(),
            }));
        }
    }
    if let (Some(wanted), true) = (&target.endpoint, affected.is_empty()) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint `{wanted}` in the named upstreams"),
        );
    }
    info!(
        action,
        upstream = target.upstream.as_deref().unwrap_or("*"),
        endpoint = target.endpoint.as_deref().unwrap_or("*"),
        endpoints = affected.len(),
        "circuit breakers changed through the admin API"
    );
    json_response(
        StatusCode::OK,
        &json!({ "result": "ok", "action": action, "mode": mode.as_str(), "affected": affected }),
    )
}

/// `GET /admin/deny-list`.
pub fn deny_list(control: &Control) -> Response<ProxyBody> {
    json_response(StatusCode::OK, &json!(control.state().deny_list.view()))
}

/// `POST /admin/deny-list` with `{"add": [...], "remove": [...]}`.
pub fn change_deny_list(control: &Control, body: &Bytes) -> Response<ProxyBody> {
    let change: DenyListChange = match parse_object(body) {
        Ok(change) => change,
        Err(parse_error) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid JSON body: {parse_error}; expected {{\"add\": [\"ADDRESS or CIDR\", ...], \"remove\": [...]}}"),
            )
        }
    };
    match control
        .state()
        .deny_list
        .update(&change.add, &change.remove)
    {
        Ok(view) => {
            info!(add = ?change.add, remove = ?change.remove, entries = view.effective.len(), "deny list changed through the admin API");
            json_response(StatusCode::OK, &json!(view))
        }
        Err(message) => error(StatusCode::BAD_REQUEST, "bad_request", message),
    }
}

/// Health, limits and retry counters of an upstream, for `GET /admin/upstreams`.
pub fn upstream_details(upstream: &Upstream) -> Value {
    json!({
        "health_known": upstream.health_known(),
        "failing_open": upstream.is_failing_open(),
        "requests_in_flight": upstream.requests_in_flight(),
        "pending_requests": upstream.pending_requests(),
        "retries": upstream.stats.retries.load(Ordering::Relaxed),
        "retry_budget_exhausted": upstream.stats.budget_exhausted.load(Ordering::Relaxed),
    })
}

/// Health and breaker of an endpoint, for `GET /admin/upstreams`.
pub fn endpoint_details(endpoint: &Endpoint) -> Value {
    let breaker = endpoint.breaker.view();
    let open_until = breaker.open_for.map(|left| {
        let at = SystemTime::now() + left;
        let since_epoch = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        valkyrie_proxy::tls::format_utc(since_epoch.as_secs() as i64)
    });
    json!({
        "healthy": endpoint.is_healthy(),
        "active_health": endpoint.active_health.status().as_str(),
        "last_check_error": endpoint.active_health.last_error(),
        "ejected": endpoint.is_ejected(),
        "breaker": {
            "state": breaker.state.as_str(),
            "mode": breaker.forced.as_str(),
            "open_until": open_until,
            "open_remaining_ms": breaker.open_for.map(|left| left.as_millis() as u64),
            "consecutive_failures": breaker.consecutive_failures,
        },
    })
}
