//! [`LinuxPlatform`]: the real [`Platform`] of an ATM.
//!
//! * heartbeats: a tokio UDP socket on `0.0.0.0:port` with `SO_BROADCAST` and `SO_REUSEADDR`;
//!   the broadcast address is the one of the ATM's own address's subnet. An ATM with an
//!   IPv6 address uses an IPv6-only socket on `[::]:port` instead, joined to the link-local
//!   group [`crate::driver::HEARTBEAT_GROUP6`] on its interface, which takes broadcast's
//!   place (IPv6 has none);
//! * VIPs: *taking* a VIP activates the packet engine and makes the [`ArpResponder`] answer
//!   for it; *releasing* does the reverse. The VIP is never a kernel address (see
//!   [`super::arp`] for why: a dead daemon must answer nothing);
//! * gratuitous ARP: one frame per VIP from the [`ArpResponder`] (the core schedules count,
//!   interval and refresh);
//! * probes: ICMP echo ([`super::icmp`]);
//! * the clock: `tokio::time::Instant` since start-up, as [`crate::time::Instant`];
//! * events: `tracing` lines; role changes have a fixed, parseable form (see
//!   [`crate::daemon`]);
//! * heartbeat timing: send jitter and receive lateness into the admin channel's atomic
//!   histograms ([`crate::admin::timing`]).
//!
//! The platform is `Send + Sync`: the daemon runs the driver on a heartbeat thread of its
//! own while the main runtime (ARP serve loop, health checks, reloads, admin requests) keeps
//! a reference for reloads and the health checks' publishing. Everything the election
//! triggers from the heartbeat thread is cheap there: an atomic flag and a short lock for
//! the VIPs, a control closure queued to the data plane, a packet-socket `send` for the
//! gratuitous ARP, a lock-free histogram record per heartbeat.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::arp::ArpResponder;
use crate::core::election::{Event, Role};
use crate::core::heartbeat::Heartbeat;
use crate::failover::{self, Step};
use crate::platform::{DatagramSocket, Platform, ServiceCommand};
use crate::time::Instant;

/// What the platform asks of the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineOp {
    /// Forward (primary) or shadow (backup).
    SetActive(bool),
    /// A peer came up: stream the whole table to it (only if active).
    FullSync,
}

/// The heartbeat socket.
#[derive(Debug)]
pub struct HeartbeatSocket(UdpSocket);

impl DatagramSocket for HeartbeatSocket {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, to).await
    }
}

/// Binds a UDP socket on `0.0.0.0:port` with `SO_REUSEADDR` and `SO_BROADCAST`.
pub fn bind_udp(port: u16) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

/// Binds an IPv6-only UDP socket on `addr:port` with `SO_REUSEADDR`; with `group`
/// (`(group, interface index)`) it joins the link-local multicast group there and sends its
/// multicast out of that interface (hop limit 1, the default for multicast: the group
/// never leaves the link).
pub fn bind_udp6(
    addr: Ipv6Addr,
    port: u16,
    group: Option<(Ipv6Addr, u32)>,
) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((addr, port)).into())?;
    if let Some((g, ifindex)) = group {
        s.join_multicast_v6(&g, ifindex)?;
        s.set_multicast_if_v6(ifindex)?;
    }
    Ok(s.into())
}

/// How the heartbeat socket is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatNet {
    /// IPv4, broadcasting to the subnet's broadcast address (if it has one).
    V4 { broadcast: Option<Ipv4Addr> },
    /// IPv6 on the interface of this index, the group [`crate::driver::HEARTBEAT_GROUP6`]
    /// in broadcast's place.
    V6 { ifindex: u32 },
}

/// What the platform asks of the data plane, callable from the heartbeat thread.
pub type EngineControl = Box<dyn Fn(EngineOp) + Send + Sync>;

/// The ATM's platform. The driver runs on the daemon's heartbeat thread; the main runtime
/// shares it (module docs).
pub struct LinuxPlatform {
    start: tokio::time::Instant,
    incarnation: u64,
    node: String,
    /// Names of the ATMs by position (a reload may append some).
    atm_names: Mutex<Vec<String>>,
    net: HeartbeatNet,
    arp: Arc<ArpResponder>,
    engine: EngineControl,
    primary: AtomicBool,
    /// `timers.realtime_priority` as configured, and as last applied to the heartbeat
    /// thread (the driver's thread applies a change at its next step: see `observe`).
    realtime_wanted: AtomicU8,
    realtime_applied: AtomicU8,
    /// The admin channel's view of the core (none in tests without one).
    bridge: Option<crate::admin::CoreBridge>,
    /// Service failover: the config's groups, SSH settings and ATM addresses.
    failover: Option<FailoverSpec>,
}

/// What the platform needs to run failover commands and mirror sets.
#[derive(Clone, Debug)]
pub struct FailoverSpec {
    pub failover: crate::config::Failover,
    pub atm_addresses: Vec<IpAddr>,
}

impl std::fmt::Debug for LinuxPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxPlatform").field("node", &self.node).field("role", &self.role()).finish()
    }
}

/// A number that grows across restarts: wall-clock milliseconds at start-up.
#[allow(clippy::disallowed_methods)] // reason: the incarnation must grow across process restarts; only the wall clock does
pub fn wall_clock_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
}

impl LinuxPlatform {
    pub fn new(
        node: String,
        atm_names: Vec<String>,
        incarnation: u64,
        net: HeartbeatNet,
        arp: Arc<ArpResponder>,
        engine: EngineControl,
    ) -> Self {
        LinuxPlatform {
            start: super::clock::origin(),
            incarnation,
            node,
            atm_names: Mutex::new(atm_names),
            net,
            arp,
            engine,
            primary: AtomicBool::new(false),
            realtime_wanted: AtomicU8::new(0),
            realtime_applied: AtomicU8::new(0),
            bridge: None,
            failover: None,
        }
    }

    /// Publishes the core's state and events to the admin channel from now on.
    pub fn set_bridge(&mut self, bridge: crate::admin::CoreBridge) {
        self.bridge = Some(bridge);
    }

    pub fn bridge(&self) -> Option<&crate::admin::CoreBridge> {
        self.bridge.as_ref()
    }

    /// The origin of [`Platform::now`] (events published beside the core's use it too).
    pub fn started(&self) -> tokio::time::Instant {
        self.start
    }

    /// Enables service failover's commands and mirroring.
    pub fn with_failover(mut self, spec: FailoverSpec) -> Self {
        self.failover = Some(spec);
        self
    }

    pub fn role(&self) -> Role {
        if self.primary.load(Ordering::Relaxed) { Role::Primary } else { Role::Backup }
    }

    /// `timers.realtime_priority` (0: normal scheduling), at start-up and on a live reload:
    /// the heartbeat thread applies it at its next step.
    pub fn set_realtime_priority(&self, priority: u8) {
        self.realtime_wanted.store(priority, Ordering::Relaxed);
    }

    fn peer(&self, i: usize) -> String {
        let names = self.atm_names.lock().unwrap_or_else(PoisonError::into_inner);
        names.get(i).map_or_else(|| "?".to_string(), String::clone)
    }

    /// A live reload: the ATMs' names (appended ones are named in logs from now on).
    pub fn set_atm_names(&self, names: Vec<String>) {
        *self.atm_names.lock().unwrap_or_else(PoisonError::into_inner) = names;
    }

    fn role_change(&self, role: Role, epoch: u64, reason: String) {
        self.primary.store(role == Role::Primary, Ordering::Relaxed);
        let role = match role {
            Role::Primary => "primary",
            Role::Backup => "backup",
        };
        tracing::info!(target: "clusterserverd::role", node = %self.node, role = %role, epoch, reason = %reason, "role change");
    }
}

impl Platform for LinuxPlatform {
    type Socket = HeartbeatSocket;

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    async fn bind_heartbeat(&self, port: u16) -> io::Result<HeartbeatSocket> {
        let s = match self.net {
            HeartbeatNet::V4 { .. } => bind_udp(port)?,
            HeartbeatNet::V6 { ifindex } => {
                bind_udp6(Ipv6Addr::UNSPECIFIED, port, Some((crate::driver::HEARTBEAT_GROUP6, ifindex)))?
            }
        };
        Ok(HeartbeatSocket(UdpSocket::from_std(s)?))
    }

    fn broadcast_address(&self) -> Option<IpAddr> {
        match self.net {
            HeartbeatNet::V4 { broadcast } => broadcast.map(IpAddr::V4),
            HeartbeatNet::V6 { .. } => Some(IpAddr::V6(crate::driver::HEARTBEAT_GROUP6)),
        }
    }

    async fn take_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        // Forward first, then answer ARP: traffic never reaches an inactive engine here.
        (self.engine)(EngineOp::SetActive(true));
        self.arp.hold(vips.iter().copied());
        tracing::info!(node = %self.node, vips = ?vips, "VIPs taken");
        Ok(())
    }

    async fn release_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        self.arp.release(vips.iter().copied());
        (self.engine)(EngineOp::SetActive(false));
        tracing::info!(node = %self.node, vips = ?vips, "VIPs released");
        Ok(())
    }

    async fn drain_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        // ARP goes to the successor; the engine stays active until the process exits.
        self.arp.release(vips.iter().copied());
        tracing::info!(node = %self.node, vips = ?vips, "VIPs released; still forwarding what arrives until exit");
        Ok(())
    }

    async fn drop_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        self.arp.release(vips.iter().copied());
        tracing::info!(node = %self.node, vips = ?vips, "VIPs removed by a reload: no longer answered");
        Ok(())
    }

    async fn send_garp(&self, vips: &[IpAddr]) -> io::Result<()> {
        self.arp.announce(vips.iter().copied())
    }

    async fn probe(&self, target: IpAddr, timeout: Duration) -> bool {
        super::icmp::ping_ip(target, timeout).await.unwrap_or_else(|e| {
            tracing::warn!(%target, error = %e, "probe failed");
            false
        })
    }

    /// Also where the driver's thread applies a changed `timers.realtime_priority` to
    /// itself (the driver calls this on every step, from its own thread).
    fn observe(&self, now: Instant, atm: &crate::core::atm::AtmCore) {
        let wanted = self.realtime_wanted.load(Ordering::Relaxed);
        if wanted != self.realtime_applied.swap(wanted, Ordering::Relaxed) {
            super::realtime::apply_logged("heartbeat", wanted);
        }
        if let Some(b) = &self.bridge {
            b.observe(now, atm);
        }
    }

    fn heartbeat_sent(&self, scheduled: Instant, sent: Instant) {
        if let Some(b) = &self.bridge {
            b.timing().sent(scheduled, sent);
        }
    }

    fn heartbeat_received(&self, now: Instant, hb: &Heartbeat) {
        if let Some(b) = &self.bridge {
            b.timing().received(now, hb);
        }
    }

    fn record(&self, now: Instant, event: &Event) {
        if let Some(b) = &self.bridge {
            b.event(now, event);
        }
        let ms = now.as_millis();
        match event {
            Event::Promoted { epoch, reason } => {
                self.role_change(Role::Primary, *epoch, format!("{reason:?}"))
            }
            Event::Demoted { epoch, reason } => self.role_change(Role::Backup, *epoch, format!("{reason:?}")),
            Event::PeerUp { peer } => {
                tracing::info!(node = %self.node, peer = %self.peer(*peer), ms, "peer up");
                if self.role() == Role::Primary {
                    (self.engine)(EngineOp::FullSync);
                }
            }
            Event::PeerDown { peer } => {
                tracing::info!(node = %self.node, peer = %self.peer(*peer), ms, "peer down")
            }
            Event::ConfigMismatch { peer } => {
                tracing::warn!(node = %self.node, peer = %self.peer(*peer), "peer runs a different config")
            }
            Event::ConfigAgrees { peer } => {
                tracing::info!(node = %self.node, peer = %self.peer(*peer), "peer runs the same config again")
            }
            Event::ReachChanged { reachable, total } => {
                tracing::info!(node = %self.node, reachable, total, "reachlist")
            }
            Event::HandoverStarted { to } => {
                tracing::info!(node = %self.node, to = %self.peer(*to), "handing over")
            }
            Event::PromoteRequested { primary } => {
                tracing::info!(node = %self.node, primary = %self.peer(*primary), "promote: asking the primary to hand over")
            }
            Event::Refused { what, why } => tracing::warn!(node = %self.node, what, why, "refused"),
            Event::Rejected { reason, count } => {
                tracing::warn!(node = %self.node, reason = reason.name(), count, "heartbeat rejected")
            }
            Event::Draining { ms } => {
                tracing::info!(node = %self.node, drain_ms = ms, "handed over; draining")
            }
            Event::Exiting => tracing::info!(node = %self.node, "exiting"),
            Event::Held { held } => {
                tracing::info!(node = %self.node, held, "forwarding stopped or started by an operator")
            }
        }
    }

    fn record_error(&self, _now: Instant, what: &str, err: &io::Error) {
        tracing::warn!(node = %self.node, what, error = %err, "side effect failed");
    }

    /// In its own process group, SIGKILLed with it at the timeout (the health checks'
    /// `exec`), with `CS_ATM`, `CS_SERVICE` and `CS_STEP` (`start`/`stop`) in its
    /// environment; exit status and output logged.
    async fn run_service_command(&self, cmd: &ServiceCommand<'_>, timeout: Duration) -> bool {
        let service = self
            .failover
            .as_ref()
            .and_then(|f| f.failover.groups.get(cmd.group)?.services.get(cmd.service))
            .map_or("?", |s| s.name.as_str());
        let step = if cmd.step == Step::Start { "start" } else { "stop" };
        // Scripts shared by all ATMs learn where and what they run from the environment.
        let env = [("CS_ATM", self.node.as_str()), ("CS_SERVICE", service), ("CS_STEP", step)];
        let r = super::checks::exec_env(cmd.argv, &env, timeout).await;
        let ok = r.status == Ok(0);
        let status = match &r.status {
            Ok(code) => code.to_string(),
            Err(why) => why.clone(),
        };
        if ok {
            tracing::info!(node = %self.node, service, step, status, output = %r.output, "service command");
        } else {
            tracing::warn!(node = %self.node, service, step, status, output = %r.output, "service command failed");
        }
        ok
    }

    /// rsync over SSH, one path after the other ([`crate::synctool::rsync_argv`]); each
    /// copy may take up to an hour.
    async fn mirror_set(&self, group: usize, set: usize, to: usize) -> bool {
        let Some(f) = &self.failover else { return false };
        let (Some(ssh), Some(m), Some(&host)) = (
            f.failover.ssh.as_ref(),
            f.failover.groups.get(group).and_then(|g| g.mirrors.get(set)),
            f.atm_addresses.get(to),
        ) else {
            return false;
        };
        for path in &m.paths {
            let argv = crate::synctool::rsync_argv(ssh, host, path, true, crate::synctool::Compare::Times);
            let r = super::checks::exec(&argv, Duration::from_secs(3600)).await;
            if r.status != Ok(0) {
                tracing::warn!(node = %self.node, set = %m.name, path, to = %self.peer(to), status = ?r.status, output = %r.output, "mirror failed");
                return false;
            }
        }
        tracing::info!(node = %self.node, set = %m.name, to = %self.peer(to), "mirrored");
        true
    }

    fn record_failover(&self, now: Instant, event: &failover::Event) {
        let ms = now.as_millis();
        match event {
            failover::Event::StartFailed { .. } | failover::Event::ArbitrationFailed => {
                tracing::warn!(node = %self.node, ms, ?event, "failover");
            }
            failover::Event::Mirrored { ok: false, .. } | failover::Event::Stopped { ok: false, .. } => {
                tracing::warn!(node = %self.node, ms, ?event, "failover");
            }
            _ => tracing::info!(node = %self.node, ms, ?event, "failover"),
        }
    }
}

/// The heartbeat thread and the main runtime share the platform and the ARP responder.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<LinuxPlatform>();
    shared::<ArpResponder>();
};
