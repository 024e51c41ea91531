//! Cluster-node set-up, the pure part (seed 002, made modern): what a real server must look
//! like for each forwarding method, decided from the config and the host's addresses. The
//! side effects (rtnetlink, sysctls, the decapsulator, the state file) live in
//! [`crate::platform::linux::node`].
//!
//! ## What a node needs, per forwarding method
//!
//! * **Direct routing** and **tunnel**: the service VIP as a /32 (IPv6: /128, without
//!   duplicate-address detection) on `lo`, so the node's stack accepts packets addressed to
//!   it and answers from it; and, for IPv4 VIPs, ARP hiding
//!   (`arp_ignore = 1`: answer only for addresses of the receiving interface; `arp_announce
//!   = 2`: never use the VIP as the source of an ARP request), on `all` and on every
//!   interface that holds one of this node's server addresses. The seed's `hidden` flag is
//!   gone from Linux; these two are its replacement. A sysctl is only ever *raised* to what
//!   is needed (the kernel uses the maximum of `all` and the interface), never lowered.
//!   IPv6 needs no hiding: Linux answers a Neighbor Solicitation only for an address of the
//!   interface it arrived on (`ndisc_recv_ns` looks the target up strictly on that device),
//!   so a VIP on `lo` is never advertised on the wire (shown in `tests/node_ns.rs`).
//! * **Tunnel**: decapsulation of what the ATM sends (outer family: the node's server
//!   address's; inner: the VIP's, so 4in4, 6in6, 4in6 or 6in4), by the kernel's `ipip` where
//!   present and only IPv4-in-IPv4 is needed, else the user-space decapsulator
//!   ([`crate::platform::linux::shell::decap_loop`]), which accepts outer packets only from the ATMs'
//!   addresses and inner packets only to the tunnel VIPs; and `all.rp_filter` 0
//!   ([`tunnel_rp_filter`]: the decapsulator's device has no address).
//! * **NAT**: nothing to configure; the node must route its replies through the service's
//!   `gateway_vip` (which moves with the primary). The daemon reads the routing table and
//!   warns, naming the service, when the default route goes elsewhere.
//!
//! ## Marks (crash safety)
//!
//! Everything added is recognisable without memory: IPv4 VIPs carry the address label
//! `lo:csd<cluster id>` ([`VIP_LABEL_PREFIX`], [`NodeNames::vip_label`]) on `lo`, so two
//! clusters' daemons on one host never remove each other's; IPv6 addresses have no labels,
//! so IPv6 VIPs carry the prefix-route metric [`NodeNames::vip_metric`] (`ip -6 addr show
//! lo` shows it), derived from the cluster id; the decapsulator's TUN is named
//! from the cluster id
//! ([`NodeNames::decap_tun`]). Sysctls cannot be marked, so their previous values are written
//! to a state file ([`NodeState`]) *before* they are changed. A daemon started after a SIGKILL
//! reads that file, restores what it lists, removes every `lo` address with our label and the
//! TUN by name, and only then sets up again.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::{Config, Forwarding, Service};
use crate::dataplane::decap::{DecapPolicy, TunnelKind};

/// Start of the address label of every VIP the node set-up puts on `lo` (`ip addr show lo`
/// shows it); the cluster id follows.
pub const VIP_LABEL_PREFIX: &str = "lo:csd";

/// Where the state files live (`RuntimeDirectory=clusterserverd` in the systemd unit).
pub const STATE_DIR: &str = "/run/clusterserverd";

/// The values ARP hiding needs: `(sysctl leaf, value)`.
pub const ARP_HIDING: [(&str, u8); 2] = [("arp_ignore", 1), ("arp_announce", 2)];

/// One NAT service whose replies must go through `gateway`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatCheck {
    pub service: String,
    pub gateway: Option<IpAddr>,
}

/// What this node needs. Empty when the host serves no service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// VIPs of the direct-routing and tunnel services this node serves (deduplicated, config
    /// order), to be put on `lo`.
    pub vips: Vec<IpAddr>,
    /// Interfaces holding this node's IPv4 server addresses of the services with IPv4 VIPs
    /// (ARP hiding there and on `all`).
    pub arp_ifaces: Vec<String>,
    /// Tunnel services present: decapsulate with this policy.
    pub decap: Option<DecapPolicy>,
    /// NAT services this node serves.
    pub nat: Vec<NatCheck>,
    /// Names of the services served, for the log.
    pub services: Vec<String>,
}

impl NodePlan {
    /// Whether ARP hiding is needed (any IPv4 VIP on `lo`).
    pub fn hides_arp(&self) -> bool {
        self.vips.iter().any(IpAddr::is_ipv4)
    }

    /// The sysctls to raise: `(key under /proc/sys/net/ipv4/conf, value)`, `all` first.
    pub fn sysctls(&self) -> Vec<(String, u8)> {
        if !self.hides_arp() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for iface in std::iter::once("all").chain(self.arp_ifaces.iter().map(String::as_str)) {
            for (leaf, v) in ARP_HIDING {
                out.push((format!("{iface}/{leaf}"), v));
            }
        }
        out
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// The services of which a host with addresses `local` is a real server.
pub fn served<'a>(cfg: &'a Config, local: &[IpAddr]) -> impl Iterator<Item = &'a Service> + 'a {
    let local = local.to_vec();
    cfg.services.iter().filter(move |s| s.servers.iter().any(|x| local.contains(&x.address)))
}

/// The plan of a host whose addresses are `addrs` (`(interface, address)`, both families).
pub fn plan(cfg: &Config, addrs: &[(String, IpAddr)]) -> NodePlan {
    let local: Vec<IpAddr> = addrs.iter().map(|(_, a)| *a).collect();
    let mut p = NodePlan::default();
    let mut tunnel_vips = Vec::new();
    let mut kinds = Vec::new();
    for s in served(cfg, &local) {
        push_unique(&mut p.services, s.name.clone());
        if s.forwarding == Forwarding::Nat {
            p.nat.push(NatCheck { service: s.name.clone(), gateway: s.gateway_vip });
            continue;
        }
        push_unique(&mut p.vips, s.vip);
        for srv in s.servers.iter().filter(|x| local.contains(&x.address)) {
            if s.forwarding == Forwarding::Tunnel {
                push_unique(&mut tunnel_vips, s.vip);
                push_unique(
                    &mut kinds,
                    TunnelKind { outer_v6: srv.address.is_ipv6(), inner_v6: s.vip.is_ipv6() },
                );
            }
            if s.vip.is_ipv6() || srv.address.is_ipv6() {
                continue;
            }
            let ifaces = addrs.iter().filter(|(_, a)| *a == srv.address);
            for (iface, _) in ifaces.filter(|(i, _)| i != "lo") {
                push_unique(&mut p.arp_ifaces, iface.clone());
            }
        }
    }
    if !tunnel_vips.is_empty() {
        kinds.sort();
        let allowed_sources = cfg.atms.iter().map(|a| a.address).collect();
        p.decap = Some(DecapPolicy { kinds, allowed_sources, allowed_destinations: tunnel_vips });
    }
    p
}

/// The config an ATM that is also a real server gives its own engine: its own server
/// entries get weight 0 (no new connections), so the primary never schedules a connection
/// to itself. Why: while it holds the VIPs the VIP is *not* on its `lo` (see
/// [`crate::daemon`], "ATM and node"), and a frame it addressed to its own MAC would never
/// come back in; the other ATMs keep it in their schedulers and use it while it is backup.
pub fn without_self(services: &[Service], local: &[IpAddr]) -> Vec<Service> {
    let mut out = services.to_vec();
    for s in out.iter_mut().filter(|s| s.forwarding != Forwarding::Nat) {
        for srv in s.servers.iter_mut().filter(|x| local.contains(&x.address)) {
            srv.weight = 0;
        }
    }
    out
}

/// Whether a NAT node's replies go through `gateway`: the main table's default gateway (or
/// a more specific route the caller resolved) equals it.
pub fn routes_via(default_gateways: &[IpAddr], gateway: IpAddr) -> bool {
    default_gateways.contains(&gateway)
}

/// Names of what the node set-up owns, derived from the cluster id and the node's first
/// server address (two lab nodes share one filesystem but not one namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNames {
    /// TUN of the user-space decapsulator (`csn<id>`, at most 15 bytes).
    pub decap_tun: String,
    /// Label of the IPv4 VIPs on `lo` (`lo:csd<id>`, at most 15 bytes).
    pub vip_label: String,
    /// Prefix-route metric of the IPv6 VIPs on `lo` (their mark: IPv6 addresses have no
    /// label): [`VIP_METRIC_BASE`] plus the short cluster id.
    pub vip_metric: u32,
    /// State file.
    pub state_file: PathBuf,
}

/// Base of [`NodeNames::vip_metric`]: "cs" in ASCII, high enough that no hand-made or
/// distribution route on `lo` uses it.
pub const VIP_METRIC_BASE: u32 = 0x6373_0000;

/// The names for cluster `cfg` on a node whose first served address is `me`.
pub fn names(cfg: &Config, state_dir: &std::path::Path, me: IpAddr) -> NodeNames {
    let short = cfg.cluster.id % 100_000;
    NodeNames {
        decap_tun: format!("csn{short}"),
        vip_label: format!("{VIP_LABEL_PREFIX}{short}"),
        vip_metric: VIP_METRIC_BASE + short,
        state_file: state_dir.join(format!("node-{}-{me}.state", cfg.cluster.id)),
    }
}

/// What a running node set-up has changed, as written to the state file: enough for a later
/// run to undo it after a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// `(key under /proc/sys/net/ipv4/conf, previous value)`, in the order changed.
    pub sysctls: Vec<(String, String)>,
    /// VIPs added to `lo` (also findable by their label or metric).
    pub vips: Vec<IpAddr>,
    /// A kernel IP-in-IP device brought up or created (`tunl0` or `csipip0`).
    pub kernel_decap: Option<String>,
}

/// A state file that cannot be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node state file line {line}: {what}")]
pub struct StateError {
    pub line: usize,
    pub what: String,
}

fn safe_key(k: &str) -> bool {
    !k.is_empty()
        && !k.contains("..")
        && !k.starts_with('/')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
}

impl NodeState {
    /// One line per item: `sysctl KEY VALUE`, `vip ADDR`, `kernel-decap DEV`.
    pub fn encode(&self) -> String {
        let mut s = String::from("# clusterserverd node set-up: what to undo after a crash\n");
        for (k, v) in &self.sysctls {
            s.push_str(&format!("sysctl {k} {v}\n"));
        }
        for v in &self.vips {
            s.push_str(&format!("vip {v}\n"));
        }
        if let Some(d) = &self.kernel_decap {
            s.push_str(&format!("kernel-decap {d}\n"));
        }
        s
    }

    /// Parses [`NodeState::encode`]'s output; refuses keys that would leave
    /// `/proc/sys/net/ipv4/conf`.
    pub fn decode(text: &str) -> Result<NodeState, StateError> {
        let mut st = NodeState::default();
        for (i, line) in text.lines().enumerate() {
            let err = |what: &str| StateError { line: i + 1, what: what.to_string() };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["sysctl", k, v] if safe_key(k) && v.chars().all(|c| c.is_ascii_digit()) => {
                    st.sysctls.push(((*k).to_string(), (*v).to_string()));
                }
                ["vip", a] => st.vips.push(a.parse().map_err(|_| err("bad address"))?),
                ["kernel-decap", d] if safe_key(d) && !d.contains('/') => {
                    st.kernel_decap = Some((*d).to_string());
                }
                _ => return Err(err("unrecognised")),
            }
        }
        Ok(st)
    }

    /// Records the previous value of `key` unless already recorded (the first value is the
    /// one to restore).
    pub fn remember_sysctl(&mut self, key: &str, previous: &str) {
        if !self.sysctls.iter().any(|(k, _)| k == key) {
            self.sysctls.push((key.to_string(), previous.to_string()));
        }
    }
}

/// The `net.ipv4.conf.all.rp_filter` a tunnel node needs when it is `current` (`None`: keep
/// it). Decapsulated packets arrive on the decapsulator's device (the user-space TUN, or
/// `tunl0`) carrying the client's source address, which routes out of another interface:
/// strict mode drops them, and loose mode drops them too on a device without an IPv4
/// address (the kernel's `fib_validate_source` "last resort"; measured in the labs: every
/// flow lost with `all = 2`). The kernel filters with the maximum of `all` and the device,
/// so `all` must be 0, as the LVS tunnelling guides prescribe; the device gets 0 too. Other
/// interfaces keep their own value (copied from `default` when they were created), so
/// their filtering is unchanged wherever it was set per interface.
pub fn tunnel_rp_filter(current: &str) -> Option<&'static str> {
    (current.trim() != "0").then_some("0")
}

/// Whether `current` must be raised to `want` (non-numeric values are replaced).
pub fn needs_raise(current: &str, want: u8) -> bool {
    current.trim().parse::<u8>().map_or(true, |c| c < want)
}

#[cfg(test)]
mod tests;
