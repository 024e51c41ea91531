//! The daemon proper (`clusterserverd --config F`): works out its role, sets up the data plane
//! and runs the control core with real I/O until SIGTERM.
//!
//! ## Start-up, in order
//!
//! 1. A panic anywhere aborts the process ([`install_panic_hook`]): a half-dead daemon (the
//!    control loop gone, the data plane still forwarding, or the reverse) is worse than a dead
//!    one, which the peers detect in a dead interval.
//! 2. The config is loaded and validated; open ports are filled from `/etc/services`
//!    (`clusterserver`/udp, `clusterserveradm`/tcp), else 17100 / 17101 (seed 001).
//! 3. The role comes from the host's IPv4 addresses (rtnetlink dump, [`setup::host_role`]):
//!    an address of a listed ATM makes this host that ATM (and also a node if it is a real
//!    server); only a server's address makes it a node ([`node`]: loopback VIPs, ARP hiding,
//!    decapsulation, NAT route check; it then runs until signalled); neither is an error.
//! 4. A quiet period ([`quiet_period`], twice the dead interval plus two heartbeats) before
//!    anything is sent: a daemon restarted quickly (systemd, SIGKILL + restart, a reload) is
//!    then seen by its peers as down and up again, and the primary streams its whole table to
//!    the new, empty shadow engine. (The core also reports a quick restart on its own, from
//!    the new incarnation in the heartbeats; the quiet period stays as a second line, and so
//!    that a restarted ex-primary's peers have settled on a new primary before it speaks.)
//! 5. Crash-safe set-up: [`crate::platform::linux::shell::tun::Shell::start`] first removes what a
//!    killed daemon of this cluster left (rules with our priority and table, routes in our
//!    table, our TUN by name: [`setup::owned`] derives all three from the cluster id); any
//!    VIP found as a local address on an interface is removed too (it would make the kernel
//!    answer ARP for it). Then the TUN, the steering and the engine (inactive) start.
//! 6. The ARP responder opens a packet socket per interface that answers for a VIP, the
//!    heartbeat socket is bound, and systemd is told `READY=1` (`Type=notify`).
//!
//! ## VIPs, ARP and steering (why)
//!
//! The VIP is routed into the TUN by policy rules (`to VIP lookup TABLE`, and for NAT
//! `from SERVER lookup TABLE`; TABLE holds `default dev TUN`), never added as a local
//! address, and ARP for it is answered by the daemon itself (see
//! [`crate::platform::linux::arp`]). The steering stays installed on a backup: nobody sends
//! it VIP traffic (it answers no ARP), and an inactive engine drops what arrives anyway.
//! When the daemon dies the TUN closes with it (non-persistent), its route goes, and nothing
//! answers ARP for the VIP: no black hole on a dead daemon with a live host.
//!
//! With `dataplane.backend: af_xdp` ([`crate::platform::linux::shell::xdp`]) no steering
//! rules are installed: an XDP program on the wire interfaces hands VIP traffic and NAT
//! replies to the engine through AF_XDP sockets before the kernel routes anything; what
//! is not the engine's (heartbeats, sync, ARP and NDP, admin, SSH, the host's own traffic)
//! passes. The program is attached through a BPF link, so a killed daemon leaves nothing
//! attached. Where it cannot run (not root, no XDP or AF_XDP, the driver refuses, an ATM
//! that is also a real server), the daemon says why in one line and runs the TUN backend.
//!
//! ## ATM and node (seed 002: "the only way that you can have a system act as both")
//!
//! A real server of a direct-routing or tunnel service needs the VIP as a local address
//! (on `lo`, ARP hidden); an ATM needs VIP traffic to go into its TUN via the policy rule
//! `to VIP lookup TABLE` (priority 17100). The kernel consults the `local` table first
//! (rule priority 0): while the VIP is a local address, every packet to it is delivered to
//! the host's own sockets and never reaches the steering rule. So on a host that is both:
//!
//! * while the ATM is a **backup** (engine inactive), the VIP is on `lo` (label `lo:csd<id>`):
//!   the primary's DR frames and decapsulated tunnel packets are delivered locally, and the
//!   host serves as a real server; `arp_ignore=1` keeps the kernel from answering ARP for
//!   it and the daemon's own ARP responder is silent on a backup;
//! * while it **holds the VIPs** (engine active), the VIP is taken off `lo` (the engine
//!   control does it as the engine is activated, and puts it back when deactivated): client
//!   packets reach the steering rule and the TUN, and the user-space ARP responder answers.
//!   A packet that arrives in the few milliseconds before the VIP leaves `lo` is served
//!   locally, which is correct too (the host is a real server).
//! * the ATM's own engine gives this host's server entries weight 0
//!   ([`crate::node::without_self`]): an active engine would have to send frames to its own
//!   MAC, which never come back in. The other ATMs keep this host in their schedulers.
//!
//! NAT real servers route replies through the primary's gateway VIP; an ATM that is a NAT
//! real server of its own cluster is not supported beyond the route check's warning.
//!
//! ## Roles and the engine
//!
//! The engine is active exactly while the VIPs are held (as in the simulator): taking the
//! VIPs activates it before ARP is answered, releasing stops ARP first. A primary that sees
//! a peer come up streams its whole table to it ([`processor`]: connection sync over UDP on
//! `sync_port`, authenticated with the cluster secret); a backup's shadow engine applies it,
//! so established connections survive a failover.
//!
//! ## Health checks
//!
//! Every ATM, primary or backup, runs every service's checks ([`health`]) and pushes each
//! verdict to its engine through the worker's control queue: a failed server takes no new
//! connection (its existing ones follow the service's `on_down`), and a backup promoted at
//! any moment already knows which servers are down.
//!
//! ## Signals
//!
//! * SIGTERM / SIGINT: graceful stop. The data plane first streams its whole table to the
//!   backups and reports when nothing is left to send (bounded by [`DRAIN_LIMIT`]), so a
//!   backup that joined moments ago still holds every connection; then a primary hands over
//!   (the core's handover), the daemon exits 0 and tears its data plane down. A backup
//!   receiving sync records while it is promoted applies those already waiting before it
//!   starts forwarding.
//! * SIGHUP: the file is re-read and validated first. Invalid: refused, logged at `error`
//!   with every `FILE:LINE:COL` message, the running config kept. Unchanged (same digest):
//!   nothing happens. Changed and valid: the daemon applies it by an in-process restart:
//!   it hands over exactly as for SIGTERM (planned, no packet lost when a backup is up),
//!   tears down, and starts again with the new config as a backup. (The core has no live
//!   re-configuration yet; with a single ATM a reload therefore costs a dead interval.)
//!
//! ## Log lines (stderr, `tracing` fmt, no colours; see [`logging`] for journald)
//!
//! Every role change is one line with target `clusterserverd::role`, message `role change`
//! and the fields `node`, `role` (`primary` | `backup`), `epoch`, `reason`:
//!
//! ```text
//! 2026-11-22T03:10:00.123456Z  INFO clusterserverd::role: role change node=atm1 role=primary epoch=1 reason=NoPrimary
//! ```
//!
//! A parser looks for ` role change ` and splits the rest on spaces into `key=value`
//! (values contain no spaces). Start-up ends with `ready node=NAME ...` (target
//! `clusterserverd`), a graceful exit with `stopped node=NAME`. On a node-only host NAME is
//! its first server entry's name and the ready line reads
//! `ready node=web1 role=node services=http vips=10.0.0.99 arp_hiding=true decap=user`
//! (`decap` is `user`, `kernel` or `none`).

mod active;
pub mod admin;
pub mod health;
mod heartbeat;
pub mod logging;
mod node;
pub mod processor;
mod reload;
pub mod server_state;
pub mod setup;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin::acl::Acl;
use crate::admin::server::{AdminContext, Limits, Live};
use crate::admin::state::{ControlOp, Observed};
use crate::admin::token::Token;
use crate::admin::{AdminHandle, CoreBridge};
use crate::config::{self, ClusterMode, Config};
use crate::core::election::AdminRequest;
use crate::dataplane::engine::{Engine, EngineConfig};
use crate::dataplane::sync::{SyncReceiver, SyncSender};
use crate::driver::Command;
use crate::platform::linux::arp::{ArpPort, ArpResponder};
use crate::platform::linux::atm::{
    EngineControl, EngineOp, HeartbeatNet, LinuxPlatform, bind_udp, bind_udp6, wall_clock_incarnation,
};
use crate::platform::linux::host::{self, IfAddr};
use crate::platform::linux::shell::plane::DataPlane;
use crate::platform::linux::shell::tun::Shell;
use crate::platform::linux::shell::xdp::{XdpConfig, XdpShell};
use crate::platform::linux::shell::{ShellConfig, ShellError, netlink};
use admin::{ControlRequest, DaemonBackend};
use processor::DaemonProcessor;
use setup::HostRole;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("this host is neither an ATM nor a real server of the config (its addresses: {0})")]
    NotInConfig(String),
    #[error("ATM {atm}: {what}")]
    Host { atm: String, what: String },
    #[error("cannot read the cluster secret {path}: {source}")]
    Secret { path: String, source: std::io::Error },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("data plane: {0}")]
    Shell(#[from] ShellError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Node(#[from] crate::platform::linux::node::NodeError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Longest a graceful stop waits for the connection sync to drain before handing over.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// What the control loop asks for when it ends.
enum Next {
    Exit,
    Reload(Box<Config>),
}

/// Makes any panic abort the whole process after printing it.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("clusterserverd: panic: aborting (a half-running daemon is worse than none)");
        std::process::abort();
    }));
}

/// Structured logs on stderr (`RUST_LOG` filters; default `info`); to journald without
/// timestamps and with syslog priorities when systemd connected stderr to the journal
/// ([`logging`]).
pub fn init_logging() {
    logging::init();
}

/// Loads, validates and completes (ports) a config file.
pub fn load(path: &Path) -> Result<Config, DaemonError> {
    let mut cfg = config::load_file(path).map_err(|e| DaemonError::Config(e.to_string()))?;
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    setup::resolve_ports(&mut cfg, &services);
    Ok(cfg)
}

/// Runs the daemon until a graceful stop. Call from `main` on a plain thread (it owns its
/// runtimes).
pub fn run(path: &Path) -> Result<(), DaemonError> {
    let mut cfg = load(path)?;
    loop {
        match run_once(path, &cfg)? {
            Next::Exit => return Ok(()),
            Next::Reload(new) => {
                tracing::info!(target: "clusterserverd", "restarting with the reloaded config");
                cfg = *new;
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, DaemonError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io_err("runtime"))
}

fn read_secret(cfg: &Config) -> Result<Vec<u8>, DaemonError> {
    let path = &cfg.cluster.secret_file;
    let mut s = std::fs::read(path)
        .map_err(|source| DaemonError::Secret { path: path.display().to_string(), source })?;
    // A trailing newline from `echo` is not part of the key.
    while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
        s.pop();
    }
    Ok(s)
}

/// How long a starting daemon stays silent: long enough for its peers to declare its
/// previous incarnation dead (twice the dead interval plus two heartbeats), so that a quick
/// restart (systemd, or a reload) is still seen as down-then-up and the primary streams its
/// whole table to the new shadow engine.
pub fn quiet_period(cfg: &Config) -> Duration {
    let hb = Duration::from_millis(cfg.timers.heartbeat_ms);
    hb * (cfg.timers.dead_after * 2 + 2)
}

fn run_once(path: &Path, cfg: &Config) -> Result<Next, DaemonError> {
    let rt = runtime()?;
    let (handle, addrs) = rt.block_on(async {
        let h = netlink::connect()?;
        let a = host::addresses(&h).await.map_err(|e| DaemonError::Netlink(e.to_string()))?;
        Ok::<_, DaemonError>((h, a))
    })?;
    let local: Vec<IpAddr> = addrs.iter().map(|a| a.addr).collect();
    let (me, is_node) = match setup::host_role(cfg, &local) {
        HostRole::Atm { atm, node } => (atm, node),
        HostRole::Node => {
            tracing::info!(target: "clusterserverd", "this host is a cluster node only: setting it up (loopback VIPs, ARP hiding, decapsulation)");
            return node::run(&rt, handle, &addrs, path, cfg);
        }
        HostRole::None => {
            let list: Vec<String> = local.iter().map(IpAddr::to_string).collect();
            return Err(DaemonError::NotInConfig(list.join(", ")));
        }
    };
    let active_active = cfg.cluster.mode == ClusterMode::ActiveActive;
    // Active-active has no election to protect from a quick restart: no quiet period.
    let quiet = if active_active { Duration::ZERO } else { quiet_period(cfg) };
    tracing::info!(target: "clusterserverd", atm = %cfg.atms[me].name, quiet_ms = quiet.as_millis(), "ATM role; staying quiet so peers see any previous run as gone");
    rt.block_on(async move { tokio::time::sleep(quiet).await });
    let atm = &cfg.atms[me];
    let host_err = |what: String| DaemonError::Host { atm: atm.name.clone(), what };
    let my_if = addrs
        .iter()
        .find(|a| a.addr == atm.address)
        .ok_or_else(|| host_err("its address is not on this host".into()))?
        .clone();
    if my_if.iface != atm.interface {
        tracing::warn!(target: "clusterserverd", configured = %atm.interface, actual = %my_if.iface, "the ATM address is on another interface than configured");
    }
    rt.block_on(clear_local_vips(&handle, cfg, &addrs))?;
    warn_if_no_forwarding(cfg);
    let secret = read_secret(cfg)?;
    let admin_token = load_admin_token(cfg);
    let admin_listener = match crate::admin::bind(cfg.admin_port()) {
        Ok(l) => Some(l),
        Err(e) => {
            // HA matters more than the console: run on, loudly, without the admin channel.
            tracing::error!(target: "clusterserverd::admin", port = cfg.admin_port(), error = %e, "cannot open the admin port: running without the admin channel (cmc cannot reach this daemon)");
            None
        }
    };
    let node_setup = match is_node {
        true => Some(start_node_role(&rt, &handle, cfg, &addrs)?),
        false => None,
    };
    let incarnation = wall_clock_incarnation();
    let shell = match start_shell(cfg, me, &addrs, &secret, incarnation, is_node) {
        Ok(s) => Rc::new(s),
        Err(e) => return Err(undo_node_after(&rt, node_setup, e)),
    };
    match shell.backend() {
        "tun" => {
            tracing::info!(target: "clusterserverd", backend = "tun", tun = %setup::owned(cfg).tun_name, "data plane up")
        }
        b => tracing::info!(target: "clusterserverd", backend = b, "data plane up"),
    }
    let state_file = server_state::path(&crate::platform::linux::node::state_dir(), cfg, me);
    restore_overrides(&shell, cfg, me, &state_file);
    let live = Live::new(Arc::new(cfg.clone()), Acl::from_config(&cfg.security), admin_token);
    let saver = Arc::new(reload::Saver::new(state_file, me, Arc::clone(&live)));
    let names: Vec<String> = cfg.atms.iter().map(|a| a.name.clone()).collect();
    if active_active {
        let (changes_tx, server_changes) = mpsc::unbounded_channel();
        let (observed, requests, admin) =
            open_admin(admin_listener, &live, me, &shell, Some(changes_tx), &saver);
        let bridge = CoreBridge::new(observed, names, atm.name.clone());
        let link = active::AdminLink { bridge, requests, server_changes };
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        let reloader = reload::Reloader {
            shell: &shell,
            arp: None,
            platform: None,
            netlink: handle.clone(),
            addrs: addrs.clone(),
            me,
            node: None,
            live,
            health: health_tx,
            hops: Rc::new(RefCell::new(direct_next_hops(cfg))),
            core: None,
            saver,
        };
        let next = run_active_active(&rt, &reloader, path, cfg, link, health_rx);
        drop(reloader);
        if let Some(a) = admin {
            a.stop();
        }
        return finish(rt, shell, node_setup, &atm.name, next);
    }
    let arp = match rt.block_on(open_arp(cfg, &addrs, &atm.interface)) {
        Ok(a) => Arc::new(a),
        Err(e) => return Err(undo_node_after(&rt, node_setup, e)),
    };
    // Called on the heartbeat thread: the data plane through its thread-safe controller,
    // the node set-up's netlink work spawned onto the main runtime.
    let shell_ctl = shell.controller();
    let node_ctl = node_setup.clone();
    let main_rt = rt.handle().clone();
    let engine_ctl: EngineControl = Box::new(move |op| {
        if let (EngineOp::SetActive(active), Some(n)) = (op, &node_ctl) {
            toggle_node_vips(&main_rt, n, active);
        }
        let r = match op {
            EngineOp::SetActive(a) => {
                shell_ctl.apply(Arc::new(move |p: &mut DaemonProcessor| p.set_active(a)))
            }
            EngineOp::FullSync => shell_ctl.apply(Arc::new(|p: &mut DaemonProcessor| {
                if p.engine.is_active() {
                    p.engine.start_full_sync();
                }
            })),
        };
        if let Err(e) = r {
            tracing::error!(target: "clusterserverd", error = %e, ?op, "data-plane control failed");
        }
    });
    let mut platform = LinuxPlatform::new(
        atm.name.clone(),
        names.clone(),
        incarnation,
        match atm.address {
            IpAddr::V4(_) => HeartbeatNet::V4 { broadcast: my_if.broadcast() },
            IpAddr::V6(_) => HeartbeatNet::V6 { ifindex: my_if.index },
        },
        Arc::clone(&arp),
        engine_ctl,
    )
    .with_failover(crate::platform::linux::atm::FailoverSpec {
        failover: cfg.failover.clone(),
        atm_addresses: cfg.atms.iter().map(|a| a.address).collect(),
    });
    let (observed, admin_rx, admin) = open_admin(admin_listener, &live, me, &shell, None, &saver);
    platform.set_bridge(CoreBridge::new(observed, names, atm.name.clone()));
    let platform = Arc::new(platform);
    let (core_tx, core_rx) = mpsc::unbounded_channel();
    let mut heartbeat =
        match heartbeat::HeartbeatThread::spawn(Arc::clone(&platform), cfg.clone(), me, secret, core_rx) {
            Ok(h) => h,
            Err(e) => return Err(undo_node_after(&rt, node_setup, e)),
        };
    let (health_tx, health_rx) = mpsc::unbounded_channel();
    let reloader = reload::Reloader {
        shell: &shell,
        arp: Some(&*arp),
        platform: Some(&*platform),
        netlink: handle.clone(),
        addrs: addrs.clone(),
        me,
        node: node_setup.clone(),
        live,
        health: health_tx,
        hops: Rc::new(RefCell::new(direct_next_hops(cfg))),
        core: Some(core_tx),
        saver,
    };
    let loop_in = LoopInputs { heartbeat: &mut heartbeat.done, health_rx, admin_rx };
    let next = rt.block_on(control(&reloader, path, cfg, loop_in));
    // Closing the command channel makes a driver still running (the control loop ended on
    // an error) hand over and return.
    drop(reloader);
    heartbeat.join();
    if let Some(a) = admin {
        a.stop();
    }
    drop(platform);
    finish(rt, shell, node_setup, &atm.name, next)
}

/// Active-active: the engine forwards from the start and the VIPs are announced over BGP
/// ([`active`]); the admin channel reaches that loop through `admin`. (The config refuses an ATM that is also a real server in this mode, so there
/// is no node set-up to toggle.)
fn run_active_active(
    rt: &tokio::runtime::Runtime,
    r: &reload::Reloader<'_>,
    path: &Path,
    cfg: &Config,
    admin: active::AdminLink,
    health_rx: mpsc::UnboundedReceiver<health::Update>,
) -> Result<Next, DaemonError> {
    r.shell.apply(Arc::new(|p: &mut DaemonProcessor| {
        p.engine.set_mid_flow_pickup(true);
        p.set_active(true);
    }))?;
    rt.block_on(active::control(r, path, cfg, admin, health_rx))
}

/// Undoes the node set-up and stops the data plane after the control loop ended.
fn finish(
    rt: tokio::runtime::Runtime,
    shell: Rc<DataPlane<DaemonProcessor>>,
    node_setup: Option<SharedNode>,
    name: &str,
    next: Result<Next, DaemonError>,
) -> Result<Next, DaemonError> {
    if let Some(n) = node_setup {
        match rt.block_on(async move { n.lock().await.undo().await }) {
            Ok(_) => tracing::info!(target: "clusterserverd", "node set-up undone"),
            Err(e) => tracing::error!(target: "clusterserverd", error = %e, "node set-up undo"),
        }
    }
    drop(rt);
    // The shell joins its workers and removes the steering on a plain thread.
    match Rc::try_unwrap(shell) {
        Ok(shell) => match shell.stop() {
            Ok((stats, procs)) => {
                let sync = procs.first().map(|p| p.counters).unwrap_or_default();
                let full_sync = procs.first().map(|p| p.full_sync_stats()).unwrap_or_default();
                tracing::info!(target: "clusterserverd", ?stats, ?sync, ?full_sync, "data plane stopped");
            }
            Err(e) => tracing::error!(target: "clusterserverd", error = %e, "data plane stop"),
        },
        Err(_) => tracing::error!(target: "clusterserverd", "data plane still referenced; dropped"),
    }
    tracing::info!(target: "clusterserverd", node = %name, "stopped");
    next
}

/// The admin token from `security.token_file` (the loader made it absolute).
/// A missing or unusable file leaves the admin channel closed (every request gets 401 with
/// the reason) rather than stopping the daemon; the config loader has already refused a
/// missing file or a wrong mode at start-up, so this only catches a file changed since.
fn load_admin_token(cfg: &Config) -> Option<Token> {
    let file = cfg.security.token_file.as_ref()?;
    match Token::load(file) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(target: "clusterserverd::admin", error = %e, "admin token unusable: the admin channel refuses every request");
            None
        }
    }
}

/// What [`open_admin`] gives the control loop.
type AdminParts = (Arc<Observed>, mpsc::UnboundedReceiver<ControlRequest>, Option<AdminHandle>);

/// The admin channel of an ATM, either mode: the state the control loop publishes (hand it
/// to a [`CoreBridge`]), the control requests for the loop, and the server thread (`None`
/// when the port could not be bound or the thread not started: the daemon runs without it;
/// the requests channel then stays empty). `server_changes`: active-active's announcer
/// hears of every server change (see [`DaemonBackend`]).
fn open_admin(
    listener: Option<std::net::TcpListener>,
    live: &Arc<Live>,
    me: usize,
    shell: &DataPlane<DaemonProcessor>,
    server_changes: Option<mpsc::UnboundedSender<admin::ServerChange>>,
    saver: &Arc<reload::Saver>,
) -> AdminParts {
    let observed = Arc::new(Observed::default());
    let (control, requests) = mpsc::unbounded_channel();
    if live.get().token.is_none() {
        tracing::warn!(target: "clusterserverd::admin", "no usable security.token_file: the admin channel answers 401 to everything");
    }
    let handle = listener.and_then(|l| {
        let backend = DaemonBackend {
            shell: shell.controller(),
            live: Arc::clone(live),
            control,
            server_changes,
            saver: Arc::clone(saver),
        };
        start_admin(l, Arc::clone(live), me, Arc::clone(&observed), Arc::new(backend))
    });
    (observed, requests, handle)
}

/// Puts back the operators' overrides saved by a previous run (see [`server_state`]); a
/// file that cannot be used is reported and ignored.
fn restore_overrides(shell: &DataPlane<DaemonProcessor>, cfg: &Config, me: usize, path: &Path) {
    let saved = match server_state::load(path, cfg, me) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(why) => {
            tracing::warn!(target: "clusterserverd", file = %path.display(), reason = %why, "ignoring the saved server overrides");
            return;
        }
    };
    let (overrides, dropped) = crate::overrides::file::by_index(cfg, &saved);
    if dropped > 0 {
        tracing::warn!(target: "clusterserverd", file = %path.display(), dropped, "saved overrides of servers no longer in the config (or moved) were dropped");
    }
    let n = overrides.len();
    let r =
        shell.apply(Arc::new(move |p: &mut DaemonProcessor| p.servers.restore(&mut p.engine, &overrides)));
    match r {
        Ok(()) => {
            tracing::info!(target: "clusterserverd", file = %path.display(), servers = n, "operators' server overrides restored (drain, disable, weight)")
        }
        Err(e) => {
            tracing::error!(target: "clusterserverd", error = %e, "cannot restore the saved server overrides")
        }
    }
}

/// Starts the admin channel on its own thread (see [`crate::admin`]).
fn start_admin(
    listener: std::net::TcpListener,
    live: Arc<Live>,
    me: usize,
    observed: Arc<Observed>,
    backend: Arc<DaemonBackend>,
) -> Option<AdminHandle> {
    let ctx = AdminContext {
        live,
        me,
        observed,
        backend,
        counters: Default::default(),
        limits: Limits::default(),
        started: tokio::time::Instant::now(),
    };
    match crate::admin::start(listener, Arc::new(ctx)) {
        Ok(h) => {
            tracing::info!(target: "clusterserverd::admin", addr = %h.local_addr, "admin channel listening");
            Some(h)
        }
        Err(e) => {
            tracing::error!(target: "clusterserverd::admin", error = %e, "cannot start the admin thread: running without the admin channel");
            None
        }
    }
}

/// A node set-up shared with the engine control (which toggles the VIPs on `lo`).
type SharedNode = Arc<tokio::sync::Mutex<crate::platform::linux::node::NodeSetup>>;

/// The node role of an ATM that is also a real server: set up as a node with the VIPs on
/// `lo` (it starts as a backup). See "ATM and node" in the module docs.
fn start_node_role(
    rt: &tokio::runtime::Runtime,
    handle: &rtnetlink::Handle,
    cfg: &Config,
    addrs: &[IfAddr],
) -> Result<SharedNode, DaemonError> {
    let (name, names, plan) = node::describe(cfg, addrs);
    let setup = rt.block_on(node::set_up(handle.clone(), names, plan, true))?;
    let p = setup.plan();
    tracing::info!(target: "clusterserverd", node = %name, services = %p.services.join(","), vips = ?p.vips, decap = %setup.decap_kind(), "this ATM is also a real server: node set-up done (VIPs on lo while backup)");
    Ok(Arc::new(tokio::sync::Mutex::new(setup)))
}

/// Undoes the node set-up of an ATM whose start failed with `e` (a leftover would be
/// cleared by the next start anyway; this keeps a failed start from leaving the host
/// changed). Returns `e`.
fn undo_node_after(rt: &tokio::runtime::Runtime, node: Option<SharedNode>, e: DaemonError) -> DaemonError {
    if let Some(n) = node
        && let Err(u) = rt.block_on(async move { n.lock().await.undo().await })
    {
        tracing::error!(target: "clusterserverd", error = %u, "node set-up undo after a failed start");
    }
    e
}

/// Takes the node's VIPs off `lo` when this ATM becomes active (holds the VIPs) and puts
/// them back when it stops being active. Runs as a task on the control runtime.
fn toggle_node_vips(main: &tokio::runtime::Handle, n: &SharedNode, active: bool) {
    let n = Arc::clone(n);
    main.spawn(async move {
        if let Err(e) = n.lock().await.set_vips(!active).await {
            tracing::error!(target: "clusterserverd", error = %e, active, "node VIPs on lo");
        }
    });
}

/// Removes VIPs configured as local addresses (by an older daemon or by hand).
async fn clear_local_vips(
    handle: &rtnetlink::Handle,
    cfg: &Config,
    addrs: &[IfAddr],
) -> Result<(), DaemonError> {
    for v in cfg.vips() {
        for a in addrs.iter().filter(|a| a.addr == v) {
            host::remove_address(handle, a.index, a.addr)
                .await
                .map_err(|e| DaemonError::Netlink(e.to_string()))?;
            tracing::warn!(target: "clusterserverd", vip = %v, iface = %a.iface, "removed a VIP configured as a local address (the daemon answers ARP for VIPs itself)");
        }
    }
    Ok(())
}

fn warn_if_no_forwarding(cfg: &Config) {
    // A family is forwarded if a VIP or a (tunnel) server is of it.
    let uses = |v6: bool| {
        cfg.services
            .iter()
            .any(|s| s.vip.is_ipv6() == v6 || s.servers.iter().any(|x| x.address.is_ipv6() == v6))
    };
    let f = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if uses(false) && f.trim() != "1" {
        tracing::warn!(target: "clusterserverd", "net.ipv4.ip_forward is off: VIP traffic cannot reach the data plane (the daemon does not change host-wide settings)");
    }
    let f6 = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap_or_default();
    if uses(true) && f6.trim() != "1" {
        tracing::warn!(target: "clusterserverd", "net.ipv6.conf.all.forwarding is off: IPv6 VIP traffic cannot reach the data plane (the daemon does not change host-wide settings)");
    }
}

/// Cores this process may run on (what `dataplane.queues: 0` means).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn start_shell(
    cfg: &Config,
    me: usize,
    addrs: &[IfAddr],
    secret: &[u8],
    incarnation: u64,
    is_node: bool,
) -> Result<DataPlane<DaemonProcessor>, DaemonError> {
    let owned = setup::owned(cfg);
    let iface = &cfg.atms[me].interface;
    let dataplane = cfg.dataplane_of(me);
    let want_xdp = dataplane.backend == crate::config::Backend::AfXdp;
    let queues = ShellConfig::queues(dataplane.queues, cores());
    let shell_cfg = ShellConfig {
        tun_name: owned.tun_name,
        // One engine and one sync stream for every queue (see the shell's module docs).
        queues,
        offload: true,
        mtu: 1500,
        table_id: owned.table_id,
        rule_priority: owned.rule_priority,
        dr_interface: setup::dr_interface(cfg, addrs, iface),
    };
    // The IPv4 source of IP-in-IP and IPv6-in-IPv4 outer headers and of ICMP errors: the
    // ATM's address, or for an IPv6-addressed ATM its interface's first IPv4 address.
    let local_addr = match cfg.atms[me].address {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => addrs
            .iter()
            .find_map(|x| match x.addr {
                IpAddr::V4(a) if x.iface == *iface => Some(a),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let local: Vec<IpAddr> = addrs.iter().map(|a| a.addr).collect();
    let ecfg = EngineConfig {
        // An ATM that is also a real server never schedules to itself (see `without_self`).
        services: crate::config::Service::all_settings(&crate::node::without_self(&cfg.services, &local)),
        table: cfg.table.clone(),
        local_addr,
        local_addr6: setup::local_addr6(
            cfg,
            me,
            &std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default(),
        ),
        path_mtu: 1500,
        // The same on every ATM: schedulers agree across a failover.
        seed: u64::from(cfg.cluster.id),
    };
    let socket = if cfg.sync.connections {
        // IPv6: bound to the ATM's own address, so that peers (which tell senders apart by
        // source address) see it and not another address of the interface.
        let port = cfg.sync_port();
        let s = match cfg.atms[me].address {
            IpAddr::V4(_) => bind_udp(port),
            IpAddr::V6(a) => bind_udp6(a, port, None),
        };
        let s = s.map_err(io_err(format!("sync socket on port {port}")))?;
        // A joiner learns at once that a peer's daemon is gone (ICMP port unreachable)
        // instead of waiting `join_sync_ms` for it; without it, it waits as before.
        if let Err(e) = crate::platform::linux::netsys::set_recverr(&s, cfg.atms[me].address.is_ipv6()) {
            tracing::warn!(target: "clusterserverd", error = %e, "sync socket: no IP_RECVERR; a joiner waits join_sync_ms for a peer whose daemon is gone");
        }
        Some(s)
    } else {
        None
    };
    let peers = cfg.sync_peers(me);
    let (id, rate, sync_on) = (cfg.cluster.id, cfg.sync.max_datagrams_per_s, cfg.sync.connections);
    let mut engine = Engine::new(&ecfg);
    engine.set_active(false);
    engine.set_sync(sync_on);
    let sender = SyncSender::new(secret, id, incarnation, rate);
    let receiver = SyncReceiver::new(secret, id);
    // One engine and one sync stream on either backend.
    let mut processor = Some(DaemonProcessor::new(engine, sender, receiver, socket, peers));
    if want_xdp {
        let why_not = xdp_refusal(is_node).map(str::to_string);
        let started = match why_not {
            Some(why) => Err(why),
            None => {
                let xcfg = XdpConfig {
                    interfaces: setup::xdp_interfaces(cfg, addrs, iface),
                    // One engine and one sync stream, as with TUN: one worker takes every
                    // RX queue of every interface.
                    workers: 1,
                    matches: setup::xdp_matches(cfg, addrs),
                };
                // A TUN run of this cluster killed before may have left its steering.
                if let Err(e) = clean_tun_leftovers(&shell_cfg) {
                    tracing::warn!(target: "clusterserverd", error = %e, "could not remove a previous TUN run's steering rules");
                }
                // The processor is only taken once the sockets are up and attached: a
                // failure before leaves it for the TUN fallback.
                let r = XdpShell::start(xcfg, |_| processor.take().expect("one AF_XDP worker"));
                match r {
                    Err(e) if processor.is_none() => return Err(DaemonError::Shell(e)),
                    r => r.map_err(|e| e.to_string()),
                }
            }
        };
        match started {
            Ok(x) => {
                tracing::info!(target: "clusterserverd", backend = "af_xdp", modes = ?x.modes(), "data plane: AF_XDP");
                return Ok(DataPlane::Xdp(x));
            }
            Err(why) => {
                tracing::warn!(target: "clusterserverd", iface = %iface, reason = %why, "dataplane.backend af_xdp cannot run here; using the TUN backend");
            }
        }
    }
    tracing::info!(target: "clusterserverd", backend = "tun", queues, "data plane: TUN (one engine shared by every queue)");
    let processor =
        processor.take().expect("a failed AF_XDP start returned above once it took the processor");
    let shell = Shell::start_shared(shell_cfg, setup::steering(cfg), processor)?;
    Ok(DataPlane::Tun(shell))
}

/// Removes what a killed TUN-backend run of this cluster left (its rules and routes; the
/// TUN itself went with the process), as [`Shell::start`] does before its own set-up.
fn clean_tun_leftovers(c: &ShellConfig) -> Result<(), ShellError> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ShellError::Runtime)?;
    rt.block_on(async {
        let h = netlink::connect()?;
        netlink::cleanup(&h, &c.tun_name, c.table_id, c.rule_priority).await.map(drop)
    })
}

/// Why the AF_XDP backend is not even tried, if it is not.
fn xdp_refusal(is_node: bool) -> Option<&'static str> {
    // The effective uid from procfs (the daemon module has no `unsafe` for geteuid).
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("not root (AF_XDP and BPF need CAP_NET_ADMIN, CAP_BPF and CAP_NET_RAW)");
    }
    if is_node {
        return Some(
            "this ATM is also a real server (its backup must deliver VIP traffic to itself, which XDP would take)",
        );
    }
    None
}

async fn open_arp(cfg: &Config, addrs: &[IfAddr], default_iface: &str) -> Result<ArpResponder, DaemonError> {
    let per_vip = setup::arp_interfaces(cfg, addrs, default_iface);
    let mut ports: Vec<ArpPort> = Vec::new();
    let mut port_of = BTreeMap::new();
    for (vip, iface) in per_vip {
        let idx = match ports.iter().position(|p| p.iface == iface) {
            Some(i) => i,
            None => {
                let a = addrs.iter().find(|a| a.iface == iface);
                let (index, mac) = match a {
                    Some(IfAddr { index, mac: Some(mac), .. }) => (*index, *mac),
                    _ => {
                        return Err(DaemonError::Host {
                            atm: default_iface.to_string(),
                            what: format!("interface {iface} (for VIP {vip}) has no IPv4 address or MAC"),
                        });
                    }
                };
                ports.push(
                    ArpPort::open(&iface, index, mac).map_err(io_err(format!("ARP socket on {iface}")))?,
                );
                ports.len() - 1
            }
        };
        port_of.insert(vip, idx);
    }
    Ok(ArpResponder::new(ports, port_of))
}

/// Real servers reached at layer 2 (direct routing and tunnel services).
fn direct_next_hops(cfg: &Config) -> Vec<Ipv4Addr> {
    let mut hops: Vec<Ipv4Addr> = cfg
        .services
        .iter()
        .filter(|s| s.forwarding != crate::config::Forwarding::Nat)
        .flat_map(|s| s.servers.iter())
        .filter_map(|s| match s.address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect();
    hops.sort();
    hops.dedup();
    hops
}

/// Pings the direct-routing servers every [`NEIGHBOUR_REFRESH`], primary or backup, so the
/// kernel keeps their neighbour entries: a backup that takes over then frames its first
/// packets at once instead of dropping them while it resolves each server (measured in the
/// labs: about 1.2 s of outage for direct routing without this). A server a live reload
/// adds is pinged within [`NEIGHBOUR_NEW`] (a failover right after the reload must find it
/// resolved too). Never returns.
async fn keep_resolved(hops: &RefCell<Vec<Ipv4Addr>>) {
    let ping = |h: Ipv4Addr| async move {
        // The answer does not matter (health checks judge servers); the exchange makes the
        // kernel resolve and confirm the neighbour entry.
        let _ = crate::platform::linux::icmp::ping(h, Duration::from_millis(200)).await;
    };
    loop {
        let pinged: Vec<Ipv4Addr> = hops.borrow().clone();
        for h in &pinged {
            ping(*h).await;
        }
        let until = tokio::time::Instant::now() + NEIGHBOUR_REFRESH;
        let mut known = pinged;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(NEIGHBOUR_NEW).await;
            let fresh: Vec<Ipv4Addr> = hops.borrow().iter().copied().filter(|h| !known.contains(h)).collect();
            for h in fresh {
                ping(h).await;
                known.push(h);
            }
        }
    }
}

/// How soon [`keep_resolved`] pings a direct-routing server a reload added.
const NEIGHBOUR_NEW: Duration = Duration::from_millis(100);

/// How often [`keep_resolved`] pings the direct-routing servers.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(5);

/// What the control loop reads, besides the reloader's parts.
struct LoopInputs<'a> {
    /// The heartbeat thread's driver result (the reloader holds the command sender).
    heartbeat: &'a mut tokio::sync::oneshot::Receiver<std::io::Result<()>>,
    /// Live reloads of the health checks.
    health_rx: mpsc::UnboundedReceiver<health::Update>,
    admin_rx: mpsc::UnboundedReceiver<ControlRequest>,
}

/// What a reload request (SIGHUP, `cmc reload`) ends in, for the caller to act on.
enum ReloadAnswer {
    /// Nothing to do, or applied live: the message for the operator.
    Done(String),
    /// Needs the planned handover and a restart with this config.
    Restart(Box<Config>, String),
    Refused(String),
}

/// Loads the file and reloads: live when the plan allows, else asks for the handover.
/// The config's advice ([`crate::config::advice`]), one `warn` line each.
fn log_advice(node: &str, cfg: &Config) {
    for a in crate::config::advice::advice(cfg) {
        tracing::warn!(target: "clusterserverd", node = %node, advice = %a, "config advice");
    }
}

async fn reload_from(
    r: &reload::Reloader<'_>,
    path: &Path,
    running: &mut Config,
    node: &str,
) -> ReloadAnswer {
    let new = match load(path) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(target: "clusterserverd", node = %node, error = %e, "reload refused: invalid config; the running config is kept");
            return ReloadAnswer::Refused(format!("invalid config, the running one is kept: {e}"));
        }
    };
    log_advice(node, &new);
    match r.reload(running, new).await {
        Ok(reload::Outcome::Unchanged) => {
            tracing::info!(target: "clusterserverd", node = %node, "reload: config unchanged");
            ReloadAnswer::Done("config unchanged: nothing to do".into())
        }
        Ok(reload::Outcome::Live(plan, st)) => {
            reload::log_plan(node, "live", &plan);
            tracing::info!(target: "clusterserverd", node = %node, changes = plan.items.len(), entries_kept = st.entries_kept, entries_dropped = st.entries_dropped, entries_reset = st.entries_reset, entries_orphaned = st.entries_orphaned, "reload applied live: role and connections kept");
            ReloadAnswer::Done(format!("applied live: {plan}"))
        }
        Ok(reload::Outcome::Handover(plan, new)) => {
            reload::log_plan(node, "handover", &plan);
            let keys: Vec<&str> = plan.handover_items().map(|i| i.key.as_str()).collect();
            tracing::info!(target: "clusterserverd", node = %node, keys = %keys.join(","), "reload: config valid and changed; these keys need the planned handover: handing over and restarting with it");
            ReloadAnswer::Restart(new, format!("needs the planned handover and a restart: {plan}"))
        }
        Err(e) => {
            tracing::error!(target: "clusterserverd", node = %node, error = %e, "reload failed while being applied live: restarting with the new config to be consistent");
            match load(path) {
                Ok(n) => ReloadAnswer::Restart(
                    Box::new(n),
                    format!("live apply failed ({e}): handing over and restarting"),
                ),
                Err(e2) => ReloadAnswer::Refused(format!(
                    "live apply failed ({e}) and the file no longer loads: {e2}"
                )),
            }
        }
    }
}

/// The control loop on the main runtime: the ARP responder, the health checks, the signals,
/// reloads and the admin channel's requests; the election driver runs on the heartbeat
/// thread ([`heartbeat`]) and this loop waits for its end.
async fn control(
    r: &reload::Reloader<'_>,
    path: &Path,
    cfg: &Config,
    inputs: LoopInputs<'_>,
) -> Result<Next, DaemonError> {
    let LoopInputs { heartbeat: driver, health_rx, mut admin_rx } = inputs;
    let (shell, me) = (r.shell, r.me);
    let (Some(platform), Some(arp), Some(tx)) = (r.platform, r.arp, r.core.clone()) else {
        return Err(DaemonError::Config("primary/backup control without its election core".into()));
    };
    let mut running = cfg.clone();
    let sig = |k: SignalKind| signal(k).map_err(io_err("signal handler"));
    let (mut term, mut int, mut hup) =
        (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::hangup())?);
    // Health checks run on every ATM, primary or backup (see `health`).
    let serve = async {
        let sink = health::Publishing {
            shell,
            bridge: platform.bridge(),
            since: platform.started(),
            services: RefCell::new(cfg.services.clone()),
        };
        let (served, _, _) = tokio::join!(
            arp.serve(),
            keep_resolved(&r.hops),
            health::run(&cfg.services, &sink, Some(health_rx))
        );
        served
    };
    tokio::pin!(serve);
    let reload: RefCell<Option<Box<Config>>> = RefCell::new(None);
    let node = cfg.atms[me].name.clone();
    let node = node.as_str();
    tracing::info!(target: "clusterserverd", node = %node, heartbeat_port = cfg.heartbeat_port(), sync_port = cfg.sync_port(), "ready");
    log_advice(node, cfg);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // A graceful stop first drains the connection sync (bounded), then hands over.
    let mut draining: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
    let drain = |why: &str| -> Option<Pin<Box<dyn Future<Output = ()>>>> {
        tracing::info!(target: "clusterserverd", node = %node, why, "stopping: syncing connections, then handing over if primary");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let done_tx = std::sync::Mutex::new(Some(done_tx));
        let ok = shell.apply(Arc::new(move |p: &mut DaemonProcessor| {
            if let Some(d) = done_tx.lock().ok().and_then(|mut d| d.take()) {
                p.notify_when_drained(d);
            }
        }));
        if ok.is_err() {
            tracing::warn!(target: "clusterserverd", "could not ask the data plane to drain its sync");
        }
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(DRAIN_LIMIT, done_rx).await;
        }))
    };
    loop {
        tokio::select! {
            biased;
            r = &mut *driver => {
                let r = r.unwrap_or_else(|_| Err(std::io::Error::other("the heartbeat thread ended without a result")));
                r.map_err(io_err("heartbeat"))?;
                return Ok(match reload.borrow_mut().take() {
                    Some(c) => Next::Reload(c),
                    None => Next::Exit,
                });
            }
            _ = async { if let Some(d) = draining.as_mut() { d.await } }, if draining.is_some() => {
                draining = None;
                let _ = tx.send(Command::Shutdown);
            }
            _ = term.recv() => {
                reload.borrow_mut().take();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                draining = draining.take().or_else(|| drain("SIGTERM"));
            }
            _ = int.recv() => {
                reload.borrow_mut().take();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                draining = draining.take().or_else(|| drain("SIGINT"));
            }
            _ = hup.recv(), if draining.is_none() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload_from(r, path, &mut running, node).await {
                    ReloadAnswer::Restart(new, _) => {
                        *reload.borrow_mut() = Some(new);
                        draining = drain("SIGHUP");
                    }
                    ReloadAnswer::Done(_) | ReloadAnswer::Refused(_) => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    }
                }
            }
            Some((op, reply)) = admin_rx.recv() => {
                let core = |req| tx.send(Command::Admin(req)).map(|()| "requested".to_string()).map_err(|_| "the core has stopped".to_string());
                let res = match op {
                    _ if draining.is_some() => Err("the daemon is stopping or restarting".to_string()),
                    ControlOp::Promote => core(AdminRequest::Promote),
                    ControlOp::Demote => core(AdminRequest::Demote),
                    ControlOp::Stop => core(AdminRequest::Stop),
                    ControlOp::Start => core(AdminRequest::Start),
                    ControlOp::Reload => match reload_from(r, path, &mut running, node).await {
                        ReloadAnswer::Refused(e) => Err(e),
                        ReloadAnswer::Done(m) => Ok(m),
                        ReloadAnswer::Restart(new, m) => {
                            *reload.borrow_mut() = Some(new);
                            draining = drain("admin reload");
                            Ok(m)
                        }
                    },
                    ControlOp::ReloadPlan => plan_of(r, path, &running),
                    ControlOp::Restart => {
                        *reload.borrow_mut() = Some(Box::new(running.clone()));
                        draining = drain("admin restart");
                        Ok("handing over and restarting".to_string())
                    }
                };
                let _ = reply.send(res);
            }
            r = &mut serve => {
                let e = r.err().unwrap_or_else(|| std::io::Error::other("ARP responder ended"));
                return Err(DaemonError::Io { what: "ARP responder".into(), source: e });
            }
        }
    }
}

/// `cmc reload --plan`: what a reload of the file would do here, applied nowhere.
fn plan_of(r: &reload::Reloader<'_>, path: &Path, running: &Config) -> Result<String, String> {
    let new = load(path).map_err(|e| format!("invalid config, a reload would be refused: {e}"))?;
    if new.digest() == running.digest() {
        return Ok("no change".into());
    }
    Ok(r.plan(running, &new).to_string())
}
