//! Checks on scalar values: booleans, strings, integers, numbers,
//! durations, sizes and rates.

use toml_edit::Value;

use super::spec::{Kind, NumberRange};
use super::text::{check_text, Text};
use super::Validator;
use crate::error::ErrorKind;
use crate::units::{ByteSize, Duration, Rate};

impl Validator<'_> {
    pub(super) fn check_scalar(&mut self, value: &Value, kind: &Kind, path: &str, at: usize) {
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

    pub(super) fn check_text_value(&mut self, value: &Value, text: Text, path: &str, at: usize) {
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

    pub(super) fn check_integer(
        &mut self,
        value: &Value,
        min: i64,
        max: i64,
        path: &str,
        at: usize,
    ) {
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
}

fn digits_only(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}
