//! Validation of a parsed TOML document against the configuration schema.
//!
//! The validator walks the document before serde deserializes it, so that
//! every problem is reported at once with the position of its key or value.
//! This module walks tables and lists. Checks on one value live in
//! [`scalars`] and [`text`], unknown keys in [`unknown`], checks across the
//! keys of one table in [`rules`], and checks across sections (names and
//! references) in [`references`].

mod references;
mod rules;
mod scalars;
pub(crate) mod spec;
pub(crate) mod text;
mod unknown;

use toml_edit::{Item, TableLike, Value};

use crate::error::{ConfigError, ConfigErrors, ErrorKind, LineIndex};
use crate::nearest::nearest;
use spec::{Key, Kind, Section};
use text::Text;

/// Collects the problems of one file.
pub(crate) struct Validator<'a> {
    source: &'a str,
    file: &'a str,
    lines: LineIndex<'a>,
    sections: Vec<&'static Section>,
    found: Vec<Found>,
}

/// A problem before its offset is turned into a line and column.
struct Found {
    offset: usize,
    kind: ErrorKind,
    key: String,
    message: String,
    hint: Option<String>,
}

/// A table of the document with its dotted path and the offset of its header
/// (or of its key, for tables written without a header).
pub(crate) struct TableAt<'t> {
    pub table: &'t dyn TableLike,
    pub path: String,
    pub at: usize,
    /// Known keys that an unknown key of this table is a likely typo of.
    /// The unknown-key error already suggests them, so checks for absent
    /// keys skip them to report one mistake once.
    pub misspelled: Vec<&'static str>,
}

impl<'t> TableAt<'t> {
    /// Returns whether `key` is present or was likely meant by a misspelled key.
    pub fn has_or_intends(&self, key: &str) -> bool {
        self.table.contains_key(key) || self.misspelled.contains(&key)
    }

    /// Returns the dotted path of a key of this table.
    pub fn child(&self, key: &str) -> String {
        join_path(&self.path, key)
    }

    /// Returns the item under `key` and the offset of its value.
    pub fn item(&self, key: &str) -> Option<(&'t Item, usize)> {
        let (found_key, item) = self.table.get_key_value(key)?;
        let at = span_start(item)
            .or_else(|| found_key.span().map(|span| span.start))
            .unwrap_or(self.at);
        Some((item, at))
    }

    /// Returns the string under `key` and the offset of its value, or `None`
    /// when the key is absent or not a string.
    pub fn text(&self, key: &str) -> Option<(&'t str, usize)> {
        let (item, at) = self.item(key)?;
        Some((item.as_str()?, at))
    }

    /// Returns the offset of the key itself.
    pub fn key_at(&self, key: &str) -> usize {
        self.table
            .key(key)
            .and_then(|found| found.span())
            .map_or(self.at, |span| span.start)
    }
}

pub(crate) fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn span_start(item: &Item) -> Option<usize> {
    item.span().map(|span| span.start)
}

/// Returns the tables of an array of tables, written either as `[[name]]`
/// headers or as an array of inline tables, with their offsets. Elements
/// that are not tables are skipped.
pub(crate) fn table_list(item: &Item) -> Vec<(&dyn TableLike, usize)> {
    match item {
        Item::ArrayOfTables(tables) => tables
            .iter()
            .map(|table| {
                (
                    table as &dyn TableLike,
                    table.span().map_or(0, |span| span.start),
                )
            })
            .collect(),
        Item::Value(Value::Array(array)) => array
            .iter()
            .filter_map(|value| {
                let table = value.as_inline_table()?;
                Some((
                    table as &dyn TableLike,
                    value.span().map_or(0, |span| span.start),
                ))
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl<'a> Validator<'a> {
    pub(crate) fn new(source: &'a str, file: &'a str) -> Self {
        Validator {
            source,
            file,
            lines: LineIndex::new(source),
            sections: spec::all_sections(),
            found: Vec::new(),
        }
    }

    pub(crate) fn report(
        &mut self,
        offset: usize,
        kind: ErrorKind,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.found.push(Found {
            offset,
            kind,
            key: key.into(),
            message: message.into(),
            hint,
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.found.is_empty()
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        self.lines.line(offset)
    }

    /// Returns the problems found, ordered by their position in the file.
    pub(crate) fn finish(mut self) -> ConfigErrors {
        self.found.sort_by_key(|found| found.offset);
        let errors = self
            .found
            .into_iter()
            .map(|found| {
                let (line, column) = self.lines.position(found.offset);
                ConfigError {
                    kind: found.kind,
                    file: self.file.to_string(),
                    line,
                    column,
                    key: found.key,
                    message: found.message,
                    hint: found.hint,
                }
            })
            .collect();
        ConfigErrors { errors }
    }

    pub(crate) fn syntax_error(&mut self, error: &toml_edit::TomlError) {
        let offset = error.span().map_or(0, |span| span.start);
        // The parser's message may span several lines ("invalid array",
        // "expected `]`"). One line reads better after the position.
        let lines: Vec<&str> = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let detail = lines.join(", ");
        let message = if detail.is_empty() {
            "invalid TOML".to_string()
        } else {
            format!("invalid TOML: {detail}")
        };
        self.report(offset, ErrorKind::Syntax, "", message, None);
    }

    /// Checks the whole document: every section against the schema, then the
    /// names and references across sections.
    pub(crate) fn check_document(&mut self, root: &toml_edit::Table) {
        let root_at = TableAt {
            misspelled: Vec::new(),
            table: root,
            path: String::new(),
            at: 0,
        };
        self.check_table(&root_at, &spec::ROOT);
        references::check(self, root);
    }

    fn check_table(&mut self, table: &TableAt<'_>, section: &'static Section) {
        let mut misspelled = Vec::new();
        let mut unknown_keys = false;
        for (name, item) in table.table.iter() {
            let key_at = table.key_at(name);
            let path = table.child(name);
            match section.key(name) {
                Some(key) => self.check_item(item, key, &path, key_at),
                None => {
                    unknown_keys = true;
                    misspelled.extend(nearest(name, section.key_names()));
                    self.unknown_key(section, name, &path, key_at);
                }
            }
        }
        let table = &TableAt {
            table: table.table,
            path: table.path.clone(),
            at: table.at,
            misspelled,
        };

        for key in section.keys.iter().filter(|key| key.required) {
            if !table.has_or_intends(key.name) {
                let message = format!(
                    "missing required key `{}` in {}",
                    key.name,
                    section.header()
                );
                let hint = match key.kind {
                    Kind::Table(child) => child.example.map(str::to_string),
                    _ => None,
                };
                self.report(
                    table.at,
                    ErrorKind::MissingKey,
                    table.child(key.name),
                    message,
                    hint,
                );
            }
        }

        if section.exactly_one {
            self.check_exactly_one(table, section, unknown_keys);
        }
        if let Some(rule) = section.rule {
            rule(self, table);
        }
    }

    /// Reports a choice section with none or several of its keys. None is
    /// not reported again when the section has `unknown_keys`, whose
    /// errors show the choices.
    fn check_exactly_one(
        &mut self,
        table: &TableAt<'_>,
        section: &'static Section,
        unknown_keys: bool,
    ) {
        let present: Vec<&str> = table
            .table
            .iter()
            .map(|(name, _)| name)
            .filter(|name| section.key(name).is_some())
            .collect();
        let choices = text::list_choices(&section.key_names().collect::<Vec<_>>());
        match present.as_slice() {
            [] if unknown_keys => {}
            [] => {
                let message = format!("`{}` needs one of {choices}", table.path);
                self.report(
                    table.at,
                    ErrorKind::MissingKey,
                    table.path.clone(),
                    message,
                    section.example.map(str::to_string),
                );
            }
            [_] => {}
            [first, rest @ ..] => {
                for extra in rest {
                    let message = format!(
                        "`{}` sets both `{first}` and `{extra}`: choose one of {choices}",
                        table.path
                    );
                    self.report(
                        table.key_at(extra),
                        ErrorKind::Conflict,
                        table.child(extra),
                        message,
                        None,
                    );
                }
            }
        }
    }

    fn check_item(&mut self, item: &Item, key: &'static Key, path: &str, key_at: usize) {
        let at = span_start(item).unwrap_or(key_at);
        match &key.kind {
            Kind::Table(section) => match item.as_table_like() {
                Some(table) => {
                    let table = TableAt {
                        misspelled: Vec::new(),
                        table,
                        path: path.to_string(),
                        at,
                    };
                    self.check_table(&table, section);
                }
                None => {
                    let hint = section.example.map(str::to_string);
                    self.wrong_type(item, at, path, "a table", hint);
                }
            },
            Kind::TableList(section) => self.check_table_list(item, section, path, at),
            Kind::Endpoints => self.check_endpoints(item, path, at),
            Kind::TextList(text) => self.check_list(
                item,
                path,
                at,
                "an array of strings",
                |validator, value, path, at| validator.check_text_value(value, *text, path, at),
            ),
            Kind::IntegerList { min, max } => self.check_list(
                item,
                path,
                at,
                "an array of integers",
                |validator, value, path, at| validator.check_integer(value, *min, *max, path, at),
            ),
            scalar => match item.as_value() {
                Some(value) => self.check_scalar(value, scalar, path, at),
                None => {
                    let expected = expected_type(scalar);
                    self.wrong_type(item, at, path, expected, None)
                }
            },
        }
    }

    /// Checks each element of an array value with `check_element`.
    fn check_list(
        &mut self,
        item: &Item,
        path: &str,
        at: usize,
        expected: &str,
        mut check_element: impl FnMut(&mut Self, &Value, &str, usize),
    ) {
        let Some(array) = item.as_array() else {
            let hint = match item.as_value() {
                Some(value @ (Value::String(_) | Value::Integer(_))) => {
                    Some(format!("write it as a list: [{}]", self.raw(value)))
                }
                _ => None,
            };
            self.wrong_type(item, at, path, expected, hint);
            return;
        };
        for (index, element) in array.iter().enumerate() {
            let element_at = element.span().map_or(at, |span| span.start);
            check_element(self, element, &format!("{path}[{index}]"), element_at);
        }
    }

    fn check_table_list(&mut self, item: &Item, section: &'static Section, path: &str, at: usize) {
        let is_list = match item {
            Item::ArrayOfTables(_) => true,
            Item::Value(Value::Array(array)) => {
                for (index, element) in array.iter().enumerate() {
                    if !element.is_inline_table() {
                        let element_at = element.span().map_or(at, |span| span.start);
                        let element_path = format!("{path}[{index}]");
                        self.wrong_value_type(
                            element,
                            element_at,
                            &element_path,
                            "an inline table",
                            None,
                        );
                    }
                }
                true
            }
            _ => false,
        };
        if !is_list {
            let hint = item
                .is_table()
                .then(|| format!("write each entry under its own [[{}]] header", section.path));
            self.wrong_type(
                item,
                at,
                path,
                &format!("an array of tables ([[{}]])", section.path),
                hint,
            );
            return;
        }
        for (index, (table, table_at)) in table_list(item).into_iter().enumerate() {
            let table = TableAt {
                misspelled: Vec::new(),
                table,
                path: format!("{path}[{index}]"),
                at: table_at,
            };
            self.check_table(&table, section);
        }
    }

    fn check_endpoints(&mut self, item: &Item, path: &str, at: usize) {
        if let Item::ArrayOfTables(_) = item {
            self.check_table_list(item, &spec::ENDPOINT, path, at);
            return;
        }
        let expected = "an array of \"host:port\" strings or { address, weight } tables";
        let Some(array) = item.as_array() else {
            let hint = match item.as_value() {
                Some(value @ Value::String(_)) => {
                    Some(format!("write it as a list: [{}]", self.raw(value)))
                }
                _ => None,
            };
            self.wrong_type(item, at, path, expected, hint);
            return;
        };
        for (index, element) in array.iter().enumerate() {
            let element_at = element.span().map_or(at, |span| span.start);
            let element_path = format!("{path}[{index}]");
            match element {
                Value::String(_) => {
                    self.check_text_value(element, Text::Endpoint, &element_path, element_at)
                }
                Value::InlineTable(table) => {
                    let table = TableAt {
                        misspelled: Vec::new(),
                        table,
                        path: element_path,
                        at: element_at,
                    };
                    self.check_table(&table, &spec::ENDPOINT);
                }
                _ => self.wrong_value_type(
                    element,
                    element_at,
                    &element_path,
                    "a \"host:port\" string",
                    None,
                ),
            }
        }
    }

    fn wrong_type(
        &mut self,
        item: &Item,
        at: usize,
        path: &str,
        expected: &str,
        hint: Option<String>,
    ) {
        let found = match item {
            Item::Value(value) => self.describe(value),
            Item::Table(_) => "a table".to_string(),
            Item::ArrayOfTables(_) => "an array of tables".to_string(),
            Item::None => "nothing".to_string(),
        };
        let message = format!("`{path}`: expected {expected}, found {found}");
        self.report(at, ErrorKind::WrongType, path, message, hint);
    }

    fn wrong_value_type(
        &mut self,
        value: &Value,
        at: usize,
        path: &str,
        expected: &str,
        hint: Option<String>,
    ) {
        let message = format!(
            "`{path}`: expected {expected}, found {}",
            self.describe(value)
        );
        self.report(at, ErrorKind::WrongType, path, message, hint);
    }

    /// Returns the value's type and its text in the file, such as `integer 16`.
    fn describe(&self, value: &Value) -> String {
        format!("{} {}", value.type_name(), self.raw(value))
    }

    /// Returns the value as written in the file, shortened to 40 characters.
    fn raw(&self, value: &Value) -> String {
        let text = match value.span() {
            Some(span) => self.source.get(span).unwrap_or_default().to_string(),
            None => value.to_string().trim().to_string(),
        };
        if text.chars().count() > 40 {
            let shortened: String = text.chars().take(37).collect();
            format!("{shortened}...")
        } else {
            text
        }
    }
}

fn expected_type(kind: &Kind) -> &'static str {
    match kind {
        Kind::Bool => "a boolean (true or false)",
        Kind::Text(_) => "a string",
        Kind::Integer { .. } => "an integer",
        Kind::Number(_) => "a number",
        Kind::Duration { .. } => "a duration string such as \"10s\"",
        Kind::Size => "a size such as \"64KB\" or a number of bytes",
        Kind::Rate => "a rate string such as \"1000/min\"",
        Kind::TextList(_) => "an array of strings",
        Kind::IntegerList { .. } => "an array of integers",
        Kind::Table(_) => "a table",
        Kind::TableList(_) => "an array of tables",
        Kind::Endpoints => "an array of endpoints",
    }
}
