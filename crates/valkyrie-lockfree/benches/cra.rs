//! CRA against matchit on the same path sets: prefix lookups at 10k, 100k
//! and 1M routes, one thread. matchit emulates a prefix route with a
//! catch-all `/{*rest}` route.
//!
//! Run: `cargo bench -p valkyrie-lockfree --bench cra`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use valkyrie_lockfree::{CraBuilder, MatchKind};

mod common;
use common::{Queries, ThreadCpuTime};

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

/// Prefixes `/t{tenant}/svc{n}/`: ten services per tenant, so routes share
/// prefixes at two levels.
fn prefixes(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("/t{}/svc{}/", i / 10, i % 10))
        .collect()
}

/// Request paths below the prefixes, in random order.
fn request_paths(prefixes: &[String], rng: &mut StdRng) -> Vec<String> {
    let mut paths: Vec<String> = prefixes
        .iter()
        .map(|prefix| format!("{prefix}items/{}", rng.gen_range(0..100_000)))
        .collect();
    paths.shuffle(rng);
    paths
}

fn bench_prefix_lookups(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("cra_lookup");
    for &size in &SIZES {
        let mut rng = StdRng::seed_from_u64(size as u64);
        let prefixes = prefixes(size);
        let hits = request_paths(&prefixes, &mut rng);
        let misses: Vec<String> = hits
            .iter()
            .map(|path| format!("/x{}", &path[2..]))
            .collect();

        let mut builder = CraBuilder::new();
        let mut router = matchit::Router::new();
        for (i, prefix) in prefixes.iter().enumerate() {
            builder.insert(prefix.as_bytes(), MatchKind::Prefix, i as u32);
            router
                .insert(format!("{prefix}{{*rest}}"), i as u32)
                .expect("matchit accepts the route");
        }
        let cra = builder.build();
        eprintln!(
            "cra size={size}: {} nodes, {:.1} arena bytes per route",
            cra.node_count(),
            cra.arena_bytes() as f64 / size as f64
        );

        for (kind, queries) in [("hit", &hits), ("miss", &misses)] {
            let id = |name: &str| BenchmarkId::new(format!("{name}/{kind}"), size);
            group.bench_function(id("cra_longest_prefix"), |b| {
                let mut queries = Queries::new(queries);
                b.iter(|| black_box(cra.longest_prefix(queries.next_key())));
            });
            group.bench_function(id("matchit"), |b| {
                let mut queries = Queries::new(queries);
                b.iter(|| {
                    black_box(
                        router
                            .at(queries.next_str())
                            .ok()
                            .map(|matched| *matched.value),
                    )
                });
            });
        }
        // Check once that both agree on a sample of hits.
        for path in hits.iter().take(1000) {
            assert_eq!(
                cra.longest_prefix(path.as_bytes()),
                router.at(path).ok().map(|m| m.value)
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = bench_prefix_lookups
}
criterion_main!(benches);
