//! The allocator: jemalloc as the global allocator, its statistics, and
//! returning free memory to the operating system.

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Returns the bytes of physically resident pages mapped by the allocator,
/// refreshed from jemalloc's statistics.
pub fn resident_bytes() -> Option<u64> {
    use tikv_jemalloc_ctl::{epoch, stats};

    epoch::advance().ok()?;
    stats::resident::read().ok().map(|bytes| bytes as u64)
}
