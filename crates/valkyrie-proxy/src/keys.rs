//! Key tables in the routing snapshot: loading their entry files, applying
//! batches of changes from the admin API, and resolving a request's key to
//! an upstream and an optional pinned endpoint.
//!
//! A reload rereads every entry file. A table whose file, settings and
//! upstream layout (names and endpoint addresses) did not change keeps its
//! entries, including the changes made through the admin API since it was
//! loaded. Any other table is built from its file again, which drops those
//! changes.
//!
//! A table whose source is a Redis hash is never read here: the follower in
//! [`crate::keysync`] loads it and applies its changes. A snapshot build
//! keeps such a table when its settings and the upstream layout did not
//! change. Otherwise it copies the entries of the previous table of the
//! same hash, resolved again by upstream and endpoint name, or starts the
//! table empty. The follower then reads the hash again.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderMap;
use tracing::{info, warn};
use valkyrie_config::{Config, KeyTableConfig, TableSource};
use valkyrie_lockfree::{FitCounters, FitTally};
use valkyrie_router::keys::{
    build_table, parse_entries, KeySpec, KeyTable, KeyTarget, Resolution, TableSizing,
    UpstreamNames,
};

use crate::error::{ErrorKind, ProxyError};
use crate::state::Snapshot;

/// Maximum length of a key value quoted in an error message, in bytes.
const QUOTED_KEY_LEN: usize = 64;

/// Error of a key table that cannot be loaded: the table, the config key
/// at fault (none when the entry file is), the message and a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableError {
    pub table: String,
    /// Position of the table in `[[key_tables]]`.
    pub index: usize,
    /// `key`, `source` or `default_upstream`, or `None` for a problem
    /// inside the entry file, whose message names the file and line.
    pub key: Option<&'static str>,
    pub message: String,
    pub hint: Option<String>,
}

impl TableError {
    /// Returns the dotted config key at fault, such as
    /// `key_tables[0].source`.
    pub fn config_key(&self) -> Option<String> {
        self.key
            .map(|key| format!("key_tables[{}].{key}", self.index))
    }
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key table `{}`: {}", self.table, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TableError {}

/// Returns the hint for an entry file that cannot be read.
fn unreadable_file_hint(error: &std::io::Error) -> Option<String> {
    match error.kind() {
        std::io::ErrorKind::NotFound => Some(
            "a relative path starts at the config file's folder; create the file with `key,upstream[,endpoint]` lines or correct `source`"
                .to_string(),
        ),
        std::io::ErrorKind::IsADirectory => {
            Some("`source` names a folder; name the entry file in it".to_string())
        }
        std::io::ErrorKind::PermissionDenied => {
            Some("give the user the router runs as read permission on the file".to_string())
        }
        _ => None,
    }
}

/// A key table of a snapshot with where its entries came from.
#[derive(Clone, Debug)]
pub struct LoadedTable {
    pub table: Arc<KeyTable>,
    pub origin: Arc<TableOrigin>,
}

/// The settings and file a table was loaded from. Tables that share an
/// origin (the same `Arc`) descend from one load.
#[derive(Debug)]
pub struct TableOrigin {
    pub config: KeyTableConfig,
    /// The entry file, resolved against the config file's folder.
    pub path: PathBuf,
    /// Hash of the file's bytes.
    content_hash: u64,
    /// Hash of every upstream's name and endpoint addresses, which entries
    /// refer to by position.
    pub layout: u64,
    /// Entries read from the file.
    pub file_entries: usize,
}

/// Loads the `[[key_tables]]` of `config`. Tables whose origin did not
/// change since `previous` are taken over with their entries. Relative
/// file paths resolve against `base_dir` (the current directory when
/// `None`).
///
/// Reads files, so call it where blocking is allowed.
pub fn load_tables(
    config: &Config,
    previous: Option<&Snapshot>,
    base_dir: Option<&Path>,
    counters: &Arc<FitCounters>,
) -> Result<Vec<LoadedTable>, TableError> {
    let names = UpstreamNames::new(config);
    let layout = upstream_layout(config);
    let sizing = TableSizing::from_config(config);
    let mut tables = Vec::with_capacity(config.key_tables.len());
    for (index, table_config) in config.key_tables.iter().enumerate() {
        let name = &table_config.name;
        let error = |key: Option<&'static str>, message: String, hint: Option<String>| TableError {
            table: name.clone(),
            index,
            key,
            message,
            hint,
        };
        let spec = KeySpec::from_config(&table_config.key)
            .map_err(|message| error(Some("key"), message, None))?;
        let default = match &table_config.default_upstream {
            Some(upstream) => Some(names.resolve(upstream, None).map_err(|message| {
                error(
                    Some("default_upstream"),
                    format!("default_upstream: {message}"),
                    None,
                )
            })?),
            None => None,
        };
        let file = match &table_config.source {
            TableSource::File(file) => file,
            TableSource::RedisHash(hash) => {
                let redis = RedisTable {
                    config: table_config,
                    hash,
                    spec,
                    default,
                    layout,
                };
                tables.push(redis.build(previous, &names, sizing, counters));
                continue;
            }
        };
        let path = resolve_path(base_dir, file);
        let bytes = std::fs::read(&path).map_err(|io| {
            error(
                Some("source"),
                format!("cannot read {}: {io}", path.display()),
                unreadable_file_hint(&io),
            )
        })?;
        let content_hash = hash_of(&bytes);

        let kept = previous.and_then(|previous| {
            previous.key_tables.iter().find(|loaded| {
                let origin = &loaded.origin;
                origin.config == *table_config
                    && origin.path == path
                    && origin.content_hash == content_hash
                    && origin.layout == layout
            })
        });
        if let Some(kept) = kept {
            tables.push(kept.clone());
            continue;
        }

        let text = String::from_utf8(bytes).map_err(|_| {
            error(
                None,
                format!("{} is not valid UTF-8", path.display()),
                Some("save the entry file as UTF-8".to_string()),
            )
        })?;
        let entries = parse_entries(&text)
            .map_err(|entry| error(None, format!("{}: {entry}", path.display()), None))?;
        let table = build_table(name, spec, default, &entries, &names, sizing, counters)
            .map_err(|entry| error(None, format!("{}: {entry}", path.display()), None))?;
        if previous.is_some() {
            info!(table = %name, file = %path.display(), entries = table.len(), "key table loaded from its file");
        }
        tables.push(LoadedTable {
            table: Arc::new(table),
            origin: Arc::new(TableOrigin {
                config: table_config.clone(),
                path,
                content_hash,
                layout,
                file_entries: entries.len(),
            }),
        });
    }
    Ok(tables)
}

/// A table loaded from a Redis hash, with what a snapshot build needs to
/// keep or rebuild it.
struct RedisTable<'c> {
    config: &'c KeyTableConfig,
    hash: &'c str,
    spec: KeySpec,
    default: Option<KeyTarget>,
    layout: u64,
}

impl RedisTable<'_> {
    /// Keeps the previous table when nothing it depends on changed, carries
    /// the entries of the previous table of the same hash over otherwise,
    /// and starts empty when there is none.
    fn build(
        self,
        previous: Option<&Snapshot>,
        names: &UpstreamNames,
        sizing: TableSizing,
        counters: &Arc<FitCounters>,
    ) -> LoadedTable {
        let unchanged = previous.and_then(|previous| {
            previous.key_tables.iter().find(|loaded| {
                loaded.origin.config == *self.config && loaded.origin.layout == self.layout
            })
        });
        if let Some(unchanged) = unchanged {
            return unchanged.clone();
        }
        let name = &self.config.name;
        let source = previous.and_then(|previous| {
            let loaded = previous.key_tables.iter().find(|loaded| {
                matches!(&loaded.origin.config.source, TableSource::RedisHash(hash) if hash == self.hash)
            })?;
            Some((previous, loaded))
        });
        let entries = source.map_or(0, |(_, loaded)| loaded.table.len());
        let mut table = KeyTable::new(name, self.spec, self.default, entries, sizing, counters);
        if let Some((previous, loaded)) = source {
            let mut dropped = 0usize;
            for (key, target) in loaded.table.iter() {
                match rename_target(&previous.config, target, names) {
                    Some(target) => {
                        table.insert(key, target);
                    }
                    None => dropped += 1,
                }
            }
            table.shrink_to_fit();
            if dropped > 0 {
                warn!(
                    table = %name,
                    hash = self.hash,
                    dropped,
                    "key-table entries name upstreams or endpoints that the new configuration removed; they are dropped until Redis is read again"
                );
            }
        }
        LoadedTable {
            table: Arc::new(table),
            origin: Arc::new(TableOrigin {
                config: self.config.clone(),
                path: PathBuf::new(),
                content_hash: 0,
                layout: self.layout,
                file_entries: 0,
            }),
        }
    }
}

/// Resolves a target of `old` by its upstream name and endpoint address
/// in the layout of `names`.
fn rename_target(old: &Config, target: KeyTarget, names: &UpstreamNames) -> Option<KeyTarget> {
    let upstream = old.upstreams.get(target.upstream())?;
    let endpoint = match target.endpoint() {
        Some(index) => Some(upstream.endpoints.get(index)?.address()),
        None => None,
    };
    names.resolve(&upstream.name, endpoint).ok()
}

fn resolve_path(base_dir: Option<&Path>, file: &str) -> PathBuf {
    let path = Path::new(file);
    match base_dir {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    }
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Hashes every upstream's name and endpoint addresses, which key-table
/// targets refer to by position.
pub fn upstream_layout(config: &Config) -> u64 {
    let mut hasher = DefaultHasher::new();
    for upstream in &config.upstreams {
        upstream.name.hash(&mut hasher);
        for endpoint in &upstream.endpoints {
            endpoint.address().hash(&mut hasher);
        }
        0xffu8.hash(&mut hasher);
    }
    hasher.finish()
}

/// Replaces each table of `tables` that descends from the same load as a
/// table of `current` with that table, so that changes published while the
/// new snapshot was being built are kept.
pub(crate) fn carry_over(tables: &mut [LoadedTable], current: &Snapshot) {
    for table in tables.iter_mut() {
        if let Some(newer) = current
            .key_tables
            .iter()
            .find(|candidate| Arc::ptr_eq(&candidate.origin, &table.origin))
        {
            table.table = Arc::clone(&newer.table);
        }
    }
}

/// Returns the total number of entries in a snapshot's key tables.
pub fn entry_count(snapshot: &Snapshot) -> usize {
    snapshot
        .key_tables
        .iter()
        .map(|loaded| loaded.table.len())
        .sum()
}

/// Finds the upstream (and the pinned endpoint, if any) for a request on a
/// route whose target is key table `index`. `path` is the normalized path.
pub(crate) fn resolve(
    snapshot: &Snapshot,
    index: usize,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    tally: &mut FitTally,
) -> Result<(usize, Option<usize>), ProxyError> {
    let Some(loaded) = snapshot.key_tables.get(index) else {
        return Err(ProxyError::new(
            ErrorKind::NoRoute,
            format!("key table #{index} is not loaded"),
        ));
    };
    let table = &loaded.table;
    let key = table.spec().extract(path, query, headers);
    match table.resolve(key.as_deref(), tally) {
        Resolution::Entry(target) | Resolution::Default(target) => {
            Ok((target.upstream(), target.endpoint()))
        }
        Resolution::Missing => Err(ProxyError::new(
            ErrorKind::NoRoute,
            missing_message(table, key.as_deref()),
        )),
    }
}

fn missing_message(table: &KeyTable, key: Option<&[u8]>) -> String {
    let name = table.name();
    let spec = table.spec();
    match key {
        None => format!(
            "the request has no {spec}, the key of key table `{name}`, and the table has no default_upstream"
        ),
        Some(key) => {
            let shown = &key[..key.len().min(QUOTED_KEY_LEN)];
            let ellipsis = if key.len() > QUOTED_KEY_LEN { "..." } else { "" };
            format!(
                "key table `{name}` has no entry for {spec} value \"{}{ellipsis}\" and no default_upstream",
                String::from_utf8_lossy(shown).escape_default()
            )
        }
    }
}

/// One change to a key table: an upsert names the upstream and optionally
/// an endpoint address of it; `None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    pub key: Box<[u8]>,
    pub target: Option<(String, Option<String>)>,
}

/// A whole new table for the loaded table of `origin`, built from its Redis
/// hash in the upstream layout `layout`.
#[derive(Debug)]
pub struct Replacement {
    pub origin: Arc<TableOrigin>,
    pub layout: u64,
    /// Taken out when the batch is applied; the publisher hands batches out
    /// by shared reference.
    pub table: std::sync::Mutex<Option<KeyTable>>,
}

/// The changes of one admin request or Redis message to one table, applied
/// in one snapshot.
#[derive(Debug)]
pub struct KeyBatch {
    pub table: String,
    pub changes: Vec<KeyChange>,
    /// Replaces every entry before `changes` apply.
    pub replacement: Option<Replacement>,
    /// Receives the outcome once the batch is applied. The publisher hands
    /// batches out by shared reference, hence the mutex around the
    /// one-shot sender.
    pub reply: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<BatchOutcome>>>,
}

/// Result of applying a [`KeyBatch`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchOutcome {
    /// Generation of the snapshot that contains the batch.
    pub generation: u64,
    /// Keys inserted or replaced.
    pub upserted: usize,
    /// Keys removed.
    pub deleted: usize,
    /// Deletes of keys that had no entry.
    pub not_found: usize,
    /// Changes that could not be applied, each with its reason. A reload
    /// that removed the table or an upstream between the request's
    /// validation and its application causes these.
    pub rejected: Vec<String>,
}

/// Builds the snapshot that follows `current` with `batches` applied.
/// Replies to each batch before the snapshot is published; the caller
/// waits for the generation to become visible.
pub(crate) fn apply_batches(current: &Snapshot, batches: &[KeyBatch]) -> Snapshot {
    let generation = current.generation + 1;
    let names = UpstreamNames::new(&current.config);
    let mut tables = current.key_tables.clone();
    for batch in batches {
        let outcome = apply_batch(&mut tables, &names, batch, generation);
        let reply = batch
            .reply
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(reply) = reply {
            // The admin request may have gone away; the batch stays applied.
            let _ = reply.send(outcome);
        }
    }
    for loaded in tables.iter_mut() {
        if let Some(table) = Arc::get_mut(&mut loaded.table) {
            table.shrink_to_fit();
        }
    }
    current.with_key_tables(tables)
}

/// Base entries that one idle fold copies at most, summed over the key
/// tables: 16 shards of the 4,096 entries a key-table shard is sized for,
/// a few MiB of copying per publish.
pub(crate) const IDLE_FOLD_ENTRIES: usize = 16 * 4096;

/// Builds the snapshot that follows `current` with some of its key
/// tables' pending deltas folded into their shards, about `max_entries`
/// entries' worth, or returns `None` when no table has a delta. The
/// publisher calls it while no batch arrives, so that lookups stop
/// probing deltas without one publish copying whole tables.
pub(crate) fn fold_deltas(current: &Snapshot, max_entries: usize) -> Option<Snapshot> {
    if current
        .key_tables
        .iter()
        .all(|loaded| loaded.table.delta_len() == 0)
    {
        return None;
    }
    let mut tables = current.key_tables.clone();
    let mut budget = max_entries;
    for loaded in tables.iter_mut() {
        if loaded.table.delta_len() == 0 {
            continue;
        }
        let table = Arc::make_mut(&mut loaded.table);
        budget = budget.saturating_sub(table.fold_some(budget));
        table.shrink_to_fit();
        if budget == 0 {
            break;
        }
    }
    Some(current.with_key_tables(tables))
}

fn apply_batch(
    tables: &mut [LoadedTable],
    names: &UpstreamNames,
    batch: &KeyBatch,
    generation: u64,
) -> BatchOutcome {
    let mut outcome = BatchOutcome {
        generation,
        ..BatchOutcome::default()
    };
    let Some(loaded) = tables
        .iter_mut()
        .find(|loaded| **loaded.table.name() == *batch.table)
    else {
        outcome.rejected.push(format!(
            "key table `{}` is not in the running configuration",
            batch.table
        ));
        return outcome;
    };
    if let Some(replacement) = &batch.replacement {
        let table = replacement
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match table {
            Some(table)
                if Arc::ptr_eq(&loaded.origin, &replacement.origin)
                    && loaded.origin.layout == replacement.layout =>
            {
                outcome.upserted += table.len();
                loaded.table = Arc::new(table);
            }
            _ => {
                outcome.rejected.push(format!(
                    "key table `{}` was reloaded while its entries were read; they are read again",
                    batch.table
                ));
                return outcome;
            }
        }
    }
    let table = Arc::make_mut(&mut loaded.table);
    let applied = table.apply_each(
        &batch.changes,
        |change| &change.key,
        |table, change| {
            match &change.target {
                Some((upstream, endpoint)) => match names.resolve(upstream, endpoint.as_deref()) {
                    Ok(target) => {
                        table.insert(&change.key, target);
                        outcome.upserted += 1;
                    }
                    Err(message) => outcome.rejected.push(format!(
                        "key `{}`: {message}",
                        String::from_utf8_lossy(&change.key)
                    )),
                },
                None => match table.remove(&change.key) {
                    Some(_) => outcome.deleted += 1,
                    None => outcome.not_found += 1,
                },
            }
            Ok::<(), Infallible>(())
        },
    );
    let Ok(()) = applied;
    outcome
}

/// Parses `upstream` or `upstream,endpoint`, the short form of an upsert.
pub fn parse_target(text: &str) -> Result<(String, Option<String>), String> {
    let mut fields = text.split(',').map(str::trim);
    let upstream = fields.next().unwrap_or_default();
    let endpoint = fields.next();
    if fields.next().is_some() || upstream.is_empty() || endpoint == Some("") {
        return Err(format!(
            "`{text}` is not a target; expected \"upstream\" or \"upstream,endpoint\""
        ));
    }
    Ok((upstream.to_string(), endpoint.map(str::to_string)))
}
