//! Lookup structures that find the best route without scanning every route.
//!
//! Routes are grouped into host buckets: one per exact host, one per
//! wildcard suffix and one for the routes without a host. Exact hosts are
//! found through a FIT (fingerprinted table), because a request for a known
//! host is a hit. The FIT stores the bucket itself, which saves the lookup
//! a cache miss on a separate bucket array. Wildcard suffixes are found through a hashbrown map,
//! because the lookup tries every parent domain of the host and most of
//! those probes miss, where hashbrown is faster than the FIT.
//!
//! A bucket with at most 8 exact and prefix paths keeps them in a short
//! list, exact paths first and then prefixes from the longest to the
//! shortest, which a lookup scans in order: one or two cache lines, where a
//! tree descent costs a cache miss per level once the table outgrows the
//! CPU caches. An exact host's list sits in the tail of its FIT record, so
//! the load that brings the host's record brings its paths too, instead
//! of a further cache miss on a separate array. The paths of larger
//! buckets live in one CRA (radix arena) whose keys are the bucket id (4
//! bytes, big-endian) followed by the path.
//! One descent returns the exact entry, then the prefix entries from the
//! longest to the shortest, which is the same match order. Each entry points
//! to a run of route ids in one shared array, in precedence order, so the
//! first route of a run that accepts the request's method and headers is
//! the result. A run of one route stores the route id itself, and a bit
//! set marks the routes without method or header conditions, so accepting
//! such a route needs no read of its record.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};
use valkyrie_lockfree::{Cra, CraBuilder, Fit, FitCounters, FitStats, FitTally, MatchKind};

use crate::bytes;
use crate::conditions::{HostPattern, PathPattern, Specificity};
use crate::Route;

/// Position of a route in `RouteTable::routes`. 32 bits keep the candidate
/// runs small; `RouteTable::build` rejects more routes than fit.
pub(crate) type RouteId = u32;

/// Position of a host bucket in `HostIndex::buckets`.
type BucketId = u32;

/// Bytes of the bucket id in front of a path in the CRA key.
const BUCKET_KEY_LEN: usize = std::mem::size_of::<BucketId>();

/// CRA keys up to this length are assembled on the stack; longer paths
/// allocate a buffer for the lookup.
const KEY_BUFFER_LEN: usize = 192;

/// Buckets with at most this many exact and prefix paths keep them in a
/// list instead of the CRA.
const MAX_LISTED_PATHS: usize = 8;

/// Sort key that puts routes in match order: most specific first, then
/// config order.
pub(crate) fn precedence_key(route: &Route) -> (Reverse<Specificity>, usize) {
    (Reverse(route.specificity()), route.index)
}

/// A run of route ids in `HostIndex::candidates`, in precedence order. A
/// run of one route stores the route id in `start` instead.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Candidates {
    start: u32,
    len: u32,
}

impl Candidates {
    /// Returns the route ids of the run.
    #[inline]
    fn ids<'a>(&'a self, shared: &'a [RouteId]) -> &'a [RouteId] {
        if self.len == 1 {
            return std::slice::from_ref(&self.start);
        }
        let start = self.start as usize;
        &shared[start..start + self.len as usize]
    }
}

/// The request as the buckets check it, with host and path normalized.
pub(crate) struct Probe<'a> {
    pub(crate) routes: &'a [Route],
    /// Bit `id` is set when route `id` has no method or header condition.
    pub(crate) unconditional: &'a [u64],
    pub(crate) path: &'a str,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    /// FIT lookups of this request, for the engine's counters.
    pub(crate) tally: FitTally,
    /// Set when a route with header conditions was checked, so the
    /// result depends on more than host, path and method.
    pub(crate) consulted_headers: bool,
    /// The packed target of the route found, when the index had it next
    /// to the path; [`NO_TARGET`] otherwise.
    pub(crate) target: u32,
}

impl Probe<'_> {
    /// Finds the first route in `candidates` whose methods and headers accept
    /// the request. Host and path were matched by the bucket lookup.
    fn first_accepted(&mut self, candidates: &[RouteId]) -> Option<RouteId> {
        candidates.iter().copied().find(|&id| self.accepts(id))
    }

    /// Like `first_accepted`, for candidates whose path regex is still to be
    /// checked. The regex runs last because it is the most expensive check.
    fn first_accepted_by_regex(&mut self, candidates: &[RouteId]) -> Option<RouteId> {
        candidates
            .iter()
            .copied()
            .find(|&id| self.accepts(id) && self.routes[id as usize].path.matches(self.path))
    }

    #[inline]
    fn accepts(&mut self, id: RouteId) -> bool {
        if self.unconditional[id as usize / 64] & (1 << (id % 64)) != 0 {
            return true;
        }
        let route = &self.routes[id as usize];
        if !(route.methods().is_empty() || route.methods().contains(self.method)) {
            return false;
        }
        if route.headers().is_empty() {
            return true;
        }
        self.consulted_headers = true;
        route
            .headers()
            .iter()
            .all(|condition| condition.matches(self.headers))
    }
}

/// Where the exact and prefix paths of a bucket are.
#[derive(Clone, Copy, Debug, Default)]
enum BucketPaths {
    #[default]
    None,
    /// Entries `start..start + len` of `HostIndex::listed`.
    Listed { start: u32, len: u32 },
    /// In the tail of the exact host's FIT record, which a lookup of the
    /// host returns with the bucket.
    InRecord,
    /// Keys of the CRA that start with this bucket id.
    Tree(BucketId),
}

/// Paths up to this length are stored in their `ListedPath`, which keeps
/// the entry at 32 bytes.
const INLINE_PATH_LEN: usize = 11;

/// `ListedPath::target` of an entry whose route must be checked first.
pub(crate) const NO_TARGET: u32 = u32::MAX;

/// One path of a listed bucket. A path of at most `INLINE_PATH_LEN` bytes
/// is in `inline`, so a scan reads no other array; a longer one is at
/// `start` in `HostIndex::listed_bytes`. When the path has one route and
/// that route has no method or header condition, `target` contains the
/// route's packed target, so a match needs nothing else.
///
/// `repr(C)` fixes a layout without padding, so that a run of entries can
/// be stored as the bytes of a FIT record tail and read back in place.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct ListedPath {
    candidates: Candidates,
    start: u32,
    len: u32,
    target: u32,
    prefix: bool,
    inline: [u8; INLINE_PATH_LEN],
}

impl ListedPath {
    #[inline]
    fn path<'a>(&'a self, listed_bytes: &'a [u8]) -> &'a [u8] {
        let len = self.len as usize;
        if len <= INLINE_PATH_LEN {
            &self.inline[..len]
        } else {
            let start = self.start as usize;
            &listed_bytes[start..start + len]
        }
    }
}

/// Returns the bytes of a run of listed paths, to store as a FIT record
/// tail.
fn listed_bytes_of(listed: &[ListedPath]) -> &[u8] {
    // SAFETY: `ListedPath` is `repr(C)` with no padding (its fields add up
    // to its 32 bytes, which a test checks), so every byte of the run is
    // initialized.
    unsafe { std::slice::from_raw_parts(listed.as_ptr().cast::<u8>(), size_of_val(listed)) }
}

/// Returns the listed paths stored as a FIT record tail by
/// [`listed_bytes_of`].
///
/// # Safety
///
/// `tail` is a record tail that `IndexBuilder::finish` wrote from a run
/// of `ListedPath`s, so it starts on an 8-byte boundary and contains
/// whole, valid entries.
unsafe fn listed_from_tail(tail: &[u8]) -> &[ListedPath] {
    debug_assert_eq!(tail.as_ptr() as usize % align_of::<ListedPath>(), 0);
    debug_assert_eq!(tail.len() % size_of::<ListedPath>(), 0);
    // SAFETY: as the caller guarantees.
    unsafe {
        std::slice::from_raw_parts(
            tail.as_ptr().cast::<ListedPath>(),
            tail.len() / size_of::<ListedPath>(),
        )
    }
}

/// The routes of one host bucket.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bucket {
    paths: BucketPaths,
    regex: Candidates,
    any: Candidates,
}

/// An exact host's bucket as the FIT returns it, with the listed paths
/// from its record tail (empty unless the paths are `InRecord`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExactHost<'a> {
    bucket: &'a Bucket,
    listed: &'a [ListedPath],
}

impl<'a> ExactHost<'a> {
    fn new((bucket, tail): (&'a Bucket, &'a [u8])) -> Self {
        // SAFETY: the exact-host FIT stores only tails written by
        // `IndexBuilder::finish` from runs of listed paths.
        let listed = unsafe { listed_from_tail(tail) };
        ExactHost { bucket, listed }
    }
}

/// Routes bucketed by host pattern, with their paths in one CRA.
pub(crate) struct HostIndex {
    /// Buckets of exact hosts, copied out of `buckets`.
    exact: Fit<Bucket>,
    /// Keyed by the suffix after `*.`.
    wildcard: hashbrown::HashMap<Box<str>, BucketId>,
    any: Option<BucketId>,
    buckets: Box<[Bucket]>,
    listed: Box<[ListedPath]>,
    /// Listed paths kept in exact hosts' FIT record tails.
    listed_in_records: usize,
    listed_bytes: Box<[u8]>,
    paths: Cra<Candidates>,
    candidates: Box<[RouteId]>,
    /// Bit `id` is set when route `id` has no method or header condition.
    unconditional: Box<[u64]>,
}

/// Sizing of the FIT of exact hosts, from `[routing.lockfree]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FitSizing {
    pub(crate) capacity: usize,
    pub(crate) load_factor: f64,
}

impl HostIndex {
    pub(crate) fn build(
        routes: &[Route],
        sizing: FitSizing,
        counters: Arc<FitCounters>,
    ) -> HostIndex {
        let mut order: Vec<&Route> = routes.iter().collect();
        order.sort_by_key(|route| precedence_key(route));

        let mut builder = IndexBuilder::default();
        for route in order {
            builder.push(route);
        }
        let mut unconditional = vec![0u64; routes.len().div_ceil(64)];
        for (id, route) in routes.iter().enumerate() {
            if route.methods().is_empty() && route.headers().is_empty() {
                unconditional[id / 64] |= 1 << (id % 64);
            }
        }
        let direct_target = |candidates: &Candidates| {
            let id = candidates.start as usize;
            if candidates.len == 1 && unconditional[id / 64] & (1 << (id % 64)) != 0 {
                crate::pack_target(&routes[id].target).unwrap_or(NO_TARGET)
            } else {
                NO_TARGET
            }
        };
        let mut index = builder.finish(sizing, counters, direct_target);
        index.unconditional = unconditional.into_boxed_slice();
        index
    }

    /// Finds the best route for a normalized host (`None` when the request
    /// has none).
    pub(crate) fn find(&self, host: Option<&str>, probe: &mut Probe<'_>) -> Option<RouteId> {
        let exact = host.and_then(|host| {
            self.exact
                .get_with_tail_tallied(host.as_bytes(), &mut probe.tally)
                .map(ExactHost::new)
        });
        self.find_from(host, exact, probe)
    }

    /// Hashes a normalized host for [`HostIndex::exact_bucket`] and starts
    /// loading its place in the FIT of exact hosts.
    #[inline]
    pub(crate) fn prefetch_exact(&self, host: &str) -> u64 {
        self.exact.prefetch(host.as_bytes())
    }

    /// Starts loading the record that [`HostIndex::exact_bucket`] will read
    /// for this host, its listed paths included, once
    /// [`HostIndex::prefetch_exact`] has brought in its place in the FIT.
    #[inline]
    pub(crate) fn prefetch_exact_record(&self, host: &str, hash: u64) {
        self.exact.prefetch_record(host.as_bytes(), hash);
    }

    /// Returns the bucket of an exact host, given the hash from
    /// [`HostIndex::prefetch_exact`], and starts loading the bucket's
    /// listed paths when they are not in the record.
    #[inline]
    pub(crate) fn exact_bucket(
        &self,
        host: &str,
        hash: u64,
        tally: &mut FitTally,
    ) -> Option<ExactHost<'_>> {
        let exact = self
            .exact
            .get_hashed_with_tail_tallied(host.as_bytes(), hash, tally)
            .map(ExactHost::new)?;
        if let BucketPaths::Listed { start, len } = exact.bucket.paths {
            // Two 32-byte entries per cache line; the run may start in the
            // middle of one, so its last entry is requested as well.
            let run = self.listed.get(start as usize..(start + len) as usize);
            for entry in run.into_iter().flatten().step_by(2) {
                valkyrie_lockfree::prefetch(entry);
            }
            if let Some(last) = run.and_then(<[ListedPath]>::last) {
                valkyrie_lockfree::prefetch(last);
            }
        }
        Some(exact)
    }

    /// Finishes [`HostIndex::find`] with the exact host's bucket already
    /// looked up (`None` when the host is not an exact host).
    pub(crate) fn find_from(
        &self,
        host: Option<&str>,
        exact: Option<ExactHost<'_>>,
        probe: &mut Probe<'_>,
    ) -> Option<RouteId> {
        if let Some(host) = host {
            if let Some(exact) = exact {
                if let Some(found) = self.find_in_bucket(exact.bucket, exact.listed, probe) {
                    return Some(found);
                }
            }
            if let Some(found) = self.find_wildcard(host, probe) {
                return Some(found);
            }
        }
        self.any
            .and_then(|bucket| self.find_in_bucket(&self.buckets[bucket as usize], &[], probe))
    }

    /// Tries the wildcards that cover `host`, longest suffix first, because a
    /// suffix with more labels is more specific.
    fn find_wildcard(&self, host: &str, probe: &mut Probe<'_>) -> Option<RouteId> {
        if self.wildcard.is_empty() {
            return None;
        }
        // A dot at position 0 would leave no label in front of the suffix.
        let mut from = 1;
        while let Some(found) = host
            .as_bytes()
            .get(from..)
            .and_then(|rest| bytes::find_byte(b'.', rest))
        {
            let dot = from + found;
            if let Some(&bucket) = self.wildcard.get(&host[dot + 1..]) {
                if let Some(found) = self.find_in_bucket(&self.buckets[bucket as usize], &[], probe)
                {
                    return Some(found);
                }
            }
            from = dot + 1;
        }
        None
    }

    /// Visits exact paths, then prefixes from longest to shortest, then
    /// regexes, then routes without a path condition. `in_record` contains
    /// the listed paths of a bucket whose paths are `InRecord`.
    fn find_in_bucket(
        &self,
        bucket: &Bucket,
        in_record: &[ListedPath],
        probe: &mut Probe<'_>,
    ) -> Option<RouteId> {
        let found = match bucket.paths {
            BucketPaths::None => None,
            BucketPaths::Listed { start, len } => {
                self.scan_listed(&self.listed[start as usize..(start + len) as usize], probe)
            }
            BucketPaths::InRecord => self.scan_listed(in_record, probe),
            BucketPaths::Tree(id) => self.find_path(id, probe),
        };
        if found.is_some() {
            return found;
        }
        if let Some(found) = probe.first_accepted_by_regex(self.run(&bucket.regex)) {
            return Some(found);
        }
        probe.first_accepted(self.run(&bucket.any))
    }

    /// Scans a listed bucket's paths, which are in match order.
    fn scan_listed(&self, listed: &[ListedPath], probe: &mut Probe<'_>) -> Option<RouteId> {
        let path = probe.path.as_bytes();
        for entry in listed {
            let listed_path = entry.path(&self.listed_bytes);
            let matches = if entry.prefix {
                bytes::starts_with(path, listed_path)
            } else {
                bytes::equal(path, listed_path)
            };
            if matches {
                if entry.target != NO_TARGET {
                    probe.target = entry.target;
                    return Some(entry.candidates.start);
                }
                if let Some(found) = probe.first_accepted(self.run(&entry.candidates)) {
                    return Some(found);
                }
            }
        }
        None
    }

    fn find_path(&self, bucket: BucketId, probe: &mut Probe<'_>) -> Option<RouteId> {
        let path = probe.path.as_bytes();
        let key_len = BUCKET_KEY_LEN + path.len();
        let mut stack = [0u8; KEY_BUFFER_LEN];
        let heap: Vec<u8>;
        let key: &[u8] = if key_len <= KEY_BUFFER_LEN {
            stack[..BUCKET_KEY_LEN].copy_from_slice(&bucket.to_be_bytes());
            stack[BUCKET_KEY_LEN..key_len].copy_from_slice(path);
            &stack[..key_len]
        } else {
            heap = path_key(bucket, path);
            &heap
        };
        for (_, candidates) in self.paths.matches(key) {
            if let Some(found) = probe.first_accepted(self.run(candidates)) {
                return Some(found);
            }
        }
        None
    }

    #[inline]
    fn run<'a>(&'a self, candidates: &'a Candidates) -> &'a [RouteId] {
        candidates.ids(&self.candidates)
    }

    /// Returns the bit set of routes without method or header conditions,
    /// for `Probe::unconditional`.
    pub(crate) fn unconditional(&self) -> &[u64] {
        &self.unconditional
    }

    /// Returns the sizes and counters of the FIT and the CRA.
    pub(crate) fn stats(&self) -> IndexStats {
        IndexStats {
            exact_hosts: self.exact.stats(),
            wildcard_hosts: self.wildcard.len(),
            cra_entries: self.paths.len(),
            cra_nodes: self.paths.node_count(),
            cra_fragmentation: self.paths.fragmentation(),
            cra_arena_bytes: self.paths.arena_bytes(),
            listed_paths: self.listed.len() + self.listed_in_records,
            listed_paths_in_records: self.listed_in_records,
            heap_bytes: self.heap_bytes(),
        }
    }

    pub(crate) fn fit_counters(&self) -> &Arc<FitCounters> {
        self.exact.counters()
    }

    /// Estimates the heap bytes of the index: the FIT and CRA report
    /// their own; the wildcard map is counted at its capacity.
    fn heap_bytes(&self) -> usize {
        let wildcard_slot = std::mem::size_of::<(Box<str>, BucketId)>() + 1;
        let wildcard_keys: usize = self.wildcard.keys().map(|key| key.len()).sum();
        self.exact.heap_bytes()
            + self.wildcard.capacity() * wildcard_slot
            + wildcard_keys
            + std::mem::size_of_val::<[Bucket]>(&self.buckets)
            + std::mem::size_of_val::<[ListedPath]>(&self.listed)
            + self.listed_bytes.len()
            + self.paths.arena_bytes()
            + std::mem::size_of_val::<[RouteId]>(&self.candidates)
            + std::mem::size_of_val::<[u64]>(&self.unconditional)
    }
}

impl std::fmt::Debug for HostIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostIndex")
            .field("exact_hosts", &self.exact.len())
            .field("wildcard_hosts", &self.wildcard.len())
            .field("buckets", &self.buckets.len())
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// Sizes and counters of a route table's index, from `RouteTable::stats`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexStats {
    /// The FIT of exact hosts; its operation and collision counters are
    /// shared with the tables built from the same counters.
    pub exact_hosts: FitStats,
    /// Distinct wildcard suffixes.
    pub wildcard_hosts: usize,
    /// Exact and prefix path entries in the CRA.
    pub cra_entries: usize,
    /// Reachable CRA nodes, the root included.
    pub cra_nodes: usize,
    /// Dead CRA arena space divided by arena size; 0 for a freshly built
    /// table.
    pub cra_fragmentation: f64,
    /// CRA arena size in bytes.
    pub cra_arena_bytes: usize,
    /// Exact and prefix paths kept in the lists of small buckets instead
    /// of the CRA.
    pub listed_paths: usize,
    /// The part of `listed_paths` kept in exact hosts' FIT records, which
    /// a lookup loads with the host instead of after it.
    pub listed_paths_in_records: usize,
    /// Heap bytes of the whole index (FIT, wildcard map, CRA, candidate
    /// runs), not counting the routes themselves.
    pub heap_bytes: usize,
}

/// Creates a listed path, appending it to `listed_bytes` if it is too long
/// to store inline.
fn listed_path(
    path: &str,
    prefix: bool,
    candidates: Candidates,
    listed_bytes: &mut Vec<u8>,
) -> ListedPath {
    let mut entry = ListedPath {
        candidates,
        start: 0,
        len: path.len() as u32,
        target: NO_TARGET,
        prefix,
        inline: [0; INLINE_PATH_LEN],
    };
    if path.len() <= INLINE_PATH_LEN {
        entry.inline[..path.len()].copy_from_slice(path.as_bytes());
    } else {
        entry.start = listed_bytes.len() as u32;
        listed_bytes.extend_from_slice(path.as_bytes());
    }
    entry
}

fn path_key(bucket: BucketId, path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(BUCKET_KEY_LEN + path.len());
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(path);
    key
}

/// Route ids of one bucket, collected in precedence order.
#[derive(Default)]
struct BucketBuilder {
    exact: HashMap<Box<str>, Vec<RouteId>>,
    prefixes: HashMap<Box<str>, Vec<RouteId>>,
    regex: Vec<RouteId>,
    any: Vec<RouteId>,
}

/// Collects routes, which arrive in precedence order, into buckets.
#[derive(Default)]
struct IndexBuilder {
    exact: HashMap<Arc<str>, BucketId>,
    wildcard: HashMap<Arc<str>, BucketId>,
    any: Option<BucketId>,
    buckets: Vec<BucketBuilder>,
}

impl IndexBuilder {
    fn push(&mut self, route: &Route) {
        let bucket = match &route.host {
            HostPattern::Any => match self.any {
                Some(bucket) => bucket,
                None => {
                    let bucket = self.new_bucket();
                    self.any = Some(bucket);
                    bucket
                }
            },
            HostPattern::Exact(host) => match self.exact.get(&**host) {
                Some(&bucket) => bucket,
                None => {
                    let bucket = self.new_bucket();
                    self.exact.insert(host.clone(), bucket);
                    bucket
                }
            },
            HostPattern::Wildcard(suffix) => match self.wildcard.get(&**suffix) {
                Some(&bucket) => bucket,
                None => {
                    let bucket = self.new_bucket();
                    self.wildcard.insert(suffix.clone(), bucket);
                    bucket
                }
            },
        };

        // `RouteTable::build` checked that every index fits a `RouteId`.
        let id = route.index as RouteId;
        let lists = &mut self.buckets[bucket as usize];
        match &route.path {
            PathPattern::Any => lists.any.push(id),
            PathPattern::Exact(path) => lists.exact.entry(path.clone()).or_default().push(id),
            PathPattern::Prefix(prefix) => {
                lists.prefixes.entry(prefix.clone()).or_default().push(id)
            }
            PathPattern::Regex(_) => lists.regex.push(id),
        }
    }

    fn new_bucket(&mut self) -> BucketId {
        let bucket = self.buckets.len() as BucketId;
        self.buckets.push(BucketBuilder::default());
        bucket
    }

    /// Builds the index. `direct_target` returns the packed target that a
    /// listed path of this run of routes can hold, or `NO_TARGET`.
    fn finish(
        self,
        sizing: FitSizing,
        counters: Arc<FitCounters>,
        direct_target: impl Fn(&Candidates) -> u32,
    ) -> HostIndex {
        let mut candidates: Vec<RouteId> = Vec::new();
        let mut push_run = |ids: &[RouteId]| {
            if let [id] = ids {
                return Candidates { start: *id, len: 1 };
            }
            let run = Candidates {
                start: candidates.len() as u32,
                len: ids.len() as u32,
            };
            candidates.extend_from_slice(ids);
            run
        };

        // The listed paths of exact hosts go into their FIT records, the
        // others into `listed`.
        let mut is_exact = vec![false; self.buckets.len()];
        for &bucket in self.exact.values() {
            is_exact[bucket as usize] = true;
        }
        let mut in_record: Vec<Vec<ListedPath>> = vec![Vec::new(); self.buckets.len()];
        let mut listed_in_records = 0;

        let mut buckets = Vec::with_capacity(self.buckets.len());
        let mut path_entries: Vec<(Vec<u8>, MatchKind, Candidates)> = Vec::new();
        let mut listed = Vec::new();
        let mut listed_bytes = Vec::new();
        for (bucket, lists) in self.buckets.into_iter().enumerate() {
            let bucket = bucket as BucketId;
            let count = lists.exact.len() + lists.prefixes.len();
            let paths = if count == 0 {
                BucketPaths::None
            } else if count <= MAX_LISTED_PATHS {
                let mut entries: Vec<(&Box<str>, bool, &Vec<RouteId>)> = lists
                    .exact
                    .iter()
                    .map(|(path, ids)| (path, false, ids))
                    .chain(lists.prefixes.iter().map(|(path, ids)| (path, true, ids)))
                    .collect();
                // Exact paths first, then prefixes from the longest.
                entries.sort_by_key(|(path, prefix, _)| (*prefix, Reverse(path.len())));
                let run: Vec<ListedPath> = entries
                    .into_iter()
                    .map(|(path, prefix, ids)| {
                        let mut entry = listed_path(path, prefix, push_run(ids), &mut listed_bytes);
                        entry.target = direct_target(&entry.candidates);
                        entry
                    })
                    .collect();
                if is_exact[bucket as usize] {
                    listed_in_records += run.len();
                    in_record[bucket as usize] = run;
                    BucketPaths::InRecord
                } else {
                    let start = listed.len() as u32;
                    listed.extend(run);
                    BucketPaths::Listed {
                        start,
                        len: count as u32,
                    }
                }
            } else {
                for (path, ids) in &lists.exact {
                    let key = path_key(bucket, path.as_bytes());
                    path_entries.push((key, MatchKind::Exact, push_run(ids)));
                }
                for (prefix, ids) in &lists.prefixes {
                    let key = path_key(bucket, prefix.as_bytes());
                    path_entries.push((key, MatchKind::Prefix, push_run(ids)));
                }
                BucketPaths::Tree(bucket)
            };
            buckets.push(Bucket {
                paths,
                regex: push_run(&lists.regex),
                any: push_run(&lists.any),
            });
        }

        // Sorted keys grow sibling blocks at the arena's end, which keeps
        // the builder from relocating blocks before it compacts.
        path_entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut paths = CraBuilder::new();
        for (key, kind, run) in path_entries {
            paths.insert(&key, kind, run);
        }

        let capacity = sizing.capacity.max(self.exact.len());
        let mut exact = Fit::with_capacity(capacity, sizing.load_factor);
        exact.set_counters(counters);
        for (host, bucket) in self.exact {
            let tail = listed_bytes_of(&in_record[bucket as usize]);
            exact.insert_with_tail(host.as_bytes(), buckets[bucket as usize], tail);
        }
        exact.shrink_to_fit();
        let wildcard = self
            .wildcard
            .into_iter()
            .map(|(suffix, bucket)| (Box::from(&*suffix), bucket))
            .collect();

        HostIndex {
            exact,
            wildcard,
            any: self.any,
            buckets: buckets.into_boxed_slice(),
            listed: listed.into_boxed_slice(),
            listed_in_records,
            listed_bytes: listed_bytes.into_boxed_slice(),
            paths: paths.build(),
            candidates: candidates.into_boxed_slice(),
            unconditional: Box::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_path_is_32_bytes() {
        assert_eq!(std::mem::size_of::<ListedPath>(), 32);
    }

    #[test]
    fn listed_paths_inline_and_spilled() {
        let mut listed_bytes = Vec::new();
        let run = Candidates { start: 3, len: 1 };
        let short = "/api/v1/";
        let exact_fit = "/eleven-b1/";
        let long = "/a/path/longer/than/eleven/bytes";
        assert_eq!(exact_fit.len(), INLINE_PATH_LEN);
        let entries: Vec<ListedPath> = [short, exact_fit, long]
            .iter()
            .map(|path| listed_path(path, true, run, &mut listed_bytes))
            .collect();
        assert_eq!(listed_bytes, long.as_bytes(), "only the long path spills");
        assert_eq!(entries[0].path(&listed_bytes), short.as_bytes());
        assert_eq!(entries[1].path(&listed_bytes), exact_fit.as_bytes());
        assert_eq!(entries[2].path(&listed_bytes), long.as_bytes());
    }
}
