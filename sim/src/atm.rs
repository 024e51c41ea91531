//! A simulated ATM: the real [`clusterserver::driver::run_atm`] over [`SimAtm`], a
//! [`Platform`] made of turmoil sockets and the world's LAN, beside the real packet engine
//! ([`crate::dataplane`]).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use clusterserver::config::Config;
use clusterserver::core::election::{DemoteReason, Event, Role};
use clusterserver::driver::run_atm;
use clusterserver::failover::{self, Step};
use clusterserver::platform::{Platform, ServiceCommand};
use clusterserver::time::Instant;
use tokio::sync::mpsc;

use crate::dataplane::DataplaneSpec;
use crate::net::{ARP_PORT, BROADCAST, ECHO_PORT, Freezable, Killable, SimClock, SimSocket};
use crate::world::Shared;

/// The simulator's platform for one ATM.
#[derive(Debug)]
pub struct SimAtm {
    world: Shared,
    name: String,
    clock: SimClock,
    incarnation: u64,
    atm_names: Vec<String>,
    /// Failover: how long a simulated command or copy takes.
    command_ms: u64,
}

impl SimAtm {
    fn log(&self, text: impl AsRef<str>) {
        self.world.borrow_mut().log(self.clock.ms(), &self.name, text);
    }
}

impl Platform for SimAtm {
    type Socket = SimSocket;

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    async fn bind_heartbeat(&self, port: u16) -> io::Result<SimSocket> {
        SimSocket::bind(&self.world, &self.name, port).await
    }

    fn broadcast_address(&self) -> Option<IpAddr> {
        Some(BROADCAST)
    }

    async fn take_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        self.world.borrow_mut().host(&self.name).vips.extend(vips.iter().copied());
        Ok(())
    }

    async fn release_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        let mut w = self.world.borrow_mut();
        let h = w.host(&self.name);
        for v in vips {
            h.vips.remove(v);
        }
        Ok(())
    }

    async fn drain_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        let mut w = self.world.borrow_mut();
        let h = w.host(&self.name);
        h.draining = true;
        for v in vips {
            h.vips.remove(v);
        }
        Ok(())
    }

    async fn drop_vips(&self, vips: &[IpAddr]) -> io::Result<()> {
        let mut w = self.world.borrow_mut();
        let h = w.host(&self.name);
        for v in vips {
            h.vips.remove(v);
        }
        Ok(())
    }

    /// A gratuitous ARP for each IPv4 VIP and an unsolicited Neighbor Advertisement
    /// (Override) for each IPv6 one, as the daemon's announcer sends them.
    async fn send_garp(&self, vips: &[IpAddr]) -> io::Result<()> {
        let sock = SimSocket::bind(&self.world, &self.name, 0).await?;
        for v in vips {
            match v {
                IpAddr::V4(_) => {
                    sock.send(format!("GARP {v}").as_bytes(), SocketAddr::new(BROADCAST, ARP_PORT)).await?;
                }
                IpAddr::V6(v6) => {
                    let link = self.world.borrow().hosts.get(&self.name).and_then(|h| h.addr);
                    if let Some(link) = link {
                        crate::ndp::send(&sock, &crate::ndp::unsolicited(link, *v6)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn probe(&self, target: IpAddr, timeout: Duration) -> bool {
        let Ok(sock) = SimSocket::bind(&self.world, &self.name, 0).await else { return false };
        if sock.send(b"PING", SocketAddr::new(target, ECHO_PORT)).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(timeout, sock.recv(&mut buf)).await, Ok(Ok(_)))
    }

    fn record(&self, now: Instant, event: &Event) {
        let mut w = self.world.borrow_mut();
        let text = describe(&self.atm_names, event);
        w.log(now.as_millis(), &self.name, text);
        let h = w.host(&self.name);
        match *event {
            Event::Promoted { epoch, .. } => {
                h.role = Some(Role::Primary);
                h.epoch = epoch;
                h.promotions.push((now.as_millis(), epoch));
            }
            Event::PeerUp { .. } => h.resync = true,
            Event::Demoted { epoch, .. } => {
                h.role = Some(Role::Backup);
                h.epoch = epoch;
            }
            Event::Rejected { reason, count } => {
                let key = (self.name.clone(), reason.name());
                let prev = w.rejected.insert(key, count).unwrap_or(0);
                w.rejected_total += count - prev;
            }
            _ => {}
        }
    }

    fn record_error(&self, _now: Instant, what: &str, err: &io::Error) {
        self.log(format!("error: {what}: {err}"));
    }

    /// A simulated S or K script: `service NAME start` when it begins, `... started` when it
    /// is done (a stop: `stop`, `stopped`). The runner's checker reads these lines.
    async fn run_service_command(&self, cmd: &ServiceCommand<'_>, _timeout: Duration) -> bool {
        let name = cmd.argv.first().cloned().unwrap_or_default();
        let (begin, end) = if cmd.step == Step::Start { ("start", "started") } else { ("stop", "stopped") };
        self.log(format!("service {name} {begin}"));
        tokio::time::sleep(Duration::from_millis(self.command_ms)).await;
        self.log(format!("service {name} {end}"));
        true
    }

    async fn mirror_set(&self, _group: usize, set: usize, to: usize) -> bool {
        tokio::time::sleep(Duration::from_millis(self.command_ms)).await;
        let to = self.atm_names.get(to).cloned().unwrap_or_default();
        self.log(format!("mirrored set {set} to {to}"));
        true
    }

    fn record_failover(&self, _now: Instant, event: &failover::Event) {
        self.log(format!("failover: {event:?}"));
    }
}

/// Trace text of an event, with peer indexes turned into names.
fn describe(names: &[String], event: &Event) -> String {
    let n = |i: &usize| names.get(*i).cloned().unwrap_or_else(|| format!("atm#{i}"));
    match event {
        Event::Promoted { epoch, reason } => format!("promoted epoch={epoch} reason={reason:?}"),
        Event::Demoted { epoch, reason } => match reason {
            DemoteReason::HigherPrimary { peer, epoch: theirs } => {
                format!("demoted epoch={epoch} reason=HigherPrimary({} epoch={theirs})", n(peer))
            }
            r => format!("demoted epoch={epoch} reason={r:?}"),
        },
        Event::PeerUp { peer } => format!("peer {} up", n(peer)),
        Event::PeerDown { peer } => format!("peer {} down", n(peer)),
        Event::ConfigMismatch { peer } => format!("peer {} runs a different config", n(peer)),
        Event::ConfigAgrees { peer } => format!("peer {} runs the same config again", n(peer)),
        Event::ReachChanged { reachable, total } => format!("reachlist {reachable}/{total}"),
        Event::HandoverStarted { to } => format!("handing over to {}", n(to)),
        Event::PromoteRequested { primary } => format!("asking {} to hand over", n(primary)),
        Event::Refused { what, why } => format!("refused {what}: {why}"),
        Event::Rejected { reason, count } => format!("rejected heartbeat: {} (#{count})", reason.name()),
        Event::Draining { ms } => format!("handed over; draining {ms} ms"),
        Event::Exiting => "exiting".to_string(),
        Event::Held { held: true } => "forwarding stopped by an operator".to_string(),
        Event::Held { held: false } => "forwarding started by an operator".to_string(),
    }
}

/// The software of an ATM host: kernel + (freezable) daemon and data plane.
pub fn software(
    world: Shared,
    name: String,
    cfg: Rc<Config>,
    me: usize,
    secret: Vec<u8>,
    command_ms: u64,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = turmoil::Result>>> {
    move || {
        let (world, name, secret) = (world.clone(), name.clone(), secret.clone());
        // A daemon (re)starting reads the config file as the `reload` steps left it.
        let file = world.borrow().config_file.clone().filter(|f| f.cluster.id == cfg.cluster.id);
        let cfg = file.unwrap_or_else(|| cfg.clone());
        Box::pin(async move {
            world.borrow_mut().host_started(&name);
            // Machines do not boot on the same millisecond: start 0-149 ms late (from the seed).
            let delay = world.borrow_mut().rng.next_u64() % 150;
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            tokio::task::spawn_local(crate::kernel::kernel(world.clone(), name.clone()));
            let (tx, rx) = mpsc::unbounded_channel();
            let (dp_tx, dp_rx) = mpsc::unbounded_channel();
            {
                let mut w = world.borrow_mut();
                let h = w.host(&name);
                h.commands = Some(tx);
                h.dataplane = Some(dp_tx);
                h.running_config = Some(cfg.clone());
            }
            let clock = SimClock::start();
            let incarnation = turmoil::since_epoch().unwrap_or_default().as_millis() as u64;
            let atm_names = cfg.atms.iter().map(|a| a.name.clone()).collect();
            let spec = DataplaneSpec { cfg: cfg.clone(), me, secret: secret.clone(), session: incarnation };
            let platform = SimAtm {
                world: world.clone(),
                name: name.clone(),
                clock,
                incarnation,
                atm_names,
                command_ms,
            };
            let daemon = async {
                tokio::select! {
                    biased;
                    r = run_atm(&platform, &cfg, me, secret, rx) => r.map(|_| ()),
                    r = crate::dataplane::run(world.clone(), name.clone(), spec, clock, dp_rx) => r,
                }
            };
            let Some(result) = Killable::new(&world, &name, Freezable::new(&world, &name, daemon)).await
            else {
                // Killed: the daemon is gone, the host and its kernel stay up until restarted.
                std::future::pending::<()>().await;
                return Ok(());
            };
            world.borrow_mut().host(&name).running = false;
            result.map_err(|e| e.into())
        })
    }
}
