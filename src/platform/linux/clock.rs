//! The process's one clock origin.
//!
//! The sans-IO layers take `now` as a [`crate::time::Instant`], nanoseconds since an origin
//! the caller picks. In the daemon every loop (the ATM driver, the data-plane workers, the
//! health runner, the active-active loop) reads it from here, so an instant means the same
//! moment to all of them: an event the engine stamps and one the election stamps can be
//! compared, and a deadline one loop computes is a deadline for the others. (There were four
//! origins, one per loop, each taken at that loop's start.) The simulator has its own virtual
//! origin and never calls this.

use std::sync::OnceLock;
use std::time::Duration;

use crate::health::driver::Clock;
use crate::time::Instant;

static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();

/// The origin: the first call's moment (the daemon calls it at start-up).
pub fn origin() -> tokio::time::Instant {
    *ORIGIN.get_or_init(tokio::time::Instant::now)
}

/// Now, since [`origin`].
pub fn now() -> Instant {
    since_origin(tokio::time::Instant::now())
}

/// `t` (a moment of the monotonic clock) since [`origin`]; zero before it.
pub fn since_origin(t: tokio::time::Instant) -> Instant {
    Instant::from_nanos(u64::try_from(t.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX))
}

/// The monotonic-clock moment of `t` (for timers: `sleep_until(at(deadline))`).
pub fn at(t: Instant) -> tokio::time::Instant {
    origin() + Duration::from_nanos(t.as_nanos())
}

/// The process clock as a loop's [`Clock`] (the health driver's in the daemon).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessClock;

impl Clock for ProcessClock {
    fn now(&self) -> Instant {
        now()
    }

    fn at(&self, t: Instant) -> tokio::time::Instant {
        at(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_origin_round_trips() {
        let a = now();
        let b = now();
        assert!(b >= a, "monotonic");
        assert_eq!(since_origin(at(a)), a);
        assert_eq!(origin(), origin(), "fixed once");
    }
}
