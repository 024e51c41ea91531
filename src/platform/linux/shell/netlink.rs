//! Kernel steering with rtnetlink: which packets the kernel hands to the shell's TUN.
//!
//! Everything the shell installs is tagged so it can be found again without remembering it:
//! one private routing table (`table_id`) holding a single `default dev TUN` route, and rules
//! that all carry the shell's `rule_priority` and point at that table. [`remove`] (on stop) and
//! [`cleanup`] (at start, for leftovers of a crashed run) delete exactly the rules with that
//! priority *and* table, every route in the table, and the TUN link by name; nothing else.
//!
//! Callers drive these futures on a runtime where the rtnetlink connection future has been
//! `tokio::spawn`ed (see [`connect`]); the socket belongs to the network namespace of the
//! thread that called [`connect`].

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkIpIp, LinkUnspec, RouteMessageBuilder};

use super::ShellError;

/// One steering rule: packets matching all of its set fields are routed into the TUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteerRule {
    /// Of one family with `from` (an IPv4 or an IPv6 rule).
    pub to: Option<IpNet>,
    pub from: Option<IpNet>,
    /// Only packets that arrived on this interface (keeps packets the shell wrote back to the
    /// TUN from matching again when they have the same addresses).
    pub iif: Option<String>,
}

impl SteerRule {
    /// Requests to a VIP (of either family).
    pub fn to_vip(vip: impl Into<IpAddr>) -> Self {
        SteerRule { to: Some(IpNet::from(vip.into())), from: None, iif: None }
    }

    /// NAT replies from real servers in `servers`.
    pub fn nat_replies(servers: impl Into<IpNet>) -> Self {
        SteerRule { to: None, from: Some(servers.into()), iif: None }
    }

    /// Whether this is an IPv6 rule.
    pub fn is_v6(&self) -> bool {
        matches!(self.to.or(self.from), Some(IpNet::V6(_)))
    }
}

/// Opens an rtnetlink connection in the calling thread's namespace and spawns its driver on
/// the current tokio runtime.
pub fn connect() -> Result<Handle, ShellError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(ShellError::NetlinkIo)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> ShellError {
    let what = what.into();
    move |source| ShellError::Netlink { what, source }
}

/// The interface index of `name`, `None` if there is no such link.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, ShellError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("get link {name}"))(e)),
    }
}

/// The MAC address of interface `index`.
pub async fn link_mac(handle: &Handle, index: u32) -> Result<Option<[u8; 6]>, ShellError> {
    let mut links = handle.link().get().match_index(index).execute();
    let link = links.try_next().await.map_err(nl(format!("get link #{index}")))?;
    Ok(link.and_then(|l| {
        l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => mac.try_into().ok(),
            _ => None,
        })
    }))
}

/// Installs the steering: `default dev tun_index table table_id` and one rule per `rules`.
pub async fn install(
    handle: &Handle,
    tun_index: u32,
    table_id: u32,
    priority: u32,
    rules: &[SteerRule],
) -> Result<(), ShellError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(tun_index)
        .table_id(table_id)
        .build();
    handle
        .route()
        .add(route)
        .execute()
        .await
        .map_err(nl(format!("add default route to table {table_id}")))?;
    ensure_route6(handle, tun_index, table_id).await?;
    add_rules(handle, table_id, priority, rules).await
}

/// The IPv6 default route into the TUN in `table_id` (for IPv6 VIPs and servers), added
/// once; a TUN on a host with IPv6 disabled cannot take one, and the error says so.
pub async fn ensure_route6(handle: &Handle, tun_index: u32, table_id: u32) -> Result<(), ShellError> {
    let route = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
        .destination_prefix(std::net::Ipv6Addr::UNSPECIFIED, 0)
        .output_interface(tun_index)
        .table_id(table_id)
        .build();
    match handle.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        // IPv6 disabled on this host (or the TUN): only IPv4 is steered.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EACCES => Ok(()),
        Err(e) => Err(nl(format!("add IPv6 default route to table {table_id}"))(e)),
    }
}

/// Adds steering rules to a running shell's table (a live reload: a new VIP, a new NAT
/// server).
pub async fn add_rules(
    handle: &Handle,
    table_id: u32,
    priority: u32,
    rules: &[SteerRule],
) -> Result<(), ShellError> {
    for r in rules {
        let mut add = handle.rule().add().action(RuleAction::ToTable).table_id(table_id).priority(priority);
        if let Some(iif) = &r.iif {
            add = add.input_interface(iif.clone());
        }
        if r.is_v6() {
            let mut add = add.v6();
            for (net, dst) in [(r.to, true), (r.from, false)] {
                if let Some(IpNet::V6(n)) = net {
                    add = if dst {
                        add.destination_prefix(n.addr(), n.prefix_len())
                    } else {
                        add.source_prefix(n.addr(), n.prefix_len())
                    };
                }
            }
            add.execute().await.map_err(nl(format!("add rule {r:?}")))?;
            continue;
        }
        let mut add = add.v4();
        if let Some(IpNet::V4(to)) = r.to {
            add = add.destination_prefix(to.addr(), to.prefix_len());
        }
        if let Some(IpNet::V4(from)) = r.from {
            add = add.source_prefix(from.addr(), from.prefix_len());
        }
        add.execute().await.map_err(nl(format!("add rule {r:?}")))?;
    }
    Ok(())
}

/// Removes the steering rules `rules` from a running shell (a live reload: a VIP or a NAT
/// server gone); the others stay. A rule already missing is not an error. Returns how many
/// were deleted.
pub async fn del_rules(
    handle: &Handle,
    table_id: u32,
    priority: u32,
    rules: &[SteerRule],
) -> Result<usize, ShellError> {
    let mut all: Vec<RuleMessage> =
        handle.rule().get(IpVersion::V4).execute().try_collect().await.map_err(nl("list rules"))?;
    all.extend(rules6(handle).await?);
    let mut deleted = 0;
    for r in all {
        if rule_table(&r) != table_id || rule_priority(&r) != Some(priority) {
            continue;
        }
        let prefix = |len: u8, want: fn(&RuleAttribute) -> Option<IpAddr>| {
            let addr = r.attributes.iter().find_map(want)?;
            match addr {
                IpAddr::V4(a) => Ipv4Net::new(a, len).ok().map(IpNet::V4),
                IpAddr::V6(a) => Ipv6Net::new(a, len).ok().map(IpNet::V6),
            }
        };
        let to = prefix(r.header.dst_len, |a| match a {
            RuleAttribute::Destination(ip) => Some(*ip),
            _ => None,
        });
        let from = prefix(r.header.src_len, |a| match a {
            RuleAttribute::Source(ip) => Some(*ip),
            _ => None,
        });
        let iif = r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Iifname(n) => Some(n.clone()),
            _ => None,
        });
        let this = SteerRule { to, from, iif };
        if rules.contains(&this) {
            handle.rule().del(r).execute().await.map_err(nl(format!("delete rule {this:?}")))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The IPv6 rules (none where IPv6 is disabled).
async fn rules6(handle: &Handle) -> Result<Vec<RuleMessage>, ShellError> {
    match handle.rule().get(IpVersion::V6).execute().try_collect().await {
        Ok(v) => Ok(v),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EAFNOSUPPORT => Ok(Vec::new()),
        Err(e) => Err(nl("list IPv6 rules")(e)),
    }
}

fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn rule_priority(r: &RuleMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

/// Removes this shell's rules and routes (by `table_id` and `priority`) and the TUN link
/// `tun_name` if it still exists. Idempotent: missing pieces are not errors. Returns how many
/// objects were deleted.
pub async fn remove(
    handle: &Handle,
    tun_name: &str,
    table_id: u32,
    priority: u32,
) -> Result<usize, ShellError> {
    let mut deleted = 0;
    let mut rules: Vec<RuleMessage> =
        handle.rule().get(IpVersion::V4).execute().try_collect().await.map_err(nl("list rules"))?;
    rules.extend(rules6(handle).await?);
    for r in rules {
        if rule_table(&r) == table_id && rule_priority(&r) == Some(priority) {
            handle.rule().del(r).execute().await.map_err(nl("delete rule"))?;
            deleted += 1;
        }
    }
    let mut routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
    let routes6: Result<Vec<_>, _> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await;
    routes.extend(routes6.unwrap_or_default());
    for r in routes {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        if table == table_id {
            handle.route().del(r).execute().await.map_err(nl("delete route"))?;
            deleted += 1;
        }
    }
    if let Some(index) = link_index(handle, tun_name).await? {
        match handle.link().del(index).execute().await {
            Ok(()) => deleted += 1,
            // Gone meanwhile (a TUN disappears when its last descriptor closes).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(nl(format!("delete link {tun_name}"))(e)),
        }
    }
    Ok(deleted)
}

/// Removes leftovers of a previous (crashed) run with the same names and ids: same as
/// [`remove`], meant to be called before set-up.
pub async fn cleanup(
    handle: &Handle,
    tun_name: &str,
    table_id: u32,
    priority: u32,
) -> Result<usize, ShellError> {
    remove(handle, tun_name, table_id, priority).await
}

/// The MAC of `ip` in the kernel's neighbour table on interface `ifindex`, if it is usable
/// (reachable, stale, delay, probe, permanent or noarp; not incomplete or failed).
pub async fn neighbour_mac(
    handle: &Handle,
    ifindex: u32,
    ip: std::net::IpAddr,
) -> Result<Option<[u8; 6]>, ShellError> {
    Ok(neighbour_macs(handle, ifindex).await?.get(&ip).copied())
}

/// Every usable entry (as [`neighbour_mac`]) of the kernel's neighbour tables, both
/// families, on interface `ifindex`: one dump.
pub async fn neighbour_macs(
    handle: &Handle,
    ifindex: u32,
) -> Result<std::collections::BTreeMap<std::net::IpAddr, [u8; 6]>, ShellError> {
    let mut out = std::collections::BTreeMap::new();
    let mut neighbours = handle.neighbours().get().execute();
    while let Some(n) = neighbours.try_next().await.map_err(nl("list neighbours"))? {
        if n.header.ifindex != ifindex
            || matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            )
        {
            continue;
        }
        let mut dst = None;
        let mut mac = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => {
                    dst = Some(std::net::IpAddr::V4(*d))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => {
                    dst = Some(std::net::IpAddr::V6(*d))
                }
                NeighbourAttribute::LinkLayerAddress(m) => mac = <[u8; 6]>::try_from(&m[..]).ok(),
                _ => {}
            }
        }
        if let (Some(d), Some(m)) = (dst, mac) {
            out.insert(d, m);
        }
    }
    Ok(out)
}

/// Tunes the TUN's IPv4 sysctls for packets the shell writes into it:
///
/// * `rp_filter = 0`: they carry client source addresses whose route points elsewhere (strict
///   mode drops them), and in tunnel mode this host's own address, which even loose mode
///   refuses on an interface without addresses (measured: `TcpExtIPReversePathFilter`).
/// * `accept_local = 1`: tunnel-mode outer headers carry this host's own address as source, a
///   "martian" without it.
///
/// The kernel filters with `max(all, interface)`: when `net.ipv4.conf.all.rp_filter` is not 0
/// the TUN is filtered anyway. Loose mode (2) still passes NAT and DR (tested); tunnel mode
/// needs `all = 0`. The shell does not change host-wide settings: it warns.
pub fn tune_tun_sysctls(iface: &str) -> Result<(), ShellError> {
    if iface.is_empty() || iface.contains('/') || iface.contains("..") {
        return Err(ShellError::Config(format!("bad interface name {iface:?}")));
    }
    for (key, value) in [("rp_filter", "0"), ("accept_local", "1")] {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/{key}");
        std::fs::write(&path, value)
            .map_err(|source| ShellError::Tun { name: format!("{iface} ({key})"), source })?;
    }
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
    if all.trim() != "0" {
        tracing::warn!(
            iface,
            all_rp_filter = all.trim(),
            "net.ipv4.conf.all.rp_filter is not 0: the kernel filters the TUN anyway; tunnel mode needs 0"
        );
    }
    Ok(())
}

/// Whether the running kernel has IP-in-IP (`ipip`) support loaded or built in: then a node
/// should let the kernel decapsulate rather than run [`super::decap_loop`].
pub fn kernel_has_ipip() -> bool {
    std::path::Path::new("/sys/module/ipip").exists()
        || std::fs::read_to_string("/proc/net/dev").map(|s| s.contains("tunl0")).unwrap_or(false)
}

/// Name of the IP-in-IP device [`enable_kernel_ipip`] creates when the kernel has no
/// fallback `tunl0` in this namespace.
pub const KERNEL_IPIP_DEVICE: &str = "csipip0";

/// Lets the kernel decapsulate IP-in-IP: brings up the fallback device `tunl0` (which receives
/// tunnel packets from any source to any local address), or creates an any-to-any
/// [`KERNEL_IPIP_DEVICE`] where `tunl0` is absent (`fb_tunnels_only_for_init_net`), and tunes
/// its sysctls like the shell's TUN. Returns the device's name. Only when
/// [`kernel_has_ipip`]; the kernel path does not filter outer sources (use a firewall).
pub async fn enable_kernel_ipip(handle: &Handle) -> Result<String, ShellError> {
    let name = match link_index(handle, "tunl0").await? {
        Some(index) => {
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl("set tunl0 up"))?;
            "tunl0".to_string()
        }
        None => {
            if link_index(handle, KERNEL_IPIP_DEVICE).await?.is_none() {
                handle
                    .link()
                    .add(LinkIpIp::new(KERNEL_IPIP_DEVICE).up().build())
                    .execute()
                    .await
                    .map_err(nl(format!("add ipip link {KERNEL_IPIP_DEVICE}")))?;
            }
            KERNEL_IPIP_DEVICE.to_string()
        }
    };
    tune_tun_sysctls(&name)?;
    Ok(name)
}

/// An address as an IPv4 host prefix, if it is IPv4.
pub fn host_prefix(ip: IpAddr) -> Option<Ipv4Net> {
    match ip {
        IpAddr::V4(a) => Some(Ipv4Net::from(a)),
        IpAddr::V6(_) => None,
    }
}
