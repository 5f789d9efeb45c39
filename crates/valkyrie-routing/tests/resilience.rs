//! Resilience as operators see it on a running binary: `/ready` waiting for
//! health checks, the circuit-breaker and deny-list admin endpoints, and
//! the breaker, retry and queue metrics.

#[path = "../../valkyrie-proxy/tests/resilience_support/mod.rs"]
mod resilience_support;

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resilience_support::{wait_until, Mode, TestServer, CHECK_PATH, HOLD};
use serde_json::{json, Value};

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

fn start(config: &Path) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
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

fn write_config(file: &mut tempfile::NamedTempFile, text: &str) {
    let file = file.as_file_mut();
    file.set_len(0).unwrap();
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
}

fn temp_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write_config(&mut file, text);
    file
}

/// The ports of one router process.
struct Ports {
    data: u16,
    metrics: u16,
    admin: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            data: free_port(),
            metrics: free_port(),
            admin: free_port(),
        }
    }

    fn data(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.data)
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn metrics(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics)
    }

    /// Returns the `[server]`, `[metrics]`, `[admin]`, `[logging]` and
    /// `[security]` sections.
    fn sections(&self, extra_security: &str) -> String {
        format!(
            r#"
[server]
listen = ["127.0.0.1:{}"]
[metrics]
listen = "127.0.0.1:{}"
[admin]
listen = "127.0.0.1:{}"
[logging]
level = "warn"
access_log = false
[security]
{extra_security}
"#,
            self.data, self.metrics, self.admin
        )
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post_json(client: &reqwest::Client, url: &str, body: Option<&str>) -> (u16, Value) {
    let mut request = client.post(url);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Returns the value of the sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn endpoint<'a>(upstreams: &'a Value, upstream: &str, address: &str) -> &'a Value {
    upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == upstream)
        .unwrap()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["address"] == address)
        .unwrap()
}

#[tokio::test]
async fn ready_waits_for_first_health_round() {
    let server = TestServer::start("gated", Mode::Ok).await;
    server.set_health(HOLD);
    let ports = Ports::new();
    let file = temp_config(&format!(
        r#"{}
[[upstreams]]
name = "api"
endpoints = ["{}"]
[upstreams.health_check]
path = "{CHECK_PATH}"
interval = "100ms"
timeout = "30s"

[[routes]]
name = "all"
upstream = "api"
"#,
        ports.sections(""),
        server.address
    ));
    let _process = start(file.path());
    wait_until_listening(ports.data).await;
    let client = client();

    assert!(wait_until(Duration::from_secs(5), || server.health_checks() >= 1).await);
    let (status, body) = get_json(&client, &ports.data("/ready")).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "checking_upstream_health");
    assert_eq!(body["upstreams_without_health"], json!(["api"]));

    server.set_health(200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get_json(&client, &ports.data("/ready")).await;
        if status == 200 {
            assert_eq!(body["status"], "ready");
            break;
        }
        assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, upstreams) = get_json(&client, &ports.admin("/admin/upstreams")).await;
    let entry = endpoint(&upstreams, "api", &server.endpoint());
    assert_eq!(entry["active_health"], "healthy");
    assert_eq!(entry["healthy"], true);
}

#[tokio::test]
async fn circuit_breaker_admin_endpoints() {
    let first = TestServer::start("first", Mode::Ok).await;
    let second = TestServer::start("second", Mode::Ok).await;
    let ports = Ports::new();
    let file = temp_config(&format!(
        r#"{}
[[upstreams]]
name = "api"
endpoints = ["{}", "{}"]

[[routes]]
name = "all"
upstream = "api"
"#,
        ports.sections(""),
        first.address,
        second.address
    ));
    let _process = start(file.path());
    wait_until_listening(ports.admin).await;
    let client = client();
    let enable = ports.admin("/admin/circuit-breaker/enable");

    let target = format!(
        r#"{{"upstream": "api", "endpoint": "{}"}}"#,
        first.endpoint()
    );
    let (status, body) = post_json(&client, &enable, Some(&target)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["affected"].as_array().unwrap().len(), 1);
    assert_eq!(body["affected"][0]["endpoint"], first.endpoint());
    assert_eq!(body["affected"][0]["state"], "open");

    let (_, upstreams) = get_json(&client, &ports.admin("/admin/upstreams")).await;
    let forced = &endpoint(&upstreams, "api", &first.endpoint())["breaker"];
    assert_eq!(forced["state"], "open");
    assert_eq!(forced["mode"], "forced_open");
    assert_eq!(forced["consecutive_failures"], 0);
    let other = &endpoint(&upstreams, "api", &second.endpoint())["breaker"];
    assert_eq!(other["state"], "closed");
    assert_eq!(other["mode"], "auto");

    for _ in 0..6 {
        let response = client.get(ports.data("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        first.requests(),
        0,
        "a forced-open endpoint gets no traffic"
    );
    assert_eq!(second.requests(), 6);

    let metrics = client
        .get(ports.metrics())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let state_sample = format!(
        "valkyrie_circuit_breaker_state{{upstream=\"api\",endpoint=\"{}\"}}",
        first.endpoint()
    );
    assert_eq!(sample(&metrics, &state_sample), Some(1.0), "{metrics}");
    assert!(
        sample(
            &metrics,
            "valkyrie_circuit_breaker_transitions_total{upstream=\"api\"}"
        )
        .unwrap()
            >= 1.0
    );

    // Unknown names and malformed bodies.
    let (status, body) = post_json(&client, &enable, Some(r#"{"upstream": "nope"}"#)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let (status, _) = post_json(
        &client,
        &enable,
        Some(r#"{"upstream": "api", "endpoint": "192.0.2.1:1"}"#),
    )
    .await;
    assert_eq!(status, 404);
    for malformed in [
        r#"{"upstream": "api""#,
        r#"{"upstream": 5}"#,
        r#"{"name": "api"}"#,
    ] {
        let (status, body) = post_json(&client, &enable, Some(malformed)).await;
        assert_eq!(status, 400, "{malformed}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
    let response = client.get(&enable).send().await.unwrap();
    assert_eq!(response.status(), 405);

    // Without a body: every endpoint.
    let (status, body) = post_json(
        &client,
        &ports.admin("/admin/circuit-breaker/disable"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["affected"].as_array().unwrap().len(), 2);
    assert_eq!(body["mode"], "forced_closed");
    let (status, body) =
        post_json(&client, &ports.admin("/admin/circuit-breaker/reset"), None).await;
    assert_eq!(status, 200);
    for affected in body["affected"].as_array().unwrap() {
        assert_eq!(affected["state"], "closed");
        assert_eq!(affected["mode"], "auto");
    }

    let (status, _) = post_json(&client, &enable, None).await;
    assert_eq!(status, 200);
    let response = client.get(ports.data("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "circuit_open");
}

#[tokio::test]
async fn deny_list_admin_api_without_reload() {
    let server = TestServer::start("origin", Mode::Ok).await;
    let ports = Ports::new();
    let routes = format!(
        r#"
[[upstreams]]
name = "api"
endpoints = ["{}"]

[[routes]]
name = "all"
upstream = "api"
"#,
        server.address
    );
    let mut file = temp_config(&format!(
        "{}{routes}",
        ports.sections("deny_list = [\"192.0.2.0/24\"]")
    ));
    let _process = start(file.path());
    wait_until_listening(ports.admin).await;
    wait_until_listening(ports.data).await;
    let client = client();
    let deny_list = ports.admin("/admin/deny-list");

    let (status, body) = get_json(&client, &deny_list).await;
    assert_eq!(status, 200);
    assert_eq!(body["config"], json!(["192.0.2.0/24"]));
    assert_eq!(body["added"], json!([]));

    let (status, body) = post_json(&client, &deny_list, Some(r#"{"add": ["127.0.0.1"]}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective"], json!(["192.0.2.0/24", "127.0.0.1"]));
    assert!(
        data_plane_closed(ports.data).await,
        "the new entry applies at once"
    );
    assert_eq!(server.requests(), 0);

    // A reload of the unchanged file keeps the entry.
    let (status, _) = post_json(&client, &ports.admin("/admin/config/reload"), None).await;
    assert_eq!(status, 200);
    assert!(data_plane_closed(ports.data).await);

    let (status, body) = post_json(&client, &deny_list, Some(r#"{"add": ["not-an-ip"]}"#)).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("not-an-ip"));
    let (status, _) = post_json(&client, &deny_list, Some("[]")).await;
    assert_eq!(status, 400);

    let (status, body) =
        post_json(&client, &deny_list, Some(r#"{"remove": ["127.0.0.1/32"]}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(body["effective"], json!(["192.0.2.0/24"]));
    let response = client.get(ports.data("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // A reload that changes deny_list replaces the admin changes.
    post_json(&client, &deny_list, Some(r#"{"add": ["198.51.100.7"]}"#)).await;
    write_config(
        &mut file,
        &format!(
            "{}{routes}",
            ports.sections("deny_list = [\"127.0.0.0/8\"]")
        ),
    );
    let (status, body) = post_json(&client, &ports.admin("/admin/config/reload"), None).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = get_json(&client, &deny_list).await;
    assert_eq!(body["effective"], json!(["127.0.0.0/8"]));
    assert!(data_plane_closed(ports.data).await);
}

/// Returns true when the data plane closes a new connection without
/// answering a request on it.
async fn data_plane_closed(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buffer = [0u8; 256];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn queue_depth_gauge_counts_waiting_requests() {
    let slow = TestServer::start("slow", Mode::Slow(Duration::from_millis(1500))).await;
    let ports = Ports::new();
    let file = temp_config(&format!(
        r#"{}
[routing]
max_concurrent_requests = 1
queue_timeout = "5s"

[[upstreams]]
name = "api"
endpoints = ["{}"]

[[routes]]
name = "all"
upstream = "api"
"#,
        ports.sections(""),
        slow.address
    ));
    let _process = start(file.path());
    wait_until_listening(ports.data).await;
    wait_until_listening(ports.metrics).await;

    let first = tokio::spawn(client().get(ports.data("/first")).send());
    assert!(wait_until(Duration::from_secs(5), || slow.requests() == 1).await);
    let second = tokio::spawn(client().get(ports.data("/second")).send());

    let scraper = client();
    let deadline = Instant::now() + Duration::from_secs(5);
    let depth = loop {
        let metrics = scraper
            .get(ports.metrics())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let depth = sample(&metrics, "valkyrie_request_queue_depth ").unwrap();
        if depth > 0.0 || Instant::now() >= deadline {
            break depth;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(depth, 1.0);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    let metrics = scraper
        .get(ports.metrics())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sample(&metrics, "valkyrie_request_queue_depth "), Some(0.0));
}

#[tokio::test]
async fn retry_metrics_count_retries_and_spent_budget() {
    let failing = TestServer::start("failing", Mode::Status(503)).await;
    let healthy = TestServer::start("healthy", Mode::Ok).await;
    let ports = Ports::new();
    let file = temp_config(&format!(
        r#"{}
[[upstreams]]
name = "generous"
endpoints = ["{failing}", "{healthy}"]
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
enable = false
[upstreams.retries]
budget_min_per_sec = 1000

[[upstreams]]
name = "stingy"
endpoints = ["{failing}", "{healthy}"]
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
enable = false
[upstreams.retries]
budget_ratio = 0.0
budget_min_per_sec = 0

[[routes]]
name = "generous"
path_prefix = "/generous"
upstream = "generous"

[[routes]]
name = "stingy"
path_prefix = "/stingy"
upstream = "stingy"
"#,
        ports.sections(""),
        failing = failing.address,
        healthy = healthy.address,
    ));
    let _process = start(file.path());
    wait_until_listening(ports.data).await;
    wait_until_listening(ports.metrics).await;
    let client = client();
    for _ in 0..6 {
        let response = client.get(ports.data("/generous")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        client.get(ports.data("/stingy")).send().await.unwrap();
    }
    let metrics = client
        .get(ports.metrics())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retries = sample(&metrics, "valkyrie_retries_total{upstream=\"generous\"}").unwrap();
    assert!(retries >= 3.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "valkyrie_retries_total{upstream=\"stingy\"}"),
        Some(0.0)
    );
    let exhausted = sample(
        &metrics,
        "valkyrie_retry_budget_exhausted_total{upstream=\"stingy\"}",
    )
    .unwrap();
    assert!(exhausted >= 3.0, "{metrics}");
}
