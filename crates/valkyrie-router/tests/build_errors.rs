//! Build errors name the route and the problem, and an unvalidated config
//! never makes the build panic.

mod common;

use common::config;
use valkyrie_router::{BuildError, RouteTable};

/// Builds `routes` and returns the error's route label and message.
fn build_error(routes: &str) -> (String, String) {
    match RouteTable::build(&config(routes)) {
        Ok(_) => panic!("build succeeded for {routes}"),
        Err(BuildError::Route { route, message }) => (route, message),
    }
}

#[test]
fn build_error_cases() {
    let cases = [
        (
            r#"upstream = "missing""#,
            "upstream `missing` is not defined",
        ),
        (
            r#"key_table = "missing""#,
            "key_table `missing` is not defined",
        ),
        (
            r#"upstream = "app"
            key_table = "tenants""#,
            "set only one of upstream and key_table",
        ),
        ("", "missing target: set upstream or key_table"),
        (
            r#"upstream = "app"
            path_regex = "/(unclosed""#,
            "path_regex `/(unclosed` is invalid",
        ),
        (
            r#"upstream = "app"
            path_regex = "a)|(b""#,
            "path_regex `a)|(b` is invalid",
        ),
        (
            r#"upstream = "app"
            path_exact = "/a"
            path_prefix = "/b""#,
            "set only one of path_exact, path_prefix and path_regex",
        ),
        (
            r#"upstream = "app"
            path_exact = "admin""#,
            "path_exact `admin` must start with `/`",
        ),
        (
            r#"upstream = "app"
            path_prefix = "v1/""#,
            "path_prefix `v1/` must start with `/`",
        ),
        (
            r#"upstream = "app"
            path_exact = "/a/../b""#,
            "contains the dot segment `..`",
        ),
        (
            r#"upstream = "app"
            path_prefix = "/a/%2E/b""#,
            "contains the dot segment `.`",
        ),
        (
            r#"upstream = "app"
            strip_prefix = "api""#,
            "strip_prefix `api` must start with `/`",
        ),
        (
            r#"upstream = "app"
            methods = ["GET", "BAD METHOD"]"#,
            "method `BAD METHOD` is not a valid HTTP method",
        ),
        (
            r#"upstream = "app"
            headers = [{ name = "bad name" }]"#,
            "header name `bad name` is invalid",
        ),
        (
            r#"upstream = "app"
            headers = [{ name = "x-a", value = "line\nbreak" }]"#,
            "is not a valid header value",
        ),
        (
            r#"upstream = "app"
            headers = [{ name = "x-a", regex = "[" }]"#,
            "regex `[` is invalid",
        ),
        (
            r#"upstream = "app"
            headers = [{ name = "x-a", value = "1", regex = "1" }]"#,
            "set either value or regex, not both",
        ),
        (
            r#"upstream = "app"
            host = "*""#,
            "is a lone `*`",
        ),
        (
            r#"upstream = "app"
            host = "api.*.example.com""#,
            "has a `*` that is not a leading `*.`",
        ),
        (
            r#"upstream = "app"
            host = "*.""#,
            "is a lone `*`",
        ),
        (
            r#"upstream = "app"
            host = "*..com""#,
            "has an empty label",
        ),
        (
            r#"upstream = "app"
            host = "a..example.com""#,
            "has an empty label",
        ),
        (
            r#"upstream = "app"
            host = "exa mple.com""#,
            "contains ` `",
        ),
        (
            r#"upstream = "app"
            host = "bücher.example""#,
            "`xn--` form",
        ),
        (
            r#"upstream = "app"
            host = """#,
            "is empty",
        ),
    ];
    for (body, expected) in cases {
        let routes = format!("[[routes]]\nname = \"broken\"\n{body}\n");
        let (route, message) = build_error(&routes);
        assert_eq!(route, "broken", "route label for {body}");
        assert!(
            message.contains(expected),
            "message {message:?} lacks {expected:?} for {body}"
        );
    }
}

#[test]
fn error_names_the_failing_route() {
    let (route, _) = build_error(
        r#"
        [[routes]]
        name = "fine"
        upstream = "app"

        [[routes]]
        name = "second"
        upstream = "nope"
        "#,
    );
    assert_eq!(route, "second");
}

#[test]
fn unnamed_route_gets_its_position() {
    let (route, _) = build_error(
        r#"
        [[routes]]
        name = "fine"
        upstream = "app"

        [[routes]]
        upstream = "nope"
        "#,
    );
    assert_eq!(route, "#1 (unnamed)");
}

#[test]
fn error_display_names_route() {
    let err = RouteTable::build(&config(
        r#"
        [[routes]]
        name = "api"
        upstream = "gone"
        "#,
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "route `api`: upstream `gone` is not defined in [[upstreams]]"
    );
}

#[test]
fn accepted_edge_forms() {
    let table = RouteTable::build(&config(
        r#"
        [[routes]]
        name = "v6"
        host = "[2001:db8::1]:8080"
        upstream = "app"

        [[routes]]
        name = "prefix-dot"
        path_prefix = "/.well"
        upstream = "app"

        [[routes]]
        name = "prefix-dotdot-tail"
        path_prefix = "/a/.."
        upstream = "app"

        [[routes]]
        name = "dup-methods"
        methods = ["GET", "get", "GET"]
        upstream = "app"
        "#,
    ))
    .unwrap();
    assert_eq!(table.routes()[0].host.to_string(), "[2001:db8::1]");
    assert_eq!(table.routes()[3].methods(), [http::Method::GET]);
}
