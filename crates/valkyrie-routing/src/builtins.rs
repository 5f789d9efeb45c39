//! Built-in endpoints: `/health` and `/ready` on every listener,
//! `/config/status` and `/admin/*` behind access control, and the metrics
//! listener.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, warn};
use valkyrie_proxy::body::{full, ProxyBody};
use valkyrie_proxy::error::json_response;
use valkyrie_proxy::headers::ClientInfo;
use valkyrie_proxy::state::BoxFuture;
use valkyrie_proxy::ListenerKind;

use crate::service::Control;

/// Largest admin request body read, in bytes.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// The built-in endpoints served ahead of routing.
pub struct Builtins {
    control: Arc<Control>,
}

impl Builtins {
    pub fn new(control: Arc<Control>) -> Builtins {
        Builtins { control }
    }
}

fn is_admin_path(path: &str) -> bool {
    path == "/config/status" || path.starts_with("/admin/")
}

impl valkyrie_proxy::Builtins for Builtins {
    fn claims(&self, request: &Request<Incoming>, listener: ListenerKind) -> bool {
        let path = request.uri().path();
        if path == "/health" || path == "/ready" {
            return true;
        }
        if !is_admin_path(path) {
            return listener == ListenerKind::Admin;
        }
        listener == ListenerKind::Admin || !self.control.has_admin_listener
    }

    fn serve(
        &self,
        request: Request<Incoming>,
        client: ClientInfo,
        _listener: ListenerKind,
    ) -> BoxFuture<Response<ProxyBody>> {
        let control = self.control.clone();
        Box::pin(async move { serve(control, request, client).await })
    }
}

async fn serve(
    control: Arc<Control>,
    request: Request<Incoming>,
    client: ClientInfo,
) -> Response<ProxyBody> {
    let path = request.uri().path().to_string();
    match path.as_str() {
        "/health" => return health(&control),
        "/ready" => return ready(&control),
        _ => {}
    }
    if !is_admin_path(&path) {
        return not_found(&path);
    }
    if let Err(response) = authorize(&control, &request, client) {
        return response;
    }
    let method = request.method().clone();
    let query = request.uri().query().map(str::to_string);
    let limit = if path == "/admin/keys" {
        crate::engine_admin::MAX_KEYS_BODY
    } else {
        MAX_ADMIN_BODY
    };
    let body = match read_body(request, limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    admin(&control, &method, &path, query.as_deref(), &body).await
}

/// `GET /health`: 200 while serving, 503 while draining.
pub fn health(control: &Control) -> Response<ProxyBody> {
    let draining = control.state().is_draining();
    let status = control.status();
    let body = json!({
        "status": if draining { "draining" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": control.started.elapsed().as_secs(),
        "config_version": status.version,
    });
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(code, &body)
}

/// `GET /ready`: 200 once routes and upstreams are loaded, every upstream
/// with active health checks has finished its first round, and every key
/// table kept in Redis was read once; 503 before that and while draining.
fn ready(control: &Control) -> Response<ProxyBody> {
    let snapshot = control.state().snapshot.load();
    let unchecked: Vec<&str> = snapshot
        .upstreams
        .iter()
        .filter(|upstream| !upstream.health_known())
        .map(|upstream| &*upstream.name)
        .collect();
    let key_tables_loading = control.state().key_sync.first_load_pending();
    if control.is_ready() && unchecked.is_empty() && key_tables_loading.is_empty() {
        json_response(
            StatusCode::OK,
            &json!({
                "status": "ready",
                "routes": snapshot.routes.routes().len(),
                "upstreams": snapshot.upstreams.len(),
            }),
        )
    } else {
        let reason = if control.state().is_draining() {
            "draining"
        } else if control.is_ready() && !unchecked.is_empty() {
            "checking_upstream_health"
        } else if control.is_ready() {
            "loading_key_tables"
        } else {
            "starting"
        };
        let mut body = json!({ "status": reason });
        if !unchecked.is_empty() {
            body["upstreams_without_health"] = json!(unchecked);
        }
        if !key_tables_loading.is_empty() {
            body["key_tables_not_loaded"] = json!(key_tables_loading);
        }
        json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
    }
}

fn not_found(path: &str) -> Response<ProxyBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "error": "not_found", "status": 404, "message": format!("no built-in endpoint at {path}") }),
    )
}

/// Lets a request through when its source is in `[admin] allow` or it
/// carries the configured bearer token.
fn authorize(
    control: &Control,
    request: &Request<Incoming>,
    client: ClientInfo,
) -> Result<(), Response<ProxyBody>> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    if let (Some(expected), Some(presented)) = (&control.admin_token, presented) {
        if constant_time_eq(expected.as_bytes(), presented.as_bytes()) {
            return Ok(());
        }
        warn!(client = %client.peer, path = request.uri().path(), "admin request with a wrong bearer token");
        return Err(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "unauthorized", "status": 401, "message": "the bearer token is not valid" }),
        ));
    }
    if control.admin_allow.load().contains(client.peer) {
        return Ok(());
    }
    warn!(client = %client.peer, path = request.uri().path(), "admin request refused");
    if control.admin_token.is_some() {
        return Err(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "unauthorized", "status": 401, "message": "send Authorization: Bearer <token>" }),
        ));
    }
    Err(json_response(
        StatusCode::FORBIDDEN,
        &json!({
            "error": "forbidden",
            "status": 403,
            "message": format!("{} is not in [admin] allow and no admin token is configured", client.peer),
        }),
    ))
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Response<ProxyBody>> {
    let limited = http_body_util::Limited::new(request.into_body(), limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "bad_request", "status": 400, "message": format!("cannot read the request body: {error}") }),
        )),
    }
}

async fn admin(
    control: &Control,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Response<ProxyBody> {
    match (method, path) {
        (&Method::GET, "/config/status") => json_response(StatusCode::OK, &json!(control.status())),
        (&Method::POST, "/admin/config/reload") => {
            reload_response(control.reload("admin API").await)
        }
        (&Method::POST, "/admin/routes/reload") => {
            reload_response(control.reload("admin API: routes").await)
        }
        (&Method::POST, "/admin/config/rollback") => reload_response(control.rollback().await),
        (&Method::GET, "/admin/routes") => routes(control),
        (&Method::GET, "/admin/upstreams") => upstreams(control),
        (&Method::POST, _) if path.starts_with("/admin/circuit-breaker/") => {
            let action = &path["/admin/circuit-breaker/".len()..];
            crate::resilience::circuit_breaker(control, action, body)
        }
        (&Method::GET, "/admin/deny-list") => crate::resilience::deny_list(control),
        (&Method::POST, "/admin/deny-list") => crate::resilience::change_deny_list(control, body),
        (&Method::POST, "/admin/memory/purge") => memory_purge(control).await,
        (&Method::GET, "/admin/keys") => crate::engine_admin::lookup_keys(control, query),
        (&Method::POST, "/admin/keys") => crate::engine_admin::change_keys(control, body).await,
        (&Method::POST, "/admin/cache/warmup") => crate::engine_admin::cache_warmup(control, body),
        (
            _,
            "/config/status"
            | "/admin/config/reload"
            | "/admin/routes/reload"
            | "/admin/config/rollback"
            | "/admin/routes"
            | "/admin/upstreams"
            | "/admin/memory/purge"
            | "/admin/keys"
            | "/admin/cache/warmup"
            | "/admin/deny-list"
            | "/admin/circuit-breaker/enable"
            | "/admin/circuit-breaker/disable"
            | "/admin/circuit-breaker/reset",
        ) => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "method_not_allowed", "status": 405, "message": format!("{method} is not allowed on {path}") }),
        ),
        _ => not_found(path),
    }
}

fn reload_response(outcome: Result<crate::service::ConfigStatus, String>) -> Response<ProxyBody> {
    match outcome {
        Ok(status) => json_response(StatusCode::OK, &json!({ "result": "ok", "status": status })),
        Err(error) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({ "result": "error", "error": error, "message": "the running configuration was kept" }),
        ),
    }
}

/// `POST /admin/memory/purge`: the same as SIGUSR2, with allocator
/// resident bytes before and after.
async fn memory_purge(control: &Control) -> Response<ProxyBody> {
    let report = crate::memory::shed_and_log(control.state().clone(), "admin API").await;
    json_response(StatusCode::OK, &json!({ "result": "ok", "memory": report }))
}

fn routes(control: &Control) -> Response<ProxyBody> {
    let snapshot = control.state().snapshot.load();
    let routes: Vec<_> = snapshot
        .config
        .routes
        .iter()
        .map(|route| {
            json!({
                "name": route.name,
                "host": route.host,
                "path_exact": route.path_exact,
                "path_prefix": route.path_prefix,
                "path_regex": route.path_regex,
                "methods": route.methods,
                "upstream": route.upstream,
                "key_table": route.key_table,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "generation": snapshot.generation, "routes": routes }),
    )
}

fn upstreams(control: &Control) -> Response<ProxyBody> {
    let snapshot = control.state().snapshot.load();
    let upstreams: Vec<_> = snapshot
        .upstreams
        .iter()
        .map(|upstream| {
            let endpoints: Vec<_> = upstream
                .endpoints
                .iter()
                .map(|endpoint| {
                    let stats = &endpoint.pool.stats;
                    let mut entry = json!({
                        "address": &*endpoint.address,
                        "resolved": endpoint.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        "weight": endpoint.weight,
                        "active_requests": endpoint.active_requests.load(Ordering::Relaxed),
                        "pool": {
                            "max_idle": endpoint.pool.max_idle(),
                            "open": stats.open.load(Ordering::Relaxed),
                            "active": stats.active.load(Ordering::Relaxed),
                            "idle": stats.idle.load(Ordering::Relaxed),
                        },
                    });
                    merge(&mut entry, crate::resilience::endpoint_details(endpoint));
                    entry
                })
                .collect();
            let mut entry = json!({
                "name": &*upstream.name,
                "balance": format!("{:?}", upstream.config.balance),
                "protocol": format!("{:?}", upstream.config.protocol),
                "endpoints": endpoints,
            });
            merge(&mut entry, crate::resilience::upstream_details(upstream));
            entry
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "upstreams": upstreams }))
}

/// Copies the fields of the JSON object `extra` into the object `target`.
fn merge(target: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(target), serde_json::Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

/// Serves `/metrics` and `/health` on the metrics listener.
pub fn spawn_metrics_listener(listener: TcpListener, control: Arc<Control>) {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "metrics listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let control = control.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let control = control.clone();
                    async move { Ok::<_, Infallible>(metrics_endpoint(&control, &request)) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, %error, "metrics connection ended with an error");
                }
            });
        }
    });
}

fn metrics_endpoint(control: &Control, request: &Request<Incoming>) -> Response<ProxyBody> {
    match request.uri().path() {
        "/health" => health(control),
        "/metrics" => {
            let mut response = Response::new(full(crate::metrics::render(control)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        path => not_found(path),
    }
}
