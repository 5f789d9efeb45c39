//! The Redis backend: one bucket per key shared by every replica, decided by
//! a Lua script on the Redis server, with local fallback while Redis is
//! unreachable.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tracing::{info, warn};

use super::local::Quota;

/// Maximum time a request waits for Redis before it is decided locally.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(50);

/// How often the background task checks Redis and, while it is down,
/// tries to reconnect.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Time allowed for connecting and for a probe's `PING`.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Takes up to a lease of tokens from one bucket, atomically, on Redis
/// server time.
///
/// The bucket is stored as its theoretical arrival time (TAT, GCRA) in
/// microseconds of the server clock: the bucket is full when TAT is at or
/// before now, and each token moves TAT one interval ahead. The script
/// grants the whole request or nothing, so every grant is one full lease
/// and Redis makes at most `rate / lease` grants per second per key.
///
/// KEYS[1]: bucket. ARGV[1]: interval between tokens in microseconds,
/// ARGV[2]: burst, ARGV[3]: tokens requested (1 to burst).
/// Returns `{granted, wait}`: the tokens granted, or 0 and the microseconds
/// until the requested number will be available.
const TAKE_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if tat < now then tat = now end
local available = math.floor((now + burst * interval - tat) / interval + 1e-9)
if available < requested then
  return {0, math.ceil(tat + (requested - burst) * interval - now)}
end
tat = tat + requested * interval
local ttl = math.ceil((tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', ttl)
return {requested, 0}
";

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The result of the take script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Tokens(u32),
    /// No tokens; the requested number will be available after this long.
    Wait(Duration),
}

/// One Redis server and its connection state.
pub struct RedisBackend {
    url: String,
    /// `host:port` or socket path, for logs; never the password.
    address: String,
    client: Option<redis::Client>,
    /// The live connection and a number that changes with each reconnect,
    /// so a failure on an old connection does not drop a new one.
    connection: Mutex<Option<(u64, MultiplexedConnection)>>,
    connections_made: AtomicU64,
    state: AtomicU8,
    down_since: Mutex<Option<Instant>>,
    monitor_started: AtomicBool,
    script: redis::Script,
}

impl RedisBackend {
    /// Creates the backend and, inside a Tokio runtime, starts the task that
    /// connects and keeps probing. Requests are decided locally until the
    /// first connection succeeds.
    pub fn start(url: &str) -> Arc<RedisBackend> {
        let client = redis::Client::open(url);
        let address = match &client {
            Ok(client) => client.get_connection_info().addr.to_string(),
            Err(_) => "invalid URL".to_string(),
        };
        let backend = Arc::new(RedisBackend {
            url: url.to_string(),
            address,
            client: client.as_ref().ok().cloned(),
            connection: Mutex::new(None),
            connections_made: AtomicU64::new(0),
            state: AtomicU8::new(CONNECTING),
            down_since: Mutex::new(None),
            monitor_started: AtomicBool::new(false),
            script: redis::Script::new(TAKE_SCRIPT),
        });
        if let Err(error) = client {
            backend.mark_down(&format!("invalid Redis URL: {error}"));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            backend.ensure_monitor();
        }
        backend
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// Starts the probe task once; it ends when the backend is dropped.
    pub fn ensure_monitor(self: &Arc<Self>) {
        // The load keeps the request path from writing the shared flag.
        if self.client.is_none()
            || self.monitor_started.load(Ordering::Acquire)
            || self.monitor_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let backend = Arc::downgrade(self);
        tokio::spawn(monitor(backend));
    }

    /// Requests `requested` tokens of the bucket `key` from Redis.
    pub async fn take(&self, key: &[u8], quota: &Quota, requested: u32) -> Result<Grant, String> {
        let Some((id, mut connection)) = self.current_connection() else {
            return Err("not connected".to_string());
        };
        let interval_micros = quota.interval().as_secs_f64() * 1e6;
        let mut invocation = self.script.key(key);
        invocation
            .arg(interval_micros)
            .arg(quota.burst.get())
            .arg(requested);
        let call = invocation.invoke_async::<(i64, i64)>(&mut connection);
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no reply within {CALL_TIMEOUT:?}")),
        };
        match outcome {
            Ok((granted, _)) if granted > 0 => Ok(Grant::Tokens(granted as u32)),
            Ok((_, wait)) => Ok(Grant::Wait(Duration::from_micros(wait.max(1) as u64))),
            Err(error) => {
                self.drop_connection(id);
                self.mark_down(&error);
                Err(error)
            }
        }
    }

    fn current_connection(&self) -> Option<(u64, MultiplexedConnection)> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn drop_connection(&self, id: u64) {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if connection
            .as_ref()
            .is_some_and(|(current, _)| *current == id)
        {
            *connection = None;
        }
    }

    /// Checks the connection with `PING`, reconnecting first when there is
    /// none, and records whether Redis is up.
    async fn probe(&self) {
        let Some(client) = &self.client else { return };
        let (id, mut connection) = match self.current_connection() {
            Some(current) => current,
            None => match connect(client, &self.script).await {
                Ok(connection) => {
                    let id = self.connections_made.fetch_add(1, Ordering::Relaxed) + 1;
                    (id, connection)
                }
                Err(error) => {
                    self.mark_down(&error);
                    return;
                }
            },
        };
        let ping = redis::cmd("PING");
        match tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<String>(&mut connection)).await
        {
            Ok(Ok(_)) => {
                *self
                    .connection
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((id, connection));
                self.mark_up();
            }
            Ok(Err(error)) => {
                self.drop_connection(id);
                self.mark_down(&error.to_string());
            }
            Err(_) => {
                self.drop_connection(id);
                self.mark_down(&format!("no reply to PING within {PROBE_TIMEOUT:?}"));
            }
        }
    }

    /// Records an outage; only its start is logged.
    fn mark_down(&self, error: &str) {
        let previous = self.state.swap(DOWN, Ordering::AcqRel);
        if previous != DOWN {
            *self
                .down_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
            warn!(redis = %self.address, %error, "Redis is unreachable; rate limits fall back to per-replica counting until it is back");
        }
    }

    fn mark_up(&self) {
        let previous = self.state.swap(UP, Ordering::AcqRel);
        match previous {
            CONNECTING => {
                info!(redis = %self.address, "connected to Redis; rate limits are shared across replicas")
            }
            DOWN => {
                let outage = self
                    .down_since
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take()
                    .map_or(0.0, |since| since.elapsed().as_secs_f64());
                info!(redis = %self.address, outage_seconds = format!("{outage:.1}"), "Redis is reachable again; rate limits are shared across replicas again");
            }
            _ => {}
        }
    }
}

/// Opens a connection with short timeouts and loads the script, so that
/// requests after a Redis restart need no extra round trip for it.
async fn connect(
    client: &redis::Client,
    script: &redis::Script,
) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(PROBE_TIMEOUT)
        .set_response_timeout(PROBE_TIMEOUT);
    let attempt = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| error.to_string())?;
        script
            .prepare_invoke()
            .load_async(&mut connection)
            .await
            .map_err(|error| format!("loading the rate limit script failed: {error}"))?;
        Ok(connection)
    };
    match tokio::time::timeout(PROBE_TIMEOUT * 2, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "connecting took longer than {:?}",
            PROBE_TIMEOUT * 2
        )),
    }
}

async fn monitor(backend: Weak<RedisBackend>) {
    loop {
        let Some(strong) = backend.upgrade() else {
            return;
        };
        strong.probe().await;
        drop(strong);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
