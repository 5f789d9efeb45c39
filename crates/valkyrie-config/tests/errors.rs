//! Each kind of error the validator reports, with its position, key, message
//! and hint.

mod common;

use common::{errors, expect_error, expect_error_with_upstreams, hint, only_error, UPSTREAMS};
use valkyrie_config::ErrorKind;

#[test]
fn syntax_error_has_parser_position() {
    let error = expect_error(
        "[server]\nlisten = [\"0.0.0.0:8080\"\n",
        ErrorKind::Syntax,
        3,
        1,
        "",
    );
    assert!(error.message.starts_with("invalid TOML: "), "{error}");
    assert!(!error.message.contains('\n'), "{error}");
}

#[test]
fn syntax_error_duplicate_key() {
    let error = expect_error(
        "[server]\nworker_threads = 1\nworker_threads = 2\n",
        ErrorKind::Syntax,
        3,
        1,
        "",
    );
    assert!(error.message.contains("duplicate key"), "{error}");
}

#[test]
fn unknown_key_suggests_nearest_in_section() {
    let error = expect_error(
        "[server]\nlistne = [\"0.0.0.0:8080\"]\n",
        ErrorKind::UnknownKey,
        2,
        1,
        "server.listne",
    );
    assert_eq!(error.message, "unknown key `listne` in [server]");
    assert_eq!(hint(&error), "did you mean `listen`?");
}

#[test]
fn unknown_key_names_its_section() {
    let text = r#"[[routes]]
name = "all"
upstream = "api"
worker_threads = 16
"#;
    let error = expect_error_with_upstreams(
        text,
        ErrorKind::UnknownKey,
        4,
        1,
        "routes[0].worker_threads",
    );
    assert_eq!(
        error.message,
        "unknown key `worker_threads` in [[routes]]: it belongs in [server]"
    );
    assert_eq!(hint(&error), "move it under the [server] header");
    assert_eq!(
        error.to_string(),
        "test.toml:4:1: unknown key `worker_threads` in [[routes]]: it belongs in [server]\n  \
         hint: move it under the [server] header"
    );
}

#[test]
fn unknown_key_appended_after_routes() {
    // `echo 'max_heap_size = "4GB"' >> file` lands in the last section.
    let text = format!(
        "{UPSTREAMS}\n[[routes]]\nname = \"all\"\nupstream = \"api\"\nmax_heap_size = \"4GB\"\n"
    );
    let error = only_error(&text);
    assert_eq!(error.kind, ErrorKind::UnknownKey);
    assert_eq!(error.line, 13);
    assert_eq!(
        error.message,
        "unknown key `max_heap_size` in [[routes]]: it belongs in [performance]"
    );
}

#[test]
fn unknown_key_at_top_level() {
    let error = expect_error(
        "worker_threads = 4\n",
        ErrorKind::UnknownKey,
        1,
        1,
        "worker_threads",
    );
    assert_eq!(
        error.message,
        "unknown key `worker_threads` at the top level: it belongs in [server]"
    );
}

#[test]
fn unknown_table_belongs_under_parent() {
    let error = expect_error(
        "[lockfree]\nfit_capacity = 1024\n",
        ErrorKind::UnknownKey,
        1,
        2,
        "lockfree",
    );
    assert_eq!(
        error.message,
        "unknown key `lockfree` at the top level: it belongs in [routing]"
    );
    assert_eq!(hint(&error), "write its header as [routing.lockfree]");
}

#[test]
fn unknown_key_with_typo_of_other_section() {
    let error = expect_error(
        "[metrics]\nworker_thread = 4\n",
        ErrorKind::UnknownKey,
        2,
        1,
        "metrics.worker_thread",
    );
    assert_eq!(hint(&error), "did you mean `worker_threads` in [server]?");
}

#[test]
fn unknown_key_lists_section_keys() {
    let error = expect_error(
        "[redis]\ncluster = true\n",
        ErrorKind::UnknownKey,
        2,
        1,
        "redis.cluster",
    );
    assert_eq!(hint(&error), "the keys of [redis] are url");
}

#[test]
fn wrong_type_integer_in_quotes() {
    let error = expect_error(
        "[server]\nworker_threads = \"16\"\n",
        ErrorKind::WrongType,
        2,
        18,
        "server.worker_threads",
    );
    assert_eq!(
        error.message,
        "`server.worker_threads`: expected an integer, found string \"16\""
    );
    assert_eq!(hint(&error), "remove the quotes: 16");
}

#[test]
fn wrong_type_float_for_string() {
    let error = expect_error(
        "[security]\nmin_tls_version = 1.2\n",
        ErrorKind::WrongType,
        2,
        19,
        "security.min_tls_version",
    );
    assert_eq!(
        error.message,
        "`security.min_tls_version`: expected a string, found float 1.2"
    );
    assert_eq!(hint(&error), "put the value in quotes: \"1.2\"");
}

#[test]
fn wrong_type_string_for_bool() {
    let error = expect_error(
        "[logging]\naccess_log = \"false\"\n",
        ErrorKind::WrongType,
        2,
        14,
        "logging.access_log",
    );
    assert_eq!(hint(&error), "remove the quotes: false");
}

#[test]
fn wrong_type_string_for_list() {
    let error = expect_error(
        "[server]\nlisten = \"0.0.0.0:8080\"\n",
        ErrorKind::WrongType,
        2,
        10,
        "server.listen",
    );
    assert_eq!(
        error.message,
        "`server.listen`: expected an array of strings, found string \"0.0.0.0:8080\""
    );
    assert_eq!(hint(&error), "write it as a list: [\"0.0.0.0:8080\"]");
}

#[test]
fn wrong_type_list_element() {
    let error = expect_error(
        "[performance]\ncpu_cores = [0, \"1\"]\n",
        ErrorKind::WrongType,
        2,
        17,
        "performance.cpu_cores[1]",
    );
    assert_eq!(hint(&error), "remove the quotes: 1");
}

#[test]
fn wrong_type_value_for_table() {
    let error = expect_error("server = 1\n", ErrorKind::WrongType, 1, 10, "server");
    assert_eq!(error.message, "`server`: expected a table, found integer 1");
}

#[test]
fn wrong_type_table_for_array_of_tables() {
    let error = expect_error(
        "[routes]\nname = \"x\"\n",
        ErrorKind::WrongType,
        1,
        1,
        "routes",
    );
    assert_eq!(
        hint(&error),
        "write each entry under its own [[routes]] header"
    );
}

#[test]
fn bad_duration() {
    let error = expect_error(
        "[server]\nidle_timeout = \"10 seconds\"\n",
        ErrorKind::InvalidUnit,
        2,
        16,
        "server.idle_timeout",
    );
    assert_eq!(
        error.message,
        "`server.idle_timeout`: invalid duration `10 seconds`: expected a number with a unit, \
         such as \"500ms\", \"82us\", \"10s\", \"5m\" or \"1h\""
    );
}

#[test]
fn duration_without_unit() {
    let error = expect_error(
        "[routing]\nroute_cache_ttl = \"300\"\n",
        ErrorKind::InvalidUnit,
        2,
        19,
        "routing.route_cache_ttl",
    );
    assert_eq!(hint(&error), "add a unit: \"300s\" or \"300ms\"");

    let error = expect_error(
        "[routing]\nroute_cache_ttl = 300\n",
        ErrorKind::WrongType,
        2,
        19,
        "routing.route_cache_ttl",
    );
    assert_eq!(hint(&error), "add a unit: \"300s\" or \"300ms\"");
}

#[test]
fn zero_duration_where_positive_needed() {
    let error = expect_error(
        "[server]\nrequest_header_timeout = \"0s\"\n",
        ErrorKind::InvalidValue,
        2,
        26,
        "server.request_header_timeout",
    );
    assert_eq!(
        error.message,
        "`server.request_header_timeout`: the duration must be greater than 0"
    );
}

#[test]
fn bad_size() {
    let error = expect_error(
        "[performance]\nmax_heap_size = \"4 parsecs\"\n",
        ErrorKind::InvalidUnit,
        2,
        17,
        "performance.max_heap_size",
    );
    assert!(
        error
            .message
            .contains("invalid size `4 parsecs`: expected a number with a unit"),
        "{error}"
    );
    expect_error(
        "[server]\nmax_request_body_bytes = -1\n",
        ErrorKind::InvalidValue,
        2,
        26,
        "server.max_request_body_bytes",
    );
}

#[test]
fn bad_rate() {
    let error = expect_error(
        "[security.rate_limiting]\ndefault_rate = \"100/fortnight\"\n",
        ErrorKind::InvalidUnit,
        2,
        16,
        "security.rate_limiting.default_rate",
    );
    assert!(
        error
            .message
            .contains("invalid rate `100/fortnight`: expected a count per unit of time"),
        "{error}"
    );

    let error = expect_error(
        "[security.rate_limiting]\ndefault_rate = \"100\"\n",
        ErrorKind::InvalidUnit,
        2,
        16,
        "security.rate_limiting.default_rate",
    );
    assert_eq!(hint(&error), "add a period: \"100/sec\" or \"100/min\"");
}

#[test]
fn listen_without_host() {
    let error = expect_error(
        "[server]\nlisten = [\"8080\"]\n",
        ErrorKind::InvalidAddress,
        2,
        11,
        "server.listen[0]",
    );
    assert_eq!(
        error.message,
        "`server.listen[0]`: invalid listen address `8080`: the host is missing"
    );
    assert!(
        hint(&error).starts_with("write \"0.0.0.0:8080\" (expected host:port"),
        "{error}"
    );
}

#[test]
fn listen_ipv6_needs_brackets() {
    let error = expect_error(
        "[server]\nlisten = [\"[::1]:8080\", \"::1:8081\"]\n",
        ErrorKind::InvalidAddress,
        2,
        25,
        "server.listen[1]",
    );
    assert!(
        error
            .message
            .ends_with("an IPv6 address needs brackets around it"),
        "{error}"
    );
    assert!(hint(&error).starts_with("write \"[::1]:8081\""), "{error}");
}

#[test]
fn listen_port_out_of_range() {
    let error = expect_error(
        "[metrics]\nlisten = \"127.0.0.1:65536\"\n",
        ErrorKind::InvalidAddress,
        2,
        10,
        "metrics.listen",
    );
    assert_eq!(
        error.message,
        "`metrics.listen`: invalid listen address `127.0.0.1:65536`: port `65536` is not a number from 0 to 65535"
    );
    assert!(hint(&error).starts_with("expected host:port"), "{error}");
}

#[test]
fn listen_port_zero_accepted() {
    let config = valkyrie_config::parse_str(
        "[server]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\n",
        "test.toml",
    )
    .unwrap();
    assert_eq!(config.server.listen.len(), 2);
}

#[test]
fn bad_cidr_in_trusted_proxies() {
    let error = expect_error(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
        ErrorKind::InvalidAddress,
        2,
        34,
        "server.trusted_proxies[1]",
    );
    assert_eq!(
        error.message,
        "`server.trusted_proxies[1]`: invalid address or CIDR range `10.0.0.0/33`: \
         prefix length `33` is not a number from 0 to 32"
    );
    assert!(
        hint(&error).starts_with("expected an IP address or CIDR range"),
        "{error}"
    );
}

#[test]
fn bad_cidr_in_admin_allow() {
    let error = expect_error(
        "[admin]\nallow = [\"localhost\"]\n",
        ErrorKind::InvalidAddress,
        2,
        10,
        "admin.allow[0]",
    );
    assert!(
        error.message.contains("`localhost` is not an IP address"),
        "{error}"
    );
}

#[test]
fn bad_cidr_in_deny_list() {
    let error = expect_error(
        "[security]\ndeny_list = [\"[::1]/128\"]\n",
        ErrorKind::InvalidAddress,
        2,
        14,
        "security.deny_list[0]",
    );
    assert_eq!(hint(&error), "write \"::1/128\"");
}

#[test]
fn bad_log_format() {
    let error = expect_error(
        "[logging]\nformat = \"yaml\"\n",
        ErrorKind::InvalidValue,
        2,
        10,
        "logging.format",
    );
    assert_eq!(
        error.message,
        "`logging.format`: invalid value `yaml`: expected `json` or `text`"
    );
}

#[test]
fn bad_log_level() {
    let error = expect_error(
        "[logging]\nlevel = \"verbose\"\n",
        ErrorKind::InvalidValue,
        2,
        9,
        "logging.level",
    );
    assert_eq!(
        error.message,
        "`logging.level`: invalid log level `verbose`"
    );
    assert!(hint(&error).contains("expected a level"), "{error}");

    let error = expect_error(
        "[logging]\nlevel = \"info,hyper=dbug\"\n",
        ErrorKind::InvalidValue,
        2,
        9,
        "logging.level",
    );
    assert_eq!(hint(&error), "did you mean `debug`?");
}

#[test]
fn log_directives_accepted() {
    let config = valkyrie_config::parse_str(
        "[logging]\nlevel = \"warn,valkyrie_proxy=debug\"\n",
        "test.toml",
    )
    .unwrap();
    assert_eq!(config.logging.level, "warn,valkyrie_proxy=debug");
}

#[test]
fn bad_balance_lists_choices() {
    let text = "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\nbalance = \"roundrobin\"\n";
    let error = expect_error(text, ErrorKind::InvalidValue, 4, 11, "upstreams[0].balance");
    assert_eq!(
        error.message,
        "`upstreams[0].balance`: invalid value `roundrobin`: \
         expected `round_robin`, `least_request`, `consistent_hash` or `random`"
    );
    assert_eq!(hint(&error), "did you mean `round_robin`?");
}

#[test]
fn bad_protocol() {
    let text =
        "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\nprotocol = \"h2\"\n";
    let error = expect_error(
        text,
        ErrorKind::InvalidValue,
        4,
        12,
        "upstreams[0].protocol",
    );
    assert!(
        error.message.ends_with("expected `http1` or `http2`"),
        "{error}"
    );
}

#[test]
fn bad_health_check_type() {
    let text = "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\n[upstreams.health_check]\ntype = \"udp\"\n";
    let error = expect_error(
        text,
        ErrorKind::InvalidValue,
        5,
        8,
        "upstreams[0].health_check.type",
    );
    assert!(
        error.message.ends_with("expected `http` or `tcp`"),
        "{error}"
    );
}

#[test]
fn bad_rate_limit_backend() {
    let error = expect_error(
        "[security.rate_limiting]\nbackend = \"memcached\"\n",
        ErrorKind::InvalidValue,
        2,
        11,
        "security.rate_limiting.backend",
    );
    assert!(
        error.message.ends_with("expected `local` or `redis`"),
        "{error}"
    );
}

#[test]
fn bad_min_tls_version() {
    let error = expect_error(
        "[security]\nmin_tls_version = \"1.1\"\n",
        ErrorKind::InvalidValue,
        2,
        19,
        "security.min_tls_version",
    );
    assert!(
        error.message.ends_with("expected `1.2` or `1.3`"),
        "{error}"
    );
}

#[test]
fn fit_load_factor_out_of_range() {
    for (value, column) in [("0", 19), ("1", 19), ("1.5", 19), ("-0.1", 19), ("nan", 19)] {
        let text = format!("[routing.lockfree]\nfit_load_factor = {value}\n");
        let error = expect_error(
            &text,
            ErrorKind::InvalidValue,
            2,
            column,
            "routing.lockfree.fit_load_factor",
        );
        assert_eq!(
            error.message,
            format!(
                "`routing.lockfree.fit_load_factor`: {value} is out of range: \
                 expected a number greater than 0 and less than 1"
            )
        );
    }
    let config =
        valkyrie_config::parse_str("[routing.lockfree]\nfit_load_factor = 0.6\n", "test.toml")
            .unwrap();
    assert_eq!(config.routing.lockfree.fit_load_factor, 0.6);
}

#[test]
fn integer_out_of_range() {
    let error = expect_error(
        "[routing]\nmax_concurrent_requests = 0\n",
        ErrorKind::InvalidValue,
        2,
        27,
        "routing.max_concurrent_requests",
    );
    assert_eq!(
        error.message,
        "`routing.max_concurrent_requests`: 0 is out of range: expected an integer of 1 or more"
    );
    let text = "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\n[upstreams.health_check]\nexpected_status = 99\n";
    let error = expect_error(
        text,
        ErrorKind::InvalidValue,
        5,
        19,
        "upstreams[0].health_check.expected_status",
    );
    assert!(
        error
            .message
            .ends_with("expected an integer from 100 to 599"),
        "{error}"
    );
}

#[test]
fn route_names_missing_upstream() {
    let text = r#"[[routes]]
name = "all"
upstream = "apii"
"#;
    let error =
        expect_error_with_upstreams(text, ErrorKind::UndefinedName, 3, 12, "routes[0].upstream");
    assert_eq!(
        error.message,
        "route `all` names upstream `apii`, which is not defined"
    );
    assert_eq!(
        hint(&error),
        "did you mean `api`? Defined upstreams: `api`, `web`"
    );
}

#[test]
fn defined_names_listed_nearest_first() {
    let text = r#"[[routes]]
name = "all"
upstream = "wbe-2"
"#;
    let error =
        expect_error_with_upstreams(text, ErrorKind::UndefinedName, 3, 12, "routes[0].upstream");
    assert_eq!(hint(&error), "defined upstreams: `web`, `api`");
}

#[test]
fn route_names_missing_key_table() {
    let text = r#"[[routes]]
name = "tenants"
key_table = "tenant"
"#;
    let error =
        expect_error_with_upstreams(text, ErrorKind::UndefinedName, 3, 13, "routes[0].key_table");
    assert_eq!(
        error.message,
        "route `tenants` names key table `tenant`, which is not defined"
    );
    assert_eq!(
        hint(&error),
        "no [[key_tables]] entry is defined in this file"
    );
}

#[test]
fn route_without_target() {
    let text = "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\n";
    let error =
        expect_error_with_upstreams(text, ErrorKind::MissingKey, 1, 1, "routes[0].upstream");
    assert_eq!(
        error.message,
        "route `all` sets neither `upstream` nor `key_table`"
    );
}

#[test]
fn route_with_both_targets() {
    let text = r#"[[routes]]
name = "all"
upstream = "api"
key_table = "tenants"

[[key_tables]]
name = "tenants"
key = { header = "X-Tenant" }
source = { file = "tenants.csv" }
"#;
    let error = expect_error_with_upstreams(text, ErrorKind::Conflict, 4, 1, "routes[0].key_table");
    assert_eq!(
        error.message,
        "route `all` sets both `upstream` and `key_table`"
    );
}

#[test]
fn duplicate_route_name() {
    let text = r#"[[routes]]
name = "all"
path_prefix = "/a/"
upstream = "api"

[[routes]]
name = "all"
path_prefix = "/b/"
upstream = "web"
"#;
    let error = expect_error_with_upstreams(text, ErrorKind::DuplicateName, 7, 8, "routes[1].name");
    assert_eq!(
        error.message,
        "duplicate route name `all`: the first route with this name is at line 2"
    );
}

#[test]
fn duplicate_upstream_name() {
    let text =
        format!("{UPSTREAMS}\n[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9003\"]\n");
    let error = expect_error(&text, ErrorKind::DuplicateName, 11, 8, "upstreams[2].name");
    assert_eq!(
        error.message,
        "duplicate upstream name `api`: the first upstream with this name is at line 3"
    );
}

#[test]
fn duplicate_key_table_name() {
    let text = r#"[[key_tables]]
name = "tenants"
key = { header = "X-Tenant" }
source = { file = "a.csv" }

[[key_tables]]
name = "tenants"
key = { query = "tenant" }
source = { file = "b.csv" }
"#;
    let error = expect_error(text, ErrorKind::DuplicateName, 7, 8, "key_tables[1].name");
    assert_eq!(
        error.message,
        "duplicate key table name `tenants`: the first key table with this name is at line 2"
    );
}

#[test]
fn upstream_without_endpoints() {
    let error = expect_error(
        "[[upstreams]]\nname = \"api\"\nendpoints = []\n",
        ErrorKind::InvalidValue,
        3,
        13,
        "upstreams[0].endpoints",
    );
    assert_eq!(error.message, "upstream `api` has no endpoints");

    let error = expect_error(
        "[[upstreams]]\nname = \"api\"\n",
        ErrorKind::MissingKey,
        1,
        1,
        "upstreams[0].endpoints",
    );
    assert_eq!(
        error.message,
        "missing required key `endpoints` in [[upstreams]]"
    );
}

#[test]
fn endpoint_not_host_port() {
    let text = "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\", \"localhost\"]\n";
    let error = expect_error(
        text,
        ErrorKind::InvalidAddress,
        3,
        32,
        "upstreams[0].endpoints[1]",
    );
    assert_eq!(
        error.message,
        "`upstreams[0].endpoints[1]`: invalid endpoint `localhost`: the port is missing"
    );
}

#[test]
fn endpoint_with_scheme_or_port_zero() {
    let text = "[[upstreams]]\nname = \"api\"\nendpoints = [\"http://10.0.0.1:80/\"]\n";
    let error = expect_error(
        text,
        ErrorKind::InvalidAddress,
        3,
        14,
        "upstreams[0].endpoints[0]",
    );
    assert!(hint(&error).starts_with("write \"10.0.0.1:80\""), "{error}");

    let text =
        "[[upstreams]]\nname = \"api\"\nendpoints = [{ address = \"10.0.0.1:0\", weight = 2 }]\n";
    let error = expect_error(
        text,
        ErrorKind::InvalidAddress,
        3,
        26,
        "upstreams[0].endpoints[0].address",
    );
    assert!(
        error.message.ends_with("port 0 cannot be connected to"),
        "{error}"
    );
}

#[test]
fn route_with_two_path_conditions() {
    let text = r#"[[routes]]
name = "all"
path_prefix = "/v1/"
path_regex = "^/v1/.*"
upstream = "api"
"#;
    let error =
        expect_error_with_upstreams(text, ErrorKind::Conflict, 4, 1, "routes[0].path_regex");
    assert_eq!(
        error.message,
        "route `all` sets both `path_prefix` and `path_regex`"
    );
}

#[test]
fn path_without_leading_slash() {
    let text = "[[routes]]\nname = \"v1\"\npath_prefix = \"v1/\"\nupstream = \"api\"\n";
    let error = expect_error_with_upstreams(
        text,
        ErrorKind::InvalidValue,
        3,
        15,
        "routes[0].path_prefix",
    );
    assert_eq!(
        error.message,
        "`routes[0].path_prefix`: path `v1/` does not start with `/`"
    );
    assert_eq!(hint(&error), "write \"/v1/\"");

    let text = "[[routes]]\nname = \"v1\"\npath_exact = \"health\"\nupstream = \"api\"\n";
    expect_error_with_upstreams(text, ErrorKind::InvalidValue, 3, 14, "routes[0].path_exact");
}

#[test]
fn invalid_path_regex() {
    let text = "[[routes]]\nname = \"v1\"\npath_regex = \"/v1/(unclosed\"\nupstream = \"api\"\n";
    let error =
        expect_error_with_upstreams(text, ErrorKind::InvalidRegex, 3, 14, "routes[0].path_regex");
    assert_eq!(
        error.message,
        "`routes[0].path_regex`: invalid regex `/v1/(unclosed`: unclosed group"
    );
}

#[test]
fn invalid_header_regex() {
    let text = r#"[[routes]]
name = "canary"
upstream = "api"
headers = [{ name = "X-Canary", regex = "[a-" }]
"#;
    let error = expect_error_with_upstreams(
        text,
        ErrorKind::InvalidRegex,
        4,
        41,
        "routes[0].headers[0].regex",
    );
    assert!(
        error
            .message
            .starts_with("`routes[0].headers[0].regex`: invalid regex `[a-`: "),
        "{error}"
    );
}

#[test]
fn invalid_methods() {
    let text = "[[routes]]\nname = \"v1\"\nmethods = [\"GET\", \"GTE\"]\nupstream = \"api\"\n";
    let error =
        expect_error_with_upstreams(text, ErrorKind::InvalidValue, 3, 19, "routes[0].methods[1]");
    assert_eq!(
        error.message,
        "`routes[0].methods[1]`: unknown HTTP method `GTE`"
    );
    assert_eq!(hint(&error), "did you mean \"GET\"?");

    let text = "[[routes]]\nname = \"v1\"\nmethods = [\"FETCH\"]\nupstream = \"api\"\n";
    let error =
        expect_error_with_upstreams(text, ErrorKind::InvalidValue, 3, 12, "routes[0].methods[0]");
    assert!(
        hint(&error).starts_with("expected a registered method such as `GET`"),
        "{error}"
    );
}

#[test]
fn invalid_host_patterns() {
    let cases = [
        (
            "api.*.example.com",
            "only a single leading `*.` wildcard is allowed",
        ),
        ("*", "a lone `*` is not a host pattern"),
        (
            "**.example.com",
            "only a single leading `*.` wildcard is allowed",
        ),
        ("api example.com", "` ` is not allowed in a host name"),
        ("api.example.com:8080", "host patterns carry no port"),
    ];
    for (pattern, reason) in cases {
        let text = format!("[[routes]]\nname = \"r\"\nhost = \"{pattern}\"\nupstream = \"api\"\n");
        let error =
            expect_error_with_upstreams(&text, ErrorKind::InvalidValue, 3, 8, "routes[0].host");
        assert!(error.message.contains(reason), "{pattern}: {error}");
    }
}

#[test]
fn header_condition_without_value_or_regex() {
    let text = r#"[[routes]]
name = "canary"
upstream = "api"

[[routes.headers]]
name = "X-Canary"
"#;
    let error = expect_error_with_upstreams(
        text,
        ErrorKind::MissingKey,
        5,
        1,
        "routes[0].headers[0].value",
    );
    assert_eq!(
        error.message,
        "header condition `X-Canary` sets neither `value` nor `regex`"
    );
}

#[test]
fn header_condition_with_value_and_regex() {
    let text = r#"[[routes]]
name = "canary"
upstream = "api"
headers = [{ name = "X-Canary", value = "1", regex = "[0-9]" }]
"#;
    let error = expect_error_with_upstreams(
        text,
        ErrorKind::Conflict,
        4,
        46,
        "routes[0].headers[0].regex",
    );
    assert_eq!(
        error.message,
        "header condition `X-Canary` sets both `value` and `regex`"
    );
}

#[test]
fn identical_routes_never_match() {
    let text = r#"[[routes]]
name = "first"
host = "API.example.com"
path_prefix = "/v1/"
methods = ["GET", "POST"]
headers = [{ name = "X-Env", value = "prod" }]
upstream = "api"

[[routes]]
name = "second"
host = "api.example.com"
path_prefix = "/v1/"
methods = ["post", "GET", "GET"]
headers = [{ name = "x-env", value = "prod" }]
upstream = "web"
"#;
    let error = expect_error_with_upstreams(text, ErrorKind::UnreachableRoute, 9, 1, "routes[1]");
    assert_eq!(
        error.message,
        "route `second` can never match: route `first` at line 1 has the same conditions and comes first"
    );
}

#[test]
fn routes_differing_in_one_condition_are_accepted() {
    let text = r#"[[routes]]
name = "get"
path_prefix = "/v1/"
methods = ["GET"]
upstream = "api"

[[routes]]
name = "post"
path_prefix = "/v1/"
methods = ["POST"]
upstream = "api"

[[routes]]
name = "exact"
path_exact = "/v1/"
methods = ["POST"]
upstream = "api"
"#;
    let config = valkyrie_config::parse_str(&format!("{text}{UPSTREAMS}"), "test.toml").unwrap();
    assert_eq!(config.routes.len(), 3);
}

#[test]
fn key_table_default_upstream_missing() {
    let text = r#"[[key_tables]]
name = "tenants"
key = { header = "X-Tenant" }
source = { file = "tenants.csv" }
default_upstream = "fallback"
"#;
    let error = expect_error_with_upstreams(
        text,
        ErrorKind::UndefinedName,
        5,
        20,
        "key_tables[0].default_upstream",
    );
    assert_eq!(
        error.message,
        "key table `tenants` names upstream `fallback`, which is not defined"
    );
}

#[test]
fn key_table_key_needs_exactly_one_choice() {
    let text = r#"[[key_tables]]
name = "tenants"
key = { header = "X-Tenant", query = "tenant" }
source = { file = "tenants.csv" }
"#;
    let error = expect_error(text, ErrorKind::Conflict, 3, 30, "key_tables[0].key.query");
    assert!(
        error
            .message
            .starts_with("`key_tables[0].key` sets both `header` and `query`"),
        "{error}"
    );

    let text =
        "[[key_tables]]\nname = \"tenants\"\nkey = {}\nsource = { file = \"tenants.csv\" }\n";
    let error = expect_error(text, ErrorKind::MissingKey, 3, 7, "key_tables[0].key");
    assert_eq!(
        error.message,
        "`key_tables[0].key` needs one of `header`, `path_segment` or `query`"
    );
    assert_eq!(hint(&error), KEY_EXAMPLE);
}

/// The hint of a missing or malformed `key` of a key table.
const KEY_EXAMPLE: &str = "write `key = { header = \"X-Tenant\" }`, `key = { path_segment = 1 }` or `key = { query = \"tenant\" }`";

#[test]
fn key_table_sources_hint_at_their_forms() {
    let source_example = "write `source = { file = \"tenants.csv\" }` (lines `key,upstream[,endpoint]`, relative to the config file's folder) or `source = { redis_hash = \"valkyrie:tenants\" }`";

    let text = "[[key_tables]]\nname = \"t\"\nkey = { header = \"X-T\" }\nsource = { url = \"http://x\" }\n";
    let error = only_error(text);
    assert_eq!(error.kind, ErrorKind::UnknownKey);
    assert_eq!(error.message, "unknown key `url` in [key_tables.source]");
    assert_eq!(hint(&error), source_example);

    let text = "[[key_tables]]\nname = \"t\"\nkey = { header = \"X-T\" }\n";
    let error = expect_error(text, ErrorKind::MissingKey, 1, 1, "key_tables[0].source");
    assert_eq!(hint(&error), source_example);

    let text = "[[key_tables]]\nname = \"t\"\nkey = \"X-T\"\nsource = { file = \"t.csv\" }\n";
    let error = expect_error(text, ErrorKind::WrongType, 3, 7, "key_tables[0].key");
    assert_eq!(hint(&error), KEY_EXAMPLE);

    let text =
        "[[key_tables]]\nname = \"t\"\nkey = { header = \"\" }\nsource = { file = \"t.csv\" }\n";
    let error = only_error(text);
    assert_eq!(
        error.message,
        "`key_tables[0].key.header`: the header name is empty"
    );
    assert_eq!(
        hint(&error),
        "write the name of a request header, such as `X-Tenant`"
    );
}

#[test]
fn listeners_on_same_address() {
    let error = expect_error(
        "[metrics]\nlisten = \"0.0.0.0:8080\"\n",
        ErrorKind::Conflict,
        2,
        10,
        "metrics.listen",
    );
    assert_eq!(
        error.message,
        "`metrics.listen`: 0.0.0.0:8080 is already taken by `server.listen` (the default)"
    );

    let text = "[server]\nlisten = [\"127.0.0.1:7000\"]\n[admin]\nlisten = \"0.0.0.0:7000\"\n";
    let error = expect_error(text, ErrorKind::Conflict, 4, 10, "admin.listen");
    assert!(
        error
            .message
            .ends_with("is already taken by `server.listen[0]` (line 2)"),
        "{error}"
    );
}

#[test]
fn redis_backend_needs_redis_section() {
    let text = "[security.rate_limiting]\nenable = true\nbackend = \"redis\"\n";
    let error = expect_error(text, ErrorKind::MissingKey, 3, 11, "redis");
    assert_eq!(
        hint(&error),
        "add a [redis] section with url = \"redis://127.0.0.1:6379\""
    );

    let accepted = format!("{text}[redis]\nurl = \"redis://10.0.0.5:6379\"\n");
    assert!(valkyrie_config::parse_str(&accepted, "test.toml").is_ok());
}

#[test]
fn too_many_routes() {
    let text = r#"[routing]
max_routes = 1

[[routes]]
name = "a"
path_prefix = "/a/"
upstream = "api"

[[routes]]
name = "b"
path_prefix = "/b/"
upstream = "api"
"#;
    let error =
        expect_error_with_upstreams(text, ErrorKind::InvalidValue, 2, 14, "routing.max_routes");
    assert_eq!(
        error.message,
        "`routing.max_routes`: the file defines 2 routes, more than the limit of 1"
    );
}

#[test]
fn circuit_breaker_open_time_over_max() {
    let text = "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\n[upstreams.circuit_breaker]\nopen_time = \"2m\"\n";
    let error = expect_error(
        text,
        ErrorKind::Conflict,
        5,
        13,
        "upstreams[0].circuit_breaker.open_time",
    );
    assert!(
        error
            .message
            .ends_with("open_time (120s) is longer than max_open_time (60s)"),
        "{error}"
    );
}

#[test]
fn strip_prefix_outside_path_prefix() {
    let text = "[[routes]]\nname = \"v1\"\npath_prefix = \"/v1/\"\nstrip_prefix = \"/api\"\nupstream = \"api\"\n";
    let error =
        expect_error_with_upstreams(text, ErrorKind::Conflict, 4, 16, "routes[0].strip_prefix");
    assert!(
        error
            .message
            .contains("strip_prefix `/api` is not a prefix of path_prefix `/v1/`"),
        "{error}"
    );
}

#[test]
fn admin_token_from_two_places() {
    let text = "[admin]\ntoken_env = \"TOKEN\"\ntoken_file = \"/run/token\"\n";
    expect_error(text, ErrorKind::Conflict, 3, 1, "admin.token_file");
}

#[test]
fn client_certificate_needs_key() {
    let text = "[[upstreams]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\n[upstreams.tls]\nclient_cert_path = \"/c.pem\"\n";
    let error = expect_error(
        text,
        ErrorKind::MissingKey,
        5,
        1,
        "upstreams[0].tls.client_key_path",
    );
    assert_eq!(
        error.message,
        "`upstreams[0].tls` sets `client_cert_path` without `client_key_path`"
    );
}

#[test]
fn certificate_fields_required() {
    let text = "[[security.certificates]]\nserver_names = []\ncert_path = \"/c.pem\"\n";
    let found = errors(text);
    let summary: Vec<(ErrorKind, usize, usize, &str)> = found
        .iter()
        .map(|error| (error.kind, error.line, error.column, error.key.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                ErrorKind::MissingKey,
                1,
                1,
                "security.certificates[0].key_path"
            ),
            (
                ErrorKind::InvalidValue,
                2,
                16,
                "security.certificates[0].server_names"
            ),
        ]
    );
}

#[test]
fn several_errors_reported_at_once() {
    let text = r#"[server]
listen = ["8080"]
worker_threads = "4"
idle_timout = "60s"

[logging]
format = "yaml"

[[routes]]
name = "all"
path_prefix = "/"
upstream = "apii"
worker_threads = 16
"#;
    let found = errors(&format!("{text}{UPSTREAMS}"));
    let summary: Vec<(ErrorKind, usize, usize, &str)> = found
        .iter()
        .map(|error| (error.kind, error.line, error.column, error.key.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (ErrorKind::InvalidAddress, 2, 11, "server.listen[0]"),
            (ErrorKind::WrongType, 3, 18, "server.worker_threads"),
            (ErrorKind::UnknownKey, 4, 1, "server.idle_timout"),
            (ErrorKind::InvalidValue, 7, 10, "logging.format"),
            (ErrorKind::UndefinedName, 12, 12, "routes[0].upstream"),
            (ErrorKind::UnknownKey, 13, 1, "routes[0].worker_threads"),
        ]
    );

    let display = valkyrie_config::parse_str(&format!("{text}{UPSTREAMS}"), "test.toml")
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = display.lines().collect();
    assert_eq!(lines.len(), 11, "{display}");
    assert_eq!(
        lines[0],
        "test.toml:2:11: `server.listen[0]`: invalid listen address `8080`: the host is missing"
    );
    assert!(
        lines[1].starts_with("  hint: write \"0.0.0.0:8080\""),
        "{display}"
    );
    assert_eq!(
        lines[4],
        "test.toml:4:1: unknown key `idle_timout` in [server]"
    );
    assert_eq!(lines[5], "  hint: did you mean `idle_timeout`?");
}

#[test]
fn load_file_reports_unreadable_file() {
    let path = std::path::Path::new("/nonexistent/valkyrie.toml");
    let errors = valkyrie_config::load_file(path).unwrap_err();
    let error = &errors.errors[0];
    assert_eq!(error.kind, ErrorKind::Io);
    assert_eq!((error.line, error.column), (0, 0));
    assert!(
        errors
            .to_string()
            .starts_with("/nonexistent/valkyrie.toml: cannot read the file: "),
        "{errors}"
    );
}

#[test]
fn load_file_reports_invalid_utf8() {
    let directory =
        std::env::temp_dir().join(format!("valkyrie-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("latin1.toml");
    std::fs::write(&path, b"[server]\nvia_name = \"caf\xe9\"\n").unwrap();

    let errors = valkyrie_config::load_file(&path).unwrap_err();
    std::fs::remove_dir_all(&directory).unwrap();
    let error = &errors.errors[0];
    assert_eq!(error.kind, ErrorKind::Encoding);
    assert_eq!((error.line, error.column), (2, 16));
    assert_eq!(error.file, path.display().to_string());
}

#[test]
fn misspelled_key_reported_once() {
    let text = "[[routes]]\nname = \"all\"\nupstrem = \"api\"\n";
    let error = expect_error_with_upstreams(text, ErrorKind::UnknownKey, 3, 1, "routes[0].upstrem");
    assert_eq!(hint(&error), "did you mean `upstream`?");

    let text = "[[upstreams]]\nname = \"api\"\nendpoint = [\"127.0.0.1:9001\"]\n";
    let error = expect_error(text, ErrorKind::UnknownKey, 3, 1, "upstreams[0].endpoint");
    assert_eq!(hint(&error), "did you mean `endpoints`?");

    let text = "[[routes]]\nname = \"all\"\nupstream = \"api\"\nheaders = [{ name = \"X-A\", valeu = \"1\" }]\n";
    let error = expect_error_with_upstreams(
        text,
        ErrorKind::UnknownKey,
        4,
        28,
        "routes[0].headers[0].valeu",
    );
    assert_eq!(error.message, "unknown key `valeu` in [[routes.headers]]");
}
