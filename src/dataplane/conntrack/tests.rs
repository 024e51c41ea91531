use super::*;
use crate::dataplane::wire::proto;

fn cfg(max: u32) -> settings::Table {
    settings::Table { max_connections: max, ..settings::Table::default() }
}

fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(0x0a00_0000 | n)
}

fn entry(n: u32, state: State, flags: u8) -> Entry<Ipv4Addr> {
    Entry::new(
        proto::TCP,
        (ip(n), 40000 + (n % 1000) as u16),
        (Ipv4Addr::new(192, 0, 2, 1), 80),
        (ip(1_000_000 + n % 7), 8080),
        0,
        (n % 7) as u16,
        state,
        flags,
    )
}

fn fwd(e: &Entry<Ipv4Addr>) -> FwdKey<Ipv4Addr> {
    ConnTable::fwd_key(e)
}

fn t(s: u64) -> Instant {
    Instant::from_nanos(s * NANOS_PER_S)
}

#[test]
fn entry_is_48_bytes() {
    assert_eq!(core::mem::size_of::<Entry<Ipv4Addr>>(), 48);
}

/// The bound: a table of 1,000,000 connections in at most 256 MB, measured on a
/// filled table (slab plus both indexes: everything the table holds).
#[test]
fn million_entries_fit() {
    let mut tab = ConnTable::<Ipv4Addr>::new(&cfg(1_000_000), 7);
    let mut sink = |_: &Entry<Ipv4Addr>| {};
    for n in 0..1_000_000 {
        tab.insert(entry(n, State::Established, FLAG_NAT), t(1), &mut sink);
    }
    assert_eq!(tab.len(), 1_000_000);
    let bytes = tab.memory_bytes();
    println!(
        "entry: {} bytes; table of 1,000,000: {} bytes ({:.1} MB, {:.1} bytes/connection)",
        core::mem::size_of::<Entry<Ipv4Addr>>(),
        bytes,
        bytes as f64 / 1e6,
        bytes as f64 / 1_000_000.0
    );
    assert!(bytes <= 256 * 1024 * 1024, "{bytes} bytes");
    let probe = entry(123_456, State::Established, FLAG_NAT);
    let slot = tab.find_fwd(&fwd(&probe)).unwrap();
    assert_eq!(tab.get(slot).client, probe.client);
    assert_eq!(tab.find_rev(&ConnTable::rev_key(&probe)), Some(slot));
}

#[test]
fn insert_find_remove() {
    let mut tab = ConnTable::<Ipv4Addr>::new(&cfg(100), 1);
    let mut sink = |_: &Entry<Ipv4Addr>| {};
    let slots: Vec<u32> =
        (0..50).map(|n| tab.insert(entry(n, State::SynSent, (n % 2) as u8), t(0), &mut sink)).collect();
    for (n, &s) in slots.iter().enumerate() {
        let e = entry(n as u32, State::SynSent, 0);
        assert_eq!(tab.find_fwd(&fwd(&e)), Some(s));
        let r = tab.find_rev(&ConnTable::rev_key(&e));
        assert_eq!(r, if n % 2 == 1 { Some(s) } else { None });
    }
    for &s in slots.iter().step_by(3) {
        tab.remove(s);
    }
    for (n, &s) in slots.iter().enumerate() {
        let found = tab.find_fwd(&fwd(&entry(n as u32, State::SynSent, 0)));
        assert_eq!(found, if n % 3 == 0 { None } else { Some(s) });
    }
    assert_eq!(tab.len(), 50 - 17);
}

#[test]
fn expiry_uses_the_class_timeout() {
    let mut tab = ConnTable::<Ipv4Addr>::new(&cfg(10), 1);
    let mut removed = Vec::new();
    let a = tab.insert(entry(1, State::SynSent, 0), t(0), &mut |_| {});
    let b = tab.insert(entry(2, State::SynSent, 0), t(0), &mut |_| {});
    tab.set_state(b, State::Established, t(1));
    assert!(!tab.is_expired(a, t(29)));
    assert!(tab.is_expired(a, t(30)));
    tab.expire(t(31), 10, &mut |e| removed.push(e.client));
    assert_eq!(removed, vec![ip(1)]);
    assert!(!tab.is_expired(b, t(900)));
    tab.touch(b, t(800));
    tab.expire(t(1000), 10, &mut |e| removed.push(e.client));
    assert_eq!(tab.len(), 1);
    tab.expire(t(1700), 10, &mut |e| removed.push(e.client));
    assert_eq!(removed, vec![ip(1), ip(2)]);
    assert_eq!(tab.stats().expired, 2);
}

/// A SYN flood into a full table recycles half-open entries and leaves established ones.
#[test]
fn syn_flood_does_not_evict_established() {
    let mut tab = ConnTable::<Ipv4Addr>::new(&cfg(100), 1);
    let mut evicted = Vec::new();
    for n in 0..60 {
        let s = tab.insert(entry(n, State::SynSent, 0), t(0), &mut |_| {});
        tab.set_state(s, State::Established, t(1));
    }
    for n in 1000..5000 {
        tab.insert(entry(n, State::SynSent, 0), t(2 + u64::from(n) / 1000), &mut |e| evicted.push(e.state));
    }
    assert_eq!(tab.len(), 100);
    assert!(evicted.iter().all(|s| *s == State::SynSent));
    assert_eq!(tab.stats().evicted_other, 0);
    assert_eq!(tab.stats().evicted_embryonic, 4000 - 40);
    for n in 0..60 {
        assert!(tab.find_fwd(&fwd(&entry(n, State::SynSent, 0))).is_some());
    }
}

/// With no embryonic entries, the oldest idle entry of any class goes first.
#[test]
fn full_table_evicts_oldest_idle() {
    let mut tab = ConnTable::<Ipv4Addr>::new(&cfg(3), 1);
    let mut sink = |_: &Entry<Ipv4Addr>| {};
    let a = tab.insert(entry(1, State::Udp, 0), t(10), &mut sink);
    let _b = tab.insert(entry(2, State::Established, 0), t(11), &mut sink);
    let _c = tab.insert(entry(3, State::Udp, 0), t(12), &mut sink);
    tab.touch(a, t(13));
    let mut gone = Vec::new();
    tab.insert(entry(4, State::Udp, 0), t(14), &mut |e| gone.push(e.client));
    assert_eq!(gone, vec![ip(2)]);
    assert_eq!(tab.stats().evicted_other, 1);
}

impl<A: FlowAddr> ConnTable<A> {
    /// Every structural invariant: lists are consistent doubly linked chains holding each
    /// live entry once, in its state's class, ordered by link second; the free list holds
    /// the rest; both indexes find every live entry.
    fn check_invariants(&self) {
        let mut listed = 0;
        for (class, l) in self.lists.iter().enumerate() {
            let (mut prev, mut at, mut last_s) = (NIL, l.head, 0);
            while at != NIL {
                let e = &self.entries[at as usize];
                assert_eq!(e.prev, prev);
                assert_eq!(e.state.class(), class);
                assert_ne!(e.state, State::Free);
                assert!(e.linked_s >= last_s, "list out of order");
                assert_eq!(self.find_fwd(&Self::fwd_key(e)), Some(at));
                if e.flags & FLAG_NAT != 0 {
                    assert_eq!(self.find_rev(&Self::rev_key(e)), Some(at));
                }
                last_s = e.linked_s;
                listed += 1;
                prev = at;
                at = e.next;
            }
            assert_eq!(l.tail, prev);
        }
        assert_eq!(listed, self.len());
        let mut free = 0;
        let mut at = self.free;
        while at != NIL {
            assert_eq!(self.entries[at as usize].state, State::Free);
            free += 1;
            at = self.entries[at as usize].next;
        }
        assert_eq!(free + self.len(), self.capacity());
    }
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, bool, bool),
        Remove(u32),
        Touch(u32),
        Establish(u32),
        Advance(u64),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..40, any::<bool>(), any::<bool>()).prop_map(|(n, u, nat)| Op::Insert(n, u, nat)),
            1 => (0u32..40).prop_map(Op::Remove),
            2 => (0u32..40).prop_map(Op::Touch),
            1 => (0u32..40).prop_map(Op::Establish),
            2 => (0u64..50).prop_map(Op::Advance),
            1 => Just(Op::Expire),
        ]
    }

    proptest! {
        /// Random operations on a 16-slot table keep every invariant, and the table holds
        /// exactly the keys a simple model says (inserts into a full table evict one).
        #[test]
        fn table_matches_model(ops in proptest::collection::vec(op(), 1..150)) {
            let mut tab = ConnTable::<Ipv4Addr>::new(&cfg(16), 5);
            let mut live: Vec<u32> = Vec::new();
            let mut now_s = 0u64;
            for op in ops {
                let now = t(now_s);
                let find = |tab: &ConnTable<Ipv4Addr>, n: u32| tab.find_fwd(&fwd(&entry(n, State::SynSent, 0)));
                match op {
                    Op::Insert(n, udp, nat) => {
                        if find(&tab, n).is_none() {
                            let state = if udp { State::Udp } else { State::SynSent };
                            let mut gone = Vec::new();
                            // Distinct reverse keys: server port follows the client.
                            let mut e = entry(n, state, if nat { FLAG_NAT } else { 0 });
                            e.server_port = 1000 + n as u16;
                            tab.insert(e, now, &mut |e| gone.push(e.client));
                            for g in gone {
                                live.retain(|&m| ip(m) != g);
                            }
                            live.push(n);
                        }
                    }
                    Op::Remove(n) => {
                        if let Some(s) = find(&tab, n) {
                            tab.remove(s);
                            live.retain(|&m| m != n);
                        }
                    }
                    Op::Touch(n) => {
                        if let Some(s) = find(&tab, n) { tab.touch(s, now) }
                    }
                    Op::Establish(n) => {
                        if let Some(s) = find(&tab, n) {
                            if tab.get(s).state != State::Udp { tab.set_state(s, State::Established, now) }
                        }
                    }
                    Op::Advance(d) => now_s += d,
                    Op::Expire => {
                        let mut gone = Vec::new();
                        tab.expire(now, 64, &mut |e| gone.push(e.client));
                        for g in gone {
                            live.retain(|&m| ip(m) != g);
                        }
                    }
                }
                tab.check_invariants();
                prop_assert_eq!(tab.len(), live.len());
                for &n in &live {
                    prop_assert!(find(&tab, n).is_some());
                }
            }
        }
    }
}
