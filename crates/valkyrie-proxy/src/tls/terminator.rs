//! TLS termination for the downstream listeners: the rustls server
//! configuration (versions, ALPN, client certificates), the handshake, and
//! reloading certificates and the client CA bundle without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::{ServerConfig, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};
use valkyrie_config::SecurityConfig;

use super::certs::{file_fingerprint, provider, read_file, roots_from_pem, unix_now};
use super::store::{CertificateExpiry, CertificateSpec, CertificateStatus, CertificateStore};

/// ALPN protocols offered to clients, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The listener settings that need a new rustls configuration when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListenerSettings {
    min_version: String,
    client_ca_path: Option<PathBuf>,
    require_client_cert: bool,
}

impl ListenerSettings {
    fn from_config(security: &SecurityConfig) -> ListenerSettings {
        ListenerSettings {
            min_version: security.min_tls_version.clone(),
            client_ca_path: security.client_ca_path.as_ref().map(PathBuf::from),
            require_client_cert: security.require_client_cert,
        }
    }
}

/// The client CA bundle as last read, for change detection and status.
#[derive(Default)]
struct ClientCaState {
    /// Fingerprint of the bundle in the running configuration.
    applied: Option<u64>,
    /// Fingerprint of the contents last tried.
    tried: Option<u64>,
    last_error: Option<(String, i64)>,
}

/// Status of the client CA bundle used to verify client certificates.
#[derive(Clone, Debug)]
pub struct ClientCaStatus {
    pub file: String,
    pub required: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

/// Everything `/config/status` shows about TLS termination.
#[derive(Clone, Debug)]
pub struct TlsStatus {
    pub min_version: String,
    pub certificates: Vec<CertificateStatus>,
    pub client_ca: Option<ClientCaStatus>,
}

struct Applied {
    settings: ListenerSettings,
    client_ca: ClientCaState,
}

/// Terminates TLS for the downstream listeners and keeps their certificates
/// current.
pub struct TlsTerminator {
    store: CertificateStore,
    config: ArcSwap<ServerConfig>,
    applied: Mutex<Applied>,
}

impl TlsTerminator {
    /// Loads every certificate and the client CA bundle. Fails when any
    /// certificate or the bundle cannot be used, so a bad setup stops the
    /// start instead of serving handshake failures. An expired certificate
    /// is served with a warning.
    pub fn new(security: &SecurityConfig) -> Result<Arc<TlsTerminator>, String> {
        let store = CertificateStore::new();
        let errors = store.update(CertificateSpec::from_config(security), true);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let settings = ListenerSettings::from_config(security);
        let mut client_ca = ClientCaState::default();
        let config = build_server_config(&settings, &store, &mut client_ca)?;
        Ok(Arc::new(TlsTerminator {
            store,
            config: ArcSwap::from_pointee(config),
            applied: Mutex::new(Applied {
                settings,
                client_ca,
            }),
        }))
    }

    /// Applies the TLS settings of a new configuration and reads every
    /// certificate file again (SIGHUP and config reloads). Certificates that
    /// fail keep serving their previous version; the errors are returned
    /// and shown in the status.
    pub fn reload(&self, security: &SecurityConfig) -> Vec<String> {
        let mut errors = self
            .store
            .update(CertificateSpec::from_config(security), true);
        let settings = ListenerSettings::from_config(security);
        let mut applied = self.applied.lock().unwrap();
        if applied.settings == settings {
            if let Err(error) = self.refresh_client_ca(&mut applied, true) {
                errors.push(error);
            }
            return errors;
        }
        let mut client_ca = ClientCaState::default();
        match build_server_config(&settings, &self.store, &mut client_ca) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                info!(min_version = %settings.min_version, client_ca = ?settings.client_ca_path, require_client_cert = settings.require_client_cert, "TLS listener settings applied");
                applied.settings = settings;
                applied.client_ca = client_ca;
            }
            Err(message) => {
                error!(error = %message, "TLS listener settings not applied; keeping the running ones");
                applied.client_ca.last_error = Some((message.clone(), unix_now()));
                errors.push(message);
            }
        }
        errors
    }

    /// Loads again whatever certificate or CA file changed on disk since it
    /// was last read. Returns the errors of files that cannot be used.
    pub fn poll(&self) -> Vec<String> {
        let mut errors = self.store.poll();
        let mut applied = self.applied.lock().unwrap();
        if let Err(error) = self.refresh_client_ca(&mut applied, false) {
            errors.push(error);
        }
        errors
    }

    /// Builds a new rustls configuration when the client CA bundle changed
    /// on disk since it was last tried, or always with `force`. On error the
    /// running configuration stays.
    fn refresh_client_ca(&self, applied: &mut Applied, force: bool) -> Result<(), String> {
        let Some(path) = &applied.settings.client_ca_path else {
            return Ok(());
        };
        let current = read_file(path).map(|bytes| file_fingerprint(&bytes)).ok();
        let unchanged = current.is_some() && current == applied.client_ca.applied;
        let failed_before = current.is_some() && current == applied.client_ca.tried;
        if unchanged || (failed_before && !force) {
            return Ok(());
        }
        let settings = applied.settings.clone();
        match build_server_config(&settings, &self.store, &mut applied.client_ca) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                info!(client_ca = %path.display(), "client CA bundle loaded");
                Ok(())
            }
            Err(message) => {
                let repeated = applied
                    .client_ca
                    .last_error
                    .as_ref()
                    .is_some_and(|(last, _)| *last == message);
                if force || !repeated {
                    error!(client_ca = %path.display(), error = %message, "client CA bundle not loaded; keeping the one in use");
                }
                if !repeated {
                    applied.client_ca.last_error = Some((message.clone(), unix_now()));
                }
                Err(message)
            }
        }
    }

    /// Reloads changed files every `interval` until the terminator is dropped.
    /// File reads run on the blocking pool.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(terminator) = weak.upgrade() else {
                    break;
                };
                let _ = tokio::task::spawn_blocking(move || terminator.poll()).await;
            }
        })
    }

    /// Returns an acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Runs the server side of a handshake.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor().accept(stream).await
    }

    pub fn status(&self) -> TlsStatus {
        let applied = self.applied.lock().unwrap();
        TlsStatus {
            min_version: applied.settings.min_version.clone(),
            certificates: self.store.status(),
            client_ca: applied
                .settings
                .client_ca_path
                .as_ref()
                .map(|path| ClientCaStatus {
                    file: path.display().to_string(),
                    required: applied.settings.require_client_cert,
                    last_error: applied
                        .client_ca
                        .last_error
                        .as_ref()
                        .map(|(message, _)| message.clone()),
                    last_error_at: applied.client_ca.last_error.as_ref().map(|(_, at)| *at),
                }),
        }
    }

    /// Returns the seconds until each served certificate expires, for the
    /// `valkyrie_tls_certificate_expiry_seconds` gauge.
    pub fn expiry(&self) -> Vec<CertificateExpiry> {
        self.store.expiry()
    }

    pub fn store(&self) -> &CertificateStore {
        &self.store
    }
}

fn protocol_versions(min_version: &str) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&TLS13];
    static TLS12_AND_13: [&SupportedProtocolVersion; 2] = [&TLS13, &TLS12];
    if min_version == "1.3" {
        &TLS13_ONLY
    } else {
        &TLS12_AND_13
    }
}

/// Builds the rustls server configuration. Reads the client CA bundle when
/// one is set and records its fingerprint in `client_ca`.
fn build_server_config(
    settings: &ListenerSettings,
    store: &CertificateStore,
    client_ca: &mut ClientCaState,
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(protocol_versions(&settings.min_version))
        .map_err(|error| format!("invalid TLS versions: {error}"))?;
    let builder = match &settings.client_ca_path {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = read_file(path).map_err(|error| error.to_string())?;
            let fingerprint = file_fingerprint(&pem);
            client_ca.tried = Some(fingerprint);
            let roots = roots_from_pem(&pem, path).map_err(|error| error.to_string())?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if settings.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|error| {
                format!(
                    "cannot verify client certificates with {}: {error}",
                    path.display()
                )
            })?;
            client_ca.applied = Some(fingerprint);
            client_ca.last_error = None;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(store.resolver());
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|error| format!("cannot create the session ticket key: {error}"))?;
    Ok(config)
}
