//! Side effects behind traits: the heartbeat socket, VIPs, gratuitous ARP, reachability
//! probes, the clock and the event log.
//!
//! The [`crate::driver`] is generic over [`Platform`]. The daemon's implementation is
//! [`linux::atm::LinuxPlatform`] (tokio sockets, AF_PACKET ARP, ICMP, the TUN data plane);
//! the simulator
//! (`clustersim`) implements it over turmoil's sockets and an in-memory LAN. A trait rather
//! than a cargo feature: features merge across a workspace build, and the real binary must
//! never end up with simulated sockets.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::core::election::Event;
use crate::core::heartbeat::Heartbeat;
use crate::failover;
use crate::time::Instant;

/// A bound UDP socket.
pub trait DatagramSocket {
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>>;
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>>;
}

/// Everything the ATM driver needs from the outside world.
pub trait Platform {
    type Socket: DatagramSocket;

    /// The current time, on the clock the traces use.
    fn now(&self) -> Instant;

    /// A number that grows across restarts of this ATM (heartbeat incarnation).
    fn incarnation(&self) -> u64;

    /// Binds the heartbeat socket on `port`, broadcast allowed.
    fn bind_heartbeat(&self, port: u16) -> impl Future<Output = io::Result<Self::Socket>>;

    /// The broadcast address heartbeats go to, if broadcasting is possible here.
    fn broadcast_address(&self) -> Option<IpAddr>;

    /// Adds the VIPs to this host (idempotent).
    fn take_vips(&self, vips: &[IpAddr]) -> impl Future<Output = io::Result<()>>;

    /// Removes the VIPs from this host (idempotent).
    fn release_vips(&self, vips: &[IpAddr]) -> impl Future<Output = io::Result<()>>;

    /// Stops answering and announcing the VIPs but keeps forwarding what still arrives for
    /// them (a graceful exit's drain; the process exits afterwards).
    fn drain_vips(&self, vips: &[IpAddr]) -> impl Future<Output = io::Result<()>>;

    /// A live reload removed these VIPs from a primary: stop answering for them, while the
    /// data plane keeps serving the VIPs that remain.
    fn drop_vips(&self, vips: &[IpAddr]) -> impl Future<Output = io::Result<()>>;

    /// Announces the VIPs with one gratuitous ARP each.
    fn send_garp(&self, vips: &[IpAddr]) -> impl Future<Output = io::Result<()>>;

    /// Whether `target` answers within `timeout`.
    fn probe(&self, target: IpAddr, timeout: Duration) -> impl Future<Output = bool>;

    /// Records an event (the daemon logs it; the simulator also writes it to its trace).
    fn record(&self, now: Instant, event: &Event);

    /// Called by the driver after each step with the ATM core's state, for observers
    /// (the daemon's admin channel). The default does nothing (the simulator).
    fn observe(&self, _now: Instant, _atm: &crate::core::atm::AtmCore) {}

    /// A heartbeat due at `scheduled` went out at `sent` (the daemon's send-jitter
    /// histogram). Called from the send path: must not block or allocate. Default: nothing.
    fn heartbeat_sent(&self, scheduled: Instant, sent: Instant) {
        let _ = (scheduled, sent);
    }

    /// An authenticated heartbeat was accepted at `now` (the daemon's receive-lateness
    /// histogram). Called from the receive path: must not block or allocate. Default:
    /// nothing.
    fn heartbeat_received(&self, now: Instant, hb: &Heartbeat) {
        let _ = (now, hb);
    }

    /// Reports a failed side effect (the driver carries on: the next heartbeat or
    /// announcement retries).
    fn record_error(&self, now: Instant, what: &str, err: &io::Error);

    /// Runs a service-failover command (`argv`, no shell) in its own process group, killed
    /// with its group at `timeout`, its output logged; whether it exited 0 in time. A
    /// platform without service failover runs nothing and fails.
    fn run_service_command(&self, cmd: &ServiceCommand<'_>, timeout: Duration) -> impl Future<Output = bool> {
        let _ = (cmd, timeout);
        async { false }
    }

    /// Copies mirror set `set` of failover group `group` to ATM `to`; whether it succeeded.
    fn mirror_set(&self, group: usize, set: usize, to: usize) -> impl Future<Output = bool> {
        let _ = (group, set, to);
        async { false }
    }

    /// Records a service-failover event.
    fn record_failover(&self, now: Instant, event: &failover::Event) {
        let _ = (now, event);
    }
}

/// One service-failover command, for [`Platform::run_service_command`].
#[derive(Clone, Copy, Debug)]
pub struct ServiceCommand<'a> {
    pub group: usize,
    pub service: usize,
    pub step: failover::Step,
    pub argv: &'a [String],
}

/// The Linux platform of the daemon, and the system calls without a safe binding (setns,
/// AF_PACKET bind, reactor registration).
#[cfg(target_os = "linux")]
pub mod linux;
