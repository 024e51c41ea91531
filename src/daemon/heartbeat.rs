//! The heartbeat thread: the election driver ([`run_atm`] over the [`LinuxPlatform`]) on an
//! OS thread of its own with its own current-thread tokio runtime.
//!
//! ## Why a thread of its own
//!
//! On the daemon's main runtime the driver shared one thread with the ARP serve loop, the
//! health checks (an HTTP check parsing a slow answer, an `exec` check's process spawn), the
//! reload work (netlink dumps, the data plane's reload wait) and the admin requests: any of
//! them could hold a heartbeat back by as long as it ran without yielding. At 5 ms heartbeats
//! and a dead interval of 15 ms, one such stall of 10 ms is half a failover. Here nothing but
//! the election and its side effects runs on the heartbeat thread:
//!
//! * heartbeats in and out (the UDP socket is registered with this thread's reactor);
//! * taking and releasing VIPs (an atomic engine flag queued to the data plane's workers and
//!   the ARP responder's held set), the gratuitous ARP (a direct packet-socket send: the
//!   first one leaves at the instant of promotion), reachability probes (ICMP on this
//!   runtime), role events and observations to the admin channel (short locks, a broadcast
//!   channel that never blocks);
//! * commands in: [`Command`] over the existing channel (signals, admin, reloads);
//! * optional real-time priority (`timers.realtime_priority`,
//!   [`crate::platform::linux::realtime`]), applied by the thread to itself.
//!
//! Timers: the core's heartbeat deadlines do not drift (each one is the previous plus the
//! interval); tokio's timer wheel has a 1 ms resolution, so a heartbeat leaves up to about
//! 1 ms after its deadline, which the send-jitter histogram shows, and never accumulates.
//!
//! The thread ends when the driver returns (after a [`Command::Shutdown`], or when the
//! command channel closes, which the driver treats as one); its result comes back on a
//! oneshot channel the control loop selects on.

use std::io;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::DaemonError;
use crate::config::Config;
use crate::driver::{Command, run_atm};
use crate::platform::linux::atm::LinuxPlatform;

/// A running heartbeat thread.
#[derive(Debug)]
pub(super) struct HeartbeatThread {
    /// The driver's result, once it has returned.
    pub done: oneshot::Receiver<io::Result<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl HeartbeatThread {
    /// Starts the driver of ATM `me` on its own thread.
    pub fn spawn(
        platform: Arc<LinuxPlatform>,
        cfg: Config,
        me: usize,
        secret: Vec<u8>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<Self, DaemonError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| DaemonError::Io { what: "heartbeat runtime".into(), source })?;
        platform.set_realtime_priority(cfg.timers.realtime_priority);
        let (tx, done) = oneshot::channel();
        let join = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let r = rt.block_on(run_atm(&*platform, &cfg, me, secret, commands)).map(drop);
                let _ = tx.send(r);
            })
            .map_err(|source| DaemonError::Io { what: "heartbeat thread".into(), source })?;
        Ok(HeartbeatThread { done, join: Some(join) })
    }

    /// Waits for the thread to end (the command channel must be closed or a shutdown sent,
    /// or this waits for ever).
    pub fn join(mut self) {
        if let Some(j) = self.join.take()
            && j.join().is_err()
        {
            tracing::error!(target: "clusterserverd", "the heartbeat thread panicked");
        }
    }
}
