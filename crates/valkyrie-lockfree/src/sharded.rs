//! A FIT split into shards that clones share, so that a clone followed by a
//! batch of changes copies only the shards the batch touches (copy on
//! write), as an RCU snapshot update does.
//!
//! Every shard hashes with a clone of one hasher, so a lookup hashes the
//! key once. Bits 20 and up of that hash pick the shard. The shard's FIT
//! uses the other bits: the tag bits 0-15, the overflow filter bits 16-19
//! and the high bits for the home group. Next to the `Arc` of each shard,
//! the table keeps a copy of the fields a lookup reads (where the tags,
//! slots and records are, and the group count) in one flat array. So a
//! lookup goes from the hash to that array, which stays in the CPU caches,
//! and then straight to the shard's tags, without loading the `Arc` or the
//! shard's header first.

use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::fit::{hash_key, FitHead};
use crate::{Fit, FitCounters, FitTally};

/// The lowest hash bit that picks the shard. The FIT reads bits 0-19 for
/// the tag and the overflow filter.
const SHARD_SHIFT: u32 = 20;

/// Maximum shard count: the shard bits stay clear of the high bits that
/// pick a shard's home group.
pub const MAX_SHARDS: usize = 1 << 16;

/// Byte-string keys to `V` in a power-of-two number of FIT shards shared
/// between clones.
///
/// Reads go through `&self` from any number of threads. Changes go through
/// `&mut self` and copy a shard first when another clone still shares it.
pub struct ShardedFit<V> {
    /// `heads[i]` is `shards[i].head()`, refreshed after every change of
    /// `shards[i]`.
    heads: Box<[FitHead]>,
    shards: Box<[Arc<Fit<V>>]>,
    /// The hasher of every shard.
    hasher: RandomState,
    /// Shard count minus 1.
    mask: usize,
    len: usize,
}

// SAFETY: the heads point into the shards, which the table owns through
// `Arc`s. A `ShardedFit` can be sent or shared when `Arc<Fit<V>>` can,
// which needs `V: Send + Sync`, and the heads are only read through
// `&self`.
unsafe impl<V: Send + Sync> Send for ShardedFit<V> {}
// SAFETY: as for `Send`.
unsafe impl<V: Send + Sync> Sync for ShardedFit<V> {}

impl<V: Copy> ShardedFit<V> {
    /// Creates an empty table of `shard_count` shards, each a FIT with room
    /// for `shard_capacity` entries at `load_factor`, counting inserts and
    /// removes in `counters`. Lookups are counted only through
    /// [`ShardedFit::get_tallied`].
    ///
    /// # Panics
    ///
    /// Panics if `shard_count` is not a power of two up to [`MAX_SHARDS`],
    /// or for the reasons of [`Fit::with_capacity`].
    pub fn new(
        shard_count: usize,
        shard_capacity: usize,
        load_factor: f64,
        counters: &Arc<FitCounters>,
    ) -> Self {
        assert!(
            shard_count.is_power_of_two() && shard_count <= MAX_SHARDS,
            "invalid shard count {shard_count}: expected a power of two up to {MAX_SHARDS}"
        );
        let hasher = RandomState::default();
        let shards: Box<[Arc<Fit<V>>]> = (0..shard_count)
            .map(|_| {
                let mut fit =
                    Fit::with_capacity_and_hasher(shard_capacity, load_factor, hasher.clone());
                fit.set_counters(Arc::clone(counters));
                fit.set_counting(false);
                Arc::new(fit)
            })
            .collect();
        let heads = shards.iter().map(|shard| shard.head()).collect();
        Self {
            heads,
            shards,
            hasher,
            mask: shard_count - 1,
            len: 0,
        }
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns true if the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the shards, for sizes and statistics.
    pub fn shards(&self) -> &[Arc<Fit<V>>] {
        &self.shards
    }

    /// Looks up `key` without counting.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.find(key).0
    }

    /// Looks up `key` and counts the lookup in `tally`.
    #[inline]
    pub fn get_tallied(&self, key: &[u8], tally: &mut FitTally) -> Option<&V> {
        let (value, collisions) = self.find(key);
        tally.operations += 1;
        tally.collisions += collisions;
        value
    }

    /// Returns true if `key` is present. Not counted.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` under `key`, copying its shard first if a clone
    /// shares it. Returns the value it replaced.
    ///
    /// # Panics
    ///
    /// Panics for the reasons of [`Fit::insert`].
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        let index = self.shard_index(hash_key(&self.hasher, key));
        let shard = Arc::make_mut(&mut self.shards[index]);
        let replaced = shard.insert(key, value);
        self.heads[index] = shard.head();
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Removes `key`, copying its shard first if a clone shares it and the
    /// key is present. Returns the removed value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let index = self.shard_index(hash_key(&self.hasher, key));
        if !self.shards[index].contains_key(key) {
            return None;
        }
        let shard = Arc::make_mut(&mut self.shards[index]);
        let removed = shard.remove(key);
        self.heads[index] = shard.head();
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Releases spare arena capacity of every shard that no clone shares.
    pub fn shrink_to_fit(&mut self) {
        for (head, shard) in self.heads.iter_mut().zip(self.shards.iter_mut()) {
            if let Some(shard) = Arc::get_mut(shard) {
                shard.shrink_to_fit();
                *head = shard.head();
            }
        }
    }

    /// Returns every entry, shard by shard, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> + '_ {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    #[inline(always)]
    fn shard_index(&self, hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & self.mask
    }

    #[inline(always)]
    fn find(&self, key: &[u8]) -> (Option<&V>, u64) {
        let hash = hash_key(&self.hasher, key);
        let index = self.shard_index(hash);
        debug_assert!(index < self.heads.len());
        // SAFETY: `mask` is the head count minus 1, so `index` is in bounds.
        // The head was taken from `shards[index]` after its last change,
        // and `&self` keeps that shard alive and unchanged while the
        // returned reference lives.
        unsafe {
            let head = self.heads.get_unchecked(index);
            let (found, collisions) = head.find::<V>(key, hash);
            (found.map(|(_, word)| head.value::<V>(word)), collisions)
        }
    }
}

impl<V> Clone for ShardedFit<V> {
    /// Shares every shard with the clone: the heads stay valid because a
    /// shared shard is copied before either table changes it.
    fn clone(&self) -> Self {
        Self {
            heads: self.heads.clone(),
            shards: self.shards.clone(),
            hasher: self.hasher.clone(),
            mask: self.mask,
            len: self.len,
        }
    }
}

impl<V> std::fmt::Debug for ShardedFit<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedFit")
            .field("len", &self.len)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}
