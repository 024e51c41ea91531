//! What the host looks like: its interfaces' IPv4 addresses (rtnetlink dumps), from which
//! the daemon works out its role, its broadcast address and where to answer ARP.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;

/// One IPv4 address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub iface: String,
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl IfAddr {
    /// The subnet's broadcast address (`None` for /31 and /32).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        if self.prefix_len >= 31 {
            return None;
        }
        let host_mask = u32::MAX >> self.prefix_len;
        Some(Ipv4Addr::from(u32::from(self.addr) | host_mask))
    }

    /// Whether `ip` is in this address's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len)) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

fn v4_of(m: &AddressMessage) -> Option<Ipv4Addr> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(std::net::IpAddr::V4(v)) => local = Some(*v),
            AddressAttribute::Address(std::net::IpAddr::V4(v)) => address = Some(*v),
            _ => {}
        }
    }
    local.or(address)
}

/// Every IPv4 address of every interface, in kernel order.
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
        let Some(addr) = v4_of(&m) else { continue };
        let (iface, mac) = name_mac(m.header.index).unwrap_or_default();
        out.push(IfAddr { iface, index: m.header.index, mac, addr, prefix_len: m.header.prefix_len });
    }
    Ok(out)
}

/// Removes `ip` from interface `index` if it is configured there as a local address (a VIP
/// left by an older daemon or by hand would make the kernel answer ARP for it). Returns
/// whether something was removed.
pub async fn remove_address(handle: &Handle, index: u32, ip: Ipv4Addr) -> Result<bool, rtnetlink::Error> {
    let msgs: Vec<AddressMessage> =
        handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
    let mut removed = false;
    for m in msgs {
        if m.header.index == index && v4_of(&m) == Some(ip) {
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
        IfAddr { iface: "eth0".into(), index: 2, mac: None, addr: addr.into(), prefix_len }
    }

    #[test]
    fn broadcast_and_contains() {
        assert_eq!(a([10, 0, 0, 1], 24).broadcast(), Some(Ipv4Addr::new(10, 0, 0, 255)));
        assert_eq!(a([10, 0, 1, 7], 22).broadcast(), Some(Ipv4Addr::new(10, 0, 3, 255)));
        assert_eq!(a([10, 0, 0, 1], 32).broadcast(), None);
        assert!(a([10, 0, 0, 1], 24).contains(Ipv4Addr::new(10, 0, 0, 99)));
        assert!(!a([10, 0, 0, 1], 24).contains(Ipv4Addr::new(10, 0, 1, 99)));
        assert!(a([10, 0, 0, 1], 0).contains(Ipv4Addr::new(192, 168, 1, 1)));
    }
}
