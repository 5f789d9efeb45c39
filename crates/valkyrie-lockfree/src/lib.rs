//! Lock-free structures of the routing engine: the fingerprinted exact-match
//! table (FIT), the compressed radix arena (CRA) and snapshot publication
//! (RCU). Nothing here does I/O.
//!
//! - [`fit::Fit`]: open-addressing table from byte-string keys (host names,
//!   routing keys) to values, with 16-bit fingerprints per slot.
//! - [`sharded::ShardedFit`]: FIT shards shared between clones, copied on
//!   write, for large tables that change in batches (key tables).
//! - [`cra::Cra`]: path-compressed radix tree with exact and prefix entries,
//!   built per snapshot into one arena.
//! - [`rcu::Rcu`] and [`rcu::Publisher`]: immutable snapshots that readers
//!   load without locks, and a background thread that batches updates into
//!   new snapshots.
//!
//! `Fit` and `Cra` are mutated through `&mut self` and read through `&self`.
//! They are `Sync` when their values are, so one instance inside a published
//! snapshot serves every reader thread.

pub mod cra;
pub mod fit;
pub mod rcu;
pub mod sharded;
mod sync;

pub use cra::{Cra, CraBuilder, MatchKind};
pub use fit::{prefetch, Fit, FitCounters, FitStats, FitTally};
pub use rcu::{
    Publisher, PublisherConfig, PublisherStats, Rcu, RcuReader, RcuStats, Snapshot, SnapshotGuard,
};
pub use sharded::ShardedFit;
