//! The packet transforms: NAT rewrite, direct-routing copy, IP-in-IP encapsulation and the
//! fragmentation-needed error. Each writes into the caller's `tx` and returns the verdict;
//! checksums are patched incrementally (RFC 1624), never recomputed over the payload.

use core::net::Ipv4Addr;

use super::{DropReason, Verdict};
use crate::dataplane::wire::icmp::kind;
use crate::dataplane::wire::ipv4::{HEADER_LEN, Ipv4Repr};
use crate::dataplane::wire::{
    IcmpPacket, Ipv4Packet, TcpPacket, UdpPacket, be16, checksum, proto, put16, tcp,
};

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

fn copy_in<'a>(ip: &Ipv4Packet<&[u8]>, tx: &'a mut [u8], at: usize) -> Option<&'a mut [u8]> {
    let pkt = ip.packet();
    let out = tx.get_mut(at..at + pkt.len())?;
    out.copy_from_slice(pkt);
    Some(out)
}

/// One NAT rewrite: which endpoint becomes `addr:port`. With `partial`, the transport
/// checksum field holds only the pseudo-header sum (checksum offload, `NEEDS_CSUM`): the
/// address change is applied to it and the port change is not (the device sums the ports
/// itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rewrite {
    pub side: Side,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub partial: bool,
}

/// NAT: copies the packet into `tx` and rewrites it there (see [`apply`]).
pub(super) fn rewrite(ip: &Ipv4Packet<&[u8]>, tx: &mut [u8], rw: Rewrite) -> Verdict {
    let Some(out) = copy_in(ip, tx, 0) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    apply(out, rw);
    Verdict::Tun { len: out.len() }
}

/// Rewrites one endpoint of the IPv4 TCP/UDP packet `out` (already parsed by the engine, so
/// its headers are whole) in place, patching the IP and transport checksums incrementally.
/// The whole-packet path calls it on the packet as read, saving a copy of up to 64 KB.
pub(super) fn apply(out: &mut [u8], rw: Rewrite) {
    let Rewrite { side, addr, port, partial } = rw;
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
    let seg = p.payload_mut();
    if partial {
        let at = if l4 == proto::TCP { 16 } else { 6 };
        let c = checksum::update_partial(be16(seg, at), &old, &new);
        put16(seg, at, c);
        put16(seg, if side == Side::Src { 0 } else { 2 }, port);
        return;
    }
    match l4 {
        proto::TCP => {
            let mut t = TcpPacket::new_unchecked(seg);
            t.patch_pseudo_addr(&old, &new);
            match side {
                Side::Src => t.set_src_port(port),
                Side::Dst => t.set_dst_port(port),
            }
        }
        proto::UDP => {
            let mut u = UdpPacket::new_unchecked(seg);
            u.patch_pseudo_addr(&old, &new);
            match side {
                Side::Src => u.set_src_port(port),
                Side::Dst => u.set_dst_port(port),
            }
        }
        _ => {}
    }
}

/// Direct routing: the packet unchanged, framed to the server by the shell.
pub(super) fn direct(ip: &Ipv4Packet<&[u8]>, tx: &mut [u8], server: Ipv4Addr) -> Verdict {
    match copy_in(ip, tx, 0) {
        Some(out) => Verdict::L2 { len: out.len(), next_hop: server },
        None => Verdict::Drop(DropReason::BufferTooSmall),
    }
}

/// IP-in-IP (RFC 2003): a 20-byte outer header from `local` to `server`, DF copied from
/// the inner packet.
pub(super) fn encapsulate(
    ip: &Ipv4Packet<&[u8]>,
    tx: &mut [u8],
    local: Ipv4Addr,
    server: Ipv4Addr,
    ident: u16,
) -> Verdict {
    let inner = usize::from(ip.total_len());
    let Ok(total) = u16::try_from(inner + HEADER_LEN) else {
        return Verdict::Drop(DropReason::TooBig);
    };
    if copy_in(ip, tx, HEADER_LEN).is_none() {
        return Verdict::Drop(DropReason::BufferTooSmall);
    }
    Ipv4Packet::new_unchecked(&mut tx[..HEADER_LEN]).emit_header(&Ipv4Repr {
        src: local,
        dst: server,
        protocol: proto::IPIP,
        total_len: total,
        ident,
        ttl: 64,
        dont_frag: ip.dont_frag(),
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

/// A TCP RST answering `ip` (a TCP segment), from its destination to its source (RFC 9293
/// section 3.10.7.1: `<SEQ=SEG.ACK><CTL=RST>` if it had ACK, else
/// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`).
pub(super) fn tcp_reset(ip: &Ipv4Packet<&[u8]>, tx: &mut [u8]) -> Verdict {
    let Ok(seg) = TcpPacket::new_checked(ip.payload()) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    const TOTAL: usize = HEADER_LEN + 20;
    let Some(out) = tx.get_mut(..TOTAL) else {
        return Verdict::Drop(DropReason::BufferTooSmall);
    };
    let fl = seg.flags();
    let (seq, ack, flags) = if fl & tcp::flags::ACK != 0 {
        (seg.ack_number(), 0, tcp::flags::RST)
    } else {
        let data = ip.payload().len().saturating_sub(seg.header_len()) as u32;
        let ctl = u32::from(fl & tcp::flags::SYN != 0) + u32::from(fl & tcp::flags::FIN != 0);
        let ack = seg.seq_number().wrapping_add(data).wrapping_add(ctl);
        (0, ack, tcp::flags::RST | tcp::flags::ACK)
    };
    let t = &mut out[HEADER_LEN..];
    t.fill(0);
    put16(t, 0, seg.dst_port());
    put16(t, 2, seg.src_port());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
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
