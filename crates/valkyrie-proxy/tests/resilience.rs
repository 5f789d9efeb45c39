//! Resilience against real upstream servers on 127.0.0.1. Endpoints die,
//! hang, reset connections or fail checks, and the tests watch breakers,
//! retries and their budget, the concurrency limit and the deny list.

mod common;
mod resilience_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, router, Router};
use http::StatusCode;
use resilience_support::{wait_until, Mode, TestServer, CHECK_PATH, HOLD};
use valkyrie_proxy::breaker::{BreakerState, ForcedMode};
use valkyrie_proxy::health::HealthStatus;
use valkyrie_proxy::upstream::Upstream;
use valkyrie_proxy::Snapshot;

/// Builds a config with one upstream `api` over `servers` and a catch-all
/// route. `extra` goes into the `[[upstreams]]` entry, keys before tables.
fn config(servers: &[&TestServer], extra: &str) -> String {
    let endpoints: Vec<String> = servers
        .iter()
        .map(|server| format!("\"{}\"", server.address))
        .collect();
    format!(
        r#"
[[upstreams]]
name = "api"
endpoints = [{}]
{extra}

[[routes]]
name = "all"
path_prefix = "/"
upstream = "api"
"#,
        endpoints.join(", ")
    )
}

fn upstream(router: &Router) -> Arc<Upstream> {
    router.state().snapshot.load().upstreams[0].clone()
}

/// Index of the endpoint served by `server`.
fn index_of(router: &Router, server: &TestServer) -> usize {
    let address = server.endpoint();
    upstream(router)
        .endpoints
        .iter()
        .position(|endpoint| *endpoint.address == *address)
        .expect("the server is an endpoint of the upstream")
}

async fn get(client: &reqwest::Client, router: &Router, path: &str) -> reqwest::Response {
    client.get(router.url(path)).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_endpoint_fails_only_in_flight_requests() {
    let doomed = TestServer::start("doomed", Mode::Slow(Duration::from_millis(20))).await;
    let survivor = TestServer::start("survivor", Mode::Slow(Duration::from_millis(20))).await;
    let router = router(&config(
        &[&doomed, &survivor],
        r#"
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
failure_threshold = 3
open_time = "30s"
[upstreams.retries]
budget_min_per_sec = 1000
"#,
    ))
    .await;
    let router = Arc::new(router);

    const WORKERS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (router, stop, failures, successes) = (
            router.clone(),
            stop.clone(),
            failures.clone(),
            successes.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..500 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let ok = match client.get(router.url("/work")).send().await {
                    Ok(response) => response.status() == StatusCode::OK,
                    Err(_) => false,
                };
                let counter = if ok { &successes } else { &failures };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    assert!(wait_until(Duration::from_secs(10), || doomed.requests() >= 40).await);
    doomed.kill();
    let survivor_at_kill = survivor.requests();
    assert!(
        wait_until(Duration::from_secs(20), || survivor.requests()
            >= survivor_at_kill + 200)
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }

    let failed = failures.load(Ordering::SeqCst);
    assert!(
        failed <= WORKERS,
        "{failed} requests failed; at most the {WORKERS} in flight on the killed endpoint may"
    );
    assert!(successes.load(Ordering::SeqCst) > 200);
    let upstream = upstream(&router);
    let breaker = upstream.endpoints[index_of(&router, &doomed)]
        .breaker
        .view();
    assert_eq!(breaker.state, BreakerState::Open);
    assert!(breaker.open_for.is_some());
    assert!(upstream.stats.retries.load(Ordering::SeqCst) >= 1);
    assert!(upstream.stats.breaker_transitions.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn slow_endpoint_times_out_without_piling_connections() {
    let slow = TestServer::start("slow", Mode::Slow(Duration::from_secs(30))).await;
    let fast = TestServer::start("fast", Mode::Ok).await;
    let router = router(&config(
        &[&slow, &fast],
        r#"
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
enable = false
[upstreams.retries]
per_try_timeout = "100ms"
budget_min_per_sec = 1000
"#,
    ))
    .await;
    let client = client();

    for _ in 0..10 {
        let response = get(&client, &router, "/slow-or-fast").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["upstream"], "fast");
    }

    assert!(
        slow.requests() >= 5,
        "round robin sends every other try to the slow endpoint"
    );
    assert!(
        slow.max_open_connections() <= 2,
        "the slow endpoint had {} connections open at once",
        slow.max_open_connections()
    );
    assert!(wait_until(Duration::from_secs(5), || slow.open_connections() == 0).await);
    let pool = &upstream(&router).endpoints[index_of(&router, &slow)].pool;
    assert!(
        wait_until(Duration::from_secs(5), || pool
            .stats
            .open
            .load(Ordering::SeqCst)
            == 0)
        .await
    );
}

#[tokio::test]
async fn slow_single_endpoint_answers_504() {
    let slow = TestServer::start("slow", Mode::Slow(Duration::from_secs(30))).await;
    let router = router(&config(
        &[&slow],
        r#"
request_timeout = "150ms"
[upstreams.retries]
max_retries = 0
"#,
    ))
    .await;
    let client = client();
    for _ in 0..5 {
        let response = get(&client, &router, "/").await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "response_timeout");
    }
    assert_eq!(slow.accepted(), 5);
    assert!(slow.max_open_connections() <= 2);
    assert!(wait_until(Duration::from_secs(5), || slow.open_connections() == 0).await);
}

#[tokio::test]
async fn post_is_never_sent_twice() {
    let closer = TestServer::start("closer", Mode::CloseAfterRequest).await;
    let healthy = TestServer::start("healthy", Mode::Ok).await;
    let router = router(&config(
        &[&closer, &healthy],
        r#"
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
enable = false
[upstreams.retries]
max_retries = 2
retry_on = ["connect_failure", "reset", "502", "503", "504"]
budget_min_per_sec = 1000
"#,
    ))
    .await;
    let client = client();

    let mut statuses = Vec::new();
    for n in 0..10 {
        let response = client
            .post(router.url("/orders"))
            .body(format!("order {n}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(
        closer.requests() + healthy.requests(),
        10,
        "each POST reached an upstream exactly once"
    );
    let failed = statuses
        .iter()
        .filter(|status| **status == StatusCode::BAD_GATEWAY)
        .count();
    assert_eq!(failed, closer.requests());
    assert!(failed > 0);

    // GET on the same upstream is retried on the other endpoint.
    for _ in 0..6 {
        assert_eq!(
            get(&client, &router, "/orders").await.status(),
            StatusCode::OK
        );
    }
    assert!(upstream(&router).stats.retries.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn post_body_replayed_where_route_allows() {
    let closer = TestServer::start("closer", Mode::CloseAfterRequest).await;
    let healthy = TestServer::start("healthy", Mode::Ok).await;
    let router = router(&format!(
        r#"
[[upstreams]]
name = "api"
endpoints = ["{}", "{}"]
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
enable = false
[upstreams.retries]
max_replay_body = "1KiB"
budget_min_per_sec = 1000

[[routes]]
name = "replayable"
path_prefix = "/replayable"
upstream = "api"
retry_non_idempotent = true

[[routes]]
name = "rest"
path_prefix = "/"
upstream = "api"
"#,
        closer.address, healthy.address
    ))
    .await;
    let client = client();

    for n in 0..4 {
        let body = format!("payload {n}");
        let response = client
            .post(router.url("/replayable"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    for seen in healthy.seen() {
        assert!(seen.body.starts_with(b"payload "), "{seen:?}");
    }
    assert_eq!(healthy.requests(), 4);

    // A body over max_replay_body is not kept, so it is not sent twice.
    let large = vec![b'x'; 4096];
    let before = closer.requests() + healthy.requests();
    let mut failed = 0;
    for _ in 0..4 {
        let response = client
            .post(router.url("/replayable"))
            .body(large.clone())
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::BAD_GATEWAY {
            failed += 1;
        }
    }
    assert_eq!(closer.requests() + healthy.requests() - before, 4);
    assert!(failed > 0);
}

#[tokio::test]
async fn active_check_takes_endpoint_out_and_back() {
    let flaky = TestServer::start("flaky", Mode::Ok).await;
    let steady = TestServer::start("steady", Mode::Ok).await;
    let router = router(&config(
        &[&flaky, &steady],
        &format!(
            r#"
[upstreams.health_check]
path = "{CHECK_PATH}"
interval = "50ms"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2
"#
        ),
    ))
    .await;
    let upstream = upstream(&router);
    let flaky_index = index_of(&router, &flaky);
    assert!(wait_until(Duration::from_secs(5), || upstream.health_known()).await);

    flaky.set_health(500);
    let endpoint = upstream.endpoints[flaky_index].clone();
    assert!(
        wait_until(Duration::from_secs(5), || endpoint.active_health.status()
            == HealthStatus::Unhealthy)
        .await
    );
    assert!(endpoint.active_health.last_error().unwrap().contains("500"));
    let client = client();
    let before = flaky.requests();
    for _ in 0..10 {
        assert_eq!(get(&client, &router, "/").await.status(), StatusCode::OK);
    }
    assert_eq!(
        flaky.requests(),
        before,
        "an unhealthy endpoint gets no traffic"
    );

    flaky.set_health(200);
    assert!(
        wait_until(Duration::from_secs(5), || endpoint.active_health.status()
            == HealthStatus::Healthy)
        .await
    );
    for _ in 0..10 {
        assert_eq!(get(&client, &router, "/").await.status(), StatusCode::OK);
    }
    assert!(
        flaky.requests() >= before + 4,
        "a recovered endpoint is back in rotation"
    );
}

#[tokio::test]
async fn health_known_after_first_round() {
    let server = TestServer::start("gated", Mode::Ok).await;
    server.set_health(HOLD);
    let router = router(&config(
        &[&server],
        &format!(
            r#"
[upstreams.health_check]
path = "{CHECK_PATH}"
interval = "50ms"
timeout = "10s"
"#
        ),
    ))
    .await;
    let upstream = upstream(&router);
    assert!(wait_until(Duration::from_secs(5), || server.health_checks() >= 1).await);
    assert!(!upstream.health_known(), "the first check is still waiting");
    server.set_health(200);
    assert!(wait_until(Duration::from_secs(5), || upstream.health_known()).await);
}

#[tokio::test]
async fn every_endpoint_unhealthy_fails_open() {
    let first = TestServer::start("first", Mode::Ok).await;
    let second = TestServer::start("second", Mode::Ok).await;
    first.set_health(503);
    second.set_health(503);
    let router = router(&config(
        &[&first, &second],
        &format!(
            r#"
[upstreams.health_check]
type = "http"
path = "{CHECK_PATH}"
interval = "50ms"
healthy_threshold = 1
unhealthy_threshold = 1
"#
        ),
    ))
    .await;
    let upstream = upstream(&router);
    assert!(wait_until(Duration::from_secs(5), || upstream.is_failing_open()).await);
    let client = client();
    for _ in 0..10 {
        assert_eq!(get(&client, &router, "/").await.status(), StatusCode::OK);
    }
    assert!(first.requests() >= 3);
    assert!(second.requests() >= 3);

    second.set_health(200);
    assert!(wait_until(Duration::from_secs(5), || !upstream.is_failing_open()).await);
    let before = first.requests();
    for _ in 0..10 {
        assert_eq!(get(&client, &router, "/").await.status(), StatusCode::OK);
    }
    assert_eq!(first.requests(), before);
}

#[tokio::test]
async fn tcp_check_marks_dead_endpoint() {
    let alive = TestServer::start("alive", Mode::Ok).await;
    let dead = TestServer::start("dead", Mode::Ok).await;
    dead.kill();
    let router = router(&config(
        &[&alive, &dead],
        r#"
[upstreams.health_check]
type = "tcp"
interval = "50ms"
"#,
    ))
    .await;
    let upstream = upstream(&router);
    let dead_endpoint = upstream.endpoints[index_of(&router, &dead)].clone();
    assert!(
        wait_until(Duration::from_secs(5), || dead_endpoint
            .active_health
            .status()
            == HealthStatus::Unhealthy)
        .await
    );
    let alive_endpoint = upstream.endpoints[index_of(&router, &alive)].clone();
    assert_eq!(alive_endpoint.active_health.status(), HealthStatus::Healthy);
}

#[tokio::test]
async fn breaker_opens_and_probe_closes_it() {
    let failing = TestServer::start("failing", Mode::Status(500)).await;
    let steady = TestServer::start("steady", Mode::Ok).await;
    let router = router(&config(
        &[&failing, &steady],
        r#"
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
failure_threshold = 2
open_time = "200ms"
max_open_time = "1s"
[upstreams.retries]
max_retries = 0
"#,
    ))
    .await;
    let client = client();
    let upstream = upstream(&router);
    let breaker = upstream.endpoints[index_of(&router, &failing)]
        .breaker
        .clone();

    for _ in 0..4 {
        get(&client, &router, "/").await;
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let during_open = failing.requests();
    for _ in 0..4 {
        assert_eq!(get(&client, &router, "/").await.status(), StatusCode::OK);
    }
    assert_eq!(
        failing.requests(),
        during_open,
        "an open breaker lets nothing through"
    );

    failing.set_mode(Mode::Ok);
    let closed = wait_until(Duration::from_secs(10), || {
        breaker.state() == BreakerState::Closed
    });
    let traffic = async {
        for _ in 0..200 {
            get(&client, &router, "/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if breaker.state() == BreakerState::Closed {
                break;
            }
        }
    };
    let (closed, ()) = tokio::join!(closed, traffic);
    assert!(closed, "a successful probe closes the breaker");
    assert!(upstream.stats.breaker_transitions.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn forced_breakers_steer_traffic() {
    let first = TestServer::start("first", Mode::Ok).await;
    let second = TestServer::start("second", Mode::Status(502)).await;
    let router = router(&config(
        &[&first, &second],
        r#"
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
failure_threshold = 1
open_time = "30s"
[upstreams.retries]
max_retries = 0
"#,
    ))
    .await;
    let client = client();
    let upstream = upstream(&router);
    let first_breaker = upstream.endpoints[index_of(&router, &first)]
        .breaker
        .clone();
    let second_breaker = upstream.endpoints[index_of(&router, &second)]
        .breaker
        .clone();

    // Forced closed: the failing endpoint keeps its traffic.
    second_breaker.force(ForcedMode::Closed);
    for _ in 0..6 {
        get(&client, &router, "/").await;
    }
    assert_eq!(second_breaker.state(), BreakerState::Closed);
    assert!(second.requests() >= 3);

    // Forced open: no traffic to the first endpoint.
    first_breaker.force(ForcedMode::Open);
    let before = first.requests();
    for _ in 0..4 {
        get(&client, &router, "/").await;
    }
    assert_eq!(first.requests(), before);

    // Both open: 503 circuit_open with Retry-After.
    second_breaker.force(ForcedMode::Open);
    let response = get(&client, &router, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "circuit_open");
    assert_eq!(body["upstream"], "api");

    // Reset: automatic again, and the failing endpoint trips at once.
    first_breaker.force(ForcedMode::Auto);
    second_breaker.force(ForcedMode::Auto);
    assert_eq!(first_breaker.view().consecutive_failures, 0);
    for _ in 0..4 {
        get(&client, &router, "/").await;
    }
    assert_eq!(second_breaker.state(), BreakerState::Open);
    assert_eq!(first_breaker.state(), BreakerState::Closed);
}

#[tokio::test]
async fn spent_retry_budget_returns_first_answer() {
    let failing = TestServer::start("failing", Mode::Status(503)).await;
    let healthy = TestServer::start("healthy", Mode::Ok).await;
    let router = router(&config(
        &[&failing, &healthy],
        r#"
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
enable = false
[upstreams.retries]
budget_ratio = 0.0
budget_min_per_sec = 0
"#,
    ))
    .await;
    let client = client();
    let mut unavailable = 0;
    for _ in 0..10 {
        if get(&client, &router, "/").await.status() == StatusCode::SERVICE_UNAVAILABLE {
            unavailable += 1;
        }
    }
    let upstream = upstream(&router);
    assert_eq!(unavailable, failing.requests());
    assert!(unavailable > 0);
    assert_eq!(
        upstream.stats.budget_exhausted.load(Ordering::SeqCst),
        unavailable as u64
    );
    assert_eq!(upstream.stats.retries.load(Ordering::SeqCst), 0);
    assert_eq!(failing.requests() + healthy.requests(), 10);
}

#[tokio::test]
async fn retry_budget_allows_retries_per_second() {
    let failing = TestServer::start("failing", Mode::Status(503)).await;
    let healthy = TestServer::start("healthy", Mode::Ok).await;
    let router = router(&config(
        &[&failing, &healthy],
        r#"
[upstreams.passive_health]
consecutive_failures = 0
[upstreams.circuit_breaker]
enable = false
[upstreams.retries]
budget_ratio = 0.0
budget_min_per_sec = 1000
"#,
    ))
    .await;
    let client = client();
    for _ in 0..10 {
        assert_eq!(get(&client, &router, "/").await.status(), StatusCode::OK);
    }
    let upstream = upstream(&router);
    assert_eq!(
        upstream.stats.retries.load(Ordering::SeqCst),
        failing.requests() as u64
    );
    assert_eq!(upstream.stats.budget_exhausted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    let slow = TestServer::start("slow", Mode::Slow(Duration::from_millis(1500))).await;
    let router = Arc::new(
        router(&format!(
            "[routing]\nmax_concurrent_requests = 1\nqueue_timeout = \"300ms\"\n{}",
            config(&[&slow], "")
        ))
        .await,
    );
    let holder = {
        let router = router.clone();
        tokio::spawn(async move {
            client()
                .get(router.url("/hold"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || router
            .state()
            .concurrency
            .in_flight()
            == 1)
        .await
    );

    let waiter = {
        let router = router.clone();
        tokio::spawn(async move { client().get(router.url("/wait")).send().await.unwrap() })
    };
    let concurrency = router.state().concurrency.clone();
    assert!(
        wait_until(Duration::from_secs(5), || concurrency.queue_depth() == 1).await,
        "the second request waits in the queue"
    );
    let response = waiter.await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "overloaded");
    assert_eq!(concurrency.queue_depth(), 0);

    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    assert_eq!(slow.requests(), 1);
    assert!(wait_until(Duration::from_secs(5), || concurrency.in_flight() == 0).await);
}

#[tokio::test]
async fn queued_request_proceeds_when_slot_frees() {
    let slow = TestServer::start("slow", Mode::Slow(Duration::from_millis(200))).await;
    let router = Arc::new(
        router(&format!(
            "[routing]\nmax_concurrent_requests = 1\nqueue_timeout = \"10s\"\n{}",
            config(&[&slow], "")
        ))
        .await,
    );
    let mut requests = Vec::new();
    for _ in 0..3 {
        let router = router.clone();
        requests.push(tokio::spawn(async move {
            client().get(router.url("/")).send().await.unwrap().status()
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(slow.requests(), 3);
}

#[tokio::test]
async fn max_requests_answers_upstream_overloaded() {
    let slow = TestServer::start("slow", Mode::Slow(Duration::from_millis(800))).await;
    let router = Arc::new(
        router(&config(
            &[&slow],
            "[upstreams.circuit_breaker]\nmax_requests = 1\n",
        ))
        .await,
    );
    let holder = {
        let router = router.clone();
        tokio::spawn(async move { client().get(router.url("/")).send().await.unwrap().status() })
    };
    let upstream = upstream(&router);
    assert!(
        wait_until(Duration::from_secs(5), || upstream.requests_in_flight()
            == 1)
        .await
    );
    let response = get(&client(), &router, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_overloaded");
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    assert_eq!(slow.requests(), 1);
}

#[tokio::test]
async fn deny_list_from_config_closes_connections() {
    let server = TestServer::start("origin", Mode::Ok).await;
    let router = router(&format!(
        "[security]\ndeny_list = [\"127.0.0.0/8\"]\n{}",
        config(&[&server], "")
    ))
    .await;
    let (answer, closed) = common::raw_exchange(
        router.address,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed);
    assert_eq!(answer, "", "a denied connection gets no answer");
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn deny_list_changes_apply_without_reload() {
    let server = TestServer::start("origin", Mode::Ok).await;
    let text = config(&[&server], "");
    let router = router(&text).await;
    let state = router.state().clone();

    // A keep-alive connection opened before the entry is added.
    let client = client();
    assert_eq!(get(&client, &router, "/").await.status(), StatusCode::OK);
    state
        .deny_list
        .update(&["127.0.0.1".to_string()], &[])
        .unwrap();
    let response = get(&client, &router, "/").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "denied");

    // New connections are closed at accept.
    let (answer, closed) = common::raw_exchange(
        router.address,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed);
    assert!(answer.is_empty());

    // A reload with the same deny_list keeps the admin entry.
    let config: valkyrie_config::Config = toml::from_str(&text).unwrap();
    let current = state.snapshot.load_full();
    let snapshot = Snapshot::build(Arc::new(config.clone()), Some(&current))
        .await
        .unwrap();
    state.publish(snapshot);
    assert!(state.deny_list.denies("127.0.0.1".parse().unwrap()));

    // A reload that changes deny_list replaces the admin entries.
    let mut changed = config;
    changed.security.deny_list = vec!["192.0.2.0/24".to_string()];
    let current = state.snapshot.load_full();
    let snapshot = Snapshot::build(Arc::new(changed), Some(&current))
        .await
        .unwrap();
    state.publish(snapshot);
    assert!(!state.deny_list.denies("127.0.0.1".parse().unwrap()));
    let fresh = common::client();
    assert_eq!(get(&fresh, &router, "/").await.status(), StatusCode::OK);
    assert_eq!(state.deny_list.view().config, ["192.0.2.0/24"]);
}

#[tokio::test]
async fn reload_keeps_breaker_override_and_health() {
    let first = TestServer::start("first", Mode::Ok).await;
    let second = TestServer::start("second", Mode::Ok).await;
    let text = config(
        &[&first, &second],
        &format!("[upstreams.health_check]\npath = \"{CHECK_PATH}\"\ninterval = \"50ms\"\n"),
    );
    let router = router(&text).await;
    let state = router.state().clone();
    let old = upstream(&router);
    assert!(wait_until(Duration::from_secs(5), || old.health_known()).await);
    old.endpoints[0].breaker.force(ForcedMode::Open);

    let mut config: valkyrie_config::Config = toml::from_str(&text).unwrap();
    config.upstreams[0].connect_timeout = valkyrie_config::Duration(Duration::from_secs(3));
    let current = state.snapshot.load_full();
    let snapshot = Snapshot::build(Arc::new(config), Some(&current))
        .await
        .unwrap();
    state.publish(snapshot);
    let new = upstream(&router);
    assert!(!Arc::ptr_eq(&old, &new), "a changed upstream is rebuilt");
    assert!(
        new.health_known(),
        "verdicts carry over, so readiness holds"
    );
    assert_eq!(new.endpoints[0].breaker.forced(), ForcedMode::Open);
}
