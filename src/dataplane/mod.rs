//! The data plane: a sans-IO packet engine (parse, schedule, rewrite) and its I/O shell.

pub mod decap;
#[cfg(target_os = "linux")]
pub mod io;
pub mod sched;
