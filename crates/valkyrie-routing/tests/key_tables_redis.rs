//! Key tables kept in a Redis hash, across real router processes and one
//! real `redis-server`: two routers converge on a change within a second,
//! keep serving while Redis is down, and read the whole hash again when it
//! comes back. Also the `keys` subcommands, the raw protocol (HSET then
//! PUBLISH), the 409 of the admin API, readiness before the first read, and
//! a reload that keeps the entries.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{free_port, named_upstream};

/// Longest accepted time from a change in Redis until both routers serve it.
const CONVERGENCE: Duration = Duration::from_secs(1);

/// Each test starts routers and a Redis; one at a time keeps the
/// convergence timing free of the other test's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two upstreams, `alpha` and `beta`, that respond with their names.
struct Upstreams {
    alpha: std::net::SocketAddr,
    beta: std::net::SocketAddr,
}

impl Upstreams {
    async fn start() -> Upstreams {
        Upstreams {
            alpha: named_upstream("alpha").await,
            beta: named_upstream("beta").await,
        }
    }
}

/// Writes a config for one router whose table `tenants` reads hash
/// `tenants` of `redis_url`, with `default` as its default upstream.
fn write_config(folder: &Path, upstreams: &Upstreams, redis_url: &str, default: &str) -> PathBuf {
    let path = folder.join(format!("router-{}.toml", free_port()));
    rewrite_config(
        &path,
        free_port(),
        free_port(),
        upstreams,
        redis_url,
        default,
    );
    path
}

fn rewrite_config(
    path: &Path,
    port: u16,
    metrics_port: u16,
    upstreams: &Upstreams,
    redis_url: &str,
    default: &str,
) {
    let Upstreams { alpha, beta } = upstreams;
    std::fs::write(
        path,
        format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "info"
access_log = false

[redis]
url = "{redis_url}"

[[upstreams]]
name = "alpha"
endpoints = ["{alpha}"]

[[upstreams]]
name = "beta"
endpoints = ["{beta}"]

[[key_tables]]
name = "tenants"
key = {{ header = "x-tenant" }}
source = {{ redis_hash = "tenants" }}
default_upstream = "{default}"

[[routes]]
name = "by-tenant"
path_prefix = "/"
key_table = "tenants"
"#
        ),
    )
    .unwrap();
}

/// Reads `listen = ["127.0.0.1:PORT"]` and the metrics port back.
fn ports_of(config: &Path) -> (u16, u16) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut ports = text
        .lines()
        .filter_map(|line| line.split("127.0.0.1:").nth(1))
        .map(|rest| {
            rest.trim_end_matches(['"', ']'])
                .parse::<u16>()
                .expect("a port")
        });
    (ports.next().unwrap(), ports.next().unwrap())
}

/// Runs `valkyrie-routing --config CONFIG keys ARGS...`.
fn keys_command(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
        .arg("--config")
        .arg(config)
        .arg("keys")
        .args(args)
        .output()
        .unwrap()
}

fn keys_ok(config: &Path, args: &[&str]) -> String {
    let output = keys_command(config, args);
    assert!(
        output.status.success(),
        "keys {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A router process, killed by pid when dropped.
struct Router {
    child: Child,
    port: u16,
    metrics_port: u16,
    client: reqwest::Client,
}

impl Router {
    async fn start(config: &Path) -> Router {
        let (port, metrics_port) = ports_of(config);
        let child = Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let router = Router {
            child,
            port,
            metrics_port,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the router did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        router
    }

    /// Returns the upstream that served a request for `tenant`, or the
    /// status when the router responded itself.
    async fn serve(&self, tenant: &str) -> String {
        let response = self
            .client
            .get(format!("http://127.0.0.1:{}/", self.port))
            .header("x-tenant", tenant)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        if status == 200 {
            body
        } else {
            format!("status {status}")
        }
    }

    async fn ready(&self) -> (u16, Value) {
        let response = self
            .client
            .get(format!("http://127.0.0.1:{}/ready", self.port))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
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

    fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every router serves `tenant` from `expected`, for at most
/// `limit`, and returns how long that took.
async fn wait_for(routers: &[&Router], tenant: &str, expected: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut served = Vec::new();
        for router in routers {
            served.push(router.serve(tenant).await);
        }
        if served.iter().all(|upstream| upstream == expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "after {limit:?} the routers serve tenant {tenant} from {served:?}; expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_ready(router: &Router, limit: Duration) {
    let started = Instant::now();
    loop {
        let (status, body) = router.ready().await;
        if status == 200 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "/ready still answers {status} {body} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_converge_and_resync_after_redis_restarts() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let upstreams = Upstreams::start().await;
    let folder = tempfile::tempdir().unwrap();
    let config_a = write_config(folder.path(), &upstreams, &redis.url(), "alpha");
    let config_b = write_config(folder.path(), &upstreams, &redis.url(), "alpha");

    // 1000 tenants before the routers start: even ones on beta.
    let mut entries = String::from("key,upstream\n");
    for tenant in 0..1000 {
        let upstream = if tenant % 2 == 0 { "beta" } else { "alpha" };
        entries.push_str(&format!("t{tenant},{upstream}\n"));
    }
    let file = folder.path().join("tenants.csv");
    std::fs::write(&file, entries).unwrap();
    let summary = keys_ok(&config_a, &["import", "tenants", file.to_str().unwrap()]);
    assert!(summary.contains("wrote 1000 entries"), "{summary}");
    assert_eq!(redis.command(&["HLEN", "tenants"]).as_deref(), Some("1000"));

    let a = Router::start(&config_a).await;
    let b = Router::start(&config_b).await;
    wait_ready(&a, Duration::from_secs(10)).await;
    wait_ready(&b, Duration::from_secs(10)).await;
    for router in [&a, &b] {
        assert_eq!(router.serve("t0").await, "beta");
        assert_eq!(router.serve("t1").await, "alpha");
        assert_eq!(router.serve("t998").await, "beta");
        assert_eq!(router.serve("unknown").await, "alpha");
        assert_eq!(router.metric("valkyrie_key_table_redis_up").await, 1.0);
        assert_eq!(router.metric("valkyrie_active_routes").await, 1001.0);
    }

    // Changes through the CLI, each served by both routers within 1 s.
    let mut slowest = Duration::ZERO;
    for (round, tenant) in ["t1", "t3", "t5", "t7", "t9"].iter().enumerate() {
        let started = Instant::now();
        let summary = keys_ok(&config_a, &["set", "tenants", tenant, "beta"]);
        assert!(
            summary.contains("2 subscribed routers received the change"),
            "{summary}"
        );
        wait_for(&[&a, &b], tenant, "beta", CONVERGENCE).await;
        slowest = slowest.max(started.elapsed());
        assert!(
            started.elapsed() < CONVERGENCE,
            "round {round}: {:?}",
            started.elapsed()
        );
    }
    println!("slowest convergence of 5 CLI changes, command included: {slowest:?}");

    // A delete sends the tenant to the default upstream.
    let started = Instant::now();
    let summary = keys_ok(&config_b, &["delete", "tenants", "t0", "t2", "never-set"]);
    assert!(
        summary.contains("deleted 2 keys of the 3 given"),
        "{summary}"
    );
    wait_for(&[&a, &b], "t0", "alpha", CONVERGENCE).await;
    wait_for(&[&a, &b], "t2", "alpha", CONVERGENCE - started.elapsed()).await;

    // Any writer that follows the protocol: HSET, then PUBLISH the key.
    let started = Instant::now();
    redis.command(&["HSET", "tenants", "raw-1", "beta"]);
    redis.command(&["PUBLISH", "tenants", "raw-1"]);
    let took = wait_for(&[&a, &b], "raw-1", "beta", CONVERGENCE).await;
    println!("raw HSET + PUBLISH served by both routers after {took:?}");
    assert!(started.elapsed() < CONVERGENCE);
    // A change without its message is not seen until the next full read.
    redis.command(&["HSET", "tenants", "silent", "beta"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.serve("silent").await, "alpha");
    // An empty message requests that full read. An invalid value read
    // there keeps the key's previous entry, as it does in a message.
    redis.command(&["HSET", "tenants", "t9", "no-such-upstream"]);
    redis.command(&["PUBLISH", "tenants", ""]);
    wait_for(&[&a, &b], "silent", "beta", CONVERGENCE).await;
    for router in [&a, &b] {
        assert_eq!(router.serve("t9").await, "beta");
        assert!(
            router
                .metric("valkyrie_key_table_redis_invalid_total")
                .await
                >= 1.0
        );
    }
    redis.command(&["HSET", "tenants", "t9", "beta"]);

    // The admin API refuses to change a table that Redis owns.
    let response = a
        .client
        .post(format!("http://127.0.0.1:{}/admin/keys", a.port))
        .json(&json!({ "table": "tenants", "upsert": { "t1": "alpha" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("keys set"),
        "{body}"
    );

    // Redis goes away: both routers keep serving their last table.
    redis.stop();
    for router in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while router.metric("valkyrie_key_table_redis_up").await != 0.0 {
            assert!(Instant::now() < deadline, "redis_up stayed 1 without Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(router.serve("t1").await, "beta");
        assert_eq!(router.serve("t4").await, "beta");
        assert_eq!(router.ready().await.0, 200);
    }
    let failed = keys_command(&config_a, &["set", "tenants", "t4", "alpha"]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("cannot connect to Redis"), "{stderr}");

    // Redis comes back with different data (a restore from a dump written
    // by another server): the routers read the whole hash again.
    let dump_folder = tempfile::tempdir().unwrap();
    {
        let seed = RedisServer::start_in(dump_folder.path());
        seed.command(&["HSET", "tenants", "t1", "alpha"]);
        seed.command(&["HSET", "tenants", "t4", "beta"]);
        seed.command(&["HSET", "tenants", "new-tenant", "beta"]);
        seed.save();
    }
    let started = Instant::now();
    redis.restart_from(dump_folder.path());
    assert_eq!(redis.command(&["HLEN", "tenants"]).as_deref(), Some("3"));
    let limit = Duration::from_secs(10);
    wait_for(&[&a, &b], "new-tenant", "beta", limit).await;
    wait_for(&[&a, &b], "t1", "alpha", limit).await;
    // Keys the restored hash lacks are gone: t6 takes the default.
    wait_for(&[&a, &b], "t6", "alpha", limit).await;
    println!(
        "resynchronized after the Redis restart in {:?}",
        started.elapsed()
    );
    for router in [&a, &b] {
        assert_eq!(router.serve("t4").await, "beta");
        assert_eq!(router.metric("valkyrie_key_table_redis_up").await, 1.0);
        assert!(router.metric("valkyrie_key_table_redis_loads_total").await >= 2.0);
        assert_eq!(router.metric("valkyrie_active_routes").await, 4.0);
    }

    // And follows changes again.
    keys_ok(&config_b, &["set", "tenants", "t4", "alpha"]);
    wait_for(&[&a, &b], "t4", "alpha", CONVERGENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_until_first_redis_read() {
    let _serial = SERIAL.lock().await;
    let upstreams = Upstreams::start().await;
    let folder = tempfile::tempdir().unwrap();
    // Nothing listens on this port yet.
    let redis_port = free_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let config = write_config(folder.path(), &upstreams, &redis_url, "alpha");

    let router = Router::start(&config).await;
    let (status, body) = router.ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "loading_key_tables", "{body}");
    assert_eq!(body["key_tables_not_loaded"], json!(["tenants"]));
    assert_eq!(router.serve("acme").await, "alpha");
    assert_eq!(
        router.metric("valkyrie_key_table_redis_following").await,
        1.0
    );
    assert_eq!(router.metric("valkyrie_key_table_redis_up").await, 0.0);

    let mut redis = RedisServer::start_on(redis_port);
    keys_ok(&config, &["set", "tenants", "acme", "beta"]);
    wait_ready(&router, Duration::from_secs(10)).await;
    wait_for(&[&router], "acme", "beta", Duration::from_secs(5)).await;

    // A reload that changes the default keeps the entries from Redis.
    let (port, metrics_port) = ports_of(&config);
    rewrite_config(&config, port, metrics_port, &upstreams, &redis_url, "beta");
    router.reload();
    wait_for(&[&router], "unknown", "beta", Duration::from_secs(5)).await;
    assert_eq!(router.serve("acme").await, "beta");
    keys_ok(&config, &["set", "tenants", "acme", "alpha"]);
    wait_for(&[&router], "acme", "alpha", CONVERGENCE).await;
    redis.stop();
}

#[test]
fn keys_commands_check_before_writing() {
    let redis = RedisServer::start();
    let folder = tempfile::tempdir().unwrap();
    let upstreams = Upstreams {
        alpha: "127.0.0.1:9".parse().unwrap(),
        beta: "127.0.0.1:10".parse().unwrap(),
    };
    let config = write_config(folder.path(), &upstreams, &redis.url(), "alpha");

    let output = keys_command(&config, &["set", "tenants", "acme", "gamma"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("upstream `gamma` is not defined"),
        "{stderr}"
    );
    assert_eq!(redis.command(&["HGET", "tenants", "acme"]), None);

    let output = keys_command(&config, &["set", "billing", "acme", "alpha"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no key table `billing`"), "{stderr}");
    assert!(stderr.contains("tenants"), "{stderr}");

    // An import with one bad line writes nothing and names the line.
    let file = folder.path().join("bad.csv");
    std::fs::write(&file, "a,alpha\nb,beta,127.0.0.1:11\nc,beta\nd\n").unwrap();
    let output = keys_command(&config, &["import", "tenants", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.csv:2:"), "{stderr}");
    // A line that does not parse is listed too, after the earlier one.
    assert!(
        stderr.contains("bad.csv:4: `d` has no upstream"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert_eq!(redis.command(&["HLEN", "tenants"]).as_deref(), Some("0"));

    // --replace deletes what the file does not list; endpoints are kept.
    redis.command(&["HSET", "tenants", "old", "alpha"]);
    std::fs::write(&file, "a,alpha\nb,beta,127.0.0.1:10\n").unwrap();
    let summary = keys_ok(
        &config,
        &["import", "tenants", file.to_str().unwrap(), "--replace"],
    );
    assert!(
        summary.contains("deleted 1 key the file does not list"),
        "{summary}"
    );
    assert!(summary.contains("no router is subscribed"), "{summary}");
    assert_eq!(redis.command(&["HGET", "tenants", "old"]), None);
    assert_eq!(
        redis.command(&["HGET", "tenants", "b"]).as_deref(),
        Some("beta,127.0.0.1:10")
    );

    // A table read from a file is not written to Redis.
    let file_config = folder.path().join("file.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("redis_hash = \"tenants\"", "file = \"tenants.csv\"");
    std::fs::write(&file_config, text).unwrap();
    std::fs::write(folder.path().join("tenants.csv"), "a,alpha\n").unwrap();
    let output = keys_command(&file_config, &["delete", "tenants", "a"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reads file `tenants.csv`, not Redis"),
        "{stderr}"
    );
}
