//! Positions of config keys in their file. A problem found after parsing,
//! such as a certificate or key-table file that cannot be read, is
//! reported with the file, line and column of the key that names it.

use std::fmt::Display;
use std::path::Path;

use toml_edit::{ImDocument, Item, TableLike};
use valkyrie_proxy::keys::TableError;

/// Returns the line and column of a dotted key such as
/// `key_tables[0].source` in `text`, parsed as `document`.
pub fn key_position(
    document: &ImDocument<String>,
    text: &str,
    key: &str,
) -> Option<(usize, usize)> {
    key_offset(document.as_table(), key).map(|offset| line_and_column(text, offset))
}

/// Formats `problem` as `file:line:column: problem` when `key` is found
/// in the config file `file`, and as `problem` alone otherwise (the file
/// cannot be read again, or the key is not written).
pub fn at_key(file: &Path, key: &str, problem: impl Display) -> String {
    let position = std::fs::read_to_string(file).ok().and_then(|text| {
        let document = ImDocument::parse(text.clone()).ok()?;
        key_position(&document, &text, key)
    });
    match position {
        Some((line, column)) => format!("{}:{line}:{column}: {problem}", file.display()),
        None => problem.to_string(),
    }
}

/// Formats a key table that cannot be loaded, with the position of the
/// config key at fault in `config_file` when the config is at fault.
pub fn table_error(error: &TableError, config_file: Option<&Path>) -> String {
    match (error.config_key(), config_file) {
        (Some(key), Some(file)) => at_key(file, &key, error),
        _ => error.to_string(),
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

    #[test]
    fn at_key_prefixes_the_position() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("valkyrie.toml");
        std::fs::write(
            &file,
            "[[key_tables]]\nname = \"t\"\nkey = { header = \"X-T\" }\nsource = { file = \"t.csv\" }\n",
        )
        .unwrap();
        assert_eq!(
            at_key(&file, "key_tables[0].source", "cannot read t.csv"),
            format!("{}:4:1: cannot read t.csv", file.display())
        );
        let missing = folder.path().join("gone.toml");
        assert_eq!(
            at_key(&missing, "key_tables[0].source", "cannot read t.csv"),
            "cannot read t.csv"
        );
    }
}
