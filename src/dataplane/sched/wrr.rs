//! `wrr`: smooth weighted round robin (the nginx algorithm).
//!
//! Each pick adds every eligible server's weight to its running credit, picks the server with
//! the highest credit, and takes the total weight off the winner. Over any window of `W`
//! picks (`W` = sum of weights) each server is picked exactly `weight` times, and picks of one
//! server are spread out: weights 5, 1, 1 give `a a b a c a a`, not IPVS's `a a a a a b c`.
//! Cost is O(N) per pick (N eligible servers), which stays well under a microsecond for the
//! hundreds of servers a service has; it is paid once per new connection, not per packet.

use std::net::IpAddr;

use super::{Scheduler, SchedulerKind, ServerSlot};

/// Smooth weighted round robin.
#[derive(Debug, Clone)]
pub struct SmoothWeighted {
    /// Running credit per server (same indices as the server list).
    credit: Vec<i64>,
}

impl SmoothWeighted {
    /// All credits start at zero: the heaviest server (first on ties) goes first.
    pub fn new(servers: &[ServerSlot]) -> Self {
        SmoothWeighted { credit: vec![0; servers.len()] }
    }
}

impl Scheduler for SmoothWeighted {
    fn pick(&mut self, _flow_hash: u64, _client: IpAddr, servers: &[ServerSlot]) -> Option<usize> {
        if self.credit.len() != servers.len() {
            // Not the list this scheduler was built for: start afresh rather than misattribute.
            self.credit.clear();
            self.credit.resize(servers.len(), 0);
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, s) in servers.iter().enumerate() {
            if !s.eligible() {
                continue;
            }
            let w = i64::from(s.weight);
            self.credit[i] += w;
            total += w;
            if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.credit[b] -= total;
        Some(b)
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Wrr
    }
}
