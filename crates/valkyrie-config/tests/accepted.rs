//! Configurations that must pass validation, and agreement between the
//! validator and the schema structs.

use std::path::Path;

use valkyrie_config::*;

/// The minimal config that the proxy comparison benchmark writes, with its
/// ports filled in: one listener, one upstream, one catch-all route.
const BENCHMARK_CONFIG: &str = r#"[server]
listen = ["127.0.0.1:19003"]
worker_threads = 1

[metrics]
listen = "127.0.0.1:19903"

[logging]
level = "warn"
access_log = false

[[upstreams]]
name = "backend"
endpoints = ["127.0.0.1:19000"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "backend"
"#;

#[test]
fn benchmark_config_accepted() {
    let config =
        parse_str(BENCHMARK_CONFIG, "valkyrie.toml").unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.server.listen, vec!["127.0.0.1:19003"]);
    assert_eq!(config.server.worker_threads, 1);
    assert_eq!(config.metrics.listen, "127.0.0.1:19903");
    assert_eq!(config.logging.level, "warn");
    assert!(!config.logging.access_log);
    assert_eq!(
        config.upstreams[0].endpoints[0].address(),
        "127.0.0.1:19000"
    );
    assert_eq!(config.routes[0].path_prefix.as_deref(), Some("/"));
    assert_eq!(config.routes[0].upstream.as_deref(), Some("backend"));
}

#[test]
fn example_config_accepted() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/valkyrie.toml");
    let config = load_file(&path).unwrap_or_else(|errors| panic!("{errors}"));
    let upstream_names: Vec<&str> = config
        .upstreams
        .iter()
        .map(|upstream| upstream.name.as_str())
        .collect();
    assert_eq!(upstream_names, vec!["api", "web"]);
    let endpoints: Vec<&str> = config.upstreams[0]
        .endpoints
        .iter()
        .map(EndpointConfig::address)
        .collect();
    assert_eq!(endpoints, vec!["127.0.0.1:9001", "127.0.0.1:9002"]);
    assert!(config.routes.len() >= 3);
    assert!(config.redis.is_some());
}

#[test]
fn empty_file_gives_builtin_default() {
    let config = parse_str("", "empty.toml").unwrap();
    assert_eq!(config, Config::builtin_default());
    assert_eq!(config, Config::default());
    assert_eq!(config.server.listen, vec!["0.0.0.0:8080"]);
    assert_eq!(config.metrics.listen, "0.0.0.0:9090");
    assert_eq!(config.routing.performance_budget, Duration::from_micros(82));
    assert!(config.routes.is_empty());
}

#[test]
fn comments_and_whitespace_only_accepted() {
    let config = parse_str("# nothing yet\n\n   \n", "comments.toml").unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn default_config_round_trips() {
    let text = toml::to_string(&Config::default()).unwrap();
    let parsed =
        parse_str(&text, "default.toml").unwrap_or_else(|errors| panic!("{errors}\n{text}"));
    assert_eq!(parsed, Config::default());
}

/// Returns a config that sets every key of every section, most of them to a
/// value other than their default. It is a struct literal, so a new schema
/// field breaks the build here until the test covers it.
fn config_with_every_key() -> Config {
    Config {
        server: ServerConfig {
            listen: vec!["127.0.0.1:8081".into(), "[::1]:8081".into()],
            worker_threads: 3,
            max_connections: 500,
            request_header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            graceful_shutdown_timeout: Duration::from_secs(0),
            max_request_header_bytes: 16_384,
            max_request_body_bytes: ByteSize(10 << 20),
            trusted_proxies: vec!["10.0.0.0/8".into(), "::1".into()],
            via_name: "edge-1".into(),
            redirect_to_https: true,
        },
        metrics: MetricsConfig {
            listen: "127.0.0.1:9191".into(),
            enable: false,
        },
        admin: AdminConfig {
            listen: Some("127.0.0.1:9192".into()),
            allow: vec!["192.168.0.0/16".into()],
            token_env: Some("VALKYRIE_TOKEN".into()),
            token_file: None,
        },
        logging: LoggingConfig {
            level: "debug,hyper=warn".into(),
            format: LogFormat::Text,
            file: Some("/var/log/valkyrie.log".into()),
            access_log: false,
        },
        routing: RoutingConfig {
            strategy: "high_performance".into(),
            max_routes: 10,
            route_cache_size: 0,
            route_cache_ttl: Duration::from_millis(1500),
            connection_pool_size: 8,
            max_concurrent_requests: 64,
            queue_timeout: Duration::from_millis(20),
            performance_budget: Duration::from_micros(50),
            lockfree: LockfreeConfig {
                fit_capacity: 1024,
                fit_load_factor: 0.5,
                cra_initial_capacity: 512,
                rcu_grace_period: Duration::from_millis(5),
                rcu_max_pending_updates: 100,
            },
        },
        performance: PerformanceConfig {
            max_heap_size: ByteSize(1 << 30),
            enable_cpu_affinity: true,
            cpu_cores: vec![0, 1],
        },
        security: SecurityConfig {
            enable_tls: true,
            tls_listen: vec!["127.0.0.1:8444".into()],
            tls_cert_path: "/etc/valkyrie/cert.pem".into(),
            tls_key_path: "/etc/valkyrie/key.pem".into(),
            min_tls_version: "1.3".into(),
            certificates: vec![CertificateConfig {
                server_names: vec!["api.example.com".into(), "*.api.example.com".into()],
                cert_path: "/etc/valkyrie/api.pem".into(),
                key_path: "/etc/valkyrie/api-key.pem".into(),
            }],
            client_ca_path: Some("/etc/valkyrie/clients-ca.pem".into()),
            require_client_cert: true,
            hsts_max_age: Some(Duration::from_secs(365 * 86_400)),
            rate_limiting: RateLimitingConfig {
                enable: true,
                default_rate: "50/sec".parse().unwrap(),
                burst_size: 5,
                backend: "redis".into(),
                key: "header:X-Api-Key".into(),
            },
            deny_list: vec!["203.0.113.0/24".into()],
        },
        redis: Some(RedisConfig {
            url: "redis://10.0.0.5:6379/1".into(),
        }),
        upstreams: vec![UpstreamConfig {
            name: "api".into(),
            endpoints: vec![
                EndpointConfig::Address("127.0.0.1:9001".into()),
                EndpointConfig::Weighted {
                    address: "api.internal:9002".into(),
                    weight: 3,
                },
            ],
            balance: BalanceStrategy::ConsistentHash,
            hash_key: Some("header:X-User".into()),
            protocol: UpstreamProtocol::Http2,
            pool_size: Some(16),
            pool_idle_timeout: Duration::from_secs(9),
            connect_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(3),
            resolve_interval: Duration::from_secs(60),
            health_check: Some(HealthCheckConfig {
                kind: HealthCheckKind::Tcp,
                path: "/ready".into(),
                expected_status: 204,
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                healthy_threshold: 1,
                unhealthy_threshold: 2,
            }),
            passive_health: PassiveHealthConfig {
                consecutive_failures: 0,
                ejection_time: Duration::from_secs(20),
            },
            circuit_breaker: CircuitBreakerConfig {
                enable: false,
                failure_threshold: 9,
                open_time: Duration::from_secs(1),
                max_open_time: Duration::from_secs(10),
                half_open_requests: 2,
                max_pending_requests: 7,
                max_requests: 70,
            },
            retries: RetryConfig {
                max_retries: 1,
                per_try_timeout: Some(Duration::from_millis(800)),
                retry_on: vec!["reset".into(), "503".into()],
                budget_ratio: 0.5,
                budget_min_per_sec: 1,
                max_replay_body: ByteSize(1000),
            },
            tls: Some(UpstreamTlsConfig {
                ca_path: Some("/etc/ssl/ca.pem".into()),
                server_name: Some("api.internal".into()),
                client_cert_path: Some("/etc/ssl/client.pem".into()),
                client_key_path: Some("/etc/ssl/client-key.pem".into()),
            }),
        }],
        routes: vec![
            RouteConfig {
                name: "api".into(),
                host: Some("*.example.com".into()),
                path_prefix: Some("/api/".into()),
                methods: vec!["GET".into(), "POST".into()],
                headers: vec![
                    HeaderMatchConfig {
                        name: "X-Env".into(),
                        value: Some("prod".into()),
                        regex: None,
                    },
                    HeaderMatchConfig {
                        name: "X-Version".into(),
                        value: None,
                        regex: Some("v[0-9]+".into()),
                    },
                ],
                upstream: Some("api".into()),
                strip_prefix: Some("/api".into()),
                timeout: Some(Duration::from_secs(2)),
                retry_non_idempotent: true,
                rate_limit: Some("10/min".parse().unwrap()),
                rate_limit_burst: Some(3),
                ..RouteConfig::default()
            },
            RouteConfig {
                name: "health".into(),
                path_exact: Some("/health".into()),
                upstream: Some("api".into()),
                ..RouteConfig::default()
            },
            RouteConfig {
                name: "tenants".into(),
                path_regex: Some("/t/[a-z]+/.*".into()),
                key_table: Some("tenants".into()),
                ..RouteConfig::default()
            },
        ],
        key_tables: vec![
            KeyTableConfig {
                name: "tenants".into(),
                key: KeySource::PathSegment(1),
                source: TableSource::File("/etc/valkyrie/tenants.csv".into()),
                default_upstream: Some("api".into()),
            },
            KeyTableConfig {
                name: "by-header".into(),
                key: KeySource::Header("X-Tenant".into()),
                source: TableSource::RedisHash("valkyrie:tenants".into()),
                default_upstream: None,
            },
            KeyTableConfig {
                name: "by-query".into(),
                key: KeySource::Query("tenant".into()),
                source: TableSource::File("/etc/valkyrie/q.csv".into()),
                default_upstream: None,
            },
        ],
    }
}

#[test]
fn every_schema_field_is_known_to_validator() {
    let config = config_with_every_key();
    let text = toml::to_string(&config).unwrap();
    let parsed = parse_str(&text, "full.toml").unwrap_or_else(|errors| panic!("{errors}\n{text}"));
    assert_eq!(parsed, config);
}

#[test]
fn inline_and_header_forms_agree() {
    let inline = r#"
upstreams = [{ name = "api", endpoints = ["127.0.0.1:9001"] }]
routes = [{ name = "all", upstream = "api", headers = [{ name = "X-A", value = "1" }] }]
"#;
    let headers = r#"
[[upstreams]]
name = "api"
endpoints = ["127.0.0.1:9001"]

[[routes]]
name = "all"
upstream = "api"

[[routes.headers]]
name = "X-A"
value = "1"
"#;
    let from_inline = parse_str(inline, "inline.toml").unwrap_or_else(|errors| panic!("{errors}"));
    let from_headers =
        parse_str(headers, "headers.toml").unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(from_inline, from_headers);
}

#[test]
fn endpoints_as_array_of_tables_accepted() {
    let text = r#"
[[upstreams]]
name = "api"

[[upstreams.endpoints]]
address = "127.0.0.1:9001"
weight = 2
"#;
    let config = parse_str(text, "test.toml").unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.upstreams[0].endpoints[0].weight(), 2);
}
