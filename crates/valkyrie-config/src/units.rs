//! Value types written as strings with units in the config file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time written with a unit: `"600s"`, `"5ms"`, `"82us"`, `"2m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// A number of bytes written with a unit: `"4GB"`, `"512KB"`, `"64KiB"`, `"100B"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A rate written as `"N/sec"`, `"N/min"` or `"N/hour"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub per: std::time::Duration,
}

/// Why a unit string could not be parsed; the message names the expected form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: expected {expected}")]
pub struct UnitError {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

pub const DURATION_FORM: &str =
    "a number with a unit, such as \"500ms\", \"82us\", \"10s\", \"5m\" or \"1h\"";
pub const SIZE_FORM: &str = "a number with a unit, such as \"64KB\", \"512MB\" or \"4GB\"";
pub const RATE_FORM: &str =
    "a count per unit of time, such as \"100/sec\", \"1000/min\" or \"5000/hour\"";

/// A decimal number split into its digits: `"1.25"` is `("1", "25")`.
struct Decimal<'a> {
    integer: &'a str,
    fraction: &'a str,
}

/// Splits `text` into a decimal number and the unit after it. The number
/// needs at least one digit before an optional fraction, and spaces may
/// surround the unit.
fn split_number(text: &str) -> Option<(Decimal<'_>, &str)> {
    let text = text.trim();
    let integer_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if integer_end == 0 {
        return None;
    }
    let integer = &text[..integer_end];
    let rest = &text[integer_end..];
    let Some(after_dot) = rest.strip_prefix('.') else {
        return Some((
            Decimal {
                integer,
                fraction: "",
            },
            rest.trim(),
        ));
    };
    let fraction_end = after_dot
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after_dot.len());
    if fraction_end == 0 {
        return None;
    }
    let fraction = &after_dot[..fraction_end];
    Some((
        Decimal { integer, fraction },
        after_dot[fraction_end..].trim(),
    ))
}

impl Decimal<'_> {
    /// Returns the number times `multiplier` when the product is a whole
    /// number that fits in a `u64`, computed without rounding.
    fn scale(&self, multiplier: u64) -> Option<u64> {
        let multiplier = u128::from(multiplier);
        let integer: u128 = self.integer.parse().ok()?;
        let mut whole = integer.checked_mul(multiplier)?;
        if !self.fraction.is_empty() {
            let digits = u32::try_from(self.fraction.len()).ok()?;
            let denominator = 10u128.checked_pow(digits)?;
            let numerator: u128 = self.fraction.parse().ok()?;
            let scaled = numerator.checked_mul(multiplier)?;
            if scaled % denominator != 0 {
                return None;
            }
            whole = whole.checked_add(scaled / denominator)?;
        }
        u64::try_from(whole).ok()
    }
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || UnitError {
            kind: "duration",
            value: text.to_string(),
            expected: DURATION_FORM,
        };
        let (number, unit) = split_number(text).ok_or_else(error)?;
        let nanos_per_unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" | "sec" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" | "hour" => 3_600_000_000_000,
            "d" | "day" => 86_400_000_000_000,
            _ => return Err(error()),
        };
        let nanos = number.scale(nanos_per_unit).ok_or_else(error)?;
        Ok(Duration(std::time::Duration::from_nanos(nanos)))
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || UnitError {
            kind: "size",
            value: text.to_string(),
            expected: SIZE_FORM,
        };
        let (number, unit) = split_number(text).ok_or_else(error)?;
        let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "KB" | "K" => 1_000,
            "MB" | "M" => 1_000_000,
            "GB" | "G" => 1_000_000_000,
            "TB" | "T" => 1_000_000_000_000,
            "KIB" => 1 << 10,
            "MIB" => 1 << 20,
            "GIB" => 1 << 30,
            "TIB" => 1 << 40,
            _ => return Err(error()),
        };
        let bytes = number.scale(multiplier).ok_or_else(error)?;
        Ok(ByteSize(bytes))
    }
}

impl FromStr for Rate {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || UnitError {
            kind: "rate",
            value: text.to_string(),
            expected: RATE_FORM,
        };
        let (count, unit) = text.split_once('/').ok_or_else(error)?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(error());
        }
        let count: u64 = count.parse().map_err(|_| error())?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(error()),
        };
        if count == 0 {
            return Err(error());
        }
        Ok(Rate {
            count,
            per: std::time::Duration::from_secs(seconds),
        })
    }
}

impl Rate {
    /// Returns the rate in events per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos % 1_000_000_000 == 0 {
            write!(f, "{}s", nanos / 1_000_000_000)
        } else if nanos % 1_000_000 == 0 {
            write!(f, "{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            write!(f, "{}us", nanos / 1_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

impl fmt::Display for ByteSize {
    /// Writes the size with the largest unit that divides it exactly, so that
    /// parsing the output gives the same size: `65536` is `"64KiB"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 8] = [
            (1 << 40, "TiB"),
            (1_000_000_000_000, "TB"),
            (1 << 30, "GiB"),
            (1_000_000_000, "GB"),
            (1 << 20, "MiB"),
            (1_000_000, "MB"),
            (1 << 10, "KiB"),
            (1_000, "KB"),
        ];
        let bytes = self.0;
        if bytes > 0 {
            for (size, unit) in UNITS {
                if bytes % size == 0 {
                    return write!(f, "{}{unit}", bytes / size);
                }
            }
        }
        write!(f, "{bytes}B")
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // NOTE: a `Rate` built by hand with another period has no unit in
        // the file syntax, so it is written per day.
        let unit = match self.per.as_secs() {
            1 => "sec",
            60 => "min",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

macro_rules! deserialize_from_str {
    ($type:ty) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Unit values serialize as the strings they are written as in a file.
macro_rules! serialize_with_display {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    };
}

serialize_with_display!(Duration);
serialize_with_display!(ByteSize);
serialize_with_display!(Rate);

deserialize_from_str!(Duration);
deserialize_from_str!(Rate);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Duration {
    pub const fn from_secs(seconds: u64) -> Self {
        Duration(std::time::Duration::from_secs(seconds))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub const fn from_micros(micros: u64) -> Self {
        Duration(std::time::Duration::from_micros(micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_units() {
        assert_eq!(
            "82us".parse::<Duration>().unwrap(),
            Duration::from_micros(82)
        );
        assert_eq!("5ms".parse::<Duration>().unwrap(), Duration::from_millis(5));
        assert_eq!(
            "600s".parse::<Duration>().unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!("2m".parse::<Duration>().unwrap(), Duration::from_secs(120));
        assert_eq!(
            "1.5s".parse::<Duration>().unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn duration_without_unit_rejected() {
        let error = "10".parse::<Duration>().unwrap_err();
        assert!(error.to_string().contains("`10`"));
        assert!("ten seconds".parse::<Duration>().is_err());
    }

    #[test]
    fn size_units() {
        assert_eq!("4GB".parse::<ByteSize>().unwrap(), ByteSize(4_000_000_000));
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65_536));
        assert!("4 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn rate_units() {
        let rate: Rate = "1000/min".parse().unwrap();
        assert_eq!(rate.count, 1000);
        assert_eq!(rate.per, std::time::Duration::from_secs(60));
        assert!("1000/fortnight".parse::<Rate>().is_err());
        assert!("0/sec".parse::<Rate>().is_err());
    }
}
