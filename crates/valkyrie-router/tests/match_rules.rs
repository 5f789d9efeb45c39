//! Table-driven tests for each matching rule and each precedence step.

mod common;

use common::{route_name, table, Request};
use valkyrie_router::{RouteTable, RouteTarget};

/// Checks every (request, expected route name) pair against `table`.
fn check(table: &RouteTable, cases: &[(Request, Option<&str>)]) {
    for (request, expected) in cases {
        assert_eq!(
            route_name(table, request).as_deref(),
            *expected,
            "request {request:?}"
        );
    }
}

fn get(host: Option<&str>, path: &str) -> Request {
    Request::new(host, path)
}

#[test]
fn exact_host_rules() {
    let table = table(
        r#"
        [[routes]]
        name = "api"
        host = "API.Example.com"
        upstream = "app"

        [[routes]]
        name = "v6"
        host = "[::1]"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(Some("api.example.com"), "/"), Some("api")),
            (get(Some("API.EXAMPLE.COM"), "/"), Some("api")),
            (get(Some("api.example.com:8080"), "/"), Some("api")),
            (get(Some("api.example.com."), "/"), Some("api")),
            (get(Some("Api.Example.Com.:443"), "/"), Some("api")),
            (get(Some("www.api.example.com"), "/"), None),
            (get(Some("example.com"), "/"), None),
            (get(Some("api.example.com.."), "/"), None),
            (get(None, "/"), None),
            (get(Some("[::1]:8080"), "/"), Some("v6")),
            (get(Some("[::1]"), "/"), Some("v6")),
        ],
    );
}

#[test]
fn config_host_port_ignored() {
    let table = table(
        r#"
        [[routes]]
        name = "api"
        host = "api.example.com:8443"
        upstream = "app"

        [[routes]]
        name = "dotted"
        host = "*.example.org."
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(Some("api.example.com"), "/"), Some("api")),
            (get(Some("api.example.com:80"), "/"), Some("api")),
            (get(Some("www.example.org"), "/"), Some("dotted")),
        ],
    );
}

#[test]
fn wildcard_host_rules() {
    let table = table(
        r#"
        [[routes]]
        name = "wild"
        host = "*.example.com"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(Some("a.example.com"), "/"), Some("wild")),
            (get(Some("a.b.example.com"), "/"), Some("wild")),
            (get(Some("A.B.EXAMPLE.COM:8080"), "/"), Some("wild")),
            (get(Some("a.example.com."), "/"), Some("wild")),
            (get(Some("example.com"), "/"), None),
            (get(Some(".example.com"), "/"), None),
            (get(Some("aexample.com"), "/"), None),
            (get(Some("example.com.evil.org"), "/"), None),
            (get(None, "/"), None),
        ],
    );
}

#[test]
fn host_precedence() {
    let table = table(
        r#"
        [[routes]]
        name = "any"
        upstream = "app"

        [[routes]]
        name = "wild-2"
        host = "*.example.com"
        upstream = "app"

        [[routes]]
        name = "wild-3"
        host = "*.eu.example.com"
        upstream = "app"

        [[routes]]
        name = "exact"
        host = "api.eu.example.com"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(Some("api.eu.example.com"), "/"), Some("exact")),
            (get(Some("web.eu.example.com"), "/"), Some("wild-3")),
            (get(Some("a.web.eu.example.com"), "/"), Some("wild-3")),
            (get(Some("eu.example.com"), "/"), Some("wild-2")),
            (get(Some("web.example.com"), "/"), Some("wild-2")),
            (get(Some("example.com"), "/"), Some("any")),
            (get(None, "/"), Some("any")),
        ],
    );
}

#[test]
fn host_outranks_path() {
    let table = table(
        r#"
        [[routes]]
        name = "any-host-exact-path"
        path_exact = "/admin"
        upstream = "app"

        [[routes]]
        name = "wild-no-path"
        host = "*.example.com"
        upstream = "app"

        [[routes]]
        name = "exact-host-regex"
        host = "api.example.com"
        path_regex = "/adm.*"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (
                get(Some("api.example.com"), "/admin"),
                Some("exact-host-regex"),
            ),
            (get(Some("api.example.com"), "/other"), Some("wild-no-path")),
            (get(Some("www.example.com"), "/admin"), Some("wild-no-path")),
            (
                get(Some("example.org"), "/admin"),
                Some("any-host-exact-path"),
            ),
            (get(Some("example.org"), "/other"), None),
        ],
    );
}

#[test]
fn path_kind_precedence() {
    let table = table(
        r#"
        [[routes]]
        name = "none"
        upstream = "app"

        [[routes]]
        name = "regex"
        path_regex = "/v1/.*"
        upstream = "app"

        [[routes]]
        name = "short-prefix"
        path_prefix = "/v1/"
        upstream = "app"

        [[routes]]
        name = "long-prefix"
        path_prefix = "/v1/users"
        upstream = "app"

        [[routes]]
        name = "exact"
        path_exact = "/v1/users/me"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/v1/users/me"), Some("exact")),
            (get(None, "/v1/users/me/"), Some("long-prefix")),
            (get(None, "/v1/users"), Some("long-prefix")),
            (get(None, "/v1/usersx"), Some("long-prefix")),
            (get(None, "/v1/orders"), Some("short-prefix")),
            (get(None, "/v1"), Some("none")),
            (get(None, "/"), Some("none")),
        ],
    );
}

#[test]
fn regex_beats_no_path() {
    let table = table(
        r#"
        [[routes]]
        name = "none"
        upstream = "app"

        [[routes]]
        name = "regex"
        path_regex = "/items/[0-9]+"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/items/42"), Some("regex")),
            // Anchored at both ends of the path.
            (get(None, "/items/42/edit"), Some("none")),
            (get(None, "/x/items/42"), Some("none")),
            // Matched against the normalized path.
            (get(None, "/items/%34%32"), Some("regex")),
            (get(None, "/a/../items/7"), Some("regex")),
        ],
    );
}

#[test]
fn regex_alternation_stays_anchored() {
    let table = table(
        r#"
        [[routes]]
        name = "regex"
        path_regex = "/a|/b"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/a"), Some("regex")),
            (get(None, "/b"), Some("regex")),
            (get(None, "/a/x"), None),
            (get(None, "/x/b"), None),
        ],
    );
}

#[test]
fn regex_routes_keep_config_order() {
    let table = table(
        r#"
        [[routes]]
        name = "first"
        path_regex = "/a.*"
        upstream = "app"

        [[routes]]
        name = "second"
        path_regex = "/ab.*"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/abc"), Some("first")),
            (get(None, "/a"), Some("first")),
        ],
    );
}

#[test]
fn prefix_is_string_prefix() {
    let table = table(
        r#"
        [[routes]]
        name = "api"
        path_prefix = "/api"
        upstream = "app"

        [[routes]]
        name = "segment"
        path_prefix = "/seg/"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/api"), Some("api")),
            (get(None, "/api/x"), Some("api")),
            (get(None, "/apiary"), Some("api")),
            (get(None, "/ap"), None),
            (get(None, "/seg/x"), Some("segment")),
            (get(None, "/seg"), None),
        ],
    );
}

#[test]
fn prefix_with_multibyte_path() {
    let table = table(
        r#"
        [[routes]]
        name = "cafe"
        path_prefix = "/caf"
        upstream = "app"

        [[routes]]
        name = "long"
        path_prefix = "/café/x"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/café"), Some("cafe")),
            (get(None, "/café/x"), Some("long")),
            (get(None, "/é"), None),
            // A prefix length that falls inside a character is skipped.
            (get(None, "/ééé"), None),
        ],
    );
}

#[test]
fn normalized_paths_match() {
    let table = table(
        r#"
        [[routes]]
        name = "admin"
        path_exact = "/admin"
        upstream = "app"

        [[routes]]
        name = "public"
        path_prefix = "/public/"
        upstream = "app"

        [[routes]]
        name = "tilde"
        path_exact = "/%7euser"
        upstream = "app"

        [[routes]]
        name = "slash"
        path_exact = "/a%2fb"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/admin"), Some("admin")),
            (get(None, "/a/../admin"), Some("admin")),
            (get(None, "/a/%2E%2E/admin"), Some("admin")),
            (get(None, "/a/%2e%2E/admin"), Some("admin")),
            (get(None, "/public/../admin"), Some("admin")),
            (get(None, "/public/./x"), Some("public")),
            (get(None, "/%61dmin"), Some("admin")),
            (get(None, "/public/%2E%2E%2Fadmin"), Some("public")),
            (get(None, "/~user"), Some("tilde")),
            (get(None, "/%7Euser"), Some("tilde")),
            (get(None, "/a%2Fb"), Some("slash")),
            (get(None, "/a%2fb"), Some("slash")),
            // An encoded slash is not a separator, so this is not `/a/b`.
            (get(None, "/a/b"), None),
            (get(None, "/admin/"), None),
            (get(None, "//admin"), None),
        ],
    );
}

#[test]
fn method_rules() {
    let table = table(
        r#"
        [[routes]]
        name = "any-method"
        path_prefix = "/"
        upstream = "app"

        [[routes]]
        name = "reads"
        path_prefix = "/"
        methods = ["get", "HEAD"]
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/x").method("GET"), Some("reads")),
            (get(None, "/x").method("HEAD"), Some("reads")),
            (get(None, "/x").method("POST"), Some("any-method")),
            (get(None, "/x").method("PURGE"), Some("any-method")),
        ],
    );
}

#[test]
fn header_rules() {
    let table = table(
        r#"
        [[routes]]
        name = "fallback"
        upstream = "app"

        [[routes]]
        name = "present"
        headers = [{ name = "X-Debug" }]
        upstream = "app"

        [[routes]]
        name = "exact"
        headers = [{ name = "x-version", value = "2" }]
        upstream = "app"

        [[routes]]
        name = "regex"
        headers = [{ name = "x-version", regex = "3\\.[0-9]+" }]
        upstream = "app"

        [[routes]]
        name = "both"
        headers = [
            { name = "x-tenant", value = "acme" },
            { name = "x-region", regex = "eu-.*" },
        ]
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (get(None, "/"), Some("fallback")),
            (get(None, "/").headers(&[("x-debug", "")]), Some("present")),
            (get(None, "/").headers(&[("x-version", "2")]), Some("exact")),
            (
                get(None, "/").headers(&[("x-version", "20")]),
                Some("fallback"),
            ),
            (
                get(None, "/").headers(&[("x-version", "3.14")]),
                Some("regex"),
            ),
            // The regex must match the whole value.
            (
                get(None, "/").headers(&[("x-version", "v3.14")]),
                Some("fallback"),
            ),
            (
                get(None, "/").headers(&[("x-version", "3.1x")]),
                Some("fallback"),
            ),
            // A header sent twice: either value may satisfy the condition.
            (
                get(None, "/").headers(&[("x-version", "9"), ("x-version", "2")]),
                Some("exact"),
            ),
            // Values are compared case-sensitively.
            (
                get(None, "/").headers(&[("x-tenant", "ACME"), ("x-region", "eu-1")]),
                Some("fallback"),
            ),
            (
                get(None, "/").headers(&[("x-tenant", "acme"), ("x-region", "eu-1")]),
                Some("both"),
            ),
            (
                get(None, "/").headers(&[("x-tenant", "acme"), ("x-region", "us-1")]),
                Some("fallback"),
            ),
            (
                get(None, "/").headers(&[("x-tenant", "acme")]),
                Some("fallback"),
            ),
        ],
    );
}

#[test]
fn path_outranks_headers_and_methods() {
    let table = table(
        r#"
        [[routes]]
        name = "short-with-everything"
        path_prefix = "/a"
        methods = ["GET"]
        headers = [{ name = "x-a" }, { name = "x-b" }]
        upstream = "app"

        [[routes]]
        name = "long-bare"
        path_prefix = "/a/b"
        upstream = "app"
        "#,
    );
    let request = get(None, "/a/b/c").headers(&[("x-a", "1"), ("x-b", "1")]);
    check(
        &table,
        &[
            (request.clone(), Some("long-bare")),
            (
                get(None, "/a/c").headers(&[("x-a", "1"), ("x-b", "1")]),
                Some("short-with-everything"),
            ),
        ],
    );
}

#[test]
fn headers_outrank_methods_then_order() {
    let table = table(
        r#"
        [[routes]]
        name = "plain"
        path_prefix = "/"
        upstream = "app"

        [[routes]]
        name = "method"
        path_prefix = "/"
        methods = ["GET"]
        upstream = "app"

        [[routes]]
        name = "one-header"
        path_prefix = "/"
        headers = [{ name = "x-a" }]
        upstream = "app"

        [[routes]]
        name = "one-header-method"
        path_prefix = "/"
        headers = [{ name = "x-b" }]
        methods = ["GET"]
        upstream = "app"

        [[routes]]
        name = "two-headers"
        path_prefix = "/"
        headers = [{ name = "x-a" }, { name = "x-b" }]
        upstream = "app"

        [[routes]]
        name = "plain-later"
        path_prefix = "/"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (
                get(None, "/").headers(&[("x-a", "1"), ("x-b", "1")]),
                Some("two-headers"),
            ),
            (
                get(None, "/").headers(&[("x-b", "1")]),
                Some("one-header-method"),
            ),
            (
                get(None, "/").headers(&[("x-b", "1")]).method("POST"),
                Some("plain"),
            ),
            (get(None, "/").headers(&[("x-a", "1")]), Some("one-header")),
            (get(None, "/"), Some("method")),
            (get(None, "/").method("DELETE"), Some("plain")),
        ],
    );
}

#[test]
fn falls_back_across_host_buckets() {
    // The exact host has routes, but none accepts the request, so the
    // wildcard and then the catch-all are tried.
    let table = table(
        r#"
        [[routes]]
        name = "exact-post"
        host = "api.example.com"
        methods = ["POST"]
        upstream = "app"

        [[routes]]
        name = "wild-v2"
        host = "*.example.com"
        path_prefix = "/v2/"
        upstream = "app"

        [[routes]]
        name = "any"
        path_prefix = "/"
        upstream = "app"
        "#,
    );
    check(
        &table,
        &[
            (
                get(Some("api.example.com"), "/v2/x").method("POST"),
                Some("exact-post"),
            ),
            (get(Some("api.example.com"), "/v2/x"), Some("wild-v2")),
            (get(Some("api.example.com"), "/v1/x"), Some("any")),
        ],
    );
}

#[test]
fn targets_resolve_by_name() {
    let table = table(
        r#"
        [[routes]]
        name = "to-other"
        path_prefix = "/other/"
        upstream = "other"

        [[routes]]
        name = "to-app"
        path_prefix = "/app/"
        upstream = "app"

        [[routes]]
        name = "tenants"
        path_prefix = "/t/"
        key_table = "tenants"
        "#,
    );
    let targets: Vec<_> = table
        .routes()
        .iter()
        .map(|route| route.target.clone())
        .collect();
    assert_eq!(
        targets,
        vec![
            RouteTarget::Upstream(1),
            RouteTarget::Upstream(0),
            RouteTarget::KeyTable(0)
        ]
    );
}

#[test]
fn routes_keep_config_order() {
    let table = table(
        r#"
        [[routes]]
        name = "b"
        upstream = "app"

        [[routes]]
        name = "a"
        host = "x.example.com"
        upstream = "app"
        "#,
    );
    let names: Vec<_> = table
        .routes()
        .iter()
        .map(|route| route.name.to_string())
        .collect();
    assert_eq!(names, ["b", "a"]);
    for (position, route) in table.routes().iter().enumerate() {
        assert_eq!(route.index, position);
    }
}

#[test]
fn empty_table_matches_nothing() {
    let table = table("");
    assert!(table.routes().is_empty());
    assert_eq!(route_name(&table, &get(Some("a.com"), "/")), None);
}

#[test]
fn route_match_exposes_normalized_path() {
    let table = table(
        r#"
        [[routes]]
        name = "all"
        upstream = "app"
        "#,
    );
    let cases = [
        ("/a/./b/../c", "/a/c"),
        ("/%7e/%2f", "/~/%2F"),
        ("", "/"),
        ("/plain", "/plain"),
    ];
    for (path, normalized) in cases {
        let request = get(None, path);
        let info = request.info();
        let matched = table.route(&info).unwrap();
        assert_eq!(matched.path, normalized, "path {path:?}");
    }
}

#[test]
fn upstream_path_strips_prefix() {
    let table = table(
        r#"
        [[routes]]
        name = "api"
        path_prefix = "/api"
        strip_prefix = "/api"
        upstream = "app"

        [[routes]]
        name = "slashed"
        path_prefix = "/s/"
        strip_prefix = "/s/"
        upstream = "app"

        [[routes]]
        name = "unrelated"
        path_prefix = "/u/"
        strip_prefix = "/elsewhere"
        upstream = "app"

        [[routes]]
        name = "keep"
        path_prefix = "/k/"
        upstream = "app"
        "#,
    );
    let cases = [
        ("/api/users", "/users"),
        ("/api", "/"),
        ("/api/", "/"),
        ("/apiary", "/ary"),
        ("/api/x/../y", "/y"),
        ("/a/../api/%7Ex", "/~x"),
        ("/s/x", "/x"),
        ("/s/", "/"),
        ("/s//x", "/x"),
        ("/u/x", "/u/x"),
        ("/k/x/./y", "/k/x/y"),
    ];
    for (path, expected) in cases {
        let request = get(None, path);
        let info = request.info();
        let matched = table.route(&info).unwrap();
        assert_eq!(matched.upstream_path(), expected, "path {path:?}");
    }
}

/// The example table of `docs/routing.md`, request for request.
#[test]
fn routing_doc_examples() {
    let table = table(
        r#"
        [[routes]]
        name = "admin-anywhere"
        path_exact = "/admin"
        upstream = "app"

        [[routes]]
        name = "shop"
        host = "*.example.com"
        upstream = "app"

        [[routes]]
        name = "api"
        host = "api.example.com"
        upstream = "app"

        [[routes]]
        name = "api-v1"
        host = "api.example.com"
        path_prefix = "/v1/"
        upstream = "app"

        [[routes]]
        name = "api-v1-users"
        host = "api.example.com"
        path_prefix = "/v1/users"
        upstream = "app"

        [[routes]]
        name = "api-v1-canary"
        host = "api.example.com"
        path_prefix = "/v1/"
        headers = [{ name = "x-canary", value = "1" }]
        upstream = "app"

        [[routes]]
        name = "api-v1-writes"
        host = "api.example.com"
        path_prefix = "/v1/"
        methods = ["POST"]
        upstream = "app"
        "#,
    );
    let api = Some("api.example.com");
    check(
        &table,
        &[
            (get(api, "/admin"), Some("api")),
            (get(Some("www.example.com"), "/admin"), Some("shop")),
            (get(Some("example.com"), "/admin"), Some("admin-anywhere")),
            (get(api, "/v1/users/7"), Some("api-v1-users")),
            (get(api, "/v1/orders"), Some("api-v1")),
            (get(api, "/v1/orders").method("POST"), Some("api-v1-writes")),
            (
                get(api, "/v1/orders")
                    .method("POST")
                    .headers(&[("x-canary", "1")]),
                Some("api-v1-canary"),
            ),
            (get(api, "/v1/x/%2E%2E/users"), Some("api-v1-users")),
            (get(Some("API.EXAMPLE.COM:8443"), "/v2"), Some("api")),
        ],
    );
}
