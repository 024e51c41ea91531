//! Errors of the configuration loader.
//!
//! An operator fixing a config wants every mistake of the file in one go, each one pointing
//! at the place to edit: so the loader collects [`ConfigError`]s instead of stopping at the
//! first, and [`ConfigErrors`] prints them one a line, in file order, as
//! `FILE:LINE:COL: PATH: MESSAGE` (the shape compilers use, so editors can jump to them).

use std::fmt;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {path}: {message}")]
pub struct ConfigError {
    /// The file as the caller named it.
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: u32,
    /// 1-based column (in characters) of the offending key or value.
    pub column: u32,
    /// Key path such as `services[0].servers[1].weight`; `(root)` for the document itself.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in one config file, sorted by position; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Sorts by position; errors at the same position keep the order they were found in.
    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors { errors }
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}
