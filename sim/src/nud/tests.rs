//! The neighbour-cache rules of the module docs, one by one.

use super::*;

const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);

fn mac(n: u8) -> IpAddr {
    IpAddr::from([192, 168, 0, n])
}

const SOLICITED: NaFlags = NaFlags { solicited: true, override_: true };
const UNSOLICITED: NaFlags = NaFlags { solicited: false, override_: true };

fn table() -> Table {
    Table::new(SplitMix64::new(7))
}

/// A table whose entry for the VIP was resolved to `mac(1)` at `at`.
fn resolved(at: u64) -> Table {
    let mut t = table();
    assert_eq!(t.use_at(at, VIP).0, Use::Solicit);
    assert_eq!(t.on_advertisement(at + 1, VIP, mac(1), SOLICITED), Update::Changed { from: None });
    t
}

#[test]
fn an_unsolicited_override_advertisement_never_creates_an_entry() {
    let mut t = table();
    assert_eq!(t.on_advertisement(10, VIP, mac(2), UNSOLICITED), Update::Ignored);
    assert!(t.get(&VIP).is_none());
    // Nor does a solicited one that nobody asked for.
    assert_eq!(t.on_advertisement(10, VIP, mac(2), SOLICITED), Update::Ignored);
    assert!(t.get(&VIP).is_none());
}

#[test]
fn an_unsolicited_override_advertisement_updates_an_existing_entry_to_stale() {
    let mut t = resolved(0);
    assert_eq!(t.get(&VIP).map(|e| e.state), Some(State::Reachable));
    assert_eq!(t.on_advertisement(100, VIP, mac(2), UNSOLICITED), Update::Changed { from: Some(mac(1)) });
    let e = t.get(&VIP).copied().expect("entry");
    assert_eq!((e.lladdr, e.state), (Some(mac(2)), State::Stale));
    // The next use sends to the new owner and starts DELAY.
    assert_eq!(t.use_at(110, VIP).0, Use::Send(mac(2)));
    assert_eq!(t.get(&VIP).map(|e| e.state), Some(State::Delay { until_ms: 110 + DELAY_FIRST_PROBE_MS }));
}

#[test]
fn without_override_a_different_address_is_not_taken() {
    let mut t = resolved(0);
    let weak = NaFlags { solicited: false, override_: false };
    assert_eq!(t.on_advertisement(100, VIP, mac(2), weak), Update::Kept);
    let e = t.get(&VIP).copied().expect("entry");
    assert_eq!((e.lladdr, e.state), (Some(mac(1)), State::Stale));
}

#[test]
fn the_same_address_unsolicited_leaves_the_state() {
    let mut t = resolved(0);
    assert_eq!(t.on_advertisement(100, VIP, mac(1), UNSOLICITED), Update::Kept);
    assert_eq!(t.get(&VIP).map(|e| e.state), Some(State::Reachable));
}

#[test]
fn reachable_time_is_randomised_between_15_and_45_s_from_the_seed() {
    let draws: Vec<u64> = (0..200).map(|s| Table::new(SplitMix64::new(s)).reachable_ms()).collect();
    assert!(draws.iter().all(|r| (15_000..45_000).contains(r)), "{draws:?}");
    assert!(draws.iter().any(|r| *r < 20_000) && draws.iter().any(|r| *r > 40_000));
    assert_eq!(Table::new(SplitMix64::new(3)).reachable_ms(), Table::new(SplitMix64::new(3)).reachable_ms());
}

#[test]
fn an_entry_ages_reachable_stale_delay_probe_failed() {
    let mut t = resolved(0);
    let r = t.reachable_ms();
    // Unused after resolution: STALE once reachable_time has passed.
    assert_eq!(t.use_at(r / 2, VIP).0, Use::Send(mac(1)));
    let stale_at = 1 + r;
    // Used at r/2, long before: the timer finds it STALE; the use makes it DELAY.
    assert_eq!(t.use_at(stale_at + 10, VIP).0, Use::Send(mac(1)));
    let until = stale_at + 10 + DELAY_FIRST_PROBE_MS;
    assert_eq!(t.get(&VIP).map(|e| e.state), Some(State::Delay { until_ms: until }));
    // Not confirmed during DELAY: PROBE by unicast, three times a second apart.
    assert_eq!(t.use_at(until - 1, VIP).0, Use::Send(mac(1)));
    assert_eq!(t.use_at(until, VIP).0, Use::SendAndProbe(mac(1)));
    assert_eq!(t.use_at(until + 500, VIP).0, Use::Send(mac(1)));
    assert_eq!(t.use_at(until + RETRANS_MS, VIP).0, Use::SendAndProbe(mac(1)));
    assert_eq!(t.use_at(until + 2 * RETRANS_MS, VIP).0, Use::SendAndProbe(mac(1)));
    assert_eq!(t.use_at(until + 3 * RETRANS_MS - 1, VIP).0, Use::Send(mac(1)));
    // No answer: FAILED, removed, and this packet resolves again by multicast.
    assert_eq!(t.use_at(until + 3 * RETRANS_MS, VIP), (Use::Solicit, Some(Some(mac(1)))));
    assert_eq!(t.get(&VIP).map(|e| e.lladdr), Some(None));
}

#[test]
fn forward_progress_during_delay_makes_the_entry_reachable_without_probing() {
    let mut t = resolved(0);
    let r = t.reachable_ms();
    let at = 1 + r + 100;
    assert_eq!(t.use_at(at, VIP).0, Use::Send(mac(1)));
    t.confirm(at + 50, VIP, mac(1));
    assert_eq!(t.use_at(at + DELAY_FIRST_PROBE_MS, VIP).0, Use::Send(mac(1)));
    assert_eq!(t.get(&VIP).map(|e| e.state), Some(State::Reachable));
    // A confirmation from another address does not count.
    let mut t = resolved(0);
    assert_eq!(t.use_at(at, VIP).0, Use::Send(mac(1)));
    t.confirm(at + 50, VIP, mac(2));
    assert_eq!(t.use_at(at + DELAY_FIRST_PROBE_MS, VIP).0, Use::SendAndProbe(mac(1)));
}

#[test]
fn an_entry_used_continuously_goes_straight_to_delay_when_reachable_time_ends() {
    let mut t = resolved(0);
    let r = t.reachable_ms();
    let mut now = 10;
    while now < 1 + r {
        assert_eq!(t.use_at(now, VIP).0, Use::Send(mac(1)));
        now += 10;
    }
    assert_eq!(t.use_at(now, VIP).0, Use::Send(mac(1)));
    assert_eq!(t.get(&VIP).map(|e| e.state), Some(State::Delay { until_ms: 1 + r + DELAY_FIRST_PROBE_MS }));
}

#[test]
fn resolution_solicits_three_times_a_second_apart_then_fails() {
    let mut t = table();
    assert_eq!(t.use_at(0, VIP).0, Use::Solicit);
    assert_eq!(t.use_at(10, VIP).0, Use::Wait);
    assert_eq!(t.use_at(RETRANS_MS, VIP).0, Use::Solicit);
    assert_eq!(t.use_at(2 * RETRANS_MS, VIP).0, Use::Solicit);
    assert_eq!(t.use_at(2 * RETRANS_MS + 500, VIP).0, Use::Wait);
    assert_eq!(t.use_at(3 * RETRANS_MS, VIP), (Use::Solicit, Some(None)));
}

#[test]
fn a_probe_answered_makes_the_entry_reachable_again() {
    let mut t = resolved(0);
    let at = 1 + t.reachable_ms() + 10;
    t.use_at(at, VIP);
    assert_eq!(t.use_at(at + DELAY_FIRST_PROBE_MS, VIP).0, Use::SendAndProbe(mac(1)));
    t.on_advertisement(at + DELAY_FIRST_PROBE_MS + 2, VIP, mac(1), SOLICITED);
    assert_eq!(t.get(&VIP).map(|e| e.state), Some(State::Reachable));
    assert_eq!(t.use_at(at + DELAY_FIRST_PROBE_MS + 5 * RETRANS_MS, VIP).0, Use::Send(mac(1)));
}
