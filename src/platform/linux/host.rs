//! What the host looks like: its interfaces' IPv4 and IPv6 addresses (rtnetlink dumps), from
//! which the daemon works out its role, its broadcast address and where to answer ARP/NDP.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;

/// One IPv4 or IPv6 address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub iface: String,
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IfAddr {
    /// The subnet's broadcast address (`None` for /31, /32 and IPv6, which has none).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        let IpAddr::V4(a) = self.addr else { return None };
        if self.prefix_len >= 31 {
            return None;
        }
        let host_mask = u32::MAX >> self.prefix_len;
        Some(Ipv4Addr::from(u32::from(a) | host_mask))
    }

    /// Whether `ip` is in this address's subnet (never, across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let p = u32::from(self.prefix_len.min(32));
                let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let p = u32::from(self.prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                a.to_bits() & mask == b.to_bits() & mask
            }
            _ => false,
        }
    }
}

/// The address of `m` (IFA_LOCAL before IFA_ADDRESS: on a point-to-point link the latter is
/// the peer's).
fn addr_of(m: &AddressMessage) -> Option<IpAddr> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(v) => local = Some(*v),
            AddressAttribute::Address(v) => address = Some(*v),
            _ => {}
        }
    }
    local.or(address)
}

/// Every IPv4 and IPv6 address of every interface, in kernel order.
pub async fn addresses(handle: &Handle) -> Result<Vec<IfAddr>, rtnetlink::Error> {
    let links: Vec<_> = handle.link().get().execute().try_collect().await?;
    let name_mac = |index: u32| {
        links.iter().find(|l| l.header.index == index).map(|l| {
            let mut name = String::new();
            let mut mac = None;
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Address(m) => mac = <[u8; 6]>::try_from(&m[..]).ok(),
                    _ => {}
                }
            }
            (name, mac)
        })
    };
    let msgs: Vec<AddressMessage> = handle.address().get().execute().try_collect().await?;
    let mut out = Vec::new();
    for m in msgs {
        let Some(addr) = addr_of(&m) else { continue };
        let (iface, mac) = name_mac(m.header.index).unwrap_or_default();
        out.push(IfAddr { iface, index: m.header.index, mac, addr, prefix_len: m.header.prefix_len });
    }
    Ok(out)
}

/// Removes `ip` from interface `index` if it is configured there as a local address (a VIP
/// left by an older daemon or by hand would make the kernel answer ARP for it). Returns
/// whether something was removed.
pub async fn remove_address(handle: &Handle, index: u32, ip: IpAddr) -> Result<bool, rtnetlink::Error> {
    let msgs: Vec<AddressMessage> =
        handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
    let mut removed = false;
    for m in msgs {
        if m.header.index == index && addr_of(&m) == Some(ip) {
            handle.address().del(m).execute().await?;
            removed = true;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(addr: [u8; 4], prefix_len: u8) -> IfAddr {
        IfAddr { iface: "eth0".into(), index: 2, mac: None, addr: Ipv4Addr::from(addr).into(), prefix_len }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn broadcast_and_contains() {
        assert_eq!(a([10, 0, 0, 1], 24).broadcast(), Some(Ipv4Addr::new(10, 0, 0, 255)));
        assert_eq!(a([10, 0, 1, 7], 22).broadcast(), Some(Ipv4Addr::new(10, 0, 3, 255)));
        assert_eq!(a([10, 0, 0, 1], 32).broadcast(), None);
        assert!(a([10, 0, 0, 1], 24).contains(ip("10.0.0.99")));
        assert!(!a([10, 0, 0, 1], 24).contains(ip("10.0.1.99")));
        assert!(a([10, 0, 0, 1], 0).contains(ip("192.168.1.1")));
        assert!(a([10, 0, 0, 1], 32).contains(ip("10.0.0.1")));
        assert!(!a([10, 0, 0, 1], 0).contains(ip("::1")));
    }

    #[test]
    fn ipv6_has_no_broadcast_and_subnets_by_prefix() {
        let v6 =
            IfAddr { iface: "eth0".into(), index: 2, mac: None, addr: ip("2001:db8:1::1"), prefix_len: 64 };
        assert_eq!(v6.broadcast(), None);
        assert!(v6.contains(ip("2001:db8:1::ffff:1")));
        assert!(!v6.contains(ip("2001:db8:2::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all = IfAddr { prefix_len: 0, ..v6.clone() };
        assert!(all.contains(ip("fe80::1")));
        let one = IfAddr { prefix_len: 128, ..v6 };
        assert!(one.contains(ip("2001:db8:1::1")) && !one.contains(ip("2001:db8:1::2")));
    }
}
