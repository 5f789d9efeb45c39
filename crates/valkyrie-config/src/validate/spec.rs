//! The sections and keys of the configuration file for the validator: each
//! key's expected type and allowed values.
//!
//! This table must list every field of the structs in `schema.rs` under the
//! same name. A test serializes a config that sets every field and checks
//! that the validator accepts the result.

use super::rules;
use super::text::Text;
use super::{TableAt, Validator};

/// A section (table) of the file and the keys it accepts.
pub(crate) struct Section {
    /// Dotted path of the section, such as `server` or
    /// `upstreams.health_check`, or empty for the top level.
    pub path: &'static str,
    /// Written `[[path]]`: an array of tables.
    pub array: bool,
    pub keys: &'static [Key],
    /// Exactly one of the keys must be present (a choice such as
    /// `key = { header = "X-Tenant" }`).
    pub exactly_one: bool,
    /// Checks that involve several keys of the section.
    pub rule: Option<fn(&mut Validator<'_>, &TableAt<'_>)>,
    /// Example of the section as written, shown as the hint when the
    /// section is missing, has the wrong type or sets none of its choices.
    pub example: Option<&'static str>,
}

impl Section {
    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|key| key.name == name)
    }

    pub fn key_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.keys.iter().map(|key| key.name)
    }

    /// Returns the section as written in a file: `[server]`, `[[routes]]`,
    /// or `the top level`.
    pub fn header(&self) -> String {
        if self.path.is_empty() {
            "the top level".to_string()
        } else if self.array {
            format!("[[{}]]", self.path)
        } else {
            format!("[{}]", self.path)
        }
    }
}

/// One key of a section.
pub(crate) struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

/// The expected type of a key's value and the checks on it.
pub(crate) enum Kind {
    Bool,
    Text(Text),
    Integer {
        min: i64,
        max: i64,
    },
    /// A float or an integer within the range.
    Number(NumberRange),
    /// A string such as `"10s"`. With `nonzero`, `"0s"` is rejected.
    Duration {
        nonzero: bool,
    },
    /// A string such as `"64KB"` or an integer number of bytes.
    Size,
    /// A string such as `"1000/min"`.
    Rate,
    TextList(Text),
    IntegerList {
        min: i64,
        max: i64,
    },
    Table(&'static Section),
    TableList(&'static Section),
    /// Upstream endpoints: `"host:port"` strings or `{ address, weight }` tables.
    Endpoints,
}

/// Allowed range of a number.
pub(crate) enum NumberRange {
    /// Strictly between the bounds.
    Open(f64, f64),
    /// Between the bounds, both included.
    Closed(f64, f64),
}

const fn key(name: &'static str, kind: Kind) -> Key {
    Key {
        name,
        kind,
        required: false,
    }
}

const fn required(name: &'static str, kind: Kind) -> Key {
    Key {
        name,
        kind,
        required: true,
    }
}

const fn table(path: &'static str, keys: &'static [Key]) -> Section {
    Section {
        path,
        array: false,
        keys,
        exactly_one: false,
        rule: None,
        example: None,
    }
}

const fn array(path: &'static str, keys: &'static [Key]) -> Section {
    Section {
        path,
        array: true,
        keys,
        exactly_one: false,
        rule: None,
        example: None,
    }
}

const MAX_U16: i64 = u16::MAX as i64;
const MAX_U32: i64 = u32::MAX as i64;
/// The largest integer TOML can write. `usize` fields take any non-negative one.
const MAX: i64 = i64::MAX;

const fn at_least(min: i64) -> Kind {
    Kind::Integer { min, max: MAX }
}

const fn u32_from(min: i64) -> Kind {
    Kind::Integer { min, max: MAX_U32 }
}

const DURATION: Kind = Kind::Duration { nonzero: false };
const NONZERO_DURATION: Kind = Kind::Duration { nonzero: true };

pub(crate) const LOG_FORMATS: &[&str] = &["json", "text"];
pub(crate) const ROUTING_STRATEGIES: &[&str] = &["high_performance"];
pub(crate) const TLS_VERSIONS: &[&str] = &["1.2", "1.3"];
pub(crate) const RATE_LIMIT_BACKENDS: &[&str] = &["local", "redis"];
pub(crate) const BALANCE_STRATEGIES: &[&str] =
    &["round_robin", "least_request", "consistent_hash", "random"];
pub(crate) const UPSTREAM_PROTOCOLS: &[&str] = &["http1", "http2"];
pub(crate) const HEALTH_CHECK_TYPES: &[&str] = &["http", "tcp"];
pub(crate) const RETRY_CONDITIONS: &[&str] = &["connect_failure", "reset", "502", "503", "504"];

pub(crate) static ROOT: Section = table(
    "",
    &[
        key("server", Kind::Table(&SERVER)),
        key("metrics", Kind::Table(&METRICS)),
        key("admin", Kind::Table(&ADMIN)),
        key("logging", Kind::Table(&LOGGING)),
        key("routing", Kind::Table(&ROUTING)),
        key("performance", Kind::Table(&PERFORMANCE)),
        key("security", Kind::Table(&SECURITY)),
        key("redis", Kind::Table(&REDIS)),
        key("upstreams", Kind::TableList(&UPSTREAM)),
        key("routes", Kind::TableList(&ROUTE)),
        key("key_tables", Kind::TableList(&KEY_TABLE)),
    ],
);

static SERVER: Section = table(
    "server",
    &[
        key("listen", Kind::TextList(Text::Listen)),
        key("worker_threads", at_least(0)),
        key("max_connections", at_least(1)),
        key("request_header_timeout", NONZERO_DURATION),
        key("idle_timeout", NONZERO_DURATION),
        key("graceful_shutdown_timeout", DURATION),
        key("max_request_header_bytes", at_least(1)),
        key("max_request_body_bytes", Kind::Size),
        key("trusted_proxies", Kind::TextList(Text::Cidr)),
        key("via_name", Kind::Text(Text::Token)),
        key("redirect_to_https", Kind::Bool),
    ],
);

static METRICS: Section = table(
    "metrics",
    &[
        key("listen", Kind::Text(Text::Listen)),
        key("enable", Kind::Bool),
    ],
);

static ADMIN: Section = Section {
    rule: Some(rules::admin),
    ..table(
        "admin",
        &[
            key("listen", Kind::Text(Text::Listen)),
            key("allow", Kind::TextList(Text::Cidr)),
            key("token_env", Kind::Text(Text::EnvVar)),
            key("token_file", Kind::Text(Text::NonEmpty)),
        ],
    )
};

static LOGGING: Section = table(
    "logging",
    &[
        key("level", Kind::Text(Text::LogFilter)),
        key("format", Kind::Text(Text::Choice(LOG_FORMATS))),
        key("file", Kind::Text(Text::NonEmpty)),
        key("access_log", Kind::Bool),
    ],
);

static ROUTING: Section = table(
    "routing",
    &[
        key("strategy", Kind::Text(Text::Choice(ROUTING_STRATEGIES))),
        key("max_routes", at_least(1)),
        key("route_cache_size", at_least(0)),
        key("route_cache_ttl", DURATION),
        key("connection_pool_size", at_least(0)),
        key("max_concurrent_requests", at_least(1)),
        key("queue_timeout", DURATION),
        key("performance_budget", NONZERO_DURATION),
        key("lockfree", Kind::Table(&LOCKFREE)),
    ],
);

static LOCKFREE: Section = table(
    "routing.lockfree",
    &[
        key("fit_capacity", at_least(1)),
        key("fit_load_factor", Kind::Number(NumberRange::Open(0.0, 1.0))),
        key("cra_initial_capacity", at_least(1)),
        key("rcu_grace_period", DURATION),
        key("rcu_max_pending_updates", at_least(1)),
    ],
);

static PERFORMANCE: Section = table(
    "performance",
    &[
        key("max_heap_size", Kind::Size),
        key("enable_cpu_affinity", Kind::Bool),
        key("cpu_cores", Kind::IntegerList { min: 0, max: MAX }),
    ],
);

static SECURITY: Section = Section {
    rule: Some(rules::security),
    ..table(
        "security",
        &[
            key("enable_tls", Kind::Bool),
            key("tls_listen", Kind::TextList(Text::Listen)),
            key("tls_cert_path", Kind::Text(Text::NonEmpty)),
            key("tls_key_path", Kind::Text(Text::NonEmpty)),
            key("min_tls_version", Kind::Text(Text::Choice(TLS_VERSIONS))),
            key("certificates", Kind::TableList(&CERTIFICATE)),
            key("client_ca_path", Kind::Text(Text::NonEmpty)),
            key("require_client_cert", Kind::Bool),
            key("hsts_max_age", NONZERO_DURATION),
            key("rate_limiting", Kind::Table(&RATE_LIMITING)),
            key("deny_list", Kind::TextList(Text::Cidr)),
        ],
    )
};

static CERTIFICATE: Section = Section {
    rule: Some(rules::certificate),
    ..array(
        "security.certificates",
        &[
            required("server_names", Kind::TextList(Text::HostPattern)),
            required("cert_path", Kind::Text(Text::NonEmpty)),
            required("key_path", Kind::Text(Text::NonEmpty)),
        ],
    )
};

static RATE_LIMITING: Section = table(
    "security.rate_limiting",
    &[
        key("enable", Kind::Bool),
        key("default_rate", Kind::Rate),
        key("burst_size", u32_from(1)),
        key("backend", Kind::Text(Text::Choice(RATE_LIMIT_BACKENDS))),
        key("key", Kind::Text(Text::LimitKey)),
    ],
);

static REDIS: Section = table("redis", &[key("url", Kind::Text(Text::RedisUrl))]);

static UPSTREAM: Section = Section {
    rule: Some(rules::upstream),
    ..array(
        "upstreams",
        &[
            required("name", Kind::Text(Text::Name)),
            required("endpoints", Kind::Endpoints),
            key("balance", Kind::Text(Text::Choice(BALANCE_STRATEGIES))),
            key("hash_key", Kind::Text(Text::HashKey)),
            key("protocol", Kind::Text(Text::Choice(UPSTREAM_PROTOCOLS))),
            key("pool_size", at_least(0)),
            key("pool_idle_timeout", DURATION),
            key("connect_timeout", NONZERO_DURATION),
            key("request_timeout", NONZERO_DURATION),
            key("resolve_interval", NONZERO_DURATION),
            key("health_check", Kind::Table(&HEALTH_CHECK)),
            key("passive_health", Kind::Table(&PASSIVE_HEALTH)),
            key("circuit_breaker", Kind::Table(&CIRCUIT_BREAKER)),
            key("retries", Kind::Table(&RETRIES)),
            key("tls", Kind::Table(&UPSTREAM_TLS)),
        ],
    )
};

pub(crate) static ENDPOINT: Section = array(
    "upstreams.endpoints",
    &[
        required("address", Kind::Text(Text::Endpoint)),
        key("weight", u32_from(1)),
    ],
);

static HEALTH_CHECK: Section = table(
    "upstreams.health_check",
    &[
        key("type", Kind::Text(Text::Choice(HEALTH_CHECK_TYPES))),
        key("path", Kind::Text(Text::UrlPath)),
        key("expected_status", Kind::Integer { min: 100, max: 599 }),
        key("interval", NONZERO_DURATION),
        key("timeout", NONZERO_DURATION),
        key("healthy_threshold", u32_from(1)),
        key("unhealthy_threshold", u32_from(1)),
    ],
);

static PASSIVE_HEALTH: Section = table(
    "upstreams.passive_health",
    &[
        key("consecutive_failures", u32_from(0)),
        key("ejection_time", NONZERO_DURATION),
    ],
);

static CIRCUIT_BREAKER: Section = Section {
    rule: Some(rules::circuit_breaker),
    ..table(
        "upstreams.circuit_breaker",
        &[
            key("enable", Kind::Bool),
            key("failure_threshold", u32_from(1)),
            key("open_time", NONZERO_DURATION),
            key("max_open_time", NONZERO_DURATION),
            key("half_open_requests", u32_from(1)),
            key("max_pending_requests", at_least(0)),
            key("max_requests", at_least(1)),
        ],
    )
};

static RETRIES: Section = table(
    "upstreams.retries",
    &[
        key("max_retries", u32_from(0)),
        key("per_try_timeout", NONZERO_DURATION),
        key("retry_on", Kind::TextList(Text::Choice(RETRY_CONDITIONS))),
        key("budget_ratio", Kind::Number(NumberRange::Closed(0.0, 1.0))),
        key("budget_min_per_sec", u32_from(0)),
        key("max_replay_body", Kind::Size),
    ],
);

static UPSTREAM_TLS: Section = Section {
    rule: Some(rules::upstream_tls),
    ..table(
        "upstreams.tls",
        &[
            key("ca_path", Kind::Text(Text::NonEmpty)),
            key("server_name", Kind::Text(Text::HostName)),
            key("client_cert_path", Kind::Text(Text::NonEmpty)),
            key("client_key_path", Kind::Text(Text::NonEmpty)),
        ],
    )
};

static ROUTE: Section = Section {
    rule: Some(rules::route),
    ..array(
        "routes",
        &[
            required("name", Kind::Text(Text::Name)),
            key("host", Kind::Text(Text::HostPattern)),
            key("path_exact", Kind::Text(Text::UrlPath)),
            key("path_prefix", Kind::Text(Text::UrlPath)),
            key("path_regex", Kind::Text(Text::Regex)),
            key("methods", Kind::TextList(Text::Method)),
            key("headers", Kind::TableList(&HEADER)),
            key("upstream", Kind::Text(Text::NonEmpty)),
            key("key_table", Kind::Text(Text::NonEmpty)),
            key("strip_prefix", Kind::Text(Text::UrlPath)),
            key("timeout", NONZERO_DURATION),
            key("retry_non_idempotent", Kind::Bool),
            key("rate_limit", Kind::Rate),
            key("rate_limit_burst", u32_from(1)),
        ],
    )
};

static HEADER: Section = Section {
    rule: Some(rules::header_match),
    ..array(
        "routes.headers",
        &[
            required("name", Kind::Text(Text::HeaderName)),
            key("value", Kind::Text(Text::HeaderValue)),
            key("regex", Kind::Text(Text::HeaderRegex)),
        ],
    )
};

static KEY_TABLE: Section = array(
    "key_tables",
    &[
        required("name", Kind::Text(Text::Name)),
        required("key", Kind::Table(&KEY_SOURCE)),
        required("source", Kind::Table(&TABLE_SOURCE)),
        key("default_upstream", Kind::Text(Text::NonEmpty)),
    ],
);

static KEY_SOURCE: Section = Section {
    exactly_one: true,
    example: Some(
        "write `key = { header = \"X-Tenant\" }`, `key = { path_segment = 1 }` or `key = { query = \"tenant\" }`",
    ),
    ..table(
        "key_tables.key",
        &[
            key("header", Kind::Text(Text::HeaderName)),
            key(
                "path_segment",
                Kind::Integer {
                    min: 0,
                    max: MAX_U16,
                },
            ),
            key("query", Kind::Text(Text::NonEmpty)),
        ],
    )
};

static TABLE_SOURCE: Section = Section {
    exactly_one: true,
    example: Some(
        "write `source = { file = \"tenants.csv\" }` (lines `key,upstream[,endpoint]`, relative to the config file's folder) or `source = { redis_hash = \"valkyrie:tenants\" }`",
    ),
    ..table(
        "key_tables.source",
        &[
            key("file", Kind::Text(Text::NonEmpty)),
            key("redis_hash", Kind::Text(Text::NonEmpty)),
        ],
    )
};

/// Returns every section reachable from the top level, parents first.
pub(crate) fn all_sections() -> Vec<&'static Section> {
    let mut sections = vec![&ROOT];
    let mut next = 0;
    while next < sections.len() {
        for key in sections[next].keys {
            match key.kind {
                Kind::Table(child) | Kind::TableList(child) => sections.push(child),
                Kind::Endpoints => sections.push(&ENDPOINT),
                _ => {}
            }
        }
        next += 1;
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = include_str!("../../../../docs/configuration.md");

    /// Returns the lines of the docs section whose heading contains `heading`,
    /// up to the next heading.
    fn docs_block(heading: &str) -> String {
        let mut lines = DOCS
            .lines()
            .skip_while(|line| !(line.starts_with('#') && line.contains(heading)));
        let Some(first) = lines.next() else {
            panic!("docs/configuration.md has no heading containing {heading}");
        };
        let rest: Vec<&str> = lines.take_while(|line| !line.starts_with('#')).collect();
        format!("{first}\n{}", rest.join("\n"))
    }

    #[test]
    fn every_key_is_documented() {
        for section in all_sections()
            .into_iter()
            .filter(|section| !section.path.is_empty())
        {
            let (heading, pattern): (String, fn(&str) -> String) = match section.path {
                "upstreams.endpoints" => {
                    ("Endpoint tables".to_string(), |key| format!("| `{key}` |"))
                }
                "routes.headers" => ("Header conditions".to_string(), |key| {
                    format!("| `{key}` |")
                }),
                "key_tables.key" | "key_tables.source" => {
                    ("`[[key_tables]]`".to_string(), |key| format!("{{ {key} = "))
                }
                _ => (format!("`{}`", section.header()), |key| {
                    format!("| `{key}` |")
                }),
            };
            let block = docs_block(&heading);
            // A sub-table is documented under its own heading, which the
            // loop reaches as a section of its own.
            let values = section
                .keys
                .iter()
                .filter(|key| !matches!(key.kind, Kind::Table(_)));
            for key in values {
                assert!(
                    block.contains(&pattern(key.name)),
                    "docs/configuration.md does not document `{}` under {heading}",
                    key.name
                );
            }
        }
    }

    #[test]
    fn every_section_is_reachable_once() {
        let sections = all_sections();
        for (index, section) in sections.iter().enumerate() {
            let copies = sections
                .iter()
                .filter(|other| std::ptr::eq(**other, *section))
                .count();
            assert_eq!(copies, 1, "section `{}` at position {index}", section.path);
        }
        assert!(sections
            .iter()
            .any(|section| section.path == "routing.lockfree"));
    }
}
