//! Whole-packet builders with fully computed checksums, for tests, benchmarks, fuzz seeds
//! and tools (they allocate: not for the packet path), and the full-recomputation checks
//! that the incremental patches are tested against.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::ipv4::{HEADER_LEN, Ipv4Repr};
use super::ipv6::{self, Ipv6Packet};
use super::{Ipv4Packet, proto};

/// A TCP/IPv4 packet `src → dst` with the given flags and payload (DF set, TTL 64).
pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    let seg = tcp_segment(src.1, dst.1, flags, payload);
    ip(src.0, dst.0, proto::TCP, seg, 16)
}

/// A 20-byte TCP header (checksum 0) and `payload`.
fn tcp_segment(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    seg[8..12].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    seg[12] = 0x50;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    seg.extend_from_slice(payload);
    seg
}

/// A UDP/IPv4 datagram with a computed checksum.
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let seg = udp_segment(src.1, dst.1, payload);
    ip(src.0, dst.0, proto::UDP, seg, 6)
}

/// An 8-byte UDP header (checksum 0) and `payload`.
fn udp_segment(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; 8];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    seg.extend_from_slice(payload);
    seg
}

/// Wraps a transport segment in an IPv4 header and fills the transport checksum at
/// `csum_at` of the segment.
fn ip(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, mut seg: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let acc = checksum::pseudo_header_v4(src.octets(), dst.octets(), protocol, seg.len() as u16);
    let mut c = !checksum::fold(checksum::sum(acc, &seg));
    if protocol == proto::UDP && c == 0 {
        c = 0xFFFF;
    }
    seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let total = HEADER_LEN + seg.len();
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(&seg);
    Ipv4Packet::new_unchecked(&mut out[..]).emit_header(&Ipv4Repr {
        src,
        dst,
        protocol,
        total_len: total as u16,
        ident: 0x4242,
        ttl: 64,
        dont_frag: true,
    });
    out
}

/// An ICMP error from `src` to `dst` quoting `quoted` (at most 548 bytes of it).
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let q = &quoted[..quoted.len().min(548)];
    let total = HEADER_LEN + 8 + q.len();
    let mut out = vec![0u8; total];
    out[HEADER_LEN + 8..].copy_from_slice(q);
    super::IcmpPacket::new_unchecked(&mut out[HEADER_LEN..]).emit_error(kind, code, rest);
    Ipv4Packet::new_unchecked(&mut out[..]).emit_header(&Ipv4Repr {
        src,
        dst,
        protocol: proto::ICMP,
        total_len: total as u16,
        ident: 7,
        ttl: 64,
        dont_frag: false,
    });
    out
}

/// Whether every checksum of a whole IPv4 packet (header, and TCP/UDP/ICMP over the full
/// payload) verifies by full recomputation.
pub fn checksums_valid(pkt: &[u8]) -> bool {
    let Ok(p) = Ipv4Packet::new_checked(pkt) else {
        return false;
    };
    if !p.verify_checksum() {
        return false;
    }
    let seg = p.payload();
    match p.protocol() {
        proto::TCP | proto::UDP => {
            if p.protocol() == proto::UDP && seg.len() >= 8 && seg[6] == 0 && seg[7] == 0 {
                return true;
            }
            let acc =
                checksum::pseudo_header_v4(p.src_bytes(), p.dst_bytes(), p.protocol(), seg.len() as u16);
            checksum::fold(checksum::sum(acc, seg)) == 0xFFFF
        }
        proto::ICMP => checksum::checksum(seg) == 0,
        _ => true,
    }
}

/// A TCP/IPv6 packet `src → dst` (hop limit 64), after the extension headers `ext` (a
/// chain whose first next-header value is `first` and whose last names TCP; empty: none).
pub fn tcp6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp6_ext(src, dst, flags, payload, proto::TCP, &[])
}

/// [`tcp6`] with extension headers (`first`: the fixed header's next-header value).
pub fn tcp6_ext(
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    flags: u8,
    payload: &[u8],
    first: u8,
    ext: &[u8],
) -> Vec<u8> {
    let seg = tcp_segment(src.1, dst.1, flags, payload);
    ip6(src.0, dst.0, proto::TCP, seg, 16, first, ext)
}

/// A UDP/IPv6 datagram with a computed checksum.
pub fn udp6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let seg = udp_segment(src.1, dst.1, payload);
    ip6(src.0, dst.0, proto::UDP, seg, 6, proto::UDP, &[])
}

fn ip6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    protocol: u8,
    mut seg: Vec<u8>,
    csum_at: usize,
    first: u8,
    ext: &[u8],
) -> Vec<u8> {
    let acc = checksum::pseudo_header_v6(src.octets(), dst.octets(), protocol, seg.len() as u32);
    let mut c = !checksum::fold(checksum::sum(acc, &seg));
    if protocol == proto::UDP && c == 0 {
        c = 0xFFFF;
    }
    seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut out = vec![0u8; ipv6::HEADER_LEN];
    let plen = (ext.len() + seg.len()) as u16;
    Ipv6Packet::new_unchecked(&mut out[..]).emit_header(
        src,
        dst,
        if ext.is_empty() { protocol } else { first },
        plen,
        64,
    );
    out.extend_from_slice(ext);
    out.extend_from_slice(&seg);
    out
}

/// An ICMPv6 error from `src` to `dst` quoting `quoted` (at most 1232 bytes of it).
pub fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, rest: u32, quoted: &[u8]) -> Vec<u8> {
    let q = &quoted[..quoted.len().min(1232)];
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(q);
    let acc = checksum::pseudo_header_v6(src.octets(), dst.octets(), proto::ICMPV6, m.len() as u32);
    let c = !checksum::fold(checksum::sum(acc, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut out = vec![0u8; ipv6::HEADER_LEN];
    Ipv6Packet::new_unchecked(&mut out[..]).emit_header(src, dst, proto::ICMPV6, m.len() as u16, 64);
    out.extend_from_slice(&m);
    out
}

/// Whether the upper-layer checksum (TCP, UDP, ICMPv6) of a whole IPv6 packet verifies by
/// full recomputation (after its extension headers).
pub fn checksums_valid6(pkt: &[u8]) -> bool {
    let Ok(p) = Ipv6Packet::new_checked(pkt) else { return false };
    let ipv6::Walk::Upper(up) = p.upper_layer() else { return false };
    let seg = &p.packet()[up.offset..];
    match up.proto {
        proto::TCP | proto::UDP | proto::ICMPV6 => {
            let acc = checksum::pseudo_header_v6(p.src_bytes(), p.dst_bytes(), up.proto, seg.len() as u32);
            checksum::fold(checksum::sum(acc, seg)) == 0xFFFF
        }
        _ => true,
    }
}
