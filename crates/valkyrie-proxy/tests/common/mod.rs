//! Test harness: upstream servers on port 0 that record what they receive,
//! and an in-process router built from TOML text.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use valkyrie_proxy::body::{boxed, ProxyBody};
use valkyrie_proxy::server::bind;
use valkyrie_proxy::{ListenerKind, ProxyState, Server, Snapshot};

/// A request as an upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a test upstream answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with a JSON body naming the upstream.
    Name,
    /// Streams the request body back as the response body.
    Echo,
    /// Waits this long before answering.
    Slow(Duration),
}

pub struct Upstream {
    pub address: SocketAddr,
    pub name: &'static str,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Starts an HTTP/1.1 and HTTP/2 upstream on 127.0.0.1 port 0.
pub async fn upstream(name: &'static str, behavior: Behavior) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let task = {
        let seen = seen.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(name, behavior, request, seen).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    };
    Upstream {
        address,
        name,
        seen,
        connections,
        task,
    }
}

async fn answer(
    name: &'static str,
    behavior: Behavior,
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let mut record = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: Bytes::new(),
    };
    match behavior {
        Behavior::Echo => {
            seen.lock().unwrap().push(record);
            let mut response = Response::new(boxed(body));
            if let Some(length) = parts.headers.get(http::header::CONTENT_LENGTH) {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, length.clone());
            }
            response
        }
        Behavior::Name | Behavior::Slow(_) => {
            record.body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            seen.lock().unwrap().push(record);
            if let Behavior::Slow(delay) = behavior {
                tokio::time::sleep(delay).await;
            }
            let text = format!(
                "{{\"upstream\":\"{name}\",\"path\":\"{}\"}}",
                parts.uri.path()
            );
            let mut response = Response::new(boxed(Full::new(Bytes::from(text))));
            *response.status_mut() = StatusCode::OK;
            response
        }
    }
}

/// A router running in this process.
pub struct Router {
    pub address: SocketAddr,
    pub server: Server,
}

impl Router {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn state(&self) -> &Arc<ProxyState> {
        self.server.state()
    }
}

/// Starts a router on 127.0.0.1 port 0 from config text. The text is
/// deserialized directly, so tests can use any schema value.
pub async fn router(config_text: &str) -> Router {
    let config: valkyrie_config::Config = toml::from_str(config_text).expect("test config parses");
    let snapshot = Snapshot::build(Arc::new(config), None)
        .await
        .expect("snapshot builds");
    let server = Server::new(Arc::new(ProxyState::new(snapshot)));
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    server.spawn_listener(listener, ListenerKind::DataPlane);
    Router { address, server }
}

/// Returns an HTTP/1.1 client that does not pool, follow redirects, or use a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends raw bytes on a new connection and reads until the server closes it
/// or `wait` passes.
pub async fn raw_exchange(address: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&received).into_owned(), closed)
}
