//! Token leases for the Redis backend: tokens that Redis granted to this
//! replica for one key, spent locally until they run out or expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// How long granted tokens stay usable. Tokens left at expiry are dropped,
/// never returned, so the error of a lease is toward admitting fewer
/// requests than the limit.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

const SHARDS: usize = 64;

#[derive(Default)]
struct Lease {
    tokens: u32,
    expires: Option<Instant>,
    /// Redis had no tokens for this key; requests are rejected here without
    /// asking again until this instant.
    denied_until: Option<Instant>,
    /// Set while one request fetches tokens from Redis; the others wait for it.
    fetch: Option<Arc<Notify>>,
}

impl Lease {
    fn is_idle(&self, now: Instant) -> bool {
        self.fetch.is_none()
            && self.expires.is_none_or(|at| at <= now)
            && self.denied_until.is_none_or(|at| at <= now)
    }
}

/// Outcome of taking a token from the lease table.
pub enum Take<'a> {
    /// A leased token was spent.
    Admitted,
    /// Redis reported no tokens a moment ago; retry after this long.
    Denied(Duration),
    /// Another request is asking Redis; wait for it, then take again.
    Wait(OwnedNotified),
    /// This request fetches tokens from Redis and stores the result through
    /// the guard.
    Fetch(FetchGuard<'a>),
}

/// Leases of one scope, keyed by the 64-bit key hash and split into shards
/// so that requests for different keys rarely share a lock.
pub struct LeaseTable {
    shards: Box<[Mutex<HashMap<u64, Lease>>]>,
}

impl Default for LeaseTable {
    fn default() -> Self {
        LeaseTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl LeaseTable {
    fn shard(&self, key: u64) -> MutexGuard<'_, HashMap<u64, Lease>> {
        let index = (key % SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spends a leased token of `key` if one is left. Otherwise returns the
    /// cached denial, a wait for another request's fetch, or a fetch guard.
    pub fn take(&self, key: u64, now: Instant) -> Take<'_> {
        let mut shard = self.shard(key);
        let lease = shard.entry(key).or_default();
        if lease.tokens > 0 && lease.expires.is_some_and(|at| at > now) {
            lease.tokens -= 1;
            return Take::Admitted;
        }
        if let Some(until) = lease.denied_until {
            if until > now {
                return Take::Denied(until - now);
            }
            lease.denied_until = None;
        }
        if let Some(notify) = &lease.fetch {
            return Take::Wait(notify.clone().notified_owned());
        }
        lease.tokens = 0;
        let notify = Arc::new(Notify::new());
        lease.fetch = Some(notify.clone());
        Take::Fetch(FetchGuard {
            table: self,
            key,
            notify,
        })
    }

    /// Drops leases that hold nothing usable any more.
    pub fn sweep(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.retain(|_, lease| !lease.is_idle(now));
        }
    }

    /// Keys with a lease entry now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |shard| shard.len()))
            .sum()
    }
}

/// The right to fetch one key's tokens from Redis. Dropping it without a
/// result (the request failed or was cancelled) lets another request fetch.
pub struct FetchGuard<'a> {
    table: &'a LeaseTable,
    key: u64,
    notify: Arc<Notify>,
}

impl FetchGuard<'_> {
    /// Stores a grant of `granted` tokens, one of which the fetching request
    /// spends itself.
    pub fn granted(self, granted: u32, now: Instant) {
        self.finish(|lease| {
            lease.tokens = granted.saturating_sub(1);
            lease.expires = Some(now + LEASE_TTL);
        });
    }

    /// Stores a denial: no request for this key calls Redis again before
    /// `until`.
    pub fn denied(self, until: Instant) {
        self.finish(|lease| lease.denied_until = Some(until));
    }

    fn finish(self, update: impl FnOnce(&mut Lease)) {
        {
            let mut shard = self.table.shard(self.key);
            let lease = shard.entry(self.key).or_default();
            update(lease);
        }
        // Drop clears `fetch` and wakes the waiters.
    }
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        {
            let mut shard = self.table.shard(self.key);
            if let Some(lease) = shard.get_mut(&self.key) {
                if lease
                    .fetch
                    .as_ref()
                    .is_some_and(|notify| Arc::ptr_eq(notify, &self.notify))
                {
                    lease.fetch = None;
                }
            }
        }
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect_fetch(take: Take<'_>) -> FetchGuard<'_> {
        match take {
            Take::Fetch(guard) => guard,
            _ => panic!("expected this request to fetch"),
        }
    }

    #[test]
    fn grant_is_spent_then_fetched_again() {
        let table = LeaseTable::default();
        let now = Instant::now();
        expect_fetch(table.take(1, now)).granted(3, now);
        assert!(matches!(table.take(1, now), Take::Admitted));
        assert!(matches!(table.take(1, now), Take::Admitted));
        expect_fetch(table.take(1, now));
    }

    #[test]
    fn expired_tokens_are_dropped() {
        let table = LeaseTable::default();
        let now = Instant::now();
        expect_fetch(table.take(1, now)).granted(10, now);
        let later = now + LEASE_TTL + Duration::from_millis(1);
        expect_fetch(table.take(1, later));
    }

    #[test]
    fn second_request_waits_for_fetch() {
        let table = LeaseTable::default();
        let now = Instant::now();
        let guard = expect_fetch(table.take(1, now));
        assert!(matches!(table.take(1, now), Take::Wait(_)));
        assert!(
            matches!(table.take(2, now), Take::Fetch(_)),
            "other keys fetch on their own"
        );
        guard.granted(2, now);
        assert!(matches!(table.take(1, now), Take::Admitted));
    }

    #[test]
    fn denial_is_cached_until_its_instant() {
        let table = LeaseTable::default();
        let now = Instant::now();
        expect_fetch(table.take(1, now)).denied(now + Duration::from_millis(500));
        match table.take(1, now + Duration::from_millis(100)) {
            Take::Denied(wait) => assert_eq!(wait, Duration::from_millis(400)),
            _ => panic!("expected the cached denial"),
        }
        expect_fetch(table.take(1, now + Duration::from_millis(500)));
    }

    #[test]
    fn dropped_guard_lets_another_request_fetch() {
        let table = LeaseTable::default();
        let now = Instant::now();
        drop(expect_fetch(table.take(1, now)));
        expect_fetch(table.take(1, now));
    }

    #[tokio::test]
    async fn waiters_wake_when_fetch_ends() {
        let table = LeaseTable::default();
        let now = Instant::now();
        let guard = expect_fetch(table.take(1, now));
        let Take::Wait(notified) = table.take(1, now) else {
            panic!("expected the second request to wait");
        };
        guard.granted(2, now);
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("the waiter is woken when the grant is stored");
    }

    #[test]
    fn sweep_drops_idle_leases() {
        let table = LeaseTable::default();
        let now = Instant::now();
        expect_fetch(table.take(1, now)).granted(5, now);
        expect_fetch(table.take(2, now)).denied(now + Duration::from_secs(10));
        table.sweep(now + LEASE_TTL);
        assert_eq!(table.len(), 1, "only the denied key is still held");
    }
}
