//! Hot reload against a live process: reloads under a steady request loop
//! lose nothing, a WebSocket survives them, rollback returns to the previous
//! config, and the admin API checks who is calling.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &Path, envs: &[(&str, &str)]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"));
    command
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    Process(command.spawn().unwrap())
}

async fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts an upstream that responds to HTTP requests with "ok" and echoes WebSocket messages.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut peek = [0u8; 512];
                let n = stream.peek(&mut peek).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&peek[..n]).to_ascii_lowercase();
                if head.contains("upgrade: websocket") {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_text() && socket.send(message).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn config_text(
    port: u16,
    metrics_port: u16,
    upstream: SocketAddr,
    variant: usize,
    admin: &str,
) -> String {
    // Each variant changes the routes and, every third one, the upstream
    // settings, so reloads swap pools as well as routes.
    let timeout = if variant.is_multiple_of(3) {
        "30s"
    } else {
        "20s"
    };
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
[metrics]
listen = "127.0.0.1:{metrics_port}"
[logging]
level = "warn"
access_log = false
{admin}
[[upstreams]]
name = "origin"
endpoints = ["{upstream}"]
request_timeout = "{timeout}"
[[routes]]
name = "main"
path_prefix = "/"
upstream = "origin"
[[routes]]
name = "variant-{variant}"
path_prefix = "/variant-{variant}/"
upstream = "origin"
"#
    )
}

fn write(path: &Path, text: &str) {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_nothing() {
    let upstream = upstream().await;
    let (port, metrics_port) = (free_port(), free_port());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("valkyrie.toml");
    write(&path, &config_text(port, metrics_port, upstream, 0, ""));
    let _process = start(&path, &[]);
    wait_until_listening(port).await;

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let result = client
                    .get(format!("http://127.0.0.1:{port}/load"))
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(response) if response.status() == 200 => {}
                    Ok(response) => {
                        eprintln!("status {}", response.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        eprintln!("error {error}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    for variant in 1..=50 {
        write(
            &path,
            &config_text(port, metrics_port, upstream, variant, ""),
        );
        let response = admin
            .post(format!("http://127.0.0.1:{port}/admin/config/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "reload {variant}: {}",
            response.text().await.unwrap()
        );
        let routed = admin
            .get(format!("http://127.0.0.1:{port}/variant-{variant}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(routed.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for handle in loops {
        handle.await.unwrap();
    }

    assert!(
        sent.load(Ordering::Relaxed) > 100,
        "the load loop barely ran"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    socket
        .send(tokio_tungstenite::tungstenite::Message::text("still here"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "still here");

    let status: serde_json::Value = admin
        .get(format!("http://127.0.0.1:{port}/config/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["generation"], 51);
    assert_eq!(status["last_reload"]["ok"], true);
}

#[tokio::test]
async fn rollback_returns_to_previous_config() {
    let upstream = upstream().await;
    let (port, metrics_port) = (free_port(), free_port());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("valkyrie.toml");
    write(&path, &config_text(port, metrics_port, upstream, 1, ""));
    let _process = start(&path, &[]);
    wait_until_listening(port).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let first: serde_json::Value = client
        .get(url("/config/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    write(&path, &config_text(port, metrics_port, upstream, 2, ""));
    assert_eq!(
        client
            .post(url("/admin/config/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(url("/variant-2/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let rolled: serde_json::Value = client
        .post(url("/admin/config/rollback"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rolled["result"], "ok");
    assert_eq!(rolled["status"]["version"], first["version"]);
    // The catch-all route matches every request; the variant route's own name
    // shows in the routes listing.
    let routes: serde_json::Value = client
        .get(url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main", "variant-1"]);

    let again = client
        .post(url("/admin/config/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 422);
}

#[tokio::test]
async fn admin_refuses_other_sources_without_token() {
    let upstream = upstream().await;
    let (port, metrics_port) = (free_port(), free_port());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("valkyrie.toml");
    let admin = "[admin]\nallow = [\"127.0.0.1/32\"]\ntoken_env = \"TEST_ADMIN_TOKEN\"";
    // Listen on every address so the client below can reach 127.0.0.2.
    let text = config_text(port, metrics_port, upstream, 1, admin).replace(
        &format!("\"127.0.0.1:{port}\""),
        &format!("\"0.0.0.0:{port}\""),
    );
    write(&path, &text);
    let _process = start(&path, &[("TEST_ADMIN_TOKEN", "s3cret-token")]);
    wait_until_listening(port).await;

    // A client bound to 127.0.0.2 is a source outside `allow`.
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let url = |path: &str| format!("http://127.0.0.2:{port}{path}");

    let refused = other.get(url("/config/status")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let wrong = other
        .get(url("/admin/routes"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let allowed = other
        .get(url("/admin/routes"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);

    let health = other.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let local = reqwest::Client::builder().no_proxy().build().unwrap();
    let from_loopback = local
        .get(format!("http://127.0.0.1:{port}/config/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(from_loopback.status(), 200);
}

#[tokio::test]
async fn admin_listener_moves_admin_off_data_plane() {
    let upstream = upstream().await;
    let (port, metrics_port, admin_port) = (free_port(), free_port(), free_port());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("valkyrie.toml");
    let admin = format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"");
    let text = config_text(port, metrics_port, upstream, 1, &admin).replace(
        "[[routes]]\nname = \"main\"\npath_prefix = \"/\"",
        "[[routes]]\nname = \"main\"\npath_prefix = \"/app/\"",
    );
    write(&path, &text);
    let _process = start(&path, &[]);
    wait_until_listening(port).await;
    wait_until_listening(admin_port).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let on_data_plane = client
        .get(format!("http://127.0.0.1:{port}/config/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_data_plane.status(), 404);
    let on_admin = client
        .get(format!("http://127.0.0.1:{admin_port}/config/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_admin.status(), 200);
    let health = client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
