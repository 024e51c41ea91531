//! The packet transforms: NAT rewrite, direct-routing copy, IP-in-IP and IPv6-in-IPv6
//! encapsulation, and the errors for an oversized tunnel packet (fragmentation needed,
//! Packet Too Big). Each writes into the caller's `tx` and returns the verdict; checksums
//! are patched incrementally (RFC 1624), never recomputed over the payload.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::family::V6;
use super::{DropReason, Verdict};
use crate::dataplane::wire::icmp::kind;
use crate::dataplane::wire::ipv4::{HEADER_LEN, Ipv4Repr};
use crate::dataplane::wire::ipv6::{self, Ipv6Packet};
use crate::dataplane::wire::{
    IcmpPacket, Ipv4Packet, TcpPacket, UdpPacket, be16, checksum, proto, put16, tcp,
};

/// ICMPv6 message types the engine makes or translates (RFC 4443).
pub(super) mod icmp6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    /// Error messages are types 0 to 127.
    pub fn is_error(t: u8) -> bool {
        t < 128
    }
}

/// The minimum IPv6 link MTU (RFC 8200): an ICMPv6 error we make fits in it.
const IPV6_MIN_MTU: usize = 1280;

/// Which endpoint a NAT rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// Reply: server → client becomes VIP → client.
    Src,
    /// Request: client → VIP becomes client → server.
    Dst,
}

/// Most of the offending datagram quoted in an ICMP error we make (RFC 1812: as much as
/// fits in 576 bytes).
const MAX_QUOTE: usize = 576 - HEADER_LEN - 8;

fn copy_in<'a>(pkt: &[u8], tx: &'a mut [u8], at: usize) -> Option<&'a mut [u8]> {
    let out = tx.get_mut(at..at + pkt.len())?;
    out.copy_from_slice(pkt);
    Some(out)
}

/// One NAT rewrite: which endpoint becomes `addr:port` (an address of the packet's family),
/// with the transport header at `l4_offset` (IPv6: after its extension headers). With
/// `partial`, the transport checksum field holds only the pseudo-header sum (checksum
/// offload, `NEEDS_CSUM`): the address change is applied to it and the port change is not
/// (the device sums the ports itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rewrite {
    pub side: Side,
    pub addr: IpAddr,
    pub port: u16,
    pub partial: bool,
    pub l4_offset: usize,
    pub proto: u8,
}

/// NAT: copies the packet into `tx` and rewrites it there (see [`apply`]).
pub(super) fn rewrite(pkt: &[u8], tx: &mut [u8], rw: Rewrite) -> Verdict {
    let Some(out) = copy_in(pkt, tx, 0) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    apply(out, rw);
    Verdict::Tun { len: out.len() }
}

/// Rewrites one endpoint of the TCP/UDP packet `out` (already parsed by the engine, so its
/// headers are whole) in place, patching the checksums incrementally (IPv4's header
/// checksum; the transport checksum, whose pseudo-header covers the address in both
/// families). The whole-packet path calls it on the packet as read, saving a copy of up to
/// 64 KB.
pub(super) fn apply(out: &mut [u8], rw: Rewrite) {
    match rw.addr {
        IpAddr::V4(a) => apply4(out, rw, a),
        IpAddr::V6(a) => apply6(out, rw, a),
    }
}

fn apply6(out: &mut [u8], rw: Rewrite, addr: Ipv6Addr) {
    let Rewrite { side, port, partial, l4_offset, proto: l4, .. } = rw;
    let mut p = Ipv6Packet::new_unchecked(&mut *out);
    let old = match side {
        Side::Src => p.src_bytes(),
        Side::Dst => p.dst_bytes(),
    };
    match side {
        Side::Src => p.set_src_addr(addr),
        Side::Dst => p.set_dst_addr(addr),
    }
    patch_transport(&mut out[l4_offset..], l4, side, &old, &addr.octets(), port, partial);
}

/// The transport half of a NAT rewrite: checksum for the address change, then the port.
fn patch_transport(seg: &mut [u8], l4: u8, side: Side, old: &[u8], new: &[u8], port: u16, partial: bool) {
    if partial {
        let at = if l4 == proto::TCP { 16 } else { 6 };
        let c = checksum::update_partial(be16(seg, at), old, new);
        put16(seg, at, c);
        put16(seg, if side == Side::Src { 0 } else { 2 }, port);
        return;
    }
    match l4 {
        proto::TCP => {
            let mut t = TcpPacket::new_unchecked(seg);
            t.patch_pseudo_addr(old, new);
            match side {
                Side::Src => t.set_src_port(port),
                Side::Dst => t.set_dst_port(port),
            }
        }
        proto::UDP => {
            let mut u = UdpPacket::new_unchecked(seg);
            u.patch_pseudo_addr(old, new);
            match side {
                Side::Src => u.set_src_port(port),
                Side::Dst => u.set_dst_port(port),
            }
        }
        _ => {}
    }
}

fn apply4(out: &mut [u8], rw: Rewrite, addr: Ipv4Addr) {
    let Rewrite { side, port, partial, .. } = rw;
    let mut p = Ipv4Packet::new_unchecked(out);
    let old = match side {
        Side::Src => p.src_bytes(),
        Side::Dst => p.dst_bytes(),
    };
    match side {
        Side::Src => p.set_src_addr(addr),
        Side::Dst => p.set_dst_addr(addr),
    }
    let new = addr.octets();
    let l4 = p.protocol();
    patch_transport(p.payload_mut(), l4, side, &old, &new, port, partial);
}

/// Direct routing: the packet unchanged, framed to the server by the shell.
pub(super) fn direct(pkt: &[u8], tx: &mut [u8], server: IpAddr) -> Verdict {
    match copy_in(pkt, tx, 0) {
        Some(out) => Verdict::L2 { len: out.len(), next_hop: server },
        None => Verdict::Drop(DropReason::BufferTooSmall),
    }
}

/// An IPv6 outer header (RFC 2473): 40 bytes from `local` to `server`, next header `next`
/// (41: IPv6-in-IPv6; 4: IPv4-in-IPv6), hop limit 64, before the whole packet `pkt`. (No
/// tunnel encapsulation limit option: the receiving node decapsulates once and delivers.)
pub(super) fn encapsulate6(
    pkt: &[u8],
    tx: &mut [u8],
    local: Ipv6Addr,
    server: Ipv6Addr,
    next: u8,
) -> Verdict {
    let Ok(plen) = u16::try_from(pkt.len()) else {
        return Verdict::Drop(DropReason::TooBig);
    };
    if copy_in(pkt, tx, ipv6::HEADER_LEN).is_none() {
        return Verdict::Drop(DropReason::BufferTooSmall);
    }
    Ipv6Packet::new_unchecked(&mut tx[..ipv6::HEADER_LEN]).emit_header(local, server, next, plen, 64);
    Verdict::Tun { len: ipv6::HEADER_LEN + pkt.len() }
}

/// An ICMPv6 error of `msg_type`/`code` from `local` to the source of `pkt` (an IPv6
/// packet), quoting as much of it as fits in the minimum MTU (RFC 4443 section 2.4).
pub(super) fn icmp6_error(
    pkt: &[u8],
    tx: &mut [u8],
    local: Ipv6Addr,
    msg_type: u8,
    code: u8,
    rest: u32,
) -> Verdict {
    let Ok(orig) = Ipv6Packet::new_checked(pkt) else { return Verdict::Drop(DropReason::Truncated) };
    let quote = pkt.len().min(IPV6_MIN_MTU - ipv6::HEADER_LEN - 8);
    let total = ipv6::HEADER_LEN + 8 + quote;
    let Some(out) = tx.get_mut(..total) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    let dst = orig.src_addr();
    out[ipv6::HEADER_LEN + 8..].copy_from_slice(&pkt[..quote]);
    let m = &mut out[ipv6::HEADER_LEN..];
    m[0] = msg_type;
    m[1] = code;
    m[2..4].fill(0);
    m[4..8].copy_from_slice(&rest.to_be_bytes());
    let len = (8 + quote) as u32;
    let acc = checksum::pseudo_header_v6(local.octets(), dst.octets(), proto::ICMPV6, len);
    let c = !checksum::fold(checksum::sum(acc, m));
    put16(m, 2, c);
    Ipv6Packet::new_unchecked(&mut out[..ipv6::HEADER_LEN]).emit_header(
        local,
        dst,
        proto::ICMPV6,
        len as u16,
        64,
    );
    Verdict::Tun { len: total }
}

/// A TCP RST answering the IPv6 TCP segment `ip` (as [`tcp_reset`]).
pub(super) fn tcp_reset6(ip: &V6<'_>, tx: &mut [u8]) -> Verdict {
    let Ok(seg) = TcpPacket::new_checked(&ip.ip.packet()[ip.up.offset..]) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    const TOTAL: usize = ipv6::HEADER_LEN + 20;
    let Some(out) = tx.get_mut(..TOTAL) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    let data = ip.ip.packet().len().saturating_sub(ip.up.offset + seg.header_len()) as u32;
    let t = &mut out[ipv6::HEADER_LEN..];
    reset_segment(&seg, data, t);
    let (src, dst) = (ip.ip.dst_addr(), ip.ip.src_addr());
    let acc = checksum::pseudo_header_v6(src.octets(), dst.octets(), proto::TCP, 20);
    let c = !checksum::fold(checksum::sum(acc, t));
    put16(t, 16, c);
    Ipv6Packet::new_unchecked(&mut out[..ipv6::HEADER_LEN]).emit_header(src, dst, proto::TCP, 20, 64);
    Verdict::Tun { len: TOTAL }
}

/// The 20-byte RST segment (checksum 0) answering `seg`, which carried `data` bytes (RFC
/// 9293 section 3.10.7.1: `<SEQ=SEG.ACK><CTL=RST>` if it had ACK, else
/// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`).
fn reset_segment(seg: &TcpPacket<&[u8]>, data: u32, t: &mut [u8]) {
    let fl = seg.flags();
    let (seq, ack, flags) = if fl & tcp::flags::ACK != 0 {
        (seg.ack_number(), 0, tcp::flags::RST)
    } else {
        let ctl = u32::from(fl & tcp::flags::SYN != 0) + u32::from(fl & tcp::flags::FIN != 0);
        let ack = seg.seq_number().wrapping_add(data).wrapping_add(ctl);
        (0, ack, tcp::flags::RST | tcp::flags::ACK)
    };
    t.fill(0);
    put16(t, 0, seg.dst_port());
    put16(t, 2, seg.src_port());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
}

/// An IPv4 outer header: 20 bytes from `local` to `server`, protocol `protocol` (4: IP-in-IP,
/// RFC 2003, DF copied from the inner packet; 41: IPv6-in-IPv4, RFC 4213, DF set), before
/// the whole packet `pkt`.
pub(super) fn encapsulate(
    pkt: &[u8],
    tx: &mut [u8],
    local: Ipv4Addr,
    server: Ipv4Addr,
    (protocol, ident, dont_frag): (u8, u16, bool),
) -> Verdict {
    let Ok(total) = u16::try_from(pkt.len() + HEADER_LEN) else {
        return Verdict::Drop(DropReason::TooBig);
    };
    if copy_in(pkt, tx, HEADER_LEN).is_none() {
        return Verdict::Drop(DropReason::BufferTooSmall);
    }
    Ipv4Packet::new_unchecked(&mut tx[..HEADER_LEN]).emit_header(&Ipv4Repr {
        src: local,
        dst: server,
        protocol,
        total_len: total,
        ident,
        ttl: 64,
        dont_frag,
    });
    Verdict::Tun { len: usize::from(total) }
}

/// ICMP destination unreachable / fragmentation needed (RFC 1191) to the packet's source,
/// quoting the start of the packet.
pub(super) fn frag_needed(ip: &Ipv4Packet<&[u8]>, tx: &mut [u8], local: Ipv4Addr, mtu: u16) -> Verdict {
    let pkt = ip.packet();
    let quote = pkt.len().min(MAX_QUOTE);
    let total = HEADER_LEN + 8 + quote;
    let Some(out) = tx.get_mut(..total) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    out[HEADER_LEN + 8..].copy_from_slice(&pkt[..quote]);
    let m = mtu.to_be_bytes();
    IcmpPacket::new_unchecked(&mut out[HEADER_LEN..]).emit_error(
        kind::DEST_UNREACHABLE,
        kind::CODE_FRAG_NEEDED,
        [0, 0, m[0], m[1]],
    );
    Ipv4Packet::new_unchecked(&mut out[..]).emit_header(&Ipv4Repr {
        src: local,
        dst: ip.src_addr(),
        protocol: proto::ICMP,
        total_len: total as u16,
        ident: 0,
        ttl: 64,
        dont_frag: false,
    });
    Verdict::Tun { len: total }
}

/// A TCP RST answering `ip` (a TCP segment), from its destination to its source (see
/// [`reset_segment`]).
pub(super) fn tcp_reset(ip: &Ipv4Packet<&[u8]>, tx: &mut [u8]) -> Verdict {
    let Ok(seg) = TcpPacket::new_checked(ip.payload()) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    const TOTAL: usize = HEADER_LEN + 20;
    let Some(out) = tx.get_mut(..TOTAL) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    let data = ip.payload().len().saturating_sub(seg.header_len()) as u32;
    let t = &mut out[HEADER_LEN..];
    reset_segment(&seg, data, t);
    let (src, dst) = (ip.dst_addr(), ip.src_addr());
    let acc = checksum::pseudo_header_v4(src.octets(), dst.octets(), proto::TCP, 20);
    let c = !checksum::fold(checksum::sum(acc, t));
    put16(t, 16, c);
    Ipv4Packet::new_unchecked(&mut out[..]).emit_header(&Ipv4Repr {
        src,
        dst,
        protocol: proto::TCP,
        total_len: TOTAL as u16,
        ident: 0,
        ttl: 64,
        dont_frag: true,
    });
    Verdict::Tun { len: TOTAL }
}
