//! `mh`: Maglev consistent hashing (Eisenbud et al., NSDI'16, §3.4).
//!
//! A lookup table of prime size `M` maps a hash to a server. Each eligible server owns a
//! permutation of the table's slots, `offset + j * skip (mod M)` for `j = 0, 1, ..`, where
//! `offset = h1(key) mod M` and `skip = h2(key) mod (M - 1) + 1` come from two fixed-key
//! SipHashes of the server's stable [`ServerSlot::key`] (never of its position in the list, so
//! adding or removing one server leaves the others' permutations alone). Because `M` is prime
//! every `skip` is coprime with it, so every permutation visits every slot.
//!
//! The table is filled in rounds: in each round every eligible server in turn claims the next
//! slot of its permutation that is still free. **Weights** (the paper leaves the method open):
//! each round a server earns `weight / max_weight` of a turn and takes a turn whenever it has
//! earned a whole one, keeping the remainder; so the heaviest server claims a slot every
//! round, a server of half its weight every other round, and each server ends up with a share
//! of the `M` slots proportional to its weight, to within `2 + N w / W` slots (whole-turn
//! rounding, the partial last round, and this server's part of the others' rounding).
//! Down and drained (weight 0) servers have no permutation at all: they own no slot.
//!
//! Lookups are one modulo and one load. The build costs `O(M log M)` slot probes for equal
//! weights (benchmarked in `benches/sched.rs`). Measured disruption is in the parent module.

use std::net::IpAddr;

use super::{SchedError, Scheduler, SchedulerKind, ServerSlot, keyed_hash};

/// The paper's default table size for production: prime, and over 100x a few hundred servers.
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// A stale table (health changed, not rebuilt yet) whose slot points at an ineligible server
/// probes at most this many following slots before giving up.
const STALE_PROBES: usize = 32;

const EMPTY: u32 = u32::MAX;

/// A built Maglev lookup table: slot -> index in the server list it was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    /// Empty when no server was eligible; otherwise exactly `M` entries, none `EMPTY`.
    entries: Vec<u32>,
}

impl MaglevTable {
    /// Builds the table of prime size `size` over the eligible `servers`.
    pub fn build(servers: &[ServerSlot], size: usize) -> Result<Self, SchedError> {
        if !is_prime(size) {
            return Err(SchedError::TableSizeNotPrime(size));
        }
        if u32::try_from(servers.len()).is_err() {
            return Err(SchedError::TooManyServers(servers.len()));
        }
        let m = size as u64;
        let mut perm: Vec<Turns> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.eligible())
            .map(|(i, s)| {
                let key = s.key.to_le_bytes();
                Turns {
                    index: i as u32,
                    weight: u64::from(s.weight),
                    next: keyed_hash(1, &key) % m,
                    skip: keyed_hash(2, &key) % (m - 1) + 1,
                    credit: 0,
                }
            })
            .collect();
        // Claim order within a round decides contested slots: order by key, so the table
        // depends on the set of servers, not on their order in the config.
        perm.sort_by_key(|t| (servers[t.index as usize].key, t.index));
        let Some(max_weight) = perm.iter().map(|t| t.weight).max() else {
            return Ok(MaglevTable { entries: Vec::new() });
        };
        let mut entries = vec![EMPTY; size];
        let mut filled = 0usize;
        while filled < size {
            for t in perm.iter_mut() {
                t.credit += t.weight;
                if t.credit < max_weight {
                    continue;
                }
                t.credit -= max_weight;
                // A free slot exists (filled < size) and the permutation visits every slot:
                // this loop ends within `size` steps.
                loop {
                    let slot = t.next as usize;
                    t.next = (t.next + t.skip) % m;
                    if entries[slot] == EMPTY {
                        entries[slot] = t.index;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Ok(MaglevTable { entries })
    }

    /// The server index for `hash`, `None` if the table is empty.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        self.slot(hash).map(|s| self.entries[s] as usize)
    }

    /// The raw table (server indices), for measurements and tests.
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    fn slot(&self, hash: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        Some((hash % self.entries.len() as u64) as usize)
    }

    /// The eligible server for `hash`, probing past stale entries (see [`STALE_PROBES`]).
    pub(super) fn pick(&self, hash: u64, servers: &[ServerSlot]) -> Option<usize> {
        let start = self.slot(hash)?;
        let m = self.entries.len();
        (0..STALE_PROBES.min(m))
            .map(|k| self.entries[(start + k) % m] as usize)
            .find(|&i| servers.get(i).is_some_and(ServerSlot::eligible))
    }
}

#[derive(Debug)]
struct Turns {
    index: u32,
    weight: u64,
    next: u64,
    skip: u64,
    credit: u64,
}

/// Maglev hashing of the flow: the engine's `flow_hash` (5-tuple, or client for persistence).
#[derive(Debug, Clone)]
pub struct MaglevHash {
    table: MaglevTable,
}

impl MaglevHash {
    /// Builds the lookup table (the expensive part; `pick` is a table load).
    pub fn new(servers: &[ServerSlot], table_size: usize) -> Result<Self, SchedError> {
        Ok(MaglevHash { table: MaglevTable::build(servers, table_size)? })
    }

    /// The table, for measurements.
    pub fn table(&self) -> &MaglevTable {
        &self.table
    }
}

impl Scheduler for MaglevHash {
    fn pick(&mut self, flow_hash: u64, _client: IpAddr, servers: &[ServerSlot]) -> Option<usize> {
        // The engine's flow hash may be weak in its low bits (which `% M` reads): mix it.
        self.table.pick(mix64(flow_hash), servers)
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Mh
    }
}

/// The splitmix64 finaliser: a fixed bijection that spreads every input bit over the output.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether `n` is a prime of at least 3 (trial division; table sizes are small).
pub fn is_prime(n: usize) -> bool {
    if n < 3 || n % 2 == 0 {
        return false;
    }
    let mut d = 3usize;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}
