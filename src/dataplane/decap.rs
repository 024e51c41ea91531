//! Node-side IP-in-IP decapsulation (RFC 2003), sans-IO.
//!
//! In tunnel mode the primary ATM wraps each client packet in an outer IPv4 header (protocol 4)
//! addressed to the real server. A node whose kernel has the `ipip` module lets the kernel
//! decapsulate; this kernel (and many containers) has none, so the node's daemon reads the
//! outer packets from a raw `IPPROTO_IPIP` socket, calls [`Decapsulator::decapsulate`], and
//! writes the inner packet to a TUN device: the node's stack then delivers it to the VIP
//! configured on its loopback, and the server answers the client directly.
//!
//! ## Contract
//!
//! * Input: one whole IPv4 packet as a raw socket returns it (outer header included).
//! * Output: the inner IPv4 packet, a sub-slice of the input (no copy), trimmed to the inner
//!   header's total length. Everything else is an error value, counted in [`DecapStats`] and
//!   dropped; nothing is logged per packet.
//! * Both headers are validated (version, header length, total length, header checksum); outer
//!   fragments are refused (the kernel reassembles before a raw socket sees a packet, so a
//!   fragment here is malformed). Because a decapsulator that injects whatever it is given into
//!   the local stack is a spoofing relay, the outer source can be restricted to the ATMs'
//!   addresses and the inner destination to the VIPs ([`DecapPolicy`]).

use std::net::Ipv4Addr;

/// IP protocol number of IP-in-IP.
pub const IPPROTO_IPIP: u8 = 4;

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    #[error("decap: outer packet shorter than an IPv4 header")]
    OuterTruncated,
    #[error("decap: outer packet is not IPv4, or has a bad header or total length")]
    OuterMalformed,
    #[error("decap: outer header checksum is wrong")]
    OuterChecksum,
    #[error("decap: outer protocol {0} is not IP-in-IP (4)")]
    NotIpip(u8),
    #[error("decap: outer packet is a fragment")]
    Fragment,
    #[error("decap: outer source {0} is not an allowed ATM")]
    SourceNotAllowed(Ipv4Addr),
    #[error("decap: inner packet is not IPv4, or has a bad header or total length")]
    InnerMalformed,
    #[error("decap: inner header checksum is wrong")]
    InnerChecksum,
    #[error("decap: inner destination {0} is not a VIP of this node")]
    DestinationNotAllowed(Ipv4Addr),
}

impl DecapError {
    /// Index into [`DecapStats::dropped`].
    pub fn index(self) -> usize {
        match self {
            DecapError::OuterTruncated => 0,
            DecapError::OuterMalformed => 1,
            DecapError::OuterChecksum => 2,
            DecapError::NotIpip(_) => 3,
            DecapError::Fragment => 4,
            DecapError::SourceNotAllowed(_) => 5,
            DecapError::InnerMalformed => 6,
            DecapError::InnerChecksum => 7,
            DecapError::DestinationNotAllowed(_) => 8,
        }
    }
}

/// Number of drop reasons.
pub const DROP_REASONS: usize = 9;

/// Counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapStats {
    pub decapsulated: u64,
    /// Indexed by [`DecapError::index`].
    pub dropped: [u64; DROP_REASONS],
}

/// Which outer sources and inner destinations are accepted; an empty list accepts any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapPolicy {
    pub allowed_sources: Vec<Ipv4Addr>,
    pub allowed_destinations: Vec<Ipv4Addr>,
}

/// The decapsulator: a policy and counters.
#[derive(Clone, Debug, Default)]
pub struct Decapsulator {
    policy: DecapPolicy,
    stats: DecapStats,
}

impl Decapsulator {
    /// A decapsulator enforcing `policy`.
    pub fn new(policy: DecapPolicy) -> Self {
        Decapsulator { policy, stats: DecapStats::default() }
    }

    /// Counters so far.
    pub fn stats(&self) -> &DecapStats {
        &self.stats
    }

    /// The inner packet of `outer`, or the reason it is dropped (also counted).
    pub fn decapsulate<'a>(&mut self, outer: &'a [u8]) -> Result<&'a [u8], DecapError> {
        match self.check(outer) {
            Ok(inner) => {
                self.stats.decapsulated += 1;
                Ok(inner)
            }
            Err(e) => {
                self.stats.dropped[e.index()] += 1;
                Err(e)
            }
        }
    }

    fn check<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], DecapError> {
        if packet.len() < 20 {
            return Err(DecapError::OuterTruncated);
        }
        let outer = ipv4_header(packet).ok_or(DecapError::OuterMalformed)?;
        if checksum(&packet[..outer.header_len]) != 0 {
            return Err(DecapError::OuterChecksum);
        }
        if packet[9] != IPPROTO_IPIP {
            return Err(DecapError::NotIpip(packet[9]));
        }
        let frag = u16::from_be_bytes([packet[6], packet[7]]);
        if frag & 0x3fff != 0 {
            return Err(DecapError::Fragment);
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        if !allowed(&self.policy.allowed_sources, src) {
            return Err(DecapError::SourceNotAllowed(src));
        }
        let rest = &packet[outer.header_len..outer.total_len];
        let inner = ipv4_header(rest).ok_or(DecapError::InnerMalformed)?;
        if checksum(&rest[..inner.header_len]) != 0 {
            return Err(DecapError::InnerChecksum);
        }
        let dst = Ipv4Addr::new(rest[16], rest[17], rest[18], rest[19]);
        if !allowed(&self.policy.allowed_destinations, dst) {
            return Err(DecapError::DestinationNotAllowed(dst));
        }
        Ok(&rest[..inner.total_len])
    }
}

fn allowed(list: &[Ipv4Addr], a: Ipv4Addr) -> bool {
    list.is_empty() || list.contains(&a)
}

struct Header {
    header_len: usize,
    total_len: usize,
}

/// Version 4, `20 <= IHL*4 <= total length <= buffer`.
fn ipv4_header(p: &[u8]) -> Option<Header> {
    let first = *p.first()?;
    if first >> 4 != 4 || p.len() < 20 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    (header_len >= 20 && header_len <= total_len && total_len <= p.len())
        .then_some(Header { header_len, total_len })
}

/// The Internet checksum of `data` (0 when a header with its checksum field is valid).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an IPv4 header (no options) for tests and for the ATM-side encapsulator's tests.
pub fn ipv4_header_bytes(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> [u8; 20] {
    let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // don't fragment
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

    fn inner(payload: &[u8]) -> Vec<u8> {
        let mut p = ipv4_header_bytes(CLIENT, VIP, 6, payload.len()).to_vec();
        p.extend_from_slice(payload);
        p
    }

    fn outer(inner: &[u8]) -> Vec<u8> {
        let mut p = ipv4_header_bytes(ATM, NODE, IPPROTO_IPIP, inner.len()).to_vec();
        p.extend_from_slice(inner);
        p
    }

    #[test]
    fn round_trip() {
        let i = inner(b"hello");
        let mut o = outer(&i);
        o.extend_from_slice(&[0xee; 3]); // link-layer padding after the outer total length
        let mut d =
            Decapsulator::new(DecapPolicy { allowed_sources: vec![ATM], allowed_destinations: vec![VIP] });
        assert_eq!(d.decapsulate(&o), Ok(&i[..]));
        assert_eq!(d.stats().decapsulated, 1);
    }

    #[test]
    fn drops_are_counted() {
        let i = inner(b"x");
        let mut d =
            Decapsulator::new(DecapPolicy { allowed_sources: vec![ATM], allowed_destinations: vec![VIP] });
        let mut bad_sum = outer(&i);
        bad_sum[10] ^= 1;
        let mut frag = outer(&i);
        frag[6] = 0x20; // more fragments
        let c = checksum(&{
            let mut h = frag[..20].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        frag[10..12].copy_from_slice(&c.to_be_bytes());
        let mut bad_inner = outer(&i);
        bad_inner[20 + 10] ^= 1;
        let mut not_ipip = ipv4_header_bytes(ATM, NODE, 17, i.len()).to_vec();
        not_ipip.extend_from_slice(&i);
        let mut wrong_src = ipv4_header_bytes(CLIENT, NODE, 4, i.len()).to_vec();
        wrong_src.extend_from_slice(&i);
        let mut to_other = ipv4_header_bytes(CLIENT, ATM, 6, 1).to_vec();
        to_other.push(0);
        let cases: [(&[u8], DecapError); 8] = [
            (&[0x45; 10], DecapError::OuterTruncated),
            (&bad_sum, DecapError::OuterChecksum),
            (&frag, DecapError::Fragment),
            (&bad_inner, DecapError::InnerChecksum),
            (&not_ipip, DecapError::NotIpip(17)),
            (&wrong_src, DecapError::SourceNotAllowed(CLIENT)),
            (&outer(&to_other), DecapError::DestinationNotAllowed(ATM)),
            (&outer(&[0x45, 0, 0, 40]), DecapError::InnerMalformed),
        ];
        for (p, e) in cases {
            assert_eq!(d.decapsulate(p), Err(e));
        }
        assert_eq!(d.stats().decapsulated, 0);
        assert_eq!(d.stats().dropped.iter().sum::<u64>(), 8);
        assert_eq!(d.stats().dropped[DecapError::Fragment.index()], 1);
    }

    #[test]
    fn checksum_of_valid_header_is_zero() {
        assert_eq!(checksum(&ipv4_header_bytes(ATM, NODE, 4, 100)), 0);
    }
}
