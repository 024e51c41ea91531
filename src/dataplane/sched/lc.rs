//! `lc` and `wlc`: least connections, unweighted and weighted.
//!
//! `lc` picks the eligible server with the fewest `active_conns`; `wlc` the one with the
//! smallest `active_conns / weight` (compared by cross-multiplying in `u64`, no division, no
//! floating point). Ties go, for `wlc`, to the heavier server (so an empty pool fills the big
//! servers first), then to the first tied server after the last one picked, so equal servers
//! share a burst of new connections instead of all of it going to server 0 before the
//! connection table has counted them. O(N) per pick.

use std::cmp::Ordering;
use std::net::IpAddr;

use super::{Scheduler, SchedulerKind, ServerSlot};

/// Least connections (`weighted = false`) or weighted least connections.
#[derive(Debug, Clone)]
pub struct LeastConn {
    weighted: bool,
    /// Index of the last server picked: the rotation point for ties.
    last: usize,
}

impl LeastConn {
    /// `weighted`: `wlc` rather than `lc`.
    pub fn new(servers: &[ServerSlot], weighted: bool) -> Self {
        LeastConn { weighted, last: servers.len().saturating_sub(1) }
    }

    /// `Less` when `a` is the better choice than `b`.
    #[inline]
    fn compare(&self, a: &ServerSlot, b: &ServerSlot) -> Ordering {
        if self.weighted {
            let la = u64::from(a.active_conns) * u64::from(b.weight);
            let lb = u64::from(b.active_conns) * u64::from(a.weight);
            if la != lb { la.cmp(&lb) } else { b.weight.cmp(&a.weight) }
        } else {
            a.active_conns.cmp(&b.active_conns)
        }
    }
}

impl Scheduler for LeastConn {
    fn pick(&mut self, _flow_hash: u64, _client: IpAddr, servers: &[ServerSlot]) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = self.last % n;
        let mut best: Option<usize> = None;
        // Scan in rotation order, starting after the last pick (two plain ranges: no modulo
        // and no chained iterator in the loop): strict improvement only, so the first tied
        // server in rotation order wins.
        let mut consider = |i: usize| {
            let s = &servers[i];
            if s.eligible() && best.is_none_or(|b| self.compare(s, &servers[b]) == Ordering::Less) {
                best = Some(i);
            }
        };
        for i in start + 1..n {
            consider(i);
        }
        for i in 0..=start {
            consider(i);
        }
        let b = best?;
        self.last = b;
        Some(b)
    }

    fn kind(&self) -> SchedulerKind {
        if self.weighted { SchedulerKind::Wlc } else { SchedulerKind::Lc }
    }
}
