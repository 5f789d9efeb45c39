//! FIT, the fingerprinted ID table: an open-addressing exact-match table
//! keyed by byte strings.
//!
//! Slots are arranged in groups of seven. The tags of a group (16-bit
//! fingerprints from the hash, or 0 for an empty slot) and the group's
//! overflow count (see below) fill one 16-byte tag group, four to a cache
//! line, in an array of their own. The key lengths and offsets into one
//! shared key arena fill a 64-byte metadata group in a second array. A lookup
//! compares the seven tags at once with SSE2 and touches metadata and key
//! bytes only for a tag match. With 16-bit tags a miss almost never leaves
//! the compact tag array (2.3 bytes per slot), which stays in cache far
//! longer than the rest of the table. A lookup also prefetches the metadata group while it compares
//! tags, so a hit waits for about two memory accesses in a row: metadata,
//! then key bytes. Values live in a third array indexed by slot, which the
//! CPU loads while it compares the key bytes.
//!
//! The group count is prime, so the table stays close to its configured load
//! factor. The home group is the high half of the 64x64-bit product of the
//! hash and the group count, and the tag comes from the low 16 bits of the
//! hash, which the home group does not depend on. An insert that finds its
//! home group full probes further groups by double hashing (a per-key step
//! taken from other hash bits) and adds one to the overflow count of every
//! group it passes. A lookup stops at the first group whose overflow count
//! is 0, so a miss usually reads one tag group even at high load. A remove
//! empties its slot and decrements the counts again, so the table needs no
//! tombstones.
//!
//! Keys are compared byte for byte. Host names are case-insensitive, so the
//! caller lowercases them (for example with [`<[u8]>::to_ascii_lowercase`] or
//! [`<[u8]>::make_ascii_lowercase`] on a stack buffer) before both insert and
//! lookup; the table never folds case itself.
//!
//! The table is built and mutated by one owner (`&mut self`) and read through
//! `&self` from any number of threads, which is how a snapshot published by
//! [`crate::rcu::Rcu`] uses it.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;

/// Lanes of a tag group: seven slots and the overflow count.
const LANES: usize = 8;
/// Slots per group: every lane but the last.
const GROUP_WIDTH: usize = LANES - 1;
/// Lane of a tag group that stores the overflow count.
const OVERFLOW_LANE: usize = LANES - 1;
/// Mask of the slot lanes in a tag match.
const SLOT_LANES: u32 = (1 << GROUP_WIDTH) - 1;
/// Tag of an empty slot.
const EMPTY: u16 = 0;
/// Smallest tag of a stored key.
const MIN_TAG: u16 = 1;
/// Maximum key length in bytes, set by the 16-bit length field of a slot.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Maximum configurable load factor. At least one slot in 16 stays empty so
/// that an insert finds a free slot within a few groups.
pub const MAX_LOAD_FACTOR: f64 = 0.9375;

/// Tags of seven slots and the overflow count: the number of stored keys
/// whose probe passed this group, saturating at `u16::MAX` (a saturated
/// count is never decremented, which only makes lookups probe further).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct TagGroup {
    tags: [u16; LANES],
}

/// Key lengths and key-arena offsets of the seven slots of a group.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct MetaGroup {
    key_offsets: [u32; GROUP_WIDTH],
    key_lens: [u16; GROUP_WIDTH],
}

impl MetaGroup {
    const EMPTY: MetaGroup = MetaGroup {
        key_offsets: [0; GROUP_WIDTH],
        key_lens: [0; GROUP_WIDTH],
    };
}

impl TagGroup {
    const EMPTY: TagGroup = TagGroup {
        tags: [EMPTY; LANES],
    };

    #[inline(always)]
    fn overflow(&self) -> u16 {
        self.tags[OVERFLOW_LANE]
    }

    fn add_overflow(&mut self) {
        self.tags[OVERFLOW_LANE] = self.tags[OVERFLOW_LANE].saturating_add(1);
    }

    fn remove_overflow(&mut self) {
        if self.tags[OVERFLOW_LANE] != u16::MAX {
            self.tags[OVERFLOW_LANE] -= 1;
        }
    }

    /// Returns a bit mask with bit `i` set where slot `i` has tag `tag`.
    #[inline(always)]
    fn match_slots(&self, tag: u16) -> u32 {
        self.match_tag(tag) & SLOT_LANES
    }

    /// Returns a bit mask with bit `i` set where `tags[i] == tag`, including
    /// the overflow lane: one SSE2 compare on x86-64.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn match_tag(&self, tag: u16) -> u32 {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16,
            _mm_set1_epi16, _mm_setzero_si128,
        };
        // SAFETY: `tags` is 16 initialized bytes inside `self`, and
        // `_mm_loadu_si128` has no alignment requirement. The intrinsics
        // need SSE2, which every x86-64 CPU has.
        unsafe {
            let tags = _mm_loadu_si128(self.tags.as_ptr().cast::<__m128i>());
            let equal = _mm_cmpeq_epi16(tags, _mm_set1_epi16(tag as i16));
            // Saturating pack turns each 0xffff lane into one 0xff byte.
            let packed = _mm_packs_epi16(equal, _mm_setzero_si128());
            _mm_movemask_epi8(packed) as u32
        }
    }

    /// Returns a bit mask with bit `i` set where `tags[i] == tag`.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    fn match_tag(&self, tag: u16) -> u32 {
        let mut mask = 0u32;
        for (i, &t) in self.tags.iter().enumerate() {
            mask |= u32::from(t == tag) << i;
        }
        mask
    }
}

/// Shared operation counters of a table.
///
/// Clones of a [`Fit`] share one `FitCounters`, so the counts carry over when
/// a snapshot is rebuilt from a clone of the previous one. A freshly built
/// table can adopt existing counters with [`Fit::set_counters`].
#[derive(Debug, Default)]
pub struct FitCounters {
    operations: AtomicU64,
    collisions: AtomicU64,
}

impl FitCounters {
    /// Creates counters starting at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Returns the number of lookups, inserts and removes counted so far.
    pub fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }

    /// Returns the number of probes past the home group plus tag matches
    /// whose key differed, counted so far.
    pub fn collisions(&self) -> u64 {
        self.collisions.load(Ordering::Relaxed)
    }

    /// Adds a caller-held tally to the counters and resets the tally.
    pub fn absorb(&self, tally: &mut FitTally) {
        if tally.operations != 0 {
            self.operations
                .fetch_add(tally.operations, Ordering::Relaxed);
        }
        if tally.collisions != 0 {
            self.collisions
                .fetch_add(tally.collisions, Ordering::Relaxed);
        }
        *tally = FitTally::default();
    }

    #[inline]
    fn record(&self, collisions: u64) {
        self.operations.fetch_add(1, Ordering::Relaxed);
        if collisions != 0 {
            self.collisions.fetch_add(collisions, Ordering::Relaxed);
        }
    }
}

/// Counts held by one thread, for [`Fit::get_tallied`]; add them to the
/// shared counters with [`FitCounters::absorb`] (for example once per
/// request or per batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FitTally {
    /// Lookups counted.
    pub operations: u64,
    /// Probes past the home group plus tag matches whose key differed.
    pub collisions: u64,
}

/// Point-in-time statistics of a table, from [`Fit::stats`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitStats {
    /// Lookups, inserts and removes counted by the shared counters.
    pub operations: u64,
    /// Probes past the home group plus tag matches whose key differed.
    pub collisions: u64,
    /// Live entries.
    pub len: usize,
    /// Slots allocated: 7 per group, with a prime number of groups.
    pub slots: usize,
    /// `len / slots`.
    pub load_factor: f64,
    /// Bytes in the key arena, including bytes of removed keys.
    pub key_arena_bytes: usize,
    /// Bytes of removed keys still in the key arena.
    pub dead_key_bytes: usize,
    /// Heap bytes owned by the table (tag groups, metadata groups, values,
    /// key arena).
    pub heap_bytes: usize,
}

/// Fingerprinted open-addressing table from byte-string keys to `V`.
///
/// See the module documentation for the layout. Keys are at most
/// [`MAX_KEY_LEN`] bytes and the key arena at most 4 GiB.
#[derive(Clone)]
pub struct Fit<V> {
    tags: Box<[TagGroup]>,
    /// Parallel to `tags`.
    meta: Box<[MetaGroup]>,
    values: Box<[Option<V>]>,
    keys: Vec<u8>,
    dead_key_bytes: usize,
    len: usize,
    /// Entries allowed before the next insert rebuilds.
    growth_limit: usize,
    max_load_factor: f64,
    hasher: RandomState,
    counters: Arc<FitCounters>,
    counting: bool,
}

impl<V> Fit<V> {
    /// Creates a table with room for `capacity` entries. An insert that would
    /// push the entries above `load_factor` of the slots rebuilds the table
    /// with at least twice the groups.
    ///
    /// # Panics
    ///
    /// Panics if `load_factor` is not in `(0, 0.9375]` ([`MAX_LOAD_FACTOR`]),
    /// or if the slot count overflows `usize`.
    pub fn with_capacity(capacity: usize, load_factor: f64) -> Self {
        assert!(
            load_factor > 0.0 && load_factor <= MAX_LOAD_FACTOR,
            "invalid FIT load factor {load_factor}: expected a value in (0, {MAX_LOAD_FACTOR}]"
        );
        let group_count = group_count_for(capacity, load_factor);
        Self {
            tags: vec![TagGroup::EMPTY; group_count].into_boxed_slice(),
            meta: vec![MetaGroup::EMPTY; group_count].into_boxed_slice(),
            values: empty_values(group_count * GROUP_WIDTH),
            keys: Vec::new(),
            dead_key_bytes: 0,
            len: 0,
            growth_limit: growth_limit(group_count, load_factor),
            max_load_factor: load_factor,
            hasher: RandomState::default(),
            counters: FitCounters::new(),
            counting: true,
        }
    }

    /// Returns the number of live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns true if the table contains no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the number of slots: 7 per group, with a prime number of
    /// groups.
    pub fn slots(&self) -> usize {
        self.tags.len() * GROUP_WIDTH
    }

    /// Returns the current load factor, `len / slots`.
    pub fn load_factor(&self) -> f64 {
        self.len as f64 / self.slots() as f64
    }

    /// Returns the load factor above which an insert rebuilds the table.
    pub fn max_load_factor(&self) -> f64 {
        self.max_load_factor
    }

    /// Turns counting of lookups in [`Fit::get`] on or off. Inserts and
    /// removes are always counted. Counting is on by default; each counted
    /// lookup does one relaxed atomic add on a cache line that every reader
    /// thread shares.
    pub fn set_counting(&mut self, counting: bool) {
        self.counting = counting;
    }

    /// Replaces the shared counters, so that a table built from scratch for
    /// a new snapshot keeps counting where the previous table left off.
    pub fn set_counters(&mut self, counters: Arc<FitCounters>) {
        self.counters = counters;
    }

    /// Returns the shared counters of this table.
    pub fn counters(&self) -> &Arc<FitCounters> {
        &self.counters
    }

    /// Returns the counters and the size of the table.
    pub fn stats(&self) -> FitStats {
        FitStats {
            operations: self.counters.operations(),
            collisions: self.counters.collisions(),
            len: self.len,
            slots: self.slots(),
            load_factor: self.load_factor(),
            key_arena_bytes: self.keys.len(),
            dead_key_bytes: self.dead_key_bytes,
            heap_bytes: self.heap_bytes(),
        }
    }

    /// Returns the heap bytes owned by the table: tag and metadata groups,
    /// value slots and the key arena's allocation. Memory owned by the values themselves (for
    /// example behind a `Box`) is not included.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val::<[TagGroup]>(&self.tags)
            + std::mem::size_of_val::<[MetaGroup]>(&self.meta)
            + std::mem::size_of_val::<[Option<V>]>(&self.values)
            + self.keys.capacity()
    }

    /// Looks up `key`, counting the lookup in the shared counters unless
    /// counting is turned off.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        let (slot, collisions) = self.find(key, self.hash(key));
        if self.counting {
            self.counters.record(collisions);
        }
        slot.and_then(|slot| self.values[slot].as_ref())
    }

    /// Looks up `key` and counts the lookup in `tally` instead of the shared
    /// counters, which avoids the atomic add on a shared cache line.
    #[inline]
    pub fn get_tallied(&self, key: &[u8], tally: &mut FitTally) -> Option<&V> {
        let (slot, collisions) = self.find(key, self.hash(key));
        tally.operations += 1;
        tally.collisions += collisions;
        slot.and_then(|slot| self.values[slot].as_ref())
    }

    /// Returns true if `key` is present. Not counted.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.find(key, self.hash(key)).0.is_some()
    }

    /// Looks up `key` for modification. Counted like an insert.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (slot, collisions) = self.find(key, self.hash(key));
        self.counters.record(collisions);
        slot.and_then(|slot| self.values[slot].as_mut())
    }

    /// Inserts `value` under `key`, returning the value it replaced. May
    /// rebuild the table into a larger one, which also drops the bytes of
    /// removed keys from the arena.
    ///
    /// # Panics
    ///
    /// Panics if `key` is longer than [`MAX_KEY_LEN`] or the key arena would
    /// exceed 4 GiB.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        assert!(
            key.len() <= MAX_KEY_LEN,
            "FIT key of {} bytes is longer than the maximum of {MAX_KEY_LEN}",
            key.len()
        );
        let hash = self.hash(key);
        let (found, collisions) = self.find(key, hash);
        self.counters.record(collisions);
        if let Some(slot) = found {
            return self.values[slot].replace(value);
        }
        if self.len >= self.growth_limit {
            self.grow();
        }
        let offset = u32::try_from(self.keys.len())
            .ok()
            .filter(|offset| offset.checked_add(key.len() as u32).is_some())
            .expect("FIT key arena is limited to 4 GiB");
        self.keys.extend_from_slice(key);
        let slot = self.place(hash, key.len() as u16, offset);
        self.values[slot] = Some(value);
        self.len += 1;
        None
    }

    /// Removes `key`, returning its value. The key's bytes stay in the arena
    /// as dead bytes until the next rebuild. A remove that leaves more dead
    /// than live key bytes (and over 4 KiB of them) rebuilds the table at its
    /// current size.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let hash = self.hash(key);
        let (found, collisions) = self.find(key, hash);
        self.counters.record(collisions);
        let slot = found?;
        let group_count = self.tags.len();
        let mut group_index = home_group(hash, group_count);
        let step = probe_step(hash, group_count);
        while group_index != slot / GROUP_WIDTH {
            self.tags[group_index].remove_overflow();
            group_index = next_group(group_index, step, group_count);
        }
        let index = slot % GROUP_WIDTH;
        self.tags[group_index].tags[index] = EMPTY;
        self.dead_key_bytes += usize::from(self.meta[group_index].key_lens[index]);
        self.len -= 1;
        let value = self.values[slot].take();
        if self.dead_key_bytes > 4096 && self.dead_key_bytes > self.keys.len() / 2 {
            self.rebuild(self.tags.len());
        }
        value
    }

    /// Releases spare capacity of the key arena, which grows by doubling
    /// while keys are inserted. Call it once a snapshot's table is built.
    pub fn shrink_to_fit(&mut self) {
        self.keys.shrink_to_fit();
    }

    /// Removes every entry, keeping the allocated slots.
    pub fn clear(&mut self) {
        self.tags.fill(TagGroup::EMPTY);
        self.values.iter_mut().for_each(|value| *value = None);
        self.keys.clear();
        self.dead_key_bytes = 0;
        self.len = 0;
    }

    /// Returns an iterator over `(key, value)` pairs in slot order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            table: self,
            slot: 0,
        }
    }

    #[inline(always)]
    fn hash(&self, key: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key);
        hasher.finish()
    }

    /// Returns the slot of `key`, if present, and the collisions counted on
    /// the way.
    #[inline(always)]
    fn find(&self, key: &[u8], hash: u64) -> (Option<usize>, u64) {
        if key.len() > MAX_KEY_LEN {
            return (None, 0);
        }
        let tag = tag_of(hash);
        let group_count = self.tags.len();
        let mut group_index = home_group(hash, group_count);
        let mut collisions = 0u64;
        let mut step = 0;
        for _ in 0..group_count {
            prefetch(&self.meta[group_index]);
            let group = &self.tags[group_index];
            let mut matches = group.match_slots(tag);
            while matches != 0 {
                let i = matches.trailing_zeros() as usize;
                matches &= matches - 1;
                let meta = &self.meta[group_index];
                if usize::from(meta.key_lens[i]) == key.len() {
                    let offset = meta.key_offsets[i] as usize;
                    if &self.keys[offset..offset + key.len()] == key {
                        return (Some(group_index * GROUP_WIDTH + i), collisions);
                    }
                }
                collisions += 1;
            }
            if group.overflow() == 0 {
                break;
            }
            if step == 0 {
                step = probe_step(hash, group_count);
            }
            group_index = next_group(group_index, step, group_count);
            collisions += 1;
        }
        (None, collisions)
    }

    /// Writes the tag, length and offset of a new key into the first free
    /// slot on its probe sequence, counts the overflow in every full group it
    /// passes and returns the slot. The caller has made sure a free slot
    /// exists.
    fn place(&mut self, hash: u64, key_len: u16, offset: u32) -> usize {
        let group_count = self.tags.len();
        let mut group_index = home_group(hash, group_count);
        let step = probe_step(hash, group_count);
        loop {
            let group = &mut self.tags[group_index];
            let free = group.match_slots(EMPTY);
            if free != 0 {
                let i = free.trailing_zeros() as usize;
                group.tags[i] = tag_of(hash);
                let meta = &mut self.meta[group_index];
                meta.key_lens[i] = key_len;
                meta.key_offsets[i] = offset;
                return group_index * GROUP_WIDTH + i;
            }
            group.add_overflow();
            group_index = next_group(group_index, step, group_count);
        }
    }

    /// Rebuilds with at least twice the groups.
    fn grow(&mut self) {
        let group_count = group_count_for(self.len + 1, self.max_load_factor)
            .max(next_prime(self.tags.len() * 2));
        self.rebuild(group_count);
    }

    /// Rehashes every live entry into `group_count` fresh groups and a
    /// compacted key arena.
    fn rebuild(&mut self, group_count: usize) {
        let old_tags = std::mem::replace(
            &mut self.tags,
            vec![TagGroup::EMPTY; group_count].into_boxed_slice(),
        );
        let old_meta = std::mem::replace(
            &mut self.meta,
            vec![MetaGroup::EMPTY; group_count].into_boxed_slice(),
        );
        let mut old_values =
            std::mem::replace(&mut self.values, empty_values(group_count * GROUP_WIDTH));
        let live_key_bytes = self.keys.len() - self.dead_key_bytes;
        let old_keys = std::mem::replace(&mut self.keys, Vec::with_capacity(live_key_bytes));
        self.dead_key_bytes = 0;
        self.growth_limit = growth_limit(group_count, self.max_load_factor);
        for (group_index, (group, meta)) in old_tags.iter().zip(old_meta.iter()).enumerate() {
            for i in 0..GROUP_WIDTH {
                if group.tags[i] == EMPTY {
                    continue;
                }
                let start = meta.key_offsets[i] as usize;
                let key = &old_keys[start..start + usize::from(meta.key_lens[i])];
                let offset = self.keys.len() as u32;
                self.keys.extend_from_slice(key);
                let slot = self.place(self.hash(key), meta.key_lens[i], offset);
                self.values[slot] = old_values[group_index * GROUP_WIDTH + i].take();
            }
        }
    }
}

impl<V> Default for Fit<V> {
    /// Creates an empty table with room for 8 entries at load factor 0.875.
    fn default() -> Self {
        Self::with_capacity(0, 0.875)
    }
}

impl<V> fmt::Debug for Fit<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fit")
            .field("len", &self.len)
            .field("slots", &self.slots())
            .field("max_load_factor", &self.max_load_factor)
            .field("counting", &self.counting)
            .finish_non_exhaustive()
    }
}

impl<'a, V> IntoIterator for &'a Fit<V> {
    type Item = (&'a [u8], &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<K: AsRef<[u8]>, V> FromIterator<(K, V)> for Fit<V> {
    /// Builds a table at load factor 0.875 sized for the iterator's entries.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let entries = entries.into_iter();
        let mut table = Fit::with_capacity(entries.size_hint().0, 0.875);
        for (key, value) in entries {
            table.insert(key.as_ref(), value);
        }
        table
    }
}

/// Iterator over the entries of a [`Fit`], from [`Fit::iter`].
pub struct Iter<'a, V> {
    table: &'a Fit<V>,
    slot: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a [u8], &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let table = self.table;
        while self.slot < table.values.len() {
            let slot = self.slot;
            self.slot += 1;
            if let Some(value) = &table.values[slot] {
                let meta = &table.meta[slot / GROUP_WIDTH];
                let start = meta.key_offsets[slot % GROUP_WIDTH] as usize;
                let len = usize::from(meta.key_lens[slot % GROUP_WIDTH]);
                return Some((&table.keys[start..start + len], value));
            }
        }
        None
    }
}

/// Returns the tag of a hash: its low 16 bits, with 0 (the empty marker)
/// moved to 1.
#[inline(always)]
fn tag_of(hash: u64) -> u16 {
    (hash as u16).max(MIN_TAG)
}

/// Asks the CPU to start loading the cache line of `item`.
#[inline(always)]
fn prefetch<T>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint. It never faults and does not change
    // memory, and SSE is part of the x86-64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((item as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

/// Maps a hash onto `0..group_count` by multiplication, which uses the high
/// bits of the hash and needs no division.
#[inline(always)]
fn home_group(hash: u64, group_count: usize) -> usize {
    ((u128::from(hash) * group_count as u128) >> 64) as usize
}

/// Returns the distance between probed groups, in `1..group_count` (1 for a
/// single group), taken from other hash bits than the home group. Because
/// the group count is prime, every step visits all groups before repeating
/// (double hashing), and keys from one home group spread out instead of
/// piling onto the following groups.
#[inline(always)]
fn probe_step(hash: u64, group_count: usize) -> usize {
    let remixed = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    1 + home_group(remixed, group_count.saturating_sub(1))
}

#[inline(always)]
fn next_group(group_index: usize, step: usize, group_count: usize) -> usize {
    let next = group_index + step;
    if next >= group_count {
        next - group_count
    } else {
        next
    }
}

/// Returns the group count with room for `capacity` entries at `load_factor`:
/// the smallest prime at least that large, or 1 if one group is enough.
fn group_count_for(capacity: usize, load_factor: f64) -> usize {
    let slots = (capacity as f64 / load_factor).ceil();
    assert!(
        slots < (u32::MAX / 2) as f64,
        "FIT capacity {capacity} overflows the slot count"
    );
    match (slots as usize).div_ceil(GROUP_WIDTH) {
        0 | 1 => 1,
        groups => next_prime(groups),
    }
}

/// Returns the smallest prime `>= n` (2 for `n <= 2`), by trial division.
/// Called once per rebuild, for `n` below 2^31.
fn next_prime(n: usize) -> usize {
    let is_prime = |candidate: usize| {
        candidate >= 2
            && (2..)
                .take_while(|divisor| divisor * divisor <= candidate)
                .all(|divisor| !candidate.is_multiple_of(divisor))
    };
    (n.max(2)..)
        .find(|&candidate| is_prime(candidate))
        .expect("a prime exists above n")
}

fn growth_limit(group_count: usize, load_factor: f64) -> usize {
    let slots = group_count * GROUP_WIDTH;
    ((slots as f64 * load_factor) as usize).min(slots - 1)
}

fn empty_values<V>(slots: usize) -> Box<[Option<V>]> {
    std::iter::repeat_with(|| None).take(slots).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_prime_values() {
        let primes: Vec<usize> = [0, 1, 2, 3, 4, 8, 14, 90, 97, 98].map(next_prime).to_vec();
        assert_eq!(primes, vec![2, 2, 2, 3, 5, 11, 17, 97, 97, 101]);
    }

    #[test]
    fn probe_step_in_range() {
        for group_count in [1usize, 2, 3, 97] {
            for hash in [0u64, 1, u64::MAX, 0x1234_5678_9abc_def0] {
                let step = probe_step(hash, group_count);
                assert!(step >= 1, "step {step} for {group_count} groups");
                assert!(
                    step < group_count.max(2),
                    "step {step} for {group_count} groups"
                );
            }
        }
    }

    #[test]
    fn group_sizes() {
        assert_eq!(std::mem::size_of::<TagGroup>(), 16);
        assert_eq!(std::mem::size_of::<MetaGroup>(), 64);
        assert_eq!(std::mem::align_of::<MetaGroup>(), 64);
    }

    #[test]
    fn tag_avoids_empty_marker() {
        assert_eq!(tag_of(0), 1);
        assert_eq!(tag_of(1), 1);
        assert_eq!(tag_of(0xffff_0000_0000_abcd), 0xabcd);
    }

    #[test]
    fn growth_doubles_groups() {
        let mut table = Fit::with_capacity(8, 0.875);
        assert_eq!(
            table.slots(),
            14,
            "8 entries at 0.875 need 10 slots, so 2 groups"
        );
        for i in 0..1000u32 {
            table.insert(format!("key-{i}").as_bytes(), i);
            assert!(
                table.load_factor() <= 0.875,
                "load factor after {i} inserts"
            );
        }
        assert_eq!(table.len(), 1000);
        // 2 groups, then primes at least twice as many: 5, 11, 23, 47, 97, 197.
        assert_eq!(table.slots(), 197 * GROUP_WIDTH);
        for i in 0..1000u32 {
            assert_eq!(table.get(format!("key-{i}").as_bytes()), Some(&i));
        }
    }

    #[test]
    fn capacity_avoids_rebuild() {
        let mut table = Fit::with_capacity(1000, 0.5);
        let slots = table.slots();
        assert!(slots as f64 * 0.5 >= 1000.0);
        assert!(
            slots < 2100,
            "{slots} slots: rounded up to a nearby prime group count only"
        );
        for i in 0..1000u32 {
            table.insert(&i.to_le_bytes(), i);
        }
        assert_eq!(table.slots(), slots);
    }

    #[test]
    fn churn_keeps_size_and_arena() {
        let mut table = Fit::with_capacity(64, 0.875);
        let slots = table.slots();
        for round in 0..50u32 {
            for i in 0..40u32 {
                table.insert(format!("r{round}-{i}").as_bytes(), i);
            }
            for i in 0..40u32 {
                assert_eq!(table.remove(format!("r{round}-{i}").as_bytes()), Some(i));
            }
        }
        assert!(table.is_empty());
        assert_eq!(
            table.slots(),
            slots,
            "churn at constant size must not grow the table"
        );
        assert!(
            table.stats().key_arena_bytes < 8192,
            "dead key bytes are reclaimed"
        );
        for group in table.tags.iter() {
            assert_eq!(group.overflow(), 0, "removes undo every overflow count");
        }
    }

    #[test]
    fn counters_count_operations_and_collisions() {
        // One group of seven slots at load factor 0.875 takes six keys, so no
        // lookup probes past the home group.
        let mut table = Fit::with_capacity(6, 0.875);
        assert_eq!(table.slots(), 7);
        for i in 0..6u8 {
            table.insert(&[i], i);
        }
        let before = table.stats();
        assert_eq!(before.operations, 6);
        assert_eq!(
            before.collisions, 0,
            "a single group has no probe past home"
        );
        table.get(&[3]);
        table.get(b"missing");
        assert_eq!(table.stats().operations, 8);

        table.set_counting(false);
        table.get(&[3]);
        assert_eq!(table.stats().operations, 8, "uncounted lookup");

        let mut tally = FitTally::default();
        table.get_tallied(&[1], &mut tally);
        table.get_tallied(&[2], &mut tally);
        assert_eq!(tally.operations, 2);
        table.counters().absorb(&mut tally);
        assert_eq!(tally, FitTally::default());
        assert_eq!(table.stats().operations, 10);
    }

    #[test]
    fn overflow_counts_displaced_keys() {
        // Two groups of seven slots store 13 keys. A group with more than
        // seven home keys overflows into the other one. Each overflowed key
        // must report a collision and raise its home group's overflow count.
        let mut table = Fit::with_capacity(13, 0.9375);
        assert_eq!(table.slots(), 14, "two groups");
        for i in 0..13u8 {
            table.insert(&[i], i);
        }
        let mut homes = [0usize; 2];
        let mut displaced = [0u32; 2];
        for i in 0..13u8 {
            let hash = table.hash(&[i]);
            let home = home_group(hash, 2);
            homes[home] += 1;
            let (slot, collisions) = table.find(&[i], hash);
            let slot = slot.expect("inserted key is found");
            if slot / GROUP_WIDTH != home {
                displaced[home] += 1;
                assert!(collisions >= 1, "key {i} outside its home group");
            }
        }
        for group in 0..2 {
            let expected = homes[group].saturating_sub(GROUP_WIDTH) as u32;
            assert_eq!(
                displaced[group], expected,
                "keys displaced from group {group}"
            );
            assert_eq!(
                u32::from(table.tags[group].overflow()),
                expected,
                "overflow count of group {group}"
            );
        }
    }

    #[test]
    fn clones_share_counters() {
        let mut table = Fit::with_capacity(4, 0.5);
        table.insert(b"a", 1);
        let copy = table.clone();
        copy.get(b"a");
        assert_eq!(table.stats().operations, 2);
        let mut fresh: Fit<i32> = Fit::with_capacity(4, 0.5);
        fresh.set_counters(Arc::clone(table.counters()));
        fresh.get(b"a");
        assert_eq!(table.stats().operations, 3);
    }

    #[test]
    fn empty_and_long_keys() {
        let mut table = Fit::default();
        assert_eq!(table.insert(b"", 1), None);
        assert_eq!(table.insert(b"", 2), Some(1));
        let long = vec![b'x'; MAX_KEY_LEN];
        table.insert(&long, 3);
        assert_eq!(table.get(b""), Some(&2));
        assert_eq!(table.get(&long), Some(&3));
        let too_long = vec![b'x'; MAX_KEY_LEN + 1];
        assert_eq!(table.get(&too_long), None);
    }

    #[test]
    #[should_panic(expected = "invalid FIT load factor")]
    fn load_factor_one_panics() {
        let _ = Fit::<u8>::with_capacity(8, 1.0);
    }

    #[test]
    fn memory_per_entry_is_small() {
        let mut table = Fit::with_capacity(100_000, 0.875);
        for i in 0..100_000u32 {
            table.insert(format!("tenant-{i:08}.example").as_bytes(), i);
        }
        table.shrink_to_fit();
        assert_eq!(table.stats().key_arena_bytes, 100_000 * 23);
        let per_entry = table.heap_bytes() as f64 / table.len() as f64;
        assert!(per_entry < 100.0, "{per_entry} heap bytes per 23-byte key");
    }
}
