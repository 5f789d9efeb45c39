//! Helpers shared by the integration tests.

#![allow(dead_code)]

use valkyrie_config::{parse_str, ConfigError, ErrorKind};

/// Two valid upstreams, appended after a test's own lines so that those keep
/// their line numbers.
pub const UPSTREAMS: &str = r#"
[[upstreams]]
name = "api"
endpoints = ["127.0.0.1:9001"]

[[upstreams]]
name = "web"
endpoints = ["127.0.0.1:9002"]
"#;

/// Returns the errors for `text`, failing the test when it is accepted.
pub fn errors(text: &str) -> Vec<ConfigError> {
    match parse_str(text, "test.toml") {
        Ok(config) => panic!("config accepted, expected errors:\n{text}\n{config:#?}"),
        Err(errors) => errors.errors,
    }
}

/// Returns the single error for `text`, failing the test when there are
/// none or several.
pub fn only_error(text: &str) -> ConfigError {
    let mut found = errors(text);
    assert_eq!(
        found.len(),
        1,
        "expected one error, got:\n{}",
        found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    found.remove(0)
}

/// Returns the single error for `text` after checking its kind, position
/// and key.
pub fn expect_error(
    text: &str,
    kind: ErrorKind,
    line: usize,
    column: usize,
    key: &str,
) -> ConfigError {
    let error = only_error(text);
    assert_eq!(error.kind, kind, "{error}");
    assert_eq!((error.line, error.column), (line, column), "{error}");
    assert_eq!(error.key, key, "{error}");
    assert_eq!(error.file, "test.toml");
    error
}

/// Like [`expect_error`] for a snippet followed by [`UPSTREAMS`].
pub fn expect_error_with_upstreams(
    snippet: &str,
    kind: ErrorKind,
    line: usize,
    column: usize,
    key: &str,
) -> ConfigError {
    expect_error(&format!("{snippet}{UPSTREAMS}"), kind, line, column, key)
}

pub fn hint(error: &ConfigError) -> &str {
    error.hint.as_deref().unwrap_or("")
}
