//! The engine's own settings types: what a service, a server and the connection table are to
//! the data plane. The config (`crate::config`) builds them from the operator's file
//! (`config::Service::settings`) and uses the plain ones (forwarding, scheduler, protocol,
//! table, server) as they are; the engine never sees config types, so a config key the data
//! plane does not use (checks, names shown to operators) cannot reach the packet path, and the
//! import goes one way (config -> dataplane).

use core::net::IpAddr;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    Nat,
    Dr,
    Tunnel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Sh,
    Mh,
}

impl SchedulerKind {
    /// Every scheduler, in the order the docs list them.
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Lc,
        SchedulerKind::Wlc,
        SchedulerKind::Sh,
        SchedulerKind::Mh,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDown {
    /// Existing connections to a failed server stay in the table.
    Keep,
    /// Existing connections to a failed server are reset.
    Reset,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Server {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    /// 0 drains: no new connections, existing ones continue.
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Table {
    pub max_connections: u32,
    pub tcp_timeout_s: u64,
    pub tcp_fin_timeout_s: u64,
    pub tcp_syn_timeout_s: u64,
    pub udp_timeout_s: u64,
    pub icmp_timeout_s: u64,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            max_connections: 1_000_000,
            tcp_timeout_s: 900,
            tcp_fin_timeout_s: 120,
            tcp_syn_timeout_s: 30,
            udp_timeout_s: 300,
            icmp_timeout_s: 30,
        }
    }
}

/// A service as the engine runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSettings {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    pub scheduler: SchedulerKind,
    /// Client affinity; 0 disables.
    pub persistence_s: u64,
    /// NAT only: the server-side address that moves with the primary.
    pub gateway_vip: Option<IpAddr>,
    pub on_down: OnDown,
    pub servers: Vec<Server>,
    /// The service has health checks: a server added by a reload starts down and enters once
    /// they pass (`rise`); without checks it is up at once.
    pub has_checks: bool,
}

/// Where each running service and server went in the new config (by name; `None`: gone,
/// or changed so much that its connections cannot continue). Built by the config diff
/// (`config::diff`), applied by [`crate::dataplane::engine::Engine::reconfigure`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remap {
    /// Per old service: its index in the new config.
    pub services: Vec<Option<usize>>,
    /// Per old service, per old server: its index in the new service.
    pub servers: Vec<Vec<Option<usize>>>,
}
