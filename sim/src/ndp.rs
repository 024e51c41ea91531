//! Neighbor Discovery on the simulated LAN, beside the ARP exchange: real NDP frames, built
//! and parsed by the daemon's codec ([`clusterserver::dataplane::wire::ndp`]), carried as
//! turmoil datagrams on [`NDP_PORT`].
//!
//! A host's MAC is `02:00` followed by its turmoil (IPv4) address, which stands for its
//! link-layer address; a frame to a multicast MAC (the solicited-node group, all nodes) is
//! broadcast on the LAN. Each host's kernel ([`crate::kernel`]) answers solicitations for
//! the VIPs it holds (only the primary holds them, as the daemon answers only while primary;
//! DR and tunnel servers, whose VIP sits on `lo`, never answer), and applies the
//! advertisements it receives to its neighbour cache by Linux's rules ([`crate::nud`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clusterserver::dataplane::wire::ndp;

use crate::net::{BROADCAST, SimSocket};
use crate::nud::{NaFlags, Update};
use crate::world::Shared;

/// Port of the simulated ICMPv6 Neighbor Discovery exchange.
pub const NDP_PORT: u16 = 3;
const ICMPV6: u8 = 58;

/// The simulated MAC of the host at LAN address `link`.
pub fn mac_of(link: IpAddr) -> [u8; 6] {
    match link {
        IpAddr::V4(a) => {
            let o = a.octets();
            [2, 0, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(_) => [2, 0, 0, 0, 0, 0],
    }
}

/// The LAN address behind a simulated unicast MAC (`None` for multicast).
pub fn link_of_mac(mac: [u8; 6]) -> Option<IpAddr> {
    (mac[0] == 2 && mac[1] == 0).then(|| IpAddr::V4(Ipv4Addr::new(mac[2], mac[3], mac[4], mac[5])))
}

/// A Neighbor Advertisement as read from a frame: target, the target link-layer address
/// option (else the frame's source MAC), flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertisement {
    pub target: Ipv6Addr,
    pub lladdr: [u8; 6],
    pub flags: NaFlags,
}

/// Parses an Ethernet frame holding a Neighbor Advertisement (hop limit 255, as RFC 4861
/// 7.1.2 requires); anything else is `None`.
pub fn parse_advertisement(frame: &[u8]) -> Option<Advertisement> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x86, 0xDD]
        || ip.len() < 40
        || ip[0] >> 4 != 6
        || ip[6] != ICMPV6
        || ip[7] != 255
    {
        return None;
    }
    let msg = ip.get(40..)?;
    if msg.len() < 24 || msg[0] != ndp::NEIGHBOR_ADVERTISEMENT || msg[1] != 0 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&msg[8..24]).ok()?);
    let mut lladdr = <[u8; 6]>::try_from(&frame[6..12]).ok()?;
    let mut opts = &msg[24..];
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == 2 && len == 8 {
            lladdr.copy_from_slice(&opts[2..8]);
        }
        opts = &opts[len..];
    }
    let flags = NaFlags { solicited: msg[4] & 0x40 != 0, override_: msg[4] & 0x20 != 0 };
    Some(Advertisement { target, lladdr, flags })
}

/// Where a frame goes on the LAN: the host of its destination MAC, or everyone.
fn destination(frame: &[u8]) -> IpAddr {
    frame.get(0..6).and_then(|m| <[u8; 6]>::try_from(m).ok()).and_then(link_of_mac).unwrap_or(BROADCAST)
}

/// Sends a frame on the LAN.
pub async fn send(sock: &SimSocket, frame: &[u8]) {
    let _ = sock.send(frame, SocketAddr::new(destination(frame), NDP_PORT)).await;
}

/// A solicitation for `target` from host `name`: multicast (resolution), or unicast to the
/// cached address `to` (PROBE).
pub fn solicitation(world: &Shared, name: &str, target: Ipv6Addr, to: Option<IpAddr>) -> Option<Vec<u8>> {
    let w = world.borrow();
    let h = w.hosts.get(name)?;
    let (link, me) = (h.addr?, h.addr6?);
    let mut f = ndp::solicitation(mac_of(link), me, target);
    if let Some(to) = to {
        f[0..6].copy_from_slice(&mac_of(to));
    }
    Some(f)
}

/// An unsolicited advertisement (Override) of `vip` at host `link`: IPv6's gratuitous ARP.
pub fn unsolicited(link: IpAddr, vip: Ipv6Addr) -> [u8; ndp::NA_FRAME_LEN] {
    ndp::unsolicited(mac_of(link), vip)
}

/// The kernel's handling of one NDP frame received by host `name`: the answer to send, if
/// it is a solicitation for a VIP the host holds; an advertisement goes to the cache.
pub fn on_frame(world: &Shared, name: &str, ms: u64, frame: &[u8]) -> Option<[u8; ndp::NA_FRAME_LEN]> {
    if let Some(ns) = ndp::parse_solicitation(frame) {
        let mut w = world.borrow_mut();
        let h = w.host(name);
        if !h.vips.contains(&IpAddr::V6(ns.target)) {
            return None;
        }
        return Some(ndp::answer(mac_of(h.addr?), &ns));
    }
    let na = parse_advertisement(frame)?;
    let from = link_of_mac(na.lladdr)?;
    let mut w = world.borrow_mut();
    let owner = w.name_of(from);
    let vip = na.target;
    let exists = w.hosts.get(name).and_then(|h| h.nd.as_ref()).is_some_and(|t| t.get(&vip).is_some());
    let h = w.host(name);
    if !na.flags.solicited && exists && h.miss_garp > 0 {
        h.miss_garp -= 1;
        w.log(ms, name, format!("nd {vip}: missed an unsolicited NA from {owner}"));
        return None;
    }
    let how = if na.flags.solicited { "solicited NA" } else { "unsolicited NA" };
    if let Update::Changed { .. } = w.nd(name).on_advertisement(ms, vip, from, na.flags) {
        w.log(ms, name, format!("nd {vip} -> {owner} ({how})"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);

    #[test]
    fn the_daemons_advertisements_parse_with_their_flags_and_address() {
        let link = IpAddr::from([192, 168, 0, 3]);
        let na = parse_advertisement(&unsolicited(link, VIP)).expect("NA");
        assert_eq!(na.target, VIP);
        assert_eq!(link_of_mac(na.lladdr), Some(link));
        assert_eq!(na.flags, NaFlags { solicited: false, override_: true });
        let me: Ipv6Addr = "fd00::c0a8:5".parse().expect("v6");
        let ns_frame = ndp::solicitation(mac_of(IpAddr::from([192, 168, 0, 5])), me, VIP);
        let ns = ndp::parse_solicitation(&ns_frame).expect("NS");
        let answer = parse_advertisement(&ndp::answer(mac_of(link), &ns)).expect("NA");
        assert_eq!(answer.flags, NaFlags { solicited: true, override_: true });
        assert_eq!(destination(&ndp::answer(mac_of(link), &ns)), IpAddr::from([192, 168, 0, 5]));
        assert_eq!(destination(&ns_frame), BROADCAST, "solicited-node multicast goes to everyone");
        assert!(parse_advertisement(&ns_frame).is_none());
    }

    /// A LAN of the primary (holding the VIP), the backup, a DR server (the VIP on its `lo`,
    /// not held by its kernel's NDP) and a client.
    fn lan() -> Shared {
        let world = crate::world::World::new(1);
        {
            let mut w = world.borrow_mut();
            for (i, n) in ["atm1", "atm2", "node1", "client1"].into_iter().enumerate() {
                let link = IpAddr::from([192, 168, 0, i as u8 + 1]);
                w.by_addr.insert(link, n.to_string());
                let h = w.host(n);
                h.addr = Some(link);
                h.addr6 = Some(crate::topology::addr6_of(link));
            }
            w.host("atm1").vips.insert(IpAddr::V6(VIP));
        }
        world
    }

    #[test]
    fn only_the_host_holding_the_vip_answers_a_solicitation() {
        let world = lan();
        let ns = solicitation(&world, "client1", VIP, None).expect("client1 has addresses");
        let answers: Vec<&str> = ["atm1", "atm2", "node1"]
            .into_iter()
            .filter(|h| on_frame(&world, h, 10, &ns).is_some())
            .collect();
        assert_eq!(answers, ["atm1"]);
        let answer = on_frame(&world, "atm1", 10, &ns).expect("answered");
        let na = parse_advertisement(&answer).expect("NA");
        assert_eq!(link_of_mac(na.lladdr), Some(IpAddr::from([192, 168, 0, 1])));
        assert!(na.flags.solicited && na.flags.override_);
        // Once the backup holds the VIP instead (promoted), it answers and the old one not.
        {
            let mut w = world.borrow_mut();
            w.host("atm1").vips.clear();
            w.host("atm2").vips.insert(IpAddr::V6(VIP));
        }
        assert!(on_frame(&world, "atm1", 20, &ns).is_none());
        assert!(on_frame(&world, "atm2", 20, &ns).is_some());
    }

    #[test]
    fn an_unsolicited_advertisement_updates_a_clients_entry_but_creates_none() {
        let world = lan();
        let atm2 = IpAddr::from([192, 168, 0, 2]);
        let na = unsolicited(atm2, VIP);
        assert!(on_frame(&world, "client1", 5, &na).is_none());
        assert!(world.borrow().hosts["client1"].owner_of(IpAddr::V6(VIP)).is_none(), "created an entry");
        // Resolved to atm1 by a solicitation and its answer ...
        let ns = solicitation(&world, "client1", VIP, None).expect("ns");
        world.borrow_mut().nd("client1").use_at(10, VIP);
        let answer = on_frame(&world, "atm1", 11, &ns).expect("answered");
        on_frame(&world, "client1", 12, &answer);
        assert_eq!(
            world.borrow().hosts["client1"].owner_of(IpAddr::V6(VIP)),
            Some(IpAddr::from([192, 168, 0, 1]))
        );
        // ... then atm2's unsolicited Override advertisement moves it, unless missed.
        world.borrow_mut().host("client1").miss_garp = 1;
        on_frame(&world, "client1", 20, &na);
        assert_eq!(
            world.borrow().hosts["client1"].owner_of(IpAddr::V6(VIP)),
            Some(IpAddr::from([192, 168, 0, 1]))
        );
        on_frame(&world, "client1", 30, &na);
        assert_eq!(world.borrow().hosts["client1"].owner_of(IpAddr::V6(VIP)), Some(atm2));
        let trace = world.borrow().trace.join("\n");
        assert!(trace.contains("client1  nd fd00::99: missed an unsolicited NA from atm2"), "{trace}");
        assert!(trace.contains("client1  nd fd00::99 -> atm2 (unsolicited NA)"), "{trace}");
    }
}
