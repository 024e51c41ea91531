//! Relations between values: the rules no single key can break on its own.
//!
//! The walk calls the per-object rules ([`arbitration`], [`service`], [`check`]) as soon as
//! an object has decoded, and [`whole`] and [`files`] once at the end on whatever decoded,
//! so a type error in one section never hides a relation error in another. Every error is
//! positioned at the key it names (or, for a value that came from a default, at the nearest
//! enclosing key present in the file).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::decode::{Cx, unique};
use super::sections::Draft;
use super::types::*;

pub(crate) fn arbitration(cx: &mut Cx, path: &str, a: &Arbitration) {
    // Decided before this function reports anything itself.
    let clean = |key: &str| cx.clean(&format!("{path}.{key}"));
    let count_ok = clean("reachlist") && clean("min_reachable");
    let probe_ok = clean("probe_interval_ms") && clean("probe_timeout_ms");
    let hosts = a.reachlist.iter().enumerate();
    unique(cx, hosts.map(|(i, ip)| (format!("{path}.reachlist[{i}]"), ip)), "reachlist host");
    if count_ok && a.min_reachable as usize > a.reachlist.len() {
        let msg = format!(
            "expected at most the number of reachlist hosts ({}), found {}",
            a.reachlist.len(),
            a.min_reachable
        );
        cx.error_at(&format!("{path}.min_reachable"), msg);
    }
    if probe_ok && a.probe_timeout_ms >= a.probe_interval_ms {
        let msg = format!(
            "expected less than probe_interval_ms ({}), found {}",
            a.probe_interval_ms, a.probe_timeout_ms
        );
        cx.error_at(&format!("{path}.probe_timeout_ms"), msg);
    }
}

pub(crate) fn check(cx: &mut Cx, path: &str, c: &Check) {
    let clean = cx.clean(&format!("{path}.interval_ms")) && cx.clean(&format!("{path}.timeout_ms"));
    if clean && c.timeout_ms >= c.interval_ms {
        let msg = format!("expected less than interval_ms ({}), found {}", c.interval_ms, c.timeout_ms);
        cx.error_at(&format!("{path}.timeout_ms"), msg);
    }
}

/// Addresses no real server has: the engine uses the first two as stand-ins for a tunnel
/// server of the other family (`dataplane::engine::family`), the others are not hosts.
fn reserved(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] >= 224,
        IpAddr::V6(a) => a.to_ipv4_mapped().is_some() || a.is_multicast(),
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

pub(crate) fn service(cx: &mut Cx, path: &str, s: &Service) {
    gateway(cx, path, s);
    for (i, srv) in s.servers.iter().enumerate() {
        let at = format!("{path}.servers[{i}]");
        // A tunnel carries either family in either (4in6, 6in4); NAT and DR cannot.
        if srv.address.is_ipv4() != s.vip.is_ipv4() && s.forwarding != Forwarding::Tunnel {
            let msg = format!(
                "expected an {} address like the VIP, found {} (only tunnel forwarding crosses families)",
                family(s.vip),
                srv.address
            );
            cx.error_at(&format!("{at}.address"), msg);
        } else if reserved(srv.address) {
            let msg = format!(
                "{} is not a host address a real server can have (reserved 240.0.0.0/4, IPv4-mapped ::ffff:0:0/96 or multicast)",
                srv.address
            );
            cx.error_at(&format!("{at}.address"), msg);
        } else if srv.address == s.vip {
            cx.error_at(&format!("{at}.address"), "a real server cannot have the service's VIP");
        }
        if s.forwarding != Forwarding::Nat && srv.port != s.port {
            let how = if s.forwarding == Forwarding::Dr { "direct routing" } else { "tunnel" };
            let msg = format!(
                "{how} forwarding cannot change the port: expected the service port {}, found {}",
                s.port, srv.port
            );
            cx.error_at(&format!("{at}.port"), msg);
        }
    }
}

/// NAT needs a server-side gateway VIP that moves with the primary; DR and tunnel have none.
fn gateway(cx: &mut Cx, path: &str, s: &Service) {
    let at = format!("{path}.gateway_vip");
    match (s.forwarding, s.gateway_vip) {
        (Forwarding::Nat, None) => cx.error_at(
            &at,
            "missing required key (NAT services need gateway_vip, the servers' default gateway)",
        ),
        (Forwarding::Nat, Some(g)) if g == s.vip => {
            cx.error_at(&at, "expected an address on the server side, different from the vip");
        }
        (Forwarding::Nat, Some(g)) if g.is_ipv4() != s.vip.is_ipv4() => {
            let msg = format!("expected an {} address like the VIP, found {g}", family(s.vip));
            cx.error_at(&at, msg);
        }
        (Forwarding::Dr | Forwarding::Tunnel, Some(_)) => {
            cx.error_at(&at, "only NAT services take a gateway_vip");
        }
        _ => {}
    }
}

/// Rules across sections, on whatever decoded.
pub(crate) fn whole(cx: &mut Cx, d: &Draft) {
    let atms: Vec<(usize, &Atm)> = match &d.atms {
        Some(a) => a.iter().enumerate().filter_map(|(i, a)| Some((i, a.as_ref()?))).collect(),
        None => Vec::new(),
    };
    for (i, s) in d.services.iter().flatten().enumerate() {
        let Some(s) = s else { continue };
        let addrs = std::iter::once(("vip", s.vip)).chain(s.gateway_vip.map(|g| ("gateway_vip", g)));
        for (key, ip) in addrs {
            if let Some((j, _)) = atms.iter().find(|(_, a)| a.address == ip) {
                let msg = format!("{ip} is the address of atms[{j}]; a VIP must be an extra address");
                cx.error_at(&format!("services[{i}].{key}"), msg);
            }
        }
    }
    // Heartbeats, connection sync and the admin channel between ATMs run over one socket
    // family (IPv6 ATMs multicast to a link-local group where IPv4 ones broadcast).
    if let Some((_, first)) = atms.first() {
        for (i, a) in atms.iter().skip(1).filter(|(_, a)| a.address.is_ipv4() != first.address.is_ipv4()) {
            let msg = format!(
                "expected an {} address like atms[0] ({}): heartbeats and connection sync between ATMs use one family, found {}",
                family(first.address),
                first.address,
                a.address
            );
            cx.error_at(&format!("atms[{i}].address"), msg);
        }
    }
    if let Some(c) = &d.cluster {
        ports(cx, c, &d.sync);
        mode(cx, c, d, &atms);
    }
}

/// Active-active needs the `bgp` section and IPv4 ATM addresses (each is its BIRD router
/// id); primary/backup takes no `bgp` section (it would silently do nothing).
fn mode(cx: &mut Cx, c: &Cluster, d: &Draft, atms: &[(usize, &Atm)]) {
    match (c.mode, &d.bgp) {
        (ClusterMode::ActiveActive, None) => {
            cx.error_at(
                "bgp",
                "missing required section (cluster.mode \"active-active\" announces the VIPs over BGP)",
            );
        }
        (ClusterMode::PrimaryBackup, Some(_)) => {
            cx.error_at("bgp", "the bgp section is only used with cluster.mode \"active-active\"");
        }
        _ => {}
    }
    if c.mode == ClusterMode::ActiveActive {
        // BIRD's router id is 32 bits: an IPv6 ATM's is the low 32 bits of its address.
        for (j, (i, a)) in atms.iter().enumerate() {
            let id = crate::config::router_id(a.address);
            if let Some((k, _)) = atms[..j].iter().find(|(_, b)| crate::config::router_id(b.address) == id) {
                let msg = format!(
                    "{} gives the BGP router id {id} that atms[{k}] has too (an IPv6 ATM's router id is the last 32 bits of its address)",
                    a.address
                );
                cx.error_at(&format!("atms[{i}].address"), msg);
            }
        }
        active_active_services(cx, d, atms);
        announce_families(cx, d);
    }
}

/// Each VIP is announced on the BGP channel of its family, so some neighbor must speak it (an
/// IPv6 route on an IPv4 session would need an IPv6 next hop the session cannot give).
fn announce_families(cx: &mut Cx, d: &Draft) {
    let Some(Some(bgp)) = &d.bgp else { return };
    for (i, s) in d.services.iter().flatten().enumerate() {
        let Some(s) = s else { continue };
        if !bgp.neighbors.iter().any(|n| n.address.is_ipv4() == s.vip.is_ipv4()) {
            let msg = format!(
                "{} cannot be announced: no bgp neighbor is {} (each VIP goes out on its family's BGP channel)",
                s.vip,
                family(s.vip)
            );
            cx.error_at(&format!("services[{i}].vip"), msg);
        }
    }
}

/// Active-active forwards on every ATM at once: NAT replies would return through one
/// ATM's gateway VIP, not the one holding the connection; and an ATM that is also a real
/// server leaves itself out of its own Maglev table, so the ATMs' tables would differ.
fn active_active_services(cx: &mut Cx, d: &Draft, atms: &[(usize, &Atm)]) {
    for (i, s) in d.services.iter().flatten().enumerate() {
        let Some(s) = s else { continue };
        if s.forwarding == Forwarding::Nat {
            let msg = "active-active mode supports dr and tunnel forwarding, not nat (replies must return through the ATM holding the connection)";
            cx.error_at(&format!("services[{i}].forwarding"), msg);
        }
        for (j, srv) in s.servers.iter().enumerate() {
            if let Some((k, _)) = atms.iter().find(|(_, a)| a.address == srv.address) {
                let msg = format!(
                    "{} is the address of atms[{k}]; in active-active mode an ATM cannot be a real server (the ATMs' Maglev tables would differ)",
                    srv.address
                );
                cx.error_at(&format!("services[{i}].servers[{j}].address"), msg);
            }
        }
    }
}

/// The heartbeat, admin and connection-sync ports must differ.
fn ports(cx: &mut Cx, c: &Cluster, sync: &SyncSettings) {
    let mut used: Vec<(String, u16)> = Vec::new();
    if let Some(hb) = c.heartbeat_port {
        used.push(("cluster.heartbeat_port".into(), hb));
        let implicit = sync.port.is_none() && cx.clean("sync");
        if implicit && hb > 65_533 {
            let msg = "the sync port defaults to heartbeat_port + 2, above 65535: set sync.port";
            cx.error_at("cluster.heartbeat_port", msg);
        } else if implicit {
            used.push(("sync.port".into(), hb + 2));
        }
    }
    if let Some(p) = c.admin_port {
        used.push(("cluster.admin_port".into(), p));
    }
    if let Some(p) = sync.port {
        used.push(("sync.port".into(), p));
    }
    unique(cx, used, "port");
}

/// The secret and token files: present, regular, not readable or writable by group or
/// others. Relative names are taken from `base_dir`; messages name the file as written.
pub(crate) fn files(cx: &mut Cx, d: &Draft, base_dir: &Path) {
    if let Some(c) = &d.cluster {
        file(cx, "cluster.secret_file", &c.secret_file, base_dir);
    }
    if let Some(t) = &d.security.token_file {
        file(cx, "security.token_file", t, base_dir);
    }
}

fn file(cx: &mut Cx, path: &str, name: &Path, base_dir: &Path) {
    let full = base_dir.join(name);
    let shown = name.display();
    let meta = match std::fs::metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return cx.error_at(path, format!("file \"{shown}\" does not exist"));
        }
        Err(e) => return cx.error_at(path, format!("cannot read file \"{shown}\": {e}")),
    };
    if !meta.is_file() {
        return cx.error_at(path, format!("\"{shown}\" is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let msg = format!(
            "file \"{shown}\" has mode {mode:04o}, open to group or others; expected 0600 or stricter (chmod 600)"
        );
        cx.error_at(path, msg);
    } else if meta.len() == 0 {
        cx.error_at(path, format!("file \"{shown}\" is empty"));
    }
}
