//! Validation of a parsed TOML document against the configuration schema.
//!
//! The validator walks the document before serde deserializes it, so that every
//! problem is reported at once with the position of its key or value. Checks
//! on one value live in [`text`], checks across the keys of one table in
//! [`rules`], and checks across sections (names and references) in
//! [`references`].

mod references;
mod rules;
pub(crate) mod spec;
pub(crate) mod text;

use toml_edit::{Item, TableLike, Value};

use crate::error::{ConfigError, ConfigErrors, ErrorKind, LineIndex};
use crate::nearest::nearest;
use crate::units::{ByteSize, Duration, Rate};
use spec::{Key, Kind, NumberRange, Section};
use text::{check_text, Text};

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
        for (name, item) in table.table.iter() {
            let key_at = table.key_at(name);
            let path = table.child(name);
            match section.key(name) {
                Some(key) => self.check_item(item, key, &path, key_at),
                None => {
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
                self.report(
                    table.at,
                    ErrorKind::MissingKey,
                    table.child(key.name),
                    message,
                    None,
                );
            }
        }

        if section.exactly_one {
            self.check_exactly_one(table, section);
        }
        if let Some(rule) = section.rule {
            rule(self, table);
        }
    }

    fn check_exactly_one(&mut self, table: &TableAt<'_>, section: &'static Section) {
        let present: Vec<&str> = table
            .table
            .iter()
            .map(|(name, _)| name)
            .filter(|name| section.key(name).is_some())
            .collect();
        let choices = text::list_choices(&section.key_names().collect::<Vec<_>>());
        match present.as_slice() {
            [] if !table.misspelled.is_empty() => {}
            [] => {
                let message = format!("`{}` needs one of {choices}", table.path);
                self.report(
                    table.at,
                    ErrorKind::MissingKey,
                    table.path.clone(),
                    message,
                    None,
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
                None => self.wrong_type(item, at, path, "a table", None),
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

    fn check_scalar(&mut self, value: &Value, kind: &Kind, path: &str, at: usize) {
        match kind {
            Kind::Bool => {
                if value.as_bool().is_none() {
                    let hint = match value.as_str() {
                        Some(text @ ("true" | "false")) => {
                            Some(format!("remove the quotes: {text}"))
                        }
                        _ => None,
                    };
                    self.wrong_value_type(value, at, path, "a boolean (true or false)", hint);
                }
            }
            Kind::Text(text) => self.check_text_value(value, *text, path, at),
            Kind::Integer { min, max } => self.check_integer(value, *min, *max, path, at),
            Kind::Number(range) => self.check_number(value, range, path, at),
            Kind::Duration { nonzero } => self.check_duration(value, *nonzero, path, at),
            Kind::Size => self.check_size(value, path, at),
            Kind::Rate => self.check_rate(value, path, at),
            Kind::TextList(_)
            | Kind::IntegerList { .. }
            | Kind::Table(_)
            | Kind::TableList(_)
            | Kind::Endpoints => unreachable!("composite kinds are checked by check_item"),
        }
    }

    fn check_text_value(&mut self, value: &Value, text: Text, path: &str, at: usize) {
        let Some(string) = value.as_str() else {
            let hint = match value {
                Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => {
                    Some(format!("put the value in quotes: \"{}\"", self.raw(value)))
                }
                _ => None,
            };
            self.wrong_value_type(value, at, path, "a string", hint);
            return;
        };
        if let Err(problem) = check_text(text, string) {
            self.report(
                at,
                problem.kind,
                path,
                format!("`{path}`: {}", problem.message),
                problem.hint,
            );
        }
    }

    fn check_integer(&mut self, value: &Value, min: i64, max: i64, path: &str, at: usize) {
        let Some(number) = value.as_integer() else {
            let hint = match value.as_str().map(str::trim) {
                Some(text) if text.parse::<i64>().is_ok() => {
                    Some(format!("remove the quotes: {text}"))
                }
                _ => None,
            };
            self.wrong_value_type(value, at, path, "an integer", hint);
            return;
        };
        if number < min || number > max {
            let expected = if max == i64::MAX {
                format!("an integer of {min} or more")
            } else {
                format!("an integer from {min} to {max}")
            };
            let message = format!("`{path}`: {number} is out of range: expected {expected}");
            self.report(at, ErrorKind::InvalidValue, path, message, None);
        }
    }

    fn check_number(&mut self, value: &Value, range: &NumberRange, path: &str, at: usize) {
        let number = match value {
            Value::Float(float) => *float.value(),
            // Integers fit in a float's 53-bit mantissa up to 2^53, far beyond any range here.
            Value::Integer(integer) => *integer.value() as f64,
            _ => {
                self.wrong_value_type(value, at, path, "a number", None);
                return;
            }
        };
        let (in_range, expected) = match *range {
            NumberRange::Open(low, high) => (
                number > low && number < high,
                format!("a number greater than {low} and less than {high}"),
            ),
            NumberRange::Closed(low, high) => (
                number >= low && number <= high,
                format!("a number from {low} to {high}"),
            ),
        };
        if !in_range {
            let message = format!(
                "`{path}`: {} is out of range: expected {expected}",
                self.raw(value)
            );
            self.report(at, ErrorKind::InvalidValue, path, message, None);
        }
    }

    fn check_duration(&mut self, value: &Value, nonzero: bool, path: &str, at: usize) {
        let Some(string) = value.as_str() else {
            let hint = value
                .as_integer()
                .map(|number| format!("add a unit: \"{number}s\" or \"{number}ms\""));
            self.wrong_value_type(value, at, path, "a duration string such as \"10s\"", hint);
            return;
        };
        match string.parse::<Duration>() {
            Err(error) => {
                let hint = digits_only(string)
                    .then(|| format!("add a unit: \"{string}s\" or \"{string}ms\""));
                self.report(
                    at,
                    ErrorKind::InvalidUnit,
                    path,
                    format!("`{path}`: {error}"),
                    hint,
                );
            }
            Ok(duration) if nonzero && duration.0.is_zero() => {
                let message = format!("`{path}`: the duration must be greater than 0");
                self.report(at, ErrorKind::InvalidValue, path, message, None);
            }
            Ok(_) => {}
        }
    }

    fn check_size(&mut self, value: &Value, path: &str, at: usize) {
        match value {
            Value::Integer(bytes) if *bytes.value() >= 0 => {}
            Value::Integer(bytes) => {
                let message = format!(
                    "`{path}`: {} is out of range: a size cannot be negative",
                    bytes.value()
                );
                self.report(at, ErrorKind::InvalidValue, path, message, None);
            }
            Value::String(string) => {
                if let Err(error) = string.value().parse::<ByteSize>() {
                    self.report(
                        at,
                        ErrorKind::InvalidUnit,
                        path,
                        format!("`{path}`: {error}"),
                        None,
                    );
                }
            }
            _ => self.wrong_value_type(
                value,
                at,
                path,
                "a size such as \"64KB\" or a number of bytes",
                None,
            ),
        }
    }

    fn check_rate(&mut self, value: &Value, path: &str, at: usize) {
        let Some(string) = value.as_str() else {
            let hint = value
                .as_integer()
                .map(|number| format!("add a period: \"{number}/sec\" or \"{number}/min\""));
            self.wrong_value_type(value, at, path, "a rate string such as \"1000/min\"", hint);
            return;
        };
        if let Err(error) = string.parse::<Rate>() {
            let hint = digits_only(string)
                .then(|| format!("add a period: \"{string}/sec\" or \"{string}/min\""));
            self.report(
                at,
                ErrorKind::InvalidUnit,
                path,
                format!("`{path}`: {error}"),
                hint,
            );
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

    fn unknown_key(&mut self, section: &'static Section, name: &str, path: &str, at: usize) {
        let homes: Vec<&'static Section> = self
            .sections
            .iter()
            .copied()
            .filter(|other| !std::ptr::eq(*other, section) && other.key(name).is_some())
            .collect();
        let near_here = nearest(name, section.key_names());
        let location = if section.path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {}", section.header())
        };
        let mut message = format!("unknown key `{name}` {location}");

        let hint = if !homes.is_empty() {
            let places: Vec<String> = homes.iter().map(|home| home.header()).collect();
            message.push_str(&format!(": it belongs in {}", join_or(&places)));
            match (near_here, homes.as_slice()) {
                (Some(near), _) => Some(format!("or did you mean `{near}`?")),
                (None, [home]) => Some(move_hint(home, name)),
                _ => None,
            }
        } else if let Some(near) = near_here {
            Some(format!("did you mean `{near}`?"))
        } else if let Some((near, home)) = self.nearest_elsewhere(name) {
            Some(format!("did you mean `{near}` in {}?", home.header()))
        } else {
            let names: Vec<&str> = section.key_names().collect();
            Some(format!(
                "the keys of {} are {}",
                section.header(),
                names.join(", ")
            ))
        };
        self.report(at, ErrorKind::UnknownKey, path, message, hint);
    }

    fn nearest_elsewhere(&self, name: &str) -> Option<(&'static str, &'static Section)> {
        let pairs: Vec<(&'static str, &'static Section)> = self
            .sections
            .iter()
            .flat_map(|section| section.key_names().map(move |key| (key, *section)))
            .collect();
        let near = nearest(name, pairs.iter().map(|(key, _)| *key))?;
        pairs.into_iter().find(|(key, _)| *key == near)
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

fn digits_only(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// Returns "A", "A or B", "A, B or C".
fn join_or(items: &[String]) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn move_hint(home: &Section, name: &str) -> String {
    let is_table = matches!(home.key(name).map(|key| &key.kind), Some(Kind::Table(_)));
    if is_table {
        return format!("write its header as [{}]", join_path(home.path, name));
    }
    if home.path.is_empty() {
        return "move it above the first [section] header".to_string();
    }
    if home.array {
        format!("move it into a {} entry", home.header())
    } else {
        format!("move it under the {} header", home.header())
    }
}
