//! Listeners and downstream connections: accepting within `max_connections`,
//! serving HTTP/1.1 and HTTP/2 on each connection, the request-head and idle
//! timeouts, and draining on shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::body::{self, ProxyBody};
use crate::framing::RequestFramer;
use crate::handler::{handle, ConnContext};
use crate::headers::ClientInfo;
use crate::state::{ListenerKind, ProxyState};
use crate::tls::TlsTerminator;

static OPEN_TUNNELS: AtomicUsize = AtomicUsize::new(0);

/// Held by each upgraded tunnel while it runs, so draining can wait for it.
pub struct TunnelGuard(());

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        OPEN_TUNNELS.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn tunnel_guard() -> TunnelGuard {
    OPEN_TUNNELS.fetch_add(1, Ordering::Relaxed);
    TunnelGuard(())
}

/// Returns the number of upgraded connections (WebSocket and others) open now.
pub fn open_tunnels() -> usize {
    OPEN_TUNNELS.load(Ordering::Relaxed)
}

/// Activity counters of one downstream connection, read by its timeouts.
pub struct ConnActivity {
    epoch: Instant,
    in_flight: AtomicU32,
    bytes_read: AtomicU64,
    bytes_at_idle: AtomicU64,
    idle_since_ms: AtomicU64,
    http2: AtomicBool,
}

impl ConnActivity {
    fn new() -> ConnActivity {
        ConnActivity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_at_idle: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn request_started(&self, version: http::Version) {
        if version == http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.bytes_at_idle
                .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
            self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }
}

/// The connection watchdog's verdict on one tick.
enum Verdict {
    Busy,
    /// Bytes of a request head arrived this long ago without a complete head.
    HeadPending,
    /// No request and no bytes for this long.
    Idle(Duration),
}

fn inspect(activity: &ConnActivity) -> Verdict {
    if activity.in_flight.load(Ordering::Relaxed) > 0 {
        return Verdict::Busy;
    }
    let idle_for = Duration::from_millis(
        activity
            .now_ms()
            .saturating_sub(activity.idle_since_ms.load(Ordering::Relaxed)),
    );
    let partial_head = activity.bytes_read.load(Ordering::Relaxed)
        > activity.bytes_at_idle.load(Ordering::Relaxed);
    if partial_head && !activity.http2.load(Ordering::Relaxed) {
        Verdict::HeadPending
    } else {
        Verdict::Idle(idle_for)
    }
}

pin_project_lite::pin_project! {
    /// A socket that counts the bytes read from it and checks the request
    /// framing before hyper parses them.
    struct ActivityIo<S> {
        #[pin]
        inner: S,
        activity: Arc<ConnActivity>,
        framer: RequestFramer,
        rejected: bool,
    }
}

impl<S: AsyncRead> AsyncRead for ActivityIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.rejected {
            // The invalid byte went out already, and hyper is sending its 400.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.activity
                .bytes_read
                .fetch_add(read as u64, Ordering::Relaxed);
            if let Some(offset) = this.framer.scan(&buf.filled()[before..]) {
                // Hand hyper the bytes before the offending line and then a
                // NUL, which no request head or chunk line may contain, so
                // hyper's parser fails there and responds with 400. The line end
                // after it keeps httparse from waiting for more bytes.
                buf.set_filled(before + offset);
                let marker = b"\0\r\n\r\n";
                let room = buf.remaining().min(marker.len());
                buf.put_slice(&marker[..room]);
                *this.rejected = true;
            }
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Opens a listening socket with address reuse and a deep accept backlog.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let domain = if address.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Runs the listeners and drains them on request.
pub struct Server {
    state: Arc<ProxyState>,
    shutdown: watch::Sender<bool>,
    /// Port of the first TLS listener, the target of HTTPS redirects; 0
    /// while there is none.
    https_port: Arc<AtomicU16>,
}

impl Server {
    pub fn new(state: Arc<ProxyState>) -> Server {
        let (shutdown, _) = watch::channel(false);
        Server {
            state,
            shutdown,
            https_port: Arc::new(AtomicU16::new(0)),
        }
    }

    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// Sets the port that `[server] redirect_to_https` sends plain-HTTP
    /// clients to. Until it is set, nothing is redirected.
    pub fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    /// Accepts plain-TCP connections on `listener` until shutdown.
    pub fn spawn_listener(
        &self,
        listener: TcpListener,
        kind: ListenerKind,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_accept_loop(listener, kind, None)
    }

    /// Accepts TLS connections on `listener` until shutdown. Certificates
    /// and settings come from `tls` at each handshake, so reloading them
    /// affects new connections only.
    pub fn spawn_tls_listener(
        &self,
        listener: TcpListener,
        kind: ListenerKind,
        tls: Arc<TlsTerminator>,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_accept_loop(listener, kind, Some(tls))
    }

    fn spawn_accept_loop(
        &self,
        listener: TcpListener,
        kind: ListenerKind,
        tls: Option<Arc<TlsTerminator>>,
    ) -> tokio::task::JoinHandle<()> {
        let state = self.state.clone();
        let https_port = self.https_port.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let local = listener.local_addr().ok();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.changed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Running out of file descriptors must not spin the loop.
                        warn!(listener = ?local, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if kind == ListenerKind::DataPlane && state.deny_list.denies(peer.ip()) {
                    debug!(%peer, "closing connection: the source is on the deny list");
                    drop(stream);
                    continue;
                }
                let max = state.snapshot.load().config.server.max_connections as u64;
                if state.open_connections.load(Ordering::Relaxed) >= max {
                    debug!(%peer, max, "closing connection: max_connections reached");
                    drop(stream);
                    continue;
                }
                let over_heap_limit = state.memory_pressure.load(Ordering::Relaxed);
                if kind == ListenerKind::DataPlane && over_heap_limit {
                    debug!(%peer, "closing connection: resident memory is over [performance] max_heap_size");
                    drop(stream);
                    continue;
                }
                state.open_connections.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                let shutdown = shutdown.clone();
                let tls = tls.clone();
                let https_port = https_port.load(Ordering::Relaxed);
                tokio::spawn(async move {
                    let connection = Connection {
                        peer,
                        state: state.clone(),
                        kind,
                        shutdown,
                        https_port,
                    };
                    match tls {
                        Some(tls) => connection.serve_tls(stream, &tls).await,
                        None => connection.serve_plain(stream).await,
                    }
                    state.open_connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            info!(listener = ?local, "listener closed");
        })
    }

    /// Stops accepting, tells every connection to finish its requests and
    /// close, and waits up to `timeout` for connections and tunnels to end.
    /// Returns true when everything finished in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.state.start_draining();
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + timeout;
        loop {
            let connections = self.state.open_connections.load(Ordering::Relaxed);
            let tunnels = open_tunnels();
            if connections == 0 && tunnels == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                warn!(
                    connections,
                    tunnels, "graceful shutdown timed out with connections still open"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One accepted downstream connection.
struct Connection {
    peer: SocketAddr,
    state: Arc<ProxyState>,
    kind: ListenerKind,
    shutdown: watch::Receiver<bool>,
    https_port: u16,
}

/// The protocol a TLS client and the listener agreed on through ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Negotiated {
    Http1,
    Http2,
    /// No ALPN: the connection's first bytes decide (HTTP/2 preface or not).
    Unknown,
}

/// Per-connection additions to every response: HSTS on TLS connections, or
/// a redirect to HTTPS on plain ones.
#[derive(Clone, Default)]
struct Extras {
    hsts: Option<HeaderValue>,
    /// HTTPS port to redirect plain-HTTP requests to.
    redirect_port: Option<u16>,
}

impl Connection {
    async fn serve_plain(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let redirect_port = {
            let snapshot = self.state.snapshot.load();
            let wanted = snapshot.config.server.redirect_to_https
                && self.kind == ListenerKind::DataPlane
                && self.https_port != 0;
            wanted.then_some(self.https_port)
        };
        let extras = Extras {
            hsts: None,
            redirect_port,
        };
        self.serve(stream, "http", Negotiated::Unknown, extras)
            .await;
    }

    async fn serve_tls(self, stream: TcpStream, tls: &TlsTerminator) {
        let _ = stream.set_nodelay(true);
        let (handshake_timeout, hsts_max_age) = {
            let snapshot = self.state.snapshot.load();
            (
                snapshot.request_header_timeout,
                snapshot.config.security.hsts_max_age,
            )
        };
        // The request-head timeout bounds the handshake too, so a client
        // cannot hold a connection open by sending a ClientHello slowly.
        let mut shutdown = self.shutdown.clone();
        let handshake = tokio::select! {
            result = tokio::time::timeout(handshake_timeout, tls.accept(stream)) => result,
            _ = shutdown.changed() => return,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                debug!(peer = %self.peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(peer = %self.peer, timeout = ?handshake_timeout, "TLS handshake timed out");
                return;
            }
        };
        let negotiated = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Negotiated::Http2,
            Some(b"http/1.1") => Negotiated::Http1,
            _ => Negotiated::Unknown,
        };
        let extras = Extras {
            hsts: hsts_max_age.and_then(|age| {
                HeaderValue::from_str(&format!("max-age={}", age.0.as_secs())).ok()
            }),
            redirect_port: None,
        };
        self.serve(stream, "https", negotiated, extras).await;
    }

    async fn serve<S>(self, stream: S, scheme: &'static str, negotiated: Negotiated, extras: Extras)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            state,
            kind,
            mut shutdown,
            ..
        } = self;
        let activity = Arc::new(ConnActivity::new());
        if negotiated == Negotiated::Http2 {
            activity.http2.store(true, Ordering::Relaxed);
        }
        let (header_timeout, idle_timeout, max_header_bytes) = {
            let snapshot = state.snapshot.load();
            let server = &snapshot.config.server;
            (
                snapshot.request_header_timeout,
                snapshot.idle_timeout,
                server.max_request_header_bytes,
            )
        };
        let client = ClientInfo {
            peer: peer.ip().to_canonical(),
            scheme,
        };
        let context = ConnContext {
            state,
            client,
            peer_value: crate::headers::peer_value(client.peer),
            listener: kind,
            activity: activity.clone(),
        };
        let io = TokioIo::new(ActivityIo {
            inner: stream,
            activity: activity.clone(),
            framer: RequestFramer::new(),
            rejected: false,
        });
        let extras = Arc::new(extras);
        let service =
            service_fn(move |request| serve_request(context.clone(), extras.clone(), request));

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_buf_size(max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_bytes.min(u32::MAX as usize) as u32);
        let builder = match negotiated {
            Negotiated::Http1 => builder.http1_only(),
            Negotiated::Http2 => builder.http2_only(),
            Negotiated::Unknown => builder,
        };
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);

        let tick_every = (header_timeout.min(idle_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut head_pending_since: Option<Instant> = None;
        let mut closing = *shutdown.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        debug!(%peer, %error, "downstream connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = ticker.tick(), if !closing => {
                    match inspect(&activity) {
                        Verdict::Busy => head_pending_since = None,
                        Verdict::HeadPending => {
                            let since = *head_pending_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= header_timeout {
                                debug!(%peer, timeout = ?header_timeout, "closing connection: request head not received in time");
                                return;
                            }
                        }
                        Verdict::Idle(idle_for) => {
                            head_pending_since = None;
                            if idle_for >= idle_timeout {
                                debug!(%peer, "closing idle connection");
                                closing = true;
                                connection.as_mut().graceful_shutdown();
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Serves one request: a redirect to HTTPS on a connection set up for
/// redirects, otherwise the proxy, with HSTS added on TLS connections.
async fn serve_request(
    context: ConnContext,
    extras: Arc<Extras>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    if let Some(port) = extras.redirect_port {
        if !matches!(request.uri().path(), "/health" | "/ready") {
            // Counted as a request so the idle and head timeouts see it.
            context.activity.request_started(request.version());
            let response = https_redirect(&request, port);
            context.activity.request_finished();
            return Ok(response);
        }
    }
    let mut response = handle(context, request).await?;
    if let Some(hsts) = &extras.hsts {
        response
            .headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
    Ok(response)
}

/// Returns a 308 response to the same host, path and query on `https://`
/// and the TLS port (left out when it is 443). A request without a usable
/// host gets 400, since there is nothing to redirect to.
fn https_redirect<B>(request: &Request<B>, port: u16) -> Response<ProxyBody> {
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
        });
    let Some(host) = authority.and_then(host_without_port) else {
        return crate::error::json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({
                "error": "bad_request",
                "status": 400,
                "message": "plain HTTP is redirected to HTTPS, and the request has no valid Host header to redirect to",
            }),
        );
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// Returns the host of a `Host` value without its port, or `None` when it
/// contains characters no host name or IP literal has.
fn host_without_port(authority: &str) -> Option<&str> {
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        &authority[..=end]
    } else {
        authority.split(':').next()?
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._[]:".contains(&byte));
    valid.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_without_port_cases() {
        assert_eq!(host_without_port("example.com"), Some("example.com"));
        assert_eq!(host_without_port("example.com:8080"), Some("example.com"));
        assert_eq!(host_without_port("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_without_port("[::1]"), Some("[::1]"));
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port("evil.com/path"), None);
        assert_eq!(host_without_port("a@b"), None);
    }

    #[test]
    fn redirect_keeps_path_and_query() {
        let request = Request::builder()
            .uri("/a/b?x=1")
            .header(header::HOST, "shop.example:8080")
            .body(())
            .unwrap();
        let response = https_redirect(&request, 8443);
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://shop.example:8443/a/b?x=1"
        );
        let response = https_redirect(&request, 443);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://shop.example/a/b?x=1"
        );
    }

    #[test]
    fn redirect_without_host_is_bad_request() {
        let request = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(
            https_redirect(&request, 8443).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
