//! The lab's address families: which families a scenario's service speaks
//! (`topology.ip`), and the IPv6 half of the address plan.
//!
//! Every host keeps its IPv4 addresses whatever the family (the ATMs' heartbeats, sync and
//! admin channel stay on IPv4, as in a dual-stack LAN); with `ipv6` or `dual` each interface
//! also gets the IPv6 twin of its IPv4 address: `10.0.S.H` → `fd00:c5:S::H`, where the
//! decimal digits of `H` are written as hex digits (`10.0.0.101` → `fd00:c5::101`), so an
//! address reads the same in both families in logs and captures. The subnets are /64 on the
//! same bridges. Addresses are added without duplicate-address detection (`nodad`, and
//! `accept_dad=0` for the link-local ones): the lab's links are usable at once, as the
//! daemon's NDP ownership needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clustersim::scenario::IpFamily;

use crate::topology::{GATEWAY_VIP, OTHER_VIP, VIP};

/// Prefix length of the lab's IPv6 subnets.
pub const PREFIX6: u8 = 64;

/// The IPv6 twin of a lab IPv4 address (see the module docs).
pub fn v6_of(a: Ipv4Addr) -> Ipv6Addr {
    let [_, _, subnet, host] = a.octets();
    let digits = |n: u8| u16::from_str_radix(&n.to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0xfd00, 0xc5, digits(subnet), 0, 0, 0, 0, digits(host))
}

pub fn vip6() -> Ipv6Addr {
    v6_of(VIP)
}

pub fn other_vip6() -> Ipv6Addr {
    v6_of(OTHER_VIP)
}

pub fn gateway_vip6() -> Ipv6Addr {
    v6_of(GATEWAY_VIP)
}

/// One family of a service: what the clients load and measure separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The name used in labels, report keys and service names (`""` / `"6"`).
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "",
            Family::V6 => "6",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// The cluster's VIP in this family.
    pub fn vip(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(VIP),
            Family::V6 => IpAddr::V6(vip6()),
        }
    }

    /// A host's address in this family, from its IPv4 address.
    pub fn addr(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => IpAddr::V6(v6_of(v4)),
        }
    }
}

/// The service families of `ip`, IPv4 first.
pub fn families(ip: IpFamily) -> Vec<Family> {
    match ip {
        IpFamily::Ipv4 => vec![Family::V4],
        IpFamily::Ipv6 => vec![Family::V6],
        IpFamily::Dual => vec![Family::V4, Family::V6],
    }
}

/// The family client number `n` (1-based) uses, as in the simulator: a dual-stack
/// scenario's clients alternate, client1 IPv4, client2 IPv6, client3 IPv4...
pub fn of_client(ip: IpFamily, n: u32) -> Family {
    match ip {
        IpFamily::Ipv4 => Family::V4,
        IpFamily::Ipv6 => Family::V6,
        IpFamily::Dual if n % 2 == 1 => Family::V4,
        IpFamily::Dual => Family::V6,
    }
}

/// Whether the lab's hosts get IPv6 addresses.
pub fn has_v6(ip: IpFamily) -> bool {
    ip != IpFamily::Ipv4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_twins_read_like_their_ipv4_addresses() {
        assert_eq!(v6_of(Ipv4Addr::new(10, 0, 0, 101)), "fd00:c5::101".parse::<Ipv6Addr>().expect("v6"));
        assert_eq!(vip6(), "fd00:c5::99".parse::<Ipv6Addr>().expect("v6"));
        assert_eq!(gateway_vip6(), "fd00:c5:1::254".parse::<Ipv6Addr>().expect("v6"));
        assert_ne!(v6_of(Ipv4Addr::new(10, 0, 0, 25)), v6_of(Ipv4Addr::new(10, 0, 0, 205)));
        assert_eq!(families(IpFamily::Dual), vec![Family::V4, Family::V6]);
        let dual: Vec<Family> = (1..=3).map(|n| of_client(IpFamily::Dual, n)).collect();
        assert_eq!(dual, vec![Family::V4, Family::V6, Family::V4]);
    }
}
