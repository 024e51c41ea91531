//! Ethernet frames on the AF_XDP path: where the IP packet starts (one optional VLAN tag),
//! the classification the XDP program makes (in Rust, for tests and the fuzz target), and
//! the Ethernet header in front of an output packet.
//!
//! Untrusted bytes: every function checks lengths and returns an error, never panics
//! (`fuzz/fuzz_targets/xdp_frame.rs`).
//!
//! Output frames are untagged. A tagged frame is accepted (a driver that leaves the tag in
//! the frame on the parent of a VLAN), but a VLAN deployment names the VLAN's interface as
//! the wire interface, whose frames arrive and leave untagged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ethernet II header length.
pub const ETH_HLEN: usize = 14;
/// With one VLAN tag.
pub const VLAN_HLEN: usize = 18;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// Why a frame is not an IP packet we take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame shorter than its headers")]
    Short,
    #[error("not IPv4 or IPv6 (ethertype {0:#06x})")]
    NotIp(u16),
    #[error("IP header inconsistent with the ethertype or its lengths")]
    BadIp,
    #[error("IPv4 fragment")]
    Fragment,
}

/// The L3 part of a frame: the IP packet's offset and, from the IP header, its length
/// (frames may carry padding behind a short packet: the minimum Ethernet frame is 60 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3 {
    pub offset: usize,
    pub len: usize,
    pub ethertype: u16,
    pub vlan: Option<u16>,
}

fn be16(b: &[u8], at: usize) -> Result<u16, FrameError> {
    match b.get(at..at + 2) {
        Some(x) => Ok(u16::from_be_bytes([x[0], x[1]])),
        None => Err(FrameError::Short),
    }
}

/// Strips L2: where the IP packet is in `frame` and how long it is.
pub fn l3(frame: &[u8]) -> Result<L3, FrameError> {
    let mut ethertype = be16(frame, 12)?;
    let mut offset = ETH_HLEN;
    let mut vlan = None;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        vlan = Some(be16(frame, 14)? & 0x0fff);
        ethertype = be16(frame, 16)?;
        offset = VLAN_HLEN;
    }
    let ip = frame.get(offset..).ok_or(FrameError::Short)?;
    let len = match ethertype {
        ETH_P_IP => {
            let (v, ihl) = (ip.first().ok_or(FrameError::Short)? >> 4, usize::from(ip[0] & 0x0f) * 4);
            let total = usize::from(be16(ip, 2)?);
            if v != 4 || ihl < 20 || total < ihl {
                return Err(FrameError::BadIp);
            }
            total
        }
        ETH_P_IPV6 => {
            if ip.first().ok_or(FrameError::Short)? >> 4 != 6 {
                return Err(FrameError::BadIp);
            }
            40 + usize::from(be16(ip, 4)?)
        }
        other => return Err(FrameError::NotIp(other)),
    };
    if len > ip.len() {
        return Err(FrameError::Short);
    }
    Ok(L3 { offset, len, ethertype, vlan })
}

/// What the XDP program looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// (source, destination) for TCP and UDP.
    pub ports: Option<(u16, u16)>,
    /// The ICMPv6 type (IPv6 only).
    pub icmp6_type: Option<u8>,
}

/// Classifies a frame as the XDP program does (IPv4 fragments and IPv6 with extension
/// headers are not classified: the program passes them).
pub fn classify(frame: &[u8]) -> Result<Classified, FrameError> {
    let l = l3(frame)?;
    let ip = &frame[l.offset..l.offset + l.len];
    let (src, dst, proto, l4) = if l.ethertype == ETH_P_IP {
        if be16(ip, 6)? & 0x3fff != 0 {
            return Err(FrameError::Fragment);
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let a = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
        (IpAddr::V4(a(12)), IpAddr::V4(a(16)), ip[9], ihl)
    } else {
        if ip.len() < 40 {
            return Err(FrameError::Short);
        }
        let a = |at: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&ip[at..at + 16]);
            Ipv6Addr::from(o)
        };
        (IpAddr::V6(a(8)), IpAddr::V6(a(24)), ip[6], 40)
    };
    let ports = match proto {
        6 | 17 => Some((be16(ip, l4)?, be16(ip, l4 + 2)?)),
        _ => None,
    };
    let icmp6_type = (l.ethertype == ETH_P_IPV6 && proto == 58).then(|| ip.get(l4).copied()).flatten();
    Ok(Classified { src, dst, proto, ports, icmp6_type })
}

/// The ethertype of an IP packet, from its version nibble (`None`: not IP).
pub fn ethertype_of(packet: &[u8]) -> Option<u16> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => Some(ETH_P_IP),
        Some(6) => Some(ETH_P_IPV6),
        _ => None,
    }
}

/// Writes an untagged Ethernet header into `out[..ETH_HLEN]` for `ethertype`.
pub fn write_eth(out: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Result<(), FrameError> {
    let h = out.get_mut(..ETH_HLEN).ok_or(FrameError::Short)?;
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
    Ok(())
}

/// Ones'-complement sum of `data` (big-endian 16-bit words, an odd last byte padded) onto
/// `acc`.
fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Completes a TCP or UDP checksum that holds only the pseudo-header sum.
///
/// Why: a sender whose device offloads checksums (every veth, a VM's virtio-net) leaves the
/// transport checksum *partial* (`CHECKSUM_PARTIAL`: the folded pseudo-header sum, to be
/// finished by the hardware). Forwarded by the kernel, the metadata travels with the skb
/// and the output device finishes it; through XDP it arrives as bare bytes, and the engine's
/// incremental NAT patch would keep it wrong. So a field equal to the pseudo-header sum is
/// taken for partial and the checksum computed over the segment. A complete checksum that
/// happens to equal that sum (1 in 65536) is recomputed to the same value; anything else
/// (complete, or corrupt) is left as it is. Returns whether it completed one.
pub fn complete_partial_checksum(ip: &mut [u8]) -> Result<bool, FrameError> {
    let version = ip.first().ok_or(FrameError::Short)? >> 4;
    let (l4_start, l4_end, proto, pseudo) = match version {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            if ihl < 20 || total < ihl || total > ip.len() {
                return Err(FrameError::BadIp);
            }
            if be16(ip, 6)? & 0x3fff != 0 {
                return Ok(false);
            }
            let proto = ip[9];
            let len = (total - ihl) as u64;
            (ihl, total, proto, sum16(&ip[12..20], u64::from(proto) + len))
        }
        6 => {
            if ip.len() < 40 {
                return Err(FrameError::Short);
            }
            let end = 40 + usize::from(be16(ip, 4)?);
            if end > ip.len() {
                return Err(FrameError::Short);
            }
            let proto = ip[6];
            (40, end, proto, sum16(&ip[8..40], u64::from(proto) + (end - 40) as u64))
        }
        _ => return Err(FrameError::BadIp),
    };
    let (off, min) = match proto {
        6 => (16, 20),
        17 => (6, 8),
        _ => return Ok(false),
    };
    let l4 = &mut ip[l4_start..l4_end];
    if l4.len() < min {
        return Ok(false);
    }
    let field = u16::from_be_bytes([l4[off], l4[off + 1]]);
    if (proto == 17 && version == 4 && field == 0) || field != fold(pseudo) {
        return Ok(false);
    }
    l4[off..off + 2].copy_from_slice(&[0, 0]);
    let mut c = !fold(sum16(l4, pseudo));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A frame: Ethernet (optionally tagged) + an IPv4 UDP packet `src:sport -> dst:dport`.
    pub fn udp4(vlan: Option<u16>, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0xff; 12];
        if let Some(v) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&[0, 12, 0, 0, 1, 2, 3, 4]);
        f.extend_from_slice(&ip);
        f
    }

    pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0xff; 12];
        f.extend_from_slice(&0x86DDu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        let mut tcp = [0u8; 20];
        tcp[..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 0x50;
        f.extend_from_slice(&tcp);
        f
    }

    #[test]
    fn strips_plain_and_tagged_ethernet() {
        let f = udp4(None, [10, 0, 0, 1], [10, 0, 0, 99], 5000, 80);
        assert_eq!(l3(&f), Ok(L3 { offset: 14, len: 32, ethertype: ETH_P_IP, vlan: None }));
        let mut padded = f.clone();
        padded.resize(60, 0);
        assert_eq!(l3(&padded).map(|l| l.len), Ok(32), "Ethernet padding is not part of the packet");
        let t = udp4(Some(0x2005), [10, 0, 0, 1], [10, 0, 0, 99], 5000, 80);
        assert_eq!(l3(&t), Ok(L3 { offset: 18, len: 32, ethertype: ETH_P_IP, vlan: Some(5) }));
        let c = classify(&t).unwrap();
        assert_eq!(c.ports, Some((5000, 80)));
        assert_eq!(c.dst, IpAddr::from([10, 0, 0, 99]));
    }

    #[test]
    fn classifies_ipv6() {
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::99".parse().unwrap());
        let c = classify(&tcp6(a, b, 40000, 443)).unwrap();
        assert_eq!((c.src, c.dst, c.proto, c.ports), (a.into(), b.into(), 6, Some((40000, 443))));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let f = udp4(None, [10, 0, 0, 1], [10, 0, 0, 99], 5000, 80);
        for n in 0..f.len() {
            assert!(l3(&f[..n]).is_err(), "truncated to {n}");
        }
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(l3(&arp), Err(FrameError::NotIp(0x0806)));
        let mut frag = f.clone();
        frag[14 + 6] = 0x20; // MF
        assert_eq!(classify(&frag), Err(FrameError::Fragment));
        let mut bad = f;
        bad[14] = 0x44; // IHL 4
        assert_eq!(l3(&bad), Err(FrameError::BadIp));
    }

    /// The transport checksum of an IP packet verifies (sums to 0xffff with the pseudo-header).
    fn verifies(ip: &[u8]) -> bool {
        let v6 = ip[0] >> 4 == 6;
        let (start, proto, pseudo_addrs) =
            if v6 { (40, ip[6], &ip[8..40]) } else { (20, ip[9], &ip[12..20]) };
        let l4 = &ip[start..];
        fold(sum16(l4, sum16(pseudo_addrs, u64::from(proto) + l4.len() as u64))) == 0xffff
    }

    /// Sets the packet's transport checksum to what an offloading sender leaves.
    fn make_partial(ip: &mut [u8]) {
        let v6 = ip[0] >> 4 == 6;
        let (start, proto) = if v6 { (40, ip[6]) } else { (20, ip[9]) };
        let addrs = if v6 { ip[8..40].to_vec() } else { ip[12..20].to_vec() };
        let len = (ip.len() - start) as u64;
        let off = start + if proto == 6 { 16 } else { 6 };
        let p = fold(sum16(&addrs, u64::from(proto) + len));
        ip[off..off + 2].copy_from_slice(&p.to_be_bytes());
    }

    #[test]
    fn completes_partial_checksums_only() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        for f in
            [udp4(None, [10, 0, 0, 1], [10, 0, 0, 99], 5000, 80), tcp6(v6("fd00::1"), v6("fd00::99"), 1, 2)]
        {
            let mut ip = f[14..].to_vec();
            make_partial(&mut ip);
            assert!(!verifies(&ip));
            assert_eq!(complete_partial_checksum(&mut ip), Ok(true));
            assert!(verifies(&ip), "completed");
            let done = ip.clone();
            assert_eq!(complete_partial_checksum(&mut ip), Ok(false), "a complete checksum is left alone");
            assert_eq!(ip, done);
            let last = ip.len() - 1;
            ip[last] ^= 0x55;
            assert_eq!(complete_partial_checksum(&mut ip), Ok(false), "a corrupt packet stays corrupt");
            assert!(!verifies(&ip));
        }
        let mut no_csum = udp4(None, [10, 0, 0, 1], [10, 0, 0, 99], 5000, 80)[14..].to_vec();
        no_csum[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(complete_partial_checksum(&mut no_csum), Ok(false), "IPv4 UDP without checksum");
        assert!(complete_partial_checksum(&mut []).is_err());
        assert!(complete_partial_checksum(&mut [0x45, 0, 0]).is_err());
    }

    #[test]
    fn builds_the_ethernet_header() {
        let mut out = [0u8; 20];
        write_eth(&mut out, [1; 6], [2; 6], ETH_P_IPV6).unwrap();
        assert_eq!(&out[..14], &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x86, 0xdd]);
        assert!(write_eth(&mut out[..13], [1; 6], [2; 6], ETH_P_IP).is_err());
        assert_eq!(ethertype_of(&[0x45]), Some(ETH_P_IP));
        assert_eq!(ethertype_of(&[0x60]), Some(ETH_P_IPV6));
        assert_eq!(ethertype_of(&[]), None);
    }
}
