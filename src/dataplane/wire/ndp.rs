//! Neighbor Discovery (RFC 4861) for IPv6 VIPs: parsing Neighbor Solicitations from
//! Ethernet frames and building the Neighbor Advertisements that answer them or announce a
//! VIP after a promotion (IPv6's gratuitous ARP). Pure functions over bytes: the daemon
//! sends and receives the frames on packet sockets, the simulator can use the same codec.
//!
//! A solicitation is taken only if it passes RFC 4861 section 7.1.1's checks: hop limit
//! 255 (it cannot have crossed a router), ICMPv6 code 0, a valid checksum, a target that
//! is not multicast, and, from the unspecified address (duplicate address detection), a
//! solicited-node multicast destination and no source link-layer option.
//!
//! An advertisement carries the target link-layer address option and the Override flag:
//! Linux then replaces an existing neighbour entry at once (an unsolicited one updates an
//! entry that exists and creates none; see TECH-NOTES on the neighbour cache).

use core::net::Ipv6Addr;

use super::checksum;
use super::proto;

/// ICMPv6 types.
pub const NEIGHBOR_SOLICITATION: u8 = 135;
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Ethernet + IPv6 + NA (24) + target link-layer address option (8).
pub const NA_FRAME_LEN: usize = 14 + 40 + 24 + 8;
const ETH_P_IPV6: [u8; 2] = [0x86, 0xDD];
/// All-nodes multicast (ff02::1) and its MAC.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// A Neighbor Solicitation as read from the wire (already validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Solicitation {
    /// The frame's source MAC.
    pub src_mac: [u8; 6],
    /// The IPv6 source (unspecified for duplicate address detection).
    pub src_ip: Ipv6Addr,
    pub target: Ipv6Addr,
    /// The source link-layer address option, if present.
    pub sender_lla: Option<[u8; 6]>,
}

/// The solicited-node multicast address of `a` (ff02::1:ffXX:XXXX).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + its last 32 bits).
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn icmp6_checksum_ok(src: &[u8], dst: &[u8], msg: &[u8]) -> bool {
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    s.copy_from_slice(src);
    d.copy_from_slice(dst);
    let acc = checksum::pseudo_header_v6(s, d, proto::ICMPV6, msg.len() as u32);
    checksum::fold(checksum::sum(acc, msg)) == 0xFFFF
}

/// Parses and validates a Neighbor Solicitation in an Ethernet frame; anything else
/// (another protocol, a malformed or invalid solicitation) is `None`.
pub fn parse_solicitation(frame: &[u8]) -> Option<Solicitation> {
    if frame.get(12..14)? != ETH_P_IPV6 {
        return None;
    }
    let ip = frame.get(14..)?;
    if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != proto::ICMPV6 || ip[7] != 255 {
        return None;
    }
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let msg = ip.get(40..40 + plen)?;
    if msg.len() < 24 || msg[0] != NEIGHBOR_SOLICITATION || msg[1] != 0 {
        return None;
    }
    if !icmp6_checksum_ok(&ip[8..24], &ip[24..40], msg) {
        return None;
    }
    let addr = |b: &[u8]| {
        let mut o = [0u8; 16];
        o.copy_from_slice(b);
        Ipv6Addr::from(o)
    };
    let (src_ip, dst_ip, target) = (addr(&ip[8..24]), addr(&ip[24..40]), addr(&msg[8..24]));
    if target.is_multicast() {
        return None;
    }
    // Options: type, length in units of 8 bytes (0 is invalid).
    let mut sender_lla = None;
    let mut opts = &msg[24..];
    while !opts.is_empty() {
        let len = usize::from(*opts.get(1)?) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == 1 && len == 8 {
            sender_lla = <[u8; 6]>::try_from(&opts[2..8]).ok();
        }
        opts = &opts[len..];
    }
    if src_ip.is_unspecified() && (dst_ip != solicited_node(target) || sender_lla.is_some()) {
        return None;
    }
    let src_mac = <[u8; 6]>::try_from(&frame[6..12]).ok()?;
    Some(Solicitation { src_mac, src_ip, target, sender_lla })
}

/// A Neighbor Advertisement frame for `target` at `mac` (Override set).
fn advertisement(
    dst_mac: [u8; 6],
    mac: [u8; 6],
    dst_ip: Ipv6Addr,
    target: Ipv6Addr,
    solicited: bool,
) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6);
    let ip = &mut f[14..];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip[6] = proto::ICMPV6;
    ip[7] = 255;
    // From the VIP itself: the address the advertisement is about.
    ip[8..24].copy_from_slice(&target.octets());
    ip[24..40].copy_from_slice(&dst_ip.octets());
    let m = &mut ip[40..];
    m[0] = NEIGHBOR_ADVERTISEMENT;
    m[4] = if solicited { 0x60 } else { 0x20 }; // S and O, or O alone
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // target link-layer address
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    let acc = checksum::pseudo_header_v6(target.octets(), dst_ip.octets(), proto::ICMPV6, 32);
    let c = !checksum::fold(checksum::sum(acc, &f[54..]));
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f
}

/// The answer to `ns`: to its sender (Solicited and Override), or to all nodes when it
/// came from duplicate address detection (the VIP is taken).
pub fn answer(mac: [u8; 6], ns: &Solicitation) -> [u8; NA_FRAME_LEN] {
    if ns.src_ip.is_unspecified() {
        return advertisement(ALL_NODES_MAC, mac, ALL_NODES, ns.target, false);
    }
    advertisement(ns.sender_lla.unwrap_or(ns.src_mac), mac, ns.src_ip, ns.target, true)
}

/// An unsolicited advertisement of `vip` at `mac` to all nodes (Override set): IPv6's
/// gratuitous ARP, sent on promotion.
pub fn unsolicited(mac: [u8; 6], vip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    advertisement(ALL_NODES_MAC, mac, ALL_NODES, vip, false)
}

/// A Neighbor Solicitation frame (for tests and tools): from `src_ip` at `src_mac` for
/// `target`, to its solicited-node address, with the source link-layer option unless the
/// source is unspecified.
pub fn solicitation(src_mac: [u8; 6], src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(target);
    let with_lla = !src_ip.is_unspecified();
    let mlen = if with_lla { 32 } else { 24 };
    let mut f = vec![0u8; 14 + 40 + mlen];
    f[0..6].copy_from_slice(&multicast_mac(dst));
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&(mlen as u16).to_be_bytes());
    f[20] = proto::ICMPV6;
    f[21] = 255;
    f[22..38].copy_from_slice(&src_ip.octets());
    f[38..54].copy_from_slice(&dst.octets());
    f[54] = NEIGHBOR_SOLICITATION;
    f[62..78].copy_from_slice(&target.octets());
    if with_lla {
        f[78] = 1;
        f[79] = 1;
        f[80..86].copy_from_slice(&src_mac);
    }
    let acc = checksum::pseudo_header_v6(src_ip.octets(), dst.octets(), proto::ICMPV6, mlen as u32);
    let c = !checksum::fold(checksum::sum(acc, &f[54..]));
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn a(s: &str) -> Ipv6Addr {
        s.parse().expect("ipv6")
    }

    #[test]
    fn a_solicitation_is_answered_to_its_sender_with_our_mac() {
        let ns = solicitation(PEER, a("2001:db8::5"), a("2001:db8::80"));
        let s = parse_solicitation(&ns).expect("valid");
        assert_eq!(
            s,
            Solicitation {
                src_mac: PEER,
                src_ip: a("2001:db8::5"),
                target: a("2001:db8::80"),
                sender_lla: Some(PEER)
            }
        );
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x80]);
        let na = answer(MAC, &s);
        assert_eq!(&na[0..6], &PEER);
        assert_eq!(&na[6..12], &MAC);
        assert_eq!(na[21], 255, "hop limit");
        assert_eq!(&na[38..54], &a("2001:db8::5").octets(), "to the sender");
        assert_eq!(na[54], NEIGHBOR_ADVERTISEMENT);
        assert_eq!(na[58] & 0xE0, 0x60, "solicited and override, not router");
        assert_eq!(&na[62..78], &a("2001:db8::80").octets());
        assert_eq!(&na[78..80], &[2, 1]);
        assert_eq!(&na[80..86], &MAC);
        assert!(icmp6_checksum_ok(&na[22..38], &na[38..54], &na[54..]));
        assert_eq!(parse_solicitation(&na), None, "an advertisement is not a solicitation");
    }

    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes_and_unsolicited_overrides() {
        let ns = solicitation(PEER, Ipv6Addr::UNSPECIFIED, a("2001:db8::80"));
        let s = parse_solicitation(&ns).expect("valid DAD probe");
        let na = answer(MAC, &s);
        assert_eq!(&na[0..6], &ALL_NODES_MAC);
        assert_eq!(&na[38..54], &ALL_NODES.octets());
        assert_eq!(na[58] & 0xE0, 0x20, "override only: S must be 0 to a multicast destination");
        let u = unsolicited(MAC, a("fd00::1"));
        assert_eq!((u[58] & 0xE0, &u[62..78]), (0x20, &a("fd00::1").octets()[..]));
        assert!(icmp6_checksum_ok(&u[22..38], &u[38..54], &u[54..]));
    }

    #[test]
    fn invalid_solicitations_are_refused() {
        let good = solicitation(PEER, a("2001:db8::5"), a("2001:db8::80"));
        let mut hop = good.clone();
        hop[21] = 64;
        assert_eq!(parse_solicitation(&hop), None, "routed");
        let mut sum = good.clone();
        sum[70] ^= 1;
        assert_eq!(parse_solicitation(&sum), None, "checksum");
        let mut code = good.clone();
        code[55] = 1;
        assert_eq!(parse_solicitation(&code), None, "code");
        assert_eq!(parse_solicitation(&good[..70]), None, "truncated");
        let mut zero_opt = good.clone();
        zero_opt[79] = 0;
        assert_eq!(parse_solicitation(&zero_opt), None, "zero-length option");
        let mcast = solicitation(PEER, a("2001:db8::5"), a("ff02::1"));
        assert_eq!(parse_solicitation(&mcast), None, "multicast target");
        assert_eq!(solicited_node(a("2001:db8::12:3456")), a("ff02::1:ff12:3456"));
    }

    proptest! {
        #[test]
        fn no_frame_makes_the_parser_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse_solicitation(&bytes);
            // Also with a valid-looking prefix, so the walk reaches the options.
            let mut f = solicitation(PEER, a("2001:db8::5"), a("2001:db8::80"));
            f.truncate(78);
            f.extend_from_slice(&bytes);
            let _ = parse_solicitation(&f);
        }

        #[test]
        fn every_solicitation_built_parses_back(src in any::<u128>(), target in any::<u128>(), mac in any::<[u8; 6]>()) {
            let (src, target) = (Ipv6Addr::from_bits(src), Ipv6Addr::from_bits(target));
            prop_assume!(!target.is_multicast());
            let s = parse_solicitation(&solicitation(mac, src, target)).expect("valid");
            prop_assert_eq!((s.src_ip, s.target), (src, target));
            let na = answer(MAC, &s);
            prop_assert!(icmp6_checksum_ok(&na[22..38], &na[38..54], &na[54..]));
            prop_assert_eq!(&na[62..78], &target.octets()[..]);
        }
    }
}
