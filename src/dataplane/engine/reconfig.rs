//! Live reload of the engine: new services and servers, the connection table kept.
//!
//! A reload ([`Engine::reconfigure`]) is given the old and new services and the
//! [`Remap`] between them (services by name and endpoint, servers by name and address; see
//! [`crate::config::diff`]). What it does, per new service:
//!
//! * **unchanged** (same scheduler, persistence, `on_down` and servers, at any index): the
//!   service is moved whole, its scheduler state (round-robin position, Maglev table) too;
//! * **changed**: a new scheduler over the new servers; every server that stays keeps its
//!   health, active count and counters. A Maglev table rebuilt over a changed server set
//!   moves only the flows of the servers that changed (its slots are keyed by address and
//!   port, never by index);
//! * **new server** of a service that stays: it starts *down* when its service has checks,
//!   and enters once they pass (`rise`), like keepalived's `alpha`; without checks it is up;
//! * **new service**: its servers start up, as at start-up (a restarted daemon must not
//!   black-hole a service before its first checks).
//!
//! Then every connection-table entry is renumbered to its new (service, server). An entry of
//! a removed service is dropped. An entry whose server was removed (or moved to another
//! address) follows the service's `on_down`: `reset` drops it (its next packet is scheduled
//! afresh, or gets a RST), `keep` leaves it forwarding to its server's address, pointing at
//! no slot ([`ORPHAN`]): it never takes a new connection and counts on no server. The
//! affinity table is remapped the same way. Table timeouts change in place; the table's
//! size cannot (it is allocated once: the plan calls that a handover).
//!
//! Nothing here touches the sync queue: records name addresses, not indices, so records in
//! flight stay valid, and every ATM applies the same reload itself.

use crate::dataplane::settings::{self, OnDown, Remap};
use crate::time::Instant;

use super::family::Family;
use super::{Engine, ServerCounters, ServerSlot, Svc, affinity_records, secs, table_slots};
use core::net::{Ipv4Addr, Ipv6Addr};

/// The `server_idx` of an entry whose server a reload removed (`on_down: keep`).
pub const ORPHAN: u16 = u16::MAX;

/// What a live reload gives the engine.
#[derive(Clone, Copy, Debug)]
pub struct Reload<'a> {
    /// The services the engine runs now (as it was built or last reloaded).
    pub old: &'a [settings::ServiceSettings],
    pub new: &'a [settings::ServiceSettings],
    /// `Remap::between(old, new)` over the same two lists.
    pub remap: &'a Remap,
    pub table: &'a settings::Table,
}

/// What a reload did to the connection table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Services moved whole (scheduler state kept).
    pub services_kept: usize,
    /// Services given a new scheduler (changed or new).
    pub services_rebuilt: usize,
    /// Entries renumbered and kept.
    pub entries_kept: u64,
    /// Entries of removed services.
    pub entries_dropped: u64,
    /// Entries of removed servers with `on_down: reset`.
    pub entries_reset: u64,
    /// Entries of removed servers with `on_down: keep` (they run out on their own).
    pub entries_orphaned: u64,
}

/// Whether a service runs the same way under both configs (its scheduler state may stay).
fn same_service(o: &settings::ServiceSettings, n: &settings::ServiceSettings) -> bool {
    o.scheduler == n.scheduler
        && o.persistence_s == n.persistence_s
        && o.on_down == n.on_down
        && o.servers == n.servers
}

impl Engine {
    /// Applies a reload in place (module docs). `r.old` must be the services this engine
    /// runs: the remap's indices refer to them.
    pub fn reconfigure(&mut self, now: Instant, r: &Reload<'_>) -> ReloadStats {
        let mut stats = ReloadStats::default();
        let mut old: Vec<Option<Svc>> = std::mem::take(&mut self.svcs).into_iter().map(Some).collect();
        // Per new service: the old one it continues, if any.
        let from: Vec<Option<usize>> =
            (0..r.new.len()).map(|j| r.remap.services.iter().position(|&m| m == Some(j))).collect();
        let mut svcs = Vec::with_capacity(r.new.len());
        for (j, n) in r.new.iter().enumerate() {
            let seed = self.seed ^ j as u64;
            let svc = match from[j] {
                Some(i) if r.old.get(i).is_some_and(|o| same_service(o, n)) && old[i].is_some() => {
                    stats.services_kept += 1;
                    old[i].take().expect("checked")
                }
                Some(i) => {
                    stats.services_rebuilt += 1;
                    let prev = old[i].take();
                    let map = r.remap.servers.get(i).map_or(&[][..], Vec::as_slice);
                    let carried = |k: usize| {
                        let was = map.iter().position(|&m| m == Some(k))?;
                        let p = prev.as_ref()?;
                        Some((p.servers.get(was)?.clone(), p.counters.get(was).copied().unwrap_or_default()))
                    };
                    let mut slots = Vec::with_capacity(n.servers.len());
                    let mut counters = Vec::with_capacity(n.servers.len());
                    for (k, srv) in n.servers.iter().enumerate() {
                        let mut slot = ServerSlot::from_config(srv);
                        match carried(k) {
                            Some((was, c)) => {
                                slot.up = was.up;
                                slot.active = was.active;
                                counters.push(c);
                            }
                            None => {
                                slot.up = !n.has_checks;
                                counters.push(ServerCounters::default());
                            }
                        }
                        slots.push(slot);
                    }
                    let mut s = Svc::build(n, slots, seed);
                    s.counters = counters;
                    s
                }
                None => {
                    stats.services_rebuilt += 1;
                    Svc::build(n, n.servers.iter().map(ServerSlot::from_config).collect(), seed)
                }
            };
            svcs.push(svc);
        }
        self.svcs = svcs;
        self.renumber::<Ipv4Addr>(now, r, &mut stats);
        self.renumber::<Ipv6Addr>(now, r, &mut stats);
        stats
    }
}

impl Engine {
    /// Renumbers one family's table and affinity table to the new services (module docs).
    /// The first IPv6 service added by a reload allocates the IPv6 table (it held one
    /// slot and no entry); the table's size otherwise stays (see the module docs).
    fn renumber<A: Family>(&mut self, now: Instant, r: &Reload<'_>, stats: &mut ReloadStats) {
        let v6 = A::IS_V6;
        let wanted = table_slots(&self.svcs, r.table, v6);
        if self.tab::<A>().is_empty() && self.tab::<A>().capacity() < wanted.max_connections as usize {
            A::of_mut(&mut self.flows).table =
                crate::dataplane::conntrack::ConnTable::new(&wanted, self.seed ^ if v6 { 0x6666 } else { 0 });
        }
        let map = |svc: u16, idx: u16| -> Option<(u16, u16)> {
            let (s, k) = r.remap.server(usize::from(svc), usize::from(idx))?;
            Some((u16::try_from(s).ok()?, u16::try_from(k).ok()?))
        };
        for slot in 0..self.tab::<A>().used_end() {
            let e = *self.tab::<A>().get(slot);
            if e.state == crate::dataplane::conntrack::State::Free {
                continue;
            }
            let new_svc = r.remap.services.get(usize::from(e.service)).copied().flatten();
            let Some(ns) = new_svc.and_then(|s| u16::try_from(s).ok()) else {
                self.tab_mut::<A>().remove(slot);
                stats.entries_dropped += 1;
                continue;
            };
            match map(e.service, e.server_idx) {
                Some((_, k)) => {
                    let m = self.tab_mut::<A>().get_mut(slot);
                    m.service = ns;
                    m.server_idx = k;
                    stats.entries_kept += 1;
                }
                None if self.svcs[usize::from(ns)].on_down == OnDown::Reset => {
                    self.tab_mut::<A>().remove(slot);
                    stats.entries_reset += 1;
                }
                None => {
                    let m = self.tab_mut::<A>().get_mut(slot);
                    m.service = ns;
                    m.server_idx = ORPHAN;
                    stats.entries_orphaned += 1;
                }
            }
        }
        let records = affinity_records(&self.svcs, r.table, v6);
        let f = A::of_mut(&mut self.flows);
        f.affinity = f.affinity.remapped(records, secs(now), map);
        f.table.set_timeouts(r.table);
    }
}
