//! Cluster-node set-up, the side effects: VIPs on `lo` (rtnetlink; IPv4 labelled
//! `lo:csd<cluster id>`, IPv6 added without DAD and marked by their route metric),
//! ARP-hiding sysctls (previous values saved first), the IP-in-IP
//! decapsulation (kernel `ipip` when present, else the user-space
//! [`DecapShell`]), the NAT route check, and their undoing. The plan comes from
//! [`crate::node::plan`]; the marks that make a restart after SIGKILL safe are described
//! there.
//!
//! Everything acts on the calling thread's network namespace: the rtnetlink `Handle` must
//! have been opened there, and `/proc/sys/net` is per namespace.
//!
//! Order of a set-up: state file (previous sysctl values) → sysctls → state file (VIPs) →
//! VIPs → decapsulation → state file. Undo runs in reverse and deletes the state file last,
//! so a crash at any point leaves a file that lists at least what was changed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::dataplane::decap::{DecapPolicy, DecapStats};
use crate::node::{NodeNames, NodePlan, NodeState, STATE_DIR, StateError, needs_raise};
use crate::platform::linux::shell::decap_loop::DecapShell;
use crate::platform::linux::shell::{ShellError, netlink};

/// Environment variable that moves the state directory (tests and labs; default
/// [`STATE_DIR`]).
pub const STATE_DIR_ENV: &str = "CLUSTERSERVERD_RUN_DIR";

/// Why a node set-up step failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node set-up: {what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("node set-up: {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("node set-up: {path}: {source}")]
    State { path: String, source: StateError },
    #[error("node set-up: decapsulator: {0}")]
    Decap(#[from] ShellError),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// The state directory: `$CLUSTERSERVERD_RUN_DIR` or [`STATE_DIR`].
pub fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV).map_or_else(|| PathBuf::from(STATE_DIR), PathBuf::from)
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{key}")
}

fn read_sysctl(key: &str) -> Result<String, NodeError> {
    std::fs::read_to_string(sysctl_path(key))
        .map(|s| s.trim().to_string())
        .map_err(io(format!("read net.ipv4.conf.{}", key.replace('/', "."))))
}

fn write_sysctl(key: &str, value: &str) -> Result<(), NodeError> {
    std::fs::write(sysctl_path(key), value)
        .map_err(io(format!("set net.ipv4.conf.{}={value}", key.replace('/', "."))))
}

/// Restores `key` to `value`; a key whose interface has gone meanwhile is skipped (with a
/// warning), so one vanished interface does not stop the rest of an undo.
fn restore_sysctl(key: &str, value: &str) -> Result<(), NodeError> {
    if !std::path::Path::new(&sysctl_path(key)).exists() {
        tracing::warn!(target: "clusterserverd::node", key, value, "not restored: the interface has gone");
        return Ok(());
    }
    write_sysctl(key, value)
}

/// Whether link `name` exists and is administratively up.
async fn link_up(handle: &Handle, name: &str) -> Result<Option<bool>, NodeError> {
    use rtnetlink::packet_route::link::LinkFlags;
    let Some(index) = netlink::link_index(handle, name).await? else { return Ok(None) };
    let mut links = handle.link().get().match_index(index).execute();
    let link = links.try_next().await.map_err(nl(format!("get link {name}")))?;
    Ok(link.map(|l| l.header.flags.contains(LinkFlags::Up)))
}

/// Writes the state atomically (temporary file, then rename).
fn save(path: &Path, st: &NodeState) -> Result<(), NodeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, st.encode()).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))
}

/// The user-space or kernel decapsulation in use.
#[derive(Debug)]
pub enum Decap {
    User(DecapShell),
    Kernel(String),
}

impl Decap {
    /// `user`, `kernel` (for the log).
    pub fn kind(&self) -> &'static str {
        match self {
            Decap::User(_) => "user",
            Decap::Kernel(_) => "kernel",
        }
    }
}

/// A node set-up in place. Undo it with [`NodeSetup::undo`]; dropping it without undoing
/// leaves everything (and the state file) for the next start to clear.
#[derive(Debug)]
pub struct NodeSetup {
    handle: Handle,
    names: NodeNames,
    plan: NodePlan,
    state: NodeState,
    decap: Option<Decap>,
    /// Undone: later [`NodeSetup::set_vips`] calls (tasks still queued) do nothing.
    closed: bool,
    /// The VIPs belong on `lo` now (the last [`NodeSetup::set_vips`]).
    vips_wanted: bool,
}

/// What [`NodeSetup::reconfigure`] changed, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeChanges {
    pub vips_added: Vec<IpAddr>,
    pub vips_removed: Vec<IpAddr>,
    /// Decapsulation started, stopped or restarted.
    pub decap: bool,
}

impl NodeChanges {
    pub fn is_empty(&self) -> bool {
        self.vips_added.is_empty() && self.vips_removed.is_empty() && !self.decap
    }
}

/// Indexes `lo`.
async fn lo_index(handle: &Handle) -> Result<u32, NodeError> {
    netlink::link_index(handle, "lo")
        .await
        .map_err(NodeError::Decap)?
        .ok_or_else(|| NodeError::Io { what: "no lo interface".into(), source: std::io::Error::other("lo") })
}

fn label_of(m: &AddressMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Label(l) => Some(l.as_str()),
        _ => None,
    })
}

fn metric_of(m: &AddressMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::RoutePriority(p) => Some(*p),
        _ => None,
    })
}

fn addr_of(m: &AddressMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(v) | AddressAttribute::Address(v) => Some(*v),
        _ => None,
    })
}

/// Whether `m` carries our mark: the label (IPv4) or the route metric (IPv6).
fn is_ours(m: &AddressMessage, names: &NodeNames) -> bool {
    match addr_of(m) {
        Some(IpAddr::V4(_)) => label_of(m) == Some(names.vip_label.as_str()),
        Some(IpAddr::V6(_)) => metric_of(m) == Some(names.vip_metric),
        None => false,
    }
}

/// The addresses on `lo` that carry our mark.
pub async fn marked_vips(handle: &Handle, names: &NodeNames) -> Result<Vec<IpAddr>, NodeError> {
    Ok(marked(handle, names).await?.iter().filter_map(addr_of).collect())
}

async fn marked(handle: &Handle, names: &NodeNames) -> Result<Vec<AddressMessage>, NodeError> {
    let lo = lo_index(handle).await?;
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(lo)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list addresses on lo"))?;
    Ok(msgs.into_iter().filter(|m| m.header.index == lo && is_ours(m, names)).collect())
}

async fn remove_vip(handle: &Handle, names: &NodeNames, vip: IpAddr) -> Result<bool, NodeError> {
    let mut removed = false;
    for m in marked(handle, names).await? {
        if addr_of(&m) == Some(vip) {
            handle.address().del(m).execute().await.map_err(nl(format!("remove {vip} from lo")))?;
            removed = true;
        }
    }
    Ok(removed)
}

/// Adds `vip` on `lo` as a host address with our mark (IPv4: /32 and the label; IPv6: /128,
/// no duplicate-address detection, the metric). `Ok(false)` when it is already there
/// (configured by hand: then it is not ours to remove).
async fn add_vip(handle: &Handle, names: &NodeNames, vip: IpAddr) -> Result<bool, NodeError> {
    let lo = lo_index(handle).await?;
    let plen = if vip.is_ipv4() { 32 } else { 128 };
    let mut req = handle.address().add(lo, vip, plen);
    let attrs = &mut req.message_mut().attributes;
    match vip {
        IpAddr::V4(_) => attrs.push(AddressAttribute::Label(names.vip_label.clone())),
        IpAddr::V6(_) => {
            attrs.push(AddressAttribute::Flags(AddressFlags::Nodad));
            attrs.push(AddressAttribute::RoutePriority(names.vip_metric));
        }
    }
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(false),
        Err(e) => Err(nl(format!("add {vip}/{plen} to lo"))(e)),
    }
}

async fn undo_kernel_decap(handle: &Handle, dev: &str) -> Result<(), NodeError> {
    let Some(index) = netlink::link_index(handle, dev).await? else { return Ok(()) };
    if dev == "tunl0" {
        let msg = LinkUnspec::new_with_index(index).down().build();
        handle.link().set(msg).execute().await.map_err(nl("set tunl0 down"))
    } else {
        handle.link().del(index).execute().await.map_err(nl(format!("delete {dev}")))
    }
}

async fn remove_link(handle: &Handle, name: &str) -> Result<bool, NodeError> {
    let Some(index) = netlink::link_index(handle, name).await? else { return Ok(false) };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
        Err(e) => Err(nl(format!("delete {name}"))(e)),
    }
}

/// Clears what a killed run left: restores the sysctls its state file lists, removes every
/// `lo` address with our mark, the decapsulator's TUN and a kernel decap device it brought
/// up, then deletes the file. Returns how many things were undone.
pub async fn clear_leftovers(handle: &Handle, names: &NodeNames) -> Result<usize, NodeError> {
    let path = &names.state_file;
    let st = match std::fs::read_to_string(path) {
        Ok(text) => NodeState::decode(&text)
            .map_err(|source| NodeError::State { path: path.display().to_string(), source })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeState::default(),
        Err(e) => return Err(io(format!("read {}", path.display()))(e)),
    };
    let mut n = 0;
    for (k, v) in st.sysctls.iter().rev() {
        restore_sysctl(k, v)?;
        n += 1;
    }
    for m in marked(handle, names).await? {
        handle.address().del(m).execute().await.map_err(nl("remove a marked VIP from lo"))?;
        n += 1;
    }
    if let Some(d) = &st.kernel_decap {
        undo_kernel_decap(handle, d).await?;
        n += 1;
    }
    n += usize::from(remove_link(handle, &names.decap_tun).await?);
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("remove {}", path.display()))(e)),
    }
    Ok(n)
}

/// The gateways of the main table's default routes, IPv4 and IPv6.
pub async fn default_gateways(handle: &Handle) -> Result<Vec<IpAddr>, NodeError> {
    let mut routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
    let v6: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list IPv6 routes"))?;
    routes.extend(v6);
    let main = u32::from(libc::RT_TABLE_MAIN);
    Ok(routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .filter(|r| {
            let t = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            t.unwrap_or(u32::from(r.header.table)) == main
        })
        .filter_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
                _ => None,
            })
        })
        .collect())
}

impl NodeSetup {
    /// Applies `plan`. `vips_on_lo = false` leaves the VIPs off `lo` for now (an ATM that
    /// holds them; see [`NodeSetup::set_vips`]). Call [`clear_leftovers`] first.
    pub async fn apply(
        handle: Handle,
        names: NodeNames,
        plan: NodePlan,
        vips_on_lo: bool,
    ) -> Result<NodeSetup, NodeError> {
        let mut me = NodeSetup {
            handle,
            names,
            plan,
            state: NodeState::default(),
            decap: None,
            closed: false,
            vips_wanted: false,
        };
        // If a step fails, undo what was done (and the state file with it).
        match me.apply_steps(vips_on_lo).await {
            Ok(()) => Ok(me),
            Err(e) => {
                if let Err(u) = me.undo().await {
                    tracing::error!(target: "clusterserverd::node", error = %u, "undo after a failed set-up");
                }
                Err(e)
            }
        }
    }

    async fn apply_steps(&mut self, vips_on_lo: bool) -> Result<(), NodeError> {
        self.raise_sysctls()?;
        self.check_nat().await?;
        if vips_on_lo {
            self.set_vips(true).await?;
        }
        if let Some(policy) = self.plan.decap.clone() {
            self.start_decap(policy).await?;
        }
        Ok(())
    }

    /// Raises the ARP-hiding sysctls the plan needs, remembering the previous values first.
    fn raise_sysctls(&mut self) -> Result<(), NodeError> {
        let path = self.names.state_file.clone();
        for (key, want) in self.plan.sysctls() {
            let cur = read_sysctl(&key)?;
            if needs_raise(&cur, want) {
                self.state.remember_sysctl(&key, &cur);
                save(&path, &self.state)?;
                write_sysctl(&key, &want.to_string())?;
            }
        }
        Ok(())
    }

    /// Starts decapsulation (the kernel's IP-in-IP where present and enough, else in user
    /// space) and turns `all/rp_filter` off while it runs.
    async fn start_decap(&mut self, policy: DecapPolicy) -> Result<(), NodeError> {
        let path = self.names.state_file.clone();
        let key = "all/rp_filter";
        let cur = read_sysctl(key)?;
        if let Some(want) = crate::node::tunnel_rp_filter(&cur) {
            self.state.remember_sysctl(key, &cur);
            save(&path, &self.state)?;
            write_sysctl(key, want)?;
            tracing::warn!(target: "clusterserverd::node", from = %cur, to = want, "tunnel: net.ipv4.conf.all.rp_filter set to 0 until exit (decapsulated packets carry client sources on an address-less device; per-interface values still apply)");
        }
        if policy.unchecked_v6_sources() {
            tracing::warn!(target: "clusterserverd::node", "tunnel over IPv6: outer IPv6 sources are not restricted (the ATMs' configured addresses are IPv4; the ATMs tunnel from their interfaces' IPv6 addresses); inner destinations are still only this node's tunnel VIPs");
        }
        let d = if crate::platform::linux::shell::decap_loop::kernel_serves(&policy) {
            // The fallback device may pre-exist: remember its sysctls (set to 0 / 1 by
            // enable_kernel_ipip) and leave it up on undo if it was up before.
            let was_up = link_up(&self.handle, "tunl0").await?;
            if was_up.is_some() {
                for k in ["tunl0/rp_filter", "tunl0/accept_local"] {
                    let cur = read_sysctl(k)?;
                    self.state.remember_sysctl(k, &cur);
                }
                save(&path, &self.state)?;
            }
            let dev = netlink::enable_kernel_ipip(&self.handle).await?;
            if !(dev == "tunl0" && was_up == Some(true)) {
                self.state.kernel_decap = Some(dev.clone());
            }
            Decap::Kernel(dev)
        } else {
            Decap::User(DecapShell::start(&self.names.decap_tun, policy)?)
        };
        self.decap = Some(d);
        save(&path, &self.state)
    }

    /// Stops decapsulation: the user-space decapsulator (its counters returned) or the
    /// kernel device this set-up brought up or created (a pre-existing up `tunl0` stays up).
    async fn stop_decap(&mut self) -> Result<Option<DecapStats>, NodeError> {
        let mut stats = None;
        match self.decap.take() {
            Some(Decap::User(d)) => stats = Some(d.stop()?),
            Some(Decap::Kernel(dev)) if self.state.kernel_decap.as_deref() == Some(dev.as_str()) => {
                undo_kernel_decap(&self.handle, &dev).await?;
            }
            Some(Decap::Kernel(_)) => {}
            None => {}
        }
        remove_link(&self.handle, &self.names.decap_tun).await?;
        Ok(stats)
    }

    /// Applies a new plan in place (a reload), touching only what differs: VIPs added to and
    /// removed from `lo` (while they are on it; an ATM holding them adds them when it stops
    /// holding), ARP hiding raised where newly needed, decapsulation started, stopped (the
    /// tunnel sysctls restored) or, in user space, restarted with a new policy; the NAT
    /// return routes checked again. ARP hiding no longer needed stays until exit (harmless:
    /// it only narrows which addresses this host answers ARP for).
    pub async fn reconfigure(&mut self, new: NodePlan) -> Result<NodeChanges, NodeError> {
        if self.closed {
            return Ok(NodeChanges::default());
        }
        let path = self.names.state_file.clone();
        let old = std::mem::replace(&mut self.plan, new);
        let mut ch = NodeChanges::default();
        self.raise_sysctls()?;
        for vip in old.vips.iter().filter(|v| !self.plan.vips.contains(v)) {
            remove_vip(&self.handle, &self.names, *vip).await?;
            self.state.vips.retain(|v| v != vip);
            save(&path, &self.state)?;
            ch.vips_removed.push(*vip);
        }
        for vip in self.plan.vips.clone().into_iter().filter(|v| !old.vips.contains(v)) {
            ch.vips_added.push(vip);
            if self.vips_wanted {
                self.add_one(vip).await?;
            }
        }
        let kernel = matches!(self.decap, Some(Decap::Kernel(_)));
        match (&old.decap, self.plan.decap.clone()) {
            (a, b) if *a == b => {}
            // The kernel's decapsulation has no policy to change.
            (Some(_), Some(_)) if kernel => {}
            (_, new) => {
                if old.decap.is_some() {
                    self.stop_decap().await?;
                    if new.is_none() {
                        self.restore_tunnel_sysctls()?;
                    }
                }
                if let Some(policy) = new {
                    self.start_decap(policy).await?;
                }
                ch.decap = true;
            }
        }
        self.check_nat().await?;
        save(&path, &self.state)?;
        Ok(ch)
    }

    /// Restores the sysctls only decapsulation changed (no tunnel service left).
    fn restore_tunnel_sysctls(&mut self) -> Result<(), NodeError> {
        let tunnel = |k: &str| k == "all/rp_filter" || k.starts_with("tunl0/");
        for (k, v) in self.state.sysctls.iter().filter(|(k, _)| tunnel(k)) {
            restore_sysctl(k, v)?;
        }
        self.state.sysctls.retain(|(k, _)| !tunnel(k));
        self.state.kernel_decap = None;
        save(&self.names.state_file, &self.state)
    }

    /// Adds one VIP to `lo`, recorded in the state file first.
    async fn add_one(&mut self, vip: IpAddr) -> Result<(), NodeError> {
        if !self.state.vips.contains(&vip) {
            self.state.vips.push(vip);
            save(&self.names.state_file, &self.state)?;
        }
        if !add_vip(&self.handle, &self.names, vip).await?
            && !marked_vips(&self.handle, &self.names).await?.contains(&vip)
        {
            tracing::warn!(target: "clusterserverd::node", vip = %vip, "the VIP is already on lo without our mark (configured by hand?): left alone");
        }
        Ok(())
    }

    /// Warns, naming the service, for every NAT service whose `gateway_vip` is not this
    /// node's default gateway (its replies would bypass the primary and the clients would
    /// drop them).
    pub async fn check_nat(&self) -> Result<(), NodeError> {
        if self.plan.nat.is_empty() {
            return Ok(());
        }
        let gws = default_gateways(&self.handle).await?;
        for c in &self.plan.nat {
            match c.gateway {
                Some(g) if crate::node::routes_via(&gws, g) => {
                    tracing::info!(target: "clusterserverd::node", service = %c.service, gateway_vip = %g, "NAT: replies route through the gateway VIP");
                }
                Some(g) => {
                    tracing::warn!(target: "clusterserverd::node", service = %c.service, gateway_vip = %g, default_gateways = ?gws, "NAT service {}: this node's default route does not go through the service's gateway_vip {g}: its replies will bypass the ATM and clients will drop them; route them via {g}", c.service);
                }
                None => {
                    tracing::warn!(target: "clusterserverd::node", service = %c.service, "NAT service {} has no gateway_vip: cannot check this node's return route", c.service);
                }
            }
        }
        Ok(())
    }

    /// Puts the plan's VIPs on `lo` (`present`) or takes them off. Records them in the state
    /// file before adding.
    pub async fn set_vips(&mut self, present: bool) -> Result<(), NodeError> {
        if self.closed {
            return Ok(());
        }
        self.vips_wanted = present;
        for vip in self.plan.vips.clone() {
            if self.vips_wanted {
                self.add_one(vip).await?;
            } else {
                remove_vip(&self.handle, &self.names, vip).await?;
            }
        }
        if !present {
            self.state.vips.clear();
            save(&self.names.state_file, &self.state)?;
        }
        Ok(())
    }

    /// The plan in force.
    pub fn plan(&self) -> &NodePlan {
        &self.plan
    }

    /// `user`, `kernel` or `none`.
    pub fn decap_kind(&self) -> &'static str {
        self.decap.as_ref().map_or("none", Decap::kind)
    }

    /// Whether the user-space decapsulator (if any) is reading.
    pub fn decap_ready(&self) -> bool {
        match &self.decap {
            Some(Decap::User(d)) => d.is_ready(),
            _ => true,
        }
    }

    /// Undoes everything: decapsulation, VIPs, sysctls (to their previous values), then the
    /// state file; idempotent. Returns the decapsulator's counters when it ran in user space.
    pub async fn undo(&mut self) -> Result<Option<DecapStats>, NodeError> {
        self.closed = true;
        let stats = self.stop_decap().await?;
        for m in marked(&self.handle, &self.names).await? {
            self.handle.address().del(m).execute().await.map_err(nl("remove a VIP from lo"))?;
        }
        for (k, v) in self.state.sysctls.iter().rev() {
            restore_sysctl(k, v)?;
        }
        self.state = NodeState::default();
        match std::fs::remove_file(&self.names.state_file) {
            Ok(()) => Ok(stats),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(stats),
            Err(e) => Err(io(format!("remove {}", self.names.state_file.display()))(e)),
        }
    }
}
