//! The typed configuration: what the rest of the program reads once the file has been
//! parsed and validated (see [`super::load_file`]).
//!
//! Every section but `cluster`, `atms` and `services` has defaults (SPEC.md). The types derive
//! `Serialize` so that the running config has a canonical form whose SHA-256 is the digest
//! carried in heartbeats; no map with a random order appears anywhere in them.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

/// Default UDP heartbeat port (seed 001).
pub const DEFAULT_HEARTBEAT_PORT: u16 = 17100;
/// Default TCP admin port (seed 001).
pub const DEFAULT_ADMIN_PORT: u16 = 17101;
/// Default location of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clusterserver/clusterserver.json5";

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub cluster: Cluster,
    /// Order matters: the first listed ATM that is up becomes primary.
    pub atms: Vec<Atm>,
    pub timers: Timers,
    pub arp: Arp,
    pub arbitration: Arbitration,
    pub table: Table,
    pub sync: SyncSettings,
    pub security: Security,
    pub services: Vec<Service>,
    /// BGP announcement of the VIPs (active-active mode only; see [`Bgp`]). Left out of the
    /// serialised form when absent so that primary/backup configs keep their digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<Bgp>,
    /// Service groups that fail over between ATM hosts (seed 004). Left out of the canonical
    /// form when empty, so the digest of a config without failover is what it always was.
    #[serde(skip_serializing_if = "Failover::is_empty")]
    pub failover: Failover,
    /// The data-plane backend of every ATM without its own `dataplane` (default TUN; left
    /// out of the canonical form when default).
    #[serde(skip_serializing_if = "Dataplane::is_default")]
    pub dataplane: Dataplane,
    /// The directory relative file names were taken from (the config file's), and which of
    /// the file names were written relative. Not part of the canonical form:
    /// [`Config::digest`] hashes the file names as written, so the same text in another
    /// directory has the same digest on every host (and an absolute name stays absolute).
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub relative_paths: RelativePaths,
}

/// Which file names of a config were written relative to its directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelativePaths {
    pub secret_file: bool,
    pub token_file: bool,
    pub identity_file: bool,
    pub known_hosts: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    /// Keeps two clusters on one subnet apart; carried in every heartbeat.
    pub id: u32,
    /// `None`: from /etc/services (`clusterserver`), else 17100.
    pub heartbeat_port: Option<u16>,
    /// `None`: from /etc/services (`clusterserveradm`), else 17101.
    pub admin_port: Option<u16>,
    /// File holding the cluster secret (HMAC key for heartbeats and connection sync).
    pub secret_file: PathBuf,
    /// Where heartbeats go.
    pub heartbeat_mode: HeartbeatMode,
    /// Primary/backup (one ATM holds the VIPs, gratuitous ARP) or active-active (every ATM
    /// serves, the VIPs are announced over BGP). Left out of the serialised form at its
    /// default so that existing configs keep their digest.
    #[serde(skip_serializing_if = "ClusterMode::is_primary_backup")]
    pub mode: ClusterMode,
}

/// How the ATMs of a cluster share the VIPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterMode {
    /// One primary holds the VIPs and answers ARP for them; backups take over (default).
    #[default]
    PrimaryBackup,
    /// Every ATM forwards; each announces the VIP /32s to the upstream router over BGP
    /// (through BIRD 2), which spreads flows with ECMP. No election for the VIPs.
    ActiveActive,
}

impl ClusterMode {
    pub fn is_primary_backup(&self) -> bool {
        *self == ClusterMode::PrimaryBackup
    }
}

/// The `bgp` section: how this ATM's BIRD 2 peers with the upstream router(s). One file
/// serves every ATM, so the router id is each ATM's own (IPv4) address, not a setting.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bgp {
    /// The ATMs' AS number (all ATMs share it).
    pub local_as: u32,
    pub neighbors: Vec<BgpNeighbor>,
    /// BGP hold time; the router declares a silent ATM dead after it (0: no keepalives).
    pub hold_s: u32,
    pub keepalive_s: u32,
    /// Bidirectional forwarding detection on every session (sub-second loss detection,
    /// where the router runs BFD too).
    pub bfd: bool,
    /// BFD transmit/receive interval and multiplier (detection = interval × multiplier).
    pub bfd_interval_ms: u32,
    pub bfd_multiplier: u32,
    /// The BIRD 2 daemon and its client.
    pub bird: PathBuf,
    pub birdc: PathBuf,
    /// BIRD's control socket and the config file the daemon writes for it. `{atm}` in
    /// either is replaced by the ATM's name ([`Bgp::for_atm`]), for several ATMs sharing one
    /// file system (labs, tests).
    pub control_socket: PathBuf,
    pub config_file: PathBuf,
    /// Graceful stop: time between the withdrawal and stopping, so that the router moves
    /// new flows away and in-flight packets still find a forwarding ATM.
    pub drain_ms: u64,
    /// A starting ATM asks its peers for their connection tables and announces once every
    /// peer has sent its own, or after this long (peers down never answer); 0: no wait.
    pub join_sync_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BgpNeighbor {
    pub address: IpAddr,
    pub peer_as: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatMode {
    /// Broadcast on the ATM subnet and unicast to each listed ATM (default).
    Both,
    Broadcast,
    Unicast,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Atm {
    pub name: String,
    pub address: IpAddr,
    pub interface: String,
    /// This ATM's own data-plane choice; `None`: the top-level [`Config::dataplane`]. Left
    /// out of the canonical form when absent (digests of older configs are unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Dataplane>,
}

/// How an ATM moves packets (issue 15): the backend under the same sans-IO engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Dataplane {
    pub backend: Backend,
    /// Queues (and worker threads); 0: one per core.
    pub queues: u32,
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane { backend: Backend::Tun, queues: 0 }
    }
}

impl Dataplane {
    fn is_default(&self) -> bool {
        *self == Dataplane::default()
    }
}

/// A data-plane backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A TUN device fed by policy routing (the default, and the fallback): works on any
    /// kernel with TUN, keeps the kernel's offloads.
    Tun,
    /// AF_XDP sockets fed by an XDP program on the ATM's interface (kernel bypass for the
    /// VIPs' traffic); falls back to TUN, with one log line, where the kernel or driver
    /// cannot do it.
    AfXdp,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Tun => "tun",
            Backend::AfXdp => "af_xdp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timers {
    pub heartbeat_ms: u64,
    /// Heartbeats missed before a primary is declared dead.
    pub dead_after: u32,
    /// A returning higher-listed ATM takes the primary role back.
    pub preempt: bool,
    /// SCHED_FIFO priority of the heartbeat thread (1..=99; 0: normal scheduling). Needs
    /// `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO` at least this high); without it the daemon
    /// warns once and runs the thread at normal priority. Left out of the serialised form
    /// (and so of the config digest) while 0, so that configs written before the key
    /// existed keep their digest.
    #[serde(skip_serializing_if = "is_zero")]
    pub realtime_priority: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arp {
    pub gratuitous_count: u32,
    pub gratuitous_interval_ms: u64,
    /// Periodic re-announcement while primary; 0 disables.
    pub refresh_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arbitration {
    /// Hosts normally reachable from every ATM (seed 004).
    pub reachlist: Vec<IpAddr>,
    /// Fewer reachable hosts than this: do not promote, and demote.
    pub min_reachable: u32,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncSettings {
    /// Stream connection-table changes from the primary to the backups.
    pub connections: bool,
    /// UDP port of the connection-sync stream; `None`: heartbeat port + 2.
    pub port: Option<u16>,
    /// Upper bound on sync datagrams per second.
    pub max_datagrams_per_s: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Security {
    /// First match of allow/deny wins.
    pub admin_allow: Vec<IpNet>,
    pub admin_deny: Vec<IpNet>,
    pub token_file: Option<PathBuf>,
}

// The data plane's settings types, used by the config as they are (the engine takes its own
// settings, built from the config: `Service::settings`); re-exported so `config::Forwarding`
// and the rest keep their names.
pub use crate::dataplane::settings::{Forwarding, OnDown, Protocol, SchedulerKind, Server, Table};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    pub scheduler: SchedulerKind,
    /// Client affinity; 0 disables.
    pub persistence_s: u64,
    /// NAT only: the server-side address that moves with the primary.
    pub gateway_vip: Option<IpAddr>,
    pub on_down: OnDown,
    pub servers: Vec<Server>,
    pub checks: Vec<Check>,
}

impl Service {
    /// The service as the data plane runs it.
    pub fn settings(&self) -> crate::dataplane::settings::ServiceSettings {
        crate::dataplane::settings::ServiceSettings {
            name: self.name.clone(),
            vip: self.vip,
            port: self.port,
            protocol: self.protocol,
            forwarding: self.forwarding,
            scheduler: self.scheduler,
            persistence_s: self.persistence_s,
            gateway_vip: self.gateway_vip,
            on_down: self.on_down,
            servers: self.servers.clone(),
            has_checks: !self.checks.is_empty(),
        }
    }

    /// [`Service::settings`] of each of `services`, in order.
    pub fn all_settings(services: &[Service]) -> Vec<crate::dataplane::settings::ServiceSettings> {
        services.iter().map(Service::settings).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Ping,
    Tcp,
    Http,
    Https,
    /// An ASA program: `command` with `{address}`, `{port}` and `{proto}` substituted.
    Exec,
    /// A TLCLB agent, run unchanged: `command` followed by `IP PORT PROTO` (PROTO 1 = TCP,
    /// 2 = UDP); exit 0 = up, anything else = down.
    Agent,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub kind: CheckKind,
    /// http/https: request path.
    pub path: Option<String>,
    /// http/https: expected status.
    pub expect_status: Option<u16>,
    /// exec: argv, `{address}`, `{port}` and `{proto}` (1 = TCP, 2 = UDP, TLCLB's numbers)
    /// substituted. agent: the program (and leading arguments), `IP PORT PROTO` appended.
    /// Left out of the serialised form when empty, so a written config loads again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Port to check if not the server's.
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl Config {
    /// Every address an ATM takes when it is primary: each service's VIP and NAT gateway VIP,
    /// deduplicated, in config order.
    pub fn vips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for s in &self.services {
            for a in std::iter::once(s.vip).chain(s.gateway_vip) {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Position of the ATM with this address in the config, if any.
    pub fn atm_index_by_address(&self, address: IpAddr) -> Option<usize> {
        self.atms.iter().position(|a| a.address == address)
    }

    /// SHA-256 of the canonical (serialised) typed config: equal configs have equal digests
    /// whatever their formatting or comments.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let canonical = serde_json::to_vec(&self.relative_to_base()).expect("config serialises");
        Sha256::digest(&canonical).into()
    }

    /// This config with every file name under [`Config::base_dir`] written relative to it
    /// again (as the operator wrote it): what the digest is taken over.
    pub(crate) fn relative_to_base(&self) -> Config {
        let mut c = self.clone();
        let base = &self.base_dir;
        let w = self.relative_paths;
        let rel = |p: &mut PathBuf, written_relative: bool| {
            if written_relative
                && !base.as_os_str().is_empty()
                && let Ok(r) = p.strip_prefix(base)
            {
                *p = r.to_path_buf();
            }
        };
        rel(&mut c.cluster.secret_file, w.secret_file);
        if let Some(t) = &mut c.security.token_file {
            rel(t, w.token_file);
        }
        if let Some(ssh) = &mut c.failover.ssh {
            rel(&mut ssh.identity_file, w.identity_file);
            rel(&mut ssh.known_hosts, w.known_hosts);
        }
        c
    }

    /// The heartbeat UDP port, defaulting as SPEC.md says (the /etc/services lookup is the
    /// platform's job and happens before this is called).
    pub fn heartbeat_port(&self) -> u16 {
        self.cluster.heartbeat_port.unwrap_or(DEFAULT_HEARTBEAT_PORT)
    }

    /// The admin channel's TCP port (`cmc` and the daemon agree on it through this).
    pub fn admin_port(&self) -> u16 {
        self.cluster.admin_port.unwrap_or(DEFAULT_ADMIN_PORT)
    }

    /// The data plane of ATM `me`: its own `dataplane`, else the top-level one.
    pub fn dataplane_of(&self, me: usize) -> Dataplane {
        self.atms.get(me).and_then(|a| a.dataplane).unwrap_or(self.dataplane)
    }

    /// The connection-sync UDP port.
    pub fn sync_port(&self) -> u16 {
        self.sync.port.unwrap_or(self.heartbeat_port().wrapping_add(2))
    }

    /// The sync addresses of the ATMs other than `me`, in config order.
    pub fn sync_peers(&self, me: usize) -> Vec<std::net::SocketAddr> {
        let port = self.sync_port();
        self.atms
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, a)| std::net::SocketAddr::new(a.address, port))
            .collect()
    }
}

// Defaults of the optional sections. The loader takes missing keys from these, so this is
// the one place where a default is written down.

impl Bgp {
    /// The section as ATM `atm` uses it: `{atm}` in the socket and config paths replaced.
    pub fn for_atm(&self, atm: &str) -> Bgp {
        let sub = |p: &PathBuf| PathBuf::from(p.to_string_lossy().replace("{atm}", atm));
        Bgp { control_socket: sub(&self.control_socket), config_file: sub(&self.config_file), ..self.clone() }
    }

    /// The section with its defaults around the required keys.
    pub fn with(local_as: u32, neighbors: Vec<BgpNeighbor>) -> Self {
        Bgp {
            local_as,
            neighbors,
            hold_s: 3,
            keepalive_s: 1,
            bfd: false,
            bfd_interval_ms: 100,
            bfd_multiplier: 3,
            bird: PathBuf::from("/usr/sbin/bird"),
            birdc: PathBuf::from("/usr/sbin/birdc"),
            control_socket: PathBuf::from("/run/clusterserver/bird.ctl"),
            config_file: PathBuf::from("/run/clusterserver/bird.conf"),
            drain_ms: 2000,
            join_sync_ms: 3000,
        }
    }
}

impl Default for Timers {
    fn default() -> Self {
        Timers { heartbeat_ms: 100, dead_after: 3, preempt: false, realtime_priority: 0 }
    }
}

impl Default for Arp {
    fn default() -> Self {
        Arp { gratuitous_count: 3, gratuitous_interval_ms: 100, refresh_s: 30 }
    }
}

impl Default for Arbitration {
    fn default() -> Self {
        Arbitration { reachlist: Vec::new(), min_reachable: 0, probe_interval_ms: 500, probe_timeout_ms: 300 }
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings { connections: true, port: None, max_datagrams_per_s: 2000 }
    }
}

impl Default for Security {
    fn default() -> Self {
        let net = |s: &str| s.parse::<IpNet>().expect("literal CIDR");
        Security {
            admin_allow: vec![net("127.0.0.1/32"), net("::1/128")],
            admin_deny: vec![net("0.0.0.0/0"), net("::/0")],
            token_file: None,
        }
    }
}

/// Service failover (seed 004's clusterd): per home ATM, an ordered group of services that
/// its backup ATM starts when the home ATM fails and hands back when it recovers, and the
/// mirror sets copied between them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failover {
    /// How long a backup waits, after the home ATM is declared dead and the backup passes its
    /// arbitration, before it starts the home's services: the time an isolated home ATM needs
    /// to find itself in standby and stop them (no service may run on two ATMs at once).
    pub takeover_delay_ms: u64,
    /// Wait between two attempts of a failed start command.
    pub retry_ms: u64,
    /// Attempts of one start command before the group is reported failed.
    pub start_attempts: u32,
    /// How mirroring and the sync tools reach other hosts (rsync over OpenSSH).
    pub ssh: Option<Ssh>,
    pub groups: Vec<ServiceGroup>,
}

/// The documented defaults (a config without a `failover` section has these), not zeros:
/// a `Failover` built in code and then written out must load again.
impl Default for Failover {
    fn default() -> Self {
        Failover {
            takeover_delay_ms: DEFAULT_TAKEOVER_DELAY_MS,
            retry_ms: DEFAULT_RETRY_MS,
            start_attempts: DEFAULT_START_ATTEMPTS,
            ssh: None,
            groups: Vec::new(),
        }
    }
}

impl Failover {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.ssh.is_none()
    }

    /// The group whose home is ATM `atm` (index in `atms`).
    pub fn group_of(&self, atm: usize) -> Option<&ServiceGroup> {
        self.groups.iter().find(|g| g.atm == atm)
    }

    /// The mirror set named `name`, with the index of its group.
    pub fn mirror(&self, name: &str) -> Option<(usize, &MirrorSet)> {
        self.groups
            .iter()
            .enumerate()
            .find_map(|(i, g)| g.mirrors.iter().find(|m| m.name == name).map(|m| (i, m)))
    }
}

/// SSH settings: keys only (`BatchMode`), host keys checked against `known_hosts`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    pub identity_file: PathBuf,
    pub known_hosts: PathBuf,
    /// A shell command `cmc sync config --apply` runs over SSH on every real server after
    /// the push, so their node daemons run what was pushed (node daemons have no admin
    /// channel; e.g. `systemctl reload clusterserverd`). Unset: real servers get the files
    /// and are left to their service manager, and `cmc sync` says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_reload: Option<String>,
}

/// The services an ATM runs in normal operation (the seed's `/etc/cluster.d/NODE/`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceGroup {
    /// Index in `atms` of the home ATM.
    #[serde(skip)]
    pub atm: usize,
    /// Index in `atms` of the ATM that takes the group over.
    #[serde(skip)]
    pub backup: usize,
    /// The home ATM's name, as written (the canonical form reads back as the same config).
    #[serde(rename = "atm")]
    pub atm_name: String,
    #[serde(rename = "backup")]
    pub backup_name: String,
    /// In the order written; see [`ServiceGroup::start_sequence`].
    pub services: Vec<GroupService>,
    pub mirrors: Vec<MirrorSet>,
}

impl ServiceGroup {
    /// Indices of `services` in start order: by `start_order` (the S number), ties in the
    /// order written.
    pub fn start_sequence(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.services.len()).collect();
        idx.sort_by_key(|&i| (self.services[i].start_order, i));
        idx
    }

    /// Indices of `services` in stop order: by `stop_order` (the K number), ties in reverse
    /// start order.
    pub fn stop_sequence(&self) -> Vec<usize> {
        let start = self.start_sequence();
        let rank = |i: usize| start.iter().position(|&j| j == i).unwrap_or(0);
        let mut idx: Vec<usize> = (0..self.services.len()).collect();
        idx.sort_by_key(|&i| (self.services[i].stop_order, std::cmp::Reverse(rank(i))));
        idx
    }
}

/// One service of a group: an S and a K script.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupService {
    pub name: String,
    /// The S number: services start in increasing order.
    pub start_order: u32,
    /// The K number: services stop in increasing order; default `99 - start_order`, the
    /// reverse of the start order (SysV's convention).
    pub stop_order: u32,
    /// argv, run without a shell.
    pub start: Vec<String>,
    pub stop: Vec<String>,
    /// Longer than this: the command's process group is killed and the command failed.
    pub timeout_ms: u64,
}

/// A group of files mirrored together (the seed's F files).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MirrorSet {
    pub name: String,
    /// Absolute paths; a trailing `/` marks a directory (its contents are mirrored).
    pub paths: Vec<String>,
    /// Mirror from the ATM running the group to its partner every this many seconds (the
    /// seed's crontab entry); 0: only on hand-back and on demand.
    pub interval_s: u64,
}

impl MirrorSet {
    /// Whether `path` names a directory.
    pub fn is_dir(path: &str) -> bool {
        path.ends_with('/')
    }
}

/// Failover defaults.
pub const DEFAULT_TAKEOVER_DELAY_MS: u64 = 2000;
pub const DEFAULT_RETRY_MS: u64 = 5000;
pub const DEFAULT_START_ATTEMPTS: u32 = 3;
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_SSH_USER: &str = "root";
pub const DEFAULT_SSH_PORT: u16 = 22;

/// An ATM's BGP router id (BIRD's `router id`, 32 bits): its IPv4 address, or the last 32
/// bits of its IPv6 address (`--check` refuses two ATMs with the same one).
pub fn router_id(address: std::net::IpAddr) -> std::net::Ipv4Addr {
    match address {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => std::net::Ipv4Addr::from_bits(a.to_bits() as u32),
    }
}
