//! The one boundary between the engine and server selection.
//!
//! The engine asks a [`Select`] for a server only on a connection miss (a new flow); hits
//! never consult it. [`build`] wraps the scheduler of the configured kind from
//! [`crate::dataplane::sched`] (`rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`): the adapter mirrors the
//! engine's server slots into the scheduler's (weight, health, active connections, and a
//! stable key from the server's address and port, so Maglev tables agree across ATMs) and
//! rebuilds the scheduler whole when a weight or health changes.

use core::net::IpAddr;

use crate::dataplane::sched;
use crate::dataplane::settings::{SchedulerKind, Server};

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

/// Builds the selector of a service: the scheduler of `kind` over `servers`.
pub fn build(kind: SchedulerKind, servers: &[ServerSlot], _seed: u64) -> Box<dyn Select> {
    let mut s = SchedSelect { kind, slots: Vec::with_capacity(servers.len()), inner: None };
    s.update(servers);
    Box::new(s)
}

/// A [`sched::Scheduler`] behind the engine's [`Select`] boundary.
#[derive(Debug)]
pub struct SchedSelect {
    kind: SchedulerKind,
    slots: Vec<sched::ServerSlot>,
    inner: Option<Box<dyn sched::Scheduler>>,
}

impl Select for SchedSelect {
    fn pick(&mut self, flow_hash: u64, client: IpAddr, servers: &[ServerSlot]) -> Option<usize> {
        if servers.len() != self.slots.len() {
            self.update(servers);
        }
        // Only the live fields move between rebuilds; copying them keeps `pick` allocation-free.
        for (mine, theirs) in self.slots.iter_mut().zip(servers) {
            mine.active_conns = theirs.active;
            mine.up = theirs.up;
            mine.weight = theirs.weight;
        }
        self.inner.as_mut()?.pick(flow_hash, client, &self.slots)
    }

    fn update(&mut self, servers: &[ServerSlot]) {
        self.slots.clear();
        self.slots.extend(servers.iter().map(|s| sched::ServerSlot {
            weight: s.weight,
            up: s.up,
            active_conns: s.active,
            key: sched::server_key("", s.address, s.port),
        }));
        self.inner = Some(sched::build(self.kind, &self.slots));
    }
}

/// Plain round robin over available servers (kept as the simplest [`Select`]).
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
    fn every_kind_honours_health_and_drain() {
        let servers = [slot(true, 1), slot(false, 1), slot(true, 0), slot(true, 5)];
        let c = IpAddr::from([1, 2, 3, 4]);
        for kind in SchedulerKind::ALL {
            let mut s = build(kind, &servers, 0);
            for h in 0..50u64 {
                let i = s.pick(h.wrapping_mul(0x9E37_79B9_7F4A_7C15), c, &servers).expect("a server is up");
                assert!(i == 0 || i == 3, "{kind:?} picked down or drained server {i}");
            }
            assert_eq!(s.pick(0, c, &[slot(false, 1)]), None, "{kind:?}");
        }
    }

    #[test]
    fn maglev_agrees_across_engines() {
        let servers: Vec<ServerSlot> = (1..=5u8)
            .map(|i| ServerSlot {
                address: IpAddr::from([10, 0, 0, i]),
                port: 80,
                weight: 1,
                up: true,
                active: 0,
            })
            .collect();
        let (mut a, mut b) = (build(SchedulerKind::Mh, &servers, 1), build(SchedulerKind::Mh, &servers, 2));
        let c = IpAddr::from([1, 2, 3, 4]);
        for h in 0..1000u64 {
            let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(a.pick(h, c, &servers), b.pick(h, c, &servers));
        }
    }

    #[test]
    fn round_robin_skips_unavailable() {
        let servers = [slot(true, 1), slot(false, 1), slot(true, 0), slot(true, 5)];
        let mut rr: Box<dyn Select> = Box::new(RoundRobin::default());
        let c = IpAddr::from([1, 2, 3, 4]);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(0, c, &servers).unwrap()).collect();
        assert_eq!(picks, vec![0, 3, 0, 3]);
        assert_eq!(rr.pick(0, c, &[slot(false, 1)]), None);
        assert_eq!(rr.pick(0, c, &[]), None);
    }
}
