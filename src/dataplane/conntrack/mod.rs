//! The connection table: 5-tuple → real server, with TCP state, idle timeouts and a hard
//! size limit.
//!
//! # Layout and cost
//!
//! Entries live in one slab allocated at start-up (`max_connections` slots, a free list
//! threaded through the unused ones). Two [`index::Index`]es map hashes to slots: the
//! *forward* key `(proto, client, client port, VIP, VIP port)` for packets from clients, and
//! the *reverse* key `(proto, server, server port, client, client port)` for NAT replies
//! (only NAT entries are in it). A lookup is one hash, usually one bucket probe and one
//! entry read: O(1). Nothing allocates after construction. `memory_bytes` reports the heap
//! held; the test `million_entries_fit` asserts 1,000,000 entries take at most 256 MB.
//!
//! # Timeouts
//!
//! Each entry belongs to one *class* by state, and each class has its idle timeout from the
//! config `table` section:
//!
//! | state | class | timeout |
//! | --- | --- | --- |
//! | `SynSent` (client SYN seen), `SynRecv` (server SYN-ACK seen, NAT only) | embryonic | `tcp_syn_timeout_s` |
//! | `Established` | established | `tcp_timeout_s` |
//! | `Closing` (a FIN or RST seen) | closing | `tcp_fin_timeout_s` |
//! | `Udp` | udp | `udp_timeout_s` |
//!
//! Each class keeps an intrusive doubly linked list ordered by the second the entry was
//! last (re)linked. A hit relinks an entry to its list's tail at most once per second, so
//! the head is always the oldest idle entry to within one second and expiry only looks at
//! list heads: [`ConnTable::expire`] is amortised O(1) per entry and bounded per call.
//!
//! # Eviction (table full)
//!
//! An insert into a full table first reclaims expired heads, then evicts the **oldest idle
//! embryonic** entry if there is one, and only otherwise the oldest idle entry of any class.
//! A SYN flood therefore recycles its own half-open entries and never pushes out an
//! established connection while a half-open one exists. Evictions are counted by class.

pub mod index;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::dataplane::settings;
use crate::time::Instant;
use index::Index;

/// An address family usable in the table: IPv4 and IPv6.
pub trait FlowAddr: Copy + Eq + core::fmt::Debug + Into<IpAddr> {
    /// A placeholder for free slots.
    const UNSPECIFIED: Self;
    /// The address folded into 64 bits for hashing, under the table's `seed`. An IPv4
    /// address is its 32 bits (the seed goes into the mix after); an IPv6 address is
    /// folded through the seed, so that clients who choose their interface identifiers
    /// cannot pick addresses that collide whatever the seed.
    fn word(self, seed: u64) -> u64;
    /// The address of this family in `ip`, if it is one.
    fn from_ip(ip: IpAddr) -> Option<Self>;
}

impl FlowAddr for Ipv4Addr {
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    #[inline]
    fn word(self, _seed: u64) -> u64 {
        u64::from(self.to_bits())
    }
    #[inline]
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl FlowAddr for Ipv6Addr {
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    #[inline]
    fn word(self, seed: u64) -> u64 {
        let b = self.to_bits();
        let (hi, lo) = ((b >> 64) as u64, b as u64);
        let h = (hi ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ lo;
        h.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ (h >> 32)
    }
    #[inline]
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

/// Connection state. `Udp` is the only state of a UDP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Free = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    Closing = 4,
    Udp = 5,
}

impl State {
    /// The wire value used by connection sync.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// Inverse of [`State::to_u8`]; `Free` and unknown values are `None`.
    pub fn from_u8(v: u8) -> Option<State> {
        Some(match v {
            1 => State::SynSent,
            2 => State::SynRecv,
            3 => State::Established,
            4 => State::Closing,
            5 => State::Udp,
            _ => return None,
        })
    }

    fn class(self) -> usize {
        match self {
            State::Free | State::SynSent | State::SynRecv => CLASS_EMBRYONIC,
            State::Established => 1,
            State::Closing => 2,
            State::Udp => 3,
        }
    }
}

const CLASS_EMBRYONIC: usize = 0;
const CLASSES: usize = 4;
const NIL: u32 = u32::MAX;
const NANOS_PER_S: u64 = 1_000_000_000;

/// Entry flag: the entry is NAT-forwarded and present in the reverse index.
pub const FLAG_NAT: u8 = 1;

/// One tracked connection. 48 bytes for IPv4, 88 for IPv6.
#[derive(Clone, Copy, Debug)]
pub struct Entry<A: FlowAddr> {
    pub client: A,
    pub vip: A,
    pub server: A,
    pub client_port: u16,
    pub vip_port: u16,
    pub server_port: u16,
    pub proto: u8,
    pub state: State,
    pub flags: u8,
    /// Index of the service in the engine's config.
    pub service: u16,
    /// Index of the server within its service.
    pub server_idx: u16,
    /// Last packet, nanoseconds.
    pub last_seen: u64,
    /// Second (of `now`) when last linked at its list's tail.
    linked_s: u32,
    /// Second (mod 2^16) when last offered to connection sync (kept by the engine).
    pub synced_s: u16,
    prev: u32,
    next: u32,
}

impl<A: FlowAddr> Entry<A> {
    /// A new entry (not yet in a table).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        proto: u8,
        client: (A, u16),
        vip: (A, u16),
        server: (A, u16),
        service: u16,
        server_idx: u16,
        state: State,
        flags: u8,
    ) -> Self {
        Entry {
            client: client.0,
            vip: vip.0,
            server: server.0,
            client_port: client.1,
            vip_port: vip.1,
            server_port: server.1,
            proto,
            state,
            flags,
            service,
            server_idx,
            last_seen: 0,
            linked_s: 0,
            synced_s: 0,
            prev: NIL,
            next: NIL,
        }
    }

    fn free() -> Self {
        let z = (A::UNSPECIFIED, 0);
        Entry::new(0, z, z, z, 0, 0, State::Free, 0)
    }
}

/// Forward key: a packet from a client to a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdKey<A> {
    pub proto: u8,
    pub client: A,
    pub client_port: u16,
    pub vip: A,
    pub vip_port: u16,
}

/// Reverse key: a NAT reply from a server to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevKey<A> {
    pub proto: u8,
    pub server: A,
    pub server_port: u16,
    pub client: A,
    pub client_port: u16,
}

/// Per-class counters kept by the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub inserted: u64,
    pub expired: u64,
    pub evicted_embryonic: u64,
    pub evicted_other: u64,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

/// The table. See the module docs for the policies.
#[derive(Debug)]
pub struct ConnTable<A: FlowAddr> {
    entries: Vec<Entry<A>>,
    free: u32,
    len: u32,
    /// One past the highest slot ever used: every slot at or above it has always been free
    /// (the free list starts in slot order), so a walk of live entries stops there.
    used_end: u32,
    fwd: Index,
    rev: Index,
    lists: [List; CLASSES],
    timeout_ns: [u64; CLASSES],
    seed: u64,
    stats: TableStats,
}

/// The idle timeout of each class, nanoseconds.
fn timeouts(cfg: &settings::Table) -> [u64; CLASSES] {
    let s = |secs: u64| secs.saturating_mul(NANOS_PER_S);
    [s(cfg.tcp_syn_timeout_s), s(cfg.tcp_timeout_s), s(cfg.tcp_fin_timeout_s), s(cfg.udp_timeout_s)]
}

#[inline]
fn mix(seed: u64, a: u64, b: u64) -> u32 {
    let h = (a ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let h = (h.rotate_left(31) ^ b).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    ((h ^ (h >> 29)) >> 32) as u32
}

impl<A: FlowAddr> ConnTable<A> {
    /// A table of `cfg.max_connections` slots; the hash seed comes from the engine's seed.
    pub fn new(cfg: &settings::Table, seed: u64) -> Self {
        let cap = cfg.max_connections.clamp(1, u32::MAX - 1);
        let mut entries = vec![Entry::free(); cap as usize];
        for (i, e) in entries.iter_mut().enumerate() {
            e.next = if i + 1 < cap as usize { i as u32 + 1 } else { NIL };
        }
        ConnTable {
            entries,
            free: 0,
            len: 0,
            used_end: 0,
            fwd: Index::with_capacity(cap),
            rev: Index::with_capacity(cap),
            lists: [List { head: NIL, tail: NIL }; CLASSES],
            timeout_ns: timeouts(cfg),
            seed,
            stats: TableStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// One past the highest slot ever used: slots from here on are free and always were.
    /// A walk of the live entries (a full sync) need not look further.
    pub fn used_end(&self) -> u32 {
        self.used_end
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Heap bytes held by the slab and both indexes.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * core::mem::size_of::<Entry<A>>()
            + self.fwd.memory_bytes()
            + self.rev.memory_bytes()
    }

    /// Sets the idle timeouts (a live reload). Each class keeps its order (oldest first):
    /// every entry of a class shares its timeout, so the lists stay sorted by expiry.
    pub fn set_timeouts(&mut self, cfg: &settings::Table) {
        self.timeout_ns = timeouts(cfg);
    }

    /// The idle timeout of a state, nanoseconds.
    pub fn timeout_ns(&self, state: State) -> u64 {
        self.timeout_ns[state.class()]
    }

    #[inline]
    fn fwd_hash(&self, k: &FwdKey<A>) -> u32 {
        let a = k.client.word(self.seed) ^ (u64::from(k.client_port) << 32) ^ (u64::from(k.proto) << 48);
        let b = k.vip.word(self.seed) ^ (u64::from(k.vip_port) << 32);
        mix(self.seed, a, b)
    }

    #[inline]
    fn rev_hash(&self, k: &RevKey<A>) -> u32 {
        let a = k.server.word(!self.seed) ^ (u64::from(k.server_port) << 32) ^ (u64::from(k.proto) << 48);
        let b = k.client.word(!self.seed) ^ (u64::from(k.client_port) << 32);
        mix(!self.seed, a, b)
    }

    fn fwd_key(e: &Entry<A>) -> FwdKey<A> {
        FwdKey {
            proto: e.proto,
            client: e.client,
            client_port: e.client_port,
            vip: e.vip,
            vip_port: e.vip_port,
        }
    }

    fn rev_key(e: &Entry<A>) -> RevKey<A> {
        RevKey {
            proto: e.proto,
            server: e.server,
            server_port: e.server_port,
            client: e.client,
            client_port: e.client_port,
        }
    }

    /// The slot of the entry with this forward key, expired or not.
    #[inline]
    pub fn find_fwd(&self, k: &FwdKey<A>) -> Option<u32> {
        let entries = &self.entries;
        self.fwd.find(self.fwd_hash(k), |s| Self::fwd_key(&entries[s as usize]) == *k)
    }

    /// The slot of the NAT entry with this reverse key.
    #[inline]
    pub fn find_rev(&self, k: &RevKey<A>) -> Option<u32> {
        let entries = &self.entries;
        self.rev.find(self.rev_hash(k), |s| Self::rev_key(&entries[s as usize]) == *k)
    }

    pub fn get(&self, slot: u32) -> &Entry<A> {
        &self.entries[slot as usize]
    }

    /// Mutable access for fields that do not affect indexing or lists (`synced_s`).
    pub fn get_mut(&mut self, slot: u32) -> &mut Entry<A> {
        &mut self.entries[slot as usize]
    }

    /// Whether the entry has been idle longer than its timeout.
    #[inline]
    pub fn is_expired(&self, slot: u32, now: Instant) -> bool {
        let e = &self.entries[slot as usize];
        e.last_seen.saturating_add(self.timeout_ns[e.state.class()]) <= now.as_nanos()
    }

    /// Remaining lifetime of an entry at `now`, nanoseconds.
    pub fn remaining_ns(&self, slot: u32, now: Instant) -> u64 {
        let e = &self.entries[slot as usize];
        e.last_seen.saturating_add(self.timeout_ns[e.state.class()]).saturating_sub(now.as_nanos())
    }

    fn unlink(&mut self, slot: u32) {
        let (class, prev, next) = {
            let e = &self.entries[slot as usize];
            (e.state.class(), e.prev, e.next)
        };
        match prev {
            NIL => self.lists[class].head = next,
            p => self.entries[p as usize].next = next,
        }
        match next {
            NIL => self.lists[class].tail = prev,
            n => self.entries[n as usize].prev = prev,
        }
    }

    fn link_tail(&mut self, slot: u32, now_s: u32) {
        let class = self.entries[slot as usize].state.class();
        let tail = self.lists[class].tail;
        {
            let e = &mut self.entries[slot as usize];
            e.prev = tail;
            e.next = NIL;
            e.linked_s = now_s;
        }
        match tail {
            NIL => self.lists[class].head = slot,
            t => self.entries[t as usize].next = slot,
        }
        self.lists[class].tail = slot;
    }

    /// Records a packet on the entry at `now` (relinking it at most once a second).
    #[inline]
    pub fn touch(&mut self, slot: u32, now: Instant) {
        let now_s = secs(now);
        let e = &mut self.entries[slot as usize];
        e.last_seen = now.as_nanos();
        if e.linked_s != now_s {
            self.unlink(slot);
            self.link_tail(slot, now_s);
        }
    }

    /// Changes the state (and so the class and timeout) of an entry, touching it.
    pub fn set_state(&mut self, slot: u32, state: State, now: Instant) {
        if self.entries[slot as usize].state == state {
            return self.touch(slot, now);
        }
        self.unlink(slot);
        let e = &mut self.entries[slot as usize];
        e.state = state;
        e.last_seen = now.as_nanos();
        self.link_tail(slot, secs(now));
    }

    /// Sets `last_seen` directly (connection sync: a shadow entry's remaining lifetime).
    pub fn set_last_seen(&mut self, slot: u32, last_seen_ns: u64) {
        self.entries[slot as usize].last_seen = last_seen_ns;
    }

    /// Inserts a new entry (the caller has checked that its keys are absent). A full table
    /// evicts first (module docs); the evicted entry is passed to `on_removed`.
    pub fn insert(
        &mut self,
        mut entry: Entry<A>,
        now: Instant,
        on_removed: &mut impl FnMut(&Entry<A>),
    ) -> u32 {
        if self.free == NIL {
            self.expire(now, 8, on_removed);
        }
        if self.free == NIL {
            let victim = self.victim();
            let e = self.remove(victim);
            if e.state.class() == CLASS_EMBRYONIC {
                self.stats.evicted_embryonic += 1;
            } else {
                self.stats.evicted_other += 1;
            }
            on_removed(&e);
        }
        let slot = self.free;
        self.free = self.entries[slot as usize].next;
        self.used_end = self.used_end.max(slot + 1);
        entry.last_seen = now.as_nanos();
        self.entries[slot as usize] = entry;
        self.link_tail(slot, secs(now));
        let h = self.fwd_hash(&Self::fwd_key(&entry));
        self.fwd.insert(h, slot);
        if entry.flags & FLAG_NAT != 0 {
            let h = self.rev_hash(&Self::rev_key(&entry));
            self.rev.insert(h, slot);
        }
        self.len += 1;
        self.stats.inserted += 1;
        slot
    }

    /// The eviction victim of a full table: oldest embryonic, else oldest of any class.
    fn victim(&self) -> u32 {
        let emb = self.lists[CLASS_EMBRYONIC].head;
        if emb != NIL {
            return emb;
        }
        let mut best = NIL;
        for l in &self.lists {
            if l.head != NIL
                && (best == NIL
                    || self.entries[l.head as usize].linked_s < self.entries[best as usize].linked_s)
            {
                best = l.head;
            }
        }
        assert!(best != NIL, "a full table has entries");
        best
    }

    /// Removes the entry in `slot` and returns it.
    pub fn remove(&mut self, slot: u32) -> Entry<A> {
        let e = self.entries[slot as usize];
        assert!(e.state != State::Free, "removing a free slot");
        self.unlink(slot);
        let removed = self.fwd.remove(self.fwd_hash(&Self::fwd_key(&e)), slot);
        debug_assert!(removed);
        if e.flags & FLAG_NAT != 0 {
            let removed = self.rev.remove(self.rev_hash(&Self::rev_key(&e)), slot);
            debug_assert!(removed);
        }
        let f = &mut self.entries[slot as usize];
        *f = Entry::free();
        f.next = self.free;
        self.free = slot;
        self.len -= 1;
        e
    }

    /// Removes up to `budget` expired entries (oldest first in each class), passing each to
    /// `on_removed`. Returns how many were removed.
    pub fn expire(&mut self, now: Instant, budget: usize, on_removed: &mut impl FnMut(&Entry<A>)) -> usize {
        let mut done = 0;
        for class in 0..CLASSES {
            while done < budget {
                let head = self.lists[class].head;
                if head == NIL || !self.is_expired(head, now) {
                    break;
                }
                let e = self.remove(head);
                self.stats.expired += 1;
                on_removed(&e);
                done += 1;
            }
        }
        done
    }

    /// Live entries in slot order (deterministic), for status listings and full resyncs.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry<A>)> {
        self.entries.iter().enumerate().filter(|(_, e)| e.state != State::Free).map(|(i, e)| (i as u32, e))
    }
}

#[inline]
fn secs(now: Instant) -> u32 {
    u32::try_from(now.as_nanos() / NANOS_PER_S).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
