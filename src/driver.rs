//! The async glue between the control core and a [`Platform`].
//!
//! [`run_atm`] owns one [`AtmCore`]: it carries out the core's actions through the platform,
//! feeds it datagrams, probe results, operator commands and timeouts, and turns
//! `poll_timeout` into a sleep. It holds no decision of its own. Every `select!` is `biased`
//! (inputs before timers, in a fixed order) so that a simulated run is a pure function of its
//! seed: an unbiased `select!` picks branches at random.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::config::{Config, HeartbeatMode};
use crate::core::atm::AtmCore;
use crate::core::election::{Action, AdminRequest, ElectionConfig};
use crate::core::heartbeat::HEARTBEAT_LEN;
use crate::failover::{self, Failover, Timing};
use crate::platform::{DatagramSocket, Platform, ServiceCommand};
use crate::time::Instant;

/// Requests from outside the ATM core (signals, the admin channel, the simulator).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Graceful stop: hand over, then return.
    Shutdown,
    Admin(AdminRequest),
    /// A live reload whose plan needs no handover (see [`crate::config::diff`]): the ATM
    /// keeps its role, epoch and peers; heartbeat targets, the reachlist and the timers
    /// follow the new config.
    Reconfigure(Box<Config>),
}

/// The link-local multicast group of heartbeats between ATMs with IPv6 addresses, in place
/// of broadcast (which IPv6 lacks): `ff02::17:100` ("17100", the heartbeat port). Every
/// cluster on the link shares it, as clusters share a broadcast address; the cluster id and
/// the authenticator inside each heartbeat keep them apart.
pub const HEARTBEAT_GROUP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x17, 0x100);

/// Where heartbeats go: the broadcast address (or IPv6 group) and/or every other ATM, per
/// config.
pub fn heartbeat_targets(cfg: &Config, me: usize, broadcast: Option<IpAddr>, port: u16) -> Vec<SocketAddr> {
    let mode = cfg.cluster.heartbeat_mode;
    let mut out = Vec::new();
    if mode != HeartbeatMode::Unicast {
        out.extend(broadcast.map(|b| SocketAddr::new(b, port)));
    }
    if mode != HeartbeatMode::Broadcast {
        let peers = cfg.atms.iter().enumerate().filter(|(i, _)| *i != me);
        out.extend(peers.map(|(_, a)| SocketAddr::new(a.address, port)));
    }
    out
}

/// Runs ATM `me` of `cfg` until a [`Command::Shutdown`] has been carried out (or the command
/// channel closes, which counts as a shutdown). Returns the ATM core for inspection.
pub async fn run_atm<P: Platform>(
    platform: &P,
    cfg: &Config,
    me: usize,
    secret: Vec<u8>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> io::Result<AtmCore> {
    let port = cfg.heartbeat_port();
    let sock = platform.bind_heartbeat(port).await?;
    let mut targets = heartbeat_targets(cfg, me, platform.broadcast_address(), port);
    let mut reachlist = cfg.arbitration.reachlist.clone();
    let mut probe_timeout = Duration::from_millis(cfg.arbitration.probe_timeout_ms);
    // Owned: a reload replaces it while jobs of the old one may still run.
    let mut current = Rc::new(cfg.clone());
    let ecfg = ElectionConfig::from_config(cfg, me);
    let mut atm = AtmCore::new(ecfg, secret, platform.incarnation(), platform.now());
    let mut probes = FuturesUnordered::new();
    let mut jobs = FuturesUnordered::new();
    let mut groups = GroupSync::new(cfg, me, platform.now());
    let mut commands_open = true;
    let mut buf = [0u8; 2048];
    // The heartbeat deadline as the last wait began (see `Platform::heartbeat_sent`).
    let mut hb_due: Option<Instant> = None;
    loop {
        if let Some(s) = &mut groups {
            s.sync(&mut atm, platform.now());
            while let Some(action) = s.machine.poll_action() {
                match action {
                    failover::Action::Event(e) => platform.record_failover(platform.now(), &e),
                    a => jobs.push(run_job(platform, Rc::clone(&current), a)),
                }
            }
            atm.set_holding(s.machine.holding());
        }
        while let Some(action) = atm.poll_action() {
            match action {
                Action::SendHeartbeat(hb) => {
                    let bytes: [u8; HEARTBEAT_LEN] = atm.seal(&hb);
                    // The first heartbeat after its deadline passed is the scheduled one.
                    let sent = platform.now();
                    if let Some(due) = hb_due.take().filter(|d| *d <= sent) {
                        platform.heartbeat_sent(due, sent);
                    }
                    for t in &targets {
                        if let Err(e) = sock.send_to(&bytes, *t).await {
                            platform.record_error(platform.now(), "send heartbeat", &e);
                        }
                    }
                }
                Action::TakeVips(v) => report(platform, "take VIPs", platform.take_vips(&v).await),
                Action::ReleaseVips(v) => report(platform, "release VIPs", platform.release_vips(&v).await),
                Action::DrainVips(v) => report(platform, "drain VIPs", platform.drain_vips(&v).await),
                Action::DropVips(v) => report(platform, "drop VIPs", platform.drop_vips(&v).await),
                Action::SendGarp(v) => report(platform, "gratuitous ARP", platform.send_garp(&v).await),
                Action::Probe { target } => {
                    if let Some(&addr) = reachlist.get(target) {
                        probes.push(async move { (target, platform.probe(addr, probe_timeout).await) });
                    }
                }
                Action::Event(ev) => platform.record(platform.now(), &ev),
                Action::Exit => return Ok(atm),
            }
        }
        platform.observe(platform.now(), &atm);
        let now = platform.now();
        let failover_due = groups.as_ref().and_then(|s| s.machine.poll_timeout());
        let due = atm.poll_timeout().into_iter().chain(failover_due).min();
        let wait = due.map_or(Duration::from_secs(3600), |t| t.saturating_since(now));
        hb_due = Some(atm.election().heartbeat_due());
        let mut sleep = pin!(tokio::time::sleep(wait));
        tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, _)) => {
                    let now = platform.now();
                    atm.handle_datagram(now, &buf[..n]);
                    if let Some(hb) = atm.take_accepted() {
                        platform.heartbeat_received(now, &hb);
                    }
                }
                Err(e) => platform.record_error(platform.now(), "receive heartbeat", &e),
            },
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Command::Admin(r)) => atm.handle_admin(platform.now(), r),
                Some(Command::Shutdown) => atm.handle_shutdown(platform.now()),
                Some(Command::Reconfigure(new)) => {
                    targets = heartbeat_targets(&new, me, platform.broadcast_address(), port);
                    reachlist = new.arbitration.reachlist.clone();
                    probe_timeout = Duration::from_millis(new.arbitration.probe_timeout_ms);
                    atm.reconfigure(platform.now(), ElectionConfig::from_config(&new, me));
                    current = Rc::from(new);
                }
                None => {
                    commands_open = false;
                    atm.handle_shutdown(platform.now());
                }
            },
            Some((target, ok)) = probes.next(), if !probes.is_empty() => {
                atm.handle_probe(platform.now(), target, ok);
            }
            Some(input) = jobs.next(), if !jobs.is_empty() => {
                if let Some(s) = &mut groups {
                    s.machine.handle(platform.now(), input);
                }
            }
            _ = &mut sleep => {
                atm.handle_timeout(platform.now());
                if let Some(s) = &mut groups {
                    s.machine.handle(platform.now(), failover::Input::Tick);
                }
            }
        }
    }
}

/// The service-failover machine beside the ATM core, fed from the election's view of the peers.
struct GroupSync {
    machine: Failover,
    /// Per ATM: what the machine was last told (up, holding).
    told: Vec<Option<(bool, u16)>>,
    me: usize,
}

impl GroupSync {
    /// `None` when this ATM is in no failover group.
    fn new(cfg: &Config, me: usize, now: Instant) -> Option<Self> {
        let f = &cfg.failover;
        if !f.groups.iter().any(|g| g.atm == me || g.backup == me) {
            return None;
        }
        // Twice the dead interval: a heartbeat there and back after a restart (failover docs).
        let dead_ms = cfg.timers.heartbeat_ms * u64::from(cfg.timers.dead_after);
        let timing = Timing::from_config(f, Duration::from_millis(2 * dead_ms));
        let machine = Failover::new(f, me, cfg.atms.len(), timing, now);
        Some(GroupSync { machine, told: vec![None; cfg.atms.len()], me })
    }

    /// Tells the machine what changed in the election's view: peers up or down with their
    /// holding maps, and this ATM's arbitration verdict.
    fn sync(&mut self, core: &mut AtmCore, now: Instant) {
        let e = core.election();
        for atm in (0..self.told.len()).filter(|&a| a != self.me) {
            let holding = e.peer_holding(atm);
            let state = (holding.is_some(), holding.unwrap_or(0));
            if self.told[atm] != Some(state) {
                self.told[atm] = Some(state);
                let input = failover::Input::Peer { atm, up: state.0, holding: state.1 };
                self.machine.handle(now, input);
            }
        }
        let standby = !e.is_eligible(now);
        self.machine.handle(now, failover::Input::Standby(standby));
    }
}

/// Carries out one command, copy or arbitration round; its result as the machine's input.
async fn run_job<P: Platform>(platform: &P, cfg: Rc<Config>, action: failover::Action) -> failover::Input {
    match action {
        failover::Action::Run { id, group, service, step, argv, timeout } => {
            let cmd = ServiceCommand { group, service, step, argv: &argv };
            let ok = platform.run_service_command(&cmd, timeout).await;
            failover::Input::CommandDone { id, ok }
        }
        failover::Action::Mirror { id, group, set, to } => {
            let ok = platform.mirror_set(group, set, to).await;
            failover::Input::MirrorDone { id, ok }
        }
        // A fresh round: every reachlist host probed now, the rule applied to these alone.
        failover::Action::Arbitrate => {
            let timeout = Duration::from_millis(cfg.arbitration.probe_timeout_ms);
            let probes = cfg.arbitration.reachlist.iter().map(|&h| platform.probe(h, timeout));
            let ok = futures_util::future::join_all(probes).await.into_iter().filter(|&r| r).count();
            failover::Input::Arbitrated { ok: ok as u64 >= u64::from(cfg.arbitration.min_reachable) }
        }
        failover::Action::Event(_) => unreachable!("events are recorded, not run"),
    }
}

fn report<P: Platform>(platform: &P, what: &str, r: io::Result<()>) {
    if let Err(e) = r {
        platform.record_error(platform.now(), what, &e);
    }
}
