//! Polling with a deadline, the tests' only way to wait for a real process or network
//! (STYLE: no sleeps standing in for synchronisation).
#![allow(clippy::disallowed_methods)] // reason: real-network tests wait on the wall clock

use std::time::{Duration, Instant};

/// Polls `ok` every 10 ms until it holds; panics naming `what` after `limit`. Returns how
/// long it took (the tests print measured times).
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}
