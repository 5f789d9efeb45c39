//! Protocol handling through the router: streaming bodies, 100-continue,
//! bodiless responses, upgrades, HTTP/2 and gRPC trailers, malformed input
//! and connection limits.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{client, raw_exchange, router, upstream, Behavior, Upstream};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn single_upstream(address: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
{extra}

[[upstreams]]
name = "origin"
endpoints = ["{address}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "origin"
"#
    )
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let echo = upstream("echo", Behavior::Echo).await;
    let router = router(&single_upstream(echo.address, "")).await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let response = client()
        .post(router.url("/upload"))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), payload.len());
    assert!(body == payload);
}

#[tokio::test]
async fn chunked_request_streams_before_it_ends() {
    let echo = upstream("echo", Behavior::Echo).await;
    let router = router(&single_upstream(echo.address, "")).await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = tokio_stream_from(receiver);
    let request = client()
        .post(router.url("/stream"))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let pending = tokio::spawn(request);
    sender
        .send(Ok(Bytes::from_static(b"first ")))
        .await
        .unwrap();
    // The echo upstream responds with the body as it arrives, so the response
    // head comes back while the request body is still open.
    let response = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first ");
    sender
        .send(Ok(Bytes::from_static(b"second")))
        .await
        .unwrap();
    drop(sender);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"second");
}

fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn expect_continue_gets_100_then_response() {
    let echo = upstream("echo", Behavior::Echo).await;
    let router = router(&single_upstream(echo.address, "")).await;
    let mut stream = tokio::net::TcpStream::connect(router.address)
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buffer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    let interim = String::from_utf8_lossy(&buffer[..n]).to_string();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue"),
        "got {interim:?}"
    );
    stream.write_all(b"hello").await.unwrap();
    let mut response = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !response.ends_with("hello") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early: {response:?}");
        response.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(response.starts_with("HTTP/1.1 200"), "got {response:?}");
    assert!(echo.requests()[0].headers.get("expect").is_none());
}

/// Starts an upstream that responds with the status named in the path
/// (`/204`, `/304`) and a body for every other path.
async fn status_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let status = request
                        .uri()
                        .path()
                        .trim_start_matches('/')
                        .parse::<u16>()
                        .unwrap_or(200);
                    let body = if status == 200 { "twelve bytes" } else { "" };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn head_204_and_304_have_no_body() {
    let address = status_upstream().await;
    let router = router(&single_upstream(address, "")).await;
    let requests = b"HEAD /200 HTTP/1.1\r\nHost: t\r\n\r\nGET /204 HTTP/1.1\r\nHost: t\r\n\r\nGET /304 HTTP/1.1\r\nHost: t\r\n\r\nGET /200 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (text, closed) = raw_exchange(router.address, requests, Duration::from_secs(5)).await;
    assert!(closed);
    let heads: Vec<&str> = text.matches("HTTP/1.1 ").collect();
    assert_eq!(heads.len(), 4, "responses: {text:?}");
    assert!(text.contains("HTTP/1.1 200 OK\r\n"));
    assert!(text.contains("content-length: 12"));
    assert!(text.contains("HTTP/1.1 204 No Content"));
    assert!(text.contains("HTTP/1.1 304 Not Modified"));
    // Only the final GET carries the twelve body bytes.
    assert_eq!(text.matches("twelve bytes").count(), 1);
    assert!(text.ends_with("twelve bytes"));
}

#[tokio::test]
async fn websocket_tunnel_echoes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        socket.send(message).await.unwrap();
                    }
                }
            });
        }
    });
    let router = router(&single_upstream(address, "")).await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", router.address))
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        let text = format!("message {i}");
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
}

/// Starts an HTTP/2-only upstream that responds like a gRPC server: a data
/// frame and then trailers with `grpc-status`.
async fn grpc_like_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let te = request.headers().get("te").cloned();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "echoed".parse().unwrap());
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut response =
                        Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    response
                        .headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    if let Some(te) = te {
                        response.headers_mut().insert("x-seen-te", te);
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn grpc_over_h2c_keeps_trailers() {
    let address = grpc_like_upstream().await;
    let config = format!(
        r#"
[[upstreams]]
name = "grpc"
endpoints = ["{address}"]
protocol = "http2"

[[routes]]
name = "grpc"
path_prefix = "/"
upstream = "grpc"
"#
    );
    let router = router(&config).await;
    let stream = tokio::net::TcpStream::connect(router.address)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method("POST")
        .uri(format!("http://{}/pkg.Service/Method", router.address))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["x-seen-te"], "trailers");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echoed");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05hello");
}

#[tokio::test]
async fn h2c_client_reaches_http1_upstream() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(alpha.address, "")).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(router.url("/h2")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(alpha.requests()[0].version, http::Version::HTTP_11);
    assert!(alpha.requests()[0].headers.get("host").is_some());
}

/// Sends each malformed request on its own connection and checks it gets
/// 400 and a closed connection, and that the upstream saw nothing.
#[tokio::test]
async fn malformed_requests_rejected_before_upstream() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(alpha.address, "")).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "content-length with transfer-encoding",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "two different content-lengths",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n  b\r\n\r\n"),
        ("bare LF line ending", b"GET / HTTP/1.1\nHost: t\n\n"),
        ("invalid header name", b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let (text, closed) = raw_exchange(router.address, bytes, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{name}: got {text:?}");
        assert!(closed, "{name}: connection left open");
    }
    assert_eq!(
        alpha.request_count(),
        0,
        "a malformed request reached the upstream"
    );
    assert_eq!(
        alpha.connections.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// An authority with userinfo gets 400 and never reaches the upstream,
/// in absolute form and in `Host`.
#[tokio::test]
async fn userinfo_in_authority_rejected() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(alpha.address, "")).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "absolute form",
            b"GET http://user:secret@t/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ),
        (
            "host header",
            b"GET / HTTP/1.1\r\nHost: user@t\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (name, bytes) in cases {
        let (text, _) = raw_exchange(router.address, bytes, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{name}: got {text:?}");
        assert!(text.contains("userinfo"), "{name}: got {text:?}");
    }
    assert_eq!(
        alpha.request_count(),
        0,
        "a request with userinfo reached the upstream"
    );
}

/// The framing check ends at an upgrade request's head, so a refused
/// upgrade closes the connection: a request pipelined after it with a bare
/// LF never reaches the upstream.
#[tokio::test]
async fn refused_upgrade_closes_connection() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(alpha.address, "")).await;
    let bytes = b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET /smuggled HTTP/1.1\nHost: t\n\n";
    let (text, closed) = raw_exchange(router.address, bytes, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "got {text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "got {text:?}"
    );
    assert!(closed, "connection left open after a refused upgrade");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "got {text:?}");
    assert_eq!(alpha.request_count(), 1);
}

#[tokio::test]
async fn oversized_header_gets_431() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(
        alpha.address,
        "[server]\nmax_request_header_bytes = 8192",
    ))
    .await;
    let big = "a".repeat(20_000);
    let request = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    let (text, closed) =
        raw_exchange(router.address, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 431"), "got {text:?}");
    assert!(closed);
    assert_eq!(alpha.request_count(), 0);
}

#[tokio::test]
async fn slow_request_head_times_out() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(
        alpha.address,
        "[server]\nrequest_header_timeout = \"300ms\"",
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(router.address)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    let n = read
        .expect("the router closes the connection in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the connection to close without a response");
    assert_eq!(alpha.request_count(), 0);
}

#[tokio::test]
async fn idle_keepalive_connection_closes() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(
        alpha.address,
        "[server]\nidle_timeout = \"300ms\"",
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(router.address)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn max_connections_closes_extra_connections() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&single_upstream(
        alpha.address,
        "[server]\nmax_connections = 2",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(router.address)
            .await
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = vec![0u8; 4096];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0);
        held.push(stream);
    }
    let (text, closed) = raw_exchange(
        router.address,
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed);
    assert!(text.is_empty(), "got {text:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client().get(router.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Starts an upstream that closes each connection right after responding, without
/// saying so in a header, so pooled connections go stale.
async fn closing_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buffer[..n]);
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(stream);
            });
        }
    });
    (address, served)
}

#[tokio::test]
async fn stale_pooled_connection_is_retried() {
    let (address, served) = closing_upstream().await;
    let router = router(&single_upstream(address, "")).await;
    let client = client();
    for _ in 0..10 {
        let response = client.get(router.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 10);
}

#[tokio::test]
async fn post_on_stale_connection_not_sent_twice() {
    let (address, served) = closing_upstream().await;
    let router = router(&single_upstream(address, "")).await;
    let client = client();
    for _ in 0..5 {
        let response = client
            .post(router.url("/"))
            .body("payload")
            .send()
            .await
            .unwrap();
        let _ = response.bytes().await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Each POST reached the upstream at most once.
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) <= 5);
}

#[allow(dead_code)]
fn keep(_: Upstream) {}
