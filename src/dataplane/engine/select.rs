//! The one boundary between the engine and server selection.
//!
//! The engine asks a [`Select`] for a server only on a connection miss (a new flow); hits
//! never consult it. The real schedulers (`rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`) live in
//! `dataplane::sched` and land separately: integrating them means changing [`build`] (and
//! possibly forwarding [`Select`] to their trait) in this file only. Until then every kind
//! maps to [`RoundRobin`] over available servers.

use core::net::IpAddr;

use crate::config::{SchedulerKind, Server};

/// What a scheduler sees of a real server. The engine owns these and updates `weight`,
/// `up` (health, from `Engine::set_server_state`) and `active` (connections in the table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSlot {
    pub address: IpAddr,
    pub port: u16,
    /// 0 drains: no new connections.
    pub weight: u32,
    /// Health-check verdict.
    pub up: bool,
    /// Entries in the connection table pointing at this server.
    pub active: u32,
}

impl ServerSlot {
    /// A slot for a configured server, up, with no connections.
    pub fn from_config(s: &Server) -> Self {
        ServerSlot { address: s.address, port: s.port, weight: s.weight, up: true, active: 0 }
    }

    /// Whether the server may take new connections.
    pub fn available(&self) -> bool {
        self.up && self.weight > 0
    }
}

/// Picks a server for a new flow. `flow_hash` is a seeded hash of the 5-tuple; hashing
/// schedulers use it (or `client`) so that every ATM picks alike.
pub trait Select: core::fmt::Debug + Send {
    /// The index in `servers` of the chosen server, `None` if none is available.
    fn pick(&mut self, flow_hash: u64, client: IpAddr, servers: &[ServerSlot]) -> Option<usize>;

    /// Called after a weight or health change (schedulers that precompute tables rebuild).
    fn update(&mut self, _servers: &[ServerSlot]) {}
}

/// Builds the selector of a service.
pub fn build(_kind: SchedulerKind, servers: &[ServerSlot], _seed: u64) -> Box<dyn Select> {
    let mut rr = RoundRobin::default();
    rr.update(servers);
    Box::new(rr)
}

/// Plain round robin over available servers (the interim selector).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Select for RoundRobin {
    fn pick(&mut self, _flow_hash: u64, _client: IpAddr, servers: &[ServerSlot]) -> Option<usize> {
        let n = servers.len();
        for i in 0..n {
            let idx = (self.next + i) % n;
            if servers[idx].available() {
                self.next = idx + 1;
                return Some(idx);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(up: bool, weight: u32) -> ServerSlot {
        ServerSlot { address: IpAddr::from([10, 0, 0, 1]), port: 80, weight, up, active: 0 }
    }

    #[test]
    fn round_robin_skips_unavailable() {
        let servers = [slot(true, 1), slot(false, 1), slot(true, 0), slot(true, 5)];
        let mut rr = build(SchedulerKind::Rr, &servers, 0);
        let c = IpAddr::from([1, 2, 3, 4]);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(0, c, &servers).unwrap()).collect();
        assert_eq!(picks, vec![0, 3, 0, 3]);
        assert_eq!(rr.pick(0, c, &[slot(false, 1)]), None);
        assert_eq!(rr.pick(0, c, &[]), None);
    }
}
