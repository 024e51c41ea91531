//! The simulated LAN's shared state: what the hosts' "kernels" hold (VIPs, ARP caches), the
//! faults in force (loss, blocked links, frozen processes), and the trace.
//!
//! Everything a simulated run does happens on one thread in an order fixed by turmoil and
//! the seed, so a `Rc<RefCell<World>>` shared by the hosts is deterministic. Maps are
//! `BTreeMap`s: nothing iterates in a random order.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;
use std::task::Waker;

use clusterserver::config::Config;
use clusterserver::core::election::Role;
use clusterserver::driver::Command;
use clusterserver::overrides::ServerOp;
use tokio::sync::mpsc::UnboundedSender;

use crate::rng::SplitMix64;
use crate::scenario::Forge;

pub type Shared = Rc<RefCell<World>>;

/// What the runner asks of an ATM's data plane, as the daemon's reload and admin channel
/// ask its TUN worker.
#[derive(Debug)]
pub enum DataplaneCommand {
    /// A live reload to this config (the plan was checked live).
    Reload(Rc<Config>),
    /// An operator's change to one server (`cmc drain`, `enable`, …), by index.
    Server { service: usize, server: usize, op: ServerOp },
}

/// A client's neighbour entry for the VIP (a simplified Linux NUD state machine).
#[derive(Clone, Debug)]
pub struct Neigh {
    pub owner: IpAddr,
    pub confirmed_ms: u64,
    pub reachable_ms: u64,
    /// Unicast probes sent since the entry went stale (0 = not probing yet).
    pub probes: u32,
    pub next_probe_ms: u64,
}

impl HostState {
    /// Where this host's caches send a packet for `ip` now (ARP or NDP), without running
    /// the neighbour state machine.
    pub fn owner_of(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => self.neigh.get(&ip).map(|n| n.owner),
            IpAddr::V6(a) => self.nd.as_ref()?.lladdr(&a),
        }
    }
}

/// Per-client service observations.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    pub first_ok_ms: Option<u64>,
    pub last_ok_ms: Option<u64>,
    pub max_gap_ms: u64,
    pub answered: u64,
    pub sent: u64,
    /// Probes sent after the first answer that were never answered in time (a graceful
    /// stop must lose none).
    pub lost: u64,
    /// Answered probes per 100 ms bucket (for the chart).
    pub buckets: Vec<u32>,
}

/// What the world knows of one host.
#[derive(Debug, Default)]
pub struct HostState {
    pub addr: Option<IpAddr>,
    /// Cluster id for ATMs.
    pub cluster: Option<u32>,
    pub vips: BTreeSet<IpAddr>,
    pub frozen: bool,
    pub thaw: Option<Waker>,
    /// The daemon was killed (`kill` step): its host and kernel stay up.
    pub killed: bool,
    /// Gracefully leaving: VIPs released, the data plane still forwards until exit.
    pub draining: bool,
    pub kill_waker: Option<Waker>,
    pub running: bool,
    pub role: Option<Role>,
    pub epoch: u64,
    pub commands: Option<UnboundedSender<Command>>,
    /// An ATM's data plane takes live reloads and operators' server changes here (the
    /// daemon's reload and admin requests, see `runner`).
    pub dataplane: Option<UnboundedSender<DataplaneCommand>>,
    /// The host's `/run` (tmpfs): files by name, such as the daemon's server state file.
    /// A killed daemon's files stay; a machine that goes down loses them.
    pub run_dir: BTreeMap<String, Vec<u8>>,
    /// The config an ATM's daemon runs (as started or last reloaded).
    pub running_config: Option<Rc<Config>>,
    pub promotions: Vec<(u64, u64)>,
    pub neigh: BTreeMap<IpAddr, Neigh>,
    /// The host's IPv6 address (IPv6 and dual-stack topologies only).
    pub addr6: Option<Ipv6Addr>,
    /// The IPv6 neighbour cache ([`crate::nud`]): made by the kernel when first used,
    /// gone with the kernel.
    pub nd: Option<crate::nud::Table>,
    /// A client or router: the VIP it sends its requests and flows to.
    pub vip: Option<IpAddr>,
    /// Gratuitous ARPs or unsolicited Neighbor Advertisements to ignore (`miss_garp`).
    pub miss_garp: u32,
    pub client: ClientStats,
    /// Long-lived flows of a client, by source port.
    pub flows: BTreeMap<u16, crate::flows::FlowRec>,
    /// Long-lived flows this client runs.
    pub flows_expected: u16,
    /// An ATM's data plane should stream its whole table (a peer came back).
    pub resync: bool,
    /// A real server: its health checks fail (scripted `check_fail`, or `server_down`).
    pub check_fail: bool,
    /// A real server that has stopped answering (`server_down`).
    pub server_down: bool,
    /// A real server: when each new connection (SYN) reached it, ms.
    pub syns: Vec<u64>,
    /// The client of each of `syns`, in the same order.
    pub syn_clients: Vec<IpAddr>,
    /// A client: new connections per second it opens (`load.new_connections`).
    pub conn_rate: u32,
}

/// The shared world of one run.
#[derive(Debug)]
pub struct World {
    pub trace: Vec<String>,
    pub rng: SplitMix64,
    pub seed: u64,
    pub hosts: BTreeMap<String, HostState>,
    pub by_addr: BTreeMap<IpAddr, String>,
    pub loss_all: f64,
    pub loss_link: BTreeMap<(String, String), f64>,
    pub forge_queue: VecDeque<Forge>,
    pub captured: Vec<Vec<u8>>,
    /// Heartbeats rejected (as far as the damped log reports them), and by (host, reason).
    pub rejected_total: u64,
    pub rejected: BTreeMap<(String, &'static str), u64>,
    /// Faults applied: (ms, description).
    pub faults: Vec<(u64, String)>,
    /// The cluster's config file as the `reload` steps left it (a daemon starting reads
    /// it); `None` until the runner sets it.
    pub config_file: Option<Rc<Config>>,
    /// Servers a `reload` removed: their long-lived flows may end (`on_down`).
    pub removed_servers: BTreeSet<String>,
}

impl World {
    pub fn new(seed: u64) -> Shared {
        Rc::new(RefCell::new(World {
            trace: Vec::new(),
            rng: SplitMix64::derive(seed, "world"),
            seed,
            hosts: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            loss_all: 0.0,
            loss_link: BTreeMap::new(),
            forge_queue: VecDeque::new(),
            captured: Vec::new(),
            rejected_total: 0,
            rejected: BTreeMap::new(),
            faults: Vec::new(),
            config_file: None,
            removed_servers: BTreeSet::new(),
        }))
    }

    /// One trace line: time, host, event.
    pub fn log(&mut self, ms: u64, host: &str, text: impl AsRef<str>) {
        self.trace.push(format!("{ms:>7} {host:<8} {}", text.as_ref()));
    }

    /// The host's state, made on first use. Looked up by `&str` first: this runs on every
    /// poll of a host's daemon and on most datagrams, where `entry(name.to_string())`
    /// allocated each time.
    pub fn host(&mut self, name: &str) -> &mut HostState {
        if !self.hosts.contains_key(name) {
            self.hosts.insert(name.to_string(), HostState::default());
        }
        self.hosts.get_mut(name).expect("inserted above")
    }

    /// The host's IPv6 neighbour cache, made on first use with a generator of its own (so
    /// IPv6 never shifts the world's draws).
    pub fn nd(&mut self, name: &str) -> &mut crate::nud::Table {
        let seed = self.seed;
        let h = self.host(name);
        h.nd.get_or_insert_with(|| crate::nud::Table::new(SplitMix64::derive(seed, &format!("nud {name}"))))
    }

    /// The LAN address (turmoil's, standing for the MAC) of the host that has `ip` as its
    /// own address: itself for IPv4, looked up for IPv6.
    pub fn link_of(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => Some(ip),
            IpAddr::V6(_) => self.hosts.get(self.by_addr.get(&ip)?)?.addr,
        }
    }

    pub fn name_of(&self, addr: IpAddr) -> String {
        self.by_addr.get(&addr).cloned().unwrap_or_else(|| addr.to_string())
    }

    /// Whether a datagram from `from` to `to` is lost to the configured loss rate.
    pub fn lose(&mut self, from: IpAddr, to: &str) -> bool {
        // The per-link rates (a few at most) are scanned by name, none copied: this runs for
        // every datagram received. An address without a host name has no per-link rate.
        let link = match self.by_addr.get(&from) {
            Some(f) if !self.loss_link.is_empty() => {
                let (a, b) = if f.as_str() < to { (f.as_str(), to) } else { (to, f.as_str()) };
                self.loss_link.iter().find(|((x, y), _)| x == a && y == b).map(|(_, p)| *p)
            }
            _ => None,
        };
        self.rng.chance(link.unwrap_or(self.loss_all))
    }

    /// A host's software (re)started: a fresh kernel holds no VIP and no ARP state.
    pub fn host_started(&mut self, name: &str) {
        let h = self.host(name);
        h.vips.clear();
        h.neigh.clear();
        h.nd = None;
        h.frozen = false;
        h.thaw = None;
        h.killed = false;
        h.kill_waker = None;
        h.draining = false;
        h.running = true;
        if h.cluster.is_some() {
            h.role = Some(Role::Backup);
        }
    }

    /// The host crashed (machine down): everything it held is gone.
    pub fn host_crashed(&mut self, name: &str) {
        let h = self.host(name);
        h.vips.clear();
        h.draining = false;
        h.running = false;
        h.frozen = false;
        h.commands = None;
        h.dataplane = None;
        h.run_dir.clear();
        if h.cluster.is_some() {
            h.role = Some(Role::Backup);
        }
        if let Some(w) = h.thaw.take() {
            w.wake();
        }
    }

    /// The daemon process is killed (SIGKILL) while its host stays up: what it held in user
    /// space (VIPs answered by its ARP responder, its role) is gone, the kernel keeps running.
    pub fn kill_daemon(&mut self, name: &str) {
        let h = self.host(name);
        h.killed = true;
        h.draining = false;
        h.vips.clear();
        h.running = false;
        h.frozen = false;
        h.commands = None;
        h.dataplane = None;
        if h.cluster.is_some() {
            h.role = Some(Role::Backup);
        }
        for w in [h.thaw.take(), h.kill_waker.take()].into_iter().flatten() {
            w.wake();
        }
    }

    pub fn set_frozen(&mut self, name: &str, frozen: bool) {
        let h = self.host(name);
        h.frozen = frozen;
        if !frozen && let Some(w) = h.thaw.take() {
            w.wake();
        }
    }

    /// Whether `known` (as [`World::primaries`] gave it) still lists the ATMs that act as
    /// primary: the runner asks after every tick, and a scan that allocates nothing
    /// answers it.
    pub fn same_primaries(&self, known: &BTreeMap<u32, Vec<String>>) -> bool {
        let mut seen = 0;
        for (name, h) in &self.hosts {
            if let (Some(c), Some(Role::Primary), true, false) = (h.cluster, h.role, h.running, h.frozen) {
                if !known.get(&c).is_some_and(|v| v.contains(name)) {
                    return false;
                }
                seen += 1;
            }
        }
        seen == known.values().map(Vec::len).sum::<usize>()
    }

    /// ATMs that act as primary now (running, not frozen, primary), by cluster.
    pub fn primaries(&self) -> BTreeMap<u32, Vec<String>> {
        let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (name, h) in &self.hosts {
            if let (Some(c), Some(Role::Primary), true, false) = (h.cluster, h.role, h.running, h.frozen) {
                out.entry(c).or_default().push(name.clone());
            }
        }
        out
    }
}
