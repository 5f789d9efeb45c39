//! Key tables: routing by a request key (a header, a path segment or a query
//! parameter) to an upstream, or to one endpoint of it, through a table
//! that may hold millions of entries.
//!
//! A [`KeyTable`] keeps its entries in a [`ShardedFit`]: FIT shards behind
//! `Arc`s, picked by bits of the key's hash. A published table is never
//! changed: an update clones the table, which copies only the shard
//! pointers, and then writes its changes into small per-shard deltas. A
//! few deltas per batch are folded into copies of their shards. So a batch
//! of updates costs about its own size, not the table's. A lookup hashes
//! the key once and reads the shard's tag and slot positions from a flat
//! array in the table, so it does not load the `Arc` or the shard's
//! header. In a shard with a delta, the delta's entry for the key wins.
//!
//! Entry files have one entry per line, `key,upstream` or
//! `key,upstream,endpoint`; [`parse_entries`] reads them and names the line
//! of the first error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use valkyrie_config::{suggestion, Config, KeySource};
use valkyrie_lockfree::{FitCounters, FitTally, ShardedFit};

/// Entries per shard that the shard count aims for when a table is built.
const ENTRIES_PER_SHARD: usize = 4096;

/// Distance, in changes, at which [`KeyTable::apply_each`] starts loading
/// the entry that a later change's key will be compared with. The key's
/// table place starts loading at twice that distance.
const CHANGE_LOOKAHEAD: usize = 8;

/// Maximum shard count of a table.
const MAX_SHARDS: usize = 1024;

/// Maximum key length in bytes, the FIT's limit.
pub const MAX_KEY_LEN: usize = valkyrie_lockfree::fit::MAX_KEY_LEN;

/// Sentinel for "no endpoint" in [`KeyTarget`].
const NO_ENDPOINT: u32 = u32::MAX;

/// The request part a key table reads its key from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// The first value of a header, byte for byte.
    Header(HeaderName),
    /// Segment `n` of the normalized path, counting from 0 after the leading
    /// `/`: segment 1 of `/t/acme/x` is `acme`.
    PathSegment(usize),
    /// The first query parameter with this name, percent-decoded.
    Query(String),
}

impl KeySpec {
    /// Compiles a `key = { ... }` setting.
    pub fn from_config(source: &KeySource) -> Result<KeySpec, String> {
        match source {
            KeySource::Header(name) => HeaderName::from_bytes(name.as_bytes())
                .map(KeySpec::Header)
                .map_err(|_| format!("key header name `{name}` is not a valid header name")),
            KeySource::PathSegment(index) => Ok(KeySpec::PathSegment(*index)),
            KeySource::Query(name) if name.is_empty() => {
                Err("key query parameter name is empty".to_string())
            }
            KeySource::Query(name) => Ok(KeySpec::Query(name.clone())),
        }
    }

    /// Reads the key from a request. `path` is the normalized path. An
    /// empty value counts as absent.
    pub fn extract<'a>(
        &self,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> Option<Cow<'a, [u8]>> {
        let key = match self {
            KeySpec::Header(name) => headers
                .get(name)
                .map(|value| Cow::Borrowed(value.as_bytes())),
            KeySpec::PathSegment(index) => path_segment(path, *index).map(Cow::Borrowed),
            KeySpec::Query(name) => query.and_then(|query| query_value(query, name)),
        };
        key.filter(|key| !key.is_empty())
    }
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpec::Header(name) => write!(f, "header `{name}`"),
            KeySpec::PathSegment(index) => write!(f, "path segment {index}"),
            KeySpec::Query(name) => write!(f, "query parameter `{name}`"),
        }
    }
}

/// Returns segment `index` of `path`, counting from 0 after the leading `/`.
fn path_segment(path: &str, index: usize) -> Option<&[u8]> {
    let bytes = path.as_bytes();
    let mut rest = bytes.strip_prefix(b"/").unwrap_or(bytes);
    for _ in 0..index {
        let slash = crate::bytes::find_byte(b'/', rest)?;
        rest = &rest[slash + 1..];
    }
    let end = crate::bytes::find_byte(b'/', rest).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Returns the percent-decoded value of the first parameter named `name`.
/// Parameter names are compared after decoding too; `+` is kept as is.
fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key).as_ref() == name.as_bytes()).then(|| percent_decode(value))
    })
}

/// Decodes `%XX` escapes; an invalid escape stays as it is.
fn percent_decode(text: &str) -> Cow<'_, [u8]> {
    let bytes = text.as_bytes();
    if !bytes.contains(&b'%') {
        return Cow::Borrowed(bytes);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = if bytes[i] == b'%' {
            bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        } else {
            None
        };
        match escape {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(decoded)
}

/// Destination of a key: an upstream (index into
/// `Config::upstreams`) and optionally one of its endpoints (index into that
/// upstream's `endpoints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyTarget {
    upstream: u32,
    endpoint: u32,
}

impl KeyTarget {
    /// Creates a target.
    ///
    /// # Panics
    ///
    /// Panics if an index does not fit in 32 bits.
    pub fn new(upstream: usize, endpoint: Option<usize>) -> KeyTarget {
        let upstream = u32::try_from(upstream).expect("upstream index fits in 32 bits");
        let endpoint = endpoint.map_or(NO_ENDPOINT, |endpoint| {
            u32::try_from(endpoint)
                .ok()
                .filter(|&endpoint| endpoint != NO_ENDPOINT)
                .expect("endpoint index fits in 32 bits")
        });
        KeyTarget { upstream, endpoint }
    }

    /// Returns the upstream's index in `Config::upstreams`.
    pub fn upstream(&self) -> usize {
        self.upstream as usize
    }

    /// Returns the pinned endpoint's index in the upstream's endpoints, if
    /// the entry names one.
    pub fn endpoint(&self) -> Option<usize> {
        (self.endpoint != NO_ENDPOINT).then_some(self.endpoint as usize)
    }
}

/// Outcome of resolving a request key in a key table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The key has an entry.
    Entry(KeyTarget),
    /// The key is absent or unknown, and the table has a `default_upstream`.
    Default(KeyTarget),
    /// The key is absent or unknown, and the table has no default.
    Missing,
}

/// Sizes of a key table, from [`KeyTable::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KeyTableStats {
    /// Entries in the table.
    pub entries: usize,
    /// FIT shards.
    pub shards: usize,
    /// FIT slots over all shards.
    pub slots: usize,
    /// Heap bytes of the shards and their deltas (tags, slots and records
    /// of keys and values).
    pub heap_bytes: usize,
    /// Changes not yet folded into the shards: upserts and tombstones in
    /// the shards' deltas.
    pub delta_entries: usize,
}

/// Sizing of the FIT shards, from `[routing.lockfree]`.
#[derive(Clone, Copy, Debug)]
pub struct TableSizing {
    /// Entries the table is sized for, spread over its shards.
    pub capacity: usize,
    /// FIT load factor, at most 0.9375.
    pub load_factor: f64,
}

impl TableSizing {
    /// Reads `fit_capacity` and `fit_load_factor`, keeping the load factor
    /// in the range the FIT accepts.
    pub fn from_config(config: &Config) -> TableSizing {
        let lockfree = &config.routing.lockfree;
        let load_factor = if lockfree.fit_load_factor > 0.0 {
            lockfree
                .fit_load_factor
                .min(valkyrie_lockfree::fit::MAX_LOAD_FACTOR)
        } else {
            0.75
        };
        TableSizing {
            capacity: lockfree.fit_capacity,
            load_factor,
        }
    }
}

/// A key table: entries from request keys to targets, a key spec and a
/// default target. See the module documentation for the layout.
#[derive(Clone)]
pub struct KeyTable {
    name: Arc<str>,
    spec: KeySpec,
    default: Option<KeyTarget>,
    entries: ShardedFit<KeyTarget>,
}

impl KeyTable {
    /// Creates an empty table sized for `entries` entries, or for
    /// `sizing.capacity` when that is larger. FIT operations are counted in
    /// `counters`.
    pub fn new(
        name: &str,
        spec: KeySpec,
        default: Option<KeyTarget>,
        entries: usize,
        sizing: TableSizing,
        counters: &Arc<FitCounters>,
    ) -> KeyTable {
        let capacity = entries.max(sizing.capacity);
        let shard_count = (entries / ENTRIES_PER_SHARD)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        // Shards receive slightly different entry counts. About 5% more
        // room keeps the fuller ones from doubling their slots.
        let per_shard = if shard_count == 1 {
            capacity
        } else {
            capacity.div_ceil(shard_count) * 21 / 20 + 32
        };
        KeyTable {
            name: Arc::from(name),
            spec,
            default,
            entries: ShardedFit::new(shard_count, per_shard, sizing.load_factor, counters),
        }
    }

    /// Returns the table's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Returns the request part the key is read from.
    pub fn spec(&self) -> &KeySpec {
        &self.spec
    }

    /// Returns the target for requests whose key is absent or unknown.
    pub fn default_target(&self) -> Option<KeyTarget> {
        self.default
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns true if the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks up `key`, counting the FIT lookup in `tally`.
    #[inline]
    pub fn get_tallied(&self, key: &[u8], tally: &mut FitTally) -> Option<KeyTarget> {
        self.entries.get_tallied(key, tally).copied()
    }

    /// Looks up `key`, without counting.
    pub fn get(&self, key: &[u8]) -> Option<KeyTarget> {
        self.entries.get(key).copied()
    }

    /// Resolves a request key (`None` when the request has none) to an
    /// entry, the default, or nothing.
    pub fn resolve(&self, key: Option<&[u8]>, tally: &mut FitTally) -> Resolution {
        self.resolution(key.and_then(|key| self.get_tallied(key, tally)))
    }

    /// Hashes `key` for [`KeyTable::resolve_hashed`] and starts loading its
    /// place in the table. Calling this for several requests' keys before
    /// resolving any of them lets their cache misses overlap, as
    /// [`crate::RouteTable::route_batch`] does for hosts.
    #[inline]
    pub fn prefetch(&self, key: &[u8]) -> u64 {
        self.entries.prefetch(key)
    }

    /// Starts loading the entry a lookup of `key` will compare, once
    /// [`KeyTable::prefetch`] has brought in its place in the table. For a
    /// group of keys: [`KeyTable::prefetch`] for each, then this for each,
    /// then [`KeyTable::resolve_hashed`].
    #[inline]
    pub fn prefetch_entry(&self, key: &[u8], hash: u64) {
        self.entries.prefetch_record(key, hash);
    }

    /// Like [`KeyTable::resolve`], for a key given with the hash that
    /// [`KeyTable::prefetch`] returned for it.
    #[inline]
    pub fn resolve_hashed(&self, key: Option<(&[u8], u64)>, tally: &mut FitTally) -> Resolution {
        self.resolution(
            key.and_then(|(key, hash)| self.entries.get_hashed_tallied(key, hash, tally))
                .copied(),
        )
    }

    /// Returns the resolution of a key whose lookup found `found`.
    #[inline]
    fn resolution(&self, found: Option<KeyTarget>) -> Resolution {
        match (found, self.default) {
            (Some(target), _) => Resolution::Entry(target),
            (None, Some(target)) => Resolution::Default(target),
            (None, None) => Resolution::Missing,
        }
    }

    /// Inserts or replaces an entry, into its shard's delta if a published
    /// snapshot shares the shard. Returns the target it replaced.
    ///
    /// # Panics
    ///
    /// Panics if `key` is longer than [`MAX_KEY_LEN`].
    pub fn insert(&mut self, key: &[u8], target: KeyTarget) -> Option<KeyTarget> {
        self.entries.insert(key, target)
    }

    /// Calls `change` on the table for each of `items` in order, and stops
    /// at the first error, which it returns. Before each call it starts
    /// loading the table places of the keys of the items a few positions
    /// later, as `key` gives them, so that the cache misses of a batch's
    /// inserts and removes overlap instead of following one another. With
    /// random keys and 700,000 entries, a batch of 10,000 changes became
    /// visible about a quarter sooner in the update benchmark.
    pub fn apply_each<T, E>(
        &mut self,
        items: &[T],
        key: impl Fn(&T) -> &[u8],
        mut change: impl FnMut(&mut KeyTable, &T) -> Result<(), E>,
    ) -> Result<(), E> {
        const RING: usize = 2 * CHANGE_LOOKAHEAD;
        const HALF: usize = CHANGE_LOOKAHEAD;
        // `hashes[i % RING]` keeps the hash of item `i` from the prefetch
        // of its place until the prefetch of its entry.
        let mut hashes = [0u64; RING];
        for (index, item) in items.iter().enumerate().take(RING) {
            hashes[index] = self.entries.prefetch(key(item));
        }
        for (index, item) in items.iter().enumerate().take(HALF) {
            self.entries.prefetch_record(key(item), hashes[index]);
        }
        for (index, item) in items.iter().enumerate() {
            if let Some(ahead) = items.get(index + RING) {
                hashes[index % RING] = self.entries.prefetch(key(ahead));
            }
            if let Some(ahead) = items.get(index + HALF) {
                self.entries
                    .prefetch_record(key(ahead), hashes[(index + HALF) % RING]);
            }
            change(self, item)?;
        }
        Ok(())
    }

    /// Removes an entry, through its shard's delta if a published snapshot
    /// shares the shard. Returns the removed target.
    pub fn remove(&mut self, key: &[u8]) -> Option<KeyTarget> {
        self.entries.remove(key)
    }

    /// Returns the number of changes not yet folded into the shards.
    pub fn delta_len(&self) -> usize {
        self.entries.delta_len()
    }

    /// Folds the largest pending deltas into copies of their shards until
    /// about `max_entries` entries were gone through, and returns that
    /// count: 0 when no change was pending.
    pub fn fold_some(&mut self, max_entries: usize) -> usize {
        self.entries.fold_some(max_entries)
    }

    /// Releases spare key-arena capacity of every shard that no other
    /// table shares. Call it once a table is fully loaded.
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Returns the entry count, shard count, slots, heap bytes and pending
    /// delta entries.
    pub fn stats(&self) -> KeyTableStats {
        let shards = self.entries.shards();
        KeyTableStats {
            entries: self.entries.len(),
            shards: shards.len(),
            slots: shards.iter().map(|shard| shard.slots()).sum(),
            heap_bytes: self.entries.heap_bytes(),
            delta_entries: self.entries.delta_len(),
        }
    }

    /// Returns every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], KeyTarget)> + '_ {
        self.entries.iter().map(|(key, target)| (key, *target))
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("default", &self.default)
            .field("len", &self.entries.len())
            .field("shards", &self.entries.shards().len())
            .finish()
    }
}

/// Upstream and endpoint positions by name, for resolving entries.
#[derive(Clone, Debug, Default)]
pub struct UpstreamNames {
    upstreams: HashMap<String, (usize, HashMap<String, usize>)>,
}

impl UpstreamNames {
    /// Indexes the upstreams of `config`. With duplicate names the first
    /// one wins, as validation reports duplicates.
    pub fn new(config: &Config) -> UpstreamNames {
        let mut upstreams = HashMap::new();
        for (index, upstream) in config.upstreams.iter().enumerate() {
            upstreams.entry(upstream.name.clone()).or_insert_with(|| {
                let mut endpoints = HashMap::new();
                for (position, endpoint) in upstream.endpoints.iter().enumerate() {
                    endpoints
                        .entry(endpoint.address().to_string())
                        .or_insert(position);
                }
                (index, endpoints)
            });
        }
        UpstreamNames { upstreams }
    }

    /// Resolves an upstream name and an optional endpoint address of it.
    /// An unknown name or address gets an error that lists the nearest
    /// defined ones.
    pub fn resolve(&self, upstream: &str, endpoint: Option<&str>) -> Result<KeyTarget, String> {
        let Some((index, endpoints)) = self.upstreams.get(upstream) else {
            let names = in_config_order(
                self.upstreams
                    .iter()
                    .map(|(name, (index, _))| (name.as_str(), *index)),
            );
            let hint = suggestion(upstream, &names, "defined upstreams");
            return Err(format!(
                "upstream `{upstream}` is not defined in [[upstreams]]; {hint}"
            ));
        };
        let endpoint = match endpoint {
            None => None,
            Some(address) => Some(*endpoints.get(address).ok_or_else(|| {
                let listed = in_config_order(
                    endpoints
                        .iter()
                        .map(|(address, position)| (address.as_str(), *position)),
                );
                let hint = suggestion(address, &listed, &format!("endpoints of `{upstream}`"));
                format!("endpoint `{address}` is not an endpoint of upstream `{upstream}`; {hint}")
            })?),
        };
        Ok(KeyTarget::new(*index, endpoint))
    }
}

/// Returns the names ordered by their position in the config.
fn in_config_order<'a>(names: impl Iterator<Item = (&'a str, usize)>) -> Vec<&'a str> {
    let mut names: Vec<(&str, usize)> = names.collect();
    names.sort_unstable_by_key(|&(_, position)| position);
    names.into_iter().map(|(name, _)| name).collect()
}

/// One parsed line of an entry file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryLine<'a> {
    /// 1-based line number.
    pub line: usize,
    pub key: &'a str,
    pub upstream: &'a str,
    pub endpoint: Option<&'a str>,
}

/// An invalid line of an entry file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct EntryError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// Splits one entry, `key,upstream` or `key,upstream,endpoint`, trimming
/// spaces around each field.
pub fn parse_entry(text: &str) -> Result<(&str, &str, Option<&str>), String> {
    let mut fields = text.split(',').map(str::trim);
    let key = fields.next().unwrap_or_default();
    let upstream = fields.next();
    let endpoint = fields.next();
    if fields.next().is_some() {
        return Err(format!(
            "`{text}` has more than three fields; expected key,upstream[,endpoint]"
        ));
    }
    let Some(upstream) = upstream else {
        return Err(format!(
            "`{text}` has no upstream; expected key,upstream[,endpoint]"
        ));
    };
    if key.is_empty() {
        return Err("the key is empty".to_string());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "the key is {} bytes long; at most {MAX_KEY_LEN} are allowed",
            key.len()
        ));
    }
    if upstream.is_empty() {
        return Err(format!("key `{key}` has an empty upstream"));
    }
    let endpoint = match endpoint {
        Some("") => return Err(format!("key `{key}` has an empty endpoint")),
        other => other,
    };
    Ok((key, upstream, endpoint))
}

/// Parses an entry file: one `key,upstream[,endpoint]` per line. Blank lines
/// and lines starting with `#` are skipped, and so is a first line
/// `key,upstream` or `key,upstream,endpoint` (a header row). Stops at the
/// first invalid line.
pub fn parse_entries(text: &str) -> Result<Vec<EntryLine<'_>>, EntryError> {
    let (entries, mut errors) = parse_entries_all(text, 1);
    match errors.pop() {
        Some(error) => Err(error),
        None => Ok(entries),
    }
}

/// Parses an entry file like [`parse_entries`], but goes on past invalid
/// lines: returns the valid entries and up to `max_errors` invalid lines,
/// in file order. Stops at the error that reaches `max_errors`.
pub fn parse_entries_all(text: &str, max_errors: usize) -> (Vec<EntryLine<'_>>, Vec<EntryError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if entries.is_empty() && errors.is_empty() && is_header_row(trimmed) {
            continue;
        }
        match parse_entry(trimmed) {
            Ok((key, upstream, endpoint)) => entries.push(EntryLine {
                line,
                key,
                upstream,
                endpoint,
            }),
            Err(message) => {
                errors.push(EntryError { line, message });
                if errors.len() >= max_errors {
                    break;
                }
            }
        }
    }
    (entries, errors)
}

fn is_header_row(line: &str) -> bool {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    fields == ["key", "upstream"] || fields == ["key", "upstream", "endpoint"]
}

/// Builds a table from parsed entry lines, resolving upstream and endpoint
/// names. A key given twice keeps its last entry.
pub fn build_table(
    name: &str,
    spec: KeySpec,
    default: Option<KeyTarget>,
    lines: &[EntryLine<'_>],
    names: &UpstreamNames,
    sizing: TableSizing,
    counters: &Arc<FitCounters>,
) -> Result<KeyTable, EntryError> {
    let mut table = KeyTable::new(name, spec, default, lines.len(), sizing, counters);
    table.apply_each(
        lines,
        |entry| entry.key.as_bytes(),
        |table, entry| {
            let target = names
                .resolve(entry.upstream, entry.endpoint)
                .map_err(|message| EntryError {
                    line: entry.line,
                    message: format!("key `{}`: {message}", entry.key),
                })?;
            table.insert(entry.key.as_bytes(), target);
            Ok(())
        },
    )?;
    table.shrink_to_fit();
    Ok(table)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    /// Returns an empty table keyed by path segment 0, sized for
    /// `entries`, with counters of its own.
    fn empty_table(entries: usize) -> KeyTable {
        let sizing = TableSizing {
            capacity: 16,
            load_factor: 0.75,
        };
        let counters = FitCounters::new();
        KeyTable::new(
            "t",
            KeySpec::PathSegment(0),
            None,
            entries,
            sizing,
            &counters,
        )
    }

    proptest! {
        #[test]
        fn path_segment_matches_split(path in "[/ab%.]{0,12}", index in 0usize..5) {
            let expected = path
                .strip_prefix('/')
                .unwrap_or(&path)
                .split('/')
                .nth(index)
                .map(str::as_bytes);
            prop_assert_eq!(path_segment(&path, index), expected);
        }
    }

    proptest! {
        /// Batches applied with `apply_each` to a table that earlier
        /// snapshots share give the entries of a plain map, and leave the
        /// snapshots as they were.
        #[test]
        fn apply_each_matches_a_map(
            batches in prop::collection::vec(
                prop::collection::vec((0u16..600, prop::option::of(0u16..8)), 0..90),
                1..6,
            ),
        ) {
            let mut table = empty_table(8_192);
            let mut model = HashMap::new();
            for key in 0u16..400 {
                table.insert(format!("k{key}").as_bytes(), KeyTarget::new(0, None));
                model.insert(format!("k{key}").into_bytes(), KeyTarget::new(0, None));
            }
            let mut snapshots = Vec::new();
            for batch in &batches {
                snapshots.push((table.clone(), model.clone()));
                let changes: Vec<(Vec<u8>, Option<u16>)> = batch
                    .iter()
                    .map(|&(key, upstream)| (format!("k{key}").into_bytes(), upstream))
                    .collect();
                let mut expected = Vec::new();
                let mut returned = Vec::new();
                for (key, upstream) in &changes {
                    let target = upstream.map(|upstream| KeyTarget::new(usize::from(upstream), None));
                    expected.push(match target {
                        Some(target) => model.insert(key.clone(), target),
                        None => model.remove(key),
                    });
                }
                let applied = table.apply_each(&changes, |(key, _)| key, |table, (key, upstream)| {
                    returned.push(match upstream {
                        Some(upstream) => {
                            table.insert(key, KeyTarget::new(usize::from(*upstream), None))
                        }
                        None => table.remove(key),
                    });
                    Ok::<(), Infallible>(())
                });
                let Ok(()) = applied;
                prop_assert_eq!(returned, expected);
                prop_assert_eq!(table.len(), model.len());
            }
            snapshots.push((table, model));
            for (snapshot, model) in &snapshots {
                prop_assert_eq!(snapshot.len(), model.len());
                for key in 0u16..600 {
                    let key = format!("k{key}").into_bytes();
                    prop_assert_eq!(snapshot.get(&key), model.get(&key).copied());
                }
            }
        }
    }

    #[test]
    fn apply_each_stops_at_the_first_error() {
        let mut table = empty_table(64);
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let result = table.apply_each(
            &keys,
            |key| key.as_bytes(),
            |table, key| {
                if key == "k30" {
                    return Err(format!("{key} is invalid"));
                }
                table.insert(key.as_bytes(), KeyTarget::new(1, None));
                Ok(())
            },
        );
        assert_eq!(result, Err("k30 is invalid".to_string()));
        assert_eq!(table.len(), 30, "the changes before the error stay");
        assert_eq!(table.get(b"k29"), Some(KeyTarget::new(1, None)));
        assert_eq!(table.get(b"k31"), None, "no change after the error");
    }

    #[test]
    fn percent_decode_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%20b").as_ref(), b"a b");
        assert_eq!(percent_decode("%zz%4").as_ref(), b"%zz%4");
        assert_eq!(percent_decode("100%").as_ref(), b"100%");
        assert_eq!(percent_decode("plain").as_ref(), b"plain");
    }

    #[test]
    fn shards_fill_evenly() {
        let counters = FitCounters::new();
        let sizing = TableSizing {
            capacity: 16,
            load_factor: 0.75,
        };
        for format in [
            |i: usize| format!("tenant-{i:07}"),
            |i: usize| format!("{i}"),
            |i: usize| format!("{i:x}.shard.example.com"),
        ] {
            let mut table = KeyTable::new(
                "t",
                KeySpec::PathSegment(0),
                None,
                100_000,
                sizing,
                &counters,
            );
            for i in 0..100_000 {
                table.insert(format(i).as_bytes(), KeyTarget::new(0, None));
            }
            let shards = table.entries.shards();
            let mean = 100_000 / shards.len();
            let fullest = shards.iter().map(|shard| shard.len()).max().unwrap();
            let emptiest = shards.iter().map(|shard| shard.len()).min().unwrap();
            assert!(fullest < mean * 6 / 5, "{} of {mean}", fullest);
            assert!(emptiest > mean * 4 / 5, "{} of {mean}", emptiest);
        }
    }

    #[test]
    fn stats_count_pending_changes() {
        let counters = FitCounters::new();
        let sizing = TableSizing {
            capacity: 16,
            load_factor: 0.75,
        };
        let mut table = KeyTable::new(
            "t",
            KeySpec::PathSegment(0),
            None,
            20_000,
            sizing,
            &counters,
        );
        for i in 0..20_000 {
            table.insert(format!("tenant-{i:07}").as_bytes(), KeyTarget::new(0, None));
        }
        let built = table.stats();
        assert_eq!(built.delta_entries, 0, "a table never cloned has no delta");

        let published = table.clone();
        table.insert(b"tenant-0000001", KeyTarget::new(1, None));
        table.remove(b"tenant-0000002");
        let changed = table.stats();
        assert_eq!(changed.entries, 19_999);
        assert_eq!(changed.delta_entries, 2, "an upsert and a tombstone");
        assert!(changed.heap_bytes > built.heap_bytes, "deltas are counted");
        assert_eq!(published.stats(), built, "the published table is unchanged");
        assert_eq!(table.get(b"tenant-0000001"), Some(KeyTarget::new(1, None)));
        assert_eq!(table.get(b"tenant-0000002"), None);
        assert_eq!(
            published.get(b"tenant-0000002"),
            Some(KeyTarget::new(0, None))
        );
    }

    #[test]
    fn shard_count_follows_entries() {
        let counters = FitCounters::new();
        let sizing = TableSizing {
            capacity: 16,
            load_factor: 0.75,
        };
        let spec = KeySpec::PathSegment(0);
        let small = KeyTable::new("t", spec.clone(), None, 10, sizing, &counters);
        assert_eq!(small.stats().shards, 1);
        let large = KeyTable::new("t", spec, None, 100_000, sizing, &counters);
        assert_eq!(large.stats().shards, 32);
    }
}
