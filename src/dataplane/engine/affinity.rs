//! Persistence: client affinity per (service, client address) with a timeout.
//!
//! A fixed-size, 4-way set-associative table allocated at start-up: a lookup reads one set
//! of four records. A record lives `persistence_s` after the last *new connection* of that
//! client to that service (hits on existing connections do not need it: they follow their
//! table entry). When a set is full, an expired record or else the one expiring first is
//! replaced: losing a record under pressure only loses stickiness, never a connection.
//!
//! Records are synced to the backups ([`crate::dataplane::sync`], kind 3): [`Affinity::put`]
//! says when a record is worth a sync record (new, moved to another server, or last synced a
//! quarter of its timeout ago), and [`Affinity::next_valid`] walks the table for a full sync.

use crate::dataplane::conntrack::FlowAddr;

const WAYS: usize = 4;

#[derive(Clone, Copy, Debug)]
struct Record<A> {
    client: A,
    service: u16,
    server_idx: u16,
    /// Second (of `now`) after which the record is void; 0 = empty.
    expires_s: u32,
    /// The `expires_s` the backups last heard (0: never synced).
    synced_expires_s: u32,
}

/// A valid record, as a full sync walks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remembered<A> {
    pub service: u16,
    pub client: A,
    pub server_idx: u16,
    /// Seconds left.
    pub remaining_s: u32,
}

/// The affinity table.
#[derive(Debug)]
pub struct Affinity<A: FlowAddr> {
    sets: Vec<[Record<A>; WAYS]>,
    seed: u64,
}

impl<A: FlowAddr> Affinity<A> {
    /// A table of about `records` records (rounded up to a power of two; 0 allocates nothing
    /// and remembers nothing).
    pub fn new(records: usize, seed: u64) -> Self {
        let n = if records == 0 { 0 } else { (records.div_ceil(WAYS)).next_power_of_two() };
        let empty =
            Record { client: A::UNSPECIFIED, service: 0, server_idx: 0, expires_s: 0, synced_expires_s: 0 };
        Affinity { sets: vec![[empty; WAYS]; n], seed }
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.sets.capacity() * core::mem::size_of::<[Record<A>; WAYS]>()
    }

    fn set_of(&self, service: u16, client: A) -> usize {
        let h = (client.word(self.seed) ^ (u64::from(service) << 48) ^ self.seed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 32) as usize) & (self.sets.len() - 1)
    }

    /// Records per set times sets.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// A copy of this table with about `records` records (never fewer than now), holding
    /// every valid record that `map` gives a new (service, server) (a live reload; see
    /// [`crate::config::diff::Remap`]). Allocates: for reloads, never the packet path.
    pub fn remapped(&self, records: usize, now_s: u32, map: impl Fn(u16, u16) -> Option<(u16, u16)>) -> Self {
        let mut out = Affinity::new(records.max(self.capacity()), self.seed);
        for r in self.sets.iter().flatten().filter(|r| r.expires_s > now_s) {
            if let Some((service, server_idx)) = map(r.service, r.server_idx) {
                let ttl = r.expires_s - now_s;
                out.put_synced(service, r.client, server_idx, now_s, ttl);
            }
        }
        out
    }

    /// The remembered server of `client` for `service`, if the record is still valid.
    pub fn get(&self, service: u16, client: A, now_s: u32) -> Option<u16> {
        if self.sets.is_empty() {
            return None;
        }
        self.sets[self.set_of(service, client)]
            .iter()
            .find(|r| r.expires_s > now_s && r.service == service && r.client == client)
            .map(|r| r.server_idx)
    }

    /// Remembers (or refreshes) `client` → `server_idx` until `now_s + ttl_s`. Returns
    /// whether the backups should hear of it (then it counts as synced): a new record, one
    /// that moved to another server, or one whose backups' copy has less than three
    /// quarters of its timeout left.
    pub fn put(&mut self, service: u16, client: A, server_idx: u16, now_s: u32, ttl_s: u32) -> bool {
        let Some(r) = self.slot(service, client, now_s) else { return false };
        let expires_s = now_s.saturating_add(ttl_s).max(1);
        let same = r.expires_s > now_s && r.server_idx == server_idx && r.synced_expires_s != 0;
        let offer = !same || expires_s.saturating_sub(r.synced_expires_s) >= (ttl_s / 4).max(1);
        let synced_expires_s = if offer { expires_s } else { r.synced_expires_s };
        *r = Record { client, service, server_idx, expires_s, synced_expires_s };
        offer
    }

    /// A record a peer synced: `client` → `server_idx` for `remaining_s` more (not offered
    /// for sync again from here).
    pub fn put_synced(&mut self, service: u16, client: A, server_idx: u16, now_s: u32, remaining_s: u32) {
        if let Some(r) = self.slot(service, client, now_s) {
            let expires_s = now_s.saturating_add(remaining_s).max(1);
            *r = Record { client, service, server_idx, expires_s, synced_expires_s: expires_s };
        }
    }

    /// The way of `client`'s record for `service`, else the one to replace.
    fn slot(&mut self, service: u16, client: A, now_s: u32) -> Option<&mut Record<A>> {
        if self.sets.is_empty() {
            return None;
        }
        let i = self.set_of(service, client);
        let set = &mut self.sets[i];
        let way = set
            .iter()
            .position(|r| r.expires_s > now_s && r.service == service && r.client == client)
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&w| set[w].expires_s).unwrap_or(0));
        Some(&mut set[way])
    }

    /// The first valid record at or after position `from` of a walk over the table, and the
    /// position after it; looks at `budget` positions at most (`None` with the position to
    /// go on from when it found none in them; `None, None` at the end).
    pub fn next_valid(
        &self,
        from: usize,
        now_s: u32,
        budget: usize,
    ) -> (Option<Remembered<A>>, Option<usize>) {
        let end = self.sets.len() * WAYS;
        let stop = end.min(from.saturating_add(budget));
        for at in from..stop {
            let r = &self.sets[at / WAYS][at % WAYS];
            if r.expires_s > now_s {
                let found = Remembered {
                    service: r.service,
                    client: r.client,
                    server_idx: r.server_idx,
                    remaining_s: r.expires_s - now_s,
                };
                return (Some(found), (at + 1 < end).then_some(at + 1));
            }
        }
        (None, (stop < end).then_some(stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn remembers_until_timeout() {
        let mut a = Affinity::<Ipv4Addr>::new(64, 9);
        let c = Ipv4Addr::new(1, 2, 3, 4);
        assert_eq!(a.get(0, c, 10), None);
        a.put(0, c, 3, 10, 60);
        assert_eq!(a.get(0, c, 69), Some(3));
        assert_eq!(a.get(1, c, 20), None);
        assert_eq!(a.get(0, c, 70), None);
        a.put(0, c, 2, 71, 60);
        assert_eq!(a.get(0, c, 72), Some(2));
    }

    #[test]
    fn offers_new_moved_and_aging_records_for_sync_and_walks_the_valid_ones() {
        let mut a = Affinity::<Ipv4Addr>::new(64, 9);
        let c = Ipv4Addr::new(1, 2, 3, 4);
        assert!(a.put(0, c, 3, 10, 60), "a new record");
        assert!(!a.put(0, c, 3, 11, 60), "renewed a second later: the backups' copy is fresh");
        assert!(a.put(0, c, 2, 12, 60), "moved to another server");
        assert!(!a.put(0, c, 2, 20, 60));
        assert!(a.put(0, c, 2, 27, 60), "the backups' copy has lost a quarter of its timeout");
        a.put_synced(1, c, 5, 27, 30);
        assert_eq!(a.get(1, c, 56), Some(5));
        assert!(!a.put(1, c, 5, 28, 30), "a synced record is not offered back");
        let mut found = Vec::new();
        let mut at = Some(0);
        while let Some(from) = at {
            let (r, next) = a.next_valid(from, 28, 7);
            found.extend(r);
            at = next;
        }
        found.sort_by_key(|r| r.service);
        let want = [
            Remembered { service: 0, client: c, server_idx: 2, remaining_s: 59 },
            Remembered { service: 1, client: c, server_idx: 5, remaining_s: 30 },
        ];
        assert_eq!(found, want);
        assert_eq!(a.next_valid(0, 1000, usize::MAX), (None, None), "expired records are not walked");
    }

    #[test]
    fn full_sets_replace_soonest_expiring() {
        let mut a = Affinity::<Ipv4Addr>::new(4, 1);
        for n in 0..5u8 {
            a.put(0, Ipv4Addr::new(10, 0, 0, n), u16::from(n), 0, 100 + u32::from(n));
        }
        assert_eq!(a.get(0, Ipv4Addr::new(10, 0, 0, 0), 1), None);
        assert_eq!(a.get(0, Ipv4Addr::new(10, 0, 0, 4), 1), Some(4));
        let empty = Affinity::<Ipv4Addr>::new(0, 1);
        assert_eq!(empty.memory_bytes(), 0);
    }
}
