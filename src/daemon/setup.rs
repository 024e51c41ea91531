//! The daemon's pure decisions at start-up: its role from the config and the host's
//! addresses, its ports, the names and ids of what it creates, and the kernel steering.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::{Config, DEFAULT_ADMIN_PORT, DEFAULT_HEARTBEAT_PORT, Forwarding};
use crate::platform::linux::host::IfAddr;
use crate::platform::linux::shell::netlink::SteerRule;
use crate::platform::linux::shell::xdp::program::MatchSet;

/// What this host is in the cluster (seed 001: "cluster node, ATM, or both").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRole {
    /// ATM number `atm` of the config; `node` too if it is also a real server.
    Atm { atm: usize, node: bool },
    /// Only a real server.
    Node,
    /// Neither: the config does not describe this host.
    None,
}

/// The role of a host whose addresses are `local`.
pub fn host_role(cfg: &Config, local: &[IpAddr]) -> HostRole {
    let node = cfg.services.iter().flat_map(|s| &s.servers).any(|s| local.contains(&s.address));
    match cfg.atms.iter().position(|a| local.contains(&a.address)) {
        Some(atm) => HostRole::Atm { atm, node },
        None if node => HostRole::Node,
        None => HostRole::None,
    }
}

/// The port of service `name`/`proto` in `/etc/services` text, if listed.
pub fn services_port(text: &str, name: &str, proto: &str) -> Option<u16> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let first = words.next()?;
        let (port, p) = words.next()?.split_once('/')?;
        let aliases: Vec<&str> = words.collect();
        ((first == name || aliases.contains(&name)) && p == proto).then(|| port.parse().ok()).flatten()
    })
}

/// Fills the ports the config leaves open: `/etc/services` (`clusterserver`/udp for
/// heartbeats, `clusterserveradm`/tcp for the admin channel), else 17100 / 17101 (seed 001).
pub fn resolve_ports(cfg: &mut Config, etc_services: &str) {
    if cfg.cluster.heartbeat_port.is_none() {
        let p = services_port(etc_services, "clusterserver", "udp").unwrap_or(DEFAULT_HEARTBEAT_PORT);
        cfg.cluster.heartbeat_port = Some(p);
    }
    if cfg.cluster.admin_port.is_none() {
        let p = services_port(etc_services, "clusterserveradm", "tcp").unwrap_or(DEFAULT_ADMIN_PORT);
        cfg.cluster.admin_port = Some(p);
    }
}

/// Names and ids of the kernel objects this daemon owns, derived from the cluster id so that
/// a restarted daemon finds the leftovers of a killed one (and two clusters on one host
/// differ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// Non-persistent TUN device, `csd<id>` (at most 15 bytes).
    pub tun_name: String,
    /// Private routing table.
    pub table_id: u32,
    /// Priority of the steering rules.
    pub rule_priority: u32,
}

pub fn owned(cfg: &Config) -> Owned {
    let short = cfg.cluster.id % 100_000;
    Owned { tun_name: format!("csd{short}"), table_id: 1_710_000 + short, rule_priority: 17_100 }
}

/// The steering rules: every service VIP (both families) into the TUN, and for NAT services
/// the replies of their servers.
pub fn steering(cfg: &Config) -> Vec<SteerRule> {
    let mut out: Vec<SteerRule> = Vec::new();
    let mut push = |r: SteerRule| {
        if !out.contains(&r) {
            out.push(r);
        }
    };
    for s in &cfg.services {
        push(SteerRule::to_vip(s.vip));
    }
    for s in cfg.services.iter().filter(|s| s.forwarding == Forwarding::Nat) {
        for srv in &s.servers {
            push(SteerRule::nat_replies(ipnet::IpNet::from(srv.address)));
        }
    }
    out
}

/// Whether `a`'s subnet (not a host address) holds `ip`: the interface to reach `ip` on.
fn on_subnet(a: &IfAddr, ip: IpAddr) -> bool {
    let host = if a.addr.is_ipv4() { 32 } else { 128 };
    a.prefix_len < host && a.contains(ip) && !a.iface.is_empty()
}

/// For every VIP, the interface that answers ARP (IPv4) or Neighbor Solicitations (IPv6)
/// for it: the one whose subnet contains it (first match), else `default_iface`.
pub fn arp_interfaces(cfg: &Config, addrs: &[IfAddr], default_iface: &str) -> BTreeMap<IpAddr, String> {
    cfg.vips()
        .into_iter()
        .map(|v| {
            let iface = addrs.iter().find(|a| on_subnet(a, v)).map_or(default_iface, |a| a.iface.as_str());
            (v, iface.to_string())
        })
        .collect()
}

/// The interface for direct-routing output: the one whose subnet holds the first DR
/// server, else the ATM's interface; `None` without DR services.
pub fn dr_interface(cfg: &Config, addrs: &[IfAddr], default_iface: &str) -> Option<String> {
    let srv =
        cfg.services.iter().filter(|s| s.forwarding == Forwarding::Dr).flat_map(|s| &s.servers).next()?;
    let found = addrs.iter().find(|x| on_subnet(x, srv.address)).map(|x| x.iface.clone());
    Some(found.unwrap_or_else(|| default_iface.to_string()))
}

/// The AF_XDP backend's interfaces: the ATM's own, every interface that answers for a VIP,
/// and every interface on whose subnet a real server is (NAT replies and direct-routing
/// frames arrive or leave there). Sorted, no duplicates, none empty.
pub fn xdp_interfaces(cfg: &Config, addrs: &[IfAddr], default_iface: &str) -> Vec<String> {
    let mut out: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    out.insert(default_iface.to_string());
    out.extend(arp_interfaces(cfg, addrs, default_iface).into_values());
    for srv in cfg.services.iter().flat_map(|s| &s.servers) {
        if let Some(a) = addrs.iter().find(|a| on_subnet(a, srv.address)) {
            out.insert(a.iface.clone());
        }
    }
    out.into_iter().filter(|i| !i.is_empty()).collect()
}

/// What the AF_XDP classifier redirects: every VIP, the NAT servers' replies (address, port,
/// protocol), and this host's own addresses left to the kernel (see
/// [`crate::platform::linux::shell::xdp::program`]).
pub fn xdp_matches(cfg: &Config, addrs: &[IfAddr]) -> MatchSet {
    use crate::config::types::Protocol;
    use crate::platform::linux::shell::xdp::program::{PROTO_TCP, PROTO_UDP};
    let mut m = MatchSet::default();
    for s in &cfg.services {
        m.vips.insert(s.vip);
        if s.forwarding == Forwarding::Nat {
            let proto = match s.protocol {
                Protocol::Tcp => PROTO_TCP,
                Protocol::Udp => PROTO_UDP,
            };
            for srv in &s.servers {
                m.replies.insert((srv.address, srv.port, proto));
            }
        }
    }
    m.local.extend(addrs.iter().map(|a| a.addr));
    // A VIP is never this host's address while the daemon runs (it removes such addresses).
    for v in &m.vips {
        m.local.remove(v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, parse_str};
    use ipnet::Ipv4Net;
    use std::net::Ipv4Addr;

    fn cfg() -> Config {
        let text = r#"{
          cluster: { name: "t", id: 7, secret_file: "/dev/null" },
          atms: [ { name: "atm1", address: "10.0.1.1", interface: "eth0" },
                  { name: "atm2", address: "10.0.1.2", interface: "eth0" } ],
          services: [ { name: "web", vip: "10.0.1.99", port: 80, forwarding: "nat",
                        gateway_vip: "10.0.2.254",
                        servers: [ { name: "s1", address: "10.0.2.20" }, { name: "s2", address: "10.0.2.21" } ] } ],
        }"#;
        parse_str("t.json5", text, &LoadOptions::default()).expect("valid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn role_from_local_addresses() {
        let c = cfg();
        assert_eq!(host_role(&c, &[ip("127.0.0.1"), ip("10.0.1.2")]), HostRole::Atm { atm: 1, node: false });
        assert_eq!(host_role(&c, &[ip("10.0.1.1"), ip("10.0.2.21")]), HostRole::Atm { atm: 0, node: true });
        assert_eq!(host_role(&c, &[ip("10.0.2.20")]), HostRole::Node);
        assert_eq!(host_role(&c, &[ip("10.9.9.9")]), HostRole::None);
    }

    #[test]
    fn etc_services_lookup() {
        let text = "# comment\nclusterserver\t17200/udp\t# hb\nclusterserveradm 17201/tcp csadm\nfoo 1/udp clusterx\n";
        assert_eq!(services_port(text, "clusterserver", "udp"), Some(17200));
        assert_eq!(services_port(text, "clusterserver", "tcp"), None);
        assert_eq!(services_port(text, "csadm", "tcp"), Some(17201));
        assert_eq!(services_port("", "clusterserver", "udp"), None);
        let mut c = cfg();
        resolve_ports(&mut c, text);
        assert_eq!((c.heartbeat_port(), c.cluster.admin_port), (17200, Some(17201)));
        let mut c = cfg();
        resolve_ports(&mut c, "");
        assert_eq!((c.heartbeat_port(), c.cluster.admin_port), (17100, Some(17101)));
    }

    #[test]
    fn steering_and_names() {
        let c = cfg();
        let rules = steering(&c);
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0], SteerRule::to_vip(Ipv4Addr::new(10, 0, 1, 99)));
        assert_eq!(rules[2], SteerRule::nat_replies(Ipv4Net::from(Ipv4Addr::new(10, 0, 2, 21))));
        let o = owned(&c);
        assert_eq!(o.tun_name, "csd7");
        assert!(o.tun_name.len() <= 15);
    }

    /// An address of this host on `iface` (no MAC: the tests do not need one).
    fn if_addr(iface: &str, addr: &str, prefix_len: u8) -> IfAddr {
        IfAddr { iface: iface.into(), index: 1, mac: None, addr: ip(addr), prefix_len }
    }

    #[test]
    fn xdp_match_set_and_interfaces() {
        let c = cfg();
        let a = if_addr;
        let addrs = [a("eth0", "10.0.1.1", 24), a("eth1", "10.0.2.1", 24), a("lo", "127.0.0.1", 8)];
        let m = xdp_matches(&c, &addrs);
        assert_eq!(m.vips.iter().copied().collect::<Vec<_>>(), vec![ip("10.0.1.99")]);
        let port = c.services[0].servers[0].port;
        assert!(m.replies.contains(&(ip("10.0.2.20"), port, 6)));
        assert!(m.replies.contains(&(ip("10.0.2.21"), port, 6)));
        assert_eq!(m.local.len(), 3, "every address of this host stays with the kernel");
        // The VIP interface, the gateway VIP's and the servers' interface; sorted, once each.
        assert_eq!(xdp_interfaces(&c, &addrs, "eth0"), vec!["eth0".to_string(), "eth1".to_string()]);
        assert_eq!(xdp_interfaces(&c, &addrs[..1], "eth0"), vec!["eth0".to_string()]);
    }

    #[test]
    fn arp_interface_per_vip() {
        let c = cfg();
        let a = if_addr;
        let addrs = [a("eth0", "10.0.1.1", 24), a("eth1", "10.0.2.1", 24), a("eth1", "fd00:2::2", 64)];
        let m = arp_interfaces(&c, &addrs, "eth0");
        assert_eq!(m[&IpAddr::from([10, 0, 1, 99])], "eth0");
        assert_eq!(m[&IpAddr::from([10, 0, 2, 254])], "eth1");
        let m = arp_interfaces(&c, &addrs[..1], "eth0");
        assert_eq!(m[&IpAddr::from([10, 0, 2, 254])], "eth0");
        assert_eq!(dr_interface(&c, &addrs, "eth0"), None);
        let v6 = parse_str(
            "t.json5",
            r#"{
          cluster: { name: "t", id: 7, secret_file: "/dev/null" },
          atms: [ { name: "atm1", address: "10.0.1.1", interface: "eth0" } ],
          services: [ { name: "web6", vip: "fd00:2::99", port: 80, forwarding: "dr",
                        servers: [ { name: "s1", address: "fd00:2::20" } ] } ],
        }"#,
            &LoadOptions::default(),
        )
        .expect("valid");
        assert_eq!(arp_interfaces(&v6, &addrs, "eth0")[&ip("fd00:2::99")], "eth1");
        assert_eq!(arp_interfaces(&v6, &addrs[..2], "eth0")[&ip("fd00:2::99")], "eth0");
        assert_eq!(dr_interface(&v6, &addrs, "eth0").as_deref(), Some("eth1"));
    }
}

/// The ATM's own IPv6 address: source of IPv6-in-IPv6 outer headers and of the ICMPv6
/// errors the engine makes. Its configured address if that is IPv6, else the first global
/// (scope 0), non-tentative address of its interface in `if_inet6` (the text of
/// `/proc/net/if_inet6`); unspecified if it has none (IPv6 tunnel services then drop).
pub fn local_addr6(cfg: &Config, me: usize, if_inet6: &str) -> std::net::Ipv6Addr {
    if let IpAddr::V6(a) = cfg.atms[me].address {
        return a;
    }
    let iface = &cfg.atms[me].interface;
    if_inet6
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [hex, _, _, scope, flags, name] = f.as_slice() else { return None };
            let tentative = u32::from_str_radix(flags, 16).ok()? & 0x40 != 0;
            if name != iface || *scope != "00" || tentative || hex.len() != 32 {
                return None;
            }
            u128::from_str_radix(hex, 16).ok().map(std::net::Ipv6Addr::from_bits)
        })
        .next()
        .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)
}

#[cfg(test)]
mod local6_tests {
    #[test]
    fn the_first_global_settled_address_of_the_interface() {
        let opts = crate::config::LoadOptions { check_files: false, base_dir: "/etc/clusterserver".into() };
        let cfg =
            crate::config::parse_str("nat-2atm.json5", include_str!("../../config/nat-2atm.json5"), &opts)
                .expect("cfg");
        let text = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                    20010db8000000000000000000000009 04 40 00 c0     eth0\n\
                    20010db8000000000000000000000002 05 40 00 80     eth1\n\
                    20010db8000000000000000000000003 04 40 00 80     eth0\n";
        assert_eq!(
            super::local_addr6(&cfg, 0, text),
            "2001:db8::3".parse::<std::net::Ipv6Addr>().expect("ip")
        );
        assert!(super::local_addr6(&cfg, 0, "").is_unspecified());
    }
}
