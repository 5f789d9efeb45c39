//! A FIT split into shards that clones share, so that a clone followed by a
//! batch of changes costs about the size of the batch, not the size of the
//! table. An RCU snapshot update is such a clone and batch.
//!
//! Every shard hashes with a clone of one hasher, so a lookup hashes the
//! key once. Bits 20 and up of that hash pick the shard. The shard's FIT
//! uses the other bits: the tag bits 0-15, the overflow filter bits 16-19
//! and the high bits for the home group.
//!
//! A shard is a base FIT and, while it has pending changes, a delta: a
//! small FIT of upserts and tombstones. A tombstone is a `None` value for
//! a key that the base contains and that was removed. A change to a shard
//! whose base another clone shares goes into the delta, which is copied on
//! write instead of the base. A change to a shard whose base no clone
//! shares goes straight into the base, after the delta is folded into it.
//! So a table that is built and never cloned has no deltas.
//!
//! Deltas are folded into their bases in bounded steps. Each change
//! written to a delta earns [`FOLD_CREDIT_PER_CHANGE`] entries of fold
//! work. Once the earned work reaches the mean shard size, the shard with
//! the largest delta is copied and its delta applied. With changes spread
//! evenly over the shards, a batch of `B` changes copies about `8 * B`
//! base entries plus the deltas it touches. The deltas then hold about
//! 1/16 of the table's entries in total (an estimate: 6% measured with
//! batches of 10,000 on 700,000 entries).
//!
//! Next to the `Arc`s of each shard, the table keeps a copy of the fields
//! that a lookup reads of the base and of the delta: where the tags, slots
//! and records are, and the group count. They sit in one flat array of
//! 64-byte entries. So a lookup goes from the hash to that array, which stays in
//! the CPU caches, and then straight to the FIT tags, without loading an
//! `Arc` or a FIT header. A table of one shard takes a branch past the
//! shard index, so that the CPU loads the head without waiting for the
//! hash, which matters when the whole table is in the caches. For a
//! shard without a delta, the lookup costs one more compare on the cache
//! line it reads anyway. For a shard with a delta, it also reads the
//! key's home tag group in the delta, and searches the delta before the
//! base only when that group has the key's tag or an overflow mark for it.

use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::fit::{hash_key, FitHead, MAX_KEY_LEN};
use crate::{Fit, FitCounters, FitTally};

/// The lowest hash bit that picks the shard. The FIT reads bits 0-19 for
/// the tag and the overflow filter.
const SHARD_SHIFT: u32 = 20;

/// Maximum shard count: the shard bits stay clear of the high bits that
/// pick a shard's home group.
pub const MAX_SHARDS: usize = 1 << 16;

/// Base entries that folding may copy per change written to a delta.
/// Higher values fold sooner, which keeps the deltas smaller (lookups
/// probe them first, and a batch copies each delta it touches) but copies
/// more base entries per batch. For a table of `N` entries changed in
/// batches of `B`, the copying per batch is lowest near
/// `sqrt(N / (2 * B))`, which is 6 for 700,000 entries and batches of
/// 10,000.
pub const FOLD_CREDIT_PER_CHANGE: usize = 8;

/// Entries a new delta has room for before its first growth.
const DELTA_CAPACITY: usize = 16;

/// A delta: upserts (`Some`) and tombstones (`None`) over a base shard.
type Delta<V> = Fit<Option<V>>;

/// The lookup fields of one shard, one cache line per shard.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct ShardHead {
    base: FitHead,
    /// [`FitHead::NONE`] while the shard has no delta.
    delta: FitHead,
}

/// Byte-string keys to `V` in a power-of-two number of FIT shards shared
/// between clones.
///
/// Reads go through `&self` from any number of threads. Changes go through
/// `&mut self`. A change to a shard that another clone shares is written
/// to the shard's delta (copied first if shared), and deltas are folded
/// into copies of their bases a few at a time. See the module
/// documentation.
pub struct ShardedFit<V> {
    /// `heads[i]` contains the heads of `shards[i]` and `deltas[i]`,
    /// refreshed after every change of either.
    heads: Box<[ShardHead]>,
    /// The base FIT of each shard.
    shards: Box<[Arc<Fit<V>>]>,
    /// The pending changes of each shard. A delta is never empty: the
    /// change that would leave it empty drops it.
    deltas: Box<[Option<Arc<Delta<V>>>]>,
    /// `delta_lens[i]` is the entry count of `deltas[i]` (0 without one),
    /// so that picking the largest delta reads one small array.
    delta_lens: Box<[u32]>,
    /// Entries in all deltas, upserts and tombstones.
    delta_entries: usize,
    /// Fold work earned by changes written to deltas and not yet spent,
    /// in base entries.
    fold_credit: usize,
    /// The hasher of every shard and delta.
    hasher: RandomState,
    /// Shard count minus 1.
    mask: usize,
    len: usize,
}

// SAFETY: the heads point into the shards and deltas, which the table owns
// through `Arc`s. A `ShardedFit` can be sent or shared when
// `Arc<Fit<V>>` and `Arc<Fit<Option<V>>>` can, which needs
// `V: Send + Sync`, and the heads are only read through `&self`.
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
        let heads = shards
            .iter()
            .map(|shard| ShardHead {
                base: shard.head(),
                delta: FitHead::NONE,
            })
            .collect();
        Self {
            heads,
            shards,
            deltas: (0..shard_count).map(|_| None).collect(),
            delta_lens: vec![0; shard_count].into_boxed_slice(),
            delta_entries: 0,
            fold_credit: 0,
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

    /// Returns the base FIT of every shard, for sizes and statistics. The
    /// bases lack the changes still pending in deltas, so their entry
    /// counts need not add up to [`ShardedFit::len`].
    pub fn shards(&self) -> &[Arc<Fit<V>>] {
        &self.shards
    }

    /// Returns the number of upserts and tombstones pending in deltas.
    pub fn delta_len(&self) -> usize {
        self.delta_entries
    }

    /// Returns the number of shards that have a delta.
    pub fn delta_count(&self) -> usize {
        self.deltas.iter().filter(|delta| delta.is_some()).count()
    }

    /// Returns the heap bytes of every base and delta FIT (see
    /// [`Fit::heap_bytes`]), counting shared ones in full.
    pub fn heap_bytes(&self) -> usize {
        let bases: usize = self.shards.iter().map(|shard| shard.heap_bytes()).sum();
        let deltas: usize = self
            .deltas
            .iter()
            .flatten()
            .map(|delta| delta.heap_bytes())
            .sum();
        bases + deltas
    }

    /// Looks up `key` without counting.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.find(key, hash_key(&self.hasher, key)).0
    }

    /// Looks up `key` and counts the lookup in `tally`.
    #[inline]
    pub fn get_tallied(&self, key: &[u8], tally: &mut FitTally) -> Option<&V> {
        let (value, collisions) = self.find(key, hash_key(&self.hasher, key));
        tally.operations += 1;
        tally.collisions += collisions;
        value
    }

    /// Hashes `key`, prefetches its home group in its shard's base (and
    /// delta, if the shard has one), and returns the hash for
    /// [`ShardedFit::get_hashed_tallied`]. See [`Fit::prefetch`].
    #[inline]
    pub fn prefetch(&self, key: &[u8]) -> u64 {
        let hash = hash_key(&self.hasher, key);
        let index = self.shard_index(hash);
        debug_assert!(index < self.heads.len());
        // SAFETY: `mask` is the head count minus 1, so `index` is in bounds,
        // and `&self` keeps the heads' tables alive and unchanged.
        unsafe {
            let head = self.heads.get_unchecked(index);
            head.base.prefetch_home(hash);
            if !head.delta.is_none() {
                head.delta.prefetch_home(hash);
            }
        }
        hash
    }

    /// Asks the CPU to start loading the record that a lookup of `key`
    /// with this hash will compare, in the shard's base and delta. See
    /// [`Fit::prefetch_record`].
    #[inline]
    pub fn prefetch_record(&self, key: &[u8], hash: u64) {
        let index = self.shard_index(hash);
        debug_assert!(index < self.heads.len());
        // SAFETY: as in `prefetch`.
        unsafe {
            let head = self.heads.get_unchecked(index);
            head.base.prefetch_record::<V>(key.len(), hash);
            if !head.delta.is_none() {
                head.delta.prefetch_record::<Option<V>>(key.len(), hash);
            }
        }
    }

    /// Like [`ShardedFit::get_tallied`], with the hash that
    /// [`ShardedFit::prefetch`] returned for `key` on this table. With any
    /// other hash the result is unspecified (a miss, or an entry that a
    /// delta replaced), though still memory-safe.
    #[inline]
    pub fn get_hashed_tallied(&self, key: &[u8], hash: u64, tally: &mut FitTally) -> Option<&V> {
        let (value, collisions) = self.find(key, hash);
        tally.operations += 1;
        tally.collisions += collisions;
        value
    }

    /// Returns true if `key` is present. Not counted.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` under `key` and returns the value it replaced. If a
    /// clone shares the key's shard, the change goes into the shard's
    /// delta, which is copied first if a clone shares it too, and the fold
    /// work it earns may fold the largest deltas. Counted as one FIT
    /// operation.
    ///
    /// # Panics
    ///
    /// Panics for the reasons of [`Fit::insert`].
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        // Checked before anything changes, so that the panic leaves the
        // heads in step with the shards.
        assert!(
            key.len() <= MAX_KEY_LEN,
            "FIT key of {} bytes is longer than the maximum of {MAX_KEY_LEN}",
            key.len()
        );
        let hash = hash_key(&self.hasher, key);
        let index = self.shard_index(hash);
        if self.unique_base(index).is_some() {
            let base = Arc::get_mut(&mut self.shards[index]).expect("the base is unique");
            let replaced = base.insert(key, value);
            self.refresh(index);
            if replaced.is_none() {
                self.len += 1;
            }
            return replaced;
        }
        // The base is searched below unless the delta has the key, so its
        // loads start now and overlap the work on the delta.
        // SAFETY: the head was refreshed after the last change of the base,
        // which `&mut self` keeps alive and which the delta work below does
        // not change.
        unsafe { self.heads[index].base.prefetch_home(hash) };
        let replaced = match self.delta_mut(index).insert(key, Some(value)) {
            // The delta's upsert or tombstone hid the base's entry.
            Some(change) => change,
            // SAFETY: as for the prefetch.
            None => unsafe { self.find_in_base(index, key, hash) },
        };
        self.refresh(index);
        if replaced.is_none() {
            self.len += 1;
        }
        self.earn_fold_credit();
        replaced
    }

    /// Removes `key` and returns its value. Changes nothing when the key is
    /// absent. If a clone shares the key's shard, the remove goes into the
    /// shard's delta as for [`ShardedFit::insert`]. Counted as one FIT
    /// operation when the key is present.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let hash = hash_key(&self.hasher, key);
        let index = self.shard_index(hash);
        let removed = *self.find(key, hash).0?;
        if let Some(base) = self.unique_base(index) {
            base.remove(key);
            self.refresh(index);
            self.len -= 1;
            return Some(removed);
        }
        // SAFETY: the head was refreshed after the last change of the base,
        // and `&self` keeps the base alive and unchanged during the call.
        let in_base = unsafe { self.find_in_base(index, key, hash).is_some() };
        let delta = self.delta_mut(index);
        if in_base {
            delta.insert(key, None);
        } else {
            // Only the delta has the key, so dropping its upsert is enough.
            delta.remove(key);
            if delta.is_empty() {
                self.deltas[index] = None;
            }
        }
        self.refresh(index);
        self.len -= 1;
        self.earn_fold_credit();
        Some(removed)
    }

    /// Folds every delta into its base, copying each base that a clone
    /// shares. Afterwards lookups probe the bases only, as in a table that
    /// was never cloned. Costs a copy of every shard with a delta.
    pub fn fold_all(&mut self) {
        for index in 0..self.shards.len() {
            self.fold(index);
        }
        self.fold_credit = 0;
    }

    /// Folds the largest deltas into their bases, copying each base that a
    /// clone shares, until about `max_entries` base entries were copied or
    /// no delta is left. Folds at least one delta if there is any. Returns
    /// the base and delta entries it went through, 0 if there was no delta.
    /// For folding a few shards at a time while no batch arrives, so that
    /// lookups stop probing deltas without one publish copying the table.
    pub fn fold_some(&mut self, max_entries: usize) -> usize {
        let mut folded = 0;
        while let Some(index) = self.largest_delta() {
            folded += self.shards[index].len() + self.delta_lens[index] as usize;
            self.fold(index);
            if folded >= max_entries {
                break;
            }
        }
        folded
    }

    /// Releases spare arena capacity of every base that no clone shares.
    /// Deltas keep theirs: a delta's spare room is at most about its own
    /// size, and the next change to a shared delta copies it anyway.
    pub fn shrink_to_fit(&mut self) {
        for index in 0..self.shards.len() {
            if let Some(shard) = Arc::get_mut(&mut self.shards[index]) {
                shard.shrink_to_fit();
                self.refresh(index);
            }
        }
    }

    /// Returns every entry, shard by shard, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> + '_ {
        self.shards
            .iter()
            .zip(self.deltas.iter())
            .flat_map(|(base, delta)| {
                let upserts = delta
                    .iter()
                    .flat_map(|delta| delta.iter())
                    .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)));
                let kept = base.iter().filter(move |(key, _)| {
                    !delta.as_ref().is_some_and(|delta| delta.contains_key(key))
                });
                upserts.chain(kept)
            })
    }

    #[inline(always)]
    fn shard_index(&self, hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & self.mask
    }

    /// Looks up `key` with its hash. Returns the value and the collisions
    /// counted on the way.
    #[inline(always)]
    fn find(&self, key: &[u8], hash: u64) -> (Option<&V>, u64) {
        // SAFETY (both calls): `mask` is the head count minus 1, so the
        // index is in bounds. The heads were taken from `shards[index]` and
        // `deltas[index]` after their last change, and `&self` keeps both
        // alive and unchanged while the returned reference lives.
        unsafe {
            if self.mask == 0 {
                return find_in_shard(self.heads.get_unchecked(0), key, hash);
            }
            let index = self.shard_index(hash);
            debug_assert!(index < self.heads.len());
            find_in_shard(self.heads.get_unchecked(index), key, hash)
        }
    }

    /// Returns the value of `key` in the base of shard `index`, ignoring
    /// the shard's delta.
    ///
    /// # Safety
    ///
    /// `heads[index].base` was taken after the last change of the base.
    #[inline(always)]
    unsafe fn find_in_base(&self, index: usize, key: &[u8], hash: u64) -> Option<V> {
        let head = &self.heads[index].base;
        // SAFETY: as the caller guarantees, and `&self` keeps the base
        // alive and unchanged during the call.
        unsafe {
            let (found, _) = head.find::<V>(key, hash);
            found.map(|(_, word)| *head.value::<V>(word))
        }
    }

    /// Returns the base of shard `index` for a direct change if no clone
    /// shares it, after folding the shard's delta into it.
    fn unique_base(&mut self, index: usize) -> Option<&mut Fit<V>> {
        // A plain load rules out the common shared case before the atomic
        // read-modify-write of `Arc::get_mut`. The table creates no `Weak`s.
        if Arc::strong_count(&self.shards[index]) != 1 {
            return None;
        }
        Arc::get_mut(&mut self.shards[index])?;
        if self.deltas[index].is_some() {
            self.fold(index);
        }
        Arc::get_mut(&mut self.shards[index])
    }

    /// Returns the delta of shard `index` for a change: a new one, or the
    /// current one, copied first if a clone shares it. The caller refreshes
    /// the head afterwards.
    fn delta_mut(&mut self, index: usize) -> &mut Delta<V> {
        let delta = self.deltas[index].get_or_insert_with(|| {
            let base = &self.shards[index];
            let mut delta = Fit::with_capacity_and_hasher(
                DELTA_CAPACITY,
                base.max_load_factor(),
                self.hasher.clone(),
            );
            delta.set_counters(Arc::clone(base.counters()));
            delta.set_counting(false);
            Arc::new(delta)
        });
        if Arc::get_mut(delta).is_none() {
            // Room for a quarter more entries before the copy has to grow
            // (and be copied again), because a batch usually adds a small
            // part of what a delta contains.
            let entries = delta.len() + delta.len() / 4 + 16;
            let words = delta.arena_words();
            *delta = Arc::new(delta.clone_with_room(entries, words / 4 + 16));
        }
        Arc::get_mut(delta).expect("the delta is unique")
    }

    /// Copies the base of shard `index` if a clone shares it, and applies
    /// and drops the shard's delta. Does nothing for a shard without a
    /// delta. Not counted in the FIT counters: the changes were counted
    /// when they went into the delta.
    fn fold(&mut self, index: usize) {
        let Some(delta) = self.deltas[index].take() else {
            return;
        };
        let shard = &mut self.shards[index];
        if Arc::get_mut(shard).is_none() {
            // Room for every upsert, so that applying them does not grow
            // (and copy again) the fresh copy.
            let entries = shard.len() + delta.len();
            *shard = Arc::new(shard.clone_with_room(entries, delta.arena_words()));
        }
        self.refresh(index);
        let base = Arc::get_mut(&mut self.shards[index]).expect("the base is unique");
        for (key, change) in delta.iter() {
            match change {
                Some(value) => {
                    base.insert_counted(key, *value, false);
                }
                None => {
                    let removed = base.remove_counted(key, false);
                    debug_assert!(removed.is_some(), "a tombstone names a base key");
                }
            }
        }
        self.refresh(index);
    }

    /// Adds the fold work one change earns, and folds the shards with the
    /// largest deltas while the earned work covers a shard of mean size.
    fn earn_fold_credit(&mut self) {
        self.fold_credit += FOLD_CREDIT_PER_CHANGE;
        let mean_shard = (self.len / self.shards.len()).max(1);
        while self.fold_credit >= mean_shard {
            let Some(index) = self.largest_delta() else {
                // Credit earned while no delta is pending is not saved up.
                self.fold_credit = 0;
                return;
            };
            let cost = self.shards[index].len() + self.delta_lens[index] as usize;
            self.fold(index);
            self.fold_credit = self.fold_credit.saturating_sub(cost.max(1));
        }
    }

    /// Returns the shard with the most delta entries, if any has a delta.
    fn largest_delta(&self) -> Option<usize> {
        let (index, &len) = self
            .delta_lens
            .iter()
            .enumerate()
            .max_by_key(|&(index, &len)| (len, std::cmp::Reverse(index)))?;
        (len > 0).then_some(index)
    }

    /// Takes the heads and delta size of shard `index` again after a
    /// change of its base or delta.
    fn refresh(&mut self, index: usize) {
        let delta_len = self.deltas[index].as_ref().map_or(0, |delta| delta.len());
        self.delta_entries = self.delta_entries - self.delta_lens[index] as usize + delta_len;
        self.delta_lens[index] =
            u32::try_from(delta_len).expect("delta entry count fits in 32 bits");
        self.heads[index] = ShardHead {
            base: self.shards[index].head(),
            delta: self.deltas[index]
                .as_ref()
                .map_or(FitHead::NONE, |delta| delta.head()),
        };
    }
}

/// Looks up `key` in one shard, its delta first when the delta may hold
/// it. Returns the value and the collisions counted on the way.
///
/// # Safety
///
/// The heads in `head` were taken after the last change of their tables,
/// which stay alive and unchanged while the returned reference lives.
#[inline(always)]
unsafe fn find_in_shard<'a, V>(head: &ShardHead, key: &[u8], hash: u64) -> (Option<&'a V>, u64) {
    // SAFETY: as the caller guarantees.
    unsafe {
        if !head.delta.is_none() && head.delta.may_contain(hash) {
            return find_with_delta(head, key, hash);
        }
        let (found, collisions) = head.base.find::<V>(key, hash);
        (
            found.map(|(_, word)| head.base.value::<V>(word)),
            collisions,
        )
    }
}

/// Looks up `key` in a shard with a delta. The delta's upsert or
/// tombstone decides, and the base is searched only when the delta lacks
/// the key. Kept out of line because few lookups get here.
///
/// # Safety
///
/// `head` was refreshed after the last change of its shard's base and
/// delta, which outlive `'a` unchanged, and `head.delta` is not
/// [`FitHead::NONE`].
#[inline(never)]
unsafe fn find_with_delta<'a, V>(head: &ShardHead, key: &[u8], hash: u64) -> (Option<&'a V>, u64) {
    // SAFETY: as the caller guarantees.
    unsafe {
        let (found, delta_collisions) = head.delta.find::<Option<V>>(key, hash);
        if let Some((_, word)) = found {
            let change = head.delta.value::<Option<V>>(word);
            return (change.as_ref(), delta_collisions);
        }
        let (found, collisions) = head.base.find::<V>(key, hash);
        (
            found.map(|(_, word)| head.base.value::<V>(word)),
            delta_collisions + collisions,
        )
    }
}

impl<V> Clone for ShardedFit<V> {
    /// Shares every base and delta with the clone: the heads stay valid
    /// because a shared base or delta is copied before either table
    /// changes it.
    fn clone(&self) -> Self {
        Self {
            heads: self.heads.clone(),
            shards: self.shards.clone(),
            deltas: self.deltas.clone(),
            delta_lens: self.delta_lens.clone(),
            delta_entries: self.delta_entries,
            fold_credit: self.fold_credit,
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
            .field("delta_entries", &self.delta_entries)
            .finish_non_exhaustive()
    }
}
