//! Checks that the deployment files name the ports, paths, signals and
//! metrics that the binary really uses. The files are the Dockerfile,
//! docker-compose.yml, the Kubernetes manifests, the systemd unit, the
//! Prometheus alerts and the Grafana dashboard. Some tests read them, and
//! others run the binary on a copy of config/production.toml.
//!
//! The YAML files are read line by line: each check looks for `key: value`
//! lines, which is how the manifests are written.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG_PATH: &str = "/app/config/production.toml";

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_valkyrie-routing")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn production() -> toml::Table {
    read("config/production.toml").parse().unwrap()
}

fn table<'a>(config: &'a toml::Table, name: &str) -> &'a toml::Table {
    config[name].as_table().unwrap()
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Ports of `[server] listen` and `[metrics] listen` in production.toml.
fn production_ports() -> (BTreeSet<u16>, u16) {
    let config = production();
    let data: BTreeSet<u16> = table(&config, "server")["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|address| port_of(address.as_str().unwrap()))
        .collect();
    let metrics = port_of(table(&config, "metrics")["listen"].as_str().unwrap());
    (data, metrics)
}

/// Parses a duration the way the config writes them: "30s", "500ms".
fn seconds(text: &str) -> f64 {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    let value: f64 = digits.parse().unwrap();
    match &text[digits.len()..] {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        unit => panic!("unexpected duration unit `{unit}` in {text}"),
    }
}

fn graceful_shutdown_seconds() -> f64 {
    let config = production();
    seconds(
        table(&config, "server")["graceful_shutdown_timeout"]
            .as_str()
            .unwrap(),
    )
}

/// Values of every `key: value` line (list items included) in a YAML text,
/// without quotes.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    text.lines()
        .map(|line| line.trim().trim_start_matches("- ").trim())
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().trim_matches('"').to_string())
        .collect()
}

fn yaml_value(text: &str, key: &str) -> String {
    let values = yaml_values(text, key);
    assert_eq!(
        values.len(),
        1,
        "expected one `{key}:` line, got {values:?}"
    );
    values[0].clone()
}

/// Returns the lines under the first line ending in `header` that are
/// indented deeper than it: the body of that YAML block.
fn yaml_block<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim_end().ends_with(header))
        .unwrap_or_else(|| panic!("no line ending in `{header}`"));
    let indent = lines[start].len() - lines[start].trim_start().len();
    lines[start + 1..]
        .iter()
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() > indent)
        .copied()
        .collect()
}

/// Words in `text` that start with `valkyrie_`: the metric names an
/// expression uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("valkyrie_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one HTTP/1.1 GET and returns the status code and body.
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `path` until it returns `expected` or `limit` passes; returns the
/// last status and body.
fn wait_for_status(
    address: SocketAddr,
    path: &str,
    expected: u16,
    limit: Duration,
) -> (u16, String) {
    let deadline = Instant::now() + limit;
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        if let Ok(response) = http_get(address, path) {
            if response.0 == expected {
                return response;
            }
            last = response;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    last
}

/// Starts a thread that responds 200 to the first request on each of up
/// to 1000 connections, then closes the connection.
fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buffer = [0u8; 4096];
            if matches!(stream.read(&mut buffer), Ok(read) if read > 0) {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        }
    });
    address
}

/// The binary serving a loopback copy of config/production.toml.
struct Router {
    child: Child,
    data: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Router {
    /// Starts the binary on a copy of production.toml. In the copy, the
    /// listeners move to free loopback ports and the log and TLS files to a
    /// temporary folder. A local server replaces the demo upstream. Redis
    /// points at a closed port, so the rate limiter runs on its local
    /// fallback, and a lowered limit lets a few requests cause rejections.
    fn start() -> Router {
        let dir = tempfile::tempdir().unwrap();
        let upstream = start_upstream();
        let data: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls_port = free_port();
        let redis_port = free_port();

        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, certified.cert.pem()).unwrap();
        std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();

        let mut config: toml_edit::DocumentMut = read("config/production.toml").parse().unwrap();
        let mut listen = toml_edit::Array::new();
        listen.push(data.to_string());
        config["server"]["listen"] = toml_edit::value(listen);
        config["server"]["graceful_shutdown_timeout"] = toml_edit::value("5s");
        config["metrics"]["listen"] = toml_edit::value(metrics.to_string());
        config["logging"]["file"] =
            toml_edit::value(dir.path().join("valkyrie.log").display().to_string());
        config["security"]["enable_tls"] = toml_edit::value(true);
        let mut tls_listen = toml_edit::Array::new();
        tls_listen.push(format!("127.0.0.1:{tls_port}"));
        config["security"]["tls_listen"] = toml_edit::value(tls_listen);
        config["security"]["tls_cert_path"] = toml_edit::value(cert_path.display().to_string());
        config["security"]["tls_key_path"] = toml_edit::value(key_path.display().to_string());
        config["security"]["rate_limiting"]["default_rate"] = toml_edit::value("2/min");
        config["security"]["rate_limiting"]["burst_size"] = toml_edit::value(2);
        config["redis"]["url"] = toml_edit::value(format!("redis://127.0.0.1:{redis_port}"));
        let upstreams = config["upstreams"].as_array_of_tables_mut().unwrap();
        let demo = upstreams.get_mut(0).unwrap();
        let mut endpoints = toml_edit::Array::new();
        endpoints.push(upstream.to_string());
        demo["endpoints"] = toml_edit::value(endpoints);
        demo["health_check"]["interval"] = toml_edit::value("100ms");

        let config_path = dir.path().join("production.toml");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let child = Command::new(binary())
            .arg("--config")
            .arg(&config_path)
            .env("VALKYRIE_ADMIN_TOKEN", "deployment-test-token")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let router = Router {
            child,
            data,
            metrics,
            _dir: dir,
        };
        let (status, body) = wait_for_status(data, "/health", 200, Duration::from_secs(20));
        assert_eq!(
            status, 200,
            "the router did not start: /health returned {body}"
        );
        router
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

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

impl Drop for Router {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn production_config_passes_validation() {
    let output = Command::new(binary())
        .arg("--validate-config")
        .arg(workspace_root().join("config/production.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "validation failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("configuration OK"), "stdout: {stdout}");
}

#[test]
fn production_config_matches_configmap() {
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let block = yaml_block(&configmap, "production.toml: |");
    let embedded: Vec<&str> = block
        .iter()
        .map(|line| line.strip_prefix("    ").unwrap_or(line.trim()))
        .collect();
    let embedded = embedded.join("\n");
    let shipped = read("config/production.toml");
    assert_eq!(embedded.trim_end(), shipped.trim_end());
}

#[test]
fn production_config_uses_container_paths() {
    let config = production();
    let logging = table(&config, "logging");
    assert_eq!(logging["file"].as_str(), Some("/app/logs/valkyrie.log"));
    let admin = table(&config, "admin");
    assert_eq!(admin["token_env"].as_str(), Some("VALKYRIE_ADMIN_TOKEN"));
    let security = table(&config, "security");
    assert_eq!(
        security["tls_cert_path"].as_str(),
        Some("/app/config/ssl/cert.pem")
    );
    assert_eq!(
        security["tls_key_path"].as_str(),
        Some("/app/config/ssl/key.pem")
    );
    let redis = table(&config, "redis");
    assert_eq!(redis["url"].as_str(), Some("redis://redis:6379"));
}

#[test]
fn dockerfile_matches_config() {
    let dockerfile = read("Dockerfile");
    let (data, metrics) = production_ports();

    let expose: BTreeSet<u16> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace())
        .map(|port| port.parse().unwrap())
        .collect();
    let mut expected = data.clone();
    expected.insert(metrics);
    assert_eq!(expose, expected);

    let cmd = dockerfile
        .lines()
        .find(|line| line.starts_with("CMD "))
        .unwrap();
    assert!(
        cmd.contains(&format!("\"--config\", \"{CONFIG_PATH}\"")),
        "{cmd}"
    );
    assert!(
        dockerfile.contains(&format!("config/production.toml {CONFIG_PATH}")),
        "the image does not copy config/production.toml to {CONFIG_PATH}"
    );
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("mkdir -p /app/config/ssl /app/logs"));
    assert!(dockerfile.contains("USER 10001"));

    let health_port = data.iter().next().unwrap();
    assert!(
        dockerfile.contains(&format!("http://127.0.0.1:{health_port}/health")),
        "the HEALTHCHECK does not request /health on port {health_port}"
    );
    assert!(dockerfile.contains("install -y --no-install-recommends ca-certificates curl"));
}

#[test]
fn compose_matches_config() {
    let compose = read("docker-compose.yml");
    let (data, metrics) = production_ports();
    let service = yaml_block(&compose, "  valkyrie-routing:").join("\n");

    let exposed: BTreeSet<u16> = yaml_block(&service, "expose:")
        .iter()
        .map(|line| {
            line.trim()
                .trim_start_matches("- ")
                .trim_matches('"')
                .parse()
                .unwrap()
        })
        .collect();
    let mut expected = data.clone();
    expected.insert(metrics);
    assert_eq!(exposed, expected);
    assert!(
        !service.contains("ports:"),
        "valkyrie-routing publishes a fixed host port, so it cannot scale"
    );

    assert!(service.contains(&format!("[\"--config\", \"{CONFIG_PATH}\"]")));
    assert!(service.contains(&format!("./config/production.toml:{CONFIG_PATH}")));
    assert!(service.contains("VALKYRIE_ADMIN_TOKEN:"));
    assert_eq!(yaml_value(&service, "stop_signal"), "SIGTERM");
    let grace = seconds(&yaml_value(&service, "stop_grace_period"));
    assert!(grace > graceful_shutdown_seconds());

    for name in ["redis", "prometheus", "grafana", "demo-upstream", "lb"] {
        assert!(
            compose.contains(&format!("\n  {name}:\n")),
            "docker-compose.yml has no service `{name}`"
        );
    }

    // The demo upstream listens where production.toml sends traffic.
    let config = production();
    let endpoint = config["upstreams"][0]["endpoints"][0].as_str().unwrap();
    let (host, port) = endpoint.split_once(':').unwrap();
    let upstream = yaml_block(&compose, &format!("  {host}:")).join("\n");
    assert!(upstream.contains(&format!("\"--port\", \"{port}\"")));

    let haproxy = read("deploy/haproxy/haproxy.cfg");
    let data_port = data.iter().next().unwrap();
    assert!(haproxy.contains(&format!("valkyrie-routing:{data_port} check")));
    assert!(haproxy.contains("option httpchk GET /ready"));

    let prometheus = read("deploy/prometheus/prometheus.yml");
    assert_eq!(yaml_value(&prometheus, "port"), metrics.to_string());
    assert!(prometheus.contains("names: [\"valkyrie-routing\"]"));
}

#[test]
fn kubernetes_matches_config() {
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let service = read("deploy/kubernetes/service.yaml");
    let (data, metrics) = production_ports();
    let data_port = *data.iter().next().unwrap();

    for manifest in [
        "namespace.yaml",
        "configmap.yaml",
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
    ] {
        let text = read(&format!("deploy/kubernetes/{manifest}"));
        let namespaces: Vec<String> = yaml_values(&text, "namespace")
            .into_iter()
            .chain((manifest == "namespace.yaml").then(|| yaml_value(&text, "name")))
            .collect();
        assert_eq!(namespaces, ["valkyrie-routing"], "{manifest}");
    }

    assert_eq!(
        yaml_values(&deployment, "containerPort"),
        [data_port.to_string(), metrics.to_string()]
    );
    assert_eq!(yaml_values(&deployment, "name")[..1], ["valkyrie-routing"]);
    assert_eq!(
        yaml_values(&service, "port"),
        [data_port.to_string(), metrics.to_string()]
    );
    assert_eq!(yaml_values(&service, "targetPort"), ["http", "metrics"]);
    assert_eq!(
        yaml_value(&deployment, "prometheus.io/port"),
        metrics.to_string()
    );

    let liveness = yaml_block(&deployment, "livenessProbe:").join("\n");
    assert_eq!(yaml_value(&liveness, "path"), "/health");
    assert_eq!(yaml_value(&liveness, "port"), "http");
    let period: f64 = yaml_value(&liveness, "periodSeconds").parse().unwrap();
    let failures: f64 = yaml_value(&liveness, "failureThreshold").parse().unwrap();
    assert!(
        period * failures > graceful_shutdown_seconds(),
        "the liveness probe can restart a pod before its drain ends"
    );
    let readiness = yaml_block(&deployment, "readinessProbe:").join("\n");
    assert_eq!(yaml_value(&readiness, "path"), "/ready");
    assert_eq!(yaml_value(&readiness, "port"), "http");

    assert!(deployment.contains(&format!("args: [\"--config\", \"{CONFIG_PATH}\"]")));
    let mounts = yaml_values(&deployment, "mountPath");
    let config_dir = Path::new(CONFIG_PATH).parent().unwrap().to_str().unwrap();
    assert!(mounts.contains(&config_dir.to_string()), "{mounts:?}");
    assert!(mounts.contains(&"/app/logs".to_string()), "{mounts:?}");
    let projected = yaml_values(&deployment, "path");
    assert!(projected.contains(&"production.toml".to_string()));
    assert!(projected.contains(&"ssl/cert.pem".to_string()));
    assert!(projected.contains(&"ssl/key.pem".to_string()));
    assert_eq!(yaml_value(&deployment, "readOnlyRootFilesystem"), "true");
    assert_eq!(yaml_value(&deployment, "runAsNonRoot"), "true");

    let secret = read("deploy/kubernetes/secret.yaml");
    let secret_name = yaml_value(&secret, "name");
    assert!(deployment.contains(&format!("name: {secret_name}")));
    assert!(deployment.contains("name: VALKYRIE_ADMIN_TOKEN"));
    assert!(secret.contains("admin-token:"));

    // Stop sequence: preStop sleep, then the drain, both before SIGKILL.
    let grace: f64 = yaml_value(&deployment, "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    let pre_stop = yaml_value(&deployment, "command");
    let sleep: f64 = pre_stop
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .nth(1)
        .unwrap()
        .trim()
        .trim_matches('"')
        .parse()
        .unwrap();
    assert!(
        grace > graceful_shutdown_seconds() + sleep,
        "terminationGracePeriodSeconds {grace} is not above the drain plus preStop"
    );

    // The memory limit leaves room above max_heap_size.
    let limits = yaml_block(&deployment, "limits:").join("\n");
    let memory = yaml_value(&limits, "memory");
    let limit_bytes: u64 = memory.strip_suffix("Mi").unwrap().parse::<u64>().unwrap() << 20;
    let config = production();
    let heap = table(&config, "performance")["max_heap_size"]
        .as_str()
        .unwrap();
    let heap_bytes: u64 = heap.strip_suffix("GiB").unwrap().parse::<u64>().unwrap() << 30;
    assert!(
        limit_bytes > heap_bytes,
        "memory limit {memory} is not above max_heap_size {heap}"
    );

    let alerts = read("deploy/prometheus/alerts.yml");
    assert!(
        alerts.contains(&format!("valkyrie_memory_usage_bytes > 0.9 * {heap_bytes}")),
        "the memory alert does not use 90% of max_heap_size"
    );
}

#[test]
fn systemd_unit_matches_binary() {
    let unit = read("deploy/systemd/valkyrie-routing.service");
    let setting = |key: &str| -> String {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_string()
    };
    assert_eq!(setting("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(setting("KillSignal"), "SIGTERM");
    assert_eq!(
        setting("ExecStart"),
        format!("/app/valkyrie-routing --config {CONFIG_PATH}")
    );
    assert_eq!(
        setting("ExecStartPre"),
        format!("/app/valkyrie-routing --validate-config {CONFIG_PATH}")
    );
    assert!(setting("ReadWritePaths").contains("/app/logs"));
    let stop = seconds(&setting("TimeoutStopSec"));
    assert!(stop > graceful_shutdown_seconds());
}

#[test]
fn router_serves_probes_and_signals() {
    let mut router = Router::start();

    let (status, body) = http_get(router.data, "/health").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = wait_for_status(router.data, "/ready", 200, Duration::from_secs(20));
    assert_eq!(status, 200, "/ready returned {body}");
    let (status, body) = http_get(router.metrics, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");

    // ExecReload and the runbook send SIGHUP; the reload shows in /config/status.
    router.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reloaded = false;
    while Instant::now() < deadline && !reloaded {
        let (_, body) = http_get(router.data, "/config/status").unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        reloaded = status["last_reload"]["trigger"] == "SIGHUP";
        if reloaded {
            assert_eq!(status["last_reload"]["ok"], true, "{body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reloaded, "SIGHUP did not reload the configuration");

    // KillSignal, STOPSIGNAL and Kubernetes send SIGTERM: drain, then exit 0.
    router.signal("TERM");
    assert_eq!(router.wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn monitoring_metrics_appear_in_scrape() {
    let router = Router::start();

    // Five requests against a burst of two fill the per-route samples and
    // the rate-limit rejections.
    for _ in 0..5 {
        let _ = http_get(router.data, "/deployment-test");
    }

    let alerts = read("deploy/prometheus/alerts.yml");
    let dashboard = read("deploy/grafana/dashboards/valkyrie.json");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let mut expected_names = metric_names(&alerts);
    expected_names.extend(metric_names(&expressions.join("\n")));
    assert!(expected_names.contains("valkyrie_tls_certificate_expiry_seconds"));
    assert!(expected_names.contains("valkyrie_rate_limit_redis_up"));

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut missing = expected_names.clone();
    while Instant::now() < deadline && !missing.is_empty() {
        let (status, body) = http_get(router.metrics, "/metrics").unwrap();
        assert_eq!(status, 200);
        let exported: BTreeSet<String> = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        missing = expected_names.difference(&exported).cloned().collect();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(missing.is_empty(), "not in /metrics: {missing:?}");
}
