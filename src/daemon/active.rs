//! The control loop of active-active mode (`cluster.mode: "active-active"`).
//!
//! No election and no ARP for the VIPs: the engine is active from the start, the VIP is
//! reached through the upstream router, which learns it over BGP from this ATM's BIRD
//! ([`crate::platform::linux::bird`]). The decision to announce or withdraw is the core's
//! [`Announcer`]; this loop only feeds it:
//!
//! * **data plane**: every [`PROBE_EVERY`] a no-op control is queued to the TUN worker; the
//!   worker is up while it runs them (an answer within [`DATAPLANE_LIMIT`]);
//! * **health**: the verdicts of [`super::health::run`] (every server starts up, as in the
//!   engine), teed to the engine and to the announcer;
//! * **arbitration**: every `probe_interval_ms` each reachlist host is pinged and the count of
//!   answers handed in (`min_reachable` of them needed);
//! * **signals**: SIGTERM/SIGINT withdraw every VIP, wait `bgp.drain_ms`, stop BIRD, exit;
//!   SIGHUP with a valid changed config does the same, then restarts with it.
//!
//! Every ATM sends its connection changes to every other ATM and applies theirs insert-only
//! (an active engine never lets a peer's record replace its own): a flow moved here by the
//! router after another ATM's loss, whose Maglev choice changed since it began, still finds
//! its real server.
//!
//! One log line per change of the announced set, target `clusterserverd::bgp`:
//!
//! ```text
//! INFO clusterserverd::bgp: announce node=atm1 vips=[10.0.0.99] withdrawn=[] reasons=""
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::health::{self, ServerSink};
use super::processor::DaemonProcessor;
use super::{DaemonError, Next, io_err, load};
use crate::config::Config;
use crate::core::announce::{Action, Announcer, Input};
use crate::dataplane::io::tun::Shell;
use crate::platform::linux::bird::{self, Bird};
use crate::time::Instant;

/// How often the data plane's liveness is probed and BIRD's process checked.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Probe ticks between two attempts to start a BIRD that is not running (2 s).
const RESTART_EVERY: u64 = 10;
/// A data plane that has not run a queued control for this long counts as down.
pub const DATAPLANE_LIMIT: Duration = Duration::from_secs(1);

/// Health verdicts to the engine (as in primary/backup mode) and to the announcer.
struct Tee<'a> {
    shell: &'a Shell<DaemonProcessor>,
    verdicts: mpsc::UnboundedSender<(usize, usize, bool)>,
}

impl ServerSink for Tee<'_> {
    fn set_up(&self, service: usize, server: usize, up: bool) -> bool {
        let ok = self.shell.set_up(service, server, up);
        if ok {
            let _ = self.verdicts.send((service, server, up));
        }
        ok
    }
}

/// Runs ATM `me` in active-active mode until a graceful stop (or a reload).
pub(super) async fn control(
    shell: &Shell<DaemonProcessor>,
    path: &Path,
    cfg: &Config,
    me: usize,
) -> Result<Next, DaemonError> {
    let node = &cfg.atms[me].name;
    let bgp = cfg.bgp.as_ref().ok_or_else(|| DaemonError::Config("active-active without bgp".into()))?;
    let bgp = &bgp.for_atm(node);
    let sig = |k: SignalKind| signal(k).map_err(io_err("signal handler"));
    let (mut term, mut int, mut hup) =
        (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::hangup())?);
    let start = tokio::time::Instant::now();
    let now = move || Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let drain = Duration::from_millis(bgp.drain_ms);
    let mut announcer = Announcer::new(&cfg.services, cfg.arbitration.min_reachable, drain);
    let mut bird: Option<Bird> = None;
    let mut written = String::new();
    let (vtx, mut vrx) = mpsc::unbounded_channel();
    let tee = Tee { shell, verdicts: vtx };
    let checks = health::run(&cfg.services, &tee);
    // As on a primary: the DR servers' neighbour entries stay resolved (see `keep_resolved`).
    let hops = super::direct_next_hops(cfg);
    let resolve = super::keep_resolved(&hops);
    tokio::pin!(checks, resolve);
    let ack = Arc::new(AtomicU64::new(0));
    let mut sent: u64 = 0;
    let mut last_ack_at = tokio::time::Instant::now();
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reach_every = Duration::from_millis(cfg.arbitration.probe_interval_ms);
    let mut reach = tokio::time::interval(reach_every);
    let mut reach_round: FuturesUnordered<_> = FuturesUnordered::new();
    let mut reload: Option<Box<Config>> = None;
    let mut ticks: u64 = 0;
    tracing::info!(target: "clusterserverd", node = %node, mode = "active-active", sync_port = cfg.sync_port(), "ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        while let Some(action) = announcer.poll_action() {
            match action {
                Action::Announce(vips) => {
                    log_announce(cfg, node, &announcer, &vips);
                    written = bird::render(cfg, me, &vips);
                    apply_bird(bgp, &mut bird, &written).await;
                }
                Action::Exit => {
                    if let Some(b) = bird.take() {
                        b.stop().await;
                    }
                    return Ok(reload.map_or(Next::Exit, Next::Reload));
                }
            }
        }
        let wait = announcer.poll_timeout().map(|t| t.saturating_since(now()));
        let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(sleep);
        tokio::select! {
            biased;
            Some((service, server, up)) = vrx.recv() => announcer.handle(now(), Input::Server { service, server, up }),
            _ = term.recv() => stop(&mut announcer, now(), node, "SIGTERM"),
            _ = int.recv() => stop(&mut announcer, now(), node, "SIGINT"),
            _ = hup.recv() => match load(path) {
                Err(e) => tracing::error!(target: "clusterserverd", node = %node, error = %e, "reload refused: invalid config; the running config is kept"),
                Ok(new) if new.digest() == cfg.digest() => tracing::info!(target: "clusterserverd", node = %node, "reload: config unchanged"),
                Ok(new) => {
                    reload = Some(Box::new(new));
                    stop(&mut announcer, now(), node, "SIGHUP (reload: withdraw, drain, restart with the new config)");
                }
            },
            _ = probe.tick() => {
                let up = dataplane_probe(shell, &ack, &mut sent, &mut last_ack_at);
                announcer.handle(now(), Input::DataPlane(up));
                ticks += 1;
                if bird.as_mut().is_some_and(|b| !b.running()) {
                    tracing::error!(target: "clusterserverd::bgp", node = %node, "BIRD exited: restarting it");
                    bird = None;
                }
                // A BIRD that failed to start is retried every RESTART_EVERY ticks.
                if bird.is_none() && !written.is_empty() && ticks % RESTART_EVERY == 0 {
                    apply_bird(bgp, &mut bird, &written).await;
                }
            }
            _ = reach.tick(), if !cfg.arbitration.reachlist.is_empty() && reach_round.is_empty() => {
                let timeout = Duration::from_millis(cfg.arbitration.probe_timeout_ms);
                reach_round.push(reachable(&cfg.arbitration.reachlist, timeout));
            }
            Some(n) = reach_round.next(), if !reach_round.is_empty() => announcer.handle(now(), Input::Reachable(n)),
            _ = &mut checks => unreachable!("health checks run forever"),
            _ = &mut resolve => unreachable!("neighbour refresh runs forever"),
            _ = &mut sleep => announcer.handle(now(), Input::Timeout),
        }
    }
}

fn stop(announcer: &mut Announcer, now: Instant, node: &str, why: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(target: "clusterserverd", node = %node, why, "stopping: withdrawing the VIPs, draining, then stopping BIRD");
    announcer.handle(now, Input::Shutdown);
}

/// Queues a no-op that records its sequence number when the worker runs it; the data plane
/// is up while the last recorded one is recent.
fn dataplane_probe(
    shell: &Shell<DaemonProcessor>,
    ack: &Arc<AtomicU64>,
    sent: &mut u64,
    last_ack_at: &mut tokio::time::Instant,
) -> bool {
    let seen = ack.load(Ordering::Acquire);
    if seen > 0 && seen + 1 >= *sent {
        *last_ack_at = tokio::time::Instant::now();
    }
    *sent += 1;
    let (a, n) = (Arc::clone(ack), *sent);
    let queued = shell.apply(Arc::new(move |_: &mut DaemonProcessor| a.store(n, Ordering::Release)));
    queued.is_ok() && last_ack_at.elapsed() < DATAPLANE_LIMIT
}

/// Pings every reachlist host at once; the number that answered.
async fn reachable(hosts: &[IpAddr], timeout: Duration) -> u32 {
    let pings = hosts.iter().map(|h| async move {
        match h {
            IpAddr::V4(a) => crate::platform::linux::icmp::ping(*a, timeout).await.unwrap_or(false),
            IpAddr::V6(_) => false,
        }
    });
    let answers = futures::future::join_all(pings).await;
    answers.into_iter().filter(|&ok| ok).count() as u32
}

/// Starts BIRD with `config`, or has the running one apply it. Failures are logged: the
/// next change or liveness check tries again (an unreachable BIRD announces nothing).
async fn apply_bird(bgp: &crate::config::Bgp, bird: &mut Option<Bird>, config: &str) {
    let r = match bird {
        Some(b) => b.reconfigure(config).await,
        None => Bird::start(bgp, config).await.map(|b| *bird = Some(b)),
    };
    if let Err(e) = r {
        tracing::error!(target: "clusterserverd::bgp", error = %e, "BIRD");
    }
}

fn log_announce(cfg: &Config, node: &str, announcer: &Announcer, vips: &BTreeSet<IpAddr>) {
    let all = cfg.services.iter().map(|s| s.vip).collect::<BTreeSet<_>>();
    let withdrawn: Vec<IpAddr> = all.difference(vips).copied().collect();
    let reasons: Vec<String> =
        withdrawn.iter().filter_map(|v| announcer.blocked(*v).map(|b| format!("{v}:{b:?}"))).collect();
    let shown: Vec<IpAddr> = vips.iter().copied().collect();
    tracing::info!(target: "clusterserverd::bgp", node = %node, vips = ?shown, withdrawn = ?withdrawn, reasons = %reasons.join(","), "announce");
}
