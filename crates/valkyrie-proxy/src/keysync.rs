//! Key tables kept in Redis hashes and shared by every replica.
//!
//! # Protocol
//!
//! A key table with `source = { redis_hash = "NAME" }` reads the Redis hash
//! `NAME`. Each field of the hash is a key, and its value is `upstream` or
//! `upstream,endpoint`, as in an entry file.
//!
//! A writer changes the hash with `HSET` or `HDEL` and then publishes, on
//! the channel also named `NAME`, a message listing the changed keys, one
//! per line. An empty message requests a full read of the hash by every
//! replica. [`write_changes`] does both steps in one `MULTI`/`EXEC`
//! transaction, so a replica never receives the message without the change.
//!
//! A replica reads the current value of each listed key with `HMGET`. A
//! message therefore names the keys to read, not their values:
//! messages may repeat, arrive late or in any order, and the hash decides.
//!
//! At start and after every reconnect, a replica first subscribes and then
//! reads the whole hash with `HSCAN`, so a change made in between is read
//! twice rather than missed. While Redis is unreachable, the replica keeps
//! serving the entries it has and retries every few hundred milliseconds.
//!
//! Changes go through the same RCU batching as the admin API, so a change
//! serves requests within `rcu_grace_period` plus the Redis round trips.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tracing::{info, warn};
use valkyrie_config::TableSource;
use valkyrie_router::keys::{KeyTable, TableSizing, UpstreamNames, MAX_KEY_LEN};

use crate::keys::{parse_target, KeyChange, Replacement, TableOrigin};
use crate::state::ProxyState;

/// URL used when the config has no `[redis]` section.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Keys written or read per Redis command.
pub const CHUNK: usize = 1000;

/// Keys collected from messages before they are applied as one batch.
const MAX_KEYS_PER_BATCH: usize = 10_000;

/// Time allowed to connect and for each command.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How often a connected follower sends PING to check the connection.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// First and longest wait between reconnect attempts.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// While Redis stays unreachable, the failure is logged again this often.
const DOWN_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Invalid entries quoted in the log per whole-table read.
const LOGGED_INVALID: usize = 5;

/// Counters and state of the follower, read by metrics and `/ready`.
#[derive(Default)]
pub struct SyncStatus {
    /// True while some key table of the running config reads Redis.
    following: AtomicBool,
    /// True while the follower is connected and subscribed.
    up: AtomicBool,
    /// Keys applied from messages.
    changes: AtomicU64,
    /// Whole-table reads applied.
    loads: AtomicU64,
    /// Entries or values skipped because they were invalid.
    invalid: AtomicU64,
    /// Tables of the first config not read yet; `None` once all were.
    first_pending: Mutex<Option<HashSet<String>>>,
    first_done: AtomicBool,
    first_done_notify: tokio::sync::Notify,
    last_error: Mutex<Option<String>>,
}

/// Snapshot of the follower's counters and state.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub following: bool,
    pub up: bool,
    pub changes: u64,
    pub loads: u64,
    pub invalid: u64,
    /// True once every Redis table of the config the process started with
    /// was read in full.
    pub first_load_done: bool,
    pub last_error: Option<String>,
}

impl SyncStatus {
    fn table_loaded(&self, name: &str) {
        let mut pending = lock(&self.first_pending);
        if let Some(tables) = pending.as_mut() {
            tables.remove(name);
            if tables.is_empty() {
                *pending = None;
                self.first_done.store(true, Ordering::Release);
                self.first_done_notify.notify_waiters();
            }
        }
    }

    fn set_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }
}

/// A running follower task and what it follows.
struct Follower {
    url: String,
    /// (table name, hash name) of every Redis table.
    tables: Vec<(String, String)>,
    /// Origins of the tables the follower was last configured with. A
    /// table whose origin is new was rebuilt by a reload, so it is read
    /// again.
    seen: Vec<Arc<TableOrigin>>,
    wake: Arc<Wake>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tables to read in full, handed from `follow` to the task.
#[derive(Default)]
struct Wake {
    tables: Mutex<Vec<String>>,
    notify: tokio::sync::Notify,
}

impl Wake {
    fn request(&self, tables: impl IntoIterator<Item = String>) {
        lock(&self.tables).extend(tables);
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<String> {
        let mut tables = std::mem::take(&mut *lock(&self.tables));
        tables.sort();
        tables.dedup();
        tables
    }
}

/// Follows the Redis hashes of the running config's key tables.
#[derive(Default)]
pub struct KeySync {
    follower: Mutex<Option<Follower>>,
    status: Arc<SyncStatus>,
}

impl KeySync {
    /// Starts, restarts or stops the follower to match the config of
    /// `state`'s current snapshot, and requests a new read of every table
    /// that a reload rebuilt. Call it inside a Tokio runtime after start
    /// and after each reload.
    pub fn follow(&self, state: &Arc<ProxyState>) {
        let snapshot = state.snapshot.load_full();
        let mut tables = Vec::new();
        let mut origins = Vec::new();
        for loaded in &snapshot.key_tables {
            if let TableSource::RedisHash(hash) = &loaded.origin.config.source {
                tables.push((loaded.origin.config.name.clone(), hash.clone()));
                origins.push(Arc::clone(&loaded.origin));
            }
        }
        let url = snapshot
            .config
            .redis
            .as_ref()
            .map_or_else(|| DEFAULT_URL.to_string(), |redis| redis.url.clone());
        drop(snapshot);

        if !self.status.first_done.load(Ordering::Acquire) {
            let mut pending = lock(&self.status.first_pending);
            let names: HashSet<String> = tables.iter().map(|(name, _)| name.clone()).collect();
            let waiting = match pending.take() {
                // A reload before the first read: wait only for tables
                // that are still configured.
                Some(waiting) => waiting.intersection(&names).cloned().collect(),
                None => names,
            };
            if waiting.is_empty() {
                self.status.first_done.store(true, Ordering::Release);
                self.status.first_done_notify.notify_waiters();
            } else {
                *pending = Some(waiting);
            }
        }

        let mut follower = lock(&self.follower);
        if tables.is_empty() {
            if follower.take().is_some() {
                info!("no key table reads Redis any more; stopped following Redis");
            }
            self.status.following.store(false, Ordering::Relaxed);
            self.status.up.store(false, Ordering::Relaxed);
            return;
        }
        self.status.following.store(true, Ordering::Relaxed);
        if let Some(running) = follower.as_mut() {
            if running.url == url && running.tables == tables {
                let rebuilt: Vec<String> = origins
                    .iter()
                    .filter(|origin| !running.seen.iter().any(|seen| Arc::ptr_eq(seen, origin)))
                    .map(|origin| origin.config.name.clone())
                    .collect();
                running.seen = origins;
                if !rebuilt.is_empty() {
                    running.wake.request(rebuilt);
                }
                return;
            }
        }
        // A new follower reads every table when it connects.
        let wake = Arc::new(Wake::default());
        let task = tokio::spawn(run(
            Arc::downgrade(state),
            url.clone(),
            tables.clone(),
            Arc::clone(&self.status),
            Arc::clone(&wake),
        ));
        self.status.up.store(false, Ordering::Relaxed);
        *follower = Some(Follower {
            url,
            tables,
            seen: origins,
            wake,
            task,
        });
    }

    /// Returns the follower's counters and state.
    pub fn status(&self) -> SyncReport {
        let status = &self.status;
        SyncReport {
            following: status.following.load(Ordering::Relaxed),
            up: status.up.load(Ordering::Relaxed),
            changes: status.changes.load(Ordering::Relaxed),
            loads: status.loads.load(Ordering::Relaxed),
            invalid: status.invalid.load(Ordering::Relaxed),
            first_load_done: status.first_done.load(Ordering::Acquire),
            last_error: lock(&status.last_error).clone(),
        }
    }

    /// Returns the Redis tables of the first config that were never read.
    pub fn first_load_pending(&self) -> Vec<String> {
        let mut tables: Vec<String> = lock(&self.status.first_pending)
            .iter()
            .flatten()
            .cloned()
            .collect();
        tables.sort();
        tables
    }

    /// Waits until every Redis table of the first config was read, for at
    /// most `timeout`. Returns whether they were.
    pub async fn wait_first_load(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.status.first_done_notify.notified();
            if self.status.first_done.load(Ordering::Acquire) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.status.first_done.load(Ordering::Acquire);
            }
        }
    }
}

impl std::fmt::Debug for KeySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySync")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Returns the address part of a Redis URL for logs, without a password.
fn redis_address(client: &redis::Client) -> String {
    client.get_connection_info().addr.to_string()
}

/// Returns the server address of a Redis URL, without user or password,
/// for messages.
pub fn display_address(url: &str) -> String {
    redis::Client::open(url).map_or_else(
        |_| "an invalid Redis URL".to_string(),
        |client| redis_address(&client),
    )
}

/// Runs the follower: connects, reads every table, applies messages, and
/// reconnects after any failure until the state is dropped.
async fn run(
    state: Weak<ProxyState>,
    url: String,
    tables: Vec<(String, String)>,
    status: Arc<SyncStatus>,
    wake: Arc<Wake>,
) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(client) => client,
        Err(error) => {
            let message = format!("invalid [redis] url: {error}");
            warn!(error = %message, "key tables cannot follow Redis");
            status.set_error(Some(message));
            return;
        }
    };
    let address = redis_address(&client);
    let mut retry = RETRY_MIN;
    let mut down_since: Option<Instant> = None;
    let mut last_logged: Option<Instant> = None;
    let mut connected_before = false;
    loop {
        let mut session = Session {
            state: &state,
            status: &status,
            tables: &tables,
            wake: &wake,
            address: &address,
            connected: false,
        };
        let outcome = session.serve(&client, connected_before).await;
        if session.connected {
            // The outage, if any, starts now.
            connected_before = true;
            retry = RETRY_MIN;
            down_since = None;
            last_logged = None;
        }
        let Err(error) = outcome else {
            return;
        };
        status.up.store(false, Ordering::Relaxed);
        status.set_error(Some(error.clone()));
        let now = Instant::now();
        let since = *down_since.get_or_insert(now);
        if last_logged.is_none_or(|at| now.duration_since(at) >= DOWN_LOG_INTERVAL) {
            warn!(
                redis = %address,
                %error,
                down_for_s = now.duration_since(since).as_secs(),
                "cannot follow key tables in Redis; they keep the entries they have and the follower retries"
            );
            last_logged = Some(now);
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
        if state.strong_count() == 0 {
            return;
        }
    }
}

/// One connection to Redis, from connect to the first failure.
struct Session<'a> {
    state: &'a Weak<ProxyState>,
    status: &'a SyncStatus,
    tables: &'a [(String, String)],
    wake: &'a Wake,
    address: &'a str,
    /// Set once the session has subscribed and read every table.
    connected: bool,
}

impl Session<'_> {
    /// Returns `Ok` when the state went away, and the failure otherwise.
    async fn serve(&mut self, client: &redis::Client, reconnect: bool) -> Result<(), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let pubsub = tokio::time::timeout(TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| "connect: timed out".to_string())?
            .map_err(|error| format!("connect: {error}"))?;
        let (mut sink, mut messages) = pubsub.split();
        let mut hashes: Vec<&str> = self.tables.iter().map(|(_, hash)| hash.as_str()).collect();
        hashes.sort_unstable();
        hashes.dedup();
        for hash in &hashes {
            tokio::time::timeout(TIMEOUT, sink.subscribe(*hash))
                .await
                .map_err(|_| format!("SUBSCRIBE {hash}: timed out"))?
                .map_err(|error| format!("SUBSCRIBE {hash}: {error}"))?;
        }
        // Requests queued before this connection are covered by the read
        // below.
        self.wake.take();
        for (table, _) in self.tables {
            let Some(state) = self.state.upgrade() else {
                return Ok(());
            };
            load_table(&state, &mut connection, table, self.status).await?;
        }
        self.connected = true;
        self.status.up.store(true, Ordering::Relaxed);
        self.status.set_error(None);
        if reconnect {
            info!(redis = %self.address, tables = self.tables.len(), "reconnected to Redis; key tables were read in full");
        } else {
            info!(redis = %self.address, tables = self.tables.len(), "following key tables in Redis");
        }

        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err("the subscription connection closed".to_string());
                    };
                    let mut pending = Pending::default();
                    pending.add(&message);
                    while pending.keys < MAX_KEYS_PER_BATCH {
                        match messages.next().now_or_never() {
                            Some(Some(message)) => pending.add(&message),
                            Some(None) => break,
                            None => break,
                        }
                    }
                    let Some(state) = self.state.upgrade() else {
                        return Ok(());
                    };
                    self.apply(&state, &mut connection, pending).await?;
                }
                () = self.wake.notify.notified() => {
                    for table in self.wake.take() {
                        let Some(state) = self.state.upgrade() else {
                            return Ok(());
                        };
                        if self.tables.iter().any(|(name, _)| *name == table) {
                            load_table(&state, &mut connection, &table, self.status).await?;
                        }
                    }
                }
                _ = ping.tick() => {
                    if self.state.strong_count() == 0 {
                        return Ok(());
                    }
                    redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .map_err(|error| format!("PING: {error}"))?;
                }
            }
        }
    }

    /// Reads the current value of every key the messages named and applies
    /// them to each table of their hash.
    async fn apply(
        &self,
        state: &Arc<ProxyState>,
        connection: &mut MultiplexedConnection,
        pending: Pending,
    ) -> Result<(), String> {
        for hash in pending.reload {
            for (table, _) in self.tables.iter().filter(|(_, name)| *name == hash) {
                load_table(state, connection, table, self.status).await?;
            }
        }
        for (hash, keys) in pending.changed {
            let mut keys: Vec<Vec<u8>> = keys.into_iter().collect();
            keys.sort_unstable();
            let mut values = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(CHUNK) {
                let chunk_values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                    .arg(&hash)
                    .arg(chunk)
                    .query_async(connection)
                    .await
                    .map_err(|error| format!("HMGET {hash}: {error}"))?;
                values.extend(chunk_values);
            }
            let mut changes = Vec::with_capacity(keys.len());
            for (key, value) in keys.iter().zip(values) {
                match value {
                    None => changes.push(KeyChange {
                        key: key.as_slice().into(),
                        target: None,
                    }),
                    Some(value) => match parse_value(key, &value) {
                        Ok(target) => changes.push(KeyChange {
                            key: key.as_slice().into(),
                            target: Some(target),
                        }),
                        Err(problem) => {
                            self.status.invalid.fetch_add(1, Ordering::Relaxed);
                            warn!(hash = %hash, %problem, "skipped an invalid key-table entry in Redis; the table keeps its previous entry for that key");
                        }
                    },
                }
            }
            for (table, _) in self.tables.iter().filter(|(_, name)| *name == hash) {
                let Some(outcome) = state.engine.apply_keys(state, table, changes.clone()).await
                else {
                    return Err("the key-table publisher is not running".to_string());
                };
                self.status.changes.fetch_add(
                    (outcome.upserted + outcome.deleted) as u64,
                    Ordering::Relaxed,
                );
                for problem in outcome.rejected.iter().take(LOGGED_INVALID) {
                    warn!(table = %table, hash = %hash, %problem, "skipped a key-table entry from Redis");
                }
                self.status
                    .invalid
                    .fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Keys named by a run of messages, by hash.
#[derive(Default)]
struct Pending {
    changed: HashMap<String, HashSet<Vec<u8>>>,
    /// Hashes that an empty message asked to read in full.
    reload: Vec<String>,
    keys: usize,
}

impl Pending {
    fn add(&mut self, message: &redis::Msg) {
        let hash = message.get_channel_name().to_string();
        let payload = message.get_payload_bytes();
        if payload.is_empty() {
            if !self.reload.contains(&hash) {
                self.reload.push(hash);
            }
            return;
        }
        let keys = self.changed.entry(hash).or_default();
        for key in payload.split(|&byte| byte == b'\n') {
            let key = key.strip_suffix(b"\r").unwrap_or(key);
            if !key.is_empty() && keys.insert(key.to_vec()) {
                self.keys += 1;
            }
        }
    }
}

/// Checks a key and parses its value, `upstream` or `upstream,endpoint`.
fn parse_value(key: &[u8], value: &[u8]) -> Result<(String, Option<String>), String> {
    check_key(key)?;
    let text = std::str::from_utf8(value).map_err(|_| {
        format!(
            "key `{}`: the value is not UTF-8",
            String::from_utf8_lossy(key)
        )
    })?;
    parse_target(text)
        .map_err(|problem| format!("key `{}`: {problem}", String::from_utf8_lossy(key)))
}

/// Checks a key read from Redis as an entry file's key is checked.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key is empty".to_string());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key `{}...` is {} bytes long; at most {MAX_KEY_LEN} are allowed",
            String::from_utf8_lossy(&key[..32]),
            key.len()
        ));
    }
    if key.contains(&b'\n') {
        return Err(format!(
            "key `{}` contains a line break, which the change messages cannot carry",
            String::from_utf8_lossy(key).escape_default()
        ));
    }
    Ok(())
}

/// Reads the whole hash of `table` and replaces the table's entries. A
/// reload that rebuilds the table during the read makes it read again, up
/// to three times. The reload's `follow` call also requests another read.
async fn load_table(
    state: &Arc<ProxyState>,
    connection: &mut MultiplexedConnection,
    table: &str,
    status: &SyncStatus,
) -> Result<(), String> {
    for _ in 0..3 {
        if load_table_once(state, connection, table, status).await? {
            return Ok(());
        }
        info!(
            table,
            "key table was reloaded while it was read from Redis; reading it again"
        );
    }
    Ok(())
}

/// Returns false when a reload replaced the table before the read applied.
async fn load_table_once(
    state: &Arc<ProxyState>,
    connection: &mut MultiplexedConnection,
    table: &str,
    status: &SyncStatus,
) -> Result<bool, String> {
    let started = Instant::now();
    let (origin, hash, spec, default, names, sizing, counters, previous) = {
        let snapshot = state.snapshot.load();
        let Some(loaded) = snapshot
            .key_tables
            .iter()
            .find(|loaded| loaded.origin.config.name == table)
        else {
            // A reload removed the table; its `follow` call restarts the
            // follower.
            return Ok(true);
        };
        let TableSource::RedisHash(hash) = &loaded.origin.config.source else {
            return Ok(true);
        };
        (
            Arc::clone(&loaded.origin),
            hash.clone(),
            loaded.table.spec().clone(),
            loaded.table.default_target(),
            UpstreamNames::new(&snapshot.config),
            TableSizing::from_config(&snapshot.config),
            Arc::clone(snapshot.routes.fit_counters()),
            Arc::clone(&loaded.table),
        )
    };
    let previous_len = previous.len();

    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, fields): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(&hash)
            .arg(cursor)
            .arg("COUNT")
            .arg(CHUNK)
            .query_async(connection)
            .await
            .map_err(|error| format!("HSCAN {hash}: {error}"))?;
        let mut fields = fields.into_iter();
        while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            entries.push((key, value));
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }

    let mut new_table = KeyTable::new(table, spec, default, entries.len(), sizing, &counters);
    let mut invalid = 0usize;
    let filled = new_table.apply_each(
        &entries,
        |(key, _)| key,
        |new_table, (key, value)| {
            let target = parse_value(key, value).and_then(|(upstream, endpoint)| {
                names
                    .resolve(&upstream, endpoint.as_deref())
                    .map_err(|problem| format!("key `{}`: {problem}", String::from_utf8_lossy(key)))
            });
            match target {
                Ok(target) => {
                    new_table.insert(key, target);
                }
                Err(problem) => {
                    // As with a change message, the key keeps the entry it had.
                    if let Some(target) = previous.get(key) {
                        new_table.insert(key, target);
                    }
                    if invalid < LOGGED_INVALID {
                        warn!(table, hash = %hash, %problem, "skipped an invalid key-table entry in Redis; the key keeps its previous entry, if any");
                    }
                    invalid += 1;
                }
            }
            Ok::<(), Infallible>(())
        },
    );
    let Ok(()) = filled;
    drop(entries);
    new_table.shrink_to_fit();
    let entry_count = new_table.len();
    let layout = origin.layout;
    let replacement = Replacement {
        origin,
        layout,
        table: Mutex::new(Some(new_table)),
    };
    let Some(outcome) = state.engine.replace_keys(state, table, replacement).await else {
        return Err("the key-table publisher is not running".to_string());
    };
    if !outcome.rejected.is_empty() {
        return Ok(false);
    }
    status.loads.fetch_add(1, Ordering::Relaxed);
    status.invalid.fetch_add(invalid as u64, Ordering::Relaxed);
    if entry_count == 0 && previous_len > 0 {
        warn!(table, hash = %hash, previous_entries = previous_len, "the Redis hash of a key table is empty or missing; the table is now empty");
    }
    info!(
        table,
        hash = %hash,
        entries = entry_count,
        invalid,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "key table read from Redis"
    );
    status.table_loaded(table);
    Ok(true)
}

/// Opens a blocking connection for [`write_changes`] and [`hash_keys`].
pub fn connect(url: &str) -> Result<redis::Connection, String> {
    let client =
        redis::Client::open(url).map_err(|error| format!("invalid Redis URL `{url}`: {error}"))?;
    let address = redis_address(&client);
    let connection = client
        .get_connection_with_timeout(TIMEOUT)
        .map_err(|error| format!("cannot connect to Redis at {address}: {error}"))?;
    connection
        .set_read_timeout(Some(TIMEOUT * 5))
        .and_then(|()| connection.set_write_timeout(Some(TIMEOUT * 5)))
        .map_err(|error| format!("cannot set timeouts on the Redis connection: {error}"))?;
    Ok(connection)
}

/// Counts reported by [`write_changes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Change messages published.
    pub messages: usize,
    /// Keys that HDEL removed; keys that were not in the hash do not count.
    pub deleted: u64,
    /// Subscribers that received the last message, as PUBLISH counts them:
    /// the routers following the hash, on a single Redis server.
    pub receivers: u64,
}

/// Writes upserts and deletes to hash `hash` and publishes the changed keys
/// on the channel of the same name, in transactions of at most [`CHUNK`]
/// keys each.
pub fn write_changes(
    connection: &mut redis::Connection,
    hash: &str,
    upserts: &[(String, String)],
    deletes: &[String],
) -> redis::RedisResult<WriteSummary> {
    let mut summary = WriteSummary::default();
    for chunk in upserts.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let command = pipe.cmd("HSET").arg(hash);
        for (key, value) in chunk {
            command.arg(key).arg(value);
        }
        command.ignore();
        let keys: Vec<&str> = chunk.iter().map(|(key, _)| key.as_str()).collect();
        pipe.cmd("PUBLISH").arg(hash).arg(keys.join("\n"));
        let (receivers,): (u64,) = pipe.query(connection)?;
        summary.messages += 1;
        summary.receivers = receivers;
    }
    for chunk in deletes.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HDEL").arg(hash).arg(chunk);
        pipe.cmd("PUBLISH").arg(hash).arg(chunk.join("\n"));
        let (deleted, receivers): (u64, u64) = pipe.query(connection)?;
        summary.messages += 1;
        summary.deleted += deleted;
        summary.receivers = receivers;
    }
    Ok(summary)
}

/// Returns every key of hash `hash`.
pub fn hash_keys(
    connection: &mut redis::Connection,
    hash: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, fields): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg(hash)
            .arg(cursor)
            .arg("COUNT")
            .arg(CHUNK)
            .query(connection)?;
        keys.extend(fields.into_iter().step_by(2));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_like_entry_targets() {
        assert_eq!(
            parse_value(b"acme", b"api").unwrap(),
            ("api".to_string(), None)
        );
        assert_eq!(
            parse_value(b"acme", b"api, 127.0.0.1:9001").unwrap(),
            ("api".to_string(), Some("127.0.0.1:9001".to_string()))
        );
        assert!(parse_value(b"acme", b"").unwrap_err().contains("acme"));
        assert!(parse_value(b"acme", b"a,b,c").is_err());
        assert!(parse_value(b"acme", &[0xff]).unwrap_err().contains("UTF-8"));
        assert!(parse_value(b"", b"api").is_err());
        assert!(parse_value(b"a\nb", b"api").is_err());
        assert!(parse_value(&[b'k'; MAX_KEY_LEN + 1], b"api").is_err());
    }

    #[test]
    fn wake_requests_are_deduplicated() {
        let wake = Wake::default();
        wake.request(["b".to_string(), "a".to_string()]);
        wake.request(["b".to_string()]);
        assert_eq!(wake.take(), ["a", "b"]);
        assert!(wake.take().is_empty());
    }
}
