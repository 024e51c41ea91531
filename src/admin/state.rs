//! What the admin channel knows and can do: a view of the control core (refreshed by the
//! driver after every step), a stream of events, and a [`Backend`] that reaches the data
//! plane and the daemon's control loop.
//!
//! The HTTP side runs on its own thread and runtime ([`super::server`]); everything here is
//! therefore `Send + Sync`. The core view is a copy taken under a mutex held for a few
//! microseconds by the control loop; the data plane is asked through its control queue, so
//! the packet path takes no lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::model::{ConnectionPage, EventRecord};
use crate::core::atm::AtmStats;
use crate::core::election::{PeerView, Role};
use crate::dataplane::engine::EngineStats;

/// Events kept for a slow SSE reader before it loses the oldest (it is told how many).
pub const EVENT_BACKLOG: usize = 256;

/// Counters of one health check of one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckView {
    pub kind: &'static str,
    pub passes: u64,
    pub failures: u64,
    pub timeouts: u64,
    /// Latency of the last run that answered (pass or fail), and the sum over them.
    pub last_latency: std::time::Duration,
    pub latency_sum: std::time::Duration,
}

/// The control core as last observed.
#[derive(Clone, Debug, Default)]
pub struct CoreView {
    pub role: Option<Role>,
    pub epoch: u64,
    pub held: bool,
    /// Indexed like the config's `atms` (this ATM's own entry included, never heard).
    pub peers: Vec<PeerView>,
    /// The platform clock (ms) at the observation: peers' `last_heard` are on that clock.
    pub observed_ms: u64,
    /// When the observation was taken (to age it at query time).
    pub observed_at: Option<tokio::time::Instant>,
    pub stats: AtmStats,
    /// Promotions of this ATM since start-up.
    pub failovers: u64,
    /// Health checks by (service, server, check) index.
    pub checks: std::collections::BTreeMap<(usize, usize, usize), CheckView>,
    /// Active-active mode (no election, `role` stays `None`): each VIP's announcement.
    /// `None` in primary/backup mode.
    pub announce: Option<Vec<super::model::VipAnnouncement>>,
}

/// One server as the data plane has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerView {
    /// As the engine has it (0 while drained).
    pub weight: u32,
    /// The runtime weight: the operator's (`cmc weight`) if set, else the configured one.
    pub operator_weight: u32,
    /// The weight in the config.
    pub config_weight: u32,
    /// Whether the runtime weight is an operator's override.
    pub weight_overridden: bool,
    pub healthy: bool,
    pub admin: &'static str,
    pub connections: u64,
    pub traffic: crate::dataplane::engine::ServerCounters,
}

/// The data plane's state.
#[derive(Clone, Debug, Default)]
pub struct DataplaneView {
    pub active: bool,
    pub stats: EngineStats,
    pub table_capacity: u64,
    /// Per service, per server.
    pub servers: Vec<Vec<ServerView>>,
    pub sync_sent: u64,
    pub sync_received: u64,
    /// Sync datagrams refused (unauthenticated, replayed, malformed, from no listed ATM).
    pub sync_rejected: u64,
    /// Connection records applied from peers' sync.
    pub sync_records_applied: u64,
    /// Full sync on join (active-active): requests and end markers.
    pub full_sync: crate::dataplane::fullsync::FullSyncStats,
}

/// A filter and page of `GET /v1/connections`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionQuery {
    pub service: Option<usize>,
    pub server: Option<usize>,
    pub client: Option<std::net::IpAddr>,
    pub offset: usize,
    pub limit: usize,
}

/// An operator's change to one server.
pub use crate::overrides::ServerOp;

/// A request for the daemon's control loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlOp {
    Promote,
    Demote,
    /// Stop forwarding here (hand over if primary; no candidate until started).
    Stop,
    Start,
    /// Re-read and apply the config file (as SIGHUP).
    Reload,
    /// Re-read the config file and say what a reload would change (applies nothing).
    ReloadPlan,
    /// Hand over, tear down and start again with the running config.
    Restart,
}

impl ControlOp {
    /// The action's word (`cmc` subcommand, logs, events and refusals).
    pub fn name(self) -> &'static str {
        match self {
            ControlOp::Promote => "promote",
            ControlOp::Demote => "demote",
            ControlOp::Stop => "stop",
            ControlOp::Start => "start",
            ControlOp::Reload => "reload",
            ControlOp::ReloadPlan => "reload-plan",
            ControlOp::Restart => "restart",
        }
    }
}

/// How an action turned out (`Err`: refused, with the reason for the operator).
pub type Outcome = Result<String, String>;

/// The daemon side of the admin channel.
pub trait Backend: Send + Sync + 'static {
    /// The data plane's state.
    fn dataplane(&self) -> BoxFuture<'static, Result<DataplaneView, String>>;
    /// A page of the connection table.
    fn connections(&self, q: ConnectionQuery) -> BoxFuture<'static, Result<ConnectionPage, String>>;
    /// Changes one server (already validated by name).
    fn server(&self, service: usize, server: usize, op: ServerOp) -> BoxFuture<'static, Outcome>;
    /// Hands an operation to the control loop; `Ok` once it was accepted there.
    fn control(&self, op: ControlOp) -> BoxFuture<'static, Outcome>;
}

/// Counters of the admin channel itself.
#[derive(Debug, Default)]
pub struct AdminCounters {
    pub requests: AtomicU64,
    pub refused_acl: AtomicU64,
    pub refused_busy: AtomicU64,
    pub unauthorized: AtomicU64,
    pub bad_requests: AtomicU64,
}

impl AdminCounters {
    pub fn bump(c: &AtomicU64) -> u64 {
        c.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The core view and the event stream, shared by the control loop (writer) and the admin
/// thread (readers).
#[derive(Debug)]
pub struct Observed {
    core: Mutex<CoreView>,
    events: broadcast::Sender<EventRecord>,
    /// Heartbeat send jitter and receive lateness: atomics, written without the lock.
    pub timing: super::timing::HeartbeatTiming,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            core: Mutex::new(CoreView::default()),
            events: broadcast::channel(EVENT_BACKLOG).0,
            timing: super::timing::HeartbeatTiming::default(),
        }
    }
}

impl Observed {
    pub fn core(&self) -> CoreView {
        self.core.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn update(&self, f: impl FnOnce(&mut CoreView)) {
        if let Ok(mut c) = self.core.lock() {
            f(&mut c);
        }
    }

    /// Publishes an event to every SSE reader (none listening is fine).
    pub fn publish(&self, at_ms: u64, kind: &str, message: String) {
        let _ = self.events.send(EventRecord { at_ms, kind: kind.to_string(), message });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }
}
