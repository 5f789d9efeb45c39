//! Lookup cost of `RouteTable::route` on generated route sets: exact hosts
//! with path prefixes, wildcard hosts, and a catch-all, at several sizes.
//!
//! Run with `cargo bench -p valkyrie-router --bench route_lookup`.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use valkyrie_config::Config;
use valkyrie_router::{RequestInfo, RouteTable};

/// Prefixes per host; the route count is `hosts * PREFIXES_PER_HOST` plus a
/// wildcard route per 100 hosts and one catch-all.
const PREFIXES_PER_HOST: usize = 10;

fn config(hosts: usize) -> Config {
    let mut text =
        String::from("[[upstreams]]\nname = \"app\"\nendpoints = [\"127.0.0.1:9001\"]\n");
    for host in 0..hosts {
        for prefix in 0..PREFIXES_PER_HOST {
            writeln!(
                text,
                "[[routes]]\nname = \"h{host}-p{prefix}\"\nhost = \"h{host}.example.com\"\n\
                 path_prefix = \"/api/v{prefix}/\"\nupstream = \"app\"",
            )
            .unwrap();
        }
    }
    for zone in 0..hosts.div_ceil(100) {
        writeln!(
            text,
            "[[routes]]\nname = \"zone{zone}\"\nhost = \"*.z{zone}.example.com\"\n\
             path_prefix = \"/\"\nupstream = \"app\"",
        )
        .unwrap();
    }
    text.push_str("[[routes]]\nname = \"fallback\"\nupstream = \"app\"\n");
    toml::from_str(&text).unwrap()
}

fn lookup(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let method = Method::GET;
    let mut group = c.benchmark_group("route_lookup");

    for hosts in [100, 10_000] {
        let table = RouteTable::build(&config(hosts)).unwrap();
        let routes = table.routes().len();
        let host = format!("h{}.example.com", hosts / 2);
        let cases = [
            ("exact_host_prefix", Some(host.as_str()), "/api/v7/users/42"),
            (
                "exact_host_mixed_case_port",
                Some("H50.Example.COM:8443"),
                "/api/v3/x",
            ),
            ("wildcard_host", Some("shop.z0.example.com"), "/cart"),
            ("fallback", Some("unknown.org"), "/"),
            ("dotted_path", Some(host.as_str()), "/api/v1/../v7/%75sers"),
        ];
        for (name, host, path) in cases {
            let request = RequestInfo {
                host,
                path,
                query: None,
                method: &method,
                headers: &headers,
            };
            assert!(table.route(&request).is_some(), "{name} does not match");
            group.bench_with_input(BenchmarkId::new(name, routes), &request, |b, request| {
                b.iter(|| table.route(black_box(request)).map(|m| m.route.index))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
