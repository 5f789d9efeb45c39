//! TLS certificates as operators see them: the file checks of
//! `--validate-config`, the `tls` block of `/config/status`, and the
//! certificate expiry gauge.

use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Value};
use toml_edit::{ImDocument, Item, TableLike};
use valkyrie_config::Config;
use valkyrie_proxy::tls::{self, format_utc, unix_now, TlsTerminator};

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
                .and_then(|document| key_offset(document.as_table(), &problem.key))
                .map(|offset| line_and_column(text, offset));
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

/// Returns the offset of a dotted key such as `security.certificates[1].key_path`
/// in the document: the key itself, or the nearest table that contains it
/// when the key is not written (a default value).
fn key_offset(root: &dyn TableLike, path: &str) -> Option<usize> {
    let mut table = root;
    let mut found = None;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((key, item)) = table.get_key_value(name) else {
            return found;
        };
        let item_offset = key.span().or_else(|| item.span()).map(|span| span.start);
        found = item_offset.or(found);
        let next: Option<&dyn TableLike> = match (item, index) {
            (Item::ArrayOfTables(tables), Some(index)) => {
                let entry = tables.get(index)?;
                found = entry.span().map(|span| span.start).or(found);
                Some(entry)
            }
            (Item::Value(toml_edit::Value::Array(array)), Some(index)) => {
                let entry = array.get(index)?;
                found = entry.span().map(|span| span.start).or(found);
                entry.as_inline_table().map(|table| table as &dyn TableLike)
            }
            (item, None) => item.as_table_like(),
            _ => None,
        };
        match next {
            Some(next) => table = next,
            None => return found,
        }
    }
    found
}

/// Converts a byte offset to a line and a column in characters, both from 1.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_of(text: &str, path: &str) -> Option<(usize, usize)> {
        let document = ImDocument::parse(text.to_string()).unwrap();
        key_offset(document.as_table(), path).map(|offset| line_and_column(text, offset))
    }

    #[test]
    fn key_offset_finds_nested_keys() {
        let text = "[security]\nenable_tls = true\ntls_key_path = \"/k.pem\"\n\n[[security.certificates]]\nserver_names = [\"a\"]\ncert_path = \"/a.pem\"\nkey_path = \"/a-key.pem\"\n\n[[security.certificates]]\nserver_names = [\"b\"]\ncert_path = \"/b.pem\"\n  key_path = \"/b-key.pem\"\n";
        assert_eq!(offset_of(text, "security.tls_key_path"), Some((3, 1)));
        assert_eq!(
            offset_of(text, "security.certificates[1].key_path"),
            Some((13, 3))
        );
        assert_eq!(
            offset_of(text, "security.certificates[0].cert_path"),
            Some((7, 1))
        );
    }

    #[test]
    fn key_offset_falls_back_to_section() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[security]\nenable_tls = true\n";
        assert_eq!(offset_of(text, "security.tls_cert_path"), Some((4, 2)));
        assert_eq!(offset_of("", "security.tls_cert_path"), None);
    }

    #[test]
    fn key_offset_in_inline_tables() {
        let text = "[[upstreams]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\ntls = { ca_path = \"/ca.pem\" }\n";
        assert_eq!(offset_of(text, "upstreams[0].tls.ca_path"), Some((4, 9)));
    }
}
