//! Reading PEM certificate chains, private keys and CA bundles, and the
//! facts about a certificate that operators need: names and validity.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate file or key that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} contains no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)")]
    NoCertificate { path: PathBuf },
    #[error("{path} contains no PEM private key (expected a PKCS#8, PKCS#1 or SEC1 key block)")]
    NoKey { path: PathBuf },
    #[error("invalid PEM in {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("invalid certificate in {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("unsupported private key in {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// The bytes of a certificate chain file and its key file, as read together.
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl PemPair {
    /// Reads both files.
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<PemPair, CertError> {
        Ok(PemPair {
            cert: read_file(cert_path)?,
            key: read_file(key_path)?,
        })
    }

    /// Returns a hash of both files' contents, used to notice a changed file.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hasher.write(&self.cert);
        hasher.write_u8(0);
        hasher.write(&self.key);
        hasher.finish()
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|error| CertError::Read {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

/// Returns a hash of a file's contents.
pub(crate) fn file_fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// A certificate chain with its private key, ready to serve, and the
/// details shown in status and metrics.
#[derive(Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// Start of the leaf certificate's validity, in seconds since the Unix epoch.
    pub not_before: i64,
    /// End of the leaf certificate's validity, in seconds since the Unix epoch.
    pub not_after: i64,
    /// DNS names in the leaf certificate's subject alternative names.
    pub dns_names: Vec<String>,
    /// Hash of the certificate and key files this was loaded from.
    pub fingerprint: u64,
}

impl LoadedCertificate {
    /// Returns true when the leaf certificate's validity ended before `now`
    /// (seconds since the Unix epoch).
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.not_after < now
    }

    /// Returns true when the leaf certificate's validity starts after `now`.
    pub fn is_not_yet_valid_at(&self, now: i64) -> bool {
        self.not_before > now
    }
}

/// Returns the current time in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Returns the crypto provider every TLS configuration of the proxy uses.
// NOTE: rustls 0.23.48 deprecates the ring provider because it lacks the
// post-quantum X25519MLKEM768 key exchange; handshakes use X25519 and the
// NIST curves instead. Moving to aws-lc-rs brings it, at the cost of a C
// and CMake build of aws-lc.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in PEM text; fails when there is none.
pub fn parse_certificates(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertError::Pem {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

/// Parses the first private key in PEM text.
pub fn parse_private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: path.to_path_buf(),
        },
        other => CertError::Pem {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// Builds a servable certificate from PEM bytes and checks that the key
/// belongs to the leaf certificate. Validity dates are read but not
/// checked here: callers decide what an expired certificate means.
pub fn load_pair(
    pair: &PemPair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<LoadedCertificate, CertError> {
    let chain = parse_certificates(&pair.cert, cert_path)?;
    let details = leaf_details(&chain[0], cert_path)?;
    let key = parse_private_key(&pair.key, key_path)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| CertError::Key {
            path: key_path.to_path_buf(),
            message: error.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
        // The provider could not derive the public key (not the case for the
        // key types ring loads); the handshake still fails on a wrong key.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(error) => {
            return Err(CertError::Certificate {
                path: cert_path.to_path_buf(),
                message: error.to_string(),
            })
        }
    }
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        not_before: details.not_before,
        not_after: details.not_after,
        dns_names: details.dns_names,
        fingerprint: pair.fingerprint(),
    })
}

/// Reads and loads a certificate chain and its key from files.
pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<LoadedCertificate, CertError> {
    let pair = PemPair::read(cert_path, key_path)?;
    load_pair(&pair, cert_path, key_path)
}

struct LeafDetails {
    not_before: i64,
    not_after: i64,
    dns_names: Vec<String>,
}

fn leaf_details(leaf: &CertificateDer<'_>, path: &Path) -> Result<LeafDetails, CertError> {
    let (_, parsed) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|error| CertError::Certificate {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    let validity = parsed.validity();
    let dns_names = match parsed.subject_alternative_name() {
        Ok(Some(names)) => names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(LeafDetails {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        dns_names,
    })
}

/// Reads a PEM bundle of CA certificates into a root store.
pub fn load_ca_bundle(path: &Path) -> Result<RootCertStore, CertError> {
    let pem = read_file(path)?;
    roots_from_pem(&pem, path)
}

pub(crate) fn roots_from_pem(pem: &[u8], path: &Path) -> Result<RootCertStore, CertError> {
    let certificates = parse_certificates(pem, path)?;
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|error| CertError::Certificate {
                path: path.to_path_buf(),
                message: error.to_string(),
            })?;
    }
    Ok(roots)
}
