//! TLS certificates as operators see them: the file checks of
//! `--validate-config`, the `tls` block of `/config/status`, and the
//! certificate expiry gauge.

use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Value};
use toml_edit::ImDocument;
use valkyrie_config::Config;
use valkyrie_proxy::tls::{self, format_utc, unix_now, TlsTerminator};

use crate::position::key_position;

/// Name of the gauge with the seconds until each served certificate expires.
pub const EXPIRY_GAUGE: &str = "valkyrie_tls_certificate_expiry_seconds";

/// Checks the certificate, key and CA files that `config` names and returns
/// one printable error per problem, `file:line:column: message` with a hint,
/// pointing at the key that names the file.
pub fn file_problems(config: &Config, text: &str, file: &Path) -> Vec<String> {
    let document = ImDocument::parse(text.to_string()).ok();
    tls::check_files(config, unix_now())
        .into_iter()
        .map(|problem| {
            let position = document
                .as_ref()
                .and_then(|document| key_position(document, text, &problem.key));
            let mut line = match position {
                Some((line, column)) => {
                    format!("{}:{line}:{column}: {}", file.display(), problem.message)
                }
                None => format!("{}: {}", file.display(), problem.message),
            };
            if let Some(hint) = &problem.hint {
                let _ = write!(line, "\n  hint: {hint}");
            }
            line
        })
        .collect()
}

/// Runs the file checks on a config read from `file` for `--validate-config`;
/// returns the config when every file is usable, else every problem.
pub fn check_config_files(config: Config, file: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let problems = file_problems(&config, &text, file);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems.join("\n"))
    }
}

/// Returns the `tls` block of `/config/status`.
pub fn status_json(terminator: &TlsTerminator) -> Value {
    let status = terminator.status();
    let now = unix_now();
    let certificates: Vec<Value> = status
        .certificates
        .iter()
        .map(|certificate| {
            json!({
                "default": certificate.default,
                "names": certificate.names,
                "dns_names": certificate.dns_names,
                "file": certificate.cert_file,
                "key_file": certificate.key_file,
                "not_after": certificate.not_after.map(format_utc),
                "expires_in_seconds": certificate.not_after.map(|at| at - now),
                "loaded_at": certificate.loaded_at.map(format_utc),
                "last_error": certificate.last_error,
                "last_error_at": certificate.last_error_at.map(format_utc),
            })
        })
        .collect();
    let client_ca = status.client_ca.map(|client_ca| {
        json!({
            "file": client_ca.file,
            "required": client_ca.required,
            "last_error": client_ca.last_error,
            "last_error_at": client_ca.last_error_at.map(format_utc),
        })
    });
    json!({
        "min_version": status.min_version,
        "certificates": certificates,
        "client_ca": client_ca,
    })
}

/// Writes the certificate expiry gauge in the Prometheus text format: one
/// sample per served certificate, labelled with its first server name (or
/// `default`) and its file.
pub fn write_expiry(text: &mut String, terminator: Option<&TlsTerminator>) {
    let Some(terminator) = terminator else {
        return;
    };
    let _ = writeln!(
        text,
        "# HELP {EXPIRY_GAUGE} Seconds until each served TLS certificate expires; negative once expired."
    );
    let _ = writeln!(text, "# TYPE {EXPIRY_GAUGE} gauge");
    for expiry in terminator.expiry() {
        let _ = writeln!(
            text,
            "{EXPIRY_GAUGE}{{name=\"{}\",file=\"{}\"}} {}",
            escape_label(&expiry.name),
            escape_label(&expiry.file),
            expiry.seconds
        );
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
