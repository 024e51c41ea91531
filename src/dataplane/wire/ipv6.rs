//! IPv6 header view (RFC 8200) and a bounded walk of its extension headers.
//!
//! The same shape as [`super::Ipv4Packet`]: `new_checked` validates the fixed header and the
//! payload length against the buffer, after which the accessors cannot panic. There is no
//! header checksum; address rewrites patch only the transport checksum (its pseudo-header
//! covers both addresses, RFC 8200 section 8.1).
//!
//! [`Ipv6Packet::upper_layer`] walks the extension headers a balancer may meet in front of
//! TCP, UDP or ICMPv6: hop-by-hop options (0), routing (43), fragment (44) and destination
//! options (60), at most [`MAX_EXTENSIONS`] of them, each length checked against the
//! payload. Anything else (ESP, AH, mobility, "no next header", unknown values) is refused
//! with [`Walk::Unsupported`] so the engine counts and drops it rather than guessing where a
//! transport header starts.

use core::net::Ipv6Addr;

use super::{Error, Result, be16};

/// The fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// Extension headers walked at most before the packet is refused.
pub const MAX_EXTENSIONS: usize = 8;

/// Next-header values of the extension headers the walk understands.
pub mod next {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DEST_OPTIONS: u8 = 60;
    /// IPv6 encapsulated in IPv6 (RFC 2473).
    pub const IPV6: u8 = 41;
    pub const ICMPV6: u8 = 58;
}

mod field {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// Where the upper-layer header starts, and the fragment it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, IPv4 or IPv6 in IPv6 ...).
    pub proto: u8,
    /// Offset of its header from the start of the packet.
    pub offset: usize,
    /// Fragment offset in 8-byte units, if a fragment header was present (0: a first
    /// fragment or an atomic one).
    pub frag_offset: Option<u16>,
}

/// The outcome of the extension-header walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    Upper(UpperLayer),
    /// An extension header the walk does not go through (or too many of them).
    Unsupported(u8),
    /// A header's length runs past the payload.
    Truncated,
}

/// A view of an IPv6 packet: `buffer[..40 + payload_len()]`; bytes past it are ignored.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps bytes without checking (buffers this crate has just written).
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps untrusted bytes: the version is 6 and the header plus the payload length fit
    /// in the buffer. (A jumbogram, payload length 0 with a hop-by-hop jumbo option, is
    /// taken as an empty payload and its transport header found missing.)
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(Error::Malformed);
        }
        let p = Ipv6Packet { buffer };
        if p.total_len() > p.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn payload_len(&self) -> u16 {
        be16(self.b(), field::PAYLOAD_LEN)
    }

    /// Header and payload, bytes.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    pub fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_bytes())
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_bytes())
    }

    pub fn src_bytes(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::SRC..field::SRC + 16]);
        a
    }

    pub fn dst_bytes(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::DST..field::DST + 16]);
        a
    }

    /// The packet (`total_len` bytes).
    pub fn packet(&self) -> &[u8] {
        &self.b()[..self.total_len()]
    }

    /// Walks the extension headers to the upper-layer header (module docs).
    pub fn upper_layer(&self) -> Walk {
        walk(self.packet(), self.next_header())
    }
}

/// The walk over `pkt` (a whole IPv6 packet) starting with next-header value `first`.
fn walk(pkt: &[u8], first: u8) -> Walk {
    let mut nh = first;
    let mut at = HEADER_LEN;
    let mut frag = None;
    for _ in 0..=MAX_EXTENSIONS {
        match nh {
            next::HOP_BY_HOP | next::ROUTING | next::DEST_OPTIONS => {
                // Next header, length in 8-octet units not counting the first 8.
                let Some(h) = pkt.get(at..at + 2) else { return Walk::Truncated };
                let len = (usize::from(h[1]) + 1) * 8;
                if at + len > pkt.len() {
                    return Walk::Truncated;
                }
                if nh == next::HOP_BY_HOP && at != HEADER_LEN {
                    // Hop-by-hop options must come first (RFC 8200 section 4.1).
                    return Walk::Unsupported(nh);
                }
                nh = h[0];
                at += len;
            }
            next::FRAGMENT => {
                let Some(h) = pkt.get(at..at + 8) else { return Walk::Truncated };
                if frag.is_some() {
                    return Walk::Unsupported(nh);
                }
                frag = Some(be16(h, 2) >> 3);
                nh = h[0];
                at += 8;
            }
            // Upper layers and the encapsulations the engine handles.
            super::proto::TCP | super::proto::UDP | next::ICMPV6 | next::IPV6 | super::proto::IPIP => {
                return Walk::Upper(UpperLayer { proto: nh, offset: at, frag_offset: frag });
            }
            other => return Walk::Unsupported(other),
        }
    }
    Walk::Unsupported(nh)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 16].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 16].copy_from_slice(&a.octets());
    }

    /// Writes a fixed header (traffic class and flow label 0).
    pub fn emit_header(&mut self, src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload_len: u16, hops: u8) {
        let b = self.buffer.as_mut();
        b[..4].copy_from_slice(&[0x60, 0, 0, 0]);
        b[field::PAYLOAD_LEN..field::PAYLOAD_LEN + 2].copy_from_slice(&payload_len.to_be_bytes());
        b[field::NEXT_HEADER] = next_header;
        b[field::HOP_LIMIT] = hops;
        b[field::SRC..field::SRC + 16].copy_from_slice(&src.octets());
        b[field::DST..field::DST + 16].copy_from_slice(&dst.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::wire::proto;

    fn packet(next_header: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        let plen = (ext.len() + l4.len()) as u16;
        Ipv6Packet::new_unchecked(&mut p[..]).emit_header(
            "2001:db8::1".parse().expect("ip"),
            "2001:db8::2".parse().expect("ip"),
            next_header,
            plen,
            64,
        );
        p.extend_from_slice(ext);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn fixed_header_is_checked_against_the_buffer() {
        let p = packet(proto::TCP, &[], &[0u8; 20]);
        let v = Ipv6Packet::new_checked(&p[..]).expect("valid");
        assert_eq!(v.total_len(), 60);
        assert_eq!(v.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().expect("ip"));
        assert_eq!(
            v.upper_layer(),
            Walk::Upper(UpperLayer { proto: proto::TCP, offset: 40, frag_offset: None })
        );
        assert_eq!(Ipv6Packet::new_checked(&p[..59]).err(), Some(Error::Truncated));
        let mut v4 = p.clone();
        v4[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&v4[..]).err(), Some(Error::Malformed));
        assert_eq!(Ipv6Packet::new_checked(&p[..39]).err(), Some(Error::Truncated));
    }

    #[test]
    fn extension_headers_are_walked_and_bounded() {
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> fragment -> UDP.
        let mut ext = vec![next::DEST_OPTIONS, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[next::FRAGMENT, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[proto::UDP, 0, 0x00, 0x08, 0, 0, 0, 7]); // offset 1 (8 bytes)
        let p = packet(next::HOP_BY_HOP, &ext, &[0u8; 8]);
        let v = Ipv6Packet::new_checked(&p[..]).expect("valid");
        assert_eq!(
            v.upper_layer(),
            Walk::Upper(UpperLayer { proto: proto::UDP, offset: 40 + 32, frag_offset: Some(1) })
        );
        // A length running past the payload.
        let p = packet(next::ROUTING, &[proto::TCP, 9, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(Ipv6Packet::new_checked(&p[..]).expect("valid").upper_layer(), Walk::Truncated);
        // ESP and "no next header" are not walked.
        let p = packet(50, &[], &[0u8; 16]);
        assert_eq!(Ipv6Packet::new_checked(&p[..]).expect("valid").upper_layer(), Walk::Unsupported(50));
        // Hop-by-hop anywhere but first, two fragment headers, endless chains.
        let p = packet(
            next::DEST_OPTIONS,
            &[next::HOP_BY_HOP, 0, 0, 0, 0, 0, 0, 0, proto::TCP, 0, 0, 0, 0, 0, 0, 0],
            &[],
        );
        assert_eq!(Ipv6Packet::new_checked(&p[..]).expect("valid").upper_layer(), Walk::Unsupported(0));
        let two = [next::FRAGMENT, 0, 0, 0, 0, 0, 0, 0, proto::TCP, 0, 0, 0, 0, 0, 0, 0];
        let p = packet(next::FRAGMENT, &two, &[]);
        assert_eq!(Ipv6Packet::new_checked(&p[..]).expect("valid").upper_layer(), Walk::Unsupported(44));
        let chain: Vec<u8> = (0..12).flat_map(|_| [next::DEST_OPTIONS, 0, 0, 0, 0, 0, 0, 0]).collect();
        let p = packet(next::DEST_OPTIONS, &chain, &[]);
        assert!(matches!(
            Ipv6Packet::new_checked(&p[..]).expect("valid").upper_layer(),
            Walk::Unsupported(_)
        ));
    }

    #[test]
    fn no_input_makes_the_walk_panic() {
        // Every short prefix and a spread of next-header values over random-ish bytes.
        let mut x = 0x1234_5678u32;
        for len in 40..200 {
            for nh in [0u8, 6, 17, 43, 44, 58, 60, 41, 4, 59, 255] {
                let mut p = vec![0u8; len];
                for b in p.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *b = x as u8;
                }
                p[0] = 0x60;
                let plen = (len - 40) as u16;
                p[4..6].copy_from_slice(&plen.to_be_bytes());
                p[6] = nh;
                let v = Ipv6Packet::new_checked(&p[..]).expect("valid");
                if let Walk::Upper(u) = v.upper_layer() {
                    assert!(u.offset <= len);
                }
            }
        }
    }
}
