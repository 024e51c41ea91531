//! The data plane: a sans-IO packet engine (parse, schedule, rewrite) and its I/O shell.

pub mod conntrack;
pub mod engine;
pub mod sync;
pub mod wire;
