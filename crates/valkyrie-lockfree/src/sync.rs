//! Synchronization types used by the RCU module: the standard library's in
//! normal builds and loom's under `cfg(loom)`, so the loom model tests run
//! the same code.
//!
//! Under loom the snapshot cell is a loom `Mutex<Arc<T>>` instead of
//! `ArcSwap`, because arc-swap is not instrumented for loom. The mutex gives
//! the same contract that the RCU code relies on from arc-swap: a load
//! returns a snapshot that stays alive while held, and a swap is
//! linearizable with loads.

#[cfg(loom)]
pub(crate) use loom::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread,
};
#[cfg(not(loom))]
pub(crate) use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread,
};

/// Locks `mutex`, ignoring poisoning: every critical section in this crate
/// leaves its state consistent before anything that can panic runs.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(not(loom))]
mod cell {
    use std::sync::Arc;

    use arc_swap::ArcSwap;

    /// Shared pointer to the current snapshot.
    pub(crate) struct SnapshotCell<T>(Arc<ArcSwap<T>>);

    pub(crate) type CellGuard<T> = arc_swap::Guard<Arc<T>>;

    /// Per-thread cache of the current snapshot; a load costs one atomic
    /// load while the snapshot is unchanged.
    pub(crate) struct CellCache<T>(arc_swap::Cache<Arc<ArcSwap<T>>, Arc<T>>);

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(Arc::new(ArcSwap::new(value)))
        }

        #[inline]
        pub(crate) fn load(&self) -> CellGuard<T> {
            self.0.load()
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            self.0.load_full()
        }

        pub(crate) fn swap(&self, value: Arc<T>) -> Arc<T> {
            self.0.swap(value)
        }

        pub(crate) fn cache(&self) -> CellCache<T> {
            CellCache(arc_swap::Cache::new(Arc::clone(&self.0)))
        }
    }

    impl<T> CellCache<T> {
        #[inline]
        pub(crate) fn load(&mut self) -> &Arc<T> {
            self.0.load()
        }
    }
}

#[cfg(loom)]
mod cell {
    use loom::sync::{Arc, Mutex};

    pub(crate) struct SnapshotCell<T>(Arc<Mutex<Arc<T>>>);

    pub(crate) type CellGuard<T> = Arc<T>;

    pub(crate) struct CellCache<T> {
        cell: Arc<Mutex<Arc<T>>>,
        current: Arc<T>,
    }

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(Arc::new(Mutex::new(value)))
        }

        pub(crate) fn load(&self) -> CellGuard<T> {
            self.load_full()
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            Arc::clone(&self.0.lock().unwrap())
        }

        pub(crate) fn swap(&self, value: Arc<T>) -> Arc<T> {
            std::mem::replace(&mut *self.0.lock().unwrap(), value)
        }

        pub(crate) fn cache(&self) -> CellCache<T> {
            CellCache {
                cell: Arc::clone(&self.0),
                current: self.load_full(),
            }
        }
    }

    impl<T> CellCache<T> {
        pub(crate) fn load(&mut self) -> &Arc<T> {
            let latest = Arc::clone(&self.cell.lock().unwrap());
            self.current = latest;
            &self.current
        }
    }
}

pub(crate) use cell::{CellCache, CellGuard, SnapshotCell};
