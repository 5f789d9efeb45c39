//! The metrics endpoint against a live process: every documented name is
//! exported, values follow the traffic, and the runbook's grep and awk
//! lines print numbers.

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs a shell pipeline over the metrics text, as the runbook does.
fn pipeline(metrics: &str, command: &str) -> String {
    let mut child = Command::new("bash")
        .args(["-c", command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Names the product documents, each of which must appear in a scrape.
const DOCUMENTED: &[&str] = &[
    "valkyrie_routing_requests_total",
    "valkyrie_routing_errors_total",
    "valkyrie_routing_request_duration_seconds",
    "valkyrie_routing_requests_rate",
    "valkyrie_fit_collisions_total",
    "valkyrie_fit_operations_total",
    "valkyrie_cra_fragmentation",
    "valkyrie_rcu_grace_period_seconds",
    "valkyrie_connection_pool_size",
    "valkyrie_connection_pool_active",
    "valkyrie_connection_pool_idle",
    "valkyrie_connection_pool_utilization",
    "valkyrie_cache_hits_total",
    "valkyrie_cache_misses_total",
    "valkyrie_cache_hit_rate",
    "valkyrie_request_queue_depth",
    "valkyrie_active_routes",
    "valkyrie_rate_limit_rejected",
    "valkyrie_memory_usage_bytes",
    "process_resident_memory_bytes",
    "valkyrie_build_info",
];

#[tokio::test]
async fn metrics_follow_traffic_and_runbook_greps_work() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = upstream.accept().await else {
                continue;
            };
            tokio::spawn(async move {
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

    let (port, metrics_port) = (free_port(), free_port());
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        file,
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
endpoints = ["{upstream_address}"]
[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "origin"
"#
    )
    .unwrap();
    let _process = Process(
        Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
            .args(["--config", file.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_listening(port).await;
    wait_until_listening(metrics_port).await;

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..30 {
        let response = client
            .get(format!("http://127.0.0.1:{port}/api/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for _ in 0..4 {
        let response = client
            .get(format!("http://127.0.0.1:{port}/unrouted"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }

    let metrics = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in DOCUMENTED {
        assert!(metrics.contains(name), "{name} missing from the scrape");
    }

    let total = pipeline(
        &metrics,
        "grep valkyrie_routing_requests_total | tail -1 | awk '{print $2}'",
    );
    assert_eq!(total, "34");
    let errors = pipeline(
        &metrics,
        "grep valkyrie_routing_errors_total | tail -1 | awk '{print $2}'",
    );
    assert_eq!(errors, "4");
    let route = pipeline(
        &metrics,
        "grep 'valkyrie_routing_requests_total{route=\"api\"}' | awk '{print $2}'",
    );
    assert_eq!(route, "30");
    let p99 = pipeline(
        &metrics,
        "grep valkyrie_routing_request_duration_seconds | grep quantile=\\\"0.99\\\" | awk '{print $2}'",
    );
    let p99: f64 = p99
        .parse()
        .unwrap_or_else(|_| panic!("p99 is not a number: {p99:?}"));
    assert!(p99 > 0.0 && p99 < 1.0, "p99 {p99}");
    let monitor_p99 = pipeline(&metrics, "grep quantile=\\\"0.99\\\" | awk '{print $2}'");
    assert_eq!(monitor_p99.lines().count(), 1, "{monitor_p99}");
    let rate = pipeline(&metrics, "grep rate | head -1 | awk '{print $2}'");
    let rate: f64 = rate
        .parse()
        .unwrap_or_else(|_| panic!("rate is not a number: {rate:?}"));
    assert!(rate > 0.0);
    let count = pipeline(
        &metrics,
        "grep valkyrie_routing_request_duration_seconds_count | awk '{print $2}'",
    );
    assert_eq!(count, "30");
    let active_routes = pipeline(
        &metrics,
        "grep '^valkyrie_active_routes ' | awk '{print $2}'",
    );
    assert_eq!(active_routes, "1");
    let pool = pipeline(
        &metrics,
        "grep 'valkyrie_connection_pool_idle{upstream=\"origin\"}' | awk '{print $2}'",
    );
    assert_eq!(pool, "1");
    let memory = pipeline(
        &metrics,
        "grep '^valkyrie_memory_usage_bytes ' | awk '{print $2}'",
    );
    assert!(memory.parse::<u64>().unwrap() > 0);
}
