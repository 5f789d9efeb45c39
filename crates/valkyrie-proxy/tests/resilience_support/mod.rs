//! A small HTTP/1.1 upstream written on raw sockets, so that tests control
//! exactly what it does with each connection: answer, answer late, answer
//! with a status, close after reading a request, or die with every
//! connection at once. It counts requests and open connections.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// How the server responds to routed requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a JSON body naming the server.
    Ok,
    /// This status with a JSON body.
    Status(u16),
    /// Waits this long, then 200; a client that closes meanwhile ends the wait.
    Slow(Duration),
    /// Reads the request and closes the connection without answering.
    CloseAfterRequest,
}

/// Path answered with the health status instead of the mode.
pub const CHECK_PATH: &str = "/_check";

/// Health status that keeps check requests waiting until it changes.
pub const HOLD: u16 = 0;

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Counters {
    /// Routed requests (health checks not included).
    requests: AtomicUsize,
    health_checks: AtomicUsize,
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
}

pub struct TestServer {
    pub address: SocketAddr,
    pub name: &'static str,
    counters: Arc<Counters>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: watch::Sender<Mode>,
    health: watch::Sender<u16>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

/// Decrements the open-connection count when a connection task ends,
/// including by abort.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestServer {
    pub async fn start(name: &'static str, mode: Mode) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mode, _) = watch::channel(mode);
        let (health, _) = watch::channel(200u16);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let server = TestServer {
            address,
            name,
            counters: counters.clone(),
            seen: seen.clone(),
            mode: mode.clone(),
            health: health.clone(),
            tasks: tasks.clone(),
        };
        let accept_tasks = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                let open = counters.open.fetch_add(1, Ordering::SeqCst) + 1;
                counters.max_open.fetch_max(open, Ordering::SeqCst);
                let guard = OpenGuard(counters.clone());
                let connection = Connection {
                    name,
                    counters: counters.clone(),
                    seen: seen.clone(),
                    mode: mode.subscribe(),
                    health: health.subscribe(),
                };
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    connection.serve(stream).await;
                });
                let mut tasks = accept_tasks.lock().unwrap();
                tasks.retain(|task| !task.is_finished());
                tasks.push(task.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        server
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Sets the status of `CHECK_PATH`; `HOLD` keeps check requests waiting.
    pub fn set_health(&self, status: u16) {
        self.health.send_replace(status);
    }

    /// Stops accepting and aborts every open connection, as a crashed
    /// process would: later connects are refused.
    pub fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.counters.health_checks.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    pub fn max_open_connections(&self) -> usize {
        self.counters.max_open.load(Ordering::SeqCst)
    }

    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Connection {
    name: &'static str,
    counters: Arc<Counters>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: watch::Receiver<Mode>,
    health: watch::Receiver<u16>,
}

struct Head {
    method: String,
    path: String,
    content_length: usize,
    chunked: bool,
    close: bool,
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream) {
        let mut buffer = Vec::new();
        loop {
            let Some((head, rest)) = read_head(&mut stream, &mut buffer).await else {
                return;
            };
            buffer = rest;
            let Some(body) = read_body(&mut stream, &mut buffer, &head).await else {
                return;
            };
            let keep_open = if head.path == CHECK_PATH {
                self.counters.health_checks.fetch_add(1, Ordering::SeqCst);
                self.answer_check(&mut stream).await
            } else {
                self.counters.requests.fetch_add(1, Ordering::SeqCst);
                self.seen.lock().unwrap().push(Seen {
                    method: head.method.clone(),
                    path: head.path.clone(),
                    body,
                });
                self.answer(&mut stream, &head).await
            };
            if !keep_open || head.close {
                return;
            }
        }
    }

    /// Answers a routed request; returns false when the connection must close.
    async fn answer(&mut self, stream: &mut TcpStream, head: &Head) -> bool {
        let mode = *self.mode.borrow();
        let status = match mode {
            Mode::Ok => 200,
            Mode::Status(status) => status,
            Mode::CloseAfterRequest => return false,
            Mode::Slow(delay) => {
                let mut probe = [0u8; 1];
                tokio::select! {
                    _ = tokio::time::sleep(delay) => 200,
                    // The client closed the connection: stop waiting.
                    _ = stream.read(&mut probe) => return false,
                }
            }
        };
        let body = format!(
            "{{\"upstream\":\"{}\",\"path\":\"{}\"}}",
            self.name, head.path
        );
        write_response(stream, status, &body).await
    }

    async fn answer_check(&mut self, stream: &mut TcpStream) -> bool {
        let status = loop {
            let status = *self.health.borrow_and_update();
            if status != HOLD {
                break status;
            }
            if self.health.changed().await.is_err() {
                return false;
            }
        };
        write_response(stream, status, "{}").await
    }
}

async fn write_response(stream: &mut TcpStream, status: u16, body: &str) -> bool {
    let response = format!(
        "HTTP/1.1 {status} Status\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await.is_ok()
}

/// Reads one request head; returns it with the bytes read past it.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(Head, Vec<u8>)> {
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let rest = buffer[end + 4..].to_vec();
            let mut lines = text.split("\r\n");
            let mut request_line = lines.next()?.split(' ');
            let method = request_line.next()?.to_string();
            let path = request_line.next()?.to_string();
            let mut head = Head {
                method,
                path,
                content_length: 0,
                chunked: false,
                close: false,
            };
            for line in lines {
                let (name, value) = line.split_once(':')?;
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => head.content_length = value.parse().ok()?,
                    "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
                    "connection" => head.close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
            return Some((head, rest));
        }
        if !read_more(stream, buffer).await {
            return None;
        }
    }
}

async fn read_body(stream: &mut TcpStream, buffer: &mut Vec<u8>, head: &Head) -> Option<Vec<u8>> {
    if !head.chunked {
        while buffer.len() < head.content_length {
            if !read_more(stream, buffer).await {
                return None;
            }
        }
        let rest = buffer.split_off(head.content_length);
        return Some(std::mem::replace(buffer, rest));
    }
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(end) = find(buffer, b"\r\n") {
                break end;
            }
            if !read_more(stream, buffer).await {
                return None;
            }
        };
        let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buffer.drain(..line_end + 2);
        while buffer.len() < size + 2 {
            if !read_more(stream, buffer).await {
                return None;
            }
        }
        body.extend_from_slice(&buffer[..size]);
        buffer.drain(..size + 2);
        if size == 0 {
            return Some(body);
        }
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Polls `condition` every 10 ms until it is true or `limit` passes, and
/// returns whether it became true.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
