//! Configuration of the Valkyrie router: the TOML schema with its defaults,
//! the value types (durations, sizes, rates, addresses), and validation that
//! reports every error with file, line, column, key and a hint.
//!
//! ```
//! let config = valkyrie_config::parse_str("[server]\nworker_threads = 2\n", "inline.toml").unwrap();
//! assert_eq!(config.server.worker_threads, 2);
//!
//! let text = r#"
//! [[upstreams]]
//! name = "api"
//! endpoints = ["127.0.0.1:9001"]
//!
//! [[routes]]
//! name = "all"
//! upstream = "api"
//! worker_threads = 2
//! "#;
//! let errors = valkyrie_config::parse_str(text, "inline.toml").unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "inline.toml:9:1: unknown key `worker_threads` in [[routes]]: it belongs in [server]\n  \
//!      hint: move it under the [server] header"
//! );
//! ```

pub mod address;
mod error;
mod nearest;
pub mod schema;
pub mod units;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use nearest::{by_distance, edit_distance, nearest, suggestion};
pub use schema::*;
pub use units::{ByteSize, Duration, Rate};

use validate::Validator;

/// Reads, parses and validates a configuration file.
///
/// Errors name the file as `path` is written. A file that cannot be read or
/// is not UTF-8 gives a single error. Otherwise every problem is reported.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| {
        file_error(
            &file,
            ErrorKind::Io,
            format!("cannot read the file: {error}"),
        )
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse_str(&text, &file),
        Err(error) => {
            let valid_up_to = error.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&error.as_bytes()[..valid_up_to]);
            let mut validator = Validator::new(&prefix, &file);
            validator.report(
                valid_up_to,
                ErrorKind::Encoding,
                "",
                "the file is not valid UTF-8",
                Some("save the file as UTF-8".to_string()),
            );
            Err(validator.finish())
        }
    }
}

/// Parses and validates configuration text. Errors name it `file`.
pub fn parse_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut validator = Validator::new(text, file);
    let document = match toml_edit::ImDocument::parse(text.to_string()) {
        Ok(document) => document,
        Err(error) => {
            validator.syntax_error(&error);
            return Err(validator.finish());
        }
    };

    validator.check_document(document.as_table());
    if validator.has_errors() {
        return Err(validator.finish());
    }

    // The validator accepts only what deserializes, so this step fails only
    // when the schema and the validator disagree. Such a bug still gives a
    // normal error rather than a panic.
    toml_edit::de::from_document::<Config>(document).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        let message = format!("invalid configuration: {}", error.message());
        validator.report(offset, ErrorKind::InvalidValue, "", message, None);
        validator.finish()
    })
}

fn file_error(file: &str, kind: ErrorKind, message: String) -> ConfigErrors {
    ConfigErrors {
        errors: vec![ConfigError {
            kind,
            file: file.to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
            hint: None,
        }],
    }
}
