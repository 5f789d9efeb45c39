//! Running the router: config loading, the runtime, listeners, signals,
//! reloads and draining.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};
use valkyrie_config::Config;
use valkyrie_proxy::net::{parse_listen, CidrSet};
use valkyrie_proxy::server::bind;
use valkyrie_proxy::state::SnapshotError;
use valkyrie_proxy::{ListenerKind, ProxyState, Server, Snapshot};

use crate::builtins::{self, Builtins};
use crate::logging::{self, LogFile};

/// How many good configs are kept for rollback.
const CONFIG_HISTORY: usize = 5;

/// Loads the config at `path` and runs the router until a stop signal.
pub fn run_from_file(path: &Path) -> ExitCode {
    let is_default_path = path == Path::new("config/valkyrie.toml");
    let (config, source) = if !path.exists() && is_default_path {
        eprintln!("{} not found; running on built-in defaults", path.display());
        (Config::default(), None)
    } else {
        match crate::cli::load_checked(path) {
            Ok(config) => (config, Some(path.to_path_buf())),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::FAILURE;
            }
        }
    };
    run(config, source, None)
}

/// A callback run once the router listens.
pub type OnReady = Box<dyn FnOnce(&Running) + Send>;

/// Builds the runtime and runs the router. `on_ready` is called with the
/// bound data-plane addresses once listening (the demo prints its hints then).
pub fn run(config: Config, source: Option<PathBuf>, on_ready: Option<OnReady>) -> ExitCode {
    let log_file = match logging::init(&config.logging) {
        Ok(file) => file,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    // One worker needs no work stealing: the current-thread scheduler runs
    // every task on this thread without cross-thread wake-ups.
    let mut runtime = if config.server.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all();
    if config.server.worker_threads > 1 {
        runtime.worker_threads(config.server.worker_threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match start(config, source, log_file).await {
            Ok(running) => running,
            Err(message) => {
                error!(error = %message, "startup failed");
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(on_ready) = on_ready {
            on_ready(&running);
        }
        running.wait_for_signals().await
    })
}

/// Status of the running config, shown by `/config/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConfigStatus {
    pub version: String,
    pub file: Option<String>,
    pub loaded_at: String,
    pub generation: u64,
    pub last_reload: Option<ReloadResult>,
    /// TLS termination: each certificate with its names, file, expiry and
    /// last error; `null` when TLS is off.
    pub tls: Option<serde_json::Value>,
}

/// The outcome of the last reload attempt.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadResult {
    pub ok: bool,
    pub at: String,
    pub trigger: String,
    pub error: Option<String>,
}

/// A config that was running at some point, kept for rollback.
struct GoodConfig {
    config: Arc<Config>,
    version: String,
}

/// Shared control of the running router: reloads, rollback, status, readiness.
pub struct Control {
    state: OnceLock<Arc<ProxyState>>,
    pub started: Instant,
    source: Option<PathBuf>,
    status: Mutex<ConfigStatus>,
    history: Mutex<VecDeque<GoodConfig>>,
    reload_lock: tokio::sync::Mutex<()>,
    log_file: Option<LogFile>,
    ready: AtomicBool,
    pub admin_allow: arc_swap::ArcSwap<CidrSet>,
    pub admin_token: Option<String>,
    pub has_admin_listener: bool,
    /// TLS termination, when `[security] enable_tls` is set.
    pub tls: Option<Arc<valkyrie_proxy::tls::TlsTerminator>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Control {
    pub fn state(&self) -> &Arc<ProxyState> {
        self.state.get().expect("the state is set at startup")
    }

    pub fn status(&self) -> ConfigStatus {
        let mut status = self.status.lock().unwrap().clone();
        status.tls = self.tls.as_deref().map(crate::certs::status_json);
        status
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.state().is_draining()
    }

    /// Rereads the config file, validates it, builds a snapshot and swaps it
    /// in. On any error the running config stays and the error is recorded.
    pub async fn reload(&self, trigger: &str) -> Result<ConfigStatus, String> {
        let _guard = self.reload_lock.lock().await;
        let outcome = self.reload_locked().await;
        self.reload_tls();
        self.record_reload(trigger, outcome.as_ref().err().cloned());
        match outcome {
            Ok(()) => {
                info!(trigger, version = %self.status().version, "configuration reloaded");
                Ok(self.status())
            }
            Err(message) => {
                error!(trigger, error = %message, "configuration reload failed; keeping the running configuration");
                Err(message)
            }
        }
    }

    async fn reload_locked(&self) -> Result<(), String> {
        let Some(path) = &self.source else {
            return Err(
                "the router runs without a config file (on built-in defaults, \
                 or on the demo's embedded config); start it with --config FILE to reload"
                    .to_string(),
            );
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let config = valkyrie_config::parse_str(&text, &path.display().to_string())
            .map_err(|errors| errors.to_string())?;
        self.apply(Arc::new(config), config_version(text.as_bytes()))
            .await
    }

    /// Returns to the config that ran before the current one.
    pub async fn rollback(&self) -> Result<ConfigStatus, String> {
        let _guard = self.reload_lock.lock().await;
        let previous = {
            let mut history = self.history.lock().unwrap();
            if history.len() < 2 {
                None
            } else {
                history.pop_back();
                history
                    .back()
                    .map(|good| (good.config.clone(), good.version.clone()))
            }
        };
        let outcome = match previous {
            Some((config, version)) => self.apply_without_history(config, version).await,
            None => Err("no previous configuration to roll back to".to_string()),
        };
        self.record_reload("rollback", outcome.as_ref().err().cloned());
        self.reload_tls();
        match outcome {
            Ok(()) => {
                info!(version = %self.status().version, "rolled back to the previous configuration");
                Ok(self.status())
            }
            Err(message) => {
                warn!(error = %message, "rollback failed");
                Err(message)
            }
        }
    }

    async fn apply(&self, config: Arc<Config>, version: String) -> Result<(), String> {
        self.apply_without_history(config.clone(), version.clone())
            .await?;
        let mut history = self.history.lock().unwrap();
        history.push_back(GoodConfig { config, version });
        while history.len() > CONFIG_HISTORY {
            history.pop_front();
        }
        Ok(())
    }

    async fn apply_without_history(
        &self,
        config: Arc<Config>,
        version: String,
    ) -> Result<(), String> {
        let state = self.state();
        let current = state.snapshot.load_full();
        warn_about_restart_only_changes(&current.config, &config);
        let config_dir = self.source.as_deref().and_then(Path::parent);
        let snapshot = Snapshot::build_in(config.clone(), Some(&current), config_dir)
            .await
            .map_err(|error| describe_snapshot_error(&error, self.source.as_deref()))?;
        let allow = CidrSet::parse(config.admin.allow.iter().map(String::as_str))?;
        let generation = state.publish(snapshot);
        state.key_sync.follow(state);
        self.admin_allow.store(Arc::new(allow));
        self.metrics.set_budget(config.routing.performance_budget.0);
        let mut status = self.status.lock().unwrap();
        status.version = version;
        status.loaded_at = now_rfc3339();
        status.generation = generation;
        Ok(())
    }

    fn record_reload(&self, trigger: &str, error: Option<String>) {
        self.status.lock().unwrap().last_reload = Some(ReloadResult {
            ok: error.is_none(),
            at: now_rfc3339(),
            trigger: trigger.to_string(),
            error,
        });
    }

    /// Reads every certificate file again with the TLS settings of the
    /// running config. Certificates that fail keep their previous version;
    /// the terminator logs the errors and keeps them for the status.
    fn reload_tls(&self) {
        if let Some(tls) = &self.tls {
            let config = self.state().snapshot.load().config.clone();
            let errors = tls.reload(&config.security);
            if errors.is_empty() {
                info!("TLS certificates reloaded");
            }
        }
    }

    /// Returns the path of the log file, when one is open.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_file.as_ref().map(LogFile::path)
    }

    /// Reopens the log file after rotation.
    pub fn reopen_log(&self) {
        if let Some(file) = &self.log_file {
            match file.reopen() {
                Ok(()) => info!(file = %file.path().display(), "log file reopened"),
                Err(error) => {
                    error!(file = %file.path().display(), %error, "reopening the log file failed")
                }
            }
        }
    }
}

fn warn_about_restart_only_changes(old: &Config, new: &Config) {
    if old.server.listen != new.server.listen
        || old.metrics.listen != new.metrics.listen
        || old.admin.listen != new.admin.listen
        || old.server.worker_threads != new.server.worker_threads
        || old.security.enable_tls != new.security.enable_tls
        || old.security.tls_listen != new.security.tls_listen
    {
        warn!("listen addresses, enable_tls and worker_threads change only on restart; the new values are ignored until then");
    }
}

/// Returns a short hash naming a config version (FNV-1a over the file bytes).
pub fn config_version(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(now.as_secs())
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn format_rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let time = seconds % 86_400;
    // Civil-from-days conversion for the proleptic Gregorian calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// A started router.
pub struct Running {
    pub server: Server,
    pub control: Arc<Control>,
    pub data_addresses: Vec<SocketAddr>,
    pub metrics_address: Option<SocketAddr>,
}

fn read_admin_token(config: &Config) -> Result<Option<String>, String> {
    if let Some(variable) = &config.admin.token_env {
        return match std::env::var(variable) {
            Ok(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_string())),
            _ => Err(format!("[admin] token_env names `{variable}`, but that environment variable is unset or empty")),
        };
    }
    if let Some(path) = &config.admin.token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read [admin] token_file `{path}`: {error}"))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(format!("[admin] token_file `{path}` is empty"));
        }
        return Ok(Some(token));
    }
    Ok(None)
}

fn bind_all(addresses: &[String], what: &str) -> Result<Vec<tokio::net::TcpListener>, String> {
    use std::net::ToSocketAddrs;

    let mut listeners = Vec::with_capacity(addresses.len());
    for text in addresses {
        let resolved = match parse_listen(text) {
            Ok(address) => address,
            // Host names such as `localhost:9090` are valid too.
            Err(_) => text
                .to_socket_addrs()
                .ok()
                .and_then(|mut found| found.next())
                .ok_or_else(|| {
                    format!("cannot resolve {what} address `{text}`: expected IP:PORT or HOST:PORT")
                })?,
        };
        let listener = bind(resolved)
            .map_err(|error| format!("cannot listen on {what} address {resolved}: {error}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Maximum wait at start for the first read of the key tables kept in
/// Redis; after it the listeners open without their entries.
const FIRST_KEY_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts following the key tables kept in Redis and waits a little for
/// their first read, so that the first requests find their entries. Without
/// Redis the router starts anyway: those tables are empty and `/ready`
/// returns 503 until they are read.
async fn follow_redis_tables(state: &Arc<valkyrie_proxy::ProxyState>) {
    state.key_sync.follow(state);
    if !state.key_sync.status().following {
        return;
    }
    if !state.key_sync.wait_first_load(FIRST_KEY_LOAD_WAIT).await {
        let pending = state.key_sync.first_load_pending();
        let error = state.key_sync.status().last_error.unwrap_or_default();
        warn!(
            tables = ?pending,
            %error,
            "key tables kept in Redis were not read within 5 s; starting without their entries, and /ready answers 503 until they are read"
        );
    }
}

/// Formats a snapshot that cannot be built. A key table's error gets the
/// position of the config key at fault in `config_file`.
fn describe_snapshot_error(error: &SnapshotError, config_file: Option<&Path>) -> String {
    match error {
        SnapshotError::KeyTable(table) => crate::position::table_error(table, config_file),
        other => other.to_string(),
    }
}

/// Builds the first snapshot, binds every listener and starts serving.
pub async fn start(
    config: Config,
    source: Option<PathBuf>,
    log_file: Option<LogFile>,
) -> Result<Running, String> {
    let version = match &source {
        Some(path) => config_version(&std::fs::read(path).unwrap_or_default()),
        None => config_version(b"built-in defaults"),
    };
    let config = Arc::new(config);
    let config_dir = source.as_deref().and_then(Path::parent);
    let snapshot = Snapshot::build_in(config.clone(), None, config_dir)
        .await
        .map_err(|error| describe_snapshot_error(&error, source.as_deref()))?;
    let generation = snapshot.generation;

    let tls = if config.security.enable_tls {
        let terminator = valkyrie_proxy::tls::TlsTerminator::new(&config.security)
            .map_err(|error| format!("cannot start TLS: {error}"))?;
        Some(terminator)
    } else {
        None
    };

    let admin_allow = CidrSet::parse(config.admin.allow.iter().map(String::as_str))?;
    let control = Arc::new(Control {
        state: OnceLock::new(),
        started: Instant::now(),
        source: source.clone(),
        status: Mutex::new(ConfigStatus {
            version: version.clone(),
            file: source.as_ref().map(|path| path.display().to_string()),
            loaded_at: now_rfc3339(),
            generation,
            last_reload: None,
            tls: None,
        }),
        history: Mutex::new(VecDeque::from([GoodConfig {
            config: config.clone(),
            version,
        }])),
        reload_lock: tokio::sync::Mutex::new(()),
        log_file,
        ready: AtomicBool::new(false),
        admin_allow: arc_swap::ArcSwap::from_pointee(admin_allow),
        admin_token: read_admin_token(&config)?,
        has_admin_listener: config.admin.listen.is_some(),
        tls: tls.clone(),
        metrics: Arc::new(crate::metrics::Metrics::new(
            config.routing.performance_budget.0,
        )),
    });

    let mut state = ProxyState::new(snapshot);
    state.builtins = Some(Arc::new(Builtins::new(control.clone())));
    state.observers.push(control.metrics.clone());
    let metrics = control.metrics.clone();
    state
        .snapshot_stats
        .set_on_reclaim(Box::new(move |grace| metrics.observe_grace_period(grace)));
    let state = Arc::new(state);
    let _ = control.state.set(state.clone());
    let server = Server::new(state.clone());
    follow_redis_tables(&state).await;

    let data_listeners = bind_all(&config.server.listen, "[server] listen")?;
    let tls_listeners = match &tls {
        Some(_) => bind_all(&config.security.tls_listen, "[security] tls_listen")?,
        None => Vec::new(),
    };
    let admin_listener = match &config.admin.listen {
        Some(address) => Some(bind_all(std::slice::from_ref(address), "[admin] listen")?.remove(0)),
        None => None,
    };
    let metrics_listener = if config.metrics.enable {
        Some(
            bind_all(
                std::slice::from_ref(&config.metrics.listen),
                "[metrics] listen",
            )?
            .remove(0),
        )
    } else {
        None
    };

    let data_addresses: Vec<SocketAddr> = data_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let admin_address = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_address = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let tls_addresses: Vec<SocketAddr> = tls_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    for listener in data_listeners {
        server.spawn_listener(listener, ListenerKind::DataPlane);
    }
    if let Some(tls) = &tls {
        if let Some(first) = tls_addresses.first() {
            server.set_https_port(first.port());
        }
        for listener in tls_listeners {
            server.spawn_tls_listener(listener, ListenerKind::DataPlane, tls.clone());
        }
        // Picks up certificate files replaced on disk, including the
        // symlink swap of a Kubernetes secret volume.
        tls.spawn_watcher(std::time::Duration::from_secs(1));
    }
    if let Some(listener) = admin_listener {
        server.spawn_listener(listener, ListenerKind::Admin);
    }
    if let Some(listener) = metrics_listener {
        builtins::spawn_metrics_listener(listener, control.clone());
    }

    crate::memory::init_profiling();
    crate::memory::spawn_heap_limit_watch(control.clone());

    control.ready.store(true, Ordering::Relaxed);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = ?data_addresses,
        tls = ?tls_addresses,
        metrics = ?metrics_address,
        admin = ?admin_address,
        routes = config.routes.len(),
        upstreams = config.upstreams.len(),
        "valkyrie started"
    );
    Ok(Running {
        server,
        control,
        data_addresses,
        metrics_address,
    })
}

impl Running {
    /// Serves until SIGTERM or SIGINT, then drains; SIGHUP reloads the config
    /// and reopens the log file, SIGUSR1 writes a memory report and SIGUSR2
    /// sheds caches and free memory. Returns the process exit code.
    pub async fn wait_for_signals(self) -> ExitCode {
        use tokio::signal::unix::{signal, SignalKind};

        let (mut terminate, mut interrupt, mut hangup, mut user1, mut user2) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
            signal(SignalKind::user_defined2()),
        ) {
            (Ok(terminate), Ok(interrupt), Ok(hangup), Ok(user1), Ok(user2)) => {
                (terminate, interrupt, hangup, user1, user2)
            }
            _ => {
                error!("cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let signal_name = loop {
            tokio::select! {
                _ = terminate.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
                _ = hangup.recv() => {
                    info!("SIGHUP received: reloading the configuration and reopening the log file");
                    self.control.reopen_log();
                    let _ = self.control.reload("SIGHUP").await;
                }
                _ = user1.recv() => {
                    info!("SIGUSR1 received: writing a memory report");
                    crate::memory::report_on_signal(self.control.clone()).await;
                }
                _ = user2.recv() => {
                    info!("SIGUSR2 received: dropping caches and returning free memory to the operating system");
                    crate::memory::shed_and_log(self.server.state().clone(), "SIGUSR2").await;
                }
            }
        };
        let timeout = self
            .server
            .state()
            .snapshot
            .load()
            .config
            .server
            .graceful_shutdown_timeout
            .0;
        info!(signal = signal_name, timeout = ?timeout, "stopping: draining in-flight requests");
        let drained = self.server.shutdown(timeout).await;
        info!(drained, "valkyrie stopped");
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn config_version_changes_with_content() {
        assert_eq!(config_version(b"a"), config_version(b"a"));
        assert_ne!(config_version(b"a"), config_version(b"b"));
        assert_eq!(config_version(b"").len(), 16);
    }
}
