//! RCU with real threads: readers see monotonic generations and consistent
//! snapshots, replaced snapshots are freed, and the publisher batches,
//! flushes, runs idle work between batches and survives a panicking
//! `apply` or idle function.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use valkyrie_lockfree::{Publisher, PublisherConfig, Rcu};

/// Snapshot payload that counts live instances, so a test can tell whether
/// replaced snapshots were freed.
struct Tracked {
    generation_copy: u64,
    items: Vec<u64>,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(generation_copy: u64, items: Vec<u64>, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            generation_copy,
            items,
            live: Arc::clone(live),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn readers_see_monotonic_generations() {
    const PUBLISHES: u64 = 2_000;
    let live = Arc::new(AtomicUsize::new(0));
    let rcu = Arc::new(Rcu::new(Tracked::new(0, vec![0], &live)));
    let done = Arc::new(AtomicUsize::new(0));

    let readers: Vec<_> = (0..3)
        .map(|reader_index| {
            let rcu = Arc::clone(&rcu);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut cached = rcu.reader();
                let mut last = 0u64;
                let mut loads = 0u64;
                // Bounded: stop when the writer is done or after 50M loads.
                while done.load(Ordering::Acquire) == 0 && loads < 50_000_000 {
                    loads += 1;
                    let generation = if reader_index == 0 {
                        let snapshot = cached.load();
                        assert_eq!(snapshot.generation_copy, snapshot.generation());
                        snapshot.generation()
                    } else {
                        let snapshot = rcu.load();
                        assert_eq!(snapshot.generation_copy, snapshot.generation());
                        assert_eq!(snapshot.items.len() as u64, snapshot.generation() + 1);
                        snapshot.generation()
                    };
                    assert!(
                        generation >= last,
                        "generation went back from {last} to {generation}"
                    );
                    last = generation;
                }
                last
            })
        })
        .collect();

    for generation in 1..=PUBLISHES {
        let published = rcu.update(|current| {
            let mut items = current.items.clone();
            items.push(generation);
            Tracked::new(generation, items, &live)
        });
        assert_eq!(published, generation);
    }
    done.store(1, Ordering::Release);
    for reader in readers {
        let last = reader.join().expect("reader thread panicked");
        assert!(last <= PUBLISHES);
    }

    assert_eq!(rcu.generation(), PUBLISHES);
    assert_eq!(
        live.load(Ordering::SeqCst),
        1,
        "only the current snapshot is alive"
    );
    let stats = rcu.stats();
    assert_eq!(stats.snapshots_published, PUBLISHES);
    assert_eq!(stats.snapshots_reclaimed, PUBLISHES);
    let bucketed: u64 = stats.grace_period_buckets.iter().sum();
    assert!(bucketed <= stats.snapshots_reclaimed);
    assert!(stats.grace_period_max >= stats.grace_period_last);
    assert!(stats.grace_period_sum >= stats.grace_period_max);
}

#[test]
fn held_snapshot_outlives_publish() {
    let live = Arc::new(AtomicUsize::new(0));
    let rcu = Rcu::new(Tracked::new(0, vec![1, 2, 3], &live));
    let in_flight = rcu.load_full();
    rcu.publish(Tracked::new(1, vec![], &live));
    rcu.publish(Tracked::new(2, vec![], &live));
    assert_eq!(in_flight.generation(), 0);
    assert_eq!(in_flight.items, vec![1, 2, 3]);
    assert_eq!(
        live.load(Ordering::SeqCst),
        2,
        "held generation 0 and current generation 2"
    );
    assert_eq!(
        rcu.stats().snapshots_reclaimed,
        1,
        "generation 1 had no reader"
    );
    drop(in_flight);
    assert_eq!(live.load(Ordering::SeqCst), 1);
    assert_eq!(rcu.stats().snapshots_reclaimed, 2);
}

#[test]
fn cached_reader_follows_publishes() {
    let rcu = Rcu::new(10u32);
    let mut reader = rcu.reader();
    assert_eq!(*reader.load().value(), 10);
    rcu.publish(11);
    assert_eq!(***reader.load(), 11);
    assert_eq!(reader.load().generation(), 1);
}

#[allow(
    clippy::ptr_arg,
    reason = "matches the `apply` signature for T = Vec<u64>"
)]
fn append(current: &Vec<u64>, batch: &[u64]) -> Vec<u64> {
    let mut next = current.clone();
    next.extend_from_slice(batch);
    next
}

#[test]
fn publisher_batches_and_flushes() {
    let rcu = Arc::new(Rcu::new(Vec::<u64>::new()));
    let config = PublisherConfig {
        grace_period: Duration::from_secs(3600),
        max_pending: 100,
    };
    let publisher = Publisher::spawn(Arc::clone(&rcu), config, append).expect("spawn publisher");

    let reader = {
        let rcu = Arc::clone(&rcu);
        thread::spawn(move || {
            let mut last_generation = 0;
            let mut last_len = 0;
            for _ in 0..200_000 {
                let snapshot = rcu.load();
                assert!(snapshot.generation() >= last_generation);
                assert!(snapshot.len() >= last_len, "a later snapshot lost updates");
                last_generation = snapshot.generation();
                last_len = snapshot.len();
            }
        })
    };

    for chunk in (0..10_000u64).collect::<Vec<_>>().chunks(37) {
        publisher.submit_all(chunk.iter().copied());
    }
    publisher.flush();
    let snapshot = rcu.load();
    assert_eq!(snapshot.len(), 10_000);
    assert!(
        snapshot.iter().copied().eq(0..10_000),
        "updates applied in order"
    );
    let stats = publisher.stats();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.submitted, 10_000);
    assert_eq!(stats.applied, 10_000);
    assert!(stats.batches >= 1);
    assert!(
        stats.batches <= 10_000 / 37 + 1,
        "one publish per full batch at most"
    );
    assert_eq!(rcu.generation(), stats.batches);
    reader.join().expect("reader thread panicked");

    // Flushing with nothing pending returns at once.
    publisher.flush();
    assert_eq!(publisher.stats().batches, stats.batches);
}

#[test]
fn publisher_publishes_after_grace_period() {
    let rcu = Arc::new(Rcu::new(Vec::<u64>::new()));
    let config = PublisherConfig {
        grace_period: Duration::from_millis(5),
        max_pending: 1_000_000,
    };
    let publisher = Publisher::spawn(Arc::clone(&rcu), config, append).expect("spawn publisher");
    publisher.submit(7);
    // Liveness, not timing: the update must become visible without a flush.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rcu.load().is_empty() {
        assert!(
            Instant::now() < deadline,
            "update not published without a flush"
        );
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(**rcu.load(), vec![7]);
    assert_eq!(publisher.stats().pending, 0);
}

#[test]
fn publisher_drop_publishes_pending() {
    let rcu = Arc::new(Rcu::new(Vec::<u64>::new()));
    let config = PublisherConfig {
        grace_period: Duration::from_secs(3600),
        max_pending: 1_000,
    };
    let publisher = Publisher::spawn(Arc::clone(&rcu), config, append).expect("spawn publisher");
    publisher.submit_all([1, 2, 3]);
    drop(publisher);
    assert_eq!(**rcu.load(), vec![1, 2, 3]);
}

#[test]
fn publisher_survives_panicking_apply() {
    let rcu = Arc::new(Rcu::new(Vec::<u64>::new()));
    let config = PublisherConfig {
        grace_period: Duration::from_secs(3600),
        max_pending: 1_000,
    };
    let publisher = Publisher::spawn(
        Arc::clone(&rcu),
        config,
        |current: &Vec<u64>, batch: &[u64]| {
            assert!(!batch.contains(&13), "update 13 is rejected");
            append(current, batch)
        },
    )
    .expect("spawn publisher");
    publisher.submit_all([1, 2]);
    publisher.flush();
    publisher.submit_all([13, 14]);
    publisher.flush();
    assert_eq!(**rcu.load(), vec![1, 2], "failed batch leaves the snapshot");
    publisher.submit(3);
    publisher.flush();
    assert_eq!(**rcu.load(), vec![1, 2, 3]);
    let stats = publisher.stats();
    assert_eq!(stats.failed_batches, 1);
    assert_eq!(stats.failed_updates, 2);
    assert_eq!(stats.applied, 3);
}

/// Waits until `done` returns true, failing after 30 seconds. Liveness,
/// not timing: the work must happen without a further submit or flush.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn publisher_runs_idle_work_after_batches() {
    let rcu = Arc::new(Rcu::new(Vec::<u64>::new()));
    let config = PublisherConfig {
        grace_period: Duration::from_millis(2),
        max_pending: 1_000_000,
    };
    // The idle function moves one value to the end at a time, so each
    // batch leaves up to two steps of idle work.
    let idle_calls = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let idle_calls = Arc::clone(&idle_calls);
        Publisher::spawn_with_idle(Arc::clone(&rcu), config, append, move |current| {
            idle_calls.fetch_add(1, Ordering::SeqCst);
            let position = current.iter().position(|&value| value < 100)?;
            let mut next = current.clone();
            let value = next.remove(position);
            next.push(value + 100);
            Some(next)
        })
        .expect("spawn publisher")
    };

    publisher.submit_all([1, 2]);
    publisher.flush();
    // Idle work may start 2 ms after the publish, so the batch can already
    // be partly moved when it is read here.
    let seen = rcu.load().to_vec();
    assert!(
        [vec![1, 2], vec![2, 101], vec![101, 102]].contains(&seen),
        "the batch is visible after flush, got {seen:?}"
    );
    wait_until("idle work on the first batch", || {
        **rcu.load() == vec![101, 102] && publisher.stats().idle_publishes == 2
    });
    wait_until("the idle call that finds no work", || {
        idle_calls.load(Ordering::SeqCst) == 3
    });
    assert_eq!(rcu.generation(), 3, "one batch and two idle publishes");

    publisher.submit(3);
    publisher.flush();
    wait_until("idle work on the second batch", || {
        **rcu.load() == vec![101, 102, 103]
    });
    wait_until("the idle call that finds no work", || {
        idle_calls.load(Ordering::SeqCst) == 5
    });
    let stats = publisher.stats();
    assert_eq!(stats.batches, 2);
    assert_eq!(stats.idle_publishes, 3);
    assert_eq!(stats.failed_idle_calls, 0);
}

#[test]
fn publisher_survives_panicking_idle() {
    let rcu = Arc::new(Rcu::new(Vec::<u64>::new()));
    let config = PublisherConfig {
        grace_period: Duration::from_millis(2),
        max_pending: 1_000_000,
    };
    let publisher = Publisher::spawn_with_idle(
        Arc::clone(&rcu),
        config,
        append,
        |_: &Vec<u64>| -> Option<Vec<u64>> { panic!("idle fails") },
    )
    .expect("spawn publisher");
    publisher.submit(1);
    publisher.flush();
    wait_until("the failed idle call", || {
        publisher.stats().failed_idle_calls == 1
    });
    publisher.submit(2);
    publisher.flush();
    assert_eq!(**rcu.load(), vec![1, 2], "batches still apply");
    wait_until("the second failed idle call", || {
        publisher.stats().failed_idle_calls == 2
    });
    assert_eq!(publisher.stats().idle_publishes, 0);
}
