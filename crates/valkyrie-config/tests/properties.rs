//! Property tests: the parser never panics, errors point inside the text,
//! accepted configs survive a serialize round trip, and unit values print
//! back to strings that parse to the same value.

use proptest::prelude::*;
use valkyrie_config::address::{Cidr, HostPort};
use valkyrie_config::{
    edit_distance, nearest, parse_str, ByteSize, Config, ConfigErrors, Duration, Rate,
};

/// Checks what every result must satisfy: each error points at a line and
/// column inside `text`, and an error never comes from the deserializer
/// fallback, which would mean the validator accepted something the schema
/// rejects.
fn check_result(text: &str, result: &Result<Config, ConfigErrors>) {
    let Err(errors) = result else {
        return;
    };
    assert!(!errors.is_empty());
    let lines: Vec<&str> = text.split('\n').collect();
    for error in errors {
        assert!(
            error.line >= 1 && error.line <= lines.len(),
            "{error}\n{text:?}"
        );
        let line_length = lines[error.line - 1].chars().count();
        assert!(
            error.column >= 1 && error.column <= line_length + 1,
            "{error}\n{text:?}"
        );
        assert!(
            !error.message.starts_with("invalid configuration:"),
            "validator and schema disagree: {error}\n{text}"
        );
        assert!(!error.to_string().is_empty());
    }
}

const SECTIONS: &[&str] = &[
    "",
    "[server]",
    "[metrics]",
    "[admin]",
    "[logging]",
    "[routing]",
    "[routing.lockfree]",
    "[performance]",
    "[security]",
    "[security.rate_limiting]",
    "[[security.certificates]]",
    "[redis]",
    "[[upstreams]]",
    "[upstreams.health_check]",
    "[upstreams.circuit_breaker]",
    "[upstreams.retries]",
    "[upstreams.tls]",
    "[[routes]]",
    "[[routes.headers]]",
    "[[key_tables]]",
    "[key_tables.key]",
    "[key_tables.source]",
    "[lockfree]",
    "[routes]",
];

const KEYS: &[&str] = &[
    "listen",
    "worker_threads",
    "max_connections",
    "idle_timeout",
    "max_request_body_bytes",
    "trusted_proxies",
    "via_name",
    "enable",
    "allow",
    "token_env",
    "level",
    "format",
    "access_log",
    "max_routes",
    "route_cache_ttl",
    "fit_load_factor",
    "rcu_grace_period",
    "max_heap_size",
    "cpu_cores",
    "min_tls_version",
    "deny_list",
    "server_names",
    "cert_path",
    "key_path",
    "default_rate",
    "burst_size",
    "backend",
    "key",
    "url",
    "name",
    "endpoints",
    "balance",
    "hash_key",
    "protocol",
    "type",
    "path",
    "expected_status",
    "open_time",
    "max_open_time",
    "retry_on",
    "budget_ratio",
    "client_cert_path",
    "host",
    "path_exact",
    "path_prefix",
    "path_regex",
    "methods",
    "headers",
    "upstream",
    "key_table",
    "strip_prefix",
    "timeout",
    "rate_limit",
    "value",
    "regex",
    "header",
    "path_segment",
    "query",
    "file",
    "redis_hash",
    "default_upstream",
    "unknown_thing",
];

fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_string()),
        Just("web".to_string()),
        Just("/".to_string()),
        Just("/v1/".to_string()),
        Just("10s".to_string()),
        Just("82us".to_string()),
        Just("4GB".to_string()),
        Just("100/min".to_string()),
        Just("0.0.0.0:8080".to_string()),
        Just("[::1]:9090".to_string()),
        Just("127.0.0.1:9001".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("*.example.com".to_string()),
        Just("GET".to_string()),
        Just("json".to_string()),
        Just("info".to_string()),
        Just("round_robin".to_string()),
        Just("redis".to_string()),
        Just("1.2".to_string()),
        Just("[".to_string()),
        Just("".to_string()),
        "[a-zA-Z0-9_./:*\\[\\]-]{0,12}",
    ]
}

fn scalar_value() -> impl Strategy<Value = String> {
    prop_oneof![
        string_value().prop_map(|text| format!("{text:?}")),
        any::<i64>().prop_map(|number| number.to_string()),
        (0i64..100_000).prop_map(|number| number.to_string()),
        (-2.0f64..2.0).prop_map(|number| format!("{number:?}")),
        any::<bool>().prop_map(|flag| flag.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

fn toml_value() -> impl Strategy<Value = String> {
    let leaf = scalar_value();
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..3).prop_map(|entries| {
                let mut seen = std::collections::HashSet::new();
                let fields: Vec<String> = entries
                    .into_iter()
                    .filter(|(key, _)| seen.insert(*key))
                    .map(|(key, value)| format!("{key} = {value}"))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

/// Generates TOML documents from known section headers and keys with random
/// values. A document may or may not be valid TOML.
fn toml_document() -> impl Strategy<Value = String> {
    let section = (
        prop::sample::select(SECTIONS),
        prop::collection::vec((prop::sample::select(KEYS), toml_value()), 0..6),
    );
    prop::collection::vec(section, 0..8).prop_map(|sections| {
        let mut text = String::new();
        for (header, entries) in sections {
            text.push_str(header);
            text.push('\n');
            for (key, value) in entries {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    })
}

const EXAMPLE: &str = include_str!("../../../config/valkyrie.toml");

/// Generates the example config with one change: the value of one
/// `key = value` line replaced, or one `key = value` line inserted.
fn mutated_example() -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = EXAMPLE.lines().collect();
    let count = lines.len();
    (
        0..count,
        any::<bool>(),
        prop::sample::select(KEYS),
        toml_value(),
    )
        .prop_map(move |(index, replace, key, value)| {
            let mut edited: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
            let assignment = lines[index]
                .split_once(" = ")
                .filter(|(name, _)| !name.starts_with('#'));
            match assignment {
                Some((name, _)) if replace => edited[index] = format!("{name} = {value}"),
                _ => edited.insert(index, format!("{key} = {value}")),
            }
            edited.join("\n")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_example_never_panics(text in mutated_example()) {
        let result = parse_str(&text, "mutated.toml");
        check_result(&text, &result);
        if let Ok(config) = result {
            let printed = toml::to_string(&config).unwrap();
            let reparsed = parse_str(&printed, "printed.toml");
            prop_assert_eq!(reparsed.as_ref().ok(), Some(&config), "{}", printed);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let result = parse_str(&text, "random.toml");
        check_result(&text, &result);
    }

    #[test]
    fn random_text_never_panics(text in "[\\PC\n\t\"'\\[\\]={}.,#]{0,300}") {
        let result = parse_str(&text, "random.toml");
        check_result(&text, &result);
    }

    #[test]
    fn random_toml_never_panics(text in toml_document()) {
        let result = parse_str(&text, "random.toml");
        check_result(&text, &result);
        if let Ok(config) = result {
            let printed = toml::to_string(&config).unwrap();
            let reparsed = parse_str(&printed, "printed.toml");
            prop_assert_eq!(reparsed.as_ref().ok(), Some(&config), "{}", printed);
        }
    }

    #[test]
    fn duration_strings_round_trip(
        text in "[0-9]{1,21}(\\.[0-9]{1,10})? ?(ns|us|µs|ms|s|sec|m|min|h|hour|d|day)"
    ) {
        if let Ok(duration) = text.parse::<Duration>() {
            let printed = duration.to_string();
            prop_assert_eq!(printed.parse::<Duration>(), Ok(duration), "{} printed as {}", text, printed);
        }
    }

    #[test]
    fn duration_values_round_trip(nanos in any::<u64>()) {
        let duration = Duration(std::time::Duration::from_nanos(nanos));
        prop_assert_eq!(duration.to_string().parse::<Duration>(), Ok(duration));
    }

    #[test]
    fn size_strings_round_trip(
        text in "[0-9]{1,21}(\\.[0-9]{1,10})? ?(|B|k|K|KB|kb|M|MB|G|GB|T|TB|KiB|MiB|GiB|TiB|kib)"
    ) {
        if let Ok(size) = text.parse::<ByteSize>() {
            let printed = size.to_string();
            prop_assert_eq!(printed.parse::<ByteSize>(), Ok(size), "{} printed as {}", text, printed);
        }
    }

    #[test]
    fn size_values_round_trip(bytes in any::<u64>()) {
        let size = ByteSize(bytes);
        prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
    }

    #[test]
    fn rate_strings_round_trip(
        text in "[0-9]{1,20} ?/ ?(s|sec|second|m|min|minute|h|hour|d|day)"
    ) {
        if let Ok(rate) = text.parse::<Rate>() {
            let printed = rate.to_string();
            prop_assert_eq!(printed.parse::<Rate>(), Ok(rate), "{} printed as {}", text, printed);
        }
    }

    #[test]
    fn host_port_round_trips(ip in any::<std::net::IpAddr>(), port in any::<u16>()) {
        let address = HostPort { host: valkyrie_config::address::Host::Ip(ip), port };
        prop_assert_eq!(address.to_string().parse::<HostPort>(), Ok(address));
    }

    #[test]
    fn cidr_contains_its_network(ip in any::<std::net::IpAddr>(), prefix in 0u8..=128) {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.min(max);
        let range: Cidr = format!("{ip}/{prefix}").parse().unwrap();
        prop_assert!(range.contains(ip));
        prop_assert!(range.contains(range.network()));
        prop_assert_eq!(range.to_string().parse::<Cidr>(), Ok(range));
    }

    #[test]
    fn nearest_returns_close_candidate(
        word in "[a-z_]{0,12}",
        candidates in prop::collection::vec("[a-z_]{1,12}", 0..8),
    ) {
        let found = nearest(&word, candidates.iter().map(String::as_str));
        if let Some(found) = found {
            prop_assert!(candidates.iter().any(|candidate| candidate == found));
            let distance = edit_distance(&word, found);
            prop_assert!(distance <= 3);
            prop_assert!(candidates.iter().all(|candidate| edit_distance(&word, candidate) >= distance));
        }
        if candidates.contains(&word) {
            prop_assert_eq!(found, Some(word.as_str()));
        }
    }
}

#[test]
fn unit_strings_parse_exactly() {
    assert_eq!("1.5ms".parse::<Duration>(), Ok(Duration::from_micros(1500)));
    assert_eq!("0.5KiB".parse::<ByteSize>(), Ok(ByteSize(512)));
    assert_eq!(
        "18446744073709551615ns".parse::<Duration>(),
        Ok(Duration(std::time::Duration::from_nanos(u64::MAX)))
    );
    assert!("18446744073709551616ns".parse::<Duration>().is_err());
    assert!("0.5ns".parse::<Duration>().is_err());
    assert!("1.5B".parse::<ByteSize>().is_err());
    assert!(".5s".parse::<Duration>().is_err());
    assert!("1.s".parse::<Duration>().is_err());
    assert_eq!(ByteSize(65_536).to_string(), "64KiB");
    assert_eq!(ByteSize(6_000_000_000).to_string(), "6GB");
    assert_eq!(ByteSize(1001).to_string(), "1001B");
    assert_eq!(Duration::from_micros(82).to_string(), "82us");
}
