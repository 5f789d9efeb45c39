//! FIT, the fingerprinted ID table: an open-addressing exact-match table
//! keyed by byte strings.
//!
//! Slots are arranged in groups of seven. The tags of a group (16-bit
//! fingerprints from the hash, or 0 for an empty slot) and its overflow
//! filter (see below) fill one 16-byte tag group, four to a cache line, in
//! an array of their own. Each slot also has 8 bytes in a second array: its
//! key length, the position of its record and the length of the record's
//! tail. A record contains the value followed by the key bytes, in one
//! arena of 8-byte words. A record inserted with
//! [`Fit::insert_with_tail`] continues with caller bytes from the next word
//! boundary, which a lookup returns with the value, so that data every hit
//! needs arrives with the record. A lookup
//! compares the seven tags at once with SSE2 while the CPU prefetches the
//! group's slots, and reads a record only for a tag match with the right
//! key length. The record yields both the key to compare and the value. So
//! a hit waits for about two memory accesses in a row (tags and slots, then
//! the record), where a hash map that stores a pointer to a separately
//! allocated key waits for three. A miss almost never leaves the compact
//! tag array (2.3 bytes per slot), which stays in the CPU caches far longer
//! than the rest of the table.
//!
//! The group count is prime, so the table stays close to its configured load
//! factor. The home group is the high half of the 64x64-bit product of the
//! hash and the group count, and the tag comes from the low 16 bits of the
//! hash, which the home group does not depend on. An insert that finds its
//! home group full probes further groups by double hashing (a per-key step
//! taken from other hash bits). Every full group it passes counts one more
//! overflow and sets the key's bit in the group's 16-bit overflow filter. A lookup
//! stops at the first group where its own filter bit is clear, so a miss
//! usually reads one group even at high load. A remove empties its slot and
//! decrements the counts again (clearing a filter whose count reaches 0),
//! so the table needs no tombstones. The removed record stays in the arena
//! as dead space until a rebuild compacts the arena.
//!
//! Values are `Copy` with an alignment of at most 8 bytes, so records can be
//! copied as plain words, which makes cloning a table two `memcpy` calls.
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
use std::marker::PhantomData;
use std::mem::{align_of, size_of, MaybeUninit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;

/// Lanes of the tag array of a group: seven slots and the overflow filter.
const LANES: usize = 8;
/// Slots per group: every lane but the last.
const GROUP_WIDTH: usize = LANES - 1;
/// Lane of the tag array that stores the overflow filter.
const OVERFLOW_LANE: usize = LANES - 1;
/// Mask of the slot lanes in a tag match.
const SLOT_LANES: u32 = (1 << GROUP_WIDTH) - 1;
/// Tag of an empty slot.
const EMPTY: u16 = 0;
/// Smallest tag of a stored key.
const MIN_TAG: u16 = 1;
/// Bytes per arena word; records start on a word boundary.
const WORD: usize = size_of::<u64>();
/// Maximum key length in bytes, set by the 16-bit length field of a slot.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Maximum configurable load factor. At least one slot in 16 stays empty so
/// that an insert finds a free slot within a few groups.
pub const MAX_LOAD_FACTOR: f64 = 0.9375;

/// Tags of seven slots and the overflow filter of a group.
///
/// The overflow filter, in the last lane, has bit `overflow_bit(hash)` set
/// for every stored key whose probe passed this group, so a lookup whose
/// bit is clear stops here without probing further. `Fit::overflow` counts
/// those keys. The filter is cleared when the count drops to 0, and until
/// then bits of removed keys stay set, which only makes some lookups probe
/// further.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct TagGroup {
    tags: [u16; LANES],
}

/// Location of the key and value of an occupied slot.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Slot {
    /// Arena word where the record starts.
    record: u32,
    key_len: u16,
    /// Bytes of the record's tail (see [`Fit::insert_with_tail`]), 0 for
    /// most records.
    tail_len: u16,
}

/// The fields a lookup reads, copied out of a [`Fit`]: where its tag
/// groups, slots and records are, and the group count. A
/// [`crate::ShardedFit`] keeps those of each shard's base and delta in a
/// flat array, so that a lookup reaches the tags without first loading a
/// FIT header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FitHead {
    tags: *const TagGroup,
    slots: *const Slot,
    arena: *const MaybeUninit<u64>,
    group_count: usize,
}

impl FitHead {
    /// The placeholder head of an absent table, which
    /// [`FitHead::is_none`] detects. It must not be searched.
    pub(crate) const NONE: FitHead = FitHead {
        tags: std::ptr::null(),
        slots: std::ptr::null(),
        arena: std::ptr::null(),
        group_count: 0,
    };

    /// Returns true for [`FitHead::NONE`]. A table always has at least one
    /// group, so no head taken from a table has a group count of 0.
    #[inline(always)]
    pub(crate) fn is_none(&self) -> bool {
        self.group_count == 0
    }

    /// Returns the slot of `key`, if present, with the arena word of its
    /// record, and the collisions counted on the way. The home group is
    /// checked here, and the rare probe past it is a separate function,
    /// which keeps this one small enough to inline.
    ///
    /// # Safety
    ///
    /// `self` was taken with [`Fit::head`] from a `Fit<V>` that is alive and
    /// has not been changed since.
    #[inline(always)]
    pub(crate) unsafe fn find<V>(&self, key: &[u8], hash: u64) -> (Option<(usize, u32)>, u64) {
        let group_index = home_group(hash, self.group_count);
        let mut collisions = 0;
        // SAFETY (this block and the calls below): `home_group` returns a
        // group below `group_count`, and the caller keeps the table alive
        // and unchanged.
        unsafe {
            if let Some(found) = self.find_in_group::<V>(key, hash, group_index, &mut collisions) {
                return (Some(found), collisions);
            }
            if !(*self.tags.add(group_index)).may_overflow(hash) {
                return (None, collisions);
            }
            self.find_past_home::<V>(key, hash, group_index, collisions)
        }
    }

    /// Returns false if `key` with this hash is surely absent: its home
    /// group has no slot with its tag and no overflow for it. One tag
    /// group load, without touching slots or records.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`].
    #[inline(always)]
    pub(crate) unsafe fn may_contain(&self, hash: u64) -> bool {
        // SAFETY: `home_group` returns a group below `group_count`, and the
        // caller keeps the table alive and unchanged.
        let group = unsafe { &*self.tags.add(home_group(hash, self.group_count)) };
        group.match_slots(tag_of(hash)) != 0 || group.may_overflow(hash)
    }

    /// Asks the CPU to start loading the home tag group and slots of
    /// `hash`, so that a later [`FitHead::find`] of it waits less.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`].
    #[inline(always)]
    pub(crate) unsafe fn prefetch_home(&self, hash: u64) {
        let group_index = home_group(hash, self.group_count);
        // SAFETY: `home_group` returns a group below `group_count`, whose
        // `GROUP_WIDTH` slots start at `group_index * GROUP_WIDTH`. They
        // span one or two cache lines.
        unsafe {
            prefetch(&*self.tags.add(group_index));
            prefetch(&*self.slots.add(group_index * GROUP_WIDTH));
            prefetch(&*self.slots.add(group_index * GROUP_WIDTH + GROUP_WIDTH - 1));
        }
    }

    /// Asks the CPU to start loading the record of the first slot in the
    /// home group of `hash` whose tag matches and whose key is `key_len`
    /// bytes long: the record a later [`FitHead::find`] most likely
    /// compares. Reads the tag group and slots, so it pays off once
    /// [`FitHead::prefetch_home`] has brought them in.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`].
    #[inline(always)]
    pub(crate) unsafe fn prefetch_record<V>(&self, key_len: usize, hash: u64) {
        let group_index = home_group(hash, self.group_count);
        // SAFETY: `home_group` returns a group below `group_count`, whose
        // slots start at `group_index * GROUP_WIDTH`, and an occupied slot
        // names a record of `size_of::<V>() + key_len` bytes in the arena.
        unsafe {
            let slots = self.slots.add(group_index * GROUP_WIDTH);
            let mut matches = (*self.tags.add(group_index)).match_slots(tag_of(hash));
            while matches != 0 {
                let slot = *slots.add(matches.trailing_zeros() as usize);
                matches &= matches - 1;
                if usize::from(slot.key_len) == key_len {
                    let record = self.arena.add(slot.record as usize).cast::<u8>();
                    prefetch(&*record);
                    prefetch(&*record.add(size_of::<V>() + key_len).sub(1));
                    // The tail starts at the word after the key and may
                    // span several lines.
                    let tail_start = record_words::<V>(key_len) * WORD;
                    let tail_end = tail_start + usize::from(slot.tail_len);
                    for offset in (tail_start..tail_end).step_by(64) {
                        prefetch(&*record.add(offset));
                    }
                    if tail_end > tail_start {
                        prefetch(&*record.add(tail_end - 1));
                    }
                    return;
                }
            }
        }
    }

    /// Continues `find` in the groups after the home group.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`], and `home` is below the group count.
    #[cold]
    #[inline(never)]
    unsafe fn find_past_home<V>(
        &self,
        key: &[u8],
        hash: u64,
        home: usize,
        mut collisions: u64,
    ) -> (Option<(usize, u32)>, u64) {
        let group_count = self.group_count;
        let step = probe_step(hash, group_count);
        let mut group_index = home;
        // The home group was the first of `group_count` probes.
        for _ in 1..group_count {
            group_index = next_group(group_index, step, group_count);
            collisions += 1;
            // SAFETY: `next_group` stays below `group_count`.
            unsafe {
                if let Some(found) =
                    self.find_in_group::<V>(key, hash, group_index, &mut collisions)
                {
                    return (Some(found), collisions);
                }
                if !(*self.tags.add(group_index)).may_overflow(hash) {
                    break;
                }
            }
        }
        (None, collisions)
    }

    /// Looks for `key` in one group, counting tag matches whose key
    /// differed.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`], and `group_index` is below the group count.
    #[inline(always)]
    unsafe fn find_in_group<V>(
        &self,
        key: &[u8],
        hash: u64,
        group_index: usize,
        collisions: &mut u64,
    ) -> Option<(usize, u32)> {
        let first_slot = group_index * GROUP_WIDTH;
        // SAFETY: the group has `GROUP_WIDTH` slots from `first_slot` in
        // the slot array, and an occupied slot (one with a tag) names a
        // record of `slot.key_len` key bytes in the arena.
        unsafe {
            let slots = self.slots.add(first_slot);
            // The seven slots span one or two cache lines.
            prefetch(&*slots);
            prefetch(&*slots.add(GROUP_WIDTH - 1));
            let mut matches = (*self.tags.add(group_index)).match_slots(tag_of(hash));
            while matches != 0 {
                let lane = matches.trailing_zeros() as usize;
                matches &= matches - 1;
                let slot = *slots.add(lane);
                // A key longer than `MAX_KEY_LEN` never has a matching length.
                if usize::from(slot.key_len) == key.len()
                    && keys_equal(self.record_key::<V>(slot.record, key.len()), key)
                {
                    return Some((first_slot + lane, slot.record));
                }
                *collisions += 1;
            }
        }
        None
    }

    /// Returns the key bytes of the record at `word`.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`], and `word` is the record of an occupied
    /// slot whose key is `key_len` bytes long.
    #[inline(always)]
    unsafe fn record_key<'a, V>(&self, word: u32, key_len: usize) -> &'a [u8] {
        let start = word as usize * WORD + size_of::<V>();
        // SAFETY: `append_record` wrote the key's `key_len` bytes there.
        unsafe { std::slice::from_raw_parts(self.arena.cast::<u8>().add(start), key_len) }
    }

    /// Returns the tail of the record at `word`, which occupies `slot`.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`], and `slot` is an occupied slot whose
    /// record starts at `word`. The returned slice must not outlive the
    /// table.
    #[inline(always)]
    pub(crate) unsafe fn tail<'a, V>(&self, slot: usize, word: u32) -> &'a [u8] {
        // SAFETY: `append_record` wrote `tail_len` bytes from the word
        // after the value and the key.
        unsafe {
            let slot = *self.slots.add(slot);
            let start = word as usize + record_words::<V>(usize::from(slot.key_len));
            std::slice::from_raw_parts(
                self.arena.add(start).cast::<u8>(),
                usize::from(slot.tail_len),
            )
        }
    }

    /// Returns the value of the record at `word`.
    ///
    /// # Safety
    ///
    /// As for [`FitHead::find`], and `word` is the record of an occupied
    /// slot. The returned reference must not outlive the table.
    #[inline(always)]
    pub(crate) unsafe fn value<'a, V>(&self, word: u32) -> &'a V {
        // SAFETY: `append_record` wrote a `V` at the start of the record,
        // and a word boundary is aligned for `V`.
        unsafe { &*self.arena.add(word as usize).cast::<V>() }
    }
}

impl TagGroup {
    const EMPTY: TagGroup = TagGroup {
        tags: [EMPTY; LANES],
    };

    /// Returns true if a key with this hash may have been placed past this
    /// group.
    #[inline(always)]
    fn may_overflow(&self, hash: u64) -> bool {
        self.tags[OVERFLOW_LANE] & overflow_bit(hash) != 0
    }

    fn add_overflow(&mut self, hash: u64) {
        self.tags[OVERFLOW_LANE] |= overflow_bit(hash);
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
    /// Bytes of records (value and key bytes, padded to 8) in the arena,
    /// including removed records.
    pub arena_bytes: usize,
    /// Bytes of removed records still in the arena.
    pub dead_arena_bytes: usize,
    /// Heap bytes owned by the table (tag groups, slots, overflow counts
    /// and the arena's allocation).
    pub heap_bytes: usize,
}

/// Fingerprinted open-addressing table from byte-string keys to `V`.
///
/// See the module documentation for the layout. Keys are at most
/// [`MAX_KEY_LEN`] bytes and the record arena at most 32 GiB. A value type
/// aligned to more than 8 bytes fails to compile.
pub struct Fit<V> {
    tags: Box<[TagGroup]>,
    /// `GROUP_WIDTH` slots per tag group.
    slots: Box<[Slot]>,
    /// Per group: stored keys whose probe passed it, saturating at
    /// `u16::MAX` (a saturated count is never decremented).
    overflow: Box<[u16]>,
    /// Records: the value at the start, the key bytes right after it. Words
    /// are `MaybeUninit` because a value's padding bytes may be
    /// uninitialized.
    arena: Vec<MaybeUninit<u64>>,
    /// Words of removed records in `arena`.
    dead_words: usize,
    len: usize,
    /// Entries allowed before the next insert rebuilds.
    growth_limit: usize,
    max_load_factor: f64,
    hasher: RandomState,
    counters: Arc<FitCounters>,
    counting: bool,
    /// The arena stores `V`s, so the table is `Send` and `Sync` only when
    /// `V` is.
    values: PhantomData<V>,
}

impl<V: Copy> Fit<V> {
    /// Creates a table with room for `capacity` entries. An insert that would
    /// push the entries above `load_factor` of the slots rebuilds the table
    /// with at least twice the groups.
    ///
    /// # Panics
    ///
    /// Panics if `load_factor` is not in `(0, 0.9375]` ([`MAX_LOAD_FACTOR`]),
    /// or if the slot count overflows `usize`.
    pub fn with_capacity(capacity: usize, load_factor: f64) -> Self {
        Self::with_capacity_and_hasher(capacity, load_factor, RandomState::default())
    }

    /// Creates a table like [`Fit::with_capacity`] that hashes keys with
    /// `hasher`, so that tables built with clones of one hasher agree on
    /// every key's hash.
    pub(crate) fn with_capacity_and_hasher(
        capacity: usize,
        load_factor: f64,
        hasher: RandomState,
    ) -> Self {
        const {
            assert!(
                align_of::<V>() <= WORD,
                "FIT values must be aligned to at most 8 bytes"
            )
        };
        assert!(
            load_factor > 0.0 && load_factor <= MAX_LOAD_FACTOR,
            "invalid FIT load factor {load_factor}: expected a value in (0, {MAX_LOAD_FACTOR}]"
        );
        let group_count = group_count_for(capacity, load_factor);
        Self {
            tags: vec![TagGroup::EMPTY; group_count].into_boxed_slice(),
            slots: vec![Slot::default(); group_count * GROUP_WIDTH].into_boxed_slice(),
            overflow: vec![0; group_count].into_boxed_slice(),
            arena: Vec::new(),
            dead_words: 0,
            len: 0,
            growth_limit: growth_limit(group_count, load_factor),
            max_load_factor: load_factor,
            hasher,
            counters: FitCounters::new(),
            counting: true,
            values: PhantomData,
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
            arena_bytes: self.arena.len() * WORD,
            dead_arena_bytes: self.dead_words * WORD,
            heap_bytes: self.heap_bytes(),
        }
    }

    /// Returns the heap bytes owned by the table: tag groups, slots,
    /// overflow counts and the arena's allocation.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val::<[TagGroup]>(&self.tags)
            + std::mem::size_of_val::<[Slot]>(&self.slots)
            + std::mem::size_of_val::<[u16]>(&self.overflow)
            + self.arena.capacity() * WORD
    }

    /// Looks up `key`, counting the lookup in the shared counters unless
    /// counting is turned off.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        let (record, collisions) = self.find(key, self.hash(key));
        if self.counting {
            self.counters.record(collisions);
        }
        record.map(|(_, word)| self.value(word))
    }

    /// Looks up `key` and counts the lookup in `tally` instead of the shared
    /// counters, which avoids the atomic add on a shared cache line.
    #[inline]
    pub fn get_tallied(&self, key: &[u8], tally: &mut FitTally) -> Option<&V> {
        let (record, collisions) = self.find(key, self.hash(key));
        tally.operations += 1;
        tally.collisions += collisions;
        record.map(|(_, word)| self.value(word))
    }

    /// Hashes `key`, prefetches its home tag group and slots, and returns
    /// the hash for [`Fit::get_hashed_tallied`]. A
    /// caller with many keys to look up calls this for all of them first,
    /// so that their cache misses overlap instead of following each other.
    #[inline]
    pub fn prefetch(&self, key: &[u8]) -> u64 {
        let hash = self.hash(key);
        // SAFETY: the head is taken from `self` and used while `&self`
        // keeps the table unchanged.
        unsafe { self.head().prefetch_home(hash) };
        hash
    }

    /// Asks the CPU to start loading the record that a lookup of `key`
    /// with this hash (from [`Fit::prefetch`]) will compare. A caller with
    /// a group of keys calls [`Fit::prefetch`] for all of them, then this,
    /// then [`Fit::get_hashed_tallied`], so that each of the two dependent
    /// loads of a lookup overlaps across the group.
    #[inline]
    pub fn prefetch_record(&self, key: &[u8], hash: u64) {
        // SAFETY: the head is taken from `self` and used while `&self`
        // keeps the table unchanged.
        unsafe { self.head().prefetch_record::<V>(key.len(), hash) };
    }

    /// Like [`Fit::get_tallied`], with the hash that [`Fit::prefetch`]
    /// returned for `key` on this table. Another hash can only make the
    /// lookup miss: the key bytes are still compared.
    #[inline]
    pub fn get_hashed_tallied(&self, key: &[u8], hash: u64, tally: &mut FitTally) -> Option<&V> {
        let (record, collisions) = self.find(key, hash);
        tally.operations += 1;
        tally.collisions += collisions;
        record.map(|(_, word)| self.value(word))
    }

    /// Looks up `key` like [`Fit::get_tallied`] and returns its value with
    /// the tail stored by [`Fit::insert_with_tail`] (empty for a record
    /// inserted without one). The tail starts on an 8-byte boundary.
    #[inline]
    pub fn get_with_tail_tallied(&self, key: &[u8], tally: &mut FitTally) -> Option<(&V, &[u8])> {
        self.get_hashed_with_tail_tallied(key, self.hash(key), tally)
    }

    /// Like [`Fit::get_with_tail_tallied`], with the hash that
    /// [`Fit::prefetch`] returned for `key` on this table.
    #[inline]
    pub fn get_hashed_with_tail_tallied(
        &self,
        key: &[u8],
        hash: u64,
        tally: &mut FitTally,
    ) -> Option<(&V, &[u8])> {
        let (record, collisions) = self.find(key, hash);
        tally.operations += 1;
        tally.collisions += collisions;
        let (slot, word) = record?;
        // SAFETY: `find` returned an occupied slot of this table, whose
        // record and tail `append_record` wrote, and `&self` keeps the
        // arena unchanged while the returned references live.
        unsafe {
            let head = self.head();
            Some((head.value::<V>(word), head.tail::<V>(slot, word)))
        }
    }

    /// Returns true if `key` is present. Not counted.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.find(key, self.hash(key)).0.is_some()
    }

    /// Looks up `key` for modification. Counted like an insert.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (record, collisions) = self.find(key, self.hash(key));
        self.counters.record(collisions);
        record.map(|(_, word)| self.value_mut(word))
    }

    /// Inserts `value` under `key`, returning the value it replaced. May
    /// rebuild the table into a larger one, which also drops removed
    /// records from the arena.
    ///
    /// # Panics
    ///
    /// Panics if `key` is longer than [`MAX_KEY_LEN`] or the arena would
    /// exceed 32 GiB.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        self.insert_counted(key, value, true)
    }

    /// Inserts like [`Fit::insert`], counting the insert in the shared
    /// counters only if `count` is true.
    pub(crate) fn insert_counted(&mut self, key: &[u8], value: V, count: bool) -> Option<V> {
        assert!(
            key.len() <= MAX_KEY_LEN,
            "FIT key of {} bytes is longer than the maximum of {MAX_KEY_LEN}",
            key.len()
        );
        let hash = self.hash(key);
        let (found, collisions) = self.find(key, hash);
        if count {
            self.counters.record(collisions);
        }
        if let Some((_, word)) = found {
            return Some(std::mem::replace(self.value_mut(word), value));
        }
        if self.len >= self.growth_limit {
            self.grow();
        }
        let record = append_record(&mut self.arena, key, value, &[]);
        let slot = Slot {
            record,
            key_len: key.len() as u16,
            tail_len: 0,
        };
        self.place(hash, slot);
        self.len += 1;
        None
    }

    /// Inserts `value` under `key` like [`Fit::insert`], and stores `tail`
    /// in the record right after the key, starting on an 8-byte boundary.
    /// A lookup through [`Fit::get_with_tail_tallied`] returns the tail
    /// with the value, so data that every hit reads arrives with the
    /// record instead of after a further cache miss. A key that is
    /// present is removed first, so the returned value is the one it
    /// replaced. A later [`Fit::insert`] of the key replaces the value and
    /// keeps the tail.
    ///
    /// # Panics
    ///
    /// Panics if the tail is longer than 65,535 bytes, or for the reasons
    /// of [`Fit::insert`].
    pub fn insert_with_tail(&mut self, key: &[u8], value: V, tail: &[u8]) -> Option<V> {
        assert!(
            key.len() <= MAX_KEY_LEN,
            "FIT key of {} bytes is longer than the maximum of {MAX_KEY_LEN}",
            key.len()
        );
        let tail_len = u16::try_from(tail.len()).unwrap_or_else(|_| {
            panic!(
                "FIT record tail of {} bytes is longer than the maximum of {}",
                tail.len(),
                u16::MAX
            )
        });

        let hash = self.hash(key);
        let (found, collisions) = self.find(key, hash);
        self.counters.record(collisions);
        let replaced = match found {
            Some(_) => self.remove_counted(key, false),
            None => None,
        };

        if self.len >= self.growth_limit {
            self.grow();
        }
        let record = append_record(&mut self.arena, key, value, tail);
        let slot = Slot {
            record,
            key_len: key.len() as u16,
            tail_len,
        };
        self.place(hash, slot);
        self.len += 1;
        replaced
    }

    /// Removes `key`, returning its value. The record stays in the arena as
    /// dead space until the next rebuild. A remove that leaves more dead
    /// than live arena bytes (and over 4 KiB of them) rebuilds the table at
    /// its current size.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        self.remove_counted(key, true)
    }

    /// Removes like [`Fit::remove`], counting the remove in the shared
    /// counters only if `count` is true.
    pub(crate) fn remove_counted(&mut self, key: &[u8], count: bool) -> Option<V> {
        let hash = self.hash(key);
        let (found, collisions) = self.find(key, hash);
        if count {
            self.counters.record(collisions);
        }
        let (slot, word) = found?;
        let value = *self.value(word);
        let tail_len = usize::from(self.slots[slot].tail_len);
        let group_count = self.tags.len();
        let mut group_index = home_group(hash, group_count);
        let step = probe_step(hash, group_count);
        while group_index != slot / GROUP_WIDTH {
            self.remove_overflow(group_index);
            group_index = next_group(group_index, step, group_count);
        }
        self.tags[group_index].tags[slot % GROUP_WIDTH] = EMPTY;
        self.dead_words += record_words::<V>(key.len()) + tail_len.div_ceil(WORD);
        self.len -= 1;
        if self.dead_words * WORD > 4096 && self.dead_words > self.arena.len() / 2 {
            self.rebuild(self.tags.len());
        }
        Some(value)
    }

    /// Releases spare capacity of the arena, which grows by doubling while
    /// keys are inserted. Call it once a snapshot's table is built.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
    }

    /// Removes every entry, keeping the allocated slots.
    pub fn clear(&mut self) {
        self.tags.fill(TagGroup::EMPTY);
        self.overflow.fill(0);
        self.arena.clear();
        self.dead_words = 0;
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
        hash_key(&self.hasher, key)
    }

    #[inline(always)]
    fn value(&self, word: u32) -> &V {
        debug_assert!((word as usize) < self.arena.len() || size_of::<V>() == 0);
        // SAFETY: `word` comes from an occupied slot, so a value was written
        // there by `append_record` and the arena has not shrunk since. The
        // start of a word is aligned for `V` (checked in `with_capacity`).
        unsafe { &*self.arena.as_ptr().add(word as usize).cast::<V>() }
    }

    #[inline(always)]
    fn value_mut(&mut self, word: u32) -> &mut V {
        debug_assert!((word as usize) < self.arena.len() || size_of::<V>() == 0);
        // SAFETY: as in `value`, and `&mut self` makes the access unique.
        unsafe { &mut *self.arena.as_mut_ptr().add(word as usize).cast::<V>() }
    }

    /// Returns the slot of `key`, if present, with the arena word of its
    /// record, and the collisions counted on the way.
    #[inline(always)]
    fn find(&self, key: &[u8], hash: u64) -> (Option<(usize, u32)>, u64) {
        // SAFETY: the head is taken from `self` and used while `&self`
        // keeps the table unchanged.
        unsafe { self.head().find::<V>(key, hash) }
    }

    /// Returns the words of the record arena, including removed records.
    pub(crate) fn arena_words(&self) -> usize {
        self.arena.len()
    }

    /// Returns the lookup fields of the table. They stay valid until the
    /// table is changed or dropped.
    #[inline(always)]
    pub(crate) fn head(&self) -> FitHead {
        FitHead {
            tags: self.tags.as_ptr(),
            slots: self.slots.as_ptr(),
            arena: self.arena.as_ptr(),
            group_count: self.tags.len(),
        }
    }

    /// Writes the tag, key length and record of a new key into the first
    /// free slot on its probe sequence and counts the overflow in every full
    /// group it passes. The caller has made sure a free slot exists.
    fn place(&mut self, hash: u64, slot: Slot) {
        let group_count = self.tags.len();
        let mut group_index = home_group(hash, group_count);
        let step = probe_step(hash, group_count);
        loop {
            let group = &mut self.tags[group_index];
            let free = group.match_slots(EMPTY);
            if free != 0 {
                let i = free.trailing_zeros() as usize;
                group.tags[i] = tag_of(hash);
                self.slots[group_index * GROUP_WIDTH + i] = slot;
                return;
            }
            group.add_overflow(hash);
            let count = &mut self.overflow[group_index];
            *count = count.saturating_add(1);
            group_index = next_group(group_index, step, group_count);
        }
    }

    /// Undoes one `add_overflow` of a group, clearing its filter when no
    /// key passes it any more.
    fn remove_overflow(&mut self, group_index: usize) {
        let count = &mut self.overflow[group_index];
        if *count != u16::MAX {
            *count -= 1;
            if *count == 0 {
                self.tags[group_index].tags[OVERFLOW_LANE] = 0;
            }
        }
    }

    /// Rebuilds with at least twice the groups.
    fn grow(&mut self) {
        let group_count = group_count_for(self.len + 1, self.max_load_factor)
            .max(next_prime(self.tags.len() * 2));
        self.rebuild(group_count);
    }

    /// Rehashes every live entry into `group_count` fresh groups and a
    /// compacted arena.
    fn rebuild(&mut self, group_count: usize) {
        let old_tags = std::mem::replace(
            &mut self.tags,
            vec![TagGroup::EMPTY; group_count].into_boxed_slice(),
        );
        let old_slots = std::mem::replace(
            &mut self.slots,
            vec![Slot::default(); group_count * GROUP_WIDTH].into_boxed_slice(),
        );
        self.overflow = vec![0; group_count].into_boxed_slice();
        let live_words = self.arena.len() - self.dead_words;
        let old_arena = std::mem::replace(&mut self.arena, Vec::with_capacity(live_words));
        self.dead_words = 0;
        self.growth_limit = growth_limit(group_count, self.max_load_factor);
        self.append_live_records(&old_tags, &old_slots, &old_arena);
    }

    /// Copies the table like [`Fit::clone_with_spare`], except when the
    /// table would grow before it contains `entries` entries. Then the copy
    /// gets the larger groups right away (at least twice as many, as an
    /// insert that grows the table would), so that it is not rebuilt soon
    /// after the copy.
    pub(crate) fn clone_with_room(&self, entries: usize, spare_words: usize) -> Self {
        if entries <= self.growth_limit {
            return self.clone_with_spare(spare_words);
        }
        let group_count =
            group_count_for(entries, self.max_load_factor).max(next_prime(self.tags.len() * 2));
        // The arena is copied as a whole, removed records included, which
        // reads it in order, and the records keep their positions. Only
        // the groups are rebuilt.
        let mut arena = Vec::with_capacity(self.arena.len() + spare_words);
        arena.extend_from_slice(&self.arena);
        let mut copy = Self {
            tags: vec![TagGroup::EMPTY; group_count].into_boxed_slice(),
            slots: vec![Slot::default(); group_count * GROUP_WIDTH].into_boxed_slice(),
            overflow: vec![0; group_count].into_boxed_slice(),
            arena,
            dead_words: self.dead_words,
            len: self.len,
            growth_limit: growth_limit(group_count, self.max_load_factor),
            max_load_factor: self.max_load_factor,
            hasher: self.hasher.clone(),
            counters: Arc::clone(&self.counters),
            counting: self.counting,
            values: PhantomData,
        };
        for (group_index, group) in self.tags.iter().enumerate() {
            for i in 0..GROUP_WIDTH {
                if group.tags[i] != EMPTY {
                    let slot = self.slots[group_index * GROUP_WIDTH + i];
                    let key = record_key::<V>(&copy.arena, slot.record, usize::from(slot.key_len));
                    copy.place(copy.hash(key), slot);
                }
            }
        }
        copy
    }

    /// Appends every occupied slot's record from another table's arrays to
    /// the arena and places it. The caller has sized the groups for them.
    fn append_live_records(
        &mut self,
        tags: &[TagGroup],
        slots: &[Slot],
        arena: &[MaybeUninit<u64>],
    ) {
        for (group_index, group) in tags.iter().enumerate() {
            for i in 0..GROUP_WIDTH {
                if group.tags[i] == EMPTY {
                    continue;
                }
                let slot = slots[group_index * GROUP_WIDTH + i];
                let key_len = usize::from(slot.key_len);
                let key = record_key::<V>(arena, slot.record, key_len);
                let start = slot.record as usize;
                let record = arena_word(self.arena.len());
                let words = record_words::<V>(key_len) + usize::from(slot.tail_len).div_ceil(WORD);
                self.arena.extend_from_slice(&arena[start..start + words]);
                self.place(self.hash(key), Slot { record, ..slot });
            }
        }
    }
}

/// Returns the arena words of a record with a key of `key_len` bytes.
#[inline(always)]
fn record_words<V>(key_len: usize) -> usize {
    (size_of::<V>() + key_len).div_ceil(WORD)
}

/// Converts an arena length into the word number of the next record.
fn arena_word(len: usize) -> u32 {
    u32::try_from(len).expect("FIT record arena is limited to 32 GiB")
}

/// Appends a record of `value`, `key` and `tail` (from the next word
/// boundary after the key) and returns its first word.
fn append_record<V: Copy>(
    arena: &mut Vec<MaybeUninit<u64>>,
    key: &[u8],
    value: V,
    tail: &[u8],
) -> u32 {
    let word = arena_word(arena.len());
    let start = arena.len();
    let key_words = record_words::<V>(key.len());
    arena.resize(
        start + key_words + tail.len().div_ceil(WORD),
        MaybeUninit::new(0),
    );
    // SAFETY: the resize made room for `size_of::<V>() + key.len()` bytes
    // from word `start`, which is aligned for `V` (checked in
    // `with_capacity`), and for the tail's bytes from word
    // `start + key_words`. The value, the key and the tail do not overlap.
    unsafe {
        let record = arena.as_mut_ptr().add(start);
        record.cast::<V>().write(value);
        std::ptr::copy_nonoverlapping(
            key.as_ptr(),
            record.cast::<u8>().add(size_of::<V>()),
            key.len(),
        );
        std::ptr::copy_nonoverlapping(
            tail.as_ptr(),
            record.add(key_words).cast::<u8>(),
            tail.len(),
        );
    }
    word
}

/// Returns the key bytes of the record at `word`.
#[inline(always)]
fn record_key<V>(arena: &[MaybeUninit<u64>], word: u32, key_len: usize) -> &[u8] {
    let start = word as usize * WORD + size_of::<V>();
    debug_assert!(start + key_len <= arena.len() * WORD);
    // SAFETY: the record at `word` was written by `append_record` with a key
    // of `key_len` bytes, so these bytes are inside the arena and
    // initialized.
    unsafe { std::slice::from_raw_parts(arena.as_ptr().cast::<u8>().add(start), key_len) }
}

impl<V> Fit<V> {
    /// Copies the table, giving the copy's arena room for `spare_words`
    /// more words, so that inserts into the copy do not reallocate (and
    /// copy again) the arena until that room is used.
    pub(crate) fn clone_with_spare(&self, spare_words: usize) -> Self {
        let mut arena = Vec::with_capacity(self.arena.len() + spare_words);
        arena.extend_from_slice(&self.arena);
        Self {
            tags: self.tags.clone(),
            slots: self.slots.clone(),
            overflow: self.overflow.clone(),
            arena,
            dead_words: self.dead_words,
            len: self.len,
            growth_limit: self.growth_limit,
            max_load_factor: self.max_load_factor,
            hasher: self.hasher.clone(),
            counters: Arc::clone(&self.counters),
            counting: self.counting,
            values: PhantomData,
        }
    }
}

impl<V> Clone for Fit<V> {
    /// Copies the table with an arena just large enough for its records.
    fn clone(&self) -> Self {
        self.clone_with_spare(0)
    }
}

impl<V: Copy> Default for Fit<V> {
    /// Creates an empty table with room for 8 entries at load factor 0.875.
    fn default() -> Self {
        Self::with_capacity(0, 0.875)
    }
}

impl<V> fmt::Debug for Fit<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fit")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .field("max_load_factor", &self.max_load_factor)
            .field("counting", &self.counting)
            .finish_non_exhaustive()
    }
}

impl<'a, V: Copy> IntoIterator for &'a Fit<V> {
    type Item = (&'a [u8], &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<K: AsRef<[u8]>, V: Copy> FromIterator<(K, V)> for Fit<V> {
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

impl<'a, V: Copy> Iterator for Iter<'a, V> {
    type Item = (&'a [u8], &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let table = self.table;
        while self.slot < table.slots() {
            let slot = self.slot;
            self.slot += 1;
            if table.tags[slot / GROUP_WIDTH].tags[slot % GROUP_WIDTH] != EMPTY {
                let Slot {
                    record, key_len, ..
                } = table.slots[slot];
                let key = record_key::<V>(&table.arena, record, usize::from(key_len));
                return Some((key, table.value(record)));
            }
        }
        None
    }
}

/// Compares two keys of the same length. Keys of 4 to 32 bytes, such as
/// `tenant-0000123` or most host names, are compared as two or four
/// overlapping words each, which avoids a call to `memcmp`.
#[inline(always)]
fn keys_equal(stored: &[u8], key: &[u8]) -> bool {
    debug_assert_eq!(stored.len(), key.len());
    let len = key.len();
    let read_u64 = |bytes: &[u8], at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    };
    let read_u32 = |bytes: &[u8], at: usize| {
        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    };
    if (8..=16).contains(&len) && stored.len() == len {
        let head = read_u64(stored, 0) ^ read_u64(key, 0);
        let tail = read_u64(stored, len - 8) ^ read_u64(key, len - 8);
        return head | tail == 0;
    }
    // Host names are mostly in this range, where a call to `memcmp` costs
    // more than the four loads.
    if (17..=32).contains(&len) && stored.len() == len {
        let head =
            (read_u64(stored, 0) ^ read_u64(key, 0)) | (read_u64(stored, 8) ^ read_u64(key, 8));
        let tail = (read_u64(stored, len - 16) ^ read_u64(key, len - 16))
            | (read_u64(stored, len - 8) ^ read_u64(key, len - 8));
        return head | tail == 0;
    }
    if (4..8).contains(&len) && stored.len() == len {
        let head = read_u32(stored, 0) ^ read_u32(key, 0);
        let tail = read_u32(stored, len - 4) ^ read_u32(key, len - 4);
        return head | tail == 0;
    }
    stored == key
}

/// Hashes `key` with `hasher`: the hash every table built with a clone of
/// `hasher` computes for it.
#[inline(always)]
pub(crate) fn hash_key(hasher: &RandomState, key: &[u8]) -> u64 {
    let mut state = hasher.build_hasher();
    state.write(key);
    state.finish()
}

/// Returns the tag of a hash: its low 16 bits, with 0 (the empty marker)
/// moved to 1.
#[inline(always)]
fn tag_of(hash: u64) -> u16 {
    (hash as u16).max(MIN_TAG)
}

/// Asks the CPU to start loading the cache line of `item`, so that a later
/// read of it waits less. Does nothing on targets without a prefetch
/// instruction wired up here.
#[inline(always)]
pub fn prefetch<T>(item: &T) {
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

/// Returns the overflow filter bit of a hash, from 4 bits that neither the
/// tag (bits 0-15) nor, in practice, the home group (the high bits) uses.
#[inline(always)]
fn overflow_bit(hash: u64) -> u16 {
    1 << ((hash >> 16) & 15)
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
    fn keys_equal_agrees_with_slice_equality() {
        let base: Vec<u8> = (0..40u8).map(|byte| b'a' + byte % 26).collect();
        for len in 0..=base.len() {
            let key = &base[..len];
            assert!(keys_equal(key, key), "length {len}");
            for position in 0..len {
                let mut other = key.to_vec();
                other[position] ^= 0x20;
                assert!(!keys_equal(&other, key), "length {len}, byte {position}");
            }
        }
    }

    #[test]
    fn group_sizes() {
        assert_eq!(std::mem::size_of::<TagGroup>(), 16);
        assert_eq!(std::mem::align_of::<TagGroup>(), 16);
        assert_eq!(std::mem::size_of::<Slot>(), 8);
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
    fn clone_with_room_grows_once() {
        let mut table = Fit::with_capacity(100, 0.875);
        for i in 0..100u32 {
            table.insert(format!("key-{i}").as_bytes(), i);
        }
        table.remove(b"key-7");
        let fits = table.clone_with_room(table.len() + 5, 0);
        assert_eq!(fits.slots(), table.slots(), "room for 5 more fits");

        let mut grown = table.clone_with_room(table.len() + 200, 64);
        assert!(
            grown.slots() >= 2 * table.slots(),
            "{} slots",
            grown.slots()
        );
        assert_eq!(grown.len(), 99);
        assert_eq!(grown.get(b"key-7"), None);
        for i in (0..100u32).filter(|&i| i != 7) {
            assert_eq!(grown.get(format!("key-{i}").as_bytes()), Some(&i));
        }
        let slots = grown.slots();
        for i in 100..300u32 {
            grown.insert(format!("key-{i}").as_bytes(), i);
        }
        assert_eq!(grown.slots(), slots, "the room was enough for 200 more");
        assert_eq!(grown.len(), 299);
        assert_eq!(table.len(), 99, "the original is unchanged");
        assert_eq!(table.get(b"key-150"), None);
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
            table.stats().arena_bytes < 8192,
            "dead records are reclaimed"
        );
        assert!(
            table.overflow.iter().all(|&count| count == 0),
            "removes undo every overflow count"
        );
        for group in table.tags.iter() {
            assert_eq!(
                group.tags[OVERFLOW_LANE], 0,
                "a zero count clears the overflow filter"
            );
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
            let (slot, _) = slot.expect("inserted key is found");
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
                u32::from(table.overflow[group]),
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
        // A record is the 4-byte value and the 23-byte key, padded to 32.
        assert_eq!(table.stats().arena_bytes, 100_000 * 32);
        let per_entry = table.heap_bytes() as f64 / table.len() as f64;
        assert!(per_entry < 50.0, "{per_entry} heap bytes per 23-byte key");
    }
}
