//! The change plan of a reload: (running config, new config) → what changes, and how.
//!
//! A reload must be invisible to clients, so the daemon applies most changes in place (see
//! `daemon::reload`): the election keeps its role, epoch and peers, the connection table and
//! the sync sessions stay, unchanged checks keep their state. [`plan`] is the pure function
//! that says, key by key, what changes and whether it can be applied live; the few keys that
//! cannot are listed with the reason, and only they make a reload hand over and restart.
//!
//! | needs the planned handover | why |
//! | --- | --- |
//! | `cluster.id` | heartbeats and sync carry it: the new id is another cluster to the peers |
//! | `cluster.mode` | primary/backup and active-active run different control loops |
//! | `cluster.heartbeat_port`, `cluster.admin_port`, `sync.port` | sockets bound at start-up |
//! | `cluster.secret_file` | the key of every heartbeat and sync datagram; peers must switch with it |
//! | `sync.connections` | the sync socket is bound (or not) at start-up |
//! | `table.max_connections` | the table is allocated once, at start-up |
//! | `atms[i]` of this ATM (name, address, interface) | this ATM's identity |
//! | an ATM removed or moved (not appended) | peers are known by their position |
//! | `arbitration.reachlist` length | the reachability score has one slot per host |
//! | `failover` | the service groups' running S/K state belongs to the old groups |
//! | `bgp.bird`, `bgp.control_socket`, `bgp.config_file`; the `bgp` section added or removed | BIRD is started with them |
//!
//! Everything else is live: services (added, removed, changed), servers (added, removed,
//! re-weighted, moved), checks, timers, ARP settings, table timeouts, the sync rate, the
//! admin ACL and token file, ATMs appended, peers' addresses, the heartbeat mode, the
//! reachlist's hosts and thresholds, the cluster name, BGP neighbours, AS numbers, timers
//! and BFD (BIRD reconfigured in place: unchanged sessions stay up).
//!
//! Services are matched by name, servers by name within their service. A service keeps its
//! connections while its VIP, port, protocol and forwarding stay; a server keeps its
//! connections (and health state) while its address and port stay ([`Remap`]).

use std::fmt::{self, Display};
use std::net::IpAddr;

use serde::Serialize;

use super::{Check, Config, Server, Service};

/// How one change is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// In place, nothing restarts.
    Live,
    /// Only by the planned handover and an in-process restart.
    Handover,
}

/// One changed key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub how: How,
    /// The key path, services and servers by name (`services.http.servers.web1.weight`).
    pub key: String,
    /// What changes (`100 -> 50`, `added (10.0.0.5:80, weight 100)`).
    pub change: String,
    /// Why it needs the handover (handover items only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every change between two configs, in config order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub items: Vec<Item>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether any change needs the planned handover.
    pub fn needs_handover(&self) -> bool {
        self.items.iter().any(|i| i.how == How::Handover)
    }

    /// The handover items.
    pub fn handover_items(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.how == How::Handover)
    }

    /// A one-line summary for logs: counts and the keys forcing a handover.
    pub fn summary(&self) -> String {
        let live = self.items.iter().filter(|i| i.how == How::Live).count();
        let keys: Vec<&str> = self.handover_items().map(|i| i.key.as_str()).collect();
        match keys.is_empty() {
            true => format!("{live} live change(s)"),
            false => format!("{live} live change(s), handover for {}", keys.join(",")),
        }
    }
}

impl Display for Plan {
    /// The plan printer (`clusterserverd --check --against`, `cmc reload --plan`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return writeln!(f, "no change");
        }
        let live = self.items.iter().filter(|i| i.how == How::Live).count();
        let handover = self.items.len() - live;
        let verdict = match handover {
            0 => "applied live: no role moves, connections kept".to_string(),
            n => format!("needs the planned handover ({n} key(s) below): the primary role moves once"),
        };
        writeln!(f, "{} change(s), {live} live, {handover} by handover; {verdict}", self.items.len())?;
        for i in &self.items {
            match (&i.how, &i.reason) {
                (How::Handover, Some(r)) => writeln!(f, "  handover  {}: {}  [{}]", i.key, i.change, r)?,
                _ => writeln!(f, "  live      {}: {}", i.key, i.change)?,
            }
        }
        Ok(())
    }
}

pub use crate::dataplane::settings::Remap;

impl Remap {
    /// Matches `old` against `new`: a service by name with the same VIP, port, protocol and
    /// forwarding; a server by name with the same address and port.
    pub fn between(old: &Config, new: &Config) -> Remap {
        let mut services = Vec::with_capacity(old.services.len());
        let mut servers = Vec::with_capacity(old.services.len());
        for o in &old.services {
            let n = new.services.iter().position(|n| n.name == o.name && same_endpoint(o, n));
            services.push(n);
            let per = o
                .servers
                .iter()
                .map(|os| {
                    let ns = &new.services[n?];
                    ns.servers
                        .iter()
                        .position(|s| s.name == os.name && s.address == os.address && s.port == os.port)
                })
                .collect();
            servers.push(per);
        }
        Remap { services, servers }
    }

    /// The new index of server `server` of old service `service`.
    pub fn server(&self, service: usize, server: usize) -> Option<(usize, usize)> {
        let s = (*self.services.get(service)?)?;
        let r = (*self.servers.get(service)?.get(server)?)?;
        Some((s, r))
    }

    /// Whether nothing moved (every service and server at the same index).
    pub fn is_identity(&self, new: &Config) -> bool {
        self.services.len() == new.services.len()
            && self.services.iter().enumerate().all(|(i, s)| *s == Some(i))
            && self.servers.iter().enumerate().all(|(i, per)| {
                per.len() == new.services[i].servers.len()
                    && per.iter().enumerate().all(|(j, r)| *r == Some(j))
            })
    }
}

/// Same VIP, port, protocol and forwarding: connections of the service can continue.
fn same_endpoint(a: &Service, b: &Service) -> bool {
    a.vip == b.vip && a.port == b.port && a.protocol == b.protocol && a.forwarding == b.forwarding
}

/// The change plan from `old` to `new` as seen by ATM `me` (its index in `old`; `None`:
/// for any ATM, e.g. `--check --against` on an admin host: a change to any ATM's own entry
/// is then listed as a handover for that ATM).
pub fn plan(old: &Config, new: &Config, me: Option<usize>) -> Plan {
    let mut p = Walk::default();
    cluster(&mut p, old, new);
    atms(&mut p, old, new, me);
    settings(&mut p, old, new);
    services(&mut p, &old.services, &new.services);
    if old.failover != new.failover {
        p.handover("failover", "changed", "the service groups' running S/K state belongs to the old groups");
    }
    let aa = new.cluster.mode == crate::config::ClusterMode::ActiveActive;
    bgp(&mut p, old.bgp.as_ref(), new.bgp.as_ref(), aa);
    Plan { items: p.items }
}

#[derive(Default)]
struct Walk {
    items: Vec<Item>,
}

impl Walk {
    fn live(&mut self, key: impl Into<String>, change: impl Into<String>) {
        self.items.push(Item { how: How::Live, key: key.into(), change: change.into(), reason: None });
    }

    fn handover(&mut self, key: impl Into<String>, change: impl Into<String>, reason: &str) {
        let reason = Some(reason.to_string());
        self.items.push(Item { how: How::Handover, key: key.into(), change: change.into(), reason });
    }

    /// A live change of a plain value.
    fn value<T: PartialEq + fmt::Debug>(&mut self, key: &str, old: &T, new: &T) {
        if old != new {
            self.live(key, arrow(old, new));
        }
    }

    /// A value that needs the handover.
    fn fixed<T: PartialEq + fmt::Debug>(&mut self, key: &str, old: &T, new: &T, reason: &str) {
        if old != new {
            self.handover(key, arrow(old, new), reason);
        }
    }
}

fn arrow<T: fmt::Debug>(old: &T, new: &T) -> String {
    format!("{} -> {}", show(old), show(new))
}

/// Debug without the quotes and `Some(..)` noise.
fn show<T: fmt::Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    let s = s.strip_prefix("Some(").and_then(|x| x.strip_suffix(')')).map_or(s.clone(), str::to_string);
    if s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric()) {
        // A unit enum variant (`Wlc`, `PrimaryBackup`): print it as the config spells it.
        return snake(&s);
    }
    s.trim_matches('"').to_string()
}

fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// BIRD is reconfigured in place (`birdc configure`): sessions whose settings did not change
/// stay up, a changed or new neighbour's session (re)starts, the announced routes stay. Only
/// the program and the files it was started with need a restart.
fn bgp(
    p: &mut Walk,
    old: Option<&crate::config::Bgp>,
    new: Option<&crate::config::Bgp>,
    active_active: bool,
) {
    let (o, n) = match (old, new) {
        (Some(o), Some(n)) => (o, n),
        (None, None) => return,
        (o, _) if !active_active => {
            return p.live("bgp", if o.is_none() { "added (unused)" } else { "removed" });
        }
        (o, _) => {
            let what = if o.is_none() { "added" } else { "removed" };
            return p.handover("bgp", what, "BIRD is started (or not) with the control loop");
        }
    };
    let started = "BIRD is started with it";
    p.fixed("bgp.bird", &o.bird, &n.bird, started);
    p.fixed("bgp.control_socket", &o.control_socket, &n.control_socket, started);
    p.fixed("bgp.config_file", &o.config_file, &n.config_file, started);
    p.value("bgp.birdc", &o.birdc, &n.birdc);
    p.value("bgp.local_as", &o.local_as, &n.local_as);
    for nb in &n.neighbors {
        match o.neighbors.iter().find(|x| x.address == nb.address) {
            None => p.live(format!("bgp.neighbors.{}", nb.address), format!("added (as {})", nb.peer_as)),
            Some(x) => p.value(&format!("bgp.neighbors.{}.peer_as", nb.address), &x.peer_as, &nb.peer_as),
        }
    }
    for x in o.neighbors.iter().filter(|x| !n.neighbors.iter().any(|nb| nb.address == x.address)) {
        p.live(format!("bgp.neighbors.{}", x.address), "removed (its session closes)");
    }
    p.value("bgp.hold_s", &o.hold_s, &n.hold_s);
    p.value("bgp.keepalive_s", &o.keepalive_s, &n.keepalive_s);
    p.value("bgp.bfd", &o.bfd, &n.bfd);
    p.value("bgp.bfd_interval_ms", &o.bfd_interval_ms, &n.bfd_interval_ms);
    p.value("bgp.bfd_multiplier", &o.bfd_multiplier, &n.bfd_multiplier);
    p.value("bgp.drain_ms", &o.drain_ms, &n.drain_ms);
    p.value("bgp.join_sync_ms", &o.join_sync_ms, &n.join_sync_ms);
}

fn cluster(p: &mut Walk, old: &Config, new: &Config) {
    let (o, n) = (&old.cluster, &new.cluster);
    p.value("cluster.name", &o.name, &n.name);
    p.fixed(
        "cluster.id",
        &o.id,
        &n.id,
        "heartbeats and sync carry it: to the peers the new id is another cluster",
    );
    p.fixed("cluster.mode", &o.mode, &n.mode, "primary/backup and active-active run different control loops");
    let port = "the socket is bound at start-up";
    p.fixed("cluster.heartbeat_port", &old.heartbeat_port(), &new.heartbeat_port(), port);
    p.fixed("cluster.admin_port", &old.admin_port(), &new.admin_port(), port);
    p.fixed("sync.port", &old.sync_port(), &new.sync_port(), port);
    let rel = |c: &Config| c.relative_to_base().cluster.secret_file;
    p.fixed(
        "cluster.secret_file",
        &rel(old),
        &rel(new),
        "the key of every heartbeat and sync datagram: the peers must switch with it",
    );
    p.value("cluster.heartbeat_mode", &o.heartbeat_mode, &n.heartbeat_mode);
}

fn atms(p: &mut Walk, old: &Config, new: &Config, me: Option<usize>) {
    for (i, o) in old.atms.iter().enumerate() {
        let key = format!("atms.{}", o.name);
        match new.atms.get(i) {
            None => p.handover(key, "removed", "peers are known by their position in `atms`"),
            Some(n) if n.name != o.name => p.handover(
                key,
                format!("position {i} is now {}", n.name),
                "peers are known by their position in `atms`",
            ),
            Some(n)
                if me.is_none_or(|m| m == i) && (n.address != o.address || n.interface != o.interface) =>
            {
                let what = format!("{}%{} -> {}%{}", o.address, o.interface, n.address, n.interface);
                p.handover(key, what, "this ATM's identity: its address and interface are bound at start-up")
            }
            Some(n) => {
                p.value(&format!("{key}.address"), &o.address, &n.address);
                p.value(&format!("{key}.interface"), &o.interface, &n.interface);
            }
        }
        if me.is_none_or(|m| m == i) && new.atms.get(i).is_some_and(|n| n.name == o.name) {
            let (a, b) = (old.dataplane_of(i), new.dataplane_of(i));
            p.fixed(
                &format!("atms.{}.dataplane", o.name),
                &(a.backend.as_str(), a.queues),
                &(b.backend.as_str(), b.queues),
                "the data plane's device, sockets and workers are opened at start-up",
            );
        }
    }
    for n in new.atms.iter().skip(old.atms.len()) {
        p.live(format!("atms.{}", n.name), format!("added ({})", n.address));
    }
}

fn settings(p: &mut Walk, old: &Config, new: &Config) {
    let (t, u) = (&old.timers, &new.timers);
    p.value("timers.heartbeat_ms", &t.heartbeat_ms, &u.heartbeat_ms);
    p.value("timers.dead_after", &t.dead_after, &u.dead_after);
    p.value("timers.preempt", &t.preempt, &u.preempt);
    p.value("timers.realtime_priority", &t.realtime_priority, &u.realtime_priority);
    let (a, b) = (&old.arp, &new.arp);
    p.value("arp.gratuitous_count", &a.gratuitous_count, &b.gratuitous_count);
    p.value("arp.gratuitous_interval_ms", &a.gratuitous_interval_ms, &b.gratuitous_interval_ms);
    p.value("arp.refresh_s", &a.refresh_s, &b.refresh_s);
    let (a, b) = (&old.arbitration, &new.arbitration);
    if a.reachlist.len() != b.reachlist.len() {
        p.handover(
            "arbitration.reachlist",
            format!("{} -> {} hosts", a.reachlist.len(), b.reachlist.len()),
            "the reachability score has one slot per host",
        );
    } else {
        p.value("arbitration.reachlist", &a.reachlist, &b.reachlist);
    }
    p.value("arbitration.min_reachable", &a.min_reachable, &b.min_reachable);
    p.value("arbitration.probe_interval_ms", &a.probe_interval_ms, &b.probe_interval_ms);
    p.value("arbitration.probe_timeout_ms", &a.probe_timeout_ms, &b.probe_timeout_ms);
    let (a, b) = (&old.table, &new.table);
    p.fixed(
        "table.max_connections",
        &a.max_connections,
        &b.max_connections,
        "the table is allocated once, at start-up",
    );
    p.value("table.tcp_timeout_s", &a.tcp_timeout_s, &b.tcp_timeout_s);
    p.value("table.tcp_fin_timeout_s", &a.tcp_fin_timeout_s, &b.tcp_fin_timeout_s);
    p.value("table.tcp_syn_timeout_s", &a.tcp_syn_timeout_s, &b.tcp_syn_timeout_s);
    p.value("table.udp_timeout_s", &a.udp_timeout_s, &b.udp_timeout_s);
    p.value("table.icmp_timeout_s", &a.icmp_timeout_s, &b.icmp_timeout_s);
    let (a, b) = (&old.sync, &new.sync);
    p.fixed(
        "sync.connections",
        &a.connections,
        &b.connections,
        "the sync socket is bound (or not) at start-up",
    );
    p.value("sync.max_datagrams_per_s", &a.max_datagrams_per_s, &b.max_datagrams_per_s);
    let (a, b) = (&old.security, &new.security);
    p.value("security.admin_allow", &a.admin_allow, &b.admin_allow);
    p.value("security.admin_deny", &a.admin_deny, &b.admin_deny);
    let tok = |c: &Config| c.relative_to_base().security.token_file;
    p.value("security.token_file", &tok(old), &tok(new));
}

fn services(p: &mut Walk, old: &[Service], new: &[Service]) {
    for o in old {
        let key = format!("services.{}", o.name);
        match new.iter().find(|n| n.name == o.name) {
            None => p.live(key, format!("removed (VIP {}:{} released, its connections end)", o.vip, o.port)),
            Some(n) => service(p, &key, o, n),
        }
    }
    for n in new.iter().filter(|n| !old.iter().any(|o| o.name == n.name)) {
        let what = format!(
            "added (VIP {}:{} {:?}, {:?}, {}, {} server(s))",
            n.vip,
            n.port,
            n.protocol,
            n.forwarding,
            show(&n.scheduler).to_lowercase(),
            n.servers.len()
        );
        p.live(format!("services.{}", n.name), what.to_lowercase());
    }
}

fn service(p: &mut Walk, key: &str, o: &Service, n: &Service) {
    if !same_endpoint(o, n) {
        let ep =
            |s: &Service| format!("{}:{} {:?} {:?}", s.vip, s.port, s.protocol, s.forwarding).to_lowercase();
        p.live(key.to_string(), format!("{} -> {}: served anew (its connections end)", ep(o), ep(n)));
    }
    p.value(&format!("{key}.scheduler"), &o.scheduler, &n.scheduler);
    p.value(&format!("{key}.persistence_s"), &o.persistence_s, &n.persistence_s);
    p.value(&format!("{key}.on_down"), &o.on_down, &n.on_down);
    p.value(&format!("{key}.gateway_vip"), &o.gateway_vip, &n.gateway_vip);
    for os in &o.servers {
        let skey = format!("{key}.servers.{}", os.name);
        match n.servers.iter().find(|s| s.name == os.name) {
            None => p.live(
                skey,
                format!("removed (its connections follow on_down: {})", show(&n.on_down).to_lowercase()),
            ),
            Some(ns) => server(p, &skey, os, ns),
        }
    }
    for ns in n.servers.iter().filter(|s| !o.servers.iter().any(|x| x.name == s.name)) {
        let gate =
            if n.checks.is_empty() { "takes connections at once" } else { "enters after its checks pass" };
        p.live(
            format!("{key}.servers.{}", ns.name),
            format!("added ({}, weight {}; {gate})", endpoint(ns.address, ns.port), ns.weight),
        );
    }
    if o.checks != n.checks {
        p.live(format!("{key}.checks"), checks_change(&o.checks, &n.checks));
    }
}

fn server(p: &mut Walk, key: &str, o: &Server, n: &Server) {
    if o.address != n.address || o.port != n.port {
        let what = format!(
            "{} -> {}: a new server (connections to the old address end)",
            endpoint(o.address, o.port),
            endpoint(n.address, n.port)
        );
        p.live(key.to_string(), what);
    }
    p.value(&format!("{key}.weight"), &o.weight, &n.weight);
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

fn checks_change(o: &[Check], n: &[Check]) -> String {
    let kept = n.iter().filter(|c| o.contains(c)).count();
    format!(
        "{} -> {} check(s), {kept} unchanged (they keep their state; the others start afresh)",
        o.len(),
        n.len()
    )
}

#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod tests;
