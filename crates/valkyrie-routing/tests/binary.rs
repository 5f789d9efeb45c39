//! Tests of the `valkyrie-routing` binary as operators run it: config
//! validation, serving from a config file, signals and the demo.

use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_valkyrie-routing")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Returns a port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// A router process, killed when dropped if still running.
struct Process {
    child: Child,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        let child = Command::new(binary())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Process { child }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// Starts an upstream that names itself and waits `delay` before answering.
async fn named_upstream(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn router_config(port: u16, metrics_port: u16, upstream: SocketAddr, route_path: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
graceful_shutdown_timeout = "10s"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "warn"

[[upstreams]]
name = "origin"
endpoints = ["{upstream}"]

[[routes]]
name = "origin"
path_prefix = "{route_path}"
upstream = "origin"
"#
    )
}

#[test]
fn validate_config_accepts_shipped_example() {
    let path = workspace_root().join("config/valkyrie.toml");
    let output = Command::new(binary())
        .arg("--validate-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "configuration OK"
    );
}

#[test]
fn validate_config_reports_errors_with_lines() {
    let file = temp_config(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"missing\"\nworker_threads = 4\n",
    );
    let output = Command::new(binary())
        .arg("--validate-config")
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains(":7:"), "no line 7 in {errors}");
    assert!(errors.contains("missing"), "{errors}");
    assert!(errors.contains(":8:"), "no line 8 in {errors}");
    assert!(
        errors.contains("[server]"),
        "no hint for worker_threads in {errors}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn validate_config_accepts_benchmark_config() {
    // The exact config the proxy comparison script writes.
    let file = temp_config(
        "[server]\nlisten = [\"127.0.0.1:19003\"]\nworker_threads = 1\n\n[metrics]\nlisten = \"127.0.0.1:19903\"\n\n[logging]\nlevel = \"warn\"\naccess_log = false\n\n[[upstreams]]\nname = \"backend\"\nendpoints = [\"127.0.0.1:19000\"]\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"backend\"\n",
    );
    let output = Command::new(binary())
        .arg("--validate-config")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn missing_config_file_fails_clearly() {
    let output = Command::new(binary())
        .args(["--config", "/nonexistent/valkyrie.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/valkyrie.toml"));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    drains_in_flight_requests(0).await;
}

/// One worker thread runs the current-thread scheduler, which the proxy
/// comparison uses.
#[tokio::test]
async fn sigterm_drains_with_one_worker() {
    drains_in_flight_requests(1).await;
}

async fn drains_in_flight_requests(worker_threads: usize) {
    let upstream = named_upstream("slow", Duration::from_millis(1500)).await;
    let (port, metrics_port) = (free_port(), free_port());
    let text = router_config(port, metrics_port, upstream, "/").replace(
        "[server]\n",
        &format!("[server]\nworker_threads = {worker_threads}\n"),
    );
    let config = temp_config(&text);
    let mut process = Process::start(&["--config", config.path().to_str().unwrap()]);
    wait_until_listening(port).await;
    wait_until_listening(metrics_port).await;

    let client = client();
    let health = client
        .get(format!("http://127.0.0.1:{metrics_port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/slow"))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let draining = client
        .get(format!("http://127.0.0.1:{metrics_port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(draining.status(), 503);
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(
        refused.is_err(),
        "the data plane still accepts connections while draining"
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slow");
    let code = tokio::task::spawn_blocking(move || process.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sighup_reloads_and_keeps_good_config_on_error() {
    let upstream = named_upstream("origin", Duration::ZERO).await;
    let (port, metrics_port) = (free_port(), free_port());
    let config = temp_config(&router_config(port, metrics_port, upstream, "/old/"));
    let path = config.path().to_path_buf();
    let process = Process::start(&["--config", path.to_str().unwrap()]);
    wait_until_listening(port).await;
    let client = client();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    assert_eq!(
        client.get(url("/old/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client.get(url("/new/x")).send().await.unwrap().status(),
        404
    );

    std::fs::write(&path, router_config(port, metrics_port, upstream, "/new/")).unwrap();
    process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.get(url("/new/x")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "reload did not take effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.get(url("/old/x")).send().await.unwrap().status(),
        404
    );

    std::fs::write(
        &path,
        "[[routes]]\nname = \"broken\"\nupstream = \"nowhere\"\n",
    )
    .unwrap();
    process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status: serde_json::Value = client
            .get(url("/config/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["last_reload"]["ok"] == false {
            let error = status["last_reload"]["error"].as_str().unwrap();
            assert!(error.contains("nowhere"), "{error}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed reload not reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.get(url("/new/x")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn demo_routes_balances_and_fails_over() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let args: Vec<String> = vec![
        "demo".into(),
        "--port".into(),
        ports[0].to_string(),
        "--metrics-port".into(),
        ports[1].to_string(),
        "--upstream-ports".into(),
        ports[2].to_string(),
        ports[3].to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _process = Process::start(&args);
    wait_until_listening(ports[0]).await;
    wait_until_listening(ports[2]).await;
    wait_until_listening(ports[3]).await;

    let client = client();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", ports[0]);
    let upstream_of = |body: serde_json::Value| body["upstream"].as_str().unwrap().to_string();

    let alpha: serde_json::Value = client
        .get(url("/alpha/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upstream_of(alpha), "alpha");
    let beta: serde_json::Value = client
        .get(url("/anything"))
        .header("host", "beta.demo.test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upstream_of(beta), "beta");

    // The key table routes by the x-tenant-id header, and an admin batch
    // moves a tenant without a reload.
    let tenant_upstream = |tenant: &'static str| {
        let request = client.get(url("/tenants/")).header("x-tenant-id", tenant);
        async move {
            let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            upstream_of(body)
        }
    };
    assert_eq!(tenant_upstream("globex").await, "beta");
    assert_eq!(tenant_upstream("acme").await, "alpha");
    assert_eq!(tenant_upstream("initech").await, "alpha");
    let moved = client
        .post(url("/admin/keys"))
        .body(r#"{"table": "tenants", "upsert": {"acme": "beta"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    assert_eq!(tenant_upstream("acme").await, "beta");

    let mut seen = Vec::new();
    for _ in 0..4 {
        let body: serde_json::Value = client
            .get(url("/lb/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.push(upstream_of(body));
    }
    assert!(
        seen.contains(&"alpha".to_string()) && seen.contains(&"beta".to_string()),
        "{seen:?}"
    );

    // The requests follow the stop at once, as when the printed steps are
    // pasted together.
    let stopped = client
        .post(format!("http://127.0.0.1:{}/stop", ports[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 200);
    for _ in 0..6 {
        let response = client.get(url("/lb/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(upstream_of(body), "beta");
    }
    assert_eq!(
        client.get(url("/nowhere")).send().await.unwrap().status(),
        404
    );

    // The demo has no config file to reread, and the error names the cause.
    let reload = client
        .post(url("/admin/config/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 422);
    let body: serde_json::Value = reload.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("demo's embedded config"), "{body}");
    assert!(error.contains("--config FILE"), "{body}");
}

#[tokio::test]
async fn log_file_written_and_reopened_on_sighup() {
    let upstream = named_upstream("origin", Duration::ZERO).await;
    let (port, metrics_port) = (free_port(), free_port());
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("logs/valkyrie.log");
    let text = router_config(port, metrics_port, upstream, "/").replace(
        "[logging]\nlevel = \"warn\"",
        &format!(
            "[logging]\nlevel = \"info\"\nformat = \"json\"\nfile = \"{}\"",
            log.display()
        ),
    );
    let config = temp_config(&text);
    let process = Process::start(&["--config", config.path().to_str().unwrap()]);
    wait_until_listening(port).await;
    let client = client();
    assert_eq!(
        client
            .get(format!("http://127.0.0.1:{port}/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let read_log = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read_log(&log).contains("\"target\":\"access\"") {
        assert!(
            Instant::now() < deadline,
            "no access line in {}",
            read_log(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = read_log(&log);
    assert!(first.contains("valkyrie started"), "{first}");
    let access = first
        .lines()
        .find(|line| line.contains("\"target\":\"access\""))
        .unwrap();
    let access: serde_json::Value = serde_json::from_str(access).unwrap();
    assert_eq!(access["route"], "origin");
    assert_eq!(access["upstream"], "origin");
    assert_eq!(access["status"], 200);
    assert_eq!(access["response_bytes"], 6);

    // logrotate moves the file away, then SIGHUP makes the router open a new one.
    let rotated = directory.path().join("logs/valkyrie.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read_log(&log).contains("log file reopened") {
        assert!(Instant::now() < deadline, "the log file was not reopened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!read_log(&rotated).contains("log file reopened"));
}
