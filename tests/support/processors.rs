//! Minimal packet processors for the TUN shell tests (`tests/tun_nat.rs`): NAT, IP-in-IP and
//! direct routing for one VIP, independent of the engine, so that a failure there is the
//! shell's, the steering's or the kernel configuration's.

use std::net::Ipv4Addr;

use clusterserver::platform::linux::shell::{Disposition, PacketProcessor};
use clusterserver::time::Instant;

/// A minimal NAT processor for one VIP and one server on one TCP port: requests to the VIP
/// get the server as destination, replies from the server get the VIP as source; checksums
/// are patched incrementally (RFC 1624). Everything else is dropped.
#[derive(Debug)]
pub struct MiniNat {
    vip: [u8; 4],
    server: [u8; 4],
    port: u16,
    /// Housekeeping ticks seen (the shell calls `on_tick` periodically).
    pub ticks: u64,
    /// Set by a control change (tests `Shell::apply`).
    pub marked: bool,
}

impl MiniNat {
    pub fn new(vip: Ipv4Addr, server: Ipv4Addr, port: u16) -> Self {
        MiniNat { vip: vip.octets(), server: server.octets(), port, ticks: 0, marked: false }
    }
}

/// Adds the change `old -> new` (16-bit words) to the checksum stored at `at`.
fn patch(p: &mut [u8], at: usize, old: [u8; 4], new: [u8; 4]) {
    let mut sum = u32::from(!u16::from_be_bytes([p[at], p[at + 1]]));
    for k in [0, 2] {
        sum += u32::from(!u16::from_be_bytes([old[k], old[k + 1]]));
        sum += u32::from(u16::from_be_bytes([new[k], new[k + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

impl PacketProcessor for MiniNat {
    fn process(&mut self, _now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition {
        if rx.len() < 40 || rx[0] >> 4 != 4 || rx[9] != 6 || tx.len() < rx.len() {
            return Disposition::Drop;
        }
        let ihl = usize::from(rx[0] & 0xf) * 4;
        if rx.len() < ihl + 20 {
            return Disposition::Drop;
        }
        let p = &mut tx[..rx.len()];
        p.copy_from_slice(rx);
        let sport = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
        let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
        let (field, old, new) = if p[16..20] == self.vip && dport == self.port {
            (16, self.vip, self.server)
        } else if p[12..16] == self.server && sport == self.port {
            (12, self.server, self.vip)
        } else {
            return Disposition::Drop;
        };
        p[field..field + 4].copy_from_slice(&new);
        patch(p, 10, old, new);
        patch(p, ihl + 16, old, new);
        Disposition::Tun { len: rx.len() }
    }

    fn on_tick(&mut self, _now: Instant) {
        self.ticks += 1;
    }
}

/// A minimal tunnel-mode processor: TCP to the VIP's port is wrapped in an outer IPv4 header
/// (protocol 4) from `local` to `node`; everything else is dropped. The outer header allows
/// fragmentation (DF clear), so a full-sized inner packet still crosses a 1500-byte link.
#[derive(Debug)]
pub struct MiniTunnel {
    vip: [u8; 4],
    port: u16,
    local: [u8; 4],
    node: [u8; 4],
    id: u16,
}

impl MiniTunnel {
    pub fn new(vip: Ipv4Addr, port: u16, local: Ipv4Addr, node: Ipv4Addr) -> Self {
        MiniTunnel { vip: vip.octets(), port, local: local.octets(), node: node.octets(), id: 0 }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl PacketProcessor for MiniTunnel {
    fn process(&mut self, _now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition {
        let total = rx.len() + 20;
        if rx.len() < 40 || rx[0] >> 4 != 4 || rx[9] != 6 || tx.len() < total || total > 65535 {
            return Disposition::Drop;
        }
        let ihl = usize::from(rx[0] & 0xf) * 4;
        let dport = u16::from_be_bytes([rx[ihl + 2], rx[ihl + 3]]);
        if rx[16..20] != self.vip || dport != self.port {
            return Disposition::Drop;
        }
        self.id = self.id.wrapping_add(1);
        let h = &mut tx[..20];
        h.fill(0);
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[8] = 64;
        h[9] = 4;
        h[12..16].copy_from_slice(&self.local);
        h[16..20].copy_from_slice(&self.node);
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        tx[20..total].copy_from_slice(rx);
        Disposition::Tun { len: total }
    }
}

/// A minimal direct-routing processor: TCP to the VIP's port leaves unchanged, in a frame to
/// `server`'s MAC; everything else is dropped.
#[derive(Debug)]
pub struct MiniDr {
    vip: [u8; 4],
    port: u16,
    server: Ipv4Addr,
}

impl MiniDr {
    pub fn new(vip: Ipv4Addr, port: u16, server: Ipv4Addr) -> Self {
        MiniDr { vip: vip.octets(), port, server }
    }
}

impl PacketProcessor for MiniDr {
    fn process(&mut self, _now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition {
        if rx.len() < 40 || rx[0] >> 4 != 4 || rx[9] != 6 || tx.len() < rx.len() {
            return Disposition::Drop;
        }
        let ihl = usize::from(rx[0] & 0xf) * 4;
        let dport = u16::from_be_bytes([rx[ihl + 2], rx[ihl + 3]]);
        if rx[16..20] != self.vip || dport != self.port {
            return Disposition::Drop;
        }
        tx[..rx.len()].copy_from_slice(rx);
        Disposition::L2 { len: rx.len(), next_hop: std::net::IpAddr::V4(self.server) }
    }
}
