//! End-to-end data-plane tests: real upstream servers, a real router and
//! real clients on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{client, router, upstream, Behavior};
use http::StatusCode;

fn two_upstream_config(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        r#"
[[upstreams]]
name = "alpha"
endpoints = ["{a}"]

[[upstreams]]
name = "beta"
endpoints = ["{b}"]

[[routes]]
name = "beta-host"
host = "*.beta.test"
upstream = "beta"

[[routes]]
name = "alpha-exact"
path_exact = "/exact"
upstream = "alpha"

[[routes]]
name = "beta-prefix"
path_prefix = "/beta/"
upstream = "beta"

[[routes]]
name = "alpha-regex"
path_regex = "^/items/[0-9]+$"
methods = ["GET"]
upstream = "alpha"

[[routes]]
name = "beta-header"
path_prefix = "/flag"
headers = [{{ name = "x-canary", value = "on" }}]
upstream = "beta"

[[routes]]
name = "alpha-rest"
path_prefix = "/"
upstream = "alpha"
"#
    )
}

async fn upstream_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["upstream"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn routes_by_path_host_method_and_header() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let beta = upstream("beta", Behavior::Name).await;
    let router = router(&two_upstream_config(alpha.address, beta.address)).await;
    let client = client();

    let get = |path: &str| client.get(router.url(path));
    assert_eq!(
        upstream_of(get("/beta/x").send().await.unwrap()).await,
        "beta"
    );
    assert_eq!(
        upstream_of(get("/exact").send().await.unwrap()).await,
        "alpha"
    );
    assert_eq!(
        upstream_of(get("/items/42").send().await.unwrap()).await,
        "alpha"
    );
    assert_eq!(
        upstream_of(get("/other").send().await.unwrap()).await,
        "alpha"
    );
    assert_eq!(
        upstream_of(
            get("/x")
                .header("host", "API.Beta.Test:8080")
                .send()
                .await
                .unwrap()
        )
        .await,
        "beta"
    );
    assert_eq!(
        upstream_of(get("/flag").header("x-canary", "on").send().await.unwrap()).await,
        "beta"
    );
    assert_eq!(
        upstream_of(get("/flag").send().await.unwrap()).await,
        "alpha"
    );
}

#[tokio::test]
async fn unmatched_request_gets_json_404() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&format!(
        r#"
[[upstreams]]
name = "alpha"
endpoints = ["{}"]

[[routes]]
name = "only-api"
path_prefix = "/api/"
upstream = "alpha"
"#,
        alpha.address
    ))
    .await;
    let response = client().get(router.url("/elsewhere")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "no_route");
    assert_eq!(alpha.request_count(), 0);
}

#[tokio::test]
async fn refused_upstream_gets_json_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let router = router(&format!(
        r#"
[[upstreams]]
name = "gone"
endpoints = ["{address}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "gone"
"#
    ))
    .await;
    let response = client().get(router.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], "gone");
    assert_eq!(body["error"], "connect_failed");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(&address.to_string()));
}

#[tokio::test]
async fn slow_upstream_gets_json_504() {
    let slow = upstream("slow", Behavior::Slow(Duration::from_secs(3))).await;
    let router = router(&format!(
        r#"
[[upstreams]]
name = "slow"
endpoints = ["{}"]
request_timeout = "200ms"

[[routes]]
name = "all"
path_prefix = "/"
upstream = "slow"
"#,
        slow.address
    ))
    .await;
    let response = client().get(router.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], "slow");
    assert_eq!(body["error"], "response_timeout");
}

#[tokio::test]
async fn failover_skips_dead_endpoint() {
    let live = upstream("live", Behavior::Name).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let router = router(&format!(
        r#"
[[upstreams]]
name = "pair"
endpoints = ["{dead}", "{}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "pair"
"#,
        live.address
    ))
    .await;
    let client = client();
    for _ in 0..10 {
        let response = client.get(router.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(upstream_of(response).await, "live");
    }
    assert_eq!(live.request_count(), 10);
}

#[tokio::test]
async fn round_robin_spreads_across_endpoints() {
    let a = upstream("a", Behavior::Name).await;
    let b = upstream("b", Behavior::Name).await;
    let router = router(&format!(
        r#"
[[upstreams]]
name = "pair"
endpoints = ["{}", "{}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "pair"
"#,
        a.address, b.address
    ))
    .await;
    let client = client();
    for _ in 0..20 {
        assert!(client
            .get(router.url("/"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    assert_eq!(a.request_count(), 10);
    assert_eq!(b.request_count(), 10);
}

#[tokio::test]
async fn pooled_connections_are_reused() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&format!(
        r#"
[[upstreams]]
name = "alpha"
endpoints = ["{}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "alpha"
"#,
        alpha.address
    ))
    .await;
    let client = client();
    for _ in 0..20 {
        let response = client.get(router.url("/")).send().await.unwrap();
        response.bytes().await.unwrap();
    }
    assert_eq!(alpha.request_count(), 20);
    assert_eq!(
        alpha.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn forwarding_headers_set_and_hop_by_hop_removed() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&format!(
        r#"
[[upstreams]]
name = "alpha"
endpoints = ["{}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "alpha"
"#,
        alpha.address
    ))
    .await;
    let response = client()
        .get(router.url("/h"))
        .header("host", "shop.example")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "secret")
        .header("x-forwarded-for", "6.6.6.6")
        .header("proxy-authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("via").is_some());
    let seen = &alpha.requests()[0];
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
    assert_eq!(seen.headers["host"], "shop.example");
    assert_eq!(seen.headers["via"], "1.1 valkyrie");
    assert!(seen.headers.get("x-drop-me").is_none());
    assert!(seen.headers.get("proxy-authorization").is_none());
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_is_appended() {
    let alpha = upstream("alpha", Behavior::Name).await;
    let router = router(&format!(
        r#"
[server]
trusted_proxies = ["127.0.0.0/8"]

[[upstreams]]
name = "alpha"
endpoints = ["{}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "alpha"
"#,
        alpha.address
    ))
    .await;
    client()
        .get(router.url("/"))
        .header("x-forwarded-for", "198.51.100.4")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = &alpha.requests()[0];
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.4, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}
