//! Translation of ICMPv6 errors that quote a tracked flow (RFC 4443: Destination
//! Unreachable, Packet Too Big, Time Exceeded, Parameter Problem), as [`super::icmp`] does
//! for IPv4, so path-MTU discovery works through the balancer in both directions.
//!
//! The quoted packet is the one the error is about: its fixed IPv6 header directly followed
//! by TCP or UDP (at least the 8 bytes with the ports); a quoted packet with extension
//! headers is not matched (`IcmpNoFlow`). Both the outer header and the quoted one are
//! rewritten. ICMPv6's checksum covers a pseudo-header of the outer addresses as well as
//! the message, so it is patched for the outer address change too; the quoted transport
//! checksum (when quoted) is patched for the quoted address and port.

use core::net::Ipv6Addr;

use super::family::{L3, V6};
use super::forward::icmp6;
use super::icmp::{count, set};
use super::{DropReason, Engine, Verdict};
use crate::dataplane::conntrack::{FwdKey, RevKey};
use crate::dataplane::settings::Forwarding;
use crate::dataplane::wire::ipv6::{HEADER_LEN, Ipv6Packet};
use crate::dataplane::wire::{be16, checksum, proto, put16};
use crate::time::Instant;

/// The quoted datagram's header fields.
#[derive(Clone, Copy, Debug)]
struct Quoted {
    proto: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
}

fn parse_quoted(b: &[u8]) -> Result<Quoted, DropReason> {
    if b.len() < HEADER_LEN + 8 {
        return Err(DropReason::Truncated);
    }
    if b[0] >> 4 != 6 {
        return Err(DropReason::BadHeader);
    }
    let p = b[6];
    if p != proto::TCP && p != proto::UDP {
        return Err(DropReason::IcmpNoFlow);
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[at..at + 16]);
        Ipv6Addr::from(a)
    };
    Ok(Quoted {
        proto: p,
        src: addr(8),
        dst: addr(24),
        sport: be16(b, HEADER_LEN),
        dport: be16(b, HEADER_LEN + 2),
    })
}

pub(super) fn handle(eng: &mut Engine, now: Instant, ip: &V6<'_>, tx: &mut [u8]) -> Verdict {
    let msg = ip.l4();
    if msg.len() < 8 {
        return Verdict::Drop(DropReason::Truncated);
    }
    if !icmp6::is_error(msg[0]) {
        // Echo, neighbour discovery, MLD: the kernel's (NDP for the VIPs is the daemon's).
        return Verdict::Drop(DropReason::IcmpNotError);
    }
    if !matches!(
        msg[0],
        icmp6::DEST_UNREACHABLE | icmp6::PACKET_TOO_BIG | icmp6::TIME_EXCEEDED | icmp6::PARAMETER_PROBLEM
    ) {
        return Verdict::Drop(DropReason::IcmpNoFlow);
    }
    let q = match parse_quoted(&msg[8..]) {
        Ok(q) => q,
        Err(r) => return Verdict::Drop(r),
    };
    // From the server side, about a packet we NAT'd towards a server.
    let rk =
        RevKey { proto: q.proto, server: q.dst, server_port: q.dport, client: q.src, client_port: q.sport };
    if ip.dst() == q.src
        && let Some(slot) = eng.lookup_rev(&rk, now)
    {
        let e = *eng.tab::<Ipv6Addr>().get(slot);
        return count(eng, translate(ip, tx, &q, true, e.vip, e.vip_port));
    }
    // From the client side, to the VIP, about a reply the client got from the VIP.
    let fk = FwdKey { proto: q.proto, client: q.dst, client_port: q.dport, vip: q.src, vip_port: q.sport };
    if ip.dst() == q.src
        && let Some(slot) = eng.lookup_fwd(&fk, now)
    {
        let e = *eng.tab::<Ipv6Addr>().get(slot);
        return match eng.svcs[usize::from(e.service)].forwarding {
            Forwarding::Nat => count(eng, translate(ip, tx, &q, false, e.server, e.server_port)),
            Forwarding::Dr => super::forward::direct(ip.bytes(), tx, e.server.into()),
            Forwarding::Tunnel => eng.tunnel_flow(ip, tx, &e, false),
        };
    }
    Verdict::Drop(DropReason::IcmpNoFlow)
}

/// Copies the error and rewrites it. `to_client`: outer source and quoted destination
/// become `addr:port` (the VIP); otherwise outer destination and quoted source become
/// `addr:port` (the server).
fn translate(ip: &V6<'_>, tx: &mut [u8], q: &Quoted, to_client: bool, addr: Ipv6Addr, port: u16) -> Verdict {
    let pkt = ip.bytes();
    let len = pkt.len();
    let Some(out) = tx.get_mut(..len) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    out.copy_from_slice(pkt);
    let new_addr = addr.octets();
    let old_outer = {
        let mut p = Ipv6Packet::new_unchecked(&mut out[..]);
        if to_client {
            let old = p.src_bytes();
            p.set_src_addr(addr);
            old
        } else {
            let old = p.dst_bytes();
            p.set_dst_addr(addr);
            old
        }
    };
    let m = &mut out[ip.l4_offset()..];
    // The pseudo-header's address changed: patch the ICMPv6 checksum for it.
    put16(m, 2, checksum::update_bytes(be16(m, 2), &old_outer, &new_addr));
    let qo = 8;
    let (addr_at, port_at) =
        if to_client { (qo + 24, qo + HEADER_LEN + 2) } else { (qo + 8, qo + HEADER_LEN) };
    let mut old_addr = [0u8; 16];
    old_addr.copy_from_slice(&m[addr_at..addr_at + 16]);
    let old_port = be16(m, port_at);
    set(m, addr_at, &new_addr);
    set(m, port_at, &port.to_be_bytes());
    let l4c = match q.proto {
        proto::UDP => Some(qo + HEADER_LEN + 6),
        _ if m.len() >= qo + HEADER_LEN + 18 => Some(qo + HEADER_LEN + 16),
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
