//! Rate limits end to end: a real router in this process, real upstreams
//! and clients on 127.0.0.1, and for the Redis backend a real
//! `redis-server` started on a free port.

mod common;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, router, upstream, Behavior, Router};
use http::StatusCode;
use valkyrie_proxy::Snapshot;

/// A `redis-server` of this test, on 127.0.0.1, without persistence; killed
/// by pid when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or("redis-server");
        let port = free_port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server ({error}); install it with `apt-get install -y redis-server` (scripts/test.sh does this)")
            });
        let server = RedisServer { child, port };
        server.wait_until_ready();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut connection) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// Returns how often the rate limit script ran (`EVALSHA` calls).
    fn script_calls(&self) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut connection)
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }

    /// Returns the Redis keys that match `pattern`.
    fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut connection)
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(upstream: std::net::SocketAddr, limits: &str, routes: &str) -> String {
    format!(
        r#"
[security.rate_limiting]
enable = true
{limits}

[[upstreams]]
name = "app"
endpoints = ["{upstream}"]

{routes}

[[routes]]
name = "rest"
path_prefix = "/"
upstream = "app"
"#
    )
}

/// Sends `count` GET requests one after another and returns their statuses.
async fn statuses(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        let mut request = client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        statuses.push(request.send().await.unwrap().status());
    }
    statuses
}

fn admitted(statuses: &[StatusCode]) -> usize {
    statuses
        .iter()
        .filter(|status| **status == StatusCode::OK)
        .count()
}

fn rejected(statuses: &[StatusCode]) -> usize {
    statuses
        .iter()
        .filter(|status| **status == StatusCode::TOO_MANY_REQUESTS)
        .count()
}

async fn wait_for_redis(router: &Router, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if router.state().rate_limiter.redis_up() == Some(up) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the Redis backend did not become {} within 10 s",
        if up { "reachable" } else { "unreachable" }
    );
}

#[tokio::test]
async fn burst_then_429_with_headers() {
    let app = upstream("app", Behavior::Name).await;
    let router = router(&config(
        app.address,
        "default_rate = \"1/min\"\nburst_size = 5",
        "",
    ))
    .await;
    let client = client();

    let results = statuses(&client, &router.url("/a"), &[], 5).await;
    assert_eq!(admitted(&results), 5, "the burst passes: {results:?}");

    let response = client.get(router.url("/a")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = response.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After {retry_after} is whole seconds up to the 60 s interval"
    );
    assert_eq!(headers["ratelimit-limit"], "5");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(
        headers["ratelimit-reset"].to_str().unwrap(),
        retry_after.to_string()
    );
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["route"], "rest");
    assert_eq!(body["status"], 429);

    assert_eq!(
        app.request_count(),
        5,
        "rejected requests never reach the upstream"
    );
}

#[tokio::test]
async fn admits_rate_times_time_plus_burst() {
    let app = upstream("app", Behavior::Name).await;
    let router = router(&config(
        app.address,
        "default_rate = \"20/sec\"\nburst_size = 10",
        "",
    ))
    .await;
    let client = client();

    let started = Instant::now();
    let mut results = Vec::new();
    // Bounded in time and in count.
    while started.elapsed() < Duration::from_millis(1500) && results.len() < 20_000 {
        results.push(client.get(router.url("/a")).send().await.unwrap().status());
    }
    let elapsed = started.elapsed().as_secs_f64();

    let passed = admitted(&results);
    let expected = 10.0 + 20.0 * elapsed;
    assert!(
        (passed as f64 - expected).abs() <= 3.0,
        "{passed} requests passed in {elapsed:.3} s; expected about {expected:.1} (burst 10 + 20/s)"
    );
    assert_eq!(
        passed + rejected(&results),
        results.len(),
        "every request got 200 or 429"
    );
    assert!(rejected(&results) > 0, "the load exceeded the limit");
}

#[tokio::test]
async fn route_overrides_rate_and_burst() {
    let app = upstream("app", Behavior::Name).await;
    let routes = r#"
[[routes]]
name = "strict"
path_prefix = "/strict/"
upstream = "app"
rate_limit = "1/hour"
rate_limit_burst = 2

[[routes]]
name = "burst-only"
path_prefix = "/burst-only/"
upstream = "app"
rate_limit_burst = 3
"#;
    let router = router(&config(
        app.address,
        "default_rate = \"1/min\"\nburst_size = 4",
        routes,
    ))
    .await;
    let client = client();

    let strict = statuses(&client, &router.url("/strict/x"), &[], 4).await;
    assert_eq!(admitted(&strict), 2, "strict route: {strict:?}");
    let burst_only = statuses(&client, &router.url("/burst-only/x"), &[], 5).await;
    assert_eq!(admitted(&burst_only), 3, "burst-only route: {burst_only:?}");
    let rest = statuses(&client, &router.url("/other"), &[], 6).await;
    assert_eq!(admitted(&rest), 4, "default limit: {rest:?}");

    let response = client.get(router.url("/strict/x")).send().await.unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after > 60,
        "an hourly rate waits longer than a minute: {retry_after}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["route"], "strict");
}

#[tokio::test]
async fn key_by_header_with_shared_missing_bucket() {
    let app = upstream("app", Behavior::Name).await;
    let router = router(&config(
        app.address,
        "default_rate = \"1/min\"\nburst_size = 2\nkey = \"header:X-Api-Key\"",
        "",
    ))
    .await;
    let client = client();
    let url = router.url("/a");

    let a = statuses(&client, &url, &[("x-api-key", "tenant-a")], 3).await;
    assert_eq!(admitted(&a), 2, "tenant-a: {a:?}");
    let b = statuses(&client, &url, &[("x-api-key", "tenant-b")], 3).await;
    assert_eq!(admitted(&b), 2, "tenant-b has its own bucket: {b:?}");
    let missing = statuses(&client, &url, &[], 3).await;
    assert_eq!(admitted(&missing), 2, "no header: {missing:?}");
    let missing_again = statuses(&client, &url, &[], 1).await;
    assert_eq!(
        admitted(&missing_again),
        0,
        "requests without the header share one bucket"
    );
}

#[tokio::test]
async fn route_key_counts_all_clients_together() {
    let app = upstream("app", Behavior::Name).await;
    let routes = r#"
[[routes]]
name = "other"
path_prefix = "/other/"
upstream = "app"
"#;
    let router = router(&config(
        app.address,
        "default_rate = \"1/min\"\nburst_size = 3\nkey = \"route\"",
        routes,
    ))
    .await;
    let client = client();

    let first = statuses(
        &client,
        &router.url("/a"),
        &[("x-forwarded-for", "198.51.100.1")],
        2,
    )
    .await;
    let second = statuses(
        &client,
        &router.url("/b"),
        &[("x-forwarded-for", "198.51.100.2")],
        2,
    )
    .await;
    assert_eq!(
        admitted(&first) + admitted(&second),
        3,
        "one bucket for route rest: {first:?} {second:?}"
    );
    let other = statuses(&client, &router.url("/other/x"), &[], 3).await;
    assert_eq!(
        admitted(&other),
        3,
        "route other has its own bucket: {other:?}"
    );
}

#[tokio::test]
async fn client_ip_from_trusted_proxy_forwarded_for() {
    let app = upstream("app", Behavior::Name).await;
    let text = config(app.address, "default_rate = \"1/min\"\nburst_size = 2", "");
    let trusted = format!("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n{text}");
    let router = router(&trusted).await;
    let client = client();
    let url = router.url("/a");

    let first = statuses(&client, &url, &[("x-forwarded-for", "198.51.100.1")], 3).await;
    assert_eq!(admitted(&first), 2, "first client: {first:?}");
    let second = statuses(&client, &url, &[("x-forwarded-for", "198.51.100.2")], 2).await;
    assert_eq!(
        admitted(&second),
        2,
        "second client has its own bucket: {second:?}"
    );
    let forged = statuses(
        &client,
        &url,
        &[("x-forwarded-for", "203.0.113.77, 198.51.100.1")],
        1,
    )
    .await;
    assert_eq!(
        admitted(&forged),
        0,
        "an address the client wrote left of its own does not change its key"
    );
}

#[tokio::test]
async fn forwarded_for_ignored_from_untrusted_peer() {
    let app = upstream("app", Behavior::Name).await;
    let router = router(&config(
        app.address,
        "default_rate = \"1/min\"\nburst_size = 2",
        "",
    ))
    .await;
    let client = client();
    let url = router.url("/a");

    let first = statuses(&client, &url, &[("x-forwarded-for", "198.51.100.1")], 2).await;
    let second = statuses(&client, &url, &[("x-forwarded-for", "198.51.100.2")], 2).await;
    assert_eq!(
        admitted(&first) + admitted(&second),
        2,
        "both count as the peer 127.0.0.1: {first:?} {second:?}"
    );
}

#[tokio::test]
async fn disabled_limits_admit_everything() {
    let app = upstream("app", Behavior::Name).await;
    let text = config(app.address, "default_rate = \"1/min\"\nburst_size = 1", "")
        .replace("enable = true", "enable = false");
    let router = router(&text).await;
    let results = statuses(&client(), &router.url("/a"), &[], 5).await;
    assert_eq!(admitted(&results), 5, "{results:?}");
}

#[tokio::test]
async fn reload_keeps_unchanged_buckets() {
    let app = upstream("app", Behavior::Name).await;
    let text = config(app.address, "default_rate = \"1/min\"\nburst_size = 2", "");
    let router = router(&text).await;
    let client = client();
    let state = router.state().clone();

    let before = statuses(&client, &router.url("/a"), &[], 2).await;
    assert_eq!(admitted(&before), 2);
    publish(&state, &text).await;
    let after_same = statuses(&client, &router.url("/a"), &[], 1).await;
    assert_eq!(
        admitted(&after_same),
        0,
        "a reload with the same quota keeps the spent bucket"
    );

    let changed = text.replace("burst_size = 2", "burst_size = 3");
    publish(&state, &changed).await;
    let after_change = statuses(&client, &router.url("/a"), &[], 4).await;
    assert_eq!(
        admitted(&after_change),
        3,
        "a new quota starts with full buckets"
    );
}

async fn publish(state: &Arc<valkyrie_proxy::ProxyState>, text: &str) {
    let config: valkyrie_config::Config = toml::from_str(text).unwrap();
    let current = state.snapshot.load_full();
    let snapshot = Snapshot::build(Arc::new(config), Some(&current))
        .await
        .unwrap();
    state.publish(snapshot);
}

#[tokio::test]
async fn redis_backend_shares_one_limit_between_routers() {
    let redis = RedisServer::start();
    let app = upstream("app", Behavior::Name).await;
    let text = format!(
        "[redis]\nurl = \"{}\"\n{}",
        redis.url(),
        config(
            app.address,
            "default_rate = \"1/min\"\nburst_size = 6\nbackend = \"redis\"\nkey = \"route\"",
            "",
        )
    );
    let first = router(&text).await;
    let second = router(&text).await;
    wait_for_redis(&first, true).await;
    wait_for_redis(&second, true).await;
    let client = client();

    let mut results = Vec::new();
    for _ in 0..5 {
        results.extend(statuses(&client, &first.url("/a"), &[], 1).await);
        results.extend(statuses(&client, &second.url("/a"), &[], 1).await);
    }
    assert_eq!(
        admitted(&results),
        6,
        "two routers share a burst of 6: {results:?}"
    );
    assert_eq!(rejected(&results), 4);
    assert_eq!(
        redis.keys("valkyrie:ratelimit:*"),
        vec!["valkyrie:ratelimit:default:route:rest".to_string()]
    );
    assert_eq!(first.state().rate_limiter.redis_fallbacks(), 0);
    assert_eq!(second.state().rate_limiter.redis_fallbacks(), 0);
}

#[tokio::test]
async fn redis_backend_uses_leases() {
    let redis = RedisServer::start();
    let app = upstream("app", Behavior::Name).await;
    // 100 000/min is about 1667/s, so a lease is 16 tokens.
    let text = format!(
        "[redis]\nurl = \"{}\"\n{}",
        redis.url(),
        config(
            app.address,
            "default_rate = \"100000/min\"\nburst_size = 1000\nbackend = \"redis\"",
            "",
        )
    );
    let router = router(&text).await;
    wait_for_redis(&router, true).await;

    let results = statuses(&client(), &router.url("/a"), &[], 32).await;
    assert_eq!(admitted(&results), 32);
    assert_eq!(
        redis.script_calls(),
        2,
        "32 requests took two leases of 16 tokens"
    );
}

#[tokio::test]
async fn unreachable_redis_falls_back_to_local_limits() {
    let app = upstream("app", Behavior::Name).await;
    let port = free_port();
    let text = format!(
        "[redis]\nurl = \"redis://127.0.0.1:{port}\"\n{}",
        config(
            app.address,
            "default_rate = \"1/min\"\nburst_size = 3\nbackend = \"redis\"",
            "",
        )
    );
    let router = router(&text).await;
    wait_for_redis(&router, false).await;

    let results = statuses(&client(), &router.url("/a"), &[], 5).await;
    assert_eq!(
        admitted(&results),
        3,
        "the local limiter applies: {results:?}"
    );
    assert_eq!(rejected(&results), 2);
    assert_eq!(router.state().rate_limiter.redis_fallbacks(), 5);
}
