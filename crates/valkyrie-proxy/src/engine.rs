//! The routing engine around the snapshot: per-thread snapshot pins for
//! requests, the publisher that batches key-table changes into new
//! snapshots, and the route decision cache.
//!
//! # Reading the snapshot
//!
//! A request calls [`pin`] once. Each thread keeps an `RcuReader` per
//! [`ProxyState`], whose load costs one atomic load while the snapshot is
//! unchanged, and a [`SnapshotPin`] of the snapshot it last saw. A request
//! clones that thread's pin: the clone increments a reference count that
//! only requests started on this thread touch, so threads do not contend on
//! the snapshot's shared count. The pin keeps the snapshot alive across
//! await points, so a request finishes on the snapshot it started with,
//! even after a reload.
//!
//! A thread lets go of an old snapshot at its first request after a
//! publish. A thread that serves no request after a publish keeps the old
//! snapshot alive until it does, which delays its reclamation (and the
//! grace period metric counts that delay).

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use tracing::{info, warn};
use valkyrie_config::Config;
use valkyrie_lockfree::{
    FitTally, Publisher, PublisherConfig, PublisherStats, Rcu, RcuReader, Snapshot as RcuSnapshot,
};
use valkyrie_router::cache::{CacheKey, CacheStats, RouteCache, TopKeys};
use valkyrie_router::{RequestInfo, RouteMatch};

use crate::keys::{BatchOutcome, KeyBatch, KeyChange, Replacement};
use crate::state::{ProxyState, Snapshot, SnapshotStats};

/// Lookups a thread counts before adding them to the shared FIT counters.
const TALLY_FLUSH: u64 = 64;

/// `ProxyState`s a thread keeps readers for; more exist only in tests that
/// run several routers in one process.
const MAX_READERS_PER_THREAD: usize = 8;

/// Keys the frequency sketch for cache warm-up tracks.
const TOP_KEYS: usize = 256;

/// One request in this many is recorded in the frequency sketch.
const SKETCH_SAMPLE: u64 = 16;

/// Source of `Engine::id`.
static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

/// A thread's hold on one snapshot. Requests share it through an `Arc`
/// whose count only that thread's requests touch, instead of the
/// snapshot's own count, which every thread would share.
struct ThreadPin {
    snapshot: Arc<RcuSnapshot<Snapshot>>,
}

/// A snapshot held by one or more requests that started on one thread.
pub struct SnapshotPin(Arc<ThreadPin>);

impl SnapshotPin {
    /// Returns the RCU generation of the pinned snapshot.
    pub fn rcu_generation(&self) -> u64 {
        self.0.snapshot.generation()
    }
}

impl Deref for SnapshotPin {
    type Target = Snapshot;

    #[inline]
    fn deref(&self) -> &Snapshot {
        self.0.snapshot.value()
    }
}

impl Clone for SnapshotPin {
    fn clone(&self) -> Self {
        SnapshotPin(Arc::clone(&self.0))
    }
}

/// A thread's reader of one `ProxyState`'s snapshots.
struct LocalReader {
    engine: u64,
    reader: RcuReader<Snapshot>,
    pinned: Arc<ThreadPin>,
    tally: FitTally,
    requests: u64,
}

impl LocalReader {
    fn flush_tally(&mut self) {
        self.pinned
            .snapshot
            .routes
            .fit_counters()
            .absorb(&mut self.tally);
    }
}

impl Drop for LocalReader {
    fn drop(&mut self) {
        self.flush_tally();
    }
}

thread_local! {
    static READERS: RefCell<Vec<LocalReader>> = const { RefCell::new(Vec::new()) };
}

/// Returns the current snapshot for a request, through this thread's
/// reader (see the module documentation).
pub fn pin(state: &ProxyState) -> SnapshotPin {
    let pinned = READERS.try_with(|readers| {
        let mut readers = readers.borrow_mut();
        let local = local_reader(&mut readers, state);
        let current = local.reader.load();
        if !Arc::ptr_eq(current, &local.pinned.snapshot) {
            let snapshot = Arc::clone(current);
            local.flush_tally();
            local.pinned = Arc::new(ThreadPin { snapshot });
        }
        local.requests += 1;
        SnapshotPin(Arc::clone(&local.pinned))
    });
    // Only while the thread is being torn down.
    pinned.unwrap_or_else(|_| {
        SnapshotPin(Arc::new(ThreadPin {
            snapshot: state.snapshot.load_full(),
        }))
    })
}

fn local_reader<'a>(readers: &'a mut Vec<LocalReader>, state: &ProxyState) -> &'a mut LocalReader {
    let id = state.engine.id;
    let position = match readers.iter().position(|local| local.engine == id) {
        Some(position) => position,
        None => {
            if readers.len() >= MAX_READERS_PER_THREAD {
                readers.remove(0);
            }
            let mut reader = state.snapshot.reader();
            let pinned = Arc::new(ThreadPin {
                snapshot: Arc::clone(reader.load()),
            });
            readers.push(LocalReader {
                engine: id,
                reader,
                pinned,
                tally: FitTally::default(),
                requests: 0,
            });
            readers.len() - 1
        }
    };
    &mut readers[position]
}

/// Adds a request's FIT lookups to this thread's tally, which goes to the
/// shared counters every 64 lookups.
pub fn count_lookups(state: &ProxyState, tally: FitTally) {
    let _ = READERS.try_with(|readers| {
        let mut readers = readers.borrow_mut();
        if let Some(local) = readers
            .iter_mut()
            .find(|local| local.engine == state.engine.id)
        {
            local.tally.operations += tally.operations;
            local.tally.collisions += tally.collisions;
            if local.tally.operations >= TALLY_FLUSH {
                local.flush_tally();
            }
        }
    });
}

/// Returns true for one request in `SKETCH_SAMPLE` on this thread.
fn sampled(state: &ProxyState) -> bool {
    READERS
        .try_with(|readers| {
            readers
                .borrow()
                .iter()
                .find(|local| local.engine == state.engine.id)
                .is_some_and(|local| local.requests % SKETCH_SAMPLE == 0)
        })
        .unwrap_or(false)
}

type KeyPublisher = Publisher<Snapshot, KeyBatch>;

/// Engine state that lives as long as the `ProxyState`: the key-table
/// publisher, the route decision cache and the key sketch.
pub struct Engine {
    id: u64,
    publisher: Mutex<Option<(PublisherConfig, Arc<KeyPublisher>)>>,
    cache: ArcSwapOption<RouteCache>,
    /// Hits and misses of caches replaced by reloads, so the totals only
    /// grow.
    retired_hits: AtomicU64,
    retired_misses: AtomicU64,
    top_keys: TopKeys,
}

impl Engine {
    /// Creates the engine of `rcu` and starts its publisher thread.
    pub fn new(rcu: &Arc<Rcu<Snapshot>>, stats: &Arc<SnapshotStats>) -> Engine {
        let engine = Engine {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            publisher: Mutex::new(None),
            cache: ArcSwapOption::empty(),
            retired_hits: AtomicU64::new(0),
            retired_misses: AtomicU64::new(0),
            top_keys: TopKeys::new(TOP_KEYS),
        };
        let config = rcu.load().config.clone();
        engine.configure(rcu, stats, &config);
        engine
    }

    /// Follows the config of a published snapshot: restarts the publisher
    /// when its batching settings changed, and replaces the cache when its
    /// size or time to live changed.
    pub(crate) fn configure(
        &self,
        rcu: &Arc<Rcu<Snapshot>>,
        stats: &Arc<SnapshotStats>,
        config: &Config,
    ) {
        let lockfree = &config.routing.lockfree;
        let expected = PublisherConfig {
            grace_period: lockfree.rcu_grace_period.0,
            max_pending: lockfree.rcu_max_pending_updates,
        };
        let mut publisher = lock(&self.publisher);
        if publisher.as_ref().map(|(settings, _)| *settings) != Some(expected) {
            let apply = {
                let stats = Arc::clone(stats);
                move |current: &Snapshot, batches: &[KeyBatch]| {
                    let next = crate::keys::apply_batches(current, batches);
                    current.retire(&stats);
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    next
                }
            };
            // Between batches, folds key-table deltas a few shards per
            // grace period, so that lookups stop probing them.
            let fold = {
                let stats = Arc::clone(stats);
                move |current: &Snapshot| {
                    let next = crate::keys::fold_deltas(current, crate::keys::IDLE_FOLD_ENTRIES)?;
                    current.retire(&stats);
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    Some(next)
                }
            };
            match Publisher::spawn_with_idle(Arc::clone(rcu), expected, apply, fold) {
                // The replaced publisher publishes what it has queued when
                // its last user drops it.
                Ok(started) => *publisher = Some((expected, Arc::new(started))),
                Err(error) => {
                    warn!(%error, "cannot start the key-table publisher thread; key-table changes are rejected until a reload starts it")
                }
            }
        }
        drop(publisher);
        self.configure_cache(config);
    }

    fn configure_cache(&self, config: &Config) {
        let routing = &config.routing;
        let expected = (routing.route_cache_size > 0)
            .then_some((routing.route_cache_size, routing.route_cache_ttl.0));
        let current = self.cache.load().as_ref().map(|cache| cache.settings());
        if current == expected {
            return;
        }
        let replaced = match expected {
            Some((size, ttl)) => {
                info!(size, ?ttl, "route decision cache on");
                self.cache.swap(Some(Arc::new(RouteCache::new(size, ttl))))
            }
            None => self.cache.swap(None),
        };
        if let Some(replaced) = replaced {
            let stats = replaced.stats();
            self.retired_hits.fetch_add(stats.hits, Ordering::Relaxed);
            self.retired_misses
                .fetch_add(stats.misses, Ordering::Relaxed);
        }
    }

    /// Routes a request on `snapshot`, through the decision cache when one
    /// is configured, and counts its key in the warm-up sketch for one
    /// request in 16.
    pub fn route<'a>(
        &self,
        state: &ProxyState,
        snapshot: &'a Snapshot,
        request: &RequestInfo<'a>,
        now: Instant,
        tally: &mut FitTally,
    ) -> Option<RouteMatch<'a>> {
        let cache = self.cache.load();
        let Some(cache) = cache.as_ref() else {
            return snapshot.routes.route_counted(request, tally).matched;
        };
        if sampled(state) {
            self.top_keys.record(CacheKey::of(request));
        }
        cache.route(&snapshot.routes, request, now, tally)
    }

    /// Queues key-table changes and waits until the snapshot that contains
    /// them is visible to new requests. Returns `None` when the publisher
    /// is not running or dropped the batch.
    pub async fn apply_keys(
        &self,
        state: &ProxyState,
        table: &str,
        changes: Vec<KeyChange>,
    ) -> Option<BatchOutcome> {
        self.submit(state, table, changes, None).await
    }

    /// Queues a whole new table for the loaded table of `replacement`'s
    /// origin and waits like [`Engine::apply_keys`]. The replacement is
    /// rejected when a reload replaced that table in between.
    pub async fn replace_keys(
        &self,
        state: &ProxyState,
        table: &str,
        replacement: Replacement,
    ) -> Option<BatchOutcome> {
        self.submit(state, table, Vec::new(), Some(replacement))
            .await
    }

    async fn submit(
        &self,
        state: &ProxyState,
        table: &str,
        changes: Vec<KeyChange>,
        replacement: Option<Replacement>,
    ) -> Option<BatchOutcome> {
        let publisher = lock(&self.publisher)
            .as_ref()
            .map(|(_, publisher)| Arc::clone(publisher))?;
        let (reply, outcome) = tokio::sync::oneshot::channel();
        publisher.submit(KeyBatch {
            table: table.to_string(),
            changes,
            replacement,
            reply: Mutex::new(Some(reply)),
        });
        drop(publisher);
        let outcome = outcome.await.ok()?;
        // The reply is sent just before the publish; wait for the swap. A
        // publish that never comes would mean `apply` panicked after
        // replying, so the wait is bounded.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while state.snapshot.load().generation < outcome.generation {
            if Instant::now() > deadline {
                warn!(
                    table,
                    generation = outcome.generation,
                    "key-table batch applied but its snapshot was not published within 5 s"
                );
                return None;
            }
            tokio::task::yield_now().await;
        }
        Some(outcome)
    }

    /// Returns the publisher's counters (zero when it is not running).
    pub fn publisher_stats(&self) -> PublisherStats {
        lock(&self.publisher)
            .as_ref()
            .map(|(_, publisher)| publisher.stats())
            .unwrap_or_default()
    }

    /// Returns the cache counters, or `None` when the cache is off. Hits
    /// and misses include those of caches that reloads replaced.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.load().as_ref().map(|cache| {
            let mut stats = cache.stats();
            stats.hits += self.retired_hits.load(Ordering::Relaxed);
            stats.misses += self.retired_misses.load(Ordering::Relaxed);
            stats
        })
    }

    /// Returns the hits and misses of every cache so far, the running one
    /// included.
    pub fn cache_totals(&self) -> (u64, u64) {
        let (hits, misses) = self.cache.load().as_ref().map_or((0, 0), |cache| {
            let stats = cache.stats();
            (stats.hits, stats.misses)
        });
        (
            hits + self.retired_hits.load(Ordering::Relaxed),
            misses + self.retired_misses.load(Ordering::Relaxed),
        )
    }

    /// Routes the most requested recent keys on `snapshot` and stores the
    /// decisions. Returns the keys tried and the decisions stored; `None`
    /// when the cache is off.
    pub fn warm_cache(&self, snapshot: &Snapshot, limit: usize) -> Option<(usize, usize)> {
        let cache = self.cache.load_full()?;
        let keys = self.top_keys.top(limit);
        let stored = cache.warm(
            &snapshot.routes,
            keys.iter().map(|(key, _)| key.borrow()),
            Instant::now(),
        );
        Some((keys.len(), stored))
    }

    /// Drops every cached decision.
    pub fn clear_cache(&self) {
        if let Some(cache) = self.cache.load().as_ref() {
            cache.clear();
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("cache", &self.cache_stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
