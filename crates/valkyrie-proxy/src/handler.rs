//! The per-request proxy logic: built-ins, the deny list, framing checks,
//! routing, limits, upstream selection with breakers and retries,
//! forwarding, upgrades and the final record.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};
use valkyrie_router::{RequestInfo, RouteTarget};

use crate::body::{self, OnFinish, Prefixed, ProxyBody};
use crate::error::{ErrorKind, ProxyError};
use crate::headers::{self, ClientInfo};
use crate::limits::ConcurrencyPermit;
use crate::pool::Conn;
use crate::retry::{ReplaySource, RetryCondition, RetryPermit};
use crate::server::ConnActivity;
use crate::state::{ListenerKind, ProxyState, RequestRecord, Snapshot};
use crate::upstream::{Endpoint, RequestSlot, Selection, Upstream};

/// Context of the connection a request arrived on.
#[derive(Clone)]
pub struct ConnContext {
    pub state: Arc<ProxyState>,
    pub client: ClientInfo,
    /// `client.peer` as an `X-Forwarded-For` value, formatted once per
    /// connection.
    pub peer_value: http::HeaderValue,
    pub listener: ListenerKind,
    pub activity: Arc<ConnActivity>,
}

/// Record fields that only the forwarding step can fill in.
#[derive(Default)]
struct Progress {
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    endpoint: Option<Arc<str>>,
    upstream_time: Option<Duration>,
    /// Proxy time before the request went upstream.
    before_send: Duration,
    attempts: u32,
    error: Option<ErrorKind>,
    /// Limit slots held until the response body ends.
    slots: LimitSlots,
}

/// Slots of the concurrency limit and of the upstream's `max_requests`,
/// released when the record is written at the end of the response body.
#[derive(Default)]
struct LimitSlots {
    _concurrency: Option<ConcurrencyPermit>,
    _upstream: Option<RequestSlot>,
}

/// Handles one request; never fails, since every error becomes a response.
pub async fn handle(
    context: ConnContext,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    context.activity.request_started(request.version());

    // The accept loop closes connections from denied sources; this covers
    // connections accepted before their source was added.
    let denied = context.listener == ListenerKind::DataPlane
        && context.state.deny_list.denies(context.client.peer);
    if let Some(builtins) = context.state.builtins.as_ref().filter(|_| !denied) {
        if builtins.claims(&request, context.listener) {
            let response = builtins
                .serve(request, context.client, context.listener)
                .await;
            let activity = context.activity.clone();
            let (parts, body) = response.into_parts();
            let body = body::boxed(OnFinish::new(body, move |_, _| activity.request_finished()));
            return Ok(Response::from_parts(parts, body));
        }
    }

    let method = request.method().clone();
    let version = request.version();
    let upgrade_requested =
        version == Version::HTTP_11 && headers::is_upgrade_request(request.headers());
    // A `Uri` clone shares its bytes, so the record costs no copy of the path.
    let uri = request.uri().clone();
    let host = request_host(&request).map(str::to_string);
    let request_bytes = Arc::new(AtomicU64::new(0));
    let mut progress = Progress::default();

    let outcome = if denied {
        Err(ProxyError::new(
            ErrorKind::Denied,
            format!("{} is on the deny list", context.client.peer),
        ))
    } else {
        proxy(
            &context,
            request,
            host.as_deref(),
            upgrade_requested,
            &mut progress,
            started,
            &request_bytes,
        )
        .await
    };
    let response = match outcome {
        Ok(response) => response,
        Err(error) => {
            progress.error = Some(error.kind);
            log_error(&error, &progress, &method, uri.path());
            error.to_response()
        }
    };

    let status = response.status().as_u16();
    let after_head = Instant::now();
    let (mut parts, body) = response.into_parts();
    if upgrade_requested && parts.status != StatusCode::SWITCHING_PROTOCOLS {
        // The raw-byte framing check stops at an upgrade request's head,
        // because the bytes after it may belong to the new protocol. When
        // the upgrade is refused, closing the connection keeps unchecked
        // HTTP/1.1 bytes from following on it.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let state = context.state.clone();
    let activity = context.activity.clone();
    let client = context.client.peer;
    let finish = move |completed: bool, response_bytes: u64| {
        activity.request_finished();
        let total = started.elapsed();
        let router_added = progress.before_send
            + match progress.upstream_time {
                Some(_) => after_head.saturating_duration_since(
                    started + progress.before_send + progress.upstream_time.unwrap_or_default(),
                ),
                None => Duration::ZERO,
            };
        let record = RequestRecord {
            method,
            uri,
            host,
            client,
            version,
            route: progress.route,
            upstream: progress.upstream,
            endpoint: progress.endpoint,
            status,
            error: progress.error,
            request_bytes: request_bytes.load(Ordering::Relaxed),
            response_bytes,
            total,
            upstream_time: progress.upstream_time,
            router_added,
            attempts: progress.attempts,
            completed,
        };
        for observer in &state.observers {
            observer.on_request(&record);
        }
        if state.access_log.load(Ordering::Relaxed) {
            access_log(&record);
        }
    };
    Ok(Response::from_parts(
        parts,
        body::boxed(OnFinish::new(body, finish)),
    ))
}

fn log_error(error: &ProxyError, progress: &Progress, method: &Method, path: &str) {
    let route = progress.route.as_deref().unwrap_or("-");
    match error.kind {
        ErrorKind::NoRoute
        | ErrorKind::BadRequest
        | ErrorKind::PayloadTooLarge
        | ErrorKind::RateLimited
        | ErrorKind::Denied => {
            debug!(%method, path, kind = error.kind.as_str(), error = %error.message, "request rejected");
        }
        _ => warn!(
            %method,
            path,
            route,
            upstream = error.upstream.as_deref().unwrap_or("-"),
            endpoint = error.endpoint.as_deref().unwrap_or("-"),
            kind = error.kind.as_str(),
            error = %error.message,
            "request failed"
        ),
    }
}

fn access_log(record: &RequestRecord) {
    info!(
        target: "access",
        client = %record.client,
        method = %record.method,
        host = record.host.as_deref().unwrap_or("-"),
        path = record.uri.path(),
        version = ?record.version,
        status = record.status,
        route = record.route.as_deref().unwrap_or("-"),
        upstream = record.upstream.as_deref().unwrap_or("-"),
        endpoint = record.endpoint.as_deref().unwrap_or("-"),
        request_bytes = record.request_bytes,
        response_bytes = record.response_bytes,
        duration_us = record.total.as_micros() as u64,
        upstream_us = record.upstream_time.map_or(0, |d| d.as_micros() as u64),
        router_added_us = record.router_added.as_micros() as u64,
        attempts = record.attempts,
        completed = record.completed,
        error = record.error.map_or("-", ErrorKind::as_str),
    );
}

/// Returns the request's authority: the URI's for HTTP/2 and absolute-form
/// requests, otherwise the `Host` header.
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
        })
}

async fn proxy(
    context: &ConnContext,
    mut request: Request<Incoming>,
    host: Option<&str>,
    upgrade: bool,
    progress: &mut Progress,
    started: Instant,
    request_bytes: &Arc<AtomicU64>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if context.state.is_draining() {
        return Err(ProxyError::new(
            ErrorKind::ShuttingDown,
            "the server is shutting down",
        ));
    }
    check_framing(&request)?;
    check_authority(&request)?;

    // Held until the request ends, so it finishes on this snapshot.
    let snapshot = crate::engine::pin(&context.state);

    let route_match = {
        let info = RequestInfo {
            host,
            path: request.uri().path(),
            query: request.uri().query(),
            method: request.method(),
            headers: request.headers(),
        };
        let mut tally = valkyrie_lockfree::FitTally::default();
        let state = &context.state;
        let found = state
            .engine
            .route(state, &snapshot, &info, started, &mut tally);
        let matched = found.map(|found| {
            let target = match found.target {
                RouteTarget::Upstream(index) => Ok((index, None)),
                RouteTarget::KeyTable(table) => crate::keys::resolve(
                    &snapshot,
                    table,
                    &found.path,
                    info.query,
                    info.headers,
                    &mut tally,
                ),
            };
            (
                found.route.name.clone(),
                target,
                found.upstream_path().into_owned(),
                RouteSettings {
                    timeout: found.route.timeout().map(|timeout| timeout.0),
                    retry_non_idempotent: found.route.retry_non_idempotent,
                },
            )
        });
        crate::engine::count_lookups(state, tally);
        matched
    };
    let Some((route_name, target, upstream_path, route)) = route_match else {
        return Err(ProxyError::new(
            ErrorKind::NoRoute,
            format!(
                "no route matches {} {}{}",
                request.method(),
                host.unwrap_or(""),
                request.uri().path()
            ),
        ));
    };
    progress.route = Some(route_name.clone());
    context
        .state
        .rate_limiter
        .check(
            &snapshot,
            &route_name,
            request.headers(),
            context.client.peer,
        )
        .await?;
    let (upstream_index, pinned_endpoint) = target?;
    let upstream = snapshot.upstreams[upstream_index].clone();
    progress.upstream = Some(upstream.name.clone());

    let queue_timeout = snapshot.config.routing.queue_timeout.0;
    let Some(permit) = context.state.concurrency.acquire(queue_timeout).await else {
        return Err(ProxyError::new(
            ErrorKind::Overloaded,
            format!(
                "{} requests are in progress, the max_concurrent_requests limit, and no slot freed up within queue_timeout ({queue_timeout:?})",
                context.state.concurrency.limit()
            ),
        ));
    };
    progress.slots._concurrency = Some(permit);
    progress.slots._upstream = Some(upstream.start_request()?);

    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, incoming) = request.into_parts();
    let body = read_request_body(incoming, &parts.headers, &snapshot, request_bytes).await?;

    prepare_upstream_head(&mut parts, &snapshot, context, host, upgrade);
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{upstream_path}?{query}"),
        None => upstream_path,
    };
    let hash_key = hash_key(&upstream, &parts, context.client, &path_and_query);

    let forward = Forward {
        upstream: &upstream,
        parts: &parts,
        source: replay_source(body, &parts, &upstream, &route),
        path_and_query: &path_and_query,
        upgrade,
        hash_key: hash_key.as_deref(),
        pinned_endpoint,
        resend_after_sending: is_idempotent(&parts.method) || route.retry_non_idempotent,
        deadline_budget: route.timeout.unwrap_or(upstream.config.request_timeout.0),
    };
    let (upstreamed, endpoint) = forward.run(progress, started).await?;
    finish_response(upstreamed, &snapshot, client_upgrade, &endpoint, &upstream)
}

/// The parts of the matched route that forwarding needs.
struct RouteSettings {
    timeout: Option<Duration>,
    retry_non_idempotent: bool,
}

/// Wraps the request body so that tries after the first can send it again.
/// Bodies that may not be resent once sent, and bodies declared larger
/// than `max_replay_body`, are not kept at all.
fn replay_source(
    body: ProxyBody,
    parts: &Parts,
    upstream: &Upstream,
    route: &RouteSettings,
) -> ReplaySource {
    let policy = &upstream.retry_policy;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let resendable = is_idempotent(&parts.method) || route.retry_non_idempotent;
    let keep = if !resendable
        || policy.max_retries == 0
        || declared.is_some_and(|length| length > policy.max_replay_body)
    {
        0
    } else {
        policy.max_replay_body
    };
    ReplaySource::new(body, keep)
}

/// One request on its way to an upstream: endpoint selection through the
/// breakers, tries with their timeouts, and retries within the policy and
/// the budget.
struct Forward<'a> {
    upstream: &'a Arc<Upstream>,
    parts: &'a Parts,
    source: ReplaySource,
    path_and_query: &'a str,
    upgrade: bool,
    hash_key: Option<&'a [u8]>,
    /// The endpoint a key-table entry names; every try goes to it.
    pinned_endpoint: Option<usize>,
    /// True when a try that sent part of the request may be followed by
    /// another: the method is idempotent or the route allows it.
    resend_after_sending: bool,
    /// Time all tries together may wait for a response head.
    deadline_budget: Duration,
}

/// A response that allowed a retry, kept in case no retry can go out.
struct RetryableResponse {
    upstreamed: Upstreamed,
    endpoint: Arc<Endpoint>,
}

impl Forward<'_> {
    async fn run(
        &self,
        progress: &mut Progress,
        started: Instant,
    ) -> Result<(Upstreamed, Arc<Endpoint>), ProxyError> {
        let upstream = self.upstream;
        let policy = &upstream.retry_policy;
        let mut tried: Vec<usize> = Vec::with_capacity(2);
        let mut last_error: Option<ProxyError> = None;
        let mut retryable_response: Option<RetryableResponse> = None;
        let mut retry: Option<RetryPermit> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            let selection = match self.pinned_endpoint {
                Some(index) => select_pinned(upstream, index),
                None => upstream.select(self.hash_key, &tried),
            };
            let (index, ticket) = match selection {
                Selection::Endpoint(index, ticket) => (index, ticket),
                Selection::CircuitOpen if retryable_response.is_none() && last_error.is_none() => {
                    return Err(ProxyError::new(
                        ErrorKind::CircuitOpen,
                        "the circuit breaker of every endpoint of the upstream is open",
                    )
                    .upstream(&upstream.name));
                }
                Selection::CircuitOpen | Selection::Empty => break,
            };
            if !tried.is_empty() {
                upstream.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            // A response kept for a retry is dropped once the retry goes out.
            retryable_response = None;
            tried.push(index);
            progress.attempts += 1;
            let endpoint = upstream.endpoints[index].clone();
            progress.endpoint = Some(endpoint.address.clone());

            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.deadline_budget);
            let remaining = deadline.saturating_duration_since(now);
            let try_timeout = policy
                .per_try_timeout
                .map_or(remaining, |limit| limit.min(remaining));
            let result = self.send(&endpoint, try_timeout, progress, started).await;
            // The retry's place in the budget ends with its try.
            drop(retry.take());

            let condition = match result {
                Ok(upstreamed) => {
                    let status = upstreamed.response.status();
                    let failed = status.is_server_error();
                    upstream.record_outcome(index, failed);
                    endpoint.breaker.record(ticket, !failed);
                    let retryable = policy.retries_status(status.as_u16())
                        && self.resend_after_sending
                        && self.source.is_replayable();
                    if !retryable || tried.len() > policy.max_retries as usize {
                        return Ok((upstreamed, endpoint));
                    }
                    retryable_response = Some(RetryableResponse {
                        upstreamed,
                        endpoint,
                    });
                    RetryCondition::Status(status.as_u16())
                }
                Err(error) => {
                    let error = error.upstream(&upstream.name).endpoint(&endpoint.address);
                    let condition = retry_condition(&error);
                    match condition {
                        Some(_) => {
                            upstream.record_outcome(index, true);
                            endpoint.breaker.record(ticket, false);
                        }
                        // Not the endpoint's failure: the probe slot, if
                        // any, goes back when the ticket drops.
                        None => drop(ticket),
                    }
                    let allowed = condition.is_some_and(|condition| {
                        policy.allows(condition)
                            && (error.nothing_sent || self.resend_after_sending)
                            && self.source.is_replayable()
                            && tried.len() <= policy.max_retries as usize
                    });
                    let Some(condition) = condition.filter(|_| allowed) else {
                        return Err(error);
                    };
                    last_error = Some(error);
                    condition
                }
            };
            if Instant::now() >= deadline {
                break;
            }
            match upstream.try_retry() {
                Some(permit) => {
                    debug!(upstream = %upstream.name, ?condition, tries = tried.len(), "retrying the request");
                    retry = Some(permit);
                }
                None => {
                    debug!(upstream = %upstream.name, ?condition, "retry budget exhausted; not retrying");
                    break;
                }
            }
        }
        if let Some(kept) = retryable_response {
            return Ok((kept.upstreamed, kept.endpoint));
        }
        Err(last_error.unwrap_or_else(|| {
            ProxyError::new(
                ErrorKind::NoHealthyEndpoint,
                "the upstream has no endpoint to send to",
            )
            .upstream(&upstream.name)
        }))
    }

    /// Sends one try to `endpoint`. On a reused HTTP/1.1 connection that the
    /// upstream had already closed, sends once more on a new connection when
    /// that is safe: nothing of the request was written, or the method is
    /// idempotent and the body can be sent again. That resend is not a retry.
    async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        timeout: Duration,
        progress: &mut Progress,
        started: Instant,
    ) -> Result<Upstreamed, ProxyError> {
        let addresses = endpoint.addresses();
        let pool = &endpoint.pool;
        let checkout = {
            let _pending = self.upstream.start_pending()?;
            if self.upgrade {
                if pool.is_http2() {
                    return Err(ProxyError::new(
                        ErrorKind::UpstreamProtocol,
                        "protocol upgrades need an HTTP/1.1 upstream; this upstream speaks HTTP/2",
                    ));
                }
                Box::pin(pool.connect(&addresses)).await?
            } else {
                pool.checkout(&addresses).await?
            }
        };
        let mut conn = checkout.conn;
        let mut reused = checkout.reused;
        let idempotent = is_idempotent(&self.parts.method);

        loop {
            let request = build_request(
                self.parts,
                self.source.attempt(),
                self.path_and_query,
                pool.is_http2(),
                pool.is_tls(),
            );
            progress.before_send = started.elapsed();
            let sent_at = Instant::now();
            let outcome = {
                let _active = ActiveRequest::start(endpoint);
                match &mut conn {
                    Conn::Http1(sender) => {
                        tokio::time::timeout(timeout, sender.try_send_request(request)).await
                    }
                    Conn::Http2(sender) => {
                        tokio::time::timeout(timeout, sender.try_send_request(request)).await
                    }
                }
            };

            let error = match outcome {
                Ok(Ok(response)) => {
                    progress.upstream_time = Some(sent_at.elapsed());
                    return Ok(attach_pool_return(response, conn, endpoint));
                }
                Ok(Err(error)) => error,
                Err(_) => {
                    // Dropping the sender with the request in flight closes
                    // the connection, so a slow endpoint keeps no connection.
                    discard(&conn, endpoint);
                    return Err(ProxyError::new(
                        ErrorKind::ResponseTimeout,
                        format!("no response head within {timeout:?}"),
                    ));
                }
            };
            discard(&conn, endpoint);
            let (error, unsent) = split_send_error(error);
            let nothing_sent = unsent.is_some();
            drop(unsent);
            if reused && (nothing_sent || (idempotent && self.source.is_replayable())) {
                debug!(upstream = %self.upstream.name, endpoint = %endpoint.address, %error, "pooled connection was closed by the upstream; retrying on a new connection");
                let fresh = {
                    let _pending = self.upstream.start_pending()?;
                    Box::pin(pool.connect(&addresses)).await?
                };
                conn = fresh.conn;
                reused = false;
                continue;
            }
            let mut failure = ProxyError::new(
                ErrorKind::UpstreamReset,
                format!("upstream connection failed before the response head: {error}"),
            );
            if nothing_sent {
                failure = failure.nothing_sent();
            }
            return Err(failure);
        }
    }
}

/// Selects the endpoint a key-table entry pins, through its breaker. A
/// retry may go to it again; it never goes to another endpoint.
fn select_pinned(upstream: &Upstream, index: usize) -> Selection {
    let Some(endpoint) = upstream.endpoints.get(index) else {
        return Selection::Empty;
    };
    match endpoint.breaker.try_admit() {
        Some(ticket) => Selection::Endpoint(index, ticket),
        None => Selection::CircuitOpen,
    }
}

/// Returns the retry condition a failed try meets, or `None` when the
/// failure is not the endpoint's (such as a full upstream).
fn retry_condition(error: &ProxyError) -> Option<RetryCondition> {
    match error.kind {
        ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => {
            Some(RetryCondition::ConnectFailure)
        }
        // A failed TLS or HTTP/2 handshake sent nothing of the request.
        ErrorKind::UpstreamProtocol if error.nothing_sent => Some(RetryCondition::ConnectFailure),
        ErrorKind::UpstreamReset => Some(RetryCondition::Reset),
        ErrorKind::ResponseTimeout => Some(RetryCondition::Status(504)),
        _ => None,
    }
}

/// Counts a request in flight to an endpoint, for least-request balancing,
/// until dropped.
struct ActiveRequest<'a>(&'a Endpoint);

impl<'a> ActiveRequest<'a> {
    fn start(endpoint: &'a Endpoint) -> ActiveRequest<'a> {
        endpoint.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(endpoint)
    }
}

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Rejects what RFC 9112 says a server must not process: a request with both
/// `Content-Length` and `Transfer-Encoding`, and conflicting lengths.
fn check_framing<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if request.version() >= Version::HTTP_2 {
        return Ok(());
    }
    let headers = request.headers();
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "the request has both Content-Length and Transfer-Encoding; send only one",
        ));
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.any(|other| other != first) {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                "the request has conflicting Content-Length values",
            ));
        }
    }
    Ok(())
}

/// Rejects an authority with userinfo (`user@host`), in the URI or in
/// `Host`. HTTP URIs may not carry userinfo (RFC 9110, section 4.2.4), and
/// routing on the host part alone would hide credentials in access logs.
fn check_authority<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let in_uri = request
        .uri()
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'));
    let in_host = request
        .headers()
        .get(header::HOST)
        .is_some_and(|value| value.as_bytes().contains(&b'@'));
    if in_uri || in_host {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "the request's authority contains userinfo (`user@`), which HTTP does not allow; send the host without it",
        ));
    }
    Ok(())
}

/// Applies the body limit, and for chunked bodies reads the first frame
/// before anything goes upstream, so a malformed first chunk gets a 400
/// response instead of reaching an upstream in part.
/// NOTE: a malformed later chunk is found while the body streams, so the
/// upstream sees a request cut short (its connection closed) instead.
async fn read_request_body(
    incoming: Incoming,
    headers: &HeaderMap,
    snapshot: &Snapshot,
    request_bytes: &Arc<AtomicU64>,
) -> Result<ProxyBody, ProxyError> {
    let limit = snapshot.max_request_body_bytes;
    if limit > 0 {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(ProxyError::new(
                ErrorKind::PayloadTooLarge,
                format!("the request body is larger than the limit of {limit} bytes"),
            ));
        }
    }
    let counter = request_bytes.clone();
    let counted = CountingBody::new(incoming, counter, limit);
    if incoming_is_chunked(headers) {
        let mut counted = counted;
        let first = match counted.frame().await {
            None => None,
            Some(Ok(frame)) => Some(frame),
            Some(Err(error)) => {
                return Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("invalid chunked request body: {error}"),
                ))
            }
        };
        return Ok(body::boxed(Prefixed::new(first, counted)));
    }
    Ok(body::boxed(counted))
}

fn incoming_is_chunked(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
}

/// Rewrites the request head for the upstream: hop-by-hop headers out,
/// forwarding headers in, `Expect` handled here.
fn prepare_upstream_head(
    parts: &mut Parts,
    snapshot: &Snapshot,
    context: &ConnContext,
    host: Option<&str>,
    upgrade: bool,
) {
    let upgrade_protocol = if upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    headers::remove_hop_by_hop(&mut parts.headers);
    // The proxy sends `100 Continue` itself when it starts reading the body.
    parts.headers.remove(header::EXPECT);
    headers::add_forwarding(
        &mut parts.headers,
        context.client,
        &context.peer_value,
        host,
        &snapshot.trusted_proxies,
        &snapshot.via,
    );
    if let Some(protocol) = upgrade_protocol {
        parts.headers.insert(header::UPGRADE, protocol);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if parts.headers.get(header::HOST).is_none() {
        if let Some(value) = host.and_then(|host| HeaderValue::from_str(host).ok()) {
            parts.headers.insert(header::HOST, value);
        }
    }
}

fn hash_key(upstream: &Upstream, parts: &Parts, client: ClientInfo, path: &str) -> Option<Vec<u8>> {
    if upstream.config.balance != valkyrie_config::BalanceStrategy::ConsistentHash {
        return None;
    }
    let key = upstream.config.hash_key.as_deref().unwrap_or("client_ip");
    match key {
        "client_ip" => Some(client.peer.to_string().into_bytes()),
        "path" => Some(path.as_bytes().to_vec()),
        other => {
            let name = other.strip_prefix("header:").unwrap_or(other);
            parts
                .headers
                .get(name)
                .map(|value| value.as_bytes().to_vec())
        }
    }
}

/// Builds the upstream request from the shared head, reusing the head when
/// this is the last use and cloning it when a retry may need it again.
fn build_request(
    parts: &Parts,
    body: ProxyBody,
    path_and_query: &str,
    http2: bool,
    tls: bool,
) -> Request<ProxyBody> {
    let mut builder = Request::builder().method(parts.method.clone());
    let unchanged = parts.uri.scheme().is_none()
        && parts
            .uri
            .path_and_query()
            .is_some_and(|original| original.as_str() == path_and_query);
    let uri = if http2 {
        let authority = parts
            .headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("localhost");
        let scheme = if tls { "https" } else { "http" };
        parse_uri(&format!("{scheme}://{authority}{path_and_query}"))
    } else if unchanged {
        // An origin-form target forwarded as is: share it instead of
        // parsing a copy.
        parts.uri.clone()
    } else {
        parse_uri(path_and_query)
    };
    builder = builder.uri(uri);
    builder = builder.version(if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    });
    let mut request = builder
        .body(body)
        .expect("method, URI and version are valid");
    *request.headers_mut() = parts.headers.clone();
    if http2 {
        request.headers_mut().remove(header::HOST);
    }
    request
}

fn parse_uri(text: &str) -> Uri {
    text.parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

fn split_send_error(
    error: TrySendError<Request<ProxyBody>>,
) -> (hyper::Error, Option<Request<ProxyBody>>) {
    let mut error = error;
    let unsent = error.take_message();
    (error.into_error(), unsent)
}

fn discard(conn: &Conn, endpoint: &Endpoint) {
    if matches!(conn, Conn::Http1(_)) {
        endpoint.pool.discard();
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A response from the upstream, boxed, with the upstream side of a
/// switched protocol when the upstream accepted an upgrade.
struct Upstreamed {
    response: Response<ProxyBody>,
    upgraded: Option<hyper::upgrade::OnUpgrade>,
}

/// Returns an HTTP/1.1 connection to its pool when the response body ends
/// cleanly; a body cut short or a switched protocol keeps it out.
fn attach_pool_return(
    mut response: Response<Incoming>,
    conn: Conn,
    endpoint: &Arc<Endpoint>,
) -> Upstreamed {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if matches!(conn, Conn::Http1(_)) {
            endpoint.pool.discard();
        }
        let upgraded = Some(hyper::upgrade::on(&mut response));
        return Upstreamed {
            response: response.map(body::boxed),
            upgraded,
        };
    }
    let response = match conn {
        Conn::Http1(sender) => {
            let endpoint = endpoint.clone();
            let mut sender = Some(sender);
            response.map(|incoming| {
                body::boxed(OnFinish::new(incoming, move |clean, _| {
                    let Some(sender) = sender.take() else { return };
                    if clean {
                        endpoint.pool.release(sender);
                    } else {
                        endpoint.pool.discard();
                    }
                }))
            })
        }
        Conn::Http2(_) => response.map(body::boxed),
    };
    Upstreamed {
        response,
        upgraded: None,
    }
}

/// Rewrites the upstream's response head for the client and, for a switched
/// protocol, joins the two upgraded connections in a tunnel.
fn finish_response(
    upstreamed: Upstreamed,
    snapshot: &Snapshot,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    endpoint: &Endpoint,
    upstream: &Upstream,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Upstreamed {
        mut response,
        upgraded,
    } = upstreamed;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upgrade_headers = switching.then(|| {
        (
            response.headers().get(header::UPGRADE).cloned(),
            response.headers().get(header::CONNECTION).cloned(),
        )
    });
    headers::remove_hop_by_hop(response.headers_mut());
    response
        .headers_mut()
        .append(header::VIA, snapshot.via.clone());

    if let (Some((upgrade, connection)), Some(upstream_side), Some(client_side)) =
        (upgrade_headers, upgraded, client_upgrade)
    {
        if let Some(upgrade) = upgrade {
            response.headers_mut().insert(header::UPGRADE, upgrade);
        }
        response.headers_mut().insert(
            header::CONNECTION,
            connection.unwrap_or(HeaderValue::from_static("upgrade")),
        );
        spawn_tunnel(
            client_side,
            upstream_side,
            upstream.name.clone(),
            endpoint.address.clone(),
        );
    }
    Ok(response)
}

/// Copies bytes both ways between the client and the upstream once both
/// sides have switched protocols, until either side closes.
fn spawn_tunnel(
    client_side: hyper::upgrade::OnUpgrade,
    upstream_side: hyper::upgrade::OnUpgrade,
    upstream: Arc<str>,
    endpoint: Arc<str>,
) {
    let tunnels = crate::server::tunnel_guard();
    tokio::spawn(async move {
        let _tunnel = tunnels;
        let (client, upstream_io) = match tokio::try_join!(client_side, upstream_side) {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%upstream, %endpoint, %error, "protocol upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream_io = TokioIo::new(upstream_io);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream_io).await {
            Ok((sent, received)) => {
                debug!(%upstream, %endpoint, sent, received, "upgraded connection closed");
            }
            Err(error) => {
                debug!(%upstream, %endpoint, %error, "upgraded connection ended with an error");
            }
        }
    });
}

pin_project_lite::pin_project! {
    /// Counts request body bytes and fails the stream once it passes the
    /// body size limit (0 means no limit).
    struct CountingBody<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
        limit: u64,
    }
}

impl<B> CountingBody<B> {
    fn new(inner: B, counter: Arc<AtomicU64>, limit: u64) -> Self {
        CountingBody {
            inner,
            counter,
            limit,
        }
    }
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<body::BoxError>,
{
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        let frame = match polled {
            None => return std::task::Poll::Ready(None),
            Some(Err(error)) => return std::task::Poll::Ready(Some(Err(error.into()))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let total =
                this.counter.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
            if *this.limit > 0 && total > *this.limit {
                return std::task::Poll::Ready(Some(Err(format!(
                    "request body exceeds the limit of {} bytes",
                    this.limit
                )
                .into())));
            }
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
