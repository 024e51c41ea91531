//! The JSON bodies of the admin channel, shared by the daemon (which serialises them) and
//! `cmc` (which reads them): one definition, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub cluster: String,
    pub node: String,
    /// `primary` or `backup`; `active` in active-active mode (every ATM forwards; whether
    /// it attracts traffic is per VIP, in `announcements`).
    pub role: String,
    pub epoch: u64,
    /// An operator stopped forwarding here (`cmc stop`).
    pub stopped: bool,
    /// First 16 bytes of this ATM's config digest, hex.
    pub config_digest: String,
    pub vips: Vec<String>,
    /// Other ATMs as heard in heartbeats; empty in active-active mode, where ATMs exchange
    /// no heartbeats (ask each one with `cmc --host`).
    pub peers: Vec<PeerStatus>,
    pub uptime_ms: u64,
    /// Active-active mode only: each VIP, whether this ATM announces it over BGP, and why
    /// not. Empty (and absent from the JSON) in primary/backup mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announcements: Vec<VipAnnouncement>,
}

/// One VIP of an active-active ATM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub vip: String,
    pub announced: bool,
    /// Why it is withdrawn (`None` while announced): `data_plane_down`,
    /// `arbitration_failed`, `stopping`, `stopped_by_operator`, `syncing` (joining: waiting
    /// for the peers' connection tables) or `no_healthy_server`.
    pub reason: Option<String>,
}

/// One other ATM as this one sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    pub up: bool,
    /// `primary`, `backup` or `unknown` (never heard).
    pub role: String,
    pub epoch: u64,
    pub eligible: bool,
    /// Milliseconds since its last accepted heartbeat (`None`: never heard).
    pub last_heard_ms: Option<u64>,
    /// The config digest its heartbeats carry, hex (empty until heard).
    pub config_digest: String,
    pub config_differs: bool,
}

/// `GET /v1/services`: every service with its servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub forwarding: String,
    pub scheduler: String,
    pub servers: Vec<ServerStatus>,
}

/// One real server of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// The configured weight.
    pub config_weight: u32,
    /// The weight the scheduler uses (the runtime weight, 0 while drained).
    pub weight: u32,
    /// The runtime weight: the operator's (`cmc weight`, kept across reloads and restarts)
    /// if set, else the configured one.
    #[serde(default)]
    pub runtime_weight: u32,
    /// Whether an operator's weight overrides the config (`cmc enable` clears it).
    #[serde(default)]
    pub weight_overridden: bool,
    /// The health checks' verdict.
    pub healthy: bool,
    /// `enabled`, `drained` (weight 0 by `cmc drain`) or `disabled`.
    pub admin: String,
    /// Entries in the connection table pointing at it.
    pub connections: u64,
    /// Connections scheduled to it since start-up.
    pub connections_total: u64,
    /// Client packets and IP bytes forwarded to it (a GSO super-packet counts once).
    pub packets_in: u64,
    pub bytes_in: u64,
    /// NAT replies and their IP bytes forwarded back to clients (0 for DR and tunnel).
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub heartbeats_sent: u64,
    pub heartbeats_accepted: u64,
    /// Rejected heartbeats by reason (only reasons seen).
    pub heartbeats_rejected: Vec<(String, u64)>,
    pub failovers: u64,
    pub engine_active: bool,
    pub packets: u64,
    pub new_connections: u64,
    pub table_len: u64,
    pub table_capacity: u64,
    pub table_expired: u64,
    pub table_evicted: u64,
    /// Engine drops by reason (only reasons seen).
    pub drops: Vec<(String, u64)>,
    pub sync_sent: u64,
    pub sync_received: u64,
    /// Sync datagrams refused (unauthenticated, replayed, malformed, from no listed ATM).
    #[serde(default)]
    pub sync_rejected: u64,
    #[serde(default)]
    pub sync_records_applied: u64,
    /// Full sync on join: requests sent and received, end markers sent and received.
    #[serde(default)]
    pub full_sync: [u64; 4],
    /// Packets the engine made (resets, ICMP errors) and those its rate limits held back:
    /// resets sent, ICMP errors sent, resets limited, ICMP errors limited.
    #[serde(default)]
    pub made_packets: [u64; 4],
    pub admin_refused_acl: u64,
    pub admin_unauthorized: u64,
    pub admin_bad_requests: u64,
    pub admin_requests: u64,
    /// Heartbeat send jitter and receive lateness ([`crate::admin::timing`]).
    #[serde(default)]
    pub heartbeat_send_jitter: TimingSummary,
    #[serde(default)]
    pub heartbeat_receive_lateness: TimingSummary,
}

/// A latency histogram in short: count, p50 and p99 (bucket upper bounds, capped by the
/// maximum) and the maximum, in microseconds; `None` while nothing was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimingSummary {
    pub count: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

impl TimingSummary {
    pub fn of(s: &super::timing::Snapshot) -> Self {
        let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let count = s.count();
        TimingSummary {
            count,
            p50_us: s.quantile(0.5).map(us),
            p99_us: s.quantile(0.99).map(us),
            max_us: (count > 0).then(|| us(s.max())),
        }
    }
}

impl std::fmt::Display for TimingSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |x: Option<u64>| x.map_or_else(|| "-".to_string(), |n| format!("{n} µs"));
        write!(f, "n={} p50<={} p99<={} max={}", self.count, v(self.p50_us), v(self.p99_us), v(self.max_us))
    }
}

/// One entry of `GET /v1/connections`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub service: String,
    pub server: String,
    pub protocol: String,
    pub client: String,
    pub vip: String,
}

/// A page of connections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionPage {
    /// Entries matching the filter, in all pages.
    pub total: u64,
    pub offset: u64,
    pub connections: Vec<Connection>,
}

/// An event of `GET /v1/events` (one SSE `data:` line each).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Milliseconds since the daemon started.
    pub at_ms: u64,
    /// `role`, `health`, `peer`, `action`, `config`, `held`, `refused`; `announce` in
    /// active-active mode (the announced set changed).
    pub kind: String,
    pub message: String,
}

/// The body of a refused request or a failed action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// The body of an action that was carried out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionDone {
    pub done: String,
}

/// `POST /v1/services/{svc}/servers/{srv}/weight`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightBody {
    pub weight: u32,
}

/// Largest weight an operator may set (the config's bound).
pub const MAX_WEIGHT: u32 = 65_535;
