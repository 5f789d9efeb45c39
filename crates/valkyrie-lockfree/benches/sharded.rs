//! `ShardedFit` as a key table in RCU snapshots. Measures the cost of a
//! batch of 10,000 changes applied to a clone of the current table, and
//! lookups in three tables: one without deltas, one with the deltas that
//! such batches leave, and the same after folding them, next to a
//! hashbrown `HashTable` of the same keys. Tables have 7,000,
//! 70,000 and 700,000 entries in shards of about 4,096 entries, as
//! `valkyrie-router` sizes its key tables, and run on one thread.
//!
//! Run: `cargo bench -p valkyrie-lockfree --bench sharded`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::measurement::Measurement;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use valkyrie_lockfree::{FitCounters, FitTally, ShardedFit};

mod common;
use common::{Queries, ThreadCpuTime};

const SIZES: [usize; 3] = [7_000, 70_000, 700_000];

/// Changes per batch, as many as one publish of the default RCU settings
/// takes.
const BATCH: usize = 10_000;

/// Batches applied before lookups are measured in a table with deltas.
const WARM_BATCHES: usize = 20;

fn tenant(index: usize) -> String {
    format!("tenant-{index:07}")
}

/// Builds a table of `size` entries sized like a key table.
fn table(size: usize) -> ShardedFit<u64> {
    let counters = FitCounters::new();
    let shard_count = (size / 4096).next_power_of_two().clamp(1, 1024);
    let per_shard = if shard_count == 1 {
        size
    } else {
        size.div_ceil(shard_count) * 21 / 20 + 32
    };
    let mut table = ShardedFit::new(shard_count, per_shard, 0.75, &counters);
    for index in 0..size {
        table.insert(tenant(index).as_bytes(), index as u64);
    }
    table.shrink_to_fit();
    table
}

/// Returns the keys of change batch `batch`: half replace entries, half
/// add keys, as in `valkyrie-routing bench engine`.
fn batch_keys(batch: usize, size: usize) -> Vec<Vec<u8>> {
    (batch * BATCH..(batch + 1) * BATCH)
        .map(|index| {
            let key = if index % 2 == 0 {
                tenant(index * 31 % size)
            } else {
                format!("new-{index}")
            };
            key.into_bytes()
        })
        .collect()
}

/// Clones `current`, applies one batch to the clone and makes it current,
/// dropping the previous table as a publish does.
fn apply_batch(current: &mut Arc<ShardedFit<u64>>, keys: &[Vec<u8>]) {
    let mut next = (**current).clone();
    for (value, key) in keys.iter().enumerate() {
        next.insert(key, value as u64);
    }
    *current = Arc::new(next);
}

fn bench_batches(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("sharded_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    for &size in &SIZES {
        let mut current = Arc::new(table(size));
        let batches: Vec<Vec<Vec<u8>>> = (0..8).map(|batch| batch_keys(batch, size)).collect();
        let mut next_batch = 0;
        group.bench_function(BenchmarkId::new("clone_and_apply", size), |b| {
            b.iter_custom(|iterations| {
                let started = ThreadCpuTime.start();
                for _ in 0..iterations {
                    apply_batch(&mut current, &batches[next_batch % batches.len()]);
                    next_batch += 1;
                }
                ThreadCpuTime.end(started)
            });
        });
        eprintln!(
            "size={size}: {} delta entries in {} of {} shards after the batches",
            current.delta_len(),
            current.delta_count(),
            current.shards().len()
        );
    }
    group.finish();
}

fn bench_lookups(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("sharded_lookup");
    for &size in &SIZES {
        let fresh = Arc::new(table(size));
        let mut changed = Arc::clone(&fresh);
        for batch in 0..WARM_BATCHES {
            apply_batch(&mut changed, &batch_keys(batch, size));
        }
        let mut folded = (*changed).clone();
        folded.fold_all();
        eprintln!(
            "size={size}, with_deltas table: {} delta entries in {} of {} shards",
            changed.delta_len(),
            changed.delta_count(),
            changed.shards().len()
        );

        let mut rng = StdRng::seed_from_u64(size as u64);
        let mut hits: Vec<String> = (0..size).map(tenant).collect();
        hits.shuffle(&mut rng);
        for (name, table) in [
            ("no_deltas", &*fresh),
            ("with_deltas", &*changed),
            ("folded", &folded),
        ] {
            group.bench_function(BenchmarkId::new(format!("{name}/hit"), size), |b| {
                let mut queries = Queries::new(&hits);
                let mut tally = FitTally::default();
                b.iter(|| black_box(table.get_tallied(queries.next_key(), &mut tally)));
            });
        }

        // hashbrown on the same keys, the baseline of `bench engine`: boxed
        // keys, its default hasher, the key bytes fed in one `write`.
        let hasher = hashbrown::DefaultHashBuilder::default();
        let mut baseline: hashbrown::HashTable<(Box<[u8]>, u64)> =
            hashbrown::HashTable::with_capacity(size);
        for index in 0..size {
            let key = tenant(index).into_bytes().into_boxed_slice();
            baseline.insert_unique(hash_bytes(&hasher, &key), (key, index as u64), |entry| {
                hash_bytes(&hasher, &entry.0)
            });
        }
        group.bench_function(BenchmarkId::new("hashbrown/hit", size), |b| {
            let mut queries = Queries::new(&hits);
            b.iter(|| {
                let key = queries.next_key();
                black_box(baseline.find(hash_bytes(&hasher, key), |entry| *entry.0 == *key))
            });
        });
    }
    group.finish();
}

#[inline(always)]
fn hash_bytes(hasher: &hashbrown::DefaultHashBuilder, key: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut state = hasher.build_hasher();
    state.write(key);
    state.finish()
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = bench_batches, bench_lookups
}
criterion_main!(benches);
