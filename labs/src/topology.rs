//! The lab's topology: an address plan from the scenario, and its construction with netlink.
//!
//! A `switch` namespace holds the bridges: `br0` for the front subnet 10.0.0.0/24 (routers,
//! ATMs, clients, the rogue and the second cluster; DR/tunnel real servers too) and, for NAT,
//! `br1` for the server subnet 10.0.1.0/24 (each ATM's `eth1` and the real servers, whose
//! default route is the gateway VIP that moves with the primary). Every host is a namespace
//! with `eth0` (and `eth1`). Each veth pair is created inside the switch namespace and its host
//! end moved straight into the host's namespace: no end ever exists in the root namespace.
//!
//! With `topology.ip` `ipv6` or `dual` every interface also gets its IPv6 twin on the same
//! bridge ([`crate::family`]), without duplicate-address detection, IPv6 forwarding on the
//! ATMs, and the NAT servers an IPv6 default route via the IPv6 gateway VIP; the bridges then
//! flood multicast (no MLD snooping), so a Neighbor Solicitation reaches every host as an ARP
//! request does, whatever MLD report the kernel sent or missed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use anyhow::{Context, anyhow};
use clustersim::scenario::{IpFamily, Scenario};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::family::{self, Family, PREFIX6};
use crate::ns;

pub const FRONT_PREFIX: u8 = 24;
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
pub const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 199);
pub const GATEWAY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 254);
pub const OTHER_GATEWAY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 253);
/// The long-lived stream service's port (HTTP is on 80).
pub const STREAM_PORT: u16 = 7000;

/// What a host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Router,
    Atm,
    Node,
    Client,
    Rogue,
    Other,
}

/// One interface of a host: its bridge and address.
#[derive(Clone, Debug)]
pub struct Iface {
    pub name: String,
    pub bridge: &'static str,
    pub addr: Ipv4Addr,
    /// Its IPv6 twin, in the `ipv6` and `dual` topologies.
    pub addr6: Option<Ipv6Addr>,
    /// Name of the veth end left on the bridge, in the switch namespace.
    pub switch_end: String,
}

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub role: Role,
    pub ns: String,
    pub ifaces: Vec<Iface>,
    pub default_gw: Option<Ipv4Addr>,
    pub default_gw6: Option<Ipv6Addr>,
}

impl Host {
    pub fn addr(&self) -> Ipv4Addr {
        self.ifaces[0].addr
    }

    /// The host's first address in `f` (its IPv4 address's twin for IPv6).
    pub fn addr_in(&self, f: Family) -> IpAddr {
        f.addr(self.addr())
    }

    /// The family of a client's load (its number decides in a dual-stack scenario).
    pub fn client_family(&self, ip: IpFamily) -> Family {
        family::of_client(ip, classify(&self.name).map_or(1, |(_, n)| n))
    }

    /// Every address of the host's interfaces, both families.
    pub fn all_addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.ifaces.iter().map(|i| IpAddr::V4(i.addr)).collect();
        v.extend(self.ifaces.iter().filter_map(|i| i.addr6.map(IpAddr::V6)));
        v
    }
}

/// Hosts and addresses of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub run_id: String,
    pub switch_ns: String,
    pub nat: bool,
    /// The service family (`topology.ip`).
    pub ip: IpFamily,
    pub hosts: BTreeMap<String, Host>,
}

impl Plan {
    /// The plan of `s` (same host names as the simulator) for run `run_id`.
    pub fn new(s: &Scenario, run_id: &str) -> anyhow::Result<Plan> {
        let nat = s.topology.forwarding == "nat";
        let ip = s.topology.ip;
        let fams = family::families(ip);
        let mut hosts = BTreeMap::new();
        for name in s.host_names() {
            let (role, i) = classify(&name)?;
            let front = |last: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + last);
            let back = |last: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + last);
            let mut addrs = match role {
                Role::Router => vec![("br0", front(255 - i))],
                Role::Atm => vec![("br0", front(i))],
                Role::Node if nat => vec![("br1", back(i))],
                Role::Node => vec![("br0", front(50 + i))],
                Role::Client => vec![("br0", front(100 + i))],
                Role::Rogue => vec![("br0", front(250))],
                Role::Other => vec![("br0", front(10 + i))],
            };
            if nat && matches!(role, Role::Atm | Role::Other) {
                addrs.push(("br1", back(200 + i + if role == Role::Other { 10 } else { 0 })));
            }
            let ifaces = addrs
                .into_iter()
                .enumerate()
                .map(|(k, (bridge, addr))| Iface {
                    name: format!("eth{k}"),
                    bridge,
                    addr,
                    addr6: family::has_v6(ip).then(|| family::v6_of(addr)),
                    switch_end: format!("s-{name}-{k}"),
                })
                .collect();
            let gw = role == Role::Node && nat;
            let default_gw = (gw && fams.contains(&Family::V4)).then_some(GATEWAY_VIP);
            let default_gw6 = (gw && fams.contains(&Family::V6)).then(family::gateway_vip6);
            let ns = ns::ns_name(run_id, &name);
            let host = Host { name: name.clone(), role, ns, ifaces, default_gw, default_gw6 };
            hosts.insert(name, host);
        }
        Ok(Plan { run_id: run_id.into(), switch_ns: ns::ns_name(run_id, "switch"), nat, ip, hosts })
    }

    pub fn of_role(&self, role: Role) -> Vec<&Host> {
        let mut v: Vec<&Host> = self.hosts.values().filter(|h| h.role == role).collect();
        v.sort_by_key(|h| classify(&h.name).map(|(_, i)| i).unwrap_or(0));
        v
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts.get(name).with_context(|| format!("no host {name} in the lab"))
    }

    /// Every namespace of the run, switch included.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.switch_ns.clone()];
        v.extend(self.hosts.values().map(|h| h.ns.clone()));
        v
    }
}

fn classify(name: &str) -> anyhow::Result<(Role, u32)> {
    let num = |p: &str| -> u32 { name[p.len()..].parse().unwrap_or(1) };
    Ok(match name {
        n if n.starts_with("router") => (Role::Router, num("router")),
        n if n.starts_with("atm") => (Role::Atm, num("atm")),
        n if n.starts_with("node") => (Role::Node, num("node")),
        n if n.starts_with("client") => (Role::Client, num("client")),
        n if n.starts_with("other") => (Role::Other, num("other")),
        "rogue" => (Role::Rogue, 1),
        other => return Err(anyhow!("unknown host kind {other:?}")),
    })
}

/// Builds the topology: namespaces, bridges, veth pairs, addresses, routes, sysctls. The
/// caller owns cleanup (see [`crate::lab::Lab`]); namespaces are registered in `created` as
/// they are made, so a failure half-way still removes everything.
pub fn build(plan: &Plan, created: &mut Vec<String>) -> anyhow::Result<()> {
    for name in plan.namespaces() {
        ns::create(&name)?;
        created.push(name.clone());
        if family::has_v6(plan.ip) {
            // Before the veth ends move in: a device takes the namespace's `default` conf
            // when it arrives, so its link-local address skips DAD too.
            for k in ["all", "default"] {
                ns::exec(&name, &["sysctl", "-qw", &format!("net.ipv6.conf.{k}.accept_dad=0")])?;
            }
        }
    }
    let bridges: Vec<&'static str> = if plan.nat { vec!["br0", "br1"] } else { vec!["br0"] };
    let mut pairs: Vec<(String, String, &'static str, String)> = Vec::new();
    for h in plan.hosts.values() {
        for (k, i) in h.ifaces.iter().enumerate() {
            pairs.push((i.switch_end.clone(), format!("h-{}-{k}", h.name), i.bridge, ns::path(&h.ns)));
        }
    }
    ns::netlink_in(&plan.switch_ns, move |handle| async move {
        for b in &bridges {
            handle.link().add(LinkBridge::new(b).up().build()).execute().await.context("add bridge")?;
        }
        set_up(&handle, "lo").await?;
        for (sw, peer, bridge, target) in pairs {
            handle
                .link()
                .add(LinkVeth::new(&sw, &peer).build())
                .execute()
                .await
                .with_context(|| format!("add veth {sw}"))?;
            let br = index(&handle, bridge).await?;
            let si = index(&handle, &sw).await?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(si).controller(br).up().build())
                .execute()
                .await
                .with_context(|| format!("attach {sw} to {bridge}"))?;
            let file = std::fs::File::open(&target).with_context(|| format!("open {target}"))?;
            let pi = index(&handle, &peer).await?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(pi).setns_by_fd(file.as_raw_fd()).build())
                .execute()
                .await
                .with_context(|| format!("move {peer} into {target}"))?;
        }
        Ok(())
    })?;
    if family::has_v6(plan.ip) {
        for b in if plan.nat { ["br0", "br1"].as_slice() } else { ["br0"].as_slice() } {
            ns::exec(&plan.switch_ns, &["ip", "link", "set", b, "type", "bridge", "mcast_snooping", "0"])?;
        }
    }
    for h in plan.hosts.values() {
        configure_host(h, plan.ip)?;
    }
    Ok(())
}

fn configure_host(h: &Host, ip: IpFamily) -> anyhow::Result<()> {
    // Before addresses. ATMs need kernel forwarding: the daemon's steering routes VIP traffic
    // from eth0 into its TUN (measured: with ip_forward=0 nothing reaches the VIP). A side
    // effect the simulator does not model: after a daemon crash (the host stays up) its
    // kernel forwards clients whose ARP entry is stale on to the new primary.
    let mut sysctls = vec!["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"];
    if matches!(h.role, Role::Atm | Role::Other) {
        sysctls.push("net.ipv4.ip_forward=1");
    }
    if family::has_v6(ip) && matches!(h.role, Role::Atm | Role::Other) {
        sysctls.push("net.ipv6.conf.all.forwarding=1");
    }
    for s in sysctls {
        ns::exec(&h.ns, &["sysctl", "-qw", s])?;
    }
    let ifaces = h.ifaces.clone();
    let (gw, gw6, name) = (h.default_gw, h.default_gw6, h.name.clone());
    ns::netlink_in(&h.ns, move |handle| async move {
        set_up(&handle, "lo").await?;
        for (k, i) in ifaces.iter().enumerate() {
            let idx = index(&handle, &format!("h-{name}-{k}")).await?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(idx).name(i.name.clone()).build())
                .execute()
                .await
                .context("rename")?;
            handle
                .address()
                .add(idx, i.addr.into(), FRONT_PREFIX)
                .execute()
                .await
                .with_context(|| format!("address {} on {}", i.addr, i.name))?;
            if let Some(a6) = i.addr6 {
                let mut req = handle.address().add(idx, a6.into(), PREFIX6);
                req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
                req.execute().await.with_context(|| format!("address {a6} on {}", i.name))?;
            }
            handle.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await.context("up")?;
        }
        if let Some(gw) = gw {
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
            handle.route().add(route).execute().await.context("default route")?;
        }
        if let Some(gw6) = gw6 {
            let route = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw6).build();
            handle.route().add(route).execute().await.context("IPv6 default route")?;
        }
        Ok(())
    })
    .with_context(|| format!("configuring {}", h.name))
}

async fn set_up(handle: &rtnetlink::Handle, name: &str) -> anyhow::Result<()> {
    let i = index(handle, name).await?;
    handle.link().set(LinkUnspec::new_with_index(i).up().build()).execute().await.context("link up")?;
    Ok(())
}

/// Index of link `name` in the handle's namespace.
pub async fn index(handle: &rtnetlink::Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = links.try_next().await.with_context(|| format!("link {name}"))?;
    link.map(|l| l.header.index).with_context(|| format!("no link {name}"))
}

/// MAC address of `iface` in namespace `ns`.
pub fn mac_of(ns: &str, iface: &str) -> anyhow::Result<[u8; 6]> {
    let iface = iface.to_string();
    ns::netlink_in(ns, move |handle| async move {
        let mut links = handle.link().get().match_name(iface.clone()).execute();
        let link = links.try_next().await?.with_context(|| format!("no link {iface}"))?;
        for a in link.attributes {
            if let LinkAttribute::Address(m) = a {
                return <[u8; 6]>::try_from(&m[..]).map_err(|_| anyhow!("{iface}: MAC of {} bytes", m.len()));
            }
        }
        Err(anyhow!("{iface}: no MAC"))
    })
}

/// Sets the switch end of `host`'s interfaces down (`up == false`) or up: the host sees its
/// carrier go, like a pulled cable, and keeps its own configuration.
pub fn set_link(plan: &Plan, host: &str, up: bool) -> anyhow::Result<()> {
    let ends: Vec<String> = plan.host(host)?.ifaces.iter().map(|i| i.switch_end.clone()).collect();
    ns::netlink_in(&plan.switch_ns, move |handle| async move {
        for e in ends {
            let i = index(&handle, &e).await?;
            let msg =
                if up { LinkUnspec::new_with_index(i).up() } else { LinkUnspec::new_with_index(i).down() };
            handle.link().set(msg.build()).execute().await.with_context(|| format!("set {e}"))?;
        }
        Ok(())
    })
}
