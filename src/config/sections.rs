//! The walk of SPEC.md's config shape, section by section, into a [`Draft`].
//!
//! Each section decoder checks its keys, types and per-value ranges (the bounds are listed
//! in the module docs of [`super`]) and calls the relation rules of [`super::validate`] on
//! what decoded, so that an error in one server does not hide a duplicate name in another.

use super::decode::{
    Cx, boolean, cidr, file_path, host_ip, int, items, list, name, object, one_of, port, string, unique,
};
use super::failover::failover;
use super::json5::Node;
use super::services::services;
use super::types::*;
use super::validate;

/// What the walk produced. Required sections and list items are `None` where they had
/// errors; optional sections hold their defaults in place of bad values. The whole-config
/// rules run on what is there; a [`Config`] is built only when nothing is missing (and is
/// returned only when no error at all was reported).
#[derive(Debug, Default)]
pub(crate) struct Draft {
    pub cluster: Option<Cluster>,
    pub atms: Option<Vec<Option<Atm>>>,
    pub timers: Timers,
    pub arp: Arp,
    pub arbitration: Arbitration,
    pub table: Table,
    pub sync: SyncSettings,
    pub security: Security,
    pub services: Option<Vec<Option<Service>>>,
    /// `None`: absent; `Some(None)`: present with errors.
    pub bgp: Option<Option<Bgp>>,
    pub failover: Failover,
    pub dataplane: Dataplane,
}

impl Draft {
    pub fn finish(self) -> Option<Config> {
        Some(Config {
            cluster: self.cluster?,
            atms: self.atms?.into_iter().collect::<Option<_>>()?,
            timers: self.timers,
            arp: self.arp,
            arbitration: self.arbitration,
            table: self.table,
            sync: self.sync,
            security: self.security,
            services: self.services?.into_iter().collect::<Option<_>>()?,
            bgp: match self.bgp {
                None => None,
                Some(b) => Some(b?),
            },
            failover: self.failover,
            dataplane: self.dataplane,
            base_dir: std::path::PathBuf::new(),
            relative_paths: Default::default(),
        })
    }
}

/// Most ATMs in one cluster.
pub const MAX_ATMS: usize = 32;
/// Most services in one cluster.
pub const MAX_SERVICES: usize = 256;
/// Most real servers in one service.
pub const MAX_SERVERS: usize = 1024;
/// Most health checks of one service.
pub const MAX_CHECKS: usize = 16;
/// Check defaults (SPEC.md's example leaves them out of an exec check).
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 2000;
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_CHECK_RISE: u32 = 2;
pub const DEFAULT_CHECK_FALL: u32 = 3;
pub const DEFAULT_HTTP_PATH: &str = "/";
pub const DEFAULT_HTTP_STATUS: u16 = 200;

const TOP: &[&str] = &[
    "cluster",
    "atms",
    "timers",
    "arp",
    "arbitration",
    "table",
    "sync",
    "security",
    "services",
    "bgp",
    "failover",
    "dataplane",
];

/// Walks the document.
pub(crate) fn draft(cx: &mut Cx, root: &Node) -> Draft {
    cx.spans.insert(String::new(), root.pos);
    let Some(f) = object(cx, root, "", TOP) else {
        return Draft::default();
    };
    // In the order of the file's sections: errors at one position keep this order.
    let cluster = f.req(cx, "cluster", cluster);
    let atms = f.req(cx, "atms", atms);
    let names: Vec<Option<String>> =
        atms.iter().flatten().map(|a| a.as_ref().map(|a| a.name.clone())).collect();
    Draft {
        cluster,
        atms,
        timers: f.or(cx, "timers", Timers::default(), timers),
        arp: f.or(cx, "arp", Arp::default(), arp),
        arbitration: f.or(cx, "arbitration", Arbitration::default(), arbitration),
        table: f.or(cx, "table", Table::default(), table),
        sync: f.or(cx, "sync", SyncSettings::default(), sync),
        security: f.or(cx, "security", Security::default(), security),
        services: f.req(cx, "services", services),
        bgp: f.node("bgp").map(|n| super::bgp::bgp(cx, n, &f.child("bgp"))),
        failover: f.or(cx, "failover", Failover::default(), |cx, n, p| failover(cx, n, p, &names)),
        dataplane: f.or(cx, "dataplane", Dataplane::default(), dataplane),
    }
}

const HEARTBEAT_MODES: &[(&str, HeartbeatMode)] = &[
    ("both", HeartbeatMode::Both),
    ("broadcast", HeartbeatMode::Broadcast),
    ("unicast", HeartbeatMode::Unicast),
];

const CLUSTER_MODES: &[(&str, ClusterMode)] =
    &[("primary-backup", ClusterMode::PrimaryBackup), ("active-active", ClusterMode::ActiveActive)];

fn cluster(cx: &mut Cx, node: &Node, path: &str) -> Option<Cluster> {
    let keys = &["name", "id", "heartbeat_port", "admin_port", "secret_file", "heartbeat_mode", "mode"];
    let f = object(cx, node, path, keys)?;
    let name = f.req(cx, "name", name);
    let id = f.req_or(cx, "id", 0, int(0, i128::from(u32::MAX)));
    let heartbeat_port = f.maybe(cx, "heartbeat_port", port);
    let admin_port = f.maybe(cx, "admin_port", port);
    let secret_file = f.req(cx, "secret_file", file_path);
    let mode = f.or(cx, "heartbeat_mode", HeartbeatMode::Both, one_of(HEARTBEAT_MODES));
    let cluster_mode = f.or(cx, "mode", ClusterMode::PrimaryBackup, one_of(CLUSTER_MODES));
    Some(Cluster {
        name: name?,
        id,
        heartbeat_port: heartbeat_port?,
        admin_port: admin_port?,
        secret_file: secret_file?,
        heartbeat_mode: mode,
        mode: cluster_mode,
    })
}

fn atms(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<Option<Atm>>> {
    let items = items(cx, node, path, (1, MAX_ATMS), "ATMs")?;
    let atms: Vec<Option<Atm>> = items.iter().map(|(p, n)| atm(cx, n, p)).collect();
    let named = items.iter().zip(&atms);
    let ok = named.filter_map(|((p, _), a)| a.as_ref().map(|a| (p, a)));
    let ok: Vec<_> = ok.collect();
    let names = ok.iter().map(|(p, a)| (format!("{p}.name"), format!("{:?}", a.name)));
    unique(cx, names, "ATM name");
    let addrs = ok.iter().map(|(p, a)| (format!("{p}.address"), a.address));
    unique(cx, addrs, "ATM address");
    Some(atms)
}

fn atm(cx: &mut Cx, node: &Node, path: &str) -> Option<Atm> {
    let f = object(cx, node, path, &["name", "address", "interface", "dataplane"])?;
    let name = f.req(cx, "name", name);
    let address = f.req(cx, "address", host_ip);
    let interface = f.req(cx, "interface", interface);
    let dp = f.node("dataplane").map(|n| dataplane(cx, n, &f.child("dataplane")));
    Some(Atm { name: name?, address: address?, interface: interface?, dataplane: dp.flatten() })
}

const BACKENDS: &[(&str, Backend)] = &[("tun", Backend::Tun), ("af_xdp", Backend::AfXdp)];

/// Most data-plane queues (and worker threads) of one ATM.
pub const MAX_QUEUES: u32 = 64;

/// `dataplane` (top level, or one ATM's): `{ backend: "tun" | "af_xdp", queues: 0..=64 }`.
fn dataplane(cx: &mut Cx, node: &Node, path: &str) -> Option<Dataplane> {
    let d = Dataplane::default();
    let f = object(cx, node, path, &["backend", "queues"])?;
    let backend = f.or(cx, "backend", d.backend, one_of(BACKENDS));
    let queues = f.or(cx, "queues", d.queues, int(0, i128::from(MAX_QUEUES)));
    Some(Dataplane { backend, queues })
}

/// A Linux interface name: 1..=15 bytes, no '/', ':' or white space.
fn interface(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    let bad = |c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control();
    if s.len() > 15 || s.chars().any(bad) || s == "." || s == ".." {
        let msg = format!("expected a network interface name (at most 15 bytes), found {s:?}");
        cx.error(node.pos, path, msg);
        return None;
    }
    Some(s)
}

fn timers(cx: &mut Cx, node: &Node, path: &str) -> Option<Timers> {
    let d = Timers::default();
    let f = object(cx, node, path, &["heartbeat_ms", "dead_after", "preempt", "realtime_priority"])?;
    let heartbeat_ms = f.or(cx, "heartbeat_ms", d.heartbeat_ms, int(5, 60_000));
    let dead_after = f.or(cx, "dead_after", d.dead_after, int(2, 100));
    let preempt = f.or(cx, "preempt", d.preempt, boolean);
    let realtime_priority = f.or(cx, "realtime_priority", d.realtime_priority, int(0, 99));
    Some(Timers { heartbeat_ms, dead_after, preempt, realtime_priority })
}

fn arp(cx: &mut Cx, node: &Node, path: &str) -> Option<Arp> {
    let d = Arp::default();
    let keys = &["gratuitous_count", "gratuitous_interval_ms", "refresh_s"];
    let f = object(cx, node, path, keys)?;
    let count = f.or(cx, "gratuitous_count", d.gratuitous_count, int(1, 100));
    let interval_ms = int(10, 10_000);
    let interval = f.or(cx, "gratuitous_interval_ms", d.gratuitous_interval_ms, interval_ms);
    let refresh_s = f.or(cx, "refresh_s", d.refresh_s, int(0, 86_400));
    Some(Arp { gratuitous_count: count, gratuitous_interval_ms: interval, refresh_s })
}

fn arbitration(cx: &mut Cx, node: &Node, path: &str) -> Option<Arbitration> {
    let d = Arbitration::default();
    let keys = &["reachlist", "min_reachable", "probe_interval_ms", "probe_timeout_ms"];
    let f = object(cx, node, path, keys)?;
    let reach = list((0, 64), "IP addresses", host_ip);
    let reachlist = f.or(cx, "reachlist", d.reachlist, reach);
    let min_reachable = f.or(cx, "min_reachable", d.min_reachable, int(0, 64));
    let interval = f.or(cx, "probe_interval_ms", d.probe_interval_ms, int(10, 60_000));
    let timeout = f.or(cx, "probe_timeout_ms", d.probe_timeout_ms, int(1, 60_000));
    let a = Arbitration { reachlist, min_reachable, probe_interval_ms: interval, probe_timeout_ms: timeout };
    validate::arbitration(cx, &f.path, &a);
    Some(a)
}

fn table(cx: &mut Cx, node: &Node, path: &str) -> Option<Table> {
    let d = Table::default();
    let keys = &[
        "max_connections",
        "tcp_timeout_s",
        "tcp_fin_timeout_s",
        "tcp_syn_timeout_s",
        "udp_timeout_s",
        "icmp_timeout_s",
    ];
    let f = object(cx, node, path, keys)?;
    let max = f.or(cx, "max_connections", d.max_connections, int(1, 16_777_216));
    let tcp = f.or(cx, "tcp_timeout_s", d.tcp_timeout_s, int(1, 604_800));
    let fin = f.or(cx, "tcp_fin_timeout_s", d.tcp_fin_timeout_s, int(1, 3_600));
    let syn = f.or(cx, "tcp_syn_timeout_s", d.tcp_syn_timeout_s, int(1, 3_600));
    let udp = f.or(cx, "udp_timeout_s", d.udp_timeout_s, int(1, 86_400));
    let icmp = f.or(cx, "icmp_timeout_s", d.icmp_timeout_s, int(1, 3_600));
    Some(Table {
        max_connections: max,
        tcp_timeout_s: tcp,
        tcp_fin_timeout_s: fin,
        tcp_syn_timeout_s: syn,
        udp_timeout_s: udp,
        icmp_timeout_s: icmp,
    })
}

fn sync(cx: &mut Cx, node: &Node, path: &str) -> Option<SyncSettings> {
    let d = SyncSettings::default();
    let f = object(cx, node, path, &["connections", "port", "max_datagrams_per_s"])?;
    let connections = f.or(cx, "connections", d.connections, boolean);
    let port = f.maybe(cx, "port", port);
    let rate = int(1, 1_000_000);
    let max = f.or(cx, "max_datagrams_per_s", d.max_datagrams_per_s, rate);
    Some(SyncSettings { connections, port: port?, max_datagrams_per_s: max })
}

fn security(cx: &mut Cx, node: &Node, path: &str) -> Option<Security> {
    let d = Security::default();
    let f = object(cx, node, path, &["admin_allow", "admin_deny", "token_file"])?;
    let allow = f.or(cx, "admin_allow", d.admin_allow, list((0, 256), "CIDRs", cidr));
    let deny = f.or(cx, "admin_deny", d.admin_deny, list((0, 256), "CIDRs", cidr));
    let token_file = f.maybe(cx, "token_file", file_path);
    Some(Security { admin_allow: allow, admin_deny: deny, token_file: token_file? })
}
