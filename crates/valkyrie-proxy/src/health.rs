//! Active health checks: a task per upstream with `[upstreams.health_check]`
//! checks every endpoint each `interval`, by HTTP request or TCP connect,
//! and moves endpoints out of and back into the balancer by thresholds.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Uri, Version};
use tracing::{info, warn};
use valkyrie_config::{HealthCheckConfig, HealthCheckKind};

use crate::pool::Conn;
use crate::upstream::{Endpoint, Upstream};

/// The active-check verdict on an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthStatus {
    /// Not checked yet, or the upstream has no active checks.
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl HealthStatus {
    fn from_u8(value: u8) -> HealthStatus {
        match value {
            1 => HealthStatus::Healthy,
            2 => HealthStatus::Unhealthy,
            _ => HealthStatus::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// Active-check state of one endpoint. Only the upstream's check task
/// writes it.
#[derive(Default)]
pub struct ActiveHealth {
    status: AtomicU8,
    passes: AtomicU32,
    failures: AtomicU32,
    last_error: Mutex<Option<String>>,
}

impl ActiveHealth {
    pub fn status(&self) -> HealthStatus {
        HealthStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Returns the error of the last failed check, cleared by a passed one.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// Records one check result and returns the new status when it changed.
    /// The first result decides at once. After that, it takes
    /// `healthy_threshold` passes in a row to become healthy and
    /// `unhealthy_threshold` failures in a row to become unhealthy.
    pub fn record(
        &self,
        result: Result<(), String>,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<HealthStatus> {
        let current = self.status();
        let next = match result {
            Ok(()) => {
                self.failures.store(0, Ordering::Relaxed);
                *self.last_error.lock().unwrap() = None;
                let passes = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
                let enough = current == HealthStatus::Unknown || passes >= healthy_threshold;
                (current != HealthStatus::Healthy && enough).then_some(HealthStatus::Healthy)
            }
            Err(error) => {
                self.passes.store(0, Ordering::Relaxed);
                *self.last_error.lock().unwrap() = Some(error);
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let enough = current == HealthStatus::Unknown || failures >= unhealthy_threshold;
                (current != HealthStatus::Unhealthy && enough).then_some(HealthStatus::Unhealthy)
            }
        };
        if let Some(status) = next {
            self.status.store(status as u8, Ordering::Relaxed);
        }
        next
    }

    /// Takes over the verdict of the endpoint this one replaces on reload.
    pub(crate) fn inherit(&self, previous: &ActiveHealth) {
        self.status
            .store(previous.status.load(Ordering::Relaxed), Ordering::Relaxed);
        self.passes
            .store(previous.passes.load(Ordering::Relaxed), Ordering::Relaxed);
        self.failures
            .store(previous.failures.load(Ordering::Relaxed), Ordering::Relaxed);
        *self.last_error.lock().unwrap() = previous.last_error();
    }
}

/// Starts the check task of `upstream` when it has `[upstreams.health_check]`.
/// The first round starts at once; the task ends when the upstream leaves
/// every snapshot.
pub(crate) fn spawn(upstream: &Arc<Upstream>) {
    let Some(config) = upstream.config.health_check.clone() else {
        return;
    };
    let weak = Arc::downgrade(upstream);
    let interval = config.interval.0.max(Duration::from_millis(10));
    tokio::spawn(async move {
        loop {
            let Some(upstream) = weak.upgrade() else {
                break;
            };
            run_round(&upstream, &config).await;
            drop(upstream);
            tokio::time::sleep(interval).await;
        }
    });
}

/// Checks every endpoint once, concurrently, and applies the results.
async fn run_round(upstream: &Upstream, config: &HealthCheckConfig) {
    let checks = upstream
        .endpoints
        .iter()
        .map(|endpoint| check_with_timeout(endpoint, config));
    let results = futures_util::future::join_all(checks).await;
    for (endpoint, result) in upstream.endpoints.iter().zip(results) {
        let error = result.as_ref().err().cloned();
        let change = endpoint.active_health.record(
            result,
            config.healthy_threshold.max(1),
            config.unhealthy_threshold.max(1),
        );
        match (change, error) {
            (Some(HealthStatus::Unhealthy), error) => warn!(
                upstream = %upstream.name,
                endpoint = %endpoint.address,
                error = error.as_deref().unwrap_or("-"),
                "active health check failed; endpoint out of rotation"
            ),
            (Some(HealthStatus::Healthy), _) => info!(
                upstream = %upstream.name,
                endpoint = %endpoint.address,
                "active health check passed; endpoint in rotation"
            ),
            _ => {}
        }
    }
    upstream.finish_health_round();
}

async fn check_with_timeout(endpoint: &Endpoint, config: &HealthCheckConfig) -> Result<(), String> {
    let timeout = config.timeout.0;
    match tokio::time::timeout(timeout, check(endpoint, config)).await {
        Ok(result) => result,
        Err(_) => Err(format!("the check timed out after {timeout:?}")),
    }
}

async fn check(endpoint: &Endpoint, config: &HealthCheckConfig) -> Result<(), String> {
    let addresses = endpoint.addresses();
    match config.kind {
        HealthCheckKind::Tcp => {
            let Some(address) = addresses.first() else {
                return Err("the endpoint resolved to no address".to_string());
            };
            tokio::net::TcpStream::connect(address)
                .await
                .map(drop)
                .map_err(|error| format!("connect to {address} failed: {error}"))
        }
        HealthCheckKind::Http => http_check(endpoint, &addresses, config).await,
    }
}

/// Sends `GET path` on a connection of its own (HTTP/1.1) or on the shared
/// connection (HTTP/2) and compares the status with `expected_status`.
async fn http_check(
    endpoint: &Endpoint,
    addresses: &[std::net::SocketAddr],
    config: &HealthCheckConfig,
) -> Result<(), String> {
    let pool = &endpoint.pool;
    let checkout = if pool.is_http2() {
        pool.checkout(addresses).await
    } else {
        pool.connect(addresses).await
    }
    .map_err(|error| error.message)?;
    let request = check_request(endpoint, config, pool.is_http2(), pool.is_tls());
    let response = match checkout.conn {
        Conn::Http1(mut sender) => {
            // This connection never joins the idle stack: it closes when the
            // sender and the response are dropped.
            pool.discard();
            sender.send_request(request).await
        }
        Conn::Http2(mut sender) => sender.send_request(request).await,
    }
    .map_err(|error| format!("the check request failed: {error}"))?;
    let status = response.status().as_u16();
    if status == config.expected_status {
        Ok(())
    } else {
        Err(format!(
            "GET {} answered {status}, expected {}",
            config.path, config.expected_status
        ))
    }
}

fn check_request(
    endpoint: &Endpoint,
    config: &HealthCheckConfig,
    http2: bool,
    tls: bool,
) -> Request<crate::body::ProxyBody> {
    let scheme = if tls { "https" } else { "http" };
    let uri = if http2 {
        format!("{scheme}://{}{}", endpoint.address, config.path)
    } else {
        config.path.clone()
    };
    let mut request = Request::new(crate::body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    *request.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let headers = request.headers_mut();
    if !http2 {
        if let Ok(host) = HeaderValue::from_str(&endpoint.address) {
            headers.insert(header::HOST, host);
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("valkyrie-health-check"),
    );
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let health = ActiveHealth::default();
        assert_eq!(health.status(), HealthStatus::Unknown);
        assert_eq!(health.record(Ok(()), 2, 3), Some(HealthStatus::Healthy));
        assert_eq!(health.record(Err("down".into()), 2, 3), None);
        assert_eq!(health.record(Err("down".into()), 2, 3), None);
        assert_eq!(
            health.record(Err("down".into()), 2, 3),
            Some(HealthStatus::Unhealthy)
        );
        assert_eq!(health.last_error().as_deref(), Some("down"));
        assert_eq!(health.record(Ok(()), 2, 3), None);
        assert_eq!(health.record(Ok(()), 2, 3), Some(HealthStatus::Healthy));
        assert_eq!(health.last_error(), None);
    }

    #[test]
    fn failure_streak_resets_on_pass() {
        let health = ActiveHealth::default();
        health.record(Ok(()), 1, 2);
        health.record(Err("down".into()), 1, 2);
        health.record(Ok(()), 1, 2);
        assert_eq!(health.record(Err("down".into()), 1, 2), None);
        assert_eq!(health.status(), HealthStatus::Healthy);
    }

    #[test]
    fn unknown_endpoint_fails_at_once() {
        let health = ActiveHealth::default();
        assert_eq!(
            health.record(Err("refused".into()), 2, 3),
            Some(HealthStatus::Unhealthy)
        );
    }
}
