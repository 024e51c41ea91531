//! `sh`: source hashing. The client's address, hashed with a fixed-key SipHash, indexes a
//! Maglev table (see [`super::maglev`]): the same client reaches the same server on every
//! ATM, across restarts and rebuilds, for as long as that server stays eligible; when a server
//! leaves only its own clients (plus Maglev's small extra share) move. Weighted like `mh`.

use std::net::IpAddr;

use super::maglev::MaglevTable;
use super::{SchedError, Scheduler, SchedulerKind, ServerSlot, client_hash};

/// Source-address hashing.
#[derive(Debug, Clone)]
pub struct SourceHash {
    table: MaglevTable,
}

impl SourceHash {
    /// Builds the lookup table.
    pub fn new(servers: &[ServerSlot], table_size: usize) -> Result<Self, SchedError> {
        Ok(SourceHash { table: MaglevTable::build(servers, table_size)? })
    }
}

impl Scheduler for SourceHash {
    fn pick(&mut self, _flow_hash: u64, client: IpAddr, servers: &[ServerSlot]) -> Option<usize> {
        self.table.pick(client_hash(client), servers)
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Sh
    }
}
