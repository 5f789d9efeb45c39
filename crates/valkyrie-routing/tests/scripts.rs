//! The operator scripts under `scripts/`, run through bash against a live
//! router on 127.0.0.1: the daily health check, config validation, the
//! performance monitor and the performance baseline.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_valkyrie-routing")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `scripts/<name>` through bash with `args`, on a blocking thread.
async fn run_script(name: &str, args: &[String], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new("bash");
    command
        .arg(script(name))
        .args(args)
        .env("VALKYRIE_BIN", binary())
        .env_remove("VALKYRIE_PID")
        .env_remove("VALKYRIE_CONFIG");
    for (key, value) in envs {
        command.env(key, value);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Returns the text after `label` on the line that starts with it.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{text}"))
        .trim()
}

/// Parses the number at the start of `value`, before any unit.
fn leading_number(value: &str) -> f64 {
    let number: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-' || *c == 'e')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("{value:?} does not start with a number"))
}

/// A router process, killed when dropped.
struct Router {
    child: Child,
    _config: tempfile::NamedTempFile,
    port: u16,
    metrics_port: u16,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a router in front of `upstream` on free ports. Another test can
/// take a port between `free_port` and the router's bind, so a router that
/// exits before it listens is started again on new ports, up to 3 times.
async fn start_router(upstream: SocketAddr) -> Router {
    let mut last_error = String::new();
    for _ in 0..3 {
        let (port, metrics_port) = (free_port(), free_port());
        let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(
            config.path(),
            format!(
                r#"
[server]
listen = ["127.0.0.1:{port}"]

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "warn"
access_log = false

[[upstreams]]
name = "origin"
endpoints = ["{upstream}"]

[[routes]]
name = "origin"
path_prefix = "/"
upstream = "origin"
"#
            ),
        )
        .unwrap();
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(binary())
            .args(["--config", config.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut router = Router {
            child,
            _config: config,
            port,
            metrics_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if is_listening(port).await && is_listening(metrics_port).await {
                return router;
            }
            if router.child.try_wait().unwrap().is_some() {
                last_error = std::fs::read_to_string(stderr.path()).unwrap_or_default();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the router on 127.0.0.1:{port} did not listen within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("the router exited before it listened, 3 times; last error:\n{last_error}");
}

async fn is_listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Starts an upstream that responds "ok" to every request.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

async fn send_requests(router: &Router, count: usize) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for i in 0..count {
        let response = client
            .get(format!("http://127.0.0.1:{}/request/{i}", router.port))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn daily_health_check_prints_numbers() {
    let upstream = upstream().await;
    let router = start_router(upstream).await;
    send_requests(&router, 25).await;

    let args = [
        "127.0.0.1".to_string(),
        router.port.to_string(),
        router.metrics_port.to_string(),
    ];
    let output = run_script("daily-health-check.sh", &args, &[]).await;
    let text = stdout_of(&output);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(
        field(&text, "Health:").starts_with("OK (HTTP 200)"),
        "{text}"
    );
    let p99 = field(&text, "P99 Latency:");
    assert!(leading_number(p99) > 0.0, "{p99}");
    assert!(leading_number(field(&text, "Total Requests:")) >= 25.0);
    assert!(leading_number(field(&text, "Request Rate:")) >= 0.0);
    assert!(leading_number(field(&text, "CPU Usage:")) >= 0.0);
    assert!(leading_number(field(&text, "Memory Usage:")) > 0.0);
    assert!(leading_number(field(&text, "Allocator Resident:")) > 0.0);
    assert_eq!(leading_number(field(&text, "Over max_heap_size:")), 0.0);
    assert_eq!(leading_number(field(&text, "Total Errors:")), 0.0);
    assert_eq!(field(&text, "Redis:"), "not configured");
    let has_ss = Command::new("ss").arg("-V").output().is_ok();
    if has_ss {
        assert_eq!(
            field(&text, "Process:"),
            router.child.id().to_string(),
            "the pid of the process listening on the data-plane port"
        );
    }
    for line in text.lines() {
        if let Some((label, value)) = line.split_once(": ") {
            assert!(
                !value.trim().is_empty(),
                "empty field {label:?} in:\n{text}"
            );
            assert!(!value.contains("missing"), "missing value in {line:?}");
        }
        assert!(
            !line.ends_with(':') || line.starts_with(char::is_numeric),
            "empty field in {line:?}"
        );
    }
}

#[tokio::test]
async fn daily_health_check_fails_without_instance() {
    let (port, metrics_port) = (free_port(), free_port());
    let args = [
        "127.0.0.1".to_string(),
        port.to_string(),
        metrics_port.to_string(),
    ];
    let output = run_script("daily-health-check.sh", &args, &[]).await;
    let text = stdout_of(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL: Health check failed"), "{text}");
    assert_eq!(field(&text, "Total Requests:"), "missing");
}

#[tokio::test]
async fn validate_config_checks_budget_as_duration() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/valkyrie.toml");
    let output = run_script("validate-config.sh", &[example.display().to_string()], &[]).await;
    let text = stdout_of(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("configuration OK"), "{text}");
    assert!(text.contains("Configuration validation passed"), "{text}");

    let example_text = std::fs::read_to_string(&example).unwrap();
    assert!(example_text.contains("performance_budget = \"82us\""));
    // "1ms" and "100us" sort before "82us" as strings, so a string
    // comparison would pass them.
    let cases = [
        ("100us", false),
        ("1ms", false),
        ("82.5us", false),
        ("1s", false),
        ("82us", true),
        ("0.05ms", true),
        ("81999ns", true),
        ("9us", true),
    ];
    for (budget, accepted) in cases {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        let text = example_text.replace(
            "performance_budget = \"82us\"",
            &format!("performance_budget = \"{budget}\""),
        );
        std::fs::write(file.path(), text).unwrap();
        let output = run_script(
            "validate-config.sh",
            &[file.path().display().to_string()],
            &[],
        )
        .await;
        let stdout = stdout_of(&output);
        assert_eq!(
            output.status.success(),
            accepted,
            "budget {budget}:\n{stdout}"
        );
        if !accepted {
            assert!(
                stdout.contains("ERROR: Performance budget"),
                "budget {budget}:\n{stdout}"
            );
        }
    }
}

#[tokio::test]
async fn validate_config_stops_on_invalid_file() {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), "[routing]\nperformance_budget = \"fast\"\n").unwrap();
    let output = run_script(
        "validate-config.sh",
        &[file.path().display().to_string()],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(!stdout_of(&output).contains("validation passed"));
}

#[tokio::test]
async fn performance_monitor_prints_count_lines() {
    let upstream = upstream().await;
    let router = start_router(upstream).await;
    send_requests(&router, 10).await;

    let args = [
        "127.0.0.1".to_string(),
        "0".to_string(),
        "3".to_string(),
        router.metrics_port.to_string(),
    ];
    let output = run_script("performance-monitor.sh", &args, &[]).await;
    let text = stdout_of(&output);
    assert!(output.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 5, "{line}");
        assert_eq!(fields[1], "P99_LATENCY", "{line}");
        assert_eq!(fields[3], "THROUGHPUT", "{line}");
        let p99: f64 = fields[2].parse().unwrap();
        let rate: f64 = fields[4].parse().unwrap();
        assert!(p99 > 0.0, "{line}");
        assert!(rate >= 0.0, "{line}");
    }
}

#[tokio::test]
async fn performance_test_report_is_banded() {
    let output = run_script("performance-test.sh", &[], &[("PERF_REQUESTS", "200")]).await;
    let text = stdout_of(&output);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(field(&text, "requests:"), "200");
    assert_eq!(field(&text, "errors:"), "0");
    assert!(field(&text, "throughput:").ends_with("req/s"), "{text}");
    for label in [
        "client latency p50:",
        "client latency p99:",
        "router-added p50:",
        "router-added p99:",
    ] {
        let band = field(&text, label);
        let (low, high) = band
            .split_once('-')
            .unwrap_or_else(|| panic!("{label} {band} is not a band"));
        assert!(leading_number(low) >= 1.0, "{label} {band}");
        assert!(leading_number(high) >= 1.0, "{label} {band}");
    }
    assert!(
        !text.contains("127.0.0.1:"),
        "ports would break the weekly diff:\n{text}"
    );
}

#[tokio::test]
async fn performance_test_fails_on_all_errors() {
    // Nothing listens on the upstream port, so every request gets 502, or
    // 503 once the endpoint's breaker opens.
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let router = start_router(closed).await;

    let args = [
        "127.0.0.1".to_string(),
        router.port.to_string(),
        router.metrics_port.to_string(),
    ];
    let output = run_script("performance-test.sh", &args, &[("PERF_REQUESTS", "20")]).await;
    let text = stdout_of(&output);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}\n{errors}");
    assert_eq!(field(&text, "requests:"), "20");
    assert_eq!(field(&text, "errors:"), "20");
    assert!(errors.contains("the first: 50"), "{errors}");
    assert!(errors.contains("set PERF_PATH"), "{errors}");
}
