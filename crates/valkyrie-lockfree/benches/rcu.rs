//! Snapshot loads: `Rcu::load`, the cached `RcuReader`, plain
//! `ArcSwap::load` and `RwLock<Arc<T>>` reads, alone and with a second
//! thread reading the same structure. Also the cost of publishing a batch of
//! 10k key-table changes into a 1M-entry FIT.
//!
//! Run: `cargo bench -p valkyrie-lockfree --bench rcu`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use valkyrie_lockfree::{Fit, Rcu};

mod common;
use common::ThreadCpuTime;

struct State {
    generation: u64,
}

fn bench_loads(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("rcu_load");

    let rcu = Rcu::new(State { generation: 1 });
    group.bench_function("rcu_load", |b| b.iter(|| black_box(rcu.load().generation)));
    let mut reader = rcu.reader();
    group.bench_function("rcu_reader_cached", |b| {
        b.iter(|| black_box(reader.load().generation))
    });
    group.bench_function("rcu_load_full", |b| {
        b.iter(|| black_box(rcu.load_full().generation))
    });

    let swap = ArcSwap::from_pointee(State { generation: 1 });
    group.bench_function("arc_swap_load", |b| {
        b.iter(|| black_box(swap.load().generation))
    });
    let lock = RwLock::new(Arc::new(State { generation: 1 }));
    group.bench_function("rwlock_read", |b| {
        b.iter(|| black_box(lock.read().expect("lock not poisoned").generation))
    });
    group.finish();
}

/// Runs `read` in a loop on a second thread while `measure` runs, so that
/// shared cache lines (a lock's reader count, a reference count) bounce
/// between the two cores.
fn with_background_reader<R, M>(read: R, measure: M)
where
    R: Fn() + Send + Sync,
    M: FnOnce(),
{
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..1000 {
                    read();
                }
            }
        });
        measure();
        stop.store(true, Ordering::Relaxed);
    });
}

fn bench_contended_loads(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("rcu_load_with_second_reader");
    let rcu = Rcu::new(State { generation: 1 });
    with_background_reader(
        || {
            black_box(rcu.load().generation);
        },
        || {
            group.bench_function("rcu_load", |b| b.iter(|| black_box(rcu.load().generation)));
        },
    );
    with_background_reader(
        || {
            black_box(rcu.load_full().generation);
        },
        || {
            group.bench_function("rcu_load_full", |b| {
                b.iter(|| black_box(rcu.load_full().generation))
            });
        },
    );
    let lock = RwLock::new(Arc::new(State { generation: 1 }));
    with_background_reader(
        || {
            black_box(lock.read().expect("lock not poisoned").generation);
        },
        || {
            group.bench_function("rwlock_read", |b| {
                b.iter(|| black_box(lock.read().expect("lock not poisoned").generation))
            });
        },
    );
    group.finish();
}

fn bench_batch_publish(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("rcu_publish");
    group.measurement_time(Duration::from_secs(4));
    let mut table = Fit::with_capacity(1_000_000, 0.875);
    for i in 0..1_000_000u32 {
        table.insert(format!("key-{i}").as_bytes(), i);
    }
    let rcu = Rcu::new(table);
    let updates: Vec<(Vec<u8>, u32)> = (0..10_000u32)
        .map(|i| (format!("key-{}", i * 97).into_bytes(), i))
        .collect();
    group.bench_function("fit_1m_clone_apply_10k", |b| {
        b.iter_batched(
            || (),
            |()| {
                rcu.update(|current| {
                    let mut next = current.clone();
                    for (key, value) in &updates {
                        next.insert(key, *value);
                    }
                    next
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = bench_loads, bench_contended_loads, bench_batch_publish
}
criterion_main!(benches);
