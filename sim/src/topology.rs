//! From a scenario's topology to hosts and cluster configs.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use clusterserver::config::*;

use crate::scenario::{IpFamily, Scenario};

/// The VIP of the cluster under test, and of the second cluster.
pub const VIP: &str = "10.0.0.99";
pub const OTHER_VIP: &str = "10.0.0.199";
/// The NAT servers' default gateway, which moves with the primary.
pub const GATEWAY_VIP: &str = "10.0.1.254";
pub const OTHER_GATEWAY_VIP: &str = "10.0.1.253";
/// The IPv6 VIP and the NAT66 servers' IPv6 default gateway (IPv6 and dual topologies).
pub const VIP6: &str = "fd00::99";
pub const GATEWAY_VIP6: &str = "fd00:1::fe";
/// Cluster ids.
pub const CLUSTER_ID: u32 = 7;
pub const OTHER_CLUSTER_ID: u32 = 8;
pub const SECRET: &[u8] = b"simulated cluster secret";
pub const OTHER_SECRET: &[u8] = b"the other cluster's secret";

/// A cluster config for the ATMs `atms` (name, address), generated like an operator would
/// write it, with the scenario's overrides.
pub fn cluster_config(
    s: &Scenario,
    id: u32,
    atms: &[(String, IpAddr)],
    reachlist: Vec<IpAddr>,
    vip: IpAddr,
    nodes: &[(String, IpAddr)],
) -> Config {
    let o = &s.cluster;
    let forwarding = match s.topology.forwarding.as_str() {
        "dr" => Forwarding::Dr,
        "tunnel" => Forwarding::Tunnel,
        _ => Forwarding::Nat,
    };
    let mode = match o.heartbeat_mode.as_deref() {
        Some("broadcast") => HeartbeatMode::Broadcast,
        Some("unicast") => HeartbeatMode::Unicast,
        _ => HeartbeatMode::Both,
    };
    let min_reachable = o.min_reachable.unwrap_or(u32::from(!reachlist.is_empty()));
    Config {
        base_dir: PathBuf::new(),
        relative_paths: Default::default(),
        cluster: Cluster {
            name: format!("sim{id}"),
            id,
            heartbeat_port: Some(DEFAULT_HEARTBEAT_PORT),
            admin_port: Some(DEFAULT_ADMIN_PORT),
            secret_file: PathBuf::from("/dev/null"),
            heartbeat_mode: mode,
            mode: ClusterMode::PrimaryBackup,
        },
        atms: atms
            .iter()
            .map(|(n, a)| Atm { name: n.clone(), address: *a, interface: "eth0".into(), dataplane: None })
            .collect(),
        timers: Timers {
            heartbeat_ms: o.heartbeat_ms.unwrap_or(100),
            dead_after: o.dead_after.unwrap_or(3),
            preempt: o.preempt.unwrap_or(false),
            realtime_priority: 0,
        },
        arp: Arp {
            gratuitous_count: o.gratuitous_count.unwrap_or(3),
            gratuitous_interval_ms: 100,
            refresh_s: o.refresh_s.unwrap_or(30),
        },
        arbitration: Arbitration { reachlist, min_reachable, probe_interval_ms: 500, probe_timeout_ms: 300 },
        table: Table::default(),
        sync: SyncSettings { connections: o.sync_connections.unwrap_or(true), ..SyncSettings::default() },
        security: Security::default(),
        bgp: None,
        dataplane: Default::default(),
        services: vec![Service {
            name: "svc".into(),
            vip,
            port: 80,
            protocol: Protocol::Tcp,
            forwarding,
            scheduler: SchedulerKind::Wlc,
            persistence_s: o.persistence_s.unwrap_or(0),
            gateway_vip: (forwarding == Forwarding::Nat).then(|| {
                let gw = if id == CLUSTER_ID { GATEWAY_VIP } else { OTHER_GATEWAY_VIP };
                gw.parse().expect("literal")
            }),
            on_down: if o.on_down.as_deref() == Some("reset") { OnDown::Reset } else { OnDown::Keep },
            servers: nodes
                .iter()
                .filter(|(n, _)| !o.spare_servers.contains(n))
                .map(|(n, a)| Server { name: n.clone(), address: *a, port: 80, weight: 100 })
                .collect(),
            checks: o.check.iter().map(tcp_check).collect(),
        }],
        failover: s.failover.as_ref().map_or_else(Failover::default, failover),
    }
}

/// A host's IPv6 address in IPv6 and dual topologies: `fd00::` followed by its LAN
/// (turmoil IPv4) address, so every host is dual-stack on one link.
pub fn addr6_of(link: IpAddr) -> Ipv6Addr {
    let bits = match link {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits() & 0xffff_ffff,
    };
    Ipv6Addr::from_bits(0xfd00_u128 << 112 | bits)
}

/// The VIP a client or router uses: `client` is its index among the clients (`None`: a
/// router). `dual` topologies alternate: client1 IPv4, client2 IPv6, client3 IPv4...;
/// their routers use IPv4.
pub fn vip_for(family: IpFamily, client: Option<usize>) -> IpAddr {
    let v6 = match family {
        IpFamily::Ipv4 => false,
        IpFamily::Ipv6 => true,
        IpFamily::Dual => client.is_some_and(|i| i % 2 == 1),
    };
    if v6 { VIP6.parse().expect("literal") } else { VIP.parse().expect("literal") }
}

/// The IPv4 config of [`cluster_config`] in the scenario's family: `ipv6` puts its service on
/// the IPv6 VIP, gateway and servers (`nodes6`, the nodes' IPv6 addresses); `dual` adds that
/// IPv6 service (`svc6`) beside the IPv4 one. ATM addresses (heartbeats) stay IPv4.
pub fn with_family(mut cfg: Config, family: IpFamily, nodes6: &[(String, IpAddr)]) -> Config {
    let Some(v4) = cfg.services.first().cloned() else { return cfg };
    let mut v6 = v4.clone();
    v6.vip = VIP6.parse().expect("literal");
    v6.gateway_vip = v4.gateway_vip.map(|_| GATEWAY_VIP6.parse().expect("literal"));
    for srv in &mut v6.servers {
        if let Some((_, a)) = nodes6.iter().find(|(n, _)| *n == srv.name) {
            srv.address = *a;
        }
    }
    match family {
        IpFamily::Ipv4 => {}
        IpFamily::Ipv6 => cfg.services[0] = v6,
        IpFamily::Dual => {
            v6.name = "svc6".into();
            cfg.services.push(v6);
        }
    }
    cfg
}

/// The config after a `reload` step's edits (see [`crate::scenario::ReloadStep`]); `nodes`
/// gives the addresses of the topology's nodes. Every service gets each server edit (a
/// server added takes the port its service's first server has).
pub fn edited(
    cfg: &Config,
    r: &crate::scenario::ReloadStep,
    nodes: &[(String, IpAddr)],
) -> anyhow::Result<Config> {
    let mut c = cfg.clone();
    if let Some(w) = &r.weight {
        let mut found = false;
        for srv in c.services.iter_mut().flat_map(|s| s.servers.iter_mut()).filter(|s| s.name == w.server) {
            srv.weight = w.weight;
            found = true;
        }
        anyhow::ensure!(found, "reload: no server {:?} to re-weight", w.server);
    }
    if let Some(n) = &r.add_server {
        let (_, address) = nodes
            .iter()
            .find(|(name, _)| name == n)
            .ok_or_else(|| anyhow::anyhow!("reload: no node {n:?} to add"))?;
        for svc in &mut c.services {
            anyhow::ensure!(!svc.servers.iter().any(|s| &s.name == n), "reload: {n} is already a server");
            let port = svc.servers.first().map_or(svc.port, |s| s.port);
            svc.servers.push(Server { name: n.clone(), address: *address, port, weight: 100 });
        }
    }
    if let Some(n) = &r.remove_server {
        for svc in &mut c.services {
            let before = svc.servers.len();
            svc.servers.retain(|s| &s.name != n);
            anyhow::ensure!(svc.servers.len() < before, "reload: no server {n:?} to remove");
            anyhow::ensure!(!svc.servers.is_empty(), "reload: removing {n} leaves no server");
        }
    }
    if let Some(a) = &r.add_service {
        let first =
            c.services.first().cloned().ok_or_else(|| anyhow::anyhow!("reload: no service to copy"))?;
        c.services.push(Service { name: a.name.clone(), vip: IpAddr::V4(a.vip), ..first });
    }
    if let Some(hb) = r.heartbeat_ms {
        c.timers.heartbeat_ms = hb;
    }
    Ok(c)
}

/// atm1's group of the scenario's services, with atm2 as its backup and one mirror set.
fn failover(f: &crate::scenario::FailoverSettings) -> Failover {
    let services = f.services.iter().enumerate().map(|(i, name)| {
        let order = 10 * (i as u32 + 1);
        GroupService {
            name: name.clone(),
            start_order: order,
            stop_order: 99 - order,
            start: vec![name.clone(), "start".into()],
            stop: vec![name.clone(), "stop".into()],
            timeout_ms: 10 * f.command_ms.max(1),
        }
    });
    let data = MirrorSet { name: "data".into(), paths: vec!["/srv/data/".into()], interval_s: 0 };
    Failover {
        takeover_delay_ms: f.takeover_delay_ms,
        retry_ms: 500,
        start_attempts: 3,
        ssh: None,
        groups: vec![ServiceGroup {
            atm: 0,
            backup: 1,
            atm_name: "atm1".into(),
            backup_name: "atm2".into(),
            services: services.collect(),
            mirrors: vec![data],
        }],
    }
}

/// The scenario's health check as a config check (TCP connect; the simulator scripts its
/// outcome, see [`crate::dataplane`]).
fn tcp_check(c: &crate::scenario::CheckSettings) -> Check {
    Check {
        kind: CheckKind::Tcp,
        path: None,
        expect_status: None,
        command: Vec::new(),
        port: None,
        interval_ms: c.interval_ms,
        timeout_ms: c.interval_ms / 2,
        rise: c.rise,
        fall: c.fall,
    }
}
