//! The admin channel: HTTP/1.1 + JSON on TCP `admin_port` (17101), for `cmc` and the web
//! console, and Prometheus metrics at `/metrics`.
//!
//! * [`acl`]: the allow/deny CIDR lists, checked at accept;
//! * [`token`]: the bearer token file (mode 0600) and its constant-time check;
//! * [`server`]: the accept loop (ACL, connection limit, header timeout), the routes, the
//!   request timeout and body cap;
//! * [`state`]: the core view, the event stream and the [`state::Backend`] trait through
//!   which requests reach the data plane and the control loop;
//! * [`metrics`]: the exposition, names `clusterserver_*`;
//! * [`model`]: the JSON bodies, shared with `cmc`;
//! * [`client`]: the small HTTP client `cmc` uses.
//!
//! ## Why a thread of its own
//!
//! The server runs on a dedicated thread with its own single-threaded tokio runtime
//! ([`start`]), never on the data-plane workers and not on the control loop's runtime
//! either: parsing a burst of requests must not delay a heartbeat. The thread runs at nice
//! [`ADMIN_NICE`], so under CPU pressure the heartbeats and the data plane come first. The control loop publishes
//! its state after every step ([`CoreBridge`]), and requests that change something go back
//! to it over channels, so promote/demote/stop/start pass through the core's state machine
//! exactly as a signal or the simulator's steps do.
//!
//! ## Endpoints (all need `Authorization: Bearer TOKEN`)
//!
//! | method, path | does |
//! | --- | --- |
//! | `GET /v1/status` | role, epoch, VIPs, peers (last heard, config digest, mismatch); in active-active mode role `active` and each VIP's announcement |
//! | `GET /v1/services` | services and servers: health, weight, admin state, connections |
//! | `GET /v1/stats` | heartbeat, engine, table, sync and admin counters |
//! | `GET /v1/connections?service=&server=&client=&offset=&limit=` | a page of the table |
//! | `GET /v1/events` | server-sent events: role, peer, health, held, refused, action |
//! | `GET /metrics` | OpenMetrics text |
//! | `POST /v1/services/S/servers/R/weight` `{"weight": N}` | set a weight (0..=65535) |
//! | `POST /v1/services/S/servers/R/{drain,enable,disable}` | operator state |
//! | `POST /v1/{promote,demote,reload}` | through the core / as SIGHUP |
//! | `POST /v1/forwarding/{start,stop,restart}` | candidate again / hand over and stay backup / in-process restart |
//!
//! In active-active mode (`cluster.mode`, no election; see `daemon::active`) the same routes
//! answer from the same sources; `stop`/`start` withdraw / announce the VIPs again over BGP,
//! `reload`/`restart` withdraw, drain and restart, and `promote`/`demote` are refused (409,
//! "active-active mode has no primary").
//!
//! Errors are `{"error": "..."}` with 400 (malformed), 401 (token), 404 (no such name),
//! 408 (too slow), 409 (refused by the core or the engine), 413 (body over the cap).

pub mod acl;
pub mod client;
pub mod metrics;
pub mod model;
pub mod server;
pub mod state;
pub mod timing;
pub mod token;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Socket, Type};
use tokio::sync::watch;

use crate::core::atm::AtmCore;
use crate::core::election::{Event, Role};
use crate::time::Instant;
use state::Observed;

/// Publishes the control core's state and events to the admin channel. Owned by the
/// platform; called on the control loop.
#[derive(Debug)]
pub struct CoreBridge {
    observed: Arc<Observed>,
    names: Vec<String>,
    node: String,
}

impl CoreBridge {
    pub fn new(observed: Arc<Observed>, names: Vec<String>, node: String) -> Self {
        CoreBridge { observed, names, node }
    }

    /// After every driver step: copy what the status and metrics show.
    pub fn observe(&self, now: Instant, atm: &AtmCore) {
        let e = atm.election();
        self.observed.update(|c| {
            c.role = Some(atm.role());
            c.epoch = atm.epoch();
            c.held = e.held();
            c.peers.clear();
            c.peers.extend((0..e.config().atm_count).filter_map(|i| e.peer_view(i)));
            c.observed_ms = now.as_millis();
            c.observed_at = Some(tokio::time::Instant::now());
            c.stats.clone_from(atm.stats());
        });
    }

    /// The heartbeat timing histograms (recorded on the heartbeat thread).
    pub fn timing(&self) -> &timing::HeartbeatTiming {
        &self.observed.timing
    }

    fn peer(&self, i: usize) -> &str {
        self.names.get(i).map_or("?", String::as_str)
    }

    /// A core event, as an SSE record.
    pub fn event(&self, now: Instant, ev: &Event) {
        let n = &self.node;
        let (kind, msg) = match ev {
            Event::Promoted { epoch, reason } => {
                self.observed.update(|c| {
                    c.failovers += 1;
                    c.role = Some(Role::Primary);
                });
                ("role", format!("{n} became primary (epoch {epoch}, {reason:?})"))
            }
            Event::Demoted { epoch, reason } => {
                ("role", format!("{n} became backup (epoch {epoch}, {reason:?})"))
            }
            Event::PeerUp { peer } => ("peer", format!("peer {} up", self.peer(*peer))),
            Event::PeerDown { peer } => ("peer", format!("peer {} down", self.peer(*peer))),
            Event::ConfigMismatch { peer } => {
                ("peer", format!("peer {} runs a different config", self.peer(*peer)))
            }
            Event::ConfigAgrees { peer } => {
                ("peer", format!("peer {} runs the same config again", self.peer(*peer)))
            }
            Event::ReachChanged { reachable, total } => ("peer", format!("reachlist {reachable}/{total}")),
            Event::HandoverStarted { to } => ("handover", format!("{n} hands over to {}", self.peer(*to))),
            Event::PromoteRequested { primary } => {
                ("handover", format!("{n} asks primary {} to hand over", self.peer(*primary)))
            }
            Event::Refused { what, why } => ("refused", format!("{what}: {why}")),
            Event::Rejected { reason, count } => {
                ("heartbeat", format!("heartbeat rejected: {} (#{count})", reason.name()))
            }
            Event::Draining { ms } => ("role", format!("{n} handed over; draining {ms} ms")),
            Event::Exiting => ("role", format!("{n} exiting")),
            Event::Held { held: true } => ("held", format!("forwarding stopped on {n}")),
            Event::Held { held: false } => ("held", format!("forwarding started on {n}")),
        };
        self.observed.publish(now.as_millis(), kind, msg);
    }

    /// One health-check run finished.
    pub fn check_ran(
        &self,
        probe: crate::health::ProbeId,
        kind: &'static str,
        outcome: &crate::health::Outcome,
    ) {
        use crate::health::Outcome;
        self.observed.update(|c| {
            let v = c.checks.entry((probe.service, probe.server, probe.check)).or_default();
            v.kind = kind;
            match outcome {
                Outcome::Pass { latency } => {
                    v.passes += 1;
                    v.last_latency = *latency;
                    v.latency_sum += *latency;
                }
                Outcome::Fail { latency, .. } => {
                    v.failures += 1;
                    v.last_latency = *latency;
                    v.latency_sum += *latency;
                }
                Outcome::Timeout => v.timeouts += 1,
            }
        });
    }

    /// Active-active mode, after every step of its control loop: whether an operator holds
    /// forwarding and each VIP's announcement (there is no election: `role` stays `None`,
    /// which the status reports as `active`).
    pub fn observe_active(&self, held: bool, vips: Vec<model::VipAnnouncement>) {
        self.observed.update(|c| {
            c.held = held;
            c.announce = Some(vips);
            c.observed_at = Some(tokio::time::Instant::now());
        });
    }

    /// An event of a control loop that has no core [`Event`] for it (active-active mode).
    pub fn publish(&self, at_ms: u64, kind: &str, message: String) {
        self.observed.publish(at_ms, kind, message);
    }

    /// A health verdict that reached the engine.
    pub fn health(&self, now_ms: u64, service: &str, server: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        self.observed.publish(now_ms, "health", format!("{service}/{server} {state}"));
    }
}

/// The admin thread's nice value: below the control loop and the data plane (nice 0).
pub const ADMIN_NICE: i32 = 10;

/// A running admin server thread.
#[derive(Debug)]
pub struct AdminHandle {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

impl AdminHandle {
    /// Stops accepting, ends open connections and joins the thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds `port` on every address (IPv6 dual-stack where the host has IPv6, else IPv4; the
/// ACL judges mapped IPv4 peers as IPv4) with `SO_REUSEADDR`, so an in-process restart can
/// bind again at once.
pub fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    let v6 = || -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s)
    };
    let s = match v6() {
        Ok(s) => s,
        Err(_) => {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            s
        }
    };
    s.listen(128)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Starts the admin server on its own thread (see the module docs).
pub fn start(
    listener: std::net::TcpListener,
    ctx: Arc<server::AdminContext>,
) -> std::io::Result<AdminHandle> {
    let local_addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let thread = std::thread::Builder::new().name("cs-admin".into()).spawn(move || {
        if let Err(e) = crate::platform::linux::netsys::nice_this_thread(ADMIN_NICE) {
            tracing::warn!(target: "clusterserverd::admin", error = %e, "cannot lower the admin thread's priority");
        }
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => server::serve(l, ctx, stop_rx).await,
                Err(e) => tracing::error!(target: "clusterserverd::admin", error = %e, "admin listener"),
            }
        });
    })?;
    Ok(AdminHandle { stop, thread: Some(thread), local_addr })
}
