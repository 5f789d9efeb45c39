//! Loom models of snapshot publication and reclamation. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p valkyrie-lockfree --release --test loom_rcu`.
//!
//! Under loom the snapshot cell is a loom mutex around an `Arc` (arc-swap is
//! not instrumented), so these models check the protocol built on top of
//! it: generation order, the retire stamp, reclamation of every replaced
//! snapshot after its last reader, and the publisher's flush handshake.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use valkyrie_lockfree::{Publisher, PublisherConfig, Rcu};

/// Payload that records whether it was freed, so a reader can check that
/// its snapshot is alive while held.
struct Payload {
    generation_copy: u64,
    freed: Arc<AtomicUsize>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        self.freed.fetch_add(1, Ordering::SeqCst);
    }
}

fn payload(generation_copy: u64, freed: &Arc<AtomicUsize>) -> Payload {
    Payload {
        generation_copy,
        freed: Arc::clone(freed),
    }
}

#[test]
fn publish_and_reclaim() {
    loom::model(|| {
        let freed = Arc::new(AtomicUsize::new(0));
        let rcu = Arc::new(Rcu::new(payload(0, &freed)));

        let reader = {
            let rcu = Arc::clone(&rcu);
            thread::spawn(move || {
                let first = rcu.load_full();
                assert_eq!(first.generation_copy, first.generation());
                let second = rcu.load();
                assert!(second.generation() >= first.generation());
                assert_eq!(second.generation_copy, second.generation());
                // Both snapshots are still alive while held.
                assert_eq!(first.generation_copy, first.generation());
            })
        };

        rcu.publish(payload(1, &freed));
        rcu.publish(payload(2, &freed));
        reader.join().unwrap();

        let stats = rcu.stats();
        assert_eq!(stats.generation, 2);
        assert_eq!(stats.snapshots_published, 2);
        assert_eq!(
            stats.snapshots_reclaimed, 2,
            "both replaced snapshots freed"
        );
        assert_eq!(freed.load(Ordering::SeqCst), 2);
        drop(rcu);
        assert_eq!(freed.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn concurrent_writers_order_generations() {
    loom::model(|| {
        let rcu = Arc::new(Rcu::new(0u64));
        let writer = {
            let rcu = Arc::clone(&rcu);
            thread::spawn(move || rcu.update(|value| value + 1))
        };
        let mine = rcu.update(|value| value + 1);
        let theirs = writer.join().unwrap();
        assert_ne!(mine, theirs);
        let current = rcu.load();
        assert_eq!(current.generation(), 2);
        assert_eq!(**current, 2, "no update lost");
    });
}

#[test]
fn publisher_flush_handshake() {
    loom::model(|| {
        let rcu = Arc::new(Rcu::new(0u64));
        let config = PublisherConfig {
            grace_period: Duration::from_secs(3600),
            max_pending: 2,
        };
        let publisher =
            Publisher::spawn(Arc::clone(&rcu), config, |current: &u64, batch: &[u64]| {
                current + batch.iter().sum::<u64>()
            })
            .unwrap();
        publisher.submit(1);
        publisher.flush();
        assert_eq!(**rcu.load(), 1);
        publisher.submit(2);
        drop(publisher);
        assert_eq!(**rcu.load(), 3, "drop publishes pending updates");
    });
}

#[test]
fn full_queue_publishes_without_flush() {
    loom::model(|| {
        let rcu = Arc::new(Rcu::new(0u64));
        let config = PublisherConfig {
            grace_period: Duration::from_secs(3600),
            max_pending: 1,
        };
        let publisher =
            Publisher::spawn(Arc::clone(&rcu), config, |_: &u64, batch: &[u64]| batch[0]).unwrap();
        publisher.submit(5);
        // Loom never fires the one-hour timeout, so only the wake-up from
        // `submit` can publish the update here.
        while **rcu.load() != 5 {
            thread::yield_now();
        }
        assert_eq!(rcu.generation(), 1);
        drop(publisher);
    });
}
