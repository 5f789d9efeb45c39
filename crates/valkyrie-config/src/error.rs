//! Errors found while reading or validating a configuration file.

use std::fmt;

/// Category of the problem a [`ConfigError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid UTF-8.
    Encoding,
    /// The file is not valid TOML.
    Syntax,
    /// A key that the section does not define.
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong TOML type, such as an integer where a string is expected.
    WrongType,
    /// A duration, size or rate string that does not parse.
    InvalidUnit,
    /// A listen address, endpoint, CIDR range or URL that does not parse.
    InvalidAddress,
    /// A value of the right type outside the allowed set or range.
    InvalidValue,
    /// A regular expression that does not compile.
    InvalidRegex,
    /// A reference to an upstream or key table that is not defined.
    UndefinedName,
    /// A second upstream, route or key table with a name already used.
    DuplicateName,
    /// Keys or sections that contradict each other.
    Conflict,
    /// A route that no request can reach.
    UnreachableRoute,
}

/// One problem in a configuration file, with its position and a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ErrorKind,
    /// The file as it was named to the loader.
    pub file: String,
    /// Line of the problem, from 1, or 0 when the whole file is concerned.
    pub line: usize,
    /// Column of the problem in characters, from 1, or 0 when the whole file is concerned.
    pub column: usize,
    /// Dotted path of the key, such as `routes[2].path_prefix` (array
    /// indexes count from 0). Empty for syntax errors.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {}", hint.replace('\n', "\n        "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration file, in the order they appear in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    /// Writes one block per error: the `file:line:column: message` line, then
    /// the hint on an indented line when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Maps byte offsets in a text to 1-based lines and character columns.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(offset, _)| offset + 1));
        LineIndex { text, line_starts }
    }

    /// Returns the line and column of `offset`. Offsets past the end map to
    /// the end of the text.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let index = LineIndex::new("ab\nµc\n\nd");
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(2), (1, 3));
        assert_eq!(index.position(3), (2, 1));
        // `µ` takes two bytes but one column.
        assert_eq!(index.position(5), (2, 2));
        assert_eq!(index.position(7), (3, 1));
        assert_eq!(index.position(8), (4, 1));
        assert_eq!(index.position(100), (4, 2));
    }

    #[test]
    fn display_puts_hint_on_indented_line() {
        let error = ConfigError {
            kind: ErrorKind::UnknownKey,
            file: "config/valkyrie.toml".to_string(),
            line: 57,
            column: 1,
            key: "routes[2].worker_threads".to_string(),
            message: "unknown key `worker_threads` in [[routes]]: it belongs in [server]"
                .to_string(),
            hint: Some("move it under the [server] header".to_string()),
        };
        assert_eq!(
            error.to_string(),
            "config/valkyrie.toml:57:1: unknown key `worker_threads` in [[routes]]: it belongs in [server]\n  hint: move it under the [server] header"
        );
    }

    #[test]
    fn display_of_file_error_has_no_position() {
        let error = ConfigError {
            kind: ErrorKind::Io,
            file: "missing.toml".to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message: "cannot read the file: No such file or directory".to_string(),
            hint: None,
        };
        assert_eq!(
            error.to_string(),
            "missing.toml: cannot read the file: No such file or directory"
        );
    }
}
