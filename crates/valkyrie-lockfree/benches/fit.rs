//! FIT against hashbrown and papaya on the same string keys: hit and miss
//! lookups at 10k, 100k and 1M entries, one thread.
//!
//! Run: `cargo bench -p valkyrie-lockfree --bench fit`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use valkyrie_lockfree::Fit;

mod common;
use common::{Queries, ThreadCpuTime};

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

/// Host-like keys of 20 to 30 bytes; `salt` separates present and missing
/// key sets.
fn keys(count: usize, salt: &str, rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let shard: u32 = rng.gen_range(0..1000);
            format!("t{i}{salt}.s{shard}.example.net").into_bytes()
        })
        .collect()
}

fn bench_lookups(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("fit_lookup");
    for &size in &SIZES {
        let mut rng = StdRng::seed_from_u64(size as u64);
        let present = keys(size, "", &mut rng);
        let mut hits = present.clone();
        hits.shuffle(&mut rng);
        let misses = keys(size, "x", &mut rng);

        let mut fit = Fit::with_capacity(size, 0.875);
        let mut brown = hashbrown::HashMap::with_capacity(size);
        let papaya = papaya::HashMap::with_capacity(size);
        for (i, key) in present.iter().enumerate() {
            fit.insert(key, i as u32);
            brown.insert(key.clone(), i as u32);
            papaya.pin().insert(key.clone(), i as u32);
        }
        fit.shrink_to_fit();
        let key_bytes: usize = present.iter().map(Vec::len).sum();
        eprintln!(
            "fit size={size}: {:.1} heap bytes per entry ({:.1} of them key bytes), load factor {:.3}",
            fit.heap_bytes() as f64 / size as f64,
            key_bytes as f64 / size as f64,
            fit.load_factor()
        );
        let mut fit_uncounted = fit.clone();
        fit_uncounted.set_counting(false);
        // hashbrown 0.15 rounds its bucket count up to a power of two, so at
        // 1M keys it runs at load factor 0.48 (printed below); this FIT runs
        // at about the same load.
        let mut fit_half: Fit<u32> = Fit::with_capacity(size, 0.5);
        for (key, value) in fit.iter() {
            fit_half.insert(key, *value);
        }
        fit_half.set_counting(false);
        fit_half.shrink_to_fit();
        eprintln!(
            "hashbrown size={size}: load factor {:.3} (capacity {} is 7/8 of the buckets)",
            size as f64 / (brown.capacity() as f64 * 8.0 / 7.0),
            brown.capacity()
        );
        let papaya = papaya.pin();

        for (kind, queries) in [("hit", &hits), ("miss", &misses)] {
            let id = |name: &str| BenchmarkId::new(format!("{name}/{kind}"), size);
            group.bench_function(id("fit_counted"), |b| {
                let mut queries = Queries::new(queries);
                b.iter(|| black_box(fit.get(queries.next_key())));
            });
            group.bench_function(id("fit_uncounted"), |b| {
                let mut queries = Queries::new(queries);
                b.iter(|| black_box(fit_uncounted.get(queries.next_key())));
            });
            group.bench_function(id("fit_tallied"), |b| {
                let mut queries = Queries::new(queries);
                let mut tally = valkyrie_lockfree::FitTally::default();
                b.iter(|| black_box(fit_uncounted.get_tallied(queries.next_key(), &mut tally)));
            });
            group.bench_function(id("fit_lf050_uncounted"), |b| {
                let mut queries = Queries::new(queries);
                b.iter(|| black_box(fit_half.get(queries.next_key())));
            });
            group.bench_function(id("hashbrown"), |b| {
                let mut queries = Queries::new(queries);
                b.iter(|| black_box(brown.get(queries.next_key())));
            });
            group.bench_function(id("papaya"), |b| {
                let mut queries = Queries::new(queries);
                b.iter(|| black_box(papaya.get(queries.next_key())));
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = bench_lookups
}
criterion_main!(benches);
