//! Translation of ICMP errors that quote a tracked flow (module docs of the engine).
//!
//! The quoted datagram is the one the error is about: its IP header and at least 8 bytes of
//! its transport header (ports; for UDP the checksum too). Both the outer packet and the
//! quoted headers are rewritten, and every checksum involved (outer IP, ICMP, quoted IP,
//! quoted transport if present) is patched incrementally.

use core::net::Ipv4Addr;

use super::{DropReason, Engine, Verdict, forward};
use crate::dataplane::conntrack::{FwdKey, RevKey};
use crate::dataplane::settings::Forwarding;
use crate::dataplane::wire::{IcmpPacket, Ipv4Packet, be16, checksum, icmp, proto, put16};
use crate::time::Instant;

/// The quoted datagram's header fields.
#[derive(Clone, Copy, Debug)]
struct Quoted {
    hl: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

fn parse_quoted(b: &[u8]) -> Result<Quoted, DropReason> {
    if b.len() < 20 {
        return Err(DropReason::Truncated);
    }
    let hl = usize::from(b[0] & 0x0F) * 4;
    if b[0] >> 4 != 4 || hl < 20 {
        return Err(DropReason::BadHeader);
    }
    if b.len() < hl + 8 {
        return Err(DropReason::Truncated);
    }
    let p = b[9];
    if p != proto::TCP && p != proto::UDP {
        return Err(DropReason::IcmpNoFlow);
    }
    Ok(Quoted {
        hl,
        proto: p,
        src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        sport: be16(b, hl),
        dport: be16(b, hl + 2),
    })
}

pub(super) fn handle(eng: &mut Engine, now: Instant, ip: &Ipv4Packet<&[u8]>, tx: &mut [u8]) -> Verdict {
    let msg = match IcmpPacket::new_checked(ip.payload()) {
        Ok(m) => m,
        Err(e) => return Verdict::Drop(e.into()),
    };
    if !icmp::is_error(msg.msg_type()) {
        return Verdict::Drop(DropReason::IcmpNotError);
    }
    let q = match parse_quoted(msg.payload()) {
        Ok(q) => q,
        Err(r) => return Verdict::Drop(r),
    };
    // From the server side, about a packet we NAT'd towards a server.
    let rk =
        RevKey { proto: q.proto, server: q.dst, server_port: q.dport, client: q.src, client_port: q.sport };
    if ip.dst_addr() == q.src
        && let Some(slot) = eng.lookup_rev(&rk, now)
    {
        let e = *eng.tab::<Ipv4Addr>().get(slot);
        return count(eng, translate(ip, tx, &q, true, e.vip, e.vip_port));
    }
    // From the client side, to the VIP, about a reply the client got from the VIP.
    let fk = FwdKey { proto: q.proto, client: q.dst, client_port: q.dport, vip: q.src, vip_port: q.sport };
    if ip.dst_addr() == q.src
        && let Some(slot) = eng.lookup_fwd(&fk, now)
    {
        let e = *eng.tab::<Ipv4Addr>().get(slot);
        return match eng.svcs[usize::from(e.service)].forwarding {
            Forwarding::Nat => count(eng, translate(ip, tx, &q, false, e.server, e.server_port)),
            Forwarding::Dr => forward::direct(ip.packet(), tx, e.server.into()),
            Forwarding::Tunnel => eng.tunnel_flow(ip, tx, &e, false),
        };
    }
    Verdict::Drop(DropReason::IcmpNoFlow)
}

/// Counts a translated error (either family).
pub(super) fn count(eng: &mut Engine, v: Verdict) -> Verdict {
    if matches!(v, Verdict::Tun { .. }) {
        eng.stats.icmp_translated += 1;
    }
    v
}

/// Writes `new` (up to 16 bytes) over the ICMP or ICMPv6 message bytes at `at` (even
/// offset), patching the message checksum.
pub(super) fn set(m: &mut [u8], at: usize, new: &[u8]) {
    let mut old = [0u8; 16];
    let n = new.len();
    old[..n].copy_from_slice(&m[at..at + n]);
    m[at..at + n].copy_from_slice(new);
    let c = checksum::update_bytes(be16(m, 2), &old[..n], new);
    put16(m, 2, c);
}

/// Copies the error and rewrites it. `to_client`: outer source and quoted destination
/// become `addr:port` (the VIP); otherwise outer destination and quoted source become
/// `addr:port` (the server).
fn translate(
    ip: &Ipv4Packet<&[u8]>,
    tx: &mut [u8],
    q: &Quoted,
    to_client: bool,
    addr: Ipv4Addr,
    port: u16,
) -> Verdict {
    let pkt = ip.packet();
    let len = pkt.len();
    let Some(out) = tx.get_mut(..len) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    out.copy_from_slice(pkt);
    let ohl = ip.header_len();
    {
        let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
        if to_client { p.set_src_addr(addr) } else { p.set_dst_addr(addr) }
    }
    let m = &mut out[ohl..];
    let qo = 8;
    let (addr_at, port_at) = if to_client { (qo + 16, qo + q.hl + 2) } else { (qo + 12, qo + q.hl) };
    let mut old_addr = [0u8; 4];
    old_addr.copy_from_slice(&m[addr_at..addr_at + 4]);
    let new_addr = addr.octets();
    let old_port = be16(m, port_at);
    let qc = checksum::update_bytes(be16(m, qo + 10), &old_addr, &new_addr);
    set(m, qo + 10, &qc.to_be_bytes());
    set(m, addr_at, &new_addr);
    set(m, port_at, &port.to_be_bytes());
    let l4c = match q.proto {
        proto::UDP => Some(qo + q.hl + 6),
        _ if m.len() >= qo + q.hl + 18 => Some(qo + q.hl + 16),
        _ => None,
    };
    if let Some(at) = l4c {
        let c = be16(m, at);
        if !(q.proto == proto::UDP && c == 0) {
            let c = checksum::update_bytes(c, &old_addr, &new_addr);
            let c = checksum::update16(c, old_port, port);
            set(m, at, &c.to_be_bytes());
        }
    }
    Verdict::Tun { len }
}
