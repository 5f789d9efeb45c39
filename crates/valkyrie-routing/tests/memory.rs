//! Memory operations against a live process: SIGUSR1 reports (allocator
//! statistics, or a heap profile with VALKYRIE_MEMORY_PROFILING=true),
//! SIGUSR2 and `POST /admin/memory/purge`, and the `max_heap_size` limit.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const SIGHUP: u32 = 1;
const SIGUSR1: u32 = 10;
const SIGUSR2: u32 = 12;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test router is started with, besides its listeners and one route.
#[derive(Default)]
struct Options<'a> {
    /// Extra keys of the `[logging]` table.
    logging: &'a str,
    /// Extra tables.
    tables: &'a str,
    /// The value of VALKYRIE_MEMORY_PROFILING, unset when `None`.
    profiling: Option<&'a str>,
}

/// A router process started in its own working folder, killed when dropped.
struct Router {
    child: Child,
    folder: tempfile::TempDir,
    config: PathBuf,
    stdout: PathBuf,
    port: u16,
    metrics_port: u16,
    upstream: SocketAddr,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Router {
    async fn start(upstream: SocketAddr, options: Options<'_>) -> Router {
        let folder = tempfile::tempdir().unwrap();
        let (port, metrics_port) = (free_port(), free_port());
        let config = folder.path().join("valkyrie.toml");
        std::fs::write(&config, config_text(port, metrics_port, upstream, &options)).unwrap();
        let stdout = folder.path().join("stdout.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"));
        command
            .args(["--config", config.to_str().unwrap()])
            .current_dir(folder.path())
            .env_remove("VALKYRIE_MEMORY_PROFILING")
            .env_remove("VALKYRIE_LOG")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(Stdio::null());
        if let Some(value) = options.profiling {
            command.env("VALKYRIE_MEMORY_PROFILING", value);
        }
        let router = Router {
            child: command.spawn().unwrap(),
            folder,
            config,
            stdout,
            port,
            metrics_port,
            upstream,
        };
        wait_until_listening(router.metrics_port).await;
        router.wait_for_signal_handlers(&[SIGHUP, SIGUSR1, SIGUSR2]);
        router
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Rewrites the config file with `options` and sends SIGHUP.
    fn reload(&self, options: Options<'_>) {
        std::fs::write(
            &self.config,
            config_text(self.port, self.metrics_port, self.upstream, &options),
        )
        .unwrap();
        self.signal("HUP");
    }

    /// Waits until the process catches every signal in `signals`, read from
    /// the SigCgt mask in /proc, so a signal sent next cannot kill it.
    fn wait_for_signal_handlers(&self, signals: &[u32]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
            let mask = status
                .lines()
                .find_map(|line| line.strip_prefix("SigCgt:"))
                .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
                .unwrap();
            if signals.iter().all(|signal| mask & (1 << (signal - 1)) != 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "signal handlers not installed: SigCgt {mask:x}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until a line of `log` contains every one of `parts`, and
    /// returns that line.
    async fn wait_for_log_line(&self, log: &Path, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|line| parts.iter().all(|part| line.contains(part)))
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} in {}:\n{text}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = client()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
    }

    /// Waits until metric `name` reads `expected`.
    async fn wait_for_metric(&self, name: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(name).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is {value:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn config_text(port: u16, metrics_port: u16, upstream: SocketAddr, options: &Options) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
graceful_shutdown_timeout = "2s"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "info"
format = "text"
access_log = false
{logging}

{tables}

[[upstreams]]
name = "origin"
endpoints = ["{upstream}"]

[[routes]]
name = "origin"
path_prefix = "/"
upstream = "origin"
"#,
        logging = options.logging,
        tables = options.tables,
    )
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

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A client that opens a new connection for every request.
fn fresh_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Waits until `folder` contains a non-empty file whose name starts with
/// `prefix` and ends with `suffix`, and returns its path.
async fn wait_for_report(folder: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir(folder).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| {
                    let name = path.file_name().unwrap().to_string_lossy();
                    let size = std::fs::metadata(path).map_or(0, |m| m.len());
                    name.starts_with(prefix) && name.ends_with(suffix) && size > 0
                })
        });
        if let Some(path) = found {
            return path;
        }
        assert!(
            Instant::now() < deadline,
            "no non-empty {prefix}*{suffix} in {}",
            folder.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_ok(client: &reqwest::Client, url: &str) {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn sigusr1_writes_statistics_beside_log_file() {
    let upstream = upstream().await;
    let log_folder = tempfile::tempdir().unwrap();
    let log_file = log_folder.path().join("valkyrie.log");
    let logging = format!("file = \"{}\"", log_file.display());
    let router = Router::start(
        upstream,
        Options {
            logging: &logging,
            ..Options::default()
        },
    )
    .await;

    router.signal("USR1");
    let prefix = format!("valkyrie-stats-{}-", router.pid());
    let path = wait_for_report(log_folder.path(), &prefix, ".txt").await;
    let path_text = path.display().to_string();
    let line = router
        .wait_for_log_line(&log_file, &["allocator statistics written", &path_text])
        .await;
    assert!(line.contains("INFO"), "{line}");

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("jemalloc statistics"), "{text}");
    assert!(text.contains("resident"), "{text}");
    assert!(
        !router.folder.path().join("logs").exists(),
        "./logs was created although [logging] file is set"
    );
    get_ok(&client(), &router.url("/after-usr1")).await;
}

#[tokio::test]
async fn sigusr1_writes_heap_profile_when_profiling() {
    let upstream = upstream().await;
    let router = Router::start(
        upstream,
        Options {
            profiling: Some("true"),
            ..Options::default()
        },
    )
    .await;
    router
        .wait_for_log_line(&router.stdout, &["heap profiling on"])
        .await;
    let client = client();
    for _ in 0..20 {
        get_ok(&client, &router.url("/before-usr1")).await;
    }

    router.signal("USR1");
    // Without [logging] file, reports go to ./logs in the working folder.
    let logs = router.folder.path().join("logs");
    let prefix = format!("valkyrie-heap-{}-", router.pid());
    let path = wait_for_report(&logs, &prefix, ".heap").await;
    let line = router
        .wait_for_log_line(
            &router.stdout,
            &["heap profile written", &path.display().to_string()],
        )
        .await;
    assert!(line.contains("INFO"), "{line}");

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("heap_v2/"), "{text}");
    assert!(text.contains("MAPPED_LIBRARIES"), "{text}");
    get_ok(&client, &router.url("/after-usr1")).await;
}

#[tokio::test]
async fn sigusr1_without_profiling_ignores_other_values() {
    let upstream = upstream().await;
    let router = Router::start(
        upstream,
        Options {
            profiling: Some("false"),
            ..Options::default()
        },
    )
    .await;

    router.signal("USR1");
    let logs = router.folder.path().join("logs");
    let prefix = format!("valkyrie-stats-{}-", router.pid());
    let path = wait_for_report(&logs, &prefix, ".txt").await;
    router
        .wait_for_log_line(&router.stdout, &["allocator statistics written"])
        .await;
    assert!(std::fs::read_to_string(path)
        .unwrap()
        .contains("jemalloc statistics"));
    assert!(!router.stdout_text().contains("heap profiling on"));
}

#[tokio::test]
async fn sigusr2_and_purge_endpoint_keep_serving() {
    let upstream = upstream().await;
    let router = Router::start(upstream, Options::default()).await;
    let client = client();
    get_ok(&client, &router.url("/warm")).await;

    router.signal("USR2");
    let line = router
        .wait_for_log_line(&router.stdout, &["memory purged", "SIGUSR2"])
        .await;
    assert!(line.contains("resident_bytes_after"), "{line}");
    get_ok(&client, &router.url("/after-usr2")).await;

    // The request above left one idle upstream connection in the pool.
    let response = client
        .post(router.url("/admin/memory/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let memory = &body["memory"];
    assert!(
        memory["resident_bytes_before"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert!(
        memory["resident_bytes_after"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert_eq!(memory["idle_connections_closed"], 1, "{body}");
    assert!(memory["purge_error"].is_null(), "{body}");

    let upstreams: serde_json::Value = client
        .get(router.url("/admin/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pool = &upstreams["upstreams"][0]["endpoints"][0]["pool"];
    assert_eq!(pool["idle"], 0, "{upstreams}");

    let wrong_method = client
        .get(router.url("/admin/memory/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    get_ok(&client, &router.url("/after-purge")).await;
}

#[tokio::test]
async fn heap_limit_closes_new_connections_until_raised() {
    let upstream = upstream().await;
    let tiny = Options {
        tables: "[performance]\nmax_heap_size = \"1MB\"",
        ..Options::default()
    };
    let router = Router::start(upstream, tiny).await;
    router
        .wait_for_metric("valkyrie_memory_limit_exceeded", 1.0)
        .await;
    assert!(router.metric("valkyrie_memory_limit_events_total").await >= Some(1.0));

    let fresh = fresh_connection_client();
    let refused = fresh.get(router.url("/while-over")).send().await;
    assert!(
        refused.is_err(),
        "a new connection was served over the limit: {refused:?}"
    );
    let warning = router
        .wait_for_log_line(&router.stdout, &["WARN", "max_heap_size"])
        .await;
    assert!(warning.contains("closing new connections"), "{warning}");

    router.reload(Options {
        tables: "[performance]\nmax_heap_size = \"6GB\"",
        ..Options::default()
    });
    router
        .wait_for_metric("valkyrie_memory_limit_exceeded", 0.0)
        .await;
    get_ok(&fresh, &router.url("/after-raise")).await;
    router
        .wait_for_log_line(&router.stdout, &["INFO", "back under"])
        .await;
    let stdout = router.stdout_text();
    let warnings = stdout
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("max_heap_size"))
        .count();
    assert_eq!(warnings, 1, "one warning per limit event:\n{stdout}");
    assert_eq!(
        router.metric("valkyrie_memory_limit_events_total").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn heap_limit_keeps_open_connections_serving() {
    let upstream = upstream().await;
    let large = "[performance]\nmax_heap_size = \"6GB\"";
    let router = Router::start(
        upstream,
        Options {
            tables: large,
            ..Options::default()
        },
    )
    .await;
    // This client keeps its connection open between requests.
    let kept = client();
    get_ok(&kept, &router.url("/before-limit")).await;
    assert_eq!(
        router.metric("valkyrie_memory_limit_exceeded").await,
        Some(0.0)
    );

    router.reload(Options {
        tables: "[performance]\nmax_heap_size = \"1MB\"",
        ..Options::default()
    });
    router
        .wait_for_metric("valkyrie_memory_limit_exceeded", 1.0)
        .await;

    get_ok(&kept, &router.url("/on-open-connection")).await;
    let refused = fresh_connection_client()
        .get(router.url("/on-new-connection"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a new connection was served over the limit: {refused:?}"
    );
}
