//! Configuration: the JSON5 file of SPEC.md, parsed, validated as a whole, typed.
//!
//! `types` holds what the program reads; the loader (parse + validate) reports every error
//! of a file at once, each naming file, line, column, key path and what was expected.

pub mod types;

pub use types::*;
