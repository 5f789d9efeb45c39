//! The server certificates: which file pair serves which SNI names, the
//! certificate each one currently serves, and the resolver that rustls
//! calls during every handshake.
//!
//! Handshakes read an immutable table through `ArcSwap`, so swapping in a
//! new certificate never blocks a handshake and never touches connections
//! that are already established: they keep the keys they negotiated.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{error, info, warn};
use valkyrie_config::SecurityConfig;

use super::certs::{load_pair, unix_now, LoadedCertificate, PemPair};
use super::format_utc;

/// One certificate of the configuration: its files and the SNI names it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSpec {
    /// The default certificate serves handshakes that match no other one.
    pub default: bool,
    /// Server names, exact or `*.example.com`, lowercase. Empty for the default.
    pub names: Vec<String>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl CertificateSpec {
    /// Returns the default certificate followed by the `[[security.certificates]]` entries.
    pub fn from_config(security: &SecurityConfig) -> Vec<CertificateSpec> {
        let mut specs = vec![CertificateSpec {
            default: true,
            names: Vec::new(),
            cert_path: PathBuf::from(&security.tls_cert_path),
            key_path: PathBuf::from(&security.tls_key_path),
        }];
        specs.extend(security.certificates.iter().map(|entry| {
            CertificateSpec {
                default: false,
                names: entry
                    .server_names
                    .iter()
                    .map(|name| name.to_ascii_lowercase())
                    .collect(),
                cert_path: PathBuf::from(&entry.cert_path),
                key_path: PathBuf::from(&entry.key_path),
            }
        }));
        specs
    }

    /// Returns the name used in logs and metric labels: the first server
    /// name, or `default`.
    pub fn label(&self) -> &str {
        if self.default {
            "default"
        } else {
            self.names.first().map_or("default", String::as_str)
        }
    }
}

/// Status of one configured certificate, as `/config/status` shows it.
#[derive(Clone, Debug)]
pub struct CertificateStatus {
    pub default: bool,
    /// Configured server names; empty for the default certificate.
    pub names: Vec<String>,
    /// DNS names in the served certificate.
    pub dns_names: Vec<String>,
    pub cert_file: String,
    pub key_file: String,
    /// End of validity of the served certificate, in seconds since the Unix
    /// epoch; `None` when none could be loaded.
    pub not_after: Option<i64>,
    /// When the served certificate was loaded, in seconds since the Unix epoch.
    pub loaded_at: Option<i64>,
    /// The last failed load of this certificate, cleared by the next good one.
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

/// Seconds until a served certificate expires, negative once it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The first server name, or `default`.
    pub name: String,
    pub file: String,
    pub seconds: i64,
}

struct Entry {
    spec: CertificateSpec,
    current: Option<LoadedCertificate>,
    loaded_at: Option<i64>,
    /// Fingerprint of the file contents last tried, so that a bad file is
    /// reported once and not loaded again every poll.
    tried: Option<u64>,
    last_error: Option<(String, i64)>,
}

impl Entry {
    fn new(spec: CertificateSpec) -> Entry {
        Entry {
            spec,
            current: None,
            loaded_at: None,
            tried: None,
            last_error: None,
        }
    }

    /// Records a failure, logging it when it differs from the last one or
    /// when `always_log` is set (an explicit reload).
    fn fail(&mut self, message: String, always_log: bool, now: i64) {
        let repeated = self
            .last_error
            .as_ref()
            .is_some_and(|(last, _)| *last == message);
        if !repeated || always_log {
            let cert = self.spec.cert_path.display();
            if self.current.is_some() {
                error!(certificate = self.spec.label(), %cert, error = %message, "certificate not loaded; keeping the certificate in use");
            } else {
                error!(certificate = self.spec.label(), %cert, error = %message, "certificate not loaded; nothing to serve for its names");
            }
        }
        if !repeated {
            self.last_error = Some((message, now));
        }
    }

    /// Loads the files again when their contents changed since the last
    /// attempt, or always with `force`. Returns the error when loading failed.
    fn refresh(&mut self, force: bool, now: i64) -> Option<String> {
        let pair = match PemPair::read(&self.spec.cert_path, &self.spec.key_path) {
            Ok(pair) => pair,
            Err(error) => {
                let message = error.to_string();
                self.fail(message.clone(), force, now);
                self.tried = None;
                return Some(message);
            }
        };
        let fingerprint = pair.fingerprint();
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.fingerprint == fingerprint)
        {
            // The files are back to what is served: a half-written update
            // was finished or undone.
            if self.tried != Some(fingerprint) {
                self.tried = Some(fingerprint);
                self.last_error = None;
            }
            return None;
        }
        if !force && self.tried == Some(fingerprint) {
            return self.last_error.as_ref().map(|(message, _)| message.clone());
        }
        self.tried = Some(fingerprint);

        let loaded = match load_pair(&pair, &self.spec.cert_path, &self.spec.key_path) {
            Ok(loaded) => loaded,
            Err(error) => {
                let message = error.to_string();
                self.fail(message.clone(), true, now);
                return Some(message);
            }
        };
        if loaded.is_expired_at(now) {
            let message = format!(
                "the certificate in {} expired on {}",
                self.spec.cert_path.display(),
                format_utc(loaded.not_after)
            );
            if self.current.is_some() {
                self.fail(message.clone(), true, now);
                return Some(message);
            }
            // With nothing else to serve, an expired certificate is still
            // better than a handshake failure for every client.
            warn!(certificate = self.spec.label(), cert = %self.spec.cert_path.display(), not_after = %format_utc(loaded.not_after), "serving an expired certificate");
            self.last_error = Some((message, now));
        } else {
            self.last_error = None;
        }
        info!(
            certificate = self.spec.label(),
            cert = %self.spec.cert_path.display(),
            not_after = %format_utc(loaded.not_after),
            replaced = self.current.is_some(),
            "certificate loaded"
        );
        self.current = Some(loaded);
        self.loaded_at = Some(now);
        None
    }
}

/// The certificates that handshakes choose from.
#[derive(Default)]
struct CertTable {
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`: `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertTable {
    fn build(entries: &[Entry]) -> CertTable {
        let mut table = CertTable::default();
        for entry in entries {
            let Some(current) = &entry.current else {
                continue;
            };
            if entry.spec.default {
                table.default.get_or_insert_with(|| current.key.clone());
                continue;
            }
            for name in &entry.spec.names {
                // The validator rejects a name listed twice; should one slip
                // through, the first certificate keeps it.
                match name.strip_prefix("*.") {
                    Some(parent) => table.wildcard.entry(parent.to_string()),
                    None => table.exact.entry(name.clone()),
                }
                .or_insert_with(|| current.key.clone());
            }
        }
        table
    }

    /// Returns the certificate for an SNI name: an exact name first, then a
    /// wildcard covering exactly one more label, then the default.
    fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let lowered;
            let name = if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
                lowered = name.to_ascii_lowercase();
                lowered.as_str()
            } else {
                name
            };
            if let Some(found) = self.exact.get(name) {
                return Some(found.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(found) = self.wildcard.get(parent) {
                    return Some(found.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// Chooses the server certificate by SNI for rustls.
pub struct SniResolver {
    table: ArcSwap<CertTable>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.table.load();
        f.debug_struct("SniResolver")
            .field("default", &table.default.is_some())
            .field("exact", &table.exact.len())
            .field("wildcard", &table.wildcard.len())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().find(client_hello.server_name())
    }
}

/// The configured certificates with the ones being served, and the resolver
/// built from them.
pub struct CertificateStore {
    resolver: Arc<SniResolver>,
    entries: Mutex<Vec<Entry>>,
}

impl Default for CertificateStore {
    fn default() -> Self {
        CertificateStore::new()
    }
}

impl CertificateStore {
    pub fn new() -> CertificateStore {
        CertificateStore {
            resolver: Arc::new(SniResolver {
                table: ArcSwap::from_pointee(CertTable::default()),
            }),
            entries: Mutex::new(Vec::new()),
        }
    }

    pub fn resolver(&self) -> Arc<SniResolver> {
        self.resolver.clone()
    }

    /// Replaces the list of certificates and loads those whose files changed
    /// since they were last tried (every one with `force`). A certificate
    /// whose files keep their paths keeps serving while its new files fail
    /// to load. Returns the errors, each prefixed by its certificate label.
    pub fn update(&self, specs: Vec<CertificateSpec>, force: bool) -> Vec<String> {
        let now = unix_now();
        let mut entries = self.entries.lock().unwrap();
        let mut previous = std::mem::take(&mut *entries);
        let mut errors = Vec::new();
        for spec in specs {
            let kept = previous.iter().position(|entry| {
                entry.spec.cert_path == spec.cert_path && entry.spec.key_path == spec.key_path
            });
            let mut entry = match kept {
                Some(index) => {
                    let mut entry = previous.swap_remove(index);
                    entry.spec = spec;
                    entry
                }
                None => Entry::new(spec),
            };
            if let Some(error) = entry.refresh(force, now) {
                errors.push(format!("certificate `{}`: {error}", entry.spec.label()));
            }
            entries.push(entry);
        }
        self.resolver
            .table
            .store(Arc::new(CertTable::build(&entries)));
        errors
    }

    /// Loads again the certificates whose files changed since they were
    /// last tried. Returns the errors of the certificates that cannot load.
    pub fn poll(&self) -> Vec<String> {
        let specs: Vec<CertificateSpec> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .map(|entry| entry.spec.clone())
            .collect();
        self.update(specs, false)
    }

    pub fn status(&self) -> Vec<CertificateStatus> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|entry| CertificateStatus {
                default: entry.spec.default,
                names: entry.spec.names.clone(),
                dns_names: entry
                    .current
                    .as_ref()
                    .map(|current| current.dns_names.clone())
                    .unwrap_or_default(),
                cert_file: entry.spec.cert_path.display().to_string(),
                key_file: entry.spec.key_path.display().to_string(),
                not_after: entry.current.as_ref().map(|current| current.not_after),
                loaded_at: entry.loaded_at,
                last_error: entry
                    .last_error
                    .as_ref()
                    .map(|(message, _)| message.clone()),
                last_error_at: entry.last_error.as_ref().map(|(_, at)| *at),
            })
            .collect()
    }

    /// Returns the seconds until each served certificate expires.
    pub fn expiry(&self) -> Vec<CertificateExpiry> {
        let now = unix_now();
        self.entries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|entry| {
                let current = entry.current.as_ref()?;
                Some(CertificateExpiry {
                    name: entry.spec.label().to_string(),
                    file: entry.spec.cert_path.display().to_string(),
                    seconds: current.not_after - now,
                })
            })
            .collect()
    }

    /// Returns the certificate a handshake with this SNI name gets.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.resolver.table.load().find(server_name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use proptest::prelude::*;
    use rustls::sign::CertifiedKey;

    use super::CertTable;

    /// Returns `count` distinct certified keys; identity is the `Arc` pointer.
    fn keys(count: usize) -> Vec<Arc<CertifiedKey>> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["test.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signing = super::super::certs::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        (0..count)
            .map(|_| Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing.clone())))
            .collect()
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn sni_lookup_prefers_exact_then_one_label_wildcard(
            parent in prop::collection::vec(label(), 1..4).prop_map(|labels| labels.join(".")),
            first in label(),
            second in label(),
            uppercase in any::<bool>(),
        ) {
            let [default, exact, wildcard] = <[_; 3]>::try_from(keys(3)).ok().unwrap();
            let exact_name = format!("{first}.{parent}");
            let table = CertTable {
                default: Some(default.clone()),
                exact: HashMap::from([(exact_name.clone(), exact.clone())]),
                wildcard: HashMap::from([(parent.clone(), wildcard.clone())]),
            };
            let ask = |name: &str| {
                let name = if uppercase { name.to_ascii_uppercase() } else { name.to_string() };
                table.find(Some(&name)).unwrap()
            };

            let sibling = format!("{second}.{parent}");
            let nested = format!("{second}.{first}.{parent}");
            prop_assert!(Arc::ptr_eq(&ask(&exact_name), &exact));
            if second != first {
                prop_assert!(Arc::ptr_eq(&ask(&sibling), &wildcard));
            }
            prop_assert!(Arc::ptr_eq(&ask(&nested), &default));
            prop_assert!(Arc::ptr_eq(&ask(&parent), &default));
            prop_assert!(Arc::ptr_eq(&table.find(None).unwrap(), &default));
        }
    }
}
