//! Process-wide request limits: the concurrency limit with its wait queue
//! (`[routing] max_concurrent_requests`, `queue_timeout`) and the IP deny
//! list (`[security] deny_list` plus entries changed through the admin API).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::net::Cidr;

/// Limits the requests proxied at once. A request over the limit waits in a
/// queue for a slot, up to a timeout.
pub struct ConcurrencyLimiter {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    released: Notify,
}

/// A slot of the concurrency limit, given back when dropped.
pub struct ConcurrencyPermit {
    limiter: Arc<ConcurrencyLimiter>,
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.limiter.queued.load(Ordering::Acquire) > 0 {
            self.limiter.released.notify_one();
        }
    }
}

/// Counts a request in the queue while it waits.
struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimiter {
    pub fn new(limit: usize) -> Arc<ConcurrencyLimiter> {
        Arc::new(ConcurrencyLimiter {
            limit: AtomicUsize::new(limit.max(1)),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            released: Notify::new(),
        })
    }

    /// Changes the limit; waiting requests take the slots a raise opens.
    pub fn set_limit(&self, limit: usize) {
        let previous = self.limit.swap(limit.max(1), Ordering::AcqRel);
        if limit > previous {
            self.released.notify_waiters();
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Returns the requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Returns the requests waiting for a slot now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyPermit> {
        let limit = self.limit.load(Ordering::Acquire);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current < limit).then_some(current + 1)
            })
            .ok()
            .map(|_| ConcurrencyPermit {
                limiter: self.clone(),
            })
    }

    /// Takes a slot, waiting up to `timeout` for one; `None` when none
    /// freed up in time.
    pub async fn acquire(self: &Arc<Self>, timeout: Duration) -> Option<ConcurrencyPermit> {
        if let Some(permit) = self.try_acquire() {
            return Some(permit);
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _queued = QueuedGuard(&self.queued);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a release between the check
            // and the wait still wakes this request.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return Some(permit);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.try_acquire();
            }
        }
    }
}

/// One deny-list entry: an address or a CIDR range.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DenyEntry {
    /// Canonical text: the masked network and the prefix, or a bare
    /// address for a single-address range.
    text: String,
    range: Cidr,
    /// The address when the entry covers exactly one.
    host: Option<IpAddr>,
}

impl DenyEntry {
    fn parse(text: &str) -> Result<DenyEntry, String> {
        let range = Cidr::parse(text)?;
        let trimmed = text.trim();
        let (address, prefix) = match trimmed.split_once('/') {
            Some((address, prefix)) => (address, prefix.parse::<u8>().ok()),
            None => (trimmed, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("invalid address `{trimmed}`"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        let network = mask(address, prefix);
        let (text, host) = if prefix == max {
            (network.to_string(), Some(network.to_canonical()))
        } else {
            (format!("{network}/{prefix}"), None)
        };
        Ok(DenyEntry { text, range, host })
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & bits).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & bits).into())
        }
    }
}

/// The entries in force, arranged for matching: single addresses in a
/// hash set, ranges in a list.
#[derive(Default)]
struct DenySet {
    hosts: HashSet<IpAddr>,
    ranges: Vec<Cidr>,
}

impl DenySet {
    fn contains(&self, address: IpAddr) -> bool {
        if self.hosts.is_empty() && self.ranges.is_empty() {
            return false;
        }
        self.hosts.contains(&address.to_canonical())
            || self.ranges.iter().any(|range| range.contains(address))
    }
}

#[derive(Default)]
struct Lists {
    config: Vec<DenyEntry>,
    /// Entries added through the admin API that the config lacks.
    added: Vec<DenyEntry>,
    /// Config entries removed through the admin API.
    removed: Vec<DenyEntry>,
}

impl Lists {
    fn effective(&self) -> Vec<&DenyEntry> {
        self.config
            .iter()
            .filter(|entry| !self.removed.contains(entry))
            .chain(self.added.iter())
            .collect()
    }
}

/// The deny-list entries, as `GET /admin/deny-list` shows them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DenyListView {
    /// From `[security] deny_list`.
    pub config: Vec<String>,
    /// Added through the admin API.
    pub added: Vec<String>,
    /// Config entries removed through the admin API.
    pub removed: Vec<String>,
    /// The entries that connections are matched against.
    pub effective: Vec<String>,
}

/// Source addresses whose connections are closed at accept, and whose
/// requests on connections accepted earlier get 403.
///
/// The effective list is the config's `deny_list` plus entries added through
/// the admin API, minus config entries removed through it. Admin changes
/// apply at once and survive reloads that leave `deny_list` as it was. A
/// reload that changes `deny_list` drops them, and the config's list applies.
#[derive(Default)]
pub struct DenyList {
    lists: Mutex<Lists>,
    effective: ArcSwap<DenySet>,
}

impl DenyList {
    /// Builds the list from `[security] deny_list`; entries that do not
    /// parse are skipped with a warning (validation rejects them earlier).
    pub fn new(config: &[String]) -> DenyList {
        let list = DenyList::default();
        list.set_config(config);
        list
    }

    /// Returns true when connections and requests from `address` are refused.
    pub fn denies(&self, address: IpAddr) -> bool {
        self.effective.load().contains(address)
    }

    /// Applies the deny list of a newly published config.
    pub fn set_config(&self, config: &[String]) {
        let entries: Vec<DenyEntry> = config
            .iter()
            .filter_map(|text| match DenyEntry::parse(text) {
                Ok(entry) => Some(entry),
                Err(error) => {
                    warn!(entry = %text, %error, "deny_list entry skipped");
                    None
                }
            })
            .collect();
        let mut lists = self.lists.lock().unwrap();
        if lists.config == entries {
            return;
        }
        if !lists.added.is_empty() || !lists.removed.is_empty() {
            info!(
                added = lists.added.len(),
                removed = lists.removed.len(),
                "[security] deny_list changed; entries changed through the admin API were dropped"
            );
        }
        *lists = Lists {
            config: entries,
            added: Vec::new(),
            removed: Vec::new(),
        };
        self.publish(&lists);
    }

    /// Adds and removes entries. Every entry is checked first; one invalid
    /// entry rejects the whole change. Removing an entry that is in no list
    /// changes nothing.
    pub fn update(&self, add: &[String], remove: &[String]) -> Result<DenyListView, String> {
        let parse = |texts: &[String]| -> Result<Vec<DenyEntry>, String> {
            texts.iter().map(|text| DenyEntry::parse(text)).collect()
        };
        let add = parse(add)?;
        let remove = parse(remove)?;
        let mut lists = self.lists.lock().unwrap();
        for entry in remove {
            if let Some(index) = lists.added.iter().position(|e| *e == entry) {
                lists.added.remove(index);
            } else if lists.config.contains(&entry) && !lists.removed.contains(&entry) {
                lists.removed.push(entry);
            }
        }
        for entry in add {
            if let Some(index) = lists.removed.iter().position(|e| *e == entry) {
                lists.removed.remove(index);
            } else if !lists.config.contains(&entry) && !lists.added.contains(&entry) {
                lists.added.push(entry);
            }
        }
        self.publish(&lists);
        Ok(view_of(&lists))
    }

    pub fn view(&self) -> DenyListView {
        view_of(&self.lists.lock().unwrap())
    }

    fn publish(&self, lists: &Lists) {
        let mut set = DenySet::default();
        for entry in lists.effective() {
            match entry.host {
                Some(host) => {
                    set.hosts.insert(host);
                }
                None => set.ranges.push(entry.range),
            }
        }
        self.effective.store(Arc::new(set));
    }
}

fn view_of(lists: &Lists) -> DenyListView {
    let texts = |entries: &[DenyEntry]| entries.iter().map(|e| e.text.clone()).collect();
    DenyListView {
        config: texts(&lists.config),
        added: texts(&lists.added),
        removed: texts(&lists.removed),
        effective: lists
            .effective()
            .into_iter()
            .map(|e| e.text.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|text| text.to_string()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn entries_are_canonical() {
        assert_eq!(DenyEntry::parse("10.1.2.3/8").unwrap().text, "10.0.0.0/8");
        assert_eq!(DenyEntry::parse(" 192.0.2.7 ").unwrap().text, "192.0.2.7");
        assert_eq!(DenyEntry::parse("192.0.2.7/32").unwrap().text, "192.0.2.7");
        assert_eq!(
            DenyEntry::parse("2001:db8::1/32").unwrap().text,
            "2001:db8::/32"
        );
        assert!(DenyEntry::parse("10.0.0.0/40").is_err());
        assert!(DenyEntry::parse("example.com").is_err());
    }

    #[test]
    fn matches_hosts_ranges_and_mapped_addresses() {
        let list = DenyList::new(&strings(&["192.0.2.7", "10.0.0.0/8", "2001:db8::/32"]));
        assert!(list.denies(ip("192.0.2.7")));
        assert!(list.denies(ip("::ffff:192.0.2.7")));
        assert!(list.denies(ip("10.9.8.7")));
        assert!(list.denies(ip("2001:db8::5")));
        assert!(!list.denies(ip("192.0.2.8")));
        assert!(!list.denies(ip("127.0.0.1")));
    }

    #[test]
    fn admin_changes_survive_same_config() {
        let list = DenyList::new(&strings(&["10.0.0.0/8", "192.0.2.7"]));
        let view = list
            .update(&strings(&["198.51.100.0/24"]), &strings(&["192.0.2.7"]))
            .unwrap();
        assert_eq!(view.added, ["198.51.100.0/24"]);
        assert_eq!(view.removed, ["192.0.2.7"]);
        assert_eq!(view.effective, ["10.0.0.0/8", "198.51.100.0/24"]);
        assert!(!list.denies(ip("192.0.2.7")));

        list.set_config(&strings(&["10.0.0.0/8", "192.0.2.7"]));
        assert!(list.denies(ip("198.51.100.1")));
        assert!(!list.denies(ip("192.0.2.7")));

        list.set_config(&strings(&["10.0.0.0/8"]));
        assert_eq!(list.view().added, Vec::<String>::new());
        assert!(!list.denies(ip("198.51.100.1")));
    }

    #[test]
    fn add_then_remove_restores() {
        let list = DenyList::new(&[]);
        list.update(&strings(&["127.0.0.2"]), &[]).unwrap();
        assert!(list.denies(ip("127.0.0.2")));
        let view = list.update(&[], &strings(&["127.0.0.2/32"])).unwrap();
        assert!(view.effective.is_empty());
        assert!(!list.denies(ip("127.0.0.2")));
    }

    #[test]
    fn invalid_entry_rejects_whole_update() {
        let list = DenyList::new(&[]);
        let error = list
            .update(&strings(&["127.0.0.2", "not-an-address"]), &[])
            .unwrap_err();
        assert!(error.contains("not-an-address"), "{error}");
        assert!(!list.denies(ip("127.0.0.2")));
    }

    proptest! {
        #[test]
        fn range_entry_matches_like_cidr(a in any::<u32>(), b in any::<u32>(), prefix in 0u8..=32) {
            let network = std::net::Ipv4Addr::from(a);
            let text = format!("{network}/{prefix}");
            let list = DenyList::new(std::slice::from_ref(&text));
            let probe = IpAddr::V4(b.into());
            prop_assert_eq!(list.denies(probe), Cidr::parse(&text).unwrap().contains(probe));
        }
    }

    #[tokio::test]
    async fn queue_counts_waiters_and_times_out() {
        let limiter = ConcurrencyLimiter::new(1);
        let held = limiter.acquire(Duration::ZERO).await.expect("free slot");
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(Duration::from_secs(30)).await.is_some() })
        };
        while limiter.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.queue_depth(), 1);
        drop(held);
        assert!(waiter.await.unwrap());
        assert_eq!(limiter.queue_depth(), 0);
        assert_eq!(limiter.in_flight(), 0);

        let _held = limiter.acquire(Duration::ZERO).await.unwrap();
        assert!(limiter.acquire(Duration::ZERO).await.is_none());
        assert_eq!(limiter.queue_depth(), 0);
    }

    #[tokio::test]
    async fn raising_limit_wakes_waiters() {
        let limiter = ConcurrencyLimiter::new(1);
        let _held = limiter.acquire(Duration::ZERO).await.unwrap();
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(Duration::from_secs(30)).await.is_some() })
        };
        while limiter.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        limiter.set_limit(2);
        assert!(waiter.await.unwrap());
    }
}
