//! The engine's side of connection sync: recording changes (primary) and applying
//! records (backup).
//!
//! A primary queues a record when an entry becomes established or closing, when a UDP
//! flow starts, and again whenever a live entry's last record is older than half its
//! timeout (so backups' copies never expire while the flow lives). Half-open entries are
//! queued only during a planned handover ([`Engine::set_handing_over`]): a SYN flood must
//! not flood the sync channel too. The queue is bounded (overflow counted);
//! [`Engine::start_full_sync`] walks the table once, lazily and in bounded steps, for a
//! backup that (re)joins or a successor about to take over.
//!
//! Persistence (client affinity) entries are synced too, as affinity records
//! ([`crate::dataplane::sync::RecordKind::Affinity`]): queued when the primary makes or
//! renews one for a new connection (at most every quarter of the timeout per client, unless
//! the server changed), walked after the connection tables by a full resync, and taken by a
//! backup into its own affinity table (an active engine keeps the records it has), so a
//! persistent client keeps its server across a failover.
//!
//! On the backup:
//! Records name addresses, not indices: the receiver resolves the service from the VIP,
//! port and protocol and the server from its address and port in its own config, so a
//! record for a service or server it does not know is refused rather than misapplied. The
//! entry's idle clock is set so that it expires `remaining_ms` after `now`, as it would on
//! the sender. (A shadow entry sits in its idle list by arrival order, so under a full
//! table eviction order among shadow entries is by sync arrival.)

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::family::Family;
use super::{Engine, EngineError, SYNC_QUEUE, secs};

/// Slots a full resync looks at per [`Engine::poll_sync`] call at most (some tens of
/// microseconds).
pub const WALK_SLOTS_PER_CALL: u32 = 8192;
use crate::dataplane::conntrack::{Entry, FLAG_NAT, FwdKey, State};
use crate::dataplane::settings::Forwarding;
use crate::dataplane::sync::{RecordKind, SyncRecord};
use crate::dataplane::wire::proto;
use crate::time::Instant;

/// The address of family `A` and port of `a`.
fn of<A: Family>(a: SocketAddr) -> Result<(A, u16), EngineError> {
    let ip = A::from_ip(a.ip()).ok_or(EngineError::Sync("addresses of different families"))?;
    Ok((ip, a.port()))
}

impl Engine {
    fn record<A: Family>(&self, slot: u32, now: Instant) -> SyncRecord {
        let t = self.tab::<A>();
        let e = t.get(slot);
        SyncRecord {
            kind: RecordKind::Connection,
            proto: e.proto,
            state: e.state,
            client: SocketAddr::new(e.client.into(), e.client_port),
            vip: SocketAddr::new(e.vip.into(), e.vip_port),
            server: SocketAddr::new(e.server.into(), e.server_port),
            remaining_ms: u32::try_from(t.remaining_ns(slot, now) / 1_000_000).unwrap_or(u32::MAX),
        }
    }

    /// Queues the entry for connection sync when its state changed (`force`) or its last
    /// offer is older than half its timeout. Half-open entries are synced only during a
    /// handover ([`Engine::set_handing_over`]): a SYN flood must not flood the sync channel
    /// too.
    pub(super) fn offer_sync<A: Family>(&mut self, slot: u32, now: Instant, force: bool) {
        if !self.sync_enabled {
            return;
        }
        let e = self.tab::<A>().get(slot);
        if matches!(e.state, State::SynSent | State::SynRecv) && !self.handing_over {
            return;
        }
        let now16 = secs(now) as u16;
        let refresh_s = (self.tab::<A>().timeout_ns(e.state) / 2_000_000_000).clamp(1, 30_000) as u16;
        if !force && now16.wrapping_sub(e.synced_s) < refresh_s {
            return;
        }
        let rec = self.record::<A>(slot, now);
        self.tab_mut::<A>().get_mut(slot).synced_s = now16;
        if self.sync_queue.len() < SYNC_QUEUE {
            self.sync_queue.push_back(rec);
            self.stats.sync_queued += 1;
        } else {
            self.stats.sync_overflow += 1;
        }
    }

    /// The affinity record of `client` → server `server_idx` of service `svc_idx` with
    /// `remaining_s` left (`None` for an index the services no longer have).
    fn affinity_record<A: Family>(
        &self,
        svc_idx: usize,
        client: A,
        server_idx: u16,
        remaining_s: u32,
    ) -> Option<SyncRecord> {
        let svc = self.svcs.get(svc_idx)?;
        let i = usize::from(server_idx);
        let (addr, port) = (*svc.addrs.get(i)?, svc.servers.get(i)?.port);
        Some(SyncRecord {
            kind: RecordKind::Affinity,
            proto: svc.proto,
            state: if svc.proto == proto::UDP { State::Udp } else { State::Established },
            client: SocketAddr::new(client.into(), 0),
            vip: SocketAddr::new(svc.vip, svc.port),
            // A cross-family tunnel server travels as its stand-in, as in connection records.
            server: SocketAddr::new(A::token(addr).into(), port),
            remaining_ms: remaining_s.saturating_mul(1000),
        })
    }

    /// Queues an affinity record for sync (see the module docs).
    pub(super) fn offer_affinity<A: Family>(
        &mut self,
        svc_idx: usize,
        client: A,
        server_idx: u16,
        remaining_s: u32,
    ) {
        if !self.sync_enabled {
            return;
        }
        let Some(rec) = self.affinity_record::<A>(svc_idx, client, server_idx, remaining_s) else { return };
        if self.sync_queue.len() < SYNC_QUEUE {
            self.sync_queue.push_back(rec);
            self.stats.sync_queued += 1;
        } else {
            self.stats.sync_overflow += 1;
        }
    }

    /// The next change waiting for connection sync (see [`crate::dataplane::sync`]); then,
    /// during a full resync, the next live synchronisable entry of the table.
    ///
    /// A resync walks the slab once, up to [`crate::dataplane::conntrack::ConnTable::used_end`]
    /// (slots beyond it were never used), spread over calls: one call looks at no more than
    /// [`WALK_SLOTS_PER_CALL`] slots and returns `None` with the walk still under way
    /// ([`Engine::full_sync_running`]) when it found nothing in them. The packet path runs
    /// between two calls, so a walk of a large table never holds forwarding up (a whole
    /// walk of a million slots in one call stalled a lab's clients for 50 to 100 ms). The
    /// IPv4 table is walked first, then the IPv6 one.
    pub fn poll_sync(&mut self, now: Instant) -> Option<SyncRecord> {
        if let Some(r) = self.sync_queue.pop_front() {
            return Some(r);
        }
        if self.flows.v4.resync_cursor.is_some() {
            let r = self.walk::<Ipv4Addr>(now);
            if r.is_some() || self.flows.v4.resync_cursor.is_some() {
                return r;
            }
        }
        if self.flows.v6.resync_cursor.is_some() {
            let r = self.walk::<Ipv6Addr>(now);
            if r.is_some() || self.flows.v6.resync_cursor.is_some() {
                return r;
            }
        }
        if self.flows.v4.affinity_cursor.is_some() {
            let r = self.walk_affinity::<Ipv4Addr>(now);
            if r.is_some() || self.flows.v4.affinity_cursor.is_some() {
                return r;
            }
        }
        self.walk_affinity::<Ipv6Addr>(now)
    }

    /// The next valid affinity record of a full resync (bounded per call like [`Engine::walk`]).
    fn walk_affinity<A: Family>(&mut self, now: Instant) -> Option<SyncRecord> {
        let from = A::of(&self.flows).affinity_cursor?;
        let (found, next) =
            A::of(&self.flows).affinity.next_valid(from, secs(now), WALK_SLOTS_PER_CALL as usize);
        A::of_mut(&mut self.flows).affinity_cursor = next;
        let m = found?;
        self.affinity_record::<A>(usize::from(m.service), m.client, m.server_idx, m.remaining_s)
    }

    fn walk<A: Family>(&mut self, now: Instant) -> Option<SyncRecord> {
        let mut slot = A::of(&self.flows).resync_cursor?;
        let end = self.tab::<A>().used_end();
        let stop = end.min(slot.saturating_add(WALK_SLOTS_PER_CALL));
        while slot < stop {
            let e = self.tab::<A>().get(slot);
            let syncable = match e.state {
                State::Free => false,
                State::SynSent | State::SynRecv => self.handing_over,
                State::Established | State::Closing | State::Udp => true,
            };
            if syncable && !self.tab::<A>().is_expired(slot, now) {
                A::of_mut(&mut self.flows).resync_cursor = Some(slot + 1);
                return Some(self.record::<A>(slot, now));
            }
            slot += 1;
        }
        A::of_mut(&mut self.flows).resync_cursor = (slot < end).then_some(slot);
        None
    }

    /// A planned handover (a graceful stop or an operator's handover) is under way, or no
    /// longer. While it is, half-open entries are synced too, at once, and a full resync
    /// includes them: a client whose SYN reached this ATM just before the successor took the
    /// VIP sends the rest of its handshake to the successor, which must know the flow. (At
    /// other times half-open entries stay out of sync: a SYN flood must not flood the sync
    /// channel too; a handover lasts a drain time.)
    pub fn set_handing_over(&mut self, on: bool) {
        self.handing_over = on;
    }

    /// Whether a planned handover is under way ([`Engine::set_handing_over`]).
    pub fn handing_over(&self) -> bool {
        self.handing_over
    }

    /// Changes are queued for connection sync ([`Engine::poll_sync`] has records without
    /// walking the table).
    pub fn sync_pending(&self) -> bool {
        !self.sync_queue.is_empty()
    }

    /// Starts (or restarts) sending every live entry, for a backup that (re)joins.
    pub fn start_full_sync(&mut self) {
        if self.sync_enabled {
            self.flows.v4.resync_cursor = Some(0);
            self.flows.v6.resync_cursor = Some(0);
            self.flows.v4.affinity_cursor = Some(0);
            self.flows.v6.affinity_cursor = Some(0);
        }
    }

    /// A full resync is still walking the table (records of it may still come from
    /// [`Engine::poll_sync`]).
    pub fn full_sync_running(&self) -> bool {
        let f = &self.flows;
        f.v4.resync_cursor.is_some()
            || f.v6.resync_cursor.is_some()
            || f.v4.affinity_cursor.is_some()
            || f.v6.affinity_cursor.is_some()
    }

    /// Turns the recording of changes for connection sync on or off (off at start).
    pub fn set_sync(&mut self, enabled: bool) {
        self.sync_enabled = enabled;
        if !enabled {
            self.sync_queue.clear();
            self.flows.v4.resync_cursor = None;
            self.flows.v6.resync_cursor = None;
            self.flows.v4.affinity_cursor = None;
            self.flows.v6.affinity_cursor = None;
        }
    }

    /// Inserts or refreshes the entry a sync record describes. An inactive engine (a backup's
    /// shadow) takes every record; an active one only learns connections it does not have
    /// (made by a gracefully draining predecessor or a briefly co-active peer) and keeps its
    /// own view of those it has.
    pub fn apply_sync(&mut self, now: Instant, rec: &SyncRecord) -> Result<(), EngineError> {
        match (rec.vip, rec.kind) {
            (SocketAddr::V4(_), RecordKind::Connection) => self.apply_in::<Ipv4Addr>(now, rec),
            (SocketAddr::V6(_), RecordKind::Connection) => self.apply_in::<Ipv6Addr>(now, rec),
            (SocketAddr::V4(_), RecordKind::Affinity) => self.apply_affinity::<Ipv4Addr>(now, rec),
            (SocketAddr::V6(_), RecordKind::Affinity) => self.apply_affinity::<Ipv6Addr>(now, rec),
        }
    }

    /// An affinity record: the client sticks to the server here too, for the time left
    /// (never longer than this ATM's own `persistence_s`). An active engine keeps a record
    /// it has.
    fn apply_affinity<A: Family>(&mut self, now: Instant, rec: &SyncRecord) -> Result<(), EngineError> {
        let (client, _) = of::<A>(rec.client)?;
        let (vip, vport) = of::<A>(rec.vip)?;
        let (server, sport) = of::<A>(rec.server)?;
        let svc_idx = self.find_service(vip, vport, rec.proto).ok_or(EngineError::Sync("unknown service"))?;
        let svc = &self.svcs[svc_idx];
        if svc.persistence_s == 0 {
            return Err(EngineError::Sync("affinity for a service without persistence"));
        }
        let server_idx = svc
            .servers
            .iter()
            .position(|s| A::token(s.address) == server && s.port == sport)
            .ok_or(EngineError::Sync("unknown server"))?;
        let remaining_s = rec.remaining_ms.div_ceil(1000).min(svc.persistence_s);
        let (svc_id, server_idx) = (svc_idx as u16, server_idx as u16);
        let now_s = secs(now);
        let affinity = &mut A::of_mut(&mut self.flows).affinity;
        if self.active && affinity.get(svc_id, client, now_s).is_some() {
            return Ok(());
        }
        affinity.put_synced(svc_id, client, server_idx, now_s, remaining_s);
        self.stats.sync_applied += 1;
        Ok(())
    }

    fn apply_in<A: Family>(&mut self, now: Instant, rec: &SyncRecord) -> Result<(), EngineError> {
        let (client, cport) = of::<A>(rec.client)?;
        let (vip, vport) = of::<A>(rec.vip)?;
        let (server, sport) = of::<A>(rec.server)?;
        let ok_state = match rec.proto {
            proto::TCP => rec.state != State::Udp && rec.state != State::Free,
            proto::UDP => rec.state == State::Udp,
            _ => false,
        };
        if !ok_state {
            return Err(EngineError::Sync("state does not fit protocol"));
        }
        let svc_idx = self.find_service(vip, vport, rec.proto).ok_or(EngineError::Sync("unknown service"))?;
        let svc = &self.svcs[svc_idx];
        let server_idx = svc
            .servers
            .iter()
            // A cross-family tunnel server travels as its stand-in (`Family::token`).
            .position(|s| A::token(s.address) == server && s.port == sport)
            .ok_or(EngineError::Sync("unknown server"))?;
        let nat = svc.forwarding == Forwarding::Nat;
        let key = FwdKey { proto: rec.proto, client, client_port: cport, vip, vip_port: vport };
        if self.is_active() && self.tab::<A>().find_fwd(&key).is_some() {
            return Ok(());
        }
        let slot = match self.tab::<A>().find_fwd(&key) {
            Some(slot) if usize::from(self.tab::<A>().get(slot).server_idx) == server_idx => {
                self.tab_mut::<A>().set_state(slot, rec.state, now);
                slot
            }
            found => {
                if let Some(slot) = found {
                    self.remove_slot::<A>(slot);
                }
                let rk = crate::dataplane::conntrack::RevKey {
                    proto: rec.proto,
                    server,
                    server_port: sport,
                    client,
                    client_port: cport,
                };
                if nat && let Some(other) = self.tab::<A>().find_rev(&rk) {
                    self.remove_slot::<A>(other);
                }
                let entry = Entry::new(
                    rec.proto,
                    (client, cport),
                    (vip, vport),
                    (server, sport),
                    svc_idx as u16,
                    server_idx as u16,
                    rec.state,
                    if nat { FLAG_NAT } else { 0 },
                );
                self.insert(entry, now)
            }
        };
        let t = self.tab_mut::<A>();
        let timeout = t.timeout_ns(rec.state);
        let remaining = (u64::from(rec.remaining_ms) * 1_000_000).min(timeout);
        let last_seen = now.as_nanos().saturating_add(remaining).saturating_sub(timeout);
        t.set_last_seen(slot, last_seen);
        t.get_mut(slot).synced_s = secs(now) as u16;
        self.stats.sync_applied += 1;
        Ok(())
    }
}

impl crate::dataplane::sync::SyncSource for Engine {
    fn poll_sync(&mut self, now: Instant) -> Option<SyncRecord> {
        Engine::poll_sync(self, now)
    }
}

impl crate::dataplane::sync::SyncSink for Engine {
    fn apply_sync(&mut self, now: Instant, rec: &SyncRecord) -> bool {
        Engine::apply_sync(self, now, rec).is_ok()
    }
}
