//! The route decision cache and the sketch of frequent request keys that
//! warms it.
//!
//! [`RouteCache`] maps (host as sent, path as sent, method) to the route a
//! [`RouteTable`] picked for it, or to "no route". Each entry records the id
//! of the table that made the decision, so a newly published table makes
//! every older entry a miss without a flush. Entries also expire after a
//! time to live. Decisions in which a header condition took part are not
//! cached, because the key does not contain headers.
//!
//! The cache is split into shards, each a mutex around a hash table with
//! CLOCK eviction. Hit and miss counts are kept per shard, under the lock
//! that the lookup takes anyway.
//!
//! [`TopKeys`] is a space-saving sketch: a bounded set of keys with
//! approximate counts, so that `POST /admin/cache/warmup` can route the
//! most requested keys ahead of time.

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use http::{HeaderMap, Method};
use valkyrie_lockfree::FitTally;

use crate::{RequestInfo, RouteMatch, RouteTable, ROUTE_BATCH};

/// Shards of a cache; a power of two.
const SHARDS: usize = 64;

/// Key of a cached decision, borrowed from a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey<'a> {
    /// The host as the request sent it, port included.
    pub host: Option<&'a str>,
    /// The path as the request sent it, before normalization.
    pub path: &'a str,
    pub method: &'a Method,
}

impl<'a> CacheKey<'a> {
    /// Takes the key of a request.
    pub fn of(request: &RequestInfo<'a>) -> CacheKey<'a> {
        CacheKey {
            host: request.host,
            path: request.path,
            method: request.method,
        }
    }
}

/// An owned [`CacheKey`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnedKey {
    pub host: Option<Box<str>>,
    pub path: Box<str>,
    pub method: Method,
}

impl OwnedKey {
    pub fn borrow(&self) -> CacheKey<'_> {
        CacheKey {
            host: self.host.as_deref(),
            path: &self.path,
            method: &self.method,
        }
    }

    fn of(key: CacheKey<'_>) -> OwnedKey {
        OwnedKey {
            host: key.host.map(Box::from),
            path: Box::from(key.path),
            method: key.method.clone(),
        }
    }
}

/// One cached decision.
struct Entry {
    hash: u64,
    key: OwnedKey,
    table_id: u64,
    /// Index of the route in the table, or `None` for "no route".
    route: Option<u32>,
    /// The normalized path, when it differs from the path as sent.
    normalized: Option<Box<str>>,
    expires: Instant,
    /// CLOCK bit: set by a hit, cleared as the hand passes.
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    /// Positions in `entries`.
    index: HashTable<u32>,
    entries: Vec<Entry>,
    hand: usize,
    hits: u64,
    misses: u64,
}

impl Shard {
    fn find(&self, hash: u64, key: CacheKey<'_>) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(hash, |&slot| entries[slot as usize].key.borrow() == key)
            .map(|&slot| slot as usize)
    }

    /// Stores `entry`, replacing the entry with the same key or, when the
    /// shard is full, the first entry the CLOCK hand finds unreferenced.
    fn store(&mut self, entry: Entry, capacity: usize) {
        if let Some(slot) = self.find(entry.hash, entry.key.borrow()) {
            self.entries[slot] = entry;
            return;
        }
        if self.entries.len() < capacity {
            let slot = self.entries.len() as u32;
            let hash = entry.hash;
            self.entries.push(entry);
            let entries = &self.entries;
            self.index
                .insert_unique(hash, slot, |&slot| entries[slot as usize].hash);
            return;
        }
        let victim = self.next_victim();
        let old_hash = self.entries[victim].hash;
        if let Ok(found) = self
            .index
            .find_entry(old_hash, |&slot| slot as usize == victim)
        {
            found.remove();
        }
        let hash = entry.hash;
        self.entries[victim] = entry;
        let entries = &self.entries;
        self.index
            .insert_unique(hash, victim as u32, |&slot| entries[slot as usize].hash);
    }

    fn next_victim(&mut self) -> usize {
        loop {
            let slot = self.hand % self.entries.len();
            self.hand = slot + 1;
            let entry = &mut self.entries[slot];
            if !entry.referenced {
                return slot;
            }
            entry.referenced = false;
        }
    }
}

/// Hit and miss counts of a [`RouteCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries stored, stale ones included.
    pub entries: usize,
    pub capacity: usize,
}

/// Bounded route decision cache. See the module documentation.
pub struct RouteCache {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    ttl: Duration,
    hasher: foldhash::fast::RandomState,
}

impl RouteCache {
    /// Creates a cache for about `capacity` entries that live for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> RouteCache {
        RouteCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            ttl,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Routes `request` through the cache: returns the cached decision when
    /// `table` made it and it has not expired, otherwise routes the request
    /// on `table` and stores the decision. `now` is the request's arrival time.
    pub fn route<'a>(
        &self,
        table: &'a RouteTable,
        request: &RequestInfo<'a>,
        now: Instant,
        tally: &mut FitTally,
    ) -> Option<RouteMatch<'a>> {
        let key = CacheKey::of(request);
        let hash = self.hash(key);
        let shard = self.shard(hash);
        {
            let mut shard = lock(shard);
            if let Some(slot) = shard.find(hash, key) {
                let entry = &mut shard.entries[slot];
                if entry.table_id == table.id() && entry.expires > now {
                    entry.referenced = true;
                    let route = entry.route;
                    let path = match &entry.normalized {
                        Some(normalized) => Cow::Owned(normalized.to_string()),
                        None => Cow::Borrowed(request.path),
                    };
                    shard.hits += 1;
                    return route.map(|index| table.matched(index as usize, path));
                }
            }
            shard.misses += 1;
        }

        let routed = table.route_counted(request, tally);
        if !routed.consulted_headers {
            let entry = self.entry(hash, key, table, routed.matched.as_ref(), now);
            lock(shard).store(entry, self.shard_capacity);
        }
        routed.matched
    }

    /// Routes each key with no headers and caches the decisions that do not
    /// depend on headers. Returns how many were stored. The keys are
    /// routed in groups through [`RouteTable::route_batch`], so a warmup of
    /// many keys on a large table overlaps their cache misses.
    pub fn warm<'k>(
        &self,
        table: &RouteTable,
        keys: impl IntoIterator<Item = CacheKey<'k>>,
        now: Instant,
    ) -> usize {
        let headers = HeaderMap::new();
        let mut stored = 0;
        let mut group: Vec<CacheKey<'k>> = Vec::with_capacity(ROUTE_BATCH);
        let mut requests = Vec::with_capacity(ROUTE_BATCH);
        let mut routed = Vec::with_capacity(ROUTE_BATCH);
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            group.clear();
            group.extend(keys.by_ref().take(ROUTE_BATCH));
            requests.clear();
            requests.extend(group.iter().map(|key| RequestInfo {
                host: key.host,
                path: key.path,
                query: None,
                method: key.method,
                headers: &headers,
            }));
            routed.clear();
            let mut tally = FitTally::default();
            table.route_batch(&requests, &mut tally, &mut routed);
            for (key, routed) in group.iter().zip(&routed) {
                if routed.consulted_headers {
                    continue;
                }
                let hash = self.hash(*key);
                let entry = self.entry(hash, *key, table, routed.matched.as_ref(), now);
                lock(self.shard(hash)).store(entry, self.shard_capacity);
                stored += 1;
            }
        }
        stored
    }

    /// Drops every entry; the counts stay.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.index.clear();
            shard.entries = Vec::new();
            shard.hand = 0;
        }
    }

    /// Sums the shards' counts.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            capacity: self.shard_capacity * self.shards.len(),
            ..CacheStats::default()
        };
        for shard in self.shards.iter() {
            let shard = lock(shard);
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.entries += shard.entries.len();
        }
        stats
    }

    /// Returns the capacity and time to live the cache was created with.
    pub fn settings(&self) -> (usize, Duration) {
        (self.shard_capacity * self.shards.len(), self.ttl)
    }

    fn entry(
        &self,
        hash: u64,
        key: CacheKey<'_>,
        table: &RouteTable,
        matched: Option<&RouteMatch<'_>>,
        now: Instant,
    ) -> Entry {
        let normalized = matched
            .filter(|matched| matched.path != key.path)
            .map(|matched| Box::from(matched.path.as_ref()));
        Entry {
            hash,
            key: OwnedKey::of(key),
            table_id: table.id(),
            route: matched.map(|matched| matched.route.index as u32),
            normalized,
            expires: now + self.ttl,
            referenced: false,
        }
    }

    fn hash(&self, key: CacheKey<'_>) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // The table inside uses the low bits; the shard takes the high ones.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache")
            .field("stats", &self.stats())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Locks a shard, ignoring poisoning: a panic while holding the lock leaves
/// at worst one entry half written, which only costs a miss.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Space-saving sketch of the most frequent request keys, bounded to
/// `capacity` keys. A key's count may overestimate its true count by at
/// most the count of the key it replaced.
pub struct TopKeys {
    capacity: usize,
    counts: Mutex<Vec<(OwnedKey, u64)>>,
}

impl TopKeys {
    /// Creates a sketch that tracks at most `capacity` keys.
    pub fn new(capacity: usize) -> TopKeys {
        TopKeys {
            capacity: capacity.max(1),
            counts: Mutex::new(Vec::with_capacity(capacity.max(1))),
        }
    }

    /// Counts one occurrence of `key`. When the sketch is full, the key with
    /// the smallest count makes room, and the new key takes over its count.
    pub fn record(&self, key: CacheKey<'_>) {
        let mut counts = lock(&self.counts);
        if let Some(entry) = counts.iter_mut().find(|(known, _)| known.borrow() == key) {
            entry.1 += 1;
            return;
        }
        if counts.len() < self.capacity {
            counts.push((OwnedKey::of(key), 1));
            return;
        }
        if let Some(smallest) = counts.iter_mut().min_by_key(|(_, count)| *count) {
            *smallest = (OwnedKey::of(key), smallest.1 + 1);
        }
    }

    /// Returns up to `limit` keys, most frequent first.
    pub fn top(&self, limit: usize) -> Vec<(OwnedKey, u64)> {
        let mut counts = lock(&self.counts).clone();
        counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        counts.truncate(limit);
        counts
    }

    /// Returns the number of keys tracked.
    pub fn len(&self) -> usize {
        lock(&self.counts).len()
    }

    /// Returns true if no key was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for TopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopKeys")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}
