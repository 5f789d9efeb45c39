//! The one proxy error type and its mapping to the status and JSON body
//! returned to the client.

use std::fmt;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// The side of the proxy a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

/// The kind of failure, coarse enough to label a metric with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request was malformed or violated a limit.
    BadRequest,
    /// The request body was larger than allowed.
    PayloadTooLarge,
    /// No route matched the request.
    NoRoute,
    /// The route's upstream had no endpoint that could take the request.
    NoHealthyEndpoint,
    /// A TCP connection to the endpoint could not be opened.
    ConnectFailed,
    /// Connecting to the endpoint took longer than `connect_timeout`.
    ConnectTimeout,
    /// The endpoint did not send a response head within the request timeout.
    ResponseTimeout,
    /// The upstream connection failed while the request or response head was in flight.
    UpstreamReset,
    /// The upstream sent something that is not valid HTTP.
    UpstreamProtocol,
    /// Too many requests at once; the client should retry later.
    Overloaded,
    /// Every endpoint the request could go to has an open circuit breaker.
    CircuitOpen,
    /// The upstream is at its `max_requests` or `max_pending_requests`.
    UpstreamOverloaded,
    /// The client's address is on the deny list.
    Denied,
    /// The client exceeded a rate limit; `Retry-After` gives the time to wait.
    RateLimited,
    /// The server is shutting down.
    ShuttingDown,
}

impl ErrorKind {
    /// Returns the label used for this kind in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ResponseTimeout => "response_timeout",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamProtocol => "upstream_protocol_error",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::UpstreamOverloaded => "upstream_overloaded",
            ErrorKind::Denied => "denied",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ShuttingDown => "shutting_down",
        }
    }

    /// Returns every kind, for pre-registering metric labels.
    pub fn all() -> &'static [ErrorKind] {
        &[
            ErrorKind::BadRequest,
            ErrorKind::PayloadTooLarge,
            ErrorKind::NoRoute,
            ErrorKind::NoHealthyEndpoint,
            ErrorKind::ConnectFailed,
            ErrorKind::ConnectTimeout,
            ErrorKind::ResponseTimeout,
            ErrorKind::UpstreamReset,
            ErrorKind::UpstreamProtocol,
            ErrorKind::Overloaded,
            ErrorKind::CircuitOpen,
            ErrorKind::UpstreamOverloaded,
            ErrorKind::Denied,
            ErrorKind::RateLimited,
            ErrorKind::ShuttingDown,
        ]
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Denied => StatusCode::FORBIDDEN,
            ErrorKind::NoHealthyEndpoint
            | ErrorKind::Overloaded
            | ErrorKind::CircuitOpen
            | ErrorKind::UpstreamOverloaded
            | ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ConnectFailed | ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol => {
                StatusCode::BAD_GATEWAY
            }
            ErrorKind::ConnectTimeout | ErrorKind::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn side(self) -> Side {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::NoRoute
            | ErrorKind::RateLimited
            | ErrorKind::Denied => Side::Downstream,
            ErrorKind::Overloaded | ErrorKind::ShuttingDown => Side::Internal,
            _ => Side::Upstream,
        }
    }
}

/// A failed request: what failed, where, whether another attempt is safe, and context.
#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    /// True when nothing of the request reached the upstream, so it may be sent again.
    pub nothing_sent: bool,
    pub upstream: Option<String>,
    pub endpoint: Option<String>,
    /// The matched route, named in the JSON body when set.
    pub route: Option<String>,
    pub message: String,
    /// Headers added to the error response, such as `Retry-After`.
    pub headers: HeaderMap,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            nothing_sent: false,
            upstream: None,
            endpoint: None,
            route: None,
            message: message.into(),
            headers: HeaderMap::new(),
        }
    }

    pub fn upstream(mut self, name: &str) -> Self {
        self.upstream = Some(name.to_string());
        self
    }

    pub fn endpoint(mut self, address: &str) -> Self {
        self.endpoint = Some(address.to_string());
        self
    }

    pub fn route(mut self, name: &str) -> Self {
        self.route = Some(name.to_string());
        self
    }

    /// Adds a header to the error response.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    pub fn nothing_sent(mut self) -> Self {
        self.nothing_sent = true;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn side(&self) -> Side {
        self.kind.side()
    }

    /// Builds the response returned to the client: the status and a JSON body naming
    /// the upstream and the reason.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut body = serde_json::json!({
            "error": self.kind.as_str(),
            "status": self.status().as_u16(),
            "message": self.message,
        });
        if let Some(upstream) = &self.upstream {
            body["upstream"] = upstream.as_str().into();
        }
        if let Some(route) = &self.route {
            body["route"] = route.as_str().into();
        }
        let mut response = json_response(self.status(), &body);
        for (name, value) in &self.headers {
            response.headers_mut().append(name, value.clone());
        }
        if matches!(self.kind, ErrorKind::BadRequest | ErrorKind::Denied) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(
            self.kind,
            ErrorKind::Overloaded
                | ErrorKind::ShuttingDown
                | ErrorKind::CircuitOpen
                | ErrorKind::UpstreamOverloaded
        ) {
            response
                .headers_mut()
                .entry(header::RETRY_AFTER)
                .or_insert(HeaderValue::from_static("1"));
        }
        response
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ProxyError {}

/// Builds a response with a JSON body.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut text = serde_json::to_vec(body).unwrap_or_default();
    text.push(b'\n');
    let mut response = Response::new(full(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses() {
        assert_eq!(ErrorKind::NoRoute.status(), StatusCode::NOT_FOUND);
        assert_eq!(ErrorKind::ConnectFailed.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            ErrorKind::NoHealthyEndpoint.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ErrorKind::ResponseTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[test]
    fn rate_limited_names_route_and_keeps_headers() {
        let error = ProxyError::new(ErrorKind::RateLimited, "slow down")
            .route("api")
            .header(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(error.side(), Side::Downstream);
        let response = error.to_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert!(ErrorKind::all().contains(&ErrorKind::RateLimited));
        assert_eq!(ErrorKind::RateLimited.as_str(), "rate_limited");
    }

    #[test]
    fn bad_request_closes_connection() {
        let response = ProxyError::new(ErrorKind::BadRequest, "bad chunk").to_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }
}
