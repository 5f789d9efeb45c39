//! TLS as operators run it with the binary: `--validate-config` file checks,
//! certificates swapped on SIGHUP while connections stay open, the `tls`
//! block of `/config/status`, the expiry gauge and the HTTPS redirect.

#[path = "../../valkyrie-proxy/tests/tls_support/mod.rs"]
mod tls_support;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tls_support::{client_config, connect, peer_leaf, Ca, Leaf, Sender, TempDir, ALL_VERSIONS};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_valkyrie-routing")
}

/// Returns a port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A router process, killed when dropped.
struct Process {
    child: Child,
}

impl Process {
    fn start(config: &Path) -> Process {
        let child = Command::new(binary())
            .arg("--config")
            .arg(config)
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

/// Runs `--validate-config` and returns the exit code and both outputs.
fn validate(config: &Path) -> (i32, String, String) {
    let output = Command::new(binary())
        .arg("--validate-config")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Returns the line of `text` that contains `needle`, counted from 1.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("no line contains {needle}"))
}

#[test]
fn validate_config_checks_certificate_files() {
    let dir = TempDir::new("validate-tls");
    let ca = Ca::new("validate CA");
    let now = SystemTime::now();
    let good = ca.issue(&["default.test"]);
    let api = ca.issue(&["api.test"]);
    let other = ca.issue(&["api.test"]);
    let expired = ca.issue_valid(
        &["old.test"],
        now - Duration::from_secs(30 * 86_400),
        now - Duration::from_secs(2 * 86_400),
    );
    let (good_cert, good_key) = good.write(&dir.path, "good");
    let (api_cert, _) = api.write(&dir.path, "api");
    let (_, other_key) = other.write(&dir.path, "other");
    let (expired_cert, expired_key) = expired.write(&dir.path, "expired");

    let valid = format!(
        "[security]\nenable_tls = true\ntls_listen = [\"127.0.0.1:{}\"]\ntls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n",
        free_port(),
        good_cert.display(),
        good_key.display()
    );
    let valid_path = dir.join("valid.toml");
    std::fs::write(&valid_path, &valid).unwrap();
    let (code, stdout, stderr) = validate(&valid_path);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "configuration OK");

    let broken = format!(
        r#"{valid}
[[security.certificates]]
server_names = ["api.test"]
cert_path = "{}"
key_path = "{}"

[[security.certificates]]
server_names = ["old.test"]
cert_path = "{}"
key_path = "{}"

[[security.certificates]]
server_names = ["gone.test"]
cert_path = "{}"
key_path = "{}"
"#,
        api_cert.display(),
        other_key.display(),
        expired_cert.display(),
        expired_key.display(),
        dir.join("missing.pem").display(),
        good_key.display(),
    );
    let broken_path = dir.join("broken.toml");
    std::fs::write(&broken_path, &broken).unwrap();
    let (code, stdout, stderr) = validate(&broken_path);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stdout.contains("configuration OK"));
    let file = broken_path.display();

    let mismatch_line = line_of(&broken, &other_key.display().to_string());
    let mismatch = format!(
        "{file}:{mismatch_line}:1: `security.certificates[0].key_path`: the private key in {} does not match the certificate in {}",
        other_key.display(),
        api_cert.display()
    );
    assert!(
        stderr.contains(&mismatch),
        "missing {mismatch:?} in:\n{stderr}"
    );

    let expired_line = line_of(&broken, &expired_cert.display().to_string());
    let expired_message = format!(
        "{file}:{expired_line}:1: `security.certificates[1].cert_path`: the certificate in {} expired on ",
        expired_cert.display()
    );
    assert!(
        stderr.contains(&expired_message),
        "missing {expired_message:?} in:\n{stderr}"
    );

    let missing_line = line_of(&broken, "missing.pem");
    let missing = format!(
        "{file}:{missing_line}:1: `security.certificates[2].cert_path`: cannot read {}",
        dir.join("missing.pem").display()
    );
    assert!(
        stderr.contains(&missing),
        "missing {missing:?} in:\n{stderr}"
    );
    assert_eq!(stderr.matches("  hint: ").count(), 3, "{stderr}");
}

/// Writes a config with one TLS certificate for `api.test` at the given
/// files, a plain listener and a TLS listener.
fn tls_config(
    dir: &TempDir,
    ports: (u16, u16, u16),
    files: (&Path, &Path),
    upstream: std::net::SocketAddr,
    extra_server: &str,
) -> std::path::PathBuf {
    let (plain, tls, metrics) = ports;
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:{plain}"]
{extra_server}

[metrics]
listen = "127.0.0.1:{metrics}"

[logging]
level = "warn"

[security]
enable_tls = true
tls_listen = ["127.0.0.1:{tls}"]
tls_cert_path = "{default_cert}"
tls_key_path = "{default_key}"
hsts_max_age = "1d"

[[security.certificates]]
server_names = ["api.test"]
cert_path = "{cert}"
key_path = "{key}"

[[upstreams]]
name = "origin"
endpoints = ["{upstream}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "origin"
"#,
        default_cert = dir.join("default.pem").display(),
        default_key = dir.join("default-key.pem").display(),
        cert = files.0.display(),
        key = files.1.display(),
    );
    let path = dir.join("valkyrie.toml");
    tls_support::replace_file(&path, text.as_bytes());
    path
}

/// Starts a plain HTTP upstream that returns 200 `origin`.
async fn origin() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from("origin")),
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

/// Certificates for the running-binary tests.
struct Setup {
    dir: TempDir,
    ca: Ca,
    api: Leaf,
    ports: (u16, u16, u16),
}

fn setup() -> Setup {
    let dir = TempDir::new("binary-tls");
    let ca = Ca::new("binary CA");
    ca.issue(&["default.test"]).write(&dir.path, "default");
    let api = ca.issue(&["api.test"]);
    api.write(&dir.path, "api");
    Setup {
        dir,
        ca,
        api,
        ports: (free_port(), free_port(), free_port()),
    }
}

#[tokio::test]
async fn sighup_swaps_certificate_keeping_connections() {
    let setup = setup();
    let upstream = origin().await;
    let config = tls_config(
        &setup.dir,
        setup.ports,
        (&setup.dir.join("api.pem"), &setup.dir.join("api-key.pem")),
        upstream,
        "",
    );
    let process = Process::start(&config);
    let (_, tls_port, _) = setup.ports;
    wait_until_listening(tls_port).await;
    let address = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let client = client_config(setup.ca.roots(), ALL_VERSIONS, &[b"http/1.1"], None);

    let stream = connect(address, "api.test", client.clone()).await.unwrap();
    assert!(peer_leaf(&stream) == setup.api.der);
    let mut open = Sender::start(stream).await;
    let answer = open.get("api.test", "/before").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "origin");

    // New files under new names, so only the reload can find them: the
    // file watcher follows the paths of the running configuration.
    let renewed = setup.ca.issue(&["api.test"]);
    let (cert, key) = renewed.write(&setup.dir.path, "api-2025");
    tls_config(&setup.dir, setup.ports, (&cert, &key), upstream, "");
    process.signal("HUP");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut swapped = false;
    while Instant::now() < deadline && !swapped {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(stream) = connect(address, "api.test", client.clone()).await {
            swapped = peer_leaf(&stream) == renewed.der;
        }
    }
    assert!(
        swapped,
        "new handshakes still get the old certificate after SIGHUP"
    );

    let answer = open.get("api.test", "/after").await.unwrap();
    assert_eq!(
        answer.status, 200,
        "the connection opened before the reload broke"
    );
    assert_eq!(answer.headers["strict-transport-security"], "max-age=86400");
}

#[tokio::test]
async fn status_and_metrics_report_certificates() {
    let setup = setup();
    let upstream = origin().await;
    let config = tls_config(
        &setup.dir,
        setup.ports,
        (&setup.dir.join("api.pem"), &setup.dir.join("api-key.pem")),
        upstream,
        "",
    );
    let _process = Process::start(&config);
    let (plain, _, metrics) = setup.ports;
    wait_until_listening(plain).await;
    wait_until_listening(metrics).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let status: serde_json::Value = client
        .get(format!("http://127.0.0.1:{plain}/config/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tls = &status["tls"];
    assert_eq!(tls["min_version"], "1.2", "{status}");
    let certificates = tls["certificates"].as_array().unwrap();
    assert_eq!(certificates.len(), 2, "{status}");
    assert_eq!(certificates[0]["default"], true);
    let api = &certificates[1];
    assert_eq!(api["names"], serde_json::json!(["api.test"]));
    assert_eq!(api["file"], setup.dir.join("api.pem").display().to_string());
    assert!(api["not_after"].as_str().unwrap().ends_with('Z'), "{api}");
    assert!(api["last_error"].is_null(), "{api}");

    // A broken replacement shows up with the old certificate still served.
    tls_support::replace_file(
        &setup.dir.join("api-key.pem"),
        Ca::new("x").issue(&["x.test"]).key_pem.as_bytes(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut error = serde_json::Value::Null;
    while Instant::now() < deadline && error.is_null() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status: serde_json::Value = client
            .get(format!("http://127.0.0.1:{plain}/config/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        error = status["tls"]["certificates"][1]["last_error"].clone();
    }
    assert!(
        error.as_str().unwrap_or("").contains("does not match"),
        "{error}"
    );

    let text = client
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = text
        .lines()
        .find(|line| line.starts_with("valkyrie_tls_certificate_expiry_seconds{name=\"api.test\""))
        .unwrap_or_else(|| panic!("no expiry sample for api.test in:\n{text}"));
    let seconds: f64 = sample.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        seconds > 364.0 * 86_400.0 && seconds <= 365.0 * 86_400.0,
        "{sample}"
    );
    assert!(text.contains("# TYPE valkyrie_tls_certificate_expiry_seconds gauge"));
}

#[tokio::test]
async fn redirect_keeps_health_probes() {
    let setup = setup();
    let upstream = origin().await;
    let config = tls_config(
        &setup.dir,
        setup.ports,
        (&setup.dir.join("api.pem"), &setup.dir.join("api-key.pem")),
        upstream,
        "redirect_to_https = true",
    );
    let _process = Process::start(&config);
    let (plain, tls_port, _) = setup.ports;
    wait_until_listening(plain).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    for path in ["/health", "/ready"] {
        let response = client
            .get(format!("http://127.0.0.1:{plain}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = client
        .get(format!("http://127.0.0.1:{plain}/orders?page=2"))
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://api.test:{tls_port}/orders?page=2").as_str()
    );
}
