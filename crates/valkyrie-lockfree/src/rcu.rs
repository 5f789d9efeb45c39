//! Snapshot RCU: readers load an immutable snapshot without locks, writers
//! publish a whole new snapshot, and a replaced snapshot is freed when its
//! last reader drops it.
//!
//! [`Rcu`] keeps the current snapshot in an `ArcSwap`. [`Rcu::load`] takes
//! a snapshot through one of the calling thread's debt slots in arc-swap, so
//! the hot path does not touch the shared reference count. [`Rcu::reader`]
//! returns a per-thread cache whose load is one atomic load while the
//! snapshot is unchanged. [`Rcu::load_full`] returns an owned `Arc` for a
//! request that keeps its snapshot across await points.
//!
//! [`Publisher`] batches caller-defined updates on a background thread and
//! publishes a new snapshot built by a caller-supplied `apply` function after
//! at most the configured grace period, or sooner when enough updates are
//! queued or a caller flushes. [`Publisher::spawn_with_idle`] also takes a
//! function that may publish deferred work (such as compaction) while no
//! updates arrive.
//!
//! Each snapshot carries a generation number that grows by one per publish.
//! When a snapshot is replaced, it is stamped with the time of replacement.
//! Its `Drop` then records the time from replacement to reclamation, the
//! grace period reported by [`Rcu::stats`].

use std::fmt;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::sync::{
    lock, thread, Arc, AtomicU64, CellCache, CellGuard, Condvar, Mutex, Ordering, SnapshotCell,
};

/// Upper bounds, in seconds, of the grace period histogram buckets in
/// [`RcuStats::grace_period_buckets`]. A last, implicit bucket counts
/// everything above the largest bound.
pub const GRACE_PERIOD_BUCKETS: [f64; 8] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0];

/// Snapshot counters shared by an [`Rcu`] and all its snapshots.
struct RcuCounters {
    epoch: Instant,
    published: AtomicU64,
    reclaimed: AtomicU64,
    grace_sum_ns: AtomicU64,
    grace_max_ns: AtomicU64,
    grace_last_ns: AtomicU64,
    grace_buckets: [AtomicU64; GRACE_PERIOD_BUCKETS.len()],
}

impl RcuCounters {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            published: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            grace_sum_ns: AtomicU64::new(0),
            grace_max_ns: AtomicU64::new(0),
            grace_last_ns: AtomicU64::new(0),
            grace_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Returns nanoseconds since the counters were created, plus one so
    /// that 0 can mean "not retired".
    fn stamp(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn record_reclaim(&self, grace_ns: u64) {
        self.grace_sum_ns.fetch_add(grace_ns, Ordering::Relaxed);
        self.grace_max_ns.fetch_max(grace_ns, Ordering::Relaxed);
        self.grace_last_ns.store(grace_ns, Ordering::Relaxed);
        let seconds = grace_ns as f64 / 1e9;
        if let Some(bucket) = GRACE_PERIOD_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
        {
            self.grace_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        // Counted last with Release. `Rcu::stats` reads this count with
        // Acquire before the grace period fields, so they include this one.
        self.reclaimed.fetch_add(1, Ordering::Release);
    }
}

/// One published value with its generation.
pub struct Snapshot<T> {
    value: T,
    generation: u64,
    /// `RcuCounters::stamp` when the snapshot was replaced, or 0 while it is
    /// current.
    retired_at: AtomicU64,
    counters: Arc<RcuCounters>,
}

impl<T> Snapshot<T> {
    /// Returns the generation: 0 for the initial value, then one more for
    /// each publish.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Returns the snapshot's value.
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T> Deref for Snapshot<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for Snapshot<T> {
    fn drop(&mut self) {
        let retired_at = self.retired_at.load(Ordering::Acquire);
        if retired_at != 0 {
            let now = self.counters.stamp();
            self.counters.record_reclaim(now.saturating_sub(retired_at));
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("value", &self.value)
            .finish()
    }
}

/// Snapshot borrowed from an [`Rcu`] by [`Rcu::load`]. Hold it for the
/// duration of one lookup. arc-swap 1.9 has eight debt slots per thread, and
/// a load while all of them are taken increments the reference count.
pub struct SnapshotGuard<T>(CellGuard<Snapshot<T>>);

impl<T> Deref for SnapshotGuard<T> {
    type Target = Snapshot<T>;

    #[inline]
    fn deref(&self) -> &Snapshot<T> {
        &self.0
    }
}

/// Counters of an [`Rcu`], from [`Rcu::stats`].
#[derive(Clone, Debug, PartialEq)]
pub struct RcuStats {
    /// Generation of the current snapshot.
    pub generation: u64,
    /// Snapshots published since the `Rcu` was created, the initial one not
    /// included.
    pub snapshots_published: u64,
    /// Replaced snapshots that have been freed.
    pub snapshots_reclaimed: u64,
    /// Grace period of the most recently freed snapshot: time from its
    /// replacement to its reclamation.
    pub grace_period_last: Duration,
    /// Maximum grace period so far.
    pub grace_period_max: Duration,
    /// Sum of all grace periods, for an average or a Prometheus histogram.
    pub grace_period_sum: Duration,
    /// Reclaimed snapshots per grace period bucket (not cumulative): entry
    /// `i` counts grace periods up to [`GRACE_PERIOD_BUCKETS`]`[i]` seconds
    /// and above the previous bound. Longer ones are
    /// `snapshots_reclaimed - sum(grace_period_buckets)`.
    pub grace_period_buckets: [u64; GRACE_PERIOD_BUCKETS.len()],
}

/// Holder of the current snapshot of a `T`. See the module documentation.
pub struct Rcu<T> {
    cell: SnapshotCell<Snapshot<T>>,
    /// Generation of the current snapshot; held while publishing so that
    /// publishes are ordered by generation.
    writer: Mutex<u64>,
    counters: Arc<RcuCounters>,
}

impl<T> Rcu<T> {
    /// Creates an `Rcu` whose current snapshot contains `value` at
    /// generation 0.
    pub fn new(value: T) -> Self {
        let counters = Arc::new(RcuCounters::new());
        let first = Snapshot {
            value,
            generation: 0,
            retired_at: AtomicU64::new(0),
            counters: Arc::clone(&counters),
        };
        Self {
            cell: SnapshotCell::new(Arc::new(first)),
            writer: Mutex::new(0),
            counters,
        }
    }

    /// Returns the current snapshot without touching its reference count.
    /// Meant for short critical sections such as one routing decision.
    #[inline]
    pub fn load(&self) -> SnapshotGuard<T> {
        SnapshotGuard(self.cell.load())
    }

    /// Returns an owned reference to the current snapshot, for a request
    /// that keeps it across await points. This increments the reference
    /// count.
    pub fn load_full(&self) -> Arc<Snapshot<T>> {
        self.cell.load_full()
    }

    /// Returns a per-thread reader that caches the current snapshot. The
    /// cached snapshot stays alive until the reader's next load after a
    /// publish, which delays its reclamation.
    pub fn reader(&self) -> RcuReader<T> {
        RcuReader(self.cell.cache())
    }

    /// Returns the generation of the current snapshot.
    pub fn generation(&self) -> u64 {
        self.load().generation
    }

    /// Publishes `value` as the new current snapshot and returns its
    /// generation. The replaced snapshot is freed when its last reader
    /// drops it.
    pub fn publish(&self, value: T) -> u64 {
        let mut generation = lock(&self.writer);
        self.publish_locked(&mut generation, value)
    }

    /// Builds a new snapshot from the current one with `build` and
    /// publishes it. Concurrent `update` and `publish` calls wait for each
    /// other, so no update is lost. Readers do not take the writer lock.
    pub fn update<F>(&self, build: F) -> u64
    where
        F: FnOnce(&T) -> T,
    {
        let mut generation = lock(&self.writer);
        let current = self.cell.load_full();
        let value = build(&current.value);
        drop(current);
        self.publish_locked(&mut generation, value)
    }

    /// Builds a new snapshot from the current one with `build` and
    /// publishes it, like [`Rcu::update`], unless `build` returns `None`.
    /// Returns the new generation, or `None` if nothing was published.
    pub fn try_update<F>(&self, build: F) -> Option<u64>
    where
        F: FnOnce(&T) -> Option<T>,
    {
        let mut generation = lock(&self.writer);
        let current = self.cell.load_full();
        let value = build(&current.value);
        drop(current);
        Some(self.publish_locked(&mut generation, value?))
    }

    fn publish_locked(&self, generation: &mut u64, value: T) -> u64 {
        *generation += 1;
        let snapshot = Arc::new(Snapshot {
            value,
            generation: *generation,
            retired_at: AtomicU64::new(0),
            counters: Arc::clone(&self.counters),
        });
        let replaced = self.cell.swap(snapshot);
        // Stamped while this thread still holds a reference, so the stamp
        // happens before the last drop, wherever that runs.
        replaced
            .retired_at
            .store(self.counters.stamp(), Ordering::Release);
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        *generation
    }

    /// Returns the publish and reclaim counters.
    pub fn stats(&self) -> RcuStats {
        let counters = &self.counters;
        let nanos = |counter: &AtomicU64| Duration::from_nanos(counter.load(Ordering::Relaxed));
        let reclaimed = counters.reclaimed.load(Ordering::Acquire);
        RcuStats {
            generation: self.generation(),
            snapshots_published: counters.published.load(Ordering::Relaxed),
            snapshots_reclaimed: reclaimed,
            grace_period_last: nanos(&counters.grace_last_ns),
            grace_period_max: nanos(&counters.grace_max_ns),
            grace_period_sum: nanos(&counters.grace_sum_ns),
            grace_period_buckets: std::array::from_fn(|i| {
                counters.grace_buckets[i].load(Ordering::Relaxed)
            }),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Rcu<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rcu")
            .field("current", &*self.load())
            .finish_non_exhaustive()
    }
}

/// Per-thread cached reader of an [`Rcu`], from [`Rcu::reader`].
pub struct RcuReader<T>(CellCache<Snapshot<T>>);

impl<T> RcuReader<T> {
    /// Returns the current snapshot, refreshing the cache if a newer one was
    /// published. Clone the `Arc` to keep the snapshot beyond the next load.
    #[inline]
    pub fn load(&mut self) -> &Arc<Snapshot<T>> {
        self.0.load()
    }
}

/// Batching limits of a [`Publisher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Maximum time an update waits in the queue before it is published.
    pub grace_period: Duration,
    /// Queue length that triggers a publish without waiting for the grace
    /// period. Values below 1 count as 1.
    pub max_pending: usize,
}

/// Counters of a [`Publisher`], from [`Publisher::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Updates queued and not yet taken by the publishing thread.
    pub pending: usize,
    /// Updates submitted since the publisher started.
    pub submitted: u64,
    /// Updates in batches that were published.
    pub applied: u64,
    /// Snapshots published by this publisher.
    pub batches: u64,
    /// Batches dropped because `apply` panicked; the previous snapshot
    /// stayed current.
    pub failed_batches: u64,
    /// Updates in the failed batches.
    pub failed_updates: u64,
    /// Snapshots published by the idle function (see
    /// [`Publisher::spawn_with_idle`]).
    pub idle_publishes: u64,
    /// Calls of the idle function that panicked; the current snapshot
    /// stayed, and the idle function waits for the next batch.
    pub failed_idle_calls: u64,
}

struct QueueState<U> {
    pending: Vec<U>,
    /// When the oldest pending update was queued.
    oldest: Option<Instant>,
    submitted: u64,
    /// Updates published or dropped; a flush waits for this to reach its
    /// ticket.
    finished: u64,
    flush_target: u64,
    shutdown: bool,
    stats: PublisherStats,
}

struct Queue<U> {
    state: Mutex<QueueState<U>>,
    wake_worker: Condvar,
    wake_flushers: Condvar,
}

/// Background writer that batches updates of type `U` into new snapshots
/// of an [`Rcu<T>`].
///
/// Dropping the publisher publishes any pending updates and joins its
/// thread.
pub struct Publisher<T, U> {
    rcu: Arc<Rcu<T>>,
    queue: Arc<Queue<U>>,
    worker: Option<thread::JoinHandle<()>>,
}

impl<T, U> Publisher<T, U>
where
    T: Send + Sync + 'static,
    U: Send + 'static,
{
    /// Starts the publishing thread. Each batch becomes one snapshot,
    /// `apply(current, batch)`. If `apply` panics the batch is dropped,
    /// counted in [`PublisherStats::failed_batches`], and the current
    /// snapshot stays.
    ///
    /// # Errors
    ///
    /// Returns the error of `std::thread::Builder::spawn` if the thread
    /// cannot be started.
    pub fn spawn<F>(rcu: Arc<Rcu<T>>, config: PublisherConfig, apply: F) -> std::io::Result<Self>
    where
        F: FnMut(&T, &[U]) -> T + Send + 'static,
    {
        Self::start(rcu, config, apply, None::<fn(&T) -> Option<T>>)
    }

    /// Starts the publishing thread like [`Publisher::spawn`], with an
    /// idle function for deferred work such as compaction. Once the queue
    /// has stayed empty for a grace period after a batch, the thread calls
    /// `idle(current)`. If it returns a new snapshot, the thread publishes
    /// it and calls `idle` again after the next empty grace period. If it
    /// returns `None` or panics, `idle` waits for the next batch. A batch
    /// that arrives first is applied first.
    ///
    /// # Errors
    ///
    /// Returns the error of `std::thread::Builder::spawn` if the thread
    /// cannot be started.
    pub fn spawn_with_idle<F, I>(
        rcu: Arc<Rcu<T>>,
        config: PublisherConfig,
        apply: F,
        idle: I,
    ) -> std::io::Result<Self>
    where
        F: FnMut(&T, &[U]) -> T + Send + 'static,
        I: FnMut(&T) -> Option<T> + Send + 'static,
    {
        Self::start(rcu, config, apply, Some(idle))
    }

    fn start<F, I>(
        rcu: Arc<Rcu<T>>,
        config: PublisherConfig,
        apply: F,
        idle: Option<I>,
    ) -> std::io::Result<Self>
    where
        F: FnMut(&T, &[U]) -> T + Send + 'static,
        I: FnMut(&T) -> Option<T> + Send + 'static,
    {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                pending: Vec::new(),
                oldest: None,
                submitted: 0,
                finished: 0,
                flush_target: 0,
                shutdown: false,
                stats: PublisherStats::default(),
            }),
            wake_worker: Condvar::new(),
            wake_flushers: Condvar::new(),
        });
        let worker = {
            let rcu = Arc::clone(&rcu);
            let queue = Arc::clone(&queue);
            thread::Builder::new()
                .name("valkyrie-rcu-publisher".into())
                .spawn(move || run_worker(&rcu, &queue, config, apply, idle))?
        };
        Ok(Self {
            rcu,
            queue,
            worker: Some(worker),
        })
    }

    /// Returns the `Rcu` this publisher writes to.
    pub fn rcu(&self) -> &Arc<Rcu<T>> {
        &self.rcu
    }

    /// Queues one update.
    pub fn submit(&self, update: U) {
        self.submit_all(std::iter::once(update));
    }

    /// Queues updates in order; they may be split across snapshots.
    pub fn submit_all<I: IntoIterator<Item = U>>(&self, updates: I) {
        let mut state = lock(&self.queue.state);
        let was_empty = state.pending.is_empty();
        let before = state.pending.len();
        state.pending.extend(updates);
        let added = state.pending.len() - before;
        if added == 0 {
            return;
        }
        state.submitted += added as u64;
        state.stats.submitted += added as u64;
        if was_empty {
            state.oldest = Some(Instant::now());
        }
        drop(state);
        // The worker sleeps without a deadline while the queue is empty, and
        // must learn about a full queue before its deadline.
        self.queue.wake_worker.notify_one();
    }

    /// Publishes everything submitted before this call and waits until it
    /// is visible to readers (or dropped because `apply` panicked).
    pub fn flush(&self) {
        let mut state = lock(&self.queue.state);
        let ticket = state.submitted;
        if state.finished >= ticket {
            return;
        }
        state.flush_target = state.flush_target.max(ticket);
        self.queue.wake_worker.notify_one();
        while state.finished < ticket {
            state = self
                .queue
                .wake_flushers
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Returns the queue and publish counters.
    pub fn stats(&self) -> PublisherStats {
        let state = lock(&self.queue.state);
        PublisherStats {
            pending: state.pending.len(),
            ..state.stats
        }
    }
}

impl<T, U> Drop for Publisher<T, U> {
    fn drop(&mut self) {
        lock(&self.queue.state).shutdown = true;
        self.queue.wake_worker.notify_one();
        if let Some(worker) = self.worker.take() {
            // The worker catches panics from `apply`, so an error here means
            // a bug in this module; there is nothing left to clean up.
            let _ = worker.join();
        }
    }
}

impl<T, U> fmt::Debug for Publisher<T, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// Body of the publishing thread: waits until a batch is due, applies it
/// outside the queue lock and publishes the result. Between batches, runs
/// `idle` as [`Publisher::spawn_with_idle`] describes.
fn run_worker<T, U, F, I>(
    rcu: &Rcu<T>,
    queue: &Queue<U>,
    config: PublisherConfig,
    mut apply: F,
    mut idle: Option<I>,
) where
    F: FnMut(&T, &[U]) -> T,
    I: FnMut(&T) -> Option<T>,
{
    let max_pending = config.max_pending.max(1);
    let mut batch = Vec::new();
    // True from a published batch until `idle` returns `None` or panics.
    let mut idle_due = false;
    let mut state = lock(&queue.state);
    loop {
        if state.pending.is_empty() {
            if state.shutdown {
                return;
            }
            let Some(idle) = idle.as_mut().filter(|_| idle_due) else {
                state = queue
                    .wake_worker
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            let (next, timeout) = queue
                .wake_worker
                .wait_timeout(state, config.grace_period)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state = next;
            if !timeout.timed_out() || !state.pending.is_empty() || state.shutdown {
                continue;
            }
            drop(state);

            let outcome =
                catch_unwind(AssertUnwindSafe(|| rcu.try_update(|current| idle(current))));
            idle_due = matches!(outcome, Ok(Some(_)));

            state = lock(&queue.state);
            match outcome {
                Ok(Some(_)) => state.stats.idle_publishes += 1,
                Ok(None) => {}
                Err(_) => state.stats.failed_idle_calls += 1,
            }
            continue;
        }
        let waited = state
            .oldest
            .map_or(Duration::ZERO, |oldest| oldest.elapsed());
        let due = state.shutdown
            || state.pending.len() >= max_pending
            || state.flush_target > state.finished
            || waited >= config.grace_period;
        if !due {
            state = queue
                .wake_worker
                .wait_timeout(state, config.grace_period - waited)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
            continue;
        }
        std::mem::swap(&mut batch, &mut state.pending);
        state.oldest = None;
        drop(state);

        let outcome = catch_unwind(AssertUnwindSafe(|| {
            rcu.update(|current| apply(current, &batch));
        }));
        let count = batch.len() as u64;
        batch.clear();

        state = lock(&queue.state);
        state.finished += count;
        if outcome.is_ok() {
            state.stats.applied += count;
            state.stats.batches += 1;
            idle_due = true;
        } else {
            state.stats.failed_updates += count;
            state.stats.failed_batches += 1;
        }
        queue.wake_flushers.notify_all();
    }
}
