//! The configuration file's sections and keys, with their defaults.
//!
//! Unknown keys are rejected by the validator, which walks the TOML document
//! before serde deserializes it, so that the hint for a misplaced key can
//! name the section it belongs to. `docs/configuration.md` documents every key.

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration, Rate};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub logging: LoggingConfig,
    pub routing: RoutingConfig,
    pub performance: PerformanceConfig,
    pub security: SecurityConfig,
    pub redis: Option<RedisConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub key_tables: Vec<KeyTableConfig>,
}

impl Config {
    /// Returns the configuration used when no file is given: the defaults of
    /// every section, no upstreams, routes or key tables. Same as
    /// [`Config::default`].
    pub fn builtin_default() -> Config {
        Config::default()
    }
}

/// `[server]`: the data-plane listeners and per-connection limits.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Addresses the data plane listens on, `host:port`.
    pub listen: Vec<String>,
    /// Runtime worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// Open downstream connections beyond which new ones are closed at accept.
    pub max_connections: usize,
    /// Time a client has to send a complete request head.
    pub request_header_timeout: Duration,
    /// Time a keep-alive connection may sit without a request.
    pub idle_timeout: Duration,
    /// Time in-flight requests get to finish after SIGTERM or SIGINT.
    pub graceful_shutdown_timeout: Duration,
    /// Largest request head accepted; larger heads get 431.
    pub max_request_header_bytes: usize,
    /// Largest request body accepted; 0 means unlimited. Larger bodies get 413.
    pub max_request_body_bytes: ByteSize,
    /// Peers whose `X-Forwarded-*` headers are trusted, as addresses or CIDR ranges.
    pub trusted_proxies: Vec<String>,
    /// Name this proxy writes into the `Via` header.
    pub via_name: String,
    /// Answers plain-HTTP requests with a 308 redirect to HTTPS, except
    /// `/health` and `/ready`. Needs `[security] enable_tls`.
    pub redirect_to_https: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["0.0.0.0:8080".to_string()],
            worker_threads: 0,
            max_connections: 100_000,
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            graceful_shutdown_timeout: Duration::from_secs(30),
            max_request_header_bytes: 65_536,
            max_request_body_bytes: ByteSize(0),
            trusted_proxies: Vec::new(),
            via_name: "valkyrie".to_string(),
            redirect_to_https: false,
        }
    }
}

/// `[metrics]`: the Prometheus listener.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct MetricsConfig {
    pub listen: String,
    pub enable: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "0.0.0.0:9090".to_string(),
            enable: true,
        }
    }
}

/// `[admin]`: who may call `/admin/*` and `/config/status`, and where.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Separate listener for the admin API; when unset it shares the data plane.
    pub listen: Option<String>,
    /// Source addresses or CIDR ranges allowed without a token.
    pub allow: Vec<String>,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            allow: vec!["127.0.0.0/8".to_string(), "::1/128".to_string()],
            token_env: None,
            token_file: None,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// `[logging]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct LoggingConfig {
    /// A tracing filter: a level (`info`) or directives (`info,valkyrie_proxy=debug`).
    pub level: String,
    pub format: LogFormat,
    /// Optional log file written besides stdout; reopened on SIGHUP.
    pub file: Option<String>,
    /// One line per request on the `access` target.
    pub access_log: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".to_string(),
            format: LogFormat::Json,
            file: None,
            access_log: true,
        }
    }
}

/// `[routing]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct RoutingConfig {
    pub strategy: String,
    pub max_routes: usize,
    pub route_cache_size: usize,
    pub route_cache_ttl: Duration,
    /// Pooled connections kept per upstream endpoint.
    pub connection_pool_size: usize,
    /// Requests proxied at once; beyond this they wait up to `queue_timeout`, then get 503.
    pub max_concurrent_requests: usize,
    /// How long a request may wait for a concurrency slot.
    pub queue_timeout: Duration,
    /// Router-added p99 target; requests over it count as budget violations.
    pub performance_budget: Duration,
    pub lockfree: LockfreeConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: "high_performance".to_string(),
            max_routes: 1_000_000,
            // `valkyrie-routing bench engine` measured the decision cache
            // slower than the engine on two threads, and on one thread
            // from 100,000 routes up, so it is off unless configured.
            route_cache_size: 0,
            route_cache_ttl: Duration::from_secs(300),
            connection_pool_size: 1000,
            max_concurrent_requests: 100_000,
            queue_timeout: Duration::from_millis(100),
            performance_budget: Duration::from_micros(82),
            lockfree: LockfreeConfig::default(),
        }
    }
}

/// `[routing.lockfree]`: sizing of the routing engine's structures.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct LockfreeConfig {
    pub fit_capacity: usize,
    pub fit_load_factor: f64,
    pub cra_initial_capacity: usize,
    pub rcu_grace_period: Duration,
    pub rcu_max_pending_updates: usize,
}

impl Default for LockfreeConfig {
    fn default() -> Self {
        LockfreeConfig {
            fit_capacity: 65_536,
            fit_load_factor: 0.75,
            cra_initial_capacity: 32_768,
            rcu_grace_period: Duration::from_millis(10),
            rcu_max_pending_updates: 10_000,
        }
    }
}

/// `[performance]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct PerformanceConfig {
    /// Soft heap limit: above it caches shed and new connections are refused.
    pub max_heap_size: ByteSize,
    pub enable_cpu_affinity: bool,
    pub cpu_cores: Vec<usize>,
}

impl Default for PerformanceConfig {
    fn default() -> Self {
        PerformanceConfig {
            max_heap_size: ByteSize(6_000_000_000),
            enable_cpu_affinity: false,
            cpu_cores: Vec::new(),
        }
    }
}

/// `[security]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct SecurityConfig {
    pub enable_tls: bool,
    pub tls_listen: Vec<String>,
    pub tls_cert_path: String,
    pub tls_key_path: String,
    pub min_tls_version: String,
    pub certificates: Vec<CertificateConfig>,
    /// CA bundle (PEM) that client certificates must chain to; unset turns
    /// client certificates off.
    pub client_ca_path: Option<String>,
    /// Rejects clients without a certificate; needs `client_ca_path`.
    pub require_client_cert: bool,
    /// `max-age` of the `Strict-Transport-Security` header added to TLS
    /// responses; unset sends no header.
    pub hsts_max_age: Option<Duration>,
    pub rate_limiting: RateLimitingConfig,
    /// Source addresses or CIDR ranges whose connections are refused.
    pub deny_list: Vec<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            enable_tls: false,
            tls_listen: vec!["0.0.0.0:8443".to_string()],
            tls_cert_path: "/app/config/ssl/cert.pem".to_string(),
            tls_key_path: "/app/config/ssl/key.pem".to_string(),
            min_tls_version: "1.2".to_string(),
            certificates: Vec::new(),
            client_ca_path: None,
            require_client_cert: false,
            hsts_max_age: None,
            rate_limiting: RateLimitingConfig::default(),
            deny_list: Vec::new(),
        }
    }
}

/// `[[security.certificates]]`: a certificate chosen by SNI.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct CertificateConfig {
    pub server_names: Vec<String>,
    pub cert_path: String,
    pub key_path: String,
}

/// `[security.rate_limiting]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct RateLimitingConfig {
    pub enable: bool,
    pub default_rate: Rate,
    pub burst_size: u32,
    /// `local` or `redis`.
    pub backend: String,
    /// What a limit is counted per: `client_ip`, `route`, or `header:NAME`.
    pub key: String,
}

impl Default for RateLimitingConfig {
    fn default() -> Self {
        RateLimitingConfig {
            enable: false,
            default_rate: Rate {
                count: 1000,
                per: std::time::Duration::from_secs(60),
            },
            burst_size: 100,
            backend: "local".to_string(),
            key: "client_ip".to_string(),
        }
    }
}

/// `[redis]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct RedisConfig {
    pub url: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_string(),
        }
    }
}

/// Wire protocol spoken to an upstream.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

/// How an upstream picks an endpoint.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalanceStrategy {
    #[default]
    RoundRobin,
    LeastRequest,
    ConsistentHash,
    Random,
}

/// One endpoint: `"host:port"` or `{ address = "host:port", weight = 3 }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

fn default_weight() -> u32 {
    1
}

impl EndpointConfig {
    pub fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(address) => address,
            EndpointConfig::Weighted { address, .. } => address,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Address(_) => 1,
            EndpointConfig::Weighted { weight, .. } => *weight,
        }
    }
}

/// `[[upstreams]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub balance: BalanceStrategy,
    /// Request part hashed by `consistent_hash`: `client_ip`, `path`, `header:NAME`.
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Pooled connections per endpoint; defaults to `[routing] connection_pool_size`.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// How long a pooled connection may sit idle before it is closed.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// How often host names in `endpoints` are resolved again.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Duration,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    #[serde(default)]
    pub retries: RetryConfig,
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(4)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}

/// Active health check kind.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

/// `[upstreams.health_check]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct HealthCheckConfig {
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    pub path: String,
    pub expected_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            path: "/health".to_string(),
            expected_status: 200,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// `[upstreams.passive_health]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct PassiveHealthConfig {
    /// Consecutive connect failures or 5xx answers that mark an endpoint unhealthy; 0 disables.
    pub consecutive_failures: u32,
    /// How long a passively ejected endpoint stays out before it is tried again.
    pub ejection_time: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(10),
        }
    }
}

/// `[upstreams.circuit_breaker]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct CircuitBreakerConfig {
    pub enable: bool,
    /// Consecutive failures that open an endpoint's breaker.
    pub failure_threshold: u32,
    /// First open period; it doubles on each failed probe up to `max_open_time`.
    pub open_time: Duration,
    pub max_open_time: Duration,
    /// Requests let through while half-open.
    pub half_open_requests: u32,
    /// Requests waiting for a connection to this upstream at once.
    pub max_pending_requests: usize,
    /// Requests in flight to this upstream at once.
    pub max_requests: usize,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            enable: true,
            failure_threshold: 5,
            open_time: Duration::from_secs(5),
            max_open_time: Duration::from_secs(60),
            half_open_requests: 1,
            max_pending_requests: 10_000,
            max_requests: 100_000,
        }
    }
}

/// `[upstreams.retries]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub per_try_timeout: Option<Duration>,
    /// Conditions: `connect_failure`, `reset`, `502`, `503`, `504`.
    pub retry_on: Vec<String>,
    /// Retries allowed as a share of active requests.
    pub budget_ratio: f64,
    /// Retries per second always allowed.
    pub budget_min_per_sec: u32,
    /// Largest request body kept for replay on a retry.
    pub max_replay_body: ByteSize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            per_try_timeout: None,
            retry_on: vec![
                "connect_failure".to_string(),
                "reset".to_string(),
                "502".to_string(),
                "503".to_string(),
                "504".to_string(),
            ],
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            max_replay_body: ByteSize(64 * 1024),
        }
    }
}

/// `[upstreams.tls]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize, Default)]
#[serde(default)]
pub struct UpstreamTlsConfig {
    pub ca_path: Option<String>,
    pub server_name: Option<String>,
    pub client_cert_path: Option<String>,
    pub client_key_path: Option<String>,
}

/// A header condition of a route: the header must be present with this value,
/// or match `regex` when given.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct HeaderMatchConfig {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// `[[routes]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize, Default)]
#[serde(default)]
pub struct RouteConfig {
    pub name: String,
    /// Exact host or `*.example.com`; matched case-insensitively, port ignored.
    pub host: Option<String>,
    pub path_exact: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    /// Allowed methods; empty means any.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatchConfig>,
    pub upstream: Option<String>,
    pub key_table: Option<String>,
    /// Removes this prefix from the path before forwarding.
    pub strip_prefix: Option<String>,
    /// Overrides the upstream's request timeout.
    pub timeout: Option<Duration>,
    /// Allows retrying non-idempotent requests on this route.
    pub retry_non_idempotent: bool,
    /// Overrides `[security.rate_limiting] default_rate` on this route.
    pub rate_limit: Option<Rate>,
    pub rate_limit_burst: Option<u32>,
}

/// The request part a key table looks up.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    Header(String),
    PathSegment(usize),
    Query(String),
}

/// Where a key table's entries come from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableSource {
    File(String),
    RedisHash(String),
}

/// `[[key_tables]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct KeyTableConfig {
    pub name: String,
    pub key: KeySource,
    pub source: TableSource,
    #[serde(default)]
    pub default_upstream: Option<String>,
}
