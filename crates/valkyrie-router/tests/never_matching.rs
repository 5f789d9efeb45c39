//! Tests for the unreachable-route check.

mod common;

use common::config;
use valkyrie_router::{never_matching_routes, RouteTable};

fn shadowed(routes: &str) -> Vec<(usize, usize)> {
    let config = config(routes);
    let from_config = never_matching_routes(&config);
    // The table method runs the same check on compiled routes.
    if let Ok(table) = RouteTable::build(&config) {
        assert_eq!(table.never_matching_routes(), from_config);
    }
    from_config
}

#[test]
fn identical_routes() {
    let found = shadowed(
        r#"
        [[routes]]
        name = "a"
        host = "api.example.com"
        path_prefix = "/v1/"
        methods = ["GET"]
        headers = [{ name = "x-a", value = "1" }]
        upstream = "app"

        [[routes]]
        name = "b"
        host = "API.example.com:443"
        path_prefix = "/v1/"
        methods = ["get"]
        headers = [{ name = "X-A", value = "1" }]
        upstream = "other"
        "#,
    );
    assert_eq!(found, vec![(1, 0)]);
}

#[test]
fn narrower_route_of_equal_specificity() {
    let cases = [
        // Fewer methods.
        (r#"methods = ["GET", "POST"]"#, r#"methods = ["GET"]"#),
        // A value where the first route requires only presence.
        (
            r#"headers = [{ name = "x-a" }]"#,
            r#"headers = [{ name = "x-a", value = "1" }]"#,
        ),
        // A value the first route's regex accepts.
        (
            r#"headers = [{ name = "x-a", regex = "[0-9]+" }]"#,
            r#"headers = [{ name = "x-a", value = "42" }]"#,
        ),
        // The same wildcard, written differently.
        (
            r#"host = "*.Example.com""#,
            r#"host = "*.example.com.:8080""#,
        ),
    ];
    for (first, second) in cases {
        let routes = format!(
            "[[routes]]\nname = \"first\"\nupstream = \"app\"\n{first}\n\n\
             [[routes]]\nname = \"second\"\nupstream = \"app\"\n{second}\n"
        );
        assert_eq!(
            shadowed(&routes),
            vec![(1, 0)],
            "first {first}, second {second}"
        );
    }
}

#[test]
fn reachable_routes_are_not_reported() {
    let cases = [
        // The later route is more specific, so it wins where both match.
        (r#"path_prefix = "/""#, r#"path_prefix = "/api/""#),
        (r#"host = "*.example.com""#, r#"host = "api.example.com""#),
        ("", r#"methods = ["GET"]"#),
        ("", r#"headers = [{ name = "x-a" }]"#),
        // Equal specificity but the first route is narrower.
        (r#"methods = ["GET"]"#, r#"methods = ["GET", "POST"]"#),
        (
            r#"headers = [{ name = "x-a", value = "1" }]"#,
            r#"headers = [{ name = "x-a" }]"#,
        ),
        (
            r#"headers = [{ name = "x-a", regex = "[0-9]" }]"#,
            r#"headers = [{ name = "x-a", value = "42" }]"#,
        ),
        (
            r#"headers = [{ name = "x-a" }]"#,
            r#"headers = [{ name = "x-b" }]"#,
        ),
        // Different hosts or paths.
        (r#"host = "a.example.com""#, r#"host = "b.example.com""#),
        (r#"path_exact = "/a""#, r#"path_exact = "/b""#),
        (r#"path_regex = "/a.*""#, r#"path_regex = "/b.*""#),
        // A prefix does not cover requests without a path condition, since a
        // path such as `*` does not start with `/`.
        (r#"path_prefix = "/""#, ""),
    ];
    for (first, second) in cases {
        let routes = format!(
            "[[routes]]\nname = \"first\"\nupstream = \"app\"\n{first}\n\n\
             [[routes]]\nname = \"second\"\nupstream = \"app\"\n{second}\n"
        );
        assert_eq!(shadowed(&routes), vec![], "first {first}, second {second}");
    }
}

#[test]
fn later_shadowing_route_not_reported() {
    // The second route in the file ranks first: it has two header
    // conditions, and both are implied by the first route's single one. The
    // first route is unreachable, but only earlier routes are reported.
    let found = shadowed(
        r#"
        [[routes]]
        name = "one-condition"
        headers = [{ name = "x-a", value = "1" }]
        upstream = "app"

        [[routes]]
        name = "redundant-conditions"
        headers = [{ name = "x-a" }, { name = "x-a", regex = "[0-9]" }]
        upstream = "app"
        "#,
    );
    assert_eq!(found, vec![]);
}

#[test]
fn regex_covering_exact_path() {
    let found = shadowed(
        r#"
        [[routes]]
        name = "regex"
        host = "*.example.com"
        path_regex = "/items/[0-9]+"
        upstream = "app"

        [[routes]]
        name = "also-regex"
        host = "*.example.com"
        path_regex = "/items/[0-9]+"
        methods = ["GET"]
        upstream = "app"

        [[routes]]
        name = "same-regex-later"
        host = "*.example.com"
        path_regex = "/items/[0-9]+"
        upstream = "app"
        "#,
    );
    assert_eq!(found, vec![(2, 0)]);
}

#[test]
fn reports_first_shadowing_route() {
    let found = shadowed(
        r#"
        [[routes]]
        name = "a"
        path_prefix = "/x"
        upstream = "app"

        [[routes]]
        name = "b"
        path_prefix = "/x"
        upstream = "app"

        [[routes]]
        name = "c"
        path_prefix = "/x"
        upstream = "app"
        "#,
    );
    assert_eq!(found, vec![(1, 0), (2, 0)]);
}

#[test]
fn invalid_routes_are_skipped() {
    let found = never_matching_routes(&config(
        r#"
        [[routes]]
        name = "broken"
        upstream = "missing"

        [[routes]]
        name = "a"
        upstream = "app"

        [[routes]]
        name = "b"
        upstream = "app"
        "#,
    ));
    assert_eq!(found, vec![(2, 1)]);
}
