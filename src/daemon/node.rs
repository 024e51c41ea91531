//! The daemon on a host that is only a cluster node (real server): set the node up for its
//! services ([`crate::node`], [`crate::platform::linux::node`]), log `ready node=NAME ...`,
//! tell systemd `READY=1`, and wait for signals.
//!
//! * SIGTERM / SIGINT: undo everything (decapsulator, VIPs on `lo`, sysctls back to their
//!   previous values, state file) and exit 0.
//! * SIGHUP: re-read and validate the file; invalid: refused, the running set-up kept;
//!   unchanged: nothing; changed, and still a node of the same cluster: applied in place
//!   ([`NodeSetup::reconfigure`]: a new VIP added to `lo`, a removed one taken off, the
//!   decapsulator started or stopped, nothing else touched), logged as `reload applied
//!   live`. Otherwise (the host is now an ATM or nothing, the cluster id changed, or the
//!   live change failed): undo, then start again with the new config.
//!
//! A start always first clears what a killed run left ([`node::clear_leftovers`]).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::{DaemonError, Next, io_err, load};
use crate::config::Config;
use crate::node::{self as plan_mod, NodeNames, NodePlan};
use crate::platform::linux::host::IfAddr;
use crate::platform::linux::node::{self, NodeSetup};

/// Longest wait for the user-space decapsulator to start reading.
const DECAP_READY_LIMIT: Duration = Duration::from_secs(2);

/// This node's name (its first server entry's), the names of what it owns, and its plan.
pub(super) fn describe(cfg: &Config, addrs: &[IfAddr]) -> (String, NodeNames, NodePlan) {
    let pairs: Vec<(String, IpAddr)> = addrs.iter().map(|a| (a.iface.clone(), a.addr)).collect();
    let local: Vec<IpAddr> = addrs.iter().map(|a| a.addr).collect();
    let me = cfg.services.iter().flat_map(|s| &s.servers).find(|s| local.contains(&s.address));
    let (name, addr) = match me {
        Some(s) => (s.name.clone(), s.address),
        None => ("node".to_string(), IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    };
    let names = plan_mod::names(cfg, &node::state_dir(), addr);
    (name, names, plan_mod::plan(cfg, &pairs))
}

/// Applies `new` to the running set-up in place when this host stays a node of the same
/// cluster (`Err`: why it cannot, and the caller restarts with `new`). Logs what changed.
async fn live_reload(
    setup: &mut NodeSetup,
    running: &Config,
    new: &Config,
    addrs: &[IfAddr],
) -> Result<(), String> {
    let local: Vec<IpAddr> = addrs.iter().map(|a| a.addr).collect();
    if !matches!(super::setup::host_role(new, &local), super::setup::HostRole::Node) {
        return Err("this host is no longer a node only".into());
    }
    let (name, names, plan) = describe(new, addrs);
    if names != describe(running, addrs).1 {
        return Err("the cluster id or this node's address changed (VIP label and state file)".into());
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    let changes = setup.reconfigure(plan).await.map_err(|e| format!("applying it live failed: {e}"))?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let p = setup.plan();
    let show = |v: &[IpAddr]| v.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(",");
    let what = match changes.is_empty() {
        true => "reload applied live: this node's set-up needs no change",
        false => "reload applied live: node set-up changed in place",
    };
    tracing::info!(target: "clusterserverd", node = %name, services = %p.services.join(","), vips = %show(&p.vips), vips_added = %show(&changes.vips_added), vips_removed = %show(&changes.vips_removed), decap_changed = changes.decap, decap = %setup.decap_kind(), "{what}");
    Ok(())
}

/// Clears leftovers, then applies the plan (VIPs on `lo` now when `vips_on_lo`).
pub(super) async fn set_up(
    handle: rtnetlink::Handle,
    names: NodeNames,
    plan: NodePlan,
    vips_on_lo: bool,
) -> Result<NodeSetup, DaemonError> {
    let cleared = node::clear_leftovers(&handle, &names).await?;
    if cleared > 0 {
        tracing::warn!(target: "clusterserverd::node", cleared, state = %names.state_file.display(), "cleared the node set-up a previous run left (killed?)");
    }
    let setup = NodeSetup::apply(handle, names, plan, vips_on_lo).await?;
    let deadline = tokio::time::Instant::now() + DECAP_READY_LIMIT;
    while !setup.decap_ready() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !setup.decap_ready() {
        tracing::warn!(target: "clusterserverd::node", "the decapsulator has not started reading yet");
    }
    Ok(setup)
}

/// Runs a node-only host until a signal.
pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    addrs: &[IfAddr],
    path: &Path,
    cfg: &Config,
) -> Result<Next, DaemonError> {
    let (name, names, plan) = describe(cfg, addrs);
    rt.block_on(async move {
        let sig = |k: SignalKind| signal(k).map_err(io_err("signal handler"));
        let (mut term, mut int, mut hup) =
            (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::hangup())?);
        let mut setup = set_up(handle, names, plan, true).await?;
        let p = setup.plan();
        let vips: Vec<String> = p.vips.iter().map(IpAddr::to_string).collect();
        tracing::info!(target: "clusterserverd", node = %name, role = %"node", services = %p.services.join(","), vips = %vips.join(","), arp_hiding = p.hides_arp(), decap = %setup.decap_kind(), "ready");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let mut running = cfg.clone();
        let next = loop {
            tokio::select! {
                biased;
                _ = term.recv() => break Next::Exit,
                _ = int.recv() => break Next::Exit,
                _ = hup.recv() => match load(path) {
                    Err(e) => tracing::error!(target: "clusterserverd", node = %name, error = %e, "reload refused: invalid config; the running config is kept"),
                    Ok(new) if new.digest() == running.digest() => tracing::info!(target: "clusterserverd", node = %name, "reload: config unchanged"),
                    Ok(new) => match live_reload(&mut setup, &running, &new, addrs).await {
                        Ok(()) => running = new,
                        Err(why) => {
                            tracing::info!(target: "clusterserverd", node = %name, why = %why, "reload: config valid and changed; undoing the node set-up and starting again with it");
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                            break Next::Reload(Box::new(new));
                        }
                    },
                },
            }
        };
        if matches!(next, Next::Exit) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        }
        let stats = setup.undo().await?;
        tracing::info!(target: "clusterserverd", node = %name, ?stats, "node set-up undone");
        if matches!(next, Next::Exit) {
            tracing::info!(target: "clusterserverd", node = %name, "stopped");
        }
        Ok(next)
    })
}
