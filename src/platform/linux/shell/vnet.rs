//! Reads of an offloading TUN (virtio-net header + IP packet): which ones the processor may
//! take whole, and how the others are split into ordinary packets.
//!
//! ## Whole packets (why it is correct)
//!
//! The kernel hands the shell TCP *super-packets* (`GSO_TCPV4`, up to 64 KB, one IPv4 and
//! TCP header for all segments) and packets whose transport checksum is *partial*
//! (`NEEDS_CSUM`: the checksum field holds the pseudo-header sum; the device sums the
//! transport header and payload from `csum_start` into the field at
//! `csum_start + csum_offset`). NAT rewrites addresses and ports only, never a length, so the
//! rewritten packet has the same layout and the read's header stays true for it:
//!
//! * the partial sum covers the pseudo-header, i.e. the addresses: the engine patches it for
//!   the address change (`Engine::process_offloaded`, tested in the engine); the ports lie in
//!   the summed region and are counted when the kernel finishes the sum;
//! * for a super-packet the kernel's segmentation (`tcp_gso_segment`) copies the rewritten
//!   headers into every segment, fixes each segment's IP total length, IP checksum and
//!   sequence number, adjusts the partial sum for each segment's length and finishes it, or
//!   hands the super-packet whole to a GSO-capable device (veth), which is told the checksum
//!   is partial; the IPv4 header checksum of the super-packet is valid (the kernel computes
//!   it over the super-packet's header) and the engine patches it incrementally;
//! * TCP flags: a super-packet carries the first segment's flags plus FIN/PSH of the last,
//!   which is what the connection table needs (a FIN moves it to `Closing`).
//!
//! So a whole packet is written back with the read's header (`hdr_len` recomputed from the
//! packet, as tun-rs does on its own read path: for forwarded packets the kernel may report
//! the whole first segment there). Only IPv4 packets whose checksum field is where the
//! engine patches it (TCP offset 16, UDP offset 6, `csum_start` = the IP header length) are
//! offered whole; everything else takes the split path, whose result is what tun-rs's
//! `recv_multiple` produced before (complete checksums, MTU-sized packets).

use std::io;

use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr};

use crate::dataplane::wire::checksum;

/// Not a GSO packet.
pub const GSO_NONE: u8 = 0;
/// The ECN flag bit of `gso_type`.
pub const GSO_ECN: u8 = 0x80;
/// `csum_start` / `csum_offset` are meaningful: the checksum is partial.
pub const F_NEEDS_CSUM: u8 = 1;

const TCP: u8 = 6;
const UDP: u8 = 17;

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Length of the TCP header at `at`, if valid (20..=60 bytes, inside the packet).
fn tcp_header_len(pkt: &[u8], at: usize) -> Option<u16> {
    let l = u16::from(*pkt.get(at + 12)? >> 4) * 4;
    ((20..=60).contains(&l) && at + usize::from(l) <= pkt.len()).then_some(l)
}

/// Whether the read `hdr` + `pkt` can go to the processor whole; if so, the header to
/// write back with the rewritten packet and the number of MTU-sized packets it stands for.
pub fn whole(hdr: &VirtioNetHdr, pkt: &[u8]) -> Option<(VirtioNetHdr, u64)> {
    if hdr.flags & F_NEEDS_CSUM == 0 || pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff;
    if ihl < 20 || usize::from(hdr.csum_start) != ihl || frag != 0 {
        return None;
    }
    let (proto, off) = (pkt[9], hdr.csum_offset);
    let l4_len = match (proto, off) {
        (TCP, 16) => tcp_header_len(pkt, ihl)?,
        (UDP, 6) if ihl + 8 <= pkt.len() => 8,
        _ => return None,
    };
    let hdr_len = hdr.csum_start + l4_len;
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => Some((VirtioNetHdr { hdr_len, ..*hdr }, 1)),
        VIRTIO_NET_HDR_GSO_TCPV4 if proto == TCP && hdr.gso_size > 0 => {
            let payload = pkt.len().saturating_sub(usize::from(hdr_len));
            let segments = payload.div_ceil(usize::from(hdr.gso_size)).max(1);
            Some((VirtioNetHdr { hdr_len, ..*hdr }, segments as u64))
        }
        _ => None,
    }
}

/// Finishes a partial checksum as a device would: the folded sum from `start` (the field
/// holding the pseudo-header sum) to the end, complemented, into `start + offset`.
pub fn complete_checksum(pkt: &mut [u8], start: u16, offset: u16) -> bool {
    let (start, at) = (usize::from(start), usize::from(start) + usize::from(offset));
    if at + 2 > pkt.len() {
        return false;
    }
    let c = checksum::checksum(&pkt[start..]);
    // As the kernel (skb_checksum_help): a zero result is sent as 0xFFFF (UDP's "no
    // checksum" is 0; the two are the same in one's complement).
    let c = if c == 0 { 0xffff } else { c };
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Splits a read into ordinary packets in `bufs` (lengths in `sizes`), completing partial
/// checksums: tun-rs's `recv_multiple` read path, on a read the shell has already made.
pub fn split<B: AsRef<[u8]> + AsMut<[u8]>>(
    mut hdr: VirtioNetHdr,
    pkt: &mut [u8],
    bufs: &mut [B],
    sizes: &mut [usize],
) -> io::Result<usize> {
    let len = pkt.len();
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 && !complete_checksum(pkt, hdr.csum_start, hdr.csum_offset) {
            return Err(invalid("checksum field beyond the packet"));
        }
        let out = bufs.first_mut().and_then(|b| b.as_mut().get_mut(..len)).ok_or(invalid("buffer"))?;
        out.copy_from_slice(pkt);
        *sizes.first_mut().ok_or(invalid("sizes"))? = len;
        return Ok(1);
    }
    if hdr.gso_size == 0 || pkt.is_empty() {
        return Err(invalid("GSO packet without a segment size"));
    }
    let is_v6 = match pkt[0] >> 4 {
        4 => false,
        6 => true,
        _ => return Err(invalid("GSO packet of an unknown IP version")),
    };
    // Don't trust hdr_len (the kernel may report the whole first segment for forwarded
    // packets): the transport header's own length after csum_start, as tun-rs does.
    let start = usize::from(hdr.csum_start);
    hdr.hdr_len = match hdr.gso_type & !GSO_ECN {
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => {
            hdr.csum_start + tcp_header_len(pkt, start).ok_or(invalid("TCP header"))?
        }
        VIRTIO_NET_HDR_GSO_UDP_L4 => hdr.csum_start.checked_add(8).ok_or(invalid("UDP header"))?,
        _ => return Err(invalid("unknown GSO type")),
    };
    let csum_end = start + usize::from(hdr.csum_offset) + 2;
    if usize::from(hdr.hdr_len) > len || csum_end > len {
        return Err(invalid("GSO headers beyond the packet"));
    }
    tun_rs::gso_split(pkt, hdr, bufs, sizes, 0, is_v6)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dataplane::wire::{self, build, checksum::pseudo_header_v4};

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

    /// `pkt` as the kernel hands it with checksum offload: the field holds the pseudo sum.
    fn to_partial(mut p: Vec<u8>, at: usize) -> Vec<u8> {
        let len = (p.len() - 20) as u16;
        let ps = pseudo_header_v4(A.octets(), B.octets(), p[9], len);
        wire::put16(&mut p, 20 + at, checksum::fold(ps));
        p
    }

    fn hdr(gso_type: u8, gso_size: u16, csum_offset: u16) -> VirtioNetHdr {
        VirtioNetHdr { flags: F_NEEDS_CSUM, gso_type, hdr_len: 0, gso_size, csum_start: 20, csum_offset }
    }

    #[test]
    fn super_packets_and_partial_packets_go_whole() {
        let big = to_partial(build::tcp((A, 1), (B, 2), 0x10, &[7u8; 4000]), 16);
        let (h, segs) = whole(&hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1448, 16), &big).unwrap();
        assert_eq!((h.hdr_len, h.gso_size, segs), (40, 1448, 3));
        let ecn = whole(&hdr(VIRTIO_NET_HDR_GSO_TCPV4 | GSO_ECN, 1448, 16), &big).unwrap();
        assert_eq!(ecn.0.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 | GSO_ECN);
        let udp = to_partial(build::udp((A, 1), (B, 2), b"x"), 6);
        assert_eq!(whole(&hdr(GSO_NONE, 0, 6), &udp).map(|x| (x.0.hdr_len, x.1)), Some((28, 1)));
    }

    #[test]
    fn everything_else_is_split() {
        let tcp = build::tcp((A, 1), (B, 2), 0x10, b"abc");
        let mut not_partial = hdr(GSO_NONE, 0, 16);
        not_partial.flags = 0;
        assert!(whole(&not_partial, &tcp).is_none());
        assert!(whole(&hdr(GSO_NONE, 0, 6), &tcp).is_none(), "checksum field not where the engine patches");
        assert!(whole(&hdr(VIRTIO_NET_HDR_GSO_UDP_L4, 100, 6), &build::udp((A, 1), (B, 2), b"x")).is_none());
        assert!(whole(&hdr(VIRTIO_NET_HDR_GSO_TCPV4, 0, 16), &tcp).is_none(), "no segment size");
        let mut frag = tcp.clone();
        frag[6] = 0x20; // more fragments
        assert!(whole(&hdr(GSO_NONE, 0, 16), &frag).is_none());
        assert!(whole(&hdr(GSO_NONE, 0, 16), &tcp[..30]).is_none(), "truncated TCP header");
    }

    #[test]
    fn split_completes_checksums_and_segments() {
        let mut bufs = vec![vec![0u8; 2048]; 8];
        let mut sizes = vec![0; 8];
        let mut small = to_partial(build::udp((A, 1), (B, 2), b"hello"), 6);
        assert_eq!(split(hdr(GSO_NONE, 0, 6), &mut small, &mut bufs, &mut sizes).unwrap(), 1);
        assert!(build::checksums_valid(&bufs[0][..sizes[0]]));
        let mut big = to_partial(build::tcp((A, 1), (B, 2), 0x10, &[9u8; 3000]), 16);
        let n = split(hdr(VIRTIO_NET_HDR_GSO_TCPV4, 1000, 16), &mut big, &mut bufs, &mut sizes).unwrap();
        assert_eq!(n, 3);
        for i in 0..n {
            assert_eq!(sizes[i], 1040);
            assert!(build::checksums_valid(&bufs[i][..sizes[i]]), "segment {i}");
        }
    }

    #[test]
    fn completed_partial_checksum_equals_a_full_one() {
        let full = build::tcp((A, 1), (B, 2), 0x18, b"some payload");
        let mut p = to_partial(full.clone(), 16);
        assert!(complete_checksum(&mut p[20..], 0, 16));
        assert_eq!(p, full);
        assert!(!complete_checksum(&mut p[..30], 20, 16));
    }
}
