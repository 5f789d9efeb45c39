//! Key tables against a live process: routing by header, path segment and
//! query parameter, pinned endpoints, defaults and `no_route`, the admin
//! keys API, reloads of entry files, metrics, and validation of Redis-backed
//! tables without Redis.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, named_upstream};

mod support;

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

struct Router {
    _process: Process,
    port: u16,
    metrics_port: u16,
    client: reqwest::Client,
}

impl Router {
    async fn start(config: &Path) -> Router {
        let port = config_port(config);
        let metrics_port = config_metrics_port(config);
        let process = Process(
            Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
                .args(["--config", config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_until_listening(port).await;
        Router {
            _process: process,
            port,
            metrics_port,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends a GET with optional `x-tenant`, returning status and body.
    async fn get(&self, path: &str, tenant: Option<&str>) -> (u16, String) {
        let mut request = self.client.get(self.url(path));
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
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
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
    }
}

fn config_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let listen = value["server"]["listen"][0].as_str().unwrap();
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

fn config_metrics_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let listen = value["metrics"]["listen"].as_str().unwrap();
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// Three upstream servers: `alpha` has endpoints a1 and a2, `beta` has b1.
struct Upstreams {
    a1: SocketAddr,
    a2: SocketAddr,
    b1: SocketAddr,
}

impl Upstreams {
    async fn start() -> Upstreams {
        Upstreams {
            a1: named_upstream("a1").await,
            a2: named_upstream("a2").await,
            b1: named_upstream("b1").await,
        }
    }
}

fn config_text(upstreams: &Upstreams, tables: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
[metrics]
listen = "127.0.0.1:{metrics}"
[logging]
level = "warn"
access_log = false

[[upstreams]]
name = "alpha"
endpoints = ["{a1}", "{a2}"]

[[upstreams]]
name = "beta"
endpoints = ["{b1}"]

[[routes]]
name = "api"
path_prefix = "/api/"
key_table = "tenants"

[[routes]]
name = "shards"
path_prefix = "/s/"
key_table = "shards"

[[routes]]
name = "regions"
path_prefix = "/q/"
key_table = "regions"

{tables}
"#,
        port = free_port(),
        metrics = free_port(),
        a1 = upstreams.a1,
        a2 = upstreams.a2,
        b1 = upstreams.b1,
    )
}

const TABLES: &str = r#"
[[key_tables]]
name = "tenants"
key = { header = "x-tenant" }
source = { file = "tenants.csv" }

[[key_tables]]
name = "shards"
key = { path_segment = 1 }
source = { file = "data/shards.csv" }
default_upstream = "beta"

[[key_tables]]
name = "regions"
key = { query = "region" }
source = { file = "regions.csv" }
"#;

/// Writes the config and entry files into a new folder and returns it.
fn write_files(upstreams: &Upstreams) -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("valkyrie.toml"),
        config_text(upstreams, TABLES),
    )
    .unwrap();
    std::fs::write(
        folder.path().join("tenants.csv"),
        format!(
            "key,upstream,endpoint\nacme,alpha\nglobex,alpha,{}\ninitech,beta\n",
            upstreams.a2
        ),
    )
    .unwrap();
    std::fs::create_dir(folder.path().join("data")).unwrap();
    std::fs::write(folder.path().join("data/shards.csv"), "7,alpha\n").unwrap();
    std::fs::write(folder.path().join("regions.csv"), "eu west,beta\n").unwrap();
    folder
}

#[tokio::test]
async fn key_tables_route_requests() {
    let upstreams = Upstreams::start().await;
    let folder = write_files(&upstreams);
    let router = Router::start(&folder.path().join("valkyrie.toml")).await;

    // Header key; `globex` pins endpoint a2, `acme` balances over alpha.
    for _ in 0..4 {
        assert_eq!(
            router.get("/api/x", Some("globex")).await,
            (200, "a2".into())
        );
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body) = router.get("/api/x", Some("acme")).await;
        assert_eq!(status, 200);
        seen.push(body);
    }
    assert!(
        seen.contains(&"a1".to_string()) && seen.contains(&"a2".to_string()),
        "{seen:?}"
    );
    assert_eq!(
        router.get("/api/x", Some("initech")).await,
        (200, "b1".into())
    );

    // No default: an absent or unknown key is a 404 naming the key.
    let (status, body) = router.get("/api/x", None).await;
    assert_eq!(status, 404);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "no_route");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("header `x-tenant`"),
        "{body}"
    );
    let (status, body) = router.get("/api/x", Some("nobody")).await;
    assert_eq!(status, 404);
    assert!(body.contains("\\\"nobody\\\""), "{body}");

    // Path segment 1 of `/s/7/...`, with a default for unknown and absent
    // keys.
    let (status, body) = router.get("/s/7/orders", None).await;
    assert_eq!(status, 200);
    assert!(body == "a1" || body == "a2", "{body}");
    assert_eq!(router.get("/s/8/orders", None).await, (200, "b1".into()));
    assert_eq!(router.get("/s/", None).await, (200, "b1".into()));

    // Query parameter, percent-decoded.
    assert_eq!(
        router.get("/q/x?region=eu%20west", None).await,
        (200, "b1".into())
    );
    assert_eq!(router.get("/q/x?region=us", None).await.0, 404);
}

#[tokio::test]
async fn admin_keys_api_changes_tables() {
    let upstreams = Upstreams::start().await;
    let folder = write_files(&upstreams);
    let router = Router::start(&folder.path().join("valkyrie.toml")).await;
    let generation_before = router.get_json("/admin/keys").await.1["generation"]
        .as_u64()
        .unwrap();

    let (status, body) = router
        .post_json(
            "/admin/keys",
            &json!({
                "table": "tenants",
                "upsert": {
                    "newco": "beta",
                    "pinned": format!("alpha,{}", upstreams.a1),
                    "object": { "upstream": "alpha", "endpoint": upstreams.a2.to_string() },
                },
                "delete": ["acme", "never-there"],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "ok");
    assert_eq!(body["upserted"], 3);
    assert_eq!(body["deleted"], 1);
    assert_eq!(body["not_found"], 1);
    assert!(
        body["generation"].as_u64().unwrap() > generation_before,
        "{body}"
    );

    // Visible as soon as the response arrives.
    assert_eq!(
        router.get("/api/x", Some("newco")).await,
        (200, "b1".into())
    );
    assert_eq!(
        router.get("/api/x", Some("pinned")).await,
        (200, "a1".into())
    );
    assert_eq!(
        router.get("/api/x", Some("object")).await,
        (200, "a2".into())
    );
    assert_eq!(router.get("/api/x", Some("acme")).await.0, 404);

    let (status, found) = router
        .get_json("/admin/keys?table=tenants&key=pinned")
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["upstream"], "alpha");
    assert_eq!(found["endpoint"], upstreams.a1.to_string());
    let (status, missing) = router.get_json("/admin/keys?table=tenants&key=acme").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"], "not_found");
    let (status, unknown) = router.get_json("/admin/keys?table=tenant").await;
    assert_eq!(status, 404);
    assert_eq!(
        unknown["message"],
        "key table `tenant` is not defined in [[key_tables]]; did you mean `tenants`? Defined key tables: `tenants`, `regions`, `shards`",
        "{unknown}"
    );
    let (status, summary) = router.get_json("/admin/keys?table=tenants").await;
    assert_eq!(status, 200);
    assert_eq!(summary["entries"], 5, "{summary}");
    assert_eq!(summary["key"], "header `x-tenant`");

    // Nothing of an invalid batch is applied.
    let (status, body) = router
        .post_json(
            "/admin/keys",
            &json!({ "table": "tenants", "upsert": { "a": "gone", "b": "beta" } }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("upstream `gone`"),
        "{body}"
    );
    assert_eq!(router.get("/api/x", Some("b")).await.0, 404);
    let invalid = [
        json!({ "table": "tenants", "upsert": { "a": { "upstream": "alpha", "endpoint": "10.0.0.1:1" } } }),
        json!({ "table": "tenants", "upsert": { "a": "beta" }, "delete": ["a"] }),
        json!({ "table": "tenants" }),
        json!({ "table": "tenants", "upsert": { "a": 7 } }),
        json!({ "upsert": { "a": "beta" } }),
    ];
    for body in invalid {
        let (status, answer) = router.post_json("/admin/keys", &body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
    }
    let (status, body) = router
        .post_json("/admin/keys", &json!({ "table": "nope", "delete": ["a"] }))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(router.get_json("/admin/keys?table=nope").await.0, 404);

    // Metrics: 3 routes plus 5 + 1 + 1 entries.
    assert_eq!(router.metric("valkyrie_active_routes").await, 10.0);
    assert!(
        router
            .metric("valkyrie_rcu_snapshots_published_total")
            .await
            >= 1.0
    );
    assert!(router.metric("valkyrie_fit_operations_total").await > 0.0);
    assert!(router.metric("valkyrie_fit_load_factor").await > 0.0);
    assert!(router.metric("valkyrie_cra_nodes").await > 0.0);
    assert_eq!(router.metric("valkyrie_rcu_pending_updates").await, 0.0);
    assert!(router.metric("valkyrie_key_table_delta_entries").await >= 0.0);
}

#[tokio::test]
async fn reload_rereads_entry_files() {
    let upstreams = Upstreams::start().await;
    let folder = write_files(&upstreams);
    let router = Router::start(&folder.path().join("valkyrie.toml")).await;
    let (status, _) = router
        .post_json(
            "/admin/keys",
            &json!({ "table": "tenants", "upsert": { "live": "beta" } }),
        )
        .await;
    assert_eq!(status, 200);

    // Unchanged file: the admin API's change stays.
    let (status, body) = router.post_json("/admin/config/reload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(router.get("/api/x", Some("live")).await, (200, "b1".into()));

    // A changed file replaces the table.
    std::fs::write(folder.path().join("tenants.csv"), "fresh,beta\n").unwrap();
    let (status, body) = router.post_json("/admin/config/reload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        router.get("/api/x", Some("fresh")).await,
        (200, "b1".into())
    );
    assert_eq!(router.get("/api/x", Some("live")).await.0, 404);
    assert_eq!(router.get("/api/x", Some("initech")).await.0, 404);

    // A bad line fails the reload with file and line, and the table stays.
    std::fs::write(folder.path().join("tenants.csv"), "fresh,beta\nbroken\n").unwrap();
    let (status, body) = router.post_json("/admin/config/reload", &json!({})).await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("tenants.csv: line 2"), "{error}");
    assert!(error.contains("key table `tenants`"), "{error}");
    assert_eq!(
        router.get("/api/x", Some("fresh")).await,
        (200, "b1".into())
    );

    std::fs::write(folder.path().join("tenants.csv"), "fresh,gone\n").unwrap();
    let (status, body) = router.post_json("/admin/config/reload", &json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("upstream `gone` is not defined"),
        "{body}"
    );
}

#[tokio::test]
async fn cache_warmup_needs_the_cache() {
    let upstreams = Upstreams::start().await;
    let folder = write_files(&upstreams);
    let router = Router::start(&folder.path().join("valkyrie.toml")).await;
    let (status, body) = router.post_json("/admin/cache/warmup", &json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "cache_disabled");
}

#[tokio::test]
async fn cache_warmup_stores_frequent_keys() {
    let upstreams = Upstreams::start().await;
    let folder = write_files(&upstreams);
    let config = folder.path().join("valkyrie.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[routing]\nroute_cache_size = 1000\nroute_cache_ttl = \"60s\"\n"),
    )
    .unwrap();
    let router = Router::start(&config).await;
    for _ in 0..64 {
        assert_eq!(router.get("/api/x", Some("initech")).await.0, 200);
    }
    let (status, body) = router
        .post_json("/admin/cache/warmup", &json!({ "limit": 10 }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["keys"].as_u64().unwrap() >= 1, "{body}");
    assert!(body["stored"].as_u64().unwrap() >= 1, "{body}");
    assert_eq!(body["cache"]["capacity"], 1024, "{body}");
    assert!(router.metric("valkyrie_cache_hits_total").await >= 63.0);
    assert!(router.metric("valkyrie_cache_misses_total").await >= 1.0);
    assert!(router.metric("valkyrie_cache_hit_rate").await > 0.9);

    let (status, _) = router
        .post_json("/admin/cache/warmup", &json!({ "limit": "ten" }))
        .await;
    assert_eq!(status, 400);
}

#[test]
fn redis_hash_tables_validate_without_redis() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("valkyrie.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = ["127.0.0.1:{}"]
[metrics]
listen = "127.0.0.1:{}"
[redis]
url = "redis://127.0.0.1:1"
[[upstreams]]
name = "alpha"
endpoints = ["127.0.0.1:9"]
[[routes]]
name = "api"
key_table = "tenants"
[[key_tables]]
name = "tenants"
key = {{ header = "x-tenant" }}
source = {{ redis_hash = "tenants" }}
"#,
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    // Validation reads entry files but never connects to Redis.
    let output = Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
        .args(["--validate-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

#[test]
fn validate_config_reads_entry_files() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("valkyrie.toml");
    std::fs::write(
        &config,
        r#"
[[upstreams]]
name = "alpha"
endpoints = ["127.0.0.1:9"]
[[routes]]
name = "api"
key_table = "tenants"
[[key_tables]]
name = "tenants"
key = { header = "x-tenant" }
source = { file = "tenants.csv" }
"#,
    )
    .unwrap();
    let validate = || {
        Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
            .args(["--validate-config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };

    std::fs::write(folder.path().join("tenants.csv"), "acme,alpha\n").unwrap();
    let output = validate();
    assert!(output.status.success(), "{output:?}");

    std::fs::write(
        folder.path().join("tenants.csv"),
        "acme,alpha\nacme2,beta\n",
    )
    .unwrap();
    let output = validate();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tenants.csv: line 2: key `acme2`: upstream `beta`"),
        "{stderr}"
    );

    std::fs::remove_file(folder.path().join("tenants.csv")).unwrap();
    let output = validate();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let position = format!(
        "{}:11:1: key table `tenants`: cannot read",
        config.display()
    );
    assert!(stderr.starts_with(&position), "{stderr}");
    assert!(
        stderr.contains("hint: a relative path starts at the config file's folder"),
        "{stderr}"
    );
}
