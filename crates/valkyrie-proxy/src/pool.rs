//! Keep-alive connection pools, one per upstream endpoint.
//!
//! HTTP/1.1 endpoints keep a stack of idle connections (the most recently
//! used is reused first, so a quiet pool shrinks by idle timeout). HTTP/2
//! endpoints share one multiplexed connection. Endpoints of an upstream with
//! `[upstreams.tls]` get TLS on every new connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::tls::EndpointTls;

/// A connection checked out of a pool.
pub enum Conn {
    Http1(http1::SendRequest<ProxyBody>),
    Http2(http2::SendRequest<ProxyBody>),
}

/// A checked-out connection and whether it had carried requests before.
pub struct Checkout {
    pub conn: Conn,
    pub reused: bool,
}

struct IdleConn {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// Counters that describe a pool's use, read by the metrics exporter.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Open connections, idle or busy.
    pub open: AtomicUsize,
    /// Connections carrying a request now.
    pub active: AtomicUsize,
    /// Idle connections kept for reuse.
    pub idle: AtomicUsize,
}

/// The pool of one endpoint.
pub struct Pool {
    http2: bool,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    idle: Mutex<VecDeque<IdleConn>>,
    shared_http2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    pub stats: Arc<PoolStats>,
    tls: Option<EndpointTls>,
}

impl Pool {
    pub fn new(
        http2: bool,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            http2,
            max_idle,
            idle_timeout,
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
            shared_http2: Mutex::new(None),
            stats: Arc::new(PoolStats::default()),
            tls: None,
        }
    }

    /// Sets the TLS settings new connections use; `None` keeps plain TCP.
    pub fn with_tls(mut self, tls: Option<EndpointTls>) -> Pool {
        self.tls = tls;
        self
    }

    /// Returns true when connections to this endpoint use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Takes an idle connection that is still open, or opens a new one to the
    /// first of `addresses` that accepts.
    pub async fn checkout(&self, addresses: &[SocketAddr]) -> Result<Checkout, ProxyError> {
        if self.http2 {
            if let Some(sender) = self.shared_http2() {
                return Ok(Checkout {
                    conn: Conn::Http2(sender),
                    reused: true,
                });
            }
            return Box::pin(self.connect(addresses)).await;
        }
        while let Some(mut sender) = self.pop_idle() {
            // The connection task marks the connection ready a moment after the
            // previous response body ended; waiting here covers that gap and
            // fails at once if the upstream closed the connection meanwhile.
            if sender.ready().await.is_ok() {
                return Ok(Checkout {
                    conn: Conn::Http1(sender),
                    reused: true,
                });
            }
            self.stats.active.fetch_sub(1, Ordering::Relaxed);
        }
        // Connecting (TCP, TLS, handshake) is a large state machine that
        // pooled requests never run, so it lives on the heap when it does.
        Box::pin(self.connect(addresses)).await
    }

    fn shared_http2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let shared = self.shared_http2.lock().unwrap();
        shared
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    fn pop_idle(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap();
        while let Some(conn) = idle.pop_back() {
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
            if conn.since.elapsed() < self.idle_timeout && !conn.sender.is_closed() {
                self.stats.active.fetch_add(1, Ordering::Relaxed);
                return Some(conn.sender);
            }
            // Dropping the sender closes the connection.
        }
        None
    }

    /// Opens a connection that bypasses the idle stack, for requests that will
    /// take the connection over (protocol upgrades) or retries after a stale one.
    pub async fn connect(&self, addresses: &[SocketAddr]) -> Result<Checkout, ProxyError> {
        let stream = self.connect_tcp(addresses).await?;
        match &self.tls {
            Some(tls) => {
                let stream = tls.handshake(stream, self.connect_timeout).await?;
                self.handshake(TokioIo::new(stream)).await
            }
            None => self.handshake(TokioIo::new(stream)).await,
        }
    }

    /// Starts HTTP/1.1 or HTTP/2 on a new connection.
    async fn handshake<I>(&self, io: I) -> Result<Checkout, ProxyError>
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let stats = self.stats.clone();
        if self.http2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|error| {
                    ProxyError::new(
                        ErrorKind::UpstreamProtocol,
                        format!("HTTP/2 handshake failed: {error}"),
                    )
                    .nothing_sent()
                })?;
            stats.open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%error, "upstream HTTP/2 connection ended");
                }
                stats.open.fetch_sub(1, Ordering::Relaxed);
            });
            *self.shared_http2.lock().unwrap() = Some(sender.clone());
            return Ok(Checkout {
                conn: Conn::Http2(sender),
                reused: false,
            });
        }
        let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(|error| {
            ProxyError::new(
                ErrorKind::UpstreamProtocol,
                format!("HTTP/1.1 handshake failed: {error}"),
            )
            .nothing_sent()
        })?;
        stats.open.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "upstream HTTP/1.1 connection ended");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Checkout {
            conn: Conn::Http1(sender),
            reused: false,
        })
    }

    async fn connect_tcp(&self, addresses: &[SocketAddr]) -> Result<TcpStream, ProxyError> {
        let mut last_error = None;
        for address in addresses {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(error)) => {
                    last_error = Some(
                        ProxyError::new(
                            ErrorKind::ConnectFailed,
                            format!("connect to {address} failed: {error}"),
                        )
                        .nothing_sent(),
                    );
                }
                Err(_) => {
                    last_error = Some(
                        ProxyError::new(
                            ErrorKind::ConnectTimeout,
                            format!(
                                "connect to {address} timed out after {:?}",
                                self.connect_timeout
                            ),
                        )
                        .nothing_sent(),
                    );
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            ProxyError::new(
                ErrorKind::ConnectFailed,
                "the endpoint resolved to no address",
            )
            .nothing_sent()
        }))
    }

    /// Puts an HTTP/1.1 connection back after its response body ended, or
    /// drops it when the pool is full or the connection cannot be reused.
    pub fn release(&self, sender: http1::SendRequest<ProxyBody>) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push_back(IdleConn {
            sender,
            since: Instant::now(),
        });
        self.stats.idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that a checked-out HTTP/1.1 connection will not come back.
    pub fn discard(&self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closes idle connections older than the idle timeout or already closed.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap();
        let before = idle.len();
        idle.retain(|conn| conn.since.elapsed() < self.idle_timeout && !conn.sender.is_closed());
        self.stats
            .idle
            .fetch_sub(before - idle.len(), Ordering::Relaxed);
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        let mut idle = self.idle.lock().unwrap();
        self.stats.idle.fetch_sub(idle.len(), Ordering::Relaxed);
        idle.clear();
    }

    pub fn is_http2(&self) -> bool {
        self.http2
    }

    pub fn max_idle(&self) -> usize {
        self.max_idle
    }
}
