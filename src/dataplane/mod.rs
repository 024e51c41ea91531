//! The data plane: a sans-IO packet engine (parse, schedule, rewrite) and its I/O shell.

pub mod sched;
