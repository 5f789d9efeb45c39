//! The allocator and memory operations: jemalloc as the global allocator,
//! heap profiles and allocator statistics on SIGUSR1, shedding caches and
//! returning free memory to the OS on SIGUSR2 and `POST /admin/memory/purge`,
//! and the `[performance] max_heap_size` soft limit.
//!
//! Report files go to the log folder: the folder of `[logging] file` when
//! one is set, else `./logs` (created when missing). When that folder cannot
//! be written, they go to the system temporary folder (`$TMPDIR`, else
//! `/tmp`).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};
use valkyrie_proxy::ProxyState;

use crate::service::Control;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options, read before `main` runs. `prof:true` sets up
/// heap profiling so that it can be switched on later, and
/// `prof_active:false` keeps allocation sampling off until
/// [`init_profiling`] switches it on. The symbol carries the `_rjem_` prefix
/// that tikv-jemalloc-sys gives every jemalloc symbol on this platform.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 28] = b"prof:true,prof_active:false\0";

// Two jemalloc functions called directly, under the prefixed names that
// tikv-jemalloc-sys links. tikv-jemalloc-ctl always passes a value pointer
// to mallctl, and jemalloc rejects one for `arena.<i>.purge`, which takes
// no value. Its statistics printer needs a crate feature that this
// workspace does not enable.
extern "C" {
    #[link_name = "_rjem_mallctl"]
    fn jemalloc_mallctl(
        name: *const c_char,
        oldp: *mut c_void,
        oldlenp: *mut usize,
        newp: *mut c_void,
        newlen: usize,
    ) -> c_int;

    #[link_name = "_rjem_malloc_stats_print"]
    fn jemalloc_malloc_stats_print(
        write: Option<unsafe extern "C" fn(*mut c_void, *const c_char)>,
        opaque: *mut c_void,
        options: *const c_char,
    );
}

/// The environment variable that switches heap profiling on at start-up.
pub const PROFILING_VARIABLE: &str = "VALKYRIE_MEMORY_PROFILING";

/// jemalloc's index that names every arena at once (`MALLCTL_ARENAS_ALL`).
const ALL_ARENAS: u32 = 4096;

/// How often the heap limit is checked.
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Fraction of `max_heap_size`, in percent, that resident memory must fall
/// under before new connections are accepted again. The gap keeps the
/// limit from flapping around one value.
const LIMIT_RELEASE_PERCENT: u64 = 90;

/// Set once heap profiling was switched on at start-up.
static PROFILING: AtomicBool = AtomicBool::new(false);

/// Returns the bytes of physically resident pages mapped by the allocator,
/// refreshed from jemalloc's statistics.
pub fn resident_bytes() -> Option<u64> {
    use tikv_jemalloc_ctl::{epoch, stats};

    epoch::advance().ok()?;
    stats::resident::read().ok().map(|bytes| bytes as u64)
}

/// Returns true when `value` of [`PROFILING_VARIABLE`] turns profiling on.
fn is_enabled(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

/// Switches jemalloc's allocation sampling on when [`PROFILING_VARIABLE`] is
/// `true` in the process environment. Call once at start-up.
pub fn init_profiling() {
    let requested = std::env::var(PROFILING_VARIABLE).is_ok_and(|value| is_enabled(&value));
    if !requested {
        return;
    }
    // SAFETY: `prof.active` is a bool in jemalloc's mallctl namespace.
    match unsafe { tikv_jemalloc_ctl::raw::write(b"prof.active\0", true) } {
        Ok(()) => {
            PROFILING.store(true, Ordering::Relaxed);
            info!(
                variable = PROFILING_VARIABLE,
                "heap profiling on: SIGUSR1 writes a jemalloc heap profile"
            );
        }
        Err(error) => warn!(
            variable = PROFILING_VARIABLE,
            %error,
            "cannot switch heap profiling on: the allocator was built or started without profiling; SIGUSR1 writes allocator statistics instead"
        ),
    }
}

/// Returns true when SIGUSR1 writes heap profiles.
pub fn is_profiling() -> bool {
    PROFILING.load(Ordering::Relaxed)
}

/// Returns the folders a report may go to, in order of preference, made
/// absolute so that the logged path works from any folder.
fn report_folders(log_file: Option<&Path>) -> Vec<PathBuf> {
    let log_folder = match log_file.and_then(Path::parent) {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => PathBuf::from("logs"),
    };
    let log_folder = std::path::absolute(&log_folder).unwrap_or(log_folder);
    let temporary = std::env::temp_dir();
    if temporary == log_folder {
        vec![log_folder]
    } else {
        vec![log_folder, temporary]
    }
}

/// Returns the name of a report file: `valkyrie-<kind>-<pid>-<unix seconds>.<extension>`.
fn report_name(kind: &str, extension: &str) -> String {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "valkyrie-{kind}-{}-{seconds}.{extension}",
        std::process::id()
    )
}

/// Calls `write` with a path in each report folder in turn until one works.
fn write_in_first_folder(
    log_file: Option<&Path>,
    name: &str,
    write: impl Fn(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let mut failures = Vec::new();
    for folder in report_folders(log_file) {
        let path = folder.join(name);
        let outcome = std::fs::create_dir_all(&folder)
            .map_err(|error| format!("cannot create {}: {error}", folder.display()))
            .and_then(|()| write(&path));
        match outcome {
            Ok(()) => return Ok(path),
            Err(error) => failures.push(error),
        }
    }
    Err(failures.join("; "))
}

/// Writes a jemalloc heap profile (the format `jeprof` reads) to `path`.
fn dump_heap_profile(path: &Path) -> Result<(), String> {
    let text = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    let pointer: *const c_char = text.as_ptr();
    // SAFETY: `prof.dump` takes a `const char *` file name, and `text` is a
    // NUL-terminated string that outlives the call.
    unsafe { tikv_jemalloc_ctl::raw::write(b"prof.dump\0", pointer) }
        .map_err(|error| format!("jemalloc cannot write {}: {error}", path.display()))
}

/// Appends one chunk of `malloc_stats_print` output to the `Vec<u8>` behind `opaque`.
unsafe extern "C" fn append_statistics(opaque: *mut c_void, chunk: *const c_char) {
    // SAFETY: `opaque` is the `Vec<u8>` that `statistics_text` passed, and
    // jemalloc passes a NUL-terminated chunk.
    let (text, chunk) = unsafe { (&mut *opaque.cast::<Vec<u8>>(), CStr::from_ptr(chunk)) };
    text.extend_from_slice(chunk.to_bytes());
}

/// Returns jemalloc's full statistics report, as `malloc_stats_print` writes it.
fn statistics_text() -> Vec<u8> {
    let mut text: Vec<u8> = Vec::with_capacity(256 * 1024);
    // SAFETY: the callback only appends to `text`, which outlives the call.
    // An empty option string selects the default report.
    unsafe {
        jemalloc_malloc_stats_print(
            Some(append_statistics),
            (&mut text as *mut Vec<u8>).cast(),
            c"".as_ptr(),
        );
    }
    text
}

/// Writes jemalloc's statistics report to `path`.
fn write_statistics(path: &Path) -> Result<(), String> {
    std::fs::write(path, statistics_text())
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// Writes a heap profile when profiling is on, allocator statistics
/// otherwise, to the log folder. Returns the file written.
pub fn write_report(log_file: Option<&Path>) -> Result<PathBuf, String> {
    if is_profiling() {
        write_in_first_folder(log_file, &report_name("heap", "heap"), dump_heap_profile)
    } else {
        write_in_first_folder(log_file, &report_name("stats", "txt"), write_statistics)
    }
}

/// Handles SIGUSR1: writes the report off the runtime threads and logs its path.
pub async fn report_on_signal(control: Arc<Control>) {
    let profiling = is_profiling();
    let written = tokio::task::spawn_blocking(move || write_report(control.log_path())).await;
    match written {
        Ok(Ok(path)) if profiling => info!(path = %path.display(), "heap profile written"),
        Ok(Ok(path)) => info!(
            path = %path.display(),
            variable = PROFILING_VARIABLE,
            "allocator statistics written; start with {PROFILING_VARIABLE}=true for a heap profile"
        ),
        Ok(Err(error)) => warn!(%error, "writing the memory report failed"),
        Err(error) => warn!(%error, "the memory report task failed"),
    }
}

/// Returns unused pages of every jemalloc arena to the operating system.
pub fn purge_arenas() -> Result<(), String> {
    let name = format!("arena.{ALL_ARENAS}.purge\0");
    // SAFETY: the name is NUL-terminated, and `arena.<i>.purge` takes
    // neither an old nor a new value, so every pointer is null.
    let code = unsafe {
        jemalloc_mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if code != 0 {
        return Err(format!(
            "jemalloc rejected arena.{ALL_ARENAS}.purge with error code {code}"
        ));
    }
    Ok(())
}

/// Closes the idle connection pools of every upstream endpoint. Returns the
/// number of idle connections the pools held just before.
fn close_idle_connections(state: &ProxyState) -> u64 {
    let snapshot = state.snapshot.load();
    let mut closed = 0;
    for upstream in &snapshot.upstreams {
        for endpoint in &upstream.endpoints {
            closed += endpoint.pool.stats.idle.load(Ordering::Relaxed) as u64;
            endpoint.pool.clear();
        }
    }
    closed
}

/// Empties the route decision cache, when `route_cache_size` turns it on.
fn clear_route_cache(state: &ProxyState) {
    state.engine.clear_cache();
}

/// What one shedding pass did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PurgeReport {
    pub resident_bytes_before: u64,
    pub resident_bytes_after: u64,
    pub idle_connections_closed: u64,
    /// Why jemalloc did not purge, when it did not.
    pub purge_error: Option<String>,
}

/// Drops caches (idle upstream connections, the route decision cache) and
/// returns free allocator pages to the operating system.
pub fn shed(state: &ProxyState) -> PurgeReport {
    let before = resident_bytes().unwrap_or(0);
    let idle_connections_closed = close_idle_connections(state);
    clear_route_cache(state);
    let purge_error = purge_arenas().err();
    if let Some(error) = &purge_error {
        warn!(%error, "returning free memory to the operating system failed");
    }
    PurgeReport {
        resident_bytes_before: before,
        resident_bytes_after: resident_bytes().unwrap_or(0),
        idle_connections_closed,
        purge_error,
    }
}

/// Runs [`shed`] off the runtime threads and logs the outcome at info.
pub async fn shed_and_log(state: Arc<ProxyState>, trigger: &'static str) -> PurgeReport {
    let report = match tokio::task::spawn_blocking(move || shed(&state)).await {
        Ok(report) => report,
        Err(error) => {
            warn!(%error, trigger, "the memory purge task failed");
            return PurgeReport {
                resident_bytes_before: 0,
                resident_bytes_after: 0,
                idle_connections_closed: 0,
                purge_error: Some(error.to_string()),
            };
        }
    };
    info!(
        trigger,
        resident_bytes_before = report.resident_bytes_before,
        resident_bytes_after = report.resident_bytes_after,
        idle_connections_closed = report.idle_connections_closed,
        "memory purged"
    );
    report
}

/// A change of the heap limit's state, decided by [`HeapLimit::observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LimitChange {
    /// Resident memory went over the limit.
    Exceeded,
    /// Still over the limit: shed again.
    StillOver,
    /// Fell under the release level, or the limit was lifted.
    Released,
    /// Nothing to do.
    Unchanged,
}

/// The soft heap limit's state between two checks.
#[derive(Debug, Default)]
struct HeapLimit {
    exceeded: bool,
}

impl HeapLimit {
    /// Decides what one check of `resident` bytes against `limit` bytes
    /// means. A limit of 0 turns the check off.
    fn observe(&mut self, resident: u64, limit: u64) -> LimitChange {
        if limit == 0 {
            return self.release_if_exceeded();
        }
        if !self.exceeded {
            if resident > limit {
                self.exceeded = true;
                return LimitChange::Exceeded;
            }
            return LimitChange::Unchanged;
        }
        if resident > limit {
            return LimitChange::StillOver;
        }
        let release_level = limit / 100 * LIMIT_RELEASE_PERCENT;
        if resident <= release_level {
            return self.release_if_exceeded();
        }
        LimitChange::Unchanged
    }

    fn release_if_exceeded(&mut self) -> LimitChange {
        if std::mem::take(&mut self.exceeded) {
            LimitChange::Released
        } else {
            LimitChange::Unchanged
        }
    }
}

/// Checks allocator resident memory against `[performance] max_heap_size`
/// every second. Over the limit, it sheds caches and purges, and the data
/// plane closes new connections until resident memory falls under 90% of
/// the limit. The limit is read from the live config, so a reload changes it.
pub fn spawn_heap_limit_watch(control: Arc<Control>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(LIMIT_CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut limit_state = HeapLimit::default();
        loop {
            ticker.tick().await;
            let state = control.state().clone();
            let limit = state.snapshot.load().config.performance.max_heap_size.0;
            let Some(resident) = resident_bytes() else {
                continue;
            };
            match limit_state.observe(resident, limit) {
                LimitChange::Exceeded => {
                    state.memory_pressure.store(true, Ordering::Relaxed);
                    control.metrics.set_memory_limit_exceeded(true);
                    warn!(
                        resident_bytes = resident,
                        max_heap_size = limit,
                        "resident memory is over [performance] max_heap_size: shedding caches and closing new connections"
                    );
                    let _ = tokio::task::spawn_blocking(move || shed(&state)).await;
                }
                LimitChange::StillOver => {
                    let _ = tokio::task::spawn_blocking(move || shed(&state)).await;
                }
                LimitChange::Released => {
                    state.memory_pressure.store(false, Ordering::Relaxed);
                    control.metrics.set_memory_limit_exceeded(false);
                    info!(
                        resident_bytes = resident,
                        max_heap_size = limit,
                        "resident memory is back under [performance] max_heap_size: accepting new connections"
                    );
                }
                LimitChange::Unchanged => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiling_variable_values() {
        for value in ["true", "TRUE", " true\n", "1", "yes", "on"] {
            assert!(is_enabled(value), "{value:?} should enable profiling");
        }
        for value in ["", "false", "0", "no", "off", "truee"] {
            assert!(!is_enabled(value), "{value:?} should not enable profiling");
        }
    }

    #[test]
    fn report_folder_follows_log_file() {
        let folders = report_folders(Some(Path::new("/app/logs/valkyrie.log")));
        assert_eq!(folders[0], Path::new("/app/logs"));
        assert_eq!(folders.last().unwrap(), &std::env::temp_dir());
    }

    #[test]
    fn report_folder_for_bare_log_file_name() {
        let folders = report_folders(Some(Path::new("valkyrie.log")));
        let current = std::env::current_dir().unwrap();
        assert_eq!(folders[0], std::path::absolute(".").unwrap());
        assert!(folders[0].starts_with(current));
    }

    #[test]
    fn report_folder_without_log_file() {
        let folders = report_folders(None);
        assert_eq!(folders[0], std::env::current_dir().unwrap().join("logs"));
        assert_eq!(folders.last().unwrap(), &std::env::temp_dir());
    }

    #[test]
    fn report_name_has_pid_and_time() {
        let name = report_name("heap", "heap");
        let pid = std::process::id().to_string();
        let rest = name.strip_prefix("valkyrie-heap-").unwrap();
        let (found_pid, rest) = rest.split_once('-').unwrap();
        assert_eq!(found_pid, pid);
        let seconds: u64 = rest.strip_suffix(".heap").unwrap().parse().unwrap();
        assert!(
            seconds > 1_600_000_000,
            "{seconds} is not a recent Unix time"
        );
    }

    #[test]
    fn report_falls_back_when_folder_fails() {
        let folder = tempfile::tempdir().unwrap();
        // A file where the log folder should be makes create_dir_all fail.
        let blocker = folder.path().join("not-a-folder");
        std::fs::write(&blocker, b"").unwrap();
        let log_file = blocker.join("valkyrie.log");
        let path = write_in_first_folder(Some(&log_file), &report_name("test", "txt"), |path| {
            std::fs::write(path, b"x").map_err(|error| error.to_string())
        })
        .unwrap();
        assert_eq!(path.parent().unwrap(), std::env::temp_dir());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn statistics_file_is_written() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("stats.txt");
        write_statistics(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("jemalloc statistics"), "{text}");
        assert!(text.contains("resident"), "{text}");
    }

    #[test]
    fn heap_profile_is_written() {
        // The start-up options exported above make profiling available in
        // this test binary too.
        // SAFETY: `opt.prof` is a bool.
        let available: bool = unsafe { tikv_jemalloc_ctl::raw::read(b"opt.prof\0") }.unwrap();
        assert!(available, "jemalloc started without prof:true");
        // SAFETY: `prof.active` is a bool.
        unsafe { tikv_jemalloc_ctl::raw::write(b"prof.active\0", true) }.unwrap();
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("test.heap");
        dump_heap_profile(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("heap_v2/"), "{text}");
        assert!(text.contains("MAPPED_LIBRARIES"), "{text}");
        assert_eq!(kept.len(), 64);
    }

    #[test]
    fn purge_of_all_arenas_succeeds() {
        let garbage: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 16 * 1024]).collect();
        drop(garbage);
        purge_arenas().unwrap();
        assert!(resident_bytes().unwrap() > 0);
    }

    #[test]
    fn limit_exceeded_once_then_still_over() {
        let mut limit = HeapLimit::default();
        assert_eq!(limit.observe(100, 1000), LimitChange::Unchanged);
        assert_eq!(limit.observe(1001, 1000), LimitChange::Exceeded);
        assert_eq!(limit.observe(2000, 1000), LimitChange::StillOver);
    }

    #[test]
    fn limit_released_under_ninety_percent() {
        let mut limit = HeapLimit::default();
        assert_eq!(limit.observe(1001, 1000), LimitChange::Exceeded);
        // Between 90% and 100%: still refusing, nothing more to shed.
        assert_eq!(limit.observe(950, 1000), LimitChange::Unchanged);
        assert_eq!(limit.observe(900, 1000), LimitChange::Released);
        assert_eq!(limit.observe(950, 1000), LimitChange::Unchanged);
        assert_eq!(limit.observe(1001, 1000), LimitChange::Exceeded);
    }

    #[test]
    fn limit_raised_by_reload_releases() {
        let mut limit = HeapLimit::default();
        assert_eq!(limit.observe(5_000_000, 1_000_000), LimitChange::Exceeded);
        assert_eq!(
            limit.observe(5_000_000, 6_000_000_000),
            LimitChange::Released
        );
    }

    #[test]
    fn limit_zero_turns_check_off() {
        let mut limit = HeapLimit::default();
        assert_eq!(limit.observe(u64::MAX, 0), LimitChange::Unchanged);
        assert_eq!(limit.observe(2000, 1000), LimitChange::Exceeded);
        assert_eq!(limit.observe(2000, 0), LimitChange::Released);
    }
}
