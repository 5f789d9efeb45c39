//! The file checks of `--validate-config`: every certificate, key and CA
//! bundle that the configuration names is read and checked the way the
//! service would load it. The config crate never opens files, so these
//! checks run after the configuration itself validated.

use std::path::Path;

use valkyrie_config::Config;

use super::certs::{load_ca_bundle, load_pair, CertError, PemPair};
use super::format_utc;

/// One problem with a file that the configuration names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProblem {
    /// Dotted path of the config key that names the file, such as
    /// `security.certificates[1].key_path`.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Checks the TLS files of `config` as of `now` (seconds since the Unix
/// epoch): files that are missing or not PEM, keys that do not match their
/// certificate, certificates outside their validity period, and CA bundles.
/// Listener certificates are checked only when `enable_tls` is true.
pub fn check_files(config: &Config, now: i64) -> Vec<FileProblem> {
    let mut problems = Vec::new();
    let security = &config.security;
    if security.enable_tls {
        check_pair(
            &mut problems,
            ("security.tls_cert_path", &security.tls_cert_path),
            ("security.tls_key_path", &security.tls_key_path),
            now,
        );
        for (index, entry) in security.certificates.iter().enumerate() {
            check_pair(
                &mut problems,
                (
                    &format!("security.certificates[{index}].cert_path"),
                    &entry.cert_path,
                ),
                (
                    &format!("security.certificates[{index}].key_path"),
                    &entry.key_path,
                ),
                now,
            );
        }
        if let Some(path) = &security.client_ca_path {
            check_bundle(&mut problems, "security.client_ca_path", path);
        }
    }
    for (index, upstream) in config.upstreams.iter().enumerate() {
        let Some(tls) = &upstream.tls else {
            continue;
        };
        if let Some(path) = &tls.ca_path {
            check_bundle(
                &mut problems,
                &format!("upstreams[{index}].tls.ca_path"),
                path,
            );
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_path, &tls.client_key_path) {
            check_pair(
                &mut problems,
                (&format!("upstreams[{index}].tls.client_cert_path"), cert),
                (&format!("upstreams[{index}].tls.client_key_path"), key),
                now,
            );
        }
    }
    problems
}

fn check_pair(
    problems: &mut Vec<FileProblem>,
    (cert_key, cert_path): (&str, &str),
    (key_key, key_path): (&str, &str),
    now: i64,
) {
    let (cert_file, key_file) = (Path::new(cert_path), Path::new(key_path));
    let cert = std::fs::read(cert_file);
    let key = std::fs::read(key_file);
    for (result, config_key, path) in [(&cert, cert_key, cert_path), (&key, key_key, key_path)] {
        if let Err(error) = result {
            problems.push(FileProblem {
                key: config_key.to_string(),
                message: format!("`{config_key}`: cannot read {path}: {error}"),
                hint: Some(
                    "check the path and that the service user may read the file".to_string(),
                ),
            });
        }
    }
    let (Ok(cert), Ok(key)) = (cert, key) else {
        return;
    };
    let pair = PemPair { cert, key };
    let loaded = match load_pair(&pair, cert_file, key_file) {
        Ok(loaded) => loaded,
        Err(error) => {
            let (config_key, hint) = match &error {
                CertError::KeyMismatch { .. } => (
                    key_key,
                    "the key must be the one the certificate was issued for; check that the two paths belong together",
                ),
                CertError::NoKey { .. } | CertError::Key { .. } => {
                    (key_key, "the key file must hold an unencrypted PEM private key")
                }
                _ => (cert_key, "the file must hold the PEM certificate chain, leaf first"),
            };
            problems.push(FileProblem {
                key: config_key.to_string(),
                message: format!("`{config_key}`: {error}"),
                hint: Some(hint.to_string()),
            });
            return;
        }
    };
    if loaded.is_expired_at(now) {
        problems.push(FileProblem {
            key: cert_key.to_string(),
            message: format!(
                "`{cert_key}`: the certificate in {cert_path} expired on {}",
                format_utc(loaded.not_after)
            ),
            hint: Some("renew the certificate and point this key at the new file".to_string()),
        });
    } else if loaded.is_not_yet_valid_at(now) {
        problems.push(FileProblem {
            key: cert_key.to_string(),
            message: format!(
                "`{cert_key}`: the certificate in {cert_path} is not valid before {}",
                format_utc(loaded.not_before)
            ),
            hint: Some(
                "check the system clock or wait until the certificate becomes valid".to_string(),
            ),
        });
    }
}

fn check_bundle(problems: &mut Vec<FileProblem>, config_key: &str, path: &str) {
    if let Err(error) = load_ca_bundle(Path::new(path)) {
        problems.push(FileProblem {
            key: config_key.to_string(),
            message: format!("`{config_key}`: {error}"),
            hint: Some("the file must hold one or more PEM CA certificates".to_string()),
        });
    }
}
