//! Configuration of the Valkyrie router: the TOML schema with its defaults,
//! the value types (durations, sizes, rates, listen addresses), and validation
//! that reports every error with file, line, column, key and a hint.

pub mod schema;
pub mod units;

pub use schema::*;
pub use units::{ByteSize, Duration, Rate};
