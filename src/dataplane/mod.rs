//! The data plane: a sans-IO packet engine (parse, schedule, rewrite) and its I/O shell.

pub mod conntrack;
pub mod decap;
pub mod engine;
pub mod fullsync;
#[cfg(target_os = "linux")]
pub mod io;
pub mod sched;
pub mod sync;
pub mod wire;
