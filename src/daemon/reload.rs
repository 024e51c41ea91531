//! Live reload of a primary/backup ATM: the change plan ([`crate::config::diff`]) applied in
//! place, so a routine change never moves the primary and never drops a request.
//!
//! SIGHUP, `cmc reload` and `cmc sync config --apply` all come here. The new file is loaded
//! and validated (invalid: refused, the running config kept), then planned against the
//! running config. The plan's handover keys, plus two this host adds (a VIP on an interface
//! that has no ARP socket yet; a change of the direct-routing output interface), send the
//! reload down the old path: planned handover and an in-process restart, with the keys
//! logged. Everything else is applied live, in this order:
//!
//! 1. the data plane, on the TUN worker, waited for: the engine in place (flows renumbered,
//!    removed servers' connections per `on_down`, new servers down until their checks
//!    pass), the operators' overrides carried, the sync peers;
//! 2. steering rules for new VIPs and NAT servers (rtnetlink), an ATM's own node set-up
//!    when it is also a real server (VIPs on `lo` added or removed), and the ARP responder's
//!    VIP map;
//! 3. the core ([`Command::Reconfigure`]): timers, ARP settings and digest; a primary takes
//!    new VIPs with a gratuitous-ARP burst and stops answering for removed ones;
//! 4. the health checks ([`health::Update`]), the admin channel's config, ACL and token,
//!    the neighbour refresh list, the ATM names;
//! 5. steering rules no longer needed are removed, and the operators' overrides saved.
//!
//! Every ATM (primary and backups) applies the same plan, so a later failover finds the
//! backups current. The applied plan is logged, one line per change, target
//! `clusterserverd::reload`.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::health;
use super::processor::DaemonProcessor;
use super::{node, server_state, setup};
use crate::admin::acl::Acl;
use crate::admin::server::{Live, LiveAdmin};
use crate::config::diff::{self, How, Item, Plan, Remap};
use crate::config::{Config, Service};
use crate::dataplane::engine::{Reload, ReloadStats};
use crate::driver::Command;
use crate::platform::linux::arp::ArpResponder;
use crate::platform::linux::atm::LinuxPlatform;
use crate::platform::linux::host::IfAddr;
use crate::platform::linux::shell::netlink;
use crate::platform::linux::shell::plane::DataPlane;
use crate::platform::linux::shell::tun::Control;

/// Longest wait for the TUN worker to apply a reload.
const WORKER_LIMIT: Duration = Duration::from_secs(5);

/// What a live reload touches, owned by the control loop.
pub(super) struct Reloader<'a> {
    pub shell: &'a DataPlane<DaemonProcessor>,
    /// Primary/backup only (active-active answers no ARP for its VIPs and has no election).
    pub arp: Option<&'a ArpResponder>,
    pub platform: Option<&'a LinuxPlatform>,
    pub netlink: rtnetlink::Handle,
    pub addrs: Vec<IfAddr>,
    pub me: usize,
    /// This ATM is also a real server: its node set-up (VIPs on `lo` while backup).
    pub node: Option<super::SharedNode>,
    pub live: Arc<Live>,
    pub health: mpsc::UnboundedSender<health::Update>,
    pub hops: Rc<RefCell<Vec<Ipv4Addr>>>,
    /// The election core (primary/backup); active-active's loop updates its announcer
    /// itself after [`Reloader::reload`].
    pub core: Option<mpsc::UnboundedSender<Command>>,
    pub saver: Arc<Saver>,
}

/// What happened to a reload.
#[derive(Debug)]
pub(super) enum Outcome {
    Unchanged,
    /// Applied in place (the plan, what the engine did).
    Live(Plan, ReloadStats),
    /// Needs the planned handover and a restart with this config.
    Handover(Plan, Box<Config>),
}

impl Reloader<'_> {
    /// The plan of going from `running` to `new` on this host: the config's plan plus what
    /// this host cannot change live.
    pub fn plan(&self, running: &Config, new: &Config) -> Plan {
        let mut plan = diff::plan(running, new, Some(self.me));
        if plan.needs_handover() {
            return plan;
        }
        let iface = &new.atms[self.me].interface;
        if let Some(arp) = self.arp
            && let Err(why) = arp.check_vips(&setup::arp_interfaces(new, &self.addrs, iface))
        {
            plan.items.push(Item {
                how: How::Handover,
                key: "services.vip".into(),
                change: why,
                reason: Some("ARP sockets are opened at start-up".into()),
            });
        }
        if setup::dr_interface(running, &self.addrs, iface) != setup::dr_interface(new, &self.addrs, iface) {
            plan.items.push(Item {
                how: How::Handover,
                key: "services.forwarding".into(),
                change: "the interface of direct-routing output changes".into(),
                reason: Some("the data plane's output interface is chosen at start-up".into()),
            });
        }
        plan
    }

    /// Plans and, when possible, applies `new` in place. `running` is updated on success.
    pub async fn reload(&self, running: &mut Config, new: Config) -> Result<Outcome, String> {
        if new.digest() == running.digest() {
            return Ok(Outcome::Unchanged);
        }
        let plan = self.plan(running, &new);
        if plan.needs_handover() {
            return Ok(Outcome::Handover(plan, Box::new(new)));
        }
        let stats = self.apply(running, &new).await?;
        *running = new;
        Ok(Outcome::Live(plan, stats))
    }

    async fn apply(&self, running: &Config, new: &Config) -> Result<ReloadStats, String> {
        let remap = Remap::between(running, new);
        let stats = self.data_plane(running, new, &remap).await?;
        let owned = setup::owned(new);
        let (old_rules, new_rules) = (setup::steering(running), setup::steering(new));
        let added: Vec<_> = new_rules.iter().filter(|r| !old_rules.contains(r)).cloned().collect();
        let removed: Vec<_> = old_rules.iter().filter(|r| !new_rules.contains(r)).cloned().collect();
        if self.shell.backend() == "af_xdp" {
            // No steering rules with AF_XDP: the classifier's match set changes in place.
            self.shell
                .set_matches(&setup::xdp_matches(new, &self.addrs))
                .map_err(|e| format!("AF_XDP match set for the new VIPs and servers: {e}"))?;
        } else if !added.is_empty() {
            netlink::add_rules(&self.netlink, owned.table_id, owned.rule_priority, &added)
                .await
                .map_err(|e| format!("steering for the new VIPs and servers: {e}"))?;
        }
        if let Some(n) = &self.node {
            let (name, _, plan) = node::describe(new, &self.addrs);
            if plan != node::describe(running, &self.addrs).2 {
                let ch = n
                    .lock()
                    .await
                    .reconfigure(plan)
                    .await
                    .map_err(|e| format!("this ATM's node set-up: {e}"))?;
                tracing::info!(target: "clusterserverd::reload", node = %name, vips_added = ?ch.vips_added, vips_removed = ?ch.vips_removed, decap_changed = ch.decap, "this ATM's own node set-up changed in place");
            }
        }
        let iface = &new.atms[self.me].interface;
        if let Some(arp) = self.arp {
            arp.map_vips(&setup::arp_interfaces(new, &self.addrs, iface))?;
        }
        if let Some(core) = &self.core {
            core.send(Command::Reconfigure(Box::new(new.clone())))
                .map_err(|_| "the core has stopped".to_string())?;
        }
        let _ = self.health.send(health::Update {
            old: running.services.clone(),
            new: new.services.clone(),
            remap: remap.clone(),
        });
        self.live.set(LiveAdmin {
            cfg: Arc::new(new.clone()),
            acl: Acl::from_config(&new.security),
            token: super::load_admin_token(new),
        });
        *self.hops.borrow_mut() = super::direct_next_hops(new);
        if let Some(platform) = self.platform {
            platform.set_atm_names(new.atms.iter().map(|a| a.name.clone()).collect());
            platform.set_realtime_priority(new.timers.realtime_priority);
        }
        if !removed.is_empty()
            && self.shell.backend() == "tun"
            && let Err(e) =
                netlink::del_rules(&self.netlink, owned.table_id, owned.rule_priority, &removed).await
        {
            tracing::warn!(target: "clusterserverd::reload", error = %e, "could not remove the steering of removed VIPs or servers (removed at stop)");
        }
        self.saver.save(|f| self.shell.apply(f).map_err(|e| e.to_string())).await;
        Ok(stats)
    }

    /// Each server's (up, weight the operator leaves it) as the worker's [`ServerControl`]
    /// has them now, per service (what active-active's announcer counts).
    ///
    /// [`ServerControl`]: crate::overrides::ServerControl
    pub async fn server_states(&self) -> Result<Vec<Vec<(bool, u32)>>, String> {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        self.shell
            .apply(Arc::new(move |p: &mut DaemonProcessor| {
                let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) else { return };
                let mut out = Vec::new();
                for i in (0..).take_while(|&i| !p.engine.servers(i).is_empty()) {
                    let row = (0..p.engine.servers(i).len())
                        .map(|j| {
                            p.servers.inputs(i, j).map_or((false, 0), |x| (x.healthy, x.operator_weight()))
                        })
                        .collect();
                    out.push(row);
                }
                let _ = tx.send(out);
            }))
            .map_err(|e| format!("data plane busy or stopped: {e}"))?;
        match tokio::time::timeout(WORKER_LIMIT, rx).await {
            Ok(Ok(st)) => Ok(st),
            _ => Err("the data plane did not answer".into()),
        }
    }

    /// Step 1: the engine, the overrides and the sync peers, on the worker.
    async fn data_plane(&self, running: &Config, new: &Config, remap: &Remap) -> Result<ReloadStats, String> {
        let local: Vec<std::net::IpAddr> = self.addrs.iter().map(|a| a.addr).collect();
        let old_svcs = Service::all_settings(&crate::node::without_self(&running.services, &local));
        let new_svcs = Service::all_settings(&crate::node::without_self(&new.services, &local));
        let peers = new.sync_peers(self.me);
        let table = new.table.clone();
        let remap = remap.clone();
        let (tx, rx) = oneshot::channel();
        let job = Mutex::new(Some((tx, old_svcs, new_svcs, peers, table, remap)));
        self.shell
            .apply(Arc::new(move |p: &mut DaemonProcessor| {
                let Some((tx, old, new, peers, table, remap)) = job.lock().ok().and_then(|mut j| j.take())
                else {
                    return;
                };
                let st = p.reconfigure(&Reload { old: &old, new: &new, remap: &remap, table: &table }, peers);
                let _ = tx.send(st);
            }))
            .map_err(|e| format!("data plane busy or stopped: {e}"))?;
        match tokio::time::timeout(WORKER_LIMIT, rx).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(_)) => Err("the data plane stopped".into()),
            Err(_) => Err(format!("the data plane did not apply the reload within {WORKER_LIMIT:?}")),
        }
    }
}

/// Saves the operators' overrides (see [`server_state`]) after every change and reload.
/// Snapshots are taken on the worker in order, and a snapshot older than the last one
/// written is skipped, so two changes racing here never leave the older on disk.
#[derive(Debug)]
pub struct Saver {
    pub path: PathBuf,
    pub me: usize,
    /// The running config (names of the servers).
    pub live: Arc<Live>,
    written: Mutex<Option<u64>>,
}

impl Saver {
    pub fn new(path: PathBuf, me: usize, live: Arc<Live>) -> Self {
        Saver { path, me, live, written: Mutex::new(None) }
    }

    /// Takes a snapshot on the worker through `apply` (the shell's or a controller's) and
    /// writes it.
    pub async fn save(&self, apply: impl FnOnce(Control<DaemonProcessor>) -> Result<(), String>) {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let queued = apply(Arc::new(move |p: &mut DaemonProcessor| {
            if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(p.servers.overrides());
            }
        }));
        if let Err(e) = queued {
            tracing::warn!(target: "clusterserverd::reload", error = %e, "cannot read the operators' server overrides to save them");
            return;
        }
        let Ok(Ok((generation, overrides))) = tokio::time::timeout(WORKER_LIMIT, rx).await else { return };
        let mut last = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|l| generation < l) {
            return;
        }
        *last = Some(generation);
        let cfg = self.live.get().cfg.clone();
        if let Err(e) =
            server_state::save(&self.path, &cfg, self.me, crate::overrides::file::by_name(&cfg, &overrides))
        {
            tracing::warn!(target: "clusterserverd::reload", file = %self.path.display(), error = %e, "cannot save the operators' server overrides (they will not survive a restart)");
        }
    }
}

/// Logs the plan applied (or about to be handed over), one line per change.
pub(super) fn log_plan(node: &str, how: &str, plan: &Plan) {
    tracing::info!(target: "clusterserverd::reload", node = %node, how = %how, changes = plan.items.len(), handover = plan.needs_handover(), "reload plan: {}", plan.summary());
    for i in &plan.items {
        let how = match i.how {
            How::Live => "live",
            How::Handover => "handover",
        };
        tracing::info!(target: "clusterserverd::reload", node = %node, key = %i.key, how = %how, reason = %i.reason.as_deref().unwrap_or(""), "change: {}", i.change);
    }
}
