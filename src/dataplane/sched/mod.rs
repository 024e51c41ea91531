//! Schedulers: which real server gets a new connection.
//!
//! The packet engine calls [`Scheduler::pick`] once per *new* flow (the connection table pins
//! every later packet of the flow to the server picked here). Schedulers are built whole by
//! [`build`] from a snapshot of the servers and swapped whole when weights or health change
//! (STYLE.md: the packet path takes no lock; the control plane builds a fresh scheduler and
//! publishes it). `pick` must therefore be cheap and allocation-free; `build` may allocate
//! (Maglev builds its lookup table there).
//!
//! ## Contract
//!
//! * `servers` passed to `pick` is the same list, in the same order, as the one given to
//!   `build`; only `active_conns` is expected to move between builds. A scheduler re-checks
//!   eligibility on the slice it is given, so a stale scheduler never picks a server that has
//!   since gone down or been drained, but it may return `None` where a rebuilt one would not.
//! * A server is *eligible* when `up && weight > 0`. Weight 0 means **drain**: the server gets no
//!   new connections; its existing ones continue (that is the connection table's business).
//! * `pick` returns an index into `servers`, or `None` when no server is eligible.
//!
//! ## The families
//!
//! | kind | file | method | weights |
//! | --- | --- | --- | --- |
//! | `rr` | [`rr`] | next eligible server after the last one picked | ignored (IPVS `rr`), 0 drains |
//! | `wrr` | [`wrr`] | smooth weighted round robin (nginx): interleaved, no bursts | proportional |
//! | `lc` | [`lc`] | fewest `active_conns`, ties rotate | ignored (IPVS `lc`), 0 drains |
//! | `wlc` | [`lc`] | fewest `active_conns / weight`, ties to the heavier, then rotate | proportional |
//! | `sh` | [`sh`] | Maglev table indexed by a fixed-key SipHash of the client address | proportional |
//! | `mh` | [`maglev`] | Maglev table indexed by the (mixed) flow hash | proportional |
//!
//! `rr` and `lc` are unweighted by definition (as in IPVS and the seeds); the weighted variants
//! are `wrr` and `wlc`. Every hash here is keyed with constants ([`stable_hash`]), so two ATMs,
//! two processes or two builds of the program map a client or flow to the same server: std's
//! `DefaultHasher` is randomly keyed per process and unstable across Rust releases.
//!
//! ## Maglev disruption (measured: `cargo test --lib disruption_report -- --nocapture`)
//!
//! Servers of equal weight, one removed (marked down) and the table rebuilt; "moved" is the
//! share of table entries (so of flows) whose server changed, the mean over 10 different
//! removed servers; "ideal" is `1/N`, exactly the removed server's entries; "extra" is the
//! moved share that did not belong to the removed server. A server joining is the same pair
//! of tables in the other order, so it moves the same share.
//!
//! | N | M | ideal | moved | extra |
//! | --- | --- | --- | --- | --- |
//! | 10 | 65537 | 10.00 % | 10.24 % | 0.24 % |
//! | 100 | 65537 | 1.00 % | 1.59 % | 0.59 % |
//! | 1000 | 65537 | 0.10 % | 0.68 % | 0.57 % |
//! | 1000 | 1000003 | 0.10 % | 0.30 % | 0.20 % |
//!
//! The extra movement is Maglev's known trade-off for balance (NSDI'16 §3.4, §5.3); it shrinks
//! as `M / N` grows, hence the paper's advice `M > 100 N`: use a bigger prime
//! ([`SchedOptions::table_size`]) for services with hundreds of servers.

pub mod lc;
pub mod maglev;
pub mod rr;
pub mod sh;
pub mod wrr;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use siphasher::sip::SipHasher13;

pub use crate::dataplane::settings::SchedulerKind;

/// One real server as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServerSlot {
    /// Relative weight; 0 drains the server (no new connections).
    pub weight: u32,
    /// Health: a server that is down gets no new connections.
    pub up: bool,
    /// Connections currently assigned (maintained by the connection table).
    pub active_conns: u32,
    /// Stable identity for hashing (e.g. [`server_key`] of name and address): the Maglev
    /// permutation of a server depends only on this, never on its position in the list.
    pub key: u64,
}

impl ServerSlot {
    /// `up && weight > 0`: may receive new connections.
    pub fn eligible(&self) -> bool {
        self.up && self.weight > 0
    }
}

/// Picks a server for a new flow. Implementations are cheap to call and never allocate.
pub trait Scheduler: Send + core::fmt::Debug {
    /// The server for a new flow: an index into `servers`, `None` if none is eligible.
    /// `flow_hash` is the engine's hash of the 5-tuple (or of the client address when the
    /// service has persistence); `client` is the client's address.
    fn pick(&mut self, flow_hash: u64, client: IpAddr, servers: &[ServerSlot]) -> Option<usize>;
    /// Which scheduler this is.
    fn kind(&self) -> SchedulerKind;
}

/// Build-time options (the defaults suit production; tests use a small Maglev table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedOptions {
    /// Maglev lookup-table size for `mh` and `sh`; must be prime (NSDI'16 §3.4). Bigger tables
    /// follow weights more closely and move fewer flows when a server leaves; the paper
    /// suggests `M > 100 N`. Memory is 4 bytes per entry.
    pub table_size: usize,
}

impl Default for SchedOptions {
    fn default() -> Self {
        SchedOptions { table_size: maglev::DEFAULT_TABLE_SIZE }
    }
}

/// Errors of [`build_with`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedError {
    /// A Maglev table size must be a prime so every permutation visits every slot.
    #[error("scheduler: maglev table size {0} is not a prime >= 3")]
    TableSizeNotPrime(usize),
    /// Indices are stored as `u32`.
    #[error("scheduler: {0} servers is more than a scheduler can index")]
    TooManyServers(usize),
}

/// Builds the scheduler `kind` for `servers` with the default options.
pub fn build(kind: SchedulerKind, servers: &[ServerSlot]) -> Box<dyn Scheduler> {
    match build_with(kind, servers, SchedOptions::default()) {
        Ok(s) => s,
        // The default table size is a constant prime; only an absurd server count can fail.
        Err(e) => panic!("{e}"),
    }
}

/// Builds the scheduler `kind` for `servers` with explicit options.
pub fn build_with(
    kind: SchedulerKind,
    servers: &[ServerSlot],
    opts: SchedOptions,
) -> Result<Box<dyn Scheduler>, SchedError> {
    if u32::try_from(servers.len()).is_err() {
        return Err(SchedError::TooManyServers(servers.len()));
    }
    Ok(match kind {
        SchedulerKind::Rr => Box::new(rr::RoundRobin::new(servers)),
        SchedulerKind::Wrr => Box::new(wrr::SmoothWeighted::new(servers)),
        SchedulerKind::Lc => Box::new(lc::LeastConn::new(servers, false)),
        SchedulerKind::Wlc => Box::new(lc::LeastConn::new(servers, true)),
        SchedulerKind::Sh => Box::new(sh::SourceHash::new(servers, opts.table_size)?),
        SchedulerKind::Mh => Box::new(maglev::MaglevHash::new(servers, opts.table_size)?),
    })
}

/// Fixed SipHash-1-3 keys: changing them remaps every client and flow, on every ATM at once.
const HASH_KEYS: [(u64, u64); 3] = [
    (0x636c_7573_7465_7273, 0x6572_7665_7231_2d30), // general purpose ("clusterserver1-0")
    (0x6d61_676c_6576_2d6f, 0x6666_7365_7400_0001), // Maglev offset
    (0x6d61_676c_6576_2d73, 0x6b69_7000_0000_0002), // Maglev skip
];

/// A hash of `bytes` that is the same in every process, build and machine.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    keyed_hash(0, bytes)
}

fn keyed_hash(which: usize, bytes: &[u8]) -> u64 {
    let (k0, k1) = HASH_KEYS[which];
    SipHasher13::new_with_keys(k0, k1).hash(bytes)
}

/// The stable hash of a client address (what `sh` uses; the engine may use it as `flow_hash`
/// for `mh` with persistence). An IPv4-mapped IPv6 address hashes like the IPv4 address.
pub fn client_hash(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(a) => stable_hash(&a.octets()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => stable_hash(&v4.octets()),
            None => stable_hash(&a.octets()),
        },
    }
}

/// A stable server key from its name and address (for [`ServerSlot::key`]).
pub fn server_key(name: &str, address: IpAddr, port: u16) -> u64 {
    let mut buf = Vec::with_capacity(name.len() + 19);
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    match address {
        IpAddr::V4(a) => buf.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => buf.extend_from_slice(&a.octets()),
    }
    buf.extend_from_slice(&port.to_be_bytes());
    stable_hash(&buf)
}

/// The next eligible index strictly after `after` (wrapping), scanning at most `len` slots.
fn next_eligible(servers: &[ServerSlot], after: usize) -> Option<usize> {
    let n = servers.len();
    if n == 0 {
        return None;
    }
    let after = after.min(n - 1);
    (after + 1..n).chain(0..=after).find(|&i| servers[i].eligible())
}
