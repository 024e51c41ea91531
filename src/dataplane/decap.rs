//! Node-side decapsulation of the four tunnels an ATM makes (RFC 2003 IP-in-IP, RFC 2473
//! IPv6-in-IPv6, and the cross-family IPv4-in-IPv6 and IPv6-in-IPv4 of RFC 2473 / RFC 4213),
//! sans-IO.
//!
//! In tunnel mode the primary ATM wraps each client packet in an outer header addressed to
//! the real server: outer family = the server's address family, inner = the VIP's. A node
//! whose kernel has the `ipip` module lets the kernel decapsulate IPv4-in-IPv4; this kernel
//! (and many containers) has neither `ipip` nor `ip6_tunnel` nor `sit`, so the node's daemon
//! reads the outer packets from raw sockets (one per outer family and inner protocol it
//! needs), calls [`Decapsulator::decapsulate`] (IPv4 outer: the raw socket returns the
//! outer header) or [`Decapsulator::decapsulate6`] (IPv6 outer: a raw IPv6 socket returns
//! only the payload, the source comes with it), and writes the inner packet to a TUN device:
//! the node's stack then delivers it to the VIP configured on its loopback, and the server
//! answers the client directly.
//!
//! ## Contract
//!
//! * Output: the inner packet, a sub-slice of the input (no copy), trimmed to the inner
//!   header's length. Everything else is an error value, counted in [`DecapStats`] and
//!   dropped; nothing is logged per packet.
//! * Headers are validated (version, header length, total or payload length, IPv4 header
//!   checksums); the inner version must be the one the outer protocol number says. Outer
//!   IPv4 fragments are refused (the kernel reassembles before a raw socket sees a packet,
//!   so a fragment here is malformed). Because a decapsulator that injects whatever it is
//!   given into the local stack is a spoofing relay, the outer source can be restricted to
//!   the ATMs' addresses and the inner destination to the VIPs ([`DecapPolicy`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of IP-in-IP (an IPv4 packet inside).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of an IPv6 packet inside (IPv6-in-IPv4 and IPv6-in-IPv6).
pub const IPPROTO_IPV6: u8 = 41;

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    #[error("decap: outer packet shorter than an IPv4 header")]
    OuterTruncated,
    #[error("decap: outer packet is not IPv4, or has a bad header or total length")]
    OuterMalformed,
    #[error("decap: outer header checksum is wrong")]
    OuterChecksum,
    #[error("decap: outer protocol {0} is not IP-in-IP (4) or IPv6-in-IP (41)")]
    NotIpip(u8),
    #[error("decap: outer packet is a fragment")]
    Fragment,
    #[error("decap: outer source {0} is not an allowed ATM")]
    SourceNotAllowed(IpAddr),
    #[error(
        "decap: inner packet is not of the family the outer protocol says, or has a bad header or length"
    )]
    InnerMalformed,
    #[error("decap: inner header checksum is wrong")]
    InnerChecksum,
    #[error("decap: inner destination {0} is not a VIP of this node")]
    DestinationNotAllowed(IpAddr),
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

impl DecapStats {
    /// Adds `other`'s counts (one decapsulator per raw socket, reported together).
    pub fn add(&mut self, other: &DecapStats) {
        self.decapsulated += other.decapsulated;
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
    }
}

/// One kind of tunnel a node receives: the outer header's family and the inner packet's
/// (which the outer protocol number names: 4 for IPv4, 41 for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunnelKind {
    pub outer_v6: bool,
    pub inner_v6: bool,
}

impl TunnelKind {
    /// The outer protocol number (next header) of this kind.
    pub fn protocol(self) -> u8 {
        if self.inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP }
    }

    /// `4in4`, `6in6`, `4in6`, `6in4` (for logs).
    pub fn name(self) -> &'static str {
        match (self.inner_v6, self.outer_v6) {
            (false, false) => "4in4",
            (true, true) => "6in6",
            (false, true) => "4in6",
            (true, false) => "6in4",
        }
    }
}

/// Which tunnels are received, which outer sources and inner destinations are accepted. A
/// source is checked against the listed addresses of its own family; none of that family
/// accepts any (an IPv4-addressed cluster tunnels over IPv6 from each ATM's first global
/// IPv6 address, which the config does not name). An empty destination list accepts any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapPolicy {
    /// Deduplicated, sorted.
    pub kinds: Vec<TunnelKind>,
    pub allowed_sources: Vec<IpAddr>,
    pub allowed_destinations: Vec<IpAddr>,
}

impl DecapPolicy {
    /// Whether IPv6 outer sources go unchecked (no ATM address is IPv6) while a kind with an
    /// IPv6 outer header is received: worth a warning at start-up.
    pub fn unchecked_v6_sources(&self) -> bool {
        self.kinds.iter().any(|k| k.outer_v6) && !self.allowed_sources.iter().any(IpAddr::is_ipv6)
    }
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

    /// The inner packet of the IPv4 packet `outer` (header included, as a raw IPv4 socket
    /// returns it), or the reason it is dropped (also counted).
    pub fn decapsulate<'a>(&mut self, outer: &'a [u8]) -> Result<&'a [u8], DecapError> {
        let r = self.check(outer);
        self.count(r)
    }

    /// The inner packet carried by an IPv6 packet from `src` with next header `next` whose
    /// payload (after any extension headers) is `payload`, as a raw IPv6 socket returns it.
    pub fn decapsulate6<'a>(
        &mut self,
        src: Ipv6Addr,
        next: u8,
        payload: &'a [u8],
    ) -> Result<&'a [u8], DecapError> {
        let r = self.check6(src, next, payload);
        self.count(r)
    }

    fn count<'a>(&mut self, r: Result<&'a [u8], DecapError>) -> Result<&'a [u8], DecapError> {
        match r {
            Ok(_) => self.stats.decapsulated += 1,
            Err(e) => self.stats.dropped[e.index()] += 1,
        }
        r
    }

    fn check<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], DecapError> {
        if packet.len() < 20 {
            return Err(DecapError::OuterTruncated);
        }
        let outer = ipv4_header(packet).ok_or(DecapError::OuterMalformed)?;
        if checksum(&packet[..outer.header_len]) != 0 {
            return Err(DecapError::OuterChecksum);
        }
        let proto = packet[9];
        if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 {
            return Err(DecapError::NotIpip(proto));
        }
        let frag = u16::from_be_bytes([packet[6], packet[7]]);
        if frag & 0x3fff != 0 {
            return Err(DecapError::Fragment);
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        self.source(IpAddr::V4(src))?;
        self.inner(proto, &packet[outer.header_len..outer.total_len])
    }

    fn check6<'a>(&self, src: Ipv6Addr, next: u8, payload: &'a [u8]) -> Result<&'a [u8], DecapError> {
        if next != IPPROTO_IPIP && next != IPPROTO_IPV6 {
            return Err(DecapError::NotIpip(next));
        }
        self.source(IpAddr::V6(src))?;
        self.inner(next, payload)
    }

    fn source(&self, src: IpAddr) -> Result<(), DecapError> {
        let mut same = self.policy.allowed_sources.iter().filter(|a| a.is_ipv4() == src.is_ipv4()).peekable();
        if same.peek().is_none() || same.any(|a| *a == src) {
            Ok(())
        } else {
            Err(DecapError::SourceNotAllowed(src))
        }
    }

    /// The inner packet `rest` of outer protocol `proto`, validated and trimmed.
    fn inner<'a>(&self, proto: u8, rest: &'a [u8]) -> Result<&'a [u8], DecapError> {
        let (dst, len) = if proto == IPPROTO_IPIP {
            let inner = ipv4_header(rest).ok_or(DecapError::InnerMalformed)?;
            if checksum(&rest[..inner.header_len]) != 0 {
                return Err(DecapError::InnerChecksum);
            }
            (IpAddr::V4(Ipv4Addr::new(rest[16], rest[17], rest[18], rest[19])), inner.total_len)
        } else {
            let len = ipv6_len(rest).ok_or(DecapError::InnerMalformed)?;
            let octets: [u8; 16] = rest[24..40].try_into().map_err(|_| DecapError::InnerMalformed)?;
            (IpAddr::V6(Ipv6Addr::from(octets)), len)
        };
        if !self.policy.allowed_destinations.is_empty() && !self.policy.allowed_destinations.contains(&dst) {
            return Err(DecapError::DestinationNotAllowed(dst));
        }
        Ok(&rest[..len])
    }
}

/// The length of the IPv6 packet at the start of `p` (version 6, header and payload within
/// `p`; a jumbogram's zero payload length is refused: no tunnel carries one).
fn ipv6_len(p: &[u8]) -> Option<usize> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let total = 40 + plen;
    (plen > 0 && total <= p.len()).then_some(total)
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
        let mut d = Decapsulator::new(DecapPolicy {
            allowed_sources: vec![ATM.into()],
            allowed_destinations: vec![VIP.into()],
            ..DecapPolicy::default()
        });
        assert_eq!(d.decapsulate(&o), Ok(&i[..]));
        assert_eq!(d.stats().decapsulated, 1);
    }

    #[test]
    fn drops_are_counted() {
        let i = inner(b"x");
        let mut d = Decapsulator::new(DecapPolicy {
            allowed_sources: vec![ATM.into()],
            allowed_destinations: vec![VIP.into()],
            ..DecapPolicy::default()
        });
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
            (&wrong_src, DecapError::SourceNotAllowed(CLIENT.into())),
            (&outer(&to_other), DecapError::DestinationNotAllowed(ATM.into())),
            (&outer(&[0x45, 0, 0, 40]), DecapError::InnerMalformed),
        ];
        for (p, e) in cases {
            assert_eq!(d.decapsulate(p), Err(e));
        }
        assert_eq!(d.stats().decapsulated, 0);
        assert_eq!(d.stats().dropped.iter().sum::<u64>(), 8);
        assert_eq!(d.stats().dropped[DecapError::Fragment.index()], 1);
    }

    const ATM6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);

    /// An IPv6 packet from 2001:db8::7 to `dst` with `payload` (next header TCP).
    fn inner6(dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[6, 64]);
        p.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn policy() -> DecapPolicy {
        DecapPolicy {
            kinds: Vec::new(),
            allowed_sources: vec![ATM.into(), ATM6.into()],
            allowed_destinations: vec![VIP.into(), VIP6.into()],
        }
    }

    #[test]
    fn every_family_pair_decapsulates() {
        let mut d = Decapsulator::new(policy());
        // 6in6 and 4in6: a raw IPv6 socket gives the payload; trailing bytes are trimmed.
        let i6 = inner6(VIP6, b"hello");
        let mut padded = i6.clone();
        padded.push(0xee);
        assert_eq!(d.decapsulate6(ATM6, IPPROTO_IPV6, &padded), Ok(&i6[..]));
        let i4 = inner(b"hi");
        assert_eq!(d.decapsulate6(ATM6, IPPROTO_IPIP, &i4), Ok(&i4[..]));
        // 6in4: the outer IPv4 header says 41.
        let mut o = ipv4_header_bytes(ATM, NODE, IPPROTO_IPV6, i6.len()).to_vec();
        o.extend_from_slice(&i6);
        assert_eq!(d.decapsulate(&o), Ok(&i6[..]));
        assert_eq!(d.stats().decapsulated, 3);
    }

    #[test]
    fn ipv6_drops_are_counted() {
        let mut d = Decapsulator::new(policy());
        let other = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x55);
        let i6 = inner6(VIP6, b"x");
        // An IPv4 packet where the protocol says IPv6, and the reverse.
        assert_eq!(d.decapsulate6(ATM6, IPPROTO_IPV6, &inner(b"x")), Err(DecapError::InnerMalformed));
        assert_eq!(d.decapsulate6(ATM6, IPPROTO_IPIP, &i6), Err(DecapError::InnerMalformed));
        assert_eq!(
            d.decapsulate6(ATM6, IPPROTO_IPV6, &i6[..40]),
            Err(DecapError::InnerMalformed),
            "truncated"
        );
        assert_eq!(d.decapsulate6(ATM6, 17, &i6), Err(DecapError::NotIpip(17)));
        assert_eq!(d.decapsulate6(other, IPPROTO_IPV6, &i6), Err(DecapError::SourceNotAllowed(other.into())));
        let to_other = inner6(other, b"x");
        assert_eq!(
            d.decapsulate6(ATM6, IPPROTO_IPV6, &to_other),
            Err(DecapError::DestinationNotAllowed(other.into()))
        );
        assert_eq!(d.stats().dropped.iter().sum::<u64>(), 6);
        assert_eq!(d.stats().decapsulated, 0);
    }

    #[test]
    fn a_family_without_listed_sources_accepts_any_source_of_it() {
        let p = DecapPolicy {
            kinds: vec![TunnelKind { outer_v6: true, inner_v6: true }],
            allowed_sources: vec![ATM.into()],
            allowed_destinations: vec![VIP6.into()],
        };
        assert!(p.unchecked_v6_sources());
        let mut d = Decapsulator::new(p);
        let i6 = inner6(VIP6, b"x");
        assert_eq!(d.decapsulate6(ATM6, IPPROTO_IPV6, &i6), Ok(&i6[..]));
        // IPv4 sources are still checked.
        let mut o = ipv4_header_bytes(CLIENT, NODE, IPPROTO_IPV6, i6.len()).to_vec();
        o.extend_from_slice(&i6);
        assert_eq!(d.decapsulate(&o), Err(DecapError::SourceNotAllowed(CLIENT.into())));
        assert!(!policy().unchecked_v6_sources());
    }

    #[test]
    fn checksum_of_valid_header_is_zero() {
        assert_eq!(checksum(&ipv4_header_bytes(ATM, NODE, 4, 100)), 0);
    }
}
