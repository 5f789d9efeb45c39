//! The Redis rate-limit backend across real router processes. Two
//! `valkyrie-routing` binaries share one `redis-server` and one limit. When
//! Redis stops and restarts under load, traffic keeps flowing and the
//! shared limit returns without a restart of the routers.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Steady rate of the shared limit, requests per second.
const RATE: f64 = 200.0;
const BURST: f64 = 20.0;
/// Largest accepted difference between the measured and configured rate.
const TOLERANCE: f64 = 0.05;

/// Each test here sends thousands of requests per second through two
/// routers and one Redis. They run one at a time so that they do not
/// compete for CPU time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod support;

use support::free_port;
use support::redis::RedisServer;

/// A router process, killed when dropped.
struct Router {
    child: Child,
    port: u16,
    metrics_port: u16,
    log: PathBuf,
    _config: tempfile::NamedTempFile,
    _log_file: tempfile::NamedTempFile,
}

impl Router {
    async fn start(upstream: SocketAddr, redis_url: &str) -> Router {
        let port = free_port();
        let metrics_port = free_port();
        let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        config
            .write_all(config_text(port, metrics_port, upstream, redis_url).as_bytes())
            .unwrap();
        let log_file = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
            .arg("--config")
            .arg(config.path())
            .env_remove("VALKYRIE_LOG")
            .stdout(log_file.reopen().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let router = Router {
            child,
            port,
            metrics_port,
            log: log_file.path().to_path_buf(),
            _config: config,
            _log_file: log_file,
        };
        wait_until_listening(port).await;
        wait_until_listening(metrics_port).await;
        router
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/x", self.port)
    }

    /// Returns the value of the sample `name` (without labels) in a scrape.
    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {name} in the scrape"))
            .trim()
            .parse()
            .unwrap()
    }

    async fn wait_for_metric(&self, name: &str, accept: impl Fn(f64) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.metric(name).await;
            if accept(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is {value} after 15 s; expected {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_lines_containing(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(port: u16, metrics_port: u16, upstream: SocketAddr, redis_url: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "info"
format = "text"
access_log = false

[security.rate_limiting]
enable = true
default_rate = "{RATE}/sec"
burst_size = {BURST}
backend = "redis"
key = "route"

[redis]
url = "{redis_url}"

[[upstreams]]
name = "api"
endpoints = ["{upstream}"]

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "api"
"#
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

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Counts of a load run.
#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    rejected: AtomicU64,
    /// Anything but 200 and 429, including transport errors.
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

/// Sends requests from `tasks_per_router` loops per router until `stop` is
/// set or `limit` passes, each loop at most 100 000 requests.
async fn run_load(
    urls: Vec<String>,
    tasks_per_router: usize,
    limit: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut tasks = Vec::new();
    for url in urls {
        for _ in 0..tasks_per_router {
            let (client, url, stop, tally) =
                (client.clone(), url.clone(), stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        break;
                    }
                    match client.get(&url).send().await {
                        Ok(response) if response.status() == 200 => {
                            tally.admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) if response.status() == 429 => {
                            tally.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            let description = match other {
                                Ok(response) => format!("status {}", response.status()),
                                Err(error) => format!("error {error}"),
                            };
                            tally
                                .first_failure
                                .lock()
                                .unwrap()
                                .get_or_insert(description);
                        }
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Runs load on both routers for `duration` and returns the tally and the
/// measured time.
async fn measure(routers: &[&Router], duration: Duration) -> (Arc<Tally>, f64) {
    let tally = Arc::new(Tally::default());
    let urls = routers.iter().map(|router| router.url()).collect();
    let started = Instant::now();
    run_load(
        urls,
        4,
        duration,
        Arc::new(AtomicBool::new(false)),
        tally.clone(),
    )
    .await;
    (tally, started.elapsed().as_secs_f64())
}

async fn start_pair(redis: &RedisServer) -> (Router, Router) {
    let upstream = upstream().await;
    let first = Router::start(upstream, &redis.url()).await;
    let second = Router::start(upstream, &redis.url()).await;
    for router in [&first, &second] {
        router
            .wait_for_metric("valkyrie_rate_limit_redis_up", |up| up == 1.0, "1")
            .await;
    }
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_keep_global_limit() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let (first, second) = start_pair(&redis).await;

    let (tally, elapsed) = measure(&[&first, &second], Duration::from_secs(4)).await;

    let failed = tally.failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "requests failed, first: {:?}",
        tally.first_failure.lock().unwrap()
    );
    let admitted = tally.admitted.load(Ordering::Relaxed) as f64;
    let rejected = tally.rejected.load(Ordering::Relaxed) as f64;
    // A request whose Redis answer misses the 50 ms deadline, as on a
    // machine short of CPU, is decided locally. A few may be, since each
    // admits at most one request more.
    let fallbacks = first
        .metric("valkyrie_rate_limit_redis_fallback_total")
        .await
        + second
            .metric("valkyrie_rate_limit_redis_fallback_total")
            .await;
    assert!(
        fallbacks <= (admitted + rejected) * 0.01,
        "{fallbacks} of {} requests were decided locally although Redis was up",
        admitted + rejected
    );
    assert!(
        rejected > admitted,
        "the offered load ({} requests) exceeds the limit",
        admitted + rejected
    );
    let measured_rate = (admitted - BURST) / elapsed;
    println!(
        "two routers: {admitted} admitted, {rejected} rejected in {elapsed:.3} s: {measured_rate:.1}/s after the burst (limit {RATE}/s)"
    );
    assert!(
        (measured_rate - RATE).abs() <= RATE * TOLERANCE,
        "{admitted} requests passed in {elapsed:.3} s: {measured_rate:.1}/s after the burst of {BURST}; the limit is {RATE}/s"
    );
    let rejected_metric = first
        .metric("valkyrie_rate_limit_rejected_total{route=\"api\"}")
        .await
        + second
            .metric("valkyrie_rate_limit_rejected_total{route=\"api\"}")
            .await;
    assert_eq!(rejected_metric, rejected, "every 429 is counted by route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_recovers() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let (first, second) = start_pair(&redis).await;

    // Load through the outage, bounded at 60 s in case a step hangs.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = tokio::spawn(run_load(
        vec![first.url(), second.url()],
        2,
        Duration::from_secs(60),
        stop.clone(),
        tally.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    redis.stop();
    let admitted_at_stop = tally.admitted.load(Ordering::Relaxed);
    for router in [&first, &second] {
        router
            .wait_for_metric("valkyrie_rate_limit_redis_up", |up| up == 0.0, "0")
            .await;
        router
            .wait_for_metric(
                "valkyrie_rate_limit_redis_fallback_total",
                |count| count > 0.0,
                "above 0",
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admitted_in_outage = tally.admitted.load(Ordering::Relaxed) - admitted_at_stop;

    redis.restart();
    for router in [&first, &second] {
        router
            .wait_for_metric("valkyrie_rate_limit_redis_up", |up| up == 1.0, "1 again")
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "requests failed during the outage, first: {:?}",
        tally.first_failure.lock().unwrap()
    );
    assert!(
        admitted_in_outage > 0,
        "requests were admitted while Redis was down"
    );
    assert_eq!(
        first.log_lines_containing("Redis is unreachable"),
        1,
        "the outage is logged once"
    );
    assert_eq!(
        first.log_lines_containing("Redis is reachable again"),
        1,
        "the recovery is logged once"
    );

    // Back on Redis, the two routers share one limit again. Counted
    // locally, each would admit the full rate, twice the limit.
    let fallbacks_before = first
        .metric("valkyrie_rate_limit_redis_fallback_total")
        .await;
    let (tally, elapsed) = measure(&[&first, &second], Duration::from_secs(3)).await;
    let admitted = tally.admitted.load(Ordering::Relaxed) as f64;
    let requests = admitted + tally.rejected.load(Ordering::Relaxed) as f64;
    let fallbacks = first
        .metric("valkyrie_rate_limit_redis_fallback_total")
        .await
        - fallbacks_before;
    assert!(
        fallbacks <= requests * 0.01,
        "{fallbacks} of {requests} requests were decided locally after the recovery"
    );
    println!(
        "outage: {admitted_in_outage} admitted in the second after the stop; after the recovery: {admitted} admitted in {elapsed:.3} s"
    );
    // The bucket held between 0 and the burst when this run started.
    let lowest = RATE * elapsed * (1.0 - TOLERANCE);
    let highest = RATE * elapsed * (1.0 + TOLERANCE) + BURST;
    assert!(
        (lowest..=highest).contains(&admitted),
        "{admitted} requests passed in {elapsed:.3} s after the recovery; expected {lowest:.0} to {highest:.0}"
    );
}
