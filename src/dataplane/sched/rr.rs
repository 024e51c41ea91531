//! `rr`: plain round robin over the eligible servers.
//!
//! Weights are ignored except that 0 drains (IPVS `rr`); use `wrr` for weighted rotation.
//! The cursor survives across picks; a server that goes down is skipped without disturbing
//! the order of the others.

use std::net::IpAddr;

use super::{Scheduler, SchedulerKind, ServerSlot, next_eligible};

/// Round robin. O(1) per pick while servers are eligible, O(N) worst case.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    /// Index of the last server picked (`usize::MAX` before the first pick, so the first pick
    /// is server 0 after wrapping).
    last: usize,
}

impl RoundRobin {
    /// A round robin that starts with the first eligible server.
    pub fn new(servers: &[ServerSlot]) -> Self {
        RoundRobin { last: servers.len().saturating_sub(1) }
    }
}

impl Scheduler for RoundRobin {
    fn pick(&mut self, _flow_hash: u64, _client: IpAddr, servers: &[ServerSlot]) -> Option<usize> {
        if servers.is_empty() {
            return None;
        }
        let i = next_eligible(servers, self.last % servers.len())?;
        self.last = i;
        Some(i)
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Rr
    }
}
