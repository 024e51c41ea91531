//! Persistence: client affinity per (service, client address) with a timeout.
//!
//! A fixed-size, 4-way set-associative table allocated at start-up: a lookup reads one set
//! of four records. A record lives `persistence_s` after the last *new connection* of that
//! client to that service (hits on existing connections do not need it: they follow their
//! table entry). When a set is full, an expired record or else the one expiring first is
//! replaced: losing a record under pressure only loses stickiness, never a connection.

use crate::dataplane::conntrack::FlowAddr;

const WAYS: usize = 4;

#[derive(Clone, Copy, Debug)]
struct Record<A> {
    client: A,
    service: u16,
    server_idx: u16,
    /// Second (of `now`) after which the record is void; 0 = empty.
    expires_s: u32,
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
        let empty = Record { client: A::UNSPECIFIED, service: 0, server_idx: 0, expires_s: 0 };
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
                out.put(service, r.client, server_idx, now_s, ttl);
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

    /// Remembers (or refreshes) `client` → `server_idx` until `now_s + ttl_s`.
    pub fn put(&mut self, service: u16, client: A, server_idx: u16, now_s: u32, ttl_s: u32) {
        if self.sets.is_empty() {
            return;
        }
        let i = self.set_of(service, client);
        let set = &mut self.sets[i];
        let way = set
            .iter()
            .position(|r| r.expires_s > now_s && r.service == service && r.client == client)
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&w| set[w].expires_s).unwrap_or(0));
        set[way] = Record { client, service, server_idx, expires_s: now_s.saturating_add(ttl_s).max(1) };
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
