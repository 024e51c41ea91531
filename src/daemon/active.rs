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
//! * **reload** (SIGHUP, `cmc reload`, `cmc sync config --apply`): the change plan applied
//!   live by the same [`Reloader`] as in primary/backup mode (data plane in place, steering,
//!   checks, admin config), then the announcer gets the new services with each server's
//!   state as the engine has it ([`Announcer::reconfigure`]) and BIRD is reconfigured in
//!   place for new neighbours or timers. Nothing is withdrawn: a VIP that stays serviceable
//!   stays announced (its flows on unchanged servers untouched), a new VIP is announced at once
//!   (a new service's servers start up, as at start-up; a server added to a service that
//!   stays counts once its checks pass), a removed one is withdrawn. Only a
//!   plan with handover keys withdraws, drains and restarts;
//! * **admin channel** ([`crate::admin`], the same server, backend and bridge as in
//!   primary/backup mode): every server change an operator applies (weight, drain, enable,
//!   disable) reaches the engine directly and the announcer here (a VIP whose servers are all
//!   drained is withdrawn); `stop` holds the ATM out ([`Input::Hold`]: every VIP withdrawn,
//!   the daemon and its engine run on, serving what the router still sends while it moves the
//!   flows away, as during a graceful drain) and `start` announces again; `reload` is SIGHUP
//!   and `restart` withdraws, drains and restarts with the running config; `promote`/`demote` are refused: there is
//!   no primary. After every step the announcer's state is published for `GET /v1/status`
//!   (role `active`, each VIP announced or why not) and `/metrics`.
//!
//! Every ATM sends its connection changes to every other ATM and applies theirs insert-only
//! (an active engine never lets a peer's record replace its own): a flow moved here by the
//! router after another ATM's loss, whose Maglev choice changed since it began, still finds
//! its real server.
//!
//! **Full sync on join**: at start (and after an in-process restart) the loop has the worker
//! ask every peer for its whole table ([`DaemonProcessor::start_join`]) and holds the
//! announcement ([`Announcer::join_sync`], reason `syncing`) until every peer's end marker
//! has arrived or `bgp.join_sync_ms` has passed. The outcome is logged once: INFO with the
//! time it took, or WARN naming the peers that did not answer (down, or unreachable: flows
//! the router moves here whose server set changed since they began may then break).
//!
//! One log line per change of the announced set, target `clusterserverd::bgp`:
//!
//! ```text
//! INFO clusterserverd::bgp: announce node=atm1 vips=[10.0.0.99] withdrawn=[] reasons=""
//! ```
//!
//! The same change is an `announce` event on the admin channel's stream.

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

use super::admin::{ControlRequest, ServerChange};
use super::health::{self, Publishing, ServerSink};
use super::processor::DaemonProcessor;
use super::reload::Reloader;
use super::{DaemonError, Next, ReloadAnswer, io_err};
use crate::admin::CoreBridge;
use crate::admin::model::VipAnnouncement;
use crate::admin::state::{ControlOp, Outcome};
use crate::config::Config;
use crate::core::announce::{Action, Announcer, Input, JoinSync};
use crate::platform::linux::bird::{self, Bird};
use crate::platform::linux::shell::plane::DataPlane;
use crate::time::Instant;

/// How often the data plane's liveness is probed and BIRD's process checked.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Probe ticks between two attempts to start a BIRD that is not running (2 s).
const RESTART_EVERY: u64 = 10;
/// A data plane that has not run a queued control for this long counts as down.
pub const DATAPLANE_LIMIT: Duration = Duration::from_secs(1);

/// Why `promote` and `demote` are refused in this mode.
pub const NO_PRIMARY: &str =
    "active-active mode has no primary: every ATM forwards (use stop/start to withdraw or announce)";

/// Health verdicts to the engine and the admin channel (as in primary/backup mode) and to
/// the announcer.
struct Tee<'a> {
    publish: Publishing<'a>,
    verdicts: mpsc::UnboundedSender<(usize, usize, bool)>,
}

impl ServerSink for Tee<'_> {
    fn set_up(&self, service: usize, server: usize, up: bool) -> bool {
        let ok = self.publish.set_up(service, server, up);
        if ok {
            let _ = self.verdicts.send((service, server, up));
        }
        ok
    }

    fn check_ran(&self, probe: crate::health::ProbeId, outcome: &crate::health::Outcome) {
        self.publish.check_ran(probe, outcome);
    }

    fn reconfigured(&self, services: &[crate::config::Service]) {
        self.publish.reconfigured(services);
    }
}

/// The control loop's end of the admin channel.
#[derive(Debug)]
pub(super) struct AdminLink {
    /// Publishes the state and events read by `GET /v1/status`, `/v1/events`, `/metrics`.
    pub bridge: CoreBridge,
    /// Control operations (stop, start, reload, restart; promote and demote are refused).
    pub requests: mpsc::UnboundedReceiver<ControlRequest>,
    /// Server changes the backend applied to the engine, for the announcer.
    pub server_changes: mpsc::UnboundedReceiver<ServerChange>,
}

/// Runs ATM `me` in active-active mode until a graceful stop (or a reload that needs a
/// restart). `health_rx`: the live reloads of the checks (the reloader holds the sender).
pub(super) async fn control(
    r: &Reloader<'_>,
    path: &Path,
    cfg: &Config,
    mut admin: AdminLink,
    health_rx: mpsc::UnboundedReceiver<health::Update>,
) -> Result<Next, DaemonError> {
    let (shell, me) = (r.shell, r.me);
    let node = &cfg.atms[me].name;
    let mut bgp = bgp_for(cfg, node)?;
    let mut running = cfg.clone();
    let sig = |k: SignalKind| signal(k).map_err(io_err("signal handler"));
    let (mut term, mut int, mut hup) =
        (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::hangup())?);
    // The process's clock origin: instants mean the same moment in every loop.
    let start = crate::platform::linux::clock::origin();
    let now = crate::platform::linux::clock::now;
    let drain = Duration::from_millis(bgp.drain_ms);
    let mut announcer = Announcer::new(&cfg.services, cfg.arbitration.min_reachable, drain);
    let mut bird: Option<Bird> = None;
    let mut written = String::new();
    let (vtx, mut vrx) = mpsc::unbounded_channel();
    let publish = Publishing {
        shell,
        bridge: Some(&admin.bridge),
        since: start,
        services: std::cell::RefCell::new(cfg.services.clone()),
    };
    let tee = Tee { publish, verdicts: vtx };
    let at_ms = move || start.elapsed().as_millis() as u64;
    let checks = health::run(&cfg.services, &tee, Some(health_rx));
    // As on a primary: the DR servers' neighbour entries stay resolved (see `keep_resolved`).
    let resolve = super::keep_resolved(&r.hops);
    tokio::pin!(checks, resolve);
    let ack = Arc::new(AtomicU64::new(0));
    let mut sent: u64 = 0;
    let mut last_ack_at = tokio::time::Instant::now();
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reach_every = Duration::from_millis(cfg.arbitration.probe_interval_ms);
    let mut reach = tokio::time::interval(reach_every);
    let mut reach_round: FuturesUnordered<_> = FuturesUnordered::new();
    let mut reload: Option<Box<Config>> = None;
    let mut ticks: u64 = 0;
    // Full sync on join: gate the announcement until every peer's table is here.
    let join_wait = Duration::from_millis(bgp.join_sync_ms);
    let (join_tx, mut join_rx) = tokio::sync::watch::channel(None);
    let mut joining = cfg.sync.connections && !join_wait.is_zero();
    if joining {
        announcer.join_sync(now(), join_wait);
        let progress = Arc::new(join_tx);
        let started =
            shell.apply(Arc::new(move |p: &mut DaemonProcessor| p.start_join(Arc::clone(&progress))));
        if let Err(e) = started {
            tracing::error!(target: "clusterserverd::bgp", node = %node, error = %e, "cannot start the full sync on join: announcing after the wait");
        }
        tracing::info!(target: "clusterserverd::bgp", node = %node, wait_ms = bgp.join_sync_ms, "joining: asking every peer for its connection table before announcing");
    }
    let mut missing: Vec<std::net::SocketAddr> = Vec::new();
    tracing::info!(target: "clusterserverd", node = %node, mode = "active-active", sync_port = cfg.sync_port(), "ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        if joining && !matches!(announcer.join_state(), JoinSync::Waiting { .. }) {
            joining = false;
            log_join(&admin.bridge, at_ms(), node, announcer.join_state(), &missing);
        }
        while let Some(action) = announcer.poll_action() {
            match action {
                Action::Announce(vips) => {
                    let line = log_announce(&running, node, &announcer, &vips);
                    admin.bridge.publish(at_ms(), "announce", line);
                    written = bird::render(&running, me, &vips);
                    apply_bird(&bgp, &mut bird, &written).await;
                }
                Action::Exit => {
                    if let Some(b) = bird.take() {
                        b.stop().await;
                    }
                    return Ok(reload.map_or(Next::Exit, Next::Reload));
                }
            }
        }
        admin.bridge.observe_active(announcer.held(), announcements(&running, &announcer));
        let wait = announcer.poll_timeout().map(|t| t.saturating_since(now()));
        let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(sleep);
        tokio::select! {
            biased;
            Some((service, server, up)) = vrx.recv() => announcer.handle(now(), Input::Server { service, server, up }),
            _ = term.recv() => stop(&mut announcer, now(), node, "SIGTERM"),
            _ = int.recv() => stop(&mut announcer, now(), node, "SIGINT"),
            _ = hup.recv(), if !announcer.stopping() => {
                // reload_from logs every outcome (invalid: refused, the running config kept).
                let mut st = ReloadState { announcer: &mut announcer, verdicts: &mut vrx, reach: &mut reach, reach_every: &mut reach_every, bgp: &mut bgp, bird: &mut bird, written: &mut written };
                if let ReloadAnswer::Restart(new, _) = reload_here(r, path, &mut running, &mut st, now).await? {
                    reload = Some(new);
                    stop(&mut announcer, now(), node, "SIGHUP (reload needs a restart: withdraw, drain, restart with the new config)");
                }
            }
            Some((op, reply)) = admin.requests.recv() => {
                if op == ControlOp::Reload && !announcer.stopping() {
                    let mut st = ReloadState { announcer: &mut announcer, verdicts: &mut vrx, reach: &mut reach, reach_every: &mut reach_every, bgp: &mut bgp, bird: &mut bird, written: &mut written };
                    let out = match reload_here(r, path, &mut running, &mut st, now).await? {
                        ReloadAnswer::Done(m) => Ok(m),
                        ReloadAnswer::Refused(why) => Err(why),
                        ReloadAnswer::Restart(new, m) => {
                            reload = Some(new);
                            stop(&mut announcer, now(), node, "admin reload (needs a restart: withdraw, drain, restart with the new config)");
                            Ok(format!("{m}\nactive-active: withdrawing, draining and restarting"))
                        }
                    };
                    if let Err(why) = &out {
                        admin.bridge.publish(at_ms(), "refused", format!("reload: {why}"));
                    }
                    let _ = reply.send(out);
                    continue;
                }
                let r = admin_op(op, &mut announcer, now(), &mut reload, r, path, &running, node);
                match (op, &r) {
                    (ControlOp::Stop | ControlOp::Start, Ok(m)) => admin.bridge.publish(at_ms(), "held", m.clone()),
                    (_, Err(why)) => admin.bridge.publish(at_ms(), "refused", format!("{}: {why}", op.name())),
                    _ => {}
                }
                let _ = reply.send(r);
            }
            Some((service, server, weight)) = admin.server_changes.recv() => {
                announcer.handle(now(), Input::Weight { service, server, weight });
            }
            Ok(()) = join_rx.changed(), if joining => {
                if let Some(m) = join_rx.borrow_and_update().clone() {
                    missing = m;
                    if missing.is_empty() {
                        announcer.handle(now(), Input::Synced);
                    }
                }
            }
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
                    apply_bird(&bgp, &mut bird, &written).await;
                }
            }
            _ = reach.tick(), if !running.arbitration.reachlist.is_empty() && reach_round.is_empty() => {
                let timeout = Duration::from_millis(running.arbitration.probe_timeout_ms);
                reach_round.push(reachable(running.arbitration.reachlist.clone(), timeout));
            }
            Some(n) = reach_round.next(), if !reach_round.is_empty() => announcer.handle(now(), Input::Reachable(n)),
            _ = &mut checks => unreachable!("health checks run forever"),
            _ = &mut resolve => unreachable!("neighbour refresh runs forever"),
            _ = &mut sleep => announcer.handle(now(), Input::Timeout),
        }
    }
}

/// One control operation from the admin channel; the outcome goes back to the operator (and
/// for stop and start, as the `held` event the admin server waits for).
#[allow(clippy::too_many_arguments)] // reason: the loop's state, passed apart to keep borrows short
fn admin_op(
    op: ControlOp,
    announcer: &mut Announcer,
    now: Instant,
    reload: &mut Option<Box<Config>>,
    r: &Reloader<'_>,
    path: &Path,
    cfg: &Config,
    node: &str,
) -> Outcome {
    match op {
        _ if announcer.stopping() => Err("the daemon is stopping or restarting".into()),
        ControlOp::Promote | ControlOp::Demote => Err(NO_PRIMARY.into()),
        ControlOp::Stop if announcer.held() => Err("already stopped".into()),
        ControlOp::Start if !announcer.held() => Err("not stopped".into()),
        ControlOp::Stop | ControlOp::Start => {
            let hold = op == ControlOp::Stop;
            announcer.handle(now, Input::Hold(hold));
            tracing::info!(target: "clusterserverd", node = %node, held = hold, "forwarding stopped or started by an operator");
            Ok(match hold {
                true => format!("forwarding stopped on {node}: every VIP withdrawn"),
                false => format!("forwarding started on {node}: VIPs announced where they can be served"),
            })
        }
        // Handled by the loop (it is applied asynchronously); only reached while stopping.
        ControlOp::Reload => Err("the daemon is stopping or restarting".into()),
        ControlOp::ReloadPlan => super::plan_of(r, path, cfg),
        ControlOp::Restart => {
            *reload = Some(Box::new(cfg.clone()));
            stop(announcer, now, node, "admin restart (withdraw, drain, restart)");
            Ok("withdrawing, draining and restarting".into())
        }
    }
}

/// Each VIP (config order, once) with whether it is announced and why not.
fn announcements(cfg: &Config, announcer: &Announcer) -> Vec<VipAnnouncement> {
    let announced = announcer.announced();
    let mut vips: Vec<IpAddr> = Vec::new();
    for v in cfg.services.iter().map(|s| s.vip) {
        if !vips.contains(&v) {
            vips.push(v);
        }
    }
    vips.into_iter()
        .map(|v| VipAnnouncement {
            vip: v.to_string(),
            announced: announced.contains(&v),
            reason: announcer.blocked(v).map(|b| b.name().to_string()),
        })
        .collect()
}

fn stop(announcer: &mut Announcer, now: Instant, node: &str, why: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(target: "clusterserverd", node = %node, why, "stopping: withdrawing the VIPs, draining, then stopping BIRD");
    announcer.handle(now, Input::Shutdown);
}

/// Queues a no-op that records its sequence number when the worker runs it; the data plane
/// is up while the last recorded one is recent.
fn dataplane_probe(
    shell: &DataPlane<DaemonProcessor>,
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

/// The `bgp` section as ATM `node` uses it (the config refuses active-active without one).
fn bgp_for(cfg: &Config, node: &str) -> Result<crate::config::Bgp, DaemonError> {
    cfg.bgp
        .as_ref()
        .map(|b| b.for_atm(node))
        .ok_or_else(|| DaemonError::Config("active-active without bgp".into()))
}

/// What a live reload changes in the loop's state.
struct ReloadState<'a> {
    announcer: &'a mut Announcer,
    verdicts: &'a mut mpsc::UnboundedReceiver<(usize, usize, bool)>,
    reach: &'a mut tokio::time::Interval,
    reach_every: &'a mut Duration,
    bgp: &'a mut crate::config::Bgp,
    bird: &'a mut Option<Bird>,
    written: &'a mut String,
}

/// A reload (SIGHUP or `cmc reload`): verdicts already queued are handed in first (their
/// indices are the running config's), then the file is planned and, when it can be, applied
/// live ([`super::reload_from`]: data plane, steering, checks, admin) and the announcer and
/// BIRD follow; `Restart` is for the caller (withdraw, drain, restart).
async fn reload_here(
    r: &Reloader<'_>,
    path: &Path,
    running: &mut Config,
    st: &mut ReloadState<'_>,
    now: impl Fn() -> Instant,
) -> Result<ReloadAnswer, DaemonError> {
    while let Ok((service, server, up)) = st.verdicts.try_recv() {
        st.announcer.handle(now(), Input::Server { service, server, up });
    }
    let old = running.clone();
    let node = old.atms[r.me].name.clone();
    let answer = super::reload_from(r, path, running, &node).await;
    if matches!(answer, ReloadAnswer::Done(_)) && running.digest() != old.digest() {
        live_applied(r, &old, running, st.announcer, st.reach, st.reach_every).await;
        *st.bgp = bgp_for(running, &node)?;
        rewrite_bird(running, r.me, st.bgp, st.announcer, st.bird, st.written).await;
    }
    Ok(answer)
}

/// After a reload applied live: the announcer gets the new services with each server's
/// state as the engine now has it (a new server of a checked service counts once its checks
/// pass), the new threshold and drain; the reachlist round follows a new interval. A VIP
/// that stays serviceable is not withdrawn.
async fn live_applied(
    r: &Reloader<'_>,
    old: &Config,
    new: &Config,
    announcer: &mut Announcer,
    reach: &mut tokio::time::Interval,
    reach_every: &mut Duration,
) {
    let states = match r.server_states().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(target: "clusterserverd::bgp", error = %e, "cannot read the servers' states after the reload: counting every server up until its next verdict");
            Vec::new()
        }
    };
    let drain = Duration::from_millis(new.bgp.as_ref().map_or(0, |b| b.drain_ms));
    announcer.reconfigure(&new.services, &states, new.arbitration.min_reachable, drain);
    if new.arbitration.probe_interval_ms != old.arbitration.probe_interval_ms {
        *reach_every = Duration::from_millis(new.arbitration.probe_interval_ms);
        *reach = tokio::time::interval(*reach_every);
    }
}

/// Has BIRD apply the config a reload implies (new neighbours, timers; the announced set is
/// the announcer's): `birdc configure` restarts only the sessions whose settings changed.
async fn rewrite_bird(
    cfg: &Config,
    me: usize,
    bgp: &crate::config::Bgp,
    announcer: &Announcer,
    bird: &mut Option<Bird>,
    written: &mut String,
) {
    if written.is_empty() {
        return;
    }
    let text = bird::render(cfg, me, &announcer.announced());
    if text != *written {
        *written = text;
        apply_bird(bgp, bird, written).await;
        tracing::info!(target: "clusterserverd::bgp", "BIRD reconfigured for the reload (unchanged sessions stay up)");
    }
}

/// Pings every reachlist host at once; the number that answered.
async fn reachable(hosts: Vec<IpAddr>, timeout: Duration) -> u32 {
    let pings = hosts
        .into_iter()
        .map(|h| async move { crate::platform::linux::icmp::ping_ip(h, timeout).await.unwrap_or(false) });
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

/// Logs (and publishes as a `join` event) how the full sync on join ended.
fn log_join(bridge: &CoreBridge, at_ms: u64, node: &str, state: JoinSync, missing: &[std::net::SocketAddr]) {
    let line = match state {
        JoinSync::Synced { since, at } => {
            let waited_ms = at.saturating_since(since).as_millis() as u64;
            tracing::info!(target: "clusterserverd::bgp", node = %node, waited_ms, "joined: the connection table of every peer whose daemon runs received; announcing");
            format!("{node} has every peer's connection table after {waited_ms} ms")
        }
        JoinSync::TimedOut { since, at } => {
            let waited_ms = at.saturating_since(since).as_millis() as u64;
            let peers: Vec<String> = missing.iter().map(|p| p.ip().to_string()).collect();
            let peers = if peers.is_empty() {
                "all (the worker did not report)".to_string()
            } else {
                peers.join(",")
            };
            tracing::warn!(target: "clusterserverd::bgp", node = %node, waited_ms, missing = %peers, "JOIN SYNC INCOMPLETE: announcing without these peers' connection tables (down or unreachable?); flows moved here whose server set changed since they began may break");
            format!("{node} announces without the connection tables of {peers} after {waited_ms} ms")
        }
        JoinSync::Waiting { .. } => return,
    };
    bridge.publish(at_ms, "join", line);
}

/// Logs a change of the announced set; returns it as one line for the event stream.
fn log_announce(cfg: &Config, node: &str, announcer: &Announcer, vips: &BTreeSet<IpAddr>) -> String {
    let all = cfg.services.iter().map(|s| s.vip).collect::<BTreeSet<_>>();
    let withdrawn: Vec<IpAddr> = all.difference(vips).copied().collect();
    let reasons: Vec<String> =
        withdrawn.iter().filter_map(|v| announcer.blocked(*v).map(|b| format!("{v}:{b:?}"))).collect();
    let shown: Vec<IpAddr> = vips.iter().copied().collect();
    let reasons = reasons.join(",");
    tracing::info!(target: "clusterserverd::bgp", node = %node, vips = ?shown, withdrawn = ?withdrawn, reasons = %reasons, "announce");
    format!("{node} announces {shown:?}, withdrawn {withdrawn:?} {reasons}").trim_end().to_string()
}
